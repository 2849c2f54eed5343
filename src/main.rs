//! `modeldeploy`: the operator, and the generated CRD.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use modeldeploy::operator::{self, LeaderElection, OperatorConfig, Stopped};
use modeldeploy::telemetry::{self, Metrics, Readiness};

#[derive(Parser)]
#[command(
    name = "modeldeploy",
    version,
    about = "Releases machine-learning model servers safely on Kubernetes"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Print the ModelDeployment CustomResourceDefinition (YAML).
    Crd,
    /// Run the operator against the cluster of the current kubeconfig or service account.
    Operator(Box<OperatorArgs>),
}

#[derive(clap::Args)]
struct OperatorArgs {
    /// Namespaces to watch, comma separated; all namespaces when empty.
    #[arg(
        long,
        env = "WATCH_NAMESPACES",
        value_delimiter = ',',
        default_value = ""
    )]
    namespaces: Vec<String>,
    /// This shard's ModelDeployments: a label selector such as
    /// `modeldeploy.io/shard=a`; all when empty. Give each shard its own
    /// `--lease-name`.
    #[arg(long, env = "MODELDEPLOY_SELECTOR", default_value = "")]
    selector: String,
    /// Address for /metrics, /healthz and /readyz.
    #[arg(long, env = "METRICS_ADDR", default_value = "0.0.0.0:8080")]
    metrics_addr: SocketAddr,
    /// Log filter when RUST_LOG is not set (e.g. info, modeldeploy=debug).
    #[arg(long, env = "LOG_LEVEL", default_value = "info")]
    log_level: String,
    /// Log as JSON lines.
    #[arg(long, env = "LOG_JSON")]
    log_json: bool,
    /// Elect a leader through a coordination.k8s.io Lease so only one replica acts.
    #[arg(long, env = "LEADER_ELECTION", default_value_t = true, action = clap::ArgAction::Set)]
    leader_election: bool,
    #[arg(long, env = "LEASE_NAME", default_value = "modeldeploy-leader")]
    lease_name: String,
    /// The operator's own namespace: where its Lease lives, and whose pods
    /// every `spec.networkPolicy` lets in.
    #[arg(long, env = "POD_NAMESPACE", default_value = "default")]
    lease_namespace: String,
    /// Seconds a lease holds without renewal.
    #[arg(long, env = "LEASE_DURATION_SECONDS", default_value_t = 15)]
    lease_duration_seconds: u64,
    /// This replica's identity in the lease and in events.
    #[arg(long, env = "POD_NAME")]
    identity: Option<String>,
    /// Prometheus for ModelDeployments with `metrics.source: prometheus`.
    #[arg(long, env = "PROMETHEUS_URL")]
    prometheus_url: Option<String>,
    /// File holding a bearer token for Prometheus, read again for every query
    /// (projected service-account tokens rotate). Excludes basic auth.
    #[arg(long, env = "PROMETHEUS_BEARER_TOKEN_FILE")]
    prometheus_bearer_token_file: Option<PathBuf>,
    /// Basic-auth user name for Prometheus; needs --prometheus-basic-auth-password-file.
    #[arg(long, env = "PROMETHEUS_BASIC_AUTH_USERNAME")]
    prometheus_basic_auth_username: Option<String>,
    /// File holding the basic-auth password, read again for every query.
    #[arg(long, env = "PROMETHEUS_BASIC_AUTH_PASSWORD_FILE")]
    prometheus_basic_auth_password_file: Option<PathBuf>,
    /// PEM bundle of the CAs that may sign Prometheus' certificate; replaces
    /// the system trust roots.
    #[arg(long, env = "PROMETHEUS_CA_FILE")]
    prometheus_ca_file: Option<PathBuf>,
    /// PEM client certificate (chain) for Prometheus; needs --prometheus-client-key.
    #[arg(long, env = "PROMETHEUS_CLIENT_CERT")]
    prometheus_client_cert: Option<PathBuf>,
    /// PEM private key of --prometheus-client-cert.
    #[arg(long, env = "PROMETHEUS_CLIENT_KEY")]
    prometheus_client_key: Option<PathBuf>,
    /// Pod scrapes in flight at once, across all ModelDeployments.
    #[arg(long, env = "SCRAPE_CONCURRENCY", default_value_t = 64)]
    scrape_concurrency: usize,
    /// Timeout of one pod scrape or Prometheus query.
    #[arg(long, env = "SCRAPE_TIMEOUT_SECONDS", default_value_t = 5)]
    scrape_timeout_seconds: u64,
    /// Largest /metrics response read from a pod.
    #[arg(long, env = "SCRAPE_MAX_BYTES", default_value_t = 4 * 1024 * 1024)]
    scrape_max_bytes: usize,
    /// Post rollout transitions (started, steps, promoted, rolled back, drift)
    /// to this URL as Slack-compatible JSON. Delivery failures are logged only.
    #[arg(long, env = "WEBHOOK_URL")]
    webhook_url: Option<String>,
    /// Reconciles running at once (0: no limit). Bounds memory and API
    /// connections when many objects change together.
    #[arg(long, env = "MAX_CONCURRENT_RECONCILES", default_value_t = 128)]
    max_concurrent_reconciles: u16,
    /// Hosts webhook gates may call, comma separated: `host`, `host:port` or
    /// `*.domain`. A gate whose URL matches none is refused as InvalidSpec.
    #[arg(long, env = "WEBHOOK_ALLOW", value_delimiter = ',', default_value = "")]
    webhook_allow: Vec<String>,
    /// Labels of the operator's own pods, `key=value,...`: every
    /// `spec.networkPolicy` lets these pods of the operator's namespace
    /// (POD_NAMESPACE) in, to scrape metrics; all its pods when empty.
    #[arg(long, env = "OPERATOR_POD_LABELS", default_value = "")]
    operator_pod_labels: String,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Crd => {
            print!("{}", modeldeploy::api::crd_yaml());
            ExitCode::SUCCESS
        }
        Command::Operator(args) => {
            let runtime = match tokio::runtime::Runtime::new() {
                Ok(r) => r,
                Err(e) => {
                    eprintln!("modeldeploy: cannot start the async runtime: {e}");
                    return ExitCode::FAILURE;
                }
            };
            runtime.block_on(run_operator(*args))
        }
    }
}

async fn run_operator(args: OperatorArgs) -> ExitCode {
    telemetry::init_logging(&args.log_level, args.log_json);
    let client = match modeldeploy::operator::operator_client().await {
        Ok(c) => c,
        Err(e) => {
            eprintln!(
                "modeldeploy: no Kubernetes configuration found (in-cluster service account or kubeconfig): {e}"
            );
            return ExitCode::FAILURE;
        }
    };
    let identity = args.identity.clone().unwrap_or_else(|| {
        std::env::var("HOSTNAME").unwrap_or_else(|_| format!("modeldeploy-{}", std::process::id()))
    });
    let operator_namespace = args.lease_namespace.clone();
    let config = OperatorConfig {
        namespaces: args
            .namespaces
            .into_iter()
            .filter(|n| !n.is_empty())
            .collect(),
        selector: args.selector,
        metrics_addr: Some(args.metrics_addr),
        leader_election: args.leader_election.then(|| LeaderElection {
            lease_name: args.lease_name,
            lease_namespace: args.lease_namespace,
            lease_duration: Duration::from_secs(args.lease_duration_seconds),
        }),
        identity,
        prometheus_url: args.prometheus_url.filter(|u| !u.is_empty()),
        prometheus_auth: modeldeploy::metrics::prometheus_auth::PromAuthFlags {
            bearer_token_file: args.prometheus_bearer_token_file,
            basic_auth_username: args.prometheus_basic_auth_username,
            basic_auth_password_file: args.prometheus_basic_auth_password_file,
            ca_file: args.prometheus_ca_file,
            client_cert: args.prometheus_client_cert,
            client_key: args.prometheus_client_key,
        },
        scrape: modeldeploy::metrics::scrape::ScrapeConfig {
            timeout: Duration::from_secs(args.scrape_timeout_seconds.max(1)),
            max_bytes: args.scrape_max_bytes,
            concurrency: args.scrape_concurrency.max(1),
        },
        webhook_url: args.webhook_url.filter(|u| !u.is_empty()),
        max_concurrent_reconciles: args.max_concurrent_reconciles,
        webhook_allow: args.webhook_allow,
        operator_namespace,
        operator_pod_labels: args.operator_pod_labels,
    };
    match operator::run(
        client,
        config,
        Metrics::new(),
        Readiness::default(),
        shutdown_signal(),
    )
    .await
    {
        Ok(Stopped::Shutdown) => ExitCode::SUCCESS,
        Ok(Stopped::LostLeadership) => {
            eprintln!(
                "modeldeploy: lost the leader lease; exiting so this replica restarts as a standby"
            );
            ExitCode::FAILURE
        }
        Err(message) => {
            eprintln!("modeldeploy: {message}");
            ExitCode::FAILURE
        }
    }
}

/// SIGTERM (what Kubernetes sends) or Ctrl-C.
async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
    tracing::info!("shutting down");
}
