
/*
 * ModelRoute: API keys.
 */


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>

#include "ngx_http_modelroute_module.h"
#include "mr_http.h"
#include "mr_auth.h"
#include "mr_ratelimit.h"


static ngx_int_t mr_auth_parse(ngx_str_t *secret);
static ngx_int_t mr_auth_forbidden(ngx_http_request_t *r, mr_http_ctx_t *ctx,
    ngx_uint_t permission, ngx_int_t *rc);
static ngx_int_t mr_auth_trusted(ngx_http_request_t *r, mr_http_ctx_t *ctx,
    ngx_int_t *rc);
static ngx_int_t mr_auth_read(ngx_http_request_t *r, mr_http_ctx_t *ctx,
    ngx_uint_t type, u_char *id, size_t len, ngx_int_t *rc);
static void mr_auth_read_done(mr_store_read_t *rd);


/* a fresh secret and its key record (id, hash, hint, created) */

ngx_int_t
mr_auth_generate(u_char *secret, mr_key_t *key)
{
    uint32_t  crc;

    if (mr_random_id(secret, "sk_", 64) != NGX_OK
        || mr_random_id(key->rec.key_id, "key_", 24) != NGX_OK)
    {
        return NGX_ERROR;
    }

    crc = ngx_crc32_long(secret + 3, 64);
    ngx_sprintf(secret + 67, "_%08xD", crc);

    mr_sha256(key->rec.hash, secret, MR_SECRET_LEN);
    ngx_memcpy(key->rec.hint, secret + 63, 4);
    key->rec.created_ms = mr_now_ms();

    return NGX_OK;
}


static ngx_int_t
mr_auth_parse(ngx_str_t *secret)
{
    uint32_t    crc;
    ngx_str_t   hex;
    ngx_uint_t  i;
    u_char      buf[8];

    if (secret->len != MR_SECRET_LEN
        || ngx_strncmp(secret->data, "sk_", 3) != 0
        || secret->data[67] != '_')
    {
        return NGX_DECLINED;
    }

    hex.data = secret->data;
    hex.len = 67;

    /* "sk_" + 64 hex, then the 8 hex of the checksum */

    if (!mr_id_valid(&hex, "sk_", 67)) {
        return NGX_DECLINED;
    }

    for (i = 68; i < MR_SECRET_LEN; i++) {
        if (!((secret->data[i] >= '0' && secret->data[i] <= '9')
              || (secret->data[i] >= 'a' && secret->data[i] <= 'f')))
        {
            return NGX_DECLINED;
        }
    }

    crc = ngx_crc32_long(secret->data + 3, 64);
    ngx_sprintf(buf, "%08xD", crc);

    return ngx_memcmp(buf, secret->data + 68, 8) == 0 ? NGX_OK
                                                       : NGX_DECLINED;
}


/*
 * Authenticates the request into ctx->key: NGX_OK, or NGX_DECLINED with
 * the refusal (401, 403, 500, 503) sent and its rc in *rc (NGX_DONE if the
 * request waits to run again: for the key's read, mr_auth_read(); or see
 * mr_http_error()).
 */

ngx_int_t
mr_auth_request(ngx_http_request_t *r, ngx_uint_t permission, ngx_int_t *rc)
{
    ngx_int_t        found;
    ngx_str_t        secret;
    mr_loc_conf_t   *lcf;
    mr_http_ctx_t   *ctx;
    ngx_table_elt_t *h;
    u_char           hash[MR_SHA256_LEN];

    ctx = mr_http_ctx(r);
    if (ctx == NULL) {
        *rc = NGX_HTTP_INTERNAL_SERVER_ERROR;
        return NGX_DECLINED;
    }

    lcf = ngx_http_get_module_loc_conf(r, ngx_http_modelroute_module);

    if (lcf->handler == MR_HANDLER_LUA) {
        return mr_auth_trusted(r, ctx, rc);
    }

    h = r->headers_in.authorization;

    if (h == NULL || h->value.len < sizeof("Bearer ") - 1
        || ngx_strncasecmp(h->value.data, (u_char *) "Bearer ",
                           sizeof("Bearer ") - 1) != 0)
    {
        *rc = mr_http_error(r, MR_E_UNAUTHORIZED,
                            "missing \"Authorization: Bearer\" API key",
                            NULL);
        return NGX_DECLINED;
    }

    secret.data = h->value.data + sizeof("Bearer ") - 1;
    secret.len = h->value.len - (sizeof("Bearer ") - 1);

    if (mr_auth_parse(&secret) != NGX_OK) {
        *rc = mr_http_error(r, MR_E_UNAUTHORIZED, "malformed API key", NULL);
        return NGX_DECLINED;
    }

    mr_sha256(hash, secret.data, secret.len);

    if (!ctx->authed) {
        found = mr_auth_read(r, ctx, MR_READ_AUTH, hash, MR_SHA256_LEN, rc);

        if (found == NGX_DONE) {
            return NGX_DECLINED;
        }

        if (found == NGX_BUSY || found == NGX_ERROR) {
            *rc = (found == NGX_BUSY)
                  ? mr_http_read_error(r, ctx->auth)
                  : mr_http_error(r, MR_E_INTERNAL, "key lookup failed",
                                  NULL);
            return NGX_DECLINED;
        }

        if (found == NGX_DECLINED
            || !mr_memeq_ct(hash, ctx->auth->key.rec.hash, MR_SHA256_LEN))
        {
            *rc = mr_http_error(r, MR_E_UNAUTHORIZED, "unknown API key",
                                NULL);
            return NGX_DECLINED;
        }

        ctx->key = ctx->auth->key;
        ctx->rl_value = ctx->auth->rl_value;
        ctx->rl_own = ctx->auth->rl_own;
        ctx->authed = 1;
    }

    if (ctx->key.rec.revoked) {
        *rc = mr_http_error(r, MR_E_UNAUTHORIZED, "revoked API key", NULL);
        return NGX_DECLINED;
    }

    if (ctx->key.rec.valid_until_ms
        && ctx->key.rec.valid_until_ms <= mr_now_ms())
    {
        *rc = mr_http_error(r, MR_E_UNAUTHORIZED,
                            "this API key was rotated and has expired", NULL);
        return NGX_DECLINED;
    }

    /* once: a request that runs again (mr_http_error()) is one request */

    if (!ctx->counted) {
        found = mr_ratelimit_request(r);    /* NGX_DONE: within the limit */
        if (found != NGX_DONE) {
            *rc = found;
            return NGX_DECLINED;
        }

        ctx->counted = 1;
    }

    return mr_auth_forbidden(r, ctx, permission, rc);
}


/* an authenticated request (ctx->key) may do what needs permission */

ngx_int_t
mr_auth_permit(ngx_http_request_t *r, ngx_uint_t permission, ngx_int_t *rc)
{
    mr_http_ctx_t  *ctx;

    ctx = ngx_http_get_module_ctx(r, ngx_http_modelroute_module);

    return mr_auth_forbidden(r, ctx, permission, rc);
}


static ngx_int_t
mr_auth_forbidden(ngx_http_request_t *r, mr_http_ctx_t *ctx,
    ngx_uint_t permission, ngx_int_t *rc)
{
    if (permission == MR_PERM_FULL
        && ctx->key.rec.permission != MR_PERM_FULL)
    {
        *rc = mr_http_error(r, MR_E_FORBIDDEN,
                            "this operation needs a key with full "
                            "permission", NULL);
        return NGX_DECLINED;
    }

    return NGX_OK;
}


/*
 * lua-compat: the caller's own auth layer chose the account, passed as
 * the "mr_account" argument of a subrequest (never of a client request).
 */

static ngx_int_t
mr_auth_trusted(ngx_http_request_t *r, mr_http_ctx_t *ctx, ngx_int_t *rc)
{
    ngx_int_t     found;
    ngx_str_t     org;

    if (ctx->authed) {
        return NGX_OK;
    }

    if (r == r->main
        || mr_http_arg(r, "mr_account", &org) != NGX_OK
        || !mr_id_valid(&org, "org_", MR_ORG_ID_LEN))
    {
        *rc = mr_http_error(r, MR_E_UNAUTHORIZED,
                            "an account id (org_...) is required", NULL);
        return NGX_DECLINED;
    }

    found = mr_auth_read(r, ctx, MR_READ_ACCOUNT, org.data, MR_ORG_ID_LEN,
                         rc);

    if (found == NGX_DONE) {
        return NGX_DECLINED;
    }

    if (found == NGX_BUSY) {
        *rc = mr_http_read_error(r, ctx->auth);
        return NGX_DECLINED;
    }

    if (found == NGX_ERROR) {
        *rc = mr_http_error(r, MR_E_INTERNAL, "account lookup failed", NULL);
        return NGX_DECLINED;
    }

    if (found == NGX_DECLINED) {
        *rc = mr_http_error(r, MR_E_UNAUTHORIZED, "unknown account", NULL);
        return NGX_DECLINED;
    }

    ngx_memzero(&ctx->key, sizeof(mr_key_t));
    ngx_memcpy(ctx->key.rec.org, org.data, MR_ORG_ID_LEN);
    ctx->key.rec.permission = MR_PERM_FULL;
    ctx->authed = 1;

    return NGX_OK;
}


/*
 * The read that authentication needs (the key by its hash, or the
 * trusted account): its rc, or NGX_DONE with *rc NGX_DONE when it is
 * answered later: the content handler then runs again from the start
 * (mr_auth_read_done()), and this takes its answer.  Nothing else was
 * done before it.
 */

static ngx_int_t
mr_auth_read(ngx_http_request_t *r, mr_http_ctx_t *ctx, ngx_uint_t type,
    u_char *id, size_t len, ngx_int_t *rc)
{
    mr_store_read_t  *rd;

    rd = ctx->auth;

    if (ctx->auth_answered) {
        ctx->auth_answered = 0;       /* the answer of the last run */
        return rd->rc;
    }

    if (rd == NULL) {
        rd = mr_http_read_alloc(r, type);
        if (rd == NULL) {
            return NGX_ERROR;
        }

        ctx->auth = rd;
    }

    rd->type = type;
    ngx_memcpy(rd->id, id, len);

    if (mr_http_read(r, rd, mr_auth_read_done) == NGX_DONE) {
        *rc = NGX_DONE;
        return NGX_DONE;
    }

    return rd->rc;
}


static void
mr_auth_read_done(mr_store_read_t *rd)
{
    mr_http_ctx_t       *ctx;
    ngx_http_request_t  *r;

    r = mr_http_read_resume(rd);
    if (r == NULL) {
        return;
    }

    /* answered: the next run takes it */

    ctx = ngx_http_get_module_ctx(r, ngx_http_modelroute_module);
    ctx->auth_answered = 1;

    mr_http_rerun(r);
}


const char *
mr_auth_permission_name(ngx_uint_t permission)
{
    return permission == MR_PERM_FULL ? "full" : "execution";
}
