//! The run's append-only event log (`events.jsonl`): one JSON object per line, flushed as
//! each is written.
//!
//! Call and command records are what a resumed run replays; step records describe progress
//! for reports and are rewritten identically by a resumed run, so [`EventLog::open`] keeps
//! only the replayable records of earlier sessions and drops a torn last line (a run killed
//! with `kill -9` mid-write).
//!
//! A failed append (a full disk, a file size limit) is returned to the caller and remembered:
//! every later append is refused without writing, so the log ends at most with one torn line,
//! which [`EventLog::open`] drops, and the run can be resumed from what was recorded.

use std::fs::OpenOptions;
use std::io::{BufRead, BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::error::{Error, Result};
use crate::llm::{ChatRequest, Completion, Usage};

/// The longest line the log reads back (a call record holds a prompt and a completion; an
/// agent command's output is capped well below it).
pub const EVENT_LINE_LIMIT: u64 = 64 << 20;

/// One line of the log.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Event {
    /// A session (first run or a resume) began.
    Session {
        session: usize,
        method: String,
        seed: u64,
        data_fingerprint: String,
    },
    /// One LLM call finished.
    Call(Box<CallRecord>),
    /// One external agent command finished.
    Command(CommandRecord),
    /// A step of the optimization (for reports; not replayed).
    Step(Value),
}

/// A finished LLM call.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CallRecord {
    /// Hash of (role, model name, request).
    pub key: String,
    pub method: String,
    pub stage: String,
    pub role: String,
    pub model: String,
    pub request: ChatRequest,
    /// The completion, or the engine's error message.
    pub result: Result<Completion, String>,
    pub usage: Usage,
    /// Seconds the engine spent on this request (queue + prefill + decode).
    pub time_s: f64,
    /// Wall seconds since the run began (all sessions), when it finished.
    pub run_elapsed_s: f64,
}

/// A finished external agent command.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CommandRecord {
    /// Hash of (command, input).
    pub key: String,
    pub method: String,
    pub stage: String,
    /// The program's JSON output, or why it failed.
    pub result: Result<Value, String>,
    pub time_s: f64,
    pub run_elapsed_s: f64,
}

/// An append-only, flushed-per-line log file (or nothing, for runs without a directory).
pub struct EventLog {
    path: Option<PathBuf>,
    file: Option<Box<dyn Write + Send>>,
    /// Why an append failed, once one has: no line is written after it.
    failure: Option<String>,
}

impl std::fmt::Debug for EventLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EventLog")
            .field("path", &self.path)
            .field("failure", &self.failure)
            .finish_non_exhaustive()
    }
}

impl EventLog {
    /// A log that writes nowhere (tests, `fgo eval`).
    pub fn none() -> Self {
        Self {
            path: None,
            file: None,
            failure: None,
        }
    }

    /// A log that appends to `writer`, named `path` in errors (tests of failing writes).
    #[cfg(test)]
    pub(crate) fn to_writer(path: &Path, writer: Box<dyn Write + Send>) -> Self {
        Self {
            path: Some(path.to_path_buf()),
            file: Some(writer),
            failure: None,
        }
    }

    /// Opens (or creates) `path` for appending and returns the replayable events already in
    /// it, read one line at a time (a line longer than [`EVENT_LINE_LIMIT`] is an error
    /// naming it). A torn last line is cut off; step events are dropped from the file
    /// because the resumed run writes them again.
    pub fn open(path: &Path) -> Result<(Self, Vec<Event>)> {
        Self::open_limited(path, EVENT_LINE_LIMIT)
    }

    /// [`open`](Self::open) with lines of at most `line_limit` bytes.
    fn open_limited(path: &Path, line_limit: u64) -> Result<(Self, Vec<Event>)> {
        let mut kept = Vec::new();
        if path.exists() {
            let file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
            let mut reader = BufReader::new(file);
            let mut sessions = Vec::new();
            let mut line = Vec::new();
            let mut number = 0;
            loop {
                line.clear();
                let read = (&mut reader)
                    .take(line_limit + 1)
                    .read_until(b'\n', &mut line)
                    .map_err(|e| Error::io(path, e))?;
                if read == 0 {
                    break;
                }
                number += 1;
                let complete = line.last() == Some(&b'\n');
                let at_end = reader
                    .fill_buf()
                    .map_err(|e| Error::io(path, e))?
                    .is_empty();
                let corrupt = |reason: String| Error::Data {
                    file: path.to_path_buf(),
                    line: number,
                    reason,
                };
                if !complete && !at_end {
                    return Err(corrupt(format!(
                        "an event longer than the limit of {line_limit} bytes"
                    )));
                }
                let text = match std::str::from_utf8(&line) {
                    Ok(t) => t.trim(),
                    Err(_) if at_end => break,
                    Err(_) => return Err(corrupt("not UTF-8".into())),
                };
                if text.is_empty() {
                    continue;
                }
                match serde_json::from_str::<Event>(text) {
                    Ok(ev @ (Event::Call(_) | Event::Command(_))) => kept.push(ev),
                    Ok(ev @ Event::Session { .. }) => sessions.push(ev),
                    Ok(Event::Step(_)) => {}
                    // Only a torn final line is expected; anything else is corruption.
                    Err(e) if !at_end => return Err(corrupt(format!("corrupt event: {e}"))),
                    Err(_) => {}
                }
            }
            let tmp = path.with_extension("jsonl.tmp");
            let io_tmp = |e| Error::io(&tmp, e);
            let mut out = BufWriter::new(std::fs::File::create(&tmp).map_err(io_tmp)?);
            for ev in sessions.iter().chain(&kept) {
                serde_json::to_writer(&mut out, ev).map_err(json_err(path))?;
                out.write_all(b"\n").map_err(io_tmp)?;
            }
            out.flush().map_err(io_tmp)?;
            drop(out);
            std::fs::rename(&tmp, path).map_err(|e| Error::io(path, e))?;
            kept.splice(0..0, sessions);
        }
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map_err(|e| Error::io(path, e))?;
        Ok((
            Self {
                path: Some(path.to_path_buf()),
                file: Some(Box::new(file)),
                failure: None,
            },
            kept,
        ))
    }

    /// Appends one event and flushes it to the operating system. After a failed write every
    /// append fails with [`Error::EventLog`] and writes nothing.
    pub fn append(&mut self, event: &Event) -> Result<()> {
        if let Some(e) = self.failure() {
            return Err(e);
        }
        let (Some(file), Some(path)) = (&mut self.file, &self.path) else {
            return Ok(());
        };
        let mut line = serde_json::to_string(event).map_err(json_err(path))?;
        line.push('\n');
        let written = file.write_all(line.as_bytes()).and_then(|()| file.flush());
        if let Err(e) = written {
            self.failure = Some(e.to_string());
            return Err(self.failure().unwrap_or_else(|| Error::io(path.clone(), e)));
        }
        Ok(())
    }

    /// Why the log stopped taking events, once an append has failed.
    pub fn failure(&self) -> Option<Error> {
        let reason = self.failure.clone()?;
        Some(Error::EventLog {
            path: self.path.clone().unwrap_or_default(),
            reason,
        })
    }
}

fn json_err(path: &Path) -> impl Fn(serde_json::Error) -> Error + '_ {
    move |e| Error::RunDir {
        dir: path.to_path_buf(),
        reason: format!("cannot serialise event: {e}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn torn_line_and_steps_are_dropped_on_open() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("events.jsonl");
        let (mut log, old) = EventLog::open(&p).unwrap();
        assert!(old.is_empty());
        let cmd = Event::Command(CommandRecord {
            key: "k".into(),
            method: "fgo".into(),
            stage: "s".into(),
            result: Ok(serde_json::json!({"answer": "1"})),
            time_s: 0.1,
            run_elapsed_s: 0.2,
        });
        log.append(&cmd).unwrap();
        log.append(&Event::Step(serde_json::json!({"x": 1})))
            .unwrap();
        drop(log);
        let mut text = std::fs::read_to_string(&p).unwrap();
        text.push_str("{\"type\":\"comm");
        std::fs::write(&p, text).unwrap();
        let (_, events) = EventLog::open(&p).unwrap();
        assert_eq!(events, vec![cmd]);
        assert_eq!(std::fs::read_to_string(&p).unwrap().lines().count(), 1);
    }

    /// A line over the limit is an error naming the line, wherever it is; a line that is not
    /// UTF-8 is one before the end and a torn line (dropped) at the end.
    #[test]
    fn overlong_and_binary_lines_are_refused_unless_torn_at_the_end() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("events.jsonl");
        let good = serde_json::to_string(&command("a")).unwrap();
        let limit = good.len() as u64 + 1;
        // (file, the line and reason of the expected error; none: opens to one event)
        type Case = (Vec<u8>, Option<(usize, &'static str)>);
        let cases: [Case; 4] = [
            (
                format!("{good}\n{}\n{good}\n", "x".repeat(1000)).into_bytes(),
                Some((2, "longer than the limit")),
            ),
            (
                [good.as_bytes(), b"\n\xff\xfe\n", good.as_bytes(), b"\n"].concat(),
                Some((2, "not UTF-8")),
            ),
            (
                format!("{good}\n{}", "x".repeat(1000)).into_bytes(),
                Some((2, "longer than the limit")),
            ),
            ([good.as_bytes(), b"\n{\"type\xff"].concat(), None),
        ];
        for (bytes, expected) in cases {
            std::fs::write(&p, &bytes).unwrap();
            match (EventLog::open_limited(&p, limit), expected) {
                (Err(e), Some((line, reason))) => {
                    let m = e.to_string();
                    assert!(m.contains(reason) && m.contains(&format!(":{line}")), "{m}");
                    assert_eq!(std::fs::read(&p).unwrap(), bytes, "the log was rewritten");
                }
                (Ok((_, events)), None) => assert_eq!(events, vec![command("a")]),
                (Err(e), None) => panic!("refused a torn last line: {e}"),
                (Ok(_), Some(_)) => panic!("accepted {:?}", String::from_utf8_lossy(&bytes)),
            }
        }
    }

    /// A value read back from the log and written again reads back the same (found by the
    /// `event_log` fuzz target: without exact float parsing, 3e26 went to 3.0000000000000003e26
    /// on each rewrite, and an agent's numeric output could change between sessions).
    #[test]
    fn floats_survive_the_rewrite_exactly() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("events.jsonl");
        let line = r#"{"type":"command","key":"k","method":"fgo","stage":"s","result":{"Ok":{"answer":0.30000000000000004}},"time_s":0.1,"run_elapsed_s":299999999999999999999999999}"#;
        std::fs::write(&p, format!("{line}\n")).unwrap();
        let (_, first) = EventLog::open(&p).unwrap();
        let (_, second) = EventLog::open(&p).unwrap();
        assert_eq!(first, second);
        let Event::Command(c) = &first[0] else {
            panic!("{first:?}")
        };
        assert_eq!(c.run_elapsed_s, 299999999999999999999999999f64);
        assert_eq!(
            c.result,
            Ok(serde_json::json!({"answer": 0.30000000000000004}))
        );
    }

    /// Takes the first `room` bytes written, then fails as a full disk does.
    struct FillsUp {
        kept: std::sync::Arc<std::sync::Mutex<Vec<u8>>>,
        room: usize,
    }

    impl Write for FillsUp {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            let mut kept = self.kept.lock().unwrap();
            let n = buf.len().min(self.room - kept.len());
            if n == 0 {
                return Err(std::io::Error::from_raw_os_error(libc::ENOSPC));
            }
            kept.extend_from_slice(&buf[..n]);
            Ok(n)
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    fn command(key: &str) -> Event {
        Event::Command(CommandRecord {
            key: key.into(),
            method: "fgo".into(),
            stage: "s".into(),
            result: Ok(serde_json::json!({"answer": "1"})),
            time_s: 0.1,
            run_elapsed_s: 0.2,
        })
    }

    #[test]
    fn a_failed_append_stops_the_log_and_leaves_it_resumable() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("events.jsonl");
        let first = command("a");
        let room = serde_json::to_string(&first).unwrap().len() + 1 + 10;
        let kept = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let writer = FillsUp {
            kept: kept.clone(),
            room,
        };
        let mut log = EventLog::to_writer(&p, Box::new(writer));
        log.append(&first).unwrap();
        assert!(log.failure().is_none());
        let err = log.append(&command("b")).expect_err("the disk is full");
        assert!(matches!(err, Error::EventLog { .. }), "{err}");
        let message = err.to_string();
        assert_eq!(message.lines().count(), 1, "{message}");
        assert!(message.contains("events.jsonl"), "{message}");
        assert!(message.contains("No space left"), "{message}");
        // Nothing is written after the torn line, even once there would be room again.
        let written = std::mem::take(&mut *kept.lock().unwrap());
        assert_eq!(written.len(), room, "the second line was torn");
        assert!(log.append(&command("c")).is_err());
        assert!(log.failure().is_some());
        assert!(
            kept.lock().unwrap().is_empty(),
            "an append after a failure wrote"
        );
        // What was written opens as a log holding the first event only.
        std::fs::write(&p, written).unwrap();
        let (_, events) = EventLog::open(&p).unwrap();
        assert_eq!(events, vec![first]);
    }
}
