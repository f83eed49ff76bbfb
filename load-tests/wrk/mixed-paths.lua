-- Spread requests over many routes (for a config with N generated routes /svc0/ .. /svcN-1/),
-- so route lookup is exercised rather than one hot path.
--
--   ROUTES=1000 wrk -t1 -c32 -d10s -s load-tests/wrk/mixed-paths.lua http://127.0.0.1:8080

local routes = tonumber(os.getenv("ROUTES") or "1000")
local i = 0
request = function()
  i = (i + 7919) % routes
  return wrk.format("GET", "/svc" .. i .. "/items/" .. i)
end
