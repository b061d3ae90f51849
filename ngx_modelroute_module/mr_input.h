
/*
 * ModelRoute: an execution's stored input read for a provider's request,
 * its long strings set aside and put back as they are.
 */


#ifndef _MR_INPUT_H_INCLUDED_
#define _MR_INPUT_H_INCLUDED_


#include <ngx_config.h>
#include <ngx_core.h>

#include <jansson.h>


typedef struct {
    ngx_str_t   *strings;       /* the string values set aside, as stored */
    ngx_uint_t   n;
} mr_input_t;


json_t *mr_input_load(ngx_pool_t *pool, ngx_str_t *text, mr_input_t *in);
ngx_int_t mr_input_dump(ngx_pool_t *pool, json_t *json, mr_input_t *in,
    ngx_str_t *out);


#endif /* _MR_INPUT_H_INCLUDED_ */
