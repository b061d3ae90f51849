
/*
 * ModelRoute: the resolver of webhook host names (configuration).
 */


#ifndef _MR_RESOLVE_H_INCLUDED_
#define _MR_RESOLVE_H_INCLUDED_


#include <ngx_config.h>
#include <ngx_core.h>

#include "ngx_http_modelroute_module.h"


char *mr_resolve_directive(ngx_conf_t *cf, ngx_command_t *cmd, void *conf);
char *mr_resolve_init_conf(ngx_conf_t *cf, mr_main_conf_t *mcf);


#endif /* _MR_RESOLVE_H_INCLUDED_ */
