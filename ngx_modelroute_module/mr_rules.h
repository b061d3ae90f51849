
/*
 * ModelRoute: the domain rules, once for every store backend.
 *
 * Pure functions on plain records (mr_exec_t, mr_account_t, mr_quota_t,
 * mr_key_t, mr_route_state_t, mr_wh_t, mr_dlv_t): the state transitions of
 * an execution, the hold and settle arithmetic and the ledger, the
 * idempotency decision, the account limits (what counts, the checks),
 * keys and their rotation, the dispatch decisions (routes, breaker,
 * concurrency caps, backoff, late answers), and the webhook rules (which
 * endpoints get an event, retry schedule, endpoint deactivation, ordered
 * delivery ids).  They never touch storage: a backend reads the records,
 * calls them, and writes what they changed, in one transaction.
 *
 * mr_rules.c: executions, ledger, limits, keys (this header, which
 * includes the others); mr_rules_dispatch.c: dispatch
 * (mr_rules_dispatch.h); mr_rules_webhook.c: webhooks
 * (mr_rules_webhook.h).  They may run in a thread of the commit pool:
 * malloc'ed memory and OpenSSL's RAND_bytes() only.
 */


#ifndef _MR_RULES_H_INCLUDED_
#define _MR_RULES_H_INCLUDED_


#include <ngx_config.h>
#include <ngx_core.h>

#include "ngx_http_modelroute_module.h"
#include "mr_store.h"
#include "mr_rules_dispatch.h"
#include "mr_rules_webhook.h"


/*
 * What a record costs its account in stored bytes: its key and value (as
 * the LMDB store lays them out, the measure on every backend), plus a
 * fixed allowance for the index entries that go with it.
 */
#define MR_USAGE_EXEC          256    /* byorg, idem, idemttl, due, disp */
#define MR_USAGE_EVENT         64
#define MR_USAGE_DLV           192    /* dlvq, whdlv, execdlv */
#define MR_USAGE_WH            64     /* orgwh */
#define MR_USAGE_KEY           160    /* keyhash, acctkey, keyend */


#define MR_STORE_EXPIRE_RETRY  10000  /* ms: an expiry that did not fit */



/* ---- executions, ledger, limits, keys (mr_rules.c) */

ngx_uint_t mr_rule_idem_live(int64_t bound_ms, int64_t ttl_ms,
    int64_t now_ms);
void mr_rule_idem_replay(mr_store_op_t *op, mr_exec_t *old);
ngx_uint_t mr_rule_hold(mr_store_op_t *op, mr_account_t *acct,
    int64_t hold);

size_t mr_rule_exec_size(mr_exec_t *exec);
size_t mr_rule_exec_bytes(mr_exec_t *exec);
size_t mr_rule_key_size(mr_key_t *key);
size_t mr_rule_wh_size(mr_wh_t *wh);
size_t mr_rule_wh_bytes(mr_wh_t *wh);
size_t mr_rule_dlv_bytes(mr_dlv_t *dlv);
size_t mr_rule_event_bytes(size_t body_len);
void mr_rule_quota_init(mr_quota_t *q);
ngx_uint_t mr_rule_quota_check(mr_main_conf_t *mcf, mr_quota_t *q,
    mr_store_op_t *op, int64_t bytes, ngx_uint_t which, int64_t count);
void mr_rule_usage(mr_quota_t *q, int64_t bytes, ngx_uint_t which,
    int64_t count);
void mr_rule_account_quota(mr_store_op_t *op);
void mr_rule_account_limits(mr_store_op_t *op);

ngx_uint_t mr_rule_cancel_check(mr_store_op_t *op, mr_exec_t *exec);
void mr_rule_cancel(mr_exec_t *exec, mr_account_t *acct, int64_t now);
void mr_rule_expire(mr_exec_t *exec, mr_account_t *acct, int64_t now);
int64_t mr_rule_settle(mr_exec_t *exec, mr_account_t *acct, int64_t cost,
    ngx_str_t *result, int64_t now);
ngx_int_t mr_rule_fail(mr_exec_t *exec, mr_account_t *acct,
    const char *code, ngx_str_t *message, int64_t now, char **err);
const char *mr_rule_retryable(const char *code);

ngx_uint_t mr_rule_credit_replay(mr_store_op_t *op, int64_t prev);
ngx_uint_t mr_rule_adjust(mr_store_op_t *op, mr_account_t *acct,
    ngx_int_t room);

ngx_uint_t mr_rule_key_active(mr_key_rec_t *rec);
ngx_uint_t mr_rule_key_revoke(mr_store_op_t *op, mr_key_t *key);
ngx_uint_t mr_rule_key_rotate_check(mr_store_op_t *op, mr_key_t *old);
ngx_uint_t mr_rule_key_caller(mr_store_op_t *op, mr_key_t *caller);
ngx_uint_t mr_rule_key_rotated(mr_store_op_t *op, mr_key_t *old);
int64_t mr_rule_key_rotate(mr_store_op_t *op);


#endif /* _MR_RULES_H_INCLUDED_ */
