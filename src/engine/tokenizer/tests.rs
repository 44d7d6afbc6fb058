//! Whole-tokenizer tests on small vocabularies written as GGUF metadata.

use std::collections::HashMap;

use candle_core::quantized::gguf_file::Value;

use super::*;

fn strings(items: &[&str]) -> Value {
    Value::Array(items.iter().map(|s| Value::String(s.to_string())).collect())
}

/// A byte-level BPE vocabulary: the 256 byte characters, a few merges, and specials.
fn bpe_metadata(pre: &str) -> Metadata {
    let table = bpe::char_to_byte_table();
    let mut tokens: Vec<String> = vec!["<|endoftext|>".into(), "<|im_start|>".into()];
    tokens.push("<|im_end|>".into());
    tokens.push("<tool>".into());
    tokens.extend(
        (0..table.len())
            .filter(|&c| table[c].is_some())
            .map(|c| char::from_u32(c as u32).unwrap().to_string()),
    );
    tokens.extend(
        [
            "he", "ll", "hell", "hello", "Ġw", "or", "Ġwor", "ld", "Ġworld",
        ]
        .map(String::from),
    );
    let types: Vec<Value> = tokens
        .iter()
        .enumerate()
        .map(|(i, _)| {
            Value::I32(match i {
                0..=2 => 3,
                3 => 4,
                _ => 1,
            })
        })
        .collect();
    let token_refs: Vec<&str> = tokens.iter().map(String::as_str).collect();
    let mut values = HashMap::new();
    values.insert("tokenizer.ggml.model".into(), Value::String("gpt2".into()));
    values.insert("tokenizer.ggml.pre".into(), Value::String(pre.into()));
    values.insert("tokenizer.ggml.tokens".into(), strings(&token_refs));
    values.insert("tokenizer.ggml.token_type".into(), Value::Array(types));
    values.insert(
        "tokenizer.ggml.merges".into(),
        strings(&[
            "h e", "l l", "he ll", "hell o", "Ġ w", "o r", "Ġw or", "l d", "Ġwor ld",
        ]),
    );
    values.insert("tokenizer.ggml.bos_token_id".into(), Value::U32(1));
    values.insert("tokenizer.ggml.eos_token_id".into(), Value::U32(2));
    Metadata::new(values)
}

/// A SentencePiece vocabulary with all 256 byte tokens.
fn spm_metadata(add_space_prefix: Option<bool>) -> Metadata {
    let mut entries: Vec<(String, i32, f32)> = vec![
        ("<unk>".into(), 2, 0.0),
        ("<s>".into(), 3, 0.0),
        ("</s>".into(), 3, 0.0),
        ("<start_of_turn>".into(), 3, 0.0),
        ("<end_of_turn>".into(), 3, 0.0),
    ];
    entries.extend((0..=255u8).map(|b| (format!("<0x{b:02X}>"), 6, 0.0)));
    for (text, score) in [
        ("▁", -1.0),
        ("h", -3.0),
        ("e", -3.0),
        ("l", -3.0),
        ("o", -3.0),
        ("he", -2.0),
        ("ll", -2.0),
        ("hell", -1.5),
        ("hello", -1.0),
        ("▁hello", -0.5),
    ] {
        entries.push((text.into(), 1, score));
    }
    let texts: Vec<&str> = entries.iter().map(|e| e.0.as_str()).collect();
    let mut values = HashMap::new();
    values.insert("tokenizer.ggml.model".into(), Value::String("llama".into()));
    values.insert("tokenizer.ggml.tokens".into(), strings(&texts));
    values.insert(
        "tokenizer.ggml.token_type".into(),
        Value::Array(entries.iter().map(|e| Value::I32(e.1)).collect()),
    );
    values.insert(
        "tokenizer.ggml.scores".into(),
        Value::Array(entries.iter().map(|e| Value::F32(e.2)).collect()),
    );
    if let Some(flag) = add_space_prefix {
        values.insert("tokenizer.ggml.add_space_prefix".into(), Value::Bool(flag));
    }
    Metadata::new(values)
}

fn texts(tokenizer: &Tokenizer, ids: &[u32]) -> Vec<String> {
    ids.iter()
        .map(|&id| tokenizer.token_text(id).unwrap().to_string())
        .collect()
}

#[test]
fn tokenizer_is_send_and_sync() {
    fn check<T: Send + Sync>() {}
    check::<Tokenizer>();
}

#[test]
fn bpe_encodes_words_and_literal_special_tokens() {
    let tk = Tokenizer::from_gguf(&bpe_metadata("smollm")).unwrap();
    assert_eq!(tk.kind(), TokenizerKind::ByteLevelBpe(BpePre::Smollm));
    let ids = tk
        .encode("<|im_start|>hello world<tool><|im_end|>")
        .unwrap();
    assert_eq!(
        texts(&tk, &ids),
        ["<|im_start|>", "hello", "Ġworld", "<tool>", "<|im_end|>"]
    );
    // A special token's text inside a word still splits it.
    let ids = tk.encode("hel<|im_end|>lo").unwrap();
    assert_eq!(texts(&tk, &ids), ["he", "l", "<|im_end|>", "l", "o"]);
    assert_eq!(tk.bos_id(), Some(1));
    assert_eq!(tk.eos_id(), Some(2));
    assert!(!tk.add_bos());
    assert_eq!(tk.stop_ids(), &[0, 2]);
    assert_eq!(tk.unknown_pre(), None);
}

#[test]
fn bpe_decode_round_trips_bytes_and_specials() {
    let tk = Tokenizer::from_gguf(&bpe_metadata("qwen2")).unwrap();
    for text in [
        "hello world",
        "  tabs\tand\nnewlines\r\n",
        "ünïcødé ✓ 😀",
        "<|im_start|>x",
    ] {
        let ids = tk.encode(text).unwrap();
        assert_eq!(tk.decode(&ids).unwrap(), text);
    }
    // Half of a multi-byte character decodes lossily, not as an error.
    let ids = tk.encode("é").unwrap();
    assert_eq!(ids.len(), 2);
    assert_eq!(tk.decode(&ids[..1]).unwrap(), "\u{FFFD}");
    assert_eq!(tk.token_bytes(ids[0]), Some(&[0xC3u8][..]));
    assert!(tk.decode(&[u32::MAX]).is_err());
}

#[test]
fn unknown_pre_falls_back_to_default_and_is_reported() {
    let tk = Tokenizer::from_gguf(&bpe_metadata("no-such-pre")).unwrap();
    assert_eq!(tk.unknown_pre(), Some("no-such-pre"));
    assert_eq!(tk.kind(), TokenizerKind::ByteLevelBpe(BpePre::Default));
    assert_eq!(
        tk.decode(&tk.encode("hello world").unwrap()).unwrap(),
        "hello world"
    );
}

#[test]
fn unknown_model_is_an_error_naming_it() {
    let mut metadata = bpe_metadata("qwen2");
    let mut values: HashMap<String, Value> = metadata
        .keys()
        .map(|k| (k.to_string(), metadata.get(k).unwrap().clone()))
        .collect();
    values.insert("tokenizer.ggml.model".into(), Value::String("t5".into()));
    metadata = Metadata::new(values);
    let err = Tokenizer::from_gguf(&metadata).unwrap_err().to_string();
    assert!(err.contains("`t5`"), "{err}");
}

#[test]
fn spm_prefixes_a_space_at_the_start_and_after_special_tokens() {
    let tk = Tokenizer::from_gguf(&spm_metadata(None)).unwrap();
    assert_eq!(tk.kind(), TokenizerKind::SentencePiece);
    let ids = tk.encode("hello<start_of_turn>hello hello").unwrap();
    assert_eq!(
        texts(&tk, &ids),
        ["▁hello", "<start_of_turn>", "▁hello", "▁hello"]
    );
    assert_eq!(tk.decode(&ids).unwrap(), "hello<start_of_turn> hello hello");
    // Defaults as llama.cpp: BOS 1, EOS 2, add BOS.
    assert_eq!(
        (tk.bos_id(), tk.eos_id(), tk.add_bos()),
        (Some(1), Some(2), true)
    );
    assert_eq!(tk.stop_ids(), &[2, 4]);
}

#[test]
fn spm_without_space_prefix_and_with_byte_fallback() {
    let tk = Tokenizer::from_gguf(&spm_metadata(Some(false))).unwrap();
    let ids = tk.encode("hello hé").unwrap();
    assert_eq!(texts(&tk, &ids), ["hello", "▁", "h", "<0xC3>", "<0xA9>"]);
    for text in ["hello hé", " leading", "x\ny\t😀", ""] {
        assert_eq!(tk.decode(&tk.encode(text).unwrap()).unwrap(), text);
    }
}

#[test]
fn spm_round_trips_with_space_prefix() {
    let tk = Tokenizer::from_gguf(&spm_metadata(Some(true))).unwrap();
    for text in ["hello", " two  spaces ", "ünï\n"] {
        assert_eq!(tk.decode(&tk.encode(text).unwrap()).unwrap(), text);
    }
}

#[test]
fn json_override_matches_the_gguf_tokenizer() {
    let metadata = bpe_metadata("qwen2");
    let from_gguf = Tokenizer::from_gguf(&metadata).unwrap();
    let vocab = gguf_vocab(&metadata).unwrap();
    let merges = metadata.str_array("tokenizer.ggml.merges").unwrap();
    let hf = bpe::build(&vocab, &merges, BpePre::Qwen2).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tokenizer.json");
    hf.save(&path, false).unwrap();

    let from_json = Tokenizer::from_json_file(&path, Some(&metadata)).unwrap();
    assert_eq!(from_json.kind(), TokenizerKind::HuggingFaceJson);
    let text = "<|im_start|>hello world\n<tool>é<|im_end|>";
    let ids = from_json.encode(text).unwrap();
    assert_eq!(ids, from_gguf.encode(text).unwrap());
    assert_eq!(from_json.decode(&ids).unwrap(), text);
    assert_eq!(from_json.token_bytes(ids[2]), from_gguf.token_bytes(ids[2]));
    assert_eq!(from_json.vocab_size(), from_gguf.vocab_size());
    assert_eq!((from_json.bos_id(), from_json.eos_id()), (Some(1), Some(2)));
    assert_eq!(from_json.stop_ids(), from_gguf.stop_ids());

    let bare = Tokenizer::from_json_file(&path, None).unwrap();
    assert_eq!((bare.bos_id(), bare.add_bos()), (None, false));
    assert_eq!(bare.stop_ids(), &[0, 2]);

    let missing = Tokenizer::from_json_file(&dir.path().join("nope.json"), None);
    assert!(missing.unwrap_err().to_string().contains("nope.json"));
}
