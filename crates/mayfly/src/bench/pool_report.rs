//! The pool suite's report as text and as a Markdown section.

use std::fmt::Write;

use super::pool_starts::{Report, Side};

fn cell(value: Option<f64>) -> String {
    value.map_or_else(|| "-".to_string(), |ms| format!("{ms:.3}"))
}

/// Returns the median of the cold side divided by the warm side's, for `kind`.
fn speedup(report: &Report, kind: &str) -> Option<f64> {
    let median = |start: &str| report.sides.iter().find(|s| s.kind == kind && s.start == start)?.median_ms;
    Some(median("cold")? / median("warm")?)
}

fn rows(report: &Report) -> Vec<(&Side, String)> {
    report
        .sides
        .iter()
        .map(|side| {
            let ratio = match side.start {
                "warm" => speedup(report, side.kind).map_or_else(|| "-".to_string(), |r| format!("{r:.1}x faster than cold")),
                _ => String::new(),
            };
            (side, ratio)
        })
        .collect()
}

pub(super) fn format_text(report: &Report) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "start to running command (job, shell) or to the first frame (browser), after {} unmeasured runs per side ({} for browsers):", report.warmup_runs, super::pool_browser::WARMUP_RUNS);
    let _ = writeln!(out, "{:<6} {:<5} {:>5} {:>11} {:>11} {:>11}", "kind", "start", "runs", "median ms", "p99 ms", "min ms");
    for (side, ratio) in rows(report) {
        let _ = writeln!(out, "{:<6} {:<5} {:>5} {:>11} {:>11} {:>11}  {ratio}", side.kind, side.start, side.runs, cell(side.median_ms), cell(side.p99_ms), cell(side.min_ms));
        for error in side.errors.iter().take(3) {
            let _ = writeln!(out, "  error: {error}");
        }
    }
    let memory = &report.memory;
    let _ = writeln!(
        out,
        "idle member memory, mean of {}: {:.2} MiB charged to its cgroup, its processes' PSS {:.2} MiB, supervisor {:.2} MiB",
        memory.members, memory.cgroup_mib, memory.processes_pss_mib, memory.supervisor_mib
    );
    if let Some(error) = &memory.error {
        let _ = writeln!(out, "  error: {error}");
    }
    let browser = &report.browser_memory;
    let _ = writeln!(out, "idle browser member memory, mean of {}: {:.1} MiB charged to its cgroup, its processes' PSS {:.1} MiB", browser.members, browser.cgroup_mib, browser.processes_pss_mib);
    out
}

pub(super) fn format_markdown(report: &Report) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "Command: `{}`, {}, kernel {}.", report.command_line, report.date, report.kernel);
    let _ = writeln!(out, "Jobs and shells to the running command, browsers to the first frame, after {} unmeasured runs per side ({} for browsers).\n", report.warmup_runs, super::pool_browser::WARMUP_RUNS);
    let _ = writeln!(out, "| session | start | runs | median (ms) | p99 (ms) | min (ms) | |");
    let _ = writeln!(out, "|---|---|---|---|---|---|---|");
    for (side, ratio) in rows(report) {
        let _ = writeln!(out, "| {} | {} | {} | {} | {} | {} | {ratio} |", side.kind, side.start, side.runs, cell(side.median_ms), cell(side.p99_ms), cell(side.min_ms));
    }
    let memory = &report.memory;
    let _ = writeln!(
        out,
        "\nAn idle member, mean of {}: {:.2} MiB charged to its cgroup, a proportional set size of {:.2} MiB for its two processes (init and the command child waiting for the claim), and {:.2} MiB more resident memory in the supervisor.",
        memory.members, memory.cgroup_mib, memory.processes_pss_mib, memory.supervisor_mib
    );
    let browser = &report.browser_memory;
    let _ = writeln!(
        out,
        "\nAn idle browser member, with Chromium started on about:blank, mean of {}: {:.1} MiB charged to its cgroup and a proportional set size of {:.1} MiB for its processes.",
        browser.members, browser.cgroup_mib, browser.processes_pss_mib
    );
    out
}
