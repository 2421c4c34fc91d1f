//! The code of the `mayfly` command, in two programs. `mayfly` runs a
//! `mayfly run` on this host itself and execs `mayfly-full` for every other
//! command line. `mayfly-full` runs every command. The first links only
//! what a local run needs, so the dynamic loader relocates a tenth of the
//! other's data and a cold start begins sooner.

pub mod allocator;
pub mod audit;
pub mod bench;
pub mod cli;
pub mod doctor;
pub mod reap;
pub mod remote;
pub mod run;
pub mod serve;
pub mod state;

use std::os::unix::process::CommandExt;

use mayfly_core::ExitCode;

/// The file name of the program with every command, installed beside `mayfly`.
pub const FULL_PROGRAM: &str = "mayfly-full";

/// The file name of the program that users start.
pub const FRONT_PROGRAM: &str = "mayfly";

/// Returns whether the command line is a `mayfly run` on this host, not
/// on a server (`--server` or MAYFLY_URL).
fn runs_here() -> bool {
    let mut args = std::env::args_os().skip(1);
    args.next().is_some_and(|a| a == "run")
        && std::env::var_os("MAYFLY_URL").is_none()
        && !args.take_while(|a| a != "--").any(|a| a == "--server" || a.to_string_lossy().starts_with("--server="))
}

/// Runs the sandbox's init when this process was started as one, with the
/// hidden argument. It must come before anything else touches the process.
pub fn run_init_if_requested() {
    if std::env::args_os().nth(1).is_some_and(|a| a == mayfly_sandbox::INIT_ARGUMENT) {
        mayfly_sandbox::init::main();
    }
}

/// Forks the starter of the sandbox's init for a `mayfly run` on this
/// host, so that the starter and the sandbox's namespaces get ready while
/// this process parses and checks. A run that never launches leaves them
/// waiting, and they exit with this process. Returns whether the command
/// line is such a run.
///
/// # Safety
/// Call first thing in `main`: no thread may have started, and the process
/// may have read nothing but its command line.
pub unsafe fn prestart_for_run() -> bool {
    let runs_here = runs_here();
    if runs_here {
        mayfly_sandbox::launch::prestart_forked();
    }
    runs_here
}

/// Logs to standard error, at the level that MAYFLY_LOG sets (warn by default).
pub fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("MAYFLY_LOG").unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    let colour = std::io::IsTerminal::is_terminal(&std::io::stderr());
    tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).with_ansi(colour).with_target(false).init();
}

/// Runs the command line with every command, and exits with its status.
pub fn main_full() -> ! {
    run_init_if_requested();
    // SAFETY: first thing in `main`, as `prestart_for_run` requires.
    unsafe { prestart_for_run() };

    let cli = cli::Cli::parse_command_line();
    // Commands that only print end quietly when their reader goes away, as
    // other command-line tools do. `run` and `serve` keep ignoring SIGPIPE:
    // they handle a closed output themselves.
    if matches!(cli.command, cli::Command::Ls(_) | cli::Command::Kill(_) | cli::Command::Token(_) | cli::Command::Audit(_) | cli::Command::Doctor(_)) {
        // SAFETY: restores the default action of one signal before any thread starts.
        unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
    }
    init_logging();

    let code = match cli.command {
        cli::Command::Run(args) => run::main(*args),
        cli::Command::Doctor(args) => doctor::main(args),
        cli::Command::Reap(args) => reap::main(args),
        cli::Command::Bench(args) => bench::main(args),
        cli::Command::Audit(command) => audit::main(command),
        cli::Command::Serve(args) => serve::main(*args),
        cli::Command::Shell(args) => remote::shell::shell(args),
        cli::Command::Attach(args) => remote::shell::attach(args),
        cli::Command::Ls(args) => remote::ls(args),
        cli::Command::Kill(args) => remote::kill(args),
        cli::Command::Token(command) => remote::token(command),
    };
    std::process::exit(code);
}

/// Replaces this process with `mayfly-full` beside it, with the same
/// arguments and environment, and `mayfly` as its name in messages. Runs
/// it only when it is a regular file that no one but its owner, who owns
/// this program too, may change.
pub fn exec_full() -> ! {
    let executable = match std::env::current_exe() {
        Ok(executable) => executable,
        Err(error) => {
            eprintln!("mayfly: the path of this program is unknown, so {FULL_PROGRAM} cannot be found: {error}");
            std::process::exit(ExitCode::SETUP_FAILED);
        }
    };
    let path = executable.with_file_name(FULL_PROGRAM);
    if let Some(problem) = unfit_full_program(&path, &executable) {
        eprintln!("mayfly: {} {problem}", path.display());
        std::process::exit(ExitCode::SETUP_FAILED);
    }
    let error = std::process::Command::new(&path).arg0(FRONT_PROGRAM).args(std::env::args_os().skip(1)).exec();
    eprintln!("mayfly: cannot run {}: {error}; install {FULL_PROGRAM} beside mayfly, from the same build", path.display());
    std::process::exit(ExitCode::SETUP_FAILED);
}

/// Returns why the file at `path` may not run as `mayfly-full` for the
/// program at `executable`, or `None` when it may.
fn unfit_full_program(path: &std::path::Path, executable: &std::path::Path) -> Option<String> {
    use std::os::unix::fs::MetadataExt;
    let full = match std::fs::metadata(path) {
        Ok(metadata) => metadata,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
            return Some(format!("is missing: every command but a local `mayfly run` needs it; install {FULL_PROGRAM} beside mayfly, from the same build"))
        }
        Err(error) => return Some(format!("cannot be checked: {error}; install {FULL_PROGRAM} beside mayfly, from the same build")),
    };
    let owner = match std::fs::metadata(executable) {
        Ok(metadata) => metadata.uid(),
        Err(error) => return Some(format!("cannot be compared with {}: {error}", executable.display())),
    };
    if !full.is_file() {
        return Some(format!("is not a regular file; install {FULL_PROGRAM} beside mayfly, from the same build"));
    }
    if full.mode() & 0o100 == 0 {
        return Some(format!("is not executable (mode {:o}); run chmod 0755 on it", full.mode() & 0o7777));
    }
    if full.mode() & 0o022 != 0 {
        return Some(format!("is writable by its group or others (mode {:o}); run chmod go-w on it", full.mode() & 0o7777));
    }
    if full.uid() != owner {
        return Some(format!("is owned by uid {}, not by uid {owner}, the owner of mayfly; run chown {owner} on it", full.uid()));
    }
    None
}
