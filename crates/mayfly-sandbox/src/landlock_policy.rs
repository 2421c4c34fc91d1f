//! The command's Landlock ruleset: read and execute on the read-only system
//! paths, full access on its own tmpfs directories, nothing elsewhere.

use std::ffi::CString;
use std::os::fd::{FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use landlock::{
    Access, AccessFs, BitFlags, CompatLevel, Compatible, PathBeneath, Ruleset, RulesetAttr, RulesetCreated,
    RulesetCreatedAttr, RulesetStatus, ABI,
};

use crate::spec::{LandlockMode, LandlockStatus};

#[derive(Debug, thiserror::Error)]
pub enum LandlockError {
    #[error("Landlock is required by the profile but this kernel does not enforce it; enable the landlock LSM or set sandbox.landlock = \"if-available\"")]
    Unsupported,
    #[error("failed to apply the Landlock ruleset: {0}")]
    Ruleset(#[from] landlock::RulesetError),
}

/// Paths the command may read and execute but not change.
const READ_ONLY: &[&str] = &["/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32", "/etc", "/opt", "/proc", "/dev"];
/// Paths the command may change: its tmpfs mounts and a few device nodes.
const WRITABLE: &[&str] = &["/work", "/tmp", "/dev/shm", "/dev/null", "/dev/zero", "/dev/full", "/dev/pts", "/dev/ptmx"];

/// The newest ABI this ruleset requests. Older kernels get what they support
/// in best-effort mode, and the result is reported.
const TARGET_ABI: ABI = ABI::V5;

/// Adds a rule for `path` if it exists. Rules on files may carry only file
/// rights, so directory rights are dropped for them. Otherwise the crate
/// would report the whole ruleset as only partially enforced.
fn add(ruleset: RulesetCreated, path: &Path, access: BitFlags<AccessFs>) -> Result<RulesetCreated, LandlockError> {
    let Some((fd, is_dir)) = open_path(path) else { return Ok(ruleset) };
    let access = if is_dir { access } else { access & AccessFs::from_file(TARGET_ABI) };
    Ok(ruleset.add_rule(PathBeneath::new(fd, access))?)
}

/// Opens `path` with `O_PATH`, following symlinks, and returns whether it is
/// a directory. Returns `None` when it cannot be opened, such as when it
/// does not exist. Most rules name directories, so `O_DIRECTORY` comes first
/// and a file costs a second call. The raw system call skips the `fcntl`
/// that musl's `open` adds for `O_CLOEXEC`; this runs on every command's
/// way to its exec.
fn open_path(path: &Path) -> Option<(OwnedFd, bool)> {
    let path = CString::new(path.as_os_str().as_bytes()).ok()?;
    for (flags, is_dir) in [(libc::O_DIRECTORY, true), (0, false)] {
        // SAFETY: openat reads the NUL-terminated path. The descriptor it
        // returns is owned by the OwnedFd alone.
        let fd = unsafe { libc::syscall(libc::SYS_openat, libc::AT_FDCWD, path.as_ptr(), libc::O_PATH | libc::O_CLOEXEC | flags) };
        if fd >= 0 {
            // SAFETY: as above.
            return Some((unsafe { OwnedFd::from_raw_fd(fd as i32) }, is_dir));
        }
        if std::io::Error::last_os_error().raw_os_error() != Some(libc::ENOTDIR) {
            return None;
        }
    }
    None
}

/// Restricts the calling thread and its future children.
pub fn restrict(mode: LandlockMode, extra_read_only: &[std::path::PathBuf]) -> Result<LandlockStatus, LandlockError> {
    let all = AccessFs::from_all(TARGET_ABI);
    let read = AccessFs::from_read(TARGET_ABI);
    let mut ruleset = Ruleset::default().set_compatibility(CompatLevel::BestEffort).handle_access(all)?.create()?;

    // Listing the root directory only; reading below it needs one of the rules after.
    if let Some((fd, _)) = open_path(Path::new("/")) {
        ruleset = ruleset.add_rule(PathBeneath::new(fd, AccessFs::ReadDir))?;
    }
    let read_only = READ_ONLY.iter().map(Path::new).chain(extra_read_only.iter().map(|p| p.as_path()));
    for path in read_only {
        ruleset = add(ruleset, path, read)?;
    }
    for path in WRITABLE {
        ruleset = add(ruleset, Path::new(path), all)?;
    }
    let status = ruleset.restrict_self()?;
    let status = match status.ruleset {
        RulesetStatus::FullyEnforced => LandlockStatus::FullyEnforced,
        RulesetStatus::PartiallyEnforced => LandlockStatus::PartiallyEnforced,
        _ => LandlockStatus::NotEnforced,
    };
    if status == LandlockStatus::NotEnforced && mode == LandlockMode::Required {
        return Err(LandlockError::Unsupported);
    }
    Ok(status)
}

/// Returns the Landlock ABI version this kernel offers, or `None` without Landlock.
pub fn kernel_abi() -> Option<u32> {
    // SAFETY: with a null attribute pointer, size 0 and the VERSION flag, the
    // call only returns the ABI version and touches no memory.
    let version = unsafe {
        libc::syscall(libc::SYS_landlock_create_ruleset, std::ptr::null::<u8>(), 0usize, 1u32 /* LANDLOCK_CREATE_RULESET_VERSION */)
    };
    (version > 0).then_some(version as u32)
}
