-- Argo CD action "pause": pause the rollout, asked through the request annotation
-- exactly as `kubectl modeldeploy pause` asks.
if obj.metadata.annotations == nil then
  obj.metadata.annotations = {}
end
local id = "argocd-pause-" .. os.time()
obj.metadata.annotations["modeldeploy.io/request"] = '{"id":"' .. id .. '","action":"pause"}'
return obj
