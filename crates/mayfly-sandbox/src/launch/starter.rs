//! Init's starter, from the supervisor's side.
//!
//! A starter is the init program, exec'd as a plain child of the
//! supervisor, in the host's namespaces and with an empty environment. It
//! waits on a socket for one [`Request`], clones init into the session's
//! new namespaces as a sibling (`CLONE_PARENT`, so init is the supervisor's
//! child), writes init's id maps, replies with init's pidfd and exits.
//! Init runs the starter's code on in the clone, without an exec.
//!
//! Starting the program is the slow part of a launch: the kernel's exec and
//! the C library's start-up take about a millisecond on the development
//! machine. A starter can be spawned before the session is known
//! ([`prestart`]), which `mayfly run` does first thing, so that this time
//! overlaps the command-line parsing, the profile and the audit record.

use std::ffi::CString;
use std::fs::File;
use std::io::{self, Read};
use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

use nix::sys::socket::{socketpair, AddressFamily, SockFlag, SockType};

use super::clone::{clone3_with_stack, CloneArgs};
use super::descriptors;
use super::handoff::{self, FailedStep, Reply, Request};
use super::{LaunchError, INIT_ARGUMENT};

/// The starter's socket, at this descriptor of the starter.
pub const STARTER_SOCKET: RawFd = 3;

/// Size of the child's stack until its exec. Its code calls only the C
/// library's thin system call wrappers, which by estimate need a small
/// fraction of this.
const CHILD_STACK_BYTES: usize = 64 * 1024;

/// The starter that [`prestart`] spawned and no launch has used yet.
static PRESTARTED: Mutex<Option<Starter>> = Mutex::new(None);

/// Whether each launch that uses the prestarted starter spawns the next.
static KEEP_ONE_READY: AtomicBool = AtomicBool::new(false);

/// Keeps one starter ready from now on: spawns one, and after each launch
/// that uses it, the next. For a server, which launches again and again;
/// the ready starter is one idle process.
pub fn keep_one_ready() {
    KEEP_ONE_READY.store(true, Ordering::Relaxed);
    prestart();
}

/// Spawns a starter for the next launch of this process, so that the
/// launch does not wait for the init program to start. Errors are left to
/// that launch, which spawns a starter of its own when none is ready.
pub fn prestart() {
    if let Ok(starter) = Starter::spawn() {
        let previous = PRESTARTED.lock().unwrap_or_else(|e| e.into_inner()).replace(starter);
        drop(previous);
    }
}

/// Takes the prestarted starter, if there is one.
pub(crate) fn take_prestarted() -> Option<Starter> {
    PRESTARTED.lock().unwrap_or_else(|e| e.into_inner()).take()
}

/// Spawns the next ready starter, when [`keep_one_ready`] asked for one
/// and none is ready.
pub(crate) fn replenish() {
    if KEEP_ONE_READY.load(Ordering::Relaxed) && PRESTARTED.lock().unwrap_or_else(|e| e.into_inner()).is_none() {
        prestart();
    }
}

/// The child's inputs until its exec, in the supervisor's memory, which the
/// child shares until then.
struct ExecArgs {
    fds: [RawFd; 4],
    shuffled: [RawFd; 4],
    program: RawFd,
    path: CString,
    argv: [*const libc::c_char; 3],
    /// The strings `argv` points into.
    _argv_strings: [CString; 2],
    envp: [*const libc::c_char; 1],
}

/// The child's stack and inputs, which must stay alive until it has
/// exec'd, and the pipe that reaches end of file at its exec.
struct PendingExec {
    exec_read: File,
    _stack: Vec<u128>,
    _args: Box<ExecArgs>,
}

// SAFETY: the raw pointers in `ExecArgs` point only into its own
// `_argv_strings`, which move with it, and no thread reads them after the
// child's exec.
unsafe impl Send for PendingExec {}

impl PendingExec {
    fn wait(self) {
        let mut exec_read = self.exec_read;
        let _ = exec_read.read_to_end(&mut Vec::new());
    }
}

/// A spawned starter, waiting for its request or, after the launch,
/// exiting. Dropping it reaps the starter, which blocks until it has exited.
pub struct Starter {
    pid: i32,
    socket: OwnedFd,
    pending: Option<PendingExec>,
}

/// Code of the cloned child: only async-signal-safe calls, no allocation,
/// nothing that can panic, and no writes to memory other than `shuffled`
/// and its own stack. A failed call's errno lands in the thread-local
/// storage of the thread that cloned it, which the child shares.
///
/// # Safety
/// `args` must point to an `ExecArgs` that outlives the child's exec, with
/// valid descriptors and NUL-terminated `argv` and `envp`.
unsafe extern "C" fn exec_starter(args: *mut libc::c_void) -> ! {
    let args = &mut *args.cast::<ExecArgs>();
    // The program's descriptor moves above the fixed numbers first, so the
    // moves below leave it alone. Everything else closes at the exec.
    let program = if args.program >= 0 { libc::fcntl(args.program, libc::F_DUPFD_CLOEXEC, args.fds.len() as RawFd) } else { -1 };
    if !descriptors::place(&args.fds, &mut args.shuffled, libc::CLOSE_RANGE_CLOEXEC) {
        libc::_exit(125);
    }
    // `mayfly-init` when it was found, and this binary otherwise. It starts
    // with an empty environment.
    if program >= 0 {
        libc::syscall(libc::SYS_execveat, program, c"".as_ptr(), args.argv.as_ptr(), args.envp.as_ptr(), libc::AT_EMPTY_PATH);
    } else {
        libc::execve(args.path.as_ptr(), args.argv.as_ptr(), args.envp.as_ptr());
    }
    libc::_exit(125);
}

impl Starter {
    /// Spawns the init program as a starter. Returns without waiting for
    /// its exec.
    pub(crate) fn spawn() -> Result<Starter, LaunchError> {
        let (socket, starter_socket) = socketpair(AddressFamily::Unix, SockType::SeqPacket, None, SockFlag::SOCK_CLOEXEC)
            .map_err(|e| LaunchError::Starter(e.into()))?;
        let null = File::options().read(true).write(true).open("/dev/null").map_err(LaunchError::Starter)?;
        let (exec_read, exec_write) = super::pipe()?;

        // Standard error stays the supervisor's, for a panic of the starter.
        // Init replaces all three with the session's pipes.
        let argv_strings = [CString::new("mayfly-init").expect("no NUL"), CString::new(INIT_ARGUMENT).expect("no NUL")];
        let mut args = Box::new(ExecArgs {
            fds: [null.as_raw_fd(), null.as_raw_fd(), libc::STDERR_FILENO, starter_socket.as_raw_fd()],
            shuffled: [0; 4],
            program: crate::init_program::init_program().descriptor().unwrap_or(-1),
            path: CString::new("/proc/self/exe").expect("no NUL"),
            argv: [argv_strings[0].as_ptr(), argv_strings[1].as_ptr(), std::ptr::null()],
            _argv_strings: argv_strings,
            envp: [std::ptr::null()],
        });
        let mut stack = vec![0u128; CHILD_STACK_BYTES / std::mem::size_of::<u128>()];
        let clone_args = CloneArgs {
            flags: libc::CLONE_VM as u64,
            exit_signal: libc::SIGCHLD as u64,
            stack: stack.as_mut_ptr() as u64,
            stack_size: CHILD_STACK_BYTES as u64,
            ..Default::default()
        };
        // SAFETY: `exec_starter` is async-signal-safe. Its stack and `args`
        // move into the returned starter, which keeps them until the exec
        // pipe reaches end of file. Moving them leaves their heap memory
        // in place.
        let pid = unsafe { clone3_with_stack(&clone_args, exec_starter, (&mut *args as *mut ExecArgs).cast()) };
        if pid < 0 {
            return Err(LaunchError::Starter(io::Error::from_raw_os_error(-pid as i32)));
        }
        drop((starter_socket, null, exec_write));
        Ok(Starter {
            pid: pid as i32,
            socket,
            pending: Some(PendingExec { exec_read: File::from(exec_read), _stack: stack, _args: args }),
        })
    }

    /// Sends `request` with `fds` and waits for the reply. Returns init's
    /// pid and pidfd, and the starter, which is exiting: the caller drops it
    /// off the launch's path, because reaping it waits for its exit.
    pub(crate) fn start(mut self, request: &Request, fds: &[RawFd]) -> Result<(i32, OwnedFd, Starter), LaunchError> {
        handoff::send(self.socket.as_fd(), request, fds).map_err(LaunchError::Starter)?;
        let (reply, mut received) = handoff::receive::<Reply>(self.socket.as_fd(), Reply::fd_count).map_err(LaunchError::Starter)?;
        if let Some(pending) = self.pending.take() {
            pending.wait();
        }
        match reply {
            Reply::Started { pid } => Ok((pid, received.pop().expect("fd_count announced one pidfd"), self)),
            Reply::Failed { step, errno, pid } => {
                if let Some(pid) = pid {
                    // SAFETY: waitpid on a child of this process, which the
                    // starter cloned and which ends by itself.
                    unsafe { libc::waitpid(pid, std::ptr::null_mut(), 0) };
                }
                let source = io::Error::from_raw_os_error(errno);
                Err(match step {
                    FailedStep::Clone => LaunchError::Clone(source),
                    FailedStep::UidMap => LaunchError::IdMap { map: "uid_map", source },
                    FailedStep::GidMap => LaunchError::IdMap { map: "gid_map", source },
                })
            }
        }
    }
}

impl std::fmt::Debug for Starter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Starter").field("pid", &self.pid).finish_non_exhaustive()
    }
}

impl Drop for Starter {
    /// Shuts the socket down, which ends a starter still waiting, and reaps
    /// the starter.
    fn drop(&mut self) {
        if let Some(pending) = self.pending.take() {
            pending.wait();
        }
        let _ = nix::sys::socket::shutdown(self.socket.as_raw_fd(), nix::sys::socket::Shutdown::Both);
        // SAFETY: waitpid on the starter, a child of this process.
        unsafe { libc::waitpid(self.pid, std::ptr::null_mut(), 0) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::launch::handoff::CgroupJoin;

    #[test]
    fn dead_starter_fails_the_handoff() {
        let starter = Starter::spawn().unwrap();
        // SAFETY: kill on the starter just spawned, a child of this process.
        assert_eq!(unsafe { libc::kill(starter.pid, libc::SIGKILL) }, 0);
        let request = Request { id_base: 1_000_000_000, session_fds: 0, cgroup: CgroupJoin::V1 { tasks: 0 } };
        let error = starter.start(&request, &[]).unwrap_err();
        assert!(matches!(error, LaunchError::Starter(_)), "{error}");
        assert!(error.to_string().starts_with("failed to hand the session to the init program"), "{error}");
    }
}
