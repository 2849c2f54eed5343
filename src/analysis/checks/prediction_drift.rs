//! `predictionDrift`: the canary's prediction histogram against stable's
//! over the same window.

use crate::api::{CheckStatus, DriftCheck};

use super::{Subject, score, whole};

pub(super) fn judge(s: &Subject<'_>, d: &DriftCheck) -> CheckStatus {
    let j = s.judge;
    let (Some(c), Some(stable)) = (&j.canary.predictions, &j.stable.predictions) else {
        return s.inconclusive(
            Some(d.max),
            s.requests,
            "no prediction histogram from canary and stable",
        );
    };
    if whole(stable.total()) < j.min_samples {
        return s.inconclusive(
            Some(d.max),
            whole(c.total()),
            "too few stable predictions to compare with",
        );
    }
    match score(d.method, stable, c) {
        Ok((value, _)) => s.judged(value, d.max, whole(c.total()), value > d.max, String::new()),
        Err(e) => s.inconclusive(Some(d.max), s.requests, e),
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::{assert_verdict, checks, hist, judge, subject, variant};
    use super::*;
    use crate::analysis::window::VariantData;
    use crate::api::CheckVerdict;

    fn js(max: f64) -> DriftCheck {
        let c = checks(serde_json::json!([
            {"name": "outputs", "predictionDrift": {"method": "js", "max": max}}
        ]));
        c[0].prediction_drift.clone().unwrap()
    }

    fn run(canary: &VariantData, stable: &VariantData, d: &DriftCheck) -> CheckStatus {
        let j = judge(canary, stable, None);
        super::judge(&subject("outputs", &j), d)
    }

    #[test]
    fn like_predictions_pass_and_shifted_ones_fail() {
        let stable = variant(30000.0, 0.0);
        let pass = run(&variant(3000.0, 0.0), &stable, &js(0.1));
        assert_eq!(pass.verdict, CheckVerdict::Pass, "{pass:?}");
        assert_eq!(pass.samples, 3000);
        let mut shifted = variant(3000.0, 0.0);
        shifted.predictions = Some(hist(&[2900.0, 100.0]));
        let fail = run(&shifted, &stable, &js(0.1));
        assert_eq!(fail.verdict, CheckVerdict::Fail, "{fail:?}");
    }

    #[test]
    fn missing_thin_or_mismatched_histograms_are_inconclusive() {
        let c = variant(3000.0, 0.0);
        let mut none = variant(30000.0, 0.0);
        none.predictions = None;
        let o = run(&c, &none, &js(0.1));
        assert_verdict(&o, CheckVerdict::Inconclusive, "no prediction histogram");
        let thin = variant(100.0, 0.0);
        let o = run(&c, &thin, &js(0.1));
        assert_verdict(&o, CheckVerdict::Inconclusive, "too few stable predictions");
        let mut other_buckets = variant(30000.0, 0.0);
        other_buckets.predictions = Some(hist(&[10000.0, 10000.0, 10000.0]));
        let o = run(&c, &other_buckets, &js(0.1));
        assert_verdict(&o, CheckVerdict::Inconclusive, "buckets differ");
    }
}
