//! Resource bombs inside the sandbox: each is capped by the session's limits
//! and leaves the host and other sessions unharmed.

mod common;

use std::process::Command;

use common::*;

fn swap_used_kib() -> u64 {
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap();
    let field = |name: &str| -> u64 {
        meminfo.lines().find_map(|l| l.strip_prefix(name)).unwrap().split_whitespace().next().unwrap().parse().unwrap()
    };
    field("SwapTotal:") - field("SwapFree:")
}

#[test]
fn fork_bomb_is_capped() {
    let scratch = Scratch::new("forkbomb");
    let mut bomb = scratch.run();
    bomb.args(["--pids", "64", "--input"]).arg(format!("{PROBE}:probe")).args(["--", "./probe", "fork-bomb"]);
    let bomb = bomb.stdout(std::process::Stdio::piped()).spawn().unwrap();

    // Another session works while the bomb runs.
    let neighbour = scratch.run().args(["--", "/bin/echo", "still here"]).output().unwrap();
    assert_eq!(neighbour.status.code(), Some(0), "{}", stderr(&neighbour));
    assert_eq!(stdout(&neighbour), "still here\n");

    let output = bomb.wait_with_output().unwrap();
    let lines = parse_lines(&output.stdout);
    let fork_bomb = result(&lines, "fork-bomb");
    assert_eq!(fork_bomb["errno"], "EAGAIN", "{fork_bomb}");
    assert!(fork_bomb["forks"].as_u64().unwrap() < 64, "{fork_bomb}");
    assert_eq!(output.status.code(), Some(0));
}

#[test]
fn memory_bomb_ends_out_of_memory() {
    let scratch = Scratch::new("membomb");
    let swap_before = swap_used_kib();
    let (output, _) = scratch.probe(&["--memory", "256MiB", "--json"], &["alloc:300"]);
    assert_eq!(output.status.code(), Some(123), "{}", stderr(&output));
    let report = report(&output);
    assert_eq!(report["end"]["reason"], "out_of_memory");
    assert!(report["usage"]["oom_kills"].as_u64().unwrap() >= 1);
    assert!(stderr(&output).contains("ran out of memory"));
    assert_eq!(swap_used_kib(), swap_before, "host swap use changed");
    assert_clean(&report);
}

#[test]
fn tmpfs_filling_memory_ends_out_of_memory() {
    let scratch = Scratch::new("tmpfsoom");
    let output = scratch
        .run()
        .args(["--memory", "32MiB", "--json", "--", "/bin/sh", "-c", "head -c 100M /dev/zero > /work/big"])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(123), "{}", stderr(&output));
    let report = report(&output);
    assert_eq!(report["end"]["reason"], "out_of_memory");
    assert_clean(&report);
}

#[test]
fn tmpfs_fills_to_cap_and_command_survives() {
    let scratch = Scratch::new("fill");
    let (output, lines) = scratch.probe(&["--tmp", "8MiB", "--shm", "4MiB"], &["fill:/tmp", "fill:/dev/shm"]);
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    let tmp = result(&lines, "fill:/tmp");
    assert_eq!(tmp["errno"], "ENOSPC");
    assert_eq!(tmp["written"], 8 << 20);
    let shm = result(&lines, "fill:/dev/shm");
    assert_eq!(shm["errno"], "ENOSPC");
    assert_eq!(shm["written"], 4 << 20);
}

#[test]
fn fd_bomb_stops_at_open_files_limit() {
    let scratch = Scratch::new("fdbomb");
    let (output, lines) = scratch.probe(&["--open-files", "64"], &["fd-bomb"]);
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    let bomb = result(&lines, "fd-bomb");
    assert_eq!(bomb["errno"], "EMFILE");
    assert!(bomb["opened"].as_u64().unwrap() <= 64, "{bomb}");
}

#[test]
fn abort_reports_signal_six() {
    let scratch = Scratch::new("abort");
    let (output, _) = scratch.probe(&["--json"], &["abort"]);
    assert_eq!(output.status.code(), Some(134));
    let report = report(&output);
    assert_eq!(report["end"]["reason"], "signaled");
    assert_eq!(report["end"]["signal"], 6);
    assert_eq!(report["end"]["name"], "SIGABRT");
    assert!(stderr(&output).contains("signal 6 (SIGABRT)"));
}

#[test]
fn orphaned_zombies_are_reaped() {
    let scratch = Scratch::new("zombies");
    let script = "for i in 1 2 3 4 5; do (sleep 0.1 &) ; done; sleep 1; grep -l '^State:.*Z' /proc/[0-9]*/status | wc -l";
    let output = scratch.run().args(["--", "/bin/sh", "-c", script]).output().unwrap();
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    assert_eq!(stdout(&output).trim(), "0", "zombies remain");
}

fn read_trimmed(path: std::path::PathBuf) -> String {
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display())).trim().to_string()
}

#[test]
fn cgroup_limits_are_applied() {
    let scratch = Scratch::new("cgroup");
    let mut child = Command::new(MAYFLY)
        .args(["run", "--state-dir"])
        .arg(scratch.state_dir())
        .args(["--cpus", "0.5", "--memory", "200MiB", "--pids", "50", "--", "/bin/sleep", "3"])
        .spawn()
        .unwrap();
    let paths = record_cgroups(&wait_for_running_session(&scratch.state_dir()).record);
    let mut checked = 0;
    for path in &paths {
        if path.join("cpu.cfs_quota_us").exists() {
            assert_eq!(read_trimmed(path.join("cpu.cfs_quota_us")), "50000");
            assert_eq!(read_trimmed(path.join("cpu.cfs_period_us")), "100000");
            checked += 1;
        }
        if path.join("cpu.max").exists() {
            assert_eq!(read_trimmed(path.join("cpu.max")), "50000 100000");
            checked += 1;
        }
        if path.join("memory.limit_in_bytes").exists() {
            assert_eq!(read_trimmed(path.join("memory.limit_in_bytes")), (200u64 << 20).to_string());
            if path.join("memory.memsw.limit_in_bytes").exists() {
                assert_eq!(read_trimmed(path.join("memory.memsw.limit_in_bytes")), (200u64 << 20).to_string());
            }
            checked += 1;
        }
        if path.join("memory.max").exists() {
            assert_eq!(read_trimmed(path.join("memory.max")), (200u64 << 20).to_string());
            assert_eq!(read_trimmed(path.join("memory.swap.max")), "0");
            checked += 1;
        }
        if path.join("pids.max").exists() {
            assert_eq!(read_trimmed(path.join("pids.max")), "50");
            checked += 1;
        }
    }
    assert!(checked >= 3, "cpu, memory and pids limits must be found in {paths:?}");
    assert_eq!(child.wait().unwrap().code(), Some(0));
    for path in &paths {
        assert!(!path.exists(), "{} remains after the session", path.display());
    }
}
