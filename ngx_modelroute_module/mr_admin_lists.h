
/*
 * ModelRoute: the admin API's lists for operators: the accounts, and the
 * recent failed webhook deliveries of every account.
 */


#ifndef _MR_ADMIN_LISTS_H_INCLUDED_
#define _MR_ADMIN_LISTS_H_INCLUDED_


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>


ngx_int_t mr_admin_lists_accounts(ngx_http_request_t *r);
ngx_int_t mr_admin_lists_deliveries(ngx_http_request_t *r);


#endif /* _MR_ADMIN_LISTS_H_INCLUDED_ */
