//! Namespaces named by file handles, so that teardown can learn whether a
//! namespace still exists without holding a reference to it.
//!
//! Since Linux 6.18, `name_to_handle_at` on a `/proc/PID/ns/KIND` link
//! returns a handle that carries the namespace's unique 64-bit id, whereas
//! its inode number is reused as soon as it is freed. `open_by_handle_at` on
//! that handle fails with `ESTALE` once no process, open descriptor or bind
//! mount keeps the namespace (6.18 counts a socket in a network namespace
//! too). One call per namespace thus replaces a scan of every host process,
//! and covers open descriptors, which the scan does not. On older kernels
//! [`NamespaceHandles::take`] returns `None` and teardown falls back to the
//! scan.

use std::ffi::CStr;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

/// `MAX_HANDLE_SZ` of linux/exportfs.h. An nsfs handle takes 16 bytes.
const MAX_HANDLE_BYTES: usize = 128;

/// `struct file_handle` with room for the largest handle.
#[derive(Clone, Copy)]
#[repr(C)]
struct RawHandle {
    bytes: u32,
    kind: i32,
    data: [u8; MAX_HANDLE_BYTES],
}

/// A handle to one namespace of a session.
struct NamespaceHandle {
    kind: &'static CStr,
    handle: RawHandle,
}

/// Handles to a session's namespaces, taken while its init runs.
pub struct NamespaceHandles(Vec<NamespaceHandle>);

impl std::fmt::Debug for NamespaceHandles {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.0.iter().map(|h| h.kind)).finish()
    }
}

impl NamespaceHandles {
    /// Takes handles to the `kinds` namespaces of process `pid`, and opens
    /// one of them once to learn that this process may. Returns `None`
    /// when the kernel has no handles for namespaces, or when this process
    /// may not open them.
    pub fn take(pid: i32, kinds: &[&'static CStr]) -> Option<NamespaceHandles> {
        let mut handles = Vec::with_capacity(kinds.len());
        for kind in kinds {
            let path = format!("/proc/{pid}/ns/{}\0", kind.to_str().ok()?);
            let mut handle = RawHandle { bytes: MAX_HANDLE_BYTES as u32, kind: 0, data: [0; MAX_HANDLE_BYTES] };
            let mut mount_id: libc::c_int = 0;
            // SAFETY: the path is NUL-terminated, and the handle has room
            // for the `bytes` it declares after its two header fields.
            let result = unsafe {
                libc::name_to_handle_at(
                    libc::AT_FDCWD,
                    path.as_ptr().cast(),
                    (&mut handle as *mut RawHandle).cast(),
                    &mut mount_id,
                    libc::AT_SYMLINK_FOLLOW,
                )
            };
            if result != 0 {
                return None;
            }
            handles.push(NamespaceHandle { kind, handle });
        }
        let handles = NamespaceHandles(handles);
        let first = handles.0.first()?;
        let nsfs = own_namespace().ok()?;
        // While `pid` runs, its namespace exists, so a failed open means
        // that this process may not open handles. Should `pid` have exited
        // just now, teardown falls back to the scan, which is also correct.
        open(&nsfs, first).ok()??;
        Some(handles)
    }

    /// Returns the kinds whose namespace still exists, each with an open
    /// descriptor that keeps it from being freed while the caller looks
    /// for the processes in it.
    pub fn existing(&self) -> io::Result<Vec<(&'static str, OwnedFd)>> {
        let nsfs = own_namespace()?;
        let mut existing = Vec::new();
        for handle in &self.0 {
            if let Some(descriptor) = open(&nsfs, handle)? {
                existing.push((handle.kind.to_str().unwrap_or("?"), descriptor));
            }
        }
        Ok(existing)
    }
}

/// Opens this thread's own UTS namespace: `open_by_handle_at` takes a
/// descriptor on nsfs to know which file system a handle belongs to.
fn own_namespace() -> io::Result<OwnedFd> {
    // SAFETY: open reads the NUL-terminated path. The descriptor it
    // returns is owned by the OwnedFd alone.
    let fd = unsafe { libc::open(c"/proc/thread-self/ns/uts".as_ptr(), libc::O_RDONLY | libc::O_CLOEXEC) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: as above.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Opens the namespace a handle names. `None` when it no longer exists.
fn open(nsfs: &OwnedFd, handle: &NamespaceHandle) -> io::Result<Option<OwnedFd>> {
    let mut raw = handle.handle;
    // SAFETY: the handle is one name_to_handle_at filled in. The
    // descriptor returned is owned by the OwnedFd alone.
    let fd = unsafe { libc::open_by_handle_at(nsfs.as_raw_fd(), (&mut raw as *mut RawHandle).cast(), libc::O_RDONLY | libc::O_CLOEXEC) };
    if fd >= 0 {
        // SAFETY: as above.
        return Ok(Some(unsafe { OwnedFd::from_raw_fd(fd) }));
    }
    let error = io::Error::last_os_error();
    match error.raw_os_error() {
        Some(libc::ESTALE) => Ok(None),
        _ => Err(error),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KINDS: &[&CStr] = &[c"mnt", c"net", c"ipc", c"uts"];

    /// Starts a child in new namespaces of each kind, which waits until its
    /// stdin closes.
    fn child_in_new_namespaces() -> std::process::Child {
        std::process::Command::new("unshare")
            .args(["--mount", "--net", "--ipc", "--uts", "--", "sh", "-c", "read x"])
            .stdin(std::process::Stdio::piped())
            .spawn()
            .expect("unshare runs")
    }

    fn ns_link(pid: u32, kind: &str) -> std::path::PathBuf {
        std::fs::read_link(format!("/proc/{pid}/ns/{kind}")).unwrap()
    }

    #[test]
    fn handles_find_live_namespaces_only() {
        let mut child = child_in_new_namespaces();
        let pid = child.id();
        // unshare execs sh once the namespaces exist.
        let started = std::time::Instant::now();
        while ns_link(pid, "net") == ns_link(std::process::id(), "net") {
            assert!(started.elapsed() < std::time::Duration::from_secs(5), "the child never entered its namespaces");
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        let Some(handles) = NamespaceHandles::take(pid as i32, KINDS) else {
            eprintln!("this kernel has no file handles for namespaces; nothing to test");
            drop(child.stdin.take());
            child.wait().unwrap();
            return;
        };
        let alive: Vec<&str> = handles.existing().unwrap().into_iter().map(|(kind, _)| kind).collect();
        assert_eq!(alive, ["mnt", "net", "ipc", "uts"]);

        // An open descriptor keeps the network namespace after the child ends.
        let held = std::fs::File::open(format!("/proc/{pid}/ns/net")).unwrap();
        drop(child.stdin.take());
        child.wait().unwrap();
        let alive: Vec<&str> = handles.existing().unwrap().into_iter().map(|(kind, _)| kind).collect();
        assert_eq!(alive, ["net"]);
        drop(held);
        assert!(handles.existing().unwrap().is_empty());
    }

    #[test]
    fn handles_of_a_missing_process_are_none() {
        // No process has pid 0 in /proc.
        assert!(NamespaceHandles::take(0, KINDS).is_none());
    }
}
