//! Mayfly's audit log: append-only JSON lines, each carrying the SHA-256 of
//! the one before, with checkpoints signed by an Ed25519 key.
//!
//! Editing, deleting or reordering a record breaks the hash chain. A forged
//! checkpoint fails its signature. Truncating the log below the last signed
//! head is caught by the head file written beside it. Someone who has the
//! signing key can still rewrite the whole log, so the key and the log live
//! in a state directory that only root can read.
//!
//! The audit log is not the debug log: records have a fixed schema, are never
//! sampled or filtered, and never carry a secret.

#![forbid(unsafe_code)]

mod chain;
mod key;
mod log;
mod record;

pub use chain::{verify_lines, Break, Verified};
pub use key::{KeyError, SigningKeyFile};
pub use log::{AuditError, AuditLog, Flushing, Head, Unsynced};
pub use record::{hex, Entry, Record, GENESIS};
