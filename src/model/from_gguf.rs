//! The Llama decoder from a GGUF file (`architecture.md`, the model layer): llama.cpp's tensor names
//! and `llama.*` metadata mapped onto the Hugging Face names and [`LlamaConfig`] the decoder is built
//! from, with two things undone or kept on the way:
//! * llama.cpp's converter reorders the rows of `attn_q`/`attn_k` within each head for its
//!   adjacent-pair RoPE; our RoPE is Hugging Face's rotate-half, so the rows are put back
//!   ([`unpermute_rows`]).
//! * Q4_1 matrices stay int4 groups (scale d, zero m + 8·d): in int4 precision they go to the int4
//!   kernel exactly as stored, with no re-quantisation; F32/F16/BF16/Q8_0/Q4_0 tensors are
//!   dequantised to dense f32.

use tch::Tensor;

use super::q4::Int4Groups;
use super::{Llama, LlamaConfig, ModelError, ModelOptions, Weights};
use crate::gguf::{GgmlType, GgufFile};

/// The architecture's numbers from the GGUF metadata (`general.architecture` must be `llama`).
pub fn config(file: &GgufFile) -> Result<LlamaConfig, ModelError> {
    let arch = file.meta_str("general.architecture")?;
    if arch != "llama" {
        return Err(ModelError::BadConfig(format!(
            "{}: architecture `{arch}` is not a Llama-family decoder",
            file.path().display()
        )));
    }
    if let Ok(kind) = file.meta_str("llama.rope.scaling.type") {
        if kind != "none" {
            return Err(ModelError::Unsupported(format!(
                "{}: RoPE scaling `{kind}` is not supported",
                file.path().display()
            )));
        }
    }
    let int = |key: &str| -> Result<i64, ModelError> {
        let value = file.meta_usize(key)?;
        i64::try_from(value)
            .map_err(|_| ModelError::BadConfig(format!("{key} = {value} is too large")))
    };
    let hidden_size = int("llama.embedding_length")?;
    let num_heads = int("llama.attention.head_count")?;
    let head_dim = match file.meta_usize("llama.attention.key_length") {
        Ok(d) => d as i64,
        Err(_) => hidden_size / num_heads.max(1),
    };
    let vocab_size = file
        .tensor_info("token_embd.weight")?
        .shape()
        .first()
        .copied()
        .unwrap_or(0);
    let config = LlamaConfig {
        vocab_size,
        hidden_size,
        intermediate_size: int("llama.feed_forward_length")?,
        num_layers: int("llama.block_count")?,
        num_heads,
        num_kv_heads: file
            .meta_usize("llama.attention.head_count_kv")
            .map(|n| n as i64)
            .unwrap_or(num_heads),
        head_dim,
        rms_norm_eps: file.meta_f64("llama.attention.layer_norm_rms_epsilon")?,
        rope_theta: file.meta_f64("llama.rope.freq_base").unwrap_or(10_000.0),
        max_position_embeddings: int("llama.context_length")?,
        tie_word_embeddings: file.tensor_info("output.weight").is_err(),
    };
    config.validate()?;
    Ok(config)
}

/// The Hugging Face name of a GGUF tensor, and for `attn_q`/`attn_k` the head count whose rows
/// llama.cpp permuted (None for every other tensor).
fn hf_name(name: &str, config: &LlamaConfig) -> Option<(String, Option<i64>)> {
    let top = match name {
        "token_embd.weight" => Some("model.embed_tokens.weight"),
        "output_norm.weight" => Some("model.norm.weight"),
        "output.weight" => Some("lm_head.weight"),
        _ => None,
    };
    if let Some(top) = top {
        return Some((top.to_string(), None));
    }
    let rest = name.strip_prefix("blk.")?;
    let (layer, part) = rest.split_once('.')?;
    let layer: u32 = layer.parse().ok()?;
    let (hf, heads) = match part {
        "attn_norm.weight" => ("input_layernorm.weight", None),
        "ffn_norm.weight" => ("post_attention_layernorm.weight", None),
        "attn_q.weight" => ("self_attn.q_proj.weight", Some(config.num_heads)),
        "attn_k.weight" => ("self_attn.k_proj.weight", Some(config.num_kv_heads)),
        "attn_v.weight" => ("self_attn.v_proj.weight", None),
        "attn_output.weight" => ("self_attn.o_proj.weight", None),
        "ffn_gate.weight" => ("mlp.gate_proj.weight", None),
        "ffn_up.weight" => ("mlp.up_proj.weight", None),
        "ffn_down.weight" => ("mlp.down_proj.weight", None),
        _ => return None,
    };
    Some((format!("model.layers.{layer}.{hf}"), heads))
}

/// The row order that undoes llama.cpp's permutation of a q/k projection with `heads` heads of
/// `head_dim` rows. Its converter stores, within each head, the rows of the two rotate-half halves
/// interleaved (HF row j·D/2 + i at GGUF row 2i + j, j ∈ {0, 1}); Hugging Face row r of the result
/// is GGUF row `index[r]`.
pub fn unpermute_rows(heads: i64, head_dim: i64) -> Tensor {
    let half = head_dim / 2;
    let index: Vec<i64> = (0..heads)
        .flat_map(|h| (0..2).flat_map(move |j| (0..half).map(move |i| h * head_dim + 2 * i + j)))
        .collect();
    Tensor::from_slice(&index)
}

/// Every tensor the decoder uses, under its Hugging Face name; unknown tensors are an error.
pub fn weights(file: &GgufFile, config: &LlamaConfig) -> Result<Weights, ModelError> {
    let mut weights = Weights::default();
    for info in file.tensors() {
        let (name, permuted_heads) = hf_name(&info.name, config).ok_or_else(|| {
            ModelError::Unsupported(format!(
                "{}: tensor `{}` is not part of a Llama decoder",
                file.path().display(),
                info.name
            ))
        })?;
        let unpermute = |rows: i64| unpermute_rows(rows, config.head_dim);
        if info.ggml_type == GgmlType::Q4_1 && info.shape().len() == 2 {
            let mut groups = Int4Groups::from_q4_1(&file.q4_1_blocks(&info.name)?);
            if let Some(heads) = permuted_heads {
                groups = groups.select_rows(&unpermute(heads));
            }
            weights.insert_int4(name, groups);
        } else {
            let mut tensor = file.dequantize(&info.name)?;
            if let Some(heads) = permuted_heads {
                tensor = tensor.index_select(0, &unpermute(heads));
            }
            weights.insert(name, tensor);
        }
    }
    Ok(weights)
}

/// The decoder from a GGUF file.
pub fn load(file: &GgufFile, options: ModelOptions) -> Result<Llama, ModelError> {
    let config = config(file)?;
    let weights = weights(file, &config)?;
    Llama::new(config, weights, options)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unpermuting_inverts_llama_cpp_row_order() {
        // llama.cpp's permute: reshape(heads, 2, D/2, ..) → swap axes 1, 2 → reshape back.
        let (heads, d) = (3, 8);
        let hf = Tensor::arange(heads * d, (tch::Kind::Int64, tch::Device::Cpu));
        let gguf = hf
            .reshape([heads, 2, d / 2])
            .transpose(1, 2)
            .reshape([heads * d]);
        let back = gguf.index_select(0, &unpermute_rows(heads, d));
        assert!(back.equal(&hf), "rows not restored: {back}");
    }

    #[test]
    fn names_map_to_hugging_face() {
        let config = LlamaConfig {
            vocab_size: 10,
            hidden_size: 8,
            intermediate_size: 16,
            num_layers: 2,
            num_heads: 4,
            num_kv_heads: 2,
            head_dim: 2,
            rms_norm_eps: 1e-5,
            rope_theta: 1e4,
            max_position_embeddings: 16,
            tie_word_embeddings: true,
        };
        assert_eq!(
            hf_name("blk.1.attn_k.weight", &config),
            Some(("model.layers.1.self_attn.k_proj.weight".into(), Some(2)))
        );
        assert_eq!(
            hf_name("output_norm.weight", &config),
            Some(("model.norm.weight".into(), None))
        );
        assert_eq!(hf_name("blk.x.attn_q.weight", &config), None);
        assert_eq!(hf_name("rope_freqs.weight", &config), None);
    }
}
