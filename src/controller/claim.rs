//! The children named like their ModelDeployment (its Service, disruption
//! budget and NetworkPolicy) are applied with `force`: applied over an object
//! of that name that someone else made, they would take it over, and delete
//! it with the field. Before the first apply, a name already taken is refused
//! as InvalidSpec naming the object, and nothing is touched.

use super::*;

/// How soon an object refused for a taken name looks again: the other
/// object is not watched, so its removal wakes nothing.
pub(super) const NAME_TAKEN_RECHECK: Duration = Duration::from_secs(15);

/// The first child named like `md` that the spec wants, that the operator's
/// caches do not hold, and that exists without being this ModelDeployment's.
pub(super) async fn name_taken(
    md: &ModelDeployment,
    ctx: &Context,
    valid: &crate::api::ValidSpec,
) -> Result<Option<crate::api::InvalidSpec>> {
    let ns = md
        .namespace()
        .ok_or(Error::MissingField("metadata.namespace"))?;
    let name = md.name_any();
    if ctx
        .services
        .get(&ObjectRef::new(&name).within(&ns))
        .is_none()
        && let Some(taken) = foreign::<Service>(md, ctx, &ns, "metadata.name").await?
    {
        return Ok(Some(taken));
    }
    if valid.budget.is_some()
        && ctx
            .budgets
            .get(&ObjectRef::new(&name).within(&ns))
            .is_none()
        && let Some(taken) = foreign::<PodDisruptionBudget>(md, ctx, &ns, "spec.disruption").await?
    {
        return Ok(Some(taken));
    }
    if valid.network_peers.is_some()
        && ctx
            .network_policies
            .get(&ObjectRef::new(&name).within(&ns))
            .is_none()
        && let Some(taken) = foreign::<NetworkPolicy>(md, ctx, &ns, "spec.networkPolicy").await?
    {
        return Ok(Some(taken));
    }
    Ok(None)
}

/// The object of kind `K` named like `md`, read live, when it is someone
/// else's: `field` is what the user changes to resolve it.
async fn foreign<K: Writable>(
    md: &ModelDeployment,
    ctx: &Context,
    ns: &str,
    field: &str,
) -> Result<Option<crate::api::InvalidSpec>> {
    let api: Api<K> = Api::namespaced(ctx.client.clone(), ns);
    let Some(found) = api.get_opt(&md.name_any()).await? else {
        return Ok(None);
    };
    if is_owned_by(&found, md) {
        return Ok(None);
    }
    let kind = K::kind(&());
    Ok(Some(crate::api::InvalidSpec {
        field: field.into(),
        message: format!(
            "a {kind} named {} already exists in {ns} and is not this ModelDeployment's: \
             it is left alone; rename or remove it (or this ModelDeployment)",
            md.name_any()
        ),
    }))
}
