-- wrk script: POST /v1/webhooks/endpoints/{id}/test as fast as possible
-- (each 202 is a new webhook.test event and its delivery), and write the
-- event_id of every 202 to OUT.<thread number>, so that bench/webhooks.sh
-- can tell exactly which accepted events never reached the receiver.
--
--   wrk ... -s bench/webhook_test.lua http://127.0.0.1:PORT -- PATH KEY OUT

local threads = {}

function setup(thread)
    table.insert(threads, thread)
    thread:set("thread_no", #threads)
end

function init(args)
    path = args[1]
    out = io.open(string.format("%s.%d", args[3], thread_no), "w")
    -- wrk never closes a thread's Lua state: no buffer may be left unwritten
    out:setvbuf("line")
    headers = {
        ["Authorization"] = "Bearer " .. (args[2] or ""),
        ["Content-Length"] = "0",
    }
    req = wrk.format("POST", path, headers)
    accepted = 0
end

function request()
    return req
end

function response(status, headers, body)
    if status == 202 then
        local id = string.match(body, '"event_id"%s*:%s*"(evt_%x+)"')
        if id then
            accepted = accepted + 1
            out:write(id, "\n")
        end
    end
end

function done(summary, latency, requests)
    local n = 0
    for _, t in ipairs(threads) do
        n = n + (t:get("accepted") or 0)
    end
    io.write(string.format("202 with an event_id: %d\n", n))
end
