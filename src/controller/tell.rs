//! Telling a person: events for `kubectl describe`, notifications.

use super::*;

/// An object that does not decode: say so once per version of it, touch nothing.
pub(super) async fn report_undecodable(
    guard: &Watched,
    invalid: &InvalidObject,
    ctx: &Context,
) -> Result<Action> {
    let key = ObjectRef::from_obj(guard);
    let version = guard.resource_version().unwrap_or_default();
    let first = lock(&ctx.reported_undecodable).insert(key, version.clone()) != Some(version);
    if first {
        warn!(error = %invalid.error, "cannot decode the object; leaving it and its children as they are");
        let reference = guard.object_ref(&());
        let note = format!("cannot decode the object: {}", invalid.error);
        let event = event(EventType::Warning, "InvalidSpec", &note);
        if let Err(e) = ctx.recorder.publish(&event, &reference).await {
            warn!(error = %e, "cannot record event");
        }
    }
    Ok(Action::await_change())
}

/// Events are best effort: a failure to record one is logged, never retried
/// into a reconcile error.
pub(super) async fn publish(
    md: &ModelDeployment,
    ctx: &Context,
    type_: EventType,
    reason: &str,
    message: &str,
) {
    let event = event(type_, reason, message);
    if let Err(e) = ctx.recorder.publish(&event, &md.object_ref(&())).await {
        warn!(error = %e, reason, "cannot record event");
    }
}

/// Every event the operator records: the note truncated, action `Reconcile`.
pub(super) fn event(type_: EventType, reason: &str, message: &str) -> Event {
    Event {
        type_,
        reason: reason.into(),
        note: Some(truncate(message, 1000)),
        action: "Reconcile".into(),
        secondary: None,
    }
}

pub(super) fn truncate(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_string();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}

/// A transition's notes as events (and the rollback counter), and as
/// notifications when a webhook is configured.
pub(super) async fn tell_transitions(
    md: &ModelDeployment,
    ctx: &Context,
    before: &ModelDeploymentStatus,
    decision: &rollout::Decision,
) {
    let (ns, name) = (md.namespace().unwrap_or_default(), md.name_any());
    for note in &decision.notes {
        let kind = match note.kind {
            NoteKind::Normal => EventType::Normal,
            NoteKind::Warning => EventType::Warning,
        };
        publish(md, ctx, kind, note.reason, &note.message).await;
        if note.reason == rollout::ROLLED_BACK {
            ctx.metrics.count_rollback(&ns, &name);
        }
    }
    if let Some(notifier) = &ctx.notifier {
        // The version the transition is about: the rollout's (also when this
        // decision ended it), else the stable one it started from (which the
        // guard may just have rolled back).
        let version = decision
            .status
            .canary
            .as_ref()
            .or(before.canary.as_ref())
            .map(|c| c.version.as_str())
            .or(before.stable.as_ref().map(|s| s.version.as_str()));
        for n in crate::notify::from_notes(&ns, &name, version, &decision.notes) {
            notifier.send(n);
        }
    }
}
