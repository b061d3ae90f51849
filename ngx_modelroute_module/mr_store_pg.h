
/*
 * ModelRoute: the PostgreSQL store's internals, shared by its files:
 *   mr_store_pg_conf.c   the configuration and its check (the master)
 *   mr_store_pg_conn.c   non-blocking libpq connections on nginx's events,
 *                        in pipeline mode
 *   mr_store_pg_plans.c  a connection's plans made again as tables grow
 *   mr_store_pg.c        the store: group commit, reads, faults
 *   mr_store_pg_rows.c   a batch's rows: loading, the identity map, writes
 *   mr_store_pg_sql.c    the statements, prepared by name
 *   mr_store_pg_ops.c    the operations, on the loaded rows, by the rules
 *   mr_store_pg_read.c   the reads
 * Nothing else includes this.
 */


#ifndef _MR_STORE_PG_H_INCLUDED_
#define _MR_STORE_PG_H_INCLUDED_


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_event.h>

#include <libpq-fe.h>

#include "mr_store.h"


#define MR_PG_SCHEMA_VERSION     1      /* sql/NNN_*.sql applied */

/* the server's clock in ms, read last in a request (mr_pg_clock_sample()) */
#define MR_PG_CLOCK_SQL                                                       \
    "floor(extract(epoch FROM clock_timestamp()) * 1000)::bigint"

#define MR_PG_CONNECTIONS        2      /* per worker: batches, reads */
#define MR_PG_CONNECT_TIMEOUT    5000
#define MR_PG_TIMEOUT            10000

#define MR_PG_PLANS_TABLES       11     /* whose sizes the plans follow */


/* the configuration (mr_store_pg_conf.c), made once for the workers */

typedef struct {
    ngx_str_t                 conninfo;      /* as written: may hold a
                                                password, never logged */
    const char              **keywords;      /* NULL-terminated, with */
    const char              **values;        /* resolved host addresses */
    ngx_str_t                 where;         /* host, port, database: for
                                                messages */
    ngx_str_t                 secret_path;   /* the node's dispatch secret */
    ngx_uint_t                nhosts;        /* in its host list */
} mr_pg_conf_t;


ngx_uint_t mr_store_pg_is(ngx_str_t *value);
char *mr_store_pg_parse(ngx_conf_t *cf, mr_main_conf_t *mcf,
    ngx_str_t *value);
ngx_int_t mr_store_pg_check(ngx_cycle_t *cycle, mr_main_conf_t *mcf);
ngx_int_t mr_store_pg_node_secret(mr_pg_conf_t *pcf, u_char *secret);


/* ---- connections (mr_store_pg_conn.c) */

typedef struct mr_pg_conn_s  mr_pg_conn_t;
typedef struct mr_pg_req_s   mr_pg_req_t;

typedef void (*mr_pg_req_handler_pt)(mr_pg_req_t *req);
typedef void (*mr_pg_conn_handler_pt)(mr_pg_conn_t *pc);

#define MR_PG_DOWN           0
#define MR_PG_CONNECTING     1
#define MR_PG_SETUP          2      /* statements prepared, schema checked */
#define MR_PG_READY          3

/* what a request of queries (up to a sync) came to */
#define MR_PG_REQ_OK         0
#define MR_PG_REQ_FAILED     1      /* a statement failed: see error */
#define MR_PG_REQ_LOST       2      /* the connection was lost: unknown */

/* a request: queries sent together up to a sync, and their results */
struct mr_pg_req_s {
    ngx_queue_t               queue;
    mr_pg_conn_t             *conn;
    ngx_uint_t                n;             /* queries sent */
    ngx_uint_t                size;          /* slots in res */
    PGresult                **res;           /* a result per query */
    ngx_uint_t                got;
    ngx_uint_t                expect_null;
    ngx_uint_t                status;        /* MR_PG_REQ_* */
    char                      error[256];    /* the first error */
    char                      sqlstate[6];
    mr_pg_req_handler_pt      handler;
    void                     *data;
};

struct mr_pg_conn_s {
    PGconn                   *pg;
    ngx_connection_t         *c;             /* wraps PQsocket() */
    ngx_uint_t                state;         /* MR_PG_* */
    ngx_uint_t                index;         /* 0: the writer */
    ngx_queue_t               pending;       /* requests sent, in order */
    ngx_uint_t                npending;
    ngx_uint_t                failures;      /* connection attempts in a
                                                row that failed */
    ngx_uint_t                first;         /* the host tried first */
    ngx_msec_t                backoff;
    ngx_event_t               retry_ev;      /* reconnect, after backoff */
    ngx_event_t               timeout_ev;    /* connect, or the oldest
                                                request, took too long */
    ngx_event_t               lost_ev;       /* posted: it broke */
    mr_pg_req_t               setup;
    mr_pg_conn_handler_pt     ready;         /* READY, or DOWN again */
    ngx_event_t               plans_ev;      /* the tables' sizes, looked
                                                at (mr_store_pg_plans.c) */
    mr_pg_req_t               plans;
    int64_t                   plans_size[MR_PG_PLANS_TABLES];
                                             /* when the statements were
                                                prepared (the session's
                                                first look, or since) */
    ngx_uint_t                plans_failures;  /* looks in a row */
    int64_t                   clock_sent;    /* a request that reads the
                                                server's clock: when sent */
    void                     *data;
    ngx_log_t                *log;
    unsigned                  logged_down:1; /* said once until it is up */
    unsigned                  unreachable:1; /* its last connection attempt
                                                failed */
    unsigned                  refused:1;     /* its schema, said once */
    unsigned                  plans_known:1; /* plans_size */
    unsigned                  plans_due:1;   /* to send when idle */
    unsigned                  plans_renew:1; /* to prepare anew */
    unsigned                  plans_sent:1;
    unsigned                  plans_preparing:1; /* the look in flight
                                                   prepares anew */
    unsigned                  plans_logged:1;
};


/* the connection of one of its events */
#define mr_pg_conn_of(ev, field)                                              \
    ((mr_pg_conn_t *) ((u_char *) (ev) - offsetof(mr_pg_conn_t, field)))

mr_pg_conn_t *mr_pg_conn_create(ngx_cycle_t *cycle, ngx_uint_t index,
    mr_pg_conn_handler_pt ready, void *data);
void mr_pg_conn_connect(mr_pg_conn_t *pc);
void mr_pg_conn_close(mr_pg_conn_t *pc, ngx_uint_t again);
void mr_pg_conn_destroy(mr_pg_conn_t *pc);
ngx_int_t mr_pg_conn_prepare(mr_pg_conn_t *pc, ngx_uint_t *n);
void mr_pg_clock_sample(mr_pg_conn_t *pc, PGresult *res, int col);
ngx_uint_t mr_pg_clock_known(void);

mr_pg_req_t *mr_pg_req_create(ngx_pool_t *pool, ngx_uint_t size);
ngx_int_t mr_pg_send(mr_pg_req_t *req, ngx_uint_t stmt, int n,
    const char **values, const int *lengths);
ngx_int_t mr_pg_req_end(mr_pg_conn_t *pc, mr_pg_req_t *req,
    mr_pg_req_handler_pt handler, void *data);
void mr_pg_req_free(mr_pg_req_t *req);

ngx_int_t mr_pg_plans_init(mr_pg_conn_t *pc, ngx_pool_t *pool);
void mr_pg_plans_start(mr_pg_conn_t *pc);
void mr_pg_plans_stop(mr_pg_conn_t *pc);
void mr_pg_plans_idle(mr_pg_conn_t *pc);


/* ---- the statements, prepared on every connection (mr_store_pg_sql.c) */

/*
 * custom: sent unnamed with its parameters, planned for their values each
 * time, never prepared: for statements whose generic plan (made once,
 * kept until the next ANALYZE) could scan a growing table
 */

typedef struct {
    const char               *name;
    const char               *sql;
    ngx_uint_t                custom;
} mr_pg_stmt_t;

extern mr_pg_stmt_t  mr_pg_stmts[];
extern ngx_uint_t    mr_pg_nstmts;


/* ---- the store (mr_store_pg.c) */

ngx_int_t mr_store_pg_init_process(ngx_cycle_t *cycle, mr_main_conf_t *mcf);
void mr_store_pg_exit_process(ngx_cycle_t *cycle);
void mr_store_pg_submit(mr_store_op_t *op);
ngx_int_t mr_store_pg_read(mr_store_read_t *rd);

mr_pg_conf_t *mr_pg_conf(void);
mr_main_conf_t *mr_pg_main_conf(void);
const char *mr_pg_routes_literal(void);


/* ---- values (mr_store_pg_conn.c): text to and from PostgreSQL */

typedef struct {
    u_char                   *pos;
    u_char                   *last;
    u_char                   *end;
    ngx_pool_t               *pool;
    ngx_uint_t                n;             /* elements so far */
    ngx_uint_t                failed;        /* no memory */
} mr_pg_buf_t;

void mr_pg_buf_init(mr_pg_buf_t *b, ngx_pool_t *pool);
void mr_pg_buf_str(mr_pg_buf_t *b, u_char *p, size_t len);
void mr_pg_buf_int(mr_pg_buf_t *b, int64_t v);
void mr_pg_buf_null(mr_pg_buf_t *b);
char *mr_pg_buf_end(mr_pg_buf_t *b);
char *mr_pg_int(ngx_pool_t *pool, int64_t v);
char *mr_pg_str(ngx_pool_t *pool, u_char *p, size_t len);
char *mr_pg_hex(ngx_pool_t *pool, u_char *p, size_t len);
int64_t mr_pg_get_int(PGresult *res, int row, int col);
ngx_int_t mr_pg_get_str(PGresult *res, int row, int col, ngx_pool_t *pool,
    ngx_str_t *s);
ngx_int_t mr_pg_get_fixed(PGresult *res, int row, int col, u_char *dst,
    size_t len);
ngx_int_t mr_pg_get_bytea(PGresult *res, int row, int col, u_char *dst,
    size_t len);


#endif /* _MR_STORE_PG_H_INCLUDED_ */
