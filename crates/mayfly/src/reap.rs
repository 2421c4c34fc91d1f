//! `mayfly reap`: destroy what crashed supervisors left behind.

use mayfly_core::ExitCode;
use mayfly_sandbox::cgroup::Layout;
use mayfly_sandbox::ledger;

use crate::cli::StateArgs;

pub fn main(args: StateArgs) -> i32 {
    let layout = match Layout::detect() {
        Ok(layout) => layout,
        Err(error) => {
            eprintln!("mayfly: {error}");
            return ExitCode::PROTECTION_MISSING;
        }
    };
    let reaped = ledger::reap(&args.state_dir, &layout);
    if args.json {
        println!("{}", serde_json::to_string(&reaped).expect("serializes"));
    } else if reaped.is_empty() {
        println!("nothing to reap");
    } else {
        for entry in &reaped {
            match &entry.error {
                None => println!("{}: destroyed ({} processes killed)", entry.session_id, entry.killed_processes),
                Some(error) => println!("{}: failed: {error}", entry.session_id),
            }
        }
    }
    if reaped.iter().any(|r| r.error.is_some()) {
        ExitCode::SETUP_FAILED
    } else {
        0
    }
}
