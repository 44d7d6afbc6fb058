//! `fgo compare TASK --optimizer-model A --optimizer-model B ...`: the same task optimized by
//! several optimizer models, one run directory each, and a leaderboard by test score.

use std::fmt::Write as _;
use std::path::PathBuf;

use clap::Args;

use fgo::optimizer::run::Method;
use fgo::optimizer::rundir::RunDir;

use super::optimize::{run_in_dir, MethodArg, ModelCache, RuntimeArgs};

/// Arguments of `fgo compare`.
#[derive(Debug, Args)]
pub struct CompareArgs {
    /// The task file (TOML).
    pub task: PathBuf,
    /// An optimizer model to compare (repeat; at least one).
    #[arg(long = "optimizer-model", required = true)]
    pub optimizer_models: Vec<String>,
    /// Optimization method of every run.
    #[arg(long, value_enum, default_value = "fgo")]
    pub method: MethodArg,
    /// Directory for the runs and the leaderboard (default: runs/compare-TASK-sSEED).
    #[arg(long)]
    pub out: Option<PathBuf>,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Print the leaderboard as JSON.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub runtime: RuntimeArgs,
}

/// Runs `fgo compare`.
pub fn run(args: CompareArgs) -> anyhow::Result<()> {
    let (task, data) = fgo::optimizer::prepare(&args.task)?;
    let method = Method::from(args.method);
    let out = args.out.clone().unwrap_or_else(|| {
        PathBuf::from("runs").join(format!("compare-{}-s{}", task.spec.name, args.seed))
    });
    let mut cache = ModelCache::new(&args.runtime)?;
    let mut rows = Vec::new();
    for model in &args.optimizer_models {
        let mut t = task.clone();
        t.spec.optimizer.model = Some(model.clone());
        let slug: String = model
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '.' {
                    c
                } else {
                    '-'
                }
            })
            .collect();
        let dir = RunDir::create(
            &out.join(slug),
            &t,
            &data,
            method,
            args.seed,
            Some(model.clone()),
        )?;
        let models = cache.models(&t, method)?;
        let report = run_in_dir(&dir, &t, &data, &models, method, args.seed)?;
        for m in &report.methods {
            rows.push(serde_json::json!({
                "optimizer_model": model,
                "method": m.method,
                "train": m.train_score,
                "val": m.val_score,
                "test": m.test_score,
                "initial_test": report.initial.test,
                "optimizer_tokens": report.accounting.rows.iter().filter(|r| r.role == "optimizer").map(|r| r.prompt_tokens + r.completion_tokens).sum::<usize>(),
                "elapsed_s": report.elapsed_s,
                "run_dir": dir.dir,
            }));
        }
    }
    let key = |v: &serde_json::Value| v["test"].as_f64().or(v["val"].as_f64()).unwrap_or(-1.0);
    rows.sort_by(|a, b| key(b).total_cmp(&key(a)));
    let json = serde_json::to_string_pretty(&rows)?;
    std::fs::write(out.join("leaderboard.json"), &json)?;
    let mut md = String::from("| rank | optimizer model | method | train | val | test | optimizer tokens | time (s) |\n|---|---|---|---|---|---|---|---|\n");
    let pct = |v: &serde_json::Value| {
        v.as_f64()
            .map_or("-".to_string(), |x| format!("{:.1}%", 100.0 * x))
    };
    for (i, r) in rows.iter().enumerate() {
        let _ = writeln!(
            md,
            "| {} | {} | {} | {} | {} | {} | {} | {:.0} |",
            i + 1,
            r["optimizer_model"].as_str().unwrap_or(""),
            r["method"].as_str().unwrap_or(""),
            pct(&r["train"]),
            pct(&r["val"]),
            pct(&r["test"]),
            r["optimizer_tokens"],
            r["elapsed_s"].as_f64().unwrap_or(0.0)
        );
    }
    std::fs::write(out.join("leaderboard.md"), &md)?;
    if args.json {
        outln!("{json}");
    } else {
        out!("{md}");
    }
    Ok(())
}
