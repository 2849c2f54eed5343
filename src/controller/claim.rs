//! The children named after their ModelDeployment (its Service, disruption
//! budget and NetworkPolicy, and the router's: the gatewayAPI router's
//! `<name>-stable` and `<name>-canary` Services and `<name>` HTTPRoute) are
//! applied with `force`: applied over an object of that name that someone
//! else made, they would take it over, and delete it with the field. Before
//! the first apply, a name already taken is refused as InvalidSpec naming the
//! object, and nothing is touched.
//!
//! The revisions' Deployments and ControllerRevisions carry a hash of the
//! spec in their names; a ControllerRevision of someone else's is never
//! written over (it is created, and a 409 is read back).

use std::collections::HashSet;

use super::*;
use crate::routers::gateway_api::HTTPRoute;

/// How soon an object refused for a taken name looks again: the other
/// object is not watched, so its removal wakes nothing.
pub(super) const NAME_TAKEN_RECHECK: Duration = Duration::from_secs(15);

/// The uncached children (read live, not watched) whose names were found
/// free or this object's, per object: not asked again in this life.
#[derive(Debug, Default)]
pub(super) struct Claimed {
    uid: String,
    names: HashSet<String>,
}

/// The first child named after `md` that the spec wants and that exists
/// without being this ModelDeployment's.
pub(super) async fn name_taken(
    md: &ModelDeployment,
    ctx: &Context,
    valid: &crate::api::ValidSpec,
) -> Result<Option<crate::api::InvalidSpec>> {
    let ns = md
        .namespace()
        .ok_or(Error::MissingField("metadata.namespace"))?;
    let name = md.name_any();
    let router_children = crate::routers::for_spec(&md.spec).children(md, NAMES_ONLY);
    let mut services = vec![name.clone()];
    let mut routes = Vec::new();
    for child in &router_children {
        match child {
            Child::Service(s) => services.push(s.name_any()),
            Child::HttpRoute(r) => routes.push(r.name_any()),
        }
    }
    for service in &services {
        if let Some(taken) =
            unless_ours(md, ctx, &ctx.services, &ns, service, "metadata.name").await?
        {
            return Ok(Some(taken));
        }
    }
    if valid.budget.is_some()
        && let Some(taken) =
            unless_ours(md, ctx, &ctx.budgets, &ns, &name, "spec.disruption").await?
    {
        return Ok(Some(taken));
    }
    if valid.network_peers.is_some()
        && let Some(taken) = unless_ours(
            md,
            ctx,
            &ctx.network_policies,
            &ns,
            &name,
            "spec.networkPolicy",
        )
        .await?
    {
        return Ok(Some(taken));
    }
    for route in &routes {
        let key = ObjectRef::from_obj(md);
        let uid = md.uid().unwrap_or_default();
        let known = format!("HTTPRoute/{route}");
        if lock(&ctx.claimed)
            .get(&key)
            .is_some_and(|c| c.uid == uid && c.names.contains(&known))
        {
            continue;
        }
        if let Some(taken) = foreign::<HTTPRoute>(md, ctx, &ns, route, "metadata.name").await? {
            return Ok(Some(taken));
        }
        let mut claimed = lock(&ctx.claimed);
        let entry = claimed.entry(key).or_default();
        if entry.uid != uid {
            *entry = Claimed {
                uid,
                names: HashSet::new(),
            };
        }
        entry.names.insert(known);
    }
    Ok(None)
}

/// Renders the router's children for their names only.
const NAMES_ONLY: crate::routers::Split<'static> = crate::routers::Split {
    stable_hash: "",
    canary_hash: "",
    canary_weight: 0,
    mirror_percent: 0,
};

/// The child of kind `K` named `name` when it is not `md`'s: from the cache
/// when it holds the name, else read live.
async fn unless_ours<K: Writable>(
    md: &ModelDeployment,
    ctx: &Context,
    cache: &Store<K>,
    ns: &str,
    name: &str,
    field: &str,
) -> Result<Option<crate::api::InvalidSpec>> {
    match cache.get(&ObjectRef::new(name).within(ns)) {
        Some(cached) => Ok((!ours(&*cached, md)).then(|| taken_message::<K>(ns, name, field))),
        None => foreign::<K>(md, ctx, ns, name, field).await,
    }
}

/// Whether `md` may apply over `found`: it is controlled by `md`, or by an
/// earlier ModelDeployment of the same name (deleted and made again while
/// the garbage collector had not removed it yet), or by nothing but labelled
/// as this model's by this operator (orphaned by `kubectl delete
/// --cascade=orphan` and re-applied). Anything controlled by something else
/// (`x-stable` is both the gatewayAPI Service of `x` and the Service of a
/// ModelDeployment `x-stable`), or not made by this operator for this model,
/// is someone else's.
fn ours<K: Resource>(found: &K, md: &ModelDeployment) -> bool {
    let name = md.name_any();
    let controller = found
        .owner_references()
        .iter()
        .find(|o| o.controller == Some(true));
    match controller {
        Some(c) => {
            c.kind == ModelDeployment::kind(&())
                && c.api_version.split('/').next() == Some(ModelDeployment::group(&()).as_ref())
                && c.name == name
        }
        None => {
            let label = |key: &str| found.labels().get(key).map(String::as_str);
            label(labels::MANAGED_BY) == Some(crate::api::OPERATOR_NAME)
                && label(labels::NAME) == Some(name.as_str())
        }
    }
}

fn taken_message<K: Writable>(ns: &str, name: &str, field: &str) -> crate::api::InvalidSpec {
    let kind = K::kind(&());
    crate::api::InvalidSpec {
        field: field.into(),
        message: format!(
            "a {kind} named {name} already exists in {ns} and is not this ModelDeployment's: \
             it is left alone; rename or remove it (or this ModelDeployment)"
        ),
    }
}

/// The object of kind `K` named `name`, read live, when it is someone
/// else's: `field` is what the user changes to resolve it.
async fn foreign<K: Writable>(
    md: &ModelDeployment,
    ctx: &Context,
    ns: &str,
    name: &str,
    field: &str,
) -> Result<Option<crate::api::InvalidSpec>> {
    let api: Api<K> = Api::namespaced(ctx.client.clone(), ns);
    let found = match api.get_opt(name).await {
        Ok(Some(found)) => found,
        Ok(None) => return Ok(None),
        // The kind is unknown to the cluster (no Gateway API): nothing can
        // hold the name; applying says what is missing.
        Err(kube::Error::Api(s)) if s.code == 404 => return Ok(None),
        Err(e) => return Err(e.into()),
    };
    Ok((!ours(&found, md)).then(|| taken_message::<K>(ns, name, field)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const OURS: &str = "modeldeploy.io/v1alpha1";

    fn md() -> ModelDeployment {
        serde_json::from_value(json!({
            "apiVersion": "modeldeploy.io/v1alpha1", "kind": "ModelDeployment",
            "metadata": {"name": "x", "namespace": "ml", "uid": "uid-now"},
            "spec": {"model": {"version": "1", "image": "i:1"},
                     "resources": {"requests": {"cpu": "1"}, "limits": {"cpu": "1"}}}
        }))
        .unwrap()
    }

    /// A Service controlled by `owner` (api version, kind, name, uid).
    fn service(owner: Option<(&str, &str, &str, &str)>, labels: serde_json::Value) -> Service {
        let owners: Vec<_> = owner
            .into_iter()
            .map(|(api_version, kind, name, uid)| {
                json!({"apiVersion": api_version, "kind": kind, "name": name, "uid": uid,
                       "controller": true})
            })
            .collect();
        serde_json::from_value(json!({
            "metadata": {"name": "x-stable", "namespace": "ml", "labels": labels,
                         "ownerReferences": owners}
        }))
        .unwrap()
    }

    #[test]
    fn a_child_is_ours_when_this_model_or_an_earlier_one_of_its_name_made_it() {
        let mine = json!({labels::MANAGED_BY: "modeldeploy", labels::NAME: "x"});
        let md = md();
        assert!(ours(
            &service(Some((OURS, "ModelDeployment", "x", "uid-now")), json!({})),
            &md
        ));
        // Deleted and made again: the old one's children are on their way out.
        assert!(ours(
            &service(
                Some((OURS, "ModelDeployment", "x", "uid-before")),
                json!({})
            ),
            &md
        ));
        // Orphaned (`--cascade=orphan`), then applied again.
        assert!(ours(&service(None, mine.clone()), &md));
    }

    #[test]
    fn a_child_of_another_controller_or_without_our_labels_is_someone_elses() {
        let md = md();
        assert!(!ours(
            &service(
                Some((OURS, "ModelDeployment", "x-stable", "uid-2")),
                json!({})
            ),
            &md
        ));
        let mine = json!({labels::MANAGED_BY: "modeldeploy", labels::NAME: "x"});
        assert!(!ours(
            &service(Some(("apps/v1", "Deployment", "x", "uid-3")), mine),
            &md
        ));
        assert!(!ours(&service(None, json!({"team": "web"})), &md));
        let other_model = json!({labels::MANAGED_BY: "modeldeploy", labels::NAME: "y"});
        assert!(!ours(&service(None, other_model), &md));
        // Another vendor's kind of the same name.
        assert!(!ours(
            &service(
                Some(("other.example/v1", "ModelDeployment", "x", "uid-4")),
                json!({})
            ),
            &md
        ));
    }
}
