//! Shared by the fuzz targets: a scratch file per process for the readers that take a
//! path, in memory-backed storage where the system has it.

use std::path::PathBuf;

/// Writes `data` to this process's scratch file named `name` and returns its path.
pub fn scratch(name: &str, data: &[u8]) -> PathBuf {
    let dir = if std::path::Path::new("/dev/shm").is_dir() {
        PathBuf::from("/dev/shm")
    } else {
        std::env::temp_dir()
    };
    let path = dir.join(format!("fgo-fuzz-{}-{name}", std::process::id()));
    std::fs::write(&path, data).expect("write the scratch file");
    path
}
