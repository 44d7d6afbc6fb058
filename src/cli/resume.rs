//! `fgo resume RUN_DIR`: continue a run that was interrupted (even by `kill -9`).
//!
//! The run is retraced from the start with every recorded call answered from the event log,
//! so finished calls are never repeated and the result is the one the uninterrupted run
//! would have given. A task.toml edited since the run was made is refused, naming the first
//! field that differs, unless `--allow-changed-task` is given.

use std::path::PathBuf;

use clap::Args;

use super::optimize::{print_report, run_in_dir, Among, ModelCache, RuntimeArgs};

/// Arguments of `fgo resume`.
#[derive(Debug, Args)]
pub struct ResumeArgs {
    /// The run directory.
    pub dir: PathBuf,
    /// Print report.json on stdout instead of a summary.
    #[arg(long)]
    pub json: bool,
    /// Resume even if the run directory's task.toml no longer matches the task the run was
    /// made with; the changed fields are recorded in run.json and named in report.md.
    #[arg(long)]
    pub allow_changed_task: bool,
    #[command(flatten)]
    pub runtime: RuntimeArgs,
}

/// Runs `fgo resume`.
pub fn run(args: ResumeArgs) -> anyhow::Result<()> {
    let (mut dir, task) = fgo::optimizer::report::rundir::RunDir::open(&args.dir)?;
    if args.allow_changed_task {
        dir.accept_changed_task(&task)?;
    } else {
        dir.check_task()?;
    }
    let data = fgo::optimizer::data::dataset::Dataset::load(&task)?;
    fgo::optimizer::data::validate(&task, &data)?;
    dir.check_data(&data)?;
    let mut cache = ModelCache::new(&args.runtime)?;
    let models = cache.models(&task, dir.meta.method)?;
    let report = run_in_dir(
        &dir,
        &task,
        &data,
        &models,
        dir.meta.method,
        dir.meta.seed,
        Among {
            pool: &std::sync::Arc::default(),
            label: None,
        },
    )?;
    print_report(&report, &dir.dir, args.json)
}
