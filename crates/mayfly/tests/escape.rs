//! Attacks from inside the sandbox, each of which must fail. The probe tries
//! one operation per check and reports the result.

mod common;

use std::net::TcpListener;
use std::os::unix::fs::PermissionsExt;

use common::*;

#[test]
fn host_secrets_are_invisible() {
    let scratch = Scratch::new("secrets");
    let state = scratch.state_dir();
    let state_record = format!("read:{}/id-ranges/0.lock", state.display());
    let (output, lines) = scratch.probe(&["--json"], &["read:/etc/shadow", "read:/etc/ssl/private", &state_record, "read:/root/.bashrc", "read:/sys/kernel/notes", "read:/boot"]);
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    for check in ["read:/etc/shadow", "read:/etc/ssl/private", state_record.as_str(), "read:/root/.bashrc", "read:/sys/kernel/notes", "read:/boot"] {
        assert_eq!(assert_blocked(&lines, check), "ENOENT", "{check}");
    }
    assert_clean(&report(&output));
}

#[test]
fn read_only_paths_reject_writes() {
    let scratch = Scratch::new("readonly");
    let checks = ["write:/usr/x", "write:/etc/passwd", "write:/x", "mkdir:/opt", "write:/proc/sys/kernel/hostname", "write:/etc/ssl/certs/x"];
    let (output, lines) = scratch.probe(&[], &checks);
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    for check in checks {
        let errno = assert_blocked(&lines, check);
        assert!(["EROFS", "EACCES", "EPERM"].contains(&errno.as_str()), "{check}: {errno}");
    }
}

#[test]
fn writable_paths_accept_writes() {
    let scratch = Scratch::new("writable");
    let checks = ["write:/work/x", "write:/tmp/x", "write:/dev/shm/x", "write:/dev/null"];
    let (_, lines) = scratch.probe(&[], &checks);
    for check in checks {
        assert_eq!(result(&lines, check)["outcome"], "allowed", "{check}");
    }
}

#[test]
fn host_processes_are_invisible() {
    let scratch = Scratch::new("pids");
    let own_pid = format!("kill:{}", std::process::id());
    let (output, lines) = scratch.probe(&[], &["pids", &own_pid, "kill:1"]);
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    let pids = result(&lines, "pids");
    assert_eq!(pids["pids"], serde_json::json!([1, 2]), "only init and the probe are visible: {pids}");
    // Init's command line is the init program's, with no host path of the
    // `mayfly run` that started it, such as its state directory.
    assert_eq!(pids["pid1"], "mayfly-init __mayfly-sandbox-init", "{pids}");
    assert_eq!(assert_blocked(&lines, &own_pid), "ESRCH");
    assert_eq!(assert_blocked(&lines, "kill:1"), "EPERM");
}

#[test]
fn namespace_creation_is_blocked() {
    let scratch = Scratch::new("namespaces");
    let checks = ["unshare:user", "unshare:net", "unshare:mount", "unshare:pid", "clone-newuser", "setns"];
    let (_, lines) = scratch.probe(&[], &checks);
    for check in checks {
        assert_eq!(assert_blocked(&lines, check), "EPERM", "{check}");
    }
    assert_eq!(assert_blocked(&lines_of(&scratch, "clone3"), "clone3"), "ENOSYS");
}

fn lines_of(scratch: &Scratch, check: &str) -> Vec<serde_json::Value> {
    scratch.probe(&[], &[check]).1
}

#[test]
fn kernel_attack_surface_is_blocked() {
    let scratch = Scratch::new("kernel");
    let checks = ["mount", "chroot", "module", "io-uring", "bpf", "perf", "keyctl", "userfaultfd", "ptrace", "sethostname", "setuid0"];
    let (_, lines) = scratch.probe(&[], &checks);
    for check in checks {
        assert_eq!(assert_blocked(&lines, check), "EPERM", "{check}");
    }
}

#[test]
fn raw_sockets_are_blocked() {
    let scratch = Scratch::new("raw");
    let (_, lines) = scratch.probe(&[], &["raw-socket", "packet-socket"]);
    assert_eq!(assert_blocked(&lines, "raw-socket"), "EPERM");
    assert_eq!(assert_blocked(&lines, "packet-socket"), "EPERM");
}

#[test]
fn host_loopback_is_unreachable() {
    let scratch = Scratch::new("loopback");
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let check = format!("connect:{}", listener.local_addr().unwrap());
    let (_, lines) = scratch.probe(&[], &[&check]);
    assert_eq!(assert_blocked(&lines, &check), "ECONNREFUSED");
    assert!(listener.accept().is_err(), "the host listener must not see a connection");
}

#[test]
fn foreign_abi_kills_the_process() {
    let scratch = Scratch::new("int80");
    let (_, lines) = scratch.probe(&[], &["int80"]);
    assert_eq!(result(&lines, "int80")["killed_by"], "SIGSYS");
}

#[test]
fn terminal_injection_is_blocked() {
    let scratch = Scratch::new("tiocsti");
    let (_, lines) = scratch.probe(&[], &["tiocsti"]);
    assert_eq!(assert_blocked(&lines, "tiocsti"), "EPERM");
}

#[test]
fn command_runs_unprivileged() {
    let scratch = Scratch::new("identity");
    let (_, lines) = scratch.probe(&[], &["identity"]);
    let identity = result(&lines, "identity");
    assert_eq!(identity["uid"], 1000);
    assert_eq!(identity["euid"], 1000);
    assert_eq!(identity["cap_eff"], "0000000000000000");
    assert_eq!(identity["cap_bnd"], "0000000000000000");
    assert_eq!(identity["no_new_privs"], "1");
    assert_eq!(identity["seccomp"], "2");
    let host_base: u64 = identity["uid_map"].as_str().unwrap().split_whitespace().nth(1).unwrap().parse().unwrap();
    assert!(host_base >= 1_000_000_000, "sandbox uids map to an unprivileged host range: {identity}");
}

#[test]
fn setuid_binary_gains_nothing() {
    let scratch = Scratch::new("setuid");
    let tools = scratch.path.join("tools");
    std::fs::create_dir_all(&tools).unwrap();
    let setuid_probe = tools.join("probe");
    std::fs::copy(PROBE, &setuid_probe).unwrap();
    std::fs::set_permissions(&setuid_probe, std::fs::Permissions::from_mode(0o4755)).unwrap();
    std::fs::set_permissions(&scratch.path, std::fs::Permissions::from_mode(0o755)).unwrap();
    let profiles = scratch.path.join("profiles");
    let profile = format!(
        "{}\n[[sandbox.mounts]]\nsource = \"{}\"\ntarget = \"/opt/tools\"\n",
        default_profile_text(),
        tools.display()
    );
    write(&profiles.join("setuid.toml"), &profile);
    let output = scratch
        .run()
        .args(["--profile", "setuid", "--profiles-dir"])
        .arg(&profiles)
        .args(["--", "/opt/tools/probe", "identity"])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    let lines = parse_lines(&output.stdout);
    let identity = result(&lines, "identity");
    assert_eq!(identity["euid"], 1000, "a set-user-ID root file must not raise privilege: {identity}");
    assert_eq!(identity["cap_eff"], "0000000000000000");
}

#[test]
fn host_environment_never_leaks() {
    let scratch = Scratch::new("env");
    let output = scratch
        .run()
        .env("MAYFLY_TEST_SECRET", "hunter2")
        .args(["--env", "CHOSEN=yes", "--input"])
        .arg(format!("{PROBE}:probe"))
        .args(["--", "./probe", "env"])
        .output()
        .unwrap();
    let lines = parse_lines(&output.stdout);
    let env: Vec<String> = result(&lines, "env")["env"].as_array().unwrap().iter().map(|v| v.as_str().unwrap().to_string()).collect();
    assert!(env.contains(&"CHOSEN=yes".to_string()), "{env:?}");
    assert!(env.iter().all(|v| !v.contains("hunter2")), "{env:?}");
    assert!(env.iter().all(|v| !v.starts_with("CARGO")), "{env:?}");
}

#[test]
fn hostname_comes_from_profile() {
    let scratch = Scratch::new("hostname");
    let (_, lines) = scratch.probe(&[], &["hostname"]);
    assert_eq!(result(&lines, "hostname")["hostname"], "mayfly");
}

#[test]
fn landlock_blocks_writes_outside_rules() {
    let scratch = Scratch::new("landlock");
    // A process may normally rename itself through /proc/self/comm, which it
    // owns; only Landlock's read-only rule for /proc stops the write.
    let (output, lines) = scratch.probe(&["--json"], &["write:/proc/self/comm", "write:/dev/tty"]);
    assert_eq!(assert_blocked(&lines, "write:/proc/self/comm"), "EACCES");
    assert_eq!(assert_blocked(&lines, "write:/dev/tty"), "EACCES");
    assert_eq!(report(&output)["landlock"], "fully_enforced");
}
