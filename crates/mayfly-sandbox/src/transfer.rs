//! Files that cross the sandbox boundary: `--input` copies in and the
//! `--artifacts` export out.
//!
//! Every name is a relative path checked by [`check_name`]. The export is a
//! stream of records written by init after every session process is dead, and
//! the supervisor writes it below the target directory without ever following
//! a symlink or leaving that directory.

use std::ffi::OsStr;
use std::fs::File;
use std::io::{self, BufRead, Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use mayfly_core::ByteSize;
use nix::errno::Errno;
use nix::fcntl::{openat, OFlag};
use nix::sys::stat::{mkdirat, Mode};
use serde::{Deserialize, Serialize};

const MAX_NAME_BYTES: usize = 4096;
const MAX_COMPONENT_BYTES: usize = 255;
const MAX_DEPTH: usize = 64;
/// Maximum length of a record header line read from the stream.
const MAX_HEADER_BYTES: usize = 8192;

#[derive(Debug, thiserror::Error)]
pub enum TransferError {
    #[error("invalid file name {name:?}: {reason}")]
    InvalidName { name: String, reason: &'static str },
    #[error("--input {argument:?}: {source}")]
    InvalidInput { argument: String, source: Box<TransferError> },
    #[error("failed to open {path}: {source}")]
    InputOpen { path: PathBuf, source: io::Error },
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

/// An input file opened on the host, ready to be handed to init.
#[derive(Debug)]
pub struct OpenedInput {
    pub file: File,
    pub name: String,
    pub mode: u32,
    pub size: u64,
}

/// Parses `SOURCE[:NAME]`, splitting at the last colon. Without a name, the
/// file keeps its base name.
pub fn parse_input(argument: &str) -> Result<(PathBuf, String), TransferError> {
    let (source, name) = match argument.rsplit_once(':') {
        Some((source, name)) => (PathBuf::from(source), name.to_string()),
        None => {
            let source = PathBuf::from(argument);
            let name = source
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .ok_or_else(|| TransferError::InvalidName { name: argument.into(), reason: "the path has no file name; write SOURCE:NAME" })?;
            (source, name)
        }
    };
    check_name(&name)?;
    Ok((source, name))
}

/// Opens every input and checks names and the total size before anything is
/// created, so a bad input fails the run before the sandbox exists.
pub fn open_inputs(arguments: &[String], limit: u64) -> Result<Vec<OpenedInput>, TransferError> {
    let mut opened: Vec<OpenedInput> = Vec::new();
    let mut total: u64 = 0;
    for argument in arguments {
        let input = open_input(argument, &opened, &mut total, limit)
            .map_err(|source| TransferError::InvalidInput { argument: argument.clone(), source: Box::new(source) })?;
        opened.push(input);
    }
    Ok(opened)
}

/// Returns whether `inner` names a path below the directory `outer`.
fn is_below(inner: &str, outer: &str) -> bool {
    inner.len() > outer.len() && inner.starts_with(outer) && inner.as_bytes()[outer.len()] == b'/'
}

fn open_input(argument: &str, opened: &[OpenedInput], total: &mut u64, limit: u64) -> Result<OpenedInput, TransferError> {
    let (path, name) = parse_input(argument)?;
    if opened.iter().any(|o| o.name == name) {
        return Err(TransferError::DuplicateInput { name });
    }
    if name == "artifacts" || is_below(&name, "artifacts") {
        return Err(TransferError::ReservedInput { name });
    }
    if let Some(other) = opened.iter().find(|o| is_below(&o.name, &name) || is_below(&name, &o.name)) {
        return Err(TransferError::ConflictingInputs { name, other: other.name.clone() });
    }
    let file = File::options()
        .read(true)
        .custom_flags(libc::O_CLOEXEC)
        .open(&path)
        .map_err(|source| TransferError::InputOpen { path: path.clone(), source })?;
    let metadata = file.metadata().map_err(|source| TransferError::InputOpen { path: path.clone(), source })?;
    if !metadata.is_file() {
        return Err(TransferError::InputNotFile { path });
    }
    *total = total.saturating_add(metadata.len());
    if *total > limit {
        return Err(TransferError::InputsTooLarge { total: ByteSize::bytes(*total), limit: ByteSize::bytes(limit) });
    }
    // Set-id and sticky bits never cross into the sandbox.
    let mode = metadata.mode() & 0o777;
    Ok(OpenedInput { file, name, mode, size: metadata.len() })
}

/// The header of one record in the artifact stream.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "record", rename_all = "snake_case")]
pub enum Record {
    /// A regular file; exactly `size` bytes of content follow the header line.
    File { name: String, size: u64, mode: u32 },
    /// An entry that was not exported, such as a symlink or a device node.
    Skipped { name: String, kind: String },
    /// The end of the stream.
    End { truncated: bool },
}

/// Summary of the files the supervisor wrote below the export directory.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct ExportSummary {
    pub files: Vec<String>,
    pub skipped: Vec<String>,
    pub bytes: u64,
    pub truncated: bool,
}

fn write_header(out: &mut impl Write, record: &Record) -> io::Result<()> {
    let mut line = serde_json::to_vec(record).map_err(io::Error::other)?;
    line.push(b'\n');
    out.write_all(&line)
}

/// Walks `root` (inside the sandbox) and writes every regular file below it as
/// a record, never following symlinks. Stops with `truncated` once the next
/// file would pass `limit` bytes. Returns whether it truncated.
pub fn write_artifacts(root: &Path, limit: u64, out: &mut impl Write) -> io::Result<bool> {
    let mut budget = limit;
    let mut truncated = false;
    let mut stack: Vec<(PathBuf, String)> = vec![(root.to_path_buf(), String::new())];
    while let Some((dir, prefix)) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else { continue };
        let mut entries: Vec<_> = entries.filter_map(Result::ok).collect();
        entries.sort_by_key(|e| e.file_name());
        for entry in entries {
            let file_name = entry.file_name();
            let name = format!("{prefix}{}", file_name.to_string_lossy());
            if check_name(&name).is_err() || file_name.as_bytes().contains(&b'\n') {
                write_header(out, &Record::Skipped { name, kind: "invalid name".into() })?;
                continue;
            }
            let Ok(metadata) = std::fs::symlink_metadata(entry.path()) else { continue };
            let kind = metadata.file_type();
            if kind.is_dir() {
                stack.push((entry.path(), format!("{name}/")));
            } else if kind.is_file() {
                if metadata.len() > budget {
                    truncated = true;
                    write_header(out, &Record::Skipped { name, kind: "over the size limit".into() })?;
                    continue;
                }
                let mut file = match File::options().read(true).custom_flags(libc::O_NOFOLLOW).open(entry.path()) {
                    Ok(file) => file,
                    Err(_) => continue,
                };
                let size = metadata.len();
                budget -= size;
                write_header(out, &Record::File { name, size, mode: metadata.mode() & 0o755 })?;
                let copied = io::copy(&mut (&mut file).take(size), out)?;
                // A file cannot change now, but pad if it shrank so the stream stays framed.
                if copied < size {
                    io::copy(&mut io::repeat(0).take(size - copied), out)?;
                }
            } else {
                let kind = if kind.is_symlink() { "symlink" } else { "special file" };
                write_header(out, &Record::Skipped { name, kind: kind.into() })?;
            }
        }
    }
    write_header(out, &Record::End { truncated })?;
    out.flush()?;
    Ok(truncated)
}

/// Opens (creating where missing) each directory of `name` below `root`,
/// refusing symlinks and anything that is not a directory.
fn open_parent(root: &OwnedFd, name: &str, dir: &Path) -> Result<(OwnedFd, String), TransferError> {
    let mut components: Vec<&str> = name.split('/').collect();
    let file_name = components.pop().unwrap_or_default().to_string();
    let mut current = root.try_clone().map_err(TransferError::Io)?;
    for component in components {
        match mkdirat(current.as_fd(), OsStr::from_bytes(component.as_bytes()), Mode::from_bits_truncate(0o755)) {
            Ok(()) | Err(Errno::EEXIST) => {}
            Err(errno) => {
                return Err(TransferError::ArtifactWrite { name: name.into(), dir: dir.into(), source: errno.into() });
            }
        }
        current = openat(current.as_fd(), OsStr::from_bytes(component.as_bytes()), OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC, Mode::empty())
            .map_err(|_| TransferError::ArtifactUnsafePath { name: name.into() })?;
    }
    Ok((current, file_name))
}

/// Reads an artifact stream and writes its files below `dir`, never
/// following a symlink, never overwriting a file and never writing more than
/// `limit` bytes in all.
pub fn read_artifacts(input: impl Read, dir: &Path, limit: u64) -> Result<ExportSummary, TransferError> {
    std::fs::create_dir_all(dir).map_err(|source| TransferError::ArtifactWrite { name: String::new(), dir: dir.into(), source })?;
    let root: OwnedFd = File::options()
        .read(true)
        .custom_flags(libc::O_DIRECTORY | libc::O_CLOEXEC)
        .open(dir)
        .map_err(|source| TransferError::ArtifactWrite { name: String::new(), dir: dir.into(), source })?
        .into();
    let mut reader = io::BufReader::new(input);
    let mut summary = ExportSummary::default();
    loop {
        let mut line = Vec::new();
        let read = (&mut reader).take(MAX_HEADER_BYTES as u64).read_until(b'\n', &mut line)?;
        if read == 0 {
            return Err(TransferError::Malformed("the stream ended without an end record".into()));
        }
        if line.last() != Some(&b'\n') {
            return Err(TransferError::Malformed("a record header is longer than 8192 bytes".into()));
        }
        let record: Record = serde_json::from_slice(&line).map_err(|e| TransferError::Malformed(e.to_string()))?;
        match record {
            Record::End { truncated } => {
                summary.truncated |= truncated;
                return Ok(summary);
            }
            Record::Skipped { name, kind } => summary.skipped.push(format!("{name} ({kind})")),
            Record::File { name, size, mode } => {
                check_name(&name)?;
                if summary.bytes.saturating_add(size) > limit {
                    return Err(TransferError::ArtifactsTooLarge { limit });
                }
                let (parent, file_name) = open_parent(&root, &name, dir)?;
                let fd = openat(
                    parent.as_fd(),
                    OsStr::from_bytes(file_name.as_bytes()),
                    OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
                    Mode::from_bits_truncate(mode & 0o755),
                )
                .map_err(|errno| match errno {
                    Errno::EEXIST => TransferError::ArtifactExists { name: name.clone(), path: dir.join(&name) },
                    other => TransferError::ArtifactWrite { name: name.clone(), dir: dir.into(), source: other.into() },
                })?;
                let mut file = File::from(fd);
                let copied = io::copy(&mut (&mut reader).take(size), &mut file)?;
                if copied != size {
                    return Err(TransferError::Malformed(format!("artifact {name:?} ended after {copied} of {size} bytes")));
                }
                summary.bytes += size;
                summary.files.push(name);
            }
        }
    }
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

    #[test]
    fn input_argument_takes_optional_name() {
        assert_eq!(parse_input("/tmp/data.csv").unwrap(), (PathBuf::from("/tmp/data.csv"), "data.csv".to_string()));
        assert_eq!(parse_input("/tmp/data.csv:in/d.csv").unwrap(), (PathBuf::from("/tmp/data.csv"), "in/d.csv".to_string()));
        assert_eq!(parse_input("/tmp/a:b.txt:ab.txt").unwrap(), (PathBuf::from("/tmp/a:b.txt"), "ab.txt".to_string()));
        assert!(parse_input("/tmp/x:../escape").is_err());
        assert!(parse_input("/tmp/x:/abs").is_err());
    }

    fn temp_dir(label: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("mayfly-transfer-{label}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn artifacts_round_trip_skips_symlinks() {
        let source = temp_dir("src");
        std::fs::create_dir_all(source.join("sub")).unwrap();
        std::fs::write(source.join("sub/report.txt"), b"hello").unwrap();
        std::fs::write(source.join(".thing.json"), b"{}").unwrap();
        std::os::unix::fs::symlink("/etc/shadow", source.join("link")).unwrap();
        let mut stream = Vec::new();
        assert!(!write_artifacts(&source, 1 << 20, &mut stream).unwrap());

        let target = temp_dir("dst");
        let summary = read_artifacts(stream.as_slice(), &target, 1 << 20).unwrap();
        assert_eq!(std::fs::read(target.join("sub/report.txt")).unwrap(), b"hello");
        assert_eq!(std::fs::read(target.join(".thing.json")).unwrap(), b"{}");
        assert!(!target.join("link").exists());
        assert_eq!(summary.skipped, vec!["link (symlink)".to_string()]);
        std::fs::remove_dir_all(source).unwrap();
        std::fs::remove_dir_all(target).unwrap();
    }

    #[test]
    fn crafted_stream_cannot_escape() {
        let target = temp_dir("escape");
        for name in ["../escaped", "/tmp/escaped", "a/../../escaped"] {
            let mut stream = Vec::new();
            write_header(&mut stream, &Record::File { name: name.into(), size: 1, mode: 0o644 }).unwrap();
            stream.push(b'x');
            write_header(&mut stream, &Record::End { truncated: false }).unwrap();
            let error = read_artifacts(stream.as_slice(), &target, 100).unwrap_err();
            assert!(matches!(error, TransferError::InvalidName { .. }), "{name}: {error}");
        }
        assert!(!target.parent().unwrap().join("escaped").exists());
        std::fs::remove_dir_all(target).unwrap();
    }

    #[test]
    fn export_refuses_symlinked_directory_in_target() {
        let target = temp_dir("symdir");
        let elsewhere = temp_dir("elsewhere");
        std::os::unix::fs::symlink(&elsewhere, target.join("sub")).unwrap();
        let mut stream = Vec::new();
        write_header(&mut stream, &Record::File { name: "sub/x".into(), size: 1, mode: 0o644 }).unwrap();
        stream.push(b'x');
        write_header(&mut stream, &Record::End { truncated: false }).unwrap();
        let error = read_artifacts(stream.as_slice(), &target, 100).unwrap_err();
        assert!(matches!(error, TransferError::ArtifactUnsafePath { .. }), "{error}");
        assert!(!elsewhere.join("x").exists());
        std::fs::remove_dir_all(target).unwrap();
        std::fs::remove_dir_all(elsewhere).unwrap();
    }

    #[test]
    fn export_never_overwrites() {
        let target = temp_dir("exists");
        std::fs::write(target.join("x"), b"keep").unwrap();
        let mut stream = Vec::new();
        write_header(&mut stream, &Record::File { name: "x".into(), size: 1, mode: 0o644 }).unwrap();
        stream.push(b'y');
        let error = read_artifacts(stream.as_slice(), &target, 100).unwrap_err();
        assert!(matches!(error, TransferError::ArtifactExists { .. }), "{error}");
        assert_eq!(std::fs::read(target.join("x")).unwrap(), b"keep");
        std::fs::remove_dir_all(target).unwrap();
    }

    #[test]
    fn export_stops_at_size_limit() {
        let source = temp_dir("big-src");
        std::fs::write(source.join("a"), vec![b'a'; 600]).unwrap();
        std::fs::write(source.join("b"), vec![b'b'; 600]).unwrap();
        let mut stream = Vec::new();
        assert!(write_artifacts(&source, 1000, &mut stream).unwrap());
        let target = temp_dir("big-dst");
        let summary = read_artifacts(stream.as_slice(), &target, 1000).unwrap();
        assert!(summary.truncated);
        assert_eq!(summary.files, vec!["a".to_string()]);
        std::fs::remove_dir_all(source).unwrap();
        std::fs::remove_dir_all(target).unwrap();
    }
}

#[cfg(test)]
mod input_tests {
    use super::*;

    fn message(arguments: &[&str]) -> String {
        let arguments: Vec<String> = arguments.iter().map(|a| a.to_string()).collect();
        open_inputs(&arguments, 1 << 20).unwrap_err().to_string()
    }

    #[test]
    fn conflicting_input_names_are_rejected() {
        let text = message(&["/etc/hostname:a", "/etc/hostname:a/b"]);
        assert!(text.contains("--input \"/etc/hostname:a/b\""), "{text}");
        assert!(text.contains("conflicts with input \"a\""), "{text}");
        let text = message(&["/etc/hostname:d/e", "/etc/hostname:d"]);
        assert!(text.contains("conflicts with input \"d/e\""), "{text}");
    }

    #[test]
    fn artifacts_directory_is_reserved() {
        for name in ["artifacts", "artifacts/a.txt"] {
            let text = message(&[&format!("/etc/hostname:{name}")]);
            assert!(text.contains("inside /work/artifacts"), "{text}");
        }
        assert!(open_inputs(&["/etc/hostname:artifacts.txt".to_string()], 1 << 20).is_ok());
    }

    #[test]
    fn input_errors_name_the_flag() {
        let text = message(&["/nonexistent/file"]);
        assert!(text.starts_with("--input \"/nonexistent/file\": failed to open /nonexistent/file"), "{text}");
        let text = message(&["/etc/hostname:../x"]);
        assert!(text.contains("--input") && text.contains("'..'"), "{text}");
    }

    #[test]
    fn input_limit_is_shown_with_units() {
        let arguments = vec!["/etc/hostname".to_string()];
        let text = open_inputs(&arguments, 1).unwrap_err().to_string();
        assert!(text.contains("limit of 1B (limits.inputs)"), "{text}");
    }
}
