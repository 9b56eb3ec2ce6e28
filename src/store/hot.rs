//! The hot cache: live memories of recently used sessions, so a turn need not rebuild its memory
//! from bytes. Each session has one slot whose lock is held for a whole turn, which is how a
//! second concurrent turn is refused (409). Idle slots leave RAM after a TTL; the database still
//! holds everything, and the next turn rebuilds the memory from it.

use std::sync::Arc;
use std::time::{Duration, Instant};

use dashmap::DashMap;
use tokio::sync::{Mutex, OwnedMutexGuard};

use crate::session::SessionMemory;

/// A session's memory as of a committed version.
#[derive(Debug)]
pub struct LiveMemory {
    pub version: i64,
    pub memory: SessionMemory,
}

/// One session's slot.
#[derive(Debug)]
pub struct Slot {
    pub live: Option<LiveMemory>,
    pub last_used: Instant,
}

/// Exclusive use of one session's slot for a turn.
pub type SlotGuard = OwnedMutexGuard<Slot>;

/// Hot sessions by id.
#[derive(Debug, Default)]
pub struct HotSessions {
    slots: DashMap<String, Arc<Mutex<Slot>>>,
}

impl HotSessions {
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
