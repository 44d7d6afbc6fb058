//! The task and its data, the first stage of the flow: the task file and its validation
//! ([`task`], [`validate`]), the examples ([`dataset`]), prompt templates ([`template`]),
//! the scoring of an answer ([`metric`]) and the score of one answer given to every
//! example ([`baseline`]), the JSON command protocol agents and metrics
//! speak ([`command`]) and seeded randomness ([`rng`]). Nothing here depends on the rest
//! of the optimizer.

pub mod baseline;
pub mod command;
pub mod dataset;
pub mod metric;
pub mod rng;
pub mod task;
pub mod template;

use crate::error::{Error, Result};
use dataset::Dataset;
use task::{AgentSpec, Task};
use template::Template;

/// Loads a task file and its data and validates both (no model is loaded).
pub fn prepare(path: &std::path::Path) -> Result<(Task, Dataset)> {
    let task = Task::load(path)?;
    let data = Dataset::load(&task)?;
    validate(&task, &data)?;
    Ok((task, data))
}

/// Checks the task against its data: every template placeholder names a component or a
/// field every example has, every expected answer suits the metric, and a command agent
/// runs on the first training example. Call before loading any model.
pub fn validate(task: &Task, data: &Dataset) -> Result<()> {
    if let AgentSpec::Chat { system, user, .. } = &task.spec.agent {
        let templates = [
            ("agent.system", system.as_deref()),
            ("agent.user", Some(user.as_str())),
        ];
        for (field, text) in templates {
            let Some(text) = text else { continue };
            let t = Template::parse(text).map_err(|r| task.err(field, r))?;
            for name in t.names() {
                if task.initial.contains_key(name) {
                    continue;
                }
                if let Some(ex) = data.all().find(|e| !e.fields.contains_key(name)) {
                    return Err(Error::Data {
                        file: ex.file.clone(),
                        line: ex.line,
                        reason: format!("`{field}` uses `{{{{{name}}}}}` but this example has no field `{name}`"),
                    });
                }
            }
        }
    }
    metric::check_applicable(&task.spec.metric, data.all())?;
    if let AgentSpec::Command {
        command,
        timeout_s,
        max_output_bytes,
    } = &task.spec.agent
    {
        if let Some(ex) = data.train.first() {
            let input = serde_json::json!({
                "components": task.initial,
                "example": serde_json::Value::Object(ex.fields.clone()),
            });
            command::run_json_command(
                command,
                &input,
                command::Limits::of(*timeout_s, *max_output_bytes),
            )
            .map_err(|e| {
                task.err(
                    "agent.command",
                    format!("trial run on {}:{}: {e}", ex.file.display(), ex.line),
                )
            })?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod validate_tests {
    use super::*;

    fn setup(task_extra: &str, data: &str) -> (tempfile::TempDir, Result<(Task, Dataset)>) {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let toml = format!(
            "name = \"t\"\n[components.sys]\ntext = \"Answer.\"\n{task_extra}\n[data]\ntrain = \"train.jsonl\"\n[metric]\ntype = \"numeric\"\n"
        );
        std::fs::write(dir.path().join("task.toml"), toml).unwrap_or_else(|e| panic!("{e}"));
        std::fs::write(dir.path().join("train.jsonl"), data).unwrap_or_else(|e| panic!("{e}"));
        let r = prepare(&dir.path().join("task.toml"));
        (dir, r)
    }

    const CHAT: &str =
        "[agent]\ntype = \"chat\"\nmodel = \"m\"\nsystem = \"{{sys}}\"\nuser = \"{{question}}\"";

    #[test]
    fn template_field_missing_from_data_names_the_line() {
        let (_d, r) = setup(
            CHAT,
            "{\"question\": \"q\", \"answer\": 1}\n{\"q\": \"x\", \"answer\": 2}\n",
        );
        let e = r.unwrap_err().to_string();
        assert!(e.contains("train.jsonl:2") && e.contains("question"), "{e}");
    }

    #[test]
    fn metric_that_cannot_apply_and_empty_split() {
        let (_d, r) = setup(CHAT, "{\"question\": \"q\", \"answer\": \"many\"}\n");
        assert!(r.unwrap_err().to_string().contains("not a number"));
        let (_d, r) = setup(CHAT, "\n");
        assert!(r.unwrap_err().to_string().contains("data.train"));
    }

    #[test]
    fn failing_agent_command_is_caught_before_any_model() {
        let agent = "[agent]\ntype = \"command\"\ncommand = [\"sh\", \"-c\", \"exit 4\"]\n[optimizer]\nmodel = \"m\"";
        let (_d, r) = setup(agent, "{\"question\": \"q\", \"answer\": 1}\n");
        let e = r.unwrap_err().to_string();
        assert!(
            e.contains("agent.command") && e.contains("train.jsonl:1"),
            "{e}"
        );
    }
}
