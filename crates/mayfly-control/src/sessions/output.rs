//! A job's output as it streams: kept in a bounded buffer so that a client
//! attaching late receives it from the start, and handed to live readers as it
//! arrives.

use std::collections::VecDeque;
use std::io::{self, Write};
use std::sync::{Arc, Mutex};

use tokio::sync::Notify;

pub const STDOUT: u8 = 1;
pub const STDERR: u8 = 2;

/// One piece of output and its position in the stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chunk {
    pub seq: u64,
    pub stream: u8,
    pub data: Vec<u8>,
}

#[derive(Default)]
struct Inner {
    chunks: VecDeque<Chunk>,
    buffered: usize,
    next_seq: u64,
    total_bytes: u64,
    /// The session's end, once known: the last thing readers get.
    ended: Option<serde_json::Value>,
}

pub struct Output {
    inner: Mutex<Inner>,
    notify: Notify,
    limit: usize,
}

/// What a reader gets from [`Output::read_after`].
pub enum Read {
    /// Chunks after the reader's position; `skipped` counts chunks that were
    /// dropped from the buffer before the reader got them.
    Chunks { chunks: Vec<Chunk>, skipped: u64 },
    /// Nothing new yet.
    Wait,
    /// Everything was read and the session ended.
    Ended(serde_json::Value),
}

impl Output {
    pub fn new(limit: usize) -> Arc<Output> {
        Arc::new(Output { inner: Mutex::default(), notify: Notify::new(), limit })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn push(&self, stream: u8, data: &[u8]) {
        let mut inner = self.lock();
        let seq = inner.next_seq;
        inner.next_seq += 1;
        inner.total_bytes += data.len() as u64;
        inner.buffered += data.len();
        inner.chunks.push_back(Chunk { seq, stream, data: data.to_vec() });
        while inner.buffered > self.limit && inner.chunks.len() > 1 {
            let dropped = inner.chunks.pop_front().expect("not empty");
            inner.buffered -= dropped.data.len();
        }
        drop(inner);
        self.notify.notify_waiters();
    }

    pub fn end(&self, end: serde_json::Value) {
        self.lock().ended = Some(end);
        self.notify.notify_waiters();
    }

    /// Bytes the session wrote to standard output and error.
    pub fn total_bytes(&self) -> u64 {
        self.lock().total_bytes
    }

    /// Reads what follows position `after` (the next sequence number wanted).
    pub fn read_after(&self, after: u64) -> Read {
        let inner = self.lock();
        let first = inner.chunks.front().map_or(inner.next_seq, |c| c.seq);
        let chunks: Vec<Chunk> = inner.chunks.iter().filter(|c| c.seq >= after).cloned().collect();
        if !chunks.is_empty() {
            return Read::Chunks { chunks, skipped: first.saturating_sub(after) };
        }
        match &inner.ended {
            Some(end) => Read::Ended(end.clone()),
            None => Read::Wait,
        }
    }

    /// Waits until something new may be readable.
    pub async fn changed(&self, after: u64) {
        let notified = self.notify.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        if !matches!(self.read_after(after), Read::Wait) {
            return;
        }
        notified.await;
    }
}

/// A `Write` for the sandbox's relay threads that feeds an [`Output`], and
/// the session's recording when it has one.
pub struct OutputWriter {
    pub output: Arc<Output>,
    pub stream: u8,
    pub recorder: Option<Arc<Mutex<super::recording::Recorder>>>,
}

impl Write for OutputWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.output.push(self.stream, buf);
        if let Some(recorder) = &self.recorder {
            recorder.lock().unwrap_or_else(|e| e.into_inner()).output(buf);
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn late_readers_see_what_the_buffer_kept_and_what_was_dropped() {
        let output = Output::new(10);
        output.push(STDOUT, b"hello ");
        output.push(STDERR, b"world");
        output.push(STDOUT, b"!");
        let Read::Chunks { chunks, skipped } = output.read_after(0) else { panic!("chunks expected") };
        assert_eq!(skipped, 1, "the oldest chunk no longer fits");
        assert_eq!(chunks.iter().map(|c| c.data.clone()).collect::<Vec<_>>(), vec![b"world".to_vec(), b"!".to_vec()]);
        assert_eq!(output.total_bytes(), 12);
        assert!(matches!(output.read_after(3), Read::Wait));
        output.end(serde_json::json!({"reason": "exited"}));
        assert!(matches!(output.read_after(3), Read::Ended(_)));
    }
}
