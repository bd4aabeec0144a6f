//! SQL column types and their Arrow representation.

use arrow::datatypes::{DataType, IntervalUnit, TimeUnit};

use crate::error::{PlanError, Result};

/// Arrow type of a SQL column type written in `CREATE SOURCE` (Postgres spelling).
///
/// TIMESTAMP has microsecond precision; TIMESTAMPTZ is stored in UTC.
pub fn sql_type_to_arrow(sql: &str) -> Result<DataType> {
    let norm = sql.trim().to_ascii_uppercase().split_whitespace().collect::<Vec<_>>().join(" ");
    let (base, args) = match norm.find('(') {
        Some(i) => {
            let close = norm.rfind(')').unwrap_or(norm.len());
            let rest = norm[close.min(norm.len())..].trim_start_matches(')').trim().to_string();
            let base =
                format!("{}{}", norm[..i].trim(), if rest.is_empty() { String::new() } else { format!(" {rest}") });
            (base, norm[i + 1..close].split(',').map(|s| s.trim().to_string()).collect::<Vec<_>>())
        }
        None => (norm.clone(), Vec::new()),
    };
    let t = match base.as_str() {
        "BOOLEAN" | "BOOL" => DataType::Boolean,
        "TINYINT" => DataType::Int8,
        "SMALLINT" | "INT2" => DataType::Int16,
        "INT" | "INTEGER" | "INT4" => DataType::Int32,
        "BIGINT" | "INT8" => DataType::Int64,
        "REAL" | "FLOAT4" => DataType::Float32,
        "DOUBLE" | "DOUBLE PRECISION" | "FLOAT8" => DataType::Float64,
        "FLOAT" => match args.first().and_then(|p| p.parse::<u32>().ok()) {
            Some(p) if p <= 24 => DataType::Float32,
            _ => DataType::Float64,
        },
        "DECIMAL" | "NUMERIC" | "DEC" => {
            let p = args.first().map(|s| s.parse::<u8>()).transpose().map_err(|_| bad(sql))?.unwrap_or(38);
            let s = args
                .get(1)
                .map(|s| s.parse::<i8>())
                .transpose()
                .map_err(|_| bad(sql))?
                .unwrap_or(if args.is_empty() { 10 } else { 0 });
            if p == 0 || p > 38 || s < 0 || s as u8 > p {
                return Err(PlanError::Schema(format!(
                    "DECIMAL({p},{s}) is out of range: precision 1..38, 0 <= scale <= precision"
                )));
            }
            DataType::Decimal128(p, s)
        }
        "VARCHAR" | "TEXT" | "STRING" | "CHAR" | "CHARACTER" | "CHARACTER VARYING" | "BPCHAR" | "JSON" | "JSONB"
        | "UUID" => DataType::Utf8,
        "BYTEA" | "BLOB" | "BINARY" | "VARBINARY" | "BYTES" => DataType::Binary,
        "DATE" => DataType::Date32,
        "TIMESTAMP" | "TIMESTAMP WITHOUT TIME ZONE" | "DATETIME" => DataType::Timestamp(TimeUnit::Microsecond, None),
        "TIMESTAMPTZ" | "TIMESTAMP WITH TIME ZONE" => DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
        "TIME" | "TIME WITHOUT TIME ZONE" => DataType::Time64(TimeUnit::Microsecond),
        "INTERVAL" => DataType::Interval(IntervalUnit::MonthDayNano),
        _ => return Err(bad(sql)),
    };
    Ok(t)
}

fn bad(sql: &str) -> PlanError {
    PlanError::Schema(format!(
        "unsupported column type '{sql}' (supported: BOOLEAN, SMALLINT, INT, BIGINT, REAL, FLOAT, DOUBLE, \
         DECIMAL(p,s), VARCHAR/TEXT, BYTEA, DATE, TIME, TIMESTAMP, TIMESTAMPTZ, INTERVAL)"
    ))
}

/// SQL spelling of an Arrow type, for `DESCRIBE`.
pub fn arrow_to_sql_type(t: &DataType) -> String {
    match t {
        DataType::Boolean => "BOOLEAN".into(),
        DataType::Int8 => "TINYINT".into(),
        DataType::Int16 => "SMALLINT".into(),
        DataType::Int32 => "INT".into(),
        DataType::Int64 => "BIGINT".into(),
        DataType::UInt8 | DataType::UInt16 | DataType::UInt32 | DataType::UInt64 => format!("{t}").to_uppercase(),
        DataType::Float32 => "REAL".into(),
        DataType::Float64 => "DOUBLE".into(),
        DataType::Decimal128(p, s) => format!("DECIMAL({p},{s})"),
        DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View => "VARCHAR".into(),
        DataType::Binary | DataType::LargeBinary | DataType::BinaryView => "BYTEA".into(),
        DataType::Date32 | DataType::Date64 => "DATE".into(),
        DataType::Timestamp(_, None) => "TIMESTAMP".into(),
        DataType::Timestamp(_, Some(_)) => "TIMESTAMPTZ".into(),
        DataType::Time32(_) | DataType::Time64(_) => "TIME".into(),
        DataType::Interval(_) => "INTERVAL".into(),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn maps_common_types() {
        assert_eq!(sql_type_to_arrow("varchar(20)").expect("t"), DataType::Utf8);
        assert_eq!(sql_type_to_arrow("DOUBLE PRECISION").expect("t"), DataType::Float64);
        assert_eq!(sql_type_to_arrow("numeric(10, 2)").expect("t"), DataType::Decimal128(10, 2));
        assert_eq!(
            sql_type_to_arrow("timestamp with time zone").expect("t"),
            DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into()))
        );
        assert_eq!(sql_type_to_arrow("FLOAT(10)").expect("t"), DataType::Float32);
        assert!(matches!(sql_type_to_arrow("GEOMETRY"), Err(PlanError::Schema(m)) if m.contains("GEOMETRY")));
        assert!(sql_type_to_arrow("DECIMAL(50,2)").is_err());
    }
}
