//! Sandboxes prepared ahead of a session and claimed later, as a warm pool
//! uses them: the claim alone gives the command, environment, terminal and
//! deadline, and an unclaimed sandbox is destroyed with nothing left.
//!
//! The sandbox execs `/proc/self/exe` as its init, so this test binary
//! dispatches the init argument itself and therefore runs without the
//! standard test harness. Needs root, as every sandbox test does.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use mayfly_core::EndReason;
use mayfly_sandbox::cgroup::{CgroupLimits, Layout};
use mayfly_sandbox::session::{prepare, ClaimConfig, PrepareConfig, Prepared};
use mayfly_sandbox::spec::LandlockMode;
use mayfly_sandbox::terminal::WindowSize;

/// Output written by a session, shared with the test.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Captured {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

struct Fixture {
    state_dir: PathBuf,
    layout: Layout,
}

impl Fixture {
    fn new(label: &str) -> Fixture {
        let state_dir = std::env::temp_dir().join(format!("mayfly-pool-test-{label}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&state_dir);
        std::fs::create_dir_all(&state_dir).unwrap();
        Fixture { state_dir, layout: Layout::detect().expect("a usable cgroup hierarchy") }
    }

    fn member_config(&self, id: &str, max_unclaimed: Duration) -> PrepareConfig {
        PrepareConfig {
            sandbox_id: id.to_string(),
            state_dir: self.state_dir.clone(),
            hostname: "mayfly".into(),
            timezone: "UTC".into(),
            limits: CgroupLimits { memory_bytes: 256 << 20, cpu_millis: 1000, pids: 64 },
            tmp_bytes: 16 << 20,
            shm_bytes: 16 << 20,
            work_bytes: 16 << 20,
            open_files: 256,
            inputs: Vec::new(),
            artifacts: None,
            mounts: Vec::new(),
            landlock: LandlockMode::IfAvailable,
            command_pipes: false,
            terminal: false,
            prestart: None,
            max_unclaimed,
            pool_member: true,
        }
    }

    /// Prepares a pool member and waits until its init waits for the claim.
    fn ready_member(&self, id: &str) -> Prepared {
        let mut member = prepare(self.member_config(id, Duration::from_secs(120)), &self.layout).expect("the member is prepared");
        member.wait_ready(Duration::from_secs(10)).expect("the member becomes ready");
        member
    }

    fn ledger_record(&self, id: &str) -> PathBuf {
        self.state_dir.join("sessions").join(format!("{id}.json"))
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.state_dir);
    }
}

fn claim_config(session_id: &str, argv: &[&str], env: &[(&str, &str)], ttl: Duration) -> ClaimConfig {
    ClaimConfig {
        session_id: session_id.to_string(),
        argv: argv.iter().map(|a| a.to_string()).collect(),
        env: env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
        ttl,
        terminal: None,
        forward_signals: false,
        control: None,
        before_start: None,
    }
}

fn unix_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_millis() as u64
}

fn member_id(label: &str) -> String {
    format!("p-test-{label}-{}", std::process::id())
}

fn member_env_comes_from_claim() {
    let fixture = Fixture::new("env");
    let id = member_id("env");
    let member = fixture.ready_member(&id);
    let record: serde_json::Value = serde_json::from_slice(&std::fs::read(fixture.ledger_record(&id)).unwrap()).unwrap();
    assert_eq!(record["pool_member"], true, "{record}");
    assert!(record["claimed_by"].is_null(), "{record}");

    let stdout = Captured::default();
    let config = claim_config("s-env", &["/usr/bin/env"], &[("PATH", "/usr/bin:/bin"), ("INJECTED_SECRET", "claim-only")], Duration::from_secs(30));
    let outcome = member.claim(config, None, Box::new(stdout.clone()), Box::new(std::io::sink())).unwrap();
    assert_eq!(outcome.end, EndReason::Exited { code: 0 }, "{outcome:?}");
    assert_eq!(outcome.session_id, "s-env");
    assert_eq!(outcome.sandbox_id, id);
    let mut lines: Vec<String> = stdout.text().lines().map(str::to_string).collect();
    lines.sort();
    assert_eq!(lines, ["INJECTED_SECRET=claim-only", "PATH=/usr/bin:/bin"]);
    assert!(outcome.teardown.clean, "{:?}", outcome.teardown);
    assert!(!fixture.ledger_record(&id).exists());
}

fn claim_gives_the_terminal() {
    let fixture = Fixture::new("tty");
    let mut prepare_config = fixture.member_config(&member_id("tty"), Duration::from_secs(120));
    prepare_config.terminal = true;
    let mut member = prepare(prepare_config, &fixture.layout).unwrap();
    member.wait_ready(Duration::from_secs(10)).unwrap();
    let stdout = Captured::default();
    let mut config = claim_config("s-tty", &["/bin/sh", "-c", "tty; stty size"], &[("PATH", "/usr/bin:/bin")], Duration::from_secs(30));
    config.terminal = Some(WindowSize { rows: 33, cols: 111 });
    let outcome = member.claim(config, None, Box::new(stdout.clone()), Box::new(std::io::sink())).unwrap();
    assert_eq!(outcome.end, EndReason::Exited { code: 0 }, "{outcome:?}");
    let text = stdout.text();
    assert!(text.contains("/dev/pts/0"), "{text:?}");
    assert!(text.contains("33 111"), "{text:?}");
    assert!(outcome.teardown.clean, "{:?}", outcome.teardown);
}

fn deadline_counts_from_the_claim() {
    let fixture = Fixture::new("deadline");
    let member = fixture.ready_member(&member_id("deadline"));
    // The member waits longer than the session's TTL before its claim, so a
    // deadline counted from the preparation would already have passed.
    std::thread::sleep(Duration::from_secs(3));
    let ttl = Duration::from_secs(2);
    let claimed_at = Instant::now();
    let claimed_unix_ms = unix_ms();
    let stdout = Captured::default();
    let config = claim_config("s-deadline", &["/bin/sh", "-c", "echo running; trap '' TERM; sleep 100"], &[("PATH", "/usr/bin:/bin")], ttl);
    let outcome = member.claim(config, None, Box::new(stdout.clone()), Box::new(std::io::sink())).unwrap();
    let elapsed = claimed_at.elapsed();

    assert_eq!(stdout.text(), "running\n", "the command ran before the deadline");
    assert_eq!(outcome.end, EndReason::Deadline, "{outcome:?}");
    assert!(outcome.deadline_unix_ms >= claimed_unix_ms + 2000, "deadline {} is earlier than the claim at {claimed_unix_ms} plus the TTL", outcome.deadline_unix_ms);
    assert!(outcome.started_at_unix_ms >= claimed_unix_ms, "the session started at {} before its claim at {claimed_unix_ms}", outcome.started_at_unix_ms);
    assert!(elapsed >= ttl, "the session ended {elapsed:?} after its claim, before its {ttl:?} TTL");
    assert!(outcome.teardown.clean, "{:?}", outcome.teardown);
}

fn processes_in(paths: &[PathBuf]) -> usize {
    paths.iter().filter_map(|p| std::fs::read_to_string(p.join("cgroup.procs")).ok()).map(|t| t.lines().count()).sum()
}

fn destroyed_member_leaves_nothing() {
    let fixture = Fixture::new("destroy");
    let id = member_id("destroy");
    let member = fixture.ready_member(&id);
    let init_pid = member.init_pid();
    let cgroups = fixture.layout.session_paths(&id);
    assert!(Path::new(&format!("/proc/{init_pid}")).exists(), "init runs while the member waits");
    assert!(processes_in(&cgroups) > 0, "init is in the member's cgroups");
    let namespace = std::fs::read_link(format!("/proc/{init_pid}/ns/mnt")).unwrap();

    let evidence = member.destroy();
    assert!(evidence.clean, "{evidence:?}");
    assert!(evidence.processes_remaining.is_empty(), "{evidence:?}");
    assert!(evidence.namespaces_remaining.is_empty(), "{evidence:?}");
    assert!(!Path::new(&format!("/proc/{init_pid}")).exists(), "init {init_pid} outlived the destroy");
    for path in &cgroups {
        assert!(!path.exists(), "{} remains", path.display());
    }
    assert!(!fixture.ledger_record(&id).exists(), "the ledger record remains");
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(!mountinfo.contains(namespace.to_string_lossy().as_ref()), "the member's mount namespace is still bound");
}

/// Holds the network namespace of a member's init from the host, with a
/// process of the test's own.
fn hold_network_of(init_pid: i32) -> std::process::Child {
    let holder = std::process::Command::new("nsenter")
        .arg(format!("--net=/proc/{init_pid}/ns/net"))
        .args(["/bin/sleep", "30"])
        .spawn()
        .expect("nsenter runs");
    // nsenter execs sleep once it is in the namespace.
    let started = Instant::now();
    while std::fs::read_link(format!("/proc/{}/exe", holder.id())).is_ok_and(|exe| !exe.ends_with("sleep")) {
        assert!(started.elapsed() < Duration::from_secs(5), "nsenter never ran sleep");
        std::thread::sleep(Duration::from_millis(5));
    }
    holder
}

/// Checks that a host process in a member's network namespace is reported
/// by its pid, whether teardown checks the namespaces by handle or finds
/// holders with the scan, after a session's end and after a destroy.
fn teardown_names_a_foreign_holder() {
    let fixture = Fixture::new("holder");
    for scan_only in [false, true] {
        mayfly_sandbox::teardown::scan_only(scan_only);
        for claimed in [true, false] {
            let id = member_id(&format!("holder-{scan_only}-{claimed}"));
            let member = fixture.ready_member(&id);
            let mut holder = hold_network_of(member.init_pid());
            let evidence = if claimed {
                let config = claim_config("s-holder", &["/bin/true"], &[], Duration::from_secs(30));
                member.claim(config, None, Box::new(std::io::sink()), Box::new(std::io::sink())).unwrap().teardown
            } else {
                member.destroy()
            };
            holder.kill().unwrap();
            holder.wait().unwrap();
            let mode = format!("scan only: {scan_only}, claimed: {claimed}");
            assert!(!evidence.clean, "{mode}: {evidence:?}");
            let remaining = evidence.namespaces_remaining.join("\n");
            assert!(remaining.contains(&format!("pid {}", holder.id())), "{mode}: {remaining}");
        }
    }
    mayfly_sandbox::teardown::scan_only(false);
}

/// Checks that, without a holder, the scan finds the namespaces gone after a
/// claim and after a destroy. The other tests cover the handles.
fn scan_only_teardown_is_clean() {
    let fixture = Fixture::new("scan");
    mayfly_sandbox::teardown::scan_only(true);
    let claimed = fixture.ready_member(&member_id("scan-claimed"));
    let config = claim_config("s-scan", &["/bin/true"], &[], Duration::from_secs(30));
    let outcome = claimed.claim(config, None, Box::new(std::io::sink()), Box::new(std::io::sink())).unwrap();
    let destroyed = fixture.ready_member(&member_id("scan-destroyed")).destroy();
    mayfly_sandbox::teardown::scan_only(false);
    assert!(outcome.teardown.clean, "{:?}", outcome.teardown);
    assert!(destroyed.clean, "{destroyed:?}");
}

fn dropped_member_is_destroyed() {
    let fixture = Fixture::new("drop");
    let id = member_id("drop");
    let member = fixture.ready_member(&id);
    let init_pid = member.init_pid();
    drop(member);
    assert!(!Path::new(&format!("/proc/{init_pid}")).exists(), "init {init_pid} outlived the drop");
    for path in fixture.layout.session_paths(&id) {
        assert!(!path.exists(), "{} remains", path.display());
    }
    assert!(!fixture.ledger_record(&id).exists(), "the ledger record remains");
}

fn unclaimed_member_ends_itself() {
    let fixture = Fixture::new("expire");
    let id = member_id("expire");
    let mut member = prepare(fixture.member_config(&id, Duration::from_secs(1)), &fixture.layout).unwrap();
    member.wait_ready(Duration::from_secs(10)).unwrap();
    assert!(member.check_health().is_ok(), "a fresh member is healthy");
    let started = Instant::now();
    let error = loop {
        match member.check_health() {
            Err(error) => break error,
            Ok(()) if started.elapsed() < Duration::from_secs(15) => std::thread::sleep(Duration::from_millis(50)),
            Ok(()) => panic!("the member still waits for a claim long after its unclaimed time ran out"),
        }
    };
    assert!(error.contains("no claim arrived"), "{error}");
    let evidence = member.destroy();
    assert!(evidence.clean, "{evidence:?}");
}

fn prestarted_command() -> mayfly_sandbox::spec::Command {
    mayfly_sandbox::spec::Command {
        argv: ["/bin/sh", "-c", "echo started $FROM; exec sleep 100"].iter().map(|a| a.to_string()).collect(),
        env: vec![("PATH".into(), "/usr/bin:/bin".into()), ("FROM".into(), "profile".into())],
    }
}

fn prestarted_command_runs_before_claim() {
    let fixture = Fixture::new("prestart");
    let id = member_id("prestart");
    let mut config = fixture.member_config(&id, Duration::from_secs(120));
    config.prestart = Some(prestarted_command());
    let mut member = prepare(config, &fixture.layout).unwrap();
    member.wait_ready(Duration::from_secs(10)).unwrap();
    let started = Instant::now();
    while !std::fs::read_to_string(fixture.layout.session_paths(&id)[0].join("cgroup.procs")).unwrap_or_default().lines().any(|pid| {
        std::fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|comm| comm.trim() == "sleep")
    }) {
        assert!(started.elapsed() < Duration::from_secs(10), "the command did not start before the claim");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(member.check_health().is_ok(), "a member with a running command is healthy");

    let command = prestarted_command();
    let argv: Vec<&str> = command.argv.iter().map(String::as_str).collect();
    let env: Vec<(&str, &str)> = command.env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let claimed_at = Instant::now();
    let stdout = Captured::default();
    let config = claim_config("s-prestart", &argv, &env, Duration::from_secs(2));
    let outcome = member.claim(config, None, Box::new(stdout.clone()), Box::new(std::io::sink())).unwrap();
    assert_eq!(stdout.text(), "started profile\n", "the output written before the claim reaches the session");
    assert_eq!(outcome.end, EndReason::Deadline, "{outcome:?}");
    assert!(claimed_at.elapsed() >= Duration::from_secs(2), "the deadline counted from before the claim");
    assert!(outcome.teardown.clean, "{:?}", outcome.teardown);
}

fn prestarted_member_rejects_other_command() {
    let fixture = Fixture::new("prestart-other");
    let id = member_id("prestart-other");
    let mut config = fixture.member_config(&id, Duration::from_secs(120));
    config.prestart = Some(prestarted_command());
    let mut member = prepare(config, &fixture.layout).unwrap();
    member.wait_ready(Duration::from_secs(10)).unwrap();
    let config = claim_config("s-other", &["/bin/echo", "other"], &[("PATH", "/usr/bin:/bin")], Duration::from_secs(10));
    let error = member.claim(config, None, Box::new(std::io::sink()), Box::new(std::io::sink())).unwrap_err();
    assert!(error.to_string().contains("another command"), "{error}");
    assert!(!fixture.ledger_record(&id).exists(), "the rejected member was not destroyed");
    for path in fixture.layout.session_paths(&id) {
        assert!(!path.exists(), "{} remains", path.display());
    }
}

fn prestarted_command_exit_ends_member() {
    let fixture = Fixture::new("prestart-exit");
    let mut config = fixture.member_config(&member_id("prestart-exit"), Duration::from_secs(120));
    config.prestart = Some(mayfly_sandbox::spec::Command { argv: vec!["/bin/true".into()], env: Vec::new() });
    let mut member = prepare(config, &fixture.layout).unwrap();
    // The command may exit before or after init reports ready: either the
    // wait for ready or a later health check fails.
    let started = Instant::now();
    let error = match member.wait_ready(Duration::from_secs(10)) {
        Err(error) => error,
        Ok(()) => loop {
            match member.check_health() {
                Err(error) => break error,
                Ok(()) if started.elapsed() < Duration::from_secs(10) => std::thread::sleep(Duration::from_millis(20)),
                Ok(()) => panic!("a member whose command exited before the claim stays healthy"),
            }
        },
    };
    assert!(error.contains("started before the claim exited"), "{error}");
    assert!(member.destroy().clean);
}

fn main() {
    if std::env::args_os().nth(1).is_some_and(|a| a == mayfly_sandbox::INIT_ARGUMENT) {
        mayfly_sandbox::init::main();
    }
    // SAFETY: geteuid has no failure modes.
    assert!(unsafe { libc::geteuid() } == 0, "the sandbox tests need root: run them as root (CI does)");
    let filter = std::env::args().skip(1).find(|a| !a.starts_with('-'));
    let tests: &[(&str, fn())] = &[
        ("member_env_comes_from_claim", member_env_comes_from_claim),
        ("claim_gives_the_terminal", claim_gives_the_terminal),
        ("deadline_counts_from_the_claim", deadline_counts_from_the_claim),
        ("destroyed_member_leaves_nothing", destroyed_member_leaves_nothing),
        ("dropped_member_is_destroyed", dropped_member_is_destroyed),
        ("teardown_names_a_foreign_holder", teardown_names_a_foreign_holder),
        ("scan_only_teardown_is_clean", scan_only_teardown_is_clean),
        ("unclaimed_member_ends_itself", unclaimed_member_ends_itself),
        ("prestarted_command_runs_before_claim", prestarted_command_runs_before_claim),
        ("prestarted_member_rejects_other_command", prestarted_member_rejects_other_command),
        ("prestarted_command_exit_ends_member", prestarted_command_exit_ends_member),
    ];
    let (mut passed, mut failed) = (0, 0);
    for (name, test) in tests {
        if filter.as_ref().is_some_and(|f| !name.contains(f.as_str())) {
            continue;
        }
        match std::panic::catch_unwind(test) {
            Ok(()) => {
                println!("test {name} ... ok");
                passed += 1;
            }
            Err(_) => {
                println!("test {name} ... FAILED");
                failed += 1;
            }
        }
    }
    println!("{passed} passed, {failed} failed");
    std::process::exit(if failed == 0 { 0 } else { 1 });
}
