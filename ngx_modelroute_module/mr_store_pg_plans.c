
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
 * read, once a second, when it is idle (no request in flight, no
 * transaction open: never inside a batch), and when one of them has
 * doubled or halved since its plans were made (from 64 kB on), it drops
 * them (DISCARD PLANS): the next run of each statement is planned for the
 * table as it is now (PostgreSQL's estimate scales the last statistics to
 * the table's current size, so no ANALYZE is needed).  A table that grows
 * from nothing to a million rows is planned again about fifteen times.
 */


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_event.h>

#include "ngx_http_modelroute_module.h"
#include "mr_store_pg.h"


#define MR_PG_PLANS_INTERVAL  1000            /* ms between two looks */
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
    "pg_relation_size('mr_routes')";


static void mr_pg_plans_timer(ngx_event_t *ev);
static void mr_pg_plans_send(mr_pg_conn_t *pc);
static void mr_pg_plans_done(mr_pg_req_t *req);
static ngx_int_t mr_pg_plans_changed(mr_pg_conn_t *pc, PGresult *res,
    ngx_uint_t planned);


void
mr_pg_plans_init(mr_pg_conn_t *pc)
{
    pc->plans_ev.handler = mr_pg_plans_timer;
    pc->plans_ev.data = &mr_timer_conn;
    pc->plans_ev.log = pc->log;
    pc->plans_ev.cancelable = 1;

    pc->plans.res = pc->plans_res;
    pc->plans.size = 2;
}


/* a new session: its plans are made from now on, for the sizes then */

void
mr_pg_plans_start(mr_pg_conn_t *pc)
{
    pc->plans_known = 0;
    pc->plans_due = 1;
    pc->plans_discard = 0;
    pc->plans_sent = 0;

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
    pc->plans_discard = 0;
}


/*
 * The connection has nothing in flight: what is due goes first, ahead of
 * what its handlers send next
 */

void
mr_pg_plans_idle(mr_pg_conn_t *pc)
{
    if (pc->plans_due && !pc->plans_sent
        && pc->state == MR_PG_READY && pc->npending == 0
        && PQtransactionStatus(pc->pg) == PQTRANS_IDLE)
    {
        mr_pg_plans_send(pc);
    }
}


static void
mr_pg_plans_timer(ngx_event_t *ev)
{
    mr_pg_conn_t  *pc;

    pc = (mr_pg_conn_t *) ((u_char *) ev - offsetof(mr_pg_conn_t, plans_ev));

    if (pc->state != MR_PG_READY) {
        return;
    }

    pc->plans_due = 1;

    mr_pg_plans_idle(pc);
}


/* the sizes, after the plans are dropped when that is due */

static void
mr_pg_plans_send(mr_pg_conn_t *pc)
{
    mr_pg_req_t  *req;

    req = &pc->plans;
    req->n = 0;
    req->status = MR_PG_REQ_OK;
    req->error[0] = '\0';
    req->sqlstate[0] = '\0';

    if (pc->plans_discard) {
        if (!PQsendQueryParams(pc->pg, "DISCARD PLANS", 0, NULL, NULL, NULL,
                               NULL, 0))
        {
            goto lost;
        }

        req->n++;
    }

    if (!PQsendQueryParams(pc->pg, mr_pg_plans_sizes, 0, NULL, NULL, NULL,
                           NULL, 0))
    {
        goto lost;
    }

    req->n++;

    if (mr_pg_req_end(pc, req, mr_pg_plans_done, pc) != NGX_OK) {
        return;                      /* the connection is made again */
    }

    pc->plans_sent = 1;
    pc->plans_due = 0;

    return;

lost:

    /* libpq refused: the connection is broken, and is made again */

    req->status = MR_PG_REQ_LOST;
    (void) mr_pg_req_end(pc, req, mr_pg_plans_done, pc);
}


static void
mr_pg_plans_done(mr_pg_req_t *req)
{
    PGresult      *res;
    mr_pg_conn_t  *pc;

    pc = req->data;
    pc->plans_sent = 0;

    if (req->status != MR_PG_REQ_OK) {

        if (req->status == MR_PG_REQ_FAILED && !pc->plans_logged) {
            ngx_log_error(NGX_LOG_WARN, pc->log, 0,
                          "modelroute_store: PostgreSQL %V: the tables' "
                          "sizes: %s", &mr_pg_conf()->where, req->error);
            pc->plans_logged = 1;
        }

        mr_pg_req_free(req);
        goto next;
    }

    res = req->res[req->n - 1];

    if (pc->plans_discard) {
        pc->plans_discard = 0;       /* the sizes are those planned for */
        (void) mr_pg_plans_changed(pc, res, 1);

    } else if (mr_pg_plans_changed(pc, res, 0) == NGX_OK) {
        pc->plans_discard = 1;       /* sent once the connection is idle */
        pc->plans_due = 1;
    }

    mr_pg_req_free(req);

next:

    if (pc->state == MR_PG_READY && !pc->plans_ev.timer_set) {
        ngx_add_timer(&pc->plans_ev, MR_PG_PLANS_INTERVAL);
    }
}


/*
 * NGX_OK: a table doubled or halved since the sizes known; NGX_DECLINED:
 * none did, or none were known.  The sizes become those known when the
 * plans were just dropped (planned), or when none were known.
 */

static ngx_int_t
mr_pg_plans_changed(mr_pg_conn_t *pc, PGresult *res, ngx_uint_t planned)
{
    int64_t     now[MR_PG_PLANS_TABLES], was;
    ngx_uint_t  i, n, first;

    if (PQntuples(res) != 1 || PQnfields(res) != MR_PG_PLANS_TABLES) {
        return NGX_DECLINED;
    }

    n = 0;
    first = 0;

    for (i = 0; i < MR_PG_PLANS_TABLES; i++) {
        now[i] = ngx_max(mr_pg_get_int(res, 0, i), MR_PG_PLANS_MIN);
        was = pc->plans_size[i];

        if (now[i] >= 2 * was || was >= 2 * now[i]) {
            if (n++ == 0) {
                first = i;
            }
        }
    }

    if (planned || !pc->plans_known) {
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
