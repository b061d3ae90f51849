
/*
 * ModelRoute: callbacks of asynchronous providers.
 *
 * A provider that took a job posts its result to
 *   <modelroute_callback_url>/<execution id>?token=<token>
 * where the token is HMAC-SHA256(the store's callback key, the id) in
 * hex; "Authorization: Bearer <token>" works too.  The key lives in the
 * store, so tokens survive restarts and are the same in every worker.
 */


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>

#include <openssl/hmac.h>

#include "mr_callback.h"
#include "mr_http.h"
#include "mr_adapter.h"
#include "mr_store.h"
#include "mr_exec.h"


static void mr_callback_token(u_char *exec_id, u_char *hex);
static void mr_callback_key_read(mr_store_read_t *rd);
static void mr_callback_key_again(ngx_event_t *ev);
static ngx_int_t mr_callback_body(ngx_http_request_t *r);
static void mr_callback_read(mr_store_read_t *rd);
static ngx_int_t mr_callback_got(ngx_http_request_t *r, mr_store_read_t *rd);
static void mr_callback_done(mr_store_op_t *op);


#define MR_CALLBACK_KEY_NONE     0   /* no dispatch in this worker */
#define MR_CALLBACK_KEY_READING  1
#define MR_CALLBACK_KEY_READY    2

#define MR_CALLBACK_KEY_AGAIN    1000  /* ms: its read failed */


static u_char           mr_callback_key[MR_STORE_SECRET_LEN];
static ngx_uint_t       mr_callback_state;
static mr_store_read_t  mr_callback_rd;
static ngx_event_t      mr_callback_ev;


/*
 * The callback key, the store's (every node's): a store that answers at
 * once must have it; one that answers later gives it when it can, and
 * until then the dispatcher waits and callbacks get 503.
 */

ngx_int_t
mr_callback_init_process(ngx_cycle_t *cycle)
{
    mr_callback_state = MR_CALLBACK_KEY_READING;

    mr_callback_ev.handler = mr_callback_key_again;
    mr_callback_ev.log = cycle->log;
    mr_callback_ev.data = &mr_timer_conn;
    mr_callback_ev.cancelable = 1;

    ngx_memzero(&mr_callback_rd, sizeof(mr_store_read_t));
    mr_callback_rd.type = MR_READ_META;
    mr_callback_rd.name = "cbkey";
    mr_callback_rd.handler = mr_callback_key_read;

    if (mr_store_read(&mr_callback_rd) == NGX_AGAIN) {
        return NGX_OK;
    }

    if (mr_callback_rd.rc != NGX_OK) {
        ngx_log_error(NGX_LOG_EMERG, cycle->log, 0,
                      "modelroute: the store has no callback key");
        return NGX_ERROR;
    }

    mr_callback_key_read(&mr_callback_rd);

    return NGX_OK;
}


static void
mr_callback_key_read(mr_store_read_t *rd)
{
    if (rd->rc == NGX_OK) {
        ngx_memcpy(mr_callback_key, rd->raw, MR_STORE_SECRET_LEN);
        mr_callback_state = MR_CALLBACK_KEY_READY;
        return;
    }

    /* logged by the store; again in a while */

    if (!ngx_exiting && !ngx_quit && !ngx_terminate) {
        ngx_add_timer(&mr_callback_ev, MR_CALLBACK_KEY_AGAIN);
    }
}


static void
mr_callback_key_again(ngx_event_t *ev)
{
    mr_callback_rd.rc = NGX_OK;

    if (mr_store_read(&mr_callback_rd) == NGX_OK) {
        mr_callback_key_read(&mr_callback_rd);
    }
}


/* whether callback URLs can be made and callbacks checked */

ngx_uint_t
mr_callback_ready(void)
{
    return mr_callback_state != MR_CALLBACK_KEY_READING;
}


static void
mr_callback_token(u_char *exec_id, u_char *hex)
{
    unsigned int  len;
    u_char        mac[EVP_MAX_MD_SIZE];

    len = 0;

    (void) HMAC(EVP_sha256(), mr_callback_key, sizeof(mr_callback_key),
                exec_id, MR_EXEC_ID_LEN, mac, &len);

    mr_hex(hex, mac, 32);
}


ngx_int_t
mr_callback_url(ngx_pool_t *pool, mr_main_conf_t *mcf, u_char *exec_id,
    ngx_str_t *url)
{
    u_char  *p;
    size_t   len;

    len = mcf->callback_url.len + 1 + MR_EXEC_ID_LEN + sizeof("?token=") - 1
          + MR_CALLBACK_TOKEN_LEN;

    url->data = ngx_pnalloc(pool, len);
    if (url->data == NULL) {
        return NGX_ERROR;
    }

    p = ngx_cpymem(url->data, mcf->callback_url.data, mcf->callback_url.len);

    if (p[-1] != '/') {
        *p++ = '/';
    }

    p = ngx_cpymem(p, exec_id, MR_EXEC_ID_LEN);
    p = ngx_cpymem(p, "?token=", sizeof("?token=") - 1);
    mr_callback_token(exec_id, p);
    p += MR_CALLBACK_TOKEN_LEN;

    url->len = p - url->data;

    return NGX_OK;
}


/* POST /v1/callbacks/<id>: ctx->id is a well-formed execution id */

ngx_int_t
mr_callback_handler(ngx_http_request_t *r)
{
    ngx_str_t       token;
    mr_http_ctx_t  *ctx;
    u_char          expect[MR_CALLBACK_TOKEN_LEN];

    ctx = ngx_http_get_module_ctx(r, ngx_http_modelroute_module);

    if (mr_callback_state == MR_CALLBACK_KEY_NONE) {
        return mr_http_error(r, MR_E_NOT_FOUND, "no such resource", NULL);
    }

    if (mr_callback_state == MR_CALLBACK_KEY_READING) {
        return mr_http_error(r, MR_E_SERVICE_UNAVAILABLE,
                             "the store cannot be reached; try again",
                             NULL);
    }

    if (mr_http_arg(r, "token", &token) != NGX_OK) {
        token.len = 0;

        if (r->headers_in.authorization
            && r->headers_in.authorization->value.len > 7
            && ngx_strncasecmp(r->headers_in.authorization->value.data,
                               (u_char *) "Bearer ", 7) == 0)
        {
            token.data = r->headers_in.authorization->value.data + 7;
            token.len = r->headers_in.authorization->value.len - 7;
        }
    }

    mr_callback_token(ctx->id.data, expect);

    if (token.len != MR_CALLBACK_TOKEN_LEN
        || !mr_memeq_ct(token.data, expect, MR_CALLBACK_TOKEN_LEN))
    {
        ngx_log_error(NGX_LOG_INFO, r->connection->log, 0,
                      "modelroute: a callback for %V with a wrong token",
                      &ctx->id);
        return mr_http_error(r, MR_E_UNAUTHORIZED,
                             "the callback token is missing or wrong",
                             NULL);
    }

    return mr_http_read_body(r, mr_callback_body);
}


static ngx_int_t
mr_callback_body(ngx_http_request_t *r)
{
    json_t            *body;
    ngx_uint_t         unheld;
    mr_http_ctx_t     *ctx;
    mr_store_read_t   *rd;

    ctx = ngx_http_get_module_ctx(r, ngx_http_modelroute_module);

    /* a provider's JSON, read as its answers are */

    body = ctx->body.len ? mr_adapter_json(ctx->body.data, ctx->body.len,
                                           &unheld)
                         : NULL;

    if (!json_is_object(body)) {
        json_decref(body);
        return mr_http_error(r, MR_E_INPUT_VALIDATION,
                             "the body must be a JSON object", NULL);
    }

    json_decref(body);

    /* the model's prices and the input, for the cost of the usage */

    rd = mr_http_read_alloc(r, MR_READ_EXEC);
    if (rd == NULL) {
        return mr_http_error(r, MR_E_INTERNAL, "out of memory", NULL);
    }

    ngx_memcpy(rd->id, ctx->id.data, MR_EXEC_ID_LEN);

    if (mr_http_read(r, rd, mr_callback_read) == NGX_DONE) {
        return NGX_DONE;
    }

    return mr_callback_got(r, rd);
}


static void
mr_callback_read(mr_store_read_t *rd)
{
    ngx_http_request_t  *r;

    r = mr_http_read_resume(rd);
    if (r == NULL) {
        return;
    }

    mr_http_continued(r, mr_callback_got(r, rd));
}


static ngx_int_t
mr_callback_got(ngx_http_request_t *r, mr_store_read_t *rd)
{
    json_t            *body;
    mr_exec_t         *exec;
    ngx_uint_t         unheld;
    mr_model_t        *m;
    mr_http_ctx_t     *ctx;
    mr_store_op_t     *op;
    mr_adapter_out_t   out;

    ctx = ngx_http_get_module_ctx(r, ngx_http_modelroute_module);
    exec = &rd->exec;

    if (rd->rc == NGX_DECLINED) {
        return mr_http_error(r, MR_E_NOT_FOUND, "no such execution", NULL);
    }

    if (rd->rc != NGX_OK) {
        return mr_http_read_error(r, rd);
    }

    m = mr_model_find(mr_main_conf(), &exec->seg[MR_SEG_MODEL]);

    if (m == NULL) {
        return mr_http_error(r, MR_E_NOT_FOUND, "no such execution", NULL);
    }

    /* the body again (checked before the read) */

    body = mr_adapter_json(ctx->body.data, ctx->body.len, &unheld);
    if (body == NULL) {
        return mr_http_error(r, MR_E_INTERNAL, "out of memory", NULL);
    }

    mr_adapter_callback(r->pool, m, exec, body, &out);

    json_decref(body);

    if (out.detail.len) {
        /* the provider's words are the operator's, not the tenant's */
        ngx_log_error(NGX_LOG_ERR, r->connection->log, 0,
                      "modelroute: %V: the provider called back a "
                      "failure: \"%V\"", &ctx->id, &out.detail);
    }

    op = &ctx->op;
    op->type = MR_OP_DISP_CALLBACK;
    ngx_memcpy(op->disp.exec_id, ctx->id.data, MR_EXEC_ID_LEN);
    op->disp.outcome = out.outcome;
    op->disp.code = out.code;
    op->disp.message = out.message;
    op->disp.result = out.result;
    op->disp.cost = out.cost;
    op->disp.ended_ms = mr_now_ms();

    mr_http_submit(r, op, mr_callback_done);

    return NGX_DONE;
}


static void
mr_callback_done(mr_store_op_t *op)
{
    ngx_int_t            rc;
    ngx_str_t            out;
    ngx_http_request_t  *r;

    r = mr_http_resume(op);
    if (r == NULL) {
        return;
    }

    switch (op->result) {

    case MR_R_OK:
    case MR_R_NOOP:
        if (op->result == MR_R_NOOP) {
            ngx_log_error(NGX_LOG_INFO, r->connection->log, 0,
                          "modelroute: a callback for %*s, which is "
                          "already final, was dropped",
                          (size_t) MR_EXEC_ID_LEN, op->disp.exec_id);
        }

        out.data = ngx_pnalloc(r->pool, 96);
        if (out.data == NULL) {
            rc = NGX_HTTP_INTERNAL_SERVER_ERROR;
            break;
        }

        out.len = ngx_sprintf(out.data,
                              "{\"received\":true,\"duplicate\":%s,"
                              "\"status\":\"%V\"}",
                              op->result == MR_R_NOOP ? "true" : "false",
                              mr_exec_status_name(op->disp.status))
                  - out.data;

        rc = mr_http_send(r, NGX_HTTP_OK, &out);
        break;

    case MR_R_TERMINAL:
        rc = mr_http_error(r, MR_E_EXECUTION_TERMINAL,
                           "the execution is not waiting for a callback",
                           NULL);
        break;

    default:
        rc = mr_http_op_error(r, op);
    }

    mr_http_finalize(r, rc);
}
