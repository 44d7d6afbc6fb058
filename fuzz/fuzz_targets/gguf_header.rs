//! A GGUF file's header and everything read from its metadata without the tensors: the
//! model configuration, the tokenizer and the chat template.
#![no_main]

use fgo::engine::chat::ChatTemplate;
use fgo::engine::gguf::GgufFile;
use fgo::engine::model::ModelConfig;
use fgo::engine::tokenizer::Tokenizer;
use libfuzzer_sys::fuzz_target;

#[path = "../common.rs"]
mod common;

fuzz_target!(|data: &[u8]| {
    let path = common::scratch("header.gguf", data);
    let Ok(file) = GgufFile::open(&path) else {
        return;
    };
    let _ = ModelConfig::from_gguf(&file);
    if let Ok(tokenizer) = Tokenizer::from_gguf(file.metadata()) {
        let _ = tokenizer.encode("Hello, world! 123");
    }
    let _ = ChatTemplate::from_gguf(file.metadata(), "<s>", "</s>");
});
