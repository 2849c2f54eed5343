//! Windows over per-pod cumulative counters, and what a variant served in one.
//!
//! Pods expose counters (histogram buckets are counters too) that only grow
//! while the pod lives. A window counts what happened since it started:
//! - a pod first seen with a start time after the window began counts from
//!   zero; one that already ran (or of unknown start) counts from its first
//!   observation;
//! - a counter that goes down means the pod restarted: counting goes on from
//!   zero and what was counted before is kept;
//! - a pod that vanishes keeps what it contributed; a new pod uid is a new pod.
//!
//! So totals are never negative and nothing is counted twice. Only series
//! that grow are windowed (see `is_monotonic`): a gauge or a `_sum` going
//! down is not a restart. Memory is bounded by pods x series, with a cap of
//! series per pod.

use std::collections::{BTreeMap, HashMap};

use crate::api::presets::{Names, Traffic};
use crate::exposition::{MetricType, OwnedSample, Sample as BorrowedSample};

/// Whether a sample only grows while its process lives: counters, histogram
/// buckets and counts, summary counts (and untyped series, which cannot be
/// told apart). Gauges, `_sum` (observations may be negative), quantiles and
/// `_created` are not, so a window neither counts them nor takes their going
/// down for a restart.
fn is_monotonic(sample: &impl SampleView) -> bool {
    let name = sample.name();
    if name.ends_with("_sum") || name.ends_with("_created") {
        return false;
    }
    match sample.kind() {
        MetricType::Counter | MetricType::Unknown => true,
        MetricType::Histogram => name.ends_with("_bucket") || name.ends_with("_count"),
        MetricType::Summary => name.ends_with("_count"),
        MetricType::Gauge
        | MetricType::GaugeHistogram
        | MetricType::Info
        | MetricType::StateSet => false,
    }
}

/// A sample as a window reads it: owned (`parse_owned`), or borrowed from the
/// scraped text by the parser's visitor, which spares an allocation per name,
/// label and value on every scrape.
pub trait SampleView {
    fn name(&self) -> &str;
    fn kind(&self) -> MetricType;
    fn value(&self) -> f64;
    fn label_count(&self) -> usize;
    /// Calls `f` with each label until it returns false; false if it did.
    fn all_labels(&self, f: &mut dyn FnMut(&str, &str) -> bool) -> bool;
}

impl SampleView for OwnedSample {
    fn name(&self) -> &str {
        &self.name
    }
    fn kind(&self) -> MetricType {
        self.kind
    }
    fn value(&self) -> f64 {
        self.value
    }
    fn label_count(&self) -> usize {
        self.labels.len()
    }
    fn all_labels(&self, f: &mut dyn FnMut(&str, &str) -> bool) -> bool {
        self.labels.iter().all(|(k, v)| f(k, v))
    }
}

impl SampleView for BorrowedSample<'_> {
    fn name(&self) -> &str {
        self.name
    }
    fn kind(&self) -> MetricType {
        self.kind
    }
    fn value(&self) -> f64 {
        self.value
    }
    fn label_count(&self) -> usize {
        self.labels.len()
    }
    fn all_labels(&self, f: &mut dyn FnMut(&str, &str) -> bool) -> bool {
        self.labels.iter().all(|(k, v)| f(k, &v))
    }
}

use super::histogram::Histogram;

/// A series: metric name and its labels, sorted.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SeriesKey {
    pub name: String,
    pub labels: Vec<(String, String)>,
}

impl SeriesKey {
    pub fn of(sample: &impl SampleView) -> Self {
        let mut labels = Vec::with_capacity(sample.label_count());
        sample.all_labels(&mut |k, v| {
            labels.push((k.to_string(), v.to_string()));
            true
        });
        labels.sort();
        Self {
            name: sample.name().to_string(),
            labels,
        }
    }

    /// Whether `sample` is this series, without allocating.
    fn is(&self, sample: &impl SampleView) -> bool {
        self.name == sample.name()
            && self.labels.len() == sample.label_count()
            && sample.all_labels(&mut |k, v| {
                self.labels
                    .binary_search_by(|(a, b)| (a.as_str(), b.as_str()).cmp(&(k, v)))
                    .is_ok()
            })
    }

    pub fn label(&self, name: &str) -> Option<&str> {
        self.labels
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

#[derive(Debug, Clone, Copy)]
struct Counter {
    baseline: f64,
    last: f64,
    /// Counted before the pod's last restart.
    carried: f64,
}

impl Counter {
    fn total(&self) -> f64 {
        (self.carried + self.last - self.baseline).max(0.0)
    }
}

#[derive(Debug, Clone)]
pub struct CounterWindow {
    start: i64,
    max_series_per_pod: usize,
    pods: HashMap<String, PodSeries>,
    dropped: u64,
}

#[derive(Debug, Clone, Default)]
struct PodSeries {
    /// Series by a fingerprint of name and labels (label order does not
    /// matter), each with its full key: a scrape finds its series without
    /// building a key per sample, and a fingerprint collision stays correct.
    counters: HashMap<u64, Vec<(SeriesKey, Counter)>>,
    len: usize,
    /// The pod's process restarted inside the window: series it shows for
    /// the first time were born after that restart and count from zero.
    restarted: bool,
}

impl PodSeries {
    fn get(&self, sample: &impl SampleView) -> Option<&Counter> {
        self.counters
            .get(&fingerprint(sample))?
            .iter()
            .find(|(k, _)| k.is(sample))
            .map(|(_, c)| c)
    }

    fn get_mut(&mut self, print: u64, sample: &impl SampleView) -> Option<&mut Counter> {
        self.counters
            .get_mut(&print)?
            .iter_mut()
            .find(|(k, _)| k.is(sample))
            .map(|(_, c)| c)
    }

    fn all_mut(&mut self) -> impl Iterator<Item = &mut Counter> {
        self.counters.values_mut().flatten().map(|(_, c)| c)
    }
}

/// Order-independent hash of a sample's name and labels.
fn fingerprint(sample: &impl SampleView) -> u64 {
    use std::hash::{BuildHasher, BuildHasherDefault, DefaultHasher};
    let hasher = BuildHasherDefault::<DefaultHasher>::default();
    let mut labels = 0u64;
    sample.all_labels(&mut |k, v| {
        labels = labels.wrapping_add(hasher.hash_one((k, v)));
        true
    });
    hasher.hash_one((sample.name(), labels))
}

impl CounterWindow {
    /// A window starting at `start` (unix seconds).
    pub fn new(start: i64, max_series_per_pod: usize) -> Self {
        Self {
            start,
            max_series_per_pod,
            pods: HashMap::new(),
            dropped: 0,
        }
    }

    pub fn start(&self) -> i64 {
        self.start
    }

    /// Series dropped because a pod exposed more than the cap.
    pub fn dropped(&self) -> u64 {
        self.dropped
    }

    /// [`CounterWindow::observe`], unless the scrape holds more counter
    /// series than one pod may keep: then none of it is taken, so no check
    /// judges a part of a pod's series (say, its successes without the
    /// errors listed after them). The error says why, for the run's message.
    pub fn observe_whole<S: SampleView>(
        &mut self,
        pod_uid: &str,
        pod_started: Option<i64>,
        samples: &[S],
    ) -> Result<(), String> {
        let series = samples
            .iter()
            .filter(|s| s.value().is_finite() && s.value() >= 0.0 && is_monotonic(*s))
            .count();
        if series > self.max_series_per_pod {
            return Err(format!(
                "exposes {series} counter series of the judged metrics, more than the {} one pod is judged on; none of them is judged",
                self.max_series_per_pod
            ));
        }
        let dropped = self.dropped;
        self.observe(pod_uid, pod_started, samples);
        if self.dropped > dropped {
            return Err(format!(
                "its series changed past the {} one pod is judged on; the new ones are not judged",
                self.max_series_per_pod
            ));
        }
        Ok(())
    }

    /// One scrape of one pod. Any counter lower than before means the pod's
    /// process restarted, and then every counter of the pod did: all of them
    /// keep what they had counted and start again from zero, including those
    /// that already climbed past their old value or did not appear this time.
    pub fn observe<S: SampleView>(
        &mut self,
        pod_uid: &str,
        pod_started: Option<i64>,
        samples: &[S],
    ) {
        let fresh = pod_started.is_some_and(|t| t >= self.start);
        let cap = self.max_series_per_pod;
        let pod = self.pods.entry(pod_uid.to_string()).or_default();
        let usable = |s: &&S| s.value().is_finite() && s.value() >= 0.0 && is_monotonic(*s);
        let reset = samples
            .iter()
            .filter(usable)
            .any(|s| pod.get(s).is_some_and(|c| s.value() < c.last));
        if reset {
            pod.restarted = true;
            for c in pod.all_mut() {
                c.carried += c.last - c.baseline;
                c.baseline = 0.0;
                c.last = 0.0;
            }
        }
        for s in samples.iter().filter(usable) {
            let print = fingerprint(s);
            let full = pod.len >= cap;
            match pod.get_mut(print, s) {
                Some(c) => c.last = s.value(),
                None if full => self.dropped += 1,
                None => {
                    let baseline = if fresh || pod.restarted {
                        0.0
                    } else {
                        s.value()
                    };
                    pod.counters.entry(print).or_default().push((
                        SeriesKey::of(s),
                        Counter {
                            baseline,
                            last: s.value(),
                            carried: 0.0,
                        },
                    ));
                    pod.len += 1;
                }
            }
        }
    }

    /// What every series counted in the window, summed over pods.
    pub fn totals(&self) -> BTreeMap<SeriesKey, f64> {
        let mut out = BTreeMap::new();
        for pod in self.pods.values() {
            for (k, c) in pod.counters.values().flatten() {
                *out.entry(k.clone()).or_insert(0.0) += c.total();
            }
        }
        out
    }
}

/// What one variant served in a window, in the terms the checks use.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct VariantData {
    /// `None`: no request series at all.
    pub requests: Option<f64>,
    /// `None`: the server does not expose errors.
    pub errors: Option<f64>,
    pub latency: Option<Histogram>,
    pub features: BTreeMap<String, Histogram>,
    pub categories: BTreeMap<String, BTreeMap<String, f64>>,
    pub predictions: Option<Histogram>,
    pub outcomes: Vec<(String, String, f64)>,
    /// Custom series values by check name.
    pub custom: BTreeMap<String, f64>,
    /// Why data may be missing (scrape or query errors), for messages.
    pub problems: Vec<String>,
}

/// Cumulative bucket counts by `le`, summed over every other label, into a histogram.
pub fn histogram_from_buckets(buckets: &BTreeMap<String, f64>) -> Option<Histogram> {
    let mut pairs: Vec<(f64, f64)> = buckets
        .iter()
        .filter_map(|(le, v)| {
            let bound = match le.as_str() {
                "+Inf" | "Inf" | "inf" => f64::INFINITY,
                other => other.parse().ok()?,
            };
            Some((bound, *v))
        })
        .collect();
    pairs.sort_by(|a, b| a.0.total_cmp(&b.0));
    let (bounds, counts): (Vec<f64>, Vec<f64>) = pairs.into_iter().unzip();
    Histogram::from_scrape(bounds, counts).ok()
}

impl VariantData {
    /// Assemble from window totals with the resolved metric names.
    pub fn from_totals(names: &Names, totals: &BTreeMap<SeriesKey, f64>) -> Self {
        let mut d = VariantData::default();
        let sum = |pred: &dyn Fn(&SeriesKey) -> bool| -> Option<f64> {
            let mut found = false;
            let mut total = 0.0;
            for (k, v) in totals {
                if pred(k) {
                    found = true;
                    total += v;
                }
            }
            found.then_some(total)
        };
        match &names.traffic {
            Traffic::Labelled {
                counter,
                label,
                errors,
            } => {
                d.requests = sum(&|k| &k.name == counter);
                d.errors = d.requests.map(|_| {
                    sum(&|k| {
                        &k.name == counter && k.label(label).is_some_and(|v| errors.is_match(v))
                    })
                    .unwrap_or(0.0)
                });
            }
            Traffic::SuccessFailure { success, failure } => {
                let ok = sum(&|k| &k.name == success);
                let failed = sum(&|k| &k.name == failure);
                if ok.is_some() || failed.is_some() {
                    d.requests = Some(ok.unwrap_or(0.0) + failed.unwrap_or(0.0));
                    d.errors = Some(failed.unwrap_or(0.0));
                }
            }
            Traffic::CountOnly { counter } => d.requests = sum(&|k| &k.name == counter),
        }
        let mut latency = BTreeMap::new();
        let mut predictions = BTreeMap::new();
        let mut features: BTreeMap<String, BTreeMap<String, f64>> = BTreeMap::new();
        let latency_bucket = names.latency.as_ref().map(|l| format!("{l}_bucket"));
        let prediction_bucket = format!("{}_bucket", names.predictions);
        let feature_bucket = format!("{}_bucket", names.features);
        let mut outcomes: BTreeMap<(String, String), f64> = BTreeMap::new();
        for (k, v) in totals {
            let le = k.label("le").unwrap_or_default().to_string();
            if Some(&k.name) == latency_bucket.as_ref() {
                *latency.entry(le).or_insert(0.0) += v;
            } else if k.name == prediction_bucket {
                *predictions.entry(le).or_insert(0.0) += v;
            } else if k.name == feature_bucket {
                let f = k.label("feature").unwrap_or_default().to_string();
                *features.entry(f).or_default().entry(le).or_insert(0.0) += v;
            } else if k.name == names.categories {
                let f = k.label("feature").unwrap_or_default().to_string();
                let value = k.label("value").unwrap_or_default().to_string();
                *d.categories
                    .entry(f)
                    .or_default()
                    .entry(value)
                    .or_insert(0.0) += v;
            } else if k.name == names.outcomes {
                let a = k.label("actual").unwrap_or_default().to_string();
                let p = k.label("predicted").unwrap_or_default().to_string();
                *outcomes.entry((a, p)).or_insert(0.0) += v;
            }
        }
        d.latency = histogram_from_buckets(&latency);
        d.predictions = histogram_from_buckets(&predictions);
        d.features = features
            .iter()
            .filter_map(|(f, b)| Some((f.clone(), histogram_from_buckets(b)?)))
            .collect();
        d.outcomes = outcomes.into_iter().map(|((a, p), v)| (a, p, v)).collect();
        d
    }

    /// Record what could not be read. Any failed read leaves the request
    /// counts unknown: a failed query for the failure counter alone would
    /// otherwise count as zero errors and pass the canary. Every check is then
    /// Inconclusive, naming the problems.
    pub fn with_problems(mut self, problems: Vec<String>) -> VariantData {
        if !problems.is_empty() {
            self.requests = None;
            self.errors = None;
        }
        self.problems = problems;
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn a_failed_read_leaves_the_request_counts_unknown() {
        let read = VariantData {
            requests: Some(1000.0),
            errors: Some(0.0),
            ..Default::default()
        };
        let kept = read.clone().with_problems(Vec::new());
        assert_eq!((kept.requests, kept.errors), (Some(1000.0), Some(0.0)));
        let failed = read.with_problems(vec!["prometheus answered 503".into()]);
        assert_eq!((failed.requests, failed.errors), (None, None));
        assert_eq!(failed.problems, ["prometheus answered 503"]);
    }

    fn s(name: &str, labels: &[(&str, &str)], value: f64) -> OwnedSample {
        OwnedSample {
            family: name.into(),
            name: name.into(),
            kind: crate::exposition::MetricType::Unknown,
            labels: labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            value,
            timestamp: None,
        }
    }

    fn total(w: &CounterWindow) -> f64 {
        w.totals().values().sum()
    }

    #[test]
    fn a_pod_older_than_the_window_counts_from_its_first_observation() {
        let mut w = CounterWindow::new(100, 100);
        w.observe("a", Some(50), &[s("c", &[], 1000.0)]);
        w.observe("a", Some(50), &[s("c", &[], 1010.0)]);
        assert_eq!(total(&w), 10.0);
    }

    #[test]
    fn a_pod_started_in_the_window_counts_from_zero() {
        let mut w = CounterWindow::new(100, 100);
        w.observe("b", Some(120), &[s("c", &[], 7.0)]);
        assert_eq!(total(&w), 7.0);
    }

    #[test]
    fn a_restart_keeps_what_was_counted() {
        let mut w = CounterWindow::new(100, 100);
        w.observe("a", Some(50), &[s("c", &[], 100.0)]);
        w.observe("a", Some(50), &[s("c", &[], 130.0)]);
        w.observe("a", Some(50), &[s("c", &[], 5.0)]);
        w.observe("a", Some(50), &[s("c", &[], 9.0)]);
        assert_eq!(total(&w), 39.0);
    }

    #[test]
    fn a_restart_seen_on_one_series_resets_them_all() {
        let mut w = CounterWindow::new(100, 100);
        let scrape = |busy: f64, quiet: f64, late: Option<f64>| {
            let mut v = vec![s("busy", &[], busy), s("quiet", &[], quiet)];
            v.extend(late.map(|x| s("late", &[], x)));
            v
        };
        w.observe("a", Some(50), &scrape(100.0, 10.0, None));
        w.observe("a", Some(50), &scrape(110.0, 12.0, None));
        // Restarted: `busy` fell, `quiet` already passed its old value, and
        // `late` is new since the restart.
        w.observe("a", Some(50), &scrape(4.0, 13.0, Some(3.0)));
        let t = w.totals();
        let get = |n: &str| t.iter().find(|(k, _)| k.name == n).map(|(_, v)| *v);
        assert_eq!(get("busy"), Some(10.0 + 4.0));
        assert_eq!(
            get("quiet"),
            Some(2.0 + 13.0),
            "counted from zero after the restart"
        );
        assert_eq!(get("late"), Some(3.0), "born after the restart");
    }

    #[test]
    fn a_falling_sum_or_gauge_is_not_a_restart() {
        use crate::exposition::MetricType;
        let typed = |name: &str, kind: MetricType, value: f64| OwnedSample {
            kind,
            ..s(name, &[], value)
        };
        let mut w = CounterWindow::new(100, 100);
        for (requests, sum, gauge) in [(100.0, 5.0, 7.0), (110.0, 3.0, 2.0)] {
            w.observe(
                "a",
                Some(120),
                &[
                    typed("req_total", MetricType::Counter, requests),
                    typed("feat_sum", MetricType::Histogram, sum),
                    typed("feat_bucket", MetricType::Histogram, requests),
                    typed("queue", MetricType::Gauge, gauge),
                    typed("lat", MetricType::Summary, gauge),
                ],
            );
        }
        let t = w.totals();
        let get = |n: &str| t.iter().find(|(k, _)| k.name == n).map(|(_, v)| *v);
        assert_eq!(get("req_total"), Some(110.0));
        assert_eq!(get("feat_bucket"), Some(110.0));
        assert_eq!(get("feat_sum"), None, "not windowed");
        assert_eq!(get("queue"), None, "not windowed");
        assert_eq!(get("lat"), None, "a summary quantile is a gauge");
    }

    #[test]
    fn label_order_does_not_make_another_series() {
        let mut w = CounterWindow::new(100, 100);
        w.observe("a", Some(120), &[s("c", &[("x", "1"), ("y", "2")], 5.0)]);
        w.observe("a", Some(120), &[s("c", &[("y", "2"), ("x", "1")], 8.0)]);
        // Same labels and values but paired differently: another series.
        w.observe("a", Some(120), &[s("c", &[("x", "2"), ("y", "1")], 1.0)]);
        let t = w.totals();
        assert_eq!(t.len(), 2, "{t:?}");
        assert_eq!(total(&w), 9.0);
    }

    #[test]
    fn the_series_cap_bounds_memory() {
        let mut w = CounterWindow::new(0, 2);
        w.observe(
            "a",
            None,
            &[s("x", &[], 1.0), s("y", &[], 1.0), s("z", &[], 1.0)],
        );
        assert_eq!(w.totals().len(), 2);
        assert_eq!(w.dropped(), 1);
    }

    #[test]
    fn variant_data_follows_the_names() {
        let names = Names::resolve(Default::default(), &Default::default()).unwrap();
        let mut w = CounterWindow::new(0, 1000);
        w.observe(
            "a",
            Some(1),
            &[
                s("model_requests_total", &[("code", "200")], 95.0),
                s("model_requests_total", &[("code", "503")], 5.0),
                s(
                    "model_request_duration_seconds_bucket",
                    &[("le", "0.1")],
                    80.0,
                ),
                s(
                    "model_request_duration_seconds_bucket",
                    &[("le", "+Inf")],
                    100.0,
                ),
                s(
                    "model_prediction_outcomes_total",
                    &[("actual", "1"), ("predicted", "1")],
                    40.0,
                ),
                s(
                    "model_input_feature_bucket",
                    &[("feature", "f0"), ("le", "0")],
                    50.0,
                ),
                s(
                    "model_input_feature_bucket",
                    &[("feature", "f0"), ("le", "+Inf")],
                    100.0,
                ),
            ],
        );
        let d = VariantData::from_totals(&names, &w.totals());
        assert_eq!((d.requests, d.errors), (Some(100.0), Some(5.0)));
        assert_eq!(d.latency.unwrap().total(), 100.0);
        assert_eq!(d.features["f0"].total(), 100.0);
        assert_eq!(d.outcomes, vec![("1".into(), "1".into(), 40.0)]);
        let empty = VariantData::from_totals(&names, &BTreeMap::new());
        assert_eq!(empty.requests, None);
    }

    #[derive(Debug, Clone)]
    enum Op {
        Inc(u8, u8),
        Restart(u8),
        Vanish(u8),
    }

    proptest! {
        /// Totals equal the events that happened in the window, whatever the
        /// restarts and churn (pods here all start inside the window).
        #[test]
        fn totals_equal_true_events(ops in proptest::collection::vec(prop_oneof![
            (0u8..4, 1u8..20).prop_map(|(p, n)| Op::Inc(p, n)),
            (0u8..4).prop_map(Op::Restart),
            (0u8..4).prop_map(Op::Vanish),
        ], 1..60)) {
            let mut w = CounterWindow::new(0, 100);
            let mut counters = [0.0f64; 4];
            let mut generation = [0u32; 4];
            let mut truth = 0.0;
            for op in ops {
                match op {
                    Op::Inc(p, n) => {
                        let p = p as usize;
                        counters[p] += f64::from(n);
                        truth += f64::from(n);
                    }
                    Op::Restart(p) => counters[p as usize] = 0.0,
                    Op::Vanish(p) => {
                        generation[p as usize] += 1;
                        counters[p as usize] = 0.0;
                        continue;
                    }
                }
                for p in 0..4 {
                    let uid = format!("pod{p}-{}", generation[p]);
                    w.observe(&uid, Some(1), &[s("c", &[], counters[p])]);
                }
                let t = total(&w);
                prop_assert!(t >= 0.0);
                prop_assert!((t - truth).abs() < 1e-9, "total {} truth {}", t, truth);
            }
        }
    }
}
