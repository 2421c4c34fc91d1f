//! Chromium in a browser session, driven over the DevTools protocol through
//! the pipe that `--remote-debugging-pipe` opens at the command's descriptors
//! 3 and 4. No debugging port exists anywhere.

mod base64;
pub mod cdp;
pub mod driver;

pub use driver::{check_url, sanitize_filename, Browser, Frame, Input, Notice, Notify, Status};
