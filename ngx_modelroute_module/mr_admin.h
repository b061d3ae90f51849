
/*
 * ModelRoute: the operator's admin API (accounts, keys, credit).
 */


#ifndef _MR_ADMIN_H_INCLUDED_
#define _MR_ADMIN_H_INCLUDED_


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>

#include <jansson.h>

#include "mr_store.h"


ngx_int_t mr_admin_handler(ngx_http_request_t *r, size_t skip);
json_t *mr_admin_account_json(mr_account_t *acct, mr_quota_t *q);


#endif /* _MR_ADMIN_H_INCLUDED_ */
