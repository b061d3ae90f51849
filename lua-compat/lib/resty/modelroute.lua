-- resty.modelroute: the ModelRoute API for OpenResty / lua-nginx-module.
--
-- The calls are subrequests (ngx.location.capture) to a location served by
-- the module in lua mode:
--
--     location /_modelroute/ { internal; modelroute_lua; }
--
-- so they run the very code of the HTTP API (validation, hold, idempotency,
-- group commit) without a socket, and yield instead of blocking.  The
-- account is the one your own auth layer chose; no API key is involved.
--
--     local mr = require "resty.modelroute"
--     local exec, err = mr.create(account_id, {
--         model = "demo-chat", input = { prompt = "hi" },
--         idempotency_key = "order-1" })
--     if not exec then
--         -- err: "INSUFFICIENT_BALANCE: insufficient balance"
--     end
--
-- Every call returns result, err, info: on failure result is nil, err is
-- "<CODE>: <message>" with a code of the contract's error table, and
-- info = { status = <http status>, error = <the envelope's error object> }.
-- On success info = { status = ..., replayed = <true on an idempotent
-- replay>, request_id = ... }.

local cjson = require "cjson.safe"

local capture = ngx.location.capture
local get_phase = ngx.get_phase
local encode_args = ngx.encode_args
local HTTP_GET = ngx.HTTP_GET
local HTTP_POST = ngx.HTTP_POST
local type = type
local tostring = tostring
local pcall = pcall

local _M = { _VERSION = "0.1" }

local prefix = "/_modelroute"

-- phases in which a subrequest may be issued
local phases = { rewrite = true, access = true, content = true }


-- change the location of the module's lua mount (default "/_modelroute")
function _M.configure(opts)
    if type(opts) ~= "table" or type(opts.location) ~= "string"
       or opts.location:sub(1, 1) ~= "/"
    then
        return nil, "INPUT_VALIDATION_ERROR: configure{location = \"/...\"}"
    end

    prefix = opts.location:gsub("/+$", "")
    return true
end


local function fail(code, message, status, error_obj)
    return nil, code .. ": " .. message,
           { status = status, error = error_obj
                                      or { code = code, message = message } }
end


local function call(method, path, account, args, body)
    local phase = get_phase()

    if not phases[phase] then
        return fail("UNSUPPORTED_PHASE",
                    "resty.modelroute needs a request in the rewrite, "
                    .. "access or content phase, not in " .. tostring(phase))
    end

    if path:sub(1, 7) ~= "/admin/" then
        if type(account) ~= "string" or not account:match("^org_%x+$") then
            return fail("INPUT_VALIDATION_ERROR",
                        "account must be an account id (org_...)")
        end

        args = args or {}
        args.mr_account = account
    end

    local opts = { method = method, args = args and encode_args(args) or nil }

    if body ~= nil then
        local json, err = cjson.encode(body)
        if not json then
            return fail("INPUT_VALIDATION_ERROR",
                        "cannot encode the request: " .. tostring(err))
        end

        opts.body = json
    elseif method == HTTP_POST then
        opts.body = ""
    end

    local ok, res = pcall(capture, prefix .. path, opts)
    if not ok then
        return fail("UNSUPPORTED_PHASE", tostring(res))
    end

    local data = cjson.decode(res.body or "")

    if res.status >= 400 or type(data) ~= "table" then
        local e = type(data) == "table" and data.error
        if type(e) == "table" and e.code then
            return fail(e.code, e.message or "", res.status, e)
        end

        return fail("INTERNAL_ERROR",
                    "unexpected answer " .. tostring(res.status)
                    .. " from " .. prefix .. path
                    .. " (is it a modelroute_lua location?)",
                    res.status)
    end

    local h = res.header or {}

    return data, nil, {
        status = res.status,
        replayed = h["Idempotent-Replayed"] == "true",
        request_id = h["X-Request-Id"],
    }
end


local function exec_id(id)
    return type(id) == "string" and id:match("^exec_%x+$") ~= nil
end


-- create an execution: params = { model, input, idempotency_key,
-- metadata?, webhook_url?, timeout_seconds? }; 202 answers are successes
function _M.create(account, params)
    if type(params) ~= "table" then
        return fail("INPUT_VALIDATION_ERROR", "params must be a table")
    end

    return call(HTTP_POST, "/v1/executions", account, nil, params)
end


function _M.get(account, id)
    if not exec_id(id) then
        return fail("NOT_FOUND", "no such execution", 404)
    end

    return call(HTTP_GET, "/v1/executions/" .. id, account)
end


function _M.result(account, id)
    if not exec_id(id) then
        return fail("NOT_FOUND", "no such execution", 404)
    end

    return call(HTTP_GET, "/v1/executions/" .. id .. "/result", account)
end


-- opts = { status?, model?, limit?, starting_after? }
function _M.list(account, opts)
    local args = {}

    if opts ~= nil and type(opts) ~= "table" then
        return fail("INPUT_VALIDATION_ERROR", "opts must be a table")
    end

    for _, k in ipairs({ "status", "model", "limit", "starting_after" }) do
        if opts and opts[k] ~= nil then
            args[k] = tostring(opts[k])
        end
    end

    return call(HTTP_GET, "/v1/executions", account, args)
end


function _M.cancel(account, id)
    if not exec_id(id) then
        return fail("NOT_FOUND", "no such execution", 404)
    end

    return call(HTTP_POST, "/v1/executions/" .. id .. "/cancel", account)
end


function _M.balance(account)
    return call(HTTP_GET, "/v1/balance", account)
end


-- credit an account: amount is a decimal string ("10.00"); a reference
-- makes the credit idempotent
function _M.credit(account, amount, reference)
    if type(account) ~= "string" or not account:match("^org_%x+$") then
        return fail("INPUT_VALIDATION_ERROR",
                    "account must be an account id (org_...)")
    end

    return call(HTTP_POST, "/admin/accounts/" .. account .. "/credit", nil,
                nil, { amount = amount, reference = reference })
end


return _M
