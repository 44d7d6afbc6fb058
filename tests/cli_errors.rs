//! Bad input gives one line naming the problem and exit status 2, never a panic.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use candle_core::quantized::gguf_file::{self, Value};
use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{Device, Tensor};

mod common;

fn fgo(args: &[&str], envs: &[(&str, &Path)]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_fgo"));
    cmd.args(args).env_remove("RUST_LOG");
    for (k, v) in envs {
        cmd.env(k, v);
    }
    cmd.output().expect("fgo runs")
}

/// Asserts a failed run: status 2, a single `error:` line containing every needle.
fn assert_error(out: &Output, needles: &[&str]) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "stderr: {stderr}");
    assert!(!stderr.contains("panicked"), "panic: {stderr}");
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "expected one line, got: {stderr}");
    assert!(lines[0].starts_with("error: "), "{stderr}");
    for needle in needles {
        assert!(lines[0].contains(needle), "`{needle}` not in: {stderr}");
    }
}

/// Writes a small GGUF file with the given architecture and one f32 tensor.
fn write_tiny_gguf(path: &Path, arch: &str) {
    let t = Tensor::zeros((4, 32), candle_core::DType::F32, &Device::Cpu).expect("tensor");
    let q = QTensor::quantize(&t, GgmlDType::F32).expect("qtensor");
    let arch = Value::String(arch.to_string());
    let len = Value::U32(32);
    let mut f = std::fs::File::create(path).expect("create");
    gguf_file::write(
        &mut f,
        &[("general.architecture", &arch), ("llama.embedding_length", &len)],
        &[("token_embd.weight", &q)],
    )
    .expect("write gguf");
}

fn generate_with(model: &Path) -> Output {
    fgo(
        &["generate", "--model", model.to_str().expect("utf-8"), "--prompt", "hi"],
        &[],
    )
}

#[test]
fn missing_file() {
    let out = generate_with(Path::new("/nonexistent/dir/model.gguf"));
    assert_error(&out, &["/nonexistent/dir/model.gguf", "no such model file"]);
}

#[test]
fn file_that_is_not_gguf() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("notes.gguf");
    std::fs::write(&path, "these are not weights\n").expect("write");
    assert_error(&generate_with(&path), &["notes.gguf", "not a valid GGUF file", "magic"]);
}

#[test]
fn truncated_gguf() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("cut.gguf");
    write_tiny_gguf(&path, "llama");
    let bytes = std::fs::read(&path).expect("read");
    std::fs::write(&path, &bytes[..bytes.len() - 100]).expect("truncate");
    assert_error(&generate_with(&path), &["cut.gguf", "truncated"]);
    // Cut inside the header too.
    std::fs::write(&path, &bytes[..40]).expect("truncate");
    assert_error(&generate_with(&path), &["cut.gguf", "not a valid GGUF file"]);
}

#[test]
fn unsupported_architecture() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("mamba.gguf");
    write_tiny_gguf(&path, "mamba");
    assert_error(
        &generate_with(&path),
        &["unsupported model architecture `mamba`", "llama, qwen2, qwen3, gemma3"],
    );
}

#[test]
fn unsupported_tensor_type() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("iq.gguf");
    write_tiny_gguf(&path, "llama");
    let mut bytes = std::fs::read(&path).expect("read");
    // The tensor directory entry is: name, n_dims (u32), dims (u64 each), type (u32).
    let name = b"token_embd.weight";
    let at = bytes
        .windows(name.len())
        .position(|w| w == name)
        .expect("tensor name in file")
        + name.len();
    let type_at = at + 4 + 2 * 8;
    assert_eq!(&bytes[type_at..type_at + 4], &0u32.to_le_bytes(), "F32 type id");
    bytes[type_at..type_at + 4].copy_from_slice(&20u32.to_le_bytes());
    std::fs::write(&path, &bytes).expect("write");
    assert_error(&generate_with(&path), &["iq.gguf", "unsupported tensor type IQ4_NL"]);
}

#[test]
fn alias_not_installed_and_unknown_alias() {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(
        dir.path().join("manifest.tsv"),
        "# alias\tfile\tsha256\tbytes\tarchitecture\tlicense\tparts\n\
         ghost-model\tghost.gguf\t00\t10\tllama\tMIT\tghost==1:ghost.gguf\n",
    )
    .expect("manifest");
    let env = [("FGO_MODELS_DIR", dir.path())];
    let out = fgo(&["generate", "--model", "ghost-model", "--prompt", "hi"], &env);
    assert_error(&out, &["ghost-model", "not installed", "scripts/fetch-models.sh ghost-model"]);
    let out = fgo(&["generate", "--model", "phantom", "--prompt", "hi"], &env);
    assert_error(&out, &["phantom", "not a known alias", "ghost-model"]);
}

#[test]
fn prompt_longer_than_the_context_window() {
    let model: PathBuf = common::model_path("SmolLM2-135M-Instruct.Q4_1.gguf");
    let prompt = "lorem ipsum dolor ".repeat(3000);
    let out = fgo(
        &["generate", "--model", model.to_str().expect("utf-8"), "--prompt", &prompt],
        &[],
    );
    assert_error(&out, &["does not fit the context window of 8192 tokens"]);
}

#[test]
fn invalid_sampling_option() {
    let model: PathBuf = common::model_path("SmolLM2-135M-Instruct.Q4_1.gguf");
    let out = fgo(
        &["generate", "--model", model.to_str().expect("utf-8"), "--prompt", "hi", "--top-p", "1.5"],
        &[],
    );
    assert_error(&out, &["top_p"]);
}
