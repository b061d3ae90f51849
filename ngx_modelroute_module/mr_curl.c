
/*
 * ModelRoute: libcurl's multi interface on nginx's event loop.
 *
 * Each socket curl opens gets an ngx_connection_t with level-triggered
 * events (flags 0: curl does not drain sockets), curl's one timeout is
 * one nginx timer, and transfers end through mr_curl_done_pt callbacks.
 * The connection of a socket is never touched after
 * curl_multi_socket_action(): curl may have removed it meanwhile.
 *
 * libcurl 7.88 closes a socket whose connect it gives up (a timeout, the
 * loser of "happy eyeballs") before it says CURL_POLL_REMOVE: the kernel
 * has dropped the socket from epoll with its last descriptor, and the
 * number may be another socket's by then.  So each watched socket is
 * known by its inode too, and epoll is told only about the socket nginx
 * registered (mr_curl_same()).
 *
 * libcurl never resolves a host name here: its resolver runs in a thread
 * that a transfer which times out, or a worker that exits, waits for.
 * Names are resolved by nginx's resolver and handed over with
 * CURLOPT_RESOLVE; a transfer whose name is not among them fails
 * (mr_curl_resolver_start()).
 */


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_event.h>

#include <arpa/inet.h>
#include <sys/stat.h>

#include "mr_curl.h"
#include "mr_util.h"


struct mr_curl_req_s {
    ngx_queue_t               queue;
    CURL                     *easy;
    mr_curl_done_pt           done;
    void                     *data;
    ngx_uint_t                failed;     /* no connection for a socket */
};


/* a socket nginx watches for libcurl (curl_multi_assign()) */

typedef struct {
    ngx_connection_t         *c;
    ino_t                     ino;        /* the socket registered */
} mr_curl_sock_t;


static int mr_curl_socket(CURL *easy, curl_socket_t s, int what, void *userp,
    void *socketp);
static int mr_curl_timer(CURLM *multi, long timeout_ms, void *userp);
static mr_curl_sock_t *mr_curl_watch(curl_socket_t s);
static ngx_uint_t mr_curl_same(mr_curl_sock_t *sk, curl_socket_t s);
static void mr_curl_forget(ngx_connection_t *c);
static void mr_curl_event_handler(ngx_event_t *ev);
static void mr_curl_timer_handler(ngx_event_t *ev);
static void mr_curl_check(void);
static void mr_curl_remove(mr_curl_req_t *req);
static void mr_curl_fail(CURL *easy);
static void mr_curl_fail_handler(ngx_event_t *ev);
static int mr_curl_resolver_start(void *resolver_state, void *reserved,
    void *userdata);


static CURLM        *mr_curl_multi;
static ngx_event_t   mr_curl_timer_ev;
static ngx_event_t   mr_curl_fail_ev;
static ngx_queue_t   mr_curl_reqs;
static ngx_log_t    *mr_curl_log;


/*
 * connections: how many transfers may run at once.  Idle connections are
 * kept for that many: by default curl keeps four per easy handle added
 * at the time, so after a burst it closed most of them and the next one
 * connected again (a webhook benchmark: one delivery in three made a TCP
 * connection).
 */

ngx_int_t
mr_curl_init_process(ngx_cycle_t *cycle, ngx_uint_t connections)
{
    if (curl_global_init(CURL_GLOBAL_DEFAULT) != CURLE_OK) {
        ngx_log_error(NGX_LOG_EMERG, cycle->log, 0,
                      "modelroute: curl_global_init() failed");
        return NGX_ERROR;
    }

    mr_curl_multi = curl_multi_init();
    if (mr_curl_multi == NULL) {
        return NGX_ERROR;
    }

    mr_curl_log = cycle->log;
    ngx_queue_init(&mr_curl_reqs);

    curl_multi_setopt(mr_curl_multi, CURLMOPT_SOCKETFUNCTION, mr_curl_socket);
    curl_multi_setopt(mr_curl_multi, CURLMOPT_TIMERFUNCTION, mr_curl_timer);
    curl_multi_setopt(mr_curl_multi, CURLMOPT_MAXCONNECTS, (long) connections);

    mr_curl_timer_ev.handler = mr_curl_timer_handler;
    mr_curl_timer_ev.log = cycle->log;
    mr_curl_timer_ev.data = mr_curl_multi;
    mr_curl_timer_ev.cancelable = 1;

    mr_curl_fail_ev.handler = mr_curl_fail_handler;
    mr_curl_fail_ev.log = cycle->log;
    mr_curl_fail_ev.data = mr_curl_multi;

    return NGX_OK;
}


/* abandons every transfer: their work is in the store, to be retried */

void
mr_curl_exit_process(ngx_cycle_t *cycle)
{
    ngx_queue_t    *q;
    mr_curl_req_t  *req;

    if (mr_curl_multi == NULL) {
        return;
    }

    while (!ngx_queue_empty(&mr_curl_reqs)) {
        q = ngx_queue_head(&mr_curl_reqs);
        req = ngx_queue_data(q, mr_curl_req_t, queue);

        mr_curl_remove(req);
        req->done(req->easy, MR_CURL_ABANDONED, req->data);
        ngx_free(req);
    }

    if (mr_curl_timer_ev.timer_set) {
        ngx_del_timer(&mr_curl_timer_ev);
    }

    if (mr_curl_fail_ev.posted) {
        ngx_delete_posted_event(&mr_curl_fail_ev);
    }

    curl_multi_cleanup(mr_curl_multi);
    mr_curl_multi = NULL;
}


ngx_int_t
mr_curl_start(CURL *easy, mr_curl_done_pt done, void *data)
{
    mr_curl_req_t  *req;

    if (mr_curl_multi == NULL) {
        return NGX_ERROR;
    }

    req = ngx_alloc(sizeof(mr_curl_req_t), mr_curl_log);
    if (req == NULL) {
        return NGX_ERROR;
    }

    req->easy = easy;
    req->done = done;
    req->data = data;
    req->failed = 0;

    curl_easy_setopt(easy, CURLOPT_PRIVATE, req);
    curl_easy_setopt(easy, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(easy, CURLOPT_RESOLVER_START_FUNCTION,
                     mr_curl_resolver_start);
    curl_easy_setopt(easy, CURLOPT_RESOLVER_START_DATA, req);

    if (curl_multi_add_handle(mr_curl_multi, easy) != CURLM_OK) {
        ngx_free(req);
        return NGX_ERROR;
    }

    ngx_queue_insert_tail(&mr_curl_reqs, &req->queue);

    return NGX_OK;
}


static void
mr_curl_remove(mr_curl_req_t *req)
{
    ngx_queue_remove(&req->queue);

    /* may call mr_curl_socket() with CURL_POLL_REMOVE */
    curl_multi_remove_handle(mr_curl_multi, req->easy);
    curl_easy_setopt(req->easy, CURLOPT_PRIVATE, NULL);
}


static int
mr_curl_socket(CURL *easy, curl_socket_t s, int what, void *userp,
    void *socketp)
{
    ngx_event_t       *rev, *wev;
    mr_curl_sock_t    *sk;
    ngx_connection_t  *c;

    sk = socketp;

    if (what == CURL_POLL_REMOVE) {
        if (sk == NULL) {
            return 0;
        }

        c = sk->c;

        if (mr_curl_same(sk, s)) {
            if (c->read->active) {
                ngx_del_event(c->read, NGX_READ_EVENT, 0);
            }

            if (c->write->active) {
                ngx_del_event(c->write, NGX_WRITE_EVENT, 0);
            }
        }

        mr_curl_forget(c);

        /* curl owns and closes the descriptor */

        c->fd = (ngx_socket_t) -1;
        ngx_free_connection(c);
        ngx_free(sk);
        curl_multi_assign(mr_curl_multi, s, NULL);

        return 0;
    }

    if (sk == NULL) {
        sk = mr_curl_watch(s);
        if (sk == NULL) {
            /* -1 would make curl give the whole multi handle up */
            mr_curl_fail(easy);
            return 0;
        }

        curl_multi_assign(mr_curl_multi, s, sk);

    } else if (!mr_curl_same(sk, s)) {
        /* the number is a new socket of curl's: watched from scratch */
        mr_curl_forget(sk->c);
    }

    c = sk->c;
    rev = c->read;
    wev = c->write;

    if (what & CURL_POLL_IN) {
        if (!rev->active && ngx_add_event(rev, NGX_READ_EVENT, 0) != NGX_OK) {
            mr_curl_fail(easy);
            return 0;
        }

    } else if (rev->active) {
        ngx_del_event(rev, NGX_READ_EVENT, 0);
    }

    if (what & CURL_POLL_OUT) {
        if (!wev->active && ngx_add_event(wev, NGX_WRITE_EVENT, 0) != NGX_OK)
        {
            mr_curl_fail(easy);
            return 0;
        }

    } else if (wev->active) {
        ngx_del_event(wev, NGX_WRITE_EVENT, 0);
    }

    return 0;
}


static mr_curl_sock_t *
mr_curl_watch(curl_socket_t s)
{
    struct stat        st;
    mr_curl_sock_t    *sk;
    ngx_connection_t  *c;

    if (fstat(s, &st) == -1) {
        ngx_log_error(NGX_LOG_ALERT, mr_curl_log, ngx_errno,
                      "modelroute: fstat() of a socket of libcurl failed");
        return NULL;
    }

    sk = ngx_alloc(sizeof(mr_curl_sock_t), mr_curl_log);
    if (sk == NULL) {
        return NULL;
    }

    c = ngx_get_connection(s, mr_curl_log);
    if (c == NULL) {
        ngx_free(sk);
        return NULL;
    }

    c->data = sk;
    c->log = mr_curl_log;
    c->read->log = mr_curl_log;
    c->write->log = mr_curl_log;
    c->read->handler = mr_curl_event_handler;
    c->write->handler = mr_curl_event_handler;

    sk->c = c;
    sk->ino = st.st_ino;

    return sk;
}


/*
 * Whether the descriptor is still the socket nginx registered; if it is
 * another one now, the next registration is for that one.
 */

static ngx_uint_t
mr_curl_same(mr_curl_sock_t *sk, curl_socket_t s)
{
    struct stat  st;

    if (fstat(s, &st) == -1) {
        ngx_log_debug1(NGX_LOG_DEBUG_EVENT, mr_curl_log, ngx_errno,
                       "modelroute: curl closed socket %d before removing "
                       "it", (int) s);
        return 0;
    }

    if (st.st_ino == sk->ino) {
        return 1;
    }

    ngx_log_debug1(NGX_LOG_DEBUG_EVENT, mr_curl_log, 0,
                   "modelroute: curl's socket %d was closed and opened "
                   "again", (int) s);

    sk->ino = st.st_ino;

    return 0;
}


/* what nginx knew of a socket that epoll no longer has */

static void
mr_curl_forget(ngx_connection_t *c)
{
    if (c->read->active) {
        ngx_del_event(c->read, NGX_READ_EVENT, NGX_CLOSE_EVENT);
    }

    if (c->write->active) {
        ngx_del_event(c->write, NGX_WRITE_EVENT, NGX_CLOSE_EVENT);
    }

    if (c->read->posted) {
        ngx_delete_posted_event(c->read);
    }

    if (c->write->posted) {
        ngx_delete_posted_event(c->write);
    }
}


static int
mr_curl_timer(CURLM *multi, long timeout_ms, void *userp)
{
    if (timeout_ms < 0) {
        if (mr_curl_timer_ev.timer_set) {
            ngx_del_timer(&mr_curl_timer_ev);
        }

        return 0;
    }

    mr_timer_exact(&mr_curl_timer_ev, (ngx_msec_t) timeout_ms);

    return 0;
}


/* a transfer whose socket nginx could not take: ended on the loop */

static void
mr_curl_fail(CURL *easy)
{
    char  *p;

    p = NULL;

    if (curl_easy_getinfo(easy, CURLINFO_PRIVATE, &p) == CURLE_OK && p) {
        ((mr_curl_req_t *) p)->failed = 1;

        if (!mr_curl_fail_ev.posted) {
            ngx_post_event(&mr_curl_fail_ev, &ngx_posted_events);
        }
    }
}


static void
mr_curl_fail_handler(ngx_event_t *ev)
{
    ngx_queue_t    *q, *next;
    mr_curl_req_t  *req;

    for (q = ngx_queue_head(&mr_curl_reqs);
         q != ngx_queue_sentinel(&mr_curl_reqs);
         q = next)
    {
        next = ngx_queue_next(q);
        req = ngx_queue_data(q, mr_curl_req_t, queue);

        if (!req->failed) {
            continue;
        }

        mr_curl_remove(req);
        req->done(req->easy, CURLE_COULDNT_CONNECT, req->data);
        ngx_free(req);

        /* done() may have started or ended others: from the start */
        next = ngx_queue_head(&mr_curl_reqs);
    }
}


static void
mr_curl_event_handler(ngx_event_t *ev)
{
    int                running;
    ngx_socket_t       fd;
    ngx_connection_t  *c;

    c = ev->data;

    if (c->close) {
        /* worker_shutdown_timeout: give every transfer up */
        mr_curl_exit_process(NULL);
        return;
    }

    fd = c->fd;

    (void) curl_multi_socket_action(mr_curl_multi, fd,
                                    ev->write ? CURL_CSELECT_OUT
                                              : CURL_CSELECT_IN,
                                    &running);

    /* c may be gone now */

    mr_curl_check();
}


static void
mr_curl_timer_handler(ngx_event_t *ev)
{
    int  running;

    (void) curl_multi_socket_action(mr_curl_multi, CURL_SOCKET_TIMEOUT, 0,
                                    &running);

    mr_curl_check();
}


static void
mr_curl_check(void)
{
    int             pending;
    char           *p;
    CURL           *easy;
    CURLMsg        *msg;
    CURLcode        rc;
    mr_curl_req_t  *req;

    while (mr_curl_multi
           && (msg = curl_multi_info_read(mr_curl_multi, &pending)))
    {
        if (msg->msg != CURLMSG_DONE) {
            continue;
        }

        easy = msg->easy_handle;
        rc = msg->data.result;
        p = NULL;

        curl_easy_getinfo(easy, CURLINFO_PRIVATE, &p);
        if (p == NULL) {
            continue;
        }

        req = (mr_curl_req_t *) p;

        mr_curl_remove(req);

        req->done(easy, rc, req->data);
        ngx_free(req);
    }
}


/*
 * libcurl is about to resolve a host that is not in its DNS cache: only
 * an address literal, which it converts on the spot, may go on
 */

static int
mr_curl_resolver_start(void *resolver_state, void *reserved, void *userdata)
{
    mr_curl_req_t *req = userdata;

    int              literal;
    char            *url, *host;
    CURLU           *u;
    struct in_addr   in;

    literal = 0;
    url = NULL;

    if (curl_easy_getinfo(req->easy, CURLINFO_EFFECTIVE_URL, &url)
        == CURLE_OK && url)
    {
        u = curl_url();

        if (u && curl_url_set(u, CURLUPART_URL, url, 0) == CURLUE_OK
            && curl_url_get(u, CURLUPART_HOST, &host, 0) == CURLUE_OK)
        {
            literal = (host[0] == '[' || inet_pton(AF_INET, host, &in) == 1);
            curl_free(host);
        }

        curl_url_cleanup(u);
    }

    if (!literal) {
        ngx_log_error(NGX_LOG_WARN, mr_curl_log, 0,
                      "modelroute: libcurl was about to resolve a host name "
                      "itself; the transfer fails instead");
        return 1;
    }

    return 0;
}
