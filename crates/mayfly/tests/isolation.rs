//! Sessions share nothing: each gets its own host id range, its own
//! writable storage and its own namespaces, including when they run at once.

mod common;

use std::process::Stdio;

use common::*;

#[test]
fn planted_state_is_absent_next_time() {
    let scratch = Scratch::new("planted");
    let plant = "echo secret > /work/planted && echo secret > /tmp/planted && echo secret > /dev/shm/planted && echo planted";
    let first = scratch.run().args(["--", "/bin/sh", "-c", plant]).output().unwrap();
    assert_eq!(stdout(&first), "planted\n", "{}", stderr(&first));
    let look = "for f in /work/planted /tmp/planted /dev/shm/planted; do test -e $f && echo found $f; done; echo looked";
    let second = scratch.run().args(["--", "/bin/sh", "-c", look]).output().unwrap();
    assert_eq!(stdout(&second), "looked\n", "{}", stderr(&second));
}

#[test]
fn concurrent_sessions_are_separate() {
    let scratch = Scratch::new("concurrent");
    // Both sessions sleep for a second after reporting what they see, so
    // they are alive at the same time.
    let script = "echo $$ > /tmp/mine; cat /proc/self/uid_map; readlink /proc/self/ns/net; ls /tmp; sleep 1";
    let children: Vec<_> = (0..2)
        .map(|_| scratch.run().args(["--", "/bin/sh", "-c", script]).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap())
        .collect();
    let outputs: Vec<String> = children
        .into_iter()
        .map(|child| {
            let output = child.wait_with_output().unwrap();
            assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
            stdout(&output)
        })
        .collect();
    let lines: Vec<Vec<&str>> = outputs.iter().map(|o| o.lines().collect()).collect();
    let base = |session: usize| lines[session][0].split_whitespace().nth(1).unwrap().to_string();
    assert_ne!(base(0), base(1), "two live sessions must not share a host uid range");
    assert_ne!(lines[0][1], lines[1][1], "two sessions must not share a network namespace");
    for session in &lines {
        assert_eq!(session[2..], ["mine"], "each /tmp holds only its own file: {session:?}");
    }
}

#[test]
fn bounded_burst_leaves_nothing() {
    let scratch = Scratch::new("burst");
    for _round in 0..3 {
        let children: Vec<_> = (0..6)
            .map(|i| {
                scratch
                    .run()
                    .args(["--json", "--ttl", "30s", "--", "/bin/sh", "-c", &format!("echo {i}")])
                    .stdout(Stdio::piped())
                    .stderr(Stdio::piped())
                    .spawn()
                    .unwrap()
            })
            .collect();
        for (i, child) in children.into_iter().enumerate() {
            let output = child.wait_with_output().unwrap();
            assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
            assert_eq!(stdout(&output), format!("{i}\n"));
            assert_clean(&report(&output));
        }
    }
    let records = std::fs::read_dir(scratch.state_dir().join("sessions")).unwrap().count();
    assert_eq!(records, 0, "every ledger record is removed");
}

#[test]
fn teardown_reports_foreign_namespace_holder() {
    let scratch = Scratch::new("holder");
    let session = scratch
        .run()
        .args(["--json", "--ttl", "30s", "--", "/bin/sleep", "1"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();

    // Find init in the cgroups of the ledger record, then hold the session's
    // network namespace from the host with a process of the test's own.
    let init_pid = wait_for_running_session(&scratch.state_dir()).init_pid;
    let mut holder = std::process::Command::new("nsenter")
        .arg(format!("--net=/proc/{init_pid}/ns/net"))
        .args(["/bin/sleep", "30"])
        .spawn()
        .unwrap();

    let output = session.wait_with_output().unwrap();
    holder.kill().unwrap();
    holder.wait().unwrap();

    assert_eq!(output.status.code(), Some(125), "{}", stderr(&output));
    let report = report(&output);
    assert_eq!(report["teardown"]["clean"], false);
    let remaining = report["teardown"]["namespaces_remaining"].to_string();
    assert!(remaining.contains(&format!("pid {}", holder.id())), "{remaining}");
    assert!(stderr(&output).contains("teardown of session"), "{}", stderr(&output));
}
