
/*
 * ModelRoute: webhook delivery.
 *
 * Every worker claims due deliveries from the store (MR_OP_DLV_CLAIM: each
 * with a lease, in the group commit), sends them with libcurl on the event
 * loop (mr_curl.c), and records each attempt (MR_OP_DLV_DONE).  A worker
 * that dies or exits abandons its attempts; their leases end and another
 * worker sends them again, with the same event id.
 */


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_event.h>

#include <arpa/inet.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <jansson.h>

#include "ngx_http_modelroute_module.h"
#include "mr_util.h"
#include "mr_store.h"
#include "mr_curl.h"
#include "mr_webhook.h"


#define MR_WH_POLL        1000      /* ms between claims when idle */
#define MR_WH_LEASE_PAD   5000      /* ms of lease beyond the timeout */
#define MR_WH_BODY_MAX    65536     /* bytes of an answer we read */


typedef struct {
    ngx_queue_t               queue;
    mr_dlv_job_t             *job;
    CURL                     *easy;
    struct curl_slist        *headers;
    ngx_msec_t                start;
    size_t                    received;
    ngx_uint_t                blocked;       /* the address was refused */
    char                      errbuf[CURL_ERROR_SIZE];
} mr_wh_send_t;


static void mr_webhook_kick(void);
static void mr_webhook_claim(ngx_event_t *ev);
static void mr_webhook_claimed(mr_store_op_t *op);
static void mr_webhook_send(mr_dlv_job_t *job);
static void mr_webhook_sent(CURL *easy, CURLcode rc, void *data);
static void mr_webhook_recorded(mr_store_op_t *op);
static void mr_webhook_free(mr_wh_send_t *s);
static ngx_int_t mr_webhook_sign(mr_dlv_job_t *job, time_t ts,
    struct curl_slist **list);
static curl_socket_t mr_webhook_opensocket(void *clientp,
    curlsocktype purpose, struct curl_sockaddr *address);
static size_t mr_webhook_discard(char *ptr, size_t size, size_t nmemb,
    void *userdata);


static mr_main_conf_t  *mr_wh_mcf;
static ngx_event_t      mr_wh_claim_ev;
static mr_store_op_t    mr_wh_claim_op;
static ngx_uint_t       mr_wh_claiming;
static ngx_uint_t       mr_wh_kicked;     /* while claiming */
static ngx_queue_t      mr_wh_sends;
static ngx_uint_t       mr_wh_active;


ngx_int_t
mr_webhook_init_process(ngx_cycle_t *cycle, mr_main_conf_t *mcf)
{
    mr_wh_mcf = mcf;
    ngx_queue_init(&mr_wh_sends);

    mr_wh_claim_ev.handler = mr_webhook_claim;
    mr_wh_claim_ev.log = cycle->log;
    mr_wh_claim_ev.data = &mr_wh_claim_op;
    mr_wh_claim_ev.cancelable = 1;

    mr_store_deliveries_hook = mr_webhook_kick;

    ngx_add_timer(&mr_wh_claim_ev, MR_WH_POLL / 2 + ngx_random() % MR_WH_POLL);

    return NGX_OK;
}


/* new deliveries were committed: claim at once */

static void
mr_webhook_kick(void)
{
    if (ngx_exiting || ngx_quit || ngx_terminate) {
        return;
    }

    if (mr_wh_claiming) {
        /* the claim in flight may not see what made this kick */
        mr_wh_kicked = 1;
        return;
    }

    ngx_add_timer(&mr_wh_claim_ev, 1);
}


static void
mr_webhook_claim(ngx_event_t *ev)
{
    u_char         *busy;
    ngx_uint_t      n;
    ngx_queue_t    *q;
    mr_store_op_t  *op;
    mr_wh_send_t   *s;

    if (mr_wh_claiming || ngx_exiting || ngx_quit || ngx_terminate) {
        return;
    }

    if (mr_wh_active >= mr_wh_mcf->webhook_total) {
        ngx_add_timer(ev, MR_WH_POLL);
        return;
    }

    op = &mr_wh_claim_op;
    ngx_memzero(op, sizeof(mr_store_op_t));

    /* the accounts and targets of the attempts in flight, for their caps */

    busy = NULL;
    n = 0;

    if (mr_wh_active) {
        busy = ngx_alloc(mr_wh_active * MR_DLV_BUSY_LEN, ev->log);
        if (busy == NULL) {
            ngx_add_timer(ev, MR_WH_POLL);
            return;
        }

        for (q = ngx_queue_head(&mr_wh_sends);
             q != ngx_queue_sentinel(&mr_wh_sends) && n < mr_wh_active;
             q = ngx_queue_next(q))
        {
            s = ngx_queue_data(q, mr_wh_send_t, queue);
            ngx_memcpy(busy + n * MR_DLV_BUSY_LEN, s->job->busy,
                       MR_DLV_BUSY_LEN);
            n++;
        }
    }

    op->type = MR_OP_DLV_CLAIM;
    op->handler = mr_webhook_claimed;
    op->wh.limit = mr_wh_mcf->webhook_total - mr_wh_active;
    op->wh.per_endpoint = mr_wh_mcf->webhook_per_endpoint;
    op->wh.busy = busy;
    op->wh.nbusy = n;
    op->wh.lease_ms = (int64_t) mr_wh_mcf->webhook_timeout + MR_WH_LEASE_PAD;

    mr_wh_claiming = 1;
    mr_wh_kicked = 0;

    mr_store_submit(op);
}


static void
mr_webhook_claimed(mr_store_op_t *op)
{
    ngx_uint_t     n;
    mr_dlv_job_t  *job, *next;

    mr_wh_claiming = 0;

    if (op->wh.busy) {
        ngx_free(op->wh.busy);
        op->wh.busy = NULL;
    }

    n = 0;

    for (job = op->wh.jobs; job; job = next) {
        next = job->next;
        job->next = NULL;

        if (ngx_exiting || ngx_quit || ngx_terminate) {
            ngx_free(job);     /* its lease ends; another worker sends it */
            continue;
        }

        mr_webhook_send(job);
        n++;
    }

    op->wh.jobs = NULL;

    if (ngx_exiting || ngx_quit || ngx_terminate) {
        return;
    }

    /* a full claim may have left more behind; a kick came meanwhile */

    ngx_add_timer(&mr_wh_claim_ev,
                  ((n && n == op->wh.limit) || mr_wh_kicked) ? 1
                                                             : MR_WH_POLL);
}


static void
mr_webhook_send(mr_dlv_job_t *job)
{
    CURL          *easy;
    time_t         now;
    mr_wh_send_t  *s;

    s = ngx_calloc(sizeof(mr_wh_send_t), ngx_cycle->log);
    if (s == NULL) {
        ngx_free(job);
        return;
    }

    s->job = job;

    easy = curl_easy_init();
    if (easy == NULL) {
        goto failed;
    }

    s->easy = easy;
    now = ngx_time();

    if (mr_webhook_sign(job, now, &s->headers) != NGX_OK) {
        goto failed;
    }

    curl_easy_setopt(easy, CURLOPT_URL, (char *) job->url.data);
    curl_easy_setopt(easy, CURLOPT_POST, 1L);
    curl_easy_setopt(easy, CURLOPT_POSTFIELDS, (char *) job->body.data);
    curl_easy_setopt(easy, CURLOPT_POSTFIELDSIZE, (long) job->body.len);
    curl_easy_setopt(easy, CURLOPT_HTTPHEADER, s->headers);
    curl_easy_setopt(easy, CURLOPT_TIMEOUT_MS,
                     (long) mr_wh_mcf->webhook_timeout);
    curl_easy_setopt(easy, CURLOPT_FOLLOWLOCATION, 0L);
    curl_easy_setopt(easy, CURLOPT_ERRORBUFFER, s->errbuf);
    curl_easy_setopt(easy, CURLOPT_WRITEFUNCTION, mr_webhook_discard);
    curl_easy_setopt(easy, CURLOPT_WRITEDATA, s);
    curl_easy_setopt(easy, CURLOPT_PROXY, "");   /* no proxy from env */
    curl_easy_setopt(easy, CURLOPT_PROTOCOLS_STR,
                     mr_wh_mcf->webhook_allow_private ? "http,https"
                                                      : "https");

    if (!mr_wh_mcf->webhook_allow_private) {
        /* the address curl connects to, whatever the name resolved to */
        curl_easy_setopt(easy, CURLOPT_OPENSOCKETFUNCTION,
                         mr_webhook_opensocket);
        curl_easy_setopt(easy, CURLOPT_OPENSOCKETDATA, s);
    }

    s->start = ngx_current_msec;

    if (mr_curl_start(easy, mr_webhook_sent, s) != NGX_OK) {
        goto failed;
    }

    ngx_queue_insert_tail(&mr_wh_sends, &s->queue);
    mr_wh_active++;

    return;

failed:

    ngx_log_error(NGX_LOG_ERR, ngx_cycle->log, 0,
                  "modelroute webhooks: cannot start a delivery");

    /* its lease ends and it is tried again */
    ngx_queue_init(&s->queue);
    mr_webhook_free(s);
}


static void
mr_webhook_sent(CURL *easy, CURLcode rc, void *data)
{
    mr_wh_send_t *s = data;

    long            code;
    size_t          len;
    const char     *err;
    mr_store_op_t  *op;

    ngx_queue_remove(&s->queue);
    ngx_queue_init(&s->queue);
    mr_wh_active--;

    if (rc == MR_CURL_ABANDONED) {
        /* the worker exits: the lease ends, another worker sends it */
        mr_webhook_free(s);
        return;
    }

    code = 0;

    if (rc == CURLE_OK
        || (rc == CURLE_WRITE_ERROR && s->received > MR_WH_BODY_MAX))
    {
        /* a long answer is cut short: its status is what counts */
        curl_easy_getinfo(easy, CURLINFO_RESPONSE_CODE, &code);
        err = NULL;

    } else if (s->blocked) {
        err = "address not allowed";

    } else {
        err = s->errbuf[0] ? s->errbuf : curl_easy_strerror(rc);
    }

    len = err ? ngx_strlen(err) : 0;

    op = ngx_calloc(sizeof(mr_store_op_t) + len, ngx_cycle->log);
    if (op == NULL) {
        mr_webhook_free(s);
        return;
    }

    op->type = MR_OP_DLV_DONE;
    op->handler = mr_webhook_recorded;
    ngx_memcpy(op->wh.dlv_id, s->job->dlv_id, MR_DLV_ID_LEN);
    op->wh.token = s->job->token;
    op->wh.status_code = (ngx_uint_t) code;
    op->wh.latency_ms = (int64_t) (ngx_current_msec - s->start);
    op->wh.schedule = mr_wh_mcf->webhook_retry->elts;
    op->wh.nschedule = mr_wh_mcf->webhook_retry->nelts;
    op->wh.max_age_ms = (int64_t) mr_wh_mcf->webhook_max_age * 1000;

    if (len) {
        op->wh.error.data = (u_char *) (op + 1);
        op->wh.error.len = len;
        ngx_memcpy(op->wh.error.data, err, len);
    }

    ngx_log_debug3(NGX_LOG_DEBUG_HTTP, ngx_cycle->log, 0,
                   "modelroute webhooks: %*s answered %l",
                   (size_t) MR_DLV_ID_LEN, s->job->dlv_id, code);

    mr_webhook_free(s);

    mr_store_submit(op);
}


static void
mr_webhook_recorded(mr_store_op_t *op)
{
    if (op->result != MR_R_OK && op->result != MR_R_NOOP) {
        ngx_log_error(NGX_LOG_WARN, ngx_cycle->log, 0,
                      "modelroute webhooks: an attempt of %*s was not "
                      "recorded; it is tried again after its lease",
                      (size_t) MR_DLV_ID_LEN, op->wh.dlv_id);
    }

    ngx_free(op);

    /* room for another attempt */
    mr_webhook_kick();
}


static void
mr_webhook_free(mr_wh_send_t *s)
{
    if (s->easy) {
        curl_easy_cleanup(s->easy);
    }

    if (s->headers) {
        curl_slist_free_all(s->headers);
    }

    ngx_free(s->job);
    ngx_free(s);
}


/*
 * The headers: ModelRoute's X-Signature over "<ts>.<body>" with the whole
 * secret as the key, and Standard Webhooks' webhook-signature over
 * "<id>.<ts>.<body>" with the secret's base64 part decoded as the key.
 */

static ngx_int_t
mr_webhook_sign(mr_dlv_job_t *job, time_t ts, struct curl_slist **list)
{
    u_char            *msg, *p;
    size_t             len;
    json_t            *extra, *value;
    ngx_str_t          src, dst;
    const char        *name;
    unsigned int       mlen;
    struct curl_slist *l, *n;
    u_char             mac[EVP_MAX_MD_SIZE], key[64];
    u_char             line[256], b64[ngx_base64_encoded_length(32) + 1];

    len = job->body.len + NGX_TIME_T_LEN + MR_EVT_ID_LEN + 2;

    msg = ngx_alloc(len, ngx_cycle->log);
    if (msg == NULL) {
        return NGX_ERROR;
    }

    l = NULL;

#define mr_header(...)                                                      \
    p = ngx_snprintf(line, sizeof(line) - 1, __VA_ARGS__);                  \
    *p = '\0';                                                              \
    n = curl_slist_append(l, (char *) line);                                \
    if (n == NULL) {                                                        \
        goto failed;                                                        \
    }                                                                       \
    l = n

    mr_header("Content-Type: application/json");
    mr_header("User-Agent: ModelRoute-Webhooks/1.0");
    mr_header("Expect:");
    mr_header("X-Signature-Timestamp: %T", ts);

    p = ngx_sprintf(msg, "%T.", ts);
    p = ngx_cpymem(p, job->body.data, job->body.len);

    if (HMAC(EVP_sha256(), job->secret.data, (int) job->secret.len,
             msg, p - msg, mac, &mlen) == NULL)
    {
        goto failed;
    }

    p = ngx_cpymem(line, "X-Signature: ", sizeof("X-Signature: ") - 1);
    p = ngx_hex_dump(p, mac, mlen);
    *p = '\0';

    n = curl_slist_append(l, (char *) line);
    if (n == NULL) {
        goto failed;
    }

    l = n;

    mr_header("webhook-id: %*s", (size_t) MR_EVT_ID_LEN, job->event_id);
    mr_header("webhook-timestamp: %T", ts);

    /* the key: base64 after "whsec_" */

    src.data = job->secret.data + 6;
    src.len = job->secret.len > 6 ? job->secret.len - 6 : 0;
    dst.data = key;

    if (ngx_base64_decoded_length(src.len) > sizeof(key)
        || ngx_decode_base64(&dst, &src) != NGX_OK)
    {
        goto failed;
    }

    p = ngx_sprintf(msg, "%*s.%T.", (size_t) MR_EVT_ID_LEN, job->event_id,
                    ts);
    p = ngx_cpymem(p, job->body.data, job->body.len);

    if (HMAC(EVP_sha256(), key, (int) dst.len, msg, p - msg, mac, &mlen)
        == NULL)
    {
        goto failed;
    }

    src.data = mac;
    src.len = mlen;
    dst.data = b64;
    ngx_encode_base64(&dst, &src);

    mr_header("webhook-signature: v1,%V", &dst);

    /* the endpoint's own headers */

    if (job->headers.len) {
        extra = json_loadb((char *) job->headers.data, job->headers.len, 0,
                           NULL);

        json_object_foreach(extra, name, value) {
            u_char  *h;
            size_t   hlen;

            if (!json_is_string(value)) {
                continue;
            }

            hlen = ngx_strlen(name) + 2 + json_string_length(value) + 1;

            h = ngx_alloc(hlen, ngx_cycle->log);
            if (h == NULL) {
                json_decref(extra);
                goto failed;
            }

            *ngx_sprintf(h, "%s: %s", name, json_string_value(value)) = '\0';

            n = curl_slist_append(l, (char *) h);
            ngx_free(h);

            if (n == NULL) {
                json_decref(extra);
                goto failed;
            }

            l = n;
        }

        json_decref(extra);
    }

#undef mr_header

    ngx_free(msg);
    *list = l;

    return NGX_OK;

failed:

    ngx_free(msg);
    curl_slist_free_all(l);

    return NGX_ERROR;
}


static curl_socket_t
mr_webhook_opensocket(void *clientp, curlsocktype purpose,
    struct curl_sockaddr *address)
{
    mr_wh_send_t *s = clientp;

    if (mr_webhook_addr_blocked(&address->addr)) {
        s->blocked = 1;
        return CURL_SOCKET_BAD;
    }

    return socket(address->family, address->socktype, address->protocol);
}


static size_t
mr_webhook_discard(char *ptr, size_t size, size_t nmemb, void *userdata)
{
    mr_wh_send_t *s = userdata;

    s->received += size * nmemb;

    /* the answer's body is not used: a huge one ends the transfer */
    return s->received > MR_WH_BODY_MAX ? 0 : size * nmemb;
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
