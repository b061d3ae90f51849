
/*
 * ModelRoute: the dispatcher and the dispatch endpoint.
 *
 * The dispatcher of each worker claims due executions in the store
 * (MR_OP_DISP_CLAIM: a lease per attempt) and posts the claimed attempts,
 * up to MR_DISP_BATCH per request, with libcurl over the unix socket of
 * the dispatch server of this same nginx.  No attempt hangs off a client's
 * connection, and none is made from a fake request.
 *
 * The dispatch endpoint runs in whichever worker accepts the request: in
 * the post-read phase of the dispatch server it checks the per-start
 * secret, reads each attempt's execution, builds the provider's request
 * with the route's adapter and makes it as a subrequest to the route's
 * location (which proxies to the operator's upstream{}).  Each answer is
 * normalized and recorded (MR_OP_DISP_DONE) with the token of its lease;
 * the dispatcher gets its answer when every attempt of its request is
 * recorded.
 *
 * The answers are kept by a header and a body filter of this file, not
 * by nginx's in-memory subrequests: those end the whole request, and with
 * it every other attempt, when one answer is larger than
 * subrequest_output_buffer_size ("too big subrequest response"), and
 * buffer a postponed subrequest's answer in a temporary file meanwhile.
 * Here an attempt's answer is read unbuffered (as "X-Accel-Buffering: no"
 * would) into memory of its own, up to the location's
 * subrequest_output_buffer_size; past it the attempt fails on its own
 * ("too large"), the rest is discarded and its upstream connection closed.
 *
 * A watch timer enforces the route's timeout on each attempt and notices
 * executions cancelled or expired meanwhile: such an attempt's upstream
 * call is ended (mr_dispatch_abort()), and when no attempt of a request is
 * still wanted, the request is terminated.  Answers that come later are
 * dropped.
 */


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>

#include <sys/un.h>

#include "mr_dispatch.h"
#include "mr_store.h"
#include "mr_http.h"
#include "mr_curl.h"
#include "mr_adapter.h"
#include "mr_callback.h"
#include "mr_exec.h"


#define MR_DISP_BATCH       16      /* attempts per dispatch request */
#define MR_DISP_CLAIM_MAX   1024    /* attempts per claim */
#define MR_DISP_POLL        1000    /* longest wait between looks */
#define MR_DISP_IDLE        50      /* due work that waits for a slot */
#define MR_DISP_WATCH       200     /* checks of the attempts in flight */
#define MR_DISP_PAD         10000   /* dispatch request beyond timeouts */
#define MR_DISP_HEADER      "X-ModelRoute-Dispatch"
#define MR_DISP_LINE        (MR_EXEC_ID_LEN + 1 + 16 + 1 + NGX_INT64_LEN + 1)
#define MR_DISP_MARGIN      2000    /* the lease's pad: the deadline is the
                                       claim + the route's timeout */
#define MR_DISP_ANSWER      16384   /* first memory for an answer of no
                                       announced length */

/* an attempt's state; 0: not made (stale, or refused before its call) */
#define MR_ATT_RUNNING      1       /* its subrequest is in flight */
#define MR_ATT_ANSWERED     2
#define MR_ATT_GONE         3       /* timed out, or no longer wanted */


/* the dispatcher's side of one dispatch request */

typedef struct {
    CURL                     *easy;
    struct curl_slist        *headers;
    ngx_uint_t                njobs;
    u_char                   *body;
    size_t                    len;
    char                      errbuf[CURL_ERROR_SIZE];
} mr_disp_send_t;


/* the endpoint's side */

typedef struct mr_disp_req_s  mr_disp_req_t;

typedef struct {
    mr_disp_req_t            *req;
    u_char                    exec_id[MR_EXEC_ID_LEN];
    uint64_t                  token;
    ngx_msec_t                deadline;
    int64_t                   lease;         /* the end of its lease */
    ngx_uint_t                state;
    ngx_uint_t                expired;    /* its lease is (nearly) over */
    mr_exec_t                 exec;
    mr_model_t               *model;
    mr_route_t               *route;
    ngx_http_request_t       *sr;
    int64_t                   answered_us;    /* 0: no answer */

    /* its answer, kept by the filters */
    u_char                   *answer;
    size_t                    len;
    size_t                    size;        /* of the memory at answer */
    size_t                    limit;       /* subrequest_output_buffer_size */
    ngx_uint_t                status;      /* of the answer's header */
    unsigned                  header:1;    /* the header passed */
    unsigned                  too_large:1;
    unsigned                  lost:1;      /* no memory to keep it */
} mr_disp_att_t;

struct mr_disp_req_s {
    ngx_http_request_t       *r;
    mr_disp_att_t            *att;
    ngx_uint_t                n;
    ngx_uint_t                running;    /* subrequests in flight */
    ngx_uint_t                live;       /* ... whose answer is wanted */
    ngx_uint_t                ops;        /* outcomes being recorded */
    ngx_uint_t                recorded;
    ngx_event_t               watch;
    mr_store_read_t          *watching;   /* the watch's read in flight */
    unsigned                  started:1;
    unsigned                  finished:1;
    unsigned                  starting:1; /* in mr_dispatch_start() */
    unsigned                  deferred:1; /* recorded meanwhile */
};


static void mr_dispatch_kick(void);
static void mr_dispatch_poll(ngx_event_t *ev);
static void mr_dispatch_next(mr_store_read_t *rd);
static void mr_dispatch_due(int64_t due);
static void mr_dispatch_claimed(mr_store_op_t *op);
static void mr_dispatch_send(mr_disp_job_t *jobs, ngx_uint_t n);
static void mr_dispatch_sent(CURL *easy, CURLcode rc, void *data);
static void mr_dispatch_inflight(ngx_event_t *ev);
static size_t mr_dispatch_discard(char *ptr, size_t size, size_t nmemb,
    void *userdata);

static ngx_int_t mr_dispatch_handler(ngx_http_request_t *r);
static void mr_dispatch_body(ngx_http_request_t *r);
static void mr_dispatch_read(mr_store_read_t *rd);
static void mr_dispatch_start(ngx_http_request_t *r, mr_store_read_t *rd);
static ngx_int_t mr_dispatch_parse(ngx_http_request_t *r,
    mr_disp_req_t *req);
static ngx_int_t mr_dispatch_prepare(ngx_http_request_t *r,
    mr_disp_att_t *a, ngx_str_t *body);
static ngx_int_t mr_dispatch_subrequest(ngx_http_request_t *r,
    mr_disp_att_t *a, ngx_str_t *body);
static ngx_int_t mr_dispatch_answered(ngx_http_request_t *sr, void *data,
    ngx_int_t rc);
static ngx_uint_t mr_dispatch_complete(ngx_http_request_t *sr);
static ngx_uint_t mr_dispatch_connected(mr_disp_att_t *a);
static void mr_dispatch_record(mr_disp_att_t *a, mr_adapter_out_t *out,
    ngx_uint_t status);
static void mr_dispatch_recorded(mr_store_op_t *op);
static void mr_dispatch_watch(ngx_event_t *ev);
static void mr_dispatch_watch_read(mr_store_read_t *rd);
static ngx_uint_t mr_dispatch_watched(mr_disp_req_t *req,
    mr_store_read_t *rd);
static ngx_uint_t mr_dispatch_unwanted(mr_disp_req_t *req);
static void mr_dispatch_abort(mr_disp_att_t *a);
static void mr_dispatch_cleanup(void *data);
static ngx_int_t mr_dispatch_finish(mr_disp_req_t *req);

static mr_disp_att_t *mr_dispatch_attempt_of(ngx_http_request_t *r);
static ngx_int_t mr_dispatch_header_filter(ngx_http_request_t *r);
static ngx_int_t mr_dispatch_body_filter(ngx_http_request_t *r,
    ngx_chain_t *in);
static void mr_dispatch_keep(ngx_http_request_t *r, mr_disp_att_t *a,
    ngx_buf_t *b);
static void mr_dispatch_discard_rest(ngx_http_request_t *r,
    mr_disp_att_t *a);


static mr_main_conf_t  *mr_disp_mcf;
static ngx_event_t      mr_disp_ev;
static mr_store_op_t    mr_disp_claim_op;
static mr_store_read_t  mr_disp_next_rd;
static ngx_uint_t       mr_disp_claiming;   /* or reading what is due */
static ngx_uint_t       mr_disp_kicked;
static ngx_uint_t       mr_disp_more;     /* the last claim left due work */
static ngx_uint_t       mr_disp_unread;   /* claimed without reading due */
static ngx_uint_t       mr_disp_backoff;  /* the last claim failed */
static u_char           mr_disp_from[MR_DISP_FROM_LEN];
static ngx_uint_t       mr_disp_from_set; /* where the next claim's look
                                             past the head of the due
                                             queue starts (mr_disp_op_t) */
static ngx_uint_t       mr_disp_active;   /* attempts sent, not answered */
static ngx_msec_t       mr_disp_timeout;  /* the longest route timeout */
static ngx_event_t      mr_disp_inflight_ev;
static ngx_msec_t       mr_disp_failed_at;
static u_char           mr_disp_secret[2 * MR_STORE_SECRET_LEN];

static ngx_http_output_header_filter_pt  mr_disp_next_header_filter;
static ngx_http_output_body_filter_pt    mr_disp_next_body_filter;


ngx_int_t
mr_dispatch_postconfiguration(ngx_conf_t *cf, mr_main_conf_t *mcf)
{
    ngx_http_handler_pt        *h;
    ngx_http_core_main_conf_t  *cmcf;

    if (mcf->dispatch_srv == NULL) {
        return NGX_OK;
    }

    cmcf = ngx_http_conf_get_module_main_conf(cf, ngx_http_core_module);

    h = ngx_array_push(&cmcf->phases[NGX_HTTP_POST_READ_PHASE].handlers);
    if (h == NULL) {
        return NGX_ERROR;
    }

    *h = mr_dispatch_handler;

    /* on top of the filters: attempts' answers go no further */

    mr_disp_next_header_filter = ngx_http_top_header_filter;
    ngx_http_top_header_filter = mr_dispatch_header_filter;

    mr_disp_next_body_filter = ngx_http_top_body_filter;
    ngx_http_top_body_filter = mr_dispatch_body_filter;

    return NGX_OK;
}


ngx_int_t
mr_dispatch_init_process(ngx_cycle_t *cycle, mr_main_conf_t *mcf)
{
    ngx_uint_t        i;
    mr_route_t       *rt;
    mr_store_read_t   rd;

    if (mcf->dispatch_srv == NULL) {
        return NGX_OK;
    }

    /* the node's own secret: every backend answers it at once */

    ngx_memzero(&rd, sizeof(mr_store_read_t));
    rd.type = MR_READ_META;
    rd.name = "dsecret";

    if (mr_store_read(&rd) != NGX_OK || rd.rc != NGX_OK
        || mr_callback_init_process(cycle) != NGX_OK)
    {
        ngx_log_error(NGX_LOG_EMERG, cycle->log, 0,
                      "modelroute: the store has no dispatch secret");
        return NGX_ERROR;
    }

    mr_hex(mr_disp_secret, rd.raw, MR_STORE_SECRET_LEN);

    mr_disp_mcf = mcf;

    rt = mcf->routes.elts;
    mr_disp_timeout = 0;

    for (i = 0; i < mcf->routes.nelts; i++) {
        mr_disp_timeout = ngx_max(mr_disp_timeout, rt[i].timeout);
    }

    mr_disp_ev.handler = mr_dispatch_poll;
    mr_disp_ev.log = cycle->log;
    mr_disp_ev.data = &mr_disp_claim_op;
    mr_disp_ev.cancelable = 1;

    /* not cancelable: a worker that shuts down waits for its answers */
    mr_disp_inflight_ev.handler = mr_dispatch_inflight;
    mr_disp_inflight_ev.log = cycle->log;
    mr_disp_inflight_ev.data = &mr_timer_conn;

    mr_store_dispatch_hook = mr_dispatch_kick;

    ngx_add_timer(&mr_disp_ev, 1 + ngx_random() % 100);

    return NGX_OK;
}


/*
 * For the health answer (mr_health.c): whether this worker's dispatcher
 * will run again: its timer is set, it is posted or claiming, or it waits
 * at its concurrency cap for answers (which kick it); 1 also without routes.
 */

ngx_uint_t
mr_dispatch_running(void)
{
    if (mr_disp_mcf == NULL) {
        return 1;
    }

    return mr_disp_ev.timer_set || mr_disp_ev.posted || mr_disp_claiming
           || mr_disp_active >= mr_disp_mcf->dispatch_concurrency;
}


/* the dispatcher */

static void
mr_dispatch_kick(void)
{
    if (ngx_exiting || ngx_quit || ngx_terminate || mr_disp_mcf == NULL) {
        return;
    }

    if (mr_disp_claiming) {
        mr_disp_kicked = 1;
        return;
    }

    /* after a failed claim, the next waits its MR_DISP_POLL whatever comes */

    if (mr_disp_backoff && mr_disp_ev.timer_set) {
        return;
    }

    if (mr_disp_ev.timer_set) {
        ngx_del_timer(&mr_disp_ev);
    }

    /* in this turn of the event loop, after what is being handled */

    if (!mr_disp_ev.posted) {
        ngx_post_event(&mr_disp_ev, &ngx_posted_events);
    }
}


static void
mr_dispatch_poll(ngx_event_t *ev)
{
    mr_store_read_t  *rd;

    if (mr_disp_claiming || ngx_exiting || ngx_quit || ngx_terminate) {
        return;
    }

    if (ev->timer_set) {
        ngx_del_timer(ev);    /* posted by a kick */
    }

    if (mr_disp_active >= mr_disp_mcf->dispatch_concurrency) {
        return;    /* an answer kicks */
    }

    if (!mr_callback_ready()) {
        ngx_add_timer(ev, MR_DISP_IDLE);    /* its key is on its way */
        return;
    }

    /*
     * the last claim stopped at its limit with more due: claimed again
     * at once (with a backlog, a read of the next due time before every
     * claim was as costly as the claim's own look at its candidates)
     */

    if (mr_disp_more) {
        mr_disp_more = 0;
        mr_disp_unread = 1;
        mr_dispatch_due(mr_now_ms());
        return;
    }

    /* when the next execution is due */

    rd = &mr_disp_next_rd;
    ngx_memzero(rd, sizeof(mr_store_read_t));
    rd->type = MR_READ_DISP_NEXT;
    rd->handler = mr_dispatch_next;

    if (mr_store_read(rd) == NGX_AGAIN) {
        mr_disp_claiming = 1;
        return;
    }

    mr_dispatch_due(rd->rc == NGX_OK ? rd->due : -2);
}


static void
mr_dispatch_next(mr_store_read_t *rd)
{
    mr_disp_claiming = 0;

    if (ngx_exiting || ngx_quit || ngx_terminate) {
        return;
    }

    mr_dispatch_due(rd->rc == NGX_OK ? rd->due : -2);
}


/* due: the earliest due time, -1: none, -2: the store did not say */

static void
mr_dispatch_due(int64_t due)
{
    int64_t          now;
    ngx_event_t     *ev;
    mr_store_op_t   *op;

    ev = &mr_disp_ev;
    now = mr_now_ms();

    if (mr_disp_kicked) {
        mr_disp_kicked = 0;

        /*
         * kicked while it read: what is due may have changed, read again;
         * unless something is due now, where the claim sees all of it (a
         * kick in every read, under steady traffic, put claims off)
         */

        if (due < 0 || due > now) {
            mr_dispatch_kick();
            return;
        }
    }

    if (due == -2) {
        ngx_add_timer(ev, MR_DISP_POLL);
        return;
    }

    if (due < 0 || due > now) {
        ngx_add_timer(ev, due < 0 ? MR_DISP_POLL
                                  : (ngx_msec_t) ngx_min(due - now,
                                                         MR_DISP_POLL));
        return;
    }

    op = &mr_disp_claim_op;
    ngx_memzero(op, sizeof(mr_store_op_t));

    op->type = MR_OP_DISP_CLAIM;
    op->handler = mr_dispatch_claimed;
    op->disp.limit = ngx_min(mr_disp_mcf->dispatch_concurrency
                             - mr_disp_active, MR_DISP_CLAIM_MAX);
    op->disp.from_set = mr_disp_from_set;
    ngx_memcpy(op->disp.from, mr_disp_from, MR_DISP_FROM_LEN);

    mr_disp_claiming = 1;
    mr_disp_kicked = 0;

    mr_store_submit(op);
}


static void
mr_dispatch_claimed(mr_store_op_t *op)
{
    int64_t         now;
    ngx_uint_t      n, unread;
    mr_disp_job_t  *job, *first, *next;

    unread = mr_disp_unread;

    mr_disp_claiming = 0;
    mr_disp_more = 0;
    mr_disp_unread = 0;
    mr_disp_backoff = (op->result != MR_R_OK);

    if (op->result != MR_R_OK) {
        if (ngx_current_msec - mr_disp_failed_at > MR_DISP_POLL * 10
            || mr_disp_failed_at == 0)
        {
            if (op->result == MR_R_UNAVAILABLE) {
                ngx_log_error(NGX_LOG_WARN, ngx_cycle->log, 0,
                              "modelroute dispatch: the store cannot be "
                              "reached; claims are tried again every %d ms",
                              MR_DISP_POLL);

            } else {
                ngx_log_error(NGX_LOG_ERR, ngx_cycle->log, 0,
                              "modelroute dispatch: a claim failed (store "
                              "full or failing); trying again every %d ms",
                              MR_DISP_POLL);
            }

            mr_disp_failed_at = ngx_current_msec;
        }

        if (!ngx_exiting && !ngx_quit && !ngx_terminate) {
            if (mr_disp_ev.timer_set) {
                ngx_del_timer(&mr_disp_ev);
            }

            ngx_add_timer(&mr_disp_ev, MR_DISP_POLL);
        }

        return;
    }

    if (op->disp.past) {
        mr_disp_from_set = op->disp.next_from_set;
        ngx_memcpy(mr_disp_from, op->disp.next_from, MR_DISP_FROM_LEN);
    }

    /* in requests of up to MR_DISP_BATCH attempts */

    /* sent even by a worker that shuts down: it waits for the answers */

    first = op->disp.jobs;
    op->disp.jobs = NULL;
    n = 0;

    for (job = first; job; job = next) {
        next = job->next;

        if (++n == MR_DISP_BATCH || next == NULL) {
            job->next = NULL;
            mr_dispatch_send(first, n);
            first = next;
            n = 0;
        }
    }

    if (ngx_exiting || ngx_quit || ngx_terminate) {
        return;
    }

    /*
     * where claims run last in their group commit, one that took work
     * is followed by another at once: it takes the executions created in
     * the next commit, in that commit (else they wait for the next claim
     * and its commit); the first that finds nothing stops that, and
     * reads when the next is due.  A claim that looked at too few of the
     * due executions (PostgreSQL's look grows with the ones that wait at
     * the head of the queue) is made again at once, looking further.
     */

    if (op->disp.claimed || op->disp.rescan || mr_disp_kicked || unread) {
        mr_disp_more = ((op->disp.claimed
                         && (op->disp.more || mr_store_claims_last()))
                        || op->disp.rescan);

        now = mr_now_ms();

        if (!mr_disp_more && !mr_disp_kicked && op->disp.next_known
            && (op->disp.next_due < 0 || op->disp.next_due > now)
            && !mr_disp_ev.posted)
        {
            /*
             * the claim took all that was due and read when the next is
             * (PostgreSQL): no look of its own at the next due time
             */

            if (mr_disp_ev.timer_set) {
                ngx_del_timer(&mr_disp_ev);
            }

            mr_dispatch_due(op->disp.next_due);
            return;
        }

        mr_disp_kicked = 0;           /* what it said is seen now */
        mr_dispatch_kick();
        return;
    }

    /* nothing it could take: what is due waits for a slot, or expires */

    if (mr_disp_ev.timer_set) {
        ngx_del_timer(&mr_disp_ev);
    }

    ngx_add_timer(&mr_disp_ev, MR_DISP_IDLE);
}


static void
mr_dispatch_send(mr_disp_job_t *jobs, ngx_uint_t n)
{
    u_char          *p;
    CURL            *easy;
    int64_t          now;
    ngx_uint_t       i;
    ngx_msec_t       timeout;
    mr_disp_job_t   *job, *next;
    struct curl_slist  *list;
    mr_disp_send_t  *s;
    u_char           header[sizeof(MR_DISP_HEADER ": ")
                            + 2 * MR_STORE_SECRET_LEN];

    s = ngx_calloc(sizeof(mr_disp_send_t) + n * MR_DISP_LINE,
                   ngx_cycle->log);
    if (s == NULL) {
        goto failed;
    }

    s->body = (u_char *) (s + 1);
    s->njobs = n;
    p = s->body;
    timeout = 0;

    now = mr_now_ms();

    for (job = jobs; job; job = job->next) {
        p = ngx_sprintf(p, "%*s %016uxL %L\n", (size_t) MR_EXEC_ID_LEN,
                        job->exec_id, job->token, job->lease_until_ms);
        timeout = ngx_max(timeout,
                          (ngx_msec_t) ngx_max(job->lease_until_ms - now, 0));
    }

    s->len = p - s->body;

    p = ngx_cpymem(header, MR_DISP_HEADER ": ",
                   sizeof(MR_DISP_HEADER ": ") - 1);
    p = ngx_cpymem(p, mr_disp_secret, sizeof(mr_disp_secret));
    *p = '\0';

    for (i = 0; i < 3; i++) {
        list = curl_slist_append(s->headers,
                                 i == 0 ? (char *) header
                                 : i == 1 ? "Content-Type: text/plain"
                                 : "Expect:");
        if (list == NULL) {
            goto failed;
        }

        s->headers = list;
    }

    easy = curl_easy_init();
    if (easy == NULL) {
        goto failed;
    }

    s->easy = easy;

    curl_easy_setopt(easy, CURLOPT_URL, "http://modelroute/dispatch");
    curl_easy_setopt(easy, CURLOPT_UNIX_SOCKET_PATH,
                     (char *) mr_disp_mcf->dispatch_socket.data);
    curl_easy_setopt(easy, CURLOPT_POST, 1L);
    curl_easy_setopt(easy, CURLOPT_POSTFIELDS, (char *) s->body);
    curl_easy_setopt(easy, CURLOPT_POSTFIELDSIZE, (long) s->len);
    curl_easy_setopt(easy, CURLOPT_HTTPHEADER, s->headers);
    curl_easy_setopt(easy, CURLOPT_TIMEOUT_MS,
                     (long) (timeout + MR_DISP_PAD));
    curl_easy_setopt(easy, CURLOPT_ERRORBUFFER, s->errbuf);
    curl_easy_setopt(easy, CURLOPT_WRITEFUNCTION, mr_dispatch_discard);
    curl_easy_setopt(easy, CURLOPT_PROXY, "");

    if (mr_curl_start(easy, mr_dispatch_sent, s) != NGX_OK) {
        goto failed;
    }

    mr_disp_active += n;

    if (!mr_disp_inflight_ev.timer_set) {
        ngx_add_timer(&mr_disp_inflight_ev, mr_disp_timeout + MR_DISP_PAD);
    }

    for (job = jobs; job; job = next) {
        next = job->next;
        ngx_free(job);
    }

    return;

failed:

    ngx_log_error(NGX_LOG_ERR, ngx_cycle->log, 0,
                  "modelroute dispatch: cannot send %ui attempts; they are "
                  "made again when their leases end", n);

    if (s) {
        if (s->easy) {
            curl_easy_cleanup(s->easy);
        }

        curl_slist_free_all(s->headers);
        ngx_free(s);
    }

    for (job = jobs; job; job = next) {
        next = job->next;
        ngx_free(job);
    }
}


static void
mr_dispatch_sent(CURL *easy, CURLcode rc, void *data)
{
    mr_disp_send_t *s = data;

    long        code;
    ngx_uint_t  level;

    mr_disp_active -= s->njobs;

    if (mr_disp_active == 0 && mr_disp_inflight_ev.timer_set) {
        ngx_del_timer(&mr_disp_inflight_ev);
    }

    code = 0;

    if (rc == CURLE_OK) {
        curl_easy_getinfo(easy, CURLINFO_RESPONSE_CODE, &code);
    }

    if (rc != MR_CURL_ABANDONED && code != 200) {

        /* an endpoint that aborts what is no longer wanted just closes */

        level = (rc == CURLE_GOT_NOTHING || rc == CURLE_RECV_ERROR
                 || rc == CURLE_PARTIAL_FILE) ? NGX_LOG_INFO : NGX_LOG_WARN;

        ngx_log_error(level, ngx_cycle->log, 0,
                      "modelroute dispatch: a request of %ui attempts "
                      "ended with %s (HTTP %l); what was not recorded is "
                      "made again when its lease ends", s->njobs,
                      rc == CURLE_OK ? "an error"
                      : s->errbuf[0] ? s->errbuf : curl_easy_strerror(rc),
                      code);
    }

    curl_easy_cleanup(easy);
    curl_slist_free_all(s->headers);
    ngx_free(s);

    if (rc != MR_CURL_ABANDONED) {
        mr_dispatch_kick();
    }
}


static void
mr_dispatch_inflight(ngx_event_t *ev)
{
    if (mr_disp_active) {
        ngx_add_timer(ev, mr_disp_timeout + MR_DISP_PAD);
    }
}


static size_t
mr_dispatch_discard(char *ptr, size_t size, size_t nmemb, void *userdata)
{
    return size * nmemb;
}


/* the endpoint: a post-read phase handler of the dispatch server */

static ngx_int_t
mr_dispatch_handler(ngx_http_request_t *r)
{
    ngx_int_t                  rc;
    ngx_table_elt_t           *h;
    ngx_list_part_t           *part;
    ngx_uint_t                 i, ok;
    mr_disp_req_t             *req;
    mr_http_ctx_t             *ctx;
    ngx_pool_cleanup_t        *cln;
    ngx_http_core_srv_conf_t  *cscf;

    if (mr_disp_mcf == NULL || r != r->main) {
        return NGX_DECLINED;
    }

    cscf = ngx_http_get_module_srv_conf(r, ngx_http_core_module);

    if ((void *) cscf != mr_disp_mcf->dispatch_srv) {
        return NGX_DECLINED;
    }

    ctx = ngx_http_get_module_ctx(r, ngx_http_modelroute_module);

    if (ctx && ctx->data) {
        /* woken by a subrequest that ended */
        rc = mr_dispatch_finish(ctx->data);

        if (rc != NGX_DONE) {
            ngx_http_finalize_request(r, rc);
        }

        return NGX_DONE;
    }

    /* the unix socket and the secret of this start, nothing else */

    ok = (r->connection->sockaddr->sa_family == AF_UNIX);

    part = &r->headers_in.headers.part;
    h = part->elts;

    for (i = 0; ok; i++) {
        if (i >= part->nelts) {
            if (part->next == NULL) {
                ok = 0;
                break;
            }

            part = part->next;
            h = part->elts;
            i = 0;
        }

        if (h[i].key.len == sizeof(MR_DISP_HEADER) - 1
            && ngx_strncasecmp(h[i].key.data, (u_char *) MR_DISP_HEADER,
                               sizeof(MR_DISP_HEADER) - 1) == 0)
        {
            ok = (h[i].value.len == sizeof(mr_disp_secret)
                  && mr_memeq_ct(h[i].value.data, mr_disp_secret,
                                 sizeof(mr_disp_secret)));
            break;
        }
    }

    if (!ok) {
        ngx_log_error(NGX_LOG_WARN, r->connection->log, 0,
                      "modelroute dispatch: refused a request without "
                      "the secret of this start");
        return NGX_HTTP_FORBIDDEN;
    }

    if (r->method != NGX_HTTP_POST) {
        return NGX_HTTP_NOT_ALLOWED;
    }

    ctx = mr_http_ctx(r);
    if (ctx == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    req = ngx_pcalloc(r->pool, sizeof(mr_disp_req_t));
    if (req == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    cln = ngx_pool_cleanup_add(r->pool, 0);
    if (cln == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    req->r = r;
    req->watch.handler = mr_dispatch_watch;
    req->watch.data = req;
    req->watch.log = r->connection->log;

    cln->handler = mr_dispatch_cleanup;
    cln->data = req;

    ctx->answered = 1;    /* its errors are plain: a module talks here */
    ctx->data = req;

    rc = ngx_http_read_client_request_body(r, mr_dispatch_body);

    if (rc >= NGX_HTTP_SPECIAL_RESPONSE) {
        return rc;
    }

    ngx_http_finalize_request(r, NGX_DONE);

    return NGX_DONE;
}


static void
mr_dispatch_body(ngx_http_request_t *r)
{
    ngx_uint_t        i;
    mr_disp_req_t    *req;
    mr_http_ctx_t    *ctx;
    mr_store_read_t  *rd;

    ctx = ngx_http_get_module_ctx(r, ngx_http_modelroute_module);
    req = ctx->data;

    /* subrequests that end wake the request up: the handler goes on */
    r->write_event_handler = ngx_http_core_run_phases;

    if (mr_dispatch_parse(r, req) != NGX_OK) {
        ngx_http_finalize_request(r, NGX_HTTP_BAD_REQUEST);
        return;
    }

    /* the attempts' executions, in one read */

    rd = mr_http_read_alloc(r, MR_READ_EXECS);
    if (rd == NULL) {
        ngx_http_finalize_request(r, NGX_HTTP_INTERNAL_SERVER_ERROR);
        return;
    }

    rd->ids = ngx_pnalloc(r->pool, req->n * MR_EXEC_ID_LEN);
    rd->list = ngx_array_create(r->pool, req->n, sizeof(mr_exec_t));

    if (rd->ids == NULL || rd->list == NULL) {
        ngx_http_finalize_request(r, NGX_HTTP_INTERNAL_SERVER_ERROR);
        return;
    }

    for (i = 0; i < req->n; i++) {
        ngx_memcpy(rd->ids + i * MR_EXEC_ID_LEN, req->att[i].exec_id,
                   MR_EXEC_ID_LEN);
    }

    rd->nids = req->n;

    if (mr_http_read(r, rd, mr_dispatch_read) == NGX_DONE) {
        return;
    }

    mr_dispatch_start(r, rd);
}


static void
mr_dispatch_read(mr_store_read_t *rd)
{
    ngx_connection_t    *c;
    ngx_http_request_t  *r;

    r = mr_http_read_resume(rd);
    if (r == NULL) {
        return;
    }

    c = r->connection;

    mr_dispatch_start(r, rd);

    ngx_http_run_posted_requests(c);
}


/* the attempts whose execution still holds their lease are made */

static void
mr_dispatch_start(ngx_http_request_t *r, mr_store_read_t *rd)
{
    int64_t         now, left;
    ngx_int_t       rc;
    ngx_str_t       body;
    ngx_uint_t      i;
    mr_exec_t      *exec;
    mr_disp_att_t  *a;
    mr_disp_req_t  *req;
    mr_http_ctx_t  *ctx;

    ctx = ngx_http_get_module_ctx(r, ngx_http_modelroute_module);
    req = ctx->data;
    exec = rd->list->elts;

    req->started = 1;

    /*
     * an outcome recorded at once (the store exiting answers without a
     * commit) ends nothing while the attempts are started: see below
     */

    req->starting = 1;

    /*
     * the attempt ends before its lease: none is made twice at once;
     * timed after the read, which the store's clock is known for (this
     * worker's first read may be this one: mr_now_ms())
     */

    now = mr_now_ms();

    for (i = 0; i < req->n; i++) {
        a = &req->att[i];

        if (rd->rc != NGX_OK || i >= rd->list->nelts) {
            /* the store did not say: its lease ends, it is made again */
            continue;
        }

        left = a->lease - MR_DISP_MARGIN - now;

        a->deadline = ngx_current_msec + (ngx_msec_t) ngx_max(left, 0);
        a->expired = (left <= 0);

        if (!a->expired) {
            a->exec = exec[i];
        }

        rc = mr_dispatch_prepare(r, a, &body);

        if (rc != NGX_OK) {
            if (rc == NGX_ERROR) {
                /* no memory, or OpenSSL failed the callback token */
                ngx_log_error(NGX_LOG_ERR, r->connection->log, 0,
                              "modelroute dispatch: cannot prepare an "
                              "attempt of %*s; it is made when its lease "
                              "ends", (size_t) MR_EXEC_ID_LEN, a->exec_id);
            }

            continue;
        }

        if (mr_dispatch_subrequest(r, a, &body) != NGX_OK) {
            /* its lease ends and it is made again */
            ngx_log_error(NGX_LOG_ERR, r->connection->log, 0,
                          "modelroute dispatch: cannot start an attempt "
                          "of %*s", (size_t) MR_EXEC_ID_LEN, a->exec_id);
            continue;
        }

        a->state = MR_ATT_RUNNING;
        req->running++;
        req->live++;
    }

    req->starting = 0;

    if (req->deferred && r->connection->error) {
        ngx_http_finalize_request(r, NGX_ERROR);
        return;
    }

    if (req->running) {
        ngx_add_timer(&req->watch, MR_DISP_WATCH);
    }

    if (req->running == 0 && req->ops == 0) {
        ngx_http_finalize_request(r, mr_dispatch_finish(req));
    }
}


/* lines of "<execution id> <lease token in hex> <timeout ms>" */

static ngx_int_t
mr_dispatch_parse(ngx_http_request_t *r, mr_disp_req_t *req)
{
    u_char         *p, *last, *buf, *sp;
    off_t           lease;
    size_t          len;
    ngx_int_t       n;
    ngx_buf_t      *b;
    ngx_uint_t      max, i;
    ngx_chain_t    *cl;
    mr_disp_att_t  *a;

    if (r->request_body == NULL || r->request_body->bufs == NULL
        || r->request_body->temp_file)
    {
        return NGX_ERROR;
    }

    len = 0;

    for (cl = r->request_body->bufs; cl; cl = cl->next) {
        len += ngx_buf_size(cl->buf);
    }

    buf = ngx_pnalloc(r->pool, len);
    if (buf == NULL) {
        return NGX_ERROR;
    }

    p = buf;

    for (cl = r->request_body->bufs; cl; cl = cl->next) {
        b = cl->buf;
        p = mr_cpymem(p, b->pos, b->last - b->pos);
    }

    last = p;
    max = MR_DISP_BATCH;    /* r->main->blocked counts to 255 */

    req->att = ngx_pcalloc(r->pool, max * sizeof(mr_disp_att_t));
    if (req->att == NULL) {
        return NGX_ERROR;
    }

    for (p = buf; p < last && req->n < max; /* void */) {
        a = &req->att[req->n];

        if (last - p < MR_EXEC_ID_LEN + 1 + 16 + 2
            || p[MR_EXEC_ID_LEN] != ' ' || p[MR_EXEC_ID_LEN + 17] != ' ')
        {
            return NGX_ERROR;
        }

        ngx_memcpy(a->exec_id, p, MR_EXEC_ID_LEN);
        p += MR_EXEC_ID_LEN + 1;

        a->token = 0;

        for (i = 0; i < 16; i++) {
            n = ngx_hextoi(p + i, 1);
            if (n == NGX_ERROR) {
                return NGX_ERROR;
            }

            a->token = (a->token << 4) | (uint64_t) n;
        }

        if (a->token == 0) {
            return NGX_ERROR;    /* no lease has it: 0 means none */
        }

        for (i = 0; i < req->n; i++) {
            if (ngx_memcmp(req->att[i].exec_id, a->exec_id, MR_EXEC_ID_LEN)
                == 0)
            {
                return NGX_ERROR;    /* one attempt per execution */
            }
        }

        p += 17;

        sp = ngx_strlchr(p, last, '\n');
        if (sp == NULL) {
            return NGX_ERROR;
        }

        lease = ngx_atoof(p, sp - p);
        if (lease == NGX_ERROR) {
            return NGX_ERROR;
        }

        a->lease = (int64_t) lease;
        a->req = req;
        req->n++;

        p = sp + 1;
    }

    /* more than MR_DISP_BATCH attempts is not a dispatcher's request */

    return (p == last && req->n) ? NGX_OK : NGX_ERROR;
}


/* the attempt's execution, and the provider's request for it */

static ngx_int_t
mr_dispatch_prepare(ngx_http_request_t *r, mr_disp_att_t *a, ngx_str_t *body)
{
    ngx_int_t          rc;
    ngx_str_t          callback, token;
    ngx_uint_t         i;
    mr_model_route_t  *mr;
    mr_adapter_out_t   out;

    if (a->expired) {

        /*
         * too late to be made within its lease: recorded at once (the
         * lease is still its own), so that the next attempt need not
         * wait for the lease to end
         */

        ngx_memzero(&out, sizeof(mr_adapter_out_t));
        mr_adapter_fail(&out, MR_OUT_RETRY, "GENERATION_FAILED",
                        "the attempt came too late to be made");
        out.breaker = MR_BREAKER_NONE;
        out.cost = -1;

        ngx_log_error(NGX_LOG_WARN, r->connection->log, 0,
                      "modelroute dispatch: an attempt of %*s came too "
                      "late to be made within its lease",
                      (size_t) MR_EXEC_ID_LEN, a->exec_id);

        mr_dispatch_record(a, &out, 0);

        return NGX_DECLINED;
    }

    /* a->exec: status 0 if it is not there */

    if (a->exec.rec.status != MR_PROCESSING
        || a->exec.rec.lease_owner == 0
        || a->exec.rec.lease_owner != a->token)
    {
        /* cancelled meanwhile, say; nothing to do */
        return NGX_DECLINED;
    }

    a->model = mr_model_find(mr_disp_mcf, &a->exec.seg[MR_SEG_MODEL]);
    mr = NULL;

    if (a->model) {
        mr = a->model->routes.elts;

        for (i = 0; i < a->model->routes.nelts; i++) {
            if (mr[i].route->name.len == a->exec.rec.route_len
                && ngx_strncmp(mr[i].route->name.data, a->exec.rec.route,
                               a->exec.rec.route_len) == 0)
            {
                break;
            }
        }

        mr = (i < a->model->routes.nelts) ? &mr[i] : NULL;
    }

    ngx_memzero(&out, sizeof(mr_adapter_out_t));

    if (mr == NULL) {
        /* the configuration changed since the claim */
        mr_adapter_fail(&out, MR_OUT_RETRY, "GENERATION_FAILED",
                        "the route is no longer configured");
        out.breaker = MR_BREAKER_NONE;

        ngx_log_error(NGX_LOG_WARN, r->connection->log, 0,
                      "modelroute dispatch: %*s: its route \"%*s\" is no "
                      "longer configured", (size_t) MR_EXEC_ID_LEN,
                      a->exec_id, (size_t) a->exec.rec.route_len,
                      a->exec.rec.route);

        mr_dispatch_record(a, &out, 0);
        return NGX_DECLINED;
    }

    a->route = mr->route;

    ngx_str_null(&callback);
    ngx_str_null(&token);

    /* the attempt's own callback token: the claim counted the attempt */

    if (a->route->protocol == MR_PROTO_ASYNC
        && (mr_callback_url(r->pool, mr_disp_mcf, a->exec_id, &callback)
            != NGX_OK
            || mr_callback_token(r->pool, a->exec_id,
                                 a->exec.rec.nattempts - 1, &token)
               != NGX_OK))
    {
        return NGX_ERROR;
    }

    rc = mr_adapter_request(r->pool, a->route, mr, a->model, &a->exec,
                            &callback, &token, body, &out);

    if (rc == NGX_DECLINED) {
        /* the input does not fit the protocol: the tenant's doing */
        out.cost = -1;

        ngx_log_error(NGX_LOG_INFO, r->connection->log, 0,
                      "modelroute dispatch: %*s: route \"%V\": %V",
                      (size_t) MR_EXEC_ID_LEN, a->exec_id,
                      &a->route->name, &out.message);

        mr_dispatch_record(a, &out, 0);
        return NGX_DECLINED;
    }

    return rc;
}


static ngx_int_t
mr_dispatch_subrequest(ngx_http_request_t *r, mr_disp_att_t *a,
    ngx_str_t *body)
{
    ngx_buf_t                   *b;
    ngx_chain_t                 *cl;
    ngx_table_elt_t             *h;
    ngx_http_request_t          *sr;
    ngx_http_request_body_t     *rb;
    ngx_http_post_subrequest_t  *ps;

    ps = ngx_palloc(r->pool, sizeof(ngx_http_post_subrequest_t));
    rb = ngx_pcalloc(r->pool, sizeof(ngx_http_request_body_t));
    b = ngx_calloc_buf(r->pool);
    cl = ngx_alloc_chain_link(r->pool);

    if (ps == NULL || rb == NULL || b == NULL || cl == NULL) {
        return NGX_ERROR;
    }

    /* everything is allocated first: a subrequest made cannot be undone */

    h = ngx_palloc(r->pool, 2 * sizeof(ngx_table_elt_t));
    if (h == NULL) {
        return NGX_ERROR;
    }

    ps->handler = mr_dispatch_answered;
    ps->data = a;

    /* not NGX_HTTP_SUBREQUEST_IN_MEMORY: the filters below keep it */

    if (ngx_http_subrequest(r, &a->route->location, NULL, &sr, ps,
                            NGX_HTTP_SUBREQUEST_WAITED)
        != NGX_OK)
    {
        return NGX_ERROR;
    }

    a->sr = sr;

    /*
     * headers of its own: the dispatcher's (its secret among them) must
     * not reach a provider; the list is set up as ngx_list_init() does
     */

    ngx_memzero(&sr->headers_in, sizeof(ngx_http_headers_in_t));

    sr->headers_in.headers.part.elts = h;
    sr->headers_in.headers.part.nelts = 1;
    sr->headers_in.headers.part.next = NULL;
    sr->headers_in.headers.last = &sr->headers_in.headers.part;
    sr->headers_in.headers.size = sizeof(ngx_table_elt_t);
    sr->headers_in.headers.nalloc = 2;
    sr->headers_in.headers.pool = r->pool;

    h->hash = 1;
#if (nginx_version >= 1023000)
    h->next = NULL;
#endif
    ngx_str_set(&h->key, "Content-Type");
    ngx_str_set(&h->value, "application/json");
    h->lowcase_key = (u_char *) "content-type";

    sr->headers_in.content_type = h;
    sr->headers_in.content_length_n = body->len;
    sr->headers_in.keep_alive_n = -1;

    b->pos = body->data;
    b->last = body->data + body->len;
    b->memory = 1;
    b->last_buf = 1;
    b->last_in_chain = 1;

    cl->buf = b;
    cl->next = NULL;
    rb->bufs = cl;

    sr->request_body = rb;
    sr->method = NGX_HTTP_POST;
    ngx_str_set(&sr->method_name, "POST");

    ngx_log_debug3(NGX_LOG_DEBUG_HTTP, r->connection->log, 0,
                   "modelroute dispatch: %*s to \"%V\"",
                   (size_t) MR_EXEC_ID_LEN, a->exec_id,
                   &a->route->location);

    return NGX_OK;
}


/*
 * The subrequest ended (this may be called twice for one).  NGX_OK always:
 * one attempt's failure must not end the others of the request.
 */

static ngx_int_t
mr_dispatch_answered(ngx_http_request_t *sr, void *data, ngx_int_t rc)
{
    mr_disp_att_t *a = data;

    ngx_str_t          body, retry_after;
    ngx_uint_t         status, i;
    ngx_list_part_t   *part;
    ngx_table_elt_t   *h;
    mr_disp_req_t     *req;
    mr_adapter_out_t   out;

    req = a->req;

    if (a->state != MR_ATT_RUNNING && a->state != MR_ATT_GONE) {
        return NGX_OK;
    }

    req->running--;

    if (a->state == MR_ATT_GONE) {
        ngx_log_error(NGX_LOG_INFO, sr->connection->log, 0,
                      "modelroute dispatch: a late answer for %*s was "
                      "dropped", (size_t) MR_EXEC_ID_LEN, a->exec_id);
        a->state = MR_ATT_ANSWERED;
        return NGX_OK;
    }

    a->state = MR_ATT_ANSWERED;
    a->answered_us = mr_mono_us();
    req->live--;

    /*
     * status 0: no usable answer from the provider.  nginx's own 502 or
     * 504 (connect error, reset, proxy timeout) is not the provider's, and
     * nor is an answer cut short after its header, which nginx finishes
     * as if it were complete
     */

    status = 0;

    if (a->too_large) {
        status = a->status;    /* the provider answered, at length */

    } else if (rc < NGX_HTTP_SPECIAL_RESPONSE && rc != NGX_ERROR
               && !sr->connection->error && !a->lost
               && mr_dispatch_complete(sr))
    {
        status = sr->headers_out.status;
    }

    ngx_str_null(&body);

    if (status && !a->too_large) {
        body.data = a->answer;
        body.len = a->len;
    }

    ngx_str_null(&retry_after);

    part = &sr->headers_out.headers.part;
    h = part->elts;

    for (i = 0; /* void */; i++) {
        if (i >= part->nelts) {
            if (part->next == NULL) {
                break;
            }

            part = part->next;
            h = part->elts;
            i = 0;
        }

        if (h[i].hash && h[i].key.len == sizeof("Retry-After") - 1
            && ngx_strncasecmp(h[i].key.data, (u_char *) "Retry-After",
                               sizeof("Retry-After") - 1) == 0)
        {
            retry_after = h[i].value;
            break;
        }
    }

    if (rc == NGX_HTTP_CLIENT_CLOSED_REQUEST || sr->connection->error) {

        /* the dispatcher went away and nginx dropped the call: no verdict */

        ngx_memzero(&out, sizeof(mr_adapter_out_t));
        mr_adapter_fail(&out, MR_OUT_RETRY, "GENERATION_FAILED",
                        "the attempt was interrupted");
        out.breaker = MR_BREAKER_NONE;
        out.cost = -1;

    } else if (a->lost) {
        ngx_memzero(&out, sizeof(mr_adapter_out_t));
        mr_adapter_fail(&out, MR_OUT_RETRY, "GENERATION_FAILED",
                        "the provider's answer could not be kept");
        out.breaker = MR_BREAKER_NONE;
        out.cost = -1;

    } else if (a->too_large && status >= 200 && status < 300) {

        /* the provider answered: the limit is the gateway's, no breaker */

        ngx_memzero(&out, sizeof(mr_adapter_out_t));
        mr_adapter_fail(&out, MR_OUT_RETRY, "GENERATION_FAILED",
                        "the provider's answer was too large to be read");
        out.breaker = MR_BREAKER_NONE;
        out.cost = -1;

    } else if (status == 0 && rc == NGX_HTTP_GATEWAY_TIME_OUT) {
        ngx_memzero(&out, sizeof(mr_adapter_out_t));
        mr_adapter_fail(&out, MR_OUT_TIMEOUT, "GENERATION_TIMEOUT",
                        "the provider did not answer within the "
                        "location's proxy timeouts");
        out.cost = -1;

        if (!mr_dispatch_connected(a)) {
            out.breaker = MR_BREAKER_PROVIDER;
        }

    } else {
        mr_adapter_response(req->r->pool, a->route, a->model, &a->exec,
                            status, &body, &retry_after, &out);

        /*
         * an answer with no words of the provider's (a bare 503, an HTML
         * page, a 2xx that is not of the protocol) gets the gateway's; an
         * answer too large has been logged, no answer at all by nginx
         */

        if (status && out.detail.len == 0 && !a->too_large
            && out.outcome != MR_OUT_OK && out.outcome != MR_OUT_ACCEPTED)
        {
            ngx_log_error(mr_adapter_log_level(&out), sr->connection->log,
                          0, "modelroute dispatch: %*s: route \"%V\" "
                          "answered %ui: %V", (size_t) MR_EXEC_ID_LEN,
                          a->exec_id, &a->route->name, status,
                          &out.message);
        }
    }

    if (out.detail.len) {
        /* the provider's words are the operator's, not the tenant's */
        ngx_log_error(mr_adapter_log_level(&out), sr->connection->log, 0,
                      "modelroute dispatch: %*s: route \"%V\" answered "
                      "%ui: \"%V\"", (size_t) MR_EXEC_ID_LEN, a->exec_id,
                      &a->route->name, status, &out.detail);
    }

    mr_dispatch_record(a, &out, status);

    return NGX_OK;
}


/*
 * The attempt a subrequest makes, or NULL: the subrequests of dispatch
 * requests are known by their post_subrequest handler.
 */

static mr_disp_att_t *
mr_dispatch_attempt_of(ngx_http_request_t *r)
{
    if (r == r->main || r->post_subrequest == NULL
        || r->post_subrequest->handler != mr_dispatch_answered)
    {
        return NULL;
    }

    return r->post_subrequest->data;
}


static ngx_int_t
mr_dispatch_header_filter(ngx_http_request_t *r)
{
    mr_disp_att_t             *a;
    ngx_http_core_loc_conf_t  *clcf;

    a = mr_dispatch_attempt_of(r);

    if (a == NULL || a->header) {
        return mr_disp_next_header_filter(r);
    }

    clcf = ngx_http_get_module_loc_conf(r, ngx_http_core_module);

    a->header = 1;
    a->limit = clcf->subrequest_output_buffer_size;
    a->status = r->headers_out.status;

    /*
     * read as it comes, never into a temporary file: what is past the
     * limit is discarded anyway
     */

    if (r->upstream) {
        r->upstream->buffering = 0;
    }

    if (r->headers_out.content_length_n > (off_t) a->limit
        && a->state == MR_ATT_RUNNING)
    {
        /* its body is not even read: the upstream closes the connection */

        r->header_only = 1;
        a->too_large = 1;

        ngx_log_error(NGX_LOG_ERR, r->connection->log, 0,
                      "modelroute dispatch: %*s: the answer of route "
                      "\"%V\" is too large (%O bytes, more than "
                      "subrequest_output_buffer_size %uz); the attempt "
                      "failed", (size_t) MR_EXEC_ID_LEN, a->exec_id,
                      &a->route->name, r->headers_out.content_length_n,
                      a->limit);
    }

    return mr_disp_next_header_filter(r);
}


/* an attempt's answer goes no further than its own memory */

static ngx_int_t
mr_dispatch_body_filter(ngx_http_request_t *r, ngx_chain_t *in)
{
    ngx_buf_t                 *b;
    ngx_chain_t               *cl;
    mr_disp_att_t             *a;
    ngx_http_core_loc_conf_t  *clcf;

    a = mr_dispatch_attempt_of(r);

    if (a == NULL) {
        return mr_disp_next_body_filter(r, in);
    }

    if (!a->header) {
        clcf = ngx_http_get_module_loc_conf(r, ngx_http_core_module);
        a->header = 1;
        a->limit = clcf->subrequest_output_buffer_size;
        a->status = r->headers_out.status;
    }

    for (cl = in; cl; cl = cl->next) {
        b = cl->buf;

        if (a->state == MR_ATT_RUNNING && !a->too_large && !a->lost
            && ngx_buf_size(b))
        {
            mr_dispatch_keep(r, a, b);
        }

        /* taken, kept or not */

        if (ngx_buf_in_memory(b)) {
            b->pos = b->last;
        }

        if (b->in_file) {
            b->file_pos = b->file_last;
        }
    }

    return NGX_OK;
}


static void
mr_dispatch_keep(ngx_http_request_t *r, mr_disp_att_t *a, ngx_buf_t *b)
{
    off_t     size;
    size_t    len, want;
    u_char   *p;
    ssize_t   n;

    size = ngx_buf_size(b);

    if (size > (off_t) (a->limit - a->len)) {
        a->too_large = 1;

        ngx_log_error(NGX_LOG_ERR, r->connection->log, 0,
                      "modelroute dispatch: %*s: the answer of route "
                      "\"%V\" is too large (more than "
                      "subrequest_output_buffer_size %uz); the attempt "
                      "failed, the rest is discarded",
                      (size_t) MR_EXEC_ID_LEN, a->exec_id,
                      &a->route->name, a->limit);

        mr_dispatch_discard_rest(r, a);
        return;
    }

    len = (size_t) size;

    if (len > a->size - a->len) {

        /* the announced length, or doubled from MR_DISP_ANSWER */

        want = (r->headers_out.content_length_n >= (off_t) (a->len + len))
               ? (size_t) r->headers_out.content_length_n
               : ngx_max(ngx_max(2 * a->size, a->len + len), MR_DISP_ANSWER);

        want = ngx_min(want, a->limit);

        p = ngx_pnalloc(r->pool, want);
        if (p == NULL) {
            a->lost = 1;
            mr_dispatch_discard_rest(r, a);
            return;
        }

        if (a->len) {
            ngx_memcpy(p, a->answer, a->len);
        }

        if (a->answer) {
            ngx_pfree(r->pool, a->answer);
        }

        a->answer = p;
        a->size = want;
    }

    if (ngx_buf_in_memory(b)) {
        ngx_memcpy(a->answer + a->len, b->pos, len);

    } else {
        /* a file buffer: an answer from proxy_cache, say */

        n = ngx_read_file(b->file, a->answer + a->len, len, b->file_pos);

        if (n != (ssize_t) len) {
            a->lost = 1;
            mr_dispatch_discard_rest(r, a);
            return;
        }
    }

    a->len += len;
}


/*
 * What is kept is dropped, and an upstream ends the subrequest as soon
 * as it has passed this buffer (unbuffered, it looks at u->length after
 * each write): the connection is closed, what was not read makes it
 * unusable.  A location that answers itself is just not listened to.
 */

static void
mr_dispatch_discard_rest(ngx_http_request_t *r, mr_disp_att_t *a)
{
    if (a->answer) {
        ngx_pfree(r->pool, a->answer);
        a->answer = NULL;
    }

    a->len = 0;
    a->size = 0;

    if (r->upstream && !r->upstream->buffering) {
        r->upstream->length = 0;
    }
}


/* whether an upstream's answer was read to its end */

static ngx_uint_t
mr_dispatch_complete(ngx_http_request_t *sr)
{
    ngx_event_pipe_t     *p;
    ngx_http_upstream_t  *u;

    u = sr->upstream;

    if (u == NULL) {
        return 1;    /* a location that answers itself: the simulator */
    }

    if (u->buffering) {
        p = u->pipe;

        return p == NULL || p->upstream_done
               || (p->upstream_eof && !p->upstream_error && p->length == -1);
    }

    return u->length == 0 || (u->length == -1 && !u->error);
}


/*
 * Whether the provider took the attempt's connection: a timeout before
 * it did is the provider's (or the network's) failure, one after it may
 * be an input that takes long.  nginx sets connect_time once the
 * connection is made; an attempt that has no upstream (the simulator)
 * was taken at once.
 */

static ngx_uint_t
mr_dispatch_connected(mr_disp_att_t *a)
{
    ngx_http_upstream_t  *u;

    if (a->header || a->sr == NULL || a->sr->upstream == NULL) {
        return 1;
    }

    u = a->sr->upstream;

    return u->state != NULL && u->state->connect_time != (ngx_msec_t) -1;
}


static void
mr_dispatch_record(mr_disp_att_t *a, mr_adapter_out_t *out,
    ngx_uint_t status)
{
    mr_disp_op_t        *d;
    mr_disp_req_t       *req;
    mr_store_op_t       *op;
    ngx_http_request_t  *r;

    req = a->req;
    r = req->r;

    op = ngx_pcalloc(r->pool, sizeof(mr_store_op_t));
    if (op == NULL) {
        return;    /* its lease ends, and it is made again */
    }

    op->type = MR_OP_DISP_DONE;
    op->handler = mr_dispatch_recorded;
    op->data = a;

    d = &op->disp;
    ngx_memcpy(d->exec_id, a->exec_id, MR_EXEC_ID_LEN);
    d->token = a->token;
    d->outcome = out->outcome;
    d->code = out->code;
    d->message = out->message;
    d->result = out->result;
    d->job_id = out->job_id;
    d->cost = out->cost;
    d->retry_after_ms = out->retry_after_ms;
    d->status_code = status;
    d->breaker = out->breaker;
    d->jitter = ngx_random() % 1000;
    d->ended_ms = mr_now_ms();
    d->answered_us = a->answered_us ? a->answered_us : mr_mono_us();

    r->main->blocked++;
    req->ops++;

    ngx_log_debug3(NGX_LOG_DEBUG_HTTP, r->connection->log, 0,
                   "modelroute dispatch: %*s answered %ui",
                   (size_t) MR_EXEC_ID_LEN, a->exec_id, status);

    mr_store_submit(op);
}


static void
mr_dispatch_recorded(mr_store_op_t *op)
{
    mr_disp_att_t *a = op->data;

    ngx_connection_t    *c;
    mr_disp_req_t       *req;
    ngx_http_request_t  *r;

    static ngx_str_t  gone = ngx_string("deleted");

    req = a->req;
    r = req->r;
    c = r->connection;

    r->main->blocked--;
    req->ops--;

    switch (op->result) {

    case MR_R_OK:
        req->recorded++;
        break;

    case MR_R_NOOP:
    case MR_R_NOT_FOUND:
        ngx_log_error(NGX_LOG_INFO, c->log, 0,
                      "modelroute dispatch: the answer for %*s came when "
                      "its lease was over (%V); dropped",
                      (size_t) MR_EXEC_ID_LEN, a->exec_id,
                      op->result == MR_R_NOOP
                      ? mr_exec_status_name(op->disp.status) : &gone);
        break;

    case MR_R_UNAVAILABLE:
        ngx_log_error(NGX_LOG_WARN, c->log, 0,
                      "modelroute dispatch: the outcome of %*s cannot be "
                      "recorded, the store cannot be reached; it is made "
                      "again when its lease ends",
                      (size_t) MR_EXEC_ID_LEN, a->exec_id);
        break;

    default:
        ngx_log_error(NGX_LOG_ERR, c->log, 0,
                      "modelroute dispatch: the outcome of %*s was not "
                      "recorded; it is made again when its lease ends",
                      (size_t) MR_EXEC_ID_LEN, a->exec_id);
    }

    if (req->starting) {
        req->deferred = 1;    /* mr_dispatch_start() goes on with it */
        return;
    }

    if (c->error) {
        ngx_http_finalize_request(r, NGX_ERROR);
        ngx_http_run_posted_requests(c);
        return;
    }

    if (req->started && req->running == 0 && req->ops == 0
        && !req->finished)
    {
        ngx_http_finalize_request(r, mr_dispatch_finish(req));
        ngx_http_run_posted_requests(c);
    }
}


/* the route's timeout, and executions cancelled or expired meanwhile */

static void
mr_dispatch_watch(ngx_event_t *ev)
{
    mr_disp_req_t *req = ev->data;

    ngx_uint_t           i, n;
    ngx_pool_t          *pool;
    mr_disp_att_t       *a;
    mr_store_read_t     *rd;
    mr_adapter_out_t     out;

    n = 0;

    for (i = 0; i < req->n; i++) {
        a = &req->att[i];

        if (a->state == MR_ATT_GONE) {
            mr_dispatch_abort(a);    /* not ended yet: once more */
            continue;
        }

        if (a->state != MR_ATT_RUNNING) {
            continue;
        }

        if ((ngx_msec_int_t) (ngx_current_msec - a->deadline) >= 0) {
            ngx_memzero(&out, sizeof(mr_adapter_out_t));
            mr_adapter_fail(&out, MR_OUT_TIMEOUT, "GENERATION_TIMEOUT",
                            "the provider did not answer within the "
                            "route's timeout");
            out.cost = -1;

            if (!mr_dispatch_connected(a)) {
                out.breaker = MR_BREAKER_PROVIDER;
            }

            a->state = MR_ATT_GONE;
            req->live--;

            mr_dispatch_record(a, &out, 0);
            mr_dispatch_abort(a);
            continue;
        }

        n++;
    }

    /*
     * the executions of the attempts in flight, in one read of its own
     * (not the request's: the request may end before the read does, see
     * mr_dispatch_cleanup()); one at a time
     */

    if (n && req->watching == NULL) {
        pool = ngx_create_pool(1024, ev->log);
        rd = pool ? ngx_pcalloc(pool, sizeof(mr_store_read_t)) : NULL;

        if (rd) {
            rd->type = MR_READ_EXECS;
            rd->parts = MR_PARTS_STATE;    /* their status and lease */
            rd->pool = pool;
            rd->data = req;
            rd->handler = mr_dispatch_watch_read;
            rd->ids = ngx_pnalloc(pool, n * MR_EXEC_ID_LEN);
            rd->list = ngx_array_create(pool, n, sizeof(mr_exec_t));
        }

        if (rd && rd->ids && rd->list) {
            for (i = 0; i < req->n; i++) {
                a = &req->att[i];

                if (a->state == MR_ATT_RUNNING) {
                    ngx_memcpy(rd->ids + rd->nids++ * MR_EXEC_ID_LEN,
                               a->exec_id, MR_EXEC_ID_LEN);
                }
            }

            if (mr_store_read(rd) == NGX_AGAIN) {
                req->watching = rd;

            } else {
                i = mr_dispatch_watched(req, rd);
                ngx_destroy_pool(pool);

                if (i) {
                    return;          /* the request ended */
                }
            }

        } else if (pool) {
            ngx_destroy_pool(pool);
        }
    }

    if (mr_dispatch_unwanted(req)) {
        return;                      /* the request ended */
    }

    if (req->running) {
        ngx_add_timer(ev, MR_DISP_WATCH);
    }
}


static void
mr_dispatch_watch_read(mr_store_read_t *rd)
{
    mr_disp_req_t  *req;

    req = rd->data;

    if (req) {
        req->watching = NULL;
        (void) mr_dispatch_watched(req, rd);
    }

    ngx_destroy_pool(rd->pool);
}


/*
 * The executions read: an attempt whose execution was cancelled or
 * expired meanwhile (its lease passed on) is given up; when no attempt of
 * the request is wanted any more, the request ends (1: it did, req is no
 * more).
 */

static ngx_uint_t
mr_dispatch_watched(mr_disp_req_t *req, mr_store_read_t *rd)
{
    ngx_uint_t           i, j;
    mr_exec_t           *exec;
    mr_disp_att_t       *a;
    ngx_connection_t    *c;
    ngx_http_request_t  *r;

    r = req->r;
    c = r->connection;

    exec = rd->list->elts;

    for (j = 0; rd->rc == NGX_OK && j < rd->list->nelts; j++) {

        for (i = 0; i < req->n; i++) {
            a = &req->att[i];

            if (a->state == MR_ATT_RUNNING
                && ngx_memcmp(a->exec_id, exec[j].id, MR_EXEC_ID_LEN) == 0)
            {
                break;
            }
        }

        if (i == req->n) {
            continue;                /* answered meanwhile */
        }

        if (exec[j].rec.status != MR_PROCESSING
            || exec[j].rec.lease_owner != a->token)
        {
            ngx_log_error(NGX_LOG_INFO, c->log, 0,
                          "modelroute dispatch: %*s is %V: its attempt "
                          "is given up", (size_t) MR_EXEC_ID_LEN,
                          a->exec_id,
                          mr_exec_status_name(exec[j].rec.status));
            a->state = MR_ATT_GONE;
            req->live--;

            mr_dispatch_abort(a);
        }
    }

    return mr_dispatch_unwanted(req);
}


/*
 * When no attempt of the request is wanted any more, the upstream calls
 * in flight are aborted and the request ends (1: req is no more)
 */

static ngx_uint_t
mr_dispatch_unwanted(mr_disp_req_t *req)
{
    ngx_connection_t    *c;
    ngx_http_request_t  *r;

    if (!(req->running && req->live == 0)) {
        return 0;
    }

    r = req->r;
    c = r->connection;

    ngx_log_error(NGX_LOG_INFO, c->log, 0,
                  "modelroute dispatch: aborting %ui attempts no "
                  "longer wanted", req->running);

    ngx_http_finalize_request(r, NGX_ERROR);
    ngx_http_run_posted_requests(c);

    return 1;
}


/*
 * Ends one attempt's upstream call as its own timeout would: the event it
 * waits on is marked timed out and posted, and the upstream finishes the
 * subrequest (504) through its usual path; the answer is dropped.  A
 * location without an upstream (the simulator) just runs to its end.
 */

static void
mr_dispatch_abort(mr_disp_att_t *a)
{
    ngx_event_t          *ev;
    ngx_connection_t     *c;
    ngx_http_upstream_t  *u;

    u = a->sr ? a->sr->upstream : NULL;

    if (u == NULL) {
        return;
    }

    c = u->peer.connection;
    ev = NULL;

    if (c) {
        /* marked first: the keepalive cache refuses such a connection */
        ev = u->request_sent ? c->read : c->write;
        ev->timedout = 1;
    }

    /*
     * the server did nothing wrong: its peer is freed as a success, so
     * that max_fails does not count the abort, and no next server is tried
     */

    if (u->peer.sockaddr && u->peer.free) {
        u->peer.free(&u->peer, u->peer.data, 0);
        u->peer.sockaddr = NULL;
    }

    u->peer.tries = 0;

    if (ev && !ev->posted) {
        ngx_post_event(ev, &ngx_posted_events);
    }
}


static void
mr_dispatch_cleanup(void *data)
{
    mr_disp_req_t *req = data;

    if (req->watch.timer_set) {
        ngx_del_timer(&req->watch);
    }

    /* a watch's read in flight ends without its request */

    if (req->watching) {
        req->watching->data = NULL;
        req->watching = NULL;
    }
}


/*
 * Once every attempt is recorded, the answer to the dispatcher; until
 * then NGX_DONE.  The caller finalizes the request with what it returns.
 */

static ngx_int_t
mr_dispatch_finish(mr_disp_req_t *req)
{
    ngx_int_t            rc;
    ngx_buf_t           *b;
    ngx_chain_t          out;
    ngx_http_request_t  *r;

    r = req->r;

    if (req->finished || !req->started || req->running || req->ops) {
        return NGX_DONE;
    }

    req->finished = 1;

    if (req->watch.timer_set) {
        ngx_del_timer(&req->watch);
    }

    b = ngx_create_temp_buf(r->pool, NGX_INT_T_LEN * 2 + 2);
    if (b == NULL) {
        return NGX_ERROR;
    }

    b->last = ngx_sprintf(b->last, "%ui %ui\n", req->recorded, req->n);
    b->last_buf = 1;
    b->last_in_chain = 1;

    r->headers_out.status = NGX_HTTP_OK;
    r->headers_out.content_length_n = b->last - b->pos;
    ngx_str_set(&r->headers_out.content_type, "text/plain");
    r->headers_out.content_type_len = r->headers_out.content_type.len;

    rc = ngx_http_send_header(r);

    if (rc == NGX_ERROR || rc > NGX_OK || r->header_only) {
        return rc;
    }

    out.buf = b;
    out.next = NULL;

    return ngx_http_output_filter(r, &out);
}
