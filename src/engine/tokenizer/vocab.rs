//! The vocabulary shared by every tokenizer kind, and the special-token splitter.
//!
//! A [`Vocab`] holds each token's text and kind (llama.cpp's token types) plus the text→id
//! map. [`SpecialSplitter`] cuts raw text at literal occurrences of control, user-defined and
//! unknown tokens exactly as llama.cpp's `tokenizer_st_partition` does: longer tokens win
//! everywhere, then left-to-right non-overlapping matches; what remains is plain text.

use std::hash::{BuildHasher, RandomState};

use hashbrown::HashTable;

use crate::error::{Error, Result};

/// What a token is, from `tokenizer.ggml.token_type` (llama.cpp's `LLAMA_TOKEN_TYPE_*`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenKind {
    /// An ordinary piece of text (type 1).
    Normal,
    /// The unknown token (type 2).
    Unknown,
    /// A control token such as `<|im_start|>` or `<bos>` (type 3).
    Control,
    /// A user-defined token, matched literally in text before tokenization (type 4).
    UserDefined,
    /// A reserved, unused slot (type 5).
    Unused,
    /// A raw byte, written `<0xXX>` (type 6).
    Byte,
    /// Any other type value.
    Undefined,
}

impl TokenKind {
    /// Maps a GGUF token type number to a kind.
    pub fn from_gguf_type(token_type: i64) -> Self {
        match token_type {
            1 => TokenKind::Normal,
            2 => TokenKind::Unknown,
            3 => TokenKind::Control,
            4 => TokenKind::UserDefined,
            5 => TokenKind::Unused,
            6 => TokenKind::Byte,
            _ => TokenKind::Undefined,
        }
    }

    /// Whether occurrences of this token's text in input are emitted as the token itself.
    pub fn is_special(self) -> bool {
        matches!(
            self,
            TokenKind::Control | TokenKind::UserDefined | TokenKind::Unknown
        )
    }
}

/// Token texts and kinds, indexed by id, with the reverse map. The texts are held once, in
/// one buffer; the reverse map holds only ids, hashed by their texts (a vocabulary of 150k
/// tokens took about 15 MB more as a `Vec<String>` plus a `HashMap<String, u32>`).
#[derive(Debug, Clone)]
pub(crate) struct Vocab {
    /// Every token's text, concatenated: token `i` is `text[ends[i - 1]..ends[i]]`.
    text: String,
    ends: Vec<usize>,
    kinds: Vec<TokenKind>,
    ids: HashTable<u32>,
    hasher: RandomState,
}

impl Vocab {
    /// Builds a vocabulary. An empty token text becomes `[EMPTY_<id>]` and, for duplicated
    /// texts, the map keeps the last id (both as llama.cpp does).
    pub fn new(texts: Vec<String>, kinds: Vec<TokenKind>) -> Result<Self> {
        if texts.len() != kinds.len() {
            return Err(Error::Tokenizer(format!(
                "{} token texts but {} token types",
                texts.len(),
                kinds.len()
            )));
        }
        if u32::try_from(texts.len()).is_err() {
            return Err(Error::Tokenizer(format!(
                "{} tokens do not fit 32-bit ids",
                texts.len()
            )));
        }
        let mut text = String::with_capacity(texts.iter().map(String::len).sum());
        let mut ends = Vec::with_capacity(texts.len());
        for (id, t) in texts.into_iter().enumerate() {
            if t.is_empty() {
                text.push_str(&format!("[EMPTY_{id}]"));
            } else {
                text.push_str(&t);
            }
            ends.push(text.len());
        }
        let mut vocab = Self {
            text,
            ends,
            kinds,
            ids: HashTable::with_capacity(0),
            hasher: RandomState::new(),
        };
        let mut ids = HashTable::with_capacity(vocab.len());
        for id in 0..vocab.len() as u32 {
            let t = vocab.text_of(id);
            let hash = vocab.hasher.hash_one(t);
            match ids.find_mut(hash, |&other| vocab.text_of(other) == t) {
                Some(slot) => *slot = id,
                None => {
                    ids.insert_unique(hash, id, |&other| {
                        vocab.hasher.hash_one(vocab.text_of(other))
                    });
                }
            }
        }
        vocab.ids = ids;
        Ok(vocab)
    }

    /// The text of `id`, which must be in range.
    fn text_of(&self, id: u32) -> &str {
        let i = id as usize;
        let start = if i == 0 { 0 } else { self.ends[i - 1] };
        &self.text[start..self.ends[i]]
    }

    pub fn len(&self) -> usize {
        self.ends.len()
    }

    pub fn text(&self, id: u32) -> Option<&str> {
        ((id as usize) < self.len()).then(|| self.text_of(id))
    }

    pub fn kind(&self, id: u32) -> Option<TokenKind> {
        self.kinds.get(id as usize).copied()
    }

    pub fn id(&self, text: &str) -> Option<u32> {
        let hash = self.hasher.hash_one(text);
        self.ids.find(hash, |&id| self.text_of(id) == text).copied()
    }

    /// Marks the token with `text`, if any, as a control token (llama.cpp does this for
    /// end-of-generation tokens that a converter left as normal text).
    pub fn force_control(&mut self, text: &str) {
        if let Some(id) = self.id(text) {
            let kind = &mut self.kinds[id as usize];
            if !kind.is_special() {
                *kind = TokenKind::Control;
            }
        }
    }

    /// Every (id, text) pair, in id order.
    pub fn iter(&self) -> impl Iterator<Item = (u32, &str, TokenKind)> {
        self.kinds
            .iter()
            .enumerate()
            .map(|(id, kind)| (id as u32, self.text_of(id as u32), *kind))
    }
}

/// A piece of input after special tokens have been cut out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Fragment<'a> {
    /// Plain text, to be tokenized by the model's algorithm.
    Text(&'a str),
    /// A special token written literally in the input.
    Token(u32),
}

/// One node of a byte trie over the special tokens' texts.
#[derive(Debug, Clone, Default)]
struct TrieNode {
    /// Children sorted by byte.
    children: Vec<(u8, u32)>,
    /// The token whose text ends here.
    token: Option<u32>,
}

/// Finds special tokens in raw text (see the module docs for the matching rule).
#[derive(Debug, Clone)]
pub(crate) struct SpecialSplitter {
    nodes: Vec<TrieNode>,
}

/// A candidate occurrence of a special token.
#[derive(Debug, Clone, Copy)]
struct Occurrence {
    start: usize,
    len: usize,
    token: u32,
}

impl SpecialSplitter {
    /// Indexes the texts of every special token of `vocab`.
    pub fn new(vocab: &Vocab) -> Self {
        let mut splitter = Self {
            nodes: vec![TrieNode::default()],
        };
        for (id, text, kind) in vocab.iter() {
            if kind.is_special() {
                splitter.insert(text.as_bytes(), id);
            }
        }
        splitter
    }

    fn insert(&mut self, text: &[u8], id: u32) {
        let mut node = 0usize;
        for &byte in text {
            node = match self.nodes[node]
                .children
                .binary_search_by_key(&byte, |&(b, _)| b)
            {
                Ok(i) => self.nodes[node].children[i].1 as usize,
                Err(i) => {
                    let child = self.nodes.len();
                    self.nodes.push(TrieNode::default());
                    self.nodes[node].children.insert(i, (byte, child as u32));
                    child
                }
            };
        }
        // With duplicated texts the first id wins, as one text is searched once.
        self.nodes[node].token.get_or_insert(id);
    }

    fn child(&self, node: usize, byte: u8) -> Option<usize> {
        let children = &self.nodes[node].children;
        children
            .binary_search_by_key(&byte, |&(b, _)| b)
            .ok()
            .map(|i| children[i].1 as usize)
    }

    /// Splits `text` into plain-text fragments and special tokens, in order.
    pub fn split<'a>(&self, text: &'a str) -> Vec<Fragment<'a>> {
        let bytes = text.as_bytes();
        let mut found = Vec::new();
        for start in 0..bytes.len() {
            let mut node = 0usize;
            for (offset, &byte) in bytes[start..].iter().enumerate() {
                match self.child(node, byte) {
                    Some(next) => node = next,
                    None => break,
                }
                if let Some(token) = self.nodes[node].token {
                    found.push(Occurrence {
                        start,
                        len: offset + 1,
                        token,
                    });
                }
            }
        }
        if found.is_empty() {
            return if text.is_empty() {
                Vec::new()
            } else {
                vec![Fragment::Text(text)]
            };
        }

        // llama.cpp takes tokens longest first and, for each, its non-overlapping
        // occurrences left to right among the text not yet claimed.
        found.sort_unstable_by_key(|o| (std::cmp::Reverse(o.len), o.token, o.start));
        let mut claimed = vec![false; bytes.len()];
        let mut accepted = Vec::new();
        for occurrence in found {
            let span = occurrence.start..occurrence.start + occurrence.len;
            if claimed[span.clone()].iter().any(|&c| c) {
                continue;
            }
            claimed[span].fill(true);
            accepted.push(occurrence);
        }
        accepted.sort_unstable_by_key(|o| o.start);

        let mut fragments = Vec::with_capacity(2 * accepted.len() + 1);
        let mut cursor = 0;
        for occurrence in accepted {
            if occurrence.start > cursor {
                fragments.push(Fragment::Text(&text[cursor..occurrence.start]));
            }
            fragments.push(Fragment::Token(occurrence.token));
            cursor = occurrence.start + occurrence.len;
        }
        if cursor < text.len() {
            fragments.push(Fragment::Text(&text[cursor..]));
        }
        fragments
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vocab(entries: &[(&str, TokenKind)]) -> Vocab {
        Vocab::new(
            entries.iter().map(|(t, _)| t.to_string()).collect(),
            entries.iter().map(|(_, k)| *k).collect(),
        )
        .unwrap()
    }

    #[test]
    fn splits_special_tokens_out_of_text() {
        let v = vocab(&[
            ("a", TokenKind::Normal),
            ("<|im_start|>", TokenKind::Control),
            ("<|im_end|>", TokenKind::Control),
            ("<tool>", TokenKind::UserDefined),
            ("<|unused|>", TokenKind::Unused),
        ]);
        let s = SpecialSplitter::new(&v);
        assert_eq!(
            s.split("<|im_start|>user\nhi<|im_end|><tool>x<|unused|>"),
            vec![
                Fragment::Token(1),
                Fragment::Text("user\nhi"),
                Fragment::Token(2),
                Fragment::Token(3),
                Fragment::Text("x<|unused|>"),
            ]
        );
        assert_eq!(s.split("plain"), vec![Fragment::Text("plain")]);
        assert!(s.split("").is_empty());
    }

    #[test]
    fn longer_tokens_win_even_when_a_shorter_one_starts_earlier() {
        let v = vocab(&[
            ("\n", TokenKind::UserDefined),
            ("\n\n", TokenKind::UserDefined),
            ("ab", TokenKind::Control),
            ("bcd", TokenKind::Control),
        ]);
        let s = SpecialSplitter::new(&v);
        // Longest first: "\n\n" twice, then the single "\n" left over.
        assert_eq!(
            s.split("\n\n\n\n\n"),
            vec![Fragment::Token(1), Fragment::Token(1), Fragment::Token(0)]
        );
        // "bcd" is longer than "ab", so it is taken although "ab" starts first.
        assert_eq!(
            s.split("abcd"),
            vec![Fragment::Text("a"), Fragment::Token(3)]
        );
    }

    #[test]
    fn empty_texts_are_renamed_and_duplicates_keep_the_last_id() {
        let v = vocab(&[
            ("", TokenKind::Normal),
            ("x", TokenKind::Normal),
            ("x", TokenKind::Normal),
        ]);
        assert_eq!(v.text(0), Some("[EMPTY_0]"));
        assert_eq!(v.id("x"), Some(2));
    }

    #[test]
    fn every_text_finds_its_id_in_a_large_vocabulary() {
        let texts: Vec<String> = (0..5000).map(|i| format!("t{i}")).collect();
        let entries: Vec<(&str, TokenKind)> = texts
            .iter()
            .map(|t| (t.as_str(), TokenKind::Normal))
            .collect();
        let v = vocab(&entries);
        for (i, t) in texts.iter().enumerate() {
            assert_eq!(v.id(t), Some(i as u32), "{t}");
            assert_eq!(v.text(i as u32), Some(t.as_str()));
        }
        assert_eq!(v.id("t5000"), None);
        assert_eq!(v.id("t"), None);
        assert_eq!(v.text(5000), None);
    }
}
