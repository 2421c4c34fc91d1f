//! One sandboxed session from start to verified teardown, on the
//! supervisor's side. Used by `mayfly run` and the server.
//!
//! A session runs in two steps. [`prepare`] builds the sandbox: ids, the
//! ledger record, cgroups, namespaces, the root filesystem and an init that
//! waits for its claim. [`Prepared::claim`] binds it to one session (the
//! command, environment, deadline and the hooks that open the session's
//! network) and runs it to its verified teardown. [`run`] does both at
//! once, for a cold start; a warm pool prepares ahead of demand.

mod claim;
mod control;
mod outcome;
mod prepare;
mod relay;
mod signals;
mod work_dir;

use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use crate::cgroup::{CgroupLimits, Layout};
use crate::spec::{BindMount, LandlockMode};
use crate::transfer::OpenedInput;
use crate::{ids, launch, ledger};

pub use control::SessionControl;
pub use outcome::{DeadlineEnforcer, SessionOutcome, Timings};
pub use prepare::{prepare, prepare_with, ClaimConfig, PrepareConfig, Prepared};
pub use signals::block_forwarded_signals;
pub use work_dir::{WorkDir, WorkDirError};

/// Time init waits between SIGTERM and SIGKILL at the deadline.
pub const KILL_GRACE: Duration = Duration::from_millis(500);
/// Extra time the supervisor allows past deadline and grace before it kills
/// the session's cgroup itself.
const SUPERVISOR_SLACK: Duration = Duration::from_millis(250);
const KILL_TIMEOUT: Duration = Duration::from_secs(5);
/// Time init gets to exit after its end report, even past the deadline: by
/// then the other processes are dead and the artifacts are out, so init has
/// nothing left to do but exit.
const EXIT_AFTER_REPORT: Duration = Duration::from_secs(5);
/// The setup step named when init ends without a report.
const INIT_STEP: &str = "run init";

#[derive(Debug)]
pub struct SessionConfig {
    pub session_id: String,
    pub state_dir: PathBuf,
    pub argv: Vec<String>,
    pub env: Vec<(String, String)>,
    pub hostname: String,
    pub timezone: String,
    pub ttl: Duration,
    pub limits: CgroupLimits,
    pub tmp_bytes: u64,
    pub shm_bytes: u64,
    pub work_bytes: u64,
    pub open_files: u32,
    pub inputs: Vec<OpenedInput>,
    /// Export directory for /work/artifacts, and the size cap.
    pub artifacts: Option<(PathBuf, u64)>,
    pub mounts: Vec<BindMount>,
    pub landlock: LandlockMode,
    /// Pass SIGINT, SIGTERM, SIGHUP and SIGQUIT received by this process on to
    /// the command. The caller must have called [`block_forwarded_signals`]
    /// before it started any thread.
    pub forward_signals: bool,
    /// Lets another thread destroy the session and learn when it started.
    pub control: Option<SessionControl>,
    /// Run the command on a pseudo-terminal of this size. Standard input
    /// then carries frames ([`crate::terminal`]), and standard output the
    /// terminal's output; standard error stays empty.
    pub terminal: Option<crate::terminal::WindowSize>,
    /// Gives the command two pipes, at descriptors 3 (to read) and 4 (to
    /// write), whose other ends [`SessionConfig::before_start`] receives;
    /// Chromium's DevTools pipe uses them.
    pub command_pipes: bool,
    /// Runs after the namespaces exist and before init starts the command,
    /// such as to open a listener in the session's network. The value it
    /// returns is dropped once init has exited and before the teardown is
    /// verified.
    pub before_start: Option<BeforeStart>,
}

/// The argument of [`SessionConfig::before_start`].
#[derive(Debug)]
pub struct StartContext {
    /// Init's PID in the host's PID namespace.
    pub init_pid: i32,
    /// The supervisor's ends of the command pipes, when the session has them.
    pub command_pipes: Option<launch::CommandPipes>,
}

/// The value [`SessionConfig::before_start`] returns: a guard that the
/// session drops once its init has exited.
pub type StartGuard = Box<dyn Send>;

/// A function called before the command starts.
pub struct BeforeStart(pub Box<dyn FnOnce(StartContext) -> Result<StartGuard, String> + Send>);

impl std::fmt::Debug for BeforeStart {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("BeforeStart")
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    #[error("invalid session: {0}")]
    Invalid(String),
    #[error(transparent)]
    Ids(#[from] ids::IdError),
    #[error(transparent)]
    Ledger(#[from] ledger::LedgerError),
    #[error("failed to create the session cgroup: {0}")]
    Cgroup(#[from] crate::cgroup::CgroupError),
    #[error("failed to start the sandbox: {0}")]
    Launch(#[from] launch::LaunchError),
    #[error("failed to prepare the sandbox before its command starts: {0}")]
    BeforeStart(String),
    #[error("the session was destroyed before its sandbox started: {0}")]
    DestroyedBeforeStart(String),
}

/// Waits until the pidfd becomes readable (the process exited) or `timeout` passes.
fn wait_exit(pidfd: &impl AsRawFd, timeout: Duration) -> bool {
    let started = Instant::now();
    loop {
        let left = timeout.saturating_sub(started.elapsed());
        let mut poll = libc::pollfd { fd: pidfd.as_raw_fd(), events: libc::POLLIN, revents: 0 };
        let millis = left.as_millis().min(i32::MAX as u128) as i32;
        // SAFETY: poll reads and writes one pollfd that lives on this stack.
        let ready = unsafe { libc::poll(&mut poll, 1, millis) };
        if ready > 0 {
            return true;
        }
        if ready == 0 || started.elapsed() >= timeout {
            return false;
        }
    }
}

impl SessionConfig {
    /// Splits the configuration into what the sandbox is prepared from and
    /// what binds it to the session at the claim. The prepared sandbox
    /// waits for its claim for at most the session's TTL.
    pub fn split(self) -> (PrepareConfig, ClaimConfig) {
        let prepare = PrepareConfig {
            sandbox_id: self.session_id.clone(),
            state_dir: self.state_dir,
            hostname: self.hostname,
            timezone: self.timezone,
            limits: self.limits,
            tmp_bytes: self.tmp_bytes,
            shm_bytes: self.shm_bytes,
            work_bytes: self.work_bytes,
            open_files: self.open_files,
            inputs: self.inputs,
            artifacts: self.artifacts,
            mounts: self.mounts,
            landlock: self.landlock,
            command_pipes: self.command_pipes,
            terminal: self.terminal.is_some(),
            prestart: None,
            max_unclaimed: self.ttl,
            pool_member: false,
        };
        let claim = ClaimConfig {
            session_id: self.session_id,
            argv: self.argv,
            env: self.env,
            ttl: self.ttl,
            terminal: self.terminal,
            forward_signals: self.forward_signals,
            control: self.control,
            before_start: self.before_start,
        };
        (prepare, claim)
    }
}

/// Runs one session started cold: prepares its sandbox and claims it at
/// once, then relays stdio, waits for the end, exports artifacts and tears
/// everything down with evidence. Without `stdin`, the command reads
/// end-of-file at once.
pub fn run(
    config: SessionConfig,
    layout: &Layout,
    stdin: Option<Box<dyn Read + Send>>,
    stdout: Box<dyn Write + Send>,
    stderr: Box<dyn Write + Send>,
) -> Result<SessionOutcome, SessionError> {
    if config.argv.is_empty() {
        return Err(SessionError::Invalid("the command is empty".into()));
    }
    if let Some(reason) = config.control.as_ref().and_then(SessionControl::destroy_requested) {
        return Err(SessionError::DestroyedBeforeStart(reason));
    }
    let (prepare_config, claim_config) = config.split();
    let prepared = prepare(prepare_config, layout)?;
    prepared.claim(claim_config, stdin, stdout, stderr)
}
