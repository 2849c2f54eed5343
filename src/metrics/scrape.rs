//! Fetching `/metrics` from the serving pods: bounded concurrency, a timeout
//! and a size cap per request, keep-alive, no redirects and no proxy. A target
//! is a pod IP, a port and a plain path, so nothing in a ModelDeployment can
//! make the operator request another host or URL.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use tokio::sync::Semaphore;

/// One pod's metrics endpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub pod_uid: String,
    pub ip: IpAddr,
    pub port: u16,
    path: String,
}

/// Same rule as the CRD's CEL rule on `spec.metrics.path`, checked again here
/// because the URL is built from it.
pub fn plain_path(path: &str) -> bool {
    path.starts_with('/')
        && !path.contains("//")
        && path
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._~/-".contains(&b))
}

impl Target {
    pub fn new(
        pod_uid: impl Into<String>,
        ip: IpAddr,
        port: u16,
        path: &str,
    ) -> Result<Self, ScrapeError> {
        if !plain_path(path) {
            return Err(ScrapeError::BadPath);
        }
        Ok(Self {
            pod_uid: pod_uid.into(),
            ip,
            port,
            path: path.to_string(),
        })
    }

    pub fn url(&self) -> String {
        format!("http://{}{}", self.authority(), self.path)
    }

    /// `ip:port`, the IPv6 address in brackets.
    pub fn authority(&self) -> String {
        match self.ip {
            IpAddr::V4(ip) => format!("{ip}:{}", self.port),
            IpAddr::V6(ip) => format!("[{ip}]:{}", self.port),
        }
    }
}

/// Why a pod's metrics could not be read. The message names the cause (the
/// collector prefixes the pod's URL), so an Inconclusive check says why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ScrapeError {
    /// The whole request, body included, took longer than the timeout.
    #[error("timed out after {0:?}")]
    Timeout(Duration),
    #[error("cannot connect: {0}")]
    Connect(String),
    #[error("HTTP status {0}")]
    Status(u16),
    #[error("response larger than {0} bytes")]
    TooLarge(usize),
    #[error("response is not UTF-8 text")]
    NotText,
    #[error("metrics path is not a plain path")]
    BadPath,
    /// Two pods answer at one address: their metrics cannot be told apart,
    /// and reading both would count one server twice.
    #[error("pods {0} and {1} share the address {2}: their metrics cannot be told apart")]
    SharedAddress(String, String, String),
    #[error("{0}")]
    Other(String),
}

impl ScrapeError {
    /// A static label for the scrape-error metric.
    pub fn reason(&self) -> &'static str {
        match self {
            ScrapeError::Timeout(_) => "timeout",
            ScrapeError::Connect(_) => "connect",
            ScrapeError::Status(_) => "http_status",
            ScrapeError::TooLarge(_) => "too_large",
            ScrapeError::NotText => "not_text",
            ScrapeError::BadPath => "bad_path",
            ScrapeError::SharedAddress(..) => "shared_address",
            ScrapeError::Other(_) => "other",
        }
    }
}

#[derive(Debug, Clone)]
pub struct ScrapeConfig {
    pub timeout: Duration,
    pub max_bytes: usize,
    /// Scrapes in flight at once, across every ModelDeployment.
    pub concurrency: usize,
}

impl Default for ScrapeConfig {
    fn default() -> Self {
        Self {
            timeout: Duration::from_secs(5),
            max_bytes: 4 * 1024 * 1024,
            concurrency: 64,
        }
    }
}

/// Shared by every reconcile: one connection pool and one concurrency budget.
#[derive(Clone)]
pub struct Scraper {
    client: reqwest::Client,
    limit: Arc<Semaphore>,
    config: ScrapeConfig,
}

impl Scraper {
    pub fn new(config: ScrapeConfig) -> Self {
        let client = crate::http_client_builder()
            .redirect(reqwest::redirect::Policy::none())
            .no_proxy()
            .timeout(config.timeout)
            .connect_timeout(config.timeout)
            .pool_idle_timeout(Duration::from_secs(90))
            .pool_max_idle_per_host(2)
            .tcp_nodelay(true)
            .build()
            .unwrap_or_default();
        Self {
            client,
            limit: Arc::new(Semaphore::new(config.concurrency.max(1))),
            config,
        }
    }

    pub fn config(&self) -> &ScrapeConfig {
        &self.config
    }

    pub async fn fetch(&self, target: &Target) -> Result<String, ScrapeError> {
        let _permit = self
            .limit
            .acquire()
            .await
            .map_err(|e| ScrapeError::Other(e.to_string()))?;
        let response = self
            .client
            .get(target.url())
            .header(
                "accept",
                "text/plain;version=0.0.4;q=0.9,application/openmetrics-text;version=1.0.0;q=0.5",
            )
            .send()
            .await
            .map_err(|e| self.classify(e))?;
        if !response.status().is_success() {
            return Err(ScrapeError::Status(response.status().as_u16()));
        }
        let max = self.config.max_bytes;
        if response.content_length().is_some_and(|n| n as usize > max) {
            return Err(ScrapeError::TooLarge(max));
        }
        let mut body = Vec::new();
        let mut stream = response.bytes_stream();
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|e| self.classify(e))?;
            if body.len() + chunk.len() > max {
                return Err(ScrapeError::TooLarge(max));
            }
            body.extend_from_slice(&chunk);
        }
        String::from_utf8(body).map_err(|_| ScrapeError::NotText)
    }

    /// Fetch every target, at most `concurrency` at once overall. Targets of
    /// different pods at one address are not fetched (see
    /// [`ScrapeError::SharedAddress`]).
    pub async fn fetch_all(&self, targets: &[Target]) -> Vec<Result<String, ScrapeError>> {
        let shared = shared_addresses(targets);
        let fetches = targets.iter().cloned().zip(shared).map(|(t, shared)| {
            let scraper = self.clone();
            async move {
                match shared {
                    Some(e) => Err(e),
                    None => scraper.fetch(&t).await,
                }
            }
        });
        futures::stream::iter(fetches)
            .buffered(self.config.concurrency.max(1))
            .collect()
            .await
    }

    fn classify(&self, e: reqwest::Error) -> ScrapeError {
        // The collector names the pod's URL already.
        let e = e.without_url();
        if e.is_timeout() {
            ScrapeError::Timeout(self.config.timeout)
        } else if e.is_connect() {
            ScrapeError::Connect(causes(&e))
        } else {
            ScrapeError::Other(causes(&e))
        }
    }
}

/// For each target, the error that refuses it when a target of another pod
/// has the same address. A pod IP belongs to one pod; two pods reporting one
/// (a stale cache after the IP was reused, host-network pods) cannot be told
/// apart, so neither is read rather than one server counted twice.
fn shared_addresses(targets: &[Target]) -> Vec<Option<ScrapeError>> {
    let mut pods_at: HashMap<(IpAddr, u16), Vec<&str>> = HashMap::new();
    for t in targets {
        let pods = pods_at.entry((t.ip, t.port)).or_default();
        if !pods.contains(&t.pod_uid.as_str()) {
            pods.push(&t.pod_uid);
        }
    }
    targets
        .iter()
        .map(|t| {
            let other = pods_at[&(t.ip, t.port)].iter().find(|p| **p != t.pod_uid)?;
            Some(ScrapeError::SharedAddress(
                t.pod_uid.clone(),
                other.to_string(),
                t.authority(),
            ))
        })
        .collect()
}

/// The error and its sources, `: `-separated: reqwest's own message only
/// says which request failed; the cause ("connection refused", "invalid HTTP
/// version") is in the chain.
fn causes(e: &reqwest::Error) -> String {
    let mut out = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        let s_text = s.to_string();
        if !out.contains(&s_text) {
            out.push_str(": ");
            out.push_str(&s_text);
        }
        source = s.source();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::routing::get;

    async fn serve(router: axum::Router) -> std::net::SocketAddr {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let _ = axum::serve(listener, router).await;
        });
        addr
    }

    fn target(addr: std::net::SocketAddr, path: &str) -> Target {
        Target::new("uid", addr.ip(), addr.port(), path).unwrap()
    }

    #[test]
    fn only_plain_paths_make_targets() {
        let ip: IpAddr = "10.0.0.1".parse().unwrap();
        assert_eq!(
            Target::new("u", ip, 8080, "/metrics").unwrap().url(),
            "http://10.0.0.1:8080/metrics"
        );
        for bad in ["metrics", "//evil/x", "/m?x=1", "/@evil", "/a#b", "/%2e"] {
            assert_eq!(
                Target::new("u", ip, 8080, bad),
                Err(ScrapeError::BadPath),
                "{bad}"
            );
        }
        let v6: IpAddr = "fd00::1".parse().unwrap();
        assert_eq!(
            Target::new("u", v6, 9, "/m").unwrap().url(),
            "http://[fd00::1]:9/m"
        );
    }

    #[tokio::test]
    async fn fetches_text_and_refuses_redirects_and_oversized_bodies() {
        let addr = serve(
            axum::Router::new()
                .route(
                    "/metrics",
                    get(|| async { "model_requests_total{code=\"200\"} 3\n" }),
                )
                .route("/big", get(|| async { "x".repeat(10_000) }))
                .route(
                    "/moved",
                    get(|| async {
                        (
                            axum::http::StatusCode::FOUND,
                            [("location", "http://169.254.169.254/latest/meta-data")],
                        )
                    }),
                ),
        )
        .await;
        let scraper = Scraper::new(ScrapeConfig {
            max_bytes: 1_000,
            ..Default::default()
        });
        let text = scraper.fetch(&target(addr, "/metrics")).await.unwrap();
        assert!(text.contains("model_requests_total"));
        assert_eq!(
            scraper.fetch(&target(addr, "/big")).await,
            Err(ScrapeError::TooLarge(1_000))
        );
        assert_eq!(
            scraper.fetch(&target(addr, "/moved")).await,
            Err(ScrapeError::Status(302))
        );
        assert_eq!(
            scraper.fetch(&target(addr, "/missing")).await,
            Err(ScrapeError::Status(404))
        );
    }

    #[tokio::test]
    async fn a_slow_pod_times_out_and_a_closed_port_fails_to_connect() {
        let addr = serve(axum::Router::new().route(
            "/metrics",
            get(|| async {
                tokio::time::sleep(Duration::from_secs(5)).await;
                "late"
            }),
        ))
        .await;
        let scraper = Scraper::new(ScrapeConfig {
            timeout: Duration::from_millis(200),
            ..Default::default()
        });
        assert_eq!(
            scraper.fetch(&target(addr, "/metrics")).await,
            Err(ScrapeError::Timeout(Duration::from_millis(200)))
        );
        let closed = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        let err = scraper
            .fetch(&target(closed, "/metrics"))
            .await
            .unwrap_err();
        assert_eq!(err.reason(), "connect", "{err:?}");
    }
}
