//! Rejecting candidates that leak or copy training data, or that are degenerate.
//!
//! Small optimizers "improve" a prompt by pasting the training tasks with their answers,
//! by writing rules about the particular items of the examples they saw, or by looping on
//! one sentence until the token limit. Each raises the training score or the length and
//! nothing else. A candidate is rejected when
//! - it contains, verbatim (at word boundaries), the expected answer of a training example
//!   that neither the initial component nor the task's own texts contain (an answer the
//!   task's author wrote into the task, such as the labels a template names in "answer Yes
//!   or No", is the task's output vocabulary, not one item's answer); answers shorter than
//!   `leak_min_chars` (small numbers, one-letter labels) are too common to judge alone and
//!   are caught only in an answer-giving context (`= 7`, `is 7`, `answer: 7`);
//! - it shares a run of `copy_ngram_words` consecutive words with a training input that the
//!   initial component does not share (runs found in three or more inputs are boilerplate);
//! - it introduces more than `max_content_words` *content terms*: words of the training
//!   inputs (item names, people, places) or numbers of three or more digits that occur in
//!   fewer than half of the inputs, and in none of the allowed texts (the initial
//!   components, the task's description and templates, the optimizer's own instructions)
//!   and are not common English function words;
//! - it repeats one sentence three or more times (a repetition loop), or
//! - it grew by more than `max_added_chars` characters over the initial component.
//!
//! Text blocks the run itself put into a component (worked examples taken from the agent's
//! own training trajectories) are exempt: they are removed, verbatim, before the checks.

use std::collections::{HashMap, HashSet};

use regex::Regex;
use serde::{Deserialize, Serialize};

use crate::optimizer::data::dataset::Example;
use crate::optimizer::data::template::value_text;

/// Common English words that never count as content terms.
const COMMON_WORDS: &str = include_str!("guard_words.txt");

/// Why a candidate was rejected.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Rejection {
    /// It contains a training answer.
    Leak { answer: String, example: String },
    /// It copies a training input.
    Copy { words: String, example: String },
    /// It names content of the training inputs (items, people, numbers).
    Content { terms: Vec<String> },
    /// It repeats one sentence over and over.
    Repetition { sentence: String, times: usize },
    /// It grew far past the initial component.
    Grown { from_chars: usize, to_chars: usize },
    /// The reply it came from was cut off at the token limit.
    CutOff,
}

impl Rejection {
    /// The short status recorded for the candidate.
    pub fn status(&self) -> &'static str {
        match self {
            Rejection::Leak { .. } => "leak",
            Rejection::Copy { .. } => "copy",
            Rejection::Content { .. } => "content",
            Rejection::Repetition { .. } | Rejection::Grown { .. } | Rejection::CutOff => {
                "degenerate"
            }
        }
    }

    /// A sentence for reports (may quote the offending text).
    pub fn describe(&self) -> String {
        match self {
            Rejection::Leak { answer, .. } => {
                format!("it contained the answer `{answer}` of a training task")
            }
            Rejection::Copy { words, .. } => format!("it copied a training task (\"{words}\")"),
            Rejection::Content { terms } => format!(
                "it named content of the training tasks ({})",
                terms.join(", ")
            ),
            Rejection::Repetition { sentence, times } => {
                format!("it repeated one sentence {times} times (\"{sentence}\")")
            }
            Rejection::Grown {
                from_chars,
                to_chars,
            } => format!("it grew from {from_chars} to {to_chars} characters"),
            Rejection::CutOff => "the reply was cut off at the token limit".into(),
        }
    }

    /// A sentence fit for later optimizer prompts: it never quotes training data.
    pub fn for_prompt(&self) -> String {
        match self {
            Rejection::Leak { .. } => "rejected: it contained the answer of a training task".into(),
            Rejection::Copy { .. } => "rejected: it copied a training task".into(),
            Rejection::Content { .. } => {
                "rejected: it named particular items of the training tasks instead of general rules"
                    .into()
            }
            Rejection::Repetition { .. } => "rejected: it repeated itself".into(),
            Rejection::Grown { .. } => "rejected: it was far too long".into(),
            Rejection::CutOff => "rejected: it was cut off".into(),
        }
    }

    /// Whether the rejected text must never be shown to the optimizer again.
    pub fn withholds_text(&self) -> bool {
        matches!(
            self,
            Rejection::Leak { .. } | Rejection::Copy { .. } | Rejection::Content { .. }
        )
    }
}

/// The guard's thresholds.
#[derive(Debug, Clone, PartialEq)]
pub struct GuardConfig {
    pub leak_min_chars: usize,
    pub copy_ngram_words: usize,
    pub max_content_words: usize,
    pub max_added_chars: usize,
}

/// The checker for one training set.
pub struct Guard {
    answers: Vec<(String, String)>,
    short_answers: Vec<(Regex, String, String)>,
    ngrams: HashMap<String, String>,
    n: usize,
    initial_lower: String,
    initial_ngrams: HashSet<String>,
    /// Content terms of the training inputs (stemmed), with one example id each.
    content: HashMap<String, String>,
    allowed: HashSet<String>,
    initial_chars: usize,
    cfg: GuardConfig,
}

impl Guard {
    /// Builds the checker from the training examples, the initial component text(s), the
    /// task's own texts (what its author wrote besides the components: its name,
    /// description, templates and answer labels), and further texts whose words are allowed
    /// (the optimizer's own instructions).
    pub fn new(
        train: &[Example],
        answer_field: &str,
        initial: &str,
        task_texts: &str,
        allowed_texts: &str,
        cfg: GuardConfig,
    ) -> Self {
        let n = cfg.copy_ngram_words;
        let initial_lower = initial.to_lowercase();
        let task_lower = task_texts.to_lowercase();
        let mut answers = Vec::new();
        let mut short: HashMap<String, String> = HashMap::new();
        let mut counts: HashMap<String, (usize, String)> = HashMap::new();
        let mut term_counts: HashMap<String, (usize, String)> = HashMap::new();
        for ex in train {
            let a = ex.answer_text().trim().to_lowercase();
            if !a.is_empty()
                && !contains_word(&initial_lower, &a)
                && !contains_word(&task_lower, &a)
            {
                if a.chars().count() >= cfg.leak_min_chars {
                    answers.push((a, ex.id.clone()));
                } else {
                    short.entry(a).or_insert_with(|| ex.id.clone());
                }
            }
            let mut seen = HashSet::new();
            let mut seen_terms = HashSet::new();
            for (k, v) in &ex.fields {
                if k == answer_field {
                    continue;
                }
                let text = value_text(v);
                for g in word_ngrams(&text, n) {
                    if seen.insert(g.clone()) {
                        counts.entry(g).or_insert((0, ex.id.clone())).0 += 1;
                    }
                }
                for t in terms(&text) {
                    if seen_terms.insert(t.clone()) {
                        term_counts.entry(t).or_insert((0, ex.id.clone())).0 += 1;
                    }
                }
            }
        }
        let ngrams = counts
            .into_iter()
            .filter(|(_, (c, _))| *c < 3)
            .map(|(g, (_, id))| (g, id))
            .collect();
        let mut allowed: HashSet<String> = terms(COMMON_WORDS).collect();
        allowed.extend(terms(initial));
        allowed.extend(terms(task_texts));
        allowed.extend(terms(allowed_texts));
        // Terms found in half the inputs or more are the task's own vocabulary; with one or
        // two inputs there is no telling, and every term counts.
        let limit = if train.len() <= 2 {
            usize::MAX
        } else {
            train.len().div_ceil(2)
        };
        let content = term_counts
            .into_iter()
            .filter(|(t, (c, _))| *c < limit && !allowed.contains(t))
            .map(|(t, (_, id))| (t, id))
            .collect();
        let mut short_answers: Vec<(Regex, String, String)> = short
            .into_iter()
            .filter_map(|(a, id)| {
                let pattern = format!(
                    r"(?i)(?:=|\bis|\bare|\bequals|\banswer\s*:|\banswer is|\bresult\s*:|\btotal\s*:|->|→)\s*{}(?:[^\p{{L}}\p{{N}}]|$)",
                    regex::escape(&a)
                );
                Regex::new(&pattern).ok().map(|re| (re, a, id))
            })
            .collect();
        short_answers.sort_by(|x, y| x.1.cmp(&y.1));
        Self {
            answers,
            short_answers,
            ngrams,
            n,
            initial_ngrams: word_ngrams(initial, n).into_iter().collect(),
            initial_lower,
            content,
            allowed,
            initial_chars: initial.chars().count(),
            cfg,
        }
    }

    /// `Some(reason)` when `candidate` must be rejected.
    pub fn check(&self, candidate: &str) -> Option<Rejection> {
        self.check_with_exempt(candidate, &[])
    }

    /// Like [`Guard::check`], with the `exempt` blocks (the run's own worked examples)
    /// removed from the candidate first, wherever they occur verbatim.
    pub fn check_with_exempt(&self, candidate: &str, exempt: &[String]) -> Option<Rejection> {
        let mut text = candidate.to_string();
        for block in exempt.iter().filter(|b| !b.trim().is_empty()) {
            text = text.replace(block.as_str(), "");
        }
        let chars = text.trim().chars().count();
        if chars > self.initial_chars + self.cfg.max_added_chars {
            return Some(Rejection::Grown {
                from_chars: self.initial_chars,
                to_chars: chars,
            });
        }
        if let Some((sentence, times)) = repeated_sentence(&text) {
            return Some(Rejection::Repetition { sentence, times });
        }
        let lower = text.to_lowercase();
        for (a, id) in &self.answers {
            if contains_word(&lower, a) {
                return Some(Rejection::Leak {
                    answer: a.clone(),
                    example: id.clone(),
                });
            }
        }
        for g in word_ngrams(&text, self.n) {
            if self.initial_ngrams.contains(&g) {
                continue;
            }
            if let Some(id) = self.ngrams.get(&g) {
                return Some(Rejection::Copy {
                    words: g,
                    example: id.clone(),
                });
            }
        }
        for (re, a, id) in &self.short_answers {
            if re.is_match(&text) && !re.is_match(&self.initial_lower) {
                return Some(Rejection::Leak {
                    answer: a.clone(),
                    example: id.clone(),
                });
            }
        }
        let mut found: Vec<String> = Vec::new();
        for t in terms(&text) {
            if self.content.contains_key(&t) && !self.allowed.contains(&t) && !found.contains(&t) {
                found.push(t);
            }
        }
        if found.len() > self.cfg.max_content_words {
            found.sort();
            return Some(Rejection::Content { terms: found });
        }
        None
    }
}

/// Whether `needle` occurs in `haystack` with no letter or digit right before or after it.
fn contains_word(haystack: &str, needle: &str) -> bool {
    if needle.is_empty() {
        return false;
    }
    haystack.match_indices(needle).any(|(i, _)| {
        let before = haystack[..i].chars().next_back();
        let after = haystack[i + needle.len()..].chars().next();
        !before.is_some_and(char::is_alphanumeric) && !after.is_some_and(char::is_alphanumeric)
    })
}

/// Lower-cased runs of `n` consecutive words (punctuation dropped).
fn word_ngrams(text: &str, n: usize) -> Vec<String> {
    let words: Vec<String> = text
        .split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
        .map(str::to_lowercase)
        .collect();
    if n == 0 || words.len() < n {
        return Vec::new();
    }
    words.windows(n).map(|w| w.join(" ")).collect()
}

/// The terms of `text` that can carry content: words of three or more letters (lower-cased,
/// a plural `s` dropped) and numbers of three or more digits.
fn terms(text: &str) -> impl Iterator<Item = String> + '_ {
    text.split(|c: char| !c.is_alphanumeric()).filter_map(|w| {
        if w.chars().all(|c| c.is_ascii_digit()) {
            return (w.len() >= 3).then(|| w.to_string());
        }
        if !w.chars().all(char::is_alphabetic) || w.chars().count() < 3 {
            return None;
        }
        let lower = w.to_lowercase();
        Some(match lower.strip_suffix('s') {
            Some(stem) if stem.chars().count() >= 3 && !stem.ends_with('s') => stem.to_string(),
            _ => lower,
        })
    })
}

/// A sentence of four or more words that occurs three or more times, with its count.
fn repeated_sentence(text: &str) -> Option<(String, usize)> {
    let mut counts: HashMap<String, usize> = HashMap::new();
    let mut order = Vec::new();
    for s in text.split(['.', '!', '?', '\n']) {
        let words: Vec<String> = s.split_whitespace().map(str::to_lowercase).collect();
        if words.len() < 4 {
            continue;
        }
        let key = words.join(" ");
        let c = counts.entry(key.clone()).or_insert(0);
        *c += 1;
        if *c == 1 {
            order.push(key);
        }
    }
    order.into_iter().find(|k| counts[k] >= 3).map(|k| {
        (
            k.chars().take(80).collect(),
            counts.get(&k).copied().unwrap_or(0),
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::optimizer::data::dataset::tests::examples;

    fn cfg() -> GuardConfig {
        GuardConfig {
            leak_min_chars: 3,
            copy_ngram_words: 6,
            max_content_words: 1,
            max_added_chars: 400,
        }
    }

    fn guard() -> Guard {
        let train = examples(&[
            (
                "Tom has three red apples and two green pears in his basket today",
                "5",
            ),
            (
                "The meeting was moved from March 3 to the following Friday",
                "2024-03-08",
            ),
            ("Ana bought four onions and a lemon", "4"),
        ]);
        Guard::new(
            &train,
            "answer",
            "Answer with a number, e.g. 2024-03-08 style dates.",
            "",
            "",
            cfg(),
        )
    }

    #[test]
    fn leaks_are_rejected_unless_initially_present() {
        let g = guard();
        assert!(
            g.check("Answer 2024-03-08 for that one.").is_none(),
            "present in initial"
        );
        let train = examples(&[("q", "2024-03-08")]);
        let g2 = Guard::new(&train, "answer", "Give dates.", "", "", cfg());
        assert!(matches!(
            g2.check("Example answer: 2024-03-08."),
            Some(Rejection::Leak { .. })
        ));
        assert!(g2.check("Give dates as YYYY-MM-DD.").is_none());
    }

    #[test]
    fn short_answers_are_caught_in_context_only() {
        let g = guard();
        // A one-digit answer alone is too common to judge.
        assert!(g.check("Count to 5 carefully.").is_none());
        for leaky in [
            "If unsure, the answer is 5.",
            "For instance 2 + 3 = 5.",
            "Answer: 4 when there are several.",
        ] {
            assert!(
                matches!(g.check(leaky), Some(Rejection::Leak { .. })),
                "{leaky}"
            );
        }
        // A number that is not a training answer in the same context passes.
        assert!(g.check("The answer is 9 only if ...").is_none());
    }

    #[test]
    fn copies_are_rejected() {
        let g = guard();
        let r = g.check("For example: Tom has three red apples and two green pears -> 5");
        assert!(matches!(r, Some(Rejection::Copy { .. })), "{r:?}");
        assert!(g
            .check("List each thing with its count, then add them up.")
            .is_none());
    }

    #[test]
    fn items_of_training_inputs_are_rejected() {
        let g = guard();
        let r = g.check("Count the onions, then the apples, before adding the pears.");
        match r {
            Some(Rejection::Content { terms }) => {
                assert!(terms.contains(&"onion".to_string()), "{terms:?}");
                assert!(terms.contains(&"apple".to_string()), "{terms:?}");
            }
            other => panic!("expected a content rejection, got {other:?}"),
        }
        // One incidental term is tolerated; allowed texts never count.
        assert!(g.check("Count every item, such as a lemon.").is_none());
        let train = examples(&[("Tom has apples and pears and onions", "3")]);
        let g2 = Guard::new(&train, "answer", "Count.", "", "apples pears onions", cfg());
        assert!(g2.check("Count apples, pears and onions.").is_none());
    }

    #[test]
    fn labels_the_task_names_are_not_leaks() {
        let train = examples(&[
            ("Take 3 steps left, then 3 steps right.", "Yes"),
            ("Take 2 steps forward.", "No"),
            ("Take 1 step back, then 2 steps forward.", "No"),
            ("The code word of the box is marigold.", "marigold"),
        ]);
        let template = "{{question}}\nEnd your reply with Yes or No on its own line.";
        let g = Guard::new(
            &train,
            "answer",
            "Answer the question.",
            template,
            "",
            cfg(),
        );
        for fine in [
            "Add up the moves; if they cancel out, the answer is Yes, otherwise No.",
            "Answer: Yes only when every move is undone.",
        ] {
            assert!(g.check(fine).is_none(), "{fine}");
        }
        // An answer the task's texts do not name is still a leak.
        assert!(matches!(
            g.check("When unsure, say marigold."),
            Some(Rejection::Leak { .. })
        ));
        // Without the template the same labels, given as answers, are leaks.
        let bare = Guard::new(&train, "answer", "Answer the question.", "", "", cfg());
        assert!(matches!(
            bare.check("Answer: Yes only when every move is undone."),
            Some(Rejection::Leak { .. })
        ));
    }

    #[test]
    fn degenerate_candidates_are_rejected() {
        let g = guard();
        let looped = "Always return to the starting point after completing. ".repeat(5);
        assert!(matches!(
            g.check(&looped),
            Some(Rejection::Repetition { times: 5, .. })
        ));
        let long = "Think about the problem in detail. ".repeat(3) + &"x".repeat(600);
        assert!(matches!(g.check(&long), Some(Rejection::Grown { .. })));
        // Exempt blocks do not count towards growth, copies or leaks.
        let demo = "Example: Tom has three red apples and two green pears in his basket today -> 5"
            .to_string()
            + &" ok".repeat(200);
        let with_demo = format!("Answer carefully.\n{demo}");
        assert!(g.check(&with_demo).is_some());
        assert!(g.check_with_exempt(&with_demo, &[demo]).is_none());
    }
}
