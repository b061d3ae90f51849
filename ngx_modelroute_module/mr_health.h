
/*
 * ModelRoute: the readiness answer for load balancers (modelroute_health,
 * {admin}/health).
 */


#ifndef _MR_HEALTH_H_INCLUDED_
#define _MR_HEALTH_H_INCLUDED_


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>

#include "mr_ops.h"


ngx_int_t mr_health_init_process(ngx_cycle_t *cycle,
    mr_ops_main_conf_t *ocf);
ngx_int_t mr_health_handler(ngx_http_request_t *r);


#endif /* _MR_HEALTH_H_INCLUDED_ */
