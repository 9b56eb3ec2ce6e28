//! The hot cache: live memories of recently used sessions, so a turn need not rebuild its memory
//! from bytes. Each session has one slot whose lock is held for a whole turn, which is how a
//! second concurrent turn is refused (409). The memories kept between turns share one byte budget
//! (`--memory-pool-bytes`): keeping a turn's memory lets the least recently used idle ones leave
//! RAM until the rest fit. Idle slots also leave after a TTL. The database still holds
//! everything, and the next turn rebuilds a memory that left from it.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use dashmap::DashMap;
use tokio::sync::{Mutex, OwnedMutexGuard};

use crate::memory::TierStats;
use crate::session::SessionMemory;

/// A session's memory as of a committed version, with the RAM it holds.
#[derive(Debug)]
pub struct LiveMemory {
    pub version: i64,
    pub memory: SessionMemory,
    /// The memory's RAM buffers by address, with their bytes ([`SessionMemory::resident_buffers`]:
    /// a fork shares addresses with its parent, counted once), and its tiers' tokens, measured
    /// once when it was kept.
    buffers: Buffers,
    tiers: TierStats,
}

/// RAM buffers by address, with their bytes.
type Buffers = Vec<(usize, usize)>;

impl LiveMemory {
    pub fn new(version: i64, memory: SessionMemory) -> Self {
        Self {
            version,
            buffers: memory.resident_buffers(),
            tiers: memory.stats().tiers,
            memory,
        }
    }

    /// Bytes of RAM its buffers hold, shared ones included.
    fn bytes(&self) -> usize {
        self.buffers.iter().map(|(_, bytes)| bytes).sum()
    }
}

/// The bytes of a set of memories, a buffer shared by several counted once: how many of them
/// hold each buffer.
#[derive(Debug, Default)]
struct Holders {
    held: HashMap<usize, (usize, usize)>, // address → (bytes, memories holding it)
    bytes: usize,
}

impl Holders {
    fn add(&mut self, live: &LiveMemory) {
        for &(address, bytes) in &live.buffers {
            let entry = self.held.entry(address).or_insert((bytes, 0));
            if entry.1 == 0 {
                self.bytes += bytes;
            }
            entry.1 += 1;
        }
    }

    /// Forgets one memory added before, its buffers no other memory holds leaving the count.
    fn remove(&mut self, buffers: &[(usize, usize)]) {
        for (address, _) in buffers {
            if let Some(entry) = self.held.get_mut(address) {
                entry.1 -= 1;
                if entry.1 == 0 {
                    self.bytes -= entry.0;
                }
            }
        }
    }
}

/// What the memories kept between turns hold: the pool's gauges.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PoolUsage {
    /// Bytes of RAM held, and the budget they are kept within.
    pub bytes: usize,
    pub budget: usize,
    /// Sessions whose memory is kept.
    pub sessions: usize,
    /// Tokens per tier, summed over the kept sessions (every layer holds the same).
    pub sink_tokens: u64,
    pub stm_tokens: u64,
    pub archive_tokens: u64,
}

/// One session's slot.
#[derive(Debug)]
pub struct Slot {
    pub live: Option<LiveMemory>,
    pub last_used: Instant,
}

/// Exclusive use of one session's slot for a turn.
pub type SlotGuard = OwnedMutexGuard<Slot>;

/// Hot sessions by id, their kept memories within a byte budget.
#[derive(Debug)]
pub struct HotSessions {
    slots: DashMap<String, Arc<Mutex<Slot>>>,
    budget: usize,
}

impl Default for HotSessions {
    /// No budget: memories leave RAM only when idle past the TTL.
    fn default() -> Self {
        Self::with_budget(usize::MAX)
    }
}

impl HotSessions {
    /// An empty cache whose kept memories hold at most `budget` bytes of RAM together.
    pub fn with_budget(budget: usize) -> Self {
        Self {
            slots: DashMap::new(),
            budget,
        }
    }

    /// Keeps a turn's memory in its slot, then lets the least recently used idle memories leave
    /// RAM until every kept memory fits the budget; a memory larger than the whole budget is not
    /// kept at all. Slots in use by other turns hold no memory and are left alone. Returns how
    /// many memories left RAM.
    pub fn keep(&self, slot: &mut SlotGuard, live: LiveMemory) -> usize {
        slot.last_used = Instant::now();
        if live.bytes() > self.budget {
            slot.live = None;
            return 1;
        }
        let mut holders = Holders::default();
        holders.add(&live);
        slot.live = Some(live);
        // The slot being kept is locked by its turn, so it is not among the idle ones.
        let mut idle: Vec<(Instant, String, Buffers)> = self
            .slots
            .iter()
            .filter_map(|entry| {
                let slot = entry.value().try_lock().ok()?;
                let live = slot.live.as_ref()?;
                holders.add(live);
                Some((slot.last_used, entry.key().clone(), live.buffers.clone()))
            })
            .collect();
        idle.sort_unstable_by_key(|(last_used, _, _)| *last_used);
        let mut evicted = 0;
        for (_, id, buffers) in idle {
            if holders.bytes <= self.budget {
                break;
            }
            let left = self
                .slots
                .remove_if(&id, |_, slot| slot.try_lock().is_ok())
                .is_some();
            if left {
                holders.remove(&buffers);
                evicted += 1;
            }
        }
        evicted
    }

    /// The memories kept between turns: bytes, budget, sessions and tokens per tier.
    pub fn pool(&self) -> PoolUsage {
        let mut usage = PoolUsage {
            budget: self.budget,
            ..PoolUsage::default()
        };
        let mut holders = Holders::default();
        for entry in &self.slots {
            let Ok(slot) = entry.value().try_lock() else {
                continue;
            };
            if let Some(live) = &slot.live {
                holders.add(live);
                usage.sessions += 1;
                usage.sink_tokens += live.tiers.sink_tokens as u64;
                usage.stm_tokens += live.tiers.stm_tokens as u64;
                usage.archive_tokens += live.tiers.archive_tokens as u64;
            }
        }
        usage.bytes = holders.bytes;
        usage
    }

    /// Locks `id`'s slot for a turn, or None when a turn already holds it.
    pub fn try_claim(&self, id: &str) -> Option<SlotGuard> {
        let slot = self
            .slots
            .entry(id.to_string())
            .or_insert_with(|| {
                Arc::new(Mutex::new(Slot {
                    live: None,
                    last_used: Instant::now(),
                }))
            })
            .clone();
        let mut guard = slot.try_lock_owned().ok()?;
        guard.last_used = Instant::now();
        Some(guard)
    }

    /// Locks `id`'s slot when there is one and no turn holds it (a fork reading the kept memory).
    pub fn try_claim_existing(&self, id: &str) -> Option<SlotGuard> {
        let slot = self.slots.get(id)?.clone();
        slot.try_lock_owned().ok()
    }

    /// Forgets `id` (deleted, or its memory is no longer trusted).
    pub fn forget(&self, id: &str) {
        self.slots.remove(id);
    }

    /// Sessions whose memory is in RAM.
    pub fn live(&self) -> usize {
        self.slots
            .iter()
            .filter(|slot| slot.try_lock().map_or(true, |s| s.live.is_some()))
            .count()
    }

    /// Drops the memories of sessions idle for longer than `ttl` (a slot in use is never idle).
    /// Returns how many left RAM.
    pub fn evict_idle(&self, ttl: Duration) -> usize {
        let before = self.slots.len();
        self.slots.retain(|_, slot| match slot.try_lock() {
            Ok(slot) => slot.last_used.elapsed() < ttl,
            Err(_) => true,
        });
        before - self.slots.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::generate::prefill;
    use crate::memory::{MemoryConfig, MemoryLayout};
    use crate::model::llama::tests::tiny;
    use crate::model::Precision;

    /// A memory of the tiny model that has taken in `tokens` tokens.
    fn memory(tokens: u32) -> SessionMemory {
        let model = tiny(Precision::F32);
        let config = MemoryConfig {
            sinks: 2,
            stm_len: 16,
            block_len: 4,
            top_k_blocks: 2,
            ..MemoryConfig::default()
        };
        let layout = MemoryLayout::new(config, 128, tch::Device::Cpu).unwrap();
        let mut memory = SessionMemory::new(&model, &layout);
        let prompt: Vec<u32> = (1..=tokens).collect();
        let _ = prefill(&model, memory.caches(), &prompt, 3).unwrap();
        memory
    }

    #[tokio::test]
    async fn keeping_a_memory_lets_the_least_recently_used_idle_ones_leave() {
        let one = LiveMemory::new(0, memory(40));
        let each = one.bytes();
        assert!(each > 0 && one.tiers.stm_tokens > 0);
        let hot = HotSessions::with_budget(3 * each + each / 2);
        for id in ["a", "b", "c"] {
            let mut slot = hot.try_claim(id).unwrap();
            assert_eq!(hot.keep(&mut slot, LiveMemory::new(1, memory(40))), 0);
        }
        // Used again, "a" becomes more recent than "b".
        std::thread::sleep(Duration::from_millis(2));
        drop(hot.try_claim("a").unwrap());
        std::thread::sleep(Duration::from_millis(2));
        let in_use = hot.try_claim("c").unwrap();
        let usage = hot.pool();
        assert_eq!((usage.sessions, usage.bytes), (2, 2 * each), "c is in use");
        assert_eq!(usage.stm_tokens, 2 * one.tiers.stm_tokens as u64);
        assert_eq!(usage.archive_tokens, 2 * one.tiers.archive_tokens as u64);
        drop(in_use);
        let mut d = hot.try_claim("d").unwrap();
        assert_eq!(hot.keep(&mut d, LiveMemory::new(1, memory(40))), 1);
        drop(d);
        let kept: Vec<bool> = ["a", "b", "c", "d"]
            .iter()
            .map(|id| hot.try_claim(id).unwrap().live.is_some())
            .collect();
        assert_eq!(
            kept,
            [true, false, true, true],
            "b was the least recently used"
        );

        let small = HotSessions::with_budget(each / 2);
        let mut slot = small.try_claim("big").unwrap();
        assert_eq!(small.keep(&mut slot, LiveMemory::new(1, memory(40))), 1);
        assert!(
            slot.live.is_none(),
            "a memory over the whole budget is not kept"
        );
    }

    #[test]
    fn one_turn_at_a_time_and_only_idle_slots_leave() {
        let hot = HotSessions::default();
        let first = hot.try_claim("a").expect("a free slot");
        assert!(hot.try_claim("a").is_none(), "a second turn is refused");
        assert!(
            hot.try_claim("b").is_some(),
            "other sessions are independent"
        );
        assert_eq!(hot.evict_idle(Duration::ZERO), 1, "b is idle, a is in use");
        drop(first);
        assert!(hot.try_claim("a").is_some(), "free again after the turn");
        assert_eq!(
            hot.evict_idle(Duration::from_secs(3600)),
            0,
            "a was just used"
        );
        assert_eq!(hot.evict_idle(Duration::ZERO), 1);
        hot.try_claim("c").unwrap();
        hot.forget("c");
        assert_eq!(hot.evict_idle(Duration::ZERO), 0);
    }
}
