// Checks recorded HTTP exchanges against an OpenAPI 3.1 document, with
// Ajv's JSON Schema 2020-12 validator (the dialect of OpenAPI 3.1).
//
//   node tools/openapi/validate.mjs openapi.yaml exchanges.json
//
// exchanges.json: an array of
//   {"label", "kind": "response", "method", "path" (with the query),
//    "status", "headers" (lowercase names), "body",
//    "request": {"headers", "body"}, "rate_limited": bool}
//   {"label", "kind": "webhook", "headers", "body"}   (a delivery received)
//
// Each answer must be documented for its operation (or be one of the
// errors any operation may give, as the document's `default` says), its
// body must validate against the response's schema (the schemas forbid
// fields they do not name and require the ones they do; a body that is
// not JSON must have the documented media type), the response's required
// headers must be there and valid, a header the gateway sets
// (GATEWAY_HEADERS) must not be there unless the response declares it,
// and an error's request_id must be the X-Request-Id. An exchange marked
// rate_limited (a gateway with modelroute_rate_limit on, a request that
// an API key authenticates) must carry the X-RateLimit-* headers unless
// it is a 401. A 2xx answer also checks the request: its body and query
// parameters must be valid for the operation. At the end, every response
// status that the document lists for an operation must have been seen,
// and for an error response, each error code its schema names (the
// `const` of error.code, in each branch of a oneOf); and every webhook.
//
// Prints {"results": [{label, ok, errors}], "coverage": {ok, missing}}
// on stdout; exits 0 (the caller decides), 2 on a usage error.

import { readFileSync } from 'node:fs';
import Ajv2020 from 'ajv/dist/2020.js';
import addFormats from 'ajv-formats';
import yaml from 'js-yaml';

const [docPath, exPath] = process.argv.slice(2);
if (!docPath || !exPath) {
    console.error('usage: validate.mjs openapi.yaml exchanges.json');
    process.exit(2);
}

const doc = yaml.load(readFileSync(docPath, 'utf8'));
const exchanges = JSON.parse(readFileSync(exPath, 'utf8'));

// ------------------------------------------------------------ schemas

const BASE = 'https://modelroute.invalid/openapi';

// the document's "#/components/schemas/X" become "<BASE>#/$defs/X"
function rewrite(node) {
    if (Array.isArray(node)) {
        return node.map(rewrite);
    }
    if (node && typeof node === 'object') {
        const out = {};
        for (const [k, v] of Object.entries(node)) {
            if (k === '$ref' && typeof v === 'string') {
                const m = v.match(/^#\/components\/schemas\/(.+)$/);
                if (!m) {
                    throw new Error(`unsupported $ref in a schema: ${v}`);
                }
                out[k] = `${BASE}#/$defs/${m[1]}`;
            } else {
                out[k] = rewrite(v);
            }
        }
        return out;
    }
    return node;
}

const ajv = new Ajv2020({ strict: true, strictTypes: false,
                          strictRequired: false, allErrors: true });
addFormats(ajv);
// OpenAPI's own schema keywords (annotations here)
ajv.addVocabulary(['discriminator', 'xml', 'externalDocs', 'example']);
ajv.addSchema({ $id: BASE, $defs: rewrite(doc.components.schemas) });

for (const name of Object.keys(doc.components.schemas)) {
    ajv.getSchema(`${BASE}#/$defs/${name}`);
}

const compiled = new Map();

function validator(schema) {
    if (!compiled.has(schema)) {
        compiled.set(schema, ajv.compile(rewrite(schema)));
    }
    return compiled.get(schema);
}

function check(schema, value, where, errors) {
    const v = validator(schema);
    if (!v(value)) {
        for (const e of v.errors) {
            errors.push(`${where}${e.instancePath || ''}: ${e.message}`
                        + (e.params && Object.keys(e.params).length
                           ? ' ' + JSON.stringify(e.params) : ''));
        }
        return false;
    }
    return true;
}

// ------------------------------------------------------------ the document

function deref(node) {
    while (node && node.$ref) {
        const parts = node.$ref.replace(/^#\//, '').split('/')
            .map(p => p.replace(/~1/g, '/').replace(/~0/g, '~'));
        node = parts.reduce((n, p) => n[p], doc);
    }
    return node;
}

const METHODS = ['get', 'put', 'post', 'delete', 'options', 'head', 'patch',
                 'trace'];

// path templates, the most literal first
const templates = Object.keys(doc.paths).map(t => ({
    template: t,
    params: (t.match(/\{[^}]+\}/g) || []).map(p => p.slice(1, -1)),
    re: new RegExp('^' + t.replace(/[.*+?^$()|[\]\\]/g, '\\$&')
        .replace(/\\?\{[^}]+\\?\}/g, '([^/]+)') + '$'),
})).sort((a, b) => a.params.length - b.params.length);

// the errors any operation may give (the `default` response), by status
const DEFAULT_CODES = {
    400: 'INPUT_VALIDATION_ERROR', 403: 'FORBIDDEN', 405: 'METHOD_NOT_ALLOWED',
    413: 'PAYLOAD_TOO_LARGE', 429: 'RATE_LIMITED',
    500: 'INTERNAL_ERROR', 503: 'SERVICE_UNAVAILABLE',
};

function findPath(path) {
    for (const t of templates) {
        const m = path.match(t.re);
        if (m) {
            const values = {};
            t.params.forEach((p, i) => { values[p] = decodeURIComponent(m[i + 1]); });
            return { template: t.template, item: doc.paths[t.template], values };
        }
    }
    return null;
}

function jsonBody(body, errors, where) {
    try {
        return JSON.parse(body);
    } catch (e) {
        errors.push(`${where}: not JSON: ${String(body).slice(0, 200)}`);
        return undefined;
    }
}

// a parameter's value as its schema types it (query strings are text)
function typed(value, schema) {
    const s = deref(schema) || {};
    const types = [].concat(s.type || []);
    if ((types.includes('integer') || types.includes('number'))
        && /^-?[0-9]+(\.[0-9]+)?$/.test(value)) {
        return Number(value);
    }
    return value;
}

// headers the gateway sets on some answers: one the response does not
// declare is a header the document does not describe
const GATEWAY_HEADERS = ['allow', 'retry-after', 'location',
    'idempotent-replayed', 'x-ratelimit-limit', 'x-ratelimit-remaining',
    'x-ratelimit-reset', 'cache-control', 'content-security-policy'];
const RATE_LIMIT_HEADERS = ['x-ratelimit-limit', 'x-ratelimit-remaining',
    'x-ratelimit-reset'];

function checkHeaders(declared, headers, errors, where) {
    const names = Object.keys(declared || {}).map(n => n.toLowerCase());
    for (const h of GATEWAY_HEADERS) {
        if (headers[h] !== undefined && !names.includes(h)) {
            errors.push(`${where}: header ${h} is not in the document`);
        }
    }
    for (const [name, h0] of Object.entries(declared || {})) {
        const h = deref(h0);
        const v = headers[name.toLowerCase()];
        if (v === undefined) {
            if (h.required) {
                errors.push(`${where}: header ${name} is missing`);
            }
            continue;
        }
        if (Array.isArray(v)) {
            errors.push(`${where}: header ${name} appears ${v.length} times`);
            continue;
        }
        check(h.schema, v, `${where}: header ${name}`, errors);
    }
}

function checkResponse(x, seen) {
    const errors = [];
    const url = new URL(x.path, 'http://gateway');
    const method = x.method.toLowerCase();
    const found = findPath(url.pathname);
    const isHead = method === 'head';
    const opMethod = isHead ? 'get' : method;
    const status = String(x.status);
    const headers = x.headers || {};
    let response;
    let opKey = null;

    if (!found) {
        // no such path: the envelope, 404 (or 401 for an unauthenticated
        // /v1/ request, which authenticates first)
        if (status === '404') {
            response = doc.components.responses.NotFound;
        } else if (status === '401' && url.pathname.startsWith('/v1/')) {
            response = doc.components.responses.Unauthorized;
        } else {
            errors.push(`${x.method} ${url.pathname}: no such path in the`
                        + ` document, and the answer is ${status}, not 404`);
            return errors;
        }
    } else {
        const op = found.item[opMethod];
        if (!op) {
            // a method the path does not serve: 405 with Allow
            const served = METHODS.filter(m => found.item[m])
                .map(m => m.toUpperCase());
            if (served.includes('GET')) {
                served.push('HEAD');
            }
            if (status === '401' && url.pathname.startsWith('/v1/')
                && !url.pathname.startsWith('/v1/callbacks/')) {
                // /v1/ authenticates first, whatever the method
                response = doc.components.responses.Unauthorized;
                return checkBody(x, url, status, response, false, null,
                                 opMethod, errors);
            }
            if (status !== '405') {
                errors.push(`${x.method} ${found.template}: not in the`
                            + ` document; the answer should be 405, not ${status}`);
                return errors;
            }
            const allow = (headers.allow || '').split(/,\s*/).filter(Boolean);
            if (allow.slice().sort().join() !== served.slice().sort().join()) {
                errors.push(`${x.method} ${found.template}: Allow "${headers.allow}"`
                            + `, the document serves ${served.join(', ')}`);
            }
            response = doc.components.responses.OtherError;
        } else {
            opKey = `${opMethod.toUpperCase()} ${found.template}`;
            const responses = op.responses;
            if (responses[status]) {
                response = deref(responses[status]);
                seen.add(`${opKey} ${status}`);
                const code = errorCode(x.body);
                if (code) {
                    seen.add(`${opKey} ${status} ${code}`);
                }
            } else if (responses.default && DEFAULT_CODES[status]) {
                response = deref(responses.default);
            } else {
                errors.push(`${opKey}: ${status} is not a documented answer`);
                return errors;
            }

            // a success: the request was one the document allows
            if (/^2/.test(status)) {
                checkRequest(op, found, url, x, errors);
            }
        }
    }

    return checkBody(x, url, status, response, isHead, found, opMethod,
                     errors);
}

// the code of an error envelope, if the body is one
function errorCode(body) {
    try {
        const j = JSON.parse(body);
        return j && j.error && typeof j.error.code === 'string'
            ? j.error.code : null;
    } catch (e) {
        return null;
    }
}

// the error codes a response's schema names: error.code's const, in each
// branch of a oneOf
function codesOf(schema) {
    // one $ref at a time: a $ref with siblings (an envelope narrowed) is
    // read as it is
    while (schema && schema.$ref && !schema.properties && !schema.oneOf) {
        schema = schema.$ref.replace(/^#\//, '').split('/')
            .reduce((n, p) => n && n[p], doc);
    }
    if (!schema) {
        return [];
    }
    if (schema.oneOf) {
        return schema.oneOf.flatMap(codesOf);
    }
    const code = schema.properties && schema.properties.error
        && schema.properties.error.properties
        && schema.properties.error.properties.code;
    return code && code.const ? [code.const] : [];
}

// the answer's headers and body against the response of the document
function checkBody(x, url, status, response, isHead, found, opMethod,
                   errors) {
    const headers = x.headers || {};
    response = deref(response);
    const where = `${x.method} ${url.pathname} ${status}`;
    checkHeaders(response.headers, headers, errors, where);

    if (x.rate_limited && status !== '401') {
        for (const h of RATE_LIMIT_HEADERS) {
            if (headers[h] === undefined) {
                errors.push(`${where}: header ${h} is missing (rate limits`
                            + ' are on, and a key authenticated the request)');
            }
        }
    }

    if (isHead) {
        return errors;
    }

    const content = response.content || {};
    const media = content['application/json'];
    if (!media) {
        const types = Object.keys(content);
        if (types.length === 0) {
            if (x.body && x.body.length) {
                errors.push(`${where}: a body the document does not describe`);
            }
            return errors;
        }
        // another media type: the Content-Type, and the text's schema
        const type = (headers['content-type'] || '').split(';')[0].trim();
        if (!types.includes(type)) {
            errors.push(`${where}: Content-Type ${headers['content-type']},`
                        + ` the document says ${types.join(', ')}`);
            return errors;
        }
        check(content[type].schema, x.body || '', `${where} body`, errors);
        return errors;
    }

    if (!/^application\/json\b/.test(headers['content-type'] || '')) {
        errors.push(`${where}: Content-Type ${headers['content-type']}`);
    }

    const body = jsonBody(x.body, errors, where);
    if (body === undefined) {
        return errors;
    }
    check(media.schema, body, `${where} body`, errors);

    if (x.status >= 400 && body && body.error) {
        if (body.error.request_id !== headers['x-request-id']) {
            errors.push(`${where}: request_id ${body.error.request_id}`
                        + ` is not the X-Request-Id ${headers['x-request-id']}`);
        }
        if (!found || !found.item[opMethod]
            || !found.item[opMethod].responses[status]) {
            // via `default`: the code that goes with the status
            const want = DEFAULT_CODES[status];
            if (want && body.error.code !== want) {
                errors.push(`${where}: code ${body.error.code}, a ${status}`
                            + ` is ${want}`);
            }
        }
    }
    return errors;
}

function checkRequest(op, found, url, x, errors) {
    const where = `${x.method} ${url.pathname} (request)`;
    const params = [...(found.item.parameters || []), ...(op.parameters || [])]
        .map(deref);

    for (const p of params) {
        let value;
        if (p.in === 'path') {
            value = found.values[p.name];
        } else if (p.in === 'query') {
            value = url.searchParams.get(p.name) ?? undefined;
        } else if (p.in === 'header') {
            value = (x.request.headers || {})[p.name.toLowerCase()];
        } else {
            continue;
        }
        if (value === undefined) {
            if (p.required) {
                errors.push(`${where}: parameter ${p.name} is required`);
            }
            continue;
        }
        check(p.schema, typed(value, p.schema), `${where} ${p.in} ${p.name}`,
              errors);
    }
    // query parameters of the operation's security schemes (a token)
    const schemes = (op.security ?? doc.security ?? [])
        .flatMap(req => Object.keys(req))
        .map(name => doc.components.securitySchemes[name])
        .filter(sc => sc.type === 'apiKey' && sc.in === 'query')
        .map(sc => sc.name);
    for (const name of url.searchParams.keys()) {
        if (!params.some(p => p.in === 'query' && p.name === name)
            && !schemes.includes(name)) {
            errors.push(`${where}: query parameter ${name} is not documented`);
        }
    }

    const rb = deref(op.requestBody);
    const body = x.request.body;
    if (!rb) {
        return;
    }
    if (body === undefined || body === null || body === '') {
        if (rb.required) {
            errors.push(`${where}: the document requires a body`);
        }
        return;
    }
    const media = rb.content['application/json'];
    const json = jsonBody(body, errors, where);
    if (json !== undefined) {
        check(media.schema, json, `${where} body`, errors);
    }
}

function checkWebhook(x, seenHooks) {
    const errors = [];
    const body = jsonBody(x.body, errors, 'webhook');
    if (body === undefined) {
        return errors;
    }
    const name = body.event_type === 'webhook.test' ? 'webhookTest'
                                                    : 'executionEvent';
    seenHooks.add(name);
    const op = doc.webhooks[name].post;
    const where = `webhook ${name} (${body.event_type})`;
    for (const p0 of op.parameters || []) {
        const p = deref(p0);
        const v = (x.headers || {})[p.name.toLowerCase()];
        if (v === undefined) {
            if (p.required) {
                errors.push(`${where}: header ${p.name} is missing`);
            }
            continue;
        }
        check(p.schema, v, `${where}: header ${p.name}`, errors);
    }
    if (!/^application\/json\b/.test((x.headers || {})['content-type'] || '')) {
        errors.push(`${where}: Content-Type ${(x.headers || {})['content-type']}`);
    }
    check(deref(op.requestBody).content['application/json'].schema, body,
          `${where} body`, errors);
    return errors;
}

// ------------------------------------------------------------ run

const seen = new Set();
const seenHooks = new Set();
const results = [];

for (const x of exchanges) {
    let errors;
    try {
        errors = x.kind === 'webhook' ? checkWebhook(x, seenHooks)
                                      : checkResponse(x, seen);
    } catch (e) {
        errors = [`validator: ${e.stack}`];
    }
    results.push({ label: x.label, ok: errors.length === 0, errors });
}

const missing = [];
for (const [template, item] of Object.entries(doc.paths)) {
    for (const m of METHODS) {
        if (!item[m]) {
            continue;
        }
        for (const [status, r] of Object.entries(item[m].responses)) {
            if (status === 'default') {
                continue;
            }
            const key = `${m.toUpperCase()} ${template} ${status}`;
            if (!seen.has(key)) {
                missing.push(key);
                continue;
            }
            const media = (deref(r).content || {})['application/json'];
            for (const code of media ? codesOf(media.schema) : []) {
                if (!seen.has(`${key} ${code}`)) {
                    missing.push(`${key} ${code}`);
                }
            }
        }
    }
}
for (const name of Object.keys(doc.webhooks || {})) {
    if (!seenHooks.has(name)) {
        missing.push(`webhook ${name}`);
    }
}

process.stdout.write(JSON.stringify({
    results,
    coverage: { ok: missing.length === 0, missing },
}, null, 1) + '\n');
