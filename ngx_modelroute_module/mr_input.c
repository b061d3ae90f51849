
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
 * At the create (mr_input_load_body), the body is untrusted: a string
 * value inside its top-level "input" is set aside before jansson parses
 * the body, and only if it is plain (mr_input_plain): valid UTF-8 with
 * only the escapes jansson writes, so that jansson would accept it and
 * write it back as it is written.  The stored text is then byte for byte
 * what encoding the whole input gives, and so is the fingerprint; the
 * input's other strings (a "\/", a "\u0041", lower-case hex) and the
 * body's other fields are jansson's to read.  jansson parses the rest
 * (JSON_ALLOW_NUL for the stand-ins, after a check that the body holds
 * no \u0000 of its own).
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


/* mr_input_escape() knows the escapes of these flags only */

#if (MR_JSON_FLAGS & (JSON_ENSURE_ASCII | JSON_ESCAPE_SLASH))
#error "mr_input.c: MR_JSON_FLAGS escapes what mr_input_escape() does not"
#endif


static json_t *mr_input_skeleton(ngx_pool_t *pool, ngx_str_t *text,
    ngx_uint_t body, mr_input_t *in);
static ngx_uint_t mr_input_plain(u_char *p, u_char *end);
static size_t mr_input_escape(u_char *p, u_char *end);
static size_t mr_input_utf8(u_char *p, u_char *end);
static ngx_uint_t mr_input_nul(ngx_str_t *text);
static ngx_int_t mr_input_string(u_char *q, u_char *end, u_char **last);


/*
 * The create: the body parsed with the long strings of its input set
 * aside where they are plain.  NULL: nothing set aside, or a body that
 * jansson refuses; the caller parses the body whole (and has jansson's
 * error of the body as it is).
 */

json_t *
mr_input_load_body(ngx_pool_t *pool, ngx_str_t *text, mr_input_t *in)
{
    return mr_input_skeleton(pool, text, 1, in);
}


/* an attempt: the stored input, read whole if nothing is set aside */

json_t *
mr_input_load(ngx_pool_t *pool, ngx_str_t *text, mr_input_t *in)
{
    json_t  *j;

    j = mr_input_skeleton(pool, text, 0, in);

    if (j) {
        return j;
    }

    return json_loadb((char *) text->data, text->len, 0, NULL);
}


/*
 * The text with its long string values (not keys) replaced by stand-ins,
 * parsed.  In a create's body (body) only the values inside the top-level
 * "input" are, and only if mr_input_plain() says that jansson writes the
 * string as it is written.  Where the text is valid JSON, a string begins
 * at a quote outside the strings before it and is a key if the next
 * byte but spaces is ':', as jansson reads it; where it is not, jansson
 * refuses the text before that point or after it: a span replaced is a
 * whole valid string that holds no NUL, and a stand-in is one too, so
 * the skeleton is valid JSON exactly when the text is, and has the same
 * keys.
 */

static json_t *
mr_input_skeleton(ngx_pool_t *pool, ngx_str_t *text, ngx_uint_t body,
    mr_input_t *in)
{
    u_char       *p, *q, *b, *from, *last, *end, *skel, *w;
    json_t       *j;
    ngx_int_t     rc, depth;
    ngx_str_t    *s;
    ngx_uint_t    inside;
    ngx_array_t   strings;

    in->strings = NULL;
    in->n = 0;
    in->len = 0;

    if (text->len < MR_INPUT_LONG || mr_input_nul(text)) {
        return NULL;
    }

    p = text->data;
    end = p + text->len;
    from = p;                           /* the text not yet in skel */
    skel = NULL;
    w = NULL;

    /* the body: how deep outside strings, and whether in "input" */

    depth = 0;
    inside = !body;

    while ((q = memchr(p, '"', end - p)) != NULL) {

        for (b = p; body && b < q; b++) {
            if (*b == '{' || *b == '[') {
                depth++;

            } else if (*b == '}' || *b == ']') {
                depth--;
            }
        }

        rc = mr_input_string(q, end, &last);
        if (rc == NGX_ERROR) {
            break;
        }

        p = last;

        if (rc == NGX_DECLINED) {
            if (body && depth == 1) {
                inside = (last - q == sizeof("\"input\"") - 1
                          && ngx_strncmp(q, "\"input\"", last - q) == 0);
            }

            continue;
        }

        if (last - q < MR_INPUT_LONG
            || !inside
            || (body && (depth < 2 || !mr_input_plain(q + 1, last - 1))))
        {
            continue;
        }

        /* at most as long as the text: a stand-in is shorter than the
           string it stands for */

        if (skel == NULL) {
            skel = ngx_pnalloc(pool, text->len);

            if (skel == NULL
                || ngx_array_init(&strings, pool, 8, sizeof(ngx_str_t))
                   != NGX_OK)
            {
                break;
            }

            w = skel;
        }

        s = ngx_array_push(&strings);
        if (s == NULL) {
            break;
        }

        s->data = q;
        s->len = last - q;

        in->len += last - q;

        w = ngx_cpymem(w, from, q - from);
        w = ngx_sprintf(w, MR_INPUT_MARK "%ui\"", strings.nelts - 1);
        from = last;
    }

    if (skel == NULL) {
        in->len = 0;
        return NULL;
    }

    j = NULL;

    if (q == NULL) {
        w = ngx_cpymem(w, from, end - from);

        j = json_loadb((char *) skel, w - skel,
                       body ? JSON_ALLOW_NUL | JSON_REJECT_DUPLICATES
                            : JSON_ALLOW_NUL,
                       NULL);
    }

    (void) ngx_pfree(pool, skel);

    if (j == NULL) {
        in->len = 0;
        return NULL;
    }

    in->strings = strings.elts;
    in->n = strings.nelts;

    return j;
}


/*
 * Whether a string's text (between its quotes) is what jansson writes
 * for what jansson reads from it: printable ASCII but '"' and '\\',
 * UTF-8 as RFC 3629 has it (no overlong form, no surrogate, nothing
 * above U+10FFFF: what jansson accepts), and the escapes jansson writes.
 * No other escape: "\/" and "\u0041" are read as "/" and "A", written
 * so; the string is then left to jansson.
 */

static ngx_uint_t
mr_input_plain(u_char *p, u_char *end)
{
    size_t  n;

    while (p < end) {

        if (*p >= 0x20 && *p < 0x80 && *p != '"' && *p != '\\') {
            p++;
            continue;
        }

        if (*p == '\\') {
            n = mr_input_escape(p, end);

        } else if (*p >= 0x80) {
            n = mr_input_utf8(p, end);

        } else {
            n = 0;                      /* a control character, or '"' */
        }

        if (n == 0) {
            return 0;
        }

        p += n;
    }

    return 1;
}


/*
 * The length of an escape that jansson writes: \" \\ \b \f \n \r \t and
 * \u00XX, upper case, for the other control characters but NUL; 0: any
 * other
 */

static size_t
mr_input_escape(u_char *p, u_char *end)
{
    u_char  c;

    if (end - p < 2) {
        return 0;
    }

    switch (p[1]) {

    case '"':
    case '\\':
    case 'b':
    case 'f':
    case 'n':
    case 'r':
    case 't':
        return 2;

    case 'u':
        break;

    default:
        return 0;
    }

    if (end - p < 6 || p[2] != '0' || p[3] != '0'
        || (p[4] != '0' && p[4] != '1')
        || !((p[5] >= '0' && p[5] <= '9') || (p[5] >= 'A' && p[5] <= 'F')))
    {
        return 0;
    }

    c = (p[4] - '0') * 16 + (p[5] <= '9' ? p[5] - '0' : p[5] - 'A' + 10);

    if (c == '\0' || c == '\b' || c == '\f' || c == '\n' || c == '\r'
        || c == '\t')
    {
        return 0;
    }

    return 6;
}


/*
 * The length of the well-formed UTF-8 sequence p begins (RFC 3629,
 * section 4), 0 if it is not one: a lead byte C2-F4, the second byte's
 * range narrowed after E0 (no overlong form), ED (no surrogate), F0 (no
 * overlong form) and F4 (nothing above U+10FFFF)
 */

static size_t
mr_input_utf8(u_char *p, u_char *end)
{
    u_char  lo, hi;
    size_t  n, i;

    lo = 0x80;
    hi = 0xBF;

    if (*p < 0xC2) {
        return 0;

    } else if (*p < 0xE0) {
        n = 2;

    } else if (*p < 0xF0) {
        n = 3;
        lo = (*p == 0xE0) ? 0xA0 : 0x80;
        hi = (*p == 0xED) ? 0x9F : 0xBF;

    } else if (*p < 0xF5) {
        n = 4;
        lo = (*p == 0xF0) ? 0x90 : 0x80;
        hi = (*p == 0xF4) ? 0x8F : 0xBF;

    } else {
        return 0;
    }

    if ((size_t) (end - p) < n || p[1] < lo || p[1] > hi) {
        return 0;
    }

    for (i = 2; i < n; i++) {
        if (p[i] < 0x80 || p[i] > 0xBF) {
            return 0;
        }
    }

    return n;
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
