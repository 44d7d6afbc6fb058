//! The agent: how one example is executed with given components, and how its answer is
//! scored.
//!
//! [`Agent::evaluate`] takes many (components, example) jobs at once: a chat agent submits all
//! their requests in one batch through [`Calls`]; a command agent runs its program once on
//! each distinct input not already known to [`Calls`], several at a time. A job that fails (engine error, command error, timeout) becomes an
//! [`Outcome`] with score 0 and the reason, never an error of the run.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rayon::prelude::*;
use regex::Regex;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use wait_timeout::ChildExt;

use crate::engine::chat::ChatMessage;
use crate::engine::sampling::SamplingParams;
use crate::error::{Error, Result};
use crate::llm::{ChatRequest, Llm};
use crate::optimizer::calls::{Calls, Ctx, Role};
use crate::optimizer::dataset::Example;
use crate::optimizer::metric::{self, first_json_object, MetricSpec};
use crate::optimizer::rng::stable_hash;
use crate::optimizer::task::{AgentSpec, Extract, Task};
use crate::optimizer::template::{value_text, Template};

/// Component values by name.
pub type Components = BTreeMap<String, String>;

/// The texts of components `names` of `c`, one after the other (what the guard checks and
/// diffs show).
pub fn joined_text(c: &Components, names: &[String]) -> String {
    names
        .iter()
        .filter_map(|n| c.get(n))
        .cloned()
        .collect::<Vec<_>>()
        .join("\n")
}

/// The result of running one example.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Outcome {
    /// The example's id.
    pub id: String,
    /// The metric's score in `[0, 1]`.
    pub score: f64,
    /// The extracted answer.
    pub answer: String,
    /// The expected answer.
    pub expected: String,
    /// What the agent was asked (the user message, or the example as JSON).
    pub input: String,
    /// What the agent did (its reply, or the command's trajectory).
    pub trajectory: String,
    /// Why the run of this example failed, when it did.
    pub error: Option<String>,
    /// Why the answer is wrong, when a command agent or a command metric said so (shown
    /// to the optimizer beside the trajectory).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub feedback: Option<String>,
}

impl Outcome {
    /// Whether the example is solved (score 1).
    pub fn solved(&self) -> bool {
        self.score >= 1.0 - 1e-9
    }
}

/// What one execution produced, before scoring.
struct Raw {
    answer: String,
    trajectory: String,
    /// A command agent may score itself; its score then replaces the metric's.
    own_score: Option<f64>,
    /// A command agent's own feedback on the answer.
    feedback: Option<String>,
}

/// How examples are executed.
pub enum Executor {
    /// A chat model.
    Chat {
        llm: Arc<dyn Llm>,
        system: Option<Template>,
        user: Template,
        params: SamplingParams,
        extract: Extract,
    },
    /// An external program.
    Command {
        command: Vec<String>,
        timeout: Duration,
    },
}

/// An executor plus the metric.
pub struct Agent {
    pub executor: Executor,
    pub metric: MetricSpec,
}

impl Agent {
    /// Builds the agent of `task`; `llm` is required for a chat agent.
    pub fn new(task: &Task, llm: Option<Arc<dyn Llm>>) -> Result<Self> {
        let executor = match &task.spec.agent {
            AgentSpec::Chat {
                system,
                user,
                params,
                extract,
                ..
            } => Executor::Chat {
                llm: llm.ok_or_else(|| {
                    task.err("agent.model", "no model was loaded for the chat agent")
                })?,
                system: system
                    .as_deref()
                    .map(Template::parse)
                    .transpose()
                    .map_err(|r| task.err("agent.system", r))?,
                user: Template::parse(user).map_err(|r| task.err("agent.user", r))?,
                params: params.clone(),
                extract: extract.clone(),
            },
            AgentSpec::Command { command, timeout_s } => Executor::Command {
                command: command.clone(),
                timeout: Duration::from_secs_f64(*timeout_s),
            },
        };
        Ok(Self {
            executor,
            metric: task.spec.metric.clone(),
        })
    }

    /// Runs every job and scores it; outcomes in job order.
    pub fn evaluate(
        &self,
        calls: &Calls,
        ctx: &Ctx,
        jobs: &[(&Components, &Example)],
    ) -> Vec<Outcome> {
        let raw: Vec<(String, Result<Raw, String>)> = match &self.executor {
            Executor::Chat {
                llm,
                system,
                user,
                params,
                extract,
            } => {
                let requests: Vec<ChatRequest> = jobs
                    .iter()
                    .map(|(c, ex)| {
                        let mut messages = Vec::new();
                        if let Some(s) = system {
                            messages.push(ChatMessage::system(s.render(c, &ex.fields)));
                        }
                        messages.push(ChatMessage::user(user.render(c, &ex.fields)));
                        ChatRequest {
                            messages,
                            params: params.clone(),
                        }
                    })
                    .collect();
                let results = calls.complete(llm.as_ref(), ctx, Role::Agent, &requests);
                requests
                    .iter()
                    .zip(results)
                    .map(|(req, r)| {
                        let input = req
                            .messages
                            .last()
                            .map(|m| m.content.clone())
                            .unwrap_or_default();
                        let r = r
                            .map(|c| Raw {
                                answer: extract_answer(extract, &c.text),
                                trajectory: c.text,
                                own_score: None,
                                feedback: None,
                            })
                            .map_err(|e| e.to_string());
                        (input, r)
                    })
                    .collect()
            }
            Executor::Command { command, timeout } => {
                let inputs: Vec<Value> = jobs
                    .iter()
                    .map(|(c, ex)| {
                        serde_json::json!({"components": c, "example": Value::Object(ex.fields.clone())})
                    })
                    .collect();
                let results = run_commands(calls, ctx, command, *timeout, &inputs);
                jobs.iter()
                    .zip(results)
                    .map(|((_, ex), result)| {
                        let shown = serde_json::to_string(&ex.fields).unwrap_or_default();
                        (shown, result.and_then(command_raw))
                    })
                    .collect()
            }
        };
        jobs.iter()
            .zip(raw)
            .map(|((_, ex), (input, r))| self.outcome(ex, input, r))
            .collect()
    }

    fn outcome(&self, ex: &Example, input: String, r: Result<Raw, String>) -> Outcome {
        let expected = ex.answer_text();
        let Raw {
            answer,
            trajectory,
            own_score,
            feedback,
        } = match r {
            Ok(v) => v,
            Err(e) => {
                return Outcome {
                    id: ex.id.clone(),
                    score: 0.0,
                    answer: String::new(),
                    expected,
                    input,
                    trajectory: String::new(),
                    error: Some(e),
                    feedback: None,
                }
            }
        };
        let (score, error, feedback) = match own_score {
            Some(s) => (s.clamp(0.0, 1.0), None, feedback),
            None => match metric::score_with_feedback(&self.metric, &answer, ex) {
                Ok((s, metric_feedback)) => (s, None, metric_feedback.or(feedback)),
                Err(e) => (0.0, Some(format!("metric: {e}")), feedback),
            },
        };
        Outcome {
            id: ex.id.clone(),
            score,
            answer,
            expected,
            input,
            trajectory,
            error,
            feedback,
        }
    }
}

/// Runs `command` on each input, answering known inputs from `calls` (memo or an earlier
/// session) and running each distinct unknown input once, all of them in parallel; a repeat
/// of an input within the batch is a memo hit, as for model calls. Results in input order.
fn run_commands(
    calls: &Calls,
    ctx: &Ctx,
    command: &[String],
    timeout: Duration,
    inputs: &[Value],
) -> Vec<Result<Value, String>> {
    let keys: Vec<String> = inputs
        .iter()
        .map(|input| stable_hash(format!("{}\n{}", command.join("\u{0}"), input).as_bytes()))
        .collect();
    let mut results: Vec<Option<Result<Value, String>>> = vec![None; inputs.len()];
    let mut seen = std::collections::HashSet::new();
    let mut unknown = Vec::new();
    for (i, key) in keys.iter().enumerate() {
        if !seen.insert(key) {
            continue;
        }
        match calls.known_command(ctx, key) {
            Some(r) => results[i] = Some(r),
            None => unknown.push(i),
        }
    }
    let ran: Vec<(usize, Result<Value, String>)> = unknown
        .par_iter()
        .map(|&i| {
            let t = Instant::now();
            let r = run_json_command(command, &inputs[i], timeout).map_err(|e| e.to_string());
            calls.record_command(ctx, &keys[i], r.clone(), t.elapsed().as_secs_f64());
            (i, r)
        })
        .collect();
    for (i, r) in ran {
        results[i] = Some(r);
    }
    results
        .into_iter()
        .zip(&keys)
        .map(|(r, key)| {
            r.or_else(|| calls.known_command(ctx, key))
                .unwrap_or_else(|| Err("no result".into()))
        })
        .collect()
}

/// A command agent's JSON output as an answer, a trajectory and an optional own score.
fn command_raw(out: Value) -> Result<Raw, String> {
    let answer = out.get("answer").map(value_text).unwrap_or_default();
    let trajectory = out.get("trajectory").map(value_text).unwrap_or_default();
    let own_score = match out.get("score") {
        None | Some(Value::Null) => None,
        Some(v) => Some(
            v.as_f64()
                .ok_or_else(|| "`score` is not a number".to_string())?,
        ),
    };
    let feedback = out
        .get("feedback")
        .map(value_text)
        .filter(|f| !f.trim().is_empty());
    Ok(Raw {
        answer,
        trajectory,
        own_score,
        feedback,
    })
}

/// Extracts the answer from a reply.
pub fn extract_answer(extract: &Extract, text: &str) -> String {
    match extract {
        Extract::LastLine => text
            .lines()
            .rev()
            .find(|l| !l.trim().is_empty())
            .unwrap_or_default()
            .trim()
            .to_string(),
        Extract::Whole => text.trim().to_string(),
        Extract::Regex { pattern, group } => Regex::new(pattern)
            .ok()
            .and_then(|re| {
                re.captures_iter(text)
                    .last()
                    .and_then(|c| c.get(*group).map(|m| m.as_str().to_string()))
            })
            .unwrap_or_default(),
        Extract::JsonField { field } => first_json_object(text)
            .and_then(|o| o.get(field).map(value_text))
            .unwrap_or_default(),
    }
}

/// The most bytes of a command's standard output kept; more is counted, not stored.
pub const COMMAND_STDOUT_LIMIT: usize = 16 << 20;

/// The most bytes of a command's standard error kept (its tail goes into errors).
const COMMAND_STDERR_LIMIT: usize = 64 << 10;

/// How long output still held open by a command's leftover children is waited for once
/// the command itself has exited and its process group has been killed.
const PIPE_GRACE: Duration = Duration::from_secs(1);

/// What a reader thread took from a pipe: the kept bytes and how many there were in all.
#[derive(Default)]
struct Captured {
    kept: Vec<u8>,
    total: u64,
}

/// A pipe being read on a thread.
struct Capture {
    shared: Arc<std::sync::Mutex<Captured>>,
    done: std::sync::mpsc::Receiver<()>,
}

impl Capture {
    /// Reads `pipe` to its end on a thread, keeping the first `limit` bytes and only
    /// counting the rest (so the writer never blocks on a full pipe).
    fn start(pipe: Option<impl Read + Send + 'static>, limit: usize) -> Self {
        let shared = Arc::new(std::sync::Mutex::new(Captured::default()));
        let (tx, done) = std::sync::mpsc::channel();
        let sink = shared.clone();
        std::thread::spawn(move || {
            if let Some(mut pipe) = pipe {
                let mut buf = [0u8; 64 << 10];
                loop {
                    match pipe.read(&mut buf) {
                        Ok(0) => break,
                        Ok(n) => {
                            let mut c = sink.lock().unwrap_or_else(|p| p.into_inner());
                            let room = limit.saturating_sub(c.kept.len()).min(n);
                            c.kept.extend_from_slice(&buf[..room]);
                            c.total += n as u64;
                        }
                        Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                        Err(_) => break,
                    }
                }
            }
            let _ = tx.send(());
        });
        Self { shared, done }
    }

    /// What was read once the pipe closed, or by `deadline` if a process outside the
    /// command's group still holds it open.
    fn finish(self, deadline: Instant) -> Captured {
        let _ = self
            .done
            .recv_timeout(deadline.saturating_duration_since(Instant::now()));
        let mut c = self.shared.lock().unwrap_or_else(|p| p.into_inner());
        std::mem::take(&mut *c)
    }
}

/// Sends SIGKILL to every process of the process group `pgid`.
fn kill_group(pgid: u32) {
    let Ok(pgid) = libc::pid_t::try_from(pgid) else {
        return;
    };
    // SAFETY: kill(2) has no memory effects; a negative pid names the group the child
    // leads (made with `process_group(0)`), never this process's own group.
    unsafe {
        libc::kill(-pgid, libc::SIGKILL);
    }
}

/// Runs `command` (no shell) with `input` as JSON on stdin and parses its stdout as JSON;
/// a non-zero exit, a timeout or non-JSON output is an error.
///
/// The command runs in its own process group. On a timeout the whole group is killed, and
/// once the command exits its leftover children are killed too, so a background process
/// holding the output pipe open can neither outlive the timeout nor make the wait hang.
/// At most [`COMMAND_STDOUT_LIMIT`] bytes of output are kept: more is an error that says
/// how much was printed.
pub fn run_json_command(command: &[String], input: &Value, timeout: Duration) -> Result<Value> {
    use std::os::unix::process::CommandExt;
    let name = command.join(" ");
    let err = |reason: String| Error::Command {
        command: name.clone(),
        reason,
    };
    let (program, args) = command
        .split_first()
        .ok_or_else(|| err("empty command".into()))?;
    let mut child = Command::new(program)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .spawn()
        .map_err(|e| err(format!("cannot start: {e}")))?;
    let pgid = child.id();
    let body = input.to_string();
    let mut stdin = child.stdin.take();
    // Detached: a command that never reads its input must not keep this call waiting.
    std::thread::spawn(move || {
        if let Some(s) = stdin.as_mut() {
            let _ = s.write_all(body.as_bytes());
        }
    });
    let stdout = Capture::start(child.stdout.take(), COMMAND_STDOUT_LIMIT);
    let stderr = Capture::start(child.stderr.take(), COMMAND_STDERR_LIMIT);
    let waited = child.wait_timeout(timeout);
    // The command has exited (or is to be stopped): nothing of its group may run on.
    kill_group(pgid);
    let status = match waited.map_err(|e| err(e.to_string()))? {
        Some(s) => s,
        None => {
            let _ = child.kill();
            let _ = child.wait();
            return Err(err(format!(
                "timed out after {:.1}s",
                timeout.as_secs_f64()
            )));
        }
    };
    // A process that left the group (setsid) may still hold a pipe: wait a little, then
    // go on with what was printed rather than hang.
    let deadline = Instant::now() + PIPE_GRACE;
    let out = stdout.finish(deadline);
    let stderr_text = stderr.finish(deadline);
    let stderr_text = String::from_utf8_lossy(&stderr_text.kept);
    if !status.success() {
        let tail: String = crate::error::printable(stderr_text.trim())
            .chars()
            .rev()
            .take(300)
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .collect();
        return Err(err(format!("exited with {status}: {tail}")));
    }
    if out.total > out.kept.len() as u64 {
        return Err(err(format!(
            "printed {} bytes, more than the limit of {} MiB for its output",
            out.total,
            COMMAND_STDOUT_LIMIT >> 20
        )));
    }
    let text = String::from_utf8_lossy(&out.kept);
    serde_json::from_str(text.trim()).map_err(|e| err(format!("output is not JSON: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::optimizer::calls::Source;
    use crate::optimizer::events::EventLog;

    #[test]
    fn extraction_modes() {
        assert_eq!(extract_answer(&Extract::LastLine, "a\nb\n\n"), "b");
        let re = Extract::Regex {
            pattern: r"(\d+)".into(),
            group: 1,
        };
        assert_eq!(extract_answer(&re, "1 then 22"), "22");
        let jf = Extract::JsonField { field: "x".into() };
        assert_eq!(extract_answer(&jf, "ok {\"x\": 5}"), "5");
    }

    #[test]
    fn command_errors_are_reported() {
        let sh = |s: &str| vec!["sh".to_string(), "-c".to_string(), s.to_string()];
        let v = run_json_command(
            &sh("cat >/dev/null; echo '{\"answer\": 1}'"),
            &Value::Null,
            Duration::from_secs(5),
        )
        .unwrap();
        assert_eq!(v["answer"], 1);
        let e = run_json_command(&sh("exit 3"), &Value::Null, Duration::from_secs(5)).unwrap_err();
        assert!(e.to_string().contains("exited"), "{e}");
        let e =
            run_json_command(&sh("sleep 5"), &Value::Null, Duration::from_millis(200)).unwrap_err();
        assert!(e.to_string().contains("timed out"), "{e}");
        let e =
            run_json_command(&sh("echo nope"), &Value::Null, Duration::from_secs(5)).unwrap_err();
        assert!(e.to_string().contains("not JSON"), "{e}");
    }

    fn sh(script: &str) -> Vec<String> {
        vec!["sh".to_string(), "-c".to_string(), script.to_string()]
    }

    /// Whether process `pid` still exists (a zombie of another parent counts as gone).
    fn alive(pid: i32) -> bool {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
        !status.is_empty() && !status.contains("State:\tZ")
    }

    #[test]
    fn a_background_child_holding_stdout_does_not_hold_the_call() {
        let started = Instant::now();
        let v = run_json_command(
            &sh("sleep 1000 & echo '{\"answer\": 2}'"),
            &Value::Null,
            Duration::from_secs(30),
        )
        .unwrap();
        assert_eq!(v["answer"], 2);
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "{:?}",
            started.elapsed()
        );
    }

    #[test]
    fn a_grandchild_outside_the_group_costs_at_most_the_grace_and_loses_nothing() {
        let started = Instant::now();
        let v = run_json_command(
            &sh("setsid sleep 3 & echo '{\"answer\": 2}'"),
            &Value::Null,
            Duration::from_secs(30),
        )
        .unwrap();
        assert_eq!(v["answer"], 2);
        let took = started.elapsed();
        assert!(took < PIPE_GRACE + Duration::from_millis(900), "{took:?}");
    }

    #[test]
    fn a_timeout_kills_the_whole_process_group() {
        let dir = tempfile::tempdir().unwrap();
        let pid_file = dir.path().join("pid");
        let script = format!(
            "sh -c 'echo $$ > {0}; exec sleep 1000' & while [ ! -s {0} ]; do :; done; sleep 1000",
            pid_file.display()
        );
        let started = Instant::now();
        let e =
            run_json_command(&sh(&script), &Value::Null, Duration::from_millis(500)).unwrap_err();
        assert!(e.to_string().contains("timed out after 0.5s"), "{e}");
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "{:?}",
            started.elapsed()
        );
        let pid: i32 = std::fs::read_to_string(&pid_file)
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(5);
        while alive(pid) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        assert!(!alive(pid), "the grandchild {pid} outlived the timeout");
    }

    #[test]
    fn output_beyond_the_cap_is_counted_not_kept() {
        let e = run_json_command(
            &sh("head -c 200000000 /dev/zero"),
            &Value::Null,
            Duration::from_secs(60),
        )
        .unwrap_err();
        assert!(
            e.to_string()
                .contains("printed 200000000 bytes, more than the limit of 16 MiB"),
            "{e}"
        );
        // Input the program never reads does not block the call either.
        let big = Value::String("x".repeat(8 << 20));
        let v = run_json_command(&sh("echo '{}'"), &big, Duration::from_secs(30)).unwrap();
        assert_eq!(v, serde_json::json!({}));
    }

    #[test]
    fn a_command_runs_once_per_distinct_input_of_a_batch() {
        let dir = tempfile::tempdir().unwrap();
        let runs = dir.path().join("runs.txt");
        // Each run appends a line and answers how many runs there have been, so repeated
        // runs of one input would give different answers.
        let script = format!(
            "cat >/dev/null; echo x >> '{0}'; echo \"{{\\\"answer\\\": $(wc -l < '{0}')}}\"",
            runs.display()
        );
        let agent = Agent {
            executor: Executor::Command {
                command: vec!["sh".into(), "-c".into(), script],
                timeout: Duration::from_secs(20),
            },
            metric: MetricSpec::Numeric { tolerance: 0.0 },
        };
        let example = |i: i64| {
            let v = serde_json::json!({"question": format!("q{i}"), "answer": 1});
            Example {
                id: format!("e{i}"),
                file: "train.jsonl".into(),
                line: 1,
                fields: v.as_object().cloned().unwrap_or_default(),
                answer: v["answer"].clone(),
            }
        };
        let (e0, e1) = (example(0), example(1));
        let c = Components::from([("p".to_string(), "text".to_string())]);
        let log_path = dir.path().join("events.jsonl");
        let (log, _) = EventLog::open(&log_path).unwrap();
        let calls = Calls::new(log, Vec::new());
        let ctx = Ctx::new("fgo", "merge");
        let batch = [(&c, &e0), (&c, &e1), (&c, &e0), (&c, &e0)];
        let out = agent.evaluate(&calls, &ctx, &batch);
        let run_count = || std::fs::read_to_string(&runs).unwrap().lines().count();
        assert_eq!(run_count(), 2, "one run per distinct input");
        assert_eq!(out[0].answer, out[2].answer);
        assert_eq!(out[0].answer, out[3].answer);
        let sources = |calls: &Calls| {
            let ledger = calls.ledger();
            [Source::Live, Source::Replayed, Source::Memo]
                .map(|s| ledger.iter().filter(|e| e.source == s).count())
        };
        assert_eq!(sources(&calls), [2, 0, 2]);
        // A later batch answers both inputs from the memo.
        let again = agent.evaluate(&calls, &ctx, &[(&c, &e1), (&c, &e0)]);
        assert_eq!((&again[0], &again[1]), (&out[1], &out[0]));
        assert_eq!(run_count(), 2);
        drop(calls);

        // A resumed run replays the same batch from the log: the same answers, no run, and
        // the same accounting of repeats.
        let (log, previous) = EventLog::open(&log_path).unwrap();
        assert_eq!(previous.len(), 2, "one record per distinct input");
        let resumed = Calls::new(log, previous);
        assert_eq!(agent.evaluate(&resumed, &ctx, &batch), out);
        assert_eq!(run_count(), 2);
        assert_eq!(sources(&resumed), [0, 2, 2]);
    }
}
