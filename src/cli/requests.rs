//! Sending a request to the operator and waiting until it is carried out
//! (`status.lastRequest` names it).

use std::time::Duration;

use futures::StreamExt;
use kube::api::{Api, Patch, PatchParams};

use super::Error;
use super::watch::{Change, changes};
use crate::api::ModelDeployment;
use crate::rollout::requests::{ANNOTATION, Request};

/// Field manager of the plugin's writes: only the request annotation.
pub const PLUGIN_FIELD_MANAGER: &str = "kubectl-modeldeploy";

/// Send a request as an annotation under the plugin's own field manager, so
/// GitOps tools leave it alone and re-applying a manifest does not repeat it.
pub async fn send_request(
    api: &Api<ModelDeployment>,
    name: &str,
    request: &Request,
) -> Result<(), Error> {
    let patch =
        serde_json::json!({"metadata": {"annotations": {ANNOTATION: request.to_annotation()}}});
    let params = PatchParams {
        field_manager: Some(PLUGIN_FIELD_MANAGER.into()),
        ..Default::default()
    };
    api.patch(name, &params, &Patch::Merge(&patch))
        .await
        .map(|_| ())
        .map_err(|e| Error::kube(format!("send the request to {name}"), e))
}

/// Unique enough for one object's requests: time and process.
pub fn request_id() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    format!("{nanos:x}-{:x}", std::process::id())
}

/// The object once the operator has carried out request `id`, followed by
/// a watch (no polling); an error after `within`, or if it is deleted.
pub async fn wait_for_request(
    api: &Api<ModelDeployment>,
    name: &str,
    id: &str,
    within: Duration,
) -> Result<ModelDeployment, Error> {
    let carried_out = async {
        let mut stream = std::pin::pin!(changes(api.clone(), name));
        while let Some(change) = stream.next().await {
            match change {
                Ok(Change::Applied(md))
                    if md.status.as_ref().and_then(|s| s.last_request.as_deref()) == Some(id) =>
                {
                    return Ok(md);
                }
                Ok(Change::Applied(_)) | Err(_) => {}
                Ok(Change::Deleted) => {
                    return Err(Error::Request(format!(
                        "{name} was deleted before the operator carried out request {id}"
                    )));
                }
            }
        }
        Err(Error::Request(format!("the watch of {name} ended")))
    };
    tokio::time::timeout(within, carried_out)
        .await
        .unwrap_or_else(|_| {
            Err(Error::Request(format!(
                "{name}: the operator has not picked up request {id} within {}s; is it running?",
                within.as_secs()
            )))
        })
}
