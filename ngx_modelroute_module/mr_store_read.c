
/*
 * ModelRoute: the LMDB store's answers to mr_store_read().
 *
 * Every read is answered at once, in the caller's call, from the store's
 * read transaction (mr_store.c and the other mr_store_*.c files): the
 * result is in the read, its handler is not called, and the caller goes
 * on to its continuation without waiting for an event.
 */


#include <ngx_config.h>
#include <ngx_core.h>

#include <lmdb.h>

#include "mr_store.h"
#include "mr_store_lmdb.h"


static ngx_int_t mr_store_lmdb_accounts(mr_store_read_t *rd);
static ngx_int_t mr_store_lmdb_execs(mr_store_read_t *rd);


ngx_int_t
mr_store_lmdb_read(mr_store_read_t *rd)
{
    u_char     *org;
    ngx_int_t   rc;

    switch (rd->type) {

    case MR_READ_AUTH:
    case MR_READ_ACCOUNT:
        if (rd->type == MR_READ_AUTH) {
            rc = mr_store_key_by_hash(rd->id, &rd->key, rd->pool);
            if (rc != NGX_OK) {
                return rc;
            }

            ngx_memcpy(rd->id, rd->key.rec.org, MR_ORG_ID_LEN);

        } else {
            rc = mr_store_account_get(rd->id, &rd->account, rd->pool);
            if (rc == NGX_OK) {
                rc = mr_store_quota_get(rd->id, &rd->quota);
            }

            if (rc != NGX_OK) {
                return rc;
            }
        }

        rc = mr_store_ops_rate_limit(rd->id, &rd->rl_value);
        rd->rl_own = (rc == NGX_OK);

        /* for a key: none, or the store failed to say (logged): the
         * default */

        return (rc == NGX_ERROR && rd->type == MR_READ_ACCOUNT) ? NGX_ERROR
                                                               : NGX_OK;

    case MR_READ_KEYS:
        rc = mr_store_account_get(rd->id, &rd->account, rd->pool);
        if (rc != NGX_OK) {
            return rc;
        }

        return mr_store_keys_list(rd->id, rd->list, rd->pool);

    case MR_READ_EXEC:
        return mr_store_exec_get(rd->id, &rd->exec, rd->pool);

    case MR_READ_EXECS:
        return mr_store_lmdb_execs(rd);

    case MR_READ_EXEC_LIST:
        return mr_store_exec_list(rd->query, rd->list, rd->pool);

    case MR_READ_VERIFY:
        return mr_store_verify(rd->id, &rd->account, &rd->verify, rd->pool);

    case MR_READ_WH:
        rc = mr_store_wh_get(rd->id, &rd->wh, rd->pool);

        if (rc == NGX_OK
            && ngx_memcmp(rd->wh.rec.org, rd->org, MR_ORG_ID_LEN) != 0)
        {
            rc = NGX_DECLINED;
        }

        return rc;

    case MR_READ_WH_LIST:
        return mr_store_wh_list(rd->id, rd->list, rd->pool);

    case MR_READ_DLV_LIST:

        /* the endpoint's or the execution's, of the caller's account */

        if (rd->len == MR_WH_ID_LEN) {
            rc = mr_store_wh_get(rd->id, &rd->wh, rd->pool);
            org = rd->wh.rec.org;

        } else {
            rc = mr_store_exec_get(rd->id, &rd->exec, NULL);
            org = rd->exec.rec.org;
        }

        if (rc == NGX_OK && ngx_memcmp(org, rd->org, MR_ORG_ID_LEN) != 0) {
            rc = NGX_DECLINED;
        }

        if (rc != NGX_OK) {
            return rc;
        }

        return mr_store_dlv_list(rd->id, rd->len, rd->limit, rd->list,
                                 rd->pool);

    case MR_READ_SECRET:
        return mr_store_secret_get(rd->id, &rd->secret, rd->pool);

    case MR_READ_META:
        return mr_store_meta_secret(rd->name, rd->raw);

    case MR_READ_DISP_NEXT:
        return mr_store_disp_next(&rd->due);

    case MR_READ_SIZE:                  /* its entries' counts cost nothing */
    case MR_READ_STATS:
        rc = mr_store_ops_stats(&rd->stats);

        if (rc == NGX_OK && rd->states) {
            rc = mr_store_route_states(mr_store.mcf, rd->states);
        }

        return rc;

    case MR_READ_ROUTES:
        return mr_store_route_states(mr_store.mcf, rd->states);

    case MR_READ_ACCOUNTS:
        return mr_store_lmdb_accounts(rd);

    case MR_READ_FAILED_DLVS:
        return mr_store_ops_deliveries(rd->limit, rd->list, &rd->scanned,
                                       rd->pool);

    default:
        return NGX_ERROR;
    }
}


/* accounts, and each one's quota */

static ngx_int_t
mr_store_lmdb_accounts(mr_store_read_t *rd)
{
    ngx_int_t      rc;
    ngx_uint_t     i;
    mr_quota_t    *q;
    mr_account_t  *acct;

    rc = mr_store_ops_accounts(&rd->after, rd->limit, rd->list, &rd->more,
                               rd->pool);
    if (rc != NGX_OK) {
        return rc;
    }

    acct = rd->list->elts;

    for (i = 0; i < rd->list->nelts; i++) {
        q = ngx_array_push(rd->quotas);
        if (q == NULL) {
            return NGX_ERROR;
        }

        rc = mr_store_quota_get(acct[i].id, q);
        if (rc != NGX_OK) {
            return rc;
        }
    }

    return NGX_OK;
}


/* executions by id: one that is not there has status 0 */

static ngx_int_t
mr_store_lmdb_execs(mr_store_read_t *rd)
{
    ngx_int_t   rc;
    mr_exec_t  *exec;
    ngx_uint_t  i;

    for (i = 0; i < rd->nids; i++) {
        exec = ngx_array_push(rd->list);
        if (exec == NULL) {
            return NGX_ERROR;
        }

        rc = mr_store_exec_get(rd->ids + i * MR_EXEC_ID_LEN, exec, rd->pool);

        if (rc == NGX_DECLINED) {
            ngx_memzero(exec, sizeof(mr_exec_t));
            ngx_memcpy(exec->id, rd->ids + i * MR_EXEC_ID_LEN,
                       MR_EXEC_ID_LEN);
            continue;
        }

        if (rc != NGX_OK) {
            return rc;
        }
    }

    return NGX_OK;
}
