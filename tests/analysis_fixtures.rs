//! `src/analysis` against numpy/scipy/sklearn: the expected values in
//! `tests/fixtures/analysis_fixtures.json` come from
//! `scripts/gen_analysis_fixtures.py`; no Python is needed here.
//!
//! Tolerance: `|got - want| <= 1e-9 * |want| + 1e-15`. The absolute 1e-15
//! floor is for values that are differences of O(1) numbers (a KS statistic
//! of 1e-8 between two CDFs near 1, a PSI of 1e-12): any implementation,
//! scipy's included, carries ~1e-16 absolute rounding there, so 1e-9
//! relative of such a value is below what either side can resolve.
//! NaN must match NaN, infinities must match exactly, `null` is `None`.

use modeldeploy::analysis::drift::{
    chi_squared, jensen_shannon, kolmogorov_smirnov, psi, wasserstein, wasserstein_raw,
};
use modeldeploy::analysis::histogram::{Histogram, histogram_quantile};
use modeldeploy::analysis::multiple_testing::{
    Correction, benjamini_hochberg, bonferroni, rejected,
};
use modeldeploy::analysis::quality::{ConfusionMatrix, QualityError};
use serde_json::Value;

const REL: f64 = 1e-9;
const ABS: f64 = 1e-15;

fn fixtures() -> Value {
    serde_json::from_str(include_str!("fixtures/analysis_fixtures.json")).expect("valid JSON")
}

fn num(v: &Value) -> Option<f64> {
    match v {
        Value::Null => None,
        Value::String(s) => Some(match s.as_str() {
            "NaN" => f64::NAN,
            "+Inf" => f64::INFINITY,
            "-Inf" => f64::NEG_INFINITY,
            other => panic!("unexpected number string {other:?}"),
        }),
        _ => Some(v.as_f64().expect("number")),
    }
}

fn nums(v: &Value) -> Vec<f64> {
    v.as_array()
        .expect("array")
        .iter()
        .map(|x| num(x).expect("non-null"))
        .collect()
}

fn close(got: f64, want: f64) -> bool {
    if want.is_nan() {
        return got.is_nan();
    }
    if want.is_infinite() || got.is_infinite() {
        return got == want;
    }
    (got - want).abs() <= REL * want.abs() + ABS
}

#[track_caller]
fn assert_close(got: f64, want: f64, what: &str) {
    assert!(close(got, want), "{what}: got {got:e}, want {want:e}");
}

#[test]
fn histogram_quantile_matches_promql() {
    let doc = fixtures();
    for case in doc["histogram_quantile"].as_array().unwrap() {
        let name = case["name"].as_str().unwrap();
        let bounds = nums(&case["upper_bounds"]);
        let counts = nums(&case["cumulative_counts"]);
        let h = if case["lenient"].as_bool().unwrap() {
            assert!(
                Histogram::new(bounds.clone(), counts.clone()).is_err() || name == "float_noise"
            );
            Histogram::from_scrape(bounds, counts)
        } else {
            Histogram::new(bounds, counts)
        }
        .unwrap_or_else(|e| panic!("{name}: {e}"));
        let qs = nums(&case["q"]);
        let expected: Vec<Option<f64>> = case["expected"]
            .as_array()
            .unwrap()
            .iter()
            .map(num)
            .collect();
        for (q, want) in qs.iter().zip(expected) {
            let got = histogram_quantile(*q, &h);
            match (got, want) {
                (None, None) => {}
                (Some(g), Some(w)) => assert_close(g, w, &format!("{name} q={q}")),
                _ => panic!("{name} q={q}: got {got:?}, want {want:?}"),
            }
        }
    }
}

#[test]
fn drift_matches_scipy() {
    let doc = fixtures();
    let cases = doc["drift"].as_array().unwrap();
    assert!(cases.len() >= 10);
    for case in cases {
        let name = case["name"].as_str().unwrap();
        let bounds = nums(&case["upper_bounds"]);
        let r = nums(&case["reference"]);
        let o = nums(&case["observed"]);
        let want = |k: &str| num(&case[k]).unwrap();
        assert_close(psi(&r, &o).unwrap(), want("psi"), &format!("{name} psi"));
        assert_close(
            jensen_shannon(&r, &o).unwrap(),
            want("js"),
            &format!("{name} js"),
        );
        let ks = kolmogorov_smirnov(&r, &o).unwrap();
        assert_close(ks.statistic, want("ks_statistic"), &format!("{name} ks D"));
        assert_close(ks.p_value, want("ks_p_value"), &format!("{name} ks p"));
        let chi = chi_squared(&r, &o).unwrap();
        assert_close(
            chi.statistic,
            want("chi2_statistic"),
            &format!("{name} chi2"),
        );
        assert_eq!(
            chi.dof as u64,
            case["chi2_dof"].as_u64().unwrap(),
            "{name} dof"
        );
        assert_close(chi.p_value, want("chi2_p_value"), &format!("{name} chi2 p"));
        assert_close(
            wasserstein(&bounds, &r, &o).unwrap(),
            want("wasserstein"),
            &format!("{name} wasserstein"),
        );
        assert_close(
            wasserstein_raw(&bounds, &r, &o).unwrap(),
            want("wasserstein_raw"),
            &format!("{name} wasserstein raw"),
        );
        // Integer counts give the same answers when they are integers.
        if r.iter().chain(&o).all(|c| c.fract() == 0.0 && *c < 1e15) {
            let ri: Vec<u64> = r.iter().map(|&c| c as u64).collect();
            let oi: Vec<u64> = o.iter().map(|&c| c as u64).collect();
            assert_eq!(psi(&ri, &oi).unwrap(), psi(&r, &o).unwrap(), "{name} u64");
        }
    }
}

/// 100 features x 20 buckets, scored feature by feature as the operator does.
#[test]
fn batch_matches_scipy() {
    let doc = fixtures();
    let b = &doc["batch"];
    let rows = |k: &str| -> Vec<Vec<f64>> { b[k].as_array().unwrap().iter().map(nums).collect() };
    let (reference, observed) = (rows("reference"), rows("observed"));
    assert_eq!((reference.len(), reference[0].len()), (100, 20));
    let mut drifted = 0;
    let expected = b["expected"].as_array().unwrap();
    for (f, ((r, o), want)) in reference.iter().zip(&observed).zip(expected).enumerate() {
        let w = |k: &str| num(&want[k]).unwrap();
        assert_close(psi(r, o).unwrap(), w("psi"), &format!("feature {f} psi"));
        let js = jensen_shannon(r, o).unwrap();
        assert_close(js, w("js"), &format!("feature {f} js"));
        let ks = kolmogorov_smirnov(r, o).unwrap();
        assert_close(ks.statistic, w("ks_statistic"), &format!("feature {f} D"));
        assert_close(ks.p_value, w("ks_p_value"), &format!("feature {f} p"));
        drifted += usize::from(ks.p_value < 0.01);
    }
    // The fixture drifts every fourth feature; most of them must show.
    assert!(drifted >= 15, "only {drifted} features flagged");
}

#[test]
fn multiple_testing_matches_scipy() {
    let doc = fixtures();
    for case in doc["multiple_testing"].as_array().unwrap() {
        let name = case["name"].as_str().unwrap();
        let p = nums(&case["p_values"]);
        let alpha = case["alpha"].as_f64().unwrap();
        for (got, want) in bonferroni(&p)
            .unwrap()
            .iter()
            .zip(nums(&case["bonferroni"]))
        {
            assert_close(*got, want, &format!("{name} bonferroni"));
        }
        let bh = benjamini_hochberg(&p).unwrap();
        assert_eq!(bh.len(), p.len());
        for (got, want) in bh.iter().zip(nums(&case["benjamini_hochberg"])) {
            assert_close(*got, want, &format!("{name} bh"));
        }
        let flags = |k: &str| -> Vec<bool> {
            case[k]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_bool().unwrap())
                .collect()
        };
        assert_eq!(
            rejected(&p, alpha, Correction::Bonferroni).unwrap(),
            flags("bonferroni_rejected"),
            "{name}"
        );
        assert_eq!(
            rejected(&p, alpha, Correction::BenjaminiHochberg).unwrap(),
            flags("bh_rejected"),
            "{name}"
        );
    }
}

#[test]
fn quality_matches_sklearn() {
    let doc = fixtures();
    for case in doc["quality"].as_array().unwrap() {
        let name = case["name"].as_str().unwrap();
        let entries: Vec<(String, String, f64)> = case["entries"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| {
                (
                    e[0].as_str().unwrap().to_owned(),
                    e[1].as_str().unwrap().to_owned(),
                    e[2].as_f64().unwrap(),
                )
            })
            .collect();
        let m = ConfusionMatrix::from_counts(entries);
        if case.get("error").is_some() {
            assert_eq!(m, Err(QualityError::NoSamples), "{name}");
            continue;
        }
        let m = m.unwrap();
        let labels: Vec<String> = case["labels"]
            .as_array()
            .unwrap()
            .iter()
            .map(|l| l.as_str().unwrap().to_owned())
            .collect();
        assert_eq!(m.labels(), labels.as_slice(), "{name}");
        let cm: Vec<f64> = case["confusion_matrix"]
            .as_array()
            .unwrap()
            .iter()
            .flat_map(nums)
            .collect();
        assert_eq!(m.counts(), cm.as_slice(), "{name}");
        assert_close(
            m.accuracy(),
            case["accuracy"].as_f64().unwrap(),
            &format!("{name} accuracy"),
        );
        let positive = case["positive"].as_str().unwrap();
        let bin = m.class_scores(positive).unwrap();
        let mac = m.macro_average();
        for (got, key) in [
            (bin.precision, "precision"),
            (bin.recall, "recall"),
            (bin.f1, "f1"),
        ] {
            assert_close(
                got,
                case["binary"][key].as_f64().unwrap(),
                &format!("{name} binary {key}"),
            );
        }
        for (got, key) in [
            (mac.precision, "precision"),
            (mac.recall, "recall"),
            (mac.f1, "f1"),
        ] {
            assert_close(
                got,
                case["macro"][key].as_f64().unwrap(),
                &format!("{name} macro {key}"),
            );
        }
    }
}
