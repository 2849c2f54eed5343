//! Prometheus text exposition (0.0.4) and OpenMetrics text, keeping only the
//! families a check needs. Hand-written rather than the `prometheus-parse`
//! crate: the operator parses every pod every interval, most of each payload
//! is skipped by name, and a malicious payload must cost little and never
//! panic (see docs/benchmarks.md for the numbers).

use std::collections::BTreeSet;

/// One kept sample, with unescaped label values.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub name: String,
    pub labels: Vec<(String, String)>,
    pub value: f64,
}

impl Sample {
    pub fn label(&self, name: &str) -> Option<&str> {
        self.labels
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    #[error("line {line}: {reason}")]
    Malformed { line: usize, reason: &'static str },
    #[error("more than {0} samples kept")]
    TooManySamples(usize),
    #[error("line {0}: more than the allowed labels")]
    TooManyLabels(usize),
}

#[derive(Debug, Clone)]
pub struct Limits {
    pub max_samples: usize,
    pub max_labels: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_samples: 20_000,
            max_labels: 32,
        }
    }
}

/// Families to keep, by base name; a sample belongs to family `f` when its
/// name is `f` or `f` plus `_bucket`, `_sum`, `_count`, `_total` or `_created`.
#[derive(Debug, Clone, Default)]
pub struct FamilyFilter {
    names: BTreeSet<String>,
    all: bool,
}

const SUFFIXES: [&str; 5] = ["_bucket", "_sum", "_count", "_total", "_created"];

impl FamilyFilter {
    pub fn new<I: IntoIterator<Item = S>, S: Into<String>>(names: I) -> Self {
        Self {
            names: names.into_iter().map(Into::into).collect(),
            all: false,
        }
    }

    pub fn all() -> Self {
        Self {
            names: BTreeSet::new(),
            all: true,
        }
    }

    pub fn keeps(&self, sample_name: &str) -> bool {
        if self.all || self.names.contains(sample_name) {
            return true;
        }
        SUFFIXES.iter().any(|s| {
            sample_name
                .strip_suffix(s)
                .is_some_and(|base| self.names.contains(base))
        })
    }
}

fn value(s: &str) -> Option<f64> {
    match s {
        "+Inf" | "Inf" | "+inf" | "inf" => Some(f64::INFINITY),
        "-Inf" | "-inf" => Some(f64::NEG_INFINITY),
        "NaN" | "nan" => Some(f64::NAN),
        other => other.parse().ok(),
    }
}

fn is_name_char(b: u8, first: bool) -> bool {
    b.is_ascii_alphabetic() || b == b'_' || b == b':' || (!first && b.is_ascii_digit())
}

/// Parse `text`, keeping the samples `filter` wants.
pub fn parse(
    text: &str,
    filter: &FamilyFilter,
    limits: &Limits,
) -> Result<Vec<Sample>, ParseError> {
    let mut out = Vec::new();
    for (i, raw) in text.split('\n').enumerate() {
        let line_no = i + 1;
        let line = raw.strip_suffix('\r').unwrap_or(raw).trim_start();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let bytes = line.as_bytes();
        let mut end = 0;
        while end < bytes.len() && is_name_char(bytes[end], end == 0) {
            end += 1;
        }
        if end == 0 {
            return Err(ParseError::Malformed {
                line: line_no,
                reason: "no metric name",
            });
        }
        let name = &line[..end];
        if !filter.keeps(name) {
            continue;
        }
        let mut rest = &line[end..];
        let mut labels = Vec::new();
        if let Some(after) = rest.strip_prefix('{') {
            let (parsed, remaining) = parse_labels(after, line_no, limits.max_labels)?;
            labels = parsed;
            rest = remaining;
        }
        let mut fields = rest.split_ascii_whitespace();
        let v = fields.next().and_then(value).ok_or(ParseError::Malformed {
            line: line_no,
            reason: "no sample value",
        })?;
        // A timestamp or an OpenMetrics exemplar may follow; neither is needed.
        if out.len() >= limits.max_samples {
            return Err(ParseError::TooManySamples(limits.max_samples));
        }
        out.push(Sample {
            name: name.to_string(),
            labels,
            value: v,
        });
    }
    Ok(out)
}

type Labels<'a> = (Vec<(String, String)>, &'a str);

fn parse_labels(mut s: &str, line: usize, max: usize) -> Result<Labels<'_>, ParseError> {
    let bad = |reason| ParseError::Malformed { line, reason };
    let mut labels = Vec::new();
    loop {
        s = s.trim_start();
        if let Some(after) = s.strip_prefix('}') {
            return Ok((labels, after));
        }
        let end = s
            .bytes()
            .position(|b| !(b.is_ascii_alphanumeric() || b == b'_'))
            .ok_or(bad("unterminated labels"))?;
        if end == 0 {
            return Err(bad("bad label name"));
        }
        let key = &s[..end];
        s = s[end..].trim_start();
        s = s
            .strip_prefix('=')
            .ok_or(bad("label without '='"))?
            .trim_start();
        s = s.strip_prefix('"').ok_or(bad("label value not quoted"))?;
        let mut value = String::new();
        let mut chars = s.char_indices();
        let close = loop {
            match chars.next() {
                None => return Err(bad("unterminated label value")),
                Some((i, '"')) => break i,
                Some((_, '\\')) => match chars.next() {
                    Some((_, 'n')) => value.push('\n'),
                    Some((_, '\\')) => value.push('\\'),
                    Some((_, '"')) => value.push('"'),
                    Some((_, other)) => {
                        value.push('\\');
                        value.push(other);
                    }
                    None => return Err(bad("unterminated label value")),
                },
                Some((_, c)) => value.push(c),
            }
        };
        if labels.len() >= max {
            return Err(ParseError::TooManyLabels(line));
        }
        labels.push((key.to_string(), value));
        s = s[close + 1..].trim_start();
        if let Some(after) = s.strip_prefix(',') {
            s = after;
        } else if !s.starts_with('}') {
            return Err(bad("expected ',' or '}' after a label"));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const TEXT: &str = "# HELP model_requests_total Requests.\n\
# TYPE model_requests_total counter\n\
model_requests_total{code=\"200\"} 1027\n\
model_requests_total{code=\"500\"} 3 1700000000000\n\
model_request_duration_seconds_bucket{le=\"0.1\"} 5\r\n\
model_request_duration_seconds_bucket{le=\"+Inf\"} 9\n\
model_request_duration_seconds_sum 1.5e-1\n\
model_request_duration_seconds_count 9\n\
other_metric{a=\"x\"} 1\n\
model_input_feature_bucket{feature=\"a,b}=\\\"q\\\"\\n\",le=\"1\"} 4 # {trace_id=\"abc\"} 1.0 123\n\
process_cpu_seconds_total NaN\n";

    #[test]
    fn keeps_only_wanted_families_with_their_suffixes() {
        let f = FamilyFilter::new([
            "model_requests_total",
            "model_request_duration_seconds",
            "model_input_feature",
        ]);
        let s = parse(TEXT, &f, &Limits::default()).unwrap();
        let names: Vec<&str> = s.iter().map(|x| x.name.as_str()).collect();
        assert_eq!(
            names,
            vec![
                "model_requests_total",
                "model_requests_total",
                "model_request_duration_seconds_bucket",
                "model_request_duration_seconds_bucket",
                "model_request_duration_seconds_sum",
                "model_request_duration_seconds_count",
                "model_input_feature_bucket"
            ]
        );
        assert_eq!(s[1].label("code"), Some("500"));
        assert_eq!(s[1].value, 3.0);
        assert_eq!(s[3].value, 9.0);
        assert_eq!(s[3].label("le"), Some("+Inf"));
        assert_eq!(s[4].value, 0.15);
        assert_eq!(s[6].label("feature"), Some("a,b}=\"q\"\n"));
        assert_eq!(s[6].value, 4.0);
        let all = parse(TEXT, &FamilyFilter::all(), &Limits::default()).unwrap();
        assert!(all.last().unwrap().value.is_nan());
    }

    #[test]
    fn malformed_lines_and_limits_are_errors() {
        let f = FamilyFilter::all();
        assert!(matches!(
            parse("x{a=\"1\" 2\n", &f, &Limits::default()),
            Err(ParseError::Malformed { line: 1, .. })
        ));
        assert!(matches!(
            parse("ok 1\nx{a=b} 2\n", &f, &Limits::default()),
            Err(ParseError::Malformed { line: 2, .. })
        ));
        assert!(matches!(
            parse("x\n", &f, &Limits::default()),
            Err(ParseError::Malformed { .. })
        ));
        let limits = Limits {
            max_samples: 1,
            max_labels: 1,
        };
        assert_eq!(
            parse("a 1\nb 2\n", &f, &limits),
            Err(ParseError::TooManySamples(1))
        );
        assert_eq!(
            parse("a{x=\"1\",y=\"2\"} 1\n", &f, &limits),
            Err(ParseError::TooManyLabels(1))
        );
        // Unwanted lines are not even checked.
        let only_a = FamilyFilter::new(["a"]);
        assert_eq!(
            parse("a 1\nzz{{{ garbage\n", &only_a, &Limits::default())
                .unwrap()
                .len(),
            1
        );
    }

    proptest! {
        #[test]
        fn never_panics(text in ".{0,400}") {
            let _ = parse(&text, &FamilyFilter::all(), &Limits::default());
        }

        #[test]
        fn never_panics_on_mutated_payloads(cut in 0usize..600, junk in "[{}\",=\\\\ a-z0-9\n]{0,20}") {
            let mut t = TEXT.to_string();
            let at = cut.min(t.len());
            let at = (0..=at).rev().find(|i| t.is_char_boundary(*i)).unwrap_or(0);
            t.insert_str(at, &junk);
            let _ = parse(&t, &FamilyFilter::all(), &Limits::default());
        }
    }
}
