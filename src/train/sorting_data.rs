//! The synthetic sorting task of the ∞-former paper (`infinity-former.md` §5.1).
//!
//! A sequence of `length` symbols from a 20-symbol alphabet, drawn from a distribution that drifts
//! linearly from p_init to p_final, then the separator, then the 20 symbols ordered by descending
//! count (ties by first occurrence, as Python's `Counter.most_common`; absent symbols last, in
//! ascending order). The model is trained as a next-token LM over that line, scored only on the
//! 20 target positions.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// Number of symbols of the alphabet (0..19).
pub const NUM_SYMBOLS: usize = 20;
/// The separator between the sequence and its sorted symbols.
pub const SEPARATOR: i64 = 20;
/// The padding token (part of the vocabulary as in the paper; never generated here).
pub const PADDING: i64 = 21;
/// Vocabulary size of the model: 20 symbols, separator, padding.
pub const VOCAB_SIZE: usize = 22;

/// The RNG stream that training batches are drawn from; evaluation uses [`EVAL_STREAM`], so a
/// held-out sequence is never a training sequence for the same seed.
pub const TRAIN_STREAM: u64 = 0;
/// The RNG stream of held-out evaluation sequences.
pub const EVAL_STREAM: u64 = 1 << 40;

/// One generated example: the whole line `sequence ++ [SEPARATOR] ++ target`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SortingExample {
    /// `length + 1 + 20` tokens.
    pub tokens: Vec<i64>,
    /// Number of sequence symbols before the separator.
    pub length: usize,
}

impl SortingExample {
    /// The 20 sorted symbols after the separator.
    pub fn target(&self) -> &[i64] {
        &self.tokens[self.length + 1..]
    }
}

/// A distribution over the 20 symbols: integer weights uniform in 1..=9, normalised (§5.1).
fn random_distribution(rng: &mut ChaCha8Rng) -> [f64; NUM_SYMBOLS] {
    let mut weights = [0.0; NUM_SYMBOLS];
    for w in weights.iter_mut() {
        *w = rng.gen_range(1..=9) as f64;
    }
    let total: f64 = weights.iter().sum();
    weights.map(|w| w / total)
}

/// Draws one symbol from the mixture (1 − r)·p_init + r·p_final by inverse CDF.
fn draw_symbol(
    rng: &mut ChaCha8Rng,
    init: &[f64; NUM_SYMBOLS],
    last: &[f64; NUM_SYMBOLS],
    r: f64,
) -> i64 {
    let u: f64 = rng.gen();
    let mut cumulative = 0.0;
    for symbol in 0..NUM_SYMBOLS {
        cumulative += (1.0 - r) * init[symbol] + r * last[symbol];
        if u < cumulative {
            return symbol as i64;
        }
    }
    // Rounding can leave the total a hair under 1; the last symbol takes that sliver.
    (NUM_SYMBOLS - 1) as i64
}

/// The 20 symbols by descending count; ties by first occurrence; absent symbols last, ascending.
pub fn sorted_by_count(sequence: &[i64]) -> Vec<i64> {
    let mut count = [0usize; NUM_SYMBOLS];
    let mut first = [usize::MAX; NUM_SYMBOLS];
    for (index, &symbol) in sequence.iter().enumerate() {
        let s = symbol as usize;
        count[s] += 1;
        first[s] = first[s].min(index);
    }
    let mut present: Vec<usize> = (0..NUM_SYMBOLS).filter(|&s| count[s] > 0).collect();
    present.sort_by_key(|&s| (std::cmp::Reverse(count[s]), first[s]));
    let absent = (0..NUM_SYMBOLS).filter(|&s| count[s] == 0);
    present
        .into_iter()
        .chain(absent)
        .map(|s| s as i64)
        .collect()
}

/// Generates one example of `length` symbols (§5.1: token j drawn with r = (j + 1)/length).
pub fn generate_example(rng: &mut ChaCha8Rng, length: usize) -> SortingExample {
    let init = random_distribution(rng);
    let last = random_distribution(rng);
    let mut tokens: Vec<i64> = (0..length)
        .map(|j| draw_symbol(rng, &init, &last, (j + 1) as f64 / length as f64))
        .collect();
    let target = sorted_by_count(&tokens);
    tokens.push(SEPARATOR);
    tokens.extend(target);
    SortingExample { tokens, length }
}

/// The RNG for batch `index` of `stream` under `seed`: batches are independent of each other,
/// so a resumed run draws exactly the batches an uninterrupted one would have drawn.
pub fn batch_rng(seed: u64, stream: u64, index: u64) -> ChaCha8Rng {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    rng.set_stream(stream + index);
    rng
}

/// A batch of `batch` examples of one length, flattened row-major: `[batch, length + 21]`.
pub fn generate_batch(rng: &mut ChaCha8Rng, batch: usize, length: usize) -> Vec<i64> {
    (0..batch)
        .flat_map(|_| generate_example(rng, length).tokens)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    /// An independent ordering: repeatedly pick the most frequent remaining symbol, scanning the
    /// sequence from its start so the earliest-seen symbol wins a tie; then the absent ones.
    fn reference_order(sequence: &[i64]) -> Vec<i64> {
        let mut counts: BTreeMap<i64, usize> = BTreeMap::new();
        for &s in sequence {
            *counts.entry(s).or_default() += 1;
        }
        let mut order = Vec::new();
        while !counts.is_empty() {
            let best = counts.values().copied().max().unwrap();
            let pick = *sequence
                .iter()
                .find(|s| counts.get(s) == Some(&best))
                .unwrap();
            counts.remove(&pick);
            order.push(pick);
        }
        order.extend((0..NUM_SYMBOLS as i64).filter(|s| !sequence.contains(s)));
        order
    }

    #[test]
    fn targets_match_an_independent_count_at_several_lengths() {
        let mut rng = batch_rng(7, TRAIN_STREAM, 0);
        for length in [1, 5, 19, 64, 300, 2000] {
            for _ in 0..20 {
                let example = generate_example(&mut rng, length);
                assert_eq!(example.tokens.len(), length + 1 + NUM_SYMBOLS);
                assert_eq!(example.tokens[length], SEPARATOR);
                let sequence = &example.tokens[..length];
                assert!(sequence
                    .iter()
                    .all(|&s| (0..NUM_SYMBOLS as i64).contains(&s)));
                assert_eq!(
                    example.target(),
                    reference_order(sequence).as_slice(),
                    "length {length}"
                );
            }
        }
    }

    #[test]
    fn tie_rule_and_absent_symbols_follow_most_common() {
        // 3 and 1 tie at two, 3 seen first; 7 once; the rest absent, ascending.
        let order = sorted_by_count(&[3, 1, 3, 7, 1]);
        let mut expected = vec![3, 1, 7];
        expected.extend((0..20).filter(|s| ![1, 3, 7].contains(s)));
        assert_eq!(order, expected);
    }

    #[test]
    fn the_distribution_drifts_from_init_to_final() {
        // With one long sequence the first and last tenths are drawn mostly from different
        // distributions, so their histograms differ clearly (total variation > 0.1), while two
        // seeds give different sequences.
        let mut rng = batch_rng(3, TRAIN_STREAM, 0);
        let example = generate_example(&mut rng, 40_000);
        let histogram = |part: &[i64]| {
            let mut h = [0.0; NUM_SYMBOLS];
            for &s in part {
                h[s as usize] += 1.0 / part.len() as f64;
            }
            h
        };
        let head = histogram(&example.tokens[..4_000]);
        let tail = histogram(&example.tokens[36_000..40_000]);
        let tv: f64 = head
            .iter()
            .zip(&tail)
            .map(|(a, b)| (a - b).abs())
            .sum::<f64>()
            / 2.0;
        assert!(tv > 0.1, "total variation {tv}");
        let other = generate_example(&mut batch_rng(4, TRAIN_STREAM, 0), 40_000);
        assert_ne!(other.tokens, example.tokens);
    }

    #[test]
    fn batches_are_reproducible_and_streams_disjoint() {
        let a = generate_batch(&mut batch_rng(1, TRAIN_STREAM, 5), 2, 30);
        let b = generate_batch(&mut batch_rng(1, TRAIN_STREAM, 5), 2, 30);
        let c = generate_batch(&mut batch_rng(1, EVAL_STREAM, 5), 2, 30);
        assert_eq!(a, b);
        assert_ne!(a, c);
        assert_eq!(a.len(), 2 * 51);
    }
}
