
/*
 * ModelRoute: the public API (/v1/...).
 */


#ifndef _MR_API_H_INCLUDED_
#define _MR_API_H_INCLUDED_


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>


ngx_int_t mr_api_handler(ngx_http_request_t *r, u_char *path,
    u_char *last);


#endif /* _MR_API_H_INCLUDED_ */
