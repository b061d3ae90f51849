
/*
 * ModelRoute: the rules of executions, the ledger, the account limits and
 * the keys (see mr_rules.h): pure functions, for every store backend.
 */


#include <ngx_config.h>
#include <ngx_core.h>

#include <jansson.h>

#include "mr_store.h"
#include "mr_rules.h"
#include "mr_limits.h"


static void mr_rule_end(mr_exec_t *exec, uint32_t status, int64_t now);


/* ---- creating an execution */

/* whether an idempotency key bound at bound_ms still binds at now_ms */

ngx_uint_t
mr_rule_idem_live(int64_t bound_ms, int64_t ttl_ms, int64_t now_ms)
{
    return bound_ms + ttl_ms > now_ms;
}


/* the key is bound to old: the same request replays, another is refused */

void
mr_rule_idem_replay(mr_store_op_t *op, mr_exec_t *old)
{
    if (!mr_memeq_ct(old->rec.fingerprint, op->exec.rec.fingerprint,
                     MR_SHA256_LEN))
    {
        op->result = MR_R_IDEM_REUSED;
        return;
    }

    op->replay = *old;
    op->result = MR_R_REPLAYED;
}


/* the hold is placed if the available balance covers it */

ngx_uint_t
mr_rule_hold(mr_store_op_t *op, mr_account_t *acct, int64_t hold)
{
    if (acct->rec.balance - acct->rec.held < hold) {
        op->result = MR_R_INSUFFICIENT;
        op->required = hold;
        op->available = acct->rec.balance - acct->rec.held;
        return 0;
    }

    acct->rec.held += hold;

    return 1;
}


/* ---- what an account keeps */

/* what a new execution will cost its account in stored bytes */

size_t
mr_rule_exec_size(mr_exec_t *exec)
{
    size_t      size;
    ngx_uint_t  i;

    size = sizeof(mr_exec_rec_t) + MR_EXEC_ID_LEN + MR_USAGE_EXEC;

    for (i = 0; i < MR_SEG_N; i++) {
        size += exec->seg[i].len;
    }

    return size;
}


/* an execution's record: its header and segments (the key not counted) */

size_t
mr_rule_exec_bytes(mr_exec_t *exec)
{
    size_t      size;
    ngx_uint_t  i;

    size = sizeof(mr_exec_rec_t);

    for (i = 0; i < MR_SEG_N; i++) {
        size += exec->seg[i].len;
    }

    return size;
}


/* a key, with its index entries */

size_t
mr_rule_key_size(mr_key_t *key)
{
    return sizeof(mr_key_rec_t) + key->name.len + MR_KEY_ID_LEN
           + MR_USAGE_KEY;
}


/* a new endpoint, with its index entries */

size_t
mr_rule_wh_size(mr_wh_t *wh)
{
    return mr_rule_wh_bytes(wh) + MR_WH_ID_LEN + MR_USAGE_WH;
}


/* an endpoint's record: its header and segments */

size_t
mr_rule_wh_bytes(mr_wh_t *wh)
{
    size_t      size;
    ngx_uint_t  i;

    size = sizeof(mr_wh_rec_t);

    for (i = 0; i < MR_WH_SEG_N; i++) {
        size += wh->seg[i].len;
    }

    return size;
}


/* a delivery's record: its header and segments */

size_t
mr_rule_dlv_bytes(mr_dlv_t *dlv)
{
    size_t      size;
    ngx_uint_t  i;

    size = sizeof(mr_dlv_rec_t);

    for (i = 0; i < MR_DLV_SEG_N; i++) {
        size += dlv->seg[i].len;
    }

    return size;
}


/* an event's record: its account and its body */

size_t
mr_rule_event_bytes(size_t body_len)
{
    return MR_ORG_ID_LEN + body_len;
}


/* an account's quota before anything: nothing used, the default limits */

void
mr_rule_quota_init(mr_quota_t *q)
{
    ngx_uint_t  i;

    ngx_memzero(q, sizeof(mr_quota_t));

    for (i = 0; i < MR_LIMIT_N; i++) {
        q->limit[i] = -1;
    }
}


/*
 * Whether the account may keep bytes more and count more of which; if
 * not, op->result says which limit, its value and the use.
 */

ngx_uint_t
mr_rule_quota_check(mr_main_conf_t *mcf, mr_quota_t *q, mr_store_op_t *op,
    int64_t bytes, ngx_uint_t which, int64_t count)
{
    int64_t     limit;
    ngx_uint_t  ok;

    ok = 1;

    if (count > 0) {
        limit = mr_limit_of(mcf, q, which);

        if (q->used[which] + count > limit) {
            ok = 0;
            op->quota_which = which;
            op->quota_limit = limit;
            op->quota_used = q->used[which];
        }
    }

    if (ok && bytes > 0) {
        limit = mr_limit_of(mcf, q, MR_LIMIT_BYTES);

        if (q->used[MR_LIMIT_BYTES] + bytes > limit) {
            ok = 0;
            op->quota_which = MR_LIMIT_BYTES;
            op->quota_limit = limit;
            op->quota_used = q->used[MR_LIMIT_BYTES];
        }
    }

    if (!ok) {
        op->result = MR_R_ACCOUNT_LIMIT;
    }

    return ok;
}


/* adds to an account's use: stored bytes, and one of its counts */

void
mr_rule_usage(mr_quota_t *q, int64_t bytes, ngx_uint_t which, int64_t count)
{
    q->used[MR_LIMIT_BYTES] += bytes;
    q->used[which] += count;
}


/* a new account's quota: nothing used, the limits asked for or defaults */

void
mr_rule_account_quota(mr_store_op_t *op)
{
    ngx_uint_t  i;

    ngx_memzero(&op->quota, sizeof(mr_quota_t));

    for (i = 0; i < MR_LIMIT_N; i++) {
        op->quota.limit[i] = (op->quota_mask & (1 << i)) ? op->quota_set[i]
                                                         : -1;
    }
}


/* the operator sets an account's limits (op->quota, read) */

void
mr_rule_account_limits(mr_store_op_t *op)
{
    ngx_uint_t  i;

    for (i = 0; i < MR_LIMIT_N; i++) {
        if (op->quota_mask & (1 << i)) {
            op->quota.limit[i] = op->quota_set[i];
        }
    }
}


/* ---- ending an execution */

/* whether the caller's account may cancel it, and it can be cancelled */

ngx_uint_t
mr_rule_cancel_check(mr_store_op_t *op, mr_exec_t *exec)
{
    if (ngx_memcmp(exec->rec.org, op->org, MR_ORG_ID_LEN) != 0) {
        op->result = MR_R_NOT_FOUND;
        return 0;
    }

    if (exec->rec.status == MR_CANCELLED) {
        op->result = MR_R_NOOP;
        return 0;
    }

    if (mr_status_terminal(exec->rec.status)) {
        op->result = MR_R_TERMINAL;
        return 0;
    }

    return 1;
}


/*
 * An execution ends: its terminal status, when, and no input any more.
 * Only providers read the input (the execution object does not show it),
 * and a terminal execution is never sent again; so an ended execution
 * keeps only what it shows, and the write that releases its hold
 * (expiry, cancel, outcome) is small: it fits in a full store whose free
 * room is scattered (a large record needs it in one run, on LMDB).
 */

static void
mr_rule_end(mr_exec_t *exec, uint32_t status, int64_t now)
{
    exec->rec.status = status;
    exec->rec.completed_ms = ngx_max(now, exec->rec.created_ms);
    exec->seg[MR_SEG_INPUT].len = 0;
}


/* CANCELLED: the whole hold released, nothing charged */

void
mr_rule_cancel(mr_exec_t *exec, mr_account_t *acct, int64_t now)
{
    acct->rec.held -= exec->rec.hold;

    exec->rec.cost = 0;
    mr_rule_end(exec, MR_CANCELLED, now);
}


/* EXPIRED, past its deadline: the whole hold released */

void
mr_rule_expire(mr_exec_t *exec, mr_account_t *acct, int64_t now)
{
    static ngx_str_t  error = ngx_string(
        "{\"code\":\"GENERATION_TIMEOUT\",\"message\":\"the execution "
        "expired before a result\",\"retryable\":true}");

    acct->rec.held -= exec->rec.hold;

    exec->rec.cost = 0;
    exec->seg[MR_SEG_ERROR] = error;
    mr_rule_end(exec, MR_EXPIRED, now);
}


/*
 * COMPLETED: the hold settles to the cost (-1: the estimate), never more
 * than the hold; returns the cost charged
 */

int64_t
mr_rule_settle(mr_exec_t *exec, mr_account_t *acct, int64_t cost,
    ngx_str_t *result, int64_t now)
{
    if (cost < 0) {
        cost = exec->rec.estimate;
    }

    cost = ngx_min(cost, exec->rec.hold);

    acct->rec.held -= exec->rec.hold;
    acct->rec.balance -= cost;
    acct->rec.charged += cost;

    exec->rec.cost = cost;
    exec->seg[MR_SEG_RESULT] = *result;
    exec->seg[MR_SEG_ERROR].len = 0;
    mr_rule_end(exec, MR_COMPLETED, now);

    return cost;
}


/*
 * FAILED: the whole hold released, nothing charged; the error object is
 * in *err (free() it once the execution is written)
 */

ngx_int_t
mr_rule_fail(mr_exec_t *exec, mr_account_t *acct, const char *code,
    ngx_str_t *message, int64_t now, char **err)
{
    json_t  *j;

    acct->rec.held -= exec->rec.hold;

    j = json_pack("{s:s, s:s#, s:b}", "code", code,
                  "message", message->len ? (char *) message->data : "",
                  (int) message->len,
                  "retryable", mr_rule_retryable(code) != NULL);
    if (j == NULL) {
        /* not UTF-8, say: the code alone */
        j = json_pack("{s:s, s:s, s:b}", "code", code, "message", "",
                      "retryable", mr_rule_retryable(code) != NULL);
        if (j == NULL) {
            return NGX_ERROR;
        }
    }

    *err = json_dumps(j, JSON_COMPACT);
    json_decref(j);

    if (*err == NULL) {
        return NGX_ERROR;
    }

    exec->rec.cost = 0;
    exec->seg[MR_SEG_ERROR].data = (u_char *) *err;
    exec->seg[MR_SEG_ERROR].len = ngx_strlen(*err);
    mr_rule_end(exec, MR_FAILED, now);

    return NGX_OK;
}


const char *
mr_rule_retryable(const char *code)
{
    static const char  *codes[] = {
        "RATE_LIMITED", "GENERATION_FAILED", "MODEL_OVERLOADED",
        "MODEL_UNAVAILABLE", "SERVICE_UNAVAILABLE", "GENERATION_TIMEOUT",
        "STORAGE_FULL", NULL
    };

    ngx_uint_t  i;

    for (i = 0; codes[i]; i++) {
        if (ngx_strcmp(code, codes[i]) == 0) {
            return codes[i];
        }
    }

    return NULL;
}


/* ---- credits and debits */

/* a credit reference used before (for prev): the same amount replays */

ngx_uint_t
mr_rule_credit_replay(mr_store_op_t *op, int64_t prev)
{
    op->result = (prev == op->amount) ? MR_R_REPLAYED : MR_R_IDEM_REUSED;

    return op->result;
}


/*
 * A credit (amount >= 0) or a debit of op->amount: applied to the
 * account, or refused in op->result (1: applied)
 */

ngx_uint_t
mr_rule_adjust(mr_store_op_t *op, mr_account_t *acct, ngx_int_t room)
{
    if (!room && op->amount > 0) {
        op->result = MR_R_STORAGE_FULL;
        return 0;
    }

    if (op->amount >= 0) {
        if (acct->rec.balance + op->amount > MR_MONEY_MAX
            || acct->rec.credited > MR_LEDGER_MAX - op->amount)
        {
            op->result = MR_R_LIMIT;
            return 0;
        }

        acct->rec.balance += op->amount;
        acct->rec.credited += op->amount;

        return 1;
    }

    if (acct->rec.debited > MR_LEDGER_MAX + op->amount) {
        op->result = MR_R_LIMIT;
        return 0;
    }

    if (acct->rec.balance - acct->rec.held < -op->amount) {
        op->result = MR_R_INSUFFICIENT;
        op->required = -op->amount;
        op->available = acct->rec.balance - acct->rec.held;
        return 0;
    }

    acct->rec.balance += op->amount;
    acct->rec.debited -= op->amount;

    return 1;
}


/* ---- keys */

/* a key that authenticates, or will: counted in the "keys" limit */

ngx_uint_t
mr_rule_key_active(mr_key_rec_t *rec)
{
    return !rec->revoked && rec->valid_until_ms == 0;
}


/* revoked (1), or it was already (op->result MR_R_NOOP) */

ngx_uint_t
mr_rule_key_revoke(mr_store_op_t *op, mr_key_t *key)
{
    if (key->rec.revoked) {
        op->result = MR_R_NOOP;
        return 0;
    }

    key->rec.revoked = 1;

    return 1;
}


/*
 * A rotation, in order: the key must be of the caller's account and not
 * revoked (mr_rule_key_rotate_check()); the caller's own key, if any,
 * must be active (mr_rule_key_caller(), NULL: it is not there); a key
 * that was rotated cannot be rotated again (mr_rule_key_rotated()).  A
 * leaked key that its owner rotated does not get a successor of its own.
 */

ngx_uint_t
mr_rule_key_rotate_check(mr_store_op_t *op, mr_key_t *old)
{
    if (ngx_memcmp(old->rec.org, op->org, MR_ORG_ID_LEN) != 0
        || old->rec.revoked)
    {
        op->result = MR_R_NOT_FOUND;
        return 0;
    }

    return 1;
}


ngx_uint_t
mr_rule_key_caller(mr_store_op_t *op, mr_key_t *caller)
{
    if (caller == NULL || !mr_rule_key_active(&caller->rec)) {
        op->result = MR_R_FORBIDDEN;
        op->reason = "a key that was rotated or revoked cannot rotate "
                     "keys; use its successor";
        return 0;
    }

    return 1;
}


ngx_uint_t
mr_rule_key_rotated(mr_store_op_t *op, mr_key_t *old)
{
    if (old->rec.valid_until_ms) {
        op->result = MR_R_FORBIDDEN;
        op->reason = "this key was already rotated; rotate its successor";
        return 0;
    }

    return 1;
}


/* the new key (op->key) takes the old one's place; the old one ends */

int64_t
mr_rule_key_rotate(mr_store_op_t *op)
{
    int64_t  until;

    op->key.rec.permission = op->old_key.rec.permission;
    op->key.name = op->old_key.name;

    until = op->key.rec.created_ms + op->grace_ms;

    op->old_key.rec.valid_until_ms = until;

    return until;
}
