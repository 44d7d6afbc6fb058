//! Text ↔ token ids, built from a GGUF file's `tokenizer.ggml.*` metadata alone.
//!
//! Two vocabulary kinds are supported, with token ids equal to llama.cpp's:
//! byte-level BPE (`gpt2`: SmolLM, Qwen, Llama 3) and SentencePiece-style (`llama`: Gemma,
//! Llama 2). A Hugging Face `tokenizer.json` can override the GGUF vocabulary.
//!
//! Invariants: [`Tokenizer::encode`] never adds BOS (callers ask [`Tokenizer::add_bos`]);
//! control, user-defined and unknown tokens written literally in the text are emitted as
//! their ids, and nothing else is (all ids come from the model's algorithm); a tokenizer
//! is immutable once built, so it is shared freely across threads.
//!
//! `decode(encode(text)) == text` except where the ids themselves lose information, exactly
//! as in llama.cpp: a literal `▁` in SentencePiece input encodes like a space, and bytes
//! that a byte-level vocabulary lacks are dropped (SmolLM2 has no tokens for the UTF-8 lead
//! bytes 0xF1 and 0xF2, used by code points U+40000 to U+BFFFF, nor for a few control
//! bytes). Spaces are never "cleaned up" on decoding.

mod bpe;
mod spm;
mod vocab;

use std::path::Path;

pub use bpe::BpePre;
pub use vocab::TokenKind;

use tokenizers::decoders::DecoderWrapper;

use crate::engine::gguf::Metadata;
use crate::error::{Error, Result};
use spm::{SpmEncoder, SPACE_MARK};
use vocab::{Fragment, SpecialSplitter, Vocab};

/// Token texts that llama.cpp recognises by text (end-of-generation, fill-in-the-middle and
/// gpt-oss channel tokens) and makes special whatever the file says, so that they are cut
/// out of input text: e.g. Qwen 2.5's `</s>` is a normal token in the file.
const SPECIAL_BY_TEXT: &[&str] = &[
    "<|eot_id|>",
    "<|im_end|>",
    "<|end|>",
    "<end_of_turn>",
    "<|endoftext|>",
    "<|end_of_text|>",
    "<EOT>",
    "_<EOT>",
    "[EOT]",
    "[EOS]",
    "</s>",
    "<eos>",
    "<turn|>",
    "<|tool_response>",
    "<|return|>",
    "<|call|>",
    "<|flush|>",
    "<|calls|>",
    "[e~[",
    "<\u{ff5c}end\u{2581}of\u{2581}sentence\u{ff5c}>",
    "<end_of_utterance>",
    "<|eom_id|>",
    "<|fim_prefix|>",
    "<fim-prefix>",
    "<fim_prefix>",
    "<\u{ff5c}fim\u{2581}begin\u{ff5c}>",
    "<PRE>",
    "\u{2581}<PRE>",
    "<|code_prefix|>",
    "<|prefix|>",
    "<|fim_suffix|>",
    "<fim-suffix>",
    "<fim_suffix>",
    "<\u{ff5c}fim\u{2581}hole\u{ff5c}>",
    "<SUF>",
    "\u{2581}<SUF>",
    "<|code_suffix|>",
    "<|suffix|>",
    "<|fim_middle|>",
    "<fim-middle>",
    "<fim_middle>",
    "<\u{ff5c}fim\u{2581}end\u{ff5c}>",
    "<MID>",
    "\u{2581}<MID>",
    "<|code_middle|>",
    "<|middle|>",
    "<|fim_pad|>",
    "<fim-pad>",
    "<fim_pad>",
    "<PAD>",
    "[PAD]",
    "<|fim_repo|>",
    "<|repo_name|>",
    "<fim-repo>",
    "<REPO>",
    "<reponame>",
    "<|file_sep|>",
    "<|channel|>",
    "<|message|>",
    "<|start|>",
    "<|constrain|>",
];

/// Token texts that end a turn in common chat formats; present ones become stop ids.
const END_OF_TURN_TEXTS: &[&str] = &[
    "<|im_end|>",
    "<|eot_id|>",
    "<end_of_turn>",
    "<|endoftext|>",
    "<|eom_id|>",
    "<|end_of_text|>",
    "<|end|>",
    "<EOT>",
    "<end_of_utterance>",
];

/// Which algorithm a [`Tokenizer`] runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenizerKind {
    /// Byte-level BPE from GGUF metadata, with its pre-tokenizer family.
    ByteLevelBpe(BpePre),
    /// SentencePiece-style merges by score from GGUF metadata.
    SentencePiece,
    /// A Hugging Face `tokenizer.json`.
    HuggingFaceJson,
}

/// How plain text becomes ids.
#[derive(Debug, Clone)]
enum Encoder {
    Bpe(Box<tokenizers::Tokenizer>, BpePre),
    Spm(SpmEncoder),
    Json(Box<tokenizers::Tokenizer>),
}

/// The largest `tokenizer.json` read (real ones are up to a few tens of MiB).
const TOKENIZER_JSON_LIMIT: u64 = 128 << 20;

/// A tokenizer whose ids match llama.cpp's for the same GGUF file.
#[derive(Clone)]
pub struct Tokenizer {
    vocab: Vocab,
    splitter: SpecialSplitter,
    encoder: Encoder,
    /// The bytes each token decodes to, concatenated; token `i` is
    /// `piece_bytes[piece_ends[i-1]..piece_ends[i]]`.
    piece_bytes: Vec<u8>,
    piece_ends: Vec<usize>,
    bos: Option<u32>,
    eos: Option<u32>,
    add_bos: bool,
    stop_ids: Vec<u32>,
    unknown_pre: Option<String>,
}

impl std::fmt::Debug for Tokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tokenizer")
            .field("kind", &self.kind())
            .field("vocab_size", &self.vocab_size())
            .field("bos", &self.bos)
            .field("eos", &self.eos)
            .field("add_bos", &self.add_bos)
            .field("stop_ids", &self.stop_ids)
            .finish_non_exhaustive()
    }
}

impl Tokenizer {
    /// Builds the tokenizer described by `tokenizer.ggml.*` in `metadata`.
    ///
    /// An unknown `tokenizer.ggml.pre` falls back to llama.cpp's `default` pre-tokenizer and
    /// is reported by [`Tokenizer::unknown_pre`]; an unknown `tokenizer.ggml.model` is an error.
    /// Without `bos_token_id`/`eos_token_id`, SentencePiece vocabularies use 1 and 2 as
    /// llama.cpp does; byte-level ones have none (llama.cpp's legacy default, 11, is not
    /// copied). A special token id outside the vocabulary is an error.
    pub fn from_gguf(metadata: &Metadata) -> Result<Tokenizer> {
        let model = metadata.str("tokenizer.ggml.model")?;
        let mut vocab = gguf_vocab(metadata)?;
        for text in SPECIAL_BY_TEXT {
            vocab.force_control(text);
        }
        let mut unknown_pre = None;
        let (encoder, default_bos, default_eos, default_add_bos) = match model {
            "gpt2" => {
                let pre_name = metadata.opt_str("tokenizer.ggml.pre")?.unwrap_or("default");
                let pre = BpePre::from_name(pre_name).unwrap_or_else(|| {
                    unknown_pre = Some(pre_name.to_string());
                    BpePre::Default
                });
                let merges = metadata.str_array("tokenizer.ggml.merges")?;
                let tokenizer = bpe::build(&vocab, &merges, pre)?;
                let encoder = Encoder::Bpe(Box::new(tokenizer), pre);
                (encoder, None, None, pre.default_add_bos())
            }
            "llama" => {
                let scores = if metadata.contains("tokenizer.ggml.scores") {
                    metadata.f32_array("tokenizer.ggml.scores")?
                } else {
                    vec![0.0; vocab.len()]
                };
                let add_space_prefix = metadata
                    .opt_bool("tokenizer.ggml.add_space_prefix")?
                    .unwrap_or(true);
                let encoder = Encoder::Spm(SpmEncoder::new(&vocab, scores, add_space_prefix)?);
                (encoder, Some(1), Some(2), true)
            }
            other => {
                return Err(Error::Tokenizer(format!(
                    "unsupported tokenizer.ggml.model `{other}` (supported: gpt2, llama)"
                )))
            }
        };
        let n_vocab = vocab.len();
        let in_vocab = |id: u32| (id as usize) < n_vocab;
        let bos = special_id(metadata, "tokenizer.ggml.bos_token_id", n_vocab)?
            .or(default_bos.filter(|&id| in_vocab(id)));
        let eos = special_id(metadata, "tokenizer.ggml.eos_token_id", n_vocab)?
            .or(default_eos.filter(|&id| in_vocab(id)));
        let mut extra_stops = Vec::new();
        for key in ["tokenizer.ggml.eot_token_id", "tokenizer.ggml.eom_token_id"] {
            extra_stops.extend(special_id(metadata, key, n_vocab)?);
        }
        let add_bos = metadata
            .opt_bool("tokenizer.ggml.add_bos_token")?
            .unwrap_or(default_add_bos);
        Ok(Self::assemble(
            vocab,
            encoder,
            bos,
            eos,
            add_bos,
            &extra_stops,
            unknown_pre,
        ))
    }

    /// Builds a tokenizer from a Hugging Face `tokenizer.json`, overriding the GGUF one.
    ///
    /// BOS, EOS, EOT and whether to add BOS are taken from `metadata` when given (keys as in
    /// [`Tokenizer::from_gguf`]); without it there is no BOS id and BOS is never added.
    pub fn from_json_file(path: &Path, metadata: Option<&Metadata>) -> Result<Tokenizer> {
        let text = crate::error::read_text(path, TOKENIZER_JSON_LIMIT, "a tokenizer.json")?;
        let tokenizer = text.parse::<tokenizers::Tokenizer>().map_err(|e| {
            Error::Tokenizer(format!(
                "cannot load tokenizer.json {}: {e}",
                path.display()
            ))
        })?;
        let size = tokenizer.get_vocab_size(true);
        let mut texts = vec![String::new(); size];
        for (text, id) in tokenizer.get_vocab(true) {
            if let Some(slot) = texts.get_mut(id as usize) {
                *slot = text;
            }
        }
        let mut kinds = vec![TokenKind::Normal; size];
        for (id, added) in tokenizer.get_added_tokens_decoder() {
            if let Some(kind) = kinds.get_mut(id as usize) {
                *kind = if added.special {
                    TokenKind::Control
                } else {
                    TokenKind::UserDefined
                };
            }
        }
        let vocab = Vocab::new(texts, kinds)?;
        let (mut bos, mut eos, mut add_bos, mut extra_stops) = (None, None, false, Vec::new());
        if let Some(metadata) = metadata {
            bos = special_id(metadata, "tokenizer.ggml.bos_token_id", size)?;
            eos = special_id(metadata, "tokenizer.ggml.eos_token_id", size)?;
            for key in ["tokenizer.ggml.eot_token_id", "tokenizer.ggml.eom_token_id"] {
                extra_stops.extend(special_id(metadata, key, size)?);
            }
            let default_add_bos = metadata.opt_str("tokenizer.ggml.model")? == Some("llama");
            add_bos = metadata
                .opt_bool("tokenizer.ggml.add_bos_token")?
                .unwrap_or(default_add_bos);
        }
        let encoder = Encoder::Json(Box::new(tokenizer));
        Ok(Self::assemble(
            vocab,
            encoder,
            bos,
            eos,
            add_bos,
            &extra_stops,
            None,
        ))
    }

    fn assemble(
        vocab: Vocab,
        encoder: Encoder,
        bos: Option<u32>,
        eos: Option<u32>,
        add_bos: bool,
        extra_stops: &[u32],
        unknown_pre: Option<String>,
    ) -> Self {
        let mut stop_ids: Vec<u32> = eos.into_iter().chain(extra_stops.iter().copied()).collect();
        stop_ids.extend(END_OF_TURN_TEXTS.iter().filter_map(|t| vocab.id(t)));
        stop_ids.sort_unstable();
        stop_ids.dedup();
        let (piece_bytes, piece_ends) = pieces(&vocab, &encoder);
        Self {
            splitter: SpecialSplitter::new(&vocab),
            vocab,
            encoder,
            piece_bytes,
            piece_ends,
            bos,
            eos,
            add_bos: add_bos && bos.is_some(),
            stop_ids,
            unknown_pre,
        }
    }

    /// Encodes text; special/control tokens written literally in `text` (e.g.
    /// "<|im_start|>") are recognised as single ids. Never adds BOS.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        let mut ids = Vec::with_capacity(text.len() / 3 + 1);
        if let Encoder::Json(tokenizer) = &self.encoder {
            // A tokenizer.json finds its own added tokens.
            ids.extend_from_slice(hf_encode(tokenizer, text)?.get_ids());
            return Ok(ids);
        }
        let mut after_special = true;
        for fragment in self.splitter.split(text) {
            match fragment {
                Fragment::Token(id) => {
                    ids.push(id);
                    after_special = true;
                }
                Fragment::Text(piece) => {
                    match &self.encoder {
                        Encoder::Spm(spm) => {
                            spm.encode_fragment(&self.vocab, piece, after_special, &mut ids)?
                        }
                        Encoder::Bpe(tokenizer, _) | Encoder::Json(tokenizer) => {
                            ids.extend_from_slice(hf_encode(tokenizer, piece)?.get_ids())
                        }
                    }
                    after_special = false;
                }
            }
        }
        Ok(ids)
    }

    /// Decodes ids to text (special tokens rendered as their text; byte tokens joined into
    /// UTF-8, invalid sequences lossy). An id outside the vocabulary is an error.
    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        if let Some(&bad) = ids.iter().find(|&&id| id as usize >= self.vocab.len()) {
            return Err(Error::Tokenizer(format!(
                "token id {bad} is outside the vocabulary ({} tokens)",
                self.vocab.len()
            )));
        }
        if let Encoder::Json(tokenizer) = &self.encoder {
            return tokenizer
                .decode(ids, false)
                .map_err(|e| Error::Tokenizer(format!("decoding: {e}")));
        }
        let mut bytes = Vec::with_capacity(ids.len() * 4);
        for (i, &id) in ids.iter().enumerate() {
            let mut piece = self.token_bytes(id).unwrap_or_default();
            // The space SentencePiece put before the text is not part of it: llama.cpp
            // strips one leading space from the first piece.
            if i == 0 && matches!(&self.encoder, Encoder::Spm(spm) if spm.add_space_prefix()) {
                piece = piece.strip_prefix(b" ").unwrap_or(piece);
            }
            bytes.extend_from_slice(piece);
        }
        Ok(String::from_utf8_lossy(&bytes).into_owned())
    }

    /// The bytes one token stands for when decoded (control and user-defined tokens: their
    /// text; unused slots: nothing), for streaming output piece by piece.
    pub fn token_bytes(&self, id: u32) -> Option<&[u8]> {
        let id = id as usize;
        let end = *self.piece_ends.get(id)?;
        let start = if id == 0 { 0 } else { self.piece_ends[id - 1] };
        Some(&self.piece_bytes[start..end])
    }

    /// The beginning-of-sequence token, if the vocabulary has one.
    pub fn bos_id(&self) -> Option<u32> {
        self.bos
    }

    /// The end-of-sequence token, if the vocabulary has one.
    pub fn eos_id(&self) -> Option<u32> {
        self.eos
    }

    /// Whether a BOS should be prepended to prompts (`tokenizer.ggml.add_bos_token`; by
    /// default true for SentencePiece and Llama 3 vocabularies, as in llama.cpp). Always false
    /// when there is no BOS token.
    pub fn add_bos(&self) -> bool {
        self.add_bos
    }

    /// Ids that end a generation, sorted: EOS, `tokenizer.ggml.eot_token_id` and
    /// `eom_token_id`, and well-known end-of-turn tokens present in the vocabulary
    /// (`<|im_end|>`, `<|eot_id|>`, `<end_of_turn>`, `<|endoftext|>`, ...).
    pub fn stop_ids(&self) -> &[u32] {
        &self.stop_ids
    }

    /// The vocabulary entry for `id` as stored (byte-level BPE entries use GPT-2's
    /// byte-to-character mapping, e.g. `Ġ` for a space; SentencePiece entries use `▁`).
    pub fn token_text(&self, id: u32) -> Option<&str> {
        self.vocab.text(id)
    }

    /// The id of the vocabulary entry `text`, spelled as [`Tokenizer::token_text`] gives it.
    pub fn token_id(&self, text: &str) -> Option<u32> {
        self.vocab.id(text)
    }

    /// What `id` is (normal, control, byte, ...).
    pub fn token_kind(&self, id: u32) -> Option<TokenKind> {
        self.vocab.kind(id)
    }

    /// The number of tokens in the vocabulary.
    pub fn vocab_size(&self) -> usize {
        self.vocab.len()
    }

    /// The algorithm in use.
    pub fn kind(&self) -> TokenizerKind {
        match &self.encoder {
            Encoder::Bpe(_, pre) => TokenizerKind::ByteLevelBpe(*pre),
            Encoder::Spm(_) => TokenizerKind::SentencePiece,
            Encoder::Json(_) => TokenizerKind::HuggingFaceJson,
        }
    }

    /// The `tokenizer.ggml.pre` value that was not recognised, if the `default`
    /// pre-tokenizer was used in its place.
    pub fn unknown_pre(&self) -> Option<&str> {
        self.unknown_pre.as_deref()
    }
}

/// Runs a `tokenizers` pipeline without post-processing (so without BOS/EOS).
fn hf_encode(tokenizer: &tokenizers::Tokenizer, text: &str) -> Result<tokenizers::Encoding> {
    tokenizer
        .encode_fast(text, false)
        .map_err(|e| Error::Tokenizer(format!("encoding: {e}")))
}

/// Whether a `tokenizers` decoder is GPT-2's byte-level one (alone or in a sequence).
fn is_byte_level(decoder: Option<&DecoderWrapper>) -> bool {
    match decoder {
        Some(DecoderWrapper::ByteLevel(_)) => true,
        Some(DecoderWrapper::Sequence(sequence)) => sequence
            .get_decoders()
            .iter()
            .any(|d| is_byte_level(Some(d))),
        _ => false,
    }
}

/// Reads the token texts and types.
fn gguf_vocab(metadata: &Metadata) -> Result<Vocab> {
    let texts: Vec<String> = metadata
        .str_array("tokenizer.ggml.tokens")?
        .into_iter()
        .map(str::to_owned)
        .collect();
    let kinds = if metadata.contains("tokenizer.ggml.token_type") {
        let types = metadata.i64_array("tokenizer.ggml.token_type")?;
        if types.len() < texts.len() {
            return Err(Error::Metadata {
                key: "tokenizer.ggml.token_type".into(),
                reason: format!("{} entries for {} tokens", types.len(), texts.len()),
            });
        }
        types
            .into_iter()
            .take(texts.len())
            .map(TokenKind::from_gguf_type)
            .collect()
    } else {
        vec![TokenKind::Normal; texts.len()]
    };
    Vocab::new(texts, kinds)
}

/// An optional token id key, checked against the vocabulary size.
fn special_id(metadata: &Metadata, key: &str, n_vocab: usize) -> Result<Option<u32>> {
    match metadata.opt_usize(key)? {
        None => Ok(None),
        Some(id) if id < n_vocab => Ok(Some(id as u32)),
        Some(id) => Err(Error::Metadata {
            key: key.to_string(),
            reason: format!("token id {id} is outside the vocabulary ({n_vocab} tokens)"),
        }),
    }
}

/// The decoded bytes of every token (see [`Tokenizer::token_bytes`]), as llama.cpp's
/// `token_to_piece` renders them with special tokens shown.
fn pieces(vocab: &Vocab, encoder: &Encoder) -> (Vec<u8>, Vec<usize>) {
    let json = matches!(encoder, Encoder::Json(_));
    let byte_level = match encoder {
        Encoder::Bpe(..) => true,
        Encoder::Spm(_) => false,
        Encoder::Json(tokenizer) => is_byte_level(tokenizer.get_decoder()),
    };
    let table = bpe::char_to_byte_table();
    let mut bytes = Vec::with_capacity(vocab.len() * 6);
    let mut ends = Vec::with_capacity(vocab.len());
    for (_, text, kind) in vocab.iter() {
        match kind {
            TokenKind::Control | TokenKind::UserDefined | TokenKind::Unknown => {
                bytes.extend_from_slice(text.as_bytes())
            }
            TokenKind::Byte => bytes.extend(byte_token_value(text)),
            TokenKind::Normal if byte_level => bpe::token_bytes(text, &table, &mut bytes),
            // A tokenizer.json does not mark its byte-fallback tokens.
            TokenKind::Normal if json && byte_token_value(text).is_some() => {
                bytes.extend(byte_token_value(text))
            }
            TokenKind::Normal if text.contains(SPACE_MARK) => {
                bytes.extend_from_slice(text.replace(SPACE_MARK, " ").as_bytes())
            }
            TokenKind::Normal => bytes.extend_from_slice(text.as_bytes()),
            TokenKind::Unused | TokenKind::Undefined => {}
        }
        ends.push(bytes.len());
    }
    (bytes, ends)
}

/// The byte of a `<0xXX>` token text.
fn byte_token_value(text: &str) -> Option<u8> {
    let hex = text.strip_prefix("<0x")?.strip_suffix('>')?;
    if hex.len() != 2 {
        return None;
    }
    u8::from_str_radix(hex, 16).ok()
}

#[cfg(test)]
mod tests;
