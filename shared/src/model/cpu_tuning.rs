//! Process-wide CPU settings for model work. Each binary that runs a model calls
//! [`tune_process_for_models`] first thing in `main`, before any thread or tensor exists, and
//! the benchmarks do the same, so what is measured is what the stages run.

/// Both settings below.
pub fn tune_process_for_models() {
    prefer_serial_elementwise_ops();
    keep_large_allocations();
}

/// Runs candle's elementwise CPU ops on the calling thread unless `CANDLE_NUM_THREADS` says
/// otherwise. Call first thing, before any tensor op. candle 0.11 runs them on a spin-waiting
/// thread pool of its own beside gemm's rayon pool; a backward pass is hundreds of small
/// gradient additions, and on the 2-core benchmark machine the waits cost more than the
/// parallelism gains (train-step bench: about 300 instead of about 230 tokens/s). gemm keeps
/// its threads (`RAYON_NUM_THREADS`).
pub fn prefer_serial_elementwise_ops() {
    if std::env::var_os("CANDLE_NUM_THREADS").is_none() {
        std::env::set_var("CANDLE_NUM_THREADS", "1");
    }
}

/// Serves large tensor buffers from the heap instead of fresh `mmap`s, and keeps freed heap
/// memory instead of handing it back (glibc): a forward or training pass frees and
/// re-allocates the same large activation, gradient and logit buffers many times, and each
/// fresh page is faulted and zeroed by the kernel again (about 10% of a step in perf; on the
/// SmolLM2 shape, 610 000 page faults for 3 log-prob passes, 163 000 with this). Costs about
/// 100 MiB of peak RSS on the benchmark shape for about 15% more tokens/s. Returns whether
/// the allocator took the settings; a no-op elsewhere.
pub fn keep_large_allocations() -> bool {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        use std::os::raw::c_int;
        extern "C" {
            fn mallopt(param: c_int, value: c_int) -> c_int;
        }
        const M_TRIM_THRESHOLD: c_int = -1;
        const M_MMAP_THRESHOLD: c_int = -3;
        // Safety: mallopt only changes allocator parameters; called before threads start.
        unsafe {
            mallopt(M_MMAP_THRESHOLD, c_int::MAX) == 1 && mallopt(M_TRIM_THRESHOLD, c_int::MAX) == 1
        }
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    {
        false
    }
}
