//! WebSocket connector benchmark (run with `cargo bench --bench websocket`): JSON messages sent
//! by WebSocket clients to a server-mode source, through `SELECT *` into a server-mode sink, and
//! received by WebSocket clients of the sink — all on loopback, peers in this process.
//!
//! - throughput: `LAMINAR_BENCH_WS_MESSAGES` messages (default 500,000) as fast as the senders
//!   go, with 1 sender and 1 receiver, then 10 senders and 10 receivers (every receiver gets
//!   every message); the clock stops when the last receiver has them all.
//! - latency: 20,000 messages/s for 3 s with 1 sender and 1 receiver; each message carries its
//!   send time and the receiver records send → receive (p50, p99).

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use laminardb::{Database, LaminarConfig};
use tokio_tungstenite::tungstenite::Message;

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr").port()
}

fn pipeline() -> (Database, u16, u16) {
    let (src, snk) = (free_port(), free_port());
    let db =
        Database::open_with_config(":memory:", LaminarConfig { workers: Some(1), ..Default::default() }).expect("open");
    db.execute(&format!(
        "CREATE SOURCE msgs (id BIGINT, sent BIGINT, body VARCHAR) WITH (connector = 'websocket', \
         'mode' = 'server', 'bind_address' = '127.0.0.1:{src}')"
    ))
    .expect("source");
    db.execute(&format!(
        "CREATE SINK out AS SELECT id, sent, body FROM msgs WITH (connector = 'websocket', \
         'bind_address' = '127.0.0.1:{snk}', 'client_queue_size' = '1000000')"
    ))
    .expect("sink");
    db.start().expect("start");
    (db, src, snk)
}

fn now_us(origin: Instant) -> i64 {
    origin.elapsed().as_micros() as i64
}

/// Receives `n` messages; returns the latencies (µs) of those it saw.
async fn receive(port: u16, n: usize, origin: Instant, ready: Arc<tokio::sync::Barrier>) -> Vec<i64> {
    let (mut ws, _) = tokio_tungstenite::connect_async(format!("ws://127.0.0.1:{port}/")).await.expect("connect");
    ready.wait().await;
    let mut lat = Vec::with_capacity(n);
    while lat.len() < n {
        match ws.next().await {
            Some(Ok(Message::Text(t))) => {
                let v: serde_json::Value = serde_json::from_str(t.as_str()).expect("json");
                lat.push(now_us(origin) - v["sent"].as_i64().unwrap_or(0));
            }
            Some(Ok(_)) => {}
            _ => break,
        }
    }
    lat
}

/// Sends `n` messages, paced to `rate` per second if given.
async fn send(port: u16, first_id: usize, n: usize, rate: Option<f64>, origin: Instant) {
    // Nagle off, as a latency-minded sender would have it.
    let url = format!("ws://127.0.0.1:{port}/");
    let (mut ws, _) = tokio_tungstenite::connect_async_with_config(url, None, true).await.expect("connect");
    let start = Instant::now();
    for i in 0..n {
        if let Some(r) = rate {
            let due = start + Duration::from_secs_f64(i as f64 / r);
            if due > Instant::now() {
                ws.flush().await.expect("flush");
                tokio::time::sleep_until(due.into()).await;
            }
        }
        let m = format!(r#"{{"id":{},"sent":{},"body":"tick"}}"#, first_id + i, now_us(origin));
        ws.feed(Message::text(m)).await.expect("send");
        if i % 256 == 255 {
            ws.flush().await.expect("flush");
        }
    }
    ws.flush().await.expect("flush");
    // Keep the connection until the source has read everything.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let _ = ws.close(None).await;
}

fn run(rt: &tokio::runtime::Runtime, clients: usize, total: usize, rate: Option<f64>) -> (f64, Vec<i64>) {
    let (db, src, snk) = pipeline();
    let origin = Instant::now();
    let ready = Arc::new(tokio::sync::Barrier::new(clients + 1));
    let receivers: Vec<_> = (0..clients).map(|_| rt.spawn(receive(snk, total, origin, ready.clone()))).collect();
    rt.block_on(async {
        let deadline = Instant::now() + Duration::from_secs(10);
        while db.sink_metrics("out").and_then(|m| m.details.get("clients").copied()) != Some(clients as i64) {
            assert!(Instant::now() < deadline, "receivers did not connect");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        ready.wait().await;
    });
    let t = Instant::now();
    let per = total / clients;
    let senders: Vec<_> =
        (0..clients).map(|c| rt.spawn(send(src, c * per, per, rate.map(|r| r / clients as f64), origin))).collect();
    let mut lat = Vec::new();
    for r in receivers {
        let l = rt.block_on(r).expect("receiver");
        assert_eq!(l.len(), per * clients, "a receiver missed messages");
        lat.extend(l);
    }
    let secs = t.elapsed().as_secs_f64();
    for s in senders {
        rt.block_on(s).expect("sender");
    }
    db.shutdown().expect("shutdown");
    ((per * clients) as f64 / secs, lat)
}

fn pct(v: &mut [i64], p: f64) -> f64 {
    v.sort_unstable();
    v[((v.len() as f64 - 1.0) * p) as usize] as f64 / 1000.0
}

fn main() {
    let n: usize = std::env::var("LAMINAR_BENCH_WS_MESSAGES").ok().and_then(|v| v.parse().ok()).unwrap_or(500_000);
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime");
    for clients in [1, 10] {
        let (rate, _) = run(&rt, clients, n, None);
        println!("websocket source→sink, {clients:>2} sender(s) and {clients:>2} receiver(s): {rate:>10.0} messages/s (N = {n}, each receiver gets all)");
    }
    let (_, mut lat) = run(&rt, 1, 60_000, Some(20_000.0));
    println!(
        "websocket end-to-end latency at 20,000 messages/s: p50 {:.2} ms, p99 {:.2} ms",
        pct(&mut lat, 0.5),
        pct(&mut lat, 0.99)
    );
}
