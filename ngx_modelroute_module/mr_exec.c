
/*
 * ModelRoute: executions: validation, estimates and the public object.
 */


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>

#include "ngx_http_modelroute_module.h"
#include "mr_http.h"
#include "mr_exec.h"
#include "mr_webhook.h"
#include "mr_webhook_addr.h"
#include "mr_limits.h"
#include "mr_input.h"


#define MR_IDEM_KEY_MAX      255
#define MR_METADATA_KEYS     16
#define MR_METADATA_SIZE     4096
#define MR_INPUT_N_MAX       128
#define MR_DURATION_MAX      86400
#define MR_MAX_TOKENS_MAX    10000000
#define MR_USAGE_UNITS_MAX   1000000000000LL     /* tokens priced */
#define MR_COST_MAX          1000000000000000000LL   /* hold x 6 fits */


static ngx_int_t mr_exec_idem_key(ngx_http_request_t *r, json_t *body,
    ngx_str_t *key, json_t *details);
static ngx_int_t mr_exec_estimate(mr_model_t *m, json_t *input,
    size_t input_len, int64_t *estimate, json_t *details);
static int64_t mr_exec_seconds(double duration);
static int64_t mr_exec_input_tokens(mr_model_t *m, json_t *input,
    size_t input_len);
static ngx_int_t mr_exec_dump(ngx_pool_t *pool, json_t *json, size_t flags,
    size_t hint, ngx_str_t *out);


static ngx_str_t  mr_status_names[] = {
    ngx_null_string,
    ngx_string("PENDING"),
    ngx_string("PROCESSING"),
    ngx_string("AWAITING_WEBHOOK"),
    ngx_string("COMPLETED"),
    ngx_string("FAILED"),
    ngx_string("CANCELLED"),
    ngx_string("EXPIRED")
};


/*
 * Validates a create request and fills the execution (without id, org
 * and status); in: the long strings of the input that the parse set
 * aside (mr_http_parse_object).  NGX_DECLINED: details say what is wrong;
 * NGX_ABORT: the input is larger than the model's max_input (413).
 */

ngx_int_t
mr_exec_prepare(ngx_http_request_t *r, json_t *body, mr_input_t *in,
    mr_exec_t *exec, ngx_str_t *idem_key, json_t *details)
{
    u_char          *p;
    size_t           hint, i;
    int64_t          estimate, timeout;
    json_t          *model, *input, *metadata, *url, *tmo;
    ngx_str_t        slug, fp, text;
    mr_model_t      *m;
    ngx_uint_t       bad;
    mr_http_ctx_t   *ctx;
    mr_main_conf_t  *mcf;

    static const ngx_uint_t  fields[] = {
        MR_SEG_MODEL, MR_SEG_INPUT, MR_SEG_WEBHOOK_URL, MR_SEG_METADATA
    };

    mcf = mr_main_conf();
    m = NULL;
    bad = 0;
    estimate = 0;

    ctx = ngx_http_get_module_ctx(r, ngx_http_modelroute_module);

    /* a compact dump of part of the body is rarely larger than the body */
    hint = ctx->body.len + 32;

    model = json_object_get(body, "model");

    if (model == NULL) {
        mr_json_detail(details, "model", "REQUIRED", "model is required");
        bad = 1;

    } else if (!json_is_string(model)) {
        mr_json_detail(details, "model", "INVALID_TYPE",
                       "model must be a string");
        bad = 1;

    } else {
        slug.data = (u_char *) json_string_value(model);
        slug.len = json_string_length(model);

        m = mr_model_find(mcf, &slug);
        if (m == NULL) {
            mr_json_detail(details, "model", "UNKNOWN_MODEL",
                           "no such model; see GET /v1/models");
            bad = 1;
        }
    }

    /*
     * the input's long strings are stand-ins here, "\0" and a number
     * (mr_input.c): what reads its strings before the stored text is made
     * must read that text, not the parsed strings (the estimate compares
     * a part's type with "text", which a string set aside never is)
     */

    input = json_object_get(body, "input");

    if (input == NULL) {
        mr_json_detail(details, "input", "REQUIRED", "input is required");
        bad = 1;

    } else if (!json_is_object(input)) {
        mr_json_detail(details, "input", "INVALID_TYPE",
                       "input must be an object");
        bad = 1;
        input = NULL;
    }

    if (mr_exec_idem_key(r, body, idem_key, details) != NGX_OK) {
        bad = 1;
    }

    url = json_object_get(body, "webhook_url");

    if (json_is_null(url)) {
        url = NULL;
    }

    if (url) {
        if (!json_is_string(url)) {
            mr_json_detail(details, "webhook_url", "INVALID_TYPE",
                           "webhook_url must be a string");
            bad = 1;
            url = NULL;

        } else {
            ngx_str_t    u;
            const char  *why;

            u.data = (u_char *) json_string_value(url);
            u.len = json_string_length(url);

            why = mr_webhook_url_check(&u, mcf->webhook_allow_private);

            if (why) {
                mr_json_detail(details, "webhook_url", "INVALID_URL", why);
                bad = 1;
                url = NULL;
            }
        }
    }

    metadata = json_object_get(body, "metadata");

    if (json_is_null(metadata)) {
        metadata = NULL;
    }

    if (metadata) {
        if (!json_is_object(metadata)) {
            mr_json_detail(details, "metadata", "INVALID_TYPE",
                           "metadata must be an object");
            bad = 1;
            metadata = NULL;

        } else if (json_object_size(metadata) > MR_METADATA_KEYS) {
            mr_json_detail(details, "metadata", "TOO_MANY_KEYS",
                           "metadata has at most 16 keys");
            bad = 1;
            metadata = NULL;

        } else if (mr_exec_dump(r->pool, metadata, JSON_SORT_KEYS, hint,
                                &exec->seg[MR_SEG_METADATA])
                   != NGX_OK)
        {
            return NGX_ERROR;

        } else if (exec->seg[MR_SEG_METADATA].len > MR_METADATA_SIZE) {
            mr_json_detail(details, "metadata", "TOO_LARGE",
                           "metadata is at most 4096 bytes encoded");
            bad = 1;
        }
    }

    timeout = m ? (int64_t) m->timeout : 0;

    tmo = json_object_get(body, "timeout_seconds");

    if (json_is_null(tmo)) {
        tmo = NULL;
    }

    if (tmo) {
        if (!json_is_integer(tmo)) {
            mr_json_detail(details, "timeout_seconds", "INVALID_TYPE",
                           "timeout_seconds must be an integer");
            bad = 1;

        } else if (m && (json_integer_value(tmo) < 1
                         || json_integer_value(tmo) > timeout / 1000))
        {
            mr_json_detail(details, "timeout_seconds", "OUT_OF_RANGE",
                           "timeout_seconds must be between 1 and the "
                           "model's timeout");
            bad = 1;

        } else if (m) {
            /* in range: without a model, the model is what is refused */
            timeout = json_integer_value(tmo) * 1000;
        }
    }

    if (input) {

        /* the long strings set aside by the parse: the input's text is
           the same, encoded in less time */

        ngx_log_debug2(NGX_LOG_DEBUG_HTTP, r->connection->log, 0,
                       "modelroute input set aside at the create: "
                       "%ui strings, %uz bytes", in->n, in->len);

        if (mr_exec_dump(r->pool, input, JSON_SORT_KEYS,
                         hint - in->len + in->n * MR_INPUT_STANDIN_MAX,
                         &text)
            != NGX_OK
            || mr_input_splice(r->pool, &text, in, &exec->seg[MR_SEG_INPUT])
               != NGX_OK)
        {
            return NGX_ERROR;
        }

        if (m && exec->seg[MR_SEG_INPUT].len > mr_limit_max_input(m)) {
            mr_json_detail(details, "input", "TOO_LARGE",
                           "the encoded input is larger than this model "
                           "accepts (max_input)");
            return NGX_ABORT;
        }

        if (m && mr_exec_estimate(m, input, exec->seg[MR_SEG_INPUT].len,
                                  &estimate, details)
                 != NGX_OK)
        {
            bad = 1;
        }
    }

    if (bad) {
        return NGX_DECLINED;
    }

    exec->seg[MR_SEG_MODEL] = m->slug;

    if (mr_exec_dump(r->pool, json_object_get(body, "idempotency_key"), 0,
                     hint, &exec->seg[MR_SEG_IDEM_KEY])
        != NGX_OK
        || mr_exec_dump(r->pool, url, 0, hint,
                        &exec->seg[MR_SEG_WEBHOOK_URL])
           != NGX_OK)
    {
        return NGX_ERROR;
    }

    /*
     * the fingerprint: every field that defines the work, in canonical
     * form (sorted keys, compact), each ended by a NUL
     */

    fp.len = NGX_INT64_LEN;

    for (i = 0; i < sizeof(fields) / sizeof(fields[0]); i++) {
        fp.len += exec->seg[fields[i]].len + 1;
    }

    fp.data = ngx_pnalloc(r->pool, fp.len);
    if (fp.data == NULL) {
        return NGX_ERROR;
    }

    p = fp.data;

    for (i = 0; i < sizeof(fields) / sizeof(fields[0]); i++) {
        p = mr_cpymem(p, exec->seg[fields[i]].data,
                      exec->seg[fields[i]].len);
        *p++ = '\0';
    }

    p = ngx_sprintf(p, "%L", tmo ? (int64_t) json_integer_value(tmo)
                                 : (int64_t) -1);

    mr_sha256(exec->rec.fingerprint, fp.data, p - fp.data);

    exec->rec.estimate = estimate;

    /* hold = max(ceil(estimate * 1.2), $0.01) */

    exec->rec.hold = ngx_max((estimate * 6 + 4) / 5, 10000);
    exec->rec.cost = -1;
    exec->rec.created_ms = mr_now_ms();
    exec->rec.order = mr_now_us();
    exec->rec.expires_ms = exec->rec.created_ms + timeout;

    return NGX_OK;
}


/* from the body or the Idempotency-Key header; both must agree */

static ngx_int_t
mr_exec_idem_key(ngx_http_request_t *r, json_t *body, ngx_str_t *key,
    json_t *details)
{
    size_t            i;
    json_t           *k;
    ngx_str_t         hdr;
    ngx_uint_t        n;
    ngx_list_part_t  *part;
    ngx_table_elt_t  *h;

    ngx_str_null(&hdr);

    part = &r->headers_in.headers.part;
    h = part->elts;

    /* a subrequest (lua-compat) has its client's headers: not its own */

    for (n = 0; r == r->main; n++) {

        if (n >= part->nelts) {
            if (part->next == NULL) {
                break;
            }

            part = part->next;
            h = part->elts;
            n = 0;
        }

        if (h[n].key.len == sizeof("Idempotency-Key") - 1
            && ngx_strncasecmp(h[n].key.data, (u_char *) "Idempotency-Key",
                               sizeof("Idempotency-Key") - 1) == 0)
        {
            hdr = h[n].value;
            break;
        }
    }

    k = json_object_get(body, "idempotency_key");

    if (k && !json_is_string(k)) {
        mr_json_detail(details, "idempotency_key", "INVALID_TYPE",
                       "idempotency_key must be a string");
        return NGX_DECLINED;
    }

    if (k) {
        key->data = (u_char *) json_string_value(k);
        key->len = json_string_length(k);

        if (hdr.data
            && (hdr.len != key->len
                || ngx_memcmp(hdr.data, key->data, key->len) != 0))
        {
            mr_json_detail(details, "idempotency_key", "MISMATCH",
                           "the Idempotency-Key header and the body's "
                           "idempotency_key differ");
            return NGX_DECLINED;
        }

    } else if (hdr.data) {
        *key = hdr;

        /* stored as a JSON string like a body key */

        k = json_stringn((char *) hdr.data, hdr.len);
        if (k == NULL || json_object_set_new(body, "idempotency_key", k)) {
            mr_json_detail(details, "idempotency_key", "INVALID_VALUE",
                           "idempotency_key must be 1-255 printable "
                           "ASCII characters");
            return NGX_DECLINED;
        }

    } else {
        mr_json_detail(details, "idempotency_key", "REQUIRED",
                       "an idempotency_key (body) or Idempotency-Key "
                       "(header) is required");
        return NGX_DECLINED;
    }

    if (key->len == 0 || key->len > MR_IDEM_KEY_MAX) {
        goto invalid;
    }

    for (i = 0; i < key->len; i++) {
        if (key->data[i] < 0x20 || key->data[i] > 0x7e) {
            goto invalid;
        }
    }

    return NGX_OK;

invalid:

    mr_json_detail(details, "idempotency_key", "INVALID_VALUE",
                   "idempotency_key must be 1-255 printable ASCII "
                   "characters");

    return NGX_DECLINED;
}


static ngx_int_t
mr_exec_estimate(mr_model_t *m, json_t *input, size_t input_len,
    int64_t *estimate, json_t *details)
{
    json_t      *v;
    int64_t      n, tokens;
    double       duration;
    ngx_uint_t   bad;
    mr_usage_t   u;

    bad = 0;
    n = 1;
    duration = 1;
    tokens = m->max_tokens;

    v = json_object_get(input, "n");

    if (v && !json_is_null(v)) {
        if (!json_is_integer(v)
            || json_integer_value(v) < 1
            || json_integer_value(v) > MR_INPUT_N_MAX)
        {
            mr_json_detail(details, "input.n", "INVALID_VALUE",
                           "input.n must be an integer from 1 to 128");
            bad = 1;

        } else {
            n = json_integer_value(v);
        }
    }

    v = json_object_get(input, "duration");

    if (v && !json_is_null(v)) {
        if (!json_is_number(v)
            || json_number_value(v) <= 0
            || json_number_value(v) > MR_DURATION_MAX)
        {
            mr_json_detail(details, "input.duration", "INVALID_VALUE",
                           "input.duration must be a number of seconds "
                           "above 0, at most 86400");
            bad = 1;

        } else {
            duration = json_number_value(v);
        }
    }

    v = json_object_get(input, "max_tokens");

    if (v && !json_is_null(v)) {
        if (!json_is_integer(v)
            || json_integer_value(v) < 1
            || json_integer_value(v) > MR_MAX_TOKENS_MAX)
        {
            mr_json_detail(details, "input.max_tokens", "INVALID_VALUE",
                           "input.max_tokens must be an integer from 1 "
                           "to 10000000");
            bad = 1;

        } else {
            tokens = json_integer_value(v);
        }
    }

    if (bad) {
        return NGX_DECLINED;
    }

    /* what the execution may use, priced as its usage will be */

    u.images = n;
    u.seconds = mr_exec_seconds(duration);
    u.input_tokens = mr_exec_input_tokens(m, input, input_len);
    u.output_tokens = tokens * n;

    *estimate = mr_exec_cost(m, &u);

    return NGX_OK;
}


/* whole seconds, rounded up: prices are per second */

static int64_t
mr_exec_seconds(double duration)
{
    int64_t  secs;

    secs = (int64_t) duration;

    if ((double) secs < duration) {
        secs++;
    }

    return secs;
}


/*
 * The input tokens of the estimate: a token per 4 bytes of the encoded
 * input, and the model's image_tokens for each part of a message's
 * content (or of a tool result's content) that is not text: a provider
 * bills an image by its size in pixels, not by the bytes that carry it
 * (a URL is a few bytes), so each one may cost up to the allowance.
 */

static int64_t
mr_exec_input_tokens(mr_model_t *m, json_t *input, size_t input_len)
{
    size_t       i, j, k;
    json_t      *msg, *part, *type, *inner, *sub;
    int64_t      parts;

    parts = 0;

    json_array_foreach(json_object_get(input, "messages"), i, msg) {
        json_array_foreach(json_object_get(msg, "content"), j, part) {
            type = json_object_get(part, "type");

            if (!json_is_string(type)
                || ngx_strcmp(json_string_value(type), "text") != 0)
            {
                parts++;
            }

            inner = json_object_get(part, "content");

            json_array_foreach(inner, k, sub) {
                type = json_object_get(sub, "type");

                if (!json_is_string(type)
                    || ngx_strcmp(json_string_value(type), "text") != 0)
                {
                    parts++;
                }
            }
        }
    }

    return ((int64_t) input_len + 3) / 4 + parts * mr_exec_image_tokens(m);
}


int64_t
mr_exec_image_tokens(mr_model_t *m)
{
    return m->image_tokens ? m->image_tokens : MR_IMAGE_TOKENS_DEFAULT;
}


/* the output budget of one output: input.max_tokens or the model's */

int64_t
mr_exec_budget(mr_model_t *m, json_t *input)
{
    json_t  *v;

    v = json_object_get(input, "max_tokens");

    if (json_is_integer(v) && json_integer_value(v) >= 1
        && json_integer_value(v) <= MR_MAX_TOKENS_MAX)
    {
        return json_integer_value(v);
    }

    return m->max_tokens;
}


/*
 * What an input asks for, of the quantities the model is priced by:
 * input.n outputs (default 1) and input.duration seconds (default 1),
 * rounded up; the tokens are not known (-1).
 */

void
mr_exec_usage_of(json_t *input, mr_usage_t *u)
{
    json_t  *v;
    double   d;

    v = json_object_get(input, "n");
    u->images = (json_is_integer(v) && json_integer_value(v) >= 1
                 && json_integer_value(v) <= MR_INPUT_N_MAX)
                ? json_integer_value(v) : 1;

    v = json_object_get(input, "duration");
    d = json_is_number(v) ? json_number_value(v) : 1;
    u->seconds = mr_exec_seconds((d > 0 && d <= MR_DURATION_MAX) ? d : 1);

    u->input_tokens = -1;
    u->output_tokens = -1;
}


/*
 * The billing rule, for the estimate and for the charge alike:
 *   per_request + per_image x images + per_second x seconds
 *   + input tokens x input_per_mtok / 10^6
 *   + output tokens x output_per_mtok / 10^6,
 * each term rounded up to the micro-dollar.  -1: a token count the model
 * has a price for is not known (the caller charges the estimate).
 */

int64_t
mr_exec_cost(mr_model_t *m, mr_usage_t *u)
{
    int64_t  in, out, images, cost;

    if ((m->input_per_mtok && u->input_tokens < 0)
        || (m->output_per_mtok && u->output_tokens < 0))
    {
        return -1;
    }

    /* in range: each term is at most 10^18, the sum below 2^63 */

    in = ngx_min(ngx_max(u->input_tokens, 0), MR_USAGE_UNITS_MAX);
    out = ngx_min(ngx_max(u->output_tokens, 0), MR_USAGE_UNITS_MAX);
    images = ngx_min(ngx_max(u->images, 0), 1000000);

    cost = m->per_request
           + m->per_image * images
           + m->per_second * ngx_min(ngx_max(u->seconds, 0), MR_DURATION_MAX)
           + mr_exec_price(in, m->input_per_mtok, 1000000)
           + mr_exec_price(out, m->output_per_mtok, 1000000);

    return ngx_min(cost, MR_COST_MAX);
}


/* ceil(units * price / per) without overflow for sane inputs */

int64_t
mr_exec_price(int64_t units, int64_t price, int64_t per)
{
    int64_t  whole, rest;

    whole = units / per * price;
    rest = units % per * price;

    return whole + (rest + per - 1) / per;
}


static ngx_int_t
mr_exec_dump(ngx_pool_t *pool, json_t *json, size_t flags, size_t hint,
    ngx_str_t *out)
{
    size_t  n;

    if (json == NULL) {
        ngx_str_null(out);
        return NGX_OK;
    }

    flags |= MR_JSON_FLAGS;

    /* one pass into a buffer of the hinted size, a second if too small */

    for ( ;; ) {
        out->data = ngx_pnalloc(pool, hint);
        if (out->data == NULL) {
            return NGX_ERROR;
        }

        n = json_dumpb(json, (char *) out->data, hint, flags);
        if (n == 0) {
            return NGX_ERROR;
        }

        if (n <= hint) {
            out->len = n;
            return NGX_OK;
        }

        hint = n;
    }
}


#define mr_seg_or(exec, i, dflt)                                            \
    ((exec)->seg[i].len ? &(exec)->seg[i] : (ngx_str_t *) &dflt)


static ngx_str_t  mr_null = ngx_string("null");
static ngx_str_t  mr_empty_object = ngx_string("{}");
static ngx_str_t  mr_empty_array = ngx_string("[]");


ngx_int_t
mr_exec_render(ngx_pool_t *pool, mr_exec_t *exec, ngx_str_t *out)
{
    u_char         *p;
    size_t          len;
    ngx_uint_t      i;
    mr_exec_rec_t  *rec;
    u_char          est[MR_MONEY_LEN], hold[MR_MONEY_LEN];
    u_char          cost[MR_MONEY_LEN + 2], lat[NGX_INT64_LEN];
    u_char          created[MR_TIME_LEN + 2], started[MR_TIME_LEN + 2];
    u_char          completed[MR_TIME_LEN + 2], expires[MR_TIME_LEN + 2];
    ngx_str_t       s_est, s_hold, s_cost, s_lat;
    ngx_str_t       s_created, s_started, s_completed, s_expires;

    rec = &exec->rec;

    s_est.data = est;
    s_est.len = mr_money_format(est, rec->estimate);
    s_hold.data = hold;
    s_hold.len = mr_money_format(hold, rec->hold);

    if (rec->cost >= 0) {
        cost[0] = '"';
        p = cost + 1 + mr_money_format(cost + 1, rec->cost);
        *p++ = '"';
        s_cost.data = cost;
        s_cost.len = p - cost;

    } else {
        s_cost = mr_null;
    }

#define mr_time_json(buf, s, ms)                                            \
    if ((ms) > 0) {                                                         \
        buf[0] = '"';                                                       \
        p = mr_time_format(buf + 1, ms);                                    \
        *p++ = '"';                                                         \
        s.data = buf;                                                       \
        s.len = p - buf;                                                    \
    } else {                                                                \
        s = mr_null;                                                        \
    }

    mr_time_json(created, s_created, rec->created_ms);
    mr_time_json(started, s_started, rec->started_ms);
    mr_time_json(completed, s_completed, rec->completed_ms);
    mr_time_json(expires, s_expires, rec->expires_ms);

#undef mr_time_json

    if (mr_status_terminal(rec->status) && rec->completed_ms) {
        s_lat.data = lat;
        s_lat.len = ngx_sprintf(lat, "%L",
                                rec->completed_ms - rec->created_ms) - lat;

    } else {
        s_lat = mr_null;
    }

    len = sizeof("{\"id\":\"\",\"object\":\"execution\",\"status\":\"\","
                 "\"model\":\"\",\"idempotency_key\":,\"metadata\":,"
                 "\"webhook_url\":,\"estimated_cost\":\"\","
                 "\"hold_amount\":\"\",\"cost\":,\"result\":,\"error\":,"
                 "\"attempts\":,\"created_at\":,\"started_at\":,"
                 "\"completed_at\":,\"expires_at\":,\"latency_ms\":}")
          + MR_EXEC_ID_LEN + sizeof("AWAITING_WEBHOOK")
          + 4 * (MR_TIME_LEN + 2) + 3 * MR_MONEY_LEN + NGX_INT64_LEN
          + 4 * sizeof("null");

    for (i = 0; i < MR_SEG_N; i++) {
        if (i != MR_SEG_INPUT) {
            len += exec->seg[i].len;
        }
    }

    out->data = ngx_pnalloc(pool, len);
    if (out->data == NULL) {
        return NGX_ERROR;
    }

    p = ngx_sprintf(out->data,
                    "{\"id\":\"%*s\",\"object\":\"execution\","
                    "\"status\":\"%V\",\"model\":\"%V\","
                    "\"idempotency_key\":%V,\"metadata\":%V,"
                    "\"webhook_url\":%V,\"estimated_cost\":\"%V\","
                    "\"hold_amount\":\"%V\",\"cost\":%V,",
                    (size_t) MR_EXEC_ID_LEN, exec->id,
                    &mr_status_names[rec->status <= MR_EXPIRED
                                     ? rec->status : 0],
                    &exec->seg[MR_SEG_MODEL],
                    mr_seg_or(exec, MR_SEG_IDEM_KEY, mr_null),
                    mr_seg_or(exec, MR_SEG_METADATA, mr_empty_object),
                    mr_seg_or(exec, MR_SEG_WEBHOOK_URL, mr_null),
                    &s_est, &s_hold, &s_cost);

    p = ngx_sprintf(p, "\"result\":%V,\"error\":%V,\"attempts\":%V,"
                    "\"created_at\":%V,\"started_at\":%V,"
                    "\"completed_at\":%V,\"expires_at\":%V,"
                    "\"latency_ms\":%V}",
                    mr_seg_or(exec, MR_SEG_RESULT, mr_null),
                    mr_seg_or(exec, MR_SEG_ERROR, mr_null),
                    mr_seg_or(exec, MR_SEG_ATTEMPTS, mr_empty_array),
                    &s_created, &s_started, &s_completed, &s_expires,
                    &s_lat);

    out->len = p - out->data;

    return NGX_OK;
}


ngx_int_t
mr_exec_render_result(ngx_pool_t *pool, mr_exec_t *exec, ngx_str_t *out)
{
    json_t     *j;
    ngx_str_t   res;
    u_char      cost[MR_MONEY_LEN];

    res = *mr_seg_or(exec, MR_SEG_RESULT, mr_null);

    j = json_pack("{s:s#, s:s, s:o, s:s#, s:I}",
                  "execution_id", exec->id, (int) MR_EXEC_ID_LEN,
                  "status", mr_status_names[exec->rec.status].data,
                  "result", json_loadb((char *) res.data, res.len,
                                       JSON_DECODE_ANY | JSON_ALLOW_NUL,
                                       NULL),
                  "cost", cost, (int) mr_money_format(cost,
                                                      ngx_max(exec->rec.cost,
                                                              0)),
                  "latency_ms", (json_int_t) (exec->rec.completed_ms
                                              - exec->rec.created_ms));

    if (j == NULL) {
        return NGX_ERROR;
    }

    if (mr_json_dump(pool, j, out) != NGX_OK) {
        json_decref(j);
        return NGX_ERROR;
    }

    json_decref(j);

    return NGX_OK;
}


ngx_str_t *
mr_exec_status_name(ngx_uint_t status)
{
    return &mr_status_names[status <= MR_EXPIRED ? status : 0];
}


ngx_uint_t
mr_exec_status_parse(ngx_str_t *name)
{
    ngx_uint_t  i;

    for (i = MR_PENDING; i <= MR_EXPIRED; i++) {
        if (name->len == mr_status_names[i].len
            && ngx_strncmp(name->data, mr_status_names[i].data, name->len)
               == 0)
        {
            return i;
        }
    }

    return 0;
}
