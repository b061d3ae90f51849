
/*
 * ModelRoute: the PostgreSQL store's batches and reads, shared by
 * mr_store_pg.c (the store), mr_store_pg_ops.c (the operations) and
 * mr_store_pg_read.c (the reads).
 */


#ifndef _MR_STORE_PG_OPS_H_INCLUDED_
#define _MR_STORE_PG_OPS_H_INCLUDED_


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_event.h>

#include "mr_store_pg.h"
#include "mr_store_pg_rows.h"


/* a batch's kind: operations, or one claim, or one sweep */
#define MR_PG_B_OPS          0
#define MR_PG_B_DISP_CLAIM   1
#define MR_PG_B_DLV_CLAIM    2
#define MR_PG_B_SWEEP        3

/* where it is */
#define MR_PG_P_CAND         1       /* candidates, without a lock */
#define MR_PG_P_LOAD         2       /* BEGIN, locks and loads */
#define MR_PG_P_COMMIT       3       /* writes and COMMIT */
#define MR_PG_P_RESOLVE      4       /* was it committed? */

#define MR_PG_LOADS_MAX      24      /* statements of a load */
#define MR_PG_GROUP_MAX      64      /* reads answered by one statement */


typedef struct {
    ngx_queue_t               ops;
    ngx_uint_t                n;
    ngx_uint_t                kind;
    ngx_uint_t                phase;
    ngx_pool_t               *pool;
    mr_pg_rows_t             *rows;
    mr_pg_req_t              *req;
    u_char                    id[16];        /* its uuid; its lock's key */
    ngx_uint_t                tries;
    int64_t                   resolve_until;

    /* what its load request asked, in order */
    ngx_uint_t                loads[MR_PG_LOADS_MAX];
    ngx_uint_t                nloads;

    /* a claim's or a step's candidates: ids (and orgs), in order */
    ngx_array_t              *cand;          /* ngx_str_t */
    ngx_array_t              *cand_orgs;     /* ngx_str_t */
    ngx_uint_t                more;          /* candidates were left */
    ngx_uint_t                scan;          /* a claim's LIMIT */
    ngx_uint_t                scan_past;     /* and past the head */
    ngx_uint_t                rescan;        /* it was too small */
    ngx_uint_t                next_known;    /* all that was due seen */
    int64_t                   next_due;      /* the next after (-1) */

    /* a delivery claim's last account visited (visited_set) */
    u_char                    visited[MR_ORG_ID_LEN];

    /* a sweep's step (mr_store_pg_ops.c) */
    ngx_uint_t                step;

    unsigned                  alone:1;       /* one operation, made again */
    unsigned                  wrote:1;       /* the commit changes rows */
    unsigned                  heartbeat:1;
    unsigned                  resolving:1;
    unsigned                  visited_set:1;
} mr_pg_batch_t;


/*
 * Reads of one kind that came in one turn of the event loop (keys by
 * their hash, executions by their id), answered by one statement
 */
typedef struct {
    ngx_pool_t               *pool;          /* the group's own */
    ngx_uint_t                type;          /* MR_READ_AUTH, MR_READ_EXEC */
    ngx_uint_t                parts;         /* MR_READ_EXEC: MR_PARTS_* */
    ngx_uint_t                n;
    mr_store_read_t          *rd[MR_PG_GROUP_MAX];
} mr_pg_group_t;


typedef struct mr_pg_store_s {
    mr_main_conf_t           *mcf;
    mr_pg_conf_t             *conf;
    ngx_log_t                *log;
    mr_pg_conn_t            **conns;
    ngx_uint_t                nconns;
    mr_pg_conn_t             *writer;        /* conns[0]: the batches */
    ngx_uint_t                next_reader;
    ngx_queue_t               ops;           /* waiting for the batch */
    ngx_queue_t               reads;         /* waiting for a reader */
    ngx_queue_t               gather;        /* this turn's, to group */
    mr_pg_batch_t             batch;
    ngx_uint_t                busy;
    ngx_uint_t                nreads;        /* reads not answered yet */
    ngx_event_t               commit_ev;
    ngx_event_t               wait_ev;
    ngx_event_t               inflight_ev;
    ngx_event_t               gather_ev;     /* posted: groups them */
    ngx_str_t                 node;          /* host:node_dir */
    const char               *routes;        /* a text array literal */
    u_char                    dlv_cursor[MR_ORG_ID_LEN];
    ngx_uint_t                dlv_cursor_set;
    ngx_uint_t                disp_waiting;  /* due executions the last
                                                dispatch claim passed over
                                                before it was done */
    unsigned                  exiting:1;
} mr_pg_store_t;


extern mr_pg_store_t  *mr_pg;


/* mr_store_pg.c */
void mr_pg_batch_next(mr_pg_batch_t *b);
void mr_pg_op_reset_all(mr_pg_batch_t *b);
ngx_uint_t mr_pg_readers_unreachable(void);
void mr_pg_hold(void);

/* mr_store_pg_ops.c */
ngx_int_t mr_pg_ops_candidates(mr_pg_batch_t *b, mr_pg_req_t *req);
ngx_int_t mr_pg_ops_candidates_done(mr_pg_batch_t *b, mr_pg_req_t *req);
ngx_int_t mr_pg_ops_load(mr_pg_batch_t *b, mr_pg_req_t *req);
ngx_int_t mr_pg_ops_apply(mr_pg_batch_t *b, mr_pg_req_t *req);
void mr_pg_sweep_begin(mr_store_op_t *op);
ngx_int_t mr_pg_sweep_next(mr_pg_batch_t *b, mr_store_op_t *op);
ngx_int_t mr_pg_send_heartbeat(mr_pg_req_t *req, mr_pg_batch_t *b);
void mr_pg_batch_uuid(mr_pg_batch_t *b, u_char *hex);
int64_t mr_pg_batch_lock_key(mr_pg_batch_t *b);

/* mr_store_pg_read.c */
ngx_int_t mr_pg_read_create(mr_store_read_t *rd);
ngx_int_t mr_pg_read_send(mr_pg_conn_t *pc, mr_store_read_t *rd,
    mr_pg_req_handler_pt handler);
ngx_int_t mr_pg_read_parse(mr_store_read_t *rd, mr_pg_req_t *req);
void mr_pg_read_wait(mr_store_read_t *rd);
ngx_int_t mr_pg_read_waited(ngx_queue_t *q, int64_t now);
ngx_uint_t mr_pg_read_expired(mr_store_read_t *rd, int64_t now);
void mr_pg_read_answer(mr_store_read_t *rd, ngx_int_t rc);
const char *mr_pg_read_name(mr_store_read_t *rd);
ngx_uint_t mr_pg_read_groups(mr_store_read_t *rd);
ngx_int_t mr_pg_group_send(mr_pg_conn_t *pc, mr_pg_group_t *g,
    mr_pg_req_handler_pt handler);
void mr_pg_group_parse(mr_pg_group_t *g, mr_pg_req_t *req);

/* the API keys this worker read (modelroute_key_cache) */
ngx_int_t mr_pg_keys_init(ngx_cycle_t *cycle);
void mr_pg_keys_free(void);
ngx_int_t mr_pg_keys_cached(mr_store_read_t *rd);
void mr_pg_keys_keep(mr_store_read_t *rd);
void mr_pg_keys_forget(void);


#endif /* _MR_STORE_PG_OPS_H_INCLUDED_ */
