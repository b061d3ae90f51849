
/*
 * ModelRoute: an execution's stored input read for a provider's request.
 *
 * The stored input is the text the create encoded (jansson, compact,
 * keys sorted, MR_JSON_FLAGS).  A route's adapter reads it at each
 * attempt and copies most of it into the request it encodes; its long
 * strings are most of its bytes, and jansson decodes a string at about
 * 13 ns a byte and encodes it at 6.  Here each string value of
 * MR_INPUT_LONG bytes or more is set aside as it is stored (quotes and
 * escapes included), and jansson reads the rest with a short stand-in in
 * its place: "\u0000" and the string's number.  The create refuses a NUL
 * in any string (jansson does, without JSON_ALLOW_NUL), so no string of
 * an input is a stand-in, and a request's text holds "\u0000 only where a
 * stand-in was encoded (an escaped quote before it would be a NUL's
 * escape too).  Once the request is encoded (MR_JSON_FLAGS again), each
 * stand-in is replaced by the text it stands for: the same bytes that
 * decoding the string and encoding it again would give, the same encoder
 * with the same escapes having written them.
 *
 * The text is the store's, as the create wrote it: the strings set aside
 * are not decoded, so they are not checked again.  A \u0000 escape in it,
 * a string that does not end, or a text jansson refuses with its
 * stand-ins, and the input is read whole, as it was before.
 */


#include <ngx_config.h>
#include <ngx_core.h>

#include "mr_input.h"
#include "mr_http.h"


#define MR_INPUT_LONG      64           /* bytes, quotes included */
#define MR_INPUT_MARK      "\"\\u0000"  /* a stand-in's start, encoded */
#define MR_INPUT_MARK_LEN  (sizeof(MR_INPUT_MARK) - 1)


static ngx_uint_t mr_input_nul(ngx_str_t *text);
static u_char *mr_input_string_end(u_char *q, u_char *end);


json_t *
mr_input_load(ngx_pool_t *pool, ngx_str_t *text, mr_input_t *in)
{
    u_char       *p, *q, *last, *end, *skel, *w;
    json_t       *j;
    ngx_str_t    *s;
    ngx_array_t   strings;

    in->strings = NULL;
    in->n = 0;

    if (text->len < MR_INPUT_LONG || mr_input_nul(text)
        || ngx_array_init(&strings, pool, 8, sizeof(ngx_str_t)) != NGX_OK)
    {
        goto whole;
    }

    /* at most as long as the text: a stand-in is shorter than the string
       it stands for */

    skel = ngx_pnalloc(pool, text->len);
    if (skel == NULL) {
        goto whole;
    }

    p = text->data;
    end = p + text->len;
    w = skel;

    while ((q = memchr(p, '"', end - p)) != NULL) {

        last = mr_input_string_end(q, end);
        if (last == NULL) {
            break;
        }

        w = ngx_cpymem(w, p, q - p);

        if (last - q < MR_INPUT_LONG || (last < end && *last == ':')) {
            w = ngx_cpymem(w, q, last - q);     /* short, or a key */

        } else {
            s = ngx_array_push(&strings);
            if (s == NULL) {
                break;
            }

            s->data = q;
            s->len = last - q;

            w = ngx_sprintf(w, MR_INPUT_MARK "%ui\"", strings.nelts - 1);
        }

        p = last;
    }

    j = NULL;

    if (q == NULL && strings.nelts) {
        w = ngx_cpymem(w, p, end - p);

        j = json_loadb((char *) skel, w - skel, JSON_ALLOW_NUL, NULL);
    }

    (void) ngx_pfree(pool, skel);

    if (j) {
        in->strings = strings.elts;
        in->n = strings.nelts;
        return j;
    }

whole:

    return json_loadb((char *) text->data, text->len, 0, NULL);
}


/* a \u0000 escape in the text: one whose backslash no other escapes */

static ngx_uint_t
mr_input_nul(ngx_str_t *text)
{
    u_char  *p, *b, *end;

    p = text->data;
    end = p + text->len;

    while ((p = memmem(p, end - p, "\\u0000", 6)) != NULL) {

        for (b = p; b > text->data && b[-1] == '\\'; b--) {
            /* void */
        }

        if ((p - b) % 2 == 0) {
            return 1;
        }

        p += 6;
    }

    return 0;
}


/*
 * q opens a string: past the first quote after it that no odd run of
 * backslashes escapes (q, a quote, ends any run); NULL: none
 */

static u_char *
mr_input_string_end(u_char *q, u_char *end)
{
    u_char  *p, *b;

    p = q + 1;

    for ( ;; ) {
        p = memchr(p, '"', end - p);
        if (p == NULL) {
            return NULL;
        }

        for (b = p; b[-1] == '\\'; b--) {
            /* void */
        }

        if ((p - b) % 2 == 0) {
            return p + 1;
        }

        p++;
    }
}


ngx_int_t
mr_input_dump(ngx_pool_t *pool, json_t *json, mr_input_t *in,
    ngx_str_t *out)
{
    u_char      *p, *q, *d, *end, *w;
    size_t       len;
    ngx_str_t    text;
    ngx_uint_t   i, pass;

    if (mr_json_dump(pool, json, &text) != NGX_OK) {
        return NGX_ERROR;
    }

    if (in->n == 0) {
        *out = text;
        return NGX_OK;
    }

    /* the stand-ins replaced: the length first, then the text */

    len = 0;
    w = NULL;

    for (pass = 0; pass < 2; pass++) {
        p = text.data;
        end = p + text.len;

        while ((q = memmem(p, end - p, MR_INPUT_MARK, MR_INPUT_MARK_LEN))
               != NULL)
        {
            d = q + MR_INPUT_MARK_LEN;

            for (i = 0; d < end && *d >= '0' && *d <= '9'; d++) {
                i = i * 10 + (*d - '0');

                if (i >= in->n) {
                    return NGX_ERROR;
                }
            }

            if (d == end || *d != '"' || d == q + MR_INPUT_MARK_LEN) {
                return NGX_ERROR;
            }

            if (pass == 0) {
                len += (q - p) + in->strings[i].len;

            } else {
                w = ngx_cpymem(w, p, q - p);
                w = ngx_cpymem(w, in->strings[i].data, in->strings[i].len);
            }

            p = d + 1;
        }

        if (pass == 0) {
            len += end - p;

            out->data = ngx_pnalloc(pool, len);
            if (out->data == NULL) {
                return NGX_ERROR;
            }

            out->len = len;
            w = out->data;

        } else {
            ngx_memcpy(w, p, end - p);
        }
    }

    (void) ngx_pfree(pool, text.data);

    return NGX_OK;
}
