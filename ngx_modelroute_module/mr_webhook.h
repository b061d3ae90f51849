
/*
 * ModelRoute: webhook delivery (the engine) and the URL policy.
 */


#ifndef _MR_WEBHOOK_H_INCLUDED_
#define _MR_WEBHOOK_H_INCLUDED_


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>

#include "ngx_http_modelroute_module.h"


ngx_int_t mr_webhook_init_process(ngx_cycle_t *cycle, mr_main_conf_t *mcf);
ngx_uint_t mr_webhook_running(void);

/* NULL if the URL may be registered, else why not */
const char *mr_webhook_url_check(ngx_str_t *url, ngx_uint_t allow_private);
ngx_int_t mr_webhook_addr_blocked(struct sockaddr *sa);

ngx_int_t mr_webhook_api_handler(ngx_http_request_t *r, ngx_str_t *seg,
    ngx_uint_t n);


#endif /* _MR_WEBHOOK_H_INCLUDED_ */
