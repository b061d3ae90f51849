
/*
 * ModelRoute: operating it.  A second nginx module in the same shared
 * object, ngx_http_modelroute_ops_module, with the operator's directives
 * (modelroute_metrics, modelroute_health, modelroute_rate_limit), the
 * nginx variables, and the admin API's pages and lists.
 */


#ifndef _MR_OPS_H_INCLUDED_
#define _MR_OPS_H_INCLUDED_


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>

#include "ngx_http_modelroute_module.h"


#define MR_OPS_NONE      0
#define MR_OPS_METRICS   1
#define MR_OPS_HEALTH    2


typedef struct {
    ngx_uint_t                rl_requests;     /* 0: no rate limit */
    ngx_msec_t                rl_window;
    size_t                    rl_zone_size;
    ngx_shm_zone_t           *rl_zone;
    ngx_shm_zone_t           *met_zone;
    mr_main_conf_t           *mcf;
} mr_ops_main_conf_t;


typedef struct {
    ngx_uint_t                handler;         /* MR_OPS_* */
} mr_ops_loc_conf_t;


extern ngx_module_t  ngx_http_modelroute_ops_module;


/* of the running cycle; NULL where ModelRoute is not used */
mr_ops_main_conf_t *mr_ops_conf(void);

/* the admin location's paths of this module; NGX_DECLINED: not ours */
ngx_int_t mr_ops_admin(ngx_http_request_t *r, ngx_str_t *seg, ngx_uint_t n);

ngx_int_t mr_ops_send(ngx_http_request_t *r, ngx_uint_t status,
    ngx_str_t *type, ngx_str_t *body);


#endif /* _MR_OPS_H_INCLUDED_ */
