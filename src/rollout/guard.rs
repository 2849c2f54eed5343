//! After a promotion: keep judging the new revision for `guard.window`, and
//! roll back to the previous revision on a breach.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

use crate::api::{CheckVerdict, GuardStatus, Outcome, RevisionStatus};

use super::{Draft, EventKind, ROLLED_BACK, available, record_run};

/// Start the guard for a freshly promoted revision, if the spec asks for one.
pub(super) fn arm(d: &mut Draft<'_>, promoted: &RevisionStatus) {
    let (Some(_), Some(window)) = (&d.input.spec.guard, d.input.valid.guard_window) else {
        d.status.guard = None;
        return;
    };
    d.status.guard = Some(GuardStatus {
        revision: promoted.revision,
        until: d.input.now.checked_add(window).ok().map(Time),
        analysis: Default::default(),
    });
}

pub(super) fn watch(d: &mut Draft<'_>) {
    finish_draining(d);
    let Some(mut g) = d.status.guard.clone() else {
        return;
    };
    let Some(spec) = d.input.spec.guard.as_ref() else {
        d.status.guard = None;
        return;
    };
    let Some(stable) = d.status.stable.clone().filter(|s| s.revision == g.revision) else {
        d.status.guard = None;
        return;
    };
    if d.status.canary.is_some() {
        return;
    }
    if let Some(run) = d.input.analysis
        && let Some(verdict) = record_run(&mut g.analysis, run)
        && verdict == CheckVerdict::Fail
        && (run.decisive || g.analysis.failed_in_a_row >= spec.failure_limit)
    {
        let why = format!(
            "the guard found a breach after promotion: {}",
            run.failures()
        );
        return roll_back_to_previous(d, &stable, why);
    }
    let until = g.until.clone();
    if until.as_ref().is_some_and(|u| d.input.now >= u.0) {
        d.note(
            EventKind::Normal,
            "GuardPassed",
            format!(
                "revision {} held up for the whole guard window",
                stable.revision
            ),
        );
        d.status.guard = None;
        return;
    }
    if let Some(interval) = d.input.valid.guard_interval {
        d.requeue_within(interval);
    }
    if let Some(u) = until {
        d.requeue_within(
            std::time::Duration::try_from(u.0.duration_since(d.input.now)).unwrap_or_default(),
        );
    }
    d.status.guard = Some(g);
}

fn roll_back_to_previous(d: &mut Draft<'_>, bad: &RevisionStatus, why: String) {
    let Some(previous) = d.status.previous.clone() else {
        d.note(
            EventKind::Warning,
            "GuardBreach",
            format!(
                "revision {}: {why}; there is no previous revision to return to",
                bad.revision
            ),
        );
        d.status.guard = None;
        return;
    };
    d.history(bad, Outcome::RolledBack, why.clone());
    d.note(
        EventKind::Warning,
        ROLLED_BACK,
        format!(
            "revision {} (version {}) rolled back: {why}; revision {} serves again",
            bad.revision, bad.version, previous.revision
        ),
    );
    if !available(d.input.observed.get(&previous.hash), d.input.spec.replicas) {
        d.status.draining = Some(bad.clone());
    }
    d.status.rolled_back = Some(bad.clone());
    d.status.stable = Some(previous);
    d.status.previous = None;
    d.status.previous_scale_down_at = None;
    d.status.guard = None;
}

/// A drained revision lets go of its pods once the serving ones carry the
/// whole fleet again.
fn finish_draining(d: &mut Draft<'_>) {
    if d.status.draining.is_some()
        && super::weights::draining_replicas(d.input.spec, &d.status, d.input.observed) == 0
    {
        d.status.draining = None;
    }
}
