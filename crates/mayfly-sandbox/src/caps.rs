//! Dropping every capability: the bounding set, the ambient set, and the
//! permitted, effective and inheritable sets.

use std::io;

#[derive(Debug, thiserror::Error)]
pub enum CapsError {
    #[error("failed to drop capability {cap} from the bounding set: {source}")]
    Bounding { cap: u32, source: io::Error },
    #[error("failed to clear the ambient capabilities: {0}")]
    Ambient(io::Error),
    #[error("failed to clear the capability sets: {0}")]
    Capset(io::Error),
    #[error("capabilities remain after dropping them: {0}")]
    Remaining(String),
}

/// More capability numbers than any kernel has: 41 on Linux 6.18.
const MAX_CAPS: u32 = 64;

/// Drops every capability from the bounding set. Needs CAP_SETPCAP, so it runs
/// before the switch to the unprivileged uid. The kernel rejects the first
/// number past its last capability with EINVAL, which ends the loop without
/// a read of `/proc/sys/kernel/cap_last_cap`.
pub fn drop_bounding_set() -> Result<(), CapsError> {
    for cap in 0..MAX_CAPS {
        // SAFETY: prctl with PR_CAPBSET_DROP takes integer arguments only.
        let result = unsafe { libc::prctl(libc::PR_CAPBSET_DROP, cap as libc::c_ulong, 0, 0, 0) };
        if result != 0 {
            let source = io::Error::last_os_error();
            if cap > 0 && source.raw_os_error() == Some(libc::EINVAL) {
                break;
            }
            return Err(CapsError::Bounding { cap, source });
        }
    }
    // SAFETY: as above, integer arguments only.
    let result = unsafe { libc::prctl(libc::PR_CAP_AMBIENT, libc::PR_CAP_AMBIENT_CLEAR_ALL as libc::c_ulong, 0, 0, 0) };
    if result != 0 {
        return Err(CapsError::Ambient(io::Error::last_os_error()));
    }
    Ok(())
}

#[repr(C)]
struct CapHeader {
    version: u32,
    pid: i32,
}

#[repr(C)]
#[derive(Default, Clone, Copy)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

const LINUX_CAPABILITY_VERSION_3: u32 = 0x2008_0522;

/// Clears the permitted, effective and inheritable sets of the calling thread.
pub fn clear_sets() -> Result<(), CapsError> {
    let header = CapHeader { version: LINUX_CAPABILITY_VERSION_3, pid: 0 };
    let data = [CapData::default(); 2];
    // SAFETY: capset reads one header and two data structs of the v3 layout,
    // both of which live on this stack frame for the duration of the call.
    let result = unsafe { libc::syscall(libc::SYS_capset, &header as *const CapHeader, data.as_ptr()) };
    if result != 0 {
        return Err(CapsError::Capset(io::Error::last_os_error()));
    }
    Ok(())
}

/// Checks /proc/self/status and fails if any capability set is not empty.
pub fn verify_none() -> Result<(), CapsError> {
    let status = crate::procfs::read("/proc/self/status").map_err(|e| CapsError::Remaining(e.to_string()))?;
    for line in status.lines() {
        for field in ["CapInh:", "CapPrm:", "CapEff:", "CapBnd:", "CapAmb:"] {
            if let Some(value) = line.strip_prefix(field) {
                if !value.trim().trim_start_matches('0').is_empty() {
                    return Err(CapsError::Remaining(line.to_string()));
                }
            }
        }
    }
    Ok(())
}
