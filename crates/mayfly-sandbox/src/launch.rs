//! Starting init in fresh namespaces, from the supervisor's side.
//!
//! The supervisor may be multi-threaded (the server is), so the cloned child
//! runs only async-signal-safe calls until it execs init: it waits on a pipe,
//! becomes root of its new user namespace, moves its descriptors into place
//! and execs. Everything it needs is allocated before the clone.

use std::ffi::CString;
use std::fs::File;
use std::io::{self, Write};
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

/// Code of the cloned child. Only async-signal-safe calls, no allocation.
///
/// # Safety
/// `fds` must be valid descriptors, `shuffled` as long as `fds`, `program`
/// an `O_PATH` descriptor of the init program or -1 for `path`, and `path`,
/// `argv` and `envp` NUL-terminated as execve expects.
#[allow(clippy::too_many_arguments)]
unsafe fn child(
    sync: RawFd,
    join_tasks: &[RawFd],
    fds: &[RawFd],
    shuffled: &mut [RawFd],
    program: RawFd,
    path: &CString,
    argv: &[*const libc::c_char],
    envp: &[*const libc::c_char],
) -> ! {
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
    //    then down, then close everything else but the init program's. Its
    //    copy is close-on-exec, so init does not inherit it.
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
    if program < 0 {
        libc::syscall(libc::SYS_close_range, fds.len() as u32, u32::MAX, 0u32);
    } else {
        libc::syscall(libc::SYS_close_range, fds.len() as u32, (program - 1) as u32, 0u32);
        libc::syscall(libc::SYS_close_range, (program + 1) as u32, u32::MAX, 0u32);
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

    let mut pidfd: RawFd = -1;
    let args = CloneArgs {
        flags: (libc::CLONE_NEWUSER
            | libc::CLONE_NEWPID
            | libc::CLONE_NEWNS
            | libc::CLONE_NEWNET
            | libc::CLONE_NEWIPC
            | libc::CLONE_NEWUTS
            | libc::CLONE_PIDFD) as u64
            | into_cgroup,
        pidfd: &mut pidfd as *mut RawFd as u64,
        exit_signal: libc::SIGCHLD as u64,
        cgroup: cgroup_fd,
        ..Default::default()
    };
    // SAFETY: clone3 without CLONE_VM duplicates the process like fork. The
    // child branch calls only `child`, which is async-signal-safe and uses
    // memory allocated above.
    let pid = unsafe { libc::syscall(libc::SYS_clone3, &args as *const CloneArgs, std::mem::size_of::<CloneArgs>()) };
    if pid < 0 {
        return Err(LaunchError::Clone(io::Error::last_os_error()));
    }
    if pid == 0 {
        // SAFETY: see `child`; every argument was prepared before the clone.
        unsafe { child(sync_read.as_raw_fd(), &join_tasks, &fds, &mut shuffled, program, &path, &argv, &envp) }
    }
    let pid = pid as i32;
    // SAFETY: CLONE_PIDFD stored a new descriptor that nothing else owns.
    let pidfd = unsafe { OwnedFd::from_raw_fd(pidfd) };
    drop((stdin_read, stdout_write, stderr_write, spec_read, reports_write, artifacts_write, sync_read));
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
