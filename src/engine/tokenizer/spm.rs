//! SentencePiece-style tokenization (`tokenizer.ggml.model = "llama"`), as llama.cpp does it.
//!
//! Spaces become `▁` (U+2581), the text is split into UTF-8 characters, and adjacent symbols
//! are merged greedily: always the pair whose concatenation is a vocabulary entry with the
//! highest score, the leftmost on ties. Symbols that are not vocabulary entries at the end
//! fall back to byte tokens `<0xXX>`. A priority queue over bigrams keeps this
//! O(n log n) in the number of characters.

use std::cmp::Ordering;
use std::collections::BinaryHeap;

use super::vocab::Vocab;
use crate::error::{Error, Result};

/// The escaped space, `▁` (U+2581).
pub(crate) const SPACE_MARK: &str = "\u{2581}";

/// The SentencePiece merge algorithm over a vocabulary with scores.
#[derive(Debug, Clone)]
pub(crate) struct SpmEncoder {
    scores: Vec<f32>,
    /// The token for each byte value, when the vocabulary has one.
    byte_tokens: Vec<Option<u32>>,
    add_space_prefix: bool,
}

/// A symbol: a byte range of the escaped text, linked to its neighbours.
#[derive(Debug, Clone, Copy)]
struct Symbol {
    start: usize,
    len: usize,
    prev: Option<usize>,
    next: Option<usize>,
}

/// A candidate merge of two adjacent symbols.
#[derive(Debug, Clone, Copy)]
struct Bigram {
    score: f32,
    left: usize,
    right: usize,
    /// Byte length of the merged text, to detect candidates made stale by other merges.
    size: usize,
}

impl PartialEq for Bigram {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}

impl Eq for Bigram {}

impl PartialOrd for Bigram {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Bigram {
    /// Higher score first, then the leftmost pair (llama.cpp's `llm_bigram_spm` order).
    fn cmp(&self, other: &Self) -> Ordering {
        self.score
            .partial_cmp(&other.score)
            .unwrap_or(Ordering::Equal)
            .then_with(|| other.left.cmp(&self.left))
    }
}

impl SpmEncoder {
    /// Builds the encoder; `scores` must have one entry per token.
    pub fn new(vocab: &Vocab, scores: Vec<f32>, add_space_prefix: bool) -> Result<Self> {
        if scores.len() < vocab.len() {
            return Err(Error::Tokenizer(format!(
                "{} scores for {} tokens",
                scores.len(),
                vocab.len()
            )));
        }
        let mut byte_tokens = vec![None; 256];
        for (byte, slot) in byte_tokens.iter_mut().enumerate() {
            *slot = vocab.id(&format!("<0x{byte:02X}>")).or_else(|| {
                // llama.cpp falls back to the byte itself as a one-byte token text.
                u8::try_from(byte)
                    .ok()
                    .filter(u8::is_ascii)
                    .and_then(|b| vocab.id(&char::from(b).to_string()))
            });
        }
        Ok(Self {
            scores,
            byte_tokens,
            add_space_prefix,
        })
    }

    /// Whether a `▁` is put before text at the start and after each special token.
    pub fn add_space_prefix(&self) -> bool {
        self.add_space_prefix
    }

    /// Tokenizes one plain-text fragment. `after_special` is true at the start of the input
    /// and right after a special token, where llama.cpp inserts the space prefix.
    pub fn encode_fragment(
        &self,
        vocab: &Vocab,
        fragment: &str,
        after_special: bool,
        out: &mut Vec<u32>,
    ) -> Result<()> {
        let mut text = String::with_capacity(fragment.len() + 4);
        if self.add_space_prefix && after_special {
            text.push_str(SPACE_MARK);
        }
        for c in fragment.chars() {
            if c == ' ' {
                text.push_str(SPACE_MARK);
            } else {
                text.push(c);
            }
        }
        self.encode_escaped(vocab, &text, out)
    }

    fn encode_escaped(&self, vocab: &Vocab, text: &str, out: &mut Vec<u32>) -> Result<()> {
        let mut symbols: Vec<Symbol> = Vec::with_capacity(text.len());
        for (start, c) in text.char_indices() {
            let index = symbols.len();
            symbols.push(Symbol {
                start,
                len: c.len_utf8(),
                prev: index.checked_sub(1),
                next: None,
            });
            if let Some(prev) = index.checked_sub(1) {
                symbols[prev].next = Some(index);
            }
        }
        if symbols.is_empty() {
            return Ok(());
        }

        let mut queue = BinaryHeap::with_capacity(symbols.len());
        for right in 1..symbols.len() {
            self.push_bigram(vocab, text, &symbols, right - 1, right, &mut queue);
        }
        while let Some(bigram) = queue.pop() {
            let (left, right) = (symbols[bigram.left], symbols[bigram.right]);
            if left.len == 0 || right.len == 0 || left.len + right.len != bigram.size {
                continue;
            }
            symbols[bigram.left].len += right.len;
            symbols[bigram.right].len = 0;
            symbols[bigram.left].next = right.next;
            if let Some(next) = right.next {
                symbols[next].prev = Some(bigram.left);
            }
            if let Some(prev) = left.prev {
                self.push_bigram(vocab, text, &symbols, prev, bigram.left, &mut queue);
            }
            if let Some(next) = right.next {
                self.push_bigram(vocab, text, &symbols, bigram.left, next, &mut queue);
            }
        }

        let mut index = Some(0);
        while let Some(i) = index {
            let symbol = symbols[i];
            let piece = &text[symbol.start..symbol.start + symbol.len];
            match vocab.id(piece) {
                Some(id) => out.push(id),
                None => {
                    for &byte in piece.as_bytes() {
                        let id = self.byte_tokens[usize::from(byte)].ok_or_else(|| {
                            Error::Tokenizer(format!(
                                "no token for byte 0x{byte:02X} (needed for {piece:?}) and no <0x{byte:02X}> in the vocabulary"
                            ))
                        })?;
                        out.push(id);
                    }
                }
            }
            index = symbol.next;
        }
        Ok(())
    }

    fn push_bigram(
        &self,
        vocab: &Vocab,
        text: &str,
        symbols: &[Symbol],
        left: usize,
        right: usize,
        queue: &mut BinaryHeap<Bigram>,
    ) {
        let start = symbols[left].start;
        let size = symbols[left].len + symbols[right].len;
        if let Some(id) = vocab.id(&text[start..start + size]) {
            queue.push(Bigram {
                score: self.scores[id as usize],
                left,
                right,
                size,
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::vocab::TokenKind;
    use super::*;

    /// A toy vocabulary: byte tokens for a few bytes, then pieces with scores.
    fn toy(add_space_prefix: bool) -> (Vocab, SpmEncoder) {
        let mut entries: Vec<(String, TokenKind, f32)> = vec![
            ("<unk>".into(), TokenKind::Unknown, 0.0),
            ("<s>".into(), TokenKind::Control, 0.0),
        ];
        for byte in [0xC3u8, 0xA9, b'!'] {
            entries.push((format!("<0x{byte:02X}>"), TokenKind::Byte, 0.0));
        }
        for (text, score) in [
            ("▁", -1.0),
            ("a", -2.0),
            ("b", -2.0),
            ("c", -2.0),
            ("ab", -5.0),
            ("bc", -3.0),
            ("▁a", -4.0),
            ("▁ab", -6.0),
            ("abc", -1.0),
            ("aa", -7.0),
        ] {
            entries.push((text.into(), TokenKind::Normal, score));
        }
        let vocab = Vocab::new(
            entries.iter().map(|e| e.0.clone()).collect(),
            entries.iter().map(|e| e.1).collect(),
        )
        .unwrap();
        let encoder = SpmEncoder::new(
            &vocab,
            entries.iter().map(|e| e.2).collect(),
            add_space_prefix,
        )
        .unwrap();
        (vocab, encoder)
    }

    fn encode(add_space_prefix: bool, text: &str) -> Vec<String> {
        let (vocab, encoder) = toy(add_space_prefix);
        let mut ids = Vec::new();
        encoder
            .encode_fragment(&vocab, text, true, &mut ids)
            .unwrap();
        ids.iter()
            .map(|&id| vocab.text(id).unwrap().to_string())
            .collect()
    }

    #[test]
    fn merges_the_highest_scoring_pair_first() {
        // "bc" (-3) beats "ab" (-5); then "a"+"bc" = "abc" exists (-1).
        assert_eq!(encode(false, "abc"), vec!["abc"]);
        // With a prefix, "bc" (-3) still goes first, then "a"+"bc" (-1) beats "▁a" (-4).
        assert_eq!(encode(true, "abc"), vec!["▁", "abc"]);
        // Without "c", "▁a" (-4) beats "ab" (-5), then "▁a"+"b" = "▁ab" exists.
        assert_eq!(encode(true, "ab"), vec!["▁ab"]);
    }

    #[test]
    fn ties_go_to_the_leftmost_pair() {
        // Two overlapping "aa" candidates with equal scores: the left one wins.
        assert_eq!(encode(false, "aaa"), vec!["aa", "a"]);
    }

    #[test]
    fn unknown_characters_fall_back_to_bytes() {
        // "é" is not a piece: its two UTF-8 bytes become byte tokens; "!" likewise.
        assert_eq!(
            encode(false, "é!a"),
            vec!["<0xC3>", "<0xA9>", "<0x21>", "a"]
        );
    }

    #[test]
    fn spaces_are_escaped() {
        assert_eq!(encode(false, "a b"), vec!["a", "▁", "b"]);
        assert_eq!(encode(false, " ab"), vec!["▁ab"]);
    }

    #[test]
    fn missing_byte_token_is_an_error() {
        let (vocab, encoder) = toy(false);
        let err = encoder
            .encode_fragment(&vocab, "z", false, &mut Vec::new())
            .unwrap_err();
        assert!(err.to_string().contains("0x7A"), "{err}");
    }
}
