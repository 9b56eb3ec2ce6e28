//! A reader for GGUF v3 model files (the llama.cpp format): metadata, tensor table, alignment,
//! and dequantisation of F32, F16, BF16, Q8_0, Q4_0 and Q4_1 tensors into f32 tch tensors
//! (`architecture.md`, "model/ gguf.rs": weight loading with dequantisation).
//!
//! Layout of a file (all integers little-endian):
//! ```text
//! "GGUF" u32 version  u64 tensor_count  u64 metadata_count
//! metadata_count × (string key, u32 value_type, value)
//! tensor_count   × (string name, u32 n_dims, n_dims × u64 ne, u32 ggml_type, u64 offset)
//! padding to `general.alignment` (default 32)
//! tensor data; each tensor at data_start + offset, offset a multiple of the alignment
//! ```
//! A string is a u64 byte length and UTF-8 bytes. GGUF lists a tensor's dimensions fastest axis
//! first (`ne[0]` is contiguous), so the row-major shape is the list reversed.
//!
//! Written here rather than taken from a crate: the crates on crates.io (`gguf`, `gguf-rs`,
//! `gguf-rs-lib`, `ggus`) either lack dequantisation into tensors and access to the raw Q4_1
//! blocks, give errors that name neither the file nor the field, need a newer Rust than this
//! crate's 1.85, or borrow every parsed item from the mapped bytes (a self-referential struct
//! once the map is owned). The format is small and fully specified; the reader is one file.

mod dequant;
mod parse;
#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::path::{Path, PathBuf};

use memmap2::Mmap;
use tch::Tensor;
use thiserror::Error;

use parse::parse;

pub use dequant::Q4_1Blocks;

/// What to run when the model file is missing or damaged.
const FETCH_HINT: &str = "fetch the default model with `make setup` (scripts/setup.sh)";
/// The alignment of the data section when `general.alignment` is absent.
pub const DEFAULT_ALIGNMENT: u64 = 32;
/// ggml's largest number of dimensions (`GGML_MAX_DIMS`).
const MAX_DIMS: u32 = 4;

/// Everything that can go wrong reading a GGUF file; each message names the file and the field
/// or tensor concerned.
#[derive(Debug, Error)]
pub enum GgufError {
    #[error("cannot open model file {path}: {source}; {}", FETCH_HINT)]
    Open {
        path: String,
        source: std::io::Error,
    },
    #[error("{path} is not a GGUF file (it starts with {found:?}, not \"GGUF\"); it is corrupt or of another format: delete it and {}", FETCH_HINT)]
    BadMagic { path: String, found: Vec<u8> },
    #[error("{path} is GGUF version {found}; only version 3 is supported")]
    Version { path: String, found: u32 },
    #[error("{path} is truncated: {what} needs bytes {start}..{end} but the file has {len}; delete it and {}", FETCH_HINT)]
    Truncated {
        path: String,
        what: String,
        start: u64,
        end: u64,
        len: u64,
    },
    #[error("{path} is malformed at {what}: {problem}")]
    Malformed {
        path: String,
        what: String,
        problem: String,
    },
    #[error("{path} has no metadata key `{key}`")]
    MissingKey { path: String, key: String },
    #[error("{path}: metadata key `{key}` is {found}, expected {expected}")]
    WrongType {
        path: String,
        key: String,
        expected: &'static str,
        found: String,
    },
    #[error("{path} has no tensor `{name}`")]
    MissingTensor { path: String, name: String },
    #[error("{path}: tensor `{tensor}` is of type {ty}, which infini cannot dequantise (supported: F32, F16, BF16, Q8_0, Q4_0, Q4_1)")]
    UnsupportedType {
        path: String,
        tensor: String,
        ty: GgmlType,
    },
    #[error("{path}: tensor `{tensor}` is of type {found}, expected {expected}")]
    WrongTensorType {
        path: String,
        tensor: String,
        expected: GgmlType,
        found: GgmlType,
    },
}

/// A metadata value; arrays may hold any type, arrays included.
#[derive(Debug, Clone, PartialEq)]
pub enum MetaValue {
    U8(u8),
    I8(i8),
    U16(u16),
    I16(i16),
    U32(u32),
    I32(i32),
    U64(u64),
    I64(i64),
    F32(f32),
    F64(f64),
    Bool(bool),
    String(String),
    Array(Vec<MetaValue>),
}

impl MetaValue {
    /// The GGUF name of this value's type, for error messages.
    pub fn type_name(&self) -> &'static str {
        match self {
            Self::U8(_) => "uint8",
            Self::I8(_) => "int8",
            Self::U16(_) => "uint16",
            Self::I16(_) => "int16",
            Self::U32(_) => "uint32",
            Self::I32(_) => "int32",
            Self::U64(_) => "uint64",
            Self::I64(_) => "int64",
            Self::F32(_) => "float32",
            Self::F64(_) => "float64",
            Self::Bool(_) => "bool",
            Self::String(_) => "string",
            Self::Array(_) => "array",
        }
    }

    /// Any integer type, as i128 (wide enough for u64 and i64 alike).
    fn as_integer(&self) -> Option<i128> {
        Some(match *self {
            Self::U8(v) => v.into(),
            Self::I8(v) => v.into(),
            Self::U16(v) => v.into(),
            Self::I16(v) => v.into(),
            Self::U32(v) => v.into(),
            Self::I32(v) => v.into(),
            Self::U64(v) => v.into(),
            Self::I64(v) => v.into(),
            _ => return None,
        })
    }

    /// A float or integer value as f64.
    fn as_number(&self) -> Option<f64> {
        match *self {
            Self::F32(v) => Some(v.into()),
            Self::F64(v) => Some(v),
            _ => self.as_integer().map(|v| v as f64),
        }
    }
}

/// A ggml tensor type: the six this reader dequantises, or another one kept by its id.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GgmlType {
    F32,
    F16,
    Q4_0,
    Q4_1,
    Q8_0,
    Bf16,
    Other(u32),
}

impl GgmlType {
    fn from_id(id: u32) -> Self {
        match id {
            0 => Self::F32,
            1 => Self::F16,
            2 => Self::Q4_0,
            3 => Self::Q4_1,
            8 => Self::Q8_0,
            30 => Self::Bf16,
            other => Self::Other(other),
        }
    }

    /// (elements per block, bytes per block) of a supported type.
    pub fn block_layout(self) -> Option<(u64, u64)> {
        match self {
            Self::F32 => Some((1, 4)),
            Self::F16 | Self::Bf16 => Some((1, 2)),
            Self::Q4_0 => Some((32, 18)),
            Self::Q4_1 => Some((32, 20)),
            Self::Q8_0 => Some((32, 34)),
            Self::Other(_) => None,
        }
    }
}

impl std::fmt::Display for GgmlType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // ggml's names (ggml.h, enum ggml_type); ids 4 and 5 were removed formats.
        const OTHER_NAMES: [(u32, &str); 22] = [
            (4, "Q4_2"),
            (5, "Q4_3"),
            (6, "Q5_0"),
            (7, "Q5_1"),
            (9, "Q8_1"),
            (10, "Q2_K"),
            (11, "Q3_K"),
            (12, "Q4_K"),
            (13, "Q5_K"),
            (14, "Q6_K"),
            (15, "Q8_K"),
            (16, "IQ2_XXS"),
            (17, "IQ2_XS"),
            (18, "IQ3_XXS"),
            (19, "IQ1_S"),
            (20, "IQ4_NL"),
            (21, "IQ3_S"),
            (22, "IQ2_S"),
            (23, "IQ4_XS"),
            (24, "I8"),
            (26, "I32"),
            (28, "F64"),
        ];
        match self {
            Self::F32 => f.write_str("F32"),
            Self::F16 => f.write_str("F16"),
            Self::Q4_0 => f.write_str("Q4_0"),
            Self::Q4_1 => f.write_str("Q4_1"),
            Self::Q8_0 => f.write_str("Q8_0"),
            Self::Bf16 => f.write_str("BF16"),
            Self::Other(id) => match OTHER_NAMES.iter().find(|(known, _)| known == id) {
                Some((_, name)) => write!(f, "{name} (ggml type {id})"),
                None => write!(f, "ggml type {id}"),
            },
        }
    }
}

/// One entry of the tensor table.
#[derive(Debug, Clone, PartialEq)]
pub struct TensorInfo {
    pub name: String,
    /// GGUF order: `dims[0]` is the fastest (contiguous) axis.
    pub dims: Vec<u64>,
    pub ggml_type: GgmlType,
    /// Byte offset from the start of the data section.
    pub offset: u64,
}

impl TensorInfo {
    /// The row-major shape (GGUF's dimensions reversed), e.g. `[out, in]` for a weight matrix.
    pub fn shape(&self) -> Vec<i64> {
        self.dims.iter().rev().map(|&d| d as i64).collect()
    }

    pub fn element_count(&self) -> u64 {
        self.dims.iter().product()
    }

    /// The byte size of the data, for a supported type whose fastest axis fills whole blocks.
    fn byte_size(&self) -> Option<u64> {
        let (block_elements, block_bytes) = self.ggml_type.block_layout()?;
        let fastest = self.dims.first().copied().unwrap_or(1);
        (fastest % block_elements == 0).then(|| self.element_count() / block_elements * block_bytes)
    }
}

/// An open GGUF file: parsed metadata and tensor table over the memory-mapped bytes.
pub struct GgufFile {
    path: PathBuf,
    map: Mmap,
    version: u32,
    alignment: u64,
    data_start: u64,
    metadata: BTreeMap<String, MetaValue>,
    tensors: Vec<TensorInfo>,
    tensor_index: HashMap<String, usize>,
}

impl std::fmt::Debug for GgufFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GgufFile")
            .field("path", &self.path)
            .field("version", &self.version)
            .field("metadata_keys", &self.metadata.len())
            .field("tensors", &self.tensors.len())
            .finish()
    }
}

impl GgufFile {
    /// Maps and parses the file; checks that every supported tensor's data lies inside it.
    pub fn open(path: impl AsRef<Path>) -> Result<Self, GgufError> {
        let path = path.as_ref().to_path_buf();
        let open_error = |source| GgufError::Open {
            path: path.display().to_string(),
            source,
        };
        let file = File::open(&path).map_err(open_error)?;
        // SAFETY: the map is read-only and private to this struct; a model file is not expected
        // to change while the server runs (if it is truncated underneath, reads fault, as with
        // any memory-mapped model loader).
        let map = unsafe { Mmap::map(&file) }.map_err(open_error)?;
        let parsed = parse(&map).map_err(|fault| fault.into_error(&path, map.len() as u64))?;
        let file = Self {
            tensor_index: parsed
                .tensors
                .iter()
                .enumerate()
                .map(|(i, t)| (t.name.clone(), i))
                .collect(),
            path,
            version: parsed.version,
            alignment: parsed.alignment,
            data_start: parsed.data_start,
            metadata: parsed.metadata,
            tensors: parsed.tensors,
            map,
        };
        file.check_tensor_extents()?;
        Ok(file)
    }

    fn check_tensor_extents(&self) -> Result<(), GgufError> {
        let len = self.map.len() as u64;
        for tensor in &self.tensors {
            if tensor.offset % self.alignment != 0 {
                return Err(GgufError::Malformed {
                    path: self.shown_path(),
                    what: format!("tensor `{}`", tensor.name),
                    problem: format!(
                        "data offset {} is not a multiple of the alignment {}",
                        tensor.offset, self.alignment
                    ),
                });
            }
            if tensor.ggml_type.block_layout().is_some() && tensor.byte_size().is_none() {
                return Err(GgufError::Malformed {
                    path: self.shown_path(),
                    what: format!("tensor `{}`", tensor.name),
                    problem: format!(
                        "fastest dimension {} does not fill whole {} blocks",
                        tensor.dims.first().unwrap_or(&1),
                        tensor.ggml_type
                    ),
                });
            }
            let start = self.data_start + tensor.offset;
            let end = start + tensor.byte_size().unwrap_or(0);
            if end > len {
                return Err(GgufError::Truncated {
                    path: self.shown_path(),
                    what: format!("the data of tensor `{}`", tensor.name),
                    start,
                    end,
                    len,
                });
            }
        }
        Ok(())
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The path as error messages show it.
    fn shown_path(&self) -> String {
        self.path.display().to_string()
    }

    pub fn version(&self) -> u32 {
        self.version
    }

    /// The data section's alignment (`general.alignment`, default 32).
    pub fn alignment(&self) -> u64 {
        self.alignment
    }

    /// The absolute byte offset where the data section starts.
    pub fn data_start(&self) -> u64 {
        self.data_start
    }

    pub fn metadata(&self) -> &BTreeMap<String, MetaValue> {
        &self.metadata
    }

    /// The value of a key, or an error naming the file and the key.
    pub fn meta(&self, key: &str) -> Result<&MetaValue, GgufError> {
        self.metadata.get(key).ok_or_else(|| GgufError::MissingKey {
            path: self.shown_path(),
            key: key.to_string(),
        })
    }

    fn wrong_type(&self, key: &str, expected: &'static str, found: &MetaValue) -> GgufError {
        GgufError::WrongType {
            path: self.shown_path(),
            key: key.to_string(),
            expected,
            found: found.type_name().to_string(),
        }
    }

    /// A non-negative integer of any integer type.
    pub fn meta_usize(&self, key: &str) -> Result<usize, GgufError> {
        let value = self.meta(key)?;
        value
            .as_integer()
            .and_then(|v| usize::try_from(v).ok())
            .ok_or_else(|| self.wrong_type(key, "a non-negative integer", value))
    }

    /// A float or integer, as f64.
    pub fn meta_f64(&self, key: &str) -> Result<f64, GgufError> {
        let value = self.meta(key)?;
        value
            .as_number()
            .ok_or_else(|| self.wrong_type(key, "a number", value))
    }

    pub fn meta_bool(&self, key: &str) -> Result<bool, GgufError> {
        match self.meta(key)? {
            MetaValue::Bool(b) => Ok(*b),
            other => Err(self.wrong_type(key, "a bool", other)),
        }
    }

    pub fn meta_str(&self, key: &str) -> Result<&str, GgufError> {
        match self.meta(key)? {
            MetaValue::String(s) => Ok(s),
            other => Err(self.wrong_type(key, "a string", other)),
        }
    }

    /// An array of strings.
    pub fn meta_strings(&self, key: &str) -> Result<Vec<&str>, GgufError> {
        let value = self.meta(key)?;
        let wrong = || self.wrong_type(key, "an array of strings", value);
        let MetaValue::Array(items) = value else {
            return Err(wrong());
        };
        items
            .iter()
            .map(|item| {
                if let MetaValue::String(s) = item {
                    Ok(s.as_str())
                } else {
                    Err(wrong())
                }
            })
            .collect()
    }

    /// An array of integers of any integer type, as i64.
    pub fn meta_integers(&self, key: &str) -> Result<Vec<i64>, GgufError> {
        let value = self.meta(key)?;
        let wrong = || self.wrong_type(key, "an array of integers", value);
        let MetaValue::Array(items) = value else {
            return Err(wrong());
        };
        items
            .iter()
            .map(|item| {
                item.as_integer()
                    .and_then(|v| i64::try_from(v).ok())
                    .ok_or_else(wrong)
            })
            .collect()
    }

    /// The tensor table, in file order.
    pub fn tensors(&self) -> &[TensorInfo] {
        &self.tensors
    }

    pub fn tensor_info(&self, name: &str) -> Result<&TensorInfo, GgufError> {
        self.tensor_index
            .get(name)
            .map(|&i| &self.tensors[i])
            .ok_or_else(|| GgufError::MissingTensor {
                path: self.shown_path(),
                name: name.to_string(),
            })
    }

    /// The raw bytes of a tensor of a supported type.
    pub fn tensor_bytes(&self, name: &str) -> Result<&[u8], GgufError> {
        let info = self.tensor_info(name)?;
        let size = info.byte_size().ok_or_else(|| self.unsupported(info))?;
        let start = (self.data_start + info.offset) as usize;
        // In bounds: `check_tensor_extents` verified every supported tensor at open.
        Ok(&self.map[start..start + size as usize])
    }

    fn unsupported(&self, info: &TensorInfo) -> GgufError {
        GgufError::UnsupportedType {
            path: self.shown_path(),
            tensor: info.name.clone(),
            ty: info.ggml_type,
        }
    }

    /// The tensor dequantised to f32 on the CPU, in its row-major shape.
    pub fn dequantize(&self, name: &str) -> Result<Tensor, GgufError> {
        let info = self.tensor_info(name)?;
        let values = dequant::to_f32(info.ggml_type, self.tensor_bytes(name)?)
            .ok_or_else(|| self.unsupported(info))?;
        Ok(Tensor::from_slice(&values).reshape(info.shape()))
    }

    /// The scales, minimums and 4-bit quants of a Q4_1 tensor, unchanged (w = d·q + m per block of
    /// 32 along the fastest axis), for packing into int4 kernels without re-quantising.
    pub fn q4_1_blocks(&self, name: &str) -> Result<Q4_1Blocks, GgufError> {
        let info = self.tensor_info(name)?;
        if info.ggml_type != GgmlType::Q4_1 {
            return Err(GgufError::WrongTensorType {
                path: self.shown_path(),
                tensor: name.to_string(),
                expected: GgmlType::Q4_1,
                found: info.ggml_type,
            });
        }
        Ok(Q4_1Blocks::unpack(self.tensor_bytes(name)?, &info.shape()))
    }
}
