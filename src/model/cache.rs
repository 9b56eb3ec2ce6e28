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

    /// The first half of [`LayerCache::attend_rows`]: takes in a decode step's new token per row,
    /// given as the fused projection's f32 rows, and returns what their queries read, for
    /// [`host_attention::read`] to run, with other caches' reads where a batch has several.
    /// `None`, having changed nothing, where this cache has no such step for what it holds (the
    /// caller then goes through `attend`).
    fn take_in_rows(
        &mut self,
        _step: &HostStep,
        _rope: &RopeTable,
    ) -> Option<Result<host_attention::Read, ModelError>> {
        None
    }

    /// The second half of [`LayerCache::attend_rows`], once the read of
    /// [`LayerCache::take_in_rows`] has run and given `read`: what the cache does after its
    /// queries have read (the session memory adds the mass its archive blocks received to their
    /// stickiness, and its STM overflow leaves for the archive here).
    fn after_read(
        &mut self,
        _read: &host_attention::Output,
        _rope: &RopeTable,
    ) -> Result<(), ModelError> {
        Ok(())
    }

    /// Once a forward pass has run every layer: what a cache decides across one sequence's
    /// `layers` (its caches in layer order), such as which archive blocks a session memory keeps
    /// (the session memory's sticky retention).
    fn after_forward(_layers: &mut [&mut Self]) -> Result<(), ModelError>
    where
        Self: Sized,
    {
        Ok(())
    }

    /// [`LayerCache::attend`] for a decode step on host memory: one new token per row, given as
    /// the fused projection's f32 rows, and the queries' reads returned as `[B, H·D]` f32 rows.
    /// `None`, having changed nothing, where this cache has no such step for what it holds (the
    /// caller then goes through `attend`).
    fn attend_rows(
        &mut self,
        step: &HostStep,
        rope: &RopeTable,
    ) -> Option<Result<Vec<f32>, ModelError>> {
        let read = match self.take_in_rows(step, rope)? {
            Ok(read) => read,
            Err(e) => return Some(Err(e)),
        };
        let output = host_attention::read(std::slice::from_ref(&read))
            .and_then(|outputs| outputs.into_iter().next())
            .ok_or_else(|| unread(step));
        Some(output.and_then(|output| self.after_read(&output, rope).map(|()| output.context)))
    }
}

/// One new token per batch row on host memory: `qkv` `[B, (H + 2·H_kv)·D]`, each row its queries,
/// keys and values before RoPE, as the fused projection gives them.
pub struct HostStep<'a> {
    pub qkv: &'a [f32],
    /// B, H, H_kv, D.
    pub shape: [i64; 4],
    /// The kind the caches hold keys and values in (the precision's activations).
    pub kind: Kind,
}

/// A [`HostStep`] taken apart: queries `[B, H, D]` and keys `[B, H_kv, D]` rotated to their
/// position, the keys before RoPE, and the values, all f32 rows.
pub struct StepRows {
    pub queries: Vec<f32>,
    pub keys: Vec<f32>,
    pub raw_keys: Vec<f32>,
    pub values: Vec<f32>,
}

impl HostStep<'_> {
    /// The queries, keys and values of every row, the queries and keys rotated to `position`.
    pub fn rows(&self, rope: &RopeTable, position: i64) -> StepRows {
        let [b, h, h_kv, d] = self.shape.map(|n| n as usize);
        let (mut queries, mut raw_keys, mut values) = (
            Vec::with_capacity(b * h * d),
            Vec::with_capacity(b * h_kv * d),
            Vec::with_capacity(b * h_kv * d),
        );
        for row in self.qkv.chunks_exact((h + 2 * h_kv) * d) {
            let (q, kv) = row.split_at(h * d);
            let (k, v) = kv.split_at(h_kv * d);
            queries.extend_from_slice(q);
            raw_keys.extend_from_slice(k);
            values.extend_from_slice(v);
        }
        let mut keys = raw_keys.clone();
        rope.rotate_rows(&mut queries, position);
        rope.rotate_rows(&mut keys, position);
        StepRows {
            queries,
            keys,
            raw_keys,
            values,
        }
    }

    /// Row `b` of this step alone (B = 1).
    pub fn row(&self, b: usize) -> HostStep<'_> {
        let [_, h, h_kv, d] = self.shape;
        let width = ((h + 2 * h_kv) * d) as usize;
        HostStep {
            qkv: &self.qkv[b * width..(b + 1) * width],
            shape: [1, h, h_kv, d],
            kind: self.kind,
        }
    }

    /// The step as the tensors [`LayerCache::attend`] takes: queries `[B, H, 1, D]`, keys and
    /// values `[B, H_kv, 1, D]`, before RoPE, in the caches' kind.
    pub fn tensors(&self) -> [Tensor; 3] {
        let [b, h, h_kv, d] = self.shape;
        let qkv = Tensor::from_slice(self.qkv)
            .view([b, h + 2 * h_kv, d])
            .to_kind(self.kind);
        [(0, h), (h, h_kv), (h + h_kv, h_kv)]
            .map(|(first, count)| qkv.narrow(1, first, count).unsqueeze(2))
    }

    /// `rows` `[B, H_kv, D]` as a tensor `[B, H_kv, 1, D]` of the caches' kind, to append.
    pub fn to_tensor(&self, rows: &[f32]) -> Tensor {
        let [b, _, h_kv, d] = self.shape;
        Tensor::from_slice(rows)
            .reshape([b, h_kv, 1, d])
            .to_kind(self.kind)
    }

    /// Whether `held` (a cache's keys or values) can take this step's rows and be read on the
    /// host: on the CPU, f32 or bf16, of this step's kind, with B rows and H_kv heads of D, and
    /// shapes [`host_attention::decode_rows`] takes.
    pub fn fits(&self, held: &Tensor) -> bool {
        let [b, h, h_kv, d] = self.shape;
        let size = held.size();
        d % 8 == 0
            && h / h_kv <= host_attention::MAX_QUERIES
            && held.device() == Device::Cpu
            && held.kind() == self.kind
            && matches!(self.kind, Kind::Float | Kind::BFloat16)
            && size.len() == 4
            && [size[0], size[1], size[3]] == [b, h_kv, d]
    }
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
        let past = host_attention::Past::Whole {
            keys: keys.shallow_clone(),
            values: values.shallow_clone(),
        };
        if let Some(out) = host_attention::decode(&q, vec![past]) {
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

/// Softmax attention of `queries` `[B, H, R, D]` (rotated) over `keys`/`values` `[B, H, L, D]`
/// (read where they lie), all visible, or, when `causal`, query i over keys 0..=i (R = L, the
/// same tokens), with each row's log-sum-exp of its scaled scores `[B, H, R]` (f32; f64 for f64
/// queries). The log-sum-exp is what merges this read with a read of other keys into one softmax
/// exactly: the session memory reads its tiers as such groups (`infinity-former.md` §9.2, one
/// softmax split by key groups). On the CPU this is libtorch's fused (flash) kernel, which never
/// holds the `[R, L]` scores and skips the hidden half of a causal read; elsewhere the scores are
/// formed in f32.
pub fn attention_with_lse(
    queries: &Tensor,
    keys: &Tensor,
    values: &Tensor,
    causal: bool,
) -> (Tensor, Tensor) {
    let kind = queries.kind();
    if queries.device() == Device::Cpu
        && matches!(kind, Kind::Float | Kind::BFloat16 | Kind::Double)
    {
        return Tensor::internal_scaled_dot_product_flash_attention_for_cpu(
            queries,
            keys,
            values,
            0.0,
            causal,
            None::<Tensor>,
            None,
        );
    }
    let wide = wide_kind(kind);
    let (r, d) = (queries.size()[2], queries.size()[3]);
    let mut scores = queries
        .to_kind(wide)
        .matmul(&keys.to_kind(wide).transpose(-1, -2))
        / (d as f64).sqrt();
    if causal {
        let hidden = causal_mask(r, r, queries.device()).logical_not();
        scores = scores.masked_fill(&hidden, f64::NEG_INFINITY);
    }
    let lse = scores.logsumexp([-1].as_slice(), true);
    let context = (scores - &lse).exp().matmul(&values.to_kind(wide));
    (context.to_kind(kind), lse.squeeze_dim(-1))
}

/// The kind in which reads of `kind` are split and merged: f64 for f64, else f32.
pub(crate) fn wide_kind(kind: Kind) -> Kind {
    if kind == Kind::Double {
        Kind::Double
    } else {
        Kind::Float
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

    /// Rotates on the host and appends, where the buffers already hold tokens on the CPU with
    /// room for one more; the queries read every held token.
    fn take_in_rows(
        &mut self,
        step: &HostStep,
        rope: &RopeTable,
    ) -> Option<Result<host_attention::Read, ModelError>> {
        let (keys, values) = (self.keys.as_ref()?, self.values.as_ref()?);
        let start = self.len;
        let fits = step.fits(keys) && start < keys.size()[2].min(rope.len());
        if !fits || start == 0 {
            return None;
        }
        let rows = step.rows(rope, start);
        for (held, rows) in [(keys, &rows.keys), (values, &rows.values)] {
            if !host_attention::write_position(held, start, rows) {
                held.narrow(2, start, 1).copy_(&step.to_tensor(rows));
            }
        }
        self.len = start + 1;
        let [b, h, h_kv, d] = step.shape;
        let past = host_attention::Past::Whole {
            keys: keys.narrow(2, 0, self.len),
            values: values.narrow(2, 0, self.len),
        };
        Some(Ok(host_attention::Read {
            queries: rows.queries,
            shape: [b, h_kv, h / h_kv, d],
            pasts: vec![past],
        }))
    }
}

/// The error of a host step whose rows the attention kernel declined after they were taken in
/// (the checks before taking them in rule this out).
pub(crate) fn unread(step: &HostStep) -> ModelError {
    ModelError::Unsupported(format!(
        "a decode step of shape {:?} in {:?} on host memory",
        step.shape, step.kind
    ))
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
    /// A decode step on host memory (`attend_rows`) reads as the tensor path's `attend` step for
    /// step (f32), and declines on an empty cache, holding nothing.
    #[test]
    fn host_steps_equal_the_tensor_path() {
        tch::manual_seed(5);
        let rope = Rope::new(16, 10000.0).table(64, Kind::Float, Device::Cpu);
        let (h, h_kv, d) = (4, 2, 16);
        let opts = (Kind::Float, Device::Cpu);
        let (mut host, mut tensors) = (KvCache::new(64), KvCache::new(64));
        let qkv = vec![0.25f32; ((h + 2 * h_kv) * d) as usize];
        let step = HostStep {
            qkv: &qkv,
            shape: [1, h, h_kv, d],
            kind: Kind::Float,
        };
        assert!(host.attend_rows(&step, &rope).is_none());
        assert_eq!(host.len(), 0);
        let (q, k, v) = (
            Tensor::randn([1, h, 5, d], opts),
            Tensor::randn([1, h_kv, 5, d], opts),
            Tensor::randn([1, h_kv, 5, d], opts),
        );
        let _ = host.attend(&q, &k, &v, &rope).unwrap();
        let _ = tensors.attend(&q, &k, &v, &rope).unwrap();
        let flat = |t: &Tensor| Vec::<f32>::try_from(t.reshape([-1])).unwrap();
        for _ in 0..6 {
            let (q, k, v) = (
                Tensor::randn([1, h, 1, d], opts),
                Tensor::randn([1, h_kv, 1, d], opts),
                Tensor::randn([1, h_kv, 1, d], opts),
            );
            let qkv = [flat(&q), flat(&k), flat(&v)].concat();
            let step = HostStep {
                qkv: &qkv,
                shape: [1, h, h_kv, d],
                kind: Kind::Float,
            };
            let ours = host.attend_rows(&step, &rope).expect("applies").unwrap();
            let want = flat(&tensors.attend(&q, &k, &v, &rope).unwrap());
            for (got, want) in ours.iter().zip(&want) {
                assert!((got - want).abs() < 1e-5, "{got} against {want}");
            }
        }
        assert_eq!(host.len(), 11);
    }
}
