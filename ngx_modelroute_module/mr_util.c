
/*
 * ModelRoute: ids, clocks, money and hashing helpers.
 */


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_event.h>

#include <openssl/core_names.h>
#include <openssl/crypto.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/sha.h>

#include <sys/random.h>

#include "mr_util.h"


static ngx_int_t
mr_getrandom(u_char *dst, size_t n)
{
    ssize_t  got;

    while (n) {
        got = getrandom(dst, n, 0);

        if (got == -1) {
            if (ngx_errno == NGX_EINTR) {
                continue;
            }

            return NGX_ERROR;
        }

        dst += got;
        n -= (size_t) got;
    }

    return NGX_OK;
}


/*
 * Random bytes from the kernel (getrandom(2)), drawn 4 KB at a time: a
 * call per id costs more than the rest of a request.  A pool per thread:
 * the event loop's, and each store thread's.  A pool drawn in another
 * process (a fork copies the thread that forks, with its pool) is
 * dropped: no two processes hand out the same bytes.  Not OpenSSL's
 * RAND_bytes(): in a store thread it made OpenSSL state of that thread,
 * freed by the thread's exit, which nginx lets the worker race: the
 * worker's exit(), running OPENSSL_cleanup(), could free what the thread
 * was still freeing (a worker exiting on SIGSEGV, rarely, under load).
 */

ngx_int_t
mr_random_bytes(u_char *dst, size_t n)
{
    static __thread u_char     pool[4096];
    static __thread size_t     avail;
    static __thread ngx_pid_t  owner;

    if (n > sizeof(pool)) {
        return NGX_ERROR;
    }

    if (owner != ngx_pid) {
        ngx_memzero(pool, sizeof(pool));
        avail = 0;
        owner = ngx_pid;
    }

    if (avail < n) {
        if (mr_getrandom(pool, sizeof(pool)) != NGX_OK) {
            return NGX_ERROR;
        }

        avail = sizeof(pool);
    }

    avail -= n;
    ngx_memcpy(dst, pool + avail, n);

    /* never hand out the same bytes twice */
    ngx_memzero(pool + avail, n);

    return NGX_OK;
}


ngx_int_t
mr_random_id(u_char *dst, const char *prefix, size_t hexlen)
{
    size_t  plen;
    u_char  rnd[32];

    plen = ngx_strlen(prefix);

    if (hexlen / 2 > sizeof(rnd)
        || mr_random_bytes(rnd, hexlen / 2) != NGX_OK)
    {
        return NGX_ERROR;
    }

    dst = ngx_cpymem(dst, prefix, plen);
    mr_hex(dst, rnd, hexlen / 2);

    return NGX_OK;
}


ngx_int_t
mr_exec_id(u_char *dst, int64_t ms)
{
    dst = ngx_sprintf(dst, "exec_%012xL", (uint64_t) ms & 0xffffffffffffULL);

    return mr_random_id(dst, "", 32);
}


/* "<prefix><lowercase hex>" of exactly len characters */

ngx_int_t
mr_id_valid(ngx_str_t *id, const char *prefix, size_t len)
{
    size_t  i, plen;
    u_char  c;

    plen = ngx_strlen(prefix);

    if (id->len != len || ngx_strncmp(id->data, prefix, plen) != 0) {
        return 0;
    }

    for (i = plen; i < len; i++) {
        c = id->data[i];

        if (!((c >= '0' && c <= '9') || (c >= 'a' && c <= 'f'))) {
            return 0;
        }
    }

    return 1;
}


ngx_connection_t  mr_timer_conn = { .fd = (ngx_socket_t) -1 };


void
mr_timer_exact(ngx_event_t *ev, ngx_msec_t timer)
{
    if (ev->timer_set) {
        ngx_del_timer(ev);
    }

    ngx_add_timer(ev, timer);
}


/*
 * The store's clock (ms, and µs below): this machine's wall clock plus
 * mr_clock_offset, which the PostgreSQL store keeps at its server's clock
 * (mr_pg_clock_sample()), so that the nodes of a fleet write and compare
 * the times of leases, due work, expiries and idempotency keys on one
 * clock; 0 with LMDB.  What stays on this machine (rate limit windows, the
 * workers' heartbeats) is timed by mr_local_ms().
 */

int64_t  mr_clock_offset;


int64_t
mr_now_ms(void)
{
    return mr_local_ms() + mr_clock_offset;
}


/* this machine's wall clock, as of the event loop's last turn */

int64_t
mr_local_ms(void)
{
    ngx_time_t  *tp;

    tp = ngx_timeofday();

    return (int64_t) tp->sec * 1000 + tp->msec;
}


/* this machine's wall clock, now */

int64_t
mr_wall_ms(void)
{
    struct timeval  tv;

    ngx_gettimeofday(&tv);

    return (int64_t) tv.tv_sec * 1000 + tv.tv_usec / 1000;
}


/* a clock that never steps: intervals (the latency the gateway adds) */

int64_t
mr_mono_us(void)
{
    struct timespec  ts;

    (void) clock_gettime(CLOCK_MONOTONIC, &ts);

    return (int64_t) ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}


/* the clock itself, not the event loop's cached time: orders creations */

int64_t
mr_now_us(void)
{
    struct timeval  tv;

    ngx_gettimeofday(&tv);

    return (int64_t) tv.tv_sec * 1000000 + tv.tv_usec
           + mr_clock_offset * 1000;
}


/*
 * ISO 8601 in UTC to the millisecond: MR_TIME_LEN bytes, also for a time
 * out of range (a row edited by hand): clamped to 1970 .. 9999
 */

u_char *
mr_time_format(u_char *dst, int64_t ms)
{
    ngx_tm_t  tm;

    ms = ngx_max(ms, 0);
    ms = ngx_min(ms, MR_TIME_MAX_MS);

    ngx_gmtime((time_t) (ms / 1000), &tm);

    return ngx_sprintf(dst, "%4d-%02d-%02dT%02d:%02d:%02d.%03dZ",
                       tm.ngx_tm_year, tm.ngx_tm_mon, tm.ngx_tm_mday,
                       tm.ngx_tm_hour, tm.ngx_tm_min, tm.ngx_tm_sec,
                       (int) (ms % 1000));
}


/* "12", "12.5", "0.000001": non-negative, at most 6 decimal places */

ngx_int_t
mr_money_parse(u_char *s, size_t len, int64_t *out)
{
    size_t   i, frac;
    int64_t  v;
    ngx_int_t  dot, digits;

    v = 0;
    dot = 0;
    frac = 0;
    digits = 0;

    for (i = 0; i < len; i++) {

        if (s[i] == '.') {
            if (dot || digits == 0) {
                return NGX_ERROR;
            }
            dot = 1;
            continue;
        }

        if (s[i] < '0' || s[i] > '9') {
            return NGX_ERROR;
        }

        if (dot && ++frac > 6) {
            return NGX_ERROR;
        }

        v = v * 10 + (s[i] - '0');
        digits++;

        if (v > MR_MONEY_MAX) {
            return NGX_ERROR;
        }
    }

    if (digits == 0 || (dot && frac == 0)) {
        return NGX_ERROR;
    }

    while (frac++ < 6) {
        if (v > MR_MONEY_MAX / 10) {
            return NGX_ERROR;
        }

        v *= 10;
    }

    if (v > MR_MONEY_MAX) {
        return NGX_ERROR;
    }

    *out = v;

    return NGX_OK;
}


/* 48000 -> "0.048", 12500000 -> "12.50", 10000 -> "0.01" */

size_t
mr_money_format(u_char *dst, int64_t micros)
{
    u_char    *p;
    uint64_t   a;
    ngx_int_t  keep;

    p = dst;

    if (micros < 0) {
        *p++ = '-';
        a = (uint64_t) -micros;

    } else {
        a = (uint64_t) micros;
    }

    p = ngx_sprintf(p, "%uL.%06uL", a / 1000000, a % 1000000);

    for (keep = 4; keep > 0 && p[-1] == '0'; keep--) {
        p--;
    }

    return p - dst;
}


u_char *
mr_hex(u_char *dst, u_char *src, size_t len)
{
    return ngx_hex_dump(dst, src, len);
}


/*
 * SHA-256 with a digest context kept for the thread: OpenSSL 3's one-shot
 * SHA256() looks the algorithm up and takes locks on every call.  The
 * event loop and the store's commit threads (a delivery's target) both
 * hash: one context for the process, used by two threads at once, gave
 * wrong digests (a valid key refused), a heap corrupted and SIGSEGV.
 */

void
mr_sha256(u_char *dst, u_char *src, size_t len)
{
    static __thread EVP_MD      *md;
    static __thread EVP_MD_CTX  *ctx;

    if (ctx == NULL) {
        md = EVP_MD_fetch(NULL, "SHA256", NULL);
        ctx = EVP_MD_CTX_new();
    }

    if (md == NULL || ctx == NULL
        || EVP_DigestInit_ex(ctx, md, NULL) != 1
        || EVP_DigestUpdate(ctx, src, len) != 1
        || EVP_DigestFinal_ex(ctx, dst, NULL) != 1)
    {
        SHA256(src, len, dst);
    }
}


/*
 * HMAC-SHA256 of a message in parts, with a MAC context kept for the
 * thread (as mr_sha256()): OpenSSL 3's one-shot HMAC() looks the MAC and
 * the digest up and takes locks on every call, and wants the message in
 * one piece.  The key is never NULL here: EVP_MAC_init() with a NULL key
 * would sign with the context's previous one.
 */

ngx_int_t
mr_hmac_sha256(u_char *dst, u_char *key, size_t klen, ngx_str_t *parts,
    ngx_uint_t n)
{
    size_t                        len;
    EVP_MAC                      *mac;
    ngx_uint_t                    i;
    OSSL_PARAM                    params[2];
    static __thread EVP_MAC_CTX  *ctx;

    if (ctx == NULL) {
        mac = EVP_MAC_fetch(NULL, "HMAC", NULL);
        if (mac == NULL) {
            goto failed;
        }

        ctx = EVP_MAC_CTX_new(mac);
        EVP_MAC_free(mac);            /* the context holds its own */

        if (ctx == NULL) {
            goto failed;
        }

        params[0] = OSSL_PARAM_construct_utf8_string(OSSL_MAC_PARAM_DIGEST,
                                                     "SHA256", 0);
        params[1] = OSSL_PARAM_construct_end();

        if (EVP_MAC_CTX_set_params(ctx, params) != 1) {
            EVP_MAC_CTX_free(ctx);
            ctx = NULL;
            goto failed;
        }
    }

    if (EVP_MAC_init(ctx, key ? key : (u_char *) "", klen, NULL) != 1) {
        goto failed;
    }

    for (i = 0; i < n; i++) {
        if (EVP_MAC_update(ctx, parts[i].data, parts[i].len) != 1) {
            goto failed;
        }
    }

    if (EVP_MAC_final(ctx, dst, &len, MR_SHA256_LEN) == 1
        && len == MR_SHA256_LEN)
    {
        return NGX_OK;
    }

failed:

    /* nothing of it left for the next TLS call of this thread to read */
    ERR_clear_error();

    return NGX_ERROR;
}


ngx_int_t
mr_memeq_ct(u_char *a, u_char *b, size_t len)
{
    return CRYPTO_memcmp(a, b, len) == 0;
}


void
mr_be64_put(u_char *dst, uint64_t v)
{
    ngx_int_t  i;

    for (i = 7; i >= 0; i--) {
        dst[i] = (u_char) (v & 0xff);
        v >>= 8;
    }
}


uint64_t
mr_be64_get(u_char *src)
{
    ngx_int_t  i;
    uint64_t   v;

    v = 0;

    for (i = 0; i < 8; i++) {
        v = (v << 8) | src[i];
    }

    return v;
}


/* a directive's "name=value" parameter */

ngx_int_t
mr_conf_param(ngx_str_t *param, ngx_str_t *name, ngx_str_t *value)
{
    u_char  *eq;

    eq = ngx_strlchr(param->data, param->data + param->len, '=');
    if (eq == NULL) {
        return NGX_ERROR;
    }

    name->data = param->data;
    name->len = eq - param->data;
    value->data = eq + 1;
    value->len = param->data + param->len - value->data;

    return NGX_OK;
}
