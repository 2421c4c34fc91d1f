//! Init's starter, from the supervisor's side.
//!
//! A starter is a plain child of the supervisor, in the host's namespaces
//! and with an empty environment. It clones init into the session's new
//! namespaces as a sibling (`CLONE_PARENT`, so init is the supervisor's
//! child), writes init's id maps, replies with init's pidfd and exits.
//! Init runs the starter's code on in the clone, without an exec (see
//! [`crate::init::start`]).
//!
//! A starter is made before the session is known, so that its start and
//! the new namespaces overlap the supervisor's own preparation. A server
//! spawns the init program as its next starter after each launch
//! ([`keep_one_ready`]): the kernel's exec and the C library's start-up
//! take about a millisecond on the development machine. `mayfly run`
//! forks itself first thing instead ([`prestart_forked`]), which takes a
//! tenth of that.

use std::ffi::CString;
use std::fs::File;
use std::io::{self, Read};
use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

use nix::sys::socket::{socketpair, AddressFamily, SockFlag, SockType};

use super::clone::{clone3_with_stack, CloneArgs};
use super::descriptors;
use super::handoff::{self, FailedStep, Join, Reply, Request, Session};
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
        keep(starter);
    }
}

/// Forks this process as the starter for its next launch. The starter
/// takes on a spawned starter's name and runs as a spawned one would. Init,
/// its clone, overwrites its copy of the command line and environment
/// ([`forget_command_line_and_environment`]) before its release.
///
/// # Safety
/// The process must have one thread, and nothing in its memory may reach a
/// sandbox but its command line: `mayfly run` calls this first thing in
/// `main`, before it reads any file or starts a thread.
pub unsafe fn prestart_forked() {
    if let Ok(starter) = Starter::fork() {
        keep(starter);
    }
}

fn keep(starter: Starter) {
    let previous = PRESTARTED.lock().unwrap_or_else(|e| e.into_inner()).replace(starter);
    drop(previous);
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

/// A starter, waiting for its request or, after the launch, exiting.
/// Dropping it reaps the starter and the clones it made that did not
/// become init, which blocks until they have exited.
pub struct Starter {
    pid: i32,
    socket: OwnedFd,
    pending: Option<PendingExec>,
    /// Clones the starter announced that have not become init.
    clones: Vec<i32>,
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
            clones: Vec::new(),
        })
    }

    /// Forks this process as a starter; see [`prestart_forked`].
    ///
    /// # Safety
    /// As for [`prestart_forked`].
    unsafe fn fork() -> Result<Starter, LaunchError> {
        let (socket, starter_socket) = socketpair(AddressFamily::Unix, SockType::SeqPacket, None, SockFlag::SOCK_CLOEXEC)
            .map_err(|e| LaunchError::Starter(e.into()))?;
        let null = File::options().read(true).write(true).open("/dev/null").map_err(LaunchError::Starter)?;
        let fds = [null.as_raw_fd(), null.as_raw_fd(), libc::STDERR_FILENO, starter_socket.as_raw_fd()];
        let cpu = libc::sched_getcpu();
        let pid = libc::fork();
        if pid == 0 {
            move_off_cpu(0, cpu);
            // The name a spawned starter gets from the init program.
            libc::prctl(libc::PR_SET_NAME, c"mayfly-init".as_ptr());
            let mut scratch = [0; 4];
            if !descriptors::place(&fds, &mut scratch, 0) {
                libc::_exit(125);
            }
            crate::init::main();
        }
        if pid < 0 {
            return Err(LaunchError::Starter(io::Error::last_os_error()));
        }
        // Whichever of the two runs first moves the starter.
        move_off_cpu(pid, cpu);
        drop((starter_socket, null));
        Ok(Starter { pid, socket, pending: None, clones: Vec::new() })
    }

    /// Sends `request` with `request_fds` and `session` with `session_fds`,
    /// on which the starter clones init. [`Self::wait_started`] waits for
    /// its reply.
    pub(crate) fn send_start(&self, request: &Request, request_fds: &[RawFd], session: &Session, session_fds: &[RawFd]) -> Result<(), LaunchError> {
        handoff::send(self.socket.as_fd(), request, request_fds).map_err(LaunchError::Starter)?;
        handoff::send(self.socket.as_fd(), session, session_fds).map_err(LaunchError::Starter)
    }

    /// Waits for the starter's reply to [`Self::send_start`]. Returns
    /// init's pid and pidfd, and the starter, which is exiting: the caller
    /// drops it off the launch's path, because reaping it waits for its
    /// exit. On an error, the starter and its clones are reaped before this
    /// returns.
    pub(crate) fn wait_started(mut self) -> Result<(i32, OwnedFd, Starter), LaunchError> {
        let started = loop {
            let (reply, mut received) = handoff::receive::<Reply>(self.socket.as_fd(), Reply::fd_count).map_err(LaunchError::Starter)?;
            match reply {
                Reply::Cloned { pid } => self.clones.push(pid),
                Reply::Started { pid } => {
                    self.clones.retain(|clone| *clone != pid);
                    break Ok((pid, received.pop().expect("fd_count announced one pidfd")));
                }
                Reply::Failed { step, errno, pid } => {
                    self.clones.extend(pid.filter(|pid| !self.clones.contains(pid)));
                    let source = io::Error::from_raw_os_error(errno);
                    break Err(match step {
                        FailedStep::Clone => LaunchError::Clone(source),
                        FailedStep::UidMap => LaunchError::IdMap { map: "uid_map", source },
                        FailedStep::GidMap => LaunchError::IdMap { map: "gid_map", source },
                    });
                }
            }
        };
        if let Some(pending) = self.pending.take() {
            pending.wait();
        }
        started.map(|(pid, pidfd)| (pid, pidfd, self))
    }

    /// Sends init its [`Join`] with the `tasks` files in `fds`, once the
    /// session's cgroups exist. Init reads it from its copy of the socket.
    pub(crate) fn join(&self, join: &Join, fds: &[RawFd]) -> Result<(), LaunchError> {
        handoff::send(self.socket.as_fd(), join, fds).map_err(LaunchError::Starter)
    }
}

impl std::fmt::Debug for Starter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Starter").field("pid", &self.pid).finish_non_exhaustive()
    }
}

impl Drop for Starter {
    /// Shuts the socket down for writing, which ends a starter still
    /// waiting, and reaps the starter. Then every message it sent is in the
    /// socket, and the clones that it announced and that did not become
    /// init are reaped too: they exit once the starter has.
    fn drop(&mut self) {
        if let Some(pending) = self.pending.take() {
            pending.wait();
        }
        let _ = nix::sys::socket::shutdown(self.socket.as_raw_fd(), nix::sys::socket::Shutdown::Write);
        // SAFETY: waitpid on the starter, a child of this process.
        unsafe { libc::waitpid(self.pid, std::ptr::null_mut(), 0) };
        // SAFETY: sets a flag on a descriptor this starter owns.
        unsafe { libc::fcntl(self.socket.as_raw_fd(), libc::F_SETFL, libc::O_NONBLOCK) };
        while let Ok((reply, _)) = handoff::receive::<Reply>(self.socket.as_fd(), Reply::fd_count) {
            if let Reply::Cloned { pid } | Reply::Failed { pid: Some(pid), .. } = reply {
                if !self.clones.contains(&pid) {
                    self.clones.push(pid);
                }
            }
        }
        for pid in self.clones.drain(..) {
            // SAFETY: waitpid on a child of this process, which the starter
            // cloned and which ends by itself.
            unsafe { libc::waitpid(pid, std::ptr::null_mut(), 0) };
        }
    }
}

/// Moves the process `pid` (0 for this one) off `cpu` when it runs or
/// waits there and may run on another CPU, then allows it all of its CPUs
/// again. A new child starts on its parent's CPU, where either it waits
/// for the parent or the parent waits for it, even with another CPU idle:
/// for up to 0.7 ms in `mayfly run` on the development machine.
///
/// # Safety
/// Plain system calls; safe in a child of a fork.
unsafe fn move_off_cpu(pid: libc::pid_t, cpu: i32) {
    let size = std::mem::size_of::<libc::cpu_set_t>();
    let mut allowed: libc::cpu_set_t = std::mem::zeroed();
    if cpu < 0 || pid == 0 && libc::sched_getcpu() != cpu || libc::sched_getaffinity(pid, size, &mut allowed) != 0 {
        return;
    }
    let mut others = allowed;
    libc::CPU_CLR(cpu as usize, &mut others);
    if libc::CPU_COUNT(&others) > 0 && libc::sched_setaffinity(pid, size, &others) == 0 {
        libc::sched_setaffinity(pid, size, &allowed);
    }
}

/// The command line a spawned starter gets, which a forked one takes on.
const STARTER_COMMAND_LINE: &[u8] = b"mayfly-init\0__mayfly-sandbox-init\0";

extern "C" {
    /// The C library's environment array, which the libc crate does not
    /// declare for every C library.
    static mut environ: *mut *mut libc::c_char;
}

/// Overwrites this process's command line and environment, whose strings
/// lie together on the stack that a fork copies, gives it the command line
/// of a spawned starter and empties its environment. Init runs this before
/// its release, because the session can read init's command line in
/// /proc/1/cmdline, and host paths such as those of inputs must not stay
/// there. Returns false when the strings could not be found.
///
/// # Safety
/// No other thread may use the command line or the environment.
pub(crate) unsafe fn forget_command_line_and_environment() -> bool {
    // Fields 48 to 51 of /proc/self/stat: where the arguments and the
    // environment start and end. Fields resume after the last ')' at field 3.
    let Ok(stat) = crate::procfs::read("/proc/self/stat") else { return false };
    let Some(close) = stat.rfind(')') else { return false };
    let fields: Vec<usize> = stat[close + 2..].split_whitespace().skip(45).take(4).filter_map(|f| f.parse().ok()).collect();
    let &[arg_start, arg_end, env_start, env_end] = fields.as_slice() else { return false };
    if !(arg_start < arg_end && arg_end <= env_start && env_start <= env_end) {
        return false;
    }
    let mut entry = environ;
    while !entry.is_null() && !(*entry).is_null() {
        *entry = std::ptr::null_mut();
        entry = entry.add(1);
    }
    let strings = arg_start as *mut u8;
    for offset in 0..env_end - arg_start {
        std::ptr::write_volatile(strings.add(offset), 0);
    }
    // The new command line may reach into the old environment's space,
    // which then starts after it. Both ranges are set with PR_SET_MM, which
    // needs CAP_SYS_RESOURCE in the host's user namespace. Init does not
    // have it, so /proc shows the new command line followed by NULs.
    let length = STARTER_COMMAND_LINE.len().min(env_end - arg_start);
    std::ptr::copy_nonoverlapping(STARTER_COMMAND_LINE.as_ptr(), strings, length);
    let new_end = arg_start + length;
    let set = |field: i32, value: usize| libc::prctl(libc::PR_SET_MM, field as libc::c_ulong, value as libc::c_ulong, 0 as libc::c_ulong, 0 as libc::c_ulong) == 0;
    let _ = set(libc::PR_SET_MM_ARG_END, new_end)
        && (new_end <= env_start || set(libc::PR_SET_MM_ENV_START, new_end))
        && set(libc::PR_SET_MM_ENV_END, new_end.max(env_start));
    true
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
        let request = Request { id_base: 1_000_000_000, cgroup: CgroupJoin::V1 };
        let error = match starter.send_start(&request, &[], &Session { session_fds: 0 }, &[]) {
            Ok(()) => starter.wait_started().unwrap_err(),
            Err(error) => error,
        };
        assert!(matches!(error, LaunchError::Starter(_)), "{error}");
        assert!(error.to_string().starts_with("failed to hand the session to the init program"), "{error}");
    }
}
