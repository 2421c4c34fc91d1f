//! `mayfly bench --suite browser`: browser sessions of a private
//! `mayfly serve` beside the same Chromium started bare on the host. It
//! measures create to first frame, key press to frame, the screencast's
//! frames and bytes per second on an animated page, and the host memory of
//! idle browser sessions. Every page comes from a loopback origin that the
//! bench serves; see `browser_origin.rs`.

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use mayfly_core::Profile;
use mayfly_sandbox::cgroup::Layout;

use super::browser_anchor::{AnchorBrowser, AnchorCommand};
use super::browser_origin::{Origin, ANIMATION_PATH, COUNTER_PATH, STATIC_PATH};
use super::browser_report::{format_markdown, format_text, BrowserReport, InputReport, MemoryReport, StartReport, StreamReport, TimeStats};
use super::browser_screen::{count_frames, first_frame, time_key, wait_quiet, AnchorScreen, Screen};
use super::browser_viewer::Viewer;
use super::memory::{mebibytes, parse_kib_field, process_pss_bytes, process_rss_bytes, CgroupMemory, SessionMemory};
use super::server::{mayfly_executable, start_server, BenchDir, Server, Target, RAISED_LIMITS};
use super::session_requests::Sessions;
use super::shell::shell_quote;
use super::utc::format_utc;
use crate::cli::BenchArgs;

/// Maximum `--runs` for this suite, because each run starts two browsers.
const MAX_STARTS: u32 = 100;
/// Unmeasured starts of each side before the measured ones, so that the
/// first start's disk reads count for neither.
const WARMUP_STARTS: u32 = 1;
/// Maximum wait from a create or a spawn to the first frame.
const FIRST_FRAME_TIMEOUT: Duration = Duration::from_secs(30);
/// Measured key presses on each side, and unmeasured ones before them.
const KEY_PRESSES: u32 = 100;
const WARMUP_KEYS: u32 = 5;
/// Frame-free time after a new page's first frame before the first key press.
const PAGE_QUIET: Duration = Duration::from_secs(1);
/// Frame-free time before each key press.
const KEY_QUIET: Duration = Duration::from_millis(100);
/// Uncounted and counted time on the animated page.
const STREAM_WARMUP: Duration = Duration::from_secs(2);
const STREAM_TIME: Duration = Duration::from_secs(10);
/// Idle browser sessions, and bare Chromiums, whose memory is measured.
const IDLE_SESSIONS: usize = 3;
/// Time after the last session showed its page before the memory is read.
const SETTLE: Duration = Duration::from_secs(3);
/// The viewport of every page, in CSS pixels.
const WIDTH: u32 = 1280;
const HEIGHT: u32 = 720;
/// Capacity high enough for the sessions of this bench on a small host. A
/// browser session reserves 2 CPUs and 2 GiB, far more than an idle one uses.
const MEASURE_CAPACITY: &str = "[capacity]\ncpus = 1000\nsessions = 1000\nmemory = \"1TiB\"\n";

/// The names of the bench's profiles and the origin path each opens.
const PROFILES: [(&str, &str); 3] = [("bench-browser-static", STATIC_PATH), ("bench-browser-counter", COUNTER_PATH), ("bench-browser-animation", ANIMATION_PATH)];

/// Returns the built-in browser profile with `start_url`, a 1280x720
/// viewport and, when `allow_port` is set, egress through the session's
/// proxy to that port of 127.0.0.1 only.
fn profile_text(start_url: &str, allow_port: Option<u16>) -> String {
    let base = include_str!("../../../mayfly-core/profiles/browser.toml");
    let base = base
        .replace("start_url = \"about:blank\"", &format!("start_url = \"{start_url}\""))
        .replace("width = 1280", &format!("width = {WIDTH}"))
        .replace("height = 800", &format!("height = {HEIGHT}"));
    match allow_port {
        Some(port) => format!("{base}\n[network]\negress = \"proxy\"\nallow = [\"127.0.0.1:{port}\"]\n"),
        None => base,
    }
}

/// Parses a profile text and checks that the edits of `profile_text` took.
fn parse_profile(name: &str, text: &str, start_url: &str) -> Result<Profile, String> {
    let profile = Profile::parse(name, text).map_err(|e| format!("the bench's profile {name} is invalid: {e}"))?;
    let settings = profile.browser.as_ref().ok_or_else(|| format!("the bench's profile {name} has no [browser] section"))?;
    if settings.start_url != start_url || settings.width != WIDTH || settings.height != HEIGHT {
        return Err(format!("the bench's profile {name} did not get start_url {start_url} and {WIDTH}x{HEIGHT}; the built-in browser profile changed"));
    }
    Ok(profile)
}

/// The profiles of one run: written for the server, and the anchor's
/// command for each page.
struct Pages {
    profiles_dir: PathBuf,
    anchors: Vec<AnchorCommand>,
}

impl Pages {
    fn write(dir: &Path, origin: &Origin) -> Result<Pages, String> {
        let profiles_dir = dir.join("profiles");
        std::fs::create_dir_all(&profiles_dir).map_err(|e| format!("cannot create {}: {e}", profiles_dir.display()))?;
        let mut anchors = Vec::new();
        for (name, path) in PROFILES {
            let url = origin.url(path);
            let text = profile_text(&url, Some(origin.port()));
            parse_profile(name, &text, &url)?;
            let file = profiles_dir.join(format!("{name}.toml"));
            std::fs::write(&file, text).map_err(|e| format!("cannot write {}: {e}", file.display()))?;
            anchors.push(AnchorCommand::new(&parse_profile(name, &profile_text(&url, None), &url)?)?);
        }
        Ok(Pages { profiles_dir, anchors })
    }

    fn anchor(&self, index: usize) -> &AnchorCommand {
        &self.anchors[index]
    }
}

const STATIC: usize = 0;
const COUNTER: usize = 1;
const ANIMATION: usize = 2;

/// The tmpfs for the anchor's user data directories. A browser session keeps
/// its user data on the sandbox's `/work` tmpfs, so the anchor keeps it in
/// memory too rather than on the bench directory's file system.
const ANCHOR_TMPFS: &str = "/dev/shm";

/// Hands out fresh user data directories for the anchor's Chromiums.
struct AnchorDirs {
    base: BenchDir,
    next: u32,
}

impl AnchorDirs {
    /// Creates the base directory in `ANCHOR_TMPFS`, or in `bench_dir` on a
    /// host without it.
    fn create(bench_dir: &Path) -> Result<AnchorDirs, String> {
        let tmpfs = Path::new(ANCHOR_TMPFS);
        let base = if tmpfs.is_dir() { tmpfs.join(format!("mayfly-bench-browser-{}", std::process::id())) } else { bench_dir.join("anchors") };
        Ok(AnchorDirs { base: BenchDir::create(base)?, next: 0 })
    }

    fn next(&mut self) -> PathBuf {
        self.next += 1;
        self.base.path().join(format!("anchor-{}", self.next))
    }
}

/// Creates a session of `profile`, attaches to it and returns the time from
/// the create request to the first frame. Deletes the session, untimed.
async fn time_session_start(target: &Target, profile: &str) -> Result<Duration, String> {
    let mut sessions = Sessions::new(target.clone(), profile);
    let started = Instant::now();
    let created = sessions.create_one()?;
    let mut viewer = Viewer::attach(target, &created.id, &created.attach_token).await?;
    let frame = first_frame(&mut viewer, FIRST_FRAME_TIMEOUT).await;
    let elapsed = started.elapsed();
    viewer.close().await;
    sessions.delete_all()?;
    frame.map(|()| elapsed)
}

/// Starts a bare Chromium and returns the time from its spawn to the first
/// frame. Stops it, untimed.
async fn time_anchor_start(command: &AnchorCommand, user_data_dir: PathBuf) -> Result<(Duration, String), String> {
    let started = Instant::now();
    let mut screen = AnchorScreen::new(AnchorBrowser::start(command, user_data_dir).await?);
    let frame = first_frame(&mut screen, FIRST_FRAME_TIMEOUT).await;
    let elapsed = started.elapsed();
    let version = screen.anchor.version().await.unwrap_or_else(|e| format!("unknown ({e})"));
    screen.anchor.stop().await;
    frame.map(|()| (elapsed, version))
}

/// Times create to first frame `runs` times on each side, alternating which
/// goes first. Failed runs are counted and their first error kept.
async fn measure_start(target: &Target, pages: &Pages, dirs: &mut AnchorDirs, runs: u32, report: &mut BrowserReport) -> StartReport {
    let (mut mayfly, mut anchor) = (Vec::new(), Vec::new());
    let (mut mayfly_failed, mut anchor_failed) = (0, 0);
    for iteration in 0..WARMUP_STARTS + runs {
        let measured = iteration >= WARMUP_STARTS;
        for side in [iteration % 2, 1 - iteration % 2] {
            if side == 0 {
                match time_session_start(target, PROFILES[STATIC].0).await {
                    Ok(time) if measured => mayfly.push(time),
                    Ok(_) => {}
                    Err(error) => {
                        mayfly_failed += usize::from(measured);
                        report.errors.push(format!("create to first frame, browser session: {error}"));
                    }
                }
            } else {
                match time_anchor_start(pages.anchor(STATIC), dirs.next()).await {
                    Ok((time, version)) => {
                        report.chromium = version;
                        if measured {
                            anchor.push(time);
                        }
                    }
                    Err(error) => {
                        anchor_failed += usize::from(measured);
                        report.errors.push(format!("create to first frame, bare Chromium: {error}"));
                    }
                }
            }
        }
    }
    mayfly.sort();
    anchor.sort();
    StartReport { warmup_runs: WARMUP_STARTS, mayfly: TimeStats::from_sorted(&mayfly), mayfly_failed, anchor: TimeStats::from_sorted(&anchor), anchor_failed }
}

/// Times key presses on the counter page in one session and one bare
/// Chromium, alternating key by key.
async fn measure_input(target: &Target, pages: &Pages, dirs: &mut AnchorDirs) -> Result<InputReport, String> {
    let mut sessions = Sessions::new(target.clone(), PROFILES[COUNTER].0);
    let created = sessions.create_one()?;
    let mut viewer = Viewer::attach(target, &created.id, &created.attach_token).await?;
    first_frame(&mut viewer, FIRST_FRAME_TIMEOUT).await?;
    wait_quiet(&mut viewer, PAGE_QUIET).await?;
    let mut anchor = AnchorScreen::new(AnchorBrowser::start(pages.anchor(COUNTER), dirs.next()).await?);
    first_frame(&mut anchor, FIRST_FRAME_TIMEOUT).await?;
    wait_quiet(&mut anchor, PAGE_QUIET).await?;

    let (mut mayfly_times, mut anchor_times) = (Vec::new(), Vec::new());
    for iteration in 0..WARMUP_KEYS + KEY_PRESSES {
        let session_first = iteration % 2 == 0;
        let (mut session_time, mut anchor_time) = (Duration::ZERO, Duration::ZERO);
        for anchor_turn in [!session_first, session_first] {
            if anchor_turn {
                anchor_time = key_after_quiet(&mut anchor).await.map_err(|e| format!("bare Chromium: {e}"))?;
            } else {
                session_time = key_after_quiet(&mut viewer).await.map_err(|e| format!("browser session {}: {e}", created.id))?;
            }
        }
        if iteration >= WARMUP_KEYS {
            mayfly_times.push(session_time);
            anchor_times.push(anchor_time);
        }
    }
    viewer.close().await;
    anchor.anchor.stop().await;
    sessions.delete_all()?;

    mayfly_times.sort();
    anchor_times.sort();
    let missing = || "no key presses were measured".to_string();
    Ok(InputReport {
        warmup_keys: WARMUP_KEYS,
        mayfly: TimeStats::from_sorted(&mayfly_times).ok_or_else(missing)?,
        anchor: TimeStats::from_sorted(&anchor_times).ok_or_else(missing)?,
    })
}

/// Waits for `KEY_QUIET` without frames, then times one key press.
async fn key_after_quiet(screen: &mut impl Screen) -> Result<Duration, String> {
    wait_quiet(screen, KEY_QUIET).await?;
    time_key(screen).await
}

/// Counts the frames of the animated page in one session, then in one bare
/// Chromium, each alone on the machine.
async fn measure_stream(target: &Target, pages: &Pages, dirs: &mut AnchorDirs) -> Result<StreamReport, String> {
    let mut sessions = Sessions::new(target.clone(), PROFILES[ANIMATION].0);
    let created = sessions.create_one()?;
    let mut viewer = Viewer::attach(target, &created.id, &created.attach_token).await?;
    first_frame(&mut viewer, FIRST_FRAME_TIMEOUT).await?;
    let mayfly = count_frames(&mut viewer, STREAM_WARMUP, STREAM_TIME).await.map_err(|e| format!("browser session {}: {e}", created.id))?;
    viewer.close().await;
    sessions.delete_all()?;

    let mut anchor = AnchorScreen::new(AnchorBrowser::start(pages.anchor(ANIMATION), dirs.next()).await?);
    first_frame(&mut anchor, FIRST_FRAME_TIMEOUT).await?;
    let anchor_stats = count_frames(&mut anchor, STREAM_WARMUP, STREAM_TIME).await.map_err(|e| format!("bare Chromium: {e}"))?;
    anchor.anchor.stop().await;
    Ok(StreamReport { width: WIDTH, height: HEIGHT, mayfly, anchor: anchor_stats })
}

/// Returns the summed PSS in bytes of an anchor's processes and their number.
fn anchor_pss(anchor: &AnchorBrowser) -> Result<(u64, usize), String> {
    let processes = anchor.processes();
    let mut total = 0;
    for pid in &processes {
        total += process_pss_bytes(*pid)?;
    }
    Ok((total, processes.len()))
}

/// Returns the mean summed PSS in bytes of `IDLE_SESSIONS` bare Chromiums on
/// the static page, running at once, and their mean number of processes.
async fn anchor_memory(pages: &Pages, dirs: &mut AnchorDirs) -> Result<(f64, f64), String> {
    let mut anchors = Vec::new();
    for _ in 0..IDLE_SESSIONS {
        let mut screen = AnchorScreen::new(AnchorBrowser::start(pages.anchor(STATIC), dirs.next()).await?);
        first_frame(&mut screen, FIRST_FRAME_TIMEOUT).await?;
        anchors.push(screen);
    }
    tokio::time::sleep(SETTLE).await;
    let (mut pss, mut processes) = (0, 0);
    for screen in &anchors {
        let (bytes, count) = anchor_pss(&screen.anchor)?;
        pss += bytes;
        processes += count;
    }
    for screen in anchors {
        screen.anchor.stop().await;
    }
    Ok((pss as f64 / IDLE_SESSIONS as f64, processes as f64 / IDLE_SESSIONS as f64))
}

/// Measures the host-side memory of `IDLE_SESSIONS` idle browser sessions
/// on the static page, after as many bare Chromiums.
async fn measure_memory(server: &Server, layout: &Layout, pages: &Pages, dirs: &mut AnchorDirs) -> Result<MemoryReport, String> {
    let (anchor_pss, anchor_processes) = anchor_memory(pages, dirs).await?;

    let target = server.target();
    let rss_before = process_rss_bytes(server.pid())?;
    let mut sessions = Sessions::new(target.clone(), PROFILES[STATIC].0);
    for _ in 0..IDLE_SESSIONS {
        let created = sessions.create_one()?;
        // A viewer attaches until the first frame, so each page has loaded.
        let mut viewer = Viewer::attach(&target, &created.id, &created.attach_token).await?;
        first_frame(&mut viewer, FIRST_FRAME_TIMEOUT).await?;
        viewer.close().await;
    }
    tokio::time::sleep(SETTLE).await;
    let rss_after = process_rss_bytes(server.pid())?;
    let (mut cgroup_total, mut pss_total, mut processes) = (CgroupMemory::default(), 0u64, 0usize);
    for id in sessions.ids() {
        let memory = SessionMemory::find(layout, id)?;
        let charged = memory.read()?;
        cgroup_total.usage += charged.usage;
        cgroup_total.anon += charged.anon;
        cgroup_total.file += charged.file;
        cgroup_total.kernel += charged.kernel;
        for pid in memory.pids()? {
            pss_total += process_pss_bytes(pid)?;
            processes += 1;
        }
    }
    sessions.delete_all()?;

    let per_session = |bytes: f64| mebibytes(bytes / IDLE_SESSIONS as f64);
    let server_rss_mib = per_session(rss_after as f64 - rss_before as f64);
    let cgroup_mib = per_session(cgroup_total.usage as f64);
    Ok(MemoryReport {
        sessions: IDLE_SESSIONS,
        settle_seconds: SETTLE.as_secs(),
        server_rss_before_mib: mebibytes(rss_before as f64),
        server_rss_after_mib: mebibytes(rss_after as f64),
        server_rss_mib,
        cgroup_mib,
        cgroup_anon_mib: per_session(cgroup_total.anon as f64),
        cgroup_file_mib: per_session(cgroup_total.file as f64),
        cgroup_kernel_mib: per_session(cgroup_total.kernel as f64),
        host_side_mib: server_rss_mib + cgroup_mib,
        sandbox_pss_mib: per_session(pss_total as f64),
        processes_per_session: processes as f64 / IDLE_SESSIONS as f64,
        anchor_pss_mib: mebibytes(anchor_pss),
        anchor_processes,
    })
}

/// Runs the four phases. A phase that fails leaves its section empty and
/// adds its error, and the phases after it still run.
async fn run_phases(server: &Server, layout: &Layout, pages: &Pages, dirs: &mut AnchorDirs, runs: u32, report: &mut BrowserReport) {
    let target = server.target();
    report.start = Some(measure_start(&target, pages, dirs, runs, report).await);
    match measure_input(&target, pages, dirs).await {
        Ok(input) => report.input = Some(input),
        Err(error) => report.errors.push(format!("key press to frame: {error}")),
    }
    match measure_stream(&target, pages, dirs).await {
        Ok(stream) => report.stream = Some(stream),
        Err(error) => report.errors.push(format!("frames per second: {error}")),
    }
    match measure_memory(server, layout, pages, dirs).await {
        Ok(memory) => report.memory = Some(memory),
        Err(error) => report.errors.push(format!("memory: {error}")),
    }
}

/// Returns a report of this host with no results yet.
fn empty_report() -> BrowserReport {
    BrowserReport {
        command_line: std::env::args().map(|arg| shell_quote(&arg)).collect::<Vec<_>>().join(" "),
        date: format_utc(SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)),
        kernel: std::fs::read_to_string("/proc/sys/kernel/osrelease").map(|s| s.trim().to_string()).unwrap_or_else(|e| format!("unknown ({e})")),
        nproc: super::nproc(),
        memory_total_mib: std::fs::read_to_string("/proc/meminfo").ok().and_then(|text| parse_kib_field(&text, "MemTotal:")).unwrap_or(0) >> 20,
        cgroup_version: "unknown".into(),
        chromium: "unknown".into(),
        anchor_user_data: String::new(),
        start: None,
        input: None,
        stream: None,
        memory: None,
        errors: Vec::new(),
    }
}

/// Starts the origin, writes the profiles, starts the server and runs the
/// phases. Everything started here stops when this returns.
fn run(executable: &Path, dir: &Path, runs: u32) -> BrowserReport {
    let mut report = empty_report();
    let layout = match Layout::detect() {
        Ok(layout) => layout,
        Err(error) => {
            report.errors.push(error.to_string());
            return report;
        }
    };
    report.cgroup_version = match layout {
        Layout::V1 { .. } => "v1".into(),
        Layout::V2 { .. } => "v2".into(),
    };

    let runtime = match tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build() {
        Ok(runtime) => runtime,
        Err(error) => {
            report.errors.push(format!("cannot start the async runtime: {error}"));
            return report;
        }
    };
    let prepared = Origin::start().and_then(|origin| {
        let pages = Pages::write(dir, &origin)?;
        let server_dir = dir.join("server");
        std::fs::create_dir_all(&server_dir).map_err(|e| format!("cannot create {}: {e}", server_dir.display()))?;
        let config = format!("{RAISED_LIMITS}{MEASURE_CAPACITY}");
        let server = start_server(executable, &server_dir, &config, &[OsStr::new("--profiles-dir"), pages.profiles_dir.as_os_str()])?;
        Ok((origin, pages, server))
    });
    let (origin, pages, server) = match prepared {
        Ok(prepared) => prepared,
        Err(error) => {
            report.errors.push(error);
            return report;
        }
    };
    let mut dirs = match AnchorDirs::create(dir) {
        Ok(dirs) => dirs,
        Err(error) => {
            report.errors.push(error);
            return report;
        }
    };
    report.anchor_user_data = dirs.base.path().display().to_string();

    runtime.block_on(run_phases(&server, &layout, &pages, &mut dirs, runs, &mut report));
    drop(server);
    drop(origin);
    report
}

fn validate_runs(runs: u32) -> Result<(), String> {
    if runs <= MAX_STARTS {
        Ok(())
    } else {
        Err(format!("--runs {runs} is too many for the browser suite, which starts two browsers per run: use 1 to {MAX_STARTS}"))
    }
}

pub(super) fn main(args: &BenchArgs) -> i32 {
    if let Err(message) = validate_runs(args.runs) {
        eprintln!("mayfly: {message}");
        return mayfly_core::ExitCode::USAGE;
    }
    if !nix::unistd::geteuid().is_root() {
        eprintln!("mayfly: warning: not running as root. `mayfly serve` needs root to start sandboxes, so the browser bench will fail.");
    }
    let prepared = mayfly_executable().and_then(|executable| Ok((executable, BenchDir::create(args.state_dir.join("bench-browser"))?)));
    let (executable, dir) = match prepared {
        Ok(prepared) => prepared,
        Err(error) => {
            eprintln!("mayfly: {error}");
            return 1;
        }
    };
    let report = run(&executable, dir.path(), args.runs);
    drop(dir);

    super::publish(args, &report, !report.errors.is_empty(), format_text(&report), format_markdown(&report))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn profile_text_sets_page_and_egress() {
        let url = "http://127.0.0.1:8123/static";
        let profile = parse_profile("bench-browser-static", &profile_text(url, Some(8123)), url).expect("the session profile parses");
        assert_eq!(profile.network.egress, mayfly_core::egress::EgressMode::Proxy);
        let anchor = parse_profile("bench-browser-static", &profile_text(url, None), url).expect("the anchor profile parses");
        assert_eq!(anchor.network.egress, mayfly_core::egress::EgressMode::None);
    }

    #[test]
    fn anchor_command_has_no_proxy() {
        let url = "http://127.0.0.1:8123/static";
        let anchor = parse_profile("bench-browser-static", &profile_text(url, None), url).expect("the anchor profile parses");
        assert!(AnchorCommand::new(&anchor).is_ok());
        let session = parse_profile("bench-browser-static", &profile_text(url, Some(8123)), url).expect("the session profile parses");
        assert!(AnchorCommand::new(&session).is_err());
    }

    #[test]
    fn runs_bounds() {
        assert!(validate_runs(1).is_ok());
        assert!(validate_runs(MAX_STARTS).is_ok());
        assert!(validate_runs(MAX_STARTS + 1).is_err());
    }
}
