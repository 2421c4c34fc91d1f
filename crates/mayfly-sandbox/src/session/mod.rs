//! One sandboxed session from start to verified teardown, on the
//! supervisor's side. Used by `mayfly run`.

mod control;
mod outcome;
mod relay;
mod signals;
mod work_dir;

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::thread;
use std::time::{Duration, Instant, SystemTime};

use mayfly_core::EndReason;

use crate::cgroup::{CgroupLimits, Layout, SessionCgroup};
use crate::spec::{monotonic_now_ns, BindMount, InitSpec, InputFile, LandlockMode};
use crate::teardown::{self, Evidence};
use crate::transfer::{ExportSummary, OpenedInput};
use crate::{ids, launch, ledger};

use outcome::{apply_oom, end_reason};
use relay::{start_relays, wait_for_end_report, Relays};
use signals::forward_signals;

pub use control::SessionControl;
pub use outcome::{DeadlineEnforcer, SessionOutcome, Timings};
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

/// Builds what init needs to know from the session's configuration.
fn init_spec(config: &SessionConfig, deadline_monotonic_ns: u64) -> InitSpec {
    InitSpec {
        session_id: config.session_id.clone(),
        argv: config.argv.clone(),
        env: config.env.clone(),
        hostname: config.hostname.clone(),
        timezone: config.timezone.clone(),
        deadline_monotonic_ns,
        kill_grace_ms: KILL_GRACE.as_millis() as u64,
        tmp_bytes: config.tmp_bytes,
        shm_bytes: config.shm_bytes,
        work_bytes: config.work_bytes,
        open_files: config.open_files,
        inputs: config.inputs.iter().map(|i| InputFile { name: i.name.clone(), mode: i.mode, size: i.size }).collect(),
        artifacts_max_bytes: config.artifacts.as_ref().map(|(_, limit)| *limit),
        mounts: config.mounts.clone(),
        landlock: config.landlock,
        cgroup_membership: Vec::new(),
        terminal: config.terminal,
        command_pipes: None,
    }
}

/// Kills what is left, joins the relays, removes the cgroups and the ledger
/// record, and collects the evidence. Returns the artifact export result too.
fn tear_down(
    cgroup: &SessionCgroup,
    relays: Relays,
    namespaces: &BTreeMap<String, String>,
    early_scan: Option<thread::JoinHandle<Vec<String>>>,
    config: &SessionConfig,
    timings: &mut Timings,
) -> (Evidence, Option<ExportSummary>, Option<String>, bool) {
    let teardown_started = Instant::now();
    let mut evidence = Evidence::default();
    if let Err(error) = cgroup.kill_all(KILL_TIMEOUT) {
        evidence.errors.push(error.to_string());
    }
    let _ = relays.stdout.join();
    let stderr_ended_mid_line = relays.stderr.join().unwrap_or(false);
    let (artifacts, artifacts_error) = match relays.artifacts.map(|t| t.join()) {
        None => (None, None),
        Some(Ok(Ok(summary))) => (Some(summary), None),
        Some(Ok(Err(error))) => (None, Some(error.to_string())),
        Some(Err(_)) => (None, Some("the artifact reader panicked".to_string())),
    };
    if let Err(error) = cgroup.remove(KILL_TIMEOUT) {
        evidence.errors.push(error.to_string());
    }
    evidence.processes_remaining = cgroup.processes();
    evidence.cgroups_remaining = cgroup.remaining_paths();
    timings.teardown_us = teardown_started.elapsed().as_micros() as u64;

    let verify_started = Instant::now();
    evidence.namespaces_remaining = match early_scan.map(|scan| scan.join()) {
        Some(Ok(found)) => found,
        _ => teardown::find_namespace_holders(namespaces, None),
    };
    if evidence.processes_remaining.is_empty() && evidence.cgroups_remaining.is_empty() {
        if let Err(error) = ledger::remove(&config.state_dir, &config.session_id) {
            evidence.errors.push(error.to_string());
        }
    }
    evidence.ledger_record_removed = !ledger::exists(&config.state_dir, &config.session_id);
    timings.verify_us = verify_started.elapsed().as_micros() as u64;
    (evidence.finish(), artifacts, artifacts_error, stderr_ended_mid_line)
}

/// Runs one session: claims ids, records it in the ledger, creates its
/// cgroups, starts init, relays stdio, waits for the end, exports artifacts
/// and tears everything down with evidence.
pub fn run(
    mut config: SessionConfig,
    layout: &Layout,
    stdin: Box<dyn Read + Send>,
    stdout: Box<dyn Write + Send>,
    stderr: Box<dyn Write + Send>,
) -> Result<SessionOutcome, SessionError> {
    if config.argv.is_empty() {
        return Err(SessionError::Invalid("the command is empty".into()));
    }
    let started_wall = SystemTime::now();
    let started = Instant::now();
    let started_ns = monotonic_now_ns();
    let mut timings = Timings::default();
    let deadline_wall = started_wall + config.ttl;
    if let Some(reason) = config.control.as_ref().and_then(SessionControl::destroy_requested) {
        return Err(SessionError::DestroyedBeforeStart(reason));
    }

    // 1. A host id range of its own, held until every session process is gone.
    let id_range = ids::claim(&config.state_dir)?;

    // 2. The ledger record comes before any host resource, so a crash at any
    //    later point leaves something that `reap` can find.
    let supervisor_pid = std::process::id() as i32;
    let mut record = ledger::Record {
        session_id: config.session_id.clone(),
        supervisor_pid,
        supervisor_start: ledger::process_start_time(supervisor_pid).unwrap_or(0),
        init_pid: None,
        deadline_unix_ms: ledger::unix_ms(deadline_wall),
        cgroup_paths: layout.session_paths(&config.session_id),
    };
    ledger::write(&config.state_dir, &record)?;

    // 3. The cgroups, with limits in place before any process joins.
    let cgroup = match SessionCgroup::create(layout, &config.session_id, config.limits) {
        Ok(cgroup) => cgroup,
        Err(error) => {
            let _ = ledger::remove(&config.state_dir, &config.session_id);
            return Err(error.into());
        }
    };

    // 4. Init, in its namespaces and cgroups.
    let mut spec = init_spec(&config, monotonic_now_ns() + config.ttl.as_nanos() as u64);
    spec.cgroup_membership = cgroup.membership();
    let input_files: Vec<File> = std::mem::take(&mut config.inputs).into_iter().map(|i| i.file).collect();
    let mut before_start = config.before_start.take();
    let mut start_guard: Option<StartGuard> = None;
    let mut call_before_start = |init_pid: i32, command_pipes| -> Result<(), String> {
        if let Some(hook) = before_start.take() {
            start_guard = Some((hook.0)(StartContext { init_pid, command_pipes })?);
        }
        Ok(())
    };
    let launched = match launch::launch(&spec, input_files, &id_range.lock, id_range.base, &cgroup, config.command_pipes, &mut call_before_start) {
        Ok(launched) => launched,
        Err(error) => {
            let _ = cgroup.kill_all(KILL_TIMEOUT);
            let _ = cgroup.remove(KILL_TIMEOUT);
            let _ = ledger::remove(&config.state_dir, &config.session_id);
            return Err(error.into());
        }
    };
    drop(id_range);
    timings.launch_us = started.elapsed().as_micros() as u64;
    let init_pid = launched.pid;
    record.init_pid = Some(init_pid);
    let _ = ledger::write(&config.state_dir, &record);
    let held_namespaces = teardown::hold_namespaces(init_pid);
    let namespaces = teardown::namespace_ids(init_pid);
    if let (Some(control), Ok(pidfd)) = (&config.control, launched.pidfd.try_clone()) {
        control.launched(init_pid, pidfd);
    }
    if config.forward_signals {
        if let Ok(pidfd) = launched.pidfd.try_clone() {
            forward_signals(pidfd);
        }
    }

    // 5. Relay stdio and collect reports and artifacts on their own threads.
    let (relays, reports, pidfd) = start_relays(launched, stdin, stdout, stderr, config.artifacts.clone());

    // 6. Wait for init. Init enforces the deadline itself; the supervisor
    //    steps in only if init has not ended the session shortly after it.
    let limit = config.ttl + KILL_GRACE + SUPERVISOR_SLACK;
    let limit_at = Instant::now() + limit.saturating_sub(started_wall.elapsed().unwrap_or_default());
    let mut received = Vec::new();
    let reported_end = wait_for_end_report(&reports.receiver, limit_at, &mut received);

    // Init reports the end after it has killed and reaped every other session
    // process, so the scan for namespace holders can run while init exits.
    let early_scan = reported_end.then(|| {
        let ids = namespaces.clone();
        thread::spawn(move || teardown::find_namespace_holders(&ids, Some(init_pid)))
    });
    let exit_wait = if reported_end { limit_at.saturating_duration_since(Instant::now()).max(EXIT_AFTER_REPORT) } else { limit_at.saturating_duration_since(Instant::now()) };
    let supervisor_killed = !wait_exit(&pidfd, exit_wait);
    if supervisor_killed {
        let _ = cgroup.kill_all(KILL_TIMEOUT);
    }
    timings.ended_us = started.elapsed().as_micros() as u64;
    // SAFETY: waitpid on the init process this supervisor started.
    unsafe { libc::waitpid(init_pid, std::ptr::null_mut(), 0) };
    // Sockets the guard holds in the session's network keep that namespace
    // alive, so they close before the teardown looks for what is left.
    drop(start_guard);
    let (mut end, landlock, mut enforcer) = end_reason(reports, received, supervisor_killed, started_ns, &mut timings);
    if let Some(control) = &config.control {
        control.finished();
        // A destroy that came before init's own end report is why it ended.
        if let (false, Some(reason)) = (reported_end, control.destroy_requested()) {
            end = EndReason::Destroyed { detail: reason };
            enforcer = None;
        }
    }

    // 7. Usage, then the kill and verified teardown.
    let usage = cgroup.usage();
    let end = apply_oom(end, &usage);
    let (evidence, artifacts, artifacts_error, stderr_ended_mid_line) = tear_down(&cgroup, relays, &namespaces, early_scan, &config, &mut timings);
    drop(held_namespaces);

    // A failed export or an incomplete teardown overrides the command's status.
    let exit_code = if artifacts_error.is_some() || !evidence.clean { mayfly_core::ExitCode::SETUP_FAILED } else { end.exit_code() };
    Ok(SessionOutcome {
        session_id: config.session_id,
        exit_code,
        end,
        landlock,
        deadline_enforced_by: enforcer,
        started_at_unix_ms: ledger::unix_ms(started_wall),
        ended_at_unix_ms: ledger::unix_ms(SystemTime::now()),
        deadline_unix_ms: ledger::unix_ms(deadline_wall),
        usage,
        artifacts,
        artifacts_error,
        namespaces,
        teardown: evidence,
        timings,
        stderr_ended_mid_line,
    })
}
