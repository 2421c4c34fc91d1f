//! `mayfly reap`: destroy what crashed supervisors left behind.

use mayfly_core::ExitCode;
use mayfly_sandbox::cgroup::Layout;
use mayfly_sandbox::ledger;

use mayfly_audit::AuditLog;

use crate::audit;
use crate::cli::StateArgs;

pub fn main(args: StateArgs) -> i32 {
    let layout = match Layout::detect() {
        Ok(layout) => layout,
        Err(error) => {
            eprintln!("mayfly: {error}");
            return ExitCode::PROTECTION_MISSING;
        }
    };
    let audit_log = match AuditLog::open(&args.state_dir) {
        Ok(log) => log,
        Err(error) => {
            eprintln!("mayfly: the audit log cannot be opened, so nothing is reaped: {error}");
            return ExitCode::SETUP_FAILED;
        }
    };
    let reaped = ledger::reap(&args.state_dir, &layout);
    let audit_error = audit::record_reaped(&audit_log, &reaped).err();
    if let Some(error) = &audit_error {
        eprintln!("mayfly: failed to record the reap in the audit log: {error}");
    }
    if args.json {
        println!("{}", serde_json::to_string(&reaped).expect("serializes"));
    } else if reaped.is_empty() {
        println!("nothing to reap");
    } else {
        for entry in &reaped {
            match (&entry.error, entry.running_until_unix_ms) {
                (Some(error), _) => println!("{}: failed: {error}", entry.session_id),
                (None, Some(deadline)) => {
                    let left = deadline.saturating_sub(mayfly_sandbox::ledger::unix_ms(std::time::SystemTime::now()));
                    println!("{}: supervisor gone; init ends the session at its deadline in {}s, reap again after that", entry.session_id, left.div_ceil(1000));
                }
                (None, None) => println!("{}: destroyed ({} processes killed)", entry.session_id, entry.killed_processes),
            }
        }
    }
    if audit_error.is_some() || reaped.iter().any(|r| r.error.is_some()) {
        ExitCode::SETUP_FAILED
    } else {
        0
    }
}
