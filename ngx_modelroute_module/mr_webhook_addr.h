
/*
 * ModelRoute: where webhooks may go (the URL and address rules).
 */


#ifndef _MR_WEBHOOK_ADDR_H_INCLUDED_
#define _MR_WEBHOOK_ADDR_H_INCLUDED_


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>

#include "ngx_http_modelroute_module.h"


/* NULL if the URL may be registered, else why not */
const char *mr_webhook_url_check(ngx_str_t *url, ngx_uint_t allow_private);

/* loopback, private, link-local and the like */
ngx_int_t mr_webhook_addr_blocked(struct sockaddr *sa);

/* NULL if a webhook may connect to the address (with its port), else why */
const char *mr_webhook_addr_refused(mr_main_conf_t *mcf,
    struct sockaddr *sa);

/* configuration: the admin API's servers, then their listen addresses */
ngx_int_t mr_webhook_addr_admin(ngx_conf_t *cf, mr_main_conf_t *mcf);
ngx_int_t mr_webhook_addr_postconfiguration(ngx_conf_t *cf,
    mr_main_conf_t *mcf);


#endif /* _MR_WEBHOOK_ADDR_H_INCLUDED_ */
