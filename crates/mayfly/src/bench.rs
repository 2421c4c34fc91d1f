//! `mayfly bench`: end-to-end wall time of a cold start of `/bin/true` under
//! Mayfly, bubblewrap and runc. One bench run measures all three and
//! alternates between them each iteration, so machine noise affects each
//! runtime alike. The `api`, `shell`, `browser` and `pool` suites are in
//! `api.rs`, `shell_sessions.rs`, `browser_sessions.rs` and `pool_starts.rs`.

mod api;
mod attach_socket;
mod browser_anchor;
mod browser_origin;
mod browser_report;
mod browser_screen;
mod browser_sessions;
mod browser_viewer;
mod host_pty;
mod http;
mod memory;
mod pool_browser;
mod pool_report;
mod pool_starts;
mod report;
mod runc_bundle;
mod runtime;
mod server;
mod session_requests;
mod shell;
mod shell_report;
mod shell_sessions;
mod stats;
mod terminal_echo;
mod timed_run;
mod utc;

use std::time::{SystemTime, UNIX_EPOCH};

use mayfly_core::ExitCode;

use self::report::{format_markdown, format_text, Report, RuntimeResult};
use self::runtime::{set_up_bubblewrap, set_up_mayfly, set_up_runc, Launcher, Runtime, Slot};
use self::shell::shell_quote;
use self::stats::median;
use self::utc::format_utc;
use crate::cli::BenchArgs;

/// The command each runtime starts.
const PROGRAM: &str = "/bin/true";
/// Unmeasured runs per runtime before the measured ones.
const WARMUP_RUNS: u32 = 3;
const MAX_RUNS: u32 = 10_000;

/// Runs the warm-up and measured iterations. Each iteration starts with the
/// next runtime in turn, so every runtime runs first, in the middle and last
/// about equally often.
fn measure(runtimes: &mut [&mut Runtime], runs: u32) {
    let count = runtimes.len();
    for iteration in 0..(WARMUP_RUNS + runs) as usize {
        let measured = iteration >= WARMUP_RUNS as usize;
        for offset in 0..count {
            runtimes[(iteration + offset) % count].run_once(measured);
        }
    }
}

fn validate_runs(runs: u32) -> Result<(), String> {
    if (1..=MAX_RUNS).contains(&runs) {
        Ok(())
    } else {
        Err(format!("--runs {runs} is out of range: use 1 to {MAX_RUNS}"))
    }
}

pub fn main(args: BenchArgs) -> i32 {
    if let Err(message) = validate_runs(args.runs) {
        eprintln!("mayfly: {message}");
        return ExitCode::USAGE;
    }
    if args.suite == "api" {
        return api::main(&args);
    }
    if args.suite == "shell" {
        return shell_sessions::main(&args);
    }
    if args.suite == "pool" {
        return pool_starts::main(&args);
    }
    if args.suite == "browser" {
        return browser_sessions::main(&args);
    }
    if !nix::unistd::geteuid().is_root() {
        eprintln!("mayfly: warning: not running as root. `mayfly run` needs root, so its runs will fail.");
    }

    let mut slots = vec![set_up_mayfly(&args.state_dir, args.front.as_deref()), set_up_bubblewrap(), set_up_runc()];
    let mut ready: Vec<&mut Runtime> = slots
        .iter_mut()
        .filter_map(|slot| match slot {
            Slot::Ready(runtime) => Some(runtime),
            Slot::Skipped(_) => None,
        })
        .collect();
    measure(&mut ready, args.runs);

    let report = build_report(slots, args.runs);
    let failed = report.runtimes.iter().any(RuntimeResult::has_errors);
    publish(&args, &report, failed, format_text(&report), format_markdown(&report))
}

/// Prints a suite's report as JSON with `--json` or as text otherwise,
/// writes its Markdown to `--output`, and returns the exit code: 1 when a
/// measurement failed or the Markdown could not be written.
fn publish(args: &BenchArgs, report: &impl serde::Serialize, failed: bool, text: String, markdown: String) -> i32 {
    if args.json {
        println!("{}", serde_json::to_string_pretty(report).expect("the report serializes"));
    } else {
        print!("{text}");
    }
    let mut code = i32::from(failed);
    if let Some(path) = &args.output {
        if let Err(error) = std::fs::write(path, markdown) {
            eprintln!("mayfly: failed to write the Markdown report to {}: {error}", path.display());
            code = 1;
        }
    }
    code
}

fn build_report(slots: Vec<Slot>, runs: u32) -> Report {
    let mayfly_median = slots.iter().find_map(|slot| match slot {
        Slot::Ready(runtime) if matches!(runtime.launcher, Launcher::Mayfly { .. }) => {
            let mut sorted = runtime.samples.clone();
            sorted.sort();
            median(&sorted)
        }
        _ => None,
    });
    let runtimes = slots
        .into_iter()
        .map(|slot| match slot {
            Slot::Ready(runtime) => runtime.finish(mayfly_median),
            Slot::Skipped(result) => result,
        })
        .collect();
    Report {
        command_line: std::env::args().map(|arg| shell_quote(&arg)).collect::<Vec<_>>().join(" "),
        date: format_utc(SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)),
        kernel: std::fs::read_to_string("/proc/sys/kernel/osrelease").map(|s| s.trim().to_string()).unwrap_or_else(|e| format!("unknown ({e})")),
        nproc: nproc(),
        program: PROGRAM,
        runs,
        warmup_runs: WARMUP_RUNS,
        runc_namespaces: runc_bundle::NAMESPACES.to_vec(),
        runtimes,
    }
}

/// Counts the CPUs this process may run on, as `nproc` does.
fn nproc() -> usize {
    match nix::sched::sched_getaffinity(nix::unistd::Pid::from_raw(0)) {
        Ok(set) => (0..nix::sched::CpuSet::count()).filter(|&cpu| set.is_set(cpu).unwrap_or(false)).count(),
        Err(_) => std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runs_bounds() {
        assert!(validate_runs(0).is_err());
        assert!(validate_runs(1).is_ok());
        assert!(validate_runs(MAX_RUNS).is_ok());
        assert!(validate_runs(MAX_RUNS + 1).is_err());
    }
}
