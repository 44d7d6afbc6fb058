//! The JSON command protocol of command agents and command metrics: a program (no shell)
//! reads one JSON value on stdin and prints one on stdout, within a time limit.

use std::io::{Read, Write};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::Value;
use wait_timeout::ChildExt;

use crate::error::{Error, Result};

/// The longest timeout of one agent or metric command, in seconds: a day.
pub const MAX_TIMEOUT_S: f64 = 86_400.0;

pub(crate) fn default_timeout_s() -> f64 {
    60.0
}

/// The default of `max_output_bytes`: the most bytes of a command's standard output kept;
/// more is counted and reported, not stored.
pub const DEFAULT_OUTPUT_BYTES: u64 = 1 << 20;

/// The largest `max_output_bytes` a task file may set.
pub const MAX_OUTPUT_BYTES: u64 = 64 << 20;

pub(crate) fn default_output_bytes() -> u64 {
    DEFAULT_OUTPUT_BYTES
}

/// Whether `n` is the default (left out of the task recorded in a run directory, so that
/// runs recorded before the field existed still match).
pub(crate) fn is_default_output_bytes(n: &u64) -> bool {
    *n == DEFAULT_OUTPUT_BYTES
}

/// Checks a `max_output_bytes` value; the reason names the field.
pub fn check_output_bytes(n: u64) -> std::result::Result<(), String> {
    if n == 0 || n > MAX_OUTPUT_BYTES {
        Err(format!(
            "max_output_bytes must be between 1 and {MAX_OUTPUT_BYTES} ({} MiB)",
            MAX_OUTPUT_BYTES >> 20
        ))
    } else {
        Ok(())
    }
}

/// How long a command may run and how much of its output is kept.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Limits {
    pub timeout: Duration,
    pub output_bytes: usize,
}

impl Limits {
    /// The limits of a task file's `timeout_s` and `max_output_bytes` (both validated).
    pub fn of(timeout_s: f64, max_output_bytes: u64) -> Self {
        Self {
            timeout: Duration::from_secs_f64(timeout_s),
            output_bytes: usize::try_from(max_output_bytes.min(MAX_OUTPUT_BYTES))
                .unwrap_or(usize::MAX),
        }
    }
}

/// The most bytes of a command's standard error kept (its tail goes into errors).
const COMMAND_STDERR_LIMIT: usize = 64 << 10;

/// How long output still held open by a command's leftover children is waited for once
/// the command itself has exited and its process group has been killed.
const PIPE_GRACE: Duration = Duration::from_secs(1);

/// What a reader thread took from a pipe: the kept bytes and how many there were in all.
#[derive(Default)]
struct Captured {
    kept: Vec<u8>,
    total: u64,
}

/// A pipe being read on a thread.
struct Capture {
    shared: Arc<std::sync::Mutex<Captured>>,
    done: std::sync::mpsc::Receiver<()>,
}

impl Capture {
    /// Reads `pipe` to its end on a thread, keeping the first `limit` bytes and only
    /// counting the rest (so the writer never blocks on a full pipe).
    fn start(pipe: Option<impl Read + Send + 'static>, limit: usize) -> Self {
        let shared = Arc::new(std::sync::Mutex::new(Captured::default()));
        let (tx, done) = std::sync::mpsc::channel();
        let sink = shared.clone();
        std::thread::spawn(move || {
            if let Some(mut pipe) = pipe {
                let mut buf = [0u8; 64 << 10];
                loop {
                    match pipe.read(&mut buf) {
                        Ok(0) => break,
                        Ok(n) => {
                            let mut c = sink.lock().unwrap_or_else(|p| p.into_inner());
                            let room = limit.saturating_sub(c.kept.len()).min(n);
                            c.kept.extend_from_slice(&buf[..room]);
                            c.total += n as u64;
                        }
                        Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                        Err(_) => break,
                    }
                }
            }
            let _ = tx.send(());
        });
        Self { shared, done }
    }

    /// What was read once the pipe closed, or by `deadline` if a process outside the
    /// command's group still holds it open.
    fn finish(self, deadline: Instant) -> Captured {
        let _ = self
            .done
            .recv_timeout(deadline.saturating_duration_since(Instant::now()));
        let mut c = self.shared.lock().unwrap_or_else(|p| p.into_inner());
        std::mem::take(&mut *c)
    }
}

/// Sends SIGKILL to every process of the process group `pgid`.
fn kill_group(pgid: u32) {
    let Ok(pgid) = libc::pid_t::try_from(pgid) else {
        return;
    };
    // SAFETY: kill(2) has no memory effects; a negative pid names the group the child
    // leads (made with `process_group(0)`), never this process's own group.
    unsafe {
        libc::kill(-pgid, libc::SIGKILL);
    }
}

/// Runs `command` (no shell) with `input` as JSON on stdin and parses its stdout as JSON;
/// a non-zero exit, a timeout or non-JSON output is an error.
///
/// The command runs in its own process group. On a timeout the whole group is killed, and
/// once the command exits its leftover children are killed too, so a background process
/// holding the output pipe open can neither outlive the timeout nor make the wait hang.
/// At most `limits.output_bytes` of output are kept: more is an error that says how much
/// was printed (the output itself is dropped, never stored).
pub fn run_json_command(command: &[String], input: &Value, limits: Limits) -> Result<Value> {
    let timeout = limits.timeout;
    use std::os::unix::process::CommandExt;
    let name = command.join(" ");
    let err = |reason: String| Error::Command {
        command: name.clone(),
        reason,
    };
    let (program, args) = command
        .split_first()
        .ok_or_else(|| err("empty command".into()))?;
    let mut child = Command::new(program)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .spawn()
        .map_err(|e| err(format!("cannot start: {e}")))?;
    let pgid = child.id();
    let body = input.to_string();
    let mut stdin = child.stdin.take();
    // Detached: a command that never reads its input must not keep this call waiting.
    std::thread::spawn(move || {
        if let Some(s) = stdin.as_mut() {
            let _ = s.write_all(body.as_bytes());
        }
    });
    let stdout = Capture::start(child.stdout.take(), limits.output_bytes);
    let stderr = Capture::start(child.stderr.take(), COMMAND_STDERR_LIMIT);
    let waited = child.wait_timeout(timeout);
    // The command has exited (or is to be stopped): nothing of its group may run on.
    kill_group(pgid);
    let status = match waited.map_err(|e| err(e.to_string()))? {
        Some(s) => s,
        None => {
            let _ = child.kill();
            let _ = child.wait();
            return Err(err(format!(
                "timed out after {:.1}s",
                timeout.as_secs_f64()
            )));
        }
    };
    // A process that left the group (setsid) may still hold a pipe: wait a little, then
    // go on with what was printed rather than hang.
    let deadline = Instant::now() + PIPE_GRACE;
    let out = stdout.finish(deadline);
    let stderr_text = stderr.finish(deadline);
    let stderr_text = String::from_utf8_lossy(&stderr_text.kept);
    if !status.success() {
        let tail: String = crate::error::printable(stderr_text.trim())
            .chars()
            .rev()
            .take(300)
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .collect();
        return Err(err(format!("exited with {status}: {tail}")));
    }
    if out.total > out.kept.len() as u64 {
        return Err(err(format!(
            "printed {} bytes, more than max_output_bytes ({}); the output was dropped",
            out.total, limits.output_bytes
        )));
    }
    let text = String::from_utf8_lossy(&out.kept);
    serde_json::from_str(text.trim()).map_err(|e| err(format!("output is not JSON: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn within(timeout: Duration) -> Limits {
        Limits {
            timeout,
            output_bytes: DEFAULT_OUTPUT_BYTES as usize,
        }
    }

    #[test]
    fn command_errors_are_reported() {
        let sh = |s: &str| vec!["sh".to_string(), "-c".to_string(), s.to_string()];
        let v = run_json_command(
            &sh("cat >/dev/null; echo '{\"answer\": 1}'"),
            &Value::Null,
            within(Duration::from_secs(5)),
        )
        .unwrap();
        assert_eq!(v["answer"], 1);
        let e = run_json_command(&sh("exit 3"), &Value::Null, within(Duration::from_secs(5)))
            .unwrap_err();
        assert!(e.to_string().contains("exited"), "{e}");
        let e = run_json_command(
            &sh("sleep 5"),
            &Value::Null,
            within(Duration::from_millis(200)),
        )
        .unwrap_err();
        assert!(e.to_string().contains("timed out"), "{e}");
        let e = run_json_command(
            &sh("echo nope"),
            &Value::Null,
            within(Duration::from_secs(5)),
        )
        .unwrap_err();
        assert!(e.to_string().contains("not JSON"), "{e}");
    }

    fn sh(script: &str) -> Vec<String> {
        vec!["sh".to_string(), "-c".to_string(), script.to_string()]
    }

    /// Whether process `pid` still exists (a zombie of another parent counts as gone).
    fn alive(pid: i32) -> bool {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
        !status.is_empty() && !status.contains("State:\tZ")
    }

    #[test]
    fn a_background_child_holding_stdout_does_not_hold_the_call() {
        let started = Instant::now();
        let v = run_json_command(
            &sh("sleep 1000 & echo '{\"answer\": 2}'"),
            &Value::Null,
            within(Duration::from_secs(30)),
        )
        .unwrap();
        assert_eq!(v["answer"], 2);
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "{:?}",
            started.elapsed()
        );
    }

    #[test]
    fn a_grandchild_outside_the_group_costs_at_most_the_grace_and_loses_nothing() {
        let started = Instant::now();
        let v = run_json_command(
            &sh("setsid sleep 3 & echo '{\"answer\": 2}'"),
            &Value::Null,
            within(Duration::from_secs(30)),
        )
        .unwrap();
        assert_eq!(v["answer"], 2);
        let took = started.elapsed();
        assert!(took < PIPE_GRACE + Duration::from_millis(900), "{took:?}");
    }

    #[test]
    fn a_timeout_kills_the_whole_process_group() {
        let dir = tempfile::tempdir().unwrap();
        let pid_file = dir.path().join("pid");
        let script = format!(
            "sh -c 'echo $$ > {0}; exec sleep 1000' & while [ ! -s {0} ]; do :; done; sleep 1000",
            pid_file.display()
        );
        let started = Instant::now();
        let e = run_json_command(
            &sh(&script),
            &Value::Null,
            within(Duration::from_millis(500)),
        )
        .unwrap_err();
        assert!(e.to_string().contains("timed out after 0.5s"), "{e}");
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "{:?}",
            started.elapsed()
        );
        let pid: i32 = std::fs::read_to_string(&pid_file)
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(5);
        while alive(pid) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        assert!(!alive(pid), "the grandchild {pid} outlived the timeout");
    }

    #[test]
    fn output_beyond_the_cap_is_counted_not_kept() {
        let e = run_json_command(
            &sh("head -c 200000000 /dev/zero"),
            &Value::Null,
            within(Duration::from_secs(60)),
        )
        .unwrap_err();
        assert!(
            e.to_string()
                .contains("printed 200000000 bytes, more than max_output_bytes (1048576)"),
            "{e}"
        );
        // Input the program never reads does not block the call either.
        let big = Value::String("x".repeat(8 << 20));
        let v = run_json_command(&sh("echo '{}'"), &big, within(Duration::from_secs(30))).unwrap();
        assert_eq!(v, serde_json::json!({}));
    }
}
