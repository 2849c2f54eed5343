//! `quality`: accuracy, precision, recall or F1 from labelled outcomes.

use crate::analysis::quality::ConfusionMatrix;
use crate::api::{CheckStatus, QualityCheck, QualityMetric};

use super::{Subject, whole};

pub(super) fn judge(s: &Subject<'_>, q: &QualityCheck) -> CheckStatus {
    let outcomes = s.judge.canary.outcomes.iter();
    let m = match ConfusionMatrix::from_counts(
        outcomes.map(|(a, p, v)| (a.as_str(), p.as_str(), *v)),
    ) {
        Ok(m) => m,
        Err(e) => return s.inconclusive(Some(q.min), 0, format!("no outcomes: {e}")),
    };
    let n = whole(m.total());
    if n < s.judge.min_samples {
        let why = format!("{n} labelled outcomes, {} needed", s.judge.min_samples);
        return s.inconclusive(Some(q.min), n, why);
    }
    let scores = match &q.positive_class {
        Some(p) => match m.class_scores(p) {
            Ok(scores) => scores,
            Err(e) => return s.inconclusive(Some(q.min), n, e.to_string()),
        },
        None => m.macro_average(),
    };
    let value = match q.metric {
        QualityMetric::Accuracy => m.accuracy(),
        QualityMetric::Precision => scores.precision,
        QualityMetric::Recall => scores.recall,
        QualityMetric::F1 => scores.f1,
    };
    s.judged(value, q.min, n, value < q.min, String::new())
}

#[cfg(test)]
mod tests {
    use super::super::testing::{assert_verdict, judge, subject, variant};
    use super::*;
    use crate::api::CheckVerdict;

    fn quality(metric: QualityMetric, min: f64, positive: Option<&str>) -> QualityCheck {
        QualityCheck {
            metric,
            min,
            positive_class: positive.map(String::from),
        }
    }

    fn run(outcomes: &[(&str, &str, f64)], q: &QualityCheck) -> CheckStatus {
        let mut c = variant(3000.0, 0.0);
        c.outcomes = outcomes
            .iter()
            .map(|(a, p, v)| (a.to_string(), p.to_string(), *v))
            .collect();
        let j = judge(&c, &c, None);
        super::judge(&subject("quality", &j), q)
    }

    const GOOD: [(&str, &str, f64); 3] = [("1", "1", 300.0), ("0", "0", 280.0), ("1", "0", 20.0)];

    #[test]
    fn each_metric_is_judged_against_its_minimum() {
        let accuracy = run(&GOOD, &quality(QualityMetric::Accuracy, 0.9, None));
        assert_eq!(accuracy.verdict, CheckVerdict::Pass, "{accuracy:?}");
        assert!((accuracy.value.unwrap() - 580.0 / 600.0).abs() < 1e-12);
        let precision = run(&GOOD, &quality(QualityMetric::Precision, 0.99, Some("1")));
        assert_eq!(precision.value, Some(1.0));
        assert_eq!(precision.verdict, CheckVerdict::Pass);
        let recall = run(&GOOD, &quality(QualityMetric::Recall, 0.99, Some("1")));
        assert_eq!(recall.verdict, CheckVerdict::Fail, "{recall:?}");
        let f1 = run(&GOOD, &quality(QualityMetric::F1, 0.9, None));
        assert_eq!(f1.verdict, CheckVerdict::Pass, "{f1:?}");
    }

    #[test]
    fn no_few_or_unknown_class_outcomes_are_inconclusive() {
        let q = quality(QualityMetric::Accuracy, 0.9, None);
        assert_verdict(&run(&[], &q), CheckVerdict::Inconclusive, "no outcomes");
        let few = [("1", "1", 50.0)];
        assert_verdict(
            &run(&few, &q),
            CheckVerdict::Inconclusive,
            "50 labelled outcomes",
        );
        let unknown = quality(QualityMetric::Precision, 0.9, Some("cat"));
        let o = run(&GOOD, &unknown);
        assert_eq!(o.verdict, CheckVerdict::Inconclusive, "{o:?}");
    }
}
