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

/// A run directory of a task whose name and component hold escape sequences.
fn hostile_run(dir: &Path) -> std::path::PathBuf {
    let data = common::crate_root().join("tests/hostile/data/ok.jsonl");
    let task = dir.join("task.toml");
    std::fs::write(
        &task,
        format!(
            "name = \"term\\u001b]0;owned\\u0007\"\n\
             [components.system_prompt]\ntext = \"Answer.\\u001b[2J\\rA number.\"\n\
             [agent]\ntype = \"command\"\ncommand = [\"sh\", \"-c\", \"echo '{{\\\"answer\\\": 2}}'\"]\n\
             [data]\nfile = {:?}\nsplit = {{ train = 0.5, val = 0.25, test = 0.25 }}\n\
             [metric]\ntype = \"exact\"\n[optimizer]\nmodel = \"unused\"\n",
            path(&data)
        ),
    )
    .expect("write task");
    let run = dir.join("run");
    let made = Command::new(env!("CARGO_BIN_EXE_fgo"))
        .args([
            "optimize",
            path(&task),
            "--method",
            "none",
            "-q",
            "--out",
            path(&run),
        ])
        .env_remove("RUST_LOG")
        .output()
        .expect("fgo runs");
    assert!(
        made.status.success(),
        "{}",
        String::from_utf8_lossy(&made.stderr)
    );
    run
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
    let run = hostile_run(dir.path());
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
