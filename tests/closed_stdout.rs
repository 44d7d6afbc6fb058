//! A reader that closes standard output early (`fgo report --json | true`) ends the
//! program quietly: status 0, nothing on stderr, no panic.

use std::path::Path;
use std::process::{Command, Output, Stdio};

mod common;

/// Runs fgo with its standard output a pipe whose read end is already closed, so that its
/// first write fails with a broken pipe.
fn fgo_into_a_closed_pipe(args: &[&str]) -> Output {
    let (reader, writer) = std::io::pipe().expect("pipe");
    drop(reader);
    Command::new(env!("CARGO_BIN_EXE_fgo"))
        .args(args)
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .stdout(writer)
        .stderr(Stdio::piped())
        .output()
        .expect("fgo runs")
}

fn assert_quiet(out: &Output) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "stderr: {stderr}");
    assert!(stderr.trim().is_empty(), "stderr: {stderr}");
}

fn path(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

#[test]
fn report_json_into_a_closed_pipe() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = common::crate_root().join("tests/hostile/data/ok.jsonl");
    let task = dir.path().join("task.toml");
    std::fs::write(
        &task,
        format!(
            "name = \"pipe\"\n[components.system_prompt]\ntext = \"Answer with a number.\"\n\
             [agent]\ntype = \"command\"\ncommand = [\"sh\", \"-c\", \"echo '{{\\\"answer\\\": 2}}'\"]\n\
             [data]\nfile = {:?}\nsplit = {{ train = 0.5, val = 0.25, test = 0.25 }}\n\
             [metric]\ntype = \"exact\"\n[optimizer]\nmodel = \"unused\"\n",
            path(&data)
        ),
    )
    .expect("write task");
    let run = dir.path().join("run");
    let made = Command::new(env!("CARGO_BIN_EXE_fgo"))
        .args([
            "optimize",
            path(&task),
            "--method",
            "none",
            "-q",
            "--out",
            path(&run),
        ])
        .output()
        .expect("fgo runs");
    assert!(
        made.status.success(),
        "{}",
        String::from_utf8_lossy(&made.stderr)
    );
    assert_quiet(&fgo_into_a_closed_pipe(&["report", path(&run), "--json"]));
    assert_quiet(&fgo_into_a_closed_pipe(&["report", path(&run)]));
}

#[test]
fn models_and_generate_into_a_closed_pipe() {
    assert_quiet(&fgo_into_a_closed_pipe(&["models"]));
    assert_quiet(&fgo_into_a_closed_pipe(&["models", "--json"]));
    let model = common::crate_root().join("tests/fixtures/qwen3-tiny.gguf");
    let args = [
        "generate",
        "-m",
        path(&model),
        "-p",
        "hi",
        "--max-tokens",
        "4",
        "--kv-budget",
        "64M",
    ];
    assert_quiet(&fgo_into_a_closed_pipe(&args));
    let mut json = args.to_vec();
    json.push("--json");
    assert_quiet(&fgo_into_a_closed_pipe(&json));
}
