-- Argo CD action "abort": roll the canary back now, asked through the request annotation
-- exactly as `kubectl modeldeploy abort` asks.
if obj.metadata.annotations == nil then
  obj.metadata.annotations = {}
end
local id = "argocd-abort-" .. os.time()
obj.metadata.annotations["modeldeploy.io/request"] = '{"id":"' .. id .. '","action":"abort"}'
return obj
