//! The shell bench's report and its plain-text and Markdown forms. The JSON
//! form is the serde serialization of `ShellReport`.

use std::time::Duration;

use serde::Serialize;

use super::stats::{median, milliseconds, percentile};

/// Keystroke-to-echo times of one terminal, in milliseconds.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub(super) struct EchoStats {
    pub(super) keystrokes: usize,
    pub(super) median_ms: f64,
    pub(super) p99_ms: f64,
    pub(super) min_ms: f64,
}

impl EchoStats {
    /// Computes the statistics of ascending `sorted`, or None when empty.
    pub(super) fn from_sorted(sorted: &[Duration]) -> Option<EchoStats> {
        Some(EchoStats {
            keystrokes: sorted.len(),
            median_ms: milliseconds(median(sorted)?),
            p99_ms: milliseconds(percentile(sorted, 99)?),
            min_ms: milliseconds(*sorted.first()?),
        })
    }
}

#[derive(Debug, Serialize)]
pub(super) struct EchoReport {
    pub(super) warmup_keystrokes: u32,
    /// A shell session attached over the WebSocket as its writer.
    pub(super) mayfly: EchoStats,
    /// The profile's shell on a host pseudo-terminal, the anchor.
    pub(super) host_pty: EchoStats,
}

/// Host-side memory of idle shell sessions. The `_mib` fields are MiB per
/// session, except the server's RSS before and after, which are totals.
#[derive(Debug, Serialize)]
pub(super) struct MemoryReport {
    pub(super) sessions: usize,
    pub(super) settle_seconds: u64,
    pub(super) server_rss_before_mib: f64,
    pub(super) server_rss_after_mib: f64,
    /// Growth of the server's resident set, divided by the sessions.
    pub(super) server_rss_mib: f64,
    /// Mean memory charged to a session's memory cgroup, and its parts:
    /// anonymous pages, page cache and tmpfs pages, kernel memory.
    pub(super) cgroup_mib: f64,
    pub(super) cgroup_anon_mib: f64,
    pub(super) cgroup_file_mib: f64,
    pub(super) cgroup_kernel_mib: f64,
    /// `server_rss_mib` plus `cgroup_mib`: the host-side cost of one idle session.
    pub(super) host_side_mib: f64,
    /// Mean summed proportional set size of a session's processes.
    pub(super) sandbox_pss_mib: f64,
    pub(super) processes_per_session: f64,
    /// Mean proportional set size of the anchor's shells, as many as sessions.
    pub(super) host_shell_pss_mib: f64,
}

#[derive(Debug, Serialize)]
pub(super) struct CapacityReport {
    /// Maximum number of sessions the bench creates when none is rejected.
    pub(super) bound: usize,
    pub(super) admitted: usize,
    /// Admitted sessions that reached `running`.
    pub(super) running: usize,
    /// The detail of the `host-full` rejection, if one came before the bound.
    pub(super) rejection: Option<String>,
    /// The first admitted session that did not reach `running`, and why.
    pub(super) start_error: Option<String>,
    /// Memory and CPUs that one shell session reserves from the host's capacity.
    pub(super) reserved_memory_mib: u64,
    pub(super) reserved_cpus: f64,
}

#[derive(Debug, Serialize)]
pub(super) struct ShellReport {
    pub(super) command_line: String,
    pub(super) date: String,
    pub(super) kernel: String,
    pub(super) nproc: usize,
    pub(super) memory_total_mib: u64,
    pub(super) cgroup_version: String,
    pub(super) echo: Option<EchoReport>,
    pub(super) memory: Option<MemoryReport>,
    pub(super) capacity: Option<CapacityReport>,
    /// Errors of the phases that did not finish, one sentence each.
    pub(super) errors: Vec<String>,
}

/// Returns `value / base` with two decimals, or "-" when `base` is zero.
pub(super) fn ratio_cell(value: f64, base: f64) -> String {
    if base > 0.0 {
        format!("{:.2}", value / base)
    } else {
        "-".into()
    }
}

/// Builds the rows of the echo table: name, statistics, ratios to the anchor.
fn echo_rows(echo: &EchoReport) -> Vec<[String; 7]> {
    let row = |name: &str, stats: &EchoStats| {
        [
            name.to_string(),
            stats.keystrokes.to_string(),
            format!("{:.3}", stats.median_ms),
            format!("{:.3}", stats.p99_ms),
            format!("{:.3}", stats.min_ms),
            ratio_cell(stats.median_ms, echo.host_pty.median_ms),
            ratio_cell(stats.p99_ms, echo.host_pty.p99_ms),
        ]
    };
    vec![row("Mayfly shell session, attach WebSocket", &echo.mayfly), row("Same shell on a host PTY (anchor)", &echo.host_pty)]
}

/// Builds the rows of the memory table: measure, MiB per session, and the
/// ratio to the anchor's shell where the two are comparable.
fn memory_rows(memory: &MemoryReport) -> Vec<[String; 3]> {
    let anchor = memory.host_shell_pss_mib;
    vec![
        ["Host-side total: server RSS growth + session cgroup".into(), format!("{:.2}", memory.host_side_mib), ratio_cell(memory.host_side_mib, anchor)],
        ["`mayfly serve` RSS growth".into(), format!("{:.2}", memory.server_rss_mib), String::new()],
        ["Session memory cgroup".into(), format!("{:.2}", memory.cgroup_mib), String::new()],
        ["Cgroup part: anonymous pages".into(), format!("{:.2}", memory.cgroup_anon_mib), String::new()],
        ["Cgroup part: page cache and tmpfs".into(), format!("{:.2}", memory.cgroup_file_mib), String::new()],
        ["Cgroup part: kernel memory".into(), format!("{:.2}", memory.cgroup_kernel_mib), String::new()],
        [
            format!("PSS of the sandbox processes ({:.1} per session)", memory.processes_per_session),
            format!("{:.2}", memory.sandbox_pss_mib),
            ratio_cell(memory.sandbox_pss_mib, anchor),
        ],
        ["Same shell on a host PTY, PSS (anchor)".into(), format!("{anchor:.2}"), "1.00".into()],
    ]
}

/// Describes the capacity result in one sentence.
fn capacity_sentence(capacity: &CapacityReport) -> String {
    let reserve = format!("each reserving {} MiB and {:.2} CPUs", capacity.reserved_memory_mib, capacity.reserved_cpus);
    let mut sentence = match &capacity.rejection {
        Some(detail) => format!("Admission control admitted {} idle shell sessions, {reserve}, and rejected the next with 503 host-full: \"{detail}\".", capacity.admitted),
        None => format!("Admission control admitted all {} idle shell sessions the bench created, {reserve}, without a rejection.", capacity.admitted),
    };
    sentence.push_str(&format!(" {} of them were running at once.", capacity.running));
    if let Some(error) = &capacity.start_error {
        sentence.push_str(&format!(" The first that did not run: {error}"));
    }
    sentence
}

fn host_line(report: &ShellReport) -> String {
    format!(
        "kernel {}, {} CPUs (nproc), {} MiB memory (MemTotal), cgroup {}, {}",
        report.kernel, report.nproc, report.memory_total_mib, report.cgroup_version, report.date
    )
}

/// Formats the report as plain text.
pub(super) fn format_text(report: &ShellReport) -> String {
    let mut lines = Vec::new();
    if let Some(echo) = &report.echo {
        lines.push(format!("Keystroke to echo, alternating between the terminals, after {} warm-up keystrokes each:", echo.warmup_keystrokes));
        lines.push(format!("  {:<40}{:>11}{:>11}{:>10}{:>10}{:>13}{:>10}", "terminal", "keystrokes", "median ms", "p99 ms", "min ms", "median/host", "p99/host"));
        for [name, count, median, p99, min, median_ratio, p99_ratio] in echo_rows(echo) {
            lines.push(format!("  {name:<40}{count:>11}{median:>11}{p99:>10}{min:>10}{median_ratio:>13}{p99_ratio:>10}"));
        }
    }
    if let Some(memory) = &report.memory {
        lines.push(format!("Memory of {} idle shell sessions, {} s after the last started, MiB per session:", memory.sessions, memory.settle_seconds));
        for [name, mib, ratio] in memory_rows(memory) {
            let ratio = if ratio.is_empty() { String::new() } else { format!("  ({ratio} x anchor)") };
            lines.push(format!("  {:<58}{mib:>8}{ratio}", name.replace('`', "")));
        }
        lines.push(format!("  Server RSS: {:.1} MiB before, {:.1} MiB after.", memory.server_rss_before_mib, memory.server_rss_after_mib));
    }
    if let Some(capacity) = &report.capacity {
        lines.push(format!("Capacity with the default [capacity]: {}", capacity_sentence(capacity)));
    }
    for error in &report.errors {
        lines.push(format!("Failed: {error}"));
    }
    lines.push(format!("Host: {}", host_line(report)));
    lines.join("\n") + "\n"
}

/// Formats the echo result as a paragraph and a Markdown table.
fn markdown_echo(echo: &EchoReport) -> Vec<String> {
    let mut lines = vec![
        format!(
            "Keystroke to echo: {} keystrokes per terminal, alternating, after {} warm-up keystrokes each. \
             Each time runs from sending one key to reading its echo.",
            echo.mayfly.keystrokes, echo.warmup_keystrokes
        ),
        String::new(),
        "| Terminal | Keystrokes | Median (ms) | p99 (ms) | Min (ms) | Median / host PTY | p99 / host PTY |".into(),
        "|---|--:|--:|--:|--:|--:|--:|".into(),
    ];
    lines.extend(echo_rows(echo).iter().map(|row| format!("| {} |", row.join(" | "))));
    lines
}

/// Formats the memory result as a paragraph and a Markdown table.
fn markdown_memory(memory: &MemoryReport) -> Vec<String> {
    let mut lines = vec![
        format!(
            "Memory: {} idle shell sessions with no client attached, read {} s after the last one was running. \
             The server's RSS went from {:.1} to {:.1} MiB.",
            memory.sessions, memory.settle_seconds, memory.server_rss_before_mib, memory.server_rss_after_mib
        ),
        String::new(),
        "| Measure | MiB per session | Ratio to the anchor |".into(),
        "|---|--:|--:|".into(),
    ];
    lines.extend(memory_rows(memory).iter().map(|row| format!("| {} |", row.join(" | "))));
    lines
}

/// Formats the report as a Markdown section for a benchmarks page.
pub(super) fn format_markdown(report: &ShellReport) -> String {
    let mut lines = vec!["## Shell sessions: `mayfly bench --suite shell`".to_string(), String::new()];
    lines.push(format!("- Command: `{}`", report.command_line));
    lines.push(format!("- Date: {}", report.date));
    lines.push(format!("- Kernel: {}", report.kernel));
    lines.push(format!("- CPUs (`nproc`): {}", report.nproc));
    lines.push(format!("- Memory (`MemTotal`): {} MiB", report.memory_total_mib));
    lines.push(format!("- Cgroups: {}", report.cgroup_version));

    if let Some(echo) = &report.echo {
        lines.push(String::new());
        lines.extend(markdown_echo(echo));
    }
    if let Some(memory) = &report.memory {
        lines.push(String::new());
        lines.extend(markdown_memory(memory));
    }
    if let Some(capacity) = &report.capacity {
        lines.push(String::new());
        lines.push(format!("Capacity with the default `[capacity]`: {}", capacity_sentence(capacity)));
    }
    if !report.errors.is_empty() {
        lines.push(String::new());
        lines.extend(report.errors.iter().map(|error| format!("- Failed: {error}")));
    }
    lines.join("\n") + "\n"
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample_report() -> ShellReport {
        let stats = |median_ms: f64, p99_ms: f64| EchoStats { keystrokes: 200, median_ms, p99_ms, min_ms: median_ms / 2.0 };
        ShellReport {
            command_line: "mayfly bench --suite shell --runs 200".into(),
            date: "2024-02-29T12:34:56Z".into(),
            kernel: "6.1.0".into(),
            nproc: 2,
            memory_total_mib: 24_000,
            cgroup_version: "v1".into(),
            echo: Some(EchoReport { warmup_keystrokes: 10, mayfly: stats(0.5, 2.0), host_pty: stats(0.1, 0.4) }),
            memory: Some(MemoryReport {
                sessions: 20,
                settle_seconds: 2,
                server_rss_before_mib: 30.0,
                server_rss_after_mib: 40.0,
                server_rss_mib: 0.5,
                cgroup_mib: 3.5,
                host_side_mib: 4.0,
                sandbox_pss_mib: 2.0,
                processes_per_session: 2.0,
                cgroup_anon_mib: 2.5,
                cgroup_file_mib: 0.1,
                cgroup_kernel_mib: 0.4,
                host_shell_pss_mib: 1.0,
            }),
            capacity: Some(CapacityReport {
                bound: 500,
                admitted: 8,
                running: 8,
                rejection: Some("the host is full: no CPUs left".into()),
                start_error: None,
                reserved_memory_mib: 512,
                reserved_cpus: 1.0,
            }),
            errors: Vec::new(),
        }
    }

    #[test]
    fn echo_stats_from_samples() {
        let samples: Vec<Duration> = (1..=100).map(Duration::from_micros).collect();
        let stats = EchoStats::from_sorted(&samples).expect("stats of 100 samples");
        assert_eq!(stats.keystrokes, 100);
        assert_eq!(stats.median_ms, 0.05);
        assert_eq!(stats.p99_ms, 0.099);
        assert_eq!(stats.min_ms, 0.001);
        assert_eq!(EchoStats::from_sorted(&[]), None);
    }

    #[test]
    fn ratio_cell_of_zero_base() {
        assert_eq!(ratio_cell(1.0, 0.0), "-");
        assert_eq!(ratio_cell(1.0, 4.0), "0.25");
    }

    #[test]
    fn markdown_has_tables_and_ratios() {
        let markdown = format_markdown(&sample_report());
        assert!(markdown.contains("- Command: `mayfly bench --suite shell --runs 200`"), "{markdown}");
        assert!(markdown.contains("| Mayfly shell session, attach WebSocket | 200 | 0.500 | 2.000 | 0.250 | 5.00 | 5.00 |"), "{markdown}");
        assert!(markdown.contains("| Same shell on a host PTY (anchor) | 200 | 0.100 | 0.400 | 0.050 | 1.00 | 1.00 |"), "{markdown}");
        assert!(markdown.contains("| Host-side total: server RSS growth + session cgroup | 4.00 | 4.00 |"), "{markdown}");
        assert!(markdown.contains("admitted 8 idle shell sessions"), "{markdown}");
        assert!(markdown.contains("\"the host is full: no CPUs left\""), "{markdown}");
        assert!(!markdown.contains("Failed"), "{markdown}");
    }

    #[test]
    fn text_lists_failed_phases() {
        let report = ShellReport { echo: None, memory: None, errors: vec!["the server did not start".into()], ..sample_report() };
        let text = format_text(&report);
        assert!(text.contains("Failed: the server did not start"), "{text}");
        assert!(!text.contains("Keystroke"), "{text}");
        assert!(text.contains("Capacity with the default [capacity]: Admission control admitted 8"), "{text}");
        assert!(text.contains("cgroup v1"), "{text}");
    }
}
