//! Subcommands and the options they share.
//!
//! Results go to standard output through [`outln!`] and [`out!`], which return write
//! errors instead of panicking on them, so that a closed pipe ends the program cleanly,
//! and which escape control characters (other than newlines and tabs) when standard output
//! is a terminal: a component, a completion or a name read from a file cannot drive it.

/// `println!` that returns an I/O error (a closed pipe) to the caller instead of panicking.
macro_rules! outln {
    () => {
        crate::cli::write_stdout("\n")?
    };
    ($($arg:tt)*) => {
        crate::cli::write_stdout(&format!("{}\n", format_args!($($arg)*)))?
    };
}

/// `print!` that returns an I/O error to the caller instead of panicking.
macro_rules! out {
    ($($arg:tt)*) => {
        crate::cli::write_stdout(&format!($($arg)*))?
    };
}

/// Writes `text` to standard output and flushes it; on a terminal, control characters
/// other than newlines and tabs are escaped first ([`fgo::error::terminal_safe`]).
pub(crate) fn write_stdout(text: &str) -> std::io::Result<()> {
    use std::io::{IsTerminal as _, Write as _};
    let mut stdout = std::io::stdout().lock();
    if stdout.is_terminal() {
        stdout.write_all(fgo::error::terminal_safe(text).as_bytes())?;
    } else {
        stdout.write_all(text.as_bytes())?;
    }
    stdout.flush()
}

mod bench;
mod compare;
mod eval;
mod generate;
mod models;
mod optimize;
mod progress;
mod report;
mod resume;
mod serve;
mod study;

use clap::{Args, Parser, Subcommand};

/// Offline LLM-as-optimizer with an embedded GGUF engine.
#[derive(Debug, Parser)]
#[command(name = "fgo", version, about)]
pub struct Cli {
    /// More log output (repeat for more); RUST_LOG overrides.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,
    /// Only errors on stderr.
    #[arg(short, long, global = true)]
    pub quiet: bool,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Optimize a task's components (FGO, all-at-once, or none) into a run directory.
    Optimize(optimize::OptimizeArgs),
    /// Score components on a task without optimizing.
    Eval(eval::EvalArgs),
    /// Continue an interrupted run (even after kill -9).
    Resume(resume::ResumeArgs),
    /// Re-render and print a run's report.
    Report(report::ReportArgs),
    /// Compare optimizer models on one task (leaderboard).
    Compare(compare::CompareArgs),
    /// Run a grid of seeds and training-set sizes and compare methods with intervals.
    Study(study::StudyArgs),
    /// Generate a completion with a local model.
    Generate(generate::GenerateArgs),
    /// List installed and fetchable models.
    Models(models::ModelsArgs),
    /// Measure prompt-processing and generation speed of one sequence.
    Bench(bench::BenchArgs),
    /// Serve a local model over an OpenAI-compatible HTTP API.
    Serve(serve::ServeArgs),
}

/// Where and how to run a model.
#[derive(Debug, Clone, Args)]
pub struct EngineArgs {
    /// Model: a GGUF path, an alias from models/ (see `fgo models`), hf:OWNER/REPO/FILE.gguf,
    /// or NAME@URL[,URL...] for a model on OpenAI-compatible servers (docs/remote.md).
    #[arg(short, long, default_value = "qwen2.5-coder-1.5b")]
    pub model: String,
    /// Device: cpu, cuda or cuda:N.
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// Threads for CPU work (default: the machine's cores).
    #[arg(long)]
    pub threads: Option<usize>,
    /// A tokenizer.json to use instead of the GGUF's vocabulary.
    #[arg(long)]
    pub tokenizer: Option<std::path::PathBuf>,
    /// Memory for the key/value cache of all sequences, e.g. 512M or 2G (default: a
    /// quarter of the available memory, at most 8G).
    #[arg(long, value_parser = parse_bytes)]
    pub kv_budget: Option<usize>,
    /// Do not reuse cached prompt prefixes across requests.
    #[arg(long)]
    pub no_prefix_reuse: bool,
    /// Element type of cached keys and values: f16 (half the memory and the reads) or f32.
    #[arg(long, default_value = "f16")]
    pub kv_dtype: fgo::engine::kv::KvDtype,
}

/// Parses a byte count with an optional binary suffix: `1048576`, `512K`, `64M`, `1.5G`.
pub(crate) fn parse_bytes(text: &str) -> Result<usize, String> {
    let t = text.trim();
    // The unit is the trailing run of letters, so that `1e3M` and `nanG` reach the number
    // parser (and its refusals) rather than being taken for units.
    let at = t.trim_end_matches(|c: char| c.is_ascii_alphabetic()).len();
    let (number, unit) = t.split_at(at);
    let scale: f64 = match unit
        .to_ascii_uppercase()
        .trim_end_matches("IB")
        .trim_end_matches('B')
    {
        "" => 1.0,
        "K" => 1024.0,
        "M" => 1024.0 * 1024.0,
        "G" => 1024.0 * 1024.0 * 1024.0,
        _ => return Err(format!("`{text}`: unknown unit (use K, M or G)")),
    };
    let value: f64 = number
        .trim()
        .parse()
        .map_err(|_| format!("`{text}`: expected a size such as 512M or 2G"))?;
    if !(value.is_finite() && value > 0.0) {
        return Err(format!("`{text}`: the size must be positive"));
    }
    Ok((value * scale) as usize)
}

/// A model loaded by [`EngineArgs::load_model`].
pub enum LoadedModel {
    Local(Box<fgo::engine::Engine>),
    Remote(Box<fgo::llm::openai::OpenAiLlm>),
}

impl EngineArgs {
    /// Loads a local model or connects to a remote one (`NAME@URL`, its API key in the
    /// environment variable `api_key_env`); the engine options (device, tokenizer,
    /// key/value budget) apply to a local model only.
    pub fn load_model(&self, api_key_env: Option<&str>) -> anyhow::Result<LoadedModel> {
        use fgo::llm::spec::{ModelSpec, ServerOptions};
        match ModelSpec::parse(&self.model)? {
            ModelSpec::Remote(remote) => {
                let options = ServerOptions {
                    api_key_env: api_key_env.map(str::to_string),
                    ..ServerOptions::default()
                };
                options.validate().map_err(|(field, reason)| {
                    anyhow::anyhow!(
                        "invalid value for `--{}`: {reason}",
                        field.replace('_', "-")
                    )
                })?;
                Ok(LoadedModel::Remote(Box::new(
                    fgo::llm::openai::OpenAiLlm::connect(&remote, &options)?,
                )))
            }
            ModelSpec::Local(_) => {
                if api_key_env.is_some() {
                    anyhow::bail!(
                        "invalid value for `--api-key-env`: only used with a remote model (NAME@URL)"
                    );
                }
                Ok(LoadedModel::Local(Box::new(self.load()?)))
            }
        }
    }

    /// Resolves the model and loads it.
    pub fn load(&self) -> anyhow::Result<fgo::engine::Engine> {
        configure_threads(self.threads)?;
        let path = fgo::engine::source::resolve(&self.model)?;
        let options = fgo::engine::LoadOptions {
            device: fgo::engine::device::parse_device(&self.device)?,
            tokenizer_json: self.tokenizer.clone(),
            kv_budget_bytes: self.kv_budget,
            prefix_reuse: !self.no_prefix_reuse,
            max_batch: None,
            kv_dtype: self.kv_dtype,
        };
        tracing::info!(path = %path.display(), "loading model");
        Ok(fgo::engine::Engine::load(&path, &options)?)
    }
}

/// More threads than this per core only slow the spinning team down (and a huge count
/// would spawn threads until the system refuses).
const MAX_THREADS_PER_CORE: usize = 4;

/// Sizes the global thread pool used by the tensor kernels and CPU-side work.
pub(crate) fn configure_threads(threads: Option<usize>) -> anyhow::Result<()> {
    let Some(n) = threads else { return Ok(()) };
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let most = cores * MAX_THREADS_PER_CORE;
    if n == 0 || n > most {
        anyhow::bail!(
            "invalid value for `--threads`: {n} is outside 1..={most} \
             ({MAX_THREADS_PER_CORE} per core on {cores} cores)"
        );
    }
    // candle sizes its matmul parallelism from this variable; set it before any kernel runs.
    std::env::set_var("RAYON_NUM_THREADS", n.to_string());
    // Fails only if the pool was already built, in which case the variable above has
    // already sized it the same way.
    let _ = rayon::ThreadPoolBuilder::new()
        .num_threads(n)
        .build_global();
    Ok(())
}

/// Whether an error comes from writing to a standard output whose reader has gone.
pub fn is_broken_pipe(err: &anyhow::Error) -> bool {
    // Only a write of ours fails with a bare I/O error; library errors wrap theirs.
    err.downcast_ref::<std::io::Error>()
        .is_some_and(|e| e.kind() == std::io::ErrorKind::BrokenPipe)
}

/// Sets up `tracing` on stderr.
pub fn init_logging(verbose: u8, quiet: bool) {
    let level = match (quiet, verbose) {
        (true, _) => "error",
        (false, 0) => "warn",
        (false, 1) => "info",
        (false, _) => "debug",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(level));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .without_time()
        .init();
}

/// Runs the chosen subcommand.
pub fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Optimize(args) => optimize::run(args),
        Command::Eval(args) => eval::run(args),
        Command::Resume(args) => resume::run(args),
        Command::Report(args) => report::run(args),
        Command::Compare(args) => compare::run(args),
        Command::Study(args) => study::run(args),
        Command::Generate(args) => generate::run(args),
        Command::Models(args) => models::run(args),
        Command::Bench(args) => bench::run(args),
        Command::Serve(args) => serve::run(args),
    }
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory as _;

    /// Every subcommand's options are consistent (unique names, valid defaults): clap checks
    /// this only when a subcommand is parsed, so a clash would otherwise surface as a panic
    /// of that one subcommand.
    #[test]
    fn the_command_line_is_well_formed() {
        super::Cli::command().debug_assert();
    }
}
