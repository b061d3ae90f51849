/*
 * Raw LMDB durable commit rate: one small put per write transaction, each
 * commit fsynced (default env flags), for a fixed time. This is the ceiling
 * of one-execution-per-commit; group commit should beat it.
 *
 *   cc -O2 -o lmdb_commit lmdb_commit.c -llmdb && ./lmdb_commit DIR SECONDS
 */
#include <lmdb.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

#define CHECK(x) do { int rc_ = (x); if (rc_) { \
    fprintf(stderr, "%s: %s\n", #x, mdb_strerror(rc_)); return 1; } } while (0)

int main(int argc, char **argv)
{
    MDB_env *env;
    MDB_txn *txn;
    MDB_dbi dbi;
    MDB_val k, v;
    char key[32], val[600];
    double secs, t0, t;
    unsigned long n = 0;

    if (argc != 3) {
        fprintf(stderr, "usage: %s DIR SECONDS\n", argv[0]);
        return 2;
    }
    secs = atof(argv[2]);
    memset(val, 'x', sizeof(val));

    CHECK(mdb_env_create(&env));
    CHECK(mdb_env_set_mapsize(env, 1UL << 30));
    CHECK(mdb_env_open(env, argv[1], 0, 0600));
    CHECK(mdb_txn_begin(env, NULL, 0, &txn));
    CHECK(mdb_dbi_open(txn, NULL, 0, &dbi));
    CHECK(mdb_txn_commit(txn));

    t0 = now();
    do {
        snprintf(key, sizeof(key), "k%016lu", n);
        k.mv_size = strlen(key); k.mv_data = key;
        v.mv_size = sizeof(val); v.mv_data = val;
        CHECK(mdb_txn_begin(env, NULL, 0, &txn));
        CHECK(mdb_put(txn, dbi, &k, &v, 0));
        CHECK(mdb_txn_commit(txn));
        n++;
        t = now();
    } while (t - t0 < secs);

    printf("%lu %.3f\n", n, t - t0);
    mdb_env_close(env);
    return 0;
}
