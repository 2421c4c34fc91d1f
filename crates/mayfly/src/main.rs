//! The `mayfly` command.

mod audit;
mod bench;
mod cli;
mod doctor;
mod reap;
mod remote;
mod run;
mod serve;
mod state;

fn main() {
    // The sandbox init is this same binary, started by the launcher with a
    // hidden argument. It must run before anything else touches the process.
    if std::env::args_os().nth(1).is_some_and(|a| a == mayfly_sandbox::INIT_ARGUMENT) {
        mayfly_sandbox::init::main();
    }

    // `mayfly run` forks the starter of its sandbox's init now, so that the
    // starter and the sandbox's namespaces get ready while this process
    // parses and checks below. A run that never launches leaves it waiting,
    // and it exits with this process. A run on a server (`--server` or
    // MAYFLY_URL) launches nothing here.
    let mut args = std::env::args_os().skip(1);
    let runs_here = args.next().is_some_and(|a| a == "run")
        && std::env::var_os("MAYFLY_URL").is_none()
        && !args.take_while(|a| a != "--").any(|a| a == "--server" || a.to_string_lossy().starts_with("--server="));
    if runs_here {
        // SAFETY: no thread has started, and this process has read nothing
        // but its command line and, above, a variable it found unset.
        unsafe { mayfly_sandbox::launch::prestart_forked() };
    }

    let cli = cli::Cli::parse_command_line();
    // Commands that only print end quietly when their reader goes away, as
    // other command-line tools do. `run` and `serve` keep ignoring SIGPIPE:
    // they handle a closed output themselves.
    if matches!(cli.command, cli::Command::Ls(_) | cli::Command::Kill(_) | cli::Command::Token(_) | cli::Command::Audit(_) | cli::Command::Doctor(_)) {
        // SAFETY: restores the default action of one signal before any thread starts.
        unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
    }
    let filter = tracing_subscriber::EnvFilter::try_from_env("MAYFLY_LOG").unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    let colour = std::io::IsTerminal::is_terminal(&std::io::stderr());
    tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).with_ansi(colour).with_target(false).init();

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
