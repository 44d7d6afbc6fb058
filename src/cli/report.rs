//! `fgo report RUN_DIR`: re-render a finished run's report.md and charts and print it.

use std::path::PathBuf;

use clap::Args;

use fgo::optimizer::report::rundir::RunDir;

/// Arguments of `fgo report`.
#[derive(Debug, Args)]
pub struct ReportArgs {
    /// The run directory.
    pub dir: PathBuf,
    /// Print report.json instead of the Markdown report.
    #[arg(long)]
    pub json: bool,
}

/// Runs `fgo report`.
pub fn run(args: ReportArgs) -> anyhow::Result<()> {
    let report = RunDir::read_report(&args.dir).map_err(|e| {
        anyhow::anyhow!(
            "{e} (a run that was interrupted has no report yet: finish it with `fgo resume`)"
        )
    })?;
    let (dir, _) = RunDir::open(&args.dir)?;
    dir.write_report(&report)?;
    if args.json {
        outln!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        out!("{}", report.to_markdown());
    }
    Ok(())
}
