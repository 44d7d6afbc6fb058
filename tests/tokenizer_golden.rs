//! Token ids from GGUF metadata must equal llama.cpp's.
//!
//! Each `tests/fixtures/tokenizer/<alias>.json` holds texts and the ids llama.cpp gave for
//! them (`tokenize(text, add_bos=False, special=True)`). The model file is read from
//! `tests/fixtures/` when it is a committed test model, else from the models directory
//! (`$FGO_MODELS_DIR` or `models/`); a missing model fails the test.

mod common;

use std::path::{Path, PathBuf};
use std::time::Instant;

use fgo::engine::gguf::read_metadata;
use fgo::engine::tokenizer::{TokenKind, Tokenizer};
use serde::Deserialize;

#[derive(Debug, Deserialize)]
struct Fixture {
    alias: String,
    file: String,
    reference: String,
    cases: Vec<Case>,
}

#[derive(Debug, Deserialize)]
struct Case {
    text: String,
    ids: Vec<u32>,
}

fn fixtures_dir() -> PathBuf {
    common::crate_root().join("tests/fixtures")
}

fn load_fixture(path: &Path) -> Fixture {
    let text = std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn model_file(fixture: &Fixture) -> PathBuf {
    let committed = fixtures_dir().join(&fixture.file);
    if committed.is_file() {
        committed
    } else {
        common::model_path_for(&fixture.alias, &fixture.file)
    }
}

/// Checks every case of one fixture, returning a report of the failures.
fn check(fixture_path: &Path) -> Result<String, String> {
    let fixture = load_fixture(fixture_path);
    let model = model_file(&fixture);
    let started = Instant::now();
    let metadata = read_metadata(&model).map_err(|e| format!("{}: {e}", fixture.alias))?;
    let read_time = started.elapsed();
    let started = Instant::now();
    let tokenizer =
        Tokenizer::from_gguf(&metadata).map_err(|e| format!("{}: {e}", fixture.alias))?;
    let build_time = started.elapsed();

    let mut failures = Vec::new();
    let started = Instant::now();
    for case in &fixture.cases {
        let got = match tokenizer.encode(&case.text) {
            Ok(ids) => ids,
            Err(e) => {
                failures.push(format!("  {:?}: encode failed: {e}", case.text));
                continue;
            }
        };
        if got != case.ids {
            failures.push(format!(
                "  {:?}\n    expected {:?}\n    got      {:?}",
                case.text, case.ids, got
            ));
        }
        // User-defined tokens (Gemma's "\n", runs of spaces) are plain text and round-trip.
        let has_control = got.iter().any(|&id| {
            matches!(
                tokenizer.token_kind(id),
                Some(TokenKind::Control | TokenKind::Unknown)
            )
        });
        if !has_control {
            match tokenizer.decode(&got) {
                Ok(text) if text == case.text => {}
                Ok(text) => failures.push(format!(
                    "  {:?}: decode(encode(text)) gave {text:?}",
                    case.text
                )),
                Err(e) => failures.push(format!("  {:?}: decode failed: {e}", case.text)),
            }
        }
    }
    let encode_time = started.elapsed();
    let summary = format!(
        "{}: {}/{} cases match ({}; metadata {read_time:.2?}, build {build_time:.2?}, encode all {encode_time:.2?})",
        fixture.alias,
        fixture.cases.len() - failures.len().min(fixture.cases.len()),
        fixture.cases.len(),
        fixture.reference,
    );
    if failures.is_empty() {
        Ok(summary)
    } else {
        Err(format!("{summary}\n{}", failures.join("\n")))
    }
}

#[test]
fn token_ids_match_llama_cpp() {
    // Extra fixture sets (same format) can be checked with FGO_TOKENIZER_FIXTURES_DIR.
    let dir = std::env::var_os("FGO_TOKENIZER_FIXTURES_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| fixtures_dir().join("tokenizer"));
    let mut paths: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("cannot list {}: {e}", dir.display()))
        .map(|entry| entry.expect("directory entry").path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "json"))
        .collect();
    paths.sort();
    assert!(!paths.is_empty(), "no fixtures in {}", dir.display());

    let mut errors = Vec::new();
    for path in &paths {
        match check(path) {
            Ok(summary) => eprintln!("{summary}"),
            Err(report) => errors.push(report),
        }
    }
    assert!(errors.is_empty(), "mismatches:\n{}", errors.join("\n\n"));
}
