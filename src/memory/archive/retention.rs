//! Which archive blocks stay when the archive is over its budget with sticky retention
//! ([`crate::memory::Retention::Sticky`], issue 19): the archive-level analogue of the ∞-former's
//! sticky histogram (`infinity-former.md` §4). §4 puts more of the signal's resolution where the
//! queries put their attention mass; here the mass decides which exact blocks survive at all.
//!
//! A held block's **stickiness** is the softmax mass its keys received while a query segment had it
//! selected, summed over KV heads, query heads and queries (a session sums it over its layers,
//! [`least_sticky`] takes that sum), fading by half per [`STICKY_HALF_LIFE`] blocks that join the
//! archive. Fading by the conversation's progress, not by wall time or turns, makes the order of
//! blocks a function of the tokens alone: the same conversation keeps the same blocks whether it
//! came in one request or a hundred, on any replica.

/// Blocks joining the archive over which a stickiness halves: 1,024 blocks, 65,536 tokens. What
/// a conversation used keeps its advantage over text nobody read for several times the default
/// 8,192-token judged part of a bounded archive, and mass from long ago still fades: a block read
/// heavily 200k tokens back weighs 1/8 of the same reads now.
pub const STICKY_HALF_LIFE: f64 = 1024.0;

/// The newest blocks of an archive of `budget_blocks` that are not judged yet: three quarters of
/// them. A block has then been readable by the next three quarters of an archive of text before
/// its stickiness is compared with blocks that had longer; the oldest quarter of the archive is
/// what stickiness keeps. Measured (docs/RETENTION.md): judging half of an 8,192-token archive
/// cost 2.3% (12k–16k) and 2.8% (28k–32k) of perplexity against `fifo`, since the recent text
/// it let go serves the next tokens more than the old text it kept.
pub fn protected_blocks(budget_blocks: usize) -> usize {
    budget_blocks * 3 / 4
}

/// Each held block's stickiness, oldest block first.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Stickiness {
    per_block: Vec<f32>,
}

impl Stickiness {
    /// Stickiness as stored, oldest block first.
    pub fn from_values(per_block: Vec<f32>) -> Self {
        Self { per_block }
    }

    pub fn values(&self) -> &[f32] {
        &self.per_block
    }

    /// A block joined the archive: every held block fades by one step, and the new one starts
    /// unread.
    pub fn pushed(&mut self) {
        let fade = (-std::f64::consts::LN_2 / STICKY_HALF_LIFE).exp() as f32;
        self.per_block.iter_mut().for_each(|s| *s *= fade);
        self.per_block.push(0.0);
    }

    /// Adds the mass `masses[i]` to held block `chosen[i]` (the choices of every batch row, KV
    /// head and segment, with the mass each received; a memory's rows move in step and hold the
    /// same blocks, so their reads add up).
    pub fn add(&mut self, chosen: &[i64], masses: &[f32]) {
        for (&block, &mass) in chosen.iter().zip(masses) {
            if let Some(s) = self.per_block.get_mut(block as usize) {
                *s += mass;
            }
        }
    }

    /// Held blocks `indices` (ascending) left the archive.
    pub fn remove(&mut self, indices: &[usize]) {
        let mut leaving = indices.iter().peekable();
        let mut index = 0;
        self.per_block.retain(|_| {
            let leaves = leaving.next_if_eq(&&index).is_some();
            index += 1;
            !leaves
        });
    }
}

/// The `count` held blocks to let go of, as indices ascending, given each block's `stickiness`
/// (oldest first) and the newest `protected` blocks that are not judged: the least sticky, and of
/// equally sticky blocks the older. Fewer when fewer are judged.
pub fn least_sticky(stickiness: &[f32], count: usize, protected: usize) -> Vec<usize> {
    let judged = stickiness.len().saturating_sub(protected);
    let mut order: Vec<usize> = (0..judged).collect();
    // Stable: equal stickiness keeps the older block first.
    order.sort_by(|&a, &b| stickiness[a].total_cmp(&stickiness[b]));
    order.truncate(count);
    order.sort_unstable();
    order
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A hand-made archive of eight blocks: which leave first, and why.
    #[test]
    fn the_least_read_judged_blocks_leave_first_and_the_newest_wait() {
        // Block 1 was read most, 3 a little, 0, 2 and 4 never; 5–7 are new (protected), and
        // block 6 already drew heavy reads.
        let stickiness = [0.0, 9.0, 0.0, 0.5, 0.0, 0.0, 7.0, 0.0];
        // Unread blocks go before read ones, the oldest first among equals: 0, 2, 4.
        assert_eq!(least_sticky(&stickiness, 3, 3), vec![0, 2, 4]);
        // Then the least read of the rest: block 3 before block 1.
        assert_eq!(least_sticky(&stickiness, 4, 3), vec![0, 2, 3, 4]);
        // The protected blocks are never chosen, however little they were read: only five are
        // judged.
        assert_eq!(least_sticky(&stickiness, 8, 3), vec![0, 1, 2, 3, 4]);
        // With nothing read, retention is first in, first out.
        assert_eq!(least_sticky(&[0.0; 6], 2, 2), vec![0, 1]);
    }

    #[test]
    fn stickiness_fades_by_half_per_half_life_and_follows_the_blocks() {
        let mut s = Stickiness::default();
        s.pushed();
        s.pushed();
        s.add(&[1, 0, 1], &[1.0, 2.0, 3.0]);
        assert_eq!(s.values(), [2.0, 4.0]);
        for _ in 0..STICKY_HALF_LIFE as usize {
            s.pushed();
        }
        assert!((s.values()[0] - 1.0).abs() < 1e-4, "{:?}", &s.values()[..2]);
        assert!((s.values()[1] - 2.0).abs() < 1e-4);
        s.remove(&[0, 2]);
        assert_eq!(s.values().len(), STICKY_HALF_LIFE as usize);
        assert!((s.values()[0] - 2.0).abs() < 1e-4);
    }
}
