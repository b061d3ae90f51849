
/*
 * ModelRoute: where webhooks may go.
 *
 * At registration a URL must be https (http too with
 * modelroute_webhook_allow_private) and its host, when it is an address
 * literal or localhost, must be public.  At delivery time every address a
 * name resolves to, and the address libcurl connects to, is checked again
 * (mr_webhook_addr_refused()): not loopback, private, link-local and the
 * like (unless modelroute_webhook_allow_private), and never an address on
 * which this nginx serves the admin API (its listen addresses, and for a
 * wildcard listen its port on every local address).
 */


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>

#include <arpa/inet.h>
#include <ifaddrs.h>

#include "ngx_http_modelroute_module.h"
#include "mr_webhook_addr.h"


/* an address:port of the admin API */

typedef struct {
    ngx_sockaddr_t            sockaddr;
    socklen_t                 socklen;
    in_port_t                 port;
    ngx_uint_t                wildcard;  /* the port on every local address */
} mr_wh_admin_addr_t;


static ngx_int_t mr_webhook_addr_admin_add(ngx_conf_t *cf,
    mr_main_conf_t *mcf, ngx_http_listen_opt_t *opt);
static ngx_int_t mr_webhook_addr_locals(ngx_conf_t *cf, mr_main_conf_t *mcf);
static ngx_uint_t mr_webhook_addr_local(mr_main_conf_t *mcf,
    struct sockaddr *sa);
static struct sockaddr *mr_webhook_addr_v4(struct sockaddr *sa,
    struct sockaddr_in *sin);


const char *
mr_webhook_addr_refused(mr_main_conf_t *mcf, struct sockaddr *sa)
{
    in_port_t            port;
    ngx_uint_t           i;
    struct sockaddr_in   sin;
    mr_wh_admin_addr_t  *a;

    if (!mcf->webhook_allow_private && mr_webhook_addr_blocked(sa)) {
        return "not a public address";
    }

    if (mcf->webhook_admin_addrs == NULL) {
        return NULL;
    }

    sa = mr_webhook_addr_v4(sa, &sin);
    port = ngx_inet_get_port(sa);
    a = mcf->webhook_admin_addrs->elts;

    for (i = 0; i < mcf->webhook_admin_addrs->nelts; i++) {
        if (a[i].port != port) {
            continue;
        }

        if (a[i].wildcard
            ? mr_webhook_addr_local(mcf, sa)
            : ngx_cmp_sockaddr(sa, 0, &a[i].sockaddr.sockaddr, a[i].socklen,
                               0)
              == NGX_OK)
        {
            return "an address of the admin API";
        }
    }

    return NULL;
}


/* in a location with modelroute_admin: its server */

ngx_int_t
mr_webhook_addr_admin(ngx_conf_t *cf, mr_main_conf_t *mcf)
{
    ngx_http_core_srv_conf_t  **cscfp;

    if (mcf->webhook_admin_srvs == NULL) {
        mcf->webhook_admin_srvs = ngx_array_create(cf->pool, 2,
                                                   sizeof(void *));
        if (mcf->webhook_admin_srvs == NULL) {
            return NGX_ERROR;
        }
    }

    cscfp = ngx_array_push(mcf->webhook_admin_srvs);
    if (cscfp == NULL) {
        return NGX_ERROR;
    }

    *cscfp = ngx_http_conf_get_module_srv_conf(cf, ngx_http_core_module);

    return NGX_OK;
}


/* the listen addresses of the admin API's servers (all servers are merged) */

ngx_int_t
mr_webhook_addr_postconfiguration(ngx_conf_t *cf, mr_main_conf_t *mcf)
{
    ngx_uint_t                   p, a, s, k, found;
    ngx_http_conf_port_t        *port;
    ngx_http_conf_addr_t        *addr;
    ngx_http_core_srv_conf_t   **srv, **admin;
    ngx_http_core_main_conf_t   *cmcf;

    if (mcf->webhook_admin_srvs == NULL) {
        return NGX_OK;
    }

    cmcf = ngx_http_conf_get_module_main_conf(cf, ngx_http_core_module);

    if (cmcf->ports == NULL) {
        return NGX_OK;
    }

    admin = mcf->webhook_admin_srvs->elts;
    port = cmcf->ports->elts;

    for (p = 0; p < cmcf->ports->nelts; p++) {

        addr = port[p].addrs.elts;

        for (a = 0; a < port[p].addrs.nelts; a++) {

            srv = addr[a].servers.elts;
            found = 0;

            for (s = 0; s < addr[a].servers.nelts && !found; s++) {
                for (k = 0; k < mcf->webhook_admin_srvs->nelts; k++) {
                    if (srv[s] == admin[k]) {
                        found = 1;
                        break;
                    }
                }
            }

            if (found
                && mr_webhook_addr_admin_add(cf, mcf, &addr[a].opt) != NGX_OK)
            {
                return NGX_ERROR;
            }
        }
    }

    return NGX_OK;
}


static ngx_int_t
mr_webhook_addr_admin_add(ngx_conf_t *cf, mr_main_conf_t *mcf,
    ngx_http_listen_opt_t *opt)
{
    struct sockaddr      *sa;
    struct sockaddr_in    sin;
    mr_wh_admin_addr_t   *a;

    if (opt->sockaddr->sa_family != AF_INET
#if (NGX_HAVE_INET6)
        && opt->sockaddr->sa_family != AF_INET6
#endif
        )
    {
        return NGX_OK;      /* a unix socket: no URL reaches it */
    }

    if (mcf->webhook_admin_addrs == NULL) {
        mcf->webhook_admin_addrs = ngx_array_create(cf->pool, 2,
                                                 sizeof(mr_wh_admin_addr_t));
        if (mcf->webhook_admin_addrs == NULL) {
            return NGX_ERROR;
        }
    }

    a = ngx_array_push(mcf->webhook_admin_addrs);
    if (a == NULL) {
        return NGX_ERROR;
    }

    ngx_memzero(a, sizeof(mr_wh_admin_addr_t));

    sa = mr_webhook_addr_v4(opt->sockaddr, &sin);

    a->socklen = (sa == opt->sockaddr) ? opt->socklen
                                       : sizeof(struct sockaddr_in);
    ngx_memcpy(&a->sockaddr, sa, a->socklen);
    a->port = ngx_inet_get_port(sa);
    a->wildcard = opt->wildcard;

    if (a->wildcard && mcf->webhook_local == NULL) {
        return mr_webhook_addr_locals(cf, mcf);
    }

    return NGX_OK;
}


/* the addresses of this host's interfaces, for wildcard listens */

static ngx_int_t
mr_webhook_addr_locals(ngx_conf_t *cf, mr_main_conf_t *mcf)
{
    socklen_t         len;
    ngx_sockaddr_t   *sa;
    struct ifaddrs   *ifa, *i;

    mcf->webhook_local = ngx_array_create(cf->pool, 4,
                                          sizeof(ngx_sockaddr_t));
    if (mcf->webhook_local == NULL) {
        return NGX_ERROR;
    }

    if (getifaddrs(&ifa) == -1) {
        ngx_conf_log_error(NGX_LOG_WARN, cf, ngx_errno,
                           "getifaddrs() failed: webhooks are refused "
                           "the admin API's port on loopback addresses "
                           "only");
        return NGX_OK;
    }

    for (i = ifa; i; i = i->ifa_next) {
        if (i->ifa_addr == NULL) {
            continue;
        }

        switch (i->ifa_addr->sa_family) {

        case AF_INET:
            len = sizeof(struct sockaddr_in);
            break;

#if (NGX_HAVE_INET6)
        case AF_INET6:
            len = sizeof(struct sockaddr_in6);
            break;
#endif

        default:
            continue;
        }

        sa = ngx_array_push(mcf->webhook_local);
        if (sa == NULL) {
            freeifaddrs(ifa);
            return NGX_ERROR;
        }

        ngx_memzero(sa, sizeof(ngx_sockaddr_t));
        ngx_memcpy(sa, i->ifa_addr, len);
    }

    freeifaddrs(ifa);

    return NGX_OK;
}


/* loopback, unspecified (which reaches this host), or an interface's */

static ngx_uint_t
mr_webhook_addr_local(mr_main_conf_t *mcf, struct sockaddr *sa)
{
    ngx_uint_t            i;
    ngx_sockaddr_t       *l;
    struct sockaddr_in   *sin;
#if (NGX_HAVE_INET6)
    struct sockaddr_in6  *sin6;
#endif

    switch (sa->sa_family) {

    case AF_INET:
        sin = (struct sockaddr_in *) sa;

        if ((ntohl(sin->sin_addr.s_addr) >> 24) == 127
            || sin->sin_addr.s_addr == INADDR_ANY)
        {
            return 1;
        }

        break;

#if (NGX_HAVE_INET6)
    case AF_INET6:
        sin6 = (struct sockaddr_in6 *) sa;

        if (IN6_IS_ADDR_LOOPBACK(&sin6->sin6_addr)
            || IN6_IS_ADDR_UNSPECIFIED(&sin6->sin6_addr))
        {
            return 1;
        }

        break;
#endif

    default:
        return 0;
    }

    if (mcf->webhook_local == NULL) {
        return 0;
    }

    l = mcf->webhook_local->elts;

    for (i = 0; i < mcf->webhook_local->nelts; i++) {
        if (ngx_cmp_sockaddr(sa, 0, &l[i].sockaddr, 0, 0) == NGX_OK) {
            return 1;
        }
    }

    return 0;
}


/* an IPv4-mapped IPv6 address as the IPv4 address it is */

static struct sockaddr *
mr_webhook_addr_v4(struct sockaddr *sa, struct sockaddr_in *sin)
{
#if (NGX_HAVE_INET6)
    struct sockaddr_in6  *sin6;

    if (sa->sa_family != AF_INET6) {
        return sa;
    }

    sin6 = (struct sockaddr_in6 *) sa;

    if (!IN6_IS_ADDR_V4MAPPED(&sin6->sin6_addr)) {
        return sa;
    }

    ngx_memzero(sin, sizeof(struct sockaddr_in));
    sin->sin_family = AF_INET;
    sin->sin_port = sin6->sin6_port;
    ngx_memcpy(&sin->sin_addr, &sin6->sin6_addr.s6_addr[12], 4);

    return (struct sockaddr *) sin;
#else
    return sa;
#endif
}


/* loopback, private, link-local, CGNAT, multicast, metadata, unspecified */

ngx_int_t
mr_webhook_addr_blocked(struct sockaddr *sa)
{
    u_char                *b;
    uint32_t               a;
    struct sockaddr_in    *sin;
#if (NGX_HAVE_INET6)
    struct sockaddr_in6   *sin6;
#endif

    switch (sa->sa_family) {

    case AF_INET:
        sin = (struct sockaddr_in *) sa;
        a = ntohl(sin->sin_addr.s_addr);

        return (a >> 24) == 0                         /* 0.0.0.0/8 */
               || (a >> 24) == 10                     /* 10/8 */
               || (a >> 24) == 127                    /* loopback */
               || (a >> 16) == 0xa9fe                 /* 169.254/16 */
               || (a >> 20) == 0xac1                  /* 172.16/12 */
               || (a >> 16) == 0xc0a8                 /* 192.168/16 */
               || (a >> 22) == (100 << 2 | 1)         /* 100.64/10 */
               || (a >> 8) == 0xc00000                /* 192.0.0/24 */
               || (a >> 17) == (0xc612 >> 1)          /* 198.18/15 */
               || (a >> 28) >= 0xe;                   /* multicast+ */

#if (NGX_HAVE_INET6)
    case AF_INET6:
        sin6 = (struct sockaddr_in6 *) sa;
        b = sin6->sin6_addr.s6_addr;

        /* forms that carry an IPv4 address: check that one */

        if (IN6_IS_ADDR_V4MAPPED(&sin6->sin6_addr)
            || IN6_IS_ADDR_V4COMPAT(&sin6->sin6_addr)
            || (b[0] == 0 && b[1] == 0x64 && b[2] == 0xff && b[3] == 0x9b)
            || (ngx_memcmp(b, "\0\0\0\0\0\0\0\0\xff\xff\0\0", 12) == 0)
            || (b[0] == 0x20 && b[1] == 0x02))
        {
            struct sockaddr_in  v4;

            ngx_memzero(&v4, sizeof(struct sockaddr_in));
            v4.sin_family = AF_INET;
            ngx_memcpy(&v4.sin_addr, (b[0] == 0x20) ? b + 2 : b + 12, 4);

            return mr_webhook_addr_blocked((struct sockaddr *) &v4);
        }

        return IN6_IS_ADDR_UNSPECIFIED(&sin6->sin6_addr)
               || IN6_IS_ADDR_LOOPBACK(&sin6->sin6_addr)
               || IN6_IS_ADDR_LINKLOCAL(&sin6->sin6_addr)
               || IN6_IS_ADDR_SITELOCAL(&sin6->sin6_addr)
               || IN6_IS_ADDR_MULTICAST(&sin6->sin6_addr)
               || (b[0] & 0xfe) == 0xfc;              /* fc00::/7 */
#endif

    default:
        return 1;
    }
}


/*
 * At registration: the scheme, the characters, and a host that is an
 * address literal or localhost.  Names are checked at delivery time,
 * where the address is known.
 */

const char *
mr_webhook_url_check(ngx_str_t *url, ngx_uint_t allow_private)
{
    u_char               *p, *host, *last, c;
    size_t                hlen;
    struct sockaddr_in    sin;
#if (NGX_HAVE_INET6)
    struct sockaddr_in6   sin6;
#endif
    u_char                buf[64];

    if (url->len > 2048) {
        return "the URL is longer than 2048 characters";
    }

    for (p = url->data; p < url->data + url->len; p++) {
        c = *p;
        if (c <= 0x20 || c >= 0x7f || c == '"' || c == '\\') {
            return "the URL has characters that are not allowed";
        }
    }

    if (url->len > 8 && ngx_strncasecmp(url->data, (u_char *) "https://", 8)
                        == 0)
    {
        host = url->data + 8;

    } else if (allow_private && url->len > 7
               && ngx_strncasecmp(url->data, (u_char *) "http://", 7) == 0)
    {
        host = url->data + 7;

    } else {
        return allow_private ? "the URL must be http(s)"
                             : "the URL must be https";
    }

    last = url->data + url->len;

    for (p = host; p < last && *p != '/' && *p != '?' && *p != '#'; p++) {
        if (*p == '@') {
            return "the URL must not have a user name";
        }
    }

    last = p;

    if (host == last) {
        return "the URL has no host";
    }

    if (allow_private) {
        return NULL;
    }

    /* the host without its port */

    if (*host == '[') {
        p = ngx_strlchr(host, last, ']');
        if (p == NULL || ngx_strlchr(host, p, '%')) {
            return "the URL's host is not valid";
        }

        host++;
        hlen = p - host;

    } else {
        p = ngx_strlchr(host, last, ':');
        hlen = (p ? p : last) - host;
    }

    if (hlen == 0 || hlen >= sizeof(buf)) {
        return hlen ? NULL : "the URL has no host";
    }

    ngx_memcpy(buf, host, hlen);

    if (buf[hlen - 1] == '.') {
        hlen--;               /* "localhost." is localhost */
    }

    buf[hlen] = '\0';

    if (hlen == 0) {
        return "the URL has no host";
    }

    if (hlen >= 9 && ngx_strncasecmp(buf + hlen - 9, (u_char *) "localhost",
                                     9) == 0
        && (hlen == 9 || buf[hlen - 10] == '.'))
    {
        return "the URL's host is a loopback name";
    }

    ngx_memzero(&sin, sizeof(struct sockaddr_in));

    /* inet_aton(): also 127.1, 0x7f000001, 2130706433, 0177.0.0.1 */

    if (inet_aton((char *) buf, &sin.sin_addr) != 0) {
        sin.sin_family = AF_INET;

        return mr_webhook_addr_blocked((struct sockaddr *) &sin)
               ? "the URL's address is not public" : NULL;
    }

#if (NGX_HAVE_INET6)

    ngx_memzero(&sin6, sizeof(struct sockaddr_in6));

    if (inet_pton(AF_INET6, (char *) buf, &sin6.sin6_addr) == 1) {
        sin6.sin6_family = AF_INET6;

        return mr_webhook_addr_blocked((struct sockaddr *) &sin6)
               ? "the URL's address is not public" : NULL;
    }

#endif

    return NULL;
}
