
/*
 * ModelRoute: routes and the dispatch server in the configuration.
 */


#ifndef _MR_ROUTE_H_INCLUDED_
#define _MR_ROUTE_H_INCLUDED_


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>

#include "ngx_http_modelroute_module.h"


char *mr_route_directive(ngx_conf_t *cf, ngx_command_t *cmd, void *conf);
char *mr_route_dispatch_directive(ngx_conf_t *cf, ngx_command_t *cmd,
    void *conf);
ngx_int_t mr_route_model_param(ngx_conf_t *cf, mr_model_t *m, ngx_str_t *name,
    ngx_str_t *arg);
char *mr_route_resolve(ngx_conf_t *cf, mr_main_conf_t *mcf);
ngx_int_t mr_route_listen(ngx_conf_t *cf, mr_main_conf_t *mcf);
const char *mr_route_protocol_name(ngx_uint_t protocol);


#endif /* _MR_ROUTE_H_INCLUDED_ */
