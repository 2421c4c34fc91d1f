//! `mayfly audit verify` and `mayfly audit export`, and the records that
//! `mayfly run` writes.

use std::io::Write;

use mayfly_audit::{AuditLog, Entry};
use mayfly_core::ExitCode;
use mayfly_sandbox::session::{SessionConfig, SessionOutcome};

use crate::cli::{AuditCommand, ExportArgs, StateArgs};

/// Exit code of `mayfly audit verify` for a log that is not intact.
pub const BROKEN: i32 = 1;

/// Returns the actor name for records written by this process.
pub fn actor() -> String {
    format!("cli uid {}", nix::unistd::getuid())
}

/// Builds the record written before a session starts. It names the command
/// and the environment variables, never their values beyond the program name.
pub fn started(config: &SessionConfig, profile: &str, ttl: &str) -> Entry {
    let env_names: Vec<&str> = config.env.iter().map(|(name, _)| name.as_str()).collect();
    let inputs: Vec<serde_json::Value> =
        config.inputs.iter().map(|i| serde_json::json!({ "name": i.name, "bytes": i.size })).collect();
    Entry::new("session.started", &actor())
        .session(&config.session_id)
        .field("profile", profile)
        .field("ttl", ttl)
        .field("program", config.argv[0].clone())
        .field("arguments", config.argv.len() - 1)
        .field("env_names", env_names)
        .field("inputs", inputs)
        .field("limits", serde_json::to_value(config.limits).expect("limits serialize"))
        .field("artifacts_dir", config.artifacts.as_ref().map(|(dir, _)| dir.display().to_string()))
}

/// Builds the record written when `reap` acted on a session whose supervisor is gone.
pub fn reaped(reaped: &mayfly_sandbox::ledger::Reaped) -> Entry {
    // A pool member that no session had claimed is not a session.
    let entry = match reaped.pool_member {
        true => Entry::new("pool.member_reaped", &actor()).field("member", reaped.session_id.clone()),
        false => Entry::new("session.reaped", &actor()).session(&reaped.session_id),
    };
    entry
        .field("killed_processes", reaped.killed_processes)
        .field("error", reaped.error.clone())
        .field("running_until_unix_ms", reaped.running_until_unix_ms)
}

/// Appends a record for each reaped session that was acted on. Sessions left
/// running until their deadline get no record until a later reap ends them.
pub fn record_reaped(log: &AuditLog, reaped: &[mayfly_sandbox::ledger::Reaped]) -> Result<(), mayfly_audit::AuditError> {
    let entries: Vec<Entry> = reaped.iter().filter(|r| r.running_until_unix_ms.is_none()).map(self::reaped).collect();
    if entries.is_empty() {
        return Ok(());
    }
    log.append(entries, true).map(|_| ())
}

/// Builds the record written after a session ended and was torn down.
pub fn ended(outcome: &SessionOutcome) -> Entry {
    let artifacts = outcome.artifacts.as_ref().map(|a| serde_json::json!({ "files": a.files.len(), "bytes": a.bytes, "truncated": a.truncated }));
    Entry::new("session.ended", &actor())
        .session(&outcome.session_id)
        .field("end", serde_json::to_value(&outcome.end).expect("end reasons serialize"))
        .field("exit_code", outcome.exit_code)
        .field("deadline_enforced_by", serde_json::to_value(outcome.deadline_enforced_by).expect("serializes"))
        .field("landlock", serde_json::to_value(outcome.landlock).expect("serializes"))
        .field("usage", serde_json::to_value(&outcome.usage).expect("usage serializes"))
        .field("artifacts", artifacts)
        .field("artifacts_error", outcome.artifacts_error.clone())
        .field("teardown", serde_json::to_value(&outcome.teardown).expect("evidence serializes"))
}

fn verify(args: StateArgs) -> i32 {
    let log = match AuditLog::open_existing(&args.state_dir) {
        Ok(log) => log,
        Err(error) => {
            eprintln!("mayfly: {error}");
            return ExitCode::SETUP_FAILED;
        }
    };
    match log.verify() {
        Ok(verified) => {
            if args.json {
                println!("{}", serde_json::json!({ "intact": true, "log": log.path(), "verified": verified }));
            } else {
                let signed = verified.signed_head_seq.map(|s| format!("signed through record {s}")).unwrap_or_else(|| "no signed head yet".into());
                println!(
                    "audit log {} is intact: {} records, {} checkpoints, {signed}, {} records after the last checkpoint",
                    log.path().display(),
                    verified.records,
                    verified.checkpoints,
                    verified.unsigned_tail
                );
            }
            0
        }
        Err(mayfly_audit::AuditError::Broken(broken)) => {
            if args.json {
                println!("{}", serde_json::json!({ "intact": false, "log": log.path(), "line": broken.line, "reason": broken.reason }));
            } else {
                let place = if broken.line == 0 { "its signed head".to_string() } else { format!("line {}", broken.line) };
                println!("audit log {} is BROKEN at {place}: {}", log.path().display(), broken.reason);
            }
            BROKEN
        }
        Err(error) => {
            eprintln!("mayfly: {error}");
            ExitCode::SETUP_FAILED
        }
    }
}

/// Prints the records as they are stored. Export does not verify them; run
/// `mayfly audit verify` for that.
fn export(args: ExportArgs) -> i32 {
    let records = AuditLog::open_existing(&args.state_dir).and_then(|log| log.records(args.since));
    match records {
        Ok(records) => {
            let mut stdout = std::io::stdout().lock();
            for record in records {
                if writeln!(stdout, "{}", serde_json::to_string(&record).expect("records serialize")).is_err() {
                    return ExitCode::SETUP_FAILED;
                }
            }
            0
        }
        Err(error) => {
            eprintln!("mayfly: {error}");
            ExitCode::SETUP_FAILED
        }
    }
}

pub fn main(command: AuditCommand) -> i32 {
    match command {
        AuditCommand::Verify(args) => match &args.server {
            Some(url) => crate::remote::audit_verify(url, &args.auth, args.state.json),
            None => verify(args.state),
        },
        AuditCommand::Export(args) => match &args.server {
            Some(url) => crate::remote::audit_export(url, &args.auth, args.since),
            None => export(args),
        },
    }
}
