
/*
 * ModelRoute for nginx: the module's configuration and shared types.
 */


#ifndef _NGX_HTTP_MODELROUTE_MODULE_H_INCLUDED_
#define _NGX_HTTP_MODELROUTE_MODULE_H_INCLUDED_


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>


#define MR_DURABILITY_FULL     0
#define MR_DURABILITY_RELAXED  1

#define MR_STORE_LMDB          0      /* modelroute_store <directory> */
#define MR_STORE_PG            1      /* modelroute_store postgresql://... */


#define MR_PROTO_OPENAI_CHAT        1
#define MR_PROTO_OPENAI_EMBEDDINGS  2
#define MR_PROTO_OPENAI_IMAGES      3
#define MR_PROTO_ANTHROPIC          4
#define MR_PROTO_ASYNC              5

#define MR_ROUTE_NAME_LEN           32


/* modelroute_route: an internal location that speaks one protocol */
typedef struct {
    ngx_str_t                 name;
    ngx_str_t                 location;
    ngx_uint_t                protocol;
    ngx_uint_t                max_concurrency; /* 0: no cap */
    ngx_msec_t                timeout;         /* of one attempt */
    ngx_uint_t                breaker_failures;
    ngx_msec_t                breaker_reset;
    ngx_uint_t                completion_tokens; /* openai_chat: the budget
                                                  is max_completion_tokens */
    ngx_uint_t                index;
} mr_route_t;


/* a model's route: the route and the provider's name of the model */
typedef struct {
    mr_route_t               *route;
    ngx_str_t                 name;            /* as written in routes= */
    ngx_str_t                 provider_model;
} mr_model_route_t;


typedef struct {
    ngx_str_t                 slug;
    int64_t                   per_request;     /* micro-dollars */
    int64_t                   per_image;
    int64_t                   per_second;
    int64_t                   input_per_mtok;
    int64_t                   output_per_mtok;
    int64_t                   max_tokens;
    int64_t                   image_tokens;    /* 0: the default */
    ngx_msec_t                timeout;
    ngx_uint_t                attempts;        /* at most, over routes */
    size_t                    max_input;       /* 0: the default */
    ngx_array_t               routes;          /* mr_model_route_t */
} mr_model_t;


typedef struct {
    ngx_str_t                 store_path;      /* LMDB: its directory */
    ngx_uint_t                store_backend;   /* MR_STORE_* */
    void                     *pg;              /* PostgreSQL: its conf */
    ngx_str_t                 node_dir;        /* the node's own files */
    ngx_uint_t                pg_connections;  /* per worker */
    ngx_msec_t                pg_connect_timeout;
    ngx_msec_t                pg_timeout;
    ngx_msec_t                key_cache;       /* 0: off */
    size_t                    map_size;
    ngx_uint_t                durability;
    time_t                    idempotency_ttl;
    time_t                    rotation_grace;
    time_t                    retention;       /* 0: keep forever */
    ngx_msec_t                sweep_interval;
    ngx_array_t               models;          /* mr_model_t */
    ngx_str_t                 thread_pool;
    ngx_array_t              *webhook_retry;   /* ngx_msec_t */
    ngx_msec_t                webhook_timeout;
    time_t                    webhook_max_age;
    ngx_uint_t                webhook_total;
    ngx_uint_t                webhook_per_endpoint;
    ngx_uint_t                webhook_per_account;
    int64_t                   account_limits[4]; /* mr_limits.c */
    ngx_uint_t                account_limits_set;
    ngx_flag_t                webhook_allow_private;
    ngx_resolver_t           *webhook_resolver;
    ngx_msec_t                webhook_resolver_timeout;
    ngx_array_t              *webhook_admin_srvs;  /* core srv conf ptrs */
    ngx_array_t              *webhook_admin_addrs; /* mr_webhook_addr.c */
    ngx_array_t              *webhook_local;   /* ngx_sockaddr_t */
    ngx_array_t               routes;          /* mr_route_t */
    ngx_uint_t                dispatch_concurrency;
    ngx_str_t                 callback_url;
    ngx_str_t                 dispatch_socket;
    void                     *dispatch_srv;    /* its core srv conf */
    u_char                    start_secret[32];/* the dispatch secret */
    ngx_uint_t                start;           /* a start, not a reload */
    ngx_uint_t                upgrade;         /* of the store's format */
    ngx_uint_t                used;            /* api or admin mounted */
} mr_main_conf_t;


#define MR_HANDLER_NONE   0
#define MR_HANDLER_API    1
#define MR_HANDLER_ADMIN  2
#define MR_HANDLER_LUA    3      /* subrequests from lua-compat */
#define MR_HANDLER_SIM    4      /* the simulated provider */


typedef struct mr_sim_conf_s  mr_sim_conf_t;

typedef struct {
    ngx_uint_t                handler;
    mr_sim_conf_t            *sim;
} mr_loc_conf_t;


extern ngx_module_t  ngx_http_modelroute_module;
extern ngx_module_t  ngx_http_modelroute_core_module;


mr_main_conf_t *mr_main_conf(void);
ngx_int_t ngx_http_modelroute_handler(ngx_http_request_t *r);
mr_model_t *mr_model_find(mr_main_conf_t *mcf, ngx_str_t *slug);
mr_route_t *mr_route_find(mr_main_conf_t *mcf, u_char *name, size_t len);


#endif /* _NGX_HTTP_MODELROUTE_MODULE_H_INCLUDED_ */
