
/*
 * ModelRoute: the PostgreSQL store's plans follow its tables' sizes.
 *
 * PostgreSQL caches a generic plan of a prepared statement (after its
 * first five runs, or at once when it has no parameters) and keeps it
 * until something invalidates it, such as an ANALYZE.  Made while a table
 * was small (after a deployment, or an ANALYZE of a quiet table), the
 * plans of reads by keys, "id = ANY($1)" of mr_executions say, are scans
 * of the whole table: cheaper than an index on a page or two, and kept as
 * the table grows by thousands of rows a second until autovacuum analyzes
 * it (a minute or more; never, where it is off).  Every claim, outcome and
 * lock then read every execution (t/78: 300 scans of 50,000 rows in 30
 * dispatches; in bench/fleet.sh, 40% of PostgreSQL's CPU).
 *
 * So every connection looks at the sizes of the tables its statements
 * read once a second, and when one of them has doubled or halved since
 * the statements were prepared (64 kB and less count as 64 kB), it
 * prepares them anew (DEALLOCATE ALL, then each again): they are planned
 * as on a new connection, for the tables as they are now (PostgreSQL's
 * estimate scales the last statistics to a table's current size, so no
 * ANALYZE is needed).  Not DISCARD PLANS: it keeps what each statement's
 * custom plans cost so far, made on the small tables, beside which a
 * generic plan made on the large ones looked dear, so that statements
 * were planned on every run from then on (the account lock of every
 * batch among them: bench/pg.sh completed 3-35% fewer executions).  A
 * table that grows from nothing to a gigabyte is prepared again about
 * fourteen times.
 *
 * The writer looks only between its batches (nothing in flight, no
 * transaction open); a reader's requests are each a transaction of their
 * own, so it looks whenever it is due.  A look waits at most 100 ms for
 * a table's lock (an ALTER TABLE queued, say): the requests behind it on
 * the connection never wait longer for it; a look that could not be made
 * is made again later, less often while they fail (up to a minute
 * apart).
 */


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_event.h>

#include "ngx_http_modelroute_module.h"
#include "mr_store_pg.h"


#define MR_PG_PLANS_INTERVAL  1000            /* ms between two looks */
#define MR_PG_PLANS_BACKOFF   6               /* at most 64 s apart */
#define MR_PG_PLANS_MIN       65536           /* bytes: smaller is small */


static const char  *mr_pg_plans_tables[MR_PG_PLANS_TABLES] = {
    "mr_accounts", "mr_keys", "mr_executions", "mr_idem", "mr_endpoints",
    "mr_whsecrets", "mr_events", "mr_deliveries", "mr_credit_refs",
    "mr_batches", "mr_routes"
};

static const char  *mr_pg_plans_sizes =
    "SELECT pg_relation_size('mr_accounts'), pg_relation_size('mr_keys'), "
    "pg_relation_size('mr_executions'), pg_relation_size('mr_idem'), "
    "pg_relation_size('mr_endpoints'), pg_relation_size('mr_whsecrets'), "
    "pg_relation_size('mr_events'), pg_relation_size('mr_deliveries'), "
    "pg_relation_size('mr_credit_refs'), pg_relation_size('mr_batches'), "
    "pg_relation_size('mr_routes'), " MR_PG_CLOCK_SQL;


static void mr_pg_plans_timer(ngx_event_t *ev);
static void mr_pg_plans_send(mr_pg_conn_t *pc);
static void mr_pg_plans_done(mr_pg_req_t *req);
static ngx_int_t mr_pg_plans_changed(mr_pg_conn_t *pc, PGresult *res);


ngx_int_t
mr_pg_plans_init(mr_pg_conn_t *pc, ngx_pool_t *pool)
{
    pc->plans_ev.handler = mr_pg_plans_timer;
    pc->plans_ev.data = &mr_timer_conn;
    pc->plans_ev.log = pc->log;
    pc->plans_ev.cancelable = 1;

    /* results: the lock wait, the sizes, then DEALLOCATE ALL and each
     * statement prepared, when they are */

    pc->plans.size = mr_pg_nstmts + 2;
    pc->plans.res = ngx_pcalloc(pool, pc->plans.size * sizeof(PGresult *));

    return (pc->plans.res == NULL) ? NGX_ERROR : NGX_OK;
}


/* a new session: its plans are made from now on, for the sizes then */

void
mr_pg_plans_start(mr_pg_conn_t *pc)
{
    pc->plans_known = 0;
    pc->plans_due = 1;
    pc->plans_renew = 0;
    pc->plans_sent = 0;
    pc->plans_preparing = 0;
    pc->plans_failures = 0;

    if (pc->plans_ev.timer_set) {
        ngx_del_timer(&pc->plans_ev);
    }
}


void
mr_pg_plans_stop(mr_pg_conn_t *pc)
{
    if (pc->plans_ev.timer_set) {
        ngx_del_timer(&pc->plans_ev);
    }

    pc->plans_due = 0;
    pc->plans_renew = 0;
}


/*
 * A look that is due goes now if the connection may take it: the writer
 * with nothing in flight (after a request, unless its handler sent the
 * next one), a reader whenever it is ready
 */

void
mr_pg_plans_idle(mr_pg_conn_t *pc)
{
    if (!pc->plans_due || pc->plans_sent || pc->state != MR_PG_READY
        || pc->lost_ev.posted || ngx_exiting || ngx_quit || ngx_terminate)
    {
        return;
    }

    if (pc->index == 0
        && (pc->npending || PQtransactionStatus(pc->pg) != PQTRANS_IDLE))
    {
        return;
    }

    mr_pg_plans_send(pc);
}


static void
mr_pg_plans_timer(ngx_event_t *ev)
{
    mr_pg_conn_t  *pc;

    pc = mr_pg_conn_of(ev, plans_ev);

    if (pc->state != MR_PG_READY) {
        return;
    }

    pc->plans_due = 1;

    mr_pg_plans_idle(pc);
}


/*
 * A look: a lock wait of 100 ms at most, for this request only (its
 * implicit transaction), then the sizes.  When the statements are due to
 * be prepared anew, that follows, in the same request: DEALLOCATE ALL,
 * then each as on a new connection (a PREPARE locks the tables its
 * statement names, so it waits 100 ms at most as well).  If the sizes
 * fail, nothing was dropped: the look is made again later.  If a PREPARE
 * fails, a statement may be missing, which would fail every request that
 * uses it: the connection is made again (it prepares them all).
 */

static void
mr_pg_plans_send(mr_pg_conn_t *pc)
{
    mr_pg_req_t  *req;

    req = &pc->plans;
    req->n = 0;
    req->status = MR_PG_REQ_OK;
    req->error[0] = '\0';
    req->sqlstate[0] = '\0';

    pc->plans_preparing = pc->plans_renew;
    pc->clock_sent = mr_wall_ms();

    if (!PQsendQueryParams(pc->pg, "SELECT set_config('lock_timeout', "
                           "'100ms', true)", 0, NULL, NULL, NULL, NULL, 0)
        || !PQsendQueryParams(pc->pg, mr_pg_plans_sizes, 0, NULL, NULL,
                              NULL, NULL, 0))
    {
        goto lost;
    }

    req->n += 2;

    if (pc->plans_preparing) {
        if (!PQsendQueryParams(pc->pg, "DEALLOCATE ALL", 0, NULL, NULL, NULL,
                               NULL, 0))
        {
            goto lost;
        }

        req->n++;

        if (mr_pg_conn_prepare(pc, &req->n) != NGX_OK) {
            goto lost;
        }
    }

    pc->plans_sent = 1;
    pc->plans_due = 0;

    if (mr_pg_req_end(pc, req, mr_pg_plans_done, pc) != NGX_OK) {
        pc->plans_sent = 0;          /* the connection is made again */
    }

    return;

lost:

    /* libpq refused (the connection is broken, or it had no memory): the
     * connection is made again */

    req->status = MR_PG_REQ_LOST;
    (void) mr_pg_req_end(pc, req, mr_pg_plans_done, pc);
}


static void
mr_pg_plans_done(mr_pg_req_t *req)
{
    ngx_uint_t     dropped, prepared;
    ngx_msec_t     delay;
    mr_pg_conn_t  *pc;

    pc = req->data;
    pc->plans_sent = 0;
    prepared = pc->plans_preparing;

    if (pc->plans_preparing) {
        pc->plans_preparing = 0;

        /* DEALLOCATE ALL ran (a pipeline stops at its first error) */

        dropped = (req->n > 2 && req->res[2]
                   && PQresultStatus(req->res[2]) == PGRES_COMMAND_OK);

        if (req->status == MR_PG_REQ_FAILED && dropped) {

            /* some statement may be missing: a new session */

            ngx_log_error(NGX_LOG_WARN, pc->log, 0,
                          "modelroute_store: PostgreSQL %V: the statements "
                          "could not be prepared again: %s; the connection "
                          "is made again", &mr_pg_conf()->where,
                          req->error);
            mr_pg_req_free(req);
            mr_pg_conn_close(pc, 1);
            return;
        }

        if (req->status == MR_PG_REQ_OK) {
            /* prepared anew: the sizes read are those planned for */
            pc->plans_renew = 0;
            pc->plans_known = 0;
        }
    }

    if (req->status != MR_PG_REQ_OK) {

        /* a lock not had in time is no failure; a lost connection is
         * told by the connection */

        if (req->status == MR_PG_REQ_FAILED && !pc->plans_logged
            && ngx_strcmp(req->sqlstate, "55P03") != 0)
        {
            ngx_log_error(NGX_LOG_WARN, pc->log, 0,
                          "modelroute_store: PostgreSQL %V: the tables' "
                          "sizes: %s", &mr_pg_conf()->where, req->error);
            pc->plans_logged = 1;
        }

        if (pc->plans_failures < MR_PG_PLANS_BACKOFF) {
            pc->plans_failures++;
        }

        mr_pg_req_free(req);
        goto next;
    }

    pc->plans_failures = 0;
    pc->plans_logged = 0;

    /* the server's clock, unless statements were prepared after it */

    if (!prepared && PQntuples(req->res[1]) == 1
        && PQnfields(req->res[1]) == MR_PG_PLANS_TABLES + 1)
    {
        mr_pg_clock_sample(pc, req->res[1], MR_PG_PLANS_TABLES);
    }

    if (mr_pg_plans_changed(pc, req->res[1]) == NGX_OK) {
        pc->plans_renew = 1;         /* at once, when the connection may */
        pc->plans_due = 1;
    }

    mr_pg_req_free(req);

next:

    if (pc->state == MR_PG_READY && !pc->plans_ev.timer_set) {
        delay = (ngx_msec_t) MR_PG_PLANS_INTERVAL << pc->plans_failures;
        ngx_add_timer(&pc->plans_ev, delay);
    }

    mr_pg_plans_idle(pc);
}


/*
 * NGX_OK: a table doubled or halved since the sizes known; NGX_DECLINED:
 * none did, or none were known (these become known)
 */

static ngx_int_t
mr_pg_plans_changed(mr_pg_conn_t *pc, PGresult *res)
{
    int64_t     now[MR_PG_PLANS_TABLES], was;
    ngx_uint_t  i, n, first;

    if (PQntuples(res) != 1 || PQnfields(res) != MR_PG_PLANS_TABLES + 1) {
        return NGX_DECLINED;
    }

    n = 0;
    first = 0;

    for (i = 0; i < MR_PG_PLANS_TABLES; i++) {
        now[i] = mr_pg_get_int(res, 0, i);
        now[i] = ngx_max(now[i], MR_PG_PLANS_MIN);
        was = pc->plans_size[i];

        if (now[i] >= 2 * was || was >= 2 * now[i]) {
            if (n++ == 0) {
                first = i;
            }
        }
    }

    if (!pc->plans_known) {
        ngx_memcpy(pc->plans_size, now, sizeof(now));
        pc->plans_known = 1;
        return NGX_DECLINED;
    }

    if (n == 0) {
        return NGX_DECLINED;
    }

    ngx_log_error(NGX_LOG_NOTICE, pc->log, 0,
                  "modelroute_store: PostgreSQL %V: %s is %L kB, was %L kB "
                  "(%ui table%s changed so): the statements are planned "
                  "again", &mr_pg_conf()->where, mr_pg_plans_tables[first],
                  now[first] / 1024, pc->plans_size[first] / 1024, n,
                  n == 1 ? "" : "s");

    return NGX_OK;
}
