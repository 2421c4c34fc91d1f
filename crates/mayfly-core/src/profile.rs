//! Session profiles: TOML templates that fix a session's kind, lifetime,
//! limits, environment and required protections.
//!
//! Parsing is strict. An unknown key, a wrong type or a value outside its
//! range is an error that names the key, so a typo can never silently
//! weaken a profile.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::limits::{self, LimitError, Limits};
use crate::units::{ByteSize, Ttl, WholeNumber};

/// The profile used when `--profile` is not given.
pub const DEFAULT_PROFILE: &str = "default";

/// Built-in profiles, compiled into the binary: (name, TOML text).
pub const BUILT_IN: &[(&str, &str)] =
    &[
    (DEFAULT_PROFILE, include_str!("../profiles/default.toml")),
    ("shell", include_str!("../profiles/shell.toml")),
    ("browser", include_str!("../profiles/browser.toml")),
];

/// The shortest and longest maximum TTL a profile may set.
pub const TTL_RANGE: limits::Range<Ttl> = limits::Range { key: "ttl.max", min: Ttl::from_secs(1), max: Ttl::from_secs(7 * 86_400) };

#[derive(Debug, thiserror::Error)]
pub enum ProfileError {
    #[error("invalid profile name {name:?}: use 1 to 63 lowercase letters, digits and dashes, starting with a letter or digit")]
    InvalidName { name: String },
    #[error("profile {name:?} not found: the built-in profiles are {built_in}{directory}")]
    NotFound { name: String, built_in: String, directory: String },
    #[error("invalid profile {name:?}: {message}")]
    Syntax { name: String, message: String },
    #[error("the profiles directory {path} does not exist or is not a directory; check --profiles-dir or MAYFLY_PROFILES_DIR")]
    Directory { path: String },
    #[error("invalid profile {name:?}: {source}")]
    Limit { name: String, source: LimitError },
    #[error("invalid profile {name:?}: {key} {message}")]
    InvalidValue { name: String, key: String, message: String },
    #[error("the TTL {requested} is above the maximum of {max} that profile {name:?} allows; request at most {max}")]
    TtlAboveMax { name: String, requested: Ttl, max: Ttl },
    #[error("the TTL {requested} is too short: the minimum is 1s")]
    TtlTooShort { requested: Ttl },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    Job,
    Shell,
    Browser,
}

impl Kind {
    /// Returns the kind's name, as profiles, policies and the API spell it.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Job => "job",
            Kind::Shell => "shell",
            Kind::Browser => "browser",
        }
    }
}

/// Whether a profile needs Landlock. `required` rejects a session on a kernel
/// without it. `if-available` applies it where present and records in the
/// session report whether it was applied.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Landlock {
    Required,
    IfAvailable,
}

/// A read-only bind of a host path into the sandbox.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProfileMount {
    pub source: PathBuf,
    pub target: PathBuf,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawProfile {
    kind: Kind,
    #[serde(default)]
    description: String,
    ttl: RawTtl,
    limits: RawLimits,
    #[serde(default)]
    environment: BTreeMap<String, String>,
    #[serde(default)]
    sandbox: RawSandbox,
    #[serde(default)]
    network: crate::egress::RawNetwork,
    shell: Option<RawShell>,
    browser: Option<crate::browser::RawBrowser>,
    transfer: Option<crate::transfer::RawTransfer>,
    pool: Option<crate::pool::RawPool>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawShell {
    command: Option<Vec<String>>,
    idle_timeout: Option<Ttl>,
    #[serde(default)]
    observers: bool,
    warnings: Option<Vec<Ttl>>,
    #[serde(default)]
    recording: bool,
    recording_retention: Option<Ttl>,
}

/// How a shell session runs and is watched.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ShellSettings {
    /// The program and arguments started on the terminal.
    pub command: Vec<String>,
    /// End the session after this long without input from a client.
    pub idle_timeout: Option<Ttl>,
    /// Whether read-only observers may attach beside the one writer.
    pub observers: bool,
    /// How long before the deadline attached clients are warned.
    pub warnings: Vec<Ttl>,
    /// Record the terminal's output as an asciicast v2 file outside the sandbox.
    pub recording: bool,
    /// How long a recording is kept after its session ends.
    pub recording_retention: Ttl,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTtl {
    default: Ttl,
    max: Ttl,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLimits {
    memory: ByteSize,
    cpus: Cpus,
    pids: WholeNumber,
    tmp: ByteSize,
    shm: ByteSize,
    work: ByteSize,
    open_files: WholeNumber,
    inputs: ByteSize,
    artifacts: ByteSize,
}

/// A core count, written as an integer or a float in TOML.
#[derive(Debug)]
enum Cpus {
    Whole(u32),
    Fraction(f64),
}

impl<'de> Deserialize<'de> for Cpus {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl serde::de::Visitor<'_> for Visitor {
            type Value = Cpus;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a number of cores such as 1 or 0.5, without quotes")
            }
            fn visit_i64<E: serde::de::Error>(self, value: i64) -> Result<Cpus, E> {
                u32::try_from(value).map(Cpus::Whole).map_err(|_| E::custom(format!("{value} cores is out of range: allowed is 0.01 to 1024")))
            }
            fn visit_u64<E: serde::de::Error>(self, value: u64) -> Result<Cpus, E> {
                u32::try_from(value).map(Cpus::Whole).map_err(|_| E::custom(format!("{value} cores is out of range: allowed is 0.01 to 1024")))
            }
            fn visit_f64<E: serde::de::Error>(self, value: f64) -> Result<Cpus, E> {
                Ok(Cpus::Fraction(value))
            }
        }
        deserializer.deserialize_any(Visitor)
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSandbox {
    #[serde(default = "default_hostname")]
    hostname: String,
    #[serde(default = "default_timezone")]
    timezone: String,
    #[serde(default = "default_landlock")]
    landlock: Landlock,
    #[serde(default)]
    mounts: Vec<ProfileMount>,
}

impl Default for RawSandbox {
    fn default() -> Self {
        RawSandbox { hostname: default_hostname(), timezone: default_timezone(), landlock: default_landlock(), mounts: Vec::new() }
    }
}

fn default_hostname() -> String {
    "mayfly".into()
}

fn default_timezone() -> String {
    "UTC".into()
}

fn default_landlock() -> Landlock {
    Landlock::Required
}

/// A validated profile.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Profile {
    pub name: String,
    pub kind: Kind,
    pub description: String,
    pub default_ttl: Ttl,
    pub max_ttl: Ttl,
    pub limits: Limits,
    pub environment: BTreeMap<String, String>,
    pub hostname: String,
    pub timezone: String,
    pub landlock: Landlock,
    pub mounts: Vec<ProfileMount>,
    /// Set for shell profiles, `None` for jobs.
    pub shell: Option<ShellSettings>,
    /// Whether and where the session may connect beyond its own loopback.
    pub network: crate::egress::NetworkSettings,
    /// Set for browser profiles, `None` for the other kinds.
    pub browser: Option<crate::browser::BrowserSettings>,
    /// The profile's warm pool, `None` when it has no `[pool]` section.
    pub pool: Option<crate::pool::PoolSettings>,
}

/// Checks a profile name: lowercase letters, digits and dashes, 1 to 63 long.
pub fn validate_name(name: &str) -> Result<(), ProfileError> {
    let valid = !name.is_empty()
        && name.len() <= 63
        && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !name.starts_with('-');
    if valid {
        Ok(())
    } else {
        Err(ProfileError::InvalidName { name: name.to_string() })
    }
}

/// Checks an environment variable name: a letter or underscore, then letters,
/// digits and underscores, as POSIX shells accept.
pub fn valid_env_name(name: &str) -> bool {
    let mut bytes = name.bytes();
    matches!(bytes.next(), Some(b) if b.is_ascii_alphabetic() || b == b'_')
        && bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

fn valid_hostname(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 63
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        && !name.starts_with('-')
        && !name.ends_with('-')
}

/// Checks a timezone name as found under /usr/share/zoneinfo: letters, digits and
/// `_+-/`, with no `..` component and no leading slash.
fn valid_timezone(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && !name.starts_with('/')
        && name.split('/').all(|part| !part.is_empty() && part != "." && part != "..")
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b"_+-/".contains(&b))
}

/// Checks a `[shell]` section, filling in the defaults.
fn shell_settings(raw: Option<RawShell>, max_ttl: Ttl) -> Result<ShellSettings, (String, String)> {
    let raw = raw.unwrap_or(RawShell { command: None, idle_timeout: None, observers: false, warnings: None, recording: false, recording_retention: None });
    let command = raw.command.unwrap_or_else(|| vec!["/bin/bash".into(), "-i".into()]);
    if command.is_empty() || command[0].is_empty() || command.iter().any(|a| a.contains('\0')) {
        return Err(("shell.command".into(), "must name a program, with no NUL bytes".into()));
    }
    if let Some(idle) = raw.idle_timeout {
        if idle < Ttl::from_secs(10) || idle > max_ttl {
            return Err(("shell.idle_timeout".into(), format!("= {idle} must be between 10s and ttl.max ({max_ttl})")));
        }
    }
    let warnings = raw.warnings.unwrap_or_else(|| vec![Ttl::from_secs(300), Ttl::from_secs(60)]);
    if warnings.len() > 8 || warnings.iter().any(|w| *w < Ttl::from_secs(1) || *w > max_ttl) {
        return Err(("shell.warnings".into(), format!("must be at most 8 durations between 1s and ttl.max ({max_ttl})")));
    }
    let recording_retention = raw.recording_retention.unwrap_or(Ttl::from_secs(30 * 86_400));
    if recording_retention < Ttl::from_secs(60) || recording_retention > Ttl::from_secs(3650 * 86_400) {
        return Err(("shell.recording_retention".into(), format!("= {recording_retention} is out of range: allowed is 1m to 3650d")));
    }
    Ok(ShellSettings { command, idle_timeout: raw.idle_timeout, observers: raw.observers, warnings, recording: raw.recording, recording_retention })
}

/// Renders a TOML error with the table it lies in, which the error's
/// one-line excerpt leaves out, and with the allowed range when a count
/// has a value of the wrong type.
fn syntax_message(text: &str, error: &toml::de::Error) -> String {
    let message = error.to_string().trim_end().to_string();
    let Some(start) = error.span().map(|span| span.start.min(text.len())) else { return message };
    let table = text[..start].lines().rev().find_map(|line| {
        let header = line.split('#').next().unwrap_or_default().trim();
        header.strip_prefix('[')?.strip_suffix(']').map(|name| name.trim_matches(['[', ']']).trim().to_string())
    });
    let Some(table) = table else { return message };
    // A count with a value of the wrong type gets its range named too.
    let line_start = text[..start].rfind('\n').map_or(0, |index| index + 1);
    let key = text[line_start..start].split_once('=').map(|(key, _)| format!("{table}.{}", key.trim()));
    match key.as_deref().and_then(whole_number_range) {
        Some(range) if message.contains("a whole number") => format!("{message}\n(in the [{table}] table; {} allows {range})", key.unwrap_or_default()),
        _ => format!("{message}\n(in the [{table}] table)"),
    }
}

/// Returns the allowed range of a profile key that takes a whole number.
fn whole_number_range(key: &str) -> Option<String> {
    let viewport = crate::browser::VIEWPORT;
    match key {
        "limits.pids" => Some(format!("{} to {}", limits::PIDS.min, limits::PIDS.max)),
        "limits.open_files" => Some(format!("{} to {}", limits::OPEN_FILES.min, limits::OPEN_FILES.max)),
        "pool.min" => Some(format!("0 to {}", crate::pool::MAX_MEMBERS)),
        "pool.max" => Some(format!("1 to {}", crate::pool::MAX_MEMBERS)),
        "browser.width" | "browser.height" => Some(format!("{} to {} pixels", viewport.0, viewport.1)),
        _ => None,
    }
}

impl Profile {
    /// Parses and validates a profile from its TOML text.
    pub fn parse(name: &str, text: &str) -> Result<Profile, ProfileError> {
        validate_name(name)?;
        let raw: RawProfile =
            toml::from_str(text).map_err(|error| ProfileError::Syntax { name: name.into(), message: syntax_message(text, &error) })?;
        let invalid = |key: &str, message: String| ProfileError::InvalidValue { name: name.into(), key: key.into(), message };
        let limit_error = |source| ProfileError::Limit { name: name.into(), source };

        let max_ttl = TTL_RANGE.check(raw.ttl.max).map_err(limit_error)?;
        if raw.ttl.default > max_ttl || raw.ttl.default < Ttl::from_secs(1) {
            return Err(invalid("ttl.default", format!("= {} must be between 1s and ttl.max ({max_ttl})", raw.ttl.default)));
        }

        let cpu_millis = match raw.limits.cpus {
            Cpus::Whole(cores) => cores.saturating_mul(1000),
            Cpus::Fraction(cores) => limits::cpus_to_millis(cores),
        };
        let limits = Limits {
            memory: limits::MEMORY.check(raw.limits.memory).map_err(limit_error)?,
            cpu_millis: limits::CPU_MILLIS.check(cpu_millis).map_err(|_| {
                invalid("limits.cpus", format!("= {} is out of range: allowed is 0.01 to 1024 cores", limits::format_cpus(cpu_millis)))
            })?,
            pids: limits::PIDS.check_whole(raw.limits.pids).map_err(limit_error)?,
            tmp: limits::TMP.check(raw.limits.tmp).map_err(limit_error)?,
            shm: limits::SHM.check(raw.limits.shm).map_err(limit_error)?,
            work: limits::WORK.check(raw.limits.work).map_err(limit_error)?,
            open_files: limits::OPEN_FILES.check_whole(raw.limits.open_files).map_err(limit_error)?,
            inputs: limits::INPUTS.check(raw.limits.inputs).map_err(limit_error)?,
            artifacts: limits::ARTIFACTS.check(raw.limits.artifacts).map_err(limit_error)?,
        };
        if limits.inputs > limits.work {
            return Err(invalid("limits.inputs", format!("= {} must not exceed limits.work ({})", limits.inputs, limits.work)));
        }

        for (key, value) in &raw.environment {
            if !valid_env_name(key) {
                return Err(invalid(&format!("environment.{key}"), "is not a valid variable name: use letters, digits and underscores, not starting with a digit".into()));
            }
            if value.contains('\0') {
                return Err(invalid(&format!("environment.{key}"), "contains a NUL byte".into()));
            }
        }
        if !valid_hostname(&raw.sandbox.hostname) {
            return Err(invalid("sandbox.hostname", format!("= {:?} is not a valid hostname: use 1 to 63 letters, digits and inner dashes", raw.sandbox.hostname)));
        }
        if !valid_timezone(&raw.sandbox.timezone) {
            return Err(invalid("sandbox.timezone", format!("= {:?} is not a timezone name such as UTC or Europe/Berlin", raw.sandbox.timezone)));
        }
        for (index, mount) in raw.sandbox.mounts.iter().enumerate() {
            check_mount(mount).map_err(|message| invalid(&format!("sandbox.mounts[{index}]"), message))?;
        }
        let network = crate::egress::NetworkSettings::from_raw(raw.network).map_err(|(key, message)| invalid(&key, message))?;
        let shell = match (raw.kind, raw.shell) {
            (Kind::Job | Kind::Browser, Some(_)) => return Err(invalid("shell", "is only for profiles of kind \"shell\"".into())),
            (Kind::Job | Kind::Browser, None) => None,
            (Kind::Shell, shell) => Some(shell_settings(shell, max_ttl).map_err(|(key, message)| invalid(&key, message))?),
        };
        let browser = match (raw.kind, raw.browser, raw.transfer) {
            (Kind::Browser, browser, transfer) => Some(
                crate::browser::BrowserSettings::from_raw(browser.unwrap_or_default(), transfer.unwrap_or_default()).map_err(|(key, message)| invalid(&key, message))?,
            ),
            (_, Some(_), _) => return Err(invalid("browser", "is only for profiles of kind \"browser\"".into())),
            (_, None, Some(_)) => return Err(invalid("transfer", "is only for profiles of kind \"browser\"".into())),
            (_, None, None) => None,
        };
        let pool = raw.pool.map(crate::pool::PoolSettings::from_raw).transpose().map_err(|(key, message)| invalid(&key, message))?;

        Ok(Profile {
            name: name.into(),
            kind: raw.kind,
            description: raw.description,
            default_ttl: raw.ttl.default,
            max_ttl,
            limits,
            environment: raw.environment,
            hostname: raw.sandbox.hostname,
            timezone: raw.sandbox.timezone,
            landlock: raw.sandbox.landlock,
            mounts: raw.sandbox.mounts,
            shell,
            network,
            browser,
            pool,
        })
    }

    /// Returns the TTL for a session: the requested one if it is within the
    /// profile's maximum, the profile default if none was requested.
    pub fn resolve_ttl(&self, requested: Option<Ttl>) -> Result<Ttl, ProfileError> {
        let Some(ttl) = requested else { return Ok(self.default_ttl) };
        if ttl > self.max_ttl {
            return Err(ProfileError::TtlAboveMax { name: self.name.clone(), requested: ttl, max: self.max_ttl });
        }
        if ttl < Ttl::from_secs(1) {
            return Err(ProfileError::TtlTooShort { requested: ttl });
        }
        Ok(ttl)
    }
}

/// Paths the sandbox builds itself; a profile mount may not cover them.
const RESERVED_TARGETS: &[&str] =
    &["/proc", "/dev", "/etc", "/tmp", "/work", "/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32", "/var", "/sys"];

fn check_mount(mount: &ProfileMount) -> Result<(), String> {
    for (field, path) in [("source", &mount.source), ("target", &mount.target)] {
        let text = path.to_string_lossy();
        if !path.is_absolute() {
            return Err(format!("{field} {text:?} must be an absolute path"));
        }
        if path.components().any(|c| matches!(c, std::path::Component::ParentDir)) || text.contains('\0') {
            return Err(format!("{field} {text:?} must not contain '..' or a NUL byte"));
        }
    }
    let target = mount.target.to_string_lossy();
    if target == "/" {
        return Err("target \"/\" would replace the sandbox's root; mount below it, such as under /opt".into());
    }
    let reserved = RESERVED_TARGETS.iter().any(|r| target == *r || target.starts_with(&format!("{r}/")));
    if reserved {
        return Err(format!(
            "target {target:?} is inside a path the sandbox builds or keeps empty ({}); mount elsewhere, such as under /opt",
            RESERVED_TARGETS.join(", ")
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn default_text() -> &'static str {
        BUILT_IN[0].1
    }

    #[test]
    fn built_in_profiles_parse() {
        for (name, text) in BUILT_IN {
            let profile = Profile::parse(name, text).unwrap();
            let expected = match *name {
                "shell" => Kind::Shell,
                "browser" => Kind::Browser,
                _ => Kind::Job,
            };
            assert_eq!(profile.kind, expected, "{name}");
            assert_eq!(profile.shell.is_some(), expected == Kind::Shell, "{name}");
            assert_eq!(profile.browser.is_some(), expected == Kind::Browser, "{name}");
            assert!(profile.default_ttl <= profile.max_ttl);
        }
    }

    #[test]
    fn shell_settings_are_checked() {
        let shell = BUILT_IN.iter().find(|(n, _)| *n == "shell").unwrap().1;
        let error = Profile::parse("s", &shell.replace("idle_timeout = \"10m\"", "idle_timeout = \"1s\"")).unwrap_err().to_string();
        assert!(error.contains("shell.idle_timeout"), "{error}");
        let error = Profile::parse("s", &shell.replace("command = [\"/bin/bash\", \"-i\"]", "command = []")).unwrap_err().to_string();
        assert!(error.contains("shell.command"), "{error}");
        let job_with_shell = format!("{}\n[shell]\nobservers = true\n", default_text());
        let error = Profile::parse("j", &job_with_shell).unwrap_err().to_string();
        assert!(error.contains("shell") && error.contains("kind"), "{error}");
    }

    #[test]
    fn unknown_key_is_named() {
        let text = default_text().replace("[limits]", "[limits]\nmemroy = \"1GiB\"");
        let message = Profile::parse("typo", &text).unwrap_err().to_string();
        assert!(message.contains("memroy"), "{message}");
    }

    #[test]
    fn unknown_section_is_named() {
        let text = format!("{}\n[netwrok]\nallow = []\n", default_text());
        let message = Profile::parse("typo", &text).unwrap_err().to_string();
        assert!(message.contains("netwrok"), "{message}");
    }

    #[test]
    fn out_of_range_names_key_and_range() {
        let text = default_text().replace("pids = 256", "pids = 1000000");
        let message = Profile::parse("big", &text).unwrap_err().to_string();
        assert!(message.contains("limits.pids"), "{message}");
        assert!(message.contains("4 to 65536"), "{message}");
    }

    #[test]
    fn memory_below_minimum_is_rejected() {
        let text = default_text().replace("memory = \"512MiB\"", "memory = \"1MiB\"");
        let message = Profile::parse("tiny", &text).unwrap_err().to_string();
        assert!(message.contains("limits.memory"), "{message}");
        assert!(message.contains("16MiB to 1TiB"), "{message}");
    }

    #[test]
    fn ttl_above_max_names_max() {
        let profile = Profile::parse("default", default_text()).unwrap();
        let message = profile.resolve_ttl(Some(Ttl::from_secs(100 * 86_400))).unwrap_err().to_string();
        assert!(message.contains(&profile.max_ttl.to_string()), "{message}");
    }

    #[test]
    fn ttl_defaults_to_profile_default() {
        let profile = Profile::parse("default", default_text()).unwrap();
        assert_eq!(profile.resolve_ttl(None).unwrap(), profile.default_ttl);
        assert_eq!(profile.resolve_ttl(Some(Ttl::from_secs(5))).unwrap(), Ttl::from_secs(5));
    }

    #[test]
    fn profile_names_are_checked() {
        for bad in ["", "Upper", "../etc", "a b", "-lead", &"x".repeat(64)] {
            assert!(validate_name(bad).is_err(), "{bad:?}");
        }
        for good in ["default", "ci-job", "a1"] {
            assert!(validate_name(good).is_ok(), "{good:?}");
        }
    }

    #[test]
    fn mount_into_reserved_path_is_rejected() {
        let text = format!("{}\n[[sandbox.mounts]]\nsource = \"/opt/x\"\ntarget = \"/etc/x\"\n", default_text());
        let message = Profile::parse("m", &text).unwrap_err().to_string();
        assert!(message.contains("sandbox.mounts[0]"), "{message}");
        for target in ["/sys", "/sys/fs", "/var/lib/x", "/"] {
            let text = format!("{}\n[[sandbox.mounts]]\nsource = \"/opt/x\"\ntarget = \"{target}\"\n", default_text());
            assert!(Profile::parse("m", &text).is_err(), "{target} must be rejected");
        }
        let relative = format!("{}\n[[sandbox.mounts]]\nsource = \"opt/x\"\ntarget = \"/opt/x\"\n", default_text());
        assert!(Profile::parse("m", &relative).unwrap_err().to_string().contains("absolute"));
        let fine = format!("{}\n[[sandbox.mounts]]\nsource = \"/opt/x\"\ntarget = \"/opt/x\"\n", default_text());
        assert_eq!(Profile::parse("m", &fine).unwrap().mounts.len(), 1);
    }

    #[test]
    fn bad_environment_name_is_rejected() {
        let text = default_text().replace("[environment]", "[environment]\n\"1BAD\" = \"x\"");
        let message = Profile::parse("env", &text).unwrap_err().to_string();
        assert!(message.contains("environment.1BAD"), "{message}");
    }

    #[test]
    fn pool_section_is_checked() {
        assert_eq!(Profile::parse("p", default_text()).unwrap().pool, None, "pools are off by default");
        let text = format!("{}\n[pool]\nmin = 2\nmax = 4\nmax_age = \"5m\"\n", default_text());
        let pool = Profile::parse("p", &text).unwrap().pool.unwrap();
        assert_eq!((pool.min, pool.max, pool.max_age), (2, 4, Ttl::from_secs(300)));
        for (section, key, range) in [
            ("min = 5\nmax = 4", "pool.min", "0 to pool.max (4)"),
            ("max = 0", "pool.max", "1 to 256"),
            ("max = 1000", "pool.max", "1 to 256"),
            ("min = 300", "pool.min = 300", "0 to 256 (pool.max, which defaults to pool.min)"),
            ("min = 1\nmax_age = \"1s\"", "pool.max_age", "10s to"),
            ("min = -1", "pool.min = -1", "0 to 256"),
            ("max = -3", "pool.max = -3", "1 to 256"),
            ("max = 99999999999", "pool.max = 99999999999", "1 to 256"),
        ] {
            let text = format!("{}\n[pool]\n{section}\n", default_text());
            let message = Profile::parse("p", &text).unwrap_err().to_string();
            assert!(message.contains(key), "{section}: {message}");
            assert!(message.contains(range), "{section}: {message}");
        }
        let typo = format!("{}\n[pool]\nminimum = 2\n", default_text());
        let message = Profile::parse("p", &typo).unwrap_err().to_string();
        assert!(message.contains("minimum"), "{message}");
        assert!(message.contains("(in the [pool] table)"), "{message}");
        let quoted = format!("{}\n[pool]\nmax = \"4\"\n", default_text());
        let message = Profile::parse("p", &quoted).unwrap_err().to_string();
        assert!(message.contains("(in the [pool] table; pool.max allows 1 to 256)"), "{message}");
    }

    #[test]
    fn negative_limits_name_key_and_range() {
        for (from, to, expected) in [
            ("pids = 256", "pids = -1", "limits.pids = -1 is out of range: allowed is 4 to 65536"),
            ("open_files = 1024", "open_files = -5", "limits.open_files = -5 is out of range: allowed is 16 to 1048576"),
        ] {
            let text = default_text().replace(from, to);
            assert_ne!(text, default_text(), "{from} is in the default profile");
            let message = Profile::parse("negative", &text).unwrap_err().to_string();
            assert!(message.contains(expected), "{to}: {message}");
        }
    }

    #[test]
    fn whole_number_types_are_explained() {
        for (value, expected) in [("\"many\"", "a whole number such as 256, without quotes"), ("2.5", "expected a whole number such as 256, not 2.5")] {
            let text = default_text().replace("pids = 256", &format!("pids = {value}"));
            let message = Profile::parse("typed", &text).unwrap_err().to_string();
            assert!(message.contains(expected), "{value}: {message}");
            assert!(message.contains("(in the [limits] table; limits.pids allows 4 to 65536)"), "{value}: {message}");
        }
    }

    #[test]
    fn fractional_cpus_are_accepted() {
        let text = default_text().replace("cpus = 1", "cpus = 0.5");
        assert_eq!(Profile::parse("half", &text).unwrap().limits.cpu_millis, 500);
        let zero = default_text().replace("cpus = 1", "cpus = 0");
        assert!(Profile::parse("zero", &zero).unwrap_err().to_string().contains("limits.cpus"));
        let quoted = default_text().replace("cpus = 1", "cpus = \"1\"");
        let message = Profile::parse("quoted", &quoted).unwrap_err().to_string();
        assert!(message.contains("a number of cores such as 1 or 0.5"), "{message}");
    }
}
