//! `mayfly run`: one job session from the command line, with no server.

use std::io::Write;
use std::sync::Arc;

use mayfly_audit::{AuditLog, Entry, Flushing};
use mayfly_core::limits::cpus_to_millis;
use mayfly_core::egress::NetworkSettings;
use mayfly_core::profile::valid_env_name;
use mayfly_core::{ByteSize, ExitCode, Landlock, LimitOverrides, Profile, Ttl};
use mayfly_sandbox::cgroup::{CgroupLimits, Layout};
use mayfly_sandbox::session::{self, BeforeStart, SessionConfig, SessionError, SessionOutcome, StartGuard};
use mayfly_sandbox::spec::{BindMount, LandlockMode};
use mayfly_sandbox::{host, ledger, transfer};

use crate::cli::RunArgs;
use mayfly_control::profiles;
use mayfly_control::sessions::egress::{self, LocalEgressLog};

use crate::{audit, state};

/// A failure before the session started, with the exit code it maps to.
struct Refusal {
    code: i32,
    message: String,
}

fn usage(message: impl Into<String>) -> Refusal {
    Refusal { code: ExitCode::USAGE, message: message.into() }
}

fn parse_size(flag: &str, value: &Option<String>) -> Result<Option<ByteSize>, Refusal> {
    value
        .as_deref()
        .map(|text| ByteSize::parse(text).map_err(|e| usage(format!("{flag}: {e}"))))
        .transpose()
}

fn parse_cpus(value: &Option<String>) -> Result<Option<u32>, Refusal> {
    let Some(text) = value else { return Ok(None) };
    match text.trim().parse::<f64>() {
        Ok(cores) if cores.is_finite() => Ok(Some(cpus_to_millis(cores))),
        _ => Err(usage(format!("--cpus: invalid number {text:?}: expected cores such as 1, 2 or 0.5"))),
    }
}

/// Builds the command's environment: the egress proxy's variables when the
/// profile allows egress, the profile's variables, then `--env`.
fn environment(profile: &Profile, flags: &[String]) -> Result<Vec<(String, String)>, Refusal> {
    let mut env: std::collections::BTreeMap<String, String> = profile.network.proxy_environment().into_iter().collect();
    env.extend(profile.environment.clone());
    for flag in flags {
        let Some((key, value)) = flag.split_once('=') else {
            return Err(usage(format!("--env {flag:?} is missing '=': write KEY=VALUE")));
        };
        if !valid_env_name(key) {
            return Err(usage(format!("--env: {key:?} is not a valid variable name; use letters, digits and underscores, not starting with a digit")));
        }
        if value.contains('\0') {
            return Err(usage(format!("--env {key}: the value contains a NUL byte")));
        }
        env.insert(key.to_string(), value.to_string());
    }
    Ok(env.into_iter().collect())
}

fn landlock_mode(profile: &Profile) -> LandlockMode {
    match profile.landlock {
        Landlock::Required => LandlockMode::Required,
        Landlock::IfAvailable => LandlockMode::IfAvailable,
    }
}

/// Validates everything and builds the session configuration, before any
/// host resource exists.
fn prepare(args: &RunArgs) -> Result<(SessionConfig, Layout, NetworkSettings), Refusal> {
    let profile = profiles::load(&args.profile, args.profiles.profiles_dir.as_deref()).map_err(|e| usage(e.to_string()))?;
    match profile.kind {
        mayfly_core::Kind::Job => {}
        mayfly_core::Kind::Shell => {
            return Err(usage(format!("profile {:?} is a shell profile; start it with `mayfly shell --profile {}` against a server", profile.name, profile.name)));
        }
        mayfly_core::Kind::Browser => {
            return Err(usage(format!("profile {:?} is a browser profile; create its sessions on a server, with POST /v1/sessions or the web console", profile.name)));
        }
    }
    let ttl = args.ttl.as_deref().map(Ttl::parse).transpose().map_err(|e| usage(format!("--ttl: {e}")))?;
    let ttl = profile.resolve_ttl(ttl).map_err(|e| usage(e.to_string()))?;
    let overrides = LimitOverrides {
        memory: parse_size("--memory", &args.memory)?,
        cpu_millis: parse_cpus(&args.cpus)?,
        pids: args.pids,
        tmp: parse_size("--tmp", &args.tmp)?,
        shm: parse_size("--shm", &args.shm)?,
        work: parse_size("--work", &args.work)?,
        open_files: args.open_files,
    };
    let limits = profile.limits.lowered_by(&overrides).map_err(|e| usage(e.to_string()))?;
    let env = environment(&profile, &args.env)?;
    profiles::check_on_host(&profile).map_err(usage)?;
    if let Some(path) = &args.report {
        std::fs::write(path, b"").map_err(|e| usage(format!("--report {}: {e}", path.display())))?;
    }
    let inputs = transfer::open_inputs(&args.inputs, limits.inputs.as_bytes()).map_err(|e| usage(e.to_string()))?;
    let input_bytes: u64 = inputs.iter().map(|i| i.size).sum();
    for (flag, limit) in [("--work", limits.work), ("--memory", limits.memory)] {
        if input_bytes > limit.as_bytes() {
            return Err(usage(format!(
                "the inputs total {}, more than {flag} {limit} can hold; copy less or raise {flag}",
                ByteSize::bytes(input_bytes)
            )));
        }
    }
    if let Some(dir) = &args.artifacts {
        if dir.exists() && !dir.is_dir() {
            return Err(usage(format!("--artifacts {}: not a directory", dir.display())));
        }
    }

    // Fail closed: refuse when the host lacks a protection the profile needs.
    let report = host::inspect_for_jobs();
    let landlock = landlock_mode(&profile);
    let missing = host::missing_for_job(&report, landlock);
    if !missing.is_empty() {
        let list: Vec<String> = missing.iter().map(|m| format!("{}: {}", m.protection, m.detail)).collect();
        return Err(Refusal {
            code: ExitCode::PROTECTION_MISSING,
            message: format!("profile {:?} needs protections this host lacks:\n  {}\nrun `mayfly doctor` for details", profile.name, list.join("\n  ")),
        });
    }
    let layout = report.cgroup_layout.expect("a host without missing protections has a cgroup layout");

    let config = SessionConfig {
        session_id: state::new_session_id(),
        state_dir: args.state.state_dir.clone(),
        argv: args.command.clone(),
        env,
        hostname: profile.hostname.clone(),
        timezone: profile.timezone.clone(),
        ttl: ttl.as_duration(),
        limits: CgroupLimits { memory_bytes: limits.memory.as_bytes(), cpu_millis: limits.cpu_millis, pids: limits.pids },
        tmp_bytes: limits.tmp.as_bytes(),
        shm_bytes: limits.shm.as_bytes(),
        work_bytes: limits.work.as_bytes(),
        open_files: limits.open_files,
        inputs,
        artifacts: args.artifacts.clone().map(|dir| (dir, limits.artifacts.as_bytes())),
        mounts: profile.mounts.iter().map(|m| BindMount { source: m.source.clone(), target: m.target.clone() }).collect(),
        landlock,
        forward_signals: true,
        control: None,
        terminal: None,
        command_pipes: false,
        before_start: None,
    };
    Ok((config, layout, profile.network))
}

fn print_outcome(outcome: &SessionOutcome) {
    let mut stderr = std::io::stderr().lock();
    if let Some(reason) = outcome.end.describe() {
        let _ = writeln!(stderr, "mayfly: session {} ended: {reason} (exit code {})", outcome.session_id, outcome.end.exit_code());
    }
    if let Some(error) = &outcome.artifacts_error {
        let _ = writeln!(stderr, "mayfly: artifact export failed: {error}");
    }
    if let Some(summary) = &outcome.artifacts {
        if summary.truncated {
            let _ = writeln!(stderr, "mayfly: some artifacts were not exported because they would pass the profile's limits.artifacts");
        }
        for skipped in &summary.skipped {
            // Names come from the session, so control characters are escaped.
            let _ = writeln!(stderr, "mayfly: artifact not exported: {}", skipped.escape_debug());
        }
    }
    if !outcome.teardown.clean {
        let _ = writeln!(stderr, "mayfly: teardown of session {} is incomplete: {:?}", outcome.session_id, outcome.teardown);
    }
}

/// Runs `mayfly run`, on a server when the arguments name one.
pub fn main(args: RunArgs) -> i32 {
    if args.remote.server.is_some() {
        return crate::remote::run(&args);
    }
    local(args)
}

/// Runs `mayfly run` on this host.
pub fn local(args: RunArgs) -> i32 {
    // Before any thread starts, so that signals wait until the session's
    // init can receive them.
    if let Err(error) = session::block_forwarded_signals() {
        eprintln!("mayfly: failed to block signals for forwarding: {error}");
        return ExitCode::SETUP_FAILED;
    }
    if let Err(message) = state::prepare(&args.state.state_dir) {
        eprintln!("mayfly: {message}");
        return ExitCode::USAGE;
    }

    let (config, layout, network) = match prepare(&args) {
        Ok(prepared) => prepared,
        Err(refusal) => {
            eprintln!("mayfly: {}", refusal.message);
            if args.state.json {
                eprintln!("{}", serde_json::json!({ "error": refusal.message, "exit_code": refusal.code }));
            }
            return refusal.code;
        }
    };
    let session_id = config.session_id.clone();
    let ttl = Ttl::from_duration(config.ttl).to_string();
    let started_entry = audit::started(&config, &args.profile, &ttl);
    let (prepare_config, mut claim_config) = config.split();

    // Fail closed: a session that cannot be audited does not start. The
    // audit log is opened and the start record written while the kernel
    // creates the sandbox's namespaces, after the ledger record that a reap
    // would find. A thread flushes the record while init builds its root,
    // and the command starts only after the flush.
    let mut opened: Option<(Arc<AuditLog>, Flushing)> = None;
    let prepared = session::prepare_with(prepare_config, &layout, || {
        opened = Some(open_audit_and_start(&args.state.state_dir, &layout, started_entry.clone())?);
        Ok(())
    });
    let failed = |audit_log: &AuditLog, error: &dyn std::fmt::Display, mut entries: Vec<Entry>| {
        eprintln!("mayfly: session {session_id} could not start: {error}");
        entries.push(Entry::new("session.failed", &audit::actor()).session(&session_id).field("error", error.to_string()));
        if let Err(audit_error) = audit_log.append(entries, true) {
            eprintln!("mayfly: failed to record the failure in the audit log: {audit_error}");
        }
        ExitCode::SETUP_FAILED
    };
    let (prepared, audit_log, started) = match (prepared, opened) {
        (Ok(prepared), Some((audit_log, started))) => (prepared, audit_log, started),
        (Ok(_), None) => unreachable!("prepare_with runs the hook before it succeeds"),
        // The start record may not be on disk yet. The failure's append
        // flushes both.
        (Err(error), Some((audit_log, _))) => return failed(&audit_log, &error, Vec::new()),
        // The hook failed, and its message gives the reason.
        (Err(SessionError::BeforeStart(message)), None) => {
            eprintln!("mayfly: {message}");
            return ExitCode::SETUP_FAILED;
        }
        // Preparing failed before the hook ran.
        (Err(error), None) => match open_audit_and_start(&args.state.state_dir, &layout, started_entry) {
            Ok((audit_log, _)) => return failed(&audit_log, &error, Vec::new()),
            Err(message) => {
                eprintln!("mayfly: session {session_id} could not start: {error}");
                eprintln!("mayfly: {message}");
                return ExitCode::SETUP_FAILED;
            }
        },
    };

    let egress_log = LocalEgressLog { log: Arc::clone(&audit_log), actor: audit::actor(), session_id: session_id.clone() };
    let egress_hook = egress::before_start(&network, Arc::new(egress_log));
    claim_config.before_start = Some(BeforeStart(Box::new(move |context| {
        started.wait().map_err(|e| format!("the audit log cannot be written, so the command does not start: {e}"))?;
        match egress_hook {
            Some(hook) => (hook.0)(context),
            None => Ok(Box::new(()) as StartGuard),
        }
    })));
    tracing::info!(session_id = %session_id, profile = %args.profile, "starting session");
    let stdin = (!stdin_is_empty()).then(|| Box::new(std::io::stdin()) as Box<dyn std::io::Read + Send>);
    let outcome = match prepared.claim(claim_config, stdin, Box::new(std::io::stdout()), Box::new(std::io::stderr())) {
        Ok(outcome) => outcome,
        Err(error) => return failed(&audit_log, &error, Vec::new()),
    };

    print_outcome(&outcome);
    let audit_error = audit_log.append(vec![audit::ended(&outcome)], true).err();
    if let Some(error) = &audit_error {
        eprintln!("mayfly: failed to record the end of session {session_id} in the audit log: {error}");
    }
    let json = serde_json::to_string(&outcome).expect("the outcome serializes");
    if let Some(path) = &args.report {
        if let Err(error) = std::fs::write(path, format!("{json}\n")) {
            eprintln!("mayfly: failed to write the report to {}: {error}", path.display());
        }
    }
    if args.state.json {
        // The report must be a line of its own even when the command's last
        // output on standard error did not end with a newline.
        let separator = if outcome.stderr_ended_mid_line { "\n" } else { "" };
        eprintln!("{separator}{json}");
    }
    if audit_error.is_some() {
        return ExitCode::SETUP_FAILED;
    }

    outcome.exit_code
}

/// Opens the audit log, reaps sessions that crashed supervisors left and
/// records them, then writes `started` and starts its flush to disk on a
/// thread. Returns the message for `mayfly run` when any step fails.
fn open_audit_and_start(state_dir: &std::path::Path, layout: &Layout, started: Entry) -> Result<(Arc<AuditLog>, Flushing), String> {
    let audit_log = AuditLog::open(state_dir).map_err(|e| format!("the audit log cannot be opened, so no session starts: {e}"))?;
    let reaped = ledger::reap_records(state_dir, layout);
    for entry in &reaped {
        tracing::info!(session_id = %entry.session_id, killed = entry.killed_processes, error = ?entry.error, "reaped a session left by a crashed supervisor");
    }
    audit::record_reaped(&audit_log, &reaped).map_err(|e| format!("the audit log cannot be written, so no session starts: {e}"))?;
    let started = audit_log.append_unsynced(vec![started]).map_err(|e| format!("the audit log cannot be written, so no session starts: {e}"))?;
    Ok((Arc::new(audit_log), started.flush_in_background()))
}

/// Returns whether standard input is closed or `/dev/null`, from which the
/// command would read end-of-file at once.
pub(crate) fn stdin_is_empty() -> bool {
    use std::os::unix::fs::MetadataExt;
    let Ok(stdin) = nix::sys::stat::fstat(std::io::stdin()) else { return true };
    let Ok(null) = std::fs::metadata("/dev/null") else { return false };
    stdin.st_mode & libc::S_IFMT == libc::S_IFCHR && stdin.st_rdev == null.rdev()
}
