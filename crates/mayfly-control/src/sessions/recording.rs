//! Recording a shell session's terminal as an asciicast v2 file, written
//! outside the sandbox as the output arrives. When the session ends the
//! file's SHA-256 goes into the audit log, and a recording that could not be
//! completed is recorded there as incomplete.

use std::fs::File;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::Instant;

use mayfly_sandbox::terminal::WindowSize;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

pub struct Recorder {
    file: File,
    path: PathBuf,
    started: Instant,
    /// Bytes of a character split across two output chunks.
    pending: Vec<u8>,
    bytes: u64,
    error: Option<String>,
    closed: bool,
}

/// The facts of a finished recording, kept beside it as `ID.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Summary {
    pub session_id: String,
    pub complete: bool,
    pub error: Option<String>,
    pub bytes: u64,
    pub sha256: Option<String>,
    pub expires_unix_ms: i64,
}

pub fn path(dir: &Path, session_id: &str) -> PathBuf {
    dir.join(format!("{session_id}.cast"))
}

fn meta_path(dir: &Path, session_id: &str) -> PathBuf {
    dir.join(format!("{session_id}.json"))
}

impl Recorder {
    /// Creates the file and writes the asciicast header.
    pub fn create(dir: &Path, session_id: &str, size: WindowSize, term: &str, unix_seconds: i64) -> std::io::Result<Recorder> {
        std::fs::DirBuilder::new().recursive(true).create(dir)?;
        let path = path(dir, session_id);
        let mut file = File::options().write(true).create_new(true).mode(0o600).open(&path)?;
        let header = serde_json::json!({
            "version": 2,
            "width": size.cols,
            "height": size.rows,
            "timestamp": unix_seconds,
            "env": { "TERM": term },
        });
        let line = format!("{header}\n");
        file.write_all(line.as_bytes())?;
        Ok(Recorder { file, path, started: Instant::now(), pending: Vec::new(), bytes: line.len() as u64, error: None, closed: false })
    }

    fn event(&mut self, kind: &str, data: &str) {
        if self.error.is_some() || self.closed {
            return;
        }
        // Microseconds are plenty, and rounding keeps float noise out of the file.
        let seconds = (self.started.elapsed().as_secs_f64() * 1e6).round() / 1e6;
        let line = format!("{}\n", serde_json::json!([seconds, kind, data]));
        match self.file.write_all(line.as_bytes()) {
            Ok(()) => self.bytes += line.len() as u64,
            Err(error) => self.error = Some(format!("writing {} failed: {error}", self.path.display())),
        }
    }

    /// Records terminal output. A character split between two chunks is
    /// held back until its end arrives.
    pub fn output(&mut self, data: &[u8]) {
        self.pending.extend_from_slice(data);
        let valid = match std::str::from_utf8(&self.pending) {
            Ok(_) => self.pending.len(),
            Err(error) if error.error_len().is_none() => error.valid_up_to(),
            Err(_) => self.pending.len(),
        };
        let chunk: Vec<u8> = self.pending.drain(..valid).collect();
        let text = String::from_utf8_lossy(&chunk).into_owned();
        if !text.is_empty() {
            self.event("o", &text);
        }
    }

    pub fn resize(&mut self, size: WindowSize) {
        self.event("r", &format!("{}x{}", size.cols, size.rows));
    }

    /// Flushes the file to disk and returns its summary. Later output and
    /// resizes are not recorded.
    pub fn finish(&mut self, dir: &Path, session_id: &str, expires_unix_ms: i64) -> Summary {
        if !self.pending.is_empty() {
            let rest = String::from_utf8_lossy(&std::mem::take(&mut self.pending)).into_owned();
            self.event("o", &rest);
        }
        self.closed = true;
        if self.error.is_none() {
            if let Err(error) = self.file.sync_all() {
                self.error = Some(format!("flushing {} failed: {error}", self.path.display()));
            }
        }
        let sha256 = std::fs::read(&self.path).ok().map(|bytes| mayfly_audit::hex(&Sha256::digest(&bytes)));
        let summary = Summary {
            session_id: session_id.to_string(),
            complete: self.error.is_none() && sha256.is_some(),
            error: self.error.clone(),
            bytes: self.bytes,
            sha256,
            expires_unix_ms,
        };
        let _ = std::fs::write(meta_path(dir, session_id), serde_json::to_vec(&summary).expect("summaries serialize"));
        summary
    }
}

/// Deletes recordings whose retention has passed; returns the session ids.
pub fn prune(dir: &Path, now_unix_ms: i64) -> Vec<String> {
    let Ok(entries) = std::fs::read_dir(dir) else { return Vec::new() };
    let mut removed = Vec::new();
    for entry in entries.filter_map(Result::ok) {
        let meta = entry.path();
        if meta.extension().is_none_or(|e| e != "json") {
            continue;
        }
        let Ok(summary) = std::fs::read(&meta).map_err(|_| ()).and_then(|b| serde_json::from_slice::<Summary>(&b).map_err(|_| ())) else { continue };
        if summary.expires_unix_ms <= now_unix_ms {
            let _ = std::fs::remove_file(path(dir, &summary.session_id));
            let _ = std::fs::remove_file(&meta);
            removed.push(summary.session_id);
        }
    }
    removed
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recordings_are_asciicast_with_split_characters_joined() {
        let dir = crate::testing::temp_dir("recording");
        let mut recorder = Recorder::create(&dir, "s-1", WindowSize { rows: 24, cols: 80 }, "xterm", 1).unwrap();
        let euro = "€".as_bytes();
        recorder.output(&[b'a', euro[0]]);
        recorder.output(&euro[1..]);
        recorder.resize(WindowSize { rows: 40, cols: 100 });
        let summary = recorder.finish(&dir, "s-1", 10);
        assert!(summary.complete);
        let text = std::fs::read_to_string(path(&dir, "s-1")).unwrap();
        let lines: Vec<serde_json::Value> = text.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
        assert_eq!(lines[0]["version"], 2);
        assert_eq!(lines[1][1], "o");
        assert_eq!(lines[1][2], "a");
        assert_eq!(lines[2][2], "€", "the split character arrives whole");
        assert_eq!(lines[3][1], "r");
        assert_eq!(lines[3][2], "100x40");
        assert_eq!(summary.sha256.as_deref(), Some(mayfly_audit::hex(&Sha256::digest(text.as_bytes())).as_str()));
        assert_eq!(prune(&dir, 9), Vec::<String>::new());
        assert_eq!(prune(&dir, 10), vec!["s-1".to_string()]);
        assert!(!path(&dir, "s-1").exists());
        std::fs::remove_dir_all(dir).unwrap();
    }
}
