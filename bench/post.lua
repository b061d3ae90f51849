-- wrk script: POST /v1/executions-style bodies, each with its own
-- idempotency key (run seed + thread number + per-thread counter).
--
--   wrk ... -s bench/post.lua http://127.0.0.1:PORT -- PATH KEY SEED [MODEL]
--
-- PATH is /v1/executions (or /baseline for the same request against a
-- plain `return 202`), KEY the API key, SEED makes keys unique per run,
-- MODEL the model (demo-chat).

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
    path = args[1] or "/v1/executions"
    seed = args[3] or tostring(os.time())
    model = args[4] or "demo-chat"
    counter = 0
    headers = {
        ["Content-Type"] = "application/json",
        ["Authorization"] = "Bearer " .. (args[2] or ""),
    }
end

function request()
    counter = counter + 1
    local body = string.format(
        '{"model":"%s","input":{"prompt":"hello' .. prompt_pad .. '"},'
        .. '"idempotency_key":"bench-%s-%d-%d"}', model, seed, thread_no,
        counter)
    return wrk.format("POST", path, headers, body)
end
