//! Starting init in fresh namespaces, from the supervisor's side.
//!
//! The supervisor may be multi-threaded (the server is), so the cloned child
//! runs only async-signal-safe calls until it execs init: it waits on a pipe,
//! becomes root of its new user namespace, moves its descriptors into place
//! and execs. Everything it needs is allocated before the clone.
//!
//! The child shares the supervisor's memory until its exec (`CLONE_VM`, on
//! a stack of its own), as `posix_spawn` does. A fork-like clone copied the
//! page tables of the large supervisor and the exec tore them down again,
//! which made init start about 0.6 ms later in the cold-start bench.

use std::ffi::CString;
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

use crate::cgroup::{Join, SessionCgroup};
use crate::spec::InitSpec;

/// The hidden argument that makes the mayfly binary run as the sandbox init.
pub const INIT_ARGUMENT: &str = "__mayfly-sandbox-init";

/// Host uids and gids of a session: inside uid 0 to 65535 map onto
/// `base .. base + 65536`, a range no host account uses.
pub const ID_RANGE_SIZE: u32 = 65_536;

/// clone3's flag for starting the child in the cgroup given by `cgroup`, from
/// linux/sched.h. libc declares it with a type too narrow for its value.
const CLONE_INTO_CGROUP: u64 = 0x2_0000_0000;

/// Descriptors above this are free for the child to shuffle through.
const SHUFFLE_BASE: RawFd = 1024;

/// Size of the child's stack until its exec. Its code calls only the C
/// library's thin system call wrappers, which by estimate need a small
/// fraction of this.
const CHILD_STACK_BYTES: usize = 64 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum LaunchError {
    #[error("failed to create a pipe: {0}")]
    Pipe(io::Error),
    #[error("clone with new namespaces failed: {0}; check `mayfly doctor` for user namespace support")]
    Clone(io::Error),
    #[error("failed to write the {map} of the sandbox: {source}")]
    IdMap { map: &'static str, source: io::Error },
    #[error("failed to move init into the session cgroup: {0}")]
    Cgroup(#[from] crate::cgroup::CgroupError),
    #[error("failed to start init: {0}")]
    Release(io::Error),
    #[error("too many input files: at most {max}")]
    TooManyInputs { max: usize },
}

/// The supervisor's ends of a started sandbox.
#[derive(Debug)]
pub struct Launched {
    pub pid: i32,
    pub pidfd: OwnedFd,
    pub stdin: File,
    pub stdout: File,
    pub stderr: File,
    pub reports: File,
    pub artifacts: File,
    /// The spec pipe, after the spec's line: the claim is written here.
    pub claim: File,
    /// The supervisor's ends of the command pipes, when the session has them.
    pub command_pipes: Option<CommandPipes>,
}

/// The supervisor's ends of the command pipes: `to_command` carries what
/// the command reads at descriptor 3, `from_command` what it writes at 4.
#[derive(Debug)]
pub struct CommandPipes {
    pub to_command: File,
    pub from_command: File,
}

fn pipe() -> Result<(OwnedFd, OwnedFd), LaunchError> {
    nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(|e| LaunchError::Pipe(e.into()))
}

#[repr(C)]
#[derive(Default)]
struct CloneArgs {
    flags: u64,
    pidfd: u64,
    child_tid: u64,
    parent_tid: u64,
    exit_signal: u64,
    stack: u64,
    stack_size: u64,
    tls: u64,
    set_tid: u64,
    set_tid_size: u64,
    cgroup: u64,
}

/// The child's inputs, prepared before the clone. They live in the
/// supervisor's memory, which the child shares until its exec.
struct ChildArgs<'a> {
    sync: RawFd,
    join_tasks: &'a [RawFd],
    fds: &'a [RawFd],
    shuffled: &'a mut [RawFd],
    program: RawFd,
    path: &'a CString,
    argv: &'a [*const libc::c_char],
    envp: &'a [*const libc::c_char],
}

/// Code of the cloned child: only async-signal-safe calls, no allocation,
/// nothing that can panic, and no writes to memory other than `shuffled`
/// and its own stack.
///
/// The child also shares the thread-local storage of the thread that
/// cloned it, so a failed call's errno lands there. Almost every failure
/// ends the child at once, so the cost is at most a wrong errno in a
/// message of the supervisor.
///
/// # Safety
/// `args` must point to a `ChildArgs` that outlives the child's exec:
/// `fds` valid descriptors, `shuffled` as long as `fds`, `program` an
/// `O_PATH` descriptor of the init program or -1 for `path`, and `path`,
/// `argv` and `envp` NUL-terminated as execve expects.
unsafe extern "C" fn child(args: *mut libc::c_void) -> ! {
    let ChildArgs { sync, join_tasks, fds, shuffled, program, path, argv, envp } = &mut *args.cast::<ChildArgs>();
    let (sync, join_tasks, fds, program, path, argv, envp) = (*sync, *join_tasks, *fds, *program, *path, *argv, *envp);
    // 1. On cgroup v1, move into the session's cgroups: writing "0" to a
    //    `tasks` file moves the writing thread, and the supervisor opened the
    //    files, so its credentials allow the write. On v2, clone3 already
    //    placed this process there.
    for tasks in join_tasks {
        if libc::write(*tasks, b"0".as_ptr().cast(), 1) != 1 {
            libc::_exit(125);
        }
    }

    // 2. Wait until the supervisor has written the id maps. End-of-file means
    //    the supervisor gave up.
    let mut byte = 0u8;
    if libc::read(sync, (&mut byte as *mut u8).cast(), 1) != 1 {
        libc::_exit(125);
    }

    // 3. The cloning uid (host root) is not mapped, so the child starts as the
    //    overflow uid. Become uid 0 of the new namespace, which is an
    //    unprivileged host uid, so init keeps its namespace capabilities across
    //    exec. Raw system calls, because the C library's wrappers synchronise
    //    with threads that do not exist in this child.
    if libc::syscall(libc::SYS_setresgid, 0, 0, 0) != 0
        || libc::syscall(libc::SYS_setresuid, 0, 0, 0) != 0
        || libc::syscall(libc::SYS_setgroups, 0, std::ptr::null::<libc::gid_t>()) != 0
    {
        libc::_exit(125);
    }

    // 4. Move each descriptor to its fixed number: first above every target,
    //    then down.
    let program = if program >= 0 { libc::fcntl(program, libc::F_DUPFD_CLOEXEC, SHUFFLE_BASE) } else { -1 };
    for (index, fd) in fds.iter().enumerate() {
        shuffled[index] = libc::fcntl(*fd, libc::F_DUPFD_CLOEXEC, SHUFFLE_BASE);
        if shuffled[index] < 0 {
            libc::_exit(125);
        }
    }
    for (target, fd) in shuffled.iter().enumerate() {
        if libc::dup2(*fd, target as RawFd) < 0 {
            libc::_exit(125);
        }
    }
    // Everything else closes at the exec: the program's copy, the exec
    // notice's pipe and whatever the supervisor had open.
    if libc::syscall(libc::SYS_close_range, fds.len() as u32, u32::MAX, libc::CLOSE_RANGE_CLOEXEC) != 0 {
        libc::_exit(125);
    }

    // 5. Exec init, `mayfly-init` when it was found and this binary
    //    otherwise. It starts with an empty environment.
    if program >= 0 {
        libc::syscall(libc::SYS_execveat, program, c"".as_ptr(), argv.as_ptr(), envp.as_ptr(), libc::AT_EMPTY_PATH);
    } else {
        libc::execve(path.as_ptr(), argv.as_ptr(), envp.as_ptr());
    }
    libc::_exit(125);
}

/// Calls clone3 with `args`, whose `stack` and `stack_size` give the
/// child's stack, and runs `entry(data)` on that stack in the child.
/// Returns the child's pid, or the negated errno.
///
/// # Safety
/// As for clone3 itself. With `CLONE_VM`, `entry` must respect what the
/// shared memory demands, and `data` and the stack must outlive its use.
#[cfg(target_arch = "x86_64")]
unsafe fn clone3_with_stack(args: &CloneArgs, entry: unsafe extern "C" fn(*mut libc::c_void) -> !, data: *mut libc::c_void) -> i64 {
    let result: i64;
    // The child returns from the system call on its new stack, so it must
    // not touch the caller's frame: it calls `entry` at once.
    std::arch::asm!(
        "syscall",
        "test rax, rax",
        "jnz 2f",
        "xor ebp, ebp",
        "mov rdi, r12",
        "call r13",
        "ud2",
        "2:",
        inlateout("rax") libc::SYS_clone3 => result,
        in("rdi") args as *const CloneArgs,
        in("rsi") std::mem::size_of::<CloneArgs>(),
        in("r12") data,
        in("r13") entry,
        lateout("rcx") _,
        lateout("r11") _,
        options(nostack),
    );
    result
}

#[cfg(not(target_arch = "x86_64"))]
unsafe fn clone3_with_stack(_: &CloneArgs, _: unsafe extern "C" fn(*mut libc::c_void) -> !, _: *mut libc::c_void) -> i64 {
    // The seccomp filter exists for x86_64 only, so no sandbox starts elsewhere.
    -(libc::ENOSYS as i64)
}

fn write_id_map(pid: i32, map: &'static str, base: u32) -> Result<(), LaunchError> {
    let line = format!("0 {base} {ID_RANGE_SIZE}\n");
    std::fs::write(format!("/proc/{pid}/{map}"), line).map_err(|source| LaunchError::IdMap { map, source })
}

/// Clones init into new user, PID, mount, network, IPC and UTS namespaces
/// and into `cgroup`, maps its ids onto `id_base`, lets it run and sends it
/// `spec`. The spec pipe stays open for the claim. With `command_pipes`, the
/// command gets two pipes whose other ends are returned. On failure the
/// child is killed and reaped.
pub fn launch(
    spec: &InitSpec,
    inputs: Vec<File>,
    uid_lock: &File,
    id_base: u32,
    cgroup: &SessionCgroup,
    command_pipes: bool,
) -> Result<Launched, LaunchError> {
    const MAX_INPUTS: usize = 256;
    if inputs.len() > MAX_INPUTS {
        return Err(LaunchError::TooManyInputs { max: MAX_INPUTS });
    }
    let (stdin_read, stdin_write) = pipe()?;
    let (stdout_read, stdout_write) = pipe()?;
    let (stderr_read, stderr_write) = pipe()?;
    let (spec_read, spec_write) = pipe()?;
    let (reports_read, reports_write) = pipe()?;
    let (artifacts_read, artifacts_write) = pipe()?;
    let (sync_read, sync_write) = pipe()?;

    // Target numbers follow crate::spec::fd.
    let mut fds: Vec<RawFd> = vec![
        stdin_read.as_raw_fd(),
        stdout_write.as_raw_fd(),
        stderr_write.as_raw_fd(),
        spec_read.as_raw_fd(),
        reports_write.as_raw_fd(),
        artifacts_write.as_raw_fd(),
        uid_lock.as_raw_fd(),
    ];
    fds.extend(inputs.iter().map(|f| f.as_raw_fd()));
    // The command pipes follow the inputs, and the spec gives init their numbers.
    let mut spec = spec.clone();
    let pipes = if command_pipes {
        let (to_command_read, to_command_write) = pipe()?;
        let (from_command_read, from_command_write) = pipe()?;
        spec.command_pipes = Some((fds.len() as i32, fds.len() as i32 + 1));
        fds.extend([to_command_read.as_raw_fd(), from_command_write.as_raw_fd()]);
        Some((to_command_read, to_command_write, from_command_read, from_command_write))
    } else {
        None
    };
    let mut shuffled = vec![0 as RawFd; fds.len()];

    let path = CString::new("/proc/self/exe").expect("no NUL");
    let program = crate::init_program::init_program().descriptor().unwrap_or(-1);
    let argv_strings = [CString::new("mayfly-init").expect("no NUL"), CString::new(INIT_ARGUMENT).expect("no NUL")];
    let argv: Vec<*const libc::c_char> = argv_strings.iter().map(|s| s.as_ptr()).chain([std::ptr::null()]).collect();
    let envp: Vec<*const libc::c_char> = vec![std::ptr::null()];

    let join = cgroup.open_join()?;
    let join_tasks: Vec<RawFd> = match &join {
        Join::V1 { tasks } => tasks.iter().map(|f| f.as_raw_fd()).collect(),
        Join::V2 { .. } => Vec::new(),
    };
    let (into_cgroup, cgroup_fd) = match &join {
        Join::V2 { directory } => (CLONE_INTO_CGROUP, directory.as_raw_fd() as u64),
        Join::V1 { .. } => (0, 0),
    };

    // The child's stack, 16-byte aligned as the ABI requires, and a pipe
    // that reaches end of file once the child has exec'd or exited.
    let mut stack = vec![0u128; CHILD_STACK_BYTES / std::mem::size_of::<u128>()];
    let (exec_read, exec_write) = pipe()?;
    let mut child_args = ChildArgs {
        sync: sync_read.as_raw_fd(),
        join_tasks: &join_tasks,
        fds: &fds,
        shuffled: &mut shuffled,
        program,
        path: &path,
        argv: &argv,
        envp: &envp,
    };

    let mut pidfd: RawFd = -1;
    let args = CloneArgs {
        flags: (libc::CLONE_VM
            | libc::CLONE_NEWUSER
            | libc::CLONE_NEWPID
            | libc::CLONE_NEWNS
            | libc::CLONE_NEWNET
            | libc::CLONE_NEWIPC
            | libc::CLONE_NEWUTS
            | libc::CLONE_PIDFD) as u64
            | into_cgroup,
        pidfd: &mut pidfd as *mut RawFd as u64,
        exit_signal: libc::SIGCHLD as u64,
        stack: stack.as_mut_ptr() as u64,
        stack_size: CHILD_STACK_BYTES as u64,
        cgroup: cgroup_fd,
        ..Default::default()
    };
    // SAFETY: `child` is async-signal-safe. Its stack, `child_args` and the
    // memory they point to stay alive until it has exec'd or exited,
    // because every return below first waits for the end of file on
    // `exec_read` or kills and reaps the child.
    let pid = unsafe { clone3_with_stack(&args, child, (&mut child_args as *mut ChildArgs).cast()) };
    if pid < 0 {
        return Err(LaunchError::Clone(io::Error::from_raw_os_error(-pid as i32)));
    }
    let pid = pid as i32;
    // SAFETY: CLONE_PIDFD stored a new descriptor that nothing else owns.
    let pidfd = unsafe { OwnedFd::from_raw_fd(pidfd) };
    drop((stdin_read, stdout_write, stderr_write, spec_read, reports_write, artifacts_write, sync_read, exec_write));
    let command_pipes = pipes.map(|(child_read, to_command, from_command, child_write)| {
        drop((child_read, child_write));
        CommandPipes { to_command: File::from(to_command), from_command: File::from(from_command) }
    });

    let abort = |error: LaunchError| {
        // SAFETY: kill and waitpid on the child created above.
        unsafe {
            libc::kill(pid, libc::SIGKILL);
            libc::waitpid(pid, std::ptr::null_mut(), 0);
        }
        error
    };

    drop(join);

    // Id maps, then release the child. The setgroups file stays "allow" so
    // init can clear the groups it inherited.
    write_id_map(pid, "uid_map", id_base).map_err(abort)?;
    write_id_map(pid, "gid_map", id_base).map_err(abort)?;
    let mut sync = File::from(sync_write);
    sync.write_all(b"x").map_err(|e| abort(LaunchError::Release(e)))?;
    drop(sync);

    // The spec is one line of JSON; the claim follows on the same pipe.
    let mut spec_json = serde_json::to_vec(&spec).expect("the spec serializes");
    spec_json.push(b'\n');
    let mut spec_pipe = File::from(spec_write);
    spec_pipe.write_all(&spec_json).map_err(|e| abort(LaunchError::Release(e)))?;

    // Only now may the child's stack and arguments go away. A failed exec
    // ends the child, which init's missing reports then show.
    let _ = File::from(exec_read).read_to_end(&mut Vec::new());
    drop((child_args, stack));

    Ok(Launched {
        pid,
        pidfd,
        stdin: File::from(stdin_write),
        stdout: File::from(stdout_read),
        stderr: File::from(stderr_read),
        reports: File::from(reports_read),
        artifacts: File::from(artifacts_read),
        claim: spec_pipe,
        command_pipes,
    })
}
