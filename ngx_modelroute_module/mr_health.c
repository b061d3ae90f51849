
/*
 * ModelRoute: the readiness answer.
 *
 * 200 {"status": "ok", ...} when all of these hold, else 503
 * {"status": "unavailable", "reasons": [...], ...}:
 *
 *   - the store takes a write: each answer commits a heartbeat through
 *     the group commit, refused as new executions are when the store is
 *     within 1/8 of its map size (then new work gets 507 STORAGE_FULL);
 *     and no commit of the answering worker has run for 5 s;
 *   - every worker of the node beat in the last 5 s: each worker's timer
 *     writes, every second, into the metrics zone whether its dispatcher
 *     and its webhook sender will run again (mr_dispatch_running(),
 *     mr_webhook_running()); a worker whose event loop is stuck stops
 *     beating.
 */


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>

#include "ngx_http_modelroute_module.h"
#include "mr_http.h"
#include "mr_ops.h"
#include "mr_health.h"
#include "mr_metrics.h"
#include "mr_store_ops.h"
#include "mr_dispatch.h"
#include "mr_webhook.h"


#define MR_HEALTH_BEAT       1000
#define MR_HEALTH_STALE      5000
#define MR_HEALTH_COMMIT     5000


static void mr_health_beat(ngx_event_t *ev);
static ngx_int_t mr_health_submit(ngx_http_request_t *r);
static void mr_health_done(mr_store_op_t *op);
static void mr_health_read(mr_store_read_t *rd);
static ngx_int_t mr_health_got(ngx_http_request_t *r, mr_store_read_t *rd);
static ngx_int_t mr_health_answer(ngx_http_request_t *r, ngx_uint_t stored,
    const char *store_reason, int64_t commit_ms);
static void mr_health_reason(json_t *reasons, const char *fmt, ...);


/* the store's size, read for the answer, and what is known */
typedef struct {
    mr_store_read_t           rd;
    ngx_uint_t                stored;
    const char               *reason;
    int64_t                   commit_ms;
} mr_health_read_t;


static ngx_event_t  mr_health_ev;


ngx_int_t
mr_health_init_process(ngx_cycle_t *cycle, mr_ops_main_conf_t *ocf)
{
    if ((ngx_process != NGX_PROCESS_WORKER
         && ngx_process != NGX_PROCESS_SINGLE)
        || ngx_worker >= MR_METRICS_WORKERS)
    {
        return NGX_OK;
    }

    mr_health_ev.handler = mr_health_beat;
    mr_health_ev.log = cycle->log;
    mr_health_ev.data = &mr_timer_conn;
    mr_health_ev.cancelable = 1;

    mr_health_beat(&mr_health_ev);

    return NGX_OK;
}


/* this worker's slot: alive, and whether its background work will run */

static void
mr_health_beat(ngx_event_t *ev)
{
    mr_metrics_worker_t  *w;

    /* a worker that shuts down leaves its slot to its successor */

    if (ngx_exiting || ngx_quit || ngx_terminate) {
        return;
    }

    w = mr_metrics_workers();

    if (w) {
        w = &w[ngx_worker];
        w->pid = (ngx_atomic_uint_t) ngx_pid;
        w->dispatcher = mr_dispatch_running();
        w->sender = mr_webhook_running();
        w->beat_ms = (ngx_atomic_uint_t) mr_local_ms();
    }

    ngx_add_timer(ev, MR_HEALTH_BEAT);
}


ngx_int_t
mr_health_handler(ngx_http_request_t *r)
{
    u_char          *p;
    int64_t          age;
    u_char           reason[80];

    if (!(r->method & (NGX_HTTP_GET | NGX_HTTP_HEAD))) {
        return mr_http_not_allowed(r, "GET, HEAD");
    }

    age = mr_metrics_commit_age();

    if (age > MR_HEALTH_COMMIT) {
        p = ngx_snprintf(reason, sizeof(reason) - 1,
                         "store: a commit has been running for %L ms", age);
        *p = '\0';

        return mr_health_answer(r, 0, (char *) reason, -1);
    }

    /* as the other answers that wait for a commit: after the body */

    return mr_http_read_body(r, mr_health_submit);
}


static ngx_int_t
mr_health_submit(ngx_http_request_t *r)
{
    mr_http_ctx_t  *ctx;
    mr_store_op_t  *op;

    ctx = ngx_http_get_module_ctx(r, ngx_http_modelroute_module);

    op = &ctx->op;
    op->type = MR_OP_OPS;
    op->ops.kind = MR_STORE_OPS_HEARTBEAT;

    mr_http_submit(r, op, mr_health_done);

    return NGX_DONE;
}


static void
mr_health_done(mr_store_op_t *op)
{
    const char          *why;
    ngx_http_request_t  *r;

    r = mr_http_resume(op);
    if (r == NULL) {
        return;
    }

    why = (op->result == MR_R_OK) ? NULL
          : (op->result == MR_R_STORAGE_FULL)
            ? "store: full: new work is refused (within 1/8 of "
              "modelroute_store_map_size); raise it and reload"
            : "store: the heartbeat's commit failed";

    mr_http_continued(r, mr_health_answer(r, op->result == MR_R_OK, why,
                                          mr_now_ms() - op->now));
}


static void
mr_health_reason(json_t *reasons, const char *fmt, ...)
{
    u_char   *p;
    va_list   args;
    u_char    buf[160];

    va_start(args, fmt);
    p = ngx_vslprintf(buf, buf + sizeof(buf), fmt, args);
    va_end(args);

    json_array_append_new(reasons, json_stringn((char *) buf, p - buf));
}


/* the answer, once the store's size is read (MR_READ_SIZE) */

static ngx_int_t
mr_health_answer(ngx_http_request_t *r, ngx_uint_t stored,
    const char *store_reason, int64_t commit_ms)
{
    u_char            *p;
    mr_health_read_t  *hr;

    hr = ngx_pcalloc(r->pool, sizeof(mr_health_read_t));
    if (hr == NULL) {
        return mr_http_error(r, MR_E_INTERNAL, "out of memory", NULL);
    }

    hr->rd.type = MR_READ_SIZE;
    hr->stored = stored;
    hr->commit_ms = commit_ms;

    if (store_reason) {
        p = ngx_pnalloc(r->pool, ngx_strlen(store_reason) + 1);
        if (p == NULL) {
            return mr_http_error(r, MR_E_INTERNAL, "out of memory", NULL);
        }

        ngx_cpystrn(p, (u_char *) store_reason,
                    ngx_strlen(store_reason) + 1);
        hr->reason = (char *) p;
    }

    if (mr_http_read(r, &hr->rd, mr_health_read) == NGX_DONE) {
        return NGX_DONE;
    }

    return mr_health_got(r, &hr->rd);
}


static void
mr_health_read(mr_store_read_t *rd)
{
    ngx_http_request_t  *r;

    r = mr_http_read_resume(rd);
    if (r == NULL) {
        return;
    }

    mr_http_continued(r, mr_health_got(r, rd));
}


static ngx_int_t
mr_health_got(ngx_http_request_t *r, mr_store_read_t *rd)
{
    json_t               *reasons, *workers, *w, *store;
    int64_t               now, age, commit_ms;
    ngx_uint_t            i, n, ok, stored;
    const char           *store_reason;
    ngx_core_conf_t      *ccf;
    mr_store_stats_t      ss;
    mr_health_read_t     *hr;
    mr_metrics_worker_t  *slot;

    hr = (mr_health_read_t *) rd;
    stored = hr->stored;
    store_reason = hr->reason;
    commit_ms = hr->commit_ms;

    reasons = json_array();
    workers = json_array();

    if (reasons == NULL || workers == NULL) {
        json_decref(reasons);
        json_decref(workers);
        return mr_http_error(r, MR_E_INTERNAL, "out of memory", NULL);
    }

    if (store_reason) {
        json_array_append_new(reasons, json_string(store_reason));
    }

    ss = rd->stats;

    if (rd->rc != NGX_OK) {
        ngx_memzero(&ss, sizeof(mr_store_stats_t));
        json_array_append_new(reasons,
                              json_string(rd->rc == NGX_BUSY
                                          ? "store: cannot be reached"
                                          : "store: cannot be read"));
    }

    store = json_pack("{s:b, s:o, s:I, s:I, s:f}",
                      "writable", (int) stored,
                      "commit_ms", commit_ms >= 0
                                   ? json_integer(commit_ms) : json_null(),
                      "size_bytes", (json_int_t) ss.used_bytes,
                      "map_size_bytes", (json_int_t) ss.map_bytes,
                      "map_used", ss.map_bytes
                                  ? (double) ss.used_bytes
                                    / (double) ss.map_bytes
                                  : 0.0);

    /* the workers of the node */

    ccf = (ngx_core_conf_t *) ngx_get_conf(ngx_cycle->conf_ctx,
                                           ngx_core_module);

    n = (ngx_process == NGX_PROCESS_SINGLE) ? 1 : ccf->worker_processes;
    n = ngx_min(n, MR_METRICS_WORKERS);

    slot = mr_metrics_workers();
    now = mr_local_ms();

    for (i = 0; slot && i < n; i++) {
        age = now - (int64_t) slot[i].beat_ms;

        if (slot[i].pid == 0) {
            mr_health_reason(reasons, "worker %ui: not started", i);

        } else if (age > MR_HEALTH_STALE) {
            mr_health_reason(reasons, "worker %ui: no heartbeat for %L ms "
                             "(its event loop is stuck, or it is gone)",
                             i, age);

        } else {
            if (!slot[i].dispatcher) {
                mr_health_reason(reasons, "worker %ui: the dispatcher is "
                                 "not running", i);
            }

            if (!slot[i].sender) {
                mr_health_reason(reasons, "worker %ui: the webhook sender "
                                 "is not running", i);
            }
        }

        w = json_pack("{s:I, s:I, s:I, s:b, s:b}",
                      "worker", (json_int_t) i,
                      "pid", (json_int_t) slot[i].pid,
                      "heartbeat_age_ms", (json_int_t) ngx_max(age, 0),
                      "dispatcher", (int) slot[i].dispatcher,
                      "webhook_sender", (int) slot[i].sender);

        json_array_append_new(workers, w);
    }

    ok = (json_array_size(reasons) == 0);

    return mr_http_send_json(r, ok ? NGX_HTTP_OK
                                   : NGX_HTTP_SERVICE_UNAVAILABLE,
               json_pack("{s:s, s:o, s:o, s:o, s:o}",
                         "status", ok ? "ok" : "unavailable",
                         "reasons", reasons,
                         "store", store,
                         "workers", workers,
                         "checked_at", mr_json_time(now)));
}
