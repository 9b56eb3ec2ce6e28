//! Our kernels' work split over libtorch's own OpenMP threads.
//!
//! A decode step alternates our matrix kernels (`q4`, `q8`) with libtorch's operations (attention).
//! A thread pool of our own would compete for the cores with libtorch's OpenMP workers, which spin
//! for a while after each parallel region: on the 2-core VMs a second thread of ours lost more than
//! it gained (`q8`'s note). So the split goes to the same workers, through libgomp's own entry point
//! for a parallel region, `GOMP_parallel` (what a C compiler emits for `#pragma omp parallel`),
//! found in the process at run time. Where libtorch runs on another OpenMP runtime, or on one
//! thread, the parts run one after another on the calling thread.

use std::ffi::{c_char, c_uint, c_void};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Mutex, OnceLock};

/// `void GOMP_parallel(void (*fn)(void *), void *data, unsigned num_threads, unsigned flags)`: runs
/// `fn(data)` on `num_threads` threads (the caller among them) and returns when all have.
type GompParallel = unsafe extern "C" fn(extern "C" fn(*mut c_void), *mut c_void, c_uint, c_uint);

extern "C" {
    fn dlsym(handle: *mut c_void, symbol: *const c_char) -> *mut c_void;
}

/// libgomp's `GOMP_parallel` where the process has loaded libgomp (libtorch's wheel does).
fn gomp_parallel() -> Option<GompParallel> {
    static FOUND: OnceLock<Option<GompParallel>> = OnceLock::new();
    *FOUND.get_or_init(|| {
        // SAFETY: RTLD_DEFAULT (a null handle on glibc) searches the libraries already loaded; the
        // name is a NUL-terminated literal. A non-null result is libgomp's GOMP_parallel, whose C
        // signature `GompParallel` spells out.
        unsafe {
            let symbol = dlsym(std::ptr::null_mut(), c"GOMP_parallel".as_ptr());
            (!symbol.is_null()).then(|| std::mem::transmute::<*mut c_void, GompParallel>(symbol))
        }
    })
}

/// A parallel region's shared state: the parts are handed out one at a time, so a thread that
/// finishes early takes the next.
struct Job<'a> {
    work: &'a (dyn Fn(usize) + Sync),
    parts: usize,
    next: AtomicUsize,
    panicked: AtomicBool,
}

extern "C" fn run_parts(data: *mut c_void) {
    // SAFETY: `for_each_part` passes a `Job` that outlives the region (GOMP_parallel returns only
    // when every thread has left this function), and only shares it (`Job` is `Sync`).
    let job = unsafe { &*(data as *const Job) };
    loop {
        let part = job.next.fetch_add(1, Ordering::Relaxed);
        if part >= job.parts {
            return;
        }
        // A panic must not unwind into C: it is noted and raised again on the calling thread.
        if catch_unwind(AssertUnwindSafe(|| (job.work)(part))).is_err() {
            job.panicked.store(true, Ordering::Relaxed);
        }
    }
}

/// Runs `work(part)` for every part in `0..parts`, on libtorch's threads when there are several.
pub fn for_each_part(parts: usize, work: &(dyn Fn(usize) + Sync)) {
    let threads = (tch::get_num_threads().max(1) as usize).min(parts);
    let Some(parallel) = gomp_parallel().filter(|_| threads > 1) else {
        (0..parts).for_each(work);
        return;
    };
    let job = Job {
        work,
        parts,
        next: AtomicUsize::new(0),
        panicked: AtomicBool::new(false),
    };
    // SAFETY: `run_parts` matches the callback type, and `job` lives until GOMP_parallel returns,
    // after every thread of the region has finished with it.
    unsafe {
        parallel(
            run_parts,
            &job as *const Job as *mut c_void,
            threads as c_uint,
            0,
        )
    };
    assert!(
        !job.panicked.load(Ordering::Relaxed),
        "a part of a parallel kernel panicked"
    );
}

/// A matrix product `y` `[M, N]` computed by parts of at most `part_rows` output features over
/// threads ([`balanced_part`]): `work(first, out)` fills `out` `[M, C]` with features
/// `first..first + C` for every row, and the parts are then copied into y.
pub fn by_output_features(
    y: &mut [f32],
    features: usize,
    part_rows: usize,
    work: &(dyn Fn(usize, &mut [f32]) + Sync),
) {
    let threads = tch::get_num_threads().max(1) as usize;
    let part_rows = balanced_part(features, part_rows, threads);
    let m = y.len() / features;
    let mut parts_out = vec![0f32; y.len()];
    let parts: Vec<Mutex<&mut [f32]>> = parts_out
        .chunks_mut(part_rows * m)
        .map(Mutex::new)
        .collect();
    for_each_part(parts.len(), &|part| {
        let mut out = parts[part]
            .lock()
            .expect("each part is taken by one thread");
        work(part * part_rows, &mut out);
    });
    for (part, out) in parts_out.chunks(part_rows * m).enumerate() {
        let count = out.len() / m;
        for (i, features_of_row) in out.chunks_exact(count).enumerate() {
            let at = i * features + part * part_rows;
            y[at..at + count].copy_from_slice(features_of_row);
        }
    }
}

/// Output features per part: at most `most` (what keeps a part's weights in cache), in as many
/// parts as a multiple of `threads`, so that each thread gets the same share. On 2 threads a
/// 576-feature product in parts of 128 was 4.5 parts, 2.5 on one thread and 2 on the other; in 6
/// parts of 96, each thread takes 3.
fn balanced_part(features: usize, most: usize, threads: usize) -> usize {
    let parts = features
        .div_ceil(most.max(1))
        .max(1)
        .next_multiple_of(threads.max(1));
    features.div_ceil(parts).max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parts_land_at_their_features() {
        // y[i, r] = 1000·i + r for 2 rows and 10 features in parts of 4 (the last one short).
        let mut y = vec![0f32; 20];
        by_output_features(&mut y, 10, 4, &|first, out| {
            let count = out.len() / 2;
            for (i, row) in out.chunks_exact_mut(count).enumerate() {
                for (r, v) in row.iter_mut().enumerate() {
                    *v = (1000 * i + first + r) as f32;
                }
            }
        });
        let want: Vec<f32> = (0..2)
            .flat_map(|i| (0..10).map(move |r| (1000 * i + r) as f32))
            .collect();
        assert_eq!(y, want);
    }

    #[test]
    fn parts_are_shared_evenly_by_the_threads() {
        assert_eq!(balanced_part(576, 128, 2), 96);
        assert_eq!(balanced_part(960, 128, 2), 120);
        assert_eq!(balanced_part(3072, 128, 2), 128);
        assert_eq!(balanced_part(49_152, 4096, 2), 4096);
        assert_eq!(balanced_part(576, 128, 1), 116);
        assert_eq!(balanced_part(5, 128, 4), 2);
        for (features, most, threads) in [(576, 128, 2), (1000, 96, 3), (7, 2, 16), (0, 4, 2)] {
            let rows = balanced_part(features, most, threads);
            assert!(rows <= most.max(1) && rows >= 1);
            assert!(features.div_ceil(rows) <= features.div_ceil(most).next_multiple_of(threads));
        }
    }

    #[test]
    fn every_part_runs_once() {
        let seen = Mutex::new(vec![0u32; 37]);
        for_each_part(37, &|part| seen.lock().unwrap()[part] += 1);
        assert_eq!(*seen.lock().unwrap(), vec![1u32; 37]);
    }

    #[test]
    fn the_parts_run_on_libtorchs_threads() {
        // libtorch's wheel links libgomp; with two threads asked for, two run the parts.
        assert!(
            gomp_parallel().is_some(),
            "libgomp's GOMP_parallel not found"
        );
        let threads = Mutex::new(std::collections::HashSet::new());
        let before = tch::get_num_threads();
        tch::set_num_threads(2);
        for_each_part(64, &|_| {
            std::thread::sleep(std::time::Duration::from_millis(1));
            threads.lock().unwrap().insert(std::thread::current().id());
        });
        tch::set_num_threads(before);
        assert_eq!(threads.lock().unwrap().len(), 2);
    }
}
