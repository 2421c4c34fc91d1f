//! The anchor of the shell bench: the shell command of the `shell` profile on
//! a plain pseudo-terminal of the host, with no sandbox and no WebSocket.

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use nix::fcntl::{fcntl, FcntlArg, FdFlag};
use nix::poll::{PollFd, PollFlags, PollTimeout};
use nix::pty::{openpty, Winsize};

use super::terminal_echo::EchoTerminal;

/// Window size of the anchor's terminal: the API's default for a shell.
const WINDOW: Winsize = Winsize { ws_row: 24, ws_col: 80, ws_xpixel: 0, ws_ypixel: 0 };
/// Time the shell gets to exit after the hangup before it is killed.
const EXIT_GRACE: Duration = Duration::from_secs(2);

pub(super) struct HostShell {
    master: Option<File>,
    child: Child,
}

fn set_cloexec(fd: &OwnedFd) -> Result<(), String> {
    fcntl(fd, FcntlArg::F_SETFD(FdFlag::FD_CLOEXEC)).map(drop).map_err(|e| format!("fcntl(FD_CLOEXEC) on a pseudo-terminal: {e}"))
}

impl HostShell {
    /// Starts `argv` on a new pseudo-terminal as the leader of a new session,
    /// with `env` as its whole environment and `home` as its working directory.
    pub(super) fn spawn(argv: &[String], env: &[(String, String)], home: &Path) -> Result<HostShell, String> {
        let (program, args) = argv.split_first().ok_or("the shell profile has an empty command")?;
        let pty = openpty(&WINDOW, None).map_err(|e| format!("openpty: {e}"))?;
        set_cloexec(&pty.master)?;
        set_cloexec(&pty.slave)?;
        let stdio = |fd: &OwnedFd| fd.try_clone().map(Stdio::from).map_err(|e| format!("cannot duplicate the pseudo-terminal: {e}"));
        let mut command = Command::new(program);
        command.args(args).env_clear().envs(env.iter().map(|(k, v)| (k, v))).current_dir(home);
        command.stdin(stdio(&pty.slave)?).stdout(stdio(&pty.slave)?).stderr(stdio(&pty.slave)?);
        // SAFETY: the closure only calls setsid and ioctl, which are
        // async-signal-safe, and allocates nothing.
        unsafe {
            command.pre_exec(|| {
                if libc::setsid() < 0 || libc::ioctl(0, libc::TIOCSCTTY, 0) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = command.spawn().map_err(|e| format!("cannot start {program} on a host pseudo-terminal: {e}"))?;
        drop(pty.slave);
        Ok(HostShell { master: Some(File::from(pty.master)), child })
    }

    pub(super) fn pid(&self) -> u32 {
        self.child.id()
    }

    fn master(&mut self) -> &mut File {
        self.master.as_mut().expect("the master stays open until drop")
    }
}

impl EchoTerminal for HostShell {
    fn send(&mut self, bytes: &[u8]) -> Result<(), String> {
        self.master().write_all(bytes).map_err(|e| format!("writing to the host pseudo-terminal failed: {e}"))
    }

    fn receive(&mut self, timeout: Duration) -> Result<Option<Vec<u8>>, String> {
        let master = self.master();
        let ready = {
            let mut fds = [PollFd::new(master.as_fd(), PollFlags::POLLIN)];
            let timeout = PollTimeout::try_from(timeout).unwrap_or(PollTimeout::MAX);
            nix::poll::poll(&mut fds, timeout).map_err(|e| format!("poll on the host pseudo-terminal failed: {e}"))?
        };
        if ready == 0 {
            return Ok(None);
        }
        let mut buffer = [0u8; 4096];
        match master.read(&mut buffer) {
            Ok(0) => Err("the host shell closed its terminal".into()),
            Ok(count) => Ok(Some(buffer[..count].to_vec())),
            Err(error) => Err(format!("reading the host pseudo-terminal failed: {error}")),
        }
    }
}

impl Drop for HostShell {
    /// Closes the master, which hangs up the shell, and reaps the shell. A
    /// shell that has not exited after `EXIT_GRACE` is killed.
    fn drop(&mut self) {
        drop(self.master.take());
        let started = Instant::now();
        while started.elapsed() < EXIT_GRACE {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
