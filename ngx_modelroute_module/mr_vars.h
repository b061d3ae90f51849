
/*
 * ModelRoute: nginx variables for log_format and map, and what the
 * gateway records in a request for them.
 */


#ifndef _MR_VARS_H_INCLUDED_
#define _MR_VARS_H_INCLUDED_


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>

#include "mr_store.h"


ngx_int_t mr_vars_add(ngx_conf_t *cf);

/* an answer about this execution (mr_api.c) */
void mr_vars_exec(ngx_http_request_t *r, mr_exec_t *exec);

/* an error answer with this code (mr_http.c); also counted in metrics */
void mr_vars_error(ngx_http_request_t *r, const char *code);


#endif /* _MR_VARS_H_INCLUDED_ */
