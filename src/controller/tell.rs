//! Telling a person: events for `kubectl describe`, notifications.
//!
//! Each event has a name made from what it tells (the object's uid and the
//! transition's number, or the version of an object that does not decode),
//! so recording it twice finds it recorded: this is how a transition's
//! events are recorded once across restarts (see `rollout::announce`).

use k8s_openapi::api::core::v1::ObjectReference;
use k8s_openapi::api::events::v1::Event;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};

use super::*;
use crate::api::{Transition, TransitionEvent};
use crate::rollout::announce::{MAX_MESSAGE, truncate};

/// How long the API server keeps events (kube-apiserver's `--event-ttl`
/// default). A transition older than this, found after a restart, is not
/// recorded again: its events have expired either way.
const EVENT_TTL: Duration = Duration::from_secs(3600);

/// What became of one event.
#[derive(Debug)]
enum Recorded {
    Now,
    /// An event of this name exists: an earlier life of the operator recorded it.
    Before,
    /// The API server could not take it now (no connection, 429, 5xx): try
    /// again before anything newer is told.
    Later(kube::Error),
    /// Refused for good (forbidden, invalid): logged, not tried again.
    Refused,
}

/// An object that does not decode: say so once per version of it, touch nothing.
pub(super) async fn report_undecodable(
    guard: &Watched,
    invalid: &InvalidObject,
    ctx: &Context,
) -> Result<Action> {
    let key = ObjectRef::from_obj(guard);
    let version = guard.resource_version().unwrap_or_default();
    let first =
        lock(&ctx.reported_undecodable).insert(key, version.clone()) != Some(version.clone());
    if first {
        warn!(error = %invalid.error, "cannot decode the object; leaving it and its children as they are");
        let name = event_name(
            &guard.name_any(),
            &guard.uid().unwrap_or_default(),
            &format!("v{version}"),
        );
        let note = format!("cannot decode the object: {}", invalid.error);
        record(
            ctx,
            guard.object_ref(&()),
            name,
            EventKind::Warning,
            "InvalidSpec",
            &note,
        )
        .await;
    }
    Ok(Action::await_change())
}

/// Record the events of the object's newest transition and send its
/// notifications, once: right after this operator wrote the transition, or,
/// after a restart, in case an earlier life stopped between writing it and
/// telling it. Events found recorded already are not notified again. An event
/// the API server cannot take now is an error, so the reconcile backs off and
/// tells it before it can write a newer transition (which would replace this
/// one in status, and its events with it).
pub(super) async fn announce(
    md: &ModelDeployment,
    ctx: &Context,
    status: &ModelDeploymentStatus,
) -> Result<()> {
    let Some(t) = &status.transition else {
        return Ok(());
    };
    let key = ObjectRef::from_obj(md);
    let uid = md.uid().unwrap_or_default();
    let mut told = match lock(&ctx.announced).get(&key) {
        Some(a) if a.uid == uid && a.sequence > t.sequence => return Ok(()),
        Some(a) if a.uid == uid && a.sequence == t.sequence => a.told.clone(),
        _ => vec![Told::Not; t.events.len()],
    };
    told.resize(t.events.len(), Told::Not);
    if !recent(t, Timestamp::now()) {
        told.fill(Told::Yes);
    }
    let mut later = None;
    for (index, e) in t.events.iter().enumerate() {
        let tried = match told[index] {
            Told::Yes => continue,
            Told::Not => false,
            Told::Unsure => true,
        };
        let name = event_name(&md.name_any(), &uid, &format!("t{}-{index}", t.sequence));
        told[index] =
            match record(ctx, md.object_ref(&()), name, e.kind, &e.reason, &e.message).await {
                Recorded::Now | Recorded::Refused => {
                    follow_up(md, ctx, t, e);
                    Told::Yes
                }
                // Ours, if this life tried before and lost the answer; else an
                // earlier life's, which followed it up.
                Recorded::Before => {
                    if tried {
                        follow_up(md, ctx, t, e);
                    }
                    Told::Yes
                }
                Recorded::Later(error) => {
                    later.get_or_insert(error);
                    Told::Unsure
                }
            };
    }
    let sequence = t.sequence;
    lock(&ctx.announced).insert(
        key,
        Announced {
            uid,
            sequence,
            told,
        },
    );
    match later {
        Some(error) => Err(error.into()),
        None => Ok(()),
    }
}

/// How far this operator has told an object's newest transition.
#[derive(Debug, Clone)]
pub(super) struct Announced {
    uid: String,
    sequence: i64,
    /// Per event of the transition.
    told: Vec<Told>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Told {
    Not,
    /// Asked, but the answer was lost: it may be recorded.
    Unsure,
    /// Recorded (or refused for good) and followed up.
    Yes,
}

/// Whether the API server may take the event if asked again soon.
fn worth_retrying(error: &kube::Error) -> bool {
    match error {
        kube::Error::Api(s) => s.code == 429 || s.code >= 500,
        kube::Error::SerdeError(_) => false,
        _ => true,
    }
}

fn recent(t: &Transition, now: Timestamp) -> bool {
    now.duration_since(t.at.0).as_secs_f64() < EVENT_TTL.as_secs_f64()
}

/// What else an event tells: the rollback counter, a notification.
fn follow_up(md: &ModelDeployment, ctx: &Context, t: &Transition, e: &TransitionEvent) {
    let (ns, name) = (md.namespace().unwrap_or_default(), md.name_any());
    if e.reason == rollout::ROLLED_BACK {
        ctx.metrics.count_rollback(&ns, &name);
    }
    if let Some(notifier) = &ctx.notifier
        && let Some(n) = crate::notify::for_event(&ns, &name, t.version.as_deref(), e)
    {
        notifier.send(n);
    }
}

/// An event's name: the object's name (cut to leave room) and a suffix that
/// is unique per object uid and `what`.
fn event_name(object: &str, uid: &str, what: &str) -> String {
    let mut prefix: String = object.chars().take(200).collect();
    while prefix.ends_with(['-', '.']) {
        prefix.pop();
    }
    let uid: String = uid
        .chars()
        .filter(char::is_ascii_alphanumeric)
        .take(8)
        .collect();
    let what: String = what
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '-'
            }
        })
        .collect();
    format!("{prefix}.{uid}-{what}")
}

/// Create one event; failing to is logged, never a reconcile error.
async fn record(
    ctx: &Context,
    regarding: ObjectReference,
    name: String,
    kind: EventKind,
    reason: &str,
    message: &str,
) -> Recorded {
    let ns = regarding.namespace.clone().unwrap_or_default();
    let event = Event {
        metadata: ObjectMeta {
            name: Some(name),
            namespace: Some(ns.clone()),
            ..Default::default()
        },
        action: Some("Reconcile".into()),
        reason: Some(reason.into()),
        note: Some(truncate(message, MAX_MESSAGE)),
        type_: Some(format!("{kind:?}")),
        event_time: Some(MicroTime(Timestamp::now())),
        regarding: Some(regarding),
        reporting_controller: Some(crate::api::OPERATOR_NAME.into()),
        reporting_instance: Some(ctx.instance.clone()),
        ..Default::default()
    };
    let api: Api<Event> = Api::namespaced(ctx.client.clone(), &ns);
    match api.create(&PostParams::default(), &event).await {
        Ok(_) => Recorded::Now,
        Err(kube::Error::Api(s)) if s.code == 409 => Recorded::Before,
        Err(e) if worth_retrying(&e) => {
            warn!(error = %e, reason, "cannot record event now; trying again");
            Recorded::Later(e)
        }
        Err(e) => {
            warn!(error = %e, reason, "cannot record event");
            Recorded::Refused
        }
    }
}

#[cfg(test)]
mod tests {
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

    use super::*;

    #[test]
    fn event_names_are_valid_and_unique_per_object_and_transition() {
        let uid = "0c5e6a2e-1b7d-4a51-9d1e-3f1f3b2a9c11";
        assert_eq!(event_name("fraud", uid, "t3-0"), "fraud.0c5e6a2e-t3-0");
        assert_ne!(
            event_name("fraud", uid, "t3-0"),
            event_name("fraud", uid, "t3-1")
        );
        assert_ne!(
            event_name("fraud", uid, "t3-0"),
            event_name("fraud", "9a5e6a2e-0000", "t3-0"),
            "a new object of the same name"
        );
        let long = format!("{}-x", "a".repeat(199));
        let name = event_name(&long, uid, "v12");
        assert!(name.len() <= 253, "{}", name.len());
        assert!(
            name.starts_with(&"a".repeat(199)) && !name.contains("-."),
            "{name}"
        );
        assert_eq!(event_name("m", uid, "v1.2"), "m.0c5e6a2e-v1-2");
    }

    #[test]
    fn only_transitions_within_the_event_ttl_are_told_again() {
        let t = |secs: i64| Transition {
            sequence: 1,
            at: Time(Timestamp::from_second(secs).unwrap()),
            version: None,
            events: Vec::new(),
        };
        let now = Timestamp::from_second(10_000).unwrap();
        assert!(recent(&t(10_000 - 60), now));
        assert!(!recent(&t(10_000 - 3_601), now));
    }
}
