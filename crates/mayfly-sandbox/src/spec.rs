//! The spec the supervisor sends to the in-sandbox init, and the reports init sends back.
//!
//! Both travel as JSON over pipes that the supervisor sets up at fixed file
//! descriptor numbers before init starts. The spec pipe carries two lines:
//! the [`InitSpec`], from which init builds the sandbox, and later the
//! [`Claim`], which gives the sandbox its command and deadline. A pool
//! member waits between the two.

use std::path::PathBuf;

use mayfly_core::EndReason;
use serde::{Deserialize, Serialize};

/// File descriptors of init, fixed by the launcher.
pub mod fd {
    /// Read end of the pipe that carries the [`InitSpec`] and the [`Claim`].
    pub const SPEC: i32 = 3;
    /// Write end of the pipe for [`InitReport`] lines.
    pub const REPORT: i32 = 4;
    /// Write end of the artifact stream.
    pub const ARTIFACTS: i32 = 5;
    /// The session's uid-range lock, held open for init's lifetime.
    pub const UID_LOCK: i32 = 6;
    /// First input file; input `i` is at `FIRST_INPUT + i`.
    pub const FIRST_INPUT: i32 = 7;
}

/// Inside the sandbox, the uid and gid of the command. Init runs as 0, which
/// maps to an unprivileged host uid like every other sandbox uid.
pub const SANDBOX_UID: u32 = 1000;
pub const SANDBOX_GID: u32 = 1000;

/// Directory of the command's writable working space inside the sandbox.
pub const WORK_DIR: &str = "/work";
/// Directory inside the sandbox whose files `--artifacts` exports.
pub const ARTIFACTS_DIR: &str = "/work/artifacts";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum LandlockMode {
    Required,
    IfAvailable,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InputFile {
    /// Relative path under /work, already checked by [`crate::transfer::check_name`].
    pub name: String,
    pub mode: u32,
    pub size: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BindMount {
    pub source: PathBuf,
    pub target: PathBuf,
}

/// The configuration init builds the sandbox from, before a claim. It
/// contains nothing of the session that will claim the sandbox: the
/// command, environment and deadline arrive in the [`Claim`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InitSpec {
    /// The [`crate::init_program::BUILD_ID`] of the binary that wrote the
    /// spec. Init rejects a spec from another build.
    pub build_id: String,
    /// The sandbox's id, which names its cgroups and ledger record.
    pub session_id: String,
    pub hostname: String,
    pub timezone: String,
    /// CLOCK_MONOTONIC time, in nanoseconds, after which init ends the
    /// sandbox if no claim has arrived.
    pub unclaimed_until_monotonic_ns: u64,
    /// Time between SIGTERM and SIGKILL at the deadline.
    pub kill_grace_ms: u64,
    pub tmp_bytes: u64,
    pub shm_bytes: u64,
    pub work_bytes: u64,
    pub open_files: u32,
    pub inputs: Vec<InputFile>,
    /// Size cap of the artifact export, or `None` when nothing is exported.
    pub artifacts_max_bytes: Option<u64>,
    pub mounts: Vec<BindMount>,
    pub landlock: LandlockMode,
    /// Controller lists of the `/proc/self/cgroup` lines that must name the
    /// session cgroup before anything of the session runs (see
    /// [`crate::cgroup::SessionCgroup::membership`]).
    pub cgroup_membership: Vec<String>,
    /// Whether the command runs on a pseudo-terminal, which init opens
    /// before the claim. The claim sets its window size.
    #[serde(default)]
    pub terminal: bool,
    /// A command that starts before the claim, such as a browser profile's
    /// Chromium, with an environment fixed by the profile alone. The claim
    /// then brings only the deadline and the terminal size.
    #[serde(default)]
    pub prestart: Option<Command>,
    /// Init's descriptors of the two command pipes, when the session has
    /// them: the command reads the first at descriptor 3 and writes the
    /// second at descriptor 4. The launcher sets this.
    #[serde(default)]
    pub command_pipes: Option<(i32, i32)>,
}

/// A program and its whole environment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Command {
    pub argv: Vec<String>,
    pub env: Vec<(String, String)>,
}

/// What binds a prepared sandbox to one session: the second line of the
/// spec pipe.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claim {
    pub argv: Vec<String>,
    /// The command's whole environment, injected secrets included.
    pub env: Vec<(String, String)>,
    /// Absolute deadline on CLOCK_MONOTONIC, in nanoseconds, counted from
    /// the claim. The PID namespace shares the host's monotonic clock, so
    /// init and supervisor agree on it.
    pub deadline_monotonic_ns: u64,
    /// For a terminal session, the window size of the pseudo-terminal that
    /// becomes the command's standard input, output and error.
    #[serde(default)]
    pub terminal: Option<crate::terminal::WindowSize>,
}

/// Which Landlock protection the command actually got.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LandlockStatus {
    FullyEnforced,
    PartiallyEnforced,
    NotEnforced,
}

/// One line from init to the supervisor.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum InitReport {
    /// The sandbox is built and init waits for its claim. `setup_us` is the
    /// time from init's start to this report.
    Ready { setup_us: u64 },
    /// The command passed every setup step and is about to run. `setup_us`
    /// is the time init spent on setup and on starting the command, without
    /// the wait for the claim. `init_started_ns` is the CLOCK_MONOTONIC time
    /// at which init started, and `command_started_ns` the time at which it
    /// learned that the command's exec succeeded.
    Started {
        landlock: LandlockStatus,
        setup_us: u64,
        init_started_ns: u64,
        #[serde(default)]
        command_started_ns: u64,
    },
    /// The session is over and every process in it has been killed.
    /// `reported_ns` is the CLOCK_MONOTONIC time of this report.
    Ended { end: EndReason, artifacts_truncated: bool, reported_ns: u64 },
}

/// Returns the current CLOCK_MONOTONIC time in nanoseconds.
pub fn monotonic_now_ns() -> u64 {
    let now = nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC).expect("CLOCK_MONOTONIC is always available");
    now.tv_sec() as u64 * 1_000_000_000 + now.tv_nsec() as u64
}
