//! The clipboard between a viewer's device and its browser session: each
//! direction is allowed only by the profile's `[transfer]` switches, sized
//! by its `clipboard_limit`, rate-limited, and audited before it happens.

use std::sync::Arc;
use std::time::{Duration, Instant};

use mayfly_audit::Entry;
use mayfly_browser::{Browser, Input};
use mayfly_core::browser::BrowserSettings;
use serde_json::{json, Value};

use crate::audit::Auditor;

/// At most this many clipboard transfers per viewer in [`WINDOW`].
const MAX_PER_WINDOW: usize = 20;
const WINDOW: Duration = Duration::from_secs(10);

/// One viewer's clipboard transfers.
pub struct Transfers {
    settings: Arc<BrowserSettings>,
    audit: Auditor,
    actor: String,
    session_id: String,
    recent: Vec<Instant>,
}

impl Transfers {
    pub fn new(settings: Arc<BrowserSettings>, audit: Auditor, actor: String, session_id: String) -> Transfers {
        Transfers { settings, audit, actor, session_id, recent: Vec::new() }
    }

    /// Passes one input on to the browser, applying the clipboard policy;
    /// returns a message for the viewer, if the input has one.
    pub async fn input(&mut self, browser: &Browser, input: Input) -> Result<Option<Value>, String> {
        let policy = &self.settings.transfer;
        let limit = policy.clipboard_limit.as_bytes() as usize;
        match input {
            Input::Paste { text } => {
                if !policy.clipboard_in {
                    return Err("this session's profile does not allow pasting from your device (transfer.clipboard_in)".into());
                }
                if text.len() > limit {
                    return Err(format!("the pasted text is {} bytes; this session's profile allows at most {} (transfer.clipboard_limit)", text.len(), policy.clipboard_limit));
                }
                self.record("browser.clipboard_in", text.len()).await?;
                browser.input(Input::Paste { text }).await.map(|()| None)
            }
            Input::Copy => {
                if !policy.clipboard_out {
                    return Err("this session's profile does not allow copying to your device (transfer.clipboard_out)".into());
                }
                let text = browser.selected_text().await?;
                if text.is_empty() {
                    return Ok(Some(json!({ "type": "clipboard", "text": "" })));
                }
                if text.len() > limit {
                    return Err(format!("the selected text is {} bytes; this session's profile allows copying at most {} (transfer.clipboard_limit)", text.len(), policy.clipboard_limit));
                }
                self.record("browser.clipboard_out", text.len()).await?;
                Ok(Some(json!({ "type": "clipboard", "text": text })))
            }
            input => browser.input(input).await.map(|()| None),
        }
    }

    /// Counts a transfer against the rate limit and audits it; refuses it
    /// when either fails.
    async fn record(&mut self, kind: &str, bytes: usize) -> Result<(), String> {
        let now = Instant::now();
        self.recent.retain(|at| now.duration_since(*at) < WINDOW);
        if self.recent.len() >= MAX_PER_WINDOW {
            return Err(format!("more than {MAX_PER_WINDOW} clipboard transfers in {} seconds; wait a moment", WINDOW.as_secs()));
        }
        self.recent.push(now);
        let entry = Entry::new(kind, &self.actor).session(&self.session_id).field("bytes", bytes);
        self.audit.one(entry).await.map_err(|error| {
            tracing::error!(session_id = %self.session_id, error = %error, "failed to record a clipboard transfer; refusing it");
            "the transfer could not be recorded in the audit log, so it did not happen".to_string()
        })
    }
}
