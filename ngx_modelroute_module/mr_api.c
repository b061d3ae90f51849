
/*
 * ModelRoute: the public API (/v1/...).
 */


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>

#include "ngx_http_modelroute_module.h"
#include "mr_http.h"
#include "mr_auth.h"
#include "mr_exec.h"
#include "mr_api.h"
#include "mr_webhook.h"
#include "mr_callback.h"
#include "mr_vars.h"
#include "mr_limits.h"


#define MR_LIST_DEFAULT  20
#define MR_LIST_MAX      100


static ngx_int_t mr_api_create(ngx_http_request_t *r);
static void mr_api_create_done(mr_store_op_t *op);
static ngx_int_t mr_api_get(ngx_http_request_t *r, ngx_uint_t result);
static void mr_api_read(mr_store_read_t *rd);
static ngx_int_t mr_api_got(ngx_http_request_t *r, mr_store_read_t *rd);
static ngx_int_t mr_api_list(ngx_http_request_t *r);
static ngx_int_t mr_api_listed(ngx_http_request_t *r, mr_store_read_t *rd);
static ngx_int_t mr_api_cancel(ngx_http_request_t *r);
static void mr_api_cancel_done(mr_store_op_t *op);
static ngx_int_t mr_api_balance(ngx_http_request_t *r);
static ngx_int_t mr_api_balance_got(ngx_http_request_t *r,
    mr_store_read_t *rd);
static ngx_int_t mr_api_models(ngx_http_request_t *r);
static ngx_int_t mr_api_rotate(ngx_http_request_t *r);
static void mr_api_rotate_done(mr_store_op_t *op);
static ngx_int_t mr_api_send_exec(ngx_http_request_t *r, ngx_uint_t status,
    mr_exec_t *exec);
static ngx_int_t mr_api_post(ngx_http_request_t *r, mr_http_body_pt handler);


#define MR_ROUTE_POST  1
#define MR_ROUTE_GET   2


/*
 * path: the URI from "/v1/" on.
 *
 * Every path is authenticated first: without a valid key the answer is
 * 401, whatever the path, the method or the id (the callbacks of
 * asynchronous providers carry their execution's token instead of a key).
 * Then the route: an unknown one is 404 "no such path"; a method it does
 * not have, 405; a key without the permission it needs, 403; an id that
 * is not well formed is the resource's 404, as an unknown one is.
 */

ngx_int_t
mr_api_handler(ngx_http_request_t *r, u_char *path, u_char *last)
{
    ngx_int_t       rc;
    ngx_str_t       seg[5];
    ngx_uint_t      n, allowed;
    mr_http_ctx_t  *ctx;

    ctx = mr_http_ctx(r);
    if (ctx == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    if ((size_t) (last - path) < sizeof("/v1/") - 1
        || ngx_strncmp(path, "/v1/", sizeof("/v1/") - 1) != 0)
    {
        goto not_found;
    }

    n = mr_http_split(path + 4, last, seg, 4);

#define mr_seg_is(i, s)                                                     \
    (seg[i].len == sizeof(s) - 1                                            \
     && ngx_strncmp(seg[i].data, s, sizeof(s) - 1) == 0)

#define mr_method(m)  (r->method & (m))
#define mr_get        (NGX_HTTP_GET | NGX_HTTP_HEAD)

    /* an asynchronous provider's result: its token, not an API key */

    if (n == 2 && mr_seg_is(0, "callbacks")) {
        if (!mr_id_valid(&seg[1], "exec_", MR_EXEC_ID_LEN)) {
            goto not_found;
        }

        if (!mr_method(NGX_HTTP_POST)) {
            return mr_http_not_allowed(r, "POST");
        }

        ctx->id = seg[1];

        return mr_callback_handler(r);
    }

    if (mr_auth_request(r, MR_PERM_EXECUTION, &rc) != NGX_OK) {
        return rc;
    }

    if (n == 1 && mr_seg_is(0, "executions")) {
        allowed = mr_method(NGX_HTTP_POST) ? MR_ROUTE_POST
                : mr_method(mr_get) ? MR_ROUTE_GET : 0;
        if (!allowed) {
            return mr_http_not_allowed(r, "GET, HEAD, POST");
        }

        if (allowed == MR_ROUTE_POST) {
            return mr_api_post(r, mr_api_create);
        }

        return mr_api_list(r);
    }

    if ((n == 2 || n == 3) && mr_seg_is(0, "executions")) {

        if (n == 3 && !mr_seg_is(2, "cancel") && !mr_seg_is(2, "result")) {
            goto not_found;
        }

        if (n == 3 && mr_seg_is(2, "cancel")) {
            if (!mr_method(NGX_HTTP_POST)) {
                return mr_http_not_allowed(r, "POST");
            }

        } else if (!mr_method(mr_get)) {
            return mr_http_not_allowed(r, "GET, HEAD");
        }

        if (!mr_id_valid(&seg[1], "exec_", MR_EXEC_ID_LEN)) {
            return mr_http_error(r, MR_E_NOT_FOUND, "no such execution",
                                 NULL);
        }

        ctx->id = seg[1];

        if (n == 3 && mr_seg_is(2, "cancel")) {
            return mr_api_post(r, mr_api_cancel);
        }

        return mr_api_get(r, n == 3);
    }

    if (n == 1 && (mr_seg_is(0, "balance") || mr_seg_is(0, "models"))) {
        if (!mr_method(mr_get)) {
            return mr_http_not_allowed(r, "GET, HEAD");
        }

        return mr_seg_is(0, "balance") ? mr_api_balance(r)
                                       : mr_api_models(r);
    }

    if (n >= 2 && n <= 4 && mr_seg_is(0, "webhooks")) {
        return mr_webhook_api_handler(r, seg, n);
    }

    if (n == 3 && mr_seg_is(0, "api-keys") && mr_seg_is(2, "rotate")) {
        if (!mr_method(NGX_HTTP_POST)) {
            return mr_http_not_allowed(r, "POST");
        }

        if (mr_auth_permit(r, MR_PERM_FULL, &rc) != NGX_OK) {
            return rc;
        }

        if (!mr_id_valid(&seg[1], "key_", MR_KEY_ID_LEN)) {
            return mr_http_error(r, MR_E_NOT_FOUND, "no such API key",
                                 NULL);
        }

        ctx->id = seg[1];

        return mr_api_post(r, mr_api_rotate);
    }

#undef mr_seg_is
#undef mr_method
#undef mr_get

not_found:

    return mr_http_error(r, MR_E_NOT_FOUND, "no such path", NULL);
}


static ngx_int_t
mr_api_post(ngx_http_request_t *r, mr_http_body_pt handler)
{
    return mr_http_read_body(r, handler);
}


static ngx_int_t
mr_api_create(ngx_http_request_t *r)
{
    u_char          *key;
    json_t          *body, *details;
    ngx_int_t        rc;
    ngx_str_t        idem;
    mr_exec_t       *exec;
    mr_input_t       in;
    mr_http_ctx_t   *ctx;
    mr_store_op_t   *op;
    mr_main_conf_t  *mcf;

    ctx = ngx_http_get_module_ctx(r, ngx_http_modelroute_module);
    mcf = mr_main_conf();

    body = mr_http_parse_object(r, &in, &rc);
    if (body == NULL) {
        return rc;
    }

    op = &ctx->op;
    exec = &op->exec;

    details = json_array();
    if (details == NULL) {
        json_decref(body);
        return mr_http_error(r, MR_E_INTERNAL, "out of memory", NULL);
    }

    rc = mr_exec_prepare(r, body, &in, exec, &idem, details);

    if (rc == NGX_DECLINED) {
        json_decref(body);
        return mr_http_error(r, MR_E_INPUT_VALIDATION,
                             "the request is not valid", details);
    }

    if (rc == NGX_ABORT) {
        json_decref(body);
        return mr_http_error(r, MR_E_PAYLOAD_TOO_LARGE,
                             "the input is too large for this model",
                             details);
    }

    json_decref(details);

    if (rc != NGX_OK) {
        json_decref(body);
        return mr_http_error(r, MR_E_INTERNAL, "cannot prepare execution",
                             NULL);
    }

    key = ngx_pnalloc(r->pool, idem.len);
    if (key == NULL) {
        json_decref(body);
        return mr_http_error(r, MR_E_INTERNAL, "out of memory", NULL);
    }

    ngx_memcpy(key, idem.data, idem.len);
    op->idem_key.data = key;
    op->idem_key.len = idem.len;

    json_decref(body);

    if (mr_exec_id(exec->id, exec->rec.created_ms) != NGX_OK) {
        return mr_http_error(r, MR_E_INTERNAL, "no randomness", NULL);
    }

    ngx_memcpy(exec->rec.org, ctx->key.rec.org, MR_ORG_ID_LEN);
    exec->rec.status = MR_PENDING;

    op->type = MR_OP_EXEC_CREATE;
    op->idem_ttl_ms = (int64_t) mcf->idempotency_ttl * 1000;

    mr_http_submit(r, op, mr_api_create_done);

    return NGX_DONE;
}


static void
mr_api_create_done(mr_store_op_t *op)
{
    ngx_int_t            rc;
    ngx_str_t            value;
    ngx_http_request_t  *r;

    r = mr_http_resume(op);
    if (r == NULL) {
        return;
    }

    if (op->result != MR_R_OK && op->result != MR_R_REPLAYED) {
        mr_http_finalize(r, mr_http_op_error(r, op));
        return;
    }

    value.len = sizeof("/v1/executions/") - 1 + MR_EXEC_ID_LEN;
    value.data = ngx_pnalloc(r->pool, value.len);

    if (value.data == NULL) {
        mr_http_finalize(r, NGX_HTTP_INTERNAL_SERVER_ERROR);
        return;
    }

    ngx_sprintf(value.data, "/v1/executions/%*s", (size_t) MR_EXEC_ID_LEN,
                op->result == MR_R_REPLAYED ? op->replay.id : op->exec.id);

    rc = mr_http_header(r, "Location", &value);

    if (rc == NGX_OK && op->result == MR_R_REPLAYED) {
        ngx_str_set(&value, "true");
        rc = mr_http_header(r, "Idempotent-Replayed", &value);
    }

    if (rc == NGX_OK) {
        rc = mr_api_send_exec(r, NGX_HTTP_ACCEPTED,
                              op->result == MR_R_REPLAYED ? &op->replay
                                                          : &op->exec);

    } else {
        rc = NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    mr_http_finalize(r, rc);
}


static ngx_int_t
mr_api_send_exec(ngx_http_request_t *r, ngx_uint_t status, mr_exec_t *exec)
{
    ngx_str_t  body;

    mr_vars_exec(r, exec);

    if (mr_exec_render(r->pool, exec, &body) != NGX_OK) {
        return mr_http_error(r, MR_E_INTERNAL, "out of memory", NULL);
    }

    return mr_http_send(r, status, &body);
}


static ngx_int_t
mr_api_get(ngx_http_request_t *r, ngx_uint_t result)
{
    mr_http_ctx_t    *ctx;
    mr_store_read_t  *rd;

    ctx = ngx_http_get_module_ctx(r, ngx_http_modelroute_module);

    rd = mr_http_read_alloc(r, MR_READ_EXEC);
    if (rd == NULL) {
        return mr_http_error(r, MR_E_INTERNAL, "out of memory", NULL);
    }

    ngx_memcpy(rd->id, ctx->id.data, MR_EXEC_ID_LEN);
    rd->arg = result;
    rd->parts = MR_PARTS_SHOWN;

    if (mr_http_read(r, rd, mr_api_read) == NGX_DONE) {
        return NGX_DONE;
    }

    return mr_api_got(r, rd);
}


/* a read's continuation, after an event of the store */

static void
mr_api_read(mr_store_read_t *rd)
{
    ngx_http_request_t  *r;

    r = mr_http_read_resume(rd);
    if (r == NULL) {
        return;
    }

    switch (rd->type) {

    case MR_READ_EXEC:
        mr_http_continued(r, mr_api_got(r, rd));
        return;

    case MR_READ_EXEC_LIST:
        mr_http_continued(r, mr_api_listed(r, rd));
        return;

    default: /* MR_READ_ACCOUNT */
        mr_http_continued(r, mr_api_balance_got(r, rd));
    }
}


static ngx_int_t
mr_api_got(ngx_http_request_t *r, mr_store_read_t *rd)
{
    ngx_str_t       body;
    mr_exec_t      *exec;
    mr_http_ctx_t  *ctx;

    ctx = ngx_http_get_module_ctx(r, ngx_http_modelroute_module);
    exec = &rd->exec;

    if (rd->rc != NGX_OK && rd->rc != NGX_DECLINED) {
        return mr_http_read_error(r, rd);
    }

    if (rd->rc == NGX_DECLINED
        || ngx_memcmp(exec->rec.org, ctx->key.rec.org, MR_ORG_ID_LEN) != 0)
    {
        return mr_http_error(r, MR_E_NOT_FOUND, "no such execution", NULL);
    }

    mr_vars_exec(r, exec);

    if (!rd->arg) {
        return mr_api_send_exec(r, NGX_HTTP_OK, exec);
    }

    if (exec->rec.status != MR_COMPLETED) {
        return mr_http_error(r, MR_E_NOT_COMPLETED,
                             "the execution has no result: it is not "
                             "COMPLETED", NULL);
    }

    if (mr_exec_render_result(r->pool, exec, &body) != NGX_OK) {
        return mr_http_error(r, MR_E_INTERNAL, "out of memory", NULL);
    }

    return mr_http_send(r, NGX_HTTP_OK, &body);
}


static ngx_int_t
mr_api_list(ngx_http_request_t *r)
{
    json_t           *details;
    ngx_int_t         limit;
    ngx_str_t         v;
    mr_http_ctx_t    *ctx;
    mr_list_query_t   q;
    mr_store_read_t  *rd;

    ctx = ngx_http_get_module_ctx(r, ngx_http_modelroute_module);

    ngx_memzero(&q, sizeof(mr_list_query_t));
    q.org = ctx->key.rec.org;
    q.limit = MR_LIST_DEFAULT;

    details = json_array();

    if (mr_http_arg(r, "status", &v) == NGX_OK) {
        q.status = mr_exec_status_parse(&v);
        if (q.status == 0) {
            mr_json_detail(details, "status", "INVALID_VALUE",
                           "status must be one of PENDING, PROCESSING, "
                           "AWAITING_WEBHOOK, COMPLETED, FAILED, "
                           "CANCELLED, EXPIRED");
        }
    }

    if (mr_http_arg(r, "model", &v) == NGX_OK) {
        q.model = v;
    }

    if (mr_http_arg(r, "limit", &v) == NGX_OK) {
        limit = ngx_atoi(v.data, v.len);
        if (limit < 1 || limit > MR_LIST_MAX) {
            mr_json_detail(details, "limit", "INVALID_VALUE",
                           "limit must be an integer from 1 to 100");

        } else {
            q.limit = limit;
        }
    }

    if (mr_http_arg(r, "starting_after", &v) == NGX_OK) {
        if (!mr_id_valid(&v, "exec_", MR_EXEC_ID_LEN)) {
            mr_json_detail(details, "starting_after", "INVALID_VALUE",
                           "starting_after must be an execution id");

        } else {
            q.starting_after = v;
        }
    }

    if (json_array_size(details)) {
        return mr_http_error(r, MR_E_INPUT_VALIDATION,
                             "invalid list parameters", details);
    }

    json_decref(details);

    rd = mr_http_read_alloc(r, MR_READ_EXEC_LIST);
    if (rd == NULL) {
        return mr_http_error(r, MR_E_INTERNAL, "out of memory", NULL);
    }

    rd->query = ngx_palloc(r->pool, sizeof(mr_list_query_t));
    rd->list = ngx_array_create(r->pool, q.limit, sizeof(mr_exec_t));

    if (rd->query == NULL || rd->list == NULL) {
        return mr_http_error(r, MR_E_INTERNAL, "out of memory", NULL);
    }

    *rd->query = q;

    if (mr_http_read(r, rd, mr_api_read) == NGX_DONE) {
        return NGX_DONE;
    }

    return mr_api_listed(r, rd);
}


static ngx_int_t
mr_api_listed(ngx_http_request_t *r, mr_store_read_t *rd)
{
    u_char           *p;
    size_t            len;
    json_t           *details;
    ngx_str_t         body, *parts;
    ngx_uint_t        i;
    mr_exec_t        *exec;
    ngx_array_t      *execs;
    mr_list_query_t  *q;

    q = rd->query;
    execs = rd->list;

    if (rd->rc == NGX_DECLINED) {
        details = json_array();
        mr_json_detail(details, "starting_after", "NOT_FOUND",
                       "no such execution");
        return mr_http_error(r, MR_E_INPUT_VALIDATION,
                             "invalid list parameters", details);
    }

    if (rd->rc != NGX_OK) {
        return mr_http_read_error(r, rd);
    }

    parts = ngx_palloc(r->pool, (execs->nelts + 1) * sizeof(ngx_str_t));
    if (parts == NULL) {
        return mr_http_error(r, MR_E_INTERNAL, "out of memory", NULL);
    }

    len = sizeof("{\"object\":\"list\",\"data\":[],\"has_more\":false,"
                 "\"next_starting_after\":\"\"}") + MR_EXEC_ID_LEN;
    exec = execs->elts;

    for (i = 0; i < execs->nelts; i++) {
        if (mr_exec_render(r->pool, &exec[i], &parts[i]) != NGX_OK) {
            return mr_http_error(r, MR_E_INTERNAL, "out of memory", NULL);
        }

        len += parts[i].len + 1;
    }

    body.data = ngx_pnalloc(r->pool, len);
    if (body.data == NULL) {
        return mr_http_error(r, MR_E_INTERNAL, "out of memory", NULL);
    }

    p = ngx_cpymem(body.data, "{\"object\":\"list\",\"data\":[",
                   sizeof("{\"object\":\"list\",\"data\":[") - 1);

    for (i = 0; i < execs->nelts; i++) {
        if (i) {
            *p++ = ',';
        }

        p = ngx_cpymem(p, parts[i].data, parts[i].len);
    }

    /*
     * where the next page starts: after the last execution returned, or,
     * when a filtered list stopped looking (MR_STORE_LIST_SCAN), after the
     * last one it looked at
     */

    if (q->has_more) {
        p = ngx_sprintf(p, "],\"has_more\":true,\"next_starting_after\":"
                        "\"%*s\"}", (size_t) MR_EXEC_ID_LEN, q->next);

    } else {
        p = ngx_sprintf(p, "],\"has_more\":false,"
                        "\"next_starting_after\":null}");
    }
    body.len = p - body.data;

    return mr_http_send(r, NGX_HTTP_OK, &body);
}


static ngx_int_t
mr_api_cancel(ngx_http_request_t *r)
{
    mr_http_ctx_t  *ctx;
    mr_store_op_t  *op;

    ctx = ngx_http_get_module_ctx(r, ngx_http_modelroute_module);
    op = &ctx->op;

    op->type = MR_OP_EXEC_CANCEL;
    ngx_memcpy(op->exec.id, ctx->id.data, MR_EXEC_ID_LEN);
    ngx_memcpy(op->org, ctx->key.rec.org, MR_ORG_ID_LEN);

    mr_http_submit(r, op, mr_api_cancel_done);

    return NGX_DONE;
}


static void
mr_api_cancel_done(mr_store_op_t *op)
{
    ngx_int_t            rc;
    ngx_http_request_t  *r;

    r = mr_http_resume(op);
    if (r == NULL) {
        return;
    }

    if (op->result == MR_R_OK || op->result == MR_R_NOOP) {
        rc = mr_api_send_exec(r, NGX_HTTP_OK, &op->exec);

    } else {
        rc = mr_http_op_error(r, op);
    }

    mr_http_finalize(r, rc);
}


static ngx_int_t
mr_api_balance(ngx_http_request_t *r)
{
    mr_http_ctx_t    *ctx;
    mr_store_read_t  *rd;

    ctx = ngx_http_get_module_ctx(r, ngx_http_modelroute_module);

    rd = mr_http_read_alloc(r, MR_READ_ACCOUNT);
    if (rd == NULL) {
        return mr_http_error(r, MR_E_INTERNAL, "out of memory", NULL);
    }

    ngx_memcpy(rd->id, ctx->key.rec.org, MR_ORG_ID_LEN);

    if (mr_http_read(r, rd, mr_api_read) == NGX_DONE) {
        return NGX_DONE;
    }

    return mr_api_balance_got(r, rd);
}


static ngx_int_t
mr_api_balance_got(ngx_http_request_t *r, mr_store_read_t *rd)
{
    mr_account_t  *acct;

    if (rd->rc == NGX_DECLINED) {
        return mr_http_error(r, MR_E_NOT_FOUND, "no such account", NULL);
    }

    if (rd->rc != NGX_OK) {
        return mr_http_read_error(r, rd);
    }

    acct = &rd->account;

    return mr_http_send_json(r, NGX_HTTP_OK,
               json_pack("{s:s, s:o, s:o, s:o, s:s}",
                         "object", "balance",
                         "balance", mr_json_money(acct->rec.balance),
                         "held", mr_json_money(acct->rec.held),
                         "available", mr_json_money(acct->rec.balance
                                                    - acct->rec.held),
                         "currency", "USD"));
}


static ngx_int_t
mr_api_models(ngx_http_request_t *r)
{
    json_t          *data, *m, *pricing;
    ngx_uint_t       i;
    mr_model_t      *model;
    mr_main_conf_t  *mcf;

    mcf = mr_main_conf();

    data = json_array();
    if (data == NULL) {
        return mr_http_error(r, MR_E_INTERNAL, "out of memory", NULL);
    }

    model = mcf->models.elts;

    for (i = 0; i < mcf->models.nelts; i++) {
        pricing = json_pack("{s:o, s:o, s:o, s:o, s:o, s:s}",
                            "per_request",
                            mr_json_money(model[i].per_request),
                            "per_image", mr_json_money(model[i].per_image),
                            "per_second",
                            mr_json_money(model[i].per_second),
                            "input_per_mtok",
                            mr_json_money(model[i].input_per_mtok),
                            "output_per_mtok",
                            mr_json_money(model[i].output_per_mtok),
                            "currency", "USD");

        m = json_pack("{s:s#, s:s, s:o, s:I, s:I, s:I}",
                      "id", model[i].slug.data, (int) model[i].slug.len,
                      "object", "model", "pricing", pricing,
                      "max_tokens", (json_int_t) model[i].max_tokens,
                      "timeout_seconds",
                      (json_int_t) (model[i].timeout / 1000),
                      "max_input_bytes",
                      (json_int_t) mr_limit_max_input(&model[i]));

        if (m == NULL || json_array_append_new(data, m) != 0) {
            json_decref(data);
            return mr_http_error(r, MR_E_INTERNAL, "out of memory", NULL);
        }
    }

    return mr_http_send_json(r, NGX_HTTP_OK,
                             json_pack("{s:s, s:o}", "object", "list",
                                       "data", data));
}


static ngx_int_t
mr_api_rotate(ngx_http_request_t *r)
{
    mr_http_ctx_t   *ctx;
    mr_store_op_t   *op;
    mr_main_conf_t  *mcf;

    ctx = ngx_http_get_module_ctx(r, ngx_http_modelroute_module);
    mcf = mr_main_conf();
    op = &ctx->op;

    if (mr_auth_generate(ctx->secret, &op->key) != NGX_OK) {
        return mr_http_error(r, MR_E_INTERNAL, "no randomness", NULL);
    }

    /* the new key takes the old one's permission and name in the store */

    ngx_memcpy(op->key.rec.org, ctx->key.rec.org, MR_ORG_ID_LEN);

    op->type = MR_OP_KEY_ROTATE;
    op->grace_ms = (int64_t) mcf->rotation_grace * 1000;
    ngx_memcpy(op->key_id, ctx->id.data, MR_KEY_ID_LEN);

    /* a key in its grace period cannot rotate: checked in the store */
    ngx_memcpy(op->caller_key_id, ctx->key.rec.key_id, MR_KEY_ID_LEN);
    ngx_memcpy(op->org, ctx->key.rec.org, MR_ORG_ID_LEN);

    mr_http_submit(r, op, mr_api_rotate_done);

    return NGX_DONE;
}


static void
mr_api_rotate_done(mr_store_op_t *op)
{
    json_t              *j;
    ngx_int_t            rc;
    mr_http_ctx_t       *ctx;
    ngx_http_request_t  *r;

    r = mr_http_resume(op);
    if (r == NULL) {
        return;
    }

    ctx = ngx_http_get_module_ctx(r, ngx_http_modelroute_module);

    if (op->result != MR_R_OK) {
        mr_http_finalize(r, mr_http_op_error(r, op));
        return;
    }

    j = json_pack("{s:s#, s:s, s:s#, s:s, s:s#, s:o}",
                  "id", op->key.rec.key_id, (int) MR_KEY_ID_LEN,
                  "object", "api_key",
                  "key", ctx->secret, (int) MR_SECRET_LEN,
                  "permission",
                  mr_auth_permission_name(op->key.rec.permission),
                  "previous_key_id", op->old_key.rec.key_id,
                  (int) MR_KEY_ID_LEN,
                  "previous_key_valid_until",
                  mr_json_time(op->old_key.rec.valid_until_ms));

    rc = mr_http_send_json(r, NGX_HTTP_OK, j);

    mr_http_finalize(r, rc);
}
