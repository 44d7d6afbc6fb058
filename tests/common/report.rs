//! Reading a run's report.json in the end-to-end tests.

use serde_json::Value;

/// The report's calls and tokens per method, stage and role, as
/// `[method, stage, role, calls, prompt_tokens, completion_tokens]` rows: what must not
/// change with what ran beside the run (cached tokens and times, which may, are left out).
pub fn token_rows(report: &Value) -> Vec<Value> {
    report["accounting"]["rows"]
        .as_array()
        .expect("the report's accounting rows")
        .iter()
        .map(|t| {
            serde_json::json!([
                t["method"],
                t["stage"],
                t["role"],
                t["calls"],
                t["prompt_tokens"],
                t["completion_tokens"]
            ])
        })
        .collect()
}
