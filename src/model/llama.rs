//! The Llama-family decoder (SmolLM2 and kin), top to bottom like the paper:
//! `LlamaConfig` → RMSNorm → attention (GQA, RoPE, the memory hook) → MLP (SwiGLU) → block → model.
//!
//! Shapes: B sequences (rows) of T new tokens, C = hidden size, H query heads and H_kv key/value
//! heads of D features, I = MLP width, V = vocabulary. Weights are looked up by the Hugging Face
//! names; q/k/v and gate/up are fused into one matmul each at load time (`performance.md`).

use tch::{Device, Kind, Tensor};

use super::cache::{HostStep, KvCache, LayerCache};
use super::host_attention::bf16_bits;
use super::linear::{Linear, Matrix, Precision, INT4_MAX_ROWS};
use super::q4::Q4Matrix;
use super::{ModelError, Weights};
use crate::rope::{Rope, RopeTable};

/// The architecture's numbers, read from `config.json` or the GGUF metadata.
#[derive(Debug, Clone, PartialEq)]
pub struct LlamaConfig {
    pub vocab_size: i64,
    pub hidden_size: i64,
    pub intermediate_size: i64,
    pub num_layers: i64,
    pub num_heads: i64,
    pub num_kv_heads: i64,
    pub head_dim: i64,
    pub rms_norm_eps: f64,
    pub rope_theta: f64,
    /// The trained context: the plain cache holds at most this many tokens.
    pub max_position_embeddings: i64,
    pub tie_word_embeddings: bool,
}

impl LlamaConfig {
    pub fn validate(&self) -> Result<(), ModelError> {
        let positive = [
            ("vocab_size", self.vocab_size),
            ("hidden_size", self.hidden_size),
            ("intermediate_size", self.intermediate_size),
            ("num_layers", self.num_layers),
            ("num_heads", self.num_heads),
            ("num_kv_heads", self.num_kv_heads),
            ("head_dim", self.head_dim),
            ("max_position_embeddings", self.max_position_embeddings),
        ];
        if let Some((name, value)) = positive.iter().find(|(_, v)| *v <= 0) {
            return Err(ModelError::BadConfig(format!(
                "{name} must be positive, got {value}"
            )));
        }
        if self.num_heads % self.num_kv_heads != 0 {
            return Err(ModelError::BadConfig(format!(
                "{} query heads cannot share {} key/value heads evenly",
                self.num_heads, self.num_kv_heads
            )));
        }
        if self.head_dim % 2 != 0 {
            return Err(ModelError::BadConfig(format!(
                "RoPE needs an even head size, got {}",
                self.head_dim
            )));
        }
        if !(self.rms_norm_eps > 0.0 && self.rope_theta > 0.0) {
            return Err(ModelError::BadConfig(format!(
                "rms_norm_eps and rope_theta must be positive, got {} and {}",
                self.rms_norm_eps, self.rope_theta
            )));
        }
        Ok(())
    }
}

/// Where the model runs and in which precision.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ModelOptions {
    pub device: Device,
    pub precision: Precision,
}

impl Default for ModelOptions {
    fn default() -> Self {
        Self {
            device: Device::Cpu,
            precision: Precision::default(),
        }
    }
}

/// RMSNorm: x / √(mean(x²) + ε) · weight, read from the f32 residual stream and computed in f32,
/// handed on in the activations' kind (what the next matrix product takes).
#[derive(Debug)]
struct RmsNorm {
    weight: Tensor, // [C], f32
    /// The same weights in host memory, for [`RmsNorm::forward_rows`].
    host_weight: Vec<f32>,
    eps: f64,
    out: Kind,
}

/// Most rows (tokens × sequences) that [`RmsNorm::forward_rows`] normalises in one pass of our own.
/// libtorch's `rms_norm` is a composite of about six kernels and the cast a seventh, ~20 µs for one
/// row of 576 on the 2-core Xeon VM; the pass, with the copies in and out, takes ~5 µs. A decode
/// step runs 61 of them. As many rows as the LM head's kernel takes (a decode step's batch), so
/// that the final norm, like every other part of the step, treats a row the same in any batch.
const HOST_NORM_ROWS: i64 = super::q8::Q8_MAX_ROWS as i64;

impl RmsNorm {
    /// `out`: the kind the next matrix product takes.
    fn new(
        weights: &mut Weights,
        name: &str,
        cfg: &LlamaConfig,
        device: Device,
        out: Kind,
    ) -> Result<Self, ModelError> {
        let weight = weights.take(name, &[cfg.hidden_size])?.to_kind(Kind::Float);
        Ok(Self {
            host_weight: Vec::<f32>::try_from(&weight)?,
            weight: weight.to_device(device),
            eps: cfg.rms_norm_eps,
            out,
        })
    }

    /// `x` is the f32 residual stream.
    fn forward(&self, x: &Tensor) -> Tensor {
        let c = self.host_weight.len() as i64;
        if x.device() == Device::Cpu && x.numel() as i64 <= HOST_NORM_ROWS * c {
            return self.forward_rows(x);
        }
        x.rms_norm(self.weight.size(), Some(&self.weight), self.eps)
            .to_kind(self.out)
    }

    /// The same on the host, row by row: one pass for the mean of squares, one for the output,
    /// rounded to bf16 (nearest, ties to even, as libtorch casts) when that is the kind wanted.
    fn forward_rows(&self, x: &Tensor) -> Tensor {
        let input = Vec::<f32>::try_from(x.to_kind(Kind::Float).reshape([-1]))
            .expect("an f32 CPU tensor copies to host memory");
        let output = self.normalise(&input);
        let normed = match self.out {
            Kind::BFloat16 => {
                let bits: Vec<i16> = output.iter().map(|&v| bf16_bits(v)).collect();
                Tensor::from_slice(&bits).view_dtype(Kind::BFloat16)
            }
            kind => Tensor::from_slice(&output).to_kind(kind),
        };
        normed.reshape(x.size())
    }

    /// Rows `[M, C]` of the f32 residual stream, normalised in f32 on the host.
    fn normalise(&self, x: &[f32]) -> Vec<f32> {
        let c = self.host_weight.len();
        let mut output = vec![0f32; x.len()];
        for (row, out) in x.chunks_exact(c).zip(output.chunks_exact_mut(c)) {
            let mean_square = row.iter().map(|v| v * v).sum::<f32>() / c as f32;
            let scale = 1.0 / (mean_square + self.eps as f32).sqrt();
            for ((o, v), w) in out.iter_mut().zip(row).zip(&self.host_weight) {
                *o = v * scale * w;
            }
        }
        output
    }
}

/// Causal self-attention with grouped key/value heads. The past is whatever the layer's cache holds.
#[derive(Debug)]
struct Attention {
    qkv_proj: Linear, // [(H + 2·H_kv)·D, C]: q_proj, k_proj, v_proj stacked
    o_proj: Linear,   // [C, H·D]
    /// The kind of the queries, keys and values the cache takes and reads in (the precision's
    /// [`Precision::activation_kind`], whatever the kind computed in around it).
    kind: Kind,
    num_heads: i64,
    num_kv_heads: i64,
    head_dim: i64,
}

impl Attention {
    fn new(
        weights: &mut Weights,
        prefix: &str,
        cfg: &LlamaConfig,
        options: &ModelOptions,
    ) -> Result<Self, ModelError> {
        let (c, d) = (cfg.hidden_size, cfg.head_dim);
        let q = weights.take_matrix(&format!("{prefix}.q_proj.weight"), &[cfg.num_heads * d, c])?;
        let k = weights.take_matrix(
            &format!("{prefix}.k_proj.weight"),
            &[cfg.num_kv_heads * d, c],
        )?;
        let v = weights.take_matrix(
            &format!("{prefix}.v_proj.weight"),
            &[cfg.num_kv_heads * d, c],
        )?;
        let o = weights.take_matrix(&format!("{prefix}.o_proj.weight"), &[c, cfg.num_heads * d])?;
        Ok(Self {
            qkv_proj: Linear::from_matrix(
                &Matrix::cat_rows(&[q, k, v]),
                options.precision,
                options.device,
            )?,
            o_proj: Linear::from_matrix(&o, options.precision, options.device)?,
            kind: options.precision.activation_kind(),
            num_heads: cfg.num_heads,
            num_kv_heads: cfg.num_kv_heads,
            head_dim: d,
        })
    }

    fn forward(
        &self,
        x: &Tensor,
        cache: &mut impl LayerCache,
        rope: &RopeTable,
    ) -> Result<Tensor, ModelError> {
        let qkv = self.qkv_proj.forward(x); // [B, T, (H + 2·H_kv)·D]
        let context = self.attend(&qkv, cache, rope)?; // [B, T, H·D]
        Ok(self.o_proj.forward(&context)) // [B, T, C]
    }

    /// [`Attention::forward`] on host memory: `x` `[B·T, C]` f32 rows through our int4 kernel,
    /// with only the cache's part in tensors, and, for one new token per row, not even that where
    /// the cache has a host step ([`LayerCache::attend_rows`]).
    fn forward_host(
        &self,
        x: &[f32],
        (b, t): (i64, i64),
        matrices: [&Q4Matrix; 2],
        cache: &mut impl LayerCache,
        rope: &RopeTable,
    ) -> Result<Vec<f32>, ModelError> {
        let [qkv_proj, o_proj] = matrices;
        let qkv = qkv_proj.multiply(x);
        if t == 1 {
            let step = HostStep {
                qkv: &qkv,
                shape: [b, self.num_heads, self.num_kv_heads, self.head_dim],
                kind: self.kind,
            };
            if let Some(context) = cache.attend_rows(&step, rope) {
                return Ok(o_proj.multiply(&context?));
            }
        }
        let qkv = Tensor::from_slice(&qkv).reshape([b, t, qkv_proj.rows() as i64]);
        let context = self.attend(&qkv, cache, rope)?; // f32, as qkv
        Ok(o_proj.multiply(&Vec::<f32>::try_from(context.reshape([-1]))?))
    }

    /// The heads of `qkv` `[B, T, (H + 2·H_kv)·D]` through the cache: `[B, T, H·D]`, in the kind
    /// of `qkv`; the cache takes and reads them in its own kind ([`Attention::kind`]).
    fn attend(
        &self,
        qkv: &Tensor,
        cache: &mut impl LayerCache,
        rope: &RopeTable,
    ) -> Result<Tensor, ModelError> {
        let compute_kind = qkv.kind();
        let qkv = qkv.to_kind(self.kind);
        let (b, t, _) = qkv.size3()?;
        let (h, h_kv, d) = (self.num_heads, self.num_kv_heads, self.head_dim);
        let heads = |start: i64, count: i64| {
            qkv.narrow(-1, start * d, count * d)
                .reshape([b, t, count, d])
                .transpose(1, 2)
        };
        let queries = heads(0, h); // [B, H, T, D]
        let keys = heads(h, h_kv); // [B, H_kv, T, D]
        let values = heads(h + h_kv, h_kv); // [B, H_kv, T, D]

        // ── Memory hook (infinity-former.md §9.2, §9.7) ──────────────────────────────────────────
        // Everything this layer remembers, and how it is read, lives behind `LayerCache`: the plain
        // KV cache now; sinks + STM + exact archive + ∞-former LTM in one joint softmax next.
        // [B, H, T, D]
        let context = cache.attend(&queries, &keys, &values, rope)?;
        // ─────────────────────────────────────────────────────────────────────────────────────────

        Ok(context
            .transpose(1, 2)
            .reshape([b, t, h * d]) // [B, T, H·D]
            .to_kind(compute_kind))
    }
}

/// SwiGLU feed-forward: down(silu(gate(x)) ⊙ up(x)).
#[derive(Debug)]
struct Mlp {
    gate_up_proj: Linear, // [2·I, C]: gate_proj, up_proj stacked
    down_proj: Linear,    // [C, I]
    intermediate_size: i64,
}

impl Mlp {
    fn new(
        weights: &mut Weights,
        prefix: &str,
        cfg: &LlamaConfig,
        options: &ModelOptions,
    ) -> Result<Self, ModelError> {
        let (c, i) = (cfg.hidden_size, cfg.intermediate_size);
        let gate = weights.take_matrix(&format!("{prefix}.gate_proj.weight"), &[i, c])?;
        let up = weights.take_matrix(&format!("{prefix}.up_proj.weight"), &[i, c])?;
        let down = weights.take_matrix(&format!("{prefix}.down_proj.weight"), &[c, i])?;
        Ok(Self {
            gate_up_proj: Linear::from_matrix(
                &Matrix::cat_rows(&[gate, up]),
                options.precision,
                options.device,
            )?,
            down_proj: Linear::from_matrix(&down, options.precision, options.device)?,
            intermediate_size: i,
        })
    }

    fn forward(&self, x: &Tensor) -> Tensor {
        let i = self.intermediate_size;
        let gate_up = self.gate_up_proj.forward(x); // [B, T, 2·I]
        let hidden = gate_up.narrow(-1, 0, i).silu() * gate_up.narrow(-1, i, i); // [B, T, I]
        self.down_proj.forward(&hidden) // [B, T, C]
    }

    /// [`Mlp::forward`] on host memory, `x` `[M, C]` f32.
    fn forward_host(&self, x: &[f32], [gate_up_proj, down_proj]: [&Q4Matrix; 2]) -> Vec<f32> {
        let i = self.intermediate_size as usize;
        let gate_up = gate_up_proj.multiply(x); // [M, 2·I]
        let hidden: Vec<f32> = gate_up
            .chunks_exact(2 * i)
            .flat_map(|row| {
                let (gate, up) = row.split_at(i);
                gate.iter()
                    .zip(up)
                    .map(|(&g, &u)| g / (1.0 + (-g).exp()) * u)
            })
            .collect(); // [M, I]: silu(gate) ⊙ up
        down_proj.multiply(&hidden) // [M, C]
    }
}

/// Pre-norm residual block: x + attn(norm(x)), then + mlp(norm(·)).
#[derive(Debug)]
struct Block {
    input_layernorm: RmsNorm,
    self_attn: Attention,
    post_attention_layernorm: RmsNorm,
    mlp: Mlp,
}

impl Block {
    fn new(
        weights: &mut Weights,
        layer: i64,
        cfg: &LlamaConfig,
        options: &ModelOptions,
    ) -> Result<Self, ModelError> {
        let prefix = format!("model.layers.{layer}");
        let norm = |weights: &mut Weights, name: &str| {
            let name = format!("{prefix}.{name}.weight");
            let kind = options.precision.compute_kind();
            RmsNorm::new(weights, &name, cfg, options.device, kind)
        };
        Ok(Self {
            input_layernorm: norm(weights, "input_layernorm")?,
            self_attn: Attention::new(weights, &format!("{prefix}.self_attn"), cfg, options)?,
            post_attention_layernorm: norm(weights, "post_attention_layernorm")?,
            mlp: Mlp::new(weights, &format!("{prefix}.mlp"), cfg, options)?,
        })
    }

    fn forward(
        &self,
        x: &Tensor,
        cache: &mut impl LayerCache,
        rope: &RopeTable,
    ) -> Result<Tensor, ModelError> {
        // The residual stream stays f32 whatever the activations' kind: summed over 30 layers in
        // bf16 it drifts far enough to change greedy answers (the README's first example). f32 +
        // bf16 promotes to f32 inside the one addition kernel.
        let attended = self
            .self_attn
            .forward(&self.input_layernorm.forward(x), cache, rope)?; // [B, T, C]
        let x = x + attended;
        let mlp = self.mlp.forward(&self.post_attention_layernorm.forward(&x));
        Ok(&x + mlp)
    }

    /// The four matrices in host memory (qkv, o, gate/up, down), when all have our kernel.
    fn host_matrices(&self) -> Option<[&Q4Matrix; 4]> {
        Some([
            self.self_attn.qkv_proj.on_host()?,
            self.self_attn.o_proj.on_host()?,
            self.mlp.gate_up_proj.on_host()?,
            self.mlp.down_proj.on_host()?,
        ])
    }

    /// [`Block::forward`] on host memory: `x` is the residual stream `[B·T, C]`, updated in place.
    /// Everything but the cache's part stays on the host, in f32: a few rows pay libtorch's
    /// dispatch per operation more than the arithmetic (`docs/MEMORY.md`, "The decode step").
    fn forward_host(
        &self,
        x: &mut [f32],
        bt: (i64, i64),
        cache: &mut impl LayerCache,
        rope: &RopeTable,
    ) -> Result<(), ModelError> {
        let [qkv, o, gate_up, down] = self
            .host_matrices()
            .expect("the host path runs only on host matrices");
        let normed = self.input_layernorm.normalise(x);
        let attended = self
            .self_attn
            .forward_host(&normed, bt, [qkv, o], cache, rope)?;
        add(x, &attended);
        let normed = self.post_attention_layernorm.normalise(x);
        add(x, &self.mlp.forward_host(&normed, [gate_up, down]));
        Ok(())
    }
}

/// `x += y`, element-wise.
fn add(x: &mut [f32], y: &[f32]) {
    x.iter_mut().zip(y).for_each(|(x, y)| *x += y);
}

/// Which positions' logits a forward pass returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogitsAt {
    /// `[B, T, V]`.
    All,
    /// `[B, V]` for the last new token (generation: saves the LM head on the prompt).
    Last,
}

/// The decoder: embeddings, blocks, final norm, LM head (tied to the embeddings when configured).
#[derive(Debug)]
pub struct Llama {
    config: LlamaConfig,
    options: ModelOptions,
    embed_tokens: Tensor, // [V, C]
    layers: Vec<Block>,
    norm: RmsNorm,
    lm_head: Linear, // [V, C]
    rope: RopeTable, // positions 0..max_position_embeddings
    fingerprint: String,
}

/// A short, stable identity of a model's function: sha256 over its architecture and its token
/// embeddings (f32 bytes as loaded), with the precision it runs in. Session memories carry it, so
/// a memory is never read by a model that would misinterpret it.
fn fingerprint(config: &LlamaConfig, embed: &Tensor, precision: Precision) -> String {
    use sha2::{Digest, Sha256};
    let mut hash = Sha256::new();
    hash.update(format!("{config:?}").as_bytes());
    let embed = embed.to_kind(Kind::Float).contiguous();
    let numel = embed.numel();
    let mut bytes = vec![0u8; numel * 4];
    embed.copy_data_u8(&mut bytes, numel);
    hash.update(&bytes);
    let digest = hash.finalize();
    let hex: String = digest[..8].iter().map(|b| format!("{b:02x}")).collect();
    format!("llama-{hex}-{}", precision.name())
}

impl Llama {
    /// Builds the model from checkpoint tensors named as in Hugging Face (dense, any float kind).
    pub fn new(
        config: LlamaConfig,
        mut weights: Weights,
        options: ModelOptions,
    ) -> Result<Self, ModelError> {
        config.validate()?;
        let (v, c) = (config.vocab_size, config.hidden_size);
        let embed = weights.take("model.embed_tokens.weight", &[v, c])?;
        let lm_head = if config.tie_word_embeddings || !weights.contains("lm_head.weight") {
            Linear::lm_head(&embed, options.precision, options.device)?
        } else {
            Linear::lm_head(
                &weights.take("lm_head.weight", &[v, c])?,
                options.precision,
                options.device,
            )?
        };
        let layers = (0..config.num_layers)
            .map(|layer| Block::new(&mut weights, layer, &config, &options))
            .collect::<Result<Vec<_>, _>>()?;
        let norm = RmsNorm::new(
            &mut weights,
            "model.norm.weight",
            &config,
            options.device,
            lm_head.input_kind(),
        )?;
        let kind = options.precision.activation_kind();
        let rope = Rope::new(config.head_dim as usize, config.rope_theta).table(
            config.max_position_embeddings,
            kind,
            options.device,
        );
        let embed_tokens = embed.to_device(options.device).to_kind(kind);
        let fingerprint = fingerprint(&config, &embed, options.precision);
        Ok(Self {
            config,
            options,
            embed_tokens,
            layers,
            norm,
            lm_head,
            rope,
            fingerprint,
        })
    }

    /// How the weight matrices are multiplied on this machine, e.g. `layers: Q4_1 (avx512f kernel)
    /// for decode steps and up to 8 rows, dense BFloat16 beyond; LM head: Q8_0 (avx512f kernel)`.
    pub fn matmul_paths(&self) -> String {
        let layers = self
            .layers
            .first()
            .map_or_else(|| "none".into(), |block| block.mlp.down_proj.describe());
        format!("layers: {layers}; LM head: {}", self.lm_head.describe())
    }

    /// Whether the blocks run `x` `[B, T, C]` on host memory ([`Block::forward_host`]): a decode
    /// step (one new token per row, any number of rows) or a few rows (at most [`INT4_MAX_ROWS`]),
    /// where the model can ([`Llama::decodes_on_host`]).
    fn runs_on_host(&self, x: &Tensor) -> bool {
        let (b, t) = (x.size()[0], x.size()[1]);
        x.device() == Device::Cpu && self.decodes_on_host() && (t == 1 || b * t <= INT4_MAX_ROWS)
    }

    /// Whether a decode step runs on host memory: on the CPU with every matrix int4, each
    /// multiplied by our kernel for every row of the step.
    pub fn decodes_on_host(&self) -> bool {
        self.options.device == Device::Cpu
            && self.layers.iter().all(|b| b.host_matrices().is_some())
    }

    /// The model's identity (see `fingerprint`), e.g. `llama-1a2b3c4d5e6f7a8b-int4`.
    pub fn fingerprint(&self) -> &str {
        &self.fingerprint
    }

    pub fn config(&self) -> &LlamaConfig {
        &self.config
    }

    pub fn options(&self) -> &ModelOptions {
        &self.options
    }

    /// One empty plain cache per layer, for up to the trained context.
    pub fn new_cache(&self) -> Vec<KvCache> {
        (0..self.config.num_layers)
            .map(|_| KvCache::new(self.config.max_position_embeddings))
            .collect()
    }

    /// Runs `tokens` `[B, T]` (int64) after what `caches` (one per layer) already hold, and
    /// returns f32 logits (`[B, T, V]` or `[B, V]`, see [`LogitsAt`]).
    pub fn forward<C: LayerCache>(
        &self,
        tokens: &Tensor,
        caches: &mut [C],
        at: LogitsAt,
    ) -> Result<Tensor, ModelError> {
        let size = tokens.size();
        if size.len() != 2 || size[1] == 0 {
            return Err(ModelError::BadInput(format!(
                "tokens must be [batch, time] with time ≥ 1, got {size:?}"
            )));
        }
        if caches.len() != self.layers.len() {
            return Err(ModelError::BadInput(format!(
                "{} caches for {} layers",
                caches.len(),
                self.layers.len()
            )));
        }
        let (lo, hi) = (tokens.min().int64_value(&[]), tokens.max().int64_value(&[]));
        if lo < 0 || hi >= self.config.vocab_size {
            return Err(ModelError::BadInput(format!(
                "token ids {lo}..={hi} outside the vocabulary of {}",
                self.config.vocab_size
            )));
        }
        let tokens = tokens.to_device(self.options.device).to_kind(Kind::Int64);
        // [B, T, C]: the f32 residual stream.
        let embedded = Tensor::embedding(&self.embed_tokens, &tokens, -1, false, false);
        let mut x = embedded.to_kind(Kind::Float);
        if self.runs_on_host(&x) {
            let mut rows = Vec::<f32>::try_from(x.reshape([-1]))?;
            for (block, cache) in self.layers.iter().zip(caches.iter_mut()) {
                block.forward_host(&mut rows, (size[0], size[1]), cache, &self.rope)?;
            }
            x = Tensor::from_slice(&rows).reshape(x.size());
        } else {
            for (block, cache) in self.layers.iter().zip(caches.iter_mut()) {
                x = block.forward(&x, cache, &self.rope)?;
            }
        }
        C::after_forward(&mut caches.iter_mut().collect::<Vec<_>>())?;
        let x = match at {
            LogitsAt::All => x,
            LogitsAt::Last => x.select(1, size[1] - 1), // [B, C]
        };
        Ok(self
            .lm_head
            .forward(&self.norm.forward(&x))
            .to_kind(Kind::Float)) // [B, (T,) V]
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::model::q4::Int4Groups;

    /// A two-layer model with random weights, small enough for unit tests. The matrices are drawn
    /// already on the int4 grid (quantised and dequantised), so that every precision computes the
    /// same function and differs only by rounding of activations.
    pub(crate) fn tiny(precision: Precision) -> Llama {
        tiny_with_context(precision, 128)
    }

    /// Standard normal draws, reproducible from a seed: xorshift64* for uniforms, Box–Muller for
    /// the normal.
    struct Normal(u64);

    impl Normal {
        fn new(seed: u64) -> Self {
            Self(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1)
        }

        fn uniform(&mut self) -> f64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            let bits = self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 11;
            (bits as f64 + 0.5) / (1u64 << 53) as f64 // in (0, 1)
        }

        fn tensor(&mut self, shape: &[i64]) -> Tensor {
            let n: i64 = shape.iter().product();
            let values: Vec<f32> = (0..n)
                .map(|_| {
                    let (u, v) = (self.uniform(), self.uniform());
                    ((-2.0 * u.ln()).sqrt() * (std::f64::consts::TAU * v).cos()) as f32
                })
                .collect();
            Tensor::from_slice(&values).reshape(shape)
        }
    }

    /// [`tiny`] with a longer trained context (positions), the weights unchanged.
    pub(crate) fn tiny_with_context(precision: Precision, context: i64) -> Llama {
        let cfg = LlamaConfig {
            vocab_size: 64,
            hidden_size: 64,
            intermediate_size: 128,
            num_layers: 2,
            num_heads: 4,
            num_kv_heads: 2,
            head_dim: 16,
            rms_norm_eps: 1e-5,
            rope_theta: 10000.0,
            max_position_embeddings: context,
            tie_word_embeddings: true,
        };
        // Normal draws from a generator of the model's own, not libtorch's global one: tests that
        // run at the same time seed that one, and the f32 and bf16 copies of this model would then
        // get different weights.
        let mut draws = Normal::new(11);
        let mut randn = |shape: &[i64]| {
            Int4Groups::quantise(&(draws.tensor(shape) * 0.2))
                .unwrap()
                .dequantise()
        };
        let mut weights = Weights::default();
        weights.insert("model.embed_tokens.weight", randn(&[64, 64]));
        weights.insert(
            "model.norm.weight",
            Tensor::ones([64], (Kind::Float, Device::Cpu)),
        );
        for layer in 0..2 {
            let p = format!("model.layers.{layer}");
            weights.insert(
                format!("{p}.input_layernorm.weight"),
                Tensor::ones([64], (Kind::Float, Device::Cpu)),
            );
            weights.insert(
                format!("{p}.post_attention_layernorm.weight"),
                Tensor::ones([64], (Kind::Float, Device::Cpu)),
            );
            for (name, shape) in [
                ("q_proj", [64, 64]),
                ("k_proj", [32, 64]),
                ("v_proj", [32, 64]),
                ("o_proj", [64, 64]),
            ] {
                weights.insert(format!("{p}.self_attn.{name}.weight"), randn(&shape));
            }
            for (name, shape) in [
                ("gate_proj", [128, 64]),
                ("up_proj", [128, 64]),
                ("down_proj", [64, 128]),
            ] {
                weights.insert(format!("{p}.mlp.{name}.weight"), randn(&shape));
            }
        }
        Llama::new(
            cfg,
            weights,
            ModelOptions {
                device: Device::Cpu,
                precision,
            },
        )
        .unwrap()
    }

    fn max_abs_difference(a: &Tensor, b: &Tensor) -> f64 {
        (a - b).abs().max().double_value(&[])
    }

    #[test]
    fn incremental_decoding_equals_one_full_pass() {
        // f32 throughout: tolerance 1e-4 on logits of order 1.
        let model = tiny(Precision::F32);
        let tokens = Tensor::from_slice(&[3i64, 17, 5, 60, 2, 9, 33, 41]).reshape([2, 4]);
        let full = model
            .forward(&tokens, &mut model.new_cache(), LogitsAt::All)
            .unwrap(); // [2, 4, V]
        let mut cache = model.new_cache();
        let _ = model
            .forward(&tokens.narrow(1, 0, 2), &mut cache, LogitsAt::Last)
            .unwrap();
        for step in 2..4 {
            let logits = model
                .forward(&tokens.narrow(1, step, 1), &mut cache, LogitsAt::Last)
                .unwrap(); // [2, V]
            let error = max_abs_difference(&logits, &full.select(1, step));
            assert!(error < 1e-4, "step {step}: off by {error}");
        }
    }

    #[test]
    fn batch_rows_are_independent() {
        let model = tiny(Precision::F32);
        let tokens = Tensor::from_slice(&[3i64, 17, 5, 60, 2, 9]).reshape([2, 3]);
        let both = model
            .forward(&tokens, &mut model.new_cache(), LogitsAt::Last)
            .unwrap();
        let second = model
            .forward(
                &tokens.narrow(0, 1, 1),
                &mut model.new_cache(),
                LogitsAt::Last,
            )
            .unwrap();
        let error = max_abs_difference(&both.select(0, 1), &second.select(0, 0));
        assert!(error < 1e-5, "row 1 alone differs by {error}");
    }

    #[test]
    fn bad_input_is_an_error_not_a_panic() {
        let model = tiny(Precision::F32);
        let mut cache = model.new_cache();
        assert!(matches!(
            model.forward(
                &Tensor::from_slice(&[64i64]).reshape([1, 1]),
                &mut cache,
                LogitsAt::Last
            ),
            Err(ModelError::BadInput(_))
        ));
        assert!(matches!(
            model.forward(&Tensor::from_slice(&[1i64]), &mut cache, LogitsAt::Last),
            Err(ModelError::BadInput(_))
        ));
        let long = Tensor::zeros([1, 129], (Kind::Int64, Device::Cpu));
        assert!(matches!(
            model.forward(&long, &mut cache, LogitsAt::Last),
            Err(ModelError::ContextFull {
                needed: 129,
                capacity: 128
            })
        ));
    }

    #[test]
    fn the_host_norm_equals_libtorchs() {
        // One pass in another summation order: f32 outputs within 1e-6 relative, bf16 outputs
        // within one bf16 step (2⁻⁸ relative) of libtorch's rms_norm and cast.
        // Deterministic values: no draw from the global generator, which `tiny` seeds.
        let cfg = tiny(Precision::F32).config().clone();
        let wave = |n: i64, salt: f64| {
            (Tensor::arange(n, (Kind::Double, Device::Cpu)) * 0.91 + salt)
                .sin()
                .to_kind(Kind::Float)
        };
        for out in [Kind::Float, Kind::BFloat16] {
            let mut weights = Weights::default();
            weights.insert("w", wave(64, 0.0) * 0.5 + 1.0);
            let norm = RmsNorm::new(&mut weights, "w", &cfg, Device::Cpu, out).unwrap();
            let x = wave(384, 1.0).reshape([2, 3, 64]) * 3.0;
            let fast = norm.forward(&x); // 6 rows: the host pass
            let reference = x.rms_norm([64], Some(&norm.weight), norm.eps).to_kind(out);
            assert_eq!((fast.kind(), fast.size()), (out, vec![2, 3, 64]));
            let tolerance = if out == Kind::Float {
                1e-6
            } else {
                1.0 / 256.0
            };
            let error = ((fast.to_kind(Kind::Float) - reference.to_kind(Kind::Float)).abs()
                / (reference.to_kind(Kind::Float).abs() + 1e-3))
                .max()
                .double_value(&[]);
            assert!(error <= tolerance, "{out:?}: relative error {error}");
            let rows = HOST_NORM_ROWS + 1; // one row more than the host pass takes: libtorch
            let many = wave(rows * 64, 2.0).reshape([rows, 1, 64]);
            let error = (norm.forward(&many).to_kind(Kind::Float)
                - many
                    .rms_norm([64], Some(&norm.weight), norm.eps)
                    .to_kind(out)
                    .to_kind(Kind::Float))
            .abs()
            .max()
            .double_value(&[]);
            assert_eq!(error, 0.0, "many rows take libtorch's path");
        }
    }

    #[test]
    fn bf16_rounding_is_to_nearest_even() {
        for v in [
            1.0f32,
            -2.5,
            std::f32::consts::PI,
            1e-30,
            65504.0,
            0.0,
            f32::MAX,
            f32::INFINITY,
        ] {
            let ours = bf16_bits(v);
            let libtorch = Tensor::from_slice(&[v])
                .to_kind(Kind::BFloat16)
                .view_dtype(Kind::Int16)
                .int64_value(&[0]) as i16;
            assert_eq!(ours, libtorch, "{v}");
        }
        // The tie 1 + 2⁻⁸ lies halfway between 1 and 1 + 2⁻⁷: to even, that is 1.
        assert_eq!(bf16_bits(1.0 + 1.0 / 256.0), bf16_bits(1.0));
        assert!(f32::from_bits((bf16_bits(f32::NAN) as u16 as u32) << 16).is_nan());
    }

    #[test]
    fn lower_precisions_stay_close_to_f32() {
        // bf16 activations on weights that int4 represents exactly: logits within 0.15 of f32 (they
        // are of order 3 here); the real model's differences are measured in tests/model_reference.rs.
        let tokens = Tensor::from_slice(&[3i64, 17, 5, 60]).reshape([1, 4]);
        let reference = tiny(Precision::F32)
            .forward(
                &tokens,
                &mut tiny(Precision::F32).new_cache(),
                LogitsAt::All,
            )
            .unwrap();
        for precision in [Precision::Bf16, Precision::Int4] {
            let model = tiny(precision);
            let logits = model
                .forward(&tokens, &mut model.new_cache(), LogitsAt::All)
                .unwrap();
            let error = max_abs_difference(&logits, &reference);
            assert!(error < 0.15, "{precision:?} off by {error}");
        }
    }
}
