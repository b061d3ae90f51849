
/*
 * ModelRoute: protocol adapters.
 *
 * Requests: OpenAI chat completions, embeddings and image generations,
 * Anthropic messages, and the asynchronous callback protocol
 * ({model, input, max_tokens, execution_id, callback_url, callback_token}
 * -> 2xx: the job is taken; the result comes to callback_url with
 * "Authorization: Bearer <callback_token>", see mr_callback.c).  Chat,
 * messages and asynchronous requests always carry the output budget the
 * execution's hold was computed for.
 *
 * Results are normalized: {"text", "finish_reason", "usage"} for chat and
 * messages, {"embeddings", "usage"}, {"images": [{"url"} | {"b64_json"}],
 * "usage"}, or a callback's output object.  Provider errors map onto the
 * codes of the contract; anything unusable (not JSON, the wrong shape, a
 * truncated body, no answer) is a retryable GENERATION_FAILED.
 *
 * Answers are read as JSON allows (a \u0000 in a string, an integer beyond
 * 64 bits), as far as jansson can hold them.  A provider's error text is
 * never the tenant's (it can hold part of the operator's credentials):
 * the message is normalized, and the text goes to out->detail, for the
 * operator's log.
 */


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>

#include "mr_adapter.h"
#include "mr_http.h"
#include "mr_exec.h"
#include "mr_input.h"


#define MR_ADAPTER_MESSAGE_MAX   300
#define MR_ADAPTER_USAGE_MAX     1000000000LL
#define MR_ADAPTER_RETRY_MAX     3600


static json_t *mr_adapter_messages(json_t *input, json_t **system);
static void mr_adapter_copy(json_t *dst, json_t *src, const char **names);
static ngx_int_t mr_adapter_ok(ngx_pool_t *pool, mr_route_t *route,
    mr_model_t *m, json_t *input, json_t *answer, mr_adapter_out_t *out);
static void mr_adapter_error(ngx_uint_t status, json_t *answer,
    ngx_str_t *retry_after, mr_adapter_out_t *out);
static const char *mr_adapter_keyword(json_t *answer);
static void mr_adapter_message(ngx_pool_t *pool, ngx_uint_t status,
    json_t *answer, mr_adapter_out_t *out);
static void mr_adapter_detail(ngx_pool_t *pool, json_t *answer,
    mr_adapter_out_t *out);
static int64_t mr_adapter_usage(json_t *usage, const char *name);
static int64_t mr_adapter_usage_opt(json_t *usage, const char *name);
static int64_t mr_adapter_cost(mr_model_t *m, json_t *input, int64_t in,
    int64_t out, int64_t images);
static json_t *mr_adapter_input(ngx_pool_t *pool, mr_model_t *m,
    mr_exec_t *exec);
static int64_t mr_adapter_retry_after(ngx_str_t *value);


static const char  *mr_adapter_chat_params[] = {
    "temperature", "top_p", "stop", "seed",
    "presence_penalty", "frequency_penalty", "user", NULL
};

static const char  *mr_adapter_anthropic_params[] = {
    "temperature", "top_p", "top_k", "stop_sequences", NULL
};

static const char  *mr_adapter_image_params[] = {
    "n", "size", "quality", "style", "response_format", NULL
};


void
mr_adapter_fail(mr_adapter_out_t *out, ngx_uint_t outcome, const char *code,
    const char *message)
{
    out->outcome = outcome;
    out->code = code;
    out->message.data = (u_char *) message;
    out->message.len = ngx_strlen(message);
    out->breaker = (outcome == MR_OUT_RETRY) ? MR_BREAKER_PROVIDER
                   : (outcome == MR_OUT_TIMEOUT) ? MR_BREAKER_TIMEOUT
                   : MR_BREAKER_NONE;
}


/*
 * The level a failed outcome is logged at: one the tenant's input caused
 * (refused as invalid, or by the provider's moderation) at info, so that
 * a key holder cannot fill the error log at the rate of their creates;
 * the provider's failures at error.
 */

ngx_uint_t
mr_adapter_log_level(mr_adapter_out_t *out)
{
    if (out->code
        && (ngx_strcmp(out->code, "INPUT_VALIDATION_ERROR") == 0
            || ngx_strcmp(out->code, "CONTENT_MODERATION_REJECTED") == 0))
    {
        return NGX_LOG_INFO;
    }

    return NGX_LOG_ERR;
}


/*
 * A provider's JSON text: any value, a \u0000 in a string, and integers
 * beyond 64 bits, which make every number of the text a real (only usage
 * is read from numbers, and it may be either).  NULL: not JSON, or JSON
 * that jansson cannot hold (*unheld: a number beyond the range of a
 * double, or nesting deeper than JSON_PARSER_MAX_DEPTH).
 */

json_t *
mr_adapter_json(u_char *data, size_t len, ngx_uint_t *unheld)
{
    json_t        *j;
    json_error_t   err;

    *unheld = 0;

    j = json_loadb((char *) data, len, JSON_DECODE_ANY | JSON_ALLOW_NUL,
                   &err);

    if (j == NULL && json_error_code(&err) == json_error_numeric_overflow) {
        j = json_loadb((char *) data, len,
                       JSON_DECODE_ANY | JSON_ALLOW_NUL
                       | JSON_DECODE_INT_AS_REAL, &err);
    }

    if (j == NULL) {
        *unheld = (json_error_code(&err) == json_error_numeric_overflow
                   || json_error_code(&err) == json_error_stack_overflow);
    }

    return j;
}


ngx_int_t
mr_adapter_request(ngx_pool_t *pool, mr_route_t *route,
    mr_model_route_t *mroute, mr_model_t *m, mr_exec_t *exec,
    ngx_str_t *callback, ngx_str_t *token, ngx_str_t *body,
    mr_adapter_out_t *out)
{
    json_t      *input, *req, *v, *msgs, *system;
    ngx_int_t    rc;
    mr_input_t   in;

    /* its long strings stand apart: encoded as they are stored */

    input = mr_input_load(pool, &exec->seg[MR_SEG_INPUT], &in);

    ngx_log_debug1(NGX_LOG_DEBUG_HTTP, pool->log, 0,
                   "modelroute input set aside for an attempt: %ui strings",
                   in.n);

    if (!json_is_object(input)) {
        json_decref(input);
        mr_adapter_fail(out, MR_OUT_FATAL, "INPUT_VALIDATION_ERROR",
                        "the input is not an object");
        return NGX_DECLINED;
    }

    req = json_object();
    if (req == NULL) {
        json_decref(input);
        return NGX_ERROR;
    }

    json_object_set_new(req, "model",
                        json_stringn((char *) mroute->provider_model.data,
                                     mroute->provider_model.len));

    switch (route->protocol) {

    case MR_PROTO_OPENAI_CHAT:
    case MR_PROTO_ANTHROPIC:
        system = NULL;
        msgs = mr_adapter_messages(input,
                                   route->protocol == MR_PROTO_ANTHROPIC
                                   ? &system : NULL);
        if (msgs == NULL) {
            json_decref(system);
            mr_adapter_fail(out, MR_OUT_FATAL, "INPUT_VALIDATION_ERROR",
                            "input.prompt (a string) or input.messages "
                            "(an array of {role, content}) is required");
            goto invalid;
        }

        json_object_set_new(req, "messages", msgs);

        /*
         * the output budget the hold was computed for, always: without
         * it a provider answers up to the model's own limit, and bills
         * the operator for what the hold does not cover
         */

        json_object_set_new(req, route->completion_tokens
                                 ? "max_completion_tokens" : "max_tokens",
                            json_integer(mr_exec_budget(m, input)));

        if (route->protocol == MR_PROTO_OPENAI_CHAT) {
            mr_adapter_copy(req, input, mr_adapter_chat_params);
            break;
        }

        if (system) {
            json_object_set_new(req, "system", system);
        }

        mr_adapter_copy(req, input, mr_adapter_anthropic_params);
        break;

    case MR_PROTO_OPENAI_EMBEDDINGS:
        v = json_object_get(input, "input");

        if (v == NULL) {
            v = json_object_get(input, "text");
        }

        if (v == NULL) {
            v = json_object_get(input, "prompt");
        }

        if (!json_is_string(v) && !json_is_array(v)) {
            mr_adapter_fail(out, MR_OUT_FATAL, "INPUT_VALIDATION_ERROR",
                            "input.input (a string or an array of "
                            "strings) is required");
            goto invalid;
        }

        json_object_set(req, "input", v);
        v = json_object_get(input, "dimensions");
        if (json_is_integer(v)) {
            json_object_set(req, "dimensions", v);
        }

        break;

    case MR_PROTO_OPENAI_IMAGES:
        v = json_object_get(input, "prompt");

        if (!json_is_string(v)) {
            mr_adapter_fail(out, MR_OUT_FATAL, "INPUT_VALIDATION_ERROR",
                            "input.prompt (a string) is required");
            goto invalid;
        }

        json_object_set(req, "prompt", v);
        mr_adapter_copy(req, input, mr_adapter_image_params);
        break;

    default: /* MR_PROTO_ASYNC */
        json_object_set(req, "input", input);

        /* the budget the hold was computed for, as chat is sent it */

        json_object_set_new(req, "max_tokens",
                            json_integer(mr_exec_budget(m, input)));
        json_object_set_new(req, "execution_id",
                            json_stringn((char *) exec->id, MR_EXEC_ID_LEN));
        json_object_set_new(req, "callback_url",
                            json_stringn((char *) callback->data,
                                         callback->len));

        /* in the body, not in the URL: the provider sends it back in
           an Authorization header, which access logs leave out */

        json_object_set_new(req, "callback_token",
                            json_stringn((char *) token->data, token->len));
    }

    rc = mr_input_dump(pool, req, &in, body);

    json_decref(req);
    json_decref(input);

    return rc;

invalid:

    json_decref(req);
    json_decref(input);

    return NGX_DECLINED;
}


/* input.messages, or input.prompt as one user message */

static json_t *
mr_adapter_messages(json_t *input, json_t **system)
{
    json_t      *msgs, *out, *msg, *role, *content, *sys;
    size_t       i;

    msgs = json_object_get(input, "messages");

    if (msgs == NULL) {
        content = json_object_get(input, "prompt");
        if (!json_is_string(content)) {
            return NULL;
        }

        sys = json_object_get(input, "system");
        if (system && json_is_string(sys)) {
            *system = json_incref(sys);
        }

        out = json_pack("[{s:s, s:O}]", "role", "user", "content", content);

        if (out && system == NULL && json_is_string(sys)) {
            json_array_insert_new(out, 0,
                                  json_pack("{s:s, s:O}", "role", "system",
                                            "content", sys));
        }

        return out;
    }

    if (!json_is_array(msgs) || json_array_size(msgs) == 0) {
        return NULL;
    }

    out = json_array();
    if (out == NULL) {
        return NULL;
    }

    json_array_foreach(msgs, i, msg) {
        role = json_object_get(msg, "role");
        content = json_object_get(msg, "content");

        if (!json_is_string(role)
            || (!json_is_string(content) && !json_is_array(content)))
        {
            json_decref(out);
            return NULL;
        }

        /* Anthropic takes the system prompt apart from the messages */

        if (system && ngx_strcmp(json_string_value(role), "system") == 0) {
            if (*system == NULL && json_is_string(content)) {
                *system = json_incref(content);
            }

            continue;
        }

        json_array_append_new(out, json_pack("{s:O, s:O}", "role", role,
                                             "content", content));
    }

    if (json_array_size(out) == 0) {
        json_decref(out);
        return NULL;
    }

    return out;
}


static void
mr_adapter_copy(json_t *dst, json_t *src, const char **names)
{
    json_t  *v;

    for ( /* void */ ; *names; names++) {
        v = json_object_get(src, *names);

        if (v && !json_is_null(v)) {
            json_object_set(dst, *names, v);
        }
    }
}


/* a provider's answer to one attempt */

void
mr_adapter_response(ngx_pool_t *pool, mr_route_t *route, mr_model_t *m,
    mr_exec_t *exec, ngx_uint_t status, ngx_str_t *body,
    ngx_str_t *retry_after, mr_adapter_out_t *out)
{
    json_t      *answer, *input, *id;
    ngx_uint_t   unheld;

    ngx_memzero(out, sizeof(mr_adapter_out_t));
    out->cost = -1;

    if (status == 0) {
        mr_adapter_fail(out, MR_OUT_RETRY, "GENERATION_FAILED",
                        "the provider gave no usable answer (the "
                        "connection failed, or the answer was cut short "
                        "or too large)");
        return;
    }

    answer = NULL;
    unheld = 0;

    if (body->len) {
        answer = mr_adapter_json(body->data, body->len, &unheld);
    }

    if (status >= 200 && status < 300) {

        if (route->protocol == MR_PROTO_ASYNC) {
            out->outcome = MR_OUT_ACCEPTED;

            id = json_object_get(answer, "job_id");
            if (id == NULL) {
                id = json_object_get(answer, "id");
            }

            if (json_is_string(id) && json_string_length(id) <= 256) {
                (void) mr_json_dump(pool, id, &out->job_id);
            }

            goto done;
        }

        if (unheld) {

            /* valid JSON, the gateway's limit: the route is not blamed */

            mr_adapter_fail(out, MR_OUT_RETRY, "GENERATION_FAILED",
                            "the provider's answer is JSON the gateway "
                            "cannot read (a number out of range, or "
                            "nested too deep)");
            out->breaker = MR_BREAKER_NONE;
            goto done;
        }

        if (!json_is_object(answer)) {
            mr_adapter_fail(out, MR_OUT_RETRY, "GENERATION_FAILED",
                            "the provider's answer is not a JSON object");
            goto done;
        }

        input = mr_adapter_input(pool, m, exec);

        if (mr_adapter_ok(pool, route, m, input, answer, out) != NGX_OK
            && out->outcome == 0)
        {
            mr_adapter_fail(out, MR_OUT_RETRY, "GENERATION_FAILED",
                            "the provider's answer does not have the "
                            "shape its protocol defines");
        }

        json_decref(input);
        goto done;
    }

    mr_adapter_error(status, answer, retry_after, out);
    mr_adapter_message(pool, status, answer, out);

done:

    json_decref(answer);
}


static ngx_int_t
mr_adapter_ok(ngx_pool_t *pool, mr_route_t *route, mr_model_t *m,
    json_t *input, json_t *answer, mr_adapter_out_t *out)
{
    u_char       *p, *buf;
    size_t        i, len;
    json_t       *res, *v, *item, *list, *usage, *text, *parts;
    int64_t       in, outt, images, cw, cr;
    ngx_int_t     rc;
    const char   *fr;

    usage = json_object_get(answer, "usage");
    in = -1;
    outt = -1;
    images = -1;
    res = NULL;

    switch (route->protocol) {

    case MR_PROTO_OPENAI_CHAT:
        v = json_object_get(answer, "choices");
        item = json_array_get(v, 0);
        text = json_object_get(json_object_get(item, "message"), "content");
        v = json_object_get(item, "finish_reason");
        fr = json_is_string(v) ? json_string_value(v) : NULL;

        if (fr && ngx_strcmp(fr, "content_filter") == 0) {
            mr_adapter_fail(out, MR_OUT_FATAL,
                            "CONTENT_MODERATION_REJECTED",
                            "the provider's content filter refused the "
                            "input");
            out->breaker = MR_BREAKER_NONE;
            return NGX_DECLINED;
        }

        if (!json_is_string(text)) {
            return NGX_DECLINED;
        }

        in = mr_adapter_usage(usage, "prompt_tokens");
        outt = mr_adapter_usage(usage, "completion_tokens");

        res = json_pack("{s:O, s:s?}", "text", text, "finish_reason", fr);
        break;

    case MR_PROTO_ANTHROPIC:
        list = json_object_get(answer, "content");
        if (!json_is_array(list)) {
            return NGX_DECLINED;
        }

        parts = json_array();
        if (parts == NULL) {
            return NGX_ERROR;
        }

        json_array_foreach(list, i, item) {
            v = json_object_get(item, "text");
            if (json_is_string(v)) {
                json_array_append(parts, v);
            }
        }

        if (json_array_size(parts) == 0) {
            json_decref(parts);
            return NGX_DECLINED;
        }

        if (json_array_size(parts) == 1) {
            text = json_incref(json_array_get(parts, 0));

        } else {
            len = 0;
            json_array_foreach(parts, i, v) {
                len += json_string_length(v);
            }

            buf = ngx_pnalloc(pool, len + 1);
            if (buf == NULL) {
                json_decref(parts);
                return NGX_ERROR;
            }

            p = buf;
            json_array_foreach(parts, i, v) {
                p = ngx_cpymem(p, json_string_value(v),
                               json_string_length(v));
            }

            text = json_stringn((char *) buf, len);
        }

        json_decref(parts);

        v = json_object_get(answer, "stop_reason");
        fr = json_is_string(v) ? json_string_value(v) : NULL;

        /*
         * tokens read from and written to the prompt cache are input
         * tokens the provider bills too (input_tokens leaves them out)
         */

        in = mr_adapter_usage(usage, "input_tokens");
        outt = mr_adapter_usage(usage, "output_tokens");
        cw = mr_adapter_usage_opt(usage, "cache_creation_input_tokens");
        cr = mr_adapter_usage_opt(usage, "cache_read_input_tokens");

        /* a cache count that is not a count: the input's is not known */
        in = (in >= 0 && cw >= 0 && cr >= 0) ? in + cw + cr : -1;

        res = json_pack("{s:o, s:s?}", "text", text, "finish_reason", fr);
        break;

    case MR_PROTO_OPENAI_EMBEDDINGS:
        list = json_object_get(answer, "data");
        if (!json_is_array(list) || json_array_size(list) == 0) {
            return NGX_DECLINED;
        }

        v = json_array();
        if (v == NULL) {
            return NGX_ERROR;
        }

        json_array_foreach(list, i, item) {
            if (!json_is_array(json_object_get(item, "embedding"))
                && !json_is_string(json_object_get(item, "embedding")))
            {
                json_decref(v);
                return NGX_DECLINED;
            }

            json_array_append(v, json_object_get(item, "embedding"));
        }

        in = mr_adapter_usage(usage, "prompt_tokens");
        outt = 0;

        res = json_pack("{s:o}", "embeddings", v);
        break;

    default: /* MR_PROTO_OPENAI_IMAGES */
        list = json_object_get(answer, "data");
        if (!json_is_array(list) || json_array_size(list) == 0) {
            return NGX_DECLINED;
        }

        v = json_array();
        if (v == NULL) {
            return NGX_ERROR;
        }

        json_array_foreach(list, i, item) {
            if (json_is_string(json_object_get(item, "url"))) {
                json_array_append_new(v, json_pack("{s:O}", "url",
                                         json_object_get(item, "url")));

            } else if (json_is_string(json_object_get(item, "b64_json"))) {
                json_array_append_new(v, json_pack("{s:O}", "b64_json",
                                         json_object_get(item, "b64_json")));

            } else {
                json_decref(v);
                return NGX_DECLINED;
            }
        }

        /* the images made, and the tokens of a model that bills them */

        images = json_array_size(v);
        in = mr_adapter_usage(usage, "input_tokens");
        outt = mr_adapter_usage(usage, "output_tokens");

        res = json_pack("{s:o, s:{s:I}}", "images", v,
                        "usage", "images", (json_int_t) images);
    }

    if (res == NULL) {
        return NGX_ERROR;
    }

    if (in >= 0 && outt >= 0) {
        v = json_object_get(res, "usage");

        if (v == NULL) {
            v = json_object();
            json_object_set_new(res, "usage", v);
        }

        json_object_set_new(v, "input_tokens", json_integer(in));
        json_object_set_new(v, "output_tokens", json_integer(outt));
    }

    out->cost = mr_adapter_cost(m, input, in, outt, images);

    rc = mr_json_dump(pool, res, &out->result);

    json_decref(res);

    if (rc != NGX_OK) {
        return NGX_ERROR;
    }

    out->outcome = MR_OUT_OK;

    return NGX_OK;
}


/* status codes (and error bodies) onto the contract's codes */

static void
mr_adapter_error(ngx_uint_t status, json_t *answer, ngx_str_t *retry_after,
    mr_adapter_out_t *out)
{
    const char  *kw;

    kw = mr_adapter_keyword(answer);

    if (kw && ngx_strcmp(kw, "moderation") == 0
        && status >= 400 && status < 500)
    {
        mr_adapter_fail(out, MR_OUT_FATAL, "CONTENT_MODERATION_REJECTED",
                        "the provider's safety filter refused the input");
        return;
    }

    switch (status) {

    case 400:
    case 413:
    case 415:
    case 422:
        mr_adapter_fail(out, MR_OUT_FATAL, "INPUT_VALIDATION_ERROR",
                        "the provider refused the input");
        return;

    case 408:
    case 504:
        mr_adapter_fail(out, MR_OUT_RETRY, "GENERATION_TIMEOUT",
                        "the provider did not answer in time");
        out->breaker = MR_BREAKER_TIMEOUT;
        return;

    case 429:
        mr_adapter_fail(out, MR_OUT_RETRY, "RATE_LIMITED",
                        "the provider limited the rate of requests");
        out->breaker = MR_BREAKER_NONE;
        out->retry_after_ms = mr_adapter_retry_after(retry_after);
        return;

    case 503:
    case 529:
        mr_adapter_fail(out, MR_OUT_RETRY, "MODEL_OVERLOADED",
                        "the provider reports no capacity");
        out->retry_after_ms = mr_adapter_retry_after(retry_after);
        return;
    }

    if (kw && ngx_strcmp(kw, "overloaded") == 0) {
        mr_adapter_fail(out, MR_OUT_RETRY, "MODEL_OVERLOADED",
                        "the provider reports no capacity");
        return;
    }

    mr_adapter_fail(out, MR_OUT_RETRY, "GENERATION_FAILED",
                    "the provider failed");
}


/* what an error body says: "moderation", "overloaded" or NULL */

static const char *
mr_adapter_keyword(json_t *answer)
{
    json_t      *err, *v;
    ngx_uint_t   i, j;
    const char  *s;

    static const char  *fields[] = { "code", "type", "status", NULL };
    static const char  *moderation[] = { "content_policy", "moderation",
                                         "safety", "content_filter", NULL };

    err = json_object_get(answer, "error");
    if (!json_is_object(err)) {
        err = answer;
    }

    for (i = 0; fields[i]; i++) {
        v = json_object_get(err, fields[i]);
        if (!json_is_string(v)) {
            continue;
        }

        s = json_string_value(v);

        for (j = 0; moderation[j]; j++) {
            if (ngx_strstr(s, moderation[j])) {
                return "moderation";
            }
        }

        if (ngx_strstr(s, "overloaded")) {
            return "overloaded";
        }
    }

    return NULL;
}


/*
 * "the provider failed (HTTP 503)": the normalized message and the
 * status; what the provider said is kept apart, for the log
 */

static void
mr_adapter_message(ngx_pool_t *pool, ngx_uint_t status, json_t *answer,
    mr_adapter_out_t *out)
{
    u_char     *p;
    ngx_str_t   base;

    mr_adapter_detail(pool, answer, out);

    if (status == 0) {
        return;
    }

    p = ngx_pnalloc(pool, out->message.len + sizeof(" (HTTP 000)"));
    if (p == NULL) {
        return;
    }

    base = out->message;
    out->message.data = p;
    p = ngx_sprintf(p, "%V (HTTP %03ui)", &base, status % 1000);
    out->message.len = p - out->message.data;
}


/*
 * The provider's error message (error.message, or message), cut to a
 * length, control characters made spaces: a line of the error log
 */

static void
mr_adapter_detail(ngx_pool_t *pool, json_t *answer, mr_adapter_out_t *out)
{
    u_char      *p;
    size_t       len, i;
    json_t      *v;
    const char  *s;

    v = json_object_get(answer, "error");

    if (json_is_object(v)) {
        v = json_object_get(v, "message");

    } else if (!json_is_string(v)) {
        v = json_object_get(answer, "message");
    }

    s = json_is_string(v) ? json_string_value(v) : NULL;
    len = s ? json_string_length(v) : 0;

    if (len == 0) {
        return;
    }

    if (len > MR_ADAPTER_MESSAGE_MAX) {
        len = MR_ADAPTER_MESSAGE_MAX;

        /* not inside a UTF-8 sequence */
        while (len && ((u_char) s[len] & 0xc0) == 0x80) {
            len--;
        }
    }

    p = ngx_pnalloc(pool, len);
    if (p == NULL) {
        return;
    }

    for (i = 0; i < len; i++) {
        p[i] = ((u_char) s[i] < 0x20 || s[i] == 0x7f) ? ' ' : (u_char) s[i];
    }

    out->detail.data = p;
    out->detail.len = len;
}


/*
 * A count of usage: an integer, or a real with an integer value (-1: none,
 * or not a count).  One larger than MR_ADAPTER_USAGE_MAX counts as that
 * many: the cost of that many is past the hold of any budget the gateway
 * sends, so the hold is charged (not the estimate, as for no count).
 */

static int64_t
mr_adapter_usage(json_t *usage, const char *name)
{
    double   d;
    json_t  *v;

    v = json_object_get(usage, name);

    if (json_is_integer(v)) {
        if (json_integer_value(v) < 0) {
            return -1;
        }

        return ngx_min(json_integer_value(v), MR_ADAPTER_USAGE_MAX);
    }

    if (json_is_real(v)) {
        d = json_real_value(v);

        if (d > (double) MR_ADAPTER_USAGE_MAX) {
            return MR_ADAPTER_USAGE_MAX;
        }

        if (d >= 0 && d == (double) (int64_t) d) {
            return (int64_t) d;
        }
    }

    return -1;
}


/* a count that may be left out (0), or -1 if it is there but not a count */

static int64_t
mr_adapter_usage_opt(json_t *usage, const char *name)
{
    if (json_object_get(usage, name) == NULL) {
        return 0;
    }

    return mr_adapter_usage(usage, name);
}


/*
 * The cost of what the provider reports it used (mr_exec_cost()): images
 * as counted in the answer (images >= 0) or asked for (input.n), seconds
 * as asked for; -1, the estimate, when the answer leaves out a token
 * count the model has a price for
 */

static int64_t
mr_adapter_cost(mr_model_t *m, json_t *input, int64_t in, int64_t out,
    int64_t images)
{
    mr_usage_t  u;

    mr_exec_usage_of(input, &u);

    if (images >= 0) {
        u.images = images;
    }

    u.input_tokens = in;
    u.output_tokens = out;

    return mr_exec_cost(m, &u);
}


/*
 * the execution's input, where the price needs it (per image, per second):
 * its numbers are read, its long strings set aside (mr_input.c)
 */

static json_t *
mr_adapter_input(ngx_pool_t *pool, mr_model_t *m, mr_exec_t *exec)
{
    mr_input_t  in;

    if (m->per_image == 0 && m->per_second == 0) {
        return NULL;
    }

    return mr_input_load(pool, &exec->seg[MR_SEG_INPUT], &in);
}


/* Retry-After: seconds or an HTTP date; 0: none */

static int64_t
mr_adapter_retry_after(ngx_str_t *value)
{
    time_t     t;
    ngx_int_t  n;

    if (value == NULL || value->len == 0) {
        return 0;
    }

    n = ngx_atoi(value->data, value->len);

    if (n == NGX_ERROR) {
        t = ngx_parse_http_time(value->data, value->len);
        if (t == NGX_ERROR) {
            return 0;
        }

        n = (t > ngx_time()) ? t - ngx_time() : 0;
    }

    return (int64_t) ngx_min(n, MR_ADAPTER_RETRY_MAX) * 1000;
}


/*
 * An asynchronous provider's callback:
 *   {"status": "succeeded", "output": {...}, "usage": {...}}
 *   {"status": "failed", "error": {"code": "...", "message": "..."}}
 */

void
mr_adapter_callback(ngx_pool_t *pool, mr_model_t *m, mr_exec_t *exec,
    json_t *body, mr_adapter_out_t *out)
{
    json_t      *v, *output, *res, *usage, *input;
    int64_t      in, outt;
    const char  *status, *code;

    ngx_memzero(out, sizeof(mr_adapter_out_t));
    out->cost = -1;

    /* a string with a NUL in it is not a status */

    v = json_object_get(body, "status");
    status = (json_is_string(v)
              && ngx_strlen(json_string_value(v)) == json_string_length(v))
             ? json_string_value(v) : "";

    if (ngx_strcmp(status, "succeeded") == 0
        || ngx_strcmp(status, "completed") == 0)
    {
        output = json_object_get(body, "output");
        if (output == NULL) {
            output = json_object_get(body, "result");
        }

        if (output == NULL) {
            mr_adapter_fail(out, MR_OUT_FATAL, "GENERATION_FAILED",
                            "the provider called back without an output");
            return;
        }

        res = json_is_object(output) ? json_deep_copy(output)
                                     : json_pack("{s:O}", "output", output);
        if (res == NULL) {
            mr_adapter_fail(out, MR_OUT_FATAL, "GENERATION_FAILED",
                            "the provider's output cannot be stored");
            return;
        }

        usage = json_object_get(body, "usage");
        in = mr_adapter_usage(usage, "input_tokens");
        outt = mr_adapter_usage(usage, "output_tokens");

        if (in >= 0 || outt >= 0) {
            json_object_set_new(res, "usage", json_object());
            v = json_object_get(res, "usage");

            if (in >= 0) {
                json_object_set_new(v, "input_tokens", json_integer(in));
            }

            if (outt >= 0) {
                json_object_set_new(v, "output_tokens", json_integer(outt));
            }
        }

        input = mr_adapter_input(pool, m, exec);
        out->cost = mr_adapter_cost(m, input, in, outt, -1);
        json_decref(input);

        if (mr_json_dump(pool, res, &out->result) != NGX_OK) {
            json_decref(res);
            mr_adapter_fail(out, MR_OUT_FATAL, "GENERATION_FAILED",
                            "the provider's output cannot be stored");
            return;
        }

        json_decref(res);
        out->outcome = MR_OUT_OK;
        return;
    }

    /* a failure: never retried, the job was the provider's */

    v = json_object_get(body, "error");
    code = mr_adapter_keyword(json_is_object(v) ? v : body);

    if (code && ngx_strcmp(code, "moderation") == 0) {
        code = "CONTENT_MODERATION_REJECTED";

    } else {
        code = "GENERATION_FAILED";
        v = json_object_get(json_object_get(body, "error"), "code");

        if (json_is_string(v)
            && (ngx_strcmp(json_string_value(v), "GENERATION_TIMEOUT") == 0
                || ngx_strcmp(json_string_value(v), "MODEL_OVERLOADED") == 0
                || ngx_strcmp(json_string_value(v),
                              "INPUT_VALIDATION_ERROR") == 0))
        {
            code = json_string_value(v);
            code = (code[0] == 'G') ? "GENERATION_TIMEOUT"
                   : (code[0] == 'M') ? "MODEL_OVERLOADED"
                   : "INPUT_VALIDATION_ERROR";
        }
    }

    mr_adapter_fail(out, MR_OUT_FATAL, code, "the provider reported a "
                    "failure");
    mr_adapter_detail(pool, body, out);
}
