//! Parser for the Prometheus text exposition format 0.0.4 and OpenMetrics text 1.0.
//!
//! # Why hand-written
//!
//! DESIGN.md prefers a maintained crate for Prometheus text parsing unless a
//! benchmark shows it is the bottleneck. It does: on the `gen_payload.py`
//! payload (143 KB, 100 feature histograms), in one `cargo bench --bench parse`
//! run on the project's 2-core machine (shared, load average ~6),
//! `prometheus-parse` 0.2.5 reached 21 MB/s, far under the 300 MB/s target
//! (it also drops `x_sum{} 1` lines and splits label values on `,`), while
//! this parser reached 365 MB/s on all families (17x) and 430 MB/s with the
//! operator's filter (20x); Python's `prometheus_client` parser: 2.6 MB/s.
//! Details: `docs/benchmarks.md`, `## Parsing`.
//!
//! # Model
//!
//! [`parse`] walks the text once and calls a visitor with a borrowed [`Sample`]
//! for every sample of a wanted family ([`FamilyFilter`]); nothing is allocated
//! per sample. Lines of unwanted families are only read up to their metric name
//! and then skipped, so their syntax is not checked: a broken line in a family
//! the operator ignores does not fail the scrape. [`parse_owned`] collects into
//! [`OwnedSample`]s.
//!
//! # Families
//!
//! A sample belongs to the family named by a `# TYPE` line when its name is the
//! family name plus a suffix that type allows: histogram `_bucket`, `_sum`,
//! `_count`, `_created`; summary the bare name, `_sum`, `_count`, `_created`;
//! counter the bare name (0.0.4 style, `# TYPE x_total counter`), `_total`,
//! `_created` (OpenMetrics style, `# TYPE x counter`); gauge histogram
//! `_bucket`, `_gsum`, `_gcount`; info `_info`; others the bare name.
//! A sample with no matching `# TYPE` has kind [`MetricType::Unknown`] and a
//! family equal to its name with one `_bucket`, `_sum` or `_count` suffix
//! stripped (so an untyped histogram still groups under its base name); other
//! names, including `_total` and `_created`, are their own family.
//! A filter entry for a counter matches with or without `_total`, so
//! `model_requests_total` selects both `# TYPE model_requests_total counter`
//! (0.0.4) and `# TYPE model_requests counter` (OpenMetrics).
//!
//! # Errors
//!
//! The first malformed line of a wanted family (or a line whose metric name
//! cannot be read) stops the parse with a [`ParseError`] carrying the 1-based
//! line number and a [`SyntaxError`] reason: a scrape is used whole or not at
//! all. Samples already handed to the visitor before the error must be
//! discarded by the caller. Exceeding [`Limits`] is an error too. No input
//! makes the parser panic (proptest in `tests/parse_conformance.rs`).
//!
//! # Not supported
//!
//! UTF-8 quoted metric names (`{"my.metric"}`), hexadecimal float values,
//! duplicate label detection. `# HELP` and `# UNIT` are accepted and ignored.

use std::borrow::Cow;
use std::collections::{HashMap, HashSet};
use std::fmt;

/// Which text format the payload is in. Only timestamps differ: Prometheus
/// 0.0.4 writes integer milliseconds, OpenMetrics (float) seconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TextFormat {
    /// `text/plain; version=0.0.4`
    #[default]
    Prometheus,
    /// `application/openmetrics-text; version=1.0.0`
    OpenMetrics,
}

/// Caps that keep a hostile payload from costing unbounded memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Most samples handed to the visitor (only wanted families count).
    pub max_samples: usize,
    /// Most labels on one sample of a wanted family.
    pub max_labels: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_samples: 200_000,
            max_labels: 64,
        }
    }
}

/// Parse options: format and limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Options {
    pub format: TextFormat,
    pub limits: Limits,
}

/// Metric type from a `# TYPE` line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MetricType {
    Counter,
    Gauge,
    Histogram,
    GaugeHistogram,
    Summary,
    Info,
    StateSet,
    /// `untyped`, `unknown`, an unrecognised type word, or no `# TYPE` line.
    Unknown,
}

impl MetricType {
    fn from_word(w: &[u8]) -> Self {
        match w {
            b"counter" => Self::Counter,
            b"gauge" => Self::Gauge,
            b"histogram" => Self::Histogram,
            b"gaugehistogram" => Self::GaugeHistogram,
            b"summary" => Self::Summary,
            b"info" => Self::Info,
            b"stateset" => Self::StateSet,
            _ => Self::Unknown,
        }
    }

    /// Whether a sample named `family + suffix` belongs to a family of this type.
    fn allows_suffix(self, suffix: &[u8]) -> bool {
        match self {
            Self::Counter => matches!(suffix, b"" | b"_total" | b"_created"),
            Self::Histogram => matches!(suffix, b"_bucket" | b"_sum" | b"_count" | b"_created"),
            Self::Summary => matches!(suffix, b"" | b"_sum" | b"_count" | b"_created"),
            Self::GaugeHistogram => matches!(suffix, b"_bucket" | b"_gsum" | b"_gcount"),
            Self::Info => suffix == b"_info",
            Self::Gauge | Self::StateSet | Self::Unknown => suffix.is_empty(),
        }
    }
}

/// Every suffix some type allows, longest first is not needed: they are tried
/// one by one against the end of a sample name.
const SUFFIXES: [&str; 8] = [
    "_bucket", "_sum", "_count", "_total", "_created", "_gsum", "_gcount", "_info",
];

/// The set of metric family base names a caller wants; see the module doc for
/// how counter names with and without `_total` match.
#[derive(Debug, Clone, Default)]
pub struct FamilyFilter {
    all: bool,
    names: HashSet<Box<str>>,
    /// `names` with a `_total` suffix stripped, for counter matching.
    counter_bases: HashSet<Box<str>>,
}

impl FamilyFilter {
    /// A filter that wants every family.
    pub fn all() -> Self {
        Self {
            all: true,
            ..Self::default()
        }
    }

    /// A filter that wants exactly these families.
    pub fn new<I, S>(names: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let mut f = Self::default();
        for n in names {
            f.insert(n.as_ref());
        }
        f
    }

    /// Wants one more family.
    pub fn insert(&mut self, name: &str) {
        self.counter_bases.insert(strip_total(name).into());
        self.names.insert(name.into());
    }

    /// Whether samples of `family` (of type `kind`) are wanted.
    pub fn matches(&self, family: &str, kind: MetricType) -> bool {
        if self.all || self.names.contains(family) {
            return true;
        }
        match kind {
            MetricType::Counter => self.counter_bases.contains(strip_total(family)),
            MetricType::Unknown if family.ends_with("_total") => {
                self.counter_bases.contains(strip_total(family))
            }
            _ => false,
        }
    }
}

fn strip_total(name: &str) -> &str {
    name.strip_suffix("_total").unwrap_or(name)
}

/// One sample, borrowed from the parsed text.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Sample<'a> {
    /// Family base name (from `# TYPE`, else see the module doc).
    pub family: &'a str,
    /// Full sample name, e.g. `x_bucket`, `x_total`.
    pub name: &'a str,
    pub kind: MetricType,
    pub labels: Labels<'a>,
    pub value: f64,
    /// Milliseconds since the Unix epoch (OpenMetrics seconds are converted).
    pub timestamp: Option<i64>,
}

/// The label set of a sample: the validated text between `{` and `}`,
/// decoded on iteration so that samples nobody reads cost nothing.
#[derive(Clone, Copy, PartialEq, Eq, Default)]
pub struct Labels<'a> {
    raw: &'a str,
    len: usize,
}

impl<'a> Labels<'a> {
    /// Number of labels.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The text between the braces, escapes not decoded.
    pub fn raw(&self) -> &'a str {
        self.raw
    }

    /// `(name, value)` pairs in text order; values unescaped (borrowed unless
    /// they contain an escape).
    pub fn iter(&self) -> LabelIter<'a> {
        LabelIter {
            s: self.raw.as_bytes(),
            text: self.raw,
            i: 0,
        }
    }

    /// The value of label `name`, if present.
    pub fn get(&self, name: &str) -> Option<Cow<'a, str>> {
        self.iter().find(|(n, _)| *n == name).map(|(_, v)| v)
    }
}

impl fmt::Debug for Labels<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map().entries(self.iter()).finish()
    }
}

impl<'a> IntoIterator for Labels<'a> {
    type Item = (&'a str, Cow<'a, str>);
    type IntoIter = LabelIter<'a>;
    fn into_iter(self) -> LabelIter<'a> {
        self.iter()
    }
}

impl<'a> IntoIterator for &Labels<'a> {
    type Item = (&'a str, Cow<'a, str>);
    type IntoIter = LabelIter<'a>;
    fn into_iter(self) -> LabelIter<'a> {
        self.iter()
    }
}

/// Iterator over [`Labels`]. The text was validated by the parser; should it
/// still be off, iteration just ends.
#[derive(Clone)]
pub struct LabelIter<'a> {
    s: &'a [u8],
    text: &'a str,
    i: usize,
}

impl<'a> Iterator for LabelIter<'a> {
    type Item = (&'a str, Cow<'a, str>);

    fn next(&mut self) -> Option<Self::Item> {
        let s = self.s;
        let mut i = skip_blanks(s, self.i);
        let name_start = i;
        while i < s.len() && is_label_char(s[i]) {
            i += 1;
        }
        let name = self.text.get(name_start..i)?;
        i = skip_blanks(s, i);
        if s.get(i) != Some(&b'=') {
            return None;
        }
        i = skip_blanks(s, i + 1);
        if s.get(i) != Some(&b'"') {
            return None;
        }
        i += 1;
        let value_start = i;
        let mut escaped = false;
        loop {
            while i < s.len() && !is_value_stop(s[i]) {
                i += 1;
            }
            match *s.get(i)? {
                b'"' => break,
                b'\\' => {
                    escaped = true;
                    i += 2;
                }
                _ => i += 1,
            }
        }
        let raw_value = self.text.get(value_start..i)?;
        i = skip_blanks(s, i + 1);
        if s.get(i) == Some(&b',') {
            i += 1;
        }
        self.i = i;
        let value = if escaped {
            Cow::Owned(unescape(raw_value))
        } else {
            Cow::Borrowed(raw_value)
        };
        Some((name, value))
    }
}

/// Decodes `\\`, `\"` and `\n`; other escapes were rejected by the parser
/// (kept verbatim here should one slip through).
fn unescape(raw: &str) -> String {
    let mut out = String::with_capacity(raw.len());
    let mut chars = raw.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('n') => out.push('\n'),
            Some(c @ ('\\' | '"')) => out.push(c),
            Some(c) => {
                out.push('\\');
                out.push(c);
            }
            None => out.push('\\'),
        }
    }
    out
}

/// A sample with owned data, from [`parse_owned`].
#[derive(Debug, Clone, PartialEq)]
pub struct OwnedSample {
    pub family: String,
    pub name: String,
    pub kind: MetricType,
    pub labels: Vec<(String, String)>,
    pub value: f64,
    pub timestamp: Option<i64>,
}

impl OwnedSample {
    /// The value of label `name`, if present.
    pub fn label(&self, name: &str) -> Option<&str> {
        self.labels
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

impl From<Sample<'_>> for OwnedSample {
    fn from(s: Sample<'_>) -> Self {
        Self {
            family: s.family.to_owned(),
            name: s.name.to_owned(),
            kind: s.kind,
            labels: s
                .labels
                .iter()
                .map(|(n, v)| (n.to_owned(), v.into_owned()))
                .collect(),
            value: s.value,
            timestamp: s.timestamp,
        }
    }
}

/// Why a line was rejected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SyntaxError {
    /// The line does not start with a valid metric name.
    InvalidMetricName,
    /// Something other than `{` or a blank follows the metric name.
    UnexpectedAfterName,
    /// A label name was expected.
    ExpectedLabelName,
    /// `=` was expected after a label name.
    ExpectedEquals,
    /// `"` was expected to open a label value.
    ExpectedQuote,
    /// A label value runs into the end of the line.
    UnterminatedLabelValue,
    /// A backslash escape other than `\\`, `\"` or `\n`.
    InvalidEscape,
    /// `,` or `}` was expected after a label value.
    ExpectedCommaOrBrace,
    /// The sample has no value.
    MissingValue,
    /// The value is not a float.
    InvalidValue,
    /// The timestamp is not a number (integer ms in 0.0.4).
    InvalidTimestamp,
    /// Text after the timestamp that is not an exemplar (`# {...} v [ts]`).
    TrailingCharacters,
    /// A `# TYPE` line without a metric name or a type.
    InvalidTypeLine,
    /// Something other than blank lines after `# EOF`.
    ContentAfterEof,
}

impl fmt::Display for SyntaxError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = match self {
            Self::InvalidMetricName => "invalid metric name",
            Self::UnexpectedAfterName => "expected '{' or a blank after the metric name",
            Self::ExpectedLabelName => "expected a label name",
            Self::ExpectedEquals => "expected '=' after the label name",
            Self::ExpectedQuote => "expected '\"' to open the label value",
            Self::UnterminatedLabelValue => "unterminated label value",
            Self::InvalidEscape => "invalid escape in label value",
            Self::ExpectedCommaOrBrace => "expected ',' or '}' after the label value",
            Self::MissingValue => "missing sample value",
            Self::InvalidValue => "invalid sample value",
            Self::InvalidTimestamp => "invalid timestamp",
            Self::TrailingCharacters => "unexpected characters after the sample",
            Self::InvalidTypeLine => "malformed # TYPE line",
            Self::ContentAfterEof => "content after # EOF",
        };
        f.write_str(s)
    }
}

/// A parse failure; `line` is 1-based.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    #[error("line {line}: {reason}")]
    Syntax { line: usize, reason: SyntaxError },
    #[error("line {line}: more than {limit} samples")]
    TooManySamples { line: usize, limit: usize },
    #[error("line {line}: more than {limit} labels on one sample")]
    TooManyLabels { line: usize, limit: usize },
}

impl ParseError {
    /// The 1-based line the error is on.
    pub fn line(&self) -> usize {
        match *self {
            Self::Syntax { line, .. }
            | Self::TooManySamples { line, .. }
            | Self::TooManyLabels { line, .. } => line,
        }
    }
}

/// Parses Prometheus 0.0.4 text with default [`Options`], calling `visitor` for
/// every sample of a family `filter` wants. Returns the number of samples visited.
pub fn parse<'a, F>(text: &'a str, filter: &FamilyFilter, visitor: F) -> Result<usize, ParseError>
where
    F: FnMut(Sample<'a>),
{
    parse_with(text, filter, &Options::default(), visitor)
}

/// [`parse`] with explicit format and limits.
pub fn parse_with<'a, F>(
    text: &'a str,
    filter: &FamilyFilter,
    options: &Options,
    visitor: F,
) -> Result<usize, ParseError>
where
    F: FnMut(Sample<'a>),
{
    Parser {
        text,
        b: text.as_bytes(),
        filter,
        options,
        line: 0,
        current: None,
        declared: HashMap::new(),
        last_untyped: None,
        visited: 0,
    }
    .run(visitor)
}

/// Parses and collects the wanted samples into owned values.
pub fn parse_owned(
    text: &str,
    filter: &FamilyFilter,
    options: &Options,
) -> Result<Vec<OwnedSample>, ParseError> {
    let mut out = Vec::new();
    parse_with(text, filter, options, |s| out.push(OwnedSample::from(s)))?;
    Ok(out)
}

/// A family a sample name was resolved to.
#[derive(Clone, Copy)]
struct Family<'a> {
    name: &'a str,
    kind: MetricType,
    wanted: bool,
}

struct Parser<'a, 'f> {
    text: &'a str,
    b: &'a [u8],
    filter: &'f FamilyFilter,
    options: &'f Options,
    line: usize,
    /// The family of the latest `# TYPE` line; samples normally follow it.
    current: Option<Family<'a>>,
    /// Every `# TYPE` seen, for samples that do not follow their TYPE line.
    declared: HashMap<&'a str, (MetricType, bool)>,
    /// Resolution of the latest sample name that matched no `# TYPE`.
    last_untyped: Option<(&'a str, Family<'a>)>,
    visited: usize,
}

type Step<T> = Result<T, SyntaxError>;

impl<'a> Parser<'a, '_> {
    fn run<F: FnMut(Sample<'a>)>(mut self, mut visitor: F) -> Result<usize, ParseError> {
        let b = self.b;
        let mut i = 0;
        while i < b.len() {
            self.line += 1;
            i = skip_blanks(b, i);
            let next = match b.get(i) {
                None => break,
                Some(b'\n') => Ok(i + 1),
                Some(b'\r') if matches!(b.get(i + 1), None | Some(b'\n')) => Ok(i + 2),
                Some(b'#') => match self.comment(i) {
                    Ok(Some(next)) => Ok(next),
                    Ok(None) => return self.after_eof(i).map(|()| self.visited),
                    Err(e) => Err(e),
                },
                Some(_) => Ok(self.sample(i, &mut visitor)?),
            };
            i = next.map_err(|reason| ParseError::Syntax {
                line: self.line,
                reason,
            })?;
        }
        Ok(self.visited)
    }

    /// Handles a `#` line at `i`; returns the start of the next line, or
    /// `None` at `# EOF`.
    fn comment(&mut self, i: usize) -> Step<Option<usize>> {
        let b = self.b;
        let end = line_end(b, i);
        let line = trim_end(&b[i..end]);
        let next = end + 1;
        let mut j = skip_blanks(line, 1);
        if j == 1 {
            // `#TYPE`, `#foo`: a plain comment.
            return Ok(Some(next));
        }
        let word_start = j;
        while j < line.len() && !is_blank(line[j]) {
            j += 1;
        }
        match &line[word_start..j] {
            b"EOF" if j == line.len() => Ok(None),
            b"TYPE" => {
                let (name_start, name_end) = blank_token(line, j);
                let (type_start, type_end) = blank_token(line, name_end);
                if name_end == name_start || type_end == type_start {
                    return Err(SyntaxError::InvalidTypeLine);
                }
                let name = self
                    .text
                    .get(i + name_start..i + name_end)
                    .ok_or(SyntaxError::InvalidTypeLine)?;
                let kind = MetricType::from_word(&line[type_start..type_end]);
                let wanted = self.filter.matches(name, kind);
                self.current = Some(Family { name, kind, wanted });
                self.declared.insert(name, (kind, wanted));
                self.last_untyped = None;
                Ok(Some(next))
            }
            // HELP, UNIT and free comments carry nothing the operator uses.
            _ => Ok(Some(next)),
        }
    }

    /// After `# EOF` only blank lines may follow.
    fn after_eof(&mut self, i: usize) -> Result<(), ParseError> {
        let rest = &self.b[line_end(self.b, i).min(self.b.len())..];
        for l in rest.split(|&c| c == b'\n').skip(1) {
            self.line += 1;
            if !trim_end(&l[skip_blanks(l, 0)..]).is_empty() {
                return Err(ParseError::Syntax {
                    line: self.line,
                    reason: SyntaxError::ContentAfterEof,
                });
            }
        }
        Ok(())
    }

    /// Finds the family of sample name `name`.
    fn resolve(&mut self, name: &'a str) -> Family<'a> {
        if let Some(cur) = self.current
            && let Some(suffix) = name.as_bytes().strip_prefix(cur.name.as_bytes())
            && cur.kind.allows_suffix(suffix)
        {
            return cur;
        }
        if let Some((last, fam)) = self.last_untyped
            && last == name
        {
            return fam;
        }
        let fam = self.resolve_slow(name);
        self.last_untyped = Some((name, fam));
        fam
    }

    fn resolve_slow(&self, name: &'a str) -> Family<'a> {
        if let Some(&(kind, wanted)) = self.declared.get(name)
            && kind.allows_suffix(b"")
        {
            return Family { name, kind, wanted };
        }
        for suffix in SUFFIXES {
            if let Some(base) = name.strip_suffix(suffix)
                && let Some(&(kind, wanted)) = self.declared.get(base)
                && kind.allows_suffix(suffix.as_bytes())
            {
                return Family {
                    name: base,
                    kind,
                    wanted,
                };
            }
        }
        let base = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|s| name.strip_suffix(s).filter(|b| !b.is_empty()))
            .unwrap_or(name);
        let kind = MetricType::Unknown;
        Family {
            name: base,
            kind,
            wanted: self.filter.matches(base, kind),
        }
    }

    /// Parses the sample line at `i` (a non-blank, non-`#` byte) and gives
    /// the start of the next line. A sample of an unwanted family is skipped
    /// after its name.
    fn sample<F: FnMut(Sample<'a>)>(
        &mut self,
        i: usize,
        visitor: &mut F,
    ) -> Result<usize, ParseError> {
        let (name, j) = self.metric_name(i).map_err(|r| self.syntax(r))?;
        let fam = self.resolve(name);
        if !fam.wanted {
            return Ok(line_end(self.b, j) + 1);
        }
        if self.visited >= self.options.limits.max_samples {
            return Err(ParseError::TooManySamples {
                line: self.line,
                limit: self.options.limits.max_samples,
            });
        }
        let (labels, j) = self.sample_labels(j)?;
        let (value, timestamp, next) = self.value_to_line_end(j).map_err(|r| self.syntax(r))?;
        self.visited += 1;
        visitor(Sample {
            family: fam.name,
            name,
            kind: fam.kind,
            labels,
            value,
            timestamp,
        });
        Ok(next)
    }

    fn syntax(&self, reason: SyntaxError) -> ParseError {
        ParseError::Syntax {
            line: self.line,
            reason,
        }
    }

    /// The metric name starting at `i`, and the index of the `{` or blank
    /// that must follow it.
    #[inline]
    fn metric_name(&self, i: usize) -> Step<(&'a str, usize)> {
        let b = self.b;
        if !is_name_start(b[i]) {
            return Err(SyntaxError::InvalidMetricName);
        }
        let mut j = i + 1;
        while j < b.len() && is_name_char(b[j]) {
            j += 1;
        }
        let name = self.text.get(i..j).ok_or(SyntaxError::InvalidMetricName)?;
        match b.get(j) {
            Some(b'{' | b' ' | b'\t') => Ok((name, j)),
            _ => Err(SyntaxError::UnexpectedAfterName),
        }
    }

    /// The label set at `j` (none unless `j` is a `{`), and the index after it.
    #[inline]
    fn sample_labels(&self, j: usize) -> Result<(Labels<'a>, usize), ParseError> {
        if self.b[j] != b'{' {
            return Ok((Labels::default(), j));
        }
        let (raw_end, count, next) = self.labels(j + 1).map_err(|r| self.syntax(r))?;
        if count > self.options.limits.max_labels {
            return Err(ParseError::TooManyLabels {
                line: self.line,
                limit: self.options.limits.max_labels,
            });
        }
        let raw = self
            .text
            .get(j + 1..raw_end)
            .ok_or_else(|| self.syntax(SyntaxError::ExpectedCommaOrBrace))?;
        Ok((Labels { raw, len: count }, next))
    }

    /// The value, the optional timestamp and the end of the line after a
    /// sample's name or labels at `j`: (value, timestamp, start of the next line).
    #[inline]
    fn value_to_line_end(&self, j: usize) -> Step<(f64, Option<i64>, usize)> {
        let b = self.b;
        // A blank is required after a bare name (checked by `metric_name`);
        // after `}` Go's parser does not require one either.
        let k = skip_blanks(b, j);
        let v_end = token_end(b, k);
        if v_end == k {
            return Err(SyntaxError::MissingValue);
        }
        let value = parse_float(&b[k..v_end]).ok_or(SyntaxError::InvalidValue)?;
        let (timestamp, k) = self.timestamp(skip_blanks(b, v_end))?;
        Ok((value, timestamp, sample_line_end(b, k)?))
    }

    /// The timestamp token at `k`, if there is one (`#` opens an exemplar),
    /// and the index after it and its trailing blanks.
    #[inline]
    fn timestamp(&self, k: usize) -> Step<(Option<i64>, usize)> {
        let b = self.b;
        let t_end = token_end(b, k);
        if t_end == k || b[k] == b'#' {
            return Ok((None, k));
        }
        let ts = match self.options.format {
            TextFormat::Prometheus => parse_int(&b[k..t_end]),
            TextFormat::OpenMetrics => parse_float(&b[k..t_end]).and_then(seconds_to_ms),
        };
        let ts = ts.ok_or(SyntaxError::InvalidTimestamp)?;
        Ok((Some(ts), skip_blanks(b, t_end)))
    }

    /// Validates a label set starting after `{`. Returns (index of `}`,
    /// label count, index after `}`).
    fn labels(&self, mut i: usize) -> Step<(usize, usize, usize)> {
        let b = self.b;
        let mut count = 0;
        loop {
            i = skip_blanks(b, i);
            match b.get(i) {
                Some(b'}') => return Ok((i, count, i + 1)),
                Some(&c) if is_label_start(c) => {}
                _ => return Err(SyntaxError::ExpectedLabelName),
            }
            i += 1;
            while i < b.len() && is_label_char(b[i]) {
                i += 1;
            }
            i = skip_blanks(b, i);
            if b.get(i) != Some(&b'=') {
                return Err(SyntaxError::ExpectedEquals);
            }
            i = skip_blanks(b, i + 1);
            if b.get(i) != Some(&b'"') {
                return Err(SyntaxError::ExpectedQuote);
            }
            i += 1;
            loop {
                while i < b.len() && !is_value_stop(b[i]) {
                    i += 1;
                }
                match b.get(i) {
                    Some(b'"') => break,
                    Some(b'\\') => match b.get(i + 1) {
                        Some(b'\\' | b'"' | b'n') => i += 2,
                        Some(b'\n') | None => return Err(SyntaxError::UnterminatedLabelValue),
                        Some(_) => return Err(SyntaxError::InvalidEscape),
                    },
                    Some(b'\n') | None => return Err(SyntaxError::UnterminatedLabelValue),
                    Some(_) => i += 1,
                }
            }
            count += 1;
            // Counting past the limit is bounded by the line; stop early anyway.
            if count > self.options.limits.max_labels {
                return Ok((i, count, i));
            }
            i = skip_blanks(b, i + 1);
            match b.get(i) {
                Some(b',') => i += 1,
                Some(b'}') => return Ok((i, count, i + 1)),
                _ => return Err(SyntaxError::ExpectedCommaOrBrace),
            }
        }
    }
}

/// Where the next line starts once a sample's value and timestamp are read
/// up to `k`: only the line's end or an OpenMetrics exemplar may follow.
#[inline]
fn sample_line_end(b: &[u8], k: usize) -> Step<usize> {
    match b.get(k) {
        None => Ok(b.len()),
        Some(b'\n') => Ok(k + 1),
        Some(b'\r') if matches!(b.get(k + 1), None | Some(b'\n')) => Ok(k + 2),
        // An OpenMetrics exemplar: `# {labels} value [timestamp]`, skipped.
        Some(b'#') if matches!(b.get(k + 1), Some(b' ' | b'\t')) => Ok(line_end(b, k) + 1),
        Some(_) => Err(SyntaxError::TrailingCharacters),
    }
}

const NAME_START: u8 = 1;
const NAME_CHAR: u8 = 2;
const LABEL_START: u8 = 4;
const LABEL_CHAR: u8 = 8;
const VALUE_STOP: u8 = 16;

/// Byte classes: metric names `[a-zA-Z_:][a-zA-Z0-9_:]*`, label names
/// `[a-zA-Z_][a-zA-Z0-9_]*`.
static CLASS: [u8; 256] = {
    let mut t = [0u8; 256];
    let mut c = 0;
    while c < 256 {
        let b = c as u8;
        let alpha = b.is_ascii_alphabetic() || b == b'_';
        if alpha || b == b':' {
            t[c] |= NAME_START | NAME_CHAR;
        }
        if b.is_ascii_digit() {
            t[c] |= NAME_CHAR | LABEL_CHAR;
        }
        if alpha {
            t[c] |= LABEL_START | LABEL_CHAR;
        }
        if b == b'"' || b == b'\\' || b == b'\n' {
            t[c] |= VALUE_STOP;
        }
        c += 1;
    }
    t
};

#[inline]
fn is_name_start(c: u8) -> bool {
    CLASS[c as usize] & NAME_START != 0
}
#[inline]
fn is_name_char(c: u8) -> bool {
    CLASS[c as usize] & NAME_CHAR != 0
}
#[inline]
fn is_label_start(c: u8) -> bool {
    CLASS[c as usize] & LABEL_START != 0
}
#[inline]
fn is_label_char(c: u8) -> bool {
    CLASS[c as usize] & LABEL_CHAR != 0
}
/// Bytes that end a plain run inside a quoted label value.
#[inline]
fn is_value_stop(c: u8) -> bool {
    CLASS[c as usize] & VALUE_STOP != 0
}
#[inline]
fn is_blank(c: u8) -> bool {
    c == b' ' || c == b'\t'
}

#[inline]
fn skip_blanks(b: &[u8], mut i: usize) -> usize {
    while i < b.len() && is_blank(b[i]) {
        i += 1;
    }
    i
}

/// End of a value/timestamp token: the next blank, CR or LF.
#[inline]
fn token_end(b: &[u8], mut i: usize) -> usize {
    while i < b.len() && !matches!(b[i], b' ' | b'\t' | b'\n' | b'\r') {
        i += 1;
    }
    i
}

/// Index of the `\n` ending the line containing `i`, or `b.len()`.
#[inline]
fn line_end(b: &[u8], i: usize) -> usize {
    match b.get(i..) {
        Some(rest) => i + find_newline(rest).unwrap_or(rest.len()),
        None => b.len(),
    }
}

/// `memchr` for `\n`, eight bytes at a time (SWAR), because skipping unwanted
/// lines is most of the filtered parse.
#[inline]
fn find_newline(b: &[u8]) -> Option<usize> {
    const LO: u64 = 0x0101_0101_0101_0101;
    const HI: u64 = 0x8080_8080_8080_8080;
    const NL: u64 = LO * b'\n' as u64;
    let mut chunks = b.chunks_exact(8);
    let mut base = 0;
    for chunk in &mut chunks {
        let mut w = [0u8; 8];
        w.copy_from_slice(chunk);
        let x = u64::from_le_bytes(w) ^ NL;
        let found = x.wrapping_sub(LO) & !x & HI;
        if found != 0 {
            return Some(base + (found.trailing_zeros() / 8) as usize);
        }
        base += 8;
    }
    chunks
        .remainder()
        .iter()
        .position(|&c| c == b'\n')
        .map(|p| base + p)
}

/// The blank-separated token after `i`: (start, end), empty at the end.
fn blank_token(line: &[u8], i: usize) -> (usize, usize) {
    let start = skip_blanks(line, i);
    let mut end = start;
    while end < line.len() && !is_blank(line[end]) {
        end += 1;
    }
    (start, end)
}

fn trim_end(mut b: &[u8]) -> &[u8] {
    while let [rest @ .., b' ' | b'\t' | b'\r'] = b {
        b = rest;
    }
    b
}

const POW10: [f64; 16] = [
    1e0, 1e1, 1e2, 1e3, 1e4, 1e5, 1e6, 1e7, 1e8, 1e9, 1e10, 1e11, 1e12, 1e13, 1e14, 1e15,
];

/// Parses a Go `ParseFloat`-style value: decimals, exponents, `NaN`, `+Inf`,
/// `-Inf`. Plain decimals of at most 15 digits take an exact fast path (the
/// integer mantissa and the power of ten are both exact in f64, so one
/// correctly rounded division gives the correctly rounded result); the rest
/// goes to the standard library.
fn parse_float(s: &[u8]) -> Option<f64> {
    let (neg, digits) = match s {
        [b'-', rest @ ..] => (true, rest),
        [b'+', rest @ ..] => (false, rest),
        _ => (false, s),
    };
    // Wrapping arithmetic: past 15 digits the result is thrown away anyway.
    let mut mantissa: u64 = 0;
    let mut i = 0;
    while let Some(&c) = digits.get(i) {
        let d = c.wrapping_sub(b'0');
        if d > 9 {
            break;
        }
        mantissa = mantissa.wrapping_mul(10).wrapping_add(u64::from(d));
        i += 1;
    }
    let mut n_digits = i;
    let mut frac = 0;
    if digits.get(i) == Some(&b'.') {
        i += 1;
        let start = i;
        while let Some(&c) = digits.get(i) {
            let d = c.wrapping_sub(b'0');
            if d > 9 {
                break;
            }
            mantissa = mantissa.wrapping_mul(10).wrapping_add(u64::from(d));
            i += 1;
        }
        frac = i - start;
        n_digits += frac;
    }
    if i == digits.len() && (1..=15).contains(&n_digits) {
        // Integers (most counts) skip the division.
        let m = mantissa as f64;
        let v = if frac == 0 { m } else { m / POW10[frac] };
        return Some(if neg { -v } else { v });
    }
    slow_float(s)
}

fn slow_float(s: &[u8]) -> Option<f64> {
    let s = std::str::from_utf8(s).ok()?;
    // Rust also takes "infinity" and any case, like Go; it rejects "_" and hex.
    s.parse::<f64>().ok()
}

/// Integer milliseconds (Prometheus 0.0.4 timestamps), overflow-checked.
fn parse_int(s: &[u8]) -> Option<i64> {
    let (neg, digits) = match s {
        [b'-', rest @ ..] => (true, rest),
        [b'+', rest @ ..] => (false, rest),
        _ => (false, s),
    };
    if digits.is_empty() {
        return None;
    }
    let mut v: i64 = 0;
    for &c in digits {
        if !c.is_ascii_digit() {
            return None;
        }
        let d = i64::from(c - b'0');
        v = v.checked_mul(10)?.checked_add(if neg { -d } else { d })?;
    }
    Some(v)
}

/// OpenMetrics timestamps are seconds; stored as milliseconds.
fn seconds_to_ms(s: f64) -> Option<i64> {
    let ms = (s * 1000.0).round();
    // i64::MAX as f64 rounds up to 2^63, which is out of range.
    (ms.is_finite() && ms >= i64::MIN as f64 && ms < i64::MAX as f64).then_some(ms as i64)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all(text: &str) -> Result<Vec<OwnedSample>, ParseError> {
        parse_owned(text, &FamilyFilter::all(), &Options::default())
    }

    #[test]
    fn floats() {
        for (s, v) in [
            ("0", 0.0),
            ("1", 1.0),
            ("-1.5", -1.5),
            ("+2", 2.0),
            ("418172.151371", 418172.151371),
            ("0.1", 0.1),
            ("1e3", 1000.0),
            ("1.7560473e+07", 1.7560473e7),
            ("123456789012345678", 123456789012345678.0),
            ("+Inf", f64::INFINITY),
            ("-Inf", f64::NEG_INFINITY),
            ("Inf", f64::INFINITY),
            (".5", 0.5),
        ] {
            assert_eq!(parse_float(s.as_bytes()), Some(v), "{s}");
        }
        assert!(parse_float(b"NaN").is_some_and(f64::is_nan));
        for bad in ["", "-", ".", "1..2", "abc", "1e", "0x10", "1_000"] {
            assert_eq!(parse_float(bad.as_bytes()), None, "{bad}");
        }
    }

    #[test]
    fn fast_path_matches_std() {
        for s in [
            "0.1",
            "0.3",
            "2.6842",
            "-2.3684",
            "999999999999999",
            "0.000000000000001",
        ] {
            assert_eq!(parse_float(s.as_bytes()), s.parse::<f64>().ok(), "{s}");
        }
    }

    #[test]
    fn ints() {
        assert_eq!(parse_int(b"1395066363000"), Some(1395066363000));
        assert_eq!(parse_int(b"-3982045"), Some(-3982045));
        assert_eq!(parse_int(b"9223372036854775807"), Some(i64::MAX));
        assert_eq!(parse_int(b"-9223372036854775808"), Some(i64::MIN));
        assert_eq!(parse_int(b"9223372036854775808"), None);
        assert_eq!(parse_int(b"1.5"), None);
        assert_eq!(parse_int(b"-"), None);
    }

    #[test]
    fn newline_search() {
        let s = b"0123456789abcdef\nxyz";
        assert_eq!(find_newline(s), Some(16));
        assert_eq!(find_newline(b"abc"), None);
        assert_eq!(find_newline(b"\n"), Some(0));
        assert_eq!(find_newline(b"0123456\n"), Some(7));
        // A high byte next to the target must not cause a false match.
        assert_eq!(find_newline("é\u{b}\n".as_bytes()), Some(3));
        for len in 0..40 {
            let mut v = vec![b'a'; len];
            v.push(b'\n');
            assert_eq!(find_newline(&v), Some(len));
        }
    }

    #[test]
    fn minimal() {
        let s = all("foo 1").unwrap();
        assert_eq!(s.len(), 1);
        assert_eq!(s[0].name, "foo");
        assert_eq!(s[0].family, "foo");
        assert_eq!(s[0].value, 1.0);
        assert!(s[0].labels.is_empty());
    }

    #[test]
    fn error_line_numbers() {
        let e = all("a 1\n\n# c\nb{x=\"1\" 2\n").unwrap_err();
        assert_eq!(
            e,
            ParseError::Syntax {
                line: 4,
                reason: SyntaxError::ExpectedCommaOrBrace
            }
        );
        assert_eq!(e.line(), 4);
    }
}
