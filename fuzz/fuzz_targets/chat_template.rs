//! Chat templates as untrusted code: the input is a template, a NUL byte, then message
//! contents separated by 0x01 bytes (roles cycle through system, user, assistant).
#![no_main]

use fgo::engine::chat::{ChatMessage, ChatTemplate};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let (source, rest) = text.split_once('\0').unwrap_or((&text, "Hello"));
    let Ok(template) = ChatTemplate::from_source(source, "<s>", "</s>") else {
        return;
    };
    let roles = ["system", "user", "assistant"];
    let messages: Vec<ChatMessage> = rest
        .split('\u{1}')
        .enumerate()
        .map(|(i, content)| ChatMessage::new(roles[i % 3], content))
        .collect();
    let _ = template.render(&messages, true);
    let _ = template.render(&messages, false);
});
