//! The objects a ModelDeployment wants to exist, built from the spec and the
//! rollout decision. No I/O: the controller applies what this returns.

mod budget;
mod network_policy;

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::{ControllerRevision, Deployment, DeploymentSpec};
use k8s_openapi::api::core::v1::{
    ConfigMap, Container, ContainerPort, EnvVar, Pod, PodSpec, PodTemplateSpec, Probe,
    ResourceRequirements, Service, ServicePort, ServiceSpec, TCPSocketAction,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use k8s_openapi::apimachinery::pkg::runtime::RawExtension;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::{Resource, ResourceExt};
use sha2::{Digest, Sha256};

use crate::api::{ModelDeployment, ModelDeploymentSpec, ValidSpec, labels};
pub use budget::disruption_budget;
pub use network_policy::{NAMESPACE_NAME_LABEL, OperatorPeer, network_policy};

pub mod gate_job;

/// Name of the serving container; also how the operator finds it in pod status.
pub const MODEL_CONTAINER: &str = "model";
/// Annotation holding the hash of what the operator last applied to an object,
/// so an unchanged object is not written again.
pub const APPLIED_HASH: &str = "modeldeploy.io/applied-hash";
const MANAGER_NAME: &str = crate::api::OPERATOR_NAME;

/// Identifies a revision by what its pods run: the model, the resources, the
/// pod overrides and a separate metrics port (a container port of the pod).
/// Replicas, the rest of the metrics settings and rollout settings do not make
/// a new revision.
pub fn revision_hash(spec: &ModelDeploymentSpec) -> String {
    let mut pod_relevant = serde_json::json!({
        "model": spec.model,
        "resources": spec.resources,
        "template": spec.template,
    });
    // Only when set, so revisions made before it counted keep their hash.
    if let Some(port) = separate_metrics_port(spec) {
        pod_relevant["metricsPort"] = serde_json::json!(port);
    }
    short_hash(&pod_relevant)
}

/// The metrics port when the pod exposes it apart from the model port.
fn separate_metrics_port(spec: &ModelDeploymentSpec) -> Option<i32> {
    spec.metrics.port.filter(|p| *p != spec.model.port)
}

fn short_hash(value: &serde_json::Value) -> String {
    let digest = Sha256::digest(value.to_string().as_bytes());
    digest[..5].iter().map(|b| format!("{b:02x}")).collect()
}

/// Name of the Deployment serving one revision.
pub fn deployment_name(md_name: &str, hash: &str) -> String {
    format!("{md_name}-{hash}")
}

/// One revision's Deployment as the rollout wants it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RevisionWorkload {
    pub hash: String,
    pub revision: i64,
    pub version: String,
    pub replicas: i32,
}

/// Labels shared by every object of one ModelDeployment.
pub(crate) fn base_labels(md: &ModelDeployment) -> BTreeMap<String, String> {
    BTreeMap::from([
        (labels::NAME.to_string(), md.name_any()),
        (labels::MANAGED_BY.to_string(), MANAGER_NAME.to_string()),
    ])
}

fn revision_labels(md: &ModelDeployment, w: &RevisionWorkload) -> BTreeMap<String, String> {
    let mut l = base_labels(md);
    l.insert(labels::HASH.into(), w.hash.clone());
    l.insert(labels::REVISION.into(), w.revision.to_string());
    l.insert(labels::VERSION.into(), w.version.clone());
    l
}

fn selector_labels(md: &ModelDeployment, hash: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        (labels::NAME.to_string(), md.name_any()),
        (labels::HASH.to_string(), hash.to_string()),
    ])
}

pub(crate) fn owned_meta(
    md: &ModelDeployment,
    name: String,
    labels: BTreeMap<String, String>,
) -> ObjectMeta {
    ObjectMeta {
        name: Some(name),
        namespace: md.namespace(),
        labels: Some(labels),
        owner_references: md.controller_owner_ref(&()).map(|o| vec![o]),
        ..Default::default()
    }
}

/// The ConfigMap holding a captured drift reference (`drift.reference.fromStable`),
/// owned by the ModelDeployment and annotated with the revision it describes.
pub fn captured_drift_reference(
    md: &ModelDeployment,
    name: &str,
    key: &str,
    revision_annotation: &str,
    revision: &str,
    document: &str,
) -> ConfigMap {
    let mut meta = owned_meta(md, name.to_string(), base_labels(md));
    meta.annotations = Some(BTreeMap::from([(
        revision_annotation.to_string(),
        revision.to_string(),
    )]));
    ConfigMap {
        metadata: meta,
        data: Some(BTreeMap::from([(key.to_string(), document.to_string())])),
        ..Default::default()
    }
}

/// Stamp the hash of an object's desired content on it (see [`APPLIED_HASH`]).
pub(crate) fn stamp<T: serde::Serialize + Resource>(mut obj: T) -> T {
    let hash = short_hash(&serde_json::to_value(&obj).unwrap_or_default());
    obj.meta_mut()
        .annotations
        .get_or_insert_with(BTreeMap::new)
        .insert(APPLIED_HASH.into(), hash);
    obj
}

/// The pod template of a new revision, rendered once from the spec that
/// names it. It is stored in the revision's ControllerRevision and never
/// rendered again: later spec changes and newer operator versions that render
/// differently leave a running revision's pods alone.
pub fn pod_template(
    md: &ModelDeployment,
    valid: &ValidSpec,
    w: &RevisionWorkload,
) -> PodTemplateSpec {
    let spec = &md.spec;
    let template = spec.template.clone().unwrap_or_default();
    let default_readiness = Probe {
        tcp_socket: Some(TCPSocketAction {
            port: IntOrString::String("http".into()),
            host: None,
        }),
        period_seconds: Some(5),
        failure_threshold: Some(3),
        ..Default::default()
    };

    let container = Container {
        name: MODEL_CONTAINER.into(),
        image: Some(spec.model.image.clone()),
        command: (!spec.model.command.is_empty()).then(|| spec.model.command.clone()),
        args: (!spec.model.args.is_empty()).then(|| spec.model.args.clone()),
        ports: Some(container_ports(spec)),
        env: Some(model_env(spec)),
        resources: Some(ResourceRequirements {
            requests: Some(spec.resources.requests.clone()),
            limits: Some(spec.resources.limits.clone()),
            ..Default::default()
        }),
        readiness_probe: Some(
            template
                .readiness_probe
                .clone()
                .unwrap_or(default_readiness),
        ),
        liveness_probe: template.liveness_probe.clone(),
        startup_probe: template.startup_probe.clone(),
        volume_mounts: non_empty(valid.pod.volume_mounts.clone()),
        security_context: valid.pod.security_context.clone(),
        ..Default::default()
    };

    let mut pod_labels = template.labels.clone();
    pod_labels.extend(revision_labels(md, w));

    PodTemplateSpec {
        metadata: Some(ObjectMeta {
            labels: Some(pod_labels),
            annotations: (!template.annotations.is_empty()).then(|| template.annotations.clone()),
            ..Default::default()
        }),
        spec: Some(PodSpec {
            containers: vec![container],
            service_account_name: template.service_account_name.clone(),
            node_selector: (!template.node_selector.is_empty())
                .then(|| template.node_selector.clone()),
            tolerations: non_empty(template.tolerations.clone()),
            affinity: valid.pod.affinity.clone(),
            priority_class_name: template.priority_class_name.clone(),
            runtime_class_name: template.runtime_class_name.clone(),
            termination_grace_period_seconds: template.termination_grace_period_seconds,
            image_pull_secrets: non_empty(template.image_pull_secrets.clone()),
            volumes: non_empty(valid.pod.volumes.clone()),
            topology_spread_constraints: non_empty(valid.pod.topology_spread_constraints.clone()),
            security_context: valid.pod.pod_security_context.clone(),
            ..Default::default()
        }),
    }
}

/// The model port, and a separate metrics port when there is one.
fn container_ports(spec: &ModelDeploymentSpec) -> Vec<ContainerPort> {
    let port = |name: &str, container_port: i32| ContainerPort {
        name: Some(name.into()),
        container_port,
        protocol: Some("TCP".into()),
        ..Default::default()
    };
    let mut ports = vec![port("http", spec.model.port)];
    ports.extend(separate_metrics_port(spec).map(|p| port("metrics", p)));
    ports
}

/// Where a pod's metrics are read: the port its model container declares
/// as `metrics`, else as `http` (see [`container_ports`]). Read from the pod,
/// not the current spec, so each revision's pods are asked on the port their
/// own template declared, and never on one the pod does not declare.
pub fn declared_metrics_port(pod: &Pod) -> Result<u16, String> {
    let name = pod.metadata.name.as_deref().unwrap_or_default();
    let ports = pod
        .spec
        .as_ref()
        .and_then(|s| s.containers.iter().find(|c| c.name == MODEL_CONTAINER))
        .and_then(|c| c.ports.as_deref())
        .unwrap_or_default();
    let named = |wanted: &str| ports.iter().find(|p| p.name.as_deref() == Some(wanted));
    let port = named("metrics").or_else(|| named("http")).ok_or_else(|| {
        format!(
            "pod {name} declares no `metrics` or `http` port on its `{MODEL_CONTAINER}` \
             container: not scraped"
        )
    })?;
    u16::try_from(port.container_port).map_err(|_| {
        format!(
            "pod {name} declares port {}: out of range",
            port.container_port
        )
    })
}

/// Only what [`declared_metrics_port`] reads of a pod's spec: the model
/// container's name and ports (the watch cache keeps no more).
pub fn keep_declared_ports(spec: &mut Option<PodSpec>) {
    let model = spec
        .take()
        .and_then(|s| s.containers.into_iter().find(|c| c.name == MODEL_CONTAINER));
    *spec = model.map(|c| PodSpec {
        containers: vec![Container {
            name: c.name,
            ports: c.ports,
            ..Default::default()
        }],
        ..Default::default()
    });
}

/// `MODEL_VERSION`, `MODEL_URI` when set, then the spec's own env.
fn model_env(spec: &ModelDeploymentSpec) -> Vec<EnvVar> {
    let var = |name: &str, value: &str| EnvVar {
        name: name.into(),
        value: Some(value.into()),
        ..Default::default()
    };
    let mut env = vec![var("MODEL_VERSION", &spec.model.version)];
    env.extend(
        spec.model
            .storage_uri
            .iter()
            .map(|uri| var("MODEL_URI", uri)),
    );
    env.extend(spec.model.env.iter().cloned());
    env
}

/// The Deployment of one revision, built from that revision's stored pod
/// template: only its size (and the rollout's progress deadline) follow the
/// current spec.
pub fn deployment(
    md: &ModelDeployment,
    template: &PodTemplateSpec,
    w: &RevisionWorkload,
    progress_deadline: std::time::Duration,
) -> Deployment {
    stamp(Deployment {
        metadata: owned_meta(
            md,
            deployment_name(&md.name_any(), &w.hash),
            revision_labels(md, w),
        ),
        spec: Some(DeploymentSpec {
            replicas: Some(w.replicas),
            selector: LabelSelector {
                match_labels: Some(selector_labels(md, &w.hash)),
                ..Default::default()
            },
            template: template.clone(),
            // One pod template per Deployment: older ReplicaSets are never needed.
            revision_history_limit: Some(1),
            progress_deadline_seconds: i32::try_from(progress_deadline.as_secs()).ok(),
            ..Default::default()
        }),
        status: None,
    })
}

/// Key of the stored pod template in a revision's ControllerRevision `data`.
const STORED_TEMPLATE: &str = "template";

/// The ControllerRevision that keeps one revision's rendered pod template,
/// as StatefulSets and DaemonSets keep their history. Created once, never
/// updated (the API server refuses changes to `data` anyway).
pub fn controller_revision(
    md: &ModelDeployment,
    w: &RevisionWorkload,
    template: &PodTemplateSpec,
) -> ControllerRevision {
    ControllerRevision {
        metadata: owned_meta(
            md,
            deployment_name(&md.name_any(), &w.hash),
            revision_labels(md, w),
        ),
        revision: w.revision,
        data: Some(RawExtension(serde_json::json!({
            STORED_TEMPLATE: template,
        }))),
    }
}

/// The pod template a ControllerRevision stores.
pub fn stored_template(cr: &ControllerRevision) -> Result<PodTemplateSpec, String> {
    let data = cr
        .data
        .as_ref()
        .and_then(|d| d.0.get(STORED_TEMPLATE))
        .ok_or_else(|| format!("ControllerRevision {} holds no pod template", cr.name_any()))?;
    serde_json::from_value(data.clone()).map_err(|e| {
        format!(
            "ControllerRevision {} holds an unreadable pod template: {e}",
            cr.name_any()
        )
    })
}

/// The model container of a pod template.
fn model_container(template: &PodTemplateSpec) -> Option<&Container> {
    template
        .spec
        .as_ref()?
        .containers
        .iter()
        .find(|c| c.name == MODEL_CONTAINER)
}

/// The `MODEL_VERSION` the model container of a pod template runs.
pub fn template_version(template: &PodTemplateSpec) -> Option<&str> {
    model_container(template)?
        .env
        .as_ref()?
        .iter()
        .find(|e| e.name == "MODEL_VERSION")?
        .value
        .as_deref()
}

/// The model container's image in a pod template.
pub fn template_image(template: &PodTemplateSpec) -> Option<&str> {
    model_container(template)?.image.as_deref()
}

fn non_empty<T>(v: Vec<T>) -> Option<Vec<T>> {
    (!v.is_empty()).then_some(v)
}

/// The Service clients call: it selects the pods of every serving revision, so
/// with the replicas router traffic splits by ready pod counts.
pub fn service(md: &ModelDeployment) -> Service {
    let selector = BTreeMap::from([(labels::NAME.to_string(), md.name_any())]);
    model_service(md, md.name_any(), base_labels(md), selector)
}

/// A Service on the model port selecting `selector`; every Service the
/// operator makes has this shape.
pub(crate) fn model_service(
    md: &ModelDeployment,
    name: String,
    labels: BTreeMap<String, String>,
    selector: BTreeMap<String, String>,
) -> Service {
    stamp(Service {
        metadata: owned_meta(md, name, labels),
        spec: Some(ServiceSpec {
            selector: Some(selector),
            ports: Some(vec![ServicePort {
                name: Some("http".into()),
                port: md.spec.model.port,
                target_port: Some(IntOrString::String("http".into())),
                protocol: Some("TCP".into()),
                ..Default::default()
            }]),
            ..Default::default()
        }),
        status: None,
    })
}

#[cfg(test)]
mod declared_port_tests {
    use super::*;

    fn pod(containers: serde_json::Value) -> Pod {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": "scorer-abc-1"},
            "spec": {"containers": containers}
        }))
        .unwrap()
    }

    #[test]
    fn the_metrics_port_then_the_http_port_of_the_model_container() {
        let both = pod(serde_json::json!([{"name": "model", "ports": [
            {"name": "http", "containerPort": 8080},
            {"name": "metrics", "containerPort": 9090}]}]));
        assert_eq!(declared_metrics_port(&both), Ok(9090));
        let http = pod(serde_json::json!([{"name": "model", "ports": [
            {"name": "http", "containerPort": 8080}]}]));
        assert_eq!(declared_metrics_port(&http), Ok(8080));
    }

    #[test]
    fn undeclared_ports_and_sidecars_ports_are_never_asked() {
        let sidecar = pod(serde_json::json!([
            {"name": "istio-proxy", "ports": [{"name": "metrics", "containerPort": 15090}]},
            {"name": "model"}]));
        let e = declared_metrics_port(&sidecar).unwrap_err();
        assert!(
            e.contains("scorer-abc-1") && e.contains("no `metrics` or `http` port"),
            "{e}"
        );
        let unnamed =
            pod(serde_json::json!([{"name": "model", "ports": [{"containerPort": 8080}]}]));
        assert!(declared_metrics_port(&unnamed).is_err());
        let out_of_range = pod(serde_json::json!([{"name": "model", "ports": [
            {"name": "http", "containerPort": 70000}]}]));
        assert!(
            declared_metrics_port(&out_of_range)
                .unwrap_err()
                .contains("70000")
        );
    }

    #[test]
    fn the_cache_keeps_what_the_port_is_read_from_and_nothing_else() {
        let mut full = pod(serde_json::json!([
            {"name": "istio-proxy", "image": "proxy"},
            {"name": "model", "image": "demo", "env": [{"name": "A", "value": "b"}],
             "ports": [{"name": "http", "containerPort": 8080}]}]));
        let before = declared_metrics_port(&full);
        keep_declared_ports(&mut full.spec);
        assert_eq!(declared_metrics_port(&full), before);
        let spec = full.spec.unwrap();
        assert_eq!(spec.containers.len(), 1);
        assert_eq!(spec.containers[0].image, None);
        assert_eq!(spec.containers[0].env, None);
    }

    #[test]
    fn a_rendered_template_declares_the_port_that_is_read() {
        let mut spec: ModelDeploymentSpec = serde_json::from_value(serde_json::json!({
            "model": {"image": "m:1", "version": "1.0.0", "port": 8080},
            "metrics": {"port": 9100},
            "resources": {"requests": {}, "limits": {}}
        }))
        .unwrap();
        let p = |spec: &ModelDeploymentSpec| Pod {
            spec: Some(PodSpec {
                containers: vec![Container {
                    name: MODEL_CONTAINER.into(),
                    ports: Some(container_ports(spec)),
                    ..Default::default()
                }],
                ..Default::default()
            }),
            ..Default::default()
        };
        assert_eq!(declared_metrics_port(&p(&spec)), Ok(9100));
        spec.metrics.port = None;
        assert_eq!(declared_metrics_port(&p(&spec)), Ok(8080));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::validate;
    use serde_json::json;

    fn md(extra: serde_json::Value) -> ModelDeployment {
        let mut spec = json!({
            "model": {"version": "1.2.0", "image": "example/model:1.2.0", "port": 9000,
                      "storageUri": "s3://models/m/1.2.0"},
            "replicas": 3,
            "resources": {"requests": {"cpu": "500m", "memory": "1Gi"},
                          "limits": {"cpu": "2", "memory": "2Gi", "nvidia.com/gpu": "1"}}
        });
        if let (Some(s), Some(e)) = (spec.as_object_mut(), extra.as_object()) {
            s.extend(e.clone());
        }
        let mut md = ModelDeployment::new("scorer", serde_json::from_value(spec).unwrap());
        md.metadata.namespace = Some("risk".into());
        md.metadata.uid = Some("uid-1".into());
        md
    }

    fn build(md: &ModelDeployment) -> Deployment {
        let valid = validate(&md.spec).unwrap();
        let w = RevisionWorkload {
            hash: revision_hash(&md.spec),
            revision: 4,
            version: md.spec.model.version.clone(),
            replicas: 3,
        };
        deployment(
            md,
            &pod_template(md, &valid, &w),
            &w,
            valid.progress_deadline,
        )
    }

    #[test]
    fn the_deployment_carries_limits_port_labels_and_owner() {
        let md = md(json!({}));
        let d = build(&md);
        let hash = revision_hash(&md.spec);
        assert_eq!(
            d.metadata.name.as_deref(),
            Some(format!("scorer-{hash}").as_str())
        );
        assert_eq!(d.metadata.namespace.as_deref(), Some("risk"));
        let owner = &d.metadata.owner_references.as_ref().unwrap()[0];
        assert_eq!(owner.kind, "ModelDeployment");
        assert_eq!(owner.controller, Some(true));
        let labels = d.metadata.labels.as_ref().unwrap();
        assert_eq!(labels[labels::REVISION], "4");
        assert_eq!(labels[labels::VERSION], "1.2.0");

        let spec = d.spec.unwrap();
        assert_eq!(spec.replicas, Some(3));
        let pod = spec.template.spec.unwrap();
        let c = &pod.containers[0];
        let limits = c.resources.as_ref().unwrap().limits.as_ref().unwrap();
        assert_eq!(limits["memory"].0, "2Gi");
        assert_eq!(limits["nvidia.com/gpu"].0, "1");
        assert_eq!(c.ports.as_ref().unwrap()[0].container_port, 9000);
        let env = c.env.as_ref().unwrap();
        assert!(
            env.iter()
                .any(|e| e.name == "MODEL_URI" && e.value.as_deref() == Some("s3://models/m/1.2.0"))
        );
        let probe = c.readiness_probe.as_ref().unwrap();
        assert!(probe.tcp_socket.is_some(), "default readiness probe");
        let pod_labels = spec.template.metadata.unwrap().labels.unwrap();
        for (k, v) in spec.selector.match_labels.unwrap() {
            assert_eq!(pod_labels.get(&k), Some(&v), "selector must match the pods");
        }
    }

    #[test]
    fn template_overrides_merge_in_and_our_labels_win() {
        let md = md(json!({"template": {
            "labels": {"team": "risk", "modeldeploy.io/name": "spoofed"},
            "nodeSelector": {"gpu": "a100"},
            "tolerations": [{"key": "gpu", "operator": "Exists", "effect": "NoSchedule"}],
            "serviceAccountName": "model-reader",
            "readinessProbe": {"httpGet": {"path": "/v2/health/ready", "port": 9000}},
            "volumes": [{"name": "shm", "emptyDir": {"medium": "Memory"}}],
            "volumeMounts": [{"name": "shm", "mountPath": "/dev/shm"}]
        }}));
        let d = build(&md);
        let template = d.spec.unwrap().template;
        let labels = template.metadata.unwrap().labels.unwrap();
        assert_eq!(labels["team"], "risk");
        assert_eq!(labels[labels::NAME], "scorer");
        let pod = template.spec.unwrap();
        assert_eq!(pod.node_selector.unwrap()["gpu"], "a100");
        assert_eq!(pod.service_account_name.as_deref(), Some("model-reader"));
        assert_eq!(pod.volumes.unwrap()[0].name, "shm");
        let c = &pod.containers[0];
        assert_eq!(c.volume_mounts.as_ref().unwrap()[0].mount_path, "/dev/shm");
        let probe = c.readiness_probe.as_ref().unwrap();
        assert_eq!(
            probe.http_get.as_ref().unwrap().path.as_deref(),
            Some("/v2/health/ready")
        );
        assert!(probe.tcp_socket.is_none());
    }

    #[test]
    fn only_pod_relevant_fields_make_a_new_revision() {
        let a = md(json!({}));
        let mut b = a.clone();
        b.spec.replicas = 10;
        b.spec.metrics.interval = "1m".into();
        assert_eq!(revision_hash(&a.spec), revision_hash(&b.spec));
        b.spec.model.version = "1.3.0".into();
        assert_ne!(revision_hash(&a.spec), revision_hash(&b.spec));
        let mut c = a.clone();
        c.spec.resources.limits.insert(
            "memory".into(),
            k8s_openapi::apimachinery::pkg::api::resource::Quantity("4Gi".into()),
        );
        assert_ne!(revision_hash(&a.spec), revision_hash(&c.spec));
        // A separate metrics port is a container port: a new revision. The
        // model port named again is not, and changes no existing hash.
        let mut d = a.clone();
        d.spec.metrics.port = Some(d.spec.model.port);
        assert_eq!(revision_hash(&a.spec), revision_hash(&d.spec));
        d.spec.metrics.port = Some(9100);
        assert_ne!(revision_hash(&a.spec), revision_hash(&d.spec));
    }

    #[test]
    fn the_applied_hash_changes_with_content_only() {
        let md = md(json!({}));
        let a = build(&md);
        let b = build(&md);
        let hash = |d: &Deployment| d.annotations()[APPLIED_HASH].clone();
        assert_eq!(hash(&a), hash(&b));
        let valid = validate(&md.spec).unwrap();
        let w = RevisionWorkload {
            hash: revision_hash(&md.spec),
            revision: 4,
            version: "1.2.0".into(),
            replicas: 0,
        };
        let scaled = deployment(
            &md,
            &pod_template(&md, &valid, &w),
            &w,
            valid.progress_deadline,
        );
        assert_ne!(hash(&a), hash(&scaled));
    }

    #[test]
    fn a_stored_revision_builds_the_same_deployment_whatever_the_spec_says_now() {
        let v1 = md(json!({}));
        let valid = validate(&v1.spec).unwrap();
        let w = RevisionWorkload {
            hash: revision_hash(&v1.spec),
            revision: 1,
            version: "1.2.0".into(),
            replicas: 3,
        };
        let cr = controller_revision(&v1, &w, &pod_template(&v1, &valid, &w));
        assert_eq!(cr.revision, 1);
        assert_eq!(cr.metadata.name, Some(format!("scorer-{}", w.hash)));
        assert_eq!(cr.labels()[labels::HASH], w.hash);
        let stored = stored_template(&cr).unwrap();
        let before = deployment(&v1, &stored, &w, valid.progress_deadline);

        // The spec moves on to another image, env and resources.
        let mut v2 = md(
            json!({"model": {"version": "2.0.0", "image": "example/model:2.0.0",
            "port": 9000, "env": [{"name": "ERROR_RATE", "value": "0.05"}]}}),
        );
        v2.spec.resources.limits.insert(
            "memory".into(),
            k8s_openapi::apimachinery::pkg::api::resource::Quantity("8Gi".into()),
        );
        let after = deployment(
            &v2,
            &stored_template(&cr).unwrap(),
            &w,
            valid.progress_deadline,
        );
        assert_eq!(
            serde_json::to_string(&before).unwrap(),
            serde_json::to_string(&after).unwrap(),
            "revision 1's Deployment does not follow the current spec"
        );
        assert_eq!(template_image(&stored), Some("example/model:1.2.0"));
        assert_eq!(
            template_version(&stored),
            Some("1.2.0"),
            "what adoption compares with a revision's version label"
        );
    }

    #[test]
    fn an_unreadable_stored_template_is_an_error_not_a_panic() {
        let mut cr = ControllerRevision::default();
        cr.metadata.name = Some("scorer-x".into());
        assert!(
            stored_template(&cr)
                .unwrap_err()
                .contains("no pod template")
        );
        cr.data = Some(RawExtension(
            json!({"template": {"spec": {"containers": "nope"}}}),
        ));
        assert!(stored_template(&cr).unwrap_err().contains("unreadable"));
    }

    #[test]
    fn the_service_selects_every_revision_on_the_model_port() {
        let md = md(json!({}));
        let s = service(&md);
        let spec = s.spec.unwrap();
        assert_eq!(
            spec.selector.unwrap(),
            BTreeMap::from([(labels::NAME.to_string(), "scorer".to_string())])
        );
        assert_eq!(spec.ports.unwrap()[0].port, 9000);
    }
}
