//! A probe that runs inside a sandbox and reports what it can see and do.
//!
//! Each argument names one check, such as `read:/etc/shadow` or `unshare:user`.
//! The probe prints one JSON line per check as soon as the check finishes,
//! so a check that kills the process still leaves the earlier results:
//! `{"check":"unshare:user","outcome":"blocked","errno":"EPERM"}`. An
//! outcome is `allowed`, `blocked` (with the errno) or `info` (with data).
//! Checks only observe or try a single operation; none retries or works
//! around a refusal.

use std::ffi::CString;
use std::io::Write;

fn errno_name(errno: i32) -> String {
    let name = match errno {
        libc::EPERM => "EPERM",
        libc::ENOENT => "ENOENT",
        libc::ESRCH => "ESRCH",
        libc::EACCES => "EACCES",
        libc::EAGAIN => "EAGAIN",
        libc::EROFS => "EROFS",
        libc::ENOSPC => "ENOSPC",
        libc::EMFILE => "EMFILE",
        libc::ENOSYS => "ENOSYS",
        libc::EINVAL => "EINVAL",
        libc::ECONNREFUSED => "ECONNREFUSED",
        libc::ENETUNREACH => "ENETUNREACH",
        libc::EAFNOSUPPORT => "EAFNOSUPPORT",
        libc::ENOMEM => "ENOMEM",
        libc::EBADF => "EBADF",
        libc::ENXIO => "ENXIO",
        libc::ENOTTY => "ENOTTY",
        libc::EIO => "EIO",
        libc::EEXIST => "EEXIST",
        _ => return format!("errno {errno}"),
    };
    name.to_string()
}

fn last_errno() -> i32 {
    std::io::Error::last_os_error().raw_os_error().unwrap_or(0)
}

fn emit(check: &str, value: serde_json::Value) {
    let mut line = serde_json::json!({ "check": check });
    if let (Some(line), Some(fields)) = (line.as_object_mut(), value.as_object()) {
        for (key, value) in fields {
            line.insert(key.clone(), value.clone());
        }
    }
    let mut stdout = std::io::stdout().lock();
    let _ = writeln!(stdout, "{line}");
    let _ = stdout.flush();
}

/// Turns a raw syscall-style result into an outcome.
fn outcome(result: i64) -> serde_json::Value {
    if result < 0 {
        serde_json::json!({ "outcome": "blocked", "errno": errno_name(last_errno()) })
    } else {
        serde_json::json!({ "outcome": "allowed" })
    }
}

fn c_path(path: &str) -> CString {
    CString::new(path).expect("paths given to the probe contain no NUL")
}

fn read_file(path: &str) -> serde_json::Value {
    match std::fs::read(path) {
        Ok(bytes) => serde_json::json!({ "outcome": "allowed", "bytes": bytes.len() }),
        Err(e) => serde_json::json!({ "outcome": "blocked", "errno": errno_name(e.raw_os_error().unwrap_or(0)) }),
    }
}

fn write_file(path: &str) -> serde_json::Value {
    let path = c_path(path);
    // SAFETY: open(2) with a valid NUL-terminated path.
    let fd = unsafe { libc::open(path.as_ptr(), libc::O_WRONLY | libc::O_CREAT | libc::O_CLOEXEC, 0o644) };
    if fd < 0 {
        return outcome(-1);
    }
    // SAFETY: writes one byte from a static buffer to the descriptor opened above.
    let written = unsafe { libc::write(fd, b"x".as_ptr().cast(), 1) };
    let result = if written < 0 { outcome(-1) } else { outcome(0) };
    // SAFETY: closes the descriptor opened above.
    unsafe { libc::close(fd) };
    result
}

/// Forks a child that runs `action` and reports how the child ended.
fn in_child(action: fn()) -> serde_json::Value {
    // SAFETY: the probe is single-threaded, so the child may run ordinary code.
    let pid = unsafe { libc::fork() };
    if pid == 0 {
        action();
        // SAFETY: ends the child without running the parent's exit handlers.
        unsafe { libc::_exit(0) };
    }
    let mut status = 0;
    // SAFETY: waits for the child forked above.
    unsafe { libc::waitpid(pid, &mut status, 0) };
    if libc::WIFSIGNALED(status) {
        let signal = libc::WTERMSIG(status);
        let name = if signal == libc::SIGSYS { "SIGSYS".to_string() } else { format!("signal {signal}") };
        serde_json::json!({ "outcome": "blocked", "killed_by": name })
    } else {
        serde_json::json!({ "outcome": "allowed", "exit_code": libc::WEXITSTATUS(status) })
    }
}

/// Makes the i386 getpid system call through `int 0x80`.
fn int80() {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: int 0x80 with eax = 20 (getpid in the i386 table) touches no memory.
    unsafe {
        std::arch::asm!("int 0x80", inout("eax") 20 => _, options(nostack));
    }
}

fn tiocsti() -> serde_json::Value {
    let ptmx = c_path("/dev/ptmx");
    // SAFETY: opens the session's own pseudo-terminal multiplexer.
    let master = unsafe { libc::open(ptmx.as_ptr(), libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC) };
    if master < 0 {
        return serde_json::json!({ "outcome": "blocked", "errno": errno_name(last_errno()), "detail": "could not open /dev/ptmx" });
    }
    let byte: libc::c_char = b'x' as libc::c_char;
    // SAFETY: TIOCSTI reads one byte from `byte`, which outlives the call.
    let result = unsafe { libc::ioctl(master, libc::TIOCSTI, &byte) };
    let value = outcome(result as i64);
    // SAFETY: closes the descriptor opened above.
    unsafe { libc::close(master) };
    value
}

fn connect(target: &str) -> serde_json::Value {
    let Ok(address) = target.parse::<std::net::SocketAddr>() else {
        return serde_json::json!({ "outcome": "info", "error": format!("invalid address {target}") });
    };
    match std::net::TcpStream::connect_timeout(&address, std::time::Duration::from_secs(2)) {
        Ok(_) => serde_json::json!({ "outcome": "allowed" }),
        Err(e) => serde_json::json!({ "outcome": "blocked", "errno": errno_name(e.raw_os_error().unwrap_or(0)) }),
    }
}

fn fork_bomb() -> serde_json::Value {
    let mut children = Vec::new();
    let mut errno = 0;
    for _ in 0..100_000 {
        // SAFETY: the child only pauses until it is killed.
        let pid = unsafe { libc::fork() };
        if pid == 0 {
            // SAFETY: pause and _exit are async-signal-safe.
            unsafe {
                libc::pause();
                libc::_exit(0);
            }
        }
        if pid < 0 {
            errno = last_errno();
            break;
        }
        children.push(pid);
    }
    let count = children.len();
    for pid in children {
        // SAFETY: signals and reaps the probe's own children.
        unsafe {
            libc::kill(pid, libc::SIGKILL);
            libc::waitpid(pid, std::ptr::null_mut(), 0);
        }
    }
    let outcome = if errno == 0 { "allowed" } else { "blocked" };
    serde_json::json!({ "outcome": outcome, "forks": count, "errno": errno_name(errno) })
}

fn fd_bomb() -> serde_json::Value {
    let null = c_path("/dev/null");
    let mut opened = 0;
    loop {
        // SAFETY: open(2) with a valid path; the descriptors close at exit.
        let fd = unsafe { libc::open(null.as_ptr(), libc::O_RDONLY) };
        if fd < 0 {
            let errno = last_errno();
            // SAFETY: closes the descriptors this loop opened, numbered from 3 up.
            unsafe { libc::syscall(libc::SYS_close_range, 3u32, u32::MAX, 0u32) };
            return serde_json::json!({ "outcome": "blocked", "opened": opened, "errno": errno_name(errno) });
        }
        opened += 1;
        if opened > 10_000_000 {
            return serde_json::json!({ "outcome": "allowed", "opened": opened });
        }
    }
}

fn fill(path: &str) -> serde_json::Value {
    let file_path = format!("{path}/probe-fill");
    let mut file = match std::fs::File::create(&file_path) {
        Ok(file) => file,
        Err(e) => return serde_json::json!({ "outcome": "info", "error": e.to_string() }),
    };
    let chunk = vec![0x5au8; 1 << 20];
    let mut written: u64 = 0;
    let result = loop {
        match file.write(&chunk) {
            Ok(0) => break serde_json::json!({ "outcome": "allowed", "written": written }),
            Ok(n) => written += n as u64,
            Err(e) => break serde_json::json!({ "outcome": "blocked", "written": written, "errno": errno_name(e.raw_os_error().unwrap_or(0)) }),
        }
        if written > 64 << 30 {
            break serde_json::json!({ "outcome": "allowed", "written": written });
        }
    };
    drop(file);
    let _ = std::fs::remove_file(&file_path);
    result
}

fn alloc(mebibytes: usize) -> serde_json::Value {
    let mut blocks: Vec<Vec<u8>> = Vec::new();
    for _ in 0..mebibytes {
        // Touching every page makes the memory resident, so the cgroup counts it.
        blocks.push(vec![0xa5u8; 1 << 20]);
    }
    serde_json::json!({ "outcome": "allowed", "mebibytes": blocks.len() })
}

fn visible_pids() -> serde_json::Value {
    let pids: Vec<i64> = std::fs::read_dir("/proc")
        .map(|entries| entries.filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok()).collect())
        .unwrap_or_default();
    let init = std::fs::read_to_string("/proc/1/cmdline").unwrap_or_default().replace('\0', " ");
    serde_json::json!({ "outcome": "info", "pids": pids, "pid1": init.trim() })
}

fn identity() -> serde_json::Value {
    // SAFETY: these getters have no failure modes and touch no memory.
    let (uid, euid, gid) = unsafe { (libc::getuid(), libc::geteuid(), libc::getgid()) };
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let field = |name: &str| status.lines().find_map(|l| l.strip_prefix(name)).map(|v| v.trim().to_string()).unwrap_or_default();
    serde_json::json!({
        "outcome": "info", "uid": uid, "euid": euid, "gid": gid,
        "cap_eff": field("CapEff:"), "cap_bnd": field("CapBnd:"), "no_new_privs": field("NoNewPrivs:"), "seccomp": field("Seccomp:"),
        "uid_map": std::fs::read_to_string("/proc/self/uid_map").unwrap_or_default().trim(),
    })
}

fn run_check(check: &str) -> serde_json::Value {
    let (name, argument) = check.split_once(':').unwrap_or((check, ""));
    // SAFETY (for every raw call below): each passes only integers or null
    // pointers, or pointers to locals that outlive the call.
    unsafe {
        match name {
            "read" => read_file(argument),
            "write" => write_file(argument),
            "mkdir" => outcome(libc::mkdir(c_path(argument).as_ptr(), 0o755) as i64),
            "unshare" => {
                let flag = match argument {
                    "user" => libc::CLONE_NEWUSER,
                    "net" => libc::CLONE_NEWNET,
                    "mount" => libc::CLONE_NEWNS,
                    "pid" => libc::CLONE_NEWPID,
                    _ => return serde_json::json!({ "outcome": "info", "error": "unknown namespace" }),
                };
                outcome(libc::unshare(flag) as i64)
            }
            "clone-newuser" => {
                let pid = libc::syscall(libc::SYS_clone, (libc::CLONE_NEWUSER | libc::SIGCHLD) as libc::c_ulong, 0, 0, 0, 0);
                if pid == 0 {
                    libc::_exit(0);
                }
                if pid > 0 {
                    libc::waitpid(pid as i32, std::ptr::null_mut(), 0);
                }
                outcome(pid)
            }
            "clone3" => {
                let args = [0u64; 11];
                let pid = libc::syscall(libc::SYS_clone3, args.as_ptr(), std::mem::size_of_val(&args));
                if pid == 0 {
                    libc::_exit(0);
                }
                outcome(pid)
            }
            "setns" => outcome(libc::setns(0, 0) as i64),
            "mount" => {
                let tmpfs = c_path("tmpfs");
                outcome(libc::mount(tmpfs.as_ptr(), c_path("/tmp").as_ptr(), tmpfs.as_ptr(), 0, std::ptr::null()) as i64)
            }
            "chroot" => outcome(libc::chroot(c_path("/tmp").as_ptr()) as i64),
            "module" => outcome(libc::syscall(libc::SYS_finit_module, 0, c_path("").as_ptr(), 0)),
            "raw-socket" => outcome(libc::socket(libc::AF_INET, libc::SOCK_RAW, libc::IPPROTO_ICMP) as i64),
            "packet-socket" => outcome(libc::socket(libc::AF_PACKET, libc::SOCK_RAW, 0) as i64),
            "connect" => connect(argument),
            "io-uring" => {
                let params = [0u8; 120];
                outcome(libc::syscall(libc::SYS_io_uring_setup, 1, params.as_ptr()))
            }
            "bpf" => outcome(libc::syscall(libc::SYS_bpf, 0, std::ptr::null::<u8>(), 0)),
            "perf" => outcome(libc::syscall(libc::SYS_perf_event_open, std::ptr::null::<u8>(), 0, -1, -1, 0)),
            "keyctl" => outcome(libc::syscall(libc::SYS_keyctl, 0, 0, 0, 0, 0)),
            "userfaultfd" => outcome(libc::syscall(libc::SYS_userfaultfd, 0)),
            "ptrace" => outcome(libc::ptrace(libc::PTRACE_TRACEME, 0, 0, 0) as i64),
            "sethostname" => outcome(libc::sethostname(c"x".as_ptr(), 1) as i64),
            "setuid0" => outcome(libc::setuid(0) as i64),
            "int80" => in_child(int80),
            "tiocsti" => tiocsti(),
            "kill" => outcome(libc::kill(argument.parse().unwrap_or(-999_999), 0) as i64),
            "pids" => visible_pids(),
            "identity" => identity(),
            "env" => serde_json::json!({ "outcome": "info", "env": std::env::vars().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>() }),
            "hostname" => serde_json::json!({ "outcome": "info", "hostname": std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default().trim() }),
            "fork-bomb" => fork_bomb(),
            "fd-bomb" => fd_bomb(),
            "fill" => fill(argument),
            "alloc" => alloc(argument.parse().unwrap_or(0)),
            "abort" => {
                libc::abort();
            }
            _ => serde_json::json!({ "outcome": "info", "error": format!("unknown check {name:?}") }),
        }
    }
}

fn main() {
    for check in std::env::args().skip(1) {
        let result = run_check(&check);
        emit(&check, result);
    }
}
