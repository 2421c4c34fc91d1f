//! Preparing a sandbox before any session claims it, and destroying one
//! that no session claimed.

use std::collections::BTreeMap;
use std::fs::File;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::PathBuf;
use std::sync::mpsc;
use std::time::{Duration, Instant, SystemTime};

use crate::cgroup::{CgroupLimits, Layout, SessionCgroup};
use crate::spec::{monotonic_now_ns, BindMount, InitReport, InitSpec, InputFile, LandlockMode};
use crate::ns_handles::NamespaceHandles;
use crate::teardown::{self, Evidence, NamespaceWatch};
use crate::transfer::OpenedInput;
use crate::{ids, launch, ledger};

use super::relay::{start_reports, NamespaceRelease, Pipes, Relays, Reports};
use super::{wait_exit, BeforeStart, SessionControl, SessionError, Timings, KILL_GRACE, KILL_TIMEOUT};

/// The part of a session's configuration that a sandbox is built from
/// before a claim: the profile's part, with nothing of any one session.
#[derive(Debug)]
pub struct PrepareConfig {
    /// The sandbox's id, which names its cgroups and ledger record.
    pub sandbox_id: String,
    pub state_dir: PathBuf,
    pub hostname: String,
    pub timezone: String,
    pub limits: CgroupLimits,
    pub tmp_bytes: u64,
    pub shm_bytes: u64,
    pub work_bytes: u64,
    pub open_files: u32,
    /// Files copied into /work before the claim. A pool member has none,
    /// because inputs belong to a session.
    pub inputs: Vec<OpenedInput>,
    /// Export directory for /work/artifacts, and the size cap.
    pub artifacts: Option<(PathBuf, u64)>,
    pub mounts: Vec<BindMount>,
    pub landlock: LandlockMode,
    /// Gives the command two pipes; see [`super::SessionConfig::command_pipes`].
    pub command_pipes: bool,
    /// Runs the command on a pseudo-terminal, whose size the claim sets.
    pub terminal: bool,
    /// Starts this command before the claim, such as a browser profile's
    /// Chromium. It must hold nothing of a session, and a claim must bring
    /// the same command and environment.
    /// NOTE: its output waits in the stdio pipes (64 KiB each by default on
    /// Linux) until the claim starts the relays, so a command that writes
    /// more before its claim blocks until then.
    pub prestart: Option<crate::spec::Command>,
    /// How long init waits for the claim before it ends the sandbox.
    pub max_unclaimed: Duration,
    /// Marks a sandbox prepared ahead of demand for a warm pool. Its ledger
    /// record is marked too, so that a reap destroys it while it is
    /// unclaimed, and its session's timings and deadline start at the claim.
    pub pool_member: bool,
}

/// The part of a session's configuration that binds a prepared sandbox to
/// the session.
#[derive(Debug)]
pub struct ClaimConfig {
    /// The session's id, recorded in the sandbox's ledger record.
    pub session_id: String,
    pub argv: Vec<String>,
    /// The command's whole environment, secrets included.
    pub env: Vec<(String, String)>,
    /// The session's lifetime, counted from the claim for a pool member
    /// and from the start of [`prepare`] for a cold start.
    pub ttl: Duration,
    /// The size of the pseudo-terminal, which the sandbox must have been
    /// prepared with ([`PrepareConfig::terminal`]).
    pub terminal: Option<crate::terminal::WindowSize>,
    /// See [`super::SessionConfig::forward_signals`].
    pub forward_signals: bool,
    pub control: Option<SessionControl>,
    /// Runs before the command starts; see [`super::SessionConfig::before_start`].
    pub before_start: Option<BeforeStart>,
}

/// A sandbox whose init has built the root filesystem, or is building it,
/// and waits for its claim. Dropping one that was neither claimed nor
/// destroyed destroys it.
pub struct Prepared(pub(super) Option<Parts>);

/// The host resources and the supervisor's ends of a prepared sandbox.
pub(super) struct Parts {
    pub(super) sandbox_id: String,
    pub(super) state_dir: PathBuf,
    pub(super) artifacts: Option<(PathBuf, u64)>,
    pub(super) pool_member: bool,
    pub(super) terminal: bool,
    pub(super) prestart: Option<crate::spec::Command>,
    pub(super) record: ledger::Record,
    pub(super) cgroup: SessionCgroup,
    pub(super) init_pid: i32,
    pub(super) pidfd: OwnedFd,
    pub(super) pipes: Pipes,
    pub(super) claim_pipe: File,
    pub(super) command_pipes: Option<launch::CommandPipes>,
    pub(super) reports: Reports,
    /// Reports already taken from `reports`.
    pub(super) received: Vec<InitReport>,
    pub(super) namespaces: BTreeMap<String, String>,
    /// Handles with which teardown learns that the namespaces are gone, on
    /// kernels that have them. Without them, the reports thread keeps the
    /// namespaces open for a scan.
    pub(super) namespace_handles: Option<NamespaceHandles>,
    pub(super) started: Instant,
    pub(super) started_ns: u64,
    pub(super) started_wall: SystemTime,
    pub(super) timings: Timings,
}

impl std::fmt::Debug for Prepared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let parts = self.0.as_ref();
        f.debug_struct("Prepared").field("sandbox_id", &parts.map(|p| &p.sandbox_id)).field("init_pid", &parts.map(|p| p.init_pid)).finish()
    }
}

impl Drop for Prepared {
    fn drop(&mut self) {
        if let Some(parts) = self.0.take() {
            parts.destroy();
        }
    }
}

/// Builds a sandbox: claims ids, records it in the ledger, creates its
/// cgroups and starts init, which builds the root filesystem and then waits
/// for the claim. Returns without waiting for init's setup; see
/// [`Prepared::wait_ready`].
///
/// On cgroup v1, init starts first and builds its root while the cgroups
/// are made, and joins the cgroups before it starts anything of the
/// session. Until then it has nothing that outlives it: its namespaces and
/// mounts end with it, and it ends when this process does, because its
/// socket to this process then reads end of file. On v2, init starts in
/// its cgroup, so the cgroups come first.
pub fn prepare(config: PrepareConfig, layout: &Layout) -> Result<Prepared, SessionError> {
    prepare_with(config, layout, || Ok(()))
}

/// Runs [`prepare`], and `while_launching` after the ledger record is
/// written, while the kernel creates init's namespaces. When it returns an
/// error, the sandbox is destroyed and the error returned as
/// [`SessionError::BeforeStart`].
pub fn prepare_with(mut config: PrepareConfig, layout: &Layout, while_launching: impl FnOnce() -> Result<(), String>) -> Result<Prepared, SessionError> {
    let started_wall = SystemTime::now();
    let started = Instant::now();
    let started_ns = monotonic_now_ns();
    let mut timings = Timings::default();

    // 1. A host id range of its own, held until every session process is gone.
    let id_range = ids::claim(&config.state_dir)?;

    let supervisor_pid = std::process::id() as i32;
    let mut record = ledger::Record {
        session_id: config.sandbox_id.clone(),
        supervisor_pid,
        supervisor_start: ledger::process_start_time(supervisor_pid).unwrap_or(0),
        init_pid: None,
        deadline_unix_ms: ledger::unix_ms(started_wall + config.max_unclaimed),
        cgroup_paths: layout.session_paths(&config.sandbox_id),
        pool_member: config.pool_member,
        claimed_by: None,
    };
    let spec = InitSpec {
        build_id: crate::init_program::BUILD_ID.to_string(),
        session_id: config.sandbox_id.clone(),
        hostname: config.hostname.clone(),
        timezone: config.timezone.clone(),
        unclaimed_until_monotonic_ns: started_ns + config.max_unclaimed.as_nanos() as u64,
        kill_grace_ms: KILL_GRACE.as_millis() as u64,
        tmp_bytes: config.tmp_bytes,
        shm_bytes: config.shm_bytes,
        work_bytes: config.work_bytes,
        open_files: config.open_files,
        inputs: config.inputs.iter().map(|i| InputFile { name: i.name.clone(), mode: i.mode, size: i.size }).collect(),
        artifacts_max_bytes: config.artifacts.as_ref().map(|(_, limit)| *limit),
        mounts: config.mounts.clone(),
        landlock: config.landlock,
        cgroup_membership: layout.membership(),
        terminal: config.terminal,
        prestart: config.prestart.clone(),
        command_pipes: None,
    };
    let input_files: Vec<File> = std::mem::take(&mut config.inputs).into_iter().map(|i| i.file).collect();

    // 2. The ledger record and init, in its namespaces, with the cgroups
    //    before init on v2 and after it on v1. The record comes before any
    //    host resource that outlives this process, so that `reap` finds
    //    whatever a crash leaves.
    // NOTE: the v2 order below (record and cgroups, request, hook) has not
    // run on a cgroup v2 host, only the v1 order.
    let early_cgroup = if matches!(layout, Layout::V2 { .. }) { Some(record_and_create_cgroup(&config, &record, layout)?) } else { None };
    let undo = |cgroup: Option<&SessionCgroup>| match cgroup {
        Some(cgroup) => remove_cgroup_and_record(cgroup, &config),
        None => {
            let _ = ledger::remove(&config.state_dir, &config.sandbox_id);
        }
    };
    let launching = match launch::begin(&spec, input_files, &id_range.lock, id_range.base, early_cgroup.as_ref(), config.command_pipes) {
        Ok(launching) => launching,
        Err(error) => {
            if let Some(cgroup) = &early_cgroup {
                remove_cgroup_and_record(cgroup, &config);
            }
            return Err(error.into());
        }
    };
    if early_cgroup.is_none() {
        if let Err(error) = ledger::write(&config.state_dir, &record) {
            drop(launching);
            return Err(error.into());
        }
    }
    if let Err(error) = while_launching() {
        drop(launching);
        undo(early_cgroup.as_ref());
        return Err(SessionError::BeforeStart(error));
    }
    let launched = match launching.finish() {
        Ok(launched) => launched,
        Err(error) => {
            undo(early_cgroup.as_ref());
            return Err(error.into());
        }
    };
    let cgroup = match early_cgroup {
        Some(cgroup) => cgroup,
        None => match SessionCgroup::create(layout, &config.sandbox_id, config.limits) {
            Ok(cgroup) => cgroup,
            Err(error) => {
                abandon(launched);
                undo(None);
                return Err(error.into());
            }
        },
    };
    match launched.join(&cgroup) {
        Ok(()) => {}
        // Init ended before the join, such as when a step of its root
        // failed. Its end report names the step, and the session reports
        // it like any other setup failure.
        Err(launch::LaunchError::Starter(error))
            if matches!(error.kind(), std::io::ErrorKind::BrokenPipe | std::io::ErrorKind::ConnectionReset) => {}
        Err(error) => {
            abandon(launched);
            remove_cgroup_and_record(&cgroup, &config);
            return Err(error.into());
        }
    }
    drop(id_range);
    timings.launch_us = started.elapsed().as_micros() as u64;
    let init_pid = launched.pid;
    // Written with a pool member's claim. A cold start's claim changes
    // nothing else in the record, so its record on disk never gets it.
    record.init_pid = Some(init_pid);
    let (handles, release) = match teardown::watch_namespaces(init_pid) {
        NamespaceWatch::Handles { handles, mount } => {
            let release = mount.zip(launched.pidfd.try_clone().ok()).map(|(mount, pidfd)| NamespaceRelease::CloseAfterExit { mount, pidfd });
            (Some(handles), release)
        }
        NamespaceWatch::Held(held) => (None, Some(NamespaceRelease::ScanThenClose(held))),
    };
    let namespaces = teardown::namespace_ids(init_pid);
    let reports = start_reports(launched.reports, launched.starter, namespaces.clone(), init_pid, release);

    Ok(Prepared(Some(Parts {
        sandbox_id: config.sandbox_id,
        state_dir: config.state_dir,
        artifacts: config.artifacts,
        pool_member: config.pool_member,
        terminal: config.terminal,
        prestart: config.prestart,
        record,
        cgroup,
        init_pid,
        pidfd: launched.pidfd,
        pipes: Pipes { stdin: launched.stdin, stdout: launched.stdout, stderr: launched.stderr, artifacts: launched.artifacts },
        claim_pipe: launched.claim,
        command_pipes: launched.command_pipes,
        reports,
        received: Vec::new(),
        namespaces,
        namespace_handles: handles,
        started,
        started_ns,
        started_wall,
        timings,
    })))
}

/// Writes the ledger record, then creates the cgroups. The record comes
/// before any host resource that outlives this process, so that `reap`
/// finds whatever a crash leaves. The limits are in place before any
/// process joins the cgroups.
fn record_and_create_cgroup(config: &PrepareConfig, record: &ledger::Record, layout: &Layout) -> Result<SessionCgroup, SessionError> {
    ledger::write(&config.state_dir, record)?;
    SessionCgroup::create(layout, &config.sandbox_id, config.limits).map_err(|error| {
        let _ = ledger::remove(&config.state_dir, &config.sandbox_id);
        error.into()
    })
}

fn remove_cgroup_and_record(cgroup: &SessionCgroup, config: &PrepareConfig) {
    let _ = cgroup.kill_all(KILL_TIMEOUT);
    let _ = cgroup.remove(KILL_TIMEOUT);
    let _ = ledger::remove(&config.state_dir, &config.sandbox_id);
}

/// Kills and reaps an init that will not be joined to its cgroups.
fn abandon(launched: launch::Launched) {
    // SAFETY: kill and waitpid on init, a child of this process that is not
    // reaped yet, so its pid cannot name another process.
    unsafe {
        libc::kill(launched.pid, libc::SIGKILL);
        libc::waitpid(launched.pid, std::ptr::null_mut(), 0);
    }
}

pub(super) const TAKEN: &str = "a prepared sandbox keeps its parts until it is claimed or destroyed";

impl Prepared {
    fn parts(&self) -> &Parts {
        self.0.as_ref().expect(TAKEN)
    }

    fn parts_mut(&mut self) -> &mut Parts {
        self.0.as_mut().expect(TAKEN)
    }

    /// Returns the sandbox's id, which names its cgroups and ledger record.
    pub fn id(&self) -> &str {
        &self.parts().sandbox_id
    }

    /// Returns init's PID in the host's PID namespace.
    pub fn init_pid(&self) -> i32 {
        self.parts().init_pid
    }

    /// Returns the time since [`prepare`] started building the sandbox.
    pub fn age(&self) -> Duration {
        self.parts().started.elapsed()
    }

    /// Waits until init reports that the sandbox is built and waits for
    /// its claim. Fails with init's reason when setup failed, or after `timeout`.
    pub fn wait_ready(&mut self, timeout: Duration) -> Result<(), String> {
        self.parts_mut().wait_ready(timeout)
    }

    /// Checks that the sandbox can still be claimed: init runs and has not
    /// ended the sandbox. A sandbox that fails this is destroyed, not repaired.
    pub fn check_health(&mut self) -> Result<(), String> {
        self.parts_mut().check_health()
    }

    /// Destroys a sandbox that no session claimed, with the same verified
    /// teardown as a session's end: kills init, which takes every process
    /// of its PID namespace with it, removes the cgroups and the ledger
    /// record and looks for anything left.
    pub fn destroy(mut self) -> Evidence {
        self.0.take().expect(TAKEN).destroy()
    }
}

impl Parts {
    /// Moves the reports init has sent so far into `received`, and returns
    /// the end report's reason when init has ended the sandbox.
    fn collect_reports(&mut self) -> Option<String> {
        self.received.extend(self.reports.receiver.try_iter());
        self.received.iter().find_map(|report| match report {
            crate::spec::InitReport::Ended { end, .. } => Some(end.describe().unwrap_or_else(|| format!("{end:?}"))),
            _ => None,
        })
    }

    fn wait_ready(&mut self, timeout: Duration) -> Result<(), String> {
        let until = Instant::now() + timeout;
        loop {
            if let Some(reason) = self.collect_reports() {
                return Err(format!("init ended the sandbox during setup: {reason}"));
            }
            if self.received.iter().any(|r| matches!(r, InitReport::Ready { .. })) {
                return Ok(());
            }
            match self.reports.receiver.recv_timeout(until.saturating_duration_since(Instant::now())) {
                Ok(report) => self.received.push(report),
                Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
                    return Err(format!("the sandbox was not ready after {} ms", timeout.as_millis()))
                }
                Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
                    return Err("init exited without reporting that the sandbox is ready".into())
                }
            }
        }
    }

    fn check_health(&mut self) -> Result<(), String> {
        if let Some(reason) = self.collect_reports() {
            return Err(format!("init ended the sandbox: {reason}"));
        }
        if wait_exit(&self.pidfd, Duration::ZERO) {
            return Err("init exited".into());
        }
        if !self.received.iter().any(|r| matches!(r, InitReport::Ready { .. })) {
            return Err("init has not reported that the sandbox is ready".into());
        }
        Ok(())
    }

    pub(super) fn destroy(self) -> Evidence {
        // SAFETY: pidfd_send_signal on the pidfd of the init this sandbox started.
        unsafe { libc::syscall(libc::SYS_pidfd_send_signal, self.pidfd.as_raw_fd(), libc::SIGKILL, std::ptr::null::<libc::siginfo_t>(), 0u32) };
        let exited = wait_exit(&self.pidfd, KILL_TIMEOUT);
        if !exited {
            let _ = self.cgroup.kill_all(KILL_TIMEOUT);
        }
        // SAFETY: waitpid on the init process this supervisor started.
        unsafe { libc::waitpid(self.init_pid, std::ptr::null_mut(), 0) };
        drop((self.pipes, self.claim_pipe, self.command_pipes));
        let held_namespaces = self.reports.held_namespaces.recv().ok().flatten();
        let mut timings = Timings::default();
        let check = NamespaceCheck { ids: &self.namespaces, handles: self.namespace_handles.as_ref(), scan: &self.reports.scan, released: &self.reports.released };
        let evidence = tear_down(&self.cgroup, None, check, &self.state_dir, &self.sandbox_id, &mut timings).0;
        if let Some(held) = held_namespaces {
            held.release();
        }
        evidence
    }
}

/// The inputs of teardown's check that the session's namespaces are gone,
/// once every session process has exited.
pub(super) struct NamespaceCheck<'a> {
    /// The namespaces' identities, such as `net:[4026532001]`, by kind.
    pub(super) ids: &'a BTreeMap<String, String>,
    /// Handles to them, where the kernel has handles for namespaces.
    pub(super) handles: Option<&'a NamespaceHandles>,
    /// Otherwise, the scan the reports thread sends after init's end report.
    pub(super) scan: &'a mpsc::Receiver<Vec<String>>,
    /// A channel that disconnects once the reports thread has closed the
    /// mount namespace it held.
    pub(super) released: &'a mpsc::Receiver<()>,
}

/// Kills what is left, joins the relays, removes the cgroups and the ledger
/// record, and collects the evidence. Returns the artifact export result and
/// whether standard error ended mid-line too.
pub(super) fn tear_down(
    cgroup: &SessionCgroup,
    relays: Option<Relays>,
    namespaces: NamespaceCheck<'_>,
    state_dir: &std::path::Path,
    sandbox_id: &str,
    timings: &mut Timings,
) -> (Evidence, Option<crate::transfer::ExportSummary>, Option<String>, bool) {
    let teardown_started = Instant::now();
    let mut evidence = Evidence::default();
    // Init kills and reaps every other session process before it exits, so
    // the cgroups are usually empty, and removing them is the whole check.
    let removed = cgroup.remove_if_empty();
    if !removed {
        if let Err(error) = cgroup.kill_all(KILL_TIMEOUT) {
            evidence.errors.push(error.to_string());
        }
    }
    let (mut artifacts, mut artifacts_error, mut stderr_ended_mid_line) = (None, None, false);
    if let Some(relays) = relays {
        stderr_ended_mid_line = relays.outputs.recv().unwrap_or(false);
        match relays.artifacts.map(|result| result.recv()) {
            None => {}
            Some(Ok(Ok(summary))) => artifacts = Some(summary),
            Some(Ok(Err(error))) => artifacts_error = Some(error.to_string()),
            Some(Err(_)) => artifacts_error = Some("the artifact reader panicked".to_string()),
        }
    }
    if !removed {
        if let Err(error) = cgroup.remove(KILL_TIMEOUT) {
            evidence.errors.push(error.to_string());
        }
    }
    evidence.cgroups_remaining = cgroup.remaining_paths();
    // Only a directory that is left can hold a process.
    if !evidence.cgroups_remaining.is_empty() {
        evidence.processes_remaining = cgroup.processes();
    }
    timings.teardown_us = teardown_started.elapsed().as_micros() as u64;

    // The record goes once no process or cgroup of the session is left. It
    // goes before the wait for the scan, which usually takes longer.
    let verify_started = Instant::now();
    if evidence.processes_remaining.is_empty() && evidence.cgroups_remaining.is_empty() {
        if let Err(error) = ledger::remove(state_dir, sandbox_id) {
            evidence.errors.push(error.to_string());
        }
    }
    evidence.ledger_record_removed = !ledger::exists(state_dir, sandbox_id);
    evidence.namespaces_remaining = match namespaces.handles {
        Some(handles) => {
            let _ = namespaces.released.recv();
            teardown::remaining_namespaces(handles, namespaces.ids)
        }
        // The reports thread sends its scan after an end report, and
        // closes the channel without one once it has ended.
        None => match namespaces.scan.recv() {
            Ok(found) => found,
            Err(_) => teardown::find_namespace_holders(namespaces.ids, None),
        },
    };
    timings.verify_us = verify_started.elapsed().as_micros() as u64;
    (evidence.finish(), artifacts, artifacts_error, stderr_ended_mid_line)
}
