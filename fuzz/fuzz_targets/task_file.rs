//! Task files (TOML) through parsing and validation.
#![no_main]

use std::path::Path;

use fgo::optimizer::data::task::Task;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let _ = Task::from_str(
        text,
        Path::new("fuzz/task.toml"),
        Path::new("/nonexistent/fgo-fuzz"),
    );
});
