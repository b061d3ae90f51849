
/*
 * ModelRoute: a store of the previous format, upgraded in place.
 *
 * Format 3 (this build) adds to format 2, whose records do not change:
 *   quota   org -> mr_quota_t: what each account keeps, counted from its
 *           executions, endpoints, keys, events and deliveries;
 *   keyend  be64 end_ms + key_id -> org: the keys that ended (revoked
 *           ones from the time of the upgrade, rotated ones from the end
 *           of their grace), purged after the retention;
 *   dlvq    org + target + be64 due_ms + dlv_id -> "": the queues of
 *           pending deliveries, which replace format 2's due index
 *           ("dlvdue", dropped); the deliveries format 2 parked out of it
 *           (their endpoint inactive) join their queue, due at once.
 *
 * The upgrade runs when nginx starts, in the master, before any worker
 * opens the store; not on a reload or a binary upgrade, whose running
 * workers use the store's format (nginx refuses those with a message),
 * and not for nginx -t, which says that the start will upgrade.  It is
 * one write transaction that reads every record of the store once and
 * writes the new tables and the version: the store is upgraded in full,
 * or, if anything fails (no room in the map, say), left as it was, with
 * a message that says why.  It takes time in proportion to the store
 * (LMDB keeps a large transaction's pages on disk as it goes, so memory
 * stays small) and needs room in the map for the new tables: about 120
 * bytes per pending delivery, 100 per account, 50 per ended key.
 */


#include <ngx_config.h>
#include <ngx_core.h>

#include <lmdb.h>

#include "mr_store.h"
#include "mr_store_lmdb.h"


#define MR_UPGRADE_FROM  (MR_STORE_VERSION - 1)


typedef struct {
    MDB_dbi                   exec;
    MDB_dbi                   whep;
    MDB_dbi                   key;
    MDB_dbi                   event;
    MDB_dbi                   dlv;
    MDB_dbi                   dlvq;
    MDB_dbi                   quota;
    MDB_dbi                   keyend;
    MDB_dbi                   meta;
    int64_t                   now;
    ngx_uint_t                records;
    ngx_uint_t                queued;
} mr_upgrade_t;


static int mr_upgrade_version(MDB_env *env, uint32_t *version);
static int mr_upgrade_run(MDB_txn *txn, mr_upgrade_t *up);
static int mr_upgrade_records(MDB_txn *txn, mr_upgrade_t *up, MDB_dbi dbi,
    ngx_uint_t what);
static int mr_upgrade_delivery(MDB_txn *txn, mr_upgrade_t *up,
    MDB_cursor *cur, MDB_val *k, MDB_val *v);
static int mr_upgrade_usage(MDB_txn *txn, mr_upgrade_t *up, u_char *org,
    int64_t bytes, ngx_uint_t which, int64_t count);


#define MR_UPGRADE_EXEC   0
#define MR_UPGRADE_WH     1
#define MR_UPGRADE_KEY    2
#define MR_UPGRADE_EVENT  3
#define MR_UPGRADE_DLV    4


ngx_int_t
mr_store_upgrade(ngx_cycle_t *cycle, mr_main_conf_t *mcf)
{
    int            rc;
    MDB_env       *env;
    MDB_txn       *txn;
    MDB_val        k, v;
    uint32_t       version;
    ngx_msec_t     start;
    mr_upgrade_t   up;

    if (ngx_process == NGX_PROCESS_SIGNALLER) {
        return NGX_OK;
    }

    if (mr_store_open(&env, mcf, cycle->log) != 0) {
        return NGX_ERROR;
    }

    rc = mr_upgrade_version(env, &version);

    if (rc != 0 || version != MR_UPGRADE_FROM) {

        /* a new store, the current format, or one the caller refuses */

        mdb_env_close(env);

        if (rc != 0) {
            ngx_log_error(NGX_LOG_EMERG, cycle->log, 0,
                          "modelroute_store: \"%V\": %s", &mcf->store_path,
                          mdb_strerror(rc));
            return NGX_ERROR;
        }

        return NGX_OK;
    }

    if (ngx_test_config) {
        mdb_env_close(env);

        ngx_log_error(NGX_LOG_NOTICE, cycle->log, 0,
                      "modelroute_store: \"%V\" is of format %d: nginx "
                      "upgrades it to format %d when it starts",
                      &mcf->store_path, MR_UPGRADE_FROM, MR_STORE_VERSION);
        return NGX_OK;
    }

    if (!ngx_is_init_cycle(cycle->old_cycle) || getenv(NGINX_VAR) != NULL) {
        mdb_env_close(env);

        ngx_log_error(NGX_LOG_EMERG, cycle->log, 0,
                      "modelroute_store: \"%V\" is of format %d and this "
                      "module upgrades it to format %d when nginx starts, "
                      "not on a reload or a binary upgrade, whose running "
                      "workers use format %d: stop nginx and start it",
                      &mcf->store_path, MR_UPGRADE_FROM, MR_STORE_VERSION,
                      MR_UPGRADE_FROM);
        return NGX_ERROR;
    }

    ngx_log_error(NGX_LOG_NOTICE, cycle->log, 0,
                  "modelroute_store: upgrading \"%V\" from format %d to %d",
                  &mcf->store_path, MR_UPGRADE_FROM, MR_STORE_VERSION);

    ngx_memzero(&up, sizeof(mr_upgrade_t));
    up.now = mr_now_ms();
    start = ngx_current_msec;

    rc = mdb_txn_begin(env, NULL, 0, &txn);

    if (rc == 0) {
        rc = mr_upgrade_run(txn, &up);

        if (rc == 0) {
            version = MR_STORE_VERSION;

            k.mv_data = "version";
            k.mv_size = sizeof("version") - 1;
            v.mv_data = &version;
            v.mv_size = sizeof(uint32_t);

            rc = mdb_put(txn, up.meta, &k, &v, 0);
        }

        if (rc == 0) {
            rc = mdb_txn_commit(txn);

        } else {
            mdb_txn_abort(txn);
        }
    }

    mdb_env_close(env);

    if (rc != 0) {
        ngx_log_error(NGX_LOG_EMERG, cycle->log, 0,
                      "modelroute_store: upgrading \"%V\" from format %d "
                      "to %d failed: %s; the store is unchanged (format "
                      "%d)%s", &mcf->store_path, MR_UPGRADE_FROM,
                      MR_STORE_VERSION, mdb_strerror(rc), MR_UPGRADE_FROM,
                      rc == MDB_MAP_FULL ? ": raise modelroute_store_map_size"
                                           " and start nginx again" : "");
        return NGX_ERROR;
    }

    ngx_time_update();

    ngx_log_error(NGX_LOG_NOTICE, cycle->log, 0,
                  "modelroute_store: \"%V\" upgraded to format %d: %ui "
                  "records counted, %ui pending deliveries queued, in %M ms",
                  &mcf->store_path, MR_STORE_VERSION, up.records, up.queued,
                  ngx_current_msec - start);

    return NGX_OK;
}


/* the store's format; MR_STORE_VERSION for a new, empty one */

static int
mr_upgrade_version(MDB_env *env, uint32_t *version)
{
    int       rc;
    MDB_dbi   meta;
    MDB_val   k, v;
    MDB_txn  *txn;

    *version = MR_STORE_VERSION;

    rc = mdb_txn_begin(env, NULL, MDB_RDONLY, &txn);
    if (rc != 0) {
        return rc;
    }

    rc = mdb_dbi_open(txn, "meta", 0, &meta);

    if (rc == 0) {
        k.mv_data = "version";
        k.mv_size = sizeof("version") - 1;

        rc = mdb_get(txn, meta, &k, &v);

        if (rc == 0 && v.mv_size == sizeof(uint32_t)) {
            ngx_memcpy(version, v.mv_data, sizeof(uint32_t));

        } else if (rc == 0) {
            *version = 0;     /* not ours: refused by the caller */
        }
    }

    mdb_txn_abort(txn);

    return (rc == MDB_NOTFOUND) ? 0 : rc;
}


static int
mr_upgrade_run(MDB_txn *txn, mr_upgrade_t *up)
{
    int      rc;
    MDB_dbi  old;

    if ((rc = mdb_dbi_open(txn, "exec", MDB_CREATE, &up->exec))
        || (rc = mdb_dbi_open(txn, "whep", MDB_CREATE, &up->whep))
        || (rc = mdb_dbi_open(txn, "key", MDB_CREATE, &up->key))
        || (rc = mdb_dbi_open(txn, "event", MDB_CREATE, &up->event))
        || (rc = mdb_dbi_open(txn, "dlv", MDB_CREATE, &up->dlv))
        || (rc = mdb_dbi_open(txn, "dlvq", MDB_CREATE, &up->dlvq))
        || (rc = mdb_dbi_open(txn, "quota", MDB_CREATE, &up->quota))
        || (rc = mdb_dbi_open(txn, "keyend", MDB_CREATE, &up->keyend))
        || (rc = mdb_dbi_open(txn, "meta", MDB_CREATE, &up->meta)))
    {
        return rc;
    }

    /* what earlier runs of nginx -t may have made of the new tables */

    if ((rc = mdb_drop(txn, up->dlvq, 0))
        || (rc = mdb_drop(txn, up->quota, 0))
        || (rc = mdb_drop(txn, up->keyend, 0)))
    {
        return rc;
    }

    if ((rc = mr_upgrade_records(txn, up, up->exec, MR_UPGRADE_EXEC))
        || (rc = mr_upgrade_records(txn, up, up->whep, MR_UPGRADE_WH))
        || (rc = mr_upgrade_records(txn, up, up->key, MR_UPGRADE_KEY))
        || (rc = mr_upgrade_records(txn, up, up->event, MR_UPGRADE_EVENT))
        || (rc = mr_upgrade_records(txn, up, up->dlv, MR_UPGRADE_DLV)))
    {
        return rc;
    }

    /* format 2's due index of deliveries, replaced by the queues */

    rc = mdb_dbi_open(txn, "dlvdue", 0, &old);

    if (rc == 0) {
        return mdb_drop(txn, old, 1);
    }

    return (rc == MDB_NOTFOUND) ? 0 : rc;
}


/* every record of one table, counted in its account's use */

static int
mr_upgrade_records(MDB_txn *txn, mr_upgrade_t *up, MDB_dbi dbi,
    ngx_uint_t what)
{
    int            rc;
    u_char        *org;
    int64_t        count, bytes;
    MDB_val        k, v, ek, ev;
    ngx_uint_t     which;
    MDB_cursor    *cur;
    mr_key_rec_t   key;
    mr_exec_rec_t  exec;
    u_char         ekey[8 + MR_KEY_ID_LEN];

    static const size_t  extra[] = {
        MR_USAGE_EXEC, MR_USAGE_WH, MR_USAGE_KEY, MR_USAGE_EVENT,
        MR_USAGE_DLV
    };

    rc = mdb_cursor_open(txn, dbi, &cur);
    if (rc != 0) {
        return rc;
    }

    for (rc = mdb_cursor_get(cur, &k, &v, MDB_FIRST);
         rc == 0;
         rc = mdb_cursor_get(cur, &k, &v, MDB_NEXT))
    {
        org = NULL;
        bytes = (int64_t) (k.mv_size + v.mv_size + extra[what]);
        which = MR_LIMIT_BYTES;
        count = 0;

        switch (what) {

        case MR_UPGRADE_EXEC:
            if (v.mv_size < sizeof(mr_exec_rec_t)) {
                rc = MDB_CORRUPTED;
                break;
            }

            ngx_memcpy(&exec, v.mv_data, sizeof(mr_exec_rec_t));

            org = exec.org;
            which = MR_LIMIT_EXECUTIONS;
            count = !mr_status_terminal(exec.status);
            break;

        case MR_UPGRADE_WH:
            if (v.mv_size < sizeof(mr_wh_rec_t)) {
                rc = MDB_CORRUPTED;
                break;
            }

            org = (u_char *) v.mv_data + offsetof(mr_wh_rec_t, org);
            which = MR_LIMIT_ENDPOINTS;
            count = 1;
            break;

        case MR_UPGRADE_KEY:
            if (v.mv_size < sizeof(mr_key_rec_t)) {
                rc = MDB_CORRUPTED;
                break;
            }

            ngx_memcpy(&key, v.mv_data, sizeof(mr_key_rec_t));

            org = (u_char *) v.mv_data + offsetof(mr_key_rec_t, org);
            which = MR_LIMIT_KEYS;
            count = !key.revoked && key.valid_until_ms == 0;

            if (count) {
                break;
            }

            /* ended: in the index of the keys to purge */

            mr_be64_put(ekey, (uint64_t) (key.revoked ? up->now
                                                      : key.valid_until_ms));
            ngx_memcpy(ekey + 8, key.key_id, MR_KEY_ID_LEN);

            ek.mv_data = ekey;
            ek.mv_size = sizeof(ekey);
            ev.mv_data = key.org;
            ev.mv_size = MR_ORG_ID_LEN;

            rc = mdb_put(txn, up->keyend, &ek, &ev, 0);
            break;

        case MR_UPGRADE_EVENT:
            if (v.mv_size < MR_ORG_ID_LEN) {
                rc = MDB_CORRUPTED;
                break;
            }

            org = v.mv_data;
            break;

        default: /* MR_UPGRADE_DLV */
            if (v.mv_size < sizeof(mr_dlv_rec_t)) {
                rc = MDB_CORRUPTED;
                break;
            }

            org = (u_char *) v.mv_data + offsetof(mr_dlv_rec_t, org);

            rc = mr_upgrade_delivery(txn, up, cur, &k, &v);
        }

        if (rc == 0) {
            rc = mr_upgrade_usage(txn, up, org, bytes, which, count);
        }

        if (rc != 0) {
            break;
        }

        up->records++;
    }

    mdb_cursor_close(cur);

    return (rc == MDB_NOTFOUND) ? 0 : rc;
}


/*
 * A pending delivery joins its queue; one that format 2 parked (out of
 * the due index) is due at once, and its record says so.  The record
 * is rewritten in place, at its cursor, with the same size.
 */

static int
mr_upgrade_delivery(MDB_txn *txn, mr_upgrade_t *up, MDB_cursor *cur,
    MDB_val *k, MDB_val *v)
{
    int        rc;
    u_char    *copy;
    MDB_val    qk, qv, nv;
    mr_dlv_t   dlv;
    u_char     key[MR_DLV_BUSY_LEN + 8 + MR_DLV_ID_LEN];

    copy = ngx_alloc(v->mv_size, ngx_cycle->log);
    if (copy == NULL) {
        return ENOMEM;
    }

    ngx_memcpy(copy, v->mv_data, v->mv_size);

    rc = mr_store_dlv_parse(copy, v->mv_size, &dlv);

    if (rc != 0 || dlv.rec.status != MR_DLV_PENDING) {
        ngx_free(copy);
        return rc;
    }

    if (dlv.rec.due_ms == 0) {
        dlv.rec.due_ms = up->now;
        dlv.rec.next_ms = up->now;

        ngx_memcpy(copy, &dlv.rec, sizeof(mr_dlv_rec_t));

        nv.mv_data = copy;
        nv.mv_size = v->mv_size;

        rc = mdb_cursor_put(cur, k, &nv, MDB_CURRENT);
    }

    if (rc == 0) {
        mr_store_dlvq_key(&dlv, dlv.rec.due_ms, key);

        qk.mv_data = key;
        qk.mv_size = sizeof(key);
        qv.mv_data = "";
        qv.mv_size = 0;

        rc = mdb_put(txn, up->dlvq, &qk, &qv, 0);
    }

    ngx_free(copy);

    up->queued += (rc == 0);

    return rc;
}


static int
mr_upgrade_usage(MDB_txn *txn, mr_upgrade_t *up, u_char *org, int64_t bytes,
    ngx_uint_t which, int64_t count)
{
    int         rc;
    MDB_val     k, v;
    ngx_uint_t  i;
    mr_quota_t  q;
    u_char      id[MR_ORG_ID_LEN];

    /* org may point into a page this put changes */

    ngx_memcpy(id, org, MR_ORG_ID_LEN);

    k.mv_data = id;
    k.mv_size = MR_ORG_ID_LEN;

    rc = mdb_get(txn, up->quota, &k, &v);

    if (rc == 0 && v.mv_size >= sizeof(mr_quota_t)) {
        ngx_memcpy(&q, v.mv_data, sizeof(mr_quota_t));

    } else if (rc == MDB_NOTFOUND) {
        ngx_memzero(&q, sizeof(mr_quota_t));

        for (i = 0; i < MR_LIMIT_N; i++) {
            q.limit[i] = -1;
        }

    } else {
        return rc ? rc : MDB_CORRUPTED;
    }

    q.used[MR_LIMIT_BYTES] += bytes;
    q.used[which] += count;

    v.mv_data = &q;
    v.mv_size = sizeof(mr_quota_t);

    return mdb_put(txn, up->quota, &k, &v, 0);
}
