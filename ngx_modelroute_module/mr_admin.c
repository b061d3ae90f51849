
/*
 * ModelRoute: the operator's admin API (accounts, keys, credit).
 *
 * Paths are relative to the location's prefix, e.g. with
 * "location /admin/ { modelroute_admin; }":
 *
 *   POST /admin/accounts                    create an account
 *   GET  /admin/accounts/{org}              read it (with its limits, use)
 *   POST /admin/accounts/{org}/limits       set its limits
 *   POST /admin/accounts/{org}/keys         issue a key (secret shown once)
 *   GET  /admin/accounts/{org}/keys         list its keys
 *   POST /admin/accounts/{org}/credit       add balance
 *   POST /admin/accounts/{org}/debit        take balance
 *   GET  /admin/accounts/{org}/verify       check the ledger invariant
 *   POST /admin/keys/{key}/revoke           revoke a key
 */


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>

#include "ngx_http_modelroute_module.h"
#include "mr_http.h"
#include "mr_route.h"
#include "mr_auth.h"
#include "mr_admin.h"
#include "mr_ops.h"
#include "mr_limits.h"


#define MR_NAME_MAX  200


static ngx_int_t mr_admin_account_create(ngx_http_request_t *r);
static ngx_int_t mr_admin_account_get(ngx_http_request_t *r);
static ngx_int_t mr_admin_account_limits(ngx_http_request_t *r);
static ngx_int_t mr_admin_limits(json_t *limits, mr_store_op_t *op,
    json_t *details);
static ngx_int_t mr_admin_adjust(ngx_http_request_t *r);
static ngx_int_t mr_admin_key_create(ngx_http_request_t *r);
static ngx_int_t mr_admin_keys_list(ngx_http_request_t *r);
static ngx_int_t mr_admin_key_revoke(ngx_http_request_t *r);
static ngx_int_t mr_admin_verify(ngx_http_request_t *r);
static ngx_int_t mr_admin_routes(ngx_http_request_t *r);
static void mr_admin_done(mr_store_op_t *op);
static ngx_int_t mr_admin_read(ngx_http_request_t *r, ngx_uint_t type);
static void mr_admin_read_done(mr_store_read_t *rd);
static ngx_int_t mr_admin_got(ngx_http_request_t *r, mr_store_read_t *rd);
static ngx_int_t mr_admin_account_got(ngx_http_request_t *r,
    mr_store_read_t *rd);
static ngx_int_t mr_admin_keys_got(ngx_http_request_t *r,
    mr_store_read_t *rd);
static ngx_int_t mr_admin_verified(ngx_http_request_t *r,
    mr_store_read_t *rd);
static ngx_int_t mr_admin_routes_got(ngx_http_request_t *r,
    mr_store_read_t *rd);
static ngx_int_t mr_admin_name(ngx_http_request_t *r, json_t *body,
    ngx_str_t *name, json_t *details);
static json_t *mr_admin_limits_json(mr_quota_t *q, ngx_uint_t effective);
static json_t *mr_admin_usage_json(int64_t *used);
static json_t *mr_admin_key_json(void *elt);


/* skip: how much of the URI is the mount point; 0: the location's name */

ngx_int_t
mr_admin_handler(ngx_http_request_t *r, size_t skip)
{
    u_char                    *p, *last;
    ngx_int_t                  rc;
    ngx_str_t                  seg[4];
    ngx_uint_t                 n, post, get;
    mr_http_ctx_t             *ctx;
    ngx_http_core_loc_conf_t  *clcf;

    ctx = mr_http_ctx(r);
    if (ctx == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    clcf = ngx_http_get_module_loc_conf(r, ngx_http_core_module);

    p = r->uri.data;
    last = r->uri.data + r->uri.len;

    if (skip) {
        p += skip;

    } else if (r->uri.len >= clcf->name.len
               && ngx_strncmp(p, clcf->name.data, clcf->name.len) == 0)
    {
        p += clcf->name.len;
    }

    while (p < last && *p == '/') {
        p++;
    }

    n = mr_http_split(p, last, seg, 3);

    /* the dashboard, metrics, health, lists, rate limits: mr_ops.c */

    rc = mr_ops_admin(r, seg, n);
    if (rc != NGX_DECLINED) {
        return rc;
    }

    post = (r->method == NGX_HTTP_POST);
    get = (r->method & (NGX_HTTP_GET | NGX_HTTP_HEAD)) ? 1 : 0;

#define mr_seg_is(i, s)                                                     \
    (seg[i].len == sizeof(s) - 1                                            \
     && ngx_strncmp(seg[i].data, s, sizeof(s) - 1) == 0)

    if (n >= 1 && mr_seg_is(0, "accounts")) {

        if (n == 1) {
            /* GET and HEAD: the list, in mr_ops.c */
            if (!post) {
                return mr_http_not_allowed(r, "GET, HEAD, POST");
            }

            return mr_http_read_body(r, mr_admin_account_create);
        }

        if (!mr_id_valid(&seg[1], "org_", MR_ORG_ID_LEN)) {
            goto not_found;
        }

        ctx->id = seg[1];

        if (n == 2) {
            if (!get) {
                return mr_http_not_allowed(r, "GET, HEAD");
            }

            return mr_admin_account_get(r);
        }

        if (n != 3) {
            goto not_found;
        }

        if (mr_seg_is(2, "keys")) {
            if (post) {
                return mr_http_read_body(r, mr_admin_key_create);
            }

            if (!get) {
                return mr_http_not_allowed(r, "GET, HEAD, POST");
            }

            return mr_admin_keys_list(r);
        }

        if (mr_seg_is(2, "credit") || mr_seg_is(2, "debit")) {
            if (!post) {
                return mr_http_not_allowed(r, "POST");
            }

            ctx->op.amount = mr_seg_is(2, "debit") ? -1 : 1;

            return mr_http_read_body(r, mr_admin_adjust);
        }

        if (mr_seg_is(2, "limits")) {
            if (!post) {
                return mr_http_not_allowed(r, "POST");
            }

            return mr_http_read_body(r, mr_admin_account_limits);
        }

        if (mr_seg_is(2, "verify")) {
            if (!get) {
                return mr_http_not_allowed(r, "GET, HEAD");
            }

            return mr_admin_verify(r);
        }

        goto not_found;
    }

    if (n == 1 && mr_seg_is(0, "routes")) {
        if (!get) {
            return mr_http_not_allowed(r, "GET, HEAD");
        }

        return mr_admin_routes(r);
    }

    if (n == 3 && mr_seg_is(0, "keys") && mr_seg_is(2, "revoke")) {
        if (!mr_id_valid(&seg[1], "key_", MR_KEY_ID_LEN)) {
            goto not_found;
        }

        if (!post) {
            return mr_http_not_allowed(r, "POST");
        }

        ctx->id = seg[1];

        return mr_http_read_body(r, mr_admin_key_revoke);
    }

#undef mr_seg_is

not_found:

    return mr_http_error(r, MR_E_NOT_FOUND, "no such path", NULL);
}


static ngx_int_t
mr_admin_account_create(ngx_http_request_t *r)
{
    json_t         *body, *details, *credit;
    ngx_int_t       rc;
    mr_http_ctx_t  *ctx;
    mr_store_op_t  *op;

    ctx = ngx_http_get_module_ctx(r, ngx_http_modelroute_module);
    op = &ctx->op;

    if (ctx->body.len == 0) {
        body = json_object();

    } else {
        body = mr_http_parse_object(r, NULL, &rc);
        if (body == NULL) {
            return rc;
        }
    }

    details = json_array();

    if (mr_admin_name(r, body, &op->account.name, details) == NGX_ERROR) {
        json_decref(body);
        json_decref(details);
        return mr_http_error(r, MR_E_INTERNAL, "out of memory", NULL);
    }

    if (mr_admin_limits(json_object_get(body, "limits"), op, details)
        != NGX_OK)
    {
        json_decref(body);
        json_decref(details);
        return mr_http_error(r, MR_E_INTERNAL, "out of memory", NULL);
    }

    credit = json_object_get(body, "credit");

    if (credit && !json_is_null(credit)
        && (!json_is_string(credit)
            || mr_money_parse((u_char *) json_string_value(credit),
                              json_string_length(credit),
                              &op->account.rec.balance)
               != NGX_OK))
    {
        mr_json_detail(details, "credit", "INVALID_AMOUNT",
                       "credit must be a decimal string such as \"10.00\"");
    }

    json_decref(body);

    if (json_array_size(details)) {
        return mr_http_error(r, MR_E_INPUT_VALIDATION,
                             "the request is not valid", details);
    }

    json_decref(details);

    if (mr_random_id(op->account.id, "org_", 24) != NGX_OK) {
        return mr_http_error(r, MR_E_INTERNAL, "no randomness", NULL);
    }

    op->account.rec.credited = op->account.rec.balance;
    op->account.rec.created_ms = mr_now_ms();

    op->type = MR_OP_ACCOUNT_CREATE;

    mr_http_submit(r, op, mr_admin_done);

    return NGX_DONE;
}


static ngx_int_t
mr_admin_account_get(ngx_http_request_t *r)
{
    return mr_admin_read(r, MR_READ_ACCOUNT);
}


/*
 * A read of the account in the path, and its continuation
 * (mr_admin_got()), at once or after an event of the store
 */

static ngx_int_t
mr_admin_read(ngx_http_request_t *r, ngx_uint_t type)
{
    mr_http_ctx_t    *ctx;
    mr_store_read_t  *rd;

    ctx = ngx_http_get_module_ctx(r, ngx_http_modelroute_module);

    rd = mr_http_read_alloc(r, type);
    if (rd == NULL) {
        return mr_http_error(r, MR_E_INTERNAL, "out of memory", NULL);
    }

    if (type == MR_READ_ROUTES) {
        rd->states = ngx_pcalloc(r->pool,
                                 (mr_main_conf()->routes.nelts + 1)
                                 * sizeof(mr_route_state_t));
        if (rd->states == NULL) {
            return mr_http_error(r, MR_E_INTERNAL, "out of memory", NULL);
        }

    } else {
        ngx_memcpy(rd->id, ctx->id.data, MR_ORG_ID_LEN);
    }

    if (type == MR_READ_KEYS) {
        rd->list = ngx_array_create(r->pool, 4, sizeof(mr_key_t));
        if (rd->list == NULL) {
            return mr_http_error(r, MR_E_INTERNAL, "out of memory", NULL);
        }
    }

    if (mr_http_read(r, rd, mr_admin_read_done) == NGX_DONE) {
        return NGX_DONE;
    }

    return mr_admin_got(r, rd);
}


static void
mr_admin_read_done(mr_store_read_t *rd)
{
    ngx_http_request_t  *r;

    r = mr_http_read_resume(rd);
    if (r == NULL) {
        return;
    }

    mr_http_continued(r, mr_admin_got(r, rd));
}


static ngx_int_t
mr_admin_got(ngx_http_request_t *r, mr_store_read_t *rd)
{
    if (rd->type != MR_READ_ROUTES) {
        if (rd->rc == NGX_DECLINED) {
            return mr_http_error(r, MR_E_NOT_FOUND, "no such account",
                                 NULL);
        }
    }

    if (rd->rc != NGX_OK) {
        return mr_http_read_error(r, rd);
    }

    switch (rd->type) {

    case MR_READ_ACCOUNT:
        return mr_admin_account_got(r, rd);

    case MR_READ_KEYS:
        return mr_admin_keys_got(r, rd);

    case MR_READ_VERIFY:
        return mr_admin_verified(r, rd);

    default: /* MR_READ_ROUTES */
        return mr_admin_routes_got(r, rd);
    }
}


static ngx_int_t
mr_admin_account_got(ngx_http_request_t *r, mr_store_read_t *rd)
{
    return mr_http_send_json(r, NGX_HTTP_OK,
                             mr_admin_account_json(&rd->account, &rd->quota));
}


/* POST /admin/accounts/{org}/limits {"bytes": N | null, ...} */

static ngx_int_t
mr_admin_account_limits(ngx_http_request_t *r)
{
    json_t         *body, *details;
    ngx_int_t       rc;
    mr_http_ctx_t  *ctx;
    mr_store_op_t  *op;

    ctx = ngx_http_get_module_ctx(r, ngx_http_modelroute_module);
    op = &ctx->op;

    body = mr_http_parse_object(r, NULL, &rc);
    if (body == NULL) {
        return rc;
    }

    details = json_array();

    if (mr_admin_limits(body, op, details) != NGX_OK) {
        json_decref(body);
        json_decref(details);
        return mr_http_error(r, MR_E_INTERNAL, "out of memory", NULL);
    }

    json_decref(body);

    if (json_array_size(details)) {
        return mr_http_error(r, MR_E_INPUT_VALIDATION,
                             "the request is not valid", details);
    }

    json_decref(details);

    ngx_memcpy(op->org, ctx->id.data, MR_ORG_ID_LEN);

    op->type = MR_OP_ACCOUNT_LIMITS;

    mr_http_submit(r, op, mr_admin_done);

    return NGX_DONE;
}


/*
 * An object of an account's limits, each a non-negative integer (bytes,
 * or a count) or null for the default; those absent do not change.
 * Into op->quota_mask and op->quota_set.
 */

static ngx_int_t
mr_admin_limits(json_t *limits, mr_store_op_t *op, json_t *details)
{
    json_t      *v;
    ngx_uint_t   i;
    u_char       field[64];

    if (limits == NULL || json_is_null(limits)) {
        return NGX_OK;
    }

    if (!json_is_object(limits)) {
        mr_json_detail(details, "limits", "INVALID_TYPE",
                       "limits must be an object");
        return NGX_OK;
    }

    for (i = 0; i < MR_LIMIT_N; i++) {
        v = json_object_get(limits, mr_limit_names[i]);

        if (v == NULL) {
            continue;
        }

        op->quota_mask |= 1 << i;

        if (json_is_null(v)) {
            op->quota_set[i] = -1;
            continue;
        }

        if (json_is_integer(v)
            && mr_limit_parse(i, json_integer_value(v)) == NGX_OK)
        {
            op->quota_set[i] = json_integer_value(v);
            continue;
        }

        ngx_sprintf(field, "limits.%s%Z", mr_limit_names[i]);

        if (mr_json_detail(details, (char *) field, "INVALID_VALUE",
                           "a limit is an integer of at least 0, or null "
                           "for the default")
            == NULL)
        {
            return NGX_ERROR;
        }
    }

    return NGX_OK;
}


static ngx_int_t
mr_admin_adjust(ngx_http_request_t *r)
{
    u_char         *ref;
    json_t         *body, *details, *amount, *reference;
    int64_t         value;
    ngx_int_t       rc;
    mr_http_ctx_t  *ctx;
    mr_store_op_t  *op;

    ctx = ngx_http_get_module_ctx(r, ngx_http_modelroute_module);
    op = &ctx->op;

    body = mr_http_parse_object(r, NULL, &rc);
    if (body == NULL) {
        return rc;
    }

    details = json_array();

    amount = json_object_get(body, "amount");

    if (amount == NULL) {
        mr_json_detail(details, "amount", "REQUIRED", "amount is required");

    } else if (!json_is_string(amount)
               || mr_money_parse((u_char *) json_string_value(amount),
                                 json_string_length(amount), &value)
                  != NGX_OK
               || value == 0)
    {
        mr_json_detail(details, "amount", "INVALID_AMOUNT",
                       "amount must be a positive decimal string such as "
                       "\"10.00\", at most 6 decimal places");

    } else {
        op->amount *= value;
    }

    reference = json_object_get(body, "reference");

    if (reference && !json_is_null(reference)) {
        if (!json_is_string(reference)
            || json_string_length(reference) == 0
            || json_string_length(reference) > 255)
        {
            mr_json_detail(details, "reference", "INVALID_VALUE",
                           "reference must be a string of 1-255 bytes");

        } else {
            ref = ngx_pnalloc(r->pool, json_string_length(reference));
            if (ref == NULL) {
                json_decref(body);
                json_decref(details);
                return mr_http_error(r, MR_E_INTERNAL, "out of memory",
                                     NULL);
            }

            op->reference.len = json_string_length(reference);
            op->reference.data = ref;
            ngx_memcpy(ref, json_string_value(reference),
                       op->reference.len);
        }
    }

    json_decref(body);

    if (json_array_size(details)) {
        return mr_http_error(r, MR_E_INPUT_VALIDATION,
                             "the request is not valid", details);
    }

    json_decref(details);

    ngx_memcpy(op->org, ctx->id.data, MR_ORG_ID_LEN);

    op->type = MR_OP_ACCOUNT_ADJUST;

    mr_http_submit(r, op, mr_admin_done);

    return NGX_DONE;
}


static ngx_int_t
mr_admin_key_create(ngx_http_request_t *r)
{
    json_t         *body, *details, *perm;
    ngx_int_t       rc;
    mr_http_ctx_t  *ctx;
    mr_store_op_t  *op;

    ctx = ngx_http_get_module_ctx(r, ngx_http_modelroute_module);
    op = &ctx->op;

    if (ctx->body.len == 0) {
        body = json_object();

    } else {
        body = mr_http_parse_object(r, NULL, &rc);
        if (body == NULL) {
            return rc;
        }
    }

    details = json_array();

    if (mr_admin_name(r, body, &op->key.name, details) == NGX_ERROR) {
        json_decref(body);
        json_decref(details);
        return mr_http_error(r, MR_E_INTERNAL, "out of memory", NULL);
    }

    perm = json_object_get(body, "permission");

    if (perm == NULL) {
        mr_json_detail(details, "permission", "REQUIRED",
                       "permission is required: \"full\" or "
                       "\"execution\"");

    } else if (json_is_string(perm)
               && ngx_strcmp(json_string_value(perm), "execution") == 0)
    {
        op->key.rec.permission = MR_PERM_EXECUTION;

    } else if (json_is_string(perm)
               && ngx_strcmp(json_string_value(perm), "full") == 0)
    {
        op->key.rec.permission = MR_PERM_FULL;

    } else {
        mr_json_detail(details, "permission", "INVALID_VALUE",
                       "permission must be \"full\" or \"execution\"");
    }

    json_decref(body);

    if (json_array_size(details)) {
        return mr_http_error(r, MR_E_INPUT_VALIDATION,
                             "the request is not valid", details);
    }

    json_decref(details);

    if (mr_auth_generate(ctx->secret, &op->key) != NGX_OK) {
        return mr_http_error(r, MR_E_INTERNAL, "no randomness", NULL);
    }

    ngx_memcpy(op->key.rec.org, ctx->id.data, MR_ORG_ID_LEN);

    op->type = MR_OP_KEY_CREATE;

    mr_http_submit(r, op, mr_admin_done);

    return NGX_DONE;
}


static ngx_int_t
mr_admin_keys_list(ngx_http_request_t *r)
{
    return mr_admin_read(r, MR_READ_KEYS);
}


static ngx_int_t
mr_admin_keys_got(ngx_http_request_t *r, mr_store_read_t *rd)
{
    return mr_http_send_list(r, rd->list, mr_admin_key_json);
}


static ngx_int_t
mr_admin_key_revoke(ngx_http_request_t *r)
{
    mr_http_ctx_t  *ctx;
    mr_store_op_t  *op;

    ctx = ngx_http_get_module_ctx(r, ngx_http_modelroute_module);
    op = &ctx->op;

    ngx_memcpy(op->key_id, ctx->id.data, MR_KEY_ID_LEN);

    op->type = MR_OP_KEY_REVOKE;

    mr_http_submit(r, op, mr_admin_done);

    return NGX_DONE;
}


static ngx_int_t
mr_admin_verify(ngx_http_request_t *r)
{
    return mr_admin_read(r, MR_READ_VERIFY);
}


static ngx_int_t
mr_admin_verified(ngx_http_request_t *r, mr_store_read_t *rd)
{
    json_t        *j;
    mr_verify_t    vf;
    mr_account_t   acct;

    vf = rd->verify;
    acct = rd->account;

    j = json_pack("{s:b, s:o, s:o, s:o, s:o, s:o, s:o, s:I, s:I, s:o, s:o}",
                  "ok", (int) (vf.open_holds == acct.rec.held
                               && acct.rec.balance == acct.rec.credited
                                                      - acct.rec.debited
                                                      - acct.rec.charged
                               && acct.rec.held <= acct.rec.balance
                               && acct.rec.held >= 0
                               && ngx_memcmp(vf.counted, vf.quota.used,
                                             sizeof(vf.counted)) == 0),
                  "balance", mr_json_money(acct.rec.balance),
                  "held", mr_json_money(acct.rec.held),
                  "open_holds", mr_json_money(vf.open_holds),
                  "credited", mr_json_money(acct.rec.credited),
                  "debited", mr_json_money(acct.rec.debited),
                  "charged", mr_json_money(acct.rec.charged),
                  "executions", (json_int_t) vf.executions,
                  "open_executions", (json_int_t) vf.open_executions,
                  "usage", mr_admin_usage_json(vf.quota.used),
                  "usage_counted", mr_admin_usage_json(vf.counted));

    return mr_http_send_json(r, NGX_HTTP_OK, j);
}


static void
mr_admin_done(mr_store_op_t *op)
{
    json_t              *j;
    ngx_int_t            rc;
    ngx_str_t            value;
    mr_http_ctx_t       *ctx;
    ngx_http_request_t  *r;

    r = mr_http_resume(op);
    if (r == NULL) {
        return;
    }

    ctx = ngx_http_get_module_ctx(r, ngx_http_modelroute_module);

    if (op->result == MR_R_REPLAYED) {
        ngx_str_set(&value, "true");
        (void) mr_http_header(r, "Idempotent-Replayed", &value);

    } else if (op->result != MR_R_OK
               && !(op->result == MR_R_NOOP && op->type == MR_OP_KEY_REVOKE))
    {
        mr_http_finalize(r, mr_http_op_error(r, op));
        return;
    }

    switch (op->type) {

    case MR_OP_ACCOUNT_CREATE:
        rc = mr_http_send_json(r, NGX_HTTP_CREATED,
                               mr_admin_account_json(&op->account,
                                                     &op->quota));
        break;

    case MR_OP_ACCOUNT_ADJUST:
    case MR_OP_ACCOUNT_LIMITS:
        rc = mr_http_send_json(r, NGX_HTTP_OK,
                               mr_admin_account_json(&op->account,
                                                     &op->quota));
        break;

    case MR_OP_KEY_CREATE:
        j = mr_admin_key_json(&op->key);
        if (j) {
            json_object_set_new(j, "key",
                                json_stringn((char *) ctx->secret,
                                             MR_SECRET_LEN));
        }

        rc = mr_http_send_json(r, NGX_HTTP_CREATED, j);
        break;

    default: /* MR_OP_KEY_REVOKE */
        rc = mr_http_send_json(r, NGX_HTTP_OK, mr_admin_key_json(&op->old_key));
    }

    mr_http_finalize(r, rc);
}


/* an optional "name": a string of at most 200 bytes, kept as JSON text */

static ngx_int_t
mr_admin_name(ngx_http_request_t *r, json_t *body, ngx_str_t *name,
    json_t *details)
{
    json_t  *v;

    ngx_str_null(name);

    v = json_object_get(body, "name");

    if (v == NULL || json_is_null(v)) {
        return NGX_OK;
    }

    if (!json_is_string(v) || json_string_length(v) > MR_NAME_MAX) {
        mr_json_detail(details, "name", "INVALID_VALUE",
                       "name must be a string of at most 200 bytes");
        return NGX_DECLINED;
    }

    return mr_json_dump(r->pool, v, name) == NGX_OK ? NGX_OK : NGX_ERROR;
}


json_t *
mr_admin_account_json(mr_account_t *acct, mr_quota_t *q)
{
    return json_pack("{s:s#, s:s, s:o, s:o, s:o, s:o, s:o, s:o, s:o, s:s,"
                     " s:o, s:o, s:o, s:o}",
                     "id", acct->id, (int) MR_ORG_ID_LEN,
                     "object", "account",
                     "name", acct->name.len
                             ? json_loadb((char *) acct->name.data,
                                          acct->name.len, JSON_DECODE_ANY,
                                          NULL)
                             : json_null(),
                     "balance", mr_json_money(acct->rec.balance),
                     "held", mr_json_money(acct->rec.held),
                     "available", mr_json_money(acct->rec.balance
                                                - acct->rec.held),
                     "credited", mr_json_money(acct->rec.credited),
                     "debited", mr_json_money(acct->rec.debited),
                     "charged", mr_json_money(acct->rec.charged),
                     "currency", "USD",
                     "created_at", mr_json_time(acct->rec.created_ms),
                     "limits", mr_admin_limits_json(q, 1),
                     "limit_overrides", mr_admin_limits_json(q, 0),
                     "usage", mr_admin_usage_json(q->used));
}


/* the limits in force (effective), or the account's own (null: none) */

static json_t *
mr_admin_limits_json(mr_quota_t *q, ngx_uint_t effective)
{
    json_t      *j;
    ngx_uint_t   i;

    j = json_object();

    for (i = 0; j && i < MR_LIMIT_N; i++) {
        json_object_set_new(j, mr_limit_names[i],
            effective ? json_integer((json_int_t)
                                     mr_limit_of(mr_main_conf(), q, i))
            : q->limit[i] >= 0 ? json_integer((json_int_t) q->limit[i])
                               : json_null());
    }

    return j;
}


static json_t *
mr_admin_usage_json(int64_t *used)
{
    json_t      *j;
    ngx_uint_t   i;

    j = json_object();

    for (i = 0; j && i < MR_LIMIT_N; i++) {
        json_object_set_new(j, mr_limit_names[i],
                            json_integer((json_int_t) used[i]));
    }

    return j;
}


static json_t *
mr_admin_key_json(void *elt)
{
    mr_key_t  *key = elt;

    u_char  hint[sizeof("sk_...") + 4];

    ngx_sprintf(hint, "sk_...%*s", (size_t) 4, key->rec.hint);

    return json_pack("{s:s#, s:s, s:s#, s:s, s:o, s:s#, s:b, s:o, s:o}",
                     "id", key->rec.key_id, (int) MR_KEY_ID_LEN,
                     "object", "api_key",
                     "account", key->rec.org, (int) MR_ORG_ID_LEN,
                     "permission",
                     mr_auth_permission_name(key->rec.permission),
                     "name", key->name.len
                             ? json_loadb((char *) key->name.data,
                                          key->name.len, JSON_DECODE_ANY,
                                          NULL)
                             : json_null(),
                     "hint", hint, (int) (sizeof("sk_...") + 3),
                     "revoked", (int) key->rec.revoked,
                     "created_at", mr_json_time(key->rec.created_ms),
                     "valid_until", mr_json_time(key->rec.valid_until_ms));
}


/* GET /admin/routes: each route's breaker, slots and counters */

static ngx_int_t
mr_admin_routes(ngx_http_request_t *r)
{
    return mr_admin_read(r, MR_READ_ROUTES);
}


static ngx_int_t
mr_admin_routes_got(ngx_http_request_t *r, mr_store_read_t *rd)
{
    json_t            *list, *item;
    int64_t            now;
    ngx_uint_t         i;
    const char        *state;
    mr_route_t        *rt;
    mr_main_conf_t    *mcf;
    mr_route_state_t  *st;

    mcf = mr_main_conf();
    rt = mcf->routes.elts;
    st = rd->states;

    list = json_array();
    if (list == NULL) {
        return mr_http_error(r, MR_E_INTERNAL, "out of memory", NULL);
    }

    now = mr_now_ms();

    for (i = 0; i < mcf->routes.nelts; i++) {
        state = (st[i].open_until_ms == 0) ? "closed"
                : (st[i].open_until_ms > now) ? "open" : "half_open";

        item = json_pack("{s:s#, s:s#, s:s, s:I, s:I, s:I, s:s, s:I, "
                         "s:o, s:o, s:I, s:I}",
                         "name", rt[i].name.data, (int) rt[i].name.len,
                         "location", rt[i].location.data,
                         (int) rt[i].location.len,
                         "protocol", mr_route_protocol_name(rt[i].protocol),
                         "max_concurrency",
                         (json_int_t) rt[i].max_concurrency,
                         "timeout_ms", (json_int_t) rt[i].timeout,
                         "in_flight", (json_int_t) st[i].inflight,
                         "breaker", state,
                         "consecutive_failures",
                         (json_int_t) st[i].failures,
                         "open_until",
                         st[i].open_until_ms > now
                         ? mr_json_time(st[i].open_until_ms) : json_null(),
                         "paused_until",
                         st[i].paused_until_ms > now
                         ? mr_json_time(st[i].paused_until_ms) : json_null(),
                         "attempts", (json_int_t) st[i].attempts,
                         "failures", (json_int_t) st[i].failed);

        if (item == NULL || json_array_append_new(list, item) != 0) {
            json_decref(list);
            return mr_http_error(r, MR_E_INTERNAL, "out of memory", NULL);
        }
    }

    return mr_http_send_json(r, NGX_HTTP_OK,
                             json_pack("{s:o}", "data", list));
}
