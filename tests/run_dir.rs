//! The run directory against a changed task, a second process and a failing event log,
//! through the `fgo` binary on a command agent (no model is loaded).

use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::Value;

/// A task whose agent answers `3` to every question, with `examples` examples.
fn write_task(dir: &Path, examples: usize) -> PathBuf {
    std::fs::create_dir_all(dir).expect("task dir");
    let data: String = (0..examples)
        .map(|i| {
            format!(
                "{{\"id\": \"e{i}\", \"question\": \"q{i}\", \"answer\": {}}}\n",
                i % 4
            )
        })
        .collect();
    std::fs::write(dir.join("data.jsonl"), data).expect("write data");
    let task = "name = \"run-dir\"\n\
        [components.system_prompt]\ntext = \"Answer with a number.\"\n\
        [agent]\ntype = \"command\"\n\
        command = [\"sh\", \"-c\", \"cat >/dev/null; echo '{\\\"answer\\\": \\\"3\\\", \\\"trajectory\\\": \\\"3\\\"}'\"]\n\
        [data]\nfile = \"data.jsonl\"\nsplit = { train = 0.5, val = 0.25, test = 0.25 }\n\
        [metric]\ntype = \"exact\"\n\
        [optimizer]\nmodel = \"unused\"\niterations = 3\n";
    let path = dir.join("task.toml");
    std::fs::write(&path, task).expect("write task");
    path
}

fn fgo(args: &[&str]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_fgo"));
    cmd.args(args).arg("-q").env_remove("RUST_LOG");
    cmd
}

fn path(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

fn optimize(task: &Path, out: &Path) -> Command {
    fgo(&[
        "optimize",
        path(task),
        "--method",
        "none",
        "--out",
        path(out),
        "--json",
    ])
}

fn resume(dir: &Path, extra: &[&str]) -> Output {
    let mut args = vec!["resume", path(dir), "--json"];
    args.extend_from_slice(extra);
    fgo(&args).output().expect("fgo runs")
}

/// Asserts a successful run and returns the report it printed.
fn succeeded(what: &str, out: &Output) -> Value {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{what} failed: {stderr}");
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{what}: {e}"))
}

/// Asserts a refusal: status 2 and one `error:` line holding every needle.
fn refused(what: &str, out: &Output, needles: &[&str]) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{what}: {stderr}");
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "{what}: expected one line, got: {stderr}");
    assert!(lines[0].starts_with("error: "), "{what}: {stderr}");
    for needle in needles {
        assert!(
            lines[0].contains(needle),
            "{what}: `{needle}` not in: {stderr}"
        );
    }
}

fn read_json(p: &Path) -> Value {
    let text = std::fs::read_to_string(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

fn edit(file: &Path, from: &str, to: &str) {
    let text = std::fs::read_to_string(file).expect("read");
    assert!(text.contains(from), "`{from}` not in {}", file.display());
    std::fs::write(file, text.replacen(from, to, 1)).expect("write");
}

#[test]
fn resume_refuses_a_changed_task_unless_allowed_and_records_it() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let task = write_task(&tmp.path().join("task"), 8);
    let run = tmp.path().join("run");
    succeeded(
        "fgo optimize",
        &optimize(&task, &run).output().expect("runs"),
    );
    assert!(read_json(&run.join("run.json"))["task"]["metric"]["type"] == "exact");
    succeeded("unchanged resume", &resume(&run, &[]));

    let copy = run.join("task.toml");
    edit(&copy, "iterations = 3", "iterations = 4");
    refused(
        "changed iterations",
        &resume(&run, &[]),
        &[
            "task.toml",
            "`optimizer.iterations`",
            "--allow-changed-task",
        ],
    );
    edit(&copy, "type = \"exact\"", "type = \"numeric\"");
    refused("changed metric", &resume(&run, &[]), &["`metric.type`"]);
    edit(&copy, "Answer with a number.", "Answer.");
    refused(
        "changed component",
        &resume(&run, &[]),
        &["`components.system_prompt.text`"],
    );

    succeeded("allowed resume", &resume(&run, &["--allow-changed-task"]));
    let meta = read_json(&run.join("run.json"));
    assert_eq!(
        meta["task_changes"][0]["fields"],
        serde_json::json!([
            "components.system_prompt.text",
            "metric.type",
            "optimizer.iterations"
        ])
    );
    assert_eq!(
        meta["task"]["optimizer"]["iterations"], 3,
        "the original is kept"
    );
    let md = std::fs::read_to_string(run.join("report.md")).expect("report.md");
    assert!(
        md.contains("Resumed with a changed task (`--allow-changed-task`): `components.system_prompt.text`, `metric.type`, `optimizer.iterations`."),
        "{md}"
    );
    // The accepted task is the one later sessions are checked against.
    succeeded("resume after the accepted change", &resume(&run, &[]));
    edit(&copy, "iterations = 4", "iterations = 5");
    refused(
        "changed again",
        &resume(&run, &[]),
        &["`optimizer.iterations`"],
    );
}

#[test]
fn a_run_json_without_the_task_still_resumes() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let task = write_task(&tmp.path().join("task"), 8);
    let run = tmp.path().join("run");
    succeeded(
        "fgo optimize",
        &optimize(&task, &run).output().expect("runs"),
    );
    let mut meta = read_json(&run.join("run.json"));
    meta.as_object_mut().expect("object").remove("task");
    std::fs::write(run.join("run.json"), meta.to_string()).expect("write");
    succeeded("old run.json", &resume(&run, &[]));
}

/// Holds `dir/lock` as a second fgo process would.
fn hold_lock(dir: &Path) -> std::fs::File {
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(dir.join("lock"))
        .expect("lock file");
    // SAFETY: flock only reads the descriptor, which `file` keeps open.
    let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    assert_eq!(rc, 0, "lock: {}", std::io::Error::last_os_error());
    file
}

#[test]
fn a_run_directory_in_use_is_refused() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let task = write_task(&tmp.path().join("task"), 8);
    let run = tmp.path().join("run");
    succeeded(
        "fgo optimize",
        &optimize(&task, &run).output().expect("runs"),
    );
    let before = std::fs::read(run.join("events.jsonl")).expect("log");

    let held = hold_lock(&run);
    refused(
        "resume while held",
        &resume(&run, &[]),
        &["in use", path(&run)],
    );
    let fresh = tmp.path().join("fresh");
    std::fs::create_dir_all(&fresh).expect("dir");
    let other = hold_lock(&fresh);
    refused(
        "optimize while held",
        &optimize(&task, &fresh).output().expect("runs"),
        &["in use"],
    );
    assert_eq!(
        std::fs::read(run.join("events.jsonl")).expect("log"),
        before,
        "a refused resume touched the log"
    );
    drop(held);
    drop(other);
    succeeded("resume once released", &resume(&run, &[]));
    succeeded(
        "optimize once released",
        &optimize(&task, &fresh).output().expect("runs"),
    );
}

#[test]
fn a_failed_log_append_stops_the_run_and_resume_finishes_it() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let task = write_task(&tmp.path().join("task"), 80);
    let whole = tmp.path().join("whole");
    let uninterrupted = succeeded(
        "uninterrupted",
        &optimize(&task, &whole).output().expect("runs"),
    );
    let size = |p: &Path| std::fs::metadata(p).expect("size").len();
    let (meta, log) = (
        size(&whole.join("run.json")),
        size(&whole.join("events.jsonl")),
    );
    assert!(log > meta + 4000, "run.json {meta} bytes, log {log} bytes");
    // Files may grow to half-way through the log: every other file of the run fits.
    let limit = (meta + log) / 2;

    let run = tmp.path().join("run");
    let mut cmd = optimize(&task, &run);
    // SAFETY: setrlimit and signal are async-signal-safe.
    unsafe {
        cmd.pre_exec(move || {
            let rlim = libc::rlimit {
                rlim_cur: limit,
                rlim_max: limit,
            };
            if libc::setrlimit(libc::RLIMIT_FSIZE, &rlim) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            // A write past the limit then fails with EFBIG instead of killing the process.
            libc::signal(libc::SIGXFSZ, libc::SIG_IGN);
            Ok(())
        });
    }
    let out = cmd.output().expect("runs");
    refused(
        "run with a full log",
        &out,
        &[
            "events.jsonl",
            "cannot append to the event log",
            "fgo resume",
        ],
    );
    assert!(
        !run.join("report.json").exists(),
        "a stopped run wrote a report"
    );
    assert!(size(&run.join("events.jsonl")) <= limit);

    let resumed = succeeded("resume", &resume(&run, &[]));
    assert_eq!(resumed["initial"], uninterrupted["initial"]);
    assert_eq!(resumed["status"], "completed");
    let commands = |dir: &Path| {
        std::fs::read_to_string(dir.join("events.jsonl"))
            .expect("log")
            .lines()
            .filter(|l| l.contains("\"type\":\"command\""))
            .count()
    };
    assert_eq!(commands(&run), commands(&whole));
}
