//! Process-wide CPU settings for model work. Each binary that runs a model runs its `main`
//! through [`run_model_work`], before any thread or tensor exists, and the benchmarks do the
//! same, so what is measured is what the stages run.

/// Applies both settings below, then runs `work` on one of rayon's worker threads and returns
/// its result (a panic in `work` goes on in the caller).
///
/// gemm splits every matrix product over rayon's threads. Called from a thread outside the
/// pool, it hands all the parts to the pool and sleeps until they are done, so around each of
/// the hundreds of products in a pass the caller sleeps and wakes and the workers spin and
/// sleep: three threads on two cores. On a worker, the caller computes a part itself. On the
/// SmolLM2-135M shape (2 cores, interleaved A/B): teacher-forced log-probs 1170 to 1370-1380
/// tokens/s, generation 141-144 to 157-160, a train step 317-322 to 335-369, peak RSS the
/// same. The results are the same bits: each product's parts and sums do not depend on which
/// thread runs them.
pub fn run_model_work<R: Send>(work: impl FnOnce() -> R + Send) -> R {
    prefer_serial_elementwise_ops();
    keep_large_allocations();
    // The main thread's 8 MiB rather than 2: the work (a backward pass's graph walk recurses
    // once per node on the path) now runs here. Fails only if the pool already exists.
    let _ = rayon::ThreadPoolBuilder::new()
        .stack_size(8 << 20)
        .build_global();
    rayon::scope(|_| work())
}

/// Runs candle's elementwise CPU ops on the calling thread unless `CANDLE_NUM_THREADS` says
/// otherwise. Call first thing, before any tensor op. candle 0.11 runs them on a spin-waiting
/// thread pool of its own beside gemm's rayon pool; a backward pass is hundreds of small
/// gradient additions, and on the 2-core benchmark machine the waits cost more than the
/// parallelism gains (train-step bench: about 300 instead of about 230 tokens/s). gemm keeps
/// its threads (`RAYON_NUM_THREADS`).
fn prefer_serial_elementwise_ops() {
    if std::env::var_os("CANDLE_NUM_THREADS").is_none() {
        std::env::set_var("CANDLE_NUM_THREADS", "1");
    }
}

/// Serves large tensor buffers from the heap instead of fresh `mmap`s, and keeps freed heap
/// memory instead of handing it back (glibc): a forward or training pass frees and
/// re-allocates the same large activation, gradient and logit buffers many times, and each
/// fresh page is faulted and zeroed by the kernel again (about 10% of a step in perf; on the
/// SmolLM2 shape, 610 000 page faults for 3 log-prob passes, 163 000 with this). Costs about
/// 100 MiB of peak RSS on the benchmark shape for about 15% more tokens/s. One heap (arena)
/// serves every thread: glibc gives other threads arenas that grow in 64 MiB heaps, so a
/// larger buffer allocated on a worker thread (where [`run_model_work`] runs) would be a fresh
/// mapping every time (a SmolLM2 train step there: 377 000 page faults a step, none with one
/// arena). A no-op on other C libraries, and where glibc refuses a setting (each only tunes
/// speed).
fn keep_large_allocations() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        use std::os::raw::c_int;
        extern "C" {
            fn mallopt(param: c_int, value: c_int) -> c_int;
        }
        const M_TRIM_THRESHOLD: c_int = -1;
        const M_MMAP_THRESHOLD: c_int = -3;
        const M_ARENA_MAX: c_int = -8;
        // Safety: mallopt only changes allocator parameters; called before threads start.
        unsafe {
            mallopt(M_MMAP_THRESHOLD, c_int::MAX);
            mallopt(M_TRIM_THRESHOLD, c_int::MAX);
            mallopt(M_ARENA_MAX, 1);
        }
    }
}
