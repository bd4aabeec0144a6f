//! The messages of an open Kafka transaction, as kept in a checkpoint (so that a restart can
//! write them again if the transaction was lost).

use crate::{ConnectorError, Result};

/// One message: the epoch that produced it, its key and value (`None`: a tombstone).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Message {
    /// Epoch (also in the `laminar.epoch` header).
    pub epoch: u64,
    /// Key bytes.
    pub key: Option<Vec<u8>>,
    /// Value bytes; `None` deletes the key.
    pub value: Option<Vec<u8>>,
}

fn put(out: &mut Vec<u8>, b: Option<&[u8]>) {
    match b {
        Some(b) => {
            out.push(1);
            out.extend_from_slice(&(b.len() as u32).to_le_bytes());
            out.extend_from_slice(b);
        }
        None => out.push(0),
    }
}

/// Encodes messages.
pub fn write_messages(msgs: &[Message]) -> Vec<u8> {
    let mut out = Vec::new();
    out.extend_from_slice(&(msgs.len() as u64).to_le_bytes());
    for m in msgs {
        out.extend_from_slice(&m.epoch.to_le_bytes());
        put(&mut out, m.key.as_deref());
        put(&mut out, m.value.as_deref());
    }
    out
}

/// Decodes what [`write_messages`] wrote.
pub fn read_messages(bytes: &[u8]) -> Result<Vec<Message>> {
    let bad = || ConnectorError::Failed("the checkpointed Kafka transaction is damaged".into());
    let mut pos = 0usize;
    let mut take = |n: usize| -> Result<&[u8]> {
        let s = bytes.get(pos..pos + n).ok_or_else(bad)?;
        pos += n;
        Ok(s)
    };
    let u64_of = |s: &[u8]| u64::from_le_bytes(s.try_into().unwrap_or([0; 8]));
    let n = u64_of(take(8)?) as usize;
    let mut out = Vec::with_capacity(n.min(1 << 20));
    for _ in 0..n {
        let epoch = u64_of(take(8)?);
        let mut opt = || -> Result<Option<Vec<u8>>> {
            match take(1)?[0] {
                0 => Ok(None),
                _ => {
                    let len = u32::from_le_bytes(take(4)?.try_into().unwrap_or([0; 4])) as usize;
                    Ok(Some(take(len)?.to_vec()))
                }
            }
        };
        let key = opt()?;
        let value = opt()?;
        out.push(Message { epoch, key, value });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_damage() {
        let msgs = vec![
            Message { epoch: 7, key: Some(b"{\"k\":1}".to_vec()), value: Some(b"{\"k\":1,\"n\":2}".to_vec()) },
            Message { epoch: 8, key: Some(b"{\"k\":2}".to_vec()), value: None },
        ];
        let b = write_messages(&msgs);
        assert_eq!(read_messages(&b).expect("read"), msgs);
        assert!(read_messages(&b[..b.len() - 1]).is_err());
    }
}
