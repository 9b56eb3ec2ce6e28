//! A small decoder for the sorting task, trained from scratch, with an ∞-former long-term memory
//! in every layer (`infinity-former.md` §1.4, §2, §3, §5.1), or without it (the baseline).
//!
//! Read top to bottom: `LayerMemory` (the learned Gaussian reading of one layer's LTM) →
//! `Block` (pre-LN attention over the short-term memory and the current segment, plus the LTM
//! output, then the MLP) → [`SortingModel`] (embedding, blocks, head, and the segment-by-segment
//! pass over a whole sequence).
//!
//! Segments run Transformer-XL style: each layer's attention sees the keys and values of the
//! previous segment (the STM, detached) and, causally, its own segment; positions are RoPE over the
//! absolute token index, so scores depend only on distance. When a segment leaves the STM, its
//! layer inputs are gated (CNN gate, §1.4) and absorbed into that layer's LTM (§3), so at segment i
//! the LTM holds segments 0..i−2, as in the released code where each segment enters the LTM two
//! segments after it was processed.

use super::config::SortingConfig;
use super::sorting_data::{NUM_SYMBOLS, VOCAB_SIZE};
use crate::ltm::{variance_kl, GaussianReading, LongTermMemory, MemoryOperators};
use crate::rope::Rope;
use tch::nn::{self, Module};
use tch::{Device, Kind, Tensor};

/// RoPE base for the short-term attention.
const ROPE_BASE: f64 = 10_000.0;

/// Normal(0, 0.02), the paper's initialisation of every linear map and embedding (§5.1).
fn init_normal() -> nn::Init {
    nn::Init::Randn {
        mean: 0.0,
        stdev: 0.02,
    }
}

fn linear(path: nn::Path, inputs: usize, outputs: usize, bias: bool) -> nn::Linear {
    let config = nn::LinearConfig {
        ws_init: init_normal(),
        bs_init: bias.then_some(nn::Init::Const(0.0)),
        bias,
    };
    nn::linear(path, inputs as i64, outputs as i64, config)
}

/// Splits `[B, T, H·d]` into heads `[B, H, T, d]`.
fn split_heads(x: &Tensor, heads: usize) -> Tensor {
    let (batch, len, width) = x.size3().expect("[B, T, e]");
    x.view([batch, len, heads as i64, width / heads as i64])
        .transpose(1, 2)
}

/// Joins heads `[B, H, T, d]` back into `[B, T, H·d]`.
fn merge_heads(x: &Tensor) -> Tensor {
    let (batch, heads, len, dim) = x.size4().expect("[B, H, T, d]");
    x.transpose(1, 2).reshape([batch, len, heads * dim])
}

/// The ∞-former parameters of one layer: the CNN gate on the memory input (§1.4), W^K and W^V
/// applied to the coefficients (§1.4), w_μ and w_σ (§2.1), and `attn_out` (§2.3).
#[derive(Debug)]
struct LayerMemory {
    gate: nn::Conv1D,
    key: nn::Linear,
    value: nn::Linear,
    out: nn::Linear,
    reading: GaussianReading,
}

impl LayerMemory {
    fn new(path: &nn::Path, config: &SortingConfig) -> Self {
        let e = config.d_model as i64;
        // The Conv1d keeps PyTorch's default initialisation, as in the released code (§5.1).
        let gate = nn::conv1d(
            path / "gate",
            e,
            e,
            3,
            nn::ConvConfig {
                padding: 1,
                ..Default::default()
            },
        );
        Self {
            gate,
            key: linear(path / "key", config.d_model, config.d_model, false),
            value: linear(path / "value", config.d_model, config.d_model, false),
            out: linear(path / "attn_out", config.d_model, config.d_model, false),
            reading: GaussianReading::new(
                &(path / "reading"),
                config.num_basis,
                config.min_variance,
            ),
        }
    }

    /// k ← k ⊙ sigmoid(Conv1d(k)) along time, on a chunk `[B, L, e]` about to be absorbed (§1.4).
    fn gate(&self, chunk: &Tensor) -> Tensor {
        let channels_first = chunk.transpose(1, 2); // [B, e, L]
        let gate = self.gate.forward(&channels_first).sigmoid().transpose(1, 2);
        chunk * gate
    }

    /// The LTM output `[B, T, e]` for the layer's own queries `[B, H, T, d]` (unrotated, §2.1)
    /// and the variance of each query's density `[B, H, T]` (for the KL, §7.1).
    fn read(
        &self,
        ltm: &LongTermMemory,
        ops: &MemoryOperators,
        queries: &Tensor,
    ) -> (Tensor, Tensor) {
        let heads = queries.size()[1] as usize;
        let coefficients = ltm.coefficients(); // [B, N, e]
        let keys = split_heads(&coefficients.apply(&self.key), heads); // [B, H, N, d]
        let values = split_heads(&coefficients.apply(&self.value), heads); // [B, H, N, d]
        let read = self.reading.read(ops.basis(), queries, &keys, &values);
        (merge_heads(&read.context).apply(&self.out), read.variance)
    }
}

/// What one layer carries from segment to segment of a sequence.
#[derive(Debug, Default)]
pub struct LayerState {
    /// The STM: rotated keys and values `[B, H, S, d]` of the previous segment and its layer
    /// inputs `[B, S, e]`, all detached.
    short_term: Option<(Tensor, Tensor, Tensor)>,
    /// Layer inputs `[B, S, e]` that left the STM and wait to be absorbed by the LTM.
    leaving: Option<Tensor>,
    /// The layer's long-term memory, created at the first absorption.
    long_term: Option<LongTermMemory>,
}

/// The state of a batch of sequences between segments: one [`LayerState`] per layer and the
/// absolute position of the next token.
#[derive(Debug)]
pub struct SequenceState {
    layers: Vec<LayerState>,
    position: i64,
}

impl SequenceState {
    /// An empty state: no STM, no LTM (a new sequence resets both, §3 "Resets").
    pub fn new(layers: usize) -> Self {
        Self {
            layers: (0..layers).map(|_| LayerState::default()).collect(),
            position: 0,
        }
    }
}

/// One decoder block: pre-LN attention (+ the LTM output) and a GELU MLP.
#[derive(Debug)]
struct Block {
    attention_norm: nn::LayerNorm,
    qkv: nn::Linear,
    attention_out: nn::Linear,
    mlp_norm: nn::LayerNorm,
    mlp_in: nn::Linear,
    mlp_out: nn::Linear,
    memory: Option<LayerMemory>,
    heads: usize,
    dropout: f64,
}

impl Block {
    fn new(path: &nn::Path, config: &SortingConfig) -> Self {
        let e = config.d_model;
        Self {
            attention_norm: nn::layer_norm(
                path / "attention_norm",
                vec![e as i64],
                Default::default(),
            ),
            qkv: linear(path / "qkv", e, 3 * e, true),
            attention_out: linear(path / "attention_out", e, e, true),
            mlp_norm: nn::layer_norm(path / "mlp_norm", vec![e as i64], Default::default()),
            mlp_in: linear(path / "mlp_in", e, config.d_inner, true),
            mlp_out: linear(path / "mlp_out", config.d_inner, e, true),
            memory: config
                .use_ltm
                .then(|| LayerMemory::new(&(path / "ltm"), config)),
            heads: config.heads,
            dropout: config.dropout,
        }
    }

    /// One segment `[B, T, e]` at absolute `positions` `[T]`; returns the block output and, when
    /// the LTM was read, the variances of its densities `[B, H, T]`.
    fn forward(
        &self,
        x: &Tensor,
        positions: &Tensor,
        state: &mut LayerState,
        rope: &Rope,
        ops: Option<&MemoryOperators>,
        train: bool,
    ) -> (Tensor, Option<Tensor>) {
        let (batch, len, width) = x.size3().expect("[B, T, e]");
        // The chunk that left the STM enters the LTM now, gated, so that the gate is trained
        // through the last segment's read (§1.4, §3).
        if let (Some(memory), Some(ops), Some(chunk)) = (&self.memory, ops, state.leaving.take()) {
            let ltm = state
                .long_term
                .get_or_insert_with(|| LongTermMemory::new(ops, batch as usize, width as usize));
            ltm.absorb(ops, &memory.gate(&chunk));
        }

        let h = x.apply(&self.attention_norm);
        let qkv = h.apply(&self.qkv).chunk(3, -1);
        let queries = split_heads(&qkv[0], self.heads); // [B, H, T, d]
        let keys = rope.rotate(&split_heads(&qkv[1], self.heads), positions);
        let values = split_heads(&qkv[2], self.heads);
        let rotated_queries = rope.rotate(&queries, positions);
        let (all_keys, all_values, stm_len) = match &state.short_term {
            Some((k, v, _)) => (
                Tensor::cat(&[k, &keys], 2),
                Tensor::cat(&[v, &values], 2),
                k.size()[2],
            ),
            None => (keys.shallow_clone(), values.shallow_clone(), 0),
        };
        // Query i sees every STM slot and current keys j ≤ i: key index ≤ stm_len + i. [T, S + T]
        let key_index = Tensor::arange(stm_len + len, (Kind::Int64, x.device())).unsqueeze(0);
        let query_index = Tensor::arange(len, (Kind::Int64, x.device())).unsqueeze(1) + stm_len;
        let mask = key_index.le_tensor(&query_index);
        let attention = Tensor::scaled_dot_product_attention(
            &rotated_queries,
            &all_keys,
            &all_values,
            Some(&mask),
            0.0,
            false,
            None,
            false,
        ); // [B, H, T, d]
        let mut y = x + merge_heads(&attention)
            .apply(&self.attention_out)
            .dropout(self.dropout, train);

        let mut variance = None;
        if let (Some(memory), Some(ops), Some(ltm)) = (&self.memory, ops, &state.long_term) {
            let (ltm_out, var) = memory.read(ltm, ops, &queries);
            y += ltm_out.dropout(self.dropout, train); // Z = Z_T + Z_LTM (§2.3)
            variance = Some(var);
        }
        let mlp = y
            .apply(&self.mlp_norm)
            .apply(&self.mlp_in)
            .gelu("none")
            .apply(&self.mlp_out);
        let y = &y + mlp.dropout(self.dropout, train);

        // This segment becomes the STM; the one it replaces leaves for the LTM (baseline: dropped).
        let entering = (keys.detach(), values.detach(), x.detach());
        let left = state.short_term.replace(entering);
        if self.memory.is_some() {
            state.leaving = left.map(|(_, _, inputs)| inputs);
        }
        (y, variance)
    }
}

/// The outcome of one sequence batch: mean cross-entropy and KL term, and target accuracy.
#[derive(Debug)]
pub struct TargetScore {
    /// Mean cross-entropy over the 20 target positions of every row (a scalar with a graph when
    /// the last segment ran with gradients).
    pub loss: Tensor,
    /// kl_weight × Σ_layers mean KL (§7.1); zero when no layer read its LTM.
    pub kl: Tensor,
    /// Target tokens predicted right by teacher-forced argmax.
    pub correct: i64,
    /// Target tokens scored (20 per row).
    pub total: i64,
}

/// The decoder: token embedding, blocks, final LayerNorm, LM head over the 22-token vocabulary.
#[derive(Debug)]
pub struct SortingModel {
    config: SortingConfig,
    embedding: nn::Embedding,
    blocks: Vec<Block>,
    final_norm: nn::LayerNorm,
    head: nn::Linear,
    rope: Rope,
    memory_ops: Option<MemoryOperators>,
}

impl SortingModel {
    /// Builds the parameters under `path`; the LTM operators (G_L, G_inf, S, §1.3, §3) are
    /// precomputed for chunks of `segment_len`. The config must be valid.
    pub fn new(path: &nn::Path, config: &SortingConfig) -> Self {
        let embedding_config = nn::EmbeddingConfig {
            ws_init: init_normal(),
            ..Default::default()
        };
        let memory_ops = config.use_ltm.then(|| {
            MemoryOperators::new(
                &config.ltm(),
                config.segment_len,
                Kind::Float,
                path.device(),
            )
        });
        Self {
            config: config.clone(),
            embedding: nn::embedding(
                path / "embedding",
                VOCAB_SIZE as i64,
                config.d_model as i64,
                embedding_config,
            ),
            blocks: (0..config.layers)
                .map(|i| Block::new(&(path / "blocks" / i), config))
                .collect(),
            final_norm: nn::layer_norm(
                path / "final_norm",
                vec![config.d_model as i64],
                Default::default(),
            ),
            head: linear(path / "head", config.d_model, VOCAB_SIZE, true),
            rope: Rope::new(config.head_dim(), ROPE_BASE),
            memory_ops,
        }
    }

    pub fn config(&self) -> &SortingConfig {
        &self.config
    }

    /// Runs one segment of tokens `[B, T]`, updating `state`; returns the hidden states `[B, T, e]`
    /// and the summed KL of the layers that read their LTM (unweighted), if any did.
    pub fn forward_segment(
        &self,
        tokens: &Tensor,
        state: &mut SequenceState,
        train: bool,
    ) -> (Tensor, Option<Tensor>) {
        let len = tokens.size()[1];
        let positions = Tensor::arange_start(
            state.position,
            state.position + len,
            (Kind::Int64, tokens.device()),
        );
        let mut x = tokens.apply(&self.embedding);
        let mut kl: Option<Tensor> = None;
        for (block, layer_state) in self.blocks.iter().zip(state.layers.iter_mut()) {
            let (y, variance) = block.forward(
                &x,
                &positions,
                layer_state,
                &self.rope,
                self.memory_ops.as_ref(),
                train,
            );
            if let Some(variance) = variance {
                let term = variance_kl(&variance, self.config.kl_prior_std);
                kl = Some(match kl {
                    Some(sum) => sum + term,
                    None => term,
                });
            }
            x = y;
        }
        state.position += len;
        (x, kl)
    }

    /// Scores a batch of whole lines `[B, length + 21]` (§5.1 framing): input = line[:-1], cut
    /// into `segment_len` segments from the start; every segment but the last runs without
    /// gradients; the last one (which holds the separator and every target input) runs with
    /// gradients when `train`, and is scored on its 20 target positions.
    pub fn score_targets(&self, lines: &Tensor, length: usize, train: bool) -> TargetScore {
        let targets = NUM_SYMBOLS as i64;
        let seg = self.config.segment_len as i64;
        let inputs_len = length as i64 + targets; // line[:-1]
        let full_segments = length as i64 / seg; // the separator (index `length`) is never in these
        let mut state = SequenceState::new(self.blocks.len());
        tch::no_grad(|| {
            for i in 0..full_segments {
                let _ = self.forward_segment(&lines.narrow(1, i * seg, seg), &mut state, train);
            }
        });
        let start = full_segments * seg;
        let (hidden, kl) = self.forward_segment(
            &lines.narrow(1, start, inputs_len - start),
            &mut state,
            train,
        );
        let last_len = hidden.size()[1];
        let logits = hidden
            .narrow(1, last_len - targets, targets)
            .apply(&self.final_norm)
            .apply(&self.head);
        let labels = lines.narrow(1, length as i64 + 1, targets);
        let loss = logits
            .view([-1, VOCAB_SIZE as i64])
            .cross_entropy_for_logits(&labels.reshape([-1]));
        let correct = logits
            .argmax(-1, false)
            .eq_tensor(&labels)
            .sum(Kind::Int64)
            .int64_value(&[]);
        let kl = match kl {
            Some(kl) => kl * self.config.kl_weight,
            None => Tensor::zeros([], (Kind::Float, lines.device())),
        };
        TargetScore {
            loss,
            kl,
            correct,
            total: labels.numel() as i64,
        }
    }

    /// The device the parameters live on.
    pub fn device(&self) -> Device {
        self.embedding.ws.device()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::train::sorting_data::{batch_rng, generate_batch, TRAIN_STREAM};

    fn tiny(use_ltm: bool) -> SortingConfig {
        SortingConfig {
            layers: 1,
            d_model: 8,
            heads: 2,
            d_inner: 16,
            segment_len: 4,
            num_basis: 8,
            num_samples: 8,
            use_ltm,
            ..SortingConfig::cpu()
        }
    }

    fn lines(length: usize) -> Tensor {
        let rows = generate_batch(&mut batch_rng(0, TRAIN_STREAM, 0), 2, length);
        Tensor::from_slice(&rows).view([2, -1])
    }

    fn gate_grad_norm(vs: &nn::VarStore) -> f64 {
        let vars = vs.variables();
        let grad = vars["blocks.0.ltm.gate.weight"].grad();
        if grad.defined() {
            grad.norm().double_value(&[])
        } else {
            0.0
        }
    }

    #[test]
    fn the_ltm_is_read_and_its_gate_trained_only_once_a_segment_left_the_stm() {
        tch::manual_seed(0);
        let vs = nn::VarStore::new(Device::Cpu);
        let model = SortingModel::new(&vs.root(), &tiny(true));
        // Length 8 = two full segments: at the last one the STM holds segment 1 and segment 0 has
        // just left it, so the LTM is read (KL > 0) and the gate receives a gradient.
        let score = model.score_targets(&lines(8), 8, true);
        assert!(score.kl.double_value(&[]) > 0.0);
        (&score.loss + &score.kl).backward();
        assert!(gate_grad_norm(&vs) > 0.0);
        assert_eq!(score.total, 40);

        // Length 4 = one full segment: it is still in the STM, the LTM is empty and unread.
        let vs = nn::VarStore::new(Device::Cpu);
        let model = SortingModel::new(&vs.root(), &tiny(true));
        let score = model.score_targets(&lines(4), 4, true);
        assert_eq!(score.kl.double_value(&[]), 0.0);
        score.loss.backward();
        assert_eq!(gate_grad_norm(&vs), 0.0);
    }

    #[test]
    fn the_baseline_has_no_memory_parameters_and_the_same_decoder() {
        let with = nn::VarStore::new(Device::Cpu);
        let _ = SortingModel::new(&with.root(), &tiny(true));
        let without = nn::VarStore::new(Device::Cpu);
        let _ = SortingModel::new(&without.root(), &tiny(false));
        let names = |vs: &nn::VarStore| {
            let mut n: Vec<String> = vs.variables().into_keys().collect();
            n.sort();
            n
        };
        let (with, without) = (names(&with), names(&without));
        assert!(without.iter().all(|n| !n.contains("ltm")));
        let shared: Vec<&String> = with.iter().filter(|n| !n.contains(".ltm.")).collect();
        assert_eq!(shared, without.iter().collect::<Vec<_>>());
    }
}
