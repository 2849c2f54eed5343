-- Argo CD health for modeldeploy.io/ModelDeployment (Lua 5.1, as Argo CD runs it).
local hs = { status = "Progressing", message = "Waiting for the operator" }
if obj.status == nil then
  return hs
end
local st = obj.status
local generation = obj.metadata and obj.metadata.generation
if generation ~= nil and (st.observedGeneration == nil or st.observedGeneration < generation) then
  hs.message = "The operator has not yet observed the latest spec"
  return hs
end
local message = st.message or ""
if st.conditions ~= nil then
  for _, c in ipairs(st.conditions) do
    if c.type == "Ready" and c.status == "False" and c.reason == "InvalidSpec" then
      hs.status = "Degraded"
      hs.message = c.message or "Invalid spec"
      return hs
    end
  end
end
local phase = st.phase
if phase == "Stable" then
  hs.status = "Healthy"
elseif phase == "Paused" then
  hs.status = "Suspended"
elseif phase == "RolledBack" or phase == "Failed" then
  hs.status = "Degraded"
else
  hs.status = "Progressing"
end
if message ~= "" then
  hs.message = message
else
  hs.message = phase or "Unknown"
end
return hs
