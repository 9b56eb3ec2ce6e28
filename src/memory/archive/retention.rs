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
//!
//! Two kinds of reading are not a *use* and keep nothing (measured on plain text, where nothing is
//! used again, 32k tokens, 8,192-token budget: perplexity against `fifo` +1.8% at 12k–16k and +2.9%
//! at 28k–32k without them, +0.2% and +0.7% with them, docs/RETENTION.md):
//! * the conversation's first [`SINK_LIKE_BLOCKS`] blocks draw mass from every query, as the sinks
//!   do (the block after the sinks gathered 2.7× the mass of a fact used three times); kept for
//!   good they took top-k places and mass from the recent text;
//! * a block read no more than [`STICKY_MARGIN`] times the mean of the judged blocks was read as
//!   text is: ranking such blocks by their mass kept whatever the queries happened to favour, at
//!   the price of recent text, so among them retention stays first in, first out.

/// Blocks joining the archive over which a stickiness halves: 1,024 blocks, 65,536 tokens. What
/// a conversation used keeps its advantage over text nobody read for several times the default
/// 8,192-token judged part of a bounded archive, and mass from long ago still fades: a block read
/// heavily 200k tokens back weighs 1/8 of the same reads now.
pub const STICKY_HALF_LIFE: f64 = 1024.0;

/// The conversation's first blocks, whose keys the model reads as extra attention sinks: their
/// mass adds no stickiness (the module's note).
pub const SINK_LIKE_BLOCKS: u64 = 2;

/// How many times the mean stickiness of the judged blocks a block must have to be kept for it;
/// the rest count as unread (the module's note).
pub const STICKY_MARGIN: f32 = 3.0;

/// The newest blocks of an archive of `budget_blocks` that are not judged yet: three quarters of
/// them. A block has then been readable by the next three quarters of an archive of text before
/// its stickiness is compared with blocks that had longer; the oldest quarter of the archive is
/// what stickiness keeps. How much is judged mattered little to perplexity (before the rules of
/// the module's note: half +2.3% / +2.8%, a quarter +1.8% / +2.9%, an eighth +1.8% / +2.5%
/// against `fifo`, docs/EVALUATION.md); what is kept mattered.
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

    /// Adds each `(block, mass)`'s mass to held block `block` (the choices of every batch row, KV
    /// head and segment, with the mass each received; a memory's rows move in step and hold the
    /// same blocks, so their reads add up).
    pub fn add(&mut self, reads: impl IntoIterator<Item = (i64, f32)>) {
        for (block, mass) in reads {
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
/// equally sticky blocks the older, where a stickiness within [`STICKY_MARGIN`] times the judged
/// blocks' mean counts as none. Fewer when fewer are judged.
pub fn least_sticky(stickiness: &[f32], count: usize, protected: usize) -> Vec<usize> {
    let judged = stickiness.len().saturating_sub(protected);
    let judged_part = &stickiness[..judged];
    let mean = judged_part.iter().sum::<f32>() / judged.max(1) as f32;
    // What each judged block is kept for: its stickiness above the margin, else none.
    let worth: Vec<f32> = judged_part
        .iter()
        .map(|&s| if s > STICKY_MARGIN * mean { s } else { 0.0 })
        .collect();
    let mut order: Vec<usize> = (0..judged).collect();
    // Stable: equal worth keeps the older block first.
    order.sort_by(|&a, &b| worth[a].total_cmp(&worth[b]));
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
        // Block 3's 0.5 is within three times the judged blocks' mean (9.5 / 5): read as text
        // is, it counts as unread. Unread blocks go before read ones, the oldest first: 0, 2, 3.
        assert_eq!(least_sticky(&stickiness, 3, 3), vec![0, 2, 3]);
        assert_eq!(least_sticky(&stickiness, 4, 3), vec![0, 2, 3, 4]);
        // Block 1, at 9 > 3 × 1.9, is the last of the judged blocks to go.
        assert_eq!(least_sticky(&stickiness, 5, 3), vec![0, 1, 2, 3, 4]);
        // Read a little more than the others, within the margin, is first in, first out.
        assert_eq!(least_sticky(&[2.0, 1.0, 1.5, 1.0], 2, 1), vec![0, 1]);
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
        s.add([(1, 1.0), (0, 2.0), (1, 3.0)]);
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
