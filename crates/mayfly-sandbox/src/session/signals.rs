//! Signals sent to `mayfly run`, passed on to the session's command.

use std::os::fd::{AsRawFd, OwnedFd};
use std::thread;

use nix::sys::signal::{SigSet, Signal};

/// Signals the supervisor passes on to the session's command through init.
const FORWARDED: &[Signal] = &[Signal::SIGINT, Signal::SIGTERM, Signal::SIGHUP, Signal::SIGQUIT];

fn forwarded_set() -> SigSet {
    let mut set = SigSet::empty();
    for signal in FORWARDED {
        set.add(*signal);
    }
    set
}

/// Blocks the forwarded signals in the calling thread, and so in every
/// thread it starts later, so that only the forwarding thread receives them.
pub fn block_forwarded_signals() -> Result<(), nix::Error> {
    forwarded_set().thread_block()
}

/// Passes each forwarded signal to init through its pidfd, which cannot
/// reach another process even after init's PID is reused.
pub(super) fn forward_signals(pidfd: OwnedFd) {
    thread::spawn(move || loop {
        let Ok(signal) = forwarded_set().wait() else { return };
        // SAFETY: pidfd_send_signal reads no memory given a null info pointer.
        let result = unsafe {
            libc::syscall(libc::SYS_pidfd_send_signal, pidfd.as_raw_fd(), signal as i32, std::ptr::null::<libc::siginfo_t>(), 0u32)
        };
        if result != 0 {
            return;
        }
    });
}
