//! Per-session cgroups on cgroup v2 or v1 (including hybrid hosts, where the
//! v1 controllers do the work and the v2 hierarchy is empty).
//!
//! Each session gets one cgroup per hierarchy, named `mayfly/<session id>`.
//! Limits are written before any sandbox process joins, so a process can never
//! run unlimited, even for its first millisecond.

use std::collections::BTreeMap;
use std::fs;
use std::io;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

/// Name of the directory under each hierarchy root that contains session cgroups.
pub const PARENT: &str = "mayfly";

/// v1 controllers that a session cgroup needs, and why.
pub const V1_CONTROLLERS: &[(&str, &str)] = &[
    ("memory", "memory and swap limit, out-of-memory count, peak usage"),
    ("pids", "process count limit"),
    ("cpu", "CPU quota"),
    ("cpuacct", "CPU time used"),
    ("freezer", "stopping every process before the kill at teardown"),
];

/// v2 controllers that a session cgroup needs.
pub const V2_CONTROLLERS: &[&str] = &["memory", "pids", "cpu"];

#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    #[error("no usable cgroup hierarchy: {0}")]
    Unavailable(String),
    #[error("failed to create cgroup {path}: {source}")]
    Create { path: PathBuf, source: io::Error },
    #[error("failed to write {value:?} to {path}: {source}")]
    Write { path: PathBuf, value: String, source: io::Error },
    #[error("failed to read {path}: {source}")]
    Read { path: PathBuf, source: io::Error },
    #[error("cgroup {path} still has processes after the kill: {pids:?}")]
    NotEmpty { path: PathBuf, pids: Vec<i32> },
    #[error("failed to remove cgroup {path}: {source}")]
    Remove { path: PathBuf, source: io::Error },
}

/// Cgroup layout of this host, with the mount point of each hierarchy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "version", rename_all = "lowercase")]
pub enum Layout {
    V2 { root: PathBuf, controllers: Vec<String> },
    V1 { controllers: BTreeMap<String, PathBuf> },
}

impl Layout {
    /// Detects the layout from /proc/self/mountinfo. A v2 hierarchy wins when it
    /// offers every controller a session needs; otherwise the v1 controllers are
    /// used, which is the case on hybrid hosts.
    pub fn detect() -> Result<Layout, CgroupError> {
        let mountinfo = crate::procfs::read("/proc/self/mountinfo")
            .map_err(|source| CgroupError::Read { path: "/proc/self/mountinfo".into(), source })?;
        let mut v2_root = None;
        let mut v1 = BTreeMap::new();
        for line in mountinfo.lines() {
            let Some((left, right)) = line.split_once(" - ") else { continue };
            let mount_point = left.split(' ').nth(4).unwrap_or_default();
            let mut right = right.split(' ');
            let fs_type = right.next().unwrap_or_default();
            let super_options = right.nth(1).unwrap_or_default();
            match fs_type {
                "cgroup2" if v2_root.is_none() => v2_root = Some(PathBuf::from(mount_point)),
                "cgroup" => {
                    for option in super_options.split(',') {
                        if V1_CONTROLLERS.iter().any(|(name, _)| *name == option) {
                            v1.entry(option.to_string()).or_insert_with(|| PathBuf::from(mount_point));
                        }
                    }
                }
                _ => {}
            }
        }
        if let Some(root) = v2_root {
            let controllers = fs::read_to_string(root.join("cgroup.controllers")).unwrap_or_default();
            let controllers: Vec<String> = controllers.split_whitespace().map(String::from).collect();
            if V2_CONTROLLERS.iter().all(|c| controllers.iter().any(|have| have == c)) {
                return Ok(Layout::V2 { root, controllers });
            }
        }
        if !v1.is_empty() {
            return Ok(Layout::V1 { controllers: v1 });
        }
        Err(CgroupError::Unavailable("neither a cgroup v2 hierarchy with memory, pids and cpu nor any v1 controller is mounted".into()))
    }

    /// Returns the names of controllers a session needs that this layout lacks.
    pub fn missing_controllers(&self) -> Vec<String> {
        match self {
            Layout::V2 { controllers, .. } => V2_CONTROLLERS
                .iter()
                .filter(|c| !controllers.iter().any(|have| have == *c))
                .map(|c| c.to_string())
                .collect(),
            Layout::V1 { controllers } => V1_CONTROLLERS
                .iter()
                .filter(|(c, _)| !controllers.contains_key(*c))
                .map(|(c, _)| format!("{c} (v1)"))
                .collect(),
        }
    }

    /// Returns the `/proc/PID/cgroup` lines, by controller list, that a
    /// member of a session must have: `memory`, `pids` and so on on v1, and
    /// the empty string for the single v2 line.
    pub fn membership(&self) -> Vec<String> {
        match self {
            Layout::V2 { .. } => vec![String::new()],
            Layout::V1 { controllers } => controllers.keys().cloned().collect(),
        }
    }

    /// Returns the directories of a session cgroup under every hierarchy it uses.
    pub fn session_paths(&self, session_id: &str) -> Vec<PathBuf> {
        match self {
            Layout::V2 { root, .. } => vec![root.join(PARENT).join(session_id)],
            Layout::V1 { controllers } => {
                let mut roots: Vec<&PathBuf> = controllers.values().collect();
                roots.sort();
                roots.dedup();
                roots.into_iter().map(|root| root.join(PARENT).join(session_id)).collect()
            }
        }
    }
}

/// The means by which a running process joins the session's cgroups; see [`SessionCgroup::open_join`].
#[derive(Debug)]
pub enum Join {
    V2,
    V1 { tasks: Vec<std::fs::File> },
}

/// Limits written into a session cgroup.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct CgroupLimits {
    pub memory_bytes: u64,
    pub cpu_millis: u32,
    pub pids: u32,
}

/// Resource usage read from a session cgroup just before it is removed.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Usage {
    pub cpu_time_us: Option<u64>,
    pub peak_memory_bytes: Option<u64>,
    pub oom_kills: u64,
}

/// The cgroups of one session. Dropping it does not remove them: teardown is
/// explicit so that its result can be reported.
#[derive(Debug)]
pub struct SessionCgroup {
    layout: Layout,
    paths: Vec<PathBuf>,
}

const CPU_PERIOD_US: u64 = 100_000;

fn write(path: &Path, value: &str) -> Result<(), CgroupError> {
    fs::write(path, value).map_err(|source| CgroupError::Write { path: path.into(), value: value.into(), source })
}

fn create_dir(path: &Path) -> Result<(), CgroupError> {
    match fs::create_dir(path) {
        Ok(()) => Ok(()),
        Err(error) if error.kind() == io::ErrorKind::AlreadyExists => Ok(()),
        Err(source) => Err(CgroupError::Create { path: path.into(), source }),
    }
}

/// Creates the directory at `path`, and its parent first when that is
/// missing. The parent exists after the first session, so this usually
/// takes one `mkdir`.
fn create_dir_and_parent(path: &Path) -> Result<(), CgroupError> {
    match fs::create_dir(path) {
        Ok(()) => Ok(()),
        Err(error) if error.kind() == io::ErrorKind::AlreadyExists => Ok(()),
        Err(error) if error.kind() == io::ErrorKind::NotFound => {
            create_dir(path.parent().expect("session cgroup has a parent"))?;
            create_dir(path)
        }
        Err(source) => Err(CgroupError::Create { path: path.into(), source }),
    }
}

/// Reads a `key value` line from a flat-keyed cgroup file such as memory.events.
fn read_key(path: &Path, key: &str) -> Option<u64> {
    let text = crate::procfs::read(path).ok()?;
    text.lines().find_map(|line| {
        let (name, value) = line.split_once(' ')?;
        (name == key).then(|| value.trim().parse().ok()).flatten()
    })
}

impl SessionCgroup {
    /// Creates the session's cgroups and writes its limits. On failure, the
    /// directories created so far are removed again.
    pub fn create(layout: &Layout, session_id: &str, limits: CgroupLimits) -> Result<SessionCgroup, CgroupError> {
        let cgroup = SessionCgroup { layout: layout.clone(), paths: layout.session_paths(session_id) };
        let result = cgroup.create_and_limit(limits);
        if let Err(error) = result {
            for path in &cgroup.paths {
                let _ = fs::remove_dir(path);
            }
            return Err(error);
        }
        Ok(cgroup)
    }

    /// Returns a handle on existing session cgroups, for recovery after a crash.
    pub fn existing(layout: &Layout, session_id: &str) -> SessionCgroup {
        SessionCgroup { layout: layout.clone(), paths: layout.session_paths(session_id) }
    }

    pub fn paths(&self) -> &[PathBuf] {
        &self.paths
    }

    fn create_and_limit(&self, limits: CgroupLimits) -> Result<(), CgroupError> {
        match &self.layout {
            Layout::V2 { root, .. } => {
                // NOTE: the test hosts so far are hybrid (v1 controllers, empty v2
                // hierarchy), so this branch has run only against plain files in
                // a unit test, never against a real cgroup2 hierarchy.
                // 1. Enable the controllers for the mayfly parent and create it.
                //    The root cgroup may have processes, so this is allowed there.
                let parent = root.join(PARENT);
                let enable = "+memory +pids +cpu";
                write(&root.join("cgroup.subtree_control"), enable)?;
                create_dir(&parent)?;
                write(&parent.join("cgroup.subtree_control"), enable)?;

                // 2. Create the session cgroup and write its limits. Swap is set to
                //    zero, so memory.max bounds memory and swap together.
                let path = &self.paths[0];
                create_dir(path)?;
                write(&path.join("memory.max"), &limits.memory_bytes.to_string())?;
                let swap = path.join("memory.swap.max");
                if swap.exists() {
                    write(&swap, "0")?;
                }
                write(&path.join("pids.max"), &limits.pids.to_string())?;
                let quota = u64::from(limits.cpu_millis) * CPU_PERIOD_US / 1000;
                write(&path.join("cpu.max"), &format!("{quota} {CPU_PERIOD_US}"))?;
            }
            Layout::V1 { controllers } => {
                for path in &self.paths {
                    create_dir_and_parent(path)?;
                }
                let dir = |controller: &str| -> Option<PathBuf> {
                    controllers.get(controller).map(|root| root.join(PARENT).join(self.session_id()))
                };
                if let Some(memory) = dir("memory") {
                    // The memsw limit must not be below the memory limit, so the
                    // memory limit is written first. With both equal, swap adds nothing.
                    let bytes = limits.memory_bytes.to_string();
                    write(&memory.join("memory.limit_in_bytes"), &bytes)?;
                    // The memsw file is missing when the kernel accounts no swap.
                    let memsw = memory.join("memory.memsw.limit_in_bytes");
                    match fs::File::options().write(true).open(&memsw).and_then(|mut file| io::Write::write_all(&mut file, bytes.as_bytes())) {
                        Err(error) if error.kind() != io::ErrorKind::NotFound => {
                            return Err(CgroupError::Write { path: memsw, value: bytes, source: error })
                        }
                        _ => {}
                    }
                    let _ = fs::write(memory.join("memory.swappiness"), "0");
                }
                if let Some(pids) = dir("pids") {
                    write(&pids.join("pids.max"), &limits.pids.to_string())?;
                }
                if let Some(cpu) = dir("cpu") {
                    let quota = u64::from(limits.cpu_millis) * CPU_PERIOD_US / 1000;
                    write(&cpu.join("cpu.cfs_period_us"), &CPU_PERIOD_US.to_string())?;
                    write(&cpu.join("cpu.cfs_quota_us"), &quota.to_string())?;
                }
            }
        }
        Ok(())
    }

    fn session_id(&self) -> &str {
        self.paths[0].file_name().and_then(|n| n.to_str()).unwrap_or_default()
    }

    fn controller_path(&self, controller: &str) -> Option<PathBuf> {
        match &self.layout {
            Layout::V2 { .. } => Some(self.paths[0].clone()),
            Layout::V1 { controllers } => controllers.get(controller).map(|root| root.join(PARENT).join(self.session_id())),
        }
    }

    /// Opens the session's v2 cgroup directory, into which clone3's
    /// `CLONE_INTO_CGROUP` starts a process.
    pub fn open_directory(&self) -> Result<std::fs::File, CgroupError> {
        let path = self.paths[0].clone();
        std::fs::File::options()
            .read(true)
            .custom_flags(libc::O_DIRECTORY | libc::O_PATH | libc::O_CLOEXEC)
            .open(&path)
            .map_err(|source| CgroupError::Read { path, source })
    }

    /// Opens what a running process needs to join the session's cgroups: on
    /// v1 each hierarchy's `tasks` file, to which the process writes "0" to
    /// move itself. A v2 process started in its cgroup needs nothing.
    ///
    /// A v1 process that moves itself, one thread at a time, skips the global
    /// lock that moving another process's thread group takes. That lock can
    /// wait for an RCU grace period, about 10 ms on an otherwise idle host.
    pub fn open_join(&self) -> Result<Join, CgroupError> {
        match &self.layout {
            Layout::V2 { .. } => Ok(Join::V2),
            Layout::V1 { .. } => {
                let open = |path: PathBuf| {
                    std::fs::File::options().write(true).custom_flags(libc::O_CLOEXEC).open(&path).map_err(|source| CgroupError::Read { path, source })
                };
                let tasks = self.paths.iter().map(|p| open(p.join("tasks"))).collect::<Result<_, _>>()?;
                Ok(Join::V1 { tasks })
            }
        }
    }

    /// Lists the processes in any of the session's cgroups.
    pub fn processes(&self) -> Vec<i32> {
        let mut pids: Vec<i32> = self
            .paths
            .iter()
            .filter_map(|path| crate::procfs::read(path.join("cgroup.procs")).ok())
            .flat_map(|text| text.lines().filter_map(|l| l.trim().parse().ok()).collect::<Vec<i32>>())
            .collect();
        pids.sort_unstable();
        pids.dedup();
        pids
    }

    /// Reads CPU time, peak memory and the out-of-memory kill count.
    pub fn usage(&self) -> Usage {
        let mut usage = Usage::default();
        match &self.layout {
            Layout::V2 { .. } => {
                let path = &self.paths[0];
                usage.cpu_time_us = read_key(&path.join("cpu.stat"), "usage_usec");
                usage.peak_memory_bytes = crate::procfs::read(path.join("memory.peak")).ok().and_then(|t| t.trim().parse().ok());
                usage.oom_kills = read_key(&path.join("memory.events"), "oom_kill").unwrap_or(0);
            }
            Layout::V1 { .. } => {
                if let Some(cpuacct) = self.controller_path("cpuacct") {
                    usage.cpu_time_us = crate::procfs::read(cpuacct.join("cpuacct.usage"))
                        .ok()
                        .and_then(|t| t.trim().parse::<u64>().ok())
                        .map(|ns| ns / 1000);
                }
                if let Some(memory) = self.controller_path("memory") {
                    usage.peak_memory_bytes = crate::procfs::read(memory.join("memory.max_usage_in_bytes"))
                        .ok()
                        .and_then(|t| t.trim().parse().ok());
                    usage.oom_kills = read_key(&memory.join("memory.oom_control"), "oom_kill").unwrap_or(0);
                }
            }
        }
        usage
    }

    /// Kills every process of the session, including stopped ones and ones that
    /// left their process group, and waits until the cgroups are empty.
    pub fn kill_all(&self, timeout: Duration) -> Result<(), CgroupError> {
        let started = Instant::now();
        match &self.layout {
            Layout::V2 { .. } => {
                let kill = self.paths[0].join("cgroup.kill");
                if kill.exists() {
                    write(&kill, "1")?;
                }
            }
            Layout::V1 { .. } => {}
        }
        // On v1, and as a second pass on v2: freeze so that no process can fork
        // between reading the list and the kill, then SIGKILL each one and thaw so
        // that the frozen processes can die.
        let freezer = match &self.layout {
            Layout::V1 { .. } => self.controller_path("freezer").map(|p| p.join("freezer.state")),
            Layout::V2 { .. } => Some(self.paths[0].join("cgroup.freeze")),
        };
        loop {
            let pids = self.processes();
            if pids.is_empty() {
                return Ok(());
            }
            if let Some(state) = &freezer {
                let frozen = if matches!(self.layout, Layout::V1 { .. }) { "FROZEN" } else { "1" };
                let _ = fs::write(state, frozen);
            }
            for pid in self.processes() {
                // SAFETY: kill(2) has no memory safety requirements. The pid comes
                // from the session's own cgroup, so it names a session process.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
            if let Some(state) = &freezer {
                let thawed = if matches!(self.layout, Layout::V1 { .. }) { "THAWED" } else { "0" };
                let _ = fs::write(state, thawed);
            }
            if started.elapsed() > timeout {
                let path = self.paths[0].clone();
                return Err(CgroupError::NotEmpty { path, pids: self.processes() });
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Removes the session cgroups, retrying while the kernel finishes
    /// releasing the last exited processes.
    pub fn remove(&self, timeout: Duration) -> Result<(), CgroupError> {
        let started = Instant::now();
        for path in &self.paths {
            loop {
                match fs::remove_dir(path) {
                    Ok(()) => break,
                    Err(error) if error.kind() == io::ErrorKind::NotFound => break,
                    Err(error) if started.elapsed() < timeout && error.raw_os_error() == Some(libc::EBUSY) => {
                        std::thread::sleep(Duration::from_millis(5));
                    }
                    Err(source) => return Err(CgroupError::Remove { path: path.clone(), source }),
                }
            }
        }
        Ok(())
    }

    /// Removes the directories of the session cgroup in order until one
    /// cannot be, and returns whether none remains. A directory with a
    /// process in it, or a zombie that is not reaped yet, cannot be removed.
    /// A process is in every hierarchy, so the first directory already
    /// fails and the freezer stays for [`Self::kill_all`].
    pub fn remove_if_empty(&self) -> bool {
        self.paths.iter().all(|path| match fs::remove_dir(path) {
            Ok(()) => true,
            Err(error) => error.kind() == io::ErrorKind::NotFound,
        })
    }

    /// Returns the session cgroup directories that still exist.
    pub fn remaining_paths(&self) -> Vec<PathBuf> {
        self.paths.iter().filter(|p| p.exists()).cloned().collect()
    }
}

/// Lists the session ids that have a cgroup under any hierarchy.
pub fn list_sessions(layout: &Layout) -> Vec<String> {
    let roots: Vec<PathBuf> = match layout {
        Layout::V2 { root, .. } => vec![root.join(PARENT)],
        Layout::V1 { controllers } => controllers.values().map(|root| root.join(PARENT)).collect(),
    };
    let mut ids: Vec<String> = roots
        .iter()
        .filter_map(|root| fs::read_dir(root).ok())
        .flat_map(|entries| entries.filter_map(|e| e.ok()).filter(|e| e.path().is_dir()).map(|e| e.file_name().to_string_lossy().into_owned()))
        .collect();
    ids.sort();
    ids.dedup();
    ids
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Creates a directory to use in place of a cgroup hierarchy. Plain files
    /// take the writes, so the values can be read back without a real cgroupfs.
    fn fake_root(label: &str) -> PathBuf {
        let root = std::env::temp_dir().join(format!("mayfly-cgroup-{label}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&root);
        fs::create_dir_all(&root).unwrap();
        root
    }

    /// Creates a fake root with a directory for each v1 controller, and its layout.
    fn fake_v1_layout(label: &str) -> (PathBuf, Layout) {
        let root = fake_root(label);
        let controllers: BTreeMap<String, PathBuf> =
            V1_CONTROLLERS.iter().map(|(name, _)| (name.to_string(), root.join(name))).collect();
        for path in controllers.values() {
            fs::create_dir_all(path).unwrap();
        }
        (root, Layout::V1 { controllers })
    }

    const LIMITS: CgroupLimits = CgroupLimits { memory_bytes: 256 << 20, cpu_millis: 1500, pids: 64 };

    #[test]
    fn v2_limits_are_written() {
        let root = fake_root("v2");
        let layout = Layout::V2 { root: root.clone(), controllers: V2_CONTROLLERS.iter().map(|c| c.to_string()).collect() };
        // Present on real hosts with swap accounting, so it is written too.
        fs::create_dir_all(root.join(PARENT).join("s-test")).unwrap();
        fs::write(root.join(PARENT).join("s-test/memory.swap.max"), "max").unwrap();

        let cgroup = SessionCgroup::create(&layout, "s-test", LIMITS).unwrap();
        let dir = root.join(PARENT).join("s-test");
        assert_eq!(cgroup.paths(), std::slice::from_ref(&dir));
        let read = |name: &str| fs::read_to_string(dir.join(name)).unwrap();
        assert_eq!(read("memory.max"), (256u64 << 20).to_string());
        assert_eq!(read("memory.swap.max"), "0");
        assert_eq!(read("pids.max"), "64");
        assert_eq!(read("cpu.max"), "150000 100000");
        assert_eq!(fs::read_to_string(root.join("cgroup.subtree_control")).unwrap(), "+memory +pids +cpu");
        assert_eq!(layout.membership(), vec![String::new()]);
        fs::remove_dir_all(root).unwrap();
    }

    #[test]
    fn v1_limits_are_written() {
        let (root, layout) = fake_v1_layout("v1");
        fs::create_dir_all(root.join("memory").join(PARENT).join("s-test")).unwrap();
        fs::write(root.join("memory").join(PARENT).join("s-test/memory.memsw.limit_in_bytes"), "").unwrap();

        let cgroup = SessionCgroup::create(&layout, "s-test", LIMITS).unwrap();
        assert_eq!(cgroup.paths().len(), V1_CONTROLLERS.len());
        let read = |controller: &str, name: &str| fs::read_to_string(root.join(controller).join(PARENT).join("s-test").join(name)).unwrap();
        assert_eq!(read("memory", "memory.limit_in_bytes"), (256u64 << 20).to_string());
        assert_eq!(read("memory", "memory.memsw.limit_in_bytes"), (256u64 << 20).to_string());
        assert_eq!(read("pids", "pids.max"), "64");
        assert_eq!(read("cpu", "cpu.cfs_period_us"), "100000");
        assert_eq!(read("cpu", "cpu.cfs_quota_us"), "150000");
        let mut membership = layout.membership();
        membership.sort();
        assert_eq!(membership, ["cpu", "cpuacct", "freezer", "memory", "pids"]);
        fs::remove_dir_all(root).unwrap();
    }

    #[test]
    fn v1_without_swap_accounting_skips_memsw() {
        let (root, layout) = fake_v1_layout("v1noswap");

        SessionCgroup::create(&layout, "s-test", LIMITS).unwrap();
        let memory = root.join("memory").join(PARENT).join("s-test");
        assert_eq!(fs::read_to_string(memory.join("memory.limit_in_bytes")).unwrap(), (256u64 << 20).to_string());
        assert!(!memory.join("memory.memsw.limit_in_bytes").exists());
        fs::remove_dir_all(root).unwrap();
    }

    /// Runs on the host's real cgroups, as root.
    #[test]
    fn removal_waits_for_the_last_process() {
        let layout = Layout::detect().unwrap();
        let id = format!("s-remove-test-{}", std::process::id());
        let cgroup = SessionCgroup::create(&layout, &id, LIMITS).unwrap();
        let mut sleeper = std::process::Command::new("/bin/sleep").arg("30").spawn().unwrap();
        for path in cgroup.paths() {
            fs::write(path.join("cgroup.procs"), sleeper.id().to_string()).unwrap();
        }

        let removed = cgroup.remove_if_empty();
        let left = cgroup.remaining_paths();
        sleeper.kill().unwrap();
        sleeper.wait().unwrap();
        let removed_after_exit = cgroup.remove_if_empty();
        let left_after_exit = cgroup.remaining_paths();
        let _ = cgroup.remove(Duration::from_secs(1));
        assert!(!removed, "a cgroup with a process in it was removed");
        assert_eq!(left, cgroup.paths(), "a directory went while the process was in it");
        assert!(removed_after_exit);
        assert!(left_after_exit.is_empty(), "{left_after_exit:?}");
    }

    #[test]
    fn missing_controllers_are_named() {
        let layout = Layout::V1 { controllers: BTreeMap::from([("memory".to_string(), PathBuf::from("/x"))]) };
        let missing = layout.missing_controllers();
        assert!(missing.contains(&"pids (v1)".to_string()), "{missing:?}");
        assert!(!missing.iter().any(|m| m.starts_with("memory")), "{missing:?}");
    }
}
