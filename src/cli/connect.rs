//! Reaching the cluster as kubectl does: the kubeconfig from `--kubeconfig`,
//! else `$KUBECONFIG` (merged when it lists several files), else
//! `~/.kube/config`; its current context unless `--context` names another;
//! inside a pod without a kubeconfig, the pod's service account. The
//! namespace is `-n`, else the context's, else `default`.

use k8s_openapi::api::apps::v1::ControllerRevision;
use kube::api::{Api, DynamicObject, ListParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::core::{ApiResource, TypeMeta};
use kube::{Client, Config};
use serde_json::Value;

use super::args::ClusterFlags;
use super::{Error, causes};
use crate::api::ModelDeployment;

/// A client, the namespace the commands work in, and the server's address
/// for error messages.
pub struct Connection {
    pub client: Client,
    pub namespace: String,
    pub server: String,
}

/// Connects as the flags say (no request is made yet).
pub async fn connect(flags: &ClusterFlags) -> Result<Connection, Error> {
    let config = match read_kubeconfig(flags)? {
        Some(kubeconfig) => select(kubeconfig, flags).await?,
        None => Config::incluster().map_err(|e| {
            Error::Config(format!(
                "no kubeconfig ($KUBECONFIG or ~/.kube/config) and not inside a cluster: {}",
                causes(&e)
            ))
        })?,
    };
    let namespace = namespace(flags, &config);
    let server = config.cluster_url.to_string();
    let client = Client::try_from(config)
        .map_err(|e| Error::Config(format!("cannot make a client for {server}: {}", causes(&e))))?;
    Ok(Connection {
        client,
        namespace,
        server,
    })
}

/// The kubeconfig to use; `None` when there is none and nothing asks for
/// one, so the in-cluster identity is used.
fn read_kubeconfig(flags: &ClusterFlags) -> Result<Option<Kubeconfig>, Error> {
    if let Some(path) = &flags.kubeconfig {
        return Kubeconfig::read_from(path).map(Some).map_err(|e| {
            Error::Config(format!("--kubeconfig {}: {}", path.display(), causes(&e)))
        });
    }
    match Kubeconfig::read() {
        Ok(kubeconfig) => Ok(Some(kubeconfig)),
        Err(_) if flags.context.is_none() && std::env::var_os("KUBECONFIG").is_none() => Ok(None),
        Err(e) => Err(Error::Config(format!(
            "cannot read the kubeconfig: {}",
            causes(&e)
        ))),
    }
}

/// The configuration of the chosen context (no network: exec credentials
/// run on the first request).
pub async fn select(kubeconfig: Kubeconfig, flags: &ClusterFlags) -> Result<Config, Error> {
    if let Some(context) = &flags.context
        && !kubeconfig.contexts.iter().any(|c| &c.name == context)
    {
        let known: Vec<&str> = kubeconfig
            .contexts
            .iter()
            .map(|c| c.name.as_str())
            .collect();
        return Err(Error::Config(format!(
            "--context {context}: no such context in the kubeconfig (it has: {})",
            known.join(", ")
        )));
    }
    let options = KubeConfigOptions {
        context: flags.context.clone(),
        cluster: None,
        user: None,
    };
    Config::from_custom_kubeconfig(kubeconfig, &options)
        .await
        .map_err(|e| {
            let which = flags.context.as_deref().map_or_else(
                || "the current context".to_string(),
                |c| format!("context {c}"),
            );
            Error::Config(format!("cannot use {which}: {}", causes(&e)))
        })
}

/// `-n`, else the context's namespace, else `default` (kube fills
/// `default_namespace` with the last two).
pub fn namespace(flags: &ClusterFlags, config: &Config) -> String {
    flags
        .namespace
        .clone()
        .unwrap_or_else(|| config.default_namespace.clone())
}

fn resource() -> ApiResource {
    ApiResource::erase::<ModelDeployment>(&())
}

impl Connection {
    /// ModelDeployments of the namespace, typed.
    pub fn typed(&self) -> Api<ModelDeployment> {
        Api::namespaced(self.client.clone(), &self.namespace)
    }

    /// ModelDeployments of the namespace as the server has them (fields
    /// this plugin does not know included), for `-o json|yaml`.
    pub fn objects(&self) -> Api<DynamicObject> {
        Api::namespaced_with(self.client.clone(), &self.namespace, &resource())
    }

    pub fn revisions(&self) -> Api<ControllerRevision> {
        Api::namespaced(self.client.clone(), &self.namespace)
    }

    /// One object, whole.
    pub async fn get(&self, name: &str) -> Result<Value, Error> {
        let object = self
            .objects()
            .get(name)
            .await
            .map_err(|e| self.read_error(name, e))?;
        Ok(with_type(object))
    }

    /// The objects of the namespace, or of all namespaces.
    pub async fn list(&self, all_namespaces: bool) -> Result<Vec<Value>, Error> {
        let (api, where_) = if all_namespaces {
            (
                Api::all_with(self.client.clone(), &resource()),
                "all namespaces".to_string(),
            )
        } else {
            (self.objects(), format!("namespace {}", self.namespace))
        };
        let list = api
            .list(&ListParams::default())
            .await
            .map_err(|e| match e {
                kube::Error::Api(s) if s.code == 404 => self.not_installed(),
                e => self.error(format!("list ModelDeployments in {where_}"), e),
            })?;
        Ok(list.items.into_iter().map(with_type).collect())
    }

    /// A failed call, naming the server when it could not be reached.
    pub fn error(&self, what: impl Into<String>, e: kube::Error) -> Error {
        match e {
            e @ kube::Error::Api(_) => Error::kube(what, e),
            e => Error::Kube {
                what: what.into(),
                cause: format!(
                    "the cluster at {} did not answer: {}",
                    self.server,
                    causes(&e)
                ),
            },
        }
    }

    /// Reading one object failed: missing object, missing CRD, or another
    /// failure.
    pub fn read_error(&self, name: &str, e: kube::Error) -> Error {
        match e {
            kube::Error::Api(s) if s.code == 404 => {
                if s.details.as_ref().is_some_and(|d| d.name == name) {
                    Error::NotFound {
                        name: name.to_string(),
                        namespace: self.namespace.clone(),
                    }
                } else {
                    self.not_installed()
                }
            }
            e => self.error(
                format!(
                    "read ModelDeployment {name} in namespace {}",
                    self.namespace
                ),
                e,
            ),
        }
    }

    fn not_installed(&self) -> Error {
        Error::Config(format!(
            "the cluster at {} does not serve ModelDeployments: is the modeldeploy CRD installed?",
            self.server
        ))
    }
}

/// The object as JSON with `apiVersion` and `kind`, which list items may
/// lack.
pub(super) fn with_type(mut object: DynamicObject) -> Value {
    if object.types.is_none() {
        let resource = resource();
        object.types = Some(TypeMeta {
            api_version: resource.api_version,
            kind: resource.kind,
        });
    }
    serde_json::to_value(object).unwrap_or_default()
}

/// The typed object, for the commands that print text.
pub fn decode(object: &Value) -> Result<ModelDeployment, Error> {
    serde_json::from_value(object.clone()).map_err(|e| Error::Decode {
        name: object["metadata"]["name"]
            .as_str()
            .unwrap_or("?")
            .to_string(),
        cause: e.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const KUBECONFIG: &str = r#"
apiVersion: v1
kind: Config
current-context: dev
clusters:
- name: dev
  cluster: {server: "https://dev.example:6443"}
- name: prod
  cluster: {server: "https://prod.example:6443"}
users:
- name: me
  user: {token: abc}
contexts:
- name: dev
  context: {cluster: dev, user: me}
- name: prod
  context: {cluster: prod, user: me, namespace: risk}
"#;

    async fn chosen(
        context: Option<&str>,
        namespace_flag: Option<&str>,
    ) -> Result<(String, String), Error> {
        let flags = ClusterFlags {
            kubeconfig: None,
            context: context.map(str::to_string),
            namespace: namespace_flag.map(str::to_string),
        };
        let config = select(Kubeconfig::from_yaml(KUBECONFIG).unwrap(), &flags).await?;
        Ok((config.cluster_url.to_string(), namespace(&flags, &config)))
    }

    #[tokio::test]
    async fn the_current_context_unless_context_names_another() {
        let (server, _) = chosen(None, None).await.unwrap();
        assert_eq!(server, "https://dev.example:6443/");
        let (server, _) = chosen(Some("prod"), None).await.unwrap();
        assert_eq!(server, "https://prod.example:6443/");
    }

    #[tokio::test]
    async fn the_namespace_flag_beats_the_contexts_which_beats_default() {
        assert_eq!(chosen(None, None).await.unwrap().1, "default");
        assert_eq!(chosen(Some("prod"), None).await.unwrap().1, "risk");
        assert_eq!(chosen(Some("prod"), Some("ads")).await.unwrap().1, "ads");
        assert_eq!(chosen(None, Some("ads")).await.unwrap().1, "ads");
    }

    #[tokio::test]
    async fn an_unknown_context_is_named_with_the_known_ones() {
        let Err(e) = chosen(Some("staging"), None).await else {
            panic!("staging is not in the kubeconfig");
        };
        assert_eq!(
            e.to_string(),
            "--context staging: no such context in the kubeconfig (it has: dev, prod)"
        );
    }

    #[test]
    fn list_items_get_their_api_version_and_kind() {
        let item: DynamicObject = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "scorer", "namespace": "risk"},
            "spec": {"model": {"version": "1", "image": "m:1"},
                     "resources": {"requests": {"cpu": "1"}, "limits": {"cpu": "1"}}}
        }))
        .unwrap();
        let value = with_type(item);
        assert_eq!(value["apiVersion"], "modeldeploy.io/v1alpha1");
        assert_eq!(value["kind"], "ModelDeployment");
        let md = decode(&value).unwrap();
        assert_eq!(md.spec.model.version, "1");
        let bad = serde_json::json!({"metadata": {"name": "odd"}, "spec": {"model": 3}});
        assert!(
            decode(&bad)
                .unwrap_err()
                .to_string()
                .starts_with("cannot read ModelDeployment odd: ")
        );
    }
}
