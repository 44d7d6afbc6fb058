//! The identity of a local model file: the SHA-256 of its bytes.
//!
//! Call keys name a model by what it is, not by what it is called, so that the same file
//! under two names (an alias and a path) shares its recorded calls and two different files
//! with the same name never do. Hashing a large file takes seconds, so a hash is computed
//! once per (canonical path, size, modification time): it is kept in memory for the
//! process and in `~/.cache/fgo/hashes/` across processes. A file that is a manifest
//! alias's, at the manifest's size, takes the manifest's checksum (the fetch script
//! verified it).

use std::collections::HashMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};
use std::time::UNIX_EPOCH;

use sha2::{Digest, Sha256};

use crate::engine::source::{models_dir, Manifest};
use crate::error::{Error, Result};

/// What a computed hash is valid for.
type FileStamp = (PathBuf, u64, u128);

fn memo() -> &'static Mutex<HashMap<FileStamp, String>> {
    static MEMO: OnceLock<Mutex<HashMap<FileStamp, String>>> = OnceLock::new();
    MEMO.get_or_init(|| Mutex::new(HashMap::new()))
}

/// `gguf-sha256:HEX` for the file at `path`.
pub fn file_identity(path: &Path) -> Result<String> {
    Ok(format!("gguf-sha256:{}", file_sha256(path)?))
}

/// The SHA-256 of the file at `path`, in lower-case hex, computed at most once per
/// (canonical path, size, modification time).
pub fn file_sha256(path: &Path) -> Result<String> {
    let canonical = path.canonicalize().map_err(|e| Error::io(path, e))?;
    let meta = std::fs::metadata(&canonical).map_err(|e| Error::io(path, e))?;
    let mtime = meta
        .modified()
        .ok()
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_nanos());
    let stamp: FileStamp = (canonical.clone(), meta.len(), mtime);
    if let Some(hash) = memo().lock().unwrap_or_else(|p| p.into_inner()).get(&stamp) {
        return Ok(hash.clone());
    }
    let hash = match from_manifest(&canonical, meta.len()) {
        Some(hash) => hash,
        None => match read_cached(&stamp) {
            Some(hash) => hash,
            None => {
                let hash = hash_file(&canonical)?;
                write_cached(&stamp, &hash);
                hash
            }
        },
    };
    memo()
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .insert(stamp, hash.clone());
    Ok(hash)
}

fn is_sha256_hex(text: &str) -> bool {
    text.len() == 64 && text.bytes().all(|b| b.is_ascii_hexdigit())
}

/// The manifest's checksum when `canonical` is an installed alias file of the listed size.
fn from_manifest(canonical: &Path, len: u64) -> Option<String> {
    let manifest = Manifest::load(&models_dir()).ok()?;
    manifest.entries.iter().find_map(|entry| {
        let installed = manifest.dir.join(&entry.file).canonicalize().ok()?;
        (installed == canonical && entry.bytes == len && is_sha256_hex(&entry.sha256))
            .then(|| entry.sha256.to_ascii_lowercase())
    })
}

/// The directory of cached hashes: `~/.cache/fgo/hashes`.
fn cache_dir() -> Option<PathBuf> {
    let home = std::env::var_os("HOME")?;
    Some(PathBuf::from(home).join(".cache/fgo/hashes"))
}

/// The cache file of one stamp: named by a hash of the stamp, holding the file's hash.
fn cache_file(stamp: &FileStamp) -> Option<PathBuf> {
    let name = format!("{}\n{}\n{}", stamp.0.to_string_lossy(), stamp.1, stamp.2);
    let key = hex(&Sha256::digest(name.as_bytes()));
    Some(cache_dir()?.join(key))
}

fn read_cached(stamp: &FileStamp) -> Option<String> {
    let text = std::fs::read_to_string(cache_file(stamp)?).ok()?;
    let hash = text.trim();
    is_sha256_hex(hash).then(|| hash.to_string())
}

/// Best effort: a cache that cannot be written only costs a rehash next time.
fn write_cached(stamp: &FileStamp, hash: &str) {
    let Some(path) = cache_file(stamp) else {
        return;
    };
    if let Some(dir) = path.parent() {
        let _ = std::fs::create_dir_all(dir);
    }
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    if std::fs::write(&tmp, hash).is_ok() && std::fs::rename(&tmp, &path).is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
}

fn hash_file(path: &Path) -> Result<String> {
    let mut file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let mut hasher = Sha256::new();
    let mut buffer = vec![0u8; 1 << 20];
    loop {
        let n = file.read(&mut buffer).map_err(|e| Error::io(path, e))?;
        if n == 0 {
            break;
        }
        hasher.update(&buffer[..n]);
    }
    Ok(hex(&hasher.finalize()))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_same_bytes_under_two_names_share_an_identity() {
        let dir = tempfile::tempdir().expect("tempdir");
        let a = dir.path().join("a.gguf");
        let sub = dir.path().join("sub");
        std::fs::create_dir(&sub).expect("mkdir");
        let b = sub.join("renamed.gguf");
        std::fs::write(&a, b"some model bytes").expect("write");
        std::fs::write(&b, b"some model bytes").expect("write");
        let c = sub.join("a.gguf");
        std::fs::write(&c, b"other model bytes").expect("write");
        let id = file_identity(&a).unwrap();
        assert_eq!(id, file_identity(&b).unwrap());
        assert_ne!(id, file_identity(&c).unwrap(), "same name, other bytes");
        assert_eq!(
            file_sha256(&a).unwrap(),
            hex(&Sha256::digest(b"some model bytes"))
        );
        assert!(file_identity(&dir.path().join("missing.gguf")).is_err());
    }

    #[test]
    fn a_rewritten_file_is_hashed_again() {
        let dir = tempfile::tempdir().expect("tempdir");
        let a = dir.path().join("m.gguf");
        std::fs::write(&a, b"one").expect("write");
        let first = file_sha256(&a).unwrap();
        std::fs::write(&a, b"two!").expect("write");
        assert_ne!(first, file_sha256(&a).unwrap(), "the size changed");
    }
}
