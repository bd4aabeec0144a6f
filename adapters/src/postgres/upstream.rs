//! What the CDC source checks about the upstream server and table before it streams: the WAL
//! level, the table's columns against the declared ones (names and types), the key rows are
//! matched by, the publication and the slot. Every failure says how to fix it.

use arrow::datatypes::{DataType, SchemaRef};

use super::config::SourceConfig;
use super::wire::{quote_ident, quote_literal, Connection, WireError};
use crate::{ConnectorError, Result};

/// A column of the upstream table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UpstreamColumn {
    /// Name.
    pub name: String,
    /// `pg_type.typname` (`int4`, `timestamptz`, `_text` for arrays, …).
    pub type_name: String,
    /// The SQL spelling (`integer`, `numeric(10,2)`, …) for messages.
    pub sql_type: String,
}

/// The upstream table as the catalog describes it.
#[derive(Clone, Debug)]
pub struct UpstreamTable {
    /// Its OID.
    pub oid: u32,
    /// Columns in table order.
    pub columns: Vec<UpstreamColumn>,
    /// Primary key columns (empty: none).
    pub primary_key: Vec<String>,
    /// `REPLICA IDENTITY`: `d`efault, `f`ull, `i`ndex, `n`othing.
    pub replica_identity: u8,
    /// Columns of the replica identity index (`i`).
    pub identity_index: Vec<String>,
}

/// Maps a server error met while checking into a connector error, with `what` for context.
pub fn wire_error(what: &str, cfg: &SourceConfig, e: WireError) -> ConnectorError {
    let peer = &cfg.shown;
    match e {
        WireError::Io(m) => ConnectorError::Unavailable(format!("postgres {peer}: {what}: {m}")),
        WireError::Tls(m) => ConnectorError::Unavailable(format!("postgres {peer}: {what}: TLS: {m}")),
        WireError::Protocol(m) => ConnectorError::Failed(format!("postgres {peer}: {what}: {m}")),
        WireError::Server(s) => {
            let user = &cfg.connect.user;
            let advice = match s.code.as_str() {
                "28P01" => format!(" (check the password of user '{user}' in 'connection')"),
                "42501" if s.message.contains("replication") || s.message.contains("WAL sender") => format!(
                    " (user '{user}' lacks the REPLICATION attribute: run ALTER ROLE {} WITH REPLICATION, or \
                     connect as a role that has it)",
                    quote_ident(user)
                ),
                "28000" => " (add a pg_hba.conf line that lets this user connect from here)".to_string(),
                "3D000" => " (the database in 'connection' does not exist)".to_string(),
                "55000" if s.message.contains("wal_level") => {
                    " (set wal_level = logical in postgresql.conf and restart the server)".to_string()
                }
                "53400" => " (the server's max_replication_slots or max_wal_senders is exhausted)".to_string(),
                _ => String::new(),
            };
            let msg = format!("postgres {peer}: {what}: {s}{advice}");
            match s.code.as_str() {
                // Connection-level trouble worth retrying: the slot still held by a session that
                // is going away, too many connections, the server shutting down.
                "55006" | "53300" | "57P01" | "57P03" => ConnectorError::Unavailable(msg),
                _ => ConnectorError::Config(msg),
            }
        }
    }
}

/// `wal_level` must be `logical`.
pub async fn check_wal_level(conn: &mut Connection, cfg: &SourceConfig) -> Result<()> {
    let rows = conn.query("SHOW wal_level").await.map_err(|e| wire_error("reading wal_level", cfg, e))?;
    let level = rows.first().and_then(|r| r.first().cloned().flatten()).unwrap_or_default();
    if level != "logical" {
        return Err(ConnectorError::Config(format!(
            "postgres {}: wal_level is '{level}', but change data capture needs 'logical': set wal_level = logical \
             in postgresql.conf (or ALTER SYSTEM SET wal_level = logical) and restart the server",
            cfg.shown
        )));
    }
    Ok(())
}

/// Reads the table's columns, key and replica identity.
pub async fn describe_table(conn: &mut Connection, cfg: &SourceConfig) -> Result<UpstreamTable> {
    let what = format!("reading the description of table {}.{}", cfg.schema, cfg.table);
    let rows = conn
        .query(&format!(
            "SELECT c.oid, c.relreplident, c.relkind FROM pg_class c WHERE c.oid = to_regclass({})",
            quote_literal(&cfg.qualified())
        ))
        .await
        .map_err(|e| wire_error(&what, cfg, e))?;
    let Some(row) = rows.first() else {
        return Err(ConnectorError::Config(format!(
            "postgres {}: table {}.{} does not exist (or user '{}' cannot see it): check 'table'",
            cfg.shown, cfg.schema, cfg.table, cfg.connect.user
        )));
    };
    let text = |i: usize| row.get(i).cloned().flatten().unwrap_or_default();
    let oid: u32 = text(0).parse().map_err(|_| ConnectorError::Failed(format!("{what}: bad oid")))?;
    let replica_identity = text(1).bytes().next().unwrap_or(b'd');
    if !matches!(text(2).as_str(), "r" | "p") {
        return Err(ConnectorError::Config(format!(
            "postgres {}: {}.{} is not a table (relkind '{}'): only tables can be replicated",
            cfg.shown,
            cfg.schema,
            cfg.table,
            text(2)
        )));
    }
    let cols = conn
        .query(&format!(
            "SELECT a.attname, t.typname, format_type(a.atttypid, a.atttypmod) FROM pg_attribute a \
             JOIN pg_type t ON t.oid = a.atttypid WHERE a.attrelid = {oid} AND a.attnum > 0 AND NOT a.attisdropped \
             ORDER BY a.attnum"
        ))
        .await
        .map_err(|e| wire_error(&what, cfg, e))?;
    let columns = cols
        .into_iter()
        .map(|r| {
            let mut it = r.into_iter().map(Option::unwrap_or_default);
            UpstreamColumn {
                name: it.next().unwrap_or_default(),
                type_name: it.next().unwrap_or_default(),
                sql_type: it.next().unwrap_or_default(),
            }
        })
        .collect();
    let keys = conn
        .query(&format!(
            "SELECT a.attname, i.indisprimary, i.indisreplident FROM pg_index i \
             JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = ANY(i.indkey) \
             WHERE i.indrelid = {oid} AND (i.indisprimary OR i.indisreplident) ORDER BY a.attnum"
        ))
        .await
        .map_err(|e| wire_error(&what, cfg, e))?;
    let mut primary_key = Vec::new();
    let mut identity_index = Vec::new();
    for k in keys {
        let name = k.first().cloned().flatten().unwrap_or_default();
        if k.get(1).cloned().flatten().as_deref() == Some("t") {
            primary_key.push(name.clone());
        }
        if k.get(2).cloned().flatten().as_deref() == Some("t") {
            identity_index.push(name);
        }
    }
    Ok(UpstreamTable { oid, columns, primary_key, replica_identity, identity_index })
}

/// Whether values of upstream type `type_name` (text output) read as `declared`.
pub fn compatible(type_name: &str, declared: &DataType) -> bool {
    use DataType::*;
    if matches!(declared, Utf8 | LargeUtf8 | Utf8View) {
        return true; // every type has a text form
    }
    match type_name {
        "int2" => matches!(declared, Int16 | Int32 | Int64 | Float32 | Float64 | Decimal128(..) | Decimal256(..)),
        "int4" => matches!(declared, Int32 | Int64 | Float64 | Decimal128(..) | Decimal256(..)),
        "int8" => matches!(declared, Int64 | Decimal128(..) | Decimal256(..)),
        "oid" | "xid" => matches!(declared, UInt32 | Int64 | UInt64),
        "numeric" => matches!(declared, Decimal128(..) | Decimal256(..) | Float64 | Float32),
        "float4" => matches!(declared, Float32 | Float64),
        "float8" => matches!(declared, Float64),
        "bool" => matches!(declared, Boolean),
        "date" => matches!(declared, Date32 | Date64 | Timestamp(..)),
        "timestamp" | "timestamptz" => matches!(declared, Timestamp(..)),
        "time" => matches!(declared, Time32(_) | Time64(_)),
        "bytea" => matches!(declared, Binary | LargeBinary | BinaryView),
        _ => false,
    }
}

/// Checks the declared columns against the table; returns the key rows are matched by.
pub fn check_columns(
    cfg: &SourceConfig,
    table: &UpstreamTable,
    schema: &SchemaRef,
    declared_key: &[String],
) -> Result<Vec<String>> {
    let qualified = format!("{}.{}", cfg.schema, cfg.table);
    for f in schema.fields() {
        let Some(up) = find(&table.columns, f.name()) else {
            let names: Vec<&str> = table.columns.iter().map(|c| c.name.as_str()).collect();
            return Err(crate::cdc::missing_column(f.name(), &qualified, &names));
        };
        if !compatible(&up.type_name, f.data_type()) {
            return Err(ConnectorError::Config(format!(
                "column '{}' is declared as {}, but {qualified}.{} is {}: declare a matching type{}",
                f.name(),
                f.data_type(),
                up.name,
                up.sql_type,
                suggestion(&up.type_name).map(|s| format!(" (e.g. {s})")).unwrap_or_default()
            )));
        }
    }
    let identity: Vec<String> = match table.replica_identity {
        b'f' => Vec::new(),
        b'i' => table.identity_index.clone(),
        b'n' => {
            return Err(ConnectorError::Config(format!(
                "table {qualified} has REPLICA IDENTITY NOTHING, so its updates and deletes cannot be captured: \
                 run ALTER TABLE {qualified} REPLICA IDENTITY DEFAULT (with a primary key) or FULL"
            )))
        }
        _ => table.primary_key.clone(),
    };
    if table.replica_identity != b'f' && identity.is_empty() {
        return Err(ConnectorError::Config(format!(
            "table {qualified} has no primary key, so its updates and deletes carry no key: add a primary key, \
             or run ALTER TABLE {qualified} REPLICA IDENTITY FULL"
        )));
    }
    let key: Vec<String> = if !declared_key.is_empty() {
        if !identity.is_empty() && !same_names(declared_key, &identity) {
            return Err(ConnectorError::Config(format!(
                "the source's PRIMARY KEY ({}) differs from the key {qualified} sends with updates and deletes \
                 ({}): declare PRIMARY KEY ({}), or drop it from the DDL",
                declared_key.join(", "),
                identity.join(", "),
                identity.join(", ")
            )));
        }
        declared_key.to_vec()
    } else if !identity.is_empty() {
        identity
    } else if !table.primary_key.is_empty() {
        table.primary_key.clone()
    } else {
        // REPLICA IDENTITY FULL without a primary key: a row is its own key.
        schema.fields().iter().map(|f| f.name().clone()).collect()
    };
    let mut resolved = Vec::with_capacity(key.len());
    for k in &key {
        match schema.fields().iter().find(|f| f.name() == k || f.name().eq_ignore_ascii_case(k)) {
            Some(f) => resolved.push(f.name().clone()),
            None => {
                return Err(ConnectorError::Config(format!(
                    "column '{k}' of {qualified}'s key is not declared in the source: add it to the column list \
                     (rows are matched by it)"
                )))
            }
        }
    }
    Ok(resolved)
}

fn same_names(a: &[String], b: &[String]) -> bool {
    a.len() == b.len() && a.iter().all(|x| b.iter().any(|y| y.eq_ignore_ascii_case(x)))
}

/// The upstream column a declared name refers to (exact, then ignoring case).
pub fn find<'a>(columns: &'a [UpstreamColumn], name: &str) -> Option<&'a UpstreamColumn> {
    let names: Vec<&str> = columns.iter().map(|c| c.name.as_str()).collect();
    crate::cdc::find_name(&names, name).map(|i| &columns[i])
}

fn suggestion(type_name: &str) -> Option<&'static str> {
    Some(match type_name {
        "int2" => "SMALLINT",
        "int4" => "INT",
        "int8" => "BIGINT",
        "numeric" => "DECIMAL(p, s) or DOUBLE",
        "float4" => "REAL",
        "float8" => "DOUBLE",
        "bool" => "BOOLEAN",
        "date" => "DATE",
        "timestamp" => "TIMESTAMP",
        "timestamptz" => "TIMESTAMP",
        "bytea" => "BYTEA",
        _ => "VARCHAR",
    })
}

/// Makes sure the publication exists and covers the table (creating it for the table if absent).
pub async fn ensure_publication(conn: &mut Connection, cfg: &SourceConfig) -> Result<()> {
    let what = format!("checking publication '{}'", cfg.publication);
    let p = quote_literal(&cfg.publication);
    let exists = conn
        .query(&format!("SELECT 1 FROM pg_publication WHERE pubname = {p}"))
        .await
        .map_err(|e| wire_error(&what, cfg, e))?;
    if exists.is_empty() {
        let sql = format!("CREATE PUBLICATION {} FOR TABLE {}", quote_ident(&cfg.publication), cfg.qualified());
        return match conn.query(&sql).await {
            Ok(_) => Ok(()),
            // Another pipeline created it meanwhile.
            Err(WireError::Server(s)) if s.code == "42710" => Ok(()),
            Err(WireError::Server(s)) if s.code == "42501" => Err(ConnectorError::Config(format!(
                "postgres {}: user '{}' may not create publication '{}' ({}): have the table's owner run \
                 CREATE PUBLICATION {} FOR TABLE {}, then name it in 'publication.name'",
                cfg.shown,
                cfg.connect.user,
                cfg.publication,
                s.message,
                quote_ident(&cfg.publication),
                cfg.qualified()
            ))),
            Err(e) => Err(wire_error(&format!("creating publication '{}'", cfg.publication), cfg, e)),
        };
    }
    let covered = conn
        .query(&format!(
            "SELECT 1 FROM pg_publication_tables WHERE pubname = {p} AND schemaname = {} AND tablename = {}",
            quote_literal(&cfg.schema),
            quote_literal(&cfg.table)
        ))
        .await
        .map_err(|e| wire_error(&what, cfg, e))?;
    if covered.is_empty() {
        return Err(ConnectorError::Config(format!(
            "postgres {}: publication '{}' does not include table {}.{}: run ALTER PUBLICATION {} ADD TABLE {}, \
             or name another publication in 'publication.name'",
            cfg.shown,
            cfg.publication,
            cfg.schema,
            cfg.table,
            quote_ident(&cfg.publication),
            cfg.qualified()
        )));
    }
    Ok(())
}

/// The slot's state: None if it does not exist, else whether a session holds it.
pub async fn slot_state(conn: &mut Connection, cfg: &SourceConfig) -> Result<Option<bool>> {
    let what = format!("checking replication slot '{}'", cfg.slot);
    let rows = conn
        .query(&format!(
            "SELECT plugin, database, active FROM pg_replication_slots WHERE slot_name = {}",
            quote_literal(&cfg.slot)
        ))
        .await
        .map_err(|e| wire_error(&what, cfg, e))?;
    let Some(r) = rows.first() else { return Ok(None) };
    let get = |i: usize| r.get(i).cloned().flatten().unwrap_or_default();
    if get(0) != "pgoutput" || get(1) != cfg.connect.database {
        return Err(ConnectorError::Config(format!(
            "postgres {}: replication slot '{}' exists but belongs to plugin '{}' in database '{}': name another \
             slot in 'slot.name'",
            cfg.shown,
            cfg.slot,
            get(0),
            get(1)
        )));
    }
    Ok(Some(get(2) == "t"))
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use arrow::datatypes::{Field, Schema, TimeUnit};

    use super::*;
    use crate::options::OptionReader;

    fn cfg() -> SourceConfig {
        let opts = [("connection", "postgres://u:p@h/d"), ("table", "public.users")]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        SourceConfig::pull("users", &mut OptionReader::new("postgres-cdc", opts)).expect("config")
    }

    fn table(identity: u8, pk: &[&str]) -> UpstreamTable {
        let col = |n: &str, t: &str| UpstreamColumn { name: n.into(), type_name: t.into(), sql_type: t.into() };
        UpstreamTable {
            oid: 1,
            columns: vec![col("id", "int8"), col("name", "text"), col("at", "timestamptz")],
            primary_key: pk.iter().map(|s| s.to_string()).collect(),
            replica_identity: identity,
            identity_index: Vec::new(),
        }
    }

    #[test]
    fn declared_columns_are_checked_and_the_key_found() {
        let schema = Arc::new(Schema::new(vec![
            Field::new("id", DataType::Int64, false),
            Field::new("name", DataType::Utf8, true),
            Field::new("at", DataType::Timestamp(TimeUnit::Microsecond, None), true),
        ]));
        assert_eq!(check_columns(&cfg(), &table(b'd', &["id"]), &schema, &[]).expect("ok"), vec!["id"]);
        let e = check_columns(&cfg(), &table(b'd', &[]), &schema, &[]).expect_err("no key");
        assert!(e.to_string().contains("REPLICA IDENTITY FULL"), "{e}");
        assert_eq!(check_columns(&cfg(), &table(b'f', &[]), &schema, &[]).expect("full").len(), 3);
        let e = check_columns(&cfg(), &table(b'd', &["id"]), &schema, &["name".into()]).expect_err("other key");
        assert!(e.to_string().contains("PRIMARY KEY (id)"), "{e}");
        let wrong = Arc::new(Schema::new(vec![Field::new("name", DataType::Int64, true)]));
        let e = check_columns(&cfg(), &table(b'd', &["id"]), &wrong, &[]).expect_err("type");
        assert!(e.to_string().contains("column 'name'") && e.to_string().contains("VARCHAR"), "{e}");
        let missing = Arc::new(Schema::new(vec![Field::new("email", DataType::Utf8, true)]));
        let e = check_columns(&cfg(), &table(b'd', &["id"]), &missing, &[]).expect_err("missing");
        assert!(e.to_string().contains("column 'email'"), "{e}");
        let no_key = Arc::new(Schema::new(vec![Field::new("name", DataType::Utf8, true)]));
        let e = check_columns(&cfg(), &table(b'd', &["id"]), &no_key, &[]).expect_err("key not declared");
        assert!(e.to_string().contains("column 'id'"), "{e}");
        assert!(compatible("int4", &DataType::Int64) && !compatible("int8", &DataType::Int32));
        assert!(compatible("jsonb", &DataType::Utf8) && !compatible("jsonb", &DataType::Int64));
    }
}
