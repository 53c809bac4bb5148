-- Argo CD health of a WebRtcPbx, from its kstatus conditions:
--   spec not yet observed (observedGeneration < generation) -> Progressing
--   Stalled=True (a change by the user is needed)            -> Degraded
--   Ready=True (config, certificate, pod and probes)          -> Healthy
--   Reconciling=True, or no verdict yet                       -> Progressing
--   Ready=False otherwise                                     -> Degraded
-- Lua 5.1 (gopher-lua), as Argo CD runs it.
local hs = {}
local function condition(kind)
  if obj.status == nil or obj.status.conditions == nil then
    return nil
  end
  for _, c in ipairs(obj.status.conditions) do
    if c.type == kind then
      return c
    end
  end
  return nil
end

local generation = obj.metadata and obj.metadata.generation
local observed = obj.status and obj.status.observedGeneration
if generation ~= nil and (observed == nil or observed < generation) then
  hs.status = "Progressing"
  hs.message = "Waiting for the operator to observe generation " .. tostring(generation)
  return hs
end

local stalled = condition("Stalled")
if stalled ~= nil and stalled.status == "True" then
  hs.status = "Degraded"
  hs.message = stalled.message or "Stalled"
  return hs
end

local ready = condition("Ready")
if ready ~= nil and ready.status == "True" then
  hs.status = "Healthy"
  hs.message = ready.message or "Ready"
  return hs
end

local reconciling = condition("Reconciling")
if ready == nil or (reconciling ~= nil and reconciling.status == "True") then
  hs.status = "Progressing"
  if reconciling ~= nil and reconciling.message ~= nil then
    hs.message = reconciling.message
  else
    hs.message = "Waiting for the operator"
  end
  return hs
end

hs.status = "Degraded"
hs.message = ready.message or "Not ready"
return hs
