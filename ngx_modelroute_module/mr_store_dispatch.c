
/*
 * ModelRoute: dispatch in the store.
 *
 * The dispatch index ("disp": be64 due ms + execution id) holds every
 * execution that has something to do: a PENDING one is due at once, a
 * PROCESSING one waiting for its next attempt is due at the end of its
 * backoff, and one whose attempt is in flight is due at the end of its
 * lease.  A claim takes due entries, picks a route (breaker, Retry-After,
 * concurrency cap), writes a lease (a random token and its end) and moves
 * the entry to the end of the lease: if the worker dies, the execution is
 * due again then, its attempt is recorded as abandoned and another
 * attempt is made.  An outcome is recorded only with the token of the
 * lease it answers: late answers are dropped.  An attempt still in flight
 * when its execution is cancelled or expires is recorded then (cancelled,
 * abandoned): every request a provider may have got is in the attempts.
 * An execution that no route can take before its expires_at (every one
 * open, or paused by a Retry-After past it) fails at once.
 *
 * Routes' shared state ("route": name -> mr_route_state_t) counts the
 * leases in flight and carries the circuit breaker; it changes in the
 * transactions that change the leases, so it cannot drift.
 *
 * These functions may run in a thread of the commit pool: they use
 * malloc'ed memory, nothing of the event loop.
 */


#include <ngx_config.h>
#include <ngx_core.h>

#include <openssl/rand.h>
#include <jansson.h>

#include "mr_store.h"
#include "mr_store_lmdb.h"
#include "mr_metrics.h"


#define MR_DISP_SCAN_MAX     4096    /* due entries looked at per claim */
#define MR_DISP_LEASE_PAD    2000    /* lease = attempt timeout + this */
#define MR_DISP_BACKOFF      250     /* first backoff, doubled per round */
#define MR_DISP_BACKOFF_MAX  30000
#define MR_DISP_KEY_LEN      (8 + MR_EXEC_ID_LEN)


typedef struct {
    mr_route_state_t          st;
    mr_route_t               *route;
} mr_disp_route_t;


static int mr_store_disp_claim(MDB_txn *txn, mr_store_op_t *op);
static int mr_store_disp_claim_one(MDB_txn *txn, mr_store_op_t *op,
    mr_exec_t *exec, ngx_uint_t *claimed, u_char **buf);
static int mr_store_disp_done(MDB_txn *txn, mr_store_op_t *op);
static int mr_store_disp_callback(MDB_txn *txn, mr_store_op_t *op);
static int mr_store_disp_settle(MDB_txn *txn, mr_store_op_t *op,
    mr_exec_t *exec, int64_t cost);
static int mr_store_disp_end(MDB_txn *txn, mr_store_op_t *op,
    mr_exec_t *exec, const char *event);
static int mr_store_disp_fail(MDB_txn *txn, mr_store_op_t *op,
    mr_exec_t *exec, const char *code, ngx_str_t *message);
static int mr_store_disp_lease_end(MDB_txn *txn, mr_store_op_t *op,
    mr_exec_t *exec, ngx_uint_t outcome, ngx_uint_t breaker,
    ngx_uint_t answered);
static void mr_store_disp_run_reset(mr_route_state_t *st);
static int mr_store_disp_attempt(mr_exec_t *exec, int64_t end,
    const char *outcome, const char *code, ngx_uint_t status,
    ngx_str_t *job_id, u_char **buf);
static int mr_store_disp_move(MDB_txn *txn, mr_exec_t *exec, int64_t due);
static int mr_store_route_get(MDB_txn *txn, u_char *name, size_t len,
    mr_route_state_t *st);
static int mr_store_route_put(MDB_txn *txn, u_char *name, size_t len,
    mr_route_state_t *st);
static mr_model_t *mr_store_disp_model(mr_exec_t *exec);
static int mr_store_disp_pick(MDB_txn *txn, mr_model_t *m,
    mr_exec_rec_t *rec, int64_t now, mr_route_t **route,
    mr_route_state_t *st, ngx_uint_t *half);
static int mr_store_disp_no_route(MDB_txn *txn, mr_store_op_t *op,
    mr_exec_t *exec, int why);
static ngx_uint_t mr_store_disp_waits(MDB_txn *txn, MDB_val *v, int64_t now);
static const char *mr_store_retryable(const char *code);


void (*mr_store_dispatch_hook)(void);


int
mr_store_disp_apply(MDB_txn *txn, mr_store_op_t *op)
{
    switch (op->type) {

    case MR_OP_DISP_CLAIM:
        return mr_store_disp_claim(txn, op);

    case MR_OP_DISP_DONE:
        return mr_store_disp_done(txn, op);

    default: /* MR_OP_DISP_CALLBACK */
        return mr_store_disp_callback(txn, op);
    }
}


/* a new execution of a model with routes: due at once */

int
mr_store_disp_add(MDB_txn *txn, mr_store_op_t *op, mr_exec_t *exec)
{
    mr_model_t  *m;

    m = mr_store_disp_model(exec);

    if (m == NULL || m->routes.nelts == 0) {
        return 0;
    }

    op->ready = 1;

    return mr_store_disp_move(txn, exec, exec->rec.created_ms);
}


/*
 * The execution leaves dispatch (it is terminal, or waits for a
 * callback), or its lease ended without an answer: out of the index, and
 * its lease, if any, gives its route's slot back.  The attempt of a lease
 * that was not answered was sent to the provider (or may have been): it
 * is recorded, as "cancelled" if the execution was, as "abandoned"
 * otherwise; *buf then holds the attempts, and the caller frees it after
 * it has written the execution.
 */

int
mr_store_disp_release(MDB_txn *txn, mr_store_op_t *op, mr_exec_t *exec,
    u_char **buf)
{
    int               rc;
    u_char           *old;
    ngx_uint_t        cancelled;
    mr_route_state_t  st;

    rc = mr_store_disp_move(txn, exec, 0);
    if (rc != 0) {
        return rc;
    }

    if (exec->rec.lease_owner && exec->rec.route_len) {
        cancelled = (exec->rec.status == MR_CANCELLED);
        old = *buf;

        rc = mr_store_disp_attempt(exec, op->now,
                                   cancelled ? "cancelled" : "abandoned",
                                   cancelled ? NULL : "GENERATION_TIMEOUT",
                                   0, NULL, buf);
        if (rc != 0) {
            return rc;
        }

        if (old) {
            ngx_free(old);    /* the attempts were copied from it */
        }

        rc = mr_store_route_get(txn, exec->rec.route, exec->rec.route_len,
                                &st);
        if (rc != 0) {
            return rc;
        }

        if (st.inflight) {
            st.inflight--;
        }

        if (st.probe_token == exec->rec.lease_owner) {
            st.probe_until_ms = 0;   /* the probe went: another may go */
            st.probe_token = 0;
        }

        rc = mr_store_route_put(txn, exec->rec.route, exec->rec.route_len,
                                &st);
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
mr_store_disp_claim(MDB_txn *txn, mr_store_op_t *op)
{
    int          rc;
    u_char      *copy, *buf;
    MDB_val      k, v;
    mr_exec_t    exec;
    MDB_cursor  *cur;
    ngx_uint_t   scanned, claimed, one;
    u_char       last[MR_DISP_KEY_LEN];

    rc = mdb_cursor_open(txn, mr_store.disp, &cur);
    if (rc != 0) {
        return rc;
    }

    scanned = 0;
    claimed = 0;

    for (rc = mdb_cursor_get(cur, &k, &v, MDB_FIRST);
         rc == 0;
         /* void */)
    {
        if (k.mv_size != MR_DISP_KEY_LEN) {
            rc = mdb_cursor_del(cur, 0);
            if (rc == 0) {
                rc = mdb_cursor_get(cur, &k, &v, MDB_GET_CURRENT);
            }

            continue;
        }

        if ((int64_t) mr_be64_get(k.mv_data) > op->now) {
            break;
        }

        if (claimed >= op->disp.limit || scanned++ >= MR_DISP_SCAN_MAX) {
            op->disp.more = 1;
            break;
        }

        ngx_memcpy(last, k.mv_data, MR_DISP_KEY_LEN);

        k.mv_data = last + 8;
        k.mv_size = MR_EXEC_ID_LEN;

        rc = mdb_get(txn, mr_store.exec, &k, &v);

        if (rc == 0 && mr_store_disp_waits(txn, &v, op->now)) {
            rc = mdb_cursor_get(cur, &k, &v, MDB_NEXT);
            continue;
        }

        copy = NULL;

        if (rc == 0) {
            rc = mr_store_exec_copy(txn, last + 8, &exec, &copy);
        }

        if (rc == MDB_NOTFOUND) {
            k.mv_data = last;
            k.mv_size = MR_DISP_KEY_LEN;
            rc = mdb_del(txn, mr_store.disp, &k, NULL);

        } else if (rc == 0) {
            one = 0;
            buf = NULL;
            rc = mr_store_disp_claim_one(txn, op, &exec, &one, &buf);
            claimed += one;

            if (buf) {
                ngx_free(buf);
            }
        }

        if (copy) {
            ngx_free(copy);
        }

        if (rc != 0) {
            break;
        }

        /* back to where the scan was: the index may have changed */

        k.mv_data = last;
        k.mv_size = MR_DISP_KEY_LEN;

        rc = mdb_cursor_get(cur, &k, &v, MDB_SET_RANGE);

        if (rc == 0 && k.mv_size == MR_DISP_KEY_LEN
            && ngx_memcmp(k.mv_data, last, MR_DISP_KEY_LEN) == 0)
        {
            rc = mdb_cursor_get(cur, &k, &v, MDB_NEXT);
        }
    }

    mdb_cursor_close(cur);

    op->disp.claimed = claimed;

    return (rc == MDB_NOTFOUND) ? 0 : rc;
}


/* one due execution; *claimed is set if an attempt was claimed */

static int
mr_store_disp_claim_one(MDB_txn *txn, mr_store_op_t *op, mr_exec_t *exec,
    ngx_uint_t *claimed, u_char **buf)
{
    int                rc;
    int64_t            now;
    ngx_str_t          msg;
    ngx_uint_t         half;
    mr_model_t        *m;
    mr_route_t        *route;
    mr_disp_job_t     *job;
    mr_route_state_t   st;

    now = op->now;

    if (mr_status_terminal(exec->rec.status)
        || exec->rec.status == MR_AWAITING_WEBHOOK)
    {
        rc = mr_store_disp_move(txn, exec, 0);
        if (rc != 0) {
            return rc;
        }

        return mr_store_exec_put(txn, exec);
    }

    if (exec->rec.expires_ms <= now) {
        return 0;    /* the sweeper expires it */
    }

    /* a lease that ended without an answer: its worker is gone */

    if (exec->rec.lease_owner) {

        /* *buf holds the attempts from here on: the caller frees it */

        rc = mr_store_disp_release(txn, op, exec, buf);

        if (rc == 0) {
            rc = mr_store_disp_move(txn, exec, now);
        }

        if (rc == 0) {
            rc = mr_store_exec_put(txn, exec);
        }

        if (rc != 0) {
            return rc;
        }
    }

    m = mr_store_disp_model(exec);

    if (m == NULL || m->routes.nelts == 0) {
        ngx_str_set(&msg, "the model has no routes any more");
        return mr_store_disp_fail(txn, op, exec, "MODEL_UNAVAILABLE", &msg);
    }

    if (exec->rec.nattempts >= m->attempts) {
        ngx_str_set(&msg, "the provider did not answer in time");
        return mr_store_disp_fail(txn, op, exec, "GENERATION_TIMEOUT", &msg);
    }

    /* the next route in order whose breaker and cap let it take one */

    rc = mr_store_disp_pick(txn, m, &exec->rec, now, &route, &st, &half);

    if (rc == NGX_BUSY) {
        return 0;                    /* it waits in the index */
    }

    if (rc == NGX_DECLINED || rc == NGX_AGAIN || rc == NGX_ABORT) {
        return mr_store_disp_no_route(txn, op, exec, rc);
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

    st.inflight++;
    st.attempts++;

    if (half) {
        st.probe_until_ms = now + route->timeout + MR_DISP_LEASE_PAD;
        st.probe_token = job->token;
    }

    rc = mr_store_route_put(txn, route->name.data, route->name.len, &st);
    if (rc != 0) {
        ngx_free(job);
        return rc;
    }

    if (exec->rec.status == MR_PENDING) {
        exec->rec.status = MR_PROCESSING;
        exec->rec.started_ms = ngx_max(now, exec->rec.created_ms);

        rc = mr_store_emit(txn, op, exec, "execution.started");
        if (rc != 0) {
            ngx_free(job);
            return rc;
        }
    }

    exec->rec.lease_owner = job->token;
    exec->rec.lease_until_ms = now + route->timeout + MR_DISP_LEASE_PAD;
    exec->rec.attempt_ms = now;
    exec->rec.nattempts++;
    exec->rec.route_len = route->name.len;
    ngx_memzero(exec->rec.route, MR_ROUTE_NAME_LEN);
    ngx_memcpy(exec->rec.route, route->name.data, route->name.len);

    rc = mr_store_disp_move(txn, exec, exec->rec.lease_until_ms);
    if (rc == 0) {
        rc = mr_store_exec_put(txn, exec);
    }

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


/*
 * The route of the next attempt: the model's routes in order from the
 * attempt's number, the first whose breaker is closed (or half-open with
 * no probe in flight), not paused by a Retry-After and under its cap.
 * NGX_BUSY: every usable route is at its cap, probing, or paused until
 * before the execution's expires_at (wait); NGX_DECLINED: every breaker
 * is open; NGX_AGAIN: every route is paused past expires_at; NGX_ABORT:
 * every route is open or paused past expires_at.  No attempt can be made
 * in the last three cases.
 */

static int
mr_store_disp_pick(MDB_txn *txn, mr_model_t *m, mr_exec_rec_t *rec,
    int64_t now, mr_route_t **route, mr_route_state_t *st, ngx_uint_t *half)
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

        rc = mr_store_route_get(txn, rt->name.data, rt->name.len, st);
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


/* no attempt can be made (mr_store_disp_pick()): FAILED, with why */

static int
mr_store_disp_no_route(MDB_txn *txn, mr_store_op_t *op, mr_exec_t *exec,
    int why)
{
    ngx_str_t  msg;

    switch (why) {

    case NGX_AGAIN:
        ngx_str_set(&msg, "every route of the model is rate limited by its "
                    "provider (Retry-After) past the execution's "
                    "expires_at");
        return mr_store_disp_fail(txn, op, exec, "RATE_LIMITED", &msg);

    case NGX_ABORT:
        ngx_str_set(&msg, "every route of the model is down, or rate "
                    "limited by its provider past the execution's "
                    "expires_at");
        break;

    default: /* NGX_DECLINED */
        ngx_str_set(&msg, "every route of the model is down: their "
                    "circuit breakers are open");
    }

    return mr_store_disp_fail(txn, op, exec, "MODEL_UNAVAILABLE", &msg);
}


/*
 * Whether a due entry needs a write: read from the record's header and
 * model in the map, without a copy, so that executions waiting for a slot
 * cost little to pass over.
 */

static ngx_uint_t
mr_store_disp_waits(MDB_txn *txn, MDB_val *v, int64_t now)
{
    mr_exec_rec_t      rec;
    ngx_str_t          slug;
    ngx_uint_t         half;
    mr_model_t        *m;
    mr_route_t        *route;
    mr_route_state_t   st;

    if (v->mv_size < sizeof(mr_exec_rec_t)) {
        return 0;
    }

    ngx_memcpy(&rec, v->mv_data, sizeof(mr_exec_rec_t));

    if (mr_status_terminal(rec.status) || rec.status == MR_AWAITING_WEBHOOK
        || rec.lease_owner
        || rec.seg_len[MR_SEG_MODEL] > v->mv_size - sizeof(mr_exec_rec_t))
    {
        return 0;
    }

    if (rec.expires_ms <= now) {
        return 1;                   /* the sweeper expires it */
    }

    slug.data = (u_char *) v->mv_data + sizeof(mr_exec_rec_t);
    slug.len = rec.seg_len[MR_SEG_MODEL];

    m = mr_model_find(mr_store.mcf, &slug);

    if (m == NULL || m->routes.nelts == 0 || rec.nattempts >= m->attempts) {
        return 0;
    }

    return mr_store_disp_pick(txn, m, &rec, now, &route, &st, &half)
           == NGX_BUSY;
}


/* the outcome of an attempt, from the worker that made it */

static int
mr_store_disp_done(MDB_txn *txn, mr_store_op_t *op)
{
    int                rc;
    u_char            *copy, *buf;
    int64_t            delay, next;
    ngx_uint_t         n, round, half;
    mr_exec_t          exec;
    mr_model_t        *m;
    mr_route_t        *route;
    mr_disp_op_t      *d;
    const char        *outcome;
    mr_route_state_t   st;

    d = &op->disp;
    copy = NULL;
    buf = NULL;

    rc = mr_store_exec_copy(txn, d->exec_id, &exec, &copy);
    if (rc == MDB_NOTFOUND) {
        op->result = MR_R_NOT_FOUND;
        return 0;
    }

    if (rc != 0) {
        return rc;
    }

    if (exec.rec.status != MR_PROCESSING || exec.rec.lease_owner == 0
        || exec.rec.lease_owner != d->token || op->now >= exec.rec.expires_ms)
    {
        /*
         * cancelled, expired (or about to be: the sweeper ends it), or
         * the lease passed on: a late answer
         */
        d->status = exec.rec.status;
        op->result = MR_R_NOOP;
        goto done;
    }

    switch (d->outcome) {
    case MR_OUT_OK:
        outcome = "succeeded";
        break;
    case MR_OUT_ACCEPTED:
        outcome = "accepted";
        break;
    case MR_OUT_TIMEOUT:
        outcome = "timed_out";
        break;
    default:
        outcome = "failed";
    }

    rc = mr_store_disp_attempt(&exec, d->ended_ms, outcome,
                               d->outcome == MR_OUT_OK
                               || d->outcome == MR_OUT_ACCEPTED
                               ? NULL : d->code,
                               d->status_code, &d->job_id, &buf);
    if (rc != 0) {
        goto done;
    }

    rc = mr_store_disp_lease_end(txn, op, &exec, d->outcome, d->breaker,
                                 d->status_code != 0
                                 || d->outcome == MR_OUT_OK
                                 || d->outcome == MR_OUT_ACCEPTED);
    if (rc != 0) {
        goto done;
    }

    switch (d->outcome) {

    case MR_OUT_OK:
        rc = mr_store_disp_settle(txn, op, &exec, d->cost);
        goto done;

    case MR_OUT_ACCEPTED:
        /* the provider calls back; the deadline index still expires it */
        exec.rec.status = MR_AWAITING_WEBHOOK;

        rc = mr_store_disp_move(txn, &exec, 0);
        if (rc == 0) {
            rc = mr_store_exec_put(txn, &exec);
        }

        d->status = MR_AWAITING_WEBHOOK;
        goto done;

    case MR_OUT_FATAL:
        rc = mr_store_disp_fail(txn, op, &exec, d->code, &d->message);
        goto done;
    }

    /* retryable: another attempt if the limit and the deadline allow */

    m = mr_store_disp_model(&exec);

    if (m == NULL || m->routes.nelts == 0
        || exec.rec.nattempts >= m->attempts)
    {
        rc = mr_store_disp_fail(txn, op, &exec, d->code, &d->message);
        goto done;
    }

    /*
     * the next route at once; a jittered backoff when the round of
     * routes starts again, and never sooner than a Retry-After of the
     * same route
     */

    n = m->routes.nelts;
    delay = 0;

    if (exec.rec.nattempts % n == 0) {
        round = exec.rec.nattempts / n;
        delay = MR_DISP_BACKOFF << ngx_min(round - 1, 7);
        delay = delay / 2 + delay * (int64_t) d->jitter / 1000;
        delay = ngx_min(delay, MR_DISP_BACKOFF_MAX);
    }

    if (n == 1 && d->retry_after_ms > delay) {
        delay = d->retry_after_ms;
    }

    next = op->now + delay;

    if (next >= exec.rec.expires_ms) {
        rc = mr_store_disp_fail(txn, op, &exec, d->code, &d->message);
        goto done;
    }

    /* every route paused past expires_at (this one too, say): now */

    rc = mr_store_disp_pick(txn, m, &exec.rec, next, &route, &st, &half);

    if (rc == NGX_AGAIN || rc == NGX_ABORT) {
        rc = mr_store_disp_no_route(txn, op, &exec, rc);
        goto done;
    }

    if (rc > 0) {
        goto done;
    }

    rc = mr_store_disp_move(txn, &exec, next);
    if (rc == 0) {
        rc = mr_store_exec_put(txn, &exec);
    }

    d->status = MR_PROCESSING;
    op->ready = 1;

done:

    if (copy) {
        ngx_free(copy);
    }

    if (buf) {
        ngx_free(buf);
    }

    return rc;
}


/* a provider's callback for an asynchronous job */

static int
mr_store_disp_callback(MDB_txn *txn, mr_store_op_t *op)
{
    int            rc;
    u_char        *copy, *buf;
    mr_exec_t      exec;
    mr_disp_op_t  *d;

    d = &op->disp;
    copy = NULL;
    buf = NULL;

    rc = mr_store_exec_copy(txn, d->exec_id, &exec, &copy);
    if (rc == MDB_NOTFOUND) {
        op->result = MR_R_NOT_FOUND;
        return 0;
    }

    if (rc != 0) {
        return rc;
    }

    d->status = exec.rec.status;

    if (mr_status_terminal(exec.rec.status)) {
        op->result = MR_R_NOOP;      /* twice, or after a cancel */
        goto done;
    }

    if (op->now >= exec.rec.expires_ms) {

        /* expired, the sweeper has not come by yet: as if it had */

        d->status = MR_EXPIRED;
        op->result = MR_R_NOOP;
        goto done;
    }

    /*
     * The token is an attempt's (mr_callback.c): a provider that holds
     * it was sent a job by that attempt, and the result is taken while
     * the execution is not terminal.  PROCESSING: the provider called
     * back before the answer that took the job was recorded (that answer
     * is dropped when it arrives), or the attempt that sent the job
     * failed (no answer in time, say) although the provider had taken
     * it, and the execution waits for its next attempt, which is not
     * made.  PENDING: no job was ever sent (and no token of an attempt
     * not made passes mr_callback.c).
     */

    if (exec.rec.status == MR_PENDING) {
        op->result = MR_R_TERMINAL;  /* not waiting for a callback */
        goto done;
    }

    rc = mr_store_disp_attempt(&exec, op->now,
                               d->outcome == MR_OUT_OK ? "called_back"
                                                       : "failed",
                               d->outcome == MR_OUT_OK ? NULL : d->code,
                               0, NULL, &buf);
    if (rc != 0) {
        goto done;
    }

    if (exec.rec.lease_owner) {
        rc = mr_store_disp_lease_end(txn, op, &exec, MR_OUT_OK, 0, 1);
        if (rc != 0) {
            goto done;
        }
    }

    if (d->outcome == MR_OUT_OK) {
        rc = mr_store_disp_settle(txn, op, &exec, d->cost);

    } else {
        rc = mr_store_disp_fail(txn, op, &exec, d->code, &d->message);
    }

done:

    if (copy) {
        ngx_free(copy);
    }

    if (buf) {
        ngx_free(buf);
    }

    return rc;
}


/* COMPLETED: the hold settles to the cost, never more than the hold */

static int
mr_store_disp_settle(MDB_txn *txn, mr_store_op_t *op, mr_exec_t *exec,
    int64_t cost)
{
    int           rc;
    mr_account_t  acct;

    if (cost < 0) {
        cost = exec->rec.estimate;
    }

    cost = ngx_min(cost, exec->rec.hold);

    rc = mr_store_account_read(txn, exec->rec.org, &acct, NULL);
    if (rc != 0) {
        return rc == MDB_NOTFOUND ? MDB_CORRUPTED : rc;
    }

    acct.rec.held -= exec->rec.hold;
    acct.rec.balance -= cost;
    acct.rec.charged += cost;

    rc = mr_store_account_put(txn, &acct);
    if (rc != 0) {
        return rc;
    }

    exec->rec.status = MR_COMPLETED;
    exec->rec.cost = cost;
    exec->rec.completed_ms = ngx_max(op->now, exec->rec.created_ms);
    exec->seg[MR_SEG_RESULT] = op->disp.result;
    exec->seg[MR_SEG_ERROR].len = 0;

    op->disp.status = MR_COMPLETED;
    op->disp.cost = cost;

    return mr_store_disp_end(txn, op, exec, "execution.completed");
}


/* FAILED: the whole hold released, nothing charged */

static int
mr_store_disp_fail(MDB_txn *txn, mr_store_op_t *op, mr_exec_t *exec,
    const char *code, ngx_str_t *message)
{
    int            rc;
    u_char        *p;
    size_t         len;
    json_t        *j;
    char          *err;
    mr_account_t   acct;

    rc = mr_store_account_read(txn, exec->rec.org, &acct, NULL);
    if (rc != 0) {
        return rc == MDB_NOTFOUND ? MDB_CORRUPTED : rc;
    }

    acct.rec.held -= exec->rec.hold;

    rc = mr_store_account_put(txn, &acct);
    if (rc != 0) {
        return rc;
    }

    j = json_pack("{s:s, s:s#, s:b}", "code", code,
                  "message", message->len ? (char *) message->data : "",
                  (int) message->len,
                  "retryable", mr_store_retryable(code) != NULL);
    if (j == NULL) {
        /* not UTF-8, say: the code alone */
        j = json_pack("{s:s, s:s, s:b}", "code", code, "message", "",
                      "retryable", mr_store_retryable(code) != NULL);
        if (j == NULL) {
            return ENOMEM;
        }
    }

    err = json_dumps(j, JSON_COMPACT);
    json_decref(j);

    if (err == NULL) {
        return ENOMEM;
    }

    len = ngx_strlen(err);
    p = (u_char *) err;

    exec->rec.status = MR_FAILED;
    exec->rec.cost = 0;
    exec->rec.completed_ms = ngx_max(op->now, exec->rec.created_ms);
    exec->seg[MR_SEG_ERROR].data = p;
    exec->seg[MR_SEG_ERROR].len = len;

    op->disp.status = MR_FAILED;

    rc = mr_store_disp_end(txn, op, exec, "execution.failed");

    free(err);

    return rc;
}


/* a terminal status: out of both indexes, written, and its event */

static int
mr_store_disp_end(MDB_txn *txn, mr_store_op_t *op, mr_exec_t *exec,
    const char *event)
{
    int      rc;
    u_char  *buf;

    op->full = 1;
    buf = NULL;

    rc = mr_store_disp_release(txn, op, exec, &buf);
    if (rc == 0) {
        rc = mr_store_due_put(txn, exec, 0);
    }

    if (rc == 0) {
        rc = mr_store_exec_put(txn, exec);
    }

    if (rc == 0) {
        rc = mr_store_emit(txn, op, exec, event);
    }

    if (buf) {
        ngx_free(buf);
    }

    return rc;
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

static int
mr_store_disp_lease_end(MDB_txn *txn, mr_store_op_t *op, mr_exec_t *exec,
    ngx_uint_t outcome, ngx_uint_t breaker, ngx_uint_t answered)
{
    int                rc;
    ngx_uint_t         probe, open;
    mr_route_t        *route;
    mr_route_state_t   st;

    rc = mr_store_route_get(txn, exec->rec.route, exec->rec.route_len, &st);
    if (rc != 0) {
        return rc;
    }

    route = mr_route_find(mr_store.mcf, exec->rec.route, exec->rec.route_len);

    if (st.inflight) {
        st.inflight--;
    }

    probe = (st.probe_token && st.probe_token == exec->rec.lease_owner);

    if (probe) {
        st.probe_until_ms = 0;
        st.probe_token = 0;
    }

    if ((outcome == MR_OUT_RETRY || outcome == MR_OUT_TIMEOUT)
        && breaker != MR_BREAKER_NONE)
    {
        st.failures++;
        st.failed++;

        if (breaker == MR_BREAKER_PROVIDER) {
            st.provider_failures++;

        } else if (st.timeout_accounts == 0) {
            st.timeout_accounts = 1;
            ngx_memcpy(st.timeout_org, exec->rec.org, MR_ORG_ID_LEN);

        } else if (ngx_memcmp(st.timeout_org, exec->rec.org, MR_ORG_ID_LEN)
                   != 0)
        {
            st.timeout_accounts = 2;
        }

        if (probe) {
            open = (breaker == MR_BREAKER_PROVIDER
                    || st.timeout_accounts >= 2);

        } else {
            open = (route && st.open_until_ms == 0
                    && st.failures >= route->breaker_failures
                    && (st.provider_failures >= route->breaker_failures
                        || st.timeout_accounts >= 2));
        }

        if (route && open) {
            st.open_until_ms = op->now + route->breaker_reset;
            mr_store_disp_run_reset(&st);
        }

    } else if (answered && outcome != MR_OUT_RETRY
               && outcome != MR_OUT_TIMEOUT
               && (st.open_until_ms == 0 || probe))
    {
        st.failures = 0;
        st.open_until_ms = 0;
        mr_store_disp_run_reset(&st);
    }

    if (op->disp.retry_after_ms > 0) {
        st.paused_until_ms = ngx_max(st.paused_until_ms,
                                     op->now + op->disp.retry_after_ms);
    }

    rc = mr_store_route_put(txn, exec->rec.route, exec->rec.route_len, &st);
    if (rc != 0) {
        return rc;
    }

    exec->rec.lease_owner = 0;
    exec->rec.lease_until_ms = 0;
    op->ready = 1;

    return 0;
}


/* a new run of failures: the breaker closed or opened */

static void
mr_store_disp_run_reset(mr_route_state_t *st)
{
    st->provider_failures = 0;
    st->timeout_accounts = 0;
    ngx_memzero(st->timeout_org, MR_ORG_ID_LEN);
}


/* appends {route, started_at, ended_at, outcome, error_code, status} */

static int
mr_store_disp_attempt(mr_exec_t *exec, int64_t end, const char *outcome,
    const char *code, ngx_uint_t status, ngx_str_t *job_id, u_char **buf)
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

    p = ngx_sprintf(p, "{\"route\":\"%*s\",\"started_at\":\"",
                    (size_t) exec->rec.route_len, exec->rec.route);
    p = mr_time_format(p, exec->rec.attempt_ms);
    p = ngx_cpymem(p, "\",\"ended_at\":\"", 14);
    p = mr_time_format(p, ngx_max(end, exec->rec.attempt_ms));
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

    mr_metrics_attempt(exec, outcome);

    return 0;
}


/* moves the execution's entry in the dispatch index; 0: out of it */

static int
mr_store_disp_move(MDB_txn *txn, mr_exec_t *exec, int64_t due)
{
    return mr_store_time_index(txn, mr_store.disp, exec->id, MR_EXEC_ID_LEN,
                               &exec->rec.next_ms, due, NULL);
}


static int
mr_store_route_get(MDB_txn *txn, u_char *name, size_t len,
    mr_route_state_t *st)
{
    int      rc;
    MDB_val  k, v;

    ngx_memzero(st, sizeof(mr_route_state_t));

    if (len == 0) {
        return 0;
    }

    k.mv_data = name;
    k.mv_size = len;

    rc = mdb_get(txn, mr_store.route, &k, &v);

    if (rc == 0) {
        /* a shorter record is an older layout: its new fields are zeros */
        ngx_memcpy(st, v.mv_data,
                   ngx_min(v.mv_size, sizeof(mr_route_state_t)));
        return 0;
    }

    return (rc == MDB_NOTFOUND) ? 0 : rc;
}


static int
mr_store_route_put(MDB_txn *txn, u_char *name, size_t len,
    mr_route_state_t *st)
{
    MDB_val  k, v;

    if (len == 0) {
        return 0;
    }

    k.mv_data = name;
    k.mv_size = len;
    v.mv_data = st;
    v.mv_size = sizeof(mr_route_state_t);

    return mdb_put(txn, mr_store.route, &k, &v, 0);
}


static mr_model_t *
mr_store_disp_model(mr_exec_t *exec)
{
    return mr_model_find(mr_store.mcf, &exec->seg[MR_SEG_MODEL]);
}


static const char *
mr_store_retryable(const char *code)
{
    static const char  *codes[] = {
        "RATE_LIMITED", "GENERATION_FAILED", "MODEL_OVERLOADED",
        "MODEL_UNAVAILABLE", "SERVICE_UNAVAILABLE", "GENERATION_TIMEOUT",
        "STORAGE_FULL", NULL
    };

    ngx_uint_t  i;

    for (i = 0; codes[i]; i++) {
        if (ngx_strcmp(code, codes[i]) == 0) {
            return codes[i];
        }
    }

    return NULL;
}


/* reads */

ngx_int_t
mr_store_route_states(mr_main_conf_t *mcf, mr_route_state_t *states)
{
    int          rc;
    MDB_txn     *txn;
    ngx_uint_t   i;
    mr_route_t  *rt;

    txn = mr_store_read_begin();
    if (txn == NULL) {
        return NGX_ERROR;
    }

    rt = mcf->routes.elts;
    rc = 0;

    for (i = 0; i < mcf->routes.nelts && rc == 0; i++) {
        rc = mr_store_route_get(txn, rt[i].name.data, rt[i].name.len,
                                &states[i]);
    }

    mr_store_read_end();

    return mr_store_read_rc(rc, "route states");
}


/* the earliest due time in the dispatch index; -1: none */

ngx_int_t
mr_store_disp_next(int64_t *due)
{
    int          rc;
    MDB_val      k, v;
    MDB_txn     *txn;
    MDB_cursor  *cur;

    *due = -1;

    txn = mr_store_read_begin();
    if (txn == NULL) {
        return NGX_ERROR;
    }

    rc = mdb_cursor_open(txn, mr_store.disp, &cur);

    if (rc == 0) {
        rc = mdb_cursor_get(cur, &k, &v, MDB_FIRST);

        if (rc == 0 && k.mv_size == MR_DISP_KEY_LEN) {
            *due = (int64_t) mr_be64_get(k.mv_data);
        }

        mdb_cursor_close(cur);
    }

    mr_store_read_end();

    return mr_store_read_rc(rc == MDB_NOTFOUND ? 0 : rc, "dispatch index");
}


/*
 * Secrets in the meta table: the callback key is made once; the dispatch
 * secret is made again on each start (rotate), not on a reload, because
 * old and new workers share the dispatch socket during a reload.
 */

int
mr_store_disp_secrets(MDB_txn *txn, MDB_dbi meta, ngx_uint_t rotate)
{
    int           rc;
    MDB_val       k, v;
    ngx_uint_t    i;
    u_char        raw[MR_STORE_SECRET_LEN];
    static char  *names[] = { "cbkey", "dsecret" };

    for (i = 0; i < 2; i++) {
        k.mv_data = names[i];
        k.mv_size = ngx_strlen(names[i]);

        rc = mdb_get(txn, meta, &k, &v);

        if (rc == 0 && v.mv_size == MR_STORE_SECRET_LEN
            && !(rotate && i == 1))
        {
            continue;
        }

        if (rc != 0 && rc != MDB_NOTFOUND) {
            return rc;
        }

        if (RAND_bytes(raw, sizeof(raw)) != 1) {
            return EIO;
        }

        v.mv_data = raw;
        v.mv_size = sizeof(raw);

        rc = mdb_put(txn, meta, &k, &v, 0);
        if (rc != 0) {
            return rc;
        }
    }

    return 0;
}


ngx_int_t
mr_store_meta_secret(const char *name, u_char *secret)
{
    int       rc;
    MDB_val   k, v;
    MDB_txn  *txn;

    txn = mr_store_read_begin();
    if (txn == NULL) {
        return NGX_ERROR;
    }

    k.mv_data = (void *) name;
    k.mv_size = ngx_strlen(name);

    rc = mdb_get(txn, mr_store.meta, &k, &v);

    if (rc == 0) {
        if (v.mv_size == MR_STORE_SECRET_LEN) {
            ngx_memcpy(secret, v.mv_data, MR_STORE_SECRET_LEN);

        } else {
            rc = MDB_CORRUPTED;
        }
    }

    mr_store_read_end();

    return mr_store_read_rc(rc, name);
}
