//! What `kubectl modeldeploy list` and `get NAME` print: a table in kubectl's
//! shape (upper-case headers, left-aligned columns three spaces apart, ages
//! such as `5m` or `3d4h`).

use k8s_openapi::jiff::{SignedDuration, Timestamp};

use super::render::step_count;
use crate::api::ModelDeployment;

/// One row per object, sorted by namespace then name; a NAMESPACE column
/// first when the objects come from every namespace.
pub fn render_table(items: &[ModelDeployment], all_namespaces: bool, now: Timestamp) -> String {
    let mut sorted: Vec<&ModelDeployment> = items.iter().collect();
    sorted.sort_by_key(|md| (md.metadata.namespace.clone(), md.metadata.name.clone()));
    let mut header = vec!["NAME", "PHASE", "STABLE", "CANARY", "AGE"];
    if all_namespaces {
        header.insert(0, "NAMESPACE");
    }
    let rows: Vec<Vec<String>> = sorted
        .into_iter()
        .map(|md| {
            let mut row = row(md, now);
            if all_namespaces {
                row.insert(0, md.metadata.namespace.clone().unwrap_or_default());
            }
            row
        })
        .collect();
    align(&header, &rows)
}

/// NAME, PHASE, STABLE, CANARY, AGE of one object.
fn row(md: &ModelDeployment, now: Timestamp) -> Vec<String> {
    let status = md.status.as_ref();
    let phase = status
        .and_then(|s| s.phase)
        .map_or("Unknown", |p| p.as_str());
    let stable = status
        .and_then(|s| s.stable.as_ref())
        .map_or_else(|| "-".to_string(), |s| s.version.clone());
    let canary = status.and_then(|s| s.canary.as_ref()).map_or_else(
        || "-".to_string(),
        |c| {
            let shadow = if c.mirror > 0 {
                format!(" shadow {}%", c.mirror)
            } else {
                String::new()
            };
            format!(
                "{} {}%{shadow} step {}/{}",
                c.version,
                c.weight,
                c.step,
                step_count(md)
            )
        },
    );
    let age = md.metadata.creation_timestamp.as_ref().map_or_else(
        || "<unknown>".to_string(),
        |t| human_age(now.duration_since(t.0)),
    );
    vec![
        md.metadata.name.clone().unwrap_or_default(),
        phase.to_string(),
        stable,
        canary,
        age,
    ]
}

/// Left-aligned columns three spaces apart, as kubectl's tab writer prints
/// them; the last column is not padded.
fn align(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let header: Vec<String> = header.iter().map(|h| h.to_string()).collect();
    let mut out = String::new();
    for row in std::iter::once(&header).chain(rows) {
        let last = row.len().saturating_sub(1);
        for (i, (cell, width)) in row.iter().zip(&widths).enumerate() {
            if i == last {
                out.push_str(cell);
            } else {
                let pad = width - cell.chars().count() + 3;
                out.push_str(cell);
                out.extend(std::iter::repeat_n(' ', pad));
            }
        }
        out.push('\n');
    }
    out
}

/// An age the way kubectl shows it: exact while short, coarser as it grows
/// (`45s`, `5m10s`, `2h30m`, `3d4h`, `120d`, `2y30d`).
pub fn human_age(age: SignedDuration) -> String {
    let secs = age.as_secs();
    if secs < -1 {
        return "<invalid>".into();
    }
    let secs = secs.max(0);
    let (mins, hours) = (secs / 60, secs / 3600);
    let (days, years) = (hours / 24, hours / 24 / 365);
    let two = |big: i64, big_unit: &str, small: i64, small_unit: &str| {
        if small == 0 {
            format!("{big}{big_unit}")
        } else {
            format!("{big}{big_unit}{small}{small_unit}")
        }
    };
    match secs {
        s if s < 120 => format!("{s}s"),
        s if s < 600 => two(mins, "m", s % 60, "s"),
        _ if mins < 180 => format!("{mins}m"),
        _ if hours < 8 => two(hours, "h", mins % 60, "m"),
        _ if hours < 48 => format!("{hours}h"),
        _ if hours < 24 * 8 => two(days, "d", hours % 24, "h"),
        _ if hours < 24 * 365 * 2 => format!("{days}d"),
        _ if hours < 24 * 365 * 8 => two(years, "y", days % 365, "d"),
        _ => format!("{years}y"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn md(ns: &str, name: &str, created: &str, status: serde_json::Value) -> ModelDeployment {
        serde_json::from_value(json!({
            "apiVersion": "modeldeploy.io/v1alpha1", "kind": "ModelDeployment",
            "metadata": {"name": name, "namespace": ns, "creationTimestamp": created},
            "spec": {"model": {"version": "2.0.0", "image": "m:2"},
                     "resources": {"requests": {"cpu": "1"}, "limits": {"cpu": "1"}},
                     "rollout": {"steps": [{"setWeight": 20}, {"setWeight": 50}, {"pause": {}}]}},
            "status": status
        }))
        .unwrap()
    }

    fn now() -> Timestamp {
        "2026-03-01T12:00:00Z".parse().unwrap()
    }

    fn objects() -> Vec<ModelDeployment> {
        vec![
            md(
                "risk",
                "scorer",
                "2026-03-01T11:55:00Z",
                json!({"phase": "Progressing",
                       "stable": {"revision": 1, "version": "1.0.0", "image": "m:1", "hash": "a"},
                       "canary": {"revision": 2, "version": "2.0.0", "image": "m:2", "hash": "b",
                                  "weight": 20, "setWeight": 20, "step": 1}}),
            ),
            md("ads", "ranker", "2026-02-27T08:00:00Z", json!({})),
            md(
                "risk",
                "fraud",
                "2026-03-01T07:30:00Z",
                json!({"phase": "Stable",
                       "stable": {"revision": 4, "version": "2.0.0", "image": "m:2", "hash": "c"}}),
            ),
        ]
    }

    #[test]
    fn a_namespace_table_is_sorted_by_name_and_aligned() {
        let risk: Vec<_> = objects()
            .into_iter()
            .filter(|m| m.metadata.namespace.as_deref() == Some("risk"))
            .collect();
        assert_eq!(
            render_table(&risk, false, now()),
            "\
NAME     PHASE         STABLE   CANARY               AGE
fraud    Stable        2.0.0    -                    4h30m
scorer   Progressing   1.0.0    2.0.0 20% step 1/3   5m
"
        );
    }

    #[test]
    fn a_shadowed_canary_shows_the_share_it_gets_a_copy_of() {
        let shadowed = md(
            "risk",
            "fraud-scorer",
            "2026-03-01T11:57:00Z",
            json!({"phase": "Progressing",
                   "stable": {"revision": 1, "version": "2.4.0", "image": "m:2", "hash": "a"},
                   "canary": {"revision": 2, "version": "3.0.0", "image": "m:3", "hash": "b",
                              "weight": 0, "setWeight": 0, "step": 1,
                              "setMirror": 100, "mirror": 100}}),
        );
        assert!(
            render_table(&[shadowed], false, now()).contains(
                "fraud-scorer   Progressing   2.4.0    3.0.0 0% shadow 100% step 1/3   3m"
            ),
        );
    }

    #[test]
    fn all_namespaces_adds_the_namespace_column_first() {
        let out = render_table(&objects(), true, now());
        let lines: Vec<&str> = out.lines().collect();
        assert!(lines[0].starts_with("NAMESPACE   NAME     PHASE"), "{out}");
        assert!(
            lines[1].starts_with("ads         ranker   Unknown"),
            "{out}"
        );
        assert!(lines[1].ends_with("2d4h"), "{out}");
        assert!(lines[2].starts_with("risk        fraud"), "{out}");
        assert!(lines[3].starts_with("risk        scorer"), "{out}");
        assert_eq!(lines.len(), 4);
    }

    #[test]
    fn ages_read_like_kubectls() {
        let age = |s: i64| human_age(SignedDuration::from_secs(s));
        assert_eq!(age(-5), "<invalid>");
        assert_eq!(age(-1), "0s");
        assert_eq!(age(59), "59s");
        assert_eq!(age(119), "119s");
        assert_eq!(age(120), "2m");
        assert_eq!(age(310), "5m10s");
        assert_eq!(age(600), "10m");
        assert_eq!(age(150 * 60), "150m");
        assert_eq!(age(179 * 60), "179m");
        assert_eq!(age(3 * 3600), "3h");
        assert_eq!(age(2 * 3600 + 30 * 60 + 3 * 3600), "5h30m");
        assert_eq!(age(47 * 3600), "47h");
        assert_eq!(age(52 * 3600), "2d4h");
        assert_eq!(age(8 * 86400), "8d");
        assert_eq!(age(800 * 86400), "2y70d");
        assert_eq!(age(10 * 365 * 86400), "10y");
    }
}
