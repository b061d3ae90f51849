
/*
 * ModelRoute: the store's side of operating it (mr_store_ops.c): the
 * total of the open holds, the accounts' rate-limit overrides, the health
 * heartbeat (MR_OP_OPS operations); the reads behind the metrics, the
 * accounts list and the recent failed deliveries are mr_store_read()'s.
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


#endif /* _MR_STORE_OPS_H_INCLUDED_ */
