//! A minimal reader of a partition's raw log, transaction markers included.
//!
//! Protocol: one Kafka `Fetch` request (version 4, `read_uncommitted`) over plain TCP to the
//! partition's leader; the answer's record batches (format v2, uncompressed) are decoded here,
//! control batches included, which ordinary consumers never show. A transactional producer's
//! records belong to its open transaction until a COMMIT or ABORT marker of that producer id
//! follows in the log; [`committed`] keeps the records whose transaction committed (and every
//! non-transactional record).
//!
//! Why: a read_committed consumer relies on the broker's index of aborted transactions, which
//! some Kafka-protocol brokers do not serve (they return aborted records as if committed). The
//! exactly-once sink's recovery must know whether its last transaction committed; reading the
//! markers answers that on every broker. Only used over `PLAINTEXT` connections (with TLS or
//! SASL the sink asks a read_committed consumer instead).

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

/// How a transaction ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Marker {
    /// COMMIT: the producer's open records are visible.
    Commit,
    /// ABORT: they are not.
    Abort,
}

/// One record of the log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LogRecord {
    /// Offset in the partition.
    pub offset: i64,
    /// Producer id of its batch (-1: none).
    pub producer_id: i64,
    /// Written inside a transaction.
    pub transactional: bool,
    /// `Some` for a transaction marker (control record).
    pub marker: Option<Marker>,
    /// Key bytes.
    pub key: Option<Vec<u8>>,
    /// Value bytes (None: a tombstone).
    pub value: Option<Vec<u8>>,
    /// Headers.
    pub headers: Vec<(String, Option<Vec<u8>>)>,
}

impl LogRecord {
    /// A header's value as text.
    pub fn header(&self, key: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k == key).and_then(|(_, v)| std::str::from_utf8(v.as_deref()?).ok())
    }
}

/// What one fetch returned.
#[derive(Debug, Default)]
pub struct Fetched {
    /// The partition's high watermark.
    pub high_watermark: i64,
    /// Whole record batches from the requested offset on (a batch may start a little earlier).
    pub records: Vec<LogRecord>,
}

fn bad(msg: impl Into<String>) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, msg.into())
}

/// Reads one fetch worth of records of `topic`/`partition` from `offset` at `leader` (host:port).
pub fn fetch(leader: &str, topic: &str, partition: i32, offset: i64, max_bytes: i32) -> std::io::Result<Fetched> {
    let mut body = Vec::with_capacity(64 + topic.len());
    body.extend_from_slice(&1i16.to_be_bytes()); // api key: Fetch
    body.extend_from_slice(&4i16.to_be_bytes()); // version
    body.extend_from_slice(&7i32.to_be_bytes()); // correlation id
    put_str(&mut body, "laminardb-txnlog");
    body.extend_from_slice(&(-1i32).to_be_bytes()); // replica id: a consumer
    body.extend_from_slice(&500i32.to_be_bytes()); // max wait ms
    body.extend_from_slice(&0i32.to_be_bytes()); // min bytes
    body.extend_from_slice(&max_bytes.to_be_bytes());
    body.push(0); // read_uncommitted: everything, markers included
    body.extend_from_slice(&1i32.to_be_bytes());
    put_str(&mut body, topic);
    body.extend_from_slice(&1i32.to_be_bytes());
    body.extend_from_slice(&partition.to_be_bytes());
    body.extend_from_slice(&offset.to_be_bytes());
    body.extend_from_slice(&max_bytes.to_be_bytes());

    let mut conn = TcpStream::connect(leader)?;
    conn.set_read_timeout(Some(Duration::from_secs(30)))?;
    conn.set_write_timeout(Some(Duration::from_secs(30)))?;
    let mut frame = (body.len() as i32).to_be_bytes().to_vec();
    frame.extend_from_slice(&body);
    conn.write_all(&frame)?;
    let mut len = [0u8; 4];
    conn.read_exact(&mut len)?;
    let mut resp = vec![0u8; i32::from_be_bytes(len).max(0) as usize];
    conn.read_exact(&mut resp)?;
    parse_fetch_response(&resp, offset)
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(&(s.len() as i16).to_be_bytes());
    out.extend_from_slice(s.as_bytes());
}

/// A big-endian reader over a byte slice.
struct Cursor<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize) -> std::io::Result<&'a [u8]> {
        let end = self.pos.checked_add(n).filter(|&e| e <= self.buf.len()).ok_or_else(|| bad("truncated"))?;
        let s = &self.buf[self.pos..end];
        self.pos = end;
        Ok(s)
    }
    fn i8(&mut self) -> std::io::Result<i8> {
        Ok(self.take(1)?[0] as i8)
    }
    fn i16(&mut self) -> std::io::Result<i16> {
        Ok(i16::from_be_bytes(self.take(2)?.try_into().map_err(|_| bad("i16"))?))
    }
    fn i32(&mut self) -> std::io::Result<i32> {
        Ok(i32::from_be_bytes(self.take(4)?.try_into().map_err(|_| bad("i32"))?))
    }
    fn i64(&mut self) -> std::io::Result<i64> {
        Ok(i64::from_be_bytes(self.take(8)?.try_into().map_err(|_| bad("i64"))?))
    }
    /// A zig-zag varint (records use them for lengths and deltas).
    fn varint(&mut self) -> std::io::Result<i64> {
        let mut raw: u64 = 0;
        for shift in (0..64).step_by(7) {
            let b = self.take(1)?[0];
            raw |= u64::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                return Ok((raw >> 1) as i64 ^ -((raw & 1) as i64));
            }
        }
        Err(bad("varint too long"))
    }
    fn bytes_varint(&mut self) -> std::io::Result<Option<Vec<u8>>> {
        let n = self.varint()?;
        if n < 0 {
            return Ok(None);
        }
        Ok(Some(self.take(n as usize)?.to_vec()))
    }
    fn string16(&mut self) -> std::io::Result<String> {
        let n = self.i16()?;
        Ok(String::from_utf8_lossy(self.take(n.max(0) as usize)?).into_owned())
    }
}

fn parse_fetch_response(resp: &[u8], from: i64) -> std::io::Result<Fetched> {
    let mut c = Cursor { buf: resp, pos: 0 };
    let _correlation = c.i32()?;
    let _throttle = c.i32()?;
    let topics = c.i32()?;
    let mut out = Fetched::default();
    for _ in 0..topics {
        let _topic = c.string16()?;
        for _ in 0..c.i32()? {
            let _partition = c.i32()?;
            let error = c.i16()?;
            if error != 0 {
                return Err(bad(format!("fetch failed with Kafka error code {error}")));
            }
            out.high_watermark = c.i64()?;
            let _last_stable = c.i64()?;
            let aborted = c.i32()?;
            for _ in 0..aborted.max(0) {
                c.take(16)?;
            }
            let n = c.i32()?;
            let records = c.take(n.max(0) as usize)?;
            parse_batches(records, &mut out.records)?;
        }
    }
    out.records.retain(|r| r.offset >= from);
    Ok(out)
}

/// Decodes record batches (format v2); an incomplete batch at the end is left out.
pub fn parse_batches(buf: &[u8], out: &mut Vec<LogRecord>) -> std::io::Result<()> {
    let mut c = Cursor { buf, pos: 0 };
    while buf.len() - c.pos >= 12 {
        let base_offset = c.i64()?;
        let len = c.i32()?;
        if len < 0 || c.pos + len as usize > buf.len() {
            break; // a partial batch at the end of the answer
        }
        let mut b = Cursor { buf: c.take(len as usize)?, pos: 0 };
        let _leader_epoch = b.i32()?;
        let magic = b.i8()?;
        if magic != 2 {
            return Err(bad(format!("record batch format v{magic} is not supported")));
        }
        let _crc = b.i32()?;
        let attributes = b.i16()?;
        if attributes & 0x7 != 0 {
            return Err(bad("compressed record batches are not supported"));
        }
        let (transactional, control) = (attributes & 0x10 != 0, attributes & 0x20 != 0);
        let _last_delta = b.i32()?;
        let _first_ts = b.i64()?;
        let _max_ts = b.i64()?;
        let producer_id = b.i64()?;
        let _producer_epoch = b.i16()?;
        let _base_seq = b.i32()?;
        let count = b.i32()?;
        for _ in 0..count.max(0) {
            let rlen = b.varint()?;
            let mut r = Cursor { buf: b.take(rlen.max(0) as usize)?, pos: 0 };
            let _attrs = r.i8()?;
            let _ts_delta = r.varint()?;
            let offset = base_offset + r.varint()?;
            let key = r.bytes_varint()?;
            let value = r.bytes_varint()?;
            let mut headers = Vec::new();
            for _ in 0..r.varint()?.max(0) {
                let k = r.bytes_varint()?.unwrap_or_default();
                headers.push((String::from_utf8_lossy(&k).into_owned(), r.bytes_varint()?));
            }
            let marker = if control {
                // Control key: version (int16), type (int16: 0 abort, 1 commit).
                match key.as_deref() {
                    Some([_, _, 0, 0, ..]) => Some(Marker::Abort),
                    Some([_, _, 0, 1, ..]) => Some(Marker::Commit),
                    _ => continue, // another kind of control record
                }
            } else {
                None
            };
            out.push(LogRecord { offset, producer_id, transactional, marker, key, value, headers });
        }
    }
    Ok(())
}

/// The data records whose transaction committed (and every non-transactional one), by offset.
/// Records of a transaction without a marker yet (still open) are left out.
pub fn committed(records: &[LogRecord]) -> Vec<&LogRecord> {
    let mut open: std::collections::HashMap<i64, Vec<&LogRecord>> = std::collections::HashMap::new();
    let mut out = Vec::new();
    for r in records {
        match r.marker {
            Some(Marker::Commit) => out.extend(open.remove(&r.producer_id).unwrap_or_default()),
            Some(Marker::Abort) => {
                open.remove(&r.producer_id);
            }
            None if r.transactional => open.entry(r.producer_id).or_default().push(r),
            None => out.push(r),
        }
    }
    out.sort_by_key(|r| r.offset);
    out
}

/// Every record of a partition from `from` to its current end, through repeated fetches.
pub fn read_partition(leader: &str, topic: &str, partition: i32, from: i64) -> std::io::Result<Vec<LogRecord>> {
    let mut out: Vec<LogRecord> = Vec::new();
    let mut next = from;
    loop {
        let f = fetch(leader, topic, partition, next, 4 << 20)?;
        let last = f.records.last().map(|r| r.offset);
        out.extend(f.records);
        match last {
            Some(l) if l + 1 < f.high_watermark => next = l + 1,
            Some(_) => return Ok(out),
            // Nothing decodable although the log goes on: a batch bigger than the fetch size.
            None if next < f.high_watermark => return Err(bad("a record batch larger than 4 MiB")),
            None => return Ok(out),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn varint(out: &mut Vec<u8>, v: i64) {
        let mut z = ((v << 1) ^ (v >> 63)) as u64;
        loop {
            let b = (z & 0x7f) as u8;
            z >>= 7;
            if z == 0 {
                out.push(b);
                return;
            }
            out.push(b | 0x80);
        }
    }

    /// A record's key and value.
    type Kv<'a> = (Option<&'a [u8]>, Option<&'a [u8]>);

    /// One batch of `records` at `base`, by `producer`.
    fn batch(base: i64, producer: i64, attributes: i16, records: &[Kv<'_>]) -> Vec<u8> {
        let mut body = Vec::new();
        body.extend_from_slice(&0i32.to_be_bytes()); // leader epoch
        body.push(2); // magic
        body.extend_from_slice(&0i32.to_be_bytes()); // crc (not checked)
        body.extend_from_slice(&attributes.to_be_bytes());
        body.extend_from_slice(&(records.len() as i32 - 1).to_be_bytes());
        body.extend_from_slice(&0i64.to_be_bytes());
        body.extend_from_slice(&0i64.to_be_bytes());
        body.extend_from_slice(&producer.to_be_bytes());
        body.extend_from_slice(&0i16.to_be_bytes());
        body.extend_from_slice(&0i32.to_be_bytes());
        body.extend_from_slice(&(records.len() as i32).to_be_bytes());
        for (i, (k, v)) in records.iter().enumerate() {
            let mut r = vec![0u8];
            varint(&mut r, 0);
            varint(&mut r, i as i64);
            for part in [k, v] {
                match part {
                    Some(b) => {
                        varint(&mut r, b.len() as i64);
                        r.extend_from_slice(b);
                    }
                    None => varint(&mut r, -1),
                }
            }
            varint(&mut r, 1);
            varint(&mut r, 13);
            r.extend_from_slice(b"laminar.epoch");
            varint(&mut r, 1);
            r.push(b'0' + i as u8);
            varint(&mut body, r.len() as i64);
            body.extend_from_slice(&r);
        }
        let mut out = base.to_be_bytes().to_vec();
        out.extend_from_slice(&(body.len() as i32).to_be_bytes());
        out.extend_from_slice(&body);
        out
    }

    #[test]
    fn markers_decide_which_transactional_records_count() {
        let commit: &[u8] = &[0, 0, 0, 1];
        let abort: &[u8] = &[0, 0, 0, 0];
        let mut log = Vec::new();
        log.extend(batch(0, 7, 0x10, &[(None, Some(b"a0")), (None, Some(b"a1"))])); // producer 7, txn
        log.extend(batch(2, 9, 0x10, &[(None, Some(b"b0"))])); // producer 9, txn
        log.extend(batch(3, -1, 0, &[(Some(b"k"), None)])); // plain tombstone
        log.extend(batch(4, 7, 0x30, &[(Some(abort), Some(&[0, 0, 0, 0, 0, 0]))]));
        log.extend(batch(5, 9, 0x30, &[(Some(commit), Some(&[0, 0, 0, 0, 0, 0]))]));
        log.extend(batch(6, 7, 0x10, &[(None, Some(b"c0"))])); // still open
        let mut partial = batch(7, -1, 0, &[(None, Some(b"cut"))]);
        partial.truncate(partial.len() - 3);
        log.extend(partial);
        let mut recs = Vec::new();
        parse_batches(&log, &mut recs).expect("parse");
        assert_eq!(recs.len(), 7, "the partial batch at the end is left out");
        assert_eq!(recs[1].header("laminar.epoch"), Some("1"));
        assert_eq!(recs[4].marker, Some(Marker::Abort));
        let values: Vec<Option<&[u8]>> = committed(&recs).iter().map(|r| r.value.as_deref()).collect();
        assert_eq!(values, vec![Some(b"b0".as_slice()), None]);
    }

    #[test]
    fn varints_are_zigzag() {
        for v in [0i64, 1, -1, 63, -64, 300, -300, i32::MAX as i64] {
            let mut b = Vec::new();
            varint(&mut b, v);
            assert_eq!(Cursor { buf: &b, pos: 0 }.varint().expect("varint"), v);
        }
    }

    #[test]
    fn compressed_batches_are_refused_with_a_reason() {
        let b = batch(0, -1, 1, &[(None, Some(b"x"))]);
        let e = parse_batches(&b, &mut Vec::new()).expect_err("gzip");
        assert!(e.to_string().contains("compressed"));
    }
}
