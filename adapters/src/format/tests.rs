use std::sync::Arc;

use arrow::array::{Array, AsArray, Int64Array, RecordBatch, StringArray};
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
            Change::Delete(_) | Change::Clear => Vec::new(),
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
            Change::Clear => "clear".into(),
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
    let mut e = Encoder::new(FormatKind::Json, &s, false, b',').expect("enc");
    let rows = e.encode_rows(&change).expect("rows");
    assert_eq!(rows.len(), 2, "multiplicity 2 is written twice; the retraction is not written");
    assert_eq!(std::str::from_utf8(&rows[0]).expect("utf8"), r#"{"id":1,"name":"a","price":1.5}"#);
    let mut c = Encoder::new(FormatKind::Json, &s, true, b',').expect("enc");
    let rows = c.encode_rows(&change).expect("rows");
    assert_eq!(rows.len(), 3);
    assert_eq!(std::str::from_utf8(&rows[2]).expect("utf8"), r#"{"id":2,"price":2.0,"op":"delete"}"#);
    let mut csv = Encoder::new(FormatKind::Csv, &s, false, b',').expect("enc");
    let mut out = Vec::new();
    csv.encode_into(&csv.prepare(&change).expect("prep"), &mut out, true).expect("csv");
    assert_eq!(String::from_utf8(out).expect("utf8"), "id,name,price\n1,a,1.5\n1,a,1.5\n");
    let rows = csv.encode_rows(&change).expect("rows");
    assert_eq!(rows, vec![b"1,a,1.5".to_vec(), b"1,a,1.5".to_vec()]);
    // A value with a line break stays one (quoted) payload.
    let nl = RecordBatch::try_new(
        s.clone(),
        vec![
            Arc::new(Int64Array::from(vec![1, 2])),
            Arc::new(StringArray::from(vec![Some("x\ny"), Some("z")])),
            Arc::new(arrow::array::Float64Array::from(vec![1.0, 2.0])),
        ],
    )
    .expect("batch");
    let rows = csv.encode_rows(&DiffBatch::inserts(nl)).expect("rows");
    assert_eq!(rows, vec![b"1,\"x\ny\",1.0".to_vec(), b"2,z,2.0".to_vec()]);
    // Round trip: what the JSON encoder writes, the JSON decoder reads.
    let mut d = Decoder::new(&FormatSpec::new(FormatKind::Json), &s, &[]).expect("dec");
    let payloads = e.encode_rows(&DiffBatch::inserts(change.data.clone())).expect("rows");
    let refs: Vec<&[u8]> = payloads.iter().map(Vec::as_slice).collect();
    let (changes, dead) = d.decode(&refs, &pos);
    assert!(dead.is_empty());
    let Change::Insert(b) = &changes[0] else { panic!("insert") };
    assert_eq!(b, &change.data);
}

/// Avro binary encoding written by hand (zigzag varints, length-prefixed strings), independent of
/// the arrow-avro code under test.
mod avro_bytes {
    pub fn long(n: i64) -> Vec<u8> {
        let mut v = ((n << 1) ^ (n >> 63)) as u64;
        let mut out = Vec::new();
        loop {
            let b = (v & 0x7f) as u8;
            v >>= 7;
            if v == 0 {
                out.push(b);
                return out;
            }
            out.push(b | 0x80);
        }
    }

    pub fn string(s: &str) -> Vec<u8> {
        let mut out = long(s.len() as i64);
        out.extend_from_slice(s.as_bytes());
        out
    }

    pub fn double(x: f64) -> Vec<u8> {
        x.to_le_bytes().to_vec()
    }

    pub fn confluent(id: u32, datum: &[u8]) -> Vec<u8> {
        let mut out = vec![0];
        out.extend_from_slice(&id.to_be_bytes());
        out.extend_from_slice(datum);
        out
    }
}

/// Writer schema of the Avro tests: other field order than the source, an `int` read into a
/// BIGINT column, a nullable string, and a field the source does not have.
const TRADE_V1: &str = r#"{"type":"record","name":"Trade","fields":[
    {"name":"price","type":"double"},
    {"name":"id","type":"int"},
    {"name":"name","type":["null","string"]},
    {"name":"extra","type":"string"}]}"#;

/// A later version: `name` dropped, `id` a long.
const TRADE_V2: &str = r#"{"type":"record","name":"Trade","fields":[
    {"name":"id","type":"long"},
    {"name":"price","type":"double"}]}"#;

fn trade_v1(price: f64, id: i64, name: Option<&str>) -> Vec<u8> {
    use avro_bytes::*;
    let mut d = double(price);
    d.extend(long(id));
    match name {
        Some(n) => {
            d.extend(long(1));
            d.extend(string(n));
        }
        None => d.extend(long(0)),
    }
    d.extend(string("ignored"));
    d
}

fn trade_v2(id: i64, price: f64) -> Vec<u8> {
    let mut d = avro_bytes::long(id);
    d.extend(avro_bytes::double(price));
    d
}

fn rows(changes: &[Change]) -> Vec<String> {
    let mut out = Vec::new();
    for c in changes {
        let Change::Insert(b) = c else { panic!("insert") };
        for i in 0..b.num_rows() {
            let name = b.column(1).as_string::<i32>();
            out.push(format!(
                "{}|{}|{}",
                b.column(0).as_primitive::<Int64Type>().value(i),
                if name.is_null(i) { "NULL" } else { name.value(i) },
                b.column(2).as_primitive::<arrow::datatypes::Float64Type>().value(i)
            ));
        }
    }
    out
}

#[test]
fn avro_plain_records_are_matched_by_name_and_bad_ones_dead_lettered() {
    let mut spec = FormatSpec::new(FormatKind::Avro);
    spec.avro_schema = Some(TRADE_V1.to_string());
    let mut d = Decoder::new(&spec, &schema(), &[]).expect("decoder");
    let good1 = trade_v1(1.5, 1, Some("a"));
    let good2 = trade_v1(2.5, 2, None);
    let truncated = good1[..good1.len() - 3].to_vec();
    let mut trailing = trade_v1(3.5, 3, Some("c"));
    trailing.extend_from_slice(&[0, 0, 0, 0, 0, 0]);
    let good3 = trade_v1(4.5, 4, Some("d"));
    let recs: Vec<&[u8]> = vec![&good1, &truncated, &good2, &trailing, b"", &good3];
    let (changes, dead) = d.decode(&recs, &pos);
    assert_eq!(rows(&changes), vec!["1|a|1.5", "2|NULL|2.5", "4|d|4.5"]);
    let bad: Vec<(&str, &str)> = dead.iter().map(|l| (l.position.as_str(), l.reason.as_str())).collect();
    assert_eq!(bad.iter().map(|b| b.0).collect::<Vec<_>>(), vec!["rec:1", "rec:3", "rec:4"], "{bad:?}");
    assert!(bad.iter().all(|b| b.1.starts_with("invalid Avro record")), "{bad:?}");
    assert_eq!(dead[0].payload, truncated);
    // The decoder is usable after failures.
    let (changes, dead) = d.decode(&[&good2], &pos);
    assert!(dead.is_empty());
    assert_eq!(rows(&changes), vec!["2|NULL|2.5"]);
    // A bad writer schema fails at CREATE time.
    let mut bad_spec = FormatSpec::new(FormatKind::Avro);
    bad_spec.avro_schema = Some("{\"type\": \"recrd\"}".into());
    let err = Decoder::new(&bad_spec, &schema(), &[]).err().expect("bad schema");
    assert!(err.to_string().contains("'avro.schema'"), "{err}");
}

#[test]
fn avro_encoder_round_trips_and_frames_registry_records() {
    let s = schema();
    let data = RecordBatch::try_new(
        s.clone(),
        vec![
            Arc::new(Int64Array::from(vec![10, 20])),
            Arc::new(StringArray::from(vec![Some("x"), None])),
            Arc::new(arrow::array::Float64Array::from(vec![0.5, -1.0])),
        ],
    )
    .expect("batch");
    let mut e = Encoder::new(FormatKind::Avro, &s, false, b',').expect("enc");
    let plain = e.encode_rows(&DiffBatch::inserts(data.clone())).expect("rows");
    assert_eq!(plain.len(), 2);
    // The first datum, by hand: long 10, union branch 1 + "x", union branch 1 + double 0.5.
    let mut expected = avro_bytes::long(10);
    expected.extend(avro_bytes::long(1));
    expected.extend(avro_bytes::string("x"));
    expected.extend(avro_bytes::long(1));
    expected.extend(avro_bytes::double(0.5));
    assert_eq!(plain[0], expected);
    let mut d = Decoder::new(&FormatSpec::new(FormatKind::Avro), &s, &[]).expect("dec");
    let refs: Vec<&[u8]> = plain.iter().map(Vec::as_slice).collect();
    let (changes, dead) = d.decode(&refs, &pos);
    assert!(dead.is_empty(), "{dead:?}");
    assert_eq!(rows(&changes), vec!["10|x|0.5", "20|NULL|-1"]);
    let avro = e.avro().expect("avro");
    assert!(avro.avro_schema().contains("\"name\""));
    avro.use_schema_id(7).expect("id");
    let framed = e.encode_rows(&DiffBatch::inserts(data)).expect("rows");
    assert_eq!(framed[0], avro_bytes::confluent(7, &expected));
}

/// A schema registry speaking the Confluent REST protocol on loopback, for the registry client:
/// `GET /schemas/ids/{id}` from a fixed table, `POST /subjects/{s}/versions` answering id 42.
struct Registry {
    url: String,
    gets: Arc<std::sync::atomic::AtomicUsize>,
    posts: Arc<parking_lot::Mutex<Vec<String>>>,
}

fn start_registry(schemas: Vec<(u32, &'static str)>) -> Registry {
    use std::io::{BufRead, BufReader, Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let url = format!("http://{}", listener.local_addr().expect("addr"));
    let gets = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let posts = Arc::new(parking_lot::Mutex::new(Vec::new()));
    let (g, p) = (gets.clone(), posts.clone());
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { return };
            let (schemas, g, p) = (schemas.clone(), g.clone(), p.clone());
            std::thread::spawn(move || {
                let mut reader = BufReader::new(conn.try_clone().expect("clone"));
                loop {
                    let mut line = String::new();
                    if reader.read_line(&mut line).unwrap_or(0) == 0 {
                        break;
                    }
                    let mut len = 0;
                    loop {
                        let mut h = String::new();
                        reader.read_line(&mut h).expect("header");
                        if h.trim().is_empty() {
                            break;
                        }
                        if let Some(v) = h.to_ascii_lowercase().strip_prefix("content-length:") {
                            len = v.trim().parse().expect("length");
                        }
                    }
                    let mut body = vec![0; len];
                    reader.read_exact(&mut body).expect("body");
                    let path = line.split_whitespace().nth(1).unwrap_or("").to_string();
                    let (status, reply) = if let Some(id) = path.strip_prefix("/schemas/ids/") {
                        g.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                        match schemas.iter().find(|(i, _)| i.to_string() == id) {
                            Some((_, s)) => ("200 OK", serde_json::json!({ "schema": s }).to_string()),
                            None => {
                                ("404 Not Found", r#"{"error_code":40403,"message":"Schema not found"}"#.to_string())
                            }
                        }
                    } else if path.starts_with("/subjects/") {
                        p.lock().push(String::from_utf8_lossy(&body).into_owned());
                        ("200 OK", r#"{"id":42}"#.to_string())
                    } else {
                        ("404 Not Found", "{}".to_string())
                    };
                    let resp = format!(
                    "HTTP/1.1 {status}\r\nContent-Type: application/vnd.schemaregistry.v1+json\r\nContent-Length: {}\r\n\r\n{reply}",
                    reply.len()
                );
                    if conn.write_all(resp.as_bytes()).is_err() {
                        break;
                    }
                }
            });
        }
    });
    Registry { url, gets, posts }
}

#[tokio::test]
async fn avro_confluent_records_use_the_registry_once_per_schema_id() {
    let reg = start_registry(vec![(1, TRADE_V1), (2, TRADE_V2)]);
    let mut spec = FormatSpec::new(FormatKind::Avro);
    spec.registry = Some(RegistryConfig { url: reg.url.clone(), username: None, password: None });
    let mut d = Decoder::new(&spec, &schema(), &[]).expect("decoder");
    let a = avro_bytes::confluent(1, &trade_v1(1.0, 1, Some("a")));
    let b = avro_bytes::confluent(2, &trade_v2(2, 2.0));
    let c = avro_bytes::confluent(1, &trade_v1(3.0, 3, Some("c")));
    let unknown = avro_bytes::confluent(99, &trade_v2(4, 4.0));
    let no_magic = trade_v2(5, 5.0);
    let recs: Vec<&[u8]> = vec![&a, &b, &unknown, &c, &no_magic];
    d.prepare(&recs).await.expect("prepare");
    let (changes, dead) = d.decode(&recs, &pos);
    assert_eq!(rows(&changes), vec!["1|a|1", "2|NULL|2", "3|c|3"]);
    let bad: Vec<(&str, &str)> = dead.iter().map(|l| (l.position.as_str(), l.reason.as_str())).collect();
    assert_eq!(bad.len(), 2, "{bad:?}");
    assert_eq!(bad[0].0, "rec:2");
    assert!(bad[0].1.contains("schema id 99 is not in the schema registry"), "{bad:?}");
    assert_eq!(bad[1].0, "rec:4");
    assert!(bad[1].1.contains("Confluent wire format"), "{bad:?}");
    // Cached: decoding the same ids again asks the registry nothing.
    d.prepare(&recs).await.expect("prepare");
    let (changes, _) = d.decode(&recs, &pos);
    assert_eq!(changes.iter().map(Change::num_rows).sum::<usize>(), 3);
    assert_eq!(reg.gets.load(std::sync::atomic::Ordering::SeqCst), 3, "ids 1, 2 and 99, each once");
    // Registering a value schema.
    let mut client = registry::SchemaRegistry::new(RegistryConfig {
        url: format!("{}/", reg.url),
        username: Some("u".into()),
        password: Some("pw".into()),
    })
    .expect("client");
    assert_eq!(client.register("trades-value", TRADE_V2).await.expect("register"), 42);
    let posted: serde_json::Value = serde_json::from_str(&reg.posts.lock()[0]).expect("json body");
    assert_eq!(posted["schema"], TRADE_V2);
}

#[tokio::test]
async fn an_unreachable_registry_is_a_transient_error_naming_it_without_secrets() {
    let port = std::net::TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr").port();
    let mut spec = FormatSpec::new(FormatKind::Avro);
    spec.registry =
        Some(RegistryConfig { url: format!("http://user:hunter2@127.0.0.1:{port}"), username: None, password: None });
    let mut d = Decoder::new(&spec, &schema(), &[]).expect("decoder");
    let a = avro_bytes::confluent(1, &trade_v2(1, 1.0));
    let err = d.prepare(&[&a]).await.expect_err("unreachable");
    assert!(err.is_transient(), "{err}");
    let msg = err.to_string();
    assert!(msg.contains(&format!("127.0.0.1:{port}")) && !msg.contains("hunter2"), "{msg}");
    // Nothing was lost: once the registry is up the same payload decodes (here it stays down,
    // so the record is reported as not looked up rather than dropped).
    let (_, dead) = d.decode(&[&a], &pos);
    assert_eq!(dead.len(), 1);
}
