//! What a run's report must say about how a remote model's numbers were obtained.
//!
//! A report is assembled from the call ledger, which carries token counts but not whether
//! a server measured them. The HTTP backend records here, per model name, where its token
//! counts and context length come from and whether its replies reported cached prompt
//! tokens; [`crate::optimizer::report::Accounting`] copies these notes so that the report
//! says "not reported" or "estimate" instead of presenting a 0 or a guess as measured.
//! Local models measure everything and record nothing here.

use std::collections::BTreeMap;
use std::sync::{Mutex, OnceLock};

/// What is known about one remote model in this process.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct ModelNotes {
    /// Where `count_tokens` answers come from.
    counting: String,
    /// Where the context length comes from.
    context: String,
    /// Replies that reported cached prompt tokens, and replies that did not.
    cached_reported: usize,
    cached_missing: usize,
    /// Replies without `usage`.
    usage_missing: usize,
    /// Endpoints that did not answer the probe at start (the run went on without them).
    down_at_start: Vec<String>,
}

fn registry() -> &'static Mutex<BTreeMap<String, ModelNotes>> {
    static NOTES: OnceLock<Mutex<BTreeMap<String, ModelNotes>>> = OnceLock::new();
    NOTES.get_or_init(|| Mutex::new(BTreeMap::new()))
}

fn with(name: &str, f: impl FnOnce(&mut ModelNotes)) {
    let mut notes = registry().lock().unwrap_or_else(|p| p.into_inner());
    f(notes.entry(name.to_string()).or_default());
}

/// Records how `name` counts tokens and where its context length comes from.
pub fn set_sources(name: &str, counting: &str, context: &str) {
    with(name, |n| {
        n.counting = counting.to_string();
        n.context = context.to_string();
    });
}

/// Records the endpoints of `name` that did not answer at start.
pub fn set_down_at_start(name: &str, endpoints: &[String]) {
    with(name, |n| n.down_at_start = endpoints.to_vec());
}

/// Records one reply of `name`.
pub fn saw_reply(name: &str, cached_reported: bool, usage_reported: bool) {
    with(name, |n| {
        if cached_reported {
            n.cached_reported += 1;
        } else {
            n.cached_missing += 1;
        }
        if !usage_reported {
            n.usage_missing += 1;
        }
    });
}

/// Every remote model's notes, as sentences, by model name.
pub fn snapshot() -> BTreeMap<String, Vec<String>> {
    let notes = registry().lock().unwrap_or_else(|p| p.into_inner());
    notes
        .iter()
        .map(|(name, n)| (name.clone(), sentences(n)))
        .collect()
}

/// The sentence about cached prompt tokens that [`snapshot`] writes when a server did not
/// report them (what a summary looks for).
pub const CACHED_NOT_REPORTED: &str = "cached prompt tokens: not reported by the server";

fn sentences(n: &ModelNotes) -> Vec<String> {
    let mut out = Vec::new();
    let cached = match (n.cached_reported, n.cached_missing) {
        (_, 0) if n.cached_reported > 0 => "cached prompt tokens: reported by the server".into(),
        (0, 0) => "cached prompt tokens: not known (no live call in this session; replayed calls \
                   keep the counts recorded)"
            .into(),
        (0, _) => format!(
            "{CACHED_NOT_REPORTED} (the `cached` column counts 0 for its calls, not a measurement)"
        ),
        (with, without) => format!(
            "cached prompt tokens: reported in {with} replies, not reported in {without} \
             (counted as 0 there)"
        ),
    };
    out.push(cached);
    if n.usage_missing > 0 {
        out.push(format!(
            "{} replies had no `usage`: their tokens count as 0",
            n.usage_missing
        ));
    }
    if !n.down_at_start.is_empty() {
        out.push(format!(
            "endpoints down at start (tried last, as after any failure): {}",
            n.down_at_start.join(", ")
        ));
    }
    if !n.counting.is_empty() {
        out.push(n.counting.clone());
    }
    if !n.context.is_empty() {
        out.push(n.context.clone());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn notes_say_whether_cached_tokens_were_measured() {
        let name = "notes-test@http://127.0.0.1:9";
        set_sources(
            name,
            "token counts: estimates",
            "context length: 4096 (assumed)",
        );
        let first = &snapshot()[name];
        assert!(first[0].contains("not known"), "{first:?}");
        saw_reply(name, false, true);
        let notes = &snapshot()[name];
        assert!(notes[0].starts_with(CACHED_NOT_REPORTED), "{notes:?}");
        assert!(notes.iter().any(|s| s.contains("estimates")));
        saw_reply(name, true, false);
        let notes = &snapshot()[name];
        assert!(notes[0].contains("reported in 1 replies"), "{notes:?}");
        assert!(notes[1].contains("no `usage`"), "{notes:?}");
    }
}
