//! The input side of a shell session: frames from attached clients go
//! through a writer thread into the sandbox's stdin pipe. One client at a
//! time may write; input from it is what keeps the session from going idle.

use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::Instant;

use mayfly_sandbox::terminal::{encode_input, encode_resize, WindowSize};

pub struct TerminalInput {
    frames: mpsc::Sender<Vec<u8>>,
    recorder: Option<Arc<Mutex<super::recording::Recorder>>>,
    writer_attached: AtomicBool,
    last_input: Mutex<Instant>,
}

/// Releases the writer slot when the writing client goes away.
pub struct WriterSlot(Arc<TerminalInput>);

impl Drop for WriterSlot {
    fn drop(&mut self) {
        self.0.writer_attached.store(false, Ordering::SeqCst);
    }
}

impl TerminalInput {
    /// Starts the thread that writes frames into the sandbox's stdin pipe.
    pub fn start(mut pipe: std::io::PipeWriter, recorder: Option<Arc<Mutex<super::recording::Recorder>>>) -> Arc<TerminalInput> {
        let (frames, receiver) = mpsc::channel::<Vec<u8>>();
        std::thread::spawn(move || {
            for frame in receiver {
                if pipe.write_all(&frame).is_err() {
                    return;
                }
            }
        });
        Arc::new(TerminalInput { frames, recorder, writer_attached: AtomicBool::new(false), last_input: Mutex::new(Instant::now()) })
    }

    /// Takes the writer slot, or returns `None` when another client has it.
    pub fn claim_writer(self: &Arc<Self>) -> Option<WriterSlot> {
        self.writer_attached.compare_exchange(false, true, Ordering::SeqCst, Ordering::SeqCst).ok().map(|_| WriterSlot(Arc::clone(self)))
    }

    pub fn input(&self, bytes: &[u8]) {
        *self.last_input.lock().unwrap_or_else(|e| e.into_inner()) = Instant::now();
        let _ = self.frames.send(encode_input(bytes));
    }

    pub fn resize(&self, size: WindowSize) {
        let _ = self.frames.send(encode_resize(size));
        if let Some(recorder) = &self.recorder {
            recorder.lock().unwrap_or_else(|e| e.into_inner()).resize(size);
        }
    }

    /// When a client last typed.
    pub fn last_input(&self) -> Instant {
        *self.last_input.lock().unwrap_or_else(|e| e.into_inner())
    }
}
