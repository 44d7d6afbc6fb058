//! The agent: how one example is executed with given components, and how its answer is
//! scored.
//!
//! [`Agent::evaluate`] takes many (components, example) jobs at once: a chat agent submits all
//! their requests in one batch through [`Calls`]; a command agent runs its program once on
//! each distinct input not already known to [`Calls`], several at a time. A job that fails (engine error, command error, timeout) becomes an
//! [`Outcome`] with score 0 and the reason, never an error of the run.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

use rayon::prelude::*;
use regex::Regex;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::engine::chat::ChatMessage;
use crate::engine::sampling::SamplingParams;
use crate::error::Result;
use crate::llm::{ChatRequest, FinishReason, Llm};
use crate::optimizer::data::command::{run_json_command, Limits};
use crate::optimizer::data::dataset::Example;
use crate::optimizer::data::metric::{self, first_json_object};
use crate::optimizer::data::rng::stable_hash;
use crate::optimizer::data::task::{AgentSpec, Extract, MetricSpec, Task};
use crate::optimizer::data::template::{value_text, Template};
use crate::optimizer::exec::calls::{Calls, Ctx, Role};

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
    /// Whether a chat reply stopped at the agent's token limit (or the context) before it
    /// ended: its answer, if any, was cut short.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub cut_off: bool,
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
    /// A chat reply stopped by a limit.
    cut_off: bool,
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
        limits: Limits,
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
            AgentSpec::Command {
                command,
                timeout_s,
                max_output_bytes,
            } => Executor::Command {
                command: command.clone(),
                limits: Limits::of(*timeout_s, *max_output_bytes),
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
                                cut_off: matches!(
                                    c.finish_reason,
                                    FinishReason::Length | FinishReason::ContextFull
                                ),
                                trajectory: c.text,
                                own_score: None,
                                feedback: None,
                            })
                            .map_err(|e| e.to_string());
                        (input, r)
                    })
                    .collect()
            }
            Executor::Command { command, limits } => {
                let inputs: Vec<Value> = jobs
                    .iter()
                    .map(|(c, ex)| {
                        serde_json::json!({"components": c, "example": Value::Object(ex.fields.clone())})
                    })
                    .collect();
                let results = run_commands(calls, ctx, command, *limits, &inputs);
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
            cut_off,
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
                    cut_off: false,
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
            cut_off,
        }
    }

    /// The most tokens a chat agent may write in one reply; `None` for a command agent.
    pub fn reply_tokens(&self) -> Option<usize> {
        match &self.executor {
            Executor::Chat { params, .. } => Some(params.max_new_tokens),
            Executor::Command { .. } => None,
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
    limits: Limits,
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
            let r = run_json_command(command, &inputs[i], limits).map_err(|e| e.to_string());
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
        cut_off: false,
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::optimizer::exec::calls::Source;
    use crate::optimizer::exec::events::EventLog;

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
    fn a_reply_stopped_at_the_token_limit_is_marked_cut_off() {
        use crate::optimizer::exec::testutil::ScriptedLlm;
        let llm = Arc::new(ScriptedLlm::new(|r: &ChatRequest| {
            let user = &r.messages.last().unwrap().content;
            if user.contains("long") {
                "word ".repeat(50)
            } else {
                "42".into()
            }
        }));
        let params = SamplingParams {
            max_new_tokens: 8,
            ..Default::default()
        };
        let agent = Agent {
            executor: Executor::Chat {
                llm,
                system: None,
                user: Template::parse("{{question}}").unwrap(),
                params,
                extract: Extract::LastLine,
            },
            metric: MetricSpec::Exact {
                ignore_case: false,
                collapse_whitespace: true,
                strip_punctuation: false,
            },
        };
        assert_eq!(agent.reply_tokens(), Some(8));
        let example = |q: &str| Example {
            id: q.into(),
            file: "t.jsonl".into(),
            line: 1,
            fields: serde_json::json!({"question": q})
                .as_object()
                .cloned()
                .unwrap(),
            answer: serde_json::json!("42"),
        };
        let (short, long) = (example("short"), example("long"));
        let c = Components::new();
        let calls = Calls::in_memory();
        let ctx = Ctx::new("m", "s");
        let out = agent.evaluate(&calls, &ctx, &[(&c, &short), (&c, &long)]);
        assert!(!out[0].cut_off && out[0].solved());
        assert!(out[1].cut_off && !out[1].solved(), "{:?}", out[1]);
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
                limits: Limits {
                    timeout: std::time::Duration::from_secs(20),
                    output_bytes: 1 << 20,
                },
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
