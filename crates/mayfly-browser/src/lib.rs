//! Chromium in a browser session, driven over the DevTools protocol through
//! the pipe that `--remote-debugging-pipe` opens at the command's descriptors
//! 3 and 4. No debugging port exists anywhere.

pub mod automation;
mod base64;
pub mod cdp;
pub mod driver;
pub mod files;
pub mod input;
mod screencast;
pub mod tabs;

pub use automation::Automation;
pub use driver::{sanitize_filename, Browser, Frame, Notice, Notify, Options, Status};
pub use files::{enable_file_chooser, is_download_id, Download, DownloadMode, DownloadState, FileChooser, FileSettings};
pub use input::{check_url, Input};
pub use tabs::{TabInfo, Tabs};
