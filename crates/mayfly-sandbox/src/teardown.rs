//! Verified teardown: after the kill, look for anything of the session that
//! survived and report what was found as evidence.

use std::collections::BTreeMap;
use std::fs;
use std::os::fd::AsRawFd;
use std::path::PathBuf;

use serde::Serialize;

/// Namespace kinds whose identity is recorded when a session starts.
pub const NAMESPACE_KINDS: &[&str] = &["user", "pid", "mnt", "net", "ipc", "uts"];

/// Namespace kinds looked for at teardown: the ones that can keep processes,
/// files, sockets or shared memory alive. A surviving user or UTS namespace
/// holds none of those by itself, and each kind scanned costs about a
/// microsecond per host process.
const SCANNED_KINDS: &[&std::ffi::CStr] = &[c"pid", c"mnt", c"net", c"ipc"];

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

/// Finds every holder of any of `ids` among the [`SCANNED_KINDS`]: a process
/// living in the namespace, or an nsfs bind mount of it. Open descriptors to
/// a namespace are not looked for: only host root can open one from outside
/// the session, and scanning every descriptor of every process costs
/// milliseconds per session.
pub fn find_namespace_holders(ids: &BTreeMap<String, String>) -> Vec<String> {
    let wanted: Vec<&[u8]> = ids.values().map(|id| id.as_bytes()).collect();
    let mut found = Vec::new();
    let Ok(entries) = fs::read_dir("/proc") else { return found };
    let mut buffer = [0u8; 64];
    for entry in entries.filter_map(Result::ok) {
        let name = entry.file_name();
        let Some(pid) = name.to_str().and_then(|n| n.parse::<i32>().ok()) else { continue };
        let Ok(directory) = fs::File::open(format!("/proc/{pid}/ns")) else { continue };
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
                found.push(format!("{} is the namespace of pid {pid}", String::from_utf8_lossy(link)));
            }
        }
    }
    let wanted: Vec<&String> = ids.values().collect();
    if let Ok(mountinfo) = fs::read_to_string("/proc/self/mountinfo") {
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
