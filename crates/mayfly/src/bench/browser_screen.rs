//! Measurements on a screen, which is a browser session's attach WebSocket
//! or the anchor's driver: first frame, quiet, key press to frame, and
//! frames over a fixed time.

use std::time::{Duration, Instant};

use mayfly_browser::Frame;
use serde_json::{json, Value};
use tokio::sync::watch;

use super::browser_anchor::AnchorBrowser;
use super::browser_report::StreamStats;
use super::browser_viewer::Viewer;

/// Maximum wait for one frame after a key press.
const FRAME_TIMEOUT: Duration = Duration::from_secs(5);
/// Maximum time a page may keep sending frames while the bench waits for quiet.
const QUIET_TIMEOUT: Duration = Duration::from_secs(10);

/// A source of screencast frames that takes viewer input messages.
pub(super) trait Screen {
    /// Waits up to `timeout` for the next frame and returns its JPEG size
    /// in bytes, or None when the time passed.
    async fn next_frame(&mut self, timeout: Duration) -> Result<Option<usize>, String>;

    async fn send(&mut self, message: &Value) -> Result<(), String>;
}

impl Screen for Viewer {
    async fn next_frame(&mut self, timeout: Duration) -> Result<Option<usize>, String> {
        Viewer::next_frame(self, timeout).await
    }

    async fn send(&mut self, message: &Value) -> Result<(), String> {
        Viewer::send(self, message).await
    }
}

/// The anchor's browser with a receiver of its frames.
pub(super) struct AnchorScreen {
    pub(super) anchor: AnchorBrowser,
    frames: watch::Receiver<Option<Frame>>,
}

impl AnchorScreen {
    pub(super) fn new(anchor: AnchorBrowser) -> AnchorScreen {
        let frames = anchor.browser.frames();
        AnchorScreen { anchor, frames }
    }
}

impl Screen for AnchorScreen {
    async fn next_frame(&mut self, timeout: Duration) -> Result<Option<usize>, String> {
        self.anchor.next_frame(&mut self.frames, timeout).await
    }

    async fn send(&mut self, message: &Value) -> Result<(), String> {
        self.anchor.input(message).await
    }
}

/// Waits up to `timeout` for a frame and returns an error without one.
pub(super) async fn first_frame(screen: &mut impl Screen, timeout: Duration) -> Result<(), String> {
    match screen.next_frame(timeout).await? {
        Some(_) => Ok(()),
        None => Err(format!("no frame arrived within {} s", timeout.as_secs())),
    }
}

/// Reads frames until none arrives for `quiet`, for at most `QUIET_TIMEOUT`.
pub(super) async fn wait_quiet(screen: &mut impl Screen, quiet: Duration) -> Result<(), String> {
    let started = Instant::now();
    while screen.next_frame(quiet).await?.is_some() {
        if started.elapsed() > QUIET_TIMEOUT {
            return Err(format!("the page kept sending frames for {} s", QUIET_TIMEOUT.as_secs()));
        }
    }
    Ok(())
}

/// Returns the key-down or key-up message of the `a` key.
pub(super) fn key_message(down: bool) -> Value {
    if down {
        json!({ "type": "key", "action": "down", "key": "a", "code": "KeyA", "text": "a", "key_code": 65 })
    } else {
        json!({ "type": "key", "action": "up", "key": "a", "code": "KeyA", "key_code": 65 })
    }
}

/// Presses a key and returns the time from sending the key-down to the
/// next frame, then releases the key, untimed. The caller waits for quiet
/// before, so the frame is the page's response to the key.
pub(super) async fn time_key(screen: &mut impl Screen) -> Result<Duration, String> {
    let started = Instant::now();
    screen.send(&key_message(true)).await?;
    if screen.next_frame(FRAME_TIMEOUT).await?.is_none() {
        return Err(format!("no frame arrived within {} s of a key press", FRAME_TIMEOUT.as_secs()));
    }
    let elapsed = started.elapsed();
    screen.send(&key_message(false)).await?;
    Ok(elapsed)
}

/// Reads frames for `warmup` uncounted, then counts frames and bytes for
/// `duration`.
pub(super) async fn count_frames(screen: &mut impl Screen, warmup: Duration, duration: Duration) -> Result<StreamStats, String> {
    let warmup_end = Instant::now() + warmup;
    while let Some(left) = warmup_end.checked_duration_since(Instant::now()) {
        screen.next_frame(left).await?;
    }
    let started = Instant::now();
    let (mut frames, mut bytes) = (0u64, 0u64);
    while let Some(left) = duration.checked_sub(started.elapsed()) {
        if let Some(size) = screen.next_frame(left).await? {
            frames += 1;
            bytes += size as u64;
        }
    }
    Ok(StreamStats { seconds: started.elapsed().as_secs_f64(), frames, bytes })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_messages_parse_as_input() {
        for down in [true, false] {
            let input: mayfly_browser::Input = serde_json::from_value(key_message(down)).expect("a key message is a known input");
            assert!(matches!(input, mayfly_browser::Input::Key { .. }));
        }
    }
}
