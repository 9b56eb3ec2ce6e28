//! What one layer's attention reads besides the new tokens: the store of past keys and values.
//!
//! **This is where the session memory plugs in.** Each layer hands its new queries, keys and values
//! (before RoPE) to a [`LayerCache`] and gets the attention output back; the cache decides which
//! positions they take, what it keeps, and what the queries read. [`KvCache`] is the plain one: every
//! past token, exact, at its absolute position. The session memory (`crate::memory::LayerMemory`:
//! sinks + STM + exact archive + ∞-former LTM, all read in one joint softmax, `infinity-former.md`
//! §9.2 and §9.7) implements the same trait: it needs the pre-RoPE keys (§9.1: chunks leave the STM as pre-RoPE keys), chooses
//! window-relative positions (§9.3), and appends its memory logits to the same softmax, which
//! [`grouped_attention`] takes as extra key/value rows.

use tch::{Device, Kind, Tensor};

use super::{host_attention, ModelError};
use crate::rope::RopeTable;

/// One layer's memory of the past, as attention reads it. Every row of the batch holds the same
/// number of tokens (the caller pads or groups sequences).
pub trait LayerCache {
    /// Tokens held per row so far.
    fn len(&self) -> i64;

    fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Takes in the new tokens and returns what their queries read, causally (a new token sees the
    /// past and the new tokens up to itself).
    /// `queries` `[B, H, T, D]`, `keys` and `values` `[B, H_kv, T, D]`, all before RoPE;
    /// returns `[B, H, T, D]`.
    fn attend(
        &mut self,
        queries: &Tensor,
        keys: &Tensor,
        values: &Tensor,
        rope: &RopeTable,
    ) -> Result<Tensor, ModelError>;
}

/// Softmax attention of grouped queries over shared key/value heads (GQA): query head h reads
/// key/value head h / (H / H_kv). `queries` `[B, H, T, D]` (rotated), `keys`/`values`
/// `[B, H_kv, L, D]` (rotated), where the last T of the L keys are the queries' own tokens, at the
/// same positions; earlier keys are all visible. Returns `[B, H, T, D]`.
pub fn grouped_attention(queries: &Tensor, keys: &Tensor, values: &Tensor) -> Tensor {
    let (b, h, t, d) = queries.size4().expect("queries are [B, H, T, D]");
    let (_, h_kv, l, _) = keys.size4().expect("keys are [B, H_kv, L, D]");
    let group = h / h_kv;
    if t == 1 {
        // Decode: fold each group of query heads into the time axis, so one key/value head serves
        // it without copies and without a mask (a single new token sees everything).
        let q = queries.reshape([b, h_kv, group, d]); // [B, H_kv, G, D]
        let past = host_attention::Past::Whole { keys, values };
        if let Some(out) = host_attention::decode(&q, &[past]) {
            return out.reshape([b, h, 1, d]);
        }
        let out = Tensor::scaled_dot_product_attention(
            &q,
            keys,
            values,
            None::<Tensor>,
            0.0,
            false,
            None,
            false,
        );
        return out.reshape([b, h, 1, d]);
    }
    // Prefill: give every query head its key/value head (one copy of the keys, small next to the
    // scores) so libtorch's fused causal kernel applies.
    let expand = |x: &Tensor| {
        x.unsqueeze(2)
            .expand([b, h_kv, group, l, d], false)
            .reshape([b, h, l, d])
    }; // [B, H, L, D]
    let (keys, values) = (expand(keys), expand(values));
    if l == t {
        Tensor::scaled_dot_product_attention(
            queries,
            &keys,
            &values,
            None::<Tensor>,
            0.0,
            true,
            None,
            false,
        )
    } else {
        let mask = causal_mask(t, l, queries.device()); // [T, L]
        Tensor::scaled_dot_product_attention(
            queries,
            &keys,
            &values,
            Some(&mask),
            0.0,
            false,
            None,
            false,
        )
    }
}

/// `[T, L]` true where new token i (at L − T + i) may read key j: j ≤ L − T + i.
pub(crate) fn causal_mask(t: i64, l: i64, device: Device) -> Tensor {
    let rows = Tensor::arange(t, (Kind::Int64, device)).unsqueeze(1) + (l - t); // [T, 1]
    let cols = Tensor::arange(l, (Kind::Int64, device)).unsqueeze(0); // [1, L]
    cols.le_tensor(&rows)
}

/// The plain cache: every past token's rotated key and value, exact, at absolute positions
/// 0, 1, 2, … Buffers grow by doubling (fixed-shape in-place writes between growths), up to
/// `capacity` tokens (the model's context).
#[derive(Debug)]
pub struct KvCache {
    keys: Option<Tensor>,   // [B, H_kv, allocated, D]
    values: Option<Tensor>, // [B, H_kv, allocated, D]
    len: i64,
    capacity: i64,
}

const FIRST_ALLOCATION: i64 = 256;

impl KvCache {
    pub fn new(capacity: i64) -> Self {
        Self {
            keys: None,
            values: None,
            len: 0,
            capacity,
        }
    }

    pub fn capacity(&self) -> i64 {
        self.capacity
    }

    /// Makes room for `needed` tokens, keeping what is held.
    fn reserve(&mut self, like: &Tensor, needed: i64) {
        let allocated = self.keys.as_ref().map_or(0, |k| k.size()[2]);
        if needed <= allocated {
            return;
        }
        let mut size = allocated.max(FIRST_ALLOCATION);
        while size < needed {
            size *= 2;
        }
        let size = size.min(self.capacity);
        let (b, h_kv, _, d) = like.size4().expect("keys are [B, H_kv, T, D]");
        for buffer in [&mut self.keys, &mut self.values] {
            let grown = Tensor::zeros([b, h_kv, size, d], (like.kind(), like.device()));
            if let Some(old) = buffer.as_ref() {
                grown
                    .narrow(2, 0, self.len)
                    .copy_(&old.narrow(2, 0, self.len));
            }
            *buffer = Some(grown);
        }
    }
}

impl LayerCache for KvCache {
    fn len(&self) -> i64 {
        self.len
    }

    fn attend(
        &mut self,
        queries: &Tensor,
        keys: &Tensor,
        values: &Tensor,
        rope: &RopeTable,
    ) -> Result<Tensor, ModelError> {
        let t = keys.size()[2];
        let start = self.len;
        let needed = start + t;
        if needed > self.capacity.min(rope.len()) {
            return Err(ModelError::ContextFull {
                needed,
                capacity: self.capacity.min(rope.len()),
            });
        }
        if let Some(held) = &self.keys {
            if held.size()[0] != keys.size()[0] {
                return Err(ModelError::BadInput(format!(
                    "batch of {} rows for a cache of {}",
                    keys.size()[0],
                    held.size()[0]
                )));
            }
        }
        let (queries, keys) = rope.rotate_pair(queries, keys, start); // [B, H, T, D], [B, H_kv, T, D]
        self.reserve(&keys, needed);
        let (held_keys, held_values) = (
            self.keys.as_ref().expect("reserved"),
            self.values.as_ref().expect("reserved"),
        );
        held_keys.narrow(2, start, t).copy_(&keys);
        held_values.narrow(2, start, t).copy_(values);
        self.len = needed;
        Ok(grouped_attention(
            &queries,
            &held_keys.narrow(2, 0, needed),
            &held_values.narrow(2, 0, needed),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rope::Rope;

    /// Attention written out by hand: per query head, scores against its key/value head, causal mask,
    /// softmax, weighted values.
    fn naive_attention(q: &Tensor, k: &Tensor, v: &Tensor) -> Tensor {
        let (_, h, t, d) = q.size4().unwrap();
        let (_, h_kv, l, _) = k.size4().unwrap();
        let k = k.repeat_interleave_self_int(h / h_kv, 1, None);
        let v = v.repeat_interleave_self_int(h / h_kv, 1, None);
        let scores = q.matmul(&k.transpose(-1, -2)) / (d as f64).sqrt(); // [B, H, T, L]
        let visible = causal_mask(t, l, Device::Cpu);
        let scores = scores.masked_fill(&visible.logical_not(), f64::NEG_INFINITY);
        scores.softmax(-1, Kind::Double).matmul(&v)
    }

    #[test]
    fn cached_steps_equal_one_full_pass() {
        // Prefill 5 tokens, then 1, then 3: each output must equal full causal attention over the
        // whole sequence at those rows (f64, tolerance 1e-10).
        tch::manual_seed(3);
        let opts = (Kind::Double, Device::Cpu);
        let (b, h, h_kv, t, d) = (2, 6, 2, 9, 8);
        let q = Tensor::randn([b, h, t, d], opts);
        let k = Tensor::randn([b, h_kv, t, d], opts);
        let v = Tensor::randn([b, h_kv, t, d], opts);
        let rope = Rope::new(d as usize, 10000.0).table(32, Kind::Double, Device::Cpu);
        let expected = naive_attention(&rope.rotate(&q, 0), &rope.rotate(&k, 0), &v);
        let mut cache = KvCache::new(32);
        let mut start = 0;
        for step in [5, 1, 3] {
            let part = |x: &Tensor| x.narrow(2, start, step);
            let out = cache
                .attend(&part(&q), &part(&k), &part(&v), &rope)
                .unwrap();
            let error = (out - expected.narrow(2, start, step))
                .abs()
                .max()
                .double_value(&[]);
            assert!(error < 1e-10, "step at {start}: off by {error}");
            start += step;
        }
        assert_eq!(cache.len(), 9);
    }

    #[test]
    fn growth_keeps_what_is_held_and_the_context_is_enforced() {
        let opts = (Kind::Float, Device::Cpu);
        let rope = Rope::new(4, 10000.0).table(600, Kind::Float, Device::Cpu);
        let mut cache = KvCache::new(600);
        let step = |cache: &mut KvCache, t: i64| {
            cache.attend(
                &Tensor::ones([1, 2, t, 4], opts),
                &Tensor::ones([1, 1, t, 4], opts),
                &Tensor::ones([1, 1, t, 4], opts),
                &rope,
            )
        };
        let _ = step(&mut cache, 200).unwrap();
        let first_key = cache.keys.as_ref().unwrap().narrow(2, 0, 1).copy();
        let _ = step(&mut cache, 100).unwrap(); // grows 256 → 512
        let error = (cache.keys.as_ref().unwrap().narrow(2, 0, 1) - first_key)
            .abs()
            .max()
            .double_value(&[]);
        assert_eq!(error, 0.0, "growth must keep the held keys");
        assert!(matches!(
            step(&mut cache, 301),
            Err(ModelError::ContextFull {
                needed: 601,
                capacity: 600
            })
        ));
    }
}
