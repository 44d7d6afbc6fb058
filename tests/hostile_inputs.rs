//! The hostile-input corpus, run through the binary.
//!
//! Inputs come from three places: committed files under `tests/hostile/` (task files, data
//! files, agent programs), GGUF files made here from the tiny test model
//! `tests/fixtures/qwen3-tiny.gguf` (rewritten with candle's GGUF writer, or patched byte by
//! byte), and command-line values. Each input that is bad input must make `fgo` exit with
//! status 2 and one `error:` line that names the problem, without a panic, within
//! [`TIME_LIMIT`] and under [`MEMORY_LIMIT`] of data memory. A hostile agent program is
//! tried on one example before the run: failing there is bad input like the others; one
//! that answers but misbehaves around it (a background child holding its output, a closed
//! input) must let the run complete within the time bound. A few malformed tokenizer
//! entries the engine tolerates by design need only end without a panic.
//!
//! `FGO_HOSTILE_BIN=/path/to/fgo` runs the corpus against another build (an older one, to
//! see what it got wrong); `--nocapture` prints the count by kind, the slowest inputs and
//! the largest peak RSS of a run.

use std::collections::HashMap;
use std::io::Write;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use candle_core::quantized::gguf_file::{self, Value};
use candle_core::quantized::QTensor;
use candle_core::Device;
use wait_timeout::ChildExt;

mod common;

/// The most wall time one input may take.
const TIME_LIMIT: Duration = Duration::from_secs(20);

/// The data memory (`RLIMIT_DATA`) each run gets: an allocation beyond it aborts the run,
/// which fails the test.
const MEMORY_LIMIT: u64 = 1 << 30;

/// What an input must produce.
enum Expect {
    /// Exit status 2 and one `error:` line containing every needle.
    Error(Vec<String>),
    /// Exit status 0 and a completed `--json` report.
    Completed,
    /// Exit status 0 or 2, no panic: input the engine tolerates (a malformed merge is
    /// skipped, an unknown token type is a normal token).
    Survives,
}

struct Case {
    name: String,
    args: Vec<String>,
    stdin: Option<Vec<u8>>,
    /// A file to read standard input from instead.
    stdin_file: Option<PathBuf>,
    envs: Vec<(String, PathBuf)>,
    expect: Expect,
}

fn error_case(name: &str, args: &[&str], needles: &[&str]) -> Case {
    Case {
        name: name.to_string(),
        args: args.iter().map(ToString::to_string).collect(),
        stdin: None,
        stdin_file: None,
        envs: Vec::new(),
        expect: Expect::Error(needles.iter().map(ToString::to_string).collect()),
    }
}

/// The outcome of one run, for the summary.
struct Ran {
    name: String,
    seconds: f64,
}

fn run(case: &Case) -> Result<Ran, String> {
    // FGO_HOSTILE_BIN runs the corpus against another build (an older one, to compare).
    let bin = std::env::var_os("FGO_HOSTILE_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_fgo")));
    let mut cmd = Command::new(bin);
    cmd.args(&case.args)
        .env_remove("RUST_LOG")
        .env("RUST_BACKTRACE", "1")
        .stdin(match (&case.stdin, &case.stdin_file) {
            (Some(_), _) => Stdio::piped(),
            (None, Some(f)) => Stdio::from(std::fs::File::open(f).map_err(|e| e.to_string())?),
            (None, None) => Stdio::null(),
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (k, v) in &case.envs {
        cmd.env(k, v);
    }
    // SAFETY: only async-signal-safe setrlimit runs between fork and exec.
    unsafe {
        cmd.pre_exec(|| {
            let limit = libc::rlimit {
                rlim_cur: MEMORY_LIMIT,
                rlim_max: MEMORY_LIMIT,
            };
            if libc::setrlimit(libc::RLIMIT_DATA, &limit) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let started = Instant::now();
    let mut child = cmd.spawn().map_err(|e| format!("cannot run fgo: {e}"))?;
    if let Some(input) = &case.stdin {
        let mut stdin = child.stdin.take().ok_or("no stdin")?;
        let input = input.clone();
        // fgo may refuse the input before reading all of it.
        std::thread::spawn(move || {
            let _ = stdin.write_all(&input);
        });
    }
    let mut stdout = child.stdout.take().ok_or("no stdout")?;
    let mut stderr = child.stderr.take().ok_or("no stderr")?;
    let out_reader = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = std::io::Read::read_to_end(&mut stdout, &mut v);
        v
    });
    let err_reader = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = std::io::Read::read_to_end(&mut stderr, &mut v);
        v
    });
    let status = match child.wait_timeout(TIME_LIMIT).map_err(|e| e.to_string())? {
        Some(status) => status,
        None => {
            let _ = child.kill();
            let _ = child.wait();
            return Err(format!("still running after {TIME_LIMIT:?}"));
        }
    };
    let seconds = started.elapsed().as_secs_f64();
    let stdout = String::from_utf8_lossy(&out_reader.join().unwrap_or_default()).into_owned();
    let stderr = String::from_utf8_lossy(&err_reader.join().unwrap_or_default()).into_owned();
    if stderr.contains("panicked") || stderr.contains("memory allocation") {
        return Err(format!("panicked or aborted: {stderr}"));
    }
    match &case.expect {
        Expect::Error(needles) => {
            if status.code() != Some(2) {
                return Err(format!("exit status {status}, stderr: {stderr}"));
            }
            let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
            if lines.len() != 1 || !lines[0].starts_with("error: ") {
                return Err(format!("expected one error line, got: {stderr:?}"));
            }
            if lines[0].chars().any(char::is_control) {
                return Err(format!("control characters reach the terminal: {stderr:?}"));
            }
            for needle in needles {
                if !lines[0].contains(needle.as_str()) {
                    return Err(format!("`{needle}` not in: {}", lines[0]));
                }
            }
        }
        Expect::Survives => {
            if !matches!(status.code(), Some(0 | 2)) {
                return Err(format!("exit status {status}, stderr: {stderr}"));
            }
        }
        Expect::Completed => {
            if !status.success() || !stdout.contains("\"status\": \"completed\"") {
                return Err(format!(
                    "exit status {status}, stdout: {stdout:.2000}, stderr: {stderr}"
                ));
            }
        }
    }
    Ok(Ran {
        name: case.name.clone(),
        seconds,
    })
}

fn hostile_dir() -> PathBuf {
    common::crate_root().join("tests/hostile")
}

fn path_str(p: &Path) -> String {
    p.to_str().expect("utf-8 path").to_string()
}

// ---- task, data and agent files -------------------------------------------------------

/// Committed task files, each with the words its error must contain.
fn task_cases() -> Vec<Case> {
    let table: &[(&str, &[&str])] = &[
        ("agent-timeout-1e300", &["agent.timeout_s", "at most 86400"]),
        ("agent-timeout-negative", &["agent.timeout_s", "positive"]),
        ("agent-timeout-nan", &["agent.timeout_s", "positive"]),
        ("agent-timeout-inf", &["agent.timeout_s", "positive"]),
        ("agent-timeout-over-a-day", &["agent.timeout_s", "a day"]),
        ("agent-timeout-zero", &["agent.timeout_s", "positive"]),
        (
            "agent-max-output-zero",
            &["agent.max_output_bytes", "between 1 and 67108864"],
        ),
        (
            "agent-max-output-over-the-cap",
            &["agent.max_output_bytes", "between 1 and 67108864"],
        ),
        (
            "metric-max-output-zero",
            &["metric", "max_output_bytes must be between 1 and"],
        ),
        (
            "metric-max-output-negative",
            &["line 11", "integer `-1`, expected u64"],
        ),
        (
            "agent-command-empty",
            &["agent.command", "must name a program"],
        ),
        (
            "agent-command-blank",
            &["agent.command", "must name a program"],
        ),
        ("budget-wall-time-1e300", &["budget.wall_time_s", "30 days"]),
        (
            "budget-wall-time-negative",
            &["budget.wall_time_s", "positive"],
        ),
        (
            "budget-optimizer-tokens-zero",
            &["budget.optimizer_tokens", "positive"],
        ),
        (
            "budget-agent-tokens-negative",
            &["budget-agent-tokens-negative.toml"],
        ),
        ("budget-tokens-overflow", &["budget-tokens-overflow.toml"]),
        ("metric-timeout-1e300", &["metric", "timeout_s", "a day"]),
        ("metric-timeout-nan", &["metric", "timeout_s", "positive"]),
        ("metric-tolerance-negative", &["metric", "tolerance"]),
        (
            "component-file-dev-zero",
            &["/dev/zero", "larger than 1 MiB", "component file"],
        ),
        ("component-file-missing", &["no-such-component.txt"]),
        ("data-file-dev-zero", &["/dev/zero:1:", "longer than 1 MiB"]),
        ("data-file-missing", &["no-such-file.jsonl"]),
        (
            "component-name-escape-sequences",
            &["letters, digits or _", "\\u{1b}"],
        ),
        ("unknown-field", &["unknown_field"]),
        ("split-ratios-overflow", &["split"]),
        ("split-ratio-nan", &["split"]),
        ("binary-garbage", &["binary-garbage.toml"]),
        ("toml-syntax-error", &["toml-syntax-error.toml"]),
        ("toml-deep-nesting", &["toml-deep-nesting.toml"]),
        ("toml-deep-arrays", &["toml-deep-arrays.toml"]),
    ];
    let valid = hostile_dir().join("tasks/valid.toml");
    let mut component = error_case(
        "component",
        &[
            "eval",
            &path_str(&valid),
            "--component",
            "system_prompt=/dev/zero",
        ],
        &["/dev/zero", "larger than 1 MiB", "component file"],
    );
    component.name = "option/eval-component-dev-zero".into();
    let mut endless = error_case(
        "task",
        &["eval", "/dev/zero"],
        &["/dev/zero", "larger than 1 MiB", "task file"],
    );
    endless.name = "task/dev-zero".into();
    let mut cases = vec![component, endless];
    cases.extend(table.iter().map(|(name, needles)| {
        let path = hostile_dir().join(format!("tasks/{name}.toml"));
        let mut case = error_case(name, &["eval", &path_str(&path)], needles);
        case.name = format!("task/{name}");
        case
    }));
    cases
}

/// A task with a command agent over `data`, written into `dir`.
fn task_over(dir: &Path, name: &str, data: &Path, agent: &[String], timeout_s: f64) -> PathBuf {
    let command: Vec<String> = agent.iter().map(|a| format!("{a:?}")).collect();
    let text = format!(
        "name = \"hostile\"\n\
         [components.system_prompt]\ntext = \"Answer with a number.\"\n\
         [agent]\ntype = \"command\"\ncommand = [{}]\ntimeout_s = {timeout_s:?}\n\
         [data]\nfile = {:?}\nsplit = {{ train = 0.5, val = 0.25, test = 0.25 }}\n\
         [metric]\ntype = \"exact\"\n\
         [optimizer]\nmodel = \"unused\"\n",
        command.join(", "),
        path_str(data),
    );
    let path = dir.join(format!("{name}.toml"));
    std::fs::write(&path, text).expect("write task");
    path
}

/// Committed data files, plus a line too long to commit.
fn data_cases(dir: &Path) -> Vec<Case> {
    let table: &[(&str, &[&str])] = &[
        ("not-json", &["not-json.jsonl:2", "not valid JSON"]),
        ("not-an-object", &["not-an-object.jsonl:1", "JSON object"]),
        (
            "missing-answer",
            &["missing-answer.jsonl:1", "missing answer field `answer`"],
        ),
        ("invalid-utf8", &["invalid-utf8.jsonl:2", "not UTF-8"]),
        ("nul-byte", &["nul-byte.jsonl:2", "not valid JSON"]),
        ("deep-nesting", &["deep-nesting.jsonl:1", "not valid JSON"]),
        (
            "number-out-of-range",
            &["number-out-of-range.jsonl:1", "not valid JSON"],
        ),
        (
            "lone-surrogate",
            &["lone-surrogate.jsonl:1", "not valid JSON"],
        ),
        ("empty", &["empty.jsonl"]),
        ("only-blank-lines", &["only-blank-lines.jsonl"]),
        (
            "truncated-last-line",
            &["truncated-last-line.jsonl:3", "not valid JSON"],
        ),
        (
            "escape-sequences-in-keys",
            &["escape-sequences-in-keys.jsonl:1", "control character"],
        ),
        ("byte-order-mark", &["byte-order-mark.jsonl:1"]),
    ];
    let agent = vec!["true".to_string()];
    let mut cases: Vec<Case> = table
        .iter()
        .map(|(name, needles)| {
            let data = hostile_dir().join(format!("data/{name}.jsonl"));
            let task = task_over(dir, &format!("data-{name}"), &data, &agent, 5.0);
            let mut case = error_case(name, &["eval", &path_str(&task)], needles);
            case.name = format!("data/{name}");
            case
        })
        .collect();
    let long = dir.join("long-line.jsonl");
    let mut text = String::from("{\"q\": \"ok\", \"answer\": \"1\"}\n{\"q\": \"");
    text.push_str(&"x".repeat(2 << 20));
    text.push_str("\", \"answer\": \"2\"}\n");
    std::fs::write(&long, text).expect("write long line");
    let task = task_over(dir, "data-long-line", &long, &agent, 5.0);
    let mut case = error_case(
        "long-line",
        &["eval", &path_str(&task)],
        &["long-line.jsonl:2", "longer than 1 MiB"],
    );
    case.name = "data/line-of-2-mib".into();
    cases.push(case);
    cases
}

/// Committed agent programs: the run ends in time and names each failure.
fn agent_cases(dir: &Path) -> Vec<Case> {
    // The run tries the program on one example first: a failure there is bad input.
    let table: &[(&str, &[&str])] = &[
        ("sleeps-forever", &["trial run", "timed out after 1.0s"]),
        ("ignores-sigterm", &["trial run", "timed out after 1.0s"]),
        (
            "background-child-then-hangs",
            &["trial run", "timed out after 1.0s"],
        ),
        (
            "prints-200mb",
            &["printed 200000000 bytes, more than max_output_bytes (1048576)"],
        ),
        (
            "prints-200mb-stderr-and-fails",
            &["exited with exit status: 3", "eeee"],
        ),
        ("prints-not-json", &["output is not JSON"]),
        (
            "prints-escape-sequences-and-fails",
            &["exit status: 1", "\\u{1b}[2J"],
        ),
        (
            "exits-nonzero",
            &["exit status: 42", "something went wrong"],
        ),
        ("killed-by-signal", &["signal: 9"]),
        // These answer: the run completes, in time.
        ("background-child-holds-stdout", &[]),
        ("escapes-its-group", &[]),
        ("never-reads-stdin", &[]),
        ("prints-invalid-utf8", &[]),
        ("score-not-a-number", &[]),
    ];
    let data = hostile_dir().join("data/ok.jsonl");
    table
        .iter()
        .map(|(name, needles)| {
            let script = hostile_dir().join(format!("agents/{name}.sh"));
            let agent = vec!["sh".to_string(), path_str(&script)];
            // The floods need more than a second on a loaded machine; the hangs need
            // the short timeout their expected messages name.
            let timeout_s = if name.starts_with("prints-200mb") {
                15.0
            } else {
                1.0
            };
            let task = task_over(dir, &format!("agent-{name}"), &data, &agent, timeout_s);
            Case {
                name: format!("agent/{name}"),
                args: vec!["eval".into(), path_str(&task), "--json".into()],
                stdin: None,
                stdin_file: None,
                envs: Vec::new(),
                expect: if needles.is_empty() {
                    Expect::Completed
                } else {
                    Expect::Error(needles.iter().map(ToString::to_string).collect())
                },
            }
        })
        .collect()
}

/// A manifest that never ends, and one that is garbage.
fn manifest_cases(dir: &Path) -> Vec<Case> {
    let endless = dir.join("models-endless");
    std::fs::create_dir_all(&endless).expect("mkdir");
    let manifest = endless.join("manifest.tsv");
    if !manifest.exists() {
        std::os::unix::fs::symlink("/dev/zero", &manifest).expect("symlink");
    }
    let garbage = dir.join("models-garbage");
    std::fs::create_dir_all(&garbage).expect("mkdir");
    std::fs::write(
        garbage.join("manifest.tsv"),
        "\u{1b}[2Jalias\tonly two fields\n",
    )
    .expect("write manifest");
    let mut cases = Vec::new();
    for (name, models_dir, needles) in [
        (
            "manifest/dev-zero",
            endless,
            &["manifest.tsv", "larger than 1 MiB", "model manifest"][..],
        ),
        ("manifest/garbage", garbage, &["manifest.tsv"][..]),
    ] {
        let mut case = error_case(name, &["generate", "-m", "some-alias", "-p", "hi"], needles);
        case.envs.push(("FGO_MODELS_DIR".into(), models_dir));
        cases.push(case);
    }
    cases
}

// ---- GGUF files --------------------------------------------------------------------------

/// The tiny model's metadata (in file order) and tensors.
struct Model {
    metadata: Vec<(String, Value)>,
    tensors: Vec<(String, Arc<QTensor>)>,
}

fn tiny_model_path() -> PathBuf {
    common::crate_root().join("tests/fixtures/qwen3-tiny.gguf")
}

fn read_tiny_model() -> Model {
    let path = tiny_model_path();
    let mut file = std::fs::File::open(&path).expect("open tiny model");
    let content = gguf_file::Content::read(&mut file).expect("read tiny model");
    let mut metadata: Vec<(String, Value)> = content.metadata.clone().into_iter().collect();
    metadata.sort_by(|a, b| a.0.cmp(&b.0));
    let mut names: Vec<&String> = content.tensor_infos.keys().collect();
    names.sort();
    let tensors = names
        .into_iter()
        .map(|n| {
            let t = content
                .tensor(&mut file, n, &Device::Cpu)
                .expect("read tensor");
            (n.clone(), Arc::new(t))
        })
        .collect();
    Model { metadata, tensors }
}

impl Model {
    fn write(&self, path: &Path) {
        let metadata: Vec<(&str, &Value)> =
            self.metadata.iter().map(|(k, v)| (k.as_str(), v)).collect();
        let tensors: Vec<(&str, &QTensor)> = self
            .tensors
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_ref()))
            .collect();
        let mut f = std::fs::File::create(path).expect("create gguf");
        gguf_file::write(&mut f, &metadata, &tensors).expect("write gguf");
    }

    fn set(&mut self, key: &str, value: Value) {
        match self.metadata.iter_mut().find(|(k, _)| k == key) {
            Some((_, v)) => *v = value,
            None => self.metadata.push((key.to_string(), value)),
        }
    }

    fn remove(&mut self, key: &str) {
        self.metadata.retain(|(k, _)| k != key);
    }

    fn get(&self, key: &str) -> &Value {
        &self
            .metadata
            .iter()
            .find(|(k, _)| k == key)
            .expect("key in the tiny model")
            .1
    }
}

/// The offset of the byte after `name` in the tensor directory of `bytes`.
fn after_tensor_name(bytes: &[u8], name: &str) -> usize {
    let needle = name.as_bytes();
    bytes
        .windows(needle.len())
        .rposition(|w| w == needle)
        .expect("tensor name in file")
        + needle.len()
}

/// A metadata entry inserted at the head of the metadata section; the entry is padded to a
/// multiple of 32 bytes with trailing key characters so tensor data stays aligned.
fn insert_kv(bytes: &[u8], key: &str, type_id: u32, value: &[u8]) -> Vec<u8> {
    let mut key = key.to_string();
    while !(8 + key.len() + 4 + value.len()).is_multiple_of(32) {
        key.push('_');
    }
    let mut out = bytes[..24].to_vec();
    let count = u64::from_le_bytes(bytes[16..24].try_into().expect("8 bytes")) + 1;
    out[16..24].copy_from_slice(&count.to_le_bytes());
    out.extend((key.len() as u64).to_le_bytes());
    out.extend(key.as_bytes());
    out.extend(type_id.to_le_bytes());
    out.extend(value);
    out.extend(&bytes[24..]);
    out
}

fn gguf_cases(dir: &Path) -> Vec<Case> {
    let base = read_tiny_model();
    let valid = dir.join("valid.gguf");
    base.write(&valid);
    let valid_bytes = std::fs::read(&valid).expect("read valid");
    let mut files: Vec<(String, PathBuf, Vec<String>)> = Vec::new();
    let mut add = |name: &str, needles: &[&str], make: &dyn Fn(&Path)| {
        let path = dir.join(format!("{name}.gguf"));
        make(&path);
        files.push((
            format!("gguf/{name}"),
            path,
            needles.iter().map(ToString::to_string).collect(),
        ));
    };
    let with = |edit: &dyn Fn(&mut Model)| {
        let mut m = Model {
            metadata: base.metadata.clone(),
            tensors: base.tensors.clone(),
        };
        edit(&mut m);
        m
    };
    let meta =
        |key: &'static str, value: Value| with(&move |m: &mut Model| m.set(key, value.clone()));
    let patched = |path: &Path, edit: &dyn Fn(&mut Vec<u8>)| {
        let mut bytes = valid_bytes.clone();
        edit(&mut bytes);
        std::fs::write(path, bytes).expect("write patched gguf");
    };

    // Metadata values, rewritten with candle's writer.
    let table: Vec<(&str, &str, Value, &[&str])> = vec![
        (
            "alignment-zero",
            "general.alignment",
            Value::U32(0),
            &["`general.alignment` is 0"],
        ),
        (
            "alignment-seven",
            "general.alignment",
            Value::U32(7),
            &["not a power of two"],
        ),
        (
            "alignment-string",
            "general.alignment",
            Value::String("32".into()),
            &["not an integer"],
        ),
        (
            "block-count-zero",
            "qwen3.block_count",
            Value::U32(0),
            &["qwen3.block_count", "0 layers"],
        ),
        (
            "block-count-huge",
            "qwen3.block_count",
            Value::U64(1 << 40),
            &["qwen3.block_count"],
        ),
        (
            "block-count-u32-max",
            "qwen3.block_count",
            Value::U32(u32::MAX),
            &["qwen3.block_count"],
        ),
        (
            "embedding-length-zero",
            "qwen3.embedding_length",
            Value::U32(0),
            &["qwen3.embedding_length"],
        ),
        (
            "head-count-zero",
            "qwen3.attention.head_count",
            Value::U32(0),
            &["head_count"],
        ),
        (
            "head-count-kv-not-dividing",
            "qwen3.attention.head_count_kv",
            Value::U32(3),
            &["head_count_kv"],
        ),
        (
            "key-length-huge",
            "qwen3.attention.key_length",
            Value::U64(1 << 40),
            &["key_length"],
        ),
        (
            "feed-forward-zero",
            "qwen3.feed_forward_length",
            Value::U32(0),
            &["qwen3.feed_forward_length"],
        ),
        (
            "context-length-zero",
            "qwen3.context_length",
            Value::U32(0),
            &["qwen3.context_length"],
        ),
        (
            "context-length-huge",
            "qwen3.context_length",
            Value::U64(1 << 40),
            &["qwen3.context_length"],
        ),
        (
            "context-length-negative",
            "qwen3.context_length",
            Value::I32(-1),
            &["qwen3.context_length"],
        ),
        (
            "epsilon-nan",
            "qwen3.attention.layer_norm_rms_epsilon",
            Value::F32(f32::NAN),
            &["layer_norm_rms_epsilon", "NaN"],
        ),
        (
            "epsilon-negative",
            "qwen3.attention.layer_norm_rms_epsilon",
            Value::F32(-1.0),
            &["layer_norm_rms_epsilon"],
        ),
        (
            "epsilon-infinite",
            "qwen3.attention.layer_norm_rms_epsilon",
            Value::F64(f64::INFINITY),
            &["layer_norm_rms_epsilon"],
        ),
        (
            "rope-base-zero",
            "qwen3.rope.freq_base",
            Value::F32(0.0),
            &["qwen3.rope.freq_base"],
        ),
        (
            "rope-base-nan",
            "qwen3.rope.freq_base",
            Value::F32(f32::NAN),
            &["qwen3.rope.freq_base"],
        ),
        (
            "rope-dimensions-odd",
            "qwen3.rope.dimension_count",
            Value::U32(7),
            &["rope.dimension_count"],
        ),
        (
            "rope-scaling-unknown",
            "qwen3.rope.scaling.type",
            Value::String("yarn".into()),
            &["rope.scaling.type", "yarn"],
        ),
        (
            "architecture-unknown",
            "general.architecture",
            Value::String("mamba".into()),
            &["unsupported model architecture `mamba`"],
        ),
        (
            "architecture-escape-sequences",
            "general.architecture",
            Value::String("\u{1b}]0;owned\u{7}\u{1b}[2Jllama".into()),
            &["unsupported model architecture", "\\u{1b}]0;owned"],
        ),
        (
            "architecture-not-a-string",
            "general.architecture",
            Value::U32(7),
            &["general.architecture", "expected a string"],
        ),
        (
            "tokenizer-model-unknown",
            "tokenizer.ggml.model",
            Value::String("\u{1b}[31mwordpiece".into()),
            &["tokenizer"],
        ),
        (
            "tokens-not-strings",
            "tokenizer.ggml.tokens",
            Value::Array(vec![Value::U8(1); 4]),
            &["tokenizer.ggml.tokens"],
        ),
        (
            "bos-token-out-of-range",
            "tokenizer.ggml.bos_token_id",
            Value::U32(u32::MAX),
            &["tokenizer"],
        ),
        (
            "chat-template-nested-loops",
            "tokenizer.chat_template",
            Value::String(
                "{% for a in range(100000) %}{% for b in range(100000) %}{% endfor %}{% endfor %}"
                    .into(),
            ),
            &["`tokenizer.chat_template`", "ran out of fuel"],
        ),
        (
            "chat-template-output-bomb",
            "tokenizer.chat_template",
            Value::String("{% for a in range(100000) %}{{ 'x' * 100000 }}{% endfor %}".into()),
            &[
                "`tokenizer.chat_template`",
                "output exceeds the limit of 32 MiB",
            ],
        ),
        (
            "chat-template-recursion",
            "tokenizer.chat_template",
            Value::String("{% macro f(n) %}{{ f(n + 1) }}{% endmacro %}{{ f(0) }}".into()),
            &["`tokenizer.chat_template`", "recursion"],
        ),
        (
            "chat-template-syntax-error",
            "tokenizer.chat_template",
            Value::String("{% for m in messages %}{{ m.content }".into()),
            &["`tokenizer.chat_template`", "cannot parse"],
        ),
        (
            "chat-template-raises",
            "tokenizer.chat_template",
            Value::String("{{ raise_exception('\u{1b}[31mno chat for you') }}".into()),
            &["chat template", "no chat for you"],
        ),
    ];
    for (name, key, value, needles) in table {
        add(name, needles, &|p| meta(key, value.clone()).write(p));
    }
    add("rope-scaling-factor-zero", &["rope.scaling.factor"], &|p| {
        with(&|m| {
            m.set("qwen3.rope.scaling.type", Value::String("linear".into()));
            m.set("qwen3.rope.scaling.factor", Value::F32(0.0));
        })
        .write(p)
    });
    let tokenizer_table: Vec<(&str, &str, Value, &[&str])> = vec![
        (
            "merges-without-space",
            "tokenizer.ggml.merges",
            Value::Array(vec![Value::String("abc".into())]),
            &[],
        ),
        (
            "merges-of-unknown-tokens",
            "tokenizer.ggml.merges",
            Value::Array(vec![Value::String("\u{1b}[2J zz".into())]),
            &[],
        ),
        (
            "merges-not-strings",
            "tokenizer.ggml.merges",
            Value::Array(vec![Value::F32(1.0)]),
            &["tokenizer.ggml.merges"],
        ),
        (
            "token-types-short",
            "tokenizer.ggml.token_type",
            Value::Array(vec![Value::I32(1); 3]),
            &["tokenizer"],
        ),
        (
            "token-types-out-of-range",
            "tokenizer.ggml.token_type",
            Value::Array(vec![Value::I32(i32::MIN); 305]),
            &[],
        ),
        (
            "sentencepiece-without-scores",
            "tokenizer.ggml.model",
            Value::String("llama".into()),
            &["tokenizer"],
        ),
        (
            "eos-token-out-of-range",
            "tokenizer.ggml.eos_token_id",
            Value::U32(1 << 31),
            &["tokenizer"],
        ),
    ];
    for (name, key, value, needles) in tokenizer_table {
        add(name, needles, &|p| meta(key, value.clone()).write(p));
    }
    add(
        "architecture-missing",
        &["general.architecture", "missing"],
        &|p| with(&|m| m.remove("general.architecture")).write(p),
    );
    add(
        "vocabulary-smaller-than-embedding",
        &[
            "`tokenizer.ggml.tokens` has 300 tokens",
            "`token_embd.weight` has 305 rows",
        ],
        &|p| {
            with(&|m| {
                // Five tokens dropped before the special tokens, which keep their ids.
                for key in ["tokenizer.ggml.tokens", "tokenizer.ggml.token_type"] {
                    if let Value::Array(items) = m.get(key).clone() {
                        let n = items.len();
                        let mut kept = items[..n - 8].to_vec();
                        kept.extend_from_slice(&items[n - 3..]);
                        m.set(key, Value::Array(kept));
                    }
                }
                let ids: Vec<String> = m
                    .metadata
                    .iter()
                    .filter(|(k, _)| k.ends_with("_token_id"))
                    .map(|(k, _)| k.clone())
                    .collect();
                for key in ids {
                    if let Value::U32(id) = *m.get(&key) {
                        m.set(&key, Value::U32(id - 5));
                    }
                }
            })
            .write(p)
        },
    );
    add(
        "vocabulary-larger-than-embedding",
        &["`tokenizer.ggml.tokens` has", "token_embd.weight"],
        &|p| {
            with(&|m| {
                for (key, extra) in [
                    ("tokenizer.ggml.tokens", Value::String("<extra>".into())),
                    ("tokenizer.ggml.token_type", Value::I32(1)),
                ] {
                    if let Value::Array(mut items) = m.get(key).clone() {
                        items.push(extra);
                        m.set(key, Value::Array(items));
                    }
                }
            })
            .write(p)
        },
    );
    add("tensor-missing", &["blk.0.attn_q.weight"], &|p| {
        with(&|m| m.tensors.retain(|(n, _)| n != "blk.0.attn_q.weight")).write(p)
    });
    add("tensor-misplaced", &["blk.0.attn_k.weight"], &|p| {
        with(&|m| {
            let q = m
                .tensors
                .iter()
                .find(|(n, _)| n == "blk.0.attn_q.weight")
                .map(|(_, t)| t.clone())
                .expect("q");
            for (n, t) in m.tensors.iter_mut() {
                if n == "blk.0.attn_k.weight" {
                    *t = q.clone();
                }
            }
        })
        .write(p)
    });

    // Byte patches of the valid file.
    let embd = "token_embd.weight";
    add(
        "embedding-zero-rows",
        &["token_embd.weight", "dimension of size 0"],
        &|p| {
            patched(p, &|b| {
                let at = after_tensor_name(b, embd) + 4 + 8;
                b[at..at + 8].copy_from_slice(&0u64.to_le_bytes());
            })
        },
    );
    add(
        "dimensions-overflow",
        &["token_embd.weight", "more elements"],
        &|p| {
            patched(p, &|b| {
                let at = after_tensor_name(b, embd) + 4;
                b[at..at + 8].copy_from_slice(&(1u64 << 62).to_le_bytes());
                b[at + 8..at + 16].copy_from_slice(&(1u64 << 62).to_le_bytes());
            })
        },
    );
    add(
        "dimensions-past-the-file",
        &["token_embd.weight", "more elements"],
        &|p| {
            patched(p, &|b| {
                let at = after_tensor_name(b, embd) + 4 + 8;
                b[at..at + 8].copy_from_slice(&(1u64 << 20).to_le_bytes());
            })
        },
    );
    add(
        "offset-overflow",
        &["truncated", "token_embd.weight"],
        &|p| {
            patched(p, &|b| {
                let at = after_tensor_name(b, embd) + 4 + 16 + 4;
                b[at..at + 8].copy_from_slice(&(u64::MAX - 31).to_le_bytes());
            })
        },
    );
    add(
        "offset-misaligned",
        &["token_embd.weight", "alignment"],
        &|p| {
            patched(p, &|b| {
                let at = after_tensor_name(b, embd) + 4 + 16 + 4;
                b[at..at + 8].copy_from_slice(&5u64.to_le_bytes());
            })
        },
    );
    add(
        "five-dimensions",
        &["token_embd.weight", "5 dimensions"],
        &|p| {
            patched(p, &|b| {
                let at = after_tensor_name(b, embd);
                b[at..at + 4].copy_from_slice(&5u32.to_le_bytes());
            })
        },
    );
    add(
        "tensor-type-unknown",
        &["unsupported tensor type", "ggml id 99"],
        &|p| {
            patched(p, &|b| {
                let at = after_tensor_name(b, embd) + 4 + 16;
                b[at..at + 4].copy_from_slice(&99u32.to_le_bytes());
            })
        },
    );
    add(
        "tensor-type-iq4-nl",
        &["unsupported tensor type IQ4_NL"],
        &|p| {
            patched(p, &|b| {
                let at = after_tensor_name(b, embd) + 4 + 16;
                b[at..at + 4].copy_from_slice(&20u32.to_le_bytes());
            })
        },
    );
    add(
        "tensor-name-escape-sequences",
        &["\\u{1b}[2J", "dimension of size 0"],
        &|p| {
            patched(p, &|b| {
                let at = after_tensor_name(b, embd);
                let evil = "\u{1b}[2J\u{1b}[31mevil!!!!";
                assert_eq!(evil.len(), embd.len());
                b[at - embd.len()..at].copy_from_slice(evil.as_bytes());
                b[at + 4 + 8..at + 4 + 16].copy_from_slice(&0u64.to_le_bytes());
            })
        },
    );
    add("tensor-count-huge", &["tensors", "more than the"], &|p| {
        patched(p, &|b| {
            b[8..16].copy_from_slice(&(1u64 << 50).to_le_bytes())
        })
    });
    add(
        "metadata-count-huge",
        &["metadata entries", "more than the"],
        &|p| patched(p, &|b| b[16..24].copy_from_slice(&u64::MAX.to_le_bytes())),
    );
    add("version-99", &["unsupported GGUF version 99"], &|p| {
        patched(p, &|b| b[4..8].copy_from_slice(&99u32.to_le_bytes()))
    });
    add("bad-magic", &["bad magic"], &|p| {
        patched(p, &|b| b[..4].copy_from_slice(b"GGML"))
    });
    add(
        "empty-file",
        &["not a valid GGUF file", "truncated"],
        &|p| std::fs::write(p, b"").expect("write"),
    );
    add(
        "truncated-in-half",
        &["not a valid GGUF file", "truncated"],
        &|p| std::fs::write(p, &valid_bytes[..valid_bytes.len() / 2]).expect("write"),
    );
    add(
        "truncated-in-the-header",
        &["not a valid GGUF file", "truncated"],
        &|p| std::fs::write(p, &valid_bytes[..300]).expect("write"),
    );
    add("string-length-huge", &["metadata key 0", "only"], &|p| {
        patched(p, &|b| {
            b[24..32].copy_from_slice(&(1u64 << 60).to_le_bytes())
        })
    });
    add(
        "array-length-huge",
        &["hostile.array", "does not fit"],
        &|p| {
            let mut value = 0u32.to_le_bytes().to_vec();
            value.extend((1u64 << 40).to_le_bytes());
            std::fs::write(p, insert_kv(&valid_bytes, "hostile.array", 9, &value)).expect("write")
        },
    );
    // 20 MB of one-byte array elements: 20 million parsed values, over 600 MB if kept.
    add(
        "metadata-array-memory-bomb",
        &["the header would take more than 512 MiB of memory"],
        &|p| {
            let n = 20_000_000u64;
            let mut value = 0u32.to_le_bytes().to_vec();
            value.extend(n.to_le_bytes());
            value.resize(value.len() + n as usize, 1);
            std::fs::write(p, insert_kv(&valid_bytes, "hostile.bomb", 9, &value)).expect("write")
        },
    );
    add("dev-zero", &["/dev/zero"], &|_| {});
    let mut cases: Vec<Case> = files
        .into_iter()
        .map(|(name, path, needles)| {
            let model = if name == "gguf/dev-zero" {
                "/dev/zero".to_string()
            } else {
                path_str(&path)
            };
            let mut case = error_case(
                &name,
                &["generate", "-m", &model, "-p", "hi", "--kv-budget", "64M"],
                &[],
            );
            case.expect = if needles.is_empty() {
                Expect::Survives
            } else {
                Expect::Error(needles)
            };
            case
        })
        .collect();

    // Command-line values, with the valid model.
    let v = path_str(&valid);
    let gen = |extra: &[&str]| {
        let mut args = vec!["generate", "-m", v.as_str(), "-p", "hi"];
        args.extend_from_slice(extra);
        if !extra.contains(&"--kv-budget") {
            args.extend_from_slice(&["--kv-budget", "64M"]);
        }
        args.iter().map(ToString::to_string).collect::<Vec<_>>()
    };
    let options: Vec<(&str, Vec<&str>, &[&str])> = vec![
        (
            "max-tokens-u64-max",
            vec!["--max-tokens", "18446744073709551615"],
            &["--max-tokens", "context window of 256"],
        ),
        (
            "max-tokens-over-context",
            vec!["--max-tokens", "257"],
            &["--max-tokens", "256"],
        ),
        (
            "max-tokens-zero",
            vec!["--max-tokens", "0"],
            &["max_new_tokens"],
        ),
        (
            "kv-budget-70g",
            vec!["--kv-budget", "70000G"],
            &["kv-budget", "memory available"],
        ),
        (
            "kv-budget-1e300",
            vec!["--kv-budget", "1e300G"],
            &["kv-budget", "memory available"],
        ),
        (
            "kv-budget-tiny",
            vec!["--kv-budget", "1"],
            &["kv-budget", "cannot hold one block"],
        ),
        (
            "kv-budget-negative",
            vec!["--kv-budget=-5M"],
            &["--kv-budget", "must be positive"],
        ),
        (
            "kv-budget-nan",
            vec!["--kv-budget", "nan"],
            &["--kv-budget", "unknown unit"],
        ),
        (
            "kv-budget-unit",
            vec!["--kv-budget", "12\u{1b}[2JT"],
            &["--kv-budget", "unknown unit"],
        ),
        (
            "threads-100000",
            vec!["--threads", "100000"],
            &["--threads", "100000"],
        ),
        ("threads-zero", vec!["--threads", "0"], &["--threads"]),
        ("top-p-nan", vec!["--top-p", "NaN"], &["top_p"]),
        (
            "temperature-negative",
            vec!["--temperature=-1"],
            &["temperature"],
        ),
        (
            "temperature-infinite",
            vec!["--temperature", "inf"],
            &["temperature"],
        ),
        (
            "tokenizer-dev-zero",
            vec!["--tokenizer", "/dev/zero"],
            &["/dev/zero"],
        ),
    ];
    for (name, extra, needles) in options {
        let mut case = error_case(name, &[], needles);
        case.name = format!("option/{name}");
        case.args = gen(&extra);
        cases.push(case);
    }
    for (name, extra, needles) in [
        (
            "bench-pp-huge",
            ["--pp", "100000000000"],
            &["--pp", "context window of 256"][..],
        ),
        (
            "bench-tg-over-context",
            ["--tg", "257"],
            &["--tg", "256"][..],
        ),
        (
            "bench-prefix-requests-huge",
            ["--prefix-requests", "10000000"],
            &["--prefix-requests"][..],
        ),
        (
            "bench-concurrency-huge",
            ["--concurrency", "1,100000000"],
            &["--concurrency"][..],
        ),
    ] {
        let mut case = error_case(name, &[], needles);
        case.name = format!("option/{name}");
        let mut args = vec![
            "bench",
            "-m",
            &v,
            "--kv-budget",
            "64M",
            "--prefix-tokens",
            "16",
        ];
        if extra[0] != "--pp" {
            // The default of 512 is more than the tiny model's context.
            args.extend_from_slice(&["--pp", "16"]);
        }
        args.extend_from_slice(&extra);
        case.args = args.iter().map(ToString::to_string).collect();
        cases.push(case);
    }
    // A 20 MB prompt on standard input, refused before it is tokenized.
    let mut case = error_case(
        "prompt",
        &[],
        &["prompt of 20000000 bytes", "context window"],
    );
    case.name = "option/prompt-of-20-mb".into();
    case.args = ["generate", "-m", &v, "--raw", "--kv-budget", "64M"]
        .iter()
        .map(ToString::to_string)
        .collect();
    case.stdin = Some(vec![b'a'; 20_000_000]);
    cases.push(case);
    let mut case = error_case("prompt", &[], &["standard input", "larger than 64 MiB"]);
    case.name = "option/prompt-from-dev-zero".into();
    case.args = ["generate", "-m", &v, "--kv-budget", "64M"]
        .iter()
        .map(ToString::to_string)
        .collect();
    case.stdin_file = Some(PathBuf::from("/dev/zero"));
    cases.push(case);
    cases
}

#[test]
fn every_hostile_input_is_refused_in_bounded_time_and_memory() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut cases = Vec::new();
    cases.extend(gguf_cases(dir.path()));
    cases.extend(task_cases());
    cases.extend(data_cases(dir.path()));
    cases.extend(manifest_cases(dir.path()));
    cases.extend(agent_cases(dir.path()));
    let total = cases.len();
    assert!(total >= 60, "the corpus has only {total} inputs");
    let mut by_kind: HashMap<String, usize> = HashMap::new();
    for case in &cases {
        let kind = case.name.split('/').next().unwrap_or_default().to_string();
        *by_kind.entry(kind).or_default() += 1;
    }
    // Two at a time: agent cases spend most of their time waiting.
    let failures = std::sync::Mutex::new(Vec::new());
    let ran = std::sync::Mutex::new(Vec::new());
    let next = std::sync::atomic::AtomicUsize::new(0);
    std::thread::scope(|s| {
        for _ in 0..2 {
            s.spawn(|| loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let Some(case) = cases.get(i) else { break };
                match run(case) {
                    Ok(r) => ran.lock().expect("lock").push(r),
                    Err(e) => failures
                        .lock()
                        .expect("lock")
                        .push(format!("{}: {e}", case.name)),
                }
            });
        }
    });
    let failures = failures.into_inner().expect("lock");
    let mut ran = ran.into_inner().expect("lock");
    ran.sort_by(|a, b| b.seconds.total_cmp(&a.seconds));
    let slowest: Vec<String> = ran
        .iter()
        .take(5)
        .map(|r| format!("{} {:.2}s", r.name, r.seconds))
        .collect();
    // SAFETY: getrusage only writes the struct it is given.
    let peak_rss_kib = unsafe {
        let mut usage: libc::rusage = std::mem::zeroed();
        libc::getrusage(libc::RUSAGE_CHILDREN, &mut usage);
        usage.ru_maxrss
    };
    eprintln!(
        "{total} hostile inputs by kind: {by_kind:?}; slowest: {slowest:?}; \
         largest peak RSS of a run: {} MiB",
        peak_rss_kib / 1024
    );
    assert!(
        failures.is_empty(),
        "{} of {total} hostile inputs failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
}
