//! Unit tests on small GGUF files written by [`Writer`], a minimal GGUF v3 encoder, with every
//! expected weight computed by hand from the block formats in `dequant.rs`.

use super::*;
use std::sync::atomic::{AtomicUsize, Ordering};

/// A tensor to write: name, GGUF dims (fastest first), ggml type id, raw data.
struct RawTensor {
    name: &'static str,
    dims: Vec<u64>,
    type_id: u32,
    data: Vec<u8>,
}

/// Writes GGUF v3 bytes from metadata and raw tensors.
#[derive(Default)]
struct Writer {
    metadata: Vec<(&'static str, MetaValue)>,
    tensors: Vec<RawTensor>,
    alignment: Option<u64>,
}

fn put_string(out: &mut Vec<u8>, s: &str) {
    out.extend((s.len() as u64).to_le_bytes());
    out.extend(s.as_bytes());
}

fn type_id(value: &MetaValue) -> u32 {
    match value {
        MetaValue::U8(_) => 0,
        MetaValue::I8(_) => 1,
        MetaValue::U16(_) => 2,
        MetaValue::I16(_) => 3,
        MetaValue::U32(_) => 4,
        MetaValue::I32(_) => 5,
        MetaValue::F32(_) => 6,
        MetaValue::Bool(_) => 7,
        MetaValue::String(_) => 8,
        MetaValue::Array(_) => 9,
        MetaValue::U64(_) => 10,
        MetaValue::I64(_) => 11,
        MetaValue::F64(_) => 12,
    }
}

fn put_payload(out: &mut Vec<u8>, value: &MetaValue) {
    match value {
        MetaValue::U8(v) => out.extend(v.to_le_bytes()),
        MetaValue::I8(v) => out.extend(v.to_le_bytes()),
        MetaValue::U16(v) => out.extend(v.to_le_bytes()),
        MetaValue::I16(v) => out.extend(v.to_le_bytes()),
        MetaValue::U32(v) => out.extend(v.to_le_bytes()),
        MetaValue::I32(v) => out.extend(v.to_le_bytes()),
        MetaValue::U64(v) => out.extend(v.to_le_bytes()),
        MetaValue::I64(v) => out.extend(v.to_le_bytes()),
        MetaValue::F32(v) => out.extend(v.to_le_bytes()),
        MetaValue::F64(v) => out.extend(v.to_le_bytes()),
        MetaValue::Bool(v) => out.push(u8::from(*v)),
        MetaValue::String(s) => put_string(out, s),
        MetaValue::Array(items) => {
            out.extend(items.first().map_or(0, type_id).to_le_bytes());
            out.extend((items.len() as u64).to_le_bytes());
            items.iter().for_each(|item| put_payload(out, item));
        }
    }
}

fn pad_to(out: &mut Vec<u8>, alignment: u64) {
    while !(out.len() as u64).is_multiple_of(alignment) {
        out.push(0);
    }
}

impl Writer {
    fn meta(mut self, key: &'static str, value: MetaValue) -> Self {
        self.metadata.push((key, value));
        self
    }

    fn tensor(mut self, name: &'static str, dims: &[u64], type_id: u32, data: Vec<u8>) -> Self {
        self.tensors.push(RawTensor {
            name,
            dims: dims.to_vec(),
            type_id,
            data,
        });
        self
    }

    fn bytes(&self) -> Vec<u8> {
        let alignment = self.alignment.unwrap_or(DEFAULT_ALIGNMENT);
        let mut out = b"GGUF".to_vec();
        out.extend(3u32.to_le_bytes());
        out.extend((self.tensors.len() as u64).to_le_bytes());
        let alignment_entry = self
            .alignment
            .map(|a| ("general.alignment", MetaValue::U32(a as u32)));
        out.extend(
            (self.metadata.len() as u64 + u64::from(alignment_entry.is_some())).to_le_bytes(),
        );
        for (key, value) in self.metadata.iter().chain(alignment_entry.iter()) {
            put_string(&mut out, key);
            out.extend(type_id(value).to_le_bytes());
            put_payload(&mut out, value);
        }
        let mut offset = 0u64;
        for tensor in &self.tensors {
            put_string(&mut out, tensor.name);
            out.extend((tensor.dims.len() as u32).to_le_bytes());
            tensor.dims.iter().for_each(|d| out.extend(d.to_le_bytes()));
            out.extend(tensor.type_id.to_le_bytes());
            out.extend(offset.to_le_bytes());
            offset = (offset + tensor.data.len() as u64).div_ceil(alignment) * alignment;
        }
        for tensor in &self.tensors {
            pad_to(&mut out, alignment);
            out.extend(&tensor.data);
        }
        out
    }
}

/// A file under the temporary directory, removed when dropped.
struct TempFile(PathBuf);

impl TempFile {
    fn with(bytes: &[u8]) -> Self {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let path =
            std::env::temp_dir().join(format!("infini-gguf-test-{}-{n}.gguf", std::process::id()));
        std::fs::write(&path, bytes).expect("write a temporary GGUF file");
        Self(path)
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

fn open(writer: &Writer) -> Result<GgufFile, GgufError> {
    let file = TempFile::with(&writer.bytes());
    GgufFile::open(&file.0)
}

fn values(tensor: &Tensor) -> Vec<f32> {
    Vec::<f32>::try_from(tensor.flatten(0, -1)).expect("an f32 tensor")
}

const F16_HALF: [u8; 2] = 0x3800u16.to_le_bytes(); // 0.5
const F16_TWO: [u8; 2] = 0x4000u16.to_le_bytes(); // 2.0
const F16_QUARTER: [u8; 2] = 0x3400u16.to_le_bytes(); // 0.25
const F16_MINUS_ONE: [u8; 2] = 0xBC00u16.to_le_bytes(); // -1.0

/// A 4-bit block's 16 bytes: weight j (j < 16) has nibble j, weight j + 16 has nibble 15 − j.
fn ramp_nibbles() -> Vec<u8> {
    (0..16u8).map(|j| j | ((15 - j) << 4)).collect()
}

#[test]
fn reads_every_metadata_value_type() {
    let all = [
        ("u8", MetaValue::U8(200)),
        ("i8", MetaValue::I8(-100)),
        ("u16", MetaValue::U16(60_000)),
        ("i16", MetaValue::I16(-30_000)),
        ("u32", MetaValue::U32(4_000_000_000)),
        ("i32", MetaValue::I32(-2_000_000_000)),
        ("u64", MetaValue::U64(u64::MAX)),
        ("i64", MetaValue::I64(i64::MIN)),
        ("f32", MetaValue::F32(1.5)),
        ("f64", MetaValue::F64(-2.25)),
        ("bool", MetaValue::Bool(true)),
        ("string", MetaValue::String("héllo ∞".into())),
        (
            "strings",
            MetaValue::Array(vec![
                MetaValue::String("a".into()),
                MetaValue::String("".into()),
            ]),
        ),
        (
            "ints",
            MetaValue::Array(vec![MetaValue::I32(-1), MetaValue::I32(7)]),
        ),
        (
            "nested",
            MetaValue::Array(vec![
                MetaValue::Array(vec![MetaValue::U8(1)]),
                MetaValue::Array(vec![MetaValue::U8(2)]),
            ]),
        ),
        ("empty", MetaValue::Array(vec![])),
    ];
    let writer = all
        .iter()
        .cloned()
        .fold(Writer::default(), |w, (k, v)| w.meta(k, v));
    let file = open(&writer).unwrap();
    assert_eq!(file.version(), 3);
    for (key, value) in &all {
        assert_eq!(file.meta(key).unwrap(), value, "key {key}");
    }
    assert_eq!(file.meta_usize("u32").unwrap(), 4_000_000_000);
    assert_eq!(file.meta_f64("f32").unwrap(), 1.5);
    assert_eq!(file.meta_f64("u16").unwrap(), 60_000.0);
    assert!(file.meta_bool("bool").unwrap());
    assert_eq!(file.meta_str("string").unwrap(), "héllo ∞");
    assert_eq!(file.meta_strings("strings").unwrap(), ["a", ""]);
    assert_eq!(file.meta_integers("ints").unwrap(), [-1, 7]);
    assert!(file.tensors().is_empty());
}

#[test]
fn typed_getters_name_the_key_and_the_types() {
    let file = open(
        &Writer::default()
            .meta("name", MetaValue::String("x".into()))
            .meta("neg", MetaValue::I32(-1)),
    )
    .unwrap();
    let message = file.meta_usize("name").unwrap_err().to_string();
    assert!(
        message.contains("`name` is string, expected a non-negative integer"),
        "{message}"
    );
    let message = file.meta_usize("neg").unwrap_err().to_string();
    assert!(message.contains("`neg` is int32"), "{message}");
    let message = file.meta_str("absent").unwrap_err().to_string();
    assert!(
        message.contains("no metadata key `absent`") && message.contains("infini-gguf-test"),
        "{message}"
    );
    let message = file.meta_strings("name").unwrap_err().to_string();
    assert!(
        message.contains("expected an array of strings"),
        "{message}"
    );
}

#[test]
fn data_section_follows_the_default_or_the_given_alignment() {
    let data = 1.0f32.to_le_bytes().to_vec();
    for (alignment, expected) in [(None, 32), (Some(64), 64), (Some(8), 8)] {
        let writer = Writer {
            alignment,
            ..Writer::default()
        }
        .tensor("a", &[1], 0, data.clone())
        .tensor("b", &[1], 0, 2.0f32.to_le_bytes().to_vec());
        let file = open(&writer).unwrap();
        assert_eq!(file.alignment(), expected);
        assert_eq!(file.data_start() % expected, 0);
        assert_eq!(
            file.tensor_info("b").unwrap().offset,
            expected,
            "b starts one alignment unit after a"
        );
        assert_eq!(values(&file.dequantize("b").unwrap()), [2.0]);
    }
}

#[test]
fn dequantises_f32_f16_and_bf16_with_reversed_dims() {
    let f32_data: Vec<u8> = [1.0f32, -2.5, 3.25, 0.0, 1e-3, 7.0]
        .iter()
        .flat_map(|v| v.to_le_bytes())
        .collect();
    // f16: 1.0, -2.0, 0.5, 65504 (largest); bf16: 1.0, -3.0, 0.15625 (0x3E20), -inf.
    let f16_data: Vec<u8> = [0x3C00u16, 0xC000, 0x3800, 0x7BFF]
        .iter()
        .flat_map(|v| v.to_le_bytes())
        .collect();
    let bf16_data: Vec<u8> = [0x3F80u16, 0xC040, 0x3E20, 0xFF80]
        .iter()
        .flat_map(|v| v.to_le_bytes())
        .collect();
    let file = open(
        &Writer::default()
            .tensor("f32", &[3, 2], 0, f32_data)
            .tensor("f16", &[4], 1, f16_data)
            .tensor("bf16", &[2, 2], 30, bf16_data),
    )
    .unwrap();
    let t = file.dequantize("f32").unwrap();
    assert_eq!(t.size(), [2, 3], "GGUF dims [3, 2] are row-major [2, 3]");
    assert_eq!(values(&t), [1.0, -2.5, 3.25, 0.0, 1e-3, 7.0]);
    assert_eq!(
        values(&file.dequantize("f16").unwrap()),
        [1.0, -2.0, 0.5, 65504.0]
    );
    assert_eq!(
        values(&file.dequantize("bf16").unwrap()),
        [1.0, -3.0, 0.15625, f32::NEG_INFINITY]
    );
}

#[test]
fn dequantises_q8_0() {
    // d = 0.5, q_i = i − 16, so w_i = 0.5·(i − 16).
    let mut block = F16_HALF.to_vec();
    block.extend((0..32i8).map(|i| (i - 16) as u8));
    let file = open(&Writer::default().tensor("q8", &[32], 8, block)).unwrap();
    let expected: Vec<f32> = (0..32).map(|i| 0.5 * (i as f32 - 16.0)).collect();
    assert_eq!(values(&file.dequantize("q8").unwrap()), expected);
}

#[test]
fn dequantises_q4_0() {
    // d = 2: w_j = 2·(j − 8) and w_{j+16} = 2·(15 − j − 8) for j < 16.
    let mut block = F16_TWO.to_vec();
    block.extend(ramp_nibbles());
    let file = open(&Writer::default().tensor("q4", &[32], 2, block)).unwrap();
    let mut expected: Vec<f32> = (0..16).map(|j| 2.0 * (j as f32 - 8.0)).collect();
    expected.extend((0..16).map(|j| 2.0 * ((15 - j) as f32 - 8.0)));
    assert_eq!(values(&file.dequantize("q4").unwrap()), expected);
}

/// Two Q4_1 rows of 32: row 0 with d = 0.25, m = −1; row 1 with d = 2, m = 0.5.
fn q4_1_two_rows() -> (Vec<u8>, Vec<f32>) {
    let mut data = [F16_QUARTER, F16_MINUS_ONE].concat();
    data.extend(ramp_nibbles());
    data.extend([F16_TWO, F16_HALF].concat());
    data.extend(ramp_nibbles());
    let row = |d: f32, m: f32| {
        (0..16)
            .map(|j| j as f32)
            .chain((0..16).map(|j| (15 - j) as f32))
            .map(move |q| d * q + m)
    };
    (data, row(0.25, -1.0).chain(row(2.0, 0.5)).collect())
}

#[test]
fn dequantises_q4_1_rows_in_order() {
    let (data, expected) = q4_1_two_rows();
    let file = open(&Writer::default().tensor("w", &[32, 2], 3, data)).unwrap();
    let t = file.dequantize("w").unwrap();
    assert_eq!(t.size(), [2, 32]);
    assert_eq!(values(&t), expected);
}

#[test]
fn q4_1_blocks_are_the_raw_scales_minimums_and_quants() {
    let (data, expected) = q4_1_two_rows();
    let file = open(&Writer::default().tensor("w", &[32, 2], 3, data).tensor(
        "f",
        &[1],
        0,
        vec![0; 4],
    ))
    .unwrap();
    let blocks = file.q4_1_blocks("w").unwrap();
    assert_eq!(
        Vec::<f32>::try_from(blocks.scales.flatten(0, -1)).unwrap(),
        [0.25, 2.0]
    );
    assert_eq!(
        Vec::<f32>::try_from(blocks.mins.flatten(0, -1)).unwrap(),
        [-1.0, 0.5]
    );
    assert_eq!(blocks.scales.size(), [2, 1]);
    assert_eq!(blocks.quants.size(), [2, 32]);
    let quants = Vec::<u8>::try_from(blocks.quants.flatten(0, -1)).unwrap();
    assert_eq!(quants[..3], [0, 1, 2]);
    assert_eq!(quants[16..19], [15, 14, 13]);
    assert_eq!(values(&blocks.dequantize()), expected);
    let message = file.q4_1_blocks("f").unwrap_err().to_string();
    assert!(
        message.contains("tensor `f` is of type F32, expected Q4_1"),
        "{message}"
    );
}

#[test]
fn other_types_are_an_error_naming_the_type_and_the_tensor() {
    // Q4_K (id 12): 144 bytes per 256 weights; the table still opens.
    let file =
        open(&Writer::default().tensor("blk.0.ffn_up.weight", &[256], 12, vec![0; 144])).unwrap();
    assert_eq!(
        file.tensor_info("blk.0.ffn_up.weight").unwrap().ggml_type,
        GgmlType::Other(12)
    );
    let message = file
        .dequantize("blk.0.ffn_up.weight")
        .unwrap_err()
        .to_string();
    assert!(
        message.contains("`blk.0.ffn_up.weight` is of type Q4_K (ggml type 12)"),
        "{message}"
    );
    assert!(
        matches!(file.dequantize("nope"), Err(GgufError::MissingTensor { name, .. }) if name == "nope")
    );
}

#[test]
fn bad_magic_and_version_are_named() {
    let good = Writer::default().tensor("t", &[1], 0, vec![0; 4]).bytes();
    let mut bad_magic = good.clone();
    bad_magic[..4].copy_from_slice(b"GGML");
    let message = GgufFile::open(&TempFile::with(&bad_magic).0)
        .unwrap_err()
        .to_string();
    assert!(
        message.contains("not a GGUF file") && message.contains("make setup"),
        "{message}"
    );
    let mut v2 = good;
    v2[4..8].copy_from_slice(&2u32.to_le_bytes());
    let message = GgufFile::open(&TempFile::with(&v2).0)
        .unwrap_err()
        .to_string();
    assert!(
        message.contains("GGUF version 2; only version 3"),
        "{message}"
    );
}

#[test]
fn every_truncation_is_a_clear_error() {
    let (data, _) = q4_1_two_rows();
    let bytes = Writer::default()
        .meta("general.name", MetaValue::String("tiny".into()))
        .tensor("w", &[32, 2], 3, data)
        .bytes();
    assert!(GgufFile::open(&TempFile::with(&bytes).0).is_ok());
    for cut in 0..bytes.len() {
        let error = GgufFile::open(&TempFile::with(&bytes[..cut]).0).unwrap_err();
        assert!(
            matches!(error, GgufError::Truncated { .. }),
            "cut at {cut}: {error}"
        );
        assert!(
            error.to_string().contains("make setup"),
            "cut at {cut}: {error}"
        );
    }
    let message = GgufFile::open(&TempFile::with(&bytes[..bytes.len() - 1]).0)
        .unwrap_err()
        .to_string();
    assert!(message.contains("the data of tensor `w`"), "{message}");
}

#[test]
fn a_corrupt_count_does_not_allocate_and_a_misaligned_offset_is_refused() {
    let mut huge_count = Writer::default().bytes();
    huge_count[8..16].copy_from_slice(&u64::MAX.to_le_bytes());
    let message = GgufFile::open(&TempFile::with(&huge_count).0)
        .unwrap_err()
        .to_string();
    assert!(message.contains("the tensor count"), "{message}");

    let mut bytes = Writer::default().tensor("t", &[1], 0, vec![0; 4]).bytes();
    let table_end = 24 + 8 + 1 + 4 + 8 + 4 + 8; // header, name "t", n_dims, one dim, type, offset
    bytes[table_end - 8..table_end].copy_from_slice(&4u64.to_le_bytes());
    let message = GgufFile::open(&TempFile::with(&bytes).0)
        .unwrap_err()
        .to_string();
    assert!(
        message.contains("offset 4 is not a multiple of the alignment 32"),
        "{message}"
    );
}

#[test]
fn a_missing_file_says_how_to_fetch_it() {
    let message = GgufFile::open("/nonexistent/model.gguf")
        .unwrap_err()
        .to_string();
    assert!(
        message.contains("/nonexistent/model.gguf") && message.contains("make setup"),
        "{message}"
    );
}
