//! The runtimes under test: finding and setting up each one, running its
//! command once and collecting its result.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use super::report::{RuntimeResult, Status};
use super::runc_bundle::RuncBundle;
use super::stats::{milliseconds, ratio, Stats};
use super::timed_run::{time_run, RunFailure, RUN_TIMEOUT};
use super::PROGRAM;

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
pub(super) enum Launcher {
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
                command.arg("run").arg("--state-dir").arg(&*state_dir).arg("--report").arg(report_path(state_dir)).args(["--", PROGRAM]);
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

/// Returns the path of the session report each measured `mayfly run` writes, for its phase timings.
fn report_path(state_dir: &Path) -> PathBuf {
    state_dir.join("bench-report.json")
}

/// Phases of Mayfly's session report (`timings`), in the order they happen.
pub(super) const PHASES: &[&str] =
    &["launch_us", "init_started_us", "init_setup_us", "init_reported_us", "ended_us", "teardown_us", "verify_us"];

/// Returns the median of each phase in milliseconds, or `None` without samples.
fn phase_medians(phases: &[Vec<u64>]) -> Option<Vec<(&'static str, f64)>> {
    if phases.is_empty() {
        return None;
    }
    let medians = PHASES
        .iter()
        .enumerate()
        .map(|(index, name)| {
            let mut values: Vec<u64> = phases.iter().map(|p| p[index]).collect();
            values.sort_unstable();
            (name.trim_end_matches("_us"), values[values.len() / 2] as f64 / 1000.0)
        })
        .collect();
    Some(medians)
}

/// Reads the phase timings of the last `mayfly run` from its report.
fn read_phases(state_dir: &Path) -> Option<Vec<u64>> {
    let text = std::fs::read_to_string(report_path(state_dir)).ok()?;
    let report: serde_json::Value = serde_json::from_str(&text).ok()?;
    PHASES.iter().map(|phase| report["timings"][phase].as_u64()).collect()
}

/// A runtime that is installed, with its measurements so far.
pub(super) struct Runtime {
    name: &'static str,
    version: Option<String>,
    command_line: String,
    pub(super) launcher: Launcher,
    pub(super) samples: Vec<Duration>,
    /// Mayfly's phase timings of each measured run, in [`PHASES`] order.
    phases: Vec<Vec<u64>>,
    failed: u32,
    warmup_failed: u32,
    first_failure: Option<String>,
    containers_left_behind: u32,
    cleanup_errors: Vec<String>,
}

impl Runtime {
    fn new(name: &'static str, version: Option<String>, command_line: String, launcher: Launcher) -> Self {
        Runtime { name, version, command_line, launcher, samples: Vec::new(), phases: Vec::new(), failed: 0, warmup_failed: 0, first_failure: None, containers_left_behind: 0, cleanup_errors: Vec::new() }
    }

    /// Runs the command once, records the time of a successful measured run
    /// and counts a failed run.
    pub(super) fn run_once(&mut self, measured: bool) {
        let (mut command, container) = self.launcher.command();
        let result = time_run(&mut command, RUN_TIMEOUT);
        if let (Some(id), Launcher::Runc(bundle)) = (container, &self.launcher) {
            match bundle.delete_if_left(&id) {
                Ok(true) => self.containers_left_behind += 1,
                Ok(false) => {}
                Err(error) => self.cleanup_errors.push(error),
            }
        }
        if let (Ok(_), true, Launcher::Mayfly { state_dir, .. }) = (&result, measured, &self.launcher) {
            if let Some(phases) = read_phases(state_dir) {
                self.phases.push(phases);
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
    pub(super) fn finish(mut self, mayfly_median: Option<Duration>) -> RuntimeResult {
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
            phase_medians_ms: phase_medians(&self.phases),
            cleanup_errors: self.cleanup_errors,
        }
    }
}

/// A runtime ready to measure, or the result of a skipped runtime.
pub(super) enum Slot {
    Ready(Runtime),
    Skipped(RuntimeResult),
}

/// Prepares the measured `mayfly`: `front`, or the front program beside this one.
pub(super) fn set_up_mayfly(state_dir: &Path, front: Option<&Path>) -> Slot {
    // Users start `mayfly`, which runs a local `mayfly run` itself.
    let executable = match front {
        Some(front) if !front.is_file() => {
            let message = format!("--front {}: no such program; build it first, or leave --front out to measure the mayfly beside this program", front.display());
            return Slot::Skipped(RuntimeResult::skipped("mayfly", Status::SetupFailed, message));
        }
        Some(front) => std::path::absolute(front),
        None => std::env::current_exe().map(|path| path.with_file_name(crate::FRONT_PROGRAM)),
    };
    match executable {
        Ok(executable) => {
            let command_line = format!(
                "{} run --state-dir {} --report {} -- {PROGRAM}",
                executable.display(),
                state_dir.display(),
                report_path(state_dir).display()
            );
            let version = Some(format!("mayfly {}", env!("CARGO_PKG_VERSION")));
            Slot::Ready(Runtime::new("mayfly", version, command_line, Launcher::Mayfly { executable, state_dir: state_dir.to_path_buf() }))
        }
        Err(error) => Slot::Skipped(RuntimeResult::skipped("mayfly", Status::SetupFailed, format!("failed to find the mayfly executable: {error}"))),
    }
}

pub(super) fn set_up_bubblewrap() -> Slot {
    let Some(bwrap) = find_in_path("bwrap") else {
        return Slot::Skipped(RuntimeResult::skipped("bubblewrap", Status::NotInstalled, "bwrap not found in PATH".into()));
    };
    let command_line = format!("{} {} {PROGRAM}", bwrap.display(), BWRAP_OPTIONS.join(" "));
    Slot::Ready(Runtime::new("bubblewrap", version_of(&bwrap), command_line, Launcher::Bubblewrap { bwrap }))
}

pub(super) fn set_up_runc() -> Slot {
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
pub(super) fn find_in_path(name: &str) -> Option<PathBuf> {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn phase_medians_take_middle_value() {
        let phases = vec![
            vec![1000, 1500, 2000, 3000, 3000, 100, 1000],
            vec![3000, 3500, 2000, 5000, 5000, 300, 1000],
            vec![2000, 2500, 2000, 4000, 4000, 200, 1000],
        ];
        let medians = phase_medians(&phases).unwrap();
        assert_eq!(medians[0], ("launch", 2.0));
        assert_eq!(medians[1], ("init_started", 2.5));
        assert_eq!(medians[4], ("ended", 4.0));
        assert_eq!(medians[5], ("teardown", 0.2));
        assert!(phase_medians(&[]).is_none());
    }

    #[test]
    fn find_in_path_finds_sh() {
        assert!(find_in_path("sh").is_some());
        assert!(find_in_path("mayfly-bench-no-such-program").is_none());
    }
}
