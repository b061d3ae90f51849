
/*
 * ModelRoute: the store, checked when the configuration is read.
 *
 * mr_store_check() runs in the master (and in "nginx -t") once the whole
 * configuration is read, before nginx commits to it: a refusal makes a
 * reload keep the old configuration with an [emerg] in the error log,
 * makes a start fail, and makes "nginx -t" fail.  Whatever could make the
 * store unusable for the workers is found here, so that nothing is left
 * to fail later in init_module, whose failure on a reload exits the
 * master.  The master never opens the store for writing (the workers
 * create it, as the worker user, and its tables), but to upgrade a store
 * of the previous format when nginx starts (mr_store_upgrade.c): not on a
 * reload or a binary upgrade, which such a store makes fail here.
 *
 * Checked, read-only (also by "nginx -t"):
 *   - the path fits, the map size can be mapped;
 *   - the directory exists, or its parent does and can be written;
 *   - an existing data.mdb is an LMDB file as long as its pages need (a
 *     truncated one would end the master with SIGBUS), a ModelRoute store
 *     (or an empty environment) of this format (or of the previous one,
 *     on a start), and holds no more than the map size: it is opened
 *     read-only, as mdb_stat does (a reader slot, never the write lock;
 *     without the lock file if there is none yet);
 *   - data.mdb and lock.mdb, in a directory of the worker user's, are
 *     files and not symbolic links (the master would follow them as root);
 *   - the worker user can reach the directory (search permission on every
 *     directory above it, checked by a child process that runs as that
 *     user, so ACLs and supplementary groups count) and can read and
 *     write the directory, data.mdb and lock.mdb.
 * On a start or reload, not for "nginx -t": the directory is created if
 * missing, and the directory and its files are given to the worker user
 * when the master runs as root (as nginx does for its temporary paths).
 */


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>
#include <nginx.h>

#include <sys/mman.h>
#include <grp.h>
#include <lmdb.h>
#include <openssl/rand.h>

#include "mr_store.h"
#include "mr_store_lmdb.h"


#define MR_CHECK_DIR    0
#define MR_CHECK_DATA   1
#define MR_CHECK_LOCK   2
#define MR_CHECK_FILES  3



typedef struct {
    char                     *path;
    int                       mode;          /* for access() */
    ngx_uint_t                exists;
    ngx_uint_t                checked;       /* no access() as the user */
    ngx_file_info_t           fi;
} mr_check_path_t;


typedef struct {
    ngx_cycle_t              *cycle;
    mr_main_conf_t           *mcf;
    ngx_core_conf_t          *ccf;
    mr_check_path_t           files[MR_CHECK_FILES];
    mr_check_path_t          *above;         /* "/", "/var", "/var/lib" */
    ngx_uint_t                nabove;
    ngx_uint_t                as_user;       /* workers switch to ccf->user */
    ngx_uint_t                start;         /* not a reload, an upgrade */
    ngx_uint_t                upgrade;       /* of the previous format */
} mr_check_t;


static ngx_int_t mr_store_check_map(mr_check_t *ck);
static ngx_int_t mr_store_check_dir(mr_check_t *ck);
static ngx_int_t mr_store_check_files(mr_check_t *ck);
static ngx_int_t mr_store_check_data(mr_check_t *ck);
static ngx_int_t mr_store_check_size(mr_check_t *ck, MDB_env *env);
static ngx_int_t mr_store_check_format(mr_check_t *ck, MDB_txn *txn);
static ngx_int_t mr_store_check_upgrade(mr_check_t *ck);
static ngx_int_t mr_store_check_owner(mr_check_t *ck);
static ngx_int_t mr_store_check_user(mr_check_t *ck);
static ngx_int_t mr_store_check_fail(mr_check_t *ck, mr_check_path_t *p,
    ngx_err_t err);
static char *mr_store_check_path(ngx_cycle_t *cycle, ngx_str_t *dir,
    const char *name);
static ngx_int_t mr_store_check_init(mr_check_t *ck, ngx_cycle_t *cycle,
    mr_main_conf_t *mcf);


ngx_int_t
mr_store_lmdb_check(ngx_cycle_t *cycle, mr_main_conf_t *mcf)
{
    mr_check_t  *ck;

    ck = ngx_pcalloc(cycle->pool, sizeof(mr_check_t));
    if (ck == NULL || mr_store_check_init(ck, cycle, mcf) != NGX_OK) {
        return NGX_ERROR;
    }

    if (mr_store_check_map(ck) != NGX_OK
        || mr_store_check_dir(ck) != NGX_OK
        || mr_store_check_data(ck) != NGX_OK
        || mr_store_check_owner(ck) != NGX_OK)
    {
        return NGX_ERROR;
    }

    /*
     * a store of the previous format is upgraded when nginx starts, in
     * init_module (mr_store_upgrade.c: its messages go to the error log
     * of the configuration), before any worker opens it; nginx -t notes it
     */

    mcf->upgrade = ck->upgrade;

    /*
     * a new dispatch secret on a start, not on a reload nor a binary
     * upgrade (whose new master inherits the listening sockets and shares
     * them with the old workers); the workers of this start store it
     */

    if (ck->start) {
        if (RAND_bytes(mcf->start_secret, sizeof(mcf->start_secret)) != 1) {
            ngx_log_error(NGX_LOG_EMERG, cycle->log, 0,
                          "modelroute_store: RAND_bytes() failed");
            return NGX_ERROR;
        }

        mcf->start = 1;
    }

    return NGX_OK;
}


static ngx_int_t
mr_store_check_init(mr_check_t *ck, ngx_cycle_t *cycle, mr_main_conf_t *mcf)
{
    ngx_uint_t  i;

    static const char  *names[] = { "", "/data.mdb", "/lock.mdb" };

    if (mcf->store_path.len + sizeof("/lock.mdb") > NGX_MAX_PATH) {
        ngx_log_error(NGX_LOG_EMERG, cycle->log, 0,
                      "modelroute_store: path too long");
        return NGX_ERROR;
    }

    ck->cycle = cycle;
    ck->mcf = mcf;
    ck->ccf = (ngx_core_conf_t *) ngx_get_conf(cycle->conf_ctx,
                                               ngx_core_module);

    /* a start, not a reload nor a binary upgrade (nor nginx -t) */

    ck->start = ngx_is_init_cycle(cycle->old_cycle)
                && !ngx_test_config
                && getenv(NGINX_VAR) == NULL;

    /* in single process mode nginx does not switch users */

    ck->as_user = (geteuid() == 0
                   && ck->ccf->master
                   && ck->ccf->user != (ngx_uid_t) NGX_CONF_UNSET_UINT
                   && ck->ccf->user != 0);

    for (i = 0; i < MR_CHECK_FILES; i++) {
        ck->files[i].path = mr_store_check_path(cycle, &mcf->store_path,
                                                names[i]);
        if (ck->files[i].path == NULL) {
            return NGX_ERROR;
        }

        ck->files[i].mode = (i == MR_CHECK_DIR) ? R_OK | W_OK | X_OK
                                                : R_OK | W_OK;
    }

    return NGX_OK;
}


/*
 * init_module, for a store of the previous format that mr_store_check()
 * found (a start, or nginx -t; never a reload): nginx -t says that the
 * start upgrades it; a start upgrades it (mr_store_upgrade.c), before any
 * worker opens it, and gives what the master made there to the worker
 * user.  A failure ends the start.
 */

ngx_int_t
mr_store_lmdb_start(ngx_cycle_t *cycle, mr_main_conf_t *mcf)
{
    mr_check_t  ck;

    if (!mcf->upgrade) {
        return NGX_OK;
    }

    if (ngx_test_config) {
        ngx_log_error(NGX_LOG_NOTICE, cycle->log, 0,
                      "modelroute_store: \"%V\" is of format %d: nginx "
                      "upgrades it to format %d when it starts",
                      &mcf->store_path, MR_STORE_VERSION - 1,
                      MR_STORE_VERSION);
        return NGX_OK;
    }

    if (mr_store_upgrade(cycle, mcf) != NGX_OK) {
        return NGX_ERROR;
    }

    ngx_memzero(&ck, sizeof(mr_check_t));

    if (mr_store_check_init(&ck, cycle, mcf) != NGX_OK
        || ngx_file_info(ck.files[MR_CHECK_DIR].path,
                         &ck.files[MR_CHECK_DIR].fi)
           == NGX_FILE_ERROR
        || mr_store_check_files(&ck) != NGX_OK)
    {
        return NGX_ERROR;
    }

    ck.files[MR_CHECK_DIR].exists = 1;

    return mr_store_check_owner(&ck);
}


/* the map is address space: an impossible size fails here, not in mmap() */

static ngx_int_t
mr_store_check_map(mr_check_t *ck)
{
    void  *p;

    p = mmap(NULL, ck->mcf->map_size, PROT_NONE,
             MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);

    if (p == MAP_FAILED) {
        ngx_log_error(NGX_LOG_EMERG, ck->cycle->log, ngx_errno,
                      "modelroute_store_map_size %uz cannot be mapped",
                      ck->mcf->map_size);
        return NGX_ERROR;
    }

    (void) munmap(p, ck->mcf->map_size);

    return NGX_OK;
}


static ngx_int_t
mr_store_check_dir(mr_check_t *ck)
{
    u_char           *p, *start, *last;
    ngx_err_t         err;
    ngx_uint_t        n;
    ngx_file_info_t   fi;
    mr_check_path_t  *f, *a;

    /* every directory above the store: "/", "/var", "/var/lib" */

    f = &ck->files[MR_CHECK_DIR];
    start = (u_char *) f->path;
    last = start + ngx_strlen(f->path);

    while (last - start > 1 && last[-1] == '/') {
        last--;
    }

    n = 0;

    for (p = start; p < last; p++) {
        n += (*p == '/');
    }

    ck->above = ngx_pcalloc(ck->cycle->pool, n * sizeof(mr_check_path_t));
    if (ck->above == NULL) {
        return NGX_ERROR;
    }

    for (p = start; p < last; p++) {
        if (*p != '/' || (p + 1 < last && p[1] == '/')) {
            continue;
        }

        a = &ck->above[ck->nabove++];
        a->mode = X_OK;
        a->exists = 1;
        a->path = ngx_pnalloc(ck->cycle->pool, p - start + 2);
        if (a->path == NULL) {
            return NGX_ERROR;
        }

        ngx_cpystrn((u_char *) a->path, start,
                    (p == start) ? 2 : p - start + 1);
    }

    f = &ck->files[MR_CHECK_DIR];

    if (ngx_file_info(f->path, &f->fi) != NGX_FILE_ERROR) {
        if (!ngx_is_dir(&f->fi)) {
            ngx_log_error(NGX_LOG_EMERG, ck->cycle->log, 0,
                          "modelroute_store: \"%s\" is not a directory",
                          f->path);
            return NGX_ERROR;
        }

        f->exists = 1;

        return mr_store_check_files(ck);
    }

    err = ngx_errno;

    if (err != NGX_ENOENT) {
        ngx_log_error(NGX_LOG_EMERG, ck->cycle->log, err,
                      "modelroute_store: cannot stat \"%s\"", f->path);
        return NGX_ERROR;
    }

    /* no directory: its parent must be there, and writable */

    a = ck->nabove ? &ck->above[ck->nabove - 1] : NULL;

    if (a == NULL
        || ngx_file_info(a->path, &fi) == NGX_FILE_ERROR
        || !ngx_is_dir(&fi))
    {
        ngx_log_error(NGX_LOG_EMERG, ck->cycle->log, 0,
                      "modelroute_store: the directory above \"%s\" "
                      "does not exist", f->path);
        return NGX_ERROR;
    }

    if (ngx_test_config) {
        if (access(a->path, W_OK | X_OK) == -1) {
            ngx_log_error(NGX_LOG_EMERG, ck->cycle->log, ngx_errno,
                          "modelroute_store: \"%s\" cannot be created",
                          f->path);
            return NGX_ERROR;
        }

        return NGX_OK;
    }

    if (ngx_create_dir(f->path, 0700) == NGX_FILE_ERROR
        && ngx_errno != NGX_EEXIST)
    {
        ngx_log_error(NGX_LOG_EMERG, ck->cycle->log, ngx_errno,
                      "modelroute_store: cannot create \"%s\"", f->path);
        return NGX_ERROR;
    }

    if (ngx_file_info(f->path, &f->fi) == NGX_FILE_ERROR) {
        ngx_log_error(NGX_LOG_EMERG, ck->cycle->log, ngx_errno,
                      "modelroute_store: cannot stat \"%s\"", f->path);
        return NGX_ERROR;
    }

    f->exists = 1;

    return mr_store_check_files(ck);
}


static ngx_int_t
mr_store_check_files(mr_check_t *ck)
{
    ngx_uint_t        i;
    mr_check_path_t  *f;

    for (i = MR_CHECK_DATA; i < MR_CHECK_FILES; i++) {
        f = &ck->files[i];

        /*
         * the directory belongs to the worker user, who chooses what is
         * in it: a link is never followed by the master (as root, LMDB
         * would rewrite the lock file's target, chown would give the
         * target away)
         */

        if (ngx_link_info(f->path, &f->fi) == NGX_FILE_ERROR) {
            if (ngx_errno != NGX_ENOENT) {
                ngx_log_error(NGX_LOG_EMERG, ck->cycle->log, ngx_errno,
                              "modelroute_store: cannot stat \"%s\"",
                              f->path);
                return NGX_ERROR;
            }

            f->exists = 0;
            continue;
        }

        if (ngx_is_link(&f->fi)) {
            ngx_log_error(NGX_LOG_EMERG, ck->cycle->log, 0,
                          "modelroute_store: \"%s\" is a symbolic link: "
                          "the store's files must be its own", f->path);
            return NGX_ERROR;
        }

        if (!ngx_is_file(&f->fi)) {
            ngx_log_error(NGX_LOG_EMERG, ck->cycle->log, 0,
                          "modelroute_store: \"%s\" is not a file", f->path);
            return NGX_ERROR;
        }

        f->exists = 1;
    }

    return NGX_OK;
}


/* an existing data.mdb, opened read-only */

static ngx_int_t
mr_store_check_data(mr_check_t *ck)
{
    int              rc;
    size_t           used;
    MDB_env         *env;
    MDB_txn         *txn;
    ngx_int_t        ok;
    MDB_stat         st;
    MDB_envinfo      info;
    unsigned int     flags;
    mr_check_path_t  *data;

    data = &ck->files[MR_CHECK_DATA];

    if (!data->exists || ngx_file_size(&data->fi) == 0) {
        return NGX_OK;     /* a new store: the workers make it */
    }

    /*
     * with the lock file if there is one: the workers may be writing (a
     * reader slot keeps the pages read here from being reused); with no
     * lock file nobody has the store open, and none is created here
     */

    flags = MDB_RDONLY | MDB_NOTLS;

    if (!ck->files[MR_CHECK_LOCK].exists) {
        flags |= MDB_NOLOCK;
    }

    env = NULL;
    txn = NULL;

    rc = mdb_env_create(&env);
    if (rc == 0) {
        rc = mdb_env_set_maxdbs(env, 32);
    }
    if (rc == 0) {
        rc = mdb_env_set_mapsize(env, ck->mcf->map_size);
    }
    if (rc == 0) {
        rc = mdb_env_open(env, ck->files[MR_CHECK_DIR].path, flags, 0600);
    }
    if (rc == 0 && mr_store_check_size(ck, env) != NGX_OK) {
        mdb_env_close(env);
        return NGX_ERROR;
    }
    if (rc == 0) {
        rc = mdb_txn_begin(env, NULL, MDB_RDONLY, &txn);
    }

    if (rc != 0) {
        if (rc == MDB_INVALID) {
            ngx_log_error(NGX_LOG_EMERG, ck->cycle->log, 0,
                          "modelroute_store: \"%s\" is not an LMDB file "
                          "(foreign or damaged): move it away, or point "
                          "modelroute_store elsewhere", data->path);

        } else if (rc == MDB_VERSION_MISMATCH) {
            ngx_log_error(NGX_LOG_EMERG, ck->cycle->log, 0,
                          "modelroute_store: \"%V\" was written by another "
                          "version of LMDB", &ck->mcf->store_path);

        } else {
            ngx_log_error(NGX_LOG_EMERG, ck->cycle->log, 0,
                          "modelroute_store: cannot open \"%V\": %s",
                          &ck->mcf->store_path, mdb_strerror(rc));
        }

        if (env) {
            mdb_env_close(env);
        }

        return NGX_ERROR;
    }

    ok = mr_store_check_format(ck, txn);

    /* the upgrade says so if the previous format does not fit */

    if (ok == NGX_OK && !ck->upgrade) {
        (void) mdb_env_stat(env, &st);
        (void) mdb_env_info(env, &info);

        used = (info.me_last_pgno + 1) * st.ms_psize;

        if (used > ck->mcf->map_size) {
            ngx_log_error(NGX_LOG_EMERG, ck->cycle->log, 0,
                          "modelroute_store: \"%V\" holds %uz bytes, more "
                          "than modelroute_store_map_size %uz",
                          &ck->mcf->store_path, used, ck->mcf->map_size);
            ok = NGX_ERROR;
        }
    }

    mdb_txn_abort(txn);
    mdb_env_close(env);

    return ok;
}


/*
 * LMDB maps data.mdb and reads its pages in place: a file shorter than the
 * pages its meta page names (truncated, half copied) would end the master
 * with SIGBUS on the first page past its end.  The meta pages were read
 * with pread() by mdb_env_open().
 */

static ngx_int_t
mr_store_check_size(mr_check_t *ck, MDB_env *env)
{
    off_t             need;
    MDB_stat          st;
    mdb_filehandle_t  fd;
    MDB_envinfo       info;
    ngx_file_info_t   fi;

    if (mdb_env_stat(env, &st) != 0
        || mdb_env_info(env, &info) != 0
        || mdb_env_get_fd(env, &fd) != 0
        || ngx_fd_info(fd, &fi) == NGX_FILE_ERROR)
    {
        ngx_log_error(NGX_LOG_EMERG, ck->cycle->log, ngx_errno,
                      "modelroute_store: cannot read the size of \"%s\"",
                      ck->files[MR_CHECK_DATA].path);
        return NGX_ERROR;
    }

    need = (off_t) (info.me_last_pgno + 1) * st.ms_psize;

    if (ngx_file_size(&fi) < need) {
        ngx_log_error(NGX_LOG_EMERG, ck->cycle->log, 0,
                      "modelroute_store: \"%s\" is damaged: it has %O "
                      "bytes and its pages need %O (a truncated or half "
                      "copied file): move it away, or point "
                      "modelroute_store elsewhere",
                      ck->files[MR_CHECK_DATA].path, ngx_file_size(&fi),
                      need);
        return NGX_ERROR;
    }

    return NGX_OK;
}


/* ModelRoute's tables, or none at all (a store the workers will make) */

static ngx_int_t
mr_store_check_format(mr_check_t *ck, MDB_txn *txn)
{
    int        rc;
    MDB_dbi    meta, main;
    MDB_val    k, v;
    MDB_stat   st;
    uint32_t   version;

    rc = mdb_dbi_open(txn, "meta", 0, &meta);

    if (rc == MDB_NOTFOUND) {
        rc = mdb_dbi_open(txn, NULL, 0, &main);
        if (rc == 0) {
            rc = mdb_stat(txn, main, &st);
        }

        if (rc == 0 && st.ms_entries == 0) {
            return NGX_OK;
        }

        if (rc == 0) {
            rc = MDB_INCOMPATIBLE;
        }
    }

    if (rc == 0) {
        k.mv_data = "version";
        k.mv_size = sizeof("version") - 1;

        rc = mdb_get(txn, meta, &k, &v);

        if (rc == 0 && v.mv_size != sizeof(uint32_t)) {
            rc = MDB_INCOMPATIBLE;
        }

        if (rc == MDB_NOTFOUND) {
            rc = MDB_INCOMPATIBLE;
        }
    }

    if (rc == MDB_INCOMPATIBLE) {
        ngx_log_error(NGX_LOG_EMERG, ck->cycle->log, 0,
                      "modelroute_store: \"%V\" holds an LMDB environment "
                      "that is not a ModelRoute store: point "
                      "modelroute_store elsewhere", &ck->mcf->store_path);
        return NGX_ERROR;
    }

    if (rc != 0) {
        ngx_log_error(NGX_LOG_EMERG, ck->cycle->log, 0,
                      "modelroute_store: \"%V\" cannot be read: %s",
                      &ck->mcf->store_path, mdb_strerror(rc));
        return NGX_ERROR;
    }

    ngx_memcpy(&version, v.mv_data, sizeof(uint32_t));

    if (version == MR_STORE_VERSION - 1) {
        return mr_store_check_upgrade(ck);
    }

    if (version != MR_STORE_VERSION) {
        ngx_log_error(NGX_LOG_EMERG, ck->cycle->log, 0,
                      "modelroute_store: \"%V\" was written by another "
                      "version of the module (format %uD; this one reads "
                      "format %d): move it away, or point modelroute_store "
                      "elsewhere", &ck->mcf->store_path, version,
                      MR_STORE_VERSION);
        return NGX_ERROR;
    }

    return NGX_OK;
}


/*
 * A store of the previous format: upgraded when nginx starts, not on a
 * reload or a binary upgrade, whose running workers use its format.
 */

static ngx_int_t
mr_store_check_upgrade(mr_check_t *ck)
{
    if (ngx_test_config) {
        ck->upgrade = 1;
        return NGX_OK;
    }

    if (!ck->start) {
        ngx_log_error(NGX_LOG_EMERG, ck->cycle->log, 0,
                      "modelroute_store: \"%V\" is of format %d and this "
                      "module upgrades it to format %d when nginx starts, "
                      "not on a reload or a binary upgrade, whose running "
                      "workers use format %d: stop nginx and start it",
                      &ck->mcf->store_path, MR_STORE_VERSION - 1,
                      MR_STORE_VERSION, MR_STORE_VERSION - 1);
        return NGX_ERROR;
    }

    ck->upgrade = 1;

    return NGX_OK;
}


/*
 * The store belongs to the worker user.  On a start or a reload the master
 * (root) gives it to that user; "nginx -t" changes nothing and checks
 * that the owner's permission bits would do once it had.
 */

static ngx_int_t
mr_store_check_owner(mr_check_t *ck)
{
    int               rc;
    mode_t            want;
    ngx_uint_t        i;
    mr_check_path_t  *f;

    for (i = 0; i < MR_CHECK_FILES; i++) {
        f = &ck->files[i];

        if (!f->exists) {
            continue;
        }

        if (!ck->as_user) {

            /* the workers are this very user */

            if (geteuid() != 0 && access(f->path, f->mode) == -1) {
                return mr_store_check_fail(ck, f, ngx_errno);
            }

            continue;
        }

        if (f->fi.st_uid == ck->ccf->user) {
            continue;
        }

        if (ngx_test_config) {

            /* what the owner may do once it is the worker user */

            want = S_IRUSR | S_IWUSR | ((f->mode & X_OK) ? S_IXUSR : 0);

            if ((f->fi.st_mode & want) != want) {
                return mr_store_check_fail(ck, f, NGX_EACCES);
            }

            f->checked = 1;
            continue;
        }

        /* a file swapped for a link since it was looked at: not followed */

        rc = (i == MR_CHECK_DIR)
             ? chown(f->path, ck->ccf->user, ck->ccf->group)
             : lchown(f->path, ck->ccf->user, ck->ccf->group);

        if (rc == -1) {
            ngx_log_error(NGX_LOG_EMERG, ck->cycle->log, ngx_errno,
                          "modelroute_store: chown(\"%s\", %s) failed",
                          f->path, ck->ccf->username);
            return NGX_ERROR;
        }
    }

    if (!ck->as_user) {
        return NGX_OK;
    }

    return mr_store_check_user(ck);
}


/*
 * A child process becomes the worker user and tries each path with
 * access(): the kernel's answer, with ACLs and supplementary groups.
 */

static ngx_int_t
mr_store_check_user(mr_check_t *ck)
{
    int                fd[2], res[2];
    size_t             size;
    ssize_t            n;
    ngx_pid_t          pid;
    ngx_uint_t         i, count;
    mr_check_path_t   *f, **all;

    size = (ck->nabove + MR_CHECK_FILES) * sizeof(mr_check_path_t *);

    all = ngx_palloc(ck->cycle->pool, size);
    if (all == NULL) {
        return NGX_ERROR;
    }

    count = 0;

    for (i = 0; i < ck->nabove; i++) {
        all[count++] = &ck->above[i];
    }

    for (i = 0; i < MR_CHECK_FILES; i++) {
        if (ck->files[i].exists && !ck->files[i].checked) {
            all[count++] = &ck->files[i];
        }
    }

    if (pipe(fd) == -1) {
        ngx_log_error(NGX_LOG_EMERG, ck->cycle->log, ngx_errno,
                      "modelroute_store: pipe() failed");
        return NGX_ERROR;
    }

    pid = fork();

    if (pid == -1) {
        ngx_log_error(NGX_LOG_EMERG, ck->cycle->log, ngx_errno,
                      "modelroute_store: fork() failed");
        close(fd[0]);
        close(fd[1]);
        return NGX_ERROR;
    }

    if (pid == 0) {
        close(fd[0]);

        res[0] = -1;
        res[1] = 0;

        if (setgid(ck->ccf->group) == -1
            || initgroups(ck->ccf->username, ck->ccf->group) == -1
            || setuid(ck->ccf->user) == -1)
        {
            res[1] = errno;

        } else {
            for (i = 0; i < count; i++) {
                if (access(all[i]->path, all[i]->mode) == -1) {
                    res[1] = errno;
                    break;
                }
            }

            res[0] = (int) i;
        }

        if (write(fd[1], res, sizeof(res)) != sizeof(res)) {
            _exit(1);
        }

        _exit(0);
    }

    close(fd[1]);

    do {
        n = read(fd[0], res, sizeof(res));
    } while (n == -1 && ngx_errno == NGX_EINTR);

    close(fd[0]);

    /* the master's SIGCHLD handler may reap it first: the pipe tells */

    while (waitpid(pid, NULL, 0) == -1 && ngx_errno == NGX_EINTR) {
        /* void */
    }

    if (n != sizeof(res)) {
        ngx_log_error(NGX_LOG_EMERG, ck->cycle->log, 0,
                      "modelroute_store: the access check as user \"%s\" "
                      "failed", ck->ccf->username);
        return NGX_ERROR;
    }

    if (res[0] == -1) {
        ngx_log_error(NGX_LOG_EMERG, ck->cycle->log, res[1],
                      "modelroute_store: cannot check the store as user "
                      "\"%s\"", ck->ccf->username);
        return NGX_ERROR;
    }

    if ((ngx_uint_t) res[0] < count) {
        f = all[res[0]];
        return mr_store_check_fail(ck, f, res[1]);
    }

    return NGX_OK;
}


static ngx_int_t
mr_store_check_fail(mr_check_t *ck, mr_check_path_t *f, ngx_err_t err)
{
    u_char  *last;
    u_char   who[128];

    if (ck->as_user) {
        last = ngx_snprintf(who, sizeof(who) - 1, "user \"%s\"",
                            ck->ccf->username);

    } else {
        last = ngx_snprintf(who, sizeof(who) - 1, "uid %d",
                            (int) geteuid());
    }

    *last = '\0';

    if (f->mode == X_OK) {
        ngx_log_error(NGX_LOG_EMERG, ck->cycle->log, err,
                      "modelroute_store: the workers (%s) cannot reach "
                      "\"%V\": they need search permission on \"%s\"",
                      who, &ck->mcf->store_path, f->path);

    } else {
        ngx_log_error(NGX_LOG_EMERG, ck->cycle->log, err,
                      "modelroute_store: the workers (%s) cannot read and "
                      "write \"%s\"", who, f->path);
    }

    return NGX_ERROR;
}


static char *
mr_store_check_path(ngx_cycle_t *cycle, ngx_str_t *dir, const char *name)
{
    u_char  *p, *path;
    size_t   len;

    len = ngx_strlen(name);

    path = ngx_pnalloc(cycle->pool, dir->len + len + 1);
    if (path == NULL) {
        return NULL;
    }

    p = ngx_cpymem(path, dir->data, dir->len);
    ngx_memcpy(p, name, len + 1);

    return (char *) path;
}
