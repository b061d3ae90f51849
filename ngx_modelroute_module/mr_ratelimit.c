
/*
 * ModelRoute: rate limits per account.
 *
 *   modelroute_rate_limit requests window [zone=size];
 *
 * A fixed window per account: an account's window opens with its first
 * request and lasts `window`; up to `requests` requests are accepted in
 * it (the account's override, if the admin API set one, else the
 * default), the others get 429 RATE_LIMITED with Retry-After until it
 * ends; the next request after its end opens the next window.  Every
 * answer to a request with a valid API key carries X-RateLimit-Limit,
 * X-RateLimit-Remaining and X-RateLimit-Reset (the Unix time the window
 * ends, rounded up to the second).
 *
 * The windows are in a shared memory zone (a red-black tree of accounts
 * and an LRU queue in a slab pool, as limit_req keeps its states), under
 * the zone's mutex, so the limit is exact across the workers of a node.
 * An account whose window ended holds nothing: such entries are freed as
 * new accounts come; if the zone is full of live windows the least
 * recently used one is dropped, with a warning (size the zone for the
 * accounts active in one window: about 100 bytes each).
 *
 * Overrides live in the store ("rl/" + org in the ops database), read on
 * each request, so a change applies to the next request in every worker.
 */


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>

#include "ngx_http_modelroute_module.h"
#include "mr_http.h"
#include "mr_ops.h"
#include "mr_ratelimit.h"
#include "mr_store_ops.h"


#define MR_RL_REQUESTS_MAX   1000000000
#define MR_RL_WINDOW_MAX     86400
#define MR_RL_ZONE_MIN       (32 * 1024)
#define MR_RL_ZONE_DEFAULT   (1024 * 1024)


typedef struct {
    ngx_rbtree_node_t         node;            /* key: crc32 of the org */
    ngx_queue_t               queue;           /* most recent first */
    int64_t                   start_ms;        /* of the window */
    uint64_t                  count;           /* accepted in it */
    u_char                    org[MR_ORG_ID_LEN];
} mr_rl_node_t;


typedef struct {
    ngx_rbtree_t              rbtree;
    ngx_rbtree_node_t         sentinel;
    ngx_queue_t               queue;
} mr_rl_shm_t;


typedef struct {
    mr_rl_shm_t              *sh;
    ngx_slab_pool_t          *shpool;
} mr_rl_ctx_t;


static ngx_int_t mr_ratelimit_init_zone(ngx_shm_zone_t *shm_zone,
    void *data);
static void mr_ratelimit_insert(ngx_rbtree_node_t *temp,
    ngx_rbtree_node_t *node, ngx_rbtree_node_t *sentinel);
static mr_rl_node_t *mr_ratelimit_lookup(mr_rl_ctx_t *ctx, u_char *org,
    uint32_t hash);
static void mr_ratelimit_expire(mr_rl_ctx_t *ctx, int64_t now,
    int64_t window, ngx_uint_t force);
static uint64_t mr_ratelimit_limit(mr_ops_main_conf_t *ocf,
    mr_http_ctx_t *hctx, ngx_uint_t *own);
static ngx_int_t mr_ratelimit_header(ngx_http_request_t *r,
    const char *name, uint64_t value);
static ngx_int_t mr_ratelimit_set(ngx_http_request_t *r);
static ngx_int_t mr_ratelimit_delete(ngx_http_request_t *r);
static void mr_ratelimit_done(mr_store_op_t *op);
static ngx_int_t mr_ratelimit_show(ngx_http_request_t *r, u_char *org);
static void mr_ratelimit_read(mr_store_read_t *rd);
static ngx_int_t mr_ratelimit_shown(ngx_http_request_t *r,
    mr_store_read_t *rd);


/* modelroute_rate_limit requests window [zone=size] | off */

char *
mr_ratelimit_directive(ngx_conf_t *cf, ngx_command_t *cmd, void *conf)
{
    mr_ops_main_conf_t *ocf = conf;

    time_t      window;
    ssize_t     size;
    ngx_int_t   n;
    ngx_str_t  *value, name, arg;

    if (ocf->rl_requests != NGX_CONF_UNSET_UINT) {
        return "is duplicate";
    }

    value = cf->args->elts;

    if (cf->args->nelts == 2
        && value[1].len == 3 && ngx_strncmp(value[1].data, "off", 3) == 0)
    {
        ocf->rl_requests = 0;
        return NGX_CONF_OK;
    }

    if (cf->args->nelts < 3) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "\"modelroute_rate_limit\" takes \"off\" or "
                           "requests and a window, such as \"600 1m\"");
        return NGX_CONF_ERROR;
    }

    n = ngx_atoi(value[1].data, value[1].len);
    if (n < 1 || n > MR_RL_REQUESTS_MAX) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "\"modelroute_rate_limit\": invalid number of "
                           "requests \"%V\" (1 to %d)", &value[1],
                           MR_RL_REQUESTS_MAX);
        return NGX_CONF_ERROR;
    }

    window = ngx_parse_time(&value[2], 1);
    if (window == (time_t) NGX_ERROR || window < 1
        || window > MR_RL_WINDOW_MAX)
    {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "\"modelroute_rate_limit\": invalid window "
                           "\"%V\" (whole seconds, 1s to 1d)", &value[2]);
        return NGX_CONF_ERROR;
    }

    ocf->rl_requests = n;
    ocf->rl_window = (ngx_msec_t) window * 1000;
    ocf->rl_zone_size = MR_RL_ZONE_DEFAULT;

    if (cf->args->nelts == 4) {
        if (mr_conf_param(&value[3], &name, &arg) != NGX_OK
            || name.len != sizeof("zone") - 1
            || ngx_strncmp(name.data, "zone", name.len) != 0)
        {
            ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                               "\"modelroute_rate_limit\": unknown "
                               "parameter \"%V\"", &value[3]);
            return NGX_CONF_ERROR;
        }

        size = ngx_parse_size(&arg);
        if (size == NGX_ERROR || size < MR_RL_ZONE_MIN) {
            ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                               "\"modelroute_rate_limit\": invalid zone "
                               "size \"%V\" (at least 32k)", &arg);
            return NGX_CONF_ERROR;
        }

        ocf->rl_zone_size = size;
    }

    return NGX_CONF_OK;
}


ngx_int_t
mr_ratelimit_zone_add(ngx_conf_t *cf, mr_ops_main_conf_t *ocf)
{
    ngx_str_t     name = ngx_string("modelroute_rate_limit");
    mr_rl_ctx_t  *ctx;

    ctx = ngx_pcalloc(cf->pool, sizeof(mr_rl_ctx_t));
    if (ctx == NULL) {
        return NGX_ERROR;
    }

    ocf->rl_zone = ngx_shared_memory_add(cf, &name,
                                         ngx_align(ocf->rl_zone_size,
                                                   ngx_pagesize),
                                         &ngx_http_modelroute_ops_module);
    if (ocf->rl_zone == NULL) {
        return NGX_ERROR;
    }

    ocf->rl_zone->init = mr_ratelimit_init_zone;
    ocf->rl_zone->data = ctx;

    return NGX_OK;
}


static ngx_int_t
mr_ratelimit_init_zone(ngx_shm_zone_t *shm_zone, void *data)
{
    mr_rl_ctx_t *octx = data;

    size_t        len;
    mr_rl_ctx_t  *ctx;

    ctx = shm_zone->data;

    if (octx) {
        ctx->sh = octx->sh;
        ctx->shpool = octx->shpool;
        return NGX_OK;
    }

    ctx->shpool = (ngx_slab_pool_t *) shm_zone->shm.addr;

    if (shm_zone->shm.exists) {
        ctx->sh = ctx->shpool->data;
        return NGX_OK;
    }

    ctx->sh = ngx_slab_alloc(ctx->shpool, sizeof(mr_rl_shm_t));
    if (ctx->sh == NULL) {
        return NGX_ERROR;
    }

    ctx->shpool->data = ctx->sh;

    ngx_rbtree_init(&ctx->sh->rbtree, &ctx->sh->sentinel,
                    mr_ratelimit_insert);
    ngx_queue_init(&ctx->sh->queue);

    len = sizeof(" in modelroute_rate_limit zone \"\"")
          + shm_zone->shm.name.len;

    ctx->shpool->log_ctx = ngx_slab_alloc(ctx->shpool, len);
    if (ctx->shpool->log_ctx == NULL) {
        return NGX_ERROR;
    }

    ngx_sprintf(ctx->shpool->log_ctx, " in modelroute_rate_limit zone "
                "\"%V\"%Z", &shm_zone->shm.name);

    ctx->shpool->log_nomem = 0;

    return NGX_OK;
}


static void
mr_ratelimit_insert(ngx_rbtree_node_t *temp, ngx_rbtree_node_t *node,
    ngx_rbtree_node_t *sentinel)
{
    mr_rl_node_t        *n, *t;
    ngx_rbtree_node_t  **p;

    for ( ;; ) {

        if (node->key < temp->key) {
            p = &temp->left;

        } else if (node->key > temp->key) {
            p = &temp->right;

        } else {
            n = (mr_rl_node_t *) node;
            t = (mr_rl_node_t *) temp;

            p = (ngx_memcmp(n->org, t->org, MR_ORG_ID_LEN) < 0)
                ? &temp->left : &temp->right;
        }

        if (*p == sentinel) {
            break;
        }

        temp = *p;
    }

    *p = node;
    node->parent = temp;
    node->left = sentinel;
    node->right = sentinel;
    ngx_rbt_red(node);
}


static mr_rl_node_t *
mr_ratelimit_lookup(mr_rl_ctx_t *ctx, u_char *org, uint32_t hash)
{
    ngx_int_t           rc;
    mr_rl_node_t       *n;
    ngx_rbtree_node_t  *node, *sentinel;

    node = ctx->sh->rbtree.root;
    sentinel = ctx->sh->rbtree.sentinel;

    while (node != sentinel) {

        if (hash < node->key) {
            node = node->left;
            continue;
        }

        if (hash > node->key) {
            node = node->right;
            continue;
        }

        n = (mr_rl_node_t *) node;

        rc = ngx_memcmp(org, n->org, MR_ORG_ID_LEN);

        if (rc == 0) {
            return n;
        }

        node = (rc < 0) ? node->left : node->right;
    }

    return NULL;
}


/*
 * Frees up to two of the least recently used accounts whose window has
 * ended; force: the least recently used one, ended or not.
 */

static void
mr_ratelimit_expire(mr_rl_ctx_t *ctx, int64_t now, int64_t window,
    ngx_uint_t force)
{
    ngx_uint_t     i;
    ngx_queue_t   *q;
    mr_rl_node_t  *n;

    for (i = 0; i < 2; i++) {

        if (ngx_queue_empty(&ctx->sh->queue)) {
            return;
        }

        q = ngx_queue_last(&ctx->sh->queue);
        n = ngx_queue_data(q, mr_rl_node_t, queue);

        if (now < n->start_ms + window) {
            if (!force) {
                return;
            }

            ngx_log_error(NGX_LOG_WARN, ngx_cycle->log, 0,
                          "modelroute_rate_limit: the zone is full: the "
                          "window of %*s is dropped (make zone= larger)",
                          (size_t) MR_ORG_ID_LEN, n->org);
            force = 0;
        }

        ngx_queue_remove(q);
        ngx_rbtree_delete(&ctx->sh->rbtree, &n->node);
        ngx_slab_free_locked(ctx->shpool, n);
    }
}


/*
 * The account's limit: its override, read with the caller's key
 * (MR_READ_AUTH), else the default
 */

static uint64_t
mr_ratelimit_limit(mr_ops_main_conf_t *ocf, mr_http_ctx_t *hctx,
    ngx_uint_t *own)
{
    *own = hctx->rl_own;

    return hctx->rl_own ? hctx->rl_value : ocf->rl_requests;
}


ngx_int_t
mr_ratelimit_request(ngx_http_request_t *r)
{
    u_char              *org;
    int64_t              now, window, reset;
    uint32_t             hash;
    uint64_t             limit, count;
    ngx_str_t            ra;
    ngx_uint_t           own, limited;
    mr_rl_ctx_t         *ctx;
    mr_rl_node_t        *n;
    mr_http_ctx_t       *hctx;
    mr_ops_main_conf_t  *ocf;

    ocf = mr_ops_conf();

    if (ocf == NULL || ocf->rl_zone == NULL || r != r->main) {
        return NGX_DONE;
    }

    hctx = mr_http_ctx(r);
    if (hctx == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    org = hctx->key.rec.org;
    ctx = ocf->rl_zone->data;
    window = ocf->rl_window;

    limit = mr_ratelimit_limit(ocf, hctx, &own);

    hash = ngx_crc32_short(org, MR_ORG_ID_LEN);
    now = mr_local_ms();
    limited = 0;

    ngx_shmtx_lock(&ctx->shpool->mutex);

    mr_ratelimit_expire(ctx, now, window, 0);

    n = mr_ratelimit_lookup(ctx, org, hash);

    if (n == NULL) {
        n = ngx_slab_alloc_locked(ctx->shpool, sizeof(mr_rl_node_t));

        if (n == NULL) {
            mr_ratelimit_expire(ctx, now, window, 1);
            n = ngx_slab_alloc_locked(ctx->shpool, sizeof(mr_rl_node_t));
        }

        if (n == NULL) {
            ngx_shmtx_unlock(&ctx->shpool->mutex);

            ngx_log_error(NGX_LOG_ERR, r->connection->log, 0,
                          "modelroute_rate_limit: no room in the zone");

            return mr_http_error(r, MR_E_SERVICE_UNAVAILABLE,
                                 "the gateway cannot count requests now",
                                 NULL);
        }

        n->node.key = hash;
        ngx_memcpy(n->org, org, MR_ORG_ID_LEN);
        n->start_ms = now;
        n->count = 0;

        ngx_rbtree_insert(&ctx->sh->rbtree, &n->node);
        ngx_queue_insert_head(&ctx->sh->queue, &n->queue);

    } else {
        ngx_queue_remove(&n->queue);
        ngx_queue_insert_head(&ctx->sh->queue, &n->queue);

        if (now >= n->start_ms + window) {
            n->start_ms = now;
            n->count = 0;
        }
    }

    if (n->count >= limit) {
        limited = 1;

    } else {
        n->count++;
    }

    count = n->count;
    reset = n->start_ms + window;

    ngx_shmtx_unlock(&ctx->shpool->mutex);

    if (mr_ratelimit_header(r, "X-RateLimit-Limit", limit) != NGX_OK
        || mr_ratelimit_header(r, "X-RateLimit-Remaining",
                               limit > count ? limit - count : 0)
           != NGX_OK
        || mr_ratelimit_header(r, "X-RateLimit-Reset",
                               (uint64_t) (reset + 999) / 1000)
           != NGX_OK)
    {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    if (!limited) {
        return NGX_DONE;
    }

    ra.data = ngx_pnalloc(r->pool, NGX_INT64_LEN);
    if (ra.data == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    ra.len = ngx_sprintf(ra.data, "%L", ngx_max((reset - now + 999) / 1000,
                                                1))
             - ra.data;

    if (mr_http_header(r, "Retry-After", &ra) != NGX_OK) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    return mr_http_error(r, MR_E_RATE_LIMITED,
                         own ? "the account's rate limit is reached; "
                               "see Retry-After"
                             : "the rate limit is reached; see Retry-After",
                         NULL);
}


static ngx_int_t
mr_ratelimit_header(ngx_http_request_t *r, const char *name, uint64_t value)
{
    ngx_str_t  v;

    v.data = ngx_pnalloc(r->pool, NGX_INT64_LEN);
    if (v.data == NULL) {
        return NGX_ERROR;
    }

    v.len = ngx_sprintf(v.data, "%uL", value) - v.data;

    return mr_http_header(r, name, &v);
}


/* ---- the admin API: {admin}/accounts/{org}/rate_limit */

ngx_int_t
mr_ratelimit_admin(ngx_http_request_t *r, ngx_str_t *org)
{
    mr_http_ctx_t  *ctx;

    ctx = mr_http_ctx(r);
    if (ctx == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    ctx->id = *org;

    if (r->method & (NGX_HTTP_GET | NGX_HTTP_HEAD)) {
        return mr_ratelimit_show(r, org->data);
    }

    if (r->method == NGX_HTTP_PUT) {
        return mr_http_read_body(r, mr_ratelimit_set);
    }

    if (r->method == NGX_HTTP_DELETE) {
        return mr_http_read_body(r, mr_ratelimit_delete);
    }

    return mr_http_not_allowed(r, "GET, HEAD, PUT, DELETE");
}


/* PUT {"requests": N} */

static ngx_int_t
mr_ratelimit_set(ngx_http_request_t *r)
{
    json_t         *body, *v;
    ngx_int_t       rc;
    json_int_t      n;
    mr_http_ctx_t  *ctx;
    mr_store_op_t  *op;

    ctx = ngx_http_get_module_ctx(r, ngx_http_modelroute_module);

    body = mr_http_parse_object(r, NULL, &rc);
    if (body == NULL) {
        return rc;
    }

    v = json_object_get(body, "requests");
    n = json_is_integer(v) ? json_integer_value(v) : 0;

    json_decref(body);

    if (n < 1 || n > MR_RL_REQUESTS_MAX) {
        body = json_array();
        mr_json_detail(body, "requests",
                       v == NULL ? "REQUIRED" : "INVALID_VALUE",
                       "requests must be an integer from 1 to 1000000000");
        return mr_http_error(r, MR_E_INPUT_VALIDATION,
                             "the request is not valid", body);
    }

    op = &ctx->op;
    op->type = MR_OP_OPS;
    op->ops.kind = MR_STORE_OPS_RL_SET;
    op->ops.value = (uint64_t) n;
    ngx_memcpy(op->org, ctx->id.data, MR_ORG_ID_LEN);

    mr_http_submit(r, op, mr_ratelimit_done);

    return NGX_DONE;
}


static ngx_int_t
mr_ratelimit_delete(ngx_http_request_t *r)
{
    mr_http_ctx_t  *ctx;
    mr_store_op_t  *op;

    ctx = ngx_http_get_module_ctx(r, ngx_http_modelroute_module);

    op = &ctx->op;
    op->type = MR_OP_OPS;
    op->ops.kind = MR_STORE_OPS_RL_DELETE;
    ngx_memcpy(op->org, ctx->id.data, MR_ORG_ID_LEN);

    mr_http_submit(r, op, mr_ratelimit_done);

    return NGX_DONE;
}


static void
mr_ratelimit_done(mr_store_op_t *op)
{
    ngx_http_request_t  *r;

    r = mr_http_resume(op);
    if (r == NULL) {
        return;
    }

    if (op->result != MR_R_OK) {
        mr_http_finalize(r, mr_http_op_error(r, op));
        return;
    }

    mr_http_continued(r, mr_ratelimit_show(r, op->org));
}


/*
 * {"object": "rate_limit", "account", "requests", "window_seconds",
 *  "source": "account" | "default", "enabled"}
 */

static ngx_int_t
mr_ratelimit_show(ngx_http_request_t *r, u_char *org)
{
    mr_store_read_t  *rd;

    rd = mr_http_read_alloc(r, MR_READ_ACCOUNT);
    if (rd == NULL) {
        return mr_http_error(r, MR_E_INTERNAL, "out of memory", NULL);
    }

    ngx_memcpy(rd->id, org, MR_ORG_ID_LEN);

    if (mr_http_read(r, rd, mr_ratelimit_read) == NGX_DONE) {
        return NGX_DONE;
    }

    return mr_ratelimit_shown(r, rd);
}


static void
mr_ratelimit_read(mr_store_read_t *rd)
{
    ngx_http_request_t  *r;

    r = mr_http_read_resume(rd);
    if (r == NULL) {
        return;
    }

    mr_http_continued(r, mr_ratelimit_shown(r, rd));
}


static ngx_int_t
mr_ratelimit_shown(ngx_http_request_t *r, mr_store_read_t *rd)
{
    u_char              *org;
    uint64_t             v;
    ngx_uint_t           own;
    mr_ops_main_conf_t  *ocf;

    ocf = mr_ops_conf();
    org = rd->id;

    if (rd->rc == NGX_DECLINED) {
        return mr_http_error(r, MR_E_NOT_FOUND, "no such account", NULL);
    }

    if (rd->rc != NGX_OK) {
        return mr_http_read_error(r, rd);
    }

    own = rd->rl_own;
    v = own ? rd->rl_value : (ocf ? ocf->rl_requests : 0);

    return mr_http_send_json(r, NGX_HTTP_OK,
               json_pack("{s:s, s:s#, s:o, s:o, s:s, s:b}",
                         "object", "rate_limit",
                         "account", org, (int) MR_ORG_ID_LEN,
                         "requests", v ? json_integer((json_int_t) v)
                                       : json_null(),
                         "window_seconds",
                         (ocf && ocf->rl_requests)
                         ? json_integer((json_int_t) ocf->rl_window / 1000)
                         : json_null(),
                         "source", own ? "account" : "default",
                         "enabled", (int) (ocf && ocf->rl_requests)));
}
