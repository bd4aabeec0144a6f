use std::sync::Arc;

use arrow::array::{AsArray, Int64Array, RecordBatch, StringArray};
use arrow::datatypes::{DataType, Field, Int64Type, Schema, SchemaRef};
use laminar_dataflow::batch::DiffBatch;

use super::*;
use crate::connector::Change;

fn schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("id", DataType::Int64, false),
        Field::new("name", DataType::Utf8, true),
        Field::new("price", DataType::Float64, true),
    ]))
}

fn pos(i: usize) -> String {
    format!("rec:{i}")
}

fn inserted(changes: &[Change]) -> Vec<i64> {
    changes
        .iter()
        .flat_map(|c| match c {
            Change::Insert(b) => b.column(0).as_primitive::<Int64Type>().values().to_vec(),
            Change::Delete(_) => Vec::new(),
        })
        .collect()
}

#[test]
fn json_good_and_malformed_records() {
    let mut d = Decoder::new(&FormatSpec::new(FormatKind::Json), &schema(), &[]).expect("decoder");
    let recs: Vec<&[u8]> = vec![
        br#"{"id": 1, "name": "a", "price": 1.5}"#,
        br#"{"id": 2, "name": "b", "price": 2, "extra": true}"#,
        br#"{"id": "3", "name": "c"}"#,
        br#"{"id": 4, "name": "d""#,
        br#"{"name": "no id"}"#,
        br#"{"id": "x"}"#,
        b"",
        br#"{"id": 8}"#,
    ];
    let (changes, dead) = d.decode(&recs, &pos);
    assert_eq!(inserted(&changes), vec![1, 2, 3, 8]);
    let bad: Vec<&str> = dead.iter().map(|l| l.position.as_str()).collect();
    assert_eq!(bad, vec!["rec:3", "rec:4", "rec:5", "rec:6"]);
    assert_eq!(dead[0].payload, recs[3]);
    assert!(dead.iter().all(|l| !l.reason.is_empty()));
}

#[test]
fn csv_positional_and_by_header() {
    let mut d = Decoder::new(&FormatSpec::new(FormatKind::Csv), &schema(), &[]).expect("decoder");
    let (changes, dead) = d.decode(&[b"1,a,1.5", b"2,,", b"x,b,1", b"3,c,2.5,9"], &pos);
    assert_eq!(inserted(&changes), vec![1, 2]);
    assert_eq!(dead.len(), 2);
    d.set_csv_header(Some(vec!["price".into(), "ID".into(), "other".into()])).expect("header");
    let (changes, dead) = d.decode(&[b"9.5,7,zzz", b"1.0,8,q"], &pos);
    assert!(dead.is_empty(), "{dead:?}");
    let Change::Insert(b) = &changes[0] else { panic!("insert") };
    assert_eq!(b.column(0).as_primitive::<Int64Type>().values().to_vec(), vec![7, 8]);
    assert_eq!(b.column(1).null_count(), 2);
    assert!(d.set_csv_header(Some(vec!["name".into()])).is_err(), "id is NOT NULL and missing");
}

#[test]
fn raw_needs_one_column_and_valid_utf8() {
    assert!(Decoder::new(&FormatSpec::new(FormatKind::Raw), &schema(), &[]).is_err());
    let one = Arc::new(Schema::new(vec![Field::new("line", DataType::Utf8, true)]));
    let mut d = Decoder::new(&FormatSpec::new(FormatKind::Raw), &one, &[]).expect("decoder");
    let (changes, dead) = d.decode(&[b"hello", b"\xff\xfe", b"world"], &pos);
    let Change::Insert(b) = &changes[0] else { panic!("insert") };
    assert_eq!(b.column(0).as_string::<i32>().iter().flatten().collect::<Vec<_>>(), vec!["hello", "world"]);
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].position, "rec:1");
}

#[test]
fn debezium_envelopes_become_inserts_and_deletes() {
    assert!(Decoder::new(&FormatSpec::new(FormatKind::Debezium), &schema(), &[]).is_err(), "needs a key");
    let mut d = Decoder::new(&FormatSpec::new(FormatKind::Debezium), &schema(), &["id".to_string()]).expect("dec");
    let recs: Vec<&[u8]> = vec![
        br#"{"before": null, "after": {"id": 1, "name": "a"}, "op": "c"}"#,
        br#"{"schema": {}, "payload": {"before": null, "after": {"id": 2, "name": "b"}, "op": "r"}}"#,
        br#"{"before": {"id": 1}, "after": {"id": 1, "name": "a2"}, "op": "u"}"#,
        b"",
        br#"{"before": {"id": 2, "name": "b"}, "after": null, "op": "d"}"#,
        br#"{"before": null, "after": {"id": 5}, "op": "x"}"#,
        br#"{"after": {"id": 6}}"#,
        b"{broken",
    ];
    let (changes, dead) = d.decode(&recs, &pos);
    let kinds: Vec<String> = changes
        .iter()
        .map(|c| match c {
            Change::Insert(b) => format!("+{}", b.num_rows()),
            Change::Delete(b) => format!("-{}", b.num_rows()),
        })
        .collect();
    assert_eq!(kinds, vec!["+2", "-1", "+1", "-1"]);
    let Change::Delete(k) = &changes[3] else { panic!("delete") };
    assert_eq!(k.column(0).as_primitive::<Int64Type>().value(0), 2);
    let bad: Vec<&str> = dead.iter().map(|l| l.position.as_str()).collect();
    assert_eq!(bad, vec!["rec:5", "rec:6", "rec:7"]);
}

#[test]
fn encoders_write_rows_and_changelogs() {
    let s = schema();
    let data = RecordBatch::try_new(
        s.clone(),
        vec![
            Arc::new(Int64Array::from(vec![1, 2])),
            Arc::new(StringArray::from(vec![Some("a"), None])),
            Arc::new(arrow::array::Float64Array::from(vec![1.5, 2.0])),
        ],
    )
    .expect("batch");
    let change = DiffBatch::with_diffs(data, Int64Array::from(vec![2, -1])).expect("diff");
    let e = Encoder::new(FormatKind::Json, &s, false, b',').expect("enc");
    let rows = e.encode_rows(&change).expect("rows");
    assert_eq!(rows.len(), 2, "multiplicity 2 is written twice; the retraction is not written");
    assert_eq!(std::str::from_utf8(&rows[0]).expect("utf8"), r#"{"id":1,"name":"a","price":1.5}"#);
    let c = Encoder::new(FormatKind::Json, &s, true, b',').expect("enc");
    let rows = c.encode_rows(&change).expect("rows");
    assert_eq!(rows.len(), 3);
    assert_eq!(std::str::from_utf8(&rows[2]).expect("utf8"), r#"{"id":2,"price":2.0,"op":"delete"}"#);
    let csv = Encoder::new(FormatKind::Csv, &s, false, b',').expect("enc");
    let mut out = Vec::new();
    csv.encode_into(&csv.prepare(&change).expect("prep"), &mut out, true).expect("csv");
    assert_eq!(String::from_utf8(out).expect("utf8"), "id,name,price\n1,a,1.5\n1,a,1.5\n");
    // Round trip: what the JSON encoder writes, the JSON decoder reads.
    let mut d = Decoder::new(&FormatSpec::new(FormatKind::Json), &s, &[]).expect("dec");
    let payloads = e.encode_rows(&DiffBatch::inserts(change.data.clone())).expect("rows");
    let refs: Vec<&[u8]> = payloads.iter().map(Vec::as_slice).collect();
    let (changes, dead) = d.decode(&refs, &pos);
    assert!(dead.is_empty());
    let Change::Insert(b) = &changes[0] else { panic!("insert") };
    assert_eq!(b, &change.data);
}
