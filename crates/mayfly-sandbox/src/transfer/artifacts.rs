//! `--artifacts`: the stream init writes from /work/artifacts, and the
//! supervisor's side that writes it below the export directory.

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

use super::{check_name, TransferError};

/// Maximum length of a record header line read from the stream.
const MAX_HEADER_BYTES: usize = 8192;


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
                    let kind = format!("would pass the size limit of {} (limits.artifacts)", ByteSize::bytes(limit));
                    write_header(out, &Record::Skipped { name, kind })?;
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
