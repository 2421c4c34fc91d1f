//! A browser session's files through the API: the downloads Chromium kept
//! in the session, fetched when the profile allows it, and the current page
//! printed to PDF.
//!
//! All three need `attach_session` on the session, because a principal who
//! may control the browser may also take what it shows. Each one that lets
//! bytes leave the session is audited before the bytes are sent.

use std::io::Read;
use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use mayfly_audit::Entry;
use mayfly_browser::{is_download_id, sanitize_filename, Browser, DownloadState, Status};
use mayfly_core::transfer::{Downloads, TransferSettings};
use mayfly_sandbox::session::{SessionControl, WorkDirError};
use nix::errno::Errno;
use serde_json::json;

use super::caller::Peer;
use super::sessions::{gone, resource};
use crate::app::App;
use crate::policy::Action;
use crate::problem::Problem;
use crate::sessions::actor;
use crate::sessions::browser::{BrowserSlot, DOWNLOADS};

/// The bytes read from a download file at a time while it is sent.
const READ_CHUNK: usize = 64 * 1024;

/// The parts of a running browser session that the handlers use.
struct LiveBrowser {
    transfer: TransferSettings,
    slot: BrowserSlot,
    control: SessionControl,
}

/// Authenticates the caller, authorizes `attach_session` and finds the
/// browser session among those this process runs.
async fn browser_session(app: &App, headers: &HeaderMap, peer: Peer, id: &str) -> Result<(String, LiveBrowser), Problem> {
    let who = app.caller(headers, peer).await?;
    let session = app.session_or_404(id).await?;
    app.authorize(&who, Action::AttachSession, &resource(&session), None).await?;
    if session.state.is_final() {
        return Err(gone(&session));
    }
    if session.kind != "browser" {
        return Err(Problem::new(
            StatusCode::BAD_REQUEST,
            "not-a-browser-session",
            "Not a browser session",
            format!("session {id} is a {} session; only browser sessions have downloads and printing", session.kind),
        ));
    }
    let live = app.live.lock().unwrap_or_else(|e| e.into_inner()).get(id).and_then(|l| {
        Some(LiveBrowser { transfer: l.browser_settings.as_ref()?.transfer.clone(), slot: l.browser.clone()?, control: l.control.clone() })
    });
    let Some(live) = live else {
        return Err(Problem::new(
            StatusCode::CONFLICT,
            "not-attachable",
            "Session not attachable here",
            format!("session {id} is {} but this server process does not run it", session.state),
        ));
    };
    Ok((actor(&who), live))
}

/// Returns the session's browser once its driver has attached.
fn running(slot: &BrowserSlot, id: &str) -> Result<Arc<Browser>, Problem> {
    slot.borrow().clone().ok_or_else(|| {
        Problem::new(StatusCode::CONFLICT, "browser-starting", "Browser starting", format!("the browser of session {id} has not started yet; try again in a moment")).retry_after(1)
    })
}

/// 403 for a transfer the profile does not allow, naming its setting.
fn not_allowed(setting: &'static str, detail: String) -> Problem {
    Problem::new(StatusCode::FORBIDDEN, "transfer-not-allowed", "Transfer not allowed", detail).with("setting", setting)
}

/// Checks that the profile lets downloads leave the session.
fn check_fetch(transfer: &TransferSettings, id: &str) -> Result<(), Problem> {
    let detail = match transfer.downloads {
        Downloads::Fetch => return Ok(()),
        Downloads::Keep => format!("the profile of session {id} keeps downloads inside the session (transfer.downloads = \"keep\"); they cannot be listed or fetched through the API"),
        Downloads::Deny => format!("the profile of session {id} refuses downloads (transfer.downloads = \"deny\"); there is nothing to list or fetch"),
    };
    Err(not_allowed("transfer.downloads", detail))
}

/// Returns a Content-Disposition value that makes the browser save the
/// response as `filename`, whatever characters the page put in that name.
/// The quoted `filename` keeps printable ASCII only; `filename*` (RFC 8187)
/// carries the whole name, percent-encoded.
pub fn content_disposition(filename: &str) -> String {
    let name = sanitize_filename(filename);
    let ascii: String = name.chars().map(|c| if (c.is_ascii_graphic() || c == ' ') && !matches!(c, '"' | '\\' | '%') { c } else { '_' }).collect();
    let encoded: String = name
        .bytes()
        .map(|b| if b.is_ascii_alphanumeric() || b"!#$&+-.^_`|~".contains(&b) { char::from(b).to_string() } else { format!("%{b:02X}") })
        .collect();
    format!("attachment; filename=\"{ascii}\"; filename*=UTF-8''{encoded}")
}

/// `GET /v1/sessions/{id}/downloads`: the session's downloads, oldest first.
pub async fn list_downloads(State(app): State<Arc<App>>, Extension(peer): Extension<Peer>, headers: HeaderMap, Path(id): Path<String>) -> Result<Response, Problem> {
    let (_, live) = browser_session(&app, &headers, peer, &id).await?;
    check_fetch(&live.transfer, &id)?;
    let browser = running(&live.slot, &id)?;
    Ok(Json(json!({ "downloads": browser.downloads() })).into_response())
}

/// Turns a failure to open a download's file into a problem.
fn open_failed(error: WorkDirError, id: &str, download_id: &str) -> Problem {
    match error {
        WorkDirError::NotRunning => Problem::new(StatusCode::GONE, "session-gone", "Session gone", format!("session {id} ended before its download could be read")),
        WorkDirError::NotReady => Problem::new(StatusCode::CONFLICT, "browser-starting", "Browser starting", format!("session {id} has not finished starting; try again in a moment")).retry_after(1),
        WorkDirError::Io { source: Errno::ENOENT, .. } => Problem::not_found(format!("the file of download {download_id} is no longer in session {id}")),
        WorkDirError::NotRegular { .. } | WorkDirError::Io { source: Errno::ELOOP | Errno::EXDEV, .. } => Problem::new(
            StatusCode::CONFLICT,
            "download-replaced",
            "Download replaced",
            format!("the file of download {download_id} in session {id} was replaced by something other than a regular file, so it is not sent"),
        ),
        other => {
            tracing::error!(session_id = %id, download_id = %download_id, error = %other, "failed to open a download in a session");
            Problem::internal(format!("the file of download {download_id} could not be opened: {other}"))
        }
    }
}

/// `GET /v1/sessions/{id}/downloads/{download_id}`: the file of a completed
/// download, as an attachment named after the page's sanitized file name.
pub async fn fetch_download(
    State(app): State<Arc<App>>,
    Extension(peer): Extension<Peer>,
    headers: HeaderMap,
    Path((id, download_id)): Path<(String, String)>,
) -> Result<Response, Problem> {
    let (actor, live) = browser_session(&app, &headers, peer, &id).await?;
    check_fetch(&live.transfer, &id)?;
    if !is_download_id(&download_id) {
        let excerpt: String = download_id.chars().take(80).collect();
        return Err(Problem::bad_request(format!(
            "{excerpt:?} is not a download id: ids are the 36-character lower-case guids that GET /v1/sessions/{id}/downloads lists"
        )));
    }
    let browser = running(&live.slot, &id)?;
    let Some(download) = browser.download(&download_id) else {
        return Err(Problem::not_found(format!("session {id} has no download {download_id}")));
    };
    if download.state != DownloadState::Completed {
        let state = serde_json::to_value(download.state).expect("states serialize");
        return Err(Problem::new(
            StatusCode::CONFLICT,
            "download-not-completed",
            "Download not completed",
            format!("download {download_id} is {}; only completed downloads can be fetched", state.as_str().unwrap_or_default()),
        )
        .with("state", state));
    }

    // The id names a file directly below the download directory: it has
    // no '/', no '.' and no NUL, as is_download_id checked.
    let path = format!("{DOWNLOADS}/{download_id}");
    let control = live.control.clone();
    let opened = tokio::task::spawn_blocking(move || control.work_dir()?.open_file(&path))
        .await
        .map_err(|e| Problem::internal(format!("the download could not be read: {e}")))?;
    let (mut file, size) = opened.map_err(|e| open_failed(e, &id, &download_id))?;
    let limit = live.transfer.download_limit.as_bytes();
    if size > limit {
        return Err(Problem::new(
            StatusCode::CONFLICT,
            "download-too-large",
            "Download too large",
            format!("the file of download {download_id} is {size} bytes, above the profile's transfer.download_limit of {}", live.transfer.download_limit),
        ));
    }

    let entry = Entry::new("browser.download_fetched", &actor).session(&id).field("download_id", download_id.clone()).field("filename", download.filename.clone()).field("bytes", size);
    app.audit.one(entry).await.map_err(|e| Problem::audit_failed(&e))?;

    // Exactly `size` bytes are sent, even if the file grows meanwhile.
    let (sender, receiver) = tokio::sync::mpsc::channel::<Result<Bytes, std::io::Error>>(4);
    tokio::task::spawn_blocking(move || {
        let mut left = size;
        let mut buffer = vec![0u8; READ_CHUNK];
        while left > 0 {
            let want = buffer.len().min(usize::try_from(left).unwrap_or(usize::MAX));
            let read = match file.read(&mut buffer[..want]) {
                Ok(0) => break,
                Ok(read) => read,
                Err(error) => {
                    let _ = sender.blocking_send(Err(error));
                    break;
                }
            };
            left -= read as u64;
            if sender.blocking_send(Ok(Bytes::copy_from_slice(&buffer[..read]))).is_err() {
                break;
            }
        }
    });
    let body = Body::from_stream(futures_util::stream::unfold(receiver, |mut receiver| async move { receiver.recv().await.map(|item| (item, receiver)) }));
    let headers = [
        (header::CONTENT_TYPE, "application/octet-stream".to_string()),
        (header::CONTENT_LENGTH, size.to_string()),
        (header::CONTENT_DISPOSITION, content_disposition(&download.filename)),
        (header::CACHE_CONTROL, "no-store".to_string()),
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff".to_string()),
    ];
    Ok((headers, body).into_response())
}

/// `POST /v1/sessions/{id}/print`: the current page as a PDF attachment.
pub async fn print(State(app): State<Arc<App>>, Extension(peer): Extension<Peer>, headers: HeaderMap, Path(id): Path<String>) -> Result<Response, Problem> {
    let (actor, live) = browser_session(&app, &headers, peer, &id).await?;
    if !live.transfer.printing {
        return Err(not_allowed("transfer.printing", format!("the profile of session {id} does not allow printing (transfer.printing = false)")));
    }
    let browser = running(&live.slot, &id)?;
    let pdf = browser.print_pdf().await.map_err(|error| {
        tracing::warn!(session_id = %id, error = %error, "the browser could not print its page");
        Problem::new(StatusCode::BAD_GATEWAY, "print-failed", "Print failed", format!("the browser of session {id} could not print its page: {error}"))
    })?;
    let url = match &*browser.status().borrow() {
        Status::Running { url, .. } => url.clone(),
        _ => String::new(),
    };
    let entry = Entry::new("browser.print", &actor).session(&id).field("url", url).field("bytes", pdf.len());
    app.audit.one(entry).await.map_err(|e| Problem::audit_failed(&e))?;
    let headers = [
        (header::CONTENT_TYPE, "application/pdf".to_string()),
        (header::CONTENT_DISPOSITION, content_disposition(&format!("{id}.pdf"))),
        (header::CACHE_CONTROL, "no-store".to_string()),
    ];
    Ok((headers, pdf).into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_disposition_is_safe_for_hostile_names() {
        assert_eq!(content_disposition("report.pdf"), "attachment; filename=\"report.pdf\"; filename*=UTF-8''report.pdf");
        for hostile in ["../../evil.sh", "a\"b\r\nSet-Cookie: x=1", "a\\b;c=d", "résumé 日本.txt", "\u{202e}fdp.exe", "%2e%2e%2fx"] {
            let value = content_disposition(hostile);
            assert!(axum::http::HeaderValue::from_str(&value).is_ok(), "{hostile:?}: {value}");
            let quoted = value.split('"').nth(1).unwrap();
            for forbidden in ['/', '\\', '%'] {
                assert!(!quoted.contains(forbidden), "{hostile:?}: {value}");
            }
            assert_eq!(value.matches('"').count(), 2, "{hostile:?}: {value}");
            assert!(!value.chars().any(char::is_control), "{hostile:?}: {value}");
            let encoded = value.split("filename*=UTF-8''").nth(1).unwrap();
            for forbidden in ['/', ';', '"', ' '] {
                assert!(!encoded.contains(forbidden), "{hostile:?}: {value}");
            }
        }
        assert!(content_disposition("../../evil.sh").starts_with("attachment; filename=\"_.._evil.sh\""));
        assert!(content_disposition("résumé.txt").ends_with("filename*=UTF-8''r%C3%A9sum%C3%A9.txt"));
    }
}
