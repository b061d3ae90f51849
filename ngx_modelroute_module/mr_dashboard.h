
/*
 * ModelRoute: the operators' dashboard, served by the admin location.
 */


#ifndef _MR_DASHBOARD_H_INCLUDED_
#define _MR_DASHBOARD_H_INCLUDED_


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>


ngx_int_t mr_dashboard_handler(ngx_http_request_t *r);


#endif /* _MR_DASHBOARD_H_INCLUDED_ */
