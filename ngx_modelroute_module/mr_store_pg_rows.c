
/*
 * ModelRoute: a PostgreSQL batch's rows: the identity map, the parsers,
 * what records cost, and the writes (see mr_store_pg_rows.h).
 */


#include <ngx_config.h>
#include <ngx_core.h>

#include "mr_store.h"
#include "mr_rules.h"
#include "mr_store_pg.h"
#include "mr_store_pg_rows.h"


static mr_pg_ent_t *mr_pg_find(mr_pg_rows_t *rs, ngx_uint_t kind,
    u_char *key, size_t len, ngx_uint_t add);
static ngx_int_t mr_pg_rows_write_execs(mr_pg_rows_t *rs, mr_pg_req_t *req);
static ngx_int_t mr_pg_rows_write_accounts(mr_pg_rows_t *rs,
    mr_pg_req_t *req);
static ngx_int_t mr_pg_rows_write_idem_cas(mr_pg_rows_t *rs,
    mr_pg_req_t *req);
static ngx_int_t mr_pg_rows_write_routes_delta(mr_pg_rows_t *rs,
    mr_pg_req_t *req);
static void mr_pg_rows_owners(mr_pg_rows_t *rs, ngx_uint_t kind);
static ngx_int_t mr_pg_rows_write_deltas(mr_pg_rows_t *rs,
    mr_pg_req_t *req, mr_pg_buf_t *b, ngx_uint_t n);
static ngx_int_t mr_pg_rows_write_idem(mr_pg_rows_t *rs, mr_pg_req_t *req);
static ngx_int_t mr_pg_rows_write_keys(mr_pg_rows_t *rs, mr_pg_req_t *req);
static ngx_int_t mr_pg_rows_write_routes(mr_pg_rows_t *rs,
    mr_pg_req_t *req);
static ngx_int_t mr_pg_rows_write_endpoints(mr_pg_rows_t *rs,
    mr_pg_req_t *req);
static ngx_int_t mr_pg_rows_write_secrets(mr_pg_rows_t *rs,
    mr_pg_req_t *req);
static ngx_int_t mr_pg_rows_write_refs(mr_pg_rows_t *rs, mr_pg_req_t *req);
static ngx_int_t mr_pg_rows_write_events(mr_pg_rows_t *rs,
    mr_pg_req_t *req);
static ngx_int_t mr_pg_rows_write_dlvs(mr_pg_rows_t *rs, mr_pg_req_t *req);
static ngx_int_t mr_pg_rows_deletes(mr_pg_rows_t *rs, mr_pg_req_t *req,
    ngx_uint_t kind, ngx_uint_t stmt);
static ngx_int_t mr_pg_send_arrays(mr_pg_req_t *req, ngx_uint_t stmt,
    mr_pg_buf_t *b, ngx_uint_t n);


static u_char  mr_zero[MR_EXEC_ID_LEN];


mr_pg_rows_t *
mr_pg_rows_create(ngx_pool_t *pool)
{
    mr_pg_rows_t  *rs;

    rs = ngx_pcalloc(pool, sizeof(mr_pg_rows_t));
    if (rs == NULL) {
        return NULL;
    }

    rs->pool = pool;

    return rs;
}


static mr_pg_ent_t *
mr_pg_find(mr_pg_rows_t *rs, ngx_uint_t kind, u_char *key, size_t len,
    ngx_uint_t add)
{
    ngx_uint_t    h;
    mr_pg_ent_t  *e;

    h = (ngx_hash_key(key, len) + kind) % MR_PG_BUCKETS;

    for (e = rs->buckets[h]; e; e = e->next) {
        if (e->kind == kind && e->key.len == len
            && ngx_memcmp(e->key.data, key, len) == 0)
        {
            return e;
        }
    }

    if (!add) {
        return NULL;
    }

    e = ngx_pcalloc(rs->pool, sizeof(mr_pg_ent_t));
    if (e == NULL) {
        return NULL;
    }

    e->key.data = ngx_pnalloc(rs->pool, len);
    if (e->key.data == NULL) {
        return NULL;
    }

    ngx_memcpy(e->key.data, key, len);
    e->key.len = len;
    e->kind = kind;
    e->rl = -1;

    e->next = rs->buckets[h];
    rs->buckets[h] = e;

    if (rs->tail[kind]) {
        rs->tail[kind]->all = e;

    } else {
        rs->head[kind] = e;
    }

    rs->tail[kind] = e;
    rs->count[kind]++;

    return e;
}


mr_pg_ent_t *
mr_pg_get(mr_pg_rows_t *rs, ngx_uint_t kind, u_char *key, size_t len)
{
    return mr_pg_find(rs, kind, key, len, 0);
}


mr_pg_ent_t *
mr_pg_add(mr_pg_rows_t *rs, ngx_uint_t kind, u_char *key, size_t len)
{
    return mr_pg_find(rs, kind, key, len, 1);
}


/* a two-part key: a, a NUL byte, b */

static size_t
mr_pg_key2(u_char *buf, size_t size, u_char *a, size_t alen, u_char *b,
    size_t blen)
{
    if (alen + 1 + blen > size) {
        return 0;
    }

    ngx_memcpy(buf, a, alen);
    buf[alen] = '\0';
    mr_cpymem(buf + alen + 1, b, blen);

    return alen + 1 + blen;
}


mr_pg_ent_t *
mr_pg_get2(mr_pg_rows_t *rs, ngx_uint_t kind, u_char *a, size_t alen,
    u_char *b, size_t blen)
{
    size_t  len;
    u_char  buf[MR_ORG_ID_LEN + 1 + 512];

    len = mr_pg_key2(buf, sizeof(buf), a, alen, b, blen);

    return len ? mr_pg_find(rs, kind, buf, len, 0) : NULL;
}


mr_pg_ent_t *
mr_pg_add2(mr_pg_rows_t *rs, ngx_uint_t kind, u_char *a, size_t alen,
    u_char *b, size_t blen)
{
    size_t  len;
    u_char  buf[MR_ORG_ID_LEN + 1 + 512];

    len = mr_pg_key2(buf, sizeof(buf), a, alen, b, blen);

    return len ? mr_pg_find(rs, kind, buf, len, 1) : NULL;
}


/* ---- what records cost their accounts (mr_rules.c) */

int64_t
mr_pg_exec_bytes(mr_exec_t *exec)
{
    return (int64_t) mr_rule_exec_size(exec);
}


/*
 * What an execution of the batch costs: its input counts until the
 * execution ends (mr_rule_end() erases it), also when the batch loaded
 * the execution without it (MR_EXEC_COLS_LOCKED)
 */

int64_t
mr_pg_ent_exec_bytes(mr_pg_ent_t *e)
{
    int64_t  bytes;

    bytes = mr_pg_exec_bytes(&e->exec);

    if (e->input_out && !mr_status_terminal(e->exec.rec.status)) {
        bytes += e->input_len;
    }

    return bytes;
}


int64_t
mr_pg_wh_bytes(mr_wh_t *wh)
{
    return (int64_t) mr_rule_wh_size(wh);
}


int64_t
mr_pg_key_bytes(mr_key_t *key)
{
    return (int64_t) mr_rule_key_size(key);
}


int64_t
mr_pg_dlv_bytes(mr_dlv_t *dlv)
{
    return (int64_t) (mr_rule_dlv_bytes(dlv) + MR_DLV_ID_LEN + MR_USAGE_DLV);
}


int64_t
mr_pg_event_bytes(size_t body_len)
{
    return (int64_t) (MR_EVT_ID_LEN + mr_rule_event_bytes(body_len)
                      + MR_USAGE_EVENT);
}


/* ---- parsers */

ngx_int_t
mr_pg_parse_exec(PGresult *res, int row, int col, mr_exec_t *exec,
    ngx_pool_t *pool)
{
    ngx_str_t       route;
    ngx_uint_t      i;
    mr_exec_rec_t  *rec;

    ngx_memzero(exec, sizeof(mr_exec_t));
    rec = &exec->rec;

    if (mr_pg_get_fixed(res, row, col, exec->id, MR_EXEC_ID_LEN) != NGX_OK
        || mr_pg_get_fixed(res, row, col + 1, rec->org, MR_ORG_ID_LEN)
           != NGX_OK
        || mr_pg_get_bytea(res, row, col + 17, rec->fingerprint,
                           MR_SHA256_LEN) != NGX_OK)
    {
        return NGX_ERROR;
    }

    rec->status = (uint32_t) mr_pg_get_int(res, row, col + 2);
    rec->estimate = mr_pg_get_int(res, row, col + 3);
    rec->hold = mr_pg_get_int(res, row, col + 4);
    rec->cost = mr_pg_get_int(res, row, col + 5);
    rec->created_ms = mr_pg_get_int(res, row, col + 6);
    rec->expires_ms = mr_pg_get_int(res, row, col + 7);
    rec->started_ms = mr_pg_get_int(res, row, col + 8);
    rec->completed_ms = mr_pg_get_int(res, row, col + 9);
    rec->lease_until_ms = mr_pg_get_int(res, row, col + 10);
    rec->lease_owner = (uint64_t) mr_pg_get_int(res, row, col + 11);
    rec->next_ms = mr_pg_get_int(res, row, col + 12);
    rec->order = mr_pg_get_int(res, row, col + 13);
    rec->attempt_ms = mr_pg_get_int(res, row, col + 14);
    rec->nattempts = (uint32_t) mr_pg_get_int(res, row, col + 15);

    route.len = (size_t) PQgetlength(res, row, col + 16);
    if (route.len > MR_ROUTE_NAME_LEN) {
        return NGX_ERROR;
    }

    rec->route_len = (uint32_t) route.len;
    mr_cpymem(rec->route, PQgetvalue(res, row, col + 16), route.len);

    for (i = 0; i < MR_SEG_N; i++) {
        if (mr_pg_get_str(res, row, col + MR_EXEC_SEG0 + i, pool,
                          &exec->seg[i])
            != NGX_OK)
        {
            return NGX_ERROR;
        }

        rec->seg_len[i] = (uint32_t) exec->seg[i].len;
    }

    return NGX_OK;
}


ngx_int_t
mr_pg_parse_account(PGresult *res, int row, int col, mr_account_t *acct,
    mr_quota_t *q, int64_t *rl, ngx_pool_t *pool)
{
    ngx_uint_t  i;

    ngx_memzero(acct, sizeof(mr_account_t));

    if (mr_pg_get_fixed(res, row, col, acct->id, MR_ORG_ID_LEN) != NGX_OK
        || mr_pg_get_str(res, row, col + 1, pool, &acct->name) != NGX_OK)
    {
        return NGX_ERROR;
    }

    acct->rec.name_len = (uint32_t) acct->name.len;
    acct->rec.balance = mr_pg_get_int(res, row, col + 2);
    acct->rec.held = mr_pg_get_int(res, row, col + 3);
    acct->rec.credited = mr_pg_get_int(res, row, col + 4);
    acct->rec.debited = mr_pg_get_int(res, row, col + 5);
    acct->rec.charged = mr_pg_get_int(res, row, col + 6);
    acct->rec.created_ms = mr_pg_get_int(res, row, col + 7);

    if (q) {
        for (i = 0; i < MR_LIMIT_N; i++) {
            q->used[i] = mr_pg_get_int(res, row, col + 8 + i);
            q->limit[i] = mr_pg_get_int(res, row, col + 12 + i);
        }
    }

    if (rl) {
        *rl = mr_pg_get_int(res, row, col + 16);
    }

    return NGX_OK;
}


ngx_int_t
mr_pg_parse_key(PGresult *res, int row, int col, mr_key_t *key,
    ngx_pool_t *pool)
{
    size_t  len;

    ngx_memzero(key, sizeof(mr_key_t));

    if (mr_pg_get_fixed(res, row, col, key->rec.key_id, MR_KEY_ID_LEN)
        != NGX_OK
        || mr_pg_get_fixed(res, row, col + 1, key->rec.org, MR_ORG_ID_LEN)
           != NGX_OK
        || mr_pg_get_bytea(res, row, col + 2, key->rec.hash, MR_SHA256_LEN)
           != NGX_OK
        || mr_pg_get_str(res, row, col + 8, pool, &key->name) != NGX_OK)
    {
        return NGX_ERROR;
    }

    len = ngx_min((size_t) PQgetlength(res, row, col + 3), 4);
    ngx_memcpy(key->rec.hint, PQgetvalue(res, row, col + 3), len);

    key->rec.permission = (uint32_t) mr_pg_get_int(res, row, col + 4);
    key->rec.revoked = (uint32_t) mr_pg_get_int(res, row, col + 5);
    key->rec.created_ms = mr_pg_get_int(res, row, col + 6);
    key->rec.valid_until_ms = mr_pg_get_int(res, row, col + 7);
    key->rec.name_len = (uint32_t) key->name.len;

    return NGX_OK;
}


ngx_int_t
mr_pg_parse_wh(PGresult *res, int row, int col, mr_wh_t *wh,
    ngx_pool_t *pool)
{
    ngx_uint_t  i;

    ngx_memzero(wh, sizeof(mr_wh_t));

    if (mr_pg_get_fixed(res, row, col, wh->rec.id, MR_WH_ID_LEN) != NGX_OK
        || mr_pg_get_fixed(res, row, col + 1, wh->rec.org, MR_ORG_ID_LEN)
           != NGX_OK)
    {
        return NGX_ERROR;
    }

    wh->rec.active = (uint32_t) mr_pg_get_int(res, row, col + 2);
    wh->rec.failures = (uint32_t) mr_pg_get_int(res, row, col + 3);
    wh->rec.created_ms = mr_pg_get_int(res, row, col + 4);
    wh->rec.last_success_ms = mr_pg_get_int(res, row, col + 5);

    for (i = 0; i < MR_WH_SEG_N; i++) {
        if (mr_pg_get_str(res, row, col + 6 + i, pool, &wh->seg[i])
            != NGX_OK)
        {
            return NGX_ERROR;
        }

        wh->rec.seg_len[i] = (uint32_t) wh->seg[i].len;
    }

    return NGX_OK;
}


ngx_int_t
mr_pg_parse_dlv(PGresult *res, int row, int col, mr_dlv_t *dlv,
    ngx_pool_t *pool)
{
    mr_dlv_rec_t  *rec;

    ngx_memzero(dlv, sizeof(mr_dlv_t));
    rec = &dlv->rec;

    if (mr_pg_get_fixed(res, row, col, rec->id, MR_DLV_ID_LEN) != NGX_OK
        || mr_pg_get_fixed(res, row, col + 1, rec->event_id, MR_EVT_ID_LEN)
           != NGX_OK
        || mr_pg_get_fixed(res, row, col + 3, rec->org, MR_ORG_ID_LEN)
           != NGX_OK)
    {
        return NGX_ERROR;
    }

    if (PQgetlength(res, row, col + 2) == MR_WH_ID_LEN) {
        ngx_memcpy(rec->wh_id, PQgetvalue(res, row, col + 2), MR_WH_ID_LEN);
    }

    if (PQgetlength(res, row, col + 4) == MR_EXEC_ID_LEN) {
        ngx_memcpy(rec->exec_id, PQgetvalue(res, row, col + 4),
                   MR_EXEC_ID_LEN);
    }

    rec->status = (uint32_t) mr_pg_get_int(res, row, col + 5);
    rec->attempts = (uint32_t) mr_pg_get_int(res, row, col + 6);
    rec->created_ms = mr_pg_get_int(res, row, col + 7);
    rec->due_ms = mr_pg_get_int(res, row, col + 8);
    rec->next_ms = mr_pg_get_int(res, row, col + 9);
    rec->token = (uint64_t) mr_pg_get_int(res, row, col + 10);

    if (mr_pg_get_str(res, row, col + 11, pool, &dlv->seg[MR_DLV_SEG_URL])
        != NGX_OK
        || mr_pg_get_str(res, row, col + 12, pool,
                         &dlv->seg[MR_DLV_SEG_TYPE])
           != NGX_OK
        || mr_pg_get_str(res, row, col + 13, pool,
                         &dlv->seg[MR_DLV_SEG_ATTEMPTS])
           != NGX_OK)
    {
        return NGX_ERROR;
    }

    rec->seg_len[MR_DLV_SEG_URL] = (uint32_t) dlv->seg[MR_DLV_SEG_URL].len;
    rec->seg_len[MR_DLV_SEG_TYPE] = (uint32_t) dlv->seg[MR_DLV_SEG_TYPE].len;
    rec->seg_len[MR_DLV_SEG_ATTEMPTS] =
                               (uint32_t) dlv->seg[MR_DLV_SEG_ATTEMPTS].len;

    return NGX_OK;
}


ngx_int_t
mr_pg_parse_route(PGresult *res, int row, int col, mr_route_state_t *st)
{
    ngx_memzero(st, sizeof(mr_route_state_t));

    st->inflight = (uint32_t) mr_pg_get_int(res, row, col + 1);
    st->failures = (uint32_t) mr_pg_get_int(res, row, col + 2);
    st->open_until_ms = mr_pg_get_int(res, row, col + 3);
    st->probe_until_ms = mr_pg_get_int(res, row, col + 4);
    st->paused_until_ms = mr_pg_get_int(res, row, col + 5);
    st->attempts = (uint64_t) mr_pg_get_int(res, row, col + 6);
    st->failed = (uint64_t) mr_pg_get_int(res, row, col + 7);
    st->probe_token = (uint64_t) mr_pg_get_int(res, row, col + 8);
    st->provider_failures = (uint32_t) mr_pg_get_int(res, row, col + 9);
    st->timeout_accounts = (uint32_t) mr_pg_get_int(res, row, col + 10);

    if (PQgetlength(res, row, col + 11) == MR_ORG_ID_LEN) {
        ngx_memcpy(st->timeout_org, PQgetvalue(res, row, col + 11),
                   MR_ORG_ID_LEN);
    }

    return NGX_OK;
}


/* ---- a result's rows into the map */

ngx_int_t
mr_pg_rows_accounts(mr_pg_rows_t *rs, PGresult *res)
{
    int           i;
    mr_pg_ent_t  *e;

    for (i = 0; i < PQntuples(res); i++) {
        e = mr_pg_add(rs, MR_PG_ACCT, (u_char *) PQgetvalue(res, i, 0),
                      (size_t) PQgetlength(res, i, 0));
        if (e == NULL
            || mr_pg_parse_account(res, i, 0, &e->acct, &e->quota, &e->rl,
                                   rs->pool)
               != NGX_OK)
        {
            return NGX_ERROR;
        }

        e->found = 1;
        e->acct_read = e->acct.rec;
        ngx_memcpy(e->used_read, e->quota.used, sizeof(e->used_read));
    }

    return NGX_OK;
}


static ngx_int_t
mr_pg_rows_exec_at(mr_pg_rows_t *rs, PGresult *res, int row, int col,
    ngx_uint_t locked)
{
    size_t        len;
    int64_t       input;
    mr_pg_ent_t  *e;

    e = mr_pg_add(rs, MR_PG_EXEC, (u_char *) PQgetvalue(res, row, col),
                  (size_t) PQgetlength(res, row, col));
    if (e == NULL) {
        return NGX_ERROR;
    }

    if (e->found) {
        return NGX_OK;                /* loaded already, maybe changed */
    }

    if (mr_pg_parse_exec(res, row, col, &e->exec, rs->pool) != NGX_OK) {
        return NGX_ERROR;
    }

    len = (size_t) PQgetlength(res, row, col + 26);

    if (len == MR_DLV_ID_LEN) {
        ngx_memcpy(e->last_dlv, PQgetvalue(res, row, col + 26), len);
        e->has_last = 1;
    }

    if (locked) {

        /* MR_EXEC_COLS_LOCKED: not ended, its input left where it is */

        input = mr_pg_get_int(res, row, col + MR_EXEC_NCOLS);

        if (input >= 0) {
            if (e->exec.seg[MR_SEG_INPUT].len) {
                return NGX_ERROR;
            }

            e->input_out = 1;
            e->input_len = input;
        }
    }

    e->found = 1;
    e->bytes = mr_pg_ent_exec_bytes(e);
    e->live = !mr_status_terminal(e->exec.rec.status);

    return NGX_OK;
}


ngx_int_t
mr_pg_rows_execs(mr_pg_rows_t *rs, PGresult *res)
{
    int  i;

    for (i = 0; i < PQntuples(res); i++) {
        if (mr_pg_rows_exec_at(rs, res, i, 0, 1) != NGX_OK) {
            return NGX_ERROR;
        }
    }

    return NGX_OK;
}


/* org, key, exec_id, created_ms, then the execution's columns (or NULLs) */

ngx_int_t
mr_pg_rows_idem(mr_pg_rows_t *rs, PGresult *res)
{
    int           i;
    mr_pg_ent_t  *e, *x;

    for (i = 0; i < PQntuples(res); i++) {
        e = mr_pg_add2(rs, MR_PG_IDEM, (u_char *) PQgetvalue(res, i, 0),
                       (size_t) PQgetlength(res, i, 0),
                       (u_char *) PQgetvalue(res, i, 1),
                       (size_t) PQgetlength(res, i, 1));
        if (e == NULL
            || mr_pg_get_fixed(res, i, 0, e->org, MR_ORG_ID_LEN) != NGX_OK
            || mr_pg_get_str(res, i, 1, rs->pool, &e->str) != NGX_OK
            || mr_pg_get_fixed(res, i, 2, e->exec_id, MR_EXEC_ID_LEN)
               != NGX_OK)
        {
            return NGX_ERROR;
        }

        e->value = mr_pg_get_int(res, i, 3);
        e->found = 1;
        e->live = 1;                  /* in the database */
        ngx_memcpy(e->exec_id_read, e->exec_id, MR_EXEC_ID_LEN);

        if (!PQgetisnull(res, i, 4)) {
            if (mr_pg_rows_exec_at(rs, res, i, 4, 0) != NGX_OK) {
                return NGX_ERROR;
            }

            x = mr_pg_get(rs, MR_PG_EXEC, e->exec_id, MR_EXEC_ID_LEN);
            if (x == NULL) {
                return NGX_ERROR;
            }

            e->exec = x->exec;
            e->exec_found = 1;
        }
    }

    return NGX_OK;
}


ngx_int_t
mr_pg_rows_keys(mr_pg_rows_t *rs, PGresult *res)
{
    int           i;
    mr_pg_ent_t  *e;

    for (i = 0; i < PQntuples(res); i++) {
        e = mr_pg_add(rs, MR_PG_KEY, (u_char *) PQgetvalue(res, i, 0),
                      (size_t) PQgetlength(res, i, 0));
        if (e == NULL
            || mr_pg_parse_key(res, i, 0, &e->k, rs->pool) != NGX_OK)
        {
            return NGX_ERROR;
        }

        e->end_ms = mr_pg_get_int(res, i, 9);
        e->found = 1;
        e->bytes = mr_pg_key_bytes(&e->k);
        e->live = mr_rule_key_active(&e->k.rec);
    }

    return NGX_OK;
}


ngx_int_t
mr_pg_rows_endpoints(mr_pg_rows_t *rs, PGresult *res)
{
    int           i;
    mr_pg_ent_t  *e;

    for (i = 0; i < PQntuples(res); i++) {
        e = mr_pg_add(rs, MR_PG_WH, (u_char *) PQgetvalue(res, i, 0),
                      (size_t) PQgetlength(res, i, 0));
        if (e == NULL) {
            return NGX_ERROR;
        }

        if (e->found) {
            continue;                 /* read locked first: the same */
        }

        if (mr_pg_parse_wh(res, i, 0, &e->wh, rs->pool) != NGX_OK) {
            return NGX_ERROR;
        }

        e->found = 1;
        e->bytes = mr_pg_wh_bytes(&e->wh);
    }

    return NGX_OK;
}


ngx_int_t
mr_pg_rows_dlvs(mr_pg_rows_t *rs, PGresult *res)
{
    int           i;
    mr_pg_ent_t  *e;

    for (i = 0; i < PQntuples(res); i++) {
        e = mr_pg_add(rs, MR_PG_DLV, (u_char *) PQgetvalue(res, i, 0),
                      (size_t) PQgetlength(res, i, 0));
        if (e == NULL) {
            return NGX_ERROR;
        }

        if (e->found) {
            continue;
        }

        if (mr_pg_parse_dlv(res, i, 0, &e->dlv, rs->pool) != NGX_OK
            || mr_pg_get_fixed(res, i, 14, e->target, MR_WH_TARGET_LEN)
               != NGX_OK)
        {
            return NGX_ERROR;
        }

        e->found = 1;
        e->bytes = mr_pg_dlv_bytes(&e->dlv);
    }

    return NGX_OK;
}


ngx_int_t
mr_pg_rows_routes(mr_pg_rows_t *rs, PGresult *res)
{
    int           i;
    mr_pg_ent_t  *e;

    for (i = 0; i < PQntuples(res); i++) {
        e = mr_pg_add(rs, MR_PG_ROUTE, (u_char *) PQgetvalue(res, i, 0),
                      (size_t) PQgetlength(res, i, 0));
        if (e == NULL
            || mr_pg_parse_route(res, i, 0, &e->route) != NGX_OK)
        {
            return NGX_ERROR;
        }

        e->route_read = e->route;
        e->found = 1;
    }

    return NGX_OK;
}


ngx_int_t
mr_pg_rows_secrets(mr_pg_rows_t *rs, PGresult *res)
{
    int           i;
    mr_pg_ent_t  *e;

    for (i = 0; i < PQntuples(res); i++) {
        e = mr_pg_add(rs, MR_PG_SECRET, (u_char *) PQgetvalue(res, i, 0),
                      (size_t) PQgetlength(res, i, 0));
        if (e == NULL
            || mr_pg_get_fixed(res, i, 0, e->org, MR_ORG_ID_LEN) != NGX_OK
            || mr_pg_get_fixed(res, i, 1, e->secret, MR_WH_SECRET_LEN)
               != NGX_OK)
        {
            return NGX_ERROR;
        }

        e->found = 1;
    }

    return NGX_OK;
}


ngx_int_t
mr_pg_rows_refs(mr_pg_rows_t *rs, PGresult *res)
{
    int           i;
    mr_pg_ent_t  *e;

    for (i = 0; i < PQntuples(res); i++) {
        e = mr_pg_add2(rs, MR_PG_REF, (u_char *) PQgetvalue(res, i, 0),
                       (size_t) PQgetlength(res, i, 0),
                       (u_char *) PQgetvalue(res, i, 1),
                       (size_t) PQgetlength(res, i, 1));
        if (e == NULL) {
            return NGX_ERROR;
        }

        e->value = mr_pg_get_int(res, i, 2);
        e->found = 1;
    }

    return NGX_OK;
}


ngx_int_t
mr_pg_rows_events(mr_pg_rows_t *rs, PGresult *res)
{
    int           i;
    mr_pg_ent_t  *e;

    for (i = 0; i < PQntuples(res); i++) {
        e = mr_pg_add(rs, MR_PG_EVENT, (u_char *) PQgetvalue(res, i, 0),
                      (size_t) PQgetlength(res, i, 0));
        if (e == NULL
            || mr_pg_get_fixed(res, i, 1, e->org, MR_ORG_ID_LEN) != NGX_OK
            || mr_pg_get_str(res, i, 2, rs->pool, &e->str) != NGX_OK)
        {
            return NGX_ERROR;
        }

        e->found = 1;
        e->bytes = mr_pg_event_bytes(e->str.len);
    }

    return NGX_OK;
}


/* ---- writes: one statement per table and kind of change */

ngx_uint_t
mr_pg_rows_writes(mr_pg_rows_t *rs)
{
    ngx_uint_t    n;
    mr_pg_ent_t  *e;

    /*
     * at most: see mr_pg_rows_write(); a new account is a statement of
     * its own, accounts and routes changed by deltas are locked first
     * (two statements each)
     */

    n = 12 + 6 + 2 * rs->deltas + 2 * rs->route_deltas;

    for (e = rs->head[MR_PG_ACCT]; e; e = e->all) {
        n += (e->dirty && e->fresh);
    }

    return n;
}


ngx_int_t
mr_pg_rows_write(mr_pg_rows_t *rs, mr_pg_req_t *req)
{
    /*
     * the order of the locks (mr_store_pg_sql.c): executions, keys,
     * deliveries, routes, accounts; accounts and routes read without a
     * lock are locked last, their accounts after their routes, so that
     * they are held for as short a time as can be (their deltas, then
     * the COMMIT); accounts locked as read are written first (a new
     * one, before what names it).  The idempotency keys and the secrets
     * of accounts are inserted once their accounts are locked, in both
     * cases: an insert waits for another transaction's insert of the
     * same key, which must not be one that waits for the account.
     */

    if (rs->deltas) {
        mr_pg_rows_owners(rs, MR_PG_IDEM);
        mr_pg_rows_owners(rs, MR_PG_SECRET);
    }

    if ((!rs->deltas
         && (mr_pg_rows_write_accounts(rs, req) != NGX_OK
             || mr_pg_rows_write_idem(rs, req) != NGX_OK))
        || mr_pg_rows_write_execs(rs, req) != NGX_OK
        || mr_pg_rows_deletes(rs, req, MR_PG_EXEC, MR_SQL_D_EXECS) != NGX_OK
        || mr_pg_rows_write_keys(rs, req) != NGX_OK
        || mr_pg_rows_deletes(rs, req, MR_PG_KEY, MR_SQL_D_KEYS) != NGX_OK
        || (!rs->route_deltas && mr_pg_rows_write_routes(rs, req) != NGX_OK)
        || mr_pg_rows_write_endpoints(rs, req) != NGX_OK
        || mr_pg_rows_deletes(rs, req, MR_PG_WH, MR_SQL_D_ENDPOINTS)
           != NGX_OK
        || (!rs->deltas && mr_pg_rows_write_secrets(rs, req) != NGX_OK)
        || mr_pg_rows_write_refs(rs, req) != NGX_OK
        || mr_pg_rows_write_events(rs, req) != NGX_OK
        || mr_pg_rows_deletes(rs, req, MR_PG_EVENT, MR_SQL_D_EVENTS)
           != NGX_OK
        || mr_pg_rows_write_dlvs(rs, req) != NGX_OK
        || mr_pg_rows_deletes(rs, req, MR_PG_DLV, MR_SQL_D_DLVS) != NGX_OK
        || (rs->route_deltas
            && mr_pg_rows_write_routes_delta(rs, req) != NGX_OK)
        || (rs->deltas
            && (mr_pg_rows_write_accounts(rs, req) != NGX_OK
                || mr_pg_rows_write_idem(rs, req) != NGX_OK
                || mr_pg_rows_write_secrets(rs, req) != NGX_OK)))
    {
        return NGX_ERROR;
    }

    return NGX_OK;
}


/*
 * The accounts of the idempotency keys and secrets a batch inserts are
 * locked by its deltas (with nothing added, if that is all it changes)
 */

static void
mr_pg_rows_owners(mr_pg_rows_t *rs, ngx_uint_t kind)
{
    mr_pg_ent_t  *e, *a;

    for (e = rs->head[kind]; e; e = e->all) {
        if (!e->dirty || e->deleted) {
            continue;
        }

        a = mr_pg_get(rs, MR_PG_ACCT, e->org, MR_ORG_ID_LEN);

        if (a && a->found) {
            a->dirty = 1;
        }
    }
}


/* n text arrays as the statement's parameters */

static ngx_int_t
mr_pg_send_arrays(mr_pg_req_t *req, ngx_uint_t stmt, mr_pg_buf_t *b,
    ngx_uint_t n)
{
    ngx_uint_t   i;
    const char  *values[32];

    for (i = 0; i < n; i++) {
        values[i] = mr_pg_buf_end(&b[i]);
        if (values[i] == NULL) {
            return NGX_ERROR;
        }
    }

    return mr_pg_send(req, stmt, (int) n, values, NULL);
}


static void
mr_pg_bufs_init(mr_pg_buf_t *b, ngx_uint_t n, ngx_pool_t *pool)
{
    ngx_uint_t  i;

    for (i = 0; i < n; i++) {
        mr_pg_buf_init(&b[i], pool);
    }
}


static void
mr_pg_buf_hex(mr_pg_buf_t *b, u_char *p, size_t len)
{
    u_char  hex[2 + 2 * 64];

    hex[0] = '\\';
    hex[1] = 'x';
    mr_hex(hex + 2, p, ngx_min(len, 64));

    mr_pg_buf_str(b, hex, 2 + 2 * ngx_min(len, 64));
}


static ngx_int_t
mr_pg_rows_write_execs(mr_pg_rows_t *rs, mr_pg_req_t *req)
{
    ngx_uint_t      i, n;
    mr_pg_ent_t    *e;
    mr_exec_rec_t  *r;
    mr_pg_buf_t     b[28];

    mr_pg_bufs_init(b, 28, rs->pool);
    n = 0;

    for (e = rs->head[MR_PG_EXEC]; e; e = e->all) {
        if (!e->dirty || e->deleted) {
            continue;
        }

        r = &e->exec.rec;
        n++;

        mr_pg_buf_str(&b[0], e->exec.id, MR_EXEC_ID_LEN);
        mr_pg_buf_str(&b[1], r->org, MR_ORG_ID_LEN);
        mr_pg_buf_int(&b[2], r->status);
        mr_pg_buf_int(&b[3], r->estimate);
        mr_pg_buf_int(&b[4], r->hold);
        mr_pg_buf_int(&b[5], r->cost);
        mr_pg_buf_int(&b[6], r->created_ms);
        mr_pg_buf_int(&b[7], r->expires_ms);
        mr_pg_buf_int(&b[8], r->started_ms);
        mr_pg_buf_int(&b[9], r->completed_ms);
        mr_pg_buf_int(&b[10], r->lease_until_ms);
        mr_pg_buf_int(&b[11], (int64_t) r->lease_owner);

        if (r->lease_owner) {
            mr_pg_buf_str(&b[12], rs->node.data, rs->node.len);

        } else {
            mr_pg_buf_null(&b[12]);
        }

        if (r->next_ms) {
            mr_pg_buf_int(&b[13], r->next_ms);

        } else {
            mr_pg_buf_null(&b[13]);
        }

        mr_pg_buf_int(&b[14], r->order);
        mr_pg_buf_int(&b[15], r->attempt_ms);
        mr_pg_buf_int(&b[16], r->nattempts);
        mr_pg_buf_str(&b[17], r->route, r->route_len);
        mr_pg_buf_hex(&b[18], r->fingerprint, MR_SHA256_LEN);

        for (i = 0; i < MR_SEG_N; i++) {
            if (i == MR_SEG_INPUT && e->input_out) {

                /* not loaded: kept ("-"), or erased if it ended ('') */

                mr_pg_buf_str(&b[19 + i], (u_char *) "-",
                              !mr_status_terminal(r->status));
                continue;
            }

            mr_pg_buf_str(&b[19 + i], e->exec.seg[i].data,
                          e->exec.seg[i].len);
        }

        if (e->has_last) {
            mr_pg_buf_str(&b[27], e->last_dlv, MR_DLV_ID_LEN);

        } else {
            mr_pg_buf_null(&b[27]);
        }
    }

    if (n == 0) {
        return NGX_OK;
    }

    return mr_pg_send_arrays(req, MR_SQL_W_EXECS, b, 28);
}


static ngx_int_t
mr_pg_rows_write_accounts(mr_pg_rows_t *rs, mr_pg_req_t *req)
{
    ngx_uint_t         i, n;
    mr_pg_ent_t       *e;
    const char        *v[9];
    mr_pg_buf_t        b[15];
    mr_account_rec_t  *r;

    mr_pg_bufs_init(b, 15, rs->pool);
    n = 0;

    for (e = rs->head[MR_PG_ACCT]; e; e = e->all) {
        if (!e->dirty) {
            continue;
        }

        r = &e->acct.rec;

        if (e->fresh) {

            /* a new account: its own statement (they are few) */

            v[0] = mr_pg_str(rs->pool, e->acct.id, MR_ORG_ID_LEN);
            v[1] = mr_pg_str(rs->pool, e->acct.name.data, e->acct.name.len);
            v[2] = mr_pg_int(rs->pool, r->balance);
            v[3] = mr_pg_int(rs->pool, r->credited);
            v[4] = mr_pg_int(rs->pool, r->created_ms);

            for (i = 0; i < MR_LIMIT_N; i++) {
                v[5 + i] = mr_pg_int(rs->pool, e->quota.limit[i]);
            }

            for (i = 0; i < 9; i++) {
                if (v[i] == NULL) {
                    return NGX_ERROR;
                }
            }

            if (mr_pg_send(req, MR_SQL_W_ACCOUNT_NEW, 9, v, NULL) != NGX_OK) {
                return NGX_ERROR;
            }

            continue;
        }

        n++;

        mr_pg_buf_str(&b[0], e->acct.id, MR_ORG_ID_LEN);

        if (rs->deltas) {

            /* what the batch added (mr_pg_rows_write_deltas()) */

            mr_pg_buf_int(&b[1], r->balance - e->acct_read.balance);
            mr_pg_buf_int(&b[2], r->held - e->acct_read.held);
            mr_pg_buf_int(&b[3], r->credited - e->acct_read.credited);
            mr_pg_buf_int(&b[4], r->debited - e->acct_read.debited);
            mr_pg_buf_int(&b[5], r->charged - e->acct_read.charged);

            for (i = 0; i < MR_LIMIT_N; i++) {
                mr_pg_buf_int(&b[6 + i], e->quota.used[i] - e->used_read[i]);
            }

            mr_pg_buf_int(&b[10], e->checked_execs > 0);
            mr_pg_buf_int(&b[11], e->checked_bytes);
            mr_pg_buf_int(&b[12], e->checked_execs);

            continue;
        }

        mr_pg_buf_int(&b[1], r->balance);
        mr_pg_buf_int(&b[2], r->held);
        mr_pg_buf_int(&b[3], r->credited);
        mr_pg_buf_int(&b[4], r->debited);
        mr_pg_buf_int(&b[5], r->charged);

        for (i = 0; i < MR_LIMIT_N; i++) {
            mr_pg_buf_int(&b[6 + i], e->quota.used[i]);
            mr_pg_buf_int(&b[10 + i], e->quota.limit[i]);
        }

        mr_pg_buf_int(&b[14], e->rl);
    }

    if (n == 0) {
        return NGX_OK;
    }

    if (rs->deltas) {
        return mr_pg_rows_write_deltas(rs, req, b, n);
    }

    return mr_pg_send_arrays(req, MR_SQL_W_ACCOUNTS, b, 15);
}


/*
 * A batch whose accounts were read without a lock: they are locked now,
 * in order, and changed by what the batch added, if those a rule
 * decided on still allow it (MR_SQL_W_ACCOUNTS_DELTA)
 */

static ngx_int_t
mr_pg_rows_write_deltas(mr_pg_rows_t *rs, mr_pg_req_t *req, mr_pg_buf_t *b,
    ngx_uint_t n)
{
    ngx_uint_t       i;
    const char      *v[18];
    mr_main_conf_t  *mcf;

    mcf = mr_pg_main_conf();

    for (i = 0; i < 13; i++) {
        v[i] = mr_pg_buf_end(&b[i]);
        if (v[i] == NULL) {
            return NGX_ERROR;
        }
    }

    for (i = 0; i < MR_LIMIT_N; i++) {
        v[13 + i] = mr_pg_int(rs->pool, mcf->account_limits[i]);
    }

    v[17] = mr_pg_int(rs->pool, (int64_t) n);

    for (i = 13; i < 18; i++) {
        if (v[i] == NULL) {
            return NGX_ERROR;
        }
    }

    if (mr_pg_send(req, MR_SQL_LOCK_ACCOUNT_IDS, 1, v, NULL) != NGX_OK) {
        return NGX_ERROR;
    }

    return mr_pg_send(req, MR_SQL_W_ACCOUNTS_DELTA, 18, v, NULL);
}


static ngx_int_t
mr_pg_rows_write_idem(mr_pg_rows_t *rs, mr_pg_req_t *req)
{
    ngx_uint_t    n, d;
    mr_pg_ent_t  *e;
    mr_pg_buf_t   b[4], del[2];

    mr_pg_bufs_init(b, 4, rs->pool);
    mr_pg_bufs_init(del, 2, rs->pool);
    n = 0;
    d = 0;

    for (e = rs->head[MR_PG_IDEM]; e; e = e->all) {
        if (e->deleted) {
            d++;
            mr_pg_buf_str(&del[0], e->org, MR_ORG_ID_LEN);
            mr_pg_buf_str(&del[1], e->str.data, e->str.len);
            continue;
        }

        if (!e->dirty) {
            continue;
        }

        n++;

        mr_pg_buf_str(&b[0], e->org, MR_ORG_ID_LEN);
        mr_pg_buf_str(&b[1], e->str.data, e->str.len);
        mr_pg_buf_str(&b[2], e->exec_id, MR_EXEC_ID_LEN);
        mr_pg_buf_int(&b[3], e->value);
    }

    if (d && mr_pg_send_arrays(req, MR_SQL_D_IDEM, del, 2) != NGX_OK) {
        return NGX_ERROR;
    }

    if (n == 0) {
        return NGX_OK;
    }

    if (rs->deltas) {
        return mr_pg_rows_write_idem_cas(rs, req);
    }

    return mr_pg_send_arrays(req, MR_SQL_W_IDEM, b, 4);
}


/*
 * A batch of creates, which did not lock its accounts: its keys only if
 * no other batch took them meanwhile (MR_SQL_W_IDEM_NEW, _SWAP)
 */

static ngx_int_t
mr_pg_rows_write_idem_cas(mr_pg_rows_t *rs, mr_pg_req_t *req)
{
    ngx_uint_t    n[2], i, k;
    mr_pg_ent_t  *e;
    const char   *v[6];
    mr_pg_buf_t   b[2][5];

    mr_pg_bufs_init(b[0], 5, rs->pool);
    mr_pg_bufs_init(b[1], 5, rs->pool);
    n[0] = 0;
    n[1] = 0;

    for (e = rs->head[MR_PG_IDEM]; e; e = e->all) {
        if (!e->dirty || e->deleted) {
            continue;
        }

        k = e->live;                  /* 1: it was in the database */
        n[k]++;

        mr_pg_buf_str(&b[k][0], e->org, MR_ORG_ID_LEN);
        mr_pg_buf_str(&b[k][1], e->str.data, e->str.len);
        mr_pg_buf_str(&b[k][2], e->exec_id, MR_EXEC_ID_LEN);
        mr_pg_buf_int(&b[k][3], e->value);
        mr_pg_buf_str(&b[k][4], e->exec_id_read, MR_EXEC_ID_LEN);
    }

    for (k = 0; k < 2; k++) {
        if (n[k] == 0) {
            continue;
        }

        for (i = 0; i < 4u + k; i++) {
            v[i] = mr_pg_buf_end(&b[k][i]);
            if (v[i] == NULL) {
                return NGX_ERROR;
            }
        }

        v[4 + k] = mr_pg_int(rs->pool, (int64_t) n[k]);
        if (v[4 + k] == NULL) {
            return NGX_ERROR;
        }

        if (mr_pg_send(req, k ? MR_SQL_W_IDEM_SWAP : MR_SQL_W_IDEM_NEW,
                       (int) (5 + k), v, NULL)
            != NGX_OK)
        {
            return NGX_ERROR;
        }
    }

    return NGX_OK;
}


static ngx_int_t
mr_pg_rows_write_keys(mr_pg_rows_t *rs, mr_pg_req_t *req)
{
    ngx_uint_t     n;
    mr_pg_ent_t   *e;
    mr_key_rec_t  *r;
    mr_pg_buf_t    b[10];

    mr_pg_bufs_init(b, 10, rs->pool);
    n = 0;

    for (e = rs->head[MR_PG_KEY]; e; e = e->all) {
        if (!e->dirty || e->deleted) {
            continue;
        }

        r = &e->k.rec;
        n++;

        mr_pg_buf_str(&b[0], r->key_id, MR_KEY_ID_LEN);
        mr_pg_buf_str(&b[1], r->org, MR_ORG_ID_LEN);
        mr_pg_buf_hex(&b[2], r->hash, MR_SHA256_LEN);
        mr_pg_buf_str(&b[3], r->hint, 4);
        mr_pg_buf_int(&b[4], r->permission);
        mr_pg_buf_int(&b[5], r->revoked ? 1 : 0);
        mr_pg_buf_int(&b[6], r->created_ms);
        mr_pg_buf_int(&b[7], r->valid_until_ms);
        mr_pg_buf_int(&b[8], e->end_ms);
        mr_pg_buf_str(&b[9], e->k.name.data, e->k.name.len);
    }

    if (n == 0) {
        return NGX_OK;
    }

    return mr_pg_send_arrays(req, MR_SQL_W_KEYS, b, 10);
}


static ngx_int_t
mr_pg_rows_write_routes(mr_pg_rows_t *rs, mr_pg_req_t *req)
{
    ngx_uint_t         n;
    mr_pg_ent_t       *e;
    mr_pg_buf_t        b[12];
    mr_route_state_t  *st;

    mr_pg_bufs_init(b, 12, rs->pool);
    n = 0;

    for (e = rs->head[MR_PG_ROUTE]; e; e = e->all) {
        if (!e->dirty) {
            continue;
        }

        st = &e->route;
        n++;

        mr_pg_buf_str(&b[0], e->key.data, e->key.len);
        mr_pg_buf_int(&b[1], st->inflight);
        mr_pg_buf_int(&b[2], st->failures);
        mr_pg_buf_int(&b[3], st->open_until_ms);
        mr_pg_buf_int(&b[4], st->probe_until_ms);
        mr_pg_buf_int(&b[5], st->paused_until_ms);
        mr_pg_buf_int(&b[6], (int64_t) st->attempts);
        mr_pg_buf_int(&b[7], (int64_t) st->failed);
        mr_pg_buf_int(&b[8], (int64_t) st->probe_token);
        mr_pg_buf_int(&b[9], st->provider_failures);
        mr_pg_buf_int(&b[10], st->timeout_accounts);
        mr_pg_buf_str(&b[11], st->timeout_org,
                      st->timeout_accounts ? MR_ORG_ID_LEN : 0);
    }

    if (n == 0) {
        return NGX_OK;
    }

    return mr_pg_send_arrays(req, MR_SQL_W_ROUTES, b, 12);
}


/*
 * The routes of a batch that read them without a lock: locked now (in
 * order, if more than one), and changed by what the batch did if they
 * still allow it (MR_SQL_W_ROUTES_DELTA); a route the batch read none of
 * (its first attempt) fails the check: the batch is made again, locked
 */

static ngx_int_t
mr_pg_rows_write_routes_delta(mr_pg_rows_t *rs, mr_pg_req_t *req)
{
    ngx_uint_t         i, n, m;
    mr_route_t        *route;
    mr_pg_ent_t       *e;
    const char        *v[23];
    mr_pg_buf_t        b[22];
    mr_route_state_t  *st, *rd;

    mr_pg_bufs_init(b, 22, rs->pool);
    n = 0;

    for (e = rs->head[MR_PG_ROUTE]; e; e = e->all) {
        if (!e->dirty) {
            continue;
        }

        st = &e->route;
        rd = &e->route_read;
        n++;

        /*
         * the fields of the breaker that the batch changed, and those its
         * attempts were let through by (open, the probe, a pause), if it
         * started attempts there (mr_rule_disp_take() counts them):
         * written as read, they are checked (another node that opened
         * the breaker meanwhile makes the batch again)
         */

        m = (st->failures != rd->failures)
            | (st->open_until_ms != rd->open_until_ms) << 1
            | (st->probe_until_ms != rd->probe_until_ms) << 2
            | (st->paused_until_ms != rd->paused_until_ms) << 3
            | (st->probe_token != rd->probe_token) << 4
            | (st->provider_failures != rd->provider_failures) << 5
            | (st->timeout_accounts != rd->timeout_accounts) << 6
            | (ngx_memcmp(st->timeout_org, rd->timeout_org, MR_ORG_ID_LEN)
               != 0) << 7;

        if (st->attempts != rd->attempts) {
            m |= 1 << 1 | 1 << 2 | 1 << 3 | 1 << 4;
        }

        route = mr_route_find(mr_pg_main_conf(), e->key.data, e->key.len);

        mr_pg_buf_str(&b[0], e->key.data, e->key.len);
        mr_pg_buf_int(&b[1], (int64_t) st->inflight - (int64_t) rd->inflight);
        mr_pg_buf_int(&b[2], (int64_t) (st->attempts - rd->attempts));
        mr_pg_buf_int(&b[3], (int64_t) (st->failed - rd->failed));
        mr_pg_buf_int(&b[4], (int64_t) m);

        for (i = 0; i < 2; i++) {
            st = i ? rd : &e->route;

            mr_pg_buf_int(&b[5 + 8 * i], st->failures);
            mr_pg_buf_int(&b[6 + 8 * i], st->open_until_ms);
            mr_pg_buf_int(&b[7 + 8 * i], st->probe_until_ms);
            mr_pg_buf_int(&b[8 + 8 * i], st->paused_until_ms);
            mr_pg_buf_int(&b[9 + 8 * i], (int64_t) st->probe_token);
            mr_pg_buf_int(&b[10 + 8 * i], st->provider_failures);
            mr_pg_buf_int(&b[11 + 8 * i], st->timeout_accounts);
            mr_pg_buf_str(&b[12 + 8 * i], st->timeout_org,
                          st->timeout_accounts ? MR_ORG_ID_LEN : 0);
        }

        mr_pg_buf_int(&b[21], route ? (int64_t) route->max_concurrency : 0);
    }

    if (n == 0) {
        return NGX_OK;
    }

    for (i = 0; i < 22; i++) {
        v[i] = mr_pg_buf_end(&b[i]);
        if (v[i] == NULL) {
            return NGX_ERROR;
        }
    }

    v[22] = mr_pg_int(rs->pool, (int64_t) n);
    if (v[22] == NULL) {
        return NGX_ERROR;
    }

    if (n > 1
        && mr_pg_send(req, MR_SQL_LOCK_ROUTE_NAMES, 1, v, NULL) != NGX_OK)
    {
        return NGX_ERROR;
    }

    return mr_pg_send(req, MR_SQL_W_ROUTES_DELTA, 23, v, NULL);
}


static ngx_int_t
mr_pg_rows_write_endpoints(mr_pg_rows_t *rs, mr_pg_req_t *req)
{
    ngx_uint_t    i, n;
    mr_wh_t      *wh;
    mr_pg_ent_t  *e;
    mr_pg_buf_t   b[11];

    mr_pg_bufs_init(b, 11, rs->pool);
    n = 0;

    for (e = rs->head[MR_PG_WH]; e; e = e->all) {
        if (!e->dirty || e->deleted) {
            continue;
        }

        wh = &e->wh;
        n++;

        mr_pg_buf_str(&b[0], wh->rec.id, MR_WH_ID_LEN);
        mr_pg_buf_str(&b[1], wh->rec.org, MR_ORG_ID_LEN);
        mr_pg_buf_int(&b[2], wh->rec.active ? 1 : 0);
        mr_pg_buf_int(&b[3], wh->rec.failures);
        mr_pg_buf_int(&b[4], wh->rec.created_ms);
        mr_pg_buf_int(&b[5], wh->rec.last_success_ms);

        for (i = 0; i < MR_WH_SEG_N; i++) {
            mr_pg_buf_str(&b[6 + i], wh->seg[i].data, wh->seg[i].len);
        }
    }

    if (n == 0) {
        return NGX_OK;
    }

    return mr_pg_send_arrays(req, MR_SQL_W_ENDPOINTS, b, 11);
}


static ngx_int_t
mr_pg_rows_write_secrets(mr_pg_rows_t *rs, mr_pg_req_t *req)
{
    ngx_uint_t    n;
    mr_pg_ent_t  *e;
    const char   *v[3];
    mr_pg_buf_t   b[2];

    mr_pg_bufs_init(b, 2, rs->pool);
    n = 0;

    for (e = rs->head[MR_PG_SECRET]; e; e = e->all) {
        if (!e->dirty) {
            continue;
        }

        n++;

        mr_pg_buf_str(&b[0], e->org, MR_ORG_ID_LEN);
        mr_pg_buf_str(&b[1], e->secret, MR_WH_SECRET_LEN);
    }

    if (n == 0) {
        return NGX_OK;
    }

    v[0] = mr_pg_buf_end(&b[0]);
    v[1] = mr_pg_buf_end(&b[1]);
    v[2] = mr_pg_int(rs->pool, (int64_t) n);

    if (v[0] == NULL || v[1] == NULL || v[2] == NULL) {
        return NGX_ERROR;
    }

    return mr_pg_send(req, MR_SQL_W_WHSECRETS, 3, v, NULL);
}


static ngx_int_t
mr_pg_rows_write_refs(mr_pg_rows_t *rs, mr_pg_req_t *req)
{
    ngx_uint_t    n;
    mr_pg_ent_t  *e;
    mr_pg_buf_t   b[3];

    mr_pg_bufs_init(b, 3, rs->pool);
    n = 0;

    for (e = rs->head[MR_PG_REF]; e; e = e->all) {
        if (!e->dirty) {
            continue;
        }

        n++;

        mr_pg_buf_str(&b[0], e->org, MR_ORG_ID_LEN);
        mr_pg_buf_str(&b[1], e->str.data, e->str.len);
        mr_pg_buf_int(&b[2], e->value);
    }

    if (n == 0) {
        return NGX_OK;
    }

    return mr_pg_send_arrays(req, MR_SQL_W_CREDIT_REFS, b, 3);
}


static ngx_int_t
mr_pg_rows_write_events(mr_pg_rows_t *rs, mr_pg_req_t *req)
{
    ngx_uint_t    n;
    mr_pg_ent_t  *e;
    mr_pg_buf_t   b[3];

    mr_pg_bufs_init(b, 3, rs->pool);
    n = 0;

    for (e = rs->head[MR_PG_EVENT]; e; e = e->all) {
        if (!e->dirty || e->deleted) {
            continue;
        }

        n++;

        mr_pg_buf_str(&b[0], e->key.data, e->key.len);
        mr_pg_buf_str(&b[1], e->org, MR_ORG_ID_LEN);
        mr_pg_buf_str(&b[2], e->str.data, e->str.len);
    }

    if (n == 0) {
        return NGX_OK;
    }

    return mr_pg_send_arrays(req, MR_SQL_W_EVENTS, b, 3);
}


static ngx_int_t
mr_pg_rows_write_dlvs(mr_pg_rows_t *rs, mr_pg_req_t *req)
{
    ngx_uint_t     n;
    mr_dlv_t      *dlv;
    mr_pg_ent_t   *e;
    mr_pg_buf_t    b[16];
    mr_dlv_rec_t  *r;

    mr_pg_bufs_init(b, 16, rs->pool);
    n = 0;

    for (e = rs->head[MR_PG_DLV]; e; e = e->all) {
        if (!e->dirty || e->deleted) {
            continue;
        }

        dlv = &e->dlv;
        r = &dlv->rec;
        n++;

        mr_pg_buf_str(&b[0], r->id, MR_DLV_ID_LEN);
        mr_pg_buf_str(&b[1], r->event_id, MR_EVT_ID_LEN);
        mr_pg_buf_str(&b[2], r->wh_id,
                      ngx_memcmp(r->wh_id, mr_zero, MR_WH_ID_LEN) != 0
                      ? MR_WH_ID_LEN : 0);
        mr_pg_buf_str(&b[3], r->org, MR_ORG_ID_LEN);
        mr_pg_buf_str(&b[4], r->exec_id,
                      ngx_memcmp(r->exec_id, mr_zero, MR_EXEC_ID_LEN) != 0
                      ? MR_EXEC_ID_LEN : 0);
        mr_pg_buf_str(&b[5], e->target, MR_WH_TARGET_LEN);
        mr_pg_buf_int(&b[6], r->status);
        mr_pg_buf_int(&b[7], r->attempts);
        mr_pg_buf_int(&b[8], r->created_ms);
        mr_pg_buf_int(&b[9], r->due_ms);
        mr_pg_buf_int(&b[10], r->next_ms);
        mr_pg_buf_int(&b[11], (int64_t) r->token);

        if (r->token) {
            mr_pg_buf_str(&b[12], rs->node.data, rs->node.len);

        } else {
            mr_pg_buf_null(&b[12]);
        }

        mr_pg_buf_str(&b[13], dlv->seg[MR_DLV_SEG_URL].data,
                      dlv->seg[MR_DLV_SEG_URL].len);
        mr_pg_buf_str(&b[14], dlv->seg[MR_DLV_SEG_TYPE].data,
                      dlv->seg[MR_DLV_SEG_TYPE].len);
        mr_pg_buf_str(&b[15], dlv->seg[MR_DLV_SEG_ATTEMPTS].data,
                      dlv->seg[MR_DLV_SEG_ATTEMPTS].len);
    }

    if (n == 0) {
        return NGX_OK;
    }

    return mr_pg_send_arrays(req, MR_SQL_W_DLVS, b, 16);
}


/* the ids of a kind's rows to delete (found, and marked so) */

static ngx_int_t
mr_pg_rows_deletes(mr_pg_rows_t *rs, mr_pg_req_t *req, ngx_uint_t kind,
    ngx_uint_t stmt)
{
    ngx_uint_t    n;
    mr_pg_ent_t  *e;
    mr_pg_buf_t   b;

    mr_pg_buf_init(&b, rs->pool);
    n = 0;

    for (e = rs->head[kind]; e; e = e->all) {
        if (!e->deleted || !e->found) {
            continue;
        }

        n++;
        mr_pg_buf_str(&b, e->key.data, e->key.len);
    }

    if (n == 0) {
        return NGX_OK;
    }

    return mr_pg_send_arrays(req, stmt, &b, 1);
}
