//! The threads that move a running session's data: stdio, init's reports
//! and the artifact stream.

use std::fs::File;
use std::io::{self, BufRead, Read, Write};
use std::path::PathBuf;
use std::sync::mpsc;
use std::thread;
use std::time::Instant;

use crate::launch::Starter;
use crate::spec::InitReport;
use crate::transfer::{self, ExportSummary};

/// Copies a stream until end-of-file. Returns whether the last byte copied
/// was something other than a newline.
fn copy_thread(mut from: File, mut to: Box<dyn Write + Send>) -> thread::JoinHandle<bool> {
    thread::spawn(move || {
        let mut buffer = [0u8; 16 * 1024];
        let mut mid_line = false;
        loop {
            match from.read(&mut buffer) {
                Ok(0) => break,
                Ok(n) => {
                    mid_line = buffer[n - 1] != b'\n';
                    if to.write_all(&buffer[..n]).and_then(|()| to.flush()).is_err() {
                        // The reader is gone; keep draining so the command is not blocked.
                        to = Box::new(io::sink());
                    }
                }
                Err(error) if error.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => break,
            }
        }
        mid_line
    })
}

/// The threads that move a running session's data: stdio and the artifact stream.
pub(super) struct Relays {
    pub(super) stdout: thread::JoinHandle<bool>,
    pub(super) stderr: thread::JoinHandle<bool>,
    pub(super) artifacts: Option<thread::JoinHandle<Result<ExportSummary, transfer::TransferError>>>,
}

/// The thread that reads init's reports, and the channel it passes them on.
pub(super) struct Reports {
    pub(super) thread: thread::JoinHandle<()>,
    pub(super) receiver: mpsc::Receiver<InitReport>,
}

/// The supervisor's ends of a sandbox's stdio and artifact pipes.
pub(super) struct Pipes {
    pub(super) stdin: File,
    pub(super) stdout: File,
    pub(super) stderr: File,
    pub(super) artifacts: File,
}

/// Starts the thread that reads init's reports.
pub(super) fn start_reports(reports: File, starter: Starter) -> Reports {
    let (report_sender, report_receiver) = mpsc::channel::<InitReport>();
    let report_thread = thread::spawn(move || {
        // The starter exits right after the launch. Reaping it here keeps
        // the wait off the launch's path.
        drop(starter);
        for line in io::BufReader::new(reports).lines() {
            let Ok(line) = line else { break };
            if let Ok(report) = serde_json::from_str::<InitReport>(&line) {
                let _ = report_sender.send(report);
            }
        }
    });
    Reports { thread: report_thread, receiver: report_receiver }
}

/// Starts the relay threads. The stdin thread is detached: it may block on
/// the caller's input after the session has ended.
pub(super) fn start_relays(
    pipes: Pipes,
    stdin: Box<dyn Read + Send>,
    stdout: Box<dyn Write + Send>,
    stderr: Box<dyn Write + Send>,
    artifacts: Option<(PathBuf, u64)>,
) -> Relays {
    let stdout_thread = copy_thread(pipes.stdout, stdout);
    let stderr_thread = copy_thread(pipes.stderr, stderr);
    let mut stdin = stdin;
    let mut stdin_pipe = pipes.stdin;
    thread::spawn(move || {
        let _ = io::copy(&mut stdin, &mut stdin_pipe);
    });
    let artifacts_pipe = pipes.artifacts;
    let artifacts_thread = artifacts.map(|(dir, limit)| {
        thread::spawn(move || {
            let mut pipe = artifacts_pipe;
            let result = transfer::read_artifacts(&mut pipe, &dir, limit);
            // After an error, drain the rest so that init never blocks on a full pipe.
            let _ = io::copy(&mut pipe, &mut io::sink());
            result
        })
    });
    Relays { stdout: stdout_thread, stderr: stderr_thread, artifacts: artifacts_thread }
}

/// Collects init's reports until the end report arrives, `until` passes or
/// init closes its report pipe. Returns whether the end report arrived.
pub(super) fn wait_for_end_report(receiver: &mpsc::Receiver<InitReport>, until: Instant, received: &mut Vec<InitReport>) -> bool {
    loop {
        match receiver.recv_timeout(until.saturating_duration_since(Instant::now())) {
            Ok(report) => {
                let is_end = matches!(report, InitReport::Ended { .. });
                received.push(report);
                if is_end {
                    return true;
                }
            }
            Err(_) => return false,
        }
    }
}
