
/*
 * ModelRoute: the sweeper, a recurring timer in every worker.
 */


#ifndef _MR_SWEEPER_H_INCLUDED_
#define _MR_SWEEPER_H_INCLUDED_


#include <ngx_config.h>
#include <ngx_core.h>

#include "ngx_http_modelroute_module.h"


ngx_int_t mr_sweeper_init_process(ngx_cycle_t *cycle, mr_main_conf_t *mcf);


#endif /* _MR_SWEEPER_H_INCLUDED_ */
