//! Mayfly's domain types. Nothing here performs I/O: profiles are parsed from
//! strings that callers read, and limits carry their units in their types.

#![forbid(unsafe_code)]

pub mod browser;
pub mod egress;
pub mod end;
pub mod lifecycle;
pub mod limits;
pub mod pool;
pub mod profile;
pub mod transfer;
pub mod units;

pub use end::{EndReason, ExitCode};
pub use lifecycle::SessionState;
pub use limits::{LimitOverrides, Limits};
pub use profile::{Kind, Landlock, Profile, ProfileError, ProfileMount};
pub use units::{ByteSize, Ttl, UnitError, WholeNumber};
