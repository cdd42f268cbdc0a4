//! `make bench`: train-step throughput on the 40M benchmark shape (DESIGN.md, "Benchmarks"):
//! random weights, one optimizer step over 8 sequences x 128 tokens (4 prompts x chosen and
//! rejected, each a 32-token prompt and a 96-token response), forward + backward + clip + AdamW,
//! through `step_gradients` as train-step runs it, with the rspo-paper regularizers.
//! Tokens/s counts all 1024 tokens of the step; peak RSS is VmHWM. Elementwise ops run serially
//! as in train-step unless CANDLE_NUM_THREADS is set, and large buffers are reused from the heap
//! as in train-step; gemm uses RAYON_NUM_THREADS threads.

use std::time::Instant;

use candle_core::{DType, Device};
use rspo::model::{random_weights, ModelConfig};
use rspo::train::{
    clip_grad_norm, step_gradients, AdamWConfig, Example, LoraSpec, LossSpec, Optimizer,
    OptimizerKind, Preset, TrainSample, TrainableModel,
};

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
    // As the train-step binary does (CANDLE_NUM_THREADS, if set, wins; large buffers stay on
    // the heap).
    rspo::stage::train_step::prefer_serial_elementwise_ops();
    let kept = rspo::stage::train_step::keep_large_allocations();
    println!("large allocations kept on the heap: {kept}");
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../bench/bench-40m.config.json"
    );
    let cfg = ModelConfig::from_json(&std::fs::read_to_string(path).expect("bench config"))
        .expect("config");
    let weights = random_weights(&cfg, 0.02, DType::F32, &Device::Cpu).expect("weights");
    let full = TrainableModel::full(cfg.clone(), &weights).expect("model");
    drop(weights);
    measure(&full, "full");
    drop(full);
    let weights = random_weights(&cfg, 0.02, DType::F32, &Device::Cpu).expect("weights");
    // LoRA r 16 on every linear layer: the base is frozen and gets no gradient computed.
    let spec = LoraSpec {
        rank: 16,
        alpha: 32.0,
        targets: rspo::train::lora::LORA_TARGETS
            .iter()
            .map(|s| s.to_string())
            .collect(),
    };
    let lora = TrainableModel::lora(cfg, &weights, &spec, 0).expect("lora model");
    measure(&lora, "LoRA r16 all linears");
    println!("peak RSS: {:.0} MiB", peak_rss_mib());
}

fn measure(trainable: &TrainableModel, label: &str) {
    let n_params: usize = trainable.params.iter().map(|(_, v)| v.elem_count()).sum();

    let (prompt_len, response_len) = (32u32, 96u32);
    let tokens = |seed: u32, len: u32, offset: u32| -> Vec<u32> {
        (0..len)
            .map(|i| 1 + (seed * 977 + (i + offset) * 131) % 31_000)
            .collect()
    };
    let examples: Vec<Example> = (0..4u32)
        .map(|p| Example {
            prompt_id: format!("p{p}"),
            samples: (0..2u32)
                .map(|k| TrainSample {
                    prompt_id: format!("p{p}"),
                    sample_idx: k,
                    prompt: tokens(p, prompt_len, 0),
                    response: tokens(p * 2 + k + 11, response_len, prompt_len),
                    winrate: if k == 0 { 0.8 } else { 0.2 },
                    // Near a random model's log-probs (96 tokens x log 32000).
                    logp_t: -996.0,
                    logp_ref: -996.5,
                })
                .collect(),
            reference: vec![],
        })
        .collect();
    let batch: Vec<&Example> = examples.iter().collect();
    let spec = LossSpec {
        beta: 0.001,
        regularizers: Preset::RspoPaper.regularizers(),
    };
    let mut optimizer = Optimizer::new(
        OptimizerKind::AdamW(AdamWConfig::default()),
        trainable.params.clone(),
    )
    .expect("optimizer");
    let step_tokens = 8 * (prompt_len + response_len) as usize;
    let mut run = |timed: bool| -> [f64; 3] {
        let t0 = Instant::now();
        let mut out =
            step_gradients(&trainable.model, &trainable.params, &batch, &spec, 8).expect("step");
        let t1 = Instant::now();
        clip_grad_norm(&mut out.grads, &trainable.params, 1.0).expect("clip");
        let t2 = Instant::now();
        optimizer.step(&out.grads, 5e-7).expect("optimizer");
        let t3 = Instant::now();
        if timed {
            assert!(out.loss.is_finite());
        }
        [
            (t1 - t0).as_secs_f64(),
            (t2 - t1).as_secs_f64(),
            (t3 - t2).as_secs_f64(),
        ]
    };
    // Warm-up (allocations, thread pool), then the timed steps.
    run(false);
    let steps = 3;
    let mut total = [0f64; 3];
    for _ in 0..steps {
        let t = run(true);
        for i in 0..3 {
            total[i] += t[i];
        }
    }
    let per_step: f64 = total.iter().sum::<f64>() / steps as f64;
    println!(
        "train-step 40M {label} ({:.1}M trainable) batch 8 x 128 tokens (32 prompt + 96 \
         response), forward+backward+clip+AdamW: {:8.1} tokens/s  ({:.2} s/step: fwd+bwd {:.2}, \
         clip {:.3}, AdamW {:.3})",
        n_params as f64 / 1e6,
        step_tokens as f64 / per_step,
        per_step,
        total[0] / steps as f64,
        total[1] / steps as f64,
        total[2] / steps as f64,
    );
    if label == "full" {
        println!("peak RSS after full fine-tuning: {:.0} MiB", peak_rss_mib());
    }
}
