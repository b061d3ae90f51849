
/*
 * ModelRoute: the webhook API (/v1/webhooks/...).
 */


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>

#include "ngx_http_modelroute_module.h"
#include "mr_http.h"
#include "mr_auth.h"
#include "mr_webhook.h"
#include "mr_webhook_addr.h"


#define MR_WH_DESCRIPTION_MAX  1024
#define MR_WH_HEADERS_MAX      20
#define MR_DLV_LIST_DEFAULT    20
#define MR_DLV_LIST_MAX        100


static ngx_int_t mr_wh_create(ngx_http_request_t *r);
static ngx_int_t mr_wh_patch(ngx_http_request_t *r);
static ngx_int_t mr_wh_fields(ngx_http_request_t *r, json_t *body,
    mr_store_op_t *op, ngx_uint_t create, json_t *details);
static ngx_int_t mr_wh_simple(ngx_http_request_t *r);
static ngx_int_t mr_wh_get(ngx_http_request_t *r);
static ngx_int_t mr_wh_list(ngx_http_request_t *r);
static ngx_int_t mr_wh_deliveries(ngx_http_request_t *r, ngx_uint_t by_exec);
static ngx_int_t mr_wh_secret(ngx_http_request_t *r);
static void mr_wh_done(mr_store_op_t *op);
static ngx_int_t mr_wh_read(ngx_http_request_t *r, mr_store_read_t *rd);
static void mr_wh_read_done(mr_store_read_t *rd);
static ngx_int_t mr_wh_got(ngx_http_request_t *r, mr_store_read_t *rd);
static ngx_int_t mr_wh_secret_got(ngx_http_request_t *r,
    mr_store_read_t *rd);
static json_t *mr_wh_json(void *elt);
static json_t *mr_dlv_json(void *elt);
static json_t *mr_json_raw(ngx_str_t *s, json_t *dflt);


static const char  *mr_wh_events[] = {
    "execution.started", "execution.completed", "execution.failed",
    "execution.cancelled", "execution.expired", NULL
};

static const char  *mr_wh_reserved[] = {
    "content-type", "content-length", "host", "user-agent", "expect",
    "transfer-encoding", "connection", "x-signature",
    "x-signature-timestamp", "webhook-id", "webhook-timestamp",
    "webhook-signature", NULL
};


/*
 * seg: the path's segments after /v1/, seg[0] is "webhooks"; the request
 * is authenticated (mr_api_handler()); every route needs a key with full
 * permission
 */

ngx_int_t
mr_webhook_api_handler(ngx_http_request_t *r, ngx_str_t *seg, ngx_uint_t n)
{
    ngx_int_t       rc;
    ngx_uint_t      post, get;
    mr_http_ctx_t  *ctx;

    ctx = ngx_http_get_module_ctx(r, ngx_http_modelroute_module);

    post = (r->method == NGX_HTTP_POST);
    get = (r->method & (NGX_HTTP_GET | NGX_HTTP_HEAD)) ? 1 : 0;

#define mr_seg_is(i, s)                                                     \
    (seg[i].len == sizeof(s) - 1                                            \
     && ngx_strncmp(seg[i].data, s, sizeof(s) - 1) == 0)

#define mr_full()                                                           \
    if (mr_auth_permit(r, MR_PERM_FULL, &rc) != NGX_OK) {                   \
        return rc;                                                          \
    }

#define mr_endpoint_id()                                                    \
    if (!mr_id_valid(&seg[2], "wh_", MR_WH_ID_LEN)) {                       \
        return mr_http_error(r, MR_E_NOT_FOUND, "no such endpoint", NULL);  \
    }                                                                       \
                                                                            \
    ctx->id = seg[2]

    if (n >= 2 && mr_seg_is(1, "endpoints")) {

        if (n == 2) {
            if (!post && !get) {
                return mr_http_not_allowed(r, "GET, HEAD, POST");
            }

            mr_full();

            return post ? mr_http_read_body(r, mr_wh_create) : mr_wh_list(r);
        }

        if (n == 3) {
            if (r->method != NGX_HTTP_PATCH && r->method != NGX_HTTP_DELETE
                && !get)
            {
                return mr_http_not_allowed(r, "GET, HEAD, PATCH, DELETE");
            }

            mr_full();
            mr_endpoint_id();

            if (r->method == NGX_HTTP_PATCH) {
                return mr_http_read_body(r, mr_wh_patch);
            }

            if (r->method == NGX_HTTP_DELETE) {
                ctx->op.type = MR_OP_WH_DELETE;
                return mr_http_read_body(r, mr_wh_simple);
            }

            return mr_wh_get(r);
        }

        if (n == 4 && mr_seg_is(3, "test")) {
            if (!post) {
                return mr_http_not_allowed(r, "POST");
            }

            mr_full();
            mr_endpoint_id();

            ctx->op.type = MR_OP_WH_TEST;
            return mr_http_read_body(r, mr_wh_simple);
        }

        if (n == 4 && mr_seg_is(3, "deliveries")) {
            if (!get) {
                return mr_http_not_allowed(r, "GET, HEAD");
            }

            mr_full();
            mr_endpoint_id();

            return mr_wh_deliveries(r, 0);
        }

        goto not_found;
    }

    if (n == 2 && mr_seg_is(1, "deliveries")) {
        if (!get) {
            return mr_http_not_allowed(r, "GET, HEAD");
        }

        mr_full();
        return mr_wh_deliveries(r, 1);
    }

    if (n == 4 && mr_seg_is(1, "deliveries") && mr_seg_is(3, "retry")) {
        if (!post) {
            return mr_http_not_allowed(r, "POST");
        }

        mr_full();

        if (!mr_id_valid(&seg[2], "dlv_", MR_DLV_ID_LEN)) {
            return mr_http_error(r, MR_E_NOT_FOUND, "no such delivery",
                                 NULL);
        }

        ctx->id = seg[2];
        ctx->op.type = MR_OP_DLV_RETRY;
        return mr_http_read_body(r, mr_wh_simple);
    }

    if (n == 3 && mr_seg_is(1, "default") && mr_seg_is(2, "secret")) {
        if (!get) {
            return mr_http_not_allowed(r, "GET, HEAD");
        }

        mr_full();
        return mr_wh_secret(r);
    }

#undef mr_seg_is
#undef mr_full
#undef mr_endpoint_id

not_found:

    return mr_http_error(r, MR_E_NOT_FOUND, "no such path", NULL);
}


static ngx_int_t
mr_wh_create(ngx_http_request_t *r)
{
    json_t          *body, *details;
    ngx_int_t        rc;
    mr_wh_t         *wh;
    mr_http_ctx_t   *ctx;
    mr_store_op_t   *op;

    ctx = ngx_http_get_module_ctx(r, ngx_http_modelroute_module);
    op = &ctx->op;
    wh = &op->wh.ep;

    body = mr_http_parse_object(r, NULL, &rc);
    if (body == NULL) {
        return rc;
    }

    details = json_array();

    rc = mr_wh_fields(r, body, op, 1, details);

    json_decref(body);

    if (rc == NGX_ERROR) {
        json_decref(details);
        return mr_http_error(r, MR_E_INTERNAL, "out of memory", NULL);
    }

    if (json_array_size(details)) {
        return mr_http_error(r, MR_E_INPUT_VALIDATION,
                             "the request is not valid", details);
    }

    json_decref(details);

    wh->seg[MR_WH_SEG_SECRET].data = ngx_pnalloc(r->pool, MR_WH_SECRET_LEN);

    if (wh->seg[MR_WH_SEG_SECRET].data == NULL
        || mr_random_id(wh->rec.id, "wh_", 24) != NGX_OK
        || mr_store_new_secret(wh->seg[MR_WH_SEG_SECRET].data) != NGX_OK)
    {
        return mr_http_error(r, MR_E_INTERNAL, "no randomness", NULL);
    }

    wh->seg[MR_WH_SEG_SECRET].len = MR_WH_SECRET_LEN;
    ngx_memcpy(wh->rec.org, ctx->key.rec.org, MR_ORG_ID_LEN);
    wh->rec.active = 1;
    wh->rec.created_ms = mr_now_ms();

    op->type = MR_OP_WH_CREATE;

    mr_http_submit(r, op, mr_wh_done);

    return NGX_DONE;
}


static ngx_int_t
mr_wh_patch(ngx_http_request_t *r)
{
    json_t          *body, *details, *active;
    ngx_int_t        rc;
    mr_http_ctx_t   *ctx;
    mr_store_op_t   *op;

    ctx = ngx_http_get_module_ctx(r, ngx_http_modelroute_module);
    op = &ctx->op;

    body = mr_http_parse_object(r, NULL, &rc);
    if (body == NULL) {
        return rc;
    }

    details = json_array();

    rc = mr_wh_fields(r, body, op, 0, details);

    active = json_object_get(body, "is_active");

    if (active) {
        if (!json_is_boolean(active)) {
            mr_json_detail(details, "is_active", "INVALID_TYPE",
                           "is_active must be a boolean");

        } else {
            op->wh.patch |= MR_WH_PATCH_ACTIVE;
            op->wh.ep.rec.active = json_is_true(active);
        }
    }

    json_decref(body);

    if (rc == NGX_ERROR) {
        json_decref(details);
        return mr_http_error(r, MR_E_INTERNAL, "out of memory", NULL);
    }

    if (json_array_size(details)) {
        return mr_http_error(r, MR_E_INPUT_VALIDATION,
                             "the request is not valid", details);
    }

    json_decref(details);

    ngx_memcpy(op->wh.wh_id, ctx->id.data, MR_WH_ID_LEN);
    ngx_memcpy(op->org, ctx->key.rec.org, MR_ORG_ID_LEN);

    op->type = MR_OP_WH_UPDATE;

    mr_http_submit(r, op, mr_wh_done);

    return NGX_DONE;
}


/* url, description, events, headers: into op->wh.ep.seg and patch bits */

static ngx_int_t
mr_wh_fields(ngx_http_request_t *r, json_t *body, mr_store_op_t *op,
    ngx_uint_t create, json_t *details)
{
    size_t           i;
    json_t          *v, *e, *hv;
    ngx_str_t        url, *seg;
    const char      *why, *name, **known;
    ngx_uint_t       bad;
    mr_main_conf_t  *mcf;

    mcf = mr_main_conf();
    seg = op->wh.ep.seg;

    v = json_object_get(body, "url");

    if (v == NULL) {
        if (create) {
            mr_json_detail(details, "url", "REQUIRED", "url is required");
        }

    } else if (!json_is_string(v)) {
        mr_json_detail(details, "url", "INVALID_TYPE",
                       "url must be a string");

    } else {
        url.data = (u_char *) json_string_value(v);
        url.len = json_string_length(v);

        why = mr_webhook_url_check(&url, mcf->webhook_allow_private);

        if (why) {
            mr_json_detail(details, "url", "INVALID_URL", why);

        } else {
            seg[MR_WH_SEG_URL].data = ngx_pnalloc(r->pool, url.len);
            if (seg[MR_WH_SEG_URL].data == NULL) {
                return NGX_ERROR;
            }

            ngx_memcpy(seg[MR_WH_SEG_URL].data, url.data, url.len);
            seg[MR_WH_SEG_URL].len = url.len;
            op->wh.patch |= MR_WH_PATCH_URL;
        }
    }

    v = json_object_get(body, "description");

    if (v && !json_is_null(v)) {
        if (!json_is_string(v)
            || json_string_length(v) > MR_WH_DESCRIPTION_MAX)
        {
            mr_json_detail(details, "description", "INVALID_VALUE",
                           "description must be a string of at most 1024 "
                           "bytes");

        } else if (mr_json_dump(r->pool, v, &seg[MR_WH_SEG_DESCRIPTION])
                   != NGX_OK)
        {
            return NGX_ERROR;

        } else {
            op->wh.patch |= MR_WH_PATCH_DESCRIPTION;
        }

    } else if (v) {
        op->wh.patch |= MR_WH_PATCH_DESCRIPTION;
    }

    v = json_object_get(body, "events");

    if (v && !json_is_null(v)) {
        bad = !json_is_array(v);

        json_array_foreach(v, i, e) {
            if (!json_is_string(e)) {
                bad = 1;
                break;
            }

            for (known = mr_wh_events; *known; known++) {
                if (ngx_strcmp(*known, json_string_value(e)) == 0) {
                    break;
                }
            }

            if (*known == NULL) {
                bad = 1;
                break;
            }
        }

        if (bad) {
            mr_json_detail(details, "events", "INVALID_VALUE",
                           "events must be an array of event types "
                           "(execution.started, execution.completed, "
                           "execution.failed, execution.cancelled, "
                           "execution.expired); empty for all");

        } else if (mr_json_dump(r->pool, v, &seg[MR_WH_SEG_EVENTS])
                   != NGX_OK)
        {
            return NGX_ERROR;

        } else {
            op->wh.patch |= MR_WH_PATCH_EVENTS;
        }
    }

    if (create && !(op->wh.patch & MR_WH_PATCH_EVENTS)) {
        ngx_str_set(&seg[MR_WH_SEG_EVENTS], "[]");
    }

    v = json_object_get(body, "headers");

    if (v && !json_is_null(v)) {
        bad = !json_is_object(v) || json_object_size(v) > MR_WH_HEADERS_MAX;

        json_object_foreach(v, name, hv) {
            const u_char  *c;

            if (!json_is_string(hv) || *name == '\0') {
                bad = 1;
                break;
            }

            for (c = (u_char *) name; *c; c++) {
                if (!((*c >= 'a' && *c <= 'z') || (*c >= 'A' && *c <= 'Z')
                      || (*c >= '0' && *c <= '9') || *c == '-' || *c == '_'))
                {
                    bad = 1;
                }
            }

            for (c = (u_char *) json_string_value(hv); *c; c++) {
                if (*c < 0x20 || *c == 0x7f) {
                    bad = 1;
                }
            }

            for (known = mr_wh_reserved; *known; known++) {
                if (ngx_strcasecmp((u_char *) *known, (u_char *) name)
                    == 0)
                {
                    bad = 1;
                }
            }

            if (bad || json_string_length(hv) > 1024) {
                bad = 1;
                break;
            }
        }

        if (bad) {
            mr_json_detail(details, "headers", "INVALID_VALUE",
                           "headers must be an object of at most 20 "
                           "header names and string values, without "
                           "the headers ModelRoute sets itself");

        } else if (mr_json_dump(r->pool, v, &seg[MR_WH_SEG_HEADERS])
                   != NGX_OK)
        {
            return NGX_ERROR;

        } else {
            op->wh.patch |= MR_WH_PATCH_HEADERS;
        }

    } else if (v) {
        op->wh.patch |= MR_WH_PATCH_HEADERS;
    }

    return NGX_OK;
}


/* delete, test, retry: no fields */

static ngx_int_t
mr_wh_simple(ngx_http_request_t *r)
{
    mr_http_ctx_t  *ctx;
    mr_store_op_t  *op;

    ctx = ngx_http_get_module_ctx(r, ngx_http_modelroute_module);
    op = &ctx->op;

    if (op->type == MR_OP_DLV_RETRY) {
        ngx_memcpy(op->wh.dlv_id, ctx->id.data, MR_DLV_ID_LEN);

    } else {
        ngx_memcpy(op->wh.wh_id, ctx->id.data, MR_WH_ID_LEN);
    }

    ngx_memcpy(op->org, ctx->key.rec.org, MR_ORG_ID_LEN);

    mr_http_submit(r, op, mr_wh_done);

    return NGX_DONE;
}


static void
mr_wh_done(mr_store_op_t *op)
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

    switch (op->type) {

    case MR_OP_WH_CREATE:
        j = mr_wh_json(&op->wh.ep);
        if (j) {
            json_object_set_new(j, "secret", mr_json_raw(
                                &op->wh.ep.seg[MR_WH_SEG_SECRET], NULL));
        }

        rc = mr_http_send_json(r, NGX_HTTP_CREATED, j);
        break;

    case MR_OP_WH_UPDATE:
        rc = mr_http_send_json(r, NGX_HTTP_OK, mr_wh_json(&op->wh.ep));
        break;

    case MR_OP_WH_DELETE:
        rc = mr_http_send_json(r, NGX_HTTP_OK,
                 json_pack("{s:s#, s:s, s:b}",
                           "id", ctx->id.data, (int) MR_WH_ID_LEN,
                           "object", "webhook_endpoint", "deleted", 1));
        break;

    case MR_OP_WH_TEST:
        rc = mr_http_send_json(r, NGX_HTTP_ACCEPTED,
                 json_pack("{s:s#, s:s#}",
                           "event_id", op->wh.event_id, (int) MR_EVT_ID_LEN,
                           "delivery_id", op->wh.dlv_id,
                           (int) MR_DLV_ID_LEN));
        break;

    case MR_OP_WH_SECRET:
        rc = mr_http_send_json(r, NGX_HTTP_OK,
                 json_pack("{s:s#}", "secret", op->wh.secret,
                           (int) MR_WH_SECRET_LEN));
        break;

    default: /* MR_OP_DLV_RETRY */
        rc = mr_http_send_json(r, NGX_HTTP_ACCEPTED, mr_dlv_json(&op->wh.dlv));
    }

    mr_http_finalize(r, rc);
}


/* a read for a request, and its continuation (mr_wh_got()) */

static ngx_int_t
mr_wh_read(ngx_http_request_t *r, mr_store_read_t *rd)
{
    mr_http_ctx_t  *ctx;

    ctx = ngx_http_get_module_ctx(r, ngx_http_modelroute_module);

    ngx_memcpy(rd->org, ctx->key.rec.org, MR_ORG_ID_LEN);

    if (mr_http_read(r, rd, mr_wh_read_done) == NGX_DONE) {
        return NGX_DONE;
    }

    return mr_wh_got(r, rd);
}


static void
mr_wh_read_done(mr_store_read_t *rd)
{
    ngx_http_request_t  *r;

    r = mr_http_read_resume(rd);
    if (r == NULL) {
        return;
    }

    mr_http_continued(r, mr_wh_got(r, rd));
}


static ngx_int_t
mr_wh_got(ngx_http_request_t *r, mr_store_read_t *rd)
{
    if (rd->type == MR_READ_SECRET) {
        return mr_wh_secret_got(r, rd);
    }

    if (rd->rc == NGX_DECLINED) {
        return mr_http_error(r, MR_E_NOT_FOUND,
                             rd->type == MR_READ_WH ? "no such endpoint"
                                                    : "no such resource",
                             NULL);
    }

    if (rd->rc != NGX_OK) {
        return mr_http_read_error(r, rd);
    }

    switch (rd->type) {

    case MR_READ_WH:
        return mr_http_send_json(r, NGX_HTTP_OK, mr_wh_json(&rd->wh));

    case MR_READ_WH_LIST:
        return mr_http_send_list(r, rd->list, mr_wh_json);

    default: /* MR_READ_DLV_LIST */
        return mr_http_send_list(r, rd->list, mr_dlv_json);
    }
}


static ngx_int_t
mr_wh_get(ngx_http_request_t *r)
{
    mr_http_ctx_t    *ctx;
    mr_store_read_t  *rd;

    ctx = ngx_http_get_module_ctx(r, ngx_http_modelroute_module);

    rd = mr_http_read_alloc(r, MR_READ_WH);
    if (rd == NULL) {
        return mr_http_error(r, MR_E_INTERNAL, "out of memory", NULL);
    }

    ngx_memcpy(rd->id, ctx->id.data, MR_WH_ID_LEN);

    return mr_wh_read(r, rd);
}


static ngx_int_t
mr_wh_list(ngx_http_request_t *r)
{
    mr_http_ctx_t    *ctx;
    mr_store_read_t  *rd;

    ctx = ngx_http_get_module_ctx(r, ngx_http_modelroute_module);

    rd = mr_http_read_alloc(r, MR_READ_WH_LIST);
    if (rd == NULL) {
        return mr_http_error(r, MR_E_INTERNAL, "out of memory", NULL);
    }

    ngx_memcpy(rd->id, ctx->key.rec.org, MR_ORG_ID_LEN);

    rd->list = ngx_array_create(r->pool, 4, sizeof(mr_wh_t));
    if (rd->list == NULL) {
        return mr_http_error(r, MR_E_INTERNAL, "out of memory", NULL);
    }

    return mr_wh_read(r, rd);
}


static ngx_int_t
mr_wh_deliveries(ngx_http_request_t *r, ngx_uint_t by_exec)
{
    json_t           *details;
    ngx_int_t         limit;
    ngx_str_t         v;
    mr_http_ctx_t    *ctx;
    mr_store_read_t  *rd;

    ctx = ngx_http_get_module_ctx(r, ngx_http_modelroute_module);

    limit = MR_DLV_LIST_DEFAULT;

    if (mr_http_arg(r, "limit", &v) == NGX_OK) {
        limit = ngx_atoi(v.data, v.len);

        if (limit < 1 || limit > MR_DLV_LIST_MAX) {
            details = json_array();
            mr_json_detail(details, "limit", "INVALID_VALUE",
                           "limit must be an integer from 1 to 100");
            return mr_http_error(r, MR_E_INPUT_VALIDATION,
                                 "invalid list parameters", details);
        }
    }

    if (by_exec) {
        if (mr_http_arg(r, "execution_id", &v) != NGX_OK
            || !mr_id_valid(&v, "exec_", MR_EXEC_ID_LEN))
        {
            details = json_array();
            mr_json_detail(details, "execution_id", "REQUIRED",
                           "execution_id must be an execution id");
            return mr_http_error(r, MR_E_INPUT_VALIDATION,
                                 "invalid list parameters", details);
        }

    } else {
        v = ctx->id;
    }

    rd = mr_http_read_alloc(r, MR_READ_DLV_LIST);
    if (rd == NULL) {
        return mr_http_error(r, MR_E_INTERNAL, "out of memory", NULL);
    }

    ngx_memcpy(rd->id, v.data, v.len);
    rd->len = v.len;
    rd->limit = limit;

    rd->list = ngx_array_create(r->pool, limit, sizeof(mr_dlv_t));
    if (rd->list == NULL) {
        return mr_http_error(r, MR_E_INTERNAL, "out of memory", NULL);
    }

    return mr_wh_read(r, rd);
}


static ngx_int_t
mr_wh_secret(ngx_http_request_t *r)
{
    mr_http_ctx_t    *ctx;
    mr_store_read_t  *rd;

    ctx = ngx_http_get_module_ctx(r, ngx_http_modelroute_module);

    rd = mr_http_read_alloc(r, MR_READ_SECRET);
    if (rd == NULL) {
        return mr_http_error(r, MR_E_INTERNAL, "out of memory", NULL);
    }

    ngx_memcpy(rd->id, ctx->key.rec.org, MR_ORG_ID_LEN);

    return mr_wh_read(r, rd);
}


static ngx_int_t
mr_wh_secret_got(ngx_http_request_t *r, mr_store_read_t *rd)
{
    mr_http_ctx_t  *ctx;
    mr_store_op_t  *op;

    ctx = ngx_http_get_module_ctx(r, ngx_http_modelroute_module);

    if (rd->rc == NGX_OK) {
        return mr_http_send_json(r, NGX_HTTP_OK,
                                 json_pack("{s:s#}", "secret",
                                           rd->secret.data,
                                           (int) rd->secret.len));
    }

    if (rd->rc != NGX_DECLINED) {
        return mr_http_read_error(r, rd);
    }

    /* the first use: make one (the store keeps the first of two racers) */

    op = &ctx->op;

    if (mr_store_new_secret(op->wh.secret) != NGX_OK) {
        return mr_http_error(r, MR_E_INTERNAL, "no randomness", NULL);
    }

    ngx_memcpy(op->org, ctx->key.rec.org, MR_ORG_ID_LEN);
    op->type = MR_OP_WH_SECRET;

    /* a content handler's NGX_DONE releases a reference (see mr_http_read) */

    if (ctx->run == MR_RUN_CONTENT) {
        r->main->count++;
    }

    mr_http_submit(r, op, mr_wh_done);

    return NGX_DONE;
}


static json_t *
mr_wh_json(void *elt)
{
    mr_wh_t  *wh = elt;

    return json_pack("{s:s#, s:s, s:s#, s:o, s:o, s:o, s:b, s:I, s:o, s:o}",
                     "id", wh->rec.id, (int) MR_WH_ID_LEN,
                     "object", "webhook_endpoint",
                     "url", wh->seg[MR_WH_SEG_URL].data,
                     (int) wh->seg[MR_WH_SEG_URL].len,
                     "description",
                     mr_json_raw(&wh->seg[MR_WH_SEG_DESCRIPTION], NULL),
                     "events",
                     mr_json_raw(&wh->seg[MR_WH_SEG_EVENTS], json_array()),
                     "headers",
                     mr_json_raw(&wh->seg[MR_WH_SEG_HEADERS], json_object()),
                     "is_active", (int) wh->rec.active,
                     "failure_count", (json_int_t) wh->rec.failures,
                     "last_success", mr_json_time(wh->rec.last_success_ms),
                     "created_at", mr_json_time(wh->rec.created_ms));
}


static json_t *
mr_dlv_json(void *elt)
{
    mr_dlv_t  *dlv = elt;

    static u_char  zero[MR_EXEC_ID_LEN];

    static const char  *status[] = { "pending", "pending", "succeeded",
                                     "failed" };

    return json_pack("{s:s#, s:s, s:s#, s:s#, s:o, s:o, s:o, s:s, s:o,"
                     " s:o, s:o}",
                     "id", dlv->rec.id, (int) MR_DLV_ID_LEN,
                     "object", "webhook_delivery",
                     "event_id", dlv->rec.event_id, (int) MR_EVT_ID_LEN,
                     "event_type", dlv->seg[MR_DLV_SEG_TYPE].data,
                     (int) dlv->seg[MR_DLV_SEG_TYPE].len,
                     "endpoint_id",
                     ngx_memcmp(dlv->rec.wh_id, zero, MR_WH_ID_LEN) == 0
                     ? json_null()
                     : json_stringn((char *) dlv->rec.wh_id, MR_WH_ID_LEN),
                     "url", dlv->seg[MR_DLV_SEG_URL].len
                            ? json_stringn((char *)
                                           dlv->seg[MR_DLV_SEG_URL].data,
                                           dlv->seg[MR_DLV_SEG_URL].len)
                            : json_null(),
                     "execution_id",
                     ngx_memcmp(dlv->rec.exec_id, zero, MR_EXEC_ID_LEN) == 0
                     ? json_null()
                     : json_stringn((char *) dlv->rec.exec_id,
                                    MR_EXEC_ID_LEN),
                     "status", status[dlv->rec.status <= MR_DLV_FAILED
                                      ? dlv->rec.status : 0],
                     "attempts",
                     mr_json_raw(&dlv->seg[MR_DLV_SEG_ATTEMPTS],
                                 json_array()),
                     "next_attempt_at",
                     dlv->rec.status == MR_DLV_PENDING
                     ? mr_json_time(dlv->rec.next_ms) : json_null(),
                     "created_at", mr_json_time(dlv->rec.created_ms));
}


/* a stored JSON text as a value; empty: dflt (or null) */

static json_t *
mr_json_raw(ngx_str_t *s, json_t *dflt)
{
    json_t  *j;

    if (s->len == 0) {
        return dflt ? dflt : json_null();
    }

    j = json_loadb((char *) s->data, s->len, JSON_DECODE_ANY, NULL);

    if (j == NULL) {
        /* not JSON: a plain string, such as a secret */
        j = json_stringn((char *) s->data, s->len);
    }

    json_decref(dflt);

    return j ? j : json_null();
}
