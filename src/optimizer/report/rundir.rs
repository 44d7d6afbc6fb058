//! The run directory: what a run needs to be resumed and what it produced.
//!
//! ```text
//! RUN_DIR/
//!   task.toml        the task file as run (copied verbatim)
//!   run.json         method, seed, overrides, the task's directory, the data fingerprint and
//!                    the initial components
//!   events.jsonl     the append-only event log (one line per call, flushed per line)
//!   lock             held (`flock`) by the one process running in the directory
//!   best/METHOD/NAME.txt   the best components so far, rewritten atomically
//!   report.json report.md score.svg tokens.svg   written when the run ends
//! ```
//! `fgo resume RUN_DIR` reloads the task from `task.toml` (paths resolved against the
//! original task directory), refuses a task that differs from the one recorded in run.json
//! (unless the change is accepted, which run.json then records) and data whose fingerprint
//! changed, and reruns with the recorded calls answered from the log.
//!
//! An open [`RunDir`] holds an exclusive, non-blocking lock on `RUN_DIR/lock`, so a second
//! process that runs, resumes or re-renders the same directory is refused at once.

use std::fs::{File, OpenOptions};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::error::{read_text, Error, Result};
use crate::optimizer::data::dataset::Dataset;
use crate::optimizer::data::task::{Task, TaskSpec, TASK_FILE_LIMIT};
use crate::optimizer::exec::agent::Components;
use crate::optimizer::exec::calls::Calls;
use crate::optimizer::exec::events::{Event, EventLog};
use crate::optimizer::methods::env::Progress;
use crate::optimizer::report::charts;
use crate::optimizer::report::Method;
use crate::optimizer::report::RunReport;

/// The largest run.json or report.json read (they hold components and per-example scores).
const RUN_FILE_LIMIT: u64 = 256 << 20;

/// `run.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunMeta {
    pub fgo_version: String,
    /// The task file the run was started from.
    pub task_path: PathBuf,
    /// The directory the task's relative paths resolve against.
    pub base_dir: PathBuf,
    pub method: Method,
    pub seed: u64,
    /// `--optimizer-model`, when given.
    pub optimizer_model: Option<String>,
    pub data_fingerprint: String,
    pub initial: Components,
    /// The task as run: the parsed task file (with `--optimizer-model` applied) as JSON;
    /// absent from runs made before it was recorded, which are not checked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub task: Option<Value>,
    /// Changes to the task accepted on resume (`--allow-changed-task`), oldest first.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub task_changes: Vec<TaskChange>,
}

/// A change to the task accepted when the run was resumed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TaskChange {
    /// The dotted fields that differed from the task run before.
    pub fields: Vec<String>,
    /// The task as run from then on.
    pub task: Value,
}

/// An open run directory; it holds the directory's lock until dropped.
pub struct RunDir {
    pub dir: PathBuf,
    pub meta: RunMeta,
    /// Fields in which task.toml differs from the task last run (empty once accepted).
    changed: Vec<String>,
    _lock: RunLock,
}

/// The exclusive lock on `RUN_DIR/lock`, released when dropped (or when the process ends,
/// however it ends).
pub struct RunLock {
    _file: File,
}

impl RunLock {
    /// Takes the lock on `dir/lock` without waiting; a directory whose lock another process
    /// holds is refused.
    pub fn take(dir: &Path) -> Result<Self> {
        let path = dir.join("lock");
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(|e| Error::io(&path, e))?;
        // SAFETY: flock only reads the descriptor, which `file` keeps open.
        let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
        if rc == 0 {
            return Ok(Self { _file: file });
        }
        let e = std::io::Error::last_os_error();
        if e.kind() == std::io::ErrorKind::WouldBlock {
            Err(run_err(
                dir,
                "in use by another fgo process (it holds RUN_DIR/lock); wait for it to end".into(),
            ))
        } else {
            Err(Error::io(&path, e))
        }
    }
}

fn write_atomic(path: &Path, text: &str) -> Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).map_err(|e| Error::io(&tmp, e))?;
    std::fs::rename(&tmp, path).map_err(|e| Error::io(path, e))
}

impl RunDir {
    /// Creates a fresh run directory; one that already holds a run is refused.
    pub fn create(
        dir: &Path,
        task: &Task,
        data: &Dataset,
        method: Method,
        seed: u64,
        optimizer_model: Option<String>,
    ) -> Result<Self> {
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        let lock = RunLock::take(dir)?;
        if dir.join("events.jsonl").exists() {
            return Err(Error::RunDir {
                dir: dir.to_path_buf(),
                reason:
                    "already holds a run; continue it with `fgo resume` or choose another --out"
                        .into(),
            });
        }
        let text = read_text(&task.path, TASK_FILE_LIMIT, "a task file")?;
        write_atomic(&dir.join("task.toml"), &text)?;
        let abs = |p: &Path| std::fs::canonicalize(p).unwrap_or_else(|_| p.to_path_buf());
        let meta = RunMeta {
            fgo_version: env!("CARGO_PKG_VERSION").into(),
            task_path: abs(&task.path),
            base_dir: abs(&task.base_dir),
            method,
            seed,
            optimizer_model,
            data_fingerprint: data.fingerprint(),
            initial: task.initial.clone(),
            task: Some(task_value(dir, &task.spec)?),
            task_changes: Vec::new(),
        };
        let run = Self {
            dir: dir.to_path_buf(),
            meta,
            changed: Vec::new(),
            _lock: lock,
        };
        run.write_meta()?;
        Ok(run)
    }

    /// Opens an existing run and reloads its task (with the recorded overrides applied),
    /// noting where task.toml differs from the task last run: [`RunDir::check_task`] and
    /// [`RunDir::calls`] refuse such a run until [`RunDir::accept_changed_task`].
    pub fn open(dir: &Path) -> Result<(Self, Task)> {
        let meta_path = dir.join("run.json");
        // A directory without a run is reported as such, before a lock file is made in it.
        if !meta_path.is_file() {
            read_text(&meta_path, RUN_FILE_LIMIT, "a run's run.json")?;
        }
        let lock = RunLock::take(dir)?;
        let text = read_text(&meta_path, RUN_FILE_LIMIT, "a run's run.json")?;
        let meta: RunMeta =
            serde_json::from_str(&text).map_err(|e| run_err(dir, format!("run.json: {e}")))?;
        let task_path = dir.join("task.toml");
        let task_text = read_text(&task_path, TASK_FILE_LIMIT, "a task file")?;
        let mut task = Task::from_str(&task_text, &task_path, &meta.base_dir)?;
        if meta.optimizer_model.is_some() {
            task.spec.optimizer.model = meta.optimizer_model.clone();
        }
        task.initial = meta.initial.clone();
        let last = meta
            .task_changes
            .last()
            .map(|c| &c.task)
            .or(meta.task.as_ref());
        let changed = match last {
            Some(last) => changed_fields(last, &task_value(dir, &task.spec)?),
            None => Vec::new(),
        };
        Ok((
            Self {
                dir: dir.to_path_buf(),
                meta,
                changed,
                _lock: lock,
            },
            task,
        ))
    }

    /// Refuses a task.toml that differs from the task last run, naming the first field that
    /// differs.
    pub fn check_task(&self) -> Result<()> {
        let Some(field) = self.changed.first() else {
            return Ok(());
        };
        Err(Error::Task {
            file: self.dir.join("task.toml"),
            field: field.clone(),
            reason: "differs from the task the run was made with; `fgo resume \
                     --allow-changed-task` resumes it anyway"
                .into(),
        })
    }

    /// Accepts a changed task.toml for this and later sessions, recording the change in
    /// run.json; does nothing when the task is unchanged.
    pub fn accept_changed_task(&mut self, task: &Task) -> Result<()> {
        if self.changed.is_empty() {
            return Ok(());
        }
        self.meta.task_changes.push(TaskChange {
            fields: std::mem::take(&mut self.changed),
            task: task_value(&self.dir, &task.spec)?,
        });
        self.write_meta()
    }

    fn write_meta(&self) -> Result<()> {
        let json = serde_json::to_string_pretty(&self.meta)
            .map_err(|e| run_err(&self.dir, e.to_string()))?;
        write_atomic(&self.dir.join("run.json"), &json)
    }

    /// Refuses data that differs from the data the run started with.
    pub fn check_data(&self, data: &Dataset) -> Result<()> {
        if data.fingerprint() == self.meta.data_fingerprint {
            Ok(())
        } else {
            Err(run_err(
                &self.dir,
                "the task's data changed since the run started".into(),
            ))
        }
    }

    /// The call layer over this directory's event log, with earlier calls to replay.
    pub fn calls(&self, data: &Dataset) -> Result<Calls> {
        self.check_task()?;
        let (log, previous) = EventLog::open(&self.dir.join("events.jsonl"))?;
        let session = previous
            .iter()
            .filter(|e| matches!(e, Event::Session { .. }))
            .count()
            + 1;
        let calls = Calls::new(log, previous);
        calls.note(&Event::Session {
            session,
            method: format!("{:?}", self.meta.method),
            seed: self.meta.seed,
            data_fingerprint: data.fingerprint(),
        })?;
        Ok(calls)
    }

    /// Writes `best/METHOD/NAME.txt` for each component.
    pub fn write_best(&self, method: &str, components: &Components) -> Result<()> {
        let dir = self.dir.join("best").join(method);
        std::fs::create_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
        for (name, text) in components {
            write_atomic(&dir.join(format!("{name}.txt")), text)?;
        }
        Ok(())
    }

    /// Writes the report of a run whose session just ended, unless its event log failed:
    /// then the run stopped early and ends with that error, the directory left to resume.
    pub fn finish(&self, calls: &Calls, report: &RunReport) -> Result<()> {
        if let Some(e) = calls.log_failure() {
            return Err(e);
        }
        self.write_report(report)
    }

    /// Writes report.json, report.md and the charts; report.md names the task changes
    /// accepted on resume.
    pub fn write_report(&self, report: &RunReport) -> Result<()> {
        let json =
            serde_json::to_string_pretty(report).map_err(|e| run_err(&self.dir, e.to_string()))?;
        write_atomic(&self.dir.join("report.json"), &json)?;
        let mut markdown = report.to_markdown();
        if !self.meta.task_changes.is_empty() {
            let fields: Vec<String> = self
                .meta
                .task_changes
                .iter()
                .flat_map(|c| &c.fields)
                .map(|f| format!("`{f}`"))
                .collect();
            let line = format!(
                "Resumed with a changed task (`--allow-changed-task`): {}.\n\n",
                fields.join(", ")
            );
            let at = markdown.find("\n\n").map_or(0, |i| i + 2);
            markdown.insert_str(at, &line);
        }
        write_atomic(&self.dir.join("report.md"), &markdown)?;
        write_atomic(&self.dir.join("score.svg"), &charts::score_chart(report))?;
        write_atomic(&self.dir.join("tokens.svg"), &charts::tokens_chart(report))
    }

    /// Reads a finished run's report.json.
    pub fn read_report(dir: &Path) -> Result<RunReport> {
        let p = dir.join("report.json");
        let text = read_text(&p, RUN_FILE_LIMIT, "a run's report.json")?;
        serde_json::from_str(&text).map_err(|e| run_err(dir, format!("report.json: {e}")))
    }
}

fn run_err(dir: &Path, reason: String) -> Error {
    Error::RunDir {
        dir: dir.to_path_buf(),
        reason,
    }
}

/// The task as recorded in run.json.
fn task_value(dir: &Path, spec: &TaskSpec) -> Result<Value> {
    serde_json::to_value(spec).map_err(|e| run_err(dir, format!("cannot record the task: {e}")))
}

/// The dotted fields in which two recorded tasks differ, in a fixed order (an enum's `type`
/// first in its table, then the other keys sorted). A table whose `type` differs is that one
/// field (its other fields belong to the type); an array that differs is one field.
pub fn changed_fields(old: &Value, new: &Value) -> Vec<String> {
    let mut out = Vec::new();
    diff(old, new, "", &mut out);
    out
}

fn diff(old: &Value, new: &Value, at: &str, out: &mut Vec<String>) {
    let join = |key: &str| {
        if at.is_empty() {
            key.to_string()
        } else {
            format!("{at}.{key}")
        }
    };
    match (old, new) {
        (Value::Object(a), Value::Object(b)) => {
            if a.get("type") != b.get("type") {
                out.push(join("type"));
                return;
            }
            let mut keys: Vec<&String> = a.keys().chain(b.keys()).collect();
            keys.sort_by_key(|k| (k.as_str() != "type", k.as_str()));
            keys.dedup();
            for key in keys {
                match (a.get(key), b.get(key)) {
                    (Some(x), Some(y)) => diff(x, y, &join(key), out),
                    _ => out.push(join(key)),
                }
            }
        }
        (Value::Number(a), Value::Number(b)) if a.is_f64() || b.is_f64() => {
            // run.json is text: a float read back may differ from the parsed one in its last
            // place, which is no change.
            let (x, y) = (
                a.as_f64().unwrap_or(f64::NAN),
                b.as_f64().unwrap_or(f64::NAN),
            );
            if (x - y).abs() > 1e-12 * x.abs().max(y.abs()) || x.is_nan() || y.is_nan() {
                out.push(at.to_string());
            }
        }
        (a, b) if a != b => out.push(at.to_string()),
        _ => {}
    }
}

/// A [`Progress`] that also saves each new best component in the run directory (not once
/// the event log has failed: the run is then ending without its report).
pub struct DirProgress<'a> {
    pub dir: &'a RunDir,
    pub calls: &'a Calls,
    pub inner: &'a dyn Progress,
}

impl Progress for DirProgress<'_> {
    fn update(&self, stage: &str, done: usize, total: usize, message: &str) {
        self.inner.update(stage, done, total, message);
    }

    fn best(&self, method: &str, components: &Components, note: &str) {
        if self.calls.log_failure().is_some() {
            return;
        }
        if let Err(e) = self.dir.write_best(method, components) {
            tracing::error!("saving best components: {e}");
        }
        self.inner.best(method, components, note);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn changed_fields_name_the_dotted_field_type_first() {
        let old = serde_json::json!({
            "agent": {"type": "chat", "user": "{{q}}", "params": {"temperature": 0.7}},
            "metric": {"type": "exact", "ignore_case": true},
            "optimizer": {"operators": ["seed", "rewrite"], "iterations": 3},
        });
        assert!(changed_fields(&old, &old).is_empty());
        let mut new = old.clone();
        new["agent"]["user"] = "{{q}}!".into();
        new["agent"]["params"]["temperature"] = 0.700_000_000_000_000_1.into();
        new["metric"] = serde_json::json!({"type": "numeric", "tolerance": 0.0});
        new["optimizer"]["operators"][1] = "demos".into();
        new["optimizer"]["min_gain"] = 2.0.into();
        assert_eq!(
            changed_fields(&old, &new),
            [
                "agent.user",
                "metric.type",
                "optimizer.min_gain",
                "optimizer.operators"
            ]
        );
        new["agent"]["params"]["temperature"] = 0.8.into();
        assert_eq!(changed_fields(&old, &new)[0], "agent.params.temperature");
    }

    #[test]
    fn a_held_lock_refuses_a_second_taker_until_released() {
        let dir = tempfile::tempdir().unwrap();
        let held = RunLock::take(dir.path()).unwrap();
        let err = RunLock::take(dir.path())
            .err()
            .expect("a held lock is refused");
        assert!(err.to_string().contains("in use"), "{err}");
        assert_eq!(err.to_string().lines().count(), 1);
        drop(held);
        RunLock::take(dir.path()).expect("a released lock is taken again");
    }
}
