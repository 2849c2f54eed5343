-- Argo CD action "resume": end a pause, asked through the request annotation
-- exactly as `kubectl modeldeploy resume` asks.
if obj.metadata.annotations == nil then
  obj.metadata.annotations = {}
end
local id = "argocd-resume-" .. os.time()
obj.metadata.annotations["modeldeploy.io/request"] = '{"id":"' .. id .. '","action":"resume"}'
return obj
