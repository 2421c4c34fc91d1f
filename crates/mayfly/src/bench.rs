//! `mayfly bench`: end-to-end wall time of a cold start of `/bin/true` under
//! Mayfly, bubblewrap and runc. One bench run measures all three and
//! alternates between them each iteration, so machine noise affects each
//! runtime alike.

mod runc_bundle;

use std::fmt;
use std::io;
use std::os::fd::{AsFd, FromRawFd, OwnedFd};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use mayfly_core::ExitCode;
use nix::poll::{PollFd, PollFlags, PollTimeout};
use serde::Serialize;

use self::runc_bundle::RuncBundle;
use crate::cli::BenchArgs;

/// The command each runtime starts.
const PROGRAM: &str = "/bin/true";
/// Unmeasured runs per runtime before the measured ones.
const WARMUP_RUNS: u32 = 3;
const MAX_RUNS: u32 = 10_000;
/// Time after which one run is killed and counted as failed, so a hung
/// runtime cannot stop the bench from finishing.
const RUN_TIMEOUT: Duration = Duration::from_secs(30);
/// Time a run that timed out gets between SIGTERM and SIGKILL to clean up.
const KILL_GRACE: Duration = Duration::from_secs(5);
/// Search path used when PATH is unset.
const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// bubblewrap options with the same mounts as Mayfly's sandbox: read-only
/// /usr, merged-/usr links, a fresh /proc, a minimal /dev and a tmpfs /tmp.
const BWRAP_OPTIONS: &[&str] = &[
    "--unshare-all", "--die-with-parent",
    "--ro-bind", "/usr", "/usr",
    "--symlink", "usr/bin", "/bin",
    "--symlink", "usr/lib", "/lib",
    "--symlink", "usr/lib64", "/lib64",
    "--symlink", "usr/sbin", "/sbin",
    "--proc", "/proc",
    "--dev", "/dev",
    "--tmpfs", "/tmp",
];

/// Launch settings of one runtime: its binary, and for runc the bundle.
enum Launcher {
    Mayfly { executable: PathBuf, state_dir: PathBuf },
    Bubblewrap { bwrap: PathBuf },
    Runc(RuncBundle),
}

impl Launcher {
    /// Returns the command for one run, and the runc container id if any.
    fn command(&mut self) -> (Command, Option<String>) {
        match self {
            Launcher::Mayfly { executable, state_dir } => {
                let mut command = Command::new(executable);
                command.arg("run").arg("--state-dir").arg(state_dir).args(["--", PROGRAM]);
                (command, None)
            }
            Launcher::Bubblewrap { bwrap } => {
                let mut command = Command::new(bwrap);
                command.args(BWRAP_OPTIONS).arg(PROGRAM);
                (command, None)
            }
            Launcher::Runc(bundle) => {
                let (command, id) = bundle.run_command();
                (command, Some(id))
            }
        }
    }
}

/// A runtime that is installed, with its measurements so far.
struct Runtime {
    name: &'static str,
    version: Option<String>,
    command_line: String,
    launcher: Launcher,
    samples: Vec<Duration>,
    failed: u32,
    warmup_failed: u32,
    first_failure: Option<String>,
    containers_left_behind: u32,
    cleanup_errors: Vec<String>,
}

impl Runtime {
    fn new(name: &'static str, version: Option<String>, command_line: String, launcher: Launcher) -> Self {
        Runtime { name, version, command_line, launcher, samples: Vec::new(), failed: 0, warmup_failed: 0, first_failure: None, containers_left_behind: 0, cleanup_errors: Vec::new() }
    }

    /// Runs the command once, records the time of a successful measured run
    /// and counts a failed run.
    fn run_once(&mut self, measured: bool) {
        let (mut command, container) = self.launcher.command();
        let result = time_run(&mut command, RUN_TIMEOUT);
        if let (Some(id), Launcher::Runc(bundle)) = (container, &self.launcher) {
            match bundle.delete_if_left(&id) {
                Ok(true) => self.containers_left_behind += 1,
                Ok(false) => {}
                Err(error) => self.cleanup_errors.push(error),
            }
        }
        match result {
            Ok(elapsed) if measured => self.samples.push(elapsed),
            Ok(_) => {}
            Err(failure) => self.record_failure(failure, measured),
        }
    }

    fn record_failure(&mut self, failure: RunFailure, measured: bool) {
        if measured {
            self.failed += 1;
        } else {
            self.warmup_failed += 1;
        }
        if self.first_failure.is_some() {
            return;
        }
        let mut message = failure.to_string();
        if let (RunFailure::TimedOut(_), Launcher::Mayfly { state_dir, .. }) = (&failure, &self.launcher) {
            message.push_str(&format!(". If the session was left behind, `mayfly reap --state-dir {}` removes it", state_dir.display()));
        }
        self.first_failure = Some(message);
    }

    /// Removes the runc bundle and collects the result.
    fn finish(mut self, mayfly_median: Option<Duration>) -> RuntimeResult {
        if let Launcher::Runc(bundle) = &mut self.launcher {
            self.cleanup_errors.extend(bundle.remove());
        }
        self.samples.sort();
        let stats = Stats::from_sorted(&self.samples);
        let is_runc = matches!(self.launcher, Launcher::Runc(_));
        RuntimeResult {
            name: self.name,
            status: Status::Measured,
            version: self.version,
            command: Some(self.command_line),
            detail: self.first_failure,
            runs: self.samples.len() as u32 + self.failed,
            failed: self.failed,
            warmup_failed: self.warmup_failed,
            median_ms: stats.as_ref().map(|s| milliseconds(s.median)),
            p90_ms: stats.as_ref().map(|s| milliseconds(s.p90)),
            min_ms: stats.as_ref().map(|s| milliseconds(s.min)),
            median_vs_mayfly: stats.as_ref().zip(mayfly_median).map(|(s, mayfly)| ratio(s.median, mayfly)),
            containers_left_behind: is_runc.then_some(self.containers_left_behind),
            cleanup_errors: self.cleanup_errors,
        }
    }
}

#[derive(Debug)]
enum RunFailure {
    Spawn(io::Error),
    Wait(io::Error),
    Exit(ExitStatus),
    TimedOut(Duration),
}

impl fmt::Display for RunFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RunFailure::Spawn(error) => write!(f, "failed to start: {error}"),
            RunFailure::Wait(error) => write!(f, "failed to wait for the process: {error}"),
            RunFailure::Exit(status) => write!(f, "{status}"),
            RunFailure::TimedOut(timeout) => write!(f, "timed out after {} s and was stopped", timeout.as_secs_f64()),
        }
    }
}

/// Runs `command` with null stdio and returns the wall time from spawn to
/// reaping its exit. Kills it when it runs longer than `timeout`.
fn time_run(command: &mut Command, timeout: Duration) -> Result<Duration, RunFailure> {
    command.stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::null());
    let started = Instant::now();
    let mut child = command.spawn().map_err(RunFailure::Spawn)?;
    let exited = match wait_exit(&child, timeout) {
        Ok(exited) => exited,
        Err(error) => {
            stop_and_reap(&mut child);
            return Err(RunFailure::Wait(error));
        }
    };
    if !exited {
        stop_and_reap(&mut child);
        return Err(RunFailure::TimedOut(timeout));
    }
    let status = child.wait().map_err(RunFailure::Wait)?;
    let elapsed = started.elapsed();
    if status.success() {
        Ok(elapsed)
    } else {
        Err(RunFailure::Exit(status))
    }
}

/// Sends SIGTERM, so the runtime can tear its sandbox down, then SIGKILL
/// after `KILL_GRACE`, and reaps the process.
fn stop_and_reap(child: &mut Child) {
    let pid = nix::unistd::Pid::from_raw(child.id() as libc::pid_t);
    let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
    if !wait_exit(child, KILL_GRACE).unwrap_or(false) {
        let _ = child.kill();
    }
    let _ = child.wait();
}

/// Waits until `child` exits or `timeout` passes, without reaping it, and
/// returns whether it exited.
fn wait_exit(child: &Child, timeout: Duration) -> io::Result<bool> {
    // SAFETY: pidfd_open takes a pid and flags, and returns a new descriptor or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, child.id() as libc::pid_t, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the descriptor was just created and nothing else owns it.
    let pidfd = unsafe { OwnedFd::from_raw_fd(fd as i32) };
    let started = Instant::now();
    loop {
        let left = PollTimeout::try_from(timeout.saturating_sub(started.elapsed())).unwrap_or(PollTimeout::MAX);
        let mut fds = [PollFd::new(pidfd.as_fd(), PollFlags::POLLIN)];
        match nix::poll::poll(&mut fds, left) {
            Ok(0) => return Ok(false),
            Ok(_) => return Ok(true),
            Err(nix::errno::Errno::EINTR) => continue,
            Err(errno) => return Err(errno.into()),
        }
    }
}

/// Median, 90th percentile and minimum of the successful runs.
#[derive(Debug, PartialEq)]
struct Stats {
    median: Duration,
    p90: Duration,
    min: Duration,
}

impl Stats {
    /// Computes the statistics of ascending `sorted`, or None when empty.
    fn from_sorted(sorted: &[Duration]) -> Option<Stats> {
        Some(Stats { median: median(sorted)?, p90: percentile(sorted, 90)?, min: *sorted.first()? })
    }
}

/// Returns the median of ascending `sorted`: the mean of the two middle
/// values when the count is even.
fn median(sorted: &[Duration]) -> Option<Duration> {
    let count = sorted.len();
    match count {
        0 => None,
        _ if count % 2 == 1 => Some(sorted[count / 2]),
        _ => Some((sorted[count / 2 - 1] + sorted[count / 2]) / 2),
    }
}

/// Returns the `percent`th percentile of ascending `sorted` by the
/// nearest-rank method: the smallest value that at least `percent`% of the
/// values are less than or equal to.
fn percentile(sorted: &[Duration], percent: usize) -> Option<Duration> {
    if sorted.is_empty() {
        return None;
    }
    let rank = (percent * sorted.len()).div_ceil(100).max(1);
    Some(sorted[rank.min(sorted.len()) - 1])
}

/// Converts to milliseconds, rounded to whole microseconds.
fn milliseconds(duration: Duration) -> f64 {
    duration.as_micros() as f64 / 1000.0
}

/// Returns `value / base`, rounded to three decimals.
fn ratio(value: Duration, base: Duration) -> f64 {
    (value.as_secs_f64() / base.as_secs_f64() * 1000.0).round() / 1000.0
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
enum Status {
    Measured,
    NotInstalled,
    SetupFailed,
}

/// One runtime's line in the report. Times are in milliseconds and cover
/// successful measured runs only.
#[derive(Debug, Serialize)]
struct RuntimeResult {
    name: &'static str,
    status: Status,
    version: Option<String>,
    command: Option<String>,
    /// Reason the runtime was skipped, or the error of its first failed run.
    detail: Option<String>,
    runs: u32,
    failed: u32,
    warmup_failed: u32,
    median_ms: Option<f64>,
    p90_ms: Option<f64>,
    min_ms: Option<f64>,
    median_vs_mayfly: Option<f64>,
    /// Containers that `runc run` did not delete and the bench deleted.
    #[serde(skip_serializing_if = "Option::is_none")]
    containers_left_behind: Option<u32>,
    cleanup_errors: Vec<String>,
}

impl RuntimeResult {
    fn skipped(name: &'static str, status: Status, detail: String) -> Self {
        RuntimeResult {
            name,
            status,
            version: None,
            command: None,
            detail: Some(detail),
            runs: 0,
            failed: 0,
            warmup_failed: 0,
            median_ms: None,
            p90_ms: None,
            min_ms: None,
            median_vs_mayfly: None,
            containers_left_behind: None,
            cleanup_errors: Vec::new(),
        }
    }

    fn has_errors(&self) -> bool {
        self.status == Status::SetupFailed || self.failed + self.warmup_failed > 0 || !self.cleanup_errors.is_empty()
    }
}

#[derive(Debug, Serialize)]
struct Report {
    command_line: String,
    date: String,
    kernel: String,
    nproc: usize,
    program: &'static str,
    runs: u32,
    warmup_runs: u32,
    runc_namespaces: Vec<&'static str>,
    runtimes: Vec<RuntimeResult>,
}

/// A runtime ready to measure, or the result of a skipped runtime.
enum Slot {
    Ready(Runtime),
    Skipped(RuntimeResult),
}

fn set_up_mayfly(state_dir: &Path) -> Slot {
    match std::env::current_exe() {
        Ok(executable) => {
            let command_line = format!("{} run --state-dir {} -- {PROGRAM}", executable.display(), state_dir.display());
            let version = Some(format!("mayfly {}", env!("CARGO_PKG_VERSION")));
            Slot::Ready(Runtime::new("mayfly", version, command_line, Launcher::Mayfly { executable, state_dir: state_dir.to_path_buf() }))
        }
        Err(error) => Slot::Skipped(RuntimeResult::skipped("mayfly", Status::SetupFailed, format!("failed to find the mayfly executable: {error}"))),
    }
}

fn set_up_bubblewrap() -> Slot {
    let Some(bwrap) = find_in_path("bwrap") else {
        return Slot::Skipped(RuntimeResult::skipped("bubblewrap", Status::NotInstalled, "bwrap not found in PATH".into()));
    };
    let command_line = format!("{} {} {PROGRAM}", bwrap.display(), BWRAP_OPTIONS.join(" "));
    Slot::Ready(Runtime::new("bubblewrap", version_of(&bwrap), command_line, Launcher::Bubblewrap { bwrap }))
}

fn set_up_runc() -> Slot {
    let Some(runc) = find_in_path("runc") else {
        return Slot::Skipped(RuntimeResult::skipped("runc", Status::NotInstalled, "runc not found in PATH".into()));
    };
    match RuncBundle::create(runc.clone(), &[PROGRAM]) {
        Ok(bundle) => {
            let command_line = RuncBundle::describe_command(&runc);
            Slot::Ready(Runtime::new("runc", version_of(&runc), command_line, Launcher::Runc(bundle)))
        }
        Err(error) => Slot::Skipped(RuntimeResult::skipped("runc", Status::SetupFailed, error)),
    }
}

/// Returns the first executable file named `name` in PATH, as `which` does.
fn find_in_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_else(|| DEFAULT_PATH.into());
    std::env::split_paths(&path).map(|dir| dir.join(name)).find(|candidate| {
        std::fs::metadata(candidate).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
    })
}

/// Returns the first line that `program --version` prints.
fn version_of(program: &Path) -> Option<String> {
    let output = Command::new(program).arg("--version").stdin(Stdio::null()).stderr(Stdio::null()).output().ok()?;
    let text = String::from_utf8_lossy(&output.stdout);
    text.lines().next().map(|line| line.trim().to_string()).filter(|line| !line.is_empty())
}

/// Runs the warm-up and measured iterations. Each iteration starts with the
/// next runtime in turn, so every runtime runs first, in the middle and last
/// about equally often.
fn measure(runtimes: &mut [&mut Runtime], runs: u32) {
    let count = runtimes.len();
    for iteration in 0..(WARMUP_RUNS + runs) as usize {
        let measured = iteration >= WARMUP_RUNS as usize;
        for offset in 0..count {
            runtimes[(iteration + offset) % count].run_once(measured);
        }
    }
}

fn validate_runs(runs: u32) -> Result<(), String> {
    if (1..=MAX_RUNS).contains(&runs) {
        Ok(())
    } else {
        Err(format!("--runs {runs} is out of range: use 1 to {MAX_RUNS}"))
    }
}

pub fn main(args: BenchArgs) -> i32 {
    if let Err(message) = validate_runs(args.runs) {
        eprintln!("mayfly: {message}");
        return ExitCode::USAGE;
    }
    if !nix::unistd::geteuid().is_root() {
        eprintln!("mayfly: warning: not running as root. `mayfly run` needs root, so its runs will fail.");
    }

    let mut slots = vec![set_up_mayfly(&args.state_dir), set_up_bubblewrap(), set_up_runc()];
    let mut ready: Vec<&mut Runtime> = slots
        .iter_mut()
        .filter_map(|slot| match slot {
            Slot::Ready(runtime) => Some(runtime),
            Slot::Skipped(_) => None,
        })
        .collect();
    measure(&mut ready, args.runs);

    let report = build_report(slots, args.runs);
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report).expect("the report serializes"));
    } else {
        print!("{}", format_text(&report));
    }
    let mut code = if report.runtimes.iter().any(RuntimeResult::has_errors) { 1 } else { 0 };
    if let Some(path) = &args.output {
        if let Err(error) = std::fs::write(path, format_markdown(&report)) {
            eprintln!("mayfly: failed to write the Markdown table to {}: {error}", path.display());
            code = 1;
        }
    }
    code
}

fn build_report(slots: Vec<Slot>, runs: u32) -> Report {
    let mayfly_median = slots.iter().find_map(|slot| match slot {
        Slot::Ready(runtime) if matches!(runtime.launcher, Launcher::Mayfly { .. }) => {
            let mut sorted = runtime.samples.clone();
            sorted.sort();
            median(&sorted)
        }
        _ => None,
    });
    let runtimes = slots
        .into_iter()
        .map(|slot| match slot {
            Slot::Ready(runtime) => runtime.finish(mayfly_median),
            Slot::Skipped(result) => result,
        })
        .collect();
    Report {
        command_line: std::env::args().map(|arg| shell_quote(&arg)).collect::<Vec<_>>().join(" "),
        date: format_utc(SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)),
        kernel: std::fs::read_to_string("/proc/sys/kernel/osrelease").map(|s| s.trim().to_string()).unwrap_or_else(|e| format!("unknown ({e})")),
        nproc: nproc(),
        program: PROGRAM,
        runs,
        warmup_runs: WARMUP_RUNS,
        runc_namespaces: runc_bundle::NAMESPACES.to_vec(),
        runtimes,
    }
}

/// Counts the CPUs this process may run on, as `nproc` does.
fn nproc() -> usize {
    match nix::sched::sched_getaffinity(nix::unistd::Pid::from_raw(0)) {
        Ok(set) => (0..nix::sched::CpuSet::count()).filter(|&cpu| set.is_set(cpu).unwrap_or(false)).count(),
        Err(_) => std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
    }
}

/// Formats a table cell with two decimals, or "-" when there is no value.
fn cell(value: Option<f64>) -> String {
    value.map(|v| format!("{v:.2}")).unwrap_or_else(|| "-".into())
}

/// Describes why a runtime was not measured.
fn skip_reason(result: &RuntimeResult) -> String {
    let detail = result.detail.as_deref().unwrap_or("no detail");
    match result.status {
        Status::NotInstalled => format!("not installed ({detail})"),
        _ => format!("setup failed: {detail}"),
    }
}

/// Returns the failures, left-behind containers and cleanup errors of the
/// measured runtimes, one sentence each.
fn problem_notes(report: &Report) -> Vec<String> {
    let mut notes = Vec::new();
    for result in report.runtimes.iter().filter(|r| r.status == Status::Measured) {
        if let Some(detail) = &result.detail {
            notes.push(format!(
                "{}: {} of {} measured runs and {} of {} warm-up runs failed. The first failure: {detail}",
                result.name, result.failed, result.runs, result.warmup_failed, report.warmup_runs
            ));
        }
        if let Some(count) = result.containers_left_behind.filter(|&c| c > 0) {
            notes.push(format!("{}: {count} containers were still present after `runc run` exited and were deleted with `runc delete -f`", result.name));
        }
        for error in &result.cleanup_errors {
            notes.push(format!("{}: cleanup failed: {error}", result.name));
        }
    }
    if report.runtimes.iter().any(|r| r.failed + r.warmup_failed > 0) {
        notes.push("The bench discards the output of each run, so run a failing command by hand to see its error.".into());
    }
    notes
}

/// Describes the placeholders in the runc command line and the bundle it runs.
fn runc_note(report: &Report) -> String {
    format!(
        "TMPDIR is a temporary directory that the bench creates and removes, and ID is new for each run. \
         The bundle has a read-only root with merged-/usr links, /usr bound read-only, a fresh /proc, tmpfs on /dev and /tmp, \
         and the namespaces {}, with no user namespace.",
        report.runc_namespaces.join(", ")
    )
}

/// Formats the report as a plain-text table with the commands and host below it.
fn format_text(report: &Report) -> String {
    let mut lines = vec![format!(
        "Cold start of {}: {} measured runs per runtime in alternating order, after {} warm-up runs each",
        report.program, report.runs, report.warmup_runs
    )];
    lines.push(format!("{:<12}{:>6}{:>8}{:>12}{:>12}{:>12}{:>15}", "runtime", "runs", "failed", "median ms", "p90 ms", "min ms", "median/mayfly"));
    for result in &report.runtimes {
        if result.status == Status::Measured {
            lines.push(format!(
                "{:<12}{:>6}{:>8}{:>12}{:>12}{:>12}{:>15}",
                result.name,
                result.runs,
                result.failed,
                cell(result.median_ms),
                cell(result.p90_ms),
                cell(result.min_ms),
                cell(result.median_vs_mayfly)
            ));
        } else {
            lines.push(format!("{:<12}{}", result.name, skip_reason(result)));
        }
    }
    lines.extend(problem_notes(report));

    lines.push(String::new());
    lines.push("Commands:".into());
    for result in &report.runtimes {
        if let Some(command) = &result.command {
            lines.push(format!("  {:<12}{command}", result.name));
            if result.name == "runc" {
                lines.push(format!("  {:<12}{}", "", runc_note(report)));
            }
        }
    }
    lines.push(format!("Host: kernel {}, {} CPUs (nproc), {}", report.kernel, report.nproc, report.date));
    lines.join("\n") + "\n"
}

/// Formats the report as a Markdown section for a benchmarks page.
fn format_markdown(report: &Report) -> String {
    let mut lines = vec![format!("## Cold start of {}", report.program), String::new()];
    lines.push(format!("- Command: `{}`", report.command_line));
    lines.push(format!("- Date: {}", report.date));
    lines.push(format!("- Kernel: {}", report.kernel));
    lines.push(format!("- CPUs (`nproc`): {}", report.nproc));
    lines.push(format!(
        "- Runs: {} measured per runtime, alternating between the runtimes each iteration, after {} unmeasured warm-up runs each. \
         Each time is the wall time from spawning the command to reaping its exit. The statistics cover successful runs only.",
        report.runs, report.warmup_runs
    ));
    lines.push(String::new());
    lines.push("| Runtime | Version | Runs | Failed | Median (ms) | p90 (ms) | Min (ms) | Median / Mayfly |".into());
    lines.push("|---|---|--:|--:|--:|--:|--:|--:|".into());
    for result in &report.runtimes {
        let version = result.version.as_deref().unwrap_or("-");
        if result.status == Status::Measured {
            lines.push(format!(
                "| {} | {version} | {} | {} | {} | {} | {} | {} |",
                result.name,
                result.runs,
                result.failed,
                cell(result.median_ms),
                cell(result.p90_ms),
                cell(result.min_ms),
                cell(result.median_vs_mayfly)
            ));
        } else {
            lines.push(format!("| {} | {} | - | - | - | - | - | - |", result.name, skip_reason(result)));
        }
    }
    let notes = problem_notes(report);
    if !notes.is_empty() {
        lines.push(String::new());
        lines.extend(notes.iter().map(|note| format!("- {note}")));
    }

    lines.push(String::new());
    lines.push("Commands measured:".into());
    lines.push(String::new());
    for result in &report.runtimes {
        if let Some(command) = &result.command {
            lines.push(format!("- {}: `{command}`", result.name));
            if result.name == "runc" {
                lines.push(format!("  {}", runc_note(report)));
            }
        }
    }
    lines.join("\n") + "\n"
}

/// Quotes `arg` for a POSIX shell when it contains anything but safe characters.
fn shell_quote(arg: &str) -> String {
    let plain = !arg.is_empty() && arg.chars().all(|c| c.is_ascii_alphanumeric() || "-_./=:,+@%".contains(c));
    if plain {
        arg.to_string()
    } else {
        format!("'{}'", arg.replace('\'', r"'\''"))
    }
}

/// Formats seconds since the Unix epoch as an ISO 8601 UTC time, such as
/// 2024-02-29T12:34:56Z.
fn format_utc(unix_seconds: u64) -> String {
    let (year, month, day) = civil_from_days((unix_seconds / 86_400) as i64);
    let second_of_day = unix_seconds % 86_400;
    format!("{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z", second_of_day / 3600, second_of_day % 3600 / 60, second_of_day % 60)
}

/// Converts days since 1970-01-01 to a proleptic Gregorian year, month and
/// day, by `civil_from_days` from Howard Hinnant's paper "chrono-Compatible
/// Low-Level Date Algorithms".
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let shifted = days + 719_468;
    let era = shifted.div_euclid(146_097);
    let day_of_era = shifted.rem_euclid(146_097);
    let year_of_era = (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    // Months counted from March, so the leap day is the last day of the year.
    let month_from_march = (5 * day_of_year + 2) / 153;
    let day = (day_of_year - (153 * month_from_march + 2) / 5 + 1) as u32;
    let month = if month_from_march < 10 { month_from_march + 3 } else { month_from_march - 9 } as u32;
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(values: &[u64]) -> Vec<Duration> {
        values.iter().map(|&v| Duration::from_millis(v)).collect()
    }

    #[test]
    fn median_odd_and_even() {
        assert_eq!(median(&ms(&[])), None);
        assert_eq!(median(&ms(&[7])), Some(Duration::from_millis(7)));
        assert_eq!(median(&ms(&[1, 2, 9])), Some(Duration::from_millis(2)));
        assert_eq!(median(&ms(&[1, 2, 4, 9])), Some(Duration::from_millis(3)));
    }

    #[test]
    fn percentile_nearest_rank() {
        let values = ms(&[1, 2, 3, 4, 5, 6, 7, 8, 9, 10]);
        assert_eq!(percentile(&values, 90), Some(Duration::from_millis(9)));
        assert_eq!(percentile(&values, 100), Some(Duration::from_millis(10)));
        assert_eq!(percentile(&values, 0), Some(Duration::from_millis(1)));
        assert_eq!(percentile(&ms(&[5]), 90), Some(Duration::from_millis(5)));
        assert_eq!(percentile(&ms(&[]), 90), None);

        let twenty: Vec<Duration> = (1..=20).map(Duration::from_millis).collect();
        assert_eq!(percentile(&twenty, 90), Some(Duration::from_millis(18)));
        let eleven: Vec<Duration> = (1..=11).map(Duration::from_millis).collect();
        assert_eq!(percentile(&eleven, 90), Some(Duration::from_millis(10)));
    }

    #[test]
    fn stats_from_sorted_samples() {
        let stats = Stats::from_sorted(&ms(&[2, 3, 5, 8, 13])).expect("stats of five values");
        assert_eq!(stats, Stats { median: Duration::from_millis(5), p90: Duration::from_millis(13), min: Duration::from_millis(2) });
        assert_eq!(Stats::from_sorted(&[]), None);
    }

    #[test]
    fn runs_bounds() {
        assert!(validate_runs(0).is_err());
        assert!(validate_runs(1).is_ok());
        assert!(validate_runs(MAX_RUNS).is_ok());
        assert!(validate_runs(MAX_RUNS + 1).is_err());
    }

    #[test]
    fn time_run_reports_exit_status() {
        let elapsed = time_run(&mut Command::new("/bin/true"), RUN_TIMEOUT).expect("/bin/true succeeds");
        assert!(elapsed > Duration::ZERO);
        let failure = time_run(&mut Command::new("/bin/false"), RUN_TIMEOUT).expect_err("/bin/false fails");
        assert!(matches!(failure, RunFailure::Exit(status) if status.code() == Some(1)), "{failure:?}");
        let missing = time_run(&mut Command::new("/nonexistent/program"), RUN_TIMEOUT).expect_err("a missing program fails");
        assert!(matches!(missing, RunFailure::Spawn(_)), "{missing:?}");
    }

    #[test]
    fn time_run_kills_at_timeout() {
        let started = Instant::now();
        let failure = time_run(Command::new("/bin/sleep").arg("5"), Duration::from_millis(100)).expect_err("sleep 5 times out");
        assert!(matches!(failure, RunFailure::TimedOut(_)), "{failure:?}");
        assert!(started.elapsed() < Duration::from_secs(4), "the run was not killed at the timeout");
        assert_eq!(failure.to_string(), "timed out after 0.1 s and was stopped");
    }

    #[test]
    fn wait_exit_times_out() {
        let mut child = Command::new("/bin/sleep").arg("5").spawn().expect("sleep starts");
        assert!(!wait_exit(&child, Duration::from_millis(50)).expect("pidfd works"));
        stop_and_reap(&mut child);
    }

    #[test]
    fn find_in_path_finds_sh() {
        assert!(find_in_path("sh").is_some());
        assert!(find_in_path("mayfly-bench-no-such-program").is_none());
    }

    #[test]
    fn format_utc_known_times() {
        assert_eq!(format_utc(0), "1970-01-01T00:00:00Z");
        assert_eq!(format_utc(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(format_utc(1_709_210_096), "2024-02-29T12:34:56Z");
        assert_eq!(format_utc(4_102_444_799), "2099-12-31T23:59:59Z");
    }

    #[test]
    fn civil_from_days_before_epoch() {
        assert_eq!(civil_from_days(-1), (1969, 12, 31));
        assert_eq!(civil_from_days(-719_468), (0, 3, 1));
    }

    #[test]
    fn shell_quote_cases() {
        assert_eq!(shell_quote("--runs"), "--runs");
        assert_eq!(shell_quote("/var/lib/mayfly"), "/var/lib/mayfly");
        assert_eq!(shell_quote(""), "''");
        assert_eq!(shell_quote("a b"), "'a b'");
        assert_eq!(shell_quote("it's"), r"'it'\''s'");
    }

    fn sample_report() -> Report {
        let mayfly = RuntimeResult {
            version: Some("mayfly 0.1.0".into()),
            command: Some("mayfly run -- /bin/true".into()),
            detail: None,
            status: Status::Measured,
            runs: 20,
            failed: 0,
            median_ms: Some(12.5),
            p90_ms: Some(14.0),
            min_ms: Some(11.0),
            median_vs_mayfly: Some(1.0),
            ..RuntimeResult::skipped("mayfly", Status::Measured, String::new())
        };
        let runc = RuntimeResult::skipped("runc", Status::NotInstalled, "runc not found in PATH".into());
        Report {
            command_line: "mayfly bench --runs 20".into(),
            date: "2024-02-29T12:34:56Z".into(),
            kernel: "6.1.0".into(),
            nproc: 4,
            program: PROGRAM,
            runs: 20,
            warmup_runs: WARMUP_RUNS,
            runc_namespaces: runc_bundle::NAMESPACES.to_vec(),
            runtimes: vec![mayfly, runc],
        }
    }

    #[test]
    fn text_lists_measured_and_skipped() {
        let text = format_text(&sample_report());
        assert!(text.contains("12.50"), "{text}");
        assert!(text.contains("1.00"), "{text}");
        assert!(text.contains("runc        not installed (runc not found in PATH)"), "{text}");
        assert!(text.contains("kernel 6.1.0, 4 CPUs"), "{text}");
    }

    #[test]
    fn markdown_has_table_and_host() {
        let markdown = format_markdown(&sample_report());
        assert!(markdown.contains("- Command: `mayfly bench --runs 20`"), "{markdown}");
        assert!(markdown.contains("- Date: 2024-02-29T12:34:56Z"), "{markdown}");
        assert!(markdown.contains("- Kernel: 6.1.0"), "{markdown}");
        assert!(markdown.contains("- CPUs (`nproc`): 4"), "{markdown}");
        assert!(markdown.contains("| mayfly | mayfly 0.1.0 | 20 | 0 | 12.50 | 14.00 | 11.00 | 1.00 |"), "{markdown}");
        assert!(markdown.contains("| runc | not installed (runc not found in PATH) |"), "{markdown}");
    }

    #[test]
    fn errors_count_failures_not_absence() {
        let report = sample_report();
        assert!(!report.runtimes.iter().any(RuntimeResult::has_errors));
        let failed = RuntimeResult { failed: 1, ..RuntimeResult::skipped("bubblewrap", Status::Measured, String::new()) };
        assert!(failed.has_errors());
        assert!(RuntimeResult::skipped("runc", Status::SetupFailed, "no".into()).has_errors());
    }
}
