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

/// Clones init into new user, PID, mount, network, IPC and UTS namespaces,
/// maps its ids onto `id_base`, lets it run and sends it `spec`. The spec
/// pipe stays open for the claim. With `command_pipes`, the command gets
/// two pipes whose other ends are returned. Uses the starter that
/// [`prestart`] spawned when there is one. On failure the child is killed
/// and reaped.
///
/// On cgroup v2, init starts in `into_cgroup`, which must be the session's
/// cgroup. On v1 it is `None`: init builds its root while the supervisor
/// creates the cgroups, and waits for [`Launched::join`] before it starts
/// anything of the session.
pub fn launch(
    spec: &InitSpec,
    inputs: Vec<File>,
    uid_lock: &File,
    id_base: u32,
    into_cgroup: Option<&SessionCgroup>,
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
    let (cgroup_join, request_fds) = match &directory {
        Some(directory) => (handoff::CgroupJoin::V2, vec![directory.as_raw_fd()]),
        None => (handoff::CgroupJoin::V1, vec![]),
    };
    let request = handoff::Request { id_base, cgroup: cgroup_join };
    let session = handoff::Session { session_fds: fds.len() };

    // A prestarted starter may have ended since, for example when a test
    // killed it, so a failed handoff to one is retried with a new starter.
    let start = |starter: starter::Starter| starter.start(&request, &request_fds, &session, &fds);
    let (pid, pidfd, starter) = match starter::take_prestarted() {
        Some(prestarted) => match start(prestarted) {
            Err(LaunchError::Starter(_)) => start(starter::Starter::spawn()?)?,
            result => result?,
        },
        None => start(starter::Starter::spawn()?)?,
    };
    drop((stdin_read, stdout_write, stderr_write, spec_read, reports_write, artifacts_write, directory));
    let command_pipes = pipes.map(|(child_read, to_command, from_command, child_write)| {
        drop((child_read, child_write));
        CommandPipes { to_command: File::from(to_command), from_command: File::from(from_command) }
    });

    // The spec is one line of JSON; the claim follows on the same pipe.
    let mut spec_json = serde_json::to_vec(&spec).expect("the spec serializes");
    spec_json.push(b'\n');
    let mut spec_pipe = File::from(spec_write);
    if let Err(error) = spec_pipe.write_all(&spec_json) {
        // SAFETY: kill and waitpid on init, a child of this process.
        unsafe {
            libc::kill(pid, libc::SIGKILL);
            libc::waitpid(pid, std::ptr::null_mut(), 0);
        }
        return Err(LaunchError::Release(error));
    }

    starter::replenish();
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
        starter,
    })
}
