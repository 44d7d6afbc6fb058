//! The optimizer's prompts, rendered from the text files in `prompts/`.
//!
//! Trajectories are shown "truncated to their informative parts": repeated lines (small
//! models loop) are collapsed, and a long reply keeps its head (where the approach is set)
//! and its tail (where the answer is), with the number of characters left out. Failed
//! attempts remembered by the optimizer are shown so it does not propose them again.

use std::collections::BTreeMap;

use crate::engine::chat::ChatMessage;
use crate::optimizer::data::template::Template;
use crate::optimizer::exec::agent::{Components, Outcome};
use crate::optimizer::methods::operators::{
    jaccard, truncate_informative, word_set, EDIT_HINTS, MERGE_HINTS,
};
use crate::optimizer::methods::parse::PLACEHOLDER;

const SYSTEM: &str = include_str!("prompts/system.txt");
const DIAGNOSE: &str = include_str!("prompts/diagnose.txt");
const REWRITE: &str = include_str!("prompts/rewrite.txt");
const REASK: &str = include_str!("prompts/reask.txt");
const MERGE: &str = include_str!("prompts/merge.txt");
const INDUCTION: &str = include_str!("prompts/induction.txt");
const STRATEGY: &str = include_str!("prompts/strategy.txt");

/// Every prompt text, for the guard's list of the optimizer's own words.
pub fn own_texts() -> String {
    [SYSTEM, DIAGNOSE, REWRITE, REASK, MERGE, INDUCTION, STRATEGY].join("\n")
}

/// A candidate that was tried and not kept.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct FailedAttempt {
    pub components: Components,
    /// Why it was not kept (a lower score, a leak, ...).
    pub reason: String,
    /// The text is never shown again (it leaked or copied training data).
    #[serde(default)]
    pub withheld: bool,
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
        .map(|n| format!("<{n}>\n{PLACEHOLDER}\n</{n}>"))
        .collect();
    format!(
        "End your reply with the complete new instructions between tags, exactly like this:\n{}",
        blocks.join("\n")
    )
}

/// `text` without the second and later copies of a sentence (small models loop within a
/// line, where [`truncate_informative`] sees no repeated line).
pub fn drop_repeated_sentences(text: &str) -> String {
    let mut seen = std::collections::HashSet::new();
    let mut out = String::new();
    for piece in text.split_inclusive(['.', '!', '?', '\n']) {
        let key: String = piece
            .split_whitespace()
            .collect::<Vec<_>>()
            .join(" ")
            .to_lowercase();
        if key.split(' ').count() >= 4 && !seen.insert(key) {
            continue;
        }
        out.push_str(piece);
    }
    out
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
    if let Some(f) = &o.feedback {
        s.push_str(&format!("Feedback: {}\n", truncate_informative(f, 300)));
    }
    if o.cut_off {
        s.push_str("The reply was cut off at the length limit before it ended.\n");
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
        if a.withheld {
            s.push_str(&format!(
                "- Revision {}: (text withheld) ({})\n",
                i + 1,
                a.reason
            ));
            continue;
        }
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
            (
                "diagnosis",
                truncate_informative(&drop_repeated_sentences(diagnosis), 1500),
            ),
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

/// One child of a merge as the merge prompt shows it.
pub struct MergeChild {
    pub components: Components,
    /// What it changed from the initial component (a line diff).
    pub change: String,
    /// Its score on its own examples and on the other children's.
    pub own_score: f64,
    pub other_score: f64,
    /// Examples of the union it solves and no other child does.
    pub wins: usize,
}

/// The merge request over several optimized versions, for merge hint `hint_index`.
pub fn merge(children: &[MergeChild], names: &[String], hint_index: usize) -> Vec<ChatMessage> {
    let mut shown = String::new();
    for (i, c) in children.iter().enumerate() {
        shown.push_str(&format!(
            "## Version {}\n{}\nWhat it changed from the original:\n{}\nScore on its own tasks: {:.0}%. Score on the other versions' tasks: {:.0}%. Tasks only this version solves: {}.\n\n",
            i + 1,
            show_components(&c.components, names),
            truncate_informative(&c.change, 800),
            100.0 * c.own_score,
            100.0 * c.other_score,
            c.wins,
        ));
    }
    let user = render(
        MERGE,
        &[
            ("component_names", names.join(", ")),
            ("versions", shown),
            (
                "merge_hint",
                MERGE_HINTS[hint_index % MERGE_HINTS.len()].to_string(),
            ),
            ("output_format", output_format(names)),
        ],
    );
    vec![system(), ChatMessage::user(user)]
}

/// The procedure-induction request: pairs of similar right and wrong attempts.
pub fn induction(components: &Components, names: &[String], pairs: &str) -> Vec<ChatMessage> {
    let user = render(
        INDUCTION,
        &[
            ("component_names", names.join(", ")),
            ("components", show_components(components, names)),
            ("pairs", pairs.to_string()),
            ("output_format", procedure_format()),
        ],
    );
    vec![system(), ChatMessage::user(user)]
}

/// Where an induction reply must put its procedure.
pub fn procedure_format() -> String {
    "Reply with the procedure between tags, exactly like this:\n<procedure>\n1. ...\n2. ...\n</procedure>".into()
}

/// The strategy request: rewrite the component so the agent works by `strategy`.
pub fn strategy(
    components: &Components,
    names: &[String],
    trajectories: &str,
    strategy: &str,
) -> Vec<ChatMessage> {
    let user = render(
        STRATEGY,
        &[
            ("component_names", names.join(", ")),
            ("components", show_components(components, names)),
            ("trajectories", trajectories.to_string()),
            ("strategy", strategy.to_string()),
            ("output_format", output_format(names)),
        ],
    );
    vec![system(), ChatMessage::user(user)]
}

/// Up to `max_pairs` failures, each beside the success most similar to it (word overlap
/// of the inputs), formatted; failures alone when nothing succeeded.
pub fn show_pairs(
    outcomes: &[Outcome],
    max_pairs: usize,
    max_chars: usize,
    order: &[usize],
) -> String {
    let fails: Vec<&Outcome> = order
        .iter()
        .filter_map(|&i| outcomes.get(i))
        .filter(|o| !o.solved())
        .take(max_pairs)
        .collect();
    let oks: Vec<&Outcome> = outcomes.iter().filter(|o| o.solved()).collect();
    let mut out = String::new();
    for (n, f) in fails.iter().enumerate() {
        out.push_str(&format!("## Pair {}\n", n + 1));
        let fw = word_set(&f.input);
        let best = oks.iter().max_by(|a, b| {
            let sa = jaccard(&fw, &word_set(&a.input));
            let sb = jaccard(&fw, &word_set(&b.input));
            sa.total_cmp(&sb)
        });
        if let Some(ok) = best {
            out.push_str(&show_outcome(2 * n + 1, ok, max_chars));
        }
        out.push_str(&show_outcome(2 * n + 2, f, max_chars));
        out.push('\n');
    }
    out
}

/// Extends a conversation with the model's unusable reply, the reason, and the output
/// format expected.
pub fn reask(
    conversation: &[ChatMessage],
    reply: &str,
    reason: &str,
    format: &str,
) -> Vec<ChatMessage> {
    let mut messages = conversation.to_vec();
    messages.push(ChatMessage::assistant(reply));
    messages.push(ChatMessage::user(render(
        REASK,
        &[
            ("reason", reason.to_string()),
            ("output_format", format.to_string()),
        ],
    )));
    messages
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cut_off_reply_is_said_so_to_the_optimizer() {
        let mut o = Outcome {
            id: "e".into(),
            score: 0.0,
            answer: String::new(),
            expected: "7".into(),
            input: "q".into(),
            trajectory: "First, one by one".into(),
            error: None,
            feedback: None,
            cut_off: true,
        };
        assert!(show_outcome(1, &o, 600).contains("cut off at the length limit"));
        o.cut_off = false;
        assert!(!show_outcome(1, &o, 600).contains("cut off"));
    }

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
    fn repeated_sentences_are_dropped() {
        let looped = "It misread the task here. It misread the task here. it misread  the task here. Fix: list.";
        assert_eq!(
            drop_repeated_sentences(looped),
            "It misread the task here. Fix: list."
        );
        assert_eq!(drop_repeated_sentences("Go. Go. Go."), "Go. Go. Go.");
    }

    #[test]
    fn templates_render_every_placeholder() {
        let names = vec!["system_prompt".to_string()];
        let comps = Components::from([("system_prompt".to_string(), "Be careful.".to_string())]);
        for msgs in [
            diagnose(&comps, &names, "T", ""),
            rewrite(&comps, &names, "D", "", 5),
            merge(
                &[MergeChild {
                    components: comps.clone(),
                    change: "+ x".into(),
                    own_score: 0.5,
                    other_score: 0.25,
                    wins: 1,
                }],
                &names,
                0,
            ),
            induction(&comps, &names, "P"),
            strategy(&comps, &names, "T", "S"),
            reask(&[], "r", "why", &output_format(&names)),
        ] {
            let text = msgs.last().map(|m| m.content.clone()).unwrap_or_default();
            assert!(!text.contains("{{"), "{text}");
        }
    }
}
