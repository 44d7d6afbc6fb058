//! Encoding arbitrary text and decoding arbitrary token ids with a real vocabulary (the
//! tiny test model's; `FGO_FUZZ_GGUF` names another GGUF to take it from).
#![no_main]

use std::sync::OnceLock;

use fgo::engine::gguf::GgufFile;
use fgo::engine::tokenizer::Tokenizer;
use libfuzzer_sys::fuzz_target;

fn tokenizer() -> &'static Tokenizer {
    static TOKENIZER: OnceLock<Tokenizer> = OnceLock::new();
    TOKENIZER.get_or_init(|| {
        let path = std::env::var("FGO_FUZZ_GGUF").unwrap_or_else(|_| {
            concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/fixtures/qwen3-tiny.gguf").into()
        });
        let file = GgufFile::open(&path).expect("open the vocabulary's GGUF");
        Tokenizer::from_gguf(file.metadata()).expect("read its tokenizer")
    })
}

fuzz_target!(|data: &[u8]| {
    let t = tokenizer();
    let text = String::from_utf8_lossy(data);
    if let Ok(ids) = t.encode(&text) {
        assert!(ids.iter().all(|&id| (id as usize) < t.vocab_size()));
        let _ = t.decode(&ids);
    }
    // Ids from the bytes, some beyond the vocabulary.
    let ids: Vec<u32> = data
        .chunks(4)
        .map(|c| {
            let mut b = [0u8; 4];
            b[..c.len()].copy_from_slice(c);
            u32::from_le_bytes(b) % (2 * t.vocab_size() as u32 + 1)
        })
        .collect();
    let _ = t.decode(&ids);
});
