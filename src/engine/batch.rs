//! Several sequences' memories read as the rows of one batch. The model's matrices (q/k/v, output,
//! MLP, LM head) run once on `[B, T, C]`, which is where batching saves time: each weight is read
//! once per step instead of once per sequence. Attention differs per row: each row takes in its
//! own new keys and reads its own memory (sinks, STM, archive, LTM at its own positions,
//! `infinity-former.md` §9.7), so [`Rows`] hands every row to its own cache. A decode step on host
//! memory then runs every row's read in one call per layer ([`host_attention::read`]): each cache
//! takes in its row and says what its queries read, and the reads of all rows share one parallel
//! region, so a step of B sequences costs one attention call per layer, not B.

use tch::{Kind, Tensor};

use super::generate::token_row;

use crate::model::cache::{unread, HostStep};
use crate::model::{host_attention, LayerCache, Llama, LogitsAt, ModelError};
use crate::rope::RopeTable;

/// One layer's caches of B sequences, row b of the batch reading `rows[b]`.
pub struct Rows<'a, C> {
    rows: Vec<&'a mut C>,
    /// Attention calls this layer has made: one per joint host read, one per row read through
    /// tensors.
    calls: usize,
}

impl<C> Rows<'_, C> {
    /// A step of `batch` rows must bring one row per sequence.
    fn check_batch(&self, batch: i64) -> Result<(), ModelError> {
        if batch == self.rows.len() as i64 {
            Ok(())
        } else {
            Err(ModelError::BadInput(format!(
                "{batch} batch rows for {} sequences",
                self.rows.len()
            )))
        }
    }
}

impl<C: LayerCache> Rows<'_, C> {
    /// Every row's cache takes in its row of the step on the host ([`LayerCache::take_in_rows`]),
    /// or, where it declines, reads through tensors ([`LayerCache::attend`]) at once; then the
    /// host reads of all rows run in one call, and each of those caches finishes its step
    /// ([`LayerCache::after_read`]). Returns every row's read as f32 rows `[B, H·D]`.
    fn read_together(&mut self, step: &HostStep, rope: &RopeTable) -> Result<Vec<f32>, ModelError> {
        let mut contexts: Vec<Option<Vec<f32>>> = Vec::with_capacity(self.rows.len());
        let mut reads = vec![];
        for (b, cache) in self.rows.iter_mut().enumerate() {
            let row = step.row(b);
            match cache.take_in_rows(&row, rope) {
                Some(read) => {
                    reads.push(read?);
                    contexts.push(None);
                }
                None => {
                    contexts.push(Some(read_through_tensors(*cache, &row, rope)?));
                    self.calls += 1;
                }
            }
        }
        if !reads.is_empty() {
            let mut outputs = host_attention::read(&reads)
                .ok_or_else(|| unread(step))?
                .into_iter();
            self.calls += 1;
            for (context, cache) in contexts.iter_mut().zip(self.rows.iter_mut()) {
                if context.is_none() {
                    let output = outputs.next().ok_or_else(|| unread(step))?;
                    cache.after_read(&output, rope)?;
                    *context = Some(output.context);
                }
            }
        }
        Ok(contexts.into_iter().flatten().flatten().collect())
    }
}

impl<C: LayerCache> LayerCache for Rows<'_, C> {
    /// The longest row's length (rows differ: each sequence has its own history).
    fn len(&self) -> i64 {
        self.rows.iter().map(|row| row.len()).max().unwrap_or(0)
    }

    fn attend(
        &mut self,
        queries: &Tensor,
        keys: &Tensor,
        values: &Tensor,
        rope: &RopeTable,
    ) -> Result<Tensor, ModelError> {
        self.check_batch(queries.size()[0])?;
        self.calls += self.rows.len();
        if let [only] = self.rows.as_mut_slice() {
            return only.attend(queries, keys, values, rope);
        }
        let contexts = self
            .rows
            .iter_mut()
            .enumerate()
            .map(|(b, row)| {
                let b = b as i64;
                row.attend(
                    &queries.narrow(0, b, 1),
                    &keys.narrow(0, b, 1),
                    &values.narrow(0, b, 1),
                    rope,
                )
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Tensor::cat(&contexts, 0)) // [B, H, T, D]
    }

    /// Each row's sequence decides across its layers ([`LayerCache::after_forward`]).
    fn after_forward(layers: &mut [&mut Self]) -> Result<(), ModelError> {
        let batch = layers.first().map_or(0, |layer| layer.rows.len());
        let mut per_row: Vec<Vec<&mut C>> = (0..batch).map(|_| vec![]).collect();
        for layer in layers.iter_mut() {
            for (row, cache) in per_row.iter_mut().zip(layer.rows.iter_mut()) {
                row.push(&mut **cache);
            }
        }
        per_row.iter_mut().try_for_each(|row| C::after_forward(row))
    }

    /// Every row's read of the step on host memory, together ([`Rows::read_together`]).
    fn attend_rows(
        &mut self,
        step: &HostStep,
        rope: &RopeTable,
    ) -> Option<Result<Vec<f32>, ModelError>> {
        Some(
            self.check_batch(step.shape[0])
                .and_then(|()| self.read_together(step, rope)),
        )
    }
}

/// One row's host step through `cache`'s tensor read: `[H·D]` f32.
fn read_through_tensors<C: LayerCache>(
    cache: &mut C,
    row: &HostStep,
    rope: &RopeTable,
) -> Result<Vec<f32>, ModelError> {
    let [queries, keys, values] = row.tensors();
    let context = cache.attend(&queries, &keys, &values, rope)?;
    Ok(Vec::<f32>::try_from(
        context.to_kind(Kind::Float).reshape([-1]),
    )?)
}

/// A decode step of B sequences: each row's next-token logits, and how many attention calls the
/// step made over all layers.
pub struct DecodedStep {
    /// `[B, V]` f32.
    pub logits: Tensor,
    /// One per layer where every row read on host memory together; one per layer and row where
    /// rows read through tensors.
    pub attention_calls: usize,
}

/// Feeds `tokens[b]` to the sequence whose per-layer caches are `memories[b]`, and returns each
/// row's next-token logits, all rows in one forward pass: each weight is read once per step.
/// Where the model decodes on host memory ([`Llama::decodes_on_host`]), every matrix and every
/// row's attention stays in our kernels instead of libtorch's per-operation dispatch, and the
/// rows' reads of a layer run in one call.
pub fn decode_rows<'a, C: LayerCache + 'a>(
    model: &Llama,
    memories: impl IntoIterator<Item = &'a mut [C]>,
    tokens: &[u32],
) -> Result<DecodedStep, ModelError> {
    let mut memories: Vec<&'a mut [C]> = memories.into_iter().collect();
    if memories.len() != tokens.len() {
        return Err(ModelError::BadInput(format!(
            "{} tokens for {} sequences",
            tokens.len(),
            memories.len()
        )));
    }
    let layers = model.config().num_layers as usize;
    let mut per_layer: Vec<Rows<'_, C>> = (0..layers)
        .map(|_| Rows {
            rows: Vec::with_capacity(tokens.len()),
            calls: 0,
        })
        .collect();
    for caches in memories.iter_mut() {
        if caches.len() != layers {
            return Err(ModelError::BadInput(format!(
                "a memory of {} layers for a model of {layers}",
                caches.len()
            )));
        }
        for (layer, cache) in per_layer.iter_mut().zip(caches.iter_mut()) {
            layer.rows.push(cache);
        }
    }
    let column = token_row(tokens).view([-1, 1]); // [B, 1]
    let logits = model.forward(&column, &mut per_layer, LogitsAt::Last)?;
    Ok(DecodedStep {
        logits,
        attention_calls: per_layer.iter().map(|layer| layer.calls).sum(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::generate::prefill;
    use crate::memory::{MemoryConfig, MemoryLayout};
    use crate::model::llama::tests::tiny;
    use crate::model::{KvCache, Precision};
    use crate::session::SessionMemory;
    use tch::Device;

    #[test]
    fn a_batch_of_rows_computes_what_each_row_computes_alone() {
        // Three sequences with different histories (so different lengths and positions) decode
        // one token together; each row must equal that sequence decoding alone (f32).
        let model = tiny(Precision::F32);
        let prompts: [&[u32]; 3] = [&[5, 9, 33], &[7], &[1, 2, 3, 4, 5, 6, 7]];
        let next = [11u32, 40, 2];
        let fresh = |prompt: &[u32]| {
            let mut caches: Vec<KvCache> = model.new_cache();
            let _ = prefill(&model, &mut caches, prompt, 4).unwrap();
            caches
        };
        let mut batched: Vec<Vec<KvCache>> = prompts.iter().map(|p| fresh(p)).collect();
        let together = decode_rows(&model, batched.iter_mut().map(Vec::as_mut_slice), &next)
            .unwrap()
            .logits;
        assert_eq!(together.size(), [3, 64]);
        for (b, prompt) in prompts.iter().enumerate() {
            let mut alone = fresh(prompt);
            let logits = decode_rows(&model, [alone.as_mut_slice()], &next[b..=b])
                .unwrap()
                .logits;
            let error = (together.get(b as i64) - logits.get(0))
                .abs()
                .max()
                .double_value(&[]);
            assert!(error < 1e-5, "row {b} differs by {error}");
            assert_eq!(
                batched[b][0].len(),
                alone[0].len(),
                "row {b}'s cache length"
            );
        }
    }

    /// A memory whose archive fills within a few dozen tokens (int8 where asked), without the
    /// signal.
    fn small_layout(archive_int8: bool) -> MemoryLayout {
        let config = MemoryConfig {
            sinks: 2,
            stm_len: 8,
            block_len: 4,
            top_k_blocks: 2,
            archive_budget: 64,
            ltm: None,
            ltm_chunk_len: 16,
            archive_int8,
            ..MemoryConfig::default()
        };
        MemoryLayout::new(config, 128, Device::Cpu).unwrap()
    }

    /// On host memory a step of more rows than one pass of the kernel takes (8) runs as one batch
    /// in which every row reads on the host or, where its memory declines (an int8 archive),
    /// through tensors: each row must still compute what it computes alone.
    #[test]
    fn many_host_rows_and_rows_that_decline_compute_what_each_row_computes_alone() {
        let model = tiny(Precision::Int4);
        assert!(
            model.decodes_on_host(),
            "the int4 tiny model decodes on the host"
        );
        let rows = crate::model::linear::INT4_MAX_ROWS as usize + 3;
        let layout = |row: usize| small_layout(row.is_multiple_of(3));
        let fresh = |row: usize| {
            let mut memory = SessionMemory::new(&model, &layout(row));
            let prompt: Vec<u32> = (0..12 + 3 * row as u32)
                .map(|i| (i * 7 + row as u32) % 64)
                .collect();
            let _ = prefill(&model, memory.caches(), &prompt, 8).unwrap();
            memory
        };
        let next: Vec<u32> = (0..rows as u32).map(|row| (row * 5 + 1) % 64).collect();
        let mut batched: Vec<SessionMemory> = (0..rows).map(fresh).collect();
        // A row whose archive is int8 and holds blocks reads through tensors.
        let through_tensors = batched
            .iter_mut()
            .filter_map(|memory| {
                let int8 = memory.caches()[0].config().archive_int8;
                (int8 && memory.stats().tiers.archive_tokens > 0).then_some(())
            })
            .count();
        let step = decode_rows(&model, batched.iter_mut().map(|m| m.caches()), &next).unwrap();
        let together = step.logits;
        assert_eq!(together.size(), [rows as i64, 64]);
        for row in 0..rows {
            let mut alone = fresh(row);
            let logits = decode_rows(&model, [alone.caches()], &next[row..=row])
                .unwrap()
                .logits;
            let error = (together.get(row as i64) - logits.get(0))
                .abs()
                .max()
                .double_value(&[]);
            assert!(error < 1e-4, "row {row} differs by {error}");
        }
        // The rows on the host read together, one call per layer; each row that reads through
        // tensors makes one call per layer of its own.
        let layers = model.config().num_layers as usize;
        assert!(through_tensors > 0, "some rows read through tensors");
        assert_eq!(step.attention_calls, layers * (1 + through_tensors));
    }

    /// Sixteen sequences of different lengths decoding on host memory together make one
    /// attention call per layer, as one sequence does; and each row's logits are bit for bit
    /// those of the row alone (the reads' parts are merged per head in the same order).
    #[test]
    fn host_rows_read_together_in_one_call_per_layer_and_equal_each_row_alone() {
        let model = tiny(Precision::Int4);
        let layout = small_layout(false);
        let fresh = |row: u32| {
            let mut memory = SessionMemory::new(&model, &layout);
            let prompt: Vec<u32> = (0..3 + 2 * row).map(|i| (i * 11 + row) % 64).collect();
            let _ = prefill(&model, memory.caches(), &prompt, 8).unwrap();
            memory
        };
        let rows = 16u32;
        let next: Vec<u32> = (0..rows).map(|row| (row * 3 + 2) % 64).collect();
        let mut batched: Vec<SessionMemory> = (0..rows).map(fresh).collect();
        let step = decode_rows(&model, batched.iter_mut().map(|m| m.caches()), &next).unwrap();
        let layers = model.config().num_layers as usize;
        assert_eq!(step.attention_calls, layers);
        for row in 0..rows {
            let mut alone = fresh(row);
            let single =
                decode_rows(&model, [alone.caches()], &next[row as usize..=row as usize]).unwrap();
            assert_eq!(single.attention_calls, layers);
            let error = (step.logits.get(row as i64) - single.logits.get(0))
                .abs()
                .max()
                .double_value(&[]);
            assert!(
                error == 0.0,
                "row {row} differs from the row alone by {error}"
            );
        }
    }

    #[test]
    fn a_memory_of_the_wrong_depth_is_an_error() {
        let model = tiny(Precision::F32);
        let mut short: Vec<KvCache> = model.new_cache();
        short.pop();
        assert!(matches!(
            decode_rows(&model, [short.as_mut_slice()], &[1]).map(|step| step.logits),
            Err(ModelError::BadInput(_))
        ));
    }
}
