//! The session manager: creation with every check in order, the lifecycle
//! transitions with their events and audit records, destroy, and crash
//! recovery.

pub mod admission;
pub mod browser;
pub mod egress;
pub mod job;
pub mod output;
pub mod pool;
pub mod recording;
mod recovery;
mod runner;
pub mod terminal;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use mayfly_audit::Entry;
use mayfly_core::profile::valid_env_name;
use mayfly_core::{ByteSize, EndReason, Kind, LimitOverrides, Profile, SessionState, Ttl};
use mayfly_sandbox::session::SessionControl;
use serde::{Deserialize, Serialize};

use crate::app::{now_ms, App};
use crate::policy::{Action, Resource};
use crate::problem::Problem;
use crate::profiles;
use crate::store::{AttachTokenRecord, Ending, SessionRecord};
use crate::tokens::{self, Authenticated};

use admission::Reservation;
use output::Output;

/// How long an attach token stays valid, at most; never past the deadline.
const ATTACH_TOKEN_LIFETIME: Duration = Duration::from_secs(600);
const MAX_ARGS: usize = 4096;
const MAX_ENV: usize = 256;

/// A session this process runs.
pub struct Live {
    pub control: SessionControl,
    pub output: Arc<Output>,
    pub owner: String,
    pub requested_at: Instant,
    pub deadline_unix_ms: i64,
    /// The input side of a shell session, `None` for a job.
    pub terminal: Option<Arc<terminal::TerminalInput>>,
    pub shell: Option<mayfly_core::profile::ShellSettings>,
    /// A browser session's browser, once its driver has attached.
    pub browser: Option<browser::BrowserSlot>,
    /// Set while a viewer is attached to a browser session as its writer.
    pub browser_writer: Arc<std::sync::atomic::AtomicBool>,
    /// A browser session's settings, including its data-transfer policy,
    /// as they were at creation.
    pub browser_settings: Option<Arc<mayfly_core::browser::BrowserSettings>>,
    /// The number of automation clients connected to a browser session.
    pub automation_clients: Arc<std::sync::atomic::AtomicUsize>,
}

/// A terminal's size in a request.
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TerminalRequest {
    pub rows: u16,
    pub cols: u16,
}

/// How long an ended session's output stays attachable, and how many ended
/// sessions' output is kept at most.
pub const FINISHED_RETENTION: Duration = Duration::from_secs(600);
const FINISHED_MAX: usize = 256;

/// The output of recently ended sessions, oldest first.
#[derive(Default)]
pub struct Finished {
    outputs: std::collections::VecDeque<(String, Arc<Output>, Instant)>,
}

impl Finished {
    pub fn insert(&mut self, id: &str, output: Arc<Output>) {
        self.outputs.push_back((id.to_string(), output, Instant::now()));
        while self.outputs.len() > FINISHED_MAX {
            self.outputs.pop_front();
        }
    }

    pub fn get(&self, id: &str) -> Option<Arc<Output>> {
        self.outputs.iter().find(|(i, _, _)| i == id).map(|(_, output, _)| Arc::clone(output))
    }

    /// Drops output older than [`FINISHED_RETENTION`].
    pub fn prune(&mut self) {
        while self.outputs.front().is_some_and(|(_, _, at)| at.elapsed() > FINISHED_RETENTION) {
            self.outputs.pop_front();
        }
    }
}

/// Limits a request may lower below its profile's.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RequestLimits {
    pub memory: Option<String>,
    pub cpus: Option<f64>,
    pub pids: Option<u32>,
    pub tmp: Option<String>,
    pub shm: Option<String>,
    pub work: Option<String>,
    pub open_files: Option<u32>,
}

/// The body of `POST /v1/sessions`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateRequest {
    #[serde(default = "default_profile")]
    pub profile: String,
    pub ttl: Option<String>,
    /// The program and arguments of a job; shell profiles start their own.
    pub command: Option<Vec<String>>,
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// The initial window size of a shell session: 24 rows and 80 columns
    /// when absent.
    pub terminal: Option<TerminalRequest>,
    #[serde(default)]
    pub limits: RequestLimits,
}

fn default_profile() -> String {
    "default".into()
}

#[derive(Debug, Clone, Serialize)]
pub struct AttachGrant {
    pub token: String,
    pub expires_unix_ms: i64,
    pub url: String,
}

#[derive(Debug, Serialize)]
pub struct Created {
    pub session: SessionRecord,
    pub attach: AttachGrant,
}

/// Returns the actor name of a principal in audit records.
pub fn actor(who: &Authenticated) -> String {
    format!("user:{}", who.principal.name)
}

pub const SYSTEM: &str = "mayfly";

fn size(field: &str, value: &Option<String>) -> Result<Option<ByteSize>, Problem> {
    value
        .as_deref()
        .map(|text| ByteSize::parse(text).map_err(|e| Problem::bad_request(format!("limits.{field}: {e}"))))
        .transpose()
}

/// Words a limit error for the API, whose fields are `limits.NAME` rather
/// than command-line flags.
fn limit_message(error: mayfly_core::limits::LimitError) -> String {
    use mayfly_core::limits::LimitError;
    let field = |flag: &str| format!("limits.{}", flag.trim_start_matches("--").replace('-', "_"));
    match error {
        LimitError::FlagOutOfRange { flag, value, min, max } => format!("{} = {value} is out of range: allowed is {min} to {max}", field(flag)),
        LimitError::AboveProfile { flag, key, value, profile_value } => format!(
            "{} = {value} is above the profile's {key} of {profile_value}: a request may lower the profile's limits, never raise them",
            field(flag)
        ),
        other => other.to_string(),
    }
}

/// The command, limits and terminal of a validated request.
struct Checked {
    ttl: Ttl,
    limits: mayfly_core::Limits,
    argv: Vec<String>,
    terminal: Option<mayfly_sandbox::terminal::WindowSize>,
}

/// Checks the request against its profile.
fn validate(profile: &Profile, request: &CreateRequest) -> Result<Checked, Problem> {
    let (argv, terminal) = match (profile.kind, &request.command, &profile.shell) {
        (Kind::Job, Some(command), _) => {
            if request.terminal.is_some() {
                return Err(Problem::bad_request(format!("profile {:?} runs jobs, which have no terminal; leave terminal out", profile.name)));
            }
            (command.clone(), None)
        }
        (Kind::Job, None, _) if request.terminal.is_some() => {
            return Err(Problem::bad_request(format!(
                "profile {:?} runs jobs, not shells; choose a shell profile such as \"shell\"",
                profile.name
            )))
        }
        (Kind::Job, None, _) => {
            return Err(Problem::bad_request("command is missing: give the program and its arguments, for example [\"/bin/echo\", \"hello\"]"))
        }
        (Kind::Browser, Some(_), _) => {
            return Err(Problem::bad_request(format!("profile {:?} starts its own browser; leave command out", profile.name)))
        }
        (Kind::Browser, None, _) => {
            if request.terminal.is_some() {
                return Err(Problem::bad_request(format!(
                    "profile {:?} is a browser profile, which has no terminal; leave terminal out, or choose a shell profile for a terminal (`mayfly shell` always asks for one)",
                    profile.name
                )));
            }
            let settings = profile.browser.as_ref().expect("browser profiles have browser settings");
            (browser::chromium_argv(profile, settings), None)
        }
        (Kind::Shell, Some(_), _) => {
            return Err(Problem::bad_request(format!("profile {:?} starts its own shell; leave command out", profile.name)))
        }
        (Kind::Shell, None, shell) => {
            let shell = shell.as_ref().expect("shell profiles have shell settings");
            let size = match request.terminal {
                None => mayfly_sandbox::terminal::WindowSize { rows: 24, cols: 80 },
                Some(t) => mayfly_sandbox::terminal::WindowSize::checked(t.rows, t.cols).ok_or_else(|| {
                    Problem::bad_request(format!("terminal {}x{} is out of range: rows and cols must be 1 to 1000", t.rows, t.cols))
                })?,
            };
            (shell.command.clone(), Some(size))
        }
    };
    let ttl = request.ttl.as_deref().map(Ttl::parse).transpose().map_err(|e| Problem::bad_request(format!("ttl: {e}")))?;
    let ttl = profile.resolve_ttl(ttl).map_err(|e| Problem::bad_request(e.to_string()).with("max_ttl", profile.max_ttl.to_string()))?;
    let cpu_millis = match request.limits.cpus {
        None => None,
        Some(cores) if cores.is_finite() => Some(mayfly_core::limits::cpus_to_millis(cores)),
        Some(_) => return Err(Problem::bad_request("limits.cpus must be a number of cores such as 1 or 0.5")),
    };
    let overrides = LimitOverrides {
        memory: size("memory", &request.limits.memory)?,
        cpu_millis,
        pids: request.limits.pids,
        tmp: size("tmp", &request.limits.tmp)?,
        shm: size("shm", &request.limits.shm)?,
        work: size("work", &request.limits.work)?,
        open_files: request.limits.open_files,
    };
    let limits = profile.limits.lowered_by(&overrides).map_err(|e| Problem::bad_request(limit_message(e)))?;
    if argv.is_empty() || argv[0].is_empty() {
        return Err(Problem::bad_request("command is empty: give the program and its arguments, for example [\"/bin/echo\", \"hello\"]"));
    }
    if argv.len() > MAX_ARGS {
        return Err(Problem::bad_request(format!("command has {} arguments; at most {MAX_ARGS} are allowed", argv.len())));
    }
    if let Some(index) = argv.iter().position(|a| a.contains('\0')) {
        return Err(Problem::bad_request(format!("command[{index}] contains a NUL byte")));
    }
    if request.env.len() > MAX_ENV {
        return Err(Problem::bad_request(format!("env has {} variables; at most {MAX_ENV} are allowed", request.env.len())));
    }
    for (name, value) in &request.env {
        if !valid_env_name(name) {
            return Err(Problem::bad_request(format!(
                "env: {name:?} is not a valid variable name; use letters, digits and underscores, not starting with a digit"
            )));
        }
        if value.contains('\0') {
            return Err(Problem::bad_request(format!("env.{name}: the value contains a NUL byte")));
        }
    }
    Ok(Checked { ttl, limits, argv, terminal })
}

impl App {
    /// Decides an action by policy and records the decision, allowed or
    /// denied. A decision that cannot be recorded denies the request.
    pub async fn authorize(&self, who: &Authenticated, action: Action, resource: &Resource<'_>, ttl_seconds: Option<i64>) -> Result<(), Problem> {
        let decision = self.policies.authorize(&who.principal, action, resource, ttl_seconds);
        let entry = Entry::new("authz.decision", &actor(who))
            .field("action", action.name())
            .field("resource", resource.describe())
            .field("allowed", decision.allowed)
            .field("policies", decision.policies.clone())
            .field("errors", decision.errors.clone())
            .field("token", who.token_prefix.clone())
            .field("groups", who.principal.groups.clone());
        let entry = match resource {
            Resource::Session { id, .. } => entry.session(id),
            _ => entry,
        };
        self.audit.one(entry).await.map_err(|e| Problem::audit_failed(&e))?;
        if decision.allowed {
            Ok(())
        } else {
            self.metrics.denials.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            Err(Problem::forbidden(action.name(), &resource.describe()).with("policies", decision.policies))
        }
    }

    /// Returns the directory of shell recordings.
    pub fn recordings_dir(&self) -> std::path::PathBuf {
        self.config.state_dir.join("recordings")
    }

    /// Fetches a session or returns 404.
    pub async fn session_or_404(&self, id: &str) -> Result<SessionRecord, Problem> {
        self.store.session(id).await.map_err(|e| Problem::store_failed(&e))?.ok_or_else(|| Problem::not_found(format!("there is no session {id:?}")))
    }

    /// Moves a session to a new state, then records the event and the audit
    /// record. Returns false, doing nothing, when the lifecycle forbids it.
    pub(crate) async fn transition(&self, id: &str, to: SessionState, actor: &str, detail: serde_json::Value) -> Result<bool, Problem> {
        let _ordered = self.transition_lock(id).lock().await;
        if !self.store.move_session(id, to).await.map_err(|e| Problem::store_failed(&e))? {
            return Ok(false);
        }
        self.record_event(id, to.as_str(), to, actor, detail, false).await?;
        Ok(true)
    }

    /// Records an event in the session's history, the audit log and the
    /// live event stream.
    pub(crate) async fn record_event(&self, id: &str, kind: &str, state: SessionState, actor: &str, detail: serde_json::Value, checkpoint: bool) -> Result<(), Problem> {
        let mut entry = Entry::new(&format!("session.{kind}"), actor).session(id).field("state", state.as_str());
        if let serde_json::Value::Object(fields) = &detail {
            for (key, value) in fields {
                entry = entry.field(key, value.clone());
            }
        }
        let audited = self.audit.record(vec![entry], checkpoint).await;
        let event = self.store.append_event(id, kind, state, &detail, now_ms()).await.map_err(|e| Problem::store_failed(&e))?;
        let _ = self.events.send(event);
        audited.map_err(|e| Problem::audit_failed(&e))
    }

    /// Writes a session's end: its final state, reason and evidence.
    pub(crate) async fn finish(&self, id: &str, ending: Ending, actor: &str) -> Result<bool, Problem> {
        let _ordered = self.transition_lock(id).lock().await;
        if !self.store.end_session(id, &ending).await.map_err(|e| Problem::store_failed(&e))? {
            return Ok(false);
        }
        let detail = serde_json::json!({
            "end": ending.end,
            "exit_code": ending.exit_code,
            "detail": ending.detail,
        });
        self.record_event(id, "ended", ending.state, actor, detail, true).await?;
        Ok(true)
    }

    /// Issues a short-lived token that attaches to one session.
    pub async fn issue_attach_token(&self, session: &SessionRecord, principal: &str) -> Result<AttachGrant, Problem> {
        let (text, hash) = tokens::new_attach_token();
        let expires = (now_ms() + ATTACH_TOKEN_LIFETIME.as_millis() as i64).min(session.deadline_unix_ms);
        let record = AttachTokenRecord { hash, session_id: session.id.clone(), principal: principal.into(), expires_unix_ms: expires };
        self.store.insert_attach_token(&record).await.map_err(|e| Problem::store_failed(&e))?;
        Ok(AttachGrant { token: text, expires_unix_ms: expires, url: format!("/v1/sessions/{}/attach", session.id) })
    }

    /// Creates a job session: validates, authorizes, checks quota and
    /// capacity, records it, and starts its sandbox on a thread of its own.
    pub async fn create_session(self: &Arc<Self>, who: &Authenticated, request: CreateRequest) -> Result<Created, Problem> {
        let requested_at = Instant::now();
        if self.draining() {
            return Err(Problem::unavailable("shutting-down", "the server is shutting down and starts no new sessions", Some(5)));
        }
        if !self.recovered() {
            return Err(Problem::unavailable("recovering", "the server is still recovering from its last stop; try again shortly", Some(2)));
        }
        let profile = profiles::load(&request.profile, self.config.profiles_dir.as_deref()).map_err(|error| match error {
            mayfly_core::ProfileError::NotFound { name, .. } => {
                Problem::bad_request(format!("profile {name:?} does not exist on this server; GET /v1/profiles lists the profiles it offers"))
            }
            invalid @ mayfly_core::ProfileError::InvalidName { .. } => Problem::bad_request(invalid.to_string()),
            // The file is the operator's, and the pools' refill logs its
            // error once per change, so a client cannot flood the log.
            other => {
                tracing::debug!(profile = %request.profile, error = %other, "a session request named a profile that does not load");
                Problem::unavailable("profile-unusable", profiles::unusable_message(&request.profile), None)
            }
        })?;
        let Checked { ttl, limits, argv, terminal } = validate(&profile, &request)?;
        let kind = profile.kind.as_str();
        self.authorize(who, Action::CreateSession, &Resource::Profile { name: &profile.name, kind }, Some(ttl.as_duration().as_secs() as i64))
            .await?;
        profiles::check_on_host(&profile).map_err(|message| Problem::unavailable("profile-unusable", message, None))?;
        let missing = match profile.landlock {
            mayfly_core::Landlock::Required => &self.host.missing_required,
            mayfly_core::Landlock::IfAvailable => &self.host.missing_optional,
        };
        if !missing.is_empty() || self.host.layout.is_none() {
            let lacking = if missing.is_empty() { "cgroups: no usable cgroup hierarchy".to_string() } else { missing.join("; ") };
            return Err(Problem::unavailable(
                "protection-missing",
                format!("profile {:?} needs protections this host lacks: {lacking}; run `mayfly doctor` on the host", profile.name),
                None,
            ));
        }

        let quota = self.quota.lock().await;
        let now = now_ms();
        let owner = who.principal.name.clone();
        let (live, recent) = self.store.quota_usage(&owner, now - 60_000).await.map_err(|e| Problem::store_failed(&e))?;
        let limits_cfg = &self.config.limits;
        if live >= i64::from(limits_cfg.sessions_per_principal) {
            self.metrics.quota_rejections.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            return Err(Problem::too_many(
                "quota-exceeded",
                format!("{owner} already has {live} live sessions, the most allowed at once; end one first"),
                5,
            )
            .with("limit", limits_cfg.sessions_per_principal));
        }
        if recent >= i64::from(limits_cfg.creations_per_minute_per_principal) {
            self.metrics.quota_rejections.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            return Err(Problem::too_many(
                "quota-exceeded",
                format!("{owner} created {recent} sessions in the last minute, the most allowed; wait a little"),
                10,
            )
            .with("limit", limits_cfg.creations_per_minute_per_principal));
        }
        let id = job::new_session_id();
        // A ready member of the profile's pool carries its reservation,
        // which passes to the session; without one the session starts cold.
        let (member, unhealthy) = self.pools.take(&profile, &limits, !request.env.is_empty());
        for member in unhealthy {
            pool::destroy_member(self, member, "the member failed its health check");
        }
        let mut taken = pool::TakenMember { app: Arc::clone(self), member };
        let start = match &taken.member {
            Some(member) => {
                self.admission.lock().unwrap_or_else(|e| e.into_inner()).transfer(member.id(), &id);
                "warm"
            }
            None => {
                let reservation = Reservation { memory_bytes: limits.memory.as_bytes(), cpu_millis: u64::from(limits.cpu_millis) };
                if let Err(reason) = self.admit_making_room(&id, reservation) {
                    self.metrics.admission_rejections.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    return Err(Problem::unavailable("host-full", format!("the host is full: {reason}; try again later"), Some(10)));
                }
                "cold"
            }
        };
        let release = |app: &App| app.admission.lock().unwrap_or_else(|e| e.into_inner()).release(&id);

        let record = SessionRecord {
            id: id.clone(),
            owner: owner.clone(),
            profile: profile.name.clone(),
            kind: kind.into(),
            state: SessionState::Pending,
            command: argv.clone(),
            ttl_ms: ttl.as_duration().as_millis() as i64,
            created_unix_ms: now,
            deadline_unix_ms: now + ttl.as_duration().as_millis() as i64,
            ended_unix_ms: None,
            end: None,
            exit_code: None,
            detail: None,
            isolation: crate::store::isolation_for(kind),
            start: Some(start.into()),
        };
        let attach = match self.issue_attach_token(&record, &owner).await {
            Ok(attach) => attach,
            Err(problem) => {
                release(self);
                return Err(problem);
            }
        };
        // Fail closed: the creation is on record before anything exists.
        let entry = Entry::new("session.created", &actor(who))
            .session(&id)
            .field("profile", profile.name.clone())
            .field("ttl", ttl.to_string())
            .field("deadline_unix_ms", record.deadline_unix_ms)
            .field("kind", kind)
            .field("program", argv[0].clone())
            .field("arguments", argv.len() - 1)
            .field("env_names", request.env.keys().cloned().collect::<Vec<_>>())
            .field("limits", serde_json::to_value(&limits).expect("limits serialize"))
            .field("start", start)
            .field("pool_member", taken.member.as_ref().map(|m| m.id().to_string()))
            .field("token", who.token_prefix.clone());
        if let Err(error) = self.audit.one(entry).await {
            release(self);
            return Err(Problem::audit_failed(&error));
        }
        if let Err(error) = self.store.insert_session(&record).await {
            release(self);
            let _ = self.audit.one(Entry::new("session.failed", SYSTEM).session(&id).field("error", "the database refused the session record")).await;
            return Err(Problem::store_failed(&error));
        }
        drop(quota);
        let event = self.store.append_event(&id, "pending", SessionState::Pending, &serde_json::json!({"owner": owner}), now).await;
        if let Ok(event) = event {
            let _ = self.events.send(event);
        }

        let output = Output::new(self.config.limits.output_buffer_bytes);
        let control = runner::control_for(self, &id);
        // A profile that requests a recording gets one, or no session.
        let recorder = match (&profile.shell, terminal) {
            (Some(shell), Some(size)) if shell.recording => {
                let term = profile.environment.get("TERM").cloned().unwrap_or_else(|| "xterm".into());
                match recording::Recorder::create(&self.recordings_dir(), &id, size, &term, now / 1000) {
                    Ok(recorder) => Some(Arc::new(std::sync::Mutex::new(recorder))),
                    Err(error) => {
                        release(self);
                        let _ = self.audit.one(Entry::new("session.failed", SYSTEM).session(&id).field("error", format!("the recording could not be created: {error}"))).await;
                        return Err(Problem::unavailable("recording-unavailable", format!("the profile records sessions, and the recording could not be created: {error}"), Some(10)));
                    }
                }
            }
            _ => None,
        };
        // A shell's input reaches the sandbox through a pipe fed by the
        // attached writer; a job reads an empty standard input.
        let (stdin, input): (Option<Box<dyn std::io::Read + Send>>, _) = match terminal {
            Some(_) => match std::io::pipe() {
                Ok((reader, writer)) => (Some(Box::new(reader)), Some(terminal::TerminalInput::start(writer, recorder.clone()))),
                Err(error) => {
                    release(self);
                    return Err(Problem::internal(format!("cannot create the terminal's input pipe: {error}")));
                }
            },
            None => (None, None),
        };
        self.live.lock().unwrap_or_else(|e| e.into_inner()).insert(
            id.clone(),
            Live {
                control: control.clone(),
                output: Arc::clone(&output),
                owner: owner.clone(),
                requested_at,
                deadline_unix_ms: record.deadline_unix_ms,
                terminal: input.clone(),
                shell: profile.shell.clone(),
                browser: None,
                browser_writer: Arc::default(),
                browser_settings: profile.browser.clone().map(Arc::new),
                automation_clients: Arc::default(),
            },
        );
        let spec = job::JobSpec {
            session_id: id.clone(),
            state_dir: self.config.state_dir.clone(),
            argv,
            env: request.env,
            ttl: ttl.as_duration(),
            limits,
        };
        let mut config = job::session_config(&profile, spec, Some(control));
        config.terminal = terminal;
        let egress_log = egress::ServerEgressLog { audit: self.audit.clone(), actor: format!("user:{owner}"), session_id: id.clone() };
        config.before_start = egress::before_start(&profile.network, Arc::new(egress_log));
        if let Some(settings) = &profile.browser {
            let (hook, slot) = browser::before_start(tokio::runtime::Handle::current(), id.clone(), settings, self.audit.clone(), format!("user:{owner}"));
            config.before_start = browser::chain(config.before_start.take(), Some(hook));
            config.command_pipes = true;
            config.env.extend(browser::chromium_environment(&profile, settings));
            let controllers = self.live.lock().unwrap_or_else(|e| e.into_inner()).get_mut(&id).map(|live| {
                live.browser = Some(slot);
                runner::Controllers { viewer: Arc::clone(&live.browser_writer), automation: Arc::clone(&live.automation_clients) }
            });
            if let Some(controllers) = controllers {
                runner::watch_viewer(self, &id, controllers, settings.viewer_grace.as_duration());
            }
        }
        if let (Some(input), Some(idle)) = (input, profile.shell.as_ref().and_then(|s| s.idle_timeout)) {
            runner::watch_idle(self, &id, input, idle.as_duration());
        }
        let retention = profile.shell.as_ref().map(|s| s.recording_retention.as_duration()).unwrap_or_default();
        runner::spawn(Arc::clone(self), config, record.deadline_unix_ms, output, stdin, recorder.map(|r| (r, retention)), taken.member.take());
        Ok(Created { session: record, attach })
    }

    /// Reserves room for a session. When the host is full, destroys the
    /// oldest idle pool members, whose reservations make the room, until the
    /// session fits or no member is left.
    fn admit_making_room(self: &Arc<Self>, id: &str, reservation: Reservation) -> Result<(), String> {
        let mut refused = match self.admission.lock().unwrap_or_else(|e| e.into_inner()).admit(id, reservation) {
            Ok(()) => return Ok(()),
            Err(reason) => reason,
        };
        while let Some(member) = self.pools.evict_one() {
            // The member's reservation passes to the session under one lock,
            // because the pool's refill, which the eviction wakes, would
            // otherwise take the freed room first. The sandbox goes on a
            // blocking thread.
            let admitted = {
                let mut admission = self.admission.lock().unwrap_or_else(|e| e.into_inner());
                admission.release(member.id());
                admission.admit(id, reservation)
            };
            pool::destroy_member(self, member, "a session needed its share of the host's capacity");
            match admitted {
                Ok(()) => return Ok(()),
                Err(reason) => refused = reason,
            }
        }
        Err(refused)
    }

    /// Destroys a session in whatever state it is in. Idempotent: an ended
    /// session is returned as it is. Waits briefly for the teardown so that
    /// the response usually shows the final state.
    pub async fn destroy_session(&self, actor: &str, id: &str, reason: &str) -> Result<SessionRecord, Problem> {
        let session = self.session_or_404(id).await?;
        if session.state.is_final() {
            return Ok(session);
        }
        let mut events = self.events.subscribe();
        self.transition(id, SessionState::Terminating, actor, serde_json::json!({ "reason": reason })).await?;
        let live = self.live.lock().unwrap_or_else(|e| e.into_inner()).get(id).map(|l| l.control.clone());
        match live {
            Some(control) => control.destroy(reason),
            None => {
                // No sandbox of this process belongs to it: nothing is left to kill.
                let ending = Ending {
                    state: SessionState::Destroyed,
                    ended_unix_ms: now_ms(),
                    end: serde_json::to_value(EndReason::Destroyed { detail: reason.into() }).expect("serializes"),
                    exit_code: mayfly_core::ExitCode::DESTROYED,
                    detail: serde_json::json!({ "note": "no sandbox was running for this session in this server" }),
                };
                self.finish(id, ending, actor).await?;
            }
        }
        let wait = tokio::time::sleep(Duration::from_secs(10));
        tokio::pin!(wait);
        loop {
            tokio::select! {
                _ = &mut wait => break,
                event = events.recv() => match event {
                    Ok(event) if event.session_id == id && event.state.is_final() => break,
                    Ok(_) => continue,
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {
                        if self.session_or_404(id).await?.state.is_final() { break }
                    }
                    Err(_) => break,
                },
            }
        }
        self.session_or_404(id).await
    }

    /// Destroys every live session at once, for a shutdown, and waits up to
    /// `timeout` for their teardown.
    pub async fn destroy_all(&self, reason: &str, timeout: Duration) {
        let ids: Vec<String> = self.live.lock().unwrap_or_else(|e| e.into_inner()).keys().cloned().collect();
        let destroys = ids.iter().map(|id| async move {
            if let Err(problem) = self.destroy_session(SYSTEM, id, reason).await {
                tracing::error!(session_id = %id, detail = %problem.detail, "failed to destroy a session at shutdown");
            }
        });
        let _ = tokio::time::timeout(timeout, futures_util::future::join_all(destroys)).await;
        let started = Instant::now();
        while self.live_count() > 0 && started.elapsed() < timeout {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

#[cfg(test)]
mod tests;
