-- Test harness: runs an Argo CD health script the way Argo CD does and prints the result.
--   lua5.4 run.lua <script.lua> <fixture.json>
-- The fixture is {"object": {...}, "expected": {"status": "...", "message": "..."}}; the
-- object becomes the global `obj`, the script's return value is printed as JSON
-- {"status": ..., "message": ...}. JSON decoding with lua-cjson (Debian: lua-cjson).
local cjson = require("cjson")
-- Argo CD never hands a script JSON null; drop them so `x ~= nil` works as it does there.
local function strip_nulls(v)
  if type(v) ~= "table" then
    return v
  end
  for k, x in pairs(v) do
    if x == cjson.null then
      v[k] = nil
    else
      strip_nulls(x)
    end
  end
  return v
end

local script, fixture = arg[1], arg[2]
local f = assert(io.open(fixture, "r"))
local case = strip_nulls(cjson.decode(f:read("a")))
f:close()
obj = case.object
local chunk = assert(loadfile(script))
local ok, hs = pcall(chunk)
if not ok then
  io.stderr:write("health script failed: " .. tostring(hs) .. "\n")
  os.exit(2)
end
if type(hs) ~= "table" then
  io.stderr:write("health script returned " .. type(hs) .. ", not a table\n")
  os.exit(2)
end
print(cjson.encode({ status = hs.status, message = hs.message }))
