//! Interval literals (`INTERVAL '5' SECOND`, `INTERVAL '1 minute'`) as milliseconds.

use datafusion::sql::sqlparser::ast::{DateTimeField, Expr as SqlExpr};

use crate::error::{PlanError, Result};

fn unit_ms(unit: &str) -> Option<i64> {
    let u = unit.trim().to_ascii_lowercase();
    let u = if u == "ms" { "ms" } else { u.trim_end_matches('s') };
    Some(match u {
        "ms" | "millisecond" | "milli" => 1,
        "second" | "sec" | "" => 1_000,
        "minute" | "min" => 60_000,
        "hour" | "h" => 3_600_000,
        "day" | "d" => 86_400_000,
        "week" => 7 * 86_400_000,
        _ => return None,
    })
}

/// Parses the text of an interval such as `5 seconds`, `1.5 minute` or `250 ms`.
pub fn parse_interval_text(text: &str, default_unit: Option<&str>) -> Result<i64> {
    let t = text.trim();
    let split = t.find(|c: char| !(c.is_ascii_digit() || c == '.' || c == '-')).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let unit = if unit.trim().is_empty() { default_unit.unwrap_or("second") } else { unit };
    let n: f64 = num.trim().parse().map_err(|_| PlanError::Plan(format!("invalid interval '{text}'")))?;
    let ms =
        unit_ms(unit).ok_or_else(|| PlanError::Plan(format!("invalid interval unit '{}' in '{text}'", unit.trim())))?;
    Ok((n * ms as f64).round() as i64)
}

/// Milliseconds of an `INTERVAL …` expression.
pub fn interval_to_ms(expr: &SqlExpr) -> Result<i64> {
    let SqlExpr::Interval(iv) = expr else {
        return Err(PlanError::Plan(format!("expected an INTERVAL, got '{expr}'")));
    };
    let text = match iv.value.as_ref() {
        SqlExpr::Value(v) => v.to_string().trim_matches('\'').to_string(),
        other => other.to_string(),
    };
    let unit = iv.leading_field.as_ref().map(|f| match f {
        DateTimeField::Millisecond | DateTimeField::Milliseconds => "ms".to_string(),
        other => other.to_string(),
    });
    parse_interval_text(&text, unit.as_deref())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_texts() {
        assert_eq!(parse_interval_text("5", Some("SECOND")).expect("i"), 5_000);
        assert_eq!(parse_interval_text("1 minute", None).expect("i"), 60_000);
        assert_eq!(parse_interval_text("250 ms", None).expect("i"), 250);
        assert_eq!(parse_interval_text("2 hours", None).expect("i"), 7_200_000);
        assert!(parse_interval_text("3 fortnights", None).is_err());
    }
}
