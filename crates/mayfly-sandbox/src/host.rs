//! Checks of the protections this host supports, made by trying them where possible. Used by
//! `mayfly doctor` and before every session, which refuses to start when a
//! protection its profile requires is missing.

use std::fs;
use std::path::Path;

use serde::Serialize;

use crate::cgroup::Layout;
use crate::landlock_policy;
use crate::spec::LandlockMode;

#[derive(Debug, Clone, Serialize)]
pub struct Check {
    pub available: bool,
    pub detail: String,
}

impl Check {
    fn yes(detail: impl Into<String>) -> Check {
        Check { available: true, detail: detail.into() }
    }
    fn no(detail: impl Into<String>) -> Check {
        Check { available: false, detail: detail.into() }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct HostReport {
    pub kernel: String,
    pub architecture: String,
    pub namespaces: Check,
    pub cgroups: Check,
    pub cgroup_layout: Option<Layout>,
    pub swap_accounting: Check,
    pub seccomp: Check,
    pub landlock: Check,
    pub landlock_abi: Option<u32>,
    pub kvm: Check,
    pub chromium: Check,
    pub running_as_root: bool,
}

/// Tries to create a child in new user, PID, mount, network, IPC, UTS and
/// cgroup namespaces; the child exits at once.
fn check_namespaces() -> Check {
    let flags = libc::CLONE_NEWUSER
        | libc::CLONE_NEWPID
        | libc::CLONE_NEWNS
        | libc::CLONE_NEWNET
        | libc::CLONE_NEWIPC
        | libc::CLONE_NEWUTS
        | libc::CLONE_NEWCGROUP;
    // SAFETY: a fork-like clone whose child only calls _exit.
    let pid = unsafe { libc::syscall(libc::SYS_clone, (flags | libc::SIGCHLD) as libc::c_ulong, 0usize, 0usize, 0usize, 0usize) };
    if pid < 0 {
        let error = std::io::Error::last_os_error();
        let max = crate::procfs::read("/proc/sys/user/max_user_namespaces").unwrap_or_default();
        return Check::no(format!("creating user, pid, mount, network, ipc, uts and cgroup namespaces failed: {error} (user.max_user_namespaces = {})", max.trim()));
    }
    if pid == 0 {
        // SAFETY: _exit is async-signal-safe and ends the child immediately.
        unsafe { libc::_exit(0) };
    }
    // SAFETY: reaping the child created above.
    unsafe { libc::waitpid(pid as i32, std::ptr::null_mut(), 0) };
    Check::yes("user, pid, mount, network, ipc, uts and cgroup namespaces can be created")
}

fn check_seccomp() -> Check {
    let actions = crate::procfs::read("/proc/sys/kernel/seccomp/actions_avail").unwrap_or_default();
    let needed = ["kill_process", "errno", "allow"];
    let missing: Vec<&str> = needed.iter().copied().filter(|a| !actions.split_whitespace().any(|x| x == *a)).collect();
    if actions.is_empty() {
        return Check::no("the kernel has no seccomp filter support (/proc/sys/kernel/seccomp/actions_avail is missing)");
    }
    if !missing.is_empty() {
        return Check::no(format!("seccomp lacks actions {missing:?}"));
    }
    Check::yes(format!("seccomp filters with actions: {}", actions.trim()))
}

fn check_swap(layout: Option<&Layout>) -> Check {
    let meminfo = crate::procfs::read("/proc/meminfo").unwrap_or_default();
    let swap_total = meminfo
        .lines()
        .find_map(|l| l.strip_prefix("SwapTotal:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap_or(0);
    let accounted = match layout {
        Some(Layout::V2 { .. }) => true,
        Some(Layout::V1 { controllers }) => {
            controllers.get("memory").is_some_and(|root| root.join("memory.memsw.limit_in_bytes").exists())
        }
        None => false,
    };
    match (swap_total, accounted) {
        (_, true) => Check::yes("the memory limit includes swap"),
        (0, false) => Check::yes("the host has no swap, so the memory limit bounds memory and swap"),
        (_, false) => Check::no("the host has swap but the v1 memory controller has no swap accounting (boot with swapaccount=1)"),
    }
}

fn check_chromium() -> Check {
    let path = Path::new("/usr/bin/chromium");
    if !path.exists() {
        return Check::no("/usr/bin/chromium is not installed (browser sessions need Debian's chromium package)");
    }
    match std::process::Command::new(path).arg("--version").env_clear().output() {
        Ok(output) if output.status.success() => Check::yes(String::from_utf8_lossy(&output.stdout).trim().to_string()),
        Ok(output) => Check::no(format!("/usr/bin/chromium --version failed with {}", output.status)),
        Err(error) => Check::no(format!("/usr/bin/chromium could not run: {error}")),
    }
}

/// Collects the full host report for `mayfly doctor`. Creates and removes one
/// short-lived child in new namespaces and runs `chromium --version`.
pub fn inspect() -> HostReport {
    let mut report = inspect_for_jobs();
    report.namespaces = check_namespaces();
    report.kvm = match fs::File::options().read(true).write(true).open("/dev/kvm") {
        Ok(_) => Check::yes("/dev/kvm can be opened"),
        Err(error) => Check::no(format!("/dev/kvm: {error}")),
    };
    report.chromium = check_chromium();
    report
}

/// Collects what a job session needs to know before it starts, cheaply: the
/// namespace check is left to the session's own clone, whose error names it,
/// and KVM and Chromium are not looked at.
pub fn inspect_for_jobs() -> HostReport {
    let kernel = nix::sys::utsname::uname().map(|u| u.release().to_string_lossy().into_owned()).unwrap_or_default();
    let layout = Layout::detect();
    let cgroups = match &layout {
        Ok(layout) => {
            let missing = layout.missing_controllers();
            let version = match layout {
                Layout::V2 { .. } => "v2",
                Layout::V1 { .. } => "v1",
            };
            if missing.is_empty() {
                Check::yes(format!("cgroup {version} with every controller a session needs"))
            } else {
                Check::no(format!("cgroup {version} lacks controllers: {}", missing.join(", ")))
            }
        }
        Err(error) => Check::no(error.to_string()),
    };
    let landlock_abi = landlock_policy::kernel_abi();
    let landlock = match landlock_abi {
        Some(abi) => Check::yes(format!("Landlock ABI {abi}")),
        None => Check::no("the kernel does not offer Landlock (not built in, or not in the lsm= boot list)"),
    };
    let unchecked = || Check { available: true, detail: "not checked".into() };
    HostReport {
        kernel,
        architecture: std::env::consts::ARCH.to_string(),
        namespaces: unchecked(),
        swap_accounting: check_swap(layout.as_ref().ok()),
        cgroup_layout: layout.ok(),
        cgroups,
        seccomp: check_seccomp(),
        landlock,
        landlock_abi,
        kvm: unchecked(),
        chromium: unchecked(),
        running_as_root: nix::unistd::geteuid().is_root(),
    }
}

/// A protection a profile needs that this host does not provide.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Missing {
    pub protection: String,
    pub detail: String,
}

/// Lists what a job profile needs that `report` shows missing.
pub fn missing_for_job(report: &HostReport, landlock: LandlockMode) -> Vec<Missing> {
    let mut missing = Vec::new();
    let mut need = |protection: &str, check: &Check| {
        if !check.available {
            missing.push(Missing { protection: protection.into(), detail: check.detail.clone() });
        }
    };
    need("namespaces", &report.namespaces);
    need("cgroup controllers", &report.cgroups);
    need("swap accounting", &report.swap_accounting);
    need("seccomp", &report.seccomp);
    if landlock == LandlockMode::Required {
        need("Landlock", &report.landlock);
    }
    if !report.running_as_root {
        missing.push(Missing {
            protection: "root privileges".into(),
            detail: "the native backend maps each session onto its own unprivileged host uid range and creates cgroups, which needs root".into(),
        });
    }
    if report.architecture != "x86_64" {
        missing.push(Missing { protection: "seccomp allow list".into(), detail: format!("no allow list is defined for {}", report.architecture) });
    }
    missing
}

#[cfg(test)]
mod tests {
    use super::*;

    fn full_host() -> HostReport {
        let ok = || Check::yes("present");
        HostReport {
            kernel: "6.1".into(),
            architecture: "x86_64".into(),
            namespaces: ok(),
            cgroups: ok(),
            cgroup_layout: None,
            swap_accounting: ok(),
            seccomp: ok(),
            landlock: ok(),
            landlock_abi: Some(4),
            kvm: ok(),
            chromium: ok(),
            running_as_root: true,
        }
    }

    #[test]
    fn complete_host_misses_nothing() {
        assert!(missing_for_job(&full_host(), LandlockMode::Required).is_empty());
    }

    #[test]
    fn missing_landlock_blocks_only_required_profiles() {
        let mut host = full_host();
        host.landlock = Check::no("not in the lsm= list");
        let missing = missing_for_job(&host, LandlockMode::Required);
        assert_eq!(missing.len(), 1);
        assert_eq!(missing[0].protection, "Landlock");
        assert!(missing[0].detail.contains("lsm="));
        assert!(missing_for_job(&host, LandlockMode::IfAvailable).is_empty());
    }

    #[test]
    fn each_missing_protection_is_named() {
        let mut host = full_host();
        host.seccomp = Check::no("no seccomp");
        host.cgroups = Check::no("no pids controller");
        host.running_as_root = false;
        let names: Vec<String> = missing_for_job(&host, LandlockMode::Required).into_iter().map(|m| m.protection).collect();
        assert_eq!(names, vec!["cgroup controllers", "seccomp", "root privileges"]);
    }

    #[test]
    fn chromium_and_kvm_are_not_needed_by_jobs() {
        let mut host = full_host();
        host.kvm = Check::no("no /dev/kvm");
        host.chromium = Check::no("not installed");
        assert!(missing_for_job(&host, LandlockMode::Required).is_empty());
    }
}
