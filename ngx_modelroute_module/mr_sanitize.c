
/*
 * ModelRoute: sanitizer builds only (./build.sh test-sanitize): the pool
 * redirection declared in mr_sanitize.h, and the sanitizers' options.
 */


#include <ngx_config.h>
#include <ngx_core.h>

#include "mr_sanitize.h"


#if defined(__SANITIZE_ADDRESS__)

/* malloc's alignment, at least the NGX_ALIGNMENT ngx_palloc() promises */
#define MR_SANITIZE_ALIGNMENT  16


void *
mr_sanitize_palloc(ngx_pool_t *pool, size_t size)
{
    return ngx_pmemalign(pool, size, MR_SANITIZE_ALIGNMENT);
}


void *
mr_sanitize_pcalloc(ngx_pool_t *pool, size_t size)
{
    void  *p;

    p = ngx_pmemalign(pool, size, MR_SANITIZE_ALIGNMENT);
    if (p != NULL) {
        ngx_memzero(p, size);
    }

    return p;
}


ngx_buf_t *
mr_sanitize_create_temp_buf(ngx_pool_t *pool, size_t size)
{
    ngx_buf_t  *b;

    b = mr_sanitize_pcalloc(pool, sizeof(ngx_buf_t));
    if (b == NULL) {
        return NULL;
    }

    b->start = mr_sanitize_palloc(pool, size);
    if (b->start == NULL) {
        return NULL;
    }

    b->pos = b->start;
    b->last = b->start;
    b->end = b->last + size;
    b->temporary = 1;

    return b;
}


ngx_int_t
mr_sanitize_array_init(ngx_array_t *a, ngx_pool_t *pool, ngx_uint_t n,
    size_t size)
{
    a->nelts = 0;
    a->size = size;
    a->nalloc = n;
    a->pool = pool;

    a->elts = mr_sanitize_palloc(pool, n * size);
    if (a->elts == NULL) {
        return NGX_ERROR;
    }

    return NGX_OK;
}


ngx_array_t *
mr_sanitize_array_create(ngx_pool_t *pool, ngx_uint_t n, size_t size)
{
    ngx_array_t  *a;

    a = mr_sanitize_palloc(pool, sizeof(ngx_array_t));
    if (a == NULL) {
        return NULL;
    }

    if (mr_sanitize_array_init(a, pool, n, size) != NGX_OK) {
        return NULL;
    }

    return a;
}


/*
 * A full array always moves, and its old elements are freed when the pool
 * owns them as a large allocation: a pointer kept across a push is caught.
 */

void *
mr_sanitize_array_push_n(ngx_array_t *a, ngx_uint_t n)
{
    void        *elt, *elts;
    ngx_uint_t   nalloc;

    if (a->nelts + n > a->nalloc) {
        nalloc = 2 * ngx_max(n, a->nalloc);

        elts = mr_sanitize_palloc(a->pool, nalloc * a->size);
        if (elts == NULL) {
            return NULL;
        }

        if (a->nelts) {
            ngx_memcpy(elts, a->elts, a->nelts * a->size);
        }

        (void) ngx_pfree(a->pool, a->elts);

        a->elts = elts;
        a->nalloc = nalloc;
    }

    elt = (u_char *) a->elts + a->size * a->nelts;
    a->nelts += n;

    return elt;
}

#endif


/*
 * UBSan's options, compiled in.  UBSan starts at its first report, in a
 * worker, whose environment nginx has replaced: it would not see
 * UBSAN_OPTIONS.  Its reports go to stderr, which nginx points at the error
 * log (log_path cannot move them: with ASan preloaded, UBSan's request for a
 * report path reaches ASan's runtime).  ASan starts before nginx does and
 * takes its options from ASAN_OPTIONS; an __asan_default_options() here
 * would never be called.
 */

const char *__ubsan_default_options(void);


const char *
__ubsan_default_options(void)
{
    return "halt_on_error=1:print_stacktrace=1:report_error_type=1";
}
