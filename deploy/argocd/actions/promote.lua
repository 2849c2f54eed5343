-- Argo CD action "promote": finish the current step or pause and go on, asked through the request annotation
-- exactly as `kubectl modeldeploy promote` asks.
if obj.metadata.annotations == nil then
  obj.metadata.annotations = {}
end
local id = "argocd-promote-" .. os.time()
obj.metadata.annotations["modeldeploy.io/request"] = '{"id":"' .. id .. '","action":"promote"}'
return obj
