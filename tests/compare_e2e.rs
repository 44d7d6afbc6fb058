//! `fgo compare` end to end on real models: the agent is smollm2-135m, the optimizers are
//! qwen2.5-coder-0.5b and then gemma3-270m, on a tiny task (one iteration, one candidate,
//! a few tokens per call).
//!
//! - The initial evaluation is computed once: the second run answers it from the first
//!   run's records (copied into its own event log), sending none of it to the model.
//! - The first optimizer model is dropped before the second is loaded: the peak memory of
//!   the comparison stays near that of a comparison of the first model alone, far below
//!   what holding both would take. Memory is checked loosely, never timed.

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

mod common;
#[path = "common/tiny_task.rs"]
mod tiny_task;

use tiny_task::TinyTask;

fn work_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("compare_e2e")
}

fn write_task(dir: &Path) -> PathBuf {
    let agent = common::model_path("SmolLM2-135M-Instruct.Q4_1.gguf");
    tiny_task::write(
        dir,
        &TinyTask {
            name: "tiny-compare",
            agent_model: agent.to_str().expect("utf-8 model path"),
            optimizer_model: None,
            optimizer_temperature: 0.7,
            optimizer_tokens: 16,
            subset_count: 1,
        },
    )
}

/// Runs `fgo compare` with `models` as optimizers; returns its peak resident memory in
/// bytes (from the kernel's accounting of the finished child).
fn compare(task: &Path, out: &Path, models: &[&Path]) -> u64 {
    let _ = std::fs::remove_dir_all(out);
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_fgo"));
    cmd.env_remove("RUST_LOG")
        .args(["-q", "compare"])
        .arg(task)
        .arg("--out")
        .arg(out)
        .args(["--kv-budget", "64M", "--json"]);
    for m in models {
        cmd.arg("--optimizer-model").arg(m);
    }
    let stderr_path = out.with_extension("stderr");
    let stderr_file = std::fs::File::create(&stderr_path).expect("stderr file");
    // Reaped below by wait4, which also reports the child's peak memory.
    #[allow(clippy::zombie_processes)]
    let child = cmd
        .stdout(std::process::Stdio::null())
        .stderr(stderr_file)
        .spawn()
        .expect("spawn fgo compare");
    let pid = child.id() as libc::pid_t;
    let mut status = 0;
    // SAFETY: `rusage` is plain data the kernel fills in; `pid` is our own child, reaped
    // here once (the `Child` handle is not waited on afterwards).
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    let reaped = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
    assert_eq!(reaped, pid, "wait4 failed");
    let stderr = std::fs::read_to_string(&stderr_path).unwrap_or_default();
    assert!(
        libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
        "fgo compare failed ({status}): {stderr}"
    );
    // ru_maxrss is in KiB on Linux.
    usage.ru_maxrss as u64 * 1024
}

fn report(dir: &Path) -> Value {
    let text = std::fs::read_to_string(dir.join("report.json")).expect("report.json");
    serde_json::from_str(&text).expect("report JSON")
}

/// The run directories of a comparison, in the order the models were given.
fn run_dirs(out: &Path, models: &[&Path]) -> Vec<PathBuf> {
    let board: Value = serde_json::from_str(
        &std::fs::read_to_string(out.join("leaderboard.json")).expect("leaderboard"),
    )
    .expect("leaderboard JSON");
    models
        .iter()
        .map(|m| {
            let row = board
                .as_array()
                .expect("rows")
                .iter()
                .find(|r| r["optimizer_model"] == m.to_str().expect("utf-8"))
                .expect("a row per model");
            PathBuf::from(row["run_dir"].as_str().expect("run_dir"))
        })
        .collect()
}

/// The (source counts, tokens) of a run's rows of `stage` of the shared method.
fn shared_row(report: &Value, stage: &str) -> (u64, u64, u64) {
    let rows = report["accounting"]["rows"].as_array().expect("rows");
    let row = rows
        .iter()
        .find(|r| r["method"] == "shared" && r["stage"] == stage && r["role"] == "agent")
        .unwrap_or_else(|| panic!("no shared {stage} row: {rows:?}"));
    let n = |k: &str| row[k].as_u64().unwrap_or(0);
    (n("live"), n("shared"), n("prompt_tokens"))
}

#[test]
fn compare_computes_the_initial_evaluation_once_and_holds_one_optimizer_at_a_time() {
    let dir = work_dir();
    let task = write_task(&dir);
    let qwen = common::model_path("qwen2.5-coder-0.5b-instruct.gguf");
    let gemma = common::model_path("gemma-3-270m-q4_k_m.gguf");

    let alone = compare(&task, &dir.join("alone"), &[&qwen]);
    let models = [qwen.as_path(), gemma.as_path()];
    let both = compare(&task, &dir.join("both"), &models);

    eprintln!(
        "peak memory: {} MB with the first optimizer alone, {} MB with both",
        alone >> 20,
        both >> 20
    );
    // Memory: the second model replaced the first. Holding both would add gemma3's
    // weights (about 300 MB resident) to the first comparison's peak.
    let mb = |b: u64| b / (1 << 20);
    let bound = alone + alone / 8 + (64 << 20);
    assert!(
        both <= bound,
        "peak {} MB with two optimizers against {} MB with the first alone (bound {} MB)",
        mb(both),
        mb(alone),
        mb(bound)
    );

    // The initial evaluation: made live by the first run, answered from it in the second.
    let dirs = run_dirs(&dir.join("both"), &models);
    let first = report(&dirs[0]);
    let second = report(&dirs[1]);
    let (live1, _, tokens1) = shared_row(&first, "initial_eval");
    let (live2, shared2, tokens2) = shared_row(&second, "initial_eval");
    assert_eq!(live1, 3, "two train and one val example");
    assert_eq!((live2, shared2), (0, 3), "{:?}", second["accounting"]);
    assert_eq!(tokens1, tokens2, "the same calls, the same tokens");
    assert_eq!(first["initial"], second["initial"]);
    let (_, shared_test, _) = shared_row(&second, "final_eval");
    assert_eq!(
        shared_test, 1,
        "the initial component on test, from the first run"
    );
    // The second run's own log holds the borrowed records, so that it resumes alone.
    let log = std::fs::read_to_string(dirs[1].join("events.jsonl")).expect("events");
    let initial_records = log
        .lines()
        .filter(|l| l.contains(r#""method":"shared""#) && l.contains(r#""stage":"initial_eval""#))
        .count();
    assert_eq!(initial_records, 3);
}
