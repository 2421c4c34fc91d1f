//! A handle through which another thread destroys a running session and
//! learns when its sandbox has started.

use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::sync::{Arc, Mutex};

type LaunchedHook = Box<dyn Fn(i32) + Send + Sync>;

#[derive(Default)]
struct State {
    destroy_reason: Option<String>,
    init_pidfd: Option<OwnedFd>,
    init_pid: Option<i32>,
}

#[derive(Default)]
struct Inner {
    state: Mutex<State>,
    on_launched: Option<LaunchedHook>,
}

/// Shared between the thread that runs a session and the threads that may
/// end it early. Cloning shares the same session.
#[derive(Clone, Default)]
pub struct SessionControl(Arc<Inner>);

impl std::fmt::Debug for SessionControl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SessionControl").field("destroy_reason", &self.destroy_requested()).finish()
    }
}

/// Sends SIGKILL to the process behind a pidfd. Killing init, PID 1 of the
/// session's PID namespace, makes the kernel kill every process in it.
fn kill(pidfd: &OwnedFd) {
    // SAFETY: pidfd_send_signal on a pidfd this handle owns; no memory is passed.
    unsafe { libc::syscall(libc::SYS_pidfd_send_signal, pidfd.as_raw_fd(), libc::SIGKILL, std::ptr::null::<libc::siginfo_t>(), 0u32) };
}

impl SessionControl {
    /// A control whose `on_launched` runs, with init's host PID, once the
    /// sandbox exists.
    pub fn new(on_launched: impl Fn(i32) + Send + Sync + 'static) -> SessionControl {
        SessionControl(Arc::new(Inner { state: Mutex::default(), on_launched: Some(Box::new(on_launched)) }))
    }

    /// Asks for the session to be destroyed: kills its init at once when the
    /// sandbox exists, or stops it from starting otherwise. Only the first
    /// reason is kept; later calls change nothing.
    pub fn destroy(&self, reason: &str) {
        let mut state = self.0.state.lock().unwrap_or_else(|e| e.into_inner());
        if state.destroy_reason.is_none() {
            state.destroy_reason = Some(reason.to_string());
        }
        if let Some(pidfd) = &state.init_pidfd {
            kill(pidfd);
        }
    }

    /// The reason given to [`SessionControl::destroy`], if it was called.
    pub fn destroy_requested(&self) -> Option<String> {
        self.0.state.lock().unwrap_or_else(|e| e.into_inner()).destroy_reason.clone()
    }

    /// Opens the running sandbox's `/work` from the host, for files that
    /// cross into or out of the session. Fails once init has exited.
    pub fn work_dir(&self) -> Result<super::WorkDir, super::WorkDirError> {
        let state = self.0.state.lock().unwrap_or_else(|e| e.into_inner());
        match (state.init_pid, &state.init_pidfd) {
            (Some(pid), Some(pidfd)) => super::WorkDir::open(pid, pidfd.as_fd()),
            _ => Err(super::WorkDirError::NotRunning),
        }
    }

    /// Called by the session once init runs. Kills it at once when a destroy
    /// came first.
    pub(super) fn launched(&self, init_pid: i32, pidfd: OwnedFd) {
        let mut state = self.0.state.lock().unwrap_or_else(|e| e.into_inner());
        if state.destroy_reason.is_some() {
            kill(&pidfd);
        }
        state.init_pidfd = Some(pidfd);
        state.init_pid = Some(init_pid);
        drop(state);
        if let Some(hook) = &self.0.on_launched {
            hook(init_pid);
        }
    }

    /// Called by the session after init has exited, so that a late destroy
    /// cannot signal a recycled process.
    pub(super) fn finished(&self) {
        let mut state = self.0.state.lock().unwrap_or_else(|e| e.into_inner());
        state.init_pidfd = None;
        state.init_pid = None;
    }
}
