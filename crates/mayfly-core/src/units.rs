//! Byte sizes and durations as users write them: `256MiB`, `30s`, `1h30m`.

use std::fmt;
use std::time::Duration;

use serde::de::{self, Deserializer};
use serde::{Deserialize, Serialize, Serializer};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UnitError {
    #[error("invalid size {value:?}: expected a whole number with a unit, such as 64MiB, 512KiB, 2GiB, 500MB or 4096 (bytes), no larger than 16EiB")]
    InvalidSize { value: String },
    #[error("invalid duration {value:?}: expected whole numbers with units, such as 30s, 15m, 2h, 1h30m or 1500ms")]
    InvalidDuration { value: String },
    #[error("invalid duration {value:?}: write each unit once, largest first, such as 1h30m")]
    DurationOrder { value: String },
}

/// A size in bytes. Accepts binary units (KiB, MiB, GiB, TiB), their short
/// forms (K, M, G, T) and decimal units (kB, MB, GB).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ByteSize(u64);

impl ByteSize {
    pub const fn bytes(bytes: u64) -> Self {
        ByteSize(bytes)
    }

    pub const fn kib(n: u64) -> Self {
        ByteSize(n * 1024)
    }

    pub const fn mib(n: u64) -> Self {
        ByteSize(n * 1024 * 1024)
    }

    pub const fn gib(n: u64) -> Self {
        ByteSize(n * 1024 * 1024 * 1024)
    }

    pub const fn as_bytes(self) -> u64 {
        self.0
    }

    pub fn parse(text: &str) -> Result<Self, UnitError> {
        let invalid = || UnitError::InvalidSize { value: text.to_string() };
        let trimmed = text.trim();
        let split = trimmed.find(|c: char| !c.is_ascii_digit()).unwrap_or(trimmed.len());
        let (digits, unit) = trimmed.split_at(split);
        if digits.is_empty() {
            return Err(invalid());
        }
        let number: u64 = digits.parse().map_err(|_| invalid())?;
        let multiplier: u64 = match unit.trim() {
            "" | "B" => 1,
            "K" | "KiB" | "k" => 1 << 10,
            "M" | "MiB" => 1 << 20,
            "G" | "GiB" => 1 << 30,
            "T" | "TiB" => 1 << 40,
            "kB" | "KB" => 1_000,
            "MB" => 1_000_000,
            "GB" => 1_000_000_000,
            "TB" => 1_000_000_000_000,
            _ => return Err(invalid()),
        };
        number.checked_mul(multiplier).map(ByteSize).ok_or_else(invalid)
    }
}

impl fmt::Display for ByteSize {
    /// Formats with the largest binary unit that divides the size exactly,
    /// or else the largest decimal one, so that a parsed value prints the way
    /// a user would write it.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const UNITS: [(u64, &str); 8] = [
            (1 << 40, "TiB"),
            (1 << 30, "GiB"),
            (1 << 20, "MiB"),
            (1 << 10, "KiB"),
            (1_000_000_000_000, "TB"),
            (1_000_000_000, "GB"),
            (1_000_000, "MB"),
            (1_000, "kB"),
        ];
        for (size, name) in UNITS {
            if self.0 >= size && self.0.is_multiple_of(size) {
                return write!(f, "{}{}", self.0 / size, name);
            }
        }
        write!(f, "{}B", self.0)
    }
}

impl std::str::FromStr for ByteSize {
    type Err = UnitError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        ByteSize::parse(s)
    }
}

impl Serialize for ByteSize {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        ByteSize::parse(&text).map_err(de::Error::custom)
    }
}

/// A session lifetime. Written as one or more number-unit pairs (`ms`, `s`,
/// `m`, `h`, `d`), such as `90s` or `1h30m`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Ttl(Duration);

impl Ttl {
    pub const fn from_duration(duration: Duration) -> Self {
        Ttl(duration)
    }

    pub const fn from_secs(secs: u64) -> Self {
        Ttl(Duration::from_secs(secs))
    }

    pub const fn as_duration(self) -> Duration {
        self.0
    }

    pub fn parse(text: &str) -> Result<Self, UnitError> {
        let invalid = || UnitError::InvalidDuration { value: text.to_string() };
        let mut rest = text.trim();
        if rest.is_empty() {
            return Err(invalid());
        }
        let mut total = Duration::ZERO;
        // Units must come from largest to smallest, each at most once, so
        // that `30s30s` or `1s1h` is not silently summed.
        const ORDER: [&str; 5] = ["d", "h", "m", "s", "ms"];
        let mut next_unit = 0;
        while !rest.is_empty() {
            let digits_end = rest.find(|c: char| !c.is_ascii_digit()).ok_or_else(invalid)?;
            if digits_end == 0 {
                return Err(invalid());
            }
            let number: u64 = rest[..digits_end].parse().map_err(|_| invalid())?;
            rest = &rest[digits_end..];
            let unit_end = rest.find(|c: char| c.is_ascii_digit()).unwrap_or(rest.len());
            let unit = &rest[..unit_end];
            let position = ORDER.iter().position(|u| *u == unit).ok_or_else(invalid)?;
            if position < next_unit {
                return Err(UnitError::DurationOrder { value: text.to_string() });
            }
            next_unit = position + 1;
            let part = match unit {
                "ms" => Duration::from_millis(number),
                "s" => Duration::from_secs(number),
                "m" => Duration::from_secs(number.checked_mul(60).ok_or_else(invalid)?),
                "h" => Duration::from_secs(number.checked_mul(3_600).ok_or_else(invalid)?),
                "d" => Duration::from_secs(number.checked_mul(86_400).ok_or_else(invalid)?),
                _ => return Err(invalid()),
            };
            total = total.checked_add(part).ok_or_else(invalid)?;
            rest = &rest[unit_end..];
        }
        Ok(Ttl(total))
    }
}

impl fmt::Display for Ttl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let millis = self.0.as_millis();
        if !millis.is_multiple_of(1000) {
            return write!(f, "{millis}ms");
        }
        let mut secs = self.0.as_secs();
        if secs == 0 {
            return write!(f, "0s");
        }
        for (size, name) in [(86_400, "d"), (3_600, "h"), (60, "m"), (1, "s")] {
            if secs >= size {
                write!(f, "{}{}", secs / size, name)?;
                secs %= size;
            }
        }
        Ok(())
    }
}

impl std::str::FromStr for Ttl {
    type Err = UnitError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ttl::parse(s)
    }
}

impl Serialize for Ttl {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Ttl {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        Ttl::parse(&text).map_err(de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_size_parses_binary_and_decimal_units() {
        assert_eq!(ByteSize::parse("256MiB").unwrap(), ByteSize::mib(256));
        assert_eq!(ByteSize::parse("256M").unwrap(), ByteSize::mib(256));
        assert_eq!(ByteSize::parse("2GiB").unwrap(), ByteSize::gib(2));
        assert_eq!(ByteSize::parse("4096").unwrap(), ByteSize::bytes(4096));
        assert_eq!(ByteSize::parse("1kB").unwrap(), ByteSize::bytes(1000));
        assert_eq!(ByteSize::parse("3MB").unwrap(), ByteSize::bytes(3_000_000));
    }

    #[test]
    fn byte_size_rejects_garbage() {
        for text in ["", "MiB", "12 parsecs", "-5M", "1.5G", "99999999999999999999T", "9999999999T"] {
            let error = ByteSize::parse(text).unwrap_err();
            assert!(error.to_string().contains("64MiB"), "{text}: {error}");
        }
    }

    #[test]
    fn byte_size_displays_exact_unit() {
        assert_eq!(ByteSize::mib(64).to_string(), "64MiB");
        assert_eq!(ByteSize::bytes(1536).to_string(), "1536B");
        assert_eq!(ByteSize::kib(1536).to_string(), "1536KiB");
        assert_eq!(ByteSize::gib(1).to_string(), "1GiB");
        assert_eq!(ByteSize::bytes(600_000_000).to_string(), "600MB");
        assert_eq!(ByteSize::bytes(1000).to_string(), "1kB");
    }

    #[test]
    fn ttl_parses_compound_durations() {
        assert_eq!(Ttl::parse("30s").unwrap(), Ttl::from_secs(30));
        assert_eq!(Ttl::parse("15m").unwrap(), Ttl::from_secs(900));
        assert_eq!(Ttl::parse("1h30m").unwrap(), Ttl::from_secs(5400));
        assert_eq!(Ttl::parse("1d").unwrap(), Ttl::from_secs(86_400));
        assert_eq!(Ttl::parse("250ms").unwrap().as_duration(), Duration::from_millis(250));
    }

    #[test]
    fn ttl_rejects_garbage() {
        for text in ["", "30", "s", "1.5h", "10 minutes", "-3s", "5y", "30s30s", "1s1h"] {
            assert!(Ttl::parse(text).is_err(), "{text} should be rejected");
        }
        assert!(Ttl::parse("1s1h").unwrap_err().to_string().contains("largest first"));
    }

    #[test]
    fn ttl_display_round_trips() {
        for text in ["30s", "15m", "1h30m", "2d", "1500ms"] {
            assert_eq!(Ttl::parse(text).unwrap().to_string(), text);
        }
    }
}

/// A whole number as written in a profile. Negative and oversized values
/// are kept, so that the range check reports them with the key and the
/// allowed range instead of a type error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WholeNumber(pub i64);

impl WholeNumber {
    /// Returns the value as a `u32` when it fits.
    pub fn to_u32(self) -> Option<u32> {
        u32::try_from(self.0).ok()
    }
}

impl fmt::Display for WholeNumber {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl<'de> Deserialize<'de> for WholeNumber {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl de::Visitor<'_> for Visitor {
            type Value = WholeNumber;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a whole number such as 256, without quotes")
            }
            fn visit_i64<E: de::Error>(self, value: i64) -> Result<WholeNumber, E> {
                Ok(WholeNumber(value))
            }
            fn visit_u64<E: de::Error>(self, value: u64) -> Result<WholeNumber, E> {
                // Larger values fail every range check anyway.
                Ok(WholeNumber(i64::try_from(value).unwrap_or(i64::MAX)))
            }
            fn visit_f64<E: de::Error>(self, value: f64) -> Result<WholeNumber, E> {
                Err(E::custom(format!("expected a whole number such as 256, not {value}")))
            }
        }
        deserializer.deserialize_any(Visitor)
    }
}
