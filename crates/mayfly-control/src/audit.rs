//! The control plane's side of the audit log: appends from async code,
//! grouped so that concurrent requests share one flush to disk, signed
//! checkpoints at a steady pace, and whether the log is writable.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use mayfly_audit::{AuditError, AuditLog, Break, Entry};
use tokio::sync::{mpsc, oneshot};

/// Records between two signed checkpoints, at most.
const CHECKPOINT_EVERY: u64 = 32;
/// Requests waiting for the writer, at most; more wait to be queued.
const QUEUE: usize = 1024;

struct Request {
    entries: Vec<Entry>,
    checkpoint: bool,
    done: oneshot::Sender<Result<(), AuditError>>,
}

#[derive(Clone)]
pub struct Auditor {
    log: Arc<AuditLog>,
    queue: mpsc::Sender<Request>,
    state: Arc<State>,
}

struct State {
    writable: AtomicBool,
    since_checkpoint: AtomicU64,
    appended: AtomicU64,
}

fn writer_gone() -> AuditError {
    AuditError::Broken(Break { line: 0, reason: "the audit writer stopped".into() })
}

/// Appends every waiting request in one write and one flush, then tells
/// each request the result. A failed group fails every request in it.
fn write_groups(log: Arc<AuditLog>, state: Arc<State>, mut queue: mpsc::Receiver<Request>) {
    while let Some(first) = queue.blocking_recv() {
        let mut group = vec![first];
        while let Ok(next) = queue.try_recv() {
            group.push(next);
        }
        let count: u64 = group.iter().map(|r| r.entries.len() as u64).sum();
        let since = state.since_checkpoint.load(Ordering::Relaxed) + count;
        let checkpoint = group.iter().any(|r| r.checkpoint) || since >= CHECKPOINT_EVERY;
        let entries: Vec<Entry> = group.iter_mut().flat_map(|r| std::mem::take(&mut r.entries)).collect();
        let result = log.append(entries, checkpoint).map(|_| ());
        match &result {
            Ok(()) => {
                state.since_checkpoint.store(if checkpoint { 0 } else { since }, Ordering::Relaxed);
                state.appended.fetch_add(count, Ordering::Relaxed);
                state.writable.store(true, Ordering::Relaxed);
            }
            Err(error) => {
                tracing::error!(error = %error, "the audit log cannot be written");
                state.writable.store(false, Ordering::Relaxed);
            }
        }
        for request in group {
            let _ = request.done.send(match &result {
                Ok(()) => Ok(()),
                Err(error) => Err(AuditError::Broken(Break { line: 0, reason: error.to_string() })),
            });
        }
    }
}

impl Auditor {
    /// Opens the log and starts its writer thread.
    pub fn open(state_dir: &std::path::Path) -> Result<Auditor, AuditError> {
        let log = Arc::new(AuditLog::open(state_dir)?);
        let state = Arc::new(State { writable: AtomicBool::new(true), since_checkpoint: AtomicU64::new(0), appended: AtomicU64::new(0) });
        let (queue, receiver) = mpsc::channel(QUEUE);
        let (writer_log, writer_state) = (Arc::clone(&log), Arc::clone(&state));
        std::thread::Builder::new()
            .name("mayfly-audit".into())
            .spawn(move || write_groups(writer_log, writer_state, receiver))
            .map_err(|e| AuditError::Broken(Break { line: 0, reason: format!("cannot start the audit writer: {e}") }))?;
        Ok(Auditor { log, queue, state })
    }

    pub fn log(&self) -> &Arc<AuditLog> {
        &self.log
    }

    /// Whether the last append succeeded; `/readyz` reports it.
    pub fn writable(&self) -> bool {
        self.state.writable.load(Ordering::Relaxed)
    }

    /// Records appended by this process.
    pub fn appended(&self) -> u64 {
        self.state.appended.load(Ordering::Relaxed)
    }

    /// Appends entries and returns once they are flushed to disk. A signed
    /// checkpoint follows when `checkpoint` is set or enough records have
    /// passed since the last.
    pub async fn record(&self, entries: Vec<Entry>, checkpoint: bool) -> Result<(), AuditError> {
        let (done, result) = oneshot::channel();
        self.queue.send(Request { entries, checkpoint, done }).await.map_err(|_| writer_gone())?;
        result.await.unwrap_or_else(|_| Err(writer_gone()))
    }

    /// Appends one entry.
    pub async fn one(&self, entry: Entry) -> Result<(), AuditError> {
        self.record(vec![entry], false).await
    }

    /// Writes a checkpoint when records were appended since the last one.
    pub async fn checkpoint_if_needed(&self) -> Result<(), AuditError> {
        if self.state.since_checkpoint.load(Ordering::Relaxed) == 0 {
            return Ok(());
        }
        self.record(Vec::new(), true).await
    }
}
