//! `mayfly run --server URL`: create a job session through the API, stream
//! its output over the attach WebSocket and exit with its status.

use std::collections::BTreeMap;
use std::io::Write;

use futures_util::StreamExt;
use hyper::Method;
use mayfly_core::{EndReason, ExitCode};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;

use super::http::{Client, Failure};
use super::encode;
use crate::cli::RunArgs;

fn request_body(args: &RunArgs) -> Result<Value, Failure> {
    for (flag, used) in [("--input", !args.inputs.is_empty()), ("--artifacts", args.artifacts.is_some())] {
        if used {
            return Err(Failure::usage(format!("{flag} is not available with --server yet; run without --server on the host")));
        }
    }
    if args.profiles.profiles_dir.is_some() {
        return Err(Failure::usage(
            "--profiles-dir (or MAYFLY_PROFILES_DIR) applies to runs on this host; a server uses its own profiles, listed by GET /v1/profiles",
        ));
    }
    let mut env = BTreeMap::new();
    for pair in &args.env {
        let Some((key, value)) = pair.split_once('=') else {
            return Err(Failure::usage(format!("--env {pair:?} is missing '=': write KEY=VALUE")));
        };
        env.insert(key.to_string(), value.to_string());
    }
    let mut limits = serde_json::Map::new();
    for (key, value) in [("memory", &args.memory), ("tmp", &args.tmp), ("shm", &args.shm), ("work", &args.work)] {
        if let Some(value) = value {
            limits.insert(key.into(), json!(value));
        }
    }
    if let Some(cpus) = &args.cpus {
        let cores: f64 = cpus.trim().parse().map_err(|_| Failure::usage(format!("--cpus: invalid number {cpus:?}: expected cores such as 1, 2 or 0.5")))?;
        limits.insert("cpus".into(), json!(cores));
    }
    if let Some(pids) = args.pids {
        limits.insert("pids".into(), json!(pids));
    }
    if let Some(open_files) = args.open_files {
        limits.insert("open_files".into(), json!(open_files));
    }
    let mut body = json!({ "profile": args.profile, "command": args.command, "env": env, "limits": limits });
    if let Some(ttl) = &args.ttl {
        body["ttl"] = json!(ttl);
    }
    Ok(body)
}

/// Finds how a session ended when the attach closed without saying so.
async fn ask_end(client: &Client, id: &str) -> Result<Value, Failure> {
    let answer = client.call(Method::GET, &format!("/v1/sessions/{}", encode(id)), None).await?;
    match answer.status.as_u16() {
        410 => Ok(answer.body["session"].clone()),
        200 => Err(Failure::unavailable(format!("the attach to session {id} closed while it was still {}", answer.body["state"].as_str().unwrap_or("running")))),
        _ => Err(super::http::problem_failure(&answer)),
    }
}

async fn finish(client: &Client, args: &RunArgs, session_id: &str, end: &Value, exit_code: i32) -> i32 {
    if let Ok(reason) = serde_json::from_value::<EndReason>(end.clone()) {
        if let Some(text) = reason.describe() {
            eprintln!("mayfly: session {session_id} ended: {text} (exit code {exit_code})");
        }
    }
    if args.report.is_none() && !args.state.json {
        return exit_code;
    }
    // The report is the ended session's record: end, usage, teardown
    // evidence and timings, as the server stored them.
    let report = match ask_end(client, session_id).await {
        Ok(session) => session,
        Err(_) => json!({ "id": session_id, "end": end, "exit_code": exit_code }),
    };
    if let Some(path) = &args.report {
        if let Err(error) = std::fs::write(path, format!("{report}\n")) {
            eprintln!("mayfly: failed to write the report to {}: {error}", path.display());
        }
    }
    if args.state.json {
        eprintln!("{report}");
    }
    exit_code
}

pub fn run(args: &RunArgs) -> i32 {
    // A server's job reads no standard input, so input from a pipe or a
    // file would be lost silently. The warning tells the user.
    if !std::io::IsTerminal::is_terminal(&std::io::stdin()) && !crate::run::stdin_is_empty() {
        eprintln!("mayfly: standard input is not sent to a job on a server, which reads end-of-file; run it on this host (without --server and MAYFLY_URL) to give it input");
    }
    let json = args.state.json;
    let outcome = super::run_async(async move {
        let body = request_body(args)?;
        let client = args.remote.client()?;
        let created = client.expect(Method::POST, "/v1/sessions", Some(&body)).await?;
        let id = created["session"]["id"].as_str().unwrap_or_default().to_string();
        let token = created["attach"]["token"].as_str().unwrap_or_default().to_string();
        tracing::info!(session_id = %id, "session created");
        let mut socket = client.websocket(&format!("/v1/sessions/{}/attach?token={}", encode(&id), encode(&token))).await?;

        let mut interrupted = false;
        let mut end: Option<(Value, i32)> = None;
        let ctrl_c = tokio::signal::ctrl_c();
        tokio::pin!(ctrl_c);
        loop {
            tokio::select! {
                _ = &mut ctrl_c, if !interrupted => {
                    interrupted = true;
                    eprintln!("mayfly: interrupted; destroying session {id}");
                    if let Err(failure) = client.expect(Method::DELETE, &format!("/v1/sessions/{}", encode(&id)), None).await {
                        eprintln!("mayfly: {}", failure.message);
                    }
                }
                message = socket.next() => match message {
                    Some(Ok(Message::Binary(frame))) if !frame.is_empty() => {
                        let result = if frame[0] == 2 {
                            std::io::stderr().write_all(&frame[1..]).and_then(|()| std::io::stderr().flush())
                        } else {
                            std::io::stdout().write_all(&frame[1..]).and_then(|()| std::io::stdout().flush())
                        };
                        // A closed terminal or pipe is not a reason to leave the session running unattended.
                        let _ = result;
                    }
                    Some(Ok(Message::Text(text))) => {
                        let message: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
                        match message["type"].as_str() {
                            Some("end") => {
                                let code = message["exit_code"].as_i64().unwrap_or(i64::from(ExitCode::SETUP_FAILED)) as i32;
                                end = Some((message["end"].clone(), code));
                            }
                            Some("dropped") => eprintln!("mayfly: {} pieces of output were dropped before they could be shown", message["chunks"]),
                            _ => {}
                        }
                    }
                    Some(Ok(Message::Close(_))) | None => break,
                    Some(Ok(_)) => {}
                    Some(Err(error)) => {
                        tracing::debug!(error = %error, "the attach connection failed");
                        break;
                    }
                },
            }
        }
        let (end, code) = match end {
            Some(end) => end,
            None => {
                let session = ask_end(&client, &id).await.map_err(|failure| {
                    if failure.code == ExitCode::API_UNAVAILABLE {
                        Failure::unavailable(format!(
                            "the connection to the server was lost before session {id} ended ({}); the session may still run until its deadline; check it with `mayfly ls` when the server is back",
                            failure.message
                        ))
                    } else {
                        failure
                    }
                })?;
                let code = session["exit_code"].as_i64().unwrap_or(i64::from(ExitCode::SETUP_FAILED)) as i32;
                (session["end"].clone(), code)
            }
        };
        Ok(finish(&client, args, &id, &end, code).await)
    });
    match outcome {
        Ok(code) => code,
        Err(failure) => {
            eprintln!("mayfly: {}", failure.message);
            if json {
                eprintln!("{}", json!({ "error": failure.message, "exit_code": failure.code }));
            }
            failure.code
        }
    }
}
