//! The audit log that `mayfly run` writes, and `mayfly audit verify` and
//! `export` reading it.

mod common;

use std::process::Command;

use common::*;

fn audit(scratch: &Scratch, verb: &str) -> std::process::Output {
    Command::new(MAYFLY).args(["audit", verb, "--json", "--state-dir"]).arg(scratch.state_dir()).output().unwrap()
}

fn exported(scratch: &Scratch) -> Vec<serde_json::Value> {
    let output = Command::new(MAYFLY).args(["audit", "export", "--state-dir"]).arg(scratch.state_dir()).output().unwrap();
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    parse_lines(&output.stdout)
}

#[test]
fn run_is_audited_and_verifies() {
    let scratch = Scratch::new("audited");
    let output = scratch.run().args(["--json", "--env", "API_TOKEN=hunter2", "--", "/bin/sh", "-c", "exit 3"]).output().unwrap();
    assert_eq!(output.status.code(), Some(3));
    let session_id = report(&output)["session_id"].as_str().unwrap().to_string();

    let records = exported(&scratch);
    let kinds: Vec<&str> = records.iter().map(|r| r["kind"].as_str().unwrap()).collect();
    assert_eq!(kinds, ["session.started", "session.ended", "checkpoint"]);
    assert_eq!(records[0]["session_id"], session_id.as_str());
    assert_eq!(records[0]["fields"]["program"], "/bin/sh");
    assert_eq!(records[1]["fields"]["exit_code"], 3);
    assert_eq!(records[1]["fields"]["teardown"]["clean"], true);
    let text = serde_json::to_string(&records).unwrap();
    assert!(text.contains("API_TOKEN"), "variable names are recorded");
    assert!(!text.contains("hunter2"), "values never are");

    let verify = audit(&scratch, "verify");
    assert_eq!(verify.status.code(), Some(0), "{}", stdout(&verify));
    let result: serde_json::Value = serde_json::from_slice(&verify.stdout).unwrap();
    assert_eq!(result["intact"], true);
    assert_eq!(result["verified"]["records"], 3);
}

#[test]
fn tampering_is_reported_with_line() {
    let scratch = Scratch::new("tamper");
    for _ in 0..2 {
        let output = scratch.run().args(["--", "/bin/true"]).output().unwrap();
        assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    }
    let log = scratch.state_dir().join("audit/log.jsonl");
    let text = std::fs::read_to_string(&log).unwrap();
    let edited = text.replacen("\"exit_code\":0", "\"exit_code\":1", 1);
    assert_ne!(edited, text);
    std::fs::write(&log, edited).unwrap();
    let verify = audit(&scratch, "verify");
    assert_eq!(verify.status.code(), Some(1));
    let result: serde_json::Value = serde_json::from_slice(&verify.stdout).unwrap();
    assert_eq!(result["intact"], false);
    assert_eq!(result["line"], 2);

    let text_output = Command::new(MAYFLY).args(["audit", "verify", "--state-dir"]).arg(scratch.state_dir()).output().unwrap();
    assert!(stdout(&text_output).contains("BROKEN at line 2"), "{}", stdout(&text_output));
}

#[test]
fn truncated_log_is_reported() {
    let scratch = Scratch::new("truncate");
    for _ in 0..2 {
        scratch.run().args(["--", "/bin/true"]).output().unwrap();
    }
    let log = scratch.state_dir().join("audit/log.jsonl");
    let text = std::fs::read_to_string(&log).unwrap();
    let kept: String = text.lines().take(3).map(|l| format!("{l}\n")).collect();
    std::fs::write(&log, kept).unwrap();
    let verify = audit(&scratch, "verify");
    assert_eq!(verify.status.code(), Some(1));
    let result: serde_json::Value = serde_json::from_slice(&verify.stdout).unwrap();
    assert!(result["reason"].as_str().unwrap().contains("truncated"), "{result}");
}

#[test]
fn unwritable_audit_log_blocks_session() {
    let scratch = Scratch::new("noaudit");
    std::fs::create_dir_all(scratch.state_dir()).unwrap();
    // A file where the audit directory belongs: the log cannot be created.
    std::fs::write(scratch.state_dir().join("audit"), "").unwrap();
    let output = scratch.run().args(["--", "/bin/sh", "-c", "echo ran"]).output().unwrap();
    assert_eq!(output.status.code(), Some(125));
    assert_eq!(stdout(&output), "", "the command must not run");
    assert!(stderr(&output).contains("no session starts"), "{}", stderr(&output));
    let records = std::fs::read_dir(scratch.state_dir().join("sessions")).map(|d| d.count()).unwrap_or(0);
    assert_eq!(records, 0, "no ledger record, so no host resource was created");
}

#[test]
fn export_since_skips_earlier_records() {
    let scratch = Scratch::new("since");
    scratch.run().args(["--", "/bin/true"]).output().unwrap();
    let output = Command::new(MAYFLY).args(["audit", "export", "--since", "2", "--state-dir"]).arg(scratch.state_dir()).output().unwrap();
    let records = parse_lines(&output.stdout);
    assert_eq!(records.len(), 2);
    assert_eq!(records[0]["seq"], 2);
}

#[test]
fn verify_of_missing_log_creates_nothing() {
    let scratch = Scratch::new("nolog");
    let output = audit(&scratch, "verify");
    assert_ne!(output.status.code(), Some(0));
    assert!(stderr(&output).contains("there is no audit log"), "{}", stderr(&output));
    assert!(!scratch.state_dir().exists(), "verify must not create the state directory");
}

#[test]
fn deleted_head_is_reported() {
    let scratch = Scratch::new("nohead");
    scratch.run().args(["--", "/bin/true"]).output().unwrap();
    std::fs::remove_file(scratch.state_dir().join("audit/head.json")).unwrap();
    let verify = audit(&scratch, "verify");
    assert_eq!(verify.status.code(), Some(1));
    let result: serde_json::Value = serde_json::from_slice(&verify.stdout).unwrap();
    assert!(result["reason"].as_str().unwrap().contains("signed head"), "{result}");
}

#[test]
fn damaged_tail_blocks_next_session() {
    let scratch = Scratch::new("damagedtail");
    scratch.run().args(["--", "/bin/true"]).output().unwrap();
    let log = scratch.state_dir().join("audit/log.jsonl");
    let text = std::fs::read_to_string(&log).unwrap();
    std::fs::write(&log, text.replace("\"checkpoint\"", "\"checkpoinT\"")).unwrap();
    let output = scratch.run().args(["--", "/bin/sh", "-c", "echo ran"]).output().unwrap();
    assert_eq!(output.status.code(), Some(125));
    assert_eq!(stdout(&output), "");
    assert!(stderr(&output).contains("mayfly audit verify"), "{}", stderr(&output));
}
