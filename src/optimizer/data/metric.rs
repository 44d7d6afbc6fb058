//! Metrics: how an extracted answer is scored against the expected one, in `[0, 1]`.
//!
//! An example counts as solved when its score is 1 (within 1e-9). [`check_applicable`]
//! verifies before any model is loaded that every expected answer suits the metric (a number
//! for `numeric`, a label for `choice`, a valid pattern for `regex`, ...), naming the file and
//! line of the first that does not.

use regex::Regex;
use serde_json::Value;

use crate::error::{Error, Result};
use crate::optimizer::data::dataset::Example;
use crate::optimizer::data::task::MetricSpec;
use crate::optimizer::data::template::value_text;

/// Checks that every example's expected answer suits the metric.
pub fn check_applicable<'a>(
    spec: &MetricSpec,
    examples: impl Iterator<Item = &'a Example>,
) -> Result<()> {
    for ex in examples {
        let expected = ex.answer_text();
        match spec {
            MetricSpec::Numeric { .. } if parse_number(&expected).is_none() => {
                return Err(ex.err(format!(
                    "metric `numeric`: expected answer `{expected}` is not a number"
                )));
            }
            MetricSpec::Choice { labels } if !labels.iter().any(|l| norm(l) == norm(&expected)) => {
                return Err(ex.err(format!(
                    "metric `choice`: expected answer `{expected}` is not one of the labels"
                )));
            }
            MetricSpec::Regex => {
                Regex::new(&format!("^(?:{expected})$")).map_err(|e| {
                    ex.err(format!(
                        "metric `regex`: expected answer is not a valid regex: {e}"
                    ))
                })?;
            }
            MetricSpec::JsonField { field } => {
                if let Value::Object(o) = &ex.answer {
                    if !o.contains_key(field) {
                        return Err(ex.err(format!(
                            "metric `json_field`: expected answer has no field `{field}`"
                        )));
                    }
                }
            }
            _ => {}
        }
    }
    Ok(())
}

/// Scores one prediction; a failing metric command is an error the caller records as a
/// failure of that example.
pub fn score(spec: &MetricSpec, prediction: &str, ex: &Example) -> Result<f64> {
    score_with_feedback(spec, prediction, ex).map(|(s, _)| s)
}

/// Scores one prediction, with the metric's feedback on it where it gives one (a command
/// metric's optional `feedback` string: why the answer is wrong).
pub fn score_with_feedback(
    spec: &MetricSpec,
    prediction: &str,
    ex: &Example,
) -> Result<(f64, Option<String>)> {
    let mut feedback = None;
    let score = score_inner(spec, prediction, ex, &mut feedback)?;
    Ok((score, feedback))
}

fn score_inner(
    spec: &MetricSpec,
    prediction: &str,
    ex: &Example,
    feedback: &mut Option<String>,
) -> Result<f64> {
    let expected = ex.answer_text();
    Ok(match spec {
        MetricSpec::Exact {
            ignore_case,
            collapse_whitespace,
            strip_punctuation,
        } => {
            let n = |s: &str| normalize(s, *ignore_case, *collapse_whitespace, *strip_punctuation);
            bool_score(n(prediction) == n(&expected))
        }
        MetricSpec::Contains { ignore_case } => {
            let (p, e) = if *ignore_case {
                (prediction.to_lowercase(), expected.to_lowercase())
            } else {
                (prediction.to_string(), expected.clone())
            };
            bool_score(p.contains(e.trim()))
        }
        MetricSpec::Regex => match Regex::new(&format!("^(?:{expected})$")) {
            Ok(re) => bool_score(re.is_match(prediction.trim())),
            Err(_) => 0.0,
        },
        MetricSpec::Numeric { tolerance } => {
            match (last_number(prediction), parse_number(&expected)) {
                (Some(p), Some(e)) => bool_score((p - e).abs() <= *tolerance + 1e-12),
                _ => 0.0,
            }
        }
        MetricSpec::Choice { labels } => {
            let p = norm(prediction);
            let named: Vec<&String> = labels.iter().filter(|l| word_in(&p, &norm(l))).collect();
            let exact = labels.iter().find(|l| norm(l) == p);
            let chosen = exact.or(if named.len() == 1 {
                named.first().copied()
            } else {
                None
            });
            bool_score(chosen.is_some_and(|l| norm(l) == norm(&expected)))
        }
        MetricSpec::TokenF1 => token_f1(prediction, &expected),
        MetricSpec::JsonField { field } => {
            let want = expected_field(ex, field);
            let got = first_json_object(prediction).and_then(|o| o.get(field).cloned());
            bool_score(
                got.is_some_and(|g| g == want || value_text(&g).trim() == value_text(&want).trim()),
            )
        }
        MetricSpec::Command {
            command,
            timeout_s,
            max_output_bytes,
        } => {
            let input = serde_json::json!({"prediction": prediction, "example": Value::Object(ex.fields.clone())});
            let out = crate::optimizer::data::command::run_json_command(
                command,
                &input,
                crate::optimizer::data::command::Limits::of(*timeout_s, *max_output_bytes),
            )?;
            let s = out
                .get("score")
                .and_then(Value::as_f64)
                .ok_or_else(|| Error::Command {
                    command: command.join(" "),
                    reason: "output has no numeric `score`".into(),
                })?;
            *feedback = out
                .get("feedback")
                .map(value_text)
                .filter(|f| !f.trim().is_empty());
            s.clamp(0.0, 1.0)
        }
    })
}

/// The expected value of a `json_field` metric: the answer's `field`, or the answer itself
/// when it is not an object.
pub fn expected_field(ex: &Example, field: &str) -> Value {
    match &ex.answer {
        Value::Object(o) => o.get(field).cloned().unwrap_or(Value::Null),
        other => other.clone(),
    }
}

fn bool_score(b: bool) -> f64 {
    if b {
        1.0
    } else {
        0.0
    }
}

fn normalize(s: &str, ignore_case: bool, collapse_ws: bool, strip_punct: bool) -> String {
    let mut t: String = if strip_punct {
        s.chars().filter(|c| !c.is_ascii_punctuation()).collect()
    } else {
        s.to_string()
    };
    if ignore_case {
        t = t.to_lowercase();
    }
    if collapse_ws {
        t = t.split_whitespace().collect::<Vec<_>>().join(" ");
    }
    t
}

fn norm(s: &str) -> String {
    normalize(s, true, true, true)
}

fn word_in(haystack: &str, word: &str) -> bool {
    !word.is_empty()
        && haystack
            .split_whitespace()
            .collect::<Vec<_>>()
            .windows(word.split_whitespace().count().max(1))
            .any(|w| w.join(" ") == word)
}

/// Parses a number, allowing thousands separators and surrounding whitespace.
pub fn parse_number(s: &str) -> Option<f64> {
    s.trim()
        .replace(',', "")
        .parse::<f64>()
        .ok()
        .filter(|v| v.is_finite())
}

/// The last number in `s` (what a model writes last is usually its answer).
pub fn last_number(s: &str) -> Option<f64> {
    static_number_re()
        .find_iter(s)
        .last()
        .and_then(|m| parse_number(m.as_str()))
}

fn static_number_re() -> &'static Regex {
    static RE: std::sync::OnceLock<Regex> = std::sync::OnceLock::new();
    RE.get_or_init(|| Regex::new(r"-?\d[\d,]*(?:\.\d+)?").unwrap_or_else(|_| unreachable!()))
}

fn token_f1(pred: &str, expected: &str) -> f64 {
    let p: Vec<String> = norm(pred).split_whitespace().map(String::from).collect();
    let e: Vec<String> = norm(expected)
        .split_whitespace()
        .map(String::from)
        .collect();
    if p.is_empty() || e.is_empty() {
        return bool_score(p == e);
    }
    let mut remaining = e.clone();
    let mut common = 0usize;
    for t in &p {
        if let Some(i) = remaining.iter().position(|x| x == t) {
            remaining.swap_remove(i);
            common += 1;
        }
    }
    if common == 0 {
        return 0.0;
    }
    let precision = common as f64 / p.len() as f64;
    let recall = common as f64 / e.len() as f64;
    2.0 * precision * recall / (precision + recall)
}

/// The first parsable JSON object in `s` (models wrap JSON in prose and fences).
pub fn first_json_object(s: &str) -> Option<serde_json::Map<String, Value>> {
    for (start, _) in s.match_indices('{') {
        let mut de = serde_json::Deserializer::from_str(&s[start..]).into_iter::<Value>();
        if let Some(Ok(Value::Object(o))) = de.next() {
            return Some(o);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::optimizer::data::dataset::tests::examples;

    fn sc(spec: &MetricSpec, pred: &str, ans: &str) -> f64 {
        score(spec, pred, &examples(&[("q", ans)])[0]).unwrap()
    }

    #[test]
    fn metrics_score_as_documented() {
        let exact = MetricSpec::Exact {
            ignore_case: true,
            collapse_whitespace: true,
            strip_punctuation: false,
        };
        assert_eq!(sc(&exact, "  Paris ", "paris"), 1.0);
        assert_eq!(sc(&exact, "Paris.", "paris"), 0.0);
        let num = MetricSpec::Numeric { tolerance: 0.0 };
        assert_eq!(sc(&num, "3 apples + 4 = 7", "7"), 1.0);
        assert_eq!(sc(&num, "1,200", "1200"), 1.0);
        assert_eq!(sc(&num, "none", "7"), 0.0);
        let choice = MetricSpec::Choice {
            labels: vec!["yes".into(), "no".into()],
        };
        assert_eq!(sc(&choice, "The answer is yes.", "yes"), 1.0);
        assert_eq!(sc(&choice, "yes or no", "yes"), 0.0);
        assert!((sc(&MetricSpec::TokenF1, "the red cat", "red cat") - 0.8).abs() < 1e-9);
        let jf = MetricSpec::JsonField {
            field: "date".into(),
        };
        assert_eq!(
            sc(&jf, "Here: {\"date\": \"2024-01-02\"}", "2024-01-02"),
            1.0
        );
        assert_eq!(sc(&MetricSpec::Regex, "abc123", "abc\\d+"), 1.0);
        assert_eq!(
            sc(
                &MetricSpec::Contains { ignore_case: true },
                "It is PARIS",
                "paris"
            ),
            1.0
        );
    }

    #[test]
    fn inapplicable_metric_names_the_line() {
        let ex = examples(&[("q", "7"), ("q", "seven")]);
        let err = check_applicable(&MetricSpec::Numeric { tolerance: 0.0 }, ex.iter())
            .unwrap_err()
            .to_string();
        assert!(err.contains("mem.jsonl:2"), "{err}");
        let choice = MetricSpec::Choice {
            labels: vec!["7".into()],
        };
        assert!(check_applicable(&choice, ex.iter()).is_err());
    }
}
