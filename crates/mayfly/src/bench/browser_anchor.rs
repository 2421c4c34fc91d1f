//! The browser bench's anchor: the Chromium binary of browser sessions with
//! the same flags, started directly on the host outside any sandbox and
//! driven by the same DevTools driver over a pipe pair at descriptors 3
//! and 4. It has no proxy and opens only the bench's loopback origin.

use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use mayfly_browser::cdp::Connection;
use mayfly_browser::{Browser, Input};
use mayfly_core::Profile;
use mayfly_control::sessions::browser::{chromium_argv, chromium_environment};
use serde_json::{json, Value};

/// Maximum wait for Chromium to exit after `Browser.close` before the bench
/// kills its process group.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(5);
/// Maximum wait for the killed process group to be gone.
const KILL_TIMEOUT: Duration = Duration::from_secs(5);

/// Chromium's command line and environment for the anchor, with
/// `USER_DATA_DIR` to be replaced by a directory of each start.
pub(super) struct AnchorCommand {
    argv: Vec<String>,
    env: Vec<(String, String)>,
    width: u32,
    height: u32,
    locale: String,
    /// The page the driver opens once the first tab is set up, as it does
    /// in a session: Chromium itself starts on about:blank.
    start_url: String,
}

const USER_DATA_DIR: &str = "--user-data-dir=";

impl AnchorCommand {
    /// Builds the command from a browser profile without a `[network]`
    /// section, so Chromium gets `--no-proxy-server` instead of the
    /// session's proxy.
    pub(super) fn new(profile: &Profile) -> Result<AnchorCommand, String> {
        let settings = profile.browser.as_ref().ok_or("the anchor's profile has no [browser] section")?;
        let mut env: Vec<(String, String)> = profile.environment.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
        env.extend(chromium_environment(profile, settings));
        let argv = chromium_argv(profile, settings);
        if !argv.iter().any(|arg| arg == "--no-proxy-server") {
            return Err("the anchor's Chromium command line has a proxy; its profile must have no [network] section".into());
        }
        Ok(AnchorCommand { argv, env, width: settings.width, height: settings.height, locale: settings.locale.clone(), start_url: settings.start_url.clone() })
    }

    /// Returns the arguments after the program, with the user data
    /// directory replaced by `user_data_dir`.
    fn arguments(&self, user_data_dir: &Path) -> Vec<String> {
        self.argv[1..]
            .iter()
            .map(|arg| if arg.starts_with(USER_DATA_DIR) { format!("{USER_DATA_DIR}{}", user_data_dir.display()) } else { arg.clone() })
            .collect()
    }
}

/// One bare Chromium with its driver attached. Dropping it kills Chromium's
/// process group and removes its user data directory.
pub(super) struct AnchorBrowser {
    child: Child,
    connection: Connection,
    pub(super) browser: Browser,
    user_data_dir: PathBuf,
}

impl AnchorBrowser {
    /// Starts Chromium with its user data in `user_data_dir`, which must
    /// not exist yet, and attaches the driver, which starts the screencast.
    pub(super) async fn start(command: &AnchorCommand, user_data_dir: PathBuf) -> Result<AnchorBrowser, String> {
        std::fs::create_dir(&user_data_dir).map_err(|e| format!("cannot create {}: {e}", user_data_dir.display()))?;
        let home = user_data_dir.join("home");
        std::fs::create_dir(&home).map_err(|e| format!("cannot create {}: {e}", home.display()))?;
        let (to_browser_read, to_browser_write) = std::io::pipe().map_err(|e| format!("cannot create a pipe: {e}"))?;
        let (from_browser_read, from_browser_write) = std::io::pipe().map_err(|e| format!("cannot create a pipe: {e}"))?;
        let (command_in, command_out) = (to_browser_read.as_raw_fd(), from_browser_write.as_raw_fd());

        let mut process = Command::new(&command.argv[0]);
        process
            .args(command.arguments(&user_data_dir))
            .env_clear()
            .envs(command.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .env("HOME", &home)
            .current_dir(&home)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            // Its own process group, so that stopping it reaches every
            // process Chromium starts.
            .process_group(0);
        // SAFETY: the closure runs in the child between fork and exec and
        // calls only fcntl and dup2, which are async-signal-safe. The pipe
        // ends are first copied above descriptor 10, so placing one at 3 or
        // 4 cannot close the other. The copies close on exec.
        unsafe {
            process.pre_exec(move || {
                let input = libc::fcntl(command_in, libc::F_DUPFD_CLOEXEC, 10);
                let output = libc::fcntl(command_out, libc::F_DUPFD_CLOEXEC, 10);
                if input < 0 || output < 0 || libc::dup2(input, 3) < 0 || libc::dup2(output, 4) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = process.spawn().map_err(|e| format!("cannot start {}: {e}", command.argv[0]))?;
        drop((to_browser_read, from_browser_write));

        let connection = Connection::start(to_browser_write, from_browser_read);
        let browser = match Browser::start(connection.clone(), mayfly_browser::Options { width: command.width, height: command.height, locale: command.locale.clone(), start_url: Some(command.start_url.clone()), files: Default::default() }, Arc::new(|_| {})).await {
            Ok(browser) => browser,
            Err(error) => {
                stop_processes(child, &user_data_dir);
                let _ = std::fs::remove_dir_all(&user_data_dir);
                return Err(format!("the driver could not attach to the anchor's Chromium: {error}"));
            }
        };
        Ok(AnchorBrowser { child, connection, browser, user_data_dir })
    }

    /// Returns the processes of this Chromium, from /proc.
    pub(super) fn processes(&self) -> Vec<u32> {
        anchor_processes(self.child.id(), &self.user_data_dir)
    }

    /// Returns Chromium's product and version, such as `HeadlessChrome/120.0.6099.224`.
    pub(super) async fn version(&self) -> Result<String, String> {
        let version = self.connection.call("Browser.getVersion", json!({}), None).await.map_err(|e| e.to_string())?;
        Ok(version["product"].as_str().unwrap_or("unknown").to_string())
    }

    /// Waits up to `timeout` for a frame newer than the last one seen and
    /// returns its JPEG size in bytes, or None when the time passed.
    pub(super) async fn next_frame(&self, frames: &mut tokio::sync::watch::Receiver<Option<mayfly_browser::Frame>>, timeout: Duration) -> Result<Option<usize>, String> {
        match tokio::time::timeout(timeout, frames.changed()).await {
            Err(_elapsed) => Ok(None),
            Ok(Err(_closed)) => Err("the anchor's driver stopped".into()),
            Ok(Ok(())) => Ok(frames.borrow_and_update().as_ref().map(|frame| frame.jpeg.len())),
        }
    }

    /// Passes one viewer input message, as the attach WebSocket carries it,
    /// to the page.
    pub(super) async fn input(&self, message: &Value) -> Result<(), String> {
        let input: Input = serde_json::from_value(message.clone()).map_err(|e| format!("invalid input message {message}: {e}"))?;
        self.browser.input(input).await
    }

    /// Asks Chromium to close, and kills its processes if it has not exited
    /// after `CLOSE_TIMEOUT`.
    pub(super) async fn stop(self) {
        let _ = tokio::time::timeout(Duration::from_secs(2), self.connection.call("Browser.close", json!({}), None)).await;
        // Drop waits for the exit and kills what is left.
    }
}

impl Drop for AnchorBrowser {
    fn drop(&mut self) {
        let started = Instant::now();
        while started.elapsed() < CLOSE_TIMEOUT && matches!(self.child.try_wait(), Ok(None)) {
            std::thread::sleep(Duration::from_millis(20));
        }
        kill_processes(self.child.id(), &self.user_data_dir);
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.user_data_dir);
    }
}

/// Kills a child that never got a driver, with the processes it started.
fn stop_processes(mut child: Child, user_data_dir: &Path) {
    kill_processes(child.id(), user_data_dir);
    let _ = child.wait();
}

/// Sends SIGKILL to the processes of the anchor Chromium `pid`, which the
/// bench started, and waits until none is left, for at most `KILL_TIMEOUT`.
fn kill_processes(pid: u32, user_data_dir: &Path) {
    let started = Instant::now();
    loop {
        // Chromium itself stays a zombie until the bench reaps it.
        let left: Vec<u32> = anchor_processes(pid, user_data_dir).into_iter().filter(|&process| process != pid).collect();
        if left.is_empty() || started.elapsed() > KILL_TIMEOUT {
            break;
        }
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as libc::pid_t), nix::sys::signal::Signal::SIGKILL);
        for process in left {
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(process as libc::pid_t), nix::sys::signal::Signal::SIGKILL);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Returns the process group id in the text of a `/proc/PID/stat` file,
/// whose fifth field it is. The second field, the command name in
/// parentheses, may contain spaces and parentheses, so the fields are
/// counted after its last `)`.
pub(super) fn parse_stat_pgrp(text: &str) -> Option<u32> {
    let (_, rest) = text.rsplit_once(')')?;
    rest.split_whitespace().nth(2)?.parse().ok()
}

/// Returns whether a `/proc/PID/cmdline`, NUL-separated arguments, names
/// `user_data_dir` as Chromium's user data directory or a path inside it.
pub(super) fn cmdline_mentions(cmdline: &[u8], user_data_dir: &Path) -> bool {
    let exact = format!("{USER_DATA_DIR}{}", user_data_dir.display());
    let inside = format!("{}/", user_data_dir.display());
    cmdline.split(|&byte| byte == 0).map(String::from_utf8_lossy).any(|arg| arg == exact || arg.contains(&inside))
}

/// Returns the processes of the anchor Chromium `pid`, from /proc: its
/// process group, and the processes that name its user data directory.
/// Chromium's crash handlers start their own sessions, so only the second
/// test finds them. Their database is under `HOME`, inside that directory.
fn anchor_processes(pid: u32, user_data_dir: &Path) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else { return Vec::new() };
    entries
        .flatten()
        .filter_map(|entry| entry.file_name().to_str()?.parse::<u32>().ok())
        .filter(|process| {
            let in_group = std::fs::read_to_string(format!("/proc/{process}/stat")).ok().and_then(|text| parse_stat_pgrp(&text)) == Some(pid);
            in_group || std::fs::read(format!("/proc/{process}/cmdline")).is_ok_and(|cmdline| cmdline_mentions(&cmdline, user_data_dir))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_pgrp_after_command_name() {
        assert_eq!(parse_stat_pgrp("4242 (chromium) S 1 4242 4242 0 -1 4194560"), Some(4242));
        assert_eq!(parse_stat_pgrp("77 (a) b (c) R 10 70 70 0"), Some(70));
        assert_eq!(parse_stat_pgrp("77 (short) R 10"), None);
        assert_eq!(parse_stat_pgrp("garbage"), None);
    }

    #[test]
    fn anchor_processes_include_own_group() {
        let own = nix::unistd::getpgrp().as_raw() as u32;
        assert!(anchor_processes(own, Path::new("/nonexistent/anchor-1")).contains(&std::process::id()));
    }

    #[test]
    fn cmdline_names_user_data_dir() {
        let dir = Path::new("/dev/shm/bench/anchor-1");
        assert!(cmdline_mentions(b"/chromium\0--type=renderer\0--user-data-dir=/dev/shm/bench/anchor-1\0", dir));
        assert!(cmdline_mentions(b"/crashpad\0--database=/dev/shm/bench/anchor-1/home/.config/chromium/Crash Reports\0", dir));
        assert!(!cmdline_mentions(b"/chromium\0--user-data-dir=/dev/shm/bench/anchor-10\0", dir));
        assert!(!cmdline_mentions(b"/crashpad\0--database=/dev/shm/bench/anchor-10/home\0", dir));
        assert!(!cmdline_mentions(b"", dir));
    }

    #[test]
    fn anchor_arguments_replace_user_data_dir() {
        let command = AnchorCommand {
            argv: vec!["/chromium".into(), "--headless".into(), "--user-data-dir=/work/chromium".into(), "http://127.0.0.1:1/".into()],
            env: Vec::new(),
            width: 1280,
            height: 720,
            locale: "en-US".into(),
            start_url: "http://127.0.0.1:1/".into(),
        };
        assert_eq!(command.arguments(Path::new("/tmp/a")), ["--headless", "--user-data-dir=/tmp/a", "http://127.0.0.1:1/"]);
    }
}
