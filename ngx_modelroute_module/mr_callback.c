
/*
 * ModelRoute: callbacks of asynchronous providers.
 *
 * An attempt on an asynchronous route sends the provider a callback_url,
 *   <modelroute_callback_url>/<execution id>
 * with no secret in it, and a callback_token, "<attempt>.<64 hex>": the
 * attempt's number (from 0) and HMAC-SHA256(the store's callback key,
 * "modelroute-callback" NUL <execution id> NUL <attempt>) in hex.  The
 * provider posts the result to the URL with "Authorization: Bearer
 * <token>"; a token in the URL's query is refused, so that no token is
 * ever worth keeping out of an access log.  A token is good for the
 * attempt it was made for, once that attempt was made (a token of an
 * attempt not made yet is refused however it was had), and until the
 * execution's expires_at.  The key lives in the store, so tokens survive
 * restarts and are the same in every worker.
 */


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>

#include "mr_callback.h"
#include "mr_http.h"
#include "mr_adapter.h"
#include "mr_store.h"
#include "mr_exec.h"


#define MR_CALLBACK_MAC_LEN  64          /* hex */
#define MR_CALLBACK_CONTEXT  "modelroute-callback"


static void mr_callback_key_read(mr_store_read_t *rd);
static void mr_callback_key_again(ngx_event_t *ev);
static ngx_int_t mr_callback_mac(u_char *exec_id, ngx_uint_t attempt,
    u_char *hex);
static ngx_int_t mr_callback_parse(ngx_str_t *token, ngx_uint_t *attempt,
    u_char **mac);
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


static ngx_int_t
mr_callback_mac(u_char *exec_id, ngx_uint_t attempt, u_char *hex)
{
    u_char     *p;
    ngx_str_t   part;
    u_char      msg[sizeof(MR_CALLBACK_CONTEXT) + MR_EXEC_ID_LEN + 1
                    + NGX_INT_T_LEN];
    u_char      mac[MR_SHA256_LEN];

    p = ngx_cpymem(msg, MR_CALLBACK_CONTEXT, sizeof(MR_CALLBACK_CONTEXT));
    p = ngx_cpymem(p, exec_id, MR_EXEC_ID_LEN);
    *p++ = '\0';
    p = ngx_sprintf(p, "%ui", attempt);

    part.data = msg;
    part.len = p - msg;

    if (mr_hmac_sha256(mac, mr_callback_key, sizeof(mr_callback_key), &part,
                       1)
        != NGX_OK)
    {
        return NGX_ERROR;
    }

    mr_hex(hex, mac, MR_SHA256_LEN);

    return NGX_OK;
}


/* <modelroute_callback_url>/<execution id>: nothing secret */

ngx_int_t
mr_callback_url(ngx_pool_t *pool, mr_main_conf_t *mcf, u_char *exec_id,
    ngx_str_t *url)
{
    u_char  *p;

    url->data = ngx_pnalloc(pool, mcf->callback_url.len + 1
                                  + MR_EXEC_ID_LEN);
    if (url->data == NULL) {
        return NGX_ERROR;
    }

    p = ngx_cpymem(url->data, mcf->callback_url.data, mcf->callback_url.len);

    if (p[-1] != '/') {
        *p++ = '/';
    }

    p = ngx_cpymem(p, exec_id, MR_EXEC_ID_LEN);

    url->len = p - url->data;

    return NGX_OK;
}


/* the token of an attempt (numbered from 0): "<attempt>.<64 hex>" */

ngx_int_t
mr_callback_token(ngx_pool_t *pool, u_char *exec_id, ngx_uint_t attempt,
    ngx_str_t *token)
{
    u_char  *p;

    token->data = ngx_pnalloc(pool, MR_CALLBACK_TOKEN_LEN);
    if (token->data == NULL) {
        return NGX_ERROR;
    }

    p = ngx_sprintf(token->data, "%ui.", attempt);

    if (mr_callback_mac(exec_id, attempt, p) != NGX_OK) {
        return NGX_ERROR;
    }

    token->len = p + MR_CALLBACK_MAC_LEN - token->data;

    return NGX_OK;
}


/* "<attempt>.<64 hex>": the attempt, and where its MAC starts */

static ngx_int_t
mr_callback_parse(ngx_str_t *token, ngx_uint_t *attempt, u_char **mac)
{
    u_char      *dot;
    ngx_int_t    n;

    dot = ngx_strlchr(token->data, token->data + token->len, '.');

    if (dot == NULL || dot == token->data || dot - token->data > 3
        || (size_t) (token->data + token->len - dot - 1)
           != MR_CALLBACK_MAC_LEN)
    {
        return NGX_DECLINED;
    }

    n = ngx_atoi(token->data, dot - token->data);

    if (n == NGX_ERROR || (dot - token->data > 1 && token->data[0] == '0')) {
        return NGX_DECLINED;
    }

    *attempt = n;
    *mac = dot + 1;

    return NGX_OK;
}


/* POST /v1/callbacks/<id>: ctx->id is a well-formed execution id */

ngx_int_t
mr_callback_handler(ngx_http_request_t *r)
{
    u_char         *mac;
    ngx_str_t       token, arg;
    ngx_uint_t      attempt, ok;
    mr_http_ctx_t  *ctx;
    u_char          expect[MR_CALLBACK_MAC_LEN];

    ctx = ngx_http_get_module_ctx(r, ngx_http_modelroute_module);

    if (mr_callback_state == MR_CALLBACK_KEY_NONE) {
        return mr_http_error(r, MR_E_NOT_FOUND, "no such resource", NULL);
    }

    if (mr_callback_state == MR_CALLBACK_KEY_READING) {
        return mr_http_error(r, MR_E_SERVICE_UNAVAILABLE,
                             "the store cannot be reached; try again",
                             NULL);
    }

    if (mr_http_arg(r, "token", &arg) == NGX_OK) {
        ngx_log_error(NGX_LOG_INFO, r->connection->log, 0,
                      "modelroute: a callback for %V with a token in its "
                      "URL was refused", &ctx->id);
        return mr_http_error(r, MR_E_UNAUTHORIZED,
                             "the callback token goes in the Authorization "
                             "header (Bearer), never in the URL", NULL);
    }

    token.len = 0;

    if (r->headers_in.authorization
        && r->headers_in.authorization->value.len > 7
        && ngx_strncasecmp(r->headers_in.authorization->value.data,
                           (u_char *) "Bearer ", 7) == 0)
    {
        token.data = r->headers_in.authorization->value.data + 7;
        token.len = r->headers_in.authorization->value.len - 7;
    }

    ok = (token.len && mr_callback_parse(&token, &attempt, &mac) == NGX_OK);

    if (ok) {
        if (mr_callback_mac(ctx->id.data, attempt, expect) != NGX_OK) {
            return mr_http_error(r, MR_E_INTERNAL,
                                 "the callback token cannot be computed "
                                 "(OpenSSL's HMAC failed)", NULL);
        }

        ok = mr_memeq_ct(mac, expect, MR_CALLBACK_MAC_LEN);
    }

    if (!ok) {
        ngx_log_error(NGX_LOG_INFO, r->connection->log, 0,
                      "modelroute: a callback for %V with a wrong token",
                      &ctx->id);
        return mr_http_error(r, MR_E_UNAUTHORIZED,
                             "the callback token is missing or wrong",
                             NULL);
    }

    /* the attempt the token is for, until the body is read */

    ctx->op.disp.token = attempt;

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

    /* the answer is whole: the latency the gateway adds starts (metrics) */

    ctx->op.disp.answered_us = mr_mono_us();

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

    /*
     * a token of an attempt that was not made was made by nobody: it is
     * refused like a forged one; none is good after expires_at
     */

    if (ctx->op.disp.token >= exec->rec.nattempts) {
        ngx_log_error(NGX_LOG_INFO, r->connection->log, 0,
                      "modelroute: a callback for %V with the token of "
                      "attempt %uL, which was not made", &ctx->id,
                      ctx->op.disp.token);
        return mr_http_error(r, MR_E_UNAUTHORIZED,
                             "the callback token is missing or wrong",
                             NULL);
    }

    if (mr_now_ms() >= exec->rec.expires_ms) {
        return mr_http_error(r, MR_E_UNAUTHORIZED,
                             "the callback token has expired (the "
                             "execution's expires_at has passed)", NULL);
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
        ngx_log_error(mr_adapter_log_level(&out), r->connection->log, 0,
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
