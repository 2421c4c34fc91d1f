//! Files that cross between the user's device and the browser: downloads
//! kept in the session, file choosers filled with the user's files, and
//! pages printed to PDF.
//!
//! Everything Chromium reports here is untrusted: Chromium runs in the
//! sandbox with the pages it renders. So download ids are checked before
//! anything uses them, file names are only ever shown after
//! [`sanitize_filename`], and a file chooser is filled only through the
//! page session and input element the driver recorded when it opened.

use std::collections::{HashSet, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use serde::Serialize;
use serde_json::{json, Value};

use crate::base64;
use crate::cdp::{CdpError, Connection, Event};
use crate::driver::{sanitize_filename, Browser, Notice};

/// The handling of a file that a page downloads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum DownloadMode {
    /// Chromium refuses the download.
    Deny,
    /// Chromium saves it in the session; it never leaves the session.
    Keep,
    /// Chromium saves it in the session, and its owner may fetch it.
    Fetch,
}

/// The file transfers a browser allows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileSettings {
    pub downloads: DownloadMode,
    /// The directory Chromium saves downloads in, as a path inside the sandbox.
    pub download_dir: String,
    /// The largest download in bytes; Chromium cancels larger ones.
    pub download_limit: u64,
    /// Whether a page's file chooser is offered to the viewer. When false,
    /// Chromium cancels every file chooser.
    pub uploads: bool,
}

impl Default for FileSettings {
    fn default() -> Self {
        FileSettings { downloads: DownloadMode::Deny, download_dir: String::new(), download_limit: 0, uploads: false }
    }
}

/// The progress of a download.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum DownloadState {
    InProgress,
    Completed,
    /// The page or Chromium cancelled it.
    Cancelled,
    /// It grew past the download limit and was cancelled.
    TooLarge,
    /// The session already kept [`MAX_DOWNLOADS`] downloads; it was cancelled.
    TooMany,
}

/// One download of a page.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Download {
    /// Chromium's guid of the download, which is also the name of its file
    /// in the download directory.
    pub id: String,
    /// The name the page suggested, sanitized; shown, never used as a path.
    pub filename: String,
    pub url: String,
    /// The bytes received so far, which is the size once it has completed.
    pub bytes: u64,
    pub state: DownloadState,
}

/// A file chooser a page opened, waiting for the viewer's files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileChooser {
    /// Counts the choosers of one browser from 1.
    pub id: u64,
    /// Whether the page accepts several files.
    pub multiple: bool,
    /// The target session of the page whose input opened the chooser.
    page: String,
    backend_node_id: i64,
}

/// The maximum number of downloads one session keeps track of. Later ones
/// are cancelled.
pub const MAX_DOWNLOADS: usize = 200;
/// The maximum number of open file choosers kept. Older ones are forgotten.
const MAX_CHOOSERS: usize = 8;
/// The largest PDF a print may produce.
pub const MAX_PDF: usize = 100 * 1024 * 1024;
/// The bytes asked for in each read of the PDF stream.
const PDF_READ: usize = 1024 * 1024;

/// How often a print that Chromium rejects with "Printing failed" is
/// tried, and the pause between tries. Chromium 148 sometimes rejects a
/// print that follows a navigation at once (1 of 8 runs of the file test),
/// and a later try succeeds.
const PRINT_ATTEMPTS: u32 = 4;
const PRINT_RETRY_PAUSE: std::time::Duration = std::time::Duration::from_millis(250);

/// Tells whether `text` has the form of Chromium's download guids:
/// lowercase hexadecimal digits in groups of 8, 4, 4, 4 and 12, joined by
/// `-`. Such an id names a file without any path separator or dot.
pub fn is_download_id(text: &str) -> bool {
    let groups: Vec<&str> = text.split('-').collect();
    groups.len() == 5
        && groups.iter().zip([8, 4, 4, 4, 12]).all(|(group, length)| group.len() == length && group.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)))
}

/// Turns on file chooser interception for one page's target session. With
/// `uploads` off, Chromium cancels each chooser, and the page gets the
/// `cancel` event as if the user had closed the dialog.
pub async fn enable_file_chooser(connection: &Connection, page: &str, uploads: bool) -> Result<(), CdpError> {
    connection.call("Page.setInterceptFileChooserDialog", json!({ "enabled": true, "cancel": !uploads }), Some(page)).await.map(|_| ())
}

/// The transfer state of one browser.
pub(crate) struct Files {
    settings: FileSettings,
    downloads: Mutex<Vec<Download>>,
    /// The guids reported as refused, because Chromium reports a download
    /// on the browser and on the page with the same guid.
    refused: Mutex<HashSet<String>>,
    choosers: Mutex<VecDeque<FileChooser>>,
    next_chooser: AtomicU64,
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

impl Files {
    pub(crate) fn new(settings: FileSettings) -> Arc<Files> {
        Arc::new(Files { settings, downloads: Mutex::default(), refused: Mutex::default(), choosers: Mutex::default(), next_chooser: AtomicU64::new(1) })
    }

    pub(crate) fn settings(&self) -> &FileSettings {
        &self.settings
    }

    /// Returns the parameters of `Browser.setDownloadBehavior`: refuse
    /// downloads, or save each one under its guid, never under the name the
    /// page suggested.
    pub(crate) fn download_behavior(&self) -> Value {
        match self.settings.downloads {
            DownloadMode::Deny => json!({ "behavior": "deny", "eventsEnabled": true }),
            DownloadMode::Keep | DownloadMode::Fetch => json!({ "behavior": "allowAndName", "downloadPath": self.settings.download_dir, "eventsEnabled": true }),
        }
    }

    /// Follows the download and file chooser events; returns the notice an
    /// event gives, if any.
    pub(crate) fn on_event(&self, event: &Event, connection: &Connection) -> Option<Notice> {
        match event.method.as_str() {
            "Browser.downloadWillBegin" | "Page.downloadWillBegin" => self.download_began(&event.params, connection),
            "Browser.downloadProgress" | "Page.downloadProgress" => self.download_progressed(&event.params, connection),
            "Page.fileChooserOpened" => self.chooser_opened(event),
            _ => None,
        }
    }

    fn download_began(&self, params: &Value, connection: &Connection) -> Option<Notice> {
        let guid = params["guid"].as_str().unwrap_or_default();
        let url: String = params["url"].as_str().unwrap_or_default().chars().take(2048).collect();
        let filename = sanitize_filename(params["suggestedFilename"].as_str().unwrap_or_default());
        if self.settings.downloads == DownloadMode::Deny {
            return lock(&self.refused).insert(guid.to_string()).then_some(Notice::DownloadRefused { url, filename });
        }
        let mut downloads = lock(&self.downloads);
        if downloads.iter().any(|d| d.id == guid) || lock(&self.refused).contains(guid) {
            return None;
        }
        if !is_download_id(guid) {
            tracing::warn!(guid = %guid.chars().take(64).collect::<String>(), "the browser reported a download whose id is not a guid; cancelling it");
            connection.send("Browser.cancelDownload", json!({ "guid": guid }), None);
            return None;
        }
        let mut download = Download { id: guid.to_string(), filename, url, bytes: 0, state: DownloadState::InProgress };
        if downloads.len() >= MAX_DOWNLOADS {
            connection.send("Browser.cancelDownload", json!({ "guid": guid }), None);
            lock(&self.refused).insert(guid.to_string());
            download.state = DownloadState::TooMany;
            return Some(Notice::Download(download));
        }
        downloads.push(download.clone());
        Some(Notice::Download(download))
    }

    fn download_progressed(&self, params: &Value, connection: &Connection) -> Option<Notice> {
        let guid = params["guid"].as_str().unwrap_or_default();
        let mut downloads = lock(&self.downloads);
        let download = downloads.iter_mut().find(|d| d.id == guid && d.state == DownloadState::InProgress)?;
        let received = params["receivedBytes"].as_f64().unwrap_or(0.0).max(0.0) as u64;
        let total = params["totalBytes"].as_f64().unwrap_or(0.0).max(0.0) as u64;
        download.bytes = received;
        let limit = self.settings.download_limit;
        match params["state"].as_str().unwrap_or_default() {
            "inProgress" if received > limit || total > limit => {
                connection.send("Browser.cancelDownload", json!({ "guid": guid }), None);
                download.state = DownloadState::TooLarge;
            }
            // A file that completed before the cancel took effect stays in
            // the session; the API never serves more than the limit.
            "completed" if received > limit => download.state = DownloadState::TooLarge,
            "completed" => download.state = DownloadState::Completed,
            "canceled" => download.state = DownloadState::Cancelled,
            _ => return None,
        }
        Some(Notice::Download(download.clone()))
    }

    fn chooser_opened(&self, event: &Event) -> Option<Notice> {
        if !self.settings.uploads {
            return Some(Notice::UploadRefused { reason: "the session's profile allows no uploads (transfer.uploads)".into() });
        }
        let (Some(page), Some(backend_node_id)) = (event.session_id.clone(), event.params["backendNodeId"].as_i64()) else {
            return Some(Notice::UploadRefused { reason: "the page asked for files without a file input, which the viewer cannot answer".into() });
        };
        let chooser = FileChooser {
            id: self.next_chooser.fetch_add(1, Ordering::Relaxed),
            multiple: event.params["mode"] == "selectMultiple",
            page,
            backend_node_id,
        };
        let mut choosers = lock(&self.choosers);
        choosers.push_back(chooser.clone());
        while choosers.len() > MAX_CHOOSERS {
            choosers.pop_front();
        }
        Some(Notice::FileChooser(chooser))
    }
}

impl Browser {
    /// Returns the file transfers this browser allows.
    pub fn file_settings(&self) -> &FileSettings {
        &self.files().settings
    }

    /// Returns the downloads of the session, oldest first.
    pub fn downloads(&self) -> Vec<Download> {
        lock(&self.files().downloads).clone()
    }

    /// Returns one download by its id.
    pub fn download(&self, id: &str) -> Option<Download> {
        lock(&self.files().downloads).iter().find(|d| d.id == id).cloned()
    }

    /// Takes an open file chooser by its id, so it is filled at most once.
    pub fn take_file_chooser(&self, id: u64) -> Option<FileChooser> {
        let mut choosers = lock(&self.files().choosers);
        let index = choosers.iter().position(|c| c.id == id)?;
        choosers.remove(index)
    }

    /// Gives files to the input element that opened `chooser`. The paths
    /// are absolute paths inside the sandbox.
    pub async fn set_files(&self, chooser: &FileChooser, paths: &[String]) -> Result<(), String> {
        let params = json!({ "files": paths, "backendNodeId": chooser.backend_node_id });
        self.connection().call("DOM.setFileInputFiles", params, Some(&chooser.page)).await.map(|_| ()).map_err(|e| e.to_string())
    }

    /// Prints the tab in front to a PDF of at most [`MAX_PDF`] bytes.
    /// Chromium returns it as a stream, read a megabyte at a time, so no
    /// single DevTools message has to carry the whole file.
    pub async fn print_pdf(&self) -> Result<Vec<u8>, String> {
        let front = self.front()?;
        let page = Some(front.as_str());
        let connection = self.connection();
        let params = json!({ "transferMode": "ReturnAsStream", "printBackground": true });
        let mut attempt = 1;
        let printed = loop {
            match connection.call("Page.printToPDF", params.clone(), page).await.map_err(|e| e.to_string()) {
                Err(error) if error.contains("Printing failed") && attempt < PRINT_ATTEMPTS => {
                    tracing::debug!(attempt, error = %error, "Page.printToPDF failed; trying again");
                    attempt += 1;
                    tokio::time::sleep(PRINT_RETRY_PAUSE).await;
                }
                result => break result?,
            }
        };
        let handle = printed["stream"].as_str().ok_or("the browser returned no PDF stream")?.to_string();
        let mut pdf = Vec::new();
        let result = loop {
            let chunk = match connection.call("IO.read", json!({ "handle": handle, "size": PDF_READ }), page).await {
                Ok(chunk) => chunk,
                Err(error) => break Err(error.to_string()),
            };
            let data = chunk["data"].as_str().unwrap_or_default();
            let bytes = if chunk["base64Encoded"] == true { base64::decode(data) } else { Some(data.as_bytes().to_vec()) };
            let Some(bytes) = bytes else { break Err("the browser sent a PDF chunk that is not base64".to_string()) };
            pdf.extend_from_slice(&bytes);
            if pdf.len() > MAX_PDF {
                break Err(format!("the PDF is larger than {} MiB; print a shorter page", MAX_PDF / 1024 / 1024));
            }
            if chunk["eof"] == true {
                break Ok(());
            }
        };
        let _ = connection.call("IO.close", json!({ "handle": handle }), page).await;
        result.map(|()| pdf)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn download_ids_are_guids_only() {
        assert!(is_download_id("e257aeae-7237-4ab9-b401-828bbd2fe781"));
        for bad in [
            "",
            "..",
            "%2e%2e",
            "../../etc/passwd",
            "/etc/passwd",
            "e257aeae-7237-4ab9-b401-828bbd2fe781.crdownload",
            "E257AEAE-7237-4AB9-B401-828BBD2FE781",
            "e257aeae-7237-4ab9-b401-828bbd2fe78",
            "e257aeae-7237-4ab9-b401/828bbd2fe781",
            "e257aeae-7237-4ab9-b401-828bbd2fe78\0",
            "e257aeae72374ab9b401828bbd2fe781",
            "g257aeae-7237-4ab9-b401-828bbd2fe781",
        ] {
            assert!(!is_download_id(bad), "{bad:?}");
        }
    }

    fn files(downloads: DownloadMode, uploads: bool) -> Arc<Files> {
        Files::new(FileSettings { downloads, download_dir: "/work/downloads".into(), download_limit: 100, uploads })
    }

    fn event(method: &str, params: Value, session_id: Option<&str>) -> Event {
        Event { method: method.into(), params, session_id: session_id.map(str::to_string) }
    }

    /// Returns a connection whose browser is gone, so commands sent on it go nowhere.
    fn closed_connection() -> Connection {
        let (_, to_browser) = std::io::pipe().unwrap();
        let (from_browser, _) = std::io::pipe().unwrap();
        Connection::start(to_browser, from_browser)
    }

    const GUID: &str = "e257aeae-7237-4ab9-b401-828bbd2fe781";

    #[test]
    fn downloads_move_through_their_states_once() {
        let files = files(DownloadMode::Keep, false);
        let connection = closed_connection();
        let begin = json!({ "guid": GUID, "url": "http://x/r", "suggestedFilename": "../../evil\u{7}.sh" });
        let notice = files.on_event(&event("Browser.downloadWillBegin", begin.clone(), None), &connection);
        let Some(Notice::Download(download)) = notice else { panic!("{notice:?}") };
        assert_eq!((download.filename.as_str(), download.state), ("_.._evil_.sh", DownloadState::InProgress));
        assert_eq!(files.on_event(&event("Page.downloadWillBegin", begin, Some("p")), &connection), None, "the page's report of the same download");
        let progress = json!({ "guid": GUID, "receivedBytes": 10, "totalBytes": 10, "state": "inProgress" });
        assert_eq!(files.on_event(&event("Browser.downloadProgress", progress, None), &connection), None);
        let done = json!({ "guid": GUID, "receivedBytes": 10, "totalBytes": 10, "state": "completed" });
        let notice = files.on_event(&event("Browser.downloadProgress", done.clone(), None), &connection);
        assert!(matches!(notice, Some(Notice::Download(Download { state: DownloadState::Completed, bytes: 10, .. }))), "{notice:?}");
        assert_eq!(files.on_event(&event("Page.downloadProgress", done, Some("p")), &connection), None, "completed once");
    }

    #[test]
    fn downloads_above_the_limit_are_cancelled() {
        let files = files(DownloadMode::Fetch, false);
        let connection = closed_connection();
        files.on_event(&event("Browser.downloadWillBegin", json!({ "guid": GUID, "url": "u", "suggestedFilename": "big" }), None), &connection);
        let growing = json!({ "guid": GUID, "receivedBytes": 101, "totalBytes": 0, "state": "inProgress" });
        let notice = files.on_event(&event("Browser.downloadProgress", growing, None), &connection);
        assert!(matches!(notice, Some(Notice::Download(Download { state: DownloadState::TooLarge, .. }))), "{notice:?}");
        let cancelled = json!({ "guid": GUID, "receivedBytes": 0, "totalBytes": 0, "state": "canceled" });
        assert_eq!(files.on_event(&event("Browser.downloadProgress", cancelled, None), &connection), None, "it stays too large");
    }

    #[test]
    fn downloads_without_a_guid_are_not_kept() {
        let files = files(DownloadMode::Fetch, false);
        let connection = closed_connection();
        let notice = files.on_event(&event("Browser.downloadWillBegin", json!({ "guid": "../../x", "url": "u", "suggestedFilename": "x" }), None), &connection);
        assert_eq!(notice, None);
        assert!(lock(&files.downloads).is_empty());
    }

    #[test]
    fn denied_downloads_are_refused_once() {
        let files = files(DownloadMode::Deny, false);
        let connection = closed_connection();
        let begin = json!({ "guid": GUID, "url": "http://x/r", "suggestedFilename": "r.txt" });
        let notice = files.on_event(&event("Page.downloadWillBegin", begin.clone(), Some("p")), &connection);
        assert_eq!(notice, Some(Notice::DownloadRefused { url: "http://x/r".into(), filename: "r.txt".into() }));
        assert_eq!(files.on_event(&event("Browser.downloadWillBegin", begin, None), &connection), None);
    }

    #[test]
    fn file_choosers_follow_the_upload_switch() {
        let connection = closed_connection();
        let opened = event("Page.fileChooserOpened", json!({ "frameId": "f", "mode": "selectMultiple", "backendNodeId": 5 }), Some("page-1"));
        let refused = files(DownloadMode::Deny, false).on_event(&opened, &connection);
        assert!(matches!(&refused, Some(Notice::UploadRefused { reason }) if reason.contains("transfer.uploads")), "{refused:?}");
        let allowed = files(DownloadMode::Deny, true);
        let Some(Notice::FileChooser(chooser)) = allowed.on_event(&opened, &connection) else { panic!("a chooser is offered") };
        assert!(chooser.multiple);
        assert_eq!((chooser.page.as_str(), chooser.backend_node_id), ("page-1", 5));
        let without_input = event("Page.fileChooserOpened", json!({ "frameId": "f", "mode": "selectSingle" }), Some("page-1"));
        assert!(matches!(allowed.on_event(&without_input, &connection), Some(Notice::UploadRefused { .. })));
    }
}
