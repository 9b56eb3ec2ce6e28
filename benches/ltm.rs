//! `make bench` (`cargo bench --bench ltm`): one memory update and one attention read at the sizes of
//! issue 2: N = 512 basis functions, d = 576 features, chunks of 512, L = 1024 queries, batch 1 and 8,
//! f32 on the CPU. Prints the median and spread of repeated runs.
//!
//! * update: the unbounded update of §3 (read M = 512 samples, refit with G_inf) of a `[B, 512, 576]` chunk;
//! * Gaussian read: the learned reading of §2 for 1024 queries, 9 heads of 64, over N = 512 coefficients;
//! * Gibbs read: the joint softmax of §9.2 for 1024 queries (and for 1, a decode step) over a
//!   1024-slot short-term memory plus R = 256 memory points, 9 heads of 64.

use infini::ltm::{
    joint_attention, GaussianReading, KeyGroup, LongTermMemory, LtmConfig, MemoryOperators,
};
use std::time::Instant;
use tch::{nn, Device, Kind, Tensor};

const FEATURES: i64 = 576;
const HEADS: i64 = 9;
const HEAD_DIM: i64 = 64;
const CHUNK: usize = 512;
const QUERIES: i64 = 1024;
const REPEATS: usize = 15;

/// Median and (min, max) in milliseconds of `REPEATS` runs after two warm-ups.
fn time_ms(mut run: impl FnMut()) -> (f64, f64, f64) {
    run();
    run();
    let mut samples: Vec<f64> = (0..REPEATS)
        .map(|_| {
            let started = Instant::now();
            run();
            started.elapsed().as_secs_f64() * 1e3
        })
        .collect();
    samples.sort_by(f64::total_cmp);
    (samples[REPEATS / 2], samples[0], samples[REPEATS - 1])
}

fn report(name: &str, batch: i64, (median, min, max): (f64, f64, f64)) {
    println!("{name:<28} batch {batch:>2}  median {median:>9.3} ms   (min {min:.3}, max {max:.3})");
}

fn main() {
    tch::manual_seed(0);
    let options = (Kind::Float, Device::Cpu);
    println!("libtorch threads: {}", tch::get_num_threads());
    let config = LtmConfig::default();
    let ops = MemoryOperators::new(&config, CHUNK, Kind::Float, Device::Cpu);
    let vs = nn::VarStore::new(Device::Cpu);
    let reading = GaussianReading::new(&vs.root(), config.num_basis, config.min_variance);
    let points = config.quadrature_points as i64;
    for batch in [1i64, 8] {
        let mut memory = LongTermMemory::new(&ops, batch as usize, FEATURES as usize);
        let chunk = Tensor::randn([batch, CHUNK as i64, FEATURES], options);
        memory.absorb(&ops, &chunk); // first fit; every timed call below is a G_inf update
        report(
            "update (§3)",
            batch,
            time_ms(|| memory.absorb(&ops, &chunk)),
        );

        let queries = Tensor::randn([batch, HEADS, QUERIES, HEAD_DIM], options);
        let keys = Tensor::randn([batch, HEADS, config.num_basis as i64, HEAD_DIM], options);
        let values = Tensor::randn([batch, HEADS, config.num_basis as i64, HEAD_DIM], options);
        report(
            "Gaussian read (§2), L=1024",
            batch,
            time_ms(|| {
                let _ = reading.read(ops.basis(), &queries, &keys, &values);
            }),
        );

        let stm_k = Tensor::randn([batch, HEADS, QUERIES, HEAD_DIM], options);
        let stm_v = Tensor::randn([batch, HEADS, QUERIES, HEAD_DIM], options);
        let mem_k = Tensor::randn([batch, HEADS, points, HEAD_DIM], options);
        let mem_v = Tensor::randn([batch, HEADS, points, HEAD_DIM], options);
        let log_w = Tensor::zeros([batch, 1, 1, points], options);
        let groups = [
            KeyGroup {
                keys: &stm_k,
                values: &stm_v,
                bias: None,
            },
            KeyGroup {
                keys: &mem_k,
                values: &mem_v,
                bias: Some(&log_w),
            },
        ];
        report(
            "Gibbs joint read (§9.2), L=1024",
            batch,
            time_ms(|| {
                let _ = joint_attention(&queries, &groups);
            }),
        );
        let one = queries.narrow(2, 0, 1);
        report(
            "Gibbs joint read, 1 query",
            batch,
            time_ms(|| {
                let _ = joint_attention(&one, &groups);
            }),
        );
    }
}
