//! Byte-level BPE (`tokenizer.ggml.model = "gpt2"`) on the `tokenizers` crate.
//!
//! The text is split by the pre-tokenizer regexes that llama.cpp uses for the file's
//! `tokenizer.ggml.pre` (applied in sequence, each to the pieces of the previous one, keeping
//! both matches and the text between them), each piece is mapped byte by byte to GPT-2's
//! printable alphabet, and BPE merges run by rank (lowest first, leftmost on ties).
//! Special tokens are cut out before this stage, so the `tokenizers` pipeline only ever sees
//! plain text; they are still registered with it so that it stands on its own.

use tokenizers::decoders::byte_level::ByteLevel as ByteLevelDecoder;
use tokenizers::models::bpe::{Vocab as BpeVocab, BPE};
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::pre_tokenizers::PreTokenizerWrapper;
use tokenizers::{AddedToken, SplitDelimiterBehavior};

use super::vocab::Vocab;
use crate::error::{Error, Result};

/// GPT-2's pattern, as llama.cpp's hand-written splitter implements it.
const GPT2: &str = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+";
/// Llama 3's pattern, with the case-insensitive group spelled out as llama.cpp does.
const LLAMA3: &str = r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
/// Qwen 2's pattern: Llama 3's with single digits.
const QWEN2: &str = r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// Code points that Unicode 16 made letters, numbers or punctuation and that llama.cpp's
/// category tables (Unicode 15.1, `unicode-data.cpp`) do not have; the regex engine knows
/// Unicode 16, so they are taken out of its classes to classify text as llama.cpp does.
const NEW_IN_UNICODE_16: [(&str, &str); 3] = [
    (
        r"\p{L}",
        r"\x{1C89}-\x{1C8A}\x{A7CB}-\x{A7CD}\x{A7DA}-\x{A7DC}\x{105C0}-\x{105F3}\x{10D4A}-\x{10D65}\x{10D6F}-\x{10D85}\x{10EC2}-\x{10EC4}\x{11380}-\x{11389}\x{1138B}\x{1138E}\x{11390}-\x{113B5}\x{113B7}\x{113D1}\x{113D3}\x{11BC0}-\x{11BE0}\x{13460}-\x{143FA}\x{16100}-\x{1611D}\x{16D40}-\x{16D6C}\x{18CFF}\x{1E5D0}-\x{1E5ED}\x{1E5F0}",
    ),
    (
        r"\p{N}",
        r"\x{10D40}-\x{10D49}\x{116D0}-\x{116E3}\x{11BF0}-\x{11BF9}\x{16130}-\x{16139}\x{16D70}-\x{16D79}\x{1CCF0}-\x{1CCF9}\x{1E5F1}-\x{1E5FA}",
    ),
    (
        r"\p{P}",
        r"\x{1B4E}-\x{1B4F}\x{1B7F}\x{10D6E}\x{113D4}-\x{113D5}\x{113D7}-\x{113D8}\x{11BE1}\x{16D6D}-\x{16D6F}\x{1E5FF}",
    ),
];

/// Rewrites `\p{L}`, `\p{N}` and `\p{P}` as the classes llama.cpp's tables give (a nested
/// class, valid both alone and inside brackets).
fn with_llama_cpp_categories(regex: &str) -> String {
    NEW_IN_UNICODE_16
        .iter()
        .fold(regex.to_string(), |regex, (class, newer)| {
            regex.replace(class, &format!("[{class}--[{newer}]]"))
        })
}

/// A pre-tokenizer family (llama.cpp's `LLAMA_VOCAB_PRE_TYPE_*`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BpePre {
    /// llama.cpp's fallback: punctuation runs, GPT-2, number runs, digit triples.
    Default,
    /// GPT-2's regex alone.
    Gpt2,
    /// Every digit on its own, then GPT-2's regex (SmolLM, StarCoder, ...).
    Smollm,
    /// Qwen 2's regex.
    Qwen2,
    /// Llama 3's regex; a piece that is already a token skips the merges.
    Llama3,
    /// Falcon's: punctuation runs, GPT-2, digit triples.
    Falcon,
}

impl BpePre {
    /// The family llama.cpp selects for a `tokenizer.ggml.pre` value, if it is one of ours.
    pub fn from_name(name: &str) -> Option<Self> {
        Some(match name {
            "default" => BpePre::Default,
            "gpt2" | "gpt-2" | "phi-2" | "mpt" | "olmo" | "jais" | "jina-es" | "jina-de"
            | "jina-v2-es" | "jina-v2-de" | "gigachat" | "exaone4" => BpePre::Gpt2,
            "smollm" | "starcoder" | "refact" | "command-r" | "codeshell" | "exaone"
            | "minerva-7b" => BpePre::Smollm,
            "qwen2" | "deepseek-r1-qwen" | "megrez" | "stablelm2" | "hunyuan" => BpePre::Qwen2,
            "llama3" | "llama-v3" | "llama-bpe" | "falcon3" | "falcon-h1" | "pixtral"
            | "midm-2.0" | "lfm2" | "dbrx" | "smaug-bpe" | "chatglm-bpe" | "glm4" => BpePre::Llama3,
            "falcon" => BpePre::Falcon,
            _ => return None,
        })
    }

    /// The regexes, applied in order.
    pub fn regexes(self) -> &'static [&'static str] {
        match self {
            BpePre::Default => &[r"[\p{P}\$\+<=>\^~\|]+", GPT2, r"\p{N}+", r"[0-9][0-9][0-9]"],
            BpePre::Gpt2 => &[GPT2],
            BpePre::Smollm => &[r"\p{N}", GPT2],
            BpePre::Qwen2 => &[QWEN2],
            BpePre::Llama3 => &[LLAMA3],
            BpePre::Falcon => &[r"[\p{P}\$\+<=>\^~\|`]+", GPT2, r"[0-9][0-9][0-9]"],
        }
    }

    /// Whether a piece that is itself a token is emitted without merging (llama.cpp's
    /// `ignore_merges`).
    pub fn ignore_merges(self) -> bool {
        self == BpePre::Llama3
    }

    /// Whether llama.cpp prepends BOS by default for this family.
    pub fn default_add_bos(self) -> bool {
        self == BpePre::Llama3
    }
}

/// Builds the `tokenizers` pipeline for a byte-level BPE vocabulary.
///
/// `merges` are GGUF merge strings (`"a b"`, split at the first space after the first
/// byte, as llama.cpp does); a duplicated pair keeps its first rank, and a merge naming a
/// text that is not in the vocabulary is dropped, since BPE can never produce it.
pub(crate) fn build(vocab: &Vocab, merges: &[&str], pre: BpePre) -> Result<tokenizers::Tokenizer> {
    let model_vocab: BpeVocab = vocab
        .iter()
        .map(|(id, text, _)| (text.to_string(), id))
        .collect();
    let mut seen = std::collections::HashSet::with_capacity(merges.len());
    let mut pairs = Vec::with_capacity(merges.len());
    let mut joined = String::new();
    for merge in merges {
        let bytes = merge.as_bytes();
        let Some(space) = bytes.iter().skip(1).position(|&b| b == b' ').map(|i| i + 1) else {
            continue;
        };
        let (left, right) = (&merge[..space], &merge[space + 1..]);
        joined.clear();
        joined.push_str(left);
        joined.push_str(right);
        let (Some(left_id), Some(right_id), Some(_)) =
            (vocab.id(left), vocab.id(right), vocab.id(&joined))
        else {
            continue;
        };
        if seen.insert((left_id, right_id)) {
            pairs.push((left.to_string(), right.to_string()));
        }
    }
    let model = BPE::builder()
        .vocab_and_merges(model_vocab, pairs)
        .ignore_merges(pre.ignore_merges())
        .build()
        .map_err(|e| Error::Tokenizer(format!("building the BPE model: {e}")))?;

    let mut steps: Vec<PreTokenizerWrapper> = Vec::new();
    for regex in pre.regexes() {
        let split = Split::new(
            SplitPattern::Regex(with_llama_cpp_categories(regex)),
            SplitDelimiterBehavior::Isolated,
            false,
        )
        .map_err(|e| Error::Tokenizer(format!("pre-tokenizer regex {regex:?}: {e}")))?;
        steps.push(split.into());
    }
    steps.push(ByteLevel::new(false, false, false).into());

    let mut tokenizer = tokenizers::Tokenizer::new(model);
    tokenizer
        .with_pre_tokenizer(Some(Sequence::new(steps)))
        .with_decoder(Some(ByteLevelDecoder::default()));
    let specials: Vec<AddedToken> = vocab
        .iter()
        .filter(|(_, _, kind)| kind.is_special())
        .map(|(_, text, _)| AddedToken::from(text.to_string(), true))
        .collect();
    tokenizer.add_special_tokens(&specials);
    Ok(tokenizer)
}

/// GPT-2's byte-to-character table, inverted: the byte each printable character stands for.
pub(crate) fn char_to_byte_table() -> Vec<Option<u8>> {
    let mut table = vec![None; 0x144];
    let mut next_extra = 0x100usize;
    for byte in 0u8..=255 {
        let printable = matches!(byte, 0x21..=0x7E | 0xA1..=0xAC | 0xAE..=0xFF);
        let index = if printable {
            usize::from(byte)
        } else {
            next_extra += 1;
            next_extra - 1
        };
        table[index] = Some(byte);
    }
    table
}

/// The bytes a byte-level token text stands for; a character outside GPT-2's alphabet is
/// kept as its own UTF-8.
pub(crate) fn token_bytes(text: &str, table: &[Option<u8>], out: &mut Vec<u8>) {
    let mut buf = [0u8; 4];
    for c in text.chars() {
        match table.get(c as usize).copied().flatten() {
            Some(byte) => out.push(byte),
            None => out.extend_from_slice(c.encode_utf8(&mut buf).as_bytes()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::vocab::TokenKind;
    use super::*;

    fn encode(tokenizer: &tokenizers::Tokenizer, vocab: &Vocab, text: &str) -> Vec<String> {
        let ids = tokenizer
            .encode_fast(text, false)
            .unwrap()
            .get_ids()
            .to_vec();
        ids.iter()
            .map(|&id| vocab.text(id).unwrap().to_string())
            .collect()
    }

    fn toy(pre: BpePre, merges: &[&str]) -> (Vocab, tokenizers::Tokenizer) {
        let table = char_to_byte_table();
        let mut texts: Vec<String> = (0..table.len())
            .filter(|&c| table[c].is_some())
            .map(|c| char::from_u32(c as u32).unwrap().to_string())
            .collect();
        for extra in ["ab", "abc", "bc", "Ġa", "Ġab", "12", "123", "'s", "<|end|>"] {
            texts.push(extra.to_string());
        }
        let kinds = texts
            .iter()
            .map(|t| {
                if t == "<|end|>" {
                    TokenKind::Control
                } else {
                    TokenKind::Normal
                }
            })
            .collect();
        let vocab = Vocab::new(texts, kinds).unwrap();
        let tokenizer = build(&vocab, merges, pre).unwrap();
        (vocab, tokenizer)
    }

    #[test]
    fn merges_apply_by_rank() {
        // "b c" outranks "a b": "abc" becomes "a" "bc", then no merge "a bc" exists.
        let (vocab, tk) = toy(BpePre::Gpt2, &["b c", "a b", "ab c"]);
        assert_eq!(encode(&tk, &vocab, "abc"), vec!["a", "bc"]);
        let (vocab, tk) = toy(BpePre::Gpt2, &["a b", "b c", "ab c"]);
        assert_eq!(encode(&tk, &vocab, "abc"), vec!["abc"]);
    }

    #[test]
    fn spaces_and_pre_tokenizer_splits() {
        let (vocab, tk) = toy(BpePre::Gpt2, &["Ġ a", "Ġa b", "1 2", "12 3"]);
        assert_eq!(encode(&tk, &vocab, " ab 123"), vec!["Ġab", "Ġ", "123"]);
        // SmolLM splits every digit before merging.
        let (vocab, tk) = toy(BpePre::Smollm, &["Ġ a", "Ġa b", "1 2", "12 3"]);
        assert_eq!(encode(&tk, &vocab, "123"), vec!["1", "2", "3"]);
    }

    #[test]
    fn bad_merges_are_dropped_and_duplicates_keep_their_first_rank() {
        let (vocab, tk) = toy(BpePre::Gpt2, &["x", "q z", "b c", "a b", "b c"]);
        assert_eq!(encode(&tk, &vocab, "abc"), vec!["a", "bc"]);
    }

    #[test]
    fn letters_new_in_unicode_16_are_not_letters() {
        // U+10D50 (Garay, Unicode 16) is not a letter for llama.cpp: it joins the
        // apostrophe as punctuation, so "'s" is not split off as a contraction.
        let (vocab, tk) = toy(BpePre::Qwen2, &["' s"]);
        let pieces = encode(&tk, &vocab, "\u{10D50}'s");
        assert_eq!(pieces[pieces.len() - 2..], ["'", "s"]);
        // U+0905 (Devanagari A) is a letter: "'s" is a contraction piece of its own.
        let pieces = encode(&tk, &vocab, "\u{905}'s");
        assert_eq!(pieces.last().map(String::as_str), Some("'s"));
    }

    #[test]
    fn byte_table_round_trips() {
        let table = char_to_byte_table();
        let mut bytes = Vec::new();
        token_bytes("ĠhiĊ", &table, &mut bytes);
        assert_eq!(bytes, b" hi\n");
        assert_eq!(table.iter().flatten().count(), 256);
    }
}
