
/*
 * ModelRoute: an execution's input encoded at the create and read for a
 * provider's request with its long strings set aside: their text is used
 * as it is, not decoded and encoded again.
 */


#ifndef _MR_INPUT_H_INCLUDED_
#define _MR_INPUT_H_INCLUDED_


#include <ngx_config.h>
#include <ngx_core.h>

#include <jansson.h>


/* an encoded stand-in's length at most: "\u0000, its number, " */
#define MR_INPUT_STANDIN_MAX  (8 + NGX_INT_T_LEN)


typedef struct {
    ngx_str_t   *strings;       /* the strings set aside: their text */
    ngx_uint_t   n;
    size_t       len;           /* of their texts */
} mr_input_t;


json_t *mr_input_load_body(ngx_pool_t *pool, ngx_str_t *text,
    mr_input_t *in);
json_t *mr_input_load(ngx_pool_t *pool, ngx_str_t *text, mr_input_t *in);
ngx_int_t mr_input_dump(ngx_pool_t *pool, json_t *json, mr_input_t *in,
    ngx_str_t *out);
ngx_int_t mr_input_splice(ngx_pool_t *pool, ngx_str_t *text, mr_input_t *in,
    ngx_str_t *out);


#endif /* _MR_INPUT_H_INCLUDED_ */
