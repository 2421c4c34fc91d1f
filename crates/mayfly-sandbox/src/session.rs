//! One sandboxed session from start to verified teardown, on the
//! supervisor's side. Used by `mayfly run`.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{self, BufRead, Read, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::PathBuf;
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant, SystemTime};

use mayfly_core::EndReason;
use nix::sys::signal::{SigSet, Signal};
use serde::Serialize;

use crate::cgroup::{CgroupLimits, Layout, SessionCgroup, Usage};
use crate::spec::{monotonic_now_ns, BindMount, InitReport, InitSpec, InputFile, LandlockMode, LandlockStatus};
use crate::teardown::{self, Evidence};
use crate::transfer::{self, ExportSummary, OpenedInput};
use crate::{ids, launch, ledger};

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
}

/// Signals the supervisor passes on to the session's command through init.
const FORWARDED: &[Signal] = &[Signal::SIGINT, Signal::SIGTERM, Signal::SIGHUP, Signal::SIGQUIT];

fn forwarded_set() -> SigSet {
    let mut set = SigSet::empty();
    for signal in FORWARDED {
        set.add(*signal);
    }
    set
}

/// Blocks the forwarded signals in the calling thread, and so in every
/// thread it starts later, so that only the forwarding thread receives them.
pub fn block_forwarded_signals() -> Result<(), nix::Error> {
    forwarded_set().thread_block()
}

/// Passes each forwarded signal to init through its pidfd, which cannot
/// reach another process even after init's PID is reused.
fn forward_signals(pidfd: OwnedFd) {
    thread::spawn(move || loop {
        let Ok(signal) = forwarded_set().wait() else { return };
        // SAFETY: pidfd_send_signal reads no memory given a null info pointer.
        let result = unsafe {
            libc::syscall(libc::SYS_pidfd_send_signal, pidfd.as_raw_fd(), signal as i32, std::ptr::null::<libc::siginfo_t>(), 0u32)
        };
        if result != 0 {
            return;
        }
    });
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
}

/// Process that ended the session at its deadline.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum DeadlineEnforcer {
    Init,
    Supervisor,
}

/// Durations of a session's phases in microseconds, for operators and `mayfly bench`.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Timings {
    /// From the start of the session to init running in its namespaces and cgroups.
    pub launch_us: u64,
    /// From the start of the session to the start of init's own code, after its exec.
    pub init_started_us: u64,
    /// Init's own setup, from its start to the command's exec, as init measured it.
    pub init_setup_us: u64,
    /// From the start of the session to init's report that every session
    /// process is gone and the artifacts are out.
    pub init_reported_us: u64,
    /// From the start of the session to init's exit, which includes the
    /// kernel's teardown of the session's namespaces.
    pub ended_us: u64,
    /// Kill, cgroup removal and stream joins after init's exit.
    pub teardown_us: u64,
    /// Time teardown waited for the scan for anything of the session left on
    /// the host; the scan starts when init reports the end, while init exits.
    pub verify_us: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct SessionOutcome {
    pub session_id: String,
    pub end: EndReason,
    pub exit_code: i32,
    pub landlock: Option<LandlockStatus>,
    pub deadline_enforced_by: Option<DeadlineEnforcer>,
    pub started_at_unix_ms: u64,
    pub ended_at_unix_ms: u64,
    pub deadline_unix_ms: u64,
    pub usage: Usage,
    pub artifacts: Option<ExportSummary>,
    pub artifacts_error: Option<String>,
    pub namespaces: BTreeMap<String, String>,
    pub teardown: Evidence,
    pub timings: Timings,
    /// Whether the command's standard error ended without a newline.
    #[serde(skip)]
    pub stderr_ended_mid_line: bool,
}

/// Copies a stream until end-of-file. Returns whether the last byte copied
/// was something other than a newline.
fn copy_thread(mut from: File, mut to: Box<dyn Write + Send>) -> thread::JoinHandle<bool> {
    thread::spawn(move || {
        let mut buffer = [0u8; 16 * 1024];
        let mut mid_line = false;
        loop {
            match from.read(&mut buffer) {
                Ok(0) => break,
                Ok(n) => {
                    mid_line = buffer[n - 1] != b'\n';
                    if to.write_all(&buffer[..n]).and_then(|()| to.flush()).is_err() {
                        // The reader is gone; keep draining so the command is not blocked.
                        to = Box::new(io::sink());
                    }
                }
                Err(error) if error.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => break,
            }
        }
        mid_line
    })
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

/// Interprets the kernel's OOM counter: a command killed by SIGKILL, or one
/// that failed after a process of the session was OOM-killed, ran out of memory.
fn apply_oom(end: EndReason, usage: &Usage) -> EndReason {
    if usage.oom_kills == 0 {
        return end;
    }
    match end {
        EndReason::Signaled { signal, .. } if signal == libc::SIGKILL => EndReason::OutOfMemory,
        EndReason::Exited { code } if code != 0 => EndReason::OutOfMemory,
        EndReason::SetupFailed { step, .. } if step == INIT_STEP => EndReason::OutOfMemory,
        other => other,
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
    }
}

/// The threads that move a running session's data: stdio and the artifact stream.
struct Relays {
    stdout: thread::JoinHandle<bool>,
    stderr: thread::JoinHandle<bool>,
    artifacts: Option<thread::JoinHandle<Result<ExportSummary, transfer::TransferError>>>,
}

/// The thread that reads init's reports, and the channel it passes them on.
struct Reports {
    thread: thread::JoinHandle<()>,
    receiver: mpsc::Receiver<InitReport>,
}

/// Starts the relay threads. The stdin thread is detached: it may block on
/// the caller's input after the session has ended.
fn start_relays(
    launched: launch::Launched,
    stdin: Box<dyn Read + Send>,
    stdout: Box<dyn Write + Send>,
    stderr: Box<dyn Write + Send>,
    artifacts: Option<(PathBuf, u64)>,
) -> (Relays, Reports, OwnedFd) {
    let stdout_thread = copy_thread(launched.stdout, stdout);
    let stderr_thread = copy_thread(launched.stderr, stderr);
    let mut stdin = stdin;
    let mut stdin_pipe = launched.stdin;
    thread::spawn(move || {
        let _ = io::copy(&mut stdin, &mut stdin_pipe);
    });
    let artifacts_pipe = launched.artifacts;
    let artifacts_thread = artifacts.map(|(dir, limit)| {
        thread::spawn(move || {
            let mut pipe = artifacts_pipe;
            let result = transfer::read_artifacts(&mut pipe, &dir, limit);
            // After an error, drain the rest so that init never blocks on a full pipe.
            let _ = io::copy(&mut pipe, &mut io::sink());
            result
        })
    });
    let (report_sender, report_receiver) = mpsc::channel::<InitReport>();
    let reports = launched.reports;
    let report_thread = thread::spawn(move || {
        for line in io::BufReader::new(reports).lines() {
            let Ok(line) = line else { break };
            if let Ok(report) = serde_json::from_str::<InitReport>(&line) {
                let _ = report_sender.send(report);
            }
        }
    });
    let relays = Relays { stdout: stdout_thread, stderr: stderr_thread, artifacts: artifacts_thread };
    (relays, Reports { thread: report_thread, receiver: report_receiver }, launched.pidfd)
}

/// Collects init's reports until the end report arrives, `until` passes or
/// init closes its report pipe. Returns whether the end report arrived.
fn wait_for_end_report(receiver: &mpsc::Receiver<InitReport>, until: Instant, received: &mut Vec<InitReport>) -> bool {
    loop {
        match receiver.recv_timeout(until.saturating_duration_since(Instant::now())) {
            Ok(report) => {
                let is_end = matches!(report, InitReport::Ended { .. });
                received.push(report);
                if is_end {
                    return true;
                }
            }
            Err(_) => return false,
        }
    }
}

/// Reads init's reports once it has exited and decides how the session ended.
fn end_reason(
    reports: Reports,
    mut received: Vec<InitReport>,
    supervisor_killed: bool,
    started_ns: u64,
    timings: &mut Timings,
) -> (EndReason, Option<LandlockStatus>, Option<DeadlineEnforcer>) {
    let since_start = |ns: u64| ns.saturating_sub(started_ns) / 1000;
    let _ = reports.thread.join();
    received.extend(reports.receiver.try_iter());
    let mut landlock = None;
    let mut end = None;
    for report in received {
        match report {
            InitReport::Started { landlock: status, setup_us, init_started_ns } => {
                landlock = Some(status);
                timings.init_setup_us = setup_us;
                timings.init_started_us = since_start(init_started_ns);
            }
            InitReport::Ended { end: reason, reported_ns, .. } => {
                end = Some(reason);
                timings.init_reported_us = since_start(reported_ns);
            }
        }
    }
    if supervisor_killed {
        return (EndReason::Deadline, landlock, Some(DeadlineEnforcer::Supervisor));
    }
    let end = end.unwrap_or_else(|| EndReason::SetupFailed {
        step: INIT_STEP.into(),
        error: "init exited without reporting how the session ended".into(),
    });
    let enforcer = (end == EndReason::Deadline).then_some(DeadlineEnforcer::Init);
    (end, landlock, enforcer)
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
    let launched = match launch::launch(&spec, input_files, &id_range.lock, id_range.base, &cgroup) {
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
    let (end, landlock, enforcer) = end_reason(reports, received, supervisor_killed, started_ns, &mut timings);

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
