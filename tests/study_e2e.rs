//! `fgo study` end to end through the binary, on smollm2-135m as agent and optimizer, with
//! a tiny grid: one training-set size (1 of the task's 2 training examples), seeds 0 and 1,
//! methods fgo and none, one subset, one iteration, one candidate, a few tokens per call.
//!
//! The summary is checked against the cells' own report.json files, a second study over
//! the same directory must read the cells without a single new event, and a cell whose
//! report was removed must be resumed from its log without a new call. The two cells run
//! side by side by default; one after the other (`--jobs 1`) they must give the same
//! results, and each way the calls both cells make alike are made once.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;
use std::time::Instant;

use serde_json::Value;

mod common;
#[path = "common/report.rs"]
mod report;

const MODEL_FILE: &str = "SmolLM2-135M-Instruct.Q4_1.gguf";

const TRAIN: &str = r#"{"id": "t0", "question": "Mia has 4 goats, 6 ducks and a horse. How many animals did Mia have in total?", "answer": 11}
{"id": "t1", "question": "Theo has 2 oranges, two pencils, a kiwi and 6 mangoes. How many pieces of fruit did Theo have in total?", "answer": 9}
"#;
const TEST: &str = r#"{"id": "x0", "question": "Lena saw three pears, three plums and two kiwis. How many pieces of fruit did Lena see in total?", "answer": 8}
{"id": "x1", "question": "How many days are in a week?", "answer": 7}
"#;

fn work_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("study_e2e")
}

/// Writes the tiny task and its data; returns the task file.
fn write_task(dir: &Path) -> PathBuf {
    let model = common::model_path(MODEL_FILE);
    let model = model.to_str().expect("utf-8 model path");
    std::fs::create_dir_all(dir).expect("task dir");
    std::fs::write(dir.join("train.jsonl"), TRAIN).expect("train");
    std::fs::write(dir.join("test.jsonl"), TEST).expect("test");
    let task = format!(
        r#"name = "tiny-study"

[components.system_prompt]
text = "Answer with one number."

[agent]
type = "chat"
model = "{model}"
system = "{{{{system_prompt}}}}"
user = "{{{{question}}}}"
params = {{ temperature = 0.0, max_new_tokens = 6 }}
extract = {{ type = "regex", pattern = "-?\\d+" }}

[data]
train = "train.jsonl"
test = "test.jsonl"

[metric]
type = "numeric"

[optimizer]
model = "{model}"
params = {{ temperature = 0.7, max_new_tokens = 16 }}
diagnosis_params = {{ temperature = 0.0, max_new_tokens = 6 }}
subset_count = 1
iterations = 1
candidates = 1
operators = ["rewrite"]
max_reasks = 0
show_failures = 1
show_successes = 0
trajectory_chars = 100
"#
    );
    let path = dir.join("task.toml");
    std::fs::write(&path, task).expect("write task");
    path
}

fn fgo() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_fgo"));
    cmd.env_remove("RUST_LOG");
    cmd
}

fn study(task: &Path, out: &Path) -> Output {
    study_with(task, out, &[])
}

fn study_with(task: &Path, out: &Path, extra: &[&str]) -> Output {
    fgo()
        .args([
            "study",
            task.to_str().expect("utf-8"),
            "--seeds",
            "2",
            "--methods",
            "fgo,none",
            "--train-sizes",
            "1",
            "--out",
            out.to_str().expect("utf-8"),
            "--json",
        ])
        .args(extra)
        .output()
        .expect("fgo runs")
}

/// Asserts success and returns the study.json printed with `--json`.
fn succeeded(what: &str, out: &Output) -> Value {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "{what} failed ({}): {stderr}",
        out.status
    );
    assert!(!stderr.contains("panicked"), "{what}: {stderr}");
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{what}: stdout is not JSON: {e}"))
}

fn read_json(path: &Path) -> Value {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn f(v: &Value) -> f64 {
    v.as_f64().unwrap_or_else(|| panic!("not a number: {v}"))
}

/// Equal values, numbers within a relative 1e-12 (parsing a float back from JSON may move
/// it by a unit in the last place).
fn same(a: &Value, b: &Value) -> bool {
    match (a.as_f64(), b.as_f64()) {
        (Some(x), Some(y)) => (x - y).abs() <= 1e-12 * x.abs().max(1.0),
        _ => a == b,
    }
}

fn calls_logged(dir: &Path) -> usize {
    std::fs::read_to_string(dir.join("events.jsonl"))
        .expect("event log")
        .lines()
        .filter(|l| serde_json::from_str::<Value>(l).is_ok_and(|e| e["type"] == "call"))
        .count()
}

/// The study run once from scratch, shared by the tests.
struct Fresh {
    task: PathBuf,
    out: PathBuf,
    study: Value,
}

fn fresh() -> &'static Fresh {
    static FRESH: OnceLock<Fresh> = OnceLock::new();
    FRESH.get_or_init(|| {
        let root = work_dir().join("fresh");
        let _ = std::fs::remove_dir_all(&root);
        let task = write_task(&root.join("task"));
        let out = root.join("study");
        let started = Instant::now();
        let study = succeeded("fgo study", &study(&task, &out));
        eprintln!("study of 2 cells: {:.1}s", started.elapsed().as_secs_f64());
        Fresh { task, out, study }
    })
}

fn result<'a>(study: &'a Value, method: &str) -> &'a Value {
    study["results"]
        .as_array()
        .expect("results")
        .iter()
        .find(|r| r["method"] == method)
        .unwrap_or_else(|| panic!("no result for {method}"))
}

#[test]
fn study_summary_matches_the_cells_reports() {
    let Fresh { out, study: s, .. } = fresh();
    assert_eq!(&read_json(&out.join("study.json")), s);
    let md = std::fs::read_to_string(out.join("study.md")).expect("study.md");
    assert!(md.contains("## Paired comparisons on test"), "{md}");
    let svg = std::fs::read_to_string(out.join("study.svg")).expect("study.svg");
    assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));

    assert_eq!(s["task"], "tiny-study");
    assert_eq!(s["methods"], serde_json::json!(["fgo", "none"]));
    assert_eq!(s["seeds"], serde_json::json!([0, 1]));
    assert_eq!(s["train_sizes"], serde_json::json!([1]));
    let cells = s["cells"].as_array().expect("cells");
    assert_eq!(cells.len(), 2);

    let mut reports = Vec::new();
    for (seed, cell) in cells.iter().enumerate() {
        let dir = out.join(format!("train1-seed{seed}"));
        assert_eq!(cell["dir"].as_str().map(PathBuf::from), Some(dir.clone()));
        assert_eq!(cell["source"], "run");
        let r = read_json(&dir.join("report.json"));
        // One run per cell, with FGO; the training set cut to the asked size.
        assert_eq!(r["method"], "fgo");
        assert_eq!(r["seed"], seed as u64);
        assert_eq!(r["sizes"], serde_json::json!([1, 0, 2]));
        assert_eq!(cell["sizes"], r["sizes"]);
        assert!(same(&cell["elapsed_s"], &r["elapsed_s"]));
        reports.push(r);
    }

    // Per-seed scores and tokens are the reports'; means are their means.
    for (method, test_of) in [
        (
            "fgo",
            (|r: &Value| r["methods"][0]["test_score"].clone()) as fn(&Value) -> Value,
        ),
        ("none", |r: &Value| r["initial"]["test"].clone()),
    ] {
        let res = result(s, method);
        let per_seed = res["per_seed"].as_array().expect("per_seed");
        let mut tests = Vec::new();
        let mut prompt_tokens = 0;
        for (p, r) in per_seed.iter().zip(&reports) {
            assert_eq!(p["seed"], r["seed"]);
            assert!(
                same(&p["test"], &test_of(r)),
                "{method} seed {}: {} vs {}",
                p["seed"],
                p["test"],
                test_of(r)
            );
            tests.push(f(&test_of(r)));
            let from_rows: u64 = r["accounting"]["rows"]
                .as_array()
                .expect("rows")
                .iter()
                .filter(|row| row["method"] == method && row["role"] == "optimizer")
                .map(|row| row["prompt_tokens"].as_u64().expect("tokens"))
                .sum();
            assert_eq!(p["optimizer_prompt_tokens"].as_u64(), Some(from_rows));
            prompt_tokens += from_rows;
        }
        let mean = tests.iter().sum::<f64>() / 2.0;
        assert!((f(&res["test"]["mean"]) - mean).abs() < 1e-12, "{method}");
        assert!(f(&res["test"]["low"]) <= mean && mean <= f(&res["test"]["high"]));
        assert_eq!(
            f(&res["optimizer_prompt_tokens"]),
            prompt_tokens as f64 / 2.0
        );
        if method == "fgo" {
            assert!(prompt_tokens > 0, "fgo called the optimizer");
        } else {
            assert_eq!(prompt_tokens, 0);
        }
    }

    // The paired comparison pools the per-example test scores of both cells.
    let c = &s["comparisons"][0];
    assert_eq!(
        (c["a"].as_str(), c["b"].as_str()),
        (Some("fgo"), Some("none"))
    );
    assert_eq!(c["cells"], 2);
    let (mut wins, mut losses) = (0, 0);
    for r in &reports {
        let a = r["methods"][0]["per_example"]["test"]
            .as_array()
            .expect("fgo");
        let b = r["initial"]["per_example"]["test"]
            .as_array()
            .expect("none");
        assert_eq!(a.len(), 2);
        for (x, y) in a.iter().zip(b) {
            match (f(x) >= 1.0 - 1e-9, f(y) >= 1.0 - 1e-9) {
                (true, false) => wins += 1,
                (false, true) => losses += 1,
                _ => {}
            }
        }
    }
    let p = &c["paired"];
    assert_eq!(
        (p["n"].as_u64(), p["wins"].as_u64(), p["losses"].as_u64()),
        (Some(4), Some(wins), Some(losses))
    );
    assert!(f(&p["diff_low"]) <= f(&p["mean_diff"]) && f(&p["mean_diff"]) <= f(&p["diff_high"]));
}

#[test]
fn rerun_reads_finished_cells_and_resumes_an_unfinished_one() {
    let fresh = fresh();
    let cells: Vec<PathBuf> = (0..2)
        .map(|s| fresh.out.join(format!("train1-seed{s}")))
        .collect();
    let logs: Vec<Vec<u8>> = cells
        .iter()
        .map(|d| std::fs::read(d.join("events.jsonl")).expect("log"))
        .collect();

    // Copy the study so the shared fresh one stays as it was.
    let root = work_dir().join("rerun");
    let _ = std::fs::remove_dir_all(&root);
    let out = root.join("study");
    std::fs::create_dir_all(&out).expect("dir");
    let copy = |from: &Path, to: &Path| {
        let status = Command::new("cp")
            .args([
                "-a",
                from.to_str().expect("utf-8"),
                to.to_str().expect("utf-8"),
            ])
            .status()
            .expect("cp");
        assert!(status.success());
    };
    for name in ["train1-seed0", "train1-seed1"] {
        copy(&fresh.out.join(name), &out.join(name));
    }

    // Every cell finished: read, and not a byte is added to any event log.
    let started = Instant::now();
    let again = succeeded("second fgo study", &study(&fresh.task, &out));
    eprintln!(
        "rerun reading 2 cells: {:.1}s",
        started.elapsed().as_secs_f64()
    );
    for (cell, log) in cells.iter().zip(&logs) {
        let name = cell.file_name().expect("name");
        let now = std::fs::read(out.join(name).join("events.jsonl")).expect("log");
        assert!(
            &now == log,
            "{name:?}: the event log changed when the cell was read ({} -> {} bytes)",
            log.len(),
            now.len()
        );
    }
    let sources: Vec<&Value> = again["cells"]
        .as_array()
        .expect("cells")
        .iter()
        .map(|c| &c["source"])
        .collect();
    assert_eq!(sources, vec!["read", "read"]);
    for key in [
        "results",
        "comparisons",
        "timing",
        "methods",
        "seeds",
        "train_sizes",
    ] {
        assert_eq!(again[key], fresh.study[key], "{key}");
    }

    // A cell with a log but no report: resumed, every call replayed, none made anew.
    let seed1 = out.join("train1-seed1");
    let before = calls_logged(&seed1);
    std::fs::remove_file(seed1.join("report.json")).expect("remove report");
    let resumed = succeeded("third fgo study", &study(&fresh.task, &out));
    let sources: Vec<&Value> = resumed["cells"]
        .as_array()
        .expect("cells")
        .iter()
        .map(|c| &c["source"])
        .collect();
    assert_eq!(sources, vec!["read", "resumed"]);
    assert_eq!(
        calls_logged(&seed1),
        before,
        "a resumed cell made a new call"
    );
    let report = read_json(&seed1.join("report.json"));
    assert_eq!(report["accounting"]["total"]["live"], 0);
    for key in ["results", "comparisons"] {
        assert_eq!(resumed[key], fresh.study[key], "{key}");
    }

    // Cells made for other methods are refused, not mixed in.
    let o = fgo()
        .args([
            "study",
            fresh.task.to_str().expect("utf-8"),
            "--seeds",
            "2",
            "--methods",
            "fgo,all-at-once,none",
            "--train-sizes",
            "1",
            "--out",
            out.to_str().expect("utf-8"),
        ])
        .output()
        .expect("fgo runs");
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("train1-seed0") && stderr.contains("not Both"),
        "{stderr}"
    );
}

#[test]
fn bad_grids_fail_before_any_model_is_loaded() {
    let root = work_dir().join("bad");
    let _ = std::fs::remove_dir_all(&root);
    let task = write_task(&root.join("task"));
    let task = task.to_str().expect("utf-8");
    for (extra, needle) in [
        (vec!["--seeds", "0"], "--seeds"),
        (
            vec!["--train-sizes", "3"],
            "3 training examples asked, the task has 2",
        ),
        (vec!["--train-sizes", "0"], "at least 1"),
    ] {
        let out = root.join("out").to_string_lossy().into_owned();
        let mut args = vec!["study", task, "--out", out.as_str()];
        args.extend(extra);
        let o = fgo().args(&args).output().expect("fgo runs");
        let stderr = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(stderr.contains(needle), "{args:?}: {stderr}");
    }
}

/// What a cell's report says that must not depend on the cells beside it.
fn cell_view(report: &Value) -> Value {
    let tokens = report::token_rows(report);
    serde_json::json!({
        "initial": report["initial"],
        "methods": report["methods"],
        "tokens": tokens,
    })
}

/// A study's cells' reports, in grid order.
fn cell_reports(study: &Value) -> Vec<Value> {
    study["cells"]
        .as_array()
        .expect("cells")
        .iter()
        .map(|c| read_json(&PathBuf::from(c["dir"].as_str().expect("dir")).join("report.json")))
        .collect()
}

#[test]
fn cells_side_by_side_equal_cells_one_after_another() {
    let Fresh {
        task,
        study: side_by_side,
        ..
    } = fresh();
    let out = work_dir().join("one-by-one");
    let _ = std::fs::remove_dir_all(&out);
    let one_by_one = succeeded(
        "fgo study --jobs 1",
        &study_with(task, &out, &["--jobs", "1"]),
    );
    let (a, b) = (cell_reports(side_by_side), cell_reports(&one_by_one));
    assert_eq!(a.len(), 2);
    for (a, b) in a.iter().zip(&b) {
        assert_eq!(cell_view(a), cell_view(b), "seed {}", a["seed"]);
    }
    for field in ["results", "comparisons"] {
        assert_eq!(side_by_side[field], one_by_one[field], "{field}");
    }
    // Each call of the grid is made once either way: the initial evaluation of the test
    // examples, the same in both cells, by one cell only.
    let live = |reports: &[Value]| -> u64 {
        reports
            .iter()
            .map(|r| r["accounting"]["total"]["live"].as_u64().expect("live"))
            .sum()
    };
    assert_eq!(live(&a), live(&b));
    let shared = |r: &Value| r["accounting"]["total"]["shared"].as_u64().expect("shared");
    assert!(
        a.iter().chain(&b).any(|r| shared(r) > 0),
        "no cell borrowed a call"
    );
}
