
/*
 * ModelRoute: the dispatcher and the dispatch endpoint.
 */


#ifndef _MR_DISPATCH_H_INCLUDED_
#define _MR_DISPATCH_H_INCLUDED_


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>

#include "ngx_http_modelroute_module.h"


ngx_int_t mr_dispatch_postconfiguration(ngx_conf_t *cf,
    mr_main_conf_t *mcf);
ngx_int_t mr_dispatch_init_process(ngx_cycle_t *cycle, mr_main_conf_t *mcf);
ngx_uint_t mr_dispatch_running(void);


#endif /* _MR_DISPATCH_H_INCLUDED_ */
