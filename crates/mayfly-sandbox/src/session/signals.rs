//! Signals sent to `mayfly run`, passed on to the session's command.

use std::os::fd::{IntoRawFd, OwnedFd};
use std::sync::atomic::{AtomicI32, Ordering};

use nix::sys::signal::{sigaction, SaFlags, SigAction, SigHandler, SigSet, Signal};

/// Signals the supervisor passes on to the session's command through init.
const FORWARDED: &[Signal] = &[Signal::SIGINT, Signal::SIGTERM, Signal::SIGHUP, Signal::SIGQUIT];

/// The pidfd of the init that receives forwarded signals, or -1.
static INIT_PIDFD: AtomicI32 = AtomicI32::new(-1);

fn forwarded_set() -> SigSet {
    let mut set = SigSet::empty();
    for signal in FORWARDED {
        set.add(*signal);
    }
    set
}

/// Blocks the forwarded signals in the calling thread, and so in every
/// thread it starts later, until [`forward_signals`] unblocks them.
pub fn block_forwarded_signals() -> Result<(), nix::Error> {
    forwarded_set().thread_block()
}

/// Sends a forwarded signal on to init. It makes one system call, which is
/// safe in a signal handler.
extern "C" fn pass_on(signal: libc::c_int) {
    let pidfd = INIT_PIDFD.load(Ordering::Relaxed);
    if pidfd >= 0 {
        // SAFETY: pidfd_send_signal reads no memory given a null info pointer.
        unsafe { libc::syscall(libc::SYS_pidfd_send_signal, pidfd, signal, std::ptr::null::<libc::siginfo_t>(), 0u32) };
    }
}

/// Passes each forwarded signal to init through its pidfd, which cannot
/// reach another process even after init's PID is reused. The handler runs
/// in the thread that receives the signal: the calling thread, which
/// unblocks the signals, or a thread it starts later. A signal that came
/// while they were blocked is passed on at once.
///
/// A process forwards to one session: the pidfd stays open until it exits.
/// A second call takes over and leaves the first pidfd open, because a
/// handler may be using it.
pub(super) fn forward_signals(pidfd: OwnedFd) {
    INIT_PIDFD.store(pidfd.into_raw_fd(), Ordering::Relaxed);
    let action = SigAction::new(SigHandler::Handler(pass_on), SaFlags::SA_RESTART, SigSet::empty());
    for signal in FORWARDED {
        // SAFETY: the handler only loads an atomic and makes one system call.
        let _ = unsafe { sigaction(*signal, &action) };
    }
    let _ = forwarded_set().thread_unblock();
}
