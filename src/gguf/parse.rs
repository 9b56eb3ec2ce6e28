//! The GGUF byte layout, parsed from a mapped file with every read bounds-checked and named
//! ([`parse`]); [`super::GgufFile::open`] attaches the file's path to a [`Fault`].

use std::collections::BTreeMap;
use std::path::Path;

use super::{GgmlType, GgufError, MetaValue, TensorInfo, DEFAULT_ALIGNMENT, MAX_DIMS};

/// What the parser found before the file's path is attached.
pub(super) struct Parsed {
    pub(super) version: u32,
    pub(super) alignment: u64,
    pub(super) data_start: u64,
    pub(super) metadata: BTreeMap<String, MetaValue>,
    pub(super) tensors: Vec<TensorInfo>,
}

/// A parse failure, turned into a [`GgufError`] once the path is known.
#[derive(Debug)]
pub(super) enum Fault {
    BadMagic(Vec<u8>),
    Version(u32),
    Truncated { what: String, start: u64, end: u64 },
    Malformed { what: String, problem: String },
}

impl Fault {
    pub(super) fn into_error(self, path: &Path, len: u64) -> GgufError {
        let path = path.display().to_string();
        match self {
            Self::BadMagic(found) => GgufError::BadMagic { path, found },
            Self::Version(found) => GgufError::Version { path, found },
            Self::Truncated { what, start, end } => GgufError::Truncated {
                path,
                what,
                start,
                end,
                len,
            },
            Self::Malformed { what, problem } => GgufError::Malformed {
                path,
                what,
                problem,
            },
        }
    }
}

/// A bounds-checked little-endian reader; every read says what it was reading.
struct Cursor<'a> {
    bytes: &'a [u8],
    position: usize,
}

impl<'a> Cursor<'a> {
    fn take(&mut self, n: u64, what: &dyn Fn() -> String) -> Result<&'a [u8], Fault> {
        let start = self.position as u64;
        let end = start.saturating_add(n);
        if end > self.bytes.len() as u64 {
            return Err(Fault::Truncated {
                what: what(),
                start,
                end,
            });
        }
        self.position = end as usize;
        Ok(&self.bytes[start as usize..end as usize])
    }

    fn array<const N: usize>(&mut self, what: &dyn Fn() -> String) -> Result<[u8; N], Fault> {
        Ok(self
            .take(N as u64, what)?
            .try_into()
            .expect("take returns N bytes"))
    }

    fn u32(&mut self, what: &dyn Fn() -> String) -> Result<u32, Fault> {
        self.array(what).map(u32::from_le_bytes)
    }

    fn u64(&mut self, what: &dyn Fn() -> String) -> Result<u64, Fault> {
        self.array(what).map(u64::from_le_bytes)
    }

    fn string(&mut self, what: &dyn Fn() -> String) -> Result<String, Fault> {
        let len = self.u64(what)?;
        let start = self.position;
        let bytes = self.take(len, what)?;
        String::from_utf8(bytes.to_vec()).map_err(|e| Fault::Malformed {
            what: what(),
            problem: format!("string at byte {start} is not UTF-8: {e}"),
        })
    }

    /// A count of items each at least `min_item_bytes` long, checked against the bytes left so a
    /// corrupt count cannot ask for a huge allocation.
    fn count(&mut self, min_item_bytes: u64, what: &dyn Fn() -> String) -> Result<usize, Fault> {
        let count = self.u64(what)?;
        let left = (self.bytes.len() - self.position) as u64;
        if count.saturating_mul(min_item_bytes) > left {
            let start = self.position as u64;
            return Err(Fault::Truncated {
                what: format!("{} ({count} items)", what()),
                start,
                end: start.saturating_add(count.saturating_mul(min_item_bytes)),
            });
        }
        Ok(count as usize)
    }

    fn value(&mut self, value_type: u32, what: &dyn Fn() -> String) -> Result<MetaValue, Fault> {
        Ok(match value_type {
            0 => MetaValue::U8(self.array(what).map(u8::from_le_bytes)?),
            1 => MetaValue::I8(self.array(what).map(i8::from_le_bytes)?),
            2 => MetaValue::U16(self.array(what).map(u16::from_le_bytes)?),
            3 => MetaValue::I16(self.array(what).map(i16::from_le_bytes)?),
            4 => MetaValue::U32(self.u32(what)?),
            5 => MetaValue::I32(self.array(what).map(i32::from_le_bytes)?),
            6 => MetaValue::F32(self.array(what).map(f32::from_le_bytes)?),
            7 => match self.array::<1>(what)?[0] {
                0 => MetaValue::Bool(false),
                1 => MetaValue::Bool(true),
                b => {
                    return Err(Fault::Malformed {
                        what: what(),
                        problem: format!("bool byte is {b}, not 0 or 1"),
                    })
                }
            },
            8 => MetaValue::String(self.string(what)?),
            9 => {
                let item_type = self.u32(what)?;
                let len = self.count(1, what)?;
                let items = (0..len)
                    .map(|_| self.value(item_type, what))
                    .collect::<Result<_, _>>()?;
                MetaValue::Array(items)
            }
            10 => MetaValue::U64(self.u64(what)?),
            11 => MetaValue::I64(self.array(what).map(i64::from_le_bytes)?),
            12 => MetaValue::F64(self.array(what).map(f64::from_le_bytes)?),
            other => {
                return Err(Fault::Malformed {
                    what: what(),
                    problem: format!("unknown value type {other}"),
                })
            }
        })
    }
}

pub(super) fn parse(bytes: &[u8]) -> Result<Parsed, Fault> {
    let mut cursor = Cursor { bytes, position: 0 };
    let magic = cursor.take(4, &|| "the magic number".into())?;
    if magic != b"GGUF" {
        return Err(Fault::BadMagic(magic.to_vec()));
    }
    let version = cursor.u32(&|| "the version".into())?;
    if version != 3 {
        return Err(Fault::Version(version));
    }
    // A tensor entry is at least 8 (name length) + 4 + 4 + 8 bytes, a key-value pair 8 + 4 + 1.
    let tensor_count = cursor.count(24, &|| "the tensor count".into())?;
    let metadata_count = cursor.count(13, &|| "the metadata count".into())?;

    let mut metadata = BTreeMap::new();
    for i in 0..metadata_count {
        let key = cursor.string(&|| format!("the key of metadata entry {i}"))?;
        let what = || format!("the value of metadata key `{key}`");
        let value_type = cursor.u32(&what)?;
        let value = cursor.value(value_type, &what)?;
        if metadata.insert(key.clone(), value).is_some() {
            return Err(Fault::Malformed {
                what: format!("metadata key `{key}`"),
                problem: "the key appears twice".into(),
            });
        }
    }
    let alignment = match metadata.get("general.alignment") {
        None => DEFAULT_ALIGNMENT,
        Some(value) => value
            .as_integer()
            .and_then(|v| u64::try_from(v).ok())
            .filter(|&v| v > 0)
            .ok_or_else(|| Fault::Malformed {
                what: "metadata key `general.alignment`".into(),
                problem: format!("{value:?} is not a positive integer"),
            })?,
    };

    let mut tensors = Vec::with_capacity(tensor_count);
    for i in 0..tensor_count {
        let name = cursor.string(&|| format!("the name of tensor {i}"))?;
        let what = || format!("the table entry of tensor `{name}`");
        let n_dims = cursor.u32(&what)?;
        if n_dims > MAX_DIMS {
            return Err(Fault::Malformed {
                what: what(),
                problem: format!("{n_dims} dimensions, at most {MAX_DIMS} allowed"),
            });
        }
        let dims = (0..n_dims)
            .map(|_| cursor.u64(&what))
            .collect::<Result<Vec<_>, _>>()?;
        if dims
            .iter()
            .try_fold(1u64, |acc, &d| acc.checked_mul(d))
            .is_none()
        {
            return Err(Fault::Malformed {
                what: what(),
                problem: format!("dimensions {dims:?} overflow"),
            });
        }
        let ggml_type = GgmlType::from_id(cursor.u32(&what)?);
        let offset = cursor.u64(&what)?;
        tensors.push(TensorInfo {
            name,
            dims,
            ggml_type,
            offset,
        });
    }
    let mut names = std::collections::HashSet::new();
    if let Some(twice) = tensors.iter().find(|t| !names.insert(t.name.as_str())) {
        return Err(Fault::Malformed {
            what: format!("tensor `{}`", twice.name),
            problem: "the name appears twice".into(),
        });
    }
    let data_start = (cursor.position as u64).div_ceil(alignment) * alignment;
    Ok(Parsed {
        version,
        alignment,
        data_start,
        metadata,
        tensors,
    })
}
