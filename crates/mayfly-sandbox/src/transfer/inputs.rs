//! `--input`: files opened on the host and handed to init, which copies them
//! into /work before the command starts.

use std::fs::File;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::PathBuf;

use mayfly_core::ByteSize;

use super::{check_name, TransferError};

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
        .map_err(|source| {
            // A path with a colon in it, given without a name, was split wrongly.
            if source.kind() == std::io::ErrorKind::NotFound && argument.contains(':') && std::path::Path::new(argument).is_file() {
                return TransferError::InputColonInPath { path: path.clone(), whole: argument.to_string() };
            }
            TransferError::InputOpen { path: path.clone(), source }
        })?;
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn input_argument_takes_optional_name() {
        assert_eq!(parse_input("/tmp/data.csv").unwrap(), (PathBuf::from("/tmp/data.csv"), "data.csv".to_string()));
        assert_eq!(parse_input("/tmp/data.csv:in/d.csv").unwrap(), (PathBuf::from("/tmp/data.csv"), "in/d.csv".to_string()));
        assert_eq!(parse_input("/tmp/a:b.txt:ab.txt").unwrap(), (PathBuf::from("/tmp/a:b.txt"), "ab.txt".to_string()));
        assert!(parse_input("/tmp/x:../escape").is_err());
        assert!(parse_input("/tmp/x:/abs").is_err());
    }

    fn message(arguments: &[&str]) -> String {
        let arguments: Vec<String> = arguments.iter().map(|a| a.to_string()).collect();
        open_inputs(&arguments, 1 << 20).unwrap_err().to_string()
    }

    #[test]
    fn colon_in_path_suggests_name() {
        let dir = std::env::temp_dir().join(format!("mayfly-input-colon-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("a:b.txt");
        std::fs::write(&file, "x").unwrap();
        let text = message(&[file.to_str().unwrap()]);
        let named = open_inputs(&[format!("{}:b.txt", file.display())], 1 << 20);
        std::fs::remove_dir_all(&dir).unwrap();
        assert!(text.contains("name the file too"), "{text}");
        assert!(text.contains(&format!("--input '{}:NAME'", file.display())), "{text}");
        assert_eq!(named.unwrap()[0].name, "b.txt");
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
        assert!(text.contains("--input"), "{text}");
        assert!(text.contains("'..'"), "{text}");
    }

    #[test]
    fn input_limit_is_shown_with_units() {
        let arguments = vec!["/etc/hostname".to_string()];
        let text = open_inputs(&arguments, 1).unwrap_err().to_string();
        assert!(text.contains("limit of 1B (limits.inputs)"), "{text}");
    }
}
