
/*
 * ModelRoute: the LMDB store.
 *
 * Databases:
 *   exec     exec_id                      -> mr_exec_rec_t + segments
 *   idem     org + idempotency key        -> exec_id + be64 created_ms
 *   byorg    org + be64 order + id        -> ""          (list, verify)
 *            (order: the creation time in microseconds, so that two
 *            executions made one after the other in one millisecond
 *            list in that order)
 *   acct     org                          -> mr_account_rec_t + name
 *   key      key_id                       -> mr_key_rec_t + name
 *   keyhash  sha256(secret)               -> key_id
 *   acctkey  org + key_id                 -> ""
 *   ref      org + credit reference       -> be64 amount
 *   due      be64 expires_ms + exec_id    -> ""  (open executions)
 *   idemttl  be64 created_ms + idem key   -> ""  (idem, by age)
 *   disp     be64 due_ms + exec_id        -> ""  (mr_store_dispatch.c)
 *   route    route name                   -> mr_route_state_t
 *   quota    org                          -> mr_quota_t (use and limits)
 *   keyend   be64 end_ms + key_id         -> org (revoked, rotated keys)
 *   meta     "version", "cbkey", "dsecret"
 * the webhook tables of mr_store_webhook.c, and "ops" (mr_store_ops.c).
 *
 * An account's use is counted in the transactions that change it: the
 * stored bytes of its executions, events, deliveries, endpoints and keys
 * (each record's key and value and an allowance for its index entries,
 * MR_USAGE_*), its live executions, endpoints and active keys.  The
 * account's own records (account, quota, default secret, credit
 * references) are the operator's and are not counted.
 */


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_event.h>

#include <lmdb.h>

#include "mr_store.h"
#include "mr_store_lmdb.h"
#include "mr_metrics.h"
#include "mr_limits.h"
#include "mr_rules.h"


#define MR_STORE_MAXREADERS    512
#define MR_STORE_TICK          1000
#define MR_STORE_READER_CHECK  10
#define MR_STORE_BATCH_MAX     1024
#define MR_STORE_INFLIGHT      10000
#define MR_STORE_LIST_SCAN     1000    /* executions a list looks at */
#define MR_STORE_RESERVE_MIN   (256 * 1024)  /* bytes, however small the map */
#define MR_STORE_SWEEP_ALONE   8       /* expiries that did not fit, a run */


typedef int (*mr_store_step_pt)(MDB_txn *txn, mr_store_op_t *op);



static int mr_store_start_secret(MDB_txn *txn, mr_main_conf_t *mcf);
static int mr_store_open_dbis(MDB_txn *txn, mr_store_t *st);
static int mr_store_txn_begin(unsigned flags, MDB_txn **txn);
static void mr_store_commit_handler(ngx_event_t *ev);
static void mr_store_batch_thread(void *data, ngx_log_t *log);
static void mr_store_batch_done(ngx_event_t *ev);
static void mr_store_tick_handler(ngx_event_t *ev);
static void mr_store_inflight_handler(ngx_event_t *ev);
static void mr_store_wake_handler(ngx_event_t *ev);
static void mr_store_map_pages(void);
static int mr_store_run(ngx_queue_t *ops, mr_store_op_t *one);
static void mr_store_op_reset(mr_store_op_t *op, ngx_uint_t result);
static ngx_int_t mr_store_headroom(MDB_txn *txn);
static int mr_store_apply(MDB_txn *txn, mr_store_op_t *op, ngx_int_t room);
static int mr_store_exec_create(MDB_txn *txn, mr_store_op_t *op,
    ngx_int_t room);
static int mr_store_exec_cancel(MDB_txn *txn, mr_store_op_t *op);
static int mr_store_account_create(MDB_txn *txn, mr_store_op_t *op,
    ngx_int_t room);
static int mr_store_account_adjust(MDB_txn *txn, mr_store_op_t *op,
    ngx_int_t room);
static int mr_store_key_create(MDB_txn *txn, mr_store_op_t *op,
    ngx_int_t room);
static int mr_store_key_update(MDB_txn *txn, mr_store_op_t *op);
static int mr_store_account_limits(MDB_txn *txn, mr_store_op_t *op);
static int mr_store_sweep_run(mr_store_op_t *op);
static int mr_store_sweep_all(MDB_txn *txn, mr_store_op_t *op);
static int mr_store_sweep_step(mr_store_op_t *op, mr_store_step_pt step);
static int mr_store_sweep_txn(mr_store_op_t *op, mr_store_step_pt step);
static void mr_store_sweep_expire(mr_store_op_t *op);
static int mr_store_due_read(MDB_txn *txn, mr_store_op_t *op);
static int mr_store_expire_due(MDB_txn *txn, mr_store_op_t *op);
static int mr_store_expire_later(MDB_txn *txn, mr_store_op_t *op);
static int mr_store_idem_purge(MDB_txn *txn, mr_store_op_t *op);
static int mr_store_exec_purge(MDB_txn *txn, mr_store_op_t *op);
static int mr_store_wh_purge_step(MDB_txn *txn, mr_store_op_t *op);
static int mr_store_event_purge_step(MDB_txn *txn, mr_store_op_t *op);
static int mr_store_key_purge(MDB_txn *txn, mr_store_op_t *op);
static int mr_store_expire(MDB_txn *txn, mr_store_op_t *op, u_char *id);
static int mr_store_key_read(MDB_txn *txn, u_char *key_id, mr_key_t *key,
    ngx_pool_t *pool);
static int mr_store_key_put(MDB_txn *txn, mr_key_t *key);
static int mr_store_key_end(MDB_txn *txn, mr_key_t *key, int64_t was,
    int64_t end);
static int mr_store_quota_put(MDB_txn *txn, u_char *org, mr_quota_t *q);
static int mr_store_count(MDB_txn *txn, mr_verify_t *vf, u_char *org);


mr_store_t  mr_store;


/* the sweep's purges, in their order (mr_store_sweep_run()) */

static mr_store_step_pt  mr_store_purges[] = {
    mr_store_exec_purge,
    mr_store_wh_purge_step,
    mr_store_event_purge_step,
    mr_store_key_purge,
    mr_store_idem_purge,
};

#define MR_STORE_PURGES                                                      \
    (sizeof(mr_store_purges) / sizeof(mr_store_purges[0]))


/* the sweep's work list (one batch at a time runs in a worker) */

static struct {
    u_char                    keys[MR_STORE_SWEEP_MAX]
                                  [8 + MR_ORG_ID_LEN + 256];
    size_t                    lens[MR_STORE_SWEEP_MAX];
    ngx_uint_t                n;             /* due entries read */
    ngx_uint_t                i;             /* the first at hand */
    ngx_uint_t                end;           /* after the last at hand */
    ngx_uint_t                wrote;         /* the step changed the store */
    ngx_uint_t                committed;     /* transactions of this run */
    ngx_uint_t                misfits;       /* and those that failed */
    ngx_uint_t                stepwise;      /* the whole did not fit */
    int                       halt;          /* no transaction can begin */
    mr_store_walk_t           exec_walk;     /* the retention's walk */
} mr_sweep;


int
mr_store_open(MDB_env **envp, mr_main_conf_t *mcf, ngx_log_t *log)
{
    int           rc;
    u_char       *path;
    MDB_env      *env;
    unsigned int  flags;

    path = ngx_alloc(mcf->store_path.len + 1, log);
    if (path == NULL) {
        return ENOMEM;
    }

    ngx_cpystrn(path, mcf->store_path.data, mcf->store_path.len + 1);

    flags = MDB_NOTLS;

    if (mcf->durability == MR_DURABILITY_RELAXED) {
        flags |= MDB_NOSYNC;
    }

    rc = mdb_env_create(&env);
    if (rc != 0) {
        goto failed;
    }

    rc = mdb_env_set_maxdbs(env, 32);
    if (rc == 0) {
        rc = mdb_env_set_maxreaders(env, MR_STORE_MAXREADERS);
    }
    if (rc == 0) {
        rc = mdb_env_set_mapsize(env, mcf->map_size);
    }
    if (rc == 0) {
        rc = mdb_env_open(env, (char *) path, flags, 0600);
    }

    if (rc != 0) {
        mdb_env_close(env);
        goto failed;
    }

    ngx_free(path);
    *envp = env;

    return 0;

failed:

    ngx_log_error(NGX_LOG_EMERG, log, 0,
                  "modelroute_store: cannot open \"%s\": %s",
                  path, mdb_strerror(rc));
    ngx_free(path);

    return rc;
}


static int
mr_store_open_dbis(MDB_txn *txn, mr_store_t *st)
{
    int       rc;
    MDB_val   k, v;
    uint32_t  version;

    if ((rc = mdb_dbi_open(txn, "exec", MDB_CREATE, &st->exec))
        || (rc = mdb_dbi_open(txn, "idem", MDB_CREATE, &st->idem))
        || (rc = mdb_dbi_open(txn, "byorg", MDB_CREATE, &st->byorg))
        || (rc = mdb_dbi_open(txn, "acct", MDB_CREATE, &st->acct))
        || (rc = mdb_dbi_open(txn, "key", MDB_CREATE, &st->key))
        || (rc = mdb_dbi_open(txn, "keyhash", MDB_CREATE, &st->keyhash))
        || (rc = mdb_dbi_open(txn, "acctkey", MDB_CREATE, &st->acctkey))
        || (rc = mdb_dbi_open(txn, "ref", MDB_CREATE, &st->ref))
        || (rc = mdb_dbi_open(txn, "due", MDB_CREATE, &st->due))
        || (rc = mdb_dbi_open(txn, "idemttl", MDB_CREATE, &st->idemttl))
        || (rc = mdb_dbi_open(txn, "whep", MDB_CREATE, &st->whep))
        || (rc = mdb_dbi_open(txn, "orgwh", MDB_CREATE, &st->orgwh))
        || (rc = mdb_dbi_open(txn, "whsecret", MDB_CREATE, &st->whsecret))
        || (rc = mdb_dbi_open(txn, "event", MDB_CREATE, &st->event))
        || (rc = mdb_dbi_open(txn, "dlv", MDB_CREATE, &st->dlv))
        || (rc = mdb_dbi_open(txn, "dlvq", MDB_CREATE, &st->dlvq))
        || (rc = mdb_dbi_open(txn, "whdlv", MDB_CREATE, &st->whdlv))
        || (rc = mdb_dbi_open(txn, "execdlv", MDB_CREATE, &st->execdlv))
        || (rc = mdb_dbi_open(txn, "disp", MDB_CREATE, &st->disp))
        || (rc = mdb_dbi_open(txn, "route", MDB_CREATE, &st->route))
        || (rc = mr_store_ops_open(txn, st))
        || (rc = mdb_dbi_open(txn, "quota", MDB_CREATE, &st->quota))
        || (rc = mdb_dbi_open(txn, "keyend", MDB_CREATE, &st->keyend))
        || (rc = mdb_dbi_open(txn, "meta", MDB_CREATE, &st->meta)))
    {
        return rc;
    }

    k.mv_data = "version";
    k.mv_size = sizeof("version") - 1;

    rc = mdb_get(txn, st->meta, &k, &v);

    if (rc == MDB_NOTFOUND) {
        version = MR_STORE_VERSION;
        v.mv_data = &version;
        v.mv_size = sizeof(uint32_t);
        return mdb_put(txn, st->meta, &k, &v, 0);
    }

    if (rc != 0) {
        return rc;
    }

    if (v.mv_size != sizeof(uint32_t)) {
        return MDB_INCOMPATIBLE;
    }

    ngx_memcpy(&version, v.mv_data, sizeof(uint32_t));

    if (version == MR_STORE_VERSION
        || (ngx_test_config && version == MR_STORE_VERSION - 1))
    {
        /* nginx -t: the start upgrades the previous format */
        return 0;
    }

    return MDB_VERSION_MISMATCH;
}


/* worker: open the environment once, after fork and setuid */

ngx_int_t
mr_store_lmdb_init_process(ngx_cycle_t *cycle, mr_main_conf_t *mcf)
{
    int           rc, dead;
    MDB_txn      *txn;
    MDB_envinfo   info;
    MDB_stat      stat;

    ngx_memzero(&mr_store, sizeof(mr_store_t));
    mr_store.mcf = mcf;
    mr_store.log = cycle->log;
    ngx_queue_init(&mr_store.queue);

    if (mr_store_open(&mr_store.env, mcf, cycle->log) != 0) {
        return NGX_ERROR;
    }

    rc = mdb_reader_check(mr_store.env, &dead);
    if (rc == 0 && dead) {
        ngx_log_error(NGX_LOG_NOTICE, cycle->log, 0,
                      "modelroute_store: cleared %d stale readers", dead);
    }

    /*
     * the tables, the format version and the secrets are made here, by
     * the worker user, when missing: the master never writes the store
     */

    rc = mdb_txn_begin(mr_store.env, NULL, 0, &txn);
    if (rc == 0) {
        rc = mr_store_open_dbis(txn, &mr_store);
        if (rc == 0) {
            rc = mr_store_disp_secrets(txn, mr_store.meta, 0);
        }
        if (rc == 0) {
            rc = mr_store_start_secret(txn, mcf);
        }
        if (rc == 0) {
            rc = mr_store_ops_init(txn, &mr_store);
        }
        if (rc == 0) {
            rc = mdb_txn_commit(txn);
        } else {
            mdb_txn_abort(txn);
        }
    }

    if (rc == MDB_VERSION_MISMATCH) {
        ngx_log_error(NGX_LOG_EMERG, cycle->log, 0,
                      "modelroute_store: \"%V\" was written by another "
                      "version of the module (this one reads format %d)",
                      &mcf->store_path, MR_STORE_VERSION);
        mdb_env_close(mr_store.env);
        mr_store.env = NULL;
        return NGX_ERROR;
    }

    if (rc != 0) {
        ngx_log_error(NGX_LOG_EMERG, cycle->log, 0,
                      "modelroute_store: %s", mdb_strerror(rc));
        mdb_env_close(mr_store.env);
        mr_store.env = NULL;
        return NGX_ERROR;
    }

    mdb_env_stat(mr_store.env, &stat);
    mdb_env_info(mr_store.env, &info);
    mr_store.page_size = stat.ms_psize;
    mr_store.map_pages = info.me_mapsize / stat.ms_psize;

    mr_store.commit_ev.handler = mr_store_commit_handler;
    mr_store.commit_ev.log = cycle->log;
    mr_store.commit_ev.data = &mr_store;

    mr_store.tick_ev.handler = mr_store_tick_handler;
    mr_store.tick_ev.log = cycle->log;
    mr_store.tick_ev.data = &mr_store;
    mr_store.tick_ev.cancelable = 1;

    mr_store.inflight_ev.handler = mr_store_inflight_handler;
    mr_store.inflight_ev.log = cycle->log;
    mr_store.inflight_ev.data = &mr_store;

    mr_store.wake_ev.handler = mr_store_wake_handler;
    mr_store.wake_ev.log = cycle->log;
    mr_store.wake_ev.data = &mr_store;

    ngx_queue_init(&mr_store.waiters);

    ngx_add_timer(&mr_store.tick_ev, MR_STORE_TICK);

    mr_store.synced_ms = mr_now_ms();

#if (NGX_THREADS)

    mr_store.tp = ngx_thread_pool_get(cycle, &mcf->thread_pool);

    if (mr_store.tp) {
        mr_store.task = ngx_thread_task_alloc(cycle->pool, 0);
        if (mr_store.task == NULL) {
            return NGX_ERROR;
        }

        mr_store.task->ctx = &mr_store.batch;
        mr_store.task->handler = mr_store_batch_thread;
        mr_store.task->event.handler = mr_store_batch_done;
        mr_store.task->event.data = &mr_store;
        mr_store.task->event.log = cycle->log;
    }

#endif

    return NGX_OK;
}


/*
 * The dispatch secret of this start (made by the master, see
 * mr_store_check()): every worker of the start's first generation stores
 * the same one before it reads it.  Workers after a reload find none in
 * their configuration and keep the stored one, which the old workers
 * use on the dispatch socket they share.
 */

static int
mr_store_start_secret(MDB_txn *txn, mr_main_conf_t *mcf)
{
    MDB_val  k, v;

    if (!mcf->start) {
        return 0;
    }

    k.mv_data = "dsecret";
    k.mv_size = sizeof("dsecret") - 1;
    v.mv_data = mcf->start_secret;
    v.mv_size = MR_STORE_SECRET_LEN;

    return mdb_put(txn, mr_store.meta, &k, &v, 0);
}


void
mr_store_lmdb_exit_process(ngx_cycle_t *cycle)
{
    if (mr_store.env == NULL) {
        return;
    }

    /* posted events always run before a worker exits: nothing is queued */

    if (mr_store.commit_ev.posted) {
        ngx_delete_posted_event(&mr_store.commit_ev);
    }

    if (mr_store.wake_ev.posted) {
        ngx_delete_posted_event(&mr_store.wake_ev);
    }

    if (mr_store.rtxn) {
        mdb_txn_abort(mr_store.rtxn);
        mr_store.rtxn = NULL;
    }

    if (mr_store.dirty) {
        (void) mdb_env_sync(mr_store.env, 1);
    }

    mdb_env_close(mr_store.env);
    mr_store.env = NULL;
}


static void
mr_store_tick_handler(ngx_event_t *ev)
{
    int  rc, dead;

    if (mr_store.dirty) {
        /* relaxed durability: an fsync batch of its own when idle */
        mr_store_commit_handler(&mr_store.commit_ev);
    }

    if (++mr_store.ticks % MR_STORE_READER_CHECK == 0) {
        rc = mdb_reader_check(mr_store.env, &dead);
        if (rc == 0 && dead) {
            ngx_log_error(NGX_LOG_NOTICE, ev->log, 0,
                          "modelroute_store: cleared %d stale readers", dead);
        }
    }

    if (!ngx_exiting && !ngx_quit && !ngx_terminate) {
        ngx_add_timer(ev, MR_STORE_TICK);
    }
}


static void
mr_store_inflight_handler(ngx_event_t *ev)
{
    ngx_log_error(NGX_LOG_WARN, ev->log, 0,
                  "modelroute_store: a commit has been running for %d s",
                  MR_STORE_INFLIGHT / 1000);

    ngx_add_timer(ev, MR_STORE_INFLIGHT);
}


static void
mr_store_map_pages(void)
{
    MDB_envinfo  info;

    mdb_env_info(mr_store.env, &info);
    mr_store.map_pages = info.me_mapsize / mr_store.page_size;
}


/* a read transaction (the write ones may run in a thread) */

static int
mr_store_txn_begin(unsigned flags, MDB_txn **txn)
{
    int         rc, dead;
    ngx_uint_t  resized;

    resized = 0;

    rc = mdb_txn_begin(mr_store.env, NULL, flags, txn);

    if (rc == MDB_MAP_RESIZED && !mr_store.busy) {
        resized = 1;
        rc = mdb_env_set_mapsize(mr_store.env, 0);
        if (rc == 0) {
            rc = mdb_txn_begin(mr_store.env, NULL, flags, txn);
        }

    } else if (rc == MDB_READERS_FULL) {
        (void) mdb_reader_check(mr_store.env, &dead);
        rc = mdb_txn_begin(mr_store.env, NULL, flags, txn);
    }

    if (rc == 0 && resized) {
        mr_store_map_pages();
    }

    return rc;
}


MDB_txn *
mr_store_read_begin(void)
{
    int  rc;

    if (mr_store.env == NULL) {
        return NULL;
    }

    if (mr_store.rtxn) {
        rc = mdb_txn_renew(mr_store.rtxn);
        if (rc == 0) {
            return mr_store.rtxn;
        }

        mdb_txn_abort(mr_store.rtxn);
        mr_store.rtxn = NULL;
    }

    rc = mr_store_txn_begin(MDB_RDONLY, &mr_store.rtxn);
    if (rc != 0) {
        mr_store.rtxn = NULL;

        if (rc == MDB_MAP_RESIZED) {

            /*
             * another process grew the map, and a commit of this worker
             * is in flight: LMDB cannot map the store again until it is
             * done (see mr_store_wait())
             */

            mr_store.remap = 1;
            return NULL;
        }

        ngx_log_error(NGX_LOG_ERR, mr_store.log, 0,
                      "modelroute_store: read transaction: %s",
                      mdb_strerror(rc));
        return NULL;
    }

    return mr_store.rtxn;
}


void
mr_store_read_end(void)
{
    if (mr_store.rtxn) {
        mdb_txn_reset(mr_store.rtxn);
    }
}


/*
 * A read that finds the map grown by another process while a commit of
 * this worker is in flight (MDB_MAP_RESIZED, and LMDB cannot map the store
 * again while a transaction is open) is not an error: its caller may wait
 * for the commit, after which the store is mapped again and the waiter's
 * handler runs.  NGX_DECLINED: there is nothing to wait for.
 */

ngx_int_t
mr_store_wait(mr_store_waiter_t *w)
{
    if (!mr_store.remap || !mr_store.busy || w->waiting) {
        return NGX_DECLINED;
    }

    ngx_queue_insert_tail(&mr_store.waiters, &w->queue);
    w->waiting = 1;

    return NGX_OK;
}


void
mr_store_wait_cancel(mr_store_waiter_t *w)
{
    if (w->waiting) {
        ngx_queue_remove(&w->queue);
        w->waiting = 0;
    }
}


static void
mr_store_wake_handler(ngx_event_t *ev)
{
    ngx_queue_t         all, *q;
    mr_store_waiter_t  *w;

    if (ngx_queue_empty(&mr_store.waiters)) {
        return;
    }

    /* the handlers may wait again: only those waiting now run */

    all = mr_store.waiters;
    all.next->prev = &all;
    all.prev->next = &all;
    ngx_queue_init(&mr_store.waiters);

    while (!ngx_queue_empty(&all)) {
        q = ngx_queue_head(&all);
        ngx_queue_remove(q);

        w = ngx_queue_data(q, mr_store_waiter_t, queue);
        w->waiting = 0;
        w->handler(w);
    }
}


/*
 * Group commit.
 *
 * Operations submitted during an event-loop turn are committed together
 * in one write transaction by a posted event.  With thread support the
 * transaction and its fsync run in a thread of nginx's thread pool, so
 * the event loop keeps reading requests (which form the next batch) while
 * the disk works; one batch is in flight per worker at a time, and the
 * operations' handlers run on the event loop when it is committed.
 * Without threads the same batch is committed on the event loop.
 */

void
mr_store_lmdb_submit(mr_store_op_t *op)
{
    op->now = mr_now_ms();

    ngx_queue_insert_tail(&mr_store.queue, &op->queue);

    if (!mr_store.busy && !mr_store.commit_ev.posted) {
        ngx_post_event(&mr_store.commit_ev, &ngx_posted_events);
    }
}


/*
 * Whether batches are committed in a thread: the event loop then runs
 * between a batch and the next, whatever their handlers submit at once.
 * Not while posts to the pool fail (a pool shared with other work, e.g.
 * "aio threads", whose queue is full): those batches are committed on
 * the event loop.
 */

ngx_uint_t
mr_store_lmdb_threaded(void)
{
#if (NGX_THREADS)
    return mr_store.task != NULL && !mr_store.unposted;
#else
    return 0;
#endif
}


static void
mr_store_commit_handler(ngx_event_t *ev)
{
    int64_t            now;
    ngx_uint_t         n, sync;
    ngx_queue_t       *q, claims;
    mr_store_op_t     *op;
    mr_store_batch_t  *b;

    if (mr_store.busy) {
        return;
    }

    now = mr_now_ms();

    sync = mr_store.mcf->durability == MR_DURABILITY_RELAXED
           && now - mr_store.synced_ms >= MR_STORE_TICK
           && (mr_store.dirty || !ngx_queue_empty(&mr_store.queue));

    if (ngx_queue_empty(&mr_store.queue) && !sync) {
        return;
    }

    b = &mr_store.batch;

    ngx_queue_init(&b->ops);
    ngx_queue_init(&claims);

    /*
     * a sweep is a batch of its own (mr_store_sweep_run()): the requests
     * before it are answered without waiting for its commits
     */

    for (n = 0; n < MR_STORE_BATCH_MAX; n++) {
        if (ngx_queue_empty(&mr_store.queue)) {
            break;
        }

        q = ngx_queue_head(&mr_store.queue);
        op = ngx_queue_data(q, mr_store_op_t, queue);

        if (op->type == MR_OP_SWEEP) {
            if (n == 0) {
                ngx_queue_remove(q);
                ngx_queue_insert_tail(&b->ops, q);
                n = 1;
            }

            break;
        }

        ngx_queue_remove(q);

        /*
         * claims go last, with the batch's time: they take the deliveries
         * and the executions that the operations before them make, in the
         * same commit (one commit from an event to its sending, not two);
         * a dispatch claim before a webhook claim, which then takes the
         * execution.started deliveries it makes
         */

        if (op->type == MR_OP_DISP_CLAIM || op->type == MR_OP_DLV_CLAIM) {
            op->now = now;

            if (op->type == MR_OP_DISP_CLAIM) {
                ngx_queue_insert_head(&claims, q);

            } else {
                ngx_queue_insert_tail(&claims, q);
            }

            continue;
        }

        ngx_queue_insert_tail(&b->ops, q);
    }

    if (!ngx_queue_empty(&claims)) {
        ngx_queue_add(&b->ops, &claims);
    }

    b->n = n;
    b->rc = 0;
    b->sync = sync;

    mr_store.busy = 1;

#if (NGX_THREADS)

    if (mr_store.task) {
        if (ngx_thread_task_post(mr_store.tp, mr_store.task) == NGX_OK) {

            if (mr_store.unposted) {
                mr_store.unposted = 0;
                ngx_log_error(NGX_LOG_NOTICE, ev->log, 0,
                              "modelroute_store: the thread pool takes "
                              "tasks again");
            }

            /*
             * a timer that is not cancelable: a worker that shuts down
             * waits for the batch and answers its requests
             */

            ngx_add_timer(&mr_store.inflight_ev, MR_STORE_INFLIGHT);
            return;
        }

        /* nginx logs each overflow; this says what follows, once */

        if (!mr_store.unposted) {
            mr_store.unposted = 1;
            ngx_log_error(NGX_LOG_WARN, ev->log, 0,
                          "modelroute_store: committing on the event loop "
                          "until the thread pool takes tasks again");
        }
    }

#endif

    mr_store_batch_thread(b, ev->log);
    mr_store_batch_done(ev);
}


/* in a thread: touches only the environment and the batch */

static void
mr_store_batch_thread(void *data, ngx_log_t *log)
{
    mr_store_batch_t  *b = data;

    int             rc;
    ngx_uint_t      soft;
    ngx_queue_t    *q;
    mr_store_op_t  *op;

    op = b->n ? ngx_queue_data(ngx_queue_head(&b->ops), mr_store_op_t, queue)
              : NULL;

    if (op && op->type == MR_OP_SWEEP) {
        /* alone (mr_store_commit_handler()); MDB_MAP_RESIZED: again */
        b->rc = mr_store_sweep_run(op);

    } else if (b->n) {

        /*
         * a batch of only webhook claims and attempts and dispatch
         * claims, which a system crash may undo without harm (the delivery
         * or the attempt is due again and made again: at least once),
         * skips the fsync of the meta page; LMDB keeps the store intact,
         * and the next full commit makes it durable.  Everything sent was
         * created by a full commit (mr_store_run()).
         */

        soft = (mr_store.mcf->durability == MR_DURABILITY_FULL);

        for (q = ngx_queue_head(&b->ops);
             soft && q != ngx_queue_sentinel(&b->ops);
             q = ngx_queue_next(q))
        {
            op = ngx_queue_data(q, mr_store_op_t, queue);
            soft = (op->type == MR_OP_DLV_CLAIM
                    || op->type == MR_OP_DLV_DONE
                    || op->type == MR_OP_DISP_CLAIM);
        }

        mr_store.soft = soft;

        b->rc = mr_store_run(&b->ops, NULL);

        if (b->rc != 0 && b->rc != MDB_MAP_RESIZED && b->n > 1) {

            /*
             * the batch failed as a whole (MDB_MAP_FULL, say): commit
             * each operation on its own so that only those that do not
             * fit fail
             */

            for (q = ngx_queue_head(&b->ops);
                 q != ngx_queue_sentinel(&b->ops);
                 q = ngx_queue_next(q))
            {
                op = ngx_queue_data(q, mr_store_op_t, queue);
                (void) mr_store_run(NULL, op);
            }
        }

        if (mr_store.soft) {
            mr_store.soft = 0;
            (void) mdb_env_set_flags(mr_store.env, MDB_NOMETASYNC, 0);
        }
    }

    if (b->sync) {
        rc = mdb_env_sync(mr_store.env, 1);
        if (rc != 0) {
            b->rc = rc;
        }
    }
}


static void
mr_store_batch_done(ngx_event_t *ev)
{
    int                rc;
    ngx_uint_t         level, emitted, ready;
    ngx_queue_t       *q;
    mr_store_op_t     *op;
    mr_store_batch_t  *b;

    rc = 0;
    b = &mr_store.batch;
    emitted = 0;
    ready = 0;

    mr_store.busy = 0;

    if (mr_store.inflight_ev.timer_set) {
        ngx_del_timer(&mr_store.inflight_ev);
    }

    if (b->rc == MDB_MAP_RESIZED || mr_store.remap) {

        /* the map grew in another process; no transaction is open here */

        rc = mdb_env_set_mapsize(mr_store.env, 0);
        if (rc == 0) {
            mr_store_map_pages();
        }

        mr_store.remap = 0;

        /* the reads that waited for this run again */

        if (!ngx_queue_empty(&mr_store.waiters) && !mr_store.wake_ev.posted)
        {
            ngx_post_event(&mr_store.wake_ev, &ngx_posted_events);
        }
    }

    if (b->rc == MDB_MAP_RESIZED) {

        if (rc == 0) {

            /* again, ahead of what arrived meanwhile */

            while (!ngx_queue_empty(&mr_store.queue)) {
                q = ngx_queue_head(&mr_store.queue);
                ngx_queue_remove(q);
                ngx_queue_insert_tail(&b->ops, q);
            }

            while (!ngx_queue_empty(&b->ops)) {
                q = ngx_queue_head(&b->ops);
                ngx_queue_remove(q);
                ngx_queue_insert_tail(&mr_store.queue, q);
            }

            mr_store_commit_handler(ev);
            return;
        }

        b->rc = rc;

        for (q = ngx_queue_head(&b->ops);
             q != ngx_queue_sentinel(&b->ops);
             q = ngx_queue_next(q))
        {
            op = ngx_queue_data(q, mr_store_op_t, queue);
            op->result = MR_R_INTERNAL;
        }
    }

    if (b->rc != 0) {
        level = (b->rc == MDB_MAP_FULL) ? NGX_LOG_WARN : NGX_LOG_ERR;
        ngx_log_error(level, ev->log, 0, "modelroute_store: commit of %ui "
                      "operations failed: %s", b->n, mdb_strerror(b->rc));

    } else if (b->sync) {
        mr_store.dirty = 0;
        mr_store.synced_ms = mr_now_ms();

    }

    if (b->n && !(b->sync && b->rc == 0)) {
        /* one by one after a failed batch, some may have been committed */
        mr_store.dirty = (mr_store.mcf->durability
                          == MR_DURABILITY_RELAXED);
    }

    ngx_log_debug1(NGX_LOG_DEBUG_HTTP, ev->log, 0,
                   "modelroute_store: batch of %ui done", b->n);

    while (!ngx_queue_empty(&b->ops)) {
        q = ngx_queue_head(&b->ops);
        ngx_queue_remove(q);

        op = ngx_queue_data(q, mr_store_op_t, queue);

        if (op->emitted && op->result == MR_R_OK) {
            emitted = 1;
        }

        if (op->ready && op->type != MR_OP_DISP_CLAIM) {
            ready = 1;
        }

        mr_metrics_op_done(op);

        op->handler(op);
    }

    if (emitted && mr_store_deliveries_hook) {
        mr_store_deliveries_hook();
    }

    if (ready && mr_store_dispatch_hook) {
        mr_store_dispatch_hook();
    }

    /* what arrived meanwhile is the next batch */

    if (!ngx_queue_empty(&mr_store.queue) && !mr_store.commit_ev.posted) {
        ngx_post_event(&mr_store.commit_ev, &ngx_posted_events);
    }
}


/*
 * Runs the operations of a queue (or one operation) in one write
 * transaction and commits it.  Outcomes are in op->result; a non-zero
 * return means nothing was stored.
 */

static int
mr_store_run(ngx_queue_t *ops, mr_store_op_t *one)
{
    int             rc;
    ngx_int_t       room;
    MDB_txn        *txn;
    ngx_queue_t    *q;
    mr_store_op_t  *op;

    mr_metrics_txn_begin();

    rc = mdb_txn_begin(mr_store.env, NULL, 0, &txn);
    if (rc != 0) {
        goto failed;
    }

    room = mr_store_headroom(txn);

    for (q = one ? NULL : ngx_queue_head(ops);
         one || q != ngx_queue_sentinel(ops);
         q = ngx_queue_next(q))
    {
        op = one ? one : ngx_queue_data(q, mr_store_op_t, queue);

        mr_store_op_reset(op, MR_R_OK);

        rc = mr_store_apply(txn, op, room);
        if (rc != 0) {
            mdb_txn_abort(txn);
            goto failed;
        }

        if (one) {
            break;
        }
    }

    /*
     * a soft batch that made deliveries (a claim that emitted
     * execution.started, say) or ended an execution (a claim that found
     * every breaker open) is committed in full: what is sent, and what a
     * client may read, must have been made durable
     */

    if (mr_store.soft) {
        for (q = one ? NULL : ngx_queue_head(ops);
             one || q != ngx_queue_sentinel(ops);
             q = ngx_queue_next(q))
        {
            op = one ? one : ngx_queue_data(q, mr_store_op_t, queue);

            if (op->emitted || op->full) {
                mr_store.soft = 0;
                (void) mdb_env_set_flags(mr_store.env, MDB_NOMETASYNC, 0);
                break;
            }

            if (one) {
                break;
            }
        }

        if (mr_store.soft) {
            (void) mdb_env_set_flags(mr_store.env, MDB_NOMETASYNC, 1);
        }
    }

    rc = mdb_txn_commit(txn);
    if (rc == 0) {
        mr_metrics_txn_end(0, ops, one);
        return 0;
    }

failed:

    for (q = one ? NULL : ngx_queue_head(ops);
         one || q != ngx_queue_sentinel(ops);
         q = ngx_queue_next(q))
    {
        op = one ? one : ngx_queue_data(q, mr_store_op_t, queue);

        mr_store_op_reset(op, (rc == MDB_MAP_FULL) ? MR_R_STORAGE_FULL
                                                   : MR_R_INTERNAL);
        if (one) {
            break;
        }
    }

    mr_metrics_txn_end(rc, ops, one);

    return rc;
}


/* before an operation is applied, and when its transaction is lost */

static void
mr_store_op_reset(mr_store_op_t *op, ngx_uint_t result)
{
    mr_dlv_job_t   *job;
    mr_disp_job_t  *djob;

    op->result = result;
    op->emitted = 0;
    op->ready = 0;
    op->full = 0;
    op->disp.claimed = 0;
    op->disp.more = 0;
    op->disp.rescan = 0;
    op->disp.next_known = 0;
    op->disp.past = 0;
    op->wh.claimed = 0;

    while (op->disp.jobs) {
        djob = op->disp.jobs;
        op->disp.jobs = djob->next;
        ngx_free(djob);
    }

    /* claims that were not committed are not claims */

    while (op->wh.jobs) {
        job = op->wh.jobs;
        op->wh.jobs = job->next;
        ngx_free(job);
    }
}


/*
 * The reserve: once the store is within 1/8 of its map size (at least
 * MR_STORE_RESERVE_MIN: large records need runs of free pages), only work
 * that frees space or releases money may write (cancel, expiry, an
 * attempt's outcome, the sweeper's purges, a delivery's attempt and its
 * claim, revoking a key, a debit); new data is refused with
 * MR_R_STORAGE_FULL (mr_store_apply() and the operations it calls).
 */

static ngx_int_t
mr_store_headroom(MDB_txn *txn)
{
    int           rc;
    size_t        used, reserve, nfree;
    MDB_val       k, v;
    MDB_txn      *rtxn;
    MDB_cursor   *cur;
    MDB_envinfo   info;

    mdb_env_info(mr_store.env, &info);

    reserve = ngx_max(mr_store.map_pages / 8,
                      MR_STORE_RESERVE_MIN / mr_store.page_size);

    if (info.me_last_pgno + 1 + reserve < mr_store.map_pages) {
        return 1;
    }

    /*
     * near the end of the map: count the pages on the free list, which
     * LMDB lets only a read-only transaction open
     */

    nfree = 0;

    rc = mdb_txn_begin(mr_store.env, NULL, MDB_RDONLY, &rtxn);
    if (rc != 0) {
        return 1;    /* unknown: MDB_MAP_FULL will tell */
    }

    rc = mdb_cursor_open(rtxn, 0, &cur);
    if (rc != 0) {
        mdb_txn_abort(rtxn);
        return 1;
    }

    while ((rc = mdb_cursor_get(cur, &k, &v, MDB_NEXT)) == 0) {
        if (v.mv_size >= sizeof(size_t)) {
            nfree += *(size_t *) v.mv_data;
        }
    }

    mdb_cursor_close(cur);
    mdb_txn_abort(rtxn);

    used = info.me_last_pgno + 1 - ngx_min(nfree, info.me_last_pgno + 1);

    return used + reserve < mr_store.map_pages;
}


static int
mr_store_apply(MDB_txn *txn, mr_store_op_t *op, ngx_int_t room)
{
    if (!room
        && (op->type == MR_OP_KEY_ROTATE || op->type == MR_OP_WH_TEST
            || op->type == MR_OP_DLV_RETRY || op->type == MR_OP_DISP_CLAIM))
    {
        /* new data, or new work that makes data (an attempt's result) */
        op->result = MR_R_STORAGE_FULL;
        return 0;
    }

    switch (op->type) {

    case MR_OP_EXEC_CREATE:
        return mr_store_exec_create(txn, op, room);

    case MR_OP_EXEC_CANCEL:
        return mr_store_exec_cancel(txn, op);

    case MR_OP_ACCOUNT_CREATE:
        return mr_store_account_create(txn, op, room);

    case MR_OP_ACCOUNT_ADJUST:
        return mr_store_account_adjust(txn, op, room);

    case MR_OP_KEY_CREATE:
        return mr_store_key_create(txn, op, room);

    case MR_OP_ACCOUNT_LIMITS:
        return mr_store_account_limits(txn, op);

    case MR_OP_SWEEP:
        /* a batch of its own (mr_store_sweep_run()) */
        return EINVAL;

    case MR_OP_WH_CREATE:
    case MR_OP_WH_UPDATE:
    case MR_OP_WH_DELETE:
    case MR_OP_WH_TEST:
    case MR_OP_WH_SECRET:
    case MR_OP_DLV_RETRY:
    case MR_OP_DLV_CLAIM:
    case MR_OP_DLV_DONE:
        return mr_store_wh_apply(txn, op, room);

    case MR_OP_DISP_CLAIM:
    case MR_OP_DISP_DONE:
    case MR_OP_DISP_CALLBACK:
        return mr_store_disp_apply(txn, op);

    case MR_OP_OPS:
        return mr_store_ops_apply(txn, op, room);

    default: /* MR_OP_KEY_REVOKE, MR_OP_KEY_ROTATE */
        return mr_store_key_update(txn, op);
    }
}


static int
mr_store_exec_create(MDB_txn *txn, mr_store_op_t *op, ngx_int_t room)
{
    int            rc;
    u_char        *p;
    size_t         klen;
    MDB_val        k, v;
    mr_exec_t     *exec;
    ngx_uint_t     ok;
    mr_account_t   acct;
    u_char         ikey[MR_ORG_ID_LEN + 256];
    u_char         tkey[8 + MR_ORG_ID_LEN + 256];
    u_char         ival[MR_EXEC_ID_LEN + 8];
    u_char         okey[MR_ORG_ID_LEN + 8 + MR_EXEC_ID_LEN];

    exec = &op->exec;

    if (op->idem_key.len > 255) {
        op->result = MR_R_INTERNAL;
        return 0;
    }

    /* the idempotency key first: a replay needs no room and no balance */

    p = ngx_cpymem(ikey, exec->rec.org, MR_ORG_ID_LEN);
    p = ngx_cpymem(p, op->idem_key.data, op->idem_key.len);
    klen = p - ikey;

    k.mv_data = ikey;
    k.mv_size = klen;

    rc = mdb_get(txn, mr_store.idem, &k, &v);

    if (rc == 0 && v.mv_size == sizeof(ival)) {
        mr_exec_t  old;

        ngx_memcpy(ival, v.mv_data, sizeof(ival));

        if (mr_rule_idem_live((int64_t) mr_be64_get(ival + MR_EXEC_ID_LEN),
                              op->idem_ttl_ms, exec->rec.created_ms))
        {
            rc = mr_store_exec_read(txn, ival, &old, op->pool);

            if (rc == 0) {
                mr_rule_idem_replay(op, &old);
                return 0;
            }

            if (rc != MDB_NOTFOUND) {
                return rc;
            }

            /* the execution was purged: the key is free again */
        }

    } else if (rc != 0 && rc != MDB_NOTFOUND) {
        return rc;
    }

    if (!room) {
        op->result = MR_R_STORAGE_FULL;
        return 0;
    }

    /* what the account keeps: a live execution more, and its bytes */

    rc = mr_store_quota_check(txn, op, exec->rec.org,
                              (int64_t) mr_rule_exec_size(exec),
                              MR_LIMIT_EXECUTIONS, 1, &ok);
    if (rc != 0 || !ok) {
        return rc;
    }

    rc = mr_store_account_read(txn, exec->rec.org, &acct, NULL);
    if (rc == MDB_NOTFOUND) {
        op->result = MR_R_NOT_FOUND;
        return 0;
    }

    if (rc != 0) {
        return rc;
    }

    if (!mr_rule_hold(op, &acct, exec->rec.hold)) {
        return 0;
    }

    rc = mr_store_account_put(txn, &acct);
    if (rc != 0) {
        return rc;
    }

    rc = mr_store_disp_add(txn, op, exec);
    if (rc != 0) {
        return rc;
    }

    rc = mr_store_exec_put(txn, exec);
    if (rc != 0) {
        return rc;
    }

    ngx_memcpy(ival, exec->id, MR_EXEC_ID_LEN);
    mr_be64_put(ival + MR_EXEC_ID_LEN, (uint64_t) exec->rec.created_ms);

    k.mv_data = ikey;
    k.mv_size = klen;
    v.mv_data = ival;
    v.mv_size = sizeof(ival);

    rc = mdb_put(txn, mr_store.idem, &k, &v, 0);
    if (rc != 0) {
        return rc;
    }

    /* the idempotency key by age, for the sweeper */

    mr_be64_put(tkey, (uint64_t) exec->rec.created_ms);
    ngx_memcpy(tkey + 8, ikey, klen);

    k.mv_data = tkey;
    k.mv_size = 8 + klen;
    v.mv_data = "";
    v.mv_size = 0;

    rc = mdb_put(txn, mr_store.idemttl, &k, &v, 0);
    if (rc != 0) {
        return rc;
    }

    rc = mr_store_due_put(txn, exec, 1);
    if (rc != 0) {
        return rc;
    }

    p = ngx_cpymem(okey, exec->rec.org, MR_ORG_ID_LEN);
    mr_be64_put(p, (uint64_t) exec->rec.order);
    ngx_memcpy(p + 8, exec->id, MR_EXEC_ID_LEN);

    k.mv_data = okey;
    k.mv_size = sizeof(okey);

    return mdb_put(txn, mr_store.byorg, &k, &v, 0);
}


/* an open execution's entry in the deadline index */

int
mr_store_due_put(MDB_txn *txn, mr_exec_t *exec, ngx_uint_t add)
{
    int64_t  at;

    at = add ? 0 : exec->rec.expires_ms;

    return mr_store_time_index(txn, mr_store.due, exec->id, MR_EXEC_ID_LEN,
                               &at, add ? exec->rec.expires_ms : 0, NULL);
}


static int
mr_store_exec_cancel(MDB_txn *txn, mr_store_op_t *op)
{
    int            rc;
    u_char        *p, *buf;
    mr_exec_t     *exec;
    mr_account_t   acct;

    exec = &op->exec;

    rc = mr_store_exec_read(txn, exec->id, exec, op->pool);

    if (rc == MDB_NOTFOUND) {
        op->result = MR_R_NOT_FOUND;
        return 0;
    }

    if (rc != 0) {
        return rc;
    }

    if (!mr_rule_cancel_check(op, exec)) {
        return 0;
    }

    rc = mr_store_account_read(txn, exec->rec.org, &acct, NULL);
    if (rc != 0) {
        return rc == MDB_NOTFOUND ? MDB_CORRUPTED : rc;
    }

    /* release the whole hold, charge nothing */

    mr_rule_cancel(exec, &acct, op->now);

    rc = mr_store_account_put(txn, &acct);
    if (rc != 0) {
        return rc;
    }

    /*
     * an attempt in flight is recorded: the attempts are then in buf, and
     * go to the operation's pool, for its answer
     */

    buf = NULL;

    rc = mr_store_disp_release(txn, op, exec, &buf);
    if (rc != 0) {
        goto done;
    }

    if (buf) {
        p = ngx_pnalloc(op->pool, exec->seg[MR_SEG_ATTEMPTS].len);
        if (p == NULL) {
            rc = ENOMEM;
            goto done;
        }

        ngx_memcpy(p, exec->seg[MR_SEG_ATTEMPTS].data,
                   exec->seg[MR_SEG_ATTEMPTS].len);
        exec->seg[MR_SEG_ATTEMPTS].data = p;
    }

    rc = mr_store_due_put(txn, exec, 0);

    if (rc == 0) {
        rc = mr_store_exec_put(txn, exec);
    }

    if (rc == 0) {
        rc = mr_store_emit(txn, op, exec, "execution.cancelled");
    }

done:

    if (buf) {
        ngx_free(buf);
    }

    return rc;
}


static int
mr_store_account_create(MDB_txn *txn, mr_store_op_t *op, ngx_int_t room)
{
    int      rc;
    MDB_val  k, v;

    if (!room) {
        op->result = MR_R_STORAGE_FULL;
        return 0;
    }

    k.mv_data = op->account.id;
    k.mv_size = MR_ORG_ID_LEN;

    rc = mdb_get(txn, mr_store.acct, &k, &v);
    if (rc == 0) {
        /* 96 random bits collided: refuse rather than overwrite */
        op->result = MR_R_INTERNAL;
        return 0;
    }

    if (rc != MDB_NOTFOUND) {
        return rc;
    }

    rc = mr_store_account_put(txn, &op->account);
    if (rc != 0) {
        return rc;
    }

    /* its quota: nothing used yet, the limits asked for or the defaults */

    mr_rule_account_quota(op);

    return mr_store_quota_put(txn, op->account.id, &op->quota);
}


static int
mr_store_account_adjust(MDB_txn *txn, mr_store_op_t *op, ngx_int_t room)
{
    int       rc;
    u_char   *p;
    int64_t   prev;
    MDB_val   k, v;
    u_char    rkey[MR_ORG_ID_LEN + 256];
    u_char    rval[8];

    p = rkey;

    rc = mr_store_account_read(txn, op->org, &op->account, op->pool);
    if (rc == MDB_NOTFOUND) {
        op->result = MR_R_NOT_FOUND;
        return 0;
    }

    if (rc == 0) {
        rc = mr_store_quota_read(txn, op->org, &op->quota);
    }

    if (rc != 0) {
        return rc;
    }

    if (op->reference.len) {
        p = ngx_cpymem(rkey, op->org, MR_ORG_ID_LEN);
        p = ngx_cpymem(p, op->reference.data,
                       ngx_min(op->reference.len, 255));

        k.mv_data = rkey;
        k.mv_size = p - rkey;

        rc = mdb_get(txn, mr_store.ref, &k, &v);

        if (rc == 0 && v.mv_size == sizeof(rval)) {
            ngx_memcpy(rval, v.mv_data, sizeof(rval));
            prev = (int64_t) mr_be64_get(rval);

            (void) mr_rule_credit_replay(op, prev);
            return 0;
        }

        if (rc != 0 && rc != MDB_NOTFOUND) {
            return rc;
        }
    }

    if (!mr_rule_adjust(op, &op->account, room)) {
        return 0;
    }

    rc = mr_store_account_put(txn, &op->account);
    if (rc != 0) {
        return rc;
    }

    if (op->reference.len == 0) {
        return 0;
    }

    mr_be64_put(rval, (uint64_t) op->amount);

    k.mv_data = rkey;
    k.mv_size = p - rkey;
    v.mv_data = rval;
    v.mv_size = sizeof(rval);

    return mdb_put(txn, mr_store.ref, &k, &v, 0);
}


/* the operator sets an account's limits (a change, allowed in the reserve) */

static int
mr_store_account_limits(MDB_txn *txn, mr_store_op_t *op)
{
    int  rc;

    rc = mr_store_account_read(txn, op->org, &op->account, op->pool);
    if (rc == MDB_NOTFOUND) {
        op->result = MR_R_NOT_FOUND;
        return 0;
    }

    if (rc == 0) {
        rc = mr_store_quota_read(txn, op->org, &op->quota);
    }

    if (rc != 0) {
        return rc;
    }

    mr_rule_account_limits(op);

    return mr_store_quota_put(txn, op->org, &op->quota);
}


static int
mr_store_key_create(MDB_txn *txn, mr_store_op_t *op, ngx_int_t room)
{
    int           rc;
    ngx_uint_t    ok;
    mr_account_t  acct;

    if (!room) {
        op->result = MR_R_STORAGE_FULL;
        return 0;
    }

    rc = mr_store_account_read(txn, op->key.rec.org, &acct, NULL);
    if (rc == MDB_NOTFOUND) {
        op->result = MR_R_NOT_FOUND;
        return 0;
    }

    if (rc != 0) {
        return rc;
    }

    rc = mr_store_quota_check(txn, op, op->key.rec.org,
                              (int64_t) mr_rule_key_size(&op->key),
                              MR_LIMIT_KEYS, 1, &ok);
    if (rc != 0 || !ok) {
        return rc;
    }

    return mr_store_key_put(txn, &op->key);
}


/*
 * Revoke, or rotate: a new key, and the old one ends after the grace
 * (the rules of mr_rule_key_rotate_check() and the next ones).
 */

static int
mr_store_key_update(MDB_txn *txn, mr_store_op_t *op)
{
    int         rc;
    int64_t     until, was;
    mr_key_t    caller;
    ngx_uint_t  ok;

    static u_char  zero[MR_KEY_ID_LEN];

    rc = mr_store_key_read(txn, op->key_id, &op->old_key, op->pool);
    if (rc == MDB_NOTFOUND) {
        op->result = MR_R_NOT_FOUND;
        return 0;
    }

    if (rc != 0) {
        return rc;
    }

    was = op->old_key.rec.valid_until_ms;

    if (op->type == MR_OP_KEY_REVOKE) {
        if (!mr_rule_key_revoke(op, &op->old_key)) {
            return 0;
        }

        rc = mr_store_key_put(txn, &op->old_key);
        if (rc != 0) {
            return rc;
        }

        /* ended now: purged after the retention */

        return mr_store_key_end(txn, &op->old_key, was, op->now);
    }

    /* MR_OP_KEY_ROTATE: only within the caller's account */

    if (!mr_rule_key_rotate_check(op, &op->old_key)) {
        return 0;
    }

    if (ngx_memcmp(op->caller_key_id, zero, MR_KEY_ID_LEN) != 0) {
        rc = mr_store_key_read(txn, op->caller_key_id, &caller, NULL);
        if (rc != 0 && rc != MDB_NOTFOUND) {
            return rc;
        }

        if (!mr_rule_key_caller(op, rc == MDB_NOTFOUND ? NULL : &caller)) {
            return 0;
        }
    }

    if (!mr_rule_key_rotated(op, &op->old_key)) {
        return 0;
    }

    /* a key record more (the count of active keys does not change) */

    rc = mr_store_quota_check(txn, op, op->org,
                              (int64_t) mr_rule_key_size(&op->old_key),
                              MR_LIMIT_KEYS, 0, &ok);
    if (rc != 0 || !ok) {
        return rc;
    }

    until = mr_rule_key_rotate(op);

    rc = mr_store_key_put(txn, &op->old_key);
    if (rc == 0) {
        rc = mr_store_key_end(txn, &op->old_key, 0, until);
    }

    if (rc != 0) {
        return rc;
    }

    return mr_store_key_put(txn, &op->key);
}


/* moves a key's entry in the index of ended keys; 0: none */

static int
mr_store_key_end(MDB_txn *txn, mr_key_t *key, int64_t was, int64_t end)
{
    int      rc;
    MDB_val  k, v;
    u_char   ekey[8 + MR_KEY_ID_LEN];

    ngx_memcpy(ekey + 8, key->rec.key_id, MR_KEY_ID_LEN);

    k.mv_data = ekey;
    k.mv_size = sizeof(ekey);

    if (was) {
        mr_be64_put(ekey, (uint64_t) was);

        rc = mdb_del(txn, mr_store.keyend, &k, NULL);
        if (rc != 0 && rc != MDB_NOTFOUND) {
            return rc;
        }
    }

    if (end == 0) {
        return 0;
    }

    mr_be64_put(ekey, (uint64_t) end);

    v.mv_data = key->rec.org;
    v.mv_size = MR_ORG_ID_LEN;

    return mdb_put(txn, mr_store.keyend, &k, &v, 0);
}


/*
 * The sweeper's work, a batch of its own, each step bounded by op->limit:
 * terminal executions, finished deliveries, events and ended keys past
 * the retention are purged; idempotency keys past their lifetime are
 * freed; executions past their deadline become EXPIRED with their hold
 * released.  All of it is one write transaction when it fits.
 *
 * In a full store this is the work that must still run.  LMDB writes
 * what a transaction changes to free pages, the pages it frees are free
 * again two commits later (the snapshot before stays whole), and a
 * commit needs a few pages more for the list of those it freed.  So when
 * the whole does not fit, each step is a transaction of its own,
 * committed before the next begins: the purges first (what they free is
 * there for the expiries), and a step that does not fit (MDB_MAP_FULL) is
 * made again on half as many entries, down to one.  The expiries go in
 * chunks that halve until they fit (and double again after one that
 * did); one that does not fit alone waits (its index entry moves
 * MR_STORE_EXPIRE_RETRY ahead), is tried once more after that commit,
 * and never holds up the ones behind it; after MR_STORE_SWEEP_ALONE of
 * those, the rest wait for the next run, which goes step by step at once
 * (it skips the whole that did not fit) until a run fits at every first
 * try.  Two workers (or an old and a new one during a reload) never
 * expire the same execution twice: the second finds it gone from the
 * index.
 *
 * Returns MDB_MAP_RESIZED when the map must grow before a transaction can
 * begin (the batch then runs again), else 0; op->result is MR_R_INTERNAL
 * if no transaction could begin and nothing was committed.
 */

static int
mr_store_sweep_run(mr_store_op_t *op)
{
    ngx_uint_t  i;

    mr_store_op_reset(op, MR_R_OK);

    op->expired = 0;
    op->purged = 0;
    op->scanned = 0;
    op->more = 0;
    op->failed = 0;

    op->limit = ngx_min(op->limit, MR_STORE_SWEEP_MAX);

    mr_sweep.halt = 0;
    mr_sweep.committed = 0;
    mr_sweep.misfits = 0;

    /*
     * the whole in one transaction, unless the last run did not fit so
     * (a full store would fail it again, run after run)
     */

    if (!mr_sweep.stepwise
        && mr_store_sweep_txn(op, mr_store_sweep_all) != 0
        && !mr_sweep.halt)
    {
        mr_sweep.stepwise = 1;
        mr_sweep.misfits = 0;        /* the steps' own count from here */
    }

    if (mr_sweep.stepwise && !mr_sweep.halt) {

        for (i = 0; i < MR_STORE_PURGES; i++) {
            if (mr_store_sweep_step(op, mr_store_purges[i]) != 0
                && !mr_sweep.halt)
            {
                op->failed++;
            }
        }

        mr_store_sweep_expire(op);

        /* all of it fitted at the first try: the next run tries the whole */
        mr_sweep.stepwise = (mr_sweep.misfits != 0);
    }

    if (mr_sweep.halt && mr_sweep.halt != MDB_MAP_RESIZED) {
        if (mr_sweep.committed == 0) {
            op->result = MR_R_INTERNAL;

        } else {
            op->failed++;
        }
    }

    if (op->failed) {
        /* what did not fit waits for the next run, not for the next ms */
        op->more = 0;
    }

    return (mr_sweep.halt == MDB_MAP_RESIZED) ? MDB_MAP_RESIZED : 0;
}


/* the whole sweep in one transaction */

static int
mr_store_sweep_all(MDB_txn *txn, mr_store_op_t *op)
{
    int         rc;
    ngx_uint_t  i;

    rc = 0;

    for (i = 0; rc == 0 && i < MR_STORE_PURGES; i++) {
        rc = mr_store_purges[i](txn, op);
    }

    if (rc == 0) {
        rc = mr_store_due_read(txn, op);
    }

    if (rc == 0) {
        mr_sweep.i = 0;
        mr_sweep.end = mr_sweep.n;

        rc = mr_store_expire_due(txn, op);
    }

    return rc;
}


/* a step on at most op->limit entries, or on fewer until it fits */

static int
mr_store_sweep_step(mr_store_op_t *op, mr_store_step_pt step)
{
    int         rc;
    ngx_uint_t  limit;

    limit = op->limit;

    for ( ;; ) {
        rc = mr_store_sweep_txn(op, step);

        if (rc == 0 || mr_sweep.halt || op->limit == 1) {
            break;
        }

        op->limit /= 2;
    }

    op->limit = limit;

    return rc;
}


/*
 * One transaction: all of it, or none of it (the counters and the
 * retention's walks as they were).  One that changed nothing is not
 * committed.
 */

static int
mr_store_sweep_txn(mr_store_op_t *op, mr_store_step_pt step)
{
    int               rc;
    MDB_txn          *txn;
    ngx_uint_t        expired, purged, scanned, emitted, ready, more;
    mr_store_walk_t   exec_walk, dlv_walk;

    if (mr_sweep.halt) {
        return mr_sweep.halt;
    }

    expired = op->expired;
    purged = op->purged;
    scanned = op->scanned;
    emitted = op->emitted;
    ready = op->ready;
    more = op->more;
    exec_walk = mr_sweep.exec_walk;
    dlv_walk = mr_store_dlv_walk;

    mr_sweep.wrote = 0;

    mr_metrics_txn_begin();

    rc = mdb_txn_begin(mr_store.env, NULL, 0, &txn);
    if (rc != 0) {
        mr_sweep.halt = rc;
        mr_metrics_txn_end(rc, NULL, op);
        return rc;
    }

    rc = step(txn, op);

    if (rc == 0 && !mr_sweep.wrote
        && op->expired == expired && op->purged == purged)
    {
        mdb_txn_abort(txn);
        mr_metrics_txn_discard();
        return 0;
    }

    if (rc == 0) {
        rc = mdb_txn_commit(txn);

    } else {
        mdb_txn_abort(txn);
    }

    mr_metrics_txn_end(rc, NULL, op);

    if (rc == 0) {
        mr_sweep.committed++;
        return 0;
    }

    mr_sweep.misfits++;

    op->expired = expired;
    op->purged = purged;
    op->scanned = scanned;
    op->emitted = emitted;
    op->ready = ready;
    op->more = more;
    mr_sweep.exec_walk = exec_walk;
    mr_store_dlv_walk = dlv_walk;

    return rc;
}


/*
 * Deadlines, step by step: the due executions in chunks that halve until
 * they fit; one that does not fit alone waits.  After MR_STORE_SWEEP_ALONE
 * of those the run ends: the ones not tried yet are first in the next.
 */

static void
mr_store_sweep_expire(mr_store_op_t *op)
{
    ngx_uint_t  chunk, alone;

    mr_sweep.n = 0;

    if (mr_store_sweep_txn(op, mr_store_due_read) != 0) {
        return;
    }

    mr_sweep.i = 0;
    chunk = mr_sweep.n;
    alone = 0;

    while (mr_sweep.i < mr_sweep.n && !mr_sweep.halt) {

        if (alone == MR_STORE_SWEEP_ALONE) {
            /* the store is that full: the rest, untried, come first next */
            break;
        }

        chunk = ngx_min(chunk, mr_sweep.n - mr_sweep.i);
        mr_sweep.end = mr_sweep.i + chunk;

        if (mr_store_sweep_txn(op, mr_store_expire_due) == 0) {
            mr_sweep.i = mr_sweep.end;
            chunk *= 2;
            continue;
        }

        if (chunk > 1) {
            chunk /= 2;
            continue;
        }

        /*
         * alone, it did not fit: it waits, and that commit makes free
         * what the one before it freed; so it is tried once more
         */

        if (mr_store_sweep_txn(op, mr_store_expire_later) == 0) {
            mr_be64_put(mr_sweep.keys[mr_sweep.i],
                        (uint64_t) (op->now + MR_STORE_EXPIRE_RETRY));
            mr_sweep.end = mr_sweep.i + 1;

            if (mr_store_sweep_txn(op, mr_store_expire_due) == 0) {
                mr_sweep.i++;
                chunk = 2;
                continue;
            }
        }

        if (!mr_sweep.halt) {
            op->failed++;
            alone++;
        }

        mr_sweep.i++;
    }
}


/* the due entries, at most op->limit, into mr_sweep.keys */

static int
mr_store_due_read(MDB_txn *txn, mr_store_op_t *op)
{
    int          rc;
    MDB_val      k, v;
    ngx_uint_t   n;
    MDB_cursor  *cur;

    n = 0;

    rc = mdb_cursor_open(txn, mr_store.due, &cur);
    if (rc != 0) {
        return rc;
    }

    for (rc = mdb_cursor_get(cur, &k, &v, MDB_FIRST);
         rc == 0 && n < op->limit;
         rc = mdb_cursor_get(cur, &k, &v, MDB_NEXT))
    {
        if (k.mv_size != 8 + MR_EXEC_ID_LEN) {
            continue;
        }

        if ((int64_t) mr_be64_get(k.mv_data) > op->now) {
            break;
        }

        ngx_memcpy(mr_sweep.keys[n], k.mv_data, k.mv_size);
        n++;
    }

    mdb_cursor_close(cur);

    if (rc != 0 && rc != MDB_NOTFOUND) {
        return rc;
    }

    op->more |= (n == op->limit);
    mr_sweep.n = n;

    return 0;
}


/* the due entries mr_sweep.keys[i .. end): expired, out of the index */

static int
mr_store_expire_due(MDB_txn *txn, mr_store_op_t *op)
{
    int         rc;
    u_char     *key;
    MDB_val     k;
    ngx_uint_t  i;

    for (i = mr_sweep.i; i < mr_sweep.end; i++) {
        key = mr_sweep.keys[i];

        rc = mr_store_expire(txn, op, key + 8);
        if (rc != 0) {
            return rc;
        }

        k.mv_data = key;
        k.mv_size = 8 + MR_EXEC_ID_LEN;

        rc = mdb_del(txn, mr_store.due, &k, NULL);
        if (rc != 0 && rc != MDB_NOTFOUND) {
            return rc;
        }

        mr_sweep.wrote = 1;
    }

    return 0;
}


/*
 * An expiry that did not fit: its entry waits a little (a stale entry,
 * left by a later cancel or outcome, is dropped when it comes up)
 */

static int
mr_store_expire_later(MDB_txn *txn, mr_store_op_t *op)
{
    int64_t  at;

    at = (int64_t) mr_be64_get(mr_sweep.keys[mr_sweep.i]);

    mr_sweep.wrote = 1;

    return mr_store_time_index(txn, mr_store.due,
                               mr_sweep.keys[mr_sweep.i] + 8,
                               MR_EXEC_ID_LEN, &at,
                               op->now + MR_STORE_EXPIRE_RETRY, NULL);
}


/* idempotency keys past their lifetime */

static int
mr_store_idem_purge(MDB_txn *txn, mr_store_op_t *op)
{
    int          rc;
    int64_t      t;
    MDB_val      k, v, iv;
    ngx_uint_t   i, n;
    MDB_cursor  *cur;

    rc = mdb_cursor_open(txn, mr_store.idemttl, &cur);
    if (rc != 0) {
        return rc;
    }

    n = 0;

    for (rc = mdb_cursor_get(cur, &k, &v, MDB_FIRST);
         rc == 0 && n < op->limit;
         rc = mdb_cursor_get(cur, &k, &v, MDB_NEXT))
    {
        if (k.mv_size <= 8 || k.mv_size > sizeof(mr_sweep.keys[0])) {
            continue;
        }

        if ((int64_t) mr_be64_get(k.mv_data) + op->idem_ttl_ms > op->now) {
            break;
        }

        ngx_memcpy(mr_sweep.keys[n], k.mv_data, k.mv_size);
        mr_sweep.lens[n] = k.mv_size;
        n++;
    }

    mdb_cursor_close(cur);

    if (rc != 0 && rc != MDB_NOTFOUND) {
        return rc;
    }

    op->more |= (n == op->limit);

    for (i = 0; i < n; i++) {
        t = (int64_t) mr_be64_get(mr_sweep.keys[i]);

        k.mv_data = mr_sweep.keys[i] + 8;
        k.mv_size = mr_sweep.lens[i] - 8;

        /* the key may be bound to a newer execution since */

        rc = mdb_get(txn, mr_store.idem, &k, &iv);

        if (rc == 0 && iv.mv_size == MR_EXEC_ID_LEN + 8
            && (int64_t) mr_be64_get((u_char *) iv.mv_data + MR_EXEC_ID_LEN)
               == t)
        {
            rc = mdb_del(txn, mr_store.idem, &k, NULL);
        }

        if (rc != 0 && rc != MDB_NOTFOUND) {
            return rc;
        }

        k.mv_data = mr_sweep.keys[i];
        k.mv_size = mr_sweep.lens[i];

        rc = mdb_del(txn, mr_store.idemttl, &k, NULL);
        if (rc != 0 && rc != MDB_NOTFOUND) {
            return rc;
        }

        op->purged++;
    }

    return 0;
}


/* retention: terminal executions; their ids sort by creation time */

static int
mr_store_exec_purge(MDB_txn *txn, mr_store_op_t *op)
{
    int            rc;
    u_char        *p, *key;
    MDB_val        k, v;
    ngx_uint_t     i, n;
    MDB_cursor    *cur;
    mr_exec_rec_t  rec;
    u_char         okey[MR_ORG_ID_LEN + 8 + MR_EXEC_ID_LEN];

    if (op->retention_ms == 0) {
        return 0;
    }

    rc = mdb_cursor_open(txn, mr_store.exec, &cur);
    if (rc != 0) {
        return rc;
    }

    n = 0;

    /*
     * from where the last walk stopped: executions not ended yet (a model
     * without routes, a long timeout, a retention shorter than both) are
     * passed over at most MR_STORE_WALK_MAX at a time, so that the ended
     * ones behind them are reached in a few sweeps, never in one walk
     * over all of them
     */

    for (rc = mr_store_walk_first(cur, &mr_sweep.exec_walk, &k, &v);
         rc == 0 && n < op->limit;
         rc = mdb_cursor_get(cur, &k, &v, MDB_NEXT))
    {
        if (mr_store_walk_stop(&mr_sweep.exec_walk, &k, op)) {
            break;
        }

        if (k.mv_size != MR_EXEC_ID_LEN
            || v.mv_size < sizeof(mr_exec_rec_t))
        {
            continue;
        }

        ngx_memcpy(&rec, v.mv_data, sizeof(mr_exec_rec_t));

        if (rec.created_ms + op->retention_ms > op->now) {
            mr_sweep.exec_walk.len = 0;        /* from the oldest again */
            break;
        }

        if (!mr_status_terminal(rec.status)) {
            continue;
        }

        p = ngx_cpymem(mr_sweep.keys[n], k.mv_data, MR_EXEC_ID_LEN);
        p = ngx_cpymem(p, rec.org, MR_ORG_ID_LEN);
        mr_be64_put(p, (uint64_t) rec.order);
        n++;
    }

    mr_store_walk_end(&mr_sweep.exec_walk, rc, &k, n == op->limit);

    mdb_cursor_close(cur);

    if (rc != 0 && rc != MDB_NOTFOUND) {
        return rc;
    }

    op->more |= (n == op->limit);

    for (i = 0; i < n; i++) {
        key = mr_sweep.keys[i];

        k.mv_data = key;
        k.mv_size = MR_EXEC_ID_LEN;

        rc = mr_store_counted_del(txn, mr_store.exec, &k,
                                  key + MR_EXEC_ID_LEN, MR_USAGE_EXEC);
        if (rc != 0 && rc != MDB_NOTFOUND) {
            return rc;
        }

        p = ngx_cpymem(okey, key + MR_EXEC_ID_LEN, MR_ORG_ID_LEN);
        p = ngx_cpymem(p, key + MR_EXEC_ID_LEN + MR_ORG_ID_LEN, 8);
        ngx_memcpy(p, key, MR_EXEC_ID_LEN);

        k.mv_data = okey;
        k.mv_size = sizeof(okey);

        rc = mdb_del(txn, mr_store.byorg, &k, NULL);
        if (rc != 0 && rc != MDB_NOTFOUND) {
            return rc;
        }

        op->purged++;
    }

    return 0;
}


/*
 * A retention walk: its first entry is where the last one stopped (or the
 * first of all), it reads at most MR_STORE_WALK_MAX entries, and where it
 * stops for that budget or its limit is where the next one starts
 */

int
mr_store_walk_first(MDB_cursor *cur, mr_store_walk_t *w, MDB_val *k,
    MDB_val *v)
{
    int  rc;

    w->seen = 0;

    if (w->len) {
        k->mv_data = w->key;
        k->mv_size = w->len;

        rc = mdb_cursor_get(cur, k, v, MDB_SET_RANGE);
        if (rc != MDB_NOTFOUND) {
            return rc;
        }

        w->len = 0;
    }

    return mdb_cursor_get(cur, k, v, MDB_FIRST);
}


/* whether the walk has read all it may: then it goes on from k next time */

ngx_uint_t
mr_store_walk_stop(mr_store_walk_t *w, MDB_val *k, mr_store_op_t *op)
{
    if (w->seen < MR_STORE_WALK_MAX) {
        w->seen++;
        op->scanned++;
        return 0;
    }

    if (k->mv_size <= sizeof(w->key)) {
        ngx_memcpy(w->key, k->mv_data, k->mv_size);
        w->len = k->mv_size;

    } else {
        w->len = 0;
    }

    return 1;
}


/*
 * The walk ended: at the end of the table the next one starts at the
 * first; stopped at its limit, at k, the entry after the last one it took
 * (copied before those are deleted, which moves the pages)
 */

void
mr_store_walk_end(mr_store_walk_t *w, int rc, MDB_val *k, ngx_uint_t full)
{
    if (rc == MDB_NOTFOUND) {
        w->len = 0;

    } else if (rc == 0 && full) {
        if (k->mv_size <= sizeof(w->key)) {
            ngx_memcpy(w->key, k->mv_data, k->mv_size);
            w->len = k->mv_size;

        } else {
            w->len = 0;
        }
    }
}


static int
mr_store_wh_purge_step(MDB_txn *txn, mr_store_op_t *op)
{
    return mr_store_dlv_purge(txn, op, op->limit);
}


static int
mr_store_event_purge_step(MDB_txn *txn, mr_store_op_t *op)
{
    return mr_store_event_purge(txn, op, op->limit);
}


/* keys that ended (revoked, or rotated and past their grace) */

static int
mr_store_key_purge(MDB_txn *txn, mr_store_op_t *op)
{
    int          rc;
    u_char      *key;
    MDB_val      k, v;
    mr_key_t     kr;
    ngx_uint_t   i, n;
    MDB_cursor  *cur;
    u_char       akey[MR_ORG_ID_LEN + MR_KEY_ID_LEN];

    if (op->retention_ms == 0) {
        return 0;
    }

    rc = mdb_cursor_open(txn, mr_store.keyend, &cur);
    if (rc != 0) {
        return rc;
    }

    n = 0;

    for (rc = mdb_cursor_get(cur, &k, &v, MDB_FIRST);
         rc == 0 && n < op->limit;
         rc = mdb_cursor_get(cur, &k, &v, MDB_NEXT))
    {
        if (k.mv_size != 8 + MR_KEY_ID_LEN) {
            continue;
        }

        if ((int64_t) mr_be64_get(k.mv_data) + op->retention_ms > op->now) {
            break;
        }

        ngx_memcpy(mr_sweep.keys[n], k.mv_data, k.mv_size);
        n++;
    }

    mdb_cursor_close(cur);

    if (rc != 0 && rc != MDB_NOTFOUND) {
        return rc;
    }

    op->more |= (n == op->limit);

    for (i = 0; i < n; i++) {
        key = mr_sweep.keys[i];

        rc = mr_store_key_read(txn, key + 8, &kr, NULL);

        if (rc == 0 && !mr_rule_key_active(&kr.rec)) {
            ngx_memcpy(akey, kr.rec.org, MR_ORG_ID_LEN);
            ngx_memcpy(akey + MR_ORG_ID_LEN, kr.rec.key_id, MR_KEY_ID_LEN);

            k.mv_data = kr.rec.hash;
            k.mv_size = MR_SHA256_LEN;

            rc = mdb_del(txn, mr_store.keyhash, &k, NULL);

            if (rc == 0 || rc == MDB_NOTFOUND) {
                k.mv_data = akey;
                k.mv_size = sizeof(akey);

                rc = mdb_del(txn, mr_store.acctkey, &k, NULL);
            }

            if (rc == 0 || rc == MDB_NOTFOUND) {
                k.mv_data = key + 8;
                k.mv_size = MR_KEY_ID_LEN;

                rc = mr_store_counted_del(txn, mr_store.key, &k, akey,
                                          MR_USAGE_KEY);
            }
        }

        if (rc != 0 && rc != MDB_NOTFOUND) {
            return rc;
        }

        k.mv_data = key;
        k.mv_size = 8 + MR_KEY_ID_LEN;

        rc = mdb_del(txn, mr_store.keyend, &k, NULL);
        if (rc != 0 && rc != MDB_NOTFOUND) {
            return rc;
        }

        op->purged++;
    }

    return 0;
}


/* one execution past its deadline: EXPIRED, the whole hold released */

static int
mr_store_expire(MDB_txn *txn, mr_store_op_t *op, u_char *id)
{
    int            rc;
    u_char        *copy, *buf;
    mr_exec_t      exec;
    mr_account_t   acct;

    copy = NULL;
    buf = NULL;

    rc = mr_store_exec_copy(txn, id, &exec, &copy);
    if (rc == MDB_NOTFOUND) {
        return 0;
    }

    if (rc != 0 || mr_status_terminal(exec.rec.status)) {
        if (copy) {
            ngx_free(copy);
        }

        return rc;
    }

    rc = mr_store_account_read(txn, exec.rec.org, &acct, NULL);
    if (rc == 0) {
        mr_rule_expire(&exec, &acct, op->now);
        rc = mr_store_account_put(txn, &acct);
    }

    if (rc == 0) {
        /* an attempt in flight is recorded as abandoned (in buf) */
        rc = mr_store_disp_release(txn, op, &exec, &buf);
    }

    if (rc == 0) {
        rc = mr_store_exec_put(txn, &exec);
    }

    if (rc == 0) {
        rc = mr_store_emit(txn, op, &exec, "execution.expired");
    }

    ngx_free(copy);

    if (buf) {
        ngx_free(buf);
    }

    if (rc == 0) {
        op->expired++;
    }

    return rc;
}


/*
 * Moves an entry of a time index (be64 ms + id -> value) from the time
 * *at to due; 0 on either side: not in the index.
 */

int
mr_store_time_index(MDB_txn *txn, MDB_dbi dbi, u_char *id, size_t len,
    int64_t *at, int64_t due, MDB_val *value)
{
    int      rc;
    MDB_val  k, empty;
    u_char   key[8 + 64];

    if (len > 64) {
        return EINVAL;
    }

    ngx_memcpy(key + 8, id, len);

    k.mv_data = key;
    k.mv_size = 8 + len;

    if (*at) {
        mr_be64_put(key, (uint64_t) *at);

        rc = mdb_del(txn, dbi, &k, NULL);
        if (rc != 0 && rc != MDB_NOTFOUND) {
            return rc;
        }
    }

    *at = due;

    if (due == 0) {
        return 0;
    }

    if (value == NULL) {
        empty.mv_data = "";
        empty.mv_size = 0;
        value = &empty;
    }

    mr_be64_put(key, (uint64_t) due);

    return mdb_put(txn, dbi, &k, value, 0);
}


/* an execution whose segments live in *copy, to be rewritten */

int
mr_store_exec_copy(MDB_txn *txn, u_char *id, mr_exec_t *exec, u_char **copy)
{
    int      rc;
    MDB_val  k, v;

    k.mv_data = id;
    k.mv_size = MR_EXEC_ID_LEN;

    rc = mdb_get(txn, mr_store.exec, &k, &v);
    if (rc != 0) {
        return rc;
    }

    *copy = ngx_alloc(v.mv_size, ngx_cycle->log);
    if (*copy == NULL) {
        return ENOMEM;
    }

    ngx_memcpy(*copy, v.mv_data, v.mv_size);

    return mr_store_exec_parse(id, *copy, v.mv_size, exec, NULL);
}


/* records */

/*
 * Writes an execution and counts it: its bytes, and whether it is live
 * (a new one that is not terminal, or one that just became terminal).
 */

int
mr_store_exec_put(MDB_txn *txn, mr_exec_t *exec)
{
    int            rc;
    u_char        *p;
    size_t         size;
    int64_t        bytes, live;
    MDB_val        k, v, old;
    ngx_uint_t     i;
    mr_exec_rec_t  prev;

    size = sizeof(mr_exec_rec_t);

    for (i = 0; i < MR_SEG_N; i++) {
        exec->rec.seg_len[i] = (uint32_t) exec->seg[i].len;
        size += exec->seg[i].len;
    }

    exec->rec.version = MR_STORE_VERSION;

    k.mv_data = exec->id;
    k.mv_size = MR_EXEC_ID_LEN;

    live = !mr_status_terminal(exec->rec.status);

    rc = mdb_get(txn, mr_store.exec, &k, &old);

    if (rc == MDB_NOTFOUND) {
        bytes = (int64_t) (size + MR_EXEC_ID_LEN + MR_USAGE_EXEC);

    } else if (rc == 0 && old.mv_size >= sizeof(mr_exec_rec_t)) {
        ngx_memcpy(&prev, old.mv_data, sizeof(mr_exec_rec_t));
        bytes = (int64_t) size - (int64_t) old.mv_size;
        live -= !mr_status_terminal(prev.status);

    } else {
        return rc ? rc : MDB_CORRUPTED;
    }

    v.mv_size = size;

    rc = mdb_put(txn, mr_store.exec, &k, &v, MDB_RESERVE);
    if (rc != 0) {
        return rc;
    }

    p = ngx_cpymem(v.mv_data, &exec->rec, sizeof(mr_exec_rec_t));

    for (i = 0; i < MR_SEG_N; i++) {
        p = mr_cpymem(p, exec->seg[i].data, exec->seg[i].len);
    }

    return mr_store_usage(txn, exec->rec.org, bytes, MR_LIMIT_EXECUTIONS,
                          live);
}


/*
 * Reads an execution; its segments are copied into the pool, or, without
 * a pool, point into the map and live as long as the transaction.
 */

int
mr_store_exec_read(MDB_txn *txn, u_char *id, mr_exec_t *exec,
    ngx_pool_t *pool)
{
    int      rc;
    MDB_val  k, v;

    k.mv_data = id;
    k.mv_size = MR_EXEC_ID_LEN;

    rc = mdb_get(txn, mr_store.exec, &k, &v);
    if (rc != 0) {
        return rc;
    }

    return mr_store_exec_parse(id, v.mv_data, v.mv_size, exec, pool);
}


int
mr_store_exec_parse(u_char *id, u_char *data, size_t size, mr_exec_t *exec,
    ngx_pool_t *pool)
{
    u_char      *p, *last;
    ngx_uint_t   i;

    if (size < sizeof(mr_exec_rec_t)) {
        return MDB_CORRUPTED;
    }

    if (exec->id != id) {
        ngx_memcpy(exec->id, id, MR_EXEC_ID_LEN);
    }

    ngx_memcpy(&exec->rec, data, sizeof(mr_exec_rec_t));

    p = data + sizeof(mr_exec_rec_t);
    last = data + size;

    for (i = 0; i < MR_SEG_N; i++) {
        if (exec->rec.seg_len[i] > (size_t) (last - p)) {
            return MDB_CORRUPTED;
        }

        if (mr_store_copy(pool, &exec->seg[i], p, exec->rec.seg_len[i])
            != NGX_OK)
        {
            return ENOMEM;
        }

        p += exec->rec.seg_len[i];
    }

    return 0;
}


int
mr_store_account_read(MDB_txn *txn, u_char *org, mr_account_t *acct,
    ngx_pool_t *pool)
{
    int      rc;
    MDB_val  k, v;

    k.mv_data = org;
    k.mv_size = MR_ORG_ID_LEN;

    rc = mdb_get(txn, mr_store.acct, &k, &v);
    if (rc != 0) {
        return rc;
    }

    if (v.mv_size < sizeof(mr_account_rec_t)) {
        return MDB_CORRUPTED;
    }

    if (acct->id != org) {
        ngx_memcpy(acct->id, org, MR_ORG_ID_LEN);
    }

    ngx_memcpy(&acct->rec, v.mv_data, sizeof(mr_account_rec_t));

    if (acct->rec.name_len > v.mv_size - sizeof(mr_account_rec_t)) {
        return MDB_CORRUPTED;
    }

    if (mr_store_copy(pool, &acct->name,
                      (u_char *) v.mv_data + sizeof(mr_account_rec_t),
                      acct->rec.name_len)
        != NGX_OK)
    {
        return ENOMEM;
    }

    return 0;
}


int
mr_store_account_put(MDB_txn *txn, mr_account_t *acct)
{
    int      rc;
    MDB_val  k, v;

    acct->rec.name_len = (uint32_t) acct->name.len;

    rc = mr_store_ops_account(txn, acct);     /* the held total */
    if (rc != 0) {
        return rc;
    }

    k.mv_data = acct->id;
    k.mv_size = MR_ORG_ID_LEN;
    v.mv_size = sizeof(mr_account_rec_t) + acct->name.len;

    rc = mdb_put(txn, mr_store.acct, &k, &v, MDB_RESERVE);
    if (rc != 0) {
        return rc;
    }

    (void) mr_cpymem(ngx_cpymem(v.mv_data, &acct->rec,
                                sizeof(mr_account_rec_t)),
                     acct->name.data, acct->name.len);

    return 0;
}


/* an account's quota; none yet: nothing used, the default limits */

int
mr_store_quota_read(MDB_txn *txn, u_char *org, mr_quota_t *q)
{
    int      rc;
    MDB_val  k, v;

    mr_rule_quota_init(q);

    k.mv_data = org;
    k.mv_size = MR_ORG_ID_LEN;

    rc = mdb_get(txn, mr_store.quota, &k, &v);

    if (rc == MDB_NOTFOUND) {
        return 0;
    }

    if (rc == 0) {
        /* a shorter record is an older layout: its new fields default */
        ngx_memcpy(q, v.mv_data, ngx_min(v.mv_size, sizeof(mr_quota_t)));
    }

    return rc;
}


static int
mr_store_quota_put(MDB_txn *txn, u_char *org, mr_quota_t *q)
{
    MDB_val  k, v;

    k.mv_data = org;
    k.mv_size = MR_ORG_ID_LEN;
    v.mv_data = q;
    v.mv_size = sizeof(mr_quota_t);

    return mdb_put(txn, mr_store.quota, &k, &v, 0);
}


/* adds to an account's use: stored bytes, and one of its counts */

int
mr_store_usage(MDB_txn *txn, u_char *org, int64_t bytes, ngx_uint_t which,
    int64_t count)
{
    int         rc;
    mr_quota_t  q;

    if (bytes == 0 && count == 0) {
        return 0;
    }

    rc = mr_store_quota_read(txn, org, &q);
    if (rc != 0) {
        return rc;
    }

    mr_rule_usage(&q, bytes, which, count);

    return mr_store_quota_put(txn, org, &q);
}


/*
 * Whether the account may keep bytes more and count more of which; if
 * not, op->result says which limit, its value and the use.
 */

int
mr_store_quota_check(MDB_txn *txn, mr_store_op_t *op, u_char *org,
    int64_t bytes, ngx_uint_t which, int64_t count, ngx_uint_t *ok)
{
    int         rc;
    mr_quota_t  q;

    *ok = 1;

    rc = mr_store_quota_read(txn, org, &q);
    if (rc != 0) {
        return rc;
    }

    *ok = mr_rule_quota_check(mr_store.mcf, &q, op, bytes, which, count);

    return 0;
}


/*
 * A record of an account, counted in its stored bytes: its key, its
 * value and extra for its index entries.  v->mv_size in, v->mv_data out
 * (MDB_RESERVE): the caller fills it before any other write, then adds
 * *bytes to the account's use (mr_store_usage()).
 */

int
mr_store_counted_put(MDB_txn *txn, MDB_dbi dbi, MDB_val *k, MDB_val *v,
    size_t extra, int64_t *bytes)
{
    int      rc;
    MDB_val  old;

    rc = mdb_get(txn, dbi, k, &old);

    if (rc == MDB_NOTFOUND) {
        *bytes = (int64_t) (k->mv_size + v->mv_size + extra);

    } else if (rc == 0) {
        *bytes = (int64_t) v->mv_size - (int64_t) old.mv_size;

    } else {
        return rc;
    }

    return mdb_put(txn, dbi, k, v, MDB_RESERVE);
}


/* deletes a counted record; MDB_NOTFOUND if it was not there */

int
mr_store_counted_del(MDB_txn *txn, MDB_dbi dbi, MDB_val *k, u_char *org,
    size_t extra)
{
    int      rc;
    int64_t  bytes;
    MDB_val  old;

    rc = mdb_get(txn, dbi, k, &old);
    if (rc != 0) {
        return rc;
    }

    bytes = (int64_t) (k->mv_size + old.mv_size + extra);

    rc = mdb_del(txn, dbi, k, NULL);
    if (rc != 0) {
        return rc;
    }

    return mr_store_usage(txn, org, -bytes, MR_LIMIT_BYTES, 0);
}


static int
mr_store_key_read(MDB_txn *txn, u_char *key_id, mr_key_t *key,
    ngx_pool_t *pool)
{
    int      rc;
    MDB_val  k, v;

    k.mv_data = key_id;
    k.mv_size = MR_KEY_ID_LEN;

    rc = mdb_get(txn, mr_store.key, &k, &v);
    if (rc != 0) {
        return rc;
    }

    if (v.mv_size < sizeof(mr_key_rec_t)) {
        return MDB_CORRUPTED;
    }

    ngx_memcpy(&key->rec, v.mv_data, sizeof(mr_key_rec_t));

    if (key->rec.name_len > v.mv_size - sizeof(mr_key_rec_t)) {
        return MDB_CORRUPTED;
    }

    if (mr_store_copy(pool, &key->name,
                      (u_char *) v.mv_data + sizeof(mr_key_rec_t),
                      key->rec.name_len)
        != NGX_OK)
    {
        return ENOMEM;
    }

    return 0;
}


/* writes a key and counts it: its bytes, and whether it is active */

static int
mr_store_key_put(MDB_txn *txn, mr_key_t *key)
{
    int           rc;
    int64_t       active, bytes;
    MDB_val       k, v, old;
    mr_key_rec_t  prev;
    u_char        akey[MR_ORG_ID_LEN + MR_KEY_ID_LEN];

    key->rec.name_len = (uint32_t) key->name.len;

    k.mv_data = key->rec.key_id;
    k.mv_size = MR_KEY_ID_LEN;
    v.mv_size = sizeof(mr_key_rec_t) + key->name.len;

    active = mr_rule_key_active(&key->rec);

    rc = mdb_get(txn, mr_store.key, &k, &old);

    if (rc == 0 && old.mv_size >= sizeof(mr_key_rec_t)) {
        ngx_memcpy(&prev, old.mv_data, sizeof(mr_key_rec_t));
        active -= mr_rule_key_active(&prev);

    } else if (rc != MDB_NOTFOUND) {
        return rc ? rc : MDB_CORRUPTED;
    }

    rc = mr_store_counted_put(txn, mr_store.key, &k, &v, MR_USAGE_KEY,
                              &bytes);
    if (rc != 0) {
        return rc;
    }

    (void) mr_cpymem(ngx_cpymem(v.mv_data, &key->rec, sizeof(mr_key_rec_t)),
                     key->name.data, key->name.len);

    rc = mr_store_usage(txn, key->rec.org, bytes, MR_LIMIT_KEYS, active);
    if (rc != 0) {
        return rc;
    }

    k.mv_data = key->rec.hash;
    k.mv_size = MR_SHA256_LEN;
    v.mv_data = key->rec.key_id;
    v.mv_size = MR_KEY_ID_LEN;

    rc = mdb_put(txn, mr_store.keyhash, &k, &v, 0);
    if (rc != 0) {
        return rc;
    }

    ngx_memcpy(akey, key->rec.org, MR_ORG_ID_LEN);
    ngx_memcpy(akey + MR_ORG_ID_LEN, key->rec.key_id, MR_KEY_ID_LEN);

    k.mv_data = akey;
    k.mv_size = sizeof(akey);
    v.mv_data = "";
    v.mv_size = 0;

    return mdb_put(txn, mr_store.acctkey, &k, &v, 0);
}


ngx_int_t
mr_store_copy(ngx_pool_t *pool, ngx_str_t *dst, u_char *src, size_t len)
{
    dst->len = len;

    if (pool == NULL || len == 0) {
        dst->data = src;
        return NGX_OK;
    }

    dst->data = ngx_pnalloc(pool, len);
    if (dst->data == NULL) {
        return NGX_ERROR;
    }

    ngx_memcpy(dst->data, src, len);

    return NGX_OK;
}


/* reads */

ngx_int_t
mr_store_read_rc(int rc, const char *what)
{
    if (rc == 0) {
        return NGX_OK;
    }

    if (rc == MDB_NOTFOUND) {
        return NGX_DECLINED;
    }

    ngx_log_error(NGX_LOG_ERR, mr_store.log, 0,
                  "modelroute_store: reading %s: %s", what, mdb_strerror(rc));

    return NGX_ERROR;
}


ngx_int_t
mr_store_key_by_hash(u_char *hash, mr_key_t *key, ngx_pool_t *pool)
{
    int       rc;
    MDB_val   k, v;
    MDB_txn  *txn;

    txn = mr_store_read_begin();
    if (txn == NULL) {
        return NGX_ERROR;
    }

    k.mv_data = hash;
    k.mv_size = MR_SHA256_LEN;

    rc = mdb_get(txn, mr_store.keyhash, &k, &v);

    if (rc == 0) {
        if (v.mv_size == MR_KEY_ID_LEN) {
            rc = mr_store_key_read(txn, v.mv_data, key, pool);

        } else {
            rc = MDB_CORRUPTED;
        }
    }

    mr_store_read_end();

    return mr_store_read_rc(rc, "key");
}


ngx_int_t
mr_store_keys_list(u_char *org, ngx_array_t *keys, ngx_pool_t *pool)
{
    int          rc;
    MDB_val      k, v;
    MDB_txn     *txn;
    mr_key_t    *key;
    MDB_cursor  *cur;

    txn = mr_store_read_begin();
    if (txn == NULL) {
        return NGX_ERROR;
    }

    rc = mdb_cursor_open(txn, mr_store.acctkey, &cur);
    if (rc != 0) {
        goto done;
    }

    k.mv_data = org;
    k.mv_size = MR_ORG_ID_LEN;

    for (rc = mdb_cursor_get(cur, &k, &v, MDB_SET_RANGE);
         rc == 0;
         rc = mdb_cursor_get(cur, &k, &v, MDB_NEXT))
    {
        if (k.mv_size != MR_ORG_ID_LEN + MR_KEY_ID_LEN
            || ngx_memcmp(k.mv_data, org, MR_ORG_ID_LEN) != 0)
        {
            break;
        }

        key = ngx_array_push(keys);
        if (key == NULL) {
            rc = ENOMEM;
            break;
        }

        rc = mr_store_key_read(txn, (u_char *) k.mv_data + MR_ORG_ID_LEN,
                               key, pool);
        if (rc != 0) {
            break;
        }
    }

    mdb_cursor_close(cur);

    if (rc == MDB_NOTFOUND) {
        rc = 0;
    }

done:

    mr_store_read_end();

    return mr_store_read_rc(rc, "keys");
}


ngx_int_t
mr_store_account_get(u_char *org, mr_account_t *acct, ngx_pool_t *pool)
{
    int       rc;
    MDB_txn  *txn;

    txn = mr_store_read_begin();
    if (txn == NULL) {
        return NGX_ERROR;
    }

    rc = mr_store_account_read(txn, org, acct, pool);

    mr_store_read_end();

    return mr_store_read_rc(rc, "account");
}


ngx_int_t
mr_store_exec_get(u_char *id, mr_exec_t *exec, ngx_pool_t *pool)
{
    int       rc;
    MDB_txn  *txn;

    txn = mr_store_read_begin();
    if (txn == NULL) {
        return NGX_ERROR;
    }

    rc = mr_store_exec_read(txn, id, exec, pool);

    mr_store_read_end();

    return mr_store_read_rc(rc, "execution");
}


/*
 * Newest first: walk the account's index backwards.  A filtered list
 * looks at no more than MR_STORE_LIST_SCAN executions: when it stops
 * there, has_more is set and q->next is where the next page starts.
 */

ngx_int_t
mr_store_exec_list(mr_list_query_t *q, ngx_array_t *execs,
    ngx_pool_t *pool)
{
    int          rc;
    u_char      *id;
    MDB_val      k, v;
    MDB_txn     *txn;
    mr_exec_t   *exec, cur_exec;
    ngx_uint_t   scanned, last;
    MDB_cursor  *cur;
    u_char       okey[MR_ORG_ID_LEN + 8 + MR_EXEC_ID_LEN];

    q->has_more = 0;

    txn = mr_store_read_begin();
    if (txn == NULL) {
        return NGX_ERROR;
    }

    ngx_memcpy(okey, q->org, MR_ORG_ID_LEN);

    if (q->starting_after.len) {
        rc = mr_store_exec_read(txn, q->starting_after.data, &cur_exec, NULL);
        if (rc == 0
            && ngx_memcmp(cur_exec.rec.org, q->org, MR_ORG_ID_LEN) != 0)
        {
            rc = MDB_NOTFOUND;
        }

        if (rc != 0) {
            mr_store_read_end();
            return mr_store_read_rc(rc, "execution");
        }

        mr_be64_put(okey + MR_ORG_ID_LEN, (uint64_t) cur_exec.rec.order);
        ngx_memcpy(okey + MR_ORG_ID_LEN + 8, q->starting_after.data,
                   MR_EXEC_ID_LEN);

    } else {
        ngx_memset(okey + MR_ORG_ID_LEN, 0xff, 8 + MR_EXEC_ID_LEN);
    }

    rc = mdb_cursor_open(txn, mr_store.byorg, &cur);
    if (rc != 0) {
        mr_store_read_end();
        return mr_store_read_rc(rc, "executions");
    }

    k.mv_data = okey;
    k.mv_size = sizeof(okey);

    /* position at the first entry strictly before okey */

    rc = mdb_cursor_get(cur, &k, &v, MDB_SET_RANGE);

    if (rc == 0) {
        rc = mdb_cursor_get(cur, &k, &v, MDB_PREV);

    } else if (rc == MDB_NOTFOUND) {
        rc = mdb_cursor_get(cur, &k, &v, MDB_LAST);
    }

    scanned = 0;
    last = 0;

    for ( /* void */ ; rc == 0; rc = mdb_cursor_get(cur, &k, &v, MDB_PREV)) {

        if (k.mv_size != sizeof(okey)
            || ngx_memcmp(k.mv_data, q->org, MR_ORG_ID_LEN) != 0)
        {
            break;
        }

        id = (u_char *) k.mv_data + MR_ORG_ID_LEN + 8;

        if (scanned++ == MR_STORE_LIST_SCAN && last) {
            /* the next page starts after the last one looked at */
            q->has_more = 1;
            break;
        }

        rc = mr_store_exec_read(txn, id, &cur_exec, NULL);
        if (rc != 0) {
            break;
        }

        if ((q->status && cur_exec.rec.status != q->status)
            || (q->model.len
                && (cur_exec.seg[MR_SEG_MODEL].len != q->model.len
                    || ngx_memcmp(cur_exec.seg[MR_SEG_MODEL].data,
                                  q->model.data, q->model.len)
                       != 0)))
        {
            ngx_memcpy(q->next, id, MR_EXEC_ID_LEN);
            last = 1;
            continue;
        }

        if (execs->nelts == q->limit) {
            q->has_more = 1;
            break;
        }

        exec = ngx_array_push(execs);
        if (exec == NULL) {
            rc = ENOMEM;
            break;
        }

        rc = mr_store_exec_read(txn, id, exec, pool);
        if (rc != 0) {
            break;
        }

        ngx_memcpy(q->next, id, MR_EXEC_ID_LEN);
        last = 1;
    }

    mdb_cursor_close(cur);

    if (rc == MDB_NOTFOUND) {
        rc = 0;
    }

    mr_store_read_end();

    return mr_store_read_rc(rc, "executions");
}


/*
 * The ledger and the account's use in one snapshot: its executions (its
 * index), and its use counted again from its records.  Events and
 * deliveries have no index by account: every one in the store is walked,
 * on the event loop (about half a second per million).  An operator's
 * check (GET {admin}/accounts/{org}/verify): no tenant's request may
 * call this.
 */

ngx_int_t
mr_store_verify(u_char *org, mr_account_t *acct, mr_verify_t *vf,
    ngx_pool_t *pool)
{
    int       rc;
    MDB_txn  *txn;

    ngx_memzero(vf, sizeof(mr_verify_t));

    txn = mr_store_read_begin();
    if (txn == NULL) {
        return NGX_ERROR;
    }

    rc = mr_store_account_read(txn, org, acct, pool);

    if (rc == 0) {
        rc = mr_store_quota_read(txn, org, &vf->quota);
    }

    if (rc == 0) {
        rc = mr_store_count(txn, vf, org);
    }

    mr_store_read_end();

    return mr_store_read_rc(rc, "account");
}


static int
mr_store_count(MDB_txn *txn, mr_verify_t *vf, u_char *org)
{
    int            rc;
    u_char        *p;
    size_t         plen, extra;
    MDB_val        k, v, r;
    MDB_dbi        dbi;
    ngx_uint_t     i;
    MDB_cursor    *cur;
    mr_key_rec_t   key;
    mr_exec_rec_t  rec;
    mr_dlv_rec_t   dlv;

    /* executions, endpoints and keys: through the account's indexes */

    static const struct {
        size_t      id;
        size_t      extra;
    } idx[] = {
        { MR_EXEC_ID_LEN, MR_USAGE_EXEC },
        { MR_WH_ID_LEN, MR_USAGE_WH },
        { MR_KEY_ID_LEN, MR_USAGE_KEY }
    };

    for (i = 0; i < 3; i++) {
        dbi = (i == 0) ? mr_store.byorg : (i == 1) ? mr_store.orgwh
                                                   : mr_store.acctkey;
        plen = (i == 0) ? MR_ORG_ID_LEN + 8 : MR_ORG_ID_LEN;
        extra = idx[i].extra;

        rc = mdb_cursor_open(txn, dbi, &cur);
        if (rc != 0) {
            return rc;
        }

        k.mv_data = org;
        k.mv_size = MR_ORG_ID_LEN;

        for (rc = mdb_cursor_get(cur, &k, &v, MDB_SET_RANGE);
             rc == 0;
             rc = mdb_cursor_get(cur, &k, &v, MDB_NEXT))
        {
            if (k.mv_size != plen + idx[i].id
                || ngx_memcmp(k.mv_data, org, MR_ORG_ID_LEN) != 0)
            {
                break;
            }

            p = (u_char *) k.mv_data + plen;

            r.mv_data = p;
            r.mv_size = idx[i].id;

            rc = mdb_get(txn, (i == 0) ? mr_store.exec
                              : (i == 1) ? mr_store.whep : mr_store.key,
                         &r, &r);
            if (rc != 0) {
                break;
            }

            vf->counted[MR_LIMIT_BYTES] += idx[i].id + r.mv_size + extra;

            if (i == 0 && r.mv_size >= sizeof(mr_exec_rec_t)) {
                ngx_memcpy(&rec, r.mv_data, sizeof(mr_exec_rec_t));

                vf->executions++;

                if (!mr_status_terminal(rec.status)) {
                    vf->counted[MR_LIMIT_EXECUTIONS]++;
                    vf->open_executions++;
                    vf->open_holds += rec.hold;
                }

            } else if (i == 1) {
                vf->counted[MR_LIMIT_ENDPOINTS]++;

            } else if (i == 2 && r.mv_size >= sizeof(mr_key_rec_t)) {
                ngx_memcpy(&key, r.mv_data, sizeof(mr_key_rec_t));
                vf->counted[MR_LIMIT_KEYS] += mr_rule_key_active(&key);
            }
        }

        mdb_cursor_close(cur);

        if (rc != 0 && rc != MDB_NOTFOUND) {
            return rc;
        }
    }

    /* events and deliveries: every one, for the account's */

    for (i = 0; i < 2; i++) {
        rc = mdb_cursor_open(txn, i ? mr_store.dlv : mr_store.event, &cur);
        if (rc != 0) {
            return rc;
        }

        for (rc = mdb_cursor_get(cur, &k, &v, MDB_FIRST);
             rc == 0;
             rc = mdb_cursor_get(cur, &k, &v, MDB_NEXT))
        {
            if (i == 0) {
                if (v.mv_size < MR_ORG_ID_LEN
                    || ngx_memcmp(v.mv_data, org, MR_ORG_ID_LEN) != 0)
                {
                    continue;
                }

                extra = MR_USAGE_EVENT;

            } else {
                if (v.mv_size < sizeof(mr_dlv_rec_t)) {
                    continue;
                }

                ngx_memcpy(&dlv, v.mv_data, sizeof(mr_dlv_rec_t));

                if (ngx_memcmp(dlv.org, org, MR_ORG_ID_LEN) != 0) {
                    continue;
                }

                extra = MR_USAGE_DLV;
            }

            vf->counted[MR_LIMIT_BYTES] += k.mv_size + v.mv_size + extra;
        }

        mdb_cursor_close(cur);

        if (rc != 0 && rc != MDB_NOTFOUND) {
            return rc;
        }
    }

    return 0;
}


ngx_int_t
mr_store_quota_get(u_char *org, mr_quota_t *q)
{
    int       rc;
    MDB_txn  *txn;

    txn = mr_store_read_begin();
    if (txn == NULL) {
        return NGX_ERROR;
    }

    rc = mr_store_quota_read(txn, org, q);

    mr_store_read_end();

    return mr_store_read_rc(rc, "quota");
}
