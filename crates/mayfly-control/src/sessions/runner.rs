//! The thread that runs one session's sandbox and reports its transitions.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use mayfly_core::{EndReason, ExitCode, SessionState};
use mayfly_sandbox::session::{self, SessionConfig, SessionControl, SessionError, SessionOutcome};
use tokio::runtime::Handle;

use super::output::{Output, OutputWriter, STDERR, STDOUT};
use super::SYSTEM;
use crate::app::{now_ms, App};
use crate::store::Ending;

/// A control whose launch hook moves the session to `running`.
pub(super) fn control_for(app: &Arc<App>, id: &str) -> SessionControl {
    let app = Arc::downgrade(app);
    let id = id.to_string();
    let handle = Handle::current();
    SessionControl::new(move |init_pid| {
        let Some(app) = app.upgrade() else { return };
        let since_request = app.live.lock().unwrap_or_else(|e| e.into_inner()).get(&id).map(|live| live.requested_at.elapsed());
        let since_request_us = since_request.map(|d| d.as_micros() as u64);
        let detail = serde_json::json!({ "init_pid": init_pid, "since_request_us": since_request_us });
        // The hook runs on the session's own thread, never on a runtime
        // thread, so it may wait for the transition to be recorded.
        let moved = handle.block_on(app.transition(&id, SessionState::Running, SYSTEM, detail));
        match (moved, since_request) {
            (Ok(true), Some(elapsed)) => app.metrics.creation_seconds.observe(elapsed.as_secs_f64()),
            // Fail closed: a session whose start cannot be audited is destroyed.
            (Err(problem), _) => {
                tracing::error!(session_id = %id, detail = %problem.detail, "destroying a session whose start could not be recorded");
                if let Some(live) = app.live.lock().unwrap_or_else(|e| e.into_inner()).get(&id) {
                    live.control.destroy("its start could not be recorded in the audit log");
                }
            }
            _ => {}
        }
    })
}

fn unix_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
}

/// Builds what the session record keeps of an outcome besides its end reason.
fn outcome_detail(outcome: &SessionOutcome, output_bytes: u64) -> serde_json::Value {
    serde_json::json!({
        "sandbox_id": outcome.sandbox_id,
        "usage": outcome.usage,
        "output_bytes": output_bytes,
        "teardown": outcome.teardown,
        "landlock": outcome.landlock,
        "deadline_enforced_by": outcome.deadline_enforced_by,
        "namespaces": outcome.namespaces,
        "timings": outcome.timings,
    })
}

fn ending_of(result: Result<SessionOutcome, SessionError>, app: &App, output: &Output, deadline_unix_ms: i64) -> Ending {
    match result {
        Ok(outcome) => {
            let clean = outcome.teardown.clean;
            if outcome.end == EndReason::Deadline {
                app.metrics.deadline_overshoot_seconds.observe((outcome.ended_at_unix_ms as i64 - deadline_unix_ms).max(0) as f64 / 1000.0);
            }
            let timings = &outcome.timings;
            app.metrics.teardown_seconds.observe((timings.teardown_us + timings.verify_us) as f64 / 1e6);
            Ending {
                state: if clean { SessionState::Destroyed } else { SessionState::Failed },
                ended_unix_ms: unix_ms(),
                end: serde_json::to_value(&outcome.end).expect("end reasons serialize"),
                exit_code: outcome.exit_code,
                detail: outcome_detail(&outcome, output.total_bytes()),
            }
        }
        Err(SessionError::DestroyedBeforeStart(reason)) => Ending {
            state: SessionState::Destroyed,
            ended_unix_ms: unix_ms(),
            end: serde_json::to_value(EndReason::Destroyed { detail: reason }).expect("serializes"),
            exit_code: ExitCode::DESTROYED,
            detail: serde_json::json!({ "note": "destroyed before its sandbox existed" }),
        },
        Err(error) => Ending {
            state: SessionState::Failed,
            ended_unix_ms: unix_ms(),
            end: serde_json::to_value(EndReason::SetupFailed { step: "create the sandbox".into(), error: error.to_string() }).expect("serializes"),
            exit_code: ExitCode::SETUP_FAILED,
            detail: serde_json::json!({}),
        },
    }
}

/// Starts the session's thread: `starting`, the sandbox run, then the end.
/// Ends a shell session whose writer has sent no input for `idle`. Output
/// does not count as activity, and neither does an attached observer.
pub(super) fn watch_idle(app: &Arc<App>, id: &str, input: Arc<super::terminal::TerminalInput>, idle: Duration) {
    let app = Arc::downgrade(app);
    let id = id.to_string();
    tokio::spawn(async move {
        loop {
            let quiet = input.last_input().elapsed();
            if quiet < idle {
                tokio::time::sleep(idle - quiet).await;
                continue;
            }
            let Some(app) = app.upgrade() else { return };
            if !app.live.lock().unwrap_or_else(|e| e.into_inner()).contains_key(&id) {
                return;
            }
            let reason = format!("idle timeout: no input for {}", mayfly_core::Ttl::from_duration(idle));
            if let Err(problem) = app.destroy_session(SYSTEM, &id, &reason).await {
                tracing::error!(session_id = %id, detail = %problem.detail, "failed to end an idle session");
            }
            return;
        }
    });
}

/// The controllers of a browser session: the viewer that writes, and the
/// automation clients.
pub(super) struct Controllers {
    pub viewer: Arc<std::sync::atomic::AtomicBool>,
    pub automation: Arc<std::sync::atomic::AtomicUsize>,
}

impl Controllers {
    fn present(&self) -> bool {
        self.viewer.load(std::sync::atomic::Ordering::SeqCst) || self.automation.load(std::sync::atomic::Ordering::SeqCst) > 0
    }
}

/// Ends a browser session that has had neither a viewer in control nor an
/// automation client for `grace`, counted from its creation and from each
/// time the last of them left.
pub(super) fn watch_viewer(app: &Arc<App>, id: &str, controllers: Controllers, grace: Duration) {
    let app = Arc::downgrade(app);
    let id = id.to_string();
    tokio::spawn(async move {
        let mut alone_since = std::time::Instant::now();
        loop {
            tokio::time::sleep(Duration::from_millis(500)).await;
            let Some(app) = app.upgrade() else { return };
            if !app.live.lock().unwrap_or_else(|e| e.into_inner()).contains_key(&id) {
                return;
            }
            if controllers.present() {
                alone_since = std::time::Instant::now();
                continue;
            }
            if alone_since.elapsed() < grace {
                continue;
            }
            let reason = format!("no viewer for {}", mayfly_core::Ttl::from_duration(grace));
            if let Err(problem) = app.destroy_session(SYSTEM, &id, &reason).await {
                tracing::error!(session_id = %id, detail = %problem.detail, "failed to end a browser session without a viewer");
            }
            return;
        }
    });
}

type Recording = (Arc<std::sync::Mutex<super::recording::Recorder>>, Duration);

/// Closes a session's recording and records its digest, or why it is
/// incomplete, in the audit log.
fn close_recording(app: &App, handle: &Handle, id: &str, recording: Recording) -> serde_json::Value {
    let (recorder, retention) = recording;
    let expires = now_ms() + retention.as_millis() as i64;
    let summary = recorder.lock().unwrap_or_else(|e| e.into_inner()).finish(&app.recordings_dir(), id, expires);
    let entry = mayfly_audit::Entry::new("session.recording", SYSTEM)
        .session(id)
        .field("complete", summary.complete)
        .field("sha256", summary.sha256.clone())
        .field("bytes", summary.bytes)
        .field("error", summary.error.clone())
        .field("expires_unix_ms", summary.expires_unix_ms);
    if let Err(error) = handle.block_on(app.audit.record(vec![entry], true)) {
        tracing::error!(session_id = %id, error = %error, "failed to record a recording's digest");
    }
    serde_json::to_value(&summary).expect("summaries serialize")
}

pub(super) fn spawn(
    app: Arc<App>,
    mut config: SessionConfig,
    deadline_unix_ms: i64,
    output: Arc<Output>,
    stdin: Option<Box<dyn std::io::Read + Send>>,
    recording: Option<Recording>,
    member: Option<super::pool::Member>,
) {
    let handle = Handle::current();
    let id = config.session_id.clone();
    let (failed_app, failed_id) = (Arc::clone(&app), id.clone());
    let thread = std::thread::Builder::new().name(format!("session-{id}")).spawn(move || {
        match handle.block_on(app.transition(&id, SessionState::Starting, SYSTEM, serde_json::json!({}))) {
            Ok(true) => {}
            // Destroyed before it could start: nothing exists to tear down.
            Ok(false) => {
                let control = app.live.lock().unwrap_or_else(|e| e.into_inner()).get(&id).map(|l| l.control.clone());
                if let Some(control) = control {
                    control.destroy("destroyed before it started");
                }
            }
            Err(problem) => {
                tracing::error!(session_id = %id, detail = %problem.detail, "not starting a session whose transition could not be recorded");
                if let Some(control) = config.control.as_ref() {
                    control.destroy("its start could not be recorded in the audit log");
                }
            }
        }
        // The deadline counts from creation, so the time spent before the
        // sandbox starts comes off the TTL.
        let left = (deadline_unix_ms - now_ms()).max(1) as u64;
        config.ttl = Duration::from_millis(left);
        let layout = app.host.layout.clone().expect("creation checked the cgroup layout");
        let recorder = recording.as_ref().map(|(r, _)| Arc::clone(r));
        let stdout = Box::new(OutputWriter { output: Arc::clone(&output), stream: STDOUT, recorder });
        let stderr = Box::new(OutputWriter { output: Arc::clone(&output), stream: STDERR, recorder: None });
        let result = match member {
            None => session::run(config, &layout, stdin, stdout, stderr),
            // A member claimed by a session destroyed before its start runs
            // no command: it is destroyed unclaimed.
            Some(member) => match config.control.as_ref().and_then(SessionControl::destroy_requested) {
                Some(reason) => {
                    let evidence = member.prepared.destroy();
                    if !evidence.clean {
                        tracing::error!(session_id = %id, evidence = ?evidence, "a pool member destroyed before its claim left something behind");
                    }
                    Err(SessionError::DestroyedBeforeStart(reason))
                }
                None => {
                    let (_, claim) = config.split();
                    member.prepared.claim(claim, stdin, stdout, stderr)
                }
            },
        };
        if let Err(error) = &result {
            tracing::warn!(session_id = %id, error = %error, "the session's sandbox did not start");
        }
        let mut ending = ending_of(result, &app, &output, deadline_unix_ms);
        if let Some(recording) = recording {
            let summary = close_recording(&app, &handle, &id, recording);
            if let serde_json::Value::Object(detail) = &mut ending.detail {
                detail.insert("recording".into(), summary);
            }
        }
        let summary = serde_json::json!({ "state": ending.state, "end": ending.end, "exit_code": ending.exit_code });
        if let Err(problem) = handle.block_on(app.finish(&id, ending, SYSTEM)) {
            tracing::error!(session_id = %id, detail = %problem.detail, "failed to record the end of a session");
        }
        output.end(summary);
        app.finished.lock().unwrap_or_else(|e| e.into_inner()).insert(&id, Arc::clone(&output));
        app.admission.lock().unwrap_or_else(|e| e.into_inner()).release(&id);
        app.live.lock().unwrap_or_else(|e| e.into_inner()).remove(&id);
    });
    if let Err(error) = thread {
        tracing::error!(session_id = %failed_id, error = %error, "failed to start a session thread");
        let ending = Ending {
            state: SessionState::Failed,
            ended_unix_ms: unix_ms(),
            end: serde_json::to_value(EndReason::SetupFailed { step: "start the session thread".into(), error: error.to_string() }).expect("serializes"),
            exit_code: ExitCode::SETUP_FAILED,
            detail: serde_json::json!({}),
        };
        tokio::spawn(async move {
            if let Err(problem) = failed_app.finish(&failed_id, ending, SYSTEM).await {
                tracing::error!(session_id = %failed_id, detail = %problem.detail, "failed to record the end of a session");
            }
            failed_app.admission.lock().unwrap_or_else(|e| e.into_inner()).release(&failed_id);
            if let Some(live) = failed_app.live.lock().unwrap_or_else(|e| e.into_inner()).remove(&failed_id) {
                live.output.end(serde_json::json!({ "state": "failed", "exit_code": ExitCode::SETUP_FAILED }));
            }
        });
    }
}
