//! Applying what the decision wants: revisions from their stored templates,
//! the router's children, pruning; server-side apply skipped when nothing changed.

use super::*;

/// What the operator writes: a namespaced object it can serialize and read.
pub(super) trait Writable:
    Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>
    + serde::Serialize
    + serde::de::DeserializeOwned
    + Clone
    + std::fmt::Debug
{
}

impl<K> Writable for K where
    K: Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>
        + serde::Serialize
        + serde::de::DeserializeOwned
        + Clone
        + std::fmt::Debug
{
}

/// The pod template of one revision, from its ControllerRevision. A revision
/// seen for the first time is rendered from the spec that names it and stored;
/// a Deployment made before templates were stored is adopted as it runs.
/// Nothing else ever renders a template, so a spec change never reaches the
/// pods of an existing revision.
pub(super) async fn revision_template(
    ctx: &Context,
    md: &ModelDeployment,
    valid: &crate::api::ValidSpec,
    w: &resources::RevisionWorkload,
    stored: &[Arc<ControllerRevision>],
    deployments: &[Arc<Deployment>],
) -> Result<Option<PodTemplateSpec>> {
    let name = resources::deployment_name(&md.name_any(), &w.hash);
    if let Some(cr) = stored.iter().find(|r| r.name_any() == name) {
        return match resources::stored_template(cr) {
            Ok(t) => Ok(Some(t)),
            Err(why) => {
                warn!(%why, "leaving the revision's Deployment as it is");
                Ok(None)
            }
        };
    }
    let ns = md
        .namespace()
        .ok_or(Error::MissingField("metadata.namespace"))?;
    // A running Deployment is adopted as it runs (made before templates were
    // stored, or its ControllerRevision deleted by hand), so nothing restarts.
    let running = if deployments.iter().any(|d| d.name_any() == name) {
        // The cache keeps no templates: read the running one.
        let api: Api<Deployment> = Api::namespaced(ctx.client.clone(), &ns);
        api.get_opt(&name)
            .await?
            .and_then(|d| d.spec)
            .map(|s| s.template)
    } else {
        None
    };
    let template = match running {
        // Operators before stored templates rewrote every revision's
        // Deployment from the current spec: a template running another
        // version than its revision's is not that revision, and storing it
        // would make a rollback serve the wrong version for good.
        Some(t) if resources::template_version(&t) == Some(w.version.as_str()) => t,
        Some(_) if w.hash != resources::revision_hash(&md.spec) => {
            warn!(
                revision = w.revision,
                version = %w.version,
                "the revision's Deployment runs another version (rewritten by an older operator); not stored, left as it is"
            );
            return Ok(None);
        }
        // What the spec names now: rendered from the spec.
        _ if w.hash == resources::revision_hash(&md.spec) => resources::pod_template(md, valid, w),
        _ => {
            // Neither stored nor running, and not what the spec names:
            // nothing to build it from (pruned by hand).
            warn!(revision = w.revision, "no stored template for the revision");
            return Ok(None);
        }
    };
    let api: Api<ControllerRevision> = Api::namespaced(ctx.client.clone(), &ns);
    let cr = resources::controller_revision(md, w, &template);
    match api.create(&PostParams::default(), &cr).await {
        Ok(_) => Ok(Some(template)),
        // Stored already and the cache has not seen it yet: use what is
        // stored, when it is ours.
        Err(kube::Error::Api(s)) if s.code == 409 => {
            let existing = api.get_opt(&name).await?;
            match existing.filter(|cr| is_owned_by(cr, md)) {
                Some(cr) => Ok(resources::stored_template(&cr).ok()),
                None => {
                    warn!(name = %name, "a ControllerRevision of that name belongs to something else; the revision cannot be stored");
                    Ok(None)
                }
            }
        }
        Err(e) => Err(e.into()),
    }
}

/// Delete the owned objects of one kind that are not kept.
pub(super) async fn delete_stale<K>(
    ctx: &Context,
    ns: &str,
    owned: &[Arc<K>],
    keep: &[String],
) -> Result<()>
where
    K: Writable,
{
    let api: Api<K> = Api::namespaced(ctx.client.clone(), ns);
    for stale in owned.iter().filter(|o| !keep.contains(&o.name_any())) {
        info!(kind = %K::kind(&K::DynamicType::default()), name = %stale.name_any(), "deleting a revision beyond the history limit");
        match api
            .delete(&stale.name_any(), &DeleteParams::background())
            .await
        {
            Ok(_) => {}
            Err(kube::Error::Api(s)) if s.code == 404 => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

/// The disruption budget the spec asks for, or none: one it made before is
/// deleted when the spec opts out.
pub(super) async fn keep_budget(
    md: &ModelDeployment,
    ctx: &Context,
    ns: &str,
    valid: &crate::api::ValidSpec,
) -> Result<()> {
    let current = ctx.budgets.get(&ObjectRef::new(&md.name_any()).within(ns));
    let desired = valid
        .budget
        .as_ref()
        .map(|budget| resources::disruption_budget(md, budget));
    keep_optional(
        md,
        ctx,
        ns,
        desired,
        current,
        "spec.disruption.budget is false",
    )
    .await
}

/// The NetworkPolicy `spec.networkPolicy` asks for, or none: one it made
/// before is deleted when the user removes the field.
pub(super) async fn keep_network_policy(
    md: &ModelDeployment,
    ctx: &Context,
    ns: &str,
    valid: &crate::api::ValidSpec,
) -> Result<()> {
    let current = ctx
        .network_policies
        .get(&ObjectRef::new(&md.name_any()).within(ns));
    let desired = valid
        .network_peers
        .as_ref()
        .map(|peers| resources::network_policy(md, peers, &ctx.operator_peer));
    keep_optional(md, ctx, ns, desired, current, "spec.networkPolicy is gone").await
}

/// An optional child: applied when desired; when not, the one this object
/// made before is deleted (`why` says which field opted out), and one of
/// anybody else's is left alone.
async fn keep_optional<K: Writable>(
    md: &ModelDeployment,
    ctx: &Context,
    ns: &str,
    desired: Option<K>,
    current: Option<Arc<K>>,
    why: &str,
) -> Result<()> {
    match (desired, current) {
        (Some(desired), current) => apply_if_changed(ctx, ns, desired, current.as_deref()).await,
        (None, Some(current)) if is_owned_by(current.as_ref(), md) => {
            info!(kind = %K::kind(&()), name = %current.name_any(), "deleting: {why}");
            let api: Api<K> = Api::namespaced(ctx.client.clone(), ns);
            match api
                .delete(&current.name_any(), &DeleteParams::background())
                .await
            {
                Ok(_) => Ok(()),
                Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
                Err(e) => Err(e.into()),
            }
        }
        (None, _) => Ok(()),
    }
}

/// The router's children beside the revisions' Deployments: Services from
/// the cache, routes read live (other controllers write them too).
pub(super) async fn route_traffic(
    md: &ModelDeployment,
    ctx: &Context,
    ns: &str,
    decision: &rollout::Decision,
) -> Result<()> {
    let Some(stable) = decision.status.stable.as_ref() else {
        return Ok(());
    };
    let router = crate::routers::for_spec(&md.spec);
    let selected_now = router.canary_service(&md.name_any()).and_then(|name| {
        let current = ctx.services.get(&ObjectRef::new(&name).within(ns))?;
        current
            .spec
            .as_ref()?
            .selector
            .as_ref()?
            .get(labels::HASH)
            .cloned()
    });
    let split = crate::routers::Split {
        stable_hash: &stable.hash,
        canary_hash: crate::routers::canary_service_hash(
            decision.status.canary.as_ref().map(|c| c.hash.as_str()),
            selected_now.as_deref(),
            &stable.hash,
        ),
        canary_weight: decision.canary_weight,
        mirror_percent: decision.status.canary.as_ref().map_or(0, |c| c.mirror),
    };
    for child in router.children(md, split) {
        let applied = match child {
            Child::Service(desired) => {
                let key = ObjectRef::new(&desired.name_any()).within(ns);
                apply_if_changed(ctx, ns, *desired, ctx.services.get(&key).as_deref()).await
            }
            Child::HttpRoute(desired) => apply_live(ctx, ns, *desired).await,
        };
        match applied {
            // A 404 on apply means the kind itself is unknown to the cluster.
            Err(Error::Kube(kube::Error::Api(s))) if s.code == 404 => {
                return Err(Error::RouterApiMissing(router.missing_api()));
            }
            other => other?,
        }
    }
    Ok(())
}

/// Apply a child that is read live instead of from a cache.
pub(super) async fn apply_live<K>(ctx: &Context, ns: &str, desired: K) -> Result<()>
where
    K: Writable,
{
    let api: Api<K> = Api::namespaced(ctx.client.clone(), ns);
    let current = api.get_opt(&desired.name_any()).await?;
    // Read live: nothing to remember about earlier applies.
    lock(&ctx.applied).remove(&(
        K::kind(&K::DynamicType::default()).to_string(),
        ns.to_string(),
        desired.name_any(),
    ));
    apply_if_changed(ctx, ns, desired, current.as_ref()).await
}

pub(super) fn is_owned_by<K: Resource>(d: &K, md: &ModelDeployment) -> bool {
    let uid = md.uid();
    d.owner_references()
        .iter()
        .any(|o| o.controller == Some(true) && Some(&o.uid) == uid.as_ref())
}

/// Server-side apply, skipped when the object already carries the same applied
/// hash (and, for Deployments, the same size): an object at rest is not written.
pub(super) async fn apply_if_changed<K>(
    ctx: &Context,
    ns: &str,
    desired: K,
    current: Option<&K>,
) -> Result<()>
where
    K: Writable,
{
    let hash = |o: &K| o.annotations().get(APPLIED_HASH).cloned();
    let name = desired.name_any();
    let key = (
        K::kind(&K::DynamicType::default()).to_string(),
        ns.to_string(),
        name.clone(),
    );
    let seen = current.and_then(|c| c.resource_version());
    {
        // Once the cache shows our last apply or anything after it, the cache
        // is the truth again (a child deleted since must be made again); and
        // no cache lags for minutes.
        let mut applied = lock(&ctx.applied);
        if applied
            .get(&key)
            .is_some_and(|a| !a.before.contains(&seen) || a.at.elapsed() > APPLIED_MEMORY)
        {
            applied.remove(&key);
        }
    }
    if let Some(current) = current
        && hash(current).is_some()
        && hash(current) == hash(&desired)
        && same_replicas(current, &desired)
    {
        return Ok(());
    }
    let content = AppliedContent {
        hash: hash(&desired).unwrap_or_default(),
        replicas: replicas_of(&desired),
    };
    if lock(&ctx.applied)
        .get(&key)
        .is_some_and(|a| a.covers(&content, seen.as_deref()))
    {
        // The cache has not caught up with our own write of this content yet.
        return Ok(());
    }
    let api: Api<K> = Api::namespaced(ctx.client.clone(), ns);
    let made = api
        .patch(
            &name,
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(&desired),
        )
        .await?
        .resource_version();
    let mut applied = lock(&ctx.applied);
    let previous = applied.remove(&key);
    if let Some(made) = made {
        applied.insert(key, Applied::after(previous, content, seen, made));
    }
    Ok(())
}

/// What this operator last applied to one child.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct AppliedContent {
    hash: String,
    replicas: Option<serde_json::Value>,
}

/// The last apply to one child and the versions of it that came before, so
/// a watch cache still showing one of those is known to lag behind that
/// apply (and is not answered with the same apply again), while a child that
/// someone else changed or deleted since is applied again.
#[derive(Debug, Clone)]
pub(super) struct Applied {
    content: AppliedContent,
    /// Versions before the apply; `None`: the child did not exist yet.
    before: Vec<Option<String>>,
    made: String,
    at: Instant,
}

/// How long an apply is remembered at most.
pub(super) const APPLIED_MEMORY: Duration = Duration::from_secs(60);

/// How long a child this operator created may be missing from the cache.
pub(super) const NEW_CHILD_GRACE: Duration = Duration::from_secs(5);

impl Applied {
    pub(super) fn after(
        previous: Option<Applied>,
        content: AppliedContent,
        seen: Option<String>,
        made: String,
    ) -> Self {
        let before = match previous {
            Some(p) => versions_before(p.before, Some(Some(p.made)), seen),
            None => versions_before(Vec::new(), None, seen),
        };
        Self {
            content,
            before,
            made,
            at: Instant::now(),
        }
    }

    pub(super) fn covers(&self, content: &AppliedContent, seen: Option<&str>) -> bool {
        // A cache shows a new child within moments; still nothing after that
        // means it was deleted since, and it is made again.
        let absence_is_lag = seen.is_some() || self.at.elapsed() < NEW_CHILD_GRACE;
        self.content == *content
            && absence_is_lag
            && self.before.iter().any(|b| b.as_deref() == seen)
    }
}

pub(super) fn replicas_of<K: serde::Serialize>(o: &K) -> Option<serde_json::Value> {
    serde_json::to_value(o)
        .ok()
        .and_then(|v| v.pointer("/spec/replicas").cloned())
}

/// Someone may scale a revision's Deployment by hand; the operator owns its size.
pub(super) fn same_replicas<K: serde::Serialize>(current: &K, desired: &K) -> bool {
    replicas_of(current) == replicas_of(desired)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lagging_cache_is_not_answered_with_the_same_apply() {
        let content = |hash: &str, replicas: i64| AppliedContent {
            hash: hash.into(),
            replicas: Some(serde_json::json!(replicas)),
        };
        // Created (the cache had nothing), then scaled: the cache may show
        // nothing, or the created version, until it shows the scaled one.
        let first = Applied::after(None, content("a", 2), None, "10".into());
        assert!(first.covers(&content("a", 2), None));
        let second = Applied::after(Some(first), content("a", 3), Some("10".into()), "11".into());
        assert!(second.covers(&content("a", 3), None));
        assert!(second.covers(&content("a", 3), Some("10")));
        // Different content, or a version that is not ours: apply.
        assert!(!second.covers(&content("a", 2), Some("10")));
        assert!(!second.covers(&content("b", 3), Some("10")));
        assert!(
            !second.covers(&content("a", 3), Some("12")),
            "changed by someone else"
        );
        // The cache at our own write compares as usual (not covered here).
        assert!(!second.covers(&content("a", 3), Some("11")));
    }
}
