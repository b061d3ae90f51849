
/*
 * ModelRoute: the rules of webhooks (see mr_rules.h): which endpoints an
 * event goes to, the event's body, a delivery's target (for the caps and
 * the fair claim), ordered delivery ids, an attempt's outcome (the retry
 * schedule, the attempts kept, the endpoint's health and deactivation),
 * and the ages past which deliveries fail and events go.  Pure functions,
 * for every store backend.
 */


#include <ngx_config.h>
#include <ngx_core.h>

#include <jansson.h>

#include "mr_store.h"
#include "mr_rules.h"


static u_char  mr_zero[MR_EXEC_ID_LEN];


/* "<prefix>" + 12 hex of ms + 32 random hex; safe in a thread */

ngx_int_t
mr_rule_tid(u_char *dst, const char *prefix, int64_t ms)
{
    u_char  rnd[16];

    if (mr_random_bytes(rnd, sizeof(rnd)) != NGX_OK) {
        return NGX_ERROR;
    }

    dst = ngx_sprintf(dst, "%s%012xL", prefix,
                      (uint64_t) ms & 0xffffffffffffULL);
    mr_hex(dst, rnd, sizeof(rnd));

    return NGX_OK;
}


/* the milliseconds of a time-ordered id: 12 hex digits */

int64_t
mr_rule_id_ms(u_char *p)
{
    ngx_int_t  n;

    n = ngx_hextoi(p, 12);

    return n == NGX_ERROR ? 0 : (int64_t) n;
}


/*
 * An execution's deliveries are sent in the order of their ids: a new one
 * (id) must sort after the last one made before it (last), even within
 * the same millisecond (execution.started and .completed often are): then
 * it follows the last one, as a counter would.
 */

/*
 * A delivery that waits for an earlier one of its execution to the same
 * destination goes back in its queue: it must never hold the head of the
 * queue, where a claim reads a bounded number of entries, in front of the
 * deliveries that can go, the earlier one among them (a retried one is
 * due after the later one was made: with enough of those, a claim read
 * nothing but deliveries that wait, and the queue stopped for good).  It
 * goes just after the earlier one's next attempt; while that one is being
 * sent (leased: its due time is its lease's end, not its outcome), just
 * after what is due now, so that it follows at once an outcome that ends
 * the earlier one.
 */

int64_t
mr_rule_dlv_wait_due(int64_t earlier_due, ngx_uint_t earlier_leased,
    int64_t now)
{
    if (earlier_leased) {
        return now + 1;
    }

    return ngx_max(earlier_due, now) + 1;
}


void
mr_rule_dlv_after(u_char *last, u_char *id)
{
    u_char  *p;

    if (ngx_memcmp(last, id, MR_DLV_ID_LEN) < 0) {
        return;
    }

    /* the last one + 1, in hex */

    ngx_memcpy(id, last, MR_DLV_ID_LEN);

    for (p = id + MR_DLV_ID_LEN - 1; p >= id + 4; p--) {
        if (*p == 'f') {
            *p = '0';
            continue;
        }

        *p = (*p == '9') ? 'a' : *p + 1;
        break;
    }
}


/* events: [] is every event; else a JSON array of type names */

ngx_int_t
mr_rule_wh_wants(mr_wh_t *wh, ngx_str_t *type)
{
    u_char     *p, *last;
    ngx_str_t  *ev;

    ev = &wh->seg[MR_WH_SEG_EVENTS];

    if (ev->len <= 2) {
        return 1;
    }

    p = ev->data;
    last = ev->data + ev->len;

    while (p + type->len + 2 <= last) {
        p = ngx_strlchr(p, last, '"');
        if (p == NULL) {
            return 0;
        }

        if (p + type->len + 2 <= last
            && ngx_strncmp(p + 1, type->data, type->len) == 0
            && p[type->len + 1] == '"')
        {
            return 1;
        }

        /* skip the whole string */
        p = ngx_strlchr(p + 1, last, '"');
        if (p == NULL) {
            return 0;
        }

        p++;
    }

    return 0;
}


/*
 * Whether an execution's event may be kept: an event no one can receive
 * is not, when the account has no endpoint (endpoints: 0) and this is not
 * a terminal event for a webhook_url
 */

ngx_uint_t
mr_rule_emit_kept(mr_exec_t *exec, ngx_uint_t endpoints)
{
    return endpoints
           || (exec->seg[MR_SEG_WEBHOOK_URL].len > 2
               && mr_status_terminal(exec->rec.status));
}


/* an event's body: its envelope around data (exec_id NULL: none) */

ngx_int_t
mr_rule_event_body(u_char *event_id, u_char *org, ngx_str_t *type,
    u_char *exec_id, ngx_str_t *data, int64_t now, ngx_pool_t *pool,
    ngx_str_t *body)
{
    u_char  *p;
    u_char   ts[MR_TIME_LEN];

    mr_time_format(ts, now);

    body->data = ngx_pnalloc(pool, data->len + type->len + 256);
    if (body->data == NULL) {
        return NGX_ERROR;
    }

    p = ngx_sprintf(body->data, "{\"id\":\"%*s\",\"event_type\":\"%V\","
                    "\"timestamp\":\"%*s\",\"version\":\"1.0\","
                    "\"organization_id\":\"%*s\",",
                    (size_t) MR_EVT_ID_LEN, event_id, type,
                    (size_t) MR_TIME_LEN, ts, (size_t) MR_ORG_ID_LEN, org);

    if (exec_id) {
        p = ngx_sprintf(p, "\"execution_id\":\"%*s\",",
                        (size_t) MR_EXEC_ID_LEN, exec_id);

    } else {
        p = ngx_sprintf(p, "\"execution_id\":null,");
    }

    p = ngx_sprintf(p, "\"data\":%V}", data);

    body->len = p - body->data;

    return NGX_OK;
}


/*
 * A new delivery of an event (its id is in dlv->rec.id): to an endpoint
 * (wh_id), or to an execution's webhook_url (wh_id NULL, url), due now
 */

void
mr_rule_dlv_init(mr_dlv_t *dlv, u_char *event_id, u_char *org,
    u_char *wh_id, ngx_str_t *url, u_char *exec_id, ngx_str_t *type,
    int64_t now)
{
    ngx_memcpy(dlv->rec.event_id, event_id, MR_EVT_ID_LEN);
    ngx_memcpy(dlv->rec.org, org, MR_ORG_ID_LEN);

    if (wh_id) {
        ngx_memcpy(dlv->rec.wh_id, wh_id, MR_WH_ID_LEN);
    }

    if (exec_id) {
        ngx_memcpy(dlv->rec.exec_id, exec_id, MR_EXEC_ID_LEN);
    }

    dlv->rec.status = MR_DLV_PENDING;
    dlv->rec.created_ms = now;
    dlv->rec.due_ms = 0;
    dlv->rec.next_ms = now;

    if (url) {
        dlv->seg[MR_DLV_SEG_URL] = *url;
    }

    dlv->seg[MR_DLV_SEG_TYPE] = *type;
    ngx_str_set(&dlv->seg[MR_DLV_SEG_ATTEMPTS], "[]");
}


/*
 * A delivery's target: its endpoint's id, or "wu_" + 24 hex of a hash of
 * its webhook_url's scheme, host and port, lowercase.
 */

void
mr_rule_dlv_target(mr_dlv_t *dlv, u_char *target)
{
    u_char     *p, *last, *host, *end, *at;
    size_t      n, len;
    ngx_uint_t  i;
    u_char      origin[512], hash[MR_SHA256_LEN];

    if (ngx_memcmp(dlv->rec.wh_id, mr_zero, MR_WH_ID_LEN) != 0) {
        ngx_memcpy(target, dlv->rec.wh_id, MR_WH_ID_LEN);
        return;
    }

    p = dlv->seg[MR_DLV_SEG_URL].data;
    last = p + dlv->seg[MR_DLV_SEG_URL].len;

    host = ngx_strlcasestrn(p, last, (u_char *) "://", 3 - 1);
    host = host ? host + 3 : p;

    for (end = host; end < last; end++) {
        if (*end == '/' || *end == '?' || *end == '#') {
            break;
        }
    }

    /* without the user info: user@host:port is host:port */

    for (at = end; at > host; at--) {
        if (at[-1] == '@') {
            break;
        }
    }

    n = ngx_min((size_t) (host - p), sizeof(origin) / 2);
    len = ngx_min((size_t) (end - at), sizeof(origin) / 2);

    ngx_memcpy(origin, p, n);
    ngx_memcpy(origin + n, at, len);
    len += n;

    for (i = 0; i < len; i++) {
        origin[i] = ngx_tolower(origin[i]);
    }

    mr_sha256(hash, origin, len);

    ngx_memcpy(target, "wu_", 3);
    mr_hex(target + 3, hash, (MR_WH_TARGET_LEN - 3) / 2);
}


/*
 * An endpoint's update: the new values of op->wh.ep (url, description,
 * events, headers) that op->wh.patch names go to wh; *grow: the bytes it
 * gains, which the caller checks (the reserve, mr_rule_quota_check()).
 */

void
mr_rule_wh_patch(mr_store_op_t *op, mr_wh_t *wh, int64_t *grow)
{
    ngx_uint_t  i;

    *grow = 0;

    for (i = 0; i < 4; i++) {
        if (op->wh.patch & (1 << i)) {
            *grow += (int64_t) op->wh.ep.seg[i].len - (int64_t) wh->seg[i].len;
            wh->seg[i] = op->wh.ep.seg[i];
        }
    }
}


/* then its state: enabled again, its deliveries go (op->emitted) */

void
mr_rule_wh_active(mr_store_op_t *op, mr_wh_t *wh)
{
    if (!(op->wh.patch & MR_WH_PATCH_ACTIVE)) {
        return;
    }

    /* its deliveries waited in its queue: the claims take them now */

    if (op->wh.ep.rec.active && !wh->rec.active) {
        op->emitted++;
    }

    if (op->wh.ep.rec.active) {
        wh->rec.failures = 0;
    }

    wh->rec.active = op->wh.ep.rec.active ? 1 : 0;
}


/*
 * A delivery retried: a new schedule and max age from now, and due now
 * (1); or, if it is being sent (claimed, its lease not ended), not due:
 * that send is the one asked for, its outcome counted on the new
 * schedule (0; a second send at once would drop the first's outcome as
 * late)
 */

ngx_uint_t
mr_rule_dlv_retry(mr_dlv_t *dlv, int64_t now)
{
    dlv->rec.attempts = 0;
    dlv->rec.created_ms = now;

    if (dlv->rec.status == MR_DLV_PENDING && dlv->rec.token != 0
        && dlv->rec.due_ms > now)
    {
        return 0;
    }

    dlv->rec.status = MR_DLV_PENDING;
    dlv->rec.next_ms = now;
    dlv->rec.token = 0;

    return 1;
}


/*
 * A delivery claimed again (its lease ended unanswered: a worker died)
 * that must wait behind an earlier one is no longer leased: its old token
 * would make a late outcome of that lease count, a retry of it wait, and
 * the deliveries behind it take it for one being sent.
 */

void
mr_rule_dlv_park(mr_dlv_t *dlv)
{
    dlv->rec.token = 0;
}


/* an attempt's outcome for a delivery deleted, or taken over since */

ngx_uint_t
mr_rule_dlv_late(mr_store_op_t *op, mr_dlv_t *dlv)
{
    return dlv->rec.status != MR_DLV_PENDING || dlv->rec.token != op->wh.token;
}


/* a delivery waiting past modelroute_webhook_max_age fails */

ngx_uint_t
mr_rule_dlv_expired(mr_main_conf_t *mcf, mr_dlv_t *dlv, int64_t now)
{
    return dlv->rec.created_ms + (int64_t) mcf->webhook_max_age * 1000 <= now;
}


/* attempts in flight and claimed now whose busy key starts with key */

ngx_uint_t
mr_rule_dlv_busy(mr_store_op_t *op, u_char *key, size_t len)
{
    ngx_uint_t     i, n;
    mr_dlv_job_t  *job;

    n = 0;

    for (i = 0; i < op->wh.nbusy; i++) {
        n += (ngx_memcmp(op->wh.busy + i * MR_DLV_BUSY_LEN, key, len) == 0);
    }

    for (job = op->wh.jobs; job; job = job->next) {
        n += (ngx_memcmp(job->busy, key, len) == 0);
    }

    return n;
}


/*
 * The outcome of an attempt (op->wh: status_code, latency_ms, error): the
 * attempt's record (the last MR_DLV_ATTEMPTS are kept), the endpoint's
 * health (wh, NULL: none, or deleted), and what comes next: succeeded,
 * due again on the schedule, or failed.  dlv->rec.due_ms is left as it
 * was: the caller moves the delivery to dlv->rec.next_ms (0: out of the
 * queue).  The attempts are copied to pool.
 */

int
mr_rule_dlv_done(mr_store_op_t *op, mr_dlv_t *dlv, mr_wh_t *wh,
    ngx_pool_t *pool)
{
    char        *dump;
    json_t      *attempts, *a;
    ngx_uint_t   ok;
    u_char       at[MR_TIME_LEN];

    ok = (op->wh.status_code >= 200 && op->wh.status_code < 300);

    /* the attempt's record */

    mr_time_format(at, op->now - op->wh.latency_ms);

    attempts = json_loadb((char *) dlv->seg[MR_DLV_SEG_ATTEMPTS].data,
                          dlv->seg[MR_DLV_SEG_ATTEMPTS].len, 0, NULL);
    if (!json_is_array(attempts)) {
        json_decref(attempts);
        attempts = json_array();
    }

    a = json_pack("{s:s#, s:o, s:I, s:o}",
                  "at", at, (int) MR_TIME_LEN,
                  "status_code", op->wh.status_code
                                 ? json_integer(op->wh.status_code)
                                 : json_null(),
                  "latency_ms", (json_int_t) op->wh.latency_ms,
                  "error", op->wh.error.len
                           ? json_stringn((char *) op->wh.error.data,
                                          op->wh.error.len)
                           : json_null());

    /* the last MR_DLV_ATTEMPTS attempts are kept */

    while (attempts && json_array_size(attempts) >= MR_DLV_ATTEMPTS) {
        if (json_array_remove(attempts, 0) != 0) {
            break;
        }
    }

    if (attempts == NULL || a == NULL
        || json_array_append_new(attempts, a) != 0
        || (dump = json_dumps(attempts, JSON_COMPACT)) == NULL)
    {
        json_decref(attempts);
        return ENOMEM;
    }

    json_decref(attempts);

    dlv->seg[MR_DLV_SEG_ATTEMPTS].len = ngx_strlen(dump);
    dlv->seg[MR_DLV_SEG_ATTEMPTS].data = ngx_pnalloc(pool,
                                         dlv->seg[MR_DLV_SEG_ATTEMPTS].len);
    if (dlv->seg[MR_DLV_SEG_ATTEMPTS].data == NULL) {
        free(dump);
        return ENOMEM;
    }

    ngx_memcpy(dlv->seg[MR_DLV_SEG_ATTEMPTS].data, dump,
               dlv->seg[MR_DLV_SEG_ATTEMPTS].len);
    free(dump);

    dlv->rec.attempts++;
    dlv->rec.token = 0;

    /* the endpoint's health */

    if (wh) {
        if (ok) {
            wh->rec.failures = 0;
            wh->rec.last_success_ms = op->now;

        } else {
            wh->rec.failures++;

            if (op->wh.status_code == 410
                || wh->rec.failures >= MR_WH_FAILURES_MAX)
            {
                wh->rec.active = 0;
            }
        }
    }

    if (ok) {
        dlv->rec.status = MR_DLV_SUCCEEDED;
        dlv->rec.next_ms = 0;

    } else if (dlv->rec.attempts <= op->wh.nschedule
               && op->now - dlv->rec.created_ms < op->wh.max_age_ms)
    {
        dlv->rec.next_ms = op->now
                           + (int64_t) op->wh.schedule[dlv->rec.attempts - 1];

    } else {
        dlv->rec.status = MR_DLV_FAILED;
        dlv->rec.next_ms = 0;
    }

    /* the next event of the execution may go now */

    if (dlv->rec.status != MR_DLV_PENDING) {
        op->emitted++;
    }

    return 0;
}


/*
 * Whether an event made at created is kept: younger than the retention,
 * or than the deliveries' last possible attempt, which may still need it
 */

ngx_uint_t
mr_rule_event_kept(mr_store_op_t *op, int64_t created)
{
    return created + op->retention_ms > op->now
           || created + op->wh.max_age_ms > op->now;
}


/* a webhook secret: "whsec_" + base64 of 32 random bytes */

ngx_int_t
mr_store_new_secret(u_char *secret)
{
    u_char     raw[32];
    ngx_str_t  src, dst;

    if (mr_random_bytes(raw, sizeof(raw)) != NGX_OK) {
        return NGX_ERROR;
    }

    src.data = raw;
    src.len = sizeof(raw);
    dst.data = ngx_cpymem(secret, "whsec_", 6);

    ngx_encode_base64(&dst, &src);

    return dst.len == MR_WH_SECRET_LEN - 6 ? NGX_OK : NGX_ERROR;
}
