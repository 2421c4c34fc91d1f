//! Command-line arguments, as parsed by clap. Values here are raw; each
//! command validates them into richer types before use.

use std::path::PathBuf;

use clap::{Args, FromArgMatches, Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(name = "mayfly", version, about = "Remote, ephemeral, isolated sessions", max_term_width = 100)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

impl Cli {
    /// Parses the command line. A `mayfly run` that parses with `run`'s
    /// arguments alone skips building the other commands' parsers, which
    /// took clap about 0.2 ms on the development machine. Anything else,
    /// help and errors included, goes through the whole parser, so its
    /// messages name the full command.
    pub fn parse_command_line() -> Cli {
        match parse_run(std::env::args_os().skip(1)) {
            Some(run) => Cli { command: Command::Run(Box::new(run)) },
            None => Cli::parse(),
        }
    }
}

/// Parses `args`, the command line after the program name, when it starts
/// with `run` and `run`'s arguments parse.
pub fn parse_run(args: impl IntoIterator<Item = std::ffi::OsString>) -> Option<RunArgs> {
    let mut args = args.into_iter();
    if args.next()? != "run" {
        return None;
    }
    let parser = RunArgs::augment_args(clap::Command::new("run").no_binary_name(true));
    let matches = parser.try_get_matches_from(args).ok()?;
    RunArgs::from_arg_matches(&matches).ok()
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run a command in a fresh sandbox that is destroyed when it ends or at its deadline.
    Run(Box<RunArgs>),
    /// Report what this host supports and what each profile needs.
    Doctor(DoctorArgs),
    /// Destroy what crashed sessions left behind (cgroups, ledger records).
    Reap(StateArgs),
    /// Measure cold start against bubblewrap and runc, the control plane, shell or browser sessions, or warm pools.
    Bench(BenchArgs),
    /// Check or export the hash-chained audit log.
    #[command(subcommand)]
    Audit(AuditCommand),
    /// Run the control plane: the sessions API on embedded defaults (SQLite, loopback).
    Serve(Box<crate::serve::ServeArgs>),
    /// Start a shell session on a server and attach this terminal to it.
    Shell(crate::remote::shell::ShellArgs),
    /// Attach this terminal to a running shell session of yours.
    Attach(crate::remote::shell::AttachArgs),
    /// List sessions on a server.
    Ls(crate::remote::LsArgs),
    /// Destroy sessions on a server, in whatever state they are.
    Kill(crate::remote::KillArgs),
    /// Create, list and revoke API tokens.
    #[command(subcommand)]
    Token(crate::remote::TokenCommand),
}

#[derive(Debug, Subcommand)]
pub enum AuditCommand {
    /// Check the hash chain, the checkpoint signatures and the signed head; exits with 1 where the log is broken.
    Verify(VerifyArgs),
    /// Print audit records as JSON lines.
    Export(ExportArgs),
}

#[derive(Debug, Args)]
pub struct VerifyArgs {
    #[command(flatten)]
    pub state: StateArgs,
    /// Ask this server to verify its log instead of reading a local state directory.
    #[arg(long = "server", env = "MAYFLY_URL", value_name = "URL")]
    pub server: Option<String>,
    #[command(flatten)]
    pub auth: crate::remote::AuthArgs,
}

#[derive(Debug, Args)]
pub struct ExportArgs {
    /// Read this server's log instead of a local state directory.
    #[arg(long = "server", env = "MAYFLY_URL", value_name = "URL")]
    pub server: Option<String>,
    #[command(flatten)]
    pub auth: crate::remote::AuthArgs,
    /// State directory whose audit log to read.
    #[arg(long, env = "MAYFLY_STATE_DIR", default_value = "/var/lib/mayfly")]
    pub state_dir: PathBuf,
    /// Print only records with this sequence number or a later one.
    #[arg(long, default_value_t = 1)]
    pub since: u64,
}

#[derive(Debug, Args, Clone)]
pub struct StateArgs {
    /// State directory: the audit log, the crash ledger and the id-range locks.
    #[arg(long, env = "MAYFLY_STATE_DIR", default_value = "/var/lib/mayfly")]
    pub state_dir: PathBuf,
    /// Print machine-readable JSON: `run` adds its session report as one JSON line on standard error.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args, Clone)]
pub struct ProfileArgs {
    /// Directory of profile files (NAME.toml); they take precedence over the built-in profiles.
    #[arg(long, env = "MAYFLY_PROFILES_DIR")]
    pub profiles_dir: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct RunArgs {
    /// Profile to run under.
    #[arg(long, default_value = mayfly_core::profile::DEFAULT_PROFILE)]
    pub profile: String,
    #[command(flatten)]
    pub profiles: ProfileArgs,
    #[command(flatten)]
    pub state: StateArgs,
    /// Run on a Mayfly server instead of this host (see `mayfly serve`).
    #[command(flatten)]
    pub remote: crate::remote::RemoteArgs,
    /// Session lifetime, such as 30s, 15m or 1h30m; at most the profile's maximum.
    #[arg(long, allow_hyphen_values = true)]
    pub ttl: Option<String>,
    /// Memory limit including swap, such as 256MiB; may only lower the profile's.
    #[arg(long, allow_hyphen_values = true)]
    pub memory: Option<String>,
    /// CPU quota in cores, such as 0.5 or 2; may only lower the profile's.
    #[arg(long, allow_hyphen_values = true)]
    pub cpus: Option<String>,
    /// Maximum number of processes and threads; may only lower the profile's.
    #[arg(long)]
    pub pids: Option<u32>,
    /// Size of /tmp, such as 64MiB; may only lower the profile's.
    #[arg(long, allow_hyphen_values = true)]
    pub tmp: Option<String>,
    /// Size of /dev/shm; may only lower the profile's.
    #[arg(long, allow_hyphen_values = true)]
    pub shm: Option<String>,
    /// Size of /work, the working directory; may only lower the profile's.
    #[arg(long, allow_hyphen_values = true)]
    pub work: Option<String>,
    /// Maximum open files per process; may only lower the profile's.
    #[arg(long)]
    pub open_files: Option<u32>,
    /// Environment variable for the command, as KEY=VALUE; repeatable. The host's environment is never passed.
    #[arg(long = "env", value_name = "KEY=VALUE")]
    pub env: Vec<String>,
    /// File to copy into /work before the command starts, as SOURCE or SOURCE:NAME; repeatable.
    #[arg(long = "input", value_name = "SOURCE[:NAME]")]
    pub inputs: Vec<String>,
    /// Directory to export /work/artifacts into when the command ends.
    #[arg(long, value_name = "DIR")]
    pub artifacts: Option<PathBuf>,
    /// Write the session report as JSON to this file.
    #[arg(long, value_name = "FILE")]
    pub report: Option<PathBuf>,
    /// The command and its arguments, after `--`.
    #[arg(last = true, required = true, value_name = "CMD")]
    pub command: Vec<String>,
}

#[derive(Debug, Args)]
pub struct DoctorArgs {
    #[command(flatten)]
    pub profiles: ProfileArgs,
    /// Print machine-readable JSON instead of text.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct BenchArgs {
    /// Suite to run. `start`: cold start against bubblewrap and runc. `api`: the control plane beside `mayfly run`. `shell`: shell sessions (keystroke echo, memory, capacity). `browser`: browser sessions beside bare Chromium (first frame, input latency, frame rate, memory). `pool`: warm against cold starts of jobs, shells and browsers, and the memory of idle pool members.
    #[arg(long, default_value = "start", value_parser = ["start", "api", "shell", "browser", "pool"])]
    pub suite: String,
    /// Number of measured runs per runtime, from 1 to 10000, alternating between runtimes; For `shell`, keystrokes per terminal. For `browser`, starts per side, at most 100. For `pool`, starts per kind and side, at most 1000.
    #[arg(long, default_value_t = 50)]
    pub runs: u32,
    /// Directory for the crash ledger and id-range locks of the measured sessions.
    #[arg(long, env = "MAYFLY_STATE_DIR", default_value = "/var/lib/mayfly")]
    pub state_dir: PathBuf,
    /// Print machine-readable JSON instead of a table.
    #[arg(long)]
    pub json: bool,
    /// Also write the results as a Markdown section to this file, replacing its contents.
    #[arg(long, value_name = "FILE")]
    pub output: Option<PathBuf>,
    /// The `mayfly` program that the `start` suite measures, such as one built for musl. Default: the `mayfly` beside this program.
    #[arg(long, value_name = "FILE")]
    pub front: Option<PathBuf>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn words(line: &str) -> Vec<std::ffi::OsString> {
        line.split(' ').map(Into::into).collect()
    }

    #[test]
    fn run_alone_parses_as_the_whole_parser() {
        let line = "run --profile job --ttl 30s --memory 64MiB --env A=1 --env B=2 --input in.txt --json -- /bin/sh -c true";
        let alone = parse_run(words(line)).expect("run's arguments parse");
        let whole = Cli::try_parse_from(std::iter::once("mayfly".into()).chain(words(line))).unwrap();
        let Command::Run(whole) = whole.command else { panic!("not run") };
        assert_eq!(format!("{alone:?}"), format!("{whole:?}"));
    }

    #[test]
    fn other_command_lines_use_the_whole_parser() {
        assert!(parse_run(words("doctor --json")).is_none());
        assert!(parse_run(words("run --help")).is_none());
        assert!(parse_run(words("run --no-such-flag -- /bin/true")).is_none());
        assert!(parse_run(words("run")).is_none());
    }
}
