
/*
 * ModelRoute: the LMDB store's internals, shared by its files
 * (mr_store.c, mr_store_webhook.c).  Nothing else includes this.
 */


#ifndef _MR_STORE_LMDB_H_INCLUDED_
#define _MR_STORE_LMDB_H_INCLUDED_


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_event.h>

#include <lmdb.h>

#include "mr_store.h"
#include "mr_rules.h"          /* what records cost: MR_USAGE_* */


#define MR_STORE_VERSION       3
#define MR_STORE_SWEEP_MAX     256

/*
 * The retention's walks pass over entries they must keep (executions not
 * ended yet, deliveries still pending) at most this many per step, and go
 * on from there the next time (mr_store_walk_t)
 */
#define MR_STORE_WALK_MAX      (4 * MR_STORE_SWEEP_MAX)


/*
 * Where a retention walk goes on from: the key at which it stopped (len 0:
 * from the first).  Held by the worker, not the store: a walk that is
 * undone, or made by another worker, only starts elsewhere.
 */
typedef struct {
    u_char                    key[64];
    size_t                    len;
    ngx_uint_t                seen;          /* entries read by this walk */
} mr_store_walk_t;


typedef struct {
    ngx_queue_t               ops;
    ngx_uint_t                n;
    ngx_uint_t                sync;          /* relaxed: fsync after it */
    int                       rc;
} mr_store_batch_t;


typedef struct {
    MDB_env                  *env;
    MDB_txn                  *rtxn;
    MDB_dbi                   exec;
    MDB_dbi                   idem;
    MDB_dbi                   byorg;
    MDB_dbi                   acct;
    MDB_dbi                   key;
    MDB_dbi                   keyhash;
    MDB_dbi                   acctkey;
    MDB_dbi                   ref;
    MDB_dbi                   due;
    MDB_dbi                   idemttl;
    MDB_dbi                   meta;
    MDB_dbi                   whep;
    MDB_dbi                   orgwh;
    MDB_dbi                   whsecret;
    MDB_dbi                   event;
    MDB_dbi                   dlv;
    MDB_dbi                   dlvq;
    MDB_dbi                   whdlv;
    MDB_dbi                   execdlv;
    MDB_dbi                   disp;
    MDB_dbi                   route;
    MDB_dbi                   ops;           /* mr_store_ops.c */
    MDB_dbi                   main;          /* the unnamed database */
    MDB_dbi                   quota;
    MDB_dbi                   keyend;
    size_t                    page_size;
    size_t                    map_pages;
    ngx_uint_t                dirty;          /* commits not yet synced */
    ngx_uint_t                busy;           /* a batch is in flight */
    ngx_uint_t                soft;           /* may skip the meta sync */
    ngx_uint_t                ticks;
    int64_t                   synced_ms;
    ngx_queue_t               queue;
    mr_store_batch_t          batch;
#if (NGX_THREADS)
    ngx_thread_pool_t        *tp;
    ngx_thread_task_t        *task;
    ngx_uint_t                unposted;       /* the last post failed */
#endif
    ngx_event_t               commit_ev;
    ngx_event_t               tick_ev;
    ngx_event_t               inflight_ev;
    ngx_event_t               wake_ev;
    ngx_queue_t               waiters;        /* mr_store_waiter_t */
    ngx_uint_t                remap;          /* a read met MAP_RESIZED */
    ngx_log_t                *log;
    mr_main_conf_t           *mcf;
} mr_store_t;


extern mr_store_t       mr_store;
extern mr_store_walk_t  mr_store_dlv_walk;     /* the deliveries' purge */


MDB_txn *mr_store_read_begin(void);
void mr_store_read_end(void);
ngx_int_t mr_store_read_rc(int rc, const char *what);
ngx_int_t mr_store_copy(ngx_pool_t *pool, ngx_str_t *dst, u_char *src,
    size_t len);
int mr_store_exec_put(MDB_txn *txn, mr_exec_t *exec);
int mr_store_exec_read(MDB_txn *txn, u_char *id, mr_exec_t *exec,
    ngx_pool_t *pool);
int mr_store_exec_copy(MDB_txn *txn, u_char *id, mr_exec_t *exec,
    u_char **copy);
int mr_store_time_index(MDB_txn *txn, MDB_dbi dbi, u_char *id, size_t len,
    int64_t *at, int64_t due, MDB_val *value);
int mr_store_exec_parse(u_char *id, u_char *data, size_t size,
    mr_exec_t *exec, ngx_pool_t *pool);
int mr_store_account_read(MDB_txn *txn, u_char *org, mr_account_t *acct,
    ngx_pool_t *pool);
int mr_store_account_put(MDB_txn *txn, mr_account_t *acct);
int mr_store_quota_read(MDB_txn *txn, u_char *org, mr_quota_t *q);
int mr_store_usage(MDB_txn *txn, u_char *org, int64_t bytes,
    ngx_uint_t which, int64_t count);
int mr_store_quota_check(MDB_txn *txn, mr_store_op_t *op, u_char *org,
    int64_t bytes, ngx_uint_t which, int64_t count, ngx_uint_t *ok);
int mr_store_counted_put(MDB_txn *txn, MDB_dbi dbi, MDB_val *k,
    MDB_val *v, size_t extra, int64_t *bytes);
int mr_store_counted_del(MDB_txn *txn, MDB_dbi dbi, MDB_val *k,
    u_char *org, size_t extra);
int mr_store_open(MDB_env **envp, mr_main_conf_t *mcf, ngx_log_t *log);
ngx_int_t mr_store_upgrade(ngx_cycle_t *cycle, mr_main_conf_t *mcf);

int mr_store_wh_apply(MDB_txn *txn, mr_store_op_t *op, ngx_int_t room);
int mr_store_emit(MDB_txn *txn, mr_store_op_t *op, mr_exec_t *exec,
    const char *type);
int mr_store_dlv_purge(MDB_txn *txn, mr_store_op_t *op, ngx_uint_t limit);
int mr_store_walk_first(MDB_cursor *cur, mr_store_walk_t *w, MDB_val *k,
    MDB_val *v);
ngx_uint_t mr_store_walk_stop(mr_store_walk_t *w, MDB_val *k,
    mr_store_op_t *op);
void mr_store_walk_end(mr_store_walk_t *w, int rc, MDB_val *k,
    ngx_uint_t full);
int mr_store_event_purge(MDB_txn *txn, mr_store_op_t *op,
    ngx_uint_t limit);
int mr_store_dlvq_key(mr_dlv_t *dlv, int64_t due, u_char *key);
int mr_store_dlv_read(MDB_txn *txn, u_char *id, mr_dlv_t *dlv,
    ngx_pool_t *pool);
int mr_store_dlv_put(MDB_txn *txn, mr_dlv_t *dlv);
int mr_store_dlv_parse(u_char *data, size_t size, mr_dlv_t *dlv);
int mr_store_due_put(MDB_txn *txn, mr_exec_t *exec, ngx_uint_t add);

int mr_store_disp_apply(MDB_txn *txn, mr_store_op_t *op);
int mr_store_disp_add(MDB_txn *txn, mr_store_op_t *op, mr_exec_t *exec);
int mr_store_disp_release(MDB_txn *txn, mr_store_op_t *op, mr_exec_t *exec,
    u_char **buf);
int mr_store_disp_secrets(MDB_txn *txn, MDB_dbi meta, ngx_uint_t rotate);

/* the store's entry points, for the switch (mr_store_backend.c) */
ngx_int_t mr_store_lmdb_check(ngx_cycle_t *cycle, mr_main_conf_t *mcf);
ngx_int_t mr_store_lmdb_start(ngx_cycle_t *cycle, mr_main_conf_t *mcf);
ngx_int_t mr_store_lmdb_init_process(ngx_cycle_t *cycle,
    mr_main_conf_t *mcf);
void mr_store_lmdb_exit_process(ngx_cycle_t *cycle);
void mr_store_lmdb_submit(mr_store_op_t *op);
ngx_uint_t mr_store_lmdb_threaded(void);

/* the reads, synchronous: mr_store_lmdb_read() (mr_store_read.c) */
ngx_int_t mr_store_lmdb_read(mr_store_read_t *rd);
ngx_int_t mr_store_key_by_hash(u_char *hash, mr_key_t *key, ngx_pool_t *pool);
ngx_int_t mr_store_keys_list(u_char *org, ngx_array_t *keys,
    ngx_pool_t *pool);
ngx_int_t mr_store_account_get(u_char *org, mr_account_t *acct,
    ngx_pool_t *pool);
ngx_int_t mr_store_exec_get(u_char *id, mr_exec_t *exec, ngx_pool_t *pool);
ngx_int_t mr_store_exec_list(mr_list_query_t *q, ngx_array_t *execs,
    ngx_pool_t *pool);
ngx_int_t mr_store_quota_get(u_char *org, mr_quota_t *q);
ngx_int_t mr_store_verify(u_char *org, mr_account_t *acct, mr_verify_t *v,
    ngx_pool_t *pool);
ngx_int_t mr_store_wh_get(u_char *wh_id, mr_wh_t *wh, ngx_pool_t *pool);
ngx_int_t mr_store_wh_list(u_char *org, ngx_array_t *whs, ngx_pool_t *pool);
ngx_int_t mr_store_dlv_list(u_char *prefix, size_t len, ngx_uint_t limit,
    ngx_array_t *dlvs, ngx_pool_t *pool);
ngx_int_t mr_store_secret_get(u_char *org, ngx_str_t *secret,
    ngx_pool_t *pool);
ngx_int_t mr_store_route_states(mr_main_conf_t *mcf, mr_route_state_t *st);
ngx_int_t mr_store_disp_next(int64_t *due);
ngx_int_t mr_store_meta_secret(const char *name, u_char *secret);
ngx_int_t mr_store_ops_stats(mr_store_stats_t *st);
ngx_int_t mr_store_ops_rate_limit(u_char *org, uint64_t *requests);
ngx_int_t mr_store_ops_accounts(ngx_str_t *after, ngx_uint_t limit,
    ngx_array_t *accts, ngx_uint_t *more, ngx_pool_t *pool);
ngx_int_t mr_store_ops_deliveries(ngx_uint_t limit, ngx_array_t *dlvs,
    ngx_uint_t *scanned, ngx_pool_t *pool);

/* mr_store_ops.c: the operator's data (held total, rate-limit overrides) */
int mr_store_ops_open(MDB_txn *txn, mr_store_t *st);
int mr_store_ops_init(MDB_txn *txn, mr_store_t *st);
int mr_store_ops_account(MDB_txn *txn, mr_account_t *acct);
int mr_store_ops_apply(MDB_txn *txn, mr_store_op_t *op, ngx_int_t room);


#endif /* _MR_STORE_LMDB_H_INCLUDED_ */
