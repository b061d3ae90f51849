
/*
 * ModelRoute: executions: validation, estimates and the public object.
 */


#ifndef _MR_EXEC_H_INCLUDED_
#define _MR_EXEC_H_INCLUDED_


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>

#include <jansson.h>

#include "mr_store.h"
#include "mr_input.h"


#define MR_IMAGE_TOKENS_DEFAULT  4096


/* the quantities a model is priced by: what an execution may use, or used */
typedef struct {
    int64_t                   images;
    int64_t                   seconds;
    int64_t                   input_tokens;    /* -1: not known */
    int64_t                   output_tokens;   /* -1: not known */
} mr_usage_t;


ngx_int_t mr_exec_prepare(ngx_http_request_t *r, json_t *body,
    mr_input_t *in, mr_exec_t *exec, ngx_str_t *idem_key, json_t *details);
ngx_int_t mr_exec_render(ngx_pool_t *pool, mr_exec_t *exec, ngx_str_t *out);
ngx_int_t mr_exec_render_result(ngx_pool_t *pool, mr_exec_t *exec,
    ngx_str_t *out);
ngx_uint_t mr_exec_status_parse(ngx_str_t *name);
ngx_str_t *mr_exec_status_name(ngx_uint_t status);
int64_t mr_exec_price(int64_t units, int64_t price, int64_t per);
int64_t mr_exec_cost(mr_model_t *m, mr_usage_t *u);
void mr_exec_usage_of(json_t *input, mr_usage_t *u);
int64_t mr_exec_budget(mr_model_t *m, json_t *input);
int64_t mr_exec_image_tokens(mr_model_t *m);


#endif /* _MR_EXEC_H_INCLUDED_ */
