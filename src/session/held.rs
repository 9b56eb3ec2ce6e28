//! The session-wide numbers of the archive blocks a memory holds, as runs of consecutive numbers:
//! one run when the oldest blocks leave first (`fifo`), several once sticky retention lets blocks
//! go out of order. A core names them; a store keeps exactly those block rows.

use std::ops::Range;

use serde::{Deserialize, Serialize};

/// Held block numbers, ascending, as non-empty runs `[start, count]` that do not touch.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct HeldBlocks {
    runs: Vec<[u64; 2]>,
}

impl HeldBlocks {
    /// `numbers`, ascending and distinct, as runs.
    pub fn of_numbers(numbers: &[u64]) -> Self {
        let mut runs: Vec<[u64; 2]> = Vec::new();
        for &n in numbers {
            match runs.last_mut() {
                Some([start, count]) if *start + *count == n => *count += 1,
                _ => runs.push([n, 1]),
            }
        }
        Self { runs }
    }

    /// One run (a memory saved before blocks could leave out of order).
    pub fn of_range(range: Range<u64>) -> Self {
        let runs = if range.is_empty() {
            vec![]
        } else {
            vec![[range.start, range.end - range.start]]
        };
        Self { runs }
    }

    /// Runs as stored; `None` unless each is non-empty, ascending and apart from the one before.
    pub fn of_runs(runs: Vec<[u64; 2]>) -> Option<Self> {
        let mut end = None;
        for &[start, count] in &runs {
            let next = start.checked_add(count)?;
            if count == 0 || end.is_some_and(|end| start <= end) {
                return None;
            }
            end = Some(next);
        }
        Some(Self { runs })
    }

    pub fn runs(&self) -> &[[u64; 2]] {
        &self.runs
    }

    /// Blocks held.
    pub fn len(&self) -> u64 {
        self.runs.iter().map(|[_, count]| count).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.runs.is_empty()
    }

    /// Every held number, ascending.
    pub fn iter(&self) -> impl Iterator<Item = u64> + '_ {
        self.runs
            .iter()
            .flat_map(|&[start, count]| start..start + count)
    }

    /// The position of block `number` among the held ones (0 the oldest), if held.
    pub fn position(&self, number: u64) -> Option<u64> {
        let mut before = 0;
        for &[start, count] in &self.runs {
            if (start..start + count).contains(&number) {
                return Some(before + number - start);
            }
            before += count;
        }
        None
    }

    pub fn contains(&self, number: u64) -> bool {
        self.position(number).is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_become_runs_and_come_back() {
        let numbers = [3, 4, 5, 9, 11, 12];
        let held = HeldBlocks::of_numbers(&numbers);
        assert_eq!(held.runs(), [[3, 3], [9, 1], [11, 2]]);
        assert_eq!(held.iter().collect::<Vec<_>>(), numbers);
        assert_eq!(
            (held.len(), held.position(11), held.position(6)),
            (6, Some(4), None)
        );
        assert_eq!(
            HeldBlocks::of_range(3..6),
            HeldBlocks::of_numbers(&[3, 4, 5])
        );
        assert_eq!(
            HeldBlocks::of_runs(vec![[3, 3], [9, 1]]),
            Some(HeldBlocks::of_numbers(&[3, 4, 5, 9]))
        );
        for bad in [
            vec![[3, 0]],
            vec![[3, 3], [6, 1]],
            vec![[5, 1], [2, 1]],
            vec![[u64::MAX, 2]],
        ] {
            assert_eq!(HeldBlocks::of_runs(bad.clone()), None, "{bad:?}");
        }
    }
}
