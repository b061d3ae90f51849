
/*
 * ModelRoute: the PostgreSQL store's statements (mr_store_pg_sql.c),
 * prepared on every connection; the columns of its rows, in the order
 * the parsers read them (mr_store_pg_rows.c).
 */


#ifndef _MR_STORE_PG_SQL_H_INCLUDED_
#define _MR_STORE_PG_SQL_H_INCLUDED_


/* ---- reads */
#define MR_SQL_AUTH              0
#define MR_SQL_ACCOUNT           1
#define MR_SQL_KEYS              2
#define MR_SQL_EXEC              3
#define MR_SQL_EXECS             4
#define MR_SQL_LIST_CURSOR       5
#define MR_SQL_LIST              6
#define MR_SQL_VERIFY            7
#define MR_SQL_WH                8
#define MR_SQL_WH_LIST           9
#define MR_SQL_OWNER_WH         10
#define MR_SQL_OWNER_EXEC       11
#define MR_SQL_DLV_BY_WH        12
#define MR_SQL_DLV_BY_EXEC      13
#define MR_SQL_SECRET           14
#define MR_SQL_CBKEY            15
#define MR_SQL_DISP_NEXT        16
#define MR_SQL_STATS            17
#define MR_SQL_ROUTES           18
#define MR_SQL_ACCOUNTS         19
#define MR_SQL_FAILED_DLVS      20
#define MR_SQL_BATCH_DONE       21

/* ---- a batch: locks and loads */
#define MR_SQL_BEGIN            22
#define MR_SQL_LOCK_ACCOUNTS    23
#define MR_SQL_LOCK_EXECS       24
#define MR_SQL_IDEM             25
#define MR_SQL_KEYS_BY_ID       26
#define MR_SQL_ENDPOINTS        27
#define MR_SQL_LOCK_DLVS        28
#define MR_SQL_LOCK_ROUTES      29
#define MR_SQL_WHSECRETS        30
#define MR_SQL_CREDIT_REFS      31
#define MR_SQL_ACCOUNTS_EXIST   32

/* ---- claims and the sweep: candidates, then locks */
#define MR_SQL_DISP_DUE         33
#define MR_SQL_LOCK_DUE_EXECS   34
#define MR_SQL_DLV_DUE          35
#define MR_SQL_LOCK_DUE_DLVS    36
#define MR_SQL_EXPIRE_DUE       37
#define MR_SQL_LOCK_EXPIRED     38
#define MR_SQL_PURGE_EXECS      39
#define MR_SQL_PURGE_DLVS       40
#define MR_SQL_PURGE_EVENTS     41
#define MR_SQL_PURGE_KEYS       42
#define MR_SQL_PURGE_IDEM       43
#define MR_SQL_PURGE_BATCHES    44
#define MR_SQL_EVENTS_BY_ID     45
#define MR_SQL_DLV_EARLIER      46

/* ---- a batch: writes */
#define MR_SQL_W_EXECS          47
#define MR_SQL_W_ACCOUNTS       48
#define MR_SQL_W_ACCOUNT_NEW    49
#define MR_SQL_W_IDEM           50
#define MR_SQL_W_KEYS           51
#define MR_SQL_W_ROUTES         52
#define MR_SQL_W_ENDPOINTS      53
#define MR_SQL_W_WHSECRETS      54
#define MR_SQL_W_CREDIT_REFS    55
#define MR_SQL_W_EVENTS         56
#define MR_SQL_W_DLVS           57
#define MR_SQL_W_OPS            58
#define MR_SQL_D_EXECS          59
#define MR_SQL_D_IDEM           60
#define MR_SQL_D_KEYS           61
#define MR_SQL_D_ENDPOINTS      62
#define MR_SQL_D_EVENTS         63
#define MR_SQL_D_DLVS           64
#define MR_SQL_W_BATCH          65
#define MR_SQL_COMMIT           66
#define MR_SQL_ROLLBACK         67

#define MR_SQL_BATCH_LOCK       68

/* ---- batches of creates: the accounts read, then changed by deltas */
#define MR_SQL_ACCOUNTS_SNAP    69
#define MR_SQL_LOCK_ACCOUNT_IDS 70
#define MR_SQL_W_ACCOUNTS_DELTA 71
#define MR_SQL_W_IDEM_NEW       72
#define MR_SQL_W_IDEM_SWAP      73

/* ---- dispatch batches: the routes read, then changed by deltas */
#define MR_SQL_ROUTES_SNAP      74
#define MR_SQL_LOCK_ROUTE_NAMES 75
#define MR_SQL_W_ROUTES_DELTA   76

/* ---- reads grouped: keys by their hashes */
#define MR_SQL_AUTHS            77

/* ---- a dispatch claim: when the next is due after the ones it read */
#define MR_SQL_DISP_AFTER       78

/* ---- executions without some of their parts (MR_PARTS_*) */
#define MR_SQL_EXECS_STATE      79
#define MR_SQL_EXEC_SHOWN       80
#define MR_SQL_EXECS_SHOWN      81

/* ---- a batch: the endpoints it may change, locked */
#define MR_SQL_LOCK_ENDPOINTS   82

/* ---- the sweep: old events, locked */
#define MR_SQL_LOCK_EVENTS      83

/* ---- a dispatch claim: its look past the head of the due queue */
#define MR_SQL_DISP_DUE_PAST    84

/* ---- the health answer: the database's size */
#define MR_SQL_DB_SIZE          85

/* ---- a claim's candidates: read in the order of their index */
#define MR_SQL_IN_ORDER         86

#define MR_SQL_N                87


/* the columns of a row, by position */

/*
 * An execution: its record's columns, then its segments from
 * MR_EXEC_SEG0 on, in MR_SEG_* order, and its last delivery; the
 * variants leave some segments '' (MR_PARTS_*)
 */
#define MR_EXEC_COLS_REC                                                      \
    "id, org, status, estimate, hold, cost, created_ms, expires_ms, "         \
    "started_ms, completed_ms, lease_until_ms, lease_owner, "                 \
    "coalesce(next_ms, 0), ord, attempt_ms, nattempts, route, fingerprint, "
#define MR_EXEC_COLS_AFTER                                                    \
    "result, error, attempts, coalesce(last_dlv, '')"

#define MR_EXEC_COLS                                                          \
    MR_EXEC_COLS_REC "model, idem_key, metadata, webhook_url, input, "        \
    MR_EXEC_COLS_AFTER
#define MR_EXEC_NCOLS            27

/* the same without the input (MR_PARTS_SHOWN) */
#define MR_EXEC_COLS_SHOWN                                                    \
    MR_EXEC_COLS_REC "model, idem_key, metadata, webhook_url, '', "           \
    MR_EXEC_COLS_AFTER

/* the same with every segment '' (MR_PARTS_STATE) */
#define MR_EXEC_COLS_STATE                                                    \
    MR_EXEC_COLS_REC "'', '', '', '', '', '', '', '', coalesce(last_dlv, '')"

/*
 * The same for a batch's locks of executions: one not ended comes without
 * its input ('' in its place; the batch writes it back as "-", kept:
 * MR_SQL_W_EXECS), and with the input's length in one more column (-1
 * for an ended one, which comes whole: it has no input since
 * mr_rule_end()).  No rule reads an input; a provider's request and a
 * callback's cost do, from reads of their own (MR_SQL_EXECS, MR_SQL_EXEC):
 * a claim and an outcome carried it twice each.
 */
#define MR_EXEC_COLS_LOCKED                                                   \
    MR_EXEC_COLS_REC "model, idem_key, metadata, webhook_url, "               \
    "CASE WHEN status < 4 THEN '' ELSE input END, " MR_EXEC_COLS_AFTER ", "   \
    "CASE WHEN status < 4 THEN octet_length(input) ELSE -1 END"
#define MR_EXEC_SEG0             18     /* model: the first segment */

#define MR_ACCT_COLS                                                          \
    "org, name, balance, held, credited, debited, charged, created_ms, "      \
    "used_bytes, used_executions, used_endpoints, used_keys, limit_bytes, "   \
    "limit_executions, limit_endpoints, limit_keys, "                         \
    "coalesce(rl_requests, -1)"
#define MR_ACCT_NCOLS            17

#define MR_KEY_COLS                                                           \
    "key_id, org, hash, hint, permission, revoked::int, created_ms, "         \
    "valid_until_ms, name, coalesce(end_ms, 0)"
#define MR_KEY_NCOLS             10

#define MR_WH_COLS                                                            \
    "id, org, active::int, failures, created_ms, last_success_ms, url, "      \
    "description, events, headers, secret"
#define MR_WH_NCOLS              11

#define MR_DLV_COLS                                                           \
    "id, event_id, coalesce(wh_id, ''), org, coalesce(exec_id, ''), "        \
    "status, attempts, created_ms, coalesce(due_ms, 0), next_ms, token, "     \
    "url, type, attempt_log, target"
#define MR_DLV_NCOLS             15

#define MR_ROUTE_COLS                                                         \
    "name, inflight, failures, open_until_ms, probe_until_ms, "               \
    "paused_until_ms, attempts, failed, probe_token, provider_failures, "     \
    "timeout_accounts, timeout_org"
#define MR_ROUTE_NCOLS           12

/* a due execution, as a claim's candidate (then 0: the head, 1: past it) */
#define MR_DISP_DUE_COLS                                                      \
    "id, org, status, lease_owner, expires_ms, nattempts, model, next_ms"


#endif /* _MR_STORE_PG_SQL_H_INCLUDED_ */
