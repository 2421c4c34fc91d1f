//! `mayfly shell` end to end under a real pseudo-terminal: run a command,
//! read its output, resize, reach the deadline, see the end reason, and find
//! the local terminal restored.

mod common;

use std::io::{Read, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::server;
use common::Scratch;
use nix::pty::openpty;
use nix::sys::termios::{tcgetattr, LocalFlags};

/// Collects what the client writes to its terminal, on a thread.
fn reader(master: OwnedFd) -> mpsc::Receiver<Vec<u8>> {
    let (sender, receiver) = mpsc::channel();
    let mut file = std::fs::File::from(master);
    std::thread::spawn(move || {
        let mut buffer = [0u8; 4096];
        while let Ok(n) = file.read(&mut buffer) {
            if n == 0 || sender.send(buffer[..n].to_vec()).is_err() {
                return;
            }
        }
    });
    receiver
}

/// Reads until `text` appears or `timeout` passes; returns all text seen.
fn wait_for(receiver: &mpsc::Receiver<Vec<u8>>, seen: &mut String, text: &str, timeout: Duration) -> bool {
    let started = Instant::now();
    while !seen.contains(text) {
        let left = timeout.saturating_sub(started.elapsed());
        match receiver.recv_timeout(left) {
            Ok(bytes) => seen.push_str(&String::from_utf8_lossy(&bytes)),
            Err(_) => return false,
        }
    }
    true
}

fn set_size(master: &impl AsRawFd, rows: u16, cols: u16) {
    let size = libc::winsize { ws_row: rows, ws_col: cols, ws_xpixel: 0, ws_ypixel: 0 };
    // SAFETY: TIOCSWINSZ reads one winsize that lives on this stack.
    unsafe { libc::ioctl(master.as_raw_fd(), libc::TIOCSWINSZ, &size) };
}

#[test]
fn shell_attaches_resizes_and_ends_at_the_deadline() {
    let scratch = Scratch::new("shell-cli");
    let server = server::start(&scratch.state_dir(), &[], &[]);
    let token = server.token().to_string();

    let pty = openpty(None, None).unwrap();
    set_size(&pty.master, 30, 90);
    let slave = pty.slave;
    let mut command = Command::new(common::MAYFLY);
    command
        .args(["shell", "--ttl", "8s"])
        .env("MAYFLY_URL", &server.url)
        .env("MAYFLY_TOKEN", &token)
        .stdin(Stdio::from(slave.try_clone().unwrap()))
        .stdout(Stdio::from(slave.try_clone().unwrap()))
        .stderr(Stdio::from(slave.try_clone().unwrap()));
    // SAFETY: setsid and TIOCSCTTY in the child before exec make the
    // pseudo-terminal its controlling terminal, as a login would.
    unsafe {
        command.pre_exec(|| {
            if libc::setsid() < 0 || libc::ioctl(0, libc::TIOCSCTTY, 0) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut child = command.spawn().unwrap();
    let mut master = std::fs::File::from(pty.master.try_clone().unwrap());
    let output = reader(pty.master);
    let mut seen = String::new();

    assert!(wait_for(&output, &mut seen, "Ctrl-] detaches", Duration::from_secs(10)), "{seen}");
    std::thread::sleep(Duration::from_millis(500));
    master.write_all(b"echo product=$((6*7)); stty size\r").unwrap();
    assert!(wait_for(&output, &mut seen, "product=42", Duration::from_secs(10)), "{seen}");
    assert!(wait_for(&output, &mut seen, "30 90", Duration::from_secs(10)), "the session takes the terminal's size: {seen}");

    // Resizing the local terminal reaches the remote one.
    set_size(&master, 45, 120);
    std::thread::sleep(Duration::from_millis(300));
    master.write_all(b"stty size\r").unwrap();
    assert!(wait_for(&output, &mut seen, "45 120", Duration::from_secs(10)), "{seen}");

    // The deadline ends the session; the client says why and exits with 124.
    assert!(wait_for(&output, &mut seen, "reached its deadline", Duration::from_secs(15)), "{seen}");
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        assert!(started.elapsed() < Duration::from_secs(10), "the client did not exit");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(status.code(), Some(124), "{seen}");

    // The local terminal is back in its normal mode.
    let modes = tcgetattr(&slave).unwrap();
    assert!(modes.local_flags.contains(LocalFlags::ICANON | LocalFlags::ECHO), "raw mode was not undone: {:?}", modes.local_flags);

    // An ended session cannot be attached again, and says why.
    let id = seen.split("session ").nth(1).and_then(|rest| rest.split_whitespace().next()).unwrap().to_string();
    let again = server.cli(&token).args(["attach", &id]).output().unwrap();
    assert_eq!(again.status.code(), Some(118), "{}", server::output_text(&again));
    let message = String::from_utf8_lossy(&again.stderr);
    assert!(message.contains("is gone") && message.contains("deadline"), "{message}");
}

#[test]
fn shell_output_arrives_whole_up_to_the_exit() {
    let scratch = Scratch::new("shell-drain");
    let server = server::start(&scratch.state_dir(), &[], &[]);
    let token = server.token().to_string();
    // The last output of a shell that exits at once must not be cut off.
    for round in 0..10 {
        let script = format!("echo 'seq 1 3000; echo FINAL-$((40+{round})); exit 5' | {} shell --ttl 60s", common::MAYFLY);
        let output = Command::new("sh").arg("-c").arg(script).env("MAYFLY_URL", &server.url).env("MAYFLY_TOKEN", &token).output().unwrap();
        assert_eq!(output.status.code(), Some(5), "round {round}: {}", server::output_text(&output));
        let text = String::from_utf8_lossy(&output.stdout);
        assert!(text.contains(&format!("FINAL-{}", 40 + round)), "round {round}: the end was lost: {}", &text[text.len().saturating_sub(200)..]);
    }
    // Input from /dev/null ends the shell at once with an end-of-file.
    let output = server.cli(&token).args(["shell", "--ttl", "60s"]).output().unwrap();
    assert_eq!(output.status.code(), Some(0), "{}", server::output_text(&output));
}
