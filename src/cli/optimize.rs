//! `fgo optimize TASK`: run FGO (or a baseline) on a task and write a run directory.
//!
//! Also holds what the optimizer subcommands share: runtime options, model loading (a model
//! named by both agent and optimizer is loaded once), and the summary printed on stdout.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context as _;
use clap::{Args, ValueEnum};

use fgo::llm::openai::OpenAiLlm;
use fgo::llm::spec::{ModelSpec, ServerOptions};
use fgo::llm::Llm;
use fgo::optimizer::data::task::{AgentSpec, Task};
use fgo::optimizer::exec::pool::CallPool;
use fgo::optimizer::report::run::{execute, Models};
use fgo::optimizer::report::rundir::{DirProgress, RunDir};
use fgo::optimizer::report::Method;
use fgo::optimizer::report::RunReport;

use super::progress::StderrProgress;

/// The `--method` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum MethodArg {
    /// Divide, optimize each subset, merge progressively.
    Fgo,
    /// Every trajectory in one optimizer prompt (baseline).
    AllAtOnce,
    /// No optimization: evaluate the initial components.
    None,
    /// FGO and all-at-once in one run, compared in the report.
    Both,
}

impl From<MethodArg> for Method {
    fn from(m: MethodArg) -> Self {
        match m {
            MethodArg::Fgo => Method::Fgo,
            MethodArg::AllAtOnce => Method::AllAtOnce,
            MethodArg::None => Method::None,
            MethodArg::Both => Method::Both,
        }
    }
}

/// Where models run.
#[derive(Debug, Clone, Args)]
pub struct RuntimeArgs {
    /// Device: cpu, cuda or cuda:N.
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// Threads for CPU work (default: the machine's cores).
    #[arg(long)]
    pub threads: Option<usize>,
    /// Memory for the key/value cache of each model's sequences, e.g. 512M or 2G
    /// (default: a quarter of the available memory, at most 8G).
    #[arg(long, value_parser = super::parse_bytes)]
    pub kv_budget: Option<usize>,
    /// Do not reuse cached prompt prefixes across requests (an ablation switch).
    #[arg(long)]
    pub no_prefix_reuse: bool,
    /// The most sequences in one forward step (default 256; 1 turns batching off, an
    /// ablation switch).
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..=4096))]
    pub max_batch: Option<u64>,
    /// Element type of cached keys and values: f16 (half the memory and the reads) or f32.
    #[arg(long, default_value = "f16")]
    pub kv_dtype: fgo::engine::kv::KvDtype,
}

/// Arguments of `fgo optimize`.
#[derive(Debug, Args)]
pub struct OptimizeArgs {
    /// The task file (TOML).
    pub task: PathBuf,
    /// Optimization method.
    #[arg(long, value_enum, default_value = "fgo")]
    pub method: MethodArg,
    /// Run directory (default: runs/TASK-METHOD-sSEED-UNIXTIME).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Seed of every random choice of the run.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Use this optimizer model instead of the task's.
    #[arg(long)]
    pub optimizer_model: Option<String>,
    /// Print report.json on stdout instead of a summary.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub runtime: RuntimeArgs,
}

/// Runs `fgo optimize`.
pub fn run(args: OptimizeArgs) -> anyhow::Result<()> {
    let (mut task, data) = fgo::optimizer::data::prepare(&args.task)?;
    if let Some(m) = &args.optimizer_model {
        task.spec.optimizer.model = Some(m.clone());
    }
    let method = Method::from(args.method);
    let out = args
        .out
        .clone()
        .unwrap_or_else(|| default_out(&task, method, args.seed));
    let dir = RunDir::create(
        &out,
        &task,
        &data,
        method,
        args.seed,
        args.optimizer_model.clone(),
    )?;
    let mut cache = ModelCache::new(&args.runtime)?;
    let models = cache.models(&task, method)?;
    let report = run_in_dir(
        &dir,
        &task,
        &data,
        &models,
        method,
        args.seed,
        Among {
            pool: &Arc::default(),
            label: None,
        },
    )?;
    print_report(&report, &dir.dir, args.json)
}

/// How a run stands among the runs of a study or comparison.
#[derive(Clone, Copy)]
pub(crate) struct Among<'a> {
    /// The calls every run with the same agent makes alike (the initial evaluation),
    /// shared with the runs before, after or beside this one.
    pub pool: &'a Arc<CallPool>,
    /// For a run beside others: progress as plain lines that start with this.
    pub label: Option<&'a str>,
}

/// Runs the task in `dir` and writes its report.
pub(crate) fn run_in_dir(
    dir: &RunDir,
    task: &Task,
    data: &fgo::optimizer::data::dataset::Dataset,
    models: &Models,
    method: Method,
    seed: u64,
    among: Among<'_>,
) -> anyhow::Result<RunReport> {
    let stderr = match among.label {
        Some(label) => StderrProgress::labelled(label),
        None => StderrProgress::new(),
    };
    let calls = dir
        .calls(data)?
        .with_pool(among.pool.clone())
        .with_observer(stderr.observer());
    let progress = DirProgress {
        dir,
        calls: &calls,
        inner: &stderr,
    };
    let report = execute(task, data, models, method, seed, &calls, &progress)?;
    dir.finish(&calls, &report)?;
    Ok(report)
}

fn default_out(task: &Task, method: Method, seed: u64) -> PathBuf {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let name: String = task
        .spec
        .name
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .collect();
    PathBuf::from("runs").join(format!(
        "{name}-{}-s{seed}-{secs}",
        format!("{method:?}").to_lowercase()
    ))
}

/// Loads each model spec once.
pub(crate) struct ModelCache {
    runtime: RuntimeArgs,
    loaded: HashMap<String, Arc<dyn Llm>>,
}

impl ModelCache {
    pub(crate) fn new(runtime: &RuntimeArgs) -> anyhow::Result<Self> {
        super::configure_threads(runtime.threads)?;
        Ok(Self {
            runtime: runtime.clone(),
            loaded: HashMap::new(),
        })
    }

    /// The model of `spec`, loaded (a local model) or connected to (a remote one, with
    /// `server`'s options, ignored for a local model) on first use.
    pub(crate) fn get(
        &mut self,
        spec: &str,
        server: Option<&ServerOptions>,
    ) -> anyhow::Result<Arc<dyn Llm>> {
        let remote = match ModelSpec::parse(spec)? {
            ModelSpec::Remote(remote) => Some(remote),
            ModelSpec::Local(_) => None,
        };
        let options = server.cloned().unwrap_or_default();
        let cache_key = match &remote {
            Some(_) => format!("{spec}\n{options:?}"),
            None => spec.to_string(),
        };
        if let Some(m) = self.loaded.get(&cache_key) {
            return Ok(m.clone());
        }
        if let Some(remote) = remote {
            tracing::info!(model = %remote.display(), "connecting to a remote model");
            let m: Arc<dyn Llm> = Arc::new(OpenAiLlm::connect(&remote, &options)?);
            self.loaded.insert(cache_key, m.clone());
            return Ok(m);
        }
        let path = fgo::engine::source::resolve(spec)?;
        let options = fgo::engine::LoadOptions {
            device: fgo::engine::device::parse_device(&self.runtime.device)?,
            kv_budget_bytes: self.runtime.kv_budget,
            prefix_reuse: !self.runtime.no_prefix_reuse,
            max_batch: self.runtime.max_batch.map(|n| n as usize),
            kv_dtype: self.runtime.kv_dtype,
            ..Default::default()
        };
        tracing::info!(path = %path.display(), "loading model");
        let engine = fgo::engine::Engine::load(&path, &options)
            .with_context(|| format!("loading model `{spec}`"))?;
        let m: Arc<dyn Llm> = Arc::new(engine);
        self.loaded.insert(spec.to_string(), m.clone());
        Ok(m)
    }

    /// Drops every loaded model but those named in `keep`, so that a comparison holds one
    /// optimizer model at a time (a model still used elsewhere lives until its last user
    /// lets it go).
    pub(crate) fn keep_only(&mut self, keep: &[String]) {
        // A remote model's cache key is its spec, a newline, then its options.
        self.loaded.retain(|key, _| {
            let spec = key.split('\n').next().unwrap_or(key);
            keep.iter().any(|k| k == spec)
        });
    }

    /// The agent's and optimizer's models for `task` run with `method`.
    pub(crate) fn models(&mut self, task: &Task, method: Method) -> anyhow::Result<Models> {
        let agent = match &task.spec.agent {
            AgentSpec::Chat { model, .. } => Some(self.get(model, task.agent_server().as_ref())?),
            AgentSpec::Command { .. } => None,
        };
        let optimizer = if method.needs_optimizer() {
            Some(self.get(&task.optimizer_model(), task.optimizer_server().as_ref())?)
        } else {
            None
        };
        Ok(Models { agent, optimizer })
    }
}

/// The model specs a task's agent uses (none for a command agent).
pub(crate) fn agent_models(task: &Task) -> Vec<String> {
    match &task.spec.agent {
        AgentSpec::Chat { model, .. } => vec![model.clone()],
        AgentSpec::Command { .. } => Vec::new(),
    }
}

/// Prints report.json (with `--json`) or a short summary on stdout.
pub(crate) fn print_report(report: &RunReport, dir: &Path, json: bool) -> anyhow::Result<()> {
    if json {
        outln!("{}", serde_json::to_string_pretty(report)?);
        return Ok(());
    }
    let pct = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{:.1}%", 100.0 * v));
    outln!(
        "task {} ({}), run directory {}",
        report.task,
        report.status,
        dir.display()
    );
    outln!();
    for m in &report.methods {
        for (name, text) in &m.final_components {
            let before = report
                .initial
                .components
                .get(name)
                .map_or("", String::as_str);
            if text == before {
                outln!("{}: `{name}` unchanged ({})\n", m.method, m.final_source);
                continue;
            }
            outln!(
                "{}: final `{name}` ({}):\n{text}\n",
                m.method,
                m.final_source
            );
            outln!(
                "what changed ([-removed-] {{+added+}}):\n{}\n",
                fgo::optimizer::methods::diff::word_diff(before, text)
            );
        }
    }
    let t = &report.accounting.total;
    outln!(
        "{} calls ({} live, {} replayed, {} memo hits), {} prompt tokens ({} cached), {} completion tokens, {:.1}s",
        t.calls, t.live, t.replayed, t.memo_hits, t.prompt_tokens, t.cached_prompt_tokens, t.completion_tokens, report.elapsed_s
    );
    // What a remote model's server did not measure (the table's 0 or a guess).
    for (model, notes) in &report.model_notes {
        let unmeasured = ["not reported", "estimates", "assumed"];
        for note in notes
            .iter()
            .filter(|n| unmeasured.iter().any(|u| n.contains(u)))
        {
            outln!("model {model}: {note}");
        }
    }
    outln!();
    outln!(
        "{:<14} {:>8} {:>8} {:>8}",
        "component",
        "train",
        "val",
        "test"
    );
    outln!(
        "{:<14} {:>8} {:>8} {:>8}",
        "initial",
        pct(Some(report.initial.train)),
        pct(report.initial.val),
        pct(report.initial.test)
    );
    for m in &report.methods {
        outln!(
            "{:<14} {:>8} {:>8} {:>8}",
            m.method,
            pct(Some(m.train_score)),
            pct(m.val_score),
            pct(m.test_score)
        );
    }
    if let Some(c) = &report.constant_baseline {
        outln!(
            "{:<14} {:>8} {:>8} {:>8}",
            "constant",
            pct(Some(c.train)),
            pct(c.val),
            pct(c.test)
        );
    }
    for m in &report.methods {
        if let (Some(before), Some(after)) = (report.initial.test, m.test_score) {
            outln!(
                "{}: test {} -> {} ({:+.1} points)",
                m.method,
                pct(Some(before)),
                pct(Some(after)),
                100.0 * (after - before)
            );
        }
    }
    for note in [report.constant_note(), report.cut_off_note()] {
        if !note.is_empty() {
            outln!("{note}");
        }
    }
    Ok(())
}
