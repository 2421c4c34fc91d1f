//! `mayfly bench --suite shell`: shell sessions of a private `mayfly serve`.
//! It measures keystroke-to-echo latency over the attach WebSocket beside
//! the same shell on a host pseudo-terminal, the host-side memory of idle
//! shell sessions, and how many idle shell sessions the default capacity
//! admits before admission control rejects one.

use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use mayfly_core::Profile;
use mayfly_sandbox::cgroup::Layout;

use super::host_pty::HostShell;
use super::memory::{mebibytes, parse_kib_field, process_pss_bytes, process_rss_bytes, CgroupMemory, SessionMemory};
use super::server::{mayfly_executable, start_server, BenchDir, Server, Target, RAISED_LIMITS};
use super::shell::shell_quote;
use super::shell_report::{format_markdown, format_text, CapacityReport, EchoReport, EchoStats, MemoryReport, ShellReport};
use super::session_requests::{CreateAnswer, Sessions};
use super::terminal_echo::{time_echo, wait_for_prompt, AttachedShell};
use super::utc::format_utc;
use crate::cli::BenchArgs;

/// Unmeasured keystrokes on each terminal before the measured ones.
const WARMUP_KEYSTROKES: u32 = 10;
/// Idle shell sessions, and anchor shells, whose memory is measured.
const IDLE_SESSIONS: usize = 20;
/// Time idle sessions get after the last one is running before the memory is read.
const SETTLE: Duration = Duration::from_secs(2);
/// Maximum number of sessions the capacity phase creates when none is rejected.
const CAPACITY_BOUND: usize = 500;
/// Capacity for the echo and memory phases, high enough for `IDLE_SESSIONS`
/// shells of one CPU each on a small host. The capacity phase keeps the defaults.
const MEASURE_CAPACITY: &str = "[capacity]\ncpus = 1000\nsessions = 1000\n";

/// The anchor's command and environment: the `shell` profile's, with `HOME`
/// in a directory of the bench.
struct AnchorShell {
    argv: Vec<String>,
    env: Vec<(String, String)>,
}

impl AnchorShell {
    fn new(profile: &Profile, home: &Path) -> Result<AnchorShell, String> {
        let shell = profile.shell.as_ref().ok_or("the shell profile has no [shell] section")?;
        let mut env: Vec<(String, String)> = profile.environment.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
        env.retain(|(key, _)| key != "HOME");
        env.push(("HOME".into(), home.display().to_string()));
        Ok(AnchorShell { argv: shell.command.clone(), env })
    }

    fn spawn(&self, home: &Path) -> Result<HostShell, String> {
        HostShell::spawn(&self.argv, &self.env, home)
    }
}

/// Times keystroke echoes on one attached shell session and on one anchor
/// shell, alternating which goes first.
fn measure_echo(target: &Target, anchor: &AnchorShell, home: &Path, runs: u32) -> Result<EchoReport, String> {
    let mut sessions = Sessions::new(target.clone(), "shell");
    let created = sessions.create_one()?;
    sessions.wait_running(&created.id)?;
    let mut attached = AttachedShell::attach(target.address, &target.token, &created.id, &created.attach_token)?;
    let mut host = anchor.spawn(home)?;
    wait_for_prompt(&mut attached)?;
    wait_for_prompt(&mut host)?;

    let session_id = created.id.clone();
    let mut on_session = || time_echo(&mut attached).map_err(|e| format!("shell session {session_id}: {e}"));
    let mut on_host = || time_echo(&mut host).map_err(|e| format!("host PTY: {e}"));
    let (mut session_times, mut host_times) = (Vec::new(), Vec::new());
    for iteration in 0..WARMUP_KEYSTROKES + runs {
        let (session_time, host_time) = if iteration % 2 == 0 {
            let session_time = on_session()?;
            (session_time, on_host()?)
        } else {
            let host_time = on_host()?;
            (on_session()?, host_time)
        };
        if iteration >= WARMUP_KEYSTROKES {
            session_times.push(session_time);
            host_times.push(host_time);
        }
    }
    attached.close();
    drop(host);
    sessions.delete_all()?;

    session_times.sort();
    host_times.sort();
    let missing = || "no keystrokes were measured".to_string();
    Ok(EchoReport {
        warmup_keystrokes: WARMUP_KEYSTROKES,
        mayfly: EchoStats::from_sorted(&session_times).ok_or_else(missing)?,
        host_pty: EchoStats::from_sorted(&host_times).ok_or_else(missing)?,
    })
}

/// Returns the mean PSS in bytes of `IDLE_SESSIONS` anchor shells running at once.
fn anchor_shell_pss(anchor: &AnchorShell, home: &Path) -> Result<f64, String> {
    let mut shells = (0..IDLE_SESSIONS).map(|_| anchor.spawn(home)).collect::<Result<Vec<_>, _>>()?;
    for shell in &mut shells {
        wait_for_prompt(shell)?;
    }
    std::thread::sleep(SETTLE);
    let mut total = 0;
    for shell in &shells {
        total += process_pss_bytes(shell.pid())?;
    }
    Ok(total as f64 / shells.len() as f64)
}

/// Measures the host-side memory of `IDLE_SESSIONS` idle shell sessions,
/// after the same number of anchor shells.
fn measure_memory(server: &Server, layout: &Layout, anchor: &AnchorShell, home: &Path) -> Result<MemoryReport, String> {
    let host_shell_pss_mib = anchor_shell_pss(anchor, home)?;

    let rss_before = process_rss_bytes(server.pid())?;
    let mut sessions = Sessions::new(server.target(), "shell");
    for _ in 0..IDLE_SESSIONS {
        sessions.create_one()?;
    }
    for id in sessions.ids() {
        sessions.wait_running(id)?;
    }
    std::thread::sleep(SETTLE);
    let rss_after = process_rss_bytes(server.pid())?;
    let (mut cgroup_total, mut pss_total, mut processes) = (CgroupMemory::default(), 0u64, 0usize);
    for id in sessions.ids() {
        let memory = SessionMemory::find(layout, id)?;
        let charged = memory.read()?;
        cgroup_total.usage += charged.usage;
        cgroup_total.anon += charged.anon;
        cgroup_total.file += charged.file;
        cgroup_total.kernel += charged.kernel;
        for pid in memory.pids()? {
            pss_total += process_pss_bytes(pid)?;
            processes += 1;
        }
    }
    sessions.delete_all()?;

    let per_session = |bytes: f64| mebibytes(bytes / IDLE_SESSIONS as f64);
    let server_rss_mib = per_session(rss_after as f64 - rss_before as f64);
    let cgroup = per_session(cgroup_total.usage as f64);
    Ok(MemoryReport {
        sessions: IDLE_SESSIONS,
        settle_seconds: SETTLE.as_secs(),
        server_rss_before_mib: mebibytes(rss_before as f64),
        server_rss_after_mib: mebibytes(rss_after as f64),
        server_rss_mib,
        cgroup_mib: cgroup,
        cgroup_anon_mib: per_session(cgroup_total.anon as f64),
        cgroup_file_mib: per_session(cgroup_total.file as f64),
        cgroup_kernel_mib: per_session(cgroup_total.kernel as f64),
        host_side_mib: server_rss_mib + cgroup,
        sandbox_pss_mib: per_session(pss_total as f64),
        processes_per_session: processes as f64 / IDLE_SESSIONS as f64,
        host_shell_pss_mib: mebibytes(host_shell_pss_mib),
    })
}

/// Creates idle shell sessions until admission control rejects one or
/// `CAPACITY_BOUND` is reached, checks that the admitted ones run, and
/// deletes them all.
fn measure_capacity(target: &Target, profile: &Profile) -> Result<CapacityReport, String> {
    let mut sessions = Sessions::new(target.clone(), "shell");
    let mut rejection = None;
    while sessions.ids().len() < CAPACITY_BOUND {
        if let CreateAnswer::HostFull(detail) = sessions.create()? {
            rejection = Some(detail);
            break;
        }
    }
    let admitted = sessions.ids().len();
    let mut running = 0;
    let mut start_error = None;
    for id in sessions.ids() {
        match sessions.wait_running(id) {
            Ok(()) => running += 1,
            Err(error) => {
                start_error.get_or_insert(error);
            }
        }
    }
    sessions.delete_all()?;
    Ok(CapacityReport {
        bound: CAPACITY_BOUND,
        admitted,
        running,
        rejection,
        start_error,
        reserved_memory_mib: profile.limits.memory.as_bytes() >> 20,
        reserved_cpus: f64::from(profile.limits.cpu_millis) / 1000.0,
    })
}

/// Creates `dir/name` and starts a server in it with `config`.
fn server_in(executable: &Path, dir: &Path, name: &str, config: &str) -> Result<Server, String> {
    let server_dir = dir.join(name);
    std::fs::create_dir_all(&server_dir).map_err(|e| format!("cannot create {}: {e}", server_dir.display()))?;
    start_server(executable, &server_dir, config, &[])
}

/// Runs the three phases. A phase that fails leaves its section empty and
/// adds its error, and the phases after it still run.
fn run(executable: &Path, dir: &Path, runs: u32) -> ShellReport {
    let mut report = ShellReport {
        command_line: std::env::args().map(|arg| shell_quote(&arg)).collect::<Vec<_>>().join(" "),
        date: format_utc(SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)),
        kernel: std::fs::read_to_string("/proc/sys/kernel/osrelease").map(|s| s.trim().to_string()).unwrap_or_else(|e| format!("unknown ({e})")),
        nproc: super::nproc(),
        memory_total_mib: std::fs::read_to_string("/proc/meminfo").ok().and_then(|text| parse_kib_field(&text, "MemTotal:")).unwrap_or(0) >> 20,
        cgroup_version: "unknown".into(),
        echo: None,
        memory: None,
        capacity: None,
        errors: Vec::new(),
    };
    let layout = match Layout::detect() {
        Ok(layout) => layout,
        Err(error) => {
            report.errors.push(error.to_string());
            return report;
        }
    };
    report.cgroup_version = match layout {
        Layout::V1 { .. } => "v1".into(),
        Layout::V2 { .. } => "v2".into(),
    };
    let profile = match mayfly_control::profiles::load("shell", None) {
        Ok(profile) => profile,
        Err(error) => {
            report.errors.push(format!("cannot load the built-in shell profile: {error}"));
            return report;
        }
    };
    let home = dir.join("anchor-home");
    let anchor = std::fs::create_dir_all(&home).map_err(|e| format!("cannot create {}: {e}", home.display())).and_then(|()| AnchorShell::new(&profile, &home));
    let anchor = match anchor {
        Ok(anchor) => anchor,
        Err(error) => {
            report.errors.push(error);
            return report;
        }
    };

    match server_in(executable, dir, "measure", &format!("{RAISED_LIMITS}{MEASURE_CAPACITY}")) {
        Ok(server) => {
            match measure_echo(&server.target(), &anchor, &home, runs) {
                Ok(echo) => report.echo = Some(echo),
                Err(error) => report.errors.push(format!("keystroke to echo: {error}")),
            }
            match measure_memory(&server, &layout, &anchor, &home) {
                Ok(memory) => report.memory = Some(memory),
                Err(error) => report.errors.push(format!("memory: {error}")),
            }
        }
        Err(error) => report.errors.push(format!("keystroke to echo and memory: {error}")),
    }
    match server_in(executable, dir, "capacity", RAISED_LIMITS).and_then(|server| measure_capacity(&server.target(), &profile)) {
        Ok(capacity) => report.capacity = Some(capacity),
        Err(error) => report.errors.push(format!("capacity: {error}")),
    }
    report
}

pub(super) fn main(args: &BenchArgs) -> i32 {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("mayfly: warning: not running as root. `mayfly serve` needs root to start sandboxes, so the shell bench will fail.");
    }
    let prepared = mayfly_executable().and_then(|executable| Ok((executable, BenchDir::create(args.state_dir.join("bench-shell"))?)));
    let (executable, dir) = match prepared {
        Ok(prepared) => prepared,
        Err(error) => {
            eprintln!("mayfly: {error}");
            return 1;
        }
    };
    let report = run(&executable, dir.path(), args.runs);
    drop(dir);

    super::publish(args, &report, !report.errors.is_empty(), format_text(&report), format_markdown(&report))
}
