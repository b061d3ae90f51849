
/*
 * ModelRoute: protocol adapters: an execution's input as a provider's
 * request, and a provider's answer as a normalized outcome.
 */


#ifndef _MR_ADAPTER_H_INCLUDED_
#define _MR_ADAPTER_H_INCLUDED_


#include <ngx_config.h>
#include <ngx_core.h>

#include <jansson.h>

#include "ngx_http_modelroute_module.h"
#include "mr_store.h"


typedef struct {
    ngx_uint_t                outcome;       /* MR_OUT_* */
    const char               *code;          /* of a failure */
    ngx_str_t                 message;       /* normalized: the tenant's */
    ngx_str_t                 detail;        /* the provider's own words:
                                                the operator's, for the log */
    ngx_str_t                 result;        /* JSON object */
    ngx_str_t                 job_id;        /* JSON string or empty */
    int64_t                   cost;          /* -1: none reported */
    int64_t                   retry_after_ms;
    ngx_uint_t                breaker;       /* MR_BREAKER_*: what the
                                                failure says of the route */
} mr_adapter_out_t;


ngx_int_t mr_adapter_request(ngx_pool_t *pool, mr_route_t *route,
    mr_model_route_t *mroute, mr_model_t *m, mr_exec_t *exec,
    ngx_str_t *callback, ngx_str_t *token, ngx_str_t *body,
    mr_adapter_out_t *out);
void mr_adapter_response(ngx_pool_t *pool, mr_route_t *route, mr_model_t *m,
    mr_exec_t *exec, ngx_uint_t status, ngx_str_t *body,
    ngx_str_t *retry_after, mr_adapter_out_t *out);
void mr_adapter_callback(ngx_pool_t *pool, mr_model_t *m, mr_exec_t *exec,
    json_t *body, mr_adapter_out_t *out);
void mr_adapter_fail(mr_adapter_out_t *out, ngx_uint_t outcome,
    const char *code, const char *message);
json_t *mr_adapter_json(u_char *data, size_t len, ngx_uint_t *unheld);
ngx_uint_t mr_adapter_log_level(mr_adapter_out_t *out);


#endif /* _MR_ADAPTER_H_INCLUDED_ */
