
/*
 * ModelRoute: a PostgreSQL batch's rows (mr_store_pg_rows.c): the identity
 * map of what the batch loaded and changed (an account changed by one
 * operation is seen changed by the next), the parsers of its rows, what
 * records cost their accounts (by the rules), and the writes that a
 * commit sends: one statement per table, whatever the batch's size.
 */


#ifndef _MR_STORE_PG_ROWS_H_INCLUDED_
#define _MR_STORE_PG_ROWS_H_INCLUDED_


#include <ngx_config.h>
#include <ngx_core.h>

#include "mr_store_pg.h"
#include "mr_store_pg_sql.h"


#define MR_PG_ACCT           0
#define MR_PG_EXEC           1
#define MR_PG_IDEM           2
#define MR_PG_KEY            3
#define MR_PG_WH             4
#define MR_PG_DLV            5
#define MR_PG_ROUTE          6
#define MR_PG_SECRET         7
#define MR_PG_REF            8
#define MR_PG_EVENT          9
#define MR_PG_NKINDS         10

#define MR_PG_BUCKETS        1024


typedef struct mr_pg_ent_s  mr_pg_ent_t;

struct mr_pg_ent_s {
    mr_pg_ent_t              *next;          /* in its bucket */
    mr_pg_ent_t              *all;           /* in its kind's list */
    ngx_uint_t                kind;
    ngx_str_t                 key;
    unsigned                  found:1;       /* loaded from the database */
    unsigned                  dirty:1;       /* to be written */
    unsigned                  deleted:1;     /* to be deleted */
    unsigned                  fresh:1;       /* new */
    int64_t                   bytes;         /* as loaded: what it costs */
    ngx_uint_t                live;          /* as loaded: in a count */

    mr_account_t              acct;          /* MR_PG_ACCT */
    mr_quota_t                quota;
    int64_t                   rl;            /* -1: none */
    mr_account_rec_t          acct_read;     /* as loaded: the deltas of */
    int64_t                   used_read[MR_LIMIT_N];  /* a batch */
    int64_t                   checked_bytes; /* ACCT: what the creates */
    int64_t                   checked_execs; /* the rules allowed added:
                                                checked again at the end
                                                if read unlocked */

    mr_exec_t                 exec;          /* MR_PG_EXEC, and the
                                                execution of MR_PG_IDEM */
    u_char                    last_dlv[MR_DLV_ID_LEN];
    unsigned                  has_last:1;
    unsigned                  exec_found:1;
    unsigned                  input_out:1;   /* EXEC: loaded without its
                                                input, of input_len bytes
                                                (MR_EXEC_COLS_LOCKED) */
    int64_t                   input_len;

    u_char                    org[MR_ORG_ID_LEN];  /* IDEM, REF, SECRET,
                                                      EVENT */
    ngx_str_t                 str;           /* IDEM: the key; REF: the
                                                reference; EVENT: body */
    u_char                    exec_id[MR_EXEC_ID_LEN];  /* IDEM */
    u_char                    exec_id_read[MR_EXEC_ID_LEN];  /* as loaded */
    int64_t                   value;         /* IDEM: created; REF: amount */

    mr_key_t                  k;             /* MR_PG_KEY */
    int64_t                   end_ms;

    mr_wh_t                   wh;            /* MR_PG_WH */
    mr_dlv_t                  dlv;           /* MR_PG_DLV */
    int64_t                   after_ms;      /* DLV: the due time of the
                                                earlier one it waits for,
                                                -1: that one is leased */
    u_char                    target[MR_WH_TARGET_LEN];
    uint64_t                  lease;         /* DLV: the lease's token */

    mr_route_state_t          route;         /* MR_PG_ROUTE */
    mr_route_state_t          route_read;    /* as loaded: the deltas */
    u_char                    secret[MR_WH_SECRET_LEN]; /* MR_PG_SECRET */
};


typedef struct {
    ngx_pool_t               *pool;
    mr_pg_ent_t              *buckets[MR_PG_BUCKETS];
    mr_pg_ent_t              *head[MR_PG_NKINDS];
    mr_pg_ent_t              *tail[MR_PG_NKINDS];
    ngx_uint_t                count[MR_PG_NKINDS];
    ngx_str_t                 node;          /* leases name it */
    unsigned                  deltas:1;      /* accounts read unlocked:
                                                written as deltas */
    unsigned                  route_deltas:1;  /* routes, the same */
} mr_pg_rows_t;


mr_pg_rows_t *mr_pg_rows_create(ngx_pool_t *pool);
mr_pg_ent_t *mr_pg_get(mr_pg_rows_t *rs, ngx_uint_t kind, u_char *key,
    size_t len);
mr_pg_ent_t *mr_pg_add(mr_pg_rows_t *rs, ngx_uint_t kind, u_char *key,
    size_t len);
mr_pg_ent_t *mr_pg_get2(mr_pg_rows_t *rs, ngx_uint_t kind, u_char *a,
    size_t alen, u_char *b, size_t blen);
mr_pg_ent_t *mr_pg_add2(mr_pg_rows_t *rs, ngx_uint_t kind, u_char *a,
    size_t alen, u_char *b, size_t blen);

/* parsers: a result's rows into the map (found) */
ngx_int_t mr_pg_rows_accounts(mr_pg_rows_t *rs, PGresult *res);
ngx_int_t mr_pg_rows_execs(mr_pg_rows_t *rs, PGresult *res);
ngx_int_t mr_pg_rows_idem(mr_pg_rows_t *rs, PGresult *res);
ngx_int_t mr_pg_rows_keys(mr_pg_rows_t *rs, PGresult *res);
ngx_int_t mr_pg_rows_endpoints(mr_pg_rows_t *rs, PGresult *res);
ngx_int_t mr_pg_rows_dlvs(mr_pg_rows_t *rs, PGresult *res);
ngx_int_t mr_pg_rows_routes(mr_pg_rows_t *rs, PGresult *res);
ngx_int_t mr_pg_rows_secrets(mr_pg_rows_t *rs, PGresult *res);
ngx_int_t mr_pg_rows_refs(mr_pg_rows_t *rs, PGresult *res);
ngx_int_t mr_pg_rows_events(mr_pg_rows_t *rs, PGresult *res);

/* single rows, for the reads */
ngx_int_t mr_pg_parse_exec(PGresult *res, int row, int col, mr_exec_t *exec,
    ngx_pool_t *pool);
ngx_int_t mr_pg_parse_account(PGresult *res, int row, int col,
    mr_account_t *acct, mr_quota_t *q, int64_t *rl, ngx_pool_t *pool);
ngx_int_t mr_pg_parse_key(PGresult *res, int row, int col, mr_key_t *key,
    ngx_pool_t *pool);
ngx_int_t mr_pg_parse_wh(PGresult *res, int row, int col, mr_wh_t *wh,
    ngx_pool_t *pool);
ngx_int_t mr_pg_parse_dlv(PGresult *res, int row, int col, mr_dlv_t *dlv,
    ngx_pool_t *pool);
ngx_int_t mr_pg_parse_route(PGresult *res, int row, int col,
    mr_route_state_t *st);

/* what records cost their accounts, and the changes of their use */
int64_t mr_pg_exec_bytes(mr_exec_t *exec);
int64_t mr_pg_ent_exec_bytes(mr_pg_ent_t *e);
int64_t mr_pg_wh_bytes(mr_wh_t *wh);
int64_t mr_pg_key_bytes(mr_key_t *key);
int64_t mr_pg_dlv_bytes(mr_dlv_t *dlv);
int64_t mr_pg_event_bytes(size_t body_len);

/* the writes of a batch, on its request */
ngx_int_t mr_pg_rows_write(mr_pg_rows_t *rs, mr_pg_req_t *req);
ngx_uint_t mr_pg_rows_writes(mr_pg_rows_t *rs);


#endif /* _MR_STORE_PG_ROWS_H_INCLUDED_ */
