//! Metric names of known model servers, and the user's overrides on top.
//! One place decides which series mean traffic, errors, latency, inputs,
//! predictions and outcomes; both metric sources (pods, Prometheus) use it.
//!
//! | preset | requests | errors | latency histogram |
//! | --- | --- | --- | --- |
//! | `default` | `model_requests_total` | label `code` matching `5..` | `model_request_duration_seconds` |
//! | `kserve` | `request_predict_seconds_count` | not exposed | `request_predict_seconds` |
//! | `triton` | `nv_inference_request_success` + `nv_inference_request_failure` | the failure counter | not exposed (only cumulative microseconds) |
//! | `mlserver` | `model_infer_request_success` + `model_infer_request_failure` | the failure counter | `rest_server_requests_duration_seconds` |
//! | `bentoml` | `bentoml_service_request_total` | label `http_response_code` matching `5..` | `bentoml_service_request_duration_seconds` |
//! | `seldon` | `seldon_model_infer_total` | label `code` matching `5..` | `seldon_model_infer_api_seconds` |
//!
//! Inputs, predictions and outcomes follow the modeldeploy convention for every
//! preset (no model server exposes them on its own; a model emits them).
//! A check whose series a preset lacks is Inconclusive with a message saying
//! so, never a Pass.

use regex::Regex;

use super::spec::{MetricNames, MetricsPreset};

/// How requests and errors are counted.
#[derive(Debug, Clone)]
pub enum Traffic {
    /// One counter; errors are the samples whose `label` matches `errors`.
    Labelled {
        counter: String,
        label: String,
        errors: Regex,
    },
    /// Separate success and failure counters.
    SuccessFailure { success: String, failure: String },
    /// Only a latency histogram's count: traffic but no errors.
    CountOnly { counter: String },
}

impl Traffic {
    /// Every family name this needs scraped.
    pub fn families(&self) -> Vec<&str> {
        match self {
            Traffic::Labelled { counter, .. } | Traffic::CountOnly { counter } => vec![counter],
            Traffic::SuccessFailure { success, failure } => vec![success, failure],
        }
    }
}

/// Resolved metric names for one ModelDeployment.
#[derive(Debug, Clone)]
pub struct Names {
    pub traffic: Traffic,
    /// Latency histogram in seconds, when the server has one.
    pub latency: Option<String>,
    pub features: String,
    pub categories: String,
    pub predictions: String,
    pub outcomes: String,
}

const DEFAULT_ERRORS: &str = "5..";

/// Anchored like PromQL's `=~`.
pub fn anchored(pattern: &str) -> Result<Regex, regex::Error> {
    Regex::new(&format!("^(?:{pattern})$"))
}

impl Names {
    /// The preset's names with the user's overrides. Fails only on a bad
    /// `spec.metrics.names.errors.matches` regular expression.
    pub fn resolve(preset: MetricsPreset, overrides: &MetricNames) -> Result<Self, String> {
        let labelled = |counter: &str, label: &str| Traffic::Labelled {
            counter: counter.into(),
            label: label.into(),
            errors: anchored(DEFAULT_ERRORS).expect("the default pattern compiles"),
        };
        let (traffic, latency) = match preset {
            MetricsPreset::Default => (
                labelled("model_requests_total", "code"),
                Some("model_request_duration_seconds"),
            ),
            MetricsPreset::Kserve => (
                Traffic::CountOnly {
                    counter: "request_predict_seconds_count".into(),
                },
                Some("request_predict_seconds"),
            ),
            MetricsPreset::Triton => (
                Traffic::SuccessFailure {
                    success: "nv_inference_request_success".into(),
                    failure: "nv_inference_request_failure".into(),
                },
                None,
            ),
            MetricsPreset::Mlserver => (
                Traffic::SuccessFailure {
                    success: "model_infer_request_success".into(),
                    failure: "model_infer_request_failure".into(),
                },
                Some("rest_server_requests_duration_seconds"),
            ),
            MetricsPreset::Bentoml => (
                labelled("bentoml_service_request_total", "http_response_code"),
                Some("bentoml_service_request_duration_seconds"),
            ),
            MetricsPreset::Seldon => (
                labelled("seldon_model_infer_total", "code"),
                Some("seldon_model_infer_api_seconds"),
            ),
        };
        let traffic = match (&overrides.requests, &overrides.errors, traffic) {
            (None, None, t) => t,
            (requests, errors, t) => {
                let counter = requests.clone().unwrap_or_else(|| match &t {
                    Traffic::Labelled { counter, .. } | Traffic::CountOnly { counter } => {
                        counter.clone()
                    }
                    Traffic::SuccessFailure { success, .. } => success.clone(),
                });
                let (label, pattern) = match errors {
                    Some(e) => (e.label.clone(), e.matches.as_str()),
                    None => ("code".to_string(), DEFAULT_ERRORS),
                };
                let errors = anchored(pattern)
                    .map_err(|e| format!("{pattern:?} is not a regular expression: {e}"))?;
                Traffic::Labelled {
                    counter,
                    label,
                    errors,
                }
            }
        };
        let or = |o: &Option<String>, d: &str| o.clone().unwrap_or_else(|| d.to_string());
        Ok(Names {
            traffic,
            latency: overrides
                .latency
                .clone()
                .or_else(|| latency.map(str::to_string)),
            features: or(&overrides.features, "model_input_feature"),
            categories: or(&overrides.categories, "model_input_category_total"),
            predictions: or(&overrides.predictions, "model_prediction"),
            outcomes: or(&overrides.outcomes, "model_prediction_outcomes_total"),
        })
    }

    /// Families to keep when parsing a scrape; everything else is skipped.
    pub fn families(&self) -> Vec<String> {
        let mut out: Vec<String> = self
            .traffic
            .families()
            .into_iter()
            .map(String::from)
            .collect();
        out.extend(self.latency.iter().cloned());
        out.extend([
            self.features.clone(),
            self.categories.clone(),
            self.predictions.clone(),
            self.outcomes.clone(),
        ]);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::spec::ErrorSelector;

    #[test]
    fn the_default_preset_follows_the_convention() {
        let n = Names::resolve(MetricsPreset::Default, &MetricNames::default()).unwrap();
        match &n.traffic {
            Traffic::Labelled {
                counter,
                label,
                errors,
            } => {
                assert_eq!(
                    (counter.as_str(), label.as_str()),
                    ("model_requests_total", "code")
                );
                assert!(
                    errors.is_match("503") && !errors.is_match("200") && !errors.is_match("5000")
                );
            }
            other => panic!("unexpected {other:?}"),
        }
        assert_eq!(n.latency.as_deref(), Some("model_request_duration_seconds"));
    }

    #[test]
    fn presets_name_the_servers_real_metrics() {
        let triton = Names::resolve(MetricsPreset::Triton, &MetricNames::default()).unwrap();
        assert!(
            matches!(&triton.traffic, Traffic::SuccessFailure { failure, .. } if failure == "nv_inference_request_failure")
        );
        assert!(
            triton.latency.is_none(),
            "Triton has no latency histogram by default"
        );
        let bento = Names::resolve(MetricsPreset::Bentoml, &MetricNames::default()).unwrap();
        assert!(
            matches!(&bento.traffic, Traffic::Labelled { label, .. } if label == "http_response_code")
        );
        let kserve = Names::resolve(MetricsPreset::Kserve, &MetricNames::default()).unwrap();
        assert!(matches!(kserve.traffic, Traffic::CountOnly { .. }));
        let seldon = Names::resolve(MetricsPreset::Seldon, &MetricNames::default()).unwrap();
        assert!(
            seldon
                .families()
                .contains(&"seldon_model_infer_total".to_string())
        );
    }

    #[test]
    fn overrides_win_and_bad_patterns_name_the_field() {
        let overrides = MetricNames {
            requests: Some("http_requests_total".into()),
            errors: Some(ErrorSelector {
                label: "status".into(),
                matches: "5..|429".into(),
            }),
            ..Default::default()
        };
        let n = Names::resolve(MetricsPreset::Triton, &overrides).unwrap();
        match &n.traffic {
            Traffic::Labelled {
                counter,
                label,
                errors,
            } => {
                assert_eq!(
                    (counter.as_str(), label.as_str()),
                    ("http_requests_total", "status")
                );
                assert!(errors.is_match("429"));
            }
            other => panic!("unexpected {other:?}"),
        }
        let bad = MetricNames {
            errors: Some(ErrorSelector {
                label: "code".into(),
                matches: "5(..".into(),
            }),
            ..Default::default()
        };
        let e = Names::resolve(MetricsPreset::Default, &bad).unwrap_err();
        assert!(e.contains("not a regular expression"), "{e}");
    }
}
