//! Reading the small text files of /proc and of the cgroup filesystems.

use std::fs::File;
use std::io::{self, Read};
use std::path::Path;

/// Reads a text file of /proc or of a cgroup filesystem, usually with two
/// reads.
///
/// /proc reports a size of 0 for its files, so `fs::read_to_string` calls
/// statx for the metadata, then starts with a 32-byte read and doubles the
/// size of each next one: eight reads for a file of 1.5 KiB. The sandbox's
/// launch, init and teardown read about a dozen of these files.
pub fn read(path: impl AsRef<Path>) -> io::Result<String> {
    let mut file = File::open(path)?;
    // Most of these files fit the first read, which needs no allocation
    // beyond the returned string.
    // A read may return less than the file contains, so the loop stops only
    // at end of file.
    let mut first = [0u8; 4096];
    let mut length = 0;
    while length < first.len() {
        match read_some(&mut file, &mut first[length..])? {
            0 => return String::from_utf8(first[..length].to_vec()).map_err(|error| io::Error::new(io::ErrorKind::InvalidData, error)),
            read => length += read,
        }
    }
    let mut bytes = first.to_vec();
    loop {
        if length == bytes.len() {
            bytes.resize(bytes.len() * 2, 0);
        }
        match read_some(&mut file, &mut bytes[length..])? {
            0 => break,
            read => length += read,
        }
    }
    bytes.truncate(length);
    String::from_utf8(bytes).map_err(|error| io::Error::new(io::ErrorKind::InvalidData, error))
}

/// Reads once into `buffer`, again when a signal interrupted the read.
fn read_some(file: &mut File, buffer: &mut [u8]) -> io::Result<usize> {
    loop {
        match file.read(buffer) {
            Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
            result => return result,
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn reads_small_and_large_files_whole() {
        let status = super::read("/proc/self/status").unwrap();
        assert!(status.starts_with("Name:"), "{status}");
        assert!(status.contains("\nPid:"), "{status}");
        // /proc/self/smaps is far longer than the first buffer.
        let smaps = super::read("/proc/self/smaps").unwrap();
        assert!(smaps.len() > 4096, "{} bytes", smaps.len());
        assert!(smaps.trim_end().lines().last().is_some_and(|line| line.starts_with("VmFlags:")), "the last mapping is cut off");
    }

    #[test]
    fn missing_file_is_an_error() {
        assert_eq!(super::read("/proc/self/no-such-file").unwrap_err().kind(), std::io::ErrorKind::NotFound);
    }
}
