
/*
 * ModelRoute: the PostgreSQL store's statements, prepared on every
 * connection (mr_store_pg_conn.c) but the custom ones (below).
 * Parameters are text; arrays are text array literals (mr_pg_buf_*()),
 * expanded with unnest() so that a batch writes each table with one
 * statement whatever its size.
 *
 * A write transaction locks in one order: executions, keys, deliveries,
 * the endpoints it may change, routes, and the accounts it touches last
 * (sorted by id), whether it locks them as it reads them or changes
 * them by deltas at its end; claims and the sweep first read their
 * candidates without a lock, then lock those still due, skipping those
 * that another worker or node has locked (FOR UPDATE SKIP LOCKED; the
 * retention's purges wait for them instead), then their routes and
 * accounts.  Only the purge of old events locks events, before their
 * accounts.
 *
 * Rows wanted by several keys are found by a UNION of index look-ups,
 * never by ORs of conditions: PostgreSQL reads the whole table for those.
 *
 * A statement marked custom (the third field) is not prepared: it is sent
 * with its parameters and planned for them each time.  Those are the
 * joins of unnest() with a table that grows, and the purges: the generic
 * plan of a prepared one, made after five runs while the table was small
 * (and kept until the next ANALYZE), scanned the whole table on every
 * call (t/74).  The purges name their rows by ctid, never "IN (...
 * LIMIT $n)" (a generic plan counts on a tenth of the table).
 *
 * An array of ids that may be empty is given as "= ANY (ARRAY(SELECT
 * unnest($n)))", not "= ANY ($n)": planned for its values, "id =
 * ANY('{}')" reads as "false", from which the condition of any partial
 * index follows, and the plan scanned one whole (the accounts' snapshot
 * of every claim read all the ended executions through mr_exec_ended to
 * find none: 1.9 ms a call and growing; t/82).
 */


#include <ngx_config.h>
#include <ngx_core.h>

#include "mr_store_pg.h"
#include "mr_store_pg_sql.h"


/* MR_EXEC_COLS of "e" (the input '' in _SHOWN: a list shows none) */
#define MR_EXEC_COLS_E_REC                                                    \
    "e.id, e.org, e.status, e.estimate, e.hold, e.cost, e.created_ms, "       \
    "e.expires_ms, e.started_ms, e.completed_ms, e.lease_until_ms, "          \
    "e.lease_owner, coalesce(e.next_ms, 0), e.ord, e.attempt_ms, "            \
    "e.nattempts, e.route, e.fingerprint, e.model, e.idem_key, e.metadata, "  \
    "e.webhook_url, "
#define MR_EXEC_COLS_E_AFTER                                                  \
    "e.result, e.error, e.attempts, coalesce(e.last_dlv, '')"

#define MR_EXEC_COLS_E                                                        \
    MR_EXEC_COLS_E_REC "e.input, " MR_EXEC_COLS_E_AFTER
#define MR_EXEC_COLS_E_SHOWN                                                  \
    MR_EXEC_COLS_E_REC "'', " MR_EXEC_COLS_E_AFTER


/*
 * the accounts named ($1), and those of the executions, keys, endpoints
 * and deliveries named ($2..$5)
 */
#define MR_SQL_ACCOUNTS_READ                                                  \
    "SELECT " MR_ACCT_COLS " FROM mr_accounts WHERE org = ANY (ARRAY("        \
    "SELECT unnest($1::text[]) "                                              \
    "UNION SELECT org FROM mr_executions "                                    \
    "WHERE id = ANY (ARRAY(SELECT unnest($2::text[]))) "                      \
    "UNION SELECT org FROM mr_keys "                                          \
    "WHERE key_id = ANY (ARRAY(SELECT unnest($3::text[]))) "                  \
    "UNION SELECT org FROM mr_endpoints "                                     \
    "WHERE id = ANY (ARRAY(SELECT unnest($4::text[]))) "                      \
    "UNION SELECT org FROM mr_deliveries "                                    \
    "WHERE id = ANY (ARRAY(SELECT unnest($5::text[]))))) "


/* the routes named ($1), and those of the executions named ($2) */
#define MR_SQL_ROUTES_READ                                                    \
    "SELECT " MR_ROUTE_COLS " FROM mr_routes "                                \
    "WHERE name = ANY($1::text[]) "                                           \
    "OR name IN (SELECT route FROM mr_executions "                            \
    "WHERE id = ANY (ARRAY(SELECT unnest($2::text[])))) "


/* an API key by its hash, and its account's rate limit: one, or a group */
#define MR_SQL_AUTH_READ                                                      \
    "SELECT k.key_id, k.org, k.hash, k.hint, k.permission, "                  \
    "k.revoked::int, k.created_ms, k.valid_until_ms, k.name, "                \
    "coalesce(k.end_ms, 0), coalesce(a.rl_requests, -1) "                     \
    "FROM mr_keys k LEFT JOIN mr_accounts a ON a.org = k.org "


mr_pg_stmt_t  mr_pg_stmts[] = {

    /* ---- reads */

    { "mr_auth", MR_SQL_AUTH_READ "WHERE k.hash = $1::bytea", 0 },

    { "mr_account",
      "SELECT " MR_ACCT_COLS " FROM mr_accounts WHERE org = $1", 0 },

    { "mr_keys",
      "SELECT " MR_KEY_COLS " FROM mr_keys WHERE org = $1 ORDER BY key_id", 0 },

    { "mr_exec",
      "SELECT " MR_EXEC_COLS " FROM mr_executions WHERE id = $1", 0 },

    { "mr_execs",
      "SELECT " MR_EXEC_COLS " FROM mr_executions "
      "WHERE id = ANY($1::text[])", 0 },

    { "mr_list_cursor",
      "SELECT ord FROM mr_executions WHERE id = $1 AND org = $2", 0 },

    /* newest first (after the execution $2, if not ''), up to $6 looked
     * at: each with its match, and the first $5 matches in full; the
     * cursor is a condition of the index (org, ord, id), whatever the
     * plan (an OR of it read every newer execution in a generic one);
     * the matches are read one by one by id (LATERAL ... LIMIT 1): a
     * join, in a generic plan made for a tenth of an account's
     * executions ($6 unknown), could be a hash over all of them */
    { "mr_list",
      "SELECT s.id, s.m::int, " MR_EXEC_COLS_E_SHOWN " FROM ("
      "SELECT id, ord, m, count(*) FILTER (WHERE m) "
      "OVER (ORDER BY ord DESC, id DESC) AS k FROM ("
      "SELECT id, ord, (($3::int = 0 OR status = $3::int) "
      "AND ($4::text = '' OR model = $4::text)) AS m "
      "FROM mr_executions WHERE org = $1 "
      "AND (ord, id) < (CASE WHEN $2::text = '' "
      "THEN 9223372036854775807 ELSE (SELECT c.ord "
      "FROM mr_executions c WHERE c.id = $2::text AND c.org = $1) END, "
      "$2::text) "
      "ORDER BY ord DESC, id DESC LIMIT $6) s0) s "
      "LEFT JOIN LATERAL (SELECT * FROM mr_executions x WHERE x.id = s.id "
      "AND s.m AND s.k <= $5 LIMIT 1) e ON true "
      "ORDER BY s.ord DESC, s.id DESC", 0 },

    /* the ledger, the use as kept and as counted again from the records,
     * in one snapshot */
    { "mr_verify",
      "SELECT " MR_ACCT_COLS ", "
      "(SELECT count(*) FROM mr_executions WHERE org = $1), "
      "(SELECT count(*) FROM mr_executions WHERE org = $1 AND status < 4), "
      "(SELECT coalesce(sum(hold), 0)::bigint FROM mr_executions "
      "WHERE org = $1 AND status < 4), "
      "(SELECT coalesce(sum($2::bigint + octet_length(model) "
      "+ octet_length(idem_key) + octet_length(metadata) "
      "+ octet_length(webhook_url) + octet_length(input) "
      "+ octet_length(result) + octet_length(error) "
      "+ octet_length(attempts)), 0)::bigint "
      "FROM mr_executions WHERE org = $1), "
      "(SELECT count(*) FROM mr_endpoints WHERE org = $1), "
      "(SELECT coalesce(sum($3::bigint + octet_length(url) "
      "+ octet_length(description) + octet_length(events) "
      "+ octet_length(headers) + octet_length(secret)), 0)::bigint "
      "FROM mr_endpoints WHERE org = $1), "
      "(SELECT count(*) FROM mr_keys WHERE org = $1 AND NOT revoked "
      "AND valid_until_ms = 0), "
      "(SELECT coalesce(sum($4::bigint + octet_length(name)), 0)::bigint "
      "FROM mr_keys WHERE org = $1), "
      "(SELECT coalesce(sum($5::bigint + octet_length(body)), 0)::bigint "
      "FROM mr_events WHERE org = $1), "
      "(SELECT coalesce(sum($6::bigint + octet_length(url) "
      "+ octet_length(type) + octet_length(attempt_log)), 0)::bigint "
      "FROM mr_deliveries WHERE org = $1) "
      "FROM mr_accounts WHERE org = $1", 0 },

    { "mr_wh",
      "SELECT " MR_WH_COLS " FROM mr_endpoints WHERE id = $1", 0 },

    { "mr_wh_list",
      "SELECT " MR_WH_COLS " FROM mr_endpoints WHERE org = $1 ORDER BY id", 0 },

    { "mr_owner_wh",
      "SELECT org FROM mr_endpoints WHERE id = $1", 0 },

    { "mr_owner_exec",
      "SELECT org FROM mr_executions WHERE id = $1", 0 },

    { "mr_dlv_by_wh",
      "SELECT " MR_DLV_COLS " FROM mr_deliveries WHERE wh_id = $1 "
      "ORDER BY id DESC LIMIT $2", 0 },

    { "mr_dlv_by_exec",
      "SELECT " MR_DLV_COLS " FROM mr_deliveries WHERE exec_id = $1 "
      "ORDER BY id DESC LIMIT $2", 0 },

    { "mr_secret",
      "SELECT secret FROM mr_whsecrets WHERE org = $1", 0 },

    /* the callback key: the first node's, for every node */
    { "mr_cbkey",
      "INSERT INTO mr_meta (name, value) VALUES ('cbkey', $1::bytea) "
      "ON CONFLICT (name) DO UPDATE SET name = EXCLUDED.name "
      "RETURNING value", 0 },

    /*
     * the first entry of the index of due executions, never min(): its
     * generic plan, made while few were due, was an aggregate of the
     * whole index (every execution that waited: 3-6 ms a call with a
     * backlog of a few thousand)
     */
    { "mr_disp_next",
      "SELECT next_ms FROM mr_executions WHERE next_ms IS NOT NULL "
      "ORDER BY next_ms LIMIT 1", 0 },

    /*
     * what the metrics show: the open holds exactly (their partial
     * index: as many as are open); the accounts and the executions kept
     * counted while they are few, else the planner's estimate (a count
     * would read the whole table on every scrape); the health answer
     * reads mr_db_size only
     */
    { "mr_stats",
      "SELECT (SELECT count(*) FROM mr_executions WHERE status < 4), "
      "(SELECT coalesce(sum(hold), 0)::bigint FROM mr_executions "
      "WHERE status < 4), "
      "(SELECT count(*) FROM mr_deliveries WHERE due_ms IS NOT NULL), "
      "(SELECT CASE WHEN c.reltuples > 100000 THEN c.reltuples::bigint "
      "ELSE (SELECT count(*) FROM mr_accounts) END FROM pg_class c "
      "WHERE c.oid = 'mr_accounts'::regclass), "
      "(SELECT CASE WHEN c.reltuples > 100000 THEN c.reltuples::bigint "
      "ELSE (SELECT count(*) FROM mr_executions) END FROM pg_class c "
      "WHERE c.oid = 'mr_executions'::regclass), "
      "pg_database_size(current_database())", 0 },

    { "mr_routes",
      "SELECT " MR_ROUTE_COLS " FROM mr_routes", 0 },

    { "mr_accounts",
      "SELECT " MR_ACCT_COLS " FROM mr_accounts WHERE org > $1 "
      "ORDER BY org LIMIT $2", 0 },

    /* the recent deliveries with a failed attempt, among the $2 newest;
     * each with its place in them, and how many they are */
    { "mr_failed_dlvs",
      "SELECT " MR_DLV_COLS ", pos, total, m::int FROM ("
      "SELECT d.*, row_number() OVER (ORDER BY id DESC) AS pos, "
      "count(*) FILTER (WHERE m) OVER (ORDER BY id DESC) AS k, "
      "count(*) OVER () AS total FROM ("
      "SELECT *, (status = 3 OR (status = 1 AND attempts > 0)) AS m "
      "FROM mr_deliveries ORDER BY id DESC LIMIT $2) d) x "
      "WHERE (m AND k <= $1) OR pos = total ORDER BY id DESC", 0 },

    { "mr_batch_done",
      "SELECT 1 FROM mr_batches WHERE id = $1::uuid", 0 },

    /* ---- a batch: locks and loads (BEGIN: unnamed) */

    { NULL, "BEGIN", 0 },

    /*
     * "= ANY (ARRAY(...))", not "IN (...)": the union of the ids is an
     * array of its own rows, not a join whose estimate enters the plan.
     * What makes the accounts be found by their index is the sessions'
     * random_page_cost of 1.1 at most (mr_pg_conn_setup()): at 4, the
     * default, either form was planned as a hash join over a scan of
     * every account, on every batch (the scans are counted by t/74)
     */
    { "mr_lock_accounts",
      MR_SQL_ACCOUNTS_READ "ORDER BY org FOR UPDATE", 0 },

    { "mr_lock_execs",
      "SELECT " MR_EXEC_COLS_LOCKED " FROM mr_executions "
      "WHERE id = ANY($1::text[]) ORDER BY id FOR UPDATE", 0 },

    /*
     * planned for its keys each time (custom): a prepared statement's
     * generic plan, made while the table was small, scanned all of
     * mr_idem on every batch until the next ANALYZE (4.6 ms a call at
     * 90,000 keys); the LIMITs keep the lookups per pair
     */
    { "mr_idem",
      "SELECT i.org, i.key, i.exec_id, i.created_ms, " MR_EXEC_COLS_E " "
      "FROM unnest($1::text[], $2::text[]) AS q(org, key) "
      "CROSS JOIN LATERAL (SELECT * FROM mr_idem m "
      "WHERE m.org = q.org AND m.key = q.key LIMIT 1) i "
      "LEFT JOIN LATERAL (SELECT * FROM mr_executions x "
      "WHERE x.id = i.exec_id LIMIT 1) e ON true", 1 },

    { "mr_keys_by_id",
      "SELECT " MR_KEY_COLS " FROM mr_keys WHERE key_id = ANY($1::text[]) "
      "ORDER BY key_id FOR UPDATE", 0 },

    /* the endpoints of the accounts (for the events), and by id */
    { "mr_endpoints",
      "SELECT " MR_WH_COLS " FROM mr_endpoints WHERE id = ANY (ARRAY("
      "SELECT w.id FROM mr_endpoints w WHERE w.org = ANY (ARRAY("
      "SELECT unnest($1::text[]) "
      "UNION SELECT org FROM mr_executions "
      "WHERE id = ANY (ARRAY(SELECT unnest($2::text[]))))) "
      "UNION SELECT unnest($3::text[]) "
      "UNION SELECT wh_id FROM mr_deliveries "
      "WHERE id = ANY (ARRAY(SELECT unnest($4::text[]))))) "
      "ORDER BY id", 0 },

    { "mr_lock_dlvs",
      "SELECT " MR_DLV_COLS " FROM mr_deliveries "
      "WHERE id = ANY($1::text[]) ORDER BY id FOR UPDATE", 0 },

    { "mr_lock_routes",
      MR_SQL_ROUTES_READ "ORDER BY name FOR UPDATE", 0 },

    { "mr_whsecrets",
      "SELECT org, secret FROM mr_whsecrets WHERE org = ANY (ARRAY("
      "SELECT unnest($1::text[]) "
      "UNION SELECT org FROM mr_executions "
      "WHERE id = ANY (ARRAY(SELECT unnest($2::text[]))) "
      "UNION SELECT org FROM mr_deliveries "
      "WHERE id = ANY (ARRAY(SELECT unnest($3::text[])))))", 0 },

    { "mr_credit_refs",
      "SELECT r.org, r.ref, r.amount "
      "FROM unnest($1::text[], $2::text[]) AS q(org, ref) "
      "JOIN mr_credit_refs r ON r.org = q.org AND r.ref = q.ref", 1 },

    { "mr_accounts_exist",
      "SELECT org FROM mr_accounts WHERE org = ANY($1::text[])", 0 },

    /* ---- claims and the sweep */

    /* due for dispatch: what the rules need to pass over those waiting */
    { "mr_disp_due",
      "SELECT " MR_DISP_DUE_COLS ", 0 FROM mr_executions "
      "WHERE next_ms IS NOT NULL AND next_ms <= $1 "
      "ORDER BY next_ms LIMIT $2", 0 },

    /*
     * The locks of a claim's or a step's candidates: by their ids only.
     * Whether each is still due is a condition no index can serve
     * (coalesce()), and their order is the candidates' (the caller's):
     * written as "next_ms <= $2 ORDER BY next_ms", the plan, generic or
     * not, made while few rows were due by the table's statistics, walked
     * the partial index of due rows and filtered it by id, reading the
     * whole backlog on every claim (27 ms a claim with one of 100,000).
     * SKIP LOCKED never waits: the order of the locks does not matter.
     */
    { "mr_lock_due_execs",
      "SELECT " MR_EXEC_COLS_LOCKED " FROM mr_executions "
      "WHERE id = ANY($1::text[]) AND coalesce(next_ms <= $2, false) "
      "FOR UPDATE SKIP LOCKED", 0 },

    /*
     * deliveries: the accounts with queued ones in turn, from the one
     * after the last visited ($1) and then from the first, at most $2,
     * each found with one index step; in each, its targets (endpoints,
     * webhook_url hosts) with queued ones from a random point ($5), then
     * from the first, at most $6, each found with one index step; of
     * each target with some due its due deliveries from the queue's due
     * end, its share of the account's $4 at most (shared among those
     * targets only); of each account at most $4, taken
     * from its targets in turn (the first of each, then the second...).
     * An account's deliveries to one target (a deactivated endpoint's,
     * parked; retries queued for later) neither fill its share nor are
     * read past the due ones.  Last, a row without an id: the last
     * account visited (the next claim starts after it).
     */
    { "mr_dlv_due",
      "WITH RECURSIVE o1(org, n) AS ("
      "SELECT (SELECT org FROM mr_deliveries WHERE due_ms IS NOT NULL "
      "AND org > $1 ORDER BY org LIMIT 1), 1 "
      "UNION ALL "
      "SELECT (SELECT d.org FROM mr_deliveries d WHERE d.due_ms IS NOT NULL "
      "AND d.org > o1.org ORDER BY d.org LIMIT 1), o1.n + 1 "
      "FROM o1 WHERE o1.org IS NOT NULL AND o1.n < $2), "
      "o2(org, n) AS ("
      "SELECT (SELECT org FROM mr_deliveries WHERE due_ms IS NOT NULL "
      "AND org <= $1 ORDER BY org LIMIT 1), 1 "
      "UNION ALL "
      "SELECT (SELECT d.org FROM mr_deliveries d WHERE d.due_ms IS NOT NULL "
      "AND d.org > o2.org AND d.org <= $1 ORDER BY d.org LIMIT 1), "
      "o2.n + 1 FROM o2 WHERE o2.org IS NOT NULL AND o2.n < $2), "
      "orgs AS (SELECT org, n FROM o1 WHERE org IS NOT NULL "
      "UNION ALL SELECT org, n + $2 FROM o2 WHERE org IS NOT NULL "
      "ORDER BY 2 LIMIT $2), "
      "t1(org, n, target, k) AS ("
      "SELECT orgs.org, orgs.n, (SELECT d.target FROM mr_deliveries d "
      "WHERE d.org = orgs.org AND d.due_ms IS NOT NULL AND d.target >= $5 "
      "ORDER BY d.target LIMIT 1), 1 FROM orgs "
      "UNION ALL "
      "SELECT t1.org, t1.n, (SELECT d.target FROM mr_deliveries d "
      "WHERE d.org = t1.org AND d.due_ms IS NOT NULL "
      "AND d.target > t1.target ORDER BY d.target LIMIT 1), t1.k + 1 "
      "FROM t1 WHERE t1.target IS NOT NULL AND t1.k < $6), "
      "t2(org, n, target, k) AS ("
      "SELECT t1.org, t1.n, (SELECT d.target FROM mr_deliveries d "
      "WHERE d.org = t1.org AND d.due_ms IS NOT NULL AND d.target < $5 "
      "ORDER BY d.target LIMIT 1), t1.k FROM t1 WHERE t1.target IS NULL "
      "UNION ALL "
      "SELECT t2.org, t2.n, (SELECT d.target FROM mr_deliveries d "
      "WHERE d.org = t2.org AND d.due_ms IS NOT NULL "
      "AND d.target > t2.target AND d.target < $5 "
      "ORDER BY d.target LIMIT 1), t2.k + 1 "
      "FROM t2 WHERE t2.target IS NOT NULL AND t2.k < $6), "
      "pairs AS (SELECT org, n, target, count(*) OVER (PARTITION BY org) "
      "AS nt FROM (SELECT * FROM t1 UNION ALL SELECT * FROM t2) u "
      "WHERE target IS NOT NULL AND (SELECT e.due_ms FROM mr_deliveries e "
      "WHERE e.org = u.org AND e.target = u.target "
      "AND e.due_ms IS NOT NULL ORDER BY e.due_ms LIMIT 1) <= $3), "
      "c AS (SELECT d.id, d.org, p.n, d.due_ms, row_number() OVER ("
      "PARTITION BY p.org, p.target ORDER BY d.due_ms, d.id) AS r "
      "FROM pairs p, LATERAL (SELECT id, org, due_ms FROM mr_deliveries "
      "WHERE org = p.org AND target = p.target AND due_ms IS NOT NULL "
      "AND due_ms <= $3 ORDER BY due_ms LIMIT ($4 + p.nt - 1) / p.nt) d) "
      "SELECT id, org, n, r, due_ms FROM (SELECT id, org, n, r, due_ms, "
      "row_number() OVER (PARTITION BY org ORDER BY r, due_ms, id) AS s "
      "FROM c) x WHERE s <= $4 "
      "UNION ALL SELECT NULL, (SELECT org FROM orgs ORDER BY n DESC "
      "LIMIT 1), NULL, NULL, NULL "
      "ORDER BY 3 NULLS LAST, 4, 5, 1", 0 },

    { "mr_lock_due_dlvs",
      "SELECT " MR_DLV_COLS " FROM mr_deliveries "
      "WHERE id = ANY($1::text[]) AND coalesce(due_ms <= $2, false) "
      "AND status = 1 FOR UPDATE SKIP LOCKED", 0 },

    { "mr_expire_due",
      "SELECT id, org FROM mr_executions WHERE status < 4 "
      "AND expires_ms <= $1 ORDER BY expires_ms LIMIT $2", 0 },

    { "mr_lock_expired",
      "SELECT " MR_EXEC_COLS_LOCKED " FROM mr_executions "
      "WHERE id = ANY($1::text[]) "
      "AND coalesce(status < 4 AND expires_ms <= $2, false) "
      "FOR UPDATE SKIP LOCKED", 0 },

    /* the retention: candidates (id, org), oldest first */
    { "mr_purge_execs",
      "SELECT id, org FROM mr_executions WHERE status >= 4 "
      "AND created_ms <= $1 ORDER BY created_ms LIMIT $2", 0 },

    { "mr_purge_dlvs",
      "SELECT id, org FROM mr_deliveries WHERE id < $1 AND status <> 1 "
      "ORDER BY id LIMIT $2", 0 },

    { "mr_purge_events",
      "SELECT id, org FROM mr_events WHERE id < $1 ORDER BY id LIMIT $2", 0 },

    { "mr_purge_keys",
      "SELECT key_id, org FROM mr_keys WHERE end_ms IS NOT NULL "
      "AND end_ms <= $1 ORDER BY end_ms LIMIT $2", 0 },

    /* by the rows' ctids, planned each time: the generic plan of
     * "(org, key) IN (...)", which counts on a LIMIT of a tenth of the
     * table, hashed all of it */
    { "mr_purge_idem",
      "DELETE FROM mr_idem WHERE ctid = ANY (ARRAY(SELECT ctid "
      "FROM mr_idem WHERE created_ms <= $1 ORDER BY created_ms LIMIT $2 "
      "FOR UPDATE SKIP LOCKED)) RETURNING 1", 1 },

    { "mr_purge_batches",
      "DELETE FROM mr_batches WHERE ctid = ANY (ARRAY(SELECT ctid "
      "FROM mr_batches WHERE at < now() - interval '1 hour' ORDER BY at "
      "LIMIT $1 FOR UPDATE SKIP LOCKED))", 1 },

    /* events by id, and those of deliveries */
    { "mr_events_by_id",
      "SELECT id, org, body FROM mr_events WHERE id IN ("
      "SELECT unnest($1::text[]) "
      "UNION SELECT event_id FROM mr_deliveries "
      "WHERE id = ANY($2::text[]))", 1 },

    /* deliveries that wait for an earlier one of their execution and
     * endpoint (or webhook_url) */
    { "mr_dlv_earlier",
      "SELECT d.id, CASE WHEN bool_or(o.token <> 0) THEN -1 "
      "ELSE max(coalesce(o.due_ms, 0)) END FROM mr_deliveries d "
      "JOIN mr_deliveries o ON o.exec_id = d.exec_id AND o.id < d.id "
      "AND o.status = 1 AND o.wh_id IS NOT DISTINCT FROM d.wh_id "
      "WHERE d.id = ANY($1::text[]) AND d.exec_id IS NOT NULL "
      "GROUP BY d.id", 1 },

    /* ---- a batch: writes */

    /*
     * executions: an input of '' erases it (an execution that ended),
     * any other keeps the one stored; a batch loads an execution not
     * ended without its input and writes "-" for it (MR_EXEC_COLS_LOCKED)
     */
    { "mr_w_execs",
      "INSERT INTO mr_executions (id, org, status, estimate, hold, cost, "
      "created_ms, expires_ms, started_ms, completed_ms, lease_until_ms, "
      "lease_owner, lease_node, next_ms, ord, attempt_ms, nattempts, route, "
      "fingerprint, model, idem_key, metadata, webhook_url, input, result, "
      "error, attempts, last_dlv) "
      "SELECT * FROM unnest($1::text[], $2::text[], $3::smallint[], "
      "$4::bigint[], $5::bigint[], $6::bigint[], $7::bigint[], "
      "$8::bigint[], $9::bigint[], $10::bigint[], $11::bigint[], "
      "$12::bigint[], $13::text[], $14::bigint[], $15::bigint[], "
      "$16::bigint[], $17::int[], $18::text[], $19::bytea[], $20::text[], "
      "$21::text[], $22::text[], $23::text[], $24::text[], $25::text[], "
      "$26::text[], $27::text[], $28::text[]) "
      "ON CONFLICT (id) DO UPDATE SET status = EXCLUDED.status, "
      "cost = EXCLUDED.cost, started_ms = EXCLUDED.started_ms, "
      "completed_ms = EXCLUDED.completed_ms, "
      "lease_until_ms = EXCLUDED.lease_until_ms, "
      "lease_owner = EXCLUDED.lease_owner, "
      "lease_node = EXCLUDED.lease_node, next_ms = EXCLUDED.next_ms, "
      "attempt_ms = EXCLUDED.attempt_ms, nattempts = EXCLUDED.nattempts, "
      "route = EXCLUDED.route, result = EXCLUDED.result, "
      "error = EXCLUDED.error, attempts = EXCLUDED.attempts, "
      "last_dlv = EXCLUDED.last_dlv, input = CASE WHEN EXCLUDED.input = '' "
      "THEN '' ELSE mr_executions.input END", 0 },

    { "mr_w_accounts",
      "UPDATE mr_accounts a SET balance = u.balance, held = u.held, "
      "credited = u.credited, debited = u.debited, charged = u.charged, "
      "used_bytes = u.ub, used_executions = u.ue, used_endpoints = u.uw, "
      "used_keys = u.uk, limit_bytes = u.lb, limit_executions = u.le, "
      "limit_endpoints = u.lw, limit_keys = u.lk, "
      "rl_requests = nullif(u.rl, -1) "
      "FROM unnest($1::text[], $2::bigint[], $3::bigint[], $4::bigint[], "
      "$5::bigint[], $6::bigint[], $7::bigint[], $8::bigint[], "
      "$9::bigint[], $10::bigint[], $11::bigint[], $12::bigint[], "
      "$13::bigint[], $14::bigint[], $15::bigint[]) "
      "AS u(org, balance, held, credited, debited, charged, ub, ue, uw, uk, "
      "lb, le, lw, lk, rl) WHERE a.org = u.org", 0 },

    { "mr_w_account_new",
      "INSERT INTO mr_accounts (org, name, balance, held, credited, debited, "
      "charged, created_ms, limit_bytes, limit_executions, limit_endpoints, "
      "limit_keys) VALUES ($1, $2, $3, 0, $4, 0, 0, $5, $6, $7, $8, $9)", 0 },

    { "mr_w_idem",
      "INSERT INTO mr_idem (org, key, exec_id, created_ms) "
      "SELECT * FROM unnest($1::text[], $2::text[], $3::text[], "
      "$4::bigint[]) ON CONFLICT (org, key) DO UPDATE "
      "SET exec_id = EXCLUDED.exec_id, created_ms = EXCLUDED.created_ms", 0 },

    { "mr_w_keys",
      "INSERT INTO mr_keys (key_id, org, hash, hint, permission, revoked, "
      "created_ms, valid_until_ms, end_ms, name) "
      "SELECT k, o, h, hi, p, r::boolean, c, v, nullif(e, 0), n "
      "FROM unnest($1::text[], $2::text[], $3::bytea[], $4::text[], "
      "$5::smallint[], $6::int[], $7::bigint[], $8::bigint[], "
      "$9::bigint[], $10::text[]) AS u(k, o, h, hi, p, r, c, v, e, n) "
      "ON CONFLICT (key_id) DO UPDATE SET revoked = EXCLUDED.revoked, "
      "valid_until_ms = EXCLUDED.valid_until_ms, end_ms = EXCLUDED.end_ms, "
      "name = EXCLUDED.name", 0 },

    { "mr_w_routes",
      "INSERT INTO mr_routes (name, inflight, failures, open_until_ms, "
      "probe_until_ms, paused_until_ms, attempts, failed, probe_token, "
      "provider_failures, timeout_accounts, timeout_org) "
      "SELECT * FROM unnest($1::text[], $2::int[], $3::int[], $4::bigint[], "
      "$5::bigint[], $6::bigint[], $7::bigint[], $8::bigint[], "
      "$9::bigint[], $10::int[], $11::int[], $12::text[]) "
      "ON CONFLICT (name) DO UPDATE "
      "SET inflight = EXCLUDED.inflight, failures = EXCLUDED.failures, "
      "open_until_ms = EXCLUDED.open_until_ms, "
      "probe_until_ms = EXCLUDED.probe_until_ms, "
      "paused_until_ms = EXCLUDED.paused_until_ms, "
      "attempts = EXCLUDED.attempts, failed = EXCLUDED.failed, "
      "probe_token = EXCLUDED.probe_token, "
      "provider_failures = EXCLUDED.provider_failures, "
      "timeout_accounts = EXCLUDED.timeout_accounts, "
      "timeout_org = EXCLUDED.timeout_org", 0 },

    { "mr_w_endpoints",
      "INSERT INTO mr_endpoints (id, org, active, failures, created_ms, "
      "last_success_ms, url, description, events, headers, secret) "
      "SELECT i, o, a::boolean, f, c, l, u, d, e, h, s "
      "FROM unnest($1::text[], $2::text[], $3::int[], $4::int[], "
      "$5::bigint[], $6::bigint[], $7::text[], $8::text[], $9::text[], "
      "$10::text[], $11::text[]) AS x(i, o, a, f, c, l, u, d, e, h, s) "
      "ON CONFLICT (id) DO UPDATE SET active = EXCLUDED.active, "
      "failures = EXCLUDED.failures, "
      "last_success_ms = EXCLUDED.last_success_ms, url = EXCLUDED.url, "
      "description = EXCLUDED.description, events = EXCLUDED.events, "
      "headers = EXCLUDED.headers", 0 },

    /*
     * an account's first secret, made by a batch that read none: if
     * another batch made one meanwhile, mr_conflict() fails, and the
     * batch is made again, locked (where it reads the other's)
     */
    { "mr_w_whsecrets",
      "WITH w AS (INSERT INTO mr_whsecrets (org, secret) "
      "SELECT * FROM unnest($1::text[], $2::text[]) "
      "ON CONFLICT (org) DO NOTHING RETURNING 1) "
      "SELECT mr_conflict(count(*) = $3::bigint) FROM w", 0 },

    { "mr_w_credit_refs",
      "INSERT INTO mr_credit_refs (org, ref, amount) "
      "SELECT * FROM unnest($1::text[], $2::text[], $3::bigint[])", 0 },

    { "mr_w_events",
      "INSERT INTO mr_events (id, org, body) "
      "SELECT * FROM unnest($1::text[], $2::text[], $3::text[])", 0 },

    { "mr_w_dlvs",
      "INSERT INTO mr_deliveries (id, event_id, wh_id, org, exec_id, target, "
      "status, attempts, created_ms, due_ms, next_ms, token, lease_node, "
      "url, type, attempt_log) "
      "SELECT i, ev, nullif(w, ''), o, nullif(x, ''), t, s, a, c, "
      "nullif(d, 0), n, k, l, u, ty, al "
      "FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], "
      "$5::text[], $6::text[], $7::smallint[], $8::int[], $9::bigint[], "
      "$10::bigint[], $11::bigint[], $12::bigint[], $13::text[], "
      "$14::text[], $15::text[], $16::text[]) "
      "AS z(i, ev, w, o, x, t, s, a, c, d, n, k, l, u, ty, al) "
      "ON CONFLICT (id) DO UPDATE SET status = EXCLUDED.status, "
      "attempts = EXCLUDED.attempts, created_ms = EXCLUDED.created_ms, "
      "due_ms = EXCLUDED.due_ms, next_ms = EXCLUDED.next_ms, "
      "token = EXCLUDED.token, lease_node = EXCLUDED.lease_node, "
      "attempt_log = EXCLUDED.attempt_log", 0 },

    { "mr_w_ops",
      "INSERT INTO mr_ops (name, value) VALUES ($1, $2) "
      "ON CONFLICT (name) DO UPDATE SET value = EXCLUDED.value", 0 },

    { "mr_d_execs",
      "DELETE FROM mr_executions WHERE id = ANY($1::text[])", 0 },

    { "mr_d_idem",
      "DELETE FROM mr_idem WHERE (org, key) IN "
      "(SELECT * FROM unnest($1::text[], $2::text[]))", 0 },

    { "mr_d_keys",
      "DELETE FROM mr_keys WHERE key_id = ANY($1::text[])", 0 },

    { "mr_d_endpoints",
      "DELETE FROM mr_endpoints WHERE id = ANY($1::text[])", 0 },

    { "mr_d_events",
      "DELETE FROM mr_events WHERE id = ANY($1::text[])", 0 },

    { "mr_d_dlvs",
      "DELETE FROM mr_deliveries WHERE id = ANY($1::text[])", 0 },

    { "mr_w_batch",
      "INSERT INTO mr_batches (id) VALUES ($1::uuid)", 0 },

    { NULL, "COMMIT", 0 },

    { NULL, "ROLLBACK", 0 },

    /* a batch's lock, held until its transaction ends: a look-up of its
     * outcome after a lost connection waits for the end */
    { "mr_batch_lock",
      "SELECT pg_advisory_xact_lock($1::bigint)", 0 },

    /*
     * A batch made for the first time (creates, cancels, outcomes,
     * claims: mr_pg_batch_deltas()) reads its accounts without a lock,
     * and changes them by what its operations added, in its last round
     * trip: the accounts are locked there (in order), for as long as the
     * COMMIT takes.  An account on which a rule allowed something ($11,
     * 1: creates) must still allow it: its holds within its balance
     * after the batch, and the bytes and executions of those creates
     * ($12, $13) within its limits as it is now ($14..$17 are the
     * defaults of the limits, $18 the number of accounts).  Else the
     * statement fails (mr_conflict(), SQLSTATE MR001), the batch is
     * rolled back and made again with its accounts locked as read.
     * Releases, charges within a hold and the bytes of outcomes decide
     * nothing: they always apply.
     */

    { "mr_accounts_snap", MR_SQL_ACCOUNTS_READ, 0 },

    /*
     * their arrays are read so that a plan made for the values at hand
     * cannot see their length ("ARRAY(SELECT unnest($1))", "(SELECT
     * $1)"): seen, one account looked cheaper than the ten rows a generic
     * plan assumes, and both statements were planned on every call
     * (t/84); unseen, both plans cost the same, and the generic one is
     * kept
     */

    { "mr_lock_account_ids",
      "SELECT org FROM mr_accounts "
      "WHERE org = ANY (ARRAY(SELECT unnest($1::text[]))) "
      "ORDER BY org FOR UPDATE", 0 },

    { "mr_w_accounts_delta",
      "WITH d AS (UPDATE mr_accounts a SET balance = a.balance + u.db, "
      "held = a.held + u.dh, credited = a.credited + u.dc, "
      "debited = a.debited + u.dd, charged = a.charged + u.dg, "
      "used_bytes = a.used_bytes + u.ub, "
      "used_executions = a.used_executions + u.ue, "
      "used_endpoints = a.used_endpoints + u.uw, "
      "used_keys = a.used_keys + u.uk "
      "FROM unnest((SELECT $1::text[]), $2::bigint[], $3::bigint[], "
      "$4::bigint[], "
      "$5::bigint[], $6::bigint[], $7::bigint[], $8::bigint[], "
      "$9::bigint[], $10::bigint[], $11::int[], $12::bigint[], "
      "$13::bigint[]) "
      "AS u(org, db, dh, dc, dd, dg, ub, ue, uw, uk, c, cb, ce) "
      "WHERE a.org = u.org AND (u.c = 0 OR ("
      "(u.dh <= u.db OR a.held + u.dh <= a.balance + u.db) "
      "AND (u.cb <= 0 OR a.used_bytes + u.cb <= CASE WHEN a.limit_bytes >= 0 "
      "THEN a.limit_bytes ELSE $14::bigint END) "
      "AND (u.ce <= 0 OR a.used_executions + u.ce <= "
      "CASE WHEN a.limit_executions >= 0 THEN a.limit_executions "
      "ELSE $15::bigint END) "
      "AND (u.uw <= 0 OR a.used_endpoints + u.uw <= "
      "CASE WHEN a.limit_endpoints >= 0 THEN a.limit_endpoints "
      "ELSE $16::bigint END) "
      "AND (u.uk <= 0 OR a.used_keys + u.uk <= "
      "CASE WHEN a.limit_keys >= 0 THEN a.limit_keys ELSE $17::bigint END))) "
      "RETURNING 1) "
      "SELECT mr_conflict(count(*) = $18::bigint) FROM d", 0 },

    /*
     * its idempotency keys: new ones inserted if no other batch did
     * meanwhile, and the ones of purged executions taken over if they
     * still name them ($5, $6: how many); else mr_conflict() fails, and
     * the batch is made again, locked (it then replays the other's)
     */

    { "mr_w_idem_new",
      "WITH w AS (INSERT INTO mr_idem (org, key, exec_id, created_ms) "
      "SELECT * FROM unnest($1::text[], $2::text[], $3::text[], "
      "$4::bigint[]) ON CONFLICT (org, key) DO NOTHING RETURNING 1) "
      "SELECT mr_conflict(count(*) = $5::bigint) FROM w", 0 },

    { "mr_w_idem_swap",
      "WITH w AS (UPDATE mr_idem i SET exec_id = u.e, created_ms = u.c "
      "FROM unnest($1::text[], $2::text[], $3::text[], $4::bigint[], "
      "$5::text[]) AS u(o, k, e, c, p) "
      "WHERE i.org = u.o AND i.key = u.k AND i.exec_id = u.p RETURNING 1) "
      "SELECT mr_conflict(count(*) = $6::bigint) FROM w", 1 },

    /*
     * A dispatch claim, or a batch of operations without deliveries, made
     * for the first time, reads its routes without a lock (every
     * such batch of every worker changes the route it dispatches to) and
     * changes them in its last round trip, where they are locked (in
     * order, when more than one), for as long as the COMMIT takes: their
     * counters by what the batch added ($2..$4), and the fields of the
     * breaker that the batch changed (the bits of $5: failures, open,
     * probe, paused, the probe's token, the provider's failures, the
     * accounts that timed out and the first of them; new values $6..$13)
     * if they are still as the batch read them ($14..$21).  Slots taken
     * must be within the route's cap ($22, 0: none).  Else mr_conflict()
     * fails (MR001): the batch is rolled back and made again with its
     * routes locked first ($23: the number of routes).
     */

    { "mr_routes_snap", MR_SQL_ROUTES_READ, 0 },

    { "mr_lock_route_names",
      "SELECT name FROM mr_routes WHERE name = ANY($1::text[]) "
      "ORDER BY name FOR UPDATE", 0 },

    { "mr_w_routes_delta",
      "WITH d AS (UPDATE mr_routes r SET "
      "inflight = greatest(r.inflight + u.di, 0), "
      "attempts = r.attempts + u.da, failed = r.failed + u.df, "
      "failures = CASE WHEN u.m & 1 <> 0 THEN u.f ELSE r.failures END, "
      "open_until_ms = CASE WHEN u.m & 2 <> 0 THEN u.ou "
      "ELSE r.open_until_ms END, "
      "probe_until_ms = CASE WHEN u.m & 4 <> 0 THEN u.pu "
      "ELSE r.probe_until_ms END, "
      "paused_until_ms = CASE WHEN u.m & 8 <> 0 THEN u.pa "
      "ELSE r.paused_until_ms END, "
      "probe_token = CASE WHEN u.m & 16 <> 0 THEN u.pt "
      "ELSE r.probe_token END, "
      "provider_failures = CASE WHEN u.m & 32 <> 0 THEN u.pf "
      "ELSE r.provider_failures END, "
      "timeout_accounts = CASE WHEN u.m & 64 <> 0 THEN u.ta "
      "ELSE r.timeout_accounts END, "
      "timeout_org = CASE WHEN u.m & 128 <> 0 THEN u.tg "
      "ELSE r.timeout_org END "
      "FROM unnest($1::text[], $2::bigint[], $3::bigint[], $4::bigint[], "
      "$5::int[], $6::bigint[], $7::bigint[], $8::bigint[], $9::bigint[], "
      "$10::bigint[], $11::bigint[], $12::bigint[], $13::text[], "
      "$14::bigint[], $15::bigint[], $16::bigint[], $17::bigint[], "
      "$18::bigint[], $19::bigint[], $20::bigint[], $21::text[], "
      "$22::bigint[]) "
      "AS u(name, di, da, df, m, f, ou, pu, pa, pt, pf, ta, tg, rf, rou, "
      "rpu, rpa, rpt, rpf, rta, rtg, cap) "
      "WHERE r.name = u.name "
      "AND (u.di <= 0 OR u.cap = 0 OR r.inflight + u.di <= u.cap) "
      "AND (u.m & 1 = 0 OR r.failures = u.rf) "
      "AND (u.m & 2 = 0 OR r.open_until_ms = u.rou) "
      "AND (u.m & 4 = 0 OR r.probe_until_ms = u.rpu) "
      "AND (u.m & 8 = 0 OR r.paused_until_ms = u.rpa) "
      "AND (u.m & 16 = 0 OR r.probe_token = u.rpt) "
      "AND (u.m & 32 = 0 OR r.provider_failures = u.rpf) "
      "AND (u.m & 64 = 0 OR r.timeout_accounts = u.rta) "
      "AND (u.m & 128 = 0 OR r.timeout_org = u.rtg) "
      "RETURNING 1) "
      "SELECT mr_conflict(count(*) = $23::bigint) FROM d", 0 },

    /* ---- reads grouped */

    { "mr_auths",
      MR_SQL_AUTH_READ
      "WHERE k.hash = ANY (ARRAY(SELECT decode(h, 'hex') "
      "FROM unnest($1::text[]) h))", 0 },

    /*
     * the next due after a claim's time, read with its candidates: the
     * index is entered at that time, past the entries of the rows that
     * were due and changed since the last VACUUM (mr_disp_next reads
     * through those); one entry, as mr_disp_next
     */
    { "mr_disp_after",
      "SELECT next_ms FROM mr_executions WHERE next_ms > $1 "
      "ORDER BY next_ms LIMIT 1", 0 },

    /*
     * executions without some of their parts (MR_PARTS_*): the
     * dispatch's watch of its attempts in flight, every 200 ms, reads
     * their status and lease; the API shows no input
     */
    { "mr_execs_state",
      "SELECT " MR_EXEC_COLS_STATE " FROM mr_executions "
      "WHERE id = ANY($1::text[])", 0 },

    { "mr_exec_shown",
      "SELECT " MR_EXEC_COLS_SHOWN " FROM mr_executions WHERE id = $1", 0 },

    { "mr_execs_shown",
      "SELECT " MR_EXEC_COLS_SHOWN " FROM mr_executions "
      "WHERE id = ANY($1::text[])", 0 },

    /*
     * the endpoints a batch may change: named ($1), or those of the
     * deliveries whose outcomes it records ($2); locked in the order of
     * their ids, after the deliveries, before the routes and accounts
     */
    { "mr_lock_endpoints",
      "SELECT " MR_WH_COLS " FROM mr_endpoints WHERE id = ANY (ARRAY("
      "SELECT unnest($1::text[]) "
      "UNION SELECT wh_id FROM mr_deliveries "
      "WHERE id = ANY (ARRAY(SELECT unnest($2::text[]))))) "
      "ORDER BY id FOR UPDATE", 0 },

    /*
     * the sweep's old events, locked: of two sweepers that read the same
     * ones, the second gets those the first has not deleted, and frees
     * their bytes from their accounts once, not twice
     */
    { "mr_lock_events",
      "SELECT id, org, body FROM mr_events WHERE id = ANY($1::text[]) "
      "ORDER BY id FOR UPDATE", 0 },

    /*
     * due for dispatch, a head of $2 rows as mr_disp_due, and at most $4
     * after it and after $3 (the due time where the last look past the
     * head stopped: mr_pg_ops_candidates()), with those due at the same
     * time as its last (WITH TIES: the next look starts after that time,
     * and skips none); the rows due when the head's last is and not in it
     * first.  The head's rows come first (an Append keeps its inputs'
     * order), the last column tells the two apart.  Both read the index
     * of due rows in its order.
     */
    { "mr_disp_due_past",
      "WITH h AS MATERIALIZED (SELECT " MR_DISP_DUE_COLS " FROM mr_executions "
      "WHERE next_ms IS NOT NULL AND next_ms <= $1 "
      "ORDER BY next_ms LIMIT $2), "
      "s AS (SELECT max(next_ms) AS m FROM h) "
      "SELECT *, 0 FROM h UNION ALL "
      "(SELECT " MR_DISP_DUE_COLS ", 1 FROM mr_executions "
      "WHERE next_ms IS NOT NULL AND next_ms <= $1 "
      "AND next_ms >= greatest($3::bigint + 1, (SELECT m FROM s)) "
      "AND (next_ms > (SELECT m FROM s) OR id <> ALL (ARRAY("
      "SELECT id FROM h WHERE next_ms = (SELECT m FROM s)))) "
      "ORDER BY next_ms FETCH FIRST $4 ROWS WITH TIES)", 0 },

    /*
     * the health answer's look at the store: its size only (mr_stats
     * reads every open execution; a balancer asks every second or so)
     */
    { "mr_db_size",
      "SELECT pg_database_size(current_database())", 0 },

    /*
     * before a claim's candidates, until its request's end (an implicit
     * transaction, to its sync): no plan but the index's order (a sort,
     * or a bitmap scan, reads every due row to return the first ones)
     */
    { "mr_in_order",
      "SELECT set_config('enable_sort', 'off', true), "
      "set_config('enable_bitmapscan', 'off', true)", 0 },
};


ngx_uint_t  mr_pg_nstmts = sizeof(mr_pg_stmts) / sizeof(mr_pg_stmt_t);

/* every MR_SQL_* names its statement: the build fails otherwise */
typedef char  mr_pg_stmts_named[(sizeof(mr_pg_stmts) / sizeof(mr_pg_stmt_t)
                                 == MR_SQL_N) ? 1 : -1];
