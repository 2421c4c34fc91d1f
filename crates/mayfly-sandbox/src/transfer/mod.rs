//! Files that cross the sandbox boundary: `--input` copies in and the
//! `--artifacts` export out.
//!
//! Every name is a relative path checked by [`check_name`]. The export is a
//! stream of records written by init after every session process is dead, and
//! the supervisor writes it below the target directory without ever following
//! a symlink or leaving that directory.

mod artifacts;
mod inputs;

use std::io;
use std::path::PathBuf;

use mayfly_core::ByteSize;

pub use artifacts::{read_artifacts, write_artifacts, ExportSummary, Record};
pub use inputs::{open_inputs, parse_input, OpenedInput};

const MAX_NAME_BYTES: usize = 4096;
const MAX_COMPONENT_BYTES: usize = 255;
const MAX_DEPTH: usize = 64;

#[derive(Debug, thiserror::Error)]
pub enum TransferError {
    #[error("invalid file name {name:?}: {reason}")]
    InvalidName { name: String, reason: &'static str },
    #[error("--input {argument:?}: {source}")]
    InvalidInput { argument: String, source: Box<TransferError> },
    #[error("failed to open {path}: {source}")]
    InputOpen { path: PathBuf, source: io::Error },
    #[error("{path} was not found, but {whole} exists: a ':' splits SOURCE:NAME at the last colon, so name the file too: --input '{whole}:NAME'")]
    InputColonInPath { path: PathBuf, whole: String },
    #[error("{path} is not a regular file; copy a single file, or archive a directory first")]
    InputNotFile { path: PathBuf },
    #[error("inputs total {total}, above the profile's limit of {limit} (limits.inputs); copy less, or use a profile with a higher limit")]
    InputsTooLarge { total: ByteSize, limit: ByteSize },
    #[error("input name {name:?} is used twice; give one of them another name with SOURCE:NAME")]
    DuplicateInput { name: String },
    #[error("input name {name:?} conflicts with input {other:?}: one would be a file and a directory at once")]
    ConflictingInputs { name: String, other: String },
    #[error("input name {name:?} is inside /work/artifacts, which holds what the command exports; choose another name")]
    ReservedInput { name: String },
    #[error("artifact {name:?}: {path} already exists; export into an empty directory")]
    ArtifactExists { name: String, path: PathBuf },
    #[error("artifact {name:?}: a path component in the target directory is a symlink or not a directory; refusing to follow it")]
    ArtifactUnsafePath { name: String },
    #[error("artifact {name:?}: failed to write below {dir}: {source}")]
    ArtifactWrite { name: String, dir: PathBuf, source: io::Error },
    #[error("artifact stream is malformed: {0}")]
    Malformed(String),
    #[error("artifacts exceed the limit of {limit} bytes (limits.artifacts)")]
    ArtifactsTooLarge { limit: u64 },
    #[error("artifact stream I/O failed: {0}")]
    Io(#[from] io::Error),
}

/// Checks a relative file name for use inside the sandbox or below an export
/// directory. Rejects empty and absolute names, `.` and `..` components,
/// empty components and NUL bytes; `.thing.json` and `foo..bar` pass.
pub fn check_name(name: &str) -> Result<(), TransferError> {
    let invalid = |reason| Err(TransferError::InvalidName { name: name.to_string(), reason });
    if name.is_empty() {
        return invalid("the name is empty");
    }
    if name.contains('\0') {
        return invalid("the name contains a NUL byte");
    }
    if name.starts_with('/') {
        return invalid("absolute paths are not allowed; use a path relative to /work");
    }
    if name.len() > MAX_NAME_BYTES {
        return invalid("the name is longer than 4096 bytes");
    }
    let components: Vec<&str> = name.split('/').collect();
    if components.len() > MAX_DEPTH {
        return invalid("the name is nested more than 64 directories deep");
    }
    for component in components {
        match component {
            "" => return invalid("the name contains an empty path component ('//' or a trailing '/')"),
            "." => return invalid("the name contains a '.' component"),
            ".." => return invalid("the name contains a '..' component, which could leave the target directory"),
            _ if component.len() > MAX_COMPONENT_BYTES => return invalid("a path component is longer than 255 bytes"),
            _ => {}
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ordinary_names_pass() {
        for name in [".thing.json", "foo..bar", "dir/file.txt", "a/b/c", "..hidden", "x.."] {
            assert!(check_name(name).is_ok(), "{name}");
        }
    }
    #[test]
    fn traversal_names_fail() {
        let cases = [
            ("..", "'..'"),
            ("../x", "'..'"),
            ("a/../b", "'..'"),
            ("/etc/passwd", "absolute"),
            ("a\0b", "NUL"),
            ("", "empty"),
            ("a//b", "empty path component"),
            ("a/", "empty path component"),
            ("./a", "'.'"),
        ];
        for (name, expected) in cases {
            let message = check_name(name).unwrap_err().to_string();
            assert!(message.contains(expected), "{name:?}: {message}");
        }
    }
}
