//! Several sequences' memories read as the rows of one batch. The model's matrices (q/k/v, output,
//! MLP, LM head) run once on `[B, T, C]`, which is where batching saves time: each weight is read
//! once per step instead of once per sequence. Attention is the one part that differs per row:
//! each row takes in its own new keys and reads its own memory (sinks, STM, archive, LTM at its own
//! positions, `infinity-former.md` §9.7), so [`Rows`] hands every row to its own cache.

use tch::Tensor;

use super::generate::token_row;

use crate::model::{LayerCache, Llama, LogitsAt, ModelError};
use crate::rope::RopeTable;

/// One layer's caches of B sequences, row b of the batch reading `rows[b]`.
pub struct Rows<'a, C> {
    rows: Vec<&'a mut C>,
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
        let batch = queries.size()[0];
        if batch != self.rows.len() as i64 {
            return Err(ModelError::BadInput(format!(
                "{batch} batch rows for {} sequences",
                self.rows.len()
            )));
        }
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
}

/// Feeds `tokens[b]` to the sequence whose per-layer caches are `memories[b]`, all in one forward
/// pass, and returns each row's next-token logits `[B, V]` (f32).
pub fn decode_rows<'a, C: LayerCache + 'a>(
    model: &Llama,
    memories: impl IntoIterator<Item = &'a mut [C]>,
    tokens: &[u32],
) -> Result<Tensor, ModelError> {
    let layers = model.config().num_layers as usize;
    let mut per_layer: Vec<Rows<'a, C>> = (0..layers)
        .map(|_| Rows {
            rows: Vec::with_capacity(tokens.len()),
        })
        .collect();
    for caches in memories {
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
    model.forward(&column, &mut per_layer, LogitsAt::Last)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::generate::prefill;
    use crate::model::llama::tests::tiny;
    use crate::model::{KvCache, Precision};

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
        let together =
            decode_rows(&model, batched.iter_mut().map(Vec::as_mut_slice), &next).unwrap();
        assert_eq!(together.size(), [3, 64]);
        for (b, prompt) in prompts.iter().enumerate() {
            let mut alone = fresh(prompt);
            let logits = decode_rows(&model, [alone.as_mut_slice()], &next[b..=b]).unwrap();
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

    #[test]
    fn a_memory_of_the_wrong_depth_is_an_error() {
        let model = tiny(Precision::F32);
        let mut short: Vec<KvCache> = model.new_cache();
        short.pop();
        assert!(matches!(
            decode_rows(&model, [short.as_mut_slice()], &[1]),
            Err(ModelError::BadInput(_))
        ));
    }
}
