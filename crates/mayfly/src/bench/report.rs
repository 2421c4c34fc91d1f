//! The bench report and its plain-text and Markdown forms. The JSON form
//! is the serde serialization of `Report`.

use serde::Serialize;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub(super) enum Status {
    Measured,
    NotInstalled,
    SetupFailed,
}

/// One runtime's line in the report. Times are in milliseconds and cover
/// successful measured runs only.
#[derive(Debug, Serialize)]
pub(super) struct RuntimeResult {
    pub(super) name: &'static str,
    pub(super) status: Status,
    pub(super) version: Option<String>,
    pub(super) command: Option<String>,
    /// Reason the runtime was skipped, or the error of its first failed run.
    pub(super) detail: Option<String>,
    pub(super) runs: u32,
    pub(super) failed: u32,
    pub(super) warmup_failed: u32,
    pub(super) median_ms: Option<f64>,
    pub(super) p90_ms: Option<f64>,
    pub(super) min_ms: Option<f64>,
    pub(super) median_vs_mayfly: Option<f64>,
    /// Containers that `runc run` did not delete and the bench deleted.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) containers_left_behind: Option<u32>,
    pub(super) cleanup_errors: Vec<String>,
    /// Median of each phase of Mayfly's session report, in milliseconds.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) phase_medians_ms: Option<Vec<(&'static str, f64)>>,
}

/// Describes Mayfly's phase medians in one line, if there are any.
fn phase_line(report: &Report) -> Option<String> {
    let phases = report.runtimes.iter().find_map(|r| r.phase_medians_ms.as_ref())?;
    let parts: Vec<String> = phases.iter().map(|(name, ms)| format!("{name} {ms:.2}")).collect();
    Some(format!(
        "Mayfly phases, median ms from the session report's timings (ended counts from the session's start): {}",
        parts.join(", ")
    ))
}

impl RuntimeResult {
    pub(super) fn skipped(name: &'static str, status: Status, detail: String) -> Self {
        RuntimeResult {
            name,
            status,
            version: None,
            command: None,
            detail: Some(detail),
            runs: 0,
            failed: 0,
            warmup_failed: 0,
            median_ms: None,
            p90_ms: None,
            min_ms: None,
            median_vs_mayfly: None,
            containers_left_behind: None,
            cleanup_errors: Vec::new(),
            phase_medians_ms: None,
        }
    }

    pub(super) fn has_errors(&self) -> bool {
        self.status == Status::SetupFailed || self.failed + self.warmup_failed > 0 || !self.cleanup_errors.is_empty()
    }
}

#[derive(Debug, Serialize)]
pub(super) struct Report {
    pub(super) command_line: String,
    pub(super) date: String,
    pub(super) kernel: String,
    pub(super) nproc: usize,
    pub(super) program: &'static str,
    pub(super) runs: u32,
    pub(super) warmup_runs: u32,
    pub(super) runc_namespaces: Vec<&'static str>,
    pub(super) runtimes: Vec<RuntimeResult>,
}

/// Formats a table cell with two decimals, or "-" when there is no value.
fn cell(value: Option<f64>) -> String {
    value.map(|v| format!("{v:.2}")).unwrap_or_else(|| "-".into())
}

/// Describes why a runtime was not measured.
fn skip_reason(result: &RuntimeResult) -> String {
    let detail = result.detail.as_deref().unwrap_or("no detail");
    match result.status {
        Status::NotInstalled => format!("not installed ({detail})"),
        _ => format!("setup failed: {detail}"),
    }
}

/// Returns the failures, left-behind containers and cleanup errors of the
/// measured runtimes, one sentence each.
fn problem_notes(report: &Report) -> Vec<String> {
    let mut notes = Vec::new();
    for result in report.runtimes.iter().filter(|r| r.status == Status::Measured) {
        if let Some(detail) = &result.detail {
            notes.push(format!(
                "{}: {} of {} measured runs and {} of {} warm-up runs failed. The first failure: {detail}",
                result.name, result.failed, result.runs, result.warmup_failed, report.warmup_runs
            ));
        }
        if let Some(count) = result.containers_left_behind.filter(|&c| c > 0) {
            notes.push(format!("{}: {count} containers were still present after `runc run` exited and were deleted with `runc delete -f`", result.name));
        }
        for error in &result.cleanup_errors {
            notes.push(format!("{}: cleanup failed: {error}", result.name));
        }
    }
    if report.runtimes.iter().any(|r| r.failed + r.warmup_failed > 0) {
        notes.push("The bench discards the output of each run, so run a failing command by hand to see its error.".into());
    }
    notes
}

/// Describes the placeholders in the runc command line and the bundle it runs.
fn runc_note(report: &Report) -> String {
    format!(
        "TMPDIR is a temporary directory that the bench creates and removes, and ID is new for each run. \
         The bundle has a read-only root with merged-/usr links, /usr bound read-only, a fresh /proc, tmpfs on /dev and /tmp, \
         and the namespaces {}, with no user namespace.",
        report.runc_namespaces.join(", ")
    )
}

/// Formats the report as a plain-text table with the commands and host below it.
pub(super) fn format_text(report: &Report) -> String {
    let mut lines = vec![format!(
        "Cold start of {}: {} measured runs per runtime in alternating order, after {} warm-up runs each",
        report.program, report.runs, report.warmup_runs
    )];
    lines.push(format!("{:<12}{:>6}{:>8}{:>12}{:>12}{:>12}{:>15}", "runtime", "runs", "failed", "median ms", "p90 ms", "min ms", "median/mayfly"));
    for result in &report.runtimes {
        if result.status == Status::Measured {
            lines.push(format!(
                "{:<12}{:>6}{:>8}{:>12}{:>12}{:>12}{:>15}",
                result.name,
                result.runs,
                result.failed,
                cell(result.median_ms),
                cell(result.p90_ms),
                cell(result.min_ms),
                cell(result.median_vs_mayfly)
            ));
        } else {
            lines.push(format!("{:<12}{}", result.name, skip_reason(result)));
        }
    }
    lines.extend(problem_notes(report));
    lines.extend(phase_line(report));

    lines.push(String::new());
    lines.push("Commands:".into());
    for result in &report.runtimes {
        if let Some(command) = &result.command {
            lines.push(format!("  {:<12}{command}", result.name));
            if result.name == "runc" {
                lines.push(format!("  {:<12}{}", "", runc_note(report)));
            }
        }
    }
    lines.push(format!("Host: kernel {}, {} CPUs (nproc), {}", report.kernel, report.nproc, report.date));
    lines.join("\n") + "\n"
}

/// Formats the report as a Markdown section for a benchmarks page.
pub(super) fn format_markdown(report: &Report) -> String {
    let mut lines = vec![format!("## Cold start of {}", report.program), String::new()];
    lines.push(format!("- Command: `{}`", report.command_line));
    lines.push(format!("- Date: {}", report.date));
    lines.push(format!("- Kernel: {}", report.kernel));
    lines.push(format!("- CPUs (`nproc`): {}", report.nproc));
    lines.push(format!(
        "- Runs: {} measured per runtime, alternating between the runtimes each iteration, after {} unmeasured warm-up runs each. \
         Each time is the wall time from spawning the command to reaping its exit. The statistics cover successful runs only.",
        report.runs, report.warmup_runs
    ));
    lines.push(String::new());
    lines.push("| Runtime | Version | Runs | Failed | Median (ms) | p90 (ms) | Min (ms) | Median / Mayfly |".into());
    lines.push("|---|---|--:|--:|--:|--:|--:|--:|".into());
    for result in &report.runtimes {
        let version = result.version.as_deref().unwrap_or("-");
        if result.status == Status::Measured {
            lines.push(format!(
                "| {} | {version} | {} | {} | {} | {} | {} | {} |",
                result.name,
                result.runs,
                result.failed,
                cell(result.median_ms),
                cell(result.p90_ms),
                cell(result.min_ms),
                cell(result.median_vs_mayfly)
            ));
        } else {
            lines.push(format!("| {} | {} | - | - | - | - | - | - |", result.name, skip_reason(result)));
        }
    }
    if let Some(line) = phase_line(report) {
        lines.push(String::new());
        lines.push(line);
    }
    let notes = problem_notes(report);
    if !notes.is_empty() {
        lines.push(String::new());
        lines.extend(notes.iter().map(|note| format!("- {note}")));
    }

    lines.push(String::new());
    lines.push("Commands measured:".into());
    lines.push(String::new());
    for result in &report.runtimes {
        if let Some(command) = &result.command {
            lines.push(format!("- {}: `{command}`", result.name));
            if result.name == "runc" {
                lines.push(format!("  {}", runc_note(report)));
            }
        }
    }
    lines.join("\n") + "\n"
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bench::{runc_bundle, PROGRAM, WARMUP_RUNS};

    fn sample_report() -> Report {
        let mayfly = RuntimeResult {
            version: Some("mayfly 0.1.0".into()),
            command: Some("mayfly run -- /bin/true".into()),
            detail: None,
            status: Status::Measured,
            runs: 20,
            failed: 0,
            median_ms: Some(12.5),
            p90_ms: Some(14.0),
            min_ms: Some(11.0),
            median_vs_mayfly: Some(1.0),
            ..RuntimeResult::skipped("mayfly", Status::Measured, String::new())
        };
        let runc = RuntimeResult::skipped("runc", Status::NotInstalled, "runc not found in PATH".into());
        Report {
            command_line: "mayfly bench --runs 20".into(),
            date: "2024-02-29T12:34:56Z".into(),
            kernel: "6.1.0".into(),
            nproc: 4,
            program: PROGRAM,
            runs: 20,
            warmup_runs: WARMUP_RUNS,
            runc_namespaces: runc_bundle::NAMESPACES.to_vec(),
            runtimes: vec![mayfly, runc],
        }
    }

    #[test]
    fn text_lists_measured_and_skipped() {
        let text = format_text(&sample_report());
        assert!(text.contains("12.50"), "{text}");
        assert!(text.contains("1.00"), "{text}");
        assert!(text.contains("runc        not installed (runc not found in PATH)"), "{text}");
        assert!(text.contains("kernel 6.1.0, 4 CPUs"), "{text}");
    }

    #[test]
    fn markdown_has_table_and_host() {
        let markdown = format_markdown(&sample_report());
        assert!(markdown.contains("- Command: `mayfly bench --runs 20`"), "{markdown}");
        assert!(markdown.contains("- Date: 2024-02-29T12:34:56Z"), "{markdown}");
        assert!(markdown.contains("- Kernel: 6.1.0"), "{markdown}");
        assert!(markdown.contains("- CPUs (`nproc`): 4"), "{markdown}");
        assert!(markdown.contains("| mayfly | mayfly 0.1.0 | 20 | 0 | 12.50 | 14.00 | 11.00 | 1.00 |"), "{markdown}");
        assert!(markdown.contains("| runc | not installed (runc not found in PATH) |"), "{markdown}");
    }

    #[test]
    fn errors_count_failures_not_absence() {
        let report = sample_report();
        assert!(!report.runtimes.iter().any(RuntimeResult::has_errors));
        let failed = RuntimeResult { failed: 1, ..RuntimeResult::skipped("bubblewrap", Status::Measured, String::new()) };
        assert!(failed.has_errors());
        assert!(RuntimeResult::skipped("runc", Status::SetupFailed, "no".into()).has_errors());
    }
}
