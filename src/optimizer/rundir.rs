//! The run directory: what a run needs to be resumed and what it produced.
//!
//! ```text
//! RUN_DIR/
//!   task.toml        the task file as run (copied verbatim)
//!   run.json         method, seed, overrides, the task's directory, the data fingerprint and
//!                    the initial components
//!   events.jsonl     the append-only event log (one line per call, flushed per line)
//!   best/METHOD/NAME.txt   the best components so far, rewritten atomically
//!   report.json report.md score.svg tokens.svg   written when the run ends
//! ```
//! `fgo resume RUN_DIR` reloads the task from `task.toml` (paths resolved against the
//! original task directory), refuses data whose fingerprint changed, and reruns with the
//! recorded calls answered from the log.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{read_text, Error, Result};
use crate::optimizer::agent::Components;
use crate::optimizer::calls::Calls;
use crate::optimizer::charts;
use crate::optimizer::dataset::Dataset;
use crate::optimizer::env::Progress;
use crate::optimizer::events::{Event, EventLog};
use crate::optimizer::report::Method;
use crate::optimizer::report::RunReport;
use crate::optimizer::task::{Task, TASK_FILE_LIMIT};

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
}

/// An open run directory.
pub struct RunDir {
    pub dir: PathBuf,
    pub meta: RunMeta,
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
        if dir.join("events.jsonl").exists() {
            return Err(Error::RunDir {
                dir: dir.to_path_buf(),
                reason:
                    "already holds a run; continue it with `fgo resume` or choose another --out"
                        .into(),
            });
        }
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
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
        };
        let json = serde_json::to_string_pretty(&meta).map_err(|e| run_err(dir, e.to_string()))?;
        write_atomic(&dir.join("run.json"), &json)?;
        Ok(Self {
            dir: dir.to_path_buf(),
            meta,
        })
    }

    /// Opens an existing run and reloads its task (with the recorded overrides applied).
    pub fn open(dir: &Path) -> Result<(Self, Task)> {
        let meta_path = dir.join("run.json");
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
        Ok((
            Self {
                dir: dir.to_path_buf(),
                meta,
            },
            task,
        ))
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

    /// Writes report.json, report.md and the charts.
    pub fn write_report(&self, report: &RunReport) -> Result<()> {
        let json =
            serde_json::to_string_pretty(report).map_err(|e| run_err(&self.dir, e.to_string()))?;
        write_atomic(&self.dir.join("report.json"), &json)?;
        write_atomic(&self.dir.join("report.md"), &report.to_markdown())?;
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

/// A [`Progress`] that also saves each new best component in the run directory.
pub struct DirProgress<'a> {
    pub dir: &'a RunDir,
    pub inner: &'a dyn Progress,
}

impl Progress for DirProgress<'_> {
    fn update(&self, stage: &str, done: usize, total: usize, message: &str) {
        self.inner.update(stage, done, total, message);
    }

    fn best(&self, method: &str, components: &Components, note: &str) {
        if let Err(e) = self.dir.write_best(method, components) {
            tracing::error!("saving best components: {e}");
        }
        self.inner.best(method, components, note);
    }
}
