//! Which ModelDeployments one operator shard acts on: a Kubernetes label
//! selector string (`modeldeploy.io/shard=a`, `tier in (gold,silver)`,
//! `!legacy`, ...), checked when the operator starts so a typo is one clear
//! error instead of a watch the API server refuses over and over.

use std::collections::BTreeSet;

use kube::core::{Expression, Selector};

/// The label a shard's selector conventionally uses (the chart's `shard.name`).
pub const SHARD_LABEL: &str = "modeldeploy.io/shard";

/// Parses a label selector in the API server's syntax: requirements joined by
/// commas, each `key`, `!key`, `key=value`, `key==value`, `key!=value`,
/// `key in (v1,v2)` or `key notin (v1,v2)`. Blank means every object.
pub fn parse_selector(text: &str) -> Result<Selector, String> {
    let mut expressions = Vec::new();
    for requirement in split_requirements(text)? {
        let requirement = requirement.trim();
        if requirement.is_empty() {
            if text.trim().is_empty() {
                continue;
            }
            return Err(format!("empty requirement in {text:?}"));
        }
        expressions.push(parse_requirement(requirement)?);
    }
    Ok(expressions.into_iter().collect())
}

/// Splits at the commas that are not inside a `( ... )` value set.
fn split_requirements(text: &str) -> Result<Vec<&str>, String> {
    let (mut parts, mut start, mut open) = (Vec::new(), 0, false);
    for (i, c) in text.char_indices() {
        match c {
            '(' if open => return Err(format!("nested '(' in {text:?}")),
            '(' => open = true,
            ')' if !open => return Err(format!("')' without '(' in {text:?}")),
            ')' => open = false,
            ',' if !open => {
                parts.push(&text[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    if open {
        return Err(format!("unclosed '(' in {text:?}"));
    }
    parts.push(&text[start..]);
    Ok(parts)
}

fn parse_requirement(req: &str) -> Result<Expression, String> {
    if let Some(key) = req.strip_prefix('!') {
        return Ok(Expression::DoesNotExist(label_key(key.trim())?));
    }
    if let Some((key, value)) = req.split_once("!=") {
        return Ok(Expression::NotEqual(
            label_key(key.trim())?,
            label_value(value.trim())?,
        ));
    }
    if let Some((key, value)) = req.split_once('=') {
        let value = value.strip_prefix('=').unwrap_or(value);
        return Ok(Expression::Equal(
            label_key(key.trim())?,
            label_value(value.trim())?,
        ));
    }
    let key_end = req.find(|c: char| c.is_whitespace() || c == '(');
    let Some(key_end) = key_end else {
        return Ok(Expression::Exists(label_key(req)?));
    };
    let (key, rest) = (label_key(&req[..key_end])?, req[key_end..].trim_start());
    if let Some(set) = rest.strip_prefix("notin") {
        return Ok(Expression::NotIn(key, value_set(set, req)?));
    }
    if let Some(set) = rest.strip_prefix("in") {
        return Ok(Expression::In(key, value_set(set, req)?));
    }
    Err(format!(
        "{req:?} is not `key`, `!key`, `key=value`, `key!=value`, `key in (...)` or `key notin (...)`"
    ))
}

/// `(v1, v2)` after `in` / `notin`: at least one value.
fn value_set(text: &str, req: &str) -> Result<BTreeSet<String>, String> {
    let inner = text
        .trim()
        .strip_prefix('(')
        .and_then(|t| t.strip_suffix(')'))
        .ok_or_else(|| format!("{req:?}: the values of in/notin go in parentheses"))?;
    let values = inner
        .split(',')
        .map(|v| label_value(v.trim()))
        .collect::<Result<BTreeSet<_>, _>>()?;
    if values.iter().all(String::is_empty) {
        return Err(format!("{req:?}: in/notin needs at least one value"));
    }
    Ok(values)
}

/// `[prefix/]name`: the prefix a DNS subdomain, the name a label name.
fn label_key(key: &str) -> Result<String, String> {
    let name = match key.split_once('/') {
        Some((prefix, name)) => {
            let subdomain_char =
                |c: char| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.';
            if prefix.is_empty() || prefix.len() > 253 || !prefix.chars().all(subdomain_char) {
                return Err(format!(
                    "label key {key:?}: the prefix must be a DNS subdomain"
                ));
            }
            name
        }
        None => key,
    };
    if name.is_empty() || !is_label_name(name) {
        return Err(format!(
            "label key {key:?}: the name must be 1-63 letters, digits, '-', '_' or '.', starting and ending with a letter or digit"
        ));
    }
    Ok(key.to_string())
}

fn label_value(value: &str) -> Result<String, String> {
    if value.is_empty() || is_label_name(value) {
        return Ok(value.to_string());
    }
    Err(format!(
        "label value {value:?}: at most 63 letters, digits, '-', '_' or '.', starting and ending with a letter or digit"
    ))
}

fn is_label_name(s: &str) -> bool {
    let edge = |c: Option<char>| c.is_some_and(|c| c.is_ascii_alphanumeric());
    s.len() <= 63
        && edge(s.chars().next())
        && edge(s.chars().last())
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

#[cfg(test)]
mod tests {
    use super::*;
    use kube::core::SelectorExt;
    use std::collections::BTreeMap;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn every_form_parses_and_prints_as_the_api_server_reads_it() {
        let s = parse_selector(
            " modeldeploy.io/shard = a,tier in (gold, silver),env notin (dev),!legacy,team,x==y,z!=w ",
        )
        .unwrap();
        assert_eq!(
            s.to_string(),
            "modeldeploy.io/shard=a,tier in (gold,silver),env notin (dev),!legacy,team,x=y,z!=w"
        );
    }

    #[test]
    fn blank_selects_everything() {
        assert!(parse_selector("").unwrap().selects_all());
        assert!(parse_selector("   ").unwrap().selects_all());
    }

    #[test]
    fn the_parsed_selector_matches_like_the_api_server() {
        let s = parse_selector("modeldeploy.io/shard=a").unwrap();
        assert!(s.matches(&labels(&[("modeldeploy.io/shard", "a")])));
        assert!(!s.matches(&labels(&[("modeldeploy.io/shard", "b")])));
        assert!(!s.matches(&labels(&[])));
        let s = parse_selector("modeldeploy.io/shard notin (a)").unwrap();
        assert!(s.matches(&labels(&[])));
        assert!(!s.matches(&labels(&[("modeldeploy.io/shard", "a")])));
    }

    #[test]
    fn malformed_selectors_are_refused_with_the_reason() {
        for (bad, says) in [
            ("a=b,,c", "empty requirement"),
            ("tier in (gold", "unclosed"),
            ("tier in gold)", "without '('"),
            ("tier in ()", "at least one value"),
            ("tier in gold", "parentheses"),
            ("tier between (a)", "is not `key`"),
            ("=a", "label key \"\""),
            ("-bad=a", "label key \"-bad\""),
            ("Upper.Case/x=a", "DNS subdomain"),
            ("a=b c", "label value \"b c\""),
            ("a=bad-", "label value"),
            (&format!("a={}", "v".repeat(64)), "label value"),
        ] {
            let err = parse_selector(bad).unwrap_err();
            assert!(err.contains(says), "{bad:?} gave {err:?}, wanted {says:?}");
        }
    }
}
