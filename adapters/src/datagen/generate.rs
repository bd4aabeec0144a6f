//! Column generators: deterministic functions of (seed, column, row number).

use std::sync::Arc;

use arrow::array::{ArrayRef, BooleanArray, Float64Array, Int64Array, StringArray};
use arrow::datatypes::{DataType, Field, TimeUnit};

use crate::options::OptionReader;
use crate::{ConnectorError, Result};

/// SplitMix64: a tiny, fast, well-mixed generator; `mix(x)` is a pure hash.
pub fn mix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

/// A uniform value in `[0, 1)` from a hash.
pub fn unit(h: u64) -> f64 {
    (h >> 11) as f64 / (1u64 << 53) as f64
}

/// How one column is generated.
#[derive(Clone, Debug)]
pub enum Gen {
    /// Random integers in `[min, max]`.
    RandomInt {
        /// Smallest value.
        min: i64,
        /// Largest value.
        max: i64,
    },
    /// `start + step * row`.
    SequenceInt {
        /// First value.
        start: i64,
        /// Increment per row.
        step: i64,
    },
    /// Random floats in `[min, max)`.
    RandomFloat {
        /// Smallest value.
        min: f64,
        /// Upper bound (exclusive).
        max: f64,
    },
    /// `start + step * row`.
    SequenceFloat {
        /// First value.
        start: f64,
        /// Increment per row.
        step: f64,
    },
    /// Random alphanumeric strings.
    RandomString {
        /// Characters per value.
        length: usize,
    },
    /// `prefix` + row number.
    SequenceString,
    /// One of the listed values.
    Choice(Vec<String>),
    /// Random booleans.
    Bool,
    /// Event time in ms: `start + step * row - jitter`; `start = None`: the time of `open`.
    EventTime {
        /// Time of row 0 (ms); `None`: when the source opened.
        start: Option<i64>,
        /// Milliseconds per row.
        step_ms: f64,
        /// Up to this many ms subtracted at random (out-of-order events).
        jitter_ms: i64,
    },
}

/// A column generator.
#[derive(Clone, Debug)]
pub struct ColumnGen {
    /// Output field.
    pub field: Arc<Field>,
    /// Generator.
    pub gen: Gen,
    /// Fraction of NULLs.
    pub null_rate: f64,
    salt: u64,
}

const ALNUM: &[u8] = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789";

impl ColumnGen {
    /// Reads the `fields.<name>.*` options for `field`.
    pub fn pull(field: &Arc<Field>, index: usize, r: &mut OptionReader<'_>, rows_per_second: u64) -> Result<Self> {
        let p = format!("fields.{}.", field.name().to_ascii_lowercase());
        let key = |s: &str| format!("{p}{s}");
        let kind = r.opt_enum(&key("kind"), &["random", "sequence"])?.unwrap_or_else(|| "random".into());
        let seq = kind == "sequence";
        let values = r.opt_str(&key("values"));
        let null_rate = r.opt_f64(&key("null_rate"))?.unwrap_or(0.0);
        if !(0.0..=1.0).contains(&null_rate) {
            return Err(r.bad(&key("null_rate"), &null_rate.to_string(), "between 0 and 1"));
        }
        if null_rate > 0.0 && !field.is_nullable() {
            return Err(ConnectorError::Config(format!(
                "option '{}' asks for NULLs in column '{}', which is NOT NULL",
                key("null_rate"),
                field.name()
            )));
        }
        let dt = field.data_type();
        let gen = if let Some(v) = values {
            let items: Vec<String> = v.split(',').map(|s| s.trim().to_string()).filter(|s| !s.is_empty()).collect();
            if items.is_empty() {
                return Err(r.bad(&key("values"), &v, "a comma-separated list"));
            }
            Gen::Choice(items)
        } else if matches!(dt, DataType::Timestamp(..) | DataType::Date32) {
            let start = match r.opt_str(&key("start")) {
                None => None,
                Some(s) => Some(
                    chrono::DateTime::parse_from_rfc3339(s.trim())
                        .map_err(|_| r.bad(&key("start"), &s, "an RFC 3339 time such as '2024-01-01T00:00:00Z'"))?
                        .timestamp_millis(),
                ),
            };
            let default_step = if rows_per_second == 0 { 1.0 } else { 1000.0 / rows_per_second as f64 };
            let step_ms = r.opt_f64(&key("step"))?.unwrap_or(default_step);
            let jitter_ms = r.opt_i64(&key("jitter_ms"))?.unwrap_or(0).max(0);
            Gen::EventTime { start, step_ms, jitter_ms }
        } else if dt.is_integer() {
            if seq {
                Gen::SequenceInt {
                    start: r.opt_i64(&key("start"))?.unwrap_or(0),
                    step: r.opt_i64(&key("step"))?.unwrap_or(1),
                }
            } else {
                let min = r.opt_i64(&key("min"))?.unwrap_or(0);
                let max = r.opt_i64(&key("max"))?.unwrap_or(1_000);
                if max < min {
                    return Err(r.bad(&key("max"), &max.to_string(), &format!("at least min ({min})")));
                }
                Gen::RandomInt { min, max }
            }
        } else if dt.is_floating() || matches!(dt, DataType::Decimal128(..)) {
            if seq {
                Gen::SequenceFloat {
                    start: r.opt_f64(&key("start"))?.unwrap_or(0.0),
                    step: r.opt_f64(&key("step"))?.unwrap_or(1.0),
                }
            } else {
                let min = r.opt_f64(&key("min"))?.unwrap_or(0.0);
                let max = r.opt_f64(&key("max"))?.unwrap_or(1_000.0);
                if max < min {
                    return Err(r.bad(&key("max"), &max.to_string(), &format!("at least min ({min})")));
                }
                Gen::RandomFloat { min, max }
            }
        } else if dt == &DataType::Utf8 {
            if seq {
                Gen::SequenceString
            } else {
                Gen::RandomString { length: r.opt_u64(&key("length"))?.unwrap_or(8) as usize }
            }
        } else if dt == &DataType::Boolean {
            Gen::Bool
        } else {
            return Err(ConnectorError::Config(format!(
                "datagen cannot generate column '{}' of type {dt}",
                field.name()
            )));
        };
        Ok(Self { field: field.clone(), gen, null_rate, salt: mix(index as u64 + 1) })
    }

    /// Values for rows `first .. first + n` (`now_ms`: the default event-time start).
    pub fn generate(&self, seed: u64, first: u64, n: usize, now_ms: i64) -> Result<ArrayRef> {
        let h = |row: u64| mix(seed ^ self.salt ^ mix(row));
        let rows = first..first + n as u64;
        let base: ArrayRef = match &self.gen {
            Gen::RandomInt { min, max } => {
                let span = (*max as i128 - *min as i128 + 1) as u128;
                Arc::new(Int64Array::from_iter_values(
                    rows.map(|r| (*min as i128 + (h(r) as u128 % span) as i128) as i64),
                ))
            }
            Gen::SequenceInt { start, step } => {
                Arc::new(Int64Array::from_iter_values(rows.map(|r| start.wrapping_add(step.wrapping_mul(r as i64)))))
            }
            Gen::RandomFloat { min, max } => {
                Arc::new(Float64Array::from_iter_values(rows.map(|r| min + unit(h(r)) * (max - min))))
            }
            Gen::SequenceFloat { start, step } => {
                Arc::new(Float64Array::from_iter_values(rows.map(|r| start + step * r as f64)))
            }
            Gen::RandomString { length } => Arc::new(StringArray::from_iter_values(rows.map(|r| {
                let mut x = h(r);
                (0..*length)
                    .map(|i| {
                        if i % 10 == 0 && i > 0 {
                            x = mix(x);
                        }
                        let c = ALNUM[(x % ALNUM.len() as u64) as usize] as char;
                        x /= ALNUM.len() as u64;
                        c
                    })
                    .collect::<String>()
            }))),
            Gen::SequenceString => {
                Arc::new(StringArray::from_iter_values(rows.map(|r| format!("{}-{r}", self.field.name()))))
            }
            Gen::Choice(items) => Arc::new(StringArray::from_iter_values(
                rows.map(|r| items[(h(r) % items.len() as u64) as usize].as_str()),
            )),
            Gen::Bool => Arc::new(BooleanArray::from_iter(rows.map(|r| Some(h(r) & 1 == 1)))),
            Gen::EventTime { start, step_ms, jitter_ms } => {
                let s = start.unwrap_or(now_ms);
                Arc::new(Int64Array::from_iter_values(rows.map(|r| {
                    let j = if *jitter_ms > 0 { (h(r) % (*jitter_ms as u64 + 1)) as i64 } else { 0 };
                    s + (step_ms * r as f64) as i64 - j
                })))
            }
        };
        let base = if self.null_rate > 0.0 {
            let mask = BooleanArray::from_iter(
                (first..first + n as u64).map(|r| Some(unit(mix(h(r) ^ 0x5555)) >= self.null_rate)),
            );
            arrow::compute::nullif(&base, &arrow::compute::not(&mask)?)?
        } else {
            base
        };
        cast_to(&base, self.field.data_type())
    }
}

/// Casts generated values to the declared type (ms integers become timestamps/dates).
pub fn cast_to(a: &ArrayRef, dt: &DataType) -> Result<ArrayRef> {
    if a.data_type() == dt {
        return Ok(a.clone());
    }
    let a = match (a.data_type(), dt) {
        (DataType::Int64, DataType::Timestamp(unit, tz)) => {
            let ms = arrow::compute::cast(a, &DataType::Timestamp(TimeUnit::Millisecond, tz.clone()))?;
            if *unit == TimeUnit::Millisecond {
                return Ok(ms);
            }
            ms
        }
        (DataType::Int64, DataType::Date32) => {
            let ms = arrow::compute::cast(a, &DataType::Timestamp(TimeUnit::Millisecond, None))?;
            return Ok(arrow::compute::cast(&ms, dt)?);
        }
        _ => a.clone(),
    };
    Ok(arrow::compute::cast(&a, dt)?)
}
