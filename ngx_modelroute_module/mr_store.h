
/*
 * ModelRoute: the store interface.
 *
 * Every persistent change is a domain operation (create an execution with
 * its hold and idempotency key, cancel it, credit an account, ...): writes
 * are queued with mr_store_submit() and committed together (group commit),
 * after which each operation's handler runs on the event loop.  The commit
 * may run in a thread: until its handler runs, an operation and the memory
 * it points to (op->pool) belong to the store.
 *
 * Reads (mr_store_read()) are operations too: one that completes at once
 * returns NGX_OK with its result in it (its handler is not called), one
 * that completes later returns NGX_AGAIN, and its handler runs on the
 * event loop.  A caller has one continuation that both paths call.  The
 * LMDB backend answers every read at once.
 *
 * The LMDB backend lives in mr_store*.c; nothing outside it sees LMDB.
 */


#ifndef _MR_STORE_H_INCLUDED_
#define _MR_STORE_H_INCLUDED_


#include <ngx_config.h>
#include <ngx_core.h>

#include "ngx_http_modelroute_module.h"
#include "mr_util.h"


#define MR_PENDING           1
#define MR_PROCESSING        2
#define MR_AWAITING_WEBHOOK  3
#define MR_COMPLETED         4
#define MR_FAILED            5
#define MR_CANCELLED         6
#define MR_EXPIRED           7

#define mr_status_terminal(s)  ((s) >= MR_COMPLETED)


#define MR_PERM_FULL         1
#define MR_PERM_EXECUTION    2


/* variable parts of an execution, each a JSON text (empty = null) */
#define MR_SEG_MODEL         0      /* raw slug */
#define MR_SEG_IDEM_KEY      1      /* JSON string */
#define MR_SEG_METADATA      2      /* JSON object */
#define MR_SEG_WEBHOOK_URL   3
#define MR_SEG_INPUT         4
#define MR_SEG_RESULT        5
#define MR_SEG_ERROR         6
#define MR_SEG_ATTEMPTS      7      /* JSON array */
#define MR_SEG_N             8


typedef struct {
    uint32_t                  version;
    uint32_t                  status;
    int64_t                   estimate;
    int64_t                   hold;
    int64_t                   cost;            /* -1: not settled */
    int64_t                   created_ms;
    int64_t                   expires_ms;
    int64_t                   started_ms;
    int64_t                   completed_ms;
    int64_t                   lease_until_ms;
    uint64_t                  lease_owner;     /* token of the lease */
    int64_t                   next_ms;         /* in the dispatch index */
    int64_t                   order;           /* in byorg: created, in us */
    int64_t                   attempt_ms;      /* start of the attempt */
    uint32_t                  nattempts;
    uint32_t                  route_len;
    u_char                    route[MR_ROUTE_NAME_LEN]; /* of the lease */
    u_char                    org[MR_ORG_ID_LEN];
    u_char                    fingerprint[MR_SHA256_LEN];
    uint32_t                  seg_len[MR_SEG_N];
} mr_exec_rec_t;


typedef struct {
    u_char                    id[MR_EXEC_ID_LEN];
    mr_exec_rec_t             rec;
    ngx_str_t                 seg[MR_SEG_N];
} mr_exec_t;


typedef struct {
    int64_t                   balance;
    int64_t                   held;
    int64_t                   credited;
    int64_t                   debited;
    int64_t                   charged;
    int64_t                   created_ms;
    uint32_t                  name_len;        /* JSON string follows */
} mr_account_rec_t;


typedef struct {
    u_char                    id[MR_ORG_ID_LEN];
    mr_account_rec_t          rec;
    ngx_str_t                 name;
} mr_account_t;


/*
 * An account's use of the store and its limits (mr_limits.c): what it
 * keeps (stored bytes, as counted by the store), its live executions,
 * its webhook endpoints and its active API keys.
 */

#define MR_LIMIT_BYTES       0
#define MR_LIMIT_EXECUTIONS  1
#define MR_LIMIT_ENDPOINTS   2
#define MR_LIMIT_KEYS        3
#define MR_LIMIT_N           4

typedef struct {
    int64_t                   used[MR_LIMIT_N];
    int64_t                   limit[MR_LIMIT_N]; /* -1: the default */
} mr_quota_t;                   /* fields are only ever appended */


typedef struct {
    u_char                    key_id[MR_KEY_ID_LEN];
    u_char                    org[MR_ORG_ID_LEN];
    u_char                    hash[MR_SHA256_LEN];
    u_char                    hint[4];         /* last 4 hex of the secret */
    uint32_t                  permission;
    uint32_t                  revoked;
    int64_t                   created_ms;
    int64_t                   valid_until_ms;  /* 0: no end */
    uint32_t                  name_len;        /* JSON string follows */
} mr_key_rec_t;


typedef struct {
    mr_key_rec_t              rec;
    ngx_str_t                 name;
} mr_key_t;


/* webhooks */

#define MR_WH_ID_LEN         27     /* "wh_" + 24 hex */
#define MR_EVT_ID_LEN        48     /* "evt_" + 12 hex of ms + 32 hex */
#define MR_DLV_ID_LEN        48     /* "dlv_" + 12 hex of ms + 32 hex */
#define MR_WH_SECRET_LEN     50     /* "whsec_" + base64 of 32 bytes */

/*
 * A delivery's target, for the caps and the fair claim: its endpoint's
 * id, or for an execution's webhook_url "wu_" + 24 hex of a hash of the
 * URL's scheme, host and port.  With the account: the claim's busy key.
 */
#define MR_WH_TARGET_LEN     MR_WH_ID_LEN
#define MR_DLV_BUSY_LEN      (MR_ORG_ID_LEN + MR_WH_TARGET_LEN)

#define MR_WH_SEG_URL         0
#define MR_WH_SEG_DESCRIPTION 1     /* JSON string or empty */
#define MR_WH_SEG_EVENTS      2     /* JSON array of strings */
#define MR_WH_SEG_HEADERS     3     /* JSON object of strings */
#define MR_WH_SEG_SECRET      4
#define MR_WH_SEG_N           5

typedef struct {
    u_char                    id[MR_WH_ID_LEN];
    u_char                    org[MR_ORG_ID_LEN];
    uint32_t                  active;
    uint32_t                  failures;
    int64_t                   created_ms;
    int64_t                   last_success_ms;
    uint32_t                  seg_len[MR_WH_SEG_N];
} mr_wh_rec_t;

typedef struct {
    mr_wh_rec_t               rec;
    ngx_str_t                 seg[MR_WH_SEG_N];
} mr_wh_t;

#define MR_DLV_PENDING        1
#define MR_DLV_SUCCEEDED      2
#define MR_DLV_FAILED         3

#define MR_DLV_SEG_URL        0     /* an execution's webhook_url */
#define MR_DLV_SEG_TYPE       1     /* event type */
#define MR_DLV_SEG_ATTEMPTS   2     /* JSON array */
#define MR_DLV_SEG_N          3

typedef struct {
    u_char                    id[MR_DLV_ID_LEN];
    u_char                    event_id[MR_EVT_ID_LEN];
    u_char                    wh_id[MR_WH_ID_LEN];   /* zeros: webhook_url */
    u_char                    org[MR_ORG_ID_LEN];
    u_char                    exec_id[MR_EXEC_ID_LEN]; /* zeros: none */
    uint32_t                  status;
    uint32_t                  attempts;
    int64_t                   created_ms;
    int64_t                   due_ms;        /* key in the due index */
    int64_t                   next_ms;       /* next attempt, if pending */
    uint64_t                  token;         /* of the current lease */
    uint32_t                  seg_len[MR_DLV_SEG_N];
} mr_dlv_rec_t;

typedef struct {
    mr_dlv_rec_t              rec;
    ngx_str_t                 seg[MR_DLV_SEG_N];
} mr_dlv_t;

/* a claimed delivery: one malloc'ed block, freed with ngx_free() */
typedef struct mr_dlv_job_s  mr_dlv_job_t;

struct mr_dlv_job_s {
    mr_dlv_job_t             *next;
    u_char                    dlv_id[MR_DLV_ID_LEN];
    u_char                    wh_id[MR_WH_ID_LEN];
    u_char                    event_id[MR_EVT_ID_LEN];
    u_char                    busy[MR_DLV_BUSY_LEN]; /* org + target */
    uint64_t                  token;
    ngx_str_t                 url;
    ngx_str_t                 body;
    ngx_str_t                 secret;
    ngx_str_t                 headers;       /* JSON object or empty */
};

#define MR_WH_PATCH_URL          0x01
#define MR_WH_PATCH_DESCRIPTION  0x02
#define MR_WH_PATCH_EVENTS       0x04
#define MR_WH_PATCH_HEADERS      0x08
#define MR_WH_PATCH_ACTIVE       0x10

typedef struct {
    mr_wh_t                   ep;            /* create, update */
    u_char                    wh_id[MR_WH_ID_LEN];
    u_char                    dlv_id[MR_DLV_ID_LEN];
    u_char                    event_id[MR_EVT_ID_LEN];
    ngx_uint_t                patch;
    u_char                    secret[MR_WH_SECRET_LEN];
    mr_dlv_t                  dlv;           /* MR_OP_DLV_RETRY */

    /* MR_OP_DLV_CLAIM */
    ngx_uint_t                limit;
    ngx_uint_t                per_endpoint;  /* per target */
    u_char                   *busy;          /* of the attempts in flight:
                                                their jobs' busy keys */
    ngx_uint_t                nbusy;
    int64_t                   lease_ms;
    mr_dlv_job_t             *jobs;
    ngx_uint_t                claimed;

    /* MR_OP_DLV_DONE */
    uint64_t                  token;
    ngx_uint_t                status_code;   /* 0: no HTTP answer */
    int64_t                   latency_ms;
    ngx_str_t                 error;
    ngx_msec_t               *schedule;
    ngx_uint_t                nschedule;
    int64_t                   max_age_ms;
} mr_wh_op_t;


/* dispatch */

#define MR_DISP_FROM_LEN     (8 + MR_EXEC_ID_LEN)    /* be64 due ms + id */

#define MR_OUT_OK               1      /* a result */
#define MR_OUT_RETRY            2      /* a retryable failure */
#define MR_OUT_FATAL            3      /* a failure retrying cannot mend */
#define MR_OUT_ACCEPTED         4      /* an asynchronous job was taken */
#define MR_OUT_TIMEOUT          5      /* the attempt ran out of time */

/* what a failure says of its route (mr_disp_op_t.breaker) */
#define MR_BREAKER_NONE         0      /* not counted: a 429, an input
                                          error, the gateway's own limit */
#define MR_BREAKER_PROVIDER     1      /* the provider failed */
#define MR_BREAKER_TIMEOUT      2      /* it took the request and did not
                                          answer in time: the provider, or
                                          an input that takes long */

/* a claimed attempt: one malloc'ed block, freed with ngx_free() */
typedef struct mr_disp_job_s  mr_disp_job_t;

struct mr_disp_job_s {
    mr_disp_job_t            *next;
    u_char                    exec_id[MR_EXEC_ID_LEN];
    uint64_t                  token;
    int64_t                   lease_until_ms;
};

/* a route's shared state, in the store */
typedef struct {
    uint32_t                  inflight;
    uint32_t                  failures;      /* in a row */
    int64_t                   open_until_ms; /* 0: closed */
    int64_t                   probe_until_ms;/* half-open probe in flight */
    int64_t                   paused_until_ms; /* Retry-After */
    uint64_t                  attempts;
    uint64_t                  failed;
    uint64_t                  probe_token;   /* the probe's lease */

    /*
     * the failures counted since the breaker last closed or opened: the
     * provider's own, and the accounts whose attempts timed out (0, 1, 2
     * for two or more), the first of them in timeout_org
     */
    uint32_t                  provider_failures;
    uint32_t                  timeout_accounts;
    u_char                    timeout_org[MR_ORG_ID_LEN];
} mr_route_state_t;             /* fields are only ever appended */

typedef struct {
    /* MR_OP_DISP_CLAIM: in limit; out jobs */
    ngx_uint_t                limit;
    mr_disp_job_t            *jobs;
    ngx_uint_t                claimed;
    ngx_uint_t                more;          /* the scan stopped at limit */
    ngx_uint_t                rescan;        /* it looked at too few: claim
                                                again at once */
    ngx_uint_t                next_known;    /* it saw all that was due, */
    int64_t                   next_due;      /* and the next (-1: none) */

    /*
     * in: where its look past the head of the due queue starts (be64 due
     * ms + execution id, PostgreSQL: the due ms only, zeros after it;
     * from_set 0: after the head); out, if it looked past the head
     * (past): where the next one starts
     */
    u_char                    from[MR_DISP_FROM_LEN];
    ngx_uint_t                from_set;
    ngx_uint_t                past;
    u_char                    next_from[MR_DISP_FROM_LEN];
    ngx_uint_t                next_from_set;

    /* MR_OP_DISP_DONE, MR_OP_DISP_CALLBACK */
    u_char                    exec_id[MR_EXEC_ID_LEN];
    uint64_t                  token;
    ngx_uint_t                outcome;       /* MR_OUT_* */
    const char               *code;          /* the error code */
    ngx_str_t                 message;
    ngx_str_t                 result;        /* JSON object */
    ngx_str_t                 job_id;        /* JSON string or empty */
    int64_t                   cost;          /* -1: the estimate */
    int64_t                   retry_after_ms;
    ngx_uint_t                status_code;   /* of the provider; 0: none */
    ngx_uint_t                jitter;        /* 0..999 */
    ngx_uint_t                breaker;       /* MR_BREAKER_* */
    int64_t                   ended_ms;
    int64_t                   answered_us;   /* mr_mono_us() when the
                                                answer was whole (the
                                                latency the gateway adds:
                                                metrics) */

    /* MR_R_OK: the status it left */
    ngx_uint_t                status;
} mr_disp_op_t;


typedef struct {
    int64_t                   open_holds;
    ngx_uint_t                executions;
    ngx_uint_t                open_executions;
    mr_quota_t                quota;           /* as maintained */
    int64_t                   counted[MR_LIMIT_N]; /* as walked */
} mr_verify_t;


/* what the metrics and the health answer read of the store */
typedef struct {
    uint64_t                  holds;         /* open executions */
    int64_t                   held;          /* their holds, micro-dollars */
    uint64_t                  backlog;       /* deliveries not finished */
    uint64_t                  accounts;
    uint64_t                  executions;    /* stored */
    uint64_t                  used_bytes;    /* up to the highest page */
    uint64_t                  map_bytes;
} mr_store_stats_t;


typedef struct {
    u_char                   *org;
    ngx_uint_t                status;          /* 0: any */
    ngx_str_t                 model;           /* empty: any */
    ngx_uint_t                limit;
    ngx_str_t                 starting_after;  /* empty: from the newest */

    /* out: more may follow; continue after next (the last looked at) */
    ngx_uint_t                has_more;
    u_char                    next[MR_EXEC_ID_LEN];
} mr_list_query_t;


/* operation outcomes */
#define MR_R_OK                 0
#define MR_R_REPLAYED           1
#define MR_R_NOOP               2
#define MR_R_NOT_FOUND          3
#define MR_R_IDEM_REUSED        4
#define MR_R_INSUFFICIENT       5
#define MR_R_TERMINAL           6
#define MR_R_LIMIT              7      /* an amount would pass a limit */
#define MR_R_STORAGE_FULL       8
#define MR_R_INTERNAL           9
#define MR_R_ACCOUNT_LIMIT     10      /* quota_which, _limit, _used */
#define MR_R_FORBIDDEN         11
#define MR_R_UNAVAILABLE       12     /* the store cannot be reached */


#define MR_OP_EXEC_CREATE       1
#define MR_OP_EXEC_CANCEL       2
#define MR_OP_ACCOUNT_CREATE    3
#define MR_OP_ACCOUNT_ADJUST    4
#define MR_OP_KEY_CREATE        5
#define MR_OP_KEY_REVOKE        6
#define MR_OP_KEY_ROTATE        7
#define MR_OP_SWEEP             8
#define MR_OP_WH_CREATE         9
#define MR_OP_WH_UPDATE        10
#define MR_OP_WH_DELETE        11
#define MR_OP_WH_TEST          12
#define MR_OP_WH_SECRET        13
#define MR_OP_DLV_RETRY        14
#define MR_OP_DLV_CLAIM        15
#define MR_OP_DLV_DONE         16
#define MR_OP_DISP_CLAIM       17
#define MR_OP_DISP_DONE        18
#define MR_OP_DISP_CALLBACK    19
#define MR_OP_OPS              20     /* mr_store_ops.c */
#define MR_OP_ACCOUNT_LIMITS   21


/* MR_OP_OPS: rate-limit overrides and the health heartbeat */
typedef struct {
    ngx_uint_t                kind;          /* MR_STORE_OPS_* */
    uint64_t                  value;
} mr_ops_op_t;


typedef struct mr_store_op_s  mr_store_op_t;

typedef void (*mr_store_op_handler_pt)(mr_store_op_t *op);

struct mr_store_op_s {
    ngx_queue_t               queue;
    ngx_uint_t                type;
    ngx_uint_t                tries;         /* the backend's */
    ngx_pool_t               *pool;          /* results are copied here */
    mr_store_op_handler_pt    handler;
    void                     *data;

    ngx_uint_t                result;        /* MR_R_* */
    int64_t                   now;           /* set by mr_store_submit() */
    ngx_uint_t                now_local;     /* set before the store's
                                                clock was known (PostgreSQL:
                                                set again in its batch) */

    /* MR_OP_EXEC_CREATE: exec, idem_key, idem_ttl_ms;
     * MR_OP_EXEC_CANCEL: exec.id, org */
    mr_exec_t                 exec;
    mr_exec_t                 replay;        /* MR_R_REPLAYED */
    ngx_str_t                 idem_key;
    int64_t                   idem_ttl_ms;

    /* accounts: org, account; adjust: amount (signed), reference */
    u_char                    org[MR_ORG_ID_LEN];
    mr_account_t              account;
    int64_t                   amount;
    ngx_str_t                 reference;

    /* keys: key (new), key_id (revoke, rotate), grace_ms; a rotation's
     * caller: the key it was asked with (zeros: none, lua-compat) */
    mr_key_t                  key;
    mr_key_t                  old_key;
    u_char                    key_id[MR_KEY_ID_LEN];
    u_char                    caller_key_id[MR_KEY_ID_LEN];
    int64_t                   grace_ms;

    /* accounts: their quota (out); MR_OP_ACCOUNT_LIMITS: the limits
     * whose bit is in quota_mask take quota_set (-1: the default) */
    mr_quota_t                quota;
    ngx_uint_t                quota_mask;
    int64_t                   quota_set[MR_LIMIT_N];

    /* MR_R_FORBIDDEN: why */
    const char               *reason;

    /* MR_R_ACCOUNT_LIMIT: the limit reached, its value, the use */
    ngx_uint_t                quota_which;
    int64_t                   quota_limit;
    int64_t                   quota_used;

    /* MR_R_INSUFFICIENT */
    int64_t                   required;
    int64_t                   available;

    /* MR_OP_SWEEP: in: limit, idem_ttl_ms, retention_ms (0: keep);
     * out: expired, purged, more (a limit was reached), failed,
     * scanned (the retention's entries read, kept or not) */
    ngx_uint_t                limit;
    int64_t                   retention_ms;
    ngx_uint_t                expired;
    ngx_uint_t                purged;
    ngx_uint_t                scanned;
    ngx_uint_t                more;
    ngx_uint_t                failed;        /* steps that did not fit */

    /* webhooks; emitted: deliveries this operation created */
    mr_wh_op_t                wh;
    ngx_uint_t                emitted;
    ngx_uint_t                ready;         /* work for the dispatcher */
    ngx_uint_t                full;          /* ended an execution */

    mr_disp_op_t              disp;

    mr_ops_op_t               ops;
};


/*
 * Reads.  In: the fields each type names; out: rc (NGX_OK, NGX_DECLINED:
 * not found, NGX_ERROR: failed, NGX_BUSY: the store cannot be reached, a
 * retryable 503), and the fields it fills.  Lists go to arrays the caller
 * made; what they point to is copied to rd->pool.
 */

#define MR_READ_AUTH          1  /* hash -> key, rl_own, rl_value */
#define MR_READ_ACCOUNT       2  /* org -> account, quota, rl_own, rl_value */
#define MR_READ_KEYS          3  /* org -> account, list (mr_key_t) */
#define MR_READ_EXEC          4  /* id -> exec */
#define MR_READ_EXECS         5  /* ids, nids -> list (mr_exec_t; rec.status
                                    0: not found), in the order of ids */
#define MR_READ_EXEC_LIST     6  /* query -> list (mr_exec_t) */
#define MR_READ_VERIFY        7  /* org -> account, verify */
#define MR_READ_WH            8  /* id (wh), org -> wh; NGX_DECLINED: no
                                    such endpoint of org */
#define MR_READ_WH_LIST       9  /* org -> list (mr_wh_t) */
#define MR_READ_DLV_LIST     10  /* id, len (wh or exec id), org, limit ->
                                    list (mr_dlv_t); NGX_DECLINED: no such
                                    endpoint or execution of org */
#define MR_READ_SECRET       11  /* org -> secret */
#define MR_READ_META         12  /* name -> raw (MR_STORE_SECRET_LEN) */
#define MR_READ_DISP_NEXT    13  /* -> due (-1: none) */
#define MR_READ_STATS        14  /* -> stats; states, if not NULL (a slot
                                    per configured route) */
#define MR_READ_ACCOUNTS     15  /* after, limit -> list (mr_account_t),
                                    quotas (mr_quota_t), more */
#define MR_READ_FAILED_DLVS  16  /* limit -> list (mr_dlv_t), scanned */
#define MR_READ_ROUTES       17  /* -> states (a slot per configured
                                    route) */
#define MR_READ_SIZE         18  /* -> stats: the store's size only (the
                                    health answer: no count that grows
                                    with the open executions) */


typedef struct mr_store_read_s  mr_store_read_t;

/*
 * What a read of executions needs of them; a backend may give more (the
 * LMDB store copies whole records): the parts left out are empty
 */
#define MR_PARTS_WHOLE       0
#define MR_PARTS_SHOWN       1       /* all but the input: what the API
                                        shows, and no input */
#define MR_PARTS_STATE       2       /* the record: status, lease... (no
                                        segment) */

typedef void (*mr_store_read_handler_pt)(mr_store_read_t *rd);

struct mr_store_read_s {
    ngx_queue_t               queue;          /* the backend's */
    ngx_uint_t                type;           /* MR_READ_* */
    ngx_pool_t               *pool;           /* results are copied here */
    mr_store_read_handler_pt  handler;        /* when NGX_AGAIN was said */
    void                     *data;
    ngx_uint_t                arg;            /* the caller's */
    ngx_int_t                 rc;
    void                     *backend;        /* the backend's */

    /* in */
    u_char                    id[MR_EXEC_ID_LEN];
    size_t                    len;
    u_char                    org[MR_ORG_ID_LEN]; /* the caller's */
    u_char                   *ids;            /* MR_EXEC_ID_LEN each */
    ngx_uint_t                nids;
    ngx_uint_t                parts;          /* MR_READ_EXEC(S): the
                                                 parts needed, MR_PARTS_* */
    ngx_uint_t                limit;
    ngx_str_t                 after;
    const char               *name;
    mr_list_query_t          *query;

    /* out */
    mr_key_t                  key;
    mr_account_t              account;
    mr_quota_t                quota;
    uint64_t                  rl_value;       /* a rate-limit override */
    ngx_uint_t                rl_own;         /* ... is set */
    mr_exec_t                 exec;
    mr_verify_t               verify;
    mr_wh_t                   wh;
    ngx_str_t                 secret;
    u_char                    raw[32];
    int64_t                   due;
    mr_store_stats_t          stats;
    mr_route_state_t         *states;
    ngx_array_t              *list;
    ngx_array_t              *quotas;
    ngx_uint_t                more;
    ngx_uint_t                scanned;
};


/* a caller waiting for the store to be mapped again (mr_store_wait()) */
typedef struct mr_store_waiter_s  mr_store_waiter_t;

struct mr_store_waiter_s {
    ngx_queue_t               queue;
    void                    (*handler)(mr_store_waiter_t *w);
    void                     *data;
    ngx_uint_t                waiting;
};


char *mr_store_directive(ngx_conf_t *cf, ngx_command_t *cmd, void *conf);
char *mr_store_key_cache_directive(ngx_conf_t *cf, ngx_command_t *cmd,
    void *conf);
ngx_int_t mr_store_check(ngx_cycle_t *cycle, mr_main_conf_t *mcf);
ngx_int_t mr_store_start(ngx_cycle_t *cycle, mr_main_conf_t *mcf);
ngx_int_t mr_store_init_process(ngx_cycle_t *cycle, mr_main_conf_t *mcf);
void mr_store_exit_process(ngx_cycle_t *cycle);

void mr_store_submit(mr_store_op_t *op);
ngx_uint_t mr_store_claims_last(void);
ngx_int_t mr_store_read(mr_store_read_t *rd);
ngx_int_t mr_store_wait(mr_store_waiter_t *w);
void mr_store_wait_cancel(mr_store_waiter_t *w);

ngx_int_t mr_store_new_secret(u_char *secret);

#define MR_STORE_SECRET_LEN  32

/* called after a commit that created deliveries */
extern void (*mr_store_deliveries_hook)(void);

/* called after a commit that made executions ready for dispatch */
extern void (*mr_store_dispatch_hook)(void);


#endif /* _MR_STORE_H_INCLUDED_ */
