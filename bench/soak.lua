-- wrk script for bench/soak.sh: POST /v1/executions, each with its own
-- idempotency key, until this thread has had QUOTA answers; then it writes
-- "<answers> <202s> <other answers>" to DONE.<thread number> and stops
-- (wrk itself runs until bench/soak.sh sends it SIGINT, once every thread
-- has written its file). BENCH_SOAK_DELAY_MS in the environment (a
-- positive number of ms) paces each connection: it waits that long before
-- each request.
--
--   wrk ... -s bench/soak.lua http://127.0.0.1:PORT -- \
--       PATH KEY SEED MODEL QUOTA DONE

local threads = {}

function setup(thread)
    table.insert(threads, thread)
    thread:set("thread_no", #threads)
end

function init(args)
    path = args[1]
    seed = args[3]
    model = args[4]
    quota = tonumber(args[5])
    done_file = string.format("%s.%d", args[6], thread_no)
    counter = 0
    answers = 0
    accepted = 0
    others = 0
    finished = false
    headers = {
        ["Content-Type"] = "application/json",
        ["Authorization"] = "Bearer " .. args[2],
    }
end

local pause = tonumber(os.getenv("BENCH_SOAK_DELAY_MS") or "0") or 0

if pause > 0 then
    function delay()
        return pause
    end
end

function request()
    counter = counter + 1
    local body = string.format(
        '{"model":"%s","input":{"prompt":"hello"},'
        .. '"idempotency_key":"soak-%s-%d-%d"}', model, seed, thread_no,
        counter)
    return wrk.format("POST", path, headers, body)
end

function response(status, headers, body)
    if finished then
        return
    end
    answers = answers + 1
    if status == 202 then
        accepted = accepted + 1
    else
        others = others + 1
        if others <= 5 then
            io.stderr:write(string.format("soak.lua: %d %s\n", status,
                                          string.sub(body, 1, 300)))
        end
    end
    if answers >= quota then
        finished = true
        local f = io.open(done_file, "w")
        f:write(string.format("%d %d %d\n", answers, accepted, others))
        f:close()
        wrk.thread:stop()
    end
end
