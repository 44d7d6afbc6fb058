//! The proposal moves: how candidate components are made.
//!
//! A weak optimizer asked only to "diagnose and rewrite" writes generic advice and rarely
//! changes what the agent does. The moves below include ones that change the agent's
//! procedure without relying on the optimizer's insight, and evaluation decides among them:
//!
//! - [`Operator::Rewrite`]: the optimizer rewrites the component from a diagnosis of the
//!   failures, with an edit hint (add, simplify, replace, check, format).
//! - [`Operator::Induction`]: the optimizer compares the agent's successful and failed
//!   trajectories on similar inputs and writes, as a numbered procedure, what the
//!   successful ones did; the procedure is appended to the component.
//! - [`Operator::Demos`]: a few of the agent's own correct training trajectories are
//!   appended as worked examples, chosen to resemble the current failures (no model call).
//! - [`Operator::Seed`]: a strategy from a small task-agnostic library (reason step by step,
//!   enumerate then combine, restate the question, check the answer, ...) is appended
//!   verbatim (no model call); one the component already states is skipped for the next.
//! - [`Operator::Strategy`]: the optimizer rewrites the component so that the agent works
//!   by one strategy of the library, adapted to the tasks it sees.
//! - [`Operator::Format`]: the answer format, abstracted from the training answers (a label
//!   set or a shape such as `<4 digits>-<2 digits>-<2 digits>`), is appended with one
//!   training answer as its example (no model call; see [`crate::optimizer::methods::format`]).
//! - [`Operator::Crossover`] (merges only): one child's text plus the sections the other
//!   children added, without a model call.
//! - [`Operator::Merge`] (merges only): the optimizer writes one version from the children.
//! - [`Operator::Retrial`] (merges only): a crossover of the best child with a near miss
//!   of a child's subset (a candidate that gained there, but too little to be accepted on
//!   that subset's evidence alone), over the near miss's parent: only what it added.
//!
//! Nothing here may name a task, a domain or an example: the moves must work on tasks the
//! project has never seen.

use crate::optimizer::data::rng::Rng;
use crate::optimizer::data::task::{Operator, DEFAULT_OPERATORS};
use crate::optimizer::exec::agent::{Components, Outcome};

/// Ways of working that change an agent's procedure on any task. Task-agnostic by design:
/// none names a task, a domain or an example.
pub const STRATEGIES: [&str; 6] = [
    "Work step by step. Before giving the answer, write out your reasoning: go through the input piece by piece and note every fact that matters for the question. Then give the final answer, in the required format, at the end.",
    "First list every relevant piece of information from the input, one per line. Then combine them one at a time, writing down each intermediate result. Give the final answer only after that, in the required format.",
    "Before answering, restate in one sentence exactly what is asked, including any condition that limits what counts. Then solve it, and make sure the answer responds to that restated question. End with the final answer in the required format.",
    "After reaching an answer, check it: re-read the input, verify each step of your work, and correct any mistake. Then give the final answer in the required format at the end.",
    "Break the problem into smaller parts, solve each part separately, then combine the parts into the final answer, given in the required format at the end.",
    "Answer directly and concisely: give only the final answer, in exactly the required format, with no explanation.",
];

/// The library strategy of `variant` for a component whose text is `current`: the first at
/// or after `variant` (cyclically) that the text does not already hold verbatim, so that a
/// move never spends a candidate on a strategy the component states already (a `seed`
/// move accepted earlier in the subset, a crossover of two children); `None` when it holds
/// all of them.
pub fn strategy_for(current: &str, variant: usize) -> Option<&'static str> {
    (0..STRATEGIES.len())
        .map(|k| STRATEGIES[(variant + k) % STRATEGIES.len()])
        .find(|s| !current.contains(s))
}

/// Edit hints rotated over rewrite candidates: adding is one kind of change among several.
pub const EDIT_HINTS: [&str; 6] = [
    "Add a short numbered step-by-step procedure the assistant must follow on every task of this kind.",
    "Simplify: remove every sentence that does not change what the assistant does, and state the rest plainly.",
    "Replace the instructions with a new version written from scratch around the single most important fix.",
    "Add one or two precise rules that prevent the mistakes found in the review.",
    "Add a check the assistant must do before giving its final answer.",
    "Make the instructions clearer and stricter about how to work and how to format the final answer.",
];

/// Hints of the merge candidates written by the optimizer.
pub const MERGE_HINTS: [&str; 3] = [
    "Keep every rule or procedure that helped, state each once, and prefer the general form of a rule over a specific one.",
    "Write the result as one short numbered procedure that includes the useful steps of every version.",
    "Start from the version that scored best and add only what another version did better.",
];

/// The note added to a candidate under which the agent's replies were often cut off at
/// its token limit (see [`cut_off_often`]): a small agent told to reason writes until it
/// is cut off, and a reply cut off before its final answer scores nothing, however good
/// the procedure. Stated when it is not needed, the note can make the agent skip the
/// reasoning that helped, so it is added only on that evidence. The limit is
/// the task's own setting, so the note carries no knowledge of a task: about half a word
/// per token of the limit, rounded down to tens (at least ten).
pub fn reply_budget_note(max_new_tokens: usize) -> String {
    let words = (max_new_tokens / 2 / 10 * 10).max(10);
    format!(
        "Keep the whole reply under about {words} words: a longer reply is cut off before its end. Reason in short lines and always finish with the final answer."
    )
}

/// Whether replies cut off at the token limit were frequent enough, `cut_off` of `scored`,
/// to try the candidate again with the reply budget stated: at least two, and at least a
/// quarter of those scored.
pub fn cut_off_often(cut_off: usize, scored: usize) -> bool {
    cut_off >= 2 && 4 * cut_off >= scored
}

/// `c` with the reply-budget note for `max_new_tokens` appended to component `name`,
/// unless it is there already; the note, for the guard's exemption.
pub fn with_reply_budget(
    c: Components,
    name: &str,
    max_new_tokens: Option<usize>,
) -> (Components, Option<String>) {
    let Some(tokens) = max_new_tokens else {
        return (c, None);
    };
    let note = reply_budget_note(tokens);
    if c.get(name).is_some_and(|t| t.contains(&note)) {
        return (c, Some(note));
    }
    (append_section(&c, name, &note), Some(note))
}

/// The heading of an appended worked-examples block.
pub const DEMOS_HEADING: &str = "Worked examples (solved correctly):";

/// The heading of an appended procedure.
pub const PROCEDURE_HEADING: &str = "Procedure:";

/// Every text of the optimizer's own: its words are never content of the training set.
pub fn own_vocabulary() -> String {
    let mut s: Vec<&str> = Vec::new();
    s.extend(STRATEGIES);
    s.extend(EDIT_HINTS);
    s.extend(MERGE_HINTS);
    s.push(DEMOS_HEADING);
    s.push(PROCEDURE_HEADING);
    s.push(crate::optimizer::methods::format::FORMAT_SENTENCES);
    s.join("\n")
}

/// The operator of candidate `position` (counted over a subset's iterations) and the index
/// of its variant (which strategy, hint or demo draw).
pub fn schedule(operators: &[Operator], position: usize, offset: usize) -> (Operator, usize) {
    let ops = if operators.is_empty() {
        &DEFAULT_OPERATORS[..]
    } else {
        operators
    };
    (ops[position % ops.len()], position / ops.len() + offset)
}

/// `base` with `addition` appended as a section of `name` (separated by a blank line).
pub fn append_section(base: &Components, name: &str, addition: &str) -> Components {
    let mut out = base.clone();
    let current = out.get(name).map(String::as_str).unwrap_or("").trim_end();
    let joined = if current.is_empty() {
        addition.trim().to_string()
    } else {
        format!("{current}\n\n{}", addition.trim())
    };
    out.insert(name.to_string(), joined);
    out
}

/// A worked-examples block from the agent's own solved trajectories: up to `count`
/// successes, each the success whose input is most similar to one of the failures (in a
/// seeded order of failures), then the remaining successes by similarity to all failures.
/// Lines of one block are separated by single newlines, so the block stays one section.
/// A reply that stopped at the agent's token limit is never shown, even when the answer
/// taken from it was right: it ends before its answer, and the agent would learn to write
/// replies that do. `None` when there is no success to show.
pub fn demos_block(
    outcomes: &[Outcome],
    count: usize,
    max_chars: usize,
    seed: u64,
    variant: usize,
) -> Option<String> {
    let successes: Vec<&Outcome> = outcomes
        .iter()
        .filter(|o| {
            o.solved() && o.error.is_none() && !o.cut_off && !o.trajectory.trim().is_empty()
        })
        .collect();
    if successes.is_empty() || count == 0 {
        return None;
    }
    let mut failures: Vec<&Outcome> = outcomes.iter().filter(|o| !o.solved()).collect();
    let mut rng = Rng::derived(seed, &format!("demos/{variant}"));
    rng.shuffle(&mut failures);
    let words: Vec<std::collections::HashSet<String>> =
        successes.iter().map(|o| word_set(&o.input)).collect();
    let mut chosen: Vec<usize> = Vec::new();
    for f in &failures {
        if chosen.len() == count {
            break;
        }
        let fw = word_set(&f.input);
        let best = (0..successes.len())
            .filter(|i| !chosen.contains(i) && jaccard(&fw, &words[*i]) > 0.0)
            .max_by(|&a, &b| {
                jaccard(&fw, &words[a])
                    .total_cmp(&jaccard(&fw, &words[b]))
                    .then(b.cmp(&a))
            });
        if let Some(b) = best {
            chosen.push(b);
        }
    }
    let mut rest: Vec<usize> = (0..successes.len())
        .filter(|i| !chosen.contains(i))
        .collect();
    rng.shuffle(&mut rest);
    for i in rest {
        if chosen.len() == count {
            break;
        }
        chosen.push(i);
    }
    let mut block = String::from(DEMOS_HEADING);
    for (n, &i) in chosen.iter().enumerate() {
        let o = successes[i];
        let input = one_line(&truncate_informative(&o.input, max_chars / 2));
        let reply = one_line(&truncate_informative(&o.trajectory, max_chars));
        block.push_str(&format!(
            "\nExample {}. Input: {input}\nResponse: {reply}",
            n + 1
        ));
    }
    Some(block)
}

/// A numbered procedure out of an induction reply: the `<procedure>` block when there is
/// one, else the reply's numbered lines. `None` when fewer than two steps are found.
pub fn parse_procedure(reply: &str) -> Option<String> {
    let open = find_ascii_ci(reply, "<procedure>");
    let close = find_ascii_ci(reply, "</procedure>");
    let body = match (open, close) {
        (Some(a), Some(b)) if b > a => &reply[a + "<procedure>".len()..b],
        (Some(a), None) => &reply[a + "<procedure>".len()..],
        _ => reply,
    };
    let steps: Vec<String> = body
        .lines()
        .map(str::trim)
        .filter_map(|l| {
            let digits = l.chars().take_while(char::is_ascii_digit).count();
            let rest = l[digits..].trim_start();
            let rest = rest
                .strip_prefix('.')
                .or_else(|| rest.strip_prefix(')'))
                .or_else(|| rest.strip_prefix(':'))?;
            // "1. ..." (the format's own example) is no step.
            let text = rest.trim();
            (digits > 0 && text.chars().any(char::is_alphanumeric)).then(|| text.to_string())
        })
        .take(8)
        .collect();
    if steps.len() < 2 {
        return None;
    }
    let mut s = String::from(PROCEDURE_HEADING);
    for (i, step) in steps.iter().enumerate() {
        s.push_str(&format!("\n{}. {step}", i + 1));
    }
    Some(s)
}

/// Section crossover: the first child's text, then every section (blank-line separated) of
/// the other children that is in neither the first child nor the parent.
pub fn crossover(children: &[&Components], parent: &Components, names: &[String]) -> Components {
    let Some(first) = children.first() else {
        return parent.clone();
    };
    let mut out = (*first).clone();
    for name in names {
        let parent_sections = sections(parent.get(name).map(String::as_str).unwrap_or(""));
        let mut text = out.get(name).cloned().unwrap_or_default();
        let mut have = sections(&text);
        for child in &children[1..] {
            for s in sections(child.get(name).map(String::as_str).unwrap_or("")) {
                if !have.contains(&s) && !parent_sections.contains(&s) {
                    text = format!("{}\n\n{s}", text.trim_end());
                    have.push(s);
                }
            }
        }
        out.insert(name.clone(), text.trim().to_string());
    }
    out
}

/// Whether `candidate` keeps every section of `parent` and adds at least one: a move that
/// appended text (a library strategy, worked examples, the answer format, a procedure), whose
/// added sections can be carried onto another component.
pub fn adds_sections(parent: &Components, candidate: &Components, names: &[String]) -> bool {
    let mut added = false;
    for name in names {
        let before = sections(parent.get(name).map(String::as_str).unwrap_or(""));
        let after = sections(candidate.get(name).map(String::as_str).unwrap_or(""));
        if !before.iter().all(|s| after.contains(s)) {
            return false;
        }
        added |= after.iter().any(|s| !before.contains(s));
    }
    added
}

/// The blank-line separated sections of `text`, trimmed.
fn sections(text: &str) -> Vec<String> {
    text.split("\n\n")
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_string)
        .collect()
}

/// The byte offset of the first case-insensitive match of the ASCII `needle` in `haystack`
/// (always a character boundary of `haystack`, unlike offsets into a lower-cased copy).
fn find_ascii_ci(haystack: &str, needle: &str) -> Option<usize> {
    let (h, n) = (haystack.as_bytes(), needle.as_bytes());
    (0..=h.len().checked_sub(n.len())?).find(|&i| h[i..i + n.len()].eq_ignore_ascii_case(n))
}

fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
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

/// The distinct lower-cased words (two characters or more) of `s`.
pub(crate) fn word_set(s: &str) -> std::collections::HashSet<String> {
    s.split(|c: char| !c.is_alphanumeric())
        .filter(|w| w.len() > 1)
        .map(str::to_lowercase)
        .collect()
}

/// Word overlap of two sets: shared words over all words (0 for two empty sets).
pub(crate) fn jaccard(
    a: &std::collections::HashSet<String>,
    b: &std::collections::HashSet<String>,
) -> f64 {
    let inter = a.intersection(b).count() as f64;
    let union = a.union(b).count() as f64;
    if union == 0.0 {
        0.0
    } else {
        inter / union
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn outcome(input: &str, solved: bool, reply: &str) -> Outcome {
        Outcome {
            id: input.into(),
            score: if solved { 1.0 } else { 0.0 },
            answer: String::new(),
            expected: String::new(),
            input: input.into(),
            trajectory: reply.into(),
            error: None,
            feedback: None,
            cut_off: false,
        }
    }

    #[test]
    fn a_repair_needs_two_cut_off_replies_and_a_quarter_of_those_scored() {
        assert!(!cut_off_often(0, 0));
        assert!(!cut_off_often(1, 1));
        assert!(cut_off_often(2, 8));
        assert!(!cut_off_often(2, 9));
        assert!(cut_off_often(5, 6));
    }

    #[test]
    fn the_reply_budget_note_follows_the_limit_and_is_added_once() {
        assert!(reply_budget_note(200).contains("about 100 words"));
        assert!(reply_budget_note(165).contains("about 80 words"));
        assert!(reply_budget_note(8).contains("about 10 words"));
        let c: Components = [("p".to_string(), "Work step by step.".to_string())].into();
        let (once, note) = with_reply_budget(c.clone(), "p", Some(160));
        let note = note.unwrap();
        assert_eq!(once["p"], format!("Work step by step.\n\n{note}"));
        let (twice, _) = with_reply_budget(once.clone(), "p", Some(160));
        assert_eq!(twice, once, "the note is not added a second time");
        assert_eq!(with_reply_budget(c.clone(), "p", None), (c, None));
    }

    #[test]
    fn strategy_for_skips_strategies_the_component_states() {
        assert_eq!(strategy_for("Answer.", 0), Some(STRATEGIES[0]));
        assert_eq!(
            strategy_for("Answer.", STRATEGIES.len() + 2),
            Some(STRATEGIES[2])
        );
        let with_first = format!("Answer.\n\n{}", STRATEGIES[0]);
        assert_eq!(strategy_for(&with_first, 0), Some(STRATEGIES[1]));
        assert_eq!(strategy_for(&with_first, 1), Some(STRATEGIES[1]));
        let last = STRATEGIES.len() - 1;
        let with_last = format!("Answer.\n\n{}", STRATEGIES[last]);
        assert_eq!(
            strategy_for(&with_last, last),
            Some(STRATEGIES[0]),
            "wraps around"
        );
        assert_eq!(strategy_for(&STRATEGIES.join("\n\n"), 3), None);
    }

    #[test]
    fn schedule_rotates_operators_and_variants() {
        let ops = [Operator::Seed, Operator::Rewrite];
        assert_eq!(schedule(&ops, 0, 0), (Operator::Seed, 0));
        assert_eq!(schedule(&ops, 1, 0), (Operator::Rewrite, 0));
        assert_eq!(schedule(&ops, 2, 0), (Operator::Seed, 1));
        assert_eq!(schedule(&ops, 3, 5), (Operator::Rewrite, 6));
        assert_eq!(schedule(&[], 0, 0).0, DEFAULT_OPERATORS[0]);
    }

    #[test]
    fn demos_pick_successes_similar_to_failures() {
        let o = vec![
            outcome("red apples and blue cars", false, "3"),
            outcome("green trees and tall hills", true, "two trees"),
            outcome("red apples and green pears", true, "one apple, so 1"),
            outcome("dogs", false, "0"),
        ];
        let block = demos_block(&o, 1, 400, 0, 0).unwrap();
        assert!(block.starts_with(DEMOS_HEADING), "{block}");
        assert!(block.contains("red apples and green pears"), "{block}");
        assert!(!block.contains("\n\n"), "one section: {block}");
        let two = demos_block(&o, 2, 400, 0, 0).unwrap();
        assert!(two.contains("Example 2."), "{two}");
        assert!(demos_block(&o[..1], 2, 400, 0, 0).is_none());
        // A solved reply cut off at the token limit is no worked example.
        let mut cut = o.clone();
        cut[2].cut_off = true;
        let block = demos_block(&cut, 2, 400, 0, 0).unwrap();
        assert!(!block.contains("red apples and green pears"), "{block}");
        assert!(block.contains("green trees and tall hills"), "{block}");
        cut[1].cut_off = true;
        assert!(demos_block(&cut, 2, 400, 0, 0).is_none());
    }

    #[test]
    fn procedure_is_parsed_from_tags_or_numbered_lines() {
        let p =
            parse_procedure("Sure.\n<procedure>\n1. Read it.\n2) Count.\n3: Answer.\n</procedure>")
                .unwrap();
        assert_eq!(
            p,
            format!("{PROCEDURE_HEADING}\n1. Read it.\n2. Count.\n3. Answer.")
        );
        let p = parse_procedure("They did:\n1. list things\n2. add them\nthat's it").unwrap();
        assert!(p.ends_with("2. add them"), "{p}");
        assert!(parse_procedure("1. only one step").is_none());
        // The format's own example is not a procedure.
        assert!(parse_procedure("<procedure>\n1. ...\n2. ...\n</procedure>").is_none());
        // Characters whose lower case is longer must not break the slicing.
        assert!(parse_procedure("İİ <PROCEDURE>\n1. a b\n2. c d").is_some());
    }

    #[test]
    fn crossover_keeps_sections_of_both_children() {
        let names = vec!["p".to_string()];
        let parent = Components::from([("p".to_string(), "Answer.".to_string())]);
        let a = Components::from([("p".to_string(), "Answer.\n\nRule A.".to_string())]);
        let b = Components::from([("p".to_string(), "Answer.\n\nRule B.\n\nRule A.".to_string())]);
        let c = crossover(&[&a, &b], &parent, &names);
        assert_eq!(c["p"], "Answer.\n\nRule A.\n\nRule B.");
        let appended = append_section(&parent, "p", "Procedure:\n1. x");
        assert_eq!(appended["p"], "Answer.\n\nProcedure:\n1. x");
    }

    #[test]
    fn only_candidates_that_keep_their_parent_add_sections() {
        let names = vec!["p".to_string()];
        let one = |t: &str| Components::from([("p".to_string(), t.to_string())]);
        let parent = one("Answer.\n\nRule A.");
        assert!(adds_sections(
            &parent,
            &one("Answer.\n\nRule A.\n\nStrategy S."),
            &names
        ));
        // A rewrite that drops a section, and a candidate that adds nothing, do not.
        assert!(!adds_sections(
            &parent,
            &one("Answer well.\n\nStrategy S."),
            &names
        ));
        assert!(!adds_sections(&parent, &parent, &names));
        // Carried onto another component: only what the candidate added to its parent.
        let near_miss = one("Answer.\n\nRule A.\n\nStrategy S.");
        let best = one("Answer.\n\nRule B.");
        assert_eq!(
            crossover(&[&best, &near_miss], &parent, &names)["p"],
            "Answer.\n\nRule B.\n\nStrategy S."
        );
    }
}
