//! fgo's HTTP backend against `fgo serve`: the same tiny optimization (smollm2-135m as
//! agent and optimizer, greedy) run in-process and through the server gives the same
//! components, scores and token counts, and the HTTP run's event log replays on resume
//! without a new call.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use serde_json::Value;

mod common;
#[path = "common/report.rs"]
mod report;
#[path = "common/tiny_task.rs"]
mod tiny_task;

use tiny_task::TinyTask;

fn work_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("serve_roundtrip")
}

/// The tiny task with `model` as agent and optimizer, greedy, in `dir`.
fn write_task(dir: &Path, model: &str) -> PathBuf {
    tiny_task::write(
        dir,
        &TinyTask {
            name: "tiny-roundtrip",
            agent_model: model,
            optimizer_model: Some(model),
            optimizer_temperature: 0.0,
            optimizer_tokens: 24,
            subset_count: 2,
        },
    )
}

/// `fgo serve` on smollm2, killed when dropped.
struct Server {
    child: Child,
    addr: String,
}

impl Server {
    fn start(model: &Path) -> Server {
        let mut child = Command::new(env!("CARGO_BIN_EXE_fgo"))
            .args(["serve", "--model"])
            .arg(model)
            .args(["--port", "0", "--kv-budget", "128M"])
            .args(["--served-model-name", "smollm2"])
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("fgo serve starts");
        let stdout = child.stdout.take().expect("stdout");
        let mut line = String::new();
        BufReader::new(stdout)
            .read_line(&mut line)
            .expect("read the address");
        let Some(addr) = line.trim().strip_prefix("listening on http://") else {
            let _ = child.kill();
            panic!("unexpected first line of fgo serve: {line:?}");
        };
        let addr = addr.to_string();
        Server { child, addr }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs fgo with `args` and returns the report it printed with `--json`.
fn fgo_json(args: &[&str]) -> Value {
    let out = Command::new(env!("CARGO_BIN_EXE_fgo"))
        .env_remove("RUST_LOG")
        .args(args)
        .output()
        .expect("run fgo");
    assert!(
        out.status.success(),
        "fgo {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("report JSON")
}

fn optimize(task: &Path, out: &Path) -> Value {
    let _ = std::fs::remove_dir_all(out);
    fgo_json(&[
        "-q",
        "optimize",
        task.to_str().expect("utf-8"),
        "--out",
        out.to_str().expect("utf-8"),
        "--seed",
        "2",
        "--json",
    ])
}

/// What must agree between the two runs: components, scores and tokens per stage.
fn outcome(r: &Value) -> Value {
    let methods: Vec<Value> = r["methods"]
        .as_array()
        .expect("methods")
        .iter()
        .map(|m| {
            serde_json::json!({
                "components": m["final_components"],
                "scores": [m["train_score"], m["val_score"], m["test_score"]],
                "per_example": m["per_example"],
            })
        })
        .collect();
    let tokens = report::token_rows(r);
    serde_json::json!({ "initial": r["initial"], "methods": methods, "tokens": tokens })
}

#[test]
fn optimizing_through_fgo_serve_equals_the_in_process_run_and_resumes_from_its_log() {
    let model = common::model_path("SmolLM2-135M-Instruct.Q4_1.gguf");
    let server = Server::start(&model);
    let dir = work_dir();
    let local = write_task(&dir.join("local"), model.to_str().expect("utf-8"));
    let remote = write_task(
        &dir.join("remote"),
        &format!("smollm2@http://{}", server.addr),
    );
    let a = optimize(&local, &dir.join("local-run"));
    let b = optimize(&remote, &dir.join("remote-run"));
    assert_eq!(outcome(&a), outcome(&b), "in-process vs through fgo serve");
    assert!(b["accounting"]["total"]["live"].as_u64().unwrap_or(0) > 0);

    // The HTTP run's log answers every call of a resume.
    let run = dir.join("remote-run");
    let c = fgo_json(&["-q", "resume", run.to_str().expect("utf-8"), "--json"]);
    assert_eq!(c["accounting"]["total"]["live"], 0, "{}", c["accounting"]);
    assert_eq!(outcome(&b)["methods"], outcome(&c)["methods"]);
}
