
/*
 * ModelRoute: the rules of webhooks (mr_rules_webhook.c): pure functions
 * for every store backend; see mr_rules.h.
 */


#ifndef _MR_RULES_WEBHOOK_H_INCLUDED_
#define _MR_RULES_WEBHOOK_H_INCLUDED_


#include <ngx_config.h>
#include <ngx_core.h>

#include "ngx_http_modelroute_module.h"
#include "mr_store.h"


#define MR_WH_TEST_SIZE        1024   /* about what a test event keeps */
#define MR_WH_FAILURES_MAX     10     /* failed deliveries in a row */
#define MR_DLV_ATTEMPTS        16     /* attempts a delivery keeps */


ngx_int_t mr_rule_tid(u_char *dst, const char *prefix, int64_t ms);
int64_t mr_rule_id_ms(u_char *p);
void mr_rule_dlv_after(u_char *last, u_char *id);
int64_t mr_rule_dlv_wait_due(int64_t earlier_due, ngx_uint_t earlier_leased,
    int64_t now);
ngx_int_t mr_rule_wh_wants(mr_wh_t *wh, ngx_str_t *type);
ngx_uint_t mr_rule_emit_kept(mr_exec_t *exec, ngx_uint_t endpoints);
ngx_int_t mr_rule_event_body(u_char *event_id, u_char *org,
    ngx_str_t *type, u_char *exec_id, ngx_str_t *data, int64_t now,
    ngx_pool_t *pool, ngx_str_t *body);
void mr_rule_dlv_init(mr_dlv_t *dlv, u_char *event_id, u_char *org,
    u_char *wh_id, ngx_str_t *url, u_char *exec_id, ngx_str_t *type,
    int64_t now);
void mr_rule_dlv_target(mr_dlv_t *dlv, u_char *target);
void mr_rule_wh_patch(mr_store_op_t *op, mr_wh_t *wh, int64_t *grow);
void mr_rule_wh_active(mr_store_op_t *op, mr_wh_t *wh);
ngx_uint_t mr_rule_dlv_retry(mr_dlv_t *dlv, int64_t now);
void mr_rule_dlv_park(mr_dlv_t *dlv);
ngx_uint_t mr_rule_dlv_late(mr_store_op_t *op, mr_dlv_t *dlv);
ngx_uint_t mr_rule_dlv_expired(mr_main_conf_t *mcf, mr_dlv_t *dlv,
    int64_t now);
ngx_uint_t mr_rule_dlv_busy(mr_store_op_t *op, u_char *key, size_t len);
int mr_rule_dlv_done(mr_store_op_t *op, mr_dlv_t *dlv, mr_wh_t *wh,
    ngx_pool_t *pool);
ngx_uint_t mr_rule_event_kept(mr_store_op_t *op, int64_t created);

#endif /* _MR_RULES_WEBHOOK_H_INCLUDED_ */
