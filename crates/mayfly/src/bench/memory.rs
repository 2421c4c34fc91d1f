//! Memory readings for the shell bench: a process's resident set and
//! proportional set size from /proc, and a session cgroup's charged memory.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use mayfly_sandbox::cgroup::Layout;

/// Returns the value in bytes of the first line `field` (such as `VmRSS:`)
/// in a /proc file whose values are in kB, as in `VmRSS:  1234 kB`.
pub(super) fn parse_kib_field(text: &str, field: &str) -> Option<u64> {
    let line = text.lines().find(|line| line.starts_with(field))?;
    let rest = line[field.len()..].trim();
    let number = rest.strip_suffix("kB").unwrap_or(rest).trim();
    number.parse::<u64>().ok().map(|kib| kib * 1024)
}

fn read_kib_field(path: &Path, field: &str) -> Result<u64, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    parse_kib_field(&text, field).ok_or_else(|| format!("{} has no {field} line", path.display()))
}

/// Returns the resident set size of a process, in bytes.
pub(super) fn process_rss_bytes(pid: u32) -> Result<u64, String> {
    read_kib_field(&PathBuf::from(format!("/proc/{pid}/status")), "VmRSS:")
}

/// Returns the proportional set size of a process, in bytes: its private
/// pages plus its share of each page it shares with other processes.
pub(super) fn process_pss_bytes(pid: u32) -> Result<u64, String> {
    read_kib_field(&PathBuf::from(format!("/proc/{pid}/smaps_rollup")), "Pss:")
}

/// Parses the process ids of a `cgroup.procs` file, one a line.
pub(super) fn parse_pids(text: &str) -> Result<Vec<u32>, String> {
    text.lines().filter(|line| !line.trim().is_empty()).map(|line| line.trim().parse::<u32>().map_err(|e| format!("invalid pid {line:?}: {e}"))).collect()
}

/// Parses a cgroup `memory.stat` file: one `key value` pair a line.
pub(super) fn parse_memory_stat(text: &str) -> BTreeMap<String, u64> {
    text.lines()
        .filter_map(|line| {
            let (key, value) = line.split_once(' ')?;
            Some((key.to_string(), value.trim().parse().ok()?))
        })
        .collect()
}

/// Memory charged to one session's cgroup, in bytes.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub(super) struct CgroupMemory {
    /// `memory.current` on cgroup v2, `memory.usage_in_bytes` on v1.
    pub(super) usage: u64,
    /// Anonymous pages of the session's processes.
    pub(super) anon: u64,
    /// Page cache and tmpfs pages first touched by the session.
    pub(super) file: u64,
    /// Kernel memory charged to the cgroup: page tables, stacks, slab.
    pub(super) kernel: u64,
}

impl CgroupMemory {
    /// Splits a cgroup v2 usage by its `memory.stat`. Older kernels have
    /// no `kernel` key, so there the kernel share is what anon and file leave.
    pub(super) fn from_v2(usage: u64, stat: &BTreeMap<String, u64>) -> CgroupMemory {
        let anon = stat.get("anon").copied().unwrap_or(0);
        let file = stat.get("file").copied().unwrap_or(0);
        let kernel = stat.get("kernel").copied().unwrap_or_else(|| usage.saturating_sub(anon + file));
        CgroupMemory { usage, anon, file, kernel }
    }

    /// Splits a cgroup v1 usage by its `memory.stat`, whose `total_` keys
    /// include child cgroups, and `memory.kmem.usage_in_bytes`.
    pub(super) fn from_v1(usage: u64, stat: &BTreeMap<String, u64>, kernel: Option<u64>) -> CgroupMemory {
        let anon = stat.get("total_rss").or_else(|| stat.get("rss")).copied().unwrap_or(0);
        let file = stat.get("total_cache").or_else(|| stat.get("cache")).copied().unwrap_or(0);
        let kernel = kernel.unwrap_or_else(|| usage.saturating_sub(anon + file));
        CgroupMemory { usage, anon, file, kernel }
    }
}

/// The memory cgroup of one session.
pub(super) struct SessionMemory {
    directory: PathBuf,
    v2: bool,
}

fn read_number(path: &Path) -> Result<u64, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    text.trim().parse::<u64>().map_err(|e| format!("{} holds {:?}, not a number: {e}", path.display(), text.trim()))
}

impl SessionMemory {
    /// Finds the memory cgroup of session `id` under `layout`: the directory
    /// with `memory.current` on cgroup v2 or `memory.usage_in_bytes` on v1.
    pub(super) fn find(layout: &Layout, id: &str) -> Result<SessionMemory, String> {
        for directory in layout.session_paths(id) {
            if directory.join("memory.current").exists() {
                return Ok(SessionMemory { directory, v2: true });
            }
            if directory.join("memory.usage_in_bytes").exists() {
                return Ok(SessionMemory { directory, v2: false });
            }
        }
        Err(format!("no memory cgroup of session {id} found under {:?}", layout.session_paths(id)))
    }

    /// Reads the memory charged to the cgroup and its parts.
    pub(super) fn read(&self) -> Result<CgroupMemory, String> {
        let stat_path = self.directory.join("memory.stat");
        let stat = parse_memory_stat(&std::fs::read_to_string(&stat_path).map_err(|e| format!("cannot read {}: {e}", stat_path.display()))?);
        if self.v2 {
            return Ok(CgroupMemory::from_v2(read_number(&self.directory.join("memory.current"))?, &stat));
        }
        let usage = read_number(&self.directory.join("memory.usage_in_bytes"))?;
        let kernel = read_number(&self.directory.join("memory.kmem.usage_in_bytes")).ok();
        Ok(CgroupMemory::from_v1(usage, &stat, kernel))
    }

    /// Returns the process ids in the cgroup, in the host's PID namespace.
    pub(super) fn pids(&self) -> Result<Vec<u32>, String> {
        let path = self.directory.join("cgroup.procs");
        let text = std::fs::read_to_string(&path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        parse_pids(&text)
    }
}

/// Converts bytes to mebibytes.
pub(super) fn mebibytes(bytes: f64) -> f64 {
    bytes / (1024.0 * 1024.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kib_field_from_proc_text() {
        let status = "Name:\tbash\nVmPeak:\t    9000 kB\nVmRSS:\t    4242 kB\nThreads:\t1\n";
        assert_eq!(parse_kib_field(status, "VmRSS:"), Some(4242 * 1024));
        assert_eq!(parse_kib_field(status, "VmPeak:"), Some(9000 * 1024));
        assert_eq!(parse_kib_field(status, "VmSwap:"), None);
        assert_eq!(parse_kib_field(status, "Threads:"), Some(1024));
    }

    #[test]
    fn kib_field_takes_exact_prefix() {
        let rollup = "Rss:                3000 kB\nPss:                1200 kB\nPss_Anon:            800 kB\n";
        assert_eq!(parse_kib_field(rollup, "Pss:"), Some(1200 * 1024));
        assert_eq!(parse_kib_field(rollup, "Pss_Anon:"), Some(800 * 1024));
        assert_eq!(parse_kib_field("Pss: many kB\n", "Pss:"), None);
    }

    #[test]
    fn pids_parse_lines() {
        assert_eq!(parse_pids("12\n345\n"), Ok(vec![12, 345]));
        assert_eq!(parse_pids(""), Ok(vec![]));
        assert!(parse_pids("12\nabc\n").is_err());
    }

    #[test]
    fn memory_stat_parses_pairs() {
        let stat = parse_memory_stat("cache 24576\nrss 1310720\nbroken\nodd x\n");
        assert_eq!(stat.get("cache"), Some(&24576));
        assert_eq!(stat.get("rss"), Some(&1310720));
        assert_eq!(stat.len(), 2);
    }

    #[test]
    fn cgroup_v1_split() {
        let stat = parse_memory_stat("cache 100\nrss 200\ntotal_cache 1000\ntotal_rss 2000\n");
        assert_eq!(CgroupMemory::from_v1(5000, &stat, Some(300)), CgroupMemory { usage: 5000, anon: 2000, file: 1000, kernel: 300 });
        let own = parse_memory_stat("cache 100\nrss 200\n");
        assert_eq!(CgroupMemory::from_v1(500, &own, None), CgroupMemory { usage: 500, anon: 200, file: 100, kernel: 200 });
    }

    #[test]
    fn cgroup_v2_split() {
        let stat = parse_memory_stat("anon 2000\nfile 1000\nkernel 400\nshmem 10\n");
        assert_eq!(CgroupMemory::from_v2(3500, &stat), CgroupMemory { usage: 3500, anon: 2000, file: 1000, kernel: 400 });
        let old_kernel = parse_memory_stat("anon 2000\nfile 1000\n");
        assert_eq!(CgroupMemory::from_v2(3500, &old_kernel).kernel, 500);
        assert_eq!(CgroupMemory::from_v2(100, &old_kernel).kernel, 0);
    }

    #[test]
    fn mebibytes_of_bytes() {
        assert_eq!(mebibytes(3.0 * 1024.0 * 1024.0), 3.0);
    }
}
