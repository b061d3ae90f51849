
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

#include "mr_store.h"
#include "mr_store_lmdb.h"
#include "mr_rules.h"


#define MR_DISP_SCAN_PART    2048    /* due entries looked at per claim at
                                        its head, and as many past it */
#define MR_DISP_KEY_LEN      MR_DISP_FROM_LEN


static int mr_store_disp_claim(MDB_txn *txn, mr_store_op_t *op);
static int mr_store_disp_scan(MDB_txn *txn, mr_store_op_t *op,
    MDB_cursor *cur, u_char *from, ngx_uint_t *claimed, u_char *last,
    ngx_uint_t *end);
static int mr_store_disp_after(MDB_cursor *cur, u_char *key, MDB_val *k,
    MDB_val *v);
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
static int mr_store_disp_move(MDB_txn *txn, mr_exec_t *exec, int64_t due);
static int mr_store_route_get(MDB_txn *txn, u_char *name, size_t len,
    mr_route_state_t *st);
static int mr_store_route_getter(void *data, mr_route_t *route,
    mr_route_state_t *st);
static int mr_store_route_put(MDB_txn *txn, u_char *name, size_t len,
    mr_route_state_t *st);
static mr_model_t *mr_store_disp_model(mr_exec_t *exec);
static int mr_store_disp_no_route(MDB_txn *txn, mr_store_op_t *op,
    mr_exec_t *exec, int why);
static ngx_uint_t mr_store_disp_waits(MDB_txn *txn, MDB_val *v, int64_t now);


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
    const char       *outcome, *code;
    mr_route_state_t  st;

    rc = mr_store_disp_move(txn, exec, 0);
    if (rc != 0) {
        return rc;
    }

    if (mr_rule_disp_unanswered(exec, &outcome, &code)) {
        old = *buf;

        rc = mr_rule_attempt(exec, op->now, outcome, code, 0, NULL, buf);
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

        mr_rule_disp_release(&st, exec->rec.lease_owner);

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


/*
 * A claim looks at the head of the due queue (the oldest first) and, when
 * more are due than that, at as many again past the head, from where the
 * last such look stopped (op->disp.from, kept by the dispatcher from one
 * committed claim to the next), round the queue: executions that wait for
 * a full capped route, however many, neither hide the ones due behind
 * them (another model's, an ended lease's) nor take the head from the
 * oldest.
 */

static int
mr_store_disp_claim(MDB_txn *txn, mr_store_op_t *op)
{
    int          rc;
    u_char      *from;
    MDB_cursor  *cur;
    ngx_uint_t   claimed, end, past;
    u_char       last[MR_DISP_KEY_LEN];

    rc = mdb_cursor_open(txn, mr_store.disp, &cur);
    if (rc != 0) {
        return rc;
    }

    claimed = 0;

    rc = mr_store_disp_scan(txn, op, cur, NULL, &claimed, last, &end);

    /* more are due than it looked at: claimed again at once if it took */

    op->disp.more = !end;

    if (rc == 0 && !end && claimed < op->disp.limit) {

        from = (op->disp.from_set
                && ngx_memcmp(op->disp.from, last, MR_DISP_KEY_LEN) > 0)
               ? op->disp.from : last;

        rc = mr_store_disp_scan(txn, op, cur, from, &claimed,
                                op->disp.next_from, &past);

        /* the next look past the head starts after this one, or round */

        op->disp.past = 1;
        op->disp.next_from_set = !past;
    }

    mdb_cursor_close(cur);

    op->disp.claimed = claimed;

    return rc;
}


/*
 * Due entries after the key from (NULL: from the first), at most
 * MR_DISP_SCAN_PART, until *claimed reaches the claim's limit: *end is set
 * if it saw the last one due, last is the last one it looked at.
 */

static int
mr_store_disp_scan(MDB_txn *txn, mr_store_op_t *op, MDB_cursor *cur,
    u_char *from, ngx_uint_t *claimed, u_char *last, ngx_uint_t *end)
{
    int          rc;
    u_char      *copy, *buf;
    MDB_val      k, v;
    mr_exec_t    exec;
    ngx_uint_t   scanned, one;

    scanned = 0;
    *end = 0;

    rc = (from == NULL) ? mdb_cursor_get(cur, &k, &v, MDB_FIRST)
                        : mr_store_disp_after(cur, from, &k, &v);

    while (rc == 0) {

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

        if (*claimed >= op->disp.limit || scanned++ >= MR_DISP_SCAN_PART) {
            return 0;
        }

        ngx_memcpy(last, k.mv_data, MR_DISP_KEY_LEN);

        k.mv_data = last + 8;
        k.mv_size = MR_EXEC_ID_LEN;

        rc = mdb_get(txn, mr_store.exec, &k, &v);

        if (rc == 0 && mr_store_disp_waits(txn, &v, op->now)) {
            rc = mdb_cursor_get(cur, &k, &v, MDB_NEXT);    /* still there */
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
            *claimed += one;

            if (buf) {
                ngx_free(buf);
            }
        }

        if (copy) {
            ngx_free(copy);
        }

        if (rc != 0) {
            return rc;
        }

        /* back to where the scan was: the index may have changed */

        rc = mr_store_disp_after(cur, last, &k, &v);
    }

    if (rc != 0 && rc != MDB_NOTFOUND) {
        return rc;
    }

    *end = 1;

    return 0;
}


/* the cursor on the first entry after the key (which may be gone) */

static int
mr_store_disp_after(MDB_cursor *cur, u_char *key, MDB_val *k, MDB_val *v)
{
    int  rc;

    k->mv_data = key;
    k->mv_size = MR_DISP_KEY_LEN;

    rc = mdb_cursor_get(cur, k, v, MDB_SET_RANGE);

    if (rc == 0 && k->mv_size == MR_DISP_KEY_LEN
        && ngx_memcmp(k->mv_data, key, MR_DISP_KEY_LEN) == 0)
    {
        rc = mdb_cursor_get(cur, k, v, MDB_NEXT);
    }

    return rc;
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
    const char        *code;
    mr_disp_job_t     *job;
    mr_route_state_t   st;

    now = op->now;

    switch (mr_rule_disp_due(exec, now)) {

    case MR_DISP_LEAVE:
        rc = mr_store_disp_move(txn, exec, 0);
        if (rc != 0) {
            return rc;
        }

        return mr_store_exec_put(txn, exec);

    case MR_DISP_SWEEP:
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

    if (mr_rule_disp_model(mr_store.mcf, exec, &m, &code, &msg)
        == MR_DISP_FAIL)
    {
        return mr_store_disp_fail(txn, op, exec, code, &msg);
    }

    /* the next route in order whose breaker and cap let it take one */

    rc = mr_rule_disp_pick(m, &exec->rec, now, mr_store_route_getter, txn,
                           &route, &st, &half);

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

    if (mr_random_bytes((u_char *) &job->token, sizeof(uint64_t)) != NGX_OK
        || job->token == 0)
    {
        ngx_free(job);
        return EIO;
    }

    mr_rule_disp_take(&st, route, half, job->token, now);

    rc = mr_store_route_put(txn, route->name.data, route->name.len, &st);
    if (rc != 0) {
        ngx_free(job);
        return rc;
    }

    if (mr_rule_disp_start(exec, now)) {
        rc = mr_store_emit(txn, op, exec, "execution.started");
        if (rc != 0) {
            ngx_free(job);
            return rc;
        }
    }

    mr_rule_disp_lease(exec, route, job->token, now);

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


/* no attempt can be made (mr_rule_disp_pick()): FAILED, with why */

static int
mr_store_disp_no_route(MDB_txn *txn, mr_store_op_t *op, mr_exec_t *exec,
    int why)
{
    ngx_str_t    msg;
    const char  *code;

    mr_rule_disp_no_route(why, &code, &msg);

    return mr_store_disp_fail(txn, op, exec, code, &msg);
}


/*
 * Whether a due entry needs a write: read from the record's header and
 * model in the map, without a copy, so that executions waiting for a slot
 * cost little to pass over.
 */

static ngx_uint_t
mr_store_disp_waits(MDB_txn *txn, MDB_val *v, int64_t now)
{
    ngx_str_t      slug;
    mr_exec_rec_t  rec;

    if (v->mv_size < sizeof(mr_exec_rec_t)) {
        return 0;
    }

    ngx_memcpy(&rec, v->mv_data, sizeof(mr_exec_rec_t));

    if (rec.seg_len[MR_SEG_MODEL] > v->mv_size - sizeof(mr_exec_rec_t)) {
        return 0;
    }

    slug.data = (u_char *) v->mv_data + sizeof(mr_exec_rec_t);
    slug.len = rec.seg_len[MR_SEG_MODEL];

    return mr_rule_disp_waits(mr_store.mcf, &rec, &slug, now,
                              mr_store_route_getter, txn);
}


/* the outcome of an attempt, from the worker that made it */

static int
mr_store_disp_done(MDB_txn *txn, mr_store_op_t *op)
{
    int                rc;
    u_char            *copy, *buf;
    int64_t            next;
    ngx_uint_t         half;
    mr_exec_t          exec;
    mr_model_t        *m;
    mr_route_t        *route;
    mr_disp_op_t      *d;
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

    if (mr_rule_disp_late(&exec, d->token, op->now)) {

        /*
         * cancelled, expired (or about to be: the sweeper ends it), or
         * the lease passed on: a late answer
         */
        d->status = exec.rec.status;
        op->result = MR_R_NOOP;
        goto done;
    }

    rc = mr_rule_attempt(&exec, d->ended_ms,
                         mr_rule_disp_outcome(d->outcome),
                         d->outcome == MR_OUT_OK
                         || d->outcome == MR_OUT_ACCEPTED
                         ? NULL : d->code,
                         d->status_code, &d->job_id, &buf);
    if (rc != 0) {
        goto done;
    }

    rc = mr_store_disp_lease_end(txn, op, &exec, d->outcome, d->breaker,
                                 mr_rule_disp_answered(d));
    if (rc != 0) {
        goto done;
    }

    switch (d->outcome) {

    case MR_OUT_OK:
        rc = mr_store_disp_settle(txn, op, &exec, d->cost);
        goto done;

    case MR_OUT_ACCEPTED:
        /* the provider calls back; the deadline index still expires it */
        mr_rule_disp_accepted(&exec, d);

        rc = mr_store_disp_move(txn, &exec, 0);
        if (rc == 0) {
            rc = mr_store_exec_put(txn, &exec);
        }

        goto done;

    case MR_OUT_FATAL:
        rc = mr_store_disp_fail(txn, op, &exec, d->code, &d->message);
        goto done;
    }

    /* retryable: another attempt if the limit and the deadline allow */

    m = mr_store_disp_model(&exec);

    if (!mr_rule_disp_retry(m, &exec, d, op->now, &next)) {
        rc = mr_store_disp_fail(txn, op, &exec, d->code, &d->message);
        goto done;
    }

    /* every route paused past expires_at (this one too, say): now */

    rc = mr_rule_disp_pick(m, &exec.rec, next, mr_store_route_getter, txn,
                           &route, &st, &half);

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

    if (!mr_rule_callback_check(op, &exec)) {
        goto done;
    }

    rc = mr_rule_callback_attempts(op, &exec, &buf);
    if (rc != 0) {
        goto done;
    }

    if (exec.rec.lease_owner) {
        rc = mr_store_disp_lease_end(txn, op, &exec, MR_OUT_OK, 0,
                                     mr_rule_callback_current(op, &exec));
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

    rc = mr_store_account_read(txn, exec->rec.org, &acct, NULL);
    if (rc != 0) {
        return rc == MDB_NOTFOUND ? MDB_CORRUPTED : rc;
    }

    cost = mr_rule_settle(exec, &acct, cost, &op->disp.result, op->now);

    rc = mr_store_account_put(txn, &acct);
    if (rc != 0) {
        return rc;
    }

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
    char          *err;
    mr_account_t   acct;

    rc = mr_store_account_read(txn, exec->rec.org, &acct, NULL);
    if (rc != 0) {
        return rc == MDB_NOTFOUND ? MDB_CORRUPTED : rc;
    }

    err = NULL;

    if (mr_rule_fail(exec, &acct, code, message, op->now, &err) != NGX_OK) {
        return ENOMEM;
    }

    rc = mr_store_account_put(txn, &acct);
    if (rc != 0) {
        free(err);
        return rc;
    }

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


/* the lease of an answered attempt ends: the route's slot and breaker */

static int
mr_store_disp_lease_end(MDB_txn *txn, mr_store_op_t *op, mr_exec_t *exec,
    ngx_uint_t outcome, ngx_uint_t breaker, ngx_uint_t answered)
{
    int               rc;
    mr_route_state_t  st;

    rc = mr_store_route_get(txn, exec->rec.route, exec->rec.route_len, &st);
    if (rc != 0) {
        return rc;
    }

    mr_rule_disp_lease_end(mr_store.mcf, &st, exec, op, outcome, breaker,
                           answered);

    return mr_store_route_put(txn, exec->rec.route, exec->rec.route_len,
                              &st);
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


/* for the rules (mr_rule_disp_pick()) */

static int
mr_store_route_getter(void *data, mr_route_t *route, mr_route_state_t *st)
{
    return mr_store_route_get(data, route->name.data, route->name.len, st);
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

        if (mr_random_bytes(raw, sizeof(raw)) != NGX_OK) {
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
