
/*
 * ModelRoute: nginx variables for log_format and map.
 *
 *   $modelroute_org           the caller's account (org_...), or the
 *                             account in an admin path
 *   $modelroute_key_id        the caller's API key id (key_...)
 *   $modelroute_execution_id  the execution answered about, or in the path
 *   $modelroute_model         its model
 *   $modelroute_status        its status in the answer
 *   $modelroute_replayed      "true" for an idempotent replay (a create,
 *                             a credit with a known reference), else "false"
 *   $modelroute_error_code    the error envelope's code
 *
 * A variable with nothing to say is not found ("-" in a log line, empty
 * with escape=json).  They are set in the requests of the API and admin
 * locations, not in lua-compat subrequests.
 */


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>

#include "ngx_http_modelroute_module.h"
#include "mr_http.h"
#include "mr_exec.h"
#include "mr_ops.h"
#include "mr_vars.h"
#include "mr_metrics.h"


#define MR_VAR_ORG       0
#define MR_VAR_KEY_ID    1
#define MR_VAR_EXEC_ID   2
#define MR_VAR_MODEL     3
#define MR_VAR_STATUS    4
#define MR_VAR_REPLAYED  5
#define MR_VAR_ERROR     6


typedef struct {
    u_char                    exec_id[MR_EXEC_ID_LEN];
    ngx_uint_t                has_exec;
    ngx_str_t                 model;
    ngx_uint_t                status;
    const char               *error;
} mr_vars_ctx_t;


static mr_vars_ctx_t *mr_vars_ctx(ngx_http_request_t *r);
static ngx_int_t mr_vars_get(ngx_http_request_t *r,
    ngx_http_variable_value_t *v, uintptr_t data);
static ngx_uint_t mr_vars_replayed(ngx_http_request_t *r);
static void mr_vars_set(ngx_http_variable_value_t *v, u_char *data,
    size_t len);


static ngx_http_variable_t  mr_vars[] = {

    { ngx_string("modelroute_org"), NULL, mr_vars_get, MR_VAR_ORG,
      NGX_HTTP_VAR_NOCACHEABLE, 0 },

    { ngx_string("modelroute_key_id"), NULL, mr_vars_get, MR_VAR_KEY_ID,
      NGX_HTTP_VAR_NOCACHEABLE, 0 },

    { ngx_string("modelroute_execution_id"), NULL, mr_vars_get,
      MR_VAR_EXEC_ID, NGX_HTTP_VAR_NOCACHEABLE, 0 },

    { ngx_string("modelroute_model"), NULL, mr_vars_get, MR_VAR_MODEL,
      NGX_HTTP_VAR_NOCACHEABLE, 0 },

    { ngx_string("modelroute_status"), NULL, mr_vars_get, MR_VAR_STATUS,
      NGX_HTTP_VAR_NOCACHEABLE, 0 },

    { ngx_string("modelroute_replayed"), NULL, mr_vars_get,
      MR_VAR_REPLAYED, NGX_HTTP_VAR_NOCACHEABLE, 0 },

    { ngx_string("modelroute_error_code"), NULL, mr_vars_get, MR_VAR_ERROR,
      NGX_HTTP_VAR_NOCACHEABLE, 0 },

      ngx_http_null_variable
};


ngx_int_t
mr_vars_add(ngx_conf_t *cf)
{
    ngx_http_variable_t  *var, *v;

    for (v = mr_vars; v->name.len; v++) {
        var = ngx_http_add_variable(cf, &v->name, v->flags);
        if (var == NULL) {
            return NGX_ERROR;
        }

        var->get_handler = v->get_handler;
        var->data = v->data;
    }

    return NGX_OK;
}


static mr_vars_ctx_t *
mr_vars_ctx(ngx_http_request_t *r)
{
    mr_vars_ctx_t  *ctx;

    ctx = ngx_http_get_module_ctx(r, ngx_http_modelroute_ops_module);

    if (ctx == NULL) {
        ctx = ngx_pcalloc(r->pool, sizeof(mr_vars_ctx_t));
        if (ctx == NULL) {
            return NULL;
        }

        ngx_http_set_ctx(r, ctx, ngx_http_modelroute_ops_module);
    }

    return ctx;
}


void
mr_vars_exec(ngx_http_request_t *r, mr_exec_t *exec)
{
    ngx_str_t      *slug;
    mr_vars_ctx_t  *ctx;

    ctx = mr_vars_ctx(r);
    if (ctx == NULL) {
        return;
    }

    ngx_memcpy(ctx->exec_id, exec->id, MR_EXEC_ID_LEN);
    ctx->has_exec = 1;
    ctx->status = exec->rec.status;

    slug = &exec->seg[MR_SEG_MODEL];

    if (ctx->model.len == slug->len
        && ngx_strncmp(ctx->model.data, slug->data, slug->len) == 0)
    {
        return;
    }

    ctx->model.data = ngx_pnalloc(r->pool, slug->len);
    if (ctx->model.data == NULL) {
        ctx->model.len = 0;
        return;
    }

    ngx_memcpy(ctx->model.data, slug->data, slug->len);
    ctx->model.len = slug->len;
}


void
mr_vars_error(ngx_http_request_t *r, const char *code)
{
    mr_vars_ctx_t  *ctx;

    mr_metrics_error(code);

    ctx = mr_vars_ctx(r);
    if (ctx) {
        ctx->error = code;
    }
}


static void
mr_vars_set(ngx_http_variable_value_t *v, u_char *data, size_t len)
{
    v->data = data;
    v->len = len;
    v->valid = 1;
    v->no_cacheable = 1;
    v->not_found = 0;
}


static ngx_int_t
mr_vars_get(ngx_http_request_t *r, ngx_http_variable_value_t *v,
    uintptr_t data)
{
    ngx_str_t      *s;
    mr_vars_ctx_t  *ctx;
    mr_http_ctx_t  *hctx;

    hctx = ngx_http_get_module_ctx(r, ngx_http_modelroute_module);
    ctx = ngx_http_get_module_ctx(r, ngx_http_modelroute_ops_module);

    v->not_found = 1;

    if (hctx == NULL) {
        return NGX_OK;
    }

    switch (data) {

    case MR_VAR_ORG:
        if (hctx->key.rec.org[0]) {
            mr_vars_set(v, hctx->key.rec.org, MR_ORG_ID_LEN);

        } else if (mr_id_valid(&hctx->id, "org_", MR_ORG_ID_LEN)) {
            mr_vars_set(v, hctx->id.data, hctx->id.len);
        }

        break;

    case MR_VAR_KEY_ID:
        if (hctx->key.rec.key_id[0]) {
            mr_vars_set(v, hctx->key.rec.key_id, MR_KEY_ID_LEN);
        }

        break;

    case MR_VAR_EXEC_ID:
        if (ctx && ctx->has_exec) {
            mr_vars_set(v, ctx->exec_id, MR_EXEC_ID_LEN);

        } else if (mr_id_valid(&hctx->id, "exec_", MR_EXEC_ID_LEN)) {
            mr_vars_set(v, hctx->id.data, hctx->id.len);
        }

        break;

    case MR_VAR_MODEL:
        if (ctx && ctx->model.len) {
            mr_vars_set(v, ctx->model.data, ctx->model.len);
        }

        break;

    case MR_VAR_STATUS:
        if (ctx && ctx->has_exec) {
            s = mr_exec_status_name(ctx->status);
            mr_vars_set(v, s->data, s->len);
        }

        break;

    case MR_VAR_REPLAYED:
        if (mr_vars_replayed(r)) {
            mr_vars_set(v, (u_char *) "true", 4);

        } else {
            mr_vars_set(v, (u_char *) "false", 5);
        }

        break;

    default: /* MR_VAR_ERROR */
        if (ctx && ctx->error) {
            mr_vars_set(v, (u_char *) ctx->error, ngx_strlen(ctx->error));
        }
    }

    return NGX_OK;
}


/* the answer's "Idempotent-Replayed: true", as the API sends it */

static ngx_uint_t
mr_vars_replayed(ngx_http_request_t *r)
{
    ngx_uint_t        i;
    ngx_list_part_t  *part;
    ngx_table_elt_t  *h;

    part = &r->headers_out.headers.part;
    h = part->elts;

    for (i = 0; /* void */ ; i++) {

        if (i >= part->nelts) {
            if (part->next == NULL) {
                break;
            }

            part = part->next;
            h = part->elts;
            i = 0;
        }

        if (h[i].hash != 0
            && h[i].key.len == sizeof("Idempotent-Replayed") - 1
            && ngx_strncasecmp(h[i].key.data, (u_char *) "Idempotent-Replayed",
                               h[i].key.len) == 0)
        {
            return 1;
        }
    }

    return 0;
}
