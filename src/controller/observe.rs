//! Turn owned ControllerRevisions and Deployments into what the rollout
//! decision needs to know.

use std::sync::Arc;

use k8s_openapi::api::apps::v1::{ControllerRevision, Deployment};
use kube::ResourceExt;

use crate::api::labels;
use crate::resources::{stored_template, template_image};
use crate::rollout::{Observed, ObservedRevision};

/// Every known revision: those with a stored template (a ControllerRevision),
/// with or without a Deployment, and Deployments made before revisions were
/// stored (adopted on the next apply).
pub fn revisions(deployments: &[Arc<Deployment>], stored: &[Arc<ControllerRevision>]) -> Observed {
    let mut observed: Observed = stored
        .iter()
        .filter_map(|cr| {
            let hash = cr.labels().get(labels::HASH)?.clone();
            let image = stored_template(cr)
                .ok()
                .and_then(|t| template_image(&t).map(str::to_string))
                .unwrap_or_default();
            Some((
                hash,
                ObservedRevision {
                    revision: cr.revision,
                    version: cr
                        .labels()
                        .get(labels::VERSION)
                        .cloned()
                        .unwrap_or_default(),
                    image,
                    // No Deployment (yet): nothing runs.
                    replicas: 0,
                    ..Default::default()
                },
            ))
        })
        .collect();
    for d in deployments {
        let l = d.labels();
        let Some(hash) = l.get(labels::HASH) else {
            continue;
        };
        let entry = match observed.get_mut(hash) {
            Some(known) => known,
            None => {
                let Some(revision) = l.get(labels::REVISION).and_then(|r| r.parse().ok()) else {
                    continue;
                };
                observed.entry(hash.clone()).or_insert(ObservedRevision {
                    revision,
                    version: l.get(labels::VERSION).cloned().unwrap_or_default(),
                    ..Default::default()
                })
            }
        };
        size_of(d, entry);
    }
    observed
}

fn size_of(d: &Deployment, o: &mut ObservedRevision) {
    let status = d.status.as_ref();
    let generation = d.metadata.generation.unwrap_or(0);
    o.deadline_exceeded = status
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| {
            cs.iter().any(|c| {
                c.type_ == "Progressing"
                    && c.status == "False"
                    && c.reason.as_deref() == Some("ProgressDeadlineExceeded")
            })
        });
    o.replicas = d.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1);
    o.available_replicas = status.and_then(|s| s.available_replicas).unwrap_or(0);
    o.up_to_date = status
        .and_then(|s| s.observed_generation)
        .is_some_and(|g| g >= generation);
}
