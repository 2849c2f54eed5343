//! `kubectl modeldeploy`: see a rollout and steer it by hand. Requests travel
//! as an annotation the operator carries out once (see `rollout::requests`).

use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use k8s_openapi::api::apps::v1::ControllerRevision;
use k8s_openapi::api::core::v1::PodTemplateSpec;
use kube::Client;
use kube::api::{Api, ListParams};
use modeldeploy::api::ModelDeployment;
use modeldeploy::resources::revision_hash;
use modeldeploy::rollout::requests::{Request, RequestAction, applicable};

#[derive(Parser)]
#[command(
    name = "kubectl-modeldeploy",
    version,
    about = "Inspect and steer ModelDeployment rollouts"
)]
struct Cli {
    /// Namespace (defaults to the kubeconfig's).
    #[arg(short, long, global = true)]
    namespace: Option<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Phase, step, weights, checks, drift and history.
    Status { name: String },
    /// The revision history; `--diff A B` shows what changed in the pods
    /// between two stored revisions.
    History {
        name: String,
        #[arg(long, num_args = 2, value_names = ["A", "B"])]
        diff: Option<Vec<i64>>,
    },
    /// Finish the current step (or pause) and go on; --full skips the rest.
    Promote {
        name: String,
        #[arg(long)]
        full: bool,
        #[arg(long)]
        no_wait: bool,
    },
    /// Stop shifting traffic until resumed.
    Pause {
        name: String,
        #[arg(long)]
        no_wait: bool,
    },
    /// Continue a paused rollout.
    Resume {
        name: String,
        #[arg(long)]
        no_wait: bool,
    },
    /// Roll the current canary back now.
    Abort {
        name: String,
        #[arg(long)]
        no_wait: bool,
    },
    /// Try a rolled-back revision again.
    Retry {
        name: String,
        #[arg(long)]
        no_wait: bool,
    },
    /// Serve an older revision (it must still be stored: see revisionHistoryLimit).
    Rollback {
        name: String,
        #[arg(long)]
        to_revision: i64,
        #[arg(long)]
        no_wait: bool,
    },
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("error: {message}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> Result<(), String> {
    let client = Client::try_default()
        .await
        .map_err(|e| format!("no Kubernetes configuration: {e}"))?;
    let api: Api<ModelDeployment> = match &cli.namespace {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::default_namespaced(client.clone()),
    };
    let (name, action, wait) = match cli.command {
        Command::Status { name } => {
            print!(
                "{}",
                modeldeploy::cli::render_status(&get(&api, &name).await?)
            );
            return Ok(());
        }
        Command::History { name, diff: None } => {
            print!(
                "{}",
                modeldeploy::cli::render_history(&get(&api, &name).await?)
            );
            return Ok(());
        }
        Command::History {
            name,
            diff: Some(pair),
        } => {
            let stored: Api<ControllerRevision> = match &cli.namespace {
                Some(ns) => Api::namespaced(client, ns),
                None => Api::default_namespaced(client),
            };
            let a = stored_template(&stored, &name, pair[0]).await?;
            let b = stored_template(&stored, &name, pair[1]).await?;
            print!(
                "{}",
                modeldeploy::cli::render_revision_diff((pair[0], &a), (pair[1], &b))
            );
            return Ok(());
        }
        Command::Promote {
            name,
            full,
            no_wait,
        } => (
            name,
            if full {
                RequestAction::PromoteFull
            } else {
                RequestAction::Promote
            },
            !no_wait,
        ),
        Command::Pause { name, no_wait } => (name, RequestAction::Pause, !no_wait),
        Command::Resume { name, no_wait } => (name, RequestAction::Resume, !no_wait),
        Command::Abort { name, no_wait } => (name, RequestAction::Abort, !no_wait),
        Command::Retry { name, no_wait } => (name, RequestAction::Retry, !no_wait),
        Command::Rollback {
            name,
            to_revision,
            no_wait,
        } => (
            name,
            RequestAction::RollbackTo {
                revision: to_revision,
            },
            !no_wait,
        ),
    };
    let md = get(&api, &name).await?;
    let status = md.status.clone().unwrap_or_default();
    applicable(&status, &revision_hash(&md.spec), &action)
        .map_err(|why| format!("{name}: {why}"))?;
    let id = modeldeploy::cli::request_id();
    modeldeploy::cli::send_request(&api, &name, &Request::new(id.clone(), action)).await?;
    if !wait {
        println!("{name}: request {id} sent");
        return Ok(());
    }
    for _ in 0..60 {
        let md = get(&api, &name).await?;
        if md.status.as_ref().and_then(|s| s.last_request.as_deref()) == Some(id.as_str()) {
            print!("{}", modeldeploy::cli::render_status(&md));
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    Err(format!(
        "{name}: the operator has not picked up request {id} within 30s; is it running?"
    ))
}

/// The pod template stored for revision `revision` of `name`.
async fn stored_template(
    api: &Api<ControllerRevision>,
    name: &str,
    revision: i64,
) -> Result<PodTemplateSpec, String> {
    let selector = format!("{}={name}", modeldeploy::api::labels::NAME);
    let list = api
        .list(&ListParams::default().labels(&selector))
        .await
        .map_err(|e| format!("cannot list the stored revisions of {name}: {e}"))?;
    let cr = list
        .items
        .into_iter()
        .find(|r| r.revision == revision)
        .ok_or_else(|| {
            format!("{name}: revision {revision} is not stored (beyond revisionHistoryLimit?)")
        })?;
    modeldeploy::resources::stored_template(&cr)
}

async fn get(api: &Api<ModelDeployment>, name: &str) -> Result<ModelDeployment, String> {
    api.get(name).await.map_err(|e| match e {
        kube::Error::Api(s) if s.code == 404 => format!("ModelDeployment {name} not found"),
        e => format!("cannot read ModelDeployment {name}: {e}"),
    })
}
