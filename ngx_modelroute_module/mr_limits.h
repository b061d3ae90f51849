
/*
 * ModelRoute: what one account may keep: the per-account limits (stored
 * bytes, live executions, webhook endpoints, API keys) and the input size
 * limit of a model.
 */


#ifndef _MR_LIMITS_H_INCLUDED_
#define _MR_LIMITS_H_INCLUDED_


#include <ngx_config.h>
#include <ngx_core.h>

#include "ngx_http_modelroute_module.h"
#include "mr_store.h"


#define MR_MAX_INPUT_DEFAULT  (1024 * 1024)


extern const char  *mr_limit_names[MR_LIMIT_N];


char *mr_limits_directive(ngx_conf_t *cf, ngx_command_t *cmd, void *conf);
ngx_int_t mr_limits_model_param(ngx_conf_t *cf, mr_model_t *m,
    ngx_str_t *name, ngx_str_t *arg);
void mr_limits_init_conf(mr_main_conf_t *mcf);
int64_t mr_limit_of(mr_main_conf_t *mcf, mr_quota_t *q, ngx_uint_t which);
size_t mr_limit_max_input(mr_model_t *m);
ngx_int_t mr_limit_parse(ngx_uint_t which, int64_t value);


#endif /* _MR_LIMITS_H_INCLUDED_ */
