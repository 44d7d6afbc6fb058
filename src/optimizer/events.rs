//! The run's append-only event log (`events.jsonl`): one JSON object per line, flushed as
//! each is written.
//!
//! Call and command records are what a resumed run replays; step records describe progress
//! for reports and are rewritten identically by a resumed run, so [`EventLog::open`] keeps
//! only the replayable records of earlier sessions and drops a torn last line (a run killed
//! with `kill -9` mid-write).

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::error::{Error, Result};
use crate::llm::{ChatRequest, Completion, Usage};

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
#[derive(Debug)]
pub struct EventLog {
    path: Option<PathBuf>,
    file: Option<File>,
}

impl EventLog {
    /// A log that writes nowhere (tests, `fgo eval`).
    pub fn none() -> Self {
        Self {
            path: None,
            file: None,
        }
    }

    /// Opens (or creates) `path` for appending and returns the replayable events already in
    /// it. A torn last line is cut off; step and session events are dropped from the file
    /// because the resumed run writes them again.
    pub fn open(path: &Path) -> Result<(Self, Vec<Event>)> {
        let mut kept = Vec::new();
        if path.exists() {
            let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
            let mut sessions = Vec::new();
            for (i, line) in text.lines().enumerate() {
                if line.trim().is_empty() {
                    continue;
                }
                match serde_json::from_str::<Event>(line) {
                    Ok(ev @ (Event::Call(_) | Event::Command(_))) => kept.push(ev),
                    Ok(ev @ Event::Session { .. }) => sessions.push(ev),
                    Ok(Event::Step(_)) => {}
                    // Only a torn final line is expected; anything else is corruption.
                    Err(e) if i + 1 < text.lines().count() => {
                        return Err(Error::Data {
                            file: path.to_path_buf(),
                            line: i + 1,
                            reason: format!("corrupt event: {e}"),
                        })
                    }
                    Err(_) => {}
                }
            }
            let mut rewritten = String::new();
            for ev in sessions.iter().chain(&kept) {
                rewritten.push_str(&serde_json::to_string(ev).map_err(json_err(path))?);
                rewritten.push('\n');
            }
            let tmp = path.with_extension("jsonl.tmp");
            std::fs::write(&tmp, rewritten).map_err(|e| Error::io(&tmp, e))?;
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
                file: Some(file),
            },
            kept,
        ))
    }

    /// Appends one event and flushes it to the operating system.
    pub fn append(&mut self, event: &Event) -> Result<()> {
        let (Some(file), Some(path)) = (&mut self.file, &self.path) else {
            return Ok(());
        };
        let mut line = serde_json::to_string(event).map_err(json_err(path))?;
        line.push('\n');
        file.write_all(line.as_bytes())
            .map_err(|e| Error::io(path, e))?;
        file.flush().map_err(|e| Error::io(path, e))
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
}
