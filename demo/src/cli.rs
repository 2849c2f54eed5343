//! The `modeldeploy-demo` command line: a small model server (and a load
//! generator) for examples and end-to-end tests. Every behaviour switch has a
//! flag and an environment variable, so a bad version can be made on purpose.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

use crate::{Behaviour, Load};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "modeldeploy-demo",
    version,
    about = "Demo model server and load generator"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve /predict, /feedback, /healthz and /metrics.
    Serve {
        #[arg(long, env = "LISTEN", default_value = "0.0.0.0:8080")]
        listen: SocketAddr,
        #[arg(long, env = "MODEL_VERSION", default_value = "1.0.0")]
        model_version: String,
        /// Fraction of requests answered with HTTP 500.
        #[arg(long, env = "ERROR_RATE", default_value_t = 0.0)]
        error_rate: f64,
        /// Milliseconds added to every prediction.
        #[arg(long, env = "LATENCY_MS", default_value_t = 0)]
        latency_ms: u64,
        /// Added to the logit: shifts every prediction.
        #[arg(long, env = "PREDICTION_SHIFT", default_value_t = 0.0)]
        prediction_shift: f64,
        /// Exit after this many predictions (0: at start).
        #[arg(long, env = "CRASH_AFTER")]
        crash_after: Option<u64>,
        /// Seconds before /healthz reports ready.
        #[arg(long, env = "SLOW_START_SECONDS", default_value_t = 0)]
        slow_start_seconds: u64,
        /// Serve POST /fault {"errorRate": x} to make the running server bad.
        #[arg(long, env = "ALLOW_FAULTS")]
        allow_faults: bool,
    },
    /// Send steady traffic (and feedback labels) to a model service.
    Load {
        #[arg(long, env = "TARGET")]
        target: String,
        #[arg(long, env = "RPS", default_value_t = 20.0)]
        rps: f64,
        /// Stop after this many seconds (runs forever without it).
        #[arg(long, env = "DURATION_SECONDS")]
        duration_seconds: Option<u64>,
        /// Added to every input feature (drifted inputs).
        #[arg(long, env = "FEATURE_SHIFT", default_value_t = 0.0)]
        feature_shift: f64,
        #[arg(long, env = "FEATURES", default_value_t = 4)]
        features: usize,
        #[arg(long, env = "FEEDBACK", default_value_t = true, action = clap::ArgAction::Set)]
        feedback: bool,
    },
}

/// Parses the command line and runs it; the binary's `main`.
#[tokio::main]
pub async fn main() -> ExitCode {
    init_logging();
    match Cli::parse().command {
        Command::Serve {
            listen,
            model_version,
            error_rate,
            latency_ms,
            prediction_shift,
            crash_after,
            slow_start_seconds,
            allow_faults,
        } => {
            if !(0.0..=1.0).contains(&error_rate) {
                eprintln!("--error-rate must be within 0..1, got {error_rate}");
                return ExitCode::FAILURE;
            }
            let behaviour = Behaviour {
                version: model_version,
                error_rate,
                latency: Duration::from_millis(latency_ms),
                prediction_shift,
                crash_after,
                slow_start: Duration::from_secs(slow_start_seconds),
                allow_faults,
                process_start: std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .ok()
                    .map(|d| d.as_secs_f64()),
                ..Default::default()
            };
            let stop = async {
                let _ = tokio::signal::ctrl_c().await;
            };
            match crate::serve(listen, behaviour, stop).await {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("cannot serve on {listen}: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Load {
            target,
            rps,
            duration_seconds,
            feature_shift,
            features,
            feedback,
        } => {
            let (sent, failed) = crate::load(Load {
                target: target.trim_end_matches('/').to_string(),
                rps,
                duration: duration_seconds.map(Duration::from_secs),
                feature_shift,
                features,
                feedback,
                seed: std::process::id().into(),
            })
            .await;
            println!("sent {sent} requests, {failed} failed");
            ExitCode::SUCCESS
        }
    }
}

/// Human-readable logs on stderr, level from `RUST_LOG` (default `info`).
fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt().with_env_filter(filter).try_init();
}
