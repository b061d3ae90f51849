
/*
 * ModelRoute: the store's webhook outbox.
 *
 * Databases:
 *   whep      wh_id                  -> mr_wh_rec_t + segments
 *   orgwh     org + wh_id            -> ""
 *   whsecret  org                    -> the default secret
 *   event     evt_id                 -> org + the event's body
 *   dlv       dlv_id                 -> mr_dlv_rec_t + segments
 *   dlvq      org + target + be64 due_ms + dlv_id -> ""
 *                                    (pending deliveries: a queue per
 *                                    account and target, by due time)
 *   whdlv     wh_id + dlv_id         -> ""   (an endpoint's log)
 *   execdlv   exec_id + dlv_id       -> ""   (an execution's, in order)
 *
 * Events and their deliveries are written in the transaction of the
 * state change that causes them (mr_store_emit()).  A claim moves a
 * delivery's due time to the end of its lease: if its worker dies, it is
 * due again then, and sent again with the same event id.
 *
 * A delivery's target is its endpoint, or for an execution's webhook_url
 * the URL's scheme, host and port (mr_rule_dlv_target()).  Claims are
 * fair whatever one account queues: they visit the accounts that have
 * pending deliveries in turn, from where the last claim stopped, and in
 * each account its targets from a random point; an account and a target
 * take no more than their caps of attempts in flight, and a claim takes
 * a bounded number of index steps (mr_store_dlv_claim()).  An endpoint's
 * deliveries wait in its queue while it is inactive (those older than
 * modelroute_webhook_max_age fail there), and go when it is enabled
 * again; a deleted endpoint's are dropped as claims come by, a bounded
 * number at a time.  Nothing walks all of an endpoint's deliveries.
 *
 * These functions may run in a thread of the commit pool: they use
 * malloc'ed memory and random bytes from the thread's own pool
 * (mr_random_bytes()), nothing of the event loop.
 */


#include <ngx_config.h>
#include <ngx_core.h>

#include <openssl/rand.h>

#include "mr_store.h"
#include "mr_store_lmdb.h"
#include "mr_rules.h"
#include "mr_exec.h"
#include "mr_metrics.h"


#define MR_DLV_STEPS        1024    /* index steps a claim takes */
#define MR_DLV_TARGETS      32      /* targets looked at per account */
#define MR_DLV_TAKE         64      /* entries read per target */
#define MR_DLV_KEY_LEN      (MR_DLV_BUSY_LEN + 8 + MR_DLV_ID_LEN)


/* a claim's visit of a target's queue */
typedef struct {
    u_char                    busy[MR_DLV_BUSY_LEN];  /* org + target */
    mr_wh_t                   wh;
    ngx_uint_t                mode;
    ngx_uint_t                n;
    u_char                    keys[MR_DLV_TAKE][MR_DLV_KEY_LEN];
} mr_dlv_visit_t;

#define MR_DLV_CLAIM        0       /* an active endpoint, a webhook_url */
#define MR_DLV_PARKED       1       /* an inactive endpoint */
#define MR_DLV_DROP         2       /* a deleted endpoint */


static int mr_store_wh_read(MDB_txn *txn, u_char *id, mr_wh_t *wh,
    ngx_pool_t *pool);
static int mr_store_wh_put(MDB_txn *txn, mr_wh_t *wh, int64_t count);
static int mr_store_dlv_due(MDB_txn *txn, mr_dlv_t *dlv, int64_t due);
static int mr_store_dlv_drop(MDB_txn *txn, mr_dlv_t *dlv);
static int mr_store_dlv_end(MDB_txn *txn, mr_dlv_t *dlv, ngx_uint_t status);
static int mr_store_dlv_create(MDB_txn *txn, mr_store_op_t *op,
    u_char *org, u_char *event_id, u_char *wh_id, ngx_str_t *url,
    u_char *exec_id, ngx_str_t *type, int64_t now, u_char *id);
static int mr_store_event_put(MDB_txn *txn, u_char *event_id, u_char *org,
    ngx_str_t *type, u_char *exec_id, ngx_str_t *data, int64_t now,
    ngx_pool_t *pool);
static int mr_store_secret(MDB_txn *txn, u_char *org, u_char *secret);
static int mr_store_wh_update(MDB_txn *txn, mr_store_op_t *op,
    ngx_int_t room);
static int mr_store_wh_test(MDB_txn *txn, mr_store_op_t *op);
static int mr_store_dlv_retry(MDB_txn *txn, mr_store_op_t *op);
static int mr_store_dlv_claim(MDB_txn *txn, mr_store_op_t *op);
static int mr_store_dlv_account(MDB_txn *txn, mr_store_op_t *op,
    u_char *org, mr_dlv_visit_t *vt, ngx_uint_t *steps, ngx_pool_t *pool);
static int mr_store_dlv_target_visit(MDB_txn *txn, mr_store_op_t *op,
    mr_dlv_visit_t *vt, ngx_pool_t *pool);
static int mr_store_dlv_claim_one(MDB_txn *txn, mr_store_op_t *op,
    mr_dlv_visit_t *vt, u_char *key, ngx_pool_t *pool);
static int mr_store_dlv_done(MDB_txn *txn, mr_store_op_t *op);
static int mr_store_dlv_after(MDB_txn *txn, u_char *exec_id, u_char *id);
static int mr_store_seg_put(MDB_dbi dbi, MDB_txn *txn, u_char *key,
    size_t klen, void *rec, size_t rlen, uint32_t *seg_len, ngx_str_t *seg,
    ngx_uint_t nseg, u_char *org, size_t extra, ngx_uint_t which,
    int64_t count);
static int mr_store_seg_parse(u_char *data, size_t size, void *rec,
    size_t rlen, uint32_t *seg_len, ngx_str_t *seg, ngx_uint_t nseg,
    ngx_pool_t *pool);
static int mr_store_index(MDB_dbi dbi, MDB_txn *txn, u_char *a, size_t alen,
    u_char *b, size_t blen, ngx_uint_t add);


void  (*mr_store_deliveries_hook)(void);


static u_char  mr_zero[MR_EXEC_ID_LEN];

/* the account a claim of this worker visited last */
static u_char  mr_dlv_cursor[MR_ORG_ID_LEN];
static ngx_uint_t  mr_dlv_cursor_set;

/* where the retention's walk over the deliveries goes on from */
mr_store_walk_t  mr_store_dlv_walk;


int
mr_store_wh_apply(MDB_txn *txn, mr_store_op_t *op, ngx_int_t room)
{
    int         rc;
    mr_wh_t     wh;
    MDB_val     k, v;
    ngx_uint_t  ok;
    u_char      okey[MR_ORG_ID_LEN + MR_WH_ID_LEN];

    switch (op->type) {

    case MR_OP_WH_CREATE:
        if (!room) {
            op->result = MR_R_STORAGE_FULL;
            return 0;
        }

        rc = mr_store_quota_check(txn, op, op->wh.ep.rec.org,
                                  (int64_t) mr_rule_wh_size(&op->wh.ep),
                                  MR_LIMIT_ENDPOINTS, 1, &ok);
        if (rc != 0 || !ok) {
            return rc;
        }

        rc = mr_store_wh_put(txn, &op->wh.ep, 1);
        if (rc != 0) {
            return rc;
        }

        return mr_store_index(mr_store.orgwh, txn, op->wh.ep.rec.org,
                              MR_ORG_ID_LEN, op->wh.ep.rec.id, MR_WH_ID_LEN,
                              1);

    case MR_OP_WH_UPDATE:
        return mr_store_wh_update(txn, op, room);

    case MR_OP_WH_DELETE:

        /*
         * its pending deliveries are dropped as claims come by its queue
         * (mr_store_dlv_target_visit()), its log by the retention
         */

        rc = mr_store_wh_read(txn, op->wh.wh_id, &wh, NULL);
        if (rc == MDB_NOTFOUND
            || (rc == 0
                && ngx_memcmp(wh.rec.org, op->org, MR_ORG_ID_LEN) != 0))
        {
            op->result = MR_R_NOT_FOUND;
            return 0;
        }

        if (rc != 0) {
            return rc;
        }

        k.mv_data = op->wh.wh_id;
        k.mv_size = MR_WH_ID_LEN;

        rc = mr_store_counted_del(txn, mr_store.whep, &k, op->org,
                                  MR_USAGE_WH);
        if (rc == 0) {
            rc = mr_store_usage(txn, op->org, 0, MR_LIMIT_ENDPOINTS, -1);
        }

        if (rc != 0) {
            return rc;
        }

        ngx_memcpy(okey, op->org, MR_ORG_ID_LEN);
        ngx_memcpy(okey + MR_ORG_ID_LEN, op->wh.wh_id, MR_WH_ID_LEN);

        return mr_store_index(mr_store.orgwh, txn, okey, sizeof(okey),
                              NULL, 0, 0);

    case MR_OP_WH_TEST:
        return mr_store_wh_test(txn, op);

    case MR_OP_WH_SECRET:
        k.mv_data = op->org;
        k.mv_size = MR_ORG_ID_LEN;

        rc = mdb_get(txn, mr_store.whsecret, &k, &v);

        if (rc == 0 && v.mv_size == MR_WH_SECRET_LEN) {
            ngx_memcpy(op->wh.secret, v.mv_data, MR_WH_SECRET_LEN);
            return 0;
        }

        if (rc != 0 && rc != MDB_NOTFOUND) {
            return rc;
        }

        if (!room) {
            op->result = MR_R_STORAGE_FULL;
            return 0;
        }

        v.mv_data = op->wh.secret;
        v.mv_size = MR_WH_SECRET_LEN;

        return mdb_put(txn, mr_store.whsecret, &k, &v, 0);

    case MR_OP_DLV_RETRY:
        return mr_store_dlv_retry(txn, op);

    case MR_OP_DLV_CLAIM:
        return mr_store_dlv_claim(txn, op);

    default: /* MR_OP_DLV_DONE */
        return mr_store_dlv_done(txn, op);
    }
}


/*
 * An event of an execution's state change, and its deliveries: to every
 * endpoint of the account that wants it, and for a terminal event to the
 * execution's own webhook_url.  In the transaction of the change.
 */

int
mr_store_emit(MDB_txn *txn, mr_store_op_t *op, mr_exec_t *exec,
    const char *type_name)
{
    int          rc;
    MDB_val      k, v;
    mr_wh_t      wh;
    ngx_str_t    data, type, url;
    ngx_pool_t  *pool;
    MDB_cursor  *cur;
    ngx_uint_t   i, n, made;
    u_char       event_id[MR_EVT_ID_LEN];
    u_char       start[MR_ORG_ID_LEN + MR_WH_ID_LEN];
    u_char       ids[64][MR_WH_ID_LEN];

    type.data = (u_char *) type_name;
    type.len = ngx_strlen(type_name);

    mr_metrics_exec_event(op, exec);

    /*
     * an event no one can receive is not kept: the account has no
     * endpoint, and this is not a terminal event for a webhook_url
     */

    if (!mr_rule_emit_kept(exec, 0)) {
        rc = mdb_cursor_open(txn, mr_store.orgwh, &cur);
        if (rc != 0) {
            return rc;
        }

        ngx_memcpy(start, exec->rec.org, MR_ORG_ID_LEN);
        ngx_memzero(start + MR_ORG_ID_LEN, MR_WH_ID_LEN);

        k.mv_data = start;
        k.mv_size = sizeof(start);

        rc = mdb_cursor_get(cur, &k, &v, MDB_SET_RANGE);

        n = (rc == 0 && k.mv_size == sizeof(start)
             && ngx_memcmp(k.mv_data, exec->rec.org, MR_ORG_ID_LEN) == 0);

        mdb_cursor_close(cur);

        if (rc != 0 && rc != MDB_NOTFOUND) {
            return rc;
        }

        if (!mr_rule_emit_kept(exec, n)) {
            return 0;
        }
    }

    pool = ngx_create_pool(2048, ngx_cycle->log);
    if (pool == NULL) {
        return ENOMEM;
    }

    rc = ENOMEM;

    if (mr_exec_render(pool, exec, &data) != NGX_OK
        || mr_rule_tid(event_id, "evt_", op->now) != NGX_OK)
    {
        goto done;
    }

    rc = mr_store_event_put(txn, event_id, exec->rec.org, &type, exec->id,
                            &data, op->now, pool);
    if (rc != 0) {
        goto done;
    }

    /* the account's endpoints, in batches (no cursor across puts) */

    ngx_memcpy(start, exec->rec.org, MR_ORG_ID_LEN);
    ngx_memzero(start + MR_ORG_ID_LEN, MR_WH_ID_LEN);
    made = 0;

    do {
        rc = mdb_cursor_open(txn, mr_store.orgwh, &cur);
        if (rc != 0) {
            goto done;
        }

        k.mv_data = start;
        k.mv_size = sizeof(start);
        n = 0;

        for (rc = mdb_cursor_get(cur, &k, &v, MDB_SET_RANGE);
             rc == 0 && n < 64;
             rc = mdb_cursor_get(cur, &k, &v, MDB_NEXT))
        {
            if (k.mv_size != sizeof(start)
                || ngx_memcmp(k.mv_data, exec->rec.org, MR_ORG_ID_LEN) != 0)
            {
                break;
            }

            ngx_memcpy(ids[n++], (u_char *) k.mv_data + MR_ORG_ID_LEN,
                       MR_WH_ID_LEN);
        }

        mdb_cursor_close(cur);

        if (rc != 0 && rc != MDB_NOTFOUND) {
            goto done;
        }

        for (i = 0; i < n; i++) {
            rc = mr_store_wh_read(txn, ids[i], &wh, NULL);
            if (rc == MDB_NOTFOUND) {
                continue;
            }

            if (rc != 0) {
                goto done;
            }

            if (!mr_rule_wh_wants(&wh, &type)) {
                continue;
            }

            rc = mr_store_dlv_create(txn, op, exec->rec.org, event_id, ids[i],
                                     &wh.seg[MR_WH_SEG_URL], exec->id, &type,
                                     op->now, NULL);
            if (rc != 0) {
                goto done;
            }

            made++;
        }

        /* the next batch: just after the last id seen */

        if (n == 64) {
            ngx_memcpy(start + MR_ORG_ID_LEN, ids[63], MR_WH_ID_LEN);
            start[sizeof(start) - 1]++;
        }

    } while (n == 64);

    rc = 0;

    /* the execution's own webhook_url: its terminal events */

    url = exec->seg[MR_SEG_WEBHOOK_URL];

    if (url.len > 2 && mr_status_terminal(exec->rec.status)) {
        u_char  secret[MR_WH_SECRET_LEN];

        url.data++;
        url.len -= 2;

        rc = mr_store_secret(txn, exec->rec.org, secret);
        if (rc != 0) {
            goto done;
        }

        rc = mr_store_dlv_create(txn, op, exec->rec.org, event_id, NULL, &url,
                                 exec->id, &type, op->now, NULL);
        made++;
    }

    /* endpoints there are, but none wants it: the event goes too */

    if (rc == 0 && made == 0) {
        k.mv_data = event_id;
        k.mv_size = MR_EVT_ID_LEN;

        rc = mdb_del(txn, mr_store.event, &k, NULL);
    }

done:

    ngx_destroy_pool(pool);

    return rc;
}


/* the account's default secret, made on first use */

static int
mr_store_secret(MDB_txn *txn, u_char *org, u_char *secret)
{
    int      rc;
    MDB_val  k, v;

    k.mv_data = org;
    k.mv_size = MR_ORG_ID_LEN;

    rc = mdb_get(txn, mr_store.whsecret, &k, &v);

    if (rc == 0 && v.mv_size == MR_WH_SECRET_LEN) {
        ngx_memcpy(secret, v.mv_data, MR_WH_SECRET_LEN);
        return 0;
    }

    if (rc != 0 && rc != MDB_NOTFOUND) {
        return rc;
    }

    if (mr_store_new_secret(secret) != NGX_OK) {
        return ENOMEM;
    }

    v.mv_data = secret;
    v.mv_size = MR_WH_SECRET_LEN;

    return mdb_put(txn, mr_store.whsecret, &k, &v, 0);
}


static int
mr_store_event_put(MDB_txn *txn, u_char *event_id, u_char *org,
    ngx_str_t *type, u_char *exec_id, ngx_str_t *data, int64_t now,
    ngx_pool_t *pool)
{
    MDB_val    v;
    ngx_str_t  body;

    if (mr_rule_event_body(event_id, org, type, exec_id, data, now, pool,
                           &body)
        != NGX_OK)
    {
        return ENOMEM;
    }

    v.mv_size = MR_ORG_ID_LEN + body.len;

    v.mv_data = ngx_pnalloc(pool, v.mv_size);
    if (v.mv_data == NULL) {
        return ENOMEM;
    }

    ngx_memcpy(ngx_cpymem(v.mv_data, org, MR_ORG_ID_LEN), body.data,
               body.len);

    return mr_store_seg_put(mr_store.event, txn, event_id, MR_EVT_ID_LEN,
                            v.mv_data, v.mv_size, NULL, NULL, 0, org,
                            MR_USAGE_EVENT, MR_LIMIT_BYTES, 0);
}


static int
mr_store_dlv_create(MDB_txn *txn, mr_store_op_t *op, u_char *org,
    u_char *event_id, u_char *wh_id, ngx_str_t *url, u_char *exec_id,
    ngx_str_t *type, int64_t now, u_char *id)
{
    int       rc;
    mr_dlv_t  dlv;

    ngx_memzero(&dlv, sizeof(mr_dlv_t));

    if (mr_rule_tid(dlv.rec.id, "dlv_", now) != NGX_OK) {
        return ENOMEM;
    }

    if (exec_id) {
        rc = mr_store_dlv_after(txn, exec_id, dlv.rec.id);
        if (rc != 0) {
            return rc;
        }
    }

    mr_rule_dlv_init(&dlv, event_id, org, wh_id, url, exec_id, type, now);

    rc = mr_store_dlv_due(txn, &dlv, now);
    if (rc != 0) {
        return rc;
    }

    rc = mr_store_dlv_put(txn, &dlv);
    if (rc != 0) {
        return rc;
    }

    if (wh_id) {
        rc = mr_store_index(mr_store.whdlv, txn, wh_id, MR_WH_ID_LEN,
                            dlv.rec.id, MR_DLV_ID_LEN, 1);
        if (rc != 0) {
            return rc;
        }
    }

    if (exec_id) {
        rc = mr_store_index(mr_store.execdlv, txn, exec_id, MR_EXEC_ID_LEN,
                            dlv.rec.id, MR_DLV_ID_LEN, 1);
        if (rc != 0) {
            return rc;
        }
    }

    if (id) {
        ngx_memcpy(id, dlv.rec.id, MR_DLV_ID_LEN);
    }

    op->emitted++;

    return 0;
}


static int
mr_store_wh_update(MDB_txn *txn, mr_store_op_t *op, ngx_int_t room)
{
    int         rc;
    int64_t     grow;
    mr_wh_t     wh;
    ngx_uint_t  ok;

    rc = mr_store_wh_read(txn, op->wh.wh_id, &wh, op->pool);
    if (rc == MDB_NOTFOUND
        || (rc == 0 && ngx_memcmp(wh.rec.org, op->org, MR_ORG_ID_LEN) != 0))
    {
        op->result = MR_R_NOT_FOUND;
        return 0;
    }

    if (rc != 0) {
        return rc;
    }

    /* the new values are in op->wh.ep: url, description, events, headers */

    mr_rule_wh_patch(op, &wh, &grow);

    if (grow > 0) {
        /* more data: not in the reserve, not past the account's limit */

        if (!room) {
            op->result = MR_R_STORAGE_FULL;
            return 0;
        }

        rc = mr_store_quota_check(txn, op, op->org, grow, MR_LIMIT_BYTES, 0,
                                  &ok);
        if (rc != 0 || !ok) {
            return rc;
        }
    }

    mr_rule_wh_active(op, &wh);

    rc = mr_store_wh_put(txn, &wh, 0);
    if (rc != 0) {
        return rc;
    }

    op->wh.ep = wh;

    return 0;
}


static int
mr_store_wh_test(MDB_txn *txn, mr_store_op_t *op)
{
    int         rc;
    u_char     *p;
    mr_wh_t     wh;
    ngx_str_t   type, data;
    ngx_uint_t  ok;
    u_char      buf[sizeof("{\"endpoint_id\":\"\"}") + MR_WH_ID_LEN];

    rc = mr_store_wh_read(txn, op->wh.wh_id, &wh, NULL);
    if (rc == MDB_NOTFOUND
        || (rc == 0 && ngx_memcmp(wh.rec.org, op->org, MR_ORG_ID_LEN) != 0))
    {
        op->result = MR_R_NOT_FOUND;
        return 0;
    }

    if (rc != 0) {
        return rc;
    }

    /* an event and a delivery more for the account to keep */

    rc = mr_store_quota_check(txn, op, op->org, MR_WH_TEST_SIZE
                              + (int64_t) wh.seg[MR_WH_SEG_URL].len,
                              MR_LIMIT_BYTES, 0, &ok);
    if (rc != 0 || !ok) {
        return rc;
    }

    ngx_str_set(&type, "webhook.test");

    p = ngx_sprintf(buf, "{\"endpoint_id\":\"%*s\"}", (size_t) MR_WH_ID_LEN,
                    op->wh.wh_id);
    data.data = buf;
    data.len = p - buf;

    if (mr_rule_tid(op->wh.event_id, "evt_", op->now) != NGX_OK) {
        return ENOMEM;
    }

    rc = mr_store_event_put(txn, op->wh.event_id, op->org, &type, NULL,
                            &data, op->now, op->pool);
    if (rc != 0) {
        return rc;
    }

    /* the id of the delivery made: the answer's */

    return mr_store_dlv_create(txn, op, op->org, op->wh.event_id,
                               op->wh.wh_id, &wh.seg[MR_WH_SEG_URL], NULL,
                               &type, op->now, op->wh.dlv_id);
}


static int
mr_store_dlv_retry(MDB_txn *txn, mr_store_op_t *op)
{
    int       rc;
    mr_wh_t   wh;
    mr_dlv_t  dlv;

    rc = mr_store_dlv_read(txn, op->wh.dlv_id, &dlv, op->pool);
    if (rc == MDB_NOTFOUND
        || (rc == 0 && ngx_memcmp(dlv.rec.org, op->org, MR_ORG_ID_LEN) != 0))
    {
        op->result = MR_R_NOT_FOUND;
        return 0;
    }

    if (rc == 0 && ngx_memcmp(dlv.rec.wh_id, mr_zero, MR_WH_ID_LEN) != 0) {

        /* its endpoint was deleted: the delivery goes with it */

        rc = mr_store_wh_read(txn, dlv.rec.wh_id, &wh, NULL);

        if (rc == MDB_NOTFOUND) {
            op->result = MR_R_NOT_FOUND;
            return mr_store_dlv_drop(txn, &dlv);
        }
    }

    if (rc != 0) {
        return rc;
    }

    /* a new schedule and max age from now; due now unless being sent */

    if (mr_rule_dlv_retry(&dlv, op->now)) {
        rc = mr_store_dlv_due(txn, &dlv, op->now);
        if (rc != 0) {
            return rc;
        }

        op->emitted++;
    }

    rc = mr_store_dlv_put(txn, &dlv);
    if (rc != 0) {
        return rc;
    }

    op->wh.dlv = dlv;

    return 0;
}


/*
 * Claims due deliveries, each with a lease; op->wh.jobs gets them.
 *
 * The accounts that have pending deliveries are visited in turn, from
 * the one after the account this worker's last claim visited, and in
 * each account up to MR_DLV_TARGETS of its targets from a random point.
 * An account takes at most webhook_per_account attempts in flight (this
 * worker's, counted from op->wh.busy, and those claimed now), a target
 * at most op->wh.per_endpoint.  However many deliveries one account
 * queues, and to however many targets, each claim comes by the others,
 * and takes at most MR_DLV_STEPS steps in the index.
 */

static int
mr_store_dlv_claim(MDB_txn *txn, mr_store_op_t *op)
{
    int              rc;
    MDB_val          k, v;
    ngx_uint_t       steps, wrapped, first, resume;
    ngx_pool_t      *pool;
    MDB_cursor      *cur;
    mr_dlv_visit_t  *vt;
    u_char           org[MR_ORG_ID_LEN], start[MR_ORG_ID_LEN];
    u_char           seek[MR_ORG_ID_LEN + 1];

    op->wh.jobs = NULL;
    op->wh.claimed = 0;

    if (op->wh.limit == 0) {
        return 0;
    }

    pool = ngx_create_pool(8192, ngx_cycle->log);
    if (pool == NULL) {
        return ENOMEM;
    }

    vt = ngx_palloc(pool, sizeof(mr_dlv_visit_t));
    if (vt == NULL) {
        ngx_destroy_pool(pool);
        return ENOMEM;
    }

    ngx_memcpy(start, mr_dlv_cursor, MR_ORG_ID_LEN);
    resume = mr_dlv_cursor_set;
    first = !resume;
    wrapped = first;

    /* just after the account visited last: its id and a byte above all */

    ngx_memcpy(seek, start, MR_ORG_ID_LEN);
    seek[MR_ORG_ID_LEN] = 0xff;

    steps = 0;
    rc = 0;

    while (steps < MR_DLV_STEPS && op->wh.claimed < op->wh.limit) {

        rc = mdb_cursor_open(txn, mr_store.dlvq, &cur);
        if (rc != 0) {
            break;
        }

        k.mv_data = seek;
        k.mv_size = sizeof(seek);

        rc = mdb_cursor_get(cur, &k, &v, first ? MDB_FIRST : MDB_SET_RANGE);
        steps++;

        if (rc == 0 && k.mv_size != MR_DLV_KEY_LEN) {
            rc = MDB_CORRUPTED;
        }

        if (rc == 0) {
            ngx_memcpy(org, k.mv_data, MR_ORG_ID_LEN);
        }

        mdb_cursor_close(cur);

        if (rc == MDB_NOTFOUND) {
            rc = 0;

            if (wrapped) {
                break;
            }

            /* from the first account up to where this claim started */
            wrapped = 1;
            first = 1;
            continue;
        }

        if (rc != 0) {
            break;
        }

        first = 0;

        if (wrapped && resume && ngx_memcmp(org, start, MR_ORG_ID_LEN) > 0) {
            break;                  /* every account was visited */
        }

        rc = mr_store_dlv_account(txn, op, org, vt, &steps, pool);
        if (rc != 0) {
            break;
        }

        ngx_memcpy(mr_dlv_cursor, org, MR_ORG_ID_LEN);
        mr_dlv_cursor_set = 1;

        if (wrapped && resume && ngx_memcmp(org, start, MR_ORG_ID_LEN) == 0) {
            break;
        }

        ngx_memcpy(seek, org, MR_ORG_ID_LEN);
        seek[MR_ORG_ID_LEN] = 0xff;
    }

    ngx_destroy_pool(pool);

    if (rc != 0) {
        while (op->wh.jobs) {
            mr_dlv_job_t  *job = op->wh.jobs;

            op->wh.jobs = job->next;
            ngx_free(job);
        }
    }

    return rc;
}


/* an account's turn: its targets from a random point, then from the first */

static int
mr_store_dlv_account(MDB_txn *txn, mr_store_op_t *op, u_char *org,
    mr_dlv_visit_t *vt, ngx_uint_t *steps, ngx_pool_t *pool)
{
    int              rc;
    int64_t          due;
    MDB_val          k, v;
    ngx_uint_t       n, wrapped, mode;
    MDB_cursor      *cur;
    u_char           rnd[12];
    u_char           seek[MR_DLV_BUSY_LEN + 1];
    u_char           start[MR_WH_TARGET_LEN];

    if (mr_rule_dlv_busy(op, org, MR_ORG_ID_LEN)
        >= mr_store.mcf->webhook_per_account)
    {
        return 0;
    }

    if (mr_random_bytes(rnd, sizeof(rnd)) != NGX_OK) {
        return ENOMEM;
    }

    /* a random target id to start from: "wh_" or "wu_" and 24 hex */

    start[0] = 'w';
    start[1] = (rnd[0] & 1) ? 'h' : 'u';
    start[2] = '_';
    mr_hex(start + 3, rnd, sizeof(rnd));

    ngx_memcpy(seek, org, MR_ORG_ID_LEN);
    ngx_memcpy(seek + MR_ORG_ID_LEN, start, MR_WH_TARGET_LEN);
    k.mv_size = MR_DLV_BUSY_LEN;

    wrapped = 0;

    for (n = 0; n < MR_DLV_TARGETS && *steps < MR_DLV_STEPS; n++) {

        if (op->wh.claimed >= op->wh.limit
            || mr_rule_dlv_busy(op, org, MR_ORG_ID_LEN)
               >= mr_store.mcf->webhook_per_account)
        {
            break;
        }

        rc = mdb_cursor_open(txn, mr_store.dlvq, &cur);
        if (rc != 0) {
            return rc;
        }

        k.mv_data = seek;

        rc = mdb_cursor_get(cur, &k, &v, MDB_SET_RANGE);
        (*steps)++;

        if (rc == 0
            && (k.mv_size != MR_DLV_KEY_LEN
                || ngx_memcmp(k.mv_data, org, MR_ORG_ID_LEN) != 0))
        {
            rc = MDB_NOTFOUND;      /* past the account's targets */
        }

        if (rc == MDB_NOTFOUND) {
            mdb_cursor_close(cur);

            if (wrapped) {
                break;
            }

            wrapped = 1;
            k.mv_size = MR_ORG_ID_LEN;     /* its first target */
            continue;
        }

        if (rc != 0) {
            mdb_cursor_close(cur);
            return rc;
        }

        if (wrapped
            && ngx_memcmp((u_char *) k.mv_data + MR_ORG_ID_LEN, start,
                          MR_WH_TARGET_LEN) >= 0)
        {
            mdb_cursor_close(cur);
            break;                  /* back where the visit started */
        }

        ngx_memcpy(vt->busy, k.mv_data, MR_DLV_BUSY_LEN);

        mdb_cursor_close(cur);

        /* what the target is: an endpoint's state, or a webhook_url */

        mode = MR_DLV_CLAIM;

        if (ngx_strncmp(vt->busy + MR_ORG_ID_LEN, "wh_", 3) == 0) {
            rc = mr_store_wh_read(txn, vt->busy + MR_ORG_ID_LEN, &vt->wh,
                                  pool);
            (*steps)++;

            if (rc == MDB_NOTFOUND) {
                mode = MR_DLV_DROP;

            } else if (rc != 0) {
                return rc;

            } else if (!vt->wh.rec.active) {
                mode = MR_DLV_PARKED;
            }
        }

        vt->mode = mode;

        /* its first entries: due ones, or any for a deleted endpoint */

        rc = mdb_cursor_open(txn, mr_store.dlvq, &cur);
        if (rc != 0) {
            return rc;
        }

        k.mv_data = vt->busy;
        k.mv_size = MR_DLV_BUSY_LEN;
        vt->n = 0;

        for (rc = mdb_cursor_get(cur, &k, &v, MDB_SET_RANGE);
             rc == 0 && vt->n < MR_DLV_TAKE && *steps < MR_DLV_STEPS;
             rc = mdb_cursor_get(cur, &k, &v, MDB_NEXT))
        {
            (*steps)++;

            if (k.mv_size != MR_DLV_KEY_LEN
                || ngx_memcmp(k.mv_data, vt->busy, MR_DLV_BUSY_LEN) != 0)
            {
                break;
            }

            due = (int64_t) mr_be64_get((u_char *) k.mv_data
                                        + MR_DLV_BUSY_LEN);

            if (due > op->now && mode != MR_DLV_DROP) {
                break;
            }

            ngx_memcpy(vt->keys[vt->n++], k.mv_data, MR_DLV_KEY_LEN);
        }

        mdb_cursor_close(cur);

        if (rc != 0 && rc != MDB_NOTFOUND) {
            return rc;
        }

        rc = mr_store_dlv_target_visit(txn, op, vt, pool);
        if (rc != 0) {
            return rc;
        }

        /* the next target: just after this one's entries */

        ngx_memcpy(seek, vt->busy, MR_DLV_BUSY_LEN);
        seek[MR_DLV_BUSY_LEN] = 0xff;
        k.mv_size = MR_DLV_BUSY_LEN + 1;
    }

    return 0;
}


/* the entries read from a target's queue: claimed, failed or dropped */

static int
mr_store_dlv_target_visit(MDB_txn *txn, mr_store_op_t *op,
    mr_dlv_visit_t *vt, ngx_pool_t *pool)
{
    int         rc;
    MDB_val     k;
    mr_dlv_t    dlv;
    ngx_uint_t  i;

    for (i = 0; i < vt->n; i++) {

        if (vt->mode == MR_DLV_CLAIM) {
            if (op->wh.claimed >= op->wh.limit
                || mr_rule_dlv_busy(op, vt->busy, MR_DLV_BUSY_LEN)
                   >= op->wh.per_endpoint
                || mr_rule_dlv_busy(op, vt->busy, MR_ORG_ID_LEN)
                   >= mr_store.mcf->webhook_per_account)
            {
                break;
            }

            rc = mr_store_dlv_claim_one(txn, op, vt, vt->keys[i], pool);
            if (rc != 0) {
                return rc;
            }

            continue;
        }

        rc = mr_store_dlv_read(txn, vt->keys[i] + MR_DLV_BUSY_LEN + 8, &dlv,
                               NULL);

        if (rc == MDB_NOTFOUND
            || (rc == 0
                && (dlv.rec.status != MR_DLV_PENDING
                    || dlv.rec.due_ms
                       != (int64_t) mr_be64_get(vt->keys[i]
                                                + MR_DLV_BUSY_LEN))))
        {
            /* a stale entry of the queue */
            k.mv_data = vt->keys[i];
            k.mv_size = MR_DLV_KEY_LEN;

            rc = mdb_del(txn, mr_store.dlvq, &k, NULL);

        } else if (rc == 0 && vt->mode == MR_DLV_DROP) {
            rc = mr_store_dlv_drop(txn, &dlv);

        } else if (rc == 0
                   && mr_rule_dlv_expired(mr_store.mcf, &dlv, op->now))
        {
            /* parked past its max age: failed, purged by the retention */
            rc = mr_store_dlv_end(txn, &dlv, MR_DLV_FAILED);
        }

        if (rc != 0 && rc != MDB_NOTFOUND) {
            return rc;
        }
    }

    return 0;
}


/* one entry of a target's queue */

static int
mr_store_dlv_claim_one(MDB_txn *txn, mr_store_op_t *op, mr_dlv_visit_t *vt,
    u_char *key, ngx_pool_t *pool)
{
    int            rc;
    u_char        *p;
    size_t         size;
    MDB_val        k, v, ev;
    mr_dlv_t       dlv, other;
    ngx_str_t      url, secret, headers;
    MDB_cursor    *cur;
    mr_dlv_job_t  *job;
    u_char         sbuf[MR_WH_SECRET_LEN];
    u_char         ekey[MR_EXEC_ID_LEN + MR_DLV_ID_LEN];

    rc = mr_store_dlv_read(txn, key + MR_DLV_BUSY_LEN + 8, &dlv, pool);

    if (rc == MDB_NOTFOUND
        || (rc == 0
            && (dlv.rec.status != MR_DLV_PENDING
                || dlv.rec.due_ms != (int64_t) mr_be64_get(key
                                                     + MR_DLV_BUSY_LEN))))
    {
        /* a stale entry of the queue */
        k.mv_data = key;
        k.mv_size = MR_DLV_KEY_LEN;

        rc = mdb_del(txn, mr_store.dlvq, &k, NULL);
        return (rc == MDB_NOTFOUND) ? 0 : rc;
    }

    if (rc != 0) {
        return rc;
    }

    ngx_str_null(&headers);

    if (ngx_memcmp(dlv.rec.wh_id, mr_zero, MR_WH_ID_LEN) != 0) {
        url = vt->wh.seg[MR_WH_SEG_URL];
        secret = vt->wh.seg[MR_WH_SEG_SECRET];
        headers = vt->wh.seg[MR_WH_SEG_HEADERS];

    } else {
        url = dlv.seg[MR_DLV_SEG_URL];

        rc = mr_store_secret(txn, dlv.rec.org, sbuf);
        if (rc != 0) {
            return rc;
        }

        secret.data = sbuf;
        secret.len = MR_WH_SECRET_LEN;
    }

    /* the events of one execution reach a destination in order */

    if (ngx_memcmp(dlv.rec.exec_id, mr_zero, MR_EXEC_ID_LEN) != 0) {

        rc = mdb_cursor_open(txn, mr_store.execdlv, &cur);
        if (rc != 0) {
            return rc;
        }

        ngx_memcpy(ekey, dlv.rec.exec_id, MR_EXEC_ID_LEN);
        ngx_memzero(ekey + MR_EXEC_ID_LEN, MR_DLV_ID_LEN);

        k.mv_data = ekey;
        k.mv_size = sizeof(ekey);

        for (rc = mdb_cursor_get(cur, &k, &v, MDB_SET_RANGE);
             rc == 0;
             rc = mdb_cursor_get(cur, &k, &v, MDB_NEXT))
        {
            if (k.mv_size != sizeof(ekey)
                || ngx_memcmp(k.mv_data, dlv.rec.exec_id, MR_EXEC_ID_LEN)
                   != 0
                || ngx_memcmp((u_char *) k.mv_data + MR_EXEC_ID_LEN,
                              dlv.rec.id, MR_DLV_ID_LEN) >= 0)
            {
                rc = MDB_NOTFOUND;
                break;
            }

            rc = mr_store_dlv_read(txn, (u_char *) k.mv_data
                                        + MR_EXEC_ID_LEN, &other, NULL);
            if (rc != 0) {
                break;
            }

            if (other.rec.status == MR_DLV_PENDING
                && ngx_memcmp(other.rec.wh_id, dlv.rec.wh_id, MR_WH_ID_LEN)
                   == 0)
            {
                break;    /* an earlier one goes first */
            }
        }

        mdb_cursor_close(cur);

        if (rc == 0) {
            /*
             * it waits: behind the earlier one in the queue, its lease,
             * if one ended unanswered, over (mr_rule_dlv_park())
             */

            mr_rule_dlv_park(&dlv);

            rc = mr_store_dlv_due(txn, &dlv,
                                  mr_rule_dlv_wait_due(other.rec.due_ms,
                                                       other.rec.token != 0,
                                                       op->now));
            if (rc != 0) {
                return rc;
            }

            return mr_store_dlv_put(txn, &dlv);
        }

        if (rc != MDB_NOTFOUND) {
            return rc;
        }
    }

    k.mv_data = dlv.rec.event_id;
    k.mv_size = MR_EVT_ID_LEN;

    rc = mdb_get(txn, mr_store.event, &k, &ev);

    if (rc == MDB_NOTFOUND || (rc == 0 && ev.mv_size <= MR_ORG_ID_LEN)) {
        /* purged: nothing to send any more */
        return mr_store_dlv_end(txn, &dlv, MR_DLV_FAILED);
    }

    if (rc != 0) {
        return rc;
    }

    size = sizeof(mr_dlv_job_t) + url.len + 1 + secret.len + headers.len
           + ev.mv_size - MR_ORG_ID_LEN;

    job = ngx_alloc(size, ngx_cycle->log);
    if (job == NULL) {
        return ENOMEM;
    }

    ngx_memcpy(job->dlv_id, dlv.rec.id, MR_DLV_ID_LEN);
    ngx_memcpy(job->wh_id, dlv.rec.wh_id, MR_WH_ID_LEN);
    ngx_memcpy(job->event_id, dlv.rec.event_id, MR_EVT_ID_LEN);
    ngx_memcpy(job->busy, vt->busy, MR_DLV_BUSY_LEN);

    if (mr_random_bytes((u_char *) &job->token, sizeof(uint64_t)) != NGX_OK) {
        ngx_free(job);
        return ENOMEM;
    }

    p = (u_char *) (job + 1);

    job->url.data = p;
    job->url.len = url.len;
    p = mr_cpymem(p, url.data, url.len);
    *p++ = '\0';

    job->secret.data = p;
    job->secret.len = secret.len;
    p = mr_cpymem(p, secret.data, secret.len);

    job->headers.data = p;
    job->headers.len = headers.len;
    p = mr_cpymem(p, headers.data, headers.len);

    job->body.data = p;
    job->body.len = ev.mv_size - MR_ORG_ID_LEN;
    ngx_memcpy(p, (u_char *) ev.mv_data + MR_ORG_ID_LEN, job->body.len);

    dlv.rec.token = job->token;

    rc = mr_store_dlv_due(txn, &dlv, op->now + op->wh.lease_ms);
    if (rc == 0) {
        rc = mr_store_dlv_put(txn, &dlv);
    }

    if (rc != 0) {
        ngx_free(job);
        return rc;
    }

    job->next = op->wh.jobs;
    op->wh.jobs = job;
    op->wh.claimed++;

    return 0;
}


/* the outcome of an attempt */

static int
mr_store_dlv_done(MDB_txn *txn, mr_store_op_t *op)
{
    int          rc;
    mr_wh_t      wh, *whp;
    mr_dlv_t     dlv;
    ngx_pool_t  *pool;

    pool = ngx_create_pool(2048, ngx_cycle->log);
    if (pool == NULL) {
        return ENOMEM;
    }

    rc = mr_store_dlv_read(txn, op->wh.dlv_id, &dlv, pool);

    if (rc == MDB_NOTFOUND || (rc == 0 && mr_rule_dlv_late(op, &dlv))) {
        /* deleted, or taken over by another worker after its lease */
        op->result = MR_R_NOOP;
        ngx_destroy_pool(pool);
        return 0;
    }

    if (rc != 0) {
        ngx_destroy_pool(pool);
        return rc;
    }

    /* the endpoint, for its health */

    whp = NULL;

    if (ngx_memcmp(dlv.rec.wh_id, mr_zero, MR_WH_ID_LEN) != 0) {
        rc = mr_store_wh_read(txn, dlv.rec.wh_id, &wh, pool);

        if (rc == 0) {
            whp = &wh;

        } else if (rc != MDB_NOTFOUND) {
            ngx_destroy_pool(pool);
            return rc;
        }
    }

    rc = mr_rule_dlv_done(op, &dlv, whp, pool);

    if (rc == 0 && whp) {
        rc = mr_store_wh_put(txn, whp, 0);
    }

    if (rc == 0) {
        rc = mr_store_dlv_due(txn, &dlv, dlv.rec.next_ms);
    }

    if (rc == 0) {
        rc = mr_store_dlv_put(txn, &dlv);
    }

    ngx_destroy_pool(pool);

    return rc;
}


/*
 * The sweeper: finished deliveries older than the retention, at most
 * limit of them.
 */

int
mr_store_dlv_purge(MDB_txn *txn, mr_store_op_t *op, ngx_uint_t limit)
{
    int          rc;
    MDB_val      k, v;
    mr_dlv_t     dlv;
    ngx_uint_t   i, n;
    MDB_cursor  *cur;
    u_char       ids[MR_STORE_SWEEP_MAX][MR_DLV_ID_LEN];

    if (op->retention_ms == 0) {
        return 0;
    }

    limit = ngx_min(limit, MR_STORE_SWEEP_MAX);

    /* deliveries: ids sort by creation time */

    rc = mdb_cursor_open(txn, mr_store.dlv, &cur);
    if (rc != 0) {
        return rc;
    }

    n = 0;

    /* pending ones are passed over a budget at a time (mr_store_walk_t) */

    for (rc = mr_store_walk_first(cur, &mr_store_dlv_walk, &k, &v);
         rc == 0 && n < limit;
         rc = mdb_cursor_get(cur, &k, &v, MDB_NEXT))
    {
        mr_dlv_rec_t  rec;

        if (mr_store_walk_stop(&mr_store_dlv_walk, &k, op)) {
            break;
        }

        if (k.mv_size != MR_DLV_ID_LEN || v.mv_size < sizeof(mr_dlv_rec_t)) {
            continue;
        }

        ngx_memcpy(&rec, v.mv_data, sizeof(mr_dlv_rec_t));

        /* the id's time orders the walk (a retry renews created_ms) */

        if (mr_rule_id_ms((u_char *) k.mv_data + 4) + op->retention_ms
            > op->now)
        {
            mr_store_dlv_walk.len = 0;        /* from the oldest again */
            break;
        }

        if (rec.status != MR_DLV_PENDING) {
            ngx_memcpy(ids[n++], k.mv_data, MR_DLV_ID_LEN);
        }
    }

    mr_store_walk_end(&mr_store_dlv_walk, rc, &k, n == limit);

    mdb_cursor_close(cur);

    if (rc != 0 && rc != MDB_NOTFOUND) {
        return rc;
    }

    op->more |= (n == limit);

    for (i = 0; i < n; i++) {
        rc = mr_store_dlv_read(txn, ids[i], &dlv, NULL);

        if (rc == 0) {
            rc = mr_store_dlv_drop(txn, &dlv);
        }

        if (rc != 0 && rc != MDB_NOTFOUND) {
            return rc;
        }

        op->purged++;
    }

    return 0;
}


/*
 * Events older than the retention and than the deliveries' last possible
 * attempt, which may still need them (op->wh.max_age_ms), at most limit.
 */

int
mr_store_event_purge(MDB_txn *txn, mr_store_op_t *op, ngx_uint_t limit)
{
    int          rc;
    MDB_val      k, v;
    ngx_uint_t   i, n;
    MDB_cursor  *cur;
    u_char       ids[MR_STORE_SWEEP_MAX][MR_EVT_ID_LEN];
    u_char       orgs[MR_STORE_SWEEP_MAX][MR_ORG_ID_LEN];

    if (op->retention_ms == 0) {
        return 0;
    }

    limit = ngx_min(limit, MR_STORE_SWEEP_MAX);

    /* events: ids sort by creation time */

    rc = mdb_cursor_open(txn, mr_store.event, &cur);
    if (rc != 0) {
        return rc;
    }

    n = 0;

    for (rc = mdb_cursor_get(cur, &k, &v, MDB_FIRST);
         rc == 0 && n < limit;
         rc = mdb_cursor_get(cur, &k, &v, MDB_NEXT))
    {
        int64_t  created;

        if (k.mv_size != MR_EVT_ID_LEN || v.mv_size < MR_ORG_ID_LEN) {
            continue;
        }

        created = mr_rule_id_ms((u_char *) k.mv_data + 4);

        if (mr_rule_event_kept(op, created)) {
            break;
        }

        ngx_memcpy(orgs[n], v.mv_data, MR_ORG_ID_LEN);
        ngx_memcpy(ids[n++], k.mv_data, MR_EVT_ID_LEN);
    }

    mdb_cursor_close(cur);

    if (rc != 0 && rc != MDB_NOTFOUND) {
        return rc;
    }

    op->more |= (n == limit);

    for (i = 0; i < n; i++) {
        k.mv_data = ids[i];
        k.mv_size = MR_EVT_ID_LEN;

        rc = mr_store_counted_del(txn, mr_store.event, &k, orgs[i],
                                  MR_USAGE_EVENT);
        if (rc != 0 && rc != MDB_NOTFOUND) {
            return rc;
        }

        op->purged++;
    }

    return 0;
}


/* a delivery leaves the store, with its index entries */

static int
mr_store_dlv_drop(MDB_txn *txn, mr_dlv_t *dlv)
{
    int      rc;
    MDB_val  k;

    rc = mr_store_dlv_due(txn, dlv, 0);

    if (rc == 0 && ngx_memcmp(dlv->rec.exec_id, mr_zero, MR_EXEC_ID_LEN) != 0)
    {
        rc = mr_store_index(mr_store.execdlv, txn, dlv->rec.exec_id,
                            MR_EXEC_ID_LEN, dlv->rec.id, MR_DLV_ID_LEN, 0);
    }

    if (rc == 0 && ngx_memcmp(dlv->rec.wh_id, mr_zero, MR_WH_ID_LEN) != 0) {
        rc = mr_store_index(mr_store.whdlv, txn, dlv->rec.wh_id,
                            MR_WH_ID_LEN, dlv->rec.id, MR_DLV_ID_LEN, 0);
    }

    if (rc == 0) {
        k.mv_data = dlv->rec.id;
        k.mv_size = MR_DLV_ID_LEN;

        rc = mr_store_counted_del(txn, mr_store.dlv, &k, dlv->rec.org,
                                  MR_USAGE_DLV);
    }

    return rc;
}


/* a pending delivery ends without an attempt: out of its queue */

static int
mr_store_dlv_end(MDB_txn *txn, mr_dlv_t *dlv, ngx_uint_t status)
{
    int  rc;

    dlv->rec.status = status;
    dlv->rec.next_ms = 0;
    dlv->rec.token = 0;

    rc = mr_store_dlv_due(txn, dlv, 0);

    return rc ? rc : mr_store_dlv_put(txn, dlv);
}


/* a delivery's key in the queues: org + target + be64 due + id */

int
mr_store_dlvq_key(mr_dlv_t *dlv, int64_t due, u_char *key)
{
    ngx_memcpy(key, dlv->rec.org, MR_ORG_ID_LEN);
    mr_rule_dlv_target(dlv, key + MR_ORG_ID_LEN);
    mr_be64_put(key + MR_DLV_BUSY_LEN, (uint64_t) due);
    ngx_memcpy(key + MR_DLV_BUSY_LEN + 8, dlv->rec.id, MR_DLV_ID_LEN);

    return 0;
}


/* moves a delivery in its queue; due 0: out of it */

static int
mr_store_dlv_due(MDB_txn *txn, mr_dlv_t *dlv, int64_t due)
{
    int      rc;
    MDB_val  k, v;
    u_char   key[MR_DLV_KEY_LEN];

    k.mv_data = key;
    k.mv_size = sizeof(key);

    if (dlv->rec.due_ms) {
        mr_store_dlvq_key(dlv, dlv->rec.due_ms, key);

        rc = mdb_del(txn, mr_store.dlvq, &k, NULL);
        if (rc != 0 && rc != MDB_NOTFOUND) {
            return rc;
        }
    }

    dlv->rec.due_ms = due;

    if (due == 0) {
        return 0;
    }

    mr_store_dlvq_key(dlv, due, key);

    v.mv_data = "";
    v.mv_size = 0;

    return mdb_put(txn, mr_store.dlvq, &k, &v, 0);
}


/* records */

static int
mr_store_wh_read(MDB_txn *txn, u_char *id, mr_wh_t *wh, ngx_pool_t *pool)
{
    int      rc;
    MDB_val  k, v;

    k.mv_data = id;
    k.mv_size = MR_WH_ID_LEN;

    rc = mdb_get(txn, mr_store.whep, &k, &v);
    if (rc != 0) {
        return rc;
    }

    return mr_store_seg_parse(v.mv_data, v.mv_size, &wh->rec,
                              sizeof(mr_wh_rec_t), wh->rec.seg_len, wh->seg,
                              MR_WH_SEG_N, pool);
}


/* count: 1 for a new endpoint */

static int
mr_store_wh_put(MDB_txn *txn, mr_wh_t *wh, int64_t count)
{
    return mr_store_seg_put(mr_store.whep, txn, wh->rec.id, MR_WH_ID_LEN,
                            &wh->rec, sizeof(mr_wh_rec_t), wh->rec.seg_len,
                            wh->seg, MR_WH_SEG_N, wh->rec.org, MR_USAGE_WH,
                            MR_LIMIT_ENDPOINTS, count);
}


int
mr_store_dlv_read(MDB_txn *txn, u_char *id, mr_dlv_t *dlv, ngx_pool_t *pool)
{
    int      rc;
    MDB_val  k, v;

    k.mv_data = id;
    k.mv_size = MR_DLV_ID_LEN;

    rc = mdb_get(txn, mr_store.dlv, &k, &v);
    if (rc != 0) {
        return rc;
    }

    return mr_store_seg_parse(v.mv_data, v.mv_size, &dlv->rec,
                              sizeof(mr_dlv_rec_t), dlv->rec.seg_len,
                              dlv->seg, MR_DLV_SEG_N, pool);
}


/* a delivery's record; its segments point into data */

int
mr_store_dlv_parse(u_char *data, size_t size, mr_dlv_t *dlv)
{
    return mr_store_seg_parse(data, size, &dlv->rec, sizeof(mr_dlv_rec_t),
                              dlv->rec.seg_len, dlv->seg, MR_DLV_SEG_N,
                              NULL);
}


int
mr_store_dlv_put(MDB_txn *txn, mr_dlv_t *dlv)
{
    return mr_store_seg_put(mr_store.dlv, txn, dlv->rec.id, MR_DLV_ID_LEN,
                            &dlv->rec, sizeof(mr_dlv_rec_t),
                            dlv->rec.seg_len, dlv->seg, MR_DLV_SEG_N,
                            dlv->rec.org, MR_USAGE_DLV, MR_LIMIT_BYTES, 0);
}


/*
 * A record and its segments, counted in its account's use: its bytes
 * (key, value and extra for its index entries), and count more of which
 */

static int
mr_store_seg_put(MDB_dbi dbi, MDB_txn *txn, u_char *key, size_t klen,
    void *rec, size_t rlen, uint32_t *seg_len, ngx_str_t *seg,
    ngx_uint_t nseg, u_char *org, size_t extra, ngx_uint_t which,
    int64_t count)
{
    int         rc;
    u_char     *p;
    int64_t     bytes;
    MDB_val     k, v;
    ngx_uint_t  i;

    v.mv_size = rlen;

    for (i = 0; i < nseg; i++) {
        seg_len[i] = (uint32_t) seg[i].len;
        v.mv_size += seg[i].len;
    }

    k.mv_data = key;
    k.mv_size = klen;

    rc = mr_store_counted_put(txn, dbi, &k, &v, extra, &bytes);
    if (rc != 0) {
        return rc;
    }

    p = ngx_cpymem(v.mv_data, rec, rlen);

    for (i = 0; i < nseg; i++) {
        p = mr_cpymem(p, seg[i].data, seg[i].len);
    }

    return mr_store_usage(txn, org, bytes, which, count);
}


static int
mr_store_seg_parse(u_char *data, size_t size, void *rec, size_t rlen,
    uint32_t *seg_len, ngx_str_t *seg, ngx_uint_t nseg, ngx_pool_t *pool)
{
    u_char      *p, *last;
    ngx_uint_t   i;

    if (size < rlen) {
        return MDB_CORRUPTED;
    }

    ngx_memcpy(rec, data, rlen);

    p = data + rlen;
    last = data + size;

    for (i = 0; i < nseg; i++) {
        if (seg_len[i] > (size_t) (last - p)) {
            return MDB_CORRUPTED;
        }

        if (mr_store_copy(pool, &seg[i], p, seg_len[i]) != NGX_OK) {
            return ENOMEM;
        }

        p += seg_len[i];
    }

    return 0;
}


/* an index entry a + b -> "" */

static int
mr_store_index(MDB_dbi dbi, MDB_txn *txn, u_char *a, size_t alen, u_char *b,
    size_t blen, ngx_uint_t add)
{
    int      rc;
    MDB_val  k, v;
    u_char   key[128];

    if (alen + blen > sizeof(key)) {
        return EINVAL;
    }

    ngx_memcpy(key, a, alen);
    if (blen) {
        ngx_memcpy(key + alen, b, blen);
    }

    k.mv_data = key;
    k.mv_size = alen + blen;
    v.mv_data = "";
    v.mv_size = 0;

    if (add) {
        return mdb_put(txn, dbi, &k, &v, 0);
    }

    rc = mdb_del(txn, dbi, &k, NULL);

    return rc == MDB_NOTFOUND ? 0 : rc;
}


/* a new delivery of an execution sorts after its last one (the rule) */

static int
mr_store_dlv_after(MDB_txn *txn, u_char *exec_id, u_char *id)
{
    int          rc;
    MDB_val      k, v;
    MDB_cursor  *cur;
    u_char       key[MR_EXEC_ID_LEN + 5];

    rc = mdb_cursor_open(txn, mr_store.execdlv, &cur);
    if (rc != 0) {
        return rc;
    }

    /* just after the execution's last delivery: "dlv_" + a non-hex byte */

    ngx_memcpy(key, exec_id, MR_EXEC_ID_LEN);
    ngx_memcpy(key + MR_EXEC_ID_LEN, "dlv_~", 5);

    k.mv_data = key;
    k.mv_size = sizeof(key);

    rc = mdb_cursor_get(cur, &k, &v, MDB_SET_RANGE);

    if (rc == 0) {
        rc = mdb_cursor_get(cur, &k, &v, MDB_PREV);

    } else if (rc == MDB_NOTFOUND) {
        rc = mdb_cursor_get(cur, &k, &v, MDB_LAST);
    }

    if (rc == 0
        && k.mv_size == MR_EXEC_ID_LEN + MR_DLV_ID_LEN
        && ngx_memcmp(k.mv_data, exec_id, MR_EXEC_ID_LEN) == 0)
    {
        mr_rule_dlv_after((u_char *) k.mv_data + MR_EXEC_ID_LEN, id);
    }

    mdb_cursor_close(cur);

    return (rc == MDB_NOTFOUND) ? 0 : rc;
}


/* reads */

ngx_int_t
mr_store_wh_get(u_char *wh_id, mr_wh_t *wh, ngx_pool_t *pool)
{
    int       rc;
    MDB_txn  *txn;

    txn = mr_store_read_begin();
    if (txn == NULL) {
        return NGX_ERROR;
    }

    rc = mr_store_wh_read(txn, wh_id, wh, pool);

    mr_store_read_end();

    return mr_store_read_rc(rc, "endpoint");
}


ngx_int_t
mr_store_wh_list(u_char *org, ngx_array_t *whs, ngx_pool_t *pool)
{
    int          rc;
    MDB_val      k, v;
    mr_wh_t     *wh;
    MDB_txn     *txn;
    MDB_cursor  *cur;

    txn = mr_store_read_begin();
    if (txn == NULL) {
        return NGX_ERROR;
    }

    rc = mdb_cursor_open(txn, mr_store.orgwh, &cur);
    if (rc != 0) {
        mr_store_read_end();
        return mr_store_read_rc(rc, "endpoints");
    }

    k.mv_data = org;
    k.mv_size = MR_ORG_ID_LEN;

    for (rc = mdb_cursor_get(cur, &k, &v, MDB_SET_RANGE);
         rc == 0;
         rc = mdb_cursor_get(cur, &k, &v, MDB_NEXT))
    {
        if (k.mv_size != MR_ORG_ID_LEN + MR_WH_ID_LEN
            || ngx_memcmp(k.mv_data, org, MR_ORG_ID_LEN) != 0)
        {
            break;
        }

        wh = ngx_array_push(whs);
        if (wh == NULL) {
            rc = ENOMEM;
            break;
        }

        rc = mr_store_wh_read(txn, (u_char *) k.mv_data + MR_ORG_ID_LEN, wh,
                              pool);
        if (rc != 0) {
            break;
        }
    }

    mdb_cursor_close(cur);

    if (rc == MDB_NOTFOUND) {
        rc = 0;
    }

    mr_store_read_end();

    return mr_store_read_rc(rc, "endpoints");
}


/*
 * Deliveries by endpoint (prefix: a wh id) or by execution (an exec id),
 * newest first.
 */

ngx_int_t
mr_store_dlv_list(u_char *prefix, size_t len, ngx_uint_t limit,
    ngx_array_t *dlvs, ngx_pool_t *pool)
{
    int          rc;
    MDB_dbi      dbi;
    MDB_val      k, v;
    MDB_txn     *txn;
    mr_dlv_t    *dlv;
    MDB_cursor  *cur;
    u_char       key[MR_EXEC_ID_LEN + MR_DLV_ID_LEN];

    dbi = (len == MR_WH_ID_LEN) ? mr_store.whdlv : mr_store.execdlv;

    txn = mr_store_read_begin();
    if (txn == NULL) {
        return NGX_ERROR;
    }

    rc = mdb_cursor_open(txn, dbi, &cur);
    if (rc != 0) {
        mr_store_read_end();
        return mr_store_read_rc(rc, "deliveries");
    }

    ngx_memcpy(key, prefix, len);
    ngx_memset(key + len, 0xff, MR_DLV_ID_LEN);

    k.mv_data = key;
    k.mv_size = len + MR_DLV_ID_LEN;

    rc = mdb_cursor_get(cur, &k, &v, MDB_SET_RANGE);
    rc = (rc == 0) ? mdb_cursor_get(cur, &k, &v, MDB_PREV)
                   : mdb_cursor_get(cur, &k, &v, MDB_LAST);

    for ( /* void */ ;
         rc == 0 && dlvs->nelts < limit;
         rc = mdb_cursor_get(cur, &k, &v, MDB_PREV))
    {
        if (k.mv_size != len + MR_DLV_ID_LEN
            || ngx_memcmp(k.mv_data, prefix, len) != 0)
        {
            break;
        }

        dlv = ngx_array_push(dlvs);
        if (dlv == NULL) {
            rc = ENOMEM;
            break;
        }

        rc = mr_store_dlv_read(txn, (u_char *) k.mv_data + len, dlv, pool);
        if (rc == MDB_NOTFOUND) {
            dlvs->nelts--;
            rc = 0;
        }

        if (rc != 0) {
            break;
        }
    }

    mdb_cursor_close(cur);

    if (rc == MDB_NOTFOUND) {
        rc = 0;
    }

    mr_store_read_end();

    return mr_store_read_rc(rc, "deliveries");
}


ngx_int_t
mr_store_secret_get(u_char *org, ngx_str_t *secret, ngx_pool_t *pool)
{
    int       rc;
    MDB_val   k, v;
    MDB_txn  *txn;

    txn = mr_store_read_begin();
    if (txn == NULL) {
        return NGX_ERROR;
    }

    k.mv_data = org;
    k.mv_size = MR_ORG_ID_LEN;

    rc = mdb_get(txn, mr_store.whsecret, &k, &v);

    if (rc == 0 && mr_store_copy(pool, secret, v.mv_data, v.mv_size)
                   != NGX_OK)
    {
        rc = ENOMEM;
    }

    mr_store_read_end();

    return mr_store_read_rc(rc, "secret");
}
