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

/// A finished `--method none` run in `dir/run` of a task named `name` whose command agent
/// answers 2 to every example of `tests/hostile/data/ok.jsonl`, with `component` as its
/// system prompt (both TOML basic-string contents, escapes allowed). Returns the run
/// directory.
pub fn command_agent_run(dir: &Path, name: &str, component: &str) -> PathBuf {
    let data = crate_root().join("tests/hostile/data/ok.jsonl");
    let task = dir.join("task.toml");
    std::fs::write(
        &task,
        format!(
            "name = \"{name}\"\n[components.system_prompt]\ntext = \"{component}\"\n\
             [agent]\ntype = \"command\"\ncommand = [\"sh\", \"-c\", \"echo '{{\\\"answer\\\": 2}}'\"]\n\
             [data]\nfile = {:?}\nsplit = {{ train = 0.5, val = 0.25, test = 0.25 }}\n\
             [metric]\ntype = \"exact\"\n[optimizer]\nmodel = \"unused\"\n",
            data.to_str().expect("utf-8 path")
        ),
    )
    .expect("write task");
    let run = dir.join("run");
    let made = std::process::Command::new(env!("CARGO_BIN_EXE_fgo"))
        .arg("optimize")
        .arg(&task)
        .args(["--method", "none", "-q", "--out"])
        .arg(&run)
        .env_remove("RUST_LOG")
        .output()
        .expect("fgo runs");
    assert!(
        made.status.success(),
        "{}",
        String::from_utf8_lossy(&made.stderr)
    );
    run
}
