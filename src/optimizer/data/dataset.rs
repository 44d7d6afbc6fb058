//! The data: JSONL files read into train / val / test splits with precise errors.
//!
//! Every non-blank line must be a JSON object holding the answer field. An example remembers
//! its file and line so that any later complaint (a template field it lacks, an answer the
//! metric cannot use) names where it came from. Splitting one file is a seeded shuffle; the
//! same seed and file give the same splits everywhere.

use std::path::{Path, PathBuf};

use serde_json::{Map, Value};

use crate::error::{Error, Result};
use crate::optimizer::data::rng::Rng;
use crate::optimizer::data::task::Task;
use crate::optimizer::data::template::value_text;

/// One example.
#[derive(Debug, Clone, PartialEq)]
pub struct Example {
    /// A stable id (the id field, or `file:line`).
    pub id: String,
    /// The file it came from.
    pub file: PathBuf,
    /// Its line in that file (from 1).
    pub line: usize,
    /// All its fields.
    pub fields: Map<String, Value>,
    /// The expected answer (the answer field's value).
    pub answer: Value,
}

impl Example {
    /// The expected answer as text.
    pub fn answer_text(&self) -> String {
        value_text(&self.answer)
    }

    /// A data error about this example.
    pub fn err(&self, reason: impl Into<String>) -> Error {
        Error::Data {
            file: self.file.clone(),
            line: self.line,
            reason: reason.into(),
        }
    }
}

/// Which split.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "snake_case")]
pub enum Split {
    Train,
    Val,
    Test,
}

impl Split {
    /// Lower-case name.
    pub fn name(self) -> &'static str {
        match self {
            Split::Train => "train",
            Split::Val => "val",
            Split::Test => "test",
        }
    }
}

/// The three splits (val and test may be empty when the task gives none).
#[derive(Debug, Clone, Default)]
pub struct Dataset {
    pub train: Vec<Example>,
    pub val: Vec<Example>,
    pub test: Vec<Example>,
}

impl Dataset {
    /// Loads the task's data and checks no requested split is empty.
    pub fn load(task: &Task) -> Result<Self> {
        let d = &task.spec.data;
        let id_field = d.id_field.as_deref();
        let mut ds = if let Some(file) = &d.file {
            let mut all = read_jsonl(&task.resolve(file), &d.answer_field, id_field)?;
            let Some(r) = d.split else {
                return Err(task.err("data.split", "required with `data.file`"));
            };
            Rng::derived(d.seed, "split").shuffle(&mut all);
            let n = all.len();
            let n_train = ((n as f64) * r.train).round() as usize;
            let n_val = (((n as f64) * r.val).round() as usize).min(n - n_train.min(n));
            let test = all.split_off((n_train + n_val).min(n));
            let val = all.split_off(n_train.min(n));
            let ds = Dataset {
                train: all,
                val,
                test,
            };
            for (split, ratio, v) in [
                ("train", r.train, &ds.train),
                ("val", r.val, &ds.val),
                ("test", r.test, &ds.test),
            ] {
                if ratio > 0.0 && v.is_empty() {
                    return Err(task.err(
                        &format!("data.split.{split}"),
                        format!(
                            "the {split} split of {} is empty ({n} examples)",
                            file.display()
                        ),
                    ));
                }
            }
            ds
        } else {
            let load = |p: &Option<PathBuf>, field: &str| -> Result<Vec<Example>> {
                let Some(p) = p else { return Ok(Vec::new()) };
                let path = task.resolve(p);
                let v = read_jsonl(&path, &d.answer_field, id_field)?;
                if v.is_empty() {
                    return Err(task.err(
                        &format!("data.{field}"),
                        format!("{} has no examples", path.display()),
                    ));
                }
                Ok(v)
            };
            Dataset {
                train: load(&d.train, "train")?,
                val: load(&d.val, "val")?,
                test: load(&d.test, "test")?,
            }
        };
        if ds.train.is_empty() {
            return Err(task.err("data.train", "the training split is empty"));
        }
        if let Some(m) = d.max_train {
            ds.train.truncate(m);
        }
        if let Some(m) = d.max_val {
            ds.val.truncate(m);
        }
        if let Some(m) = d.max_test {
            ds.test.truncate(m);
        }
        Ok(ds)
    }

    /// The examples of a split.
    pub fn split(&self, s: Split) -> &[Example] {
        match s {
            Split::Train => &self.train,
            Split::Val => &self.val,
            Split::Test => &self.test,
        }
    }

    /// Every example of every split.
    pub fn all(&self) -> impl Iterator<Item = &Example> {
        self.train.iter().chain(&self.val).chain(&self.test)
    }

    /// A hash of the data, to detect a changed dataset on resume.
    pub fn fingerprint(&self) -> String {
        let mut text = String::new();
        for (s, v) in [
            ("train", &self.train),
            ("val", &self.val),
            ("test", &self.test),
        ] {
            for e in v.iter() {
                text.push_str(s);
                text.push_str(&e.id);
                text.push_str(&Value::Object(e.fields.clone()).to_string());
                text.push('\n');
            }
        }
        crate::optimizer::data::rng::stable_hash(text.as_bytes())
    }
}

/// The longest line of a data file, in bytes.
pub const DATA_LINE_LIMIT: usize = 1 << 20;

/// The largest data file, in bytes.
pub const DATA_FILE_LIMIT: u64 = 256 << 20;

/// Reads a JSONL file: one object per non-blank line, each with `answer_field`.
///
/// Read a line at a time: a line longer than [`DATA_LINE_LIMIT`] or a file larger than
/// [`DATA_FILE_LIMIT`] is an error naming the line, after reading at most one line more
/// than the limit allows (so `/dev/zero` fails at once).
pub fn read_jsonl(path: &Path, answer_field: &str, id_field: Option<&str>) -> Result<Vec<Example>> {
    use std::io::{BufRead, Read};
    let file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let mut reader = std::io::BufReader::new(file);
    let mut out = Vec::new();
    let data_err = |line: usize, reason: String| Error::Data {
        file: path.to_path_buf(),
        line,
        reason,
    };
    let mut seen_ids = std::collections::HashSet::new();
    let mut bytes_read: u64 = 0;
    let mut buf = Vec::new();
    for line in 1.. {
        buf.clear();
        let n = (&mut reader)
            .take(DATA_LINE_LIMIT as u64 + 1)
            .read_until(b'\n', &mut buf)
            .map_err(|e| Error::io(path, e))?;
        if n == 0 {
            break;
        }
        if buf.last() == Some(&b'\n') {
            buf.pop();
        } else if n > DATA_LINE_LIMIT {
            return Err(data_err(
                line,
                format!("the line is longer than {} MiB", DATA_LINE_LIMIT >> 20),
            ));
        }
        bytes_read += n as u64;
        if bytes_read > DATA_FILE_LIMIT {
            return Err(Error::TooLarge {
                path: path.to_path_buf(),
                what: "a data file".into(),
                limit_mib: DATA_FILE_LIMIT >> 20,
            });
        }
        let Ok(raw) = std::str::from_utf8(&buf) else {
            return Err(data_err(line, "not UTF-8 text".into()));
        };
        let raw = raw.strip_suffix('\r').unwrap_or(raw);
        if raw.trim().is_empty() {
            continue;
        }
        let value: Value = serde_json::from_str(raw)
            .map_err(|e| data_err(line, format!("not valid JSON: {e}")))?;
        let Value::Object(fields) = value else {
            return Err(data_err(line, "expected a JSON object".into()));
        };
        let Some(answer) = fields.get(answer_field).cloned() else {
            return Err(data_err(
                line,
                format!("missing answer field `{answer_field}`"),
            ));
        };
        let id = match id_field {
            Some(f) => match fields.get(f) {
                Some(v) => value_text(v),
                None => return Err(data_err(line, format!("missing id field `{f}`"))),
            },
            None => format!(
                "{}:{line}",
                path.file_name()
                    .map(|n| n.to_string_lossy())
                    .unwrap_or_default()
            ),
        };
        if !seen_ids.insert(id.clone()) {
            return Err(data_err(line, format!("duplicate id `{id}`")));
        }
        out.push(Example {
            id,
            file: path.to_path_buf(),
            line,
            fields,
            answer,
        });
    }
    Ok(out)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Examples made in memory for tests.
    pub(crate) fn examples(rows: &[(&str, &str)]) -> Vec<Example> {
        rows.iter()
            .enumerate()
            .map(|(i, (q, a))| {
                let v = serde_json::json!({"question": q, "answer": a});
                Example {
                    id: format!("ex{i}"),
                    file: PathBuf::from("mem.jsonl"),
                    line: i + 1,
                    fields: v.as_object().cloned().unwrap_or_default(),
                    answer: Value::String((*a).to_string()),
                }
            })
            .collect()
    }

    #[test]
    fn malformed_line_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("d.jsonl");
        std::fs::write(&p, "{\"q\":1,\"answer\":2}\n\n{\"q\":oops}\n").unwrap();
        let err = read_jsonl(&p, "answer", None).unwrap_err().to_string();
        assert!(err.contains("d.jsonl:3"), "{err}");
        std::fs::write(&p, "{\"q\":1}\n").unwrap();
        let err = read_jsonl(&p, "answer", None).unwrap_err().to_string();
        assert!(err.contains(":1") && err.contains("answer"), "{err}");
    }

    #[test]
    fn split_by_ratio_is_seeded_and_complete() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("all.jsonl");
        let lines: Vec<String> = (0..20)
            .map(|i| format!("{{\"q\":{i},\"answer\":{i}}}"))
            .collect();
        std::fs::write(&p, lines.join("\n")).unwrap();
        let toml = r#"
name = "t"
[components.s]
text = "x"
[agent]
type = "chat"
model = "m"
user = "{{q}}"
[data]
file = "all.jsonl"
split = { train = 0.5, val = 0.25, test = 0.25 }
seed = 3
[metric]
type = "exact"
"#;
        let task = Task::from_str(toml, &dir.path().join("task.toml"), dir.path()).unwrap();
        let a = Dataset::load(&task).unwrap();
        let b = Dataset::load(&task).unwrap();
        assert_eq!((a.train.len(), a.val.len(), a.test.len()), (10, 5, 5));
        assert_eq!(a.fingerprint(), b.fingerprint());
    }
}
