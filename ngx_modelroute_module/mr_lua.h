
/*
 * ModelRoute: the mount point of lua-compat (lua-compat/).
 */


#ifndef _MR_LUA_H_INCLUDED_
#define _MR_LUA_H_INCLUDED_


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>


ngx_int_t mr_lua_handler(ngx_http_request_t *r);


#endif /* _MR_LUA_H_INCLUDED_ */
