
/*
 * ModelRoute for nginx: directives, configuration and process hooks.
 */


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>

#include "ngx_http_modelroute_module.h"
#include "mr_util.h"
#include "mr_store.h"
#include "mr_http.h"
#include "mr_api.h"
#include "mr_admin.h"
#include "mr_lua.h"
#include "mr_sweeper.h"
#include "mr_webhook.h"
#include "mr_webhook_addr.h"
#include "mr_resolve.h"
#include "mr_curl.h"
#include "mr_route.h"
#include "mr_dispatch.h"
#include "mr_simulator.h"
#include "mr_limits.h"


#define MR_MAP_SIZE_MIN  (1024 * 1024)


#if (NGX_THREADS)
extern ngx_module_t  ngx_thread_pool_module;   /* not in its header */
#endif


static ngx_int_t ngx_http_modelroute_postconfiguration(ngx_conf_t *cf);
static void *ngx_http_modelroute_create_main_conf(ngx_conf_t *cf);
static char *ngx_http_modelroute_init_main_conf(ngx_conf_t *cf, void *conf);
static void *ngx_http_modelroute_create_loc_conf(ngx_conf_t *cf);
static char *ngx_http_modelroute_merge_loc_conf(ngx_conf_t *cf, void *parent,
    void *child);
static char *ngx_http_modelroute_model(ngx_conf_t *cf, ngx_command_t *cmd,
    void *conf);
static char *ngx_http_modelroute_mount(ngx_conf_t *cf, ngx_command_t *cmd,
    void *conf);
static char *ngx_http_modelroute_map_size(ngx_conf_t *cf, ngx_command_t *cmd,
    void *conf);
static char *ngx_http_modelroute_durability_slot(ngx_conf_t *cf,
    ngx_command_t *cmd, void *conf);
static char *ngx_http_modelroute_retention(ngx_conf_t *cf, ngx_command_t *cmd,
    void *conf);
static char *ngx_http_modelroute_webhook_retry(ngx_conf_t *cf,
    ngx_command_t *cmd, void *conf);
static char *ngx_http_modelroute_webhook_concurrency(ngx_conf_t *cf,
    ngx_command_t *cmd, void *conf);
static ngx_int_t ngx_http_modelroute_thread_pool(ngx_conf_t *cf,
    mr_main_conf_t *mcf);
static mr_main_conf_t *ngx_http_modelroute_cycle_conf(ngx_cycle_t *cycle);
static char *ngx_http_modelroute_check_conf(ngx_cycle_t *cycle, void *conf);
static ngx_int_t ngx_http_modelroute_init_module(ngx_cycle_t *cycle);
static ngx_int_t ngx_http_modelroute_init_process(ngx_cycle_t *cycle);
static void ngx_http_modelroute_exit_process(ngx_cycle_t *cycle);


static ngx_conf_enum_t  ngx_http_modelroute_durability[] = {
    { ngx_string("full"), MR_DURABILITY_FULL },
    { ngx_string("relaxed"), MR_DURABILITY_RELAXED },
    { ngx_null_string, 0 }
};


static ngx_command_t  ngx_http_modelroute_commands[] = {

    { ngx_string("modelroute_store"),
      NGX_HTTP_MAIN_CONF|NGX_CONF_TAKE1,
      mr_store_directive,
      NGX_HTTP_MAIN_CONF_OFFSET,
      0,
      NULL },

    { ngx_string("modelroute_store_connections"),
      NGX_HTTP_MAIN_CONF|NGX_CONF_TAKE1,
      ngx_conf_set_num_slot,
      NGX_HTTP_MAIN_CONF_OFFSET,
      offsetof(mr_main_conf_t, pg_connections),
      NULL },

    { ngx_string("modelroute_store_connect_timeout"),
      NGX_HTTP_MAIN_CONF|NGX_CONF_TAKE1,
      ngx_conf_set_msec_slot,
      NGX_HTTP_MAIN_CONF_OFFSET,
      offsetof(mr_main_conf_t, pg_connect_timeout),
      NULL },

    { ngx_string("modelroute_store_timeout"),
      NGX_HTTP_MAIN_CONF|NGX_CONF_TAKE1,
      ngx_conf_set_msec_slot,
      NGX_HTTP_MAIN_CONF_OFFSET,
      offsetof(mr_main_conf_t, pg_timeout),
      NULL },

    { ngx_string("modelroute_key_cache"),
      NGX_HTTP_MAIN_CONF|NGX_CONF_TAKE1,
      mr_store_key_cache_directive,
      NGX_HTTP_MAIN_CONF_OFFSET,
      offsetof(mr_main_conf_t, key_cache),
      NULL },

    { ngx_string("modelroute_node_dir"),
      NGX_HTTP_MAIN_CONF|NGX_CONF_TAKE1,
      ngx_conf_set_str_slot,
      NGX_HTTP_MAIN_CONF_OFFSET,
      offsetof(mr_main_conf_t, node_dir),
      NULL },

    { ngx_string("modelroute_store_map_size"),
      NGX_HTTP_MAIN_CONF|NGX_CONF_TAKE1,
      ngx_http_modelroute_map_size,
      NGX_HTTP_MAIN_CONF_OFFSET,
      offsetof(mr_main_conf_t, map_size),
      NULL },

    { ngx_string("modelroute_durability"),
      NGX_HTTP_MAIN_CONF|NGX_CONF_TAKE1,
      ngx_http_modelroute_durability_slot,
      NGX_HTTP_MAIN_CONF_OFFSET,
      offsetof(mr_main_conf_t, durability),
      &ngx_http_modelroute_durability },

    { ngx_string("modelroute_idempotency_ttl"),
      NGX_HTTP_MAIN_CONF|NGX_CONF_TAKE1,
      ngx_conf_set_sec_slot,
      NGX_HTTP_MAIN_CONF_OFFSET,
      offsetof(mr_main_conf_t, idempotency_ttl),
      NULL },

    { ngx_string("modelroute_key_rotation_grace"),
      NGX_HTTP_MAIN_CONF|NGX_CONF_TAKE1,
      ngx_conf_set_sec_slot,
      NGX_HTTP_MAIN_CONF_OFFSET,
      offsetof(mr_main_conf_t, rotation_grace),
      NULL },

    { ngx_string("modelroute_retention"),
      NGX_HTTP_MAIN_CONF|NGX_CONF_TAKE1,
      ngx_http_modelroute_retention,
      NGX_HTTP_MAIN_CONF_OFFSET,
      offsetof(mr_main_conf_t, retention),
      NULL },

    { ngx_string("modelroute_sweep_interval"),
      NGX_HTTP_MAIN_CONF|NGX_CONF_TAKE1,
      ngx_conf_set_msec_slot,
      NGX_HTTP_MAIN_CONF_OFFSET,
      offsetof(mr_main_conf_t, sweep_interval),
      NULL },

    { ngx_string("modelroute_webhook_retry"),
      NGX_HTTP_MAIN_CONF|NGX_CONF_1MORE,
      ngx_http_modelroute_webhook_retry,
      NGX_HTTP_MAIN_CONF_OFFSET,
      0,
      NULL },

    { ngx_string("modelroute_webhook_timeout"),
      NGX_HTTP_MAIN_CONF|NGX_CONF_TAKE1,
      ngx_conf_set_msec_slot,
      NGX_HTTP_MAIN_CONF_OFFSET,
      offsetof(mr_main_conf_t, webhook_timeout),
      NULL },

    { ngx_string("modelroute_webhook_max_age"),
      NGX_HTTP_MAIN_CONF|NGX_CONF_TAKE1,
      ngx_conf_set_sec_slot,
      NGX_HTTP_MAIN_CONF_OFFSET,
      offsetof(mr_main_conf_t, webhook_max_age),
      NULL },

    { ngx_string("modelroute_webhook_concurrency"),
      NGX_HTTP_MAIN_CONF|NGX_CONF_TAKE123,
      ngx_http_modelroute_webhook_concurrency,
      NGX_HTTP_MAIN_CONF_OFFSET,
      0,
      NULL },

    { ngx_string("modelroute_account_limits"),
      NGX_HTTP_MAIN_CONF|NGX_CONF_1MORE,
      mr_limits_directive,
      NGX_HTTP_MAIN_CONF_OFFSET,
      0,
      NULL },

    { ngx_string("modelroute_webhook_allow_private"),
      NGX_HTTP_MAIN_CONF|NGX_CONF_FLAG,
      ngx_conf_set_flag_slot,
      NGX_HTTP_MAIN_CONF_OFFSET,
      offsetof(mr_main_conf_t, webhook_allow_private),
      NULL },

    { ngx_string("modelroute_webhook_resolver"),
      NGX_HTTP_MAIN_CONF|NGX_CONF_1MORE,
      mr_resolve_directive,
      NGX_HTTP_MAIN_CONF_OFFSET,
      0,
      NULL },

    { ngx_string("modelroute_webhook_resolver_timeout"),
      NGX_HTTP_MAIN_CONF|NGX_CONF_TAKE1,
      ngx_conf_set_msec_slot,
      NGX_HTTP_MAIN_CONF_OFFSET,
      offsetof(mr_main_conf_t, webhook_resolver_timeout),
      NULL },

    { ngx_string("modelroute_thread_pool"),
      NGX_HTTP_MAIN_CONF|NGX_CONF_TAKE1,
      ngx_conf_set_str_slot,
      NGX_HTTP_MAIN_CONF_OFFSET,
      offsetof(mr_main_conf_t, thread_pool),
      NULL },

    { ngx_string("modelroute_model"),
      NGX_HTTP_MAIN_CONF|NGX_CONF_1MORE,
      ngx_http_modelroute_model,
      NGX_HTTP_MAIN_CONF_OFFSET,
      0,
      NULL },

    { ngx_string("modelroute_route"),
      NGX_HTTP_MAIN_CONF|NGX_CONF_2MORE,
      mr_route_directive,
      NGX_HTTP_MAIN_CONF_OFFSET,
      0,
      NULL },

    { ngx_string("modelroute_dispatch"),
      NGX_HTTP_SRV_CONF|NGX_CONF_NOARGS,
      mr_route_dispatch_directive,
      0,
      0,
      NULL },

    { ngx_string("modelroute_dispatch_concurrency"),
      NGX_HTTP_MAIN_CONF|NGX_CONF_TAKE1,
      ngx_conf_set_num_slot,
      NGX_HTTP_MAIN_CONF_OFFSET,
      offsetof(mr_main_conf_t, dispatch_concurrency),
      NULL },

    { ngx_string("modelroute_callback_url"),
      NGX_HTTP_MAIN_CONF|NGX_CONF_TAKE1,
      ngx_conf_set_str_slot,
      NGX_HTTP_MAIN_CONF_OFFSET,
      offsetof(mr_main_conf_t, callback_url),
      NULL },

    { ngx_string("modelroute_simulator"),
      NGX_HTTP_LOC_CONF|NGX_CONF_ANY,
      mr_sim_directive,
      NGX_HTTP_LOC_CONF_OFFSET,
      0,
      NULL },

    { ngx_string("modelroute_api"),
      NGX_HTTP_LOC_CONF|NGX_CONF_NOARGS,
      ngx_http_modelroute_mount,
      NGX_HTTP_LOC_CONF_OFFSET,
      0,
      (void *) MR_HANDLER_API },

    { ngx_string("modelroute_admin"),
      NGX_HTTP_LOC_CONF|NGX_CONF_NOARGS,
      ngx_http_modelroute_mount,
      NGX_HTTP_LOC_CONF_OFFSET,
      0,
      (void *) MR_HANDLER_ADMIN },

    { ngx_string("modelroute_lua"),
      NGX_HTTP_LOC_CONF|NGX_CONF_NOARGS,
      ngx_http_modelroute_mount,
      NGX_HTTP_LOC_CONF_OFFSET,
      0,
      (void *) MR_HANDLER_LUA },

      ngx_null_command
};


static ngx_http_module_t  ngx_http_modelroute_module_ctx = {
    NULL,                                  /* preconfiguration */
    ngx_http_modelroute_postconfiguration, /* postconfiguration */

    ngx_http_modelroute_create_main_conf,  /* create main configuration */
    ngx_http_modelroute_init_main_conf,    /* init main configuration */

    NULL,                                  /* create server configuration */
    NULL,                                  /* merge server configuration */

    ngx_http_modelroute_create_loc_conf,   /* create location configuration */
    ngx_http_modelroute_merge_loc_conf     /* merge location configuration */
};


ngx_module_t  ngx_http_modelroute_module = {
    NGX_MODULE_V1,
    &ngx_http_modelroute_module_ctx,       /* module context */
    ngx_http_modelroute_commands,          /* module directives */
    NGX_HTTP_MODULE,                       /* module type */
    NULL,                                  /* init master */
    ngx_http_modelroute_init_module,       /* init module */
    ngx_http_modelroute_init_process,      /* init process */
    NULL,                                  /* init thread */
    NULL,                                  /* exit thread */
    ngx_http_modelroute_exit_process,      /* exit process */
    NULL,                                  /* exit master */
    NGX_MODULE_V1_PADDING
};


/*
 * A core module of the same shared object: its init_conf runs once the
 * whole configuration is read (the worker user is known then), on a
 * start, a reload and "nginx -t" alike, where a refusal leaves a running
 * nginx on its old configuration.  init_module, which runs later, would
 * take the master down on a reload if it failed: it does nothing that can.
 */

static ngx_core_module_t  ngx_http_modelroute_core_module_ctx = {
    ngx_string("modelroute_core"),
    NULL,                                  /* create conf */
    ngx_http_modelroute_check_conf         /* init conf */
};


ngx_module_t  ngx_http_modelroute_core_module = {
    NGX_MODULE_V1,
    &ngx_http_modelroute_core_module_ctx,  /* module context */
    NULL,                                  /* module directives */
    NGX_CORE_MODULE,                       /* module type */
    NULL,                                  /* init master */
    NULL,                                  /* init module */
    NULL,                                  /* init process */
    NULL,                                  /* init thread */
    NULL,                                  /* exit thread */
    NULL,                                  /* exit process */
    NULL,                                  /* exit master */
    NGX_MODULE_V1_PADDING
};


static mr_main_conf_t  *mr_conf;    /* of the running cycle */
static ngx_uint_t       mr_active;  /* this process runs the store */


mr_main_conf_t *
mr_main_conf(void)
{
    return mr_conf;
}


mr_model_t *
mr_model_find(mr_main_conf_t *mcf, ngx_str_t *slug)
{
    ngx_uint_t   i;
    mr_model_t  *m;

    m = mcf->models.elts;

    for (i = 0; i < mcf->models.nelts; i++) {
        if (m[i].slug.len == slug->len
            && ngx_strncmp(m[i].slug.data, slug->data, slug->len) == 0)
        {
            return &m[i];
        }
    }

    return NULL;
}


ngx_int_t
ngx_http_modelroute_handler(ngx_http_request_t *r)
{
    ngx_int_t       rc;
    mr_loc_conf_t  *lcf;
    mr_http_ctx_t  *ctx;

    lcf = ngx_http_get_module_loc_conf(r, ngx_http_modelroute_module);

    if (lcf->handler == MR_HANDLER_SIM) {
        return mr_sim_handler(r);
    }

    ctx = mr_http_ctx(r);
    if (ctx == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    ctx->run = MR_RUN_CONTENT;

    switch (lcf->handler) {

    case MR_HANDLER_ADMIN:
        rc = mr_admin_handler(r, 0);
        break;

    case MR_HANDLER_LUA:
        rc = mr_lua_handler(r);
        break;

    default:
        rc = mr_api_handler(r, r->uri.data, r->uri.data + r->uri.len);
    }

    ctx->run = MR_RUN_NONE;

    return rc;
}


static void *
ngx_http_modelroute_create_main_conf(ngx_conf_t *cf)
{
    mr_main_conf_t  *mcf;

    mcf = ngx_pcalloc(cf->pool, sizeof(mr_main_conf_t));
    if (mcf == NULL) {
        return NULL;
    }

    mcf->map_size = NGX_CONF_UNSET_SIZE;
    mcf->durability = NGX_CONF_UNSET_UINT;
    mcf->pg_connections = NGX_CONF_UNSET_UINT;
    mcf->pg_connect_timeout = NGX_CONF_UNSET_MSEC;
    mcf->pg_timeout = NGX_CONF_UNSET_MSEC;
    mcf->key_cache = NGX_CONF_UNSET_MSEC;
    mcf->idempotency_ttl = NGX_CONF_UNSET;
    mcf->rotation_grace = NGX_CONF_UNSET;
    mcf->retention = NGX_CONF_UNSET;
    mcf->sweep_interval = NGX_CONF_UNSET_MSEC;
    mcf->webhook_retry = NGX_CONF_UNSET_PTR;
    mcf->webhook_timeout = NGX_CONF_UNSET_MSEC;
    mcf->webhook_max_age = NGX_CONF_UNSET;
    mcf->webhook_total = NGX_CONF_UNSET_UINT;
    mcf->webhook_per_endpoint = NGX_CONF_UNSET_UINT;
    mcf->webhook_per_account = NGX_CONF_UNSET_UINT;
    mcf->webhook_allow_private = NGX_CONF_UNSET;
    mcf->webhook_resolver_timeout = NGX_CONF_UNSET_MSEC;
    mcf->dispatch_concurrency = NGX_CONF_UNSET_UINT;

    if (ngx_array_init(&mcf->models, cf->pool, 4, sizeof(mr_model_t))
        != NGX_OK
        || ngx_array_init(&mcf->routes, cf->pool, 4, sizeof(mr_route_t))
           != NGX_OK)
    {
        return NULL;
    }

    return mcf;
}


static char *
ngx_http_modelroute_init_main_conf(ngx_conf_t *cf, void *conf)
{
    mr_main_conf_t *mcf = conf;

    ngx_conf_init_size_value(mcf->map_size, 1024 * 1024 * 1024);
    ngx_conf_init_uint_value(mcf->durability, MR_DURABILITY_FULL);
    ngx_conf_init_uint_value(mcf->pg_connections, 2);
    ngx_conf_init_msec_value(mcf->pg_connect_timeout, 5000);
    ngx_conf_init_msec_value(mcf->pg_timeout, 10000);
    ngx_conf_init_msec_value(mcf->key_cache, 0);

    if (mcf->pg_connections < 1 || mcf->pg_connections > 64) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "\"modelroute_store_connections\" must be "
                           "1 to 64");
        return NGX_CONF_ERROR;
    }

    if (mcf->pg_connect_timeout < 1000 || mcf->pg_timeout < 1000) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "\"modelroute_store_connect_timeout\" and "
                           "\"modelroute_store_timeout\" must be at "
                           "least 1s");
        return NGX_CONF_ERROR;
    }
    ngx_conf_init_value(mcf->idempotency_ttl, 24 * 3600);
    ngx_conf_init_value(mcf->rotation_grace, 3600);
    ngx_conf_init_value(mcf->retention, 30 * 86400);
    ngx_conf_init_msec_value(mcf->sweep_interval, 1000);
    ngx_conf_init_msec_value(mcf->webhook_timeout, 30000);
    ngx_conf_init_value(mcf->webhook_max_age, 24 * 3600);
    ngx_conf_init_uint_value(mcf->webhook_total, 256);
    ngx_conf_init_uint_value(mcf->webhook_per_endpoint, 64);
    ngx_conf_init_uint_value(mcf->webhook_per_account,
                             mcf->webhook_per_endpoint);
    mr_limits_init_conf(mcf);
    ngx_conf_init_value(mcf->webhook_allow_private, 0);
    ngx_conf_init_uint_value(mcf->dispatch_concurrency, 256);

    if (mcf->dispatch_concurrency < 1 || mcf->dispatch_concurrency > 65536) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "\"modelroute_dispatch_concurrency\" must be "
                           "1 to 65536");
        return NGX_CONF_ERROR;
    }

    if (mcf->callback_url.len
        && ngx_strncmp(mcf->callback_url.data, "http://", 7) != 0
        && ngx_strncmp(mcf->callback_url.data, "https://", 8) != 0)
    {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "\"modelroute_callback_url\" must be an http "
                           "or https URL");
        return NGX_CONF_ERROR;
    }

    if (mr_route_resolve(cf, mcf) != NGX_CONF_OK) {
        return NGX_CONF_ERROR;
    }

    if (mcf->webhook_retry == NGX_CONF_UNSET_PTR) {
        static ngx_msec_t  schedule[] = { 120000, 240000, 480000, 960000,
                                          1800000 };

        mcf->webhook_retry = ngx_array_create(cf->pool, 5,
                                              sizeof(ngx_msec_t));
        if (mcf->webhook_retry == NULL) {
            return NGX_CONF_ERROR;
        }

        mcf->webhook_retry->nelts = 5;
        ngx_memcpy(mcf->webhook_retry->elts, schedule, sizeof(schedule));
    }

    if (mcf->sweep_interval < 10) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "\"modelroute_sweep_interval\" must be at least "
                           "10ms");
        return NGX_CONF_ERROR;
    }

    if (!mcf->used) {
        return NGX_CONF_OK;
    }

    if (mr_resolve_init_conf(cf, mcf) != NGX_CONF_OK) {
        return NGX_CONF_ERROR;
    }

    if (mcf->store_path.len == 0 && mcf->pg == NULL) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "\"modelroute_api\" and \"modelroute_admin\" "
                           "need \"modelroute_store\" in the http block");
        return NGX_CONF_ERROR;
    }

    if (mcf->models.nelts == 0) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "\"modelroute_api\" needs at least one "
                           "\"modelroute_model\" in the http block");
        return NGX_CONF_ERROR;
    }

    if (mcf->store_backend == MR_STORE_PG) {

        /*
         * the node's own files (its dispatch socket and secret), under
         * the prefix unless told; no commit thread: the store answers on
         * the event loop
         */

        if (mcf->node_dir.len == 0) {
            ngx_str_set(&mcf->node_dir, "modelroute");
        }

        if (ngx_conf_full_name(cf->cycle, &mcf->node_dir, 0) != NGX_OK) {
            return NGX_CONF_ERROR;
        }

        return NGX_CONF_OK;
    }

    if (ngx_conf_full_name(cf->cycle, &mcf->store_path, 0) != NGX_OK) {
        return NGX_CONF_ERROR;
    }

    mcf->node_dir = mcf->store_path;

    if (ngx_http_modelroute_thread_pool(cf, mcf) != NGX_OK) {
        return NGX_CONF_ERROR;
    }

    return NGX_CONF_OK;
}


/*
 * The commits of a worker run one at a time: one thread does them all.
 * Unless told otherwise, the module declares a pool of its own,
 * "thread_pool modelroute threads=1;" (nginx's "default" pool, which an
 * undeclared name would get, has 32 threads in every worker).  A pool
 * named "modelroute" that the configuration declared before the http
 * block is used as declared.
 */

static ngx_int_t
ngx_http_modelroute_thread_pool(ngx_conf_t *cf, mr_main_conf_t *mcf)
{
#if (NGX_THREADS)
    char           *rv;
    ngx_str_t      *arg;
    ngx_uint_t      own;
    ngx_array_t     args, *saved;
    ngx_command_t  *cmd;
#endif

    if (mcf->thread_pool.len == 3
        && ngx_strncmp(mcf->thread_pool.data, "off", 3) == 0)
    {
        ngx_str_null(&mcf->thread_pool);
        return NGX_OK;
    }

#if (NGX_THREADS)

    own = (mcf->thread_pool.len == 0);

    if (own) {
        ngx_str_set(&mcf->thread_pool, "modelroute");
    }

    if (!own || ngx_thread_pool_get(cf->cycle, &mcf->thread_pool)) {
        return ngx_thread_pool_add(cf, &mcf->thread_pool) ? NGX_OK
                                                          : NGX_ERROR;
    }

    for (cmd = ngx_thread_pool_module.commands; cmd->name.len; cmd++) {
        if (cmd->name.len == sizeof("thread_pool") - 1
            && ngx_strncmp(cmd->name.data, "thread_pool",
                           sizeof("thread_pool") - 1) == 0)
        {
            break;
        }
    }

    if (cmd->name.len == 0
        || ngx_array_init(&args, cf->temp_pool, 3, sizeof(ngx_str_t))
           != NGX_OK)
    {
        return NGX_ERROR;
    }

    arg = ngx_array_push_n(&args, 3);
    if (arg == NULL) {
        return NGX_ERROR;
    }

    ngx_str_set(&arg[0], "thread_pool");
    arg[1] = mcf->thread_pool;
    ngx_str_set(&arg[2], "threads=1");

    saved = cf->args;
    cf->args = &args;

    rv = cmd->set(cf, cmd, NULL);

    cf->args = saved;

    return rv == NGX_CONF_OK ? NGX_OK : NGX_ERROR;

#else

    if (mcf->thread_pool.len
        && !(mcf->thread_pool.len == 7
             && ngx_strncmp(mcf->thread_pool.data, "default", 7) == 0))
    {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "\"modelroute_thread_pool\" needs nginx built "
                           "--with-threads");
        return NGX_ERROR;
    }

    ngx_str_null(&mcf->thread_pool);

    return NGX_OK;

#endif
}


static void *
ngx_http_modelroute_create_loc_conf(ngx_conf_t *cf)
{
    mr_loc_conf_t  *lcf;

    lcf = ngx_pcalloc(cf->pool, sizeof(mr_loc_conf_t));
    if (lcf == NULL) {
        return NULL;
    }

    lcf->handler = NGX_CONF_UNSET_UINT;

    return lcf;
}


static char *
ngx_http_modelroute_merge_loc_conf(ngx_conf_t *cf, void *parent, void *child)
{
    mr_loc_conf_t *prev = parent;
    mr_loc_conf_t *conf = child;

    ngx_conf_merge_uint_value(conf->handler, prev->handler, MR_HANDLER_NONE);

    return NGX_CONF_OK;
}


static char *
ngx_http_modelroute_mount(ngx_conf_t *cf, ngx_command_t *cmd, void *conf)
{
    mr_loc_conf_t *lcf = conf;

    mr_main_conf_t            *mcf;
    ngx_http_core_loc_conf_t  *clcf;

    if (lcf->handler != NGX_CONF_UNSET_UINT) {
        return "is duplicate";
    }

    lcf->handler = (ngx_uint_t) cmd->post;

    mcf = ngx_http_conf_get_module_main_conf(cf, ngx_http_modelroute_module);
    mcf->used = 1;

    /* webhooks never reach the admin API's own addresses */

    if (lcf->handler == MR_HANDLER_ADMIN
        && mr_webhook_addr_admin(cf, mcf) != NGX_OK)
    {
        return NGX_CONF_ERROR;
    }

    clcf = ngx_http_conf_get_module_loc_conf(cf, ngx_http_core_module);
    clcf->handler = ngx_http_modelroute_handler;

    return NGX_CONF_OK;
}


static char *
ngx_http_modelroute_map_size(ngx_conf_t *cf, ngx_command_t *cmd, void *conf)
{
    mr_main_conf_t *mcf = conf;

    off_t       size;
    ngx_str_t  *value;

    if (mcf->map_size != NGX_CONF_UNSET_SIZE) {
        return "is duplicate";
    }

    value = cf->args->elts;

    size = ngx_parse_offset(&value[1]);

    mcf->map_size = (size_t) size;

    if (size == NGX_ERROR || size < MR_MAP_SIZE_MIN)
    {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "\"modelroute_store_map_size\" must be a size "
                           "of at least 1m, not \"%V\"", &value[1]);
        return NGX_CONF_ERROR;
    }

    return NGX_CONF_OK;
}


/* modelroute_webhook_retry time ...; */

static char *
ngx_http_modelroute_webhook_retry(ngx_conf_t *cf, ngx_command_t *cmd,
    void *conf)
{
    mr_main_conf_t *mcf = conf;

    ngx_str_t   *value;
    ngx_msec_t  *ms;
    ngx_uint_t   i;

    if (mcf->webhook_retry != NGX_CONF_UNSET_PTR) {
        return "is duplicate";
    }

    mcf->webhook_retry = ngx_array_create(cf->pool, cf->args->nelts,
                                          sizeof(ngx_msec_t));
    if (mcf->webhook_retry == NULL) {
        return NGX_CONF_ERROR;
    }

    value = cf->args->elts;

    for (i = 1; i < cf->args->nelts; i++) {
        ms = ngx_array_push(mcf->webhook_retry);
        if (ms == NULL) {
            return NGX_CONF_ERROR;
        }

        *ms = ngx_parse_time(&value[i], 0);

        if (*ms == (ngx_msec_t) NGX_ERROR || *ms == 0) {
            ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                               "\"modelroute_webhook_retry\": invalid "
                               "time \"%V\"", &value[i]);
            return NGX_CONF_ERROR;
        }
    }

    return NGX_CONF_OK;
}


/* modelroute_webhook_concurrency total [per_target [per_account]]; */

static char *
ngx_http_modelroute_webhook_concurrency(ngx_conf_t *cf, ngx_command_t *cmd,
    void *conf)
{
    mr_main_conf_t *mcf = conf;

    ngx_int_t   n;
    ngx_str_t  *value;

    if (mcf->webhook_total != NGX_CONF_UNSET_UINT) {
        return "is duplicate";
    }

    value = cf->args->elts;

    n = ngx_atoi(value[1].data, value[1].len);
    if (n < 1 || n > 4096) {
        goto invalid;
    }

    mcf->webhook_total = n;
    mcf->webhook_per_endpoint = ngx_min(64, n);

    if (cf->args->nelts >= 3) {
        n = ngx_atoi(value[2].data, value[2].len);
        if (n < 1 || (ngx_uint_t) n > mcf->webhook_total) {
            goto invalid;
        }

        mcf->webhook_per_endpoint = n;
    }

    if (cf->args->nelts == 4) {
        n = ngx_atoi(value[3].data, value[3].len);
        if (n < 1 || (ngx_uint_t) n > mcf->webhook_total) {
            goto invalid;
        }

        mcf->webhook_per_account = n;
    }

    return NGX_CONF_OK;

invalid:

    ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                       "\"modelroute_webhook_concurrency\": invalid value "
                       "\"%V\" (1 to 4096; per target and per account "
                       "at most the total)",
                       &value[cf->args->nelts - 1]);
    return NGX_CONF_ERROR;
}


/* modelroute_retention time | off */

static char *
ngx_http_modelroute_retention(ngx_conf_t *cf, ngx_command_t *cmd, void *conf)
{
    mr_main_conf_t *mcf = conf;

    ngx_str_t  *value;

    if (mcf->retention != NGX_CONF_UNSET) {
        return "is duplicate";
    }

    value = cf->args->elts;

    if (ngx_strcmp(value[1].data, "off") == 0) {
        mcf->retention = 0;
        return NGX_CONF_OK;
    }

    mcf->retention = ngx_parse_time(&value[1], 1);

    if (mcf->retention == (time_t) NGX_ERROR || mcf->retention < 1) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "\"modelroute_retention\" must be \"off\" or a "
                           "positive time, not \"%V\"", &value[1]);
        return NGX_CONF_ERROR;
    }

    return NGX_CONF_OK;
}


/* ngx_conf_set_enum_slot(), with a message that names the directive */

static char *
ngx_http_modelroute_durability_slot(ngx_conf_t *cf, ngx_command_t *cmd,
    void *conf)
{
    char       *rv;
    ngx_str_t  *value;

    value = cf->args->elts;

    if (value[1].len == 0
        || (ngx_strcmp(value[1].data, "full") != 0
            && ngx_strcmp(value[1].data, "relaxed") != 0))
    {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "\"%V\" must be \"full\" or \"relaxed\", "
                           "not \"%V\"", &cmd->name, &value[1]);
        return NGX_CONF_ERROR;
    }

    rv = ngx_conf_set_enum_slot(cf, cmd, conf);

    return rv;
}


/*
 * modelroute_model <slug> [per_request=USD] [per_image=USD]
 *     [per_second=USD] [input_per_mtok=USD] [output_per_mtok=USD]
 *     [max_tokens=N] [image_tokens=N] [timeout=time];
 */

static char *
ngx_http_modelroute_model(ngx_conf_t *cf, ngx_command_t *cmd, void *conf)
{
    mr_main_conf_t *mcf = conf;

    u_char       c;
    int64_t     *price;
    ngx_int_t    n, rc;
    ngx_str_t   *value, name, arg;
    ngx_uint_t   i;
    mr_model_t  *m;

    value = cf->args->elts;

    if (value[1].len == 0 || value[1].len > 128) {
        goto bad_slug;
    }

    for (i = 0; i < value[1].len; i++) {
        c = value[1].data[i];

        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z')
              || (c >= '0' && c <= '9')
              || c == '-' || c == '_' || c == '.' || c == ':' || c == '/'))
        {
            goto bad_slug;
        }
    }

    if (mr_model_find(mcf, &value[1])) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "\"modelroute_model\" \"%V\" is declared twice",
                           &value[1]);
        return NGX_CONF_ERROR;
    }

    m = ngx_array_push(&mcf->models);
    if (m == NULL) {
        return NGX_CONF_ERROR;
    }

    ngx_memzero(m, sizeof(mr_model_t));

    if (ngx_array_init(&m->routes, cf->pool, 2, sizeof(mr_model_route_t))
        != NGX_OK)
    {
        return NGX_CONF_ERROR;
    }

    m->slug = value[1];
    m->max_tokens = 1024;
    m->timeout = 300000;

    for (i = 2; i < cf->args->nelts; i++) {

        if (mr_conf_param(&value[i], &name, &arg) != NGX_OK) {
            goto bad_param;
        }

        price = NULL;

        if (ngx_strncmp(name.data, "per_request", name.len) == 0
            && name.len == sizeof("per_request") - 1)
        {
            price = &m->per_request;

        } else if (name.len == sizeof("per_image") - 1
                   && ngx_strncmp(name.data, "per_image", name.len) == 0)
        {
            price = &m->per_image;

        } else if (name.len == sizeof("per_second") - 1
                   && ngx_strncmp(name.data, "per_second", name.len) == 0)
        {
            price = &m->per_second;

        } else if (name.len == sizeof("input_per_mtok") - 1
                   && ngx_strncmp(name.data, "input_per_mtok", name.len)
                      == 0)
        {
            price = &m->input_per_mtok;

        } else if (name.len == sizeof("output_per_mtok") - 1
                   && ngx_strncmp(name.data, "output_per_mtok", name.len)
                      == 0)
        {
            price = &m->output_per_mtok;

        } else if (name.len == sizeof("max_tokens") - 1
                   && ngx_strncmp(name.data, "max_tokens", name.len) == 0)
        {
            n = ngx_atoi(arg.data, arg.len);
            if (n < 1 || n > 10000000) {
                ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                                   "\"modelroute_model\" \"%V\": invalid "
                                   "max_tokens \"%V\"", &m->slug, &arg);
                return NGX_CONF_ERROR;
            }

            m->max_tokens = n;
            continue;

        } else if (name.len == sizeof("image_tokens") - 1
                   && ngx_strncmp(name.data, "image_tokens", name.len) == 0)
        {
            n = ngx_atoi(arg.data, arg.len);
            if (n < 1 || n > 1000000) {
                ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                                   "\"modelroute_model\" \"%V\": invalid "
                                   "image_tokens \"%V\" (1 to 1000000)",
                                   &m->slug, &arg);
                return NGX_CONF_ERROR;
            }

            m->image_tokens = n;
            continue;

        } else if (name.len == sizeof("timeout") - 1
                   && ngx_strncmp(name.data, "timeout", name.len) == 0)
        {
            m->timeout = ngx_parse_time(&arg, 0);
            if (m->timeout == (ngx_msec_t) NGX_ERROR
                || m->timeout < 1000 || m->timeout > 7 * 86400 * 1000)
            {
                ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                                   "\"modelroute_model\" \"%V\": invalid "
                                   "timeout \"%V\" (1s to 7d)",
                                   &m->slug, &arg);
                return NGX_CONF_ERROR;
            }

            continue;

        } else {
            rc = mr_limits_model_param(cf, m, &name, &arg);

            if (rc == NGX_DECLINED) {
                rc = mr_route_model_param(cf, m, &name, &arg);
            }

            if (rc == NGX_DECLINED) {
                goto bad_param;
            }

            if (rc != NGX_OK) {
                return NGX_CONF_ERROR;
            }

            continue;
        }

        if (mr_money_parse(arg.data, arg.len, price) != NGX_OK
            || *price > MR_PRICE_MAX)
        {
            ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                               "\"modelroute_model\" \"%V\": invalid price "
                               "\"%V\" (USD, at most 6 decimal places, "
                               "at most 1000000)",
                               &m->slug, &value[i]);
            return NGX_CONF_ERROR;
        }
    }

    return NGX_CONF_OK;

bad_slug:

    ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                       "\"modelroute_model\": invalid model name \"%V\" "
                       "(1-128 of a-z A-Z 0-9 - _ . : /)", &value[1]);
    return NGX_CONF_ERROR;

bad_param:

    ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                       "\"modelroute_model\" \"%V\": unknown parameter "
                       "\"%V\"", &value[1], &value[i]);
    return NGX_CONF_ERROR;
}


static ngx_int_t
ngx_http_modelroute_postconfiguration(ngx_conf_t *cf)
{
    mr_main_conf_t  *mcf;

    mcf = ngx_http_conf_get_module_main_conf(cf, ngx_http_modelroute_module);

    if (mr_route_listen(cf, mcf) != NGX_OK
        || mr_dispatch_postconfiguration(cf, mcf) != NGX_OK
        || mr_webhook_addr_postconfiguration(cf, mcf) != NGX_OK)
    {
        return NGX_ERROR;
    }

    return mr_http_filter_init(cf);
}


static mr_main_conf_t *
ngx_http_modelroute_cycle_conf(ngx_cycle_t *cycle)
{
    if (cycle->conf_ctx[ngx_http_module.index] == NULL) {
        return NULL;
    }

    return ngx_http_cycle_get_module_main_conf(cycle,
                                               ngx_http_modelroute_module);
}


/* after the configuration is read: the store, as the workers will see it */

static char *
ngx_http_modelroute_check_conf(ngx_cycle_t *cycle, void *conf)
{
    mr_main_conf_t  *mcf;

    if (ngx_process == NGX_PROCESS_SIGNALLER) {
        return NGX_CONF_OK;
    }

    mcf = ngx_http_modelroute_cycle_conf(cycle);

    if (mcf == NULL || !mcf->used) {
        return NGX_CONF_OK;
    }

    return mr_store_check(cycle, mcf) == NGX_OK ? NGX_CONF_OK
                                                : NGX_CONF_ERROR;
}


/*
 * Nothing here may fail on a reload (it would exit the master): only the
 * upgrade of a store of the previous format runs here, which
 * mr_store_check() allows on a start (or notes for nginx -t), never on a
 * reload.
 */

static ngx_int_t
ngx_http_modelroute_init_module(ngx_cycle_t *cycle)
{
    mr_main_conf_t  *mcf;

    mcf = ngx_http_modelroute_cycle_conf(cycle);

    mr_conf = (mcf && mcf->used) ? mcf : NULL;

    if (mr_conf == NULL) {
        return NGX_OK;
    }

    return mr_store_start(cycle, mcf);
}


/*
 * nginx runs init_process in its cache manager and cache loader too
 * (for any proxy_cache_path and the like), where thread pools are not
 * set up: only workers, or nginx in single process mode, run the store,
 * the dispatcher, the webhook sender and the sweeper.
 */

static ngx_int_t
ngx_http_modelroute_init_process(ngx_cycle_t *cycle)
{
    mr_main_conf_t  *mcf;

    if (ngx_process != NGX_PROCESS_WORKER
        && ngx_process != NGX_PROCESS_SINGLE)
    {
        return NGX_OK;
    }

    mcf = ngx_http_modelroute_cycle_conf(cycle);

    if (mcf == NULL || !mcf->used) {
        return NGX_OK;
    }

    mr_conf = mcf;
    mr_active = 1;

    if (mr_store_init_process(cycle, mcf) != NGX_OK
        || mr_sweeper_init_process(cycle, mcf) != NGX_OK
        || mr_curl_init_process(cycle, mcf->webhook_total
                                + mcf->dispatch_concurrency) != NGX_OK
        || mr_webhook_init_process(cycle, mcf) != NGX_OK)
    {
        return NGX_ERROR;
    }

    return mr_dispatch_init_process(cycle, mcf);
}


static void
ngx_http_modelroute_exit_process(ngx_cycle_t *cycle)
{
    if (!mr_active) {
        return;
    }

    mr_active = 0;

    /* the attempts in flight first: none may reach the store after it */
    mr_webhook_exit_process(cycle);
    mr_curl_exit_process(cycle);
    mr_store_exit_process(cycle);
}
