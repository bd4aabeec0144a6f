//! The WebSocket source and sink against WebSocket peers on loopback (tokio-tungstenite servers
//! and clients run by the test): client-mode source with auth, reconnection after the server
//! restarts and dead letters; server-mode source with ten concurrent senders; server-mode sink
//! fan-out with a slow client under both policies, snapshots and the replay buffer for late
//! joiners; client-mode sink across a peer outage; option errors.

mod common;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use laminardb::{Database, LaminarError};
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::tungstenite::handshake::server::{Request, Response};
use tokio_tungstenite::tungstenite::Message;

fn wait_for(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime")
}

fn count(db: &Database, sql: &str) -> i64 {
    let r = db.query(sql).unwrap_or_else(|e| panic!("{sql}: {e}"));
    let b = &r.batches[0];
    arrow::array::AsArray::as_primitive::<arrow::datatypes::Int64Type>(b.column(0)).value(0)
}

/// A WebSocket server that sends `messages` to the first client and then closes; it records
/// the client's Authorization header.
async fn feed_once(listener: &TcpListener, messages: Vec<String>, auth: Arc<Mutex<Vec<String>>>) {
    let (tcp, _) = listener.accept().await.expect("accept");
    let seen = auth.clone();
    #[allow(clippy::result_large_err)] // the handshake callback's signature is the library's
    let callback = move |req: &Request, resp: Response| {
        if let Some(v) = req.headers().get("authorization") {
            seen.lock().expect("lock").push(v.to_str().unwrap_or_default().to_string());
        }
        Ok(resp)
    };
    let mut ws = tokio_tungstenite::accept_hdr_async(tcp, callback).await.expect("handshake");
    for m in messages {
        ws.feed(Message::text(m)).await.expect("send");
    }
    ws.flush().await.expect("flush");
    // Closing abruptly (no close handshake) is what a crashed server looks like.
    drop(ws);
}

#[test]
fn client_source_reads_every_message_and_reconnects_after_the_server_restarts() {
    let rt = runtime();
    let port = common::free_port();
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().expect("addr");
    let auth = Arc::new(Mutex::new(Vec::new()));
    // First life of the server: 1,000 ticks, some as JSON lines, some as an array, one broken.
    let mut first: Vec<String> = (0..900).map(|i| format!(r#"{{"sym":"S{}","px":{i}}}"#, i % 10)).collect();
    first.push((900..950).map(|i| format!(r#"{{"sym":"S{}","px":{i}}}"#, i % 10)).collect::<Vec<_>>().join("\n"));
    first.push(format!(
        "[{}]",
        (950..1000).map(|i| format!(r#"{{"sym":"S{}","px":{i}}}"#, i % 10)).collect::<Vec<_>>().join(",")
    ));
    first.push("{not json".to_string());
    let second: Vec<String> = (1000..2000).map(|i| format!(r#"{{"sym":"S{}","px":{i}}}"#, i % 10)).collect();

    let listener = rt.block_on(TcpListener::bind(addr)).expect("bind");
    let db = common::db_with_workers(2);
    db.execute(&format!(
        "CREATE SOURCE ticks (sym VARCHAR, px BIGINT) WITH (connector = 'websocket', 'url' = 'ws://{addr}/feed', \
         'auth' = 'Bearer s3cret', 'reconnect.initial_delay_ms' = '100', 'reconnect.max_delay_ms' = '400')"
    ))
    .expect("create");
    db.execute("CREATE STREAM per_sym AS SELECT sym, COUNT(*) AS n, SUM(px) AS total FROM ticks GROUP BY sym")
        .expect("stream");
    let a2 = auth.clone();
    let server = rt.spawn(async move {
        feed_once(&listener, first, a2).await;
        listener
    });
    db.start().expect("start");
    let listener = rt.block_on(server).expect("first life");
    wait_for("the first 1,000 rows", Duration::from_secs(20), || {
        db.source_metrics("ticks").is_some_and(|m| m.total_events == 1000)
    });
    // The server went away: the source retries, then reconnects to the restarted server.
    drop(listener);
    wait_for("a reconnect attempt", Duration::from_secs(10), || {
        db.source_metrics("ticks").is_some_and(|m| m.retries >= 1)
    });
    let listener = rt.block_on(TcpListener::bind(addr)).expect("bind again");
    let a2 = auth.clone();
    rt.block_on(async move { feed_once(&listener, second, a2).await });
    wait_for("all 2,000 rows", Duration::from_secs(20), || {
        db.source_metrics("ticks").is_some_and(|m| m.total_events == 2000)
    });
    db.flush().expect("flush");
    assert_eq!(count(&db, "SELECT SUM(n) FROM per_sym"), 2000);
    assert_eq!(count(&db, "SELECT SUM(total) FROM per_sym"), (0..2000).sum::<i64>());
    let m = db.source_metrics("ticks").expect("metrics");
    assert_eq!(m.dead_letters, 1, "the broken message is a dead letter");
    assert!(m.details.get("reconnects").copied().unwrap_or(0) >= 1, "{:?}", m.details);
    let errors = common::rows(&db.query("SELECT position FROM ticks_errors").expect("errors").batches);
    assert_eq!(errors.len(), 1);
    assert!(errors[0].starts_with(&format!("ws://{addr}/feed#")), "{errors:?}");
    let seen = auth.lock().expect("lock").clone();
    assert!(seen.len() >= 2 && seen.iter().all(|a| a == "Bearer s3cret"), "{seen:?}");
    // The secret is not shown back.
    let shown = common::sorted_query(&db, "SHOW CREATE SOURCE ticks").join(" ");
    assert!(!shown.contains("s3cret"), "{shown}");
    db.shutdown().expect("shutdown");
}

#[test]
fn server_source_takes_ten_concurrent_senders() {
    let rt = runtime();
    let port = common::free_port();
    let db = common::db_with_workers(2);
    db.execute(&format!(
        "CREATE SOURCE readings (device VARCHAR, v BIGINT) WITH (connector = 'websocket', 'mode' = 'server', \
         'bind_address' = '127.0.0.1:{port}')"
    ))
    .expect("create");
    db.execute(
        "CREATE STREAM per_device AS SELECT device, COUNT(*) AS n, SUM(v) AS total FROM readings GROUP BY device",
    )
    .expect("stream");
    db.start().expect("start");
    let senders: Vec<_> = (0..10)
        .map(|d| {
            rt.spawn(async move {
                let (mut ws, _) =
                    tokio_tungstenite::connect_async(format!("ws://127.0.0.1:{port}/")).await.expect("connect");
                for i in 0..500 {
                    ws.feed(Message::text(format!(r#"{{"device":"d{d}","v":{i}}}"#))).await.expect("send");
                }
                ws.flush().await.expect("flush");
                ws.close(None).await.expect("close");
            })
        })
        .collect();
    for s in senders {
        rt.block_on(s).expect("sender");
    }
    wait_for("5,000 rows", Duration::from_secs(20), || {
        db.source_metrics("readings").is_some_and(|m| m.total_events == 5000)
    });
    db.flush().expect("flush");
    let rows = common::sorted_query(&db, "SELECT device, n, total FROM per_device");
    let expected: Vec<String> = {
        let mut e: Vec<String> = (0..10).map(|d| format!("d{d}|500|{}", (0..500).sum::<i64>())).collect();
        e.sort();
        e
    };
    assert_eq!(rows, expected);
    let m = db.source_metrics("readings").expect("metrics");
    assert_eq!(m.details.get("connections").copied(), Some(10), "{:?}", m.details);
    assert_eq!(m.details.get("port").copied(), Some(i64::from(port)));
    db.shutdown().expect("shutdown");
}

/// What a sink client saw: the live table built from the change messages, and the count.
#[derive(Default)]
struct Seen {
    table: BTreeMap<String, serde_json::Value>,
    messages: usize,
}

/// Applies one change message; `strict`: the message must fit the table (a client that may
/// miss messages is not strict).
fn apply(seen: &Mutex<Seen>, text: &str, strict: bool) {
    let v: serde_json::Value = serde_json::from_str(text).expect("json");
    let mut s = seen.lock().expect("lock");
    s.messages += 1;
    let key = v["key"].to_string();
    let op = v["op"].as_str().unwrap_or_default().to_string();
    let known = s.table.contains_key(&key);
    match op.as_str() {
        "insert" | "update" => {
            assert!(
                !strict || known == (op == "update"),
                "{op} of a key {}: {text}",
                if known { "present" } else { "unknown" }
            );
            s.table.insert(key, v["row"].clone());
        }
        "delete" => {
            assert!(s.table.remove(&key).is_some() || !strict, "delete of an unknown key: {text}");
        }
        other => panic!("unexpected op {other:?} in {text}"),
    }
}

/// A client of the sink that applies every message; `delay` per message makes it slow.
/// A slow client also shrinks its socket's receive buffer, so that the kernel does not absorb
/// what it does not read.
async fn sink_client(port: u16, seen: Arc<Mutex<Seen>>, delay: Duration, closed: Arc<AtomicUsize>) {
    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
    if !delay.is_zero() {
        socket.set_recv_buffer_size(4096).expect("small receive buffer");
    }
    let tcp = socket.connect(format!("127.0.0.1:{port}").parse().expect("addr")).await.expect("tcp");
    let (mut ws, _) = tokio_tungstenite::client_async(format!("ws://127.0.0.1:{port}/"), tcp).await.expect("connect");
    while let Some(m) = ws.next().await {
        match m {
            Ok(Message::Text(t)) => {
                apply(&seen, t.as_str(), delay.is_zero());
                if !delay.is_zero() {
                    tokio::time::sleep(delay).await;
                }
            }
            Ok(Message::Close(_)) | Err(_) => break,
            Ok(_) => {}
        }
    }
    closed.fetch_add(1, Ordering::SeqCst);
}

fn expected_table(db: &Database) -> BTreeMap<String, serde_json::Value> {
    let r = db.query("SELECT sym, n, total FROM per_sym").expect("query");
    let mut out = BTreeMap::new();
    for row in common::rows(&r.batches) {
        let f: Vec<&str> = row.split('|').collect();
        let key = serde_json::json!({ "sym": f[0] }).to_string();
        out.insert(key, serde_json::json!({ "sym": f[0], "n": f[1].parse::<i64>().expect("n"), "total": f[2].parse::<i64>().expect("total") }));
    }
    out
}

fn fan_out(policy: &str) {
    let rt = runtime();
    let port = common::free_port();
    let db = common::db_with_workers(2);
    db.execute("CREATE SOURCE trades (sym VARCHAR, qty BIGINT)").expect("source");
    db.execute("CREATE STREAM per_sym AS SELECT sym, COUNT(*) AS n, SUM(qty) AS total FROM trades GROUP BY sym")
        .expect("stream");
    db.execute(&format!(
        "CREATE SINK live AS SELECT * FROM per_sym WITH (connector = 'websocket', 'bind_address' = '127.0.0.1:{port}', \
         'slow_client_policy' = '{policy}', 'client_queue_size' = '256')"
    ))
    .expect("sink");
    db.start().expect("start");
    let closed = Arc::new(AtomicUsize::new(0));
    let fast: Vec<Arc<Mutex<Seen>>> = (0..2).map(|_| Arc::new(Mutex::new(Seen::default()))).collect();
    let slow = Arc::new(Mutex::new(Seen::default()));
    for f in &fast {
        rt.spawn(sink_client(port, f.clone(), Duration::ZERO, closed.clone()));
    }
    rt.spawn(sink_client(port, slow.clone(), Duration::from_millis(20), closed.clone()));
    wait_for("three clients", Duration::from_secs(10), || {
        db.sink_metrics("live").and_then(|m| m.details.get("clients").copied()) == Some(3)
    });
    // 200 epochs of changes to 50 keys: far more messages than the slow client can take (50 per
    // second), while a queue of 256 holds several epochs for the others.
    let started = Instant::now();
    let pad = "x".repeat(400);
    for round in 0..200 {
        // Long keys (~900-byte messages): more than the kernel's socket buffers absorb.
        let rows: Vec<String> = (0..50).map(|k| format!(r#"{{"sym":"K{k}-{pad}","qty":{}}}"#, round + k)).collect();
        db.insert_json("trades", &format!("[{}]", rows.join(","))).expect("insert");
        db.flush().expect("flush");
    }
    let pipeline_time = started.elapsed();
    let expected = expected_table(&db);
    assert_eq!(expected.len(), 50);
    wait_for("fast clients to hold the final table", Duration::from_secs(20), || {
        fast.iter().all(|f| f.lock().expect("lock").table == expected)
    });
    let m = db.sink_metrics("live").expect("metrics");
    match policy {
        "drop" => {
            assert!(m.details.get("slow_client_drops").copied().unwrap_or(0) > 0, "{:?}", m.details);
            assert_eq!(closed.load(Ordering::SeqCst), 0, "nobody was disconnected");
            assert!(slow.lock().expect("lock").messages < fast[0].lock().expect("lock").messages);
        }
        _ => {
            wait_for("the slow client to be disconnected", Duration::from_secs(10), || {
                closed.load(Ordering::SeqCst) == 1
            });
            assert_eq!(m.details.get("slow_client_disconnects").copied(), Some(1), "{:?}", m.details);
        }
    }
    // The slow client never held the pipeline back (200 epochs × 20 ms would be 4 s per
    // message it was sent).
    assert!(pipeline_time < Duration::from_secs(30), "{pipeline_time:?}");
    // A late joiner first gets the current table (snapshot), then changes.
    let late = Arc::new(Mutex::new(Seen::default()));
    rt.spawn(sink_client(port, late.clone(), Duration::ZERO, closed.clone()));
    wait_for("the late joiner's snapshot", Duration::from_secs(10), || late.lock().expect("lock").table == expected);
    db.insert_json("trades", &format!(r#"{{"sym":"K0-{pad}","qty":1000}}"#)).expect("insert");
    db.flush().expect("flush");
    let expected = expected_table(&db);
    wait_for("the change after the snapshot", Duration::from_secs(10), || {
        late.lock().expect("lock").table == expected && fast[0].lock().expect("lock").table == expected
    });
    assert!(m.rows_written > 0 && m.epochs_committed > 0);
    db.shutdown().expect("shutdown");
}

#[test]
fn server_sink_fans_out_and_drops_for_a_slow_client_only() {
    fan_out("drop");
}

#[test]
fn server_sink_disconnects_a_slow_client_when_told_to() {
    fan_out("disconnect");
}

#[test]
fn replay_buffer_serves_a_late_joiner_the_recent_rows() {
    let rt = runtime();
    let port = common::free_port();
    let db = common::db_with_workers(1);
    db.execute("CREATE SOURCE events (id BIGINT, kind VARCHAR)").expect("source");
    db.execute(&format!(
        "CREATE SINK feed AS SELECT id, kind FROM events WHERE kind <> 'noise' WITH (connector = 'websocket', \
         'bind_address' = '127.0.0.1:{port}', 'replay_buffer_size' = '5')"
    ))
    .expect("sink");
    db.start().expect("start");
    for i in 0..20 {
        let kind = if i % 4 == 3 { "noise" } else { "ok" };
        db.insert_json("events", &format!(r#"{{"id":{i},"kind":"{kind}"}}"#)).expect("insert");
    }
    db.flush().expect("flush");
    let got: Vec<i64> = rt.block_on(async {
        let (mut ws, _) = tokio_tungstenite::connect_async(format!("ws://127.0.0.1:{port}/")).await.expect("connect");
        let mut ids = Vec::new();
        while ids.len() < 5 {
            let m = tokio::time::timeout(Duration::from_secs(10), ws.next()).await.expect("replayed").expect("open");
            if let Ok(Message::Text(t)) = m {
                let v: serde_json::Value = serde_json::from_str(t.as_str()).expect("json");
                assert_eq!(v["kind"], "ok", "append-only rows are sent as plain objects: {t}");
                ids.push(v["id"].as_i64().expect("id"));
            }
        }
        ids
    });
    assert_eq!(got, vec![13, 14, 16, 17, 18], "the last five rows, in order");
    db.shutdown().expect("shutdown");
}

#[test]
fn client_sink_holds_messages_while_the_peer_is_down() {
    let rt = runtime();
    let port = common::free_port();
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().expect("addr");
    let received: Arc<Mutex<Vec<i64>>> = Arc::new(Mutex::new(Vec::new()));
    // The peer: a server that records ids, accepting connections until told to stop.
    // (`limit`: crash after that many messages; None: serve until the sink closes.)
    let serve = |listener: TcpListener, received: Arc<Mutex<Vec<i64>>>, limit: Option<usize>| async move {
        let (tcp, _): (TcpStream, _) = listener.accept().await.expect("accept");
        let mut ws = tokio_tungstenite::accept_async(tcp).await.expect("handshake");
        while let Some(Ok(m)) = ws.next().await {
            if let Message::Text(t) = m {
                let v: serde_json::Value = serde_json::from_str(t.as_str()).expect("json");
                let mut r = received.lock().expect("lock");
                r.push(v["id"].as_i64().expect("id"));
                if limit.is_some_and(|n| r.len() >= n) {
                    break;
                }
            }
        }
        // Dropped without a close handshake: the peer crashed.
    };
    let listener = rt.block_on(TcpListener::bind(addr)).expect("bind");
    let first = rt.spawn(serve(listener, received.clone(), Some(300)));
    let db = common::db_with_workers(1);
    db.execute("CREATE SOURCE events (id BIGINT)").expect("source");
    db.execute(&format!(
        "CREATE SINK push AS SELECT id FROM events WITH (connector = 'websocket', 'mode' = 'client', \
         'url' = 'ws://{addr}/in', 'reconnect.initial_delay_ms' = '50', 'reconnect.max_delay_ms' = '200', \
         'buffer_size' = '100')"
    ))
    .expect("sink");
    db.start().expect("start");
    for i in 0..300 {
        db.insert_json("events", &format!(r#"{{"id":{i}}}"#)).expect("insert");
    }
    db.flush().expect("flush");
    rt.block_on(first).expect("first peer");
    // Messages written into the connection as the peer crashes are lost with it (WebSocket has
    // no acknowledgements); what matters is what the sink does once it knows the peer is gone.
    wait_for("the sink to notice the crash", Duration::from_secs(10), || {
        db.sink_metrics("push").is_some_and(|m| m.state == "retrying")
    });
    // The peer is down: these wait in the sink (and then in the pipeline) instead of vanishing.
    for i in 300..1000 {
        db.insert_json("events", &format!(r#"{{"id":{i}}}"#)).expect("insert");
    }
    std::thread::sleep(Duration::from_millis(500));
    let m = db.sink_metrics("push").expect("metrics");
    assert_eq!(m.state, "retrying", "{m:?}");
    let listener = rt.block_on(TcpListener::bind(addr)).expect("bind again");
    let second = rt.spawn(serve(listener, received.clone(), None));
    let distinct = || received.lock().expect("lock").iter().copied().collect::<std::collections::BTreeSet<i64>>();
    wait_for("every id at the second peer", Duration::from_secs(30), || distinct().len() >= 1000);
    assert_eq!(distinct(), (0..1000).collect(), "every id arrived");
    let m = db.sink_metrics("push").expect("metrics");
    assert!(m.retries >= 1 && m.details.get("reconnects").copied().unwrap_or(0) >= 1, "{m:?}");
    // The peer stays up until the sink closes the connection at shutdown.
    db.shutdown().expect("shutdown");
    rt.block_on(async { tokio::time::timeout(Duration::from_secs(30), second).await }).expect("closed").expect("peer");
}

#[test]
fn websocket_options_are_checked_at_create_and_peers_at_start() {
    let db = common::db_with_workers(1);
    let create_err = |sql: &str| match db.execute(sql) {
        Err(e @ LaminarError::Connector { .. }) => e.to_string(),
        other => panic!("{sql}: expected a connector error, got {other:?}"),
    };
    let e = create_err("CREATE SOURCE a (x VARCHAR) WITH (connector = 'websocket')");
    assert!(e.contains("'url'"), "{e}");
    let e = create_err("CREATE SOURCE a (x VARCHAR) WITH (connector = 'websocket', 'mode' = 'server')");
    assert!(e.contains("'bind_address'"), "{e}");
    let e = create_err(
        "CREATE SOURCE a (x VARCHAR) WITH (connector = 'websocket', 'url' = 'ws://h/', 'ping_interval' = '5')",
    );
    assert!(e.contains("ping_interval") && e.contains("ping_interval_ms"), "{e}");
    db.execute("CREATE SOURCE s (x VARCHAR, n BIGINT)").expect("source");
    let e = create_err("CREATE SINK k AS SELECT x FROM s WITH (connector = 'websocket', 'mode' = 'client')");
    assert!(e.contains("'url'"), "{e}");
    let e = create_err("CREATE SINK k AS SELECT x FROM s WITH (connector = 'websocket')");
    assert!(e.contains("'bind_address'"), "{e}");
    let e = create_err(
        "CREATE SINK k AS SELECT x, COUNT(*) AS c FROM s GROUP BY x WITH (connector = 'websocket', \
         'bind_address' = '127.0.0.1:0', 'format' = 'raw')",
    );
    assert!(e.contains("raw"), "{e}");
    assert!(db.sinks().is_empty(), "no half-made sink");
    assert_eq!(db.sources().len(), 1, "no half-made source");
    // A URL nobody listens on fails start() with the peer named.
    let port = common::free_port();
    db.execute(&format!(
        "CREATE SOURCE dead (x VARCHAR) WITH (connector = 'websocket', 'url' = 'ws://127.0.0.1:{port}/x')"
    ))
    .expect("valid");
    let started = Instant::now();
    match db.start() {
        Err(e @ LaminarError::Connector { .. }) => assert!(e.to_string().contains(&format!("127.0.0.1:{port}")), "{e}"),
        other => panic!("expected a connector error, got {other:?}"),
    }
    assert!(started.elapsed() < Duration::from_secs(15));
}

#[test]
fn raw_and_csv_sinks_send_the_values_themselves() {
    let rt = runtime();
    let (raw_port, csv_port) = (common::free_port(), common::free_port());
    let db = common::db_with_workers(1);
    db.execute("CREATE SOURCE lines (id BIGINT, text VARCHAR)").expect("source");
    db.execute(&format!(
        "CREATE SINK raw_out AS SELECT text FROM lines WITH (connector = 'websocket', \
         'bind_address' = '127.0.0.1:{raw_port}', 'format' = 'raw')"
    ))
    .expect("raw sink");
    db.execute(&format!(
        "CREATE SINK csv_out AS SELECT id, COUNT(*) AS n FROM lines GROUP BY id WITH (connector = 'websocket', \
         'bind_address' = '127.0.0.1:{csv_port}', 'format' = 'csv')"
    ))
    .expect("csv sink");
    db.start().expect("start");
    let read = |port: u16, n: usize| {
        rt.spawn(async move {
            let (mut ws, _) =
                tokio_tungstenite::connect_async(format!("ws://127.0.0.1:{port}/")).await.expect("connect");
            let mut got = Vec::new();
            while got.len() < n {
                match tokio::time::timeout(Duration::from_secs(10), ws.next()).await.expect("message") {
                    Some(Ok(Message::Text(t))) => got.push(t.as_str().to_string()),
                    Some(Ok(_)) => {}
                    other => panic!("connection ended: {other:?}"),
                }
            }
            got
        })
    };
    let raw = read(raw_port, 3);
    let csv = read(csv_port, 3);
    wait_for("both clients", Duration::from_secs(10), || {
        ["raw_out", "csv_out"]
            .iter()
            .all(|s| db.sink_metrics(s).and_then(|m| m.details.get("clients").copied()) == Some(1))
    });
    db.insert_json("lines", r#"[{"id":1,"text":"hello, world"},{"id":2,"text":"ünïcode"}]"#).expect("insert");
    db.flush().expect("flush");
    db.insert_json("lines", r#"{"id":1,"text":"again"}"#).expect("insert");
    db.flush().expect("flush");
    let mut raw = rt.block_on(raw).expect("raw client");
    raw.sort();
    assert_eq!(raw, vec!["again", "hello, world", "ünïcode"]);
    let mut csv = rt.block_on(csv).expect("csv client");
    csv.sort();
    assert_eq!(csv, vec!["1,1,insert", "1,2,update", "2,1,insert"]);
    db.shutdown().expect("shutdown");
}

#[test]
fn event_time_from_the_payload_closes_windows() {
    let rt = runtime();
    let port = common::free_port();
    let db = common::db_with_workers(2);
    db.execute(&format!(
        "CREATE SOURCE clicks (page VARCHAR, ts TIMESTAMP, WATERMARK FOR ts AS ts - INTERVAL '1' SECOND) \
         WITH (connector = 'websocket', 'mode' = 'server', 'bind_address' = '127.0.0.1:{port}')"
    ))
    .expect("source");
    db.execute(
        "CREATE STREAM per_window AS SELECT window_start, COUNT(*) AS n FROM clicks \
         GROUP BY TUMBLE(ts, INTERVAL '10' SECOND) EMIT ON WINDOW CLOSE",
    )
    .expect("stream");
    db.start().expect("start");
    // 60 clicks one second apart from 2024-01-01T00:00:00Z (epoch ms 1704067200000); then, once
    // they are in, a late one (behind the watermark).
    let (mut ws, _) =
        rt.block_on(tokio_tungstenite::connect_async(format!("ws://127.0.0.1:{port}/"))).expect("connect");
    rt.block_on(async {
        for s in 0..60 {
            ws.feed(Message::text(format!(r#"{{"page":"p","ts":"2024-01-01T00:{:02}:{:02}Z"}}"#, s / 60, s % 60)))
                .await
                .expect("send");
        }
        ws.flush().await.expect("flush");
    });
    wait_for("60 clicks", Duration::from_secs(20), || {
        db.source_metrics("clicks").is_some_and(|m| m.total_events == 60)
    });
    db.flush().expect("flush");
    rt.block_on(async {
        ws.send(Message::text(r#"{"page":"late","ts":"2024-01-01T00:00:05Z"}"#)).await.expect("send");
        ws.close(None).await.expect("close");
    });
    wait_for("61 clicks", Duration::from_secs(20), || {
        db.source_metrics("clicks").is_some_and(|m| m.total_events == 61)
    });
    db.flush().expect("flush");
    let m = db.source_metrics("clicks").expect("metrics");
    // The largest event time is 00:00:59; the watermark lags it by the declared second.
    assert_eq!(m.watermark, Some(1_704_067_200_000 + 58_000));
    // Windows [0,10) … [40,50) are closed (their end is behind 00:00:58); [50,60) is still open.
    let rows = common::sorted_query(&db, "SELECT n FROM per_window");
    assert_eq!(rows, vec!["10"; 5], "five closed windows of ten clicks; the late click is not merged");
    assert_eq!(db.stream_metrics("per_window").expect("metrics").late_rows, 1, "the late click is counted");
    db.shutdown().expect("shutdown");
}

#[test]
fn a_full_pipeline_stops_reading_and_the_sender_waits() {
    let rt = runtime();
    let port = common::free_port();
    let db = Database::open_with_config(
        ":memory:",
        laminardb::LaminarConfig { workers: Some(1), buffer_size: 1_000, ..Default::default() },
    )
    .expect("open");
    db.execute(&format!(
        "CREATE SOURCE msgs (i BIGINT, pad VARCHAR) WITH (connector = 'websocket', 'mode' = 'server', \
         'bind_address' = '127.0.0.1:{port}', 'batch_size' = '100')"
    ))
    .expect("source");
    db.execute("CREATE SINK slow AS SELECT i FROM msgs WITH (connector = 'blackhole', 'delay_ms' = '20')")
        .expect("sink");
    db.start().expect("start");
    // 20,000 messages of ~1 KB: far more than the buffer (1,000 rows) and the socket buffers.
    let sent = Arc::new(AtomicUsize::new(0));
    let s2 = sent.clone();
    let sender = rt.spawn(async move {
        let (mut ws, _) = tokio_tungstenite::connect_async(format!("ws://127.0.0.1:{port}/")).await.expect("connect");
        let pad = "x".repeat(1000);
        for i in 0..20_000 {
            ws.send(Message::text(format!(r#"{{"i":{i},"pad":"{pad}"}}"#))).await.expect("send");
            s2.store(i + 1, Ordering::SeqCst);
        }
        ws.close(None).await.expect("close");
    });
    // While the sink is slow, the source holds at most its buffer (plus one poll) and the
    // sender is held back by TCP rather than running ahead.
    let mut saw_held_back = false;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let m = db.source_metrics("msgs").expect("metrics");
        assert!(m.pending <= m.capacity + 100, "pending {} over capacity {}", m.pending, m.capacity);
        let s = sent.load(Ordering::SeqCst);
        if m.is_backpressured && s < 20_000 {
            saw_held_back = true;
        }
        if m.total_events == 20_000 {
            break;
        }
        assert!(Instant::now() < deadline, "stuck at {} of 20,000 ({s} sent)", m.total_events);
        std::thread::sleep(Duration::from_millis(10));
    }
    rt.block_on(sender).expect("sender");
    assert!(saw_held_back, "the sender was never held back while the pipeline was full");
    db.flush().expect("flush");
    assert_eq!(count(&db, "SELECT COUNT(DISTINCT i) FROM msgs"), 20_000, "nothing lost");
    db.shutdown().expect("shutdown");
}
