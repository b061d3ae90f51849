
/*
 * ModelRoute: Prometheus metrics.
 *
 * Counters and histograms live in a shared memory zone of the node
 * (atomics), so every worker adds to the same numbers and a scrape of any
 * worker sees the node's totals; gauges that are store state (open holds,
 * webhook backlog, breakers, slots in flight, store size) are read from
 * the store when scraped.  Events that the store commits are counted only
 * once their transaction is committed: the store's hooks stage them
 * (mr_metrics_txn_begin/_end, which may run in a commit thread).
 */


#ifndef _MR_METRICS_H_INCLUDED_
#define _MR_METRICS_H_INCLUDED_


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>

#include "mr_store.h"
#include "mr_ops.h"


#define MR_METRICS_WORKERS   1024


/* a worker's health, written by its own timer (mr_health.c) */
typedef struct {
    ngx_atomic_t              pid;
    ngx_atomic_t              beat_ms;         /* its last heartbeat */
    ngx_atomic_t              dispatcher;      /* 1: running */
    ngx_atomic_t              sender;
} mr_metrics_worker_t;


ngx_int_t mr_metrics_zone_add(ngx_conf_t *cf, mr_ops_main_conf_t *ocf);
void mr_metrics_init_process(ngx_cycle_t *cycle, mr_ops_main_conf_t *ocf);
ngx_int_t mr_metrics_handler(ngx_http_request_t *r);

/* the store's hooks: in the commit's thread */
void mr_metrics_txn_begin(void);
void mr_metrics_txn_discard(void);
void mr_metrics_txn_end(int rc, ngx_queue_t *ops, mr_store_op_t *one);
void mr_metrics_exec_event(mr_store_op_t *op, mr_exec_t *exec);
void mr_metrics_attempt(ngx_str_t *route, const char *outcome);

/* on the event loop */
void mr_metrics_op_done(mr_store_op_t *op);
void mr_metrics_error(const char *code);

/* how long this worker's commit in flight has run (ms); 0: none */
int64_t mr_metrics_commit_age(void);

/* the node's worker slots (MR_METRICS_WORKERS), NULL without the zone */
mr_metrics_worker_t *mr_metrics_workers(void);


#endif /* _MR_METRICS_H_INCLUDED_ */
