//! Status conditions, with `lastTransitionTime` kept while the status holds,
//! so recomputing the same state writes nothing new.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

pub const READY: &str = "Ready";
pub const PROGRESSING: &str = "Progressing";
pub const DEGRADED: &str = "Degraded";
pub const DATA_DRIFT: &str = "DataDrift";
/// kstatus's names (Flux, `kubectl wait`): the same as `Progressing`, and
/// as `Degraded`.
pub const RECONCILING: &str = "Reconciling";
pub const STALLED: &str = "Stalled";

/// Set (or add) a condition. The transition time moves only when the status flips.
pub fn set(
    conditions: &mut Vec<Condition>,
    type_: &str,
    status: bool,
    reason: &str,
    message: impl Into<String>,
    generation: Option<i64>,
    now: &Time,
) {
    let status = if status { "True" } else { "False" }.to_string();
    let message = message.into();
    match conditions.iter_mut().find(|c| c.type_ == type_) {
        Some(c) => {
            if c.status != status {
                c.last_transition_time = now.clone();
            }
            c.status = status;
            c.reason = reason.into();
            c.message = message;
            c.observed_generation = generation;
        }
        None => conditions.push(Condition {
            type_: type_.into(),
            status,
            reason: reason.into(),
            message,
            observed_generation: generation,
            last_transition_time: now.clone(),
        }),
    }
}

pub fn get<'a>(conditions: &'a [Condition], type_: &str) -> Option<&'a Condition> {
    conditions.iter().find(|c| c.type_ == type_)
}

pub fn is_true(conditions: &[Condition], type_: &str) -> bool {
    get(conditions, type_).is_some_and(|c| c.status == "True")
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::jiff::Timestamp;

    #[test]
    fn transition_time_moves_only_when_status_flips() {
        let t0 = Time(Timestamp::from_second(1_000).unwrap());
        let t1 = Time(Timestamp::from_second(2_000).unwrap());
        let mut c = Vec::new();
        set(&mut c, READY, false, "Pending", "starting", Some(1), &t0);
        set(
            &mut c,
            READY,
            false,
            "Pending",
            "still starting",
            Some(1),
            &t1,
        );
        assert_eq!(c[0].last_transition_time, t0);
        assert_eq!(c[0].message, "still starting");
        set(&mut c, READY, true, "Available", "up", Some(1), &t1);
        assert_eq!(c[0].last_transition_time, t1);
        assert!(is_true(&c, READY));
        assert_eq!(c.len(), 1);
    }
}
