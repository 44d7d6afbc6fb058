//! Opening GGUF files and reading their metadata with precise errors.
//!
//! A [`GgufFile`] is a validated header (metadata and tensor directory) plus an open handle
//! from which tensors are read on demand, so loading never holds two copies of the weights.
//! [`Metadata`] gives typed access to `general.*`, `<arch>.*` and `tokenizer.*` keys; a
//! missing or mistyped key is an [`Error::Metadata`] naming the key.

use std::collections::HashMap;
use std::fs::File;
use std::io::{BufReader, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use candle_core::quantized::gguf_file::{TensorInfo, Value};
use candle_core::quantized::k_quants::GgmlType;
use candle_core::quantized::{GgmlDType, QStorage, QTensor};
use candle_core::Device;

use crate::error::{candle_message, Error, Result};
use header::{read_header, HeaderError};

mod header;
#[cfg(test)]
mod tests;

/// Typed, error-reporting view over a GGUF file's key/value metadata.
#[derive(Debug, Clone, Default)]
pub struct Metadata {
    values: HashMap<String, Value>,
}

impl Metadata {
    /// Wraps raw metadata values.
    pub fn new(values: HashMap<String, Value>) -> Self {
        Self { values }
    }

    /// The raw value of `key`, if present.
    pub fn get(&self, key: &str) -> Option<&Value> {
        self.values.get(key)
    }

    /// Whether `key` is present.
    pub fn contains(&self, key: &str) -> bool {
        self.values.contains_key(key)
    }

    /// All keys, in no particular order.
    pub fn keys(&self) -> impl Iterator<Item = &str> {
        self.values.keys().map(String::as_str)
    }

    fn required(&self, key: &str) -> Result<&Value> {
        self.values.get(key).ok_or_else(|| Error::Metadata {
            key: key.to_string(),
            reason: "missing".to_string(),
        })
    }

    fn mistyped(key: &str, expected: &str, value: &Value) -> Error {
        Error::Metadata {
            key: key.to_string(),
            reason: format!("expected {expected}, found {:?}", value.value_type()),
        }
    }

    /// A required string.
    pub fn str(&self, key: &str) -> Result<&str> {
        match self.required(key)? {
            Value::String(s) => Ok(s),
            v => Err(Self::mistyped(key, "a string", v)),
        }
    }

    /// An optional string; present but mistyped is an error.
    pub fn opt_str(&self, key: &str) -> Result<Option<&str>> {
        self.optional(key, |m, k| m.str(k))
    }

    /// A required non-negative integer of any width.
    pub fn u64(&self, key: &str) -> Result<u64> {
        let v = self.required(key)?;
        value_as_u64(v).ok_or_else(|| Self::mistyped(key, "a non-negative integer", v))
    }

    /// A required non-negative integer that fits in `usize`.
    pub fn usize(&self, key: &str) -> Result<usize> {
        let v = self.u64(key)?;
        usize::try_from(v).map_err(|_| Error::Metadata {
            key: key.to_string(),
            reason: format!("value {v} is too large"),
        })
    }

    /// An optional non-negative integer.
    pub fn opt_usize(&self, key: &str) -> Result<Option<usize>> {
        self.optional(key, |m, k| m.usize(k))
    }

    /// A required float (any float or integer type is accepted).
    pub fn f32(&self, key: &str) -> Result<f32> {
        let v = self.required(key)?;
        value_as_f64(v)
            .map(|x| x as f32)
            .ok_or_else(|| Self::mistyped(key, "a number", v))
    }

    /// An optional float.
    pub fn opt_f32(&self, key: &str) -> Result<Option<f32>> {
        self.optional(key, |m, k| m.f32(k))
    }

    /// An optional boolean.
    pub fn opt_bool(&self, key: &str) -> Result<Option<bool>> {
        self.optional(key, |m, k| match m.required(k)? {
            Value::Bool(b) => Ok(*b),
            v => Err(Self::mistyped(k, "a boolean", v)),
        })
    }

    /// A required array of strings.
    pub fn str_array(&self, key: &str) -> Result<Vec<&str>> {
        self.array(key, "strings", |v| match v {
            Value::String(s) => Some(s.as_str()),
            _ => None,
        })
    }

    /// A required array of numbers, as `f32`.
    pub fn f32_array(&self, key: &str) -> Result<Vec<f32>> {
        self.array(key, "numbers", |v| value_as_f64(v).map(|x| x as f32))
    }

    /// A required array of integers, as `i64`.
    pub fn i64_array(&self, key: &str) -> Result<Vec<i64>> {
        self.array(key, "integers", value_as_i64)
    }

    fn array<'a, T>(
        &'a self,
        key: &str,
        what: &str,
        convert: impl Fn(&'a Value) -> Option<T>,
    ) -> Result<Vec<T>> {
        let v = self.required(key)?;
        let Value::Array(items) = v else {
            return Err(Self::mistyped(key, &format!("an array of {what}"), v));
        };
        items
            .iter()
            .enumerate()
            .map(|(i, item)| {
                convert(item).ok_or_else(|| Error::Metadata {
                    key: key.to_string(),
                    reason: format!(
                        "element {i}: expected one of {what}, found {:?}",
                        item.value_type()
                    ),
                })
            })
            .collect()
    }

    fn optional<'a, T>(
        &'a self,
        key: &str,
        get: impl Fn(&'a Self, &str) -> Result<T>,
    ) -> Result<Option<T>> {
        if self.values.contains_key(key) {
            get(self, key).map(Some)
        } else {
            Ok(None)
        }
    }
}

fn value_as_u64(v: &Value) -> Option<u64> {
    match *v {
        Value::U8(x) => Some(x.into()),
        Value::U16(x) => Some(x.into()),
        Value::U32(x) => Some(x.into()),
        Value::U64(x) => Some(x),
        Value::I8(x) => u64::try_from(x).ok(),
        Value::I16(x) => u64::try_from(x).ok(),
        Value::I32(x) => u64::try_from(x).ok(),
        Value::I64(x) => u64::try_from(x).ok(),
        _ => None,
    }
}

fn value_as_i64(v: &Value) -> Option<i64> {
    match *v {
        Value::U8(x) => Some(x.into()),
        Value::U16(x) => Some(x.into()),
        Value::U32(x) => Some(x.into()),
        Value::U64(x) => i64::try_from(x).ok(),
        Value::I8(x) => Some(x.into()),
        Value::I16(x) => Some(x.into()),
        Value::I32(x) => Some(x.into()),
        Value::I64(x) => Some(x),
        _ => None,
    }
}

fn value_as_f64(v: &Value) -> Option<f64> {
    match *v {
        Value::F32(x) => Some(x.into()),
        Value::F64(x) => Some(x),
        _ => value_as_i64(v).map(|x| x as f64),
    }
}

/// An open GGUF file: its validated header and a handle to read tensors from.
pub struct GgufFile {
    path: PathBuf,
    metadata: Metadata,
    tensor_infos: HashMap<String, TensorInfo>,
    tensor_data_offset: u64,
    reader: BufReader<File>,
}

impl std::fmt::Debug for GgufFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GgufFile")
            .field("path", &self.path)
            .field("tensors", &self.tensor_infos.len())
            .finish()
    }
}

impl GgufFile {
    /// Opens and validates `path`: the magic bytes, the header, and that every tensor's data
    /// lies inside the file (so a truncated download fails here, not halfway through loading).
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref().to_path_buf();
        let file = File::open(&path).map_err(|e| Error::io(&path, e))?;
        let mut reader = BufReader::new(file);
        let invalid = |reason: String| Error::InvalidGguf {
            path: path.clone(),
            reason,
        };
        let file_len = reader
            .get_ref()
            .metadata()
            .map_err(|e| Error::io(&path, e))?
            .len();
        let content = read_header(&mut reader, file_len).map_err(|e| match e {
            HeaderError::Invalid(reason) => invalid(reason),
            HeaderError::UnknownType(id) => Error::UnsupportedTensorType {
                path: path.clone(),
                type_name: ggml_type_name(id),
            },
        })?;
        Ok(Self {
            path,
            metadata: Metadata::new(content.metadata),
            tensor_infos: content.tensor_infos,
            tensor_data_offset: content.tensor_data_offset,
            reader,
        })
    }

    /// The path this file was opened from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The file's metadata.
    pub fn metadata(&self) -> &Metadata {
        &self.metadata
    }

    /// The `general.architecture` key.
    pub fn architecture(&self) -> Result<&str> {
        self.metadata.str("general.architecture")
    }

    /// Whether a tensor named `name` exists.
    pub fn has_tensor(&self, name: &str) -> bool {
        self.tensor_infos.contains_key(name)
    }

    /// The shape (outermost dimension first) and type of a tensor, if present.
    pub fn tensor_info(&self, name: &str) -> Option<(&[usize], GgmlDType)> {
        self.tensor_infos
            .get(name)
            .map(|i| (i.shape.dims(), i.ggml_dtype))
    }

    /// How many tensors the file holds.
    pub fn tensor_count(&self) -> usize {
        self.tensor_infos.len()
    }

    /// Names of all tensors, sorted.
    pub fn tensor_names(&self) -> Vec<&str> {
        let mut names: Vec<&str> = self.tensor_infos.keys().map(String::as_str).collect();
        names.sort_unstable();
        names
    }

    /// Reads a tensor onto `device`, keeping it quantized. On the CPU the file's bytes go
    /// straight into the tensor's blocks, so loading a tensor holds one copy of it (candle's
    /// reader holds the raw bytes and the blocks copied from them at once).
    pub fn tensor(&mut self, name: &str, device: &Device) -> Result<QTensor> {
        let info = self.info(name)?;
        if device.is_cpu() {
            return self.cpu_tensor(name, info.ggml_dtype);
        }
        info.read(&mut self.reader, self.tensor_data_offset, device)
            .map_err(|e| Error::Tensor {
                name: name.to_string(),
                reason: candle_message(&e),
            })
    }

    /// Reads `buf.len()` bytes of tensor `name`'s data, from byte `start` of that data.
    pub fn read_tensor_bytes(&mut self, name: &str, start: u64, buf: &mut [u8]) -> Result<()> {
        let info = self.info(name)?;
        let size = (info.shape.elem_count() / info.ggml_dtype.block_size()
            * info.ggml_dtype.type_size()) as u64;
        let fail = |reason: String| Error::Tensor {
            name: name.to_string(),
            reason,
        };
        if start
            .checked_add(buf.len() as u64)
            .is_none_or(|end| end > size)
        {
            return Err(fail(format!(
                "{} bytes from byte {start} lie past the tensor's {size} bytes",
                buf.len()
            )));
        }
        let at = self.tensor_data_offset + info.offset + start;
        self.reader
            .seek(SeekFrom::Start(at))
            .and_then(|_| self.reader.read_exact(buf))
            .map_err(|e| fail(format!("reading {} bytes at offset {at}: {e}", buf.len())))
    }

    fn info(&self, name: &str) -> Result<TensorInfo> {
        self.tensor_infos
            .get(name)
            .map(|i| TensorInfo {
                ggml_dtype: i.ggml_dtype,
                shape: i.shape.clone(),
                offset: i.offset,
            })
            .ok_or_else(|| Error::Tensor {
                name: name.to_string(),
                reason: format!("missing from {}", self.path.display()),
            })
    }

    /// A CPU tensor of `dtype`, read into its blocks in place.
    fn cpu_tensor(&mut self, name: &str, dtype: GgmlDType) -> Result<QTensor> {
        use candle_core::quantized::k_quants as k;
        match dtype {
            GgmlDType::F32 => self.blocks::<f32>(name),
            GgmlDType::F16 => self.blocks::<half::f16>(name),
            GgmlDType::BF16 => self.blocks::<half::bf16>(name),
            GgmlDType::Q4_0 => self.blocks::<k::BlockQ4_0>(name),
            GgmlDType::Q4_1 => self.blocks::<k::BlockQ4_1>(name),
            GgmlDType::Q5_0 => self.blocks::<k::BlockQ5_0>(name),
            GgmlDType::Q5_1 => self.blocks::<k::BlockQ5_1>(name),
            GgmlDType::Q8_0 => self.blocks::<k::BlockQ8_0>(name),
            GgmlDType::Q8_1 => self.blocks::<k::BlockQ8_1>(name),
            GgmlDType::Q2K => self.blocks::<k::BlockQ2K>(name),
            GgmlDType::Q3K => self.blocks::<k::BlockQ3K>(name),
            GgmlDType::Q4K => self.blocks::<k::BlockQ4K>(name),
            GgmlDType::Q5K => self.blocks::<k::BlockQ5K>(name),
            GgmlDType::Q6K => self.blocks::<k::BlockQ6K>(name),
            GgmlDType::Q8K => self.blocks::<k::BlockQ8K>(name),
        }
    }

    /// Tensor `name` as a vector of GGML blocks `T` filled from the file.
    fn blocks<T: GgmlType + 'static>(&mut self, name: &str) -> Result<QTensor> {
        let info = self.info(name)?;
        let fail = |reason: String| Error::Tensor {
            name: name.to_string(),
            reason,
        };
        let elems = info.shape.elem_count();
        if !elems.is_multiple_of(T::BLCK_SIZE) || std::mem::size_of::<T>() != T::DTYPE.type_size() {
            return Err(fail(format!(
                "{elems} elements do not fill whole {:?} blocks",
                T::DTYPE
            )));
        }
        let mut blocks = vec![T::zeros(); elems / T::BLCK_SIZE];
        // SAFETY: GGML's block types are `repr(C)` structs of integers and half floats with no
        // padding (their size is the type's size in the file, checked above), so the slice's
        // bytes may be overwritten with any bytes and the blocks stay valid values.
        let bytes = unsafe {
            std::slice::from_raw_parts_mut(
                blocks.as_mut_ptr().cast::<u8>(),
                std::mem::size_of_val(blocks.as_slice()),
            )
        };
        self.read_tensor_bytes(name, 0, bytes)?;
        QTensor::new(QStorage::Cpu(Box::new(blocks)), info.shape.dims())
            .map_err(|e| fail(candle_message(&e)))
    }

    /// Frees the metadata (the vocabulary arrays are tens of megabytes for a large
    /// vocabulary) once the tokenizer, template and configuration are built from it, so that
    /// it is not held while the weights load; the heap's freed pages go back to the system.
    pub fn release_metadata(&mut self) {
        self.metadata = Metadata::default();
        crate::engine::alloc::return_free_memory();
    }

    /// Consumes the file, returning its metadata.
    pub fn into_metadata(self) -> Metadata {
        self.metadata
    }
}

/// The ggml name of a tensor type id, for error messages.
fn ggml_type_name(id: u32) -> String {
    let name = match id {
        4 => "Q4_2 (removed from ggml)",
        5 => "Q4_3 (removed from ggml)",
        16 => "IQ2_XXS",
        17 => "IQ2_XS",
        18 => "IQ3_XXS",
        19 => "IQ1_S",
        20 => "IQ4_NL",
        21 => "IQ3_S",
        22 => "IQ2_S",
        23 => "IQ4_XS",
        24 => "I8",
        25 => "I16",
        26 => "I32",
        27 => "I64",
        28 => "F64",
        29 => "IQ1_M",
        34 => "TQ1_0",
        35 => "TQ2_0",
        39 => "MXFP4",
        _ => return format!("with ggml id {id} (unknown)"),
    };
    format!("{name} (ggml id {id})")
}

/// Reads only the metadata of a GGUF file (used by tools that need the tokenizer or chat
/// template without the weights).
pub fn read_metadata(path: impl AsRef<Path>) -> Result<Metadata> {
    GgufFile::open(path).map(GgufFile::into_metadata)
}
