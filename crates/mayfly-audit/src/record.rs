//! One audit record and how its hash is computed.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// The `prev` value of the first record.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// An event to record: its kind, the session it concerns and structured
/// fields. Fields hold identifiers, reasons and numbers, never
/// secrets or environment values.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Entry {
    pub kind: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session_id: Option<String>,
    pub actor: String,
    #[serde(default)]
    pub fields: serde_json::Map<String, serde_json::Value>,
}

impl Entry {
    pub fn new(kind: &str, actor: &str) -> Entry {
        Entry { kind: kind.into(), session_id: None, actor: actor.into(), fields: serde_json::Map::new() }
    }

    pub fn session(mut self, session_id: &str) -> Entry {
        self.session_id = Some(session_id.into());
        self
    }

    pub fn field(mut self, name: &str, value: impl Into<serde_json::Value>) -> Entry {
        self.fields.insert(name.into(), value.into());
        self
    }
}

/// A record as stored: the entry, its position, time and the chain hashes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Record {
    pub seq: u64,
    pub time_unix_ms: u64,
    #[serde(flatten)]
    pub entry: Entry,
    /// Hash of the previous record, or [`GENESIS`] for the first.
    pub prev: String,
    /// SHA-256 over `prev`, a newline and the record's JSON without `hash`.
    pub hash: String,
}

/// The hashed part of a record, serialized with a fixed field order. The
/// fields map is a BTreeMap, so its keys are sorted too.
#[derive(Serialize)]
struct Hashed<'a> {
    seq: u64,
    time_unix_ms: u64,
    kind: &'a str,
    session_id: &'a Option<String>,
    actor: &'a str,
    fields: &'a serde_json::Map<String, serde_json::Value>,
    prev: &'a str,
}

/// Writes `bytes` as lowercase hexadecimal, two digits per byte.
pub fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut text = String::with_capacity(bytes.len() * 2);
    for byte in bytes {
        text.push(DIGITS[usize::from(byte >> 4)] as char);
        text.push(DIGITS[usize::from(byte & 0x0f)] as char);
    }
    text
}

impl Record {
    /// Computes the hash this record must carry.
    pub fn compute_hash(&self) -> String {
        let hashed = Hashed {
            seq: self.seq,
            time_unix_ms: self.time_unix_ms,
            kind: &self.entry.kind,
            session_id: &self.entry.session_id,
            actor: &self.entry.actor,
            fields: &self.entry.fields,
            prev: &self.prev,
        };
        let json = serde_json::to_vec(&hashed).expect("records serialize");
        let mut digest = Sha256::new();
        digest.update(self.prev.as_bytes());
        digest.update(b"\n");
        digest.update(&json);
        hex(&digest.finalize())
    }

    /// Builds the record that follows `prev` (its hash) at position `seq`.
    pub fn seal(entry: Entry, seq: u64, time_unix_ms: u64, prev: &str) -> Record {
        let mut record = Record { seq, time_unix_ms, entry, prev: prev.into(), hash: String::new() };
        record.hash = record.compute_hash();
        record
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_writes_two_lowercase_digits_per_byte() {
        assert_eq!(hex(&[0x00, 0x0f, 0xa5, 0xff]), "000fa5ff");
        assert_eq!(hex(&[]), "");
    }

    #[test]
    fn hash_changes_with_any_field() {
        let base = Record::seal(Entry::new("session.started", "cli").session("s-1").field("ttl", "30s"), 1, 1000, GENESIS);
        assert_eq!(base.hash, base.compute_hash());
        let mut changed = base.clone();
        changed.entry.fields.insert("ttl".into(), "1h".into());
        assert_ne!(changed.compute_hash(), base.hash);
        let mut moved = base.clone();
        moved.seq = 2;
        assert_ne!(moved.compute_hash(), base.hash);
        let mut relinked = base.clone();
        relinked.prev = "1".repeat(64);
        assert_ne!(relinked.compute_hash(), base.hash);
    }

    #[test]
    fn record_round_trips_through_json() {
        let record = Record::seal(Entry::new("x", "cli").field("n", 3), 7, 42, GENESIS);
        let line = serde_json::to_string(&record).unwrap();
        let parsed: Record = serde_json::from_str(&line).unwrap();
        assert_eq!(parsed, record);
        assert_eq!(parsed.compute_hash(), record.hash);
    }
}
