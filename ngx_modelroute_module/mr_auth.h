
/*
 * ModelRoute: API keys.
 *
 * A key is "sk_" + 64 lowercase hex + "_" + the CRC-32 (IEEE) of the 64
 * hex characters as 8 lowercase hex.  Only its SHA-256 is stored.
 */


#ifndef _MR_AUTH_H_INCLUDED_
#define _MR_AUTH_H_INCLUDED_


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>

#include "mr_store.h"


#define MR_SECRET_LEN  76


ngx_int_t mr_auth_generate(u_char *secret, mr_key_t *key);
ngx_int_t mr_auth_request(ngx_http_request_t *r, ngx_uint_t permission,
    ngx_int_t *rc);
ngx_int_t mr_auth_permit(ngx_http_request_t *r, ngx_uint_t permission,
    ngx_int_t *rc);
const char *mr_auth_permission_name(ngx_uint_t permission);


#endif /* _MR_AUTH_H_INCLUDED_ */
