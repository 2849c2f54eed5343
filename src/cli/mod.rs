//! The `kubectl modeldeploy` plugin. What it prints is pure (`render`,
//! `table`, `output`), so the output is tested without a cluster; the rest
//! reads the flags (`args`), connects as kubectl would (`connect`), follows
//! objects (`watch`), sends requests (`requests`) and runs the commands
//! (`commands`).

mod args;
mod commands;
mod connect;
mod output;
mod render;
mod requests;
mod table;
mod watch;

pub use args::{Args, ClusterFlags, Command, Format, Steer, one_line};
pub use commands::run;
pub use connect::{Connection, connect};
pub use output::{as_list, render_object};
pub use render::{render_history, render_revision_diff, render_status};
pub use requests::{PLUGIN_FIELD_MANAGER, request_id, send_request, wait_for_request};
pub use table::{human_age, render_table};
pub use watch::{Change, change, changes};

/// What can go wrong in the plugin, each on one line that names the flag or
/// the object.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The kubeconfig, the context or the in-cluster identity cannot be used.
    #[error("{0}")]
    Config(String),
    #[error("ModelDeployment {name} not found in namespace {namespace}")]
    NotFound { name: String, namespace: String },
    /// The API server answered with an error, or could not be reached.
    #[error("cannot {what}: {cause}")]
    Kube { what: String, cause: String },
    /// The object is not a ModelDeployment this plugin can read.
    #[error("cannot read ModelDeployment {name}: {cause}")]
    Decode { name: String, cause: String },
    /// A request that does not apply now, or that the operator did not carry
    /// out in time.
    #[error("{0}")]
    Request(String),
}

impl Error {
    /// A failed call to the API server: its message when it answered, the
    /// causes otherwise (e.g. `tcp connect error: Connection refused`).
    pub fn kube(what: impl Into<String>, e: kube::Error) -> Self {
        let cause = match &e {
            kube::Error::Api(s) if !s.message.is_empty() => s.message.clone(),
            _ => causes(&e),
        };
        Error::Kube {
            what: what.into(),
            cause,
        }
    }
}

/// An error and its sources on one line, each said once.
pub(crate) fn causes(e: &dyn std::error::Error) -> String {
    let mut parts: Vec<String> = vec![e.to_string()];
    let mut source = e.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !parts.last().is_some_and(|last| last.contains(&text)) {
            parts.push(text);
        }
        source = s.source();
    }
    parts.join(": ")
}
