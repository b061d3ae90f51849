
/*
 * ModelRoute: ids, clocks, money and hashing helpers.
 */


#ifndef _MR_UTIL_H_INCLUDED_
#define _MR_UTIL_H_INCLUDED_


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_event.h>


/*
 * "exec_" + 12 hex of milliseconds + 32 random hex (128 bits): time-ordered,
 * so that new executions land on the same few B-tree pages;
 * "org_"/"key_" + 24 hex, "req_" + 32 hex
 */
#define MR_EXEC_ID_LEN     49
#define MR_ORG_ID_LEN      28
#define MR_KEY_ID_LEN      28
#define MR_REQ_ID_LEN      36

#define MR_TIME_LEN        24      /* 2026-03-20T10:30:00.000Z */
#define MR_TIME_MAX_MS     253402300799999LL  /* 9999-12-31T23:59:59.999Z */
#define MR_MONEY_LEN       32
#define MR_SHA256_LEN      32

#define MR_MONEY_MAX       ((int64_t) 1000000000000000LL)  /* $1e9 */
#define MR_PRICE_MAX       ((int64_t) 1000000000000LL)     /* $1e6 */
#define MR_LEDGER_MAX      ((int64_t) 4000000000000000000LL)


ngx_int_t mr_random_bytes(u_char *dst, size_t n);
ngx_int_t mr_random_id(u_char *dst, const char *prefix, size_t hexlen);
ngx_int_t mr_exec_id(u_char *dst, int64_t ms);
ngx_int_t mr_id_valid(ngx_str_t *id, const char *prefix, size_t len);

int64_t mr_now_ms(void);
int64_t mr_now_us(void);
int64_t mr_local_ms(void);
int64_t mr_wall_ms(void);
int64_t mr_mono_us(void);

extern int64_t  mr_clock_offset;
u_char *mr_time_format(u_char *dst, int64_t ms);

ngx_int_t mr_money_parse(u_char *s, size_t len, int64_t *out);
size_t mr_money_format(u_char *dst, int64_t micros);

u_char *mr_hex(u_char *dst, u_char *src, size_t len);
void mr_sha256(u_char *dst, u_char *src, size_t len);
ngx_int_t mr_hmac_sha256(u_char *dst, u_char *key, size_t klen,
    ngx_str_t *parts, ngx_uint_t n);
ngx_int_t mr_memeq_ct(u_char *a, u_char *b, size_t len);

ngx_int_t mr_conf_param(ngx_str_t *param, ngx_str_t *name,
    ngx_str_t *value);

void mr_be64_put(u_char *dst, uint64_t v);

/*
 * The data of a timer that belongs to no connection: nginx's debug lines
 * for timers read ev->data as a connection (its fd), so it must point to
 * one; this one has fd -1.
 */
extern ngx_connection_t  mr_timer_conn;

/*
 * ngx_add_timer() without its lazy delay: that keeps a timer already set
 * whose key is within NGX_TIMER_LAZY_DELAY (300 ms) of the new one, so
 * a wake-up could come up to 300 ms late (or early).  Due in timer ms.
 */
void mr_timer_exact(ngx_event_t *ev, ngx_msec_t timer);

uint64_t mr_be64_get(u_char *src);


/*
 * ngx_cpymem() from a source that may be empty: an empty ngx_str_t or
 * buffer may point nowhere (NULL), and memcpy() from NULL is undefined
 * even for 0 bytes.
 */

static ngx_inline u_char *
mr_cpymem(void *dst, const void *src, size_t n)
{
    return n ? ngx_cpymem(dst, src, n) : (u_char *) dst;
}


#endif /* _MR_UTIL_H_INCLUDED_ */
