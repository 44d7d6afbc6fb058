//! `fgo models`: what the manifest offers and what is installed.

use clap::Args;
use fgo::engine::source::{models_dir, Manifest};
use serde_json::json;

#[derive(Debug, Args)]
pub struct ModelsArgs {
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
}

pub fn run(args: ModelsArgs) -> anyhow::Result<()> {
    let manifest = Manifest::load(&models_dir())?;
    let rows: Vec<_> = manifest
        .entries
        .iter()
        .map(|e| (e, manifest.installed_path(e)))
        .collect();
    if args.json {
        let list: Vec<_> = rows
            .iter()
            .map(|(e, path)| json!({ "model": e, "installed": path.is_some(), "path": path }))
            .collect();
        outln!("{}", serde_json::to_string_pretty(&list)?);
        return Ok(());
    }
    outln!("models directory: {}", manifest.dir.display());
    outln!(
        "{:<22} {:<10} {:>9}  {:<12} {:<10}  file",
        "alias",
        "arch",
        "size",
        "license",
        "status"
    );
    for (e, path) in rows {
        let status = if path.is_some() {
            "installed"
        } else {
            "fetchable"
        };
        outln!(
            "{:<22} {:<10} {:>6.0} MB  {:<12} {:<10}  {}",
            e.alias,
            e.architecture,
            e.bytes as f64 / 1e6,
            e.license,
            status,
            e.file
        );
    }
    outln!("\nfetch with: scripts/fetch-models.sh ALIAS... (or `all`)");
    Ok(())
}
