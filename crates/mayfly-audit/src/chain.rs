//! Verification of a log: the hash chain, the checkpoint signatures and the
//! signed head that guards against truncation.

use std::collections::HashMap;

use ed25519_dalek::VerifyingKey;
use serde::Serialize;

use crate::key::{checkpoint_message, verify_signature};
use crate::log::Head;
use crate::record::{Record, GENESIS};

/// The place where a log stops being trustworthy, and the reason.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, thiserror::Error)]
#[error("line {line}: {reason}")]
pub struct Break {
    /// 1-based line number in the log file, or 0 for a problem with the head.
    pub line: u64,
    pub reason: String,
}

/// The result of a successful verification.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Verified {
    pub records: u64,
    pub last_seq: u64,
    pub last_hash: String,
    pub checkpoints: u64,
    /// Sequence number the signed head vouches for, if there is a head.
    pub signed_head_seq: Option<u64>,
    /// Records after the last checkpoint: chained, but not yet signed.
    pub unsigned_tail: u64,
}

/// Verifies `lines` (the log file's lines in order) against `key` and, when
/// present, the signed `head`.
pub fn verify_lines<'a>(
    lines: impl Iterator<Item = &'a str>,
    key: &VerifyingKey,
    head: Option<&Head>,
) -> Result<Verified, Break> {
    let mut previous = GENESIS.to_string();
    let mut expected_seq = 1u64;
    let mut checkpoints = 0;
    let mut last_checkpoint_seq = 0;
    let mut hashes: HashMap<u64, String> = HashMap::new();
    for (index, text) in lines.enumerate() {
        let line_number = index as u64 + 1;
        let fail = |reason: String| Break { line: line_number, reason };
        let record: Record =
            serde_json::from_str(text).map_err(|e| fail(format!("not a valid audit record ({e})")))?;
        if record.seq != expected_seq {
            return Err(fail(format!(
                "sequence number {} where {expected_seq} was expected: a record was deleted, inserted or moved",
                record.seq
            )));
        }
        if record.prev != previous {
            return Err(fail("the record does not follow the one before it: a record was deleted or moved".into()));
        }
        if record.compute_hash() != record.hash {
            return Err(fail("the record's hash does not match its content: it was changed after it was written".into()));
        }
        if record.entry.kind == "checkpoint" {
            let signature = record.entry.fields.get("signature").and_then(|v| v.as_str()).unwrap_or_default();
            let message = checkpoint_message(record.seq - 1, &record.prev);
            if !verify_signature(key, &message, signature) {
                return Err(fail("the checkpoint's signature is invalid: it was not made with this log's key".into()));
            }
            checkpoints += 1;
            last_checkpoint_seq = record.seq;
        }
        hashes.insert(record.seq, record.hash.clone());
        previous = record.hash;
        expected_seq += 1;
    }
    let last_seq = expected_seq - 1;

    if let Some(head) = head {
        let fail = |reason: String| Break { line: 0, reason };
        if !verify_signature(key, &checkpoint_message(head.seq, &head.hash), &head.signature) {
            return Err(fail("the signed head's signature is invalid".into()));
        }
        if head.seq > last_seq {
            return Err(fail(format!(
                "the log ends at record {last_seq} but the signed head vouches for record {}: records were truncated",
                head.seq
            )));
        }
        let expected = if head.seq == 0 { Some(GENESIS.to_string()) } else { hashes.get(&head.seq).cloned() };
        if expected.as_ref() != Some(&head.hash) {
            return Err(fail(format!("record {} does not match the signed head: the log was rewritten", head.seq)));
        }
    }

    Ok(Verified {
        records: last_seq,
        last_seq,
        last_hash: previous,
        checkpoints,
        signed_head_seq: head.map(|h| h.seq),
        unsigned_tail: last_seq - last_checkpoint_seq,
    })
}
