
/*
 * ModelRoute: webhook delivery (the engine) and the webhook API.
 */


#ifndef _MR_WEBHOOK_H_INCLUDED_
#define _MR_WEBHOOK_H_INCLUDED_


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>

#include "ngx_http_modelroute_module.h"


ngx_int_t mr_webhook_init_process(ngx_cycle_t *cycle, mr_main_conf_t *mcf);
void mr_webhook_exit_process(ngx_cycle_t *cycle);
ngx_uint_t mr_webhook_running(void);

ngx_int_t mr_webhook_api_handler(ngx_http_request_t *r, ngx_str_t *seg,
    ngx_uint_t n);


#endif /* _MR_WEBHOOK_H_INCLUDED_ */
