
/*
 * ModelRoute: the mount point of lua-compat.
 *
 *   location /_modelroute/ { internal; modelroute_lua; }
 *
 * serves the public API under /_modelroute/v1/... and the admin API under
 * /_modelroute/admin/..., to subrequests only (ngx.location.capture from
 * the resty.modelroute library).  The account is the subrequest's
 * "mr_account" argument: the Lua code's own auth layer has chosen it.
 * A client request to this location is answered 404, even without
 * "internal".
 */


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>

#include "ngx_http_modelroute_module.h"
#include "mr_http.h"
#include "mr_api.h"
#include "mr_admin.h"
#include "mr_lua.h"


ngx_int_t
mr_lua_handler(ngx_http_request_t *r)
{
    u_char                    *p, *last;
    ngx_http_core_loc_conf_t  *clcf;

    if (r == r->main) {
        return mr_http_error(r, MR_E_NOT_FOUND, "no such path", NULL);
    }

    clcf = ngx_http_get_module_loc_conf(r, ngx_http_core_module);

    p = r->uri.data;
    last = r->uri.data + r->uri.len;

    /* keep the slash that ends the prefix: "/v1/..." or "/admin/..." */

    if (clcf->name.len > 1
        && r->uri.len >= clcf->name.len
        && ngx_strncmp(p, clcf->name.data, clcf->name.len) == 0)
    {
        p += clcf->name.len - (clcf->name.data[clcf->name.len - 1] == '/');
    }

    if (last - p >= (ssize_t) sizeof("/admin/") - 1
        && ngx_strncmp(p, "/admin/", sizeof("/admin/") - 1) == 0)
    {
        return mr_admin_handler(r, p + sizeof("/admin/") - 1 - r->uri.data);
    }

    return mr_api_handler(r, p, last);
}
