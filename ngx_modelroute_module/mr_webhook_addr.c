
/*
 * ModelRoute: where webhooks may go.
 *
 * At registration a URL must be https (http too with
 * modelroute_webhook_allow_private) and its host, when it is an address
 * literal or localhost, must be public.  At delivery time every address a
 * name resolves to, and the address libcurl connects to, is checked again
 * (mr_webhook_addr_refused()): not loopback, private, link-local and the
 * like, unless modelroute_webhook_allow_private.
 */


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>

#include <arpa/inet.h>

#include "ngx_http_modelroute_module.h"
#include "mr_webhook_addr.h"


const char *
mr_webhook_addr_refused(mr_main_conf_t *mcf, struct sockaddr *sa)
{
    if (!mcf->webhook_allow_private && mr_webhook_addr_blocked(sa)) {
        return "not a public address";
    }

    return NULL;
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
