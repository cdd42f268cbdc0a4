//! `make bench`: reward-model scoring throughput on the 40M benchmark shape
//! (bench/bench-40m.config.json with a `score` head, random weights): 32 responses of 96 tokens
//! (prompt 32 + response 64), through `rspo::judge::reward_scores`, the function `score` calls
//! after rendering and tokenizing. Prints responses/s and peak RSS (VmHWM).

use candle_core::{DType, Device};
use rspo::judge::reward_scores;
use rspo::model::{random_weights, sequence_scores, Head, ModelConfig, Transformer};
use std::time::Instant;

fn bench_reward_model() -> Transformer {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../bench/bench-40m.config.json"
    );
    let text = std::fs::read_to_string(path).expect("bench/bench-40m.config.json");
    let mut cfg = ModelConfig::from_json(&text).expect("bench config");
    cfg.head = Head::SequenceClassification { num_labels: 1 };
    let w = random_weights(&cfg, 0.02, DType::F32, &Device::Cpu).expect("random weights");
    Transformer::new(cfg, &w).expect("model")
}

/// Peak resident memory of this process so far (VmHWM), in MiB.
fn peak_rss_mib() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|kb| kb.parse::<f64>().ok())
        .map_or(f64::NAN, |kb| kb / 1024.0)
}

fn main() {
    // With the stage binaries' CPU settings, on a matmul worker thread as they run.
    rspo::model::cpu_tuning::run_model_work(measure);
}

fn measure() {
    let model = bench_reward_model();
    let (n, len) = (32u32, 96u32);
    let seqs: Vec<Vec<u32>> = (0..n)
        .map(|r| (0..len).map(|i| 1 + (r * 311 + i * 97) % 31_000).collect())
        .collect();
    // Warm-up (allocations, thread pool).
    reward_scores(&model, &seqs[..1]).expect("warm-up");

    let start = Instant::now();
    let scores = reward_scores(&model, &seqs).expect("score");
    let secs = start.elapsed().as_secs_f64();
    assert!(scores.iter().all(|s| s.is_finite()));
    println!(
        "score      40M  reward model, {n} responses x {len} tokens, one pass each: {:7.1} responses/s  ({:7.0} tokens/s)",
        f64::from(n) / secs,
        f64::from(n * len) / secs
    );

    // For comparison only: batches of 8 (here of equal length) are faster, but in a padded
    // batch a score's last bits change with its batch-mates, which is why `score` does not
    // batch. (Running the single passes in parallel with rayon gained nothing on 2 cores.)
    let start = Instant::now();
    for batch in seqs.chunks(8) {
        sequence_scores(&model, batch).expect("batched");
    }
    let secs = start.elapsed().as_secs_f64();
    println!(
        "score      40M  (padded batches of 8, not used by `score`):             {:7.1} responses/s",
        f64::from(n) / secs
    );
    println!("peak RSS: {:.0} MiB", peak_rss_mib());
}
