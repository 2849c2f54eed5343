-- Argo CD resource actions for modeldeploy.io/ModelDeployment (Lua 5.1):
-- which ones the object's state allows. Each action only asks: it writes
-- the request annotation that `kubectl modeldeploy` writes, and the operator
-- carries it out once (or says in an event why it cannot).
local actions = {}
local st = obj.status or {}
local rolling = st.canary ~= nil
actions["promote"] = {["disabled"] = not rolling}
actions["promote-full"] = {["disabled"] = not rolling}
actions["pause"] = {["disabled"] = not rolling or st.phase == "Paused"}
actions["resume"] = {["disabled"] = st.phase ~= "Paused"}
actions["abort"] = {["disabled"] = not rolling}
actions["retry"] = {["disabled"] = st.phase ~= "RolledBack"}
return actions
