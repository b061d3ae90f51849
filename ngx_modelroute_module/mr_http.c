
/*
 * ModelRoute: request context, JSON answers and the error envelope.
 */


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>

#include "ngx_http_modelroute_module.h"
#include "mr_http.h"
#include "mr_vars.h"
#include "mr_limits.h"


typedef struct {
    ngx_uint_t                status;
    const char               *name;
    ngx_uint_t                retryable;
} mr_error_t;


static ngx_int_t mr_http_header_filter(ngx_http_request_t *r);
static ngx_int_t mr_http_body_filter(ngx_http_request_t *r,
    ngx_chain_t *in);
static void mr_http_body_ready(ngx_http_request_t *r);
static void mr_http_pool_cleanup(void *data);
static ngx_int_t mr_http_body_copy(ngx_http_request_t *r);
static ngx_int_t mr_http_json_type(ngx_http_request_t *r);
static ngx_int_t mr_http_wait(ngx_http_request_t *r, mr_http_ctx_t *ctx);
static void mr_http_wait_done(mr_store_waiter_t *w);
static void mr_http_wait_cleanup(void *data);
static ngx_int_t mr_http_block(ngx_http_request_t *r);
static void mr_http_unblock(ngx_http_request_t *r);


#define MR_HTTP_WAITS     8       /* runs again of one request, at most */
#define MR_JSON_DUMP_BUF  4096    /* mr_json_dump(): on the stack up to this */


static mr_error_t  mr_errors[] = {
    { NGX_HTTP_BAD_REQUEST, "INPUT_VALIDATION_ERROR", 0 },
    { NGX_HTTP_UNAUTHORIZED, "UNAUTHORIZED", 0 },
    { 402, "INSUFFICIENT_BALANCE", 0 },
    { NGX_HTTP_FORBIDDEN, "FORBIDDEN", 0 },
    { NGX_HTTP_NOT_FOUND, "NOT_FOUND", 0 },
    { NGX_HTTP_NOT_ALLOWED, "METHOD_NOT_ALLOWED", 0 },
    { NGX_HTTP_CONFLICT, "IDEMPOTENCY_KEY_REUSED", 0 },
    { NGX_HTTP_CONFLICT, "EXECUTION_TERMINAL", 0 },
    { NGX_HTTP_CONFLICT, "EXECUTION_NOT_COMPLETED", 0 },
    { NGX_HTTP_REQUEST_ENTITY_TOO_LARGE, "PAYLOAD_TOO_LARGE", 0 },
    { NGX_HTTP_UNSUPPORTED_MEDIA_TYPE, "UNSUPPORTED_MEDIA_TYPE", 0 },
    { NGX_HTTP_TOO_MANY_REQUESTS, "RATE_LIMITED", 1 },
    { NGX_HTTP_INTERNAL_SERVER_ERROR, "INTERNAL_ERROR", 0 },
    { NGX_HTTP_SERVICE_UNAVAILABLE, "SERVICE_UNAVAILABLE", 1 },
    { 507, "STORAGE_FULL", 1 },
    { NGX_HTTP_FORBIDDEN, "ACCOUNT_LIMIT_EXCEEDED", 0 }
};


static ngx_str_t  mr_json_type = ngx_string("application/json");


static ngx_http_output_header_filter_pt  mr_next_header_filter;
static ngx_http_output_body_filter_pt    mr_next_body_filter;


/*
 * nginx's own refusals in a ModelRoute location (413 from
 * client_max_body_size, 405, 403 from "deny", 503 from limit_req, ...)
 * get the error envelope instead of nginx's HTML page.
 */

ngx_int_t
mr_http_filter_init(ngx_conf_t *cf)
{
    mr_next_header_filter = ngx_http_top_header_filter;
    ngx_http_top_header_filter = mr_http_header_filter;

    mr_next_body_filter = ngx_http_top_body_filter;
    ngx_http_top_body_filter = mr_http_body_filter;

    return NGX_OK;
}


static ngx_int_t
mr_http_header_filter(ngx_http_request_t *r)
{
    json_t          *env;
    ngx_str_t        rid;
    mr_error_e       code;
    ngx_uint_t       status;
    mr_loc_conf_t   *lcf;
    mr_http_ctx_t   *ctx;

    status = r->headers_out.status;

    if (r != r->main || status < NGX_HTTP_BAD_REQUEST) {
        return mr_next_header_filter(r);
    }

    lcf = ngx_http_get_module_loc_conf(r, ngx_http_modelroute_module);

    if (lcf->handler == MR_HANDLER_NONE) {
        return mr_next_header_filter(r);
    }

    ctx = mr_http_ctx(r);

    if (ctx == NULL || ctx->answered) {
        return mr_next_header_filter(r);
    }

    switch (status) {
    case NGX_HTTP_BAD_REQUEST:
    case NGX_HTTP_REQUEST_TIME_OUT:
        code = MR_E_INPUT_VALIDATION;
        break;
    case NGX_HTTP_UNAUTHORIZED:
        code = MR_E_UNAUTHORIZED;
        break;
    case NGX_HTTP_FORBIDDEN:
        code = MR_E_FORBIDDEN;
        break;
    case NGX_HTTP_NOT_FOUND:
        code = MR_E_NOT_FOUND;
        break;
    case NGX_HTTP_NOT_ALLOWED:
        code = MR_E_METHOD_NOT_ALLOWED;
        break;
    case NGX_HTTP_REQUEST_ENTITY_TOO_LARGE:
        code = MR_E_PAYLOAD_TOO_LARGE;
        break;
    case NGX_HTTP_UNSUPPORTED_MEDIA_TYPE:
        code = MR_E_UNSUPPORTED_MEDIA_TYPE;
        break;
    case NGX_HTTP_TOO_MANY_REQUESTS:
        code = MR_E_RATE_LIMITED;
        break;
    case NGX_HTTP_SERVICE_UNAVAILABLE:
        code = MR_E_SERVICE_UNAVAILABLE;
        break;
    default:
        code = MR_E_INTERNAL;
    }

    mr_vars_error(r, mr_errors[code].name);

    env = json_pack("{s:{s:s, s:s, s:b, s:s#}}", "error",
                    "code", mr_errors[code].name,
                    "message", status < 500 ? "refused by the server"
                                            : "the server failed",
                    "retryable", (int) mr_errors[code].retryable,
                    "request_id", ctx->request_id, (int) MR_REQ_ID_LEN);

    if (env == NULL || mr_json_dump(r->pool, env, &ctx->envelope) != NGX_OK) {
        json_decref(env);
        return mr_next_header_filter(r);
    }

    json_decref(env);

    rid.data = ctx->request_id;
    rid.len = MR_REQ_ID_LEN;

    if (mr_http_header(r, "X-Request-Id", &rid) != NGX_OK) {
        return NGX_ERROR;
    }

    /* a retryable refusal (limit_req's 429 or 503) says when to retry */

    if (code == MR_E_RATE_LIMITED || code == MR_E_SERVICE_UNAVAILABLE) {
        ngx_str_t  ra = ngx_string("1");

        if (mr_http_header(r, "Retry-After", &ra) != NGX_OK) {
            return NGX_ERROR;
        }
    }

    r->headers_out.content_type = mr_json_type;
    r->headers_out.content_type_len = mr_json_type.len;
    r->headers_out.content_type_lowcase = NULL;
    r->headers_out.charset.len = 0;
    r->headers_out.content_length_n = ctx->envelope.len;

    if (r->headers_out.content_length) {
        r->headers_out.content_length->hash = 0;
        r->headers_out.content_length = NULL;
    }

    ngx_http_clear_accept_ranges(r);
    ngx_http_clear_last_modified(r);
    ngx_http_clear_etag(r);

    return mr_next_header_filter(r);
}


static ngx_int_t
mr_http_body_filter(ngx_http_request_t *r, ngx_chain_t *in)
{
    ngx_buf_t      *b;
    ngx_chain_t    *cl, out;
    mr_http_ctx_t  *ctx;

    ctx = ngx_http_get_module_ctx(r, ngx_http_modelroute_module);

    if (ctx == NULL || ctx->envelope.len == 0 || r != r->main) {
        return mr_next_body_filter(r, in);
    }

    /* swallow nginx's page, send the envelope once */

    for (cl = in; cl; cl = cl->next) {
        cl->buf->pos = cl->buf->last;
        cl->buf->file_pos = cl->buf->file_last;
    }

    if (ctx->envelope_sent) {
        /* still pass flushes on: the envelope may wait in the writer */
        return mr_next_body_filter(r, NULL);
    }

    ctx->envelope_sent = 1;

    b = ngx_calloc_buf(r->pool);
    if (b == NULL) {
        return NGX_ERROR;
    }

    b->pos = ctx->envelope.data;
    b->last = ctx->envelope.data + ctx->envelope.len;
    b->memory = 1;
    b->last_buf = 1;
    b->last_in_chain = 1;

    out.buf = b;
    out.next = NULL;

    return mr_next_body_filter(r, &out);
}


mr_http_ctx_t *
mr_http_ctx(ngx_http_request_t *r)
{
    mr_http_ctx_t  *ctx;

    ctx = ngx_http_get_module_ctx(r, ngx_http_modelroute_module);
    if (ctx) {
        return ctx;
    }

    ctx = ngx_pcalloc(r->pool, sizeof(mr_http_ctx_t));
    if (ctx == NULL) {
        return NULL;
    }

    if (mr_random_id(ctx->request_id, "req_", 32) != NGX_OK) {
        return NULL;
    }

    ngx_http_set_ctx(r, ctx, ngx_http_modelroute_module);

    return ctx;
}


/*
 * Reads the body of a POST and calls the handler with ctx->body set.
 * Returns NGX_DONE, or the answer already sent for a refused body.
 */

ngx_int_t
mr_http_read_body(ngx_http_request_t *r, mr_http_body_pt handler)
{
    ngx_int_t       rc;
    mr_http_ctx_t  *ctx;

    ctx = mr_http_ctx(r);
    ctx->body_handler = handler;

    /*
     * an oversized body never gets here: nginx refuses it (413) first;
     * a subrequest (lua-compat) has its parent's headers and a JSON body
     */

    if (r == r->main
        && (r->headers_in.content_length_n > 0 || r->headers_in.chunked)
        && mr_http_json_type(r) != NGX_OK)
    {
        return mr_http_error(r, MR_E_UNSUPPORTED_MEDIA_TYPE,
                             "the body must be application/json", NULL);
    }

    r->request_body_in_single_buf = 1;

    rc = ngx_http_read_client_request_body(r, mr_http_body_ready);

    if (rc >= NGX_HTTP_SPECIAL_RESPONSE) {
        /* 413 for a chunked body, 400 for a bad one: the filter wraps it */
        return rc;
    }

    return NGX_DONE;
}


static void
mr_http_body_ready(ngx_http_request_t *r)
{
    ngx_int_t       rc;
    ngx_uint_t      run;
    mr_http_ctx_t  *ctx;

    ctx = ngx_http_get_module_ctx(r, ngx_http_modelroute_module);

    if (r->request_body == NULL) {
        ngx_str_null(&ctx->body);

    } else if (mr_http_body_copy(r) != NGX_OK) {
        ngx_http_finalize_request(r, mr_http_error(r, MR_E_INTERNAL,
                                  "cannot read the body", NULL));
        return;
    }

    run = ctx->run;
    ctx->run = MR_RUN_BODY;

    rc = ctx->body_handler(r);

    ctx->run = run;

    if (rc != NGX_DONE) {
        ngx_http_finalize_request(r, rc);
    }
}


static ngx_int_t
mr_http_body_copy(ngx_http_request_t *r)
{
    u_char         *p;
    size_t          len;
    ssize_t         n;
    ngx_buf_t      *b;
    ngx_chain_t    *cl;
    mr_http_ctx_t  *ctx;

    ctx = ngx_http_get_module_ctx(r, ngx_http_modelroute_module);

    len = 0;

    for (cl = r->request_body->bufs; cl; cl = cl->next) {
        len += ngx_buf_size(cl->buf);
    }

    p = ngx_pnalloc(r->pool, len + 1);
    if (p == NULL) {
        return NGX_ERROR;
    }

    ctx->body.data = p;

    for (cl = r->request_body->bufs; cl; cl = cl->next) {
        b = cl->buf;

        if (b->in_file) {
            /* a body larger than client_body_buffer_size: a local file */
            n = ngx_read_file(b->file, p, (size_t) (b->file_last
                                                    - b->file_pos),
                              b->file_pos);
            if (n != b->file_last - b->file_pos) {
                return NGX_ERROR;
            }

            p += n;
            continue;
        }

        p = mr_cpymem(p, b->pos, b->last - b->pos);
    }

    ctx->body.len = p - ctx->body.data;
    *p = '\0';

    return NGX_OK;
}


/* "application/json", with any parameters; no Content-Type is accepted */

static ngx_int_t
mr_http_json_type(ngx_http_request_t *r)
{
    u_char     *p, *last;
    ngx_str_t  *t;

    if (r->headers_in.content_type == NULL) {
        return NGX_OK;
    }

    t = &r->headers_in.content_type->value;
    last = t->data + t->len;

    for (p = t->data; p < last && *p != ';' && *p != ' '; p++) {
        /* void */
    }

    if ((size_t) (p - t->data) == mr_json_type.len
        && ngx_strncasecmp(t->data, mr_json_type.data, mr_json_type.len) == 0)
    {
        return NGX_OK;
    }

    return NGX_DECLINED;
}


/*
 * The body, a JSON object, or NULL and the error answered.  With in, the
 * create's: the long strings of its input set aside (mr_input.c); a body
 * refused is parsed again whole for jansson's error of its own text.
 */

json_t *
mr_http_parse_object(ngx_http_request_t *r, mr_input_t *in, ngx_int_t *rc)
{
    json_t         *json, *details;
    json_error_t    err;
    mr_http_ctx_t  *ctx;

    ctx = ngx_http_get_module_ctx(r, ngx_http_modelroute_module);

    if (ctx->body.len == 0) {
        *rc = mr_http_error(r, MR_E_INPUT_VALIDATION,
                            "the body must be a JSON object", NULL);
        return NULL;
    }

    json = in ? mr_input_load_body(r->pool, &ctx->body, in) : NULL;

    if (json == NULL) {
        json = json_loadb((char *) ctx->body.data, ctx->body.len,
                          JSON_REJECT_DUPLICATES, &err);
    }

    if (json == NULL) {
        details = json_array();
        mr_json_detail(details, "body", "MALFORMED_JSON", err.text);
        *rc = mr_http_error(r, MR_E_INPUT_VALIDATION,
                            "the body is not valid JSON", details);
        return NULL;
    }

    if (!json_is_object(json)) {
        json_decref(json);
        *rc = mr_http_error(r, MR_E_INPUT_VALIDATION,
                            "the body must be a JSON object", NULL);
        return NULL;
    }

    return json;
}


ngx_int_t
mr_http_header(ngx_http_request_t *r, const char *name, ngx_str_t *value)
{
    ngx_table_elt_t  *h;

    h = ngx_list_push(&r->headers_out.headers);
    if (h == NULL) {
        return NGX_ERROR;
    }

    h->hash = 1;
#if (nginx_version >= 1023000)
    h->next = NULL;
#endif
    h->key.data = (u_char *) name;
    h->key.len = ngx_strlen(name);
    h->value = *value;

    return NGX_OK;
}


ngx_int_t
mr_http_send(ngx_http_request_t *r, ngx_uint_t status, ngx_str_t *body)
{
    ngx_int_t       rc;
    ngx_buf_t      *b;
    ngx_str_t       rid;
    ngx_chain_t     out;
    mr_http_ctx_t  *ctx;

    ctx = mr_http_ctx(r);
    if (ctx == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    /* an answer before the body was read: drop it, keep the connection */

    if (ngx_http_discard_request_body(r) != NGX_OK) {
        r->keepalive = 0;
    }

    ctx->answered = 1;

    rid.data = ctx->request_id;
    rid.len = MR_REQ_ID_LEN;

    if (mr_http_header(r, "X-Request-Id", &rid) != NGX_OK) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    r->headers_out.status = status;
    r->headers_out.content_type = mr_json_type;
    r->headers_out.content_type_len = mr_json_type.len;
    r->headers_out.content_length_n = body->len + 1;

    rc = ngx_http_send_header(r);

    if (rc == NGX_ERROR || rc > NGX_OK || r->header_only) {
        return rc;
    }

    b = ngx_calloc_buf(r->pool);
    if (b == NULL) {
        return NGX_ERROR;
    }

    /* every body ends with a newline: friendlier in a terminal */

    b->start = ngx_pnalloc(r->pool, body->len + 1);
    if (b->start == NULL) {
        return NGX_ERROR;
    }

    b->pos = b->start;
    b->last = ngx_cpymem(b->pos, body->data, body->len);
    *b->last++ = '\n';
    b->end = b->last;
    b->memory = 1;
    b->last_buf = (r == r->main) ? 1 : 0;
    b->last_in_chain = 1;

    out.buf = b;
    out.next = NULL;

    return ngx_http_output_filter(r, &out);
}


ngx_int_t
mr_http_send_json(ngx_http_request_t *r, ngx_uint_t status, json_t *json)
{
    ngx_str_t  body;

    if (json == NULL || mr_json_dump(r->pool, json, &body) != NGX_OK) {
        json_decref(json);
        return mr_http_error(r, MR_E_INTERNAL, "out of memory", NULL);
    }

    json_decref(json);

    return mr_http_send(r, status, &body);
}


/* {"object": "list", "data": [item(elt) for each element]} */

ngx_int_t
mr_http_send_list(ngx_http_request_t *r, ngx_array_t *items,
    json_t *(*item)(void *elt))
{
    json_t      *data, *j;
    ngx_uint_t   i;

    data = json_array();
    if (data == NULL) {
        return mr_http_error(r, MR_E_INTERNAL, "out of memory", NULL);
    }

    for (i = 0; i < items->nelts; i++) {
        j = item((u_char *) items->elts + i * items->size);

        if (j == NULL || json_array_append_new(data, j) != 0) {
            json_decref(data);
            return mr_http_error(r, MR_E_INTERNAL, "out of memory", NULL);
        }
    }

    return mr_http_send_json(r, NGX_HTTP_OK,
                             json_pack("{s:s, s:o}", "object", "list",
                                       "data", data));
}


/* the envelope; takes the reference to details */

ngx_int_t
mr_http_error(ngx_http_request_t *r, mr_error_e code, const char *message,
    json_t *details)
{
    json_t         *err, *env;
    ngx_str_t       body;
    mr_error_t     *e;
    mr_http_ctx_t  *ctx;

    ctx = mr_http_ctx(r);
    if (ctx == NULL) {
        json_decref(details);
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    e = &mr_errors[code];

    if (code == MR_E_INTERNAL && mr_http_wait(r, ctx) == NGX_OK) {
        json_decref(details);
        return NGX_DONE;
    }

    mr_vars_error(r, e->name);

    if (code == MR_E_INTERNAL) {
        ngx_log_error(NGX_LOG_ERR, r->connection->log, 0,
                      "modelroute: request %*s: %s",
                      (size_t) MR_REQ_ID_LEN, ctx->request_id, message);
        message = "internal error";
    }

    err = json_pack("{s:s, s:s, s:b, s:s#}",
                    "code", e->name, "message", message,
                    "retryable", (int) e->retryable,
                    "request_id", ctx->request_id, (int) MR_REQ_ID_LEN);

    if (err && details && json_array_size(details)) {
        json_object_set(err, "details", details);
    }

    json_decref(details);

    env = err ? json_pack("{s:o}", "error", err) : NULL;

    if (env == NULL || mr_json_dump(r->pool, env, &body) != NGX_OK) {
        json_decref(env);
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    json_decref(env);

    if (e->retryable && e->status == NGX_HTTP_SERVICE_UNAVAILABLE) {
        ngx_str_t  ra = ngx_string("1");

        (void) mr_http_header(r, "Retry-After", &ra);
    }

    return mr_http_send(r, e->status, &body);
}


/* the answer for a store operation that did not succeed */

ngx_int_t
mr_http_op_error(ngx_http_request_t *r, mr_store_op_t *op)
{
    u_char   buf[MR_MONEY_LEN];
    json_t  *details, *d;

    switch (op->result) {

    case MR_R_NOT_FOUND:
        return mr_http_error(r, MR_E_NOT_FOUND, "no such resource", NULL);

    case MR_R_IDEM_REUSED:
        return mr_http_error(r, MR_E_IDEMPOTENCY_KEY_REUSED,
                             "this key was used with a different request",
                             NULL);

    case MR_R_INSUFFICIENT:
        details = json_array();
        d = mr_json_detail(details, "balance", "INSUFFICIENT_BALANCE",
                           "available balance is below the amount required");
        if (d) {
            json_object_set_new(d, "required", json_stringn((char *) buf,
                                mr_money_format(buf, op->required)));
            json_object_set_new(d, "available", json_stringn((char *) buf,
                                mr_money_format(buf, op->available)));
        }

        return mr_http_error(r, MR_E_INSUFFICIENT_BALANCE,
                             "insufficient balance", details);

    case MR_R_TERMINAL:
        return mr_http_error(r, MR_E_EXECUTION_TERMINAL,
                             "the execution has already finished", NULL);

    case MR_R_LIMIT:
        return mr_http_error(r, MR_E_INPUT_VALIDATION,
                             "the amount would take the account past its "
                             "limit", NULL);

    case MR_R_STORAGE_FULL:
        return mr_http_error(r, MR_E_STORAGE_FULL,
                             "the store is full; nothing was accepted",
                             NULL);

    case MR_R_FORBIDDEN:
        return mr_http_error(r, MR_E_FORBIDDEN, op->reason, NULL);

    case MR_R_UNAVAILABLE:
        return mr_http_error(r, MR_E_SERVICE_UNAVAILABLE,
                             "the store cannot be reached; nothing was "
                             "changed; try again", NULL);

    case MR_R_ACCOUNT_LIMIT:
        details = json_array();
        d = mr_json_detail(details, mr_limit_names[op->quota_which],
                           "ACCOUNT_LIMIT_EXCEEDED",
                           "the account reached this limit");
        if (d) {
            json_object_set_new(d, "limit", json_string(
                                    mr_limit_names[op->quota_which]));
            json_object_set_new(d, "value",
                                json_integer((json_int_t) op->quota_limit));
            json_object_set_new(d, "current",
                                json_integer((json_int_t) op->quota_used));
        }

        return mr_http_error(r, MR_E_ACCOUNT_LIMIT_EXCEEDED,
                             "the account reached one of its limits; "
                             "nothing was stored", details);

    default:
        return mr_http_error(r, MR_E_INTERNAL, "store operation failed",
                             NULL);
    }
}


ngx_int_t
mr_http_not_allowed(ngx_http_request_t *r, const char *allow)
{
    ngx_str_t  value;

    value.data = (u_char *) allow;
    value.len = ngx_strlen(allow);

    if (mr_http_header(r, "Allow", &value) != NGX_OK) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    return mr_http_error(r, MR_E_METHOD_NOT_ALLOWED,
                         "method not allowed on this path", NULL);
}


/* ends a request resumed from outside its own connection's events */

void
mr_http_finalize(ngx_http_request_t *r, ngx_int_t rc)
{
    ngx_connection_t  *c;

    c = r->connection;

    ngx_http_finalize_request(r, rc);
    ngx_http_run_posted_requests(c);
}


/*
 * Hands an operation to the store.  The request is "blocked" meanwhile,
 * as for nginx's own thread tasks: if the connection is closed (say, at
 * worker_shutdown_timeout) nginx keeps the request and its pool, which
 * the operation uses, until mr_http_resume().
 */

void
mr_http_submit(ngx_http_request_t *r, mr_store_op_t *op,
    mr_store_op_handler_pt handler)
{
    mr_http_ctx_t       *ctx;
    ngx_pool_cleanup_t  *cln;

    ctx = ngx_http_get_module_ctx(r, ngx_http_modelroute_module);
    if (ctx) {
        ctx->submitted = 1;
    }

    /*
     * a request that cannot be held (no memory for its main request's
     * context) sends nothing to the store: nginx could free its pool
     * while the operation is in flight
     */

    if (mr_http_block(r) != NGX_OK) {
        goto failed;
    }

    /*
     * the operation's results go to a pool of its own: the commit thread
     * must not allocate from r->pool, which lua-compat subrequests share
     * with their main request and its other subrequests
     */

    op->pool = ngx_create_pool(1024, r->connection->log);
    if (op->pool == NULL) {
        goto failed;
    }

    cln = ngx_pool_cleanup_add(r->pool, 0);
    if (cln == NULL) {
        ngx_destroy_pool(op->pool);
        goto failed;
    }

    cln->handler = mr_http_pool_cleanup;
    cln->data = op->pool;

    op->data = r;
    op->handler = handler;

    mr_store_submit(op);

    return;

failed:

    /*
     * as if the store had failed: the handler answers 500 at once, and
     * its mr_http_resume() undoes mr_http_block() if that held the request
     */

    op->pool = r->pool;
    op->data = r;
    op->result = MR_R_INTERNAL;

    handler(op);
}


static void
mr_http_pool_cleanup(void *data)
{
    ngx_destroy_pool(data);
}


/* the operation's request, or NULL if it was terminated meanwhile */

ngx_http_request_t *
mr_http_resume(mr_store_op_t *op)
{
    ngx_http_request_t  *r;

    r = op->data;

    mr_http_unblock(r);

    if (r->connection->error) {
        mr_http_finalize(r, NGX_ERROR);
        return NULL;
    }

    return r;
}


/* a read for a request, in its pool */

mr_store_read_t *
mr_http_read_alloc(ngx_http_request_t *r, ngx_uint_t type)
{
    mr_store_read_t  *rd;

    rd = ngx_pcalloc(r->pool, sizeof(mr_store_read_t));
    if (rd == NULL) {
        return NULL;
    }

    rd->type = type;

    return rd;
}


/*
 * Reads from the store for a request.  NGX_OK: the store answered at once
 * (rd->rc), and the caller goes on with its continuation.  NGX_DONE: the
 * answer comes later; the request is blocked, as for an operation (see
 * mr_http_submit()), and the handler resumes it (mr_http_read_resume()),
 * goes on with the same continuation and ends it (mr_http_continued()).
 * A content handler that gets NGX_DONE returns it: the reference its
 * NGX_DONE releases is taken here.
 */

ngx_int_t
mr_http_read(ngx_http_request_t *r, mr_store_read_t *rd,
    mr_store_read_handler_pt handler)
{
    mr_http_ctx_t  *ctx;

    rd->pool = r->pool;
    rd->data = r;
    rd->handler = handler;

    if (mr_store_read(rd) == NGX_OK) {
        return NGX_OK;
    }

    mr_http_block(r);

    ctx = ngx_http_get_module_ctx(r, ngx_http_modelroute_module);

    if (ctx && ctx->run == MR_RUN_CONTENT) {
        r->main->count++;
    }

    return NGX_DONE;
}


/* the read's request, or NULL if it was terminated meanwhile */

ngx_http_request_t *
mr_http_read_resume(mr_store_read_t *rd)
{
    ngx_http_request_t  *r;

    r = rd->data;

    mr_http_unblock(r);

    if (r->connection->error) {
        mr_http_finalize(r, NGX_ERROR);
        return NULL;
    }

    return r;
}


/*
 * The end of a continuation that ran after an event of the store: its
 * answer, or nothing if it waits for the store again (NGX_DONE)
 */

void
mr_http_continued(ngx_http_request_t *r, ngx_int_t rc)
{
    if (rc == NGX_DONE) {
        return;
    }

    mr_http_finalize(r, rc);
}


/* a read that did not succeed: 503 if the store cannot be reached */

ngx_int_t
mr_http_read_error(ngx_http_request_t *r, mr_store_read_t *rd)
{
    if (rd->rc == NGX_BUSY) {
        return mr_http_error(r, MR_E_SERVICE_UNAVAILABLE,
                             "the store cannot be reached; try again",
                             NULL);
    }

    return mr_http_error(r, MR_E_INTERNAL, "store read failed", NULL);
}


/*
 * A content handler's run that waited for a read it needs first (the
 * caller's key, say) runs again from the start, as after a wait for the
 * map (mr_http_wait_done())
 */

void
mr_http_rerun(ngx_http_request_t *r)
{
    mr_http_finalize(r, ngx_http_modelroute_handler(r));
}


/*
 * r->main->blocked has 8 bits, and a Lua ngx.location.capture_multi()
 * may have hundreds of operations in flight for one main request: the
 * main request counts them, and is blocked once while there are any.
 * Without a context (no memory) nothing is blocked (NGX_ERROR: nothing
 * may be submitted), and nothing is unblocked.
 */

static ngx_int_t
mr_http_block(ngx_http_request_t *r)
{
    mr_http_ctx_t  *mctx;

    mctx = mr_http_ctx(r->main);
    if (mctx == NULL) {
        return NGX_ERROR;
    }

    if (mctx->ops++ == 0) {
        r->main->blocked++;
    }

    return NGX_OK;
}


static void
mr_http_unblock(ngx_http_request_t *r)
{
    mr_http_ctx_t  *mctx;

    mctx = ngx_http_get_module_ctx(r->main, ngx_http_modelroute_module);
    if (mctx == NULL || mctx->ops == 0) {
        return;
    }

    if (--mctx->ops == 0) {
        r->main->blocked--;
    }
}


/*
 * A read that met a map grown by another process while this worker's
 * commit is in flight (see mr_store_wait()) is not answered 500: the
 * request waits for the commit and then runs again from where it began,
 * the content handler or the body handler.  Only a run that has sent no
 * operation to the store and no answer may run again.
 */

static ngx_int_t
mr_http_wait(ngx_http_request_t *r, mr_http_ctx_t *ctx)
{
    ngx_http_cleanup_t  *cln;

    if (ctx->run == MR_RUN_NONE
        || ctx->submitted
        || ctx->answered
        || ctx->waits >= MR_HTTP_WAITS)
    {
        return NGX_DECLINED;
    }

    if (!ctx->cleanup) {
        cln = ngx_http_cleanup_add(r, 0);
        if (cln == NULL) {
            return NGX_DECLINED;
        }

        cln->handler = mr_http_wait_cleanup;
        cln->data = ctx;
        ctx->cleanup = 1;
    }

    ctx->waiter.handler = mr_http_wait_done;
    ctx->waiter.data = r;

    if (mr_store_wait(&ctx->waiter) != NGX_OK) {
        return NGX_DECLINED;
    }

    ctx->waits++;
    ctx->parked = ctx->run;

    ngx_log_error(NGX_LOG_INFO, r->connection->log, 0,
                  "modelroute: request %*s waits for the commit in flight "
                  "(the store's map grew in another process)",
                  (size_t) MR_REQ_ID_LEN, ctx->request_id);

    /*
     * the content handler's NGX_DONE releases a reference: keep one; a
     * body handler keeps the one of ngx_http_read_client_request_body()
     */

    if (ctx->run == MR_RUN_CONTENT) {
        r->main->count++;
    }

    return NGX_OK;
}


static void
mr_http_wait_done(mr_store_waiter_t *w)
{
    ngx_int_t            rc;
    mr_http_ctx_t       *ctx;
    ngx_connection_t    *c;
    ngx_http_request_t  *r;

    r = w->data;
    c = r->connection;
    ctx = ngx_http_get_module_ctx(r, ngx_http_modelroute_module);

    ngx_log_debug1(NGX_LOG_DEBUG_HTTP, c->log, 0,
                   "modelroute: request runs again (%ui)", ctx->waits);

    if (ctx->parked == MR_RUN_BODY) {
        ctx->run = MR_RUN_BODY;
        rc = ctx->body_handler(r);
        ctx->run = MR_RUN_NONE;

        if (rc != NGX_DONE) {
            ngx_http_finalize_request(r, rc);
        }

    } else {
        /* the location's handler: the API's, or metrics' and health's */
        ngx_http_finalize_request(r, r->content_handler(r));
    }

    ngx_http_run_posted_requests(c);
}


static void
mr_http_wait_cleanup(void *data)
{
    mr_http_ctx_t *ctx = data;

    mr_store_wait_cancel(&ctx->waiter);
}


/* "a/b/c" -> segments; max + 1 when there are more than max */

ngx_uint_t
mr_http_split(u_char *p, u_char *last, ngx_str_t *seg, ngx_uint_t max)
{
    u_char      *s;
    ngx_uint_t   n;

    for (n = 0; n <= max; n++) {
        if (n == max) {
            return max + 1;
        }

        s = p;

        while (p < last && *p != '/') {
            p++;
        }

        seg[n].data = s;
        seg[n].len = p - s;

        if (p == last) {
            return n + 1;
        }

        p++;
    }

    return n;
}


/* a query argument, unescaped; NGX_DECLINED if absent */

ngx_int_t
mr_http_arg(ngx_http_request_t *r, const char *name, ngx_str_t *value)
{
    u_char     *dst, *src;
    ngx_str_t   raw;

    if (ngx_http_arg(r, (u_char *) name, ngx_strlen(name), &raw) != NGX_OK) {
        return NGX_DECLINED;
    }

    dst = ngx_pnalloc(r->pool, raw.len + 1);
    if (dst == NULL) {
        return NGX_ERROR;
    }

    value->data = dst;
    src = raw.data;

    ngx_unescape_uri(&dst, &src, raw.len, 0);

    value->len = dst - value->data;

    return NGX_OK;
}


json_t *
mr_json_detail(json_t *details, const char *field, const char *code,
    const char *message)
{
    json_t  *d;

    if (details == NULL) {
        return NULL;
    }

    d = json_pack("{s:s, s:s, s:s}", "field", field, "code", code,
                  "message", message);

    if (d == NULL || json_array_append_new(details, d) != 0) {
        return NULL;
    }

    return d;
}


/*
 * One encoding, whatever the size: into the stack's buffer while it fits
 * (a provider's request, a result, an error body: nearly always), then
 * into pool memory that doubles as the text grows, each outgrown block
 * freed (a large allocation of the pool).  Encoding into the buffer and
 * again into memory of the size jansson said encoded a long text twice.
 */

typedef struct {
    ngx_pool_t  *pool;
    u_char      *buf;                /* the stack's */
    u_char      *start;
    u_char      *last;
    u_char      *end;
} mr_json_out_t;


static int
mr_json_out(const char *buffer, size_t size, void *data)
{
    mr_json_out_t *o = data;

    size_t   len, cap;
    u_char  *p;

    if ((size_t) (o->end - o->last) < size) {
        len = o->last - o->start;
        cap = ngx_max(2 * (size_t) (o->end - o->start), len + size);

        p = ngx_pnalloc(o->pool, cap);
        if (p == NULL) {
            return -1;
        }

        ngx_memcpy(p, o->start, len);

        if (o->start != o->buf) {
            (void) ngx_pfree(o->pool, o->start);    /* a large block */
        }

        o->start = p;
        o->last = p + len;
        o->end = p + cap;
    }

    o->last = ngx_cpymem(o->last, buffer, size);

    return 0;
}


ngx_int_t
mr_json_dump(ngx_pool_t *pool, json_t *json, ngx_str_t *out)
{
    u_char         buf[MR_JSON_DUMP_BUF];
    mr_json_out_t  o;

    o.pool = pool;
    o.buf = buf;
    o.start = buf;
    o.last = buf;
    o.end = buf + sizeof(buf);

    if (json_dump_callback(json, mr_json_out, &o, MR_JSON_FLAGS) != 0) {
        return NGX_ERROR;
    }

    out->len = o.last - o.start;

    if (o.start != buf) {
        out->data = o.start;
        return NGX_OK;
    }

    out->data = ngx_pnalloc(pool, out->len ? out->len : 1);
    if (out->data == NULL) {
        return NGX_ERROR;
    }

    ngx_memcpy(out->data, buf, out->len);

    return NGX_OK;
}


json_t *
mr_json_money(int64_t micros)
{
    u_char  buf[MR_MONEY_LEN];

    return json_stringn((char *) buf, mr_money_format(buf, micros));
}


json_t *
mr_json_time(int64_t ms)
{
    u_char  buf[MR_TIME_LEN];

    if (ms <= 0) {
        return json_null();
    }

    return json_stringn((char *) buf, mr_time_format(buf, ms) - buf);
}
