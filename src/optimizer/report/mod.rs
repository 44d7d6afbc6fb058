//! The last stage of the flow: running the methods side by side and reporting on them.
//! [`run`] evaluates the initial components, runs the chosen methods and builds the report;
//! [`rundir`] keeps a run's directory (task snapshot, event log, report, charts);
//! [`charts`], [`stats`] and [`study`] (sweeps over models, sizes and seeds) read reports.
//!
//! This module is the run report itself: `report.json` (machine-readable) and `report.md`
//! (for people).
//!
//! # `report.json` schema (version 2)
//!
//! ```text
//! {
//!   "schema_version": 2,
//!   "task": "counting", "method": "fgo" | "all-at-once" | "none" | "both", "seed": 0,
//!   "agent_model": "...", "optimizer_model": "..." | null,
//!   "sizes": [train, val, test],
//!   "status": "completed" | "stopped by budget <name>",
//!   "initial": { "components": {name: text}, "train": f, "val": f|null, "test": f|null,
//!                "per_example": { "val": [f], "test": [f] } },
//!   "constant_baseline": { "answer": "...", "train": f, "val": f|null, "test": f|null } | null,
//!   "engine": [ { "model", "roles": ["agent", "optimizer"], "steps": { "steps", "decode_steps",
//!                 "decode_rows", "prefill_tokens", "busy_s" } } ],
//!   "methods": [ {                       // one per method run (fgo, all_at_once)
//!       "method": "fgo", "final_components": {name: text}, "final_source": "merge m2.0 (crossover)",
//!       "selection": "why it won", "subset_sizing": "how train was divided",
//!       "train_score": f, "train_n": n, "val_score": f|null, "test_score": f|null,
//!       "per_example": { "val": [f], "test": [f] },
//!       "pool": [ { "source", "components", "train_n", "train_score", "train_gain", "val_score" } ],
//!       "subsets": [ { "id", "examples": [train indices], "check": [train indices], "current",
//!                      "initial_score", "score", "lessons": [..], "failed": [..],
//!                      "stopped": "solved|iterations|budget",
//!                      "iterations": [ { "iteration", "score_before", "score_after", "diagnosis",
//!                                        "candidates": [ { "operator", "status", "score",
//!                                                          "check_score", "detail", "cut_off", "reply_budget" } ] } ],
//!                      "truncations": [ { "iteration", "shown", "total", "token_budget" } ] } ],
//!       "merges": [ { "level", "id", "children", "n", "child_scores", "candidate_scores",
//!                     "candidate_operators", "candidate_dropped", "chosen", "score" } ],
//!       "counters": { "reasks", "parse_failures", "call_errors", "leak_rejections",
//!                     "copy_rejections", "content_rejections", "degenerate_rejections",
//!                     "cut_off", "unchanged_candidates", "candidates_evaluated", "accepted",
//!                     "rolled_back", "agent_failures",
//!                     "by_operator": { op: { "proposed", "evaluated", "accepted" } } },
//!       "budget_hit": { "budget", "limit", "used" } | null } ],
//!   "comparisons": [ { "a", "b", "paired": { "n", "wins", "losses", "ties", "mean_diff",
//!                                            "mcnemar_p", "diff_low", "diff_high" } } ],
//!   "example_ids": { "val": [id], "test": [id] },
//!   "steps": [ { "method", "stage", "label", "n", "score", "tokens" } ],
//!   "accounting": { "rows": [ { "method", "stage", "role", "calls", "live", "replayed",
//!                               "memo_hits", "shared", "prompt_tokens", "cached_prompt_tokens",
//!                               "completion_tokens", "time_s" } ],
//!                   "total": { same fields, method/stage/role = "all" } },
//!   "elapsed_s": f
//! }
//! ```
//! Scores are means over examples in `[0, 1]`.

pub mod charts;
pub mod run;
pub mod rundir;
pub mod stats;
pub mod study;

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde::{Deserialize, Serialize};

use crate::engine::scheduler::StepStats;
use crate::optimizer::data::baseline::ConstantBaseline;
use crate::optimizer::exec::agent::Components;
use crate::optimizer::exec::calls::BudgetHit;
use crate::optimizer::exec::calls::{LedgerEntry, Source};
use crate::optimizer::methods::diff::line_diff;
use crate::optimizer::methods::env::Counters;
use crate::optimizer::methods::env::StepPoint;
use crate::optimizer::methods::merge::MergeRecord;
use crate::optimizer::methods::select::PoolEntry;
use crate::optimizer::methods::slot::{CandidateRecord, Slot};
use crate::optimizer::report::stats::{paired, Paired};

/// Which optimization to run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Method {
    /// Divide, optimize, merge.
    Fgo,
    /// One optimizer prompt with every trajectory.
    AllAtOnce,
    /// No optimization: evaluate the initial components.
    None,
    /// FGO and all-at-once in the same run, for comparison.
    Both,
}

impl Method {
    /// The methods this choice runs, by report name.
    pub fn parts(self) -> Vec<&'static str> {
        match self {
            Method::Fgo => vec!["fgo"],
            Method::AllAtOnce => vec!["all_at_once"],
            Method::None => vec![],
            Method::Both => vec!["fgo", "all_at_once"],
        }
    }

    /// Whether an optimizer model is needed.
    pub fn needs_optimizer(self) -> bool {
        self != Method::None
    }
}

/// The result of one method.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MethodReport {
    /// `fgo` or `all_at_once`.
    pub method: String,
    pub final_components: Components,
    /// Where the final component came from (`root m2.0`, `subset 1`, `initial`, ...).
    pub final_source: String,
    /// Mean train score of the final component on what it was evaluated on, and how many
    /// examples that was (all of train for a completed run).
    pub train_score: f64,
    pub train_n: usize,
    pub val_score: Option<f64>,
    pub test_score: Option<f64>,
    pub subsets: Vec<Slot>,
    pub merges: Vec<MergeRecord>,
    pub counters: Counters,
    pub budget_hit: Option<BudgetHit>,
    /// Per-example val and test scores of the final component.
    #[serde(default)]
    pub per_example: ExampleScores,
    /// Every component accepted or merged, with its train gain and (when shortlisted) its
    /// val score.
    #[serde(default)]
    pub pool: Vec<PoolEntry>,
    /// Why the final component won.
    #[serde(default)]
    pub selection: String,
    /// How train was divided, and why.
    #[serde(default)]
    pub subset_sizing: String,
}

/// The version of the `report.json` layout.
pub const SCHEMA_VERSION: u32 = 2;

/// Everything a run produced.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RunReport {
    pub schema_version: u32,
    pub task: String,
    pub method: Method,
    pub seed: u64,
    pub agent_model: String,
    pub optimizer_model: Option<String>,
    /// Examples in train, val, test.
    pub sizes: [usize; 3],
    pub status: String,
    pub initial: InitialScores,
    pub methods: Vec<MethodReport>,
    pub steps: Vec<StepPoint>,
    pub accounting: Accounting,
    pub elapsed_s: f64,
    /// Ids of the val and test examples, in the order of every [`ExampleScores`].
    #[serde(default)]
    pub example_ids: ExampleIds,
    /// Paired comparisons on test: each method against the initial component, and the
    /// methods against each other.
    #[serde(default)]
    pub comparisons: Vec<Comparison>,
    /// The best single answer on train given to every example, scored on each split
    /// (absent for `regex` and `command` metrics): what a component that only shifts the
    /// agent towards one answer can reach.
    #[serde(default)]
    pub constant_baseline: Option<ConstantBaseline>,
    /// What each model run in this process computed during the run: forward steps and how
    /// full their batches were (with study cells side by side on one engine, the other
    /// cells' steps are in it too; a resumed run counts only what it computed itself).
    #[serde(default)]
    pub engine: Vec<EngineUse>,
    /// How the run's remote models were measured, by model name ([`RunReport::notes_now`]):
    /// kept in report.json so that a re-rendered report still says what was not measured.
    #[serde(default)]
    pub model_notes: BTreeMap<String, Vec<String>>,
}

/// The forward steps of one in-process model during a run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EngineUse {
    /// The model's name, as the report names models.
    pub model: String,
    /// `agent`, `optimizer`, or both when one model plays both roles.
    pub roles: Vec<String>,
    pub steps: StepStats,
}

impl EngineUse {
    /// One sentence for report.md: steps, time computing against the run's wall time, the
    /// mean decode batch and the prompt tokens computed.
    pub fn sentence(&self, wall_s: f64) -> String {
        let st = &self.steps;
        let share = if wall_s > 0.0 {
            format!(" ({:.0}% of the wall time)", 100.0 * st.busy_s / wall_s)
        } else {
            String::new()
        };
        format!(
            "Engine `{}` ({}): {} forward steps, {:.1} s computing{share}; {:.2} sequences decoding per decode step on average ({} decode steps); {} prompt tokens computed.",
            self.model,
            self.roles.join(" and "),
            st.steps,
            st.busy_s,
            st.mean_decode_batch(),
            st.decode_steps,
            st.prefill_tokens
        )
    }
}

/// One paired comparison of two components on the same test examples.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Comparison {
    /// `fgo`, `all_at_once` or `initial`.
    pub a: String,
    pub b: String,
    pub paired: Paired,
}

impl RunReport {
    /// What the constant-answer baseline says about the scores on test: the methods whose
    /// final component does not beat it (empty when there is no baseline or no test).
    pub fn at_most_constant(&self) -> Vec<&str> {
        let Some(c) = self.constant_baseline.as_ref().and_then(|c| c.test) else {
            return Vec::new();
        };
        self.methods
            .iter()
            .filter(|m| m.test_score.is_some_and(|t| t <= c))
            .map(|m| m.method.as_str())
            .collect()
    }

    /// A sentence on the constant-answer baseline for the report and the summary, when it
    /// matters: the baseline reaches the initial component's test score, or a method's
    /// final component does not beat it. Empty otherwise.
    pub fn constant_note(&self) -> String {
        let Some(c) = &self.constant_baseline else {
            return String::new();
        };
        let reaches_initial = matches!((c.test, self.initial.test), (Some(b), Some(i)) if b >= i);
        if !reaches_initial && self.at_most_constant().is_empty() {
            return String::new();
        }
        let mut note = format!(
            "Giving every example the same answer (`{}`, the best on train) scores {} on test: a component can reach that by moving the agent towards one answer, without solving more.",
            c.answer.replace('`', "'"),
            pct(c.test)
        );
        let under = self.at_most_constant();
        if !under.is_empty() {
            note.push_str(&format!(" Not above it on test: {}.", under.join(", ")));
        }
        note
    }

    /// A sentence on replies that stopped at the agent's token limit, when many did: a
    /// procedure that asks the agent to reason can need more room than the task gives it,
    /// and no wording of the component fixes that. It names the components (the initial
    /// one, each method's final) under which a quarter or more of the test replies, and at
    /// least two, were cut off, and per method the evaluated candidates under which as
    /// many of their scored replies were. Empty when none.
    pub fn cut_off_note(&self) -> String {
        let n = self.sizes[2];
        let finals = std::iter::once((
            "the initial component".to_string(),
            &self.initial.per_example,
        ))
        .chain(
            self.methods
                .iter()
                .map(|m| (format!("{}'s final component", m.method), &m.per_example)),
        );
        let mut parts: Vec<String> = finals
            .filter(|(_, e)| e.test_cut_off >= 2 && 4 * e.test_cut_off >= n)
            .map(|(who, e)| format!("{} of {n} test replies under {who}", e.test_cut_off))
            .collect();
        for m in &self.methods {
            let evaluated: Vec<&CandidateRecord> =
                m.candidates().filter(|c| c.scored.is_some()).collect();
            let often: Vec<&CandidateRecord> = evaluated
                .iter()
                .copied()
                .filter(|c| c.cut_off_often())
                .collect();
            let mut ops: Vec<&str> = Vec::new();
            for c in &often {
                if !ops.contains(&c.operator.as_str()) {
                    ops.push(&c.operator);
                }
            }
            if !often.is_empty() {
                parts.push(format!(
                    "a quarter or more of the scored replies under {} of {}'s {} evaluated candidates ({})",
                    often.len(),
                    m.method,
                    evaluated.len(),
                    ops.join(", ")
                ));
            }
        }
        if parts.is_empty() {
            return String::new();
        }
        format!(
            "Replies that stopped at the agent's token limit before they ended: {}. Their answers, if any, were cut short; a larger `max_new_tokens` in the task's agent settings may let them finish.",
            parts.join("; ")
        )
    }

    /// The paired comparisons on test of every method against the initial component and
    /// of the first two methods against each other (seeded bootstrap).
    pub fn paired_on_test(&self) -> Vec<Comparison> {
        let mut out = Vec::new();
        let init = &self.initial.per_example.test;
        for m in &self.methods {
            if let Some(p) = paired(&m.per_example.test, init, self.seed) {
                out.push(Comparison {
                    a: m.method.clone(),
                    b: "initial".into(),
                    paired: p,
                });
            }
        }
        if let [x, y, ..] = self.methods.as_slice() {
            if let Some(p) = paired(&x.per_example.test, &y.per_example.test, self.seed) {
                out.push(Comparison {
                    a: x.method.clone(),
                    b: y.method.clone(),
                    paired: p,
                });
            }
        }
        out
    }
}

/// Ids of the val and test examples, in data order.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ExampleIds {
    pub val: Vec<String>,
    pub test: Vec<String>,
}

/// One component's score on every val and test example, in the order of
/// [`RunReport::example_ids`] (empty where that split was not evaluated).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ExampleScores {
    pub val: Vec<f64>,
    pub test: Vec<f64>,
    /// How many of the test replies stopped at the agent's token limit before they ended
    /// (their answers, if any, cut short).
    #[serde(default)]
    pub test_cut_off: usize,
}

impl MethodReport {
    /// Every candidate record of its subsets' iterations, in order.
    pub fn candidates(&self) -> impl Iterator<Item = &CandidateRecord> {
        self.subsets
            .iter()
            .flat_map(|s| &s.iterations)
            .flat_map(|it| &it.candidates)
    }
}

/// The initial components and their scores.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct InitialScores {
    pub components: Components,
    pub train: f64,
    pub val: Option<f64>,
    pub test: Option<f64>,
    /// Per-example val and test scores.
    #[serde(default)]
    pub per_example: ExampleScores,
}

/// Totals of one (method, stage, role).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Totals {
    pub method: String,
    pub stage: String,
    pub role: String,
    pub calls: usize,
    pub live: usize,
    pub replayed: usize,
    pub memo_hits: usize,
    /// Calls answered by another method's call: their tokens count in this row (what the
    /// method would have spent alone) but not in the run's total.
    #[serde(default)]
    pub shared: usize,
    pub prompt_tokens: usize,
    pub cached_prompt_tokens: usize,
    pub completion_tokens: usize,
    pub time_s: f64,
}

impl Totals {
    fn add(&mut self, e: &LedgerEntry) {
        self.calls += 1;
        match e.source {
            Source::Live => self.live += 1,
            Source::Replayed => self.replayed += 1,
            Source::Memo => self.memo_hits += 1,
            Source::Shared => self.shared += 1,
        }
        self.prompt_tokens += e.usage.prompt_tokens;
        self.cached_prompt_tokens += e.usage.cached_prompt_tokens;
        self.completion_tokens += e.usage.completion_tokens;
        self.time_s += e.time_s;
    }

    /// Prompt + completion tokens.
    pub fn tokens(&self) -> usize {
        self.prompt_tokens + self.completion_tokens
    }
}

/// Accounting by method, stage and role.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Accounting {
    pub rows: Vec<Totals>,
    pub total: Totals,
}

impl Accounting {
    /// Sums a ledger.
    pub fn from_ledger(ledger: &[LedgerEntry]) -> Self {
        let mut rows: BTreeMap<(String, String, String), Totals> = BTreeMap::new();
        let mut total = Totals {
            method: "all".into(),
            stage: "all".into(),
            role: "all".into(),
            ..Totals::default()
        };
        for e in ledger {
            let key = (e.method.clone(), e.stage.clone(), e.role.name().to_string());
            rows.entry(key.clone())
                .or_insert_with(|| Totals {
                    method: key.0,
                    stage: key.1,
                    role: key.2,
                    ..Totals::default()
                })
                .add(e);
            if e.source == Source::Shared {
                // The run paid for this call once, in the row of the method that made it.
                total.calls += 1;
                total.shared += 1;
            } else {
                total.add(e);
            }
        }
        Self {
            rows: rows.into_values().collect(),
            total,
        }
    }
}

impl RunReport {
    /// What this process knows of how the remote models `agent` and `optimizer` were
    /// measured ([`crate::llm::notes`]): whether their servers reported cached prompt
    /// tokens, and where their token counts and context lengths come from, so that a 0 or
    /// an estimate is not read as a measurement. Empty for local models.
    pub fn notes_now(agent: &str, optimizer: Option<&str>) -> BTreeMap<String, Vec<String>> {
        crate::llm::notes::snapshot()
            .into_iter()
            .filter(|(name, _)| name == agent || optimizer == Some(name.as_str()))
            .collect()
    }
}

fn pct(v: Option<f64>) -> String {
    v.map_or("-".into(), |v| format!("{:.1}%", 100.0 * v))
}

impl RunReport {
    /// The Markdown report.
    pub fn to_markdown(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(s, "# fgo report: {}\n", self.task);
        let _ = writeln!(
            s,
            "Method `{:?}`, seed {}, agent `{}`, optimizer `{}`. Data: {} train, {} val, {} test. Status: **{}**. Wall time {:.1}s.\n",
            self.method,
            self.seed,
            self.agent_model,
            self.optimizer_model.as_deref().unwrap_or("-"),
            self.sizes[0],
            self.sizes[1],
            self.sizes[2],
            self.status,
            self.elapsed_s
        );
        let _ = writeln!(
            s,
            "## Scores\n\n| component | train | val | test |\n|---|---|---|---|"
        );
        let _ = writeln!(
            s,
            "| initial | {} | {} | {} |",
            pct(Some(self.initial.train)),
            pct(self.initial.val),
            pct(self.initial.test)
        );
        for m in &self.methods {
            let train = if m.train_n == self.sizes[0] {
                pct(Some(m.train_score))
            } else {
                format!("{} (on {} examples)", pct(Some(m.train_score)), m.train_n)
            };
            let _ = writeln!(
                s,
                "| {} ({}) | {} | {} | {} |",
                m.method,
                m.final_source,
                train,
                pct(m.val_score),
                pct(m.test_score)
            );
        }
        if let Some(c) = &self.constant_baseline {
            let _ = writeln!(
                s,
                "| constant answer `{}` (best on train) | {} | {} | {} |",
                c.answer.replace('|', "\\|").replace('`', "'"),
                pct(Some(c.train)),
                pct(c.val),
                pct(c.test)
            );
            let note = self.constant_note();
            if !note.is_empty() {
                let _ = writeln!(s, "\n{note}");
            }
        }
        let note = self.cut_off_note();
        if !note.is_empty() {
            let _ = writeln!(s, "\n{note}");
        }
        if self.methods.len() == 2 {
            let (a, b) = (&self.methods[0], &self.methods[1]);
            if let (Some(x), Some(y)) = (a.test_score, b.test_score) {
                let _ = writeln!(
                    s,
                    "\n**{} vs {}** on test: {} vs {} ({:+.1} points).",
                    a.method,
                    b.method,
                    pct(Some(x)),
                    pct(Some(y)),
                    100.0 * (x - y)
                );
            }
        }
        if !self.comparisons.is_empty() {
            let _ = writeln!(s, "\nPaired on the {} test examples (wins: solved by the first and not the second; exact McNemar p; 95% bootstrap interval of the difference in points):\n\n| comparison | wins | losses | difference | interval | p |\n|---|---|---|---|---|---|", self.sizes[2]);
            for c in &self.comparisons {
                let p = &c.paired;
                let _ = writeln!(
                    s,
                    "| {} vs {} | {} | {} | {:+.1} | [{:+.1}, {:+.1}] | {:.3} |",
                    c.a,
                    c.b,
                    p.wins,
                    p.losses,
                    100.0 * p.mean_diff,
                    100.0 * p.diff_low,
                    100.0 * p.diff_high,
                    p.mcnemar_p
                );
            }
        }
        if !self.methods.is_empty() {
            let _ = writeln!(s, "\nWhat each method spent (compare scores at equal cost):\n\n| method | candidates evaluated | agent calls (memo hits not counted) | optimizer calls (memo hits not counted) | optimizer prompt tokens | optimizer completion tokens |\n|---|---|---|---|---|---|");
            for m in &self.methods {
                let rows = self.accounting.rows.iter().filter(|r| r.method == m.method);
                let (mut agent, mut opt, mut prompt, mut completion) = (0, 0, 0, 0);
                // A memo hit repeats a request the method already made (an early-scored
                // candidate asked again, say): it costs nothing, so it is not counted.
                for r in rows {
                    if r.role == "agent" {
                        agent += r.calls.saturating_sub(r.memo_hits);
                    } else {
                        opt += r.calls.saturating_sub(r.memo_hits);
                        prompt += r.prompt_tokens;
                        completion += r.completion_tokens;
                    }
                }
                let _ = writeln!(
                    s,
                    "| {} | {} | {agent} | {opt} | {prompt} | {completion} |",
                    m.method, m.counters.candidates_evaluated
                );
            }
        }
        let _ = writeln!(s, "\n![score per step](score.svg)\n\n## Tokens and time\n\n![tokens by stage](tokens.svg)\n");
        // Calls of one batch run concurrently: their times add up to more than the wall time.
        let _ = writeln!(s, "Call time is summed over calls, which overlap within a batch; the wall time is above.\n");
        let _ = writeln!(s, "| method | stage | role | calls | live | replayed | memo | shared | prompt | cached | completion | call time (s) |\n|---|---|---|---|---|---|---|---|---|---|---|---|");
        for t in self
            .accounting
            .rows
            .iter()
            .chain(std::iter::once(&self.accounting.total))
        {
            let _ = writeln!(
                s,
                "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {:.1} |",
                t.method,
                t.stage,
                t.role,
                t.calls,
                t.live,
                t.replayed,
                t.memo_hits,
                t.shared,
                t.prompt_tokens,
                t.cached_prompt_tokens,
                t.completion_tokens,
                t.time_s
            );
        }
        for (model, notes) in &self.model_notes {
            let _ = writeln!(s, "\nModel `{model}`: {}.", notes.join("; "));
        }
        for e in &self.engine {
            let _ = writeln!(s, "\n{}", e.sentence(self.elapsed_s));
        }
        for m in &self.methods {
            let _ = writeln!(s, "\n## Method `{}`\n", m.method);
            if let Some(h) = &m.budget_hit {
                let _ = writeln!(
                    s,
                    "Stopped by budget `{}`: used {:.0} of {:.0}.\n",
                    h.budget, h.used, h.limit
                );
            }
            let c = &m.counters;
            if !m.subset_sizing.is_empty() {
                let _ = writeln!(s, "Division: {}.\n", m.subset_sizing);
            }
            let _ = writeln!(
                s,
                "Final component: `{}` ({}).\n",
                m.final_source,
                if m.selection.is_empty() {
                    "-"
                } else {
                    m.selection.as_str()
                }
            );
            let _ = writeln!(
                s,
                "Candidates evaluated {}, accepted {}, iterations rolled back {}; re-asks {}, unparsable replies {}, optimizer replies cut off {}, leak rejections {}, copy rejections {}, content rejections {}, degenerate rejections {}, unchanged {}, optimizer call errors {}, agent failures {}, agent replies cut off at the token limit {}.\n",
                c.candidates_evaluated, c.accepted, c.rolled_back, c.reasks, c.parse_failures, c.cut_off, c.leak_rejections, c.copy_rejections, c.content_rejections, c.degenerate_rejections, c.unchanged_candidates, c.call_errors, c.agent_failures, c.agent_cut_off
            );
            if !c.by_operator.is_empty() {
                let _ = writeln!(
                    s,
                    "| operator | proposed | evaluated | accepted |\n|---|---|---|---|"
                );
                for (op, n) in &c.by_operator {
                    let _ = writeln!(
                        s,
                        "| {op} | {} | {} | {} |",
                        n.proposed, n.evaluated, n.accepted
                    );
                }
                let _ = writeln!(s);
            }
            if !m.pool.is_empty() {
                let _ = writeln!(s, "Pool (components accepted or merged; the shortlist re-scored on val):\n\n| source | train n | train | gain over initial | val |\n|---|---|---|---|---|");
                for e in &m.pool {
                    let _ = writeln!(
                        s,
                        "| {} | {} | {} | {:+.0} | {} |",
                        e.source,
                        e.train_n,
                        pct(Some(e.train_score)),
                        e.train_gain,
                        pct(e.val_score)
                    );
                }
                let _ = writeln!(s);
            }
            for sub in &m.subsets {
                let _ = writeln!(
                    s,
                    "- subset {} ({} examples): {} -> {} ({})",
                    sub.id,
                    sub.examples.len(),
                    pct(Some(sub.initial_score)),
                    pct(Some(sub.score)),
                    sub.stopped
                );
                for t in &sub.truncations {
                    let _ = writeln!(s, "  - iteration {}: prompt showed {} of {} trajectories (context budget {} tokens)", t.iteration + 1, t.shown, t.total, t.token_budget);
                }
            }
            for mg in &m.merges {
                let _ = writeln!(
                    s,
                    "- merge {} of [{}] on {} examples: children {:?}, candidates {:?} -> kept {}",
                    mg.id,
                    mg.children.join(", "),
                    mg.n,
                    mg.child_scores
                        .iter()
                        .map(|v| format!("{:.2}", v))
                        .collect::<Vec<_>>(),
                    mg.candidate_scores
                        .iter()
                        .enumerate()
                        .map(|(k, v)| {
                            // The move that made it (older records have none).
                            let op = mg
                                .candidate_operators
                                .get(k)
                                .map_or(String::new(), |o| format!("{o} "));
                            if mg.candidate_dropped.get(k).copied().unwrap_or(false) {
                                format!("{op}{v:.2} (stopped early)")
                            } else {
                                format!("{op}{v:.2}")
                            }
                        })
                        .collect::<Vec<_>>(),
                    mg.chosen
                );
            }
            for (name, text) in &m.final_components {
                let old = self
                    .initial
                    .components
                    .get(name)
                    .map(String::as_str)
                    .unwrap_or("");
                let _ = writeln!(s, "\n### Final `{name}`\n\n```text\n{}\n```\n\nDiff from the initial:\n\n```diff\n{}\n```", text.trim(), line_diff(old, text));
            }
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::chat::ChatMessage;
    use crate::llm::ChatRequest;
    use crate::optimizer::exec::calls::{Calls, Ctx, Role, SHARED_METHOD};
    use crate::optimizer::exec::events::EventLog;
    use crate::optimizer::exec::pool::CallPool;
    use crate::optimizer::exec::testutil::ScriptedLlm;
    use std::sync::Arc;

    fn request(text: &str) -> ChatRequest {
        ChatRequest {
            messages: vec![ChatMessage::user(text)],
            params: Default::default(),
        }
    }

    #[test]
    fn a_borrowed_shared_call_is_not_made_again_and_lands_in_the_log() {
        let dir = tempfile::tempdir().unwrap();
        let llm = ScriptedLlm::new(|r| format!("re: {}", r.messages[0].content));
        let shared = Ctx::new(SHARED_METHOD, "initial_eval");
        let pool = Arc::new(CallPool::default());
        let first = Calls::in_memory().with_pool(pool.clone());
        first.complete(&llm, &shared, Role::Agent, &[request("a"), request("b")]);
        first.complete(&llm, &Ctx::new("fgo", "x"), Role::Agent, &[request("c")]);
        assert_eq!(llm.requests(), 3);

        let path = dir.path().join("events.jsonl");
        let (log, _) = EventLog::open(&path).unwrap();
        let second = Calls::new(log, Vec::new()).with_pool(pool);
        let out = second.complete(&llm, &shared, Role::Agent, &[request("a"), request("c")]);
        assert_eq!(out[0].as_ref().unwrap().text, "re: a");
        assert_eq!(
            llm.requests(),
            4,
            "only `c` was made: only the shared method's are pooled"
        );
        let ledger = second.ledger();
        assert_eq!(ledger[0].source, Source::Shared);
        assert!(ledger[0].usage.prompt_tokens > 0 || ledger[0].usage.completion_tokens > 0);
        assert_eq!(ledger[1].source, Source::Live);
        // Both are in this run's log: a resume needs no other run.
        drop(second);
        let (_, events) = EventLog::open(&path).unwrap();
        assert_eq!(events.len(), 2);
        // Accounted as shared, a borrowed call is not in the run's total.
        let acc = Accounting::from_ledger(&ledger);
        assert_eq!(acc.total.shared, 1);
        assert_eq!(acc.total.live, 1);
    }

    /// Runs side by side on one pool: each shared call is made once, by whichever run asked
    /// first, and every run gets every answer, in its own log.
    #[test]
    fn runs_side_by_side_make_each_shared_call_once() {
        let llm = Arc::new(ScriptedLlm::new(|r| {
            std::thread::sleep(std::time::Duration::from_millis(20));
            format!("re: {}", r.messages[0].content)
        }));
        let shared = Ctx::new(SHARED_METHOD, "initial_eval");
        let pool = Arc::new(CallPool::default());
        let requests: Vec<ChatRequest> = (0..6).map(|i| request(&format!("q{i}"))).collect();
        let ledgers: Vec<Vec<crate::optimizer::exec::calls::LedgerEntry>> =
            std::thread::scope(|s| {
                let runs: Vec<_> = (0..3)
                    .map(|run| {
                        let (llm, pool, requests, shared) = (&llm, &pool, &requests, &shared);
                        s.spawn(move || {
                            let calls = Calls::in_memory().with_pool(pool.clone());
                            // Each run asks in its own order, one request at a time.
                            for k in 0..requests.len() {
                                let r = &requests[(k + 2 * run) % requests.len()];
                                let out = calls.complete(
                                    &**llm,
                                    shared,
                                    Role::Agent,
                                    std::slice::from_ref(r),
                                );
                                let want = format!("re: {}", r.messages[0].content);
                                assert_eq!(out[0].as_ref().unwrap().text, want);
                            }
                            calls.ledger()
                        })
                    })
                    .collect();
                runs.into_iter().map(|h| h.join().unwrap()).collect()
            });
        assert_eq!(
            llm.requests(),
            requests.len(),
            "a shared call was made twice"
        );
        let live: usize = ledgers
            .iter()
            .flatten()
            .filter(|e| e.source == Source::Live)
            .count();
        assert_eq!(live, requests.len());
        for ledger in &ledgers {
            assert_eq!(ledger.len(), requests.len());
        }
    }
}
