
/*
 * ModelRoute: the PostgreSQL store.
 *
 * Each worker has modelroute_store_connections connections: the first
 * carries the batches of operations (group commit), the others the
 * reads.  Nothing waits for PostgreSQL on the event loop: requests are
 * sent in pipeline mode (mr_store_pg_conn.c) and their results handled
 * when they come.
 *
 * A batch is the operations submitted since the last one was committed
 * (at most MR_PG_BATCH_MAX), committed in one transaction:
 *   1. BEGIN, the batch's lock (see "faults" below), the rows the
 *      operations need (executions, idempotency keys, keys, endpoints,
 *      deliveries, routes, secrets, credit references), then the
 *      accounts they touch, locked in the order of their ids (FOR
 *      UPDATE): one round trip;
 *   2. the rules (mr_rules*.c) run on those rows in the order of the
 *      operations, through an identity map (mr_store_pg_rows.c): one
 *      operation sees what the ones before it changed;
 *   3. the writes, one statement per table, the batch's id in
 *      mr_batches, COMMIT: one round trip.
 * The claims of due work (dispatch, webhook deliveries) and each step of
 * the sweep run alone in a batch, with a first round trip that reads the
 * candidates without a lock; step 1 then locks the candidates still due,
 * skipping those another worker or node holds (FOR UPDATE SKIP LOCKED;
 * the purges wait for them, and find those another purge deleted
 * gone), then their accounts.  Every transaction locks executions, keys,
 * deliveries, the endpoints it may change, routes, then accounts last,
 * in order: workers and nodes do not deadlock on them.  An operation
 * refused by the rules (insufficient balance, say) changes nothing and
 * does not touch the others; a statement that fails (a unique key two
 * nodes raced for, a deadlock PostgreSQL broke) rolls the batch back,
 * and its operations are made again, each alone.
 *
 * A claim, or a batch of creates, cancels and outcomes, made for the
 * first time, reads its accounts without a lock and changes them at the
 * end by deltas, checked there where a rule decided on them
 * (mr_pg_batch_deltas(), MR_SQL_W_ACCOUNTS_DELTA): a busy account is
 * then held by a batch only for its last round trip and its COMMIT.
 * If the check fails, the batch is made again, locked.
 *
 * Faults.  Operations and reads wait for PostgreSQL at most
 * modelroute_store_timeout, and not at all once it is known to be
 * unreachable (a connection attempt failed): they then get MR_R_UNAVAILABLE
 * and NGX_BUSY (503 SERVICE_UNAVAILABLE, retryable).  A batch lost before
 * its COMMIT was sent changed nothing and is made again; one whose COMMIT
 * got no answer is looked up by its id on a new connection, after taking
 * the batch's advisory lock, which its transaction held until it ended
 * (committed, or rolled back: PostgreSQL ends a transaction whose client
 * is gone within idle_in_transaction_session_timeout): committed, its
 * operations' outcomes stand; not, it is made again.
 */


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_event.h>

#include <openssl/rand.h>

#include "ngx_http_modelroute_module.h"
#include "mr_store.h"
#include "mr_store_ops.h"
#include "mr_rules.h"
#include "mr_metrics.h"
#include "mr_store_pg.h"
#include "mr_store_pg_sql.h"
#include "mr_store_pg_rows.h"
#include "mr_store_pg_ops.h"


#define MR_PG_BATCH_MAX      512
#define MR_PG_WAIT_TICK      100       /* ms: queued work checks its time */
#define MR_PG_RETRIES        3         /* a batch PostgreSQL broke */


static void mr_pg_ready(mr_pg_conn_t *pc);
static ngx_uint_t mr_pg_writer_unreachable(void);
static void mr_pg_commit_handler(ngx_event_t *ev);
static void mr_pg_batch_start(void);
static void mr_pg_batch_load(mr_pg_batch_t *b);
static void mr_pg_batch_cand_done(mr_pg_req_t *req);
static void mr_pg_batch_load_done(mr_pg_req_t *req);
static void mr_pg_batch_commit_done(mr_pg_req_t *req);
static void mr_pg_batch_resolve(mr_pg_batch_t *b);
static void mr_pg_batch_resolve_done(mr_pg_req_t *req);
static void mr_pg_batch_failed(mr_pg_batch_t *b, mr_pg_req_t *req);
static void mr_pg_batch_again(mr_pg_batch_t *b, ngx_uint_t how);
static ngx_uint_t mr_pg_batch_deltas(mr_pg_batch_t *b);
static ngx_uint_t mr_pg_batch_first(mr_pg_batch_t *b);

/* how a batch's operations are made again (mr_pg_batch_again()) */
#define MR_PG_AGAIN          0        /* as they were */
#define MR_PG_AGAIN_ALONE    1        /* each alone */
#define MR_PG_AGAIN_LOCKED   2        /* read unlocked: their accounts
                                         and routes locked first */
#define MR_PG_AGAIN_RETRY    3        /* counted: alone after a few */
static void mr_pg_batch_finish(mr_pg_batch_t *b, ngx_uint_t result);
static void mr_pg_batch_end(mr_pg_batch_t *b);
static void mr_pg_rollback(mr_pg_conn_t *pc);
static void mr_pg_abandon(mr_pg_req_t *req);
static void mr_pg_rollback_done(mr_pg_req_t *req);
static void mr_pg_wait_handler(ngx_event_t *ev);
static void mr_pg_inflight_handler(ngx_event_t *ev);
static void mr_pg_fail_ops(ngx_uint_t all);
static void mr_pg_read_start(mr_store_read_t *rd);
static void mr_pg_read_go(mr_store_read_t *rd);
static void mr_pg_reads_wait(ngx_uint_t connect);
static void mr_pg_gather_handler(ngx_event_t *ev);
static void mr_pg_group_wait(mr_pg_group_t *g);
static void mr_pg_group_done(mr_pg_req_t *req);
static void mr_pg_read_again(mr_store_read_t *rd, int64_t now);
static void mr_pg_read_end(mr_store_read_t *rd);
static mr_pg_conn_t *mr_pg_reader(void);
static void mr_pg_read_done(mr_pg_req_t *req);
static void mr_pg_reads_flush(void);
static void mr_pg_op_reset(mr_store_op_t *op);


mr_pg_store_t  *mr_pg;

static mr_pg_store_t  mr_pg_store;


mr_pg_conf_t *
mr_pg_conf(void)
{
    return mr_pg_store.conf;
}


mr_main_conf_t *
mr_pg_main_conf(void)
{
    return mr_pg_store.mcf;
}


/* the configured routes, as a text array literal (their rows exist) */

const char *
mr_pg_routes_literal(void)
{
    return mr_pg_store.routes;
}


/* ---- a worker */

ngx_int_t
mr_store_pg_init_process(ngx_cycle_t *cycle, mr_main_conf_t *mcf)
{
    u_char        *p;
    ngx_uint_t     i;
    mr_route_t    *rt;
    mr_pg_buf_t    b;
    mr_pg_store_t *st;
    u_char         host[NGX_MAXHOSTNAMELEN];

    st = &mr_pg_store;
    ngx_memzero(st, sizeof(mr_pg_store_t));

    st->mcf = mcf;
    st->conf = mcf->pg;
    st->log = cycle->log;
    mr_pg = st;

    ngx_queue_init(&st->ops);
    ngx_queue_init(&st->reads);
    ngx_queue_init(&st->gather);

    /* the node's name, in its leases: the host and the node's directory */

    if (gethostname((char *) host, sizeof(host) - 1) != 0) {
        ngx_cpystrn(host, (u_char *) "localhost", sizeof(host));
    }

    host[sizeof(host) - 1] = '\0';

    st->node.data = ngx_pnalloc(cycle->pool, ngx_strlen(host) + 1
                                             + mcf->node_dir.len);
    if (st->node.data == NULL) {
        return NGX_ERROR;
    }

    p = ngx_sprintf(st->node.data, "%s:%V", host, &mcf->node_dir);
    st->node.len = p - st->node.data;

    mr_pg_buf_init(&b, cycle->pool);
    rt = mcf->routes.elts;

    for (i = 0; i < mcf->routes.nelts; i++) {
        mr_pg_buf_str(&b, rt[i].name.data, rt[i].name.len);
    }

    st->routes = mr_pg_buf_end(&b);
    if (st->routes == NULL) {
        return NGX_ERROR;
    }

    st->commit_ev.handler = mr_pg_commit_handler;
    st->commit_ev.log = cycle->log;
    st->commit_ev.data = &mr_timer_conn;

    st->wait_ev.handler = mr_pg_wait_handler;
    st->wait_ev.log = cycle->log;
    st->wait_ev.data = &mr_timer_conn;
    st->wait_ev.cancelable = 1;

    st->gather_ev.handler = mr_pg_gather_handler;
    st->gather_ev.log = cycle->log;
    st->gather_ev.data = &mr_timer_conn;

    /* not cancelable: a worker that shuts down waits for its batch */
    st->inflight_ev.handler = mr_pg_inflight_handler;
    st->inflight_ev.log = cycle->log;
    st->inflight_ev.data = &mr_timer_conn;

    st->nconns = ngx_max(mcf->pg_connections, 2);

    st->conns = ngx_pcalloc(cycle->pool, st->nconns * sizeof(mr_pg_conn_t *));
    if (st->conns == NULL) {
        return NGX_ERROR;
    }

    for (i = 0; i < st->nconns; i++) {
        st->conns[i] = mr_pg_conn_create(cycle, i, mr_pg_ready, st);
        if (st->conns[i] == NULL) {
            return NGX_ERROR;
        }
    }

    st->writer = st->conns[0];

    if (mr_pg_keys_init(cycle) != NGX_OK) {
        return NGX_ERROR;
    }

    for (i = 0; i < st->nconns; i++) {
        mr_pg_conn_connect(st->conns[i]);
    }

    return NGX_OK;
}


void
mr_store_pg_exit_process(ngx_cycle_t *cycle)
{
    ngx_uint_t      i;
    mr_pg_store_t  *st;

    st = &mr_pg_store;

    if (st->conns == NULL) {
        return;
    }

    if (st->commit_ev.posted) {
        ngx_delete_posted_event(&st->commit_ev);
    }

    if (st->gather_ev.posted) {
        ngx_delete_posted_event(&st->gather_ev);
    }

    if (st->wait_ev.timer_set) {
        ngx_del_timer(&st->wait_ev);
    }

    if (st->inflight_ev.timer_set) {
        ngx_del_timer(&st->inflight_ev);
    }

    st->exiting = 1;

    /* what still waits fails (a worker exits when nothing does) */

    mr_pg_fail_ops(1);
    mr_pg_reads_flush();
    mr_pg_gather_handler(&st->gather_ev);

    for (i = 0; i < st->nconns; i++) {
        mr_pg_conn_destroy(st->conns[i]);
    }

    st->conns = NULL;

    mr_pg_keys_free();
}


/* a connection is ready, or down: what waits for it goes, or fails */

static void
mr_pg_ready(mr_pg_conn_t *pc)
{
    mr_pg_store_t  *st;

    st = &mr_pg_store;

    if (st->exiting) {
        return;
    }

    if (pc == st->writer) {
        if (pc->state == MR_PG_READY) {
            if (st->busy && st->batch.phase == MR_PG_P_RESOLVE) {
                mr_pg_batch_resolve(&st->batch);

            } else if (!ngx_queue_empty(&st->ops) && !st->commit_ev.posted) {
                ngx_post_event(&st->commit_ev, &ngx_posted_events);
            }

        } else if (pc->unreachable) {
            mr_pg_fail_ops(0);
        }

        return;
    }

    if (pc->state == MR_PG_READY) {
        mr_pg_reads_flush();
        return;
    }

    if (mr_pg_reader() == NULL) {
        mr_pg_reads_flush();         /* every reader unreachable: 503 */
    }
}


/* ---- operations */

void
mr_store_pg_submit(mr_store_op_t *op)
{
    mr_pg_store_t  *st;

    st = &mr_pg_store;

    op->now = mr_now_ms();
    op->now_local = !mr_pg_clock_known();
    op->tries = 0;

    if (st->exiting) {
        op->result = MR_R_UNAVAILABLE;
        op->handler(op);
        return;
    }

    ngx_queue_insert_tail(&st->ops, &op->queue);

    mr_pg_hold();

    /*
     * failed on the next turn of the loop when the server is known to be
     * unreachable, even while a batch waits for it (one whose COMMIT's
     * outcome is looked up)
     */

    if ((!st->busy || mr_pg_writer_unreachable()) && !st->commit_ev.posted) {
        ngx_post_event(&st->commit_ev, &ngx_posted_events);
    }
}


static ngx_uint_t
mr_pg_writer_unreachable(void)
{
    return mr_pg_store.writer->state != MR_PG_READY
           && mr_pg_store.writer->unreachable;
}


static void
mr_pg_commit_handler(ngx_event_t *ev)
{
    mr_pg_store_t  *st;

    st = &mr_pg_store;

    if (ngx_queue_empty(&st->ops) || st->exiting) {
        return;
    }

    if (mr_pg_writer_unreachable()) {
        mr_pg_fail_ops(0);
        return;
    }

    if (st->busy) {
        return;
    }

    if (st->writer->state != MR_PG_READY) {

        /* it waits for the connection (or its time, or fails at once) */

        if (st->writer->unreachable) {
            mr_pg_fail_ops(0);
            return;
        }

        mr_pg_conn_connect(st->writer);

        if (!st->wait_ev.timer_set) {
            ngx_add_timer(&st->wait_ev, MR_PG_WAIT_TICK);
        }

        return;
    }

    mr_pg_batch_start();
}


/* the kind of batch an operation needs */

static ngx_uint_t
mr_pg_op_kind(mr_store_op_t *op)
{
    switch (op->type) {
    case MR_OP_DISP_CLAIM:
        return MR_PG_B_DISP_CLAIM;
    case MR_OP_DLV_CLAIM:
        return MR_PG_B_DLV_CLAIM;
    case MR_OP_SWEEP:
        return MR_PG_B_SWEEP;
    default:
        return MR_PG_B_OPS;
    }
}


static void
mr_pg_batch_start(void)
{
    ngx_uint_t      n, kind, alone;
    ngx_queue_t    *q;
    mr_pg_batch_t  *b;
    mr_pg_store_t  *st;
    mr_store_op_t  *op;

    st = &mr_pg_store;
    b = &st->batch;

    ngx_memzero(b, sizeof(mr_pg_batch_t));
    ngx_queue_init(&b->ops);

    q = ngx_queue_head(&st->ops);
    op = ngx_queue_data(q, mr_store_op_t, queue);

    kind = mr_pg_op_kind(op);
    alone = (kind != MR_PG_B_OPS || op->tries >= MR_PG_RETRIES);

    /* the operations that may go together, in order */

    for (n = 0; n < MR_PG_BATCH_MAX && !ngx_queue_empty(&st->ops); n++) {
        q = ngx_queue_head(&st->ops);
        op = ngx_queue_data(q, mr_store_op_t, queue);

        if (n && (alone || mr_pg_op_kind(op) != MR_PG_B_OPS
                  || op->tries >= MR_PG_RETRIES))
        {
            break;
        }

        ngx_queue_remove(q);
        ngx_queue_insert_tail(&b->ops, q);

        /* submitted before this worker knew the server's clock: its time
         * is the batch's (the writer's session read the clock) */

        if (op->now_local) {
            op->now = mr_now_ms();
            op->now_local = 0;
        }
    }

    b->n = n;
    b->kind = kind;
    b->alone = alone;

    b->pool = ngx_create_pool(16384, st->log);
    if (b->pool == NULL) {
        mr_pg_batch_finish(b, MR_R_INTERNAL);
        return;
    }

    b->rows = mr_pg_rows_create(b->pool);
    if (b->rows == NULL || RAND_bytes(b->id, sizeof(b->id)) != 1) {
        mr_pg_batch_finish(b, MR_R_INTERNAL);
        return;
    }

    b->rows->node = st->node;
    b->rows->deltas = mr_pg_batch_deltas(b);
    b->rows->route_deltas = (b->rows->deltas && mr_pg_batch_first(b));

    st->busy = 1;

    mr_pg_hold();

    if (kind == MR_PG_B_SWEEP) {
        op = ngx_queue_data(ngx_queue_head(&b->ops), mr_store_op_t, queue);
        mr_pg_sweep_begin(op);
    }

    mr_pg_batch_load(b);
}


/*
 * Whether the batch reads its accounts without a lock and changes them
 * by deltas at the end (MR_SQL_W_ACCOUNTS_DELTA), so that a busy account
 * is locked by one batch at a time only for its last round trip and its
 * COMMIT, not for the whole batch: a claim, or a batch of creates,
 * cancels and outcomes, made for the first time.  Every one of those
 * changes the account of each execution it touches (a hold, its release
 * and charge, the bytes of an attempt): locked from the first round
 * trip, a busy account held the claims and outcomes of every worker and
 * node to one batch at a time for all of their round trips.
 *
 * Their rules decide nothing on an account but a create's hold within
 * its balance and its use within the limits; those are checked again
 * there, and if an account no longer allows them, the batch is made
 * again with its accounts locked as read.  Operations that set an
 * account's fields (its limits, its rate, a new account, credits that
 * must not overflow) or change endpoints lock them as read: a batch
 * that changes by deltas writes nothing that another transaction may
 * lock after an account (mr_store_pg_sql.c).
 */

static ngx_uint_t
mr_pg_batch_deltas(mr_pg_batch_t *b)
{
    ngx_uint_t      n;
    ngx_queue_t    *q;
    mr_store_op_t  *op;

    n = 0;

    for (q = ngx_queue_head(&b->ops);
         q != ngx_queue_sentinel(&b->ops);
         q = ngx_queue_next(q))
    {
        op = ngx_queue_data(q, mr_store_op_t, queue);

        if (op->tries) {
            return 0;
        }

        switch (op->type) {

        case MR_OP_DISP_CLAIM:
        case MR_OP_DLV_CLAIM:
        case MR_OP_EXEC_CREATE:
        case MR_OP_EXEC_CANCEL:
        case MR_OP_DISP_DONE:
        case MR_OP_DISP_CALLBACK:
            n++;
            break;

        case MR_OP_OPS:
            if (op->ops.kind != MR_STORE_OPS_HEARTBEAT) {
                return 0;
            }

            break;

        default:
            return 0;
        }
    }

    return n > 0;
}


/*
 * Whether the batch reads its routes without a lock and changes them by
 * deltas at the end (MR_SQL_W_ROUTES_DELTA): a dispatch claim or a batch
 * of operations, made for the first time.  Every claim and every outcome
 * of every worker changes the route it dispatches to: locked from the
 * first round trip, the route held them to one batch at a time for all
 * of their round trips.  What the rules decided on a route (a slot
 * within its cap, the fields of its breaker they changed) is checked
 * again there; if it no longer allows it, the batch is made again with
 * its routes locked first.  A batch that locks deliveries, or its
 * accounts, still locks its routes as it reads them (mr_pg_ops_load()):
 * routes are locked before accounts, in every transaction.
 */

static ngx_uint_t
mr_pg_batch_first(mr_pg_batch_t *b)
{
    ngx_queue_t    *q;
    mr_store_op_t  *op;

    if (b->kind != MR_PG_B_OPS && b->kind != MR_PG_B_DISP_CLAIM) {
        return 0;
    }

    for (q = ngx_queue_head(&b->ops);
         q != ngx_queue_sentinel(&b->ops);
         q = ngx_queue_next(q))
    {
        op = ngx_queue_data(q, mr_store_op_t, queue);

        if (op->tries) {
            return 0;
        }
    }

    return 1;
}


/*
 * The first round trip: the candidates of a claim or a sweep step (no
 * transaction), or BEGIN and the loads of the operations
 */

static void
mr_pg_batch_load(mr_pg_batch_t *b)
{
    ngx_int_t       rc;
    mr_pg_req_t    *req;
    mr_pg_store_t  *st;

    st = &mr_pg_store;

    req = mr_pg_req_create(b->pool, 64);
    if (req == NULL) {
        mr_pg_batch_finish(b, MR_R_INTERNAL);
        return;
    }

    req->conn = st->writer;
    b->req = req;

    mr_pg_op_reset_all(b);

    if (b->kind != MR_PG_B_OPS && b->phase != MR_PG_P_LOAD) {
        b->phase = MR_PG_P_CAND;

        rc = mr_pg_ops_candidates(b, req);

        if (rc == NGX_DECLINED) {
            /* a sweep whose steps are all done, or one with nothing */
            mr_pg_batch_finish(b, MR_R_OK);
            return;
        }

        if (rc != NGX_OK) {
            mr_pg_abandon(req);

        } else if (mr_pg_req_end(st->writer, req, mr_pg_batch_cand_done, b)
                   == NGX_OK)
        {
            return;
        }

        mr_pg_batch_again(b, 0);
        return;
    }

    b->phase = MR_PG_P_LOAD;

    rc = mr_pg_ops_load(b, req);

    if (rc == NGX_DECLINED) {
        /* nothing to load: each operation was answered already */
        mr_pg_batch_finish(b, MR_R_OK);
        return;
    }

    if (rc != NGX_OK) {
        mr_pg_abandon(req);

    } else if (mr_pg_req_end(st->writer, req, mr_pg_batch_load_done, b)
               == NGX_OK)
    {
        return;
    }

    mr_pg_batch_again(b, 0);
}


static void
mr_pg_batch_cand_done(mr_pg_req_t *req)
{
    ngx_int_t       rc;
    mr_pg_batch_t  *b;

    b = req->data;

    if (req->status != MR_PG_REQ_OK) {
        mr_pg_batch_failed(b, req);
        return;
    }

    rc = mr_pg_ops_candidates_done(b, req);

    mr_pg_req_free(req);

    if (rc == NGX_DECLINED) {
        /* no candidate: the claim took nothing, the step had nothing */
        mr_pg_batch_next(b);
        return;
    }

    if (rc != NGX_OK) {
        mr_pg_batch_finish(b, MR_R_INTERNAL);
        return;
    }

    b->phase = MR_PG_P_LOAD;

    mr_pg_batch_load(b);
}


/* the rows are in: the rules run, the writes and COMMIT go */

static void
mr_pg_batch_load_done(mr_pg_req_t *req)
{
    ngx_int_t       rc;
    mr_pg_batch_t  *b;
    mr_pg_store_t  *st;
    mr_store_op_t  *op;
    const char     *v[1];
    u_char          hex[2 * 16 + 5];

    b = req->data;
    st = &mr_pg_store;

    if (req->status != MR_PG_REQ_OK) {
        mr_pg_batch_failed(b, req);
        return;
    }

    mr_metrics_txn_begin();

    rc = mr_pg_ops_apply(b, req);

    mr_pg_req_free(req);

    if (rc != NGX_OK) {

        /* an operation that could not be applied: as a statement error */

        mr_metrics_txn_end(1, &b->ops, NULL);
        mr_pg_rollback(st->writer);

        if (b->kind == MR_PG_B_SWEEP) {
            op = ngx_queue_data(ngx_queue_head(&b->ops), mr_store_op_t,
                                queue);
            op->failed++;
            mr_pg_batch_next(b);
            return;
        }

        if (b->alone) {
            mr_pg_batch_finish(b, MR_R_INTERNAL);
            return;
        }

        mr_pg_batch_again(b, MR_PG_AGAIN_ALONE);
        return;
    }

    req = mr_pg_req_create(b->pool, mr_pg_rows_writes(b->rows) + 4);
    if (req == NULL) {
        mr_metrics_txn_end(1, &b->ops, NULL);
        mr_pg_rollback(st->writer);
        mr_pg_batch_again(b, 0);
        return;
    }

    req->conn = st->writer;
    b->req = req;
    b->phase = MR_PG_P_COMMIT;

    rc = mr_pg_rows_write(b->rows, req);

    b->wrote = (req->n > 0 || b->heartbeat);

    if (rc == NGX_OK && b->heartbeat) {
        rc = mr_pg_send_heartbeat(req, b);
    }

    if (rc == NGX_OK && b->wrote) {

        /* the batch's id: its outcome can be looked up */

        mr_pg_batch_uuid(b, hex);
        v[0] = (char *) hex;

        rc = mr_pg_send(req, MR_SQL_W_BATCH, 1, v, NULL);
    }

    if (rc == NGX_OK) {
        rc = mr_pg_send(req, MR_SQL_COMMIT, 0, NULL, NULL);
    }

    if (rc != NGX_OK) {
        mr_pg_abandon(req);

    } else if (mr_pg_req_end(st->writer, req, mr_pg_batch_commit_done, b)
               == NGX_OK)
    {
        return;
    }

    /* not sent: nothing was committed (the transaction ends with its
     * connection) */

    mr_metrics_txn_end(1, &b->ops, NULL);
    mr_pg_batch_again(b, 0);
}


static void
mr_pg_batch_commit_done(mr_pg_req_t *req)
{
    mr_pg_batch_t  *b;

    b = req->data;

    if (req->status == MR_PG_REQ_OK) {
        mr_pg_req_free(req);
        mr_metrics_txn_end(0, &b->ops, NULL);
        mr_pg_batch_next(b);
        return;
    }

    if (req->status == MR_PG_REQ_LOST && b->wrote) {

        /* was it committed?  asked on the next connection */

        ngx_log_error(NGX_LOG_WARN, mr_pg_store.log, 0,
                      "modelroute_store: PostgreSQL: the connection was "
                      "lost with the COMMIT of %ui operations in flight; "
                      "its outcome is looked up", b->n);

        mr_pg_req_free(req);
        b->phase = MR_PG_P_RESOLVE;
        b->resolve_until = mr_local_ms() + mr_pg_store.mcf->pg_timeout * 3;

        if (mr_pg_store.writer->state == MR_PG_READY) {
            mr_pg_batch_resolve(b);
        }

        if (!mr_pg_store.wait_ev.timer_set) {
            ngx_add_timer(&mr_pg_store.wait_ev, MR_PG_WAIT_TICK);
        }

        return;
    }

    if (req->status == MR_PG_REQ_LOST) {
        /* nothing was written: its outcome stands as if committed */
        mr_pg_req_free(req);
        mr_metrics_txn_end(0, &b->ops, NULL);
        mr_pg_batch_next(b);
        return;
    }

    if (b->rows && (b->rows->deltas || b->rows->route_deltas)
        && ngx_strcmp(req->sqlstate, "MR001") == 0)
    {
        mr_metrics_txn_discard();     /* made again at once, locked */

    } else {
        mr_metrics_txn_end(1, &b->ops, NULL);
    }

    mr_pg_batch_failed(b, req);
}


/* the outcome of a batch whose COMMIT got no answer */

static void
mr_pg_batch_resolve(mr_pg_batch_t *b)
{
    mr_pg_req_t    *req;
    mr_pg_store_t  *st;
    const char     *v[1];
    u_char          hex[2 * 16 + 5];

    st = &mr_pg_store;

    req = mr_pg_req_create(b->pool, 2);
    if (req == NULL) {
        return;                       /* the wait handler tries again */
    }

    req->conn = st->writer;

    v[0] = mr_pg_int(b->pool, mr_pg_batch_lock_key(b));

    if (v[0] == NULL) {
        return;
    }

    mr_pg_batch_uuid(b, hex);

    if (mr_pg_send(req, MR_SQL_BATCH_LOCK, 1, v, NULL) != NGX_OK) {
        mr_pg_abandon(req);
        return;
    }

    v[0] = (char *) hex;

    if (mr_pg_send(req, MR_SQL_BATCH_DONE, 1, v, NULL) != NGX_OK) {
        mr_pg_abandon(req);
        return;
    }

    b->resolving = 1;

    if (mr_pg_req_end(st->writer, req, mr_pg_batch_resolve_done, b)
        != NGX_OK)
    {
        b->resolving = 0;
    }
}


static void
mr_pg_batch_resolve_done(mr_pg_req_t *req)
{
    ngx_uint_t      committed;
    mr_pg_batch_t  *b;

    b = req->data;
    b->resolving = 0;

    if (req->status != MR_PG_REQ_OK) {
        mr_pg_req_free(req);
        return;                       /* again on the next connection */
    }

    committed = (PQntuples(req->res[1]) == 1);

    mr_pg_req_free(req);

    ngx_log_error(NGX_LOG_NOTICE, mr_pg_store.log, 0,
                  "modelroute_store: PostgreSQL: the batch of %ui "
                  "operations %s", b->n,
                  committed ? "was committed" : "was not committed: "
                  "it is made again");

    if (committed) {
        mr_metrics_txn_end(0, &b->ops, NULL);
        mr_pg_batch_next(b);
        return;
    }

    mr_metrics_txn_end(1, &b->ops, NULL);
    mr_pg_batch_again(b, 0);
}


/*
 * A request of the batch failed: lost (nothing committed: the batch is
 * made again when the connection is back), or a statement failed (rolled
 * back: made again, a deadlock as it was, anything else one operation
 * at a time)
 */

static void
mr_pg_batch_failed(mr_pg_batch_t *b, mr_pg_req_t *req)
{
    ngx_uint_t      retry, level;
    const char     *state;
    mr_store_op_t  *op;

    if (req->status == MR_PG_REQ_LOST) {
        mr_pg_req_free(req);
        mr_pg_batch_again(b, 0);
        return;
    }

    state = req->sqlstate;

    if (b->rows && (b->rows->deltas || b->rows->route_deltas)
        && ngx_strcmp(state, "MR001") == 0)
    {
        /*
         * a batch that an account or a route no longer allows (another
         * batch took its balance, its room, the route's slots, or changed
         * its breaker since it was read): made again, locked first
         */

        ngx_log_debug1(NGX_LOG_DEBUG_HTTP, mr_pg_store.log, 0,
                       "modelroute_store: PostgreSQL: a batch of %ui "
                       "operations is made again, locked", b->n);

        mr_pg_req_free(req);
        mr_pg_rollback(mr_pg_store.writer);
        mr_pg_batch_again(b, MR_PG_AGAIN_LOCKED);
        return;
    }

    retry = (ngx_strcmp(state, "40P01") == 0          /* deadlock */
             || ngx_strcmp(state, "40001") == 0       /* serialization */
             || ngx_strcmp(state, "55P03") == 0);     /* lock not available */

    if (!retry || b->tries >= MR_PG_RETRIES) {
        level = b->alone ? NGX_LOG_ERR : NGX_LOG_WARN;

        ngx_log_error(level, mr_pg_store.log, 0,
                      "modelroute_store: PostgreSQL: a batch of %ui "
                      "operations failed: %s%s", b->n, req->error,
                      b->alone ? "" : " (each is made again alone)");
    }

    mr_pg_req_free(req);

    mr_pg_rollback(mr_pg_store.writer);

    if (retry && b->tries < MR_PG_RETRIES) {
        b->tries++;
        mr_pg_batch_again(b, MR_PG_AGAIN_RETRY);
        return;
    }

    if (b->kind == MR_PG_B_SWEEP) {
        /* the step is given up; the next ones still run */
        op = ngx_queue_data(ngx_queue_head(&b->ops), mr_store_op_t, queue);
        op->failed++;
        mr_pg_batch_next(b);
        return;
    }

    if (b->alone) {
        mr_pg_batch_finish(b, MR_R_INTERNAL);
        return;
    }

    mr_pg_batch_again(b, MR_PG_AGAIN_ALONE);
}


/*
 * The batch's operations go back to the head of the queue, to be made
 * again (how: MR_PG_AGAIN*); what waited too long fails
 */

static void
mr_pg_batch_again(mr_pg_batch_t *b, ngx_uint_t how)
{
    ngx_queue_t    *q;
    mr_pg_store_t  *st;
    mr_store_op_t  *op;

    st = &mr_pg_store;

    while (!ngx_queue_empty(&b->ops)) {
        q = ngx_queue_last(&b->ops);
        ngx_queue_remove(q);

        op = ngx_queue_data(q, mr_store_op_t, queue);
        mr_pg_op_reset(op);

        switch (how) {

        case MR_PG_AGAIN_ALONE:
            op->tries = MR_PG_RETRIES;
            break;

        case MR_PG_AGAIN_LOCKED:
            op->tries = ngx_max(op->tries, 1);
            break;

        case MR_PG_AGAIN_RETRY:
            op->tries = ngx_min(op->tries + 1, MR_PG_RETRIES);
            break;
        }

        ngx_queue_insert_head(&st->ops, q);
    }

    b->n = 0;

    mr_pg_batch_end(b);

    if (st->writer->state != MR_PG_READY && st->writer->unreachable) {
        mr_pg_fail_ops(0);
        return;
    }

    if (!ngx_queue_empty(&st->ops) && !st->commit_ev.posted) {
        ngx_post_event(&st->commit_ev, &ngx_posted_events);
    }
}


/* a claim or a step of the sweep is done: the next step, or the end */

void
mr_pg_batch_next(mr_pg_batch_t *b)
{
    mr_store_op_t  *op;

    if (b->kind == MR_PG_B_SWEEP) {
        op = ngx_queue_data(ngx_queue_head(&b->ops), mr_store_op_t, queue);

        if (mr_pg_sweep_next(b, op) == NGX_OK) {

            /*
             * the next step: a transaction of its own, with an id of its
             * own (in mr_batches, and for the look-up of its outcome)
             */

            ngx_reset_pool(b->pool);

            b->rows = mr_pg_rows_create(b->pool);
            if (b->rows == NULL || RAND_bytes(b->id, sizeof(b->id)) != 1) {
                mr_pg_batch_finish(b, MR_R_INTERNAL);
                return;
            }

            b->rows->node = mr_pg_store.node;
            b->phase = 0;
            b->tries = 0;

            mr_pg_batch_load(b);
            return;
        }
    }

    mr_pg_batch_finish(b, MR_R_OK);
}


/*
 * The batch ends: its operations' handlers run (result: the outcome of
 * those that have none of their own yet)
 */

static void
mr_pg_batch_finish(mr_pg_batch_t *b, ngx_uint_t result)
{
    ngx_uint_t      emitted, ready;
    ngx_queue_t    *q;
    mr_store_op_t  *op;

    emitted = 0;
    ready = 0;

    while (!ngx_queue_empty(&b->ops)) {
        q = ngx_queue_head(&b->ops);
        ngx_queue_remove(q);

        op = ngx_queue_data(q, mr_store_op_t, queue);

        if (result != MR_R_OK) {
            mr_pg_op_reset(op);
            op->result = result;
        }

        if (op->emitted && op->result == MR_R_OK) {
            emitted = 1;
        }

        if (op->ready && op->type != MR_OP_DISP_CLAIM) {
            ready = 1;
        }

        /* what this worker changed of keys is not taken from its cache */

        if (op->type == MR_OP_KEY_REVOKE || op->type == MR_OP_KEY_ROTATE
            || (op->type == MR_OP_OPS
                && op->ops.kind != MR_STORE_OPS_HEARTBEAT))
        {
            mr_pg_keys_forget();
        }

        mr_metrics_op_done(op);

        op->handler(op);
    }

    mr_pg_batch_end(b);

    if (emitted && mr_store_deliveries_hook) {
        mr_store_deliveries_hook();
    }

    if (ready && mr_store_dispatch_hook) {
        mr_store_dispatch_hook();
    }

    if (!ngx_queue_empty(&mr_pg_store.ops) && !mr_pg_store.commit_ev.posted)
    {
        ngx_post_event(&mr_pg_store.commit_ev, &ngx_posted_events);
    }
}


static void
mr_pg_batch_end(mr_pg_batch_t *b)
{
    mr_pg_store_t  *st;

    st = &mr_pg_store;

    if (b->pool) {
        ngx_destroy_pool(b->pool);
        b->pool = NULL;
    }

    st->busy = 0;

    mr_pg_hold();
}


/*
 * While a batch, an operation or a read waits for PostgreSQL, a timer
 * that is not cancelable: a worker that shuts down waits for them (their
 * requests are answered), and for no more than their timeouts
 */

void
mr_pg_hold(void)
{
    mr_pg_store_t  *st;

    st = &mr_pg_store;

    if (st->busy || st->nreads || !ngx_queue_empty(&st->ops)) {
        if (!st->inflight_ev.timer_set && !st->exiting) {
            ngx_add_timer(&st->inflight_ev, 3 * st->mcf->pg_timeout);
        }

        return;
    }

    if (st->inflight_ev.timer_set) {
        ngx_del_timer(&st->inflight_ev);
    }
}


/*
 * A request given up while it was made: statements of it may wait in
 * libpq without their sync, a transaction may be open; the next request
 * would take their results for its own, and commit what they wrote.  The
 * connection is made again instead: the server forgets them.
 */

static void
mr_pg_abandon(mr_pg_req_t *req)
{
    req->status = MR_PG_REQ_LOST;

    (void) mr_pg_req_end(req->conn, req, NULL, NULL);
}


/* a transaction that failed in the middle is ended (its result unused) */

static void
mr_pg_rollback(mr_pg_conn_t *pc)
{
    mr_pg_req_t  *req;

    if (pc->state != MR_PG_READY) {
        return;
    }

    req = ngx_alloc(sizeof(mr_pg_req_t) + sizeof(PGresult *), pc->log);
    if (req == NULL) {
        mr_pg_conn_close(pc, 1);
        return;
    }

    ngx_memzero(req, sizeof(mr_pg_req_t) + sizeof(PGresult *));
    req->res = (PGresult **) (req + 1);
    req->size = 1;
    req->conn = pc;

    if (mr_pg_send(req, MR_SQL_ROLLBACK, 0, NULL, NULL) != NGX_OK
        || mr_pg_req_end(pc, req, mr_pg_rollback_done, NULL) != NGX_OK)
    {
        ngx_free(req);
    }
}


static void
mr_pg_rollback_done(mr_pg_req_t *req)
{
    mr_pg_req_free(req);
    ngx_free(req);
}


/* an operation about to be made again: as if it had not been */

static void
mr_pg_op_reset(mr_store_op_t *op)
{
    mr_dlv_job_t   *job;
    mr_disp_job_t  *djob;

    op->result = MR_R_OK;
    op->emitted = 0;
    op->ready = 0;
    op->full = 0;
    op->disp.claimed = 0;
    op->disp.more = 0;
    op->disp.rescan = 0;
    op->disp.next_known = 0;
    op->wh.claimed = 0;

    while (op->disp.jobs) {
        djob = op->disp.jobs;
        op->disp.jobs = djob->next;
        ngx_free(djob);
    }

    while (op->wh.jobs) {
        job = op->wh.jobs;
        op->wh.jobs = job->next;
        ngx_free(job);
    }
}


void
mr_pg_op_reset_all(mr_pg_batch_t *b)
{
    ngx_queue_t    *q;
    mr_store_op_t  *op;

    if (b->kind == MR_PG_B_SWEEP) {
        return;                       /* its counts go on over its steps */
    }

    for (q = ngx_queue_head(&b->ops);
         q != ngx_queue_sentinel(&b->ops);
         q = ngx_queue_next(q))
    {
        op = ngx_queue_data(q, mr_store_op_t, queue);
        mr_pg_op_reset(op);
    }
}


/* ---- time: what waits for PostgreSQL waits this long at most */

static void
mr_pg_wait_handler(ngx_event_t *ev)
{
    int64_t         now;
    ngx_queue_t    *q;
    mr_pg_store_t  *st;
    mr_pg_batch_t  *b;

    st = &mr_pg_store;
    now = mr_local_ms();    /* waits: on this machine's clock */
    b = &st->batch;

    if (st->busy && b->phase == MR_PG_P_RESOLVE) {

        if (now >= b->resolve_until) {

            /* its outcome is still unknown: 503, nothing claimed */

            ngx_log_error(NGX_LOG_ERR, st->log, 0,
                          "modelroute_store: PostgreSQL: the outcome of a "
                          "batch of %ui operations is unknown: each is "
                          "answered \"unavailable\"", b->n);
            mr_pg_batch_finish(b, MR_R_UNAVAILABLE);

        } else if (!b->resolving && st->writer->state == MR_PG_READY) {
            mr_pg_batch_resolve(b);
        }
    }

    mr_pg_fail_ops(0);

    /* reads that wait for a reader */

    while (!ngx_queue_empty(&st->reads)) {
        q = ngx_queue_head(&st->reads);

        if (mr_pg_read_waited(q, now) == NGX_DECLINED) {
            break;
        }
    }

    if ((!ngx_queue_empty(&st->ops) && st->writer->state != MR_PG_READY)
        || !ngx_queue_empty(&st->reads)
        || (st->busy && b->phase == MR_PG_P_RESOLVE))
    {
        ngx_add_timer(ev, MR_PG_WAIT_TICK);
    }
}


/*
 * The queued operations fail: those that waited their time (all: every
 * one) while the batch connection is not ready, or all of them once it is
 * known to be unreachable
 */

static void
mr_pg_fail_ops(ngx_uint_t all)
{
    int64_t         now, local;
    ngx_queue_t    *q, *next;
    mr_pg_store_t  *st;
    mr_store_op_t  *op;

    st = &mr_pg_store;

    if (st->writer->state == MR_PG_READY && !st->exiting) {
        return;
    }

    now = mr_now_ms();
    local = mr_local_ms();
    all = all || st->writer->unreachable || st->exiting;

    for (q = ngx_queue_head(&st->ops);
         q != ngx_queue_sentinel(&st->ops);
         q = next)
    {
        next = ngx_queue_next(q);
        op = ngx_queue_data(q, mr_store_op_t, queue);

        /* how long it waited (its time was this machine's if it came
         * before the server's clock was known) */

        if (!all && (op->now_local ? local : now) - op->now
                    < (int64_t) st->mcf->pg_timeout)
        {
            continue;
        }

        ngx_queue_remove(q);

        mr_pg_op_reset(op);
        op->result = MR_R_UNAVAILABLE;

        op->handler(op);

        mr_pg_hold();

        /* a handler may submit: from the start */
        next = ngx_queue_head(&st->ops);
    }
}


static void
mr_pg_inflight_handler(ngx_event_t *ev)
{
    ngx_log_error(NGX_LOG_WARN, ev->log, 0,
                  "modelroute_store: PostgreSQL: a batch has been in "
                  "flight for %M ms", 3 * mr_pg_store.mcf->pg_timeout);

    ngx_add_timer(ev, 3 * mr_pg_store.mcf->pg_timeout);
}


/* ---- reads */

ngx_int_t
mr_store_pg_read(mr_store_read_t *rd)
{
    mr_pg_store_t  *st;

    st = &mr_pg_store;

    rd->rc = NGX_OK;

    /* the node's own secret is a local file */

    if (rd->type == MR_READ_META && ngx_strcmp(rd->name, "dsecret") == 0) {
        rd->rc = mr_store_pg_node_secret(st->conf, rd->raw);
        return NGX_OK;
    }

    /* a key this worker read a moment ago (modelroute_key_cache) */

    if (rd->type == MR_READ_AUTH && mr_pg_keys_cached(rd) == NGX_OK) {
        return NGX_OK;
    }

    if (mr_pg_reader() == NULL) {
        if (mr_pg_readers_unreachable()) {
            rd->rc = NGX_BUSY;
            return NGX_OK;
        }
    }

    if (st->exiting) {
        rd->rc = NGX_BUSY;
        return NGX_OK;
    }

    if (mr_pg_read_create(rd) != NGX_OK) {
        rd->rc = NGX_ERROR;
        return NGX_OK;
    }

    st->nreads++;
    mr_pg_hold();

    mr_pg_read_start(rd);

    return NGX_AGAIN;
}


/* a reader that is ready, in turn; NULL: none */

static mr_pg_conn_t *
mr_pg_reader(void)
{
    ngx_uint_t      i, n;
    mr_pg_conn_t   *pc;
    mr_pg_store_t  *st;

    st = &mr_pg_store;

    for (n = 1; n < st->nconns; n++) {
        i = 1 + (st->next_reader++ % (st->nconns - 1));
        pc = st->conns[i];

        /* not one found broken while a request was sent on it */

        if (pc->state == MR_PG_READY && !pc->lost_ev.posted) {
            return pc;
        }
    }

    return NULL;
}


ngx_uint_t
mr_pg_readers_unreachable(void)
{
    ngx_uint_t      i;
    mr_pg_store_t  *st;

    st = &mr_pg_store;

    for (i = 1; i < st->nconns; i++) {
        if (!st->conns[i]->unreachable) {
            return 0;
        }

        mr_pg_conn_connect(st->conns[i]);
    }

    return 1;
}


/*
 * A read goes to a reader, or waits for one.  A read of a key or of an
 * execution waits for the end of this turn of the event loop, where the
 * reads of its kind that came in this turn go together
 * (mr_pg_gather_handler()).
 */

static void
mr_pg_read_start(mr_store_read_t *rd)
{
    mr_pg_store_t  *st;

    st = &mr_pg_store;

    if (st->exiting) {
        mr_pg_read_answer(rd, NGX_BUSY);
        return;
    }

    if (mr_pg_read_groups(rd)) {
        ngx_queue_insert_tail(&st->gather, &rd->queue);

        if (!st->gather_ev.posted) {
            ngx_post_event(&st->gather_ev, &ngx_posted_events);
        }

        return;
    }

    mr_pg_read_go(rd);
}


static void
mr_pg_read_go(mr_store_read_t *rd)
{
    mr_pg_conn_t  *pc;

    pc = mr_pg_reader();

    if (pc == NULL || mr_pg_read_send(pc, rd, mr_pg_read_done) != NGX_OK) {
        mr_pg_read_wait(rd);
        mr_pg_reads_wait(pc == NULL);
    }
}


/* reads wait for a reader: connected again if none is ready */

static void
mr_pg_reads_wait(ngx_uint_t connect)
{
    ngx_uint_t      i;
    mr_pg_store_t  *st;

    st = &mr_pg_store;

    if (connect) {
        for (i = 1; i < st->nconns; i++) {
            mr_pg_conn_connect(st->conns[i]);
        }
    }

    if (!st->wait_ev.timer_set) {
        ngx_add_timer(&st->wait_ev, MR_PG_WAIT_TICK);
    }
}


/*
 * the reads of this turn: by kind, up to MR_PG_GROUP_MAX a statement; one
 * of its kind alone goes alone (and so does each of a group for which no
 * memory was had)
 */

static void
mr_pg_gather_handler(ngx_event_t *ev)
{
    ngx_uint_t        i, n;
    ngx_pool_t       *pool;
    ngx_queue_t      *q, *next;
    mr_pg_conn_t     *pc;
    mr_pg_group_t    *g;
    mr_pg_store_t    *st;
    mr_store_read_t  *rd, *one[MR_PG_GROUP_MAX];

    st = &mr_pg_store;

    while (!ngx_queue_empty(&st->gather)) {
        rd = ngx_queue_data(ngx_queue_head(&st->gather), mr_store_read_t,
                            queue);
        n = 0;

        for (q = ngx_queue_head(&st->gather);
             q != ngx_queue_sentinel(&st->gather) && n < MR_PG_GROUP_MAX;
             q = next)
        {
            next = ngx_queue_next(q);
            one[n] = ngx_queue_data(q, mr_store_read_t, queue);

            if (one[n]->type == rd->type && one[n]->parts == rd->parts) {
                ngx_queue_remove(q);
                n++;
            }
        }

        if (st->exiting) {
            for (i = 0; i < n; i++) {
                mr_pg_read_answer(one[i], NGX_BUSY);
            }

            continue;
        }

        pool = (n > 1) ? ngx_create_pool(4096, st->log) : NULL;
        g = pool ? ngx_palloc(pool, sizeof(mr_pg_group_t)) : NULL;

        if (g == NULL) {
            if (pool) {
                ngx_destroy_pool(pool);
            }

            for (i = 0; i < n; i++) {
                mr_pg_read_go(one[i]);
            }

            continue;
        }

        g->pool = pool;
        g->type = rd->type;
        g->parts = rd->parts;
        g->n = n;
        ngx_memcpy(g->rd, one, n * sizeof(mr_store_read_t *));

        pc = mr_pg_reader();

        if (pc == NULL || mr_pg_group_send(pc, g, mr_pg_group_done) != NGX_OK)
        {
            mr_pg_group_wait(g);
            mr_pg_reads_wait(pc == NULL);
        }
    }
}


/* a group's reads wait for a reader, each alone again */

static void
mr_pg_group_wait(mr_pg_group_t *g)
{
    ngx_uint_t  i;

    for (i = 0; i < g->n; i++) {
        mr_pg_read_wait(g->rd[i]);
    }

    ngx_destroy_pool(g->pool);
}


/* a group's results: each read answered; lost with its connection, again */

static void
mr_pg_group_done(mr_pg_req_t *req)
{
    int64_t         now;
    ngx_uint_t      i;
    mr_pg_group_t  *g;

    g = req->data;

    if (req->status == MR_PG_REQ_LOST) {
        mr_pg_req_free(req);
        now = mr_local_ms();

        for (i = 0; i < g->n; i++) {
            mr_pg_read_again(g->rd[i], now);
        }

        ngx_destroy_pool(g->pool);
        return;
    }

    if (req->status == MR_PG_REQ_FAILED) {
        ngx_log_error(NGX_LOG_ERR, mr_pg_store.log, 0,
                      "modelroute_store: reading %ui of %s: %s",
                      g->n, mr_pg_read_name(g->rd[0]), req->error);

        for (i = 0; i < g->n; i++) {
            g->rd[i]->rc = NGX_ERROR;
        }

    } else {
        mr_pg_group_parse(g, req);
    }

    mr_pg_req_free(req);

    for (i = 0; i < g->n; i++) {
        mr_pg_read_end(g->rd[i]);
    }

    ngx_destroy_pool(g->pool);
}


/* a read lost with its connection: again, or 503 if it waited its time */

static void
mr_pg_read_again(mr_store_read_t *rd, int64_t now)
{
    if (mr_pg_read_expired(rd, now)) {
        mr_pg_read_answer(rd, NGX_BUSY);
        return;
    }

    mr_pg_read_start(rd);
}


/* a read parsed (rd->rc) is answered; a key found is kept a while */

static void
mr_pg_read_end(mr_store_read_t *rd)
{
    if (rd->type == MR_READ_AUTH && rd->rc == NGX_OK) {
        mr_pg_keys_keep(rd);
    }

    mr_pg_read_answer(rd, rd->rc);
}


/* a read's results: parsed, or, lost with its connection, again */

static void
mr_pg_read_done(mr_pg_req_t *req)
{
    mr_store_read_t  *rd;

    rd = req->data;

    if (req->status == MR_PG_REQ_LOST) {
        mr_pg_req_free(req);
        mr_pg_read_again(rd, mr_local_ms());
        return;
    }

    if (req->status == MR_PG_REQ_FAILED) {
        ngx_log_error(NGX_LOG_ERR, mr_pg_store.log, 0,
                      "modelroute_store: reading %s: %s",
                      mr_pg_read_name(rd), req->error);
        mr_pg_req_free(req);
        mr_pg_read_answer(rd, NGX_ERROR);
        return;
    }

    rd->rc = mr_pg_read_parse(rd, req);

    mr_pg_req_free(req);

    mr_pg_read_end(rd);
}


/* the reads that waited for a reader go, or fail if none can be had */

static void
mr_pg_reads_flush(void)
{
    ngx_queue_t      all, *q;
    mr_store_read_t  *rd;
    mr_pg_store_t    *st;

    st = &mr_pg_store;

    if (ngx_queue_empty(&st->reads)) {
        return;
    }

    all = st->reads;
    all.next->prev = &all;
    all.prev->next = &all;
    ngx_queue_init(&st->reads);

    while (!ngx_queue_empty(&all)) {
        q = ngx_queue_head(&all);
        ngx_queue_remove(q);

        rd = ngx_queue_data(q, mr_store_read_t, queue);

        if (st->exiting
            || (mr_pg_reader() == NULL && mr_pg_readers_unreachable()))
        {
            mr_pg_read_answer(rd, NGX_BUSY);
            continue;
        }

        mr_pg_read_start(rd);
    }
}
