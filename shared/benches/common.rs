//! Shared by the benchmarks: the 40M benchmark shape with random weights, the workloads of
//! DESIGN.md ("Benchmarks") built one way for every benchmark (scripts/gpu_check_torch.py
//! builds the same token ids), and peak memory.
// Each benchmark uses part of this module.
#![allow(dead_code)]

use candle_core::{DType, Device};
use rspo::model::{
    random_weights, GenerationRequest, ModelConfig, PromptResponse, SamplingParams, Transformer,
};
use rspo::train::{Example, LossSpec, Preset, TrainSample};

/// Token ids in 1..vocab-1 from a fixed recipe.
pub fn token_ids(seed: u32, len: u32, offset: u32, vocab: usize) -> Vec<u32> {
    let top = (vocab as u32).saturating_sub(2).max(1);
    (0..len)
        .map(|i| 1 + (seed * 977 + (i + offset) * 131) % top)
        .collect()
}

/// generate: 8 prompts of 32 tokens, T 0.7, top-p 0.9 (64 new tokens, no stop tokens).
pub fn generate_workload(vocab: usize) -> (Vec<GenerationRequest>, SamplingParams) {
    let requests = (0..8u32)
        .map(|r| GenerationRequest {
            prompt_ids: token_ids(r, 32, 0, vocab),
            seed: r as u64,
        })
        .collect();
    let params = SamplingParams {
        temperature: 0.7,
        top_p: 0.9,
        top_k: 0,
    };
    (requests, params)
}

/// generate as users run it: 16 prompts of 16 to 46 tokens x K 4 samples, T 0.7, top-p 0.9,
/// at most 64 new tokens; every 24th token id stops a row, so responses end at different
/// lengths (about 24 tokens on average on a random model).
pub fn eos_workload(vocab: usize) -> (Vec<GenerationRequest>, SamplingParams, Vec<u32>) {
    let requests = (0..16u32)
        .flat_map(|p| {
            (0..4u64).map(move |k| GenerationRequest {
                prompt_ids: token_ids(p + 200, 16 + 2 * p, 0, vocab),
                seed: p as u64 * 4 + k,
            })
        })
        .collect();
    let params = SamplingParams {
        temperature: 0.7,
        top_p: 0.9,
        top_k: 0,
    };
    let stop = (0..vocab as u32).step_by(24).collect();
    (requests, params, stop)
}

/// logprobs: 8 sequences of 96 tokens, a 32-token prompt and a 64-token response each.
pub fn logprob_sequences(vocab: usize) -> Vec<Vec<u32>> {
    (0..8u32)
        .map(|r| token_ids(r + 100, 96, 0, vocab))
        .collect()
}

pub fn logprob_batch(seqs: &[Vec<u32>]) -> Vec<PromptResponse<'_>> {
    seqs.iter()
        .map(|s| PromptResponse {
            prompt: &s[..32],
            response: &s[32..],
        })
        .collect()
}

/// train: 4 prompts x chosen and rejected, each a 32-token prompt and a 96-token response
/// (8 x 128 tokens), with the rspo-paper regularizers at the paper's beta.
pub fn train_workload(vocab: usize) -> (Vec<Example>, LossSpec) {
    // Near a random model's log-probs (96 tokens x log vocab).
    let logp = -96.0 * (vocab as f64).ln();
    let examples = (0..4u32)
        .map(|p| Example {
            prompt_id: format!("p{p}"),
            samples: (0..2u32)
                .map(|k| TrainSample {
                    prompt_id: format!("p{p}"),
                    sample_idx: k,
                    prompt: token_ids(p, 32, 0, vocab),
                    response: token_ids(p * 2 + k + 11, 96, 32, vocab),
                    winrate: if k == 0 { 0.8 } else { 0.2 },
                    logp_t: logp,
                    logp_ref: logp - 0.5,
                })
                .collect(),
            reference: vec![],
        })
        .collect();
    let spec = LossSpec::new(0.001, Preset::RspoPaper.regularizers()).unwrap();
    (examples, spec)
}

/// The benchmark config (bench/bench-40m.config.json).
pub fn bench_config() -> ModelConfig {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../bench/bench-40m.config.json"
    );
    ModelConfig::from_json(&std::fs::read_to_string(path).expect("bench config")).expect("config")
}

/// The benchmark model (bench/bench-40m.config.json) with random weights.
pub fn bench_model(head_json: Option<&str>) -> Transformer {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../bench/bench-40m.config.json"
    );
    let mut json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(path).expect("bench config")).expect("json");
    if let Some(arch) = head_json {
        json["architectures"] = serde_json::json!([arch]);
        json["num_labels"] = serde_json::json!(1);
    }
    let cfg = ModelConfig::from_json(&json.to_string()).expect("config");
    let w = random_weights(&cfg, 0.02, DType::F32, &Device::Cpu).expect("weights");
    Transformer::new(cfg, &w).expect("model")
}

/// Peak resident memory of this process so far (VmHWM), in MiB.
pub fn peak_rss_mib() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|kb| kb.parse::<f64>().ok())
        .map_or(f64::NAN, |kb| kb / 1024.0)
}
