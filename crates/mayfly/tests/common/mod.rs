//! Helpers shared by the integration tests. They run the real `mayfly`
//! binary as root, with a state directory of their own.

#![allow(dead_code)]

pub mod devtools;
pub mod origin;
pub mod server;

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

pub const MAYFLY: &str = env!("CARGO_BIN_EXE_mayfly");
pub const PROBE: &str = env!("CARGO_BIN_EXE_mayfly-probe");

/// Returns the `mayfly` program that [`Scratch::run`] starts:
/// `MAYFLY_TEST_FRONT` when set, such as a `mayfly` built for musl with
/// `mayfly-full` beside it, else the one this build made.
pub fn front() -> String {
    std::env::var("MAYFLY_TEST_FRONT").unwrap_or_else(|_| MAYFLY.to_string())
}

/// A scratch directory removed when the test ends.
pub struct Scratch {
    pub path: PathBuf,
}

impl Scratch {
    pub fn new(label: &str) -> Scratch {
        assert!(nix_is_root(), "the sandbox tests need root: run them as root (CI does)");
        let unique = format!("mayfly-test-{label}-{}-{:?}", std::process::id(), std::thread::current().id());
        let path = std::env::temp_dir().join(unique.replace(['(', ')'], ""));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).unwrap();
        Scratch { path }
    }

    pub fn state_dir(&self) -> PathBuf {
        self.path.join("state")
    }

    /// Returns a `mayfly run` command with this scratch state directory.
    pub fn run(&self) -> Command {
        let mut command = Command::new(front());
        command.arg("run").arg("--state-dir").arg(self.state_dir()).stdin(Stdio::null());
        command
    }

    /// Runs the probe inside a sandbox with the given extra flags and checks.
    pub fn probe(&self, flags: &[&str], checks: &[&str]) -> (Output, Vec<serde_json::Value>) {
        let output = self
            .run()
            .args(flags)
            .arg("--input")
            .arg(format!("{PROBE}:probe"))
            .arg("--")
            .arg("./probe")
            .args(checks)
            .output()
            .unwrap();
        let lines = parse_lines(&output.stdout);
        (output, lines)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

pub fn nix_is_root() -> bool {
    // SAFETY: geteuid has no failure modes.
    unsafe { libc::geteuid() == 0 }
}

pub fn parse_lines(stdout: &[u8]) -> Vec<serde_json::Value> {
    String::from_utf8_lossy(stdout).lines().filter_map(|l| serde_json::from_str(l).ok()).collect()
}

/// Finds the probe result of one check.
pub fn result<'a>(lines: &'a [serde_json::Value], check: &str) -> &'a serde_json::Value {
    lines
        .iter()
        .find(|l| l["check"] == check)
        .unwrap_or_else(|| panic!("the probe printed no result for {check}: {lines:?}"))
}

/// Asserts that a check was blocked, and returns its errno.
pub fn assert_blocked(lines: &[serde_json::Value], check: &str) -> String {
    let value = result(lines, check);
    assert_eq!(value["outcome"], "blocked", "{check} should be blocked: {value}");
    value["errno"].as_str().unwrap_or_default().to_string()
}

/// Parses the JSON report that `--json` prints as the last line of stderr.
pub fn report(output: &Output) -> serde_json::Value {
    let stderr = String::from_utf8_lossy(&output.stderr);
    let line = stderr.lines().rev().find(|l| l.starts_with('{')).unwrap_or_else(|| panic!("no JSON report on stderr: {stderr}"));
    serde_json::from_str(line).unwrap()
}

pub fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

pub fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// Asserts that the report shows a teardown that left nothing behind.
pub fn assert_clean(report: &serde_json::Value) {
    assert_eq!(report["teardown"]["clean"], true, "teardown is not clean: {}", report["teardown"]);
    assert_eq!(report["teardown"]["cgroups_remaining"], serde_json::json!([]), "cgroups remain");
    assert_eq!(report["teardown"]["processes_remaining"], serde_json::json!([]), "processes remain");
    assert_eq!(report["teardown"]["namespaces_remaining"], serde_json::json!([]), "namespaces remain");
}

pub fn write(path: &Path, content: &str) {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).unwrap();
    }
    std::fs::write(path, content).unwrap();
}

/// Returns the built-in default profile's text, for tests that derive profiles from it.
pub fn default_profile_text() -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../mayfly-core/profiles/default.toml");
    std::fs::read_to_string(path).unwrap()
}

/// A session found running through its ledger record.
pub struct Running {
    pub record: serde_json::Value,
    /// Init's pid on the host.
    pub init_pid: i32,
}

/// Returns the process in `cgroup` that is PID 1 of its own PID namespace.
fn init_in(cgroup: &Path) -> Option<i32> {
    let procs = std::fs::read_to_string(cgroup.join("cgroup.procs")).ok()?;
    procs.lines().filter_map(|line| line.parse::<i32>().ok()).find(|pid| {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
        status.lines().any(|line| line.starts_with("NSpid:") && line.split_whitespace().last() == Some("1"))
    })
}

/// Waits up to five seconds for a session whose init runs in the cgroups
/// its ledger record lists, and returns the record and init's pid.
pub fn wait_for_running_session(state_dir: &Path) -> Running {
    for _ in 0..500 {
        if let Ok(entries) = std::fs::read_dir(state_dir.join("sessions")) {
            for entry in entries.filter_map(Result::ok) {
                let Ok(bytes) = std::fs::read(entry.path()) else { continue };
                let Ok(record) = serde_json::from_slice::<serde_json::Value>(&bytes) else { continue };
                if let Some(init_pid) = record_cgroups(&record).iter().find_map(|path| init_in(path)) {
                    return Running { record, init_pid };
                }
            }
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    panic!("no session with a running init appeared in {}", state_dir.display());
}

/// Returns the cgroup directories a ledger record lists.
pub fn record_cgroups(record: &serde_json::Value) -> Vec<PathBuf> {
    record["cgroup_paths"].as_array().unwrap().iter().map(|p| p.as_str().unwrap().into()).collect()
}
