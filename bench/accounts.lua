-- wrk script: many accounts, one after another (round robin per thread,
-- each thread starting at its own offset).
--
--   wrk ... -s bench/accounts.lua http://127.0.0.1:PORT -- MODE FILE SEED [MODEL]
--
-- FILE has a line per account: "<API key> <execution id>". MODE "post":
-- POST /v1/executions with the account's key and an idempotency key of its
-- own (SEED makes keys unique per run); "get": GET the account's execution.

-- prompt_pad: BENCH_INPUT_BYTES more bytes for each prompt (pad.lua)
dofile((debug.getinfo(1, "S").source:match("^@(.*/)") or "./") .. "pad.lua")

local threads = 0

function setup(thread)
    threads = threads + 1
    thread:set("thread_no", threads)
end

function init(args)
    mode = args[1] or "post"
    seed = args[3] or tostring(os.time())
    model = args[4] or "demo-chat"
    keys, ids = {}, {}
    for line in io.lines(args[2]) do
        local k, id = line:match("^(%S+)%s+(%S+)")
        if k then
            keys[#keys + 1] = k
            ids[#ids + 1] = id
        end
    end
    n = #keys
    at = ((thread_no or 1) - 1) * 7919 % n
    counter = 0
end

function request()
    counter = counter + 1
    at = at % n + 1
    local headers = {
        ["Authorization"] = "Bearer " .. keys[at],
    }
    if mode == "get" then
        return wrk.format("GET", "/v1/executions/" .. ids[at], headers)
    end
    headers["Content-Type"] = "application/json"
    local body = string.format(
        '{"model":"%s","input":{"prompt":"hello' .. prompt_pad .. '"},'
        .. '"idempotency_key":"bench-%s-%d-%d"}', model, seed, thread_no,
        counter)
    return wrk.format("POST", "/v1/executions", headers, body)
end
