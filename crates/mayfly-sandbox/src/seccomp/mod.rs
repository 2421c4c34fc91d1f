//! The command's seccomp filter: an allow list, with an architecture check
//! that kills the process on any foreign ABI (such as `int 0x80` on x86_64).
//!
//! Every allowed system call is listed below with what needs it. A call that
//! is not listed fails with EPERM. Calls that would let the command leave or
//! widen its sandbox are deliberately absent: unshare, setns, mount and the
//! new mount API, pivot_root, chroot, ptrace, process_vm_readv/writev, bpf,
//! perf_event_open, keyctl, add_key, request_key, the module calls,
//! io_uring_setup/enter/register, userfaultfd, kexec, reboot, swapon,
//! open_by_handle_at, iopl, ioperm, modify_ldt, mknod, syslog, clock and
//! hostname setters.

mod bpf;

use bpf::Action;

#[derive(Debug, thiserror::Error)]
pub enum SeccompError {
    #[error("failed to install the seccomp filter: {0}")]
    Install(std::io::Error),
    #[error("seccomp filters are only defined for x86_64, not {0}")]
    UnsupportedArch(&'static str),
}

/// AUDIT_ARCH_X86_64 from linux/audit.h.
const AUDIT_ARCH_X86_64: u32 = 0xc000_003e;

/// A compiled filter, ready to install.
pub struct Filter(Vec<libc::sock_filter>);

/// Namespace flags that `clone` may never carry.
const NAMESPACE_FLAGS: u32 = (libc::CLONE_NEWNS
    | libc::CLONE_NEWUSER
    | libc::CLONE_NEWPID
    | libc::CLONE_NEWNET
    | libc::CLONE_NEWIPC
    | libc::CLONE_NEWUTS
    | libc::CLONE_NEWCGROUP) as u32;

/// System calls allowed without conditions, grouped by what needs them.
const ALLOWED: &[(&str, &[i64])] = &[
    ("file I/O", &[
        libc::SYS_read, libc::SYS_write, libc::SYS_readv, libc::SYS_writev, libc::SYS_pread64, libc::SYS_pwrite64,
        libc::SYS_preadv, libc::SYS_pwritev, libc::SYS_preadv2, libc::SYS_pwritev2, libc::SYS_lseek,
        libc::SYS_sendfile, libc::SYS_splice, libc::SYS_tee, libc::SYS_copy_file_range, libc::SYS_fadvise64,
        libc::SYS_readahead, libc::SYS_fsync, libc::SYS_fdatasync, libc::SYS_sync, libc::SYS_syncfs,
        libc::SYS_sync_file_range, libc::SYS_fallocate, libc::SYS_truncate, libc::SYS_ftruncate,
    ]),
    ("opening and describing files", &[
        libc::SYS_open, libc::SYS_openat, libc::SYS_openat2, libc::SYS_creat, libc::SYS_close, libc::SYS_close_range,
        libc::SYS_stat, libc::SYS_fstat, libc::SYS_lstat, libc::SYS_newfstatat, libc::SYS_statx, libc::SYS_statfs,
        libc::SYS_fstatfs, libc::SYS_access, libc::SYS_faccessat, libc::SYS_faccessat2, libc::SYS_readlink,
        libc::SYS_readlinkat, libc::SYS_getdents, libc::SYS_getdents64, libc::SYS_dup, libc::SYS_dup2, libc::SYS_dup3,
        libc::SYS_fcntl, libc::SYS_flock, libc::SYS_pipe, libc::SYS_pipe2, libc::SYS_memfd_create, libc::SYS_umask,
    ]),
    ("changing the file tree (confined to tmpfs by the mounts and Landlock)", &[
        libc::SYS_getcwd, libc::SYS_chdir, libc::SYS_fchdir, libc::SYS_mkdir, libc::SYS_mkdirat, libc::SYS_rmdir,
        libc::SYS_unlink, libc::SYS_unlinkat, libc::SYS_rename, libc::SYS_renameat, libc::SYS_renameat2,
        libc::SYS_link, libc::SYS_linkat, libc::SYS_symlink, libc::SYS_symlinkat, libc::SYS_chmod, libc::SYS_fchmod,
        libc::SYS_fchmodat, 452 /* fchmodat2 */, libc::SYS_chown, libc::SYS_fchown, libc::SYS_lchown, libc::SYS_fchownat,
        libc::SYS_utime, libc::SYS_utimes, libc::SYS_utimensat, libc::SYS_futimesat,
        libc::SYS_getxattr, libc::SYS_lgetxattr, libc::SYS_fgetxattr, libc::SYS_listxattr, libc::SYS_llistxattr,
        libc::SYS_flistxattr, libc::SYS_setxattr, libc::SYS_lsetxattr, libc::SYS_fsetxattr, libc::SYS_removexattr,
        libc::SYS_lremovexattr, libc::SYS_fremovexattr,
    ]),
    ("watching files (build tools, editors)", &[
        libc::SYS_inotify_init, libc::SYS_inotify_init1, libc::SYS_inotify_add_watch, libc::SYS_inotify_rm_watch,
    ]),
    ("memory", &[
        libc::SYS_mmap, libc::SYS_munmap, libc::SYS_mprotect, libc::SYS_mremap, libc::SYS_brk, libc::SYS_madvise,
        libc::SYS_msync, libc::SYS_mincore, libc::SYS_mlock, libc::SYS_munlock, libc::SYS_mlock2, libc::SYS_mlockall,
        libc::SYS_munlockall, libc::SYS_membarrier, libc::SYS_pkey_alloc, libc::SYS_pkey_free, libc::SYS_pkey_mprotect,
        libc::SYS_get_mempolicy, libc::SYS_set_mempolicy, libc::SYS_mbind, 453 /* map_shadow_stack */,
    ]),
    ("processes and threads (clone is allowed below, without namespace flags)", &[
        libc::SYS_fork, libc::SYS_vfork, libc::SYS_execve, libc::SYS_execveat, libc::SYS_exit, libc::SYS_exit_group,
        libc::SYS_wait4, libc::SYS_waitid, libc::SYS_set_tid_address, libc::SYS_set_robust_list,
        libc::SYS_get_robust_list, libc::SYS_rseq, libc::SYS_futex, libc::SYS_futex_waitv, libc::SYS_arch_prctl,
        libc::SYS_prctl, libc::SYS_sched_yield, libc::SYS_sched_getaffinity, libc::SYS_sched_setaffinity,
        libc::SYS_sched_getparam, libc::SYS_sched_setparam, libc::SYS_sched_getscheduler, libc::SYS_sched_setscheduler,
        libc::SYS_sched_get_priority_max, libc::SYS_sched_get_priority_min, libc::SYS_sched_getattr,
        libc::SYS_sched_setattr, libc::SYS_sched_rr_get_interval, libc::SYS_getcpu, libc::SYS_getpriority,
        libc::SYS_setpriority, libc::SYS_ioprio_get, libc::SYS_ioprio_set,
    ]),
    ("identity (no capabilities remain, so these cannot gain privilege)", &[
        libc::SYS_getpid, libc::SYS_getppid, libc::SYS_gettid, libc::SYS_getuid, libc::SYS_geteuid, libc::SYS_getgid,
        libc::SYS_getegid, libc::SYS_getgroups, libc::SYS_getresuid, libc::SYS_getresgid, libc::SYS_setuid,
        libc::SYS_setgid, libc::SYS_setreuid, libc::SYS_setregid, libc::SYS_setresuid, libc::SYS_setresgid,
        libc::SYS_setgroups, libc::SYS_setfsuid, libc::SYS_setfsgid, libc::SYS_setsid, libc::SYS_setpgid,
        libc::SYS_getpgid, libc::SYS_getpgrp, libc::SYS_getsid, libc::SYS_capget, libc::SYS_capset,
    ]),
    ("resource limits and accounting", &[
        libc::SYS_getrlimit, libc::SYS_setrlimit, libc::SYS_prlimit64, libc::SYS_getrusage, libc::SYS_times,
        libc::SYS_sysinfo, libc::SYS_uname,
    ]),
    ("signals", &[
        libc::SYS_rt_sigaction, libc::SYS_rt_sigprocmask, libc::SYS_rt_sigreturn, libc::SYS_rt_sigsuspend,
        libc::SYS_rt_sigpending, libc::SYS_rt_sigtimedwait, libc::SYS_rt_sigqueueinfo, libc::SYS_rt_tgsigqueueinfo,
        libc::SYS_sigaltstack, libc::SYS_pause, libc::SYS_alarm, libc::SYS_kill, libc::SYS_tkill, libc::SYS_tgkill,
        libc::SYS_signalfd, libc::SYS_signalfd4, libc::SYS_pidfd_open, libc::SYS_pidfd_send_signal,
    ]),
    ("time and timers (reading only; setting the clock is absent)", &[
        libc::SYS_nanosleep, libc::SYS_clock_nanosleep, libc::SYS_clock_gettime, libc::SYS_clock_getres,
        libc::SYS_gettimeofday, libc::SYS_time, libc::SYS_timer_create, libc::SYS_timer_settime,
        libc::SYS_timer_gettime, libc::SYS_timer_getoverrun, libc::SYS_timer_delete, libc::SYS_timerfd_create,
        libc::SYS_timerfd_settime, libc::SYS_timerfd_gettime, libc::SYS_getitimer, libc::SYS_setitimer,
    ]),
    ("waiting for events", &[
        libc::SYS_poll, libc::SYS_ppoll, libc::SYS_select, libc::SYS_pselect6, libc::SYS_epoll_create,
        libc::SYS_epoll_create1, libc::SYS_epoll_ctl, libc::SYS_epoll_wait, libc::SYS_epoll_pwait,
        libc::SYS_epoll_pwait2, libc::SYS_eventfd, libc::SYS_eventfd2, libc::SYS_restart_syscall,
    ]),
    ("sockets in the session's own network namespace (socket itself is filtered below)", &[
        libc::SYS_socketpair, libc::SYS_bind, libc::SYS_listen, libc::SYS_accept, libc::SYS_accept4,
        libc::SYS_connect, libc::SYS_getsockname, libc::SYS_getpeername, libc::SYS_sendto, libc::SYS_recvfrom,
        libc::SYS_sendmsg, libc::SYS_recvmsg, libc::SYS_sendmmsg, libc::SYS_recvmmsg, libc::SYS_shutdown,
        libc::SYS_setsockopt, libc::SYS_getsockopt,
    ]),
    ("System V and POSIX IPC (private to the session's IPC namespace)", &[
        libc::SYS_shmget, libc::SYS_shmat, libc::SYS_shmdt, libc::SYS_shmctl, libc::SYS_semget, libc::SYS_semop,
        libc::SYS_semtimedop, libc::SYS_semctl, libc::SYS_msgget, libc::SYS_msgsnd, libc::SYS_msgrcv,
        libc::SYS_msgctl, libc::SYS_mq_open, libc::SYS_mq_unlink, libc::SYS_mq_timedsend,
        libc::SYS_mq_timedreceive, libc::SYS_mq_notify, libc::SYS_mq_getsetattr,
    ]),
    ("randomness and self-restriction (can only narrow what is allowed)", &[
        libc::SYS_getrandom, libc::SYS_seccomp, libc::SYS_landlock_create_ruleset, libc::SYS_landlock_add_rule,
        libc::SYS_landlock_restrict_self,
    ]),
];

/// Terminal ioctls that push bytes into a terminal's input queue or control
/// the console. Blocked so that a session can never type into a terminal.
pub const BLOCKED_IOCTLS: &[(u64, &str)] = &[(libc::TIOCSTI as _, "TIOCSTI"), (libc::TIOCLINUX as _, "TIOCLINUX")];

/// Socket families a command may create: local sockets, IP inside its own
/// network namespace, and netlink, which glibc's getaddrinfo uses.
const SOCKET_FAMILIES: &[i32] = &[libc::AF_UNIX, libc::AF_INET, libc::AF_INET6, libc::AF_NETLINK];

/// personality(2) arguments that are allowed: PER_LINUX and the query value.
const PERSONALITIES: &[u32] = &[0, 0xffff_ffff];

/// Builds the command's policy: every call in [`ALLOWED`], plus the calls
/// whose arguments are checked.
fn policy() -> Vec<(u32, Action)> {
    let mut policy: Vec<(u32, Action)> = Vec::new();
    for (_, calls) in ALLOWED {
        policy.extend(calls.iter().map(|call| (*call as u32, Action::Allow)));
    }

    // clone: only without namespace flags. The kernel reads the low 32 bits of
    // the flags for clone. clone3 passes its flags in memory, where seccomp
    // cannot look, so it fails with ENOSYS and the C library falls back to clone.
    policy.push((libc::SYS_clone as u32, Action::AllowIfClear { arg: 0, mask: NAMESPACE_FLAGS }));
    policy.push((libc::SYS_clone3 as u32, Action::Errno(libc::ENOSYS as u32)));

    // ioctl: anything but the terminal injection requests. The kernel reads the
    // request as a 32-bit value, so only the low 32 bits are compared.
    let blocked = BLOCKED_IOCTLS.iter().map(|(request, _)| *request as u32).collect();
    policy.push((libc::SYS_ioctl as u32, Action::AllowUnlessOneOf { arg: 1, values: blocked }));

    let families = SOCKET_FAMILIES.iter().map(|family| *family as u32).collect();
    policy.push((libc::SYS_socket as u32, Action::AllowIfOneOf { arg: 0, values: families }));
    policy.push((libc::SYS_personality as u32, Action::AllowIfOneOf { arg: 0, values: PERSONALITIES.to_vec() }));
    policy
}

/// Returns the command's filter for this machine's architecture, compiled
/// once per process. Init's starter compiles it before it clones init, so
/// init and the command's child, which are copies of the starter, find it
/// compiled.
pub fn command_filter() -> Result<&'static Filter, SeccompError> {
    static COMPILED: std::sync::OnceLock<Filter> = std::sync::OnceLock::new();
    match std::env::consts::ARCH {
        "x86_64" => Ok(COMPILED.get_or_init(|| Filter(bpf::compile(AUDIT_ARCH_X86_64, &policy(), libc::EPERM as u32)))),
        other => Err(SeccompError::UnsupportedArch(other)),
    }
}

/// Installs a filter on the calling thread. Needs no_new_privs.
pub fn install(filter: &Filter) -> Result<(), SeccompError> {
    let program = libc::sock_fprog { len: filter.0.len() as u16, filter: filter.0.as_ptr() as *mut libc::sock_filter };
    // SAFETY: the kernel copies the program during the call; `program` and the
    // instructions it points to outlive it.
    let result = unsafe { libc::prctl(libc::PR_SET_SECCOMP, libc::SECCOMP_MODE_FILTER, &program as *const libc::sock_fprog) };
    if result != 0 {
        return Err(SeccompError::Install(std::io::Error::last_os_error()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::bpf::{run, RET_ALLOW, RET_ERRNO, RET_KILL_PROCESS, X32_SYSCALL_BIT};
    use super::*;

    const EPERM: u32 = RET_ERRNO | libc::EPERM as u32;
    const ENOSYS: u32 = RET_ERRNO | libc::ENOSYS as u32;

    fn decide(nr: i64, args: [u64; 6]) -> u32 {
        let filter = command_filter().unwrap();
        run(&filter.0, nr as u32, AUDIT_ARCH_X86_64, args)
    }

    #[test]
    fn filter_fits_kernel_limit() {
        let filter = command_filter().unwrap();
        assert!(filter.0.len() < 4096, "{} instructions", filter.0.len());
    }

    #[test]
    fn policy_has_no_duplicate_calls() {
        let mut numbers: Vec<u32> = policy().into_iter().map(|(nr, _)| nr).collect();
        let count = numbers.len();
        numbers.sort_unstable();
        numbers.dedup();
        assert_eq!(numbers.len(), count);
    }

    #[test]
    fn every_number_matches_the_policy() {
        let filter = command_filter().unwrap();
        let policy = policy();
        for nr in 0..1024u32 {
            let expected = match policy.iter().find(|(n, _)| *n == nr).map(|(_, a)| a) {
                None => EPERM,
                Some(Action::Allow) => RET_ALLOW,
                Some(Action::Errno(errno)) => RET_ERRNO | errno,
                // Zero arguments pass every argument check of this policy but
                // socket's, whose domain 0 (AF_UNSPEC) is not allowed.
                Some(Action::AllowIfOneOf { values, .. }) => if values.contains(&0) { RET_ALLOW } else { EPERM },
                Some(_) => RET_ALLOW,
            };
            assert_eq!(run(&filter.0, nr, AUDIT_ARCH_X86_64, [0; 6]), expected, "system call {nr}");
        }
    }

    #[test]
    fn foreign_architecture_is_killed() {
        let filter = command_filter().unwrap();
        const AUDIT_ARCH_I386: u32 = 0x4000_0003;
        assert_eq!(run(&filter.0, 20, AUDIT_ARCH_I386, [0; 6]), RET_KILL_PROCESS);
        assert_eq!(run(&filter.0, libc::SYS_read as u32, 0, [0; 6]), RET_KILL_PROCESS);
    }

    #[test]
    fn x32_numbers_are_denied() {
        let filter = command_filter().unwrap();
        for nr in [libc::SYS_read, libc::SYS_write, libc::SYS_execve] {
            assert_eq!(run(&filter.0, nr as u32 | X32_SYSCALL_BIT, AUDIT_ARCH_X86_64, [0; 6]), EPERM);
        }
    }

    #[test]
    fn clone_rejects_namespace_flags() {
        let thread_flags = (libc::CLONE_VM | libc::CLONE_FS | libc::CLONE_FILES | libc::CLONE_SIGHAND | libc::CLONE_THREAD) as u64;
        assert_eq!(decide(libc::SYS_clone, [thread_flags, 0, 0, 0, 0, 0]), RET_ALLOW);
        assert_eq!(decide(libc::SYS_clone, [libc::SIGCHLD as u64, 0, 0, 0, 0, 0]), RET_ALLOW);
        for flag in [libc::CLONE_NEWUSER, libc::CLONE_NEWNET, libc::CLONE_NEWNS, libc::CLONE_NEWPID, libc::CLONE_NEWCGROUP] {
            assert_eq!(decide(libc::SYS_clone, [flag as u64 | libc::SIGCHLD as u64, 0, 0, 0, 0, 0]), EPERM, "flag {flag:#x}");
        }
        assert_eq!(decide(libc::SYS_clone3, [0; 6]), ENOSYS);
    }

    #[test]
    fn terminal_injection_ioctls_are_denied() {
        assert_eq!(decide(libc::SYS_ioctl, [0, libc::TIOCSTI, 0, 0, 0, 0]), EPERM);
        assert_eq!(decide(libc::SYS_ioctl, [0, libc::TIOCLINUX, 0, 0, 0, 0]), EPERM);
        // High bits do not hide the request: the kernel ignores them too.
        assert_eq!(decide(libc::SYS_ioctl, [0, libc::TIOCSTI | (1 << 32), 0, 0, 0, 0]), EPERM);
        assert_eq!(decide(libc::SYS_ioctl, [0, libc::TCGETS, 0, 0, 0, 0]), RET_ALLOW);
    }

    #[test]
    fn socket_families_are_limited() {
        for family in [libc::AF_UNIX, libc::AF_INET, libc::AF_INET6, libc::AF_NETLINK] {
            assert_eq!(decide(libc::SYS_socket, [family as u64, 0, 0, 0, 0, 0]), RET_ALLOW, "family {family}");
        }
        for family in [libc::AF_PACKET, libc::AF_ALG, libc::AF_VSOCK, libc::AF_KEY, libc::AF_BLUETOOTH] {
            assert_eq!(decide(libc::SYS_socket, [family as u64, 0, 0, 0, 0, 0]), EPERM, "family {family}");
        }
    }

    #[test]
    fn argument_rules_hold_for_many_values() {
        // A fixed xorshift sequence: the same values on every run.
        let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        for _ in 0..20_000 {
            let value = next();
            let low = value as u32;
            let ioctl = decide(libc::SYS_ioctl, [0, value, 0, 0, 0, 0]);
            let blocked = BLOCKED_IOCTLS.iter().any(|(request, _)| *request as u32 == low);
            assert_eq!(ioctl, if blocked { EPERM } else { RET_ALLOW }, "ioctl request {value:#x}");
            let clone = decide(libc::SYS_clone, [value, 0, 0, 0, 0, 0]);
            assert_eq!(clone, if low & NAMESPACE_FLAGS == 0 { RET_ALLOW } else { EPERM }, "clone flags {value:#x}");
            let socket = decide(libc::SYS_socket, [value, 0, 0, 0, 0, 0]);
            let family_allowed = SOCKET_FAMILIES.iter().any(|family| *family as u32 == low);
            assert_eq!(socket, if family_allowed { RET_ALLOW } else { EPERM }, "socket family {value:#x}");
        }
    }

    #[test]
    fn personality_allows_only_default_and_query() {
        assert_eq!(decide(libc::SYS_personality, [0, 0, 0, 0, 0, 0]), RET_ALLOW);
        assert_eq!(decide(libc::SYS_personality, [0xffff_ffff, 0, 0, 0, 0, 0]), RET_ALLOW);
        assert_eq!(decide(libc::SYS_personality, [0x0040_0000, 0, 0, 0, 0, 0]), EPERM);
    }

    #[test]
    fn escape_calls_are_not_allowed() {
        let forbidden = [
            libc::SYS_unshare, libc::SYS_setns, libc::SYS_mount, libc::SYS_umount2, libc::SYS_pivot_root,
            libc::SYS_chroot, libc::SYS_ptrace, libc::SYS_bpf, libc::SYS_perf_event_open, libc::SYS_keyctl,
            libc::SYS_add_key, libc::SYS_request_key, libc::SYS_init_module, libc::SYS_finit_module,
            libc::SYS_delete_module, libc::SYS_io_uring_setup, libc::SYS_io_uring_enter, libc::SYS_io_uring_register,
            libc::SYS_userfaultfd, libc::SYS_kexec_load, libc::SYS_reboot, libc::SYS_open_by_handle_at,
            libc::SYS_process_vm_readv, libc::SYS_process_vm_writev, libc::SYS_mknod, libc::SYS_mknodat,
            libc::SYS_iopl, libc::SYS_ioperm, libc::SYS_modify_ldt, libc::SYS_fsopen, libc::SYS_fsmount,
            libc::SYS_move_mount, libc::SYS_open_tree, libc::SYS_settimeofday, libc::SYS_clock_settime,
            libc::SYS_sethostname, libc::SYS_swapon, libc::SYS_syslog, libc::SYS_kcmp, libc::SYS_pidfd_getfd,
        ];
        for call in forbidden {
            assert_eq!(decide(call, [0; 6]), EPERM, "system call {call} must not be allowed");
        }
    }

    #[test]
    fn namespace_mask_covers_namespaces_only() {
        assert_ne!(NAMESPACE_FLAGS & libc::CLONE_NEWUSER as u32, 0);
        assert_ne!(NAMESPACE_FLAGS & libc::CLONE_NEWNET as u32, 0);
        assert_eq!(NAMESPACE_FLAGS & libc::CLONE_THREAD as u32, 0);
        assert_eq!(NAMESPACE_FLAGS & libc::CLONE_VM as u32, 0);
    }
}
