
/*
 * ModelRoute: webhook delivery.
 *
 * Every worker claims due deliveries from the store (MR_OP_DLV_CLAIM: each
 * with a lease, in the group commit), sends them with libcurl on the event
 * loop (mr_curl.c), and records each attempt (MR_OP_DLV_DONE).
 *
 * An attempt's host, when it is a name, is resolved by nginx's resolver
 * (mr_resolve.c), never by libc or libcurl: the addresses that
 * mr_webhook_addr_refused() lets through are handed to libcurl with
 * CURLOPT_RESOLVE, and the one it connects to is checked again in
 * CURLOPT_OPENSOCKETFUNCTION.  Resolving and sending together take at
 * most modelroute_webhook_timeout.  A failed attempt is recorded with a
 * reason from a short list that tells a tenant nothing about the network
 * (a name that does not resolve, an address that is not allowed and a
 * refused connection read the same); the details are logged at info.
 *
 * A worker that exits (reload, quit) claims nothing more, but finishes and
 * records the attempts it has started: a timer that is not cancelable
 * keeps it while they run, each within the timeout.  A worker that dies
 * abandons its attempts; their leases end and another worker sends them
 * again, with the same event id.
 */


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_event.h>

#include <arpa/inet.h>
#include <jansson.h>

#include "ngx_http_modelroute_module.h"
#include "mr_util.h"
#include "mr_store.h"
#include "mr_curl.h"
#include "mr_webhook.h"
#include "mr_webhook_addr.h"


#define MR_WH_POLL        1000      /* ms between claims when idle */
#define MR_WH_LEASE_PAD   5000      /* ms of lease beyond the timeout */
#define MR_WH_EXIT_PAD    1000      /* ms an exiting worker waits beyond */
#define MR_WH_BODY_MAX    65536     /* bytes of an answer we read */
#define MR_WH_ADDRS_MAX   16        /* addresses of a name given to curl */
#define MR_WH_NAME_MAX    253

/* "+name:port:addr,[addr6],..." */
#define MR_WH_RESOLVE_LEN                                                    \
    (1 + MR_WH_NAME_MAX + 1 + 1 + 5 + 1                                      \
     + MR_WH_ADDRS_MAX * (NGX_INET6_ADDRSTRLEN + 3) + 1)

/* what a tenant sees of a failed attempt */
#define MR_WH_UNREACHABLE  "could not connect"
#define MR_WH_TIMEDOUT     "timed out"
#define MR_WH_TLS          "TLS handshake failed"
#define MR_WH_NO_ANSWER    "no valid HTTP answer"
#define MR_WH_FAILED       "delivery failed"


typedef struct {
    ngx_queue_t               queue;
    mr_dlv_job_t             *job;
    CURL                     *easy;
    CURLU                    *url;
    char                     *host;          /* as libcurl has it */
    ngx_str_t                 name;          /* as asked of the resolver */
    in_port_t                 port;
    ngx_resolver_ctx_t       *ctx;           /* while the name resolves */
    struct curl_slist        *resolve;
    struct curl_slist        *headers;
    ngx_msec_t                start;
    size_t                    received;
    ngx_uint_t                blocked;       /* the address was refused */
    char                      errbuf[CURL_ERROR_SIZE];
} mr_wh_send_t;


static void mr_webhook_kick(void);
static void mr_webhook_claim_soon(void);
static void mr_webhook_claim(ngx_event_t *ev);
static void mr_webhook_claimed(mr_store_op_t *op);
static void mr_webhook_send(mr_dlv_job_t *job);
static ngx_int_t mr_webhook_literal(mr_wh_send_t *s, ngx_sockaddr_t *sa);
static void mr_webhook_resolve(mr_wh_send_t *s);
static void mr_webhook_resolved(ngx_resolver_ctx_t *ctx);
static void mr_webhook_transfer(mr_wh_send_t *s);
static void mr_webhook_sent(CURL *easy, CURLcode rc, void *data);
static const char *mr_webhook_reason(mr_wh_send_t *s, CURLcode rc);
static void mr_webhook_record(mr_wh_send_t *s, long code,
    const char *reason);
static void mr_webhook_recorded(mr_store_op_t *op);
static void mr_webhook_drop(mr_wh_send_t *s);
static void mr_webhook_free(mr_wh_send_t *s);
static void mr_webhook_inflight(ngx_event_t *ev);
static ngx_int_t mr_webhook_sign(mr_dlv_job_t *job, time_t ts,
    struct curl_slist **list);
static curl_socket_t mr_webhook_opensocket(void *clientp,
    curlsocktype purpose, struct curl_sockaddr *address);
static size_t mr_webhook_discard(char *ptr, size_t size, size_t nmemb,
    void *userdata);


static mr_main_conf_t  *mr_wh_mcf;
static ngx_event_t      mr_wh_claim_ev;
static ngx_event_t      mr_wh_inflight_ev;
static mr_store_op_t    mr_wh_claim_op;
static ngx_uint_t       mr_wh_claiming;
static ngx_uint_t       mr_wh_kicked;     /* while claiming */
static ngx_queue_t      mr_wh_sends;
static ngx_uint_t       mr_wh_active;
static CURL           **mr_wh_idle;       /* handles for the next transfers */
static ngx_uint_t       mr_wh_nidle;


ngx_int_t
mr_webhook_init_process(ngx_cycle_t *cycle, mr_main_conf_t *mcf)
{
    mr_wh_mcf = mcf;
    ngx_queue_init(&mr_wh_sends);

    /* a handle per transfer at most: kept, not made anew for each */

    mr_wh_nidle = 0;
    mr_wh_idle = ngx_alloc(mcf->webhook_total * sizeof(CURL *), cycle->log);
    if (mr_wh_idle == NULL) {
        return NGX_ERROR;
    }

    mr_wh_claim_ev.handler = mr_webhook_claim;
    mr_wh_claim_ev.log = cycle->log;
    mr_wh_claim_ev.data = &mr_wh_claim_op;
    mr_wh_claim_ev.cancelable = 1;

    /* not cancelable: a worker that shuts down finishes its attempts */
    mr_wh_inflight_ev.handler = mr_webhook_inflight;
    mr_wh_inflight_ev.log = cycle->log;
    mr_wh_inflight_ev.data = &mr_timer_conn;

    mr_store_deliveries_hook = mr_webhook_kick;

    ngx_add_timer(&mr_wh_claim_ev, MR_WH_POLL / 2 + ngx_random() % MR_WH_POLL);

    return NGX_OK;
}


/*
 * The worker exits: names still resolving are given up (their leases
 * end and they are sent again); libcurl's transfers are given up by
 * mr_curl_exit_process(), which follows.
 */

void
mr_webhook_exit_process(ngx_cycle_t *cycle)
{
    ngx_queue_t   *q, *next;
    mr_wh_send_t  *s;

    if (mr_wh_mcf == NULL) {
        return;
    }

    for (q = ngx_queue_head(&mr_wh_sends);
         q != ngx_queue_sentinel(&mr_wh_sends);
         q = next)
    {
        next = ngx_queue_next(q);
        s = ngx_queue_data(q, mr_wh_send_t, queue);

        if (s->ctx) {
            mr_webhook_drop(s);
        }
    }

    /* the handles of transfers still running are freed as they end */

    while (mr_wh_nidle) {
        curl_easy_cleanup(mr_wh_idle[--mr_wh_nidle]);
    }

    ngx_free(mr_wh_idle);
    mr_wh_idle = NULL;

    mr_wh_mcf = NULL;
}


/* for the health answer (mr_health.c): the sender will claim again */

ngx_uint_t
mr_webhook_running(void)
{
    return mr_wh_claim_ev.timer_set || mr_wh_claim_ev.posted
           || mr_wh_claiming;
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

    mr_webhook_claim_soon();
}


/*
 * Where claims run last in their group commit (mr_store_claims_last()),
 * in this turn of the event loop: the claim joins the next group commit,
 * and takes the deliveries its operations make.  Else a millisecond
 * later, so that the kicks of that millisecond make one claim.
 */

static void
mr_webhook_claim_soon(void)
{
    if (!mr_store_claims_last()) {

        /*
         * not the idle poll's timer (ngx_add_timer() would keep it if due
         * within 300 ms), but one already due within the millisecond is
         * kept: the kicks of that millisecond make one claim
         */

        if (!mr_wh_claim_ev.timer_set
            || (ngx_msec_int_t) (mr_wh_claim_ev.timer.key - ngx_current_msec)
               > 1)
        {
            mr_timer_exact(&mr_wh_claim_ev, 1);
        }

        return;
    }

    if (mr_wh_claim_ev.timer_set) {
        ngx_del_timer(&mr_wh_claim_ev);
    }

    if (!mr_wh_claim_ev.posted) {
        ngx_post_event(&mr_wh_claim_ev, &ngx_posted_events);
    }
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

    /* sent even by a worker that shuts down: it waits for them */

    for (job = op->wh.jobs; job; job = next) {
        next = job->next;
        job->next = NULL;

        mr_webhook_send(job);
        n++;
    }

    op->wh.jobs = NULL;

    if (ngx_exiting || ngx_quit || ngx_terminate) {
        return;
    }

    /* a full claim may have left more behind; a kick came meanwhile */

    if ((n && n == op->wh.limit) || mr_wh_kicked) {
        mr_webhook_claim_soon();
        return;
    }

    ngx_add_timer(&mr_wh_claim_ev, MR_WH_POLL);
}


static void
mr_webhook_send(mr_dlv_job_t *job)
{
    char          *port;
    size_t         len;
    ngx_int_t      n, rc;
    const char    *why;
    mr_wh_send_t  *s;
    ngx_sockaddr_t sa;
    u_char         text[NGX_SOCKADDR_STRLEN];

    s = ngx_calloc(sizeof(mr_wh_send_t), ngx_cycle->log);
    if (s == NULL) {
        ngx_free(job);     /* its lease ends and it is tried again */
        return;
    }

    s->job = job;
    s->start = ngx_current_msec;

    ngx_queue_insert_tail(&mr_wh_sends, &s->queue);
    mr_wh_active++;

    /* the attempt that starts last ends last */
    ngx_add_timer(&mr_wh_inflight_ev,
                  mr_wh_mcf->webhook_timeout + MR_WH_EXIT_PAD);

    /* the host and port as libcurl sees them: it is given this very URL */

    s->url = curl_url();
    if (s->url == NULL) {
        goto failed;
    }

    port = NULL;

    if (curl_url_set(s->url, CURLUPART_URL, (char *) job->url.data, 0)
        != CURLUE_OK
        || curl_url_get(s->url, CURLUPART_HOST, &s->host, 0) != CURLUE_OK
        || curl_url_get(s->url, CURLUPART_PORT, &port, CURLU_DEFAULT_PORT)
           != CURLUE_OK)
    {
        ngx_log_error(NGX_LOG_INFO, ngx_cycle->log, 0,
                      "modelroute webhooks: %*s: libcurl cannot parse the "
                      "URL", (size_t) MR_DLV_ID_LEN, job->dlv_id);
        curl_free(port);
        mr_webhook_record(s, 0, MR_WH_UNREACHABLE);
        return;
    }

    n = ngx_atoi((u_char *) port, ngx_strlen(port));
    curl_free(port);

    if (n < 1 || n > 65535) {
        ngx_log_error(NGX_LOG_INFO, ngx_cycle->log, 0,
                      "modelroute webhooks: %*s: the URL's port is out of "
                      "range", (size_t) MR_DLV_ID_LEN, job->dlv_id);
        mr_webhook_record(s, 0, MR_WH_UNREACHABLE);
        return;
    }

    s->port = (in_port_t) n;

    rc = mr_webhook_literal(s, &sa);

    if (rc == NGX_DECLINED) {
        mr_webhook_resolve(s);
        return;
    }

    if (rc == NGX_OK) {
        why = mr_webhook_addr_refused(mr_wh_mcf, &sa.sockaddr);
        if (why == NULL) {
            mr_webhook_transfer(s);
            return;
        }

        /* not NUL-terminated */
        len = ngx_sock_ntop(&sa.sockaddr, sizeof(ngx_sockaddr_t), text,
                            NGX_SOCKADDR_STRLEN, 0);

        ngx_log_error(NGX_LOG_INFO, ngx_cycle->log, 0,
                      "modelroute webhooks: %*s: the address %*s is %s",
                      (size_t) MR_DLV_ID_LEN, job->dlv_id, len, text, why);

    } else {
        ngx_log_error(NGX_LOG_INFO, ngx_cycle->log, 0,
                      "modelroute webhooks: %*s: \"%s\" is no address",
                      (size_t) MR_DLV_ID_LEN, job->dlv_id, s->host);
    }

    mr_webhook_record(s, 0, MR_WH_UNREACHABLE);
    return;

failed:

    ngx_log_error(NGX_LOG_ERR, ngx_cycle->log, 0,
                  "modelroute webhooks: %*s: cannot start the delivery; "
                  "it is tried again after its lease",
                  (size_t) MR_DLV_ID_LEN, job->dlv_id);

    mr_webhook_drop(s);
}


/*
 * NGX_OK: the host is an address literal (in sa, with the port);
 * NGX_DECLINED: a name; NGX_ERROR: a bracketed host that is no address
 */

static ngx_int_t
mr_webhook_literal(mr_wh_send_t *s, ngx_sockaddr_t *sa)
{
    size_t  len;
    char    buf[NGX_INET6_ADDRSTRLEN + 1];

    ngx_memzero(sa, sizeof(ngx_sockaddr_t));

    if (inet_pton(AF_INET, s->host, &sa->sockaddr_in.sin_addr) == 1) {
        sa->sockaddr_in.sin_family = AF_INET;
        sa->sockaddr_in.sin_port = htons(s->port);
        return NGX_OK;
    }

    if (s->host[0] != '[') {
        return NGX_DECLINED;
    }

#if (NGX_HAVE_INET6)

    /* "[addr]"; a zone ("%25eth0") is not accepted */

    len = ngx_strlen(s->host);

    if (len > 2 && len - 2 < sizeof(buf) && s->host[len - 1] == ']') {
        ngx_memcpy(buf, s->host + 1, len - 2);
        buf[len - 2] = '\0';

        if (inet_pton(AF_INET6, buf, &sa->sockaddr_in6.sin6_addr) == 1) {
            sa->sockaddr_in6.sin6_family = AF_INET6;
            sa->sockaddr_in6.sin6_port = htons(s->port);
            return NGX_OK;
        }
    }

#else
    (void) len;
    (void) buf;
#endif

    return NGX_ERROR;
}


/* a host name: asked of nginx's resolver */

static void
mr_webhook_resolve(mr_wh_send_t *s)
{
    u_char              *p, c;
    size_t               len, label;
    ngx_resolver_ctx_t  *ctx;

    len = ngx_strlen(s->host);

    if (len && s->host[len - 1] == '.') {
        len--;
    }

    /* letters, digits, '-', '_' in labels of 1 to 63 */

    label = 0;

    for (p = (u_char *) s->host; p < (u_char *) s->host + len; p++) {
        c = *p;

        if (c == '.') {
            if (label == 0) {
                break;
            }

            label = 0;
            continue;
        }

        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z')
              || (c >= '0' && c <= '9') || c == '-' || c == '_')
            || ++label > 63)
        {
            break;
        }
    }

    if (len == 0 || len > MR_WH_NAME_MAX || label == 0
        || p != (u_char *) s->host + len)
    {
        ngx_log_error(NGX_LOG_INFO, ngx_cycle->log, 0,
                      "modelroute webhooks: %*s: \"%s\" is not a host name",
                      (size_t) MR_DLV_ID_LEN, s->job->dlv_id, s->host);
        mr_webhook_record(s, 0, MR_WH_UNREACHABLE);
        return;
    }

    /* the resolver lowercases it in place */

    s->name.data = ngx_alloc(len, ngx_cycle->log);
    if (s->name.data == NULL) {
        goto failed;
    }

    s->name.len = len;
    ngx_memcpy(s->name.data, s->host, len);

    ctx = ngx_resolve_start(mr_wh_mcf->webhook_resolver, NULL);
    if (ctx == NULL || ctx == NGX_NO_RESOLVER) {
        goto failed;
    }

    ctx->name = s->name;
    ctx->handler = mr_webhook_resolved;
    ctx->data = s;
    ctx->timeout = ngx_min(mr_wh_mcf->webhook_resolver_timeout,
                           mr_wh_mcf->webhook_timeout);
    ctx->cancelable = 1;      /* mr_wh_inflight_ev keeps an exiting worker */

    s->ctx = ctx;

    /* the handler may run before this returns, and end s */

    if (ngx_resolve_name(ctx) != NGX_OK) {
        s->ctx = NULL;        /* freed */
        goto failed;
    }

    return;

failed:

    ngx_log_error(NGX_LOG_ERR, ngx_cycle->log, 0,
                  "modelroute webhooks: %*s: cannot start resolving a "
                  "host name; the delivery is tried again after its lease",
                  (size_t) MR_DLV_ID_LEN, s->job->dlv_id);

    mr_webhook_drop(s);
}


static void
mr_webhook_resolved(ngx_resolver_ctx_t *ctx)
{
    mr_wh_send_t *s = ctx->data;

    u_char          *p, *last;
    size_t           len;
    ngx_uint_t       i, n;
    const char      *why;
    ngx_sockaddr_t   sa;
    u_char           text[NGX_SOCKADDR_STRLEN];
    u_char           line[MR_WH_RESOLVE_LEN];

    s->ctx = NULL;

    if (ctx->state) {
        ngx_log_error(NGX_LOG_INFO, ngx_cycle->log, 0,
                      "modelroute webhooks: %*s: \"%V\" could not be "
                      "resolved (%i: %s)", (size_t) MR_DLV_ID_LEN,
                      s->job->dlv_id, &ctx->name, ctx->state,
                      ngx_resolver_strerror(ctx->state));

        ngx_resolve_name_done(ctx);
        mr_webhook_record(s, 0, MR_WH_UNREACHABLE);
        return;
    }

    /* for libcurl's cache: "+" makes the entry expire as lookups do */

    last = line + sizeof(line);
    p = ngx_snprintf(line, sizeof(line) - 1, "+%s:%d:", s->host,
                     (int) s->port);
    n = 0;

    for (i = 0; i < ctx->naddrs && n < MR_WH_ADDRS_MAX; i++) {

        len = ngx_min(ctx->addrs[i].socklen, sizeof(ngx_sockaddr_t));
        ngx_memzero(&sa, sizeof(ngx_sockaddr_t));
        ngx_memcpy(&sa, ctx->addrs[i].sockaddr, len);
        ngx_inet_set_port(&sa.sockaddr, s->port);

        len = ngx_sock_ntop(&sa.sockaddr, ctx->addrs[i].socklen, text,
                            NGX_SOCKADDR_STRLEN, 0);

        why = mr_webhook_addr_refused(mr_wh_mcf, &sa.sockaddr);
        if (why) {
            ngx_log_error(NGX_LOG_INFO, ngx_cycle->log, 0,
                          "modelroute webhooks: %*s: \"%V\" resolves to "
                          "%*s, %s: not used", (size_t) MR_DLV_ID_LEN,
                          s->job->dlv_id, &ctx->name, len, text, why);
            continue;
        }

        p = ngx_slprintf(p, last - 1,
                         sa.sockaddr.sa_family == AF_INET ? "%s%*s"
                                                          : "%s[%*s]",
                         n ? "," : "", len, text);
        n++;
    }

    *p = '\0';

    ngx_resolve_name_done(ctx);

    if (n == 0) {
        mr_webhook_record(s, 0, MR_WH_UNREACHABLE);
        return;
    }

    s->resolve = curl_slist_append(NULL, (char *) line);
    if (s->resolve == NULL) {
        ngx_log_error(NGX_LOG_ERR, ngx_cycle->log, 0,
                      "modelroute webhooks: %*s: cannot start the "
                      "delivery; it is tried again after its lease",
                      (size_t) MR_DLV_ID_LEN, s->job->dlv_id);
        mr_webhook_drop(s);
        return;
    }

    mr_webhook_transfer(s);
}


static void
mr_webhook_transfer(mr_wh_send_t *s)
{
    CURL        *easy;
    ngx_msec_t   elapsed, timeout;

    easy = mr_wh_nidle ? mr_wh_idle[--mr_wh_nidle] : curl_easy_init();
    if (easy == NULL) {
        goto failed;
    }

    s->easy = easy;

    if (mr_webhook_sign(s->job, ngx_time(), &s->headers) != NGX_OK) {
        goto failed;
    }

    /* what resolving took is part of the attempt's timeout */

    elapsed = ngx_current_msec - s->start;
    timeout = (elapsed < mr_wh_mcf->webhook_timeout)
              ? mr_wh_mcf->webhook_timeout - elapsed : 1;

    curl_easy_setopt(easy, CURLOPT_CURLU, s->url);
    curl_easy_setopt(easy, CURLOPT_POST, 1L);
    curl_easy_setopt(easy, CURLOPT_POSTFIELDS, (char *) s->job->body.data);
    curl_easy_setopt(easy, CURLOPT_POSTFIELDSIZE, (long) s->job->body.len);
    curl_easy_setopt(easy, CURLOPT_HTTPHEADER, s->headers);
    curl_easy_setopt(easy, CURLOPT_TIMEOUT_MS, (long) timeout);
    curl_easy_setopt(easy, CURLOPT_FOLLOWLOCATION, 0L);
    curl_easy_setopt(easy, CURLOPT_ERRORBUFFER, s->errbuf);
    curl_easy_setopt(easy, CURLOPT_WRITEFUNCTION, mr_webhook_discard);
    curl_easy_setopt(easy, CURLOPT_WRITEDATA, s);
    curl_easy_setopt(easy, CURLOPT_PROXY, "");   /* no proxy from env */
    curl_easy_setopt(easy, CURLOPT_PROTOCOLS_STR,
                     mr_wh_mcf->webhook_allow_private ? "http,https"
                                                      : "https");

    if (s->resolve) {
        curl_easy_setopt(easy, CURLOPT_RESOLVE, s->resolve);
    }

    /* the address curl connects to, whatever it came from */
    curl_easy_setopt(easy, CURLOPT_OPENSOCKETFUNCTION, mr_webhook_opensocket);
    curl_easy_setopt(easy, CURLOPT_OPENSOCKETDATA, s);

    if (mr_curl_start(easy, mr_webhook_sent, s) != NGX_OK) {
        goto failed;
    }

    return;

failed:

    ngx_log_error(NGX_LOG_ERR, ngx_cycle->log, 0,
                  "modelroute webhooks: %*s: cannot start the delivery; "
                  "it is tried again after its lease",
                  (size_t) MR_DLV_ID_LEN, s->job->dlv_id);

    mr_webhook_drop(s);
}


static void
mr_webhook_sent(CURL *easy, CURLcode rc, void *data)
{
    mr_wh_send_t *s = data;

    long         code, oserr;
    const char  *reason;

    if (rc == MR_CURL_ABANDONED) {
        /* the worker exits: the lease ends, another worker sends it */
        mr_webhook_drop(s);
        return;
    }

    code = 0;
    reason = NULL;

    if (rc == CURLE_OK
        || (rc == CURLE_WRITE_ERROR && s->received > MR_WH_BODY_MAX))
    {
        /* a long answer is cut short: its status is what counts */
        curl_easy_getinfo(easy, CURLINFO_RESPONSE_CODE, &code);

        if (code < 200 || code > 299) {
            ngx_log_error(NGX_LOG_INFO, ngx_cycle->log, 0,
                          "modelroute webhooks: %*s: \"%s\" answered %l",
                          (size_t) MR_DLV_ID_LEN, s->job->dlv_id, s->host,
                          code);
        }

    } else {
        reason = mr_webhook_reason(s, rc);

        /* the system's error, if any, closes the line */

        oserr = 0;
        (void) curl_easy_getinfo(easy, CURLINFO_OS_ERRNO, &oserr);

        ngx_log_error(NGX_LOG_INFO, ngx_cycle->log, (ngx_err_t) oserr,
                      "modelroute webhooks: %*s: an attempt to \"%s\" "
                      "failed (%s): %s", (size_t) MR_DLV_ID_LEN,
                      s->job->dlv_id, s->host, reason,
                      s->errbuf[0] ? s->errbuf : curl_easy_strerror(rc));
    }

    ngx_log_debug3(NGX_LOG_DEBUG_HTTP, ngx_cycle->log, 0,
                   "modelroute webhooks: %*s answered %l",
                   (size_t) MR_DLV_ID_LEN, s->job->dlv_id, code);

    mr_webhook_record(s, code, reason);
}


/* a failed attempt's reason, as tenants see it */

static const char *
mr_webhook_reason(mr_wh_send_t *s, CURLcode rc)
{
    if (s->blocked) {
        return MR_WH_UNREACHABLE;
    }

    switch (rc) {

    case CURLE_COULDNT_RESOLVE_HOST:
    case CURLE_COULDNT_CONNECT:
    case CURLE_UNSUPPORTED_PROTOCOL:
        return MR_WH_UNREACHABLE;

    case CURLE_OPERATION_TIMEDOUT:
        return MR_WH_TIMEDOUT;

    case CURLE_SSL_CONNECT_ERROR:
    case CURLE_PEER_FAILED_VERIFICATION:
    case CURLE_SSL_CERTPROBLEM:
    case CURLE_SSL_CIPHER:
    case CURLE_SSL_ISSUER_ERROR:
    case CURLE_SSL_PINNEDPUBKEYNOTMATCH:
    case CURLE_SSL_INVALIDCERTSTATUS:
    case CURLE_SSL_SHUTDOWN_FAILED:
    case CURLE_USE_SSL_FAILED:
        return MR_WH_TLS;

    case CURLE_GOT_NOTHING:
    case CURLE_RECV_ERROR:
    case CURLE_SEND_ERROR:
    case CURLE_PARTIAL_FILE:
    case CURLE_WEIRD_SERVER_REPLY:
    case CURLE_HTTP2:
    case CURLE_HTTP2_STREAM:
    case CURLE_BAD_CONTENT_ENCODING:
    case CURLE_WRITE_ERROR:
        return MR_WH_NO_ANSWER;

    default:
        return MR_WH_FAILED;
    }
}


/* the attempt is over: recorded with its status code or reason */

static void
mr_webhook_record(mr_wh_send_t *s, long code, const char *reason)
{
    size_t          len;
    mr_store_op_t  *op;

    len = reason ? ngx_strlen(reason) : 0;

    op = ngx_calloc(sizeof(mr_store_op_t) + len, ngx_cycle->log);
    if (op == NULL) {
        mr_webhook_drop(s);
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
        ngx_memcpy(op->wh.error.data, reason, len);
    }

    mr_webhook_drop(s);

    mr_store_submit(op);
}


static void
mr_webhook_recorded(mr_store_op_t *op)
{
    if (op->result == MR_R_UNAVAILABLE) {
        ngx_log_error(NGX_LOG_WARN, ngx_cycle->log, 0,
                      "modelroute webhooks: an attempt of %*s cannot be "
                      "recorded, the store cannot be reached; it is tried "
                      "again after its lease",
                      (size_t) MR_DLV_ID_LEN, op->wh.dlv_id);

    } else if (op->result == MR_R_NOOP) {
        ngx_log_error(NGX_LOG_INFO, ngx_cycle->log, 0,
                      "modelroute webhooks: an attempt of %*s ended after "
                      "its delivery was deleted or its lease had passed; "
                      "its outcome was dropped",
                      (size_t) MR_DLV_ID_LEN, op->wh.dlv_id);

    } else if (op->result != MR_R_OK) {
        ngx_log_error(NGX_LOG_WARN, ngx_cycle->log, 0,
                      "modelroute webhooks: an attempt of %*s was not "
                      "recorded; it is tried again after its lease",
                      (size_t) MR_DLV_ID_LEN, op->wh.dlv_id);
    }

    ngx_free(op);

    /* room for another attempt */
    mr_webhook_kick();
}


/* the attempt leaves the worker: recorded, or left to its lease */

static void
mr_webhook_drop(mr_wh_send_t *s)
{
    ngx_queue_remove(&s->queue);

    if (--mr_wh_active == 0 && mr_wh_inflight_ev.timer_set) {
        ngx_del_timer(&mr_wh_inflight_ev);
    }

    mr_webhook_free(s);
}


static void
mr_webhook_free(mr_wh_send_t *s)
{
    long  oserr;

    if (s->ctx) {
        ngx_resolve_name_done(s->ctx);
    }

    /*
     * The handle first: it refers to the URL, headers and addresses.  It
     * is kept for the next transfer with its options reset (its buffers,
     * about 22 kB, stay), unless the worker exits.
     */

    if (s->easy) {
        oserr = 0;
        (void) curl_easy_getinfo(s->easy, CURLINFO_OS_ERRNO, &oserr);

        /*
         * Not kept: a handle with a system error (curl_easy_reset() of
         * libcurl 7.88 keeps it, and the next transfer would report it
         * as its own), or with no room for it.
         */

        if (mr_wh_idle && oserr == 0
            && mr_wh_nidle < mr_wh_mcf->webhook_total)
        {
            /* the reset also keeps a CURLOPT_RESOLVE list not loaded yet */
            curl_easy_setopt(s->easy, CURLOPT_RESOLVE, NULL);
            curl_easy_reset(s->easy);
            mr_wh_idle[mr_wh_nidle++] = s->easy;

        } else {
            curl_easy_cleanup(s->easy);
        }
    }

    if (s->url) {
        curl_url_cleanup(s->url);
    }

    if (s->host) {
        curl_free(s->host);
    }

    if (s->name.data) {
        ngx_free(s->name.data);
    }

    if (s->resolve) {
        curl_slist_free_all(s->resolve);
    }

    if (s->headers) {
        curl_slist_free_all(s->headers);
    }

    ngx_free(s->job);
    ngx_free(s);
}


/* the attempts of an exiting worker outlived their timeout: given up */

static void
mr_webhook_inflight(ngx_event_t *ev)
{
    if (mr_wh_active == 0) {
        return;
    }

    if (ngx_exiting || ngx_quit || ngx_terminate) {
        ngx_log_error(NGX_LOG_WARN, ev->log, 0,
                      "modelroute webhooks: %ui attempts outlived "
                      "\"modelroute_webhook_timeout\"; they are given up "
                      "and made again when their leases end",
                      mr_wh_active);
        return;
    }

    ngx_add_timer(ev, mr_wh_mcf->webhook_timeout + MR_WH_EXIT_PAD);
}


/*
 * The headers: ModelRoute's X-Signature over "<ts>.<body>" with the whole
 * secret as the key, and Standard Webhooks' webhook-signature over
 * "<id>.<ts>.<body>" with the secret's base64 part decoded as the key.
 */

static ngx_int_t
mr_webhook_sign(mr_dlv_job_t *job, time_t ts, struct curl_slist **list)
{
    u_char            *p;
    json_t            *extra, *value;
    ngx_str_t          src, dst, parts[2];
    const char        *name;
    struct curl_slist *l, *n;
    u_char             mac[MR_SHA256_LEN], key[64];
    u_char             line[256], b64[ngx_base64_encoded_length(32) + 1];
    u_char             pre[MR_EVT_ID_LEN + NGX_TIME_T_LEN + 2];

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

    /* "<ts>.<body>": the body is signed where it is, not copied */

    parts[0].data = pre;
    parts[0].len = ngx_sprintf(pre, "%T.", ts) - pre;
    parts[1] = job->body;

    if (mr_hmac_sha256(mac, job->secret.data, job->secret.len, parts, 2)
        != NGX_OK)
    {
        goto failed;
    }

    p = ngx_cpymem(line, "X-Signature: ", sizeof("X-Signature: ") - 1);
    p = ngx_hex_dump(p, mac, MR_SHA256_LEN);
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

    /* "<id>.<ts>.<body>" */

    parts[0].len = ngx_sprintf(pre, "%*s.%T.", (size_t) MR_EVT_ID_LEN,
                               job->event_id, ts)
                   - pre;

    if (mr_hmac_sha256(mac, key, dst.len, parts, 2) != NGX_OK) {
        goto failed;
    }

    src.data = mac;
    src.len = MR_SHA256_LEN;
    dst.data = b64;
    ngx_encode_base64(&dst, &src);

    mr_header("webhook-signature: v1,%V", &dst);

    /* the endpoint's own headers */

    if (job->headers.len) {
        extra = json_loadb((char *) job->headers.data, job->headers.len, 0,
                           NULL);

        /* never sent without them (they were checked when set) */
        if (extra == NULL) {
            goto failed;
        }

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

    *list = l;

    return NGX_OK;

failed:

    curl_slist_free_all(l);

    return NGX_ERROR;
}


static curl_socket_t
mr_webhook_opensocket(void *clientp, curlsocktype purpose,
    struct curl_sockaddr *address)
{
    mr_wh_send_t *s = clientp;

    size_t       len;
    const char  *why;
    u_char       text[NGX_SOCKADDR_STRLEN];

    why = mr_webhook_addr_refused(mr_wh_mcf, &address->addr);

    if (why) {
        /* not NUL-terminated */
        len = ngx_sock_ntop(&address->addr, address->addrlen, text,
                            NGX_SOCKADDR_STRLEN, 1);

        ngx_log_error(NGX_LOG_INFO, ngx_cycle->log, 0,
                      "modelroute webhooks: %*s: the address %*s is %s",
                      (size_t) MR_DLV_ID_LEN, s->job->dlv_id, len, text,
                      why);

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
