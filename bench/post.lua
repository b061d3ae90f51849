-- wrk script: POST /v1/executions-style bodies, each with its own
-- idempotency key (run seed + thread number + per-thread counter).
--
--   wrk ... -s bench/post.lua http://127.0.0.1:PORT -- PATH KEY SEED [MODEL]
--
-- PATH is /v1/executions (or /baseline for the same request against a
-- plain `return 202`), KEY the API key, SEED makes keys unique per run,
-- MODEL the model (demo-chat).

-- prompt_pad: BENCH_INPUT_BYTES more bytes for each prompt (pad.lua)
dofile((debug.getinfo(1, "S").source:match("^@(.*/)") or "./") .. "pad.lua")

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
