//! `make bench`: generate and teacher-forced log-prob throughput on the 40M benchmark shape
//! (DESIGN.md, "Benchmarks"): batch 8, prompt 32, 64 new tokens, T 0.7, top-p 0.9; log-probs
//! of batch 8 x 96 tokens; and K samples per prompt ending at different lengths (`eos_workload`),
//! 16 rows at a time, decoded in fixed batches (as the stage did before continuous batching)
//! and with continuous batching, interleaved run by run.

mod common;

use rspo::model::{
    generate, generate_continuously, teacher_forced_logprobs, DecodeOptions, GenerationOutput,
    ModelError, Sampler,
};
use std::time::Instant;

fn main() {
    // With the stage binaries' CPU settings, on a matmul worker thread as they run.
    rspo::model::cpu_tuning::run_model_work(measure);
}

fn measure() {
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
    eos_batching(&model);
    println!("peak RSS: {:.0} MiB", common::peak_rss_mib());
}

/// Fixed batches against continuous batching on `eos_workload`, 16 rows at a time, A B A B.
fn eos_batching(model: &rspo::model::Transformer) {
    let (requests, params, stop) = common::eos_workload(model.cfg.vocab_size);
    let rows = 16;
    let fixed = || -> Vec<GenerationOutput> {
        requests
            .chunks(rows)
            .flat_map(|chunk| generate(model, chunk, &params, 64, &stop, |_| {}).expect("generate"))
            .collect()
    };
    let continuous = || -> Vec<GenerationOutput> {
        let options = DecodeOptions {
            params: &params,
            max_new_tokens: 64,
            stop_tokens: &stop,
            sampler: Sampler::Host,
            max_rows: rows,
        };
        let mut out = vec![None; requests.len()];
        generate_continuously(
            model,
            &requests,
            &options,
            |_| {},
            |i, o| {
                out[i] = Some(o);
                Ok::<(), ModelError>(())
            },
        )
        .expect("generate");
        out.into_iter().map(|o| o.expect("finished")).collect()
    };
    let (mut secs, mut tokens) = ([0.0f64; 2], 0usize);
    let runs = 2;
    for _ in 0..runs {
        let start = Instant::now();
        let a = fixed();
        secs[0] += start.elapsed().as_secs_f64();
        let start = Instant::now();
        let b = continuous();
        secs[1] += start.elapsed().as_secs_f64();
        let ids =
            |v: &[GenerationOutput]| v.iter().map(|o| o.response_ids.clone()).collect::<Vec<_>>();
        assert_eq!(ids(&a), ids(&b), "the same samples either way");
        tokens += b.iter().map(|o| o.response_ids.len()).sum::<usize>();
    }
    let per_run = tokens / runs;
    for (name, s) in ["fixed batches", "continuous   "].iter().zip(secs) {
        println!(
            "generate   40M  16 prompts x K 4, 16 rows, EOS-ended ({per_run} tokens), {name}: {:8.1} tokens/s",
            tokens as f64 / s
        );
    }
}
