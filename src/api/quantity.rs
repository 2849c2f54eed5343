//! Kubernetes resource quantities (`500m`, `2Gi`, `1.5`, `1e3`) as numbers, only
//! to compare a request with its limit; the quantity strings themselves are
//! passed to Kubernetes unchanged.

/// The value of a quantity in base units, or a message saying why it is not one.
pub fn parse_quantity(text: &str) -> Result<f64, String> {
    let s = text.trim();
    let bad = || format!("{text:?} is not a Kubernetes quantity such as 500m, 2Gi or 4");
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.' || c == '+' || c == '-'))
        .unwrap_or(s.len());
    let (number, suffix) = s.split_at(split);
    if number.is_empty() || number.starts_with('.') && number.len() == 1 {
        return Err(bad());
    }
    let base: f64 = number.parse().map_err(|_| bad())?;
    let multiplier = match suffix {
        "" => 1.0,
        "n" => 1e-9,
        "u" => 1e-6,
        "m" => 1e-3,
        "k" => 1e3,
        "M" => 1e6,
        "G" => 1e9,
        "T" => 1e12,
        "P" => 1e15,
        "E" => 1e18,
        "Ki" => 1024.0,
        "Mi" => 1024f64.powi(2),
        "Gi" => 1024f64.powi(3),
        "Ti" => 1024f64.powi(4),
        "Pi" => 1024f64.powi(5),
        "Ei" => 1024f64.powi(6),
        exp if exp.starts_with(['e', 'E']) => {
            let e: i32 = exp[1..].parse().map_err(|_| bad())?;
            10f64.powi(e)
        }
        _ => return Err(bad()),
    };
    let value = base * multiplier;
    if !value.is_finite() || value < 0.0 {
        return Err(bad());
    }
    Ok(value)
}

#[cfg(test)]
mod tests {
    use super::parse_quantity;

    #[test]
    fn parses_the_suffixes_kubernetes_accepts() {
        assert_eq!(parse_quantity("500m").unwrap(), 0.5);
        assert_eq!(parse_quantity("2").unwrap(), 2.0);
        assert_eq!(parse_quantity("1Gi").unwrap(), 1073741824.0);
        assert_eq!(parse_quantity("512Mi").unwrap(), 536870912.0);
        assert_eq!(parse_quantity("1G").unwrap(), 1e9);
        assert_eq!(parse_quantity("1.5").unwrap(), 1.5);
        assert_eq!(parse_quantity("1e3").unwrap(), 1000.0);
        assert!(parse_quantity("1Gi").unwrap() > parse_quantity("1G").unwrap());
    }

    #[test]
    fn refuses_what_is_not_a_quantity() {
        for bad in ["", "Gi", "1GB", "abc", "-1", "1..2", "."] {
            assert!(parse_quantity(bad).is_err(), "{bad:?} accepted");
        }
    }
}
