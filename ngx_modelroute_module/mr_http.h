
/*
 * ModelRoute: request context, JSON answers and the error envelope.
 */


#ifndef _MR_HTTP_H_INCLUDED_
#define _MR_HTTP_H_INCLUDED_


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>

#include <jansson.h>

#include "mr_util.h"
#include "mr_store.h"
#include "mr_input.h"


/*
 * What every text of the module is encoded with: an execution's stored
 * input (JSON_SORT_KEYS added) and the requests made from it alike, for
 * mr_input.c puts stored strings into requests as they are: neither may
 * escape what the other does not (no JSON_ENSURE_ASCII, no
 * JSON_ESCAPE_SLASH)
 */
#define MR_JSON_FLAGS  (JSON_COMPACT | JSON_ENCODE_ANY)


typedef enum {
    MR_E_INPUT_VALIDATION = 0,
    MR_E_UNAUTHORIZED,
    MR_E_INSUFFICIENT_BALANCE,
    MR_E_FORBIDDEN,
    MR_E_NOT_FOUND,
    MR_E_METHOD_NOT_ALLOWED,
    MR_E_IDEMPOTENCY_KEY_REUSED,
    MR_E_EXECUTION_TERMINAL,
    MR_E_NOT_COMPLETED,
    MR_E_PAYLOAD_TOO_LARGE,
    MR_E_UNSUPPORTED_MEDIA_TYPE,
    MR_E_RATE_LIMITED,
    MR_E_INTERNAL,
    MR_E_SERVICE_UNAVAILABLE,
    MR_E_STORAGE_FULL,
    MR_E_ACCOUNT_LIMIT_EXCEEDED
} mr_error_e;


typedef ngx_int_t (*mr_http_body_pt)(ngx_http_request_t *r);


/* what the request is running, for a read that must wait (mr_http_error) */
#define MR_RUN_NONE     0
#define MR_RUN_CONTENT  1      /* ngx_http_modelroute_handler() */
#define MR_RUN_BODY     2      /* the body handler */


typedef struct {
    u_char                    request_id[MR_REQ_ID_LEN];
    mr_http_body_pt           body_handler;
    ngx_str_t                 body;
    ngx_str_t                 id;             /* id in the path */
    mr_key_t                  key;            /* the caller's key */
    u_char                    secret[80];     /* a new key's secret */
    ngx_str_t                 envelope;       /* for nginx's own errors */
    void                     *data;           /* the dispatch endpoint's */
    ngx_uint_t                ops;            /* of a main request and its
                                                 subrequests, in the store */
    mr_store_waiter_t         waiter;
    ngx_uint_t                waits;
    mr_store_read_t          *auth;           /* the key's read */
    uint64_t                  rl_value;       /* the account's rate-limit */
    unsigned                  rl_own:1;       /* ... override, if set */
    unsigned                  authed:1;       /* ctx->key was read */
    unsigned                  auth_answered:1;
    unsigned                  answered:1;     /* mr_http_send() was used */
    unsigned                  envelope_sent:1;
    unsigned                  run:2;          /* MR_RUN_* */
    unsigned                  parked:2;       /* the run that waits */
    unsigned                  submitted:1;    /* an operation was sent */
    unsigned                  cleanup:1;
    unsigned                  counted:1;      /* by the rate limiter */
    mr_store_op_t             op;
} mr_http_ctx_t;


ngx_int_t mr_http_filter_init(ngx_conf_t *cf);
mr_http_ctx_t *mr_http_ctx(ngx_http_request_t *r);
ngx_int_t mr_http_read_body(ngx_http_request_t *r, mr_http_body_pt handler);
json_t *mr_http_parse_object(ngx_http_request_t *r, mr_input_t *in,
    ngx_int_t *rc);

ngx_int_t mr_http_send(ngx_http_request_t *r, ngx_uint_t status,
    ngx_str_t *body);
ngx_int_t mr_http_send_json(ngx_http_request_t *r, ngx_uint_t status,
    json_t *json);
ngx_int_t mr_http_send_list(ngx_http_request_t *r, ngx_array_t *items,
    json_t *(*item)(void *elt));
ngx_int_t mr_http_error(ngx_http_request_t *r, mr_error_e code,
    const char *message, json_t *details);
ngx_int_t mr_http_op_error(ngx_http_request_t *r, mr_store_op_t *op);
ngx_int_t mr_http_not_allowed(ngx_http_request_t *r, const char *allow);
ngx_int_t mr_http_header(ngx_http_request_t *r, const char *name,
    ngx_str_t *value);
void mr_http_finalize(ngx_http_request_t *r, ngx_int_t rc);
void mr_http_submit(ngx_http_request_t *r, mr_store_op_t *op,
    mr_store_op_handler_pt handler);
ngx_http_request_t *mr_http_resume(mr_store_op_t *op);
mr_store_read_t *mr_http_read_alloc(ngx_http_request_t *r, ngx_uint_t type);
ngx_int_t mr_http_read(ngx_http_request_t *r, mr_store_read_t *rd,
    mr_store_read_handler_pt handler);
ngx_http_request_t *mr_http_read_resume(mr_store_read_t *rd);
void mr_http_continued(ngx_http_request_t *r, ngx_int_t rc);
ngx_int_t mr_http_read_error(ngx_http_request_t *r, mr_store_read_t *rd);
void mr_http_rerun(ngx_http_request_t *r);
ngx_uint_t mr_http_split(u_char *p, u_char *last, ngx_str_t *seg,
    ngx_uint_t max);
ngx_int_t mr_http_arg(ngx_http_request_t *r, const char *name,
    ngx_str_t *value);

json_t *mr_json_detail(json_t *details, const char *field, const char *code,
    const char *message);
ngx_int_t mr_json_dump(ngx_pool_t *pool, json_t *json, ngx_str_t *out);
json_t *mr_json_money(int64_t micros);
json_t *mr_json_time(int64_t ms);


#endif /* _MR_HTTP_H_INCLUDED_ */
