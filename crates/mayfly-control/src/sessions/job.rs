//! Turning a validated request and a profile into a sandbox configuration.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use mayfly_core::{Landlock, Limits, Profile};
use mayfly_sandbox::cgroup::CgroupLimits;
use mayfly_sandbox::session::{SessionConfig, SessionControl};
use mayfly_sandbox::spec::{BindMount, LandlockMode};

pub fn landlock_mode(profile: &Profile) -> LandlockMode {
    match profile.landlock {
        Landlock::Required => LandlockMode::Required,
        Landlock::IfAvailable => LandlockMode::IfAvailable,
    }
}

/// What a job needs beyond its profile.
pub struct JobSpec {
    pub session_id: String,
    pub state_dir: PathBuf,
    pub argv: Vec<String>,
    /// Added to the profile's environment, winning over it.
    pub env: BTreeMap<String, String>,
    pub ttl: Duration,
    pub limits: Limits,
}

/// Builds the sandbox configuration of a job with no inputs or artifacts.
pub fn session_config(profile: &Profile, spec: JobSpec, control: Option<SessionControl>) -> SessionConfig {
    // The proxy variables come first, so the profile and the request may
    // override them.
    let mut env: BTreeMap<String, String> = profile.network.proxy_environment().into_iter().collect();
    env.extend(profile.environment.clone());
    env.extend(spec.env);
    let limits = spec.limits;
    SessionConfig {
        session_id: spec.session_id,
        state_dir: spec.state_dir,
        argv: spec.argv,
        env: env.into_iter().collect(),
        hostname: profile.hostname.clone(),
        timezone: profile.timezone.clone(),
        ttl: spec.ttl,
        limits: CgroupLimits { memory_bytes: limits.memory.as_bytes(), cpu_millis: limits.cpu_millis, pids: limits.pids },
        tmp_bytes: limits.tmp.as_bytes(),
        shm_bytes: limits.shm.as_bytes(),
        work_bytes: limits.work.as_bytes(),
        open_files: limits.open_files,
        inputs: Vec::new(),
        artifacts: None,
        mounts: profile.mounts.iter().map(|m| BindMount { source: m.source.clone(), target: m.target.clone() }).collect(),
        landlock: landlock_mode(profile),
        forward_signals: false,
        control,
        terminal: None,
        command_pipes: false,
        before_start: None,
    }
}

/// Returns a new session id: `s-`, the creation time in milliseconds as 11
/// hexadecimal digits, and 48 random bits as 12 more. Ids sort by creation
/// time, so lists ordered by id are ordered by age.
pub fn new_session_id() -> String {
    let mut random = [0u8; 6];
    getrandom::fill(&mut random).expect("the kernel's random source is available");
    let millis = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis()).unwrap_or(0);
    format!("s-{millis:011x}{}", mayfly_audit::hex(&random))
}

#[cfg(test)]
mod tests {
    #[test]
    fn session_ids_sort_by_creation_time() {
        let first = super::new_session_id();
        std::thread::sleep(std::time::Duration::from_millis(2));
        let second = super::new_session_id();
        assert!(first < second, "{first} {second}");
        assert_eq!(first.len(), 25);
        assert!(first[2..].bytes().all(|b| b.is_ascii_hexdigit()));
    }
}
