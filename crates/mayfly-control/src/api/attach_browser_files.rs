//! Files on a browser session's attach WebSocket: the viewer's list of
//! downloads, and uploads that fill a page's file chooser.
//!
//! An upload goes in four steps. The server sends `file_chooser` when a
//! page opens one. The viewer announces the files it will send with
//! `upload`, and the server creates each one as `/work/uploads/RANDOM/NAME`
//! and replies with `upload_ready`. The viewer then sends the files' bytes, in
//! the announced order, as binary messages that start with [`UPLOAD_CHUNK`].
//! Once every byte has arrived, the server hands the files to the page's
//! input and sends `upload_done`. A size above the profile's upload limit
//! is rejected when announced, and bytes beyond an announced size end the
//! upload. Any failure is sent as `upload_failed`, and the files created
//! so far are removed.

use std::io::Write;
use std::sync::Arc;

use mayfly_audit::Entry;
use mayfly_browser::{sanitize_filename, Browser, FileChooser, Notice};
use mayfly_sandbox::session::{SessionControl, WorkDir};
use serde::Deserialize;
use serde_json::{json, Value};

use crate::app::App;
use crate::sessions::browser::UPLOADS;

/// The first byte of a binary message that carries upload bytes.
pub const UPLOAD_CHUNK: u8 = 0x20;
/// The maximum number of files in one upload.
pub const MAX_FILES: usize = 32;
/// The largest chunk the `file_chooser` message allows the viewer to send,
/// even when the WebSocket's message limit is higher.
const MAX_CHUNK: usize = 1024 * 1024;

/// The server's context for receiving one viewer's uploads.
pub struct UploadContext {
    pub app: Arc<App>,
    pub control: SessionControl,
    pub session_id: String,
    pub actor: String,
    /// The largest file, from the profile's `transfer.upload_limit`.
    pub limit: u64,
    /// The attach WebSocket's message limit.
    pub max_message: usize,
}

/// Returns the viewer's message for a browser notice, if it gets one.
/// Only the viewer in control hears of file choosers.
pub fn notice_message(notice: &Notice, writer: bool, uploads: Option<&UploadContext>) -> Option<Value> {
    match notice {
        Notice::DownloadRefused { filename, .. } => Some(json!({ "type": "download_refused", "filename": filename })),
        Notice::Download(download) => Some(json!({ "type": "download", "download": download })),
        Notice::FileChooser(chooser) if writer => {
            let context = uploads?;
            let chunk_bytes = context.max_message.saturating_sub(1).clamp(1, MAX_CHUNK);
            Some(json!({ "type": "file_chooser", "chooser": chooser.id, "multiple": chooser.multiple, "upload_limit_bytes": context.limit, "chunk_bytes": chunk_bytes }))
        }
        Notice::UploadRefused { reason } if writer => Some(json!({ "type": "upload_refused", "reason": reason })),
        _ => None,
    }
}

/// Returns the message that lists every download to a viewer that attaches.
pub fn downloads_message(browser: &Browser) -> Value {
    json!({ "type": "downloads", "downloads": browser.downloads() })
}

#[derive(Debug, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
enum UploadMessage {
    Upload { chooser: u64, files: Vec<Announced> },
    UploadCancel { chooser: u64 },
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Announced {
    name: String,
    size: u64,
}

/// One file of an upload.
struct UploadFile {
    /// The sanitized name, which the page gets.
    name: String,
    size: u64,
    /// The path below `/work`.
    path: String,
    file: Option<std::fs::File>,
    written: u64,
}

/// An upload in progress. Dropping it before it completes removes its files.
struct Upload {
    chooser: FileChooser,
    work: Arc<WorkDir>,
    files: Vec<UploadFile>,
    /// The file that receives the next bytes.
    current: usize,
    completed: bool,
}

impl Drop for Upload {
    fn drop(&mut self) {
        if self.completed {
            return;
        }
        for file in &mut self.files {
            file.file = None;
            if let Err(error) = self.work.remove_created(&file.path) {
                tracing::warn!(path = %file.path, error = %error, "failed to remove a file of an abandoned upload");
            }
        }
    }
}

impl Upload {
    /// Moves past files that have all their bytes, closing each one.
    fn skip_full(&mut self) {
        while let Some(file) = self.files.get_mut(self.current) {
            if file.written < file.size {
                return;
            }
            file.file = None;
            self.current += 1;
        }
    }

    fn received_all(&self) -> bool {
        self.current >= self.files.len()
    }
}

/// The upload state of one attached viewer.
pub struct Uploads {
    context: Option<UploadContext>,
    current: Option<Upload>,
    /// Set after a stray chunk was reported, so a stream of them gets one reply.
    reported_stray: bool,
}

fn failed(chooser: u64, message: impl Into<String>) -> Value {
    json!({ "type": "upload_failed", "chooser": chooser, "message": message.into() })
}

impl Uploads {
    /// `context` is `None` when the profile allows no uploads.
    pub fn new(context: Option<UploadContext>) -> Uploads {
        Uploads { context, current: None, reported_stray: false }
    }

    pub fn context(&self) -> Option<&UploadContext> {
        self.context.as_ref()
    }

    /// Handles a text message when it is an upload message, and returns the
    /// replies; returns `None` for any other message.
    pub async fn text(&mut self, text: &str, browser: &Browser) -> Option<Vec<Value>> {
        let kind = serde_json::from_str::<Value>(text).ok()?.get("type")?.as_str()?.to_string();
        if kind != "upload" && kind != "upload_cancel" {
            return None;
        }
        let message = match serde_json::from_str::<UploadMessage>(text) {
            Ok(message) => message,
            Err(error) => return Some(vec![json!({ "type": "error", "message": format!("the {kind} message is invalid: {error}") })]),
        };
        Some(match message {
            UploadMessage::Upload { chooser, files } => {
                self.current = None;
                self.reported_stray = false;
                match self.start(chooser, files, browser).await {
                    Ok(replies) => replies,
                    Err(message) => vec![failed(chooser, message)],
                }
            }
            UploadMessage::UploadCancel { chooser } => {
                if self.current.as_ref().is_some_and(|u| u.chooser.id == chooser) {
                    self.current = None;
                }
                browser.take_file_chooser(chooser);
                Vec::new()
            }
        })
    }

    async fn start(&mut self, chooser_id: u64, announced: Vec<Announced>, browser: &Browser) -> Result<Vec<Value>, String> {
        let Some(context) = &self.context else {
            return Err("the session's profile allows no uploads (transfer.uploads)".into());
        };
        let Some(chooser) = browser.take_file_chooser(chooser_id) else {
            return Err(format!("file chooser {chooser_id} is not open: the page closed it or it was filled already; click the page's file input again"));
        };
        if announced.is_empty() || announced.len() > MAX_FILES {
            return Err(format!("an upload carries 1 to {MAX_FILES} files, not {}", announced.len()));
        }
        if !chooser.multiple && announced.len() > 1 {
            return Err(format!("the page accepts one file, and {} were chosen; choose one", announced.len()));
        }
        for file in &announced {
            if file.size > context.limit {
                return Err(format!(
                    "{:?} is {} bytes, above the profile's upload limit of {} bytes (transfer.upload_limit); choose a smaller file",
                    sanitize_filename(&file.name),
                    file.size,
                    context.limit
                ));
            }
        }

        let control = context.control.clone();
        let names: Vec<(String, u64)> = announced.into_iter().map(|f| (sanitize_filename(&f.name), f.size)).collect();
        let created = tokio::task::spawn_blocking(move || -> Result<(Arc<WorkDir>, Vec<UploadFile>), String> {
            let work = Arc::new(control.work_dir().map_err(|e| format!("the session's files cannot be reached: {e}"))?);
            let mut files = Vec::new();
            for (name, size) in names {
                match work.create_file(UPLOADS, &name) {
                    Ok((file, path)) => files.push(UploadFile { name, size, path, file: Some(file), written: 0 }),
                    Err(error) => {
                        for file in &files {
                            let _ = work.remove_created(&file.path);
                        }
                        return Err(format!("{name:?} could not be created in the session: {error}"));
                    }
                }
            }
            Ok((work, files))
        })
        .await
        .map_err(|e| format!("the upload could not be prepared: {e}"))??;
        let (work, files) = created;

        let mut upload = Upload { chooser, work, files, current: 0, completed: false };
        upload.skip_full();
        if upload.received_all() {
            return self.finish(upload, browser).await.map(|done| vec![json!({ "type": "upload_ready", "chooser": chooser_id }), done]);
        }
        self.current = Some(upload);
        Ok(vec![json!({ "type": "upload_ready", "chooser": chooser_id })])
    }

    /// Handles a binary message from the viewer, and returns the replies.
    pub async fn binary(&mut self, bytes: &[u8], browser: &Browser) -> Vec<Value> {
        let Some((&UPLOAD_CHUNK, data)) = bytes.split_first() else {
            return vec![json!({ "type": "error", "message": format!("a binary message must start with the byte {UPLOAD_CHUNK:#04x} and carry upload bytes") })];
        };
        let Some(mut upload) = self.current.take() else {
            if std::mem::replace(&mut self.reported_stray, true) {
                return Vec::new();
            }
            return vec![json!({ "type": "error", "message": "upload bytes arrived with no upload in progress; send an upload message and wait for upload_ready" })];
        };
        let chooser = upload.chooser.id;
        match write_chunk(&mut upload, data.to_vec()).await {
            Ok(()) if upload.received_all() => match self.finish(upload, browser).await {
                Ok(done) => vec![done],
                Err(message) => vec![failed(chooser, message)],
            },
            Ok(()) => {
                self.current = Some(upload);
                Vec::new()
            }
            Err(message) => vec![failed(chooser, message)],
        }
    }

    /// Audits the received files and gives them to the page's input.
    async fn finish(&mut self, mut upload: Upload, browser: &Browser) -> Result<Value, String> {
        let context = self.context.as_ref().ok_or("the session's profile allows no uploads (transfer.uploads)")?;
        for file in &upload.files {
            let entry = Entry::new("browser.upload", &context.actor)
                .session(&context.session_id)
                .field("filename", file.name.clone())
                .field("bytes", file.size)
                .field("path", format!("/work/{}", file.path));
            context.app.audit.one(entry).await.map_err(|e| format!("the upload could not be recorded in the audit log, so the page did not get it: {e}"))?;
        }
        let paths: Vec<String> = upload.files.iter().map(|f| format!("/work/{}", f.path)).collect();
        browser.set_files(&upload.chooser, &paths).await.map_err(|e| format!("the page did not take the files: {e}"))?;
        upload.completed = true;
        let files: Vec<Value> = upload.files.iter().map(|f| json!({ "name": f.name, "size": f.size })).collect();
        Ok(json!({ "type": "upload_done", "chooser": upload.chooser.id, "files": files }))
    }
}

/// Writes the bytes of one binary message into the upload's files, in order.
///
/// NOTE: the server's thread writes the pages, so the kernel charges them
/// to the server's memory cgroup and not to the session's. Only the size of
/// `/work` bounds them.
async fn write_chunk(upload: &mut Upload, data: Vec<u8>) -> Result<(), String> {
    let mut offset = 0;
    while offset < data.len() {
        let Some(target) = upload.files.get_mut(upload.current) else {
            return Err(format!("the viewer sent {} bytes more than the files it announced", data.len() - offset));
        };
        let room = usize::try_from(target.size - target.written).unwrap_or(usize::MAX);
        let end = data.len().min(offset + room);
        let Some(mut file) = target.file.take() else {
            return Err(format!("{:?} is closed", target.name));
        };
        let piece = data[offset..end].to_vec();
        let (file, written) = tokio::task::spawn_blocking(move || {
            let written = file.write_all(&piece);
            (file, written)
        })
        .await
        .map_err(|e| format!("the upload could not be written: {e}"))?;
        written.map_err(|e| format!("{:?} could not be written in the session: {e}", target.name))?;
        target.file = Some(file);
        target.written += (end - offset) as u64;
        offset = end;
        upload.skip_full();
    }
    Ok(())
}
