//! Running one command with a timeout and measuring its wall time.

use std::fmt;
use std::io;
use std::os::fd::{AsFd, FromRawFd, OwnedFd};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use nix::poll::{PollFd, PollFlags, PollTimeout};

/// Time after which one run is killed and counted as failed, so a hung
/// runtime cannot stop the bench from finishing.
pub(super) const RUN_TIMEOUT: Duration = Duration::from_secs(30);
/// Time a run that timed out gets between SIGTERM and SIGKILL to clean up.
const KILL_GRACE: Duration = Duration::from_secs(5);

#[derive(Debug)]
pub(super) enum RunFailure {
    Spawn(io::Error),
    Wait(io::Error),
    Exit(ExitStatus),
    TimedOut(Duration),
}

impl fmt::Display for RunFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RunFailure::Spawn(error) => write!(f, "failed to start: {error}"),
            RunFailure::Wait(error) => write!(f, "failed to wait for the process: {error}"),
            RunFailure::Exit(status) => write!(f, "{status}"),
            RunFailure::TimedOut(timeout) => write!(f, "timed out after {} s and was stopped", timeout.as_secs_f64()),
        }
    }
}

/// Runs `command` with null stdio and returns the wall time from spawn to
/// reaping its exit. Kills it when it runs longer than `timeout`.
pub(super) fn time_run(command: &mut Command, timeout: Duration) -> Result<Duration, RunFailure> {
    command.stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::null());
    let started = Instant::now();
    let mut child = command.spawn().map_err(RunFailure::Spawn)?;
    let exited = match wait_exit(&child, timeout) {
        Ok(exited) => exited,
        Err(error) => {
            stop_and_reap(&mut child);
            return Err(RunFailure::Wait(error));
        }
    };
    if !exited {
        stop_and_reap(&mut child);
        return Err(RunFailure::TimedOut(timeout));
    }
    let status = child.wait().map_err(RunFailure::Wait)?;
    let elapsed = started.elapsed();
    if status.success() {
        Ok(elapsed)
    } else {
        Err(RunFailure::Exit(status))
    }
}

/// Sends SIGTERM, so the runtime can tear its sandbox down, then SIGKILL
/// after `KILL_GRACE`, and reaps the process.
fn stop_and_reap(child: &mut Child) {
    let pid = nix::unistd::Pid::from_raw(child.id() as libc::pid_t);
    let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
    if !wait_exit(child, KILL_GRACE).unwrap_or(false) {
        let _ = child.kill();
    }
    let _ = child.wait();
}

/// Waits until `child` exits or `timeout` passes, without reaping it, and
/// returns whether it exited.
fn wait_exit(child: &Child, timeout: Duration) -> io::Result<bool> {
    // SAFETY: pidfd_open takes a pid and flags, and returns a new descriptor or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, child.id() as libc::pid_t, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the descriptor was just created and nothing else owns it.
    let pidfd = unsafe { OwnedFd::from_raw_fd(fd as i32) };
    let started = Instant::now();
    loop {
        let left = PollTimeout::try_from(timeout.saturating_sub(started.elapsed())).unwrap_or(PollTimeout::MAX);
        let mut fds = [PollFd::new(pidfd.as_fd(), PollFlags::POLLIN)];
        match nix::poll::poll(&mut fds, left) {
            Ok(0) => return Ok(false),
            Ok(_) => return Ok(true),
            Err(nix::errno::Errno::EINTR) => continue,
            Err(errno) => return Err(errno.into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn time_run_reports_exit_status() {
        let elapsed = time_run(&mut Command::new("/bin/true"), RUN_TIMEOUT).expect("/bin/true succeeds");
        assert!(elapsed > Duration::ZERO);
        let failure = time_run(&mut Command::new("/bin/false"), RUN_TIMEOUT).expect_err("/bin/false fails");
        assert!(matches!(failure, RunFailure::Exit(status) if status.code() == Some(1)), "{failure:?}");
        let missing = time_run(&mut Command::new("/nonexistent/program"), RUN_TIMEOUT).expect_err("a missing program fails");
        assert!(matches!(missing, RunFailure::Spawn(_)), "{missing:?}");
    }

    #[test]
    fn time_run_kills_at_timeout() {
        let started = Instant::now();
        let failure = time_run(Command::new("/bin/sleep").arg("5"), Duration::from_millis(100)).expect_err("sleep 5 times out");
        assert!(matches!(failure, RunFailure::TimedOut(_)), "{failure:?}");
        assert!(started.elapsed() < Duration::from_secs(4), "the run was not killed at the timeout");
        assert_eq!(failure.to_string(), "timed out after 0.1 s and was stopped");
    }

    #[test]
    fn wait_exit_times_out() {
        let mut child = Command::new("/bin/sleep").arg("5").spawn().expect("sleep starts");
        assert!(!wait_exit(&child, Duration::from_millis(50)).expect("pidfd works"));
        stop_and_reap(&mut child);
    }
}
