//! `fgo eval TASK [--component NAME=FILE]...`: score components on train, val and test
//! without optimizing (nothing is written; calls are memoized within the command).

use std::path::PathBuf;

use clap::Args;

use fgo::optimizer::exec::calls::Calls;
use fgo::optimizer::report::run::execute;
use fgo::optimizer::report::Method;

use super::optimize::{print_report, ModelCache, RuntimeArgs};
use super::progress::StderrProgress;

/// Arguments of `fgo eval`.
#[derive(Debug, Args)]
pub struct EvalArgs {
    /// The task file (TOML).
    pub task: PathBuf,
    /// Replace a component's initial value with a file's content (repeatable).
    #[arg(long = "component", value_name = "NAME=FILE")]
    pub components: Vec<String>,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub runtime: RuntimeArgs,
}

/// Runs `fgo eval`.
pub fn run(args: EvalArgs) -> anyhow::Result<()> {
    let (mut task, data) = fgo::optimizer::data::prepare(&args.task)?;
    for spec in &args.components {
        let Some((name, file)) = spec.split_once('=') else {
            anyhow::bail!("invalid value for `--component`: `{spec}` is not NAME=FILE");
        };
        if !task.initial.contains_key(name) {
            let known: Vec<&String> = task.initial.keys().collect();
            anyhow::bail!(
                "invalid value for `--component`: no component `{name}` (the task has {known:?})"
            );
        }
        let text = fgo::error::read_text(
            std::path::Path::new(file),
            fgo::optimizer::data::task::COMPONENT_FILE_LIMIT,
            "a component file",
        )?;
        task.initial.insert(name.to_string(), text);
    }
    let mut cache = ModelCache::new(&args.runtime)?;
    let models = cache.models(&task, Method::None)?;
    let progress = StderrProgress::new();
    let calls = Calls::in_memory().with_observer(progress.observer());
    let report = execute(&task, &data, &models, Method::None, 0, &calls, &progress)?;
    drop(progress);
    print_report(&report, std::path::Path::new("-"), args.json)
}
