//! Network egress through the proxy, with `mayfly run` and a job inside a
//! real sandbox. The only servers are the test's own, on the host's
//! loopback, and the rules name them explicitly. Refusal is shown with a
//! loopback port that no rule names and a loopback address a rule forbids.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::path::PathBuf;
use std::process::Command;

use common::*;
use common::server;

/// Starts a server on the host's loopback that replies to every request
/// with a fixed body, and returns its port.
fn origin() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            std::thread::spawn(move || {
                let mut reader = BufReader::new(stream.try_clone().unwrap());
                let mut line = String::new();
                while reader.read_line(&mut line).is_ok_and(|n| n > 2) {
                    line.clear();
                }
                let mut stream = stream;
                let _ = stream.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 17\r\nConnection: close\r\n\r\nhello from origin");
            });
        }
    });
    port
}

/// Writes a job profile named `net` with the given `[network]` section.
fn profiles(scratch: &Scratch, network: &str) -> PathBuf {
    let dir = scratch.path.join("profiles");
    write(&dir.join("net.toml"), &format!("{}\n[network]\n{network}\n", default_profile_text()));
    dir
}

/// Runs curl in a session of the `net` profile. `--noproxy ''` makes curl
/// use the proxy for 127.0.0.1 too, which the profile's NO_PROXY would
/// otherwise keep on the session's own loopback.
fn curl(scratch: &Scratch, profiles: &PathBuf, args: &[&str]) -> std::process::Output {
    scratch
        .run()
        .args(["--json", "--profile", "net", "--profiles-dir"])
        .arg(profiles)
        .args(["--", "/usr/bin/curl", "-sS", "--max-time", "10", "--noproxy", ""])
        .args(args)
        .output()
        .unwrap()
}

fn egress_records(scratch: &Scratch) -> Vec<serde_json::Value> {
    let output = Command::new(MAYFLY).args(["audit", "export", "--state-dir"]).arg(scratch.state_dir()).output().unwrap();
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    parse_lines(&output.stdout).into_iter().filter(|r| r["kind"] == "egress.connection").collect()
}

#[test]
fn allowed_target_is_reached_through_the_proxy() {
    let scratch = Scratch::new("egress-allowed");
    let port = origin();
    let dir = profiles(&scratch, &format!("egress = \"proxy\"\nallow = [\"127.0.0.1:{port}\"]"));
    let output = curl(&scratch, &dir, &[&format!("http://127.0.0.1:{port}/page")]);
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    assert_eq!(stdout(&output), "hello from origin");
    assert_clean(&report(&output));

    let records = egress_records(&scratch);
    assert_eq!(records.len(), 1, "{records:?}");
    let fields = &records[0]["fields"];
    assert_eq!(fields["allowed"], true);
    assert_eq!(fields["host"], "127.0.0.1");
    assert_eq!(fields["port"], port);
    assert!(fields["bytes_in"].as_u64().unwrap() > 17, "{fields}");
    assert!(fields["decision"].as_str().unwrap().contains("allowed by rule"), "{fields}");
}

#[test]
fn unnamed_and_forbidden_targets_are_refused_and_audited() {
    let scratch = Scratch::new("egress-refused");
    let port = origin();
    // 127.0.0.2 stands for an address the operator forbids: the allow rule
    // covers it, and the deny rule wins.
    let dir = profiles(&scratch, &format!("egress = \"proxy\"\nallow = [\"127.0.0.0/8:{port}\"]\ndeny = [\"127.0.0.2\"]"));
    let other_port = port.wrapping_add(1).max(1024);
    let cases = [
        (format!("http://127.0.0.1:{other_port}/"), "loopback range"),
        (format!("http://127.0.0.2:{port}/"), "denied by rule"),
    ];
    for (target, reason) in &cases {
        let output = curl(&scratch, &dir, &["--write-out", "%{http_code}", target]);
        let text = stdout(&output);
        assert!(text.ends_with("403"), "{target}: {text} {}", stderr(&output));
        assert!(text.contains(reason), "{target}: {text}");
        assert_clean(&report(&output));
    }
    // A tunnel is refused the same way.
    let output = curl(&scratch, &dir, &["--proxytunnel", &format!("http://127.0.0.1:{other_port}/")]);
    assert_ne!(output.status.code(), Some(0));
    assert!(stderr(&output).contains("403"), "{}", stderr(&output));

    let records = egress_records(&scratch);
    assert_eq!(records.len(), 3, "{records:?}");
    assert!(records.iter().all(|r| r["fields"]["allowed"] == false && r["fields"]["bytes_in"] == 0), "{records:?}");
}

#[test]
fn no_egress_means_no_proxy() {
    let scratch = Scratch::new("egress-none");
    let port = origin();
    let dir = profiles(&scratch, "egress = \"none\"");
    let through_proxy = curl(&scratch, &dir, &["--proxy", "http://127.0.0.1:3128", &format!("http://127.0.0.1:{port}/")]);
    assert_ne!(through_proxy.status.code(), Some(0), "no proxy listens in a session without egress");
    let direct = curl(&scratch, &dir, &[&format!("http://127.0.0.1:{port}/")]);
    assert_ne!(direct.status.code(), Some(0), "the host's loopback is not the session's");
    assert!(egress_records(&scratch).is_empty());
    let env = scratch.run().args(["--profile", "net", "--profiles-dir"]).arg(&dir).args(["--", "/usr/bin/env"]).output().unwrap();
    assert!(!stdout(&env).contains("_proxy="), "{}", stdout(&env));
}

#[test]
fn rules_need_egress_proxy() {
    let scratch = Scratch::new("egress-invalid");
    let dir = profiles(&scratch, "allow = [\"example.com:443\"]");
    let output = scratch.run().args(["--profile", "net", "--profiles-dir"]).arg(&dir).args(["--", "/bin/true"]).output().unwrap();
    assert_eq!(output.status.code(), Some(2));
    assert!(stderr(&output).contains("network.allow"), "{}", stderr(&output));
}

#[test]
fn server_jobs_use_the_proxy_and_audit_it() {
    let scratch = Scratch::new("egress-server");
    let port = origin();
    let dir = profiles(&scratch, &format!("egress = \"proxy\"\nallow = [\"127.0.0.1:{port}\"]"));
    let dir_arg = dir.to_str().unwrap().to_string();
    let server = server::start(&scratch.state_dir(), &["--profiles-dir", &dir_arg], &[]);
    let output = server
        .cli(server.token())
        .args(["run", "--profile", "net", "--", "/usr/bin/curl", "-sS", "--max-time", "10", "--noproxy", ""])
        .arg(format!("http://127.0.0.1:{port}/"))
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(0), "{}", server::output_text(&output));
    assert_eq!(stdout(&output), "hello from origin");
    let status = server.stop();
    assert!(status.success());

    let records = egress_records(&scratch);
    assert_eq!(records.len(), 1, "{records:?}");
    assert_eq!(records[0]["actor"], "user:admin");
    assert_eq!(records[0]["fields"]["allowed"], true);
}
