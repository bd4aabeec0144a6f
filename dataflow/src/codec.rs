//! A small binary encoding for operator state snapshots (checkpoints): little-endian integers
//! and length-prefixed byte strings. Decoding checks every length, so a damaged snapshot is an
//! error rather than a panic.

use crate::error::{DataflowError, Result};

/// Appends values to a byte buffer.
#[derive(Default)]
pub struct Enc {
    /// The encoded bytes.
    pub buf: Vec<u8>,
}

impl Enc {
    /// An empty buffer.
    pub fn new() -> Self {
        Self::default()
    }

    /// A byte.
    pub fn u8(&mut self, v: u8) {
        self.buf.push(v);
    }

    /// A 32-bit unsigned integer.
    pub fn u32(&mut self, v: u32) {
        self.buf.extend_from_slice(&v.to_le_bytes());
    }

    /// A 64-bit unsigned integer.
    pub fn u64(&mut self, v: u64) {
        self.buf.extend_from_slice(&v.to_le_bytes());
    }

    /// A 64-bit signed integer.
    pub fn i64(&mut self, v: i64) {
        self.buf.extend_from_slice(&v.to_le_bytes());
    }

    /// A 128-bit signed integer.
    pub fn i128(&mut self, v: i128) {
        self.buf.extend_from_slice(&v.to_le_bytes());
    }

    /// A double (bit-exact).
    pub fn f64(&mut self, v: f64) {
        self.u64(v.to_bits());
    }

    /// A length-prefixed byte string.
    pub fn bytes(&mut self, b: &[u8]) {
        self.u32(b.len() as u32);
        self.buf.extend_from_slice(b);
    }

    /// An optional byte string.
    pub fn opt_bytes(&mut self, b: Option<&[u8]>) {
        match b {
            Some(b) => {
                self.u8(1);
                self.bytes(b);
            }
            None => self.u8(0),
        }
    }
}

/// Reads values back from an encoded buffer.
pub struct Dec<'a> {
    buf: &'a [u8],
    pos: usize,
}

fn corrupt(what: &str) -> DataflowError {
    DataflowError::Internal(format!("corrupt state snapshot (reading {what})"))
}

impl<'a> Dec<'a> {
    /// Reads `buf` from the start.
    pub fn new(buf: &'a [u8]) -> Self {
        Self { buf, pos: 0 }
    }

    /// True when every byte was read.
    pub fn is_done(&self) -> bool {
        self.pos == self.buf.len()
    }

    fn take(&mut self, n: usize, what: &str) -> Result<&'a [u8]> {
        let end = self.pos.checked_add(n).filter(|&e| e <= self.buf.len()).ok_or_else(|| corrupt(what))?;
        let s = &self.buf[self.pos..end];
        self.pos = end;
        Ok(s)
    }

    fn array<const N: usize>(&mut self, what: &str) -> Result<[u8; N]> {
        let s = self.take(N, what)?;
        let mut a = [0u8; N];
        a.copy_from_slice(s);
        Ok(a)
    }

    /// A byte.
    pub fn u8(&mut self) -> Result<u8> {
        Ok(self.take(1, "u8")?[0])
    }

    /// A 32-bit unsigned integer.
    pub fn u32(&mut self) -> Result<u32> {
        Ok(u32::from_le_bytes(self.array("u32")?))
    }

    /// A 64-bit unsigned integer.
    pub fn u64(&mut self) -> Result<u64> {
        Ok(u64::from_le_bytes(self.array("u64")?))
    }

    /// A 64-bit signed integer.
    pub fn i64(&mut self) -> Result<i64> {
        Ok(i64::from_le_bytes(self.array("i64")?))
    }

    /// A 128-bit signed integer.
    pub fn i128(&mut self) -> Result<i128> {
        Ok(i128::from_le_bytes(self.array("i128")?))
    }

    /// A double.
    pub fn f64(&mut self) -> Result<f64> {
        Ok(f64::from_bits(self.u64()?))
    }

    /// A length-prefixed byte string.
    pub fn bytes(&mut self) -> Result<&'a [u8]> {
        let n = self.u32()? as usize;
        self.take(n, "bytes")
    }

    /// An optional byte string.
    pub fn opt_bytes(&mut self) -> Result<Option<&'a [u8]>> {
        match self.u8()? {
            0 => Ok(None),
            1 => Ok(Some(self.bytes()?)),
            _ => Err(corrupt("option tag")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_truncation() {
        let mut e = Enc::new();
        e.u8(7);
        e.i64(-5);
        e.i128(i128::MIN + 3);
        e.f64(0.1);
        e.opt_bytes(Some(b"abc"));
        e.opt_bytes(None);
        let mut d = Dec::new(&e.buf);
        assert_eq!(d.u8().expect("u8"), 7);
        assert_eq!(d.i64().expect("i64"), -5);
        assert_eq!(d.i128().expect("i128"), i128::MIN + 3);
        assert_eq!(d.f64().expect("f64").to_bits(), 0.1f64.to_bits());
        assert_eq!(d.opt_bytes().expect("bytes"), Some(&b"abc"[..]));
        assert_eq!(d.opt_bytes().expect("none"), None);
        assert!(d.is_done());
        let cut = &e.buf[..e.buf.len() - 3];
        let mut d = Dec::new(cut);
        d.u8().expect("u8");
        d.i64().expect("i64");
        d.i128().expect("i128");
        d.f64().expect("f64");
        assert!(d.opt_bytes().is_err(), "a truncated snapshot is an error");
    }
}
