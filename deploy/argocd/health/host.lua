-- Argo CD health check for fleetsnap.io/Host (resource.customizations.health.fleetsnap.io_Host).
-- Argo CD runs this with the live object in `obj` and expects {status, message} back.
-- Status is read from the standard conditions the operator writes (Ready, Stalled,
-- Reconciling) and is only trusted once status.observedGeneration has caught up with
-- metadata.generation. Lua 5.1 compatible (Argo CD embeds gopher-lua).
local hs = {}

local function condition(t)
  if obj.status == nil or obj.status.conditions == nil then
    return nil
  end
  for _, c in ipairs(obj.status.conditions) do
    if c.type == t then
      return c
    end
  end
  return nil
end

local function describe(c, fallback)
  if c == nil then
    return fallback
  end
  local msg = c.message
  if msg == nil or msg == "" then
    msg = fallback
  end
  if c.reason ~= nil and c.reason ~= "" then
    return c.reason .. ": " .. msg
  end
  return msg
end

if obj.status == nil then
  hs.status = "Progressing"
  hs.message = "Waiting for the fleetsnap operator to report status"
  return hs
end

local generation = obj.metadata and obj.metadata.generation
local observed = obj.status.observedGeneration
if generation ~= nil and (observed == nil or observed < generation) then
  hs.status = "Progressing"
  hs.message = "Waiting for the operator to observe generation " .. string.format("%d", generation)
  return hs
end

local stalled = condition("Stalled")
if stalled ~= nil and stalled.status == "True" then
  hs.status = "Degraded"
  hs.message = describe(stalled, "stalled")
  return hs
end

local ready = condition("Ready")
if ready ~= nil and ready.status == "True" then
  hs.status = "Healthy"
  hs.message = describe(ready, "Ready")
  return hs
end

local reconciling = condition("Reconciling")
if reconciling ~= nil and reconciling.status == "True" then
  hs.status = "Progressing"
  hs.message = describe(reconciling, "reconciling")
  return hs
end

if ready ~= nil and ready.status == "False" then
  if ready.reason == "Progressing" or ready.reason == "Pending" then
    hs.status = "Progressing"
  else
    hs.status = "Degraded"
  end
  hs.message = describe(ready, "not ready")
  return hs
end

hs.status = "Progressing"
hs.message = describe(ready, "Waiting for the Ready condition")
return hs
