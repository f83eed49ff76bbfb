-- Rotate a credential header over many values, so caches keyed by credential (verified JWTs,
-- API-key lookups, per-consumer rate limits) see a realistic spread instead of one hot key.
--
--   HEADER=x-api-key VALUES=keys.txt wrk -t1 -c32 -d10s -s load-tests/wrk/rotating-header.lua URL
--   HEADER=authorization PREFIX="Bearer " VALUES=jwts.txt wrk ... (one token per line)

local header = os.getenv("HEADER") or "x-api-key"
local prefix = os.getenv("PREFIX") or ""
local file = os.getenv("VALUES")
local values = {}

if file then
  for line in io.lines(file) do
    if #line > 0 then
      values[#values + 1] = prefix .. line
    end
  end
end
if #values == 0 then
  for i = 1, 1000 do
    values[i] = prefix .. "key-" .. i
  end
end

local i = 0
request = function()
  i = i % #values + 1
  return wrk.format(nil, nil, { [header] = values[i] })
end
