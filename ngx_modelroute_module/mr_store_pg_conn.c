
/*
 * ModelRoute: PostgreSQL connections on nginx's events.
 *
 * No libpq call here blocks the worker: a connection is made with
 * PQconnectStartParams() and PQconnectPoll() on the events of its socket
 * (host names were resolved when the configuration was read, see
 * mr_store_pg_conf.c), then put in non-blocking and pipeline mode.  Its
 * socket is wrapped in an ngx_connection_t, anew after every step of
 * the connection (libpq may change it: the next host of a list).  A
 * request is a run of prepared statements ended by a sync: PQflush() on
 * write events while libpq holds output, PQconsumeInput(), PQisBusy() and
 * PQgetResult() on read events; results come back in the order requests
 * were sent.  A statement that fails fails its request (and libpq skips
 * the rest of it up to its sync); a connection that is lost, or that
 * answers nothing for longer than modelroute_store_timeout, fails every
 * request in flight with MR_PG_REQ_LOST: whether what they sent was done
 * is then unknown to the store, which tells (mr_store_pg.c).  A lost
 * connection is made again after a backoff (100 ms, doubled up to 5 s).
 *
 * On every new connection the statements are prepared and the schema's
 * version is checked: a database of another version is refused (logged
 * once) and tried again later, the operator may be migrating it.
 */


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_event.h>

#include "ngx_http_modelroute_module.h"
#include "mr_store_pg.h"


#define MR_PG_BACKOFF_MIN    100
#define MR_PG_BACKOFF_MAX    5000

#define MR_PG_CLOCK_RTT      10000   /* ms: a slower sample is not taken */
#define MR_PG_CLOCK_SLACK    5       /* ms: nearer the offset, nothing moves */
#define MR_PG_CLOCK_WARN     1000    /* ms: an offset said in the log */


static const char *mr_pg_conn_rotate(mr_pg_conn_t *pc, const char *v,
    ngx_uint_t n, ngx_uint_t k);
static void mr_pg_conn_poll(mr_pg_conn_t *pc);
static ngx_int_t mr_pg_conn_wrap(mr_pg_conn_t *pc);
static void mr_pg_conn_unwrap(mr_pg_conn_t *pc, ngx_uint_t closed);
static void mr_pg_conn_wait(mr_pg_conn_t *pc, ngx_uint_t read,
    ngx_uint_t write);
static void mr_pg_conn_event(ngx_event_t *ev);
static void mr_pg_conn_retry(ngx_event_t *ev);
static void mr_pg_conn_timeout(ngx_event_t *ev);
static void mr_pg_conn_setup(mr_pg_conn_t *pc);
static void mr_pg_conn_setup_done(mr_pg_req_t *req);
static void mr_pg_conn_io(mr_pg_conn_t *pc);
static ngx_int_t mr_pg_conn_flush(mr_pg_conn_t *pc);
static ngx_int_t mr_pg_conn_results(mr_pg_conn_t *pc);
static void mr_pg_conn_lost(mr_pg_conn_t *pc, const char *why);
static void mr_pg_conn_timer(mr_pg_conn_t *pc, ngx_uint_t progress);
static void mr_pg_conn_post_lost(mr_pg_conn_t *pc);
static void mr_pg_conn_lost_handler(ngx_event_t *ev);


static void mr_pg_req_done(mr_pg_conn_t *pc, mr_pg_req_t *req);


static ngx_uint_t  mr_pg_clock_sampled;  /* mr_clock_offset was sampled */


mr_pg_conn_t *
mr_pg_conn_create(ngx_cycle_t *cycle, ngx_uint_t index,
    mr_pg_conn_handler_pt ready, void *data)
{
    mr_pg_conn_t  *pc;

    pc = ngx_pcalloc(cycle->pool, sizeof(mr_pg_conn_t));
    if (pc == NULL) {
        return NULL;
    }

    pc->index = index;
    pc->ready = ready;
    pc->data = data;
    pc->log = cycle->log;
    pc->backoff = MR_PG_BACKOFF_MIN;

    ngx_queue_init(&pc->pending);

    pc->retry_ev.handler = mr_pg_conn_retry;
    pc->retry_ev.data = &mr_timer_conn;
    pc->retry_ev.log = cycle->log;
    pc->retry_ev.cancelable = 1;

    pc->timeout_ev.handler = mr_pg_conn_timeout;
    pc->timeout_ev.data = &mr_timer_conn;
    pc->timeout_ev.log = cycle->log;
    pc->timeout_ev.cancelable = 1;

    pc->lost_ev.handler = mr_pg_conn_lost_handler;
    pc->lost_ev.data = &mr_timer_conn;
    pc->lost_ev.log = cycle->log;

    if (mr_pg_plans_init(pc, cycle->pool) != NGX_OK) {
        return NULL;
    }

    return pc;
}


/* starts a connection; its handler learns when it is ready or down */

void
mr_pg_conn_connect(mr_pg_conn_t *pc)
{
    ngx_uint_t     i, n;
    const char   **values;
    mr_pg_conf_t  *pcf;

    if (pc->state != MR_PG_DOWN || pc->retry_ev.timer_set) {
        return;
    }

    pcf = mr_pg_conf();
    values = pcf->values;

    /*
     * libpq gives up a host that does not answer only after its
     * connect_timeout, which PQconnectPoll() leaves to us: the whole
     * attempt then fails, and the hosts after it would never be tried.
     * The attempt after a timeout starts from the next host instead.
     */

    if (pcf->nhosts > 1 && pc->first % pcf->nhosts) {
        for (n = 0; pcf->keywords[n]; n++) { /* void */ }

        values = ngx_alloc((n + 1) * sizeof(char *), pc->log);

        if (values) {
            for (i = 0; i <= n; i++) {
                values[i] = pcf->values[i];

                if (i < n && (ngx_strcmp(pcf->keywords[i], "host") == 0
                              || ngx_strcmp(pcf->keywords[i], "hostaddr")
                                 == 0
                              || ngx_strcmp(pcf->keywords[i], "port") == 0))
                {
                    values[i] = mr_pg_conn_rotate(pc, pcf->values[i],
                                                  pcf->nhosts,
                                                  pc->first % pcf->nhosts);
                }
            }

        } else {
            values = pcf->values;
        }
    }

    pc->pg = PQconnectStartParams(pcf->keywords, values, 0);

    if (values != pcf->values) {
        for (i = 0; pcf->keywords[i]; i++) {
            if (values[i] != pcf->values[i]) {
                ngx_free((char *) values[i]);
            }
        }

        ngx_free(values);
    }

    if (pc->pg == NULL) {
        ngx_log_error(NGX_LOG_ERR, pc->log, 0,
                      "modelroute_store: PostgreSQL: no memory for a "
                      "connection");
        mr_pg_conn_close(pc, 1);
        return;
    }

    pc->state = MR_PG_CONNECTING;

    if (PQstatus(pc->pg) == CONNECTION_BAD) {

        /* refused at once (no server on a unix socket): unreachable */

        mr_pg_conn_lost(pc, PQerrorMessage(pc->pg));
        return;
    }

    if (pc->timeout_ev.timer_set) {
        ngx_del_timer(&pc->timeout_ev);
    }

    ngx_add_timer(&pc->timeout_ev, mr_pg_main_conf()->pg_connect_timeout);

    mr_pg_conn_poll(pc);
}


/*
 * A list of libpq's ("a,b,c", of n elements) from its element k on
 * ("b,c,a"), allocated; the value itself if it is not such a list (one
 * port for every host, say) or there is no memory
 */

static const char *
mr_pg_conn_rotate(mr_pg_conn_t *pc, const char *v, ngx_uint_t n,
    ngx_uint_t k)
{
    u_char      *out, *p;
    size_t       len;
    ngx_uint_t   i, commas;
    const char  *s;

    commas = 0;

    for (s = v; *s; s++) {
        commas += (*s == ',');
    }

    if (commas + 1 != n || k == 0) {
        return v;
    }

    for (s = v, i = 0; i < k; s++) {
        i += (*s == ',');
    }

    /* s: the element k; the ones before it end at s - 1, a comma */

    len = ngx_strlen(v);

    out = ngx_alloc(len + 2, pc->log);
    if (out == NULL) {
        return v;
    }

    p = ngx_cpymem(out, s, len - (s - v));
    *p++ = ',';
    p = ngx_cpymem(p, v, (s - v) - 1);
    *p = '\0';

    return (const char *) out;
}


/*
 * A step of the connection, when its socket is ready (or at first).  A
 * step may close libpq's socket and open another (the next address or
 * host of the list, a retry without TLS), most often with the same
 * descriptor: epoll forgets the socket before the step, while it is still
 * open, and the one libpq uses after it is wrapped anew.
 */

static void
mr_pg_conn_poll(mr_pg_conn_t *pc)
{
    PostgresPollingStatusType  st;

    mr_pg_conn_unwrap(pc, 0);

    st = PQconnectPoll(pc->pg);

    switch (st) {

    case PGRES_POLLING_FAILED:
        mr_pg_conn_lost(pc, PQerrorMessage(pc->pg));
        return;

    case PGRES_POLLING_OK:
        break;

    default:
        if (mr_pg_conn_wrap(pc) != NGX_OK) {
            mr_pg_conn_lost(pc, "cannot take its socket");
            return;
        }

        mr_pg_conn_wait(pc, st == PGRES_POLLING_READING,
                        st == PGRES_POLLING_WRITING);
        return;
    }

    if (mr_pg_conn_wrap(pc) != NGX_OK) {
        mr_pg_conn_lost(pc, "cannot take its socket");
        return;
    }

    if (PQsetnonblocking(pc->pg, 1) != 0
        || PQenterPipelineMode(pc->pg) != 1)
    {
        mr_pg_conn_lost(pc, PQerrorMessage(pc->pg));
        return;
    }

    pc->state = MR_PG_SETUP;

    mr_pg_conn_setup(pc);
}


/* the socket libpq uses after a step, in a new ngx_connection_t */

static ngx_int_t
mr_pg_conn_wrap(mr_pg_conn_t *pc)
{
    int                fd;
    ngx_connection_t  *c;

    /* none before: mr_pg_conn_poll() took it off */

    fd = PQsocket(pc->pg);

    if (fd < 0) {
        return NGX_ERROR;
    }

    c = ngx_get_connection(fd, pc->log);
    if (c == NULL) {
        return NGX_ERROR;
    }

    c->data = pc;
    c->log = pc->log;
    c->read->log = pc->log;
    c->write->log = pc->log;
    c->read->handler = mr_pg_conn_event;
    c->write->handler = mr_pg_conn_event;

    pc->c = c;

    return NGX_OK;
}


/*
 * The wrapper goes; the descriptor is libpq's.  closed: libpq closed it
 * already (or is about to): epoll forgets it by itself.
 */

static void
mr_pg_conn_unwrap(mr_pg_conn_t *pc, ngx_uint_t closed)
{
    ngx_connection_t  *c;

    c = pc->c;

    if (c == NULL) {
        return;
    }

    if (c->read->active) {
        ngx_del_event(c->read, NGX_READ_EVENT, closed ? NGX_CLOSE_EVENT : 0);
    }

    if (c->write->active) {
        ngx_del_event(c->write, NGX_WRITE_EVENT,
                      closed ? NGX_CLOSE_EVENT : 0);
    }

    if (c->read->posted) {
        ngx_delete_posted_event(c->read);
    }

    if (c->write->posted) {
        ngx_delete_posted_event(c->write);
    }

    c->fd = (ngx_socket_t) -1;
    ngx_free_connection(c);

    pc->c = NULL;
}


/* level-triggered interest in reading and writing */

static void
mr_pg_conn_wait(mr_pg_conn_t *pc, ngx_uint_t read, ngx_uint_t write)
{
    ngx_event_t  *rev, *wev;

    rev = pc->c->read;
    wev = pc->c->write;

    if (read && !rev->active) {
        if (ngx_add_event(rev, NGX_READ_EVENT, 0) != NGX_OK) {
            mr_pg_conn_lost(pc, "cannot wait for its socket");
            return;
        }

    } else if (!read && rev->active) {
        ngx_del_event(rev, NGX_READ_EVENT, 0);
    }

    if (write && !wev->active) {
        if (ngx_add_event(wev, NGX_WRITE_EVENT, 0) != NGX_OK) {
            mr_pg_conn_lost(pc, "cannot wait for its socket");
            return;
        }

    } else if (!write && wev->active) {
        ngx_del_event(wev, NGX_WRITE_EVENT, 0);
    }
}


static void
mr_pg_conn_event(ngx_event_t *ev)
{
    ngx_connection_t  *c;
    mr_pg_conn_t      *pc;

    c = ev->data;
    pc = c->data;

    if (pc->state == MR_PG_CONNECTING) {
        mr_pg_conn_poll(pc);
        return;
    }

    mr_pg_conn_io(pc);
}


/*
 * The named statements prepared on the connection, one query each (n
 * counts them); not BEGIN or COMMIT, nor those planned each time.
 * NGX_ERROR: libpq refused one (the connection is broken).
 */

ngx_int_t
mr_pg_conn_prepare(mr_pg_conn_t *pc, ngx_uint_t *n)
{
    ngx_uint_t  i;

    for (i = 0; i < mr_pg_nstmts; i++) {
        if (mr_pg_stmts[i].name == NULL || mr_pg_stmts[i].custom) {
            continue;
        }

        if (!PQsendPrepare(pc->pg, mr_pg_stmts[i].name, mr_pg_stmts[i].sql,
                           0, NULL))
        {
            return NGX_ERROR;
        }

        (*n)++;
    }

    return NGX_OK;
}


/*
 * The session: statements prepared, the schema's version read, and the
 * durability of its commits (relaxed: not waiting for the WAL flush)
 */

static void
mr_pg_conn_setup(mr_pg_conn_t *pc)
{
    mr_pg_req_t     *req;
    const char      *sync[2], *routes[1];
    u_char           tbuf[NGX_INT64_LEN + 1];
    mr_main_conf_t  *mcf;

    mcf = mr_pg_main_conf();
    req = &pc->setup;

    ngx_memzero(req, sizeof(mr_pg_req_t));

    if (mr_pg_conn_prepare(pc, &req->n) != NGX_OK) {
        mr_pg_conn_lost(pc, PQerrorMessage(pc->pg));
        return;
    }

    /* every configured route has its row, which batches lock */

    routes[0] = mr_pg_routes_literal();

    if (routes[0] == NULL
        || !PQsendQueryParams(pc->pg, "INSERT INTO mr_routes (name) "
                              "SELECT unnest($1::text[]) "
                              "ON CONFLICT DO NOTHING",
                              1, NULL, routes, NULL, NULL, 0))
    {
        mr_pg_conn_lost(pc, PQerrorMessage(pc->pg));
        return;
    }

    req->n++;

    sync[0] = (mcf->durability == MR_DURABILITY_RELAXED) ? "off" : "on";
    *ngx_sprintf(tbuf, "%M", mcf->pg_timeout) = '\0';
    sync[1] = (char *) tbuf;

    /*
     * a transaction whose connection is lost before its COMMIT arrives
     * does not hold its locks longer than the store's timeout.
     *
     * random_page_cost at most 1.1 (the value usual for SSDs and data in
     * memory): every statement of the store reads rows by their keys, and
     * with the default of 4 PostgreSQL planned some of them, on tables of
     * a thousand rows, as a scan of the whole table (an account lock on
     * every batch; t/74).  A lower value the operator set is kept.
     */

    if (!PQsendQueryParams(pc->pg, "SELECT set_config("
                              "'synchronous_commit', $1, false), (SELECT "
                              "coalesce(max(version), 0) FROM mr_schema), "
                              "current_setting('server_encoding'), "
                              "set_config("
                              "'idle_in_transaction_session_timeout', $2, "
                              "false), set_config('random_page_cost', "
                              "least(current_setting('random_page_cost')"
                              "::float8, 1.1)::text, false), "
                              MR_PG_CLOCK_SQL,
                              2, NULL, sync, NULL, NULL, 0))
    {
        mr_pg_conn_lost(pc, PQerrorMessage(pc->pg));
        return;
    }

    req->n++;
    pc->clock_sent = mr_wall_ms();

    req->size = req->n;
    req->res = ngx_alloc(req->n * sizeof(PGresult *), pc->log);
    if (req->res == NULL) {
        mr_pg_conn_lost(pc, "no memory");
        return;
    }

    ngx_memzero(req->res, req->n * sizeof(PGresult *));

    if (mr_pg_req_end(pc, req, mr_pg_conn_setup_done, pc) != NGX_OK) {
        ngx_free(req->res);
        req->res = NULL;
        mr_pg_conn_lost(pc, PQerrorMessage(pc->pg));
    }
}


static void
mr_pg_conn_setup_done(mr_pg_req_t *req)
{
    int64_t        version;
    PGresult      *res;
    mr_pg_conn_t  *pc;
    const char    *enc;

    pc = req->data;

    if (req->status != MR_PG_REQ_OK) {

        /* a missing mr_schema, say: not migrated */

        if (!pc->logged_down) {
            ngx_log_error(NGX_LOG_ERR, pc->log, 0,
                          "modelroute_store: PostgreSQL %V: %s (apply the "
                          "schema: tools/pg-migrate)",
                          &mr_pg_conf()->where, req->error);
            pc->logged_down = 1;
        }

        pc->unreachable = 1;
        mr_pg_req_free(req);
        mr_pg_conn_close(pc, 1);
        return;
    }

    res = req->res[req->n - 1];
    version = mr_pg_get_int(res, 0, 1);
    enc = PQgetvalue(res, 0, 2);

    if (version != MR_PG_SCHEMA_VERSION || ngx_strcmp(enc, "UTF8") != 0) {
        if (!pc->refused) {
            ngx_log_error(NGX_LOG_ERR, pc->log, 0,
                          "modelroute_store: PostgreSQL %V: schema version "
                          "%L, encoding %s; this module needs version %d "
                          "(tools/pg-migrate) and UTF8",
                          &mr_pg_conf()->where, version, enc,
                          MR_PG_SCHEMA_VERSION);
            pc->refused = 1;
            pc->logged_down = 1;
        }

        pc->unreachable = 1;
        mr_pg_req_free(req);
        mr_pg_conn_close(pc, 1);
        return;
    }

    mr_pg_clock_sample(pc, res, 5);

    mr_pg_req_free(req);

    if (pc->logged_down || pc->failures) {
        ngx_log_error(NGX_LOG_NOTICE, pc->log, 0,
                      "modelroute_store: PostgreSQL %V: connected",
                      &mr_pg_conf()->where);
    }

    pc->state = MR_PG_READY;
    pc->failures = 0;
    pc->unreachable = 0;
    pc->refused = 0;
    pc->backoff = MR_PG_BACKOFF_MIN;
    pc->logged_down = 0;

    /* its plans follow the tables' sizes from now on: looked at first */

    mr_pg_plans_start(pc);
    mr_pg_plans_idle(pc);

    pc->ready(pc);
}


/* ---- requests */

mr_pg_req_t *
mr_pg_req_create(ngx_pool_t *pool, ngx_uint_t size)
{
    mr_pg_req_t  *req;

    req = ngx_pcalloc(pool, sizeof(mr_pg_req_t));
    if (req == NULL) {
        return NULL;
    }

    req->size = size;
    req->res = ngx_pcalloc(pool, size * sizeof(PGresult *));
    if (req->res == NULL) {
        return NULL;
    }

    return req;
}


/*
 * Queues a prepared statement (its text parameters, NULL for SQL NULL;
 * lengths: NULL, or -1 for a C string) on the request's connection.
 * NGX_ERROR: libpq refused it (the connection is broken); the caller ends
 * the request (mr_pg_req_end()), which then fails.
 */

ngx_int_t
mr_pg_send(mr_pg_req_t *req, ngx_uint_t stmt, int n, const char **values,
    const int *lengths)
{
    if (req->n == req->size || req->conn == NULL
        || req->conn->state < MR_PG_SETUP)
    {
        req->status = MR_PG_REQ_LOST;
        return NGX_ERROR;
    }

    if (!(mr_pg_stmts[stmt].name == NULL || mr_pg_stmts[stmt].custom
          ? PQsendQueryParams(req->conn->pg, mr_pg_stmts[stmt].sql, n,
                              NULL, values, lengths, NULL, 0)
          : PQsendQueryPrepared(req->conn->pg, mr_pg_stmts[stmt].name, n,
                                values, lengths, NULL, 0)))
    {
        req->status = MR_PG_REQ_LOST;
        ngx_cpystrn((u_char *) req->error,
                    (u_char *) PQerrorMessage(req->conn->pg),
                    sizeof(req->error));
        return NGX_ERROR;
    }

    req->n++;

    return NGX_OK;
}


/*
 * Ends a request with a sync and sends it.  NGX_OK: handler runs when its
 * results are in, or when it failed (never before this returns).
 * NGX_ERROR: it was not sent (the connection is down or broke: it is
 * closed soon); the caller deals with it now, its handler never runs.
 * The request's statements were queued on pc (req->conn).
 */

ngx_int_t
mr_pg_req_end(mr_pg_conn_t *pc, mr_pg_req_t *req,
    mr_pg_req_handler_pt handler, void *data)
{
    req->conn = pc;
    req->handler = handler;
    req->data = data;
    req->got = 0;
    req->expect_null = 0;

    if (req->status == MR_PG_REQ_LOST || pc->state < MR_PG_SETUP
        || !PQpipelineSync(pc->pg))
    {
        req->status = MR_PG_REQ_LOST;

        if (pc->state >= MR_PG_SETUP) {
            /* libpq's pipeline and ours differ now: a new connection */
            mr_pg_conn_post_lost(pc);
        }

        return NGX_ERROR;
    }

    req->status = MR_PG_REQ_OK;

    ngx_queue_insert_tail(&pc->pending, &req->queue);
    pc->npending++;

    mr_pg_conn_timer(pc, 0);

    if (mr_pg_conn_flush(pc) != NGX_OK) {
        mr_pg_conn_post_lost(pc);
    }

    return NGX_OK;
}


void
mr_pg_req_free(mr_pg_req_t *req)
{
    ngx_uint_t  i;

    for (i = 0; i < req->size; i++) {
        if (req->res[i]) {
            PQclear(req->res[i]);
            req->res[i] = NULL;
        }
    }

    if (req == &req->conn->setup) {
        ngx_free(req->res);
        req->res = NULL;
    }
}


/* what libpq holds goes out; interest in writing while some is left */

static ngx_int_t
mr_pg_conn_flush(mr_pg_conn_t *pc)
{
    int  rc;

    rc = PQflush(pc->pg);

    if (rc < 0) {
        return NGX_ERROR;
    }

    mr_pg_conn_wait(pc, 1, rc == 1);

    return NGX_OK;
}


static void
mr_pg_conn_io(mr_pg_conn_t *pc)
{
    if (pc->pg == NULL) {
        return;
    }

    if (PQconsumeInput(pc->pg) != 1) {
        mr_pg_conn_lost(pc, PQerrorMessage(pc->pg));
        return;
    }

    if (mr_pg_conn_results(pc) != NGX_OK) {
        return;                      /* closed */
    }

    if (pc->pg && mr_pg_conn_flush(pc) != NGX_OK) {
        mr_pg_conn_lost(pc, PQerrorMessage(pc->pg));
    }
}


/*
 * The results that are in, in the order of the requests: each query's
 * result then a NULL, and the sync's PGRES_PIPELINE_SYNC; after a failed
 * query, PGRES_PIPELINE_ABORTED for each of the others.  NGX_ERROR: the
 * connection was closed meanwhile (by a handler, say).
 */

static ngx_int_t
mr_pg_conn_results(mr_pg_conn_t *pc)
{
    char             *s;
    PGresult         *res;
    mr_pg_req_t      *req;
    ngx_queue_t      *q;
    ExecStatusType    st;

    while (pc->pg && !ngx_queue_empty(&pc->pending)) {

        if (PQisBusy(pc->pg)) {
            break;
        }

        q = ngx_queue_head(&pc->pending);
        req = ngx_queue_data(q, mr_pg_req_t, queue);

        res = PQgetResult(pc->pg);

        if (req->expect_null) {
            if (res) {
                PQclear(res);        /* not expected: a second result */
                continue;
            }

            req->expect_null = 0;
            req->got++;
            continue;
        }

        if (res == NULL) {
            break;                   /* nothing more yet */
        }

        st = PQresultStatus(res);

        if (st == PGRES_PIPELINE_SYNC) {
            PQclear(res);

            ngx_queue_remove(q);
            pc->npending--;

            mr_pg_conn_timer(pc, 1);
            mr_pg_req_done(pc, req);

            if (pc->npending == 0) {
                mr_pg_plans_idle(pc);
            }

            continue;
        }

        if (st == PGRES_FATAL_ERROR || st == PGRES_NONFATAL_ERROR
            || st == PGRES_BAD_RESPONSE)
        {
            if (req->status == MR_PG_REQ_OK) {
                req->status = MR_PG_REQ_FAILED;

                s = PQresultErrorMessage(res);
                ngx_cpystrn((u_char *) req->error, (u_char *) s,
                            sizeof(req->error));

                s = PQresultErrorField(res, PG_DIAG_SQLSTATE);
                if (s) {
                    ngx_cpystrn((u_char *) req->sqlstate, (u_char *) s,
                                sizeof(req->sqlstate));
                }
            }

        } else if (st == PGRES_PIPELINE_ABORTED && req->status == MR_PG_REQ_OK)
        {
            req->status = MR_PG_REQ_FAILED;
        }

        if (req->got < req->size && req->res[req->got] == NULL) {
            req->res[req->got] = res;

        } else {
            PQclear(res);
        }

        req->expect_null = 1;
    }

    return pc->pg ? NGX_OK : NGX_ERROR;
}


static void
mr_pg_req_done(mr_pg_conn_t *pc, mr_pg_req_t *req)
{
    size_t  len;

    /* a trailing newline of libpq's messages is not logged */

    len = ngx_strlen(req->error);

    if (len && req->error[len - 1] == '\n') {
        req->error[len - 1] = '\0';
    }

    req->handler(req);
}


/* ---- faults */

/*
 * The connection is lost (or could not be made): the requests in flight
 * fail (MR_PG_REQ_LOST), and it is made again after the backoff
 */

static void
mr_pg_conn_lost(mr_pg_conn_t *pc, const char *why)
{
    u_char  *p;
    u_char   msg[256];

    p = ngx_cpystrn(msg, (u_char *) (why ? why : ""), sizeof(msg));

    while (p > msg && (p[-1] == '\n' || p[-1] == ' ')) {
        *--p = '\0';
    }

    if (!pc->logged_down) {
        ngx_log_error(NGX_LOG_WARN, pc->log, 0,
                      "modelroute_store: PostgreSQL %V: %s%s",
                      &mr_pg_conf()->where,
                      pc->state == MR_PG_CONNECTING ? "cannot connect: "
                                                    : "connection lost: ",
                      msg);
        pc->logged_down = 1;
    }

    pc->failures++;

    if (pc->state == MR_PG_CONNECTING || pc->state == MR_PG_SETUP) {
        pc->unreachable = 1;
    }

    mr_pg_conn_close(pc, 1);
}


/*
 * Closes the connection: every request in flight fails; again: made
 * again after the backoff.  Its handler learns that it is down.
 */

void
mr_pg_conn_close(mr_pg_conn_t *pc, ngx_uint_t again)
{
    ngx_uint_t    was;
    ngx_queue_t  *q;
    mr_pg_req_t  *req;

    was = pc->state;

    mr_pg_plans_stop(pc);

    if (pc->timeout_ev.timer_set) {
        ngx_del_timer(&pc->timeout_ev);
    }

    if (pc->lost_ev.posted) {
        ngx_delete_posted_event(&pc->lost_ev);
    }

    mr_pg_conn_unwrap(pc, 1);

    if (pc->pg) {
        PQfinish(pc->pg);
        pc->pg = NULL;
    }

    pc->state = MR_PG_DOWN;

    if (again && !ngx_exiting && !ngx_quit && !ngx_terminate) {
        ngx_add_timer(&pc->retry_ev,
                      pc->backoff / 2 + ngx_random() % (pc->backoff / 2 + 1));
        pc->backoff = ngx_min(pc->backoff * 2, MR_PG_BACKOFF_MAX);
    }

    if (pc->setup.res) {
        mr_pg_req_free(&pc->setup);
    }

    /* the requests in flight fail, in order; a handler may send again */

    while (!ngx_queue_empty(&pc->pending)) {
        q = ngx_queue_head(&pc->pending);
        ngx_queue_remove(q);
        pc->npending--;

        req = ngx_queue_data(q, mr_pg_req_t, queue);
        req->status = MR_PG_REQ_LOST;

        if (req->error[0] == '\0') {
            ngx_cpystrn((u_char *) req->error,
                        (u_char *) "the connection was lost",
                        sizeof(req->error));
        }

        if (req != &pc->setup) {
            req->handler(req);
        }
    }

    if (was != MR_PG_DOWN) {
        pc->ready(pc);
    }
}


void
mr_pg_conn_destroy(mr_pg_conn_t *pc)
{
    if (pc->retry_ev.timer_set) {
        ngx_del_timer(&pc->retry_ev);
    }

    mr_pg_conn_close(pc, 0);
}


static void
mr_pg_conn_retry(ngx_event_t *ev)
{
    mr_pg_conn_connect(mr_pg_conn_of(ev, retry_ev));
}


/* a broken connection, found while sending: closed on its own turn */

static void
mr_pg_conn_post_lost(mr_pg_conn_t *pc)
{
    if (!pc->lost_ev.posted) {
        ngx_post_event(&pc->lost_ev, &ngx_posted_events);
    }
}


static void
mr_pg_conn_lost_handler(ngx_event_t *ev)
{
    mr_pg_conn_t  *pc;

    pc = mr_pg_conn_of(ev, lost_ev);

    if (pc->state != MR_PG_DOWN) {
        mr_pg_conn_lost(pc, pc->pg ? PQerrorMessage(pc->pg) : "");
    }
}


/* a connection that takes longer than its timeout is given up */

static void
mr_pg_conn_timeout(ngx_event_t *ev)
{
    mr_pg_conn_t  *pc;

    pc = mr_pg_conn_of(ev, timeout_ev);

    if (pc->state == MR_PG_CONNECTING) {
        pc->first++;                 /* the next host first, next time */
    }

    mr_pg_conn_lost(pc, pc->state == MR_PG_CONNECTING
                        ? "timed out (modelroute_store_connect_timeout)"
                        : "no answer within modelroute_store_timeout");
}


/*
 * The timeout of the requests in flight, or none: from the last answer
 * (progress), or from the first request sent to an idle connection; a
 * busy connection that answers is alive
 */

static void
mr_pg_conn_timer(mr_pg_conn_t *pc, ngx_uint_t progress)
{
    if (pc->state == MR_PG_CONNECTING) {
        return;
    }

    if (ngx_queue_empty(&pc->pending)) {
        if (pc->timeout_ev.timer_set) {
            ngx_del_timer(&pc->timeout_ev);
        }

        return;
    }

    /* from the last answer, not one up to 300 ms older (mr_util.h) */

    if (progress || !pc->timeout_ev.timer_set) {
        mr_timer_exact(&pc->timeout_ev, mr_pg_main_conf()->pg_timeout);
    }
}


/* ---- values */

/* a text array literal: {"a","b",NULL} */

void
mr_pg_buf_init(mr_pg_buf_t *b, ngx_pool_t *pool)
{
    ngx_memzero(b, sizeof(mr_pg_buf_t));
    b->pool = pool;
}


static ngx_int_t
mr_pg_buf_room(mr_pg_buf_t *b, size_t len)
{
    u_char  *p;
    size_t   size;

    if (b->failed) {
        return NGX_ERROR;
    }

    if (b->pos && (size_t) (b->end - b->last) >= len) {
        return NGX_OK;
    }

    size = b->pos ? 2 * (size_t) (b->end - b->pos) : 256;

    while (size < (size_t) (b->last - b->pos) + len) {
        size *= 2;
    }

    p = ngx_pnalloc(b->pool, size);
    if (p == NULL) {
        b->failed = 1;
        return NGX_ERROR;
    }

    if (b->pos) {
        b->last = ngx_cpymem(p, b->pos, b->last - b->pos);

    } else {
        b->last = p;
        *b->last++ = '{';
    }

    b->pos = p;
    b->end = p + size;

    return NGX_OK;
}


void
mr_pg_buf_str(mr_pg_buf_t *b, u_char *p, size_t len)
{
    size_t      n;
    ngx_uint_t  i;

    n = 0;

    for (i = 0; i < len; i++) {
        n += (p[i] == '"' || p[i] == '\\');
    }

    if (mr_pg_buf_room(b, len + n + 4) != NGX_OK) {
        return;
    }

    if (b->n++) {
        *b->last++ = ',';
    }

    *b->last++ = '"';

    for (i = 0; i < len; i++) {
        if (p[i] == '"' || p[i] == '\\') {
            *b->last++ = '\\';
        }

        *b->last++ = p[i];
    }

    *b->last++ = '"';
}


void
mr_pg_buf_int(mr_pg_buf_t *b, int64_t v)
{
    if (mr_pg_buf_room(b, NGX_INT64_LEN + 2) != NGX_OK) {
        return;
    }

    if (b->n++) {
        *b->last++ = ',';
    }

    b->last = ngx_sprintf(b->last, "%L", v);
}


void
mr_pg_buf_null(mr_pg_buf_t *b)
{
    if (mr_pg_buf_room(b, 6) != NGX_OK) {
        return;
    }

    if (b->n++) {
        *b->last++ = ',';
    }

    b->last = ngx_cpymem(b->last, "NULL", 4);
}


/* the literal, a C string; NULL: no memory */

char *
mr_pg_buf_end(mr_pg_buf_t *b)
{
    if (mr_pg_buf_room(b, 2) != NGX_OK) {
        return NULL;
    }

    *b->last++ = '}';
    *b->last = '\0';

    return (char *) b->pos;
}


char *
mr_pg_int(ngx_pool_t *pool, int64_t v)
{
    u_char  *p;

    p = ngx_pnalloc(pool, NGX_INT64_LEN + 1);
    if (p == NULL) {
        return NULL;
    }

    *ngx_sprintf(p, "%L", v) = '\0';

    return (char *) p;
}


char *
mr_pg_str(ngx_pool_t *pool, u_char *p, size_t len)
{
    u_char  *s;

    s = ngx_pnalloc(pool, len + 1);
    if (s == NULL) {
        return NULL;
    }

    *mr_cpymem(s, p, len) = '\0';

    return (char *) s;
}


/* bytea in hex: \x... */

char *
mr_pg_hex(ngx_pool_t *pool, u_char *p, size_t len)
{
    u_char  *s;

    s = ngx_pnalloc(pool, 2 * len + 3);
    if (s == NULL) {
        return NULL;
    }

    s[0] = '\\';
    s[1] = 'x';
    *mr_hex(s + 2, p, len) = '\0';

    return (char *) s;
}


int64_t
mr_pg_get_int(PGresult *res, int row, int col)
{
    char  *s;

    if (PQgetisnull(res, row, col)) {
        return 0;
    }

    s = PQgetvalue(res, row, col);

    return (int64_t) strtoll(s, NULL, 10);
}


/* a text value, copied to pool (NULL: empty) */

ngx_int_t
mr_pg_get_str(PGresult *res, int row, int col, ngx_pool_t *pool,
    ngx_str_t *s)
{
    s->len = (size_t) PQgetlength(res, row, col);

    if (s->len == 0) {
        s->data = NULL;
        return NGX_OK;
    }

    s->data = ngx_pnalloc(pool, s->len);
    if (s->data == NULL) {
        return NGX_ERROR;
    }

    ngx_memcpy(s->data, PQgetvalue(res, row, col), s->len);

    return NGX_OK;
}


/* a text value of a known length (an id), into dst; zeros if NULL */

ngx_int_t
mr_pg_get_fixed(PGresult *res, int row, int col, u_char *dst, size_t len)
{
    if (PQgetisnull(res, row, col)) {
        ngx_memzero(dst, len);
        return NGX_OK;
    }

    if ((size_t) PQgetlength(res, row, col) != len) {
        return NGX_ERROR;
    }

    ngx_memcpy(dst, PQgetvalue(res, row, col), len);

    return NGX_OK;
}


/* a bytea of a known length, from its text form \x... */

ngx_int_t
mr_pg_get_bytea(PGresult *res, int row, int col, u_char *dst, size_t len)
{
    u_char      *p;
    ngx_int_t    n;
    ngx_uint_t   i;

    p = (u_char *) PQgetvalue(res, row, col);

    if ((size_t) PQgetlength(res, row, col) != 2 + 2 * len
        || p[0] != '\\' || p[1] != 'x')
    {
        return NGX_ERROR;
    }

    for (i = 0; i < len; i++) {
        n = ngx_hextoi(p + 2 + 2 * i, 2);
        if (n == NGX_ERROR) {
            return NGX_ERROR;
        }

        dst[i] = (u_char) n;
    }

    return NGX_OK;
}


/*
 * The store's clock follows the server's (mr_now_ms(), mr_clock_offset):
 * a sample is the server's clock read last in a request sent at
 * pc->clock_sent and answered now.  The server answers once it has read
 * it, so the offset is taken against the time of the answer (the
 * statements before it in the request make the middle of the round trip
 * no better): a sample is late by the answer's way back and by the turns
 * of the event loop before its handler ran, never early, so the offset it
 * gives is never above the true one, and at most the round trip below.
 * The first sample of the worker is taken as it is (its times need the
 * server's clock at once); a later one moves the offset up when it is
 * MR_PG_CLOCK_SLACK ms above it (closer to the truth: the store's clock
 * steps forward), down only when it is more than its round trip and the
 * slack below it (a clock was stepped): a busy event loop does not move
 * the store's times back and forth.
 */

void
mr_pg_clock_sample(mr_pg_conn_t *pc, PGresult *res, int col)
{
    int64_t  server, now, rtt, offset, moved;

    if (PQntuples(res) != 1 || PQnfields(res) <= col
        || PQgetisnull(res, 0, col))
    {
        return;
    }

    server = mr_pg_get_int(res, 0, col);
    now = mr_wall_ms();
    rtt = ngx_max(now - pc->clock_sent, 0);

    if (server <= 0 || (mr_pg_clock_sampled && rtt > MR_PG_CLOCK_RTT)) {
        return;
    }

    offset = server - now;
    moved = offset - mr_clock_offset;

    if (mr_pg_clock_sampled && moved < MR_PG_CLOCK_SLACK
        && moved > -(rtt + MR_PG_CLOCK_SLACK))
    {
        return;
    }

    if (mr_pg_clock_sampled ? ngx_abs(moved) >= MR_PG_CLOCK_WARN
                            : ngx_abs(offset) >= MR_PG_CLOCK_WARN)
    {
        ngx_log_error(NGX_LOG_WARN, pc->log, 0,
                      "modelroute_store: this machine's clock is %L ms %s "
                      "the clock of PostgreSQL %V; the store keeps to the "
                      "server's", ngx_abs(offset),
                      offset < 0 ? "ahead of" : "behind",
                      &mr_pg_conf()->where);
    }

    mr_clock_offset = offset;
    mr_pg_clock_sampled = 1;
}


ngx_uint_t
mr_pg_clock_known(void)
{
    return mr_pg_clock_sampled;
}
