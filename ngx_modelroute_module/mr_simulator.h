
/*
 * ModelRoute: the simulated provider.
 */


#ifndef _MR_SIMULATOR_H_INCLUDED_
#define _MR_SIMULATOR_H_INCLUDED_


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>

#include "ngx_http_modelroute_module.h"


char *mr_sim_directive(ngx_conf_t *cf, ngx_command_t *cmd, void *conf);
ngx_int_t mr_sim_handler(ngx_http_request_t *r);


#endif /* _MR_SIMULATOR_H_INCLUDED_ */
