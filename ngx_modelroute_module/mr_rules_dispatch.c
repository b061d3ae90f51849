
/*
 * ModelRoute: the rules of dispatch (see mr_rules.h): which route takes
 * the next attempt (the circuit breaker, Retry-After pauses, concurrency
 * caps), the lease of an attempt, what an answer does to its execution
 * and its route, the backoff between rounds of routes, late answers, and
 * the attempts' record.  Pure functions, for every store backend; a
 * route's state comes through the backend's getter.
 */


#include <ngx_config.h>
#include <ngx_core.h>

#include <jansson.h>

#include "mr_store.h"
#include "mr_rules.h"
#include "mr_metrics.h"


static void mr_rule_disp_run_reset(mr_route_state_t *st);
static int mr_rule_attempt_add(mr_exec_t *exec, ngx_str_t *route,
    u_char *started, int64_t end, const char *outcome, const char *code,
    ngx_uint_t status, ngx_str_t *job_id, u_char **buf);


/*
 * A due execution, first: one that is terminal or waits for a callback
 * leaves the dispatch index; one past its deadline is left to the
 * sweeper, which expires it.
 */

ngx_uint_t
mr_rule_disp_due(mr_exec_t *exec, int64_t now)
{
    if (mr_status_terminal(exec->rec.status)
        || exec->rec.status == MR_AWAITING_WEBHOOK)
    {
        return MR_DISP_LEAVE;
    }

    if (exec->rec.expires_ms <= now) {
        return MR_DISP_SWEEP;    /* the sweeper expires it */
    }

    return MR_DISP_GO;
}


/*
 * Then, once a lease that ended without an answer is released: its model
 * (*m), or why it fails now
 */

ngx_uint_t
mr_rule_disp_model(mr_main_conf_t *mcf, mr_exec_t *exec, mr_model_t **m,
    const char **code, ngx_str_t *msg)
{
    *m = mr_model_find(mcf, &exec->seg[MR_SEG_MODEL]);

    if (*m == NULL || (*m)->routes.nelts == 0) {
        *code = "MODEL_UNAVAILABLE";
        ngx_str_set(msg, "the model has no routes any more");
        return MR_DISP_FAIL;
    }

    if (exec->rec.nattempts >= (*m)->attempts) {
        *code = "GENERATION_TIMEOUT";
        ngx_str_set(msg, "the provider did not answer in time");
        return MR_DISP_FAIL;
    }

    return MR_DISP_GO;
}


/*
 * The route of the next attempt: the model's routes in order from the
 * attempt's number, the first whose breaker is closed (or half-open with
 * no probe in flight), not paused by a Retry-After and under its cap.
 * NGX_BUSY: every usable route is at its cap, probing, or paused until
 * before the execution's expires_at (wait); NGX_DECLINED: every breaker
 * is open; NGX_AGAIN: every route is paused past expires_at; NGX_ABORT:
 * every route is open or paused past expires_at.  No attempt can be made
 * in the last three cases.  A getter's error is returned as it is.
 */

int
mr_rule_disp_pick(mr_model_t *m, mr_exec_rec_t *rec, int64_t now,
    mr_rule_route_get_pt get, void *data, mr_route_t **route,
    mr_route_state_t *st, ngx_uint_t *half)
{
    int                rc;
    ngx_uint_t         i, n, start, busy, paused, open;
    mr_route_t        *rt;
    mr_model_route_t  *mr;

    mr = m->routes.elts;
    n = m->routes.nelts;
    start = rec->nattempts % n;
    busy = 0;
    paused = 0;
    open = 0;

    for (i = 0; i < n; i++) {
        rt = mr[(start + i) % n].route;

        rc = get(data, rt, st);
        if (rc != 0) {
            return rc;
        }

        if (st->open_until_ms > now) {
            open = 1;
            continue;
        }

        *half = (st->open_until_ms != 0);

        if ((*half && st->probe_until_ms > now)
            || (rt->max_concurrency && st->inflight >= rt->max_concurrency))
        {
            busy = 1;               /* a slot may free at any time */
            continue;
        }

        if (st->paused_until_ms > now) {
            if (st->paused_until_ms < rec->expires_ms) {
                busy = 1;
            } else {
                paused = 1;         /* not before the execution expires */
            }

            continue;
        }

        *route = rt;

        return 0;
    }

    if (busy) {
        return NGX_BUSY;
    }

    if (paused) {
        return open ? NGX_ABORT : NGX_AGAIN;
    }

    return NGX_DECLINED;
}


/*
 * Whether a due execution only waits for a slot (its record's header and
 * model), so that passing over it needs no write
 */

ngx_uint_t
mr_rule_disp_waits(mr_main_conf_t *mcf, mr_exec_rec_t *rec, ngx_str_t *slug,
    int64_t now, mr_rule_route_get_pt get, void *data)
{
    ngx_uint_t         half;
    mr_model_t        *m;
    mr_route_t        *route;
    mr_route_state_t   st;

    if (mr_status_terminal(rec->status) || rec->status == MR_AWAITING_WEBHOOK
        || rec->lease_owner)
    {
        return 0;
    }

    if (rec->expires_ms <= now) {
        return 1;                   /* the sweeper expires it */
    }

    m = mr_model_find(mcf, slug);

    if (m == NULL || m->routes.nelts == 0 || rec->nattempts >= m->attempts) {
        return 0;
    }

    return mr_rule_disp_pick(m, rec, now, get, data, &route, &st, &half)
           == NGX_BUSY;
}


/* no attempt can be made (mr_rule_disp_pick()): FAILED, with why */

void
mr_rule_disp_no_route(int why, const char **code, ngx_str_t *msg)
{
    *code = "MODEL_UNAVAILABLE";

    switch (why) {

    case NGX_AGAIN:
        *code = "RATE_LIMITED";
        ngx_str_set(msg, "every route of the model is rate limited by its "
                    "provider (Retry-After) past the execution's "
                    "expires_at");
        return;

    case NGX_ABORT:
        ngx_str_set(msg, "every route of the model is down, or rate "
                    "limited by its provider past the execution's "
                    "expires_at");
        return;

    default: /* NGX_DECLINED */
        ngx_str_set(msg, "every route of the model is down: their "
                    "circuit breakers are open");
    }
}


/* a lease is taken on the route: a slot, and the half-open probe */

void
mr_rule_disp_take(mr_route_state_t *st, mr_route_t *route, ngx_uint_t half,
    uint64_t token, int64_t now)
{
    st->inflight++;
    st->attempts++;

    if (half) {
        st->probe_until_ms = now + route->timeout + MR_DISP_LEASE_PAD;
        st->probe_token = token;
    }
}


/* the first attempt starts the execution (1: execution.started) */

ngx_uint_t
mr_rule_disp_start(mr_exec_t *exec, int64_t now)
{
    if (exec->rec.status != MR_PENDING) {
        return 0;
    }

    exec->rec.status = MR_PROCESSING;
    exec->rec.started_ms = ngx_max(now, exec->rec.created_ms);

    return 1;
}


/* the attempt's lease: its token, its end, its route */

void
mr_rule_disp_lease(mr_exec_t *exec, mr_route_t *route, uint64_t token,
    int64_t now)
{
    exec->rec.lease_owner = token;
    exec->rec.lease_until_ms = now + route->timeout + MR_DISP_LEASE_PAD;
    exec->rec.attempt_ms = now;
    exec->rec.nattempts++;
    exec->rec.route_len = route->name.len;
    ngx_memzero(exec->rec.route, MR_ROUTE_NAME_LEN);
    ngx_memcpy(exec->rec.route, route->name.data, route->name.len);
}


/*
 * An execution leaves dispatch with a lease that was not answered: its
 * attempt was sent to the provider (or may have been), and is recorded,
 * as "cancelled" if the execution was, as "abandoned" otherwise (0: no
 * such lease)
 */

ngx_uint_t
mr_rule_disp_unanswered(mr_exec_t *exec, const char **outcome,
    const char **code)
{
    ngx_uint_t  cancelled;

    if (!(exec->rec.lease_owner && exec->rec.route_len)) {
        return 0;
    }

    cancelled = (exec->rec.status == MR_CANCELLED);

    *outcome = cancelled ? "cancelled" : "abandoned";
    *code = cancelled ? NULL : "GENERATION_TIMEOUT";

    return 1;
}


/* that lease gives its route's slot back, and its probe if it was one */

void
mr_rule_disp_release(mr_route_state_t *st, uint64_t lease_owner)
{
    if (st->inflight) {
        st->inflight--;
    }

    if (st->probe_token == lease_owner) {
        st->probe_until_ms = 0;   /* the probe went: another may go */
        st->probe_token = 0;
    }
}


/*
 * An answer for another lease than the execution's, or for an execution
 * that was cancelled, expired (or is about to be: the sweeper ends it)
 */

ngx_uint_t
mr_rule_disp_late(mr_exec_t *exec, uint64_t token, int64_t now)
{
    return exec->rec.status != MR_PROCESSING || exec->rec.lease_owner == 0
           || exec->rec.lease_owner != token || now >= exec->rec.expires_ms;
}


const char *
mr_rule_disp_outcome(ngx_uint_t outcome)
{
    switch (outcome) {
    case MR_OUT_OK:
        return "succeeded";
    case MR_OUT_ACCEPTED:
        return "accepted";
    case MR_OUT_TIMEOUT:
        return "timed_out";
    default:
        return "failed";
    }
}


/* whether the provider answered the attempt (for its breaker) */

ngx_uint_t
mr_rule_disp_answered(mr_disp_op_t *d)
{
    return d->status_code != 0 || d->outcome == MR_OUT_OK
           || d->outcome == MR_OUT_ACCEPTED;
}


/*
 * The lease of an answered attempt ends: the route's slot and breaker.
 * Only the provider's own answers move the breaker: a failure that counts
 * (no answer, a timeout, a 5xx, an unusable answer) adds up to opening
 * it, and the failure of the half-open probe opens it again; a success,
 * or an answer that blames the input, closes it, unless it is open and
 * the answer is not the probe's (an attempt older than the opening).
 *
 * The route is shared by every account, and a timeout after the provider
 * took the request may be the input's doing (a long answer asked for): a
 * tenant's own slow executions, which cost it nothing when they fail,
 * must not open the breaker for the others.  So timeouts open it only
 * when they are not one account's alone: breaker counted failures in a
 * row open it if breaker of them are the provider's own failures, or if
 * attempts of two accounts or more timed out among them; a probe's
 * timeout opens it again only if another account's attempt timed out
 * since it opened (else the breaker stays half-open: another probe goes).
 */

void
mr_rule_disp_lease_end(mr_main_conf_t *mcf, mr_route_state_t *st,
    mr_exec_t *exec, mr_store_op_t *op, ngx_uint_t outcome,
    ngx_uint_t breaker, ngx_uint_t answered)
{
    ngx_uint_t   probe, open;
    mr_route_t  *route;

    route = mr_route_find(mcf, exec->rec.route, exec->rec.route_len);

    if (st->inflight) {
        st->inflight--;
    }

    probe = (st->probe_token && st->probe_token == exec->rec.lease_owner);

    if (probe) {
        st->probe_until_ms = 0;
        st->probe_token = 0;
    }

    if ((outcome == MR_OUT_RETRY || outcome == MR_OUT_TIMEOUT)
        && breaker != MR_BREAKER_NONE)
    {
        st->failures++;
        st->failed++;

        if (breaker == MR_BREAKER_PROVIDER) {
            st->provider_failures++;

        } else if (st->timeout_accounts == 0) {
            st->timeout_accounts = 1;
            ngx_memcpy(st->timeout_org, exec->rec.org, MR_ORG_ID_LEN);

        } else if (ngx_memcmp(st->timeout_org, exec->rec.org, MR_ORG_ID_LEN)
                   != 0)
        {
            st->timeout_accounts = 2;
        }

        if (probe) {
            open = (breaker == MR_BREAKER_PROVIDER
                    || st->timeout_accounts >= 2);

        } else {
            open = (route && st->open_until_ms == 0
                    && st->failures >= route->breaker_failures
                    && (st->provider_failures >= route->breaker_failures
                        || st->timeout_accounts >= 2));
        }

        if (route && open) {
            st->open_until_ms = op->now + route->breaker_reset;
            mr_rule_disp_run_reset(st);
        }

    } else if (answered && outcome != MR_OUT_RETRY
               && outcome != MR_OUT_TIMEOUT
               && (st->open_until_ms == 0 || probe))
    {
        st->failures = 0;
        st->open_until_ms = 0;
        mr_rule_disp_run_reset(st);
    }

    if (op->disp.retry_after_ms > 0) {
        st->paused_until_ms = ngx_max(st->paused_until_ms,
                                      op->now + op->disp.retry_after_ms);
    }

    exec->rec.lease_owner = 0;
    exec->rec.lease_until_ms = 0;
    op->ready = 1;
}


/* a new run of failures: the breaker closed or opened */

static void
mr_rule_disp_run_reset(mr_route_state_t *st)
{
    st->provider_failures = 0;
    st->timeout_accounts = 0;
    ngx_memzero(st->timeout_org, MR_ORG_ID_LEN);
}


/* the provider took an asynchronous job: it calls back */

void
mr_rule_disp_accepted(mr_exec_t *exec, mr_disp_op_t *d)
{
    /* the deadline index still expires it */
    exec->rec.status = MR_AWAITING_WEBHOOK;
    d->status = MR_AWAITING_WEBHOOK;
}


/*
 * A retryable failure: another attempt if the limit and the deadline
 * allow (1, at *next), else the execution fails with the attempt's error
 * (0).  The next route at once; a jittered backoff when the round of
 * routes starts again, and never sooner than a Retry-After of the same
 * route.
 */

ngx_uint_t
mr_rule_disp_retry(mr_model_t *m, mr_exec_t *exec, mr_disp_op_t *d,
    int64_t now, int64_t *next)
{
    int64_t     delay;
    ngx_uint_t  n, round;

    if (m == NULL || m->routes.nelts == 0
        || exec->rec.nattempts >= m->attempts)
    {
        return 0;
    }

    n = m->routes.nelts;
    delay = 0;

    if (exec->rec.nattempts % n == 0) {
        round = exec->rec.nattempts / n;
        delay = MR_DISP_BACKOFF << ngx_min(round - 1, 7);
        delay = delay / 2 + delay * (int64_t) d->jitter / 1000;
        delay = ngx_min(delay, MR_DISP_BACKOFF_MAX);
    }

    if (n == 1 && d->retry_after_ms > delay) {
        delay = d->retry_after_ms;
    }

    *next = now + delay;

    return *next < exec->rec.expires_ms;
}


/*
 * A provider's callback for an asynchronous job (1: it is taken).  The
 * token is an attempt's (mr_callback.c): a provider that holds it was
 * sent a job by that attempt, and the result is taken while the
 * execution is not terminal.  PROCESSING: the provider called back before
 * the answer that took the job was recorded (that answer is dropped when
 * it arrives), or the attempt that sent the job failed (no answer in
 * time, say) although the provider had taken it, and the execution waits
 * for its next attempt, which is not made.  PENDING: no job was ever sent
 * (and no token of an attempt not made passes mr_callback.c).
 */

ngx_uint_t
mr_rule_callback_check(mr_store_op_t *op, mr_exec_t *exec)
{
    mr_disp_op_t  *d;

    d = &op->disp;

    d->status = exec->rec.status;

    if (mr_status_terminal(exec->rec.status)) {
        op->result = MR_R_NOOP;      /* twice, or after a cancel */
        return 0;
    }

    if (op->now >= exec->rec.expires_ms) {

        /* expired, the sweeper has not come by yet: as if it had */

        d->status = MR_EXPIRED;
        op->result = MR_R_NOOP;
        return 0;
    }

    if (exec->rec.status == MR_PENDING) {
        op->result = MR_R_TERMINAL;  /* not waiting for a callback */
        return 0;
    }

    return 1;
}


/*
 * Whether a callback is the answer of the attempt whose lease is current
 * (the last one made): only then did that attempt's route answer.  A
 * callback of an earlier attempt (it timed out, its provider had taken
 * the job anyway) ends the current lease: its slot comes back and a
 * half-open probe is let go, the route's breaker is left as it is
 * (closed by the other route's answer, it let traffic through to a
 * route that was down).
 */

ngx_uint_t
mr_rule_callback_current(mr_store_op_t *op, mr_exec_t *exec)
{
    return (exec->rec.nattempts > 0
            && op->disp.token == (ngx_uint_t) exec->rec.nattempts - 1);
}


/*
 * Appends {route, started_at, ended_at, outcome, error_code, status} to
 * the attempts, for the attempt of the lease; they are then in *buf
 * (malloc'ed: the caller frees it once the execution is written)
 */

int
mr_rule_attempt(mr_exec_t *exec, int64_t end, const char *outcome,
    const char *code, ngx_uint_t status, ngx_str_t *job_id, u_char **buf)
{
    ngx_str_t  route;
    u_char     started[MR_TIME_LEN];

    route.data = exec->rec.route;
    route.len = exec->rec.route_len;

    mr_time_format(started, exec->rec.attempt_ms);

    return mr_rule_attempt_add(exec, &route, started,
                               ngx_max(end, exec->rec.attempt_ms), outcome,
                               code, status, job_id, buf);
}


/* the same for any attempt: its route, its start (MR_TIME_LEN bytes) */

static int
mr_rule_attempt_add(mr_exec_t *exec, ngx_str_t *route, u_char *started,
    int64_t end, const char *outcome, const char *code, ngx_uint_t status,
    ngx_str_t *job_id, u_char **buf)
{
    u_char     *p;
    size_t      len;
    ngx_str_t  *a;

    a = &exec->seg[MR_SEG_ATTEMPTS];

    len = a->len + sizeof("[,{\"route\":\"\",\"started_at\":\"\","
                          "\"ended_at\":\"\",\"outcome\":\"\","
                          "\"error_code\":\"\",\"status\":,"
                          "\"job_id\":}]")
          + MR_ROUTE_NAME_LEN + 2 * MR_TIME_LEN + 32 + NGX_INT_T_LEN
          + (job_id ? job_id->len : 0);

    if (code) {
        len += ngx_strlen(code);
    }

    p = ngx_alloc(len, ngx_cycle->log);
    if (p == NULL) {
        return ENOMEM;
    }

    *buf = p;

    if (a->len > 2) {
        p = ngx_cpymem(p, a->data, a->len - 1);    /* without "]" */
        *p++ = ',';

    } else {
        *p++ = '[';
    }

    p = ngx_sprintf(p, "{\"route\":\"%*s\",\"started_at\":\"%*s",
                    ngx_min(route->len, MR_ROUTE_NAME_LEN), route->data,
                    (size_t) MR_TIME_LEN, started);
    p = ngx_cpymem(p, "\",\"ended_at\":\"", 14);
    p = mr_time_format(p, end);
    p = ngx_sprintf(p, "\",\"outcome\":\"%s\",\"error_code\":", outcome);

    if (code) {
        p = ngx_sprintf(p, "\"%s\"", code);

    } else {
        p = ngx_cpymem(p, "null", 4);
    }

    if (status) {
        p = ngx_sprintf(p, ",\"status\":%ui", status);

    } else {
        p = ngx_cpymem(p, ",\"status\":null", 14);
    }

    if (job_id && job_id->len) {
        p = ngx_sprintf(p, ",\"job_id\":%V", job_id);
    }

    *p++ = '}';
    *p++ = ']';

    a->data = *buf;
    a->len = p - *buf;

    mr_metrics_attempt(route, outcome);

    return 0;
}


/*
 * A callback's record: "called_back" (its outcome "failed" if it reports
 * a failure) for the attempt whose token it carries.  The callback of an
 * earlier attempt is recorded under that attempt's route and start, read
 * from its entry (each attempt that ended has exactly one, in order:
 * attempt n is the n-th), and the attempt in flight, if any, as
 * "abandoned": its request is out, the execution no longer waits for it.
 * The attempts are then in *buf (malloc'ed: the caller frees it once the
 * execution is written).
 */

int
mr_rule_callback_attempts(mr_store_op_t *op, mr_exec_t *exec, u_char **buf)
{
    int            rc;
    u_char        *first;
    json_t        *log, *a, *r, *s;
    ngx_str_t      route;
    const char    *outcome, *code;
    mr_disp_op_t  *d;

    d = &op->disp;

    outcome = (d->outcome == MR_OUT_OK) ? "called_back" : "failed";
    code = (d->outcome == MR_OUT_OK) ? NULL : d->code;

    if (mr_rule_callback_current(op, exec)) {
        return mr_rule_attempt(exec, op->now, outcome, code, 0, NULL, buf);
    }

    /* a provider's job id may hold a NUL (mr_adapter.c parses so too) */

    log = json_loadb((char *) exec->seg[MR_SEG_ATTEMPTS].data,
                     exec->seg[MR_SEG_ATTEMPTS].len, JSON_ALLOW_NUL, NULL);

    a = NULL;

    if (json_is_array(log)
        && json_array_size(log) + (exec->rec.lease_owner ? 1 : 0)
           == exec->rec.nattempts)
    {
        a = json_array_get(log, d->token);
    }

    r = json_object_get(a, "route");
    s = json_object_get(a, "started_at");

    if (json_is_string(r) && json_string_length(r) <= MR_ROUTE_NAME_LEN
        && json_is_string(s) && json_string_length(s) == MR_TIME_LEN)
    {
        route.data = (u_char *) json_string_value(r);
        route.len = json_string_length(r);

        rc = mr_rule_attempt_add(exec, &route,
                                 (u_char *) json_string_value(s), op->now,
                                 outcome, code, 0, NULL, buf);

    } else {
        /* not as this gateway writes it: under the last route */
        rc = mr_rule_attempt(exec, op->now, outcome, code, 0, NULL, buf);
    }

    json_decref(log);

    if (rc != 0 || !exec->rec.lease_owner) {
        return rc;
    }

    first = *buf;

    rc = mr_rule_attempt(exec, op->now, "abandoned", NULL, 0, NULL, buf);

    ngx_free(first);          /* the attempts were copied from it */

    if (rc != 0) {
        *buf = NULL;
    }

    return rc;
}
