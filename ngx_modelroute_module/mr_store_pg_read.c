
/*
 * ModelRoute: the PostgreSQL store's reads (mr_store_read()).
 *
 * A read is one request of one or a few statements on a reader
 * connection, answered later on the event loop (its handler).  Each read
 * sees committed data only: what a client was told was done is there.
 * The results are those of the LMDB store (mr_store.c, mr_store_read.c):
 * the same lists in the same order, the same pages, the same counts.
 */


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_event.h>

#include <openssl/rand.h>

#include "mr_store.h"
#include "mr_rules.h"
#include "mr_store_pg.h"
#include "mr_store_pg_sql.h"
#include "mr_store_pg_rows.h"
#include "mr_store_pg_ops.h"


#define MR_PG_LIST_SCAN      1000     /* as the LMDB store's */
#define MR_PG_OPS_DLV_SCAN   2048


typedef struct {
    ngx_pool_t               *own;           /* the read's, if it had none */
    int64_t                   start;
    ngx_uint_t                kc_gen;        /* the key cache's, as sent */
} mr_pg_read_ctx_t;


static ngx_int_t mr_pg_read_row(mr_store_read_t *rd, PGresult *res,
    int row);
static ngx_int_t mr_pg_group_rows(mr_pg_group_t *g, PGresult *res,
    u_char *hashes);
static ngx_int_t mr_pg_read_list(mr_store_read_t *rd, PGresult *res);
static ngx_int_t mr_pg_read_verify(mr_store_read_t *rd, PGresult *res);
static ngx_int_t mr_pg_read_states(mr_store_read_t *rd, PGresult *res);
static ngx_int_t mr_pg_read_failed(mr_store_read_t *rd, PGresult *res);
static ngx_pool_t *mr_pg_read_pool(mr_store_read_t *rd);
static ngx_uint_t mr_pg_execs_stmt(ngx_uint_t parts);


/* changed whenever the key cache is emptied (mr_pg_keys_forget()) */
static ngx_uint_t  mr_pg_kc_gen;


ngx_int_t
mr_pg_read_create(mr_store_read_t *rd)
{
    ngx_pool_t        *pool;
    mr_pg_read_ctx_t  *ctx;

    pool = rd->pool;

    if (pool == NULL) {
        pool = ngx_create_pool(1024, ngx_cycle->log);
        if (pool == NULL) {
            return NGX_ERROR;
        }
    }

    ctx = ngx_pcalloc(pool, sizeof(mr_pg_read_ctx_t));
    if (ctx == NULL) {
        if (rd->pool == NULL) {
            ngx_destroy_pool(pool);
        }

        return NGX_ERROR;
    }

    ctx->own = (rd->pool == NULL) ? pool : NULL;
    ctx->start = mr_local_ms();    /* its wait: on this machine's clock */
    ctx->kc_gen = mr_pg_kc_gen;

    rd->backend = ctx;

    return NGX_OK;
}


static ngx_pool_t *
mr_pg_read_pool(mr_store_read_t *rd)
{
    mr_pg_read_ctx_t  *ctx;

    ctx = rd->backend;

    return rd->pool ? rd->pool : ctx->own;
}


/* the read is answered: its handler runs; its own memory goes after */

void
mr_pg_read_answer(mr_store_read_t *rd, ngx_int_t rc)
{
    ngx_pool_t        *own;
    mr_pg_read_ctx_t  *ctx;

    ctx = rd->backend;
    own = ctx->own;

    rd->rc = rc;
    rd->backend = NULL;

    mr_pg->nreads--;
    mr_pg_hold();

    rd->handler(rd);

    if (own) {
        ngx_destroy_pool(own);
    }
}


void
mr_pg_read_wait(mr_store_read_t *rd)
{
    ngx_queue_insert_tail(&mr_pg->reads, &rd->queue);
}


ngx_uint_t
mr_pg_read_expired(mr_store_read_t *rd, int64_t now)
{
    mr_pg_read_ctx_t  *ctx;

    ctx = rd->backend;

    return now - ctx->start >= (int64_t) mr_pg_main_conf()->pg_timeout;
}


/* the oldest waiting read: answered 503 if it waited its time */

ngx_int_t
mr_pg_read_waited(ngx_queue_t *q, int64_t now)
{
    mr_store_read_t  *rd;

    rd = ngx_queue_data(q, mr_store_read_t, queue);

    if (!mr_pg_read_expired(rd, now)) {
        return NGX_DECLINED;
    }

    ngx_queue_remove(q);

    mr_pg_read_answer(rd, NGX_BUSY);

    return NGX_OK;
}


const char *
mr_pg_read_name(mr_store_read_t *rd)
{
    static const char  *names[] = {
        "", "key", "account", "keys", "execution", "executions",
        "executions", "account", "endpoint", "endpoints", "deliveries",
        "secret", "meta", "dispatch index", "statistics", "accounts",
        "deliveries", "route states", "database size"
    };

    return rd->type < sizeof(names) / sizeof(names[0]) ? names[rd->type]
                                                       : "";
}


/* ---- the statements of a read */

ngx_int_t
mr_pg_read_send(mr_pg_conn_t *pc, mr_store_read_t *rd,
    mr_pg_req_handler_pt handler)
{
    ngx_int_t       rc;
    ngx_uint_t      i;
    ngx_pool_t     *pool;
    mr_pg_buf_t     b;
    mr_pg_req_t    *req;
    const char     *v[8];
    mr_list_query_t  *q;
    u_char          raw[MR_STORE_SECRET_LEN];

    pool = mr_pg_read_pool(rd);

    req = mr_pg_req_create(pool, 4);
    if (req == NULL) {
        return NGX_ERROR;
    }

    req->conn = pc;
    rc = NGX_OK;

    switch (rd->type) {

    case MR_READ_AUTH:
        v[0] = mr_pg_hex(pool, rd->id, MR_SHA256_LEN);
        rc = v[0] ? mr_pg_send(req, MR_SQL_AUTH, 1, v, NULL) : NGX_ERROR;
        break;

    case MR_READ_ACCOUNT:
    case MR_READ_KEYS:
        v[0] = mr_pg_str(pool, rd->id, MR_ORG_ID_LEN);
        rc = v[0] ? mr_pg_send(req, MR_SQL_ACCOUNT, 1, v, NULL) : NGX_ERROR;

        if (rc == NGX_OK && rd->type == MR_READ_KEYS) {
            rc = mr_pg_send(req, MR_SQL_KEYS, 1, v, NULL);
        }

        break;

    case MR_READ_EXEC:

        /* a part of it: all but the input (more than MR_PARTS_STATE) */

        v[0] = mr_pg_str(pool, rd->id, MR_EXEC_ID_LEN);
        rc = v[0] ? mr_pg_send(req, rd->parts == MR_PARTS_WHOLE
                                    ? MR_SQL_EXEC : MR_SQL_EXEC_SHOWN,
                               1, v, NULL)
                  : NGX_ERROR;
        break;

    case MR_READ_EXECS:
        mr_pg_buf_init(&b, pool);

        for (i = 0; i < rd->nids; i++) {
            mr_pg_buf_str(&b, rd->ids + i * MR_EXEC_ID_LEN, MR_EXEC_ID_LEN);
        }

        v[0] = mr_pg_buf_end(&b);
        rc = v[0] ? mr_pg_send(req, mr_pg_execs_stmt(rd->parts), 1, v, NULL)
                  : NGX_ERROR;
        break;

    case MR_READ_EXEC_LIST:
        q = rd->query;

        v[0] = mr_pg_str(pool, q->org, MR_ORG_ID_LEN);
        v[1] = mr_pg_str(pool, q->starting_after.data,
                         q->starting_after.len);
        v[2] = mr_pg_int(pool, (int64_t) q->status);
        v[3] = mr_pg_str(pool, q->model.data, q->model.len);
        v[4] = mr_pg_int(pool, (int64_t) q->limit + 1);
        v[5] = mr_pg_int(pool, MR_PG_LIST_SCAN + 1);

        for (i = 0; i < 6; i++) {
            if (v[i] == NULL) {
                return NGX_ERROR;
            }
        }

        if (q->starting_after.len) {
            rc = mr_pg_send(req, MR_SQL_LIST_CURSOR, 2,
                            (const char *[]) { v[1], v[0] }, NULL);
        }

        if (rc == NGX_OK) {
            rc = mr_pg_send(req, MR_SQL_LIST, 6, v, NULL);
        }

        break;

    case MR_READ_VERIFY:
        v[0] = mr_pg_str(pool, rd->id, MR_ORG_ID_LEN);
        v[1] = mr_pg_int(pool, (int64_t) (sizeof(mr_exec_rec_t)
                                          + MR_EXEC_ID_LEN + MR_USAGE_EXEC));
        v[2] = mr_pg_int(pool, (int64_t) (sizeof(mr_wh_rec_t)
                                          + MR_WH_ID_LEN + MR_USAGE_WH));
        v[3] = mr_pg_int(pool, (int64_t) (sizeof(mr_key_rec_t)
                                          + MR_KEY_ID_LEN + MR_USAGE_KEY));
        v[4] = mr_pg_int(pool, (int64_t) (MR_EVT_ID_LEN + MR_ORG_ID_LEN
                                          + MR_USAGE_EVENT));
        v[5] = mr_pg_int(pool, (int64_t) (sizeof(mr_dlv_rec_t)
                                          + MR_DLV_ID_LEN + MR_USAGE_DLV));

        for (i = 0; i < 6; i++) {
            if (v[i] == NULL) {
                return NGX_ERROR;
            }
        }

        rc = mr_pg_send(req, MR_SQL_VERIFY, 6, v, NULL);
        break;

    case MR_READ_WH:
        v[0] = mr_pg_str(pool, rd->id, MR_WH_ID_LEN);
        rc = v[0] ? mr_pg_send(req, MR_SQL_WH, 1, v, NULL) : NGX_ERROR;
        break;

    case MR_READ_WH_LIST:
        v[0] = mr_pg_str(pool, rd->id, MR_ORG_ID_LEN);
        rc = v[0] ? mr_pg_send(req, MR_SQL_WH_LIST, 1, v, NULL) : NGX_ERROR;
        break;

    case MR_READ_DLV_LIST:
        v[0] = mr_pg_str(pool, rd->id, rd->len);
        v[1] = mr_pg_int(pool, (int64_t) rd->limit);

        if (v[0] == NULL || v[1] == NULL) {
            return NGX_ERROR;
        }

        i = (rd->len == MR_WH_ID_LEN);

        rc = mr_pg_send(req, i ? MR_SQL_OWNER_WH : MR_SQL_OWNER_EXEC, 1, v,
                        NULL);

        if (rc == NGX_OK) {
            rc = mr_pg_send(req, i ? MR_SQL_DLV_BY_WH : MR_SQL_DLV_BY_EXEC,
                            2, v, NULL);
        }

        break;

    case MR_READ_SECRET:
        v[0] = mr_pg_str(pool, rd->id, MR_ORG_ID_LEN);
        rc = v[0] ? mr_pg_send(req, MR_SQL_SECRET, 1, v, NULL) : NGX_ERROR;
        break;

    case MR_READ_META:

        /* the callback key: made by the first node that asks */

        if (RAND_bytes(raw, sizeof(raw)) != 1) {
            return NGX_ERROR;
        }

        v[0] = mr_pg_hex(pool, raw, sizeof(raw));
        rc = v[0] ? mr_pg_send(req, MR_SQL_CBKEY, 1, v, NULL) : NGX_ERROR;
        break;

    case MR_READ_DISP_NEXT:
        rc = mr_pg_send(req, MR_SQL_DISP_NEXT, 0, NULL, NULL);
        break;

    case MR_READ_STATS:
        rc = mr_pg_send(req, MR_SQL_STATS, 0, NULL, NULL);

        if (rc == NGX_OK && rd->states) {
            rc = mr_pg_send(req, MR_SQL_ROUTES, 0, NULL, NULL);
        }

        break;

    case MR_READ_ROUTES:
        rc = mr_pg_send(req, MR_SQL_ROUTES, 0, NULL, NULL);
        break;

    case MR_READ_SIZE:
        rc = mr_pg_send(req, MR_SQL_DB_SIZE, 0, NULL, NULL);
        break;

    case MR_READ_ACCOUNTS:
        v[0] = mr_pg_str(pool, rd->after.data, rd->after.len);
        v[1] = mr_pg_int(pool, (int64_t) rd->limit + 1);
        rc = (v[0] && v[1]) ? mr_pg_send(req, MR_SQL_ACCOUNTS, 2, v, NULL)
                            : NGX_ERROR;
        break;

    case MR_READ_FAILED_DLVS:
        v[0] = mr_pg_int(pool, (int64_t) rd->limit);
        v[1] = mr_pg_int(pool, MR_PG_OPS_DLV_SCAN);
        rc = (v[0] && v[1]) ? mr_pg_send(req, MR_SQL_FAILED_DLVS, 2, v, NULL)
                            : NGX_ERROR;
        break;

    default:
        return NGX_ERROR;
    }

    if (rc != NGX_OK) {
        /* not sent whole: not sent (and the connection is made again) */
        req->status = MR_PG_REQ_LOST;
        (void) mr_pg_req_end(pc, req, handler, rd);
        return NGX_ERROR;
    }

    return mr_pg_req_end(pc, req, handler, rd);
}


/* the statement that reads executions by their ids, for these parts */

static ngx_uint_t
mr_pg_execs_stmt(ngx_uint_t parts)
{
    switch (parts) {
    case MR_PARTS_SHOWN:
        return MR_SQL_EXECS_SHOWN;
    case MR_PARTS_STATE:
        return MR_SQL_EXECS_STATE;
    default:
        return MR_SQL_EXECS;
    }
}


/*
 * ---- reads grouped: the keys (by their hashes) and the executions (by
 * their ids) that requests asked for in one turn of the event loop are
 * read by one statement, not one each.  Only reads not sent yet are
 * grouped: each sees what was committed before the statement is sent,
 * after its request came, as it would alone.
 */

ngx_uint_t
mr_pg_read_groups(mr_store_read_t *rd)
{
    return rd->type == MR_READ_AUTH || rd->type == MR_READ_EXEC;
}


ngx_int_t
mr_pg_group_send(mr_pg_conn_t *pc, mr_pg_group_t *g,
    mr_pg_req_handler_pt handler)
{
    size_t        len;
    ngx_int_t     rc;
    ngx_uint_t    i, j;
    mr_pg_buf_t   b;
    mr_pg_req_t  *req;
    const char   *v[1];
    u_char        hex[2 * MR_SHA256_LEN];

    req = mr_pg_req_create(g->pool, 1);
    if (req == NULL) {
        return NGX_ERROR;
    }

    req->conn = pc;

    len = (g->type == MR_READ_AUTH) ? MR_SHA256_LEN : MR_EXEC_ID_LEN;

    mr_pg_buf_init(&b, g->pool);

    for (i = 0; i < g->n; i++) {

        /* each asked once: many requests of one client share its key */

        for (j = 0; j < i; j++) {
            if (ngx_memcmp(g->rd[j]->id, g->rd[i]->id, len) == 0) {
                break;
            }
        }

        if (j < i) {
            continue;
        }

        if (g->type == MR_READ_AUTH) {
            (void) mr_hex(hex, g->rd[i]->id, MR_SHA256_LEN);
            mr_pg_buf_str(&b, hex, sizeof(hex));

        } else {
            mr_pg_buf_str(&b, g->rd[i]->id, MR_EXEC_ID_LEN);
        }
    }

    v[0] = mr_pg_buf_end(&b);

    rc = (v[0] == NULL) ? NGX_ERROR
         : mr_pg_send(req, (g->type == MR_READ_AUTH)
                           ? MR_SQL_AUTHS : mr_pg_execs_stmt(g->parts),
                      1, v, NULL);

    if (rc != NGX_OK) {
        req->status = MR_PG_REQ_LOST;
        (void) mr_pg_req_end(pc, req, handler, g);
        return NGX_ERROR;
    }

    return mr_pg_req_end(pc, req, handler, g);
}


/*
 * each read of the group: its own row, or none (NGX_DECLINED); a row
 * that cannot be read fails them all (alone, its read would fail)
 */

void
mr_pg_group_parse(mr_pg_group_t *g, mr_pg_req_t *req)
{
    int               n, row;
    u_char           *hashes;
    ngx_uint_t        i;
    PGresult         *res;
    mr_store_read_t  *rd;

    res = req->res[0];
    n = res ? PQntuples(res) : 0;

    hashes = (n && g->type == MR_READ_AUTH)
             ? ngx_pnalloc(g->pool, (size_t) n * MR_SHA256_LEN) : NULL;

    if (res == NULL || (n && g->type == MR_READ_AUTH && hashes == NULL)
        || mr_pg_group_rows(g, res, hashes) != NGX_OK)
    {
        for (i = 0; i < g->n; i++) {
            g->rd[i]->rc = NGX_ERROR;
        }

        return;
    }

    for (i = 0; i < g->n; i++) {
        rd = g->rd[i];

        for (row = 0; row < n; row++) {
            if (g->type == MR_READ_AUTH
                ? ngx_memcmp(hashes + (size_t) row * MR_SHA256_LEN, rd->id,
                             MR_SHA256_LEN) == 0
                : ngx_memcmp(PQgetvalue(res, row, 0), rd->id,
                             MR_EXEC_ID_LEN) == 0)
            {
                break;
            }
        }

        rd->rc = mr_pg_read_row(rd, res, (row < n) ? row : -1);
    }
}


/* the rows' keys: each key's hash (into hashes), each execution's id */

static ngx_int_t
mr_pg_group_rows(mr_pg_group_t *g, PGresult *res, u_char *hashes)
{
    int  row;

    for (row = 0; row < PQntuples(res); row++) {

        if (g->type == MR_READ_AUTH) {
            if (mr_pg_get_bytea(res, row, 2,
                                hashes + (size_t) row * MR_SHA256_LEN,
                                MR_SHA256_LEN)
                != NGX_OK)
            {
                return NGX_ERROR;
            }

        } else if (PQgetlength(res, row, 0) != MR_EXEC_ID_LEN) {
            return NGX_ERROR;
        }
    }

    return NGX_OK;
}


/* ---- the results */

/* a read of one key or one execution: its row (-1: none) */

static ngx_int_t
mr_pg_read_row(mr_store_read_t *rd, PGresult *res, int row)
{
    if (row < 0) {
        return NGX_DECLINED;
    }

    if (rd->type == MR_READ_EXEC) {
        return mr_pg_parse_exec(res, row, 0, &rd->exec, rd->pool);
    }

    if (mr_pg_parse_key(res, row, 0, &rd->key, rd->pool) != NGX_OK) {
        return NGX_ERROR;
    }

    rd->rl_value = (uint64_t) mr_pg_get_int(res, row, 10);
    rd->rl_own = (mr_pg_get_int(res, row, 10) >= 0);

    return NGX_OK;
}


ngx_int_t
mr_pg_read_parse(mr_store_read_t *rd, mr_pg_req_t *req)
{
    int          i, n;
    PGresult    *res;
    mr_key_t    *key;
    mr_wh_t     *wh;
    mr_dlv_t    *dlv;
    ngx_pool_t  *pool;
    mr_quota_t  *q;
    mr_account_t  *acct;

    pool = rd->pool;
    res = req->res[0];

    if (res == NULL) {
        return NGX_ERROR;
    }

    n = PQntuples(res);

    switch (rd->type) {

    case MR_READ_AUTH:
    case MR_READ_EXEC:
        return mr_pg_read_row(rd, res, n ? 0 : -1);

    case MR_READ_ACCOUNT:
    case MR_READ_KEYS:
        if (n == 0) {
            return NGX_DECLINED;
        }

        if (mr_pg_parse_account(res, 0, 0, &rd->account, &rd->quota,
                                NULL, pool)
            != NGX_OK)
        {
            return NGX_ERROR;
        }

        rd->rl_value = (uint64_t) mr_pg_get_int(res, 0, 16);
        rd->rl_own = (mr_pg_get_int(res, 0, 16) >= 0);

        if (rd->type == MR_READ_ACCOUNT) {
            return NGX_OK;
        }

        res = req->res[1];

        for (i = 0; res && i < PQntuples(res); i++) {
            key = ngx_array_push(rd->list);
            if (key == NULL
                || mr_pg_parse_key(res, i, 0, key, pool) != NGX_OK)
            {
                return NGX_ERROR;
            }
        }

        return res ? NGX_OK : NGX_ERROR;

    case MR_READ_EXECS:
        return mr_pg_read_list(rd, res);

    case MR_READ_EXEC_LIST:
        if (rd->query->starting_after.len) {
            if (n == 0) {
                return NGX_DECLINED;
            }

            res = req->res[1];

            if (res == NULL) {
                return NGX_ERROR;
            }
        }

        return mr_pg_read_list(rd, res);

    case MR_READ_VERIFY:
        if (n == 0) {
            return NGX_DECLINED;
        }

        return mr_pg_read_verify(rd, res);

    case MR_READ_WH:
        if (n == 0) {
            return NGX_DECLINED;
        }

        if (mr_pg_parse_wh(res, 0, 0, &rd->wh, pool) != NGX_OK) {
            return NGX_ERROR;
        }

        return ngx_memcmp(rd->wh.rec.org, rd->org, MR_ORG_ID_LEN) == 0
               ? NGX_OK : NGX_DECLINED;

    case MR_READ_WH_LIST:
        for (i = 0; i < n; i++) {
            wh = ngx_array_push(rd->list);
            if (wh == NULL || mr_pg_parse_wh(res, i, 0, wh, pool) != NGX_OK) {
                return NGX_ERROR;
            }
        }

        return NGX_OK;

    case MR_READ_DLV_LIST:
        if (n == 0 || PQgetlength(res, 0, 0) != MR_ORG_ID_LEN
            || ngx_memcmp(PQgetvalue(res, 0, 0), rd->org, MR_ORG_ID_LEN)
               != 0)
        {
            return NGX_DECLINED;
        }

        res = req->res[1];

        for (i = 0; res && i < PQntuples(res); i++) {
            dlv = ngx_array_push(rd->list);
            if (dlv == NULL
                || mr_pg_parse_dlv(res, i, 0, dlv, pool) != NGX_OK)
            {
                return NGX_ERROR;
            }
        }

        return res ? NGX_OK : NGX_ERROR;

    case MR_READ_SECRET:
        if (n == 0) {
            return NGX_DECLINED;
        }

        return mr_pg_get_str(res, 0, 0, pool, &rd->secret);

    case MR_READ_META:
        if (n == 0) {
            return NGX_DECLINED;
        }

        return mr_pg_get_bytea(res, 0, 0, rd->raw, MR_STORE_SECRET_LEN);

    case MR_READ_DISP_NEXT:
        rd->due = (n == 0 || PQgetisnull(res, 0, 0))
                  ? -1 : mr_pg_get_int(res, 0, 0);
        return NGX_OK;

    case MR_READ_STATS:
        if (n != 1) {
            return NGX_ERROR;
        }

        ngx_memzero(&rd->stats, sizeof(mr_store_stats_t));

        rd->stats.holds = (uint64_t) mr_pg_get_int(res, 0, 0);
        rd->stats.held = mr_pg_get_int(res, 0, 1);
        rd->stats.backlog = (uint64_t) mr_pg_get_int(res, 0, 2);
        rd->stats.accounts = (uint64_t) mr_pg_get_int(res, 0, 3);
        rd->stats.executions = (uint64_t) mr_pg_get_int(res, 0, 4);
        rd->stats.used_bytes = (uint64_t) mr_pg_get_int(res, 0, 5);

        if (rd->states == NULL) {
            return NGX_OK;
        }

        return req->res[1] ? mr_pg_read_states(rd, req->res[1]) : NGX_ERROR;

    case MR_READ_ROUTES:
        return mr_pg_read_states(rd, res);

    case MR_READ_SIZE:
        if (n != 1) {
            return NGX_ERROR;
        }

        ngx_memzero(&rd->stats, sizeof(mr_store_stats_t));
        rd->stats.used_bytes = (uint64_t) mr_pg_get_int(res, 0, 0);

        return NGX_OK;

    case MR_READ_ACCOUNTS:
        for (i = 0; i < n; i++) {
            if ((ngx_uint_t) i == rd->limit) {
                rd->more = 1;
                break;
            }

            acct = ngx_array_push(rd->list);
            q = ngx_array_push(rd->quotas);

            if (acct == NULL || q == NULL
                || mr_pg_parse_account(res, i, 0, acct, q, NULL, pool)
                   != NGX_OK)
            {
                return NGX_ERROR;
            }
        }

        return NGX_OK;

    case MR_READ_FAILED_DLVS:
        return mr_pg_read_failed(rd, res);

    default:
        return NGX_ERROR;
    }
}


/*
 * MR_READ_EXECS: the executions in the order of their ids (status 0: not
 * there); MR_READ_EXEC_LIST: the page, as the LMDB store makes it
 * (mr_store_exec_list()): newest first, looking at no more than
 * MR_PG_LIST_SCAN; has_more and next say where the next page starts
 */

static ngx_int_t
mr_pg_read_list(mr_store_read_t *rd, PGresult *res)
{
    int               i, n;
    ngx_uint_t        j, scanned, last;
    mr_exec_t        *exec;
    mr_list_query_t  *q;

    n = PQntuples(res);

    if (rd->type == MR_READ_EXECS) {
        for (j = 0; j < rd->nids; j++) {
            exec = ngx_array_push(rd->list);
            if (exec == NULL) {
                return NGX_ERROR;
            }

            ngx_memzero(exec, sizeof(mr_exec_t));
            ngx_memcpy(exec->id, rd->ids + j * MR_EXEC_ID_LEN,
                       MR_EXEC_ID_LEN);

            for (i = 0; i < n; i++) {
                if (PQgetlength(res, i, 0) == MR_EXEC_ID_LEN
                    && ngx_memcmp(PQgetvalue(res, i, 0), exec->id,
                                  MR_EXEC_ID_LEN) == 0)
                {
                    if (mr_pg_parse_exec(res, i, 0, exec, rd->pool)
                        != NGX_OK)
                    {
                        return NGX_ERROR;
                    }

                    break;
                }
            }
        }

        return NGX_OK;
    }

    q = rd->query;
    q->has_more = 0;

    scanned = 0;
    last = 0;

    for (i = 0; i < n; i++) {

        if (scanned++ == MR_PG_LIST_SCAN && last) {
            /* the next page starts after the last one looked at */
            q->has_more = 1;
            break;
        }

        if (mr_pg_get_int(res, i, 1) == 0) {
            ngx_memcpy(q->next, PQgetvalue(res, i, 0), MR_EXEC_ID_LEN);
            last = 1;
            continue;
        }

        if (rd->list->nelts == q->limit) {
            q->has_more = 1;
            break;
        }

        exec = ngx_array_push(rd->list);
        if (exec == NULL
            || PQgetisnull(res, i, 2)
            || mr_pg_parse_exec(res, i, 2, exec, rd->pool) != NGX_OK)
        {
            return NGX_ERROR;
        }

        ngx_memcpy(q->next, exec->id, MR_EXEC_ID_LEN);
        last = 1;
    }

    return NGX_OK;
}


static ngx_int_t
mr_pg_read_verify(mr_store_read_t *rd, PGresult *res)
{
    int           c;
    int64_t       bytes;
    mr_verify_t  *vf;

    vf = &rd->verify;
    ngx_memzero(vf, sizeof(mr_verify_t));

    if (mr_pg_parse_account(res, 0, 0, &rd->account, &vf->quota, NULL,
                            rd->pool)
        != NGX_OK)
    {
        return NGX_ERROR;
    }

    c = MR_ACCT_NCOLS;

    vf->executions = (ngx_uint_t) mr_pg_get_int(res, 0, c);
    vf->open_executions = (ngx_uint_t) mr_pg_get_int(res, 0, c + 1);
    vf->open_holds = mr_pg_get_int(res, 0, c + 2);

    /* executions, endpoints, keys, events, deliveries */

    bytes = mr_pg_get_int(res, 0, c + 3) + mr_pg_get_int(res, 0, c + 5)
            + mr_pg_get_int(res, 0, c + 7) + mr_pg_get_int(res, 0, c + 8)
            + mr_pg_get_int(res, 0, c + 9);

    vf->counted[MR_LIMIT_BYTES] = bytes;
    vf->counted[MR_LIMIT_EXECUTIONS] = (int64_t) vf->open_executions;
    vf->counted[MR_LIMIT_ENDPOINTS] = mr_pg_get_int(res, 0, c + 4);
    vf->counted[MR_LIMIT_KEYS] = mr_pg_get_int(res, 0, c + 6);

    return NGX_OK;
}


/* the states of the configured routes, in their order (zeros: none yet) */

static ngx_int_t
mr_pg_read_states(mr_store_read_t *rd, PGresult *res)
{
    int              i;
    ngx_uint_t       j;
    mr_route_t      *rt;
    mr_main_conf_t  *mcf;

    mcf = mr_pg_main_conf();
    rt = mcf->routes.elts;

    for (j = 0; j < mcf->routes.nelts; j++) {
        ngx_memzero(&rd->states[j], sizeof(mr_route_state_t));

        for (i = 0; i < PQntuples(res); i++) {
            if ((size_t) PQgetlength(res, i, 0) == rt[j].name.len
                && ngx_memcmp(PQgetvalue(res, i, 0), rt[j].name.data,
                              rt[j].name.len) == 0)
            {
                (void) mr_pg_parse_route(res, i, 0, &rd->states[j]);
                break;
            }
        }
    }

    return NGX_OK;
}


/*
 * the recent failed deliveries: the matches, and how far the LMDB store's
 * walk would have looked (the place of the last one taken, when the
 * limit was reached, else all of the newest MR_PG_OPS_DLV_SCAN)
 */

static ngx_int_t
mr_pg_read_failed(mr_store_read_t *rd, PGresult *res)
{
    int        i, n;
    int64_t    pos, total;
    mr_dlv_t  *dlv;

    n = PQntuples(res);
    pos = 0;
    total = 0;

    for (i = 0; i < n; i++) {
        total = mr_pg_get_int(res, i, MR_DLV_NCOLS + 1);

        if (mr_pg_get_int(res, i, MR_DLV_NCOLS + 2) == 0
            || rd->list->nelts == rd->limit)
        {
            continue;                 /* the marker of the last one */
        }

        dlv = ngx_array_push(rd->list);
        if (dlv == NULL
            || mr_pg_parse_dlv(res, i, 0, dlv, rd->pool) != NGX_OK)
        {
            return NGX_ERROR;
        }

        pos = mr_pg_get_int(res, i, MR_DLV_NCOLS);
    }

    rd->scanned = (rd->list->nelts == rd->limit) ? (ngx_uint_t) pos
                                                  : (ngx_uint_t) total;

    return NGX_OK;
}


/*
 * ---- the API keys this worker read (modelroute_key_cache): answers to
 * MR_READ_AUTH reused for a while, so that a request with a known key
 * needs no read; a key revoked or rotated, or a rate limit changed, by
 * another worker or node is seen when its entry ends.  Direct-mapped by
 * the key's hash (SHA-256: its bytes are spread).
 */

#define MR_PG_KEYS_CACHED    4096

typedef struct {
    mr_key_rec_t              rec;
    uint64_t                  rl_value;
    ngx_msec_t                until;
    unsigned                  rl_own:1;
    unsigned                  used:1;
} mr_pg_kc_t;


static mr_pg_kc_t  *mr_pg_kc;


ngx_int_t
mr_pg_keys_init(ngx_cycle_t *cycle)
{
    if (mr_pg_main_conf()->key_cache == 0) {
        return NGX_OK;
    }

    mr_pg_kc = ngx_calloc(MR_PG_KEYS_CACHED * sizeof(mr_pg_kc_t),
                          cycle->log);

    return (mr_pg_kc == NULL) ? NGX_ERROR : NGX_OK;
}


void
mr_pg_keys_free(void)
{
    if (mr_pg_kc) {
        ngx_free(mr_pg_kc);
        mr_pg_kc = NULL;
    }
}


static mr_pg_kc_t *
mr_pg_keys_slot(u_char *hash)
{
    uint32_t  h;

    ngx_memcpy(&h, hash, sizeof(uint32_t));

    return &mr_pg_kc[h % MR_PG_KEYS_CACHED];
}


ngx_int_t
mr_pg_keys_cached(mr_store_read_t *rd)
{
    mr_pg_kc_t  *kc;

    if (mr_pg_kc == NULL) {
        return NGX_DECLINED;
    }

    kc = mr_pg_keys_slot(rd->id);

    if (!kc->used
        || (ngx_msec_int_t) (kc->until - ngx_current_msec) <= 0
        || ngx_memcmp(kc->rec.hash, rd->id, MR_SHA256_LEN) != 0)
    {
        return NGX_DECLINED;
    }

    ngx_memzero(&rd->key, sizeof(mr_key_t));
    rd->key.rec = kc->rec;
    rd->rl_value = kc->rl_value;
    rd->rl_own = kc->rl_own;
    rd->rc = NGX_OK;

    return NGX_OK;
}


void
mr_pg_keys_keep(mr_store_read_t *rd)
{
    mr_pg_kc_t        *kc;
    mr_pg_read_ctx_t  *ctx;

    ctx = rd->backend;

    /*
     * a read sent before the cache was emptied (a key revoked or rotated
     * by this worker, and answered, since) may say what is no longer
     * true: its answer stands, it is not kept
     */

    if (mr_pg_kc == NULL || ctx == NULL || ctx->kc_gen != mr_pg_kc_gen
        || ngx_memcmp(rd->key.rec.hash, rd->id, MR_SHA256_LEN) != 0)
    {
        return;
    }

    kc = mr_pg_keys_slot(rd->id);

    kc->rec = rd->key.rec;
    kc->rec.name_len = 0;
    kc->rl_value = rd->rl_value;
    kc->rl_own = rd->rl_own;
    kc->until = ngx_current_msec + mr_pg_main_conf()->key_cache;
    kc->used = 1;
}


void
mr_pg_keys_forget(void)
{
    mr_pg_kc_gen++;

    if (mr_pg_kc) {
        ngx_memzero(mr_pg_kc, MR_PG_KEYS_CACHED * sizeof(mr_pg_kc_t));
    }
}
