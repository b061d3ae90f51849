-- wrk script: many accounts, one after another (round robin per thread,
-- each thread starting at its own offset).
--
--   wrk ... -s bench/accounts.lua http://127.0.0.1:PORT -- MODE FILE SEED [MODEL]
--
-- FILE has a line per account: "<API key> <execution id>". MODE "post":
-- POST /v1/executions with the account's key and an idempotency key of its
-- own (SEED makes keys unique per run); "get": GET the account's execution.

-- BENCH_INPUT_BYTES (environment): that many more bytes in each prompt,
-- random letters (as little compressible as text: PostgreSQL compresses
-- a long value)
local pad_bytes = tonumber(os.getenv("BENCH_INPUT_BYTES") or "0") or 0
local pad = {}
for i = 1, pad_bytes do
    pad[i] = string.char(97 + math.random(0, 25))
end
prompt_pad = table.concat(pad)

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
