//! The browser part of `mayfly bench --suite pool`: from a browser
//! session's start to its first screencast frame, warm against cold, and
//! the memory of an idle browser pool member.
//!
//! A cold start prepares the sandbox, starts Chromium and attaches the
//! driver. A warm start claims a member whose Chromium has run on
//! about:blank for [`SETTLE`], as a pool member waits, so the claim only
//! attaches the driver, which starts the screencast. Both use the built-in
//! `browser` profile and the server's Chromium command line.

use std::sync::mpsc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use mayfly_browser::cdp::Connection;
use mayfly_browser::Browser;
use mayfly_control::sessions::browser::{chromium_argv, chromium_environment};
use mayfly_core::profile::BUILT_IN;
use mayfly_core::Profile;
use mayfly_sandbox::cgroup::{CgroupLimits, Layout};
use mayfly_sandbox::session::{self, BeforeStart, SessionConfig, SessionControl, StartGuard};
use mayfly_sandbox::spec::{BindMount, Command, LandlockMode};

use super::memory::{mebibytes, process_pss_bytes, SessionMemory};
use super::pool_starts::Side;

/// Iterations per side at most: each browser start takes a good part of a second.
pub(super) const MAX_BROWSER_RUNS: u32 = 20;
pub(super) const WARMUP_RUNS: u32 = 1;
/// How long a warm member's Chromium runs before its claim.
const SETTLE: Duration = Duration::from_millis(1500);
const FIRST_FRAME_TIMEOUT: Duration = Duration::from_secs(30);

/// The memory of idle browser members, averaged over those measured.
#[derive(Debug, serde::Serialize, Default)]
pub(super) struct BrowserMemberMemory {
    pub(super) members: usize,
    pub(super) cgroup_mib: f64,
    pub(super) processes_pss_mib: f64,
}

fn profile() -> Profile {
    let text = BUILT_IN.iter().find(|(n, _)| *n == "browser").expect("a built-in browser profile").1;
    Profile::parse("browser", text).expect("built-in profiles parse")
}

/// Returns Chromium's command for the profile, as the server starts it.
fn command(profile: &Profile) -> Command {
    let settings = profile.browser.as_ref().expect("browser profiles have browser settings");
    let mut env: Vec<(String, String)> = profile.environment.clone().into_iter().collect();
    env.extend(chromium_environment(profile, settings));
    Command { argv: chromium_argv(profile, settings), env }
}

fn config(profile: &Profile, id: &str, state_dir: &std::path::Path, control: SessionControl, hook: BeforeStart) -> SessionConfig {
    let limits = &profile.limits;
    let command = command(profile);
    SessionConfig {
        session_id: id.to_string(),
        state_dir: state_dir.to_path_buf(),
        argv: command.argv,
        env: command.env,
        hostname: profile.hostname.clone(),
        timezone: profile.timezone.clone(),
        ttl: Duration::from_secs(120),
        limits: CgroupLimits { memory_bytes: limits.memory.as_bytes(), cpu_millis: limits.cpu_millis, pids: limits.pids },
        tmp_bytes: limits.tmp.as_bytes(),
        shm_bytes: limits.shm.as_bytes(),
        work_bytes: limits.work.as_bytes(),
        open_files: limits.open_files,
        inputs: Vec::new(),
        artifacts: None,
        mounts: profile.mounts.iter().map(|m| BindMount { source: m.source.clone(), target: m.target.clone() }).collect(),
        landlock: LandlockMode::IfAvailable,
        forward_signals: false,
        control: Some(control),
        terminal: None,
        command_pipes: true,
        before_start: Some(hook),
    }
}

/// Stops the driver when the session ends.
struct Abort(tokio::task::JoinHandle<()>);

impl Drop for Abort {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Returns the hook that attaches the driver and sends the time of the
/// first frame, or the error, on `sender`. The driver opens the profile's
/// start page after the claim, as the server's driver does.
fn first_frame_hook(runtime: tokio::runtime::Handle, profile: &Profile, sender: mpsc::Sender<Result<Instant, String>>) -> BeforeStart {
    let settings = profile.browser.clone().expect("browser profiles have browser settings");
    BeforeStart(Box::new(move |start| {
        let pipes = start.command_pipes.ok_or("the browser session has no DevTools pipe")?;
        let connection = Connection::start(pipes.to_command, pipes.from_command);
        let options = mayfly_browser::Options { width: settings.width, height: settings.height, locale: settings.locale.clone(), start_url: Some(settings.start_url.clone()), files: mayfly_control::sessions::browser::file_settings(&settings.transfer) };
        let task = runtime.spawn(async move {
            let browser = match Browser::start(connection, options, Arc::new(|_| {})).await {
                Ok(browser) => browser,
                Err(error) => {
                    let _ = sender.send(Err(format!("the driver could not attach: {error}")));
                    return;
                }
            };
            let mut frames = browser.frames();
            while frames.borrow_and_update().is_none() {
                if frames.changed().await.is_err() {
                    let _ = sender.send(Err("the driver stopped before the first frame".into()));
                    return;
                }
            }
            let _ = sender.send(Ok(Instant::now()));
            // The browser stays attached until the session ends.
            std::future::pending::<()>().await;
        });
        Ok(Box::new(Abort(task)) as StartGuard)
    }))
}

/// Runs one session on its own thread with `run`, waits for its first
/// frame, then destroys it. Returns the time from `started` to the frame.
fn time_first_frame(
    run: impl FnOnce(SessionControl) -> Result<session::SessionOutcome, session::SessionError> + Send + 'static,
    receiver: mpsc::Receiver<Result<Instant, String>>,
) -> Result<Duration, String> {
    let control = SessionControl::default();
    let started = Instant::now();
    let thread_control = control.clone();
    let thread = std::thread::spawn(move || run(thread_control));
    let frame = receiver.recv_timeout(FIRST_FRAME_TIMEOUT).map_err(|_| "no frame arrived".to_string()).and_then(|r| r);
    control.destroy("the bench has its first frame");
    let outcome = thread.join().map_err(|_| "the session thread panicked".to_string())?.map_err(|e| e.to_string())?;
    if !outcome.teardown.clean {
        return Err(format!("session {} left something behind: {:?}", outcome.session_id, outcome.teardown));
    }
    Ok(frame?.saturating_duration_since(started))
}

fn cold(runtime: &tokio::runtime::Runtime, layout: &'static Layout, profile: &Profile, id: String, state_dir: &std::path::Path) -> Result<Duration, String> {
    let (sender, receiver) = mpsc::channel();
    let hook = first_frame_hook(runtime.handle().clone(), profile, sender);
    let (profile, state_dir) = (profile.clone(), state_dir.to_path_buf());
    time_first_frame(
        move |control| session::run(config(&profile, &id, &state_dir, control, hook), layout, None, Box::new(std::io::sink()), Box::new(std::io::sink())),
        receiver,
    )
}

/// Prepares a member with Chromium started, lets it settle, reads its
/// memory into `memory`, then times its claim to the first frame.
fn warm(runtime: &tokio::runtime::Runtime, layout: &'static Layout, profile: &Profile, id: String, state_dir: &std::path::Path, memory: &mut Vec<(u64, u64)>) -> Result<Duration, String> {
    let (sender, receiver) = mpsc::channel();
    let hook = first_frame_hook(runtime.handle().clone(), profile, sender);
    let (mut member_config, claim_config) = config(profile, &id, state_dir, SessionControl::default(), hook).split();
    member_config.pool_member = true;
    member_config.max_unclaimed = Duration::from_secs(300);
    member_config.prestart = Some(command(profile));
    let mut member = session::prepare(member_config, layout).map_err(|e| e.to_string())?;
    member.wait_ready(FIRST_FRAME_TIMEOUT)?;
    std::thread::sleep(SETTLE);
    let read = SessionMemory::find(layout, member.id()).and_then(|m| {
        let pss: u64 = m.pids()?.into_iter().map(process_pss_bytes).sum::<Result<u64, String>>()?;
        Ok((m.read()?.usage, pss))
    });
    if let Ok(reading) = read {
        memory.push(reading);
    }
    time_first_frame(
        move |control| {
            let mut claim_config = claim_config;
            claim_config.control = Some(control);
            member.claim(claim_config, None, Box::new(std::io::sink()), Box::new(std::io::sink()))
        },
        receiver,
    )
}

/// Measures browser starts, warm and cold in turn, and the memory of the
/// idle warm members.
pub(super) fn measure(layout: &'static Layout, state_dir: &std::path::Path, runs: u32) -> (Vec<Side>, BrowserMemberMemory) {
    let profile = profile();
    let (mut warm_side, mut cold_side) = (Side::new("browser", "warm"), Side::new("browser", "cold"));
    let mut memory = Vec::new();
    let runtime = match tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build() {
        Ok(runtime) => runtime,
        Err(error) => {
            warm_side.record(Err(format!("cannot start the driver's runtime: {error}")), true);
            return (vec![warm_side.finish(), cold_side.finish()], BrowserMemberMemory::default());
        }
    };
    for iteration in 0..(WARMUP_RUNS + runs) as usize {
        let measured = iteration >= WARMUP_RUNS as usize;
        let warm_id = format!("p-bench-browser-{}-{iteration}", std::process::id());
        let cold_id = format!("s-bench-browser-{}-{iteration}", std::process::id());
        if iteration % 2 == 0 {
            warm_side.record(warm(&runtime, layout, &profile, warm_id, state_dir, &mut memory), measured);
            cold_side.record(cold(&runtime, layout, &profile, cold_id, state_dir), measured);
        } else {
            cold_side.record(cold(&runtime, layout, &profile, cold_id, state_dir), measured);
            warm_side.record(warm(&runtime, layout, &profile, warm_id, state_dir, &mut memory), measured);
        }
    }
    let count = memory.len().max(1) as f64;
    let member_memory = BrowserMemberMemory {
        members: memory.len(),
        cgroup_mib: mebibytes(memory.iter().map(|(usage, _)| *usage).sum::<u64>() as f64 / count),
        processes_pss_mib: mebibytes(memory.iter().map(|(_, pss)| *pss).sum::<u64>() as f64 / count),
    };
    (vec![warm_side.finish(), cold_side.finish()], member_memory)
}
