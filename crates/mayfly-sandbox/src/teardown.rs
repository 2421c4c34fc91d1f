//! Verified teardown: after the kill, look for anything of the session that
//! survived and report what was found as evidence.

use std::collections::{BTreeMap, HashSet};
use std::fs;
use std::os::fd::{AsRawFd, FromRawFd};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::ns_handles::NamespaceHandles;

/// Namespace kinds whose identity is recorded when a session starts.
pub const NAMESPACE_KINDS: &[&str] = &["user", "pid", "mnt", "net", "ipc", "uts"];

/// Namespace kinds looked for at teardown: the ones that can keep files,
/// sockets or shared memory alive. A surviving user or UTS namespace keeps
/// none of those alive by itself, and no process can join the PID namespace
/// once its init is gone. Each kind costs one system call per host process.
const SCANNED_KINDS: &[&std::ffi::CStr] = &[c"mnt", c"net", c"ipc"];

/// Evidence that nothing of a session remains on the host.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Evidence {
    /// Processes still in the session's cgroups after the kill.
    pub processes_remaining: Vec<i32>,
    /// Session cgroup directories that still exist.
    pub cgroups_remaining: Vec<PathBuf>,
    /// Session namespaces still referenced by a process, an open descriptor
    /// or a bind mount, with the holder.
    pub namespaces_remaining: Vec<String>,
    /// Whether the crash-ledger record of the session is gone.
    pub ledger_record_removed: bool,
    /// Errors met while tearing down, if any.
    pub errors: Vec<String>,
    /// True when every list above is empty and the record is removed.
    pub clean: bool,
}

impl Evidence {
    pub fn finish(mut self) -> Evidence {
        self.clean = self.processes_remaining.is_empty()
            && self.cgroups_remaining.is_empty()
            && self.namespaces_remaining.is_empty()
            && self.ledger_record_removed
            && self.errors.is_empty();
        self
    }
}

/// Open references to a session's scanned namespaces, taken when it starts.
///
/// The kernel reuses a namespace's inode number as soon as the namespace is
/// freed, so a session starting at the same moment could get the number and
/// look like a holder. While these references are open, the numbers stay
/// taken, so a match in the scan is the session's own namespace.
pub struct HeldNamespaces(Vec<fs::File>);

impl HeldNamespaces {
    /// Closes the references on a thread of its own and returns at once.
    /// Closing the last reference to a mount namespace waits for an RCU
    /// grace period, 0.1 to 1 ms on the development machine, and nothing
    /// the caller does next depends on it.
    pub fn release(self) {
        let files = self.0;
        let _ = std::thread::Builder::new().name("mayfly-ns-release".into()).spawn(move || drop(files));
    }
}

/// The references or handles with which teardown learns that a session's
/// namespaces are gone.
pub enum NamespaceWatch {
    /// File handles, checked once init has exited (Linux 6.18 and later),
    /// and the mount namespace held open until then. Freeing a mount
    /// namespace unmounts its tree and waits for an RCU grace period. With
    /// the reference held, that happens when the supervisor closes it, at
    /// the same time as its own teardown, instead of in init's exit, for
    /// which the whole teardown waits.
    Handles { handles: NamespaceHandles, mount: Option<fs::File> },
    /// References held open for a scan of the host's processes.
    Held(HeldNamespaces),
}

static SCAN_ONLY: AtomicBool = AtomicBool::new(false);

/// Makes the sessions started after this call find their namespaces'
/// holders with the scan alone, as on kernels without handles for
/// namespaces. For tests of the scan on kernels that have them.
pub fn scan_only(on: bool) {
    SCAN_ONLY.store(on, Ordering::Relaxed);
}

/// Takes handles to the [`SCANNED_KINDS`] namespaces of a process, or
/// keeps them open where the kernel has no handles for namespaces.
pub fn watch_namespaces(pid: i32) -> NamespaceWatch {
    let handles = if SCAN_ONLY.load(Ordering::Relaxed) { None } else { NamespaceHandles::take(pid, SCANNED_KINDS) };
    match handles {
        Some(handles) => NamespaceWatch::Handles { handles, mount: fs::File::open(format!("/proc/{pid}/ns/mnt")).ok() },
        None => NamespaceWatch::Held(hold_namespaces(pid)),
    }
}

/// Time a namespace gets to be freed after the session's last process,
/// such as while a socket the supervisor opened in the session's network
/// closes.
const NAMESPACE_GRACE: Duration = Duration::from_millis(200);

/// Returns what keeps any of the `handles`' namespaces alive, once every
/// process of the session has exited. `ids` names the namespaces by kind,
/// as [`namespace_ids`] reads them. A namespace that still exists after
/// [`NAMESPACE_GRACE`] is reported with the holders a scan finds.
pub fn remaining_namespaces(handles: &NamespaceHandles, ids: &BTreeMap<String, String>) -> Vec<String> {
    let started = Instant::now();
    let existing = loop {
        match handles.existing() {
            Ok(existing) if existing.is_empty() => return Vec::new(),
            Ok(existing) if started.elapsed() >= NAMESPACE_GRACE => break existing,
            Ok(_) => std::thread::sleep(Duration::from_millis(1)),
            Err(error) => return vec![format!("failed to check whether the session's namespaces are gone: {error}")],
        }
    };
    // The descriptors in `existing` keep the namespaces, and so their
    // numbers, until the scan has named the holders.
    let mut found = Vec::new();
    let mut survivors = BTreeMap::new();
    for (kind, _) in &existing {
        let id = ids.get(*kind).cloned().unwrap_or_else(|| format!("{kind}:[?]"));
        found.push(format!("{id} still exists {} ms after the session's last process", NAMESPACE_GRACE.as_millis()));
        survivors.insert(kind.to_string(), id);
    }
    found.extend(find_namespace_holders(&survivors, None));
    drop(existing);
    found
}

/// Opens the [`SCANNED_KINDS`] namespaces of a process, close-on-exec.
pub fn hold_namespaces(pid: i32) -> HeldNamespaces {
    let files = SCANNED_KINDS
        .iter()
        .filter_map(|kind| fs::File::open(format!("/proc/{pid}/ns/{}", kind.to_string_lossy())).ok())
        .collect();
    HeldNamespaces(files)
}

/// Reads the namespace identities (`net:[4026532001]`) of a process.
pub fn namespace_ids(pid: i32) -> BTreeMap<String, String> {
    NAMESPACE_KINDS
        .iter()
        .filter_map(|kind| {
            let link = fs::read_link(format!("/proc/{pid}/ns/{kind}")).ok()?;
            Some((kind.to_string(), link.to_string_lossy().into_owned()))
        })
        .collect()
}

/// Describes a process for the evidence: its command name, state and parent.
fn describe(pid: i32) -> String {
    let status = crate::procfs::read(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| status.lines().find_map(|l| l.strip_prefix(name)).map(str::trim).unwrap_or("?").to_string();
    format!("{}, state {}, parent {}", field("Name:"), field("State:"), field("PPid:"))
}

/// Looks for processes among `pids` that live in one of the `wanted` namespaces.
/// `PF_KTHREAD` of linux/sched.h, in the flags field of `/proc/PID/stat`.
const PF_KTHREAD: u64 = 0x0020_0000;

/// Returns kthreadd and its children, the kernel threads, when pid 2 is
/// kthreadd and the kernel lists children (`CONFIG_PROC_CHILDREN`), and an
/// empty set otherwise. Kernel threads stay in the host's namespaces, so
/// the scan skips them without a system call each.
fn kernel_threads() -> HashSet<i32> {
    let Ok(stat) = crate::procfs::read("/proc/2/stat") else { return HashSet::new() };
    // The flags are the ninth field, the seventh after the command name,
    // which ends at the last ')'.
    let flags = stat.rsplit_once(')').and_then(|(_, rest)| rest.split_whitespace().nth(6)?.parse::<u64>().ok());
    if flags.is_none_or(|flags| flags & PF_KTHREAD == 0) {
        return HashSet::new();
    }
    let Ok(children) = crate::procfs::read("/proc/2/task/2/children") else { return HashSet::new() };
    children.split_whitespace().filter_map(|pid| pid.parse().ok()).chain([2]).collect()
}

fn scan_processes(pids: &[i32], wanted: &[&[u8]]) -> Vec<String> {
    let mut found = Vec::new();
    let mut buffer = [0u8; 64];
    let mut path = [0u8; 32];
    let kernel_threads = kernel_threads();
    for pid in pids {
        if kernel_threads.contains(pid) {
            continue;
        }
        // Zombies and kernel threads the set above missed have no
        // executable, and neither can hold a session namespace: zombies
        // have dropped theirs. One readlink skips the calls below for them.
        // The paths are built on the stack and opened with openat, because
        // the scan visits every process of the host for each session.
        let Some(exe) = proc_path(&mut path, *pid, "exe") else { continue };
        // SAFETY: readlinkat reads the NUL-terminated path and writes at
        // most buffer.len() bytes into the buffer.
        let length = unsafe { libc::readlinkat(libc::AT_FDCWD, exe.as_ptr(), buffer.as_mut_ptr().cast(), buffer.len()) };
        if length < 0 && std::io::Error::last_os_error().kind() == std::io::ErrorKind::NotFound {
            continue;
        }
        let Some(ns) = proc_path(&mut path, *pid, "ns") else { continue };
        // SAFETY: openat reads the NUL-terminated path. The descriptor it
        // returns is owned by the OwnedFd alone.
        let directory = unsafe { libc::openat(libc::AT_FDCWD, ns.as_ptr(), libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC) };
        if directory < 0 {
            continue;
        }
        // SAFETY: as above.
        let directory = unsafe { std::os::fd::OwnedFd::from_raw_fd(directory) };
        for kind in SCANNED_KINDS {
            // SAFETY: readlinkat writes at most buffer.len() bytes into the buffer.
            let length = unsafe {
                libc::readlinkat(directory.as_raw_fd(), kind.as_ptr(), buffer.as_mut_ptr().cast(), buffer.len())
            };
            if length <= 0 {
                continue;
            }
            let link = &buffer[..length as usize];
            if wanted.contains(&link) {
                found.push(format!("{} is the namespace of pid {pid} ({})", String::from_utf8_lossy(link), describe(*pid)));
            }
        }
    }
    found
}

/// Writes `/proc/PID/NAME` with its closing NUL into `buffer`.
fn proc_path<'a>(buffer: &'a mut [u8; 32], pid: i32, name: &str) -> Option<&'a std::ffi::CStr> {
    let mut cursor = std::io::Cursor::new(&mut buffer[..]);
    std::io::Write::write_fmt(&mut cursor, format_args!("/proc/{pid}/{name}\0")).ok()?;
    std::ffi::CStr::from_bytes_until_nul(buffer).ok()
}

/// Finds every holder of any of `ids` among the [`SCANNED_KINDS`]: a process
/// living in the namespace, or an nsfs bind mount of it. Open descriptors to
/// a namespace are not looked for: only host root can open one from outside
/// the session, and scanning every descriptor of every process costs
/// milliseconds per session.
///
/// `except` is skipped: the session's init, when the scan starts while init,
/// the last process of the session, is exiting.
pub fn find_namespace_holders(ids: &BTreeMap<String, String>, except: Option<i32>) -> Vec<String> {
    let wanted: Vec<&[u8]> = ids.values().map(|id| id.as_bytes()).collect();
    let pids: Vec<i32> = match fs::read_dir("/proc") {
        Ok(entries) => entries
            .filter_map(Result::ok)
            .filter_map(|e| e.file_name().to_str()?.parse().ok())
            .filter(|pid| Some(*pid) != except)
            .collect(),
        Err(_) => Vec::new(),
    };
    let mut found = scan_processes(&pids, &wanted);
    let wanted: Vec<&String> = ids.values().collect();
    if let Ok(mountinfo) = crate::procfs::read("/proc/self/mountinfo") {
        for line in mountinfo.lines().filter(|l| l.contains(" - nsfs ")) {
            for id in &wanted {
                if line.contains(id.as_str()) {
                    found.push(format!("{id} is bind-mounted: {line}"));
                }
            }
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scan_finds_a_live_holder() {
        let own = namespace_ids(std::process::id() as i32);
        assert_eq!(own.len(), NAMESPACE_KINDS.len());
        let found = find_namespace_holders(&own, None);
        let me = format!("is the namespace of pid {}", std::process::id());
        assert!(found.iter().any(|line| line.contains(&me)), "{found:?}");
    }

    #[test]
    fn scan_skips_the_excepted_pid() {
        let own = namespace_ids(std::process::id() as i32);
        let found = find_namespace_holders(&own, Some(std::process::id() as i32));
        let me = format!("is the namespace of pid {} ", std::process::id());
        assert!(!found.iter().any(|line| line.contains(&me)), "{found:?}");
    }

    #[test]
    fn kernel_threads_are_kthreadd_children() {
        let threads = kernel_threads();
        assert!(!threads.contains(&(std::process::id() as i32)));
        let kthreadd = fs::read_to_string("/proc/2/comm").is_ok_and(|comm| comm.trim() == "kthreadd");
        if kthreadd {
            assert!(threads.contains(&2), "{threads:?}");
            for pid in threads.iter().filter(|pid| **pid != 2) {
                let exe = fs::read_link(format!("/proc/{pid}/exe"));
                assert!(exe.is_err(), "pid {pid} has an executable, so it is no kernel thread: {exe:?}");
            }
        }
    }

    #[test]
    fn scan_of_unknown_namespace_is_empty() {
        let ids = BTreeMap::from([("net".to_string(), "net:[1]".to_string())]);
        assert!(find_namespace_holders(&ids, None).is_empty());
    }
}
