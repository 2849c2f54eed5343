//! `spec.disruption`: the PodDisruptionBudget over the model's pods.

use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::KubeSchema;
use serde::{Deserialize, Serialize};

use super::InvalidSpec;

/// How many of the model's pods (all revisions together) voluntary
/// disruptions such as node drains may take at once. Without it the budget
/// is `maxUnavailable: 1`.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("!(has(self.maxUnavailable) && has(self.minAvailable))").message("spec.disruption: set maxUnavailable or minAvailable, not both"))]
#[x_kube(validation = Rule::new("self.budget || !(has(self.maxUnavailable) || has(self.minAvailable))").message("spec.disruption: budget is false, so maxUnavailable and minAvailable have no effect; remove them"))]
pub struct DisruptionSpec {
    /// Pods that may be unavailable at once: a number or a percentage ("25%").
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_unavailable: Option<IntOrString>,
    /// Pods that must stay available: a number or a percentage ("75%").
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_available: Option<IntOrString>,
    /// `false` makes no budget, for pods another PodDisruptionBudget already
    /// covers (a pod under two budgets cannot be evicted at all).
    #[serde(default = "budget_default")]
    pub budget: bool,
}

fn budget_default() -> bool {
    true
}

/// What the budget allows, validated.
#[derive(Debug, Clone, PartialEq)]
pub enum Budget {
    MaxUnavailable(IntOrString),
    MinAvailable(IntOrString),
}

/// The budget `spec.disruption` asks for, `None` when it asks for none.
pub fn budget(disruption: Option<&DisruptionSpec>) -> Result<Option<Budget>, InvalidSpec> {
    let Some(d) = disruption else {
        return Ok(Some(Budget::MaxUnavailable(IntOrString::Int(1))));
    };
    let field = |name: &str| format!("spec.disruption.{name}");
    match (&d.max_unavailable, &d.min_available, d.budget) {
        (Some(_), Some(_), _) => Err(InvalidSpec {
            field: "spec.disruption".into(),
            message: "set maxUnavailable or minAvailable, not both".into(),
        }),
        (Some(_), _, false) | (_, Some(_), false) => Err(InvalidSpec {
            field: field("budget"),
            message: "is false, so maxUnavailable and minAvailable have no effect; remove them"
                .into(),
        }),
        (_, _, false) => Ok(None),
        (Some(v), None, true) => Ok(Some(Budget::MaxUnavailable(amount(
            &field("maxUnavailable"),
            v,
        )?))),
        (None, Some(v), true) => Ok(Some(Budget::MinAvailable(amount(
            &field("minAvailable"),
            v,
        )?))),
        (None, None, true) => Ok(Some(Budget::MaxUnavailable(IntOrString::Int(1)))),
    }
}

/// A pod count (not negative) or a whole percentage from 0% to 100%.
fn amount(field: &str, v: &IntOrString) -> Result<IntOrString, InvalidSpec> {
    let refuse = |message: String| InvalidSpec {
        field: field.into(),
        message,
    };
    match v {
        IntOrString::Int(n) if *n < 0 => Err(refuse(format!("{n} must not be negative"))),
        IntOrString::Int(_) => Ok(v.clone()),
        IntOrString::String(s) => match s.strip_suffix('%').map(str::parse::<u8>) {
            Some(Ok(p)) if p <= 100 => Ok(v.clone()),
            _ => Err(refuse(format!(
                "{s:?} is neither a number of pods nor a percentage from 0% to 100%"
            ))),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(v: serde_json::Value) -> DisruptionSpec {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn without_a_spec_one_pod_at_a_time() {
        assert_eq!(
            budget(None).unwrap(),
            Some(Budget::MaxUnavailable(IntOrString::Int(1)))
        );
        assert_eq!(
            budget(Some(&spec(serde_json::json!({})))).unwrap(),
            Some(Budget::MaxUnavailable(IntOrString::Int(1)))
        );
    }

    #[test]
    fn numbers_and_percentages_pass_and_the_opt_out_makes_none() {
        let b = budget(Some(&spec(serde_json::json!({"minAvailable": "75%"})))).unwrap();
        assert_eq!(
            b,
            Some(Budget::MinAvailable(IntOrString::String("75%".into())))
        );
        let b = budget(Some(&spec(serde_json::json!({"maxUnavailable": 2})))).unwrap();
        assert_eq!(b, Some(Budget::MaxUnavailable(IntOrString::Int(2))));
        assert_eq!(
            budget(Some(&spec(serde_json::json!({"budget": false})))).unwrap(),
            None
        );
    }

    #[test]
    fn bad_amounts_name_the_field() {
        for (v, field) in [
            (
                serde_json::json!({"maxUnavailable": -1}),
                "spec.disruption.maxUnavailable",
            ),
            (
                serde_json::json!({"minAvailable": "150%"}),
                "spec.disruption.minAvailable",
            ),
            (
                serde_json::json!({"minAvailable": "half"}),
                "spec.disruption.minAvailable",
            ),
            (
                serde_json::json!({"maxUnavailable": 1, "minAvailable": 1}),
                "spec.disruption",
            ),
            (
                serde_json::json!({"budget": false, "maxUnavailable": 1}),
                "spec.disruption.budget",
            ),
        ] {
            let e = budget(Some(&spec(v.clone()))).unwrap_err();
            assert_eq!(e.field, field, "{v}");
        }
    }
}
