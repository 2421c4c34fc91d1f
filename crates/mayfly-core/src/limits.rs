//! Resource limits of a session, their allowed ranges, and how command-line
//! values may lower (never raise) a profile's limits.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::units::ByteSize;

/// Validated limits of one session. Every field has passed its range check.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Limits {
    /// Memory including swap, for all processes and tmpfs pages of the session.
    pub memory: ByteSize,
    /// CPU quota in thousandths of a core (1000 = one full core).
    pub cpu_millis: u32,
    /// Maximum number of processes and threads.
    pub pids: u32,
    /// Size of the /tmp tmpfs.
    pub tmp: ByteSize,
    /// Size of the /dev/shm tmpfs.
    pub shm: ByteSize,
    /// Size of the /work tmpfs, the command's working directory.
    pub work: ByteSize,
    /// RLIMIT_NOFILE of the command.
    pub open_files: u32,
    /// Total size of the files copied in with `--input`.
    pub inputs: ByteSize,
    /// Total size of the files exported with `--artifacts`.
    pub artifacts: ByteSize,
}

/// A range check for one limit key, written once so that the check and the
/// message that names the range cannot disagree.
pub struct Range<T> {
    pub key: &'static str,
    pub min: T,
    pub max: T,
}

pub const MEMORY: Range<ByteSize> = Range { key: "limits.memory", min: ByteSize::mib(16), max: ByteSize::gib(1024) };
pub const CPU_MILLIS: Range<u32> = Range { key: "limits.cpus", min: 10, max: 1_024_000 };
pub const PIDS: Range<u32> = Range { key: "limits.pids", min: 4, max: 65_536 };
pub const TMP: Range<ByteSize> = Range { key: "limits.tmp", min: ByteSize::mib(1), max: ByteSize::gib(64) };
pub const SHM: Range<ByteSize> = Range { key: "limits.shm", min: ByteSize::mib(1), max: ByteSize::gib(64) };
pub const WORK: Range<ByteSize> = Range { key: "limits.work", min: ByteSize::mib(1), max: ByteSize::gib(64) };
pub const OPEN_FILES: Range<u32> = Range { key: "limits.open_files", min: 16, max: 1_048_576 };
pub const INPUTS: Range<ByteSize> = Range { key: "limits.inputs", min: ByteSize::bytes(0), max: ByteSize::gib(16) };
pub const ARTIFACTS: Range<ByteSize> = Range { key: "limits.artifacts", min: ByteSize::bytes(0), max: ByteSize::gib(16) };

/// A value outside its allowed range, or a command-line value above the profile's.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LimitError {
    #[error("{key} = {value} is out of range: allowed is {min} to {max}")]
    OutOfRange { key: &'static str, value: String, min: String, max: String },
    #[error("{flag} {value} is out of range: allowed is {min} to {max}")]
    FlagOutOfRange { flag: &'static str, value: String, min: String, max: String },
    #[error("{flag} {value} is above the profile's {key} of {profile_value}: a command-line limit may lower the profile's limit, never raise it")]
    AboveProfile { flag: &'static str, key: &'static str, value: String, profile_value: String },
}

impl Range<u32> {
    /// Checks a whole number from a profile, which may be negative or too
    /// large for the type, with the same message as [`Range::check`].
    pub fn check_whole(&self, value: crate::WholeNumber) -> Result<u32, LimitError> {
        match value.to_u32() {
            Some(value) => self.check(value),
            None => Err(self.out_of_range(value)),
        }
    }
}

impl<T: PartialOrd + fmt::Display + Copy> Range<T> {
    pub fn check(&self, value: T) -> Result<T, LimitError> {
        if value < self.min || value > self.max {
            return Err(self.out_of_range(value));
        }
        Ok(value)
    }

    /// Returns the error for `value` outside this range.
    fn out_of_range(&self, value: impl fmt::Display) -> LimitError {
        LimitError::OutOfRange { key: self.key, value: value.to_string(), min: self.min.to_string(), max: self.max.to_string() }
    }
}

/// Formats thousandths of a core the way a user writes `--cpus`.
pub fn format_cpus(cpu_millis: u32) -> String {
    if cpu_millis.is_multiple_of(1000) {
        (cpu_millis / 1000).to_string()
    } else {
        format!("{}", cpu_millis as f64 / 1000.0)
    }
}

/// Converts a core count such as `1.5` to thousandths of a core, rounding to
/// the nearest thousandth. Values outside `u32` saturate and then fail the
/// range check.
pub fn cpus_to_millis(cpus: f64) -> u32 {
    if !cpus.is_finite() || cpus <= 0.0 {
        return 0;
    }
    (cpus * 1000.0).round().min(u32::MAX as f64) as u32
}

/// Limits given on the command line; each may only lower the profile's value.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
pub struct LimitOverrides {
    pub memory: Option<ByteSize>,
    pub cpu_millis: Option<u32>,
    pub pids: Option<u32>,
    pub tmp: Option<ByteSize>,
    pub shm: Option<ByteSize>,
    pub work: Option<ByteSize>,
    pub open_files: Option<u32>,
}

fn lower<T: PartialOrd + fmt::Display + Copy>(
    flag: &'static str,
    range: &Range<T>,
    profile_value: T,
    requested: Option<T>,
    display: impl Fn(T) -> String,
) -> Result<T, LimitError> {
    let Some(value) = requested else { return Ok(profile_value) };
    if value > profile_value {
        return Err(LimitError::AboveProfile {
            flag,
            key: range.key,
            value: display(value),
            profile_value: display(profile_value),
        });
    }
    range.check(value).map_err(|_| LimitError::FlagOutOfRange {
        flag,
        value: display(value),
        min: display(range.min),
        max: display(range.max),
    })
}

impl Limits {
    /// Returns these limits lowered by the command-line overrides, or the
    /// first override that is out of range or above the profile's value.
    pub fn lowered_by(&self, overrides: &LimitOverrides) -> Result<Limits, LimitError> {
        let show = |value: ByteSize| value.to_string();
        let show_number = |value: u32| value.to_string();
        Ok(Limits {
            memory: lower("--memory", &MEMORY, self.memory, overrides.memory, show)?,
            cpu_millis: lower("--cpus", &CPU_MILLIS, self.cpu_millis, overrides.cpu_millis, format_cpus)?,
            pids: lower("--pids", &PIDS, self.pids, overrides.pids, show_number)?,
            tmp: lower("--tmp", &TMP, self.tmp, overrides.tmp, show)?,
            shm: lower("--shm", &SHM, self.shm, overrides.shm, show)?,
            work: lower("--work", &WORK, self.work, overrides.work, show)?,
            open_files: lower("--open-files", &OPEN_FILES, self.open_files, overrides.open_files, show_number)?,
            inputs: self.inputs,
            artifacts: self.artifacts,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Limits {
        Limits {
            memory: ByteSize::mib(512),
            cpu_millis: 1000,
            pids: 256,
            tmp: ByteSize::mib(64),
            shm: ByteSize::mib(64),
            work: ByteSize::mib(256),
            open_files: 1024,
            inputs: ByteSize::mib(64),
            artifacts: ByteSize::mib(64),
        }
    }

    #[test]
    fn overrides_lower_limits() {
        let overrides = LimitOverrides { memory: Some(ByteSize::mib(128)), cpu_millis: Some(500), ..Default::default() };
        let lowered = sample().lowered_by(&overrides).unwrap();
        assert_eq!(lowered.memory, ByteSize::mib(128));
        assert_eq!(lowered.cpu_millis, 500);
        assert_eq!(lowered.pids, 256);
    }

    #[test]
    fn overrides_never_raise_limits() {
        let overrides = LimitOverrides { memory: Some(ByteSize::gib(1)), ..Default::default() };
        let message = sample().lowered_by(&overrides).unwrap_err().to_string();
        assert!(message.contains("--memory 1GiB"), "{message}");
        assert!(message.contains("512MiB"), "{message}");
        assert!(message.contains("never raise"), "{message}");
    }

    #[test]
    fn override_below_minimum_names_range() {
        let overrides = LimitOverrides { pids: Some(1), ..Default::default() };
        let message = sample().lowered_by(&overrides).unwrap_err().to_string();
        assert!(message.contains("--pids"), "{message}");
        assert!(message.contains("4 to 65536"), "{message}");
    }

    #[test]
    fn cpus_override_range_is_in_cores() {
        let overrides = LimitOverrides { cpu_millis: Some(0), ..Default::default() };
        let message = sample().lowered_by(&overrides).unwrap_err().to_string();
        assert!(message.contains("allowed is 0.01 to 1024"), "{message}");
    }

    #[test]
    fn cpus_convert_to_millis() {
        assert_eq!(cpus_to_millis(1.5), 1500);
        assert_eq!(cpus_to_millis(0.25), 250);
        assert_eq!(cpus_to_millis(-1.0), 0);
        assert_eq!(cpus_to_millis(f64::NAN), 0);
        assert_eq!(format_cpus(1500), "1.5");
        assert_eq!(format_cpus(2000), "2");
    }
}
