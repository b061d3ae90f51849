
/*
 * ModelRoute: the PostgreSQL store's configuration, and its check when the
 * configuration is read.
 *
 * "modelroute_store postgresql://..." (a URI) or "modelroute_store
 * 'host=... dbname=...'" (a libpq conninfo) is parsed with libpq when the
 * directive is read: a string libpq refuses is refused there, with the
 * directive's name, file and line, and its text is never logged (it may
 * hold a password; libpq's usual places keep one out of nginx.conf:
 * PGPASSFILE, a service file, "env PGPASSWORD;").
 *
 * mr_store_pg_check() runs in the master, and in "nginx -t", once the
 * configuration is read (as mr_store_check() does for LMDB):
 *   - host names are resolved here, once, and given to libpq as hostaddr
 *     (a worker never resolves a name: it would block), with host kept
 *     for TLS and .pgpass; a reload resolves them again;
 *   - a connection is made, bounded by modelroute_store_connect_timeout
 *     (libpq's connect_timeout), and the schema's version and the
 *     database's encoding are checked: a database that was not migrated,
 *     or of another version, is refused with a message that says what to
 *     do; a server that cannot be reached fails "nginx -t" and a start,
 *     and on a reload is only a warning (the workers connect when it is
 *     back);
 *   - on a start or a reload, not for "nginx -t": the node's directory
 *     (modelroute_node_dir: its dispatch socket and secret) is made and
 *     given to the worker user; a start makes a new dispatch secret, as
 *     the LMDB store does (see mr_store_check()).
 */


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>
#include <nginx.h>

#include <netdb.h>
#include <poll.h>
#include <arpa/inet.h>
#include <openssl/rand.h>

#include "ngx_http_modelroute_module.h"
#include "mr_store_pg.h"


#define MR_PG_PARAMS_MAX   64


/* libpq's variables that name the server, and their parameters */

static struct {
    const char  *key;
    const char  *var;
} mr_store_pg_env[] = {
    { "host", "PGHOST" },
    { "hostaddr", "PGHOSTADDR" },
    { "port", "PGPORT" },
    { NULL, NULL }
};


static void mr_store_pg_scrub(const char *msg, const char *ci, u_char *out,
    size_t size);
static ngx_uint_t mr_store_pg_named(const char *ci, const char *name,
    size_t len);
static ngx_int_t mr_store_pg_param(ngx_pool_t *pool, const char **k,
    const char **v, ngx_uint_t *n, const char *key, const char *value);
static const char *mr_store_pg_value(mr_pg_conf_t *pcf, const char *key);
static ngx_int_t mr_store_pg_resolve(ngx_cycle_t *cycle, mr_pg_conf_t *pcf);
static ngx_int_t mr_store_pg_schema(ngx_cycle_t *cycle, mr_pg_conf_t *pcf,
    ngx_msec_t timeout, ngx_uint_t reload);
static PGresult *mr_store_pg_query(PGconn *pg, const char *sql,
    ngx_msec_t timeout);
static ngx_int_t mr_store_pg_node(ngx_cycle_t *cycle, mr_main_conf_t *mcf,
    ngx_uint_t start);


/* a PostgreSQL URI or conninfo, not a directory */

ngx_uint_t
mr_store_pg_is(ngx_str_t *value)
{
    u_char  *p, *last;

    if ((value->len > sizeof("postgresql://") - 1
         && ngx_strncmp(value->data, "postgresql://",
                        sizeof("postgresql://") - 1) == 0)
        || (value->len > sizeof("postgres://") - 1
            && ngx_strncmp(value->data, "postgres://",
                           sizeof("postgres://") - 1) == 0))
    {
        return 1;
    }

    /* "keyword=value ...": a word, then "=" */

    p = value->data;
    last = value->data + value->len;

    while (p < last && *p == ' ') {
        p++;
    }

    if (p == last || !((*p >= 'a' && *p <= 'z') || *p == '_')) {
        return 0;
    }

    while (p < last && ((*p >= 'a' && *p <= 'z') || *p == '_')) {
        p++;
    }

    while (p < last && *p == ' ') {
        p++;
    }

    return p < last && *p == '=';
}


/* modelroute_store <URI or conninfo>: parsed now, refused if libpq does */

char *
mr_store_pg_parse(ngx_conf_t *cf, mr_main_conf_t *mcf, ngx_str_t *value)
{
    char               *err, *ci;
    u_char             *p;
    ngx_uint_t          n;
    const char        **k, **v, *host, *port, *db;
    mr_pg_conf_t       *pcf;
    PQconninfoOption   *opts, *o;
    u_char              msg[512];

    pcf = ngx_pcalloc(cf->pool, sizeof(mr_pg_conf_t));
    if (pcf == NULL) {
        return NGX_CONF_ERROR;
    }

    ci = (char *) ngx_pnalloc(cf->pool, value->len + 1);
    if (ci == NULL) {
        return NGX_CONF_ERROR;
    }

    ngx_cpystrn((u_char *) ci, value->data, value->len + 1);

    pcf->conninfo.data = (u_char *) ci;
    pcf->conninfo.len = value->len;

    err = NULL;
    opts = PQconninfoParse(ci, &err);

    if (opts == NULL) {

        /* libpq's message may quote the string, or a part of it: the
         * password, say (an invalid %-escape in it) */

        mr_store_pg_scrub(err ? err : "out of memory", ci, msg,
                          sizeof(msg));

        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "\"modelroute_store\": not a valid PostgreSQL "
                           "URI or connection string: %s", msg);
        if (err) {
            PQfreemem(err);
        }

        return NGX_CONF_ERROR;
    }

    k = ngx_pcalloc(cf->pool, MR_PG_PARAMS_MAX * sizeof(char *));
    v = ngx_pcalloc(cf->pool, MR_PG_PARAMS_MAX * sizeof(char *));
    if (k == NULL || v == NULL) {
        PQconninfoFree(opts);
        return NGX_CONF_ERROR;
    }

    n = 0;

    for (o = opts; o->keyword; o++) {
        if (o->val == NULL) {
            continue;
        }

        if (mr_store_pg_param(cf->pool, k, v, &n, o->keyword, o->val)
            != NGX_OK)
        {
            PQconninfoFree(opts);
            return NGX_CONF_ERROR;
        }
    }

    PQconninfoFree(opts);

    pcf->keywords = k;
    pcf->values = v;

    /* what the messages name: never the password */

    host = mr_store_pg_value(pcf, "host");
    port = mr_store_pg_value(pcf, "port");
    db = mr_store_pg_value(pcf, "dbname");

    p = ngx_pnalloc(cf->pool, 256);
    if (p == NULL) {
        return NGX_CONF_ERROR;
    }

    pcf->where.data = p;
    pcf->where.len = ngx_snprintf(p, 256, "\"%s%s%s%s%s\"",
                                  host ? host : "(default host)",
                                  port ? ":" : "", port ? port : "",
                                  db ? "/" : "", db ? db : "")
                     - p;

    mcf->pg = pcf;
    mcf->store_backend = MR_STORE_PG;

    return NGX_CONF_OK;
}


/*
 * libpq's message about a string it refused, into out (of size bytes),
 * without what it quotes of the string: a quoted part stays only if it is
 * "=" or the name of a parameter as written (a word followed by "="),
 * else it becomes "...".  The message is then never the password, nor a
 * part of it.
 */

static void
mr_store_pg_scrub(const char *msg, const char *ci, u_char *out, size_t size)
{
    size_t       len;
    u_char      *w, *last;
    const char  *p, *q, *end;

    w = out;
    last = out + size - 1;
    p = msg;

    while (*p && w < last) {
        if (*p != '"' || (end = ngx_strchr(p + 1, '"')) == NULL) {
            *w++ = *p++;
            continue;
        }

        q = p + 1;
        len = end - q;

        while (q < end && ((*q >= 'a' && *q <= 'z') || *q == '_')) {
            q++;
        }

        if ((len == 1 && p[1] == '=')
            || (len && q == end && mr_store_pg_named(ci, p + 1, len)))
        {
            w = ngx_slprintf(w, last, "\"%*s\"", len, p + 1);

        } else {
            w = ngx_slprintf(w, last, "\"...\"");
        }

        p = end + 1;
    }

    /* no trailing newline */

    while (w > out && (w[-1] == '\n' || w[-1] == ' ')) {
        w--;
    }

    *w = '\0';
}


/* whether name (a word) is written in ci as a parameter: "name=" */

static ngx_uint_t
mr_store_pg_named(const char *ci, const char *name, size_t len)
{
    const char  *p, *q;

    for (p = ci; (p = ngx_strstr(p, "=")) != NULL; p++) {
        q = p;

        while (q > ci && q[-1] == ' ') {
            q--;
        }

        if ((size_t) (q - ci) >= len
            && ngx_strncmp(q - len, name, len) == 0
            && (q - len == ci || !((q[-len - 1] >= 'a' && q[-len - 1] <= 'z')
                                   || q[-len - 1] == '_')))
        {
            return 1;
        }
    }

    return 0;
}


/* sets a parameter (a new one, or the value of one already there) */

static ngx_int_t
mr_store_pg_param(ngx_pool_t *pool, const char **k, const char **v,
    ngx_uint_t *n, const char *key, const char *value)
{
    size_t      len;
    u_char     *p;
    ngx_uint_t  i;

    len = ngx_strlen(value);

    p = ngx_pnalloc(pool, len + 1);
    if (p == NULL) {
        return NGX_ERROR;
    }

    ngx_cpystrn(p, (u_char *) value, len + 1);

    for (i = 0; i < *n; i++) {
        if (ngx_strcmp(k[i], key) == 0) {
            v[i] = (char *) p;
            return NGX_OK;
        }
    }

    if (*n + 1 >= MR_PG_PARAMS_MAX) {
        return NGX_ERROR;
    }

    k[*n] = key;
    v[*n] = (char *) p;
    (*n)++;

    return NGX_OK;
}


static const char *
mr_store_pg_value(mr_pg_conf_t *pcf, const char *key)
{
    ngx_uint_t  i;

    for (i = 0; pcf->keywords[i]; i++) {
        if (ngx_strcmp(pcf->keywords[i], key) == 0) {
            return pcf->values[i];
        }
    }

    return NULL;
}


/*
 * When the configuration is read: the parameters the workers connect
 * with, the server and its schema, and the node's directory
 */

ngx_int_t
mr_store_pg_check(ngx_cycle_t *cycle, mr_main_conf_t *mcf)
{
    char          *e;
    u_char        *p;
    ngx_uint_t     i, n, start, reload;
    mr_pg_conf_t  *pcf;
    u_char         buf[NGX_INT_T_LEN];

    pcf = mcf->pg;

    for (n = 0; pcf->keywords[n]; n++) { /* void */ }

    /* ours, unless written: bounded connections, names in the server's
     * views, and no GSSAPI, whose libraries may block */

    p = ngx_sprintf(buf, "%ui",
                    ngx_max((mcf->pg_connect_timeout + 999) / 1000, 2));
    *p = '\0';

    if (mr_store_pg_param(cycle->pool, pcf->keywords, pcf->values, &n,
                          "connect_timeout", (char *) buf) != NGX_OK
        || (mr_store_pg_value(pcf, "application_name") == NULL
            && mr_store_pg_param(cycle->pool, pcf->keywords, pcf->values, &n,
                                 "application_name", "modelroute")
               != NGX_OK)
        || (mr_store_pg_value(pcf, "gssencmode") == NULL
            && mr_store_pg_param(cycle->pool, pcf->keywords, pcf->values, &n,
                                 "gssencmode", "disable")
               != NGX_OK)
        || mr_store_pg_param(cycle->pool, pcf->keywords, pcf->values, &n,
                             "client_encoding", "UTF8")
           != NGX_OK)
    {
        return NGX_ERROR;
    }

    /*
     * libpq's variables that name the server (PGHOST...: the master's
     * environment, which "env PGHOST;" gives the workers too) are written
     * out, so that a host name in them is resolved here as well, never by
     * a worker; not with a service, whose file libpq reads first
     */

    if (mr_store_pg_value(pcf, "service") == NULL
        && getenv("PGSERVICE") == NULL)
    {
        for (i = 0; mr_store_pg_env[i].key; i++) {
            e = getenv(mr_store_pg_env[i].var);

            if (e == NULL || *e == '\0'
                || mr_store_pg_value(pcf, mr_store_pg_env[i].key))
            {
                continue;
            }

            if (mr_store_pg_param(cycle->pool, pcf->keywords, pcf->values,
                                  &n, mr_store_pg_env[i].key, e)
                != NGX_OK)
            {
                return NGX_ERROR;
            }
        }
    }

    if (mr_store_pg_resolve(cycle, pcf) != NGX_OK) {
        return NGX_ERROR;
    }

    /* the hosts of the list (a worker starts from another one when one
     * does not answer: see mr_pg_conn_connect()) */

    e = (char *) mr_store_pg_value(pcf, "host");

    if (e == NULL) {
        e = (char *) mr_store_pg_value(pcf, "hostaddr");
    }

    for (pcf->nhosts = 1; e && *e; e++) {
        pcf->nhosts += (*e == ',');
    }

    /* a start: not a reload, a binary upgrade, nor nginx -t */

    reload = !ngx_is_init_cycle(cycle->old_cycle)
             || getenv(NGINX_VAR) != NULL;
    start = !reload && !ngx_test_config;

    if (mr_store_pg_schema(cycle, pcf, mcf->pg_connect_timeout,
                           reload && !ngx_test_config)
        != NGX_OK)
    {
        return NGX_ERROR;
    }

    return mr_store_pg_node(cycle, mcf, start);
}


/*
 * Host names, resolved now (the master may wait for its resolver when it
 * reads its configuration, as for an upstream's servers): each gets its
 * address as hostaddr, unless hostaddr was written
 */

static ngx_int_t
mr_store_pg_resolve(ngx_cycle_t *cycle, mr_pg_conf_t *pcf)
{
    int               rc;
    u_char           *p, *last, *start, *out, *q;
    size_t            len;
    ngx_uint_t        n, names;
    const char       *host;
    struct addrinfo   hints, *ai;
    u_char            name[256];
    u_char            addr[NGX_SOCKADDR_STRLEN];
    struct in6_addr   a6;

    host = mr_store_pg_value(pcf, "host");

    if (host == NULL || mr_store_pg_value(pcf, "hostaddr")) {
        return NGX_OK;
    }

    len = ngx_strlen(host);

    out = ngx_pnalloc(cycle->pool, len * 2 + NGX_SOCKADDR_STRLEN * 8 + 1);
    if (out == NULL) {
        return NGX_ERROR;
    }

    q = out;
    names = 0;
    p = (u_char *) host;
    last = p + len;

    for ( ;; ) {
        start = p;

        while (p < last && *p != ',') {
            p++;
        }

        n = ngx_min((size_t) (p - start), sizeof(name) - 1);
        ngx_memcpy(name, start, n);
        name[n] = '\0';

        if (q != out) {
            *q++ = ',';
        }

        if (n == 0 || name[0] == '/' || name[0] == '@') {
            /* a unix socket's directory: no address */

        } else if (inet_pton(AF_INET, (char *) name, &a6) == 1
                   || inet_pton(AF_INET6, (char *) name, &a6) == 1)
        {
            q = ngx_cpymem(q, name, n);

        } else {
            ngx_memzero(&hints, sizeof(struct addrinfo));
            hints.ai_family = AF_UNSPEC;
            hints.ai_socktype = SOCK_STREAM;

            rc = getaddrinfo((char *) name, NULL, &hints, &ai);

            if (rc != 0) {
                ngx_log_error(NGX_LOG_EMERG, cycle->log, 0,
                              "modelroute_store: PostgreSQL host \"%s\" "
                              "cannot be resolved: %s", name,
                              gai_strerror(rc));
                return NGX_ERROR;
            }

            n = ngx_sock_ntop(ai->ai_addr, ai->ai_addrlen, addr,
                              NGX_SOCKADDR_STRLEN, 0);
            freeaddrinfo(ai);

            q = ngx_cpymem(q, addr, n);
            names++;
        }

        if (p == last || q - out > (ssize_t) (len * 2
                                              + NGX_SOCKADDR_STRLEN * 7))
        {
            break;
        }

        p++;
    }

    *q = '\0';

    if (names == 0) {
        return NGX_OK;
    }

    for (n = 0; pcf->keywords[n]; n++) { /* void */ }

    return mr_store_pg_param(cycle->pool, pcf->keywords, pcf->values, &n,
                             "hostaddr", (char *) out);
}


/*
 * The server, its schema and encoding, in a connection of the master's
 * own (closed at once), each bounded by timeout: the connection by
 * libpq's connect_timeout, the query by mr_store_pg_query().  reload: a
 * server that cannot be reached, or does not answer, is only a warning.
 */

static ngx_int_t
mr_store_pg_schema(ngx_cycle_t *cycle, mr_pg_conf_t *pcf, ngx_msec_t timeout,
    ngx_uint_t reload)
{
    char        *msg, *enc;
    int64_t      version;
    PGconn      *pg;
    PGresult    *res;
    u_char      *p;
    ngx_uint_t   level;

    pg = PQconnectdbParams(pcf->keywords, pcf->values, 0);

    if (pg == NULL || PQstatus(pg) != CONNECTION_OK) {
        msg = pg ? PQerrorMessage(pg) : "out of memory";

        for (p = (u_char *) msg + ngx_strlen(msg);
             p > (u_char *) msg && (p[-1] == '\n' || p[-1] == ' ');
             p--)
        {
            p[-1] = '\0';
        }

        level = reload ? NGX_LOG_WARN : NGX_LOG_EMERG;

        ngx_log_error(level, cycle->log, 0,
                      "modelroute_store: PostgreSQL %V: cannot connect: %s%s",
                      &pcf->where, msg,
                      reload ? " (the workers connect when it is back)" : "");
        PQfinish(pg);

        return reload ? NGX_OK : NGX_ERROR;
    }

    res = mr_store_pg_query(pg, "SELECT (SELECT coalesce(max(version), 0) "
                            "FROM mr_schema), "
                            "current_setting('server_encoding')", timeout);

    if (res == NULL) {

        /* a server that answers nothing (mr_schema locked, say) */

        level = reload ? NGX_LOG_WARN : NGX_LOG_EMERG;

        ngx_log_error(level, cycle->log, 0,
                      "modelroute_store: PostgreSQL %V: no answer to the "
                      "schema's check within "
                      "modelroute_store_connect_timeout%s", &pcf->where,
                      reload ? " (the workers check it when they connect)"
                             : "");
        PQfinish(pg);

        return reload ? NGX_OK : NGX_ERROR;
    }

    if (PQresultStatus(res) != PGRES_TUPLES_OK || PQntuples(res) != 1) {
        ngx_log_error(NGX_LOG_EMERG, cycle->log, 0,
                      "modelroute_store: PostgreSQL %V has no ModelRoute "
                      "schema: apply it with tools/pg-migrate "
                      "(./build.sh pg-migrate CONNINFO)", &pcf->where);
        PQclear(res);
        PQfinish(pg);
        return NGX_ERROR;
    }

    version = (int64_t) strtoll(PQgetvalue(res, 0, 0), NULL, 10);
    enc = PQgetvalue(res, 0, 1);

    if (version != MR_PG_SCHEMA_VERSION) {
        ngx_log_error(NGX_LOG_EMERG, cycle->log, 0,
                      "modelroute_store: PostgreSQL %V has schema version "
                      "%L, this module needs version %d%s", &pcf->where,
                      version, MR_PG_SCHEMA_VERSION,
                      version < MR_PG_SCHEMA_VERSION
                      ? ": apply the migrations with tools/pg-migrate"
                      : ": it was migrated by a newer module");
        PQclear(res);
        PQfinish(pg);
        return NGX_ERROR;
    }

    if (ngx_strcmp(enc, "UTF8") != 0) {
        ngx_log_error(NGX_LOG_EMERG, cycle->log, 0,
                      "modelroute_store: PostgreSQL %V: the database's "
                      "encoding is %s, not UTF8", &pcf->where, enc);
        PQclear(res);
        PQfinish(pg);
        return NGX_ERROR;
    }

    PQclear(res);
    PQfinish(pg);

    return NGX_OK;
}


/*
 * A query of the master's, its answer waited for at most timeout (a
 * blocking PQexec() would wait for as long as a lock, or a server that
 * stopped answering, holds it: the master would not answer its signals).
 * Its last result, or NULL: no answer in time, or the connection broke.
 */

static PGresult *
mr_store_pg_query(PGconn *pg, const char *sql, ngx_msec_t timeout)
{
    int              n;
    int64_t          now, deadline;
    PGresult        *res, *last;
    ngx_msec_int_t   left;
    struct pollfd    pfd;
    struct timespec  ts;

    if (!PQsendQuery(pg, sql)) {
        return NULL;
    }

    (void) clock_gettime(CLOCK_MONOTONIC, &ts);
    deadline = (int64_t) ts.tv_sec * 1000 + ts.tv_nsec / 1000000 + timeout;

    last = NULL;

    for ( ;; ) {

        while (PQisBusy(pg)) {
            (void) clock_gettime(CLOCK_MONOTONIC, &ts);
            now = (int64_t) ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
            left = (ngx_msec_int_t) (deadline - now);

            if (left <= 0) {
                goto failed;
            }

            pfd.fd = PQsocket(pg);
            pfd.events = POLLIN;
            pfd.revents = 0;

            n = poll(&pfd, 1, (int) left);

            if (n == -1 && ngx_errno != NGX_EINTR) {
                goto failed;
            }

            if (PQconsumeInput(pg) == 0) {
                goto failed;
            }
        }

        res = PQgetResult(pg);

        if (res == NULL) {
            return last;
        }

        if (last) {
            PQclear(last);
        }

        last = res;
    }

failed:

    if (last) {
        PQclear(last);
    }

    return NULL;
}


/*
 * The node's directory and its dispatch secret (a start makes a new one;
 * a reload or a binary upgrade keeps it: old and new workers share the
 * dispatch socket), given to the worker user
 */

static ngx_int_t
mr_store_pg_node(ngx_cycle_t *cycle, mr_main_conf_t *mcf, ngx_uint_t start)
{
    u_char           *path;
    ngx_fd_t          fd;
    ngx_uint_t        make;
    ngx_file_info_t   fi;
    ngx_core_conf_t  *ccf;
    mr_pg_conf_t     *pcf;
    u_char            raw[MR_STORE_SECRET_LEN];

    pcf = mcf->pg;

    path = ngx_pnalloc(cycle->pool,
                       mcf->node_dir.len + sizeof("/dispatch.secret"));
    if (path == NULL) {
        return NGX_ERROR;
    }

    ngx_sprintf(path, "%V/dispatch.secret%Z", &mcf->node_dir);

    pcf->secret_path.data = path;
    pcf->secret_path.len = ngx_strlen(path);

    if (ngx_test_config) {
        return NGX_OK;
    }

    /* the directory was made with the dispatch socket (mr_route_listen()) */

    if (ngx_create_dir(mcf->node_dir.data, 0700) == NGX_FILE_ERROR
        && ngx_errno != NGX_EEXIST)
    {
        ngx_log_error(NGX_LOG_EMERG, cycle->log, ngx_errno,
                      "modelroute_node_dir: cannot create \"%V\"",
                      &mcf->node_dir);
        return NGX_ERROR;
    }

    make = start || ngx_file_info(path, &fi) == NGX_FILE_ERROR;

    if (make) {
        if (RAND_bytes(raw, sizeof(raw)) != 1) {
            ngx_log_error(NGX_LOG_EMERG, cycle->log, 0,
                          "modelroute_store: RAND_bytes() failed");
            return NGX_ERROR;
        }

        fd = ngx_open_file(path, NGX_FILE_WRONLY, NGX_FILE_TRUNCATE, 0600);

        if (fd == NGX_INVALID_FILE) {
            ngx_log_error(NGX_LOG_EMERG, cycle->log, ngx_errno,
                          "modelroute_node_dir: cannot write \"%s\"", path);
            return NGX_ERROR;
        }

        if (ngx_write_fd(fd, raw, sizeof(raw)) != (ssize_t) sizeof(raw)) {
            ngx_log_error(NGX_LOG_EMERG, cycle->log, ngx_errno,
                          "modelroute_node_dir: cannot write \"%s\"", path);
            (void) ngx_close_file(fd);
            return NGX_ERROR;
        }

        (void) ngx_close_file(fd);
    }

    /* the workers' */

    ccf = (ngx_core_conf_t *) ngx_get_conf(cycle->conf_ctx, ngx_core_module);

    if (geteuid() == 0 && ccf->master
        && ccf->user != (ngx_uid_t) NGX_CONF_UNSET_UINT && ccf->user != 0)
    {
        if (chown((char *) mcf->node_dir.data, ccf->user, ccf->group) == -1
            || chown((char *) path, ccf->user, ccf->group) == -1)
        {
            ngx_log_error(NGX_LOG_EMERG, cycle->log, ngx_errno,
                          "modelroute_node_dir: chown(\"%V\", %s) failed",
                          &mcf->node_dir, ccf->username);
            return NGX_ERROR;
        }
    }

    return NGX_OK;
}


/* a worker: the node's dispatch secret (a local file, read at once) */

ngx_int_t
mr_store_pg_node_secret(mr_pg_conf_t *pcf, u_char *secret)
{
    ssize_t   n;
    ngx_fd_t  fd;

    fd = ngx_open_file(pcf->secret_path.data, NGX_FILE_RDONLY,
                       NGX_FILE_OPEN, 0);

    if (fd == NGX_INVALID_FILE) {
        ngx_log_error(NGX_LOG_EMERG, ngx_cycle->log, ngx_errno,
                      "modelroute_node_dir: cannot read \"%V\"",
                      &pcf->secret_path);
        return NGX_ERROR;
    }

    n = ngx_read_fd(fd, secret, MR_STORE_SECRET_LEN);

    (void) ngx_close_file(fd);

    return n == MR_STORE_SECRET_LEN ? NGX_OK : NGX_ERROR;
}
