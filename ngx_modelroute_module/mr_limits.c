
/*
 * ModelRoute: what one account may keep.
 *
 *   modelroute_account_limits [bytes=size] [executions=N] [endpoints=N]
 *                             [keys=N];
 *
 * The defaults of every account; the admin API overrides them per account
 * (mr_quota_t.limit, -1: the default).  Stored bytes default to a quarter
 * of modelroute_store_map_size, so that no one account can take the store
 * from the others.  The store counts the use and checks the limits
 * (mr_store.c); this file says what they are.
 */


#include <ngx_config.h>
#include <ngx_core.h>

#include "mr_limits.h"


#define MR_LIMIT_COUNT_MAX   1000000000
#define MR_LIMIT_BYTES_MAX   ((int64_t) 1 << 50)


const char  *mr_limit_names[MR_LIMIT_N] = {
    "bytes", "executions", "endpoints", "keys"
};

static const int64_t  mr_limit_defaults[MR_LIMIT_N] = {
    -1,           /* bytes: a quarter of the map */
    10000,        /* live executions */
    16,           /* webhook endpoints */
    16            /* active API keys */
};


char *
mr_limits_directive(ngx_conf_t *cf, ngx_command_t *cmd, void *conf)
{
    mr_main_conf_t *mcf = conf;

    off_t        size;
    ngx_int_t    n;
    ngx_str_t   *value, name, arg;
    ngx_uint_t   i, which;

    if (mcf->account_limits_set) {
        return "is duplicate";
    }

    mcf->account_limits_set = 1;

    for (which = 0; which < MR_LIMIT_N; which++) {
        mcf->account_limits[which] = -1;     /* the built-in default */
    }

    value = cf->args->elts;

    for (i = 1; i < cf->args->nelts; i++) {

        if (mr_conf_param(&value[i], &name, &arg) != NGX_OK) {
            goto invalid;
        }

        for (which = 0; which < MR_LIMIT_N; which++) {
            if (name.len == ngx_strlen(mr_limit_names[which])
                && ngx_strncmp(name.data, mr_limit_names[which], name.len)
                   == 0)
            {
                break;
            }
        }

        if (which == MR_LIMIT_N) {
            goto invalid;
        }

        if (which == MR_LIMIT_BYTES) {
            size = ngx_parse_offset(&arg);
            if (size == NGX_ERROR || mr_limit_parse(which, size) != NGX_OK)
            {
                goto invalid;
            }

            mcf->account_limits[which] = size;
            continue;
        }

        n = ngx_atoi(arg.data, arg.len);
        if (n == NGX_ERROR || mr_limit_parse(which, n) != NGX_OK) {
            goto invalid;
        }

        mcf->account_limits[which] = n;
    }

    return NGX_CONF_OK;

invalid:

    ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                       "\"%V\": invalid parameter \"%V\" (bytes=size, "
                       "executions=N, endpoints=N, keys=N)",
                       &cmd->name, &value[i]);
    return NGX_CONF_ERROR;
}


/* a limit's value, from nginx.conf or the admin API */

ngx_int_t
mr_limit_parse(ngx_uint_t which, int64_t value)
{
    if (value < 0) {
        return NGX_ERROR;
    }

    if (which == MR_LIMIT_BYTES) {
        return value <= MR_LIMIT_BYTES_MAX ? NGX_OK : NGX_ERROR;
    }

    return value <= MR_LIMIT_COUNT_MAX ? NGX_OK : NGX_ERROR;
}


/* max_input=size of modelroute_model; NGX_DECLINED: not this one */

ngx_int_t
mr_limits_model_param(ngx_conf_t *cf, mr_model_t *m, ngx_str_t *name,
    ngx_str_t *arg)
{
    ssize_t  size;

    if (name->len != sizeof("max_input") - 1
        || ngx_strncmp(name->data, "max_input", name->len) != 0)
    {
        return NGX_DECLINED;
    }

    size = ngx_parse_size(arg);

    if (size == NGX_ERROR || size < 1 || size > 1024 * 1024 * 1024) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "\"modelroute_model\" \"%V\": invalid max_input "
                           "\"%V\" (a size, 1 byte to 1g)", &m->slug, arg);
        return NGX_ERROR;
    }

    m->max_input = size;

    return NGX_OK;
}


/* the http block's defaults, once modelroute_store_map_size is known */

void
mr_limits_init_conf(mr_main_conf_t *mcf)
{
    ngx_uint_t  i;

    if (!mcf->account_limits_set) {
        for (i = 0; i < MR_LIMIT_N; i++) {
            mcf->account_limits[i] = -1;
        }
    }

    for (i = 0; i < MR_LIMIT_N; i++) {
        if (mcf->account_limits[i] < 0) {
            mcf->account_limits[i] = mr_limit_defaults[i];
        }
    }

    if (mcf->account_limits[MR_LIMIT_BYTES] < 0) {
        mcf->account_limits[MR_LIMIT_BYTES] = (int64_t) mcf->map_size / 4;
    }
}


int64_t
mr_limit_of(mr_main_conf_t *mcf, mr_quota_t *q, ngx_uint_t which)
{
    if (q && q->limit[which] >= 0) {
        return q->limit[which];
    }

    return mcf->account_limits[which];
}


size_t
mr_limit_max_input(mr_model_t *m)
{
    return m->max_input ? m->max_input : MR_MAX_INPUT_DEFAULT;
}
