//! The task file: what to optimize, how to run the agent, the data, the metric, the
//! optimizer's settings and the budgets.
//!
//! A task file is TOML. Every table denies unknown fields, and [`Task::load`] validates
//! everything that can be checked without data (ranges, exclusive options, component files);
//! checks that need the data (template fields, metric applicability) are done by
//! [`validate`](super::validate). Every error names the file and the dotted field at fault.
//! Relative paths are relative to the directory that holds the task file.
//!
//! ```toml
//! name = "counting"
//! [components.system_prompt]
//! text = "Answer with a number."        # or: file = "system_prompt.txt"
//! [agent]
//! type = "chat"
//! model = "smollm2-135m"
//! system = "{{system_prompt}}"
//! user = "{{question}}"
//! params = { max_new_tokens = 128 }
//! extract = { type = "regex", pattern = "-?\\d+" }
//! [data]
//! file = "data.jsonl"
//! split = { train = 0.5, val = 0.25, test = 0.25 }
//! [metric]
//! type = "numeric"
//! [optimizer]
//! subset_count = 4
//! [budget]
//! optimizer_tokens = 200000
//! ```

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::engine::sampling::SamplingParams;
use crate::error::{Error, Result};
use crate::llm::spec::{ModelSpec, ServerOptions};
use crate::optimizer::data::command::MAX_TIMEOUT_S;
use crate::optimizer::data::template::is_identifier;

/// The largest task file read (a task is a few dozen lines).
pub const TASK_FILE_LIMIT: u64 = 1 << 20;

/// The largest component file read.
pub const COMPONENT_FILE_LIMIT: u64 = 1 << 20;

/// The longest wall-time budget of a run, in seconds: 30 days.
pub const MAX_WALL_TIME_S: f64 = 30.0 * 86_400.0;

/// A way of making a candidate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Operator {
    Rewrite,
    Induction,
    Demos,
    Seed,
    Strategy,
    Format,
    Crossover,
    Merge,
    Retrial,
}

impl Operator {
    /// The name used in task files and reports.
    pub fn name(self) -> &'static str {
        match self {
            Operator::Rewrite => "rewrite",
            Operator::Induction => "induction",
            Operator::Demos => "demos",
            Operator::Seed => "seed",
            Operator::Strategy => "strategy",
            Operator::Format => "format",
            Operator::Crossover => "crossover",
            Operator::Merge => "merge",
            Operator::Retrial => "retrial",
        }
    }

    /// Whether the move needs a diagnosis of the failures first.
    pub fn needs_diagnosis(self) -> bool {
        self == Operator::Rewrite
    }

    /// Whether the move calls the optimizer model.
    pub fn calls_optimizer(self) -> bool {
        matches!(
            self,
            Operator::Rewrite | Operator::Induction | Operator::Strategy | Operator::Merge
        )
    }
}

/// The default rotation of moves over the candidates of a subset's iterations: cheap moves
/// that change the agent's procedure come early, so even a one-iteration run tries them.
pub const DEFAULT_OPERATORS: [Operator; 6] = [
    Operator::Seed,
    Operator::Format,
    Operator::Rewrite,
    Operator::Induction,
    Operator::Demos,
    Operator::Strategy,
];

/// A whole task file.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TaskSpec {
    /// A short name for reports.
    pub name: String,
    /// Free text for the reader.
    #[serde(default)]
    pub description: String,
    /// The texts to optimize, by name (a name is usable in templates as `{{name}}`).
    pub components: BTreeMap<String, ComponentSpec>,
    /// How one example is executed.
    pub agent: AgentSpec,
    /// Where the examples come from.
    pub data: DataSpec,
    /// How an answer is scored.
    pub metric: MetricSpec,
    /// The optimizer's model and FGO parameters.
    #[serde(default)]
    pub optimizer: OptimizerSpec,
    /// Optional caps that stop a run cleanly.
    #[serde(default)]
    pub budget: BudgetSpec,
}

/// One component: its initial value, inline or from a file.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ComponentSpec {
    /// The initial text inline.
    pub text: Option<String>,
    /// A file holding the initial text (relative to the task file).
    pub file: Option<PathBuf>,
    /// Whether the optimizer may change it (default true).
    #[serde(default = "default_true")]
    pub optimize: bool,
}

fn default_true() -> bool {
    true
}

/// How one example is executed with the current components.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum AgentSpec {
    /// A chat model: templates render a system and a user message.
    Chat {
        /// Model: alias, path or `hf:` id.
        model: String,
        /// System message template (`{{name}}` = a component or an example field).
        #[serde(default)]
        system: Option<String>,
        /// User message template.
        user: String,
        /// Generation parameters (default: greedy, 256 new tokens).
        #[serde(default)]
        params: SamplingParams,
        /// How the answer is taken from the reply (default: the last non-empty line).
        #[serde(default)]
        extract: Extract,
        /// Options of a remote model (`model = "NAME@URL"`): `[agent.server]`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        server: Option<Box<ServerOptions>>,
    },
    /// An external program: reads `{"components": {..}, "example": {..}}` on stdin and
    /// prints `{"trajectory": "..", "answer": "..", "score": optional number}`.
    Command {
        /// Program and arguments, passed as-is (never through a shell).
        command: Vec<String>,
        /// Seconds before the program is killed (default 60).
        #[serde(default = "crate::optimizer::data::command::default_timeout_s")]
        timeout_s: f64,
        /// Bytes of output kept (default 1 MiB, at most 64 MiB); a program that prints
        /// more fails that example, and its output is dropped, not stored.
        #[serde(
            default = "crate::optimizer::data::command::default_output_bytes",
            skip_serializing_if = "crate::optimizer::data::command::is_default_output_bytes"
        )]
        max_output_bytes: u64,
    },
}

/// A metric, tagged by `type` in the task file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum MetricSpec {
    /// Equality after normalisation.
    Exact {
        /// Compare case-insensitively (default true).
        #[serde(default = "yes")]
        ignore_case: bool,
        /// Collapse and trim whitespace (default true).
        #[serde(default = "yes")]
        collapse_whitespace: bool,
        /// Drop ASCII punctuation before comparing (default false).
        #[serde(default)]
        strip_punctuation: bool,
    },
    /// The expected answer appears in the prediction.
    Contains {
        #[serde(default = "yes")]
        ignore_case: bool,
    },
    /// The expected answer is a regex the whole prediction must match.
    Regex,
    /// The last number in the prediction equals the expected number within `tolerance`.
    Numeric {
        #[serde(default)]
        tolerance: f64,
    },
    /// The prediction names exactly one of `labels`, and it is the expected one.
    Choice { labels: Vec<String> },
    /// Token-level F1 between prediction and expected answer (partial credit).
    TokenF1,
    /// The prediction's first JSON object has `field` equal to the expected answer's (or to
    /// the expected answer itself when that is not an object).
    JsonField { field: String },
    /// An external program reads `{"prediction": .., "example": {..}}` and prints
    /// `{"score": x}`.
    Command {
        command: Vec<String>,
        #[serde(default = "crate::optimizer::data::command::default_timeout_s")]
        timeout_s: f64,
        /// Bytes of output kept (default 1 MiB, at most 64 MiB), as for a command agent.
        #[serde(
            default = "crate::optimizer::data::command::default_output_bytes",
            skip_serializing_if = "crate::optimizer::data::command::is_default_output_bytes"
        )]
        max_output_bytes: u64,
    },
}

fn yes() -> bool {
    true
}

/// Static checks of a metric spec (no data needed); the reason names the sub-field.
pub fn validate_spec(spec: &MetricSpec) -> Result<(), String> {
    match spec {
        MetricSpec::Numeric { tolerance } if !(tolerance.is_finite() && *tolerance >= 0.0) => {
            Err("tolerance must be a non-negative number".into())
        }
        MetricSpec::Choice { labels } if labels.is_empty() => {
            Err("labels must not be empty".into())
        }
        MetricSpec::JsonField { field } if field.is_empty() => {
            Err("field must not be empty".into())
        }
        MetricSpec::Command {
            command,
            timeout_s,
            max_output_bytes,
        } => {
            if command.is_empty() || command[0].trim().is_empty() {
                Err("command must name a program".into())
            } else if !(timeout_s.is_finite()
                && *timeout_s > 0.0
                && *timeout_s <= crate::optimizer::data::command::MAX_TIMEOUT_S)
            {
                Err(format!(
                    "timeout_s must be a positive number of seconds, at most {} (a day)",
                    crate::optimizer::data::command::MAX_TIMEOUT_S
                ))
            } else {
                crate::optimizer::data::command::check_output_bytes(*max_output_bytes)
            }
        }
        _ => Ok(()),
    }
}

/// How the answer is extracted from the agent's reply.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum Extract {
    /// The last non-empty line.
    #[default]
    LastLine,
    /// The last match of a regex (group `group`, default 0 = whole match).
    Regex {
        pattern: String,
        #[serde(default)]
        group: usize,
    },
    /// A field of the first JSON object in the reply.
    JsonField { field: String },
    /// The whole reply, trimmed.
    Whole,
}

/// Where the data comes from.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DataSpec {
    /// Explicit training file.
    pub train: Option<PathBuf>,
    /// Explicit validation file.
    pub val: Option<PathBuf>,
    /// Explicit test file.
    pub test: Option<PathBuf>,
    /// One file split by `split` ratios (instead of train/val/test).
    pub file: Option<PathBuf>,
    /// Split ratios for `file`.
    pub split: Option<SplitRatios>,
    /// Seed of the shuffle before splitting (default 0).
    #[serde(default)]
    pub seed: u64,
    /// The field holding the expected answer (default `answer`).
    #[serde(default = "default_answer_field")]
    pub answer_field: String,
    /// A field holding a stable example id (default: `file:line`).
    pub id_field: Option<String>,
    /// Keep at most this many training examples (after splitting).
    pub max_train: Option<usize>,
    /// Keep at most this many validation examples.
    pub max_val: Option<usize>,
    /// Keep at most this many test examples.
    pub max_test: Option<usize>,
}

fn default_answer_field() -> String {
    "answer".into()
}

/// Split ratios; they must be non-negative and sum to 1 (within 1e-6).
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SplitRatios {
    pub train: f64,
    pub val: f64,
    pub test: f64,
}

/// How trajectories are divided into subsets.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DivideStrategy {
    /// A seeded shuffle cut into subsets.
    #[default]
    Random,
    /// Failures and successes spread evenly over the subsets.
    Stratified,
    /// Failures grouped by the kind of failure (similar wrong answers and outputs together).
    Clustered,
}

/// When a candidate replaces the current component.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AcceptRule {
    /// A real gain: at least `min_gain` more solved examples of the subset (and more than
    /// none).
    #[default]
    Better,
    /// A score at least as high (lets the optimizer drift on plateaus).
    NotWorse,
}

/// How the final component of a method is chosen.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Selection {
    /// The best of the pool on val (the pool's best by train gain, re-scored on val; ties
    /// to the shorter text); never worse than the initial component on val.
    #[default]
    Val,
    /// The node that solves the most training examples beyond the initial component (may
    /// score below the initial component on val).
    Train,
}

/// The optimizer's model and the FGO parameters.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct OptimizerSpec {
    /// Optimizer model (default: the agent's model).
    pub model: Option<String>,
    /// Options of a remote optimizer model: `[optimizer.server]` (default: the agent's
    /// when the optimizer uses the agent's model).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub server: Option<ServerOptions>,
    /// Generation parameters of rewrite and merge calls (default: temperature 0.7, 512 tokens).
    pub params: SamplingParams,
    /// Generation parameters of diagnosis calls (default: greedy, 256 tokens).
    pub diagnosis_params: SamplingParams,
    /// Examples per subset (exclusive with `subset_count`).
    pub subset_size: Option<usize>,
    /// Number of subsets (default: sized to `prompt_tokens`).
    pub subset_count: Option<usize>,
    /// The fewest examples a subset sized to `prompt_tokens` may hold (default 8): a subset
    /// of 5 with `min_gain = 2` can accept only a 40% gain, so below the floor the subsets
    /// stay larger and their prompts show the trajectories that fit. Ignored when
    /// `subset_size` or `subset_count` is given.
    pub min_subset_size: usize,
    /// How subsets are formed.
    pub divide: DivideStrategy,
    /// Optimization iterations per subset (default 3).
    pub iterations: usize,
    /// Candidates sampled per iteration (default 3).
    pub candidates: usize,
    /// Failed trajectories shown per prompt (default 4).
    pub show_failures: usize,
    /// Successful trajectories shown per prompt (default 2).
    pub show_successes: usize,
    /// Characters kept of each trajectory (head and tail, default 600).
    pub trajectory_chars: usize,
    /// Failed attempts remembered in later prompts (default 3).
    pub show_failed_attempts: usize,
    /// Re-asks after an unparsable reply (default 2).
    pub max_reasks: usize,
    /// Components merged at once (default 2).
    pub merge_fan_in: usize,
    /// Near misses of the children's subsets (candidates that gained on their subset but
    /// were not accepted) tried again at a merge, on top of the best child, on the union
    /// (default 2; 0 = none).
    pub merge_retrials: usize,
    /// When a candidate is kept.
    pub accept: AcceptRule,
    /// A candidate sharing this many consecutive words with a training input (absent from
    /// the initial component) copies an example and is rejected (default 8).
    pub copy_ngram_words: usize,
    /// Expected answers shorter than this are checked for leaks only in an answer-giving
    /// context such as `= 7` (default 3).
    pub leak_min_chars: usize,
    /// The proposal moves, rotated over the candidates of a subset's iterations (default
    /// seed, rewrite, induction, demos, strategy).
    pub operators: Vec<Operator>,
    /// Solved examples a candidate must gain on its subset to be accepted (default 2).
    pub min_gain: f64,
    /// Training examples from outside the subset on which a candidate must not be worse
    /// than the current component (default 8; none when train is one subset).
    pub check_examples: usize,
    /// Worked examples a `demos` move appends (default 3).
    pub demo_count: usize,
    /// Tokens of trajectories one optimizer prompt may hold; when neither `subset_size`
    /// nor `subset_count` is given, train is divided into the fewest subsets whose
    /// trajectories fit (default 4096, at most the optimizer's context).
    pub prompt_tokens: usize,
    /// How the final component is chosen (default `val`).
    pub selection: Selection,
    /// Pool entries (besides the initial component) re-scored on val (default 4).
    pub select_top: usize,
    /// Content terms of the training inputs a candidate may introduce (default 2).
    pub max_content_words: usize,
    /// Characters a candidate may add to the initial component, worked examples aside
    /// (default 1500).
    pub max_added_chars: usize,
    /// Successive halving of candidate evaluations (default on): candidates that can no
    /// longer be accepted stop early. It never changes which candidate is accepted.
    pub halving: bool,
}

impl Default for OptimizerSpec {
    fn default() -> Self {
        Self {
            model: None,
            server: None,
            params: SamplingParams {
                temperature: 0.7,
                max_new_tokens: 512,
                ..SamplingParams::default()
            },
            diagnosis_params: SamplingParams {
                temperature: 0.0,
                max_new_tokens: 256,
                ..SamplingParams::default()
            },
            subset_size: None,
            subset_count: None,
            min_subset_size: 8,
            divide: DivideStrategy::Random,
            iterations: 3,
            candidates: 3,
            show_failures: 4,
            show_successes: 2,
            trajectory_chars: 600,
            show_failed_attempts: 3,
            max_reasks: 2,
            merge_fan_in: 2,
            merge_retrials: 2,
            accept: AcceptRule::Better,
            copy_ngram_words: 8,
            leak_min_chars: 3,
            operators: DEFAULT_OPERATORS.to_vec(),
            min_gain: 2.0,
            check_examples: 8,
            demo_count: 3,
            prompt_tokens: 4096,
            selection: Selection::Val,
            select_top: 4,
            max_content_words: 2,
            max_added_chars: 1500,
            halving: true,
        }
    }
}

/// Optional caps; a run that reaches one stops cleanly and reports its best component.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BudgetSpec {
    /// Prompt + completion tokens of optimizer calls.
    pub optimizer_tokens: Option<usize>,
    /// Prompt + completion tokens of agent calls.
    pub agent_tokens: Option<usize>,
    /// Wall time of the run, in seconds (resumed sessions add up).
    pub wall_time_s: Option<f64>,
}

/// A loaded, validated task: the spec, where it came from, and the initial components.
#[derive(Debug, Clone)]
pub struct Task {
    /// The parsed file.
    pub spec: TaskSpec,
    /// The task file.
    pub path: PathBuf,
    /// The directory relative paths are resolved against.
    pub base_dir: PathBuf,
    /// Initial component values, by name.
    pub initial: BTreeMap<String, String>,
}

impl Task {
    /// Reads, parses and validates a task file.
    pub fn load(path: &Path) -> Result<Self> {
        let text = crate::error::read_text(path, TASK_FILE_LIMIT, "a task file")?;
        let base_dir = path
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_else(|| PathBuf::from("."));
        Self::from_str(&text, path, &base_dir)
    }

    /// Parses and validates task text; `path` names it in errors, `base_dir` resolves paths.
    pub fn from_str(text: &str, path: &Path, base_dir: &Path) -> Result<Self> {
        let spec: TaskSpec = toml::from_str(text).map_err(|e| toml_error(path, text, &e))?;
        let mut task = Task {
            spec,
            path: path.to_path_buf(),
            base_dir: base_dir.to_path_buf(),
            initial: BTreeMap::new(),
        };
        task.validate()?;
        Ok(task)
    }

    /// A path from the task file, resolved against the task's directory.
    pub fn resolve(&self, p: &Path) -> PathBuf {
        if p.is_absolute() {
            p.to_path_buf()
        } else {
            self.base_dir.join(p)
        }
    }

    /// The optimizer's model spec (the agent's when not given; `None` for a command agent
    /// without an optimizer model, which [`Task::validate`] rejects).
    pub fn optimizer_model(&self) -> String {
        match (&self.spec.optimizer.model, &self.spec.agent) {
            (Some(m), _) => m.clone(),
            (None, AgentSpec::Chat { model, .. }) => model.clone(),
            (None, AgentSpec::Command { .. }) => String::new(),
        }
    }

    /// An error about `field` of this task file.
    pub fn err(&self, field: &str, reason: impl Into<String>) -> Error {
        Error::Task {
            file: self.path.clone(),
            field: field.into(),
            reason: reason.into(),
        }
    }

    fn validate(&mut self) -> Result<()> {
        let spec = self.spec.clone();
        if spec.name.trim().is_empty() {
            return Err(self.err("name", "must not be empty"));
        }
        if spec.components.is_empty() {
            return Err(self.err("components", "at least one component is required"));
        }
        if !spec.components.values().any(|c| c.optimize) {
            return Err(self.err("components", "no component has `optimize = true`"));
        }
        for (name, c) in &spec.components {
            let field = format!("components.{name}");
            if !is_identifier(name) {
                return Err(self.err(&field, "a component name must be letters, digits or _"));
            }
            let value = match (&c.text, &c.file) {
                (Some(t), None) => t.clone(),
                (None, Some(f)) => {
                    let p = self.resolve(f);
                    crate::error::read_text(&p, COMPONENT_FILE_LIMIT, "a component file")
                        .map_err(|e| self.err(&format!("{field}.file"), e.to_string()))?
                }
                _ => return Err(self.err(&field, "give exactly one of `text` or `file`")),
            };
            self.initial.insert(name.clone(), value);
        }
        match &spec.agent {
            AgentSpec::Chat {
                model,
                params,
                extract,
                ..
            } => {
                if model.trim().is_empty() {
                    return Err(self.err("agent.model", "must not be empty"));
                }
                params
                    .validate()
                    .map_err(|e| self.err("agent.params", e.to_string()))?;
                if let Extract::Regex { pattern, group } = extract {
                    let re = regex::Regex::new(pattern)
                        .map_err(|e| self.err("agent.extract.pattern", e.to_string()))?;
                    if *group >= re.captures_len() {
                        return Err(self.err(
                            "agent.extract.group",
                            format!("the pattern has only {} groups", re.captures_len() - 1),
                        ));
                    }
                }
            }
            AgentSpec::Command {
                command,
                timeout_s,
                max_output_bytes,
            } => {
                if command.is_empty() || command[0].trim().is_empty() {
                    return Err(self.err("agent.command", "must name a program"));
                }
                if let Err(reason) =
                    crate::optimizer::data::command::check_output_bytes(*max_output_bytes)
                {
                    let reason = reason.trim_start_matches("max_output_bytes ").to_string();
                    return Err(self.err("agent.max_output_bytes", reason));
                }
                if !(timeout_s.is_finite() && *timeout_s > 0.0 && *timeout_s <= MAX_TIMEOUT_S) {
                    return Err(self.err(
                        "agent.timeout_s",
                        format!(
                            "must be a positive number of seconds, at most {MAX_TIMEOUT_S} (a day)"
                        ),
                    ));
                }
                if spec.optimizer.model.is_none() {
                    return Err(self.err(
                        "optimizer.model",
                        "required when the agent is a command (there is no agent model to reuse)",
                    ));
                }
            }
        }
        self.validate_data()?;
        self.validate_optimizer()?;
        self.validate_servers()?;
        let b = &spec.budget;
        if b.optimizer_tokens == Some(0) {
            return Err(self.err("budget.optimizer_tokens", "must be positive"));
        }
        if b.agent_tokens == Some(0) {
            return Err(self.err("budget.agent_tokens", "must be positive"));
        }
        if let Some(w) = b.wall_time_s {
            if !(w.is_finite() && w > 0.0 && w <= MAX_WALL_TIME_S) {
                return Err(self.err(
                    "budget.wall_time_s",
                    format!(
                        "must be a positive number of seconds, at most {MAX_WALL_TIME_S} (30 days)"
                    ),
                ));
            }
        }
        validate_spec(&spec.metric).map_err(|r| self.err("metric", r))
    }

    fn validate_data(&self) -> Result<()> {
        let d = &self.spec.data;
        let explicit = d.train.is_some() || d.val.is_some() || d.test.is_some();
        match (&d.file, explicit) {
            (Some(_), true) => {
                return Err(self.err(
                    "data",
                    "give either `file` (with `split`) or train/val/test",
                ))
            }
            (None, false) => {
                return Err(self.err("data", "give `train` (and `val`, `test`) or `file`"))
            }
            (Some(_), false) => {
                let Some(s) = d.split else {
                    return Err(self.err("data.split", "required with `data.file`"));
                };
                let ok = [s.train, s.val, s.test]
                    .iter()
                    .all(|r| r.is_finite() && *r >= 0.0);
                if !ok || (s.train + s.val + s.test - 1.0).abs() > 1e-6 {
                    return Err(self.err("data.split", "ratios must be >= 0 and sum to 1"));
                }
                if s.train <= 0.0 {
                    return Err(self.err("data.split.train", "must be positive"));
                }
            }
            (None, true) => {
                if d.train.is_none() {
                    return Err(self.err("data.train", "required"));
                }
                if d.split.is_some() {
                    return Err(self.err("data.split", "only used with `data.file`"));
                }
            }
        }
        for (field, v) in [
            ("max_train", d.max_train),
            ("max_val", d.max_val),
            ("max_test", d.max_test),
        ] {
            if v == Some(0) {
                return Err(self.err(&format!("data.{field}"), "must be positive"));
            }
        }
        if d.answer_field.is_empty() {
            return Err(self.err("data.answer_field", "must not be empty"));
        }
        Ok(())
    }

    fn validate_optimizer(&self) -> Result<()> {
        let o = &self.spec.optimizer;
        o.params
            .validate()
            .map_err(|e| self.err("optimizer.params", e.to_string()))?;
        o.diagnosis_params
            .validate()
            .map_err(|e| self.err("optimizer.diagnosis_params", e.to_string()))?;
        match (o.subset_size, o.subset_count) {
            (Some(_), Some(_)) => {
                return Err(self.err(
                    "optimizer.subset_size",
                    "give subset_size or subset_count, not both",
                ))
            }
            (Some(0), _) => return Err(self.err("optimizer.subset_size", "must be positive")),
            (_, Some(0)) => return Err(self.err("optimizer.subset_count", "must be positive")),
            _ => {}
        }
        let positive = [
            ("iterations", o.iterations),
            ("candidates", o.candidates),
            ("trajectory_chars", o.trajectory_chars),
            ("copy_ngram_words", o.copy_ngram_words),
            ("min_subset_size", o.min_subset_size),
        ];
        for (field, v) in positive {
            if v == 0 {
                return Err(self.err(&format!("optimizer.{field}"), "must be positive"));
            }
        }
        if o.show_failures == 0 && o.show_successes == 0 {
            return Err(self.err(
                "optimizer.show_failures",
                "show_failures and show_successes are both 0",
            ));
        }
        if !(o.min_gain.is_finite() && o.min_gain >= 0.0) {
            return Err(self.err("optimizer.min_gain", "must be a number >= 0"));
        }
        if o.operators.is_empty() {
            return Err(self.err("optimizer.operators", "give at least one operator"));
        }
        if let Some(op) = o.operators.iter().find(|op| {
            matches!(
                op,
                Operator::Crossover | Operator::Merge | Operator::Retrial
            )
        }) {
            return Err(self.err(
                "optimizer.operators",
                format!("`{}` is a merge move, not a proposal operator", op.name()),
            ));
        }
        if o.prompt_tokens < 256 {
            return Err(self.err("optimizer.prompt_tokens", "must be at least 256"));
        }
        if o.merge_fan_in < 2 {
            return Err(self.err("optimizer.merge_fan_in", "must be at least 2"));
        }
        Ok(())
    }
}

impl Task {
    /// The `[agent.server]` options, paths resolved against the task's directory.
    pub fn agent_server(&self) -> Option<ServerOptions> {
        match &self.spec.agent {
            AgentSpec::Chat { server, .. } => server.as_ref().map(|o| self.resolved(o)),
            AgentSpec::Command { .. } => None,
        }
    }

    /// The `[optimizer.server]` options, else the agent's when the optimizer runs the
    /// agent's model; paths resolved against the task's directory.
    pub fn optimizer_server(&self) -> Option<ServerOptions> {
        match &self.spec.optimizer.server {
            Some(o) => Some(self.resolved(o)),
            None => match &self.spec.agent {
                AgentSpec::Chat { model, .. } if *model == self.optimizer_model() => {
                    self.agent_server()
                }
                _ => None,
            },
        }
    }

    fn resolved(&self, options: &ServerOptions) -> ServerOptions {
        let mut options = options.clone();
        options.tokenizer = options.tokenizer.map(|p| self.resolve(&p));
        options
    }

    /// Checks the `server` tables: valid fields, and a remote model to apply to.
    fn validate_servers(&self) -> Result<()> {
        let agent = match &self.spec.agent {
            AgentSpec::Chat { model, server, .. } => Some((model.clone(), server.clone())),
            AgentSpec::Command { .. } => None,
        };
        let tables = [
            ("agent.server", agent.and_then(|(m, s)| s.map(|s| (m, *s)))),
            (
                "optimizer.server",
                self.spec
                    .optimizer
                    .server
                    .clone()
                    .map(|s| (self.optimizer_model(), s)),
            ),
        ];
        for (table, entry) in tables {
            let Some((model, options)) = entry else {
                continue;
            };
            options
                .validate()
                .map_err(|(field, reason)| self.err(&format!("{table}.{field}"), reason))?;
            let model_field = table.replace(".server", ".model");
            match ModelSpec::parse(&model).map_err(|e| self.err(&model_field, e.to_string()))? {
                ModelSpec::Remote(_) => {}
                ModelSpec::Local(_) => {
                    return Err(self.err(
                        table,
                        format!(
                            "only used with a remote model (NAME@URL), but `{model_field}` is `{}`",
                            crate::error::printable(&model)
                        ),
                    ))
                }
            }
            if let Some(path) = &options.tokenizer {
                let p = self.resolve(path);
                if !p.is_file() {
                    return Err(self.err(
                        &format!("{table}.tokenizer"),
                        format!("{} is not a file", p.display()),
                    ));
                }
            }
        }
        Ok(())
    }
}

/// Turns a TOML error into a task error naming the line and, when the message names one,
/// the field.
fn toml_error(path: &Path, text: &str, e: &toml::de::Error) -> Error {
    let line = e
        .span()
        .map(|s| text[..s.start.min(text.len())].matches('\n').count() + 1);
    let message = e.message().to_string();
    let field = message
        .split('`')
        .nth(1)
        .filter(|_| message.contains("field"))
        .unwrap_or("")
        .to_string();
    let reason = match line {
        Some(l) => format!("line {l}: {message}"),
        None => message,
    };
    Error::Task {
        file: path.to_path_buf(),
        field: if field.is_empty() {
            "(syntax)".into()
        } else {
            field
        },
        reason,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) const MINIMAL: &str = r#"
name = "t"
[components.system_prompt]
text = "Answer."
[agent]
type = "chat"
model = "m"
system = "{{system_prompt}}"
user = "{{question}}"
[data]
train = "train.jsonl"
[metric]
type = "exact"
"#;

    fn load(text: &str) -> Result<Task> {
        Task::from_str(text, Path::new("task.toml"), Path::new("."))
    }

    #[test]
    fn minimal_task_loads_with_defaults() {
        let t = load(MINIMAL).unwrap();
        assert_eq!(t.initial["system_prompt"], "Answer.");
        assert_eq!(t.spec.optimizer.iterations, 3);
        assert_eq!(t.optimizer_model(), "m");
    }

    #[test]
    fn unknown_field_is_named_with_its_line() {
        let text = MINIMAL.replace("[metric]", "[metric]\nbogus = 1");
        let err = load(&text).unwrap_err().to_string();
        assert!(err.contains("task.toml"), "{err}");
        assert!(err.contains("bogus"), "{err}");
        assert!(err.contains("line"), "{err}");
    }

    #[test]
    fn missing_agent_is_an_error() {
        let text = MINIMAL.replace("[agent]\ntype = \"chat\"", "[agentx]\ntype = \"chat\"");
        assert!(load(&text).is_err());
    }

    #[test]
    fn server_tables_are_validated_and_need_a_remote_model() {
        let remote = MINIMAL.replace("model = \"m\"", "model = \"m@http://127.0.0.1:8080\"");
        let text = format!("{remote}\n[agent.server]\nmax_in_flight = 4\napi_key_env = \"K\"\n");
        let t = load(&text.replace("[data]", "[data]\n")).expect("valid");
        assert_eq!(t.agent_server().unwrap().max_in_flight, 4);
        assert_eq!(
            t.optimizer_server().unwrap().max_in_flight,
            4,
            "the optimizer reuses the agent's model and options"
        );
        let text = remote.replace("[data]", "[agent.server]\nmax_in_flight = 0\n[data]");
        let err = load(&text).unwrap_err().to_string();
        assert!(err.contains("`agent.server.max_in_flight`"), "{err}");
        let text = remote.replace("[data]", "[agent.server]\nbogus = 1\n[data]");
        assert!(load(&text).unwrap_err().to_string().contains("bogus"));
        let text = format!("{MINIMAL}\n[optimizer.server]\nretries = 1\n");
        let err = load(&text).unwrap_err().to_string();
        assert!(
            err.contains("`optimizer.server`") && err.contains("remote model"),
            "{err}"
        );
        let text = format!("{MINIMAL}\n[optimizer]\nmodel = \"o@http://h:1\"\n[optimizer.server]\ntokenizer = \"missing.json\"\n");
        let err = load(&text).unwrap_err().to_string();
        assert!(err.contains("optimizer.server.tokenizer"), "{err}");
        let text = format!("{MINIMAL}\n[optimizer]\nmodel = \"o@http://h:1\"\n[optimizer.server]\nread_timeout_s = 2.5\n");
        let t = load(&text).expect("valid");
        assert_eq!(t.optimizer_server().unwrap().read_timeout_s, 2.5);
        assert!(t.agent_server().is_none());
    }

    #[test]
    fn exclusive_and_range_checks() {
        let text = format!("{MINIMAL}\n[optimizer]\nsubset_size = 3\nsubset_count = 2\n");
        let err = load(&text).unwrap_err().to_string();
        assert!(err.contains("optimizer.subset_size"), "{err}");
        let text = format!("{MINIMAL}\n[optimizer]\nmerge_fan_in = 1\n");
        assert!(load(&text)
            .unwrap_err()
            .to_string()
            .contains("merge_fan_in"));
        let text = MINIMAL.replace("train = \"train.jsonl\"", "file = \"all.jsonl\"");
        assert!(load(&text).unwrap_err().to_string().contains("data.split"));
    }
}
