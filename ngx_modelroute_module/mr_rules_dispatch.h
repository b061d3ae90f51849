
/*
 * ModelRoute: the rules of dispatch (mr_rules_dispatch.c): pure functions
 * for every store backend; see mr_rules.h.
 */


#ifndef _MR_RULES_DISPATCH_H_INCLUDED_
#define _MR_RULES_DISPATCH_H_INCLUDED_


#include <ngx_config.h>
#include <ngx_core.h>

#include "ngx_http_modelroute_module.h"
#include "mr_store.h"


#define MR_DISP_LEASE_PAD      2000   /* lease = attempt timeout + this */
#define MR_DISP_BACKOFF        250    /* first backoff, doubled per round */
#define MR_DISP_BACKOFF_MAX    30000


/* a route's state, as the backend has it (0, or the backend's error) */
typedef int (*mr_rule_route_get_pt)(void *data, mr_route_t *route,
    mr_route_state_t *st);

#define MR_DISP_LEAVE      1      /* terminal, or waits for a callback */
#define MR_DISP_SWEEP      2      /* past its deadline: the sweeper's */
#define MR_DISP_GO         3      /* an attempt may be made */
#define MR_DISP_FAIL       4      /* it fails now: code, message */

ngx_uint_t mr_rule_disp_due(mr_exec_t *exec, int64_t now);
ngx_uint_t mr_rule_disp_model(mr_main_conf_t *mcf, mr_exec_t *exec,
    mr_model_t **m, const char **code, ngx_str_t *msg);
int mr_rule_disp_pick(mr_model_t *m, mr_exec_rec_t *rec, int64_t now,
    mr_rule_route_get_pt get, void *data, mr_route_t **route,
    mr_route_state_t *st, ngx_uint_t *half);
ngx_uint_t mr_rule_disp_waits(mr_main_conf_t *mcf, mr_exec_rec_t *rec,
    ngx_str_t *slug, int64_t now, mr_rule_route_get_pt get, void *data);
void mr_rule_disp_no_route(int why, const char **code, ngx_str_t *msg);
void mr_rule_disp_take(mr_route_state_t *st, mr_route_t *route,
    ngx_uint_t half, uint64_t token, int64_t now);
ngx_uint_t mr_rule_disp_start(mr_exec_t *exec, int64_t now);
void mr_rule_disp_lease(mr_exec_t *exec, mr_route_t *route, uint64_t token,
    int64_t now);
ngx_uint_t mr_rule_disp_unanswered(mr_exec_t *exec, const char **outcome,
    const char **code);
void mr_rule_disp_release(mr_route_state_t *st, uint64_t lease_owner);
ngx_uint_t mr_rule_disp_late(mr_exec_t *exec, uint64_t token, int64_t now);
const char *mr_rule_disp_outcome(ngx_uint_t outcome);
ngx_uint_t mr_rule_disp_answered(mr_disp_op_t *d);
void mr_rule_disp_lease_end(mr_main_conf_t *mcf, mr_route_state_t *st,
    mr_exec_t *exec, mr_store_op_t *op, ngx_uint_t outcome,
    ngx_uint_t breaker, ngx_uint_t answered);
void mr_rule_disp_accepted(mr_exec_t *exec, mr_disp_op_t *d);
ngx_uint_t mr_rule_disp_retry(mr_model_t *m, mr_exec_t *exec,
    mr_disp_op_t *d, int64_t now, int64_t *next);
ngx_uint_t mr_rule_callback_check(mr_store_op_t *op, mr_exec_t *exec);
ngx_uint_t mr_rule_callback_current(mr_store_op_t *op, mr_exec_t *exec);
int mr_rule_attempt(mr_exec_t *exec, int64_t end, const char *outcome,
    const char *code, ngx_uint_t status, ngx_str_t *job_id, u_char **buf);
int mr_rule_callback_attempts(mr_store_op_t *op, mr_exec_t *exec,
    u_char **buf);

#endif /* _MR_RULES_DISPATCH_H_INCLUDED_ */
