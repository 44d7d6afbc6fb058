//! Line and word diffs (longest common subsequence) for showing how a component changed.

/// The most cells of the LCS table a diff builds; longer inputs are diffed by lines.
const MAX_CELLS: usize = 4_000_000;

/// One step of an edit script.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Edit<'a> {
    Same(&'a str),
    Add(&'a str),
    Remove(&'a str),
}

/// The edit script turning `a` into `b` (additions before removals at a change).
fn edits<'a>(a: &[&'a str], b: &[&'a str]) -> Vec<Edit<'a>> {
    let (n, m) = (a.len(), b.len());
    // lcs[i][j] = length of the LCS of a[i..] and b[j..].
    let mut lcs = vec![vec![0u32; m + 1]; n + 1];
    for i in (0..n).rev() {
        for j in (0..m).rev() {
            lcs[i][j] = if a[i] == b[j] {
                lcs[i + 1][j + 1] + 1
            } else {
                lcs[i + 1][j].max(lcs[i][j + 1])
            };
        }
    }
    let (mut i, mut j) = (0, 0);
    let mut out = Vec::new();
    while i < n || j < m {
        if i < n && j < m && a[i] == b[j] {
            out.push(Edit::Same(a[i]));
            i += 1;
            j += 1;
        } else if j < m && (i == n || lcs[i][j + 1] >= lcs[i + 1][j]) {
            out.push(Edit::Add(b[j]));
            j += 1;
        } else {
            out.push(Edit::Remove(a[i]));
            i += 1;
        }
    }
    out
}

/// A unified-style diff of `old` and `new`: unchanged lines start with two spaces, removed
/// lines with `- `, added lines with `+ `.
pub fn line_diff(old: &str, new: &str) -> String {
    let a: Vec<&str> = old.lines().collect();
    let b: Vec<&str> = new.lines().collect();
    if a.len().saturating_mul(b.len()) > MAX_CELLS {
        // Too long to align: all of the old text out, all of the new text in.
        let removed = a.iter().map(|l| format!("- {l}"));
        let added = b.iter().map(|l| format!("+ {l}"));
        return added.chain(removed).collect::<Vec<_>>().join("\n");
    }
    edits(&a, &b)
        .into_iter()
        .map(|e| match e {
            Edit::Same(l) => format!("  {l}"),
            Edit::Add(l) => format!("+ {l}"),
            Edit::Remove(l) => format!("- {l}"),
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// Words and the whitespace between them, in order, so that joining gives the text back.
fn words(text: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let mut start = 0;
    let mut in_space = None;
    for (i, c) in text.char_indices() {
        let space = c.is_whitespace();
        if in_space.is_some_and(|s| s != space) {
            out.push(&text[start..i]);
            start = i;
        }
        in_space = Some(space);
    }
    if start < text.len() {
        out.push(&text[start..]);
    }
    out
}

/// A word diff of `old` and `new` in the plain style of `git diff --word-diff`: removed
/// words as `[-...-]`, added ones as `{+...+}`, the rest as it was. Texts too long to align
/// word by word are diffed by lines.
pub fn word_diff(old: &str, new: &str) -> String {
    let a = words(old);
    let b = words(new);
    if a.len().saturating_mul(b.len()) > MAX_CELLS {
        return line_diff(old, new);
    }
    let mut out = String::new();
    // A change region's removed and added words, shown removed first.
    let (mut removed, mut added) = (String::new(), String::new());
    let flush = |out: &mut String, removed: &mut String, added: &mut String| {
        if !removed.is_empty() {
            out.push_str(&format!("[-{removed}-]"));
            removed.clear();
        }
        if !added.is_empty() {
            out.push_str(&format!("{{+{added}+}}"));
            added.clear();
        }
    };
    for e in edits(&a, &b) {
        match e {
            Edit::Same(w) => {
                flush(&mut out, &mut removed, &mut added);
                out.push_str(w);
            }
            Edit::Add(w) => added.push_str(w),
            Edit::Remove(w) => removed.push_str(w),
        }
    }
    flush(&mut out, &mut removed, &mut added);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn diff_marks_changes() {
        assert_eq!(line_diff("a\nb\nc", "a\nx\nc"), "  a\n+ x\n- b\n  c");
        assert_eq!(line_diff("", "new"), "+ new");
    }

    #[test]
    fn word_diff_marks_changed_words() {
        assert_eq!(
            word_diff("Answer the question.", "Answer the question step by step."),
            "Answer the [-question.-]{+question step by step.+}"
        );
        assert_eq!(word_diff("same text", "same text"), "same text");
        assert_eq!(word_diff("", "new words"), "{+new words+}");
        assert_eq!(word_diff("old", ""), "[-old-]");
    }

    #[test]
    fn words_keep_the_text() {
        let t = "  two  words\nand\ta line ";
        assert_eq!(words(t).concat(), t);
    }

    #[test]
    fn huge_inputs_fall_back_to_lines() {
        let old = "w ".repeat(3000);
        let new = "v ".repeat(3000);
        let d = word_diff(&old, &new);
        assert!(d.starts_with("+ ") && d.contains("\n- "), "{}", &d[..40]);
    }
}
