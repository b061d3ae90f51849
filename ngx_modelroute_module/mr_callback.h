
/*
 * ModelRoute: callbacks of asynchronous providers.
 */


#ifndef _MR_CALLBACK_H_INCLUDED_
#define _MR_CALLBACK_H_INCLUDED_


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>

#include "ngx_http_modelroute_module.h"


/* "<attempt>.<64 hex>" at most */
#define MR_CALLBACK_TOKEN_LEN  (NGX_INT_T_LEN + 1 + 64)


ngx_int_t mr_callback_init_process(ngx_cycle_t *cycle);
ngx_uint_t mr_callback_ready(void);
ngx_int_t mr_callback_url(ngx_pool_t *pool, mr_main_conf_t *mcf,
    u_char *exec_id, ngx_str_t *url);
ngx_int_t mr_callback_token(ngx_pool_t *pool, u_char *exec_id,
    ngx_uint_t attempt, ngx_str_t *token);
ngx_int_t mr_callback_handler(ngx_http_request_t *r);


#endif /* _MR_CALLBACK_H_INCLUDED_ */
