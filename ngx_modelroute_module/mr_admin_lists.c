
/*
 * ModelRoute: the admin API's lists for operators.
 *
 *   GET {admin}/accounts?limit=&starting_after=
 *       {"object": "list", "data": [accounts], "has_more"}: in the order
 *       of their ids, limit 1-100 (default 20)
 *
 *   GET {admin}/deliveries?limit=
 *       {"object": "list", "data": [deliveries], "scanned"}: the most
 *       recent webhook deliveries with a failed attempt (failed for good,
 *       or waiting for a retry), newest first, among the 2,048 most recent
 *       deliveries of all accounts; limit 1-100 (default 20)
 */


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>

#include "ngx_http_modelroute_module.h"
#include "mr_http.h"
#include "mr_ops.h"
#include "mr_admin.h"
#include "mr_admin_lists.h"
#include "mr_store_ops.h"


#define MR_LISTS_DEFAULT  20
#define MR_LISTS_MAX      100


static ngx_int_t mr_admin_lists_limit(ngx_http_request_t *r,
    ngx_uint_t *limit, json_t *details);
static json_t *mr_admin_lists_dlv(mr_dlv_t *dlv);
static void mr_admin_lists_read(mr_store_read_t *rd);
static ngx_int_t mr_admin_lists_got(ngx_http_request_t *r,
    mr_store_read_t *rd);
static ngx_int_t mr_admin_lists_accounts_got(ngx_http_request_t *r,
    mr_store_read_t *rd);
static ngx_int_t mr_admin_lists_deliveries_got(ngx_http_request_t *r,
    mr_store_read_t *rd);
static json_t *mr_admin_lists_raw(ngx_str_t *s);


static ngx_int_t
mr_admin_lists_limit(ngx_http_request_t *r, ngx_uint_t *limit,
    json_t *details)
{
    ngx_int_t  n;
    ngx_str_t  v;

    *limit = MR_LISTS_DEFAULT;

    if (mr_http_arg(r, "limit", &v) != NGX_OK) {
        return NGX_OK;
    }

    n = ngx_atoi(v.data, v.len);

    if (n < 1 || n > MR_LISTS_MAX) {
        mr_json_detail(details, "limit", "INVALID_VALUE",
                       "limit must be an integer from 1 to 100");
        return NGX_DECLINED;
    }

    *limit = n;

    return NGX_OK;
}


ngx_int_t
mr_admin_lists_accounts(ngx_http_request_t *r)
{
    json_t           *details;
    ngx_str_t         after;
    ngx_uint_t        limit;
    mr_store_read_t  *rd;

    details = json_array();

    (void) mr_admin_lists_limit(r, &limit, details);

    ngx_str_null(&after);

    if (mr_http_arg(r, "starting_after", &after) == NGX_OK
        && !mr_id_valid(&after, "org_", MR_ORG_ID_LEN))
    {
        mr_json_detail(details, "starting_after", "INVALID_VALUE",
                       "starting_after must be an account id");
    }

    if (json_array_size(details)) {
        return mr_http_error(r, MR_E_INPUT_VALIDATION,
                             "invalid list parameters", details);
    }

    json_decref(details);

    rd = mr_http_read_alloc(r, MR_READ_ACCOUNTS);
    if (rd == NULL) {
        return mr_http_error(r, MR_E_INTERNAL, "out of memory", NULL);
    }

    rd->after = after;
    rd->limit = limit;
    rd->list = ngx_array_create(r->pool, limit, sizeof(mr_account_t));
    rd->quotas = ngx_array_create(r->pool, limit, sizeof(mr_quota_t));

    if (rd->list == NULL || rd->quotas == NULL) {
        return mr_http_error(r, MR_E_INTERNAL, "out of memory", NULL);
    }

    if (mr_http_read(r, rd, mr_admin_lists_read) == NGX_DONE) {
        return NGX_DONE;
    }

    return mr_admin_lists_got(r, rd);
}


static void
mr_admin_lists_read(mr_store_read_t *rd)
{
    ngx_http_request_t  *r;

    r = mr_http_read_resume(rd);
    if (r == NULL) {
        return;
    }

    mr_http_continued(r, mr_admin_lists_got(r, rd));
}


static ngx_int_t
mr_admin_lists_got(ngx_http_request_t *r, mr_store_read_t *rd)
{
    if (rd->rc != NGX_OK) {
        return mr_http_read_error(r, rd);
    }

    if (rd->type == MR_READ_ACCOUNTS) {
        return mr_admin_lists_accounts_got(r, rd);
    }

    return mr_admin_lists_deliveries_got(r, rd);
}


static ngx_int_t
mr_admin_lists_accounts_got(ngx_http_request_t *r, mr_store_read_t *rd)
{
    json_t        *data, *j;
    ngx_uint_t     i;
    mr_quota_t    *q;
    mr_account_t  *acct;

    data = json_array();
    if (data == NULL) {
        return mr_http_error(r, MR_E_INTERNAL, "out of memory", NULL);
    }

    acct = rd->list->elts;
    q = rd->quotas->elts;

    for (i = 0; i < rd->list->nelts; i++) {
        j = mr_admin_account_json(&acct[i], &q[i]);

        if (j == NULL || json_array_append_new(data, j) != 0) {
            json_decref(data);
            return mr_http_error(r, MR_E_INTERNAL, "out of memory", NULL);
        }
    }

    return mr_http_send_json(r, NGX_HTTP_OK,
                             json_pack("{s:s, s:o, s:b}", "object", "list",
                                       "data", data, "has_more",
                                       (int) rd->more));
}


ngx_int_t
mr_admin_lists_deliveries(ngx_http_request_t *r)
{
    json_t           *details;
    ngx_uint_t        limit;
    mr_store_read_t  *rd;

    if (!(r->method & (NGX_HTTP_GET | NGX_HTTP_HEAD))) {
        return mr_http_not_allowed(r, "GET, HEAD");
    }

    details = json_array();

    if (mr_admin_lists_limit(r, &limit, details) != NGX_OK) {
        return mr_http_error(r, MR_E_INPUT_VALIDATION,
                             "invalid list parameters", details);
    }

    json_decref(details);

    rd = mr_http_read_alloc(r, MR_READ_FAILED_DLVS);
    if (rd == NULL) {
        return mr_http_error(r, MR_E_INTERNAL, "out of memory", NULL);
    }

    rd->limit = limit;
    rd->list = ngx_array_create(r->pool, limit, sizeof(mr_dlv_t));
    if (rd->list == NULL) {
        return mr_http_error(r, MR_E_INTERNAL, "out of memory", NULL);
    }

    if (mr_http_read(r, rd, mr_admin_lists_read) == NGX_DONE) {
        return NGX_DONE;
    }

    return mr_admin_lists_got(r, rd);
}


static ngx_int_t
mr_admin_lists_deliveries_got(ngx_http_request_t *r, mr_store_read_t *rd)
{
    json_t      *data, *j;
    ngx_uint_t   i;
    mr_dlv_t    *dlv;

    data = json_array();
    if (data == NULL) {
        return mr_http_error(r, MR_E_INTERNAL, "out of memory", NULL);
    }

    dlv = rd->list->elts;

    for (i = 0; i < rd->list->nelts; i++) {
        j = mr_admin_lists_dlv(&dlv[i]);

        if (j == NULL || json_array_append_new(data, j) != 0) {
            json_decref(data);
            return mr_http_error(r, MR_E_INTERNAL, "out of memory", NULL);
        }
    }

    return mr_http_send_json(r, NGX_HTTP_OK,
                             json_pack("{s:s, s:o, s:I}", "object", "list",
                                       "data", data, "scanned",
                                       (json_int_t) rd->scanned));
}


/* a delivery, with its last attempt */

static json_t *
mr_admin_lists_dlv(mr_dlv_t *dlv)
{
    json_t  *attempts, *last;

    static u_char  zero[MR_EXEC_ID_LEN];

    attempts = mr_admin_lists_raw(&dlv->seg[MR_DLV_SEG_ATTEMPTS]);

    last = json_array_size(attempts)
           ? json_incref(json_array_get(attempts,
                                        json_array_size(attempts) - 1))
           : json_null();

    json_decref(attempts);

    return json_pack("{s:s#, s:s, s:s#, s:s#, s:s#, s:o, s:o, s:o, s:s, "
                     "s:I, s:o, s:o, s:o}",
                     "id", dlv->rec.id, (int) MR_DLV_ID_LEN,
                     "object", "webhook_delivery",
                     "account", dlv->rec.org, (int) MR_ORG_ID_LEN,
                     "event_id", dlv->rec.event_id, (int) MR_EVT_ID_LEN,
                     "event_type", dlv->seg[MR_DLV_SEG_TYPE].data,
                     (int) dlv->seg[MR_DLV_SEG_TYPE].len,
                     "endpoint_id",
                     ngx_memcmp(dlv->rec.wh_id, zero, MR_WH_ID_LEN) == 0
                     ? json_null()
                     : json_stringn((char *) dlv->rec.wh_id, MR_WH_ID_LEN),
                     "url", dlv->seg[MR_DLV_SEG_URL].len
                            ? json_stringn((char *)
                                           dlv->seg[MR_DLV_SEG_URL].data,
                                           dlv->seg[MR_DLV_SEG_URL].len)
                            : json_null(),
                     "execution_id",
                     ngx_memcmp(dlv->rec.exec_id, zero, MR_EXEC_ID_LEN) == 0
                     ? json_null()
                     : json_stringn((char *) dlv->rec.exec_id,
                                    MR_EXEC_ID_LEN),
                     "status", dlv->rec.status == MR_DLV_FAILED ? "failed"
                                                               : "pending",
                     "attempts", (json_int_t) dlv->rec.attempts,
                     "last_attempt", last ? last : json_null(),
                     "next_attempt_at",
                     dlv->rec.status == MR_DLV_PENDING
                     ? mr_json_time(dlv->rec.next_ms) : json_null(),
                     "created_at", mr_json_time(dlv->rec.created_ms));
}


static json_t *
mr_admin_lists_raw(ngx_str_t *s)
{
    json_t  *j;

    if (s->len == 0) {
        return json_array();
    }

    j = json_loadb((char *) s->data, s->len, 0, NULL);

    if (!json_is_array(j)) {
        json_decref(j);
        return json_array();
    }

    return j;
}
