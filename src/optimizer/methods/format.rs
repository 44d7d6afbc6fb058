//! The answer format, read from the training answers: the `format` move states it.
//!
//! A component that never says what the answer must look like leaves a small agent to
//! guess (a sentence instead of a bare value, a date in words, fields in another order),
//! and an exact metric scores every guess 0. The expected answers of the training examples
//! show the format; this module abstracts it without knowing the task:
//!
//! - a **label set** when the answers are a few recurring words (`True` / `False`, a letter
//!   choice): "one of: ...";
//! - otherwise a **shape**: each answer is cut into runs of digits, runs of letters, spaces
//!   and single punctuation marks; the most common sequence of kinds (held by at least half
//!   of the answers) is kept, with the runs that are the same in all of them written out and
//!   the others replaced by placeholders (`<4 digits>`, `<number>`, `<word>`, `<capitals>`).
//!
//! The section also shows one training answer of that shape as an example; like worked
//! examples it comes from train only and is exempt from the leak guard.

use std::collections::BTreeMap;

use crate::optimizer::exec::agent::Outcome;

/// The heading of an appended answer-format section.
pub const FORMAT_HEADING: &str = "Answer format:";

/// The fixed wording of the section (the optimizer's own words, never training content).
pub const FORMAT_SENTENCES: &str = "end your reply with the final answer alone on its last line. The answer is one of: written exactly in this form: For example: <number> <word> <capitals> digits";

/// Distinct answers up to which recurring word answers are shown as a label set.
const MAX_LABELS: usize = 6;

/// Runs in a shape beyond which the answers are free text and have no useful shape.
const MAX_RUNS: usize = 24;

/// The kind of one run of an answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Kind {
    Digits,
    Letters,
    Space,
    Mark(char),
}

/// `answer` cut into runs: (kind, text).
fn runs(answer: &str) -> Vec<(Kind, String)> {
    let mut out: Vec<(Kind, String)> = Vec::new();
    for c in answer.trim().chars() {
        let kind = if c.is_ascii_digit() {
            Kind::Digits
        } else if c.is_alphabetic() {
            Kind::Letters
        } else if c.is_whitespace() {
            Kind::Space
        } else {
            Kind::Mark(c)
        };
        match out.last_mut() {
            Some((k, text)) if *k == kind && !matches!(kind, Kind::Mark(_)) => {
                if kind != Kind::Space {
                    text.push(c);
                }
            }
            _ => out.push((
                kind,
                if kind == Kind::Space {
                    " ".into()
                } else {
                    c.into()
                },
            )),
        }
    }
    out
}

/// The placeholder of a run position whose texts differ across answers.
fn placeholder(kind: Kind, texts: &[&str]) -> String {
    let lengths: Vec<usize> = texts.iter().map(|t| t.chars().count()).collect();
    let same_length = lengths.windows(2).all(|w| w[0] == w[1]);
    match kind {
        Kind::Digits if same_length && lengths[0] > 1 => format!("<{} digits>", lengths[0]),
        Kind::Digits => "<number>".into(),
        Kind::Letters if texts.iter().all(|t| t.chars().all(char::is_uppercase)) => {
            "<capitals>".into()
        }
        Kind::Letters => "<word>".into(),
        Kind::Space => " ".into(),
        Kind::Mark(c) => c.to_string(),
    }
}

/// The answer format of `expected` (the training answers) as a section to append, or
/// `None` when the answers have no common shape (free text, or too few answers).
pub fn format_section(expected: &[&str]) -> Option<String> {
    let answers: Vec<&str> = expected
        .iter()
        .map(|a| a.trim())
        .filter(|a| !a.is_empty())
        .collect();
    if answers.len() < 2 {
        return None;
    }
    if let Some(labels) = label_set(&answers) {
        return Some(format!(
            "{FORMAT_HEADING} end your reply with the final answer alone on its last line. \
             The answer is one of: {}.",
            labels.join(", ")
        ));
    }
    let cut: Vec<Vec<(Kind, String)>> = answers.iter().map(|a| runs(a)).collect();
    let mut groups: BTreeMap<Vec<Kind>, Vec<usize>> = BTreeMap::new();
    for (i, r) in cut.iter().enumerate() {
        groups
            .entry(r.iter().map(|(k, _)| *k).collect())
            .or_default()
            .push(i);
    }
    // The most common sequence of kinds; ties to the one first seen.
    let (kinds, members) = groups
        .into_iter()
        .max_by(|a, b| a.1.len().cmp(&b.1.len()).then(b.1[0].cmp(&a.1[0])))?;
    if members.len() * 2 < answers.len() || kinds.is_empty() || kinds.len() > MAX_RUNS {
        return None;
    }
    let mut shape = String::new();
    let mut variable = 0usize;
    for (p, &kind) in kinds.iter().enumerate() {
        let texts: Vec<&str> = members.iter().map(|&i| cut[i][p].1.as_str()).collect();
        if texts.iter().all(|t| *t == texts[0]) && members.len() > 1 {
            shape.push_str(texts[0]);
        } else {
            variable += 1;
            shape.push_str(&placeholder(kind, &texts));
        }
    }
    if variable == 0 {
        // Every answer the same: a constant is not a format worth stating.
        return None;
    }
    let example = answers[members[0]];
    Some(format!(
        "{FORMAT_HEADING} end your reply with the final answer alone on its last line, \
         written exactly in this form: {shape}\nFor example: {example}"
    ))
}

/// The distinct answers, most frequent first, when they are a few recurring words.
fn label_set(answers: &[&str]) -> Option<Vec<String>> {
    let mut count: BTreeMap<&str, usize> = BTreeMap::new();
    for a in answers {
        *count.entry(a).or_default() += 1;
    }
    let wordy = count
        .keys()
        .all(|a| a.chars().any(char::is_alphabetic) && a.split_whitespace().count() <= 3);
    if !wordy || count.len() < 2 || count.len() > MAX_LABELS || answers.len() < 2 * count.len() {
        return None;
    }
    let mut labels: Vec<(&str, usize)> = count.into_iter().collect();
    labels.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(b.0)));
    Some(labels.into_iter().map(|(a, _)| a.to_string()).collect())
}

/// The format section for a subset's outcomes.
pub fn format_of(outcomes: &[Outcome]) -> Option<String> {
    let expected: Vec<&str> = outcomes.iter().map(|o| o.expected.as_str()).collect();
    format_section(&expected)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_keep_their_names_and_values_become_placeholders() {
        let s = format_section(&[
            "item=KG-324;qty=4;city=Turin",
            "item=AK-704;qty=3;city=Krakow",
            "item=HD-926;qty=12;city=Leeds",
            "item=ZZ-100;qty=2;city=New York",
        ])
        .unwrap();
        assert!(
            s.contains("item=<capitals>-<3 digits>;qty=<number>;city=<word>"),
            "{s}"
        );
        assert!(s.starts_with(FORMAT_HEADING), "{s}");
        assert!(
            s.contains("For example: item=KG-324;qty=4;city=Turin"),
            "{s}"
        );
    }

    #[test]
    fn fixed_width_digits_are_counted() {
        let s = format_section(&["2024-07-07", "2024-01-30", "2022-11-26"]).unwrap();
        assert!(s.contains("form: <4 digits>-<2 digits>-<2 digits>"), "{s}");
    }

    #[test]
    fn recurring_words_are_a_label_set() {
        let s = format_section(&["True", "False", "False", "True", "True"]).unwrap();
        assert!(s.contains("one of: True, False."), "{s}");
        // Numbers are never listed as labels: they get a shape.
        let n = format_section(&["3", "12", "3", "7", "3", "12"]).unwrap();
        assert!(n.contains("form: <number>"), "{n}");
    }

    #[test]
    fn free_text_and_constants_have_no_format() {
        assert!(
            format_section(&["a cat", "the dog sat on a mat", "yes, because it rains"]).is_none()
        );
        assert!(format_section(&["ok", "ok", "ok", "ok", "ok", "ok", "ok", "ok"]).is_none());
        assert!(format_section(&["42", "42"]).is_none());
        assert!(format_section(&["7"]).is_none());
        assert!(format_section(&[]).is_none());
    }

    #[test]
    fn odd_characters_do_not_break_the_cut() {
        let s = format_section(&["İx-1", "Ǆy-22", "ßz-3"]).unwrap();
        assert!(s.contains("<word>-<number>"), "{s}");
    }
}
