//! A decision's notes, kept in the status that records the transition.
//!
//! The status write and the events are two requests, and the operator may be
//! stopped between them. Recording the events before the write would tell of
//! a transition that may then be decided differently; recording them after
//! would lose them. So the events travel in the status write itself
//! (`status.transition`), numbered; the controller records them after the
//! write under names made from that number, and an operator that starts
//! again records the newest transition's events once more, finding those
//! already recorded by name.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

use super::Note;
use crate::api::{ModelDeploymentStatus, Transition, TransitionEvent};

/// The longest event message kept: Kubernetes refuses an event note over 1 kB.
pub const MAX_MESSAGE: usize = 1000;

/// Record `notes` as the transition from `before` to `after`, if the status
/// changed and there is something to tell. Nothing to tell leaves the last
/// transition as it was, so an object at rest writes nothing.
pub(super) fn record(
    before: &ModelDeploymentStatus,
    after: &mut ModelDeploymentStatus,
    notes: &[Note],
    now: &Time,
) {
    if notes.is_empty() || after == before {
        return;
    }
    let sequence = before.transition.as_ref().map_or(0, |t| t.sequence) + 1;
    after.transition = Some(Transition {
        sequence,
        at: now.clone(),
        version: version_told(before, after),
        events: notes
            .iter()
            .map(|n| TransitionEvent {
                kind: n.kind,
                reason: n.reason.to_string(),
                message: truncate(&n.message, MAX_MESSAGE),
            })
            .collect(),
    });
}

/// The version a transition is about: the rollout's (also when this decision
/// ended it), else the stable one it started from (which the guard may just
/// have rolled back).
fn version_told(before: &ModelDeploymentStatus, after: &ModelDeploymentStatus) -> Option<String> {
    after
        .canary
        .as_ref()
        .or(before.canary.as_ref())
        .map(|c| c.version.clone())
        .or_else(|| before.stable.as_ref().map(|s| s.version.clone()))
        .or_else(|| after.stable.as_ref().map(|s| s.version.clone()))
}

/// `s` cut to at most `max` bytes on a character boundary, marked when cut.
pub fn truncate(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_string();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}

#[cfg(test)]
mod tests {
    use k8s_openapi::jiff::Timestamp;

    use super::*;
    use crate::api::{EventKind, Phase, RevisionStatus};

    fn note(reason: &'static str, message: &str) -> Note {
        Note {
            kind: EventKind::Normal,
            reason,
            message: message.into(),
        }
    }

    fn stable(version: &str) -> ModelDeploymentStatus {
        ModelDeploymentStatus {
            phase: Some(Phase::Stable),
            stable: Some(RevisionStatus {
                revision: 1,
                version: version.into(),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn each_told_transition_gets_the_next_number_and_its_events() {
        let now = Time(Timestamp::UNIX_EPOCH);
        let before = stable("1.0.0");
        let mut after = before.clone();
        after.phase = Some(Phase::Progressing);
        record(&before, &mut after, &[note("RolloutStarted", "go")], &now);
        let t = after.transition.clone().unwrap();
        assert_eq!((t.sequence, t.version.as_deref()), (1, Some("1.0.0")));
        assert_eq!(t.events[0].reason, "RolloutStarted");

        let mut next = after.clone();
        next.phase = Some(Phase::Paused);
        record(&after, &mut next, &[note("A", "x"), note("B", "y")], &now);
        let t = next.transition.unwrap();
        assert_eq!((t.sequence, t.events.len()), (2, 2));
    }

    #[test]
    fn nothing_to_tell_or_nothing_changed_keeps_the_last_transition() {
        let now = Time(Timestamp::UNIX_EPOCH);
        let before = stable("1.0.0");
        let mut same = before.clone();
        record(&before, &mut same, &[note("A", "x")], &now);
        assert_eq!(same, before, "an unchanged status gains no transition");
        let mut changed = before.clone();
        changed.phase = Some(Phase::Paused);
        record(&before, &mut changed, &[], &now);
        assert_eq!(changed.transition, None);
    }

    #[test]
    fn long_messages_are_cut_on_a_character_boundary() {
        let long = "é".repeat(MAX_MESSAGE);
        let cut = truncate(&long, MAX_MESSAGE);
        assert!(cut.len() <= MAX_MESSAGE + "…".len());
        assert!(cut.ends_with('…'));
        assert_eq!(truncate("short", MAX_MESSAGE), "short");
    }
}
