//! Throughput of the three model workloads on any device, dtype and model shape, one JSON line
//! per workload, for `scripts/gpu-check.sh` (which runs the same workloads through PyTorch with
//! `scripts/gpu_check_torch.py` and prints both side by side). `make bench` keeps the CPU
//! benchmarks of DESIGN.md; this one is for comparing devices and implementations.
//!
//!   cargo bench -p rspo --bench throughput -- --config bench/bench-40m.config.json \
//!       [--device cpu|cuda[:N]] [--dtype f32|bf16] [--workloads generate,logprobs,train] [--runs N]
//!       [--gradient-checkpointing]
//!
//! Workloads (DESIGN.md, "Benchmarks"), random weights (std 0.02):
//! - generate: batch 8, prompt 32, 64 new tokens, T 0.7, top-p 0.9, KV cache;
//! - logprobs: teacher-forced log-probs of batch 8 x 96 tokens (prompt 32, response 64);
//! - train: one optimizer step over 8 x 128 tokens (prompt 32, response 96): forward,
//!   backward, gradient clipping, AdamW; full fine-tuning, f32 master weights, passes in
//!   `--dtype` (`--gradient-checkpointing`: each layer recomputed in the backward pass).

mod common;

use std::time::Instant;

use candle_core::{DType, Device};
use rspo::model::{generate, random_weights, teacher_forced_logprobs, ModelConfig, Transformer};
use rspo::train::{
    clip_grad_norm, step_gradients_with, AdamWConfig, Example, Optimizer, OptimizerKind,
    StepOptions, TrainableModel,
};

struct Args {
    config: String,
    device: String,
    dtype: Option<String>,
    workloads: Vec<String>,
    runs: usize,
    gradient_checkpointing: bool,
}

fn parse_args() -> Result<Args, String> {
    let mut args = Args {
        config: concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../bench/bench-40m.config.json"
        )
        .into(),
        device: "cpu".into(),
        dtype: None,
        workloads: vec!["generate".into(), "logprobs".into(), "train".into()],
        runs: 3,
        gradient_checkpointing: false,
    };
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        let mut value = |flag: &str| it.next().ok_or(format!("{flag} needs a value"));
        match a.as_str() {
            "--config" => args.config = value("--config")?,
            "--device" => args.device = value("--device")?,
            "--dtype" => args.dtype = Some(value("--dtype")?),
            "--workloads" => {
                args.workloads = value("--workloads")?
                    .split(',')
                    .map(str::to_string)
                    .collect()
            }
            "--runs" => {
                args.runs = value("--runs")?
                    .parse()
                    .map_err(|e| format!("--runs: {e}"))?
            }
            "--gradient-checkpointing" => args.gradient_checkpointing = true,
            // cargo bench passes --bench to harness = false targets.
            "--bench" => {}
            other => return Err(format!("unknown argument {other}")),
        }
    }
    Ok(args)
}

fn main() {
    let args = parse_args().unwrap_or_else(|e| {
        eprintln!("throughput: {e}");
        std::process::exit(2)
    });
    // With the stage binaries' CPU settings, on a matmul worker thread as they run.
    rspo::model::cpu_tuning::run_model_work(|| run(args));
}

fn run(args: Args) {
    let device = rspo::model::parse_device(&args.device).unwrap_or_else(|e| {
        eprintln!("throughput: {e:#}");
        std::process::exit(1)
    });
    let dtype = rspo::model::dtype_for(args.dtype.as_deref(), &device).unwrap_or_else(|e| {
        eprintln!("throughput: {e:#}");
        std::process::exit(2)
    });
    let text = std::fs::read_to_string(&args.config).unwrap_or_else(|e| {
        eprintln!("throughput: {}: {e}", args.config);
        std::process::exit(1)
    });
    let cfg = ModelConfig::from_json(&text).expect("model config");
    let model_name = std::path::Path::new(&args.config)
        .file_name()
        .and_then(|n| n.to_str())
        .map(|n| {
            n.trim_end_matches(".config.json")
                .trim_start_matches("bench-")
        })
        .unwrap_or("model")
        .to_string();
    let report = |workload: &str, tokens: usize, secs: f64, runs: usize| {
        println!(
            "{{\"impl\":\"rspo\",\"model\":\"{model_name}\",\"device\":\"{}\",\"dtype\":\"{}\",\
             \"workload\":\"{workload}\",\"tokens_per_s\":{:.1},\"seconds_per_run\":{:.4},\"runs\":{runs}}}",
            args.device,
            format!("{dtype:?}").to_lowercase(),
            tokens as f64 / secs,
            secs / runs as f64
        );
    };
    let sync = |d: &Device| d.synchronize().expect("synchronize");

    if args
        .workloads
        .iter()
        .any(|w| w == "generate" || w == "logprobs")
    {
        let weights = random_weights(&cfg, 0.02, dtype, &device).expect("weights");
        let model = Transformer::new(cfg.clone(), &weights).expect("model");
        drop(weights);
        if args.workloads.iter().any(|w| w == "generate") {
            let (tokens, secs) = bench_generate(&model, args.runs, &cfg);
            report("generate", tokens, secs, args.runs);
        }
        if args.workloads.iter().any(|w| w == "logprobs") {
            let (tokens, secs) = bench_logprobs(&model, args.runs, &cfg, sync);
            report("logprobs", tokens, secs, args.runs);
        }
    }
    if args.workloads.iter().any(|w| w == "train") {
        // f32 master weights, passes in `dtype`, as train-step.
        let weights = random_weights(&cfg, 0.02, DType::F32, &device).expect("weights");
        let trainable = TrainableModel::full_mixed(cfg.clone(), &weights, dtype).expect("model");
        drop(weights);
        let (tokens, secs) = bench_train(
            &trainable,
            args.runs,
            &cfg,
            args.gradient_checkpointing,
            sync,
        );
        report("train", tokens, secs, args.runs);
    }
}

fn bench_generate(model: &Transformer, runs: usize, cfg: &ModelConfig) -> (usize, f64) {
    let (requests, params) = common::generate_workload(cfg.vocab_size);
    generate(model, &requests, &params, 4, &[], |_| {}).expect("warm-up");
    let mut tokens = 0;
    let start = Instant::now();
    for _ in 0..runs {
        // No stop tokens: every row makes all 64 tokens. Sampling reads logits on the host,
        // so each step ends synchronised.
        let out = generate(model, &requests, &params, 64, &[], |_| {}).expect("generate");
        tokens += out.iter().map(|o| o.response_ids.len()).sum::<usize>();
    }
    (tokens, start.elapsed().as_secs_f64())
}

fn bench_logprobs(
    model: &Transformer,
    runs: usize,
    cfg: &ModelConfig,
    sync: impl Fn(&Device),
) -> (usize, f64) {
    let seqs = common::logprob_sequences(cfg.vocab_size);
    let batch = common::logprob_batch(&seqs);
    teacher_forced_logprobs(model, &batch).expect("warm-up");
    sync(model.device());
    let start = Instant::now();
    for _ in 0..runs {
        let lp = teacher_forced_logprobs(model, &batch).expect("logprobs");
        // The values on the host, as `generate logprobs` writes them.
        lp.to_vecs().expect("logprobs to host");
    }
    (8 * 96 * runs, start.elapsed().as_secs_f64())
}

fn bench_train(
    trainable: &TrainableModel,
    runs: usize,
    cfg: &ModelConfig,
    gradient_checkpointing: bool,
    sync: impl Fn(&Device),
) -> (usize, f64) {
    let (examples, spec) = common::train_workload(cfg.vocab_size);
    let batch: Vec<&Example> = examples.iter().collect();
    let mut optimizer = Optimizer::new(
        OptimizerKind::AdamW(AdamWConfig::default()),
        trainable.params.clone(),
    )
    .expect("optimizer");
    let device = trainable.model.device().clone();
    let mut step = || {
        let model = trainable.forward_model().expect("forward model");
        let options = StepOptions {
            micro_batch_size: 8,
            gradient_checkpointing,
        };
        let mut out =
            step_gradients_with(&model, &trainable.params, &batch, &spec, options).expect("step");
        clip_grad_norm(&mut out.grads, &trainable.params, 1.0).expect("clip");
        optimizer.step(&out.grads, 5e-7).expect("optimizer");
        assert!(out.values.loss.is_finite());
    };
    step();
    sync(&device);
    let start = Instant::now();
    for _ in 0..runs {
        step();
    }
    sync(&device);
    (8 * 128 * runs, start.elapsed().as_secs_f64())
}
