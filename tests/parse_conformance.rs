//! Conformance, oracle and robustness tests for `exposition`.

use std::collections::BTreeMap;
use std::io;

use modeldeploy::exposition::{
    FamilyFilter, Limits, MetricType, Options, OwnedSample, ParseError, SyntaxError, TextFormat,
    parse, parse_owned, parse_with,
};
use proptest::prelude::*;

const PAYLOAD: &str = include_str!("fixtures/metrics_payload.txt");

fn all(text: &str) -> Vec<OwnedSample> {
    parse_owned(text, &FamilyFilter::all(), &Options::default()).expect("parses")
}

fn om(text: &str) -> Vec<OwnedSample> {
    let opts = Options {
        format: TextFormat::OpenMetrics,
        ..Options::default()
    };
    parse_owned(text, &FamilyFilter::all(), &opts).expect("parses")
}

fn err(text: &str) -> ParseError {
    parse_owned(text, &FamilyFilter::all(), &Options::default()).expect_err("must fail")
}

fn syntax(line: usize, reason: SyntaxError) -> ParseError {
    ParseError::Syntax { line, reason }
}

/// (family, name, labels, value, timestamp) for compact assertions.
type Row = (String, String, Vec<(String, String)>, f64, Option<i64>);

fn rows(samples: &[OwnedSample]) -> Vec<Row> {
    samples
        .iter()
        .map(|s| {
            (
                s.family.clone(),
                s.name.clone(),
                s.labels.clone(),
                s.value,
                s.timestamp,
            )
        })
        .collect()
}

fn row(family: &str, name: &str, labels: &[(&str, &str)], value: f64, ts: Option<i64>) -> Row {
    (
        family.into(),
        name.into(),
        labels
            .iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect(),
        value,
        ts,
    )
}

#[test]
fn prometheus_docs_example() {
    let text = r#"# HELP http_requests_total The total number of HTTP requests.
# TYPE http_requests_total counter
http_requests_total{method="post",code="200"} 1027 1395066363000
http_requests_total{method="post",code="400"}    3 1395066363000

# Escaping in label values:
msdos_file_access_time_seconds{path="C:\\DIR\\FILE.TXT",error="Cannot find file:\n\"FILE.TXT\""} 1.458255915e9

# Minimalistic line:
metric_without_timestamp_and_labels 12.47

# A weird metric from before the epoch:
something_weird{problem="division by zero"} +Inf -3982045

# TYPE http_request_duration_seconds histogram
http_request_duration_seconds_bucket{le="0.05"} 24054
http_request_duration_seconds_bucket{le="+Inf"} 144320
http_request_duration_seconds_sum 53423
http_request_duration_seconds_count 144320

# TYPE rpc_duration_seconds summary
rpc_duration_seconds{quantile="0.01"} 3102
rpc_duration_seconds_sum 1.7560473e+07
rpc_duration_seconds_count 2693
"#;
    let got = all(text);
    let h = "http_request_duration_seconds";
    let r = "rpc_duration_seconds";
    assert_eq!(
        rows(&got),
        vec![
            row(
                "http_requests_total",
                "http_requests_total",
                &[("method", "post"), ("code", "200")],
                1027.0,
                Some(1395066363000)
            ),
            row(
                "http_requests_total",
                "http_requests_total",
                &[("method", "post"), ("code", "400")],
                3.0,
                Some(1395066363000)
            ),
            row(
                "msdos_file_access_time_seconds",
                "msdos_file_access_time_seconds",
                &[
                    ("path", r"C:\DIR\FILE.TXT"),
                    ("error", "Cannot find file:\n\"FILE.TXT\"")
                ],
                1.458255915e9,
                None
            ),
            row(
                "metric_without_timestamp_and_labels",
                "metric_without_timestamp_and_labels",
                &[],
                12.47,
                None
            ),
            row(
                "something_weird",
                "something_weird",
                &[("problem", "division by zero")],
                f64::INFINITY,
                Some(-3982045)
            ),
            row(
                h,
                "http_request_duration_seconds_bucket",
                &[("le", "0.05")],
                24054.0,
                None
            ),
            row(
                h,
                "http_request_duration_seconds_bucket",
                &[("le", "+Inf")],
                144320.0,
                None
            ),
            row(h, "http_request_duration_seconds_sum", &[], 53423.0, None),
            row(
                h,
                "http_request_duration_seconds_count",
                &[],
                144320.0,
                None
            ),
            row(
                r,
                "rpc_duration_seconds",
                &[("quantile", "0.01")],
                3102.0,
                None
            ),
            row(r, "rpc_duration_seconds_sum", &[], 1.7560473e7, None),
            row(r, "rpc_duration_seconds_count", &[], 2693.0, None),
        ]
    );
    assert_eq!(got[0].kind, MetricType::Counter);
    assert_eq!(got[2].kind, MetricType::Unknown);
    assert!(got[5..9].iter().all(|s| s.kind == MetricType::Histogram));
    assert!(got[9..12].iter().all(|s| s.kind == MetricType::Summary));
}

#[test]
fn openmetrics_counter_created_exemplar_unit_eof() {
    let text = "# TYPE foo counter\n\
                # UNIT foo seconds\n\
                # HELP foo Foo.\n\
                foo_total{a=\"1\"} 17.0 1520879607.789 # {trace_id=\"KOO5S4vxi0o\"} 0.67 1520879602.890\n\
                foo_created{a=\"1\"} 1520430000.123\n\
                foo_total{a=\"2\"} 3 # {trace_id=\"x\"} 1\n\
                # TYPE h histogram\n\
                h_bucket{le=\"1\"} 2 # {id=\"}\"} 0.5\n\
                h_bucket{le=\"+Inf\"} 3\n\
                h_count 3\n\
                h_sum 1.5\n\
                h_created 1520430000\n\
                # EOF\n";
    assert_eq!(
        rows(&om(text)),
        vec![
            row("foo", "foo_total", &[("a", "1")], 17.0, Some(1520879607789)),
            row("foo", "foo_created", &[("a", "1")], 1520430000.123, None),
            row("foo", "foo_total", &[("a", "2")], 3.0, None),
            row("h", "h_bucket", &[("le", "1")], 2.0, None),
            row("h", "h_bucket", &[("le", "+Inf")], 3.0, None),
            row("h", "h_count", &[], 3.0, None),
            row("h", "h_sum", &[], 1.5, None),
            row("h", "h_created", &[], 1520430000.0, None),
        ]
    );
    // `# EOF` without a trailing newline, then only blank lines allowed.
    assert_eq!(om("a 1\n# EOF").len(), 1);
    assert_eq!(om("a 1\n# EOF\n\n").len(), 1);
    assert_eq!(
        err("a 1\n# EOF\nb 2\n"),
        syntax(3, SyntaxError::ContentAfterEof)
    );
}

#[test]
fn tricky_label_values() {
    let text = r#"m{a="x,y",b="}",c="=",d="a\\b\"c\nd",e="",f="ünï{}"} 1"#;
    let s = &all(text)[0];
    assert_eq!(
        s.labels,
        vec![
            ("a".to_string(), "x,y".to_string()),
            ("b".into(), "}".into()),
            ("c".into(), "=".into()),
            ("d".into(), "a\\b\"c\nd".into()),
            ("e".into(), "".into()),
            ("f".into(), "ünï{}".into()),
        ]
    );
    // Blanks around tokens, a trailing comma, an empty set.
    let s = all("m{ a = \"1\" , b=\"2\", } 3\nn{} 4\n");
    assert_eq!(s[0].labels.len(), 2);
    assert_eq!(s[0].label("b"), Some("2"));
    assert!(s[1].labels.is_empty());
}

#[test]
fn borrowed_labels_are_lazy_and_borrowed() {
    let text = r#"m{plain="v",esc="a\"b"} 1"#;
    let mut seen = 0;
    parse(text, &FamilyFilter::all(), |s| {
        seen += 1;
        assert_eq!(s.labels.len(), 2);
        assert_eq!(s.labels.raw(), r#"plain="v",esc="a\"b""#);
        let v: Vec<_> = s.labels.iter().collect();
        assert!(matches!(v[0].1, std::borrow::Cow::Borrowed("v")));
        assert!(matches!(v[1].1, std::borrow::Cow::Owned(ref o) if o == "a\"b"));
        assert_eq!(s.labels.get("esc").as_deref(), Some("a\"b"));
        assert_eq!(s.labels.get("nope"), None);
    })
    .unwrap();
    assert_eq!(seen, 1);
}

#[test]
fn values() {
    let s = all("a NaN\nb +Inf\nc -Inf\nd 1e-3\ne -1.5E+2\n");
    assert!(s[0].value.is_nan());
    assert_eq!(s[1].value, f64::INFINITY);
    assert_eq!(s[2].value, f64::NEG_INFINITY);
    assert_eq!(s[3].value, 1e-3);
    assert_eq!(s[4].value, -150.0);
    assert_eq!(err("a 0x1\n"), syntax(1, SyntaxError::InvalidValue));
}

#[test]
fn crlf_blank_lines_no_trailing_newline() {
    let text = "# TYPE a gauge\r\na{x=\"1\"} 1\r\n\r\n   \r\n\tb 2 1000\r\nc 3";
    assert_eq!(
        rows(&all(text)),
        vec![
            row("a", "a", &[("x", "1")], 1.0, None),
            row("b", "b", &[], 2.0, Some(1000)),
            row("c", "c", &[], 3.0, None),
        ]
    );
    assert!(all("").is_empty());
    assert!(all("\n\n# only a comment").is_empty());
}

#[test]
fn untyped_families_strip_histogram_parts() {
    let s = all("x_bucket{le=\"1\"} 1\nx_sum 2\nx_count 3\ny_total 4\ny_created 5\nz 6\n_sum 7\n");
    let fams: Vec<_> = s.iter().map(|s| (s.family.as_str(), s.kind)).collect();
    let u = MetricType::Unknown;
    assert_eq!(
        fams,
        vec![
            ("x", u),
            ("x", u),
            ("x", u),
            ("y_total", u),
            ("y_created", u),
            ("z", u),
            ("_sum", u)
        ]
    );
}

#[test]
fn type_decides_family_only_for_allowed_suffixes() {
    // `g_count` and `s_bucket` are not parts of a gauge or a summary: they are
    // untyped, and untyped names lose a `_count`/`_bucket` suffix.
    let text = "# TYPE g gauge\ng 1\ng_count 2\n# TYPE s summary\ns 1\ns_bucket 2\n";
    let fams: Vec<_> = all(text)
        .iter()
        .map(|s| (s.name.clone(), s.family.clone(), s.kind))
        .collect();
    let p = |a: &str, b: &str, k| (a.to_string(), b.to_string(), k);
    use MetricType::*;
    assert_eq!(
        fams,
        vec![
            p("g", "g", Gauge),
            p("g_count", "g", Unknown),
            p("s", "s", Summary),
            p("s_bucket", "s", Unknown)
        ]
    );
    // Samples that do not follow their TYPE line still find it.
    let text = "# TYPE h histogram\n# TYPE c counter\nh_sum 1\nc_total 2\n";
    let s = all(text);
    assert_eq!(
        (s[0].family.as_str(), s[0].kind),
        ("h", MetricType::Histogram)
    );
    assert_eq!(
        (s[1].family.as_str(), s[1].kind),
        ("c", MetricType::Counter)
    );
}

#[test]
fn filter_selects_families() {
    let text = "# TYPE model_requests_total counter\n\
                model_requests_total{code=\"200\"} 5\n\
                # TYPE om_requests counter\n\
                om_requests_total 6\n\
                om_requests_created 1\n\
                # TYPE lat histogram\n\
                lat_bucket{le=\"1\"} 1\n\
                lat_sum 1\n\
                lat_count 1\n\
                # TYPE other gauge\n\
                other{this line is broken 1\n\
                untyped_total 7\n\
                lat2_bucket{le=\"1\"} 1\n";
    let f = FamilyFilter::new(["model_requests_total", "om_requests_total", "lat", "lat2"]);
    let got = parse_owned(text, &f, &Options::default()).unwrap();
    let names: Vec<_> = got.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(
        names,
        vec![
            "model_requests_total",
            "om_requests_total",
            "om_requests_created",
            "lat_bucket",
            "lat_sum",
            "lat_count",
            "lat2_bucket"
        ]
    );
    // A counter filter entry without `_total` matches too; untyped `_total`
    // names match either spelling.
    let f = FamilyFilter::new(["model_requests", "untyped"]);
    let got = parse_owned(text, &f, &Options::default()).unwrap();
    let names: Vec<_> = got.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(names, vec!["model_requests_total", "untyped_total"]);
    // The broken line fails the parse only when its family is wanted.
    let f = FamilyFilter::new(["other"]);
    assert_eq!(
        parse_owned(text, &f, &Options::default()).unwrap_err(),
        syntax(11, SyntaxError::ExpectedEquals)
    );
    // A gauge filter entry is not widened with `_total`.
    let f = FamilyFilter::new(["untyped_total_x", "other_total"]);
    assert_eq!(
        parse_owned("# TYPE other gauge\nother 1\n", &f, &Options::default()).unwrap(),
        vec![]
    );
}

#[test]
fn malformed_lines_are_typed_errors_with_line_numbers() {
    use SyntaxError::*;
    let cases: &[(&str, ParseError)] = &[
        ("ok 1\n9bad 1\n", syntax(2, InvalidMetricName)),
        ("{a=\"b\"} 1", syntax(1, InvalidMetricName)),
        ("foo=1", syntax(1, UnexpectedAfterName)),
        ("foo", syntax(1, UnexpectedAfterName)),
        ("foo ", syntax(1, MissingValue)),
        ("foo{} ", syntax(1, MissingValue)),
        ("foo{1=\"a\"} 1", syntax(1, ExpectedLabelName)),
        ("foo{a\"b\"} 1", syntax(1, ExpectedEquals)),
        ("foo{a=b} 1", syntax(1, ExpectedQuote)),
        ("foo{a=\"b} 1", syntax(1, UnterminatedLabelValue)),
        ("foo{a=\"b\nc\"} 1", syntax(1, UnterminatedLabelValue)),
        ("foo{a=\"\\t\"} 1", syntax(1, InvalidEscape)),
        ("foo{a=\"b\" c=\"d\"} 1", syntax(1, ExpectedCommaOrBrace)),
        ("foo{a=\"b\"", syntax(1, ExpectedCommaOrBrace)),
        ("foo one", syntax(1, InvalidValue)),
        ("foo 1 12.5", syntax(1, InvalidTimestamp)),
        ("foo 1 99999999999999999999", syntax(1, InvalidTimestamp)),
        ("foo 1 2 3", syntax(1, TrailingCharacters)),
        ("foo 1 #bad", syntax(1, TrailingCharacters)),
        ("\n\n# TYPE\n", syntax(3, InvalidTypeLine)),
        ("# TYPE foo\n", syntax(1, InvalidTypeLine)),
    ];
    for (text, want) in cases {
        assert_eq!(&err(text), want, "{text:?}");
    }
    // Display names the line and the reason.
    assert_eq!(err("a 1\nb{").to_string(), "line 2: expected a label name");
}

#[test]
fn limits_are_typed_errors() {
    let opts = Options {
        limits: Limits {
            max_samples: 2,
            max_labels: 2,
        },
        ..Options::default()
    };
    let f = FamilyFilter::all();
    assert_eq!(parse_owned("a 1\nb 2\n", &f, &opts).unwrap().len(), 2);
    assert_eq!(
        parse_owned("a 1\nb 2\nc 3\n", &f, &opts).unwrap_err(),
        ParseError::TooManySamples { line: 3, limit: 2 }
    );
    // Unwanted samples do not count.
    let only_c = FamilyFilter::new(["c"]);
    assert_eq!(
        parse_owned("a 1\nb 2\nc 3\n", &only_c, &opts)
            .unwrap()
            .len(),
        1
    );
    assert_eq!(
        parse_owned(
            "a{x=\"1\",y=\"2\"} 1\na{x=\"1\",y=\"2\",z=\"3\"} 1\n",
            &f,
            &opts
        )
        .unwrap_err(),
        ParseError::TooManyLabels { line: 2, limit: 2 }
    );
}

#[test]
fn very_long_lines() {
    let value = "v".repeat(1 << 20);
    let name = format!("m{}", "x".repeat(100_000));
    let text = format!("# HELP {name} {value}\n{name}{{big=\"{value}\"}} 1\n");
    let s = all(&text);
    assert_eq!(s.len(), 1);
    assert_eq!(s[0].name, name);
    assert_eq!(s[0].label("big").map(str::len), Some(1 << 20));
}

/// (name, labels without `le`, `le` as a number, value), sortable.
type Flat = (String, BTreeMap<String, String>, Option<u64>, u64);

#[test]
fn payload_agrees_with_prometheus_parse_crate() {
    // prometheus-parse drops `x_sum{} 1` lines (its regex needs a label
    // inside braces); `x_sum 1` means the same, so give it that spelling.
    let crate_input = PAYLOAD.replace("{} ", " ");
    assert_ne!(crate_input, PAYLOAD, "the payload has `{{}}` lines");

    let mut ours: Vec<Flat> = Vec::new();
    for text in [PAYLOAD, crate_input.as_str()] {
        let mut flat = Vec::new();
        parse(text, &FamilyFilter::all(), |s| {
            let mut labels = BTreeMap::new();
            let mut le = None;
            for (n, v) in s.labels.iter() {
                if n == "le" && s.name.ends_with("_bucket") {
                    le = Some(v.parse::<f64>().expect("numeric le").to_bits());
                } else {
                    labels.insert(n.to_string(), v.into_owned());
                }
            }
            flat.push((s.name.to_string(), labels, le, s.value.to_bits()));
        })
        .unwrap();
        flat.sort();
        if ours.is_empty() {
            ours = flat;
        } else {
            assert_eq!(ours, flat, "`{{}}` and no braces parse the same");
        }
    }

    let lines = crate_input
        .lines()
        .map(|l| Ok::<_, io::Error>(l.to_owned()));
    let scrape = prometheus_parse::Scrape::parse(lines).unwrap();
    let mut theirs: Vec<Flat> = Vec::new();
    for s in scrape.samples {
        let labels: BTreeMap<String, String> = s
            .labels
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        use prometheus_parse::Value;
        match s.value {
            Value::Counter(v) | Value::Gauge(v) | Value::Untyped(v) => {
                theirs.push((s.metric, labels, None, v.to_bits()))
            }
            Value::Histogram(buckets) => {
                for b in buckets {
                    theirs.push((
                        format!("{}_bucket", s.metric),
                        labels.clone(),
                        Some(b.less_than.to_bits()),
                        b.count.to_bits(),
                    ));
                }
            }
            Value::Summary(_) => panic!("no summaries in the payload"),
        }
    }
    theirs.sort();
    assert_eq!(ours.len(), 2347);
    assert_eq!(ours, theirs);
}

#[test]
fn payload_with_operator_filter() {
    let f = FamilyFilter::new([
        "model_requests_total",
        "model_request_duration_seconds",
        "model_input_feature",
        "model_prediction",
        "model_prediction_outcomes_total",
    ]);
    let mut by_family: BTreeMap<&str, usize> = BTreeMap::new();
    let n = parse(PAYLOAD, &f, |s| {
        *by_family.entry(s.family).or_default() += 1;
        let want = if s.family.ends_with("_total") {
            MetricType::Counter
        } else {
            MetricType::Histogram
        };
        assert_eq!(s.kind, want, "{}", s.name);
    })
    .unwrap();
    assert_eq!(n, 2345);
    assert_eq!(by_family["model_input_feature"], 100 * 23);
    assert_eq!(by_family["model_requests_total"], 4);
    assert_eq!(by_family["model_request_duration_seconds"], 14);
    assert_eq!(by_family["model_prediction"], 23);
    assert_eq!(by_family["model_prediction_outcomes_total"], 4);
    assert!(!by_family.contains_key("process_cpu_seconds_total"));
}

/// Renders a label value in exposition syntax.
fn escape(v: &str) -> String {
    v.replace('\\', r"\\")
        .replace('"', "\\\"")
        .replace('\n', r"\n")
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        let text = String::from_utf8_lossy(&bytes);
        for format in [TextFormat::Prometheus, TextFormat::OpenMetrics] {
            let opts = Options { format, ..Options::default() };
            let _ = parse_owned(&text, &FamilyFilter::all(), &opts);
            let _ = parse_owned(&text, &FamilyFilter::new(["a", "a_total"]), &opts);
        }
    }

    #[test]
    fn exposition_alphabet_never_panics(text in "[a-c_{}=\",# \\\\\n\r\t0-9.eE+-]{0,200}") {
        let _ = parse_owned(&text, &FamilyFilter::all(), &Options::default());
        let _ = parse_owned(&text, &FamilyFilter::new(["a", "b_total"]), &Options::default());
    }

    #[test]
    fn mutated_payload_never_panics(
        edits in proptest::collection::vec((any::<prop::sample::Index>(), 0u8..3, any::<u8>()), 1..8),
        cut in any::<prop::sample::Index>(),
    ) {
        // A window of the payload, so each case stays cheap.
        let start = cut.index(PAYLOAD.len() - 4096);
        let mut bytes = PAYLOAD.as_bytes()[start..start + 4096].to_vec();
        for (at, op, byte) in edits {
            let i = at.index(bytes.len());
            match op {
                0 => bytes[i] = byte,
                1 => bytes.insert(i, byte),
                _ => { bytes.remove(i); }
            }
        }
        let text = String::from_utf8_lossy(&bytes);
        let wanted = FamilyFilter::new(["model_input_feature"]);
        for f in [FamilyFilter::all(), wanted] {
            let mut visited = 0;
            match parse(&text, &f, |s| { visited += 1; let _ = s.labels.iter().count(); }) {
                Ok(n) => prop_assert_eq!(n, visited),
                Err(e) => prop_assert!(e.line() >= 1),
            }
        }
    }

    #[test]
    fn generated_samples_round_trip(
        samples in proptest::collection::vec((
            "[a-zA-Z_:][a-zA-Z0-9_:]{0,12}",
            proptest::collection::btree_map("[a-zA-Z_][a-zA-Z0-9_]{0,8}", any::<String>(), 0..4),
            any::<f64>(),
            proptest::option::of(any::<i64>()),
        ), 0..20),
        crlf in any::<bool>(),
    ) {
        let eol = if crlf { "\r\n" } else { "\n" };
        let mut text = String::new();
        for (name, labels, value, ts) in &samples {
            let ls: Vec<String> = labels.iter().map(|(k, v)| format!("{k}=\"{}\"", escape(v))).collect();
            text.push_str(&format!("{name}{{{}}} {value:?}", ls.join(",")));
            if let Some(ts) = ts {
                text.push_str(&format!(" {ts}"));
            }
            text.push_str(eol);
        }
        let got = parse_owned(&text, &FamilyFilter::all(), &Options::default()).unwrap();
        prop_assert_eq!(got.len(), samples.len());
        for (g, (name, labels, value, ts)) in got.iter().zip(&samples) {
            prop_assert_eq!(&g.name, name);
            let want: Vec<(String, String)> = labels.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
            prop_assert_eq!(&g.labels, &want);
            prop_assert!(g.value.to_bits() == value.to_bits() || (g.value.is_nan() && value.is_nan()));
            prop_assert_eq!(g.timestamp, *ts);
        }
    }
}

#[test]
fn parse_with_counts_visits() {
    let n = parse_with(
        "a 1\nb 2\n",
        &FamilyFilter::new(["b"]),
        &Options::default(),
        |_| {},
    )
    .unwrap();
    assert_eq!(n, 1);
}
