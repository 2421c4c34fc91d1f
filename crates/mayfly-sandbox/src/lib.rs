//! Mayfly's native sandbox: the isolation mechanism and nothing else.
//!
//! This crate creates namespaces, cgroups and the session's root filesystem,
//! confines the command with capabilities, no_new_privs, Landlock and
//! seccomp, runs the in-sandbox init and tears everything down with
//! evidence. It contains no HTTP, database or policy code: the control plane
//! decides what to run and this crate decides how it is contained.

pub mod caps;
pub mod cgroup;
pub mod host;
pub mod ids;
pub mod init;
pub mod init_program;
pub mod landlock_policy;
pub mod launch;
pub mod ledger;
pub mod netns;
pub mod ns_handles;
pub mod procfs;
pub mod seccomp;
pub mod session;
pub mod spec;
pub mod teardown;
pub mod terminal;
pub mod transfer;

pub use launch::INIT_ARGUMENT;
