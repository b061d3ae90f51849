
/*
 * ModelRoute: operating it.  ngx_http_modelroute_ops_module, a second
 * nginx module in the module's shared object: its own directives, request
 * context (the variables) and process hook, so that the gateway's own
 * module needs only a few calls into it.
 *
 *   modelroute_metrics;                    a location: Prometheus metrics
 *   modelroute_health;                     a location: readiness, JSON
 *   modelroute_rate_limit N time [zone=size] | off;      per account
 *
 * The admin location serves the same metrics and health answers at
 * {admin}/metrics and {admin}/health, the dashboard at {admin}/, the
 * accounts list, the recent failed deliveries and the accounts' rate-limit
 * overrides (mr_ops_admin(), called by mr_admin.c).
 */


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>

#include "ngx_http_modelroute_module.h"
#include "mr_http.h"
#include "mr_ops.h"
#include "mr_metrics.h"
#include "mr_health.h"
#include "mr_ratelimit.h"
#include "mr_vars.h"
#include "mr_dashboard.h"
#include "mr_admin_lists.h"


static ngx_int_t mr_ops_preconfiguration(ngx_conf_t *cf);
static void *mr_ops_create_main_conf(ngx_conf_t *cf);
static char *mr_ops_init_main_conf(ngx_conf_t *cf, void *conf);
static void *mr_ops_create_loc_conf(ngx_conf_t *cf);
static char *mr_ops_merge_loc_conf(ngx_conf_t *cf, void *parent,
    void *child);
static char *mr_ops_mount(ngx_conf_t *cf, ngx_command_t *cmd, void *conf);
static ngx_int_t mr_ops_handler(ngx_http_request_t *r);
static mr_ops_main_conf_t *mr_ops_cycle_conf(ngx_cycle_t *cycle);
static ngx_int_t mr_ops_init_module(ngx_cycle_t *cycle);
static ngx_int_t mr_ops_init_process(ngx_cycle_t *cycle);


static ngx_command_t  mr_ops_commands[] = {

    { ngx_string("modelroute_metrics"),
      NGX_HTTP_LOC_CONF|NGX_CONF_NOARGS,
      mr_ops_mount,
      NGX_HTTP_LOC_CONF_OFFSET,
      0,
      (void *) MR_OPS_METRICS },

    { ngx_string("modelroute_health"),
      NGX_HTTP_LOC_CONF|NGX_CONF_NOARGS,
      mr_ops_mount,
      NGX_HTTP_LOC_CONF_OFFSET,
      0,
      (void *) MR_OPS_HEALTH },

    { ngx_string("modelroute_rate_limit"),
      NGX_HTTP_MAIN_CONF|NGX_CONF_TAKE123,
      mr_ratelimit_directive,
      NGX_HTTP_MAIN_CONF_OFFSET,
      0,
      NULL },

      ngx_null_command
};


static ngx_http_module_t  mr_ops_module_ctx = {
    mr_ops_preconfiguration,               /* preconfiguration */
    NULL,                                  /* postconfiguration */

    mr_ops_create_main_conf,               /* create main configuration */
    mr_ops_init_main_conf,                 /* init main configuration */

    NULL,                                  /* create server configuration */
    NULL,                                  /* merge server configuration */

    mr_ops_create_loc_conf,                /* create location configuration */
    mr_ops_merge_loc_conf                  /* merge location configuration */
};


ngx_module_t  ngx_http_modelroute_ops_module = {
    NGX_MODULE_V1,
    &mr_ops_module_ctx,                    /* module context */
    mr_ops_commands,                       /* module directives */
    NGX_HTTP_MODULE,                       /* module type */
    NULL,                                  /* init master */
    mr_ops_init_module,                    /* init module */
    mr_ops_init_process,                   /* init process */
    NULL,                                  /* init thread */
    NULL,                                  /* exit thread */
    NULL,                                  /* exit process */
    NULL,                                  /* exit master */
    NGX_MODULE_V1_PADDING
};


static mr_ops_main_conf_t  *mr_ops_running;


mr_ops_main_conf_t *
mr_ops_conf(void)
{
    return mr_ops_running;
}


/*
 * The admin location's paths served here (seg: the path split at "/",
 * n segments, n > 3: more):
 *
 *   GET  {admin}/  or  {admin}/dashboard      the dashboard
 *   GET  {admin}/metrics                      Prometheus metrics
 *   GET  {admin}/health                       readiness
 *   GET  {admin}/accounts                     the accounts, paginated
 *   GET  {admin}/deliveries                   recent failed deliveries
 *   GET, PUT, DELETE {admin}/accounts/{org}/rate_limit
 */

ngx_int_t
mr_ops_admin(ngx_http_request_t *r, ngx_str_t *seg, ngx_uint_t n)
{
#define mr_seg_is(i, s)                                                     \
    (seg[i].len == sizeof(s) - 1                                            \
     && ngx_strncmp(seg[i].data, s, sizeof(s) - 1) == 0)

    if (n == 1 && (seg[0].len == 0 || mr_seg_is(0, "dashboard"))) {
        return mr_dashboard_handler(r);
    }

    if (n == 1 && mr_seg_is(0, "metrics")) {
        return mr_metrics_handler(r);
    }

    if (n == 1 && mr_seg_is(0, "health")) {
        return mr_health_handler(r);
    }

    if (n == 1 && mr_seg_is(0, "deliveries")) {
        return mr_admin_lists_deliveries(r);
    }

    if (n == 1 && mr_seg_is(0, "accounts")
        && (r->method & (NGX_HTTP_GET | NGX_HTTP_HEAD)))
    {
        return mr_admin_lists_accounts(r);
    }

    if (n == 3 && mr_seg_is(0, "accounts") && mr_seg_is(2, "rate_limit")) {
        if (!mr_id_valid(&seg[1], "org_", MR_ORG_ID_LEN)) {
            return mr_http_error(r, MR_E_NOT_FOUND, "no such path", NULL);
        }

        return mr_ratelimit_admin(r, &seg[1]);
    }

#undef mr_seg_is

    return NGX_DECLINED;
}


/* an answer that is not JSON: the metrics, the dashboard */

ngx_int_t
mr_ops_send(ngx_http_request_t *r, ngx_uint_t status, ngx_str_t *type,
    ngx_str_t *body)
{
    ngx_int_t       rc;
    ngx_buf_t      *b;
    ngx_str_t       cc = ngx_string("no-store");
    ngx_str_t       rid;
    ngx_chain_t     out;
    mr_http_ctx_t  *ctx;

    if (ngx_http_discard_request_body(r) != NGX_OK) {
        r->keepalive = 0;
    }

    ctx = mr_http_ctx(r);
    if (ctx == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    /* every answer says its request id, as the JSON ones do */

    rid.data = ctx->request_id;
    rid.len = MR_REQ_ID_LEN;

    if (mr_http_header(r, "X-Request-Id", &rid) != NGX_OK
        || mr_http_header(r, "Cache-Control", &cc) != NGX_OK)
    {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    ctx->answered = 1;

    r->headers_out.status = status;
    r->headers_out.content_type = *type;
    r->headers_out.content_type_len = type->len;
    r->headers_out.content_length_n = body->len;

    rc = ngx_http_send_header(r);

    if (rc == NGX_ERROR || rc > NGX_OK || r->header_only) {
        return rc;
    }

    b = ngx_calloc_buf(r->pool);
    if (b == NULL) {
        return NGX_ERROR;
    }

    b->pos = body->data;
    b->last = body->data + body->len;
    b->memory = 1;
    b->last_buf = (r == r->main) ? 1 : 0;
    b->last_in_chain = 1;

    out.buf = b;
    out.next = NULL;

    return ngx_http_output_filter(r, &out);
}


static ngx_int_t
mr_ops_handler(ngx_http_request_t *r)
{
    ngx_int_t           rc;
    mr_http_ctx_t      *ctx;
    mr_ops_loc_conf_t  *lcf;

    lcf = ngx_http_get_module_loc_conf(r, ngx_http_modelroute_ops_module);

    /*
     * a content handler, as ngx_http_modelroute_handler() is: a read the
     * store answers later holds the request (mr_http_read())
     */

    ctx = mr_http_ctx(r);
    if (ctx == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    ctx->run = MR_RUN_CONTENT;

    if (lcf->handler == MR_OPS_HEALTH) {
        rc = mr_health_handler(r);

    } else {
        rc = mr_metrics_handler(r);
    }

    ctx->run = MR_RUN_NONE;

    return rc;
}


static ngx_int_t
mr_ops_preconfiguration(ngx_conf_t *cf)
{
    return mr_vars_add(cf);
}


static void *
mr_ops_create_main_conf(ngx_conf_t *cf)
{
    mr_ops_main_conf_t  *ocf;

    ocf = ngx_pcalloc(cf->pool, sizeof(mr_ops_main_conf_t));
    if (ocf == NULL) {
        return NULL;
    }

    ocf->rl_requests = NGX_CONF_UNSET_UINT;

    return ocf;
}


static char *
mr_ops_init_main_conf(ngx_conf_t *cf, void *conf)
{
    mr_ops_main_conf_t *ocf = conf;

    ocf->mcf = ngx_http_conf_get_module_main_conf(cf,
                                                  ngx_http_modelroute_module);

    if (ocf->rl_requests == NGX_CONF_UNSET_UINT) {
        ocf->rl_requests = 0;
    }

    if (!ocf->mcf->used) {
        return NGX_CONF_OK;
    }

    if (mr_metrics_zone_add(cf, ocf) != NGX_OK) {
        return NGX_CONF_ERROR;
    }

    if (ocf->rl_requests && mr_ratelimit_zone_add(cf, ocf) != NGX_OK) {
        return NGX_CONF_ERROR;
    }

    return NGX_CONF_OK;
}


static void *
mr_ops_create_loc_conf(ngx_conf_t *cf)
{
    mr_ops_loc_conf_t  *lcf;

    lcf = ngx_pcalloc(cf->pool, sizeof(mr_ops_loc_conf_t));
    if (lcf == NULL) {
        return NULL;
    }

    lcf->handler = NGX_CONF_UNSET_UINT;

    return lcf;
}


static char *
mr_ops_merge_loc_conf(ngx_conf_t *cf, void *parent, void *child)
{
    mr_ops_loc_conf_t *prev = parent;
    mr_ops_loc_conf_t *conf = child;

    ngx_conf_merge_uint_value(conf->handler, prev->handler, MR_OPS_NONE);

    return NGX_CONF_OK;
}


/* modelroute_metrics; modelroute_health; */

static char *
mr_ops_mount(ngx_conf_t *cf, ngx_command_t *cmd, void *conf)
{
    mr_ops_loc_conf_t *lcf = conf;

    mr_main_conf_t            *mcf;
    ngx_http_core_loc_conf_t  *clcf;

    if (lcf->handler != NGX_CONF_UNSET_UINT) {
        return "is duplicate";
    }

    lcf->handler = (ngx_uint_t) cmd->post;

    /* the store is opened, and its settings are checked, as for the API */

    mcf = ngx_http_conf_get_module_main_conf(cf, ngx_http_modelroute_module);
    mcf->used = 1;

    clcf = ngx_http_conf_get_module_loc_conf(cf, ngx_http_core_module);
    clcf->handler = mr_ops_handler;

    return NGX_CONF_OK;
}


static mr_ops_main_conf_t *
mr_ops_cycle_conf(ngx_cycle_t *cycle)
{
    mr_ops_main_conf_t  *ocf;

    if (cycle->conf_ctx[ngx_http_module.index] == NULL) {
        return NULL;
    }

    ocf = ngx_http_cycle_get_module_main_conf(cycle,
                                              ngx_http_modelroute_ops_module);

    return (ocf && ocf->mcf && ocf->mcf->used) ? ocf : NULL;
}


static ngx_int_t
mr_ops_init_module(ngx_cycle_t *cycle)
{
    mr_ops_running = mr_ops_cycle_conf(cycle);

    return NGX_OK;
}


static ngx_int_t
mr_ops_init_process(ngx_cycle_t *cycle)
{
    mr_ops_running = mr_ops_cycle_conf(cycle);

    if (mr_ops_running == NULL) {
        return NGX_OK;
    }

    mr_metrics_init_process(cycle, mr_ops_running);

    return mr_health_init_process(cycle, mr_ops_running);
}
