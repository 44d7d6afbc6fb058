//! A run's event log as `fgo resume` reads it back.
#![no_main]

use fgo::optimizer::exec::events::EventLog;
use libfuzzer_sys::fuzz_target;

#[path = "../common.rs"]
mod common;

fuzz_target!(|data: &[u8]| {
    let path = common::scratch("events.jsonl", data);
    if let Ok((_, events)) = EventLog::open(&path) {
        // What was kept opens again to the same events.
        let (_, again) = EventLog::open(&path).expect("reopen the rewritten log");
        assert_eq!(events, again);
    }
});
