//! `make bench`: train-step throughput on the 40M benchmark shape (DESIGN.md, "Benchmarks"):
//! random weights, one optimizer step over 8 sequences x 128 tokens (4 prompts x chosen and
//! rejected, each a 32-token prompt and a 96-token response), forward + backward + clip + AdamW,
//! through `step_gradients` as train-step runs it, with the rspo-paper regularizers.
//! Tokens/s counts all 1024 tokens of the step; peak RSS is VmHWM. Elementwise ops run serially
//! as in train-step unless CANDLE_NUM_THREADS is set, and large buffers are reused from the heap
//! as in train-step; gemm uses RAYON_NUM_THREADS threads.

mod common;

use std::time::Instant;

use candle_core::{DType, Device};
use common::peak_rss_mib;
use rspo::model::random_weights;
use rspo::train::{
    clip_grad_norm, step_gradients, AdamWConfig, Example, LoraSpec, Optimizer, OptimizerKind,
    TrainableModel,
};

fn main() {
    // With the stage binaries' CPU settings, on a matmul worker thread as they run.
    rspo::model::cpu_tuning::run_model_work(measure_both);
}

fn measure_both() {
    let cfg = common::bench_config();
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

    let (examples, spec) = common::train_workload(trainable.model.cfg.vocab_size);
    let batch: Vec<&Example> = examples.iter().collect();
    let mut optimizer = Optimizer::new(
        OptimizerKind::AdamW(AdamWConfig::default()),
        trainable.params.clone(),
    )
    .expect("optimizer");
    let step_tokens: usize = examples
        .iter()
        .flat_map(|e| &e.samples)
        .map(|s| s.prompt.len() + s.response.len())
        .sum();
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
            assert!(out.values.loss.is_finite());
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
