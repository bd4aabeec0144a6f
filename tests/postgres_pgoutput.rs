//! The pgoutput decoder against what a real Postgres (started by `scripts/services.sh`; its URI
//! in `LAMINAR_TEST_POSTGRES_URI`) writes: a logical replication slot with the `pgoutput` plugin
//! is read through `pg_logical_slot_get_binary_changes`, and every message of a series of
//! transactions (inserts of every common column type, an update, a REPLICA IDENTITY FULL update,
//! a delete, a truncate) is decoded and compared; the inserted values convert to Arrow types.

use std::process::Command;

use arrow::datatypes::{DataType, TimeUnit};
use arrow::util::display::{ArrayFormatter, FormatOptions};
use laminar_adapters::postgres::pgoutput::{decode, Lsn, Message, OldImage, Value};
use laminar_adapters::postgres::values;

fn uri() -> String {
    std::env::var("LAMINAR_TEST_POSTGRES_URI").unwrap_or_else(|_| {
        panic!("LAMINAR_TEST_POSTGRES_URI is not set: start Postgres with `eval \"$(scripts/services.sh start)\"`")
    })
}

/// Runs SQL through psql, each `;`-ended line as its own transaction; returns the unaligned,
/// tuples-only output.
fn psql(sql: &str) -> String {
    let mut cmd = Command::new("psql");
    cmd.args([&uri(), "-X", "-q", "-tA", "-v", "ON_ERROR_STOP=1"]);
    for statement in sql.lines().map(str::trim).filter(|l| !l.is_empty()) {
        cmd.args(["-c", statement]);
    }
    let out = cmd.output().expect("run psql");
    assert!(out.status.success(), "{sql}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn hex(s: &str) -> Vec<u8> {
    (0..s.len()).step_by(2).map(|i| u8::from_str_radix(&s[i..i + 2], 16).expect("hex")).collect()
}

fn text<'a>(v: &'a Value<'a>) -> &'a str {
    match v {
        Value::Text(t) => t,
        other => panic!("not a text value: {other:?}"),
    }
}

#[test]
fn a_real_servers_pgoutput_stream_decodes_message_by_message() {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.subsec_nanos());
    let tag = format!("{}_{nanos}", std::process::id());
    let (table, publication, slot) = (format!("items_{tag}"), format!("pub_{tag}"), format!("slot_{tag}"));
    psql(&format!(
        "CREATE TABLE {table} (id BIGINT PRIMARY KEY, name TEXT, qty INT, price NUMERIC(10,2), ok BOOLEAN, \
         day DATE, at TIMESTAMPTZ, doc JSONB, raw BYTEA);
         CREATE PUBLICATION {publication} FOR TABLE {table};"
    ));
    psql(&format!("SELECT pg_create_logical_replication_slot('{slot}', 'pgoutput')"));
    psql(&format!(
        "INSERT INTO {table} VALUES (1, 'ann', 3, 12.50, true, '2026-12-06', '2026-12-06 10:00:00+00', \
         '{{\"a\": [1, 2]}}', '\\x00ff'), (2, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL);
         UPDATE {table} SET qty = 4 WHERE id = 1;
         ALTER TABLE {table} REPLICA IDENTITY FULL;
         UPDATE {table} SET name = 'bob' WHERE id = 2;
         DELETE FROM {table} WHERE id = 1;
         TRUNCATE {table};"
    ));
    let rows = psql(&format!(
        "SELECT lsn, encode(data, 'hex') FROM pg_logical_slot_get_binary_changes('{slot}', NULL, NULL, \
         'proto_version', '1', 'publication_names', '{publication}')"
    ));
    let raw: Vec<(Lsn, Vec<u8>)> = rows
        .lines()
        .filter(|l| !l.is_empty())
        .map(|l| {
            let (lsn, data) = l.split_once('|').expect("lsn|data");
            (lsn.parse().expect("lsn"), hex(data))
        })
        .collect();
    let msgs: Vec<Message<'_>> = raw.iter().map(|(_, d)| decode(d).expect("decodes")).collect();
    psql(&format!("SELECT pg_drop_replication_slot('{slot}'); DROP PUBLICATION {publication}; DROP TABLE {table};"));

    // Transactions: every change inside a Begin … Commit, commits in LSN order.
    let kinds: String = msgs
        .iter()
        .map(|m| match m {
            Message::Begin { .. } => 'B',
            Message::Commit { .. } => 'C',
            Message::Relation(_) => 'R',
            Message::Insert { .. } => 'I',
            Message::Update { .. } => 'U',
            Message::Delete { .. } => 'D',
            Message::Truncate { .. } => 'T',
            _ => '?',
        })
        .collect();
    // The ALTER TABLE makes the server send the relation again before the next changes.
    assert_eq!(kinds, "BRIICBUCBRUCBDCBRTC", "{msgs:#?}");
    let commits: Vec<Lsn> = msgs
        .iter()
        .filter_map(|m| if let Message::Commit { end_lsn, .. } = m { Some(*end_lsn) } else { None })
        .collect();
    assert!(commits.windows(2).all(|w| w[0] < w[1]), "{commits:?}");

    let Message::Relation(rel) = &msgs[1] else { panic!() };
    assert_eq!((rel.namespace.as_str(), rel.name.as_str(), rel.replica_identity), ("public", table.as_str(), b'd'));
    let names: Vec<&str> = rel.columns.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(names, ["id", "name", "qty", "price", "ok", "day", "at", "doc", "raw"]);
    let oids: Vec<u32> = rel.columns.iter().map(|c| c.type_oid).collect();
    assert_eq!(oids, [20, 25, 23, 1700, 16, 1082, 1184, 3802, 17]);
    assert!(rel.columns[0].key && rel.columns[1..].iter().all(|c| !c.key));
    // numeric(10,2): typmod = (precision << 16 | scale) + 4.
    assert_eq!(rel.columns[3].type_modifier, (10 << 16 | 2) + 4);

    let Message::Insert { relation, new } = &msgs[2] else { panic!() };
    assert_eq!(*relation, rel.oid);
    let values: Vec<&str> = new.iter().map(text).collect();
    assert_eq!(
        values,
        ["1", "ann", "3", "12.50", "t", "2026-12-06", "2026-12-06 10:00:00+00", "{\"a\": [1, 2]}", "\\x00ff"]
    );
    // Each value converts to the Arrow type a source would declare for its column.
    let types = [
        DataType::Int64,
        DataType::Utf8,
        DataType::Int32,
        DataType::Decimal128(10, 2),
        DataType::Boolean,
        DataType::Date32,
        DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
        DataType::Utf8,
        DataType::Binary,
    ];
    let shown: Vec<String> = new
        .iter()
        .zip(&rel.columns)
        .zip(&types)
        .map(|((v, c), t)| {
            let arr = values::column(&c.name, &[Some(text(v))], t).unwrap_or_else(|e| panic!("{e}"));
            let opts = FormatOptions::default();
            let shown = ArrayFormatter::try_new(arr.as_ref(), &opts).expect("fmt").value(0).to_string();
            shown
        })
        .collect();
    assert_eq!(
        shown,
        ["1", "ann", "3", "12.50", "true", "2026-12-06", "2026-12-06T10:00:00Z", "{\"a\": [1, 2]}", "00ff"]
    );
    let Message::Insert { new, .. } = &msgs[3] else { panic!() };
    assert_eq!(text(&new[0]), "2");
    assert!(new[1..].iter().all(|v| *v == Value::Null));

    // Default replica identity, key unchanged: no old image.
    let Message::Update { old, new, .. } = &msgs[6] else { panic!() };
    assert!(old.is_none());
    assert_eq!((text(&new[0]), text(&new[2])), ("1", "4"));
    // REPLICA IDENTITY FULL: the relation comes again, and the update carries the old row.
    let Message::Relation(full) = &msgs[9] else { panic!() };
    assert_eq!(full.replica_identity, b'f');
    let Message::Update { old: Some(OldImage::Full(old)), new, .. } = &msgs[10] else { panic!("{:?}", msgs[10]) };
    assert_eq!((text(&old[0]), &old[1]), ("2", &Value::Null));
    assert_eq!(text(&new[1]), "bob");
    let Message::Delete { old: OldImage::Full(old), .. } = &msgs[13] else { panic!("{:?}", msgs[13]) };
    assert_eq!((text(&old[0]), text(&old[1])), ("1", "ann"));
    let Message::Truncate { relations, .. } = &msgs[17] else { panic!() };
    assert_eq!(relations, &vec![rel.oid]);
}
