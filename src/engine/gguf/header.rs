//! A bounded reader of the GGUF header: metadata and tensor directory.
//!
//! Every count, length, dimension and offset read from the file is checked before it is
//! used: counts and lengths against the bytes left in the file, sizes with checked
//! arithmetic, the alignment against zero and non-powers of two, and the memory the parsed
//! metadata will take against [`METADATA_MEMORY_LIMIT`] (an array of `n` one-byte values
//! costs `n` parsed values, far more than `n` bytes). A hostile file is an error naming
//! the key or tensor at fault, never a panic or an allocation the file cannot back.

use std::collections::HashMap;
use std::io::{BufReader, Read};

use candle_core::quantized::gguf_file::{TensorInfo, Value};
use candle_core::quantized::GgmlDType;

use crate::error::printable;

/// Memory the parsed metadata (values, strings, tensor entries) may take.
pub const METADATA_MEMORY_LIMIT: u64 = 512 << 20;

/// Deepest nesting of arrays inside arrays.
const MAX_ARRAY_DEPTH: usize = 4;

/// Most dimensions of one tensor (as in ggml).
const MAX_DIMS: u64 = 4;

/// The alignment of tensor data when the file does not set `general.alignment`.
const DEFAULT_ALIGNMENT: u64 = 32;

/// A parsed, validated header.
#[derive(Debug)]
pub struct Header {
    pub metadata: HashMap<String, Value>,
    pub tensor_infos: HashMap<String, TensorInfo>,
    /// The byte at which tensor data starts; every tensor's bytes lie in the file after it.
    pub tensor_data_offset: u64,
}

/// Why a header was refused.
#[derive(Debug)]
pub enum HeaderError {
    /// The file is malformed, truncated or would need unbounded memory.
    Invalid(String),
    /// A tensor uses a ggml type id this engine does not know.
    UnknownType(u32),
}

type HResult<T> = std::result::Result<T, HeaderError>;

fn invalid<T>(reason: impl Into<String>) -> HResult<T> {
    Err(HeaderError::Invalid(reason.into()))
}

/// A reader that knows how many bytes of the file are left and charges parsed memory.
struct Bounded<R> {
    inner: R,
    position: u64,
    file_len: u64,
    /// Lengths are u32 in version 1 of the format, u64 later.
    wide_lengths: bool,
    memory: u64,
    memory_limit: u64,
}

impl<R: Read> Bounded<R> {
    fn remaining(&self) -> u64 {
        self.file_len.saturating_sub(self.position)
    }

    fn bytes<const N: usize>(&mut self, what: &str) -> HResult<[u8; N]> {
        let mut buf = [0u8; N];
        if self.remaining() < N as u64 || self.inner.read_exact(&mut buf).is_err() {
            return invalid(format!("truncated while reading {what}"));
        }
        self.position += N as u64;
        Ok(buf)
    }

    fn u32(&mut self, what: &str) -> HResult<u32> {
        self.bytes::<4>(what).map(u32::from_le_bytes)
    }

    fn u64(&mut self, what: &str) -> HResult<u64> {
        self.bytes::<8>(what).map(u64::from_le_bytes)
    }

    fn length(&mut self, what: &str) -> HResult<u64> {
        if self.wide_lengths {
            self.u64(what)
        } else {
            self.u32(what).map(u64::from)
        }
    }

    fn charge(&mut self, bytes: u64) -> HResult<()> {
        self.memory = self.memory.saturating_add(bytes);
        if self.memory > self.memory_limit {
            return invalid(format!(
                "the header would take more than {} MiB of memory once parsed",
                self.memory_limit >> 20
            ));
        }
        Ok(())
    }

    fn string(&mut self, what: &str) -> HResult<String> {
        let len = self.length(what)?;
        if len > self.remaining() {
            return invalid(format!(
                "{what}: a string of {len} bytes but only {} bytes are left in the file",
                self.remaining()
            ));
        }
        self.charge(len)?;
        let mut buf = Vec::new();
        let got = (&mut self.inner)
            .take(len)
            .read_to_end(&mut buf)
            .map_err(|e| HeaderError::Invalid(format!("{what}: {e}")))?;
        if got as u64 != len {
            return invalid(format!("truncated while reading {what}"));
        }
        self.position += len;
        Ok(String::from_utf8_lossy(&buf).into_owned())
    }

    fn value(&mut self, type_id: u32, key: &str, depth: usize) -> HResult<Value> {
        self.charge(std::mem::size_of::<Value>() as u64)?;
        let v = match type_id {
            0 => Value::U8(self.bytes::<1>(key)?[0]),
            1 => Value::I8(i8::from_le_bytes(self.bytes::<1>(key)?)),
            2 => Value::U16(u16::from_le_bytes(self.bytes::<2>(key)?)),
            3 => Value::I16(i16::from_le_bytes(self.bytes::<2>(key)?)),
            4 => Value::U32(self.u32(key)?),
            5 => Value::I32(i32::from_le_bytes(self.bytes::<4>(key)?)),
            6 => Value::F32(f32::from_le_bytes(self.bytes::<4>(key)?)),
            7 => match self.bytes::<1>(key)?[0] {
                0 => Value::Bool(false),
                1 => Value::Bool(true),
                b => return invalid(format!("key `{key}`: boolean byte {b} is neither 0 nor 1")),
            },
            8 => Value::String(self.string(key)?),
            9 => {
                if depth >= MAX_ARRAY_DEPTH {
                    return invalid(format!(
                        "key `{key}`: arrays nested more than {MAX_ARRAY_DEPTH} deep"
                    ));
                }
                let item_type = self.u32(key)?;
                let len = self.length(key)?;
                let min_item = min_disk_size(item_type, self.wide_lengths)
                    .ok_or_else(|| bad_value_type(key, item_type))?;
                if len.saturating_mul(min_item) > self.remaining() {
                    return invalid(format!(
                        "key `{key}`: an array of {len} elements does not fit in the {} bytes \
                         left in the file",
                        self.remaining()
                    ));
                }
                // Charged up front so that a long array is refused before it is read.
                self.charge(len.saturating_mul(std::mem::size_of::<Value>() as u64))?;
                let mut items = Vec::with_capacity(len as usize);
                for _ in 0..len {
                    // Each item's own size was charged with the array.
                    self.memory -= std::mem::size_of::<Value>() as u64;
                    items.push(self.value(item_type, key, depth + 1)?);
                }
                Value::Array(items)
            }
            10 => Value::U64(self.u64(key)?),
            11 => Value::I64(i64::from_le_bytes(self.bytes::<8>(key)?)),
            12 => Value::F64(f64::from_le_bytes(self.bytes::<8>(key)?)),
            other => return Err(bad_value_type(key, other)),
        };
        Ok(v)
    }
}

fn bad_value_type(key: &str, type_id: u32) -> HeaderError {
    HeaderError::Invalid(format!("key `{key}`: unknown value type {type_id}"))
}

/// The fewest bytes one value of a type takes in the file.
fn min_disk_size(type_id: u32, wide_lengths: bool) -> Option<u64> {
    let length = if wide_lengths { 8 } else { 4 };
    Some(match type_id {
        0 | 1 | 7 => 1,
        2 | 3 => 2,
        4..=6 => 4,
        10..=12 => 8,
        8 => length,
        9 => 4 + length,
        _ => return None,
    })
}

/// The ggml tensor types candle can hold, by their ids in the file.
fn ggml_dtype(id: u32) -> Option<GgmlDType> {
    Some(match id {
        0 => GgmlDType::F32,
        1 => GgmlDType::F16,
        2 => GgmlDType::Q4_0,
        3 => GgmlDType::Q4_1,
        6 => GgmlDType::Q5_0,
        7 => GgmlDType::Q5_1,
        8 => GgmlDType::Q8_0,
        9 => GgmlDType::Q8_1,
        10 => GgmlDType::Q2K,
        11 => GgmlDType::Q3K,
        12 => GgmlDType::Q4K,
        13 => GgmlDType::Q5K,
        14 => GgmlDType::Q6K,
        15 => GgmlDType::Q8K,
        30 => GgmlDType::BF16,
        _ => return None,
    })
}

/// The alignment of tensor data: `general.alignment` if set (a power of two), else 32.
fn alignment(metadata: &HashMap<String, Value>) -> HResult<u64> {
    let Some(value) = metadata.get("general.alignment") else {
        return Ok(DEFAULT_ALIGNMENT);
    };
    let n = match *value {
        Value::U8(v) => u64::from(v),
        Value::U16(v) => u64::from(v),
        Value::U32(v) => u64::from(v),
        Value::U64(v) => v,
        Value::I8(v) => u64::try_from(v).unwrap_or(0),
        Value::I16(v) => u64::try_from(v).unwrap_or(0),
        Value::I32(v) => u64::try_from(v).unwrap_or(0),
        Value::I64(v) => u64::try_from(v).unwrap_or(0),
        _ => return invalid("`general.alignment` is not an integer"),
    };
    if !n.is_power_of_two() {
        return invalid(format!(
            "`general.alignment` is {n}, which is not a power of two"
        ));
    }
    Ok(n)
}

/// Reads and validates the header of a file of `file_len` bytes, `reader` at its start.
pub fn read_header<R: Read>(reader: &mut BufReader<R>, file_len: u64) -> HResult<Header> {
    read_header_within(reader, file_len, METADATA_MEMORY_LIMIT)
}

/// [`read_header`] with the parsed header's memory bounded by `memory_limit` bytes.
pub fn read_header_within<R: Read>(
    reader: &mut BufReader<R>,
    file_len: u64,
    memory_limit: u64,
) -> HResult<Header> {
    let mut r = Bounded {
        inner: reader,
        position: 0,
        file_len,
        wide_lengths: true,
        memory: 0,
        memory_limit,
    };
    if &r.bytes::<4>("the magic bytes")? != b"GGUF" {
        return invalid("bad magic bytes, expected \"GGUF\"");
    }
    match r.u32("the version")? {
        1 => r.wide_lengths = false,
        2 | 3 => {}
        v => return invalid(format!("unsupported GGUF version {v} (supported: 1 to 3)")),
    }
    let tensor_count = r.length("the tensor count")?;
    let kv_count = r.length("the metadata count")?;
    let (kv_min, tensor_min) = if r.wide_lengths { (13, 24) } else { (9, 16) };
    let needed = kv_count
        .saturating_mul(kv_min)
        .saturating_add(tensor_count.saturating_mul(tensor_min));
    if needed > r.remaining() {
        return invalid(format!(
            "the header declares {tensor_count} tensors and {kv_count} metadata entries, \
             more than the {} bytes of the file can hold",
            file_len
        ));
    }
    let mut metadata = HashMap::new();
    for i in 0..kv_count {
        let key = r.string(&format!("metadata key {i}"))?;
        let type_id = r.u32(&key)?;
        let value = r.value(type_id, &key, 0)?;
        if metadata.insert(key.clone(), value).is_some() {
            return invalid(format!("metadata key `{}` appears twice", printable(&key)));
        }
    }
    let alignment = alignment(&metadata)?;
    let mut tensor_infos = HashMap::new();
    // An entry in the map costs its name, the shape and bookkeeping.
    let entry_cost = std::mem::size_of::<TensorInfo>() as u64 + 64;
    for i in 0..tensor_count {
        r.charge(entry_cost)?;
        let name = r.string(&format!("tensor name {i}"))?;
        let shown = printable(&name);
        let n_dims = u64::from(r.u32(&name)?);
        if n_dims == 0 || n_dims > MAX_DIMS {
            return invalid(format!(
                "tensor `{shown}` has {n_dims} dimensions (1 to {MAX_DIMS} allowed)"
            ));
        }
        let mut dims = Vec::with_capacity(n_dims as usize);
        let mut elements: u64 = 1;
        for _ in 0..n_dims {
            let d = r.length(&name)?;
            if d == 0 {
                return invalid(format!("tensor `{shown}` has a dimension of size 0"));
            }
            elements = elements
                .checked_mul(d)
                .filter(|&e| usize::try_from(e).is_ok() && e <= file_len.saturating_mul(8))
                .ok_or_else(|| {
                    HeaderError::Invalid(format!(
                        "tensor `{shown}`: dimensions {dims:?} x {d} describe more elements \
                         than the file can hold"
                    ))
                })?;
            dims.push(d as usize);
        }
        dims.reverse();
        let type_id = r.u32(&name)?;
        let dtype = ggml_dtype(type_id).ok_or(HeaderError::UnknownType(type_id))?;
        let offset = r.u64(&name)?;
        let block = dtype.block_size() as u64;
        if !elements.is_multiple_of(block) {
            return invalid(format!(
                "tensor `{shown}`: {elements} elements are not a whole number of \
                 {dtype:?} blocks of {block}"
            ));
        }
        if !offset.is_multiple_of(alignment) {
            return invalid(format!(
                "tensor `{shown}`: offset {offset} is not a multiple of the alignment {alignment}"
            ));
        }
        let info = TensorInfo {
            ggml_dtype: dtype,
            shape: candle_core::Shape::from(dims),
            offset,
        };
        if tensor_infos.insert(name, info).is_some() {
            return invalid(format!("tensor `{shown}` appears twice"));
        }
    }
    let data_start = r
        .position
        .checked_next_multiple_of(alignment)
        .filter(|&s| s <= file_len)
        .ok_or_else(|| {
            HeaderError::Invalid(format!(
                "truncated: tensor data would start past the end of the file ({file_len} bytes)"
            ))
        })?;
    for (name, info) in &tensor_infos {
        let bytes = tensor_bytes(info);
        let end = bytes.and_then(|b| data_start.checked_add(info.offset)?.checked_add(b));
        match end {
            Some(end) if end <= file_len => {}
            _ => {
                return invalid(format!(
                    "truncated: tensor `{}` ({} bytes at offset {}) ends past the end \
                     of the file ({file_len} bytes)",
                    printable(name),
                    bytes.map_or_else(|| "too many".to_string(), |b| b.to_string()),
                    info.offset
                ))
            }
        }
    }
    Ok(Header {
        metadata,
        tensor_infos,
        tensor_data_offset: data_start,
    })
}

/// Bytes of a tensor's data, `None` where that does not fit in a `u64`.
pub fn tensor_bytes(info: &TensorInfo) -> Option<u64> {
    let elements = info.shape.elem_count() as u64;
    let block = info.ggml_dtype.block_size() as u64;
    (elements / block).checked_mul(info.ggml_dtype.type_size() as u64)
}
