
/*
 * ModelRoute: an execution's input, its long strings set aside.
 *
 * The stored input is the text the create encodes (jansson, compact,
 * keys sorted, MR_JSON_FLAGS); a route's adapter reads it at each
 * attempt and copies most of it into the request it encodes.  Long
 * strings are most of an input's bytes, and jansson decodes a string at
 * about 13 ns a byte and encodes it at 6: each string value of
 * MR_INPUT_LONG bytes or more as written is set aside with its text
 * (quotes and escapes included), jansson works on the rest with a short
 * stand-in in its place, "\u0000" and the string's number, and each
 * stand-in in the text jansson writes is replaced by the text it stands
 * for.  The create refuses a NUL in any string (jansson does, without
 * JSON_ALLOW_NUL), so no string of an input is a stand-in, and a text
 * holds "\u0000 only where a stand-in was encoded (an escaped quote
 * before it would be a NUL's escape too).
 *
 * At the create (mr_input_set_aside), a string of the input is set aside
 * only if the body writes it as jansson would (mr_input_same): the
 * stored text is then byte for byte what encoding the whole input gives,
 * and so is the fingerprint.  The body is what jansson has just parsed:
 * its string values come in the same order as the parsed values do
 * (objects keep their keys' order; duplicate keys are refused), and each
 * is compared with the value it is taken for.
 *
 * At an attempt (mr_input_load), the text is the store's, as the create
 * wrote it: the strings set aside are not decoded, so not checked again.
 * A \u0000 escape in it, a string that does not end, or a text jansson
 * refuses with its stand-ins, and the input is read whole.  The request
 * (MR_JSON_FLAGS again) gets the stored text back: the same bytes that
 * decoding the string and encoding it again would give.
 */


#include <ngx_config.h>
#include <ngx_core.h>

#include "mr_input.h"
#include "mr_http.h"


#define MR_INPUT_LONG      64           /* bytes, quotes included */
#define MR_INPUT_MARK      "\"\\u0000"  /* a stand-in's start, encoded */
#define MR_INPUT_MARK_LEN  (sizeof(MR_INPUT_MARK) - 1)
#define MR_INPUT_DEPTH     64           /* deeper: nothing set aside */


/* mr_input_same() knows the escapes of these flags only */

#if (MR_JSON_FLAGS & (JSON_ENSURE_ASCII | JSON_ESCAPE_SLASH))
#error "mr_input.c: MR_JSON_FLAGS escapes what mr_input_same() does not"
#endif


typedef struct {
    ngx_uint_t         ord;             /* of the body's string values */
    u_char            *data;            /* its text, quotes included */
    size_t             len;
} mr_input_lit_t;


typedef struct {
    json_t            *input;
    mr_input_lit_t    *lits;            /* the body's long string values */
    ngx_uint_t         nlits;
    ngx_uint_t         next;            /* of lits */
    ngx_uint_t         ord;             /* string values walked */
    ngx_array_t        strings;         /* ngx_str_t */
    ngx_array_t        swaps;           /* mr_input_swap_t */
    size_t             len;             /* of the strings */
} mr_input_walk_t;


static ngx_int_t mr_input_lits(ngx_pool_t *pool, ngx_str_t *text,
    mr_input_walk_t *w);
static ngx_int_t mr_input_walk(mr_input_walk_t *w, json_t *v,
    json_t *parent, const char *key, size_t index, ngx_uint_t inside,
    ngx_uint_t depth);
static ngx_uint_t mr_input_same(mr_input_lit_t *lit, json_t *v);
static ngx_uint_t mr_input_nul(ngx_str_t *text);
static ngx_int_t mr_input_string(u_char *q, u_char *end, u_char **last);


/*
 * The create: each long string of the input that the body (text) writes
 * as jansson would takes a stand-in's place in the parsed body until
 * mr_input_restore() (a failed allocation sets nothing aside).  The
 * caller encodes the input and passes the text to mr_input_splice().
 */

void
mr_input_set_aside(ngx_pool_t *pool, ngx_str_t *text, json_t *body,
    json_t *input, mr_input_t *in)
{
    u_char            buf[1 + NGX_INT_T_LEN];
    int               rc;
    size_t            len;
    json_t           *standin;
    ngx_uint_t        i;
    mr_input_swap_t  *sw;
    mr_input_walk_t   w;

    in->strings = NULL;
    in->n = 0;
    in->len = 0;
    in->swaps = NULL;

    ngx_memzero(&w, sizeof(mr_input_walk_t));
    w.input = input;

    if (text->len < MR_INPUT_LONG
        || mr_input_lits(pool, text, &w) != NGX_OK
        || w.nlits == 0
        || ngx_array_init(&w.strings, pool, 8, sizeof(ngx_str_t)) != NGX_OK
        || ngx_array_init(&w.swaps, pool, 8, sizeof(mr_input_swap_t))
           != NGX_OK)
    {
        return;
    }

    if (mr_input_walk(&w, body, NULL, NULL, 0, 0, 0) != NGX_OK) {
        sw = w.swaps.elts;

        for (i = 0; i < w.swaps.nelts; i++) {
            json_decref(sw[i].value);
        }

        return;
    }

    /* after the walk: an object's iteration never sees its values set */

    sw = w.swaps.elts;

    for (i = 0; i < w.swaps.nelts; i++) {
        buf[0] = '\0';
        len = ngx_sprintf(buf + 1, "%ui", i) - buf;

        standin = json_stringn_nocheck((char *) buf, len);

        if (standin == NULL) {
            rc = -1;

        } else if (sw[i].key) {
            rc = json_object_set_new_nocheck(sw[i].parent, sw[i].key,
                                             standin);
        } else {
            rc = json_array_set_new(sw[i].parent, sw[i].index, standin);
        }

        /* a failed set freed the stand-in and left the string */

        if (rc != 0) {
            in->swaps = sw;
            in->n = i;
            mr_input_restore(in);

            for ( /* void */ ; i < w.swaps.nelts; i++) {
                json_decref(sw[i].value);
            }

            return;
        }
    }

    in->strings = w.strings.elts;
    in->n = w.strings.nelts;
    in->len = w.len;
    in->swaps = sw;
}


/*
 * The strings set aside back in their places in the parsed body.  A set
 * cannot fail here: the stand-in's set grew the object's table if it had
 * to, and a key that is there takes its new value in its place.
 */

void
mr_input_restore(mr_input_t *in)
{
    ngx_uint_t        i;
    mr_input_swap_t  *sw;

    if (in->swaps == NULL) {
        return;
    }

    sw = in->swaps;

    for (i = 0; i < in->n; i++) {
        if (sw[i].key) {
            (void) json_object_set_new_nocheck(sw[i].parent, sw[i].key,
                                               sw[i].value);
        } else {
            (void) json_array_set_new(sw[i].parent, sw[i].index,
                                      sw[i].value);
        }
    }

    in->swaps = NULL;
    in->strings = NULL;
    in->n = 0;
}


/* the body's long string values (not keys), each with its order among
   all of its string values */

static ngx_int_t
mr_input_lits(ngx_pool_t *pool, ngx_str_t *text, mr_input_walk_t *w)
{
    u_char          *p, *q, *last, *end;
    ngx_int_t        rc;
    ngx_uint_t       ord;
    ngx_array_t      lits;
    mr_input_lit_t  *lit;

    if (ngx_array_init(&lits, pool, 8, sizeof(mr_input_lit_t)) != NGX_OK) {
        return NGX_ERROR;
    }

    p = text->data;
    end = p + text->len;
    ord = 0;

    while ((q = memchr(p, '"', end - p)) != NULL) {

        rc = mr_input_string(q, end, &last);
        if (rc == NGX_ERROR) {
            return NGX_ERROR;
        }

        if (rc == NGX_OK) {

            if (last - q >= MR_INPUT_LONG) {
                lit = ngx_array_push(&lits);
                if (lit == NULL) {
                    return NGX_ERROR;
                }

                lit->ord = ord;
                lit->data = q;
                lit->len = last - q;
            }

            ord++;
        }

        p = last;
    }

    w->lits = lits.elts;
    w->nlits = lits.nelts;

    return NGX_OK;
}


/* the parsed body in its text's order: its string values paired with
   the long ones of the text */

static ngx_int_t
mr_input_walk(mr_input_walk_t *w, json_t *v, json_t *parent,
    const char *key, size_t index, ngx_uint_t inside, ngx_uint_t depth)
{
    size_t            i;
    json_t           *e;
    ngx_str_t        *s;
    ngx_uint_t        ord;
    const char       *k;
    mr_input_lit_t   *lit;
    mr_input_swap_t  *sw;

    if (depth > MR_INPUT_DEPTH) {
        return NGX_DECLINED;
    }

    inside = inside || v == w->input;

    switch (json_typeof(v)) {

    case JSON_OBJECT:
        json_object_foreach(v, k, e) {
            if (mr_input_walk(w, e, v, k, 0, inside, depth + 1) != NGX_OK) {
                return NGX_DECLINED;
            }
        }

        return NGX_OK;

    case JSON_ARRAY:
        json_array_foreach(v, i, e) {
            if (mr_input_walk(w, e, v, NULL, i, inside, depth + 1) != NGX_OK)
            {
                return NGX_DECLINED;
            }
        }

        return NGX_OK;

    case JSON_STRING:
        break;

    default:
        return NGX_OK;
    }

    ord = w->ord++;

    if (w->next == w->nlits || w->lits[w->next].ord != ord) {
        return NGX_OK;
    }

    lit = &w->lits[w->next++];

    if (!inside || !mr_input_same(lit, v)) {
        return NGX_OK;
    }

    /* a swap is pushed whole before its string: the caller undoes swaps */

    sw = ngx_array_push(&w->swaps);
    if (sw == NULL) {
        return NGX_ERROR;
    }

    sw->parent = parent;
    sw->key = key;
    sw->index = index;
    sw->value = json_incref(v);

    s = ngx_array_push(&w->strings);
    if (s == NULL) {
        return NGX_ERROR;
    }

    s->data = lit->data;
    s->len = lit->len;

    w->len += lit->len;

    return NGX_OK;
}


/*
 * Whether a string's text (quotes included) is what jansson writes for
 * the value: its bytes as they are but for '"', '\\', \b \f \n \r \t
 * and the other control characters as \u00XX, upper case
 */

static ngx_uint_t
mr_input_same(mr_input_lit_t *lit, json_t *v)
{
    u_char  *p, *b, *end, *s, *send, c;
    size_t   n;

    p = lit->data + 1;
    end = lit->data + lit->len - 1;
    s = (u_char *) json_string_value(v);
    send = s + json_string_length(v);

    for ( ;; ) {
        b = memchr(p, '\\', end - p);
        n = (b ? b : end) - p;

        if (n > (size_t) (send - s) || ngx_memcmp(p, s, n) != 0) {
            return 0;
        }

        p += n;
        s += n;

        if (b == NULL) {
            return s == send;
        }

        if (end - p < 2) {
            return 0;
        }

        switch (p[1]) {

        case '"':
            c = '"';
            break;

        case '\\':
            c = '\\';
            break;

        case 'b':
            c = '\b';
            break;

        case 'f':
            c = '\f';
            break;

        case 'n':
            c = '\n';
            break;

        case 'r':
            c = '\r';
            break;

        case 't':
            c = '\t';
            break;

        case 'u':
            if (end - p < 6 || p[2] != '0' || p[3] != '0'
                || (p[4] != '0' && p[4] != '1')
                || !((p[5] >= '0' && p[5] <= '9')
                     || (p[5] >= 'A' && p[5] <= 'F')))
            {
                return 0;
            }

            c = (p[4] - '0') * 16
                + (p[5] <= '9' ? p[5] - '0' : p[5] - 'A' + 10);

            if (c == '\0' || c == '\b' || c == '\f' || c == '\n' || c == '\r'
                || c == '\t')
            {
                return 0;
            }

            p += 4;
            break;

        default:
            return 0;
        }

        if (s == send || *s != c) {
            return 0;
        }

        s++;
        p += 2;
    }
}


json_t *
mr_input_load(ngx_pool_t *pool, ngx_str_t *text, mr_input_t *in)
{
    u_char       *p, *q, *last, *end, *skel, *w;
    json_t       *j;
    ngx_int_t     rc;
    ngx_str_t    *s;
    ngx_array_t   strings;

    in->strings = NULL;
    in->n = 0;
    in->len = 0;
    in->swaps = NULL;

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

        rc = mr_input_string(q, end, &last);
        if (rc == NGX_ERROR) {
            break;
        }

        w = ngx_cpymem(w, p, q - p);

        if (last - q < MR_INPUT_LONG || rc == NGX_DECLINED) {
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
 * The string q opens: *last past the first quote after q that no odd run
 * of backslashes escapes (q, a quote, ends any run).  NGX_OK: a value;
 * NGX_DECLINED: a key (the next byte but spaces is ':'); NGX_ERROR: the
 * string does not end.
 */

static ngx_int_t
mr_input_string(u_char *q, u_char *end, u_char **last)
{
    u_char  *p, *b;

    for (p = q + 1; /* void */; p++) {
        p = memchr(p, '"', end - p);
        if (p == NULL) {
            return NGX_ERROR;
        }

        for (b = p; b[-1] == '\\'; b--) {
            /* void */
        }

        if ((p - b) % 2 == 0) {
            break;
        }
    }

    *last = ++p;

    while (p < end && (*p == ' ' || *p == '\t' || *p == '\n' || *p == '\r'))
    {
        p++;
    }

    return (p < end && *p == ':') ? NGX_DECLINED : NGX_OK;
}


ngx_int_t
mr_input_dump(ngx_pool_t *pool, json_t *json, mr_input_t *in,
    ngx_str_t *out)
{
    ngx_str_t  text;

    if (mr_json_dump(pool, json, &text) != NGX_OK) {
        return NGX_ERROR;
    }

    return mr_input_splice(pool, &text, in, out);
}


/* a text jansson wrote with the stand-ins replaced by what they stand for */

ngx_int_t
mr_input_splice(ngx_pool_t *pool, ngx_str_t *text, mr_input_t *in,
    ngx_str_t *out)
{
    u_char      *p, *q, *d, *end, *w;
    size_t       len;
    ngx_uint_t   i, pass;

    if (in->n == 0) {
        *out = *text;
        return NGX_OK;
    }

    /* the length first, then the text */

    len = 0;
    w = NULL;

    for (pass = 0; pass < 2; pass++) {
        p = text->data;
        end = p + text->len;

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

    (void) ngx_pfree(pool, text->data);

    return NGX_OK;
}
