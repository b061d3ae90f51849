
/*
 * ModelRoute: the store interface's entry points (mr_store.h), and the
 * backend that serves them, chosen in the configuration:
 *
 *   modelroute_store /var/lib/modelroute;          LMDB (mr_store*.c)
 *   modelroute_store postgresql://host/db;          PostgreSQL
 *   modelroute_store "host=... dbname=...";         (mr_store_pg*.c)
 *
 * The domain rules are the same for both (mr_rules*.c); a backend only
 * reads and writes.
 */


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>

#include "ngx_http_modelroute_module.h"
#include "mr_store.h"
#include "mr_store_lmdb.h"
#include "mr_store_pg.h"


static ngx_uint_t  mr_store_backend = MR_STORE_LMDB;   /* this process' */


/* modelroute_store <directory | postgresql:// URI | conninfo> */

char *
mr_store_directive(ngx_conf_t *cf, ngx_command_t *cmd, void *conf)
{
    mr_main_conf_t *mcf = conf;

    ngx_str_t  *value;

    if (mcf->store_path.data || mcf->pg) {
        return "is duplicate";
    }

    value = cf->args->elts;

    if (value[1].len == 0) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "\"modelroute_store\" needs a directory or a "
                           "PostgreSQL URI");
        return NGX_CONF_ERROR;
    }

    if (mr_store_pg_is(&value[1])) {
        return mr_store_pg_parse(cf, mcf, &value[1]);
    }

    mcf->store_path = value[1];
    mcf->store_backend = MR_STORE_LMDB;

    return NGX_CONF_OK;
}


/*
 * modelroute_key_cache <time> | off: how long a worker may reuse an API
 * key it read from PostgreSQL (at most 60s); a key revoked or rotated
 * elsewhere works that long on this worker
 */

char *
mr_store_key_cache_directive(ngx_conf_t *cf, ngx_command_t *cmd, void *conf)
{
    mr_main_conf_t *mcf = conf;

    ngx_str_t   *value;
    ngx_msec_t   ms;

    if (mcf->key_cache != NGX_CONF_UNSET_MSEC) {
        return "is duplicate";
    }

    value = cf->args->elts;

    if (value[1].len == 3 && ngx_strncmp(value[1].data, "off", 3) == 0) {
        mcf->key_cache = 0;
        return NGX_CONF_OK;
    }

    ms = ngx_parse_time(&value[1], 0);

    if (ms == (ngx_msec_t) NGX_ERROR || ms > 60000) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "\"modelroute_key_cache\" takes a time up to "
                           "60s, or off");
        return NGX_CONF_ERROR;
    }

    mcf->key_cache = ms;

    return NGX_CONF_OK;
}


/* the master, nginx -t: the store as the workers will see it */

ngx_int_t
mr_store_check(ngx_cycle_t *cycle, mr_main_conf_t *mcf)
{
    if (mcf->store_backend == MR_STORE_PG) {
        return mr_store_pg_check(cycle, mcf);
    }

    return mr_store_lmdb_check(cycle, mcf);
}


ngx_int_t
mr_store_start(ngx_cycle_t *cycle, mr_main_conf_t *mcf)
{
    if (mcf->store_backend == MR_STORE_PG) {
        return NGX_OK;      /* migrations are tools/pg-migrate's */
    }

    return mr_store_lmdb_start(cycle, mcf);
}


ngx_int_t
mr_store_init_process(ngx_cycle_t *cycle, mr_main_conf_t *mcf)
{
    mr_store_backend = mcf->store_backend;

    if (mr_store_backend == MR_STORE_PG) {
        return mr_store_pg_init_process(cycle, mcf);
    }

    return mr_store_lmdb_init_process(cycle, mcf);
}


void
mr_store_exit_process(ngx_cycle_t *cycle)
{
    if (mr_store_backend == MR_STORE_PG) {
        mr_store_pg_exit_process(cycle);
        return;
    }

    mr_store_lmdb_exit_process(cycle);
}


void
mr_store_submit(mr_store_op_t *op)
{
    if (mr_store_backend == MR_STORE_PG) {
        mr_store_pg_submit(op);
        return;
    }

    mr_store_lmdb_submit(op);
}


/*
 * Whether a claim sees what the operations committed with it made: on
 * LMDB claims run last in their group commit (mr_store_commit_handler()),
 * so a claim made while work is coming in takes that work in the commit
 * that makes it.  Only when commits run in a thread (and the pool takes
 * them: mr_store_lmdb_threaded()): on the event loop, a claim made at
 * once by the handlers of the last commit would be committed in the same
 * turn, and so on, without the loop reading a request in between (sends
 * that fail at once, say).  On PostgreSQL a claim is a transaction of its
 * own.
 */

ngx_uint_t
mr_store_claims_last(void)
{
    return mr_store_backend == MR_STORE_LMDB && mr_store_lmdb_threaded();
}


ngx_int_t
mr_store_read(mr_store_read_t *rd)
{
    if (mr_store_backend == MR_STORE_PG) {
        return mr_store_pg_read(rd);
    }

    /* LMDB: at once */

    rd->rc = mr_store_lmdb_read(rd);

    return NGX_OK;
}
