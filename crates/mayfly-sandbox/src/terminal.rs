//! Terminal sessions: the frames that carry input and window sizes from the
//! supervisor to init, which owns the session's pseudo-terminal.
//!
//! In a terminal session the command's standard input, output and error are
//! the slave side of a pseudo-terminal in the sandbox's own devpts. Init
//! keeps the master side. It copies the master's output to the stdout pipe
//! unchanged, and reads the stdin pipe as a stream of frames: one kind byte
//! (0 for input bytes, 1 for a window size), a length as two big-endian
//! bytes, then the payload. A window size payload is rows and columns, two
//! big-endian bytes each.

use std::io::{self, Read};

use serde::{Deserialize, Serialize};

const DATA: u8 = 0;
const RESIZE: u8 = 1;
/// The most input bytes one frame carries.
pub const MAX_FRAME_DATA: usize = u16::MAX as usize;

/// A terminal's size in character cells.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct WindowSize {
    pub rows: u16,
    pub cols: u16,
}

impl WindowSize {
    /// Checks a size a client asked for: 1 to 1000 rows and columns.
    pub fn checked(rows: u16, cols: u16) -> Option<WindowSize> {
        ((1..=1000).contains(&rows) && (1..=1000).contains(&cols)).then_some(WindowSize { rows, cols })
    }
}

/// One frame of the stdin stream of a terminal session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    Input(Vec<u8>),
    Resize(WindowSize),
}

/// Encodes input bytes as frames, splitting what does not fit in one.
pub fn encode_input(bytes: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(bytes.len() + 3);
    for chunk in bytes.chunks(MAX_FRAME_DATA) {
        out.push(DATA);
        out.extend_from_slice(&(chunk.len() as u16).to_be_bytes());
        out.extend_from_slice(chunk);
    }
    out
}

pub fn encode_resize(size: WindowSize) -> Vec<u8> {
    let mut out = vec![RESIZE, 0, 4];
    out.extend_from_slice(&size.rows.to_be_bytes());
    out.extend_from_slice(&size.cols.to_be_bytes());
    out
}

/// Reads the next frame. Returns `None` at the end of the stream, and an
/// error for a frame that is not one of the two kinds.
pub fn read_frame(reader: &mut impl Read) -> io::Result<Option<Frame>> {
    let mut head = [0u8; 3];
    match reader.read_exact(&mut head) {
        Ok(()) => {}
        Err(error) if error.kind() == io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(error) => return Err(error),
    }
    let length = u16::from_be_bytes([head[1], head[2]]) as usize;
    let mut payload = vec![0u8; length];
    reader.read_exact(&mut payload)?;
    match (head[0], length) {
        (DATA, _) => Ok(Some(Frame::Input(payload))),
        (RESIZE, 4) => Ok(Some(Frame::Resize(WindowSize {
            rows: u16::from_be_bytes([payload[0], payload[1]]),
            cols: u16::from_be_bytes([payload[2], payload[3]]),
        }))),
        (kind, _) => Err(io::Error::new(io::ErrorKind::InvalidData, format!("unknown terminal frame kind {kind} of {length} bytes"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip() {
        let size = WindowSize { rows: 40, cols: 120 };
        let mut stream = encode_input(b"ls -l\r");
        stream.extend(encode_resize(size));
        stream.extend(encode_input(&vec![b'x'; MAX_FRAME_DATA + 10]));
        let mut reader = &stream[..];
        assert_eq!(read_frame(&mut reader).unwrap(), Some(Frame::Input(b"ls -l\r".to_vec())));
        assert_eq!(read_frame(&mut reader).unwrap(), Some(Frame::Resize(size)));
        assert_eq!(read_frame(&mut reader).unwrap().map(|f| matches!(f, Frame::Input(d) if d.len() == MAX_FRAME_DATA)), Some(true));
        assert_eq!(read_frame(&mut reader).unwrap(), Some(Frame::Input(vec![b'x'; 10])));
        assert_eq!(read_frame(&mut reader).unwrap(), None);
    }

    #[test]
    fn unknown_frames_and_sizes_are_rejected() {
        assert!(read_frame(&mut &[7u8, 0, 0][..]).is_err());
        assert!(read_frame(&mut &[RESIZE, 0, 2, 0, 1][..]).is_err());
        assert_eq!(WindowSize::checked(0, 80), None);
        assert_eq!(WindowSize::checked(24, 1001), None);
        assert!(WindowSize::checked(24, 80).is_some());
    }
}
