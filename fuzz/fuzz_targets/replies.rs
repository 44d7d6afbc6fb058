//! The optimizer's parsers of model replies (components, procedures, numbers) and of
//! prompt templates, on arbitrary text.
#![no_main]

use fgo::optimizer::data::metric::parse_number;
use fgo::optimizer::data::template::Template;
use fgo::optimizer::methods::operators::parse_procedure;
use fgo::optimizer::methods::parse::parse_components;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&first, rest)) = data.split_first() else {
        return;
    };
    let reply = String::from_utf8_lossy(rest);
    let all = ["system_prompt", "instructions", "tool_description"];
    let names: Vec<String> = all[..1 + first as usize % 3]
        .iter()
        .map(|s| s.to_string())
        .collect();
    if let Ok(parsed) = parse_components(&reply, &names) {
        assert!(parsed.keys().all(|k| names.contains(k)));
    }
    let _ = parse_procedure(&reply);
    let _ = parse_number(&reply);
    let _ = Template::parse(&reply);
});
