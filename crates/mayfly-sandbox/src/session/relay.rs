//! The threads that move a running session's data: stdio, init's reports
//! and the artifact stream.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{self, BufRead, Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::path::PathBuf;
use std::sync::mpsc;
use std::thread;
use std::time::Instant;

use nix::poll::{poll, PollFd, PollFlags, PollTimeout};

use crate::launch::Starter;
use crate::spec::InitReport;
use crate::teardown::{self, HeldNamespaces};
use crate::transfer::{self, ExportSummary};

use super::{wait_exit, EXIT_AFTER_REPORT};

/// The caller's end of one of the command's output streams.
struct Output {
    from: File,
    to: Box<dyn Write + Send>,
    open: bool,
    /// Whether the last byte copied was something other than a newline.
    mid_line: bool,
}

impl Output {
    /// Copies what one read returns. Closes the stream at end-of-file or
    /// on a read error.
    fn copy_once(&mut self, buffer: &mut [u8]) {
        match self.from.read(buffer) {
            Ok(0) => self.open = false,
            Ok(n) => {
                self.mid_line = buffer[n - 1] != b'\n';
                if self.to.write_all(&buffer[..n]).and_then(|()| self.to.flush()).is_err() {
                    // The reader is gone. Draining goes on, so that the command does not block.
                    self.to = Box::new(io::sink());
                }
            }
            Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => self.open = false,
        }
    }
}

/// Runs `work` on a thread that nothing joins, and returns the channel on
/// which its result comes. The channel disconnects without a result when
/// `work` panics. Joining or detaching a thread that has exited unmaps its
/// stack in the calling thread, which then waits while the kernel
/// interrupts the process's other CPU, and teardown would wait with it.
fn spawn_detached<T: Send + 'static>(work: impl FnOnce() -> T + Send + 'static) -> mpsc::Receiver<T> {
    let (sender, receiver) = mpsc::sync_channel(1);
    drop(thread::spawn(move || {
        let _ = sender.send(work());
    }));
    receiver
}

/// Copies the command's standard output and error on one thread until both
/// reach end-of-file. Sends whether standard error's last byte was
/// something other than a newline.
fn copy_outputs(stdout: Output, stderr: Output) -> mpsc::Receiver<bool> {
    spawn_detached(move || {
        let mut outputs = [stdout, stderr];
        let mut buffer = [0u8; 16 * 1024];
        loop {
            let ready = match (outputs[0].open, outputs[1].open) {
                (false, false) => break,
                // With one stream left, a blocking read waits for it alone.
                (true, false) => [true, false],
                (false, true) => [false, true],
                (true, true) => {
                    let mut fds = [PollFd::new(outputs[0].from.as_fd(), PollFlags::POLLIN), PollFd::new(outputs[1].from.as_fd(), PollFlags::POLLIN)];
                    match poll(&mut fds, PollTimeout::NONE) {
                        Ok(_) => fds.map(|fd| fd.revents().is_some_and(|events| !events.is_empty())),
                        Err(nix::errno::Errno::EINTR) => continue,
                        // Without poll, blocking reads in turn still copy everything.
                        Err(_) => [true, true],
                    }
                }
            };
            for (output, ready) in outputs.iter_mut().zip(ready) {
                if ready {
                    output.copy_once(&mut buffer);
                }
            }
        }
        let [_, stderr] = outputs;
        stderr.mid_line
    })
}

/// The results of the threads that move a running session's data: stdio
/// and the artifact stream.
pub(super) struct Relays {
    /// Whether standard error ended mid-line, once both streams ended.
    pub(super) outputs: mpsc::Receiver<bool>,
    pub(super) artifacts: Option<mpsc::Receiver<Result<ExportSummary, transfer::TransferError>>>,
}

/// The thread that reads init's reports, and the channels it passes them
/// and its scan on.
pub(super) struct Reports {
    /// The held namespaces when init ended without an end report, sent
    /// when the thread ends.
    pub(super) held_namespaces: mpsc::Receiver<Option<HeldNamespaces>>,
    pub(super) receiver: mpsc::Receiver<InitReport>,
    /// The scan for namespace holders that follows an end report.
    pub(super) scan: mpsc::Receiver<Vec<String>>,
    /// A channel that disconnects once the held mount namespace is closed.
    pub(super) released: mpsc::Receiver<()>,
}

/// The reports thread's work on the supervisor's references to the
/// session's namespaces, once init has ended.
pub(super) enum NamespaceRelease {
    /// After the end report, scan the host for the namespaces' holders,
    /// then close the references, which kept the namespaces' numbers from
    /// being reused during the scan.
    ScanThenClose(HeldNamespaces),
    /// Close the mount namespace once init has exited. Teardown then checks
    /// the namespaces' handles.
    CloseAfterExit { mount: File, pidfd: OwnedFd },
}

/// The supervisor's ends of a sandbox's stdio and artifact pipes.
pub(super) struct Pipes {
    pub(super) stdin: File,
    pub(super) stdout: File,
    pub(super) stderr: File,
    pub(super) artifacts: File,
}

/// Starts the thread that reads init's reports.
///
/// Init reports the end after it has killed and reaped every other session
/// process. So after that report, this thread scans the host for processes
/// in the session's `namespaces` other than init while init exits, or
/// closes the mount namespace once init has exited (see
/// [`NamespaceRelease`]). Without an end report, it returns held
/// namespaces for the teardown's own scan.
pub(super) fn start_reports(reports: File, starter: Starter, namespaces: BTreeMap<String, String>, init_pid: i32, release: Option<NamespaceRelease>) -> Reports {
    let (report_sender, report_receiver) = mpsc::channel::<InitReport>();
    let (scan_sender, scan_receiver) = mpsc::channel();
    let (released_sender, released_receiver) = mpsc::channel::<()>();
    let held_namespaces = spawn_detached(move || {
        let close_after_exit = |mount: File, pidfd: OwnedFd| {
            // Init exits right after its end report, or has exited when
            // its report pipe closed.
            wait_exit(&pidfd, EXIT_AFTER_REPORT);
            drop(mount);
            drop(released_sender);
        };
        // The starter exits right after the launch. Reaping it here keeps
        // the wait off the launch's path.
        drop(starter);
        for line in io::BufReader::new(reports).lines() {
            let Ok(line) = line else { break };
            let Ok(report) = serde_json::from_str::<InitReport>(&line) else { continue };
            let is_end = matches!(report, InitReport::Ended { .. });
            let _ = report_sender.send(report);
            if is_end {
                match release {
                    Some(NamespaceRelease::ScanThenClose(held_namespaces)) => {
                        let _ = scan_sender.send(teardown::find_namespace_holders(&namespaces, Some(init_pid)));
                        // Closing the last reference to a mount namespace
                        // waits for an RCU grace period, and the teardown
                        // does not wait for it.
                        drop(held_namespaces);
                    }
                    Some(NamespaceRelease::CloseAfterExit { mount, pidfd }) => close_after_exit(mount, pidfd),
                    None => {}
                }
                return None;
            }
        }
        match release {
            Some(NamespaceRelease::ScanThenClose(held_namespaces)) => Some(held_namespaces),
            Some(NamespaceRelease::CloseAfterExit { mount, pidfd }) => {
                close_after_exit(mount, pidfd);
                None
            }
            None => None,
        }
    });
    Reports { held_namespaces, receiver: report_receiver, scan: scan_receiver, released: released_receiver }
}

/// Starts the relay threads. The stdin thread is detached: it may block on
/// the caller's input after the session has ended. Without input, the
/// command reads end-of-file at once and no stdin thread starts.
pub(super) fn start_relays(
    pipes: Pipes,
    stdin: Option<Box<dyn Read + Send>>,
    stdout: Box<dyn Write + Send>,
    stderr: Box<dyn Write + Send>,
    artifacts: Option<(PathBuf, u64)>,
) -> Relays {
    let output = |from: File, to: Box<dyn Write + Send>| Output { from, to, open: true, mid_line: false };
    let outputs = copy_outputs(output(pipes.stdout, stdout), output(pipes.stderr, stderr));
    let mut stdin_pipe = pipes.stdin;
    if let Some(mut stdin) = stdin {
        thread::spawn(move || {
            let _ = io::copy(&mut stdin, &mut stdin_pipe);
        });
    }
    let artifacts_pipe = pipes.artifacts;
    let artifacts_thread = artifacts.map(|(dir, limit)| {
        spawn_detached(move || {
            let mut pipe = artifacts_pipe;
            let result = transfer::read_artifacts(&mut pipe, &dir, limit);
            // After an error, drain the rest so that init never blocks on a full pipe.
            let _ = io::copy(&mut pipe, &mut io::sink());
            result
        })
    });
    Relays { outputs, artifacts: artifacts_thread }
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
