-- Argo CD action "retry": try the rolled-back revision again, asked through the request annotation
-- exactly as `kubectl modeldeploy retry` asks.
if obj.metadata.annotations == nil then
  obj.metadata.annotations = {}
end
local id = "argocd-retry-" .. os.time()
obj.metadata.annotations["modeldeploy.io/request"] = '{"id":"' .. id .. '","action":"retry"}'
return obj
