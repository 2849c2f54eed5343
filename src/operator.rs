//! The operator process: preflight, telemetry, leader election, controllers,
//! and a clean stop on SIGTERM or when leadership is lost.

use std::net::SocketAddr;
use std::time::Duration;

use futures::FutureExt;
use kube::Client;
use kube_lease_manager::{LeaseManager, LeaseManagerBuilder};
use tokio::sync::watch;
use tracing::{info, warn};

use crate::controller::{self, Settings};
use crate::telemetry::{self, Metrics, Readiness};

#[derive(Debug, Clone, Default)]
pub struct OperatorConfig {
    /// Namespaces to watch; empty means all.
    pub namespaces: Vec<String>,
    /// This shard's ModelDeployments, as a label selector (`--selector`);
    /// blank means all of them.
    pub selector: String,
    /// Where `/metrics`, `/healthz` and `/readyz` listen; `None` serves nothing.
    pub metrics_addr: Option<SocketAddr>,
    pub leader_election: Option<LeaderElection>,
    /// This replica's name (the pod name in a cluster).
    pub identity: String,
    /// Prometheus for `spec.metrics.source: prometheus`.
    pub prometheus_url: Option<String>,
    /// Credentials and TLS for that Prometheus (`--prometheus-*` flags).
    pub prometheus_auth: crate::metrics::prometheus_auth::PromAuthFlags,
    pub scrape: crate::metrics::scrape::ScrapeConfig,
    /// Where rollout transitions are posted (Slack-compatible JSON), if anywhere.
    pub webhook_url: Option<String>,
    /// Reconciles running at once; 0 means no limit.
    pub max_concurrent_reconciles: u16,
    /// Host patterns webhook gates may call (`--webhook-allow`).
    pub webhook_allow: Vec<String>,
    /// The operator's namespace (`POD_NAMESPACE`); `default` when empty.
    pub operator_namespace: String,
    /// Labels of the operator's pods, `key=value,...` (`--operator-pod-labels`).
    pub operator_pod_labels: String,
}

#[derive(Debug, Clone)]
pub struct LeaderElection {
    pub lease_name: String,
    pub lease_namespace: String,
    /// How long a lease holds without renewal; a standby takes over after it.
    pub lease_duration: Duration,
}

/// Why the operator stopped.
#[derive(Debug, PartialEq, Eq)]
pub enum Stopped {
    /// Asked to stop (SIGTERM / Ctrl-C).
    Shutdown,
    /// Another replica holds the lease now; restarting makes this one a standby.
    LostLeadership,
}

/// Run until `shutdown` resolves or leadership is lost. Errors are for a person:
/// the CRD is missing, the cluster cannot be reached, the lease cannot be used.
pub async fn run(
    client: Client,
    config: OperatorConfig,
    metrics: Metrics,
    readiness: Readiness,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<Stopped, String> {
    let shutdown = shutdown.shared();
    let settings = settings(&config)?;
    controller::preflight(&client, &settings).await?;
    if let Some(addr) = config.metrics_addr {
        serve_telemetry(addr, &metrics, &readiness, shutdown.clone()).await?;
    }
    let Some(le) = config.leader_election.clone() else {
        controller::run(client, settings, metrics, readiness, shutdown).await;
        return Ok(Stopped::Shutdown);
    };
    let controllers = Controllers {
        client,
        settings,
        metrics,
        readiness,
    };
    run_as_leader(controllers, &le, &config.identity, shutdown).await
}

/// The controllers to run, and what they need, once this replica may run them.
struct Controllers {
    client: Client,
    settings: Settings,
    metrics: Metrics,
    readiness: Readiness,
}

/// The controllers' settings from the operator's, with the webhook notifier
/// started if there is one.
fn settings(config: &OperatorConfig) -> Result<Settings, String> {
    let notifier = match config.webhook_url.as_deref() {
        Some(url) => Some(crate::notify::Notifier::start(url)?),
        None => None,
    };
    let webhook_allow = config
        .webhook_allow
        .iter()
        .filter(|p| !p.trim().is_empty())
        .map(|p| {
            crate::api::gates::HostPattern::parse(p).map_err(|e| format!("--webhook-allow: {e}"))
        })
        .collect::<Result<Vec<_>, String>>()?;
    let operator_peer = crate::resources::OperatorPeer {
        namespace: Some(config.operator_namespace.trim())
            .filter(|n| !n.is_empty())
            .unwrap_or("default")
            .to_string(),
        pod_labels: crate::api::network::parse_labels(&config.operator_pod_labels)
            .map_err(|e| format!("--operator-pod-labels: {e}"))?,
    };
    let selector = crate::api::shard::parse_selector(&config.selector)
        .map_err(|e| format!("--selector: {e}"))?;
    let prometheus = prometheus_client(config)?;
    Ok(Settings {
        namespaces: config.namespaces.clone(),
        selector,
        instance: config.identity.clone(),
        prometheus,
        scrape: config.scrape.clone(),
        notifier,
        max_concurrent_reconciles: config.max_concurrent_reconciles,
        webhook_allow,
        operator_peer,
    })
}

/// The Prometheus client, its flags and files checked now: a bad one stops
/// the operator instead of every query quietly going out without credentials.
fn prometheus_client(
    config: &OperatorConfig,
) -> Result<Option<crate::metrics::prometheus::PromClient>, String> {
    let auth = config.prometheus_auth.check()?;
    let Some(url) = config.prometheus_url.as_deref() else {
        if auth.is_plain() {
            return Ok(None);
        }
        return Err(
            "--prometheus-* credentials or TLS flags are set but --prometheus-url is not".into(),
        );
    };
    if !auth.is_plain() && !url.starts_with("https://") {
        // A token or password over plain http is readable on the wire.
        return Err(format!(
            "--prometheus-url {url}: credentials and TLS flags need an https:// address"
        ));
    }
    let tls = auth.load()?;
    crate::metrics::prometheus::PromClient::with_auth(url, config.scrape.timeout, &auth, tls)
        .map(Some)
        .map_err(|e| format!("--prometheus-url {url}: {e}"))
}

/// Listen on `addr` now (so a busy port is an error at start), and serve
/// `/metrics`, `/healthz` and `/readyz` in the background until `shutdown`.
async fn serve_telemetry(
    addr: SocketAddr,
    metrics: &Metrics,
    readiness: &Readiness,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), String> {
    let (m, r) = (metrics.clone(), readiness.clone());
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| format!("cannot listen on {addr} for metrics and health: {e}"))?;
    tokio::spawn(async move {
        if let Err(e) = telemetry::serve_on(listener, m, r, shutdown).await {
            warn!(error = %e, "telemetry server stopped");
        }
    });
    Ok(())
}

/// Wait as a standby for the lease, run the controllers while holding it,
/// then release it.
async fn run_as_leader<S>(
    controllers: Controllers,
    le: &LeaderElection,
    identity: &str,
    shutdown: S,
) -> Result<Stopped, String>
where
    S: std::future::Future<Output = ()> + Clone + Send + 'static,
{
    controllers.readiness.standby();
    let readiness = controllers.readiness.clone();
    let manager = tokio::select! {
        made = lease_manager(&controllers.client, le, identity) => made?,
        _ = shutdown.clone() => return Ok(Stopped::Shutdown),
    };
    let (mut leading, lease_task) = manager.watch().await;

    info!(lease = %le.lease_name, identity = %identity, "waiting for the leader lease");
    let outcome = tokio::select! {
        got = acquired(&mut leading) => {
            if !got {
                return Err("the leader lease watch stopped".into());
            }
            info!(identity = %identity, "acquired the leader lease");
            lead(controllers, leading.clone(), shutdown.clone()).await
        }
        _ = shutdown.clone() => Stopped::Shutdown,
    };
    readiness.starting();
    // Dropping the channel makes the manager release the lease, so a standby
    // takes over at once instead of after the lease expires.
    drop(leading);
    match tokio::time::timeout(Duration::from_secs(5), lease_task).await {
        Ok(Ok(Ok(_))) => info!("released the leader lease"),
        Ok(Ok(Err(e))) => warn!(error = %e, "releasing the leader lease"),
        Ok(Err(e)) => warn!(error = %e, "lease task"),
        Err(_) => warn!("timed out releasing the leader lease"),
    }
    Ok(outcome)
}

/// The lease manager, which reads the lease and creates it if missing. An
/// answer the API server may give otherwise soon (no connection, 429, 5xx)
/// is tried again, 1 s later and doubling up to 30 s, while this replica
/// stays a standby: the client never retries a create itself, and exiting
/// would put the pod in CrashLoopBackOff over one throttled request on a
/// first install. Anything else (forbidden, invalid) is the error it is.
async fn lease_manager(
    client: &Client,
    le: &LeaderElection,
    identity: &str,
) -> Result<LeaseManager, String> {
    // The lease crate needs 0 < grace < duration.
    let duration = le.lease_duration.as_secs().max(2);
    let grace = (duration / 3).max(1);
    let mut delay = Duration::from_secs(1);
    loop {
        let made = LeaseManagerBuilder::new(client.clone(), &le.lease_name)
            .with_namespace(&le.lease_namespace)
            .with_identity(identity)
            .with_duration(duration)
            .with_grace(grace)
            .build()
            .await;
        let error = match made {
            Ok(manager) => return Ok(manager),
            Err(e) => e,
        };
        let what = format!(
            "cannot set up the leader lease {}/{}: {error}",
            le.lease_namespace, le.lease_name
        );
        if !lease_error_passes(&error) {
            return Err(what);
        }
        warn!(error = %what, retry_in_s = delay.as_secs(), "trying again");
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(Duration::from_secs(30));
    }
}

/// Whether asking again soon may get another answer: a refusal for now or
/// the connection failing. A TLS handshake that fails (a wrong CA) comes as
/// a connection error too and is asked again, logged each time; a request
/// the client cannot even build is not.
fn lease_error_passes(error: &kube_lease_manager::LeaseManagerError) -> bool {
    let kube_lease_manager::LeaseManagerError::KubeError(error) = error else {
        return false;
    };
    match error {
        kube::Error::Api(s) => s.code == 429 || s.code >= 500,
        kube::Error::HyperError(_) | kube::Error::Service(_) | kube::Error::ReadEvents(_) => true,
        _ => false,
    }
}

/// True once this replica holds the lease; false if the lease watch stopped.
async fn acquired(leading: &mut watch::Receiver<bool>) -> bool {
    while !*leading.borrow_and_update() {
        if leading.changed().await.is_err() {
            return false;
        }
    }
    true
}

/// Run the controllers until `shutdown` or the lease is lost, then stop them
/// and let in-flight reconciles finish before the lease is released.
async fn lead(
    controllers: Controllers,
    leading: watch::Receiver<bool>,
    shutdown: impl std::future::Future<Output = ()>,
) -> Stopped {
    let lost = lost_leadership(leading);
    let (stop_tx, stop_rx) = watch::channel(false);
    let stop = {
        let mut stop_rx = stop_rx.clone();
        async move {
            let _ = stop_rx.wait_for(|s| *s).await;
        }
    };
    let run = controller::run(
        controllers.client,
        controllers.settings,
        controllers.metrics,
        controllers.readiness,
        stop,
    );
    tokio::pin!(run);
    let reason = tokio::select! {
        _ = shutdown => Stopped::Shutdown,
        _ = lost => Stopped::LostLeadership,
        _ = &mut run => Stopped::Shutdown,
    };
    let _ = stop_tx.send(true);
    // Let in-flight reconciles finish before the lease is released.
    let _ = tokio::time::timeout(Duration::from_secs(20), run).await;
    reason
}

async fn lost_leadership(mut leading: watch::Receiver<bool>) {
    loop {
        if leading.changed().await.is_err() || !*leading.borrow_and_update() {
            warn!("lost the leader lease");
            return;
        }
    }
}

/// How the operator's client retries an answer of 429, 503 or 504 before the
/// error reaches the controller: a few quick tries, then the controller's own
/// error backoff and the watches' backoff take over. kube's default
/// (`RetryPolicy::server_retry`: 15 tries, delays doubling up to 1000 s) can
/// hold one reconcile for minutes under throttling. In the real-server
/// faults measured so far (docs/operating.md) the two made no difference:
/// this bound is a safeguard, not a measured fix.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientRetries {
    pub first_delay: Duration,
    pub max_delay: Duration,
    pub tries: u32,
}

pub const CLIENT_RETRIES: ClientRetries = ClientRetries {
    first_delay: Duration::from_millis(200),
    max_delay: Duration::from_secs(2),
    tries: 3,
};

impl ClientRetries {
    /// The base delays' sum over all tries, before jitter (kube adds up to
    /// twice each, still capped per try; a server's `Retry-After` may ask for
    /// more).
    pub fn longest_wait(&self) -> Duration {
        (0..self.tries)
            .map(|n| {
                self.first_delay
                    .saturating_mul(2u32.saturating_pow(n))
                    .min(self.max_delay)
            })
            .sum()
    }

    fn policy(&self) -> Result<kube::client::retry::RetryPolicy, String> {
        kube::client::retry::RetryPolicy::new(self.first_delay, self.max_delay, self.tries, true)
            .map_err(|e| format!("client retries: first_delay must not exceed max_delay: {e}"))
    }
}

/// The operator's client: the inferred configuration (in-cluster service
/// account or kubeconfig) with [`CLIENT_RETRIES`] instead of kube's default
/// retries.
pub async fn operator_client() -> Result<Client, String> {
    let config = kube::Config::infer().await.map_err(|e| e.to_string())?;
    client_with_retries(config)
}

/// A client for `config` with the operator's retries ([`CLIENT_RETRIES`],
/// none for a create). The tests that run the operator in their own process
/// build its client with this too, so they retry as the binary does.
pub fn client_with_retries(mut config: kube::Config) -> Result<Client, String> {
    config.default_retry = false;
    let retries = tower::retry::RetryLayer::new(NoCreateRetry(CLIENT_RETRIES.policy()?));
    // Retry needs a service it can clone; kube's stack is boxed, so it goes
    // behind a buffer (one worker task that owns the stack).
    let buffer = tower::buffer::BufferLayer::new(1024);
    Ok(kube::client::ClientBuilder::try_from(config)
        .map_err(|e| e.to_string())?
        .with_layer(&buffer)
        .with_layer(&retries)
        .build())
}

/// [`CLIENT_RETRIES`], but never for a POST: a create answered 504 may have
/// been made, and only the caller knows whether trying again is safe (it
/// reads a 409 as made already, and an event it could not record is tried
/// again, and followed up, by the reconcile).
#[derive(Clone)]
struct NoCreateRetry(kube::client::retry::RetryPolicy);

type ApiRequest = http::Request<kube::client::Body>;

impl<Res> tower::retry::Policy<ApiRequest, http::Response<Res>, tower::BoxError> for NoCreateRetry {
    type Future = tokio::time::Sleep;

    fn retry(
        &mut self,
        req: &mut ApiRequest,
        result: &mut Result<http::Response<Res>, tower::BoxError>,
    ) -> Option<Self::Future> {
        if req.method() == http::Method::POST {
            return None;
        }
        self.0.retry(req, result)
    }

    fn clone_request(&mut self, req: &ApiRequest) -> Option<ApiRequest> {
        if req.method() == http::Method::POST {
            return None;
        }
        <kube::client::retry::RetryPolicy as tower::retry::Policy<
            ApiRequest,
            http::Response<Res>,
            tower::BoxError,
        >>::clone_request(&mut self.0, req)
    }
}

#[cfg(test)]
mod client_retry_tests {
    use super::*;
    use tower::retry::Policy;

    fn answered(code: u16) -> Result<http::Response<()>, tower::BoxError> {
        Ok(http::Response::builder().status(code).body(()).unwrap())
    }

    #[tokio::test]
    async fn a_create_is_never_retried_by_the_client_other_requests_are() {
        let mut policy = NoCreateRetry(CLIENT_RETRIES.policy().unwrap());
        let request = |method: http::Method| {
            http::Request::builder()
                .method(method)
                .uri("/api/v1/namespaces/ml/events")
                .body(kube::client::Body::empty())
                .unwrap()
        };
        let mut post = request(http::Method::POST);
        let mut patch = request(http::Method::PATCH);
        for code in [429, 503, 504] {
            assert!(
                policy.retry(&mut post, &mut answered(code)).is_none(),
                "{code}"
            );
            assert!(
                policy.retry(&mut patch, &mut answered(code)).is_some(),
                "{code}"
            );
        }
        assert!(
            <NoCreateRetry as Policy<_, http::Response<()>, _>>::clone_request(&mut policy, &post)
                .is_none()
        );
        assert!(
            <NoCreateRetry as Policy<_, http::Response<()>, _>>::clone_request(&mut policy, &patch)
                .is_some()
        );
    }

    #[test]
    fn the_operator_client_gives_up_within_seconds() {
        assert!(CLIENT_RETRIES.policy().is_ok());
        assert_eq!(CLIENT_RETRIES.longest_wait(), Duration::from_millis(1400));
    }

    #[test]
    fn a_first_delay_above_the_cap_is_refused_by_name() {
        let bad = ClientRetries {
            first_delay: Duration::from_secs(5),
            ..CLIENT_RETRIES
        };
        let err = bad.policy().err().expect("refused");
        assert!(err.contains("first_delay"), "{err}");
    }
}
