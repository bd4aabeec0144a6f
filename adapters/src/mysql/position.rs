//! Replication positions of the binary log: a file and offset, a MariaDB GTID state
//! (`domain-server-sequence` per replication domain) and a MySQL GTID set
//! (`source_uuid:1-42:50`), with the GTID events that advance them. Pure code, no I/O.

use std::collections::BTreeMap;
use std::fmt;

/// MariaDB's GTID position: the last transaction applied per replication domain.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MariaGtidState(BTreeMap<u32, (u32, u64)>);

impl MariaGtidState {
    /// Parses `0-1-42,1-2-7` (empty: no position).
    pub fn parse(s: &str) -> Result<Self, String> {
        let mut m = BTreeMap::new();
        for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let f: Vec<&str> = part.split('-').collect();
            let bad = || format!("not a MariaDB GTID: '{part}' (expected domain-server-sequence)");
            if f.len() != 3 {
                return Err(bad());
            }
            let d = f[0].parse().map_err(|_| bad())?;
            let srv = f[1].parse().map_err(|_| bad())?;
            let seq = f[2].parse().map_err(|_| bad())?;
            m.insert(d, (srv, seq));
        }
        Ok(Self(m))
    }

    /// Records that transaction `domain-server-seq` is applied.
    pub fn apply(&mut self, g: MariaGtid) {
        self.0.insert(g.domain, (g.server, g.seq));
    }

    /// True if no transaction is recorded.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Display for MariaGtidState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let parts: Vec<String> = self.0.iter().map(|(d, (s, q))| format!("{d}-{s}-{q}")).collect();
        f.write_str(&parts.join(","))
    }
}

/// One MariaDB GTID.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MariaGtid {
    /// Replication domain.
    pub domain: u32,
    /// Server that originated the transaction.
    pub server: u32,
    /// Sequence number.
    pub seq: u64,
}

/// MariaDB's GTID event (type 162): the body starts with the sequence number (8 bytes) and the
/// domain id (4 bytes), little-endian; the server id is in the event header.
pub fn parse_maria_gtid_event(server_id: u32, body: &[u8]) -> Option<MariaGtid> {
    let seq = u64::from_le_bytes(body.get(0..8)?.try_into().ok()?);
    let domain = u32::from_le_bytes(body.get(8..12)?.try_into().ok()?);
    Some(MariaGtid { domain, server: server_id, seq })
}

/// The MariaDB GTID event's type code.
pub const MARIA_GTID_EVENT: u8 = 162;
/// MySQL's GTID event type code.
pub const MYSQL_GTID_EVENT: u8 = 33;

/// A MySQL GTID set: per source UUID, the transaction numbers applied (closed intervals).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MysqlGtidSet(BTreeMap<[u8; 16], Vec<(u64, u64)>>);

impl MysqlGtidSet {
    /// Parses `3e11fa47-71ca-11e1-9e33-c80aa9429562:1-5:7,…` (whitespace and newlines allowed).
    pub fn parse(s: &str) -> Result<Self, String> {
        let mut set = Self::default();
        for part in s.split(',').map(|p| p.trim()).filter(|p| !p.is_empty()) {
            let mut it = part.split(':');
            let uuid = parse_uuid(it.next().unwrap_or_default()).ok_or_else(|| format!("not a GTID set: '{part}'"))?;
            for range in it {
                let (a, b) = match range.split_once('-') {
                    Some((a, b)) => (a, b),
                    None => (range, range),
                };
                let (a, b): (u64, u64) = (
                    a.trim().parse().map_err(|_| format!("not a GTID range: '{range}'"))?,
                    b.trim().parse().map_err(|_| format!("not a GTID range: '{range}'"))?,
                );
                if a == 0 || b < a {
                    return Err(format!("not a GTID range: '{range}'"));
                }
                set.add_range(uuid, a, b);
            }
        }
        Ok(set)
    }

    /// Adds transaction `gno` of `uuid`.
    pub fn add(&mut self, uuid: [u8; 16], gno: u64) {
        self.add_range(uuid, gno, gno);
    }

    fn add_range(&mut self, uuid: [u8; 16], a: u64, b: u64) {
        let v = self.0.entry(uuid).or_default();
        v.push((a, b));
        v.sort_unstable();
        let mut merged: Vec<(u64, u64)> = Vec::with_capacity(v.len());
        for &(x, y) in v.iter() {
            match merged.last_mut() {
                Some(last) if x <= last.1.saturating_add(1) => last.1 = last.1.max(y),
                _ => merged.push((x, y)),
            }
        }
        *v = merged;
    }

    /// The set per source UUID, for `COM_BINLOG_DUMP_GTID`.
    pub fn iter(&self) -> impl Iterator<Item = (&[u8; 16], &[(u64, u64)])> {
        self.0.iter().map(|(k, v)| (k, v.as_slice()))
    }

    /// True if empty.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Display for MysqlGtidSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let parts: Vec<String> = self
            .0
            .iter()
            .map(|(u, r)| {
                let ranges: Vec<String> =
                    r.iter().map(|(a, b)| if a == b { a.to_string() } else { format!("{a}-{b}") }).collect();
                format!("{}:{}", format_uuid(u), ranges.join(":"))
            })
            .collect();
        f.write_str(&parts.join(","))
    }
}

/// MySQL's GTID event (type 33) body: flags (1 byte), source UUID (16), transaction number
/// (8, little-endian), then logical clock fields.
pub fn parse_mysql_gtid_event(body: &[u8]) -> Option<([u8; 16], u64)> {
    let uuid: [u8; 16] = body.get(1..17)?.try_into().ok()?;
    let gno = i64::from_le_bytes(body.get(17..25)?.try_into().ok()?);
    (gno > 0).then_some((uuid, gno as u64))
}

fn parse_uuid(s: &str) -> Option<[u8; 16]> {
    let hex: String = s.trim().chars().filter(|c| *c != '-').collect();
    if hex.len() != 32 {
        return None;
    }
    let mut out = [0u8; 16];
    for (i, o) in out.iter_mut().enumerate() {
        *o = u8::from_str_radix(hex.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

fn format_uuid(u: &[u8; 16]) -> String {
    let h: String = u.iter().map(|b| format!("{b:02x}")).collect();
    format!("{}-{}-{}-{}-{}", &h[0..8], &h[8..12], &h[12..16], &h[16..20], &h[20..32])
}

/// Where the source is in the binary log, as checkpointed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct BinlogPosition {
    /// Binary log file.
    pub file: String,
    /// Offset in it after the last applied transaction.
    pub pos: u64,
    /// MariaDB GTID state after it (MariaDB servers).
    pub maria: MariaGtidState,
    /// MySQL executed GTID set after it (MySQL servers with GTIDs on).
    pub mysql: MysqlGtidSet,
}

impl BinlogPosition {
    /// As JSON for checkpoints.
    pub fn to_json(&self) -> serde_json::Value {
        let mut v = serde_json::json!({ "file": self.file, "pos": self.pos });
        if !self.maria.is_empty() {
            v["gtid"] = self.maria.to_string().into();
        }
        if !self.mysql.is_empty() {
            v["gtid_set"] = self.mysql.to_string().into();
        }
        v
    }

    /// From a checkpoint's JSON.
    pub fn from_json(v: &serde_json::Value) -> Result<Self, String> {
        let file = v.get("file").and_then(|f| f.as_str()).ok_or("no binlog file in the position")?.to_string();
        let pos = v.get("pos").and_then(|p| p.as_u64()).ok_or("no binlog offset in the position")?;
        let maria = MariaGtidState::parse(v.get("gtid").and_then(|g| g.as_str()).unwrap_or(""))?;
        let mysql = MysqlGtidSet::parse(v.get("gtid_set").and_then(|g| g.as_str()).unwrap_or(""))?;
        Ok(Self { file, pos, maria, mysql })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mariadb_gtid_states_parse_print_and_advance() {
        let mut s = MariaGtidState::parse("0-1-42, 3-2-7").expect("parse");
        assert_eq!(s.to_string(), "0-1-42,3-2-7");
        // A GTID event as MariaDB writes it: seq 43, domain 0 (server 1 in the header).
        let mut body = 43u64.to_le_bytes().to_vec();
        body.extend_from_slice(&0u32.to_le_bytes());
        body.push(0x0c); // flags
        s.apply(parse_maria_gtid_event(1, &body).expect("event"));
        assert_eq!(s.to_string(), "0-1-43,3-2-7");
        assert!(MariaGtidState::parse("0-1").is_err());
        assert!(parse_maria_gtid_event(1, &[1, 2, 3]).is_none());
    }

    #[test]
    fn mysql_gtid_sets_merge_events_into_intervals() {
        let mut s = MysqlGtidSet::parse("3E11FA47-71CA-11E1-9E33-C80AA9429562:1-5:7").expect("parse");
        assert_eq!(s.to_string(), "3e11fa47-71ca-11e1-9e33-c80aa9429562:1-5:7");
        // Recorded GTID event bodies of MySQL 8 (flags, source UUID, gno, logical clock …).
        let uuid = parse_uuid("3e11fa47-71ca-11e1-9e33-c80aa9429562").expect("uuid");
        for gno in [6u64, 8] {
            let mut body = vec![1u8];
            body.extend_from_slice(&uuid);
            body.extend_from_slice(&(gno as i64).to_le_bytes());
            body.extend_from_slice(&[2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
            let (u, g) = parse_mysql_gtid_event(&body).expect("event");
            s.add(u, g);
        }
        assert_eq!(s.to_string(), "3e11fa47-71ca-11e1-9e33-c80aa9429562:1-8");
        let other = parse_uuid("00000000-0000-0000-0000-000000000001").expect("uuid");
        s.add(other, 1);
        assert_eq!(s.to_string(), "00000000-0000-0000-0000-000000000001:1,3e11fa47-71ca-11e1-9e33-c80aa9429562:1-8");
        assert!(MysqlGtidSet::parse("nope:1").is_err());
        assert!(MysqlGtidSet::parse("3e11fa47-71ca-11e1-9e33-c80aa9429562:5-2").is_err());
        let p = BinlogPosition { file: "binlog.000002".into(), pos: 4, maria: Default::default(), mysql: s.clone() };
        assert_eq!(BinlogPosition::from_json(&p.to_json()).expect("json"), p);
    }
}
