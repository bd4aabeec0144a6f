//! Test kit: a schema registry speaking the Confluent REST protocol on loopback.
//!
//! `POST /subjects/{subject}/versions` (body `{"schema": "…"}`) registers a schema under a subject
//! and answers its id (the same schema text keeps its id); `GET /schemas/ids/{id}` answers
//! `{"schema": "…"}`; `GET /subjects` and `GET /subjects/{subject}/versions` list what is there;
//! `GET /subjects/{subject}/versions/latest` answers `{subject, version, id, schema}`.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::Arc;

use parking_lot::Mutex;
use serde_json::{json, Value};

#[derive(Default)]
struct State {
    /// Schemas by id - 1.
    schemas: Vec<String>,
    /// Subject → ids of its versions, in order.
    subjects: std::collections::BTreeMap<String, Vec<u32>>,
}

/// A running registry; it stops with the test process.
#[derive(Clone)]
pub struct Registry {
    /// `http://127.0.0.1:<port>`.
    pub url: String,
    state: Arc<Mutex<State>>,
}

impl Registry {
    /// Starts a registry on a free loopback port.
    pub fn start() -> Registry {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let url = format!("http://{}", listener.local_addr().expect("addr"));
        let state = Arc::new(Mutex::new(State::default()));
        let s = state.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming().flatten() {
                let s = s.clone();
                std::thread::spawn(move || serve(conn, &s));
            }
        });
        Registry { url, state }
    }

    /// Registers `schema` under `subject` (as a client would) and returns its id.
    pub fn register(&self, subject: &str, schema: &str) -> u32 {
        register(&mut self.state.lock(), subject, schema)
    }

    /// The ids registered under `subject`.
    pub fn versions(&self, subject: &str) -> Vec<u32> {
        self.state.lock().subjects.get(subject).cloned().unwrap_or_default()
    }

    /// The schema text of `id`.
    pub fn schema(&self, id: u32) -> Option<String> {
        self.state.lock().schemas.get(id as usize - 1).cloned()
    }
}

fn register(st: &mut State, subject: &str, schema: &str) -> u32 {
    let id = match st.schemas.iter().position(|s| s == schema) {
        Some(i) => i as u32 + 1,
        None => {
            st.schemas.push(schema.to_string());
            st.schemas.len() as u32
        }
    };
    let versions = st.subjects.entry(subject.to_string()).or_default();
    if !versions.contains(&id) {
        versions.push(id);
    }
    id
}

fn answer(st: &Mutex<State>, method: &str, path: &str, body: &[u8]) -> (u16, Value) {
    let not_found = |code: u32, what: &str| (404, json!({"error_code": code, "message": what}));
    let parts: Vec<&str> = path.trim_matches('/').split('/').collect();
    let mut st = st.lock();
    match (method, parts.as_slice()) {
        ("GET", ["schemas", "ids", id]) => {
            match id.parse::<usize>().ok().and_then(|i| st.schemas.get(i.wrapping_sub(1))) {
                Some(s) => (200, json!({ "schema": s })),
                None => not_found(40403, "Schema not found"),
            }
        }
        ("GET", ["subjects"]) => (200, json!(st.subjects.keys().collect::<Vec<_>>())),
        ("GET", ["subjects", subject, "versions"]) => match st.subjects.get(*subject) {
            Some(v) => (200, json!((1..=v.len()).collect::<Vec<_>>())),
            None => not_found(40401, "Subject not found"),
        },
        ("GET", ["subjects", subject, "versions", "latest"]) => match st.subjects.get(*subject) {
            Some(v) => {
                let id = *v.last().expect("a version");
                let schema = st.schemas[id as usize - 1].clone();
                (200, json!({"subject": subject, "version": v.len(), "id": id, "schema": schema}))
            }
            None => not_found(40401, "Subject not found"),
        },
        ("POST", ["subjects", subject, "versions"]) => {
            let Some(schema) =
                serde_json::from_slice::<Value>(body).ok().and_then(|v| v["schema"].as_str().map(String::from))
            else {
                return (422, json!({"error_code": 42201, "message": "Invalid schema"}));
            };
            (200, json!({ "id": register(&mut st, subject, &schema) }))
        }
        _ => not_found(404, "Not found"),
    }
}

/// Serves one keep-alive connection.
fn serve(conn: TcpStream, st: &Mutex<State>) {
    let Ok(read_half) = conn.try_clone() else { return };
    let mut reader = BufReader::new(read_half);
    let mut conn = conn;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap_or(0) == 0 {
            return;
        }
        let mut len = 0;
        loop {
            let mut h = String::new();
            if reader.read_line(&mut h).unwrap_or(0) == 0 {
                return;
            }
            if h.trim().is_empty() {
                break;
            }
            if let Some(v) = h.to_ascii_lowercase().strip_prefix("content-length:") {
                len = v.trim().parse().unwrap_or(0);
            }
        }
        let mut body = vec![0; len];
        if reader.read_exact(&mut body).is_err() {
            return;
        }
        let mut words = line.split_whitespace();
        let (method, path) = (words.next().unwrap_or(""), words.next().unwrap_or(""));
        let (status, reply) = answer(st, method, path, &body);
        let reply = reply.to_string();
        let head = format!(
            "HTTP/1.1 {status} {}\r\nContent-Type: application/vnd.schemaregistry.v1+json\r\nContent-Length: {}\r\n\r\n",
            if status == 200 { "OK" } else { "Error" },
            reply.len()
        );
        if conn.write_all(head.as_bytes()).and_then(|()| conn.write_all(reply.as_bytes())).is_err() {
            return;
        }
    }
}
