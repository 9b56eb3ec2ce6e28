//! Handing the heap's free pages back to the operating system when the model thread goes idle.
//!
//! A turn's prefill allocates activations of a few MB per layer and frees them when the turn ends;
//! glibc's malloc keeps such freed memory in its heaps for the next allocation, interleaved with
//! the session memories that live on (the memory pool, `docs/OPERATIONS.md`). Under a stream of
//! short sessions that retained slack grew the server's RSS past the pool's budget + 300 MB
//! (`tests/server_pool.rs`: 678 MB over the RSS once ready after 300 sessions under a 256 MB
//! budget on a 2-core AVX2 EPYC, f32 prefill activations) though the memories themselves stayed
//! within it. `malloc_trim` returns the free pages inside the heaps (not only at their tops), at
//! the cost of faulting them in again on the next turn, so it runs only when nothing is running
//! or waiting: never between the steps of a busy engine. A fixed, lower mmap threshold would also
//! bound the RSS but cost prefill a third of its speed (every large tensor a fresh mapping).

/// Returns the free memory of malloc's heaps to the system (glibc only; elsewhere nothing).
pub fn release_free_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        extern "C" {
            fn malloc_trim(pad: usize) -> std::ffi::c_int;
        }
        // SAFETY: malloc_trim takes no pointers and only walks malloc's own free lists under its
        // locks; it is safe to call from any thread at any time.
        unsafe {
            malloc_trim(0);
        }
    }
}
