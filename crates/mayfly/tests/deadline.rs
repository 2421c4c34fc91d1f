//! The deadline: every process of the session dies at it, whatever it does,
//! and it holds even when the supervising `mayfly` process is killed.

mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

#[test]
fn deadline_kills_stubborn_processes() {
    let scratch = Scratch::new("stubborn");
    // A TERM-ignoring main process, a TERM-ignoring child, a stopped child
    // and a setsid daemon: all must be gone at the deadline.
    let script = r#"
        trap '' TERM
        sh -c "trap '' TERM; sleep 1000" &
        sh -c 'kill -STOP $$; sleep 1000' &
        setsid sh -c "trap '' TERM; sleep 1000" &
        echo started
        while true; do sleep 1; done
    "#;
    let started = Instant::now();
    let output = scratch.run().args(["--ttl", "2s", "--json", "--", "/bin/sh", "-c", script]).output().unwrap();
    let elapsed = started.elapsed();
    assert_eq!(output.status.code(), Some(124), "{}", stderr(&output));
    assert_eq!(stdout(&output), "started\n");
    assert!(stderr(&output).contains("reached its deadline"));
    let report = report(&output);
    assert_eq!(report["end"]["reason"], "deadline");
    assert_eq!(report["deadline_enforced_by"], "init");
    assert_clean(&report);
    // A functional bound, not a speed measurement: the session ended, and
    // not long after its 2 s deadline.
    assert!(elapsed >= Duration::from_secs(2), "ended before the deadline: {elapsed:?}");
    assert!(elapsed < Duration::from_secs(6), "ended long after the deadline: {elapsed:?}");
}

#[test]
fn command_exit_ends_daemons() {
    let scratch = Scratch::new("daemons");
    let script = "setsid sh -c 'sleep 1000' & (sleep 1000 &) ; echo done";
    let started = Instant::now();
    let output = scratch.run().args(["--ttl", "1m", "--json", "--", "/bin/sh", "-c", script]).output().unwrap();
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    assert!(started.elapsed() < Duration::from_secs(30), "the daemons kept the session alive");
    let report = report(&output);
    assert_eq!(report["end"]["reason"], "exited");
    assert_clean(&report);
}

fn session_records(state_dir: &std::path::Path) -> Vec<serde_json::Value> {
    let Ok(entries) = std::fs::read_dir(state_dir.join("sessions")) else { return Vec::new() };
    entries
        .filter_map(Result::ok)
        .filter(|e| e.path().extension().is_some_and(|x| x == "json"))
        .filter_map(|e| serde_json::from_slice(&std::fs::read(e.path()).ok()?).ok())
        .collect()
}

fn cgroup_processes(paths: &[std::path::PathBuf]) -> usize {
    paths.iter().filter_map(|p| std::fs::read_to_string(p.join("cgroup.procs")).ok()).map(|t| t.lines().count()).sum()
}

#[test]
fn deadline_holds_when_supervisor_is_killed() {
    let scratch = Scratch::new("orphan");
    let mut supervisor = Command::new(MAYFLY)
        .args(["run", "--state-dir"])
        .arg(scratch.state_dir())
        .args(["--ttl", "2s", "--", "/bin/sh", "-c", "trap '' TERM; sleep 1000"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();

    // Wait until the session runs, then kill the supervisor outright.
    let paths = record_cgroups(&wait_for_running_session(&scratch.state_dir()).record);
    assert!(!paths.is_empty(), "the session has cgroups");
    let started = Instant::now();
    supervisor.kill().unwrap();
    supervisor.wait().unwrap();
    assert!(cgroup_processes(&paths) > 0, "the session must outlive its supervisor until the deadline");

    // Init ends the session at the deadline on its own.
    while cgroup_processes(&paths) > 0 {
        assert!(started.elapsed() < Duration::from_secs(8), "the session outlived its deadline without a supervisor");
        std::thread::sleep(Duration::from_millis(20));
    }

    // Reaping removes what the crashed supervisor left: cgroups and the record.
    let reap = Command::new(MAYFLY).args(["reap", "--json", "--state-dir"]).arg(scratch.state_dir()).output().unwrap();
    assert_eq!(reap.status.code(), Some(0), "{}", stderr(&reap));
    let reaped: serde_json::Value = serde_json::from_slice(&reap.stdout).unwrap();
    assert_eq!(reaped.as_array().unwrap().len(), 1, "{reaped}");
    assert!(reaped[0]["error"].is_null(), "{reaped}");
    for path in &paths {
        assert!(!path.exists(), "{} remains after reap", path.display());
    }
    assert!(session_records(&scratch.state_dir()).is_empty());

    // The reap is audited, since the dead supervisor never wrote the end.
    let export = Command::new(MAYFLY).args(["audit", "export", "--state-dir"]).arg(scratch.state_dir()).output().unwrap();
    let kinds: Vec<String> = parse_lines(&export.stdout).iter().map(|r| r["kind"].as_str().unwrap().to_string()).collect();
    assert_eq!(kinds, ["session.started", "session.reaped", "checkpoint"]);
}

#[test]
fn interrupt_is_forwarded_to_command() {
    let scratch = Scratch::new("sigint");
    let mut child = scratch
        .run()
        .args(["--ttl", "1m", "--json", "--", "/bin/sh", "-c", "trap 'echo got-term; exit 42' TERM; echo ready; while true; do sleep 0.1; done"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = child.stdout.take().unwrap();
    let mut first = [0u8; 6];
    std::io::Read::read_exact(&mut stdout, &mut first).unwrap();
    assert_eq!(&first, b"ready\n");
    // SAFETY: signals the mayfly process this test started.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let output = child.wait_with_output().unwrap();
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut stdout, &mut rest).unwrap();
    assert_eq!(output.status.code(), Some(42), "{}", stderr(&output));
    assert_eq!(rest, "got-term\n");
}
