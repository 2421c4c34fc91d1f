//! The control plane's side of the audit log: appends from async code,
//! signed checkpoints at a steady pace, and whether the log is writable.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use mayfly_audit::{AuditError, AuditLog, Entry};

/// Records between two signed checkpoints, at most.
const CHECKPOINT_EVERY: u64 = 32;

pub struct Auditor {
    log: Arc<AuditLog>,
    writable: AtomicBool,
    since_checkpoint: AtomicU64,
    appended: AtomicU64,
}

impl Auditor {
    pub fn open(state_dir: &std::path::Path) -> Result<Auditor, AuditError> {
        Ok(Auditor {
            log: Arc::new(AuditLog::open(state_dir)?),
            writable: AtomicBool::new(true),
            since_checkpoint: AtomicU64::new(0),
            appended: AtomicU64::new(0),
        })
    }

    pub fn log(&self) -> &Arc<AuditLog> {
        &self.log
    }

    /// Whether the last append succeeded; `/readyz` reports it.
    pub fn writable(&self) -> bool {
        self.writable.load(Ordering::Relaxed)
    }

    /// Records appended by this process.
    pub fn appended(&self) -> u64 {
        self.appended.load(Ordering::Relaxed)
    }

    /// Appends entries and flushes them to disk; a signed checkpoint follows
    /// when `checkpoint` is set or enough records have passed since the last.
    pub async fn record(&self, entries: Vec<Entry>, checkpoint: bool) -> Result<(), AuditError> {
        let count = entries.len() as u64;
        let since = self.since_checkpoint.fetch_add(count, Ordering::Relaxed) + count;
        let checkpoint = checkpoint || since >= CHECKPOINT_EVERY;
        let log = Arc::clone(&self.log);
        let result = tokio::task::spawn_blocking(move || log.append(entries, checkpoint))
            .await
            .unwrap_or_else(|e| Err(AuditError::Broken(mayfly_audit::Break { line: 0, reason: format!("the audit writer panicked: {e}") })));
        match &result {
            Ok(_) => {
                if checkpoint {
                    self.since_checkpoint.store(0, Ordering::Relaxed);
                }
                self.appended.fetch_add(count, Ordering::Relaxed);
                self.writable.store(true, Ordering::Relaxed);
            }
            Err(error) => {
                tracing::error!(error = %error, "the audit log cannot be written");
                self.writable.store(false, Ordering::Relaxed);
            }
        }
        result.map(|_| ())
    }

    /// Appends one entry.
    pub async fn one(&self, entry: Entry) -> Result<(), AuditError> {
        self.record(vec![entry], false).await
    }

    /// Writes a checkpoint when records were appended since the last one.
    pub async fn checkpoint_if_needed(&self) -> Result<(), AuditError> {
        if self.since_checkpoint.load(Ordering::Relaxed) == 0 {
            return Ok(());
        }
        self.record(Vec::new(), true).await
    }
}
