//! Text ↔ token ids for the model (`architecture.md`, "tokenizer.rs"): a byte-level BPE tokenizer
//! built with the `tokenizers` crate from a GGUF file's `tokenizer.ggml.*` metadata, or loaded from
//! a Hugging Face `tokenizer.json`; an incremental decoder for streaming
//! ([`IncrementalDecoder`]); and the model's chat template ([`ChatTemplate`]).
//!
//! The GGUF pre-tokeniser names llama.cpp's split rules. `smollm` (shared by `starcoder`,
//! `refact` and `codeshell`) splits every digit on its own and then applies GPT-2's split regex,
//! which is what SmolLM2's own tokenizer.json says: `Sequence[Digits(individual_digits),
//! ByteLevel(add_prefix_space = false, use_regex = true)]`. `gpt2` is the ByteLevel split alone.

mod chat_template;
mod incremental;
mod transcript;

use std::path::Path;

use thiserror::Error;
use tokenizers::decoders::byte_level::ByteLevel as ByteLevelDecoder;
use tokenizers::models::bpe::BPE;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::digits::Digits;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::pre_tokenizers::PreTokenizerWrapper;
use tokenizers::AddedToken;

use crate::gguf::{GgufError, GgufFile};

pub use chat_template::{ChatMessage, ChatTemplate};
pub use incremental::IncrementalDecoder;
pub use transcript::{Transcript, TurnEnd};

/// GGUF token types (llama.cpp's `llama_token_type`) that matter here.
const TOKEN_TYPE_CONTROL: i64 = 3;
const TOKEN_TYPE_USER_DEFINED: i64 = 4;

#[derive(Debug, Error)]
pub enum TokenizerError {
    #[error(transparent)]
    Gguf(#[from] GgufError),
    #[error("{path}: tokenizer model `{model}` is not supported (only `gpt2`, byte-level BPE)")]
    UnsupportedModel { path: String, model: String },
    #[error("{path}: pre-tokeniser `{pre}` is not supported (supported: smollm, starcoder, refact, codeshell, gpt2)")]
    UnsupportedPreTokenizer { path: String, pre: String },
    #[error("{path}: tokenizer vocabulary is inconsistent: {problem}")]
    Vocabulary { path: String, problem: String },
    #[error("cannot load tokenizer {path}: {problem}")]
    Load { path: String, problem: String },
    #[error("cannot encode text: {0}")]
    Encode(String),
    #[error("cannot decode token ids: {0}")]
    Decode(String),
    #[error("token id {id} is outside the vocabulary of {vocab_size}")]
    UnknownId { id: u32, vocab_size: usize },
    #[error("chat template: {0}")]
    Template(String),
}

/// The ids of the special tokens the generation loop needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SpecialTokens {
    pub bos: Option<u32>,
    pub eos: Option<u32>,
    pub padding: Option<u32>,
}

/// A loaded tokenizer with its special tokens and chat template.
pub struct Tokenizer {
    inner: tokenizers::Tokenizer,
    special: SpecialTokens,
    add_bos: bool,
    chat_template: Option<ChatTemplate>,
}

impl std::fmt::Debug for Tokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tokenizer")
            .field("vocab_size", &self.vocab_size())
            .field("special", &self.special)
            .finish()
    }
}

impl Tokenizer {
    /// Builds the tokenizer from a GGUF file's metadata (`tokenizer.ggml.*`, `tokenizer.chat_template`).
    pub fn from_gguf(file: &GgufFile) -> Result<Self, TokenizerError> {
        let path = file.path().display().to_string();
        let model = file.meta_str("tokenizer.ggml.model")?;
        if model != "gpt2" {
            return Err(TokenizerError::UnsupportedModel {
                path,
                model: model.to_string(),
            });
        }
        // llama.cpp reads a missing `pre` as GPT-2's split, with a warning.
        let pre = file.meta_str("tokenizer.ggml.pre").unwrap_or("gpt2");
        let pre_tokenizer =
            pre_tokenizer_for(pre).ok_or_else(|| TokenizerError::UnsupportedPreTokenizer {
                path: path.clone(),
                pre: pre.to_string(),
            })?;
        let tokens = file.meta_strings("tokenizer.ggml.tokens")?;
        let vocabulary_error = |problem: String| TokenizerError::Vocabulary {
            path: path.clone(),
            problem,
        };
        let mut vocab = tokenizers::models::bpe::Vocab::with_capacity(tokens.len());
        for (id, token) in tokens.iter().enumerate() {
            if vocab.insert(token.to_string(), id as u32).is_some() {
                return Err(vocabulary_error(format!(
                    "token {token:?} appears twice (second at id {id})"
                )));
            }
        }
        let merges = file
            .meta_strings("tokenizer.ggml.merges")?
            .iter()
            .map(|merge| {
                merge
                    .split_once(' ')
                    .map(|(a, b)| (a.to_string(), b.to_string()))
                    .ok_or_else(|| {
                        vocabulary_error(format!(
                            "merge {merge:?} is not two tokens separated by a space"
                        ))
                    })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let bpe = BPE::builder()
            .vocab_and_merges(vocab, merges)
            .build()
            .map_err(|e| vocabulary_error(e.to_string()))?;

        let mut inner = tokenizers::Tokenizer::new(bpe);
        inner.with_pre_tokenizer(Some(pre_tokenizer));
        inner.with_decoder(Some(ByteLevelDecoder::default()));
        let token_types = file.meta_integers("tokenizer.ggml.token_type")?;
        if token_types.len() != tokens.len() {
            return Err(vocabulary_error(format!(
                "{} token types for {} tokens",
                token_types.len(),
                tokens.len()
            )));
        }
        let added = |wanted: i64, special: bool| {
            tokens
                .iter()
                .zip(&token_types)
                .filter(move |(_, &ty)| ty == wanted)
                .map(move |(token, _)| {
                    AddedToken::from(token.to_string(), special).normalized(false)
                })
        };
        let add_error =
            |e: tokenizers::Error| vocabulary_error(format!("cannot add special tokens: {e}"));
        inner
            .add_special_tokens(added(TOKEN_TYPE_CONTROL, true))
            .map_err(add_error)?;
        inner
            .add_tokens(added(TOKEN_TYPE_USER_DEFINED, false))
            .map_err(add_error)?;

        let id = |key: &str| file.meta_usize(key).ok().map(|id| id as u32);
        let special = SpecialTokens {
            bos: id("tokenizer.ggml.bos_token_id"),
            eos: id("tokenizer.ggml.eos_token_id"),
            padding: id("tokenizer.ggml.padding_token_id"),
        };
        let add_bos = file
            .meta_bool("tokenizer.ggml.add_bos_token")
            .unwrap_or(false);
        Self::assemble(
            inner,
            special,
            add_bos,
            file.meta_str("tokenizer.chat_template").ok(),
        )
    }

    /// Loads a Hugging Face `tokenizer.json`, with the special tokens and chat template of the
    /// `tokenizer_config.json` beside it when there is one.
    pub fn from_hf_dir(dir: &Path) -> Result<Self, TokenizerError> {
        let path = dir.join("tokenizer.json");
        let inner = tokenizers::Tokenizer::from_file(&path).map_err(|e| TokenizerError::Load {
            path: path.display().to_string(),
            problem: e.to_string(),
        })?;
        let config_path = dir.join("tokenizer_config.json");
        let config: serde_json::Value = match std::fs::read_to_string(&config_path) {
            Ok(text) => serde_json::from_str(&text).map_err(|e| TokenizerError::Load {
                path: config_path.display().to_string(),
                problem: e.to_string(),
            })?,
            Err(_) => serde_json::Value::Null,
        };
        // A special token is written either as a string or as {"content": ...}.
        let token_id = |key: &str| {
            let value = &config[key];
            let text = value.as_str().or_else(|| value["content"].as_str())?;
            inner.token_to_id(text)
        };
        let special = SpecialTokens {
            bos: token_id("bos_token"),
            eos: token_id("eos_token"),
            padding: token_id("pad_token"),
        };
        let add_bos = config["add_bos_token"].as_bool().unwrap_or(false);
        Self::assemble(inner, special, add_bos, config["chat_template"].as_str())
    }

    /// Completes a loaded tokenizer: checks its special ids and compiles its chat template.
    fn assemble(
        inner: tokenizers::Tokenizer,
        special: SpecialTokens,
        add_bos: bool,
        chat_template: Option<&str>,
    ) -> Result<Self, TokenizerError> {
        let mut tokenizer = Self {
            inner,
            special,
            add_bos,
            chat_template: None,
        };
        tokenizer.check_special_ids()?;
        if let Some(source) = chat_template {
            tokenizer.chat_template = Some(tokenizer.template_from(source)?);
        }
        Ok(tokenizer)
    }

    fn check_special_ids(&self) -> Result<(), TokenizerError> {
        for id in [self.special.bos, self.special.eos, self.special.padding]
            .into_iter()
            .flatten()
        {
            self.token_text(id)?;
        }
        Ok(())
    }

    fn template_from(&self, source: &str) -> Result<ChatTemplate, TokenizerError> {
        let text = |id: Option<u32>| {
            id.and_then(|id| self.inner.id_to_token(id))
                .unwrap_or_default()
        };
        ChatTemplate::new(source, &text(self.special.bos), &text(self.special.eos))
    }

    pub fn special_tokens(&self) -> SpecialTokens {
        self.special
    }

    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    /// The chat template the model ships, if any.
    pub fn chat_template(&self) -> Option<&ChatTemplate> {
        self.chat_template.as_ref()
    }

    /// The ids of `text`; special tokens written in the text (`<|im_start|>`) become their ids.
    /// Prepends BOS when the model asks for it (`tokenizer.ggml.add_bos_token`).
    pub fn encode(&self, text: &str) -> Result<Vec<u32>, TokenizerError> {
        let bos = self.special.bos.filter(|_| self.add_bos);
        Ok(bos
            .into_iter()
            .chain(self.encode_continuation(text)?)
            .collect())
    }

    /// The ids of `text` that continues earlier text: never a BOS (a session's later turns).
    pub fn encode_continuation(&self, text: &str) -> Result<Vec<u32>, TokenizerError> {
        let encoding = self
            .inner
            .encode_fast(text, false)
            .map_err(|e| TokenizerError::Encode(e.to_string()))?;
        Ok(encoding.get_ids().to_vec())
    }

    /// The byte in `text` where each token of its [`Tokenizer::encode_continuation`] begins.
    pub fn token_starts(&self, text: &str) -> Result<Vec<usize>, TokenizerError> {
        let encoding = self
            .inner
            .encode(text, false)
            .map_err(|e| TokenizerError::Encode(e.to_string()))?;
        Ok(encoding
            .get_offsets()
            .iter()
            .map(|&(start, _)| start)
            .collect())
    }

    /// The text of `ids`; special tokens are kept unless `skip_special`.
    pub fn decode(&self, ids: &[u32], skip_special: bool) -> Result<String, TokenizerError> {
        if let Some(&id) = ids.iter().find(|&&id| id as usize >= self.vocab_size()) {
            return Err(TokenizerError::UnknownId {
                id,
                vocab_size: self.vocab_size(),
            });
        }
        self.inner
            .decode(ids, skip_special)
            .map_err(|e| TokenizerError::Decode(e.to_string()))
    }

    /// The vocabulary entry of one id (byte-level spelling, e.g. `Ġthe`).
    pub fn token_text(&self, id: u32) -> Result<String, TokenizerError> {
        self.inner.id_to_token(id).ok_or(TokenizerError::UnknownId {
            id,
            vocab_size: self.vocab_size(),
        })
    }

    /// The id of a vocabulary entry, e.g. `<|im_end|>`.
    pub fn token_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }
}

/// The pre-tokeniser llama.cpp uses for a `tokenizer.ggml.pre` name, as the `tokenizers` crate's
/// equivalent.
fn pre_tokenizer_for(pre: &str) -> Option<PreTokenizerWrapper> {
    let byte_level = ByteLevel::new(false, true, true);
    match pre {
        "smollm" | "starcoder" | "refact" | "codeshell" => {
            Some(Sequence::new(vec![Digits::new(true).into(), byte_level.into()]).into())
        }
        "gpt2" => Some(byte_level.into()),
        _ => None,
    }
}

/// The default model's tokenizer, for unit tests (they need the model: `make test` fetches it).
#[cfg(test)]
pub(crate) fn smollm_for_tests() -> Tokenizer {
    let file = crate::gguf::GgufFile::open(crate::model::DEFAULT_MODEL)
        .unwrap_or_else(|e| panic!("{e} (run ./scripts/setup.sh to fetch the default model)"));
    Tokenizer::from_gguf(&file).expect("the default model's tokenizer reads")
}

#[cfg(test)]
mod tests;
