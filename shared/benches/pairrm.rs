//! PairRM throughput on CPU: ordered pairs judged per second on a PairRM-shaped encoder with
//! random weights (DeBERTa-v3 layout: relative attention, 256 position buckets, p2c + c2p, shared
//! keys) at a size two cores can run, 6 layers x 384 hidden (6 heads, FFN 1536), instead of
//! PairRM's 24 x 1024. The tokenizer is the tiny-pairrm fixture's (Mistral + prefix tokens); the
//! limits are PairRM's (1224 / 412). Reports pairs/s per batch size and peak RSS (VmHWM).
//!
//! Run: `cargo bench -p rspo --bench pairrm`.

use candle_core::Device;
use rspo::judge::{random_pairrm_weights, PairRm, PairRmConfig, PairRmLengths, PairTokenizer};
use std::time::Instant;

const LAYERS: usize = 6;
const HIDDEN: usize = 384;
const HEADS: usize = 6;
const K: usize = 4;
const GROUPS: usize = 2;

fn peak_rss_mib() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|kb| kb.parse::<f64>().ok())
        .map_or(f64::NAN, |kb| kb / 1024.0)
}

/// CPU seconds (user + system) this process has used: with other work on the same cores,
/// pairs per CPU-second moves less than pairs per wall-second.
fn cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let fields: Vec<&str> = stat
        .rsplit(')')
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|t| t.parse::<f64>().ok())
            .unwrap_or(f64::NAN)
    };
    // utime and stime, in clock ticks (100 per second on Linux).
    (ticks(11) + ticks(12)) / 100.0
}

fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .split_whitespace()
        .next()
        .unwrap_or("?")
        .to_string()
}

/// `n` words of deterministic filler text, different per `seed`.
fn text(seed: usize, n: usize) -> String {
    const WORDS: [&str; 16] = [
        "the",
        "model",
        "answers",
        "carefully",
        "because",
        "turtles",
        "are",
        "slow",
        "and",
        "patient",
        "while",
        "rivers",
        "carry",
        "stones",
        "toward",
        "the sea.",
    ];
    (0..n)
        .map(|i| WORDS[(i * 7 + seed * 3 + i / 5) % WORDS.len()])
        .collect::<Vec<_>>()
        .join(" ")
}

fn main() {
    // With the stage binaries' CPU settings, on a matmul worker thread as they run.
    rspo::model::cpu_tuning::run_model_work(measure);
}

fn measure() {
    let fixture = concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/fixtures/tiny-pairrm");
    let config: PairRmConfig = serde_json::from_value(serde_json::json!({
        "architectures": ["DebertaV2PairRM"],
        "model_type": "deberta-v2",
        "vocab_size": 32004,
        "hidden_size": HIDDEN,
        "num_hidden_layers": LAYERS,
        "num_attention_heads": HEADS,
        "intermediate_size": 4 * HIDDEN,
        "hidden_act": "gelu",
        "layer_norm_eps": 1e-7,
        "max_position_embeddings": 512,
        "relative_attention": true,
        "max_relative_positions": -1,
        "position_buckets": 256,
        "pos_att_type": ["p2c", "c2p"],
        "share_att_key": true,
        "norm_rel_ebd": "layer_norm",
        "position_biased_input": false,
        "type_vocab_size": 0,
        "pad_token_id": 0,
        "n_tasks": 1,
        "source_prefix_id": 32000,
        "cand1_prefix_id": 32001,
        "cand2_prefix_id": 32002
    }))
    .expect("bench config");
    let device = Device::Cpu;
    let weights = random_pairrm_weights(&config, 0.02, &device).expect("weights");
    let tokenizer = PairTokenizer::from_file(
        &std::path::Path::new(fixture).join("tokenizer.json"),
        config.prefix_ids(),
        PairRmLengths::default(),
    )
    .expect("tokenizer");
    let mut model = PairRm::from_weights(config, &weights, tokenizer, &device, 8).expect("model");

    // GROUPS prompts of ~60 words, each with K responses of 120..240 words.
    let groups: Vec<(String, Vec<String>)> = (0..GROUPS)
        .map(|g| {
            let responses = (0..K).map(|k| text(10 * g + k + 1, 120 + 40 * k)).collect();
            (text(100 + g, 60), responses)
        })
        .collect();
    let inputs: Vec<_> = groups
        .iter()
        .flat_map(|(source, responses)| {
            let r: Vec<&str> = responses.iter().map(String::as_str).collect();
            model.tokenizer().encode_group(source, &r).expect("encode")
        })
        .collect();
    let tokens: usize = inputs.iter().map(|p| p.ids.len()).sum();
    println!(
        "pairrm bench: {LAYERS} layers x {HIDDEN} hidden ({HEADS} heads, FFN {}), 256 position buckets, \
         random weights, f32 CPU, {} threads",
        4 * HIDDEN,
        rayon::current_num_threads()
    );
    println!(
        "inputs: {GROUPS} prompts x K = {K} -> {} ordered pairs, {:.0} tokens per pair on average",
        inputs.len(),
        tokens as f64 / inputs.len() as f64
    );
    // Warm-up: first-touch allocations and thread pools.
    model.logits(&inputs[..2]).expect("warm-up");
    let mut batch_1: Vec<f32> = Vec::new();
    for batch_size in [1, 4, 8] {
        model.set_batch_size(batch_size);
        let (start, cpu) = (Instant::now(), cpu_seconds());
        let logits = model.logits(&inputs).expect("logits");
        let (secs, cpu) = (start.elapsed().as_secs_f64(), cpu_seconds() - cpu);
        assert!(logits.iter().all(|l| l.is_finite()));
        if batch_1.is_empty() {
            batch_1 = logits.clone();
        }
        // Padding and batch shape change gemm blockings, hence the last bits of a logit.
        let drift = logits
            .iter()
            .zip(&batch_1)
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max);
        println!(
            "batch {batch_size}: {:.2} pairs/s ({:.0} ms per pair, {:.0} tokens/s; {:.2} CPU-s per pair; \
             max |logit - batch-1 logit| {drift:.1e})",
            inputs.len() as f64 / secs,
            1000.0 * secs / inputs.len() as f64,
            tokens as f64 / secs,
            cpu / inputs.len() as f64
        );
    }
    println!(
        "peak RSS {:.0} MiB; 1-minute load average at the end {} (timings share the cores with it)",
        peak_rss_mib(),
        load_average()
    );
}
