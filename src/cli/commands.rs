//! One function per command: read from the cluster, print with the pure
//! renderers.

use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::PodTemplateSpec;
use k8s_openapi::jiff::Timestamp;
use kube::api::ListParams;
use serde_json::Value;

use super::args::{Args, Command, Format, Steer};
use super::connect::{Connection, connect, decode, with_type};
use super::output::{as_list, render_object};
use super::render::{render_history, render_revision_diff, render_status};
use super::requests::{request_id, send_request, wait_for_request};
use super::table::render_table;
use super::watch::{Change, changes};
use super::{Error, causes};
use crate::resources::revision_hash;
use crate::rollout::requests::{Request, applicable};

/// How long a request waits for the operator unless `--no-wait`.
const REQUEST_WAIT: Duration = Duration::from_secs(30);

/// Runs one command of the plugin.
pub async fn run(args: Args) -> Result<(), Error> {
    let conn = connect(&args.cluster).await?;
    match args.command {
        Command::List {
            all_namespaces,
            output,
        } => list(&conn, all_namespaces, output).await,
        Command::Get { name, output } => get(&conn, &name, output).await,
        Command::Status {
            name,
            output,
            watch: false,
            ..
        } => {
            let object = conn.get(&name).await?;
            print!("{}", render_status_as(&object, output)?);
            Ok(())
        }
        Command::Status {
            name,
            output,
            watch: true,
            timeout,
        } => watch_status(&conn, &name, output, timeout).await,
        Command::History { name, diff: None } => {
            let history = render_history(&decode(&conn.get(&name).await?)?);
            if history.is_empty() {
                eprintln!("{name} has no revision history yet");
            }
            print!("{history}");
            Ok(())
        }
        Command::History {
            name,
            diff: Some(pair),
        } => diff(&conn, &name, pair[0], pair[1]).await,
        Command::Steer(steer) => send(&conn, &steer).await,
    }
}

/// `list`: a table, or a `List` with `-o`; says so on stderr when empty, as
/// kubectl does.
async fn list(
    conn: &Connection,
    all_namespaces: bool,
    output: Option<Format>,
) -> Result<(), Error> {
    let items = conn.list(all_namespaces).await?;
    if let Some(format) = output {
        print!("{}", render_object(&as_list(items), format));
        return Ok(());
    }
    if items.is_empty() {
        if all_namespaces {
            eprintln!("No resources found");
        } else {
            eprintln!("No resources found in {} namespace.", conn.namespace);
        }
        return Ok(());
    }
    let typed = items.iter().map(decode).collect::<Result<Vec<_>, _>>()?;
    print!("{}", render_table(&typed, all_namespaces, Timestamp::now()));
    Ok(())
}

/// `get NAME`: one row of `list`, or the whole object with `-o`.
async fn get(conn: &Connection, name: &str, output: Option<Format>) -> Result<(), Error> {
    let object = conn.get(name).await?;
    match output {
        Some(format) => print!("{}", render_object(&object, format)),
        None => print!(
            "{}",
            render_table(&[decode(&object)?], false, Timestamp::now())
        ),
    }
    Ok(())
}

/// The status text, or the whole object with `-o`.
fn render_status_as(object: &Value, output: Option<Format>) -> Result<String, Error> {
    match output {
        Some(format) => Ok(render_object(object, format)),
        None => Ok(render_status(&decode(object)?)),
    }
}

/// What a watch prints: each rendering that differs from the one before,
/// separated as kubectl separates watched objects (`---` between YAML
/// documents, a blank line between texts).
pub struct WatchPrinter {
    output: Option<Format>,
    last: Option<String>,
}

impl WatchPrinter {
    pub fn new(output: Option<Format>) -> Self {
        Self { output, last: None }
    }

    /// What to print for this state of the object, if anything.
    pub fn next(&mut self, object: &Value) -> Result<Option<String>, Error> {
        let rendered = render_status_as(object, self.output)?;
        if self.last.as_ref() == Some(&rendered) {
            return Ok(None);
        }
        let separator = match (&self.last, self.output) {
            (None, _) | (Some(_), Some(Format::Json)) => "",
            (Some(_), Some(Format::Yaml)) => "---\n",
            (Some(_), None) => "\n",
        };
        let out = format!("{separator}{rendered}");
        self.last = Some(rendered);
        Ok(Some(out))
    }
}

/// `status NAME --watch`: prints the status, then again on every change
/// that shows, until the object is deleted, Ctrl-C or `--timeout`.
async fn watch_status(
    conn: &Connection,
    name: &str,
    output: Option<Format>,
    timeout: Option<Duration>,
) -> Result<(), Error> {
    // Listen for Ctrl-C from now on (the first poll registers the handler),
    // not only once the watch runs.
    let mut interrupted = std::pin::pin!(tokio::signal::ctrl_c());
    let _ = futures::poll!(&mut interrupted);
    let mut printer = WatchPrinter::new(output);
    // A first read, so a missing object or an unreachable cluster fails at
    // once instead of being retried by the watch.
    if let Some(text) = printer.next(&conn.get(name).await?)? {
        print!("{text}");
    }
    let follow = async {
        let mut stream = std::pin::pin!(changes(conn.objects(), name));
        while let Some(change) = stream.next().await {
            match change {
                Ok(Change::Applied(object)) => {
                    let object = with_type(object);
                    if let Some(text) = printer.next(&object)? {
                        print!("{text}");
                    }
                }
                Ok(Change::Deleted) => {
                    eprintln!("ModelDeployment {}/{name} was deleted", conn.namespace);
                    return Ok(());
                }
                Err(e) => eprintln!(
                    "warning: the watch of {name} failed, retrying: {}",
                    causes(&e)
                ),
            }
        }
        Ok(())
    };
    let deadline = async {
        match timeout {
            Some(t) => tokio::time::sleep(t).await,
            None => std::future::pending().await,
        }
    };
    tokio::select! {
        done = follow => done,
        _ = deadline => Ok(()),
        _ = interrupted => Ok(()),
    }
}

/// `history NAME --diff A B`.
async fn diff(conn: &Connection, name: &str, a: i64, b: i64) -> Result<(), Error> {
    let left = stored_template(conn, name, a).await?;
    let right = stored_template(conn, name, b).await?;
    print!("{}", render_revision_diff((a, &left), (b, &right)));
    Ok(())
}

/// The pod template stored for revision `revision` of `name`.
async fn stored_template(
    conn: &Connection,
    name: &str,
    revision: i64,
) -> Result<PodTemplateSpec, Error> {
    let selector = format!("{}={name}", crate::api::labels::NAME);
    let list = conn
        .revisions()
        .list(&ListParams::default().labels(&selector))
        .await
        .map_err(|e| conn.error(format!("list the stored revisions of {name}"), e))?;
    let cr = list
        .items
        .into_iter()
        .find(|r| r.revision == revision)
        .ok_or_else(|| {
            Error::Request(format!(
                "{name}: revision {revision} is not stored (beyond revisionHistoryLimit?)"
            ))
        })?;
    crate::resources::stored_template(&cr).map_err(Error::Request)
}

/// `promote`, `pause`, ...: refused here when it cannot apply, else sent,
/// then (unless `--no-wait`) the status once the operator carried it out.
async fn send(conn: &Connection, steer: &Steer) -> Result<(), Error> {
    let (name, action, wait) = steer.request();
    let md = decode(&conn.get(name).await?)?;
    let status = md.status.clone().unwrap_or_default();
    applicable(&status, &revision_hash(&md.spec), &action)
        .map_err(|why| Error::Request(format!("{name}: {why}")))?;
    let id = request_id();
    let api = conn.typed();
    send_request(&api, name, &Request::new(id.clone(), action)).await?;
    if wait.no_wait {
        println!("{name}: request {id} sent");
        return Ok(());
    }
    let md = wait_for_request(&api, name, &id, REQUEST_WAIT).await?;
    print!("{}", render_status(&md));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn object(phase: &str, resource_version: &str) -> Value {
        json!({
            "apiVersion": "modeldeploy.io/v1alpha1", "kind": "ModelDeployment",
            "metadata": {"name": "scorer", "namespace": "risk", "resourceVersion": resource_version},
            "spec": {"model": {"version": "2.0.0", "image": "m:2"},
                     "resources": {"requests": {"cpu": "1"}, "limits": {"cpu": "1"}}},
            "status": {"phase": phase}
        })
    }

    #[test]
    fn a_text_watch_prints_only_what_changed_on_screen() {
        let mut p = WatchPrinter::new(None);
        let first = p.next(&object("Progressing", "1")).unwrap().unwrap();
        assert!(first.starts_with("Name:        risk/scorer\nPhase:       Progressing"));
        // A new resourceVersion alone changes nothing that the text shows.
        assert_eq!(p.next(&object("Progressing", "2")).unwrap(), None);
        let second = p.next(&object("Stable", "3")).unwrap().unwrap();
        assert!(
            second.starts_with("\nName:        risk/scorer\nPhase:       Stable"),
            "{second}"
        );
    }

    #[test]
    fn a_yaml_watch_separates_documents_and_json_prints_objects_one_after_the_other() {
        let mut yaml = WatchPrinter::new(Some(Format::Yaml));
        let first = yaml.next(&object("Progressing", "1")).unwrap().unwrap();
        assert!(first.starts_with("apiVersion: "), "{first}");
        let second = yaml.next(&object("Progressing", "2")).unwrap().unwrap();
        assert!(second.starts_with("---\napiVersion: "), "{second}");
        let mut json = WatchPrinter::new(Some(Format::Json));
        json.next(&object("Progressing", "1")).unwrap();
        let second = json.next(&object("Stable", "2")).unwrap().unwrap();
        assert!(second.starts_with("{\n"), "{second}");
    }
}
