
/*
 * ModelRoute: the simulated provider.
 *
 *   location /providers/sim {
 *       internal;
 *       modelroute_simulator [format=chat|anthropic|embeddings|images]
 *           [latency=time] [failure_rate=0.1] [failure_status=503]
 *           [output_tokens=N];
 *   }
 *
 * It answers a POST the way the provider of its format does, after the
 * latency (a timer on the request), with usage: input tokens from the
 * size of the request body (4 bytes a token), output tokens as set but
 * never more than the request's max_tokens (or max_completion_tokens);
 * images, as many as the request's n, without usage (a request body that
 * nginx wrote to a file is not read: no budget then, one image).  A
 * share of the requests (failure_rate) fails with failure_status and a
 * provider-shaped error body; a 429 carries "Retry-After: 1".  It serves
 * the demo configuration and the benchmarks, as a subrequest or as an
 * ordinary server behind an upstream{}.
 */


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>

#include <jansson.h>

#include "mr_simulator.h"
#include "mr_http.h"
#include "mr_util.h"


#define MR_SIM_N_MAX       128


#define MR_SIM_CHAT        0
#define MR_SIM_ANTHROPIC   1
#define MR_SIM_EMBEDDINGS  2
#define MR_SIM_IMAGES      3


struct mr_sim_conf_s {
    ngx_uint_t                format;
    ngx_msec_t                latency;
    ngx_uint_t                failure_rate;     /* per million */
    ngx_uint_t                failure_status;
    ngx_uint_t                output_tokens;
};


static void mr_sim_body(ngx_http_request_t *r);
static void mr_sim_timer(ngx_event_t *ev);
static void mr_sim_cleanup(void *data);
static ngx_int_t mr_sim_answer(ngx_http_request_t *r);
static json_t *mr_sim_request(ngx_http_request_t *r, off_t *len);


static ngx_str_t  mr_sim_formats[] = {
    ngx_string("chat"),
    ngx_string("anthropic"),
    ngx_string("embeddings"),
    ngx_string("images"),
    ngx_null_string
};


char *
mr_sim_directive(ngx_conf_t *cf, ngx_command_t *cmd, void *conf)
{
    mr_loc_conf_t *lcf = conf;

    ngx_int_t                  n;
    ngx_str_t                 *value, name, arg;
    ngx_uint_t                 i, j;
    mr_sim_conf_t             *sim;
    ngx_http_core_loc_conf_t  *clcf;

    if (lcf->handler != NGX_CONF_UNSET_UINT) {
        return "is duplicate";
    }

    sim = ngx_pcalloc(cf->pool, sizeof(mr_sim_conf_t));
    if (sim == NULL) {
        return NGX_CONF_ERROR;
    }

    sim->failure_status = 503;
    sim->output_tokens = 16;

    value = cf->args->elts;

    for (i = 1; i < cf->args->nelts; i++) {

        if (mr_conf_param(&value[i], &name, &arg) != NGX_OK) {
            goto invalid;
        }

        if (name.len == 6 && ngx_strncmp(name.data, "format", 6) == 0) {
            for (j = 0; mr_sim_formats[j].len; j++) {
                if (mr_sim_formats[j].len == arg.len
                    && ngx_strncmp(mr_sim_formats[j].data, arg.data,
                                   arg.len) == 0)
                {
                    break;
                }
            }

            if (mr_sim_formats[j].len == 0) {
                goto invalid;
            }

            sim->format = j;

        } else if (name.len == 7
                   && ngx_strncmp(name.data, "latency", 7) == 0)
        {
            sim->latency = ngx_parse_time(&arg, 0);
            if (sim->latency == (ngx_msec_t) NGX_ERROR) {
                goto invalid;
            }

        } else if (name.len == 12
                   && ngx_strncmp(name.data, "failure_rate", 12) == 0)
        {
            /* a fraction with up to 6 decimals, as money is parsed */
            n = ngx_atofp(arg.data, arg.len, 6);
            if (n == NGX_ERROR || n > 1000000) {
                goto invalid;
            }

            sim->failure_rate = n;

        } else if (name.len == 14
                   && ngx_strncmp(name.data, "failure_status", 14) == 0)
        {
            n = ngx_atoi(arg.data, arg.len);
            if (n < 400 || n > 599) {
                goto invalid;
            }

            sim->failure_status = n;

        } else if (name.len == 13
                   && ngx_strncmp(name.data, "output_tokens", 13) == 0)
        {
            n = ngx_atoi(arg.data, arg.len);
            if (n == NGX_ERROR || n > 1000000) {
                goto invalid;
            }

            sim->output_tokens = n;

        } else {
            goto invalid;
        }
    }

    lcf->handler = MR_HANDLER_SIM;
    lcf->sim = sim;

    clcf = ngx_http_conf_get_module_loc_conf(cf, ngx_http_core_module);
    clcf->handler = ngx_http_modelroute_handler;

    return NGX_CONF_OK;

invalid:

    ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                       "\"modelroute_simulator\": invalid parameter \"%V\"",
                       &value[i]);
    return NGX_CONF_ERROR;
}


ngx_int_t
mr_sim_handler(ngx_http_request_t *r)
{
    ngx_int_t  rc;

    if (r->method != NGX_HTTP_POST) {
        return NGX_HTTP_NOT_ALLOWED;
    }

    rc = ngx_http_read_client_request_body(r, mr_sim_body);

    if (rc >= NGX_HTTP_SPECIAL_RESPONSE) {
        return rc;
    }

    return NGX_DONE;
}


static void
mr_sim_body(ngx_http_request_t *r)
{
    ngx_event_t         *ev;
    mr_loc_conf_t       *lcf;
    ngx_pool_cleanup_t  *cln;

    lcf = ngx_http_get_module_loc_conf(r, ngx_http_modelroute_module);

    if (lcf->sim->latency == 0) {
        ngx_http_finalize_request(r, mr_sim_answer(r));
        return;
    }

    ev = ngx_pcalloc(r->pool, sizeof(ngx_event_t));
    cln = ngx_pool_cleanup_add(r->pool, 0);

    if (ev == NULL || cln == NULL) {
        ngx_http_finalize_request(r, NGX_HTTP_INTERNAL_SERVER_ERROR);
        return;
    }

    ev->handler = mr_sim_timer;
    ev->data = r;
    ev->log = r->connection->log;

    /* the request may end first (aborted): then the timer goes with it */
    cln->handler = mr_sim_cleanup;
    cln->data = ev;

    ngx_add_timer(ev, lcf->sim->latency);
}


static void
mr_sim_timer(ngx_event_t *ev)
{
    ngx_connection_t    *c;
    ngx_http_request_t  *r;

    r = ev->data;
    c = r->connection;

    ngx_http_finalize_request(r, mr_sim_answer(r));
    ngx_http_run_posted_requests(c);
}


static void
mr_sim_cleanup(void *data)
{
    ngx_event_t *ev = data;

    if (ev->timer_set) {
        ngx_del_timer(ev);
    }
}


static ngx_int_t
mr_sim_answer(ngx_http_request_t *r)
{
    off_t            len;
    json_t          *req, *v;
    ngx_int_t        rc;
    ngx_buf_t       *b;
    ngx_uint_t       in, out, n, i;
    ngx_chain_t      chain;
    mr_sim_conf_t   *sim;
    mr_loc_conf_t   *lcf;
    mr_http_ctx_t   *ctx;
    ngx_table_elt_t *h;

    lcf = ngx_http_get_module_loc_conf(r, ngx_http_modelroute_module);
    sim = lcf->sim;

    /* its answers are a provider's, never the API's error envelope */

    if (r == r->main) {
        ctx = mr_http_ctx(r);
        if (ctx == NULL) {
            return NGX_HTTP_INTERNAL_SERVER_ERROR;
        }

        ctx->answered = 1;
    }

    req = mr_sim_request(r, &len);

    in = (ngx_uint_t) (len + 3) / 4;
    out = sim->output_tokens;

    /* the budget the request gives, as a provider keeps to it */

    v = json_object_get(req, "max_completion_tokens");
    if (v == NULL) {
        v = json_object_get(req, "max_tokens");
    }

    if (json_is_integer(v) && json_integer_value(v) >= 0
        && (json_int_t) out > json_integer_value(v))
    {
        out = (ngx_uint_t) json_integer_value(v);
    }

    v = json_object_get(req, "n");
    n = (json_is_integer(v) && json_integer_value(v) >= 1)
        ? (ngx_uint_t) ngx_min(json_integer_value(v), MR_SIM_N_MAX) : 1;

    json_decref(req);

    b = ngx_create_temp_buf(r->pool, 512 + n * 64);
    if (b == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    r->headers_out.status = NGX_HTTP_OK;

    if (sim->failure_rate
        && (ngx_uint_t) (ngx_random() % 1000000) < sim->failure_rate)
    {
        r->headers_out.status = sim->failure_status;

        b->last = ngx_sprintf(b->last,
                              "{\"error\":{\"message\":\"simulated "
                              "failure\",\"type\":\"%s\"}}",
                              sim->failure_status == 429
                              ? "rate_limit_error" : "server_error");

        if (sim->failure_status == 429) {
            h = ngx_list_push(&r->headers_out.headers);
            if (h == NULL) {
                return NGX_HTTP_INTERNAL_SERVER_ERROR;
            }

            h->hash = 1;
#if (nginx_version >= 1023000)
            h->next = NULL;
#endif
            ngx_str_set(&h->key, "Retry-After");
            ngx_str_set(&h->value, "1");
        }

    } else {
        switch (sim->format) {

        case MR_SIM_ANTHROPIC:
            b->last = ngx_sprintf(b->last,
                "{\"id\":\"msg_sim\",\"type\":\"message\","
                "\"role\":\"assistant\",\"content\":[{\"type\":\"text\","
                "\"text\":\"a simulated answer\"}],"
                "\"stop_reason\":\"end_turn\","
                "\"usage\":{\"input_tokens\":%ui,\"output_tokens\":%ui}}",
                in, out);
            break;

        case MR_SIM_EMBEDDINGS:
            b->last = ngx_sprintf(b->last,
                "{\"object\":\"list\",\"data\":[{\"object\":\"embedding\","
                "\"index\":0,\"embedding\":[0.125,-0.25,0.5,1.0]}],"
                "\"usage\":{\"prompt_tokens\":%ui,\"total_tokens\":%ui}}",
                in, in);
            break;

        case MR_SIM_IMAGES:
            b->last = ngx_sprintf(b->last, "{\"created\":%T,\"data\":[",
                                  ngx_time());

            for (i = 1; i <= n; i++) {
                b->last = ngx_sprintf(b->last, "%s{\"url\":\"https://"
                                      "simulator.invalid/image-%ui.png\"}",
                                      i == 1 ? "" : ",", i);
            }

            b->last = ngx_cpymem(b->last, "]}", 2);
            break;

        default: /* MR_SIM_CHAT */
            b->last = ngx_sprintf(b->last,
                "{\"id\":\"chatcmpl-sim\",\"object\":\"chat.completion\","
                "\"choices\":[{\"index\":0,\"message\":{\"role\":"
                "\"assistant\",\"content\":\"a simulated answer\"},"
                "\"finish_reason\":\"stop\"}],"
                "\"usage\":{\"prompt_tokens\":%ui,"
                "\"completion_tokens\":%ui,\"total_tokens\":%ui}}",
                in, out, in + out);
        }
    }

    b->last_buf = (r == r->main) ? 1 : 0;
    b->last_in_chain = 1;

    r->headers_out.content_length_n = b->last - b->pos;
    ngx_str_set(&r->headers_out.content_type, "application/json");
    r->headers_out.content_type_len = r->headers_out.content_type.len;

    rc = ngx_http_send_header(r);

    if (rc == NGX_ERROR || rc > NGX_OK || r->header_only) {
        return rc;
    }

    chain.buf = b;
    chain.next = NULL;

    return ngx_http_output_filter(r, &chain);
}


/*
 * The request as JSON, when its body is in memory (NULL otherwise), and
 * the body's length
 */

static json_t *
mr_sim_request(ngx_http_request_t *r, off_t *len)
{
    u_char       *p, *data;
    ngx_uint_t    mem;
    ngx_chain_t  *cl;

    *len = 0;
    mem = 1;

    if (r->request_body == NULL) {
        return NULL;
    }

    for (cl = r->request_body->bufs; cl; cl = cl->next) {
        *len += ngx_buf_size(cl->buf);
        mem = mem && ngx_buf_in_memory(cl->buf);
    }

    if (!mem || *len == 0) {
        return NULL;
    }

    data = ngx_pnalloc(r->pool, (size_t) *len);
    if (data == NULL) {
        return NULL;
    }

    p = data;

    for (cl = r->request_body->bufs; cl; cl = cl->next) {
        p = ngx_cpymem(p, cl->buf->pos, cl->buf->last - cl->buf->pos);
    }

    return json_loadb((char *) data, p - data, 0, NULL);
}
