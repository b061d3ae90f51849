
/*
 * ModelRoute: rate limits per account (modelroute_rate_limit), with
 * per-account overrides through the admin API.
 */


#ifndef _MR_RATELIMIT_H_INCLUDED_
#define _MR_RATELIMIT_H_INCLUDED_


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>

#include "mr_ops.h"


char *mr_ratelimit_directive(ngx_conf_t *cf, ngx_command_t *cmd,
    void *conf);
ngx_int_t mr_ratelimit_zone_add(ngx_conf_t *cf, mr_ops_main_conf_t *ocf);

/*
 * An authenticated request (its account in the request's context): the
 * X-RateLimit-* headers, and NGX_DONE within the limit, else the 429
 * answer sent.
 */
ngx_int_t mr_ratelimit_request(ngx_http_request_t *r);

/* GET, PUT, DELETE {admin}/accounts/{org}/rate_limit */
ngx_int_t mr_ratelimit_admin(ngx_http_request_t *r, ngx_str_t *org);


#endif /* _MR_RATELIMIT_H_INCLUDED_ */
