//! Loading a Hugging Face model folder of the Llama family: `config.json`, `*.safetensors`,
//! `tokenizer.json` and `tokenizer_config.json` (the tokenizer files are located here and read by
//! the tokenizer module). `scripts/reference/convert_hf.py` makes such a folder from the GGUF.

use std::path::{Path, PathBuf};

use serde::Deserialize;
use tch::Tensor;

use super::{Llama, LlamaConfig, ModelError, ModelOptions, Weights};

/// The fields of `config.json` the decoder needs (both the older top-level `rope_theta` and the
/// newer `rope_parameters.rope_theta` are accepted).
#[derive(Debug, Deserialize)]
struct HfConfig {
    model_type: Option<String>,
    vocab_size: i64,
    hidden_size: i64,
    intermediate_size: i64,
    num_hidden_layers: i64,
    num_attention_heads: i64,
    num_key_value_heads: Option<i64>,
    head_dim: Option<i64>,
    rms_norm_eps: f64,
    rope_theta: Option<f64>,
    rope_parameters: Option<RopeParameters>,
    rope_scaling: Option<serde_json::Value>,
    max_position_embeddings: i64,
    #[serde(default)]
    tie_word_embeddings: bool,
}

#[derive(Debug, Deserialize)]
struct RopeParameters {
    rope_theta: Option<f64>,
    rope_type: Option<String>,
}

impl HfConfig {
    fn into_llama(self) -> Result<LlamaConfig, String> {
        if let Some(kind) = self
            .model_type
            .as_deref()
            .filter(|k| !matches!(*k, "llama" | "mistral"))
        {
            return Err(format!("model_type `{kind}` is not a Llama-family decoder"));
        }
        let scaled = self.rope_scaling.as_ref().is_some_and(|v| !v.is_null())
            || self
                .rope_parameters
                .as_ref()
                .and_then(|p| p.rope_type.as_deref())
                .is_some_and(|t| t != "default");
        if scaled {
            return Err("RoPE scaling is not supported".into());
        }
        let rope_theta = self
            .rope_parameters
            .as_ref()
            .and_then(|p| p.rope_theta)
            .or(self.rope_theta)
            .unwrap_or(10_000.0);
        Ok(LlamaConfig {
            vocab_size: self.vocab_size,
            hidden_size: self.hidden_size,
            intermediate_size: self.intermediate_size,
            num_layers: self.num_hidden_layers,
            num_heads: self.num_attention_heads,
            num_kv_heads: self.num_key_value_heads.unwrap_or(self.num_attention_heads),
            head_dim: self
                .head_dim
                .unwrap_or(self.hidden_size / self.num_attention_heads.max(1)),
            rms_norm_eps: self.rms_norm_eps,
            rope_theta,
            max_position_embeddings: self.max_position_embeddings,
            tie_word_embeddings: self.tie_word_embeddings,
        })
    }
}

/// A Hugging Face model folder, checked for the files it needs.
#[derive(Debug, Clone)]
pub struct HfFolder {
    pub dir: PathBuf,
    pub config: LlamaConfig,
    pub safetensors: Vec<PathBuf>,
    pub tokenizer_json: PathBuf,
    pub tokenizer_config_json: PathBuf,
}

impl HfFolder {
    /// Reads `config.json` and finds the weight and tokenizer files.
    pub fn open(dir: impl AsRef<Path>) -> Result<Self, ModelError> {
        let dir = dir.as_ref().to_path_buf();
        let config_path = dir.join("config.json");
        let text = std::fs::read_to_string(&config_path).map_err(|source| ModelError::Io {
            path: config_path.clone(),
            source,
        })?;
        let parsed: HfConfig = serde_json::from_str(&text).map_err(|e| ModelError::BadFile {
            path: config_path.clone(),
            message: e.to_string(),
        })?;
        let config = parsed.into_llama().map_err(|message| ModelError::BadFile {
            path: config_path.clone(),
            message,
        })?;
        config.validate().map_err(|e| ModelError::BadFile {
            path: config_path,
            message: e.to_string(),
        })?;
        let entries = std::fs::read_dir(&dir).map_err(|source| ModelError::Io {
            path: dir.clone(),
            source,
        })?;
        let mut safetensors: Vec<PathBuf> = entries
            .filter_map(|entry| entry.ok().map(|e| e.path()))
            .filter(|path| path.extension().is_some_and(|ext| ext == "safetensors"))
            .collect();
        safetensors.sort();
        if safetensors.is_empty() {
            return Err(ModelError::BadFile {
                path: dir,
                message: "no *.safetensors weights in this folder".into(),
            });
        }
        let required = |name: &str| {
            let path = dir.join(name);
            if path.is_file() {
                Ok(path)
            } else {
                Err(ModelError::BadFile {
                    path: dir.clone(),
                    message: format!("{name} is missing"),
                })
            }
        };
        Ok(Self {
            tokenizer_json: required("tokenizer.json")?,
            tokenizer_config_json: required("tokenizer_config.json")?,
            dir: dir.clone(),
            config,
            safetensors,
        })
    }

    /// Every tensor of every safetensors file, by name.
    pub fn weights(&self) -> Result<Weights, ModelError> {
        let mut weights = Weights::default();
        for path in &self.safetensors {
            let tensors = Tensor::read_safetensors(path).map_err(|e| ModelError::BadFile {
                path: path.clone(),
                message: e.to_string(),
            })?;
            for (name, tensor) in tensors {
                weights.insert(name, tensor);
            }
        }
        Ok(weights)
    }

    /// The decoder with these weights.
    pub fn load(&self, options: ModelOptions) -> Result<Llama, ModelError> {
        Llama::new(self.config.clone(), self.weights()?, options)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, name: &str, text: &str) {
        std::fs::write(dir.join(name), text).unwrap();
    }

    fn temp_dir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("infini-hf-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    const CONFIG: &str = r#"{"model_type":"llama","vocab_size":49152,"hidden_size":576,"intermediate_size":1536,
        "num_hidden_layers":30,"num_attention_heads":9,"num_key_value_heads":3,"head_dim":64,"rms_norm_eps":1e-5,
        "rope_parameters":{"rope_theta":100000.0,"rope_type":"default"},"max_position_embeddings":8192,"tie_word_embeddings":true}"#;

    #[test]
    fn reads_the_config_and_names_what_is_missing() {
        let dir = temp_dir("config");
        write(&dir, "config.json", CONFIG);
        let error = HfFolder::open(&dir).unwrap_err().to_string();
        assert!(error.contains("no *.safetensors"), "{error}");
        write(&dir, "model.safetensors", "");
        write(&dir, "tokenizer.json", "{}");
        let error = HfFolder::open(&dir).unwrap_err().to_string();
        assert!(
            error.contains("tokenizer_config.json is missing"),
            "{error}"
        );
        write(&dir, "tokenizer_config.json", "{}");
        let folder = HfFolder::open(&dir).unwrap();
        assert_eq!(
            (
                folder.config.num_kv_heads,
                folder.config.rope_theta,
                folder.config.tie_word_embeddings
            ),
            (3, 100000.0, true)
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn rejects_other_architectures_and_bad_numbers() {
        let dir = temp_dir("reject");
        write(
            &dir,
            "config.json",
            &CONFIG.replace("\"llama\"", "\"gpt2\""),
        );
        assert!(HfFolder::open(&dir)
            .unwrap_err()
            .to_string()
            .contains("not a Llama-family"));
        write(
            &dir,
            "config.json",
            &CONFIG.replace("\"num_key_value_heads\":3", "\"num_key_value_heads\":4"),
        );
        assert!(HfFolder::open(&dir)
            .unwrap_err()
            .to_string()
            .contains("evenly"));
        write(&dir, "config.json", "{");
        assert!(HfFolder::open(&dir)
            .unwrap_err()
            .to_string()
            .contains("config.json"));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
