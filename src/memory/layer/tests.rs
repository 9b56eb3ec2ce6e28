use super::*;
use crate::model::cache::causal_mask;
use crate::model::KvCache;
use crate::rope::Rope;
use tch::Device;

const F64: (Kind, Device) = (Kind::Double, Device::Cpu);
const HEADS: i64 = 4;
const KV_HEADS: i64 = 2;
const DIM: i64 = 8;

fn step(t: i64) -> (Tensor, Tensor, Tensor) {
    step_with(HEADS, KV_HEADS, t)
}

fn step_with(heads: i64, kv_heads: i64, t: i64) -> (Tensor, Tensor, Tensor) {
    (
        Tensor::randn([1, heads, t, DIM], F64),
        Tensor::randn([1, kv_heads, t, DIM], F64),
        Tensor::randn([1, kv_heads, t, DIM], F64),
    )
}

fn small(sinks: usize, stm_len: usize, top_k_blocks: usize, archive_budget: usize) -> MemoryConfig {
    MemoryConfig {
        sinks,
        stm_len,
        block_len: 4,
        top_k_blocks,
        archive_budget,
        ltm: None,
        ltm_chunk_len: 8,
        ..MemoryConfig::default()
    }
}

/// Before anything is evicted the memory is the plain KV cache: same positions, same softmax
/// (tolerance 1e-12, f64), over a prefill and several decode steps.
#[test]
fn equals_the_plain_kv_cache_until_the_first_eviction() {
    tch::manual_seed(11);
    let rope = Rope::new(DIM as usize, 10000.0).table(256, Kind::Double, Device::Cpu);
    let mut memory = LayerMemory::new(
        MemoryConfig {
            ltm: None,
            ..small(4, 32, 2, 64)
        },
        None,
    );
    let mut cache = KvCache::new(256);
    for t in [7, 1, 1, 5, 1, 12] {
        let (q, k, v) = step(t);
        let ours = memory.attend(&q, &k, &v, &rope).unwrap();
        let plain = cache.attend(&q, &k, &v, &rope).unwrap();
        let diff = (ours - plain).abs().max().double_value(&[]);
        assert!(
            diff < 1e-12,
            "differs from the KV cache by {diff} at {} tokens",
            memory.len()
        );
    }
    assert_eq!(memory.stats().archive_tokens, 0);
}

/// With every block selected, the archive is the "exact memory" of §9.6: full attention in which
/// every evicted token sits at the one memory position (just after the sinks, before the STM).
/// Checked against that attention written out by hand (tolerance 1e-12).
#[test]
fn archive_with_every_block_selected_is_exact_attention_at_the_memory_position() {
    tch::manual_seed(12);
    let table = Rope::new(DIM as usize, 10000.0).table(256, Kind::Double, Device::Cpu);
    let rope = Rope::new(DIM as usize, 10000.0);
    let mut memory = LayerMemory::new(small(2, 8, 100, 1000), None);
    let (mut all_k, mut all_v) = (vec![], vec![]);
    for _ in 0..5 {
        let (q, k, v) = step(5);
        let _ = memory.attend(&q, &k, &v, &table).unwrap();
        all_k.push(k);
        all_v.push(v);
    }
    let stats = memory.stats(); // the layout the last query reads; it joins the STM
    let (q, k, v) = step(1);
    let ours = memory.attend(&q, &k, &v, &table).unwrap();
    all_k.push(k);
    all_v.push(v);
    let (keys, values) = (Tensor::cat(&all_k, 2), Tensor::cat(&all_v, 2)); // 26 tokens
    let (sinks, archived, stm) = (2, stats.archive_tokens, stats.stm_tokens + 1);
    assert_eq!((stats.sink_tokens, sinks + archived + stm), (2, 26));
    assert!(
        archived >= 12,
        "expected evictions, archive holds {archived}"
    );
    // Positions: sinks 0, 1; archive all at 2; STM (incl. the query) from 3 on.
    let mut positions: Vec<f64> = vec![0.0, 1.0];
    positions.extend(std::iter::repeat_n(2.0, archived as usize));
    positions.extend((0..stm).map(|i| 3.0 + i as f64));
    let positions = Tensor::from_slice(&positions);
    let keys = rope
        .rotate(&keys, &positions)
        .repeat_interleave_self_int(HEADS / KV_HEADS, 1, None);
    let values = values.repeat_interleave_self_int(HEADS / KV_HEADS, 1, None);
    let q = rope.rotate(&q, &positions.narrow(0, 25, 1));
    let probs = (q.matmul(&keys.transpose(-1, -2)) / (DIM as f64).sqrt()).softmax(-1, Kind::Double);
    let reference = probs.matmul(&values);
    let diff = (ours - reference).abs().max().double_value(&[]);
    assert!(
        diff < 1e-12,
        "archive reading differs from exact attention by {diff}"
    );
}

/// A chunk of new tokens is read as query segments of `block_len`, each with its own top-k
/// archive blocks, all segments in one batched call and the held run in one fused call, merged by
/// log-sum-exp: every query must read what the softmax over its own segment's blocks, the sinks and
/// the STM (causally) gives, written out by hand per segment (tolerance 1e-12, f64; 11 tokens
/// make two whole segments and a short one, and top 2 of several blocks makes them differ).
#[test]
fn each_query_segment_reads_its_own_blocks_in_one_softmax() {
    tch::manual_seed(14);
    let rope = Rope::new(DIM as usize, 10000.0).table(256, Kind::Double, Device::Cpu);
    let mut memory = LayerMemory::new(small(2, 8, 2, 1000), None);
    for _ in 0..6 {
        let (q, k, v) = step(5);
        let _ = memory.attend(&q, &k, &v, &rope).unwrap();
    }
    assert!(
        memory.archive.blocks() >= 4,
        "{} blocks",
        memory.archive.blocks()
    );
    let (t, group) = (11, HEADS / KV_HEADS);
    let (q, k, v) = step(t);
    // The reference, from the state before the chunk is taken in.
    let start = memory.keys.len() + i64::from(memory.evicted);
    let (rotated_q, rotated_k) = rope.rotate_pair(&q, &k, start);
    let held_keys = Tensor::cat(&[memory.keys.view().unwrap(), rotated_k], 2);
    let held_values = Tensor::cat(&[memory.values.view().unwrap(), v.shallow_clone()], 2);
    let l = held_keys.size()[2];
    let grouped = rotated_q.reshape([1, KV_HEADS, group, t, DIM]);
    let mut chosen_sets = vec![];
    let mut reference = vec![];
    for (from, n) in [(0, 4), (4, 4), (8, 3)] {
        let rows = grouped
            .narrow(3, from, n)
            .reshape([1, KV_HEADS, group * n, DIM]);
        let selected = memory.archive.select(&rows, 2).unwrap();
        chosen_sets.push(Vec::<f64>::try_from(selected.keys.sum(Kind::Double).view([1])).unwrap());
        let keys = Tensor::cat(&[&held_keys, &selected.keys.squeeze_dim(2)], 2);
        let values = Tensor::cat(&[&held_values, &selected.values.squeeze_dim(2)], 2);
        let visible = causal_mask(t, l, Device::Cpu)
            .narrow(0, from, n)
            .repeat([group, 1]);
        let hidden = Tensor::cat(
            &[
                visible,
                Tensor::ones([group * n, keys.size()[2] - l], (Kind::Bool, Device::Cpu)),
            ],
            1,
        )
        .logical_not();
        let scores = (rows.matmul(&keys.transpose(-1, -2)) / (DIM as f64).sqrt())
            .masked_fill(&hidden, f64::NEG_INFINITY);
        let read = scores.softmax(-1, Kind::Double).matmul(&values);
        reference.push(read.reshape([1, KV_HEADS, group, n, DIM]));
    }
    assert_ne!(
        chosen_sets[0], chosen_sets[1],
        "the segments should choose differently"
    );
    let reference = Tensor::cat(&reference, 3).reshape([1, HEADS, t, DIM]);
    let ours = memory.attend(&q, &k, &v, &rope).unwrap();
    let diff = (ours - reference).abs().max().double_value(&[]);
    assert!(
        diff < 1e-12,
        "segments read differently from their own softmax by {diff}"
    );
}

/// Window-relative positions (§9.3): after 1,000 and after 1,000,000 tokens, a memory with the
/// same sinks and the same last window gives the same output (tolerance 1e-12); the RoPE table
/// only covers sinks + 1 + stm_len + block_len + the step, so no larger position is ever used.
#[test]
fn the_same_window_reads_the_same_at_token_one_thousand_and_one_million() {
    tch::manual_seed(13);
    let config = MemoryConfig {
        block_len: 64,
        ltm_chunk_len: 64,
        ..small(2, 64, 0, 0)
    }; // sinks + STM
    let rope =
        Rope::new(DIM as usize, 10000.0).table(2 + 1 + 64 + 64 + 1024, Kind::Double, Device::Cpu);
    let sinks = step_with(1, 1, 2); // one head keeps a million tokens quick
    let filler = step_with(1, 1, 256);
    let window = step_with(1, 1, 16);
    let run = |filler_steps: usize| {
        let mut memory = LayerMemory::new(config.clone(), None);
        let _ = memory.attend(&sinks.0, &sinks.1, &sinks.2, &rope).unwrap();
        for _ in 0..filler_steps {
            let _ = memory
                .attend(&filler.0, &filler.1, &filler.2, &rope)
                .unwrap();
        }
        (
            memory
                .attend(&window.0, &window.1, &window.2, &rope)
                .unwrap(),
            memory.stats().dropped_tokens,
        )
    };
    let (near, near_dropped) = run(1);
    let (far, far_dropped) = run(3907); // 2 + 3907·256 + 16 = 1,000,210 tokens
    assert!(
        far_dropped > 999_000 && near_dropped <= 1024,
        "{near_dropped} / {far_dropped} tokens left the window"
    );
    let diff = (near - far).abs().max().double_value(&[]);
    assert!(
        diff < 1e-12,
        "the window reads differently after a million tokens: {diff}"
    );
}

/// The compute per token is fixed: whatever was absorbed, a decode step reads at most
/// sinks + k blocks + R points + STM + 1 keys, and the archive never exceeds its budget.
#[test]
fn tiers_stay_within_their_bounds_and_the_signal_absorbs_the_overflow() {
    tch::manual_seed(14);
    let rope = Rope::new(DIM as usize, 10000.0).table(512, Kind::Double, Device::Cpu);
    let ltm = crate::ltm::LtmConfig {
        num_basis: 16,
        widths: vec![0.05, 0.1],
        num_samples: 8,
        quadrature_points: 8,
        ..Default::default()
    };
    let config = MemoryConfig {
        ltm: Some(ltm.clone()),
        ..small(2, 8, 2, 16)
    };
    let operators = MemoryOperators::new(&ltm, 8, Kind::Float, Device::Cpu);
    let mut memory = LayerMemory::new(config, Some(operators));
    for _ in 0..50 {
        let (q, k, v) = step(3);
        let out = memory.attend(&q, &k, &v, &rope).unwrap();
        assert!(out.isfinite().all().int64_value(&[]) == 1);
        let s = memory.stats();
        assert!(
            s.archive_tokens <= 16 && s.stm_tokens <= 8 && s.sink_tokens == 2,
            "{s:?}"
        );
    }
    let s = memory.stats();
    assert_eq!(
        s.sink_tokens as u64
            + s.stm_tokens as u64
            + s.archive_tokens as u64
            + s.ltm_tokens
            + s.dropped_tokens,
        150
    );
    assert!(
        s.ltm_tokens >= 100 && s.ltm_updates >= 12 && s.dropped_tokens == 0,
        "{s:?}"
    );
    let ltm_bytes = s.ltm_bytes;
    for _ in 0..20 {
        let (q, k, v) = step(3);
        let _ = memory.attend(&q, &k, &v, &rope).unwrap();
    }
    assert_eq!(memory.stats().ltm_bytes, ltm_bytes, "the signal grew");
}

/// The int8 archive reads what the exact one reads, within a stated tolerance, at about half
/// the bytes per archived token (bf16, head_dim 64, blocks of 32: 2·64 + 2·2 scale bytes + 4
/// of the bf16 representative against 2·128 + 4 per token and head, a ratio of 0.52).
#[test]
fn an_int8_archive_reads_like_the_exact_one_in_half_the_bytes() {
    tch::manual_seed(15);
    let (dim, bf16) = (64, (Kind::BFloat16, Device::Cpu));
    let rope = Rope::new(dim as usize, 10000.0).table(256, Kind::BFloat16, Device::Cpu);
    let config = |archive_int8| MemoryConfig {
        block_len: 32,
        ltm_chunk_len: 32,
        archive_int8,
        ..small(2, 64, 100, 4096)
    };
    let (mut exact, mut int8) = (
        LayerMemory::new(config(false), None),
        LayerMemory::new(config(true), None),
    );
    let mut worst: f64 = 0.0;
    for _ in 0..40 {
        let q = Tensor::randn([1, HEADS, 10, dim], bf16);
        let (k, v) = (
            Tensor::randn([1, KV_HEADS, 10, dim], bf16),
            Tensor::randn([1, KV_HEADS, 10, dim], bf16),
        );
        let a = exact.attend(&q, &k, &v, &rope).unwrap();
        let b = int8.attend(&q, &k, &v, &rope).unwrap();
        let diff = (a.to_kind(Kind::Float) - b.to_kind(Kind::Float))
            .abs()
            .max();
        worst = worst.max(diff.double_value(&[]));
    }
    let (e, i) = (exact.stats(), int8.stats());
    assert_eq!(e.archive_tokens, i.archive_tokens);
    assert!(e.archive_tokens >= 300, "{e:?}");
    // Values within half a scale (|v|max/254 ≈ 0.015 for N(0,1) rows); the output, an average of
    // them, is bf16 (±0.008 near 1), so 0.03 bounds what int8 adds.
    assert!(
        worst < 0.03,
        "the int8 archive reads differently by {worst}"
    );
    let ratio = i.archive_bytes as f64 / e.archive_bytes as f64;
    assert!(
        (0.5..0.54).contains(&ratio),
        "int8 archive bytes {} vs exact {}: ratio {ratio}",
        i.archive_bytes,
        e.archive_bytes
    );
}

/// A spill file that cannot be made (the directory is gone) is an error naming the file, not
/// a panic; the blocks it would have held count as dropped and the archive stays consistent.
#[test]
fn a_failed_spill_is_an_error_and_leaves_the_tallies_whole() {
    tch::manual_seed(16);
    let rope = Rope::new(DIM as usize, 10000.0).table(256, Kind::Double, Device::Cpu);
    let dir = crate::memory::spill::ScratchDir::new("layer-spill-gone");
    let gone = dir.path().join("gone");
    let mut memory = LayerMemory::new(
        MemoryConfig {
            spill_dir: Some(gone.clone()),
            ..small(2, 8, 2, 64)
        },
        None,
    );
    let (q, k, v) = step(12);
    let err = memory.attend(&q, &k, &v, &rope).unwrap_err();
    assert!(
        err.to_string().contains(gone.to_str().unwrap()),
        "the error names no file: {err}"
    );
    let s = memory.stats();
    assert_eq!((s.archive_tokens, s.dropped_tokens), (0, 4), "{s:?}");
    assert_eq!(s.sink_tokens + s.stm_tokens + s.dropped_tokens as i64, 12);
}

/// The new token's fused projection row `[1, (H + 2·H_kv)·D]` (f32), as `attend_rows` takes it,
/// from queries `[1, H, 1, D]` and keys and values `[1, H_kv, 1, D]`.
fn projection_row(q: &Tensor, k: &Tensor, v: &Tensor) -> Vec<f32> {
    let flat = |t: &Tensor| Vec::<f32>::try_from(t.to_kind(Kind::Float).reshape([-1])).unwrap();
    [flat(q), flat(k), flat(v)].concat()
}

/// A decode step on host memory (`attend_rows`: RoPE, the tiers, the ranking of blocks and the
/// read, all without tensors of the step) equals the tensor path's `attend` step for step, in
/// f32, while sinks fill, blocks leave the STM, and the archive grows past the top k; the tiers
/// and the counted reads end the same, and with sticky retention so do the blocks' stickiness
/// (the host read weighs each chosen block as the joint read does).
#[test]
fn host_steps_equal_the_tensor_path() {
    for retention in [Retention::Fifo, Retention::Sticky] {
        tch::manual_seed(13);
        let rope = Rope::new(DIM as usize, 10000.0).table(512, Kind::Float, Device::Cpu);
        let config = MemoryConfig {
            archive_retention: retention,
            ..small(2, 8, 2, 1000)
        };
        let mut host = LayerMemory::new(config.clone(), None);
        let mut tensors = LayerMemory::new(config, None);
        let f32_step = |t| {
            let (q, k, v) = step(t);
            (
                q.to_kind(Kind::Float),
                k.to_kind(Kind::Float),
                v.to_kind(Kind::Float),
            )
        };
        let (q, k, v) = f32_step(3);
        let _ = host.attend(&q, &k, &v, &rope).unwrap();
        let _ = tensors.attend(&q, &k, &v, &rope).unwrap();
        for _ in 0..40 {
            let (q, k, v) = f32_step(1);
            let qkv = projection_row(&q, &k, &v);
            let step = HostStep {
                qkv: &qkv,
                shape: [1, HEADS, KV_HEADS, DIM],
                kind: Kind::Float,
            };
            let ours = host
                .attend_rows(&step, &rope)
                .expect("a host step applies to an f32 memory on the CPU")
                .unwrap();
            let want = tensors.attend(&q, &k, &v, &rope).unwrap();
            let want = Vec::<f32>::try_from(want.reshape([-1])).unwrap();
            for (got, want) in ours.iter().zip(&want) {
                assert!((got - want).abs() < 1e-5, "{got} against {want}");
            }
        }
        assert_eq!(host.stats(), tensors.stats());
        assert!(
            host.stats().archive_tokens > 2 * 4,
            "more blocks than the top k"
        );
        assert_eq!(host.take_reads(), tensors.take_reads());
        let (got, want) = (host.archive.stickiness(), tensors.archive.stickiness());
        assert_eq!(got.is_some(), retention == Retention::Sticky);
        if let (Some(got), Some(want)) = (got, want) {
            assert_eq!(got.len(), want.len());
            assert!(want.iter().any(|&s| s > 0.0), "the blocks were read");
            for (got, want) in got.iter().zip(want) {
                assert!((got - want).abs() < 1e-5, "stickiness {got} against {want}");
            }
        }
    }
}

/// With nothing held yet, the host step declines and leaves the memory as it was.
#[test]
fn a_host_step_on_an_empty_memory_declines() {
    let rope = Rope::new(DIM as usize, 10000.0).table(64, Kind::Float, Device::Cpu);
    let mut memory = LayerMemory::new(small(2, 8, 2, 1000), None);
    let qkv = vec![0.5f32; ((HEADS + 2 * KV_HEADS) * DIM) as usize];
    let step = HostStep {
        qkv: &qkv,
        shape: [1, HEADS, KV_HEADS, DIM],
        kind: Kind::Float,
    };
    assert!(memory.attend_rows(&step, &rope).is_none());
    assert_eq!(memory.len(), 0);
}
