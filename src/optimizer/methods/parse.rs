//! Lenient parsing of a revised component out of an optimizer reply.
//!
//! Small models rarely follow an output format exactly. For each component we try, in
//! order: `<name>...</name>` tags (case-insensitive, a missing closing tag accepted when the
//! reply was cut), generic tags (`<prompt>`, `<instructions>`, `<revised_prompt>`, ...), the
//! last fenced block, then a "Revised ..." / "New ..." heading followed by text. Generic
//! fallbacks apply only when a single component is being optimized, since they cannot say
//! which component they hold. A reply that yields nothing usable returns the reason, which
//! the caller sends back in a re-ask.

use std::collections::BTreeMap;

/// What the output format shows between the tags; a reply that copies it has no text.
pub const PLACEHOLDER: &str = "(the new text)";

/// Shortest acceptable component text, in characters.
const MIN_CHARS: usize = 12;

const GENERIC_TAGS: [&str; 8] = [
    "prompt",
    "instructions",
    "instruction",
    "revised_prompt",
    "new_prompt",
    "revised",
    "component",
    "answer",
];

/// Parses the components named in `names` from `reply`. `Err` carries a reason fit to send
/// back to the model.
pub fn parse_components(reply: &str, names: &[String]) -> Result<BTreeMap<String, String>, String> {
    let mut out = BTreeMap::new();
    let mut too_short = None;
    for name in names {
        let found = tagged(reply, name).or_else(|| {
            if names.len() == 1 {
                GENERIC_TAGS
                    .iter()
                    .find_map(|t| tagged(reply, t))
                    .or_else(|| fenced(reply))
                    .or_else(|| headed(reply))
            } else {
                None
            }
        });
        if let Some(text) = found.map(|t| clean(&t)) {
            if text.chars().count() >= MIN_CHARS {
                out.insert(name.clone(), text);
            } else {
                too_short = Some(name.clone());
            }
        }
    }
    if !out.is_empty() {
        return Ok(out);
    }
    let wanted: Vec<String> = names.iter().map(|n| format!("<{n}> and </{n}>")).collect();
    Err(match too_short {
        Some(n) => format!("the text between <{n}> and </{n}> is empty or too short"),
        None => format!(
            "it does not contain the new instructions between {}",
            wanted.join(", ")
        ),
    })
}

/// Text between `<tag>` and `</tag>`; the last complete pair wins (models often echo the
/// format first). An unclosed final tag yields the rest of the reply. Tags match ignoring
/// ASCII case, on the reply itself: lowercasing a copy would shift byte offsets where a
/// character changes length (`İ` is two bytes, its lowercase three).
fn tagged(reply: &str, tag: &str) -> Option<String> {
    let open = format!("<{tag}>");
    let close = format!("</{tag}>");
    let mut best = None;
    let mut from = 0;
    while let Some(at) = find_ignoring_ascii_case(reply, &open, from) {
        let start = at + open.len();
        match find_ignoring_ascii_case(reply, &close, start) {
            Some(end) => {
                let body = &reply[start..end];
                let text = clean(body);
                if !text.is_empty() && text != PLACEHOLDER {
                    best = Some(body.to_string());
                }
                from = end + close.len();
            }
            None => {
                if best.is_none() && clean(&reply[start..]) != PLACEHOLDER {
                    best = Some(reply[start..].to_string());
                }
                break;
            }
        }
    }
    best
}

/// The byte offset of the first `needle` in `haystack` at or after `from`, ignoring ASCII
/// case; offsets are always character boundaries of `haystack`.
fn find_ignoring_ascii_case(haystack: &str, needle: &str, from: usize) -> Option<usize> {
    let rest = haystack.get(from..)?;
    rest.char_indices().map(|(i, _)| from + i).find(|&i| {
        haystack
            .get(i..i + needle.len())
            .is_some_and(|s| s.eq_ignore_ascii_case(needle))
    })
}

/// The content of the last fenced block with enough text.
fn fenced(reply: &str) -> Option<String> {
    let parts: Vec<&str> = reply.split("```").collect();
    // Odd indices are inside fences; the first line of a block may be a language tag.
    parts
        .iter()
        .enumerate()
        .filter(|(i, _)| i % 2 == 1)
        .map(|(_, body)| {
            let mut lines = body.lines();
            let first = lines.next().unwrap_or_default();
            if first.trim().chars().all(|c| c.is_ascii_alphanumeric()) {
                lines.collect::<Vec<_>>().join("\n")
            } else {
                body.to_string()
            }
        })
        .rfind(|b| clean(b).chars().count() >= MIN_CHARS)
}

/// Text after a heading such as `## Revised instructions`, `**New prompt:**` or
/// `Improved system prompt:`, up to the next heading.
fn headed(reply: &str) -> Option<String> {
    let lines: Vec<&str> = reply.lines().collect();
    let is_heading = |l: &str| {
        let t = l
            .trim()
            .trim_start_matches('#')
            .trim()
            .trim_matches('*')
            .trim()
            .to_lowercase();
        let starts = ["revised", "new ", "improved", "updated", "final"];
        starts.iter().any(|s| t.starts_with(s))
            && (t.contains("prompt") || t.contains("instruction") || t.contains("version"))
            && t.len() < 60
    };
    let start = lines.iter().rposition(|l| is_heading(l))?;
    let heading = lines[start];
    // "New prompt: text on the same line" counts too.
    let same_line = heading
        .split_once(':')
        .map(|(_, rest)| rest.trim().trim_matches('*').trim())
        .unwrap_or("");
    let mut body: Vec<&str> = Vec::new();
    if !same_line.is_empty() {
        body.push(same_line);
    }
    for l in &lines[start + 1..] {
        if l.trim_start().starts_with('#') && !body.is_empty() {
            break;
        }
        body.push(l);
    }
    Some(body.join("\n"))
}

/// Trims whitespace, stray fences, quotes and tag fragments.
fn clean(text: &str) -> String {
    let mut t = text.trim().trim_matches('`').trim();
    for q in ['"', '\''] {
        if t.len() > 2 && t.starts_with(q) && t.ends_with(q) {
            t = &t[1..t.len() - 1];
        }
    }
    let mut s = t.trim().to_string();
    // A truncated reply can end in half a closing tag.
    if let Some(i) = s.rfind("</") {
        if !s[i..].contains('>') || s[i..].len() < 30 {
            s.truncate(i);
        }
    }
    s.trim().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one(reply: &str) -> Result<String, String> {
        parse_components(reply, &["system_prompt".to_string()]).map(|m| m["system_prompt"].clone())
    }

    #[test]
    fn the_formats_placeholder_is_not_a_component() {
        let names = vec!["system_prompt".to_string()];
        let echo = format!("<system_prompt>\n{PLACEHOLDER}\n</system_prompt>");
        assert!(parse_components(&echo, &names).is_err());
        let unclosed = format!("<system_prompt>\n{PLACEHOLDER}\n");
        assert!(parse_components(&unclosed, &names).is_err());
        let later = format!("{echo}\n<system_prompt>Count twice, then answer.</system_prompt>");
        assert_eq!(
            parse_components(&later, &names).unwrap()["system_prompt"],
            "Count twice, then answer."
        );
    }

    #[test]
    fn named_tags_win_and_last_pair_is_used() {
        let r = "Format: <system_prompt>...</system_prompt>\nHere:\n<System_Prompt>\nCount each item, keep a running total.\n</system_prompt>";
        assert_eq!(one(r).unwrap(), "Count each item, keep a running total.");
    }

    #[test]
    fn unclosed_tag_takes_the_rest() {
        assert_eq!(
            one("<system_prompt>Add the numbers one by one.</sys").unwrap(),
            "Add the numbers one by one."
        );
    }

    #[test]
    fn generic_tags_fences_and_headings() {
        assert_eq!(
            one("<prompt>List every item, then count.</prompt>").unwrap(),
            "List every item, then count."
        );
        assert_eq!(
            one("Sure!\n```text\nList every item, then count.\n```\nDone").unwrap(),
            "List every item, then count."
        );
        let h = "Analysis blah.\n\n## Revised prompt\nList every item, then count them.\n";
        assert_eq!(one(h).unwrap(), "List every item, then count them.");
        assert_eq!(
            one("**New prompt:** Always list every item first.").unwrap(),
            "Always list every item first."
        );
    }

    #[test]
    fn nothing_usable_gives_a_reason() {
        let e = one("I think the assistant should count better.").unwrap_err();
        assert!(e.contains("<system_prompt>"), "{e}");
        let e = one("<system_prompt></system_prompt>").unwrap_err();
        assert!(
            e.contains("too short") || e.contains("does not contain"),
            "{e}"
        );
    }

    #[test]
    fn characters_that_change_length_when_lowercased_do_not_shift_the_slices() {
        // 'İ' lowercases to three bytes: offsets from a lowercased copy fall inside
        // characters of the reply or past its end.
        let r = "İİİİ <system_prompt>Count İstanbul's items one by one.</system_prompt> İİ";
        assert_eq!(one(r).unwrap(), "Count İstanbul's items one by one.");
        let r = "İİİİİİİİİİİİ<SYSTEM_PROMPT>Keep a running total of İtems.";
        assert_eq!(one(r).unwrap(), "Keep a running total of İtems.");
        // Shifted by one byte, the old slice started inside 'é' and panicked.
        let r = "İ<system_prompt>éééé long enough text</system_prompt>";
        assert_eq!(one(r).unwrap(), "éééé long enough text");
        let r = "<prompt>ẞẞẞ İ Ⱥ — list then count</prompt>İİİİİİİİİİİİİİİİİİİİ";
        assert_eq!(one(r).unwrap(), "ẞẞẞ İ Ⱥ — list then count");
    }

    #[test]
    fn several_components_need_their_own_tags() {
        let names = vec!["a".to_string(), "b".to_string()];
        let m =
            parse_components("<b>Second component text.</b> ```ignored fenced```", &names).unwrap();
        assert_eq!(m.len(), 1);
        assert!(parse_components("```just a fence with text```", &names).is_err());
    }
}
