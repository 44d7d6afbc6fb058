//! The constant-answer baseline: the score of one fixed answer given to every example.
//!
//! On a task with few distinct answers (yes/no, a label set) a component can gain many
//! points only by moving the agent towards the answer that is most often right, without
//! the agent solving anything more. The report sets every score beside this baseline so
//! that a reader can tell such a shift from a real improvement. The answer is chosen on
//! train only (the expected answer that scores best when given to every training
//! example), then scored on val and test, so the baseline does not peek at what it is
//! compared on.
//!
//! Computed for the built-in metrics, which are pure functions of a prediction and an
//! example; not for `regex` (the expected answers are patterns, not answers) nor for a
//! `command` metric (an outside program, not run beyond the agent's own replies).

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

use crate::optimizer::data::dataset::Example;
use crate::optimizer::data::metric;
use crate::optimizer::data::task::MetricSpec;

/// The most distinct training answers tried as the constant (the most frequent first), so
/// that a task with free-form answers costs at most this many passes over the data.
pub const MAX_CANDIDATES: usize = 64;

/// One answer given to every example, and its mean score on each split.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ConstantBaseline {
    /// The answer, as the metric receives it.
    pub answer: String,
    pub train: f64,
    pub val: Option<f64>,
    pub test: Option<f64>,
}

/// The best constant answer on `train`, scored on every split; `None` for a metric it does
/// not apply to (see the module docs) or an empty train split.
pub fn constant_baseline(
    spec: &MetricSpec,
    train: &[Example],
    val: &[Example],
    test: &[Example],
) -> Option<ConstantBaseline> {
    if matches!(spec, MetricSpec::Regex | MetricSpec::Command { .. }) || train.is_empty() {
        return None;
    }
    let mut best: Option<(String, f64)> = None;
    for answer in candidates(spec, train) {
        let score = mean(spec, &answer, train);
        // Candidates come most frequent first: a tie keeps the more frequent answer.
        if best.as_ref().is_none_or(|(_, b)| score > *b) {
            best = Some((answer, score));
        }
    }
    let (answer, train_score) = best?;
    Some(ConstantBaseline {
        train: train_score,
        val: (!val.is_empty()).then(|| mean(spec, &answer, val)),
        test: (!test.is_empty()).then(|| mean(spec, &answer, test)),
        answer,
    })
}

/// The distinct constants to try, most frequent in train first (first seen on a tie), at
/// most [`MAX_CANDIDATES`]; for a `choice` metric the labels no training answer names are
/// tried after them.
fn candidates(spec: &MetricSpec, train: &[Example]) -> Vec<String> {
    let mut counts: HashMap<String, (usize, usize)> = HashMap::new();
    for (i, ex) in train.iter().enumerate() {
        let entry = counts.entry(as_prediction(spec, ex)).or_insert((0, i));
        entry.0 += 1;
    }
    let mut ranked: Vec<(String, (usize, usize))> = counts.into_iter().collect();
    ranked.sort_by(|a, b| b.1 .0.cmp(&a.1 .0).then(a.1 .1.cmp(&b.1 .1)));
    let mut out: Vec<String> = ranked
        .into_iter()
        .take(MAX_CANDIDATES)
        .map(|(a, _)| a)
        .collect();
    if let MetricSpec::Choice { labels } = spec {
        for l in labels {
            if !out.contains(l) {
                out.push(l.clone());
            }
        }
    }
    out
}

/// An example's expected answer written as a prediction the metric accepts: for a
/// `json_field` metric, an object holding the field.
fn as_prediction(spec: &MetricSpec, ex: &Example) -> String {
    match spec {
        MetricSpec::JsonField { field } => {
            serde_json::json!({ field.as_str(): metric::expected_field(ex, field) }).to_string()
        }
        _ => ex.answer_text(),
    }
}

fn mean(spec: &MetricSpec, answer: &str, examples: &[Example]) -> f64 {
    let total: f64 = examples
        .iter()
        .map(|ex| metric::score(spec, answer, ex).unwrap_or(0.0))
        .sum();
    total / examples.len() as f64
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;
    use std::path::PathBuf;

    fn ex(i: usize, answer: Value) -> Example {
        let mut fields = serde_json::Map::new();
        fields.insert("answer".into(), answer.clone());
        Example {
            id: format!("e{i}"),
            file: PathBuf::from("data.jsonl"),
            line: i + 1,
            fields,
            answer,
        }
    }

    fn exact() -> MetricSpec {
        MetricSpec::Exact {
            ignore_case: true,
            collapse_whitespace: true,
            strip_punctuation: false,
        }
    }

    fn labels(xs: &[&str]) -> Vec<Example> {
        xs.iter()
            .enumerate()
            .map(|(i, a)| ex(i, Value::String((*a).into())))
            .collect()
    }

    #[test]
    fn the_answer_is_chosen_on_train_and_scored_on_each_split() {
        let train = labels(&["No", "Yes", "No", "No"]);
        let val = labels(&["Yes", "Yes"]);
        let test = labels(&["No", "Yes", "Yes", "Yes", "No"]);
        let b = constant_baseline(&exact(), &train, &val, &test).unwrap();
        assert_eq!(b.answer, "No");
        assert_eq!(b.train, 0.75);
        assert_eq!(b.val, Some(0.0));
        assert_eq!(b.test, Some(0.4));
    }

    #[test]
    fn a_tie_on_train_keeps_the_answer_seen_first() {
        let train = labels(&["b", "a", "a", "b"]);
        let b = constant_baseline(&exact(), &train, &[], &[]).unwrap();
        assert_eq!(b.answer, "b");
        assert_eq!((b.val, b.test), (None, None));
    }

    #[test]
    fn numbers_score_through_the_numeric_metric() {
        let train: Vec<Example> = [3, 7, 7, 2]
            .iter()
            .enumerate()
            .map(|(i, n)| ex(i, Value::from(*n)))
            .collect();
        let b = constant_baseline(&MetricSpec::Numeric { tolerance: 0.0 }, &train, &[], &train)
            .unwrap();
        assert_eq!(b.answer, "7");
        assert_eq!(b.test, Some(0.5));
    }

    #[test]
    fn json_field_answers_are_written_as_objects() {
        let train = vec![
            ex(0, serde_json::json!({"label": "spam", "other": 1})),
            ex(1, serde_json::json!({"label": "spam"})),
            ex(2, serde_json::json!({"label": "ham"})),
        ];
        let spec = MetricSpec::JsonField {
            field: "label".into(),
        };
        let b = constant_baseline(&spec, &train, &[], &[]).unwrap();
        assert_eq!(b.answer, r#"{"label":"spam"}"#);
        assert!((b.train - 2.0 / 3.0).abs() < 1e-12);
    }

    #[test]
    fn choice_tries_labels_no_training_answer_names() {
        let train = labels(&["x", "x"]);
        let spec = MetricSpec::Choice {
            labels: vec!["x".into(), "y".into()],
        };
        let test = labels(&["y", "y", "x"]);
        let b = constant_baseline(&spec, &train, &[], &test).unwrap();
        assert_eq!(b.answer, "x");
        assert!((b.test.unwrap() - 1.0 / 3.0).abs() < 1e-12);
        assert_eq!(candidates(&spec, &train), vec!["x", "y"]);
    }

    #[test]
    fn patterns_outside_programs_and_empty_train_give_none() {
        let train = labels(&["a"]);
        assert!(constant_baseline(&MetricSpec::Regex, &train, &[], &[]).is_none());
        let cmd = MetricSpec::Command {
            command: vec!["false".into()],
            timeout_s: 1.0,
            max_output_bytes: 1024,
        };
        assert!(constant_baseline(&cmd, &train, &[], &[]).is_none());
        assert!(constant_baseline(&exact(), &[], &[], &[]).is_none());
    }

    #[test]
    fn free_form_answers_try_at_most_the_cap() {
        let train: Vec<Example> = (0..200).map(|i| ex(i, Value::from(i as i64))).collect();
        assert_eq!(
            candidates(&MetricSpec::TokenF1, &train).len(),
            MAX_CANDIDATES
        );
    }
}
