//! `mayfly run` and `mayfly doctor` from a user's side: exit codes, streams,
//! profiles, limits, inputs and artifacts, and the errors for bad input.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::process::Command;

use common::*;

#[test]
fn exit_status_and_streams_pass_through() {
    let scratch = Scratch::new("streams");
    let output = scratch.run().args(["--", "/bin/sh", "-c", "echo out; echo err >&2; exit 7"]).output().unwrap();
    assert_eq!(output.status.code(), Some(7));
    assert_eq!(stdout(&output), "out\n");
    assert_eq!(stderr(&output), "err\n");
}

#[test]
fn common_open_file_limit_works() {
    // 1024 is a common soft limit for the open files of a shell or service.
    // Sessions with command pipes and inputs still start under it.
    let scratch = Scratch::new("nofile");
    let input = scratch.path.join("input.txt");
    write(&input, "from the host\n");
    let mut command = scratch.run();
    command.arg("--input").arg(&input).args(["--", "/bin/cat", "/work/input.txt"]);
    // SAFETY: setrlimit is async-signal-safe and touches only the child.
    unsafe {
        std::os::unix::process::CommandExt::pre_exec(&mut command, || {
            let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
            libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit);
            limit.rlim_cur = limit.rlim_max.min(1024);
            if libc::setrlimit(libc::RLIMIT_NOFILE, &limit) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        })
    };
    let output = command.output().unwrap();
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    assert_eq!(stdout(&output), "from the host\n");
}

#[test]
fn stdin_reaches_command() {
    let scratch = Scratch::new("stdin");
    let mut child = scratch.run().args(["--", "/bin/cat"]).stdin(std::process::Stdio::piped()).stdout(std::process::Stdio::piped()).spawn().unwrap();
    std::io::Write::write_all(&mut child.stdin.take().unwrap(), b"through the pipe\n").unwrap();
    let output = child.wait_with_output().unwrap();
    assert_eq!(stdout(&output), "through the pipe\n");
}

#[test]
fn null_or_closed_stdin_reads_eof() {
    let scratch = Scratch::new("stdin-null");
    // /dev/null, which `run` does not relay, and a regular file, which it does.
    let output = scratch.run().args(["--", "/bin/sh", "-c", "cat; echo end"]).output().unwrap();
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    assert_eq!(stdout(&output), "end\n");
    let file = scratch.path.join("stdin-file");
    std::fs::write(&file, "from a file\n").unwrap();
    let output = scratch.run().args(["--", "/bin/cat"]).stdin(std::fs::File::open(&file).unwrap()).output().unwrap();
    assert_eq!(stdout(&output), "from a file\n");

    // A closed standard input, which Rust's runtime replaces with /dev/null.
    let mut command = scratch.run();
    command.args(["--", "/bin/sh", "-c", "cat; echo end"]);
    // SAFETY: closes descriptor 0 in the child before its exec, and calls nothing else.
    unsafe {
        std::os::unix::process::CommandExt::pre_exec(&mut command, || {
            libc::close(0);
            Ok(())
        })
    };
    let output = command.output().unwrap();
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    assert_eq!(stdout(&output), "end\n");
}

#[test]
fn missing_command_exits_127() {
    let scratch = Scratch::new("notfound");
    let output = scratch.run().args(["--json", "--", "no-such-command"]).output().unwrap();
    assert_eq!(output.status.code(), Some(127));
    assert!(stderr(&output).contains("\"no-such-command\" was not found"), "{}", stderr(&output));
    assert_clean(&report(&output));
}

#[test]
fn ttl_above_profile_max_is_rejected() {
    let scratch = Scratch::new("ttlmax");
    let output = scratch.run().args(["--ttl", "2h", "--", "/bin/true"]).output().unwrap();
    assert_eq!(output.status.code(), Some(2));
    let message = stderr(&output);
    assert!(message.contains("the TTL 2h is above the maximum of 1h"), "{message}");
}

#[test]
fn invalid_ttl_names_the_value() {
    let scratch = Scratch::new("ttlbad");
    let output = scratch.run().args(["--ttl", "ten minutes", "--", "/bin/true"]).output().unwrap();
    assert_eq!(output.status.code(), Some(2));
    assert!(stderr(&output).contains("\"ten minutes\""), "{}", stderr(&output));
}

#[test]
fn limits_may_only_be_lowered() {
    let scratch = Scratch::new("raise");
    let output = scratch.run().args(["--memory", "4GiB", "--", "/bin/true"]).output().unwrap();
    assert_eq!(output.status.code(), Some(2));
    let message = stderr(&output);
    assert!(message.contains("--memory 4GiB is above the profile's limits.memory of 512MiB"), "{message}");

    let output = scratch.run().args(["--pids", "2", "--", "/bin/true"]).output().unwrap();
    assert_eq!(output.status.code(), Some(2));
    assert!(stderr(&output).contains("allowed is 4 to 65536"), "{}", stderr(&output));

    let output = scratch.run().args(["--memory", "lots", "--", "/bin/true"]).output().unwrap();
    assert_eq!(output.status.code(), Some(2));
    assert!(stderr(&output).contains("--memory: invalid size \"lots\""), "{}", stderr(&output));
}

#[test]
fn profile_errors_name_the_key() {
    let scratch = Scratch::new("profiles");
    let profiles = scratch.path.join("profiles");
    let base = default_profile_text();
    write(&profiles.join("typo.toml"), &base.replace("[limits]", "[limits]\nmemroy = \"1GiB\""));
    write(&profiles.join("huge.toml"), &base.replace("pids = 256", "pids = 9000000"));
    let run = |profile: &str| scratch.run().args(["--profile", profile, "--profiles-dir"]).arg(&profiles).args(["--", "/bin/true"]).output().unwrap();

    let typo = run("typo");
    assert_eq!(typo.status.code(), Some(2));
    assert!(stderr(&typo).contains("memroy"), "{}", stderr(&typo));
    assert!(stderr(&typo).contains("typo.toml"), "{}", stderr(&typo));

    let huge = run("huge");
    assert_eq!(huge.status.code(), Some(2));
    assert!(stderr(&huge).contains("limits.pids = 9000000 is out of range: allowed is 4 to 65536"), "{}", stderr(&huge));

    let missing = run("nope");
    assert_eq!(missing.status.code(), Some(2));
    assert!(stderr(&missing).contains("profile \"nope\" not found"), "{}", stderr(&missing));
}

#[test]
fn profile_ttl_max_applies() {
    let scratch = Scratch::new("shortprofile");
    let profiles = scratch.path.join("profiles");
    write(&profiles.join("short.toml"), &default_profile_text().replace("max = \"1h\"", "max = \"10s\"").replace("default = \"5m\"", "default = \"5s\""));
    let output = scratch.run().args(["--profile", "short", "--profiles-dir"]).arg(&profiles).args(["--ttl", "11s", "--", "/bin/true"]).output().unwrap();
    assert_eq!(output.status.code(), Some(2));
    assert!(stderr(&output).contains("maximum of 10s"), "{}", stderr(&output));
}

#[test]
fn env_flag_is_validated() {
    let scratch = Scratch::new("envflag");
    let output = scratch.run().args(["--env", "NOEQUALS", "--", "/bin/true"]).output().unwrap();
    assert_eq!(output.status.code(), Some(2));
    assert!(stderr(&output).contains("missing '='"), "{}", stderr(&output));
    let output = scratch.run().args(["--env", "1X=y", "--", "/bin/true"]).output().unwrap();
    assert_eq!(output.status.code(), Some(2));
    assert!(stderr(&output).contains("\"1X\" is not a valid variable name"), "{}", stderr(&output));
    let output = scratch.run().args(["--env", "GREETING=hello world", "--", "/bin/sh", "-c", "echo $GREETING"]).output().unwrap();
    assert_eq!(stdout(&output), "hello world\n");
}

#[test]
fn inputs_are_copied_into_work() {
    let scratch = Scratch::new("inputs");
    let data = scratch.path.join("data.csv");
    std::fs::write(&data, "a,b\n1,2\n").unwrap();
    let script = scratch.path.join("job.sh");
    std::fs::write(&script, "#!/bin/sh\necho from script\n").unwrap();
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o4755)).unwrap();
    let output = scratch
        .run()
        .arg("--input")
        .arg(&data)
        .arg("--input")
        .arg(format!("{}:.thing.json", data.display()))
        .arg("--input")
        .arg(format!("{}:sub/foo..bar", data.display()))
        .arg("--input")
        .arg(&script)
        .args(["--", "/bin/sh", "-c", "cat data.csv .thing.json sub/foo..bar; ./job.sh; stat -c '%a %U' job.sh data.csv"])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    assert_eq!(stdout(&output), "a,b\n1,2\na,b\n1,2\na,b\n1,2\nfrom script\n755 mayfly\n644 mayfly\n");
}

#[test]
fn bad_input_names_are_rejected() {
    let scratch = Scratch::new("badinputs");
    let data = scratch.path.join("data");
    std::fs::write(&data, "x").unwrap();
    for (name, expected) in [("../escape", "'..' component"), ("/etc/passwd", "absolute paths are not allowed"), ("a//b", "empty path component")] {
        let output = scratch.run().arg("--input").arg(format!("{}:{name}", data.display())).args(["--", "/bin/true"]).output().unwrap();
        assert_eq!(output.status.code(), Some(2), "{name}");
        let message = stderr(&output);
        assert!(message.contains(expected), "{name}: {message}");
        assert!(message.contains(name), "{name}: {message}");
    }
    let output = scratch.run().args(["--input", "/nonexistent/file", "--", "/bin/true"]).output().unwrap();
    assert_eq!(output.status.code(), Some(2));
    assert!(stderr(&output).contains("/nonexistent/file"), "{}", stderr(&output));
    let output = scratch.run().arg("--input").arg(&scratch.path).args(["--", "/bin/true"]).output().unwrap();
    assert_eq!(output.status.code(), Some(2));
    assert!(stderr(&output).contains("not a regular file"), "{}", stderr(&output));
}

#[test]
fn inputs_above_limit_are_rejected() {
    let scratch = Scratch::new("biginput");
    let profiles = scratch.path.join("profiles");
    write(&profiles.join("small.toml"), &default_profile_text().replace("inputs = \"64MiB\"", "inputs = \"1KiB\""));
    let data = scratch.path.join("data");
    std::fs::write(&data, vec![b'x'; 2048]).unwrap();
    let output = scratch.run().args(["--profile", "small", "--profiles-dir"]).arg(&profiles).arg("--input").arg(&data).args(["--", "/bin/true"]).output().unwrap();
    assert_eq!(output.status.code(), Some(2));
    assert!(stderr(&output).contains("above the profile's limit of 1KiB (limits.inputs)"), "{}", stderr(&output));
}

#[test]
fn artifacts_are_exported_safely() {
    let scratch = Scratch::new("artifacts");
    let target = scratch.path.join("out");
    let script = "cd artifacts && echo report > report.txt && mkdir -p sub && echo deep > sub/.thing.json && echo odd > foo..bar \
                  && ln -s /etc/passwd link && ln -s .. up && mkfifo pipe 2>/dev/null; echo done";
    let output = scratch.run().arg("--artifacts").arg(&target).args(["--json", "--", "/bin/sh", "-c", script]).output().unwrap();
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    assert_eq!(std::fs::read_to_string(target.join("report.txt")).unwrap(), "report\n");
    assert_eq!(std::fs::read_to_string(target.join("sub/.thing.json")).unwrap(), "deep\n");
    assert_eq!(std::fs::read_to_string(target.join("foo..bar")).unwrap(), "odd\n");
    assert!(std::fs::symlink_metadata(target.join("link")).is_err(), "symlinks are never exported");
    assert!(std::fs::symlink_metadata(target.join("up")).is_err());
    let report = report(&output);
    let files: Vec<&str> = report["artifacts"]["files"].as_array().unwrap().iter().map(|v| v.as_str().unwrap()).collect();
    assert_eq!(files.len(), 3, "{files:?}");
    let skipped = report["artifacts"]["skipped"].to_string();
    assert!(skipped.contains("link (symlink)"), "{skipped}");
    assert!(stderr(&output).contains("artifact not exported: link (symlink)"));
    assert_clean(&report);
}

#[test]
fn artifacts_never_overwrite() {
    let scratch = Scratch::new("overwrite");
    let target = scratch.path.join("out");
    std::fs::create_dir_all(&target).unwrap();
    std::fs::write(target.join("keep.txt"), "original").unwrap();
    let output = scratch.run().arg("--artifacts").arg(&target).args(["--", "/bin/sh", "-c", "echo new > artifacts/keep.txt"]).output().unwrap();
    assert_eq!(output.status.code(), Some(125));
    assert!(stderr(&output).contains("already exists"), "{}", stderr(&output));
    assert_eq!(std::fs::read_to_string(target.join("keep.txt")).unwrap(), "original");
}

#[test]
fn doctor_reports_host_and_profiles() {
    let output = Command::new(MAYFLY).args(["doctor", "--json"]).output().unwrap();
    let report: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    for key in ["namespaces", "cgroups", "seccomp", "landlock", "kvm", "chromium"] {
        assert!(report["host"][key]["available"].is_boolean(), "{key}: {report}");
    }
    let default = report["profiles"].as_array().unwrap().iter().find(|p| p["name"] == "default").unwrap();
    assert_eq!(default["ready"], true, "{default}");
    let text = Command::new(MAYFLY).arg("doctor").output().unwrap();
    assert!(stdout(&text).contains("ready   default (built-in)"), "{}", stdout(&text));
}

/// Runs `command`, whose program may be a file this test process has just
/// copied. A child that another test thread forks at that moment keeps the
/// copy's write descriptor until its own exec, and exec fails with ETXTBSY
/// meanwhile, so the start is retried.
fn output_of_copy(command: &mut Command) -> std::process::Output {
    for _ in 0..50 {
        match command.output() {
            Err(error) if error.kind() == std::io::ErrorKind::ExecutableFileBusy => std::thread::sleep(std::time::Duration::from_millis(20)),
            result => return result.unwrap(),
        }
    }
    panic!("{command:?} stayed busy for a second");
}

/// Runs `mayfly doctor --json` with the binary at `mayfly`, and a job
/// `cat /proc/1/comm` on `mayfly serve` of that binary. Returns the
/// doctor's init program entry and what the job printed. The job runs on a
/// server because a server starts each sandbox with the init program,
/// while `mayfly run` forks itself.
fn init_in_use(scratch: &Scratch, mayfly: &std::path::Path, label: &str) -> (serde_json::Value, String) {
    let doctor = output_of_copy(Command::new(mayfly).args(["doctor", "--json"]));
    let checks: serde_json::Value = serde_json::from_slice(&doctor.stdout).unwrap();
    // The doctor ran, so the copy is no longer busy.
    let server = server::start_binary(mayfly, &scratch.path.join(label), &[], &[]);
    let run = server.cli(server.token()).args(["run", "--", "/bin/cat", "/proc/1/comm"]).output().unwrap();
    assert_eq!(run.status.code(), Some(0), "{}", stderr(&run));
    server.stop();
    (checks["init_program"].clone(), stdout(&run))
}

#[test]
fn init_program_is_chosen_safely() {
    let scratch = Scratch::new("initprogram");
    // Built beside mayfly, mayfly-init runs as the init of a server's sandboxes.
    let (doctor, comm) = init_in_use(&scratch, std::path::Path::new(MAYFLY), "beside");
    assert_eq!(doctor["separate"], true, "{doctor}");
    assert_eq!(comm, "mayfly-init\n");

    // Without mayfly-init, mayfly-full runs as the server's init itself.
    let alone = scratch.path.join("alone");
    std::fs::create_dir(&alone).unwrap();
    std::fs::copy(MAYFLY, alone.join("mayfly")).unwrap();
    // `mayfly` execs `mayfly-full` for every command but a local run.
    std::fs::copy(std::path::Path::new(MAYFLY).with_file_name("mayfly-full"), alone.join("mayfly-full")).unwrap();
    let (doctor, comm) = init_in_use(&scratch, &alone.join("mayfly"), "alone");
    assert_eq!(doctor["separate"], false, "{doctor}");
    assert!(doctor["detail"].as_str().unwrap().contains("mayfly-init cannot be opened"), "{doctor}");
    assert_eq!(comm, "exe\n", "mayfly-full runs as init through /proc/self/exe");

    // A mayfly-init that others may change is not used.
    let init = std::path::Path::new(MAYFLY).with_file_name("mayfly-init");
    std::fs::copy(&init, alone.join("mayfly-init")).unwrap();
    std::fs::set_permissions(alone.join("mayfly-init"), std::fs::Permissions::from_mode(0o777)).unwrap();
    let (doctor, comm) = init_in_use(&scratch, &alone.join("mayfly"), "open");
    assert_eq!(doctor["separate"], false, "{doctor}");
    assert!(doctor["detail"].as_str().unwrap().contains("chmod go-w"), "{doctor}");
    assert_eq!(comm, "exe\n");

    // `mayfly run` forks itself as its sandbox's starter, under the same name.
    let run = output_of_copy(Command::new(alone.join("mayfly")).arg("run").arg("--state-dir").arg(scratch.state_dir()).args(["--json", "--", "/bin/cat", "/proc/1/comm"]));
    assert_eq!(run.status.code(), Some(0), "{}", stderr(&run));
    assert_clean(&report(&run));
    assert_eq!(stdout(&run), "mayfly-init\n");
}

#[test]
fn run_rejects_server_profiles() {
    let scratch = Scratch::new("serverprofiles");
    for (profile, expected) in [("shell", "is a shell profile; start it with `mayfly shell --profile shell`"), ("browser", "is a browser profile; create its sessions on a server")] {
        let output = scratch.run().args(["--profile", profile, "--", "/bin/true"]).output().unwrap();
        assert_eq!(output.status.code(), Some(2), "{profile}");
        assert!(stderr(&output).contains(expected), "{profile}: {}", stderr(&output));
    }
}

#[test]
fn report_file_is_written() {
    let scratch = Scratch::new("reportfile");
    let path = scratch.path.join("report.json");
    let output = scratch.run().arg("--report").arg(&path).args(["--", "/bin/true"]).output().unwrap();
    assert_eq!(output.status.code(), Some(0));
    let report: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    assert_eq!(report["end"]["reason"], "exited");
    assert_eq!(report["landlock"], "fully_enforced");
    assert_clean(&report);
    for phase in ["launch_us", "init_started_us", "init_setup_us", "init_reported_us", "ended_us", "teardown_us", "verify_us"] {
        assert!(report["timings"][phase].as_u64().unwrap() > 0, "{phase}: {}", report["timings"]);
    }
    assert!(report["timings"]["ended_us"].as_u64() >= report["timings"]["launch_us"].as_u64());
}

#[test]
fn setup_failure_names_the_step() {
    let scratch = Scratch::new("setupfail");
    // Init opens profile mount sources as an unprivileged uid, which cannot
    // pass a mode 0700 directory, so this step fails inside the sandbox.
    let hidden = scratch.path.join("hidden");
    std::fs::create_dir_all(hidden.join("tools")).unwrap();
    std::fs::set_permissions(&hidden, std::fs::Permissions::from_mode(0o700)).unwrap();
    std::fs::set_permissions(&scratch.path, std::fs::Permissions::from_mode(0o755)).unwrap();
    let profiles = scratch.path.join("profiles");
    let profile = format!("{}\n[[sandbox.mounts]]\nsource = \"{}\"\ntarget = \"/opt/tools\"\n", default_profile_text(), hidden.join("tools").display());
    write(&profiles.join("hidden.toml"), &profile);
    let output = scratch
        .run()
        .args(["--profile", "hidden", "--profiles-dir"])
        .arg(&profiles)
        .args(["--json", "--", "/bin/true"])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(125), "{}", stderr(&output));
    let report = report(&output);
    assert_eq!(report["end"]["reason"], "setup_failed");
    let step = report["end"]["step"].as_str().unwrap();
    assert!(step.starts_with("open profile mount source"), "{step}");
    let error = report["end"]["error"].as_str().unwrap();
    assert!(error.contains("traversable"), "{error}");
    assert!(stderr(&output).contains("sandbox setup failed at step"), "{}", stderr(&output));
    assert_clean(&report);
}

#[test]
fn large_artifact_error_does_not_hang() {
    let scratch = Scratch::new("artifacthang");
    let target = scratch.path.join("out");
    std::fs::create_dir_all(&target).unwrap();
    std::fs::write(target.join("a"), "original").unwrap();
    // The first record fails, and a 4 MiB file follows: far more than a pipe holds.
    let script = "echo new > artifacts/a; head -c 4194304 /dev/zero > artifacts/b";
    let started = std::time::Instant::now();
    let output = scratch.run().arg("--artifacts").arg(&target).args(["--ttl", "1m", "--", "/bin/sh", "-c", script]).output().unwrap();
    assert_eq!(output.status.code(), Some(125), "{}", stderr(&output));
    assert!(started.elapsed() < std::time::Duration::from_secs(30), "the session waited for its deadline");
}

#[test]
fn input_into_artifacts_is_rejected() {
    let scratch = Scratch::new("reservedinput");
    let data = scratch.path.join("data");
    std::fs::write(&data, "x").unwrap();
    let output = scratch.run().arg("--input").arg(format!("{}:artifacts/a.txt", data.display())).args(["--", "/bin/true"]).output().unwrap();
    assert_eq!(output.status.code(), Some(2));
    assert!(stderr(&output).contains("inside /work/artifacts"), "{}", stderr(&output));
}

#[test]
fn rejected_run_prints_json_error() {
    let scratch = Scratch::new("jsonerror");
    let output = scratch.run().args(["--json", "--ttl", "2h", "--", "/bin/true"]).output().unwrap();
    assert_eq!(output.status.code(), Some(2));
    let error = report(&output);
    assert_eq!(error["exit_code"], 2);
    assert!(error["error"].as_str().unwrap().contains("maximum of 1h"), "{error}");
}

#[test]
fn missing_profiles_dir_is_an_error() {
    let scratch = Scratch::new("noprofiledir");
    let output = scratch.run().args(["--profiles-dir", "/nonexistent/profiles", "--", "/bin/true"]).output().unwrap();
    assert_eq!(output.status.code(), Some(2));
    assert!(stderr(&output).contains("/nonexistent/profiles does not exist"), "{}", stderr(&output));
}

#[test]
fn unwritable_report_fails_before_start() {
    let scratch = Scratch::new("badreport");
    let output = scratch.run().args(["--report", "/nonexistent/dir/report.json", "--", "/bin/sh", "-c", "echo ran"]).output().unwrap();
    assert_eq!(output.status.code(), Some(2));
    assert_eq!(stdout(&output), "", "the command must not run");
    assert!(stderr(&output).contains("--report /nonexistent/dir/report.json"), "{}", stderr(&output));
}

#[test]
fn unknown_timezone_is_rejected() {
    let scratch = Scratch::new("timezone");
    let profiles = scratch.path.join("profiles");
    write(&profiles.join("mars.toml"), &default_profile_text().replace("timezone = \"UTC\"", "timezone = \"Mars/Olympus\""));
    let output = scratch.run().args(["--profile", "mars", "--profiles-dir"]).arg(&profiles).args(["--", "/bin/true"]).output().unwrap();
    assert_eq!(output.status.code(), Some(2));
    assert!(stderr(&output).contains("\"Mars/Olympus\" is not in /usr/share/zoneinfo"), "{}", stderr(&output));
}

#[test]
fn failed_export_sets_report_exit_code() {
    let scratch = Scratch::new("exportcode");
    let target = scratch.path.join("out");
    std::fs::create_dir_all(&target).unwrap();
    std::fs::write(target.join("a"), "keep").unwrap();
    let output = scratch.run().arg("--artifacts").arg(&target).args(["--json", "--", "/bin/sh", "-c", "echo x > artifacts/a"]).output().unwrap();
    assert_eq!(output.status.code(), Some(125));
    let report = report(&output);
    assert_eq!(report["exit_code"], 125);
    assert_eq!(report["end"]["reason"], "exited");
    assert!(report["artifacts_error"].as_str().unwrap().contains("already exists"));
}

#[test]
fn inputs_larger_than_work_are_rejected() {
    let scratch = Scratch::new("inputwork");
    let data = scratch.path.join("data");
    std::fs::write(&data, vec![b'x'; 3 << 20]).unwrap();
    let output = scratch.run().args(["--work", "2MiB"]).arg("--input").arg(&data).args(["--", "/bin/true"]).output().unwrap();
    assert_eq!(output.status.code(), Some(2));
    assert!(stderr(&output).contains("more than --work 2MiB can hold"), "{}", stderr(&output));
}

#[test]
fn json_report_starts_its_own_line() {
    let scratch = Scratch::new("midline");
    let output = scratch.run().args(["--json", "--", "/bin/sh", "-c", "printf abc >&2"]).output().unwrap();
    assert_eq!(output.status.code(), Some(0));
    let text = stderr(&output);
    assert!(text.starts_with("abc\n{"), "{text}");
    assert_eq!(report(&output)["end"]["reason"], "exited");
}

#[test]
fn doctor_checks_profile_timezone() {
    let scratch = Scratch::new("doctortz");
    let profiles = scratch.path.join("profiles");
    write(&profiles.join("mars.toml"), &default_profile_text().replace("timezone = \"UTC\"", "timezone = \"Mars/Olympus\""));
    let output = Command::new(MAYFLY).args(["doctor", "--profiles-dir"]).arg(&profiles).output().unwrap();
    assert_eq!(output.status.code(), Some(122));
    assert!(stdout(&output).contains("INVALID mars"), "{}", stdout(&output));
}

#[test]
fn flag_values_are_checked_with_clear_errors() {
    let scratch = Scratch::new("flagvalues");
    let cases = [
        (vec!["--cpus", "abc"], "--cpus: invalid number \"abc\""),
        (vec!["--ttl", "-5s"], "--ttl: invalid duration \"-5s\""),
        (vec!["--memory", "0"], "--memory 0B is out of range: allowed is 16MiB to 1TiB"),
    ];
    for (flags, expected) in cases {
        let output = scratch.run().args(&flags).args(["--", "/bin/true"]).output().unwrap();
        assert_eq!(output.status.code(), Some(2), "{flags:?}");
        assert!(stderr(&output).contains(expected), "{flags:?}: {}", stderr(&output));
    }
}

#[test]
fn missing_full_program_is_named() {
    let scratch = Scratch::new("nofull");
    let front = scratch.path.join("front");
    std::fs::create_dir(&front).unwrap();
    std::fs::copy(MAYFLY, front.join("mayfly")).unwrap();

    // Every command but a local run needs `mayfly-full` beside `mayfly`.
    let doctor = output_of_copy(Command::new(front.join("mayfly")).arg("doctor"));
    assert_eq!(doctor.status.code(), Some(125), "{}", stderr(&doctor));
    assert!(stderr(&doctor).contains("mayfly-full is missing"), "{}", stderr(&doctor));
    assert!(stderr(&doctor).contains("install mayfly-full beside mayfly"), "{}", stderr(&doctor));

    // A `mayfly-full` that others may change is not run.
    let full = front.join("mayfly-full");
    std::fs::copy(std::path::Path::new(MAYFLY).with_file_name("mayfly-full"), &full).unwrap();
    std::fs::set_permissions(&full, std::fs::Permissions::from_mode(0o777)).unwrap();
    let doctor = output_of_copy(Command::new(front.join("mayfly")).arg("doctor"));
    assert_eq!(doctor.status.code(), Some(125), "{}", stderr(&doctor));
    assert!(stderr(&doctor).contains("run chmod go-w on it"), "{}", stderr(&doctor));

    // Nor does one that is not executable.
    std::fs::set_permissions(&full, std::fs::Permissions::from_mode(0o644)).unwrap();
    let doctor = output_of_copy(Command::new(front.join("mayfly")).arg("doctor"));
    assert_eq!(doctor.status.code(), Some(125), "{}", stderr(&doctor));
    assert!(stderr(&doctor).contains("is not executable (mode 644); run chmod 0755 on it"), "{}", stderr(&doctor));
    std::fs::set_permissions(&full, std::fs::Permissions::from_mode(0o755)).unwrap();
    let doctor = output_of_copy(Command::new(front.join("mayfly")).arg("doctor"));
    assert!(stdout(&doctor).contains("init program"), "{}", stdout(&doctor));

    // A local run needs `mayfly` alone.
    let run = output_of_copy(Command::new(front.join("mayfly")).arg("run").arg("--state-dir").arg(scratch.state_dir()).args(["--", "/bin/echo", "alone"]));
    assert_eq!(run.status.code(), Some(0), "{}", stderr(&run));
    assert_eq!(stdout(&run), "alone\n");
}
