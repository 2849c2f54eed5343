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

/// The child of kind `K` named `name` when it is not `md`'s. One in the
/// cache was made by this operator: it is another ModelDeployment's if one
/// of another name controls it (`x-stable` is both the gatewayAPI Service of
/// `x` and the Service of a ModelDeployment `x-stable`); one of this name is
/// an earlier object of the name, on its way out with its owner. One not in
/// the cache is read live.
async fn unless_ours<K: Writable>(
    md: &ModelDeployment,
    ctx: &Context,
    cache: &Store<K>,
    ns: &str,
    name: &str,
    field: &str,
) -> Result<Option<crate::api::InvalidSpec>> {
    let Some(cached) = cache.get(&ObjectRef::new(name).within(ns)) else {
        return foreign::<K>(md, ctx, ns, name, field).await;
    };
    let other_model = cached.owner_references().iter().any(|o| {
        o.controller == Some(true)
            && o.kind == ModelDeployment::kind(&())
            && o.name != md.name_any()
    });
    Ok(other_model.then(|| taken_message::<K>(ns, name, field)))
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
    if is_owned_by(&found, md) {
        return Ok(None);
    }
    Ok(Some(taken_message::<K>(ns, name, field)))
}
