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

/// How long one event create may take before it is tried again later: an
/// admission webhook on events that hangs must not hold a reconcile for the
/// client's whole read timeout.
const EVENT_CREATE_TIMEOUT: Duration = Duration::from_secs(5);

/// What became of one event.
#[derive(Debug)]
enum Recorded {
    Now,
    /// An event of this name exists: an earlier life of the operator recorded it.
    Before,
    /// The API server could not take it now (no connection, 429, 5xx): try
    /// again later.
    Later,
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
/// telling it. Events found recorded already are not notified again.
///
/// An event the API server cannot take now is tried again later
/// ([`Telling::TryAgainIn`]); a pass holds the reconcile for at most one
/// create that gets no answer ([`EVENT_CREATE_TIMEOUT`]), so a rollback does
/// not wait for an events API that refuses. What an event tells besides
/// itself goes out all the same. Should a newer transition replace this one
/// first, [`carry_untold`] moves the event into it, so the status write
/// keeps it. `carried` is how far the events at the front of the
/// transition, which came so from an older one, were told then.
pub(super) async fn announce(
    md: &ModelDeployment,
    ctx: &Context,
    status: &ModelDeploymentStatus,
    carried: &[Told],
) -> Telling {
    let Some(t) = &status.transition else {
        return Telling::Done;
    };
    let key = ObjectRef::from_obj(md);
    let uid = md.uid().unwrap_or_default();
    let (mut told, retries) = match told_so_far(ctx, &key, &uid, t, carried) {
        Ok(so_far) => so_far,
        Err(nothing_to_do_now) => return nothing_to_do_now,
    };
    let untold = tell_pass(md, ctx, &uid, t, &mut told).await;
    let retries = if untold { retries.saturating_add(1) } else { 0 };
    let delay = event_retry_delay(retries);
    let sequence = t.sequence;
    lock(&ctx.announced).insert(
        key,
        Announced {
            uid,
            sequence,
            told,
            retries,
            next_try: Instant::now() + if untold { delay } else { Duration::ZERO },
        },
    );
    if untold {
        Telling::TryAgainIn(delay)
    } else {
        Telling::Done
    }
}

/// How far `t`'s events are told, and the failed passes in a row; or what
/// to answer without a pass (a newer transition is told already, or the
/// next retry is not due).
fn told_so_far(
    ctx: &Context,
    key: &ObjectRef<ModelDeployment>,
    uid: &str,
    t: &Transition,
    carried: &[Told],
) -> std::result::Result<(Vec<Told>, u32), Telling> {
    let (mut told, retries) = match lock(&ctx.announced).get(key) {
        Some(a) if a.uid == uid && a.sequence > t.sequence => return Err(Telling::Done),
        // Reconciles come with every pod change; the events API is asked at
        // the retry's pace, not theirs.
        Some(a) if a.uid == uid && a.sequence == t.sequence && a.next_try > Instant::now() => {
            return Err(Telling::TryAgainIn(a.next_try - Instant::now()));
        }
        Some(a) if a.uid == uid && a.sequence == t.sequence => (a.told.clone(), a.retries),
        _ => (carried.to_vec(), 0),
    };
    told.resize(t.events.len(), Told::Not);
    if !recent(t, Timestamp::now()) {
        told.fill(Told::Yes);
    }
    Ok((told, retries))
}

/// One pass over `t`'s untold events, in order, stopping at the first the
/// API server does not take; returns whether one is left untold.
async fn tell_pass(
    md: &ModelDeployment,
    ctx: &Context,
    uid: &str,
    t: &Transition,
    told: &mut [Told],
) -> bool {
    let mut untold = false;
    for (index, e) in t.events.iter().enumerate() {
        let tried = match told[index] {
            Told::Yes => continue,
            Told::Not => false,
            Told::Unsure => true,
        };
        let name = event_name(&md.name_any(), uid, &format!("t{}-{index}", t.sequence));
        let recorded = record(ctx, md.object_ref(&()), name, e.kind, &e.reason, &e.message).await;
        // Followed up at the first try, whatever came of it, unless an
        // earlier life had recorded it (and followed it up).
        if !tried && !matches!(recorded, Recorded::Before) {
            follow_up(md, ctx, t, e);
        }
        told[index] = match recorded {
            Recorded::Now | Recorded::Refused | Recorded::Before => Told::Yes,
            Recorded::Later => Told::Unsure,
        };
        if told[index] == Told::Unsure {
            // The rest waits for the next pass: an events API that hangs
            // costs one create's timeout per pass, not one per event.
            untold = true;
            break;
        }
    }
    // What the rest tells (a rollback's notification, its counter) does not
    // wait for the events API: followed up now, recorded when it can be.
    for (e, told) in t.events.iter().zip(told.iter_mut()) {
        if *told == Told::Not {
            follow_up(md, ctx, t, e);
            *told = Told::Unsure;
        }
    }
    untold
}

/// Whether every event of the newest transition is told.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Telling {
    Done,
    /// Some event could not be recorded yet: reconcile again within this.
    TryAgainIn(Duration),
}

/// 2 s, doubling per failed pass, at most a minute: an events API that
/// refuses for long is asked about once a minute per object.
fn event_retry_delay(retries: u32) -> Duration {
    Duration::from_secs(1u64 << retries.clamp(1, 6)).min(Duration::from_secs(60))
}

/// The most events one transition carries; older carried ones go first.
const MAX_TRANSITION_EVENTS: usize = 20;

/// `next` with the events of `current`'s transition that the API server has
/// not taken yet put in front of its own, if `next` has a newer transition
/// (which replaces `current`'s in status). Returns how far each carried
/// event was told.
pub(super) fn carry_untold(
    md: &ModelDeployment,
    ctx: &Context,
    current: &ModelDeploymentStatus,
    next: &mut ModelDeploymentStatus,
) -> Vec<Told> {
    let (Some(old), Some(new)) = (&current.transition, &mut next.transition) else {
        return Vec::new();
    };
    if new.sequence <= old.sequence {
        return Vec::new();
    }
    let uid = md.uid().unwrap_or_default();
    let untold: Vec<(TransitionEvent, Told)> =
        match lock(&ctx.announced).get(&ObjectRef::from_obj(md)) {
            Some(a) if a.uid == uid && a.sequence == old.sequence => old
                .events
                .iter()
                .zip(&a.told)
                .filter(|(_, told)| **told != Told::Yes)
                .map(|(e, told)| (e.clone(), *told))
                .collect(),
            _ => return Vec::new(),
        };
    let room = MAX_TRANSITION_EVENTS.saturating_sub(new.events.len());
    let dropped = untold.len().saturating_sub(room);
    if dropped > 0 {
        warn!(
            dropped,
            "the API server took none of these events for several transitions; dropping the oldest"
        );
    }
    let (carried, told): (Vec<TransitionEvent>, Vec<Told>) =
        untold.into_iter().skip(dropped).unzip();
    new.events.splice(0..0, carried);
    told
}

/// How far this operator has told an object's newest transition.
#[derive(Debug, Clone)]
pub(super) struct Announced {
    uid: String,
    sequence: i64,
    /// Per event of the transition.
    told: Vec<Told>,
    /// Passes in a row that left an event untold.
    retries: u32,
    /// Not asked again before this.
    next_try: Instant,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Told {
    Not,
    /// Tried and followed up, but not known to be recorded: the API server
    /// could not take it, or took it and the answer was lost.
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
    let Ok(created) = tokio::time::timeout(
        EVENT_CREATE_TIMEOUT,
        api.create(&PostParams::default(), &event),
    )
    .await
    else {
        warn!(
            reason,
            timeout_s = EVENT_CREATE_TIMEOUT.as_secs(),
            "cannot record event now (no answer); trying again"
        );
        return Recorded::Later;
    };
    match created {
        Ok(_) => Recorded::Now,
        Err(kube::Error::Api(s)) if s.code == 409 => Recorded::Before,
        Err(e) if worth_retrying(&e) => {
            warn!(error = %e, reason, "cannot record event now; trying again");
            Recorded::Later
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
