//! `make bench`: generate and teacher-forced log-prob throughput on the 40M benchmark shape
//! (DESIGN.md, "Benchmarks"): batch 8, prompt 32, 64 new tokens, T 0.7, top-p 0.9; log-probs
//! of batch 8 x 96 tokens.

mod common;

use rspo::model::{generate, teacher_forced_logprobs};
use std::time::Instant;

fn main() {
    let model = common::bench_model(None);
    let vocab = model.cfg.vocab_size;
    let (requests, params) = common::generate_workload(vocab);
    // Warm-up (allocations, thread pool), then the timed runs.
    generate(&model, &requests[..1], &params, 4, &[], |_| {}).expect("warm-up");
    let runs = 3;
    let mut tokens = 0usize;
    let start = Instant::now();
    for _ in 0..runs {
        // No stop tokens: every row makes all 64 tokens.
        let out = generate(&model, &requests, &params, 64, &[], |_| {}).expect("generate");
        tokens += out.iter().map(|o| o.response_ids.len()).sum::<usize>();
    }
    let secs = start.elapsed().as_secs_f64();
    println!(
        "generate   40M  batch 8, prompt 32, 64 new tokens: {:8.1} tokens/s  ({} runs, {:.2} s/run)",
        tokens as f64 / secs,
        runs,
        secs / runs as f64
    );

    let seqs = common::logprob_sequences(vocab);
    let batch = common::logprob_batch(&seqs);
    teacher_forced_logprobs(&model, &batch[..1]).expect("warm-up");
    let start = Instant::now();
    let runs = 5;
    for _ in 0..runs {
        teacher_forced_logprobs(&model, &batch).expect("logprobs");
    }
    let secs = start.elapsed().as_secs_f64();
    println!(
        "logprobs   40M  batch 8 x 96 tokens:               {:8.1} tokens/s  ({:.2} s/batch)",
        (8 * 96 * runs) as f64 / secs,
        secs / runs as f64
    );
    println!("peak RSS: {:.0} MiB", common::peak_rss_mib());
}
