
/*
 * ModelRoute: Prometheus metrics.
 *
 * Where each number lives:
 *
 *   shared memory (this node, all workers, atomics; kept across reloads,
 *   reset when nginx starts): executions created and finished by model and
 *   status, idempotent replays, error answers by code, dispatch attempts
 *   by route and outcome, webhook delivery attempts by outcome, store
 *   commits, and the histograms (commit duration, operations per commit,
 *   created -> terminal, provider answer -> terminal);
 *
 *   the store, read at each scrape: open holds and their amount, the
 *   webhook backlog, each route's breaker and attempts in flight, the
 *   store's size and map use, the number of accounts and executions.
 *
 * Counters of things the store commits are added after their commit:
 * the commit's thread stages them, and mr_metrics_txn_end() adds them
 * when the transaction is committed (an aborted one adds nothing).  The
 * zone's model and route slots are found by name, so a reload that adds,
 * removes or reorders models keeps every model's numbers.
 */


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>

#include <time.h>

#include "ngx_http_modelroute_module.h"
#include "mr_http.h"
#include "mr_ops.h"
#include "mr_metrics.h"
#include "mr_store_ops.h"


#define MR_MET_MAGIC         0x4d524d31      /* "MRM1" */
#define MR_MET_NAME_LEN      129             /* a model's slug, NUL */
#define MR_MET_BUCKETS       20              /* the last one is +Inf */
#define MR_MET_TERMINAL      4               /* COMPLETED .. EXPIRED */
#define MR_MET_OUTCOMES      7
#define MR_MET_DLV           3
#define MR_MET_STAGE_MIN     64

#define MR_MET_END           1
#define MR_MET_ATTEMPT       2


typedef struct {
    ngx_atomic_t              n[MR_MET_BUCKETS];   /* not cumulative */
    ngx_atomic_t              sum;                 /* in the base unit */
} mr_met_hist_t;


typedef struct {
    u_char                    name[MR_MET_NAME_LEN];
    ngx_atomic_t              created;
    ngx_atomic_t              finished[MR_MET_TERMINAL];
} mr_met_model_t;


typedef struct {
    u_char                    name[MR_ROUTE_NAME_LEN + 1];
    ngx_atomic_t              attempts[MR_MET_OUTCOMES];
} mr_met_route_t;


typedef struct {
    ngx_uint_t                magic;
    ngx_uint_t                nmodels;         /* slots; the last: other */
    ngx_uint_t                nroutes;
    ngx_atomic_t              replays;
    ngx_atomic_t              errors[32];
    ngx_atomic_t              deliveries[MR_MET_DLV];
    ngx_atomic_t              commits[2];      /* committed, failed */
    mr_met_hist_t             commit_seconds;
    mr_met_hist_t             commit_ops;
    mr_met_hist_t             added;
    mr_met_hist_t             duration[MR_MET_TERMINAL];
    mr_metrics_worker_t       workers[MR_METRICS_WORKERS];
    /* the model slots, then the route slots */
} mr_met_shm_t;


/*
 * A cycle's view of the zone: where its slots are, and the slot of each
 * configured model and route.  The workers write the zone, the master
 * (root) writes the slot names on a reload: nothing in the zone is taken
 * for a pointer or a count.
 */
typedef struct {
    mr_met_shm_t             *sh;
    mr_met_model_t           *models;
    mr_met_route_t           *routes;
    ngx_uint_t                nmodels;
    ngx_uint_t                nroutes;
    ngx_uint_t               *model_slot;
    ngx_uint_t               *route_slot;
    mr_main_conf_t           *mcf;
} mr_met_ctx_t;


/* a histogram's buckets: upper bounds in the base unit, and as text */
typedef struct {
    const char               *name;
    const char               *help;
    ngx_uint_t                micro;           /* base unit: us -> s */
    ngx_uint_t                n;
    uint64_t                  le[MR_MET_BUCKETS - 1];
    const char               *text[MR_MET_BUCKETS - 1];
} mr_met_hist_def_t;


/* an event of a transaction, added once it is committed */
typedef struct {
    ngx_uint_t                kind;            /* MR_MET_END, _ATTEMPT */
    ngx_uint_t                slot;
    ngx_uint_t                index;           /* status, outcome */
    int64_t                   created_ms;
    int64_t                   answered_us;     /* mr_mono_us(); 0: not an
                                                  attempt's outcome */
} mr_met_event_t;


typedef struct {
    u_char                   *pos;
    u_char                   *last;
} mr_met_buf_t;


static ngx_int_t mr_metrics_init_zone(ngx_shm_zone_t *shm_zone, void *data);
static void mr_metrics_assign(mr_met_ctx_t *ctx);
static ngx_uint_t mr_metrics_slot(u_char *names, size_t size, ngx_uint_t n,
    u_char *name, size_t len);
static ngx_uint_t mr_metrics_model(mr_met_ctx_t *ctx, u_char *slug,
    size_t len);
static void mr_metrics_observe(mr_met_hist_t *h, mr_met_hist_def_t *def,
    uint64_t v);
static void mr_metrics_stage(mr_met_event_t *ev);
static void mr_metrics_apply(mr_met_ctx_t *ctx, mr_met_event_t *ev,
    int64_t now_ms, int64_t mono_us);
static int64_t mr_metrics_now_ms(void);
static ngx_uint_t mr_metrics_index(const char **names, ngx_uint_t n,
    const char *name);
static void mr_metrics_print(mr_met_buf_t *b, const char *fmt, ...);
static void mr_metrics_head(mr_met_buf_t *b, const char *name,
    const char *type, const char *help);
static void mr_metrics_hist(mr_met_buf_t *b, mr_met_hist_t *h,
    mr_met_hist_def_t *def, const char *label, const char *value,
    ngx_uint_t head);
static void mr_metrics_read(mr_store_read_t *rd);
static ngx_int_t mr_metrics_got(ngx_http_request_t *r, mr_store_read_t *rd);
static void mr_metrics_render(mr_met_buf_t *b, mr_met_ctx_t *ctx,
    mr_store_stats_t *ss, mr_route_state_t *rs);


static const char  *mr_met_codes[] = {
    "INPUT_VALIDATION_ERROR", "CONTENT_MODERATION_REJECTED",
    "FILE_NOT_FOUND", "FILE_FORMAT_UNSUPPORTED", "UNAUTHORIZED",
    "INSUFFICIENT_BALANCE", "FORBIDDEN", "ACCOUNT_LIMIT_EXCEEDED",
    "NOT_FOUND", "METHOD_NOT_ALLOWED", "IDEMPOTENCY_KEY_REUSED",
    "EXECUTION_TERMINAL", "EXECUTION_NOT_COMPLETED", "PAYLOAD_TOO_LARGE",
    "UNSUPPORTED_MEDIA_TYPE", "RATE_LIMITED", "GENERATION_FAILED",
    "INTERNAL_ERROR", "MODEL_OVERLOADED", "MODEL_UNAVAILABLE",
    "SERVICE_UNAVAILABLE", "GENERATION_TIMEOUT", "STORAGE_FULL",
    "OTHER"                                     /* the last: any other */
};

#define MR_MET_CODES  (sizeof(mr_met_codes) / sizeof(mr_met_codes[0]))


/* the outcomes an attempt is recorded with (mr_store_dispatch.c) */
static const char  *mr_met_outcomes[MR_MET_OUTCOMES] = {
    "succeeded", "accepted", "failed", "timed_out", "abandoned",
    "called_back", "other"
};

static const char  *mr_met_dlv[MR_MET_DLV] = {
    "delivered", "retrying", "failed"
};

static const char  *mr_met_status[MR_MET_TERMINAL] = {
    "COMPLETED", "FAILED", "CANCELLED", "EXPIRED"
};


static mr_met_hist_def_t  mr_met_commit_seconds = {
    "modelroute_store_commit_duration_seconds",
    "Store commits (a write transaction with its fsync), by duration.",
    1, 13,
    { 250, 500, 1000, 2500, 5000, 10000, 25000, 50000, 100000, 250000,
      500000, 1000000, 2500000 },
    { "0.00025", "0.0005", "0.001", "0.0025", "0.005", "0.01", "0.025",
      "0.05", "0.1", "0.25", "0.5", "1", "2.5" }
};

static mr_met_hist_def_t  mr_met_commit_ops = {
    "modelroute_store_commit_operations",
    "Store commits, by the number of operations they committed "
    "(group commit).",
    0, 11,
    { 1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024 },
    { "1", "2", "4", "8", "16", "32", "64", "128", "256", "512", "1024" }
};

static mr_met_hist_def_t  mr_met_duration = {
    "modelroute_execution_duration_seconds",
    "Executions from created to a terminal status committed, by status.",
    1, 17,
    { 10000, 50000, 100000, 250000, 500000, 1000000, 2500000, 5000000,
      10000000, 30000000, 60000000, 120000000, 300000000, 600000000,
      1800000000, 3600000000ULL, 86400000000ULL },
    { "0.01", "0.05", "0.1", "0.25", "0.5", "1", "2.5", "5", "10", "30",
      "60", "120", "300", "600", "1800", "3600", "86400" }
};

static mr_met_hist_def_t  mr_met_added = {
    "modelroute_execution_added_seconds",
    "Latency the gateway added after a provider's answer: from the "
    "answer to the execution's terminal status committed.",
    1, 18,
    { 250, 500, 750, 1000, 1500, 2000, 3000, 5000, 10000, 25000, 50000,
      100000, 250000, 500000, 1000000, 2500000, 5000000, 10000000 },
    { "0.00025", "0.0005", "0.00075", "0.001", "0.0015", "0.002", "0.003",
      "0.005", "0.01", "0.025", "0.05", "0.1", "0.25", "0.5", "1", "2.5",
      "5", "10" }
};


static mr_met_ctx_t     *mr_met;            /* of the running cycle */

/* the transaction in this process's commit (one at a time) */
static mr_met_event_t   *mr_met_stage_ev;
static ngx_uint_t        mr_met_nstage;
static ngx_uint_t        mr_met_stage_cap;
static int64_t           mr_met_t0;
static ngx_atomic_t      mr_met_commit_ms;  /* its start; 0: none */

static ngx_str_t  mr_met_type =
    ngx_string("text/plain; version=0.0.4; charset=utf-8");


/*
 * The zone: its name carries the number of slots, so that the same name
 * always has the same size and layout (nginx gives a reload the old zone
 * of the same name and size).
 */

ngx_int_t
mr_metrics_zone_add(ngx_conf_t *cf, mr_ops_main_conf_t *ocf)
{
    size_t           size;
    ngx_str_t        name;
    ngx_uint_t       nm, nr;
    mr_met_ctx_t    *ctx;
    mr_main_conf_t  *mcf;

    mcf = ocf->mcf;

    for (nm = 64; nm < 2 * mcf->models.nelts; nm *= 2) { /* void */ }
    for (nr = 32; nr < 2 * mcf->routes.nelts; nr *= 2) { /* void */ }

    ctx = ngx_pcalloc(cf->pool, sizeof(mr_met_ctx_t));
    if (ctx == NULL) {
        return NGX_ERROR;
    }

    ctx->nmodels = nm + 1;
    ctx->nroutes = nr + 1;
    ctx->mcf = mcf;

    ctx->model_slot = ngx_pcalloc(cf->pool, (mcf->models.nelts + 1)
                                            * sizeof(ngx_uint_t));
    ctx->route_slot = ngx_pcalloc(cf->pool, (mcf->routes.nelts + 1)
                                            * sizeof(ngx_uint_t));
    name.data = ngx_pnalloc(cf->pool, 64);

    if (ctx->model_slot == NULL || ctx->route_slot == NULL
        || name.data == NULL)
    {
        return NGX_ERROR;
    }

    name.len = ngx_sprintf(name.data, "modelroute_metrics_%ui_%ui", nm, nr)
               - name.data;

    size = sizeof(mr_met_shm_t) + ctx->nmodels * sizeof(mr_met_model_t)
           + ctx->nroutes * sizeof(mr_met_route_t);

    /* the slab pool's own pages and headers */
    size = ngx_align(size + 4 * ngx_pagesize + size / 8, ngx_pagesize);
    size = ngx_max(size, 8 * ngx_pagesize);

    ocf->met_zone = ngx_shared_memory_add(cf, &name, size,
                                          &ngx_http_modelroute_ops_module);
    if (ocf->met_zone == NULL) {
        return NGX_ERROR;
    }

    ocf->met_zone->init = mr_metrics_init_zone;
    ocf->met_zone->data = ctx;

    return NGX_OK;
}


static ngx_int_t
mr_metrics_init_zone(ngx_shm_zone_t *shm_zone, void *data)
{
    mr_met_ctx_t *octx = data;

    size_t            size;
    mr_met_ctx_t     *ctx;
    mr_met_shm_t     *sh;
    ngx_slab_pool_t  *shpool;

    ctx = shm_zone->data;
    shpool = (ngx_slab_pool_t *) shm_zone->shm.addr;

    if (octx) {

        /*
         * the zone of the running cycle, where the old one put it (a zone
         * of the same name has the same layout): never allocated in again
         */

        if (octx->sh == NULL || octx->sh->magic != MR_MET_MAGIC
            || octx->sh->nmodels != ctx->nmodels
            || octx->sh->nroutes != ctx->nroutes)
        {
            ngx_log_error(NGX_LOG_EMERG, shm_zone->shm.log, 0,
                          "modelroute metrics: the zone \"%V\" is damaged: "
                          "restart nginx", &shm_zone->shm.name);
            return NGX_ERROR;
        }

        ctx->sh = octx->sh;
        mr_metrics_assign(ctx);
        return NGX_OK;
    }

    if (shm_zone->shm.exists) {
        ctx->sh = shpool->data;
        mr_metrics_assign(ctx);
        return NGX_OK;
    }

    size = sizeof(mr_met_shm_t) + ctx->nmodels * sizeof(mr_met_model_t)
           + ctx->nroutes * sizeof(mr_met_route_t);

    sh = ngx_slab_calloc(shpool, size);
    if (sh == NULL) {
        return NGX_ERROR;
    }

    sh->magic = MR_MET_MAGIC;
    sh->nmodels = ctx->nmodels;
    sh->nroutes = ctx->nroutes;

    shpool->data = sh;
    ctx->sh = sh;

    shpool->log_nomem = 0;

    mr_metrics_assign(ctx);

    /* the last slots count what has no slot of its own */

    ngx_cpystrn(ctx->models[ctx->nmodels - 1].name, (u_char *) "(other)",
                MR_MET_NAME_LEN);
    ngx_cpystrn(ctx->routes[ctx->nroutes - 1].name, (u_char *) "(other)",
                MR_ROUTE_NAME_LEN + 1);

    return NGX_OK;
}


/* in the master, before workers of this cycle run: slots by name */

static void
mr_metrics_assign(mr_met_ctx_t *ctx)
{
    ngx_uint_t       i;
    mr_model_t      *m;
    mr_route_t      *rt;
    mr_met_shm_t    *sh;

    sh = ctx->sh;
    m = ctx->mcf->models.elts;
    rt = ctx->mcf->routes.elts;

    ctx->models = (mr_met_model_t *) (sh + 1);
    ctx->routes = (mr_met_route_t *) (ctx->models + ctx->nmodels);

    for (i = 0; i < ctx->mcf->models.nelts; i++) {
        ctx->model_slot[i] = mr_metrics_slot((u_char *) ctx->models,
                                             sizeof(mr_met_model_t),
                                             ctx->nmodels, m[i].slug.data,
                                             m[i].slug.len);
    }

    for (i = 0; i < ctx->mcf->routes.nelts; i++) {
        ctx->route_slot[i] = mr_metrics_slot((u_char *) ctx->routes,
                                             sizeof(mr_met_route_t),
                                             ctx->nroutes, rt[i].name.data,
                                             rt[i].name.len);
    }
}


/* the slot named name, else the first free one, else the last (other) */

static ngx_uint_t
mr_metrics_slot(u_char *names, size_t size, ngx_uint_t n, u_char *name,
    size_t len)
{
    u_char      *s;
    ngx_uint_t   i, free;

    free = n - 1;

    for (i = 0; i < n - 1; i++) {
        s = names + i * size;

        if (s[0] == '\0') {
            free = ngx_min(free, i);
            continue;
        }

        if (ngx_strnlen(s, len + 1) == len && ngx_strncmp(s, name, len) == 0)
        {
            return i;
        }
    }

    if (free < n - 1) {
        ngx_memcpy(names + free * size, name, len);
        names[free * size + len] = '\0';
    }

    return free;
}


void
mr_metrics_init_process(ngx_cycle_t *cycle, mr_ops_main_conf_t *ocf)
{
    mr_met = ocf->met_zone ? ocf->met_zone->data : NULL;

    if (mr_met && mr_met->sh == NULL) {
        mr_met = NULL;
    }
}


mr_metrics_worker_t *
mr_metrics_workers(void)
{
    return mr_met ? mr_met->sh->workers : NULL;
}


int64_t
mr_metrics_commit_age(void)
{
    int64_t  start;

    start = (int64_t) mr_met_commit_ms;

    return start ? ngx_max(mr_local_ms() - start, 0) : 0;
}


/* ---- counting */

static ngx_uint_t
mr_metrics_model(mr_met_ctx_t *ctx, u_char *slug, size_t len)
{
    ngx_str_t    s;
    mr_model_t  *m;

    s.data = slug;
    s.len = len;

    m = mr_model_find(ctx->mcf, &s);

    if (m == NULL) {
        return ctx->nmodels - 1;
    }

    return ctx->model_slot[m - (mr_model_t *) ctx->mcf->models.elts];
}


static ngx_uint_t
mr_metrics_index(const char **names, ngx_uint_t n, const char *name)
{
    ngx_uint_t  i;

    for (i = 0; i < n - 1; i++) {
        if (ngx_strcmp(names[i], name) == 0) {
            return i;
        }
    }

    return n - 1;
}


static void
mr_metrics_observe(mr_met_hist_t *h, mr_met_hist_def_t *def, uint64_t v)
{
    ngx_uint_t  i;

    for (i = 0; i < def->n && v > def->le[i]; i++) { /* void */ }

    (void) ngx_atomic_fetch_add(&h->n[i], 1);
    (void) ngx_atomic_fetch_add(&h->sum, (ngx_atomic_int_t) v);
}


void
mr_metrics_error(const char *code)
{
    if (mr_met == NULL) {
        return;
    }

    (void) ngx_atomic_fetch_add(&mr_met->sh->errors[
        mr_metrics_index(mr_met_codes, MR_MET_CODES, code)], 1);
}


/* after a batch is committed, each operation before its handler runs */

void
mr_metrics_op_done(mr_store_op_t *op)
{
    ngx_uint_t     i;
    mr_met_shm_t  *sh;

    if (mr_met == NULL) {
        return;
    }

    sh = mr_met->sh;

    switch (op->type) {

    case MR_OP_EXEC_CREATE:
        if (op->result == MR_R_REPLAYED) {
            (void) ngx_atomic_fetch_add(&sh->replays, 1);

        } else if (op->result == MR_R_OK) {
            i = mr_metrics_model(mr_met, op->exec.seg[MR_SEG_MODEL].data,
                                 op->exec.seg[MR_SEG_MODEL].len);
            (void) ngx_atomic_fetch_add(&mr_met->models[i].created, 1);
        }

        break;

    case MR_OP_DLV_DONE:
        if (op->result != MR_R_OK) {
            break;     /* a late answer, after the lease passed on */
        }

        /* a delivery that ended unsuccessfully made the next event go */

        i = (op->wh.status_code >= 200 && op->wh.status_code < 300) ? 0
            : op->emitted ? 2 : 1;

        (void) ngx_atomic_fetch_add(&sh->deliveries[i], 1);
        break;

    default:
        break;
    }
}


/* ---- the store's transactions (possibly in a commit thread) */

/* the clock itself (a commit thread has no event loop's cached time) */

static int64_t
mr_metrics_now_ms(void)
{
    struct timespec  ts;

    (void) clock_gettime(CLOCK_REALTIME, &ts);

    return (int64_t) ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}


void
mr_metrics_txn_begin(void)
{
    mr_met_nstage = 0;
    mr_met_t0 = mr_mono_us();
    mr_met_commit_ms = (ngx_atomic_uint_t) mr_metrics_now_ms();
}


/*
 * A transaction rolled back to be made again at once (another batch
 * changed what it read unlocked): neither committed nor failed
 */

void
mr_metrics_txn_discard(void)
{
    mr_met_nstage = 0;
    mr_met_commit_ms = 0;
}


/* a terminal status, written in the transaction (mr_store_emit()) */

void
mr_metrics_exec_event(mr_store_op_t *op, mr_exec_t *exec)
{
    mr_met_event_t  ev;

    if (mr_met == NULL || !mr_status_terminal(exec->rec.status)) {
        return;
    }

    ev.kind = MR_MET_END;
    ev.slot = mr_metrics_model(mr_met, exec->seg[MR_SEG_MODEL].data,
                               exec->seg[MR_SEG_MODEL].len);
    ev.index = ngx_min(exec->rec.status - MR_COMPLETED, MR_MET_TERMINAL - 1);
    ev.created_ms = exec->rec.created_ms;

    ev.answered_us = (op->type == MR_OP_DISP_DONE
                      || op->type == MR_OP_DISP_CALLBACK)
                     ? op->disp.answered_us : 0;

    mr_metrics_stage(&ev);
}


/* an attempt, written in the transaction (mr_store_disp_attempt()) */

void
mr_metrics_attempt(ngx_str_t *route, const char *outcome)
{
    mr_route_t      *rt;
    mr_met_event_t   ev;

    if (mr_met == NULL) {
        return;
    }

    rt = mr_route_find(mr_met->mcf, route->data, route->len);

    ev.kind = MR_MET_ATTEMPT;
    ev.slot = rt ? mr_met->route_slot[rt->index] : mr_met->nroutes - 1;
    ev.index = mr_metrics_index(mr_met_outcomes, MR_MET_OUTCOMES, outcome);
    ev.created_ms = 0;
    ev.answered_us = 0;

    mr_metrics_stage(&ev);
}


static void
mr_metrics_stage(mr_met_event_t *ev)
{
    ngx_uint_t       cap;
    mr_met_event_t  *a;

    if (mr_met_nstage == mr_met_stage_cap) {
        cap = ngx_max(MR_MET_STAGE_MIN, 2 * mr_met_stage_cap);

        a = malloc(cap * sizeof(mr_met_event_t));
        if (a == NULL) {
            /* counted now: a transaction that aborts is then counted */
            mr_metrics_apply(mr_met, ev,
                             mr_metrics_now_ms() + mr_clock_offset,
                             mr_mono_us());
            return;
        }

        if (mr_met_nstage) {
            ngx_memcpy(a, mr_met_stage_ev,
                       mr_met_nstage * sizeof(mr_met_event_t));
        }

        free(mr_met_stage_ev);
        mr_met_stage_ev = a;
        mr_met_stage_cap = cap;
    }

    mr_met_stage_ev[mr_met_nstage++] = *ev;
}


void
mr_metrics_txn_end(int rc, ngx_queue_t *ops, mr_store_op_t *one)
{
    int64_t        now, mono, us;
    ngx_uint_t     i, n;
    ngx_queue_t   *q;
    mr_met_shm_t  *sh;

    mr_met_commit_ms = 0;

    if (mr_met == NULL) {
        mr_met_nstage = 0;
        return;
    }

    sh = mr_met->sh;

    mono = mr_mono_us();
    us = mono - mr_met_t0;
    now = mr_metrics_now_ms() + mr_clock_offset;    /* the store's clock */

    if (rc != 0) {
        (void) ngx_atomic_fetch_add(&sh->commits[1], 1);
        mr_met_nstage = 0;
        return;
    }

    n = 1;

    if (one == NULL) {
        n = 0;

        for (q = ngx_queue_head(ops);
             q != ngx_queue_sentinel(ops);
             q = ngx_queue_next(q))
        {
            n++;
        }
    }

    /*
     * in the reverse order of the exposition's, which then never shows
     * more commits than observations
     */

    mr_metrics_observe(&sh->commit_ops, &mr_met_commit_ops, n);
    mr_metrics_observe(&sh->commit_seconds, &mr_met_commit_seconds,
                       (uint64_t) ngx_max(us, 0));
    (void) ngx_atomic_fetch_add(&sh->commits[0], 1);

    for (i = 0; i < mr_met_nstage; i++) {
        mr_metrics_apply(mr_met, &mr_met_stage_ev[i], now, mono);
    }

    mr_met_nstage = 0;
}


static void
mr_metrics_apply(mr_met_ctx_t *ctx, mr_met_event_t *ev, int64_t now_ms,
    int64_t mono_us)
{
    mr_met_shm_t  *sh;

    sh = ctx->sh;

    if (ev->kind == MR_MET_ATTEMPT) {
        (void) ngx_atomic_fetch_add(&ctx->routes[ev->slot]
                                    .attempts[ev->index], 1);
        return;
    }

    /*
     * the histograms first, as for the commits; the latency added to the
     * microsecond, on a clock that never steps (most answers are committed
     * within one millisecond)
     */

    if (ev->answered_us) {
        mr_metrics_observe(&sh->added, &mr_met_added,
                           (uint64_t) ngx_max(mono_us - ev->answered_us, 0));
    }

    mr_metrics_observe(&sh->duration[ev->index], &mr_met_duration,
                       (uint64_t) ngx_max(now_ms - ev->created_ms, 0) * 1000);

    (void) ngx_atomic_fetch_add(&ctx->models[ev->slot].finished[ev->index],
                                1);
}


/* ---- the exposition */

ngx_int_t
mr_metrics_handler(ngx_http_request_t *r)
{
    mr_main_conf_t   *mcf;
    mr_store_read_t  *rd;

    if (!(r->method & (NGX_HTTP_GET | NGX_HTTP_HEAD))) {
        return mr_http_not_allowed(r, "GET, HEAD");
    }

    if (mr_met == NULL) {
        return mr_http_error(r, MR_E_SERVICE_UNAVAILABLE,
                             "metrics are not available in this process",
                             NULL);
    }

    mcf = mr_met->mcf;

    /* the store's gauges: its statistics and the routes' states */

    rd = mr_http_read_alloc(r, MR_READ_STATS);
    if (rd == NULL) {
        return mr_http_error(r, MR_E_INTERNAL, "out of memory", NULL);
    }

    rd->states = ngx_pcalloc(r->pool, (mcf->routes.nelts + 1)
                                      * sizeof(mr_route_state_t));
    if (rd->states == NULL) {
        return mr_http_error(r, MR_E_INTERNAL, "out of memory", NULL);
    }

    if (mr_http_read(r, rd, mr_metrics_read) == NGX_DONE) {
        return NGX_DONE;
    }

    return mr_metrics_got(r, rd);
}


static void
mr_metrics_read(mr_store_read_t *rd)
{
    ngx_http_request_t  *r;

    r = mr_http_read_resume(rd);
    if (r == NULL) {
        return;
    }

    mr_http_continued(r, mr_metrics_got(r, rd));
}


static ngx_int_t
mr_metrics_got(ngx_http_request_t *r, mr_store_read_t *rd)
{
    size_t             size;
    ngx_str_t          body;
    mr_met_buf_t       b;
    mr_main_conf_t    *mcf;
    mr_route_state_t  *rs;
    mr_store_stats_t   ss;

    if (rd->rc != NGX_OK) {
        return mr_http_read_error(r, rd);
    }

    mcf = mr_met->mcf;
    ss = rd->stats;
    rs = rd->states;

    size = 65536 + mcf->models.nelts * 2048 + mcf->routes.nelts * 4096;

    b.pos = ngx_pnalloc(r->pool, size);
    if (b.pos == NULL) {
        return mr_http_error(r, MR_E_INTERNAL, "out of memory", NULL);
    }

    body.data = b.pos;
    b.last = b.pos + size;

    mr_metrics_render(&b, mr_met, &ss, rs);

    if (b.pos == b.last) {
        return mr_http_error(r, MR_E_INTERNAL, "metrics too large", NULL);
    }

    body.len = b.pos - body.data;

    return mr_ops_send(r, NGX_HTTP_OK, &mr_met_type, &body);
}


static void
mr_metrics_print(mr_met_buf_t *b, const char *fmt, ...)
{
    va_list  args;

    va_start(args, fmt);
    b->pos = ngx_vslprintf(b->pos, b->last, fmt, args);
    va_end(args);
}


static void
mr_metrics_head(mr_met_buf_t *b, const char *name, const char *type,
    const char *help)
{
    mr_metrics_print(b, "# HELP %s %s\n# TYPE %s %s\n", name, help, name,
                     type);
}


/* one histogram series; label="" for none */

static void
mr_metrics_hist(mr_met_buf_t *b, mr_met_hist_t *h, mr_met_hist_def_t *def,
    const char *label, const char *value, ngx_uint_t head)
{
    u_char             lb[64];
    ngx_uint_t         i;
    ngx_atomic_uint_t  total, sum;

    if (head) {
        mr_metrics_head(b, def->name, "histogram", def->help);
    }

    if (label[0]) {
        ngx_sprintf(lb, "%s=\"%s\",%Z", label, value);

    } else {
        lb[0] = '\0';
    }

    total = 0;

    for (i = 0; i <= def->n; i++) {
        total += h->n[i];

        mr_metrics_print(b, "%s_bucket{%sle=\"%s\"} %uA\n", def->name, lb,
                         i < def->n ? def->text[i] : "+Inf", total);
    }

    sum = h->sum;

    if (label[0]) {
        ngx_sprintf(lb, "{%s=\"%s\"}%Z", label, value);
    }

    if (def->micro) {
        mr_metrics_print(b, "%s_sum%s %uA.%06uA\n", def->name, lb,
                         sum / 1000000, sum % 1000000);

    } else {
        mr_metrics_print(b, "%s_sum%s %uA\n", def->name, lb, sum);
    }

    mr_metrics_print(b, "%s_count%s %uA\n", def->name, lb, total);
}


static void
mr_metrics_render(mr_met_buf_t *b, mr_met_ctx_t *ctx, mr_store_stats_t *ss,
    mr_route_state_t *rs)
{
    int64_t          now;
    ngx_uint_t       i, j, s;
    mr_model_t      *m;
    mr_route_t      *rt;
    mr_met_shm_t    *sh;
    const char      *state;
    mr_main_conf_t  *mcf;

    static const char  *breaker[] = { "closed", "half_open", "open" };

    sh = ctx->sh;
    mcf = ctx->mcf;
    m = mcf->models.elts;
    rt = mcf->routes.elts;

    /* executions */

    mr_metrics_head(b, "modelroute_executions_created_total", "counter",
                    "Executions created (committed with their hold), "
                    "by model.");

    /* a model without a slot of its own is counted in (other) */

    for (i = 0; i < mcf->models.nelts; i++) {
        if (ctx->model_slot[i] != ctx->nmodels - 1) {
            mr_metrics_print(b, "modelroute_executions_created_total"
                             "{model=\"%V\"} %uA\n", &m[i].slug,
                             ctx->models[ctx->model_slot[i]].created);
        }
    }

    mr_metrics_print(b, "modelroute_executions_created_total"
                     "{model=\"(other)\"} %uA\n",
                     ctx->models[ctx->nmodels - 1].created);

    mr_metrics_head(b, "modelroute_executions_finished_total", "counter",
                    "Executions that reached a terminal status, by model "
                    "and status.");

    for (i = 0; i <= mcf->models.nelts; i++) {
        s = (i < mcf->models.nelts) ? ctx->model_slot[i] : ctx->nmodels - 1;

        if (i < mcf->models.nelts && s == ctx->nmodels - 1) {
            continue;
        }

        for (j = 0; j < MR_MET_TERMINAL; j++) {
            mr_metrics_print(b, "modelroute_executions_finished_total"
                             "{model=\"%s\",status=\"%s\"} %uA\n",
                             ctx->models[s].name, mr_met_status[j],
                             ctx->models[s].finished[j]);
        }
    }

    mr_metrics_head(b, "modelroute_idempotent_replays_total", "counter",
                    "Creates answered with an existing execution "
                    "(Idempotent-Replayed: true).");
    mr_metrics_print(b, "modelroute_idempotent_replays_total %uA\n",
                     sh->replays);

    mr_metrics_head(b, "modelroute_errors_total", "counter",
                    "Error answers of the API and the admin API, by "
                    "error code.");

    for (i = 0; i < MR_MET_CODES; i++) {
        mr_metrics_print(b, "modelroute_errors_total{code=\"%s\"} %uA\n",
                         mr_met_codes[i], sh->errors[i]);
    }

    for (j = 0; j < MR_MET_TERMINAL; j++) {
        mr_metrics_hist(b, &sh->duration[j], &mr_met_duration, "status",
                        mr_met_status[j], j == 0);
    }

    mr_metrics_hist(b, &sh->added, &mr_met_added, "", "", 1);

    /* holds (the store) */

    mr_metrics_head(b, "modelroute_holds_open", "gauge",
                    "Open balance holds: executions not yet terminal.");
    mr_metrics_print(b, "modelroute_holds_open %uL\n", ss->holds);

    mr_metrics_head(b, "modelroute_holds_open_dollars", "gauge",
                    "The amount of the open balance holds, in US dollars.");
    mr_metrics_print(b, "modelroute_holds_open_dollars %s%L.%06L\n",
                     ss->held < 0 ? "-" : "", ngx_abs(ss->held) / 1000000,
                     ngx_abs(ss->held) % 1000000);

    mr_metrics_head(b, "modelroute_accounts", "gauge",
                    "Accounts in the store.");
    mr_metrics_print(b, "modelroute_accounts %uL\n", ss->accounts);

    mr_metrics_head(b, "modelroute_executions_stored", "gauge",
                    "Executions in the store (until the retention purges "
                    "them).");
    mr_metrics_print(b, "modelroute_executions_stored %uL\n",
                     ss->executions);

    /* dispatch */

    mr_metrics_head(b, "modelroute_dispatch_attempts_total", "counter",
                    "Provider attempts recorded, by route and outcome.");

    for (i = 0; i <= mcf->routes.nelts; i++) {
        s = (i < mcf->routes.nelts) ? ctx->route_slot[i] : ctx->nroutes - 1;

        if (i < mcf->routes.nelts && s == ctx->nroutes - 1) {
            continue;
        }

        for (j = 0; j < MR_MET_OUTCOMES; j++) {
            mr_metrics_print(b, "modelroute_dispatch_attempts_total"
                             "{route=\"%s\",outcome=\"%s\"} %uA\n",
                             ctx->routes[s].name, mr_met_outcomes[j],
                             ctx->routes[s].attempts[j]);
        }
    }

    now = mr_now_ms();

    mr_metrics_head(b, "modelroute_route_breaker", "gauge",
                    "Each route's circuit breaker: 1 for its state.");

    for (i = 0; i < mcf->routes.nelts; i++) {
        state = (rs[i].open_until_ms == 0) ? breaker[0]
                : (rs[i].open_until_ms > now) ? breaker[2] : breaker[1];

        for (j = 0; j < 3; j++) {
            mr_metrics_print(b, "modelroute_route_breaker"
                             "{route=\"%V\",state=\"%s\"} %d\n",
                             &rt[i].name, breaker[j], state == breaker[j]);
        }
    }

    mr_metrics_head(b, "modelroute_route_in_flight", "gauge",
                    "Attempts in flight on each route (all workers).");

    for (i = 0; i < mcf->routes.nelts; i++) {
        mr_metrics_print(b, "modelroute_route_in_flight{route=\"%V\"} %uD\n",
                         &rt[i].name, rs[i].inflight);
    }

    /* webhooks */

    mr_metrics_head(b, "modelroute_webhook_deliveries_total", "counter",
                    "Webhook delivery attempts, by outcome: delivered "
                    "(2xx), retrying (failed, to be sent again), failed "
                    "(the last attempt failed).");

    for (i = 0; i < MR_MET_DLV; i++) {
        mr_metrics_print(b, "modelroute_webhook_deliveries_total"
                         "{outcome=\"%s\"} %uA\n", mr_met_dlv[i],
                         sh->deliveries[i]);
    }

    mr_metrics_head(b, "modelroute_webhook_backlog", "gauge",
                    "Webhook deliveries not finished (waiting, in flight "
                    "or waiting to be retried).");
    mr_metrics_print(b, "modelroute_webhook_backlog %uL\n", ss->backlog);

    /* the store */

    mr_metrics_head(b, "modelroute_store_commits_total", "counter",
                    "Store write transactions, by result.");
    mr_metrics_print(b, "modelroute_store_commits_total{result=\"ok\"} "
                     "%uA\nmodelroute_store_commits_total"
                     "{result=\"failed\"} %uA\n", sh->commits[0],
                     sh->commits[1]);

    mr_metrics_hist(b, &sh->commit_seconds, &mr_met_commit_seconds, "", "",
                    1);
    mr_metrics_hist(b, &sh->commit_ops, &mr_met_commit_ops, "", "", 1);

    mr_metrics_head(b, "modelroute_store_size_bytes", "gauge",
                    "The store's size up to its highest page in use.");
    mr_metrics_print(b, "modelroute_store_size_bytes %uL\n", ss->used_bytes);

    mr_metrics_head(b, "modelroute_store_map_size_bytes", "gauge",
                    "The largest size the store may reach "
                    "(modelroute_store_map_size).");
    mr_metrics_print(b, "modelroute_store_map_size_bytes %uL\n",
                     ss->map_bytes);

    mr_metrics_head(b, "modelroute_store_map_used_ratio", "gauge",
                    "The store's size over its map size; new work is "
                    "refused past 0.875 (less pages freed inside).");
    mr_metrics_print(b, "modelroute_store_map_used_ratio %.6f\n",
                     ss->map_bytes ? (double) ss->used_bytes
                                     / (double) ss->map_bytes
                                   : 0.0);
}
