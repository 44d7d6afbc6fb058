//! Text read from files reaches a terminal with its control characters escaped (a task
//! name or component holding an escape sequence cannot drive the terminal), and reaches a
//! pipe unchanged.

use std::io::Read;
use std::os::fd::{FromRawFd, OwnedFd};
use std::path::Path;
use std::process::{Command, Stdio};

mod common;

fn path(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

/// Runs fgo with standard output on a new pseudo-terminal; returns what the terminal got.
fn on_a_terminal(args: &[&str]) -> String {
    let (mut master, mut slave) = (-1, -1);
    // SAFETY: openpty writes two new descriptors into the given integers.
    let rc = unsafe {
        libc::openpty(
            &mut master,
            &mut slave,
            std::ptr::null_mut(),
            std::ptr::null(),
            std::ptr::null(),
        )
    };
    assert_eq!(rc, 0, "openpty: {}", std::io::Error::last_os_error());
    // SAFETY: both descriptors are fresh and owned here alone.
    let (master, slave) = unsafe { (OwnedFd::from_raw_fd(master), OwnedFd::from_raw_fd(slave)) };
    let mut child = Command::new(env!("CARGO_BIN_EXE_fgo"))
        .args(args)
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .stdout(Stdio::from(slave))
        .stderr(Stdio::piped())
        .spawn()
        .expect("fgo runs");
    let reader = std::thread::spawn(move || {
        let mut file = std::fs::File::from(master);
        let mut got = Vec::new();
        let mut buf = [0u8; 4096];
        // Reading the master fails with EIO once the last writer has closed the terminal.
        while let Ok(n) = file.read(&mut buf) {
            if n == 0 {
                break;
            }
            got.extend_from_slice(&buf[..n]);
        }
        got
    });
    let status = child.wait().expect("fgo ends");
    assert!(status.success(), "fgo {args:?}: {status}");
    String::from_utf8(reader.join().expect("reader")).expect("utf-8 on the terminal")
}

#[test]
fn a_report_on_a_terminal_is_escaped_and_in_a_pipe_unchanged() {
    let dir = tempfile::tempdir().expect("tempdir");
    let run = common::command_agent_run(
        dir.path(),
        "term\\u001b]0;owned\\u0007",
        "Answer.\\u001b[2J\\rA number.",
    );
    let shown = on_a_terminal(&["report", path(&run)]);
    assert!(shown.contains("term\\u{1b}]0;owned\\u{7}"), "{shown}");
    assert!(
        !shown.contains('\u{1b}') && !shown.contains('\u{7}'),
        "{shown:?}"
    );
    assert!(shown.lines().count() > 3, "lines are kept: {shown}");

    let piped = Command::new(env!("CARGO_BIN_EXE_fgo"))
        .args(["report", path(&run)])
        .env_remove("RUST_LOG")
        .output()
        .expect("fgo runs");
    let piped = String::from_utf8(piped.stdout).expect("utf-8");
    assert!(piped.contains("term\u{1b}]0;owned\u{7}"), "{piped:?}");
}
