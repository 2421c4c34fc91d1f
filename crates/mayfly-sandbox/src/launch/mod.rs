//! Starting init in fresh namespaces, from the supervisor's side.
//!
//! A [`starter::Starter`], a child of the supervisor in the host's
//! namespaces, clones init into the session's namespaces and writes its id
//! maps. The supervisor hands init the session's descriptors through the
//! starter's socket, then sends init the spec.

mod clone;
pub(crate) mod descriptors;
pub(crate) mod handoff;
pub(crate) mod starter;

pub(crate) use clone::{clone3_fork, CloneArgs, CLONE_INTO_CGROUP};
pub(crate) use starter::forget_command_line_and_environment;
pub use starter::{keep_one_ready, prestart, prestart_forked, Starter, STARTER_SOCKET};

use std::fs::File;
use std::io::{self, Write};
use std::os::fd::{AsRawFd, OwnedFd, RawFd};

use crate::cgroup::{Join, SessionCgroup};
use crate::spec::InitSpec;

/// The hidden argument that makes the init program, or the mayfly binary
/// when `mayfly-init` is missing, run as init's starter.
pub const INIT_ARGUMENT: &str = "__mayfly-sandbox-init";

/// Host uids and gids of a session: inside uid 0 to 65535 map onto
/// `base .. base + 65536`, a range no host account uses.
pub const ID_RANGE_SIZE: u32 = 65_536;

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
    #[error("failed to hand the session to the init program: {0}")]
    Starter(io::Error),
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
    /// The starter that cloned init, which exits by itself.
    pub starter: Starter,
}

impl Launched {
    /// Tells init that the session's cgroups exist and have their limits,
    /// and on cgroup v1 passes it the `tasks` files it writes itself into.
    /// Init starts nothing of the session before this.
    pub fn join(&self, cgroup: &SessionCgroup) -> Result<(), LaunchError> {
        let tasks = match cgroup.open_join()? {
            Join::V1 { tasks } => tasks,
            Join::V2 => Vec::new(),
        };
        let fds: Vec<RawFd> = tasks.iter().map(|f| f.as_raw_fd()).collect();
        self.starter.join(&handoff::Join { tasks: fds.len() }, &fds)
    }
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

/// Starts init: the starter clones it into new user, PID, mount, network,
/// IPC and UTS namespaces and maps its ids onto `id_base`, and init gets
/// `spec`. Returns while that runs, so that the caller can work meanwhile;
/// [`Launching::finish`] waits for init. The spec pipe stays
/// open for the claim. With `command_pipes`, the command gets two pipes
/// whose other ends are returned. Uses the starter that [`prestart`]
/// spawned when there is one. On failure the child is killed and reaped.
///
/// On cgroup v2, init starts in `into_cgroup`, which must be the session's
/// cgroup. On v1 it is `None`: init builds its root while the supervisor
/// creates the cgroups, and waits for [`Launched::join`] before it starts
/// anything of the session.
pub fn begin(
    spec: &InitSpec,
    inputs: Vec<File>,
    uid_lock: &File,
    id_base: u32,
    into_cgroup: Option<&SessionCgroup>,
    command_pipes: bool,
) -> Result<Launching, LaunchError> {
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

    let directory = into_cgroup.map(SessionCgroup::open_directory).transpose()?;
    let cgroup = match &directory {
        Some(_) => handoff::CgroupJoin::V2,
        None => handoff::CgroupJoin::V1,
    };
    // The spec is one line of JSON; the claim follows on the same pipe.
    // It goes into the pipe now, so that init reads it and builds its root
    // as soon as the starter releases it, while the caller works. The write
    // does not block: `finish` writes the rest once init exists to read it.
    let mut spec_json = serde_json::to_vec(&spec).expect("the spec serializes");
    spec_json.push(b'\n');
    let spec_sent = write_without_blocking(&spec_write, &spec_json);

    let mut launching = Launching {
        request: handoff::Request { id_base, cgroup },
        session: handoff::Session { session_fds: fds.len() },
        fds,
        directory,
        child_ends: vec![stdin_read, stdout_write, stderr_write, spec_read, reports_write, artifacts_write],
        _inputs: inputs,
        ends: Some(Ends {
            pipes,
            stdin: stdin_write,
            stdout: stdout_read,
            stderr: stderr_read,
            reports: reports_read,
            artifacts: artifacts_read,
            spec: spec_write,
        }),
        spec_json,
        spec_sent,
        starter: None,
        prestarted: false,
    };
    // A prestarted starter may have ended since, for example when a test
    // killed it, so a failed handoff to one is retried with a new starter.
    let starter = match starter::take_prestarted() {
        Some(prestarted) => match launching.send(&prestarted) {
            Ok(()) => {
                launching.prestarted = true;
                prestarted
            }
            Err(LaunchError::Starter(_)) => launching.send_to_new()?,
            Err(error) => return Err(error),
        },
        None => launching.send_to_new()?,
    };
    launching.starter = Some(starter);
    Ok(launching)
}

/// Writes what `pipe` takes of `bytes` at once and returns how much that was.
fn write_without_blocking(pipe: &OwnedFd, bytes: &[u8]) -> usize {
    let fd = pipe.as_raw_fd();
    // SAFETY: fcntl and write on a descriptor this process owns, from a
    // buffer that outlives the call.
    unsafe {
        let flags = libc::fcntl(fd, libc::F_GETFL);
        if flags < 0 || libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK) < 0 {
            return 0;
        }
        let written = libc::write(fd, bytes.as_ptr().cast(), bytes.len());
        libc::fcntl(fd, libc::F_SETFL, flags);
        written.max(0) as usize
    }
}

/// A launch whose starter has the request and is cloning init. Dropping it
/// kills and reaps init.
pub struct Launching {
    request: handoff::Request,
    session: handoff::Session,
    /// The session's descriptors in init's order. They belong to the fields below.
    fds: Vec<RawFd>,
    directory: Option<File>,
    /// Init's ends of the pipes, closed here once init has them.
    child_ends: Vec<OwnedFd>,
    _inputs: Vec<File>,
    ends: Option<Ends>,
    spec_json: Vec<u8>,
    /// How much of `spec_json` is in the spec pipe already.
    spec_sent: usize,
    starter: Option<Starter>,
    /// Whether `starter` was prestarted. Such a starter may have ended since,
    /// so a failure gets a second try with a new one.
    prestarted: bool,
}

/// The supervisor's ends of a launching sandbox's pipes.
struct Ends {
    /// Init's and the supervisor's ends of the command pipes.
    pipes: Option<(OwnedFd, OwnedFd, OwnedFd, OwnedFd)>,
    stdin: OwnedFd,
    stdout: OwnedFd,
    stderr: OwnedFd,
    reports: OwnedFd,
    artifacts: OwnedFd,
    spec: OwnedFd,
}

impl Launching {
    fn send(&self, starter: &Starter) -> Result<(), LaunchError> {
        let request_fds: Vec<RawFd> = self.directory.iter().map(|d| d.as_raw_fd()).collect();
        starter.send_start(&self.request, &request_fds, &self.session, &self.fds)
    }

    fn send_to_new(&self) -> Result<Starter, LaunchError> {
        let starter = Starter::spawn()?;
        self.send(&starter)?;
        Ok(starter)
    }

    /// Waits for init's pid from the starter, retrying once with a new
    /// starter when a prestarted one failed.
    fn wait(&mut self) -> Result<(i32, OwnedFd, Starter), LaunchError> {
        let starter = self.starter.take().expect("a launching sandbox has a starter until it finishes");
        match starter.wait_started() {
            Err(LaunchError::Starter(_)) if self.prestarted => {
                self.prestarted = false;
                self.send_to_new()?.wait_started()
            }
            result => result,
        }
    }

    /// Waits for init and sends it the rest of the spec. On failure init
    /// is killed and reaped.
    pub fn finish(mut self) -> Result<Launched, LaunchError> {
        let (pid, pidfd, starter) = self.wait()?;
        self.child_ends.clear();
        self.directory = None;
        let ends = self.ends.take().expect("a launching sandbox has its pipes until it finishes");
        let command_pipes = ends.pipes.map(|(child_read, to_command, from_command, child_write)| {
            drop((child_read, child_write));
            CommandPipes { to_command: File::from(to_command), from_command: File::from(from_command) }
        });
        let mut spec_pipe = File::from(ends.spec);
        if let Err(error) = spec_pipe.write_all(&self.spec_json[self.spec_sent..]) {
            kill_and_reap(pid);
            return Err(LaunchError::Release(error));
        }

        starter::replenish();
        Ok(Launched {
            pid,
            pidfd,
            stdin: File::from(ends.stdin),
            stdout: File::from(ends.stdout),
            stderr: File::from(ends.stderr),
            reports: File::from(ends.reports),
            artifacts: File::from(ends.artifacts),
            claim: spec_pipe,
            command_pipes,
            starter,
        })
    }
}

impl Drop for Launching {
    fn drop(&mut self) {
        if self.starter.is_some() {
            if let Ok((pid, _, _)) = self.wait() {
                kill_and_reap(pid);
            }
        }
    }
}

fn kill_and_reap(pid: i32) {
    // SAFETY: kill and waitpid on init, a child of this process that is not
    // reaped yet, so its pid cannot name another process.
    unsafe {
        libc::kill(pid, libc::SIGKILL);
        libc::waitpid(pid, std::ptr::null_mut(), 0);
    }
}
