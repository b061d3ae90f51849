
/*
 * ModelRoute: routes and the dispatch server in the configuration.
 *
 *   modelroute_route <name> <location> protocol=<p> [max_concurrency=N]
 *       [timeout=time] [breaker=N] [breaker_reset=time]
 *       [max_tokens_field=max_tokens|max_completion_tokens];
 *   modelroute_model <slug> ... routes=<name>[:<provider model>],...
 *       [attempts=N];
 *   server { modelroute_dispatch; location <location> { internal; ... } }
 *
 * The dispatch server listens on <store>/dispatch.sock only; the route
 * locations live in it, because a subrequest looks its location up in
 * the server of its parent request.
 */


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>

#include <sys/un.h>

#include "mr_route.h"
#include "mr_util.h"


#define MR_DISPATCH_SOCKET  "/dispatch.sock"


static ngx_int_t mr_route_name_valid(ngx_str_t *name);
static void mr_route_stale_socket(ngx_conf_t *cf, ngx_str_t *path);


static struct {
    ngx_str_t                 name;
    ngx_uint_t                protocol;
} mr_route_protocols[] = {
    { ngx_string("openai_chat"), MR_PROTO_OPENAI_CHAT },
    { ngx_string("openai_embeddings"), MR_PROTO_OPENAI_EMBEDDINGS },
    { ngx_string("openai_images"), MR_PROTO_OPENAI_IMAGES },
    { ngx_string("anthropic"), MR_PROTO_ANTHROPIC },
    { ngx_string("async"), MR_PROTO_ASYNC },
    { ngx_null_string, 0 }
};


const char *
mr_route_protocol_name(ngx_uint_t protocol)
{
    ngx_uint_t  i;

    for (i = 0; mr_route_protocols[i].protocol; i++) {
        if (mr_route_protocols[i].protocol == protocol) {
            return (const char *) mr_route_protocols[i].name.data;
        }
    }

    return "unknown";
}


mr_route_t *
mr_route_find(mr_main_conf_t *mcf, u_char *name, size_t len)
{
    ngx_uint_t   i;
    mr_route_t  *rt;

    rt = mcf->routes.elts;

    for (i = 0; i < mcf->routes.nelts; i++) {
        if (rt[i].name.len == len
            && ngx_strncmp(rt[i].name.data, name, len) == 0)
        {
            return &rt[i];
        }
    }

    return NULL;
}


static ngx_int_t
mr_route_name_valid(ngx_str_t *name)
{
    u_char      c;
    ngx_uint_t  i;

    if (name->len == 0 || name->len > MR_ROUTE_NAME_LEN) {
        return NGX_ERROR;
    }

    for (i = 0; i < name->len; i++) {
        c = name->data[i];

        if (!((c >= 'a' && c <= 'z') || (c >= '0' && c <= '9')
              || c == '-' || c == '_' || c == '.'))
        {
            return NGX_ERROR;
        }
    }

    return NGX_OK;
}


char *
mr_route_directive(ngx_conf_t *cf, ngx_command_t *cmd, void *conf)
{
    mr_main_conf_t *mcf = conf;

    ngx_int_t    n;
    ngx_str_t   *value, name, arg;
    ngx_uint_t   i, j, field;
    mr_route_t  *rt;

    value = cf->args->elts;
    field = 0;

    if (mr_route_name_valid(&value[1]) != NGX_OK) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "\"modelroute_route\": invalid name \"%V\" "
                           "(1-%d of a-z 0-9 - _ .)", &value[1],
                           MR_ROUTE_NAME_LEN);
        return NGX_CONF_ERROR;
    }

    if (mr_route_find(mcf, value[1].data, value[1].len)) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "\"modelroute_route\" \"%V\" is declared twice",
                           &value[1]);
        return NGX_CONF_ERROR;
    }

    if (value[2].len == 0 || value[2].data[0] != '/') {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "\"modelroute_route\" \"%V\": the location "
                           "must be a URI, not \"%V\"", &value[1], &value[2]);
        return NGX_CONF_ERROR;
    }

    rt = ngx_array_push(&mcf->routes);
    if (rt == NULL) {
        return NGX_CONF_ERROR;
    }

    ngx_memzero(rt, sizeof(mr_route_t));
    rt->name = value[1];
    rt->location = value[2];
    rt->timeout = 60000;
    rt->breaker_failures = 5;
    rt->breaker_reset = 30000;
    rt->index = mcf->routes.nelts - 1;

    for (i = 3; i < cf->args->nelts; i++) {

        if (mr_conf_param(&value[i], &name, &arg) != NGX_OK) {
            goto invalid;
        }

        if (name.len == 8 && ngx_strncmp(name.data, "protocol", 8) == 0) {
            for (j = 0; mr_route_protocols[j].protocol; j++) {
                if (mr_route_protocols[j].name.len == arg.len
                    && ngx_strncmp(mr_route_protocols[j].name.data,
                                   arg.data, arg.len) == 0)
                {
                    rt->protocol = mr_route_protocols[j].protocol;
                    break;
                }
            }

            if (rt->protocol == 0) {
                goto invalid;
            }

        } else if (name.len == 15
                   && ngx_strncmp(name.data, "max_concurrency", 15) == 0)
        {
            n = ngx_atoi(arg.data, arg.len);
            if (n < 1 || n > 1000000) {
                goto invalid;
            }

            rt->max_concurrency = n;

        } else if (name.len == 7 && ngx_strncmp(name.data, "timeout", 7) == 0)
        {
            rt->timeout = ngx_parse_time(&arg, 0);
            if (rt->timeout == (ngx_msec_t) NGX_ERROR
                || rt->timeout < 10 || rt->timeout > 86400 * 1000)
            {
                goto invalid;
            }

        } else if (name.len == 7 && ngx_strncmp(name.data, "breaker", 7) == 0)
        {
            n = ngx_atoi(arg.data, arg.len);
            if (n < 1 || n > 1000000) {
                goto invalid;
            }

            rt->breaker_failures = n;

        } else if (name.len == 13
                   && ngx_strncmp(name.data, "breaker_reset", 13) == 0)
        {
            rt->breaker_reset = ngx_parse_time(&arg, 0);
            if (rt->breaker_reset == (ngx_msec_t) NGX_ERROR
                || rt->breaker_reset < 10
                || rt->breaker_reset > 86400 * 1000)
            {
                goto invalid;
            }

        } else if (name.len == 16
                   && ngx_strncmp(name.data, "max_tokens_field", 16) == 0)
        {
            if (arg.len == 10
                && ngx_strncmp(arg.data, "max_tokens", 10) == 0)
            {
                rt->completion_tokens = 0;

            } else if (arg.len == 21
                       && ngx_strncmp(arg.data, "max_completion_tokens",
                                      21) == 0)
            {
                rt->completion_tokens = 1;

            } else {
                goto invalid;
            }

            field = 1;

        } else {
            goto invalid;
        }
    }

    if (field && rt->protocol != MR_PROTO_OPENAI_CHAT) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "\"modelroute_route\" \"%V\": max_tokens_field "
                           "is for protocol=openai_chat only", &value[1]);
        return NGX_CONF_ERROR;
    }

    if (rt->protocol == 0) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "\"modelroute_route\" \"%V\" needs protocol= "
                           "(openai_chat, openai_embeddings, openai_images, "
                           "anthropic or async)", &value[1]);
        return NGX_CONF_ERROR;
    }

    return NGX_CONF_OK;

invalid:

    ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                       "\"modelroute_route\" \"%V\": invalid parameter "
                       "\"%V\"", &value[1], &value[i]);
    return NGX_CONF_ERROR;
}


/* routes= and attempts= of modelroute_model; NGX_DECLINED: neither */

ngx_int_t
mr_route_model_param(ngx_conf_t *cf, mr_model_t *m, ngx_str_t *name,
    ngx_str_t *arg)
{
    u_char            *p, *last, *s, *colon;
    ngx_int_t          n;
    mr_model_route_t  *mr;

    if (name->len == 8 && ngx_strncmp(name->data, "attempts", 8) == 0) {
        n = ngx_atoi(arg->data, arg->len);
        if (n < 1 || n > 100) {
            ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                               "\"modelroute_model\" \"%V\": invalid "
                               "attempts \"%V\" (1 to 100)", &m->slug, arg);
            return NGX_ERROR;
        }

        m->attempts = n;
        return NGX_OK;
    }

    if (name->len != 6 || ngx_strncmp(name->data, "routes", 6) != 0) {
        return NGX_DECLINED;
    }

    if (m->routes.nelts) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "\"modelroute_model\" \"%V\": routes= twice",
                           &m->slug);
        return NGX_ERROR;
    }

    p = arg->data;
    last = p + arg->len;

    while (p < last) {
        s = p;

        while (p < last && *p != ',') {
            p++;
        }

        mr = ngx_array_push(&m->routes);
        if (mr == NULL) {
            return NGX_ERROR;
        }

        ngx_memzero(mr, sizeof(mr_model_route_t));

        colon = ngx_strlchr(s, p, ':');

        mr->name.data = s;
        mr->name.len = (colon ? colon : p) - s;

        if (colon) {
            mr->provider_model.data = colon + 1;
            mr->provider_model.len = p - colon - 1;

        } else {
            mr->provider_model = m->slug;
        }

        if (mr_route_name_valid(&mr->name) != NGX_OK
            || mr->provider_model.len == 0
            || mr->provider_model.len > 256)
        {
            ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                               "\"modelroute_model\" \"%V\": invalid route "
                               "\"%*s\" in routes=", &m->slug,
                               (size_t) (p - s), s);
            return NGX_ERROR;
        }

        if (p < last) {
            p++;

            if (p == last) {
                ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                                   "\"modelroute_model\" \"%V\": routes= "
                                   "ends with a comma", &m->slug);
                return NGX_ERROR;
            }
        }
    }

    if (m->routes.nelts == 0) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "\"modelroute_model\" \"%V\": empty routes=",
                           &m->slug);
        return NGX_ERROR;
    }

    return NGX_OK;
}


/* after the http block: routes= name declared routes */

char *
mr_route_resolve(ngx_conf_t *cf, mr_main_conf_t *mcf)
{
    ngx_uint_t         i, j, async;
    mr_model_t        *m;
    mr_model_route_t  *mr;

    m = mcf->models.elts;
    async = 0;

    for (i = 0; i < mcf->models.nelts; i++) {
        mr = m[i].routes.elts;

        if (m[i].attempts == 0) {
            m[i].attempts = ngx_max(3, m[i].routes.nelts);
        }

        for (j = 0; j < m[i].routes.nelts; j++) {
            mr[j].route = mr_route_find(mcf, mr[j].name.data,
                                        mr[j].name.len);

            if (mr[j].route == NULL) {
                ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                                   "\"modelroute_model\" \"%V\": unknown "
                                   "route \"%V\" (declare it with "
                                   "\"modelroute_route\")",
                                   &m[i].slug, &mr[j].name);
                return NGX_CONF_ERROR;
            }

            if (mr[j].route->protocol == MR_PROTO_ASYNC) {
                async = 1;
            }
        }

        if (m[i].routes.nelts && mcf->dispatch_srv == NULL) {
            ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                               "\"modelroute_model\" \"%V\" has routes: "
                               "a server with \"modelroute_dispatch\" "
                               "must hold their locations", &m[i].slug);
            return NGX_CONF_ERROR;
        }
    }

    if (async && mcf->callback_url.len == 0) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "routes with protocol=async need "
                           "\"modelroute_callback_url\"");
        return NGX_CONF_ERROR;
    }

    return NGX_CONF_OK;
}


/* server { modelroute_dispatch; }: no default listen, see below */

char *
mr_route_dispatch_directive(ngx_conf_t *cf, ngx_command_t *cmd, void *conf)
{
    mr_main_conf_t            *mcf;
    ngx_http_core_srv_conf_t  *cscf;

    mcf = ngx_http_conf_get_module_main_conf(cf, ngx_http_modelroute_module);
    cscf = ngx_http_conf_get_module_srv_conf(cf, ngx_http_core_module);

    if (mcf->dispatch_srv) {
        return mcf->dispatch_srv == cscf ? "is duplicate"
                                         : "is in two servers";
    }

    mcf->dispatch_srv = cscf;

    /* the unix socket is added in postconfiguration, once the store is set */
    cscf->listen = 1;

    return NGX_CONF_OK;
}


/*
 * postconfiguration: listen on <node dir>/dispatch.sock in the server (the
 * LMDB store's directory, or modelroute_node_dir)
 */

ngx_int_t
mr_route_listen(ngx_conf_t *cf, mr_main_conf_t *mcf)
{
    u_char                 *p;
    ngx_url_t               u;
    ngx_str_t               path;
    ngx_http_listen_opt_t   lsopt;

    if (mcf->dispatch_srv == NULL) {
        return NGX_OK;
    }

    if (mcf->node_dir.len == 0) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "\"modelroute_dispatch\" needs "
                           "\"modelroute_store\" in the http block");
        return NGX_ERROR;
    }

    path.len = mcf->node_dir.len + sizeof(MR_DISPATCH_SOCKET) - 1;

    if (path.len >= sizeof(((struct sockaddr_un *) 0)->sun_path)) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "\"modelroute_dispatch\": the socket path "
                           "\"%V" MR_DISPATCH_SOCKET "\" is too long for "
                           "a unix socket", &mcf->node_dir);
        return NGX_ERROR;
    }

    path.data = ngx_pnalloc(cf->pool, path.len + 1);
    if (path.data == NULL) {
        return NGX_ERROR;
    }

    p = ngx_cpymem(path.data, mcf->node_dir.data, mcf->node_dir.len);
    p = ngx_cpymem(p, MR_DISPATCH_SOCKET, sizeof(MR_DISPATCH_SOCKET) - 1);
    *p = '\0';

    mcf->dispatch_socket = path;

    /*
     * nginx binds its listening sockets before the modules' init_module,
     * where the store's directory is made (and handed to the workers)
     */

    p = ngx_pnalloc(cf->pool, mcf->node_dir.len + 1);
    if (p == NULL) {
        return NGX_ERROR;
    }

    ngx_cpystrn(p, mcf->node_dir.data, mcf->node_dir.len + 1);

    if (ngx_create_dir(p, 0700) == NGX_FILE_ERROR && ngx_errno != NGX_EEXIST) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, ngx_errno,
                           "%s: cannot create \"%s\"",
                           mcf->pg ? "modelroute_node_dir"
                                   : "modelroute_store", p);
        return NGX_ERROR;
    }

    mr_route_stale_socket(cf, &path);

    ngx_memzero(&u, sizeof(ngx_url_t));

    u.url.len = sizeof("unix:") - 1 + path.len;
    u.url.data = ngx_pnalloc(cf->pool, u.url.len);
    if (u.url.data == NULL) {
        return NGX_ERROR;
    }

    ngx_sprintf(u.url.data, "unix:%V", &path);
    u.listen = 1;

    if (ngx_parse_url(cf->pool, &u) != NGX_OK) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "\"modelroute_dispatch\": %s in \"%V\"",
                           u.err ? u.err : "invalid address", &u.url);
        return NGX_ERROR;
    }

    ngx_memzero(&lsopt, sizeof(ngx_http_listen_opt_t));

    lsopt.backlog = NGX_LISTEN_BACKLOG;
    lsopt.rcvbuf = -1;
    lsopt.sndbuf = -1;
#if (NGX_HAVE_SETFIB)
    lsopt.setfib = -1;
#endif
#if (NGX_HAVE_TCP_FASTOPEN)
    lsopt.fastopen = -1;
#endif
#if (NGX_HAVE_INET6)
    lsopt.ipv6only = 1;
#endif

    lsopt.sockaddr = u.addrs[0].sockaddr;
    lsopt.socklen = u.addrs[0].socklen;
    lsopt.addr_text = u.addrs[0].name;

    return ngx_http_add_listen(cf, mcf->dispatch_srv, &lsopt);
}


/*
 * A socket file nobody listens on (nginx was killed) makes bind() fail:
 * remove it.  One that answers belongs to the running nginx, which hands
 * its socket over on reload: keep it.
 */

static void
mr_route_stale_socket(ngx_conf_t *cf, ngx_str_t *path)
{
    int                 s, rc;
    ngx_err_t           err;
    ngx_file_info_t     fi;
    struct sockaddr_un  sun;

    if (ngx_file_info(path->data, &fi) == NGX_FILE_ERROR
        || !S_ISSOCK(fi.st_mode))
    {
        return;
    }

    s = socket(AF_UNIX, SOCK_STREAM, 0);
    if (s == -1) {
        return;
    }

    /* a listener with a full backlog must not stall a reload: EAGAIN */

    if (ngx_nonblocking(s) == -1) {
        close(s);
        return;
    }

    ngx_memzero(&sun, sizeof(struct sockaddr_un));
    sun.sun_family = AF_UNIX;
    ngx_memcpy(sun.sun_path, path->data, path->len);

    rc = connect(s, (struct sockaddr *) &sun, sizeof(struct sockaddr_un));
    err = ngx_socket_errno;

    close(s);

    if (rc == -1 && err == ECONNREFUSED) {
        ngx_log_error(NGX_LOG_NOTICE, cf->log, 0,
                      "modelroute: removing the stale socket \"%V\"", path);
        (void) ngx_delete_file(path->data);
    }
}
