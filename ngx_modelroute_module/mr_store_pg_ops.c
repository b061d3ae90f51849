
/*
 * ModelRoute: the PostgreSQL store's operations.
 *
 * What each operation of a batch locks and loads (mr_pg_ops_load()), and
 * what it does to the rows loaded (mr_pg_ops_apply()): the same steps as
 * the LMDB store's (mr_store.c, mr_store_dispatch.c, mr_store_webhook.c),
 * with the same rules (mr_rules*.c), on the batch's identity map
 * (mr_store_pg_rows.c), whose changes one commit writes.  Claims and the
 * sweep's steps first read their candidates (mr_pg_ops_candidates()).
 */


#include <ngx_config.h>
#include <ngx_core.h>

#include <openssl/rand.h>

#include "ngx_http_modelroute_module.h"
#include "mr_store.h"
#include "mr_store_ops.h"
#include "mr_rules.h"
#include "mr_exec.h"
#include "mr_metrics.h"
#include "mr_store_pg.h"
#include "mr_store_pg_sql.h"
#include "mr_store_pg_rows.h"
#include "mr_store_pg_ops.h"


#define MR_PG_SWEEP_MAX      256
#define MR_PG_DISP_SCAN      2048     /* due entries looked at per claim
                                         at its head, and as many past it */
#define MR_PG_DLV_ORGS       64       /* accounts a claim visits */
#define MR_PG_DLV_TAKE       64       /* due deliveries of each */
#define MR_PG_DLV_TARGETS    16       /* targets looked at per account */
#define MR_PG_CLAIM_RES      1        /* a claim's candidates: its first
                                         result, after MR_SQL_IN_ORDER's */

/* the sweep's steps, in the LMDB store's order */
#define MR_PG_S_EXECS        0
#define MR_PG_S_DLVS         1
#define MR_PG_S_EVENTS       2
#define MR_PG_S_KEYS         3
#define MR_PG_S_IDEM         4
#define MR_PG_S_EXPIRE       5
#define MR_PG_S_N            6


/* the sets a batch loads */
typedef struct {
    mr_pg_buf_t               orgs;
    mr_pg_buf_t               execs;
    mr_pg_buf_t               keys;
    mr_pg_buf_t               whs;
    mr_pg_buf_t               dlvs;
    mr_pg_buf_t               idem_orgs;
    mr_pg_buf_t               idem_keys;
    mr_pg_buf_t               ref_orgs;
    mr_pg_buf_t               refs;
    mr_pg_buf_t               new_orgs;
    ngx_uint_t                emits;         /* operations that may emit */
} mr_pg_sets_t;


static int mr_pg_apply_op(mr_pg_batch_t *b, mr_store_op_t *op);
static int mr_pg_exec_create(mr_pg_rows_t *rs, mr_store_op_t *op);
static int mr_pg_exec_cancel(mr_pg_rows_t *rs, mr_store_op_t *op);
static int mr_pg_account_create(mr_pg_rows_t *rs, mr_store_op_t *op);
static int mr_pg_account_adjust(mr_pg_rows_t *rs, mr_store_op_t *op);
static int mr_pg_account_limits(mr_pg_rows_t *rs, mr_store_op_t *op);
static int mr_pg_key_create(mr_pg_rows_t *rs, mr_store_op_t *op);
static int mr_pg_key_update(mr_pg_rows_t *rs, mr_store_op_t *op);
static int mr_pg_wh_apply(mr_pg_rows_t *rs, mr_store_op_t *op);
static int mr_pg_wh_update(mr_pg_rows_t *rs, mr_store_op_t *op);
static int mr_pg_wh_test(mr_pg_rows_t *rs, mr_store_op_t *op);
static int mr_pg_dlv_retry(mr_pg_rows_t *rs, mr_store_op_t *op);
static int mr_pg_dlv_done(mr_pg_rows_t *rs, mr_store_op_t *op);
static int mr_pg_disp_done(mr_pg_rows_t *rs, mr_store_op_t *op);
static int mr_pg_disp_callback(mr_pg_rows_t *rs, mr_store_op_t *op);
static int mr_pg_ops_op(mr_pg_batch_t *b, mr_store_op_t *op);
static int mr_pg_disp_claim(mr_pg_batch_t *b, mr_store_op_t *op);
static void mr_pg_disp_said(mr_pg_batch_t *b, mr_store_op_t *op,
    ngx_uint_t claimed);
static int mr_pg_disp_claim_one(mr_pg_rows_t *rs, mr_store_op_t *op,
    mr_pg_ent_t *e, ngx_uint_t *claimed);
static void mr_pg_dlv_cursor(u_char *org);
static int mr_pg_dlv_claim(mr_pg_batch_t *b, mr_store_op_t *op);
static int mr_pg_dlv_claim_one(mr_pg_rows_t *rs, mr_store_op_t *op,
    mr_pg_ent_t *d, ngx_array_t *blocked);
static int mr_pg_sweep_step(mr_pg_batch_t *b, mr_store_op_t *op);

static mr_pg_ent_t *mr_pg_acct(mr_pg_rows_t *rs, u_char *org);
static int mr_pg_usage(mr_pg_rows_t *rs, u_char *org, int64_t bytes,
    ngx_uint_t which, int64_t count);
static ngx_uint_t mr_pg_quota_check(mr_pg_rows_t *rs, mr_store_op_t *op,
    u_char *org, int64_t bytes, ngx_uint_t which, int64_t count);
static int mr_pg_exec_put(mr_pg_rows_t *rs, mr_pg_ent_t *e);
static int mr_pg_key_put(mr_pg_rows_t *rs, mr_pg_ent_t *e);
static int mr_pg_wh_put(mr_pg_rows_t *rs, mr_pg_ent_t *e);
static int mr_pg_dlv_put(mr_pg_rows_t *rs, mr_pg_ent_t *e);
static int mr_pg_dlv_drop(mr_pg_rows_t *rs, mr_pg_ent_t *e);
static int mr_pg_emit(mr_pg_rows_t *rs, mr_store_op_t *op, mr_pg_ent_t *x,
    const char *type_name);
static int mr_pg_event_put(mr_pg_rows_t *rs, u_char *event_id, u_char *org,
    ngx_str_t *type, u_char *exec_id, ngx_str_t *data, int64_t now);
static int mr_pg_dlv_create(mr_pg_rows_t *rs, mr_store_op_t *op,
    u_char *org, u_char *event_id, u_char *wh_id, ngx_str_t *url,
    mr_pg_ent_t *x, ngx_str_t *type, int64_t now, u_char *id);
static mr_pg_ent_t *mr_pg_secret(mr_pg_rows_t *rs, u_char *org);
static int mr_pg_disp_release(mr_pg_rows_t *rs, mr_store_op_t *op,
    mr_pg_ent_t *x);
static int mr_pg_disp_settle(mr_pg_rows_t *rs, mr_store_op_t *op,
    mr_pg_ent_t *x, int64_t cost);
static int mr_pg_disp_fail(mr_pg_rows_t *rs, mr_store_op_t *op,
    mr_pg_ent_t *x, const char *code, ngx_str_t *message);
static int mr_pg_disp_end(mr_pg_rows_t *rs, mr_store_op_t *op,
    mr_pg_ent_t *x, const char *event);
static int mr_pg_disp_lease_end(mr_pg_rows_t *rs, mr_store_op_t *op,
    mr_pg_ent_t *x, ngx_uint_t outcome, ngx_uint_t breaker,
    ngx_uint_t answered);
static int mr_pg_disp_no_route(mr_pg_rows_t *rs, mr_store_op_t *op,
    mr_pg_ent_t *x, int why);
static int mr_pg_route_getter(void *data, mr_route_t *route,
    mr_route_state_t *st);
static int mr_pg_attempt(mr_pg_rows_t *rs, mr_pg_ent_t *x, int64_t end,
    const char *outcome, const char *code, ngx_uint_t status,
    ngx_str_t *job_id);
static int mr_pg_attempts_keep(mr_pg_rows_t *rs, mr_pg_ent_t *x, int rc,
    u_char *buf);
static int mr_pg_expire(mr_pg_rows_t *rs, mr_store_op_t *op,
    mr_pg_ent_t *x);
static ngx_int_t mr_pg_seg_copy(ngx_pool_t *pool, ngx_str_t *s);
static ngx_int_t mr_pg_exec_copy(ngx_pool_t *pool, mr_exec_t *dst,
    mr_exec_t *src);
static void mr_pg_sets_init(mr_pg_sets_t *s, ngx_pool_t *pool);
static void mr_pg_sets_op(mr_pg_sets_t *s, mr_store_op_t *op);
static void mr_pg_sets_org(mr_pg_sets_t *s, u_char *org);
static ngx_int_t mr_pg_load_send(mr_pg_batch_t *b, mr_pg_req_t *req,
    ngx_uint_t stmt, int n, const char **v);
static ngx_int_t mr_pg_cand_push(mr_pg_batch_t *b, u_char *id, size_t len,
    u_char *org);
static ngx_int_t mr_pg_cand_literal(mr_pg_batch_t *b, ngx_array_t *a,
    const char **v);
static ngx_int_t mr_pg_loads_parse(mr_pg_batch_t *b, mr_pg_req_t *req);


static u_char  mr_zero[MR_EXEC_ID_LEN];


/* ---- the batch's id, and its lock */

void
mr_pg_batch_uuid(mr_pg_batch_t *b, u_char *hex)
{
    u_char  *p;

    p = mr_hex(hex, b->id, 4);
    *p++ = '-';
    p = mr_hex(p, b->id + 4, 2);
    *p++ = '-';
    p = mr_hex(p, b->id + 6, 2);
    *p++ = '-';
    p = mr_hex(p, b->id + 8, 2);
    *p++ = '-';
    p = mr_hex(p, b->id + 10, 6);
    *p = '\0';
}


int64_t
mr_pg_batch_lock_key(mr_pg_batch_t *b)
{
    uint64_t  k;

    k = mr_be64_get(b->id);

    return (int64_t) (k & 0x7fffffffffffffffULL);
}


ngx_int_t
mr_pg_send_heartbeat(mr_pg_req_t *req, mr_pg_batch_t *b)
{
    const char  *v[2];

    v[0] = "heartbeat";
    v[1] = mr_pg_int(b->pool, mr_now_ms());

    if (v[1] == NULL) {
        return NGX_ERROR;
    }

    return mr_pg_send(req, MR_SQL_W_OPS, 2, v, NULL);
}


/* ---- loads */

static void
mr_pg_sets_init(mr_pg_sets_t *s, ngx_pool_t *pool)
{
    ngx_memzero(s, sizeof(mr_pg_sets_t));

    mr_pg_buf_init(&s->orgs, pool);
    mr_pg_buf_init(&s->execs, pool);
    mr_pg_buf_init(&s->keys, pool);
    mr_pg_buf_init(&s->whs, pool);
    mr_pg_buf_init(&s->dlvs, pool);
    mr_pg_buf_init(&s->idem_orgs, pool);
    mr_pg_buf_init(&s->idem_keys, pool);
    mr_pg_buf_init(&s->ref_orgs, pool);
    mr_pg_buf_init(&s->refs, pool);
    mr_pg_buf_init(&s->new_orgs, pool);
}


/* an account, if the operation names one (its rows may name it instead) */

static void
mr_pg_sets_org(mr_pg_sets_t *s, u_char *org)
{
    if (ngx_memcmp(org, mr_zero, MR_ORG_ID_LEN) != 0) {
        mr_pg_buf_str(&s->orgs, org, MR_ORG_ID_LEN);
    }
}


/* what one operation needs: its accounts, rows, keys */

static void
mr_pg_sets_op(mr_pg_sets_t *s, mr_store_op_t *op)
{
    static u_char  zero[MR_KEY_ID_LEN];

    switch (op->type) {

    case MR_OP_EXEC_CREATE:
        mr_pg_sets_org(s, op->exec.rec.org);
        mr_pg_buf_str(&s->idem_orgs, op->exec.rec.org, MR_ORG_ID_LEN);
        mr_pg_buf_str(&s->idem_keys, op->idem_key.data,
                      ngx_min(op->idem_key.len, 255));
        break;

    case MR_OP_EXEC_CANCEL:
        mr_pg_sets_org(s, op->org);
        mr_pg_buf_str(&s->execs, op->exec.id, MR_EXEC_ID_LEN);
        s->emits++;
        break;

    case MR_OP_ACCOUNT_CREATE:
        mr_pg_buf_str(&s->new_orgs, op->account.id, MR_ORG_ID_LEN);
        break;

    case MR_OP_ACCOUNT_ADJUST:
        mr_pg_sets_org(s, op->org);

        if (op->reference.len) {
            mr_pg_buf_str(&s->ref_orgs, op->org, MR_ORG_ID_LEN);
            mr_pg_buf_str(&s->refs, op->reference.data,
                          ngx_min(op->reference.len, 255));
        }

        break;

    case MR_OP_ACCOUNT_LIMITS:
    case MR_OP_OPS:
        mr_pg_sets_org(s, op->org);
        break;

    case MR_OP_KEY_CREATE:
        mr_pg_sets_org(s, op->key.rec.org);
        break;

    case MR_OP_KEY_REVOKE:
    case MR_OP_KEY_ROTATE:
        mr_pg_sets_org(s, op->org);
        mr_pg_buf_str(&s->keys, op->key_id, MR_KEY_ID_LEN);

        if (ngx_memcmp(op->caller_key_id, zero, MR_KEY_ID_LEN) != 0) {
            mr_pg_buf_str(&s->keys, op->caller_key_id, MR_KEY_ID_LEN);
        }

        break;

    case MR_OP_WH_CREATE:
        mr_pg_sets_org(s, op->wh.ep.rec.org);
        break;

    case MR_OP_WH_UPDATE:
    case MR_OP_WH_DELETE:
    case MR_OP_WH_TEST:
        mr_pg_sets_org(s, op->org);
        mr_pg_buf_str(&s->whs, op->wh.wh_id, MR_WH_ID_LEN);
        s->emits++;
        break;

    case MR_OP_WH_SECRET:
        mr_pg_sets_org(s, op->org);
        s->emits++;
        break;

    case MR_OP_DLV_RETRY:
    case MR_OP_DLV_DONE:
        mr_pg_sets_org(s, op->org);
        mr_pg_buf_str(&s->dlvs, op->wh.dlv_id, MR_DLV_ID_LEN);
        s->emits++;
        break;

    case MR_OP_DISP_DONE:
    case MR_OP_DISP_CALLBACK:
        mr_pg_buf_str(&s->execs, op->disp.exec_id, MR_EXEC_ID_LEN);
        s->emits++;
        break;
    }
}


static ngx_int_t
mr_pg_load_send(mr_pg_batch_t *b, mr_pg_req_t *req, ngx_uint_t stmt, int n,
    const char **v)
{
    if (b->nloads == MR_PG_LOADS_MAX) {
        return NGX_ERROR;
    }

    b->loads[b->nloads++] = stmt;

    return mr_pg_send(req, stmt, n, v, NULL);
}


/*
 * BEGIN, the batch's lock, the rows the batch's operations (or its
 * claim's, its step's candidates) need, then their accounts, in order:
 * locked, or read to be changed by deltas at the end
 */

ngx_int_t
mr_pg_ops_load(mr_pg_batch_t *b, mr_pg_req_t *req)
{
    ngx_int_t        rc;
    ngx_uint_t       i, n, accts;
    ngx_queue_t     *q;
    const char      *v[8], *idem[2], *none, *ids, *orgs;
    mr_pg_sets_t     s;
    mr_store_op_t   *op;

    b->nloads = 0;
    none = "{}";
    accts = b->rows->deltas ? MR_SQL_ACCOUNTS_SNAP : MR_SQL_LOCK_ACCOUNTS;

    v[0] = mr_pg_int(b->pool, mr_pg_batch_lock_key(b));
    if (v[0] == NULL) {
        return NGX_ERROR;
    }

    if (mr_pg_load_send(b, req, MR_SQL_BEGIN, 0, NULL) != NGX_OK
        || mr_pg_load_send(b, req, MR_SQL_BATCH_LOCK, 1, v) != NGX_OK)
    {
        return NGX_ERROR;
    }

    op = ngx_queue_data(ngx_queue_head(&b->ops), mr_store_op_t, queue);

    if (b->kind != MR_PG_B_OPS) {

        /* a claim's or a step's candidates, then their accounts */

        if (mr_pg_cand_literal(b, b->cand_orgs, &orgs) != NGX_OK
            || mr_pg_cand_literal(b, b->cand, &ids) != NGX_OK)
        {
            return NGX_ERROR;
        }

        v[0] = ids;
        v[1] = mr_pg_int(b->pool, op->now);
        if (v[1] == NULL) {
            return NGX_ERROR;
        }

        switch (b->kind) {

        case MR_PG_B_DISP_CLAIM:

            /*
             * the routes of this node's models, and those the candidates
             * name: an attempt taken over gives its slot back to its
             * route, which this node may not have (configured on the
             * node that died only, or removed here since)
             */

            v[2] = mr_pg_routes_literal();

            /*
             * the candidates' routes are read again, unlocked too: read
             * after their executions are locked, a route is at least as
             * new as the lease it takes over (the candidates' round trip
             * read it before)
             */

            rc = (mr_pg_load_send(b, req, MR_SQL_LOCK_DUE_EXECS, 2, v)
                  != NGX_OK
                  || mr_pg_load_send(b, req, b->rows->route_deltas
                                             ? MR_SQL_ROUTES_SNAP
                                             : MR_SQL_LOCK_ROUTES, 2,
                                     (const char *[]) { v[2], ids })
                     != NGX_OK
                  || mr_pg_load_send(b, req, MR_SQL_ENDPOINTS, 4,
                                     (const char *[]) { orgs, none, none,
                                                        none })
                     != NGX_OK);
            break;

        case MR_PG_B_DLV_CLAIM:
            rc = (mr_pg_load_send(b, req, MR_SQL_LOCK_DUE_DLVS, 2, v)
                  != NGX_OK
                  || mr_pg_load_send(b, req, MR_SQL_ENDPOINTS, 4,
                                     (const char *[]) { none, none, none,
                                                        ids })
                     != NGX_OK
                  || mr_pg_load_send(b, req, MR_SQL_EVENTS_BY_ID, 2,
                                     (const char *[]) { none, ids })
                     != NGX_OK
                  || mr_pg_load_send(b, req, MR_SQL_DLV_EARLIER, 1, v)
                     != NGX_OK);
            break;

        default: /* MR_PG_B_SWEEP */

            switch (b->step) {

            case MR_PG_S_EXECS:
                rc = mr_pg_load_send(b, req, MR_SQL_LOCK_EXECS, 1, v);
                break;

            case MR_PG_S_DLVS:
                rc = mr_pg_load_send(b, req, MR_SQL_LOCK_DLVS, 1, v);
                break;

            case MR_PG_S_EVENTS:
                rc = mr_pg_load_send(b, req, MR_SQL_LOCK_EVENTS, 1, v);
                break;

            case MR_PG_S_KEYS:
                rc = mr_pg_load_send(b, req, MR_SQL_KEYS_BY_ID, 1, v);
                break;

            default: /* MR_PG_S_EXPIRE */
                rc = (mr_pg_load_send(b, req, MR_SQL_LOCK_EXPIRED, 2, v)
                      != NGX_OK
                      || mr_pg_load_send(b, req, MR_SQL_LOCK_ROUTES, 2,
                                         (const char *[]) { none, ids })
                         != NGX_OK
                      || mr_pg_load_send(b, req, MR_SQL_ENDPOINTS, 4,
                                         (const char *[]) { orgs, none,
                                                            none, none })
                         != NGX_OK);
            }
        }

        if (rc != NGX_OK
            || mr_pg_load_send(b, req, accts, 5,
                               (const char *[]) { orgs, none, none, none,
                                                  none })
               != NGX_OK)
        {
            return NGX_ERROR;
        }

        /* the secrets once the accounts are locked (mr_pg_rows_write()) */

        if (b->kind != MR_PG_B_SWEEP || b->step == MR_PG_S_EXPIRE) {
            return mr_pg_load_send(b, req, MR_SQL_WHSECRETS, 3,
                                   (const char *[]) { orgs, none, none });
        }

        return NGX_OK;
    }

    /* operations */

    mr_pg_sets_init(&s, b->pool);
    n = 0;

    for (q = ngx_queue_head(&b->ops);
         q != ngx_queue_sentinel(&b->ops);
         q = ngx_queue_next(q))
    {
        op = ngx_queue_data(q, mr_store_op_t, queue);

        if (op->type == MR_OP_OPS && op->ops.kind == MR_STORE_OPS_HEARTBEAT)
        {
            continue;
        }

        mr_pg_sets_op(&s, op);
        n++;
    }

    v[0] = mr_pg_buf_end(&s.orgs);
    v[1] = mr_pg_buf_end(&s.execs);
    v[2] = mr_pg_buf_end(&s.keys);
    v[3] = mr_pg_buf_end(&s.whs);
    v[4] = mr_pg_buf_end(&s.dlvs);

    for (i = 0; i < 5; i++) {
        if (v[i] == NULL) {
            return NGX_ERROR;
        }
    }

    if (n == 0) {
        return NGX_OK;                /* heartbeats only */
    }

    if (s.execs.n
        && mr_pg_load_send(b, req, MR_SQL_LOCK_EXECS, 1, &v[1]) != NGX_OK)
    {
        return NGX_ERROR;
    }

    /*
     * the idempotency keys: a batch that changes its accounts by deltas
     * inserts its keys only if no other batch did meanwhile
     * (MR_SQL_W_IDEM_NEW), and reads them here; one that locks its
     * accounts reads them once it holds them (below), else a key another
     * batch committed while this one waited for the account would be
     * missed and its execution made twice
     */

    if (s.idem_orgs.n) {
        idem[0] = mr_pg_buf_end(&s.idem_orgs);
        idem[1] = mr_pg_buf_end(&s.idem_keys);

        if (idem[0] == NULL || idem[1] == NULL) {
            return NGX_ERROR;
        }

        if (b->rows->deltas
            && mr_pg_load_send(b, req, MR_SQL_IDEM, 2, idem) != NGX_OK)
        {
            return NGX_ERROR;
        }
    }

    if (s.keys.n
        && mr_pg_load_send(b, req, MR_SQL_KEYS_BY_ID, 1, &v[2]) != NGX_OK)
    {
        return NGX_ERROR;
    }

    if (s.dlvs.n
        && mr_pg_load_send(b, req, MR_SQL_LOCK_DLVS, 1, &v[4]) != NGX_OK)
    {
        return NGX_ERROR;
    }

    /*
     * the endpoints the batch may change (named, or those of the
     * deliveries whose outcomes it records) locked: two batches that
     * count failures of one endpoint do not lose one; then the others
     * of its accounts, read for the events (the locked ones kept)
     */

    if ((s.whs.n || s.dlvs.n)
        && mr_pg_load_send(b, req, MR_SQL_LOCK_ENDPOINTS, 2,
                           (const char *[]) { v[3], v[4] })
           != NGX_OK)
    {
        return NGX_ERROR;
    }

    if (s.emits
        && mr_pg_load_send(b, req, MR_SQL_ENDPOINTS, 4,
                           (const char *[]) { v[0], v[1], none, none })
           != NGX_OK)
    {
        return NGX_ERROR;
    }

    if (s.dlvs.n) {
        /* with deliveries locked first, its routes are locked as read */
        b->rows->route_deltas = 0;
    }

    if (s.execs.n
        && mr_pg_load_send(b, req, b->rows->route_deltas ? MR_SQL_ROUTES_SNAP
                                                         : MR_SQL_LOCK_ROUTES,
                           2, (const char *[]) { none, v[1] })
           != NGX_OK)
    {
        return NGX_ERROR;
    }

    /*
     * the accounts last (mr_store_pg_sql.c), then their secrets: read
     * once the accounts are locked, the one a batch made is there
     * (mr_pg_rows_write())
     */

    if (mr_pg_load_send(b, req, accts, 5, v) != NGX_OK) {
        return NGX_ERROR;
    }

    if (s.idem_orgs.n && !b->rows->deltas
        && mr_pg_load_send(b, req, MR_SQL_IDEM, 2, idem) != NGX_OK)
    {
        return NGX_ERROR;
    }

    if (s.emits
        && mr_pg_load_send(b, req, MR_SQL_WHSECRETS, 3,
                           (const char *[]) { v[0], v[1], v[4] })
           != NGX_OK)
    {
        return NGX_ERROR;
    }

    if (s.refs.n) {
        ids = mr_pg_buf_end(&s.ref_orgs);
        orgs = mr_pg_buf_end(&s.refs);

        if (ids == NULL || orgs == NULL
            || mr_pg_load_send(b, req, MR_SQL_CREDIT_REFS, 2,
                               (const char *[]) { ids, orgs })
               != NGX_OK)
        {
            return NGX_ERROR;
        }
    }

    if (s.new_orgs.n) {
        ids = mr_pg_buf_end(&s.new_orgs);

        if (ids == NULL
            || mr_pg_load_send(b, req, MR_SQL_ACCOUNTS_EXIST, 1, &ids)
               != NGX_OK)
        {
            return NGX_ERROR;
        }
    }

    return NGX_OK;
}


/* the results of the loads, into the batch's rows */

static ngx_int_t
mr_pg_loads_parse(mr_pg_batch_t *b, mr_pg_req_t *req)
{
    int            j;
    ngx_int_t      rc;
    ngx_uint_t     i;
    PGresult      *res;
    mr_pg_ent_t   *e;
    mr_pg_rows_t  *rs;

    rs = b->rows;

    for (i = 0; i < b->nloads; i++) {
        res = req->res[i];

        if (res == NULL) {
            return NGX_ERROR;
        }

        switch (b->loads[i]) {

        case MR_SQL_LOCK_ACCOUNTS:
        case MR_SQL_ACCOUNTS_SNAP:
            rc = mr_pg_rows_accounts(rs, res);
            break;

        case MR_SQL_LOCK_EXECS:
        case MR_SQL_LOCK_DUE_EXECS:
        case MR_SQL_LOCK_EXPIRED:
            rc = mr_pg_rows_execs(rs, res);
            break;

        case MR_SQL_IDEM:
            rc = mr_pg_rows_idem(rs, res);
            break;

        case MR_SQL_KEYS_BY_ID:
            rc = mr_pg_rows_keys(rs, res);
            break;

        case MR_SQL_ENDPOINTS:
        case MR_SQL_LOCK_ENDPOINTS:
            rc = mr_pg_rows_endpoints(rs, res);
            break;

        case MR_SQL_LOCK_DLVS:
        case MR_SQL_LOCK_DUE_DLVS:
            rc = mr_pg_rows_dlvs(rs, res);
            break;

        case MR_SQL_LOCK_ROUTES:
        case MR_SQL_ROUTES_SNAP:
            rc = mr_pg_rows_routes(rs, res);
            break;

        case MR_SQL_WHSECRETS:
            rc = mr_pg_rows_secrets(rs, res);
            break;

        case MR_SQL_CREDIT_REFS:
            rc = mr_pg_rows_refs(rs, res);
            break;

        case MR_SQL_EVENTS_BY_ID:
        case MR_SQL_LOCK_EVENTS:
            rc = mr_pg_rows_events(rs, res);
            break;

        case MR_SQL_ACCOUNTS_EXIST:

            /* an account that exists: marked, not loaded */

            rc = NGX_OK;

            for (j = 0; j < PQntuples(res); j++) {
                e = mr_pg_add(rs, MR_PG_ACCT, (u_char *) PQgetvalue(res, j, 0),
                              (size_t) PQgetlength(res, j, 0));
                if (e == NULL) {
                    rc = NGX_ERROR;
                    break;
                }

                e->live = 1;
            }

            break;

        case MR_SQL_DLV_EARLIER:

            /* deliveries that wait for an earlier one: marked */

            rc = NGX_OK;

            for (j = 0; j < PQntuples(res); j++) {
                e = mr_pg_get(rs, MR_PG_DLV, (u_char *) PQgetvalue(res, j, 0),
                              (size_t) PQgetlength(res, j, 0));
                if (e) {
                    e->live = 1;
                    e->after_ms = mr_pg_get_int(res, j, 1);
                }
            }

            break;

        default: /* BEGIN, the lock */
            rc = NGX_OK;
        }

        if (rc != NGX_OK) {
            return NGX_ERROR;
        }
    }

    return NGX_OK;
}


/*
 * The rules run on the loaded rows, in the order of the operations.  An
 * operation refused by the rules changes nothing of the batch; an error
 * (a corrupt row, no memory) fails the batch, whose operations are then
 * made again alone.
 */

ngx_int_t
mr_pg_ops_apply(mr_pg_batch_t *b, mr_pg_req_t *req)
{
    ngx_queue_t    *q;
    mr_store_op_t  *op;

    if (mr_pg_loads_parse(b, req) != NGX_OK) {
        ngx_log_error(NGX_LOG_ERR, ngx_cycle->log, 0,
                      "modelroute_store: PostgreSQL: a row of a batch "
                      "cannot be read");
        return NGX_ERROR;
    }

    for (q = ngx_queue_head(&b->ops);
         q != ngx_queue_sentinel(&b->ops);
         q = ngx_queue_next(q))
    {
        op = ngx_queue_data(q, mr_store_op_t, queue);

        if (mr_pg_apply_op(b, op) != 0) {
            return NGX_ERROR;
        }
    }

    return NGX_OK;
}


static int
mr_pg_apply_op(mr_pg_batch_t *b, mr_store_op_t *op)
{
    mr_pg_rows_t  *rs;

    rs = b->rows;

    switch (b->kind) {

    case MR_PG_B_DISP_CLAIM:
        return mr_pg_disp_claim(b, op);

    case MR_PG_B_DLV_CLAIM:
        return mr_pg_dlv_claim(b, op);

    case MR_PG_B_SWEEP:
        return mr_pg_sweep_step(b, op);
    }

    switch (op->type) {

    case MR_OP_EXEC_CREATE:
        return mr_pg_exec_create(rs, op);

    case MR_OP_EXEC_CANCEL:
        return mr_pg_exec_cancel(rs, op);

    case MR_OP_ACCOUNT_CREATE:
        return mr_pg_account_create(rs, op);

    case MR_OP_ACCOUNT_ADJUST:
        return mr_pg_account_adjust(rs, op);

    case MR_OP_KEY_CREATE:
        return mr_pg_key_create(rs, op);

    case MR_OP_ACCOUNT_LIMITS:
        return mr_pg_account_limits(rs, op);

    case MR_OP_KEY_REVOKE:
    case MR_OP_KEY_ROTATE:
        return mr_pg_key_update(rs, op);

    case MR_OP_WH_CREATE:
    case MR_OP_WH_UPDATE:
    case MR_OP_WH_DELETE:
    case MR_OP_WH_TEST:
    case MR_OP_WH_SECRET:
    case MR_OP_DLV_RETRY:
    case MR_OP_DLV_DONE:
        return mr_pg_wh_apply(rs, op);

    case MR_OP_DISP_DONE:
        return mr_pg_disp_done(rs, op);

    case MR_OP_DISP_CALLBACK:
        return mr_pg_disp_callback(rs, op);

    case MR_OP_OPS:
        return mr_pg_ops_op(b, op);

    default:
        op->result = MR_R_INTERNAL;
        return 0;
    }
}


/* ---- accounts, their use, records */

static mr_pg_ent_t *
mr_pg_acct(mr_pg_rows_t *rs, u_char *org)
{
    mr_pg_ent_t  *e;

    e = mr_pg_get(rs, MR_PG_ACCT, org, MR_ORG_ID_LEN);

    return (e && e->found) ? e : NULL;
}


/* adds to an account's use (locked with the batch) */

static int
mr_pg_usage(mr_pg_rows_t *rs, u_char *org, int64_t bytes, ngx_uint_t which,
    int64_t count)
{
    mr_pg_ent_t  *a;

    if (bytes == 0 && count == 0) {
        return 0;
    }

    a = mr_pg_acct(rs, org);
    if (a == NULL) {
        ngx_log_error(NGX_LOG_ERR, ngx_cycle->log, 0,
                      "modelroute_store: PostgreSQL: the use of %*s "
                      "changes, but it was not locked",
                      (size_t) MR_ORG_ID_LEN, org);
        return EINVAL;
    }

    mr_rule_usage(&a->quota, bytes, which, count);
    a->dirty = 1;

    return 0;
}


/* the account's quota, or the default one if it has none */

static ngx_uint_t
mr_pg_quota_check(mr_pg_rows_t *rs, mr_store_op_t *op, u_char *org,
    int64_t bytes, ngx_uint_t which, int64_t count)
{
    mr_quota_t    q;
    mr_pg_ent_t  *a;

    a = mr_pg_acct(rs, org);

    if (a) {
        q = a->quota;

    } else {
        mr_rule_quota_init(&q);
    }

    return mr_rule_quota_check(mr_pg_main_conf(), &q, op, bytes, which,
                               count);
}


static ngx_int_t
mr_pg_seg_copy(ngx_pool_t *pool, ngx_str_t *s)
{
    u_char  *p;

    if (s->len == 0) {
        return NGX_OK;
    }

    p = ngx_pnalloc(pool, s->len);
    if (p == NULL) {
        return NGX_ERROR;
    }

    ngx_memcpy(p, s->data, s->len);
    s->data = p;

    return NGX_OK;
}


static ngx_int_t
mr_pg_exec_copy(ngx_pool_t *pool, mr_exec_t *dst, mr_exec_t *src)
{
    ngx_uint_t  i;

    *dst = *src;

    for (i = 0; i < MR_SEG_N; i++) {
        if (mr_pg_seg_copy(pool, &dst->seg[i]) != NGX_OK) {
            return NGX_ERROR;
        }
    }

    return NGX_OK;
}


/*
 * An execution is written: its use changes by what its record gained,
 * and by whether it is live; the parts that changed are kept with the
 * batch until it is written
 */

static int
mr_pg_exec_put(mr_pg_rows_t *rs, mr_pg_ent_t *e)
{
    int64_t     bytes, live;
    ngx_uint_t  i;

    for (i = MR_SEG_RESULT; i < MR_SEG_N; i++) {
        if (mr_pg_seg_copy(rs->pool, &e->exec.seg[i]) != NGX_OK) {
            return ENOMEM;
        }
    }

    for (i = 0; i < MR_SEG_N; i++) {
        e->exec.rec.seg_len[i] = (uint32_t) e->exec.seg[i].len;
    }

    bytes = mr_pg_ent_exec_bytes(e);
    live = !mr_status_terminal(e->exec.rec.status);

    if (e->found) {
        bytes -= e->bytes;
        live -= (int64_t) e->live;
    }

    e->bytes += bytes;
    e->live = (ngx_uint_t) (live + (int64_t) e->live);
    e->found = 1;
    e->dirty = 1;

    return mr_pg_usage(rs, e->exec.rec.org, bytes, MR_LIMIT_EXECUTIONS, live);
}


static int
mr_pg_key_put(mr_pg_rows_t *rs, mr_pg_ent_t *e)
{
    int64_t  bytes, active;

    bytes = mr_pg_key_bytes(&e->k);
    active = mr_rule_key_active(&e->k.rec);

    if (e->found) {
        bytes -= e->bytes;
        active -= (int64_t) e->live;
    }

    e->bytes += bytes;
    e->live = (ngx_uint_t) (active + (int64_t) e->live);
    e->found = 1;
    e->dirty = 1;

    return mr_pg_usage(rs, e->k.rec.org, bytes, MR_LIMIT_KEYS, active);
}


static int
mr_pg_wh_put(mr_pg_rows_t *rs, mr_pg_ent_t *e)
{
    int64_t  bytes, count;

    bytes = mr_pg_wh_bytes(&e->wh);
    count = 1;

    if (e->found) {
        bytes -= e->bytes;
        count = 0;
    }

    e->bytes += bytes;
    e->found = 1;
    e->dirty = 1;

    return mr_pg_usage(rs, e->wh.rec.org, bytes, MR_LIMIT_ENDPOINTS, count);
}


static int
mr_pg_dlv_put(mr_pg_rows_t *rs, mr_pg_ent_t *e)
{
    int64_t  bytes;

    bytes = mr_pg_dlv_bytes(&e->dlv);

    if (e->found) {
        bytes -= e->bytes;
    }

    e->bytes += bytes;
    e->found = 1;
    e->dirty = 1;

    return mr_pg_usage(rs, e->dlv.rec.org, bytes, MR_LIMIT_BYTES, 0);
}


/* a delivery leaves the store */

static int
mr_pg_dlv_drop(mr_pg_rows_t *rs, mr_pg_ent_t *e)
{
    e->deleted = 1;
    e->dirty = 0;

    return mr_pg_usage(rs, e->dlv.rec.org, -e->bytes, MR_LIMIT_BYTES, 0);
}


/* ---- executions */

static int
mr_pg_exec_create(mr_pg_rows_t *rs, mr_store_op_t *op)
{
    mr_exec_t     *exec;
    mr_model_t    *m;
    mr_pg_ent_t   *i, *x, *a;

    exec = &op->exec;

    if (op->idem_key.len > 255) {
        op->result = MR_R_INTERNAL;
        return 0;
    }

    /* the idempotency key first: a replay needs no balance */

    i = mr_pg_get2(rs, MR_PG_IDEM, exec->rec.org, MR_ORG_ID_LEN,
                   op->idem_key.data, op->idem_key.len);

    if (i && i->found
        && mr_rule_idem_live(i->value, op->idem_ttl_ms, exec->rec.created_ms))
    {
        x = mr_pg_get(rs, MR_PG_EXEC, i->exec_id, MR_EXEC_ID_LEN);

        if (x && x->found && !x->deleted) {
            if (mr_pg_exec_copy(op->pool, &op->replay, &x->exec) != NGX_OK) {
                return ENOMEM;
            }

            mr_rule_idem_replay(op, &op->replay);
            return 0;
        }

        /* the execution was purged: the key is free again */
    }

    /* what the account keeps: a live execution more, and its bytes */

    if (!mr_pg_quota_check(rs, op, exec->rec.org,
                           (int64_t) mr_rule_exec_size(exec),
                           MR_LIMIT_EXECUTIONS, 1))
    {
        return 0;
    }

    a = mr_pg_acct(rs, exec->rec.org);
    if (a == NULL) {
        op->result = MR_R_NOT_FOUND;
        return 0;
    }

    if (!mr_rule_hold(op, &a->acct, exec->rec.hold)) {
        return 0;
    }

    /* what the rules allowed is checked again if read unlocked */

    a->checked_bytes += (int64_t) mr_rule_exec_size(exec);
    a->checked_execs++;
    a->dirty = 1;

    /* a model with routes: due for dispatch at once */

    m = mr_model_find(mr_pg_main_conf(), &exec->seg[MR_SEG_MODEL]);

    if (m && m->routes.nelts) {
        exec->rec.next_ms = exec->rec.created_ms;
        op->ready = 1;
    }

    x = mr_pg_add(rs, MR_PG_EXEC, exec->id, MR_EXEC_ID_LEN);
    if (x == NULL) {
        return ENOMEM;
    }

    x->exec = *exec;
    x->fresh = 1;
    x->found = 0;

    if (mr_pg_exec_put(rs, x) != 0) {
        return ENOMEM;
    }

    /* the key binds it */

    i = mr_pg_add2(rs, MR_PG_IDEM, exec->rec.org, MR_ORG_ID_LEN,
                   op->idem_key.data, op->idem_key.len);
    if (i == NULL) {
        return ENOMEM;
    }

    ngx_memcpy(i->org, exec->rec.org, MR_ORG_ID_LEN);
    ngx_memcpy(i->exec_id, exec->id, MR_EXEC_ID_LEN);
    i->str = op->idem_key;
    i->value = exec->rec.created_ms;
    i->found = 1;
    i->dirty = 1;
    i->deleted = 0;

    return 0;
}


static int
mr_pg_exec_cancel(mr_pg_rows_t *rs, mr_store_op_t *op)
{
    int            rc;
    mr_pg_ent_t   *x, *a;

    x = mr_pg_get(rs, MR_PG_EXEC, op->exec.id, MR_EXEC_ID_LEN);

    if (x == NULL || !x->found || x->deleted) {
        op->result = MR_R_NOT_FOUND;
        return 0;
    }

    if (!mr_rule_cancel_check(op, &x->exec)) {
        if (mr_pg_exec_copy(op->pool, &op->exec, &x->exec) != NGX_OK) {
            return ENOMEM;
        }

        return 0;
    }

    a = mr_pg_acct(rs, x->exec.rec.org);
    if (a == NULL) {
        return EINVAL;
    }

    /* release the whole hold, charge nothing */

    mr_rule_cancel(&x->exec, &a->acct, op->now);
    a->dirty = 1;

    /* an attempt in flight is recorded */

    rc = mr_pg_disp_release(rs, op, x);

    if (rc == 0) {
        rc = mr_pg_exec_put(rs, x);
    }

    if (rc == 0) {
        rc = mr_pg_emit(rs, op, x, "execution.cancelled");
    }

    if (rc == 0 && mr_pg_exec_copy(op->pool, &op->exec, &x->exec) != NGX_OK) {
        rc = ENOMEM;
    }

    return rc;
}


/* ---- accounts */

static int
mr_pg_account_create(mr_pg_rows_t *rs, mr_store_op_t *op)
{
    mr_pg_ent_t  *a;

    a = mr_pg_get(rs, MR_PG_ACCT, op->account.id, MR_ORG_ID_LEN);

    if (a && (a->live || a->found)) {
        /* 96 random bits collided: refuse rather than overwrite */
        op->result = MR_R_INTERNAL;
        return 0;
    }

    a = mr_pg_add(rs, MR_PG_ACCT, op->account.id, MR_ORG_ID_LEN);
    if (a == NULL) {
        return ENOMEM;
    }

    /* its quota: nothing used yet, the limits asked for or the defaults */

    mr_rule_account_quota(op);

    a->acct = op->account;
    a->quota = op->quota;
    a->rl = -1;
    a->found = 1;
    a->fresh = 1;
    a->dirty = 1;

    return 0;
}


static int
mr_pg_account_adjust(mr_pg_rows_t *rs, mr_store_op_t *op)
{
    mr_pg_ent_t  *a, *r;

    a = mr_pg_acct(rs, op->org);
    if (a == NULL) {
        op->result = MR_R_NOT_FOUND;
        return 0;
    }

    op->account = a->acct;
    op->quota = a->quota;

    if (op->reference.len) {
        r = mr_pg_get2(rs, MR_PG_REF, op->org, MR_ORG_ID_LEN,
                       op->reference.data, ngx_min(op->reference.len, 255));

        if (r && r->found) {
            (void) mr_rule_credit_replay(op, r->value);
            return 0;
        }
    }

    if (!mr_rule_adjust(op, &op->account, 1)) {
        return 0;
    }

    a->acct.rec = op->account.rec;
    a->dirty = 1;

    if (op->reference.len == 0) {
        return 0;
    }

    r = mr_pg_add2(rs, MR_PG_REF, op->org, MR_ORG_ID_LEN,
                   op->reference.data, ngx_min(op->reference.len, 255));
    if (r == NULL) {
        return ENOMEM;
    }

    ngx_memcpy(r->org, op->org, MR_ORG_ID_LEN);
    r->str.data = op->reference.data;
    r->str.len = ngx_min(op->reference.len, 255);
    r->value = op->amount;
    r->found = 1;
    r->dirty = 1;

    return 0;
}


static int
mr_pg_account_limits(mr_pg_rows_t *rs, mr_store_op_t *op)
{
    mr_pg_ent_t  *a;

    a = mr_pg_acct(rs, op->org);
    if (a == NULL) {
        op->result = MR_R_NOT_FOUND;
        return 0;
    }

    op->account = a->acct;
    op->quota = a->quota;

    mr_rule_account_limits(op);

    a->quota = op->quota;
    a->dirty = 1;

    return 0;
}


/* the operator's data: rate-limit overrides, the health heartbeat */

static int
mr_pg_ops_op(mr_pg_batch_t *b, mr_store_op_t *op)
{
    mr_pg_ent_t  *a;

    switch (op->ops.kind) {

    case MR_STORE_OPS_HEARTBEAT:
        b->heartbeat = 1;
        return 0;

    case MR_STORE_OPS_RL_SET:
    case MR_STORE_OPS_RL_DELETE:
        a = mr_pg_acct(b->rows, op->org);
        if (a == NULL) {
            op->result = MR_R_NOT_FOUND;
            return 0;
        }

        a->rl = (op->ops.kind == MR_STORE_OPS_RL_SET)
                ? (int64_t) op->ops.value : -1;
        a->dirty = 1;
        return 0;

    default:
        op->result = MR_R_INTERNAL;
        return 0;
    }
}


/* ---- keys */

static int
mr_pg_key_create(mr_pg_rows_t *rs, mr_store_op_t *op)
{
    mr_pg_ent_t  *a, *k;

    a = mr_pg_acct(rs, op->key.rec.org);
    if (a == NULL) {
        op->result = MR_R_NOT_FOUND;
        return 0;
    }

    if (!mr_pg_quota_check(rs, op, op->key.rec.org,
                           (int64_t) mr_rule_key_size(&op->key),
                           MR_LIMIT_KEYS, 1))
    {
        return 0;
    }

    k = mr_pg_add(rs, MR_PG_KEY, op->key.rec.key_id, MR_KEY_ID_LEN);
    if (k == NULL) {
        return ENOMEM;
    }

    k->k = op->key;
    k->fresh = 1;
    k->found = 0;
    k->end_ms = 0;

    return mr_pg_key_put(rs, k);
}


/*
 * Revoke, or rotate: a new key, and the old one ends after the grace
 * (the rules of mr_rule_key_rotate_check() and the next ones)
 */

static int
mr_pg_key_update(mr_pg_rows_t *rs, mr_store_op_t *op)
{
    int64_t       until;
    mr_pg_ent_t  *o, *c, *n;

    static u_char  zero[MR_KEY_ID_LEN];

    o = mr_pg_get(rs, MR_PG_KEY, op->key_id, MR_KEY_ID_LEN);

    if (o == NULL || !o->found || o->deleted) {
        op->result = MR_R_NOT_FOUND;
        return 0;
    }

    op->old_key = o->k;

    if (op->type == MR_OP_KEY_REVOKE) {
        if (!mr_rule_key_revoke(op, &op->old_key)) {
            return 0;
        }

        o->k = op->old_key;
        o->end_ms = op->now;          /* ended now: purged after retention */

        return mr_pg_key_put(rs, o);
    }

    /* MR_OP_KEY_ROTATE: only within the caller's account */

    if (!mr_rule_key_rotate_check(op, &op->old_key)) {
        return 0;
    }

    if (ngx_memcmp(op->caller_key_id, zero, MR_KEY_ID_LEN) != 0) {
        c = mr_pg_get(rs, MR_PG_KEY, op->caller_key_id, MR_KEY_ID_LEN);

        if (!mr_rule_key_caller(op, (c && c->found && !c->deleted) ? &c->k
                                                                   : NULL))
        {
            return 0;
        }
    }

    if (!mr_rule_key_rotated(op, &op->old_key)) {
        return 0;
    }

    /* a key record more (the count of active keys does not change) */

    if (!mr_pg_quota_check(rs, op, op->org,
                           (int64_t) mr_rule_key_size(&op->old_key),
                           MR_LIMIT_KEYS, 0))
    {
        return 0;
    }

    until = mr_rule_key_rotate(op);

    o->k = op->old_key;
    o->end_ms = until;

    if (mr_pg_key_put(rs, o) != 0) {
        return EINVAL;
    }

    n = mr_pg_add(rs, MR_PG_KEY, op->key.rec.key_id, MR_KEY_ID_LEN);
    if (n == NULL) {
        return ENOMEM;
    }

    n->k = op->key;
    n->fresh = 1;
    n->found = 0;
    n->end_ms = 0;

    return mr_pg_key_put(rs, n);
}


/* ---- webhooks */

static int
mr_pg_wh_apply(mr_pg_rows_t *rs, mr_store_op_t *op)
{
    mr_pg_ent_t  *w, *s;

    switch (op->type) {

    case MR_OP_WH_CREATE:
        if (!mr_pg_quota_check(rs, op, op->wh.ep.rec.org,
                               (int64_t) mr_rule_wh_size(&op->wh.ep),
                               MR_LIMIT_ENDPOINTS, 1))
        {
            return 0;
        }

        w = mr_pg_add(rs, MR_PG_WH, op->wh.ep.rec.id, MR_WH_ID_LEN);
        if (w == NULL) {
            return ENOMEM;
        }

        w->wh = op->wh.ep;
        w->fresh = 1;
        w->found = 0;

        return mr_pg_wh_put(rs, w);

    case MR_OP_WH_UPDATE:
        return mr_pg_wh_update(rs, op);

    case MR_OP_WH_DELETE:

        /*
         * its pending deliveries are dropped as claims come by its queue
         * (mr_pg_dlv_claim()), its log by the retention
         */

        w = mr_pg_get(rs, MR_PG_WH, op->wh.wh_id, MR_WH_ID_LEN);

        if (w == NULL || !w->found || w->deleted
            || ngx_memcmp(w->wh.rec.org, op->org, MR_ORG_ID_LEN) != 0)
        {
            op->result = MR_R_NOT_FOUND;
            return 0;
        }

        w->deleted = 1;
        w->dirty = 0;

        if (mr_pg_usage(rs, op->org, -w->bytes, MR_LIMIT_BYTES, 0) != 0) {
            return EINVAL;
        }

        return mr_pg_usage(rs, op->org, 0, MR_LIMIT_ENDPOINTS, -1);

    case MR_OP_WH_TEST:
        return mr_pg_wh_test(rs, op);

    case MR_OP_WH_SECRET:
        s = mr_pg_secret(rs, op->org);
        if (s == NULL) {
            return ENOMEM;
        }

        if (s->found) {
            ngx_memcpy(op->wh.secret, s->secret, MR_WH_SECRET_LEN);
            return 0;
        }

        ngx_memcpy(s->secret, op->wh.secret, MR_WH_SECRET_LEN);
        s->found = 1;
        s->dirty = 1;

        return 0;

    case MR_OP_DLV_RETRY:
        return mr_pg_dlv_retry(rs, op);

    default: /* MR_OP_DLV_DONE */
        return mr_pg_dlv_done(rs, op);
    }
}


static int
mr_pg_wh_update(mr_pg_rows_t *rs, mr_store_op_t *op)
{
    int64_t       grow;
    mr_wh_t       wh;
    mr_pg_ent_t  *w;

    w = mr_pg_get(rs, MR_PG_WH, op->wh.wh_id, MR_WH_ID_LEN);

    if (w == NULL || !w->found || w->deleted
        || ngx_memcmp(w->wh.rec.org, op->org, MR_ORG_ID_LEN) != 0)
    {
        op->result = MR_R_NOT_FOUND;
        return 0;
    }

    /* the new values are in op->wh.ep: url, description, events, headers */

    wh = w->wh;

    mr_rule_wh_patch(op, &wh, &grow);

    if (grow > 0
        && !mr_pg_quota_check(rs, op, op->org, grow, MR_LIMIT_BYTES, 0))
    {
        return 0;
    }

    mr_rule_wh_active(op, &wh);

    w->wh = wh;

    if (mr_pg_wh_put(rs, w) != 0) {
        return EINVAL;
    }

    op->wh.ep = wh;

    return 0;
}


static int
mr_pg_wh_test(mr_pg_rows_t *rs, mr_store_op_t *op)
{
    int           rc;
    u_char       *p;
    ngx_str_t     type, data;
    mr_pg_ent_t  *w;
    u_char        buf[sizeof("{\"endpoint_id\":\"\"}") + MR_WH_ID_LEN];

    w = mr_pg_get(rs, MR_PG_WH, op->wh.wh_id, MR_WH_ID_LEN);

    if (w == NULL || !w->found || w->deleted
        || ngx_memcmp(w->wh.rec.org, op->org, MR_ORG_ID_LEN) != 0)
    {
        op->result = MR_R_NOT_FOUND;
        return 0;
    }

    /* an event and a delivery more for the account to keep */

    if (!mr_pg_quota_check(rs, op, op->org, MR_WH_TEST_SIZE
                           + (int64_t) w->wh.seg[MR_WH_SEG_URL].len,
                           MR_LIMIT_BYTES, 0))
    {
        return 0;
    }

    ngx_str_set(&type, "webhook.test");

    p = ngx_sprintf(buf, "{\"endpoint_id\":\"%*s\"}", (size_t) MR_WH_ID_LEN,
                    op->wh.wh_id);
    data.data = buf;
    data.len = p - buf;

    if (mr_rule_tid(op->wh.event_id, "evt_", op->now) != NGX_OK) {
        return ENOMEM;
    }

    rc = mr_pg_event_put(rs, op->wh.event_id, op->org, &type, NULL, &data,
                         op->now);
    if (rc != 0) {
        return rc;
    }

    return mr_pg_dlv_create(rs, op, op->org, op->wh.event_id, op->wh.wh_id,
                            &w->wh.seg[MR_WH_SEG_URL], NULL, &type, op->now,
                            op->wh.dlv_id);
}


static int
mr_pg_dlv_retry(mr_pg_rows_t *rs, mr_store_op_t *op)
{
    mr_pg_ent_t  *d, *w;

    d = mr_pg_get(rs, MR_PG_DLV, op->wh.dlv_id, MR_DLV_ID_LEN);

    if (d == NULL || !d->found || d->deleted
        || ngx_memcmp(d->dlv.rec.org, op->org, MR_ORG_ID_LEN) != 0)
    {
        op->result = MR_R_NOT_FOUND;
        return 0;
    }

    if (ngx_memcmp(d->dlv.rec.wh_id, mr_zero, MR_WH_ID_LEN) != 0) {

        /* its endpoint was deleted: the delivery goes with it */

        w = mr_pg_get(rs, MR_PG_WH, d->dlv.rec.wh_id, MR_WH_ID_LEN);

        if (w == NULL || !w->found || w->deleted) {
            op->result = MR_R_NOT_FOUND;
            return mr_pg_dlv_drop(rs, d);
        }
    }

    /* a new schedule and max age from now; due now unless being sent */

    if (mr_rule_dlv_retry(&d->dlv, op->now)) {
        d->dlv.rec.due_ms = op->now;
        op->emitted++;
    }

    if (mr_pg_dlv_put(rs, d) != 0) {
        return EINVAL;
    }

    op->wh.dlv = d->dlv;

    return 0;
}


/* the outcome of an attempt */

static int
mr_pg_dlv_done(mr_pg_rows_t *rs, mr_store_op_t *op)
{
    int           rc;
    mr_pg_ent_t  *d, *w;

    d = mr_pg_get(rs, MR_PG_DLV, op->wh.dlv_id, MR_DLV_ID_LEN);

    if (d == NULL || !d->found || d->deleted || mr_rule_dlv_late(op, &d->dlv))
    {
        /* deleted, or taken over by another worker after its lease */
        op->result = MR_R_NOOP;
        return 0;
    }

    /* the endpoint, for its health */

    w = NULL;

    if (ngx_memcmp(d->dlv.rec.wh_id, mr_zero, MR_WH_ID_LEN) != 0) {
        w = mr_pg_get(rs, MR_PG_WH, d->dlv.rec.wh_id, MR_WH_ID_LEN);

        if (w && (!w->found || w->deleted)) {
            w = NULL;
        }
    }

    rc = mr_rule_dlv_done(op, &d->dlv, w ? &w->wh : NULL, rs->pool);

    if (rc == 0 && w) {
        rc = mr_pg_wh_put(rs, w);
    }

    if (rc == 0) {
        d->dlv.rec.due_ms = d->dlv.rec.next_ms;
        rc = mr_pg_dlv_put(rs, d);
    }

    return rc;
}


/* the account's default secret, made on first use */

static mr_pg_ent_t *
mr_pg_secret(mr_pg_rows_t *rs, u_char *org)
{
    mr_pg_ent_t  *s;

    s = mr_pg_add(rs, MR_PG_SECRET, org, MR_ORG_ID_LEN);
    if (s == NULL) {
        return NULL;
    }

    ngx_memcpy(s->org, org, MR_ORG_ID_LEN);

    return s;
}


/*
 * An event of an execution's state change, and its deliveries: to every
 * endpoint of the account that wants it, and for a terminal event to the
 * execution's own webhook_url.  In the transaction of the change.
 */

static int
mr_pg_emit(mr_pg_rows_t *rs, mr_store_op_t *op, mr_pg_ent_t *x,
    const char *type_name)
{
    int           rc;
    u_char       *org;
    mr_exec_t    *exec;
    ngx_str_t     data, type, url;
    ngx_uint_t    n, made;
    mr_pg_ent_t  *w, *s;
    u_char        event_id[MR_EVT_ID_LEN];

    exec = &x->exec;
    org = exec->rec.org;

    type.data = (u_char *) type_name;
    type.len = ngx_strlen(type_name);

    mr_metrics_exec_event(op, exec);

    n = 0;

    for (w = rs->head[MR_PG_WH]; w; w = w->all) {
        n += (w->found && !w->deleted
              && ngx_memcmp(w->wh.rec.org, org, MR_ORG_ID_LEN) == 0);
    }

    /*
     * an event no one can receive is not kept: the account has no
     * endpoint, and this is not a terminal event for a webhook_url
     */

    if (!mr_rule_emit_kept(exec, n)) {
        return 0;
    }

    if (mr_exec_render(rs->pool, exec, &data) != NGX_OK
        || mr_rule_tid(event_id, "evt_", op->now) != NGX_OK)
    {
        return ENOMEM;
    }

    made = 0;

    for (w = rs->head[MR_PG_WH]; w; w = w->all) {
        if (!w->found || w->deleted
            || ngx_memcmp(w->wh.rec.org, org, MR_ORG_ID_LEN) != 0
            || !mr_rule_wh_wants(&w->wh, &type))
        {
            continue;
        }

        rc = mr_pg_dlv_create(rs, op, org, event_id, w->wh.rec.id,
                              &w->wh.seg[MR_WH_SEG_URL], x, &type, op->now,
                              NULL);
        if (rc != 0) {
            return rc;
        }

        made++;
    }

    /* the execution's own webhook_url: its terminal events */

    url = exec->seg[MR_SEG_WEBHOOK_URL];

    if (url.len > 2 && mr_status_terminal(exec->rec.status)) {
        url.data++;
        url.len -= 2;

        s = mr_pg_secret(rs, org);
        if (s == NULL) {
            return ENOMEM;
        }

        if (!s->found) {
            if (mr_store_new_secret(s->secret) != NGX_OK) {
                return ENOMEM;
            }

            s->found = 1;
            s->dirty = 1;
        }

        rc = mr_pg_dlv_create(rs, op, org, event_id, NULL, &url, x, &type,
                              op->now, NULL);
        if (rc != 0) {
            return rc;
        }

        made++;
    }

    /* endpoints there are, but none wants it: no event */

    if (made == 0) {
        return 0;
    }

    return mr_pg_event_put(rs, event_id, org, &type, exec->id, &data,
                           op->now);
}


static int
mr_pg_event_put(mr_pg_rows_t *rs, u_char *event_id, u_char *org,
    ngx_str_t *type, u_char *exec_id, ngx_str_t *data, int64_t now)
{
    mr_pg_ent_t  *e;

    e = mr_pg_add(rs, MR_PG_EVENT, event_id, MR_EVT_ID_LEN);
    if (e == NULL) {
        return ENOMEM;
    }

    if (mr_rule_event_body(event_id, org, type, exec_id, data, now, rs->pool,
                           &e->str)
        != NGX_OK)
    {
        return ENOMEM;
    }

    ngx_memcpy(e->org, org, MR_ORG_ID_LEN);
    e->found = 1;
    e->fresh = 1;
    e->dirty = 1;
    e->bytes = mr_pg_event_bytes(e->str.len);

    return mr_pg_usage(rs, org, e->bytes, MR_LIMIT_BYTES, 0);
}


/* a new delivery (its id to id, if not NULL), due now */

static int
mr_pg_dlv_create(mr_pg_rows_t *rs, mr_store_op_t *op, u_char *org,
    u_char *event_id, u_char *wh_id, ngx_str_t *url, mr_pg_ent_t *x,
    ngx_str_t *type, int64_t now, u_char *id)
{
    mr_dlv_t      dlv;
    mr_pg_ent_t  *d;

    ngx_memzero(&dlv, sizeof(mr_dlv_t));

    if (mr_rule_tid(dlv.rec.id, "dlv_", now) != NGX_OK) {
        return ENOMEM;
    }

    if (x) {
        /* after the execution's last delivery */

        if (x->has_last) {
            mr_rule_dlv_after(x->last_dlv, dlv.rec.id);
        }

        ngx_memcpy(x->last_dlv, dlv.rec.id, MR_DLV_ID_LEN);
        x->has_last = 1;
        x->dirty = 1;
    }

    mr_rule_dlv_init(&dlv, event_id, org, wh_id, url, x ? x->exec.id : NULL,
                     type, now);

    dlv.rec.due_ms = now;

    d = mr_pg_add(rs, MR_PG_DLV, dlv.rec.id, MR_DLV_ID_LEN);
    if (d == NULL) {
        return ENOMEM;
    }

    d->dlv = dlv;

    if (mr_pg_seg_copy(rs->pool, &d->dlv.seg[MR_DLV_SEG_URL]) != NGX_OK) {
        return ENOMEM;
    }

    mr_rule_dlv_target(&d->dlv, d->target);

    d->fresh = 1;
    d->found = 0;

    if (id) {
        ngx_memcpy(id, dlv.rec.id, MR_DLV_ID_LEN);
    }

    op->emitted++;

    return mr_pg_dlv_put(rs, d);
}


/* ---- dispatch */

static int
mr_pg_route_getter(void *data, mr_route_t *route, mr_route_state_t *st)
{
    mr_pg_rows_t  *rs;
    mr_pg_ent_t   *r;

    rs = data;

    r = mr_pg_get(rs, MR_PG_ROUTE, route->name.data, route->name.len);

    if (r == NULL) {
        ngx_memzero(st, sizeof(mr_route_state_t));
        return 0;
    }

    *st = r->route;

    return 0;
}


static int
mr_pg_route_put(mr_pg_rows_t *rs, u_char *name, size_t len,
    mr_route_state_t *st)
{
    mr_pg_ent_t  *r;

    if (len == 0) {
        return 0;
    }

    r = mr_pg_add(rs, MR_PG_ROUTE, name, len);
    if (r == NULL) {
        return ENOMEM;
    }

    r->route = *st;
    r->dirty = 1;

    return 0;
}


static int
mr_pg_route_get(mr_pg_rows_t *rs, u_char *name, size_t len,
    mr_route_state_t *st)
{
    mr_pg_ent_t  *r;

    ngx_memzero(st, sizeof(mr_route_state_t));

    if (len == 0) {
        return 0;
    }

    r = mr_pg_get(rs, MR_PG_ROUTE, name, len);

    if (r) {
        *st = r->route;
    }

    return 0;
}


/* the attempts, with one more (copied to the batch) */

static int
mr_pg_attempt(mr_pg_rows_t *rs, mr_pg_ent_t *x, int64_t end,
    const char *outcome, const char *code, ngx_uint_t status,
    ngx_str_t *job_id)
{
    int      rc;
    u_char  *buf;

    buf = NULL;

    rc = mr_rule_attempt(&x->exec, end, outcome, code, status, job_id, &buf);

    return mr_pg_attempts_keep(rs, x, rc, buf);
}


/* the attempts a rule made in buf (malloc'ed), copied to the batch */

static int
mr_pg_attempts_keep(mr_pg_rows_t *rs, mr_pg_ent_t *x, int rc, u_char *buf)
{
    if (rc == 0
        && mr_pg_seg_copy(rs->pool, &x->exec.seg[MR_SEG_ATTEMPTS]) != NGX_OK)
    {
        rc = ENOMEM;
    }

    if (buf) {
        ngx_free(buf);
    }

    return rc;
}


/*
 * The execution leaves dispatch (terminal, or waits for a callback), or
 * its lease ended without an answer: no longer due, and its lease, if
 * any, gives its route's slot back, with its attempt recorded
 */

static int
mr_pg_disp_release(mr_pg_rows_t *rs, mr_store_op_t *op, mr_pg_ent_t *x)
{
    int                rc;
    mr_exec_t         *exec;
    const char        *outcome, *code;
    mr_route_state_t   st;

    exec = &x->exec;
    exec->rec.next_ms = 0;

    if (mr_rule_disp_unanswered(exec, &outcome, &code)) {
        rc = mr_pg_attempt(rs, x, op->now, outcome, code, 0, NULL);
        if (rc != 0) {
            return rc;
        }

        (void) mr_pg_route_get(rs, exec->rec.route, exec->rec.route_len,
                               &st);

        mr_rule_disp_release(&st, exec->rec.lease_owner);

        rc = mr_pg_route_put(rs, exec->rec.route, exec->rec.route_len, &st);
        if (rc != 0) {
            return rc;
        }

        op->ready = 1;
    }

    exec->rec.lease_owner = 0;
    exec->rec.lease_until_ms = 0;

    return 0;
}


static int
mr_pg_disp_settle(mr_pg_rows_t *rs, mr_store_op_t *op, mr_pg_ent_t *x,
    int64_t cost)
{
    mr_pg_ent_t  *a;

    a = mr_pg_acct(rs, x->exec.rec.org);
    if (a == NULL) {
        return EINVAL;
    }

    cost = mr_rule_settle(&x->exec, &a->acct, cost, &op->disp.result,
                          op->now);
    a->dirty = 1;

    op->disp.status = MR_COMPLETED;
    op->disp.cost = cost;

    return mr_pg_disp_end(rs, op, x, "execution.completed");
}


static int
mr_pg_disp_fail(mr_pg_rows_t *rs, mr_store_op_t *op, mr_pg_ent_t *x,
    const char *code, ngx_str_t *message)
{
    int           rc;
    char         *err;
    mr_pg_ent_t  *a;

    a = mr_pg_acct(rs, x->exec.rec.org);
    if (a == NULL) {
        return EINVAL;
    }

    err = NULL;

    if (mr_rule_fail(&x->exec, &a->acct, code, message, op->now, &err)
        != NGX_OK)
    {
        return ENOMEM;
    }

    a->dirty = 1;
    op->disp.status = MR_FAILED;

    rc = mr_pg_disp_end(rs, op, x, "execution.failed");

    free(err);

    return rc;
}


/* a terminal status: out of dispatch, written, and its event */

static int
mr_pg_disp_end(mr_pg_rows_t *rs, mr_store_op_t *op, mr_pg_ent_t *x,
    const char *event)
{
    int  rc;

    op->full = 1;

    rc = mr_pg_disp_release(rs, op, x);

    if (rc == 0) {
        rc = mr_pg_exec_put(rs, x);
    }

    if (rc == 0) {
        rc = mr_pg_emit(rs, op, x, event);
    }

    return rc;
}


static int
mr_pg_disp_lease_end(mr_pg_rows_t *rs, mr_store_op_t *op, mr_pg_ent_t *x,
    ngx_uint_t outcome, ngx_uint_t breaker, ngx_uint_t answered)
{
    mr_route_state_t  st;

    (void) mr_pg_route_get(rs, x->exec.rec.route, x->exec.rec.route_len,
                           &st);

    mr_rule_disp_lease_end(mr_pg_main_conf(), &st, &x->exec, op, outcome,
                           breaker, answered);

    return mr_pg_route_put(rs, x->exec.rec.route, x->exec.rec.route_len,
                           &st);
}


static int
mr_pg_disp_no_route(mr_pg_rows_t *rs, mr_store_op_t *op, mr_pg_ent_t *x,
    int why)
{
    ngx_str_t    msg;
    const char  *code;

    mr_rule_disp_no_route(why, &code, &msg);

    return mr_pg_disp_fail(rs, op, x, code, &msg);
}


/* the outcome of an attempt, from the worker that made it */

static int
mr_pg_disp_done(mr_pg_rows_t *rs, mr_store_op_t *op)
{
    int                rc;
    int64_t            next;
    ngx_uint_t         half;
    mr_model_t        *m;
    mr_route_t        *route;
    mr_pg_ent_t       *x;
    mr_disp_op_t      *d;
    mr_route_state_t   st;

    d = &op->disp;

    x = mr_pg_get(rs, MR_PG_EXEC, d->exec_id, MR_EXEC_ID_LEN);

    if (x == NULL || !x->found || x->deleted) {
        op->result = MR_R_NOT_FOUND;
        return 0;
    }

    if (mr_rule_disp_late(&x->exec, d->token, op->now)) {

        /*
         * cancelled, expired (or about to be: the sweeper ends it), or
         * the lease passed on: a late answer
         */
        d->status = x->exec.rec.status;
        op->result = MR_R_NOOP;
        return 0;
    }

    rc = mr_pg_attempt(rs, x, d->ended_ms, mr_rule_disp_outcome(d->outcome),
                       d->outcome == MR_OUT_OK
                       || d->outcome == MR_OUT_ACCEPTED
                       ? NULL : d->code,
                       d->status_code, &d->job_id);
    if (rc != 0) {
        return rc;
    }

    rc = mr_pg_disp_lease_end(rs, op, x, d->outcome, d->breaker,
                              mr_rule_disp_answered(d));
    if (rc != 0) {
        return rc;
    }

    switch (d->outcome) {

    case MR_OUT_OK:
        return mr_pg_disp_settle(rs, op, x, d->cost);

    case MR_OUT_ACCEPTED:
        /* the provider calls back; its deadline still expires it */
        mr_rule_disp_accepted(&x->exec, d);
        x->exec.rec.next_ms = 0;
        return mr_pg_exec_put(rs, x);

    case MR_OUT_FATAL:
        return mr_pg_disp_fail(rs, op, x, d->code, &d->message);
    }

    /* retryable: another attempt if the limit and the deadline allow */

    m = mr_model_find(mr_pg_main_conf(), &x->exec.seg[MR_SEG_MODEL]);

    if (!mr_rule_disp_retry(m, &x->exec, d, op->now, &next)) {
        return mr_pg_disp_fail(rs, op, x, d->code, &d->message);
    }

    /* every route paused past expires_at (this one too, say): now */

    rc = mr_rule_disp_pick(m, &x->exec.rec, next, mr_pg_route_getter, rs,
                           &route, &st, &half);

    if (rc == NGX_AGAIN || rc == NGX_ABORT) {
        return mr_pg_disp_no_route(rs, op, x, rc);
    }

    if (rc > 0) {
        return rc;
    }

    x->exec.rec.next_ms = next;

    d->status = MR_PROCESSING;
    op->ready = 1;

    return mr_pg_exec_put(rs, x);
}


/* a provider's callback for an asynchronous job */

static int
mr_pg_disp_callback(mr_pg_rows_t *rs, mr_store_op_t *op)
{
    int            rc;
    u_char        *buf;
    mr_pg_ent_t   *x;
    mr_disp_op_t  *d;

    d = &op->disp;

    x = mr_pg_get(rs, MR_PG_EXEC, d->exec_id, MR_EXEC_ID_LEN);

    if (x == NULL || !x->found || x->deleted) {
        op->result = MR_R_NOT_FOUND;
        return 0;
    }

    if (!mr_rule_callback_check(op, &x->exec)) {
        return 0;
    }

    buf = NULL;

    rc = mr_rule_callback_attempts(op, &x->exec, &buf);
    rc = mr_pg_attempts_keep(rs, x, rc, buf);

    if (rc != 0) {
        return rc;
    }

    if (x->exec.rec.lease_owner) {
        rc = mr_pg_disp_lease_end(rs, op, x, MR_OUT_OK, 0,
                                  mr_rule_callback_current(op, &x->exec));
        if (rc != 0) {
            return rc;
        }
    }

    if (d->outcome == MR_OUT_OK) {
        return mr_pg_disp_settle(rs, op, x, d->cost);
    }

    return mr_pg_disp_fail(rs, op, x, d->code, &d->message);
}


/* ---- claims and the sweep: candidates */

static ngx_int_t
mr_pg_cand_push(mr_pg_batch_t *b, u_char *id, size_t len, u_char *org)
{
    ngx_str_t  *s;

    s = ngx_array_push(b->cand);
    if (s == NULL) {
        return NGX_ERROR;
    }

    s->data = ngx_pnalloc(b->pool, len);
    if (s->data == NULL) {
        return NGX_ERROR;
    }

    ngx_memcpy(s->data, id, len);
    s->len = len;

    s = ngx_array_push(b->cand_orgs);
    if (s == NULL) {
        return NGX_ERROR;
    }

    s->data = ngx_pnalloc(b->pool, MR_ORG_ID_LEN);
    if (s->data == NULL) {
        return NGX_ERROR;
    }

    ngx_memcpy(s->data, org, MR_ORG_ID_LEN);
    s->len = MR_ORG_ID_LEN;

    return NGX_OK;
}


static ngx_int_t
mr_pg_cand_literal(mr_pg_batch_t *b, ngx_array_t *a, const char **v)
{
    ngx_str_t    *s;
    ngx_uint_t    i;
    mr_pg_buf_t   buf;

    mr_pg_buf_init(&buf, b->pool);

    s = a ? a->elts : NULL;

    for (i = 0; a && i < a->nelts; i++) {
        mr_pg_buf_str(&buf, s[i].data, s[i].len);
    }

    *v = mr_pg_buf_end(&buf);

    return *v ? NGX_OK : NGX_ERROR;
}


/*
 * The candidates of a claim or a sweep's step, read without a lock (and
 * without a transaction).  NGX_DECLINED: the sweep has no step left.
 */

ngx_int_t
mr_pg_ops_candidates(mr_pg_batch_t *b, mr_pg_req_t *req)
{
    char            cut[MR_EVT_ID_LEN + 1];
    u_char         *p;
    int64_t         t;
    mr_store_op_t  *op;
    const char     *v[6];
    mr_main_conf_t *mcf;

    mcf = mr_pg_main_conf();
    op = ngx_queue_data(ngx_queue_head(&b->ops), mr_store_op_t, queue);

    b->cand = ngx_array_create(b->pool, 64, sizeof(ngx_str_t));
    b->cand_orgs = ngx_array_create(b->pool, 64, sizeof(ngx_str_t));
    b->more = 0;
    b->rescan = 0;
    b->next_known = 0;

    if (b->cand == NULL || b->cand_orgs == NULL) {
        return NGX_ERROR;
    }

    b->nloads = 0;

    switch (b->kind) {

    case MR_PG_B_DISP_CLAIM:

        /*
         * as many as it may take, and the ones that waited at the head
         * last time: a claim with a backlog read MR_PG_DISP_SCAN rows to
         * take a few (0.4 of PostgreSQL's statement time, 256 clients
         * completing executions on one account)
         */

        b->scan = ngx_min(op->disp.limit + mr_pg->disp_waiting,
                          MR_PG_DISP_SCAN);

        /*
         * and when the head is as long as it may be, as many again past
         * it from where the last such look stopped, round the queue:
         * executions that wait for a full capped route, however many,
         * neither hide the ones due behind them (another model's, an
         * ended lease's) nor take the head from the oldest
         */

        b->scan_past = (b->scan == MR_PG_DISP_SCAN) ? MR_PG_DISP_SCAN : 0;

        /* what it says of the look past the head is set when it is read
         * (mr_pg_op_reset() before the load of the candidates keeps it) */

        op->disp.past = 0;

        v[0] = mr_pg_int(b->pool, op->now);
        v[1] = mr_pg_int(b->pool, (int64_t) b->scan);
        v[2] = mr_pg_int(b->pool, op->disp.from_set
                                  ? (int64_t) mr_be64_get(op->disp.from)
                                  : 0);
        v[3] = mr_pg_int(b->pool, (int64_t) b->scan_past);

        /*
         * read in the index's order, whatever PostgreSQL estimates: with
         * statistics taken while few were due, it planned the look past
         * the head as a bitmap scan of every due execution and a sort
         * (t/81); the settings last until the request's end
         */

        if (v[0] == NULL || v[1] == NULL || v[2] == NULL || v[3] == NULL
            || mr_pg_send(req, MR_SQL_IN_ORDER, 0, NULL, NULL) != NGX_OK
            || (b->scan_past
                ? mr_pg_send(req, MR_SQL_DISP_DUE_PAST, 4, v, NULL)
                : mr_pg_send(req, MR_SQL_DISP_DUE, 2, v, NULL)) != NGX_OK
            || mr_pg_send(req, MR_SQL_ROUTES, 0, NULL, NULL) != NGX_OK
            || mr_pg_send(req, MR_SQL_DISP_AFTER, 1, v, NULL) != NGX_OK)
        {
            return NGX_ERROR;
        }

        return NGX_OK;

    case MR_PG_B_DLV_CLAIM:
        if (op->wh.limit == 0) {
            return NGX_DECLINED;
        }

        v[0] = mr_pg_str(b->pool, mr_pg->dlv_cursor,
                         mr_pg->dlv_cursor_set ? MR_ORG_ID_LEN : 0);
        v[1] = mr_pg_int(b->pool, MR_PG_DLV_ORGS);
        v[2] = mr_pg_int(b->pool, op->now);
        v[3] = mr_pg_int(b->pool, MR_PG_DLV_TAKE);
        v[5] = mr_pg_int(b->pool, MR_PG_DLV_TARGETS);

        /* where each account's targets are first looked at: a random
         * one of "wh_" (endpoints) and "wu_" (webhook_url hosts) */

        p = ngx_pnalloc(b->pool, 3 + 2 * 8 + 1);

        if (v[0] == NULL || v[1] == NULL || v[2] == NULL || v[3] == NULL
            || v[5] == NULL || p == NULL)
        {
            return NGX_ERROR;
        }

        if (mr_random_id(p, (ngx_random() & 1) ? "wh_" : "wu_", 2 * 8)
            != NGX_OK)
        {
            return NGX_ERROR;
        }

        p[3 + 2 * 8] = '\0';
        v[4] = (char *) p;

        return mr_pg_send(req, MR_SQL_DLV_DUE, 6, v, NULL);
    }

    /* MR_PG_B_SWEEP: the step's */

    for ( /* void */ ; b->step < MR_PG_S_N; b->step++) {

        if (op->retention_ms == 0
            && (b->step == MR_PG_S_EXECS || b->step == MR_PG_S_DLVS
                || b->step == MR_PG_S_EVENTS || b->step == MR_PG_S_KEYS))
        {
            continue;
        }

        v[1] = mr_pg_int(b->pool, (int64_t) op->limit);

        switch (b->step) {

        case MR_PG_S_EXECS:
            v[0] = mr_pg_int(b->pool, op->now - op->retention_ms);
            return (v[0] && v[1])
                   ? mr_pg_send(req, MR_SQL_PURGE_EXECS, 2, v, NULL)
                   : NGX_ERROR;

        case MR_PG_S_DLVS:
        case MR_PG_S_EVENTS:

            /* ids sort by their time: those before the cut */

            t = op->now - op->retention_ms;

            if (b->step == MR_PG_S_EVENTS) {
                t = ngx_min(t, op->now - op->wh.max_age_ms);
            }

            ngx_sprintf((u_char *) cut, "%s%012xL%Z",
                        b->step == MR_PG_S_DLVS ? "dlv_" : "evt_",
                        (uint64_t) ngx_max(t, 0) & 0xffffffffffffULL);
            v[0] = cut;

            return v[1] ? mr_pg_send(req, b->step == MR_PG_S_DLVS
                                          ? MR_SQL_PURGE_DLVS
                                          : MR_SQL_PURGE_EVENTS,
                                     2, v, NULL)
                        : NGX_ERROR;

        case MR_PG_S_KEYS:
            v[0] = mr_pg_int(b->pool, op->now - op->retention_ms);
            return (v[0] && v[1])
                   ? mr_pg_send(req, MR_SQL_PURGE_KEYS, 2, v, NULL)
                   : NGX_ERROR;

        case MR_PG_S_IDEM:

            /* idempotency keys past their lifetime, and old batch ids:
             * deleted at once (nothing counts them) */

            v[0] = mr_pg_int(b->pool, op->now - op->idem_ttl_ms);
            if (v[0] == NULL || v[1] == NULL
                || mr_pg_send(req, MR_SQL_PURGE_IDEM, 2, v, NULL) != NGX_OK
                || mr_pg_send(req, MR_SQL_PURGE_BATCHES, 1, &v[1], NULL)
                   != NGX_OK)
            {
                return NGX_ERROR;
            }

            return NGX_OK;

        default: /* MR_PG_S_EXPIRE */
            v[0] = mr_pg_int(b->pool, op->now);
            return (v[0] && v[1])
                   ? mr_pg_send(req, MR_SQL_EXPIRE_DUE, 2, v, NULL)
                   : NGX_ERROR;
        }
    }

    (void) mcf;

    return NGX_DECLINED;
}


/* the candidates read: NGX_DECLINED if none */

ngx_int_t
mr_pg_ops_candidates_done(mr_pg_batch_t *b, mr_pg_req_t *req)
{
    int              i, n;
    ngx_str_t        slug;
    ngx_uint_t       taken, passed, head;
    PGresult        *res, *after;
    mr_exec_rec_t    rec;
    mr_store_op_t   *op;
    mr_pg_rows_t    *rs;

    op = ngx_queue_data(ngx_queue_head(&b->ops), mr_store_op_t, queue);
    rs = b->rows;
    res = req->res[b->kind == MR_PG_B_DISP_CLAIM ? MR_PG_CLAIM_RES : 0];

    if (res == NULL) {
        return NGX_ERROR;
    }

    n = PQntuples(res);

    switch (b->kind) {

    case MR_PG_B_DISP_CLAIM:

        /*
         * those that only wait for a slot are passed over, as the rules
         * tell from the states read now (they are read again, locked)
         */

        if (req->res[MR_PG_CLAIM_RES + 1] == NULL
            || mr_pg_rows_routes(rs, req->res[MR_PG_CLAIM_RES + 1]) != NGX_OK)
        {
            return NGX_ERROR;
        }

        taken = 0;
        passed = 0;
        head = 0;

        for (i = 0; i < n; i++) {
            if (taken >= op->disp.limit) {
                b->more = 1;
                break;
            }

            if (PQgetvalue(res, i, 8)[0] == '0') {
                head++;
            }

            ngx_memzero(&rec, sizeof(mr_exec_rec_t));
            rec.status = (uint32_t) mr_pg_get_int(res, i, 2);
            rec.lease_owner = (uint64_t) mr_pg_get_int(res, i, 3);
            rec.expires_ms = mr_pg_get_int(res, i, 4);
            rec.nattempts = (uint32_t) mr_pg_get_int(res, i, 5);

            slug.data = (u_char *) PQgetvalue(res, i, 6);
            slug.len = (size_t) PQgetlength(res, i, 6);

            if (mr_rule_disp_waits(mr_pg_main_conf(), &rec, &slug, op->now,
                                   mr_pg_route_getter, rs))
            {
                passed++;
                continue;
            }

            if (PQgetlength(res, i, 1) != MR_ORG_ID_LEN
                || mr_pg_cand_push(b, (u_char *) PQgetvalue(res, i, 0),
                                   (size_t) PQgetlength(res, i, 0),
                                   (u_char *) PQgetvalue(res, i, 1))
                   != NGX_OK)
            {
                return NGX_ERROR;
            }

            taken++;
        }

        /* the next look past the head: after this one's, or round */

        if (i == n && b->scan_past) {
            op->disp.past = 1;
            op->disp.next_from_set = ((ngx_uint_t) n - head >= b->scan_past);

            if (op->disp.next_from_set) {
                ngx_memzero(op->disp.next_from, MR_DISP_FROM_LEN);
                mr_be64_put(op->disp.next_from,
                            (uint64_t) mr_pg_get_int(res, n - 1, 7));
            }
        }

        /*
         * the next look: past those that waited; or, when all it read
         * were due and it took fewer than it may, twice as far at once
         */

        if (head == b->scan && taken < op->disp.limit
            && b->scan < MR_PG_DISP_SCAN)
        {
            mr_pg->disp_waiting = ngx_min(2 * b->scan, MR_PG_DISP_SCAN);
            b->rescan = 1;

        } else {
            mr_pg->disp_waiting = passed + passed / 4;
        }

        if (head == b->scan) {
            b->more = 1;

        } else if (!b->more && passed == 0
                   && req->res[MR_PG_CLAIM_RES + 2] != NULL)
        {
            /*
             * it may take all that was due (none waits for a slot that
             * another worker or node may free): and when the next is
             * (no row: none)
             */

            after = req->res[MR_PG_CLAIM_RES + 2];
            b->next_known = 1;
            b->next_due = (PQntuples(after) == 0 || PQgetisnull(after, 0, 0))
                          ? -1 : mr_pg_get_int(after, 0, 0);
        }

        if (b->cand->nelts == 0) {
            mr_pg_disp_said(b, op, 0);    /* no load, no claim follows */
        }

        /* the routes are locked, and read again, with the candidates */

        break;

    case MR_PG_B_SWEEP:
        if (b->step == MR_PG_S_IDEM) {
            op->purged += (ngx_uint_t) PQntuples(res);
            op->more |= ((ngx_uint_t) PQntuples(res) == op->limit);
            return NGX_DECLINED;
        }

        op->more |= ((ngx_uint_t) n == op->limit);

        /* fall through */

    default: /* MR_PG_B_DLV_CLAIM */
        for (i = 0; i < n; i++) {

            if (PQgetisnull(res, i, 0)) {

                /* the last account visited (none: no account has any) */

                if (!PQgetisnull(res, i, 1)
                    && PQgetlength(res, i, 1) == MR_ORG_ID_LEN)
                {
                    ngx_memcpy(b->visited, PQgetvalue(res, i, 1),
                               MR_ORG_ID_LEN);
                    b->visited_set = 1;
                }

                continue;
            }

            if (PQgetlength(res, i, 1) != MR_ORG_ID_LEN
                || mr_pg_cand_push(b, (u_char *) PQgetvalue(res, i, 0),
                                   (size_t) PQgetlength(res, i, 0),
                                   (u_char *) PQgetvalue(res, i, 1))
                   != NGX_OK)
            {
                return NGX_ERROR;
            }
        }
    }

    if (b->kind == MR_PG_B_DLV_CLAIM && b->cand->nelts == 0
        && b->visited_set)
    {
        /* nothing due in the accounts visited: the next claim visits the
         * ones after them */

        mr_pg_dlv_cursor(b->visited);
    }

    return b->cand->nelts ? NGX_OK : NGX_DECLINED;
}


/* ---- the dispatch claim */

static int
mr_pg_disp_claim(mr_pg_batch_t *b, mr_store_op_t *op)
{
    int            rc;
    ngx_str_t     *id;
    ngx_uint_t     i, claimed, one;
    mr_pg_ent_t   *x;
    mr_pg_rows_t  *rs;

    rs = b->rows;
    id = b->cand->elts;
    claimed = 0;

    /* in the order they were due (locked ones were skipped) */

    for (i = 0; i < b->cand->nelts; i++) {
        x = mr_pg_get(rs, MR_PG_EXEC, id[i].data, id[i].len);

        if (x == NULL || !x->found) {
            continue;                 /* taken by another worker meanwhile */
        }

        one = 0;

        rc = mr_pg_disp_claim_one(rs, op, x, &one);
        if (rc != 0) {
            return rc;
        }

        claimed += one;
    }

    mr_pg_disp_said(b, op, claimed);

    return 0;
}


/* what a dispatch claim tells the dispatcher */

static void
mr_pg_disp_said(mr_pg_batch_t *b, mr_store_op_t *op, ngx_uint_t claimed)
{
    op->disp.claimed = claimed;
    op->disp.more = b->more;
    op->disp.rescan = b->rescan;

    /*
     * the next due time stands only if every candidate was taken: one
     * skipped (another worker holds it), or left due at its lock (its
     * route full by the candidates before it, a probe taken, the
     * sweeper's), is due still
     */

    op->disp.next_known = (b->next_known && claimed == b->cand->nelts);
    op->disp.next_due = b->next_due;
}


/* one due execution; *claimed is set if an attempt was claimed */

static int
mr_pg_disp_claim_one(mr_pg_rows_t *rs, mr_store_op_t *op, mr_pg_ent_t *x,
    ngx_uint_t *claimed)
{
    int                rc;
    int64_t            now;
    ngx_str_t          msg;
    ngx_uint_t         half;
    mr_exec_t         *exec;
    mr_model_t        *m;
    mr_route_t        *route;
    const char        *code;
    mr_disp_job_t     *job;
    mr_route_state_t   st;

    now = op->now;
    exec = &x->exec;

    switch (mr_rule_disp_due(exec, now)) {

    case MR_DISP_LEAVE:
        exec->rec.next_ms = 0;
        return mr_pg_exec_put(rs, x);

    case MR_DISP_SWEEP:
        return 0;    /* the sweeper expires it */
    }

    /* a lease that ended without an answer: its worker is gone */

    if (exec->rec.lease_owner) {
        rc = mr_pg_disp_release(rs, op, x);

        if (rc == 0) {
            exec->rec.next_ms = now;
            rc = mr_pg_exec_put(rs, x);
        }

        if (rc != 0) {
            return rc;
        }
    }

    if (mr_rule_disp_model(mr_pg_main_conf(), exec, &m, &code, &msg)
        == MR_DISP_FAIL)
    {
        return mr_pg_disp_fail(rs, op, x, code, &msg);
    }

    /* the next route in order whose breaker and cap let it take one */

    rc = mr_rule_disp_pick(m, &exec->rec, now, mr_pg_route_getter, rs,
                           &route, &st, &half);

    if (rc == NGX_BUSY) {
        return 0;                    /* it waits */
    }

    if (rc == NGX_DECLINED || rc == NGX_AGAIN || rc == NGX_ABORT) {
        return mr_pg_disp_no_route(rs, op, x, rc);
    }

    if (rc != 0) {
        return rc;
    }

    job = ngx_alloc(sizeof(mr_disp_job_t), ngx_cycle->log);
    if (job == NULL) {
        return ENOMEM;
    }

    if (RAND_bytes((u_char *) &job->token, sizeof(uint64_t)) != 1
        || job->token == 0)
    {
        ngx_free(job);
        return EIO;
    }

    mr_rule_disp_take(&st, route, half, job->token, now);

    rc = mr_pg_route_put(rs, route->name.data, route->name.len, &st);
    if (rc != 0) {
        ngx_free(job);
        return rc;
    }

    if (mr_rule_disp_start(exec, now)) {
        rc = mr_pg_emit(rs, op, x, "execution.started");
        if (rc != 0) {
            ngx_free(job);
            return rc;
        }
    }

    mr_rule_disp_lease(exec, route, job->token, now);

    exec->rec.next_ms = exec->rec.lease_until_ms;

    rc = mr_pg_exec_put(rs, x);
    if (rc != 0) {
        ngx_free(job);
        return rc;
    }

    ngx_memcpy(job->exec_id, exec->id, MR_EXEC_ID_LEN);
    job->lease_until_ms = exec->rec.lease_until_ms;
    job->next = op->disp.jobs;
    op->disp.jobs = job;

    *claimed = 1;

    return 0;
}


/* ---- the delivery claim */

/*
 * Due deliveries, each with a lease; op->wh.jobs gets them.  The
 * accounts with queued deliveries were visited in turn from the one after
 * the last visited (mr_pg_ops_candidates()), the due ones of each; here,
 * in that order, each is claimed within the caps (the account's and the
 * target's attempts in flight, this worker's and claimed now: the rules'
 * mr_rule_dlv_busy()), or waits for an earlier one of its execution, or,
 * its endpoint inactive, waits (and fails past its max age), or, its
 * endpoint deleted, goes.
 */

static int
mr_pg_dlv_claim(mr_pg_batch_t *b, mr_store_op_t *op)
{
    int              rc;
    ngx_str_t       *id, *org;
    ngx_uint_t       i;
    mr_pg_ent_t     *d;
    mr_pg_rows_t    *rs;
    mr_main_conf_t  *mcf;

    rs = b->rows;
    mcf = mr_pg_main_conf();
    id = b->cand->elts;
    org = b->cand_orgs->elts;

    op->wh.jobs = NULL;
    op->wh.claimed = 0;

    for (i = 0; i < b->cand->nelts; i++) {

        if (op->wh.claimed >= op->wh.limit) {
            return 0;
        }

        /* the account visited last: the next claim starts after it */

        mr_pg_dlv_cursor(org[i].data);

        if (mr_rule_dlv_busy(op, org[i].data, MR_ORG_ID_LEN)
            >= mcf->webhook_per_account)
        {
            continue;
        }

        d = mr_pg_get(rs, MR_PG_DLV, id[i].data, id[i].len);

        if (d == NULL || !d->found || d->deleted) {
            continue;                 /* taken, or gone, meanwhile */
        }

        rc = mr_pg_dlv_claim_one(rs, op, d, NULL);
        if (rc != 0) {
            return rc;
        }
    }

    /* every candidate was looked at: the next claim starts after the
     * last account visited, with candidates or not */

    if (b->visited_set) {
        mr_pg_dlv_cursor(b->visited);
    }

    return 0;
}


/* where the next claim of deliveries starts: after this account */

static void
mr_pg_dlv_cursor(u_char *org)
{
    ngx_memcpy(mr_pg->dlv_cursor, org, MR_ORG_ID_LEN);
    mr_pg->dlv_cursor_set = 1;
}


static int
mr_pg_dlv_claim_one(mr_pg_rows_t *rs, mr_store_op_t *op, mr_pg_ent_t *d,
    ngx_array_t *blocked)
{
    u_char        *p;
    size_t         size;
    mr_dlv_t      *dlv;
    ngx_str_t      url, secret, headers, body;
    mr_pg_ent_t   *w, *s, *ev;
    mr_dlv_job_t  *job;
    u_char         busy[MR_DLV_BUSY_LEN];

    dlv = &d->dlv;

    ngx_memcpy(busy, dlv->rec.org, MR_ORG_ID_LEN);
    ngx_memcpy(busy + MR_ORG_ID_LEN, d->target, MR_WH_TARGET_LEN);

    ngx_str_null(&headers);

    if (ngx_memcmp(dlv->rec.wh_id, mr_zero, MR_WH_ID_LEN) != 0) {
        w = mr_pg_get(rs, MR_PG_WH, dlv->rec.wh_id, MR_WH_ID_LEN);

        if (w == NULL || !w->found || w->deleted) {
            /* its endpoint was deleted: it goes */
            return mr_pg_dlv_drop(rs, d);
        }

        if (!w->wh.rec.active) {

            /* parked: past its max age it fails, purged later */

            if (mr_rule_dlv_expired(mr_pg_main_conf(), dlv, op->now)) {
                dlv->rec.status = MR_DLV_FAILED;
                dlv->rec.next_ms = 0;
                dlv->rec.token = 0;
                dlv->rec.due_ms = 0;
                return mr_pg_dlv_put(rs, d);
            }

            return 0;
        }

        url = w->wh.seg[MR_WH_SEG_URL];
        secret = w->wh.seg[MR_WH_SEG_SECRET];
        headers = w->wh.seg[MR_WH_SEG_HEADERS];

    } else {
        url = dlv->seg[MR_DLV_SEG_URL];

        s = mr_pg_secret(rs, dlv->rec.org);
        if (s == NULL) {
            return ENOMEM;
        }

        if (!s->found) {
            if (mr_store_new_secret(s->secret) != NGX_OK) {
                return ENOMEM;
            }

            s->found = 1;
            s->dirty = 1;
        }

        secret.data = s->secret;
        secret.len = MR_WH_SECRET_LEN;
    }

    /* the caps: the target's and the account's */

    if (mr_rule_dlv_busy(op, busy, MR_DLV_BUSY_LEN)
        >= op->wh.per_endpoint
        || mr_rule_dlv_busy(op, busy, MR_ORG_ID_LEN)
           >= mr_pg_main_conf()->webhook_per_account)
    {
        return 0;
    }

    /* the events of one execution reach a destination in order */

    if (d->live) {
        /* it waits: behind the earlier one (mr_rule_dlv_park()) */
        mr_rule_dlv_park(dlv);
        dlv->rec.due_ms = mr_rule_dlv_wait_due(d->after_ms, d->after_ms < 0,
                                               op->now);
        return mr_pg_dlv_put(rs, d);
    }

    ev = mr_pg_get(rs, MR_PG_EVENT, dlv->rec.event_id, MR_EVT_ID_LEN);

    if (ev == NULL || !ev->found || ev->deleted) {
        /* purged: nothing to send any more */
        dlv->rec.status = MR_DLV_FAILED;
        dlv->rec.next_ms = 0;
        dlv->rec.token = 0;
        dlv->rec.due_ms = 0;
        return mr_pg_dlv_put(rs, d);
    }

    body = ev->str;

    size = sizeof(mr_dlv_job_t) + url.len + 1 + secret.len + headers.len
           + body.len;

    job = ngx_alloc(size, ngx_cycle->log);
    if (job == NULL) {
        return ENOMEM;
    }

    ngx_memcpy(job->dlv_id, dlv->rec.id, MR_DLV_ID_LEN);
    ngx_memcpy(job->wh_id, dlv->rec.wh_id, MR_WH_ID_LEN);
    ngx_memcpy(job->event_id, dlv->rec.event_id, MR_EVT_ID_LEN);
    ngx_memcpy(job->busy, busy, MR_DLV_BUSY_LEN);

    if (RAND_bytes((u_char *) &job->token, sizeof(uint64_t)) != 1) {
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
    job->body.len = body.len;
    mr_cpymem(p, body.data, body.len);

    dlv->rec.token = job->token;
    dlv->rec.due_ms = op->now + op->wh.lease_ms;

    if (mr_pg_dlv_put(rs, d) != 0) {
        ngx_free(job);
        return EINVAL;
    }

    job->next = op->wh.jobs;
    op->wh.jobs = job;
    op->wh.claimed++;

    (void) blocked;

    return 0;
}


/* ---- the sweep */

void
mr_pg_sweep_begin(mr_store_op_t *op)
{
    op->expired = 0;
    op->purged = 0;
    op->scanned = 0;
    op->more = 0;
    op->failed = 0;

    op->limit = ngx_min(op->limit, MR_PG_SWEEP_MAX);
}


/* the next step (NGX_OK), or the sweep is done (NGX_DONE) */

ngx_int_t
mr_pg_sweep_next(mr_pg_batch_t *b, mr_store_op_t *op)
{
    b->step++;

    return b->step < MR_PG_S_N ? NGX_OK : NGX_DONE;
}


/* a step on its locked candidates */

static int
mr_pg_sweep_step(mr_pg_batch_t *b, mr_store_op_t *op)
{
    int            rc;
    ngx_str_t     *id;
    ngx_uint_t     i;
    mr_pg_ent_t   *e;
    mr_pg_rows_t  *rs;

    rs = b->rows;
    id = b->cand->elts;

    for (i = 0; i < b->cand->nelts; i++) {

        switch (b->step) {

        case MR_PG_S_EXECS:
            e = mr_pg_get(rs, MR_PG_EXEC, id[i].data, id[i].len);

            if (e == NULL || !e->found || e->deleted
                || !mr_status_terminal(e->exec.rec.status))
            {
                continue;
            }

            e->deleted = 1;
            e->dirty = 0;

            rc = mr_pg_usage(rs, e->exec.rec.org, -e->bytes,
                             MR_LIMIT_BYTES, 0);
            break;

        case MR_PG_S_DLVS:
            e = mr_pg_get(rs, MR_PG_DLV, id[i].data, id[i].len);

            if (e == NULL || !e->found || e->deleted
                || e->dlv.rec.status == MR_DLV_PENDING)
            {
                continue;
            }

            rc = mr_pg_dlv_drop(rs, e);
            break;

        case MR_PG_S_EVENTS:
            e = mr_pg_get(rs, MR_PG_EVENT, id[i].data, id[i].len);

            if (e == NULL || !e->found || e->deleted) {
                continue;
            }

            e->deleted = 1;
            e->dirty = 0;

            rc = mr_pg_usage(rs, e->org, -e->bytes, MR_LIMIT_BYTES, 0);
            break;

        case MR_PG_S_KEYS:
            e = mr_pg_get(rs, MR_PG_KEY, id[i].data, id[i].len);

            if (e == NULL || !e->found || e->deleted
                || mr_rule_key_active(&e->k.rec))
            {
                continue;
            }

            e->deleted = 1;
            e->dirty = 0;

            rc = mr_pg_usage(rs, e->k.rec.org, -e->bytes, MR_LIMIT_BYTES,
                             0);
            break;

        default: /* MR_PG_S_EXPIRE */
            e = mr_pg_get(rs, MR_PG_EXEC, id[i].data, id[i].len);

            if (e == NULL || !e->found
                || mr_status_terminal(e->exec.rec.status))
            {
                continue;
            }

            rc = mr_pg_expire(rs, op, e);
            if (rc == 0) {
                op->expired++;
            }

            if (rc != 0) {
                return rc;
            }

            continue;
        }

        if (rc != 0) {
            return rc;
        }

        op->purged++;
    }

    return 0;
}


/* one execution past its deadline: EXPIRED, the whole hold released */

static int
mr_pg_expire(mr_pg_rows_t *rs, mr_store_op_t *op, mr_pg_ent_t *x)
{
    int           rc;
    mr_pg_ent_t  *a;

    a = mr_pg_acct(rs, x->exec.rec.org);
    if (a == NULL) {
        return EINVAL;
    }

    mr_rule_expire(&x->exec, &a->acct, op->now);
    a->dirty = 1;

    /* an attempt in flight is recorded as abandoned */

    rc = mr_pg_disp_release(rs, op, x);

    if (rc == 0) {
        rc = mr_pg_exec_put(rs, x);
    }

    if (rc == 0) {
        rc = mr_pg_emit(rs, op, x, "execution.expired");
    }

    return rc;
}

