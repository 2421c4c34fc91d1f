//! Keystroke-to-echo timing on a terminal, the same code for a shell
//! session attached over the WebSocket and for the host anchor.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use serde_json::Value;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

use super::attach_socket::connect_attach;
use crate::remote::http::Stream;

/// The key typed and timed. Shell prompts rarely contain it, and the bench
/// waits for quiet before each keystroke anyway.
pub(super) const KEY: u8 = b'x';
/// DEL, the erase character of a new Linux terminal, which removes the typed
/// key again so the command line never grows or wraps.
const ERASE: u8 = 0x7f;
/// Backspace, which a shell's line editor sends when it erases a character.
const BACKSPACE: u8 = 0x08;
/// Maximum wait for one echo before the measurement counts as failed.
pub(super) const ECHO_TIMEOUT: Duration = Duration::from_secs(5);
/// Output-free time after which a shell counts as waiting at its prompt.
const PROMPT_QUIET: Duration = Duration::from_millis(300);
/// Maximum wait for a new shell to print its prompt and go quiet.
const PROMPT_TIMEOUT: Duration = Duration::from_secs(30);
/// Output-free time after an erase before the next keystroke.
const ERASE_QUIET: Duration = Duration::from_millis(10);

/// A terminal the bench types into and reads the output of.
pub(super) trait EchoTerminal {
    fn send(&mut self, bytes: &[u8]) -> Result<(), String>;

    /// Waits up to `timeout` for output and returns the bytes that arrived,
    /// which may be none after a message that carries no output, or `None`
    /// when the time passed with nothing.
    fn receive(&mut self, timeout: Duration) -> Result<Option<Vec<u8>>, String>;
}

/// Reads output until it contains `byte`, for at most `timeout`.
fn wait_for_byte(terminal: &mut impl EchoTerminal, byte: u8, timeout: Duration) -> Result<(), String> {
    let started = Instant::now();
    loop {
        let left = timeout.checked_sub(started.elapsed()).ok_or_else(|| format!("no echo of byte {byte:#04x} within {} s", timeout.as_secs()))?;
        if let Some(bytes) = terminal.receive(left)? {
            if bytes.contains(&byte) {
                return Ok(());
            }
        }
    }
}

/// Reads output until none arrives for `quiet`, for at most `timeout`, and
/// returns the number of output bytes read.
fn wait_quiet(terminal: &mut impl EchoTerminal, quiet: Duration, timeout: Duration) -> Result<usize, String> {
    let started = Instant::now();
    let mut total = 0;
    while let Some(bytes) = terminal.receive(quiet)? {
        total += bytes.len();
        if started.elapsed() > timeout {
            return Err(format!("the terminal kept printing for {} s", timeout.as_secs()));
        }
    }
    Ok(total)
}

/// Waits until a new shell has printed something, its prompt, and then
/// gone quiet.
pub(super) fn wait_for_prompt(terminal: &mut impl EchoTerminal) -> Result<(), String> {
    let started = Instant::now();
    let mut printed = 0;
    while printed == 0 {
        if started.elapsed() > PROMPT_TIMEOUT {
            return Err(format!("the shell printed no prompt within {} s", PROMPT_TIMEOUT.as_secs()));
        }
        printed += wait_quiet(terminal, PROMPT_QUIET, PROMPT_TIMEOUT)?;
    }
    Ok(())
}

/// Types `KEY` and returns the time until its echo arrives. Then erases it,
/// untimed, and waits until the terminal is quiet again.
pub(super) fn time_echo(terminal: &mut impl EchoTerminal) -> Result<Duration, String> {
    let started = Instant::now();
    terminal.send(&[KEY])?;
    wait_for_byte(terminal, KEY, ECHO_TIMEOUT)?;
    let elapsed = started.elapsed();
    terminal.send(&[ERASE])?;
    wait_for_byte(terminal, BACKSPACE, ECHO_TIMEOUT)?;
    wait_quiet(terminal, ERASE_QUIET, ECHO_TIMEOUT)?;
    Ok(elapsed)
}

/// A shell session attached as its writer over the attach WebSocket, with
/// the client that `mayfly attach` uses.
pub(super) struct AttachedShell {
    runtime: tokio::runtime::Runtime,
    socket: WebSocketStream<Stream>,
}

impl AttachedShell {
    pub(super) fn attach(address: SocketAddr, api_token: &str, id: &str, attach_token: &str) -> Result<AttachedShell, String> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| format!("cannot start the async runtime: {e}"))?;
        let socket = runtime.block_on(connect_attach(address, api_token, id, attach_token))?;
        Ok(AttachedShell { runtime, socket })
    }

    pub(super) fn close(mut self) {
        let _ = self.runtime.block_on(self.socket.close(None));
    }
}

impl EchoTerminal for AttachedShell {
    fn send(&mut self, bytes: &[u8]) -> Result<(), String> {
        let message = Message::Binary(bytes.to_vec().into());
        self.runtime.block_on(self.socket.send(message)).map_err(|e| format!("sending a keystroke failed: {e}"))
    }

    /// Returns the output bytes of a binary frame, after its stream byte.
    /// A text message returns no bytes, unless it is the session's end.
    fn receive(&mut self, timeout: Duration) -> Result<Option<Vec<u8>>, String> {
        let socket = &mut self.socket;
        // The timer must be created inside the runtime, so in the async block.
        let next = self.runtime.block_on(async move { tokio::time::timeout(timeout, socket.next()).await });
        match next {
            Err(_elapsed) => Ok(None),
            Ok(Some(Ok(Message::Binary(frame)))) => Ok(Some(frame.get(1..).unwrap_or_default().to_vec())),
            Ok(Some(Ok(Message::Text(text)))) => {
                let message: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
                if message["type"] == "end" {
                    return Err(format!("the session ended while attached: {}", message["end"]));
                }
                Ok(Some(Vec::new()))
            }
            Ok(Some(Ok(Message::Close(_)))) | Ok(None) => Err("the server closed the attach WebSocket".into()),
            Ok(Some(Ok(_))) => Ok(Some(Vec::new())),
            Ok(Some(Err(error))) => Err(format!("reading the attach WebSocket failed: {error}")),
        }
    }
}
