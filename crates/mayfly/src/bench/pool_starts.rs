//! `mayfly bench --suite pool`: the time from a session's start to its
//! running command, for jobs and shells. A warm start claims a sandbox
//! prepared ahead, as a warm pool member is, and a cold start builds the
//! sandbox first. The suite also reads the memory an idle member costs, and
//! times browser starts to their first frame (`pool_browser.rs`).
//!
//! The bench calls the sandbox directly, as the server's session threads
//! do, and reads the time at which init reported the command's exec. A cold
//! start counts from the start of the sandbox's preparation, and a warm
//! start from the claim. Warm and cold alternate, each iteration starting with the
//! other, so machine noise affects both alike.

use std::time::Duration;

use mayfly_core::profile::BUILT_IN;
use mayfly_core::{EndReason, Profile};
use mayfly_sandbox::cgroup::{CgroupLimits, Layout};
use mayfly_sandbox::session::{self, prepare, Prepared, SessionConfig};
use mayfly_sandbox::spec::{BindMount, LandlockMode};
use mayfly_sandbox::terminal::WindowSize;
use serde::Serialize;

use super::memory::{mebibytes, process_pss_bytes, SessionMemory};

/// Returns the summed proportional set size of the processes of a member.
fn member_pss_bytes(memory: &SessionMemory) -> Result<u64, String> {
    memory.pids()?.into_iter().map(process_pss_bytes).sum()
}
use super::stats::{median, milliseconds, percentile};
use super::utc::format_utc;
use crate::cli::BenchArgs;

/// Unmeasured iterations before the measured ones.
const WARMUP_RUNS: u32 = 3;
/// The maximum iterations per kind and side.
const MAX_RUNS: u32 = 1000;
/// Idle members whose memory is read.
const MEMORY_MEMBERS: usize = 8;
/// How long idle members settle before their memory is read.
const SETTLE: Duration = Duration::from_secs(2);
const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// One kind of session measured: its profile and its command.
struct Kind {
    name: &'static str,
    profile: &'static str,
    argv: &'static [&'static str],
    terminal: Option<WindowSize>,
}

const KINDS: &[Kind] = &[
    Kind { name: "job", profile: "default", argv: &["/bin/true"], terminal: None },
    Kind { name: "shell", profile: "shell", argv: &["/bin/bash", "-i", "-c", "true"], terminal: Some(WindowSize { rows: 24, cols: 80 }) },
];

/// The starts of one kind on one side, in microseconds.
#[derive(Debug, Serialize)]
pub(super) struct Side {
    pub(super) kind: &'static str,
    pub(super) start: &'static str,
    pub(super) runs: usize,
    pub(super) median_ms: Option<f64>,
    pub(super) p99_ms: Option<f64>,
    pub(super) min_ms: Option<f64>,
    pub(super) errors: Vec<String>,
    #[serde(skip)]
    samples: Vec<Duration>,
}

/// The memory an idle member uses, averaged over [`MEMORY_MEMBERS`].
#[derive(Debug, Serialize, Default)]
pub(super) struct MemberMemory {
    pub(super) members: usize,
    /// Charged to the member's cgroup: init, its page tables, the root
    /// filesystem's tmpfs pages and the kernel's objects of the sandbox.
    pub(super) cgroup_mib: f64,
    /// The proportional set size of the member's processes: init and the
    /// command child that waits for the claim.
    pub(super) processes_pss_mib: f64,
    /// Growth of this process's resident set: the supervisor's side.
    pub(super) supervisor_mib: f64,
    pub(super) error: Option<String>,
}

#[derive(Debug, Serialize)]
pub(super) struct Report {
    pub(super) command_line: String,
    pub(super) date: String,
    pub(super) kernel: String,
    pub(super) runs: u32,
    pub(super) warmup_runs: u32,
    pub(super) sides: Vec<Side>,
    pub(super) memory: MemberMemory,
    pub(super) browser_memory: super::pool_browser::BrowserMemberMemory,
}

fn profile(name: &str) -> Profile {
    let text = BUILT_IN.iter().find(|(n, _)| *n == name).expect("a built-in profile").1;
    Profile::parse(name, text).expect("built-in profiles parse")
}

fn session_id(prefix: &str, index: usize) -> String {
    format!("{prefix}-bench-{}-{index}", std::process::id())
}

/// Builds the configuration of one session of `kind`, as the server does.
fn config(kind: &Kind, profile: &Profile, id: &str, state_dir: &std::path::Path) -> SessionConfig {
    let limits = &profile.limits;
    SessionConfig {
        session_id: id.to_string(),
        state_dir: state_dir.to_path_buf(),
        argv: kind.argv.iter().map(|a| a.to_string()).collect(),
        env: profile.environment.clone().into_iter().collect(),
        hostname: profile.hostname.clone(),
        timezone: profile.timezone.clone(),
        ttl: Duration::from_secs(30),
        limits: CgroupLimits { memory_bytes: limits.memory.as_bytes(), cpu_millis: limits.cpu_millis, pids: limits.pids },
        tmp_bytes: limits.tmp.as_bytes(),
        shm_bytes: limits.shm.as_bytes(),
        work_bytes: limits.work.as_bytes(),
        open_files: limits.open_files,
        inputs: Vec::new(),
        artifacts: None,
        mounts: profile.mounts.iter().map(|m| BindMount { source: m.source.clone(), target: m.target.clone() }).collect(),
        landlock: LandlockMode::IfAvailable,
        forward_signals: false,
        control: None,
        terminal: kind.terminal,
        command_pipes: false,
        before_start: None,
    }
}

/// Prepares a member of `profile`'s pool and waits until it is ready.
fn ready_member(kind: &Kind, profile: &Profile, id: &str, state_dir: &std::path::Path) -> Result<Prepared, String> {
    let (mut member_config, _) = config(kind, profile, id, state_dir).split();
    member_config.pool_member = true;
    member_config.max_unclaimed = Duration::from_secs(300);
    let mut member = prepare(member_config, layout()?).map_err(|e| e.to_string())?;
    member.wait_ready(READY_TIMEOUT)?;
    Ok(member)
}

pub(super) fn layout() -> Result<&'static Layout, String> {
    static LAYOUT: std::sync::OnceLock<Result<Layout, String>> = std::sync::OnceLock::new();
    LAYOUT.get_or_init(|| Layout::detect().map_err(|e| e.to_string())).as_ref().map_err(Clone::clone)
}

/// Returns the time from the session's start to its command's exec.
fn started_after(outcome: session::SessionOutcome) -> Result<Duration, String> {
    if outcome.end != (EndReason::Exited { code: 0 }) {
        return Err(format!("session {} ended with {:?}", outcome.session_id, outcome.end));
    }
    if !outcome.teardown.clean {
        return Err(format!("session {} left something behind: {:?}", outcome.session_id, outcome.teardown));
    }
    Ok(Duration::from_micros(outcome.timings.command_started_us))
}

fn cold_start(kind: &Kind, profile: &Profile, id: &str, state_dir: &std::path::Path) -> Result<Duration, String> {
    let outcome = session::run(config(kind, profile, id, state_dir), layout()?, None, Box::new(std::io::sink()), Box::new(std::io::sink()))
        .map_err(|e| e.to_string())?;
    started_after(outcome)
}

fn warm_start(kind: &Kind, profile: &Profile, id: &str, state_dir: &std::path::Path) -> Result<Duration, String> {
    let member = ready_member(kind, profile, id, state_dir)?;
    let (_, claim) = config(kind, profile, id, state_dir).split();
    let outcome = member.claim(claim, None, Box::new(std::io::sink()), Box::new(std::io::sink())).map_err(|e| e.to_string())?;
    started_after(outcome)
}

impl Side {
    pub(super) fn new(kind: &'static str, start: &'static str) -> Side {
        Side { kind, start, runs: 0, median_ms: None, p99_ms: None, min_ms: None, errors: Vec::new(), samples: Vec::new() }
    }

    pub(super) fn record(&mut self, result: Result<Duration, String>, measured: bool) {
        match result {
            Ok(duration) if measured => self.samples.push(duration),
            Ok(_) => {}
            Err(error) => self.errors.push(error),
        }
    }

    pub(super) fn finish(mut self) -> Side {
        self.samples.sort();
        self.runs = self.samples.len();
        self.median_ms = median(&self.samples).map(milliseconds);
        self.p99_ms = percentile(&self.samples, 99).map(milliseconds);
        self.min_ms = self.samples.first().copied().map(milliseconds);
        self
    }
}

/// Measures the starts of every kind, warm and cold in turn.
fn measure_starts(state_dir: &std::path::Path, runs: u32) -> Vec<Side> {
    let mut sides = Vec::new();
    for kind in KINDS {
        let profile = profile(kind.profile);
        let (mut warm, mut cold) = (Side::new(kind.name, "warm"), Side::new(kind.name, "cold"));
        for iteration in 0..(WARMUP_RUNS + runs) as usize {
            let measured = iteration >= WARMUP_RUNS as usize;
            let run_warm = |warm: &mut Side| warm.record(warm_start(kind, &profile, &session_id("p", iteration), state_dir), measured);
            let run_cold = |cold: &mut Side| cold.record(cold_start(kind, &profile, &session_id("s", iteration), state_dir), measured);
            if iteration % 2 == 0 {
                run_warm(&mut warm);
                run_cold(&mut cold);
            } else {
                run_cold(&mut cold);
                run_warm(&mut warm);
            }
        }
        sides.push(warm.finish());
        sides.push(cold.finish());
    }
    sides
}

fn own_rss_bytes() -> u64 {
    super::memory::process_rss_bytes(std::process::id()).unwrap_or(0)
}

/// Prepares idle job members, lets them settle and reads what each costs.
fn measure_memory(state_dir: &std::path::Path) -> MemberMemory {
    let kind = &KINDS[0];
    let profile = profile(kind.profile);
    let before = own_rss_bytes();
    let mut members = Vec::new();
    let mut memory = MemberMemory { members: MEMORY_MEMBERS, ..Default::default() };
    for index in 0..MEMORY_MEMBERS {
        match ready_member(kind, &profile, &session_id("p-memory", index), state_dir) {
            Ok(member) => members.push(member),
            Err(error) => {
                memory.error = Some(error);
                break;
            }
        }
    }
    std::thread::sleep(SETTLE);
    let supervisor = own_rss_bytes().saturating_sub(before);
    let (mut cgroup, mut pss) = (0u64, 0u64);
    for member in &members {
        let read = layout().and_then(|layout| SessionMemory::find(layout, member.id())).and_then(|m| Ok((m.read()?, member_pss_bytes(&m)?)));
        match read {
            Ok((charged, processes)) => {
                cgroup += charged.usage;
                pss += processes;
            }
            Err(error) => memory.error = Some(error),
        }
    }
    let count = members.len().max(1) as f64;
    memory.cgroup_mib = mebibytes(cgroup as f64 / count);
    memory.processes_pss_mib = mebibytes(pss as f64 / count);
    memory.supervisor_mib = mebibytes(supervisor as f64 / count);
    for member in members {
        let evidence = member.destroy();
        if !evidence.clean {
            memory.error = Some(format!("a destroyed member left something behind: {evidence:?}"));
        }
    }
    memory
}

pub(super) fn main(args: &BenchArgs) -> i32 {
    if args.runs > MAX_RUNS {
        eprintln!("mayfly: --runs {} is out of range for the pool suite: use 1 to {MAX_RUNS}", args.runs);
        return mayfly_core::ExitCode::USAGE;
    }
    if let Err(error) = std::fs::create_dir_all(&args.state_dir) {
        eprintln!("mayfly: cannot create the state directory {}: {error}", args.state_dir.display());
        return 1;
    }
    if let Err(error) = layout() {
        eprintln!("mayfly: {error}");
        return 1;
    }
    let mut sides = measure_starts(&args.state_dir, args.runs);
    let memory = measure_memory(&args.state_dir);
    let layout = layout().expect("checked above");
    let (browser_sides, browser_memory) = super::pool_browser::measure(layout, &args.state_dir, args.runs.min(super::pool_browser::MAX_BROWSER_RUNS));
    sides.extend(browser_sides);
    let report = Report {
        command_line: std::env::args().map(|arg| super::shell::shell_quote(&arg)).collect::<Vec<_>>().join(" "),
        date: format_utc(std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)),
        kernel: std::fs::read_to_string("/proc/sys/kernel/osrelease").map(|s| s.trim().to_string()).unwrap_or_default(),
        runs: args.runs,
        warmup_runs: WARMUP_RUNS,
        sides,
        memory,
        browser_memory,
    };
    let failed = report.sides.iter().any(|s| !s.errors.is_empty()) || report.memory.error.is_some();
    super::publish(args, &report, failed, super::pool_report::format_text(&report), super::pool_report::format_markdown(&report))
}
