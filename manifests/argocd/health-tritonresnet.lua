-- Argo CD health check for tritonresnet.io/TritonResNet.
-- Reads what the operator writes (kstatus conventions): Ready, Reconciling,
-- Stalled and Degraded conditions, status.observedGeneration and status.phase.
local hs = {}

local function conditions_by_type(status)
  local found = {}
  if status ~= nil and status.conditions ~= nil then
    for _, condition in ipairs(status.conditions) do
      found[condition.type] = condition
    end
  end
  return found
end

local function is_true(condition)
  return condition ~= nil and condition.status == "True"
end

local function message_of(condition, fallback)
  if condition ~= nil and condition.message ~= nil and condition.message ~= "" then
    return condition.message
  end
  return fallback
end

if obj.status == nil then
  hs.status = "Progressing"
  hs.message = "Waiting for the operator to report status"
  return hs
end

local generation = obj.metadata.generation
local observed = obj.status.observedGeneration
local conditions = conditions_by_type(obj.status)

-- Conditions about an older spec say nothing about the one in Git.
if observed == nil or (generation ~= nil and observed < generation) then
  hs.status = "Progressing"
  hs.message = "Waiting for the operator to observe generation " .. tostring(generation)
  return hs
end

if obj.status.phase == "Failed" or is_true(conditions["Stalled"]) then
  hs.status = "Degraded"
  hs.message = message_of(conditions["Stalled"], message_of(conditions["Ready"], "Failed"))
  return hs
end

if is_true(conditions["Degraded"]) then
  hs.status = "Degraded"
  hs.message = message_of(conditions["Degraded"], "Degraded")
  return hs
end

if is_true(conditions["Reconciling"]) then
  hs.status = "Progressing"
  hs.message = message_of(conditions["Reconciling"], "Reconciling")
  return hs
end

local ready = conditions["Ready"]
if is_true(ready) and (ready.observedGeneration == nil or ready.observedGeneration == generation) then
  hs.status = "Healthy"
  hs.message = message_of(ready, "Ready")
  return hs
end

hs.status = "Progressing"
hs.message = message_of(ready, "Waiting for Ready")
return hs
