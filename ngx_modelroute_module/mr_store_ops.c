
/*
 * ModelRoute: the store's side of operating it.
 *
 * The unnamed database (LMDB keeps the named databases' records there):
 *   "ops.held"          -> be64: the sum of every account's held amount,
 *                          kept in the transaction of each account write
 *                          (mr_store_ops_account()), so that the metrics
 *                          read it without a scan.  Every write transaction
 *                          rewrites that database's page (the records of
 *                          the databases it changed): the total costs no
 *                          page more, even in a store that is full.
 *
 * Database "ops":
 *   "heartbeat"         -> be64 ms: the health answer's last write
 *   "rl/" + org         -> be64: the account's rate-limit override
 *
 * These functions may run in a thread of the commit pool (the apply and
 * account hooks): they use nothing of the event loop.
 */


#include <ngx_config.h>
#include <ngx_core.h>

#include <lmdb.h>

#include "mr_store.h"
#include "mr_store_lmdb.h"
#include "mr_store_ops.h"


#define MR_OPS_RL_KEY_LEN  (3 + MR_ORG_ID_LEN)
#define MR_OPS_HELD        "ops.held"


static int mr_store_ops_held_get(MDB_txn *txn, MDB_dbi dbi, int64_t *held);
static int mr_store_ops_held_put(MDB_txn *txn, MDB_dbi dbi, int64_t held);
static void mr_store_ops_rl_key(u_char *key, u_char *org);


static int
mr_store_ops_held_get(MDB_txn *txn, MDB_dbi dbi, int64_t *held)
{
    int      rc;
    MDB_val  k, v;

    k.mv_data = MR_OPS_HELD;
    k.mv_size = sizeof(MR_OPS_HELD) - 1;

    rc = mdb_get(txn, dbi, &k, &v);
    if (rc != 0) {
        return rc;
    }

    if (v.mv_size != sizeof(int64_t)) {
        return MDB_CORRUPTED;
    }

    *held = (int64_t) mr_be64_get(v.mv_data);

    return 0;
}


static int
mr_store_ops_held_put(MDB_txn *txn, MDB_dbi dbi, int64_t held)
{
    MDB_val  k, v;
    u_char   buf[8];

    mr_be64_put(buf, (uint64_t) held);

    k.mv_data = MR_OPS_HELD;
    k.mv_size = sizeof(MR_OPS_HELD) - 1;
    v.mv_data = buf;
    v.mv_size = sizeof(buf);

    return mdb_put(txn, dbi, &k, &v, 0);
}


/* with the store's databases, in each worker */

int
mr_store_ops_open(MDB_txn *txn, mr_store_t *st)
{
    int  rc;

    rc = mdb_dbi_open(txn, "ops", MDB_CREATE, &st->ops);
    if (rc != 0) {
        return rc;
    }

    return mdb_dbi_open(txn, NULL, 0, &st->main);
}


/*
 * When a worker opens the store (in its first transaction; the master
 * never writes the store): a store without the held total (new, or
 * written by a build without it) gets it from one pass over the accounts.
 */

int
mr_store_ops_init(MDB_txn *txn, mr_store_t *st)
{
    int           rc;
    int64_t       held;
    MDB_val       k, v;
    MDB_cursor   *cur;
    mr_account_rec_t  rec;

    rc = mr_store_ops_held_get(txn, st->main, &held);
    if (rc != MDB_NOTFOUND) {
        return rc;
    }

    held = 0;

    rc = mdb_cursor_open(txn, st->acct, &cur);
    if (rc != 0) {
        return rc;
    }

    while ((rc = mdb_cursor_get(cur, &k, &v, MDB_NEXT)) == 0) {
        if (v.mv_size < sizeof(mr_account_rec_t)) {
            rc = MDB_CORRUPTED;
            break;
        }

        ngx_memcpy(&rec, v.mv_data, sizeof(mr_account_rec_t));
        held += rec.held;
    }

    mdb_cursor_close(cur);

    if (rc != MDB_NOTFOUND) {
        return rc;
    }

    return mr_store_ops_held_put(txn, st->main, held);
}


/* an account is written (mr_store_account_put()): the held total */

int
mr_store_ops_account(MDB_txn *txn, mr_account_t *acct)
{
    int               rc;
    int64_t           held;
    MDB_val           k, v;
    mr_account_rec_t  old;

    k.mv_data = acct->id;
    k.mv_size = MR_ORG_ID_LEN;

    rc = mdb_get(txn, mr_store.acct, &k, &v);

    if (rc == MDB_NOTFOUND) {
        old.held = 0;

    } else if (rc != 0) {
        return rc;

    } else if (v.mv_size < sizeof(mr_account_rec_t)) {
        return MDB_CORRUPTED;

    } else {
        ngx_memcpy(&old, v.mv_data, sizeof(mr_account_rec_t));
    }

    if (old.held == acct->rec.held) {
        return 0;
    }

    rc = mr_store_ops_held_get(txn, mr_store.main, &held);

    if (rc == MDB_NOTFOUND) {
        held = 0;

    } else if (rc != 0) {
        return rc;
    }

    return mr_store_ops_held_put(txn, mr_store.main,
                                 held + acct->rec.held - old.held);
}


static void
mr_store_ops_rl_key(u_char *key, u_char *org)
{
    ngx_memcpy(ngx_cpymem(key, "rl/", 3), org, MR_ORG_ID_LEN);
}


int
mr_store_ops_apply(MDB_txn *txn, mr_store_op_t *op, ngx_int_t room)
{
    int           rc;
    MDB_val       k, v;
    mr_account_t  acct;
    u_char        key[MR_OPS_RL_KEY_LEN];
    u_char        buf[8];

    switch (op->ops.kind) {

    case MR_STORE_OPS_HEARTBEAT:

        /* a real write, refused as new work is when the store is full */

        if (!room) {
            op->result = MR_R_STORAGE_FULL;
            return 0;
        }

        mr_be64_put(buf, (uint64_t) op->now);

        k.mv_data = "heartbeat";
        k.mv_size = sizeof("heartbeat") - 1;
        v.mv_data = buf;
        v.mv_size = sizeof(buf);

        return mdb_put(txn, mr_store.ops, &k, &v, 0);

    case MR_STORE_OPS_RL_SET:
    case MR_STORE_OPS_RL_DELETE:

        rc = mr_store_account_read(txn, op->org, &acct, NULL);
        if (rc == MDB_NOTFOUND) {
            op->result = MR_R_NOT_FOUND;
            return 0;
        }

        if (rc != 0) {
            return rc;
        }

        mr_store_ops_rl_key(key, op->org);

        k.mv_data = key;
        k.mv_size = sizeof(key);

        if (op->ops.kind == MR_STORE_OPS_RL_DELETE) {
            rc = mdb_del(txn, mr_store.ops, &k, NULL);
            return (rc == MDB_NOTFOUND) ? 0 : rc;
        }

        if (!room) {
            op->result = MR_R_STORAGE_FULL;
            return 0;
        }

        mr_be64_put(buf, op->ops.value);

        v.mv_data = buf;
        v.mv_size = sizeof(buf);

        return mdb_put(txn, mr_store.ops, &k, &v, 0);

    default:
        op->result = MR_R_INTERNAL;
        return 0;
    }
}


/* ---- reads, on the event loop */

ngx_int_t
mr_store_ops_rate_limit(u_char *org, uint64_t *requests)
{
    int       rc;
    MDB_val   k, v;
    MDB_txn  *txn;
    u_char    key[MR_OPS_RL_KEY_LEN];

    txn = mr_store_read_begin();
    if (txn == NULL) {
        return NGX_ERROR;
    }

    mr_store_ops_rl_key(key, org);

    k.mv_data = key;
    k.mv_size = sizeof(key);

    rc = mdb_get(txn, mr_store.ops, &k, &v);

    if (rc == 0) {
        if (v.mv_size == 8) {
            *requests = mr_be64_get(v.mv_data);

        } else {
            rc = MDB_CORRUPTED;
        }
    }

    mr_store_read_end();

    return mr_store_read_rc(rc, "rate limit");
}


ngx_int_t
mr_store_ops_stats(mr_store_stats_t *st)
{
    int           rc;
    MDB_txn      *txn;
    MDB_stat      s;
    MDB_envinfo   info;

    ngx_memzero(st, sizeof(mr_store_stats_t));

    txn = mr_store_read_begin();
    if (txn == NULL) {
        return NGX_ERROR;
    }

    /* every open execution, and only those, is in the deadline index */

    rc = mdb_stat(txn, mr_store.due, &s);
    if (rc == 0) {
        st->holds = s.ms_entries;
        rc = mdb_stat(txn, mr_store.dlvq, &s);
    }

    if (rc == 0) {
        st->backlog = s.ms_entries;
        rc = mdb_stat(txn, mr_store.acct, &s);
    }

    if (rc == 0) {
        st->accounts = s.ms_entries;
        rc = mdb_stat(txn, mr_store.exec, &s);
    }

    if (rc == 0) {
        st->executions = s.ms_entries;
        rc = mr_store_ops_held_get(txn, mr_store.main, &st->held);
        if (rc == MDB_NOTFOUND) {
            rc = 0;
        }
    }

    if (rc == 0) {
        rc = mdb_env_info(mr_store.env, &info);
    }

    mr_store_read_end();

    if (rc == 0) {
        st->used_bytes = (uint64_t) (info.me_last_pgno + 1)
                         * mr_store.page_size;
        st->map_bytes = info.me_mapsize;
    }

    return mr_store_read_rc(rc, "statistics");
}


/* accounts in the order of their ids, after the id "after" if given */

ngx_int_t
mr_store_ops_accounts(ngx_str_t *after, ngx_uint_t limit, ngx_array_t *accts,
    ngx_uint_t *more, ngx_pool_t *pool)
{
    int            rc;
    MDB_val        k, v;
    MDB_txn       *txn;
    MDB_cursor    *cur;
    mr_account_t  *acct;

    *more = 0;

    txn = mr_store_read_begin();
    if (txn == NULL) {
        return NGX_ERROR;
    }

    rc = mdb_cursor_open(txn, mr_store.acct, &cur);
    if (rc != 0) {
        mr_store_read_end();
        return mr_store_read_rc(rc, "accounts");
    }

    if (after->len) {
        k.mv_data = after->data;
        k.mv_size = after->len;

        rc = mdb_cursor_get(cur, &k, &v, MDB_SET_RANGE);

        if (rc == 0 && k.mv_size == after->len
            && ngx_memcmp(k.mv_data, after->data, after->len) == 0)
        {
            rc = mdb_cursor_get(cur, &k, &v, MDB_NEXT);
        }

    } else {
        rc = mdb_cursor_get(cur, &k, &v, MDB_FIRST);
    }

    for ( /* void */ ; rc == 0; rc = mdb_cursor_get(cur, &k, &v, MDB_NEXT)) {

        if (accts->nelts == limit) {
            *more = 1;
            break;
        }

        if (k.mv_size != MR_ORG_ID_LEN) {
            continue;
        }

        acct = ngx_array_push(accts);
        if (acct == NULL) {
            rc = ENOMEM;
            break;
        }

        ngx_memcpy(acct->id, k.mv_data, MR_ORG_ID_LEN);

        rc = mr_store_account_read(txn, acct->id, acct, pool);
        if (rc != 0) {
            break;
        }
    }

    mdb_cursor_close(cur);
    mr_store_read_end();

    if (rc == MDB_NOTFOUND) {
        rc = 0;
    }

    return mr_store_read_rc(rc, "accounts");
}


/*
 * The most recent deliveries with a failed attempt (failed for good, or
 * pending a retry), newest first, among the MR_STORE_OPS_DLV_SCAN most
 * recent deliveries (delivery ids sort by creation time).
 */

ngx_int_t
mr_store_ops_deliveries(ngx_uint_t limit, ngx_array_t *dlvs,
    ngx_uint_t *scanned, ngx_pool_t *pool)
{
    int            rc;
    MDB_val        k, v;
    MDB_txn       *txn;
    mr_dlv_t      *dlv;
    ngx_uint_t     n;
    MDB_cursor    *cur;
    mr_dlv_rec_t   rec;

    txn = mr_store_read_begin();
    if (txn == NULL) {
        return NGX_ERROR;
    }

    rc = mdb_cursor_open(txn, mr_store.dlv, &cur);
    if (rc != 0) {
        mr_store_read_end();
        return mr_store_read_rc(rc, "deliveries");
    }

    n = 0;

    for (rc = mdb_cursor_get(cur, &k, &v, MDB_LAST);
         rc == 0 && n < MR_STORE_OPS_DLV_SCAN && dlvs->nelts < limit;
         rc = mdb_cursor_get(cur, &k, &v, MDB_PREV))
    {
        n++;

        if (k.mv_size != MR_DLV_ID_LEN || v.mv_size < sizeof(mr_dlv_rec_t)) {
            continue;
        }

        ngx_memcpy(&rec, v.mv_data, sizeof(mr_dlv_rec_t));

        if (!(rec.status == MR_DLV_FAILED
              || (rec.status == MR_DLV_PENDING && rec.attempts > 0)))
        {
            continue;
        }

        dlv = ngx_array_push(dlvs);
        if (dlv == NULL) {
            rc = ENOMEM;
            break;
        }

        rc = mr_store_dlv_read(txn, k.mv_data, dlv, pool);
        if (rc != 0) {
            break;
        }
    }

    mdb_cursor_close(cur);
    mr_store_read_end();

    *scanned = n;

    if (rc == MDB_NOTFOUND) {
        rc = 0;
    }

    return mr_store_read_rc(rc, "deliveries");
}
