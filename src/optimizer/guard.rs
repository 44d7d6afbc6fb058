//! Rejecting candidates that leak training answers or copy training examples.
//!
//! Small optimizers "improve" a prompt by pasting the training tasks with their answers,
//! which raises the training score and nothing else. A candidate is rejected when
//! - it contains, verbatim (at word boundaries), the expected answer of a training example
//!   that the initial component did not contain (answers shorter than `leak_min_chars`,
//!   such as small numbers, are too common to judge this way), or
//! - it shares a run of `copy_ngram_words` consecutive words with a training input that the
//!   initial component does not share; runs found in three or more inputs are boilerplate
//!   of the task and do not count.

use std::collections::{HashMap, HashSet};

use serde::{Deserialize, Serialize};

use crate::optimizer::dataset::Example;
use crate::optimizer::template::value_text;

/// Why a candidate was rejected.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Rejection {
    /// It contains a training answer.
    Leak { answer: String, example: String },
    /// It copies a training input.
    Copy { words: String, example: String },
}

impl Rejection {
    /// A sentence for prompts and reports.
    pub fn describe(&self) -> String {
        match self {
            Rejection::Leak { answer, .. } => {
                format!("it contained the answer `{answer}` of a training task")
            }
            Rejection::Copy { words, .. } => format!("it copied a training task (\"{words}\")"),
        }
    }
}

/// The leak and copy checker for one training set.
pub struct Guard {
    answers: Vec<(String, String)>,
    ngrams: HashMap<String, String>,
    n: usize,
    initial_lower: String,
    initial_ngrams: HashSet<String>,
}

impl Guard {
    /// Builds the checker from the training examples and the initial component text(s).
    pub fn new(
        train: &[Example],
        answer_field: &str,
        initial: &str,
        leak_min_chars: usize,
        n: usize,
    ) -> Self {
        let initial_lower = initial.to_lowercase();
        let mut answers = Vec::new();
        let mut counts: HashMap<String, (usize, String)> = HashMap::new();
        for ex in train {
            let a = ex.answer_text().trim().to_lowercase();
            if a.chars().count() >= leak_min_chars && !contains_word(&initial_lower, &a) {
                answers.push((a, ex.id.clone()));
            }
            let mut seen = HashSet::new();
            for (k, v) in &ex.fields {
                if k == answer_field {
                    continue;
                }
                for g in word_ngrams(&value_text(v), n) {
                    if seen.insert(g.clone()) {
                        counts.entry(g).or_insert((0, ex.id.clone())).0 += 1;
                    }
                }
            }
        }
        let ngrams = counts
            .into_iter()
            .filter(|(_, (c, _))| *c < 3)
            .map(|(g, (_, id))| (g, id))
            .collect();
        Self {
            answers,
            ngrams,
            n,
            initial_ngrams: word_ngrams(initial, n).into_iter().collect(),
            initial_lower,
        }
    }

    /// `Some(reason)` when `candidate` must be rejected.
    pub fn check(&self, candidate: &str) -> Option<Rejection> {
        let lower = candidate.to_lowercase();
        for (a, id) in &self.answers {
            if contains_word(&lower, a) && !contains_word(&self.initial_lower, a) {
                return Some(Rejection::Leak {
                    answer: a.clone(),
                    example: id.clone(),
                });
            }
        }
        for g in word_ngrams(candidate, self.n) {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::optimizer::dataset::tests::examples;

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
        ]);
        Guard::new(
            &train,
            "answer",
            "Answer with a number, e.g. 2024-03-08 style dates.",
            3,
            6,
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
        let g2 = Guard::new(&train, "answer", "Give dates.", 3, 6);
        assert!(matches!(
            g2.check("Example answer: 2024-03-08."),
            Some(Rejection::Leak { .. })
        ));
        assert!(g2.check("Give dates as YYYY-MM-DD.").is_none());
        // Short answers are not judged alone.
        assert!(g.check("Count to 5 carefully.").is_none());
    }

    #[test]
    fn copies_are_rejected() {
        let g = guard();
        let r = g.check("For example: Tom has three red apples and two green pears -> 5");
        assert!(matches!(r, Some(Rejection::Copy { .. })), "{r:?}");
        assert!(g
            .check("List each fruit with its count, then add them up.")
            .is_none());
    }
}
