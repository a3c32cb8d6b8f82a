//! The byte layouts the queue stores: actions, trigger checkpoints and the blocks of rows a
//! run decided not to send.
//!
//! A small fixed binary layout instead of JSON, because a trigger run may write a million
//! of them in one transaction: encoding is a few copies, not a serializer walk. Each layout
//! starts with a version byte, so a later layout can still read these.

use super::{Action, Status};
use crate::error::{C360Error, Result};

const ACTION_V1: u8 = 1;
const SKIPPED_V1: u8 = 1;

fn corrupt(what: &str) -> C360Error {
    C360Error::Corrupt(format!("action queue: truncated or unknown {what} record"))
}

/// Appends fields to a record.
#[derive(Default)]
struct Writer(Vec<u8>);

impl Writer {
    fn u8(&mut self, v: u8) {
        self.0.push(v);
    }
    fn u32(&mut self, v: u32) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    fn i64(&mut self, v: i64) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    fn text(&mut self, v: &str) {
        self.u32(v.len() as u32);
        self.0.extend_from_slice(v.as_bytes());
    }
    fn optional_text(&mut self, v: Option<&str>) {
        match v {
            None => self.u8(0),
            Some(v) => {
                self.u8(1);
                self.text(v);
            }
        }
    }
}

/// Reads fields back, in the order they were written.
struct Reader<'a> {
    bytes: &'a [u8],
    what: &'static str,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8]> {
        if self.bytes.len() < n {
            return Err(corrupt(self.what));
        }
        let (head, rest) = self.bytes.split_at(n);
        self.bytes = rest;
        Ok(head)
    }
    fn u8(&mut self) -> Result<u8> {
        Ok(self.take(1)?[0])
    }
    fn u32(&mut self) -> Result<u32> {
        let bytes = self.take(4)?;
        Ok(u32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]))
    }
    fn i64(&mut self) -> Result<i64> {
        let mut buf = [0u8; 8];
        buf.copy_from_slice(self.take(8)?);
        Ok(i64::from_le_bytes(buf))
    }
    fn text(&mut self) -> Result<String> {
        let len = self.u32()? as usize;
        let bytes = self.take(len)?;
        String::from_utf8(bytes.to_vec()).map_err(|_| corrupt(self.what))
    }
    fn optional_text(&mut self) -> Result<Option<String>> {
        match self.u8()? {
            0 => Ok(None),
            _ => self.text().map(Some),
        }
    }
}

fn status_code(status: Status) -> u8 {
    match status {
        Status::Pending => 0,
        Status::Delivering => 1,
        Status::Delivered => 2,
        Status::Failed => 3,
        Status::Dead => 4,
        Status::Suppressed => 5,
        Status::HeldOut => 6,
    }
}

fn status_of(code: u8) -> Result<Status> {
    Ok(match code {
        0 => Status::Pending,
        1 => Status::Delivering,
        2 => Status::Delivered,
        3 => Status::Failed,
        4 => Status::Dead,
        5 => Status::Suppressed,
        6 => Status::HeldOut,
        _ => return Err(corrupt("action status")),
    })
}

/// One action as stored (its id is the key, not part of the value).
pub fn encode_action(action: &Action) -> Vec<u8> {
    let mut w = Writer(Vec::with_capacity(
        64 + action.payload.as_ref().map_or(0, String::len) + action.idempotency_key.len(),
    ));
    w.u8(ACTION_V1);
    w.u8(status_code(action.status));
    w.u32(action.attempts);
    w.i64(action.created_at);
    w.i64(action.available_at);
    w.i64(action.delivered_at.unwrap_or(i64::MIN));
    w.text(&action.trigger);
    w.text(&action.profile_id);
    w.text(&action.channel);
    w.text(&action.idempotency_key);
    w.optional_text(action.payload.as_deref());
    w.optional_text(action.reason.as_deref());
    w.optional_text(action.last_error.as_deref());
    w.0
}

pub fn decode_action(action_id: u64, bytes: &[u8]) -> Result<Action> {
    let mut r = Reader {
        bytes,
        what: "action",
    };
    if r.u8()? != ACTION_V1 {
        return Err(corrupt("action"));
    }
    let status = status_of(r.u8()?)?;
    let attempts = r.u32()?;
    let created_at = r.i64()?;
    let available_at = r.i64()?;
    let delivered_at = Some(r.i64()?).filter(|&at| at != i64::MIN);
    Ok(Action {
        action_id,
        status,
        attempts,
        created_at,
        available_at,
        delivered_at,
        trigger: r.text()?,
        profile_id: r.text()?,
        channel: r.text()?,
        idempotency_key: r.text()?,
        payload: r.optional_text()?,
        reason: r.optional_text()?,
        last_error: r.optional_text()?,
    })
}

/// A trigger's checkpoint: for each row true at its last run, the hash of the row's key and
/// when it fired, sorted by hash (so a run looks rows up by binary search).
pub fn encode_checkpoint(entries: &[(u128, i64)]) -> Vec<u8> {
    let mut out = Vec::with_capacity(entries.len() * 24);
    for (hash, at) in entries {
        out.extend_from_slice(&hash.to_le_bytes());
        out.extend_from_slice(&at.to_le_bytes());
    }
    out
}

pub fn decode_checkpoint(bytes: &[u8]) -> Result<Vec<(u128, i64)>> {
    if bytes.len() % 24 != 0 {
        return Err(corrupt("checkpoint"));
    }
    Ok(bytes
        .chunks_exact(24)
        .map(|chunk| {
            let mut hash = [0u8; 16];
            hash.copy_from_slice(&chunk[..16]);
            let mut at = [0u8; 8];
            at.copy_from_slice(&chunk[16..]);
            (u128::from_le_bytes(hash), i64::from_le_bytes(at))
        })
        .collect())
}

/// A stable 128-bit hash of a trigger row's key (FNV-1a): the checkpoint stores this rather
/// than the key, so that it stays small and holds no personal data.
pub fn row_hash(key: &str) -> u128 {
    let mut hash: u128 = 0x6c62_272e_07bb_0142_62b8_2175_6295_c58d;
    for byte in key.bytes() {
        hash ^= u128::from(byte);
        hash = hash.wrapping_mul(0x0000_0000_0100_0000_0000_0000_0000_013b);
    }
    hash
}

/// One row a run decided not to send: who, which row, and why.
#[derive(Debug, Clone, PartialEq)]
pub struct Skipped {
    pub profile_id: String,
    pub row_key: String,
    pub status: Status,
    pub reason: String,
}

/// The rows one run suppressed or held out. They never change again, so a run stores them
/// as one block (ids `first_id..first_id + rows.len()`) rather than one record per row.
#[derive(Debug, Clone, PartialEq)]
pub struct SkippedBlock {
    pub trigger: String,
    pub channel: String,
    pub created_at: i64,
    pub rows: Vec<Skipped>,
}

/// Reasons stored as one byte (any other is stored as text after code 255).
const REASON_CODES: [&str; 5] = [
    "no_consent",
    "missing_field",
    "trigger_cap",
    "pressure_cap",
    "holdout",
];
const REASON_AS_TEXT: u8 = 255;

impl SkippedBlock {
    pub fn encode(&self) -> Vec<u8> {
        SkippedBlock::encode_rows(
            &self.trigger,
            &self.channel,
            self.created_at,
            self.rows.len(),
            self.rows.iter().map(|row| {
                (
                    row.profile_id.as_str(),
                    row.row_key.as_str(),
                    row.status,
                    row.reason.as_str(),
                )
            }),
        )
    }

    /// Encodes `count` rows `(profile_id, row key, status, reason)` without building a
    /// block first: a run may skip a million rows.
    pub fn encode_rows<'a>(
        trigger: &str,
        channel: &str,
        created_at: i64,
        count: usize,
        rows: impl Iterator<Item = (&'a str, &'a str, Status, &'a str)>,
    ) -> Vec<u8> {
        let mut w = Writer(Vec::with_capacity(64 + count * 24));
        w.u8(SKIPPED_V1);
        w.text(trigger);
        w.text(channel);
        w.i64(created_at);
        w.u32(count as u32);
        for (profile_id, row_key, status, reason) in rows {
            w.u8(status_code(status));
            match REASON_CODES.iter().position(|r| *r == reason) {
                Some(code) => w.u8(code as u8),
                None => {
                    w.u8(REASON_AS_TEXT);
                    w.text(reason);
                }
            }
            w.text(profile_id);
            // Most rows are keyed by their profile alone: the key is not stored twice.
            if row_key == profile_id {
                w.u8(0);
            } else {
                w.u8(1);
                w.text(row_key);
            }
        }
        w.0
    }

    pub fn decode(bytes: &[u8]) -> Result<SkippedBlock> {
        let mut r = Reader {
            bytes,
            what: "suppressed rows",
        };
        if r.u8()? != SKIPPED_V1 {
            return Err(corrupt("suppressed rows"));
        }
        let trigger = r.text()?;
        let channel = r.text()?;
        let created_at = r.i64()?;
        let count = r.u32()? as usize;
        let mut rows = Vec::with_capacity(count.min(bytes.len()));
        for _ in 0..count {
            let status = status_of(r.u8()?)?;
            let reason = match r.u8()? {
                REASON_AS_TEXT => r.text()?,
                code => REASON_CODES
                    .get(code as usize)
                    .ok_or_else(|| corrupt("suppressed rows"))?
                    .to_string(),
            };
            let profile_id = r.text()?;
            let row_key = match r.u8()? {
                0 => profile_id.clone(),
                _ => r.text()?,
            };
            rows.push(Skipped {
                profile_id,
                row_key,
                status,
                reason,
            });
        }
        Ok(SkippedBlock {
            trigger,
            channel,
            created_at,
            rows,
        })
    }

    /// The rows as actions, numbered from `first_id`.
    pub fn actions(&self, first_id: u64) -> impl Iterator<Item = Action> + '_ {
        self.rows.iter().enumerate().map(move |(i, row)| Action {
            action_id: first_id + i as u64,
            trigger: self.trigger.clone(),
            profile_id: row.profile_id.clone(),
            channel: self.channel.clone(),
            payload: None,
            idempotency_key: idempotency_key(&self.trigger, &row.row_key, self.created_at),
            status: row.status,
            reason: Some(row.reason.clone()),
            created_at: self.created_at,
            available_at: self.created_at,
            attempts: 0,
            last_error: None,
            delivered_at: None,
        })
    }
}

/// Trigger, row key and firing time (ms): the same on every delivery attempt of one action.
pub fn idempotency_key(trigger: &str, row_key: &str, fired_at_micros: i64) -> String {
    format!("{trigger}:{row_key}:{}", fired_at_micros / 1000)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn action() -> Action {
        Action {
            action_id: 7,
            trigger: "cart".into(),
            profile_id: "p1".into(),
            channel: "email".into(),
            payload: Some(r#"{"a":1}"#.into()),
            idempotency_key: "cart:p1:1".into(),
            status: Status::Delivering,
            reason: None,
            created_at: 1,
            available_at: -2,
            attempts: 3,
            last_error: Some("HTTP 500".into()),
            delivered_at: None,
        }
    }

    #[test]
    fn actions_round_trip() {
        let original = action();
        assert_eq!(
            decode_action(7, &encode_action(&original)).unwrap(),
            original
        );
        let delivered = Action {
            delivered_at: Some(5),
            payload: None,
            ..action()
        };
        assert_eq!(
            decode_action(7, &encode_action(&delivered)).unwrap(),
            delivered
        );
    }

    #[test]
    fn truncated_records_are_errors_not_panics() {
        let bytes = encode_action(&action());
        for len in 0..bytes.len() {
            assert!(decode_action(7, &bytes[..len]).is_err(), "length {len}");
        }
        assert!(decode_checkpoint(&[0; 23]).is_err());
    }

    #[test]
    fn checkpoints_and_blocks_round_trip() {
        let entries = vec![(1u128, 5i64), (u128::MAX, -1)];
        assert_eq!(
            decode_checkpoint(&encode_checkpoint(&entries)).unwrap(),
            entries
        );
        let block = SkippedBlock {
            trigger: "t".into(),
            channel: "sms".into(),
            created_at: 9_000,
            rows: vec![
                Skipped {
                    profile_id: "p".into(),
                    row_key: "p:x".into(),
                    status: Status::HeldOut,
                    reason: "holdout".into(),
                },
                Skipped {
                    profile_id: "q".into(),
                    row_key: "q".into(),
                    status: Status::Suppressed,
                    reason: "some_future_reason".into(),
                },
            ],
        };
        let decoded = SkippedBlock::decode(&block.encode()).unwrap();
        assert_eq!(decoded, block);
        let action = decoded.actions(40).next().unwrap();
        assert_eq!(action.action_id, 40);
        assert_eq!(action.idempotency_key, "t:p:x:9");
    }

    #[test]
    fn row_hashes_are_stable_and_distinct() {
        assert_eq!(row_hash("p1"), row_hash("p1"));
        assert_ne!(row_hash("p1"), row_hash("p2"));
        assert_ne!(row_hash("p1:a"), row_hash("p1:b"));
    }
}
