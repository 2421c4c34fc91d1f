//! The browser bench's report and its plain-text and Markdown forms. The
//! JSON form is the serde serialization of `BrowserReport`.

use std::time::Duration;

use serde::Serialize;

use super::shell_report::ratio_cell;
use super::stats::{median, milliseconds, percentile};

/// Times of one path, in milliseconds.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub(super) struct TimeStats {
    pub(super) count: usize,
    pub(super) median_ms: f64,
    pub(super) p90_ms: f64,
    pub(super) p99_ms: f64,
    pub(super) min_ms: f64,
}

impl TimeStats {
    /// Computes the statistics of ascending `sorted`, or None when empty.
    pub(super) fn from_sorted(sorted: &[Duration]) -> Option<TimeStats> {
        Some(TimeStats {
            count: sorted.len(),
            median_ms: milliseconds(median(sorted)?),
            p90_ms: milliseconds(percentile(sorted, 90)?),
            p99_ms: milliseconds(percentile(sorted, 99)?),
            min_ms: milliseconds(*sorted.first()?),
        })
    }
}

/// Create to first frame: Mayfly sessions beside bare Chromium starts.
#[derive(Debug, Serialize)]
pub(super) struct StartReport {
    pub(super) warmup_runs: u32,
    pub(super) mayfly: Option<TimeStats>,
    pub(super) mayfly_failed: usize,
    pub(super) anchor: Option<TimeStats>,
    pub(super) anchor_failed: usize,
}

/// Key press to the next frame on the counter page.
#[derive(Debug, Serialize)]
pub(super) struct InputReport {
    pub(super) warmup_keys: u32,
    pub(super) mayfly: TimeStats,
    pub(super) anchor: TimeStats,
}

/// Frames a viewer received from the animated page in a fixed time.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub(super) struct StreamStats {
    pub(super) seconds: f64,
    pub(super) frames: u64,
    /// JPEG bytes, without the attach protocol's leading byte.
    pub(super) bytes: u64,
}

impl StreamStats {
    pub(super) fn frames_per_second(&self) -> f64 {
        self.frames as f64 / self.seconds
    }

    pub(super) fn bytes_per_second(&self) -> f64 {
        self.bytes as f64 / self.seconds
    }

    /// Returns the mean frame size in bytes, or 0 without frames.
    pub(super) fn mean_frame_bytes(&self) -> f64 {
        if self.frames == 0 {
            0.0
        } else {
            self.bytes as f64 / self.frames as f64
        }
    }
}

#[derive(Debug, Serialize)]
pub(super) struct StreamReport {
    pub(super) width: u32,
    pub(super) height: u32,
    pub(super) mayfly: StreamStats,
    pub(super) anchor: StreamStats,
}

/// Host-side memory of idle browser sessions beside bare Chromiums. The
/// `_mib` fields are MiB per session, except the server's RSS before and
/// after, which are totals.
#[derive(Debug, Serialize)]
pub(super) struct MemoryReport {
    pub(super) sessions: usize,
    pub(super) settle_seconds: u64,
    pub(super) server_rss_before_mib: f64,
    pub(super) server_rss_after_mib: f64,
    /// Growth of the server's resident set, divided by the sessions.
    pub(super) server_rss_mib: f64,
    /// Mean memory charged to a session's memory cgroup, and its parts.
    pub(super) cgroup_mib: f64,
    pub(super) cgroup_anon_mib: f64,
    pub(super) cgroup_file_mib: f64,
    pub(super) cgroup_kernel_mib: f64,
    /// `server_rss_mib` plus `cgroup_mib`: the host-side cost of one session.
    pub(super) host_side_mib: f64,
    /// Mean summed proportional set size of a session's processes.
    pub(super) sandbox_pss_mib: f64,
    pub(super) processes_per_session: f64,
    /// Mean summed proportional set size of one bare Chromium's processes,
    /// with as many running at once as sessions.
    pub(super) anchor_pss_mib: f64,
    pub(super) anchor_processes: f64,
}

#[derive(Debug, Serialize)]
pub(super) struct BrowserReport {
    pub(super) command_line: String,
    pub(super) date: String,
    pub(super) kernel: String,
    pub(super) nproc: usize,
    pub(super) memory_total_mib: u64,
    pub(super) cgroup_version: String,
    pub(super) chromium: String,
    /// The directory that contains the anchor's user data directories.
    pub(super) anchor_user_data: String,
    pub(super) start: Option<StartReport>,
    pub(super) input: Option<InputReport>,
    pub(super) stream: Option<StreamReport>,
    pub(super) memory: Option<MemoryReport>,
    /// Errors of the phases or runs that did not finish, one sentence each.
    pub(super) errors: Vec<String>,
}

const MAYFLY_ROW: &str = "Mayfly browser session, attach WebSocket";
const ANCHOR_ROW: &str = "Bare headless Chromium, same flags (anchor)";

fn stats_cells(stats: Option<&TimeStats>) -> [String; 4] {
    match stats {
        Some(stats) => [format!("{:.1}", stats.median_ms), format!("{:.1}", stats.p90_ms), format!("{:.1}", stats.p99_ms), format!("{:.1}", stats.min_ms)],
        None => ["-".into(), "-".into(), "-".into(), "-".into()],
    }
}

fn ratio_of(stats: Option<&TimeStats>, anchor: Option<&TimeStats>, pick: fn(&TimeStats) -> f64) -> String {
    match (stats, anchor) {
        (Some(stats), Some(anchor)) => ratio_cell(pick(stats), pick(anchor)),
        _ => "-".into(),
    }
}

/// Builds one row of a time table: name, count, failures, statistics and
/// the median and p99 ratios to the anchor.
fn time_row(name: &str, stats: Option<&TimeStats>, failed: usize, anchor: Option<&TimeStats>) -> [String; 9] {
    let [median, p90, p99, min] = stats_cells(stats);
    [
        name.to_string(),
        stats.map_or(0, |s| s.count).to_string(),
        failed.to_string(),
        median,
        p90,
        p99,
        min,
        ratio_of(stats, anchor, |s| s.median_ms),
        ratio_of(stats, anchor, |s| s.p99_ms),
    ]
}

fn start_rows(start: &StartReport) -> Vec<[String; 9]> {
    vec![
        time_row(MAYFLY_ROW, start.mayfly.as_ref(), start.mayfly_failed, start.anchor.as_ref()),
        time_row(ANCHOR_ROW, start.anchor.as_ref(), start.anchor_failed, start.anchor.as_ref()),
    ]
}

fn input_rows(input: &InputReport) -> Vec<[String; 9]> {
    vec![time_row(MAYFLY_ROW, Some(&input.mayfly), 0, Some(&input.anchor)), time_row(ANCHOR_ROW, Some(&input.anchor), 0, Some(&input.anchor))]
}

/// Builds the rows of the stream table: name, seconds, frames, frames/s,
/// KiB/s, mean frame KiB, and the frames/s and bytes/s ratios to the anchor.
fn stream_rows(stream: &StreamReport) -> Vec<[String; 8]> {
    let row = |name: &str, stats: &StreamStats| {
        [
            name.to_string(),
            format!("{:.1}", stats.seconds),
            stats.frames.to_string(),
            format!("{:.1}", stats.frames_per_second()),
            format!("{:.0}", stats.bytes_per_second() / 1024.0),
            format!("{:.1}", stats.mean_frame_bytes() / 1024.0),
            ratio_cell(stats.frames_per_second(), stream.anchor.frames_per_second()),
            ratio_cell(stats.bytes_per_second(), stream.anchor.bytes_per_second()),
        ]
    };
    vec![row(MAYFLY_ROW, &stream.mayfly), row(ANCHOR_ROW, &stream.anchor)]
}

/// Builds the rows of the memory table: measure, MiB per session, and the
/// ratio to the anchor where the two are comparable.
fn memory_rows(memory: &MemoryReport) -> Vec<[String; 3]> {
    let anchor = memory.anchor_pss_mib;
    vec![
        ["Host-side total: server RSS growth + session cgroup".into(), format!("{:.1}", memory.host_side_mib), ratio_cell(memory.host_side_mib, anchor)],
        ["`mayfly serve` RSS growth".into(), format!("{:.1}", memory.server_rss_mib), String::new()],
        ["Session memory cgroup".into(), format!("{:.1}", memory.cgroup_mib), String::new()],
        ["Cgroup part: anonymous pages".into(), format!("{:.1}", memory.cgroup_anon_mib), String::new()],
        ["Cgroup part: page cache and tmpfs".into(), format!("{:.1}", memory.cgroup_file_mib), String::new()],
        ["Cgroup part: kernel memory".into(), format!("{:.1}", memory.cgroup_kernel_mib), String::new()],
        [
            format!("PSS of the sandbox processes ({:.1} per session)", memory.processes_per_session),
            format!("{:.1}", memory.sandbox_pss_mib),
            ratio_cell(memory.sandbox_pss_mib, anchor),
        ],
        [format!("Bare Chromium, PSS of its {:.1} processes (anchor)", memory.anchor_processes), format!("{anchor:.1}"), "1.00".into()],
    ]
}

fn host_line(report: &BrowserReport) -> String {
    format!(
        "kernel {}, {} CPUs (nproc), {} MiB memory (MemTotal), cgroup {}, {}, {}",
        report.kernel, report.nproc, report.memory_total_mib, report.cgroup_version, report.chromium, report.date
    )
}

fn text_table(lines: &mut Vec<String>, rows: Vec<[String; 9]>, count_name: &str) {
    lines.push(format!("  {:<45}{:>7}{:>8}{:>10}{:>9}{:>9}{:>9}{:>15}{:>12}", "path", count_name, "failed", "median ms", "p90 ms", "p99 ms", "min ms", "median/anchor", "p99/anchor"));
    for [name, count, failed, median, p90, p99, min, median_ratio, p99_ratio] in rows {
        lines.push(format!("  {name:<45}{count:>7}{failed:>8}{median:>10}{p90:>9}{p99:>9}{min:>9}{median_ratio:>15}{p99_ratio:>12}"));
    }
}

/// Formats the report as plain text.
pub(super) fn format_text(report: &BrowserReport) -> String {
    let mut lines = Vec::new();
    if let Some(start) = &report.start {
        lines.push(format!("Create to first frame, alternating, after {} warm-up start each:", start.warmup_runs));
        text_table(&mut lines, start_rows(start), "runs");
    }
    if let Some(input) = &report.input {
        lines.push(format!("Key press to next frame, alternating, after {} warm-up key presses each:", input.warmup_keys));
        text_table(&mut lines, input_rows(input), "keys");
    }
    if let Some(stream) = &report.stream {
        lines.push(format!("Screencast of an animated page at {}x{}:", stream.width, stream.height));
        lines.push(format!("  {:<45}{:>8}{:>8}{:>10}{:>9}{:>15}{:>15}{:>15}", "path", "seconds", "frames", "frames/s", "KiB/s", "mean frame KiB", "fps/anchor", "bytes/anchor"));
        for [name, seconds, frames, fps, kib, mean, fps_ratio, bytes_ratio] in stream_rows(stream) {
            lines.push(format!("  {name:<45}{seconds:>8}{frames:>8}{fps:>10}{kib:>9}{mean:>15}{fps_ratio:>15}{bytes_ratio:>15}"));
        }
    }
    if let Some(memory) = &report.memory {
        lines.push(format!("Memory of {} idle browser sessions, {} s after the last showed its page, MiB per session:", memory.sessions, memory.settle_seconds));
        for [name, mib, ratio] in memory_rows(memory) {
            let ratio = if ratio.is_empty() { String::new() } else { format!("  ({ratio} x anchor)") };
            lines.push(format!("  {:<58}{mib:>8}{ratio}", name.replace('`', "")));
        }
        lines.push(format!("  Server RSS: {:.1} MiB before, {:.1} MiB after.", memory.server_rss_before_mib, memory.server_rss_after_mib));
    }
    for error in &report.errors {
        lines.push(format!("Failed: {error}"));
    }
    lines.push(format!("Host: {}", host_line(report)));
    lines.join("\n") + "\n"
}

/// Appends a paragraph and a Markdown table of `rows` under `header`.
fn markdown_table<const N: usize>(lines: &mut Vec<String>, intro: String, header: &str, rows: Vec<[String; N]>) {
    lines.extend([String::new(), intro, String::new(), header.to_string()]);
    lines.push(format!("|---|{}", "--:|".repeat(N - 1)));
    lines.extend(rows.iter().map(|row| format!("| {} |", row.join(" | "))));
}

/// Formats the report as a Markdown section for a benchmarks page.
pub(super) fn format_markdown(report: &BrowserReport) -> String {
    let mut lines = vec!["## Browser sessions: `mayfly bench --suite browser`".to_string(), String::new()];
    lines.push(format!("- Command: `{}`", report.command_line));
    lines.push(format!("- Date: {}", report.date));
    lines.push(format!("- Kernel: {}", report.kernel));
    lines.push(format!("- CPUs (`nproc`): {}", report.nproc));
    lines.push(format!("- Memory (`MemTotal`): {} MiB", report.memory_total_mib));
    lines.push(format!("- Cgroups: {}", report.cgroup_version));
    lines.push(format!("- Chromium: {}", report.chromium));
    lines.push(format!("- Anchor's user data directories: under {}", report.anchor_user_data));

    let time_header = |count: &str| format!("| Path | {count} | Failed | Median (ms) | p90 (ms) | p99 (ms) | Min (ms) | Median / anchor | p99 / anchor |");
    if let Some(start) = &report.start {
        let intro = format!("Create to first frame, alternating, after {} warm-up start each:", start.warmup_runs);
        markdown_table(&mut lines, intro, &time_header("Runs"), start_rows(start));
    }
    if let Some(input) = &report.input {
        let intro = format!("Key press to next frame, alternating, after {} warm-up key presses each:", input.warmup_keys);
        markdown_table(&mut lines, intro, &time_header("Key presses"), input_rows(input));
    }
    if let Some(stream) = &report.stream {
        let intro = format!("Screencast of an animated page at {}x{}:", stream.width, stream.height);
        let header = "| Path | Seconds | Frames | Frames/s | KiB/s | Mean frame (KiB) | Frames/s / anchor | Bytes/s / anchor |";
        markdown_table(&mut lines, intro, header, stream_rows(stream));
    }
    if let Some(memory) = &report.memory {
        let intro = format!(
            "Memory of {} idle browser sessions, read {} s after the last showed its page. The server's RSS went from {:.1} to {:.1} MiB.",
            memory.sessions, memory.settle_seconds, memory.server_rss_before_mib, memory.server_rss_after_mib
        );
        markdown_table(&mut lines, intro, "| Measure | MiB per session | Ratio to the anchor |", memory_rows(memory));
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

    fn stats(median_ms: f64) -> TimeStats {
        TimeStats { count: 10, median_ms, p90_ms: median_ms * 2.0, p99_ms: median_ms * 3.0, min_ms: median_ms / 2.0 }
    }

    fn sample_report() -> BrowserReport {
        BrowserReport {
            command_line: "mayfly bench --suite browser --runs 10".into(),
            date: "2024-02-29T12:34:56Z".into(),
            kernel: "6.1.0".into(),
            nproc: 2,
            memory_total_mib: 24_000,
            cgroup_version: "v1".into(),
            chromium: "HeadlessChrome/120.0".into(),
            anchor_user_data: "/dev/shm/mayfly-bench-browser-1".into(),
            start: Some(StartReport { warmup_runs: 1, mayfly: Some(stats(600.0)), mayfly_failed: 1, anchor: Some(stats(300.0)), anchor_failed: 0 }),
            input: Some(InputReport { warmup_keys: 5, mayfly: stats(20.0), anchor: stats(10.0) }),
            stream: Some(StreamReport {
                width: 1280,
                height: 720,
                mayfly: StreamStats { seconds: 10.0, frames: 200, bytes: 20 * 1024 * 1024 },
                anchor: StreamStats { seconds: 10.0, frames: 250, bytes: 25 * 1024 * 1024 },
            }),
            memory: Some(MemoryReport {
                sessions: 3,
                settle_seconds: 3,
                server_rss_before_mib: 30.0,
                server_rss_after_mib: 36.0,
                server_rss_mib: 2.0,
                cgroup_mib: 198.0,
                cgroup_anon_mib: 100.0,
                cgroup_file_mib: 80.0,
                cgroup_kernel_mib: 18.0,
                host_side_mib: 200.0,
                sandbox_pss_mib: 150.0,
                processes_per_session: 6.0,
                anchor_pss_mib: 100.0,
                anchor_processes: 5.0,
            }),
            errors: Vec::new(),
        }
    }

    #[test]
    fn time_stats_from_samples() {
        let samples: Vec<Duration> = (1..=100).map(Duration::from_millis).collect();
        let stats = TimeStats::from_sorted(&samples).expect("stats of 100 samples");
        assert_eq!(stats.count, 100);
        assert_eq!(stats.median_ms, 50.5);
        assert_eq!(stats.p90_ms, 90.0);
        assert_eq!(stats.p99_ms, 99.0);
        assert_eq!(stats.min_ms, 1.0);
        assert_eq!(TimeStats::from_sorted(&[]), None);
    }

    #[test]
    fn stream_stats_rates() {
        let stats = StreamStats { seconds: 4.0, frames: 100, bytes: 800 };
        assert_eq!(stats.frames_per_second(), 25.0);
        assert_eq!(stats.bytes_per_second(), 200.0);
        assert_eq!(stats.mean_frame_bytes(), 8.0);
        assert_eq!(StreamStats { seconds: 1.0, frames: 0, bytes: 0 }.mean_frame_bytes(), 0.0);
    }

    #[test]
    fn markdown_has_tables_and_ratios() {
        let markdown = format_markdown(&sample_report());
        assert!(markdown.contains("- Command: `mayfly bench --suite browser --runs 10`"), "{markdown}");
        assert!(markdown.contains(&format!("| {MAYFLY_ROW} | 10 | 1 | 600.0 | 1200.0 | 1800.0 | 300.0 | 2.00 | 2.00 |")), "{markdown}");
        assert!(markdown.contains(&format!("| {ANCHOR_ROW} | 10 | 0 | 10.0 | 20.0 | 30.0 | 5.0 | 1.00 | 1.00 |")), "{markdown}");
        assert!(markdown.contains(&format!("| {MAYFLY_ROW} | 10.0 | 200 | 20.0 | 2048 | 102.4 | 0.80 | 0.80 |")), "{markdown}");
        assert!(markdown.contains("| Host-side total: server RSS growth + session cgroup | 200.0 | 2.00 |"), "{markdown}");
        assert!(markdown.contains("|---|--:|--:|--:|--:|--:|--:|--:|--:|"), "{markdown}");
        assert!(!markdown.contains("Failed:"), "{markdown}");
    }

    #[test]
    fn text_lists_failed_phases() {
        let report = BrowserReport { start: None, stream: None, errors: vec!["the server did not start".into()], ..sample_report() };
        let text = format_text(&report);
        assert!(text.contains("Failed: the server did not start"), "{text}");
        assert!(!text.contains("Create to first frame"), "{text}");
        assert!(text.contains("Key press to next frame"), "{text}");
        assert!(text.contains("HeadlessChrome/120.0"), "{text}");
    }

    #[test]
    fn missing_start_stats_show_dashes() {
        let start = StartReport { warmup_runs: 1, mayfly: None, mayfly_failed: 10, anchor: Some(stats(300.0)), anchor_failed: 0 };
        let rows = start_rows(&start);
        assert_eq!(rows[0][1], "0");
        assert_eq!(rows[0][2], "10");
        assert_eq!(rows[0][3], "-");
        assert_eq!(rows[0][7], "-");
    }
}
