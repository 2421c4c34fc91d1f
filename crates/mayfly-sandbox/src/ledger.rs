//! The crash ledger: one record per session, written before any host
//! resource of the session exists, so that a later run can find and destroy
//! what a crashed supervisor left behind.

use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::cgroup::{Layout, SessionCgroup};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    pub session_id: String,
    /// PID and start time (clock ticks since boot) of the supervising process,
    /// which together identify it even after PID reuse.
    pub supervisor_pid: i32,
    pub supervisor_start: u64,
    /// Init's pid in the host's PID namespace, written with a pool
    /// member's claim. A cold start's record never has it.
    pub init_pid: Option<i32>,
    /// The session's deadline once claimed; before the claim, the time at
    /// which init ends the unclaimed sandbox.
    pub deadline_unix_ms: u64,
    pub cgroup_paths: Vec<PathBuf>,
    /// Set for a sandbox prepared for a warm pool. Until a session claims
    /// it, a reap destroys it whatever its deadline.
    #[serde(default)]
    pub pool_member: bool,
    /// The session that claimed the sandbox, when its id differs from the
    /// sandbox's own (`session_id`).
    #[serde(default)]
    pub claimed_by: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum LedgerError {
    #[error("failed to write ledger record {path}: {source}")]
    Write { path: PathBuf, source: io::Error },
    #[error("failed to remove ledger record {path}: {source}")]
    Remove { path: PathBuf, source: io::Error },
}

fn directory(state_dir: &Path) -> PathBuf {
    state_dir.join("sessions")
}

fn path(state_dir: &Path, session_id: &str) -> PathBuf {
    directory(state_dir).join(format!("{session_id}.json"))
}

/// Returns the start time of a process in clock ticks since boot, or `None`
/// when no such process exists.
pub fn process_start_time(pid: i32) -> Option<u64> {
    let stat = crate::procfs::read(format!("/proc/{pid}/stat")).ok()?;
    // The command name may contain spaces and parentheses; fields resume after the last ')'.
    let rest = &stat[stat.rfind(')')? + 2..];
    rest.split(' ').nth(19)?.parse().ok()
}

pub fn unix_ms(time: SystemTime) -> u64 {
    time.duration_since(UNIX_EPOCH).unwrap_or(Duration::ZERO).as_millis() as u64
}

/// Suffix of a record being written, whose name is `SESSION.PID.tmp` with
/// the writer's process id.
const TEMPORARY_SUFFIX: &str = ".tmp";

/// Age after which a temporary record without a process id, named
/// `SESSION.json.tmp` by earlier versions, counts as left behind. A write
/// takes far less.
const LEGACY_TEMPORARY_AGE: Duration = Duration::from_secs(60);

/// Removes the half-written records of writers that no longer run, which a
/// supervisor killed inside [`write`] leaves behind. The process id in the
/// file's name identifies the writer, and files of live processes stay.
fn remove_stale_temporaries(state_dir: &Path) {
    let Ok(entries) = fs::read_dir(directory(state_dir)) else { return };
    for entry in entries.filter_map(Result::ok) {
        let name = entry.file_name();
        let Some(stem) = name.to_str().and_then(|n| n.strip_suffix(TEMPORARY_SUFFIX)) else { continue };
        let stale = match stem.rsplit('.').next().map(str::parse::<i32>) {
            Some(Ok(pid)) => process_start_time(pid).is_none(),
            _ if stem.ends_with(".json") => {
                let modified = entry.metadata().and_then(|m| m.modified()).unwrap_or(SystemTime::now());
                SystemTime::now().duration_since(modified).unwrap_or(Duration::ZERO) >= LEGACY_TEMPORARY_AGE
            }
            _ => false,
        };
        if stale {
            let _ = fs::remove_file(entry.path());
        }
    }
}

/// Writes a record atomically: to a temporary file, then renamed. There is no
/// fsync, because the record only has to outlive a crash of the supervisor:
/// after a host crash no session process, mount or cgroup survives either.
pub fn write(state_dir: &Path, record: &Record) -> Result<(), LedgerError> {
    let target = path(state_dir, &record.session_id);
    let fail = |source| LedgerError::Write { path: target.clone(), source };
    fs::create_dir_all(directory(state_dir)).map_err(fail)?;
    let temporary = directory(state_dir).join(format!("{}.{}{TEMPORARY_SUFFIX}", record.session_id, std::process::id()));
    let mut file = fs::File::create(&temporary).map_err(fail)?;
    file.write_all(&serde_json::to_vec_pretty(record).expect("records serialize")).map_err(fail)?;
    fs::rename(&temporary, &target).map_err(fail)?;
    Ok(())
}

pub fn remove(state_dir: &Path, session_id: &str) -> Result<(), LedgerError> {
    let target = path(state_dir, session_id);
    match fs::remove_file(&target) {
        Ok(()) => Ok(()),
        Err(error) if error.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(source) => Err(LedgerError::Remove { path: target, source }),
    }
}

pub fn exists(state_dir: &Path, session_id: &str) -> bool {
    path(state_dir, session_id).exists()
}

pub fn list(state_dir: &Path) -> Vec<Record> {
    let Ok(entries) = fs::read_dir(directory(state_dir)) else { return Vec::new() };
    entries
        .filter_map(Result::ok)
        .filter(|e| e.path().extension().is_some_and(|x| x == "json"))
        .filter_map(|e| fs::read(e.path()).ok())
        .filter_map(|bytes| serde_json::from_slice(&bytes).ok())
        .collect()
}

/// The result of reaping one session.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Reaped {
    /// The session's id: the claiming session's id for a claimed pool member.
    pub session_id: String,
    /// Set for a pool member that no session had claimed; `session_id` is
    /// then the member's own id.
    pub pool_member: bool,
    pub killed_processes: usize,
    pub error: Option<String>,
    /// Set when the session's supervisor is gone but its deadline has not
    /// passed: init still runs it and ends it then, and a later reap cleans up.
    pub running_until_unix_ms: Option<u64>,
}

fn supervisor_alive(record: &Record) -> bool {
    process_start_time(record.supervisor_pid) == Some(record.supervisor_start)
}

/// Destroys what sessions with a dead supervisor left: sessions past their
/// deadline are killed, and the cgroups and records of ended sessions are
/// removed. A session whose supervisor died before its deadline keeps
/// running: its init enforces the deadline, and a later reap cleans up.
/// Also removes orphaned cgroups (see [`reap_orphan_cgroups`]).
pub fn reap(state_dir: &Path, layout: &Layout) -> Vec<Reaped> {
    let mut reaped = reap_records(state_dir, layout);
    reaped.extend(reap_orphan_cgroups(state_dir, layout));
    reaped
}

/// Like [`reap`], for the ledger records only: the check `mayfly run` makes
/// before each session, which skips the slower walk of every cgroup hierarchy.
pub fn reap_records(state_dir: &Path, layout: &Layout) -> Vec<Reaped> {
    reap_records_with(state_dir, layout, true)
}

/// Like [`reap`], but also destroys sessions that still run under their
/// init: what a restarted control plane does, since the output streams and
/// the handles of those sessions died with the old process.
pub fn destroy_orphans(state_dir: &Path, layout: &Layout) -> Vec<Reaped> {
    let mut reaped = reap_records_with(state_dir, layout, false);
    reaped.extend(reap_orphan_cgroups(state_dir, layout));
    reaped
}

fn reap_records_with(state_dir: &Path, layout: &Layout, keep_running: bool) -> Vec<Reaped> {
    remove_stale_temporaries(state_dir);
    let now = unix_ms(SystemTime::now());
    let mut reaped = Vec::new();
    for record in list(state_dir) {
        if supervisor_alive(&record) {
            continue;
        }
        let cgroup = SessionCgroup::existing(layout, &record.session_id);
        let processes = cgroup.processes();
        // An unclaimed pool member contains nothing of any session, so it is
        // destroyed at once rather than left to wait for a claim that cannot come.
        let unclaimed = record.pool_member && record.claimed_by.is_none();
        let reported_id = record.claimed_by.clone().unwrap_or_else(|| record.session_id.clone());
        if keep_running && !unclaimed && !processes.is_empty() && now < record.deadline_unix_ms {
            reaped.push(Reaped {
                session_id: reported_id,
                pool_member: unclaimed,
                killed_processes: 0,
                error: None,
                running_until_unix_ms: Some(record.deadline_unix_ms),
            });
            continue;
        }
        let mut error = None;
        if let Err(e) = cgroup.kill_all(Duration::from_secs(5)).and_then(|()| cgroup.remove(Duration::from_secs(5))) {
            error = Some(e.to_string());
        }
        if error.is_none() {
            if let Err(e) = remove(state_dir, &record.session_id) {
                error = Some(e.to_string());
            }
        }
        reaped.push(Reaped { session_id: reported_id, pool_member: unclaimed, killed_processes: processes.len(), error, running_until_unix_ms: None });
    }
    reaped
}

/// How long an empty session cgroup without a ledger record must have existed
/// before it counts as orphaned. A session being created has a record in
/// some state directory, but not necessarily in this one, so only old
/// cgroups are touched.
const ORPHAN_AGE: Duration = Duration::from_secs(120);

/// Removes empty session cgroups that no ledger record here describes, such
/// as those of a supervisor whose state directory was deleted.
fn reap_orphan_cgroups(state_dir: &Path, layout: &Layout) -> Vec<Reaped> {
    let mut reaped = Vec::new();
    for session_id in crate::cgroup::list_sessions(layout) {
        if exists(state_dir, &session_id) {
            continue;
        }
        let cgroup = SessionCgroup::existing(layout, &session_id);
        let old_enough = cgroup.paths().iter().filter_map(|p| fs::metadata(p).ok()?.modified().ok()).all(|modified| {
            SystemTime::now().duration_since(modified).unwrap_or(Duration::ZERO) >= ORPHAN_AGE
        });
        if !cgroup.processes().is_empty() || !old_enough {
            continue;
        }
        let error = cgroup.remove(Duration::from_secs(1)).err().map(|e| e.to_string());
        reaped.push(Reaped { session_id, pool_member: false, killed_processes: 0, error, running_until_unix_ms: None });
    }
    reaped
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(session_id: &str) -> Record {
        Record {
            session_id: session_id.into(),
            supervisor_pid: std::process::id() as i32,
            supervisor_start: 0,
            init_pid: None,
            deadline_unix_ms: 0,
            cgroup_paths: Vec::new(),
            pool_member: false,
            claimed_by: None,
        }
    }

    #[test]
    fn stale_temporaries_removed_live_kept() {
        let state_dir = std::env::temp_dir().join(format!("mayfly-ledger-test-{}", std::process::id()));
        write(&state_dir, &record("s-kept")).unwrap();
        assert_eq!(list(&state_dir), vec![record("s-kept")]);
        let names = || {
            let mut names: Vec<String> = fs::read_dir(directory(&state_dir)).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
            names.sort();
            names
        };
        assert_eq!(names(), ["s-kept.json"], "a write leaves only the record");

        // A writer that cannot exist, because process ids stay below
        // pid_max, and this live process.
        let dead_pid: u32 = fs::read_to_string("/proc/sys/kernel/pid_max").unwrap().trim().parse().unwrap();
        let own_pid = std::process::id();
        fs::write(directory(&state_dir).join(format!("s-a.{dead_pid}.tmp")), b"{\"sess").unwrap();
        fs::write(directory(&state_dir).join(format!("s-b.{own_pid}.tmp")), b"").unwrap();
        fs::write(directory(&state_dir).join("notes.tmp"), b"").unwrap();
        // The name earlier versions used, once old and once just written.
        let legacy = directory(&state_dir).join("s-c.json.tmp");
        fs::write(&legacy, b"").unwrap();
        fs::File::options().write(true).open(&legacy).unwrap().set_modified(SystemTime::now() - 2 * LEGACY_TEMPORARY_AGE).unwrap();
        fs::write(directory(&state_dir).join("s-d.json.tmp"), b"").unwrap();
        remove_stale_temporaries(&state_dir);
        assert_eq!(names(), ["notes.tmp", format!("s-b.{own_pid}.tmp").as_str(), "s-d.json.tmp", "s-kept.json"]);
        fs::remove_dir_all(&state_dir).unwrap();
    }
}
