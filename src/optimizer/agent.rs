//! The agent: how one example is executed with given components, and how its answer is
//! scored.
//!
//! [`Agent::evaluate`] takes many (components, example) jobs at once: a chat agent submits all
//! their requests in one batch through [`Calls`]; a command agent runs its program on each,
//! several at a time. A job that fails (engine error, command error, timeout) becomes an
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
                        let input = req.messages.last().map(|m| m.content.clone()).unwrap_or_default();
                        let r = r
                            .map(|c| Raw {
                                answer: extract_answer(extract, &c.text),
                                trajectory: c.text,
                                own_score: None,
                            })
                            .map_err(|e| e.to_string());
                        (input, r)
                    })
                    .collect()
            }
            Executor::Command { command, timeout } => jobs
                .par_iter()
                .map(|(c, ex)| {
                    let input = serde_json::json!({"components": c, "example": Value::Object(ex.fields.clone())});
                    let key = stable_hash(format!("{}\n{}", command.join("\u{0}"), input).as_bytes());
                    let result = match calls.known_command(ctx, &key) {
                        Some(r) => r,
                        None => {
                            let t = Instant::now();
                            let r = run_json_command(command, &input, *timeout).map_err(|e| e.to_string());
                            calls.record_command(ctx, &key, r.clone(), t.elapsed().as_secs_f64());
                            r
                        }
                    };
                    let shown = serde_json::to_string(&ex.fields).unwrap_or_default();
                    let r = result.and_then(|out| {
                        let answer = out.get("answer").map(value_text).unwrap_or_default();
                        let trajectory = out.get("trajectory").map(value_text).unwrap_or_default();
                        let own_score = match out.get("score") {
                            None | Some(Value::Null) => None,
                            Some(v) => Some(v.as_f64().ok_or_else(|| "`score` is not a number".to_string())?),
                        };
                        Ok(Raw {
                            answer,
                            trajectory,
                            own_score,
                        })
                    });
                    (shown, r)
                })
                .collect(),
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
                }
            }
        };
        let (score, error) = match own_score {
            Some(s) => (s.clamp(0.0, 1.0), None),
            None => match metric::score(&self.metric, &answer, ex) {
                Ok(s) => (s, None),
                Err(e) => (0.0, Some(format!("metric: {e}"))),
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
        }
    }
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

/// Runs `command` (no shell) with `input` as JSON on stdin and parses its stdout as JSON;
/// a non-zero exit, a timeout or non-JSON output is an error.
pub fn run_json_command(command: &[String], input: &Value, timeout: Duration) -> Result<Value> {
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
        .spawn()
        .map_err(|e| err(format!("cannot start: {e}")))?;
    let body = input.to_string();
    let mut stdin = child.stdin.take();
    let writer = std::thread::spawn(move || {
        if let Some(s) = stdin.as_mut() {
            let _ = s.write_all(body.as_bytes());
        }
    });
    let mut stdout = child.stdout.take();
    let reader = std::thread::spawn(move || {
        let mut out = String::new();
        if let Some(s) = stdout.as_mut() {
            let _ = s.read_to_string(&mut out);
        }
        out
    });
    let mut stderr = child.stderr.take();
    let err_reader = std::thread::spawn(move || {
        let mut out = String::new();
        if let Some(s) = stderr.as_mut() {
            let _ = s.read_to_string(&mut out);
        }
        out
    });
    let status = match child
        .wait_timeout(timeout)
        .map_err(|e| err(e.to_string()))?
    {
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
    let _ = writer.join();
    let out = reader.join().unwrap_or_default();
    let stderr_text = err_reader.join().unwrap_or_default();
    if !status.success() {
        let tail: String = stderr_text
            .trim()
            .chars()
            .rev()
            .take(300)
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .collect();
        return Err(err(format!("exited with {status}: {tail}")));
    }
    serde_json::from_str(out.trim()).map_err(|e| err(format!("output is not JSON: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
