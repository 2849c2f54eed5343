//! The drift reference document kept in a ConfigMap.

use std::collections::BTreeMap;

use serde::Deserialize;

use crate::analysis::histogram::Histogram;

/// A reference distribution per input feature, as kept in a ConfigMap:
/// `{"features": {"f0": {"edges": [upper bounds...], "counts": [per bucket...]}}}`
/// with one more count than edges (the last bucket is `+Inf`).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Reference {
    pub features: BTreeMap<String, Histogram>,
}

#[derive(Deserialize)]
struct ReferenceDoc {
    features: BTreeMap<String, ReferenceFeature>,
}

#[derive(Deserialize)]
struct ReferenceFeature {
    edges: Vec<f64>,
    counts: Vec<f64>,
}

impl Reference {
    pub fn parse(json: &str) -> Result<Self, String> {
        let doc: ReferenceDoc = serde_json::from_str(json).map_err(|e| {
            format!("not a reference document ({{\"features\": {{name: {{edges, counts}}}}}}): {e}")
        })?;
        let mut features = BTreeMap::new();
        for (name, f) in doc.features {
            if f.counts.len() != f.edges.len() + 1 {
                return Err(format!(
                    "feature {name}: {} counts for {} edges; expected one more count than edges (the +Inf bucket)",
                    f.counts.len(),
                    f.edges.len()
                ));
            }
            let mut bounds = f.edges.clone();
            bounds.push(f64::INFINITY);
            let h = Histogram::from_bucket_counts(bounds, &f.counts)
                .map_err(|e| format!("feature {name}: {e}"))?;
            features.insert(name, h);
        }
        Ok(Self { features })
    }

    /// The document for a captured distribution (`drift.reference.fromStable`).
    pub fn to_json(&self) -> String {
        let features: serde_json::Map<String, serde_json::Value> = self
            .features
            .iter()
            .map(|(name, h)| {
                let edges: Vec<f64> = h
                    .upper_bounds()
                    .iter()
                    .copied()
                    .filter(|b| b.is_finite())
                    .collect();
                (
                    name.clone(),
                    serde_json::json!({"edges": edges, "counts": h.bucket_counts()}),
                )
            })
            .collect();
        serde_json::json!({ "features": features }).to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references_round_trip_and_bad_documents_name_the_problem() {
        let doc = r#"{"features": {"f0": {"edges": [0, 1], "counts": [10, 20, 30]}}}"#;
        let r = Reference::parse(doc).unwrap();
        assert_eq!(r.features["f0"].bucket_counts(), vec![10.0, 20.0, 30.0]);
        assert_eq!(Reference::parse(&r.to_json()).unwrap(), r);
        let bad = Reference::parse(r#"{"features": {"f0": {"edges": [0, 1], "counts": [1, 2]}}}"#)
            .unwrap_err();
        assert!(bad.contains("feature f0"), "{bad}");
        assert!(Reference::parse("[]").is_err());
    }
}
