-- Loaded by post.lua and accounts.lua: prompt_pad, BENCH_INPUT_BYTES
-- (environment) more bytes for each prompt, random letters (as little
-- compressible as text: PostgreSQL compresses a long value).

local n = tonumber(os.getenv("BENCH_INPUT_BYTES") or "0") or 0
local pad = {}
for i = 1, n do
    pad[i] = string.char(97 + math.random(0, 25))
end
prompt_pad = table.concat(pad)
