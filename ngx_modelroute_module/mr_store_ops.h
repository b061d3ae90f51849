
/*
 * ModelRoute: the store's side of operating it (mr_store_ops.c): the
 * total of the open holds, the accounts' rate-limit overrides, the health
 * heartbeat (MR_OP_OPS operations), and the reads behind the metrics, the
 * accounts list and the recent failed deliveries.
 */


#ifndef _MR_STORE_OPS_H_INCLUDED_
#define _MR_STORE_OPS_H_INCLUDED_


#include <ngx_config.h>
#include <ngx_core.h>

#include "mr_store.h"


/* op->ops.kind of MR_OP_OPS */
#define MR_STORE_OPS_HEARTBEAT   1     /* a write that needs room */
#define MR_STORE_OPS_RL_SET      2     /* op->org, op->ops.value */
#define MR_STORE_OPS_RL_DELETE   3     /* op->org */

#define MR_STORE_OPS_DLV_SCAN    2048  /* recent deliveries looked at */


typedef struct {
    uint64_t                  holds;         /* open executions */
    int64_t                   held;          /* their holds, micro-dollars */
    uint64_t                  backlog;       /* deliveries not finished */
    uint64_t                  accounts;
    uint64_t                  executions;    /* stored */
    uint64_t                  used_bytes;    /* up to the highest page */
    uint64_t                  map_bytes;
} mr_store_stats_t;


ngx_int_t mr_store_ops_stats(mr_store_stats_t *st);
ngx_int_t mr_store_ops_rate_limit(u_char *org, uint64_t *requests);
ngx_int_t mr_store_ops_accounts(ngx_str_t *after, ngx_uint_t limit,
    ngx_array_t *accts, ngx_uint_t *more, ngx_pool_t *pool);
ngx_int_t mr_store_ops_deliveries(ngx_uint_t limit, ngx_array_t *dlvs,
    ngx_uint_t *scanned, ngx_pool_t *pool);


#endif /* _MR_STORE_OPS_H_INCLUDED_ */
