//! What the MySQL CDC source checks about the server and table (binary logging on, row-based,
//! full row images; the declared columns and their types; the key), and how column values, as
//! the text protocol (snapshot) and the binary log (changes) carry them, become the text the
//! Arrow conversion reads.

use arrow::datatypes::{DataType, SchemaRef};
use mysql_async::binlog::value::BinlogValue;
use mysql_async::prelude::Queryable;
use mysql_async::{Conn, Value};

use super::config::SourceConfig;
use crate::{ConnectorError, Result};

/// Which server it is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Flavor {
    /// MariaDB (domain-server-sequence GTIDs, consistent snapshots without a global lock).
    MariaDb,
    /// MySQL (UUID GTID sets when `gtid_mode` is on).
    MySql {
        /// `gtid_mode = ON`.
        gtids: bool,
    },
}

/// A column of the upstream table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Column {
    /// Name.
    pub name: String,
    /// `DATA_TYPE` (`int`, `varchar`, `datetime`, …).
    pub data_type: String,
    /// `COLUMN_TYPE` (`int(10) unsigned`, `enum('a','b')`, …) for messages.
    pub column_type: String,
    /// Unsigned integer.
    pub unsigned: bool,
    /// Labels of an ENUM or SET, in order.
    pub labels: Vec<String>,
}

/// The upstream table.
#[derive(Clone, Debug, Default)]
pub struct Table {
    /// Columns in table order (the order of binary log row images).
    pub columns: Vec<Column>,
    /// Primary key columns.
    pub primary_key: Vec<String>,
}

/// Maps a driver error into a connector error, with advice for the usual causes.
pub fn error(what: &str, cfg: &SourceConfig, e: mysql_async::Error) -> ConnectorError {
    let peer = &cfg.shown;
    match e {
        mysql_async::Error::Server(s) => {
            let advice = match s.code {
                1045 => format!(" (check the user and password of '{}' in 'connection')", cfg.user),
                1227 | 1044 => format!(
                    " (user '{}' needs the replication privileges: GRANT REPLICATION SLAVE, REPLICATION CLIENT ON *.* \
                     TO '{}'@'<host>')",
                    cfg.user, cfg.user
                ),
                1049 => " (the database in 'connection' does not exist)".to_string(),
                1146 => " (check 'table')".to_string(),
                1236 => " (the binary log the source needs is gone: it takes a new snapshot)".to_string(),
                _ => String::new(),
            };
            let msg = format!("mysql {peer}: {what}: {} (error {}){advice}", s.message, s.code);
            match s.code {
                1040 | 1053 | 1205 | 1213 | 2006 | 2013 => ConnectorError::Unavailable(msg),
                _ => ConnectorError::Config(msg),
            }
        }
        other => ConnectorError::Unavailable(format!("mysql {peer}: {what}: {other}")),
    }
}

/// Text of a query's first column of its first row.
async fn scalar(conn: &mut Conn, cfg: &SourceConfig, sql: &str) -> Result<Option<String>> {
    let rows: Vec<mysql_async::Row> = conn.query(sql).await.map_err(|e| error(sql, cfg, e))?;
    Ok(rows.into_iter().next().and_then(|r| r.unwrap().into_iter().next()).and_then(text_of))
}

fn text_of(v: Value) -> Option<String> {
    match v {
        Value::NULL => None,
        Value::Bytes(b) => Some(String::from_utf8_lossy(&b).into_owned()),
        Value::Int(i) => Some(i.to_string()),
        Value::UInt(u) => Some(u.to_string()),
        other => Some(other.as_sql(true).trim_matches('\'').to_string()),
    }
}

/// Checks binary logging and finds out which server it is.
pub async fn check_server(conn: &mut Conn, cfg: &SourceConfig) -> Result<Flavor> {
    let version = scalar(conn, cfg, "SELECT VERSION()").await?.unwrap_or_default();
    let log_bin = scalar(conn, cfg, "SELECT @@log_bin").await?.unwrap_or_default();
    if log_bin != "1" {
        return Err(ConnectorError::Config(format!(
            "mysql {}: binary logging is off, so there are no changes to read: start the server with \
             --log-bin --binlog-format=ROW --server-id=<n>",
            cfg.shown
        )));
    }
    let format = scalar(conn, cfg, "SELECT @@binlog_format").await?.unwrap_or_default();
    if !format.eq_ignore_ascii_case("ROW") {
        return Err(ConnectorError::Config(format!(
            "mysql {}: binlog_format is {format}, but change data capture needs ROW: SET GLOBAL binlog_format = \
             'ROW' (and in the server's configuration)",
            cfg.shown
        )));
    }
    let image = scalar(conn, cfg, "SELECT @@binlog_row_image").await?.unwrap_or_else(|| "FULL".into());
    if !image.eq_ignore_ascii_case("FULL") {
        return Err(ConnectorError::Config(format!(
            "mysql {}: binlog_row_image is {image}, but updates and deletes must carry whole rows: SET GLOBAL \
             binlog_row_image = 'FULL'",
            cfg.shown
        )));
    }
    if version.to_ascii_lowercase().contains("mariadb") {
        return Ok(Flavor::MariaDb);
    }
    let gtids =
        scalar(conn, cfg, "SELECT @@gtid_mode").await.ok().flatten().is_some_and(|m| m.eq_ignore_ascii_case("ON"));
    Ok(Flavor::MySql { gtids })
}

fn lit(s: &str) -> String {
    format!("'{}'", s.replace('\\', "\\\\").replace('\'', "''"))
}

/// Reads the table's columns and primary key.
pub async fn describe(conn: &mut Conn, cfg: &SourceConfig) -> Result<Table> {
    let sql = format!(
        "SELECT COLUMN_NAME, DATA_TYPE, COLUMN_TYPE FROM information_schema.COLUMNS WHERE TABLE_SCHEMA = {} AND \
         TABLE_NAME = {} ORDER BY ORDINAL_POSITION",
        lit(&cfg.schema),
        lit(&cfg.table)
    );
    let rows: Vec<mysql_async::Row> = conn.query(&sql).await.map_err(|e| error("reading the table", cfg, e))?;
    let columns: Vec<Column> = rows
        .into_iter()
        .map(|r| {
            let mut it = r.unwrap().into_iter().map(|v| text_of(v).unwrap_or_default());
            let (name, data_type, column_type) =
                (it.next().unwrap_or_default(), it.next().unwrap_or_default(), it.next().unwrap_or_default());
            let unsigned = column_type.to_ascii_lowercase().contains("unsigned");
            let labels = labels(&column_type);
            Column { name, data_type: data_type.to_ascii_lowercase(), column_type, unsigned, labels }
        })
        .collect();
    if columns.is_empty() {
        return Err(ConnectorError::Config(format!(
            "mysql {}: table {}.{} does not exist (or user '{}' cannot see it): check 'table'",
            cfg.shown, cfg.schema, cfg.table, cfg.user
        )));
    }
    let sql = format!(
        "SELECT COLUMN_NAME FROM information_schema.STATISTICS WHERE TABLE_SCHEMA = {} AND TABLE_NAME = {} AND \
         INDEX_NAME = 'PRIMARY' ORDER BY SEQ_IN_INDEX",
        lit(&cfg.schema),
        lit(&cfg.table)
    );
    let pk: Vec<mysql_async::Row> = conn.query(&sql).await.map_err(|e| error("reading the table's key", cfg, e))?;
    let primary_key = pk.into_iter().filter_map(|r| r.unwrap().into_iter().next().and_then(text_of)).collect();
    Ok(Table { columns, primary_key })
}

/// `enum('a','b')` / `set('x','y')` → labels.
fn labels(column_type: &str) -> Vec<String> {
    let lower = column_type.to_ascii_lowercase();
    if !(lower.starts_with("enum(") || lower.starts_with("set(")) {
        return Vec::new();
    }
    let inner =
        &column_type[column_type.find('(').map_or(0, |i| i + 1)..column_type.rfind(')').unwrap_or(column_type.len())];
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut chars = inner.chars().peekable();
    let mut quoted = false;
    while let Some(c) = chars.next() {
        match c {
            '\'' if quoted && chars.peek() == Some(&'\'') => {
                cur.push('\'');
                chars.next();
            }
            '\'' => {
                quoted = !quoted;
                if !quoted {
                    out.push(std::mem::take(&mut cur));
                }
            }
            _ if quoted => cur.push(c),
            _ => {}
        }
    }
    out
}

/// Whether a column of upstream type `data_type` reads as `declared`.
pub fn compatible(col: &Column, declared: &DataType) -> bool {
    use DataType::*;
    if matches!(declared, Utf8 | LargeUtf8 | Utf8View) {
        return !matches!(
            col.data_type.as_str(),
            "blob" | "tinyblob" | "mediumblob" | "longblob" | "binary" | "varbinary" | "bit"
        );
    }
    let u = col.unsigned;
    match col.data_type.as_str() {
        "tinyint" => {
            matches!(declared, Boolean | Int16 | Int32 | Int64 | Decimal128(..))
                || (!u && matches!(declared, Int8))
                || (u && matches!(declared, UInt8 | UInt16 | UInt32 | UInt64))
        }
        "smallint" => {
            matches!(declared, Int32 | Int64 | Decimal128(..))
                || (!u && matches!(declared, Int16))
                || (u && matches!(declared, UInt16 | UInt32 | UInt64))
        }
        "mediumint" | "int" => {
            matches!(declared, Int64 | Decimal128(..))
                || (!u && matches!(declared, Int32))
                || (u && matches!(declared, UInt32 | UInt64))
        }
        "bigint" => {
            matches!(declared, Decimal128(..) | Decimal256(..))
                || (!u && matches!(declared, Int64))
                || (u && matches!(declared, UInt64))
        }
        "decimal" => matches!(declared, Decimal128(..) | Decimal256(..) | Float64),
        "float" => matches!(declared, Float32 | Float64),
        "double" => matches!(declared, Float64),
        "year" => matches!(declared, Int16 | Int32 | Int64),
        "date" => matches!(declared, Date32 | Date64 | Timestamp(..)),
        "datetime" | "timestamp" => matches!(declared, Timestamp(..)),
        "time" => matches!(declared, Time64(_)),
        "blob" | "tinyblob" | "mediumblob" | "longblob" | "binary" | "varbinary" | "bit" => {
            matches!(declared, Binary | LargeBinary | BinaryView)
        }
        _ => false,
    }
}

/// Checks the declared columns against the table; returns the key rows are matched by.
pub fn check_columns(
    cfg: &SourceConfig,
    table: &Table,
    schema: &SchemaRef,
    declared_key: &[String],
) -> Result<Vec<String>> {
    let qualified = format!("{}.{}", cfg.schema, cfg.table);
    for f in schema.fields() {
        let Some(col) = find(&table.columns, f.name()) else {
            let names: Vec<&str> = table.columns.iter().map(|c| c.name.as_str()).collect();
            return Err(crate::cdc::missing_column(f.name(), &qualified, &names));
        };
        if !compatible(&table.columns[col], f.data_type()) {
            return Err(ConnectorError::Config(format!(
                "column '{}' is declared as {}, but {qualified}.{} is {}: declare a matching type",
                f.name(),
                f.data_type(),
                table.columns[col].name,
                table.columns[col].column_type
            )));
        }
    }
    let key: Vec<String> = if !declared_key.is_empty() {
        declared_key.to_vec()
    } else if !table.primary_key.is_empty() {
        table.primary_key.clone()
    } else {
        // Row images carry whole rows: without a key a row is matched by all its columns.
        schema.fields().iter().map(|f| f.name().clone()).collect()
    };
    let mut out = Vec::with_capacity(key.len());
    for k in &key {
        match schema.fields().iter().find(|f| f.name().eq_ignore_ascii_case(k)) {
            Some(f) => out.push(f.name().clone()),
            None => {
                return Err(ConnectorError::Config(format!(
                    "column '{k}' of {qualified}'s primary key is not declared in the source: add it to the column \
                     list (rows are matched by it)"
                )))
            }
        }
    }
    Ok(out)
}

/// Index of the upstream column a declared name refers to (exact, then ignoring case).
pub fn find(columns: &[Column], name: &str) -> Option<usize> {
    let names: Vec<&str> = columns.iter().map(|c| c.name.as_str()).collect();
    crate::cdc::find_name(&names, name)
}

/// A value on its way to Arrow: text, or bytes of a binary column.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Text {
    /// SQL NULL.
    Null,
    /// Text.
    Str(String),
    /// Bytes.
    Bin(Vec<u8>),
}

impl Text {
    /// The text [`crate::postgres::values::column`]-style conversion reads for `target`:
    /// binary targets get `\x…` hex, booleans `t`/`f`.
    pub fn render(&self, target: &DataType) -> Option<String> {
        match self {
            Text::Null => None,
            Text::Bin(b) if matches!(target, DataType::Binary | DataType::LargeBinary | DataType::BinaryView) => {
                Some(format!("\\x{}", b.iter().map(|x| format!("{x:02x}")).collect::<String>()))
            }
            Text::Bin(b) => Some(String::from_utf8_lossy(b).into_owned()),
            Text::Str(s) if *target == DataType::Boolean => Some(if s == "0" { "f".into() } else { "t".into() }),
            Text::Str(s) => Some(s.clone()),
        }
    }
}

fn is_binary(col: &Column) -> bool {
    matches!(col.data_type.as_str(), "blob" | "tinyblob" | "mediumblob" | "longblob" | "binary" | "varbinary" | "bit")
}

/// A value of the text protocol (the snapshot).
pub fn from_text_protocol(v: Value, col: &Column) -> Text {
    match v {
        Value::NULL => Text::Null,
        Value::Bytes(b) if is_binary(col) => Text::Bin(b),
        Value::Bytes(b) => Text::Str(String::from_utf8_lossy(&b).into_owned()),
        other => Text::Str(text_of(other).unwrap_or_default()),
    }
}

/// A value of a binary log row image.
pub fn from_binlog(v: BinlogValue<'_>, col: &Column) -> std::result::Result<Text, String> {
    let v = match v {
        BinlogValue::Value(v) => v,
        BinlogValue::Jsonb(j) => {
            let json: serde_json::Value =
                serde_json::Value::try_from(j).map_err(|e| format!("column '{}': JSON value: {e}", col.name))?;
            return Ok(Text::Str(json.to_string()));
        }
        BinlogValue::JsonDiff(_) => {
            return Err(format!(
                "column '{}' came as a partial JSON update: SET GLOBAL binlog_row_value_options = ''",
                col.name
            ))
        }
    };
    Ok(match v {
        Value::NULL => Text::Null,
        Value::Int(i) => {
            if col.data_type == "enum" {
                return Ok(Text::Str(label(col, i as usize)));
            }
            let i = if col.unsigned && i < 0 {
                let bits = match col.data_type.as_str() {
                    "tinyint" => 8,
                    "smallint" => 16,
                    "mediumint" => 24,
                    "int" => 32,
                    _ => 64,
                };
                if bits == 64 {
                    return Ok(Text::Str((i as u64).to_string()));
                }
                i + (1i64 << bits)
            } else {
                i
            };
            Text::Str(i.to_string())
        }
        Value::UInt(u) => Text::Str(u.to_string()),
        Value::Float(f) => Text::Str(f.to_string()),
        Value::Double(d) => Text::Str(d.to_string()),
        Value::Date(y, mo, d, h, mi, s, us) => {
            if col.data_type == "date" {
                Text::Str(format!("{y:04}-{mo:02}-{d:02}"))
            } else {
                Text::Str(format!("{y:04}-{mo:02}-{d:02} {h:02}:{mi:02}:{s:02}.{us:06}"))
            }
        }
        Value::Time(neg, days, h, mi, s, us) => {
            let hours = days * 24 + u32::from(h);
            Text::Str(format!("{}{hours:02}:{mi:02}:{s:02}.{us:06}", if neg { "-" } else { "" }))
        }
        Value::Bytes(b) => match col.data_type.as_str() {
            "timestamp" => Text::Str(epoch_text(&String::from_utf8_lossy(&b)).ok_or_else(|| {
                format!("column '{}': timestamp '{}' is not seconds since 1970", col.name, String::from_utf8_lossy(&b))
            })?),
            "set" => {
                let mut mask = 0u64;
                for (i, x) in b.iter().enumerate().take(8) {
                    mask |= u64::from(*x) << (8 * i);
                }
                let chosen: Vec<&str> = col
                    .labels
                    .iter()
                    .enumerate()
                    .filter(|(i, _)| mask & (1 << i) != 0)
                    .map(|(_, l)| l.as_str())
                    .collect();
                Text::Str(chosen.join(","))
            }
            _ if is_binary(col) => Text::Bin(b),
            _ => Text::Str(String::from_utf8_lossy(&b).into_owned()),
        },
    })
}

fn label(col: &Column, i: usize) -> String {
    if i == 0 {
        return String::new(); // the error value of an ENUM
    }
    col.labels.get(i - 1).cloned().unwrap_or_default()
}

/// `seconds[.micros]` since 1970 → `YYYY-MM-DD HH:MM:SS.ffffff` (UTC).
fn epoch_text(s: &str) -> Option<String> {
    let (secs, micros) = match s.split_once('.') {
        Some((a, b)) => (a.parse::<i64>().ok()?, format!("{b:0<6}").get(..6)?.parse::<u32>().ok()?),
        None => (s.parse::<i64>().ok()?, 0),
    };
    let t = chrono::DateTime::from_timestamp(secs, micros * 1000)?;
    Some(t.format("%Y-%m-%d %H:%M:%S%.6f").to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn col(data_type: &str, column_type: &str) -> Column {
        Column {
            name: "c".into(),
            data_type: data_type.into(),
            column_type: column_type.into(),
            unsigned: column_type.contains("unsigned"),
            labels: labels(column_type),
        }
    }

    #[test]
    fn binlog_values_become_the_text_of_the_declared_types() {
        let v = |x: Value, c: &Column| from_binlog(BinlogValue::Value(x), c).expect("value");
        assert_eq!(v(Value::Int(-1), &col("int", "int(10) unsigned")), Text::Str("4294967295".into()));
        assert_eq!(v(Value::Int(-1), &col("bigint", "bigint(20) unsigned")), Text::Str("18446744073709551615".into()));
        assert_eq!(v(Value::Int(-5), &col("int", "int(11)")), Text::Str("-5".into()));
        assert_eq!(v(Value::Int(2), &col("enum", "enum('new','it''s')")), Text::Str("it's".into()));
        assert_eq!(v(Value::Bytes(vec![5]), &col("set", "set('a','b','c')")), Text::Str("a,c".into()));
        assert_eq!(
            v(Value::Bytes(b"1765015200.5".to_vec()), &col("timestamp", "timestamp(6)")),
            Text::Str("2025-12-06 10:00:00.500000".into())
        );
        assert_eq!(v(Value::Date(2026, 12, 6, 0, 0, 0, 0), &col("date", "date")), Text::Str("2026-12-06".into()));
        assert_eq!(v(Value::Time(true, 1, 2, 3, 4, 5), &col("time", "time")), Text::Str("-26:03:04.000005".into()));
        assert_eq!(Text::Bin(vec![0, 255]).render(&DataType::Binary).as_deref(), Some("\\x00ff"));
        assert_eq!(Text::Str("0".into()).render(&DataType::Boolean).as_deref(), Some("f"));
        assert!(compatible(&col("tinyint", "tinyint(1)"), &DataType::Boolean));
        assert!(!compatible(&col("bigint", "bigint(20) unsigned"), &DataType::Int64));
        assert!(!compatible(&col("varchar", "varchar(10)"), &DataType::Int64));
    }
}
