
/*
 * ModelRoute: libcurl's multi interface on nginx's event loop.
 */


#ifndef _MR_CURL_H_INCLUDED_
#define _MR_CURL_H_INCLUDED_


#include <ngx_config.h>
#include <ngx_core.h>

#include <curl/curl.h>


typedef struct mr_curl_req_s  mr_curl_req_t;

/* the worker exits: the transfer is given up, nothing is to be recorded */
#define MR_CURL_ABANDONED  ((CURLcode) -1)

typedef void (*mr_curl_done_pt)(CURL *easy, CURLcode rc, void *data);


ngx_int_t mr_curl_init_process(ngx_cycle_t *cycle, ngx_uint_t connections);
void mr_curl_exit_process(ngx_cycle_t *cycle);
ngx_int_t mr_curl_start(CURL *easy, mr_curl_done_pt done, void *data);


#endif /* _MR_CURL_H_INCLUDED_ */
