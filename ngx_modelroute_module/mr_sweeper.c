
/*
 * ModelRoute: the sweeper.
 *
 * Every worker runs it on a cancelable timer; each run is one store
 * operation (MR_OP_SWEEP), committed apart from the client requests'
 * transactions (a batch of its own, on both stores): it expires
 * executions past their deadline (index ordered by deadline, no scan),
 * frees idempotency keys past their lifetime and purges terminal
 * executions past the retention, at most MR_SWEEP_LIMIT of each per run.
 * When a limit was reached the next run comes at once, so a backlog
 * drains in small transactions that leave room for client requests.
 */


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_event.h>

#include "ngx_http_modelroute_module.h"
#include "mr_store.h"
#include "mr_sweeper.h"


#define MR_SWEEP_LIMIT  256
#define MR_SWEEP_AGAIN  1          /* ms, when a backlog remains */


static void mr_sweeper_handler(ngx_event_t *ev);
static void mr_sweeper_done(mr_store_op_t *op);


static ngx_event_t     mr_sweeper_ev;
static mr_store_op_t   mr_sweeper_op;
static mr_main_conf_t *mr_sweeper_mcf;


ngx_int_t
mr_sweeper_init_process(ngx_cycle_t *cycle, mr_main_conf_t *mcf)
{
    mr_sweeper_mcf = mcf;

    mr_sweeper_ev.handler = mr_sweeper_handler;
    mr_sweeper_ev.log = cycle->log;
    mr_sweeper_ev.data = &mr_sweeper_op;
    mr_sweeper_ev.cancelable = 1;

    /* workers start apart, not all at the same instant */

    ngx_add_timer(&mr_sweeper_ev,
                  mcf->sweep_interval / 2 + ngx_random() % mcf->sweep_interval);

    return NGX_OK;
}


static void
mr_sweeper_handler(ngx_event_t *ev)
{
    ngx_uint_t      i;
    ngx_msec_t     *ms, step;
    mr_store_op_t  *op;

    if (ngx_exiting || ngx_quit || ngx_terminate) {
        return;
    }

    op = &mr_sweeper_op;

    ngx_memzero(op, sizeof(mr_store_op_t));

    op->type = MR_OP_SWEEP;
    op->handler = mr_sweeper_done;
    op->limit = MR_SWEEP_LIMIT;
    op->idem_ttl_ms = (int64_t) mr_sweeper_mcf->idempotency_ttl * 1000;
    op->retention_ms = (int64_t) mr_sweeper_mcf->retention * 1000;
    /* the last attempt of a delivery: after its max age, one more step */

    ms = mr_sweeper_mcf->webhook_retry->elts;
    step = 0;

    for (i = 0; i < mr_sweeper_mcf->webhook_retry->nelts; i++) {
        step = ngx_max(step, ms[i]);
    }

    op->wh.max_age_ms = (int64_t) mr_sweeper_mcf->webhook_max_age * 1000
                        + (int64_t) step
                        + (int64_t) mr_sweeper_mcf->webhook_timeout;

    mr_store_submit(op);
}


static void
mr_sweeper_done(mr_store_op_t *op)
{
    ngx_log_debug4(NGX_LOG_DEBUG_HTTP, mr_sweeper_ev.log, 0,
                   "modelroute sweeper: %ui expired, %ui purged, "
                   "%ui read by the retention, more:%ui",
                   op->expired, op->purged, op->scanned, op->more);

    if (op->result == MR_R_UNAVAILABLE) {
        ngx_log_error(NGX_LOG_INFO, mr_sweeper_ev.log, 0,
                      "modelroute sweeper: the store cannot be reached; "
                      "the sweep runs again in %M ms",
                      mr_sweeper_mcf->sweep_interval);
        op->more = 0;

    } else if (op->result != MR_R_OK) {
        ngx_log_error(NGX_LOG_WARN, mr_sweeper_ev.log, 0,
                      "modelroute sweeper: the sweep was not committed; "
                      "it runs again in %M ms", mr_sweeper_mcf->sweep_interval);
        op->more = 0;

    } else if (op->failed) {
        ngx_log_error(NGX_LOG_WARN, mr_sweeper_ev.log, 0,
                      "modelroute sweeper: %ui expired, %ui purged; %ui "
                      "steps did not fit in the store and wait",
                      op->expired, op->purged, op->failed);

    } else if (op->expired || op->purged) {
        ngx_log_error(NGX_LOG_INFO, mr_sweeper_ev.log, 0,
                      "modelroute sweeper: %ui expired, %ui purged",
                      op->expired, op->purged);
    }

    if (ngx_exiting || ngx_quit || ngx_terminate) {
        return;
    }

    ngx_add_timer(&mr_sweeper_ev, op->more ? MR_SWEEP_AGAIN
                                           : mr_sweeper_mcf->sweep_interval);
}
