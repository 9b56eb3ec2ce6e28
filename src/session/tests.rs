use super::*;
use crate::engine::generate::prefill;
use crate::ltm::LtmConfig;
use crate::memory::spill::ScratchDir;
use crate::memory::{MemoryConfig, Retention};
use crate::model::llama::tests::{tiny, tiny_with_context};
use crate::model::Precision;
use tch::{Device, Tensor};

/// Every tier in use on the tiny model (context 128): 2 sinks, STM 16, blocks of 4, an archive
/// of 16 tokens and a small continuous signal behind it.
fn layout() -> MemoryLayout {
    layout_with(false, None)
}

/// [`layout`] with the archive int8 or exact, in RAM or spilled to `spill_dir`.
fn layout_with(archive_int8: bool, spill_dir: Option<&std::path::Path>) -> MemoryLayout {
    let ltm = LtmConfig {
        num_basis: 16,
        widths: vec![0.05, 0.1],
        num_samples: 8,
        quadrature_points: 8,
        ..LtmConfig::default()
    };
    let config = MemoryConfig {
        sinks: 2,
        stm_len: 16,
        block_len: 4,
        top_k_blocks: 2,
        archive_budget: 16,
        archive_retention: Retention::Fifo,
        archive_budget_bytes: None,
        ltm: Some(ltm),
        ltm_chunk_len: 8,
        archive_int8,
        spill_dir: spill_dir.map(std::path::Path::to_path_buf),
        count_reads: true,
    };
    MemoryLayout::new(config, 128, Device::Cpu).unwrap()
}

fn tokens(n: usize, seed: u32) -> Vec<u32> {
    (0..n as u32)
        .map(|i| (i * 7 + seed * 13) % 60 + 1)
        .collect()
}

/// A memory that has taken in `n` tokens, in uneven chunks.
fn filled(model: &Llama, layout: &MemoryLayout, n: usize) -> SessionMemory {
    let mut memory = SessionMemory::new(model, layout);
    let all = tokens(n, 1);
    for part in all.chunks(7) {
        let _ = prefill(model, memory.caches(), part, 3).unwrap();
    }
    memory
}

#[test]
fn every_tier_fills_and_the_counts_add_up() {
    let (model, layout) = (tiny(Precision::F32), layout());
    let stats = filled(&model, &layout, 100).stats();
    assert_eq!(stats.tokens_seen, 100);
    assert_eq!(
        (stats.tiers.sink_tokens, stats.tiers.dropped_tokens),
        (2, 0)
    );
    assert!(
        stats.tiers.stm_tokens <= 16 && stats.tiers.archive_tokens <= 16,
        "{stats:?}"
    );
    assert!(
        stats.tiers.ltm_tokens >= 64 && stats.tiers.ltm_updates >= 8,
        "{stats:?}"
    );
    assert_eq!(
        stats.total_bytes,
        stats.tiers.sink_bytes
            + stats.tiers.stm_bytes
            + stats.tiers.archive_bytes
            + stats.tiers.ltm_bytes
    );
}

/// A turn's reading counts every block the archive picked: layers × KV heads × k per query
/// segment (a chunk of 3 new tokens is one segment, blocks being 4 long), the held blocks' counts
/// plus those of blocks that left add up to the picks, and the mass on the signal's points is
/// measured once the signal holds some. A second take starts from nothing.
#[test]
fn a_turns_reading_counts_every_pick_once() {
    let (model, layout) = (tiny(Precision::F32), layout());
    let mut memory = filled(&model, &layout, 100);
    let _ = memory.take_reading();
    for part in tokens(12, 3).chunks(3) {
        let _ = prefill(&model, memory.caches(), part, 3).unwrap();
    }
    let reading = memory.take_reading();
    let config = model.config();
    let (layers, kv_heads) = (config.num_layers as u64, config.num_kv_heads as u64);
    assert_eq!(reading.segments, 4, "{reading:?}");
    assert_eq!(reading.picks, layers * kv_heads * 2 * 4, "{reading:?}");
    assert_eq!(
        reading.selected.iter().sum::<u64>() + reading.selected_then_left,
        reading.picks
    );
    assert_eq!(reading.held(), memory.archive_blocks());
    assert_eq!(reading.block_len, 4);
    let mass = reading.signal_mass.expect("the signal holds points");
    assert!(mass > 0.0 && mass < 1.0, "{mass}");
    let again = memory.take_reading();
    assert_eq!(
        (again.picks, again.segments, again.signal_mass),
        (0, 0, None)
    );
}

/// The round trip is exact: the bytes read back write the same bytes, and the restored memory
/// computes bit-identical logits for the next tokens (so a restart changes nothing); with the
/// archive exact and int8, in RAM and spilled.
#[test]
fn a_round_trip_is_bit_identical_and_continues_identically() {
    let model = tiny(Precision::F32);
    let dir = ScratchDir::new("session-round-trip");
    for (int8, spill) in [(false, None), (true, None), (true, Some(dir.path()))] {
        let layout = layout_with(int8, spill);
        let mut original = filled(&model, &layout, 100);
        let bytes = original.to_bytes();
        let mut restored = SessionMemory::from_bytes(&bytes, &model, &layout).unwrap();
        assert_eq!(restored.to_bytes(), bytes, "int8 {int8}, spill {spill:?}");
        assert_eq!(restored.stats(), original.stats());
        for part in tokens(30, 2).chunks(5) {
            let a = prefill(&model, original.caches(), part, 5).unwrap();
            let b = prefill(&model, restored.caches(), part, 5).unwrap();
            assert!(a.equal(&b), "the restored memory computes differently");
        }
        assert_eq!(restored.to_bytes(), original.to_bytes());
    }
}

/// With a spill directory the archive lives in mapped files there (seen in /proc/self/maps, already
/// unlinked), the memory computes bit-identical logits to the one in RAM, and once it is dropped
/// neither a file nor a mapping is left.
#[test]
fn a_spilled_memory_computes_identically_and_leaves_nothing_behind() {
    let model = tiny(Precision::F32);
    let dir = ScratchDir::new("session-spill");
    let mapped = || {
        std::fs::read_to_string("/proc/self/maps")
            .unwrap()
            .lines()
            .filter(|l| l.contains(dir.path().to_str().unwrap()))
            .count()
    };
    for int8 in [false, true] {
        let mut ram = filled(&model, &layout_with(int8, None), 60);
        let mut spilled = filled(&model, &layout_with(int8, Some(dir.path())), 60);
        assert!(
            mapped() > 0,
            "no archive buffer is mapped from the spill directory"
        );
        assert_eq!(dir.files(), 0, "a spill file is still linked");
        assert_eq!(spilled.to_bytes(), ram.to_bytes());
        for part in tokens(40, 4).chunks(3) {
            let a = prefill(&model, ram.caches(), part, 3).unwrap();
            let b = prefill(&model, spilled.caches(), part, 3).unwrap();
            assert!(
                a.equal(&b),
                "the spilled memory computes differently (int8 {int8})"
            );
        }
        drop(spilled);
        assert_eq!(
            (mapped(), dir.files()),
            (0, 0),
            "the spill outlived its memory"
        );
    }
    let missing = MemoryConfig {
        spill_dir: Some(dir.path().join("absent")),
        ..layout().config().clone()
    };
    let err = MemoryLayout::new(missing, 128, Device::Cpu).unwrap_err();
    assert!(err.to_string().contains("memory.spill_dir"), "{err}");
}

/// A store that kept the core and the blocks it had, and appends only new blocks, rebuilds the
/// same memory: blocks, once written, never change.
#[test]
fn archive_blocks_can_be_written_incrementally() {
    let (model, layout) = (tiny(Precision::F32), layout());
    let mut memory = filled(&model, &layout, 40);
    let mut stored: std::collections::BTreeMap<u64, Vec<u8>> = memory
        .archive_blocks()
        .iter()
        .map(|b| (b, memory.block_bytes(b).unwrap()))
        .collect();
    let before = memory.archive_blocks();
    let _ = prefill(&model, memory.caches(), &tokens(9, 3), 4).unwrap();
    let after = memory.archive_blocks();
    let end = |held: &HeldBlocks| held.iter().last().unwrap() + 1;
    assert!(end(&after) > end(&before), "{before:?} → {after:?}");
    for block in end(&before)..end(&after) {
        stored.insert(block, memory.block_bytes(block).unwrap());
    }
    for block in after.iter() {
        assert_eq!(
            stored[&block],
            memory.block_bytes(block).unwrap(),
            "block {block} changed"
        );
    }
    stored.retain(|&b, _| after.contains(b));
    let blocks: Vec<&[u8]> = stored.values().map(Vec::as_slice).collect();
    let rebuilt =
        SessionMemory::from_parts(&memory.core_bytes(), &blocks, &model, &layout).unwrap();
    assert_eq!(rebuilt.to_bytes(), memory.to_bytes());
    assert!(memory.block_bytes(end(&after)).is_none());

    // The one-file form splits, without the model, into exactly the core and the held blocks.
    let whole = memory.to_bytes();
    let parts = MemoryParts::split(&whole).unwrap();
    assert_eq!(parts.core, memory.core_bytes());
    assert_eq!(parts.blocks, stored.into_values().collect::<Vec<_>>());
    assert_eq!(parts.block_numbers().unwrap(), after);
    assert_eq!(parts.join(), whole);
    assert_eq!(MemoryParts::split(&[]).unwrap(), MemoryParts::default());
    // A file missing its last block is refused.
    let (core, blocks) = parts::split(&whole).unwrap();
    let short = parts::join(core, blocks[..blocks.len() - 1].iter().copied());
    assert!(matches!(
        MemoryParts::split(&short),
        Err(SessionFormatError::Corrupt(_))
    ));
}

#[test]
fn another_model_layout_or_version_is_refused_with_a_reason() {
    let (model, layout) = (tiny(Precision::F32), layout());
    let bytes = filled(&model, &layout, 30).to_bytes();
    let other_precision = tiny(Precision::Bf16);
    assert!(matches!(
        SessionMemory::from_bytes(&bytes, &other_precision, &layout),
        Err(SessionFormatError::OtherModel { .. })
    ));
    let mut other = layout.config().clone();
    other.top_k_blocks = 3;
    let other_layout = MemoryLayout::new(other, 128, Device::Cpu).unwrap();
    assert!(matches!(
        SessionMemory::from_bytes(&bytes, &model, &other_layout),
        Err(SessionFormatError::OtherLayout { .. })
    ));
    // The version sits after the file's magic, the core's length and the core's magic.
    let mut newer = bytes.clone();
    newer[24] = 99;
    let error = SessionMemory::from_bytes(&newer, &model, &layout).unwrap_err();
    assert_eq!(
        error,
        SessionFormatError::Version {
            found: 99,
            supported: FORMAT_VERSION
        }
    );
    assert!(error.to_string().contains("version 99"));
    for cut in [0, 10, bytes.len() / 2, bytes.len() - 1] {
        assert!(SessionMemory::from_bytes(&bytes[..cut], &model, &layout).is_err());
    }
    assert_eq!(
        SessionMemory::from_bytes(b"not a memory at all, just some text", &model, &layout)
            .unwrap_err(),
        SessionFormatError::NotAMemory
    );
}

/// Issue 4: a conversation at absolute position 1,000,000 gives the same logits as the same window
/// at position 514. Sinks, STM and archive on (the signal off: it would hold a different amount
/// of history); the filler repeats every 32 tokens and arrives in chunks of 256, so from the second
/// chunk on every tier holds the same tokens, computed from the same context (the first chunk's
/// keys differ: they saw no past), and only the absolute count differs. RoPE angles come from
/// window-relative positions (§9.3), so the logits are bit-identical.
#[test]
fn the_same_window_gives_the_same_logits_at_token_one_million() {
    let model = tiny_with_context(Precision::F32, 256 + 128);
    let config = MemoryConfig {
        sinks: 2,
        stm_len: 32,
        block_len: 16,
        top_k_blocks: 1,
        archive_budget: 32,
        ltm: None,
        ltm_chunk_len: 16,
        ..MemoryConfig::default()
    };
    let layout = MemoryLayout::new(config, 256 + 128, Device::Cpu).unwrap();
    let period = tokens(32, 4);
    let chunk: Vec<u32> = period.iter().cycle().take(256).copied().collect();
    let window = tokens(40, 5);
    let run = |chunks: usize| {
        let mut memory = SessionMemory::new(&model, &layout);
        let _ = prefill(&model, memory.caches(), &[3, 4], 2).unwrap();
        for _ in 0..chunks {
            let _ = prefill(&model, memory.caches(), &chunk, 256).unwrap();
        }
        let seen = memory.tokens_seen();
        let logits = model
            .forward(
                &Tensor::from_slice(&window.iter().map(|&t| i64::from(t)).collect::<Vec<_>>())
                    .unsqueeze(0),
                memory.caches(),
                crate::model::LogitsAt::All,
            )
            .unwrap();
        (logits, seen)
    };
    let (near, near_seen) = run(2);
    let (far, far_seen) = run(3_907);
    assert_eq!((near_seen, far_seen), (514, 1_000_194));
    assert!(near.equal(&far), "differs by {}", (near - far).abs().max());
}

/// A fork shares its parent's buffers until either writes: beside a long exact archive it adds
/// under 5% of the parent's bytes (the signal's small state is copied, everything else shared).
/// Then each goes its own way, whichever writes first, exactly as two independent copies of the
/// memory would: bit-identical logits and bytes; with the signal in use and with a long archive.
#[test]
fn a_fork_shares_the_past_until_either_writes_then_each_continues_exactly() {
    let model = tiny(Precision::F32);
    let long_archive = MemoryConfig {
        archive_budget: 1 << 20,
        ..layout().config().clone()
    };
    let long_archive = MemoryLayout::new(long_archive, 128, Device::Cpu).unwrap();
    for (layout, n) in [(layout(), 100), (long_archive, 2000)] {
        let mut parent = filled(&model, &layout, n);
        let alone = parent.resident_bytes();
        let mut child = parent.fork();
        let together: usize = parent
            .resident_buffers()
            .into_iter()
            .chain(child.resident_buffers())
            .collect::<std::collections::HashMap<_, _>>()
            .values()
            .sum();
        assert!(together >= alone);
        if n == 2000 {
            assert!(
                together - alone < alone / 20,
                "a fork of {alone} bytes added {}",
                together - alone
            );
        }
        let copy = || SessionMemory::from_bytes(&parent.to_bytes(), &model, &layout).unwrap();
        let (mut as_child, mut as_parent) = (copy(), copy());
        let (child_tokens, parent_tokens) = (tokens(20, 5), tokens(20, 6));
        let child_logits = prefill(&model, child.caches(), &child_tokens, 3).unwrap();
        let parent_logits = prefill(&model, parent.caches(), &parent_tokens, 3).unwrap();
        let expected = prefill(&model, as_child.caches(), &child_tokens, 3).unwrap();
        assert!(child_logits.equal(&expected), "the fork, n = {n}");
        let expected = prefill(&model, as_parent.caches(), &parent_tokens, 3).unwrap();
        assert!(parent_logits.equal(&expected), "the parent, n = {n}");
        assert_eq!(child.to_bytes(), as_child.to_bytes());
        assert_eq!(parent.to_bytes(), as_parent.to_bytes());
    }
}

/// [`layout`] with sticky retention (issue 19) and an archive of 32 tokens: blocks of 4, chunks of
/// 8 leaving for the signal, so the newest 6 blocks are protected and the 2–4 before them judged.
fn sticky_layout() -> MemoryLayout {
    let config = MemoryConfig {
        archive_retention: Retention::Sticky,
        // 16 blocks, 4 of them judged: enough for one block to stand out of their mean.
        archive_budget: 64,
        ..layout().config().clone()
    };
    MemoryLayout::new(config, 128, Device::Cpu).unwrap()
}

/// Sticky retention over a session: after every forward pass the archive is within its budget,
/// every layer holds the same blocks, and blocks leave out of order once reads differ (the random
/// model reads its blocks alike, within the margin that counts as text read as text; block 3 is
/// used on top of that); the stickiness round-trips exactly through the bytes, the store's parts
/// and a fork, and each copy then continues exactly as the original.
#[test]
fn a_sticky_archive_lets_blocks_go_out_of_order_and_round_trips_exactly() {
    let (model, layout) = (tiny(Precision::F32), sticky_layout());
    let mut memory = SessionMemory::new(&model, &layout);
    let mut out_of_order = false;
    for part in tokens(300, 2).chunks(7) {
        memory.layers.iter_mut().for_each(|l| l.use_block(3, 100.0));
        let _ = prefill(&model, memory.caches(), part, 3).unwrap();
        let held = memory.archive_blocks();
        assert!(held.len() * 4 <= 64, "{held:?} is over the budget");
        for layer in memory.caches().iter() {
            assert_eq!(HeldBlocks::of_numbers(layer.archive_numbers()), held);
        }
        out_of_order |= held.runs().len() > 1;
    }
    assert!(out_of_order, "blocks never left out of order");
    let stickiness = memory.take_reading().stickiness;
    assert_eq!(stickiness.len() as u64, memory.archive_blocks().len());
    assert!(stickiness.iter().any(|&s| s > 0.0), "{stickiness:?}");

    let bytes = memory.to_bytes();
    let parts = MemoryParts::split(&bytes).unwrap();
    let blocks: Vec<&[u8]> = parts.blocks.iter().map(Vec::as_slice).collect();
    let mut from_parts = SessionMemory::from_parts(&parts.core, &blocks, &model, &layout).unwrap();
    let mut from_bytes = SessionMemory::from_bytes(&bytes, &model, &layout).unwrap();
    let mut fork = memory.fork();
    assert_eq!(from_bytes.to_bytes(), bytes);
    assert_eq!(fork.to_bytes(), bytes);
    let more = tokens(30, 3);
    let expected = prefill(&model, memory.caches(), &more, 3).unwrap();
    for copy in [&mut from_parts, &mut from_bytes, &mut fork] {
        assert!(prefill(&model, copy.caches(), &more, 3)
            .unwrap()
            .equal(&expected));
        assert_eq!(copy.to_bytes(), memory.to_bytes());
    }
}

/// A memory saved in format 1 (before sticky retention: one run of blocks named by the first and
/// the count, no stickiness in the layers' cores) loads, and is the same memory.
#[test]
fn a_memory_saved_in_format_1_loads() {
    let (model, layout) = (tiny(Precision::F32), layout());
    let memory = filled(&model, &layout, 100);
    let held = memory.archive_blocks();
    assert_eq!(held.runs().len(), 1);
    let mut header = Writer::new();
    header.u64(u64::from_le_bytes(*MAGIC));
    header.u32(1);
    header.str(&memory.fingerprint);
    header.str(&layout_text(&layout));
    header.u32(memory.layers.len() as u32);
    header.u64(held.iter().next().unwrap());
    header.u64(held.len());
    let mut core = header.into_bytes();
    for layer in &memory.layers {
        let mut w = Writer::new();
        layer.write_core(&mut w);
        let mut bytes = w.into_bytes();
        // Format 2 ends each layer's core with its stickiness, here absent: one `false`.
        assert_eq!(bytes.pop(), Some(0));
        core.extend(bytes);
    }
    let blocks: Vec<Vec<u8>> = held
        .iter()
        .map(|n| memory.block_bytes(n).unwrap())
        .collect();
    let old = parts::join(&core, blocks.iter().map(Vec::as_slice));
    let loaded = SessionMemory::from_bytes(&old, &model, &layout).unwrap();
    assert_eq!(loaded.to_bytes(), memory.to_bytes());
}
