//! The plugin's flags and commands, as kubectl users expect them: the
//! cluster flags of kubectl (`--kubeconfig`, `--context`, `-n`) on every
//! command, `-o json|yaml` where an object is printed.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, Subcommand, ValueEnum};

use crate::rollout::requests::RequestAction;

#[derive(Parser, Debug)]
#[command(
    name = "kubectl-modeldeploy",
    bin_name = "kubectl modeldeploy",
    version,
    about = "Inspect and steer ModelDeployment rollouts"
)]
pub struct Args {
    #[command(flatten)]
    pub cluster: ClusterFlags,
    #[command(subcommand)]
    pub command: Command,
}

/// Which cluster, identity and namespace, chosen as kubectl chooses them.
#[derive(clap::Args, Debug, Clone, Default, PartialEq)]
pub struct ClusterFlags {
    /// The kubeconfig file to use (instead of $KUBECONFIG or ~/.kube/config).
    #[arg(long, global = true, value_name = "FILE")]
    pub kubeconfig: Option<PathBuf>,
    /// The kubeconfig context to use (instead of its current-context).
    #[arg(long, global = true, value_name = "NAME")]
    pub context: Option<String>,
    /// Namespace (instead of the context's, else `default`).
    #[arg(short, long, global = true)]
    pub namespace: Option<String>,
}

/// How an object is printed: the command's own text when absent.
#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// The whole object, as `kubectl get -o json` prints it.
    Json,
    /// The whole object, as `kubectl get -o yaml` prints it.
    Yaml,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// The ModelDeployments of the namespace: phase, stable and canary
    /// versions, age.
    #[command(visible_alias = "ls")]
    List {
        /// Every namespace (adds a NAMESPACE column).
        #[arg(short = 'A', long)]
        all_namespaces: bool,
        /// Print the whole object(s) instead of text.
        #[arg(short, long, value_enum, value_name = "FORMAT")]
        output: Option<Format>,
    },
    /// One ModelDeployment as a row of `list`, or the whole object.
    Get {
        name: String,
        /// Print the whole object(s) instead of text.
        #[arg(short, long, value_enum, value_name = "FORMAT")]
        output: Option<Format>,
    },
    /// Phase, step, weights, checks, drift and history.
    Status {
        name: String,
        /// Print the whole object(s) instead of text.
        #[arg(short, long, value_enum, value_name = "FORMAT")]
        output: Option<Format>,
        /// Print again on every change until the object is deleted or Ctrl-C.
        #[arg(short, long)]
        watch: bool,
        /// Stop watching after this long (e.g. 30s, 5m).
        #[arg(long, requires = "watch", value_parser = parse_timeout)]
        timeout: Option<Duration>,
    },
    /// The revision history; `--diff A B` shows what changed in the pods
    /// between two stored revisions.
    History {
        name: String,
        #[arg(long, num_args = 2, value_names = ["A", "B"])]
        diff: Option<Vec<i64>>,
    },
    #[command(flatten)]
    Steer(Steer),
}

/// The commands that steer a rollout by sending a request.
#[derive(Subcommand, Debug)]
pub enum Steer {
    /// Finish the current step (or pause) and go on; --full skips the rest.
    Promote {
        name: String,
        #[arg(long)]
        full: bool,
        #[command(flatten)]
        wait: Wait,
    },
    /// Stop shifting traffic until resumed.
    Pause {
        name: String,
        #[command(flatten)]
        wait: Wait,
    },
    /// Continue a paused rollout.
    Resume {
        name: String,
        #[command(flatten)]
        wait: Wait,
    },
    /// Roll the current canary back now.
    Abort {
        name: String,
        #[command(flatten)]
        wait: Wait,
    },
    /// Try a rolled-back revision again.
    Retry {
        name: String,
        #[command(flatten)]
        wait: Wait,
    },
    /// Serve an older revision (it must still be stored: see revisionHistoryLimit).
    Rollback {
        name: String,
        #[arg(long)]
        to_revision: i64,
        #[command(flatten)]
        wait: Wait,
    },
}

#[derive(clap::Args, Debug, Clone, Copy)]
pub struct Wait {
    /// Return once the request is sent, without waiting for the operator.
    #[arg(long)]
    pub no_wait: bool,
}

impl Steer {
    /// The object, the request, and whether to wait for the operator.
    pub fn request(&self) -> (&str, RequestAction, Wait) {
        let (name, action, wait) = match self {
            Steer::Promote { name, full, wait } => (
                name,
                if *full {
                    RequestAction::PromoteFull
                } else {
                    RequestAction::Promote
                },
                wait,
            ),
            Steer::Pause { name, wait } => (name, RequestAction::Pause, wait),
            Steer::Resume { name, wait } => (name, RequestAction::Resume, wait),
            Steer::Abort { name, wait } => (name, RequestAction::Abort, wait),
            Steer::Retry { name, wait } => (name, RequestAction::Retry, wait),
            Steer::Rollback {
                name,
                to_revision,
                wait,
            } => (
                name,
                RequestAction::RollbackTo {
                    revision: *to_revision,
                },
                wait,
            ),
        };
        (name.as_str(), action, *wait)
    }
}

/// A Go duration, as kubectl's `--timeout` takes it.
fn parse_timeout(value: &str) -> Result<Duration, String> {
    let d: kube::core::Duration = value
        .parse()
        .map_err(|e| format!("{value:?} is not a duration such as 30s, 5m or 1h ({e})"))?;
    if d.is_negative() {
        return Err(format!("{value:?} is negative"));
    }
    Ok(d.into())
}

/// A clap error on one line (kubectl's habit): the message, the valid
/// values, the usage; without the `--help` advice.
pub fn one_line(rendered: &str) -> String {
    let mut parts: Vec<String> = Vec::new();
    for line in rendered.lines().map(str::trim) {
        if line.is_empty() || line.starts_with("For more information") {
            continue;
        }
        if let Some(usage) = line.strip_prefix("Usage: ") {
            parts.push(format!("(usage: {usage})"));
        } else {
            parts.push(line.to_string());
        }
    }
    parts.join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Args, clap::Error> {
        Args::try_parse_from(std::iter::once("kubectl-modeldeploy").chain(args.iter().copied()))
    }

    #[test]
    fn cluster_flags_go_before_or_after_the_command() {
        let before = parse(&["--context", "prod", "-n", "risk", "ls"]).unwrap();
        let after = parse(&["list", "--kubeconfig", "kc.yaml", "--context", "prod"]).unwrap();
        assert_eq!(before.cluster.context.as_deref(), Some("prod"));
        assert_eq!(before.cluster.namespace.as_deref(), Some("risk"));
        assert!(matches!(before.command, Command::List { .. }));
        assert_eq!(after.cluster.kubeconfig, Some(PathBuf::from("kc.yaml")));
        assert_eq!(after.cluster.context.as_deref(), Some("prod"));
        assert_eq!(after.cluster.namespace, None);
    }

    #[test]
    fn output_takes_json_or_yaml_and_names_the_flag_otherwise() {
        let a = parse(&["list", "-A", "-o", "json"]).unwrap();
        assert!(matches!(
            a.command,
            Command::List {
                all_namespaces: true,
                output: Some(Format::Json)
            }
        ));
        let a = parse(&["get", "scorer", "--output", "yaml"]).unwrap();
        assert!(matches!(
            a.command,
            Command::Get {
                output: Some(Format::Yaml),
                ..
            }
        ));
        let e = parse(&["status", "scorer", "-o", "xml"]).unwrap_err();
        let line = one_line(&e.render().to_string());
        assert!(!line.contains('\n'), "{line}");
        assert!(
            line.contains("'xml'") && line.contains("--output") && line.contains("json, yaml"),
            "{line}"
        );
    }

    #[test]
    fn watch_takes_a_go_duration_as_timeout() {
        let a = parse(&["status", "scorer", "-w", "--timeout", "1m30s"]).unwrap();
        let Command::Status { watch, timeout, .. } = a.command else {
            panic!("status");
        };
        assert!(watch);
        assert_eq!(timeout, Some(Duration::from_secs(90)));
        let e = parse(&["status", "scorer", "-w", "--timeout", "soon"]).unwrap_err();
        assert!(one_line(&e.render().to_string()).contains("--timeout"));
        // A timeout means nothing without --watch.
        assert!(parse(&["status", "scorer", "--timeout", "1m"]).is_err());
    }

    #[test]
    fn a_missing_name_is_one_line_with_the_usage() {
        let e = parse(&["status"]).unwrap_err();
        let line = one_line(&e.render().to_string());
        assert!(
            line.contains("<NAME>") && line.contains("(usage: kubectl modeldeploy status"),
            "{line}"
        );
        assert!(!line.contains("--help"), "{line}");
    }

    #[test]
    fn steering_commands_carry_their_request() {
        let steer = |args: &[&str]| match parse(args).unwrap().command {
            Command::Steer(s) => s,
            other => panic!("{other:?}"),
        };
        let rollback = steer(&["rollback", "scorer", "--to-revision", "3", "--no-wait"]);
        let (name, action, wait) = rollback.request();
        assert_eq!(name, "scorer");
        assert_eq!(action, RequestAction::RollbackTo { revision: 3 });
        assert!(wait.no_wait);
        let (_, action, wait) = steer(&["promote", "scorer", "--full"]).request();
        assert_eq!(action, RequestAction::PromoteFull);
        assert!(!wait.no_wait);
    }
}
