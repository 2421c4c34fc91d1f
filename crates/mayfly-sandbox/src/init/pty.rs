//! The pseudo-terminal of a terminal session, on init's side: creating the
//! pair in the sandbox's devpts, and the two threads that move bytes between
//! the master and the supervisor's pipes.

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::PathBuf;

use nix::fcntl::OFlag;
use nix::pty::{grantpt, posix_openpt, ptsname_r, unlockpt};

use crate::terminal::{read_frame, Frame, WindowSize};

/// Sets the window size on the master; the kernel sends SIGWINCH to the
/// terminal's foreground process group.
pub fn set_size(master: &impl AsRawFd, size: WindowSize) {
    let winsize = libc::winsize { ws_row: size.rows, ws_col: size.cols, ws_xpixel: 0, ws_ypixel: 0 };
    // SAFETY: TIOCSWINSZ reads one winsize that lives on this stack.
    unsafe { libc::ioctl(master.as_raw_fd(), libc::TIOCSWINSZ, &winsize) };
}

/// Opens a new pseudo-terminal pair and returns the master and the slave's path.
pub fn open(size: WindowSize) -> Result<(OwnedFd, PathBuf), String> {
    let master = posix_openpt(OFlag::O_RDWR | OFlag::O_NOCTTY | OFlag::O_CLOEXEC).map_err(|e| format!("posix_openpt: {e}"))?;
    grantpt(&master).map_err(|e| format!("grantpt: {e}"))?;
    unlockpt(&master).map_err(|e| format!("unlockpt: {e}"))?;
    let path = ptsname_r(&master).map_err(|e| format!("ptsname: {e}"))?;
    set_size(&master, size);
    Ok((master.into(), PathBuf::from(path)))
}

/// Starts the copies between the master and the supervisor's pipes: framed
/// input from `input` into the master, and the master's output into
/// `output`. Both end by themselves when their source ends. The returned
/// receiver disconnects once the output copy has drained the master.
pub fn relay(master: OwnedFd, mut input: File, mut output: File) -> std::sync::mpsc::Receiver<()> {
    let (drained, done) = std::sync::mpsc::channel::<()>();
    let Ok(writer) = master.try_clone() else { return done };
    let mut writer = File::from(writer);
    let resizer = writer.try_clone();
    std::thread::spawn(move || loop {
        match read_frame(&mut input) {
            Ok(Some(Frame::Input(bytes))) => {
                if writer.write_all(&bytes).is_err() {
                    return;
                }
            }
            Ok(Some(Frame::Resize(size))) => {
                if let Ok(master) = &resizer {
                    set_size(master, size);
                }
            }
            Ok(None) | Err(_) => return,
        }
    });
    let mut reader = File::from(master);
    std::thread::spawn(move || {
        let _drained = drained;
        let mut buffer = [0u8; 16 * 1024];
        loop {
            match reader.read(&mut buffer) {
                // EIO once every process has closed the slave side.
                Ok(0) | Err(_) => return,
                Ok(n) => {
                    if output.write_all(&buffer[..n]).is_err() {
                        return;
                    }
                }
            }
        }
    });
    done
}
