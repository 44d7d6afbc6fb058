//! Stop strings in streamed text.
//!
//! Generation stops where a stop string first appears; while streaming, the tail of the text
//! that could still grow into a stop string is held back so that no part of a stop string is
//! ever shown. Offsets are byte indices and always fall on `char` boundaries.

/// Finds stop strings in text generated so far.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StopMatcher {
    stops: Vec<String>,
}

impl StopMatcher {
    /// A matcher for `stop`; empty strings are ignored (they would stop before any text).
    pub fn new(stop: &[String]) -> Self {
        Self {
            stops: stop.iter().filter(|s| !s.is_empty()).cloned().collect(),
        }
    }

    /// Whether there is no stop string to look for.
    pub fn is_empty(&self) -> bool {
        self.stops.is_empty()
    }

    /// Given the full text generated so far, the byte index where the earliest stop string
    /// starts, if any occurs. The output is `&text[..index]`.
    pub fn find(&self, text: &str) -> Option<usize> {
        self.stops
            .iter()
            .filter_map(|stop| text.find(stop.as_str()))
            .min()
    }

    /// How many trailing bytes of `text` could be the start of a stop string: the longest
    /// proper prefix of any stop string that `text` ends with. Those bytes are held back when
    /// streaming until more text settles them. Always on a `char` boundary of `text`.
    pub fn holdback(&self, text: &str) -> usize {
        self.stops
            .iter()
            .filter_map(|stop| {
                // Prefixes on char boundaries only, longest first; a suffix of `text` equal to
                // a valid UTF-8 prefix starts on a char boundary of `text` too.
                stop.char_indices()
                    .rev()
                    .map(|(i, _)| i)
                    .find(|&len| len > 0 && text.ends_with(&stop[..len]))
            })
            .max()
            .unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn matcher(stops: &[&str]) -> StopMatcher {
        StopMatcher::new(&stops.iter().map(|s| s.to_string()).collect::<Vec<_>>())
    }

    #[test]
    fn find_returns_the_earliest_start() {
        let m = matcher(&["END", "\n\n", "xEN"]);
        assert_eq!(m.find("hello"), None);
        assert_eq!(m.find("hello END"), Some(6));
        assert_eq!(m.find("a\n\nb END"), Some(1));
        assert_eq!(m.find("END again END"), Some(0));
    }

    #[test]
    fn find_with_overlapping_stops() {
        let m = matcher(&["bcd", "abc", "c"]);
        assert_eq!(m.find("xxabcd"), Some(2));
        let m = matcher(&["aab"]);
        // The match starts inside a run of the stop's first byte.
        assert_eq!(m.find("aaab"), Some(1));
    }

    #[test]
    fn holdback_is_the_longest_pending_prefix() {
        let m = matcher(&["</s>", "<|im_end|>"]);
        assert_eq!(m.holdback("hello"), 0);
        assert_eq!(m.holdback("hello <"), 1);
        assert_eq!(m.holdback("hello </"), 2);
        assert_eq!(m.holdback("hello <|im_"), 5);
        // A complete stop is for `find`, not a pending prefix.
        assert_eq!(m.holdback("hello </s>"), 0);
        assert_eq!(m.find("hello </s>"), Some(6));
    }

    #[test]
    fn holdback_with_overlapping_stops() {
        let m = matcher(&["abab", "bc"]);
        assert_eq!(m.holdback("xab"), 2);
        assert_eq!(m.holdback("xaba"), 3);
        assert_eq!(m.holdback("xb"), 1);
        assert_eq!(m.holdback("xabc"), 0);
    }

    #[test]
    fn multi_byte_characters() {
        let m = matcher(&["終わり", "é!"]);
        let text = "fin: 終わ";
        let held = m.holdback(text);
        assert_eq!(held, "終わ".len());
        assert!(text.is_char_boundary(text.len() - held));
        assert_eq!(m.holdback("café"), "é".len());
        assert_eq!(m.holdback("終"), 3);
        // `é` (C3 A9) and `ã` (C3 A3) share a first byte: no partial-char holdback.
        assert_eq!(m.holdback("ã"), 0);
        let text = "おはよう終わり!";
        assert_eq!(m.find(text), Some("おはよう".len()));
        assert_eq!(&text[..m.find(text).unwrap()], "おはよう");
    }

    #[test]
    fn empty_stops_are_ignored() {
        let m = matcher(&["", "x"]);
        assert_eq!(m.find("abc"), None);
        assert_eq!(m.holdback("abc"), 0);
        assert!(matcher(&[""]).is_empty());
        assert_eq!(StopMatcher::default().find("anything"), None);
    }
}
