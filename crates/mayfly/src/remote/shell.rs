//! `mayfly shell` and `mayfly attach`: a terminal on a shell session. The
//! local terminal is put in raw mode, so every key goes to the remote shell,
//! and restored on every way out. Ctrl-] detaches and leaves the session
//! running.

use std::io::{Read, Write};
use std::os::fd::AsRawFd;

use clap::Args;
use futures_util::{SinkExt, StreamExt};
use hyper::Method;
use mayfly_core::{EndReason, ExitCode};
use nix::sys::termios::{self, SetArg, Termios};
use serde_json::{json, Value};
use tokio::signal::unix::{signal, SignalKind};
use tokio_tungstenite::tungstenite::Message;

use super::http::{Client, Failure};
use super::{block_on, encode, RemoteArgs};

/// The key that detaches: Ctrl-].
const DETACH: u8 = 0x1d;
/// Undoes display modes a remote program may have left on: the alternate
/// screen, a hidden cursor, application keypad and cursor keys, mouse
/// reporting, bracketed paste and text attributes.
const RESET_DISPLAY: &[u8] = b"\x1b[?1049l\x1b[?25h\x1b>\x1b[?1l\x1b[?1000l\x1b[?1002l\x1b[?1003l\x1b[?1006l\x1b[?1015l\x1b[?2004l\x1b[0m";

#[derive(Debug, Args)]
pub struct ShellArgs {
    #[command(flatten)]
    pub remote: RemoteArgs,
    /// Shell profile to start.
    #[arg(long, default_value = "shell")]
    pub profile: String,
    /// Session lifetime, such as 15m; at most the profile's maximum.
    #[arg(long, allow_hyphen_values = true)]
    pub ttl: Option<String>,
    /// Environment variable for the shell, as KEY=VALUE; repeatable.
    #[arg(long = "env", value_name = "KEY=VALUE")]
    pub env: Vec<String>,
}

#[derive(Debug, Args)]
pub struct AttachArgs {
    #[command(flatten)]
    pub remote: RemoteArgs,
    /// Watch without typing, when the session's profile allows observers.
    #[arg(long)]
    pub observe: bool,
    /// Id of the session.
    pub id: String,
}

/// Puts the terminal in raw mode and restores it when dropped.
struct RawMode {
    saved: Termios,
}

impl RawMode {
    fn enter() -> Option<RawMode> {
        let stdin = std::io::stdin();
        let saved = termios::tcgetattr(&stdin).ok()?;
        let mut raw = saved.clone();
        termios::cfmakeraw(&mut raw);
        termios::tcsetattr(&stdin, SetArg::TCSADRAIN, &raw).ok()?;
        Some(RawMode { saved })
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        let _ = termios::tcsetattr(std::io::stdin(), SetArg::TCSADRAIN, &self.saved);
    }
}

/// Returns the local terminal's size, or 24 by 80 when there is none.
fn window_size() -> (u16, u16) {
    let mut size = libc::winsize { ws_row: 0, ws_col: 0, ws_xpixel: 0, ws_ypixel: 0 };
    // SAFETY: TIOCGWINSZ writes one winsize that lives on this stack.
    let ok = unsafe { libc::ioctl(std::io::stdout().as_raw_fd(), libc::TIOCGWINSZ, &mut size) } == 0;
    if ok && size.ws_row > 0 && size.ws_col > 0 {
        (size.ws_row, size.ws_col)
    } else {
        (24, 80)
    }
}

/// Prints a line for the person at the terminal, on a line of its own even in raw mode.
fn notice(text: &str) {
    let mut stderr = std::io::stderr();
    let _ = write!(stderr, "\r\n[mayfly] {text}\r\n");
    let _ = stderr.flush();
}

fn describe_end(end: &Value) -> Option<String> {
    serde_json::from_value::<EndReason>(end.clone()).ok().and_then(|reason| reason.describe())
}

/// The way an attach ended.
enum Outcome {
    Ended { end: Value, exit_code: i32 },
    Detached,
    Lost,
}

async fn attach_terminal(client: &Client, id: &str, token: &str, observe: bool) -> Result<Outcome, Failure> {
    let mode = if observe { "observe" } else { "write" };
    let mut socket = client.websocket(&format!("/v1/sessions/{}/attach?token={}&mode={mode}", encode(id), encode(token))).await?;
    let interactive = nix::unistd::isatty(std::io::stdin()).unwrap_or(false);
    let raw = if interactive { RawMode::enter() } else { None };

    // Keystrokes come from a plain thread, since reading a terminal blocks.
    let (keys, mut key_receiver) = tokio::sync::mpsc::channel::<Vec<u8>>(64);
    std::thread::spawn(move || {
        let mut buffer = [0u8; 4096];
        let mut stdin = std::io::stdin();
        loop {
            match stdin.read(&mut buffer) {
                Ok(0) | Err(_) => return,
                Ok(n) => {
                    if keys.blocking_send(buffer[..n].to_vec()).is_err() {
                        return;
                    }
                }
            }
        }
    });
    let mut resized = signal(SignalKind::window_change()).map_err(|e| Failure::unavailable(e.to_string()))?;
    let mut hangup = signal(SignalKind::hangup()).map_err(|e| Failure::unavailable(e.to_string()))?;
    let mut terminate = signal(SignalKind::terminate()).map_err(|e| Failure::unavailable(e.to_string()))?;
    let (rows, cols) = window_size();
    if !observe {
        let _ = socket.send(Message::Text(json!({ "type": "resize", "rows": rows, "cols": cols }).to_string().into())).await;
    }

    let mut stdout = std::io::stdout();
    let mut sanitizer = super::sanitize::Sanitizer::new();
    let mut end = None;
    let mut input_open = true;
    // An end-of-file sent before the shell reads its terminal is lost, so it
    // waits for the shell's first output.
    let mut seen_output = false;
    let mut eof_pending = false;
    let outcome = loop {
        tokio::select! {
            message = socket.next() => match message {
                Some(Ok(Message::Binary(frame))) if !frame.is_empty() => {
                    let clean = sanitizer.filter(&frame[1..]);
                    let _ = stdout.write_all(&clean).and_then(|()| stdout.flush());
                    seen_output = true;
                    if eof_pending {
                        eof_pending = false;
                        let _ = socket.send(Message::Binary(vec![0x04].into())).await;
                    }
                }
                Some(Ok(Message::Text(text))) => {
                    let message: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
                    match message["type"].as_str() {
                        Some("warning") => {
                            let left = mayfly_core::Ttl::from_secs(message["remaining_seconds"].as_u64().unwrap_or(0));
                            notice(&format!("this session ends in {left}, at its deadline"));
                        }
                        Some("idle_warning") => {
                            let left = mayfly_core::Ttl::from_secs(message["remaining_seconds"].as_u64().unwrap_or(0));
                            notice(&format!("no input for a while; this session ends in {left} unless you type"));
                        }
                        Some("end") => {
                            let code = message["exit_code"].as_i64().unwrap_or(i64::from(ExitCode::SETUP_FAILED)) as i32;
                            end = Some((message["end"].clone(), code));
                        }
                        Some("dropped") => notice("some output was dropped before it could be shown"),
                        _ => {}
                    }
                }
                Some(Ok(Message::Close(_))) | None | Some(Err(_)) => break match end.take() {
                    Some((end, exit_code)) => Outcome::Ended { end, exit_code },
                    None => Outcome::Lost,
                },
                Some(Ok(_)) => {}
            },
            keys = key_receiver.recv(), if input_open && (!observe || interactive) => match keys {
                Some(bytes) => {
                    if bytes.contains(&DETACH) {
                        break Outcome::Detached;
                    }
                    if !observe && socket.send(Message::Binary(bytes.into())).await.is_err() {
                        break Outcome::Lost;
                    }
                }
                // Input ended. From a pipe or file that is the end of what
                // the shell gets, so it receives an end-of-file (Ctrl-D) as
                // over ssh; output keeps showing until the session ends.
                None => {
                    input_open = false;
                    if !observe && !interactive {
                        if seen_output {
                            let _ = socket.send(Message::Binary(vec![0x04].into())).await;
                        } else {
                            eof_pending = true;
                        }
                    }
                }
            },
            _ = resized.recv() => {
                if !observe {
                    let (rows, cols) = window_size();
                    let _ = socket.send(Message::Text(json!({ "type": "resize", "rows": rows, "cols": cols }).to_string().into())).await;
                }
            }
            _ = hangup.recv() => break Outcome::Detached,
            _ = terminate.recv() => break Outcome::Detached,
        }
    };
    // Discard anything the terminal queued as input while attached, so that
    // none of it reaches the local shell after the client exits.
    if interactive {
        let _ = stdout.write_all(RESET_DISPLAY).and_then(|()| stdout.flush());
        let _ = termios::tcflush(std::io::stdin(), termios::FlushArg::TCIFLUSH);
    }
    drop(raw);
    let _ = socket.close(None).await;
    Ok(outcome)
}

/// Reports how the attach ended and returns the exit code.
async fn finish(client: &Client, id: &str, outcome: Outcome, observe: bool) -> Result<i32, Failure> {
    let again = if observe { format!("mayfly attach --observe {id}") } else { format!("mayfly attach {id}") };
    match outcome {
        Outcome::Ended { end, exit_code } => {
            if let Some(text) = describe_end(&end) {
                notice(&format!("session {id} ended: {text} (exit code {exit_code})"));
            }
            Ok(exit_code)
        }
        Outcome::Detached => {
            notice(&format!("detached; session {id} keeps running until its deadline or its idle timeout. Attach again with: {again}"));
            Ok(0)
        }
        Outcome::Lost => {
            let answer = client.call(Method::GET, &format!("/v1/sessions/{}", encode(id)), None).await;
            match answer {
                Ok(answer) if answer.status.as_u16() == 410 => {
                    let session = &answer.body["session"];
                    let code = session["exit_code"].as_i64().unwrap_or(i64::from(ExitCode::SETUP_FAILED)) as i32;
                    if let Some(text) = describe_end(&session["end"]) {
                        notice(&format!("session {id} ended: {text} (exit code {code})"));
                    }
                    Ok(code)
                }
                _ => Err(Failure::unavailable(format!(
                    "the connection to session {id} was lost; it keeps running until its deadline or its idle timeout. Attach again with: {again}"
                ))),
            }
        }
    }
}

pub fn shell(args: ShellArgs) -> i32 {
    block_on(async move {
        let client = args.remote.client()?;
        let mut env = serde_json::Map::new();
        for pair in &args.env {
            let Some((key, value)) = pair.split_once('=') else {
                return Err(Failure::usage(format!("--env {pair:?} is missing '=': write KEY=VALUE")));
            };
            env.insert(key.into(), json!(value));
        }
        let (rows, cols) = window_size();
        let mut body = json!({ "profile": args.profile, "env": env, "terminal": { "rows": rows, "cols": cols } });
        if let Some(ttl) = &args.ttl {
            body["ttl"] = json!(ttl);
        }
        let created = client.expect(Method::POST, "/v1/sessions", Some(&body)).await?;
        let id = created["session"]["id"].as_str().unwrap_or_default().to_string();
        let token = created["attach"]["token"].as_str().unwrap_or_default().to_string();
        notice(&format!("session {id} started; Ctrl-] detaches"));
        let outcome = attach_terminal(&client, &id, &token, false).await?;
        finish(&client, &id, outcome, false).await
    })
}

pub fn attach(args: AttachArgs) -> i32 {
    block_on(async move {
        let client = args.remote.client()?;
        let answer = client.call(Method::POST, &format!("/v1/sessions/{}/attach-token", encode(&args.id)), None).await?;
        if answer.status.as_u16() == 410 {
            let reason = describe_end(&answer.body["end"]).unwrap_or_else(|| format!("the command exited with status {}", answer.body["exit_code"]));
            return Err(Failure { code: ExitCode::API_REFUSED, message: format!("session {} is gone: {reason}; sessions cannot be resumed", args.id) });
        }
        if !answer.status.is_success() {
            return Err(super::http::problem_failure(&answer));
        }
        let token = answer.body["token"].as_str().unwrap_or_default().to_string();
        let role = if args.observe { "watching" } else { "attached to" };
        notice(&format!("{role} session {}; the output so far follows; Ctrl-] detaches", args.id));
        let outcome = attach_terminal(&client, &args.id, &token, args.observe).await?;
        finish(&client, &args.id, outcome, args.observe).await
    })
}
