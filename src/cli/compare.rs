//! `fgo compare TASK --optimizer-model A --optimizer-model B ...`: the same task optimized by
//! several optimizer models, one run directory each, and a leaderboard by test score.
//!
//! Each model's run directory is named by a slug of its spec plus a short hash of the whole
//! spec, so two specs that slug alike (`a/b.gguf`, `a-b.gguf`) never share a directory. A
//! leaderboard row is one method of one run; its optimizer tokens are that method's alone.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use clap::Args;

use fgo::optimizer::data::rng::stable_hash;
use fgo::optimizer::report::rundir::RunDir;
use fgo::optimizer::report::study::optimizer_tokens;
use fgo::optimizer::report::Method;
use fgo::optimizer::report::RunReport;

use super::optimize::{agent_models, run_in_dir, Among, MethodArg, ModelCache, RuntimeArgs};

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
    let (task, data) = fgo::optimizer::data::prepare(&args.task)?;
    let method = Method::from(args.method);
    let out = args.out.clone().unwrap_or_else(|| {
        PathBuf::from("runs").join(format!("compare-{}-s{}", task.spec.name, args.seed))
    });
    let mut cache = ModelCache::new(&args.runtime)?;
    let pool = std::sync::Arc::default();
    let mut rows = Vec::new();
    for model in &args.optimizer_models {
        let mut t = task.clone();
        t.spec.optimizer.model = Some(model.clone());
        // The previous optimizer model is dropped before the next one loads; the agent's
        // model stays.
        cache.keep_only(&agent_models(&t));
        let dir = RunDir::create(
            &out.join(slug(model)),
            &t,
            &data,
            method,
            args.seed,
            Some(model.clone()),
        )?;
        let models = cache.models(&t, method)?;
        let report = run_in_dir(
            &dir,
            &t,
            &data,
            &models,
            method,
            args.seed,
            Among {
                pool: &pool,
                label: None,
            },
        )?;
        rows.extend(leaderboard_rows(model, &report, &dir.dir));
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

/// The directory name of an optimizer model's run: the spec with every character other
/// than an ASCII letter, digit or `.` replaced by `-`, then `-` and the first 8 hex digits
/// of the spec's SHA-256, so distinct specs get distinct names.
pub(crate) fn slug(spec: &str) -> String {
    let readable: String = spec
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '.' {
                c
            } else {
                '-'
            }
        })
        .collect();
    format!("{readable}-{}", &stable_hash(spec.as_bytes())[..8])
}

/// One leaderboard row per method of a run; the optimizer tokens (prompt + completion) of
/// a row are those of its method's calls only.
fn leaderboard_rows(model: &str, report: &RunReport, dir: &Path) -> Vec<serde_json::Value> {
    report
        .methods
        .iter()
        .map(|m| {
            let (prompt, completion) = optimizer_tokens(report, &m.method);
            serde_json::json!({
                "optimizer_model": model,
                "method": m.method,
                "train": m.train_score,
                "val": m.val_score,
                "test": m.test_score,
                "initial_test": report.initial.test,
                "optimizer_tokens": prompt + completion,
                "elapsed_s": report.elapsed_s,
                "run_dir": dir,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slugs_of_specs_that_read_alike_differ() {
        let (a, b) = (slug("a/b.gguf"), slug("a-b.gguf"));
        assert_ne!(a, b);
        assert!(
            a.starts_with("a-b.gguf-") && b.starts_with("a-b.gguf-"),
            "{a} {b}"
        );
        assert_eq!(a.len(), "a-b.gguf-".len() + 8);
        assert_eq!(slug("a/b.gguf"), a, "stable");
        let odd = slug("hf:owner/repo/model Q4.gguf");
        assert!(
            odd.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '.' || c == '-'),
            "{odd}"
        );
    }

    /// A report of a `both` run whose accounting has optimizer rows of both methods.
    fn both_report() -> RunReport {
        let counters = serde_json::json!({
            "reasks": 0, "parse_failures": 0, "call_errors": 0, "leak_rejections": 0,
            "copy_rejections": 0, "unchanged_candidates": 0, "candidates_evaluated": 0,
            "accepted": 0, "rolled_back": 0, "agent_failures": 0
        });
        let method = |name: &str, test: f64| {
            serde_json::json!({
                "method": name, "final_components": {}, "final_source": "initial",
                "train_score": 0.5, "train_n": 2, "val_score": null, "test_score": test,
                "subsets": [], "merges": [], "counters": counters, "budget_hit": null
            })
        };
        let row = |method: &str, role: &str, prompt: usize, completion: usize| {
            serde_json::json!({
                "method": method, "stage": "optimize", "role": role, "calls": 1, "live": 1,
                "replayed": 0, "memo_hits": 0, "prompt_tokens": prompt,
                "cached_prompt_tokens": 0, "completion_tokens": completion, "time_s": 0.1
            })
        };
        let report = serde_json::json!({
            "schema_version": 1, "task": "t", "method": "both", "seed": 0,
            "agent_model": "a", "optimizer_model": "o", "sizes": [2, 0, 1],
            "status": "completed",
            "initial": { "components": {}, "train": 0.0, "val": null, "test": 0.0 },
            "methods": [method("fgo", 1.0), method("all_at_once", 0.0)],
            "steps": [],
            "accounting": {
                "rows": [
                    row("shared", "agent", 1000, 10),
                    row("fgo", "optimizer", 300, 20),
                    row("fgo", "agent", 50, 5),
                    row("all_at_once", "optimizer", 100, 4)
                ],
                "total": row("all", "all", 1450, 39)
            },
            "elapsed_s": 3.0
        });
        serde_json::from_value(report).expect("a valid report")
    }

    #[test]
    fn leaderboard_tokens_are_split_by_method() {
        let rows = leaderboard_rows("o", &both_report(), Path::new("runs/x"));
        let tokens: Vec<(&str, u64)> = rows
            .iter()
            .map(|r| {
                (
                    r["method"].as_str().unwrap_or(""),
                    r["optimizer_tokens"].as_u64().unwrap_or(0),
                )
            })
            .collect();
        assert_eq!(tokens, vec![("fgo", 320), ("all_at_once", 104)]);
        assert_eq!(rows[0]["run_dir"], "runs/x");
    }
}
