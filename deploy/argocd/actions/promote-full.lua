-- Argo CD action "promote-full": skip the remaining steps and analysis and take over now, asked through the request annotation
-- exactly as `kubectl modeldeploy promote --full` asks.
if obj.metadata.annotations == nil then
  obj.metadata.annotations = {}
end
local id = "argocd-promote-full-" .. os.time()
obj.metadata.annotations["modeldeploy.io/request"] = '{"id":"' .. id .. '","action":"promoteFull"}'
return obj
