//! Warm pools: sandboxes prepared ahead of demand for profiles with a
//! `[pool]` section, so that a session starts without waiting for its
//! namespaces, cgroups and root filesystem.
//!
//! A member contains nothing of any session. It is built from its profile
//! alone, and the claim gives it the session's command, environment,
//! deadline and network. A browser profile's member runs Chromium before
//! the claim, with the profile's command line and environment. Each member
//! serves one session and is destroyed with it. A member that reaches its
//! profile's `pool.max_age`, that belongs
//! to a profile that has changed, or that fails a health check is
//! destroyed, never repaired. Members reserve their limits from the host's
//! capacity like sessions, and the reservation passes to the session that
//! claims one.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use mayfly_audit::Entry;
use mayfly_core::pool::PoolSettings;
use mayfly_core::{Kind, Limits, Profile};
use mayfly_sandbox::cgroup::{CgroupLimits, Layout};
use mayfly_sandbox::session::{PrepareConfig, Prepared};
use mayfly_sandbox::spec::BindMount;

use super::admission::Reservation;
use super::SYSTEM;
use crate::app::App;

/// How long a member may take from its start to a sandbox that waits for
/// its claim before the preparation counts as failed.
const READY_TIMEOUT: Duration = Duration::from_secs(30);
/// How often the refill loop looks at every pool when no claim wakes it.
const TICK: Duration = Duration::from_secs(1);
/// Time after which an unclaimed member's init ends it by itself, past its
/// profile's `pool.max_age`: it holds when the server cannot destroy it.
const UNCLAIMED_SLACK: Duration = Duration::from_secs(60);
/// The window over which demand is counted.
const DEMAND_WINDOW: Duration = Duration::from_secs(60);
/// The maximum wait after failed preparations before the next try.
const MAX_BACKOFF: Duration = Duration::from_secs(60);

/// A ready member of a pool.
pub struct Member {
    pub prepared: Prepared,
    profile: String,
    fingerprint: String,
}

impl Member {
    pub fn id(&self) -> &str {
        self.prepared.id()
    }
}

/// One profile's pool.
struct ProfilePool {
    fingerprint: String,
    settings: PoolSettings,
    limits: Limits,
    ready: VecDeque<Member>,
    preparing: usize,
    /// Preparations that failed in a row, and when the next may start.
    failures: u32,
    retry_at: Option<Instant>,
    /// Creations of sessions of the profile during the last [`DEMAND_WINDOW`].
    demand: VecDeque<Instant>,
    claims: VecDeque<Instant>,
    claims_total: u64,
    misses_total: u64,
    destroyed_total: u64,
    failures_total: u64,
}

impl ProfilePool {
    fn new(fingerprint: String, settings: PoolSettings, limits: Limits) -> ProfilePool {
        ProfilePool {
            fingerprint,
            settings,
            limits,
            ready: VecDeque::new(),
            preparing: 0,
            failures: 0,
            retry_at: None,
            demand: VecDeque::new(),
            claims: VecDeque::new(),
            claims_total: 0,
            misses_total: 0,
            destroyed_total: 0,
            failures_total: 0,
        }
    }

    fn prune_windows(&mut self, now: Instant) {
        for times in [&mut self.demand, &mut self.claims] {
            while times.front().is_some_and(|at| now.duration_since(*at) > DEMAND_WINDOW) {
                times.pop_front();
            }
        }
    }

    /// Returns the number of members to keep: `pool.min`, raised toward `pool.max`
    /// by the sessions of the profile created during the last minute.
    fn target(&self) -> usize {
        (self.demand.len() as u32).clamp(self.settings.min, self.settings.max) as usize
    }
}

/// The state of one pool, for `/metrics`, `/v1/pools` and the console.
#[derive(Debug, Clone, serde::Serialize)]
pub struct PoolStatus {
    pub profile: String,
    pub min: u32,
    pub max: u32,
    pub max_age_seconds: u64,
    pub target: usize,
    pub ready: usize,
    pub preparing: usize,
    pub claims_last_minute: usize,
    pub claims_total: u64,
    pub misses_total: u64,
    pub destroyed_total: u64,
    pub failures_total: u64,
    pub oldest_age_seconds: f64,
}

/// Every profile's pool.
#[derive(Default)]
pub struct Pools {
    pools: Mutex<HashMap<String, ProfilePool>>,
    /// Wakes the refill loop after a claim.
    wake: tokio::sync::Notify,
    /// The last logged reason each profile could not be loaded, so the
    /// refill loop logs a reason once rather than every second.
    unusable: Mutex<HashMap<String, String>>,
}

/// Returns what a member is compared by: the whole profile but its
/// `[pool]` section, so that any other change replaces the members.
pub fn fingerprint(profile: &Profile) -> String {
    let mut compared = profile.clone();
    compared.pool = None;
    serde_json::to_string(&compared).expect("profiles serialize")
}

/// Returns a new member id: `p-` and the rest of a session id, so that
/// members sort by age and are distinguished from sessions.
fn new_member_id() -> String {
    format!("p-{}", &super::job::new_session_id()[2..])
}

/// Builds a member's sandbox from its profile alone.
fn member_config(profile: &Profile, id: &str, state_dir: &std::path::Path, max_age: Duration) -> PrepareConfig {
    let limits = &profile.limits;
    PrepareConfig {
        sandbox_id: id.to_string(),
        state_dir: state_dir.to_path_buf(),
        hostname: profile.hostname.clone(),
        timezone: profile.timezone.clone(),
        limits: CgroupLimits { memory_bytes: limits.memory.as_bytes(), cpu_millis: limits.cpu_millis, pids: limits.pids },
        tmp_bytes: limits.tmp.as_bytes(),
        shm_bytes: limits.shm.as_bytes(),
        work_bytes: limits.work.as_bytes(),
        open_files: limits.open_files,
        inputs: Vec::new(),
        artifacts: None,
        mounts: profile.mounts.iter().map(|m| BindMount { source: m.source.clone(), target: m.target.clone() }).collect(),
        landlock: super::job::landlock_mode(profile),
        command_pipes: profile.kind == Kind::Browser,
        terminal: profile.kind == Kind::Shell,
        prestart: browser_command(profile),
        max_unclaimed: max_age + UNCLAIMED_SLACK,
        pool_member: true,
    }
}

/// Returns a browser profile's Chromium command, which a member starts
/// before its claim: the same command and environment as a session of the
/// profile whose request sets no `env` gets.
fn browser_command(profile: &Profile) -> Option<mayfly_sandbox::spec::Command> {
    let settings = profile.browser.as_ref()?;
    let argv = super::browser::chromium_argv(profile, settings);
    let spec = super::job::JobSpec {
        session_id: String::new(),
        state_dir: Default::default(),
        argv: argv.clone(),
        env: Default::default(),
        ttl: Duration::ZERO,
        limits: profile.limits.clone(),
    };
    let mut env = super::job::session_config(profile, spec, None).env;
    env.extend(super::browser::chromium_environment(profile, settings));
    Some(mayfly_sandbox::spec::Command { argv, env })
}

impl Pools {
    /// Takes a ready member for a session of `profile` with `limits`, and
    /// counts the creation as demand. Returns `None`, a miss, when the
    /// profile has no pool, its pool is empty, the members were built from
    /// another version of the profile, or the request lowered the limits
    /// below the profile's. A browser session whose request sets `env`
    /// misses too, because a member's Chromium started with the profile's
    /// environment. Members that fail their health check on the way are
    /// returned for destruction.
    pub fn take(&self, profile: &Profile, limits: &Limits, request_env: bool) -> (Option<Member>, Vec<Member>) {
        let mut pools = self.pools.lock().unwrap_or_else(|e| e.into_inner());
        let Some(pool) = pools.get_mut(&profile.name) else { return (None, Vec::new()) };
        let now = Instant::now();
        pool.demand.push_back(now);

        let mut unhealthy = Vec::new();
        let mut taken = None;
        let prestarted = profile.kind == Kind::Browser;
        if pool.fingerprint == fingerprint(profile) && pool.limits == *limits && !(prestarted && request_env) {
            while let Some(mut member) = pool.ready.pop_front() {
                match member.prepared.check_health() {
                    Ok(()) => {
                        taken = Some(member);
                        break;
                    }
                    Err(error) => {
                        tracing::warn!(profile = %profile.name, member = %member.id(), error = %error, "destroying a pool member that failed its health check");
                        unhealthy.push(member);
                    }
                }
            }
        }

        if taken.is_some() {
            pool.claims_total += 1;
            pool.claims.push_back(now);
        } else {
            pool.misses_total += 1;
        }
        drop(pools);
        self.wake.notify_one();
        (taken, unhealthy)
    }

    /// Takes the oldest ready member of any pool, so that its reservation
    /// can make room for a session the host could not admit otherwise.
    pub fn evict_one(&self) -> Option<Member> {
        let mut pools = self.pools.lock().unwrap_or_else(|e| e.into_inner());
        let pool = pools.values_mut().filter(|p| !p.ready.is_empty()).max_by_key(|p| p.ready.front().map(|m| m.prepared.age()))?;
        pool.destroyed_total += 1;
        let member = pool.ready.pop_front();
        drop(pools);
        self.wake.notify_one();
        member
    }

    /// Returns the state of every pool, sorted by profile name.
    pub fn status(&self) -> Vec<PoolStatus> {
        let mut pools = self.pools.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        let mut list: Vec<PoolStatus> = pools
            .iter_mut()
            .map(|(name, pool)| {
                pool.prune_windows(now);
                PoolStatus {
                    profile: name.clone(),
                    min: pool.settings.min,
                    max: pool.settings.max,
                    max_age_seconds: pool.settings.max_age.as_duration().as_secs(),
                    target: pool.target(),
                    ready: pool.ready.len(),
                    preparing: pool.preparing,
                    claims_last_minute: pool.claims.len(),
                    claims_total: pool.claims_total,
                    misses_total: pool.misses_total,
                    destroyed_total: pool.destroyed_total,
                    failures_total: pool.failures_total,
                    oldest_age_seconds: pool.ready.iter().map(|m| m.prepared.age().as_secs_f64()).fold(0.0, f64::max),
                }
            })
            .collect();
        list.sort_by(|a, b| a.profile.cmp(&b.profile));
        list
    }

    /// Removes every ready member, for a shutdown.
    fn drain_all(&self) -> Vec<Member> {
        let mut pools = self.pools.lock().unwrap_or_else(|e| e.into_inner());
        pools.values_mut().flat_map(|pool| pool.ready.drain(..)).collect()
    }

    fn preparing_total(&self) -> usize {
        self.pools.lock().unwrap_or_else(|e| e.into_inner()).values().map(|p| p.preparing).sum()
    }
}

/// Loads every profile that has a `[pool]` section. A profile that fails to
/// load, or that this host cannot run, has no pool until it loads again.
/// Its reason is logged as a warning when it first appears or changes.
fn pooled_profiles(app: &App) -> Vec<Profile> {
    let directory = app.config.profiles_dir.as_deref();
    let mut pooled = Vec::new();
    let mut problems = HashMap::new();
    for name in crate::profiles::names(directory) {
        let loaded = crate::profiles::load(&name, directory).map_err(|e| e.to_string());
        match loaded.and_then(|profile| crate::profiles::check_on_host(&profile).map(|()| profile).map_err(|e| e.to_string())) {
            Ok(profile) if profile.pool.is_some() => pooled.push(profile),
            Ok(_) => {}
            Err(problem) => {
                problems.insert(name, problem);
            }
        }
    }
    let mut unusable = app.pools.unusable.lock().unwrap_or_else(|e| e.into_inner());
    for (name, problem) in &problems {
        if unusable.get(name) != Some(problem) {
            tracing::warn!(profile = %name, error = %problem, "a profile cannot be used; its sessions are rejected and it has no warm pool until the file is fixed");
        }
    }
    *unusable = problems;
    pooled
}

/// Destroys a member on a blocking thread, returns its reservation and
/// records the destruction with its reason.
pub fn destroy_member(app: &Arc<App>, member: Member, reason: &'static str) {
    let app = Arc::clone(app);
    tokio::spawn(async move {
        let id = member.id().to_string();
        let profile = member.profile.clone();
        let evidence = tokio::task::spawn_blocking(move || member.prepared.destroy()).await;
        app.admission.lock().unwrap_or_else(|e| e.into_inner()).release(&id);
        let evidence = match evidence {
            Ok(evidence) => evidence,
            Err(error) => {
                tracing::error!(member = %id, error = %error, "the thread destroying a pool member failed");
                return;
            }
        };
        if !evidence.clean {
            tracing::error!(member = %id, profile = %profile, evidence = ?evidence, "a destroyed pool member left something behind");
        }
        let entry = Entry::new("pool.member_destroyed", SYSTEM)
            .field("member", id.clone())
            .field("profile", profile)
            .field("reason", reason)
            .field("clean", evidence.clean);
        if let Err(error) = app.audit.one(entry).await {
            tracing::error!(member = %id, error = %error, "failed to record a destroyed pool member");
        }
    });
}

/// Brings every pool in line with its profile. Destroys the members of
/// changed or removed profiles, members past their maximum age and members
/// that fail their health check. Then starts preparations toward each
/// target, within the concurrency bound and the host's capacity.
fn reconcile(app: &Arc<App>, layout: &Layout, profiles: &[Profile]) {
    let mut doomed: Vec<(Member, &'static str)> = Vec::new();
    let mut starts: Vec<(Profile, String, String)> = Vec::new();
    {
        let mut pools = app.pools.pools.lock().unwrap_or_else(|e| e.into_inner());
        // Profiles whose pool section or file is gone keep no members.
        pools.retain(|name, pool| {
            if profiles.iter().any(|p| &p.name == name) {
                return true;
            }
            doomed.extend(pool.ready.drain(..).map(|m| (m, "the profile no longer has a pool")));
            pool.preparing > 0
        });
        let mut budget = (app.config.pool_preparations as usize).saturating_sub(pools.values().map(|p| p.preparing).sum());
        let now = Instant::now();
        for profile in profiles {
            let settings = profile.pool.clone().expect("only profiles with a pool are passed");
            let print = fingerprint(profile);
            let pool = pools.entry(profile.name.clone()).or_insert_with(|| ProfilePool::new(print.clone(), settings.clone(), profile.limits.clone()));
            pool.settings = settings;
            if pool.fingerprint != print {
                tracing::info!(profile = %profile.name, replaced = pool.ready.len(), "the profile changed; replacing its pool members");
                pool.fingerprint = print.clone();
                pool.limits = profile.limits.clone();
                doomed.extend(pool.ready.drain(..).map(|m| (m, "the profile changed")));
            }
            let max_age = pool.settings.max_age.as_duration();
            let mut kept = VecDeque::new();
            for mut member in pool.ready.drain(..) {
                if member.prepared.age() >= max_age {
                    doomed.push((member, "the member reached the profile's pool.max_age"));
                } else if let Err(error) = member.prepared.check_health() {
                    tracing::warn!(profile = %profile.name, member = %member.id(), error = %error, "destroying a pool member that failed its health check");
                    doomed.push((member, "the member failed its health check"));
                } else {
                    kept.push_back(member);
                }
            }
            pool.ready = kept;
            pool.prune_windows(now);
            if pool.retry_at.is_some_and(|at| now < at) {
                continue;
            }
            let missing = pool.target().saturating_sub(pool.ready.len() + pool.preparing);
            for _ in 0..missing.min(budget) {
                let id = new_member_id();
                let limits = &profile.limits;
                let reservation = Reservation { memory_bytes: limits.memory.as_bytes(), cpu_millis: u64::from(limits.cpu_millis) };
                // Members count against the host's capacity like sessions;
                // a full host prepares none.
                if app.admission.lock().unwrap_or_else(|e| e.into_inner()).admit(&id, reservation).is_err() {
                    break;
                }
                pool.preparing += 1;
                budget -= 1;
                starts.push((profile.clone(), id, print.clone()));
            }
        }
        for (name, pool) in pools.iter_mut() {
            pool.destroyed_total += doomed.iter().filter(|(m, _)| &m.profile == name).count() as u64;
        }
    }
    for (member, reason) in doomed {
        destroy_member(app, member, reason);
    }
    for (profile, id, print) in starts {
        start_preparation(app, layout.clone(), profile, id, print);
    }
}

/// Prepares one member on a blocking thread and adds it to its pool when it
/// is ready, or records the failure and backs off.
fn start_preparation(app: &Arc<App>, layout: Layout, profile: Profile, id: String, print: String) {
    let app = Arc::clone(app);
    tokio::spawn(async move {
        let max_age = profile.pool.as_ref().map(|p| p.max_age.as_duration()).unwrap_or_default();
        let config = member_config(&profile, &id, &app.config.state_dir, max_age);
        let prepared = tokio::task::spawn_blocking(move || {
            let mut prepared = mayfly_sandbox::session::prepare(config, &layout).map_err(|e| e.to_string())?;
            match prepared.wait_ready(READY_TIMEOUT) {
                Ok(()) => Ok(prepared),
                Err(error) => {
                    let _ = prepared.destroy();
                    Err(error)
                }
            }
        })
        .await
        .unwrap_or_else(|e| Err(format!("the preparing thread failed: {e}")));
        let mut pools = app.pools.pools.lock().unwrap_or_else(|e| e.into_inner());
        let pool = pools.get_mut(&profile.name);
        let member = match (prepared, pool) {
            (Ok(prepared), Some(pool)) => {
                pool.preparing -= 1;
                pool.failures = 0;
                pool.retry_at = None;
                let member = Member { prepared, profile: profile.name.clone(), fingerprint: print };
                if member.fingerprint == pool.fingerprint && !app.draining() {
                    pool.ready.push_back(member);
                    None
                } else {
                    pool.destroyed_total += 1;
                    Some(member)
                }
            }
            (Ok(prepared), None) => Some(Member { prepared, profile: profile.name.clone(), fingerprint: print }),
            (Err(error), pool) => {
                app.admission.lock().unwrap_or_else(|e| e.into_inner()).release(&id);
                if let Some(pool) = pool {
                    pool.preparing -= 1;
                    pool.failures += 1;
                    pool.failures_total += 1;
                    let backoff = Duration::from_secs(1 << pool.failures.min(6)).min(MAX_BACKOFF);
                    pool.retry_at = Some(Instant::now() + backoff);
                    tracing::warn!(profile = %profile.name, member = %id, error = %error, failures = pool.failures, retry_in_seconds = backoff.as_secs(), "failed to prepare a pool member");
                }
                None
            }
        };
        drop(pools);
        if let Some(member) = member {
            destroy_member(&app, member, "the profile changed while the member was prepared");
        }
    });
}

/// Keeps the pools filled until the server drains, then destroys every
/// member. Starts after recovery, which destroys the members a crashed
/// server left.
pub fn spawn_refill(app: &Arc<App>) {
    let Some(layout) = app.host.layout.clone() else { return };
    let app = Arc::clone(app);
    tokio::spawn(async move {
        while !app.recovered() {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        while !app.draining() {
            let loader = Arc::clone(&app);
            let profiles = tokio::task::spawn_blocking(move || pooled_profiles(&loader)).await.unwrap_or_default();
            reconcile(&app, &layout, &profiles);
            tokio::select! {
                _ = app.pools.wake.notified() => {}
                _ = tokio::time::sleep(TICK) => {}
            }
        }
    });
}

/// Destroys every ready member and waits, up to `timeout`, for those being
/// prepared and destroyed. Called once the server drains, so no new
/// preparation starts.
pub async fn destroy_all(app: &Arc<App>, timeout: Duration) {
    let started = Instant::now();
    loop {
        for member in app.pools.drain_all() {
            destroy_member(app, member, "the server is shutting down");
        }
        let held = app.pools.preparing_total();
        if held == 0 && !pool_reservations_held(app) {
            return;
        }
        if started.elapsed() >= timeout {
            tracing::error!(preparing = held, "pool members were still being prepared or destroyed at shutdown; the next start destroys what is left");
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Returns whether a member still has a reservation, which it gives back
/// once it is destroyed.
fn pool_reservations_held(app: &App) -> bool {
    app.admission.lock().unwrap_or_else(|e| e.into_inner()).holds_prefix("p-")
}

/// Destroys a member that was taken for a session that then failed to be
/// created: it was never claimed, so nothing of the session reached it.
pub struct TakenMember {
    pub app: Arc<App>,
    pub member: Option<Member>,
}

impl Drop for TakenMember {
    fn drop(&mut self) {
        if let Some(member) = self.member.take() {
            destroy_member(&self.app, member, "the session that took it failed to be created");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fingerprint_ignores_only_the_pool_section() {
        let text = mayfly_core::profile::BUILT_IN[0].1;
        let base = Profile::parse("p", &format!("{text}\n[pool]\nmin = 1\n")).unwrap();
        let resized = Profile::parse("p", &format!("{text}\n[pool]\nmin = 3\nmax = 5\n")).unwrap();
        assert_eq!(fingerprint(&base), fingerprint(&resized));
        let changed = Profile::parse("p", &format!("{}\n[pool]\nmin = 1\n", text.replace("hostname = \"mayfly\"", "hostname = \"other\""))).unwrap();
        assert_ne!(fingerprint(&base), fingerprint(&changed));
    }

    #[test]
    fn target_follows_demand_between_min_and_max() {
        let profile = Profile::parse("p", &format!("{}\n[pool]\nmin = 1\nmax = 3\n", mayfly_core::profile::BUILT_IN[0].1)).unwrap();
        let mut pool = ProfilePool::new(fingerprint(&profile), profile.pool.clone().unwrap(), profile.limits.clone());
        assert_eq!(pool.target(), 1);
        for _ in 0..2 {
            pool.demand.push_back(Instant::now());
        }
        assert_eq!(pool.target(), 2);
        for _ in 0..10 {
            pool.demand.push_back(Instant::now());
        }
        assert_eq!(pool.target(), 3);
    }
}
