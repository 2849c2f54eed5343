//! Status writes, and the statuses this operator wrote that the watch
//! cache has not delivered yet (read-your-own-writes; see [`WrittenStatus`]).
//!
//! Why this and not optimistic concurrency (a status write carrying the
//! `resourceVersion` the decision was made on, a 409 meaning "decide again"),
//! as Argo Rollouts and controller-runtime do: the next reconcile after our
//! own write usually still reads the cache *before* that write, so with
//! preconditions alone it would decide on the old status, be refused with
//! 409, and retry until the watch catches up — a burst of conflicts per
//! transition, and, worse, a transition decided again from stale input if
//! the write had gone through with a stale precondition. Remembering the
//! written status lets that reconcile decide on what we wrote, with no
//! extra request. It is kept because the zero-writes-at-rest and
//! each-transition-once tests pass with it on the real API server
//! (`tests/real_rollouts.rs`: the operator killed mid-rollout still completes
//! each step once and promotes once).

use super::*;

/// The status this operator wrote last, per object, until the watch cache
/// catches up: a reconcile that reads the object before its own status write
/// has arrived must not redo a transition (a second promotion, a second history entry).
#[derive(Clone)]
pub(super) struct WrittenStatus {
    /// Versions of the object that come before this write: the one it was
    /// decided on and those of this operator's earlier writes the cache may
    /// still show on its way to this one.
    older: Vec<String>,
    /// The version this write made.
    made: String,
    /// The watch has delivered `made` (or relisted since): from then on a
    /// version that is neither `made` nor in `older` came after it.
    delivered: bool,
    status: ModelDeploymentStatus,
}

impl WrittenStatus {
    /// Whether this write is newer than the cached version `seen`: one of
    /// ours before it, or another writer's that the watch delivered first.
    pub(super) fn ahead_of(&self, seen: &str) -> bool {
        seen != self.made && (self.older.iter().any(|o| o == seen) || !self.delivered)
    }
}

/// Note that the main watch delivered `version` of an object, or relisted.
pub(super) fn watch_delivered(
    ctx: &Context,
    key: Option<(&ObjectRef<ModelDeployment>, Option<&str>)>,
) {
    let mut written = lock(&ctx.written);
    match key {
        Some((key, version)) => {
            if let Some(w) = written.get_mut(key)
                && version == Some(w.made.as_str())
            {
                w.delivered = true;
            }
        }
        // A relist shows every object as it is now, after all our writes.
        None => written.values_mut().for_each(|w| w.delivered = true),
    }
}

/// Older versions remembered per object: enough for a cache several of our
/// own writes behind.
pub(super) const MAX_OLDER_VERSIONS: usize = 16;

/// The versions that come before a new write of ours: those before the
/// previous write, the previous write's own, and the one this write was
/// decided on; the newest [`MAX_OLDER_VERSIONS`] of them.
pub(super) fn versions_before<V: PartialEq>(
    mut known: Vec<V>,
    previous_write: Option<V>,
    seen: V,
) -> Vec<V> {
    known.extend(previous_write);
    known.push(seen);
    known.dedup();
    let excess = known.len().saturating_sub(MAX_OLDER_VERSIONS);
    known.drain(..excess);
    known
}

pub(super) fn set_phase_metric(
    ctx: &Context,
    md: &ModelDeployment,
    status: &ModelDeploymentStatus,
) {
    if let (Some(ns), Some(phase)) = (md.namespace(), status.phase) {
        ctx.metrics.set_phase(&ns, &md.name_any(), phase.as_str());
        ctx.metrics
            .canary_weight
            .with_label_values(&[&ns, &md.name_any()])
            .set(i64::from(status.canary.as_ref().map_or(0, |c| c.weight)));
    }
}

/// The object's status, or the one this operator wrote last if the watch cache
/// has not caught up with that write yet.
pub(super) fn current_status(md: &ModelDeployment, ctx: &Context) -> ModelDeploymentStatus {
    let key = ObjectRef::from_obj(md);
    let mut written = lock(&ctx.written);
    let seen = md.resource_version().unwrap_or_default();
    match written.get(&key) {
        // The cache is behind our write: ours, or another writer's version
        // the watch delivered before it.
        Some(w) if w.ahead_of(&seen) => w.status.clone(),
        // The cache holds our write, or something newer than it.
        Some(_) => {
            written.remove(&key);
            md.status.clone().unwrap_or_default()
        }
        None => md.status.clone().unwrap_or_default(),
    }
}

pub(super) async fn write_status(
    md: &ModelDeployment,
    ctx: &Context,
    status: &ModelDeploymentStatus,
) -> Result<()> {
    let ns = md
        .namespace()
        .ok_or(Error::MissingField("metadata.namespace"))?;
    let api: Api<ModelDeployment> = Api::namespaced(ctx.client.clone(), &ns);
    let patch = json!({
        "apiVersion": ModelDeployment::api_version(&()),
        "kind": ModelDeployment::kind(&()),
        "status": status,
    });
    let written = api
        .patch_status(
            &md.name_any(),
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(&patch),
        )
        .await?;
    if let (Some(before), Some(made)) = (md.resource_version(), written.resource_version())
        && made != before
    {
        let key = ObjectRef::from_obj(md);
        let mut all = lock(&ctx.written);
        // A write decided on a stale cache still knows the versions before
        // the previous write: the cache may show any of them next.
        let older = match all.remove(&key) {
            Some(previous) => versions_before(previous.older, Some(previous.made), before),
            None => versions_before(Vec::new(), None, before),
        };
        all.insert(
            key,
            WrittenStatus {
                older,
                made,
                delivered: false,
                status: status.clone(),
            },
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_status_write_stays_ahead_of_the_cache_until_the_watch_passes_it() {
        let mut w = WrittenStatus {
            older: vec!["6".into()],
            made: "8".into(),
            delivered: false,
            status: ModelDeploymentStatus::default(),
        };
        assert!(w.ahead_of("6"), "the version it was decided on");
        assert!(w.ahead_of("7"), "another writer's, delivered before ours");
        assert!(!w.ahead_of("8"), "the cache shows our write");
        w.delivered = true;
        assert!(w.ahead_of("6"));
        assert!(!w.ahead_of("9"), "another writer's, after ours");
    }
}
