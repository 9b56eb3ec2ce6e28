//! The GGUF reader on the real default model, against what llama.cpp's Python reader (`gguf` on
//! PyPI) reads from the same file: tests/fixtures/gguf_reference.json, written by
//! scripts/reference/gguf_fixture.py.

use infini::gguf::{GgmlType, GgufFile};
use serde_json::Value;

const MODEL: &str = "models/SmolLM2-135M-Instruct.Q4_1.gguf";

fn reference() -> Value {
    let text =
        std::fs::read_to_string("tests/fixtures/gguf_reference.json").expect("fixture present");
    serde_json::from_str(&text).expect("fixture is JSON")
}

fn open() -> GgufFile {
    GgufFile::open(MODEL).unwrap_or_else(|e| panic!("{e}"))
}

#[test]
fn metadata_matches_the_reference() {
    let (file, reference) = (open(), reference());
    assert_eq!(file.version(), 3);
    assert_eq!(
        file.metadata().len() as u64,
        reference["metadata_count"].as_u64().unwrap()
    );
    assert_eq!(file.alignment(), 32, "the file sets no general.alignment");
    for (key, expected) in reference["metadata"].as_object().unwrap() {
        match expected {
            Value::String(s) => assert_eq!(file.meta_str(key).unwrap(), s, "{key}"),
            Value::Bool(b) => assert_eq!(file.meta_bool(key).unwrap(), *b, "{key}"),
            // Floats are stored as f32 and printed by the reference widened to f64: equal as f32.
            Value::Number(n) => assert_eq!(
                file.meta_f64(key).unwrap() as f32,
                n.as_f64().unwrap() as f32,
                "{key}"
            ),
            other => panic!("unexpected fixture value {other} for {key}"),
        }
    }
    let tokens = file.meta_strings("tokenizer.ggml.tokens").unwrap();
    assert_eq!(
        tokens.len() as u64,
        reference["token_count"].as_u64().unwrap()
    );
    for (id, token) in reference["tokens_sample"].as_object().unwrap() {
        assert_eq!(
            tokens[id.parse::<usize>().unwrap()],
            token.as_str().unwrap(),
            "token {id}"
        );
    }
    let merges = file.meta_strings("tokenizer.ggml.merges").unwrap();
    assert_eq!(
        merges.len() as u64,
        reference["merge_count"].as_u64().unwrap()
    );
    assert_eq!(
        [merges[0], merges[merges.len() - 1]],
        [
            reference["merges_sample"][0].as_str().unwrap(),
            reference["merges_sample"][1].as_str().unwrap()
        ]
    );
}

#[test]
fn tensor_table_matches_the_reference() {
    let (file, reference) = (open(), reference());
    let expected = reference["tensors"].as_array().unwrap();
    assert_eq!(file.tensors().len(), expected.len());
    assert_eq!(
        expected.len() as u64,
        reference["tensor_count"].as_u64().unwrap()
    );
    for (tensor, expected) in file.tensors().iter().zip(expected) {
        assert_eq!(tensor.name, expected["name"].as_str().unwrap());
        assert_eq!(
            tensor.ggml_type.to_string(),
            expected["type"].as_str().unwrap(),
            "{}",
            tensor.name
        );
        let shape: Vec<i64> = expected["shape"]
            .as_array()
            .unwrap()
            .iter()
            .map(|d| d.as_i64().unwrap())
            .collect();
        assert_eq!(tensor.shape(), shape, "{}", tensor.name);
    }
}

#[test]
fn dequantised_values_match_the_reference() {
    let (file, reference) = (open(), reference());
    for (name, expected) in reference["dequantised"].as_object().unwrap() {
        let tensor = file.dequantize(name).unwrap();
        let flat = tensor.flatten(0, -1);
        for (index, value) in expected["indices"]
            .as_array()
            .unwrap()
            .iter()
            .zip(expected["values"].as_array().unwrap())
        {
            let ours = flat.double_value(&[index.as_i64().unwrap()]) as f32;
            // Both sides compute d·q (+ m) in f32 from the same f16 scales: equal as f32 (the
            // fixture's decimal text parses to the nearest f64 only within an ulp, hence f32).
            assert_eq!(ours, value.as_f64().unwrap() as f32, "{name}[{index}]");
        }
        let sum = flat
            .to_kind(tch::Kind::Double)
            .sum(tch::Kind::Double)
            .double_value(&[]);
        let sum_of_squares = flat
            .to_kind(tch::Kind::Double)
            .square()
            .sum(tch::Kind::Double)
            .double_value(&[]);
        // Sums in f64 of identical f32 values; only the summation order differs (relative 1e-9).
        let close = |a: f64, b: f64| (a - b).abs() <= 1e-9 * b.abs().max(1.0);
        assert!(
            close(sum, expected["sum"].as_f64().unwrap()),
            "{name}: sum {sum} vs {}",
            expected["sum"]
        );
        assert!(
            close(sum_of_squares, expected["sum_of_squares"].as_f64().unwrap()),
            "{name}: sum of squares {sum_of_squares}"
        );
    }
}

#[test]
fn q4_1_blocks_of_a_real_weight_reproduce_its_dequantisation() {
    let file = open();
    let name = "blk.0.ffn_gate.weight";
    assert_eq!(file.tensor_info(name).unwrap().ggml_type, GgmlType::Q4_1);
    let blocks = file.q4_1_blocks(name).unwrap();
    assert_eq!(blocks.quants.size(), [1536, 576]);
    assert_eq!(blocks.scales.size(), [1536, 18]);
    assert!(blocks.quants.max().int64_value(&[]) <= 15);
    let difference = (blocks.dequantize() - file.dequantize(name).unwrap())
        .abs()
        .max()
        .double_value(&[]);
    assert!(
        difference <= 1e-6,
        "d·q + m from the blocks differs from dequantize by {difference}"
    );
}
