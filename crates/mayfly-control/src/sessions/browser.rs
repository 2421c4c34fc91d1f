//! Browser sessions: the Chromium command line, and the driver that the
//! session starts on the DevTools pipe before Chromium runs.

use std::sync::Arc;

use mayfly_browser::cdp::Connection;
use mayfly_audit::Entry;
use mayfly_browser::{Browser, DownloadMode, DownloadState, FileSettings, Notice};
use mayfly_core::browser::BrowserSettings;
use mayfly_core::transfer::{Downloads, TransferSettings};
use mayfly_core::egress::{EgressMode, PROXY_PORT};
use mayfly_core::Profile;
use mayfly_sandbox::session::{BeforeStart, StartGuard};
use tokio::sync::watch;

/// Debian's Chromium binary. /usr/bin/chromium is a wrapper script that
/// reads /etc/chromium.d, which the sandbox does not have.
pub const CHROMIUM: &str = "/usr/lib/chromium/chromium";

/// The browser profile's directory inside the sandbox, on the `/work` tmpfs.
const PROFILE_DIR: &str = "/work/chromium";

/// The directory below `/work` where Chromium saves downloads, each under
/// its guid.
pub const DOWNLOADS: &str = "downloads";

/// The directory below `/work` for uploads, with each file in a directory
/// of its own.
pub const UPLOADS: &str = "uploads";

/// Returns what the driver needs of a profile's transfer policy.
pub fn file_settings(transfer: &TransferSettings) -> FileSettings {
    let downloads = match transfer.downloads {
        Downloads::Deny => DownloadMode::Deny,
        Downloads::Keep => DownloadMode::Keep,
        Downloads::Fetch => DownloadMode::Fetch,
    };
    FileSettings { downloads, download_dir: format!("/work/{DOWNLOADS}"), download_limit: transfer.download_limit.as_bytes(), uploads: transfer.uploads }
}

/// Returns Chromium's command line for a browser profile.
///
/// Chromium's own sandbox is off (`--no-sandbox`): its namespace layer needs
/// to create user namespaces, which Mayfly's seccomp filter denies to every
/// session. The session record states this; see SECURITY.md.
pub fn chromium_argv(profile: &Profile, settings: &BrowserSettings) -> Vec<String> {
    let mut argv: Vec<String> = [
        CHROMIUM,
        "--headless",
        "--no-sandbox",
        "--remote-debugging-pipe",
        "--disable-gpu",
        "--no-first-run",
        "--no-default-browser-check",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-default-apps",
        "--disable-extensions",
        "--disable-breakpad",
        "--password-store=basic",
        "--use-mock-keychain",
        "--noerrdialogs",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    argv.push(format!("--user-data-dir={PROFILE_DIR}"));
    argv.push(format!("--window-size={},{}", settings.width, settings.height));
    argv.push(format!("--lang={}", settings.locale));
    argv.push(format!("--accept-lang={}", settings.locale));
    if profile.network.egress == EgressMode::Proxy {
        argv.push(format!("--proxy-server=http://127.0.0.1:{PROXY_PORT}"));
        // By default Chromium connects to loopback addresses directly, not
        // through the proxy, and the session's loopback has only the proxy.
        argv.push("--proxy-bypass-list=<-loopback>".into());
    } else {
        argv.push("--no-proxy-server".into());
    }
    // Chromium starts on a blank page; the driver opens the start page once
    // the tab has the session's language and user agent.
    argv.push("about:blank".into());
    argv
}

/// Returns the environment Chromium needs beyond the profile's: the time
/// zone and language come from the profile, never from the host.
pub fn chromium_environment(profile: &Profile, settings: &BrowserSettings) -> Vec<(String, String)> {
    let language = settings.locale.replace('-', "_");
    vec![("TZ".into(), profile.timezone.clone()), ("LANG".into(), format!("{language}.UTF-8")), ("LANGUAGE".into(), language)]
}

/// The browser of a live session, once its driver has attached.
pub type BrowserSlot = watch::Receiver<Option<Arc<Browser>>>;

/// Stops the driver when the session ends.
struct DriverGuard {
    task: tokio::task::JoinHandle<()>,
    slot: watch::Sender<Option<Arc<Browser>>>,
}

impl Drop for DriverGuard {
    fn drop(&mut self) {
        self.task.abort();
        let _ = self.slot.send(None);
    }
}

/// Returns the hook that connects to Chromium's DevTools pipe and starts the
/// screencast, and the slot where the running browser appears.
pub fn before_start(runtime: tokio::runtime::Handle, session_id: String, settings: &BrowserSettings, audit: crate::audit::Auditor, actor: String) -> (BeforeStart, BrowserSlot) {
    let (sender, slot) = watch::channel(None);
    let options = mayfly_browser::Options {
        width: settings.width,
        height: settings.height,
        locale: settings.locale.clone(),
        start_url: Some(settings.start_url.clone()),
        files: file_settings(&settings.transfer),
    };
    let hook = BeforeStart(Box::new(move |start| {
        let pipes = start.command_pipes.ok_or("the browser session has no DevTools pipe")?;
        let connection = Connection::start(pipes.to_command, pipes.from_command);
        let publish = sender.clone();
        let notify = notifier(audit, actor, session_id.clone());
        let task = runtime.spawn(async move {
            match Browser::start(connection, options, notify).await {
                Ok(browser) => {
                    let _ = publish.send(Some(Arc::new(browser)));
                }
                // Chromium also closes the pipe when the session is deleted
                // while it starts; the session's end record shows which.
                Err(error @ mayfly_browser::cdp::CdpError::Closed) => {
                    tracing::warn!(session_id = %session_id, error = %error, "Chromium ended before the browser driver attached")
                }
                Err(error) => tracing::error!(session_id = %session_id, error = %error, "the browser driver could not attach to Chromium"),
            }
        });
        Ok(Box::new(DriverGuard { task, slot: sender }) as StartGuard)
    }));
    (hook, slot)
}

/// Writes the browser's notices to the audit log.
fn notifier(audit: crate::audit::Auditor, actor: String, session_id: String) -> mayfly_browser::Notify {
    Arc::new(move |notice| {
        let Some(entry) = audit_entry(notice, &actor, &session_id) else { return };
        let (audit, session_id) = (audit.clone(), session_id.clone());
        tokio::spawn(async move {
            if let Err(error) = audit.one(entry).await {
                tracing::error!(session_id = %session_id, error = %error, "failed to record a browser notice");
            }
        });
    })
}

/// Returns the audit record of a notice, for the notices that have one.
fn audit_entry(notice: Notice, actor: &str, session_id: &str) -> Option<Entry> {
    let entry = match notice {
        Notice::DownloadRefused { url, filename } => Entry::new("browser.download_refused", actor).field("url", url).field("filename", filename),
        Notice::Download(download) => {
            let kind = match download.state {
                DownloadState::Completed => "browser.download_kept",
                DownloadState::TooLarge | DownloadState::TooMany => "browser.download_cancelled",
                DownloadState::InProgress | DownloadState::Cancelled => return None,
            };
            let entry = Entry::new(kind, actor).field("download_id", download.id).field("filename", download.filename).field("url", download.url).field("bytes", download.bytes);
            match download.state {
                DownloadState::TooLarge => entry.field("reason", "larger than transfer.download_limit"),
                DownloadState::TooMany => entry.field("reason", format!("the session already keeps {} downloads", mayfly_browser::files::MAX_DOWNLOADS)),
                _ => entry,
            }
        }
        Notice::UploadRefused { reason } => Entry::new("browser.upload_refused", actor).field("reason", reason),
        Notice::FileChooser(_) => return None,
        Notice::RendererCrashed => Entry::new("browser.renderer_crashed", actor),
        Notice::TabRefused => Entry::new("browser.tab_refused", actor).field("limit", mayfly_browser::tabs::MAX_TABS),
    };
    Some(entry.session(session_id))
}

/// Runs two hooks in order; the session keeps both guards.
pub fn chain(first: Option<BeforeStart>, second: Option<BeforeStart>) -> Option<BeforeStart> {
    match (first, second) {
        (Some(first), Some(second)) => Some(BeforeStart(Box::new(move |start| {
            let command_pipes = start.command_pipes;
            let init_pid = start.init_pid;
            let guard_one = (first.0)(mayfly_sandbox::session::StartContext { init_pid, command_pipes: None })?;
            let guard_two = (second.0)(mayfly_sandbox::session::StartContext { init_pid, command_pipes })?;
            Ok(Box::new((guard_one, guard_two)) as StartGuard)
        }))),
        (first, None) => first,
        (None, second) => second,
    }
}
