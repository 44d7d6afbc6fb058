//! Hostile headers: each is refused with a reason, never a panic or a huge allocation.

use std::io::{BufReader, Cursor};

use super::header::{read_header, read_header_within, HeaderError};

/// Builds GGUF v3 bytes field by field.
#[derive(Default)]
struct Builder {
    kvs: Vec<u8>,
    n_kvs: u64,
    tensors: Vec<u8>,
    n_tensors: u64,
    data: Vec<u8>,
}

fn string(out: &mut Vec<u8>, s: &str) {
    out.extend((s.len() as u64).to_le_bytes());
    out.extend(s.as_bytes());
}

impl Builder {
    fn kv(mut self, key: &str, type_id: u32, value: &[u8]) -> Self {
        string(&mut self.kvs, key);
        self.kvs.extend(type_id.to_le_bytes());
        self.kvs.extend(value);
        self.n_kvs += 1;
        self
    }

    fn u32_kv(self, key: &str, v: u32) -> Self {
        self.kv(key, 4, &v.to_le_bytes())
    }

    fn tensor(mut self, name: &str, dims: &[u64], type_id: u32, offset: u64) -> Self {
        string(&mut self.tensors, name);
        self.tensors.extend((dims.len() as u32).to_le_bytes());
        for d in dims {
            self.tensors.extend(d.to_le_bytes());
        }
        self.tensors.extend(type_id.to_le_bytes());
        self.tensors.extend(offset.to_le_bytes());
        self.n_tensors += 1;
        self
    }

    fn data(mut self, bytes: usize) -> Self {
        self.data = vec![0; bytes];
        self
    }

    fn bytes(&self) -> Vec<u8> {
        let mut out = b"GGUF".to_vec();
        out.extend(3u32.to_le_bytes());
        out.extend(self.n_tensors.to_le_bytes());
        out.extend(self.n_kvs.to_le_bytes());
        out.extend(&self.kvs);
        out.extend(&self.tensors);
        while !out.len().is_multiple_of(32) {
            out.push(0);
        }
        out.extend(&self.data);
        out
    }
}

fn read(bytes: &[u8]) -> Result<super::header::Header, HeaderError> {
    read_header(&mut BufReader::new(Cursor::new(bytes)), bytes.len() as u64)
}

fn refused(bytes: &[u8]) -> String {
    match read(bytes) {
        Ok(_) => panic!("a hostile header was accepted"),
        Err(HeaderError::Invalid(reason)) => reason,
        Err(HeaderError::UnknownType(id)) => format!("unknown type {id}"),
    }
}

fn f32_tensor() -> Builder {
    Builder::default().tensor("w", &[4, 2], 0, 0).data(32)
}

#[test]
fn a_valid_header_reads() {
    let h = read(&f32_tensor().u32_kv("general.alignment", 32).bytes()).expect("valid");
    assert_eq!(h.tensor_infos["w"].shape.dims(), &[2, 4]);
    assert!(h.tensor_data_offset.is_multiple_of(32));
}

#[test]
fn alignment_zero_or_not_a_power_of_two() {
    let r = refused(&f32_tensor().u32_kv("general.alignment", 0).bytes());
    assert!(r.contains("`general.alignment` is 0"), "{r}");
    let r = refused(&f32_tensor().u32_kv("general.alignment", 24).bytes());
    assert!(r.contains("not a power of two"), "{r}");
}

#[test]
fn dimensions_whose_product_overflows() {
    let b = Builder::default().tensor("big", &[1 << 40, 1 << 40], 0, 0);
    let r = refused(&b.bytes());
    assert!(
        r.contains("tensor `big`") && r.contains("more elements"),
        "{r}"
    );
    let b = Builder::default().tensor("big", &[u64::MAX, 2], 0, 0);
    assert!(refused(&b.bytes()).contains("more elements"));
}

#[test]
fn offsets_past_the_end_or_overflowing() {
    let b = Builder::default()
        .tensor("w", &[4, 2], 0, u64::MAX - 31)
        .data(32);
    let r = refused(&b.bytes());
    assert!(r.contains("truncated") && r.contains("tensor `w`"), "{r}");
    let b = Builder::default().tensor("w", &[4, 2], 0, 64).data(32);
    assert!(refused(&b.bytes()).contains("truncated"));
    let b = Builder::default().tensor("w", &[4, 2], 0, 3).data(64);
    assert!(refused(&b.bytes()).contains("not a multiple of the alignment"));
}

#[test]
fn zero_sized_and_too_many_dimensions() {
    let b = Builder::default().tensor("token_embd.weight", &[0, 8], 0, 0);
    assert!(refused(&b.bytes()).contains("dimension of size 0"));
    let b = Builder::default().tensor("w", &[], 0, 0);
    assert!(refused(&b.bytes()).contains("0 dimensions"));
    let b = Builder::default().tensor("w", &[1, 1, 1, 1, 1], 0, 0);
    assert!(refused(&b.bytes()).contains("5 dimensions"));
}

#[test]
fn counts_and_lengths_beyond_the_file() {
    let mut bytes = f32_tensor().bytes();
    bytes[8..16].copy_from_slice(&u64::MAX.to_le_bytes());
    assert!(refused(&bytes).contains("more than the"));
    // A string length of 2^60 in the first key.
    let b = Builder::default().u32_kv("k", 1);
    let mut bytes = b.bytes();
    bytes[24..32].copy_from_slice(&(1u64 << 60).to_le_bytes());
    assert!(refused(&bytes).contains("only"));
    // An array of 2^40 u32 values.
    let mut value = 4u32.to_le_bytes().to_vec();
    value.extend((1u64 << 40).to_le_bytes());
    let r = refused(&Builder::default().kv("arr", 9, &value).bytes());
    assert!(r.contains("key `arr`") && r.contains("does not fit"), "{r}");
}

#[test]
fn metadata_memory_is_bounded_by_a_budget_not_by_the_file() {
    // One million one-byte values: a megabyte of file, tens of megabytes parsed.
    let mut value = 0u32.to_le_bytes().to_vec();
    value.extend(1_000_000u64.to_le_bytes());
    value.extend(vec![7u8; 1_000_000]);
    let bytes = Builder::default()
        .kv("tokenizer.ggml.token_type", 9, &value)
        .bytes();
    let within = |limit: u64| {
        read_header_within(
            &mut BufReader::new(Cursor::new(&bytes)),
            bytes.len() as u64,
            limit,
        )
    };
    match within(8 << 20) {
        Err(HeaderError::Invalid(r)) => assert!(r.contains("more than 8 MiB of memory"), "{r}"),
        other => panic!("expected a memory refusal, got {:?}", other.map(|_| ())),
    }
    assert!(within(64 << 20).is_ok());
}

#[test]
fn nesting_duplicates_bad_values_and_unknown_types() {
    // An array of arrays of arrays ... deeper than allowed.
    let mut value = Vec::new();
    for _ in 0..6 {
        value.extend(9u32.to_le_bytes());
        value.extend(1u64.to_le_bytes());
    }
    value.extend(0u32.to_le_bytes());
    value.extend(0u64.to_le_bytes());
    assert!(refused(&Builder::default().kv("deep", 9, &value).bytes()).contains("nested"));
    let b = Builder::default().u32_kv("k", 1).u32_kv("k", 2);
    assert!(refused(&b.bytes()).contains("appears twice"));
    let b = Builder::default().kv("flag", 7, &[2]);
    assert!(refused(&b.bytes()).contains("boolean"));
    let b = Builder::default().kv("odd", 13, &[0; 8]);
    assert!(refused(&b.bytes()).contains("unknown value type 13"));
    let b = Builder::default().tensor("w", &[32], 20, 0).data(32);
    assert!(matches!(
        read(&b.bytes()),
        Err(HeaderError::UnknownType(20))
    ));
}

#[test]
fn names_with_escape_sequences_are_printed_escaped() {
    let b = Builder::default().tensor("\u{1b}[2J\u{1b}]0;pwned\u{7}", &[0], 0, 0);
    let r = refused(&b.bytes());
    assert!(!r.chars().any(char::is_control), "{r:?}");
    assert!(r.contains("\\u{1b}[2J"), "{r}");
}

#[test]
fn every_truncation_of_a_valid_header_is_refused() {
    let bytes = f32_tensor()
        .u32_kv("general.alignment", 32)
        .kv("s", 8, &{
            let mut v = Vec::new();
            string(&mut v, "text");
            v
        })
        .bytes();
    for len in 0..bytes.len() {
        assert!(read(&bytes[..len]).is_err(), "a cut at {len} was accepted");
    }
}

/// Tensor reads stay inside the tensor: its bytes read back in pieces, and a range past
/// its end (or one whose end overflows) is an error naming the tensor.
#[test]
fn tensor_bytes_read_in_range_and_refused_past_the_end() {
    let mut b = Builder::default()
        .tensor("a", &[4, 2], 0, 0)
        .tensor("b", &[4], 0, 32);
    b.data = (0..48u8).collect();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("t.gguf");
    std::fs::write(&path, b.bytes()).unwrap();
    let mut file = super::GgufFile::open(&path).unwrap();
    let mut buf = [0u8; 8];
    file.read_tensor_bytes("a", 24, &mut buf).unwrap();
    assert_eq!(buf, [24, 25, 26, 27, 28, 29, 30, 31]);
    file.read_tensor_bytes("b", 8, &mut buf).unwrap();
    assert_eq!(buf, [40, 41, 42, 43, 44, 45, 46, 47]);
    let past = file.read_tensor_bytes("a", 25, &mut buf).unwrap_err();
    assert!(
        past.to_string().contains("past the tensor's 32 bytes"),
        "{past}"
    );
    let overflow = file
        .read_tensor_bytes("b", u64::MAX - 2, &mut buf)
        .unwrap_err();
    assert!(
        overflow.to_string().contains("past the tensor"),
        "{overflow}"
    );
    assert!(file.read_tensor_bytes("missing", 0, &mut buf).is_err());
}
