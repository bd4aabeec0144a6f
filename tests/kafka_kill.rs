//! Exactly-once from Kafka to Kafka under SIGKILL: a producer keeps writing numbered events into
//! a 4-partition topic while the `laminardb run` command line (Kafka source → a copy of every
//! event and a per-key aggregate → two exactly-once Kafka sinks, checkpoints every 150 ms) is
//! killed at random moments and restarted on the same directory, again and again.
//!
//! Both output topics are then read from the start, deduplicating nothing, as a read_committed
//! consumer sees them: every event id must appear exactly once, each per-key upsert at most once
//! per epoch (the `laminar.epoch` header: no epoch was committed twice), and the last upsert per
//! key must equal the counts computed from the input. The committed view comes from the raw log
//! and its transaction markers (the test broker shows aborted transactions to read_committed
//! consumers); on a broker that hides them (Apache Kafka: set `LAMINAR_TEST_KAFKA_BOOTSTRAP`),
//! a plain read_committed consumer must see exactly the same.

mod common;

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::kafka::{
    bootstrap, broker_hides_aborted, committed_messages, consume, create_topic, produce, unique, Consumed, Out,
};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

const EVENTS: u64 = 120_000;
const KEYS: u64 = 50;

fn pipeline(input: &str, copy: &str, totals: &str, tag: &str) -> String {
    let b = bootstrap();
    format!(
        "CREATE SOURCE ev (id BIGINT, k BIGINT, v BIGINT) WITH (connector = 'kafka', 'bootstrap.servers' = '{b}',
           'topic' = '{input}', 'group.id' = 'kill-{tag}', 'auto.offset.reset' = 'earliest', 'batch_size' = '2000');
         CREATE SINK copy AS SELECT id, k, v FROM ev WITH (connector = 'kafka', 'bootstrap.servers' = '{b}',
           'topic' = '{copy}', 'delivery.guarantee' = 'exactly-once', 'transactional.id' = 'copy-{tag}');
         CREATE SINK totals AS SELECT k, COUNT(*) AS n, SUM(v) AS s FROM ev GROUP BY k WITH (connector = 'kafka',
           'bootstrap.servers' = '{b}', 'topic' = '{totals}', 'partitioner' = 'key-hash',
           'delivery.guarantee' = 'exactly-once', 'transactional.id' = 'totals-{tag}');"
    )
}

fn run_cli(db: &Path, sql: &Path) -> Child {
    Command::new(env!("CARGO_BIN_EXE_laminardb"))
        .args(["run", &sql.display().to_string(), "--db", &db.display().to_string(), "--quiet"])
        .args(["--checkpoint-interval", "150", "--workers", "2"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn laminardb")
}

#[test]
fn exactly_once_kafka_sinks_survive_repeated_kills() {
    let tag = unique("eos");
    let (input, copy, totals) = (format!("{tag}-in"), format!("{tag}-copy"), format!("{tag}-totals"));
    create_topic(&input, 4);
    create_topic(&copy, 2);
    create_topic(&totals, 2);
    let dir = tempfile::tempdir().expect("dir");
    let sql = dir.path().join("pipeline.sql");
    std::fs::write(&sql, pipeline(&input, &copy, &totals, &tag)).expect("sql");

    // Events arrive while the pipeline crashes: ~10k/s over ~12 s.
    let done = Arc::new(AtomicBool::new(false));
    let producer = {
        let (input, done) = (input.clone(), done.clone());
        std::thread::spawn(move || {
            let per_tick = 1_000;
            for start in (0..EVENTS).step_by(per_tick) {
                let msgs: Vec<String> = (start..(start + per_tick as u64).min(EVENTS))
                    .map(|id| format!(r#"{{"id": {id}, "k": {}, "v": {}}}"#, id % KEYS, id % 7))
                    .collect();
                let out: Vec<Out<'_>> =
                    msgs.iter().enumerate().map(|(i, m)| (Some((i % 4) as i32), None, Some(m.as_bytes()))).collect();
                produce(&input, &out);
                std::thread::sleep(Duration::from_millis(100));
            }
            done.store(true, Ordering::Release);
        })
    };

    let mut rng = StdRng::seed_from_u64(11);
    let mut kills = 0;
    while kills < 15 || !done.load(Ordering::Acquire) {
        let mut child = run_cli(&dir.path().join("db"), &sql);
        std::thread::sleep(Duration::from_millis(rng.random_range(400..1500)));
        if let Some(status) = child.try_wait().expect("poll") {
            panic!("the pipeline exited by itself ({status}) after {kills} kills");
        }
        child.kill().expect("kill -9");
        child.wait().expect("reap");
        kills += 1;
        assert!(kills < 100, "the producer never finished");
    }
    producer.join().expect("producer");

    // The last run catches up; everything committed is read back.
    let mut child = run_cli(&dir.path().join("db"), &sql);
    let deadline = Instant::now() + Duration::from_secs(120);
    while Instant::now() < deadline {
        if committed_messages(&copy).len() >= EVENTS as usize {
            break;
        }
        std::thread::sleep(Duration::from_secs(1));
        assert!(child.try_wait().expect("poll").is_none(), "the last run exited");
    }
    // Give the final upserts time to commit, then stop for good.
    std::thread::sleep(Duration::from_secs(2));
    child.kill().expect("kill");
    child.wait().expect("reap");
    let copied = committed_messages(&copy);
    check_copy(&copied, kills);
    check_totals(&committed_messages(&totals), kills);
    if broker_hides_aborted() {
        check_copy(&consume(&copy, usize::MAX, Duration::from_secs(5), true), kills);
        check_totals(&consume(&totals, usize::MAX, Duration::from_secs(5), true), kills);
    }
}

fn check_copy(copied: &[Consumed], kills: usize) {
    let mut seen: HashMap<u64, usize> = HashMap::new();
    for m in copied {
        let v: serde_json::Value = serde_json::from_str(m.value.as_deref().expect("value")).expect("json");
        *seen.entry(v["id"].as_u64().expect("id")).or_default() += 1;
        assert!(m.epoch.is_some(), "every message names its epoch");
    }
    let dups: Vec<_> = seen.iter().filter(|(_, &n)| n > 1).take(5).collect();
    assert!(dups.is_empty(), "after {kills} kills, ids written more than once: {dups:?}");
    let missing: Vec<u64> = (0..EVENTS).filter(|i| !seen.contains_key(i)).take(5).collect();
    assert!(missing.is_empty(), "after {kills} kills, ids lost: {missing:?} ({} of {EVENTS} seen)", seen.len());
    assert_eq!(copied.len() as u64, EVENTS);
}

fn check_totals(ups: &[Consumed], kills: usize) {
    let mut per_epoch: HashMap<(u64, String), usize> = HashMap::new();
    let mut latest: BTreeMap<(i32, String), (i64, serde_json::Value)> = BTreeMap::new();
    for m in ups {
        let key = m.key.clone().expect("keyed");
        *per_epoch.entry((m.epoch.expect("epoch"), key.clone())).or_default() += 1;
        let value = m.value.as_deref().map_or(serde_json::Value::Null, |v| serde_json::from_str(v).expect("json"));
        let slot = latest.entry((m.partition, key)).or_insert((-1, serde_json::Value::Null));
        if m.offset > slot.0 {
            *slot = (m.offset, value);
        }
    }
    let twice: Vec<_> = per_epoch.iter().filter(|(_, &n)| n > 1).take(5).collect();
    assert!(twice.is_empty(), "an epoch's upserts were committed twice: {twice:?}");
    let mut want: BTreeMap<u64, (u64, u64)> = BTreeMap::new();
    for id in 0..EVENTS {
        let e = want.entry(id % KEYS).or_default();
        e.0 += 1;
        e.1 += id % 7;
    }
    let got: BTreeMap<u64, (u64, u64)> = latest
        .into_values()
        .map(|(_, v)| (v["k"].as_u64().expect("k"), (v["n"].as_u64().expect("n"), v["s"].as_u64().expect("s"))))
        .collect();
    assert_eq!(got, want, "final per-key totals after {kills} kills");
}
