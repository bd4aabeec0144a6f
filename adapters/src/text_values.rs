//! Column values as text (Postgres's text output format, as pgoutput and `COPY … TO STDOUT`
//! send it; the CDC sources of other databases render their values the same way) as Arrow
//! arrays of the source's declared types.
//!
//! Most types parse with Arrow's own casts (strictly: a value that does not parse is an error
//! naming the column, never a silent NULL). Postgres spellings Arrow does not read are
//! rewritten first: booleans `t`/`f`, `bytea` in hex (`\x00ff`), and time zone offsets without
//! minutes (`+00`, `-05`).

use std::sync::Arc;

use arrow::array::{new_null_array, ArrayRef, BinaryBuilder, BooleanBuilder, StringArray};
use arrow::compute::{cast_with_options, CastOptions};
use arrow::datatypes::DataType;
use arrow::util::display::FormatOptions;

/// Converts one column's values (None: NULL) to `target`; `column` names it in errors.
pub fn column(column: &str, values: &[Option<&str>], target: &DataType) -> Result<ArrayRef, String> {
    let bad = |v: &str, why: &str| format!("column '{column}': value '{v}' is not a valid {target}: {why}");
    match target {
        DataType::Null => Ok(new_null_array(target, values.len())),
        DataType::Utf8 => Ok(Arc::new(StringArray::from(values.to_vec()))),
        DataType::Boolean => {
            let mut b = BooleanBuilder::with_capacity(values.len());
            for v in values {
                match v {
                    None => b.append_null(),
                    Some("t") | Some("true") => b.append_value(true),
                    Some("f") | Some("false") => b.append_value(false),
                    Some(other) => return Err(bad(other, "expected t or f")),
                }
            }
            Ok(Arc::new(b.finish()))
        }
        DataType::Binary | DataType::LargeBinary => {
            let mut b = BinaryBuilder::with_capacity(values.len(), values.iter().flatten().map(|v| v.len() / 2).sum());
            for v in values {
                match v {
                    None => b.append_null(),
                    Some(v) => b.append_value(bytea(v).map_err(|why| bad(v, &why))?),
                }
            }
            let arr: ArrayRef = Arc::new(b.finish());
            if *target == DataType::Binary {
                Ok(arr)
            } else {
                cast_with_options(&arr, target, &strict()).map_err(|e| format!("column '{column}': {e}"))
            }
        }
        DataType::Timestamp(_, _) => {
            let fixed: Vec<Option<String>> = values.iter().map(|v| v.map(full_offset)).collect();
            let strings = StringArray::from(fixed.iter().map(Option::as_deref).collect::<Vec<_>>());
            cast_strict(column, &strings, target)
        }
        _ => cast_strict(column, &StringArray::from(values.to_vec()), target),
    }
}

fn strict() -> CastOptions<'static> {
    CastOptions { safe: false, format_options: FormatOptions::default() }
}

fn cast_strict(column: &str, strings: &StringArray, target: &DataType) -> Result<ArrayRef, String> {
    cast_with_options(strings, target, &strict()).map_err(|e| format!("column '{column}': {e}"))
}

/// `bytea` in the hex format (`\x…`, the server default) or the old escape format.
fn bytea(v: &str) -> Result<Vec<u8>, String> {
    if let Some(hex) = v.strip_prefix("\\x") {
        if hex.len() % 2 != 0 {
            return Err("odd number of hex digits".into());
        }
        return (0..hex.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).map_err(|_| "not hex".to_string()))
            .collect();
    }
    // Escape format: backslash-octal triples and doubled backslashes.
    let b = v.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' {
            if b.get(i + 1) == Some(&b'\\') {
                out.push(b'\\');
                i += 2;
                continue;
            }
            let oct = v.get(i + 1..i + 4).ok_or("truncated escape")?;
            out.push(u8::from_str_radix(oct, 8).map_err(|_| "bad escape".to_string())?);
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    Ok(out)
}

/// `…+05` → `…+05:00` (Postgres prints whole-hour offsets without minutes).
fn full_offset(v: &str) -> String {
    let b = v.as_bytes();
    let n = b.len();
    if n >= 3 && (b[n - 3] == b'+' || b[n - 3] == b'-') && b[n - 2].is_ascii_digit() && b[n - 1].is_ascii_digit() {
        // Only after a time (a date's "-06" must stay as it is).
        if v[..n - 3].contains(':') {
            return format!("{v}:00");
        }
    }
    v.to_string()
}

#[cfg(test)]
mod tests {
    use arrow::array::{Array, AsArray};
    use arrow::datatypes::{Date32Type, Decimal128Type, Int32Type, Int64Type, TimeUnit, TimestampMicrosecondType};

    use super::*;

    #[test]
    fn what_the_server_sends_becomes_the_declared_types() {
        // The values a real server sent for an inserted row (tests/postgres_pgoutput.rs).
        let id = column("id", &[Some("1"), None], &DataType::Int64).expect("bigint");
        assert_eq!(id.as_primitive::<Int64Type>().value(0), 1);
        assert!(id.is_null(1));
        let qty = column("qty", &[Some("-3")], &DataType::Int32).expect("int");
        assert_eq!(qty.as_primitive::<Int32Type>().value(0), -3);
        let price = column("price", &[Some("12.50")], &DataType::Decimal128(10, 2)).expect("numeric");
        assert_eq!(price.as_primitive::<Decimal128Type>().value(0), 1250);
        let ok = column("ok", &[Some("t"), Some("f"), None], &DataType::Boolean).expect("bool");
        assert!(ok.as_boolean().value(0) && !ok.as_boolean().value(1) && ok.is_null(2));
        let day = column("day", &[Some("2026-12-06")], &DataType::Date32).expect("date");
        assert_eq!(day.as_primitive::<Date32Type>().value(0), 20_793);
        let utc = DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into()));
        let at = column(
            "at",
            &[Some("2026-12-06 10:00:00+00"), Some("2026-12-06 15:30:00.25+05:30"), Some("2026-12-06 05:00:00-05")],
            &utc,
        )
        .expect("timestamptz");
        let at = at.as_primitive::<TimestampMicrosecondType>();
        let ten = 1_796_551_200_000_000i64;
        assert_eq!(at.value(0), ten);
        assert_eq!(at.value(1), ten + 250_000);
        assert_eq!(at.value(2), ten);
        let local = column("ts", &[Some("2026-12-06 10:00:00")], &DataType::Timestamp(TimeUnit::Microsecond, None))
            .expect("timestamp");
        assert_eq!(local.as_primitive::<TimestampMicrosecondType>().value(0), ten);
        let doc = column("doc", &[Some("{\"a\": [1, 2]}")], &DataType::Utf8).expect("jsonb as text");
        assert_eq!(doc.as_string::<i32>().value(0), "{\"a\": [1, 2]}");
        let raw = column("raw", &[Some("\\x00ff"), Some("a\\\\b\\001")], &DataType::Binary).expect("bytea");
        assert_eq!(raw.as_binary::<i32>().value(0), &[0x00, 0xff]);
        assert_eq!(raw.as_binary::<i32>().value(1), b"a\\b\x01");
        let f = column("x", &[Some("NaN"), Some("Infinity"), Some("-1.5")], &DataType::Float64).expect("float");
        let f = f.as_primitive::<arrow::datatypes::Float64Type>();
        assert!(f.value(0).is_nan() && f.value(1).is_infinite() && f.value(2) == -1.5);
    }

    #[test]
    fn a_value_that_does_not_parse_names_the_column() {
        let e = column("qty", &[Some("12"), Some("lots")], &DataType::Int32).expect_err("not a number");
        assert!(e.contains("'qty'") && e.contains("lots"), "{e}");
        let e = column("ok", &[Some("yes please")], &DataType::Boolean).expect_err("not a bool");
        assert!(e.contains("'ok'"), "{e}");
        let e = column("raw", &[Some("\\x0")], &DataType::Binary).expect_err("odd hex");
        assert!(e.contains("'raw'") && e.contains("hex"), "{e}");
    }
}
