//! The audit log on disk: `STATE/audit/log.jsonl`, the signing key beside it,
//! and `head.json`, the signed position of the last checkpoint.
//!
//! `head.json` contains the newest two heads in two slots of [`HEAD_SLOT_BYTES`]
//! each, a JSON object padded with spaces. A checkpoint overwrites the slot
//! of the older head in place, so a crash in the middle of the write leaves
//! the newer one whole. A file from an older build, with one unpadded head,
//! reads as its first slot.

use std::fs::{self, File};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{DirBuilderExt, FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use sha2::Digest;

use crate::chain::{verify_lines, Break, Verified};
use crate::key::{checkpoint_message, KeyError, SigningKeyFile};
use crate::record::{Entry, Record, GENESIS};

/// Largest record accepted, so that the last record is always found in the
/// tail that [`AuditLog::append`] reads.
const MAX_RECORD_BYTES: usize = 60 * 1024;

/// The first, usual size of the tail read to find the last record. A longer
/// last line makes the read grow to twice [`MAX_RECORD_BYTES`].
const TAIL_GUESS_BYTES: usize = 8 * 1024;

/// Size of each of the two slots in `head.json`: one disk sector, which a
/// disk writes whole or not at all.
const HEAD_SLOT_BYTES: usize = 512;

#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    #[error("failed to create the audit directory {path}: {source}")]
    Directory { path: PathBuf, source: io::Error },
    #[error(transparent)]
    Key(#[from] KeyError),
    #[error("failed to write the audit log {path}: {source}")]
    Write { path: PathBuf, source: io::Error },
    #[error("failed to read the audit log {path}: {source}")]
    Read { path: PathBuf, source: io::Error },
    #[error("the last record of {path} cannot be read ({reason}); run `mayfly audit verify` to find the damage")]
    Tail { path: PathBuf, reason: String },
    #[error("an audit record of kind {kind:?} is {size} bytes, above the limit of {MAX_RECORD_BYTES}")]
    TooLarge { kind: String, size: usize },
    #[error("the audit log is not intact: {0}")]
    Broken(#[from] Break),
    #[error("there is no audit log under {dir}: no session has run with this state directory, or its audit directory was removed")]
    Missing { dir: PathBuf },
}

/// The signed position of the newest checkpoint, kept outside the log so that
/// cutting records off the end of the log is detected.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Head {
    pub seq: u64,
    pub hash: String,
    pub signature: String,
}

/// Records appended by [`AuditLog::append_unsynced`] that may not be on
/// disk yet.
pub struct Unsynced {
    file: File,
    path: PathBuf,
    records: Vec<Record>,
}

impl Unsynced {
    /// Flushes the records to disk, and returns them.
    pub fn sync(self) -> Result<Vec<Record>, AuditError> {
        self.file.sync_data().map_err(|source| AuditError::Write { path: self.path, source })?;
        Ok(self.records)
    }

    /// Starts the flush on a thread of its own, so that the caller goes on
    /// while the disk writes. When no thread can start, the flush waits for
    /// [`Flushing::wait`].
    pub fn flush_in_background(self) -> Flushing {
        let file = match self.file.try_clone() {
            Ok(file) => file,
            Err(_) => return Flushing::Later(self),
        };
        // The thread makes one system call, so a small stack will do. It is
        // not joined: joining a thread that has exited unmaps its stack in
        // the joining thread, which can interrupt the process's other CPU.
        let (sender, result) = std::sync::mpsc::sync_channel(1);
        let spawned = std::thread::Builder::new().name("audit-flush".into()).stack_size(FLUSH_STACK_BYTES).spawn(move || {
            let _ = sender.send(file.sync_data());
        });
        match spawned {
            Ok(_) => Flushing::Started { result, path: self.path, records: self.records },
            Err(_) => Flushing::Later(self),
        }
    }
}

/// Stack size of the thread that flushes the start record.
const FLUSH_STACK_BYTES: usize = 64 * 1024;

/// Records whose flush to disk [`Unsynced::flush_in_background`] started.
pub enum Flushing {
    Started { result: std::sync::mpsc::Receiver<io::Result<()>>, path: PathBuf, records: Vec<Record> },
    Later(Unsynced),
}

impl Flushing {
    /// Waits until the records are on disk, and returns them.
    pub fn wait(self) -> Result<Vec<Record>, AuditError> {
        match self {
            Flushing::Later(unsynced) => unsynced.sync(),
            Flushing::Started { result, path, records } => {
                let result = result.recv().unwrap_or_else(|_| Err(io::Error::other("the thread that flushed the audit log panicked")));
                result.map_err(|source| AuditError::Write { path, source })?;
                Ok(records)
            }
        }
    }
}

pub struct AuditLog {
    log: PathBuf,
    head: PathBuf,
    key: SigningKeyFile,
    /// The end of the log after this handle's last write.
    written: Mutex<Option<LogEnd>>,
}

/// The length of the log, and its last record's sequence number, hash and
/// line with the newline.
#[derive(Clone)]
struct LogEnd {
    length: u64,
    seq: u64,
    hash: String,
    line: Vec<u8>,
}

impl LogEnd {
    /// Returns whether `file`, of `length` bytes, still ends as this handle
    /// left it: the same length, and the same bytes in the last line.
    fn matches(&self, file: &File, length: u64) -> bool {
        if length != self.length {
            return false;
        }
        let mut line = vec![0; self.line.len()];
        file.read_exact_at(&mut line, length - self.line.len() as u64).is_ok() && line == self.line
    }
}

fn now_unix_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

/// Parses the two slots of `head.json`. A slot that is empty, or that a
/// crash left half written, is `None`.
fn head_slots(bytes: &[u8]) -> [Option<Head>; 2] {
    let slot = |index: usize| {
        let slot = &bytes[(index * HEAD_SLOT_BYTES).min(bytes.len())..((index + 1) * HEAD_SLOT_BYTES).min(bytes.len())];
        // Padding is spaces, and a slot skipped by an older file's first write is zeros.
        let end = slot.iter().rposition(|b| !b.is_ascii_whitespace() && *b != 0).map_or(0, |last| last + 1);
        serde_json::from_slice::<Head>(&slot[..end]).ok()
    };
    [slot(0), slot(1)]
}

/// Returns the newest head among the slots of `head.json` that parse.
fn newest_head(bytes: &[u8]) -> Option<Head> {
    head_slots(bytes).into_iter().flatten().max_by_key(|head| head.seq)
}

impl AuditLog {
    /// Opens the log under `state_dir/audit` for appending, creating the
    /// directory, the signing key and a signed empty head on first use.
    pub fn open(state_dir: &Path) -> Result<AuditLog, AuditError> {
        let dir = state_dir.join("audit");
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&dir)
            .map_err(|source| AuditError::Directory { path: dir.clone(), source })?;
        let key = SigningKeyFile::load_or_create(&dir.join("signing.key"))?;
        let log = AuditLog { log: dir.join("log.jsonl"), head: dir.join("head.json"), key, written: Mutex::new(None) };
        // The head exists from the first use on, so deleting it is detected.
        // Only a new log gets one here, under the log's lock: a missing head
        // beside existing records is damage for `verify` to report.
        let mut file = log.open_for_append()?;
        let log_is_empty = file.metadata().map(|m| m.len() == 0).unwrap_or(false);
        if log_is_empty && !log.head.exists() {
            let signature = log.key.sign(&checkpoint_message(0, GENESIS));
            log.write_head(&Head { seq: 0, hash: GENESIS.into(), signature })?;
        }
        let repaired = log.repair_torn_tail(&mut file)?;
        drop(file);
        if let Some(entry) = repaired {
            log.append(vec![entry], true)?;
        }
        Ok(log)
    }

    /// Handles a last line that a crash cut off in the middle of a write.
    /// A line that lacks only its newline gets it. Anything else after the
    /// last newline is moved to `log.jsonl.torn-TIME` and cut from the log,
    /// and the returned entry records that, with the cut bytes' SHA-256. No
    /// complete record is ever removed: the signed head still catches any
    /// cut through whole records.
    fn repair_torn_tail(&self, file: &mut File) -> Result<Option<Entry>, AuditError> {
        let write_error = |source| AuditError::Write { path: self.log.clone(), source };
        let (start, tail) = self.read_tail(file)?;
        if tail.is_empty() {
            return Ok(None);
        }
        if tail.last() == Some(&b'\n') {
            return Ok(None);
        }
        let cut_at = tail.iter().rposition(|b| *b == b'\n').map_or(0, |i| i + 1);
        if cut_at == 0 && start > 0 {
            return Err(AuditError::Tail { path: self.log.clone(), reason: "the last line is longer than any record can be".into() });
        }
        let torn = &tail[cut_at..];
        let complete = serde_json::from_slice::<Record>(torn).is_ok_and(|r| r.compute_hash() == r.hash);
        if complete {
            file.write_all(b"\n").and_then(|()| file.sync_data()).map_err(write_error)?;
            return Ok(None);
        }
        let saved = self.log.with_extension(format!("jsonl.torn-{}", now_unix_ms()));
        fs::write(&saved, torn).map_err(|source| AuditError::Write { path: saved.clone(), source })?;
        file.set_len(start + cut_at as u64).and_then(|()| file.sync_data()).map_err(write_error)?;
        let digest: String = crate::record::hex(&sha2::Sha256::digest(torn));
        Ok(Some(
            Entry::new("audit.tail_repaired", "mayfly")
                .field("torn_bytes", torn.len())
                .field("torn_sha256", digest)
                .field("saved_to", saved.display().to_string()),
        ))
    }

    /// Opens an existing log for reading, creating nothing.
    pub fn open_existing(state_dir: &Path) -> Result<AuditLog, AuditError> {
        let dir = state_dir.join("audit");
        if !dir.is_dir() {
            return Err(AuditError::Missing { dir });
        }
        let key = SigningKeyFile::load(&dir.join("signing.key"))?;
        Ok(AuditLog { log: dir.join("log.jsonl"), head: dir.join("head.json"), key, written: Mutex::new(None) })
    }

    pub fn path(&self) -> &Path {
        &self.log
    }

    /// Reads the sequence number and hash of the last record.
    fn last(&self, file: &mut File) -> Result<(u64, String), AuditError> {
        let tail_error = |reason: String| AuditError::Tail { path: self.log.clone(), reason };
        let (_, tail) = self.read_tail(file)?;
        if tail.is_empty() {
            return Ok((0, GENESIS.into()));
        }
        if tail.last() != Some(&b'\n') {
            return Err(tail_error("the file does not end with a complete line".into()));
        }
        let body = &tail[..tail.len() - 1];
        let line = body.rsplit(|b| *b == b'\n').next().unwrap_or_default();
        let record: Record = serde_json::from_slice(line).map_err(|e| tail_error(e.to_string()))?;
        if record.compute_hash() != record.hash {
            return Err(tail_error("its hash does not match its content".into()));
        }
        Ok((record.seq, record.hash))
    }

    /// Reads the end of the log, enough to hold its last line whole: a
    /// window that starts the file or has a newline before its last byte,
    /// else the largest window. Returns the window's offset and bytes.
    fn read_tail(&self, file: &mut File) -> Result<(u64, Vec<u8>), AuditError> {
        let read_error = |source| AuditError::Read { path: self.log.clone(), source };
        let length = file.seek(SeekFrom::End(0)).map_err(read_error)?;
        let mut window = (0, Vec::new());
        for size in [TAIL_GUESS_BYTES, 2 * MAX_RECORD_BYTES] {
            let start = length.saturating_sub(size as u64);
            file.seek(SeekFrom::Start(start)).map_err(read_error)?;
            let mut tail = Vec::with_capacity((length - start) as usize);
            file.read_to_end(&mut tail).map_err(read_error)?;
            let before_last = &tail[..tail.len().saturating_sub(1)];
            let whole = start == 0 || before_last.contains(&b'\n');
            window = (start, tail);
            if whole {
                break;
            }
        }
        Ok(window)
    }

    /// Opens the log for appending and takes its exclusive lock, which lasts
    /// until the returned file is closed.
    fn open_for_append(&self) -> Result<File, AuditError> {
        let write_error = |source| AuditError::Write { path: self.log.clone(), source };
        let file = File::options().read(true).append(true).create(true).mode(0o600).open(&self.log).map_err(write_error)?;
        file.lock().map_err(write_error)?;
        Ok(file)
    }

    /// Appends `entries` in order, and a signed checkpoint after them when
    /// `checkpoint` is set, then flushes them to disk. Returns the records
    /// written. Nothing is written unless all of them can be.
    pub fn append(&self, entries: Vec<Entry>, checkpoint: bool) -> Result<Vec<Record>, AuditError> {
        let (file, records, head) = self.write_records(entries, checkpoint)?;
        file.sync_data().map_err(|source| AuditError::Write { path: self.log.clone(), source })?;
        if let Some(head) = head {
            self.write_head(&head)?;
        }
        Ok(records)
    }

    /// Appends `entries` like [`AuditLog::append`] without a checkpoint, and
    /// leaves the flush to disk to the caller, who can overlap it with other
    /// work. The log's lock is released at once.
    pub fn append_unsynced(&self, entries: Vec<Entry>) -> Result<Unsynced, AuditError> {
        let (file, records, _) = self.write_records(entries, false)?;
        let _ = file.unlock();
        Ok(Unsynced { file, path: self.log.clone(), records })
    }

    /// Writes the records of `entries` and an optional checkpoint under the
    /// log's lock, and returns the locked file, the records and the new head.
    fn write_records(&self, entries: Vec<Entry>, checkpoint: bool) -> Result<(File, Vec<Record>, Option<Head>), AuditError> {
        let write_error = |source| AuditError::Write { path: self.log.clone(), source };
        let mut file = self.open_for_append()?;
        // When the log still ends with the line this handle wrote last,
        // that line's record is the last one, and the tail need not be read
        // and parsed. The lock keeps other writers out until the file closes.
        let length = file.metadata().map_err(write_error)?.len();
        let written = self.written.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let (mut seq, mut prev) = match written {
            Some(end) if end.matches(&file, length) => (end.seq, end.hash),
            _ => self.last(&mut file)?,
        };

        let time = now_unix_ms();
        let mut records = Vec::new();
        for entry in entries {
            seq += 1;
            let record = Record::seal(entry, seq, time, &prev);
            prev = record.hash.clone();
            records.push(record);
        }
        let mut head = None;
        if checkpoint {
            let signature = self.key.sign(&checkpoint_message(seq, &prev));
            let entry = Entry::new("checkpoint", "mayfly").field("signature", signature.clone());
            head = Some(Head { seq, hash: prev.clone(), signature });
            seq += 1;
            records.push(Record::seal(entry, seq, time, &prev));
        }

        let mut bytes = Vec::new();
        for record in &records {
            let line = serde_json::to_vec(record).expect("records serialize");
            if line.len() > MAX_RECORD_BYTES {
                return Err(AuditError::TooLarge { kind: record.entry.kind.clone(), size: line.len() });
            }
            bytes.extend_from_slice(&line);
            bytes.push(b'\n');
        }
        file.write_all(&bytes).map_err(write_error)?;
        if let Some(last) = records.last() {
            let line_start = bytes[..bytes.len() - 1].iter().rposition(|b| *b == b'\n').map_or(0, |i| i + 1);
            let end = LogEnd { length: length + bytes.len() as u64, seq, hash: last.hash.clone(), line: bytes[line_start..].to_vec() };
            *self.written.lock().unwrap_or_else(|e| e.into_inner()) = Some(end);
        }
        Ok((file, records, head))
    }

    /// Writes `head` over the slot of the older head. The caller holds the
    /// log's lock, so no other writer races for the slot, and has flushed
    /// the records the head vouches for, so the head never reaches the disk
    /// before them.
    ///
    /// The head is not flushed: the kernel writes it back with other dirty
    /// pages, within about half a minute by default. A power loss before
    /// then leaves the older head, which still verifies. Flushing it would
    /// cost every session a second wait for the disk.
    fn write_head(&self, head: &Head) -> Result<(), AuditError> {
        let write_error = |source| AuditError::Write { path: self.head.clone(), source };
        let mut file = File::options().read(true).write(true).create(true).truncate(false).mode(0o600).open(&self.head).map_err(write_error)?;
        let mut current = Vec::new();
        file.read_to_end(&mut current).map_err(|source| AuditError::Read { path: self.head.clone(), source })?;
        let seqs = head_slots(&current).map(|slot| slot.map(|head| head.seq));
        // An empty or unreadable slot goes first, then the older one.
        let slot = match seqs {
            [None, _] => 0,
            [_, None] => 1,
            [Some(first), Some(second)] => usize::from(second < first),
        };
        let mut bytes = serde_json::to_vec(head).expect("heads serialize");
        assert!(bytes.len() < HEAD_SLOT_BYTES, "a head of {} bytes does not fit its slot", bytes.len());
        bytes.resize(HEAD_SLOT_BYTES - 1, b' ');
        bytes.push(b'\n');
        file.write_all_at(&bytes, (slot * HEAD_SLOT_BYTES) as u64).map_err(write_error)
    }

    /// Reads the newest head that parses. `None` means the file is missing.
    fn read_head(&self) -> Result<Option<Head>, AuditError> {
        let bytes = match fs::read(&self.head) {
            Ok(bytes) => bytes,
            Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(source) => return Err(AuditError::Read { path: self.head.clone(), source }),
        };
        match newest_head(&bytes) {
            Some(head) => Ok(Some(head)),
            None => Err(AuditError::Broken(Break {
                line: 0,
                reason: format!("the signed head {} contains no valid JSON head", self.head.display()),
            })),
        }
    }

    fn read_text(&self) -> Result<String, AuditError> {
        match fs::read_to_string(&self.log) {
            Ok(text) => Ok(text),
            Err(error) if error.kind() == io::ErrorKind::NotFound => Ok(String::new()),
            Err(source) => Err(AuditError::Read { path: self.log.clone(), source }),
        }
    }

    /// Verifies the whole log and the signed head, which must exist.
    pub fn verify(&self) -> Result<Verified, AuditError> {
        let text = self.read_text()?;
        let head = self.read_head()?;
        // The chain is checked first, so damage inside the log is reported
        // with its line even when the head is gone too.
        let verified = verify_lines(text.lines(), &self.key.verifying_key(), head.as_ref())?;
        if head.is_none() {
            return Err(AuditError::Broken(Break {
                line: 0,
                reason: format!("the signed head {} is missing: records may have been cut off or the log replaced", self.head.display()),
            }));
        }
        Ok(verified)
    }

    /// Returns at most `limit` records with a sequence number of at least
    /// `since`, reading the file line by line rather than whole.
    pub fn records_page(&self, since: u64, limit: usize) -> Result<Vec<Record>, AuditError> {
        let file = match File::open(&self.log) {
            Ok(file) => file,
            Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(source) => return Err(AuditError::Read { path: self.log.clone(), source }),
        };
        let mut records = Vec::new();
        for (index, line) in io::BufRead::lines(io::BufReader::new(file)).enumerate() {
            let line = line.map_err(|source| AuditError::Read { path: self.log.clone(), source })?;
            // The sequence number leads each line; skip earlier ones unparsed.
            if let Some(seq) = line.strip_prefix("{\"seq\":").and_then(|rest| rest.split(',').next()).and_then(|n| n.parse::<u64>().ok()) {
                if seq < since {
                    continue;
                }
            }
            let record: Record = serde_json::from_str(&line).map_err(|e| {
                AuditError::Broken(Break { line: index as u64 + 1, reason: format!("not a valid audit record ({e})") })
            })?;
            if record.seq >= since {
                records.push(record);
                if records.len() >= limit {
                    break;
                }
            }
        }
        Ok(records)
    }

    /// Returns the records with a sequence number of at least `since`.
    pub fn records(&self, since: u64) -> Result<Vec<Record>, AuditError> {
        let text = self.read_text()?;
        let mut records = Vec::new();
        for (index, line) in text.lines().enumerate() {
            let record: Record = serde_json::from_str(line).map_err(|e| {
                AuditError::Broken(Break { line: index as u64 + 1, reason: format!("not a valid audit record ({e})") })
            })?;
            if record.seq >= since {
                records.push(record);
            }
        }
        Ok(records)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Scratch(PathBuf);

    impl Scratch {
        fn new(label: &str) -> Scratch {
            let path = std::env::temp_dir().join(format!("mayfly-audit-{label}-{}", std::process::id()));
            let _ = fs::remove_dir_all(&path);
            fs::create_dir_all(&path).unwrap();
            Scratch(path)
        }
    }

    impl Drop for Scratch {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    fn filled(label: &str) -> (Scratch, AuditLog) {
        let scratch = Scratch::new(label);
        let log = AuditLog::open(&scratch.0).unwrap();
        for session in ["s-1", "s-2", "s-3"] {
            log.append(vec![Entry::new("session.started", "cli").session(session)], false).unwrap();
            log.append(vec![Entry::new("session.ended", "cli").session(session).field("reason", "exited")], true).unwrap();
        }
        (scratch, log)
    }

    fn rewrite(log: &AuditLog, change: impl FnOnce(&mut Vec<String>)) {
        let mut lines: Vec<String> = fs::read_to_string(log.path()).unwrap().lines().map(String::from).collect();
        change(&mut lines);
        fs::write(log.path(), lines.iter().map(|l| format!("{l}\n")).collect::<String>()).unwrap();
    }

    #[test]
    fn a_write_torn_by_a_crash_is_cut_and_recorded() {
        let (scratch, log) = filled("torn");
        let mut file = File::options().append(true).open(log.path()).unwrap();
        file.write_all(b"{\"seq\":10,\"time_unix_ms\":1,\"kind\":\"sess").unwrap();
        drop(file);
        let reopened = AuditLog::open(&scratch.0).unwrap();
        let verified = reopened.verify().unwrap();
        assert_eq!(verified.records, 11, "the repair record and its checkpoint follow the 9 records");
        let records = reopened.records(1).unwrap();
        let repair = records.iter().find(|r| r.entry.kind == "audit.tail_repaired").unwrap();
        assert_eq!(repair.entry.fields["torn_bytes"], 39);
        let saved = repair.entry.fields["saved_to"].as_str().unwrap();
        assert_eq!(fs::read(saved).unwrap().len(), 39, "the cut bytes are kept for inspection");
    }

    #[test]
    fn long_last_lines_widen_tail_read() {
        let (scratch, log) = filled("long");
        // A last record longer than the first tail window, then appends.
        let long = "x".repeat(3 * TAIL_GUESS_BYTES);
        log.append(vec![Entry::new("session.started", "cli").session("s-4").field("note", long)], false).unwrap();
        log.append(vec![Entry::new("session.ended", "cli").session("s-4")], true).unwrap();
        assert_eq!(log.verify().unwrap().records, 12);

        // A torn line longer than the first window is cut whole.
        let mut file = File::options().append(true).open(log.path()).unwrap();
        file.write_all(&vec![b'y'; 2 * TAIL_GUESS_BYTES]).unwrap();
        drop(file);
        let reopened = AuditLog::open(&scratch.0).unwrap();
        let records = reopened.records(1).unwrap();
        let repair = records.iter().find(|r| r.entry.kind == "audit.tail_repaired").unwrap();
        assert_eq!(repair.entry.fields["torn_bytes"], 2 * TAIL_GUESS_BYTES);
        assert_eq!(reopened.verify().unwrap().records, 14);
    }

    #[test]
    fn a_record_missing_only_its_newline_is_kept() {
        let (scratch, log) = filled("newline");
        let text = fs::read_to_string(log.path()).unwrap();
        fs::write(log.path(), text.trim_end_matches('\n')).unwrap();
        let reopened = AuditLog::open(&scratch.0).unwrap();
        assert_eq!(reopened.verify().unwrap().records, 9);
        assert!(!reopened.records(1).unwrap().iter().any(|r| r.entry.kind == "audit.tail_repaired"));
    }

    /// Returns the index of the slot that contains the head of seq 8, the
    /// newest one in a log from `filled`.
    fn newest_slot(bytes: &[u8]) -> usize {
        if head_slots(bytes)[0].as_ref().unwrap().seq == 8 { 0 } else { 1 }
    }

    #[test]
    fn checkpoints_alternate_between_head_slots() {
        let (scratch, log) = filled("slots");
        let path = scratch.0.join("audit/head.json");
        let bytes = fs::read(&path).unwrap();
        assert_eq!(bytes.len(), 2 * HEAD_SLOT_BYTES, "the file has both slots and keeps its size");
        let seqs = head_slots(&bytes).map(|head| head.unwrap().seq);
        assert_eq!(seqs.iter().max(), Some(&8), "the newest head names the last checkpoint");
        assert_eq!(seqs.iter().min(), Some(&5), "the other slot keeps the checkpoint before it");
        log.append(vec![Entry::new("session.ended", "cli").session("s-4")], true).unwrap();
        let seqs = head_slots(&fs::read(&path).unwrap()).map(|head| head.unwrap().seq);
        assert_eq!((seqs.iter().min(), seqs.iter().max()), (Some(&8), Some(&10)), "the older slot was overwritten");
        assert_eq!(log.verify().unwrap().signed_head_seq, Some(10));
    }

    #[test]
    fn head_slot_torn_by_crash_leaves_other() {
        let (scratch, log) = filled("tornhead");
        let path = scratch.0.join("audit/head.json");
        let mut bytes = fs::read(&path).unwrap();
        let newest = newest_slot(&bytes);
        bytes[newest * HEAD_SLOT_BYTES..newest * HEAD_SLOT_BYTES + 40].fill(b'#');
        fs::write(&path, &bytes).unwrap();
        assert_eq!(log.verify().unwrap().signed_head_seq, Some(5), "the older head is used");

        bytes.fill(b'#');
        fs::write(&path, &bytes).unwrap();
        let error = log.verify().unwrap_err().to_string();
        assert!(error.contains("contains no valid JSON head"), "{error}");
    }

    #[test]
    fn head_file_of_older_build_is_read() {
        let (scratch, log) = filled("oldhead");
        let path = scratch.0.join("audit/head.json");
        let newest = newest_head(&fs::read(&path).unwrap()).unwrap();
        // Older builds wrote one head, unpadded, through a renamed file.
        fs::write(&path, serde_json::to_vec(&newest).unwrap()).unwrap();
        assert_eq!(log.verify().unwrap().signed_head_seq, Some(8));
        log.append(vec![Entry::new("session.ended", "cli").session("s-4")], true).unwrap();
        let seqs = head_slots(&fs::read(&path).unwrap()).map(|head| head.map(|h| h.seq));
        assert_eq!(seqs, [Some(8), Some(10)]);
        assert_eq!(log.verify().unwrap().signed_head_seq, Some(10));
    }

    #[test]
    fn head_tampered_newest_is_reported() {
        let (scratch, log) = filled("forgedhead");
        let path = scratch.0.join("audit/head.json");
        let bytes = fs::read(&path).unwrap();
        let mut forged = newest_head(&bytes).unwrap();
        forged.seq = 9;
        let mut slot = serde_json::to_vec(&forged).unwrap();
        slot.resize(HEAD_SLOT_BYTES, b' ');
        let newest = newest_slot(&bytes);
        let mut bytes = bytes;
        bytes[newest * HEAD_SLOT_BYTES..(newest + 1) * HEAD_SLOT_BYTES].copy_from_slice(&slot);
        fs::write(&path, &bytes).unwrap();
        assert!(matches!(log.verify(), Err(AuditError::Broken(_))), "a head that parses but fails its check is damage");
    }

    #[test]
    fn unsynced_append_releases_lock() {
        let (_scratch, log) = filled("unsynced");
        let started = log.append_unsynced(vec![Entry::new("session.started", "cli").session("s-4")]).unwrap();
        // Another writer gets the lock before the flush.
        log.append(vec![Entry::new("session.ended", "cli").session("s-4")], true).unwrap();
        let records = started.sync().unwrap();
        assert_eq!(records.len(), 1);
        assert_eq!(records[0].seq, 10);
        let verified = log.verify().unwrap();
        assert_eq!(verified.records, 12);
    }

    #[test]
    fn background_flush_returns_the_records() {
        let (_scratch, log) = filled("background");
        let flushing = log.append_unsynced(vec![Entry::new("session.started", "cli").session("s-6")]).unwrap().flush_in_background();
        assert!(matches!(flushing, Flushing::Started { .. }), "a thread starts the flush");
        // Writers go on while the thread flushes.
        log.append(vec![Entry::new("session.ended", "cli").session("s-6")], true).unwrap();
        let records = flushing.wait().unwrap();
        assert_eq!(records.len(), 1);
        assert_eq!(records[0].seq, 10);
        assert_eq!(log.verify().unwrap().records, 12);
    }

    #[test]
    fn interleaved_writers_keep_chain() {
        let (scratch, first) = filled("interleaved");
        let second = AuditLog::open(&scratch.0).unwrap();
        // Each handle remembers where its last write ended, and must see
        // that the other one wrote since.
        first.append(vec![Entry::new("session.started", "cli").session("s-4")], false).unwrap();
        second.append(vec![Entry::new("session.started", "cli").session("s-5")], true).unwrap();
        let records = first.append(vec![Entry::new("session.ended", "cli").session("s-4")], true).unwrap();
        assert_eq!(records[0].seq, 13);
        let verified = first.verify().unwrap();
        assert_eq!(verified.records, 14);
    }

    #[test]
    fn pages_start_at_a_sequence_number() {
        let (_scratch, log) = filled("pages");
        let page = log.records_page(4, 3).unwrap();
        assert_eq!(page.iter().map(|r| r.seq).collect::<Vec<_>>(), vec![4, 5, 6]);
        assert!(log.records_page(100, 3).unwrap().is_empty());
    }

    #[test]
    fn intact_log_verifies() {
        let (_scratch, log) = filled("intact");
        let verified = log.verify().unwrap();
        assert_eq!(verified.records, 9);
        assert_eq!(verified.checkpoints, 3);
        assert_eq!(verified.signed_head_seq, Some(8));
        assert_eq!(verified.unsigned_tail, 0);
    }

    #[test]
    fn edited_record_is_detected() {
        let (_scratch, log) = filled("edited");
        rewrite(&log, |lines| {
            assert!(lines[4].contains("exited"));
            lines[4] = lines[4].replace("exited", "signaled");
        });
        let error = log.verify().unwrap_err().to_string();
        assert!(error.contains("line 5"), "{error}");
        assert!(error.contains("changed after it was written"), "{error}");
    }

    #[test]
    fn deleted_record_is_detected() {
        let (_scratch, log) = filled("deleted");
        rewrite(&log, |lines| {
            lines.remove(1);
        });
        let error = log.verify().unwrap_err().to_string();
        assert!(error.contains("line 2"), "{error}");
        assert!(error.contains("deleted"), "{error}");
    }

    #[test]
    fn reordered_records_are_detected() {
        let (_scratch, log) = filled("reordered");
        rewrite(&log, |lines| lines.swap(3, 4));
        let error = log.verify().unwrap_err().to_string();
        assert!(error.contains("line 4"), "{error}");
    }

    #[test]
    fn truncation_is_detected() {
        let (_scratch, log) = filled("truncated");
        rewrite(&log, |lines| lines.truncate(5));
        let error = log.verify().unwrap_err().to_string();
        assert!(error.contains("truncated"), "{error}");
    }

    #[test]
    fn forged_checkpoint_is_detected() {
        let (scratch, log) = filled("forged");
        // A whole new log written with another key: every hash is valid, but
        // the checkpoints are not signed with this log's key.
        let other = Scratch::new("forger");
        let forger = AuditLog::open(&other.0).unwrap();
        forger.append(vec![Entry::new("session.started", "cli")], true).unwrap();
        fs::copy(forger.path(), log.path()).unwrap();
        fs::remove_file(scratch.0.join("audit/head.json")).unwrap();
        let error = log.verify().unwrap_err().to_string();
        assert!(error.contains("signature is invalid"), "{error}");
    }

    #[test]
    fn deleted_head_is_detected() {
        let (scratch, log) = filled("nohead");
        rewrite(&log, |lines| lines.truncate(3));
        fs::remove_file(scratch.0.join("audit/head.json")).unwrap();
        let error = log.verify().unwrap_err().to_string();
        assert!(error.contains("signed head"), "{error}");
        assert!(error.contains("missing"), "{error}");
    }

    #[test]
    fn emptied_log_is_detected() {
        let (_scratch, log) = filled("emptied");
        fs::write(log.path(), "").unwrap();
        let error = log.verify().unwrap_err().to_string();
        assert!(error.contains("truncated"), "{error}");
    }

    #[test]
    fn new_log_verifies_empty() {
        let scratch = Scratch::new("new");
        let log = AuditLog::open(&scratch.0).unwrap();
        assert_eq!(log.verify().unwrap().records, 0);
    }

    #[test]
    fn open_existing_creates_nothing() {
        let scratch = Scratch::new("existing");
        assert!(matches!(AuditLog::open_existing(&scratch.0), Err(AuditError::Missing { .. })));
        assert!(!scratch.0.join("audit").exists());
        AuditLog::open(&scratch.0).unwrap();
        fs::remove_file(scratch.0.join("audit/signing.key")).unwrap();
        let error = AuditLog::open_existing(&scratch.0).err().unwrap().to_string();
        assert!(error.contains("signing.key"), "{error}");
    }

    #[test]
    fn damaged_tail_blocks_appends() {
        let (_scratch, log) = filled("tail");
        rewrite(&log, |lines| {
            let last = lines.len() - 1;
            lines[last] = lines[last].replace("checkpoint", "checkpoinT");
        });
        let error = log.append(vec![Entry::new("x", "cli")], false).unwrap_err().to_string();
        assert!(error.contains("hash does not match"), "{error}");
    }

    #[test]
    fn concurrent_first_opens_share_one_key() {
        let scratch = Scratch::new("firstopen");
        let path = scratch.0.clone();
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let path = path.clone();
                std::thread::spawn(move || AuditLog::open(&path).map(|log| log.key.verifying_key()).map_err(|e| e.to_string()))
            })
            .collect();
        let keys: Vec<_> = threads.into_iter().map(|t| t.join().unwrap().unwrap()).collect();
        assert!(keys.windows(2).all(|pair| pair[0] == pair[1]));
    }

    #[test]
    fn appends_continue_the_chain() {
        let (_scratch, log) = filled("continue");
        let records = log.append(vec![Entry::new("x", "cli"), Entry::new("y", "cli")], false).unwrap();
        assert_eq!(records[0].seq, 10);
        assert_eq!(records[1].prev, records[0].hash);
        let verified = log.verify().unwrap();
        assert_eq!(verified.unsigned_tail, 2);
        assert_eq!(log.records(9).unwrap().len(), 3);
    }

    #[test]
    fn concurrent_appends_keep_one_chain() {
        let (scratch, _log) = filled("threads");
        let path = scratch.0.clone();
        let threads: Vec<_> = (0..4)
            .map(|i| {
                let path = path.clone();
                std::thread::spawn(move || {
                    let log = AuditLog::open(&path).unwrap();
                    for j in 0..10 {
                        log.append(vec![Entry::new("x", "cli").field("n", i * 100 + j)], j % 3 == 0).unwrap();
                    }
                })
            })
            .collect();
        for thread in threads {
            thread.join().unwrap();
        }
        let verified = AuditLog::open(&path).unwrap().verify().unwrap();
        assert_eq!(verified.records, 9 + 40 + 16);
    }
}
