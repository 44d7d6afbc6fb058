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
    let run = common::command_agent_run(dir.path(), "pipe", "Answer with a number.");
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
