//! The `source: prometheus` path: PromQL instant queries against the
//! Prometheus named in the operator's own configuration (never in a
//! ModelDeployment). Series are matched to a revision by the `namespace` and
//! `pod` labels that Prometheus' Kubernetes service discovery attaches: a
//! revision's pods are named after its Deployment, `<name>-<hash>-...`.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Deserialize;

use super::prometheus_auth::{self as auth, Credentials, PromAuth, PromTls};

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum PromError {
    #[error("Prometheus address {0:?} is not an http(s) URL")]
    BadAddress(String),
    #[error("cannot reach Prometheus: {0}")]
    Unreachable(String),
    #[error("Prometheus answered HTTP {0}: {1}")]
    Status(u16, String),
    #[error(
        "prometheus answered {0}; check the operator's Prometheus credentials (--prometheus-bearer-token-file or basic auth)"
    )]
    Denied(String),
    #[error("TLS with Prometheus failed: {0}")]
    Tls(String),
    #[error("Prometheus credentials: {0}")]
    Credentials(String),
    #[error("Prometheus refused the query: {0}")]
    Query(String),
    #[error("unexpected answer from Prometheus: {0}")]
    Decode(String),
}

impl PromError {
    pub fn reason(&self) -> &'static str {
        match self {
            PromError::BadAddress(_) => "prometheus_address",
            PromError::Unreachable(_) => "prometheus_unreachable",
            PromError::Status(..) => "prometheus_status",
            PromError::Denied(_) => "prometheus_denied",
            PromError::Tls(_) => "prometheus_tls",
            PromError::Credentials(_) => "prometheus_credentials",
            PromError::Query(_) => "prometheus_query",
            PromError::Decode(_) => "prometheus_decode",
        }
    }
}

/// One element of an instant vector (or a scalar, with no labels).
#[derive(Debug, Clone, PartialEq)]
pub struct PromSample {
    pub labels: BTreeMap<String, String>,
    pub value: f64,
}

#[derive(Clone)]
pub struct PromClient {
    base: String,
    client: reqwest::Client,
    credentials: Credentials,
}

impl std::fmt::Debug for PromClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PromClient")
            .field("base", &self.base)
            .field("credentials", &self.credentials)
            .finish_non_exhaustive()
    }
}

#[derive(Deserialize)]
struct Answer {
    status: String,
    #[serde(default)]
    data: Option<Data>,
    #[serde(default)]
    error: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Data {
    result_type: String,
    result: serde_json::Value,
}

#[derive(Deserialize)]
struct VectorItem {
    #[serde(default)]
    metric: BTreeMap<String, String>,
    value: (f64, String),
}

fn parse_value(s: &str) -> Result<f64, PromError> {
    match s {
        "NaN" => Ok(f64::NAN),
        "+Inf" | "Inf" => Ok(f64::INFINITY),
        "-Inf" => Ok(f64::NEG_INFINITY),
        other => other
            .parse()
            .map_err(|_| PromError::Decode(format!("sample value {other:?}"))),
    }
}

impl PromClient {
    /// A client without credentials that trusts the system roots.
    pub fn new(address: &str, timeout: Duration) -> Result<Self, PromError> {
        Self::with_auth(address, timeout, &PromAuth::default(), PromTls::default())
    }

    /// A client with the checked access flags and the TLS material they named.
    pub fn with_auth(
        address: &str,
        timeout: Duration,
        auth: &PromAuth,
        tls: PromTls,
    ) -> Result<Self, PromError> {
        let base = address.trim_end_matches('/').to_string();
        if !(base.starts_with("http://") || base.starts_with("https://")) {
            return Err(PromError::BadAddress(address.into()));
        }
        // A redirect (an auth proxy's login page) is an answer to report,
        // not one to follow with the query.
        let mut builder = crate::http_client_builder()
            .timeout(timeout)
            .redirect(reqwest::redirect::Policy::none());
        if let Some(roots) = tls.roots {
            let certs = roots
                .iter()
                .map(|der| reqwest::Certificate::from_der(der))
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| PromError::Tls(error_chain(&e)))?;
            builder = builder.tls_certs_only(certs);
        }
        if let Some(pem) = tls.identity {
            let identity =
                reqwest::Identity::from_pem(&pem).map_err(|e| PromError::Tls(error_chain(&e)))?;
            builder = builder.identity(identity);
        }
        let client = builder
            .build()
            .map_err(|e| PromError::Tls(error_chain(&e)))?;
        Ok(Self {
            base,
            client,
            credentials: auth.credentials.clone(),
        })
    }

    /// The request with this query's credentials; the file is read now, so
    /// a rotated token counts from the next query on.
    async fn authorize(
        &self,
        request: reqwest::RequestBuilder,
    ) -> Result<reqwest::RequestBuilder, PromError> {
        let read = |path: std::path::PathBuf| async move {
            let text = tokio::fs::read_to_string(&path).await.map_err(|e| {
                PromError::Credentials(format!("cannot read {}: {e}", path.display()))
            })?;
            auth::secret_text(&text)
                .ok_or_else(|| PromError::Credentials(format!("{} is empty", path.display())))
        };
        Ok(match &self.credentials {
            Credentials::None => request,
            Credentials::Bearer { token_file } => {
                request.bearer_auth(read(token_file.clone()).await?)
            }
            Credentials::Basic {
                username,
                password_file,
            } => request.basic_auth(username, Some(read(password_file.clone()).await?)),
        })
    }

    /// An instant query; a scalar comes back as one sample without labels.
    pub async fn query(&self, promql: &str) -> Result<Vec<PromSample>, PromError> {
        let request = self
            .client
            .post(format!("{}/api/v1/query", self.base))
            .form(&[("query", promql)]);
        let response = self
            .authorize(request)
            .await?
            .send()
            .await
            .map_err(|e| transport_error(&e))?;
        let status = response.status();
        if matches!(status.as_u16(), 401 | 403) {
            return Err(PromError::Denied(status.to_string()));
        }
        let code = status.as_u16();
        let body = response.text().await.map_err(|e| transport_error(&e))?;
        let answer: Answer = serde_json::from_str(&body).map_err(|e| {
            if code >= 300 {
                PromError::Status(code, body.chars().take(200).collect())
            } else {
                PromError::Decode(e.to_string())
            }
        })?;
        if answer.status != "success" {
            return Err(PromError::Query(answer.error.unwrap_or_default()));
        }
        let data = answer
            .data
            .ok_or_else(|| PromError::Decode("no data".into()))?;
        match data.result_type.as_str() {
            "vector" => {
                let items: Vec<VectorItem> = serde_json::from_value(data.result)
                    .map_err(|e| PromError::Decode(e.to_string()))?;
                items
                    .into_iter()
                    .map(|i| {
                        Ok(PromSample {
                            labels: i.metric,
                            value: parse_value(&i.value.1)?,
                        })
                    })
                    .collect()
            }
            "scalar" => {
                let (_, v): (f64, String) = serde_json::from_value(data.result)
                    .map_err(|e| PromError::Decode(e.to_string()))?;
                Ok(vec![PromSample {
                    labels: BTreeMap::new(),
                    value: parse_value(&v)?,
                }])
            }
            other => Err(PromError::Decode(format!(
                "result type {other}; use an expression that returns an instant vector or a scalar"
            ))),
        }
    }
}

/// The whole cause chain: reqwest's own message hides what went wrong
/// ("error sending request"), the certificate or alert is further down.
fn error_chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut next = Some(error);
    while let Some(e) = next {
        let text = e.to_string();
        if !parts.iter().any(|p| p.contains(&text)) {
            parts.push(text);
        }
        next = e.source();
    }
    parts.join(": ")
}

/// Whether a rustls error is anywhere in the chain (io::Error hides it
/// from `source()`, so its inner error is looked at too).
fn is_tls(error: &(dyn std::error::Error + 'static)) -> bool {
    let mut next = Some(error);
    while let Some(e) = next {
        let inner = e
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref())
            .map(|inner| inner as &(dyn std::error::Error + 'static));
        if e.is::<rustls::Error>() || inner.is_some_and(|i| i.is::<rustls::Error>()) {
            return true;
        }
        next = e.source();
    }
    false
}

fn transport_error(error: &reqwest::Error) -> PromError {
    let text = error_chain(error);
    // The connector may box the rustls error where no downcast reaches it;
    // its message still says what failed.
    let tls_words = ["certificate", "fatal alert", "handshake"];
    if is_tls(error) || tls_words.iter().any(|w| text.contains(w)) {
        PromError::Tls(text)
    } else {
        PromError::Unreachable(text)
    }
}

/// Label matchers selecting one revision's pods.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RevisionSelector {
    pub namespace: String,
    /// The revision's Deployment name; its pods are `<deployment>-<rs>-<id>`.
    pub deployment: String,
}

fn escape(s: &str) -> String {
    s.replace('\\', "\\\\").replace('"', "\\\"")
}

impl RevisionSelector {
    /// `namespace="ns",pod=~"name-hash-.+"`, plus extra matchers.
    pub fn matchers(&self, extra: &[(&str, &str, &str)]) -> String {
        let mut m = format!(
            "namespace=\"{}\",pod=~\"{}-.+\"",
            escape(&self.namespace),
            regex::escape(&self.deployment)
                .replace("\\-", "-")
                .replace('\\', "\\\\")
        );
        for (label, op, value) in extra {
            m.push_str(&format!(",{label}{op}\"{}\"", escape(value)));
        }
        m
    }
}

/// Prometheus range syntax for a window, at least one second.
pub fn range(window: Duration) -> String {
    format!("{}s", window.as_secs().max(1))
}

/// `sum(increase(counter{sel}[w]))`
pub fn counter_increase(
    counter: &str,
    sel: &RevisionSelector,
    extra: &[(&str, &str, &str)],
    window: Duration,
) -> String {
    format!(
        "sum(increase({counter}{{{}}}[{}]))",
        sel.matchers(extra),
        range(window)
    )
}

/// `sum by (le, ...) (increase(hist_bucket{sel}[w]))`: bucket deltas to
/// compute quantiles and drift in the operator, the same way as for scraped pods.
pub fn bucket_increase(
    histogram: &str,
    sel: &RevisionSelector,
    by: &[&str],
    window: Duration,
) -> String {
    let mut labels = vec!["le"];
    labels.extend_from_slice(by);
    format!(
        "sum by ({}) (increase({histogram}_bucket{{{}}}[{}]))",
        labels.join(", "),
        sel.matchers(&[]),
        range(window)
    )
}

/// `sum by (labels) (increase(counter{sel}[w]))`
pub fn grouped_increase(
    counter: &str,
    sel: &RevisionSelector,
    by: &[&str],
    window: Duration,
) -> String {
    format!(
        "sum by ({}) (increase({counter}{{{}}}[{}]))",
        by.join(", "),
        sel.matchers(&[]),
        range(window)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sel() -> RevisionSelector {
        RevisionSelector {
            namespace: "risk".into(),
            deployment: "scorer-0a1b2c3d4e".into(),
        }
    }

    #[test]
    fn queries_select_one_revisions_pods() {
        let q = counter_increase(
            "model_requests_total",
            &sel(),
            &[("code", "=~", "5..")],
            Duration::from_secs(90),
        );
        assert_eq!(
            q,
            "sum(increase(model_requests_total{namespace=\"risk\",pod=~\"scorer-0a1b2c3d4e-.+\",code=~\"5..\"}[90s]))"
        );
        let b = bucket_increase(
            "model_input_feature",
            &sel(),
            &["feature"],
            Duration::from_millis(10),
        );
        assert!(
            b.starts_with("sum by (le, feature) (increase(model_input_feature_bucket{"),
            "{b}"
        );
        assert!(b.ends_with("[1s]))"), "{b}");
    }

    #[test]
    fn label_values_are_escaped() {
        let s = RevisionSelector {
            namespace: "a\"b".into(),
            deployment: "x.y".into(),
        };
        assert_eq!(s.matchers(&[]), "namespace=\"a\\\"b\",pod=~\"x\\\\.y-.+\"");
    }

    #[test]
    fn only_http_addresses_are_accepted() {
        assert!(PromClient::new("prometheus:9090", Duration::from_secs(1)).is_err());
        assert!(PromClient::new("http://prometheus:9090/", Duration::from_secs(1)).is_ok());
    }
}
