//! Turn owned Deployments into what the rollout decision needs to know.

use std::sync::Arc;

use k8s_openapi::api::apps::v1::Deployment;
use kube::ResourceExt;

use crate::api::labels;
use crate::resources::MODEL_CONTAINER;
use crate::rollout::{Observed, ObservedRevision};

pub fn revisions(owned: &[Arc<Deployment>]) -> Observed {
    owned
        .iter()
        .filter_map(|d| {
            let l = d.labels();
            let hash = l.get(labels::HASH)?.clone();
            let revision = l.get(labels::REVISION)?.parse().ok()?;
            Some((hash, revision_of(d, revision)))
        })
        .collect()
}

fn revision_of(d: &Deployment, revision: i64) -> ObservedRevision {
    let spec = d.spec.as_ref();
    let status = d.status.as_ref();
    let image = spec
        .and_then(|s| s.template.spec.as_ref())
        .and_then(|p| p.containers.iter().find(|c| c.name == MODEL_CONTAINER))
        .and_then(|c| c.image.clone())
        .unwrap_or_default();
    let generation = d.metadata.generation.unwrap_or(0);
    let deadline_exceeded = status
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| {
            cs.iter().any(|c| {
                c.type_ == "Progressing"
                    && c.status == "False"
                    && c.reason.as_deref() == Some("ProgressDeadlineExceeded")
            })
        });
    ObservedRevision {
        revision,
        version: d.labels().get(labels::VERSION).cloned().unwrap_or_default(),
        image,
        replicas: spec.and_then(|s| s.replicas).unwrap_or(1),
        available_replicas: status.and_then(|s| s.available_replicas).unwrap_or(0),
        up_to_date: status
            .and_then(|s| s.observed_generation)
            .is_some_and(|g| g >= generation),
        deadline_exceeded,
    }
}
