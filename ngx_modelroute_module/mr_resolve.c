
/*
 * ModelRoute: the resolver of webhook host names (configuration).
 *
 * A webhook's host is a name a tenant chooses: it is resolved by nginx's
 * own non-blocking resolver (ngx_resolve_name(), in mr_webhook.c), never by
 * libc or libcurl in a worker.  "modelroute_webhook_resolver" names the
 * servers as nginx's "resolver" directive does; without it the nameservers
 * of /etc/resolv.conf are read when the configuration is loaded (none
 * listed means 127.0.0.1, as for libc).  Neither /etc/hosts nor the
 * "search" and "options" lines are used.
 */


#include <ngx_config.h>
#include <ngx_core.h>

#include "ngx_http_modelroute_module.h"
#include "mr_resolve.h"


#define MR_RESOLV_CONF      "/etc/resolv.conf"
#define MR_RESOLV_MAX       3           /* nameservers libc uses (MAXNS) */
#define MR_RESOLV_SIZE      65536       /* bytes of the file read */


static ngx_uint_t mr_resolve_system(ngx_conf_t *cf, ngx_str_t *names);
static ngx_int_t mr_resolve_server(ngx_conf_t *cf, u_char *p, size_t len,
    ngx_str_t *name);


/* modelroute_webhook_resolver address ... [valid=time] [ipv6=on|off]; */

char *
mr_resolve_directive(ngx_conf_t *cf, ngx_command_t *cmd, void *conf)
{
    mr_main_conf_t *mcf = conf;

    ngx_str_t  *value;

    if (mcf->webhook_resolver) {
        return "is duplicate";
    }

    value = cf->args->elts;

    mcf->webhook_resolver = ngx_resolver_create(cf, &value[1],
                                                cf->args->nelts - 1);
    if (mcf->webhook_resolver == NULL) {
        return NGX_CONF_ERROR;
    }

    return NGX_CONF_OK;
}


char *
mr_resolve_init_conf(ngx_conf_t *cf, mr_main_conf_t *mcf)
{
    ngx_uint_t  n;
    ngx_str_t   names[MR_RESOLV_MAX];

    ngx_conf_init_msec_value(mcf->webhook_resolver_timeout, 10000);

    if (mcf->webhook_resolver_timeout < 1) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "\"modelroute_webhook_resolver_timeout\" must be "
                           "at least 1ms");
        return NGX_CONF_ERROR;
    }

    if (mcf->webhook_resolver == NULL) {
        n = mr_resolve_system(cf, names);

        if (n == 0) {
            ngx_str_set(&names[0], "127.0.0.1");
            n = 1;
        }

        mcf->webhook_resolver = ngx_resolver_create(cf, names, n);
        if (mcf->webhook_resolver == NULL) {
            return NGX_CONF_ERROR;
        }
    }

    /*
     * a tenant's name that does not resolve is a failed attempt, recorded
     * with its delivery: the resolver's own lines are details for info
     */

    mcf->webhook_resolver->log_level = NGX_LOG_INFO;

    return NGX_CONF_OK;
}


/* the "nameserver" lines of /etc/resolv.conf, at most MR_RESOLV_MAX */

static ngx_uint_t
mr_resolve_system(ngx_conf_t *cf, ngx_str_t *names)
{
    u_char          *buf, *p, *last, *eol, *a;
    ssize_t          size;
    ngx_uint_t       n;
    ngx_file_t       file;
    ngx_file_info_t  fi;

    ngx_memzero(&file, sizeof(ngx_file_t));

    file.name.data = (u_char *) MR_RESOLV_CONF;
    file.name.len = sizeof(MR_RESOLV_CONF) - 1;
    file.log = cf->log;

    file.fd = ngx_open_file(file.name.data, NGX_FILE_RDONLY, NGX_FILE_OPEN, 0);
    if (file.fd == NGX_INVALID_FILE) {
        return 0;
    }

    n = 0;
    buf = NULL;

    if (ngx_fd_info(file.fd, &fi) == NGX_FILE_ERROR) {
        goto done;
    }

    size = (ssize_t) ngx_min(ngx_file_size(&fi), MR_RESOLV_SIZE);

    buf = ngx_alloc(size + 1, cf->log);
    if (buf == NULL) {
        goto done;
    }

    size = ngx_read_file(&file, buf, size, 0);
    if (size == NGX_ERROR) {
        goto done;
    }

    last = buf + size;

    for (p = buf; p < last && n < MR_RESOLV_MAX; p = eol + 1) {
        eol = ngx_strlchr(p, last, '\n');
        if (eol == NULL) {
            eol = last;
        }

        if (eol - p < 11
            || ngx_strncmp(p, "nameserver", 10) != 0
            || (p[10] != ' ' && p[10] != '\t'))
        {
            continue;
        }

        for (p += 10; p < eol && (*p == ' ' || *p == '\t'); p++) {
            /* void */
        }

        for (a = p; p < eol && *p != ' ' && *p != '\t' && *p != '\r'
                    && *p != '#' && *p != ';'; p++)
        {
            /* void */
        }

        if (mr_resolve_server(cf, a, p - a, &names[n]) == NGX_OK) {
            n++;
        }
    }

done:

    if (buf) {
        ngx_free(buf);
    }

    if (ngx_close_file(file.fd) == NGX_FILE_ERROR) {
        ngx_log_error(NGX_LOG_ALERT, cf->log, ngx_errno,
                      ngx_close_file_n " \"%V\" failed", &file.name);
    }

    return n;
}


/* an address as ngx_resolver_create() takes it: "[...]" for IPv6 */

static ngx_int_t
mr_resolve_server(ngx_conf_t *cf, u_char *p, size_t len, ngx_str_t *name)
{
    u_char  *d;
#if (NGX_HAVE_INET6)
    u_char   addr6[16];
#endif

    if (len == 0) {
        return NGX_DECLINED;
    }

    if (ngx_inet_addr(p, len) != INADDR_NONE) {
        d = ngx_pnalloc(cf->pool, len + 1);
        if (d == NULL) {
            return NGX_ERROR;
        }

        name->data = d;
        name->len = len;
        *ngx_cpymem(d, p, len) = '\0';

        return NGX_OK;
    }

#if (NGX_HAVE_INET6)

    /* a scoped address (fe80::1%eth0) cannot be given to nginx */

    if (ngx_inet6_addr(p, len, addr6) == NGX_OK) {
        d = ngx_pnalloc(cf->pool, len + 3);
        if (d == NULL) {
            return NGX_ERROR;
        }

        name->data = d;
        name->len = len + 2;

        *d++ = '[';
        d = ngx_cpymem(d, p, len);
        *d++ = ']';
        *d = '\0';

        return NGX_OK;
    }

#endif

    return NGX_DECLINED;
}
