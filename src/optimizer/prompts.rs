//! The optimizer's prompts, rendered from the text files in `prompts/`.
//!
//! Trajectories are shown "truncated to their informative parts": repeated lines (small
//! models loop) are collapsed, and a long reply keeps its head (where the approach is set)
//! and its tail (where the answer is), with the number of characters left out. Failed
//! attempts remembered by the optimizer are shown so it does not propose them again.

use std::collections::BTreeMap;

use crate::engine::chat::ChatMessage;
use crate::optimizer::agent::{Components, Outcome};
use crate::optimizer::template::Template;

const SYSTEM: &str = include_str!("prompts/system.txt");
const DIAGNOSE: &str = include_str!("prompts/diagnose.txt");
const REWRITE: &str = include_str!("prompts/rewrite.txt");
const REASK: &str = include_str!("prompts/reask.txt");
const MERGE: &str = include_str!("prompts/merge.txt");

/// Edit styles rotated over the candidates of an iteration, so that a weak optimizer
/// explores different kinds of change instead of sampling one idea several times.
pub const EDIT_HINTS: [&str; 4] = [
    "Add a short numbered step-by-step procedure the assistant must follow on every task of this kind.",
    "Add one or two precise rules that prevent the mistakes found in the review.",
    "Make the instructions clearer and stricter about how to work and how to format the final answer.",
    "Add a check the assistant must do before giving its final answer.",
];

/// A candidate that was tried and not kept.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct FailedAttempt {
    pub components: Components,
    /// Why it was not kept (a lower score, a leak, ...).
    pub reason: String,
}

fn render(template: &str, vars: &[(&str, String)]) -> String {
    let vars: BTreeMap<String, String> = vars
        .iter()
        .map(|(k, v)| (k.to_string(), v.clone()))
        .collect();
    match Template::parse(template) {
        Ok(t) => t.render(&vars, &serde_json::Map::new()),
        // The templates are compiled in and tested; fall back to the raw text regardless.
        Err(_) => template.to_string(),
    }
}

/// The optimizer's system message.
pub fn system() -> ChatMessage {
    ChatMessage::system(SYSTEM.trim())
}

/// The components as tagged blocks.
pub fn show_components(components: &Components, names: &[String]) -> String {
    names
        .iter()
        .map(|n| {
            format!(
                "<{n}>\n{}\n</{n}>",
                components.get(n).map(String::as_str).unwrap_or("").trim()
            )
        })
        .collect::<Vec<_>>()
        .join("\n\n")
}

/// Where the model must put its answer.
pub fn output_format(names: &[String]) -> String {
    let blocks: Vec<String> = names
        .iter()
        .map(|n| format!("<{n}>\n(the new text)\n</{n}>"))
        .collect();
    format!(
        "End your reply with the complete new instructions between tags, exactly like this:\n{}",
        blocks.join("\n")
    )
}

/// Collapses repeated lines and keeps the head and tail of `text` within `max_chars`.
pub fn truncate_informative(text: &str, max_chars: usize) -> String {
    let mut lines: Vec<String> = Vec::new();
    let mut repeats = 0usize;
    for line in text.lines() {
        if lines.last().is_some_and(|l| l == line) && !line.trim().is_empty() {
            repeats += 1;
            continue;
        }
        if repeats > 0 {
            lines.push(format!("[previous line repeated {repeats} more times]"));
            repeats = 0;
        }
        lines.push(line.to_string());
    }
    if repeats > 0 {
        lines.push(format!("[previous line repeated {repeats} more times]"));
    }
    let collapsed = lines.join("\n");
    let chars: Vec<char> = collapsed.trim().chars().collect();
    if chars.len() <= max_chars {
        return chars.into_iter().collect();
    }
    let head = max_chars * 2 / 5;
    let tail = max_chars - head;
    let omitted = chars.len() - head - tail;
    format!(
        "{} [... {omitted} characters left out ...] {}",
        chars[..head].iter().collect::<String>(),
        chars[chars.len() - tail..].iter().collect::<String>()
    )
}

/// One trajectory as the optimizer sees it.
pub fn show_outcome(n: usize, o: &Outcome, max_chars: usize) -> String {
    let verdict = if o.solved() { "RIGHT" } else { "WRONG" };
    let mut s = format!(
        "### Attempt {n} ({verdict})\nTask: {}\nAssistant's reasoning and reply: {}\n",
        truncate_informative(&o.input, max_chars / 2),
        truncate_informative(&o.trajectory, max_chars)
    );
    if let Some(e) = &o.error {
        s.push_str(&format!("Error: {}\n", truncate_informative(e, 200)));
    }
    s.push_str(&format!(
        "Extracted answer: {:?} | Expected: {:?}\n",
        o.answer, o.expected
    ));
    s
}

/// The remembered failed attempts, most recent last.
pub fn show_failed(attempts: &[FailedAttempt], names: &[String], keep: usize) -> String {
    if attempts.is_empty() || keep == 0 {
        return String::new();
    }
    let shown = &attempts[attempts.len().saturating_sub(keep)..];
    let mut s = String::from(
        "\nThese earlier revisions were tried and did NOT help; do not repeat them:\n",
    );
    for (i, a) in shown.iter().enumerate() {
        let text: Vec<String> = names
            .iter()
            .map(|n| {
                truncate_informative(a.components.get(n).map(String::as_str).unwrap_or(""), 400)
            })
            .collect();
        s.push_str(&format!(
            "- Revision {}: \"{}\" ({})\n",
            i + 1,
            text.join(" / "),
            a.reason
        ));
    }
    s
}

/// The diagnosis request.
pub fn diagnose(
    components: &Components,
    names: &[String],
    trajectories: &str,
    failed: &str,
) -> Vec<ChatMessage> {
    let user = render(
        DIAGNOSE,
        &[
            ("component_names", names.join(", ")),
            ("components", show_components(components, names)),
            ("trajectories", trajectories.to_string()),
            ("failed_attempts", failed.to_string()),
        ],
    );
    vec![system(), ChatMessage::user(user)]
}

/// The rewrite request for candidate `hint_index`.
pub fn rewrite(
    components: &Components,
    names: &[String],
    diagnosis: &str,
    failed: &str,
    hint_index: usize,
) -> Vec<ChatMessage> {
    let user = render(
        REWRITE,
        &[
            ("component_names", names.join(", ")),
            ("components", show_components(components, names)),
            ("diagnosis", truncate_informative(diagnosis, 1500)),
            ("failed_attempts", failed.to_string()),
            (
                "edit_hint",
                EDIT_HINTS[hint_index % EDIT_HINTS.len()].to_string(),
            ),
            ("output_format", output_format(names)),
        ],
    );
    vec![system(), ChatMessage::user(user)]
}

/// The merge request over several optimized versions with their lessons.
pub fn merge(versions: &[(Components, Vec<String>)], names: &[String]) -> Vec<ChatMessage> {
    let mut shown = String::new();
    for (i, (c, lessons)) in versions.iter().enumerate() {
        shown.push_str(&format!(
            "## Version {}\n{}\n",
            i + 1,
            show_components(c, names)
        ));
        if lessons.is_empty() {
            shown.push_str("Lessons: (none recorded)\n\n");
        } else {
            shown.push_str("Lessons:\n");
            for l in lessons {
                shown.push_str(&format!(
                    "- {}\n",
                    truncate_informative(l, 300).replace('\n', " ")
                ));
            }
            shown.push('\n');
        }
    }
    let user = render(
        MERGE,
        &[
            ("component_names", names.join(", ")),
            ("versions", shown),
            ("output_format", output_format(names)),
        ],
    );
    vec![system(), ChatMessage::user(user)]
}

/// Extends a conversation with the model's unusable reply and the reason.
pub fn reask(
    conversation: &[ChatMessage],
    reply: &str,
    reason: &str,
    names: &[String],
) -> Vec<ChatMessage> {
    let mut messages = conversation.to_vec();
    messages.push(ChatMessage::assistant(reply));
    messages.push(ChatMessage::user(render(
        REASK,
        &[
            ("reason", reason.to_string()),
            ("output_format", output_format(names)),
        ],
    )));
    messages
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn truncation_keeps_head_and_tail_and_collapses_loops() {
        let text = format!("start\n{}\nanswer: 7", "loop\n".repeat(50));
        let t = truncate_informative(&text, 1000);
        assert!(t.contains("repeated 49 more times"), "{t}");
        let long = format!("HEAD{}TAIL", "x".repeat(5000));
        let t = truncate_informative(&long, 100);
        assert!(
            t.starts_with("HEAD") && t.ends_with("TAIL") && t.contains("left out"),
            "{t}"
        );
    }

    #[test]
    fn templates_render_every_placeholder() {
        let names = vec!["system_prompt".to_string()];
        let comps = Components::from([("system_prompt".to_string(), "Be careful.".to_string())]);
        for msgs in [
            diagnose(&comps, &names, "T", ""),
            rewrite(&comps, &names, "D", "", 5),
            merge(&[(comps.clone(), vec!["l".into()])], &names),
            reask(&[], "r", "why", &names),
        ] {
            let text = msgs.last().map(|m| m.content.clone()).unwrap_or_default();
            assert!(!text.contains("{{"), "{text}");
        }
    }
}
