//! A study: one task run over a grid of (training-set size, seed) cells, summarized with
//! intervals over seeds and paired comparisons over test examples.
//!
//! Each cell is an ordinary run directory (`DIR/train{N}-seed{S}`) made and run as
//! `fgo optimize` makes and runs one; this module holds what does not touch a model: the
//! cell names, the task text of a training-set size, and the summary of finished cells
//! (`study.json`; `study.md` is rendered in `markdown.rs`, `study.svg` in `chart.rs`).
//!
//! Method names are the report's: `fgo`, `all_at_once`, and `none` for the initial
//! components, scored in the same runs. The summary is a function of the cells' reports
//! only (the study's own wall clock is not in it), so a study read back from finished cells
//! summarizes to the same `study.json`, apart from each cell's `source`.

mod chart;
mod markdown;

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::optimizer::report::stats::{self, Interval, Paired};
use crate::optimizer::report::Method;
use crate::optimizer::report::RunReport;

pub use chart::study_chart;

/// The version of the `study.json` layout.
pub const SCHEMA_VERSION: u32 = 1;

/// Seed of every bootstrap of a study's paired comparisons.
pub const BOOTSTRAP_SEED: u64 = 0;

/// The report names of the methods a study can compare, in display order.
pub const METHOD_NAMES: [&str; 3] = ["fgo", "all_at_once", "none"];

/// The run method of a cell that must produce `methods` (report names): both optimizers in
/// one run when both are asked, so the initial evaluation of a seed is shared.
pub fn cell_method(methods: &[String]) -> Method {
    let has = |m: &str| methods.iter().any(|x| x == m);
    match (has("fgo"), has("all_at_once")) {
        (true, true) => Method::Both,
        (true, false) => Method::Fgo,
        (false, true) => Method::AllAtOnce,
        (false, false) => Method::None,
    }
}

/// The directory name of the cell of `train_size` examples and `seed`.
pub fn cell_name(train_size: usize, seed: u64) -> String {
    format!("train{train_size}-seed{seed}")
}

/// `task_text` with `data.max_train` set to `train_size` (other fields kept; comments and
/// layout are not). `file` names the task in errors.
pub fn with_max_train(task_text: &str, file: &Path, train_size: usize) -> Result<String> {
    let err = |field: &str, reason: String| Error::Task {
        file: file.to_path_buf(),
        field: field.into(),
        reason,
    };
    let mut doc: toml::Table = toml::from_str(task_text).map_err(|e| err("", e.to_string()))?;
    let data = doc
        .entry("data")
        .or_insert_with(|| toml::Value::Table(toml::Table::new()));
    let table = data
        .as_table_mut()
        .ok_or_else(|| err("data", "not a table".into()))?;
    let n = i64::try_from(train_size).map_err(|e| err("data.max_train", e.to_string()))?;
    table.insert("max_train".into(), toml::Value::Integer(n));
    toml::to_string(&doc).map_err(|e| err("data", e.to_string()))
}

/// How a cell's report was obtained.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CellSource {
    /// Run from the start.
    Run,
    /// An interrupted run continued from its event log.
    Resumed,
    /// A finished run whose report was read.
    Read,
}

/// A finished cell.
#[derive(Debug, Clone)]
pub struct Cell {
    /// The training-set size of the grid (the number of training examples run on).
    pub train_size: usize,
    /// The seed of the run.
    pub seed: u64,
    /// The run directory.
    pub dir: PathBuf,
    /// Whether the report was read, or the run resumed or run now.
    pub source: CellSource,
    /// The run's report, as read from its report.json.
    pub report: RunReport,
}

/// `study.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Study {
    /// [`SCHEMA_VERSION`].
    pub schema_version: u32,
    /// The task's name.
    pub task: String,
    /// The agent's model, as the reports name it.
    pub agent_model: String,
    /// The optimizer's model (`null` when only `none` ran).
    pub optimizer_model: Option<String>,
    /// Report names, in [`METHOD_NAMES`] order.
    pub methods: Vec<String>,
    /// Seeds of the grid, in order.
    pub seeds: Vec<u64>,
    /// Training-set sizes of the grid, in order.
    pub train_sizes: Vec<usize>,
    /// [`BOOTSTRAP_SEED`].
    pub bootstrap_seed: u64,
    /// [`stats::BOOTSTRAP_RESAMPLES`].
    pub bootstrap_resamples: usize,
    /// One per (method, training-set size), sizes in grid order.
    pub results: Vec<MethodResult>,
    /// Paired comparisons on test, per training-set size.
    pub comparisons: Vec<Comparison>,
    /// Wall time per training-set size.
    pub timing: Vec<Timing>,
    /// Every cell, in grid order.
    pub cells: Vec<CellSummary>,
    /// The constant-answer baseline per training-set size (empty when the metric has
    /// none): what moving the agent towards one answer reaches on test.
    #[serde(default)]
    pub constant: Vec<ConstantResult>,
}

/// The constant-answer baseline of the cells of one training-set size
/// ([`crate::optimizer::data::baseline`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ConstantResult {
    pub train_size: usize,
    /// The answers chosen on each cell's train, distinct, in cell order.
    pub answers: Vec<String>,
    /// Mean test score over the cells that have one.
    pub mean_test: f64,
    /// How many cells that was.
    pub cells: usize,
}

/// One method at one training-set size, over the seeds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MethodResult {
    /// Report name of the method.
    pub method: String,
    /// The training-set size.
    pub train_size: usize,
    /// Mean test score over the seeds that have one, with its 95% Student-t interval.
    pub test: Option<Interval>,
    /// Solved test examples pooled over the seeds, with the Wilson 95% interval.
    pub solved: Option<Solved>,
    /// Mean over seeds of the optimizer's prompt tokens spent by this method.
    pub optimizer_prompt_tokens: f64,
    /// Mean over seeds of the optimizer's completion tokens spent by this method.
    pub optimizer_completion_tokens: f64,
    /// One per seed, in grid order.
    pub per_seed: Vec<SeedResult>,
}

/// One seed of a [`MethodResult`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SeedResult {
    /// The seed.
    pub seed: u64,
    /// The report's test score (`null` when the run skipped the test evaluation).
    pub test: Option<f64>,
    /// Prompt tokens of this method's optimizer calls (the report's accounting rows).
    pub optimizer_prompt_tokens: usize,
    /// Completion tokens of this method's optimizer calls.
    pub optimizer_completion_tokens: usize,
    /// This method's optimizer calls answered by the run's memo: requests another method
    /// of the same run (or this one) had already made, which count no tokens.
    pub optimizer_memo_hits: usize,
}

/// A count of solved examples and its Wilson 95% interval.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Solved {
    /// Examples solved (score at or above [`stats::SOLVED`]).
    pub solved: usize,
    /// Examples scored.
    pub n: usize,
    /// The solved fraction and its Wilson 95% interval.
    pub interval: Interval,
}

/// Method `a` against method `b` on the test examples of every cell of one size, pooled.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Comparison {
    /// The training-set size.
    pub train_size: usize,
    /// The first method (wins are examples it solves and `b` does not).
    pub a: String,
    /// The second method.
    pub b: String,
    /// Cells whose per-example test scores entered the pool.
    pub cells: usize,
    /// `null` when no cell had per-example test scores of both.
    pub paired: Option<Paired>,
}

/// Wall time of the cells of one training-set size.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Timing {
    /// The training-set size.
    pub train_size: usize,
    /// Mean wall time of a cell (one run of every method for one seed), in seconds.
    pub mean_cell_s: f64,
    /// Total over the cells, in seconds (cells run side by side overlap in time).
    pub total_s: f64,
}

/// A cell in `study.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CellSummary {
    /// The training-set size.
    pub train_size: usize,
    /// The seed.
    pub seed: u64,
    /// The run directory.
    pub dir: PathBuf,
    /// Whether the cell was run, resumed or read by this study.
    pub source: CellSource,
    /// The report's status.
    pub status: String,
    /// Examples in train, val, test.
    pub sizes: [usize; 3],
    /// The run's wall time in seconds (over all its sessions).
    pub elapsed_s: f64,
}

/// A method's test score and per-example test scores in a report (`none`: the initial
/// components'); `None` when the report has no such method.
pub fn test_scores<'a>(report: &'a RunReport, method: &str) -> Option<(Option<f64>, &'a [f64])> {
    if method == "none" {
        return Some((report.initial.test, &report.initial.per_example.test));
    }
    report
        .methods
        .iter()
        .find(|m| m.method == method)
        .map(|m| (m.test_score, m.per_example.test.as_slice()))
}

/// Prompt and completion tokens of `method`'s optimizer calls in a report (memo hits
/// count none).
pub fn optimizer_tokens(report: &RunReport, method: &str) -> (usize, usize) {
    optimizer_rows(report, method).fold((0, 0), |(p, c), r| {
        (p + r.prompt_tokens, c + r.completion_tokens)
    })
}

fn optimizer_rows<'a>(
    report: &'a RunReport,
    method: &'a str,
) -> impl Iterator<Item = &'a crate::optimizer::report::Totals> {
    report
        .accounting
        .rows
        .iter()
        .filter(move |r| r.method == method && r.role == "optimizer")
}

/// Per-example test scores of `method` in a cell, when complete.
fn per_example<'a>(report: &'a RunReport, method: &str) -> Option<&'a [f64]> {
    let (_, v) = test_scores(report, method)?;
    (!v.is_empty() && v.len() == report.example_ids.test.len()).then_some(v)
}

/// Summarizes finished cells. `methods` are report names; `cells` are in grid order
/// (sizes, then seeds). A cell lacking a requested method is an error.
pub fn summarize(methods: &[String], cells: &[Cell]) -> Result<Study> {
    let first = cells.first().ok_or_else(|| Error::InvalidArgument {
        name: "study".into(),
        reason: "no cells".into(),
    })?;
    let mut methods: Vec<String> = METHOD_NAMES
        .iter()
        .filter(|m| methods.iter().any(|x| x == *m))
        .map(|m| m.to_string())
        .collect();
    methods.dedup();
    for c in cells {
        for m in &methods {
            if test_scores(&c.report, m).is_none() {
                return Err(Error::RunDir {
                    dir: c.dir.clone(),
                    reason: format!("the report has no method `{m}`"),
                });
            }
        }
    }
    let mut sizes: Vec<usize> = Vec::new();
    let mut seeds: Vec<u64> = Vec::new();
    for c in cells {
        if !sizes.contains(&c.train_size) {
            sizes.push(c.train_size);
        }
        if !seeds.contains(&c.seed) {
            seeds.push(c.seed);
        }
    }
    let of_size = |n: usize| cells.iter().filter(move |c| c.train_size == n);

    let mut results = Vec::new();
    for m in &methods {
        for &n in &sizes {
            let per_seed: Vec<SeedResult> = of_size(n)
                .map(|c| {
                    let (p, q) = optimizer_tokens(&c.report, m);
                    SeedResult {
                        seed: c.seed,
                        test: test_scores(&c.report, m).and_then(|(t, _)| t),
                        optimizer_prompt_tokens: p,
                        optimizer_completion_tokens: q,
                        optimizer_memo_hits: optimizer_rows(&c.report, m)
                            .map(|r| r.memo_hits)
                            .sum(),
                    }
                })
                .collect();
            let tests: Vec<f64> = per_seed.iter().filter_map(|s| s.test).collect();
            let pooled: Vec<f64> = of_size(n)
                .filter_map(|c| per_example(&c.report, m))
                .flatten()
                .copied()
                .collect();
            let k = pooled.iter().filter(|v| **v >= stats::SOLVED).count();
            let seeds_n = per_seed.len().max(1) as f64;
            results.push(MethodResult {
                method: m.clone(),
                train_size: n,
                test: stats::mean_t95(&tests),
                solved: stats::wilson95(k, pooled.len()).map(|interval| Solved {
                    solved: k,
                    n: pooled.len(),
                    interval,
                }),
                optimizer_prompt_tokens: per_seed
                    .iter()
                    .map(|s| s.optimizer_prompt_tokens as f64)
                    .sum::<f64>()
                    / seeds_n,
                optimizer_completion_tokens: per_seed
                    .iter()
                    .map(|s| s.optimizer_completion_tokens as f64)
                    .sum::<f64>()
                    / seeds_n,
                per_seed,
            });
        }
    }

    let mut pairs: Vec<(&str, &str)> = Vec::new();
    if methods.iter().any(|m| m == "none") {
        pairs.extend(
            methods
                .iter()
                .filter(|m| *m != "none")
                .map(|m| (m.as_str(), "none")),
        );
    }
    if methods.iter().any(|m| m == "fgo") && methods.iter().any(|m| m == "all_at_once") {
        pairs.push(("fgo", "all_at_once"));
    }
    let mut comparisons = Vec::new();
    for &n in &sizes {
        for &(a, b) in &pairs {
            let (mut va, mut vb, mut used) = (Vec::new(), Vec::new(), 0);
            for c in of_size(n) {
                if let (Some(x), Some(y)) = (per_example(&c.report, a), per_example(&c.report, b)) {
                    va.extend_from_slice(x);
                    vb.extend_from_slice(y);
                    used += 1;
                }
            }
            comparisons.push(Comparison {
                train_size: n,
                a: a.into(),
                b: b.into(),
                cells: used,
                paired: stats::paired(&va, &vb, BOOTSTRAP_SEED),
            });
        }
    }

    let timing = sizes
        .iter()
        .map(|&n| {
            let times: Vec<f64> = of_size(n).map(|c| c.report.elapsed_s).collect();
            let total: f64 = times.iter().sum();
            Timing {
                train_size: n,
                mean_cell_s: total / times.len().max(1) as f64,
                total_s: total,
            }
        })
        .collect();
    let constant = sizes
        .iter()
        .filter_map(|&n| {
            let baselines: Vec<_> = of_size(n)
                .filter_map(|c| c.report.constant_baseline.as_ref())
                .filter(|b| b.test.is_some())
                .collect();
            if baselines.is_empty() {
                return None;
            }
            let mut answers: Vec<String> = Vec::new();
            for b in &baselines {
                if !answers.contains(&b.answer) {
                    answers.push(b.answer.clone());
                }
            }
            let total: f64 = baselines.iter().filter_map(|b| b.test).sum();
            Some(ConstantResult {
                train_size: n,
                answers,
                mean_test: total / baselines.len() as f64,
                cells: baselines.len(),
            })
        })
        .collect();
    let cells_out = cells
        .iter()
        .map(|c| CellSummary {
            train_size: c.train_size,
            seed: c.seed,
            dir: c.dir.clone(),
            source: c.source,
            status: c.report.status.clone(),
            sizes: c.report.sizes,
            elapsed_s: c.report.elapsed_s,
        })
        .collect();
    Ok(Study {
        schema_version: SCHEMA_VERSION,
        task: first.report.task.clone(),
        agent_model: first.report.agent_model.clone(),
        optimizer_model: cells.iter().find_map(|c| c.report.optimizer_model.clone()),
        methods,
        seeds,
        train_sizes: sizes,
        bootstrap_seed: BOOTSTRAP_SEED,
        bootstrap_resamples: stats::BOOTSTRAP_RESAMPLES,
        results,
        comparisons,
        timing,
        cells: cells_out,
        constant,
    })
}

impl Study {
    /// Writes `study.json`, `study.md` and `study.svg` into `dir`, each atomically.
    pub fn write(&self, dir: &Path) -> Result<()> {
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        let json = serde_json::to_string_pretty(self).map_err(|e| Error::RunDir {
            dir: dir.to_path_buf(),
            reason: e.to_string(),
        })?;
        for (name, text) in [
            ("study.json", json),
            ("study.md", self.to_markdown()),
            ("study.svg", study_chart(self)),
        ] {
            let path = dir.join(name);
            let tmp = path.with_extension("tmp");
            std::fs::write(&tmp, text).map_err(|e| Error::io(&tmp, e))?;
            std::fs::rename(&tmp, &path).map_err(|e| Error::io(&path, e))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests;
