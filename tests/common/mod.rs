//! Helpers shared by integration tests.
#![allow(dead_code)] // each test binary uses a different subset

use std::path::{Path, PathBuf};

/// The crate root, where `models/` and `tests/fixtures/` live.
pub fn crate_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The directory models are installed in: `$FGO_MODELS_DIR`, else `<crate root>/models`.
pub fn models_dir() -> PathBuf {
    std::env::var_os("FGO_MODELS_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| crate_root().join("models"))
}

/// The path of an installed model file. A missing file fails the test with the command that
/// fetches it (tests never skip silently); the alias is looked up in the manifest.
pub fn model_path(file_name: &str) -> PathBuf {
    locate(file_name, alias_of(file_name).as_deref())
}

/// [`model_path`] for a model whose manifest alias the caller knows.
pub fn model_path_for(alias: &str, file_name: &str) -> PathBuf {
    locate(file_name, Some(alias))
}

fn locate(file_name: &str, alias: Option<&str>) -> PathBuf {
    let path = models_dir().join(file_name);
    if !path.is_file() {
        panic!(
            "model file {} is missing: run `scripts/fetch-models.sh {}` \
             (or set FGO_MODELS_DIR to where the models are)",
            path.display(),
            alias.unwrap_or("<alias>"),
        );
    }
    path
}

/// The manifest alias of a model file, looked up in the models directory's manifest and
/// then in the crate's.
fn alias_of(file_name: &str) -> Option<String> {
    [models_dir(), crate_root().join("models")]
        .iter()
        .find_map(|dir| alias_in_manifest(&dir.join("manifest.tsv"), file_name))
}

fn alias_in_manifest(manifest: &Path, file_name: &str) -> Option<String> {
    let text = std::fs::read_to_string(manifest).ok()?;
    text.lines()
        .filter(|line| !line.starts_with('#'))
        .find_map(|line| {
            let mut columns = line.split('\t');
            let alias = columns.next()?;
            (columns.next()? == file_name).then(|| alias.to_string())
        })
}
