
/*
 * ModelRoute for nginx: the module's configuration and shared types.
 */


#ifndef _NGX_HTTP_MODELROUTE_MODULE_H_INCLUDED_
#define _NGX_HTTP_MODELROUTE_MODULE_H_INCLUDED_


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>


#define MR_DURABILITY_FULL     0
#define MR_DURABILITY_RELAXED  1


typedef struct {
    ngx_str_t                 slug;
    int64_t                   per_request;     /* micro-dollars */
    int64_t                   per_image;
    int64_t                   per_second;
    int64_t                   input_per_mtok;
    int64_t                   output_per_mtok;
    int64_t                   max_tokens;
    ngx_msec_t                timeout;
} mr_model_t;


typedef struct {
    ngx_str_t                 store_path;
    size_t                    map_size;
    ngx_uint_t                durability;
    time_t                    idempotency_ttl;
    time_t                    rotation_grace;
    time_t                    retention;       /* 0: keep forever */
    ngx_msec_t                sweep_interval;
    ngx_array_t               models;          /* mr_model_t */
    ngx_str_t                 thread_pool;
    ngx_array_t              *webhook_retry;   /* ngx_msec_t */
    ngx_msec_t                webhook_timeout;
    time_t                    webhook_max_age;
    ngx_uint_t                webhook_total;
    ngx_uint_t                webhook_per_endpoint;
    ngx_flag_t                webhook_allow_private;
    ngx_uint_t                used;            /* api or admin mounted */
} mr_main_conf_t;


#define MR_HANDLER_NONE   0
#define MR_HANDLER_API    1
#define MR_HANDLER_ADMIN  2
#define MR_HANDLER_LUA    3      /* subrequests from lua-compat */


typedef struct {
    ngx_uint_t                handler;
} mr_loc_conf_t;


extern ngx_module_t  ngx_http_modelroute_module;


mr_main_conf_t *mr_main_conf(void);
mr_model_t *mr_model_find(mr_main_conf_t *mcf, ngx_str_t *slug);


#endif /* _NGX_HTTP_MODELROUTE_MODULE_H_INCLUDED_ */
