//! Helpers shared by integration tests.
#![allow(dead_code)] // each test binary uses a different subset

use std::path::PathBuf;

/// The path of an installed model file; fails the test, naming the fetch command, when the
/// file is missing (tests never skip silently).
pub fn model_path(file_name: &str) -> PathBuf {
    let dir = std::env::var_os("FGO_MODELS_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("models"));
    let path = dir.join(file_name);
    assert!(
        path.is_file(),
        "model file {} is missing: run `scripts/fetch-models.sh all` first",
        path.display()
    );
    path
}
