//! Data files (JSONL) with and without an id field.
#![no_main]

use fgo::optimizer::data::dataset::read_jsonl;
use libfuzzer_sys::fuzz_target;

#[path = "../common.rs"]
mod common;

fuzz_target!(|data: &[u8]| {
    let path = common::scratch("data.jsonl", data);
    let _ = read_jsonl(&path, "answer", Some("id"));
    let _ = read_jsonl(&path, "answer", None);
});
