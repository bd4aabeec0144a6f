//! The `pgoutput` logical decoding protocol (version 1) and the streaming replication messages
//! that carry it, as Postgres documents them ("Logical Streaming Replication Protocol" and
//! "Logical Replication Message Formats").
//!
//! The replication connection sends CopyData messages: `w` (XLogData: a WAL range and one
//! pgoutput message) and `k` (primary keepalive); the client answers with `r` (standby status
//! update: the LSN it has applied, which lets the server recycle WAL). pgoutput messages describe
//! transactions (`B`egin … `C`ommit), tables (`R`elation, sent before the first change of a
//! table and again after it changes), and changes (`I`nsert, `U`pdate, `D`elete, `T`runcate)
//! whose column values come as text (or `n`ull, or `u`nchanged TOASTed values).
//!
//! Everything here is pure decoding of bytes: no I/O.

use std::fmt;

/// A position in the write-ahead log.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Lsn(pub u64);

impl fmt::Display for Lsn {
    /// Postgres's notation: two hex halves, `16/B374D848`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:X}/{:X}", self.0 >> 32, self.0 & 0xFFFF_FFFF)
    }
}

impl std::str::FromStr for Lsn {
    type Err = DecodeError;

    fn from_str(s: &str) -> std::result::Result<Self, Self::Err> {
        let (hi, lo) = s.split_once('/').ok_or_else(|| DecodeError(format!("not an LSN: '{s}'")))?;
        let hi = u64::from_str_radix(hi, 16).map_err(|_| DecodeError(format!("not an LSN: '{s}'")))?;
        let lo = u64::from_str_radix(lo, 16).map_err(|_| DecodeError(format!("not an LSN: '{s}'")))?;
        if hi > u64::from(u32::MAX) || lo > u64::from(u32::MAX) {
            return Err(DecodeError(format!("not an LSN: '{s}'")));
        }
        Ok(Lsn((hi << 32) | lo))
    }
}

/// Bytes that do not follow the protocol.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DecodeError(pub String);

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "malformed replication message: {}", self.0)
    }
}

impl std::error::Error for DecodeError {}

type Result<T> = std::result::Result<T, DecodeError>;

/// Microseconds since 2000-01-01 (Postgres's epoch) → milliseconds since 1970-01-01.
pub fn pg_time_to_unix_ms(us: i64) -> i64 {
    const PG_EPOCH_UNIX_MS: i64 = 946_684_800_000;
    us.div_euclid(1000) + PG_EPOCH_UNIX_MS
}

/// A message of the replication stream (the payload of one CopyData).
#[derive(Clone, Debug, PartialEq)]
pub enum ReplicationMessage<'a> {
    /// `w`: WAL data holding one pgoutput message.
    XLogData {
        /// Where the data starts.
        start: Lsn,
        /// The server's current end of WAL.
        end: Lsn,
        /// Server clock (µs since 2000-01-01).
        sent_at: i64,
        /// The pgoutput message.
        data: &'a [u8],
    },
    /// `k`: the server is alive; with `reply_requested`, answer with a status update now.
    Keepalive {
        /// The server's current end of WAL.
        end: Lsn,
        /// Server clock.
        sent_at: i64,
        /// The server waits for a status update.
        reply_requested: bool,
    },
}

/// Decodes one CopyData payload of the replication stream.
pub fn decode_replication(buf: &[u8]) -> Result<ReplicationMessage<'_>> {
    let mut r = Reader::new(buf);
    match r.u8()? {
        b'w' => Ok(ReplicationMessage::XLogData {
            start: Lsn(r.u64()?),
            end: Lsn(r.u64()?),
            sent_at: r.i64()?,
            data: r.rest(),
        }),
        b'k' => {
            Ok(ReplicationMessage::Keepalive { end: Lsn(r.u64()?), sent_at: r.i64()?, reply_requested: r.u8()? != 0 })
        }
        t => Err(DecodeError(format!("unknown replication message type {:?}", t as char))),
    }
}

/// The standby status update (`r`): WAL up to `applied` is processed and may be recycled.
pub fn encode_status_update(applied: Lsn, now_pg_us: i64, reply_requested: bool) -> Vec<u8> {
    let mut out = Vec::with_capacity(34);
    out.push(b'r');
    for lsn in [applied, applied, applied] {
        out.extend_from_slice(&lsn.0.to_be_bytes());
    }
    out.extend_from_slice(&now_pg_us.to_be_bytes());
    out.push(u8::from(reply_requested));
    out
}

/// One column of a relation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RelationColumn {
    /// Part of the replica identity (the key sent with updates and deletes).
    pub key: bool,
    /// Column name.
    pub name: String,
    /// Type OID.
    pub type_oid: u32,
    /// Type modifier (e.g. numeric precision and scale), -1 when none.
    pub type_modifier: i32,
}

/// A table as pgoutput describes it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Relation {
    /// Table OID.
    pub oid: u32,
    /// Schema.
    pub namespace: String,
    /// Table name.
    pub name: String,
    /// `REPLICA IDENTITY`: `d`efault (primary key), `n`othing, `f`ull, `i`ndex.
    pub replica_identity: u8,
    /// Columns in table order.
    pub columns: Vec<RelationColumn>,
}

/// One column value of a change.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Value<'a> {
    /// SQL NULL.
    Null,
    /// A TOASTed value that did not change (updates): not sent.
    Unchanged,
    /// The value in Postgres's text output format.
    Text(&'a str),
    /// The value in binary format (only when asked for).
    Binary(&'a [u8]),
}

/// A row image of a change.
pub type Tuple<'a> = Vec<Value<'a>>;

/// A pgoutput message.
#[derive(Clone, Debug, PartialEq)]
pub enum Message<'a> {
    /// A transaction starts.
    Begin {
        /// LSN of its commit record.
        final_lsn: Lsn,
        /// Commit time (µs since 2000-01-01).
        committed_at: i64,
        /// Transaction id.
        xid: u32,
    },
    /// A transaction ends.
    Commit {
        /// LSN of the commit record.
        commit_lsn: Lsn,
        /// LSN just after it: where a restart resumes.
        end_lsn: Lsn,
        /// Commit time.
        committed_at: i64,
    },
    /// The transaction comes from another origin (replication chains).
    Origin {
        /// LSN on the origin.
        lsn: Lsn,
        /// Origin name.
        name: &'a str,
    },
    /// A table's description.
    Relation(Relation),
    /// A data type's name (for non-builtin types).
    Type {
        /// Type OID.
        oid: u32,
        /// Schema.
        namespace: &'a str,
        /// Type name.
        name: &'a str,
    },
    /// A row inserted.
    Insert {
        /// Table OID.
        relation: u32,
        /// The new row.
        new: Tuple<'a>,
    },
    /// A row updated.
    Update {
        /// Table OID.
        relation: u32,
        /// The old key (`K`: the replica identity changed) or the whole old row (`O`: `REPLICA
        /// IDENTITY FULL`); None when the key did not change.
        old: Option<OldImage<'a>>,
        /// The new row.
        new: Tuple<'a>,
    },
    /// A row deleted.
    Delete {
        /// Table OID.
        relation: u32,
        /// Its key or whole old row.
        old: OldImage<'a>,
    },
    /// Tables emptied.
    Truncate {
        /// Table OIDs.
        relations: Vec<u32>,
        /// `CASCADE` (1) and `RESTART IDENTITY` (2) bits.
        options: u8,
    },
    /// A `pg_logical_emit_message` message.
    LogicalMessage {
        /// Emitted inside a transaction.
        transactional: bool,
        /// Its LSN.
        lsn: Lsn,
        /// Prefix given by the emitter.
        prefix: &'a str,
        /// Content.
        content: &'a [u8],
    },
}

/// The old row image of an update or delete.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum OldImage<'a> {
    /// Only the replica identity columns (others are `Null`).
    Key(Tuple<'a>),
    /// The whole row (`REPLICA IDENTITY FULL`).
    Full(Tuple<'a>),
}

impl<'a> OldImage<'a> {
    /// The tuple, whichever it is.
    pub fn tuple(&self) -> &Tuple<'a> {
        match self {
            OldImage::Key(t) | OldImage::Full(t) => t,
        }
    }
}

/// Decodes one pgoutput message.
pub fn decode(buf: &[u8]) -> Result<Message<'_>> {
    let mut r = Reader::new(buf);
    let m = match r.u8()? {
        b'B' => Message::Begin { final_lsn: Lsn(r.u64()?), committed_at: r.i64()?, xid: r.u32()? },
        b'C' => {
            let _flags = r.u8()?;
            Message::Commit { commit_lsn: Lsn(r.u64()?), end_lsn: Lsn(r.u64()?), committed_at: r.i64()? }
        }
        b'O' => Message::Origin { lsn: Lsn(r.u64()?), name: r.cstr()? },
        b'R' => {
            let oid = r.u32()?;
            let namespace = r.cstr()?.to_string();
            let name = r.cstr()?.to_string();
            let replica_identity = r.u8()?;
            let n = r.i16()?;
            if n < 0 {
                return Err(DecodeError(format!("relation {name} with {n} columns")));
            }
            let mut columns = Vec::with_capacity(n as usize);
            for _ in 0..n {
                columns.push(RelationColumn {
                    key: r.u8()? & 1 == 1,
                    name: r.cstr()?.to_string(),
                    type_oid: r.u32()?,
                    type_modifier: r.i32()?,
                });
            }
            Message::Relation(Relation { oid, namespace, name, replica_identity, columns })
        }
        b'Y' => Message::Type { oid: r.u32()?, namespace: r.cstr()?, name: r.cstr()? },
        b'I' => {
            let relation = r.u32()?;
            r.expect(b'N')?;
            Message::Insert { relation, new: r.tuple()? }
        }
        b'U' => {
            let relation = r.u32()?;
            let old = match r.u8()? {
                b'K' => {
                    let t = r.tuple()?;
                    r.expect(b'N')?;
                    Some(OldImage::Key(t))
                }
                b'O' => {
                    let t = r.tuple()?;
                    r.expect(b'N')?;
                    Some(OldImage::Full(t))
                }
                b'N' => None,
                t => return Err(DecodeError(format!("update with tuple kind {:?}", t as char))),
            };
            Message::Update { relation, old, new: r.tuple()? }
        }
        b'D' => {
            let relation = r.u32()?;
            let old = match r.u8()? {
                b'K' => OldImage::Key(r.tuple()?),
                b'O' => OldImage::Full(r.tuple()?),
                t => return Err(DecodeError(format!("delete with tuple kind {:?}", t as char))),
            };
            Message::Delete { relation, old }
        }
        b'T' => {
            let n = r.u32()?;
            let options = r.u8()?;
            let relations = (0..n).map(|_| r.u32()).collect::<Result<Vec<_>>>()?;
            Message::Truncate { relations, options }
        }
        b'M' => {
            let transactional = r.u8()? & 1 == 1;
            let lsn = Lsn(r.u64()?);
            let prefix = r.cstr()?;
            let len = r.u32()? as usize;
            Message::LogicalMessage { transactional, lsn, prefix, content: r.take(len)? }
        }
        t => return Err(DecodeError(format!("unknown pgoutput message type {:?}", t as char))),
    };
    if !r.rest().is_empty() {
        return Err(DecodeError(format!("{} bytes left after a message", r.rest().len())));
    }
    Ok(m)
}

/// A cursor over a message.
struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn new(buf: &'a [u8]) -> Self {
        Self { buf, pos: 0 }
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8]> {
        let end = self.pos.checked_add(n).filter(|e| *e <= self.buf.len()).ok_or_else(|| {
            DecodeError(format!("message ends after {} bytes, {n} more expected at {}", self.buf.len(), self.pos))
        })?;
        let s = &self.buf[self.pos..end];
        self.pos = end;
        Ok(s)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N]> {
        let mut a = [0u8; N];
        a.copy_from_slice(self.take(N)?);
        Ok(a)
    }

    fn u8(&mut self) -> Result<u8> {
        Ok(self.take(1)?[0])
    }

    fn i16(&mut self) -> Result<i16> {
        Ok(i16::from_be_bytes(self.array()?))
    }

    fn u32(&mut self) -> Result<u32> {
        Ok(u32::from_be_bytes(self.array()?))
    }

    fn i32(&mut self) -> Result<i32> {
        Ok(i32::from_be_bytes(self.array()?))
    }

    fn u64(&mut self) -> Result<u64> {
        Ok(u64::from_be_bytes(self.array()?))
    }

    fn i64(&mut self) -> Result<i64> {
        Ok(i64::from_be_bytes(self.array()?))
    }

    fn cstr(&mut self) -> Result<&'a str> {
        let rest = &self.buf[self.pos..];
        let n = rest.iter().position(|b| *b == 0).ok_or_else(|| DecodeError("unterminated string".into()))?;
        let s = std::str::from_utf8(&rest[..n]).map_err(|e| DecodeError(format!("string is not UTF-8: {e}")))?;
        self.pos += n + 1;
        Ok(s)
    }

    fn expect(&mut self, want: u8) -> Result<()> {
        match self.u8()? {
            b if b == want => Ok(()),
            b => Err(DecodeError(format!("expected {:?}, got {:?}", want as char, b as char))),
        }
    }

    fn tuple(&mut self) -> Result<Tuple<'a>> {
        let n = self.i16()?;
        if n < 0 {
            return Err(DecodeError(format!("tuple with {n} columns")));
        }
        let mut out = Vec::with_capacity(n as usize);
        for _ in 0..n {
            out.push(match self.u8()? {
                b'n' => Value::Null,
                b'u' => Value::Unchanged,
                b't' => {
                    let len = self.u32()? as usize;
                    let bytes = self.take(len)?;
                    Value::Text(
                        std::str::from_utf8(bytes).map_err(|e| DecodeError(format!("text value is not UTF-8: {e}")))?,
                    )
                }
                b'b' => {
                    let len = self.u32()? as usize;
                    Value::Binary(self.take(len)?)
                }
                k => return Err(DecodeError(format!("unknown column value kind {:?}", k as char))),
            });
        }
        Ok(out)
    }

    fn rest(&self) -> &'a [u8] {
        &self.buf[self.pos..]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Builds messages the way the server writes them.
    #[derive(Default)]
    struct W(Vec<u8>);

    impl W {
        fn u8(mut self, v: u8) -> Self {
            self.0.push(v);
            self
        }
        fn i16(mut self, v: i16) -> Self {
            self.0.extend_from_slice(&v.to_be_bytes());
            self
        }
        fn u32(mut self, v: u32) -> Self {
            self.0.extend_from_slice(&v.to_be_bytes());
            self
        }
        fn i32(mut self, v: i32) -> Self {
            self.0.extend_from_slice(&v.to_be_bytes());
            self
        }
        fn u64(mut self, v: u64) -> Self {
            self.0.extend_from_slice(&v.to_be_bytes());
            self
        }
        fn s(mut self, v: &str) -> Self {
            self.0.extend_from_slice(v.as_bytes());
            self.0.push(0);
            self
        }
        fn text(self, v: &str) -> Self {
            let mut w = self.u8(b't').u32(v.len() as u32);
            w.0.extend_from_slice(v.as_bytes());
            w
        }
    }

    #[test]
    fn lsns_print_and_parse_as_postgres_does() {
        let l: Lsn = "16/B374D848".parse().expect("lsn");
        assert_eq!(l, Lsn(0x16_B374_D848));
        assert_eq!(l.to_string(), "16/B374D848");
        assert_eq!(Lsn(0).to_string(), "0/0");
        assert!("16-B3".parse::<Lsn>().is_err());
        assert!("1FFFFFFFF/0".parse::<Lsn>().is_err());
        assert_eq!(pg_time_to_unix_ms(0), 946_684_800_000);
        assert_eq!(pg_time_to_unix_ms(1_500), 946_684_800_001);
    }

    #[test]
    fn xlogdata_keepalive_and_status_update() {
        let inner = W::default().u8(b'B').u64(0x100).u64(5).u32(7).0;
        let mut w = W::default().u8(b'w').u64(0x90).u64(0x120).u64(99).0;
        w.extend_from_slice(&inner);
        match decode_replication(&w).expect("xlogdata") {
            ReplicationMessage::XLogData { start, end, sent_at, data } => {
                assert_eq!((start, end, sent_at), (Lsn(0x90), Lsn(0x120), 99));
                assert_eq!(
                    decode(data).expect("begin"),
                    Message::Begin { final_lsn: Lsn(0x100), committed_at: 5, xid: 7 }
                );
            }
            other => panic!("{other:?}"),
        }
        let k = W::default().u8(b'k').u64(0x200).u64(3).u8(1).0;
        assert_eq!(
            decode_replication(&k).expect("keepalive"),
            ReplicationMessage::Keepalive { end: Lsn(0x200), sent_at: 3, reply_requested: true }
        );
        let r = encode_status_update(Lsn(0x1_0000_0002), 77, false);
        assert_eq!(r.len(), 34);
        assert_eq!(r[0], b'r');
        assert_eq!(&r[1..9], &0x1_0000_0002u64.to_be_bytes());
        assert_eq!(&r[17..25], &0x1_0000_0002u64.to_be_bytes());
        assert_eq!(&r[25..33], &77i64.to_be_bytes());
        assert!(decode_replication(b"x").is_err());
        assert!(decode_replication(&k[..10]).is_err());
    }

    #[test]
    fn relation_insert_update_delete_truncate() {
        let rel = W::default()
            .u8(b'R')
            .u32(16_384)
            .s("public")
            .s("users")
            .u8(b'd')
            .i16(3)
            .u8(1)
            .s("id")
            .u32(20)
            .i32(-1)
            .u8(0)
            .s("name")
            .u32(25)
            .i32(-1)
            .u8(0)
            .s("balance")
            .u32(1700)
            .i32((10 << 16 | 2) + 4)
            .0;
        let Message::Relation(r) = decode(&rel).expect("relation") else { panic!() };
        assert_eq!(
            (r.oid, r.namespace.as_str(), r.name.as_str(), r.replica_identity),
            (16_384, "public", "users", b'd')
        );
        assert_eq!(r.columns.len(), 3);
        assert!(r.columns[0].key && !r.columns[1].key);
        assert_eq!((r.columns[2].name.as_str(), r.columns[2].type_oid), ("balance", 1700));

        let ins = W::default().u8(b'I').u32(16_384).u8(b'N').i16(3).text("1").text("ann").u8(b'n').0;
        assert_eq!(
            decode(&ins).expect("insert"),
            Message::Insert { relation: 16_384, new: vec![Value::Text("1"), Value::Text("ann"), Value::Null] }
        );
        // An update that keeps the key and leaves a TOASTed value out.
        let upd = W::default().u8(b'U').u32(16_384).u8(b'N').i16(3).text("1").u8(b'u').text("2.50").0;
        assert_eq!(
            decode(&upd).expect("update"),
            Message::Update {
                relation: 16_384,
                old: None,
                new: vec![Value::Text("1"), Value::Unchanged, Value::Text("2.50")]
            }
        );
        // An update with the whole old row (REPLICA IDENTITY FULL).
        let full = W::default()
            .u8(b'U')
            .u32(16_384)
            .u8(b'O')
            .i16(3)
            .text("1")
            .text("ann")
            .text("1.00")
            .u8(b'N')
            .i16(3)
            .text("1")
            .text("ann")
            .text("2.00")
            .0;
        let Message::Update { old: Some(OldImage::Full(old)), new, .. } = decode(&full).expect("update") else {
            panic!()
        };
        assert_eq!(old[2], Value::Text("1.00"));
        assert_eq!(new[2], Value::Text("2.00"));
        let del = W::default().u8(b'D').u32(16_384).u8(b'K').i16(3).text("1").u8(b'n').u8(b'n').0;
        assert_eq!(
            decode(&del).expect("delete"),
            Message::Delete { relation: 16_384, old: OldImage::Key(vec![Value::Text("1"), Value::Null, Value::Null]) }
        );
        let tr = W::default().u8(b'T').u32(2).u8(1).u32(16_384).u32(16_390).0;
        assert_eq!(decode(&tr).expect("truncate"), Message::Truncate { relations: vec![16_384, 16_390], options: 1 });
    }

    #[test]
    fn commit_origin_type_and_logical_messages() {
        let c = W::default().u8(b'C').u8(0).u64(0x10).u64(0x18).u64(42).0;
        assert_eq!(
            decode(&c).expect("commit"),
            Message::Commit { commit_lsn: Lsn(0x10), end_lsn: Lsn(0x18), committed_at: 42 }
        );
        let o = W::default().u8(b'O').u64(9).s("upstream").0;
        assert_eq!(decode(&o).expect("origin"), Message::Origin { lsn: Lsn(9), name: "upstream" });
        let y = W::default().u8(b'Y').u32(50_000).s("public").s("mood").0;
        assert_eq!(decode(&y).expect("type"), Message::Type { oid: 50_000, namespace: "public", name: "mood" });
        let mut m = W::default().u8(b'M').u8(1).u64(5).s("laminar").u32(3).0;
        m.extend_from_slice(b"abc");
        assert_eq!(
            decode(&m).expect("message"),
            Message::LogicalMessage { transactional: true, lsn: Lsn(5), prefix: "laminar", content: b"abc" }
        );
    }

    #[test]
    fn malformed_messages_are_errors_not_panics() {
        let ins = W::default().u8(b'I').u32(1).u8(b'N').i16(1).text("12345").0;
        for cut in 0..ins.len() {
            assert!(decode(&ins[..cut]).is_err(), "cut at {cut}");
        }
        assert!(decode(b"Z").is_err());
        let bad_kind = W::default().u8(b'I').u32(1).u8(b'N').i16(1).u8(b'x').0;
        assert!(decode(&bad_kind).expect_err("bad kind").to_string().contains("kind"));
        let trailing = W::default().u8(b'B').u64(1).u64(2).u32(3).u8(0).0;
        assert!(decode(&trailing).is_err());
        let not_utf8 = W::default().u8(b'I').u32(1).u8(b'N').i16(1).u8(b't').u32(2).u8(0xff).u8(0xfe).0;
        assert!(decode(&not_utf8).is_err());
        let negative = W::default().u8(b'I').u32(1).u8(b'N').i16(-1).0;
        assert!(decode(&negative).is_err());
        let huge = W::default().u8(b'I').u32(1).u8(b'N').i16(1).u8(b't').u32(u32::MAX).0;
        assert!(decode(&huge).is_err());
    }
}
