//! One test per validation rule and per sampling rule; distributions are checked with a fixed
//! seed over 20,000 draws, within 0.015 of the exact probability (over 4 standard deviations:
//! σ ≤ √(0.25 / 20000) ≈ 0.0035).

use super::*;

const DRAWS: usize = 20_000;
const TOLERANCE: f64 = 0.015;
/// Probabilities 0.1, 0.2, 0.3, 0.4 as logits.
fn four() -> Vec<f32> {
    [0.1f32, 0.2, 0.3, 0.4].iter().map(|p| p.ln()).collect()
}

fn sampler(params: SamplingParams) -> Sampler {
    Sampler::new(params.validate().unwrap())
}

fn seeded(params: SamplingParams) -> Sampler {
    sampler(SamplingParams {
        seed: Some(7),
        ..params
    })
}

fn frequencies(sampler: &mut Sampler, logits: &[f32]) -> Vec<f64> {
    let mut counts = vec![0usize; logits.len()];
    for _ in 0..DRAWS {
        counts[sampler.sample_slice(&mut logits.to_vec(), &[]).unwrap() as usize] += 1;
    }
    counts.iter().map(|&c| c as f64 / DRAWS as f64).collect()
}

fn assert_distribution(observed: &[f64], expected: &[f64]) {
    for (i, (o, e)) in observed.iter().zip(expected).enumerate() {
        assert!(
            (o - e).abs() <= TOLERANCE,
            "token {i}: observed {o:.4}, expected {e:.4} (all: {observed:?})"
        );
    }
}

#[test]
fn each_parameter_is_checked_against_its_range() {
    let base = SamplingParams::default;
    let cases = [
        (
            SamplingParams {
                temperature: 2.5,
                ..base()
            },
            SamplingError::Temperature(2.5),
            "temperature must be between 0 and 2",
        ),
        (
            SamplingParams {
                temperature: -0.1,
                ..base()
            },
            SamplingError::Temperature(-0.1),
            "temperature",
        ),
        (
            SamplingParams {
                top_p: 0.0,
                ..base()
            },
            SamplingError::TopP(0.0),
            "top_p must be greater than 0 and at most 1",
        ),
        (
            SamplingParams {
                top_p: 1.5,
                ..base()
            },
            SamplingError::TopP(1.5),
            "top_p",
        ),
        (
            SamplingParams {
                min_p: 1.5,
                ..base()
            },
            SamplingError::MinP(1.5),
            "min_p must be between 0 and 1",
        ),
        (
            SamplingParams {
                repetition_penalty: 0.0,
                ..base()
            },
            SamplingError::RepetitionPenalty(0.0),
            "repetition_penalty must be greater than 0",
        ),
        (
            SamplingParams {
                frequency_penalty: 2.5,
                ..base()
            },
            SamplingError::FrequencyPenalty(2.5),
            "frequency_penalty must be between -2 and 2",
        ),
        (
            SamplingParams {
                presence_penalty: -3.0,
                ..base()
            },
            SamplingError::PresencePenalty(-3.0),
            "presence_penalty must be between -2 and 2",
        ),
    ];
    for (params, error, message) in cases {
        let got = params.validate().unwrap_err();
        assert!(got.to_string().contains(message), "{got}");
        assert_eq!(got, error);
    }
    assert!(matches!(
        SamplingParams {
            temperature: f64::NAN,
            ..base()
        }
        .validate(),
        Err(SamplingError::Temperature(_))
    ));
    let edges = SamplingParams {
        temperature: 2.0,
        top_p: 1.0,
        min_p: 1.0,
        frequency_penalty: -2.0,
        presence_penalty: 2.0,
        ..base()
    };
    assert!(
        edges.validate().is_ok(),
        "the ends of each range are allowed"
    );
}

#[test]
fn greedy_takes_the_first_largest_logit() {
    let mut greedy = sampler(SamplingParams::greedy());
    assert_eq!(
        greedy
            .sample_slice(&mut [0.5, 3.0, -1.0, 3.0], &[])
            .unwrap(),
        1
    );
    let logits = Tensor::from_slice(&[0.1f32, 0.2, 0.9, 0.3]).to_kind(Kind::BFloat16);
    assert_eq!(greedy.sample(&logits, &[]).unwrap(), 2, "any float kind");
}

#[test]
fn repetition_penalty_divides_positive_and_multiplies_negative_logits() {
    let mut greedy = sampler(SamplingParams {
        repetition_penalty: 2.0,
        ..SamplingParams::greedy()
    });
    let mut logits = [2.0, 1.5, -1.0, -1.2];
    // Token 0 seen twice still counts once; 2.0 / 2 = 1.0 falls below token 1.
    assert_eq!(greedy.sample_slice(&mut logits, &[0, 0, 2]).unwrap(), 1);
    assert_eq!(logits, [1.0, 1.5, -2.0, -1.2]);
}

#[test]
fn frequency_and_presence_penalties_subtract_per_count_and_once() {
    let params = SamplingParams {
        frequency_penalty: 0.1,
        presence_penalty: 0.05,
        ..SamplingParams::greedy()
    };
    let mut logits = [1.0, 0.9, 0.0];
    assert_eq!(
        sampler(params)
            .sample_slice(&mut logits, &[0, 0, 0, 2])
            .unwrap(),
        1
    );
    let expected = [1.0 - 3.0 * 0.1 - 0.05, 0.9, 0.0 - 0.1 - 0.05];
    for (got, want) in logits.iter().zip(expected) {
        assert!((*got as f64 - want).abs() < 1e-6, "{logits:?}");
    }
    let message = sampler(params)
        .sample_slice(&mut [0.0; 3], &[3])
        .unwrap_err()
        .to_string();
    assert!(
        message.contains("history token 3 is outside the vocabulary of 3"),
        "{message}"
    );
}

#[test]
fn draws_follow_the_softmax() {
    assert_distribution(
        &frequencies(&mut seeded(SamplingParams::default()), &four()),
        &[0.1, 0.2, 0.3, 0.4],
    );
}

#[test]
fn temperature_sharpens_the_distribution() {
    // At T = 0.5 probabilities become p² / Σp²: 0.01, 0.04, 0.09, 0.16 over 0.30.
    let expected: Vec<f64> = [0.01, 0.04, 0.09, 0.16].iter().map(|p| p / 0.30).collect();
    assert_distribution(
        &frequencies(
            &mut seeded(SamplingParams {
                temperature: 0.5,
                ..Default::default()
            }),
            &four(),
        ),
        &expected,
    );
}

#[test]
fn top_k_keeps_the_k_most_likely() {
    let observed = frequencies(
        &mut seeded(SamplingParams {
            top_k: 2,
            ..Default::default()
        }),
        &four(),
    );
    assert_distribution(&observed, &[0.0, 0.0, 0.3 / 0.7, 0.4 / 0.7]);
}

#[test]
fn top_p_keeps_the_smallest_set_reaching_p() {
    // 0.4 + 0.3 = 0.7 ≥ 0.65: two tokens; 0.75 needs the third.
    let observed = frequencies(
        &mut seeded(SamplingParams {
            top_p: 0.65,
            ..Default::default()
        }),
        &four(),
    );
    assert_distribution(&observed, &[0.0, 0.0, 0.3 / 0.7, 0.4 / 0.7]);
    let observed = frequencies(
        &mut seeded(SamplingParams {
            top_p: 0.75,
            ..Default::default()
        }),
        &four(),
    );
    assert_distribution(&observed, &[0.0, 0.2 / 0.9, 0.3 / 0.9, 0.4 / 0.9]);
}

#[test]
fn min_p_drops_tokens_below_a_fraction_of_the_top() {
    // Floor 0.6 × 0.4 = 0.24: only 0.3 and 0.4 remain.
    let observed = frequencies(
        &mut seeded(SamplingParams {
            min_p: 0.6,
            ..Default::default()
        }),
        &four(),
    );
    assert_distribution(&observed, &[0.0, 0.0, 0.3 / 0.7, 0.4 / 0.7]);
}

#[test]
fn a_wide_nucleus_is_exact() {
    // 4,096 equal logits, top_p 0.5: the nucleus is the first 2,048 ids (ties by id), more than
    // the first partial selection of 256, so the selection must widen.
    let logits = vec![0.0f32; 4_096];
    let mut sampler = seeded(SamplingParams {
        top_p: 0.5,
        ..Default::default()
    });
    let ids: Vec<u32> = (0..400)
        .map(|_| sampler.sample_slice(&mut logits.clone(), &[]).unwrap())
        .collect();
    assert!(
        ids.iter().all(|&id| id < 2_048),
        "max {:?}",
        ids.iter().max()
    );
    assert!(
        ids.iter().filter(|&&id| id >= 1_024).count() > 150,
        "the upper half of the nucleus is drawn too"
    );
}

#[test]
fn a_seed_makes_draws_reproducible() {
    let draw = |seed: Option<u64>| {
        let mut s = sampler(SamplingParams {
            seed,
            ..Default::default()
        });
        let ids: Vec<u32> = (0..64)
            .map(|_| s.sample_slice(&mut four(), &[]).unwrap())
            .collect();
        (ids, s.seed())
    };
    assert_eq!(draw(Some(1)), draw(Some(1)));
    assert_ne!(draw(Some(1)).0, draw(Some(2)).0);
    let (ids, seed) = draw(None);
    assert_eq!(
        draw(Some(seed)).0,
        ids,
        "the reported seed reproduces an unseeded request"
    );
}

#[test]
fn unusable_logits_are_errors() {
    let mut s = sampler(SamplingParams::default());
    assert!(matches!(
        s.sample_slice(&mut [0.0, f32::NAN], &[]),
        Err(SamplingError::BadLogits(_))
    ));
    assert!(matches!(
        s.sample_slice(&mut [f32::NEG_INFINITY; 2], &[]),
        Err(SamplingError::BadLogits(_))
    ));
    assert!(matches!(
        s.sample_slice(&mut [], &[]),
        Err(SamplingError::BadLogits(_))
    ));
    assert_eq!(
        s.sample(&Tensor::zeros([2, 3], (Kind::Float, Device::Cpu)), &[])
            .unwrap_err(),
        SamplingError::LogitsShape(vec![2, 3])
    );
    // A masked token is never drawn.
    let mut masked = four();
    masked[3] = f32::NEG_INFINITY;
    assert_eq!(
        frequencies(&mut seeded(SamplingParams::default()), &masked)[3],
        0.0
    );
}
