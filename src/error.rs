//! The library's one error type.
//!
//! Every variant names what is at fault (a file, a field, a tensor, a token) so that the
//! binary can print a single line a user can act on. The library never panics on input.

use std::io::Read;
use std::path::{Path, PathBuf};

/// Result alias used across the library.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong in fgo.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    /// A file read as text is larger than the limit for its kind (a task file, a data line,
    /// a component, a manifest), or never ends (`/dev/zero`).
    #[error("{path}: larger than {limit_mib} MiB, the limit for {what}")]
    TooLarge {
        path: PathBuf,
        what: String,
        limit_mib: u64,
    },

    /// A file exists but is not a valid GGUF file (bad magic, truncated, corrupt header).
    #[error("{path}: not a valid GGUF file: {reason}")]
    InvalidGguf { path: PathBuf, reason: String },

    /// A required metadata key is missing from a GGUF file, or has the wrong type.
    #[error("GGUF metadata `{key}`: {reason}")]
    Metadata { key: String, reason: String },

    /// The GGUF file declares an architecture this engine does not implement.
    #[error("unsupported model architecture `{arch}` (supported: {supported})")]
    UnsupportedArchitecture { arch: String, supported: String },

    /// The file stores tensors in a type this engine cannot compute with.
    #[error("{path}: unsupported tensor type {type_name}; supported: F32, F16, BF16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q2_K..Q8_K")]
    UnsupportedTensorType { path: PathBuf, type_name: String },

    /// A tensor is missing, has an unexpected shape, or uses an unsupported type.
    #[error("tensor `{name}`: {reason}")]
    Tensor { name: String, reason: String },

    /// The tokenizer could not be built or could not encode/decode.
    #[error("tokenizer: {0}")]
    Tokenizer(String),

    /// The chat template could not be parsed or rendered.
    #[error("chat template: {0}")]
    ChatTemplate(String),

    /// A model source (path, alias or hub id) could not be resolved.
    #[error("model `{source_spec}`: {reason}")]
    ModelSource { source_spec: String, reason: String },

    /// A request does not fit: e.g. a prompt longer than the context window.
    #[error("{0}")]
    Request(String),

    /// An invalid option or parameter value.
    #[error("invalid value for `{name}`: {reason}")]
    InvalidArgument { name: String, reason: String },

    /// A device (CPU/CUDA) could not be created or is not compiled in.
    #[error("device `{device}`: {reason}")]
    Device { device: String, reason: String },

    /// A task file is malformed: a TOML syntax error, an unknown or missing field, or a value
    /// out of range. `field` is the dotted path of the field at fault.
    #[error("{file}: `{field}`: {reason}")]
    Task {
        file: PathBuf,
        field: String,
        reason: String,
    },

    /// A data file (JSONL) has a bad line: not JSON, not an object, a missing field, or a value
    /// the metric cannot use. `line` counts from 1.
    #[error("{file}:{line}: {reason}")]
    Data {
        file: PathBuf,
        line: usize,
        reason: String,
    },

    /// An external program (agent or metric command) could not run, failed, timed out or
    /// printed something that is not the expected JSON.
    #[error("command `{command}`: {reason}")]
    Command { command: String, reason: String },

    /// A run directory is missing, incomplete, or does not match the task it was made for.
    #[error("run directory {dir}: {reason}")]
    RunDir { dir: PathBuf, reason: String },

    /// An event could not be appended to a run's event log (a full disk, a file size limit):
    /// the run stops, and what was recorded before lets `fgo resume` continue it.
    #[error("{path}: cannot append to the event log ({reason}); the run stopped: `fgo resume` continues it from the calls recorded before")]
    EventLog { path: PathBuf, reason: String },

    /// A language-model call failed (the engine returned an error for this request).
    #[error("{role} call failed: {reason}")]
    LlmCall { role: String, reason: String },

    /// An error from the tensor library: its message, without the backtrace candle attaches
    /// when `RUST_BACKTRACE` is set (kept as text so that no cause chain repeats it).
    #[error("tensor backend: {0}")]
    Candle(String),
}

impl From<candle_core::Error> for Error {
    fn from(error: candle_core::Error) -> Self {
        Error::Candle(candle_message(&error))
    }
}

/// The message of a tensor-library error without the backtrace that candle attaches when
/// `RUST_BACKTRACE` is set, so that errors stay one line.
pub fn candle_message(error: &candle_core::Error) -> String {
    match error {
        candle_core::Error::WithBacktrace { inner, .. } => candle_message(inner),
        // A backtrace nested inside a context starts on a line of its own.
        other => other
            .to_string()
            .lines()
            .next()
            .unwrap_or_default()
            .to_string(),
    }
}

impl Error {
    /// Wraps an I/O error with the path it concerns.
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }
}

/// `text` with control characters (escape sequences, newlines, carriage returns) written
/// as Rust escapes, so that a name read from a file cannot drive the terminal it is
/// printed on or split an error across lines.
pub fn printable(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if c.is_control() {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    out
}

/// `text` for a terminal: like [`printable`], but newlines and tabs are kept, so that
/// multi-line results (a report, a component) stay readable while escape sequences,
/// carriage returns and bidirectional overrides read from files or model output are shown
/// as escapes instead of acting on the terminal.
pub fn terminal_safe(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        let bidi = matches!(c, '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}');
        if (c.is_control() && c != '\n' && c != '\t') || bidi {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    out
}

/// Reads a whole file as UTF-8 text, refusing one of more than `limit_bytes` (a whole
/// number of MiB) with [`Error::TooLarge`] naming the file and `what` it is. Never reads
/// more than `limit_bytes + 1` bytes, so an endless file costs no more than a large one.
pub fn read_text(path: &Path, limit_bytes: u64, what: &str) -> Result<String> {
    let file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let mut bytes = Vec::new();
    file.take(limit_bytes.saturating_add(1))
        .read_to_end(&mut bytes)
        .map_err(|e| Error::io(path, e))?;
    if bytes.len() as u64 > limit_bytes {
        return Err(Error::TooLarge {
            path: path.to_path_buf(),
            what: what.to_string(),
            limit_mib: limit_bytes >> 20,
        });
    }
    String::from_utf8(bytes).map_err(|e| {
        Error::io(
            path,
            std::io::Error::new(std::io::ErrorKind::InvalidData, e.utf8_error()),
        )
    })
}

#[cfg(test)]
mod tests {
    use super::{printable, read_text, terminal_safe, Error};

    #[test]
    fn terminal_text_keeps_lines_and_escapes_what_drives_the_terminal() {
        let hostile = "line one\n\tkept\x1b[2J\rover\u{7}\u{202e}txt.exe\u{9b}";
        let safe = terminal_safe(hostile);
        assert_eq!(
            safe,
            "line one\n\tkept\\u{1b}[2J\\rover\\u{7}\\u{202e}txt.exe\\u{9b}"
        );
        assert!(!safe
            .chars()
            .any(|c| c.is_control() && c != '\n' && c != '\t'));
        assert_eq!(printable("a\nb"), "a\\nb");
    }

    #[test]
    fn read_text_stops_at_the_limit_even_on_an_endless_file() {
        let err = read_text(std::path::Path::new("/dev/zero"), 1 << 20, "a test file")
            .expect_err("an endless file is refused");
        assert!(matches!(err, Error::TooLarge { limit_mib: 1, .. }), "{err}");
        assert_eq!(
            err.to_string(),
            "/dev/zero: larger than 1 MiB, the limit for a test file"
        );
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("small.txt");
        std::fs::write(&path, "x".repeat(1 << 20)).expect("write");
        assert_eq!(
            read_text(&path, 1 << 20, "a test file")
                .expect("fits")
                .len(),
            1 << 20
        );
    }

    #[test]
    fn a_tensor_library_error_is_one_line_and_not_repeated_by_its_cause() {
        let inner = candle_core::Error::Msg("embedding id 9 is out of range".into());
        let nested = candle_core::Error::Context {
            inner: Box::new(inner),
            context: Box::new("while embedding\n   0: frame\n   1: frame"),
        };
        let err = Error::from(nested);
        assert_eq!(err.to_string().lines().count(), 1, "{err}");
        assert!(std::error::Error::source(&err).is_none());
    }

    #[test]
    fn printable_escapes_control_characters_only() {
        assert_eq!(printable("llama"), "llama");
        assert_eq!(printable("\u{1b}[31mred\n"), "\\u{1b}[31mred\\n");
        assert_eq!(printable("İstanbul \u{7f}"), "İstanbul \\u{7f}");
    }
}
