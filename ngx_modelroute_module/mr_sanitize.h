
/*
 * ModelRoute: sanitizer builds only (./build.sh test-sanitize).
 *
 * The config script force-includes this header (-include) into every module
 * file when the module is built with -fsanitize=address; a normal build
 * never sees it.  nginx pools carve small allocations out of big blocks, so
 * ASan cannot see a module allocation overrun into its neighbour.  Here the
 * module's own pool allocations (and the arrays and temporary buffers it
 * makes) become blocks of their own, exactly the size asked for, owned by
 * the pool as nginx's "large" allocations: freed with the pool after its
 * cleanup handlers ran, by ngx_reset_pool() and by ngx_pfree(), as nginx
 * frees any large allocation.  Allocations made by nginx itself are not
 * redirected.
 */


#ifndef _MR_SANITIZE_H_INCLUDED_
#define _MR_SANITIZE_H_INCLUDED_


#include <ngx_config.h>
#include <ngx_core.h>


#if defined(__SANITIZE_ADDRESS__)

void *mr_sanitize_palloc(ngx_pool_t *pool, size_t size);
void *mr_sanitize_pcalloc(ngx_pool_t *pool, size_t size);
ngx_buf_t *mr_sanitize_create_temp_buf(ngx_pool_t *pool, size_t size);
ngx_int_t mr_sanitize_array_init(ngx_array_t *a, ngx_pool_t *pool,
    ngx_uint_t n, size_t size);
ngx_array_t *mr_sanitize_array_create(ngx_pool_t *pool, ngx_uint_t n,
    size_t size);
void *mr_sanitize_array_push_n(ngx_array_t *a, ngx_uint_t n);

#define ngx_palloc(pool, size)           mr_sanitize_palloc(pool, size)
#define ngx_pnalloc(pool, size)          mr_sanitize_palloc(pool, size)
#define ngx_pcalloc(pool, size)          mr_sanitize_pcalloc(pool, size)
#define ngx_create_temp_buf(pool, size)  mr_sanitize_create_temp_buf(pool, size)
#define ngx_array_init(a, pool, n, size)                                      \
    mr_sanitize_array_init(a, pool, n, size)
#define ngx_array_create(pool, n, size)                                       \
    mr_sanitize_array_create(pool, n, size)
#define ngx_array_push(a)                mr_sanitize_array_push_n(a, 1)
#define ngx_array_push_n(a, n)           mr_sanitize_array_push_n(a, n)

#endif


#endif /* _MR_SANITIZE_H_INCLUDED_ */
