//! Training on the tiny-llama fixture: saved checkpoints load back with identical log-probs,
//! LoRA starts at the base model and trains only its adapters, and a few steps on a fixed
//! win-rate signal learn it; activation checkpointing gives the gradients of the ordinary pass.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;

use candle_core::{DType, Device, Tensor};
use rspo::model::{teacher_forced_logprobs, Checkpoint, PromptResponse, Transformer, Weights};
use rspo::train::lora::read_adapter;
use rspo::train::{
    clip_grad_norm, step_gradients, step_gradients_with, write_adapter_dir, write_model_dir,
    AdamWConfig, Example, LoraSpec, LossSpec, Optimizer, OptimizerKind, Preset, StepOptions,
    TrainSample, TrainableModel,
};

mod support;
use support::{fixture, TINY_POLICIES};

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("rspo-train-model-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn base() -> (Checkpoint, Weights) {
    let ck = Checkpoint::open(&fixture("tiny-llama")).unwrap();
    let w = Weights::load(&ck.dir, DType::F32, &Device::Cpu).unwrap();
    (ck, w)
}

/// Two prompts with four responses each; win rates 0.9, 0.7, 0.3, 0.1 by sample index.
fn synthetic(model: &Transformer) -> Vec<Example> {
    synthetic_with(model, |_| 6)
}

/// [`synthetic`] with response k `len(k)` tokens long (EOS last), token ids taken modulo the
/// model's vocabulary.
fn synthetic_with(model: &Transformer, len: impl Fn(usize) -> usize) -> Vec<Example> {
    let vocab = model.cfg.vocab_size as u32;
    let mut examples = Vec::new();
    for p in 0..2u32 {
        let prompt: Vec<u32> = [1, 733, 16289, 28793, 100 + p, 733, 28748, 16289, 28793]
            .iter()
            .map(|t| t % vocab)
            .collect();
        let responses: Vec<Vec<u32>> = (0..4u32)
            .map(|k| {
                (0..len(k as usize) as u32 - 1)
                    .map(|i| (300 + 97 * p + 31 * k + 7 * i) % vocab)
                    .chain([2])
                    .collect()
            })
            .collect();
        let pairs: Vec<PromptResponse> = responses
            .iter()
            .map(|r| PromptResponse {
                prompt: &prompt,
                response: r,
            })
            .collect();
        let logp: Vec<f32> = teacher_forced_logprobs(model, &pairs)
            .unwrap()
            .sums()
            .unwrap()
            .to_vec1()
            .unwrap();
        examples.push(Example {
            prompt_id: format!("p{p}"),
            samples: (0..4)
                .map(|k| TrainSample {
                    prompt_id: format!("p{p}"),
                    sample_idx: k as u32,
                    prompt: prompt.clone(),
                    response: responses[k].clone(),
                    winrate: [0.9, 0.7, 0.3, 0.1][k],
                    logp_t: logp[k] as f64,
                    logp_ref: logp[k] as f64 - 0.5,
                })
                .collect(),
            reference: vec![],
        });
    }
    examples
}

fn logprobs(model: &Transformer, examples: &[Example]) -> Vec<f32> {
    let pairs: Vec<PromptResponse> = examples
        .iter()
        .flat_map(|e| {
            e.samples.iter().map(|s| PromptResponse {
                prompt: &s.prompt,
                response: &s.response,
            })
        })
        .collect();
    teacher_forced_logprobs(model, &pairs)
        .unwrap()
        .tokens
        .to_vec1()
        .unwrap()
}

/// A plain-tensor (inference) model from the trainable one's current values.
fn frozen_copy(ck: &Checkpoint, t: &TrainableModel) -> Transformer {
    let tensors: HashMap<String, Tensor> = t
        .checkpoint_tensors()
        .unwrap()
        .into_iter()
        .map(|(n, v)| (n, v.detach().copy().unwrap()))
        .collect();
    Transformer::new(
        ck.config.clone(),
        &Weights::from_tensors(tensors, ck.dir.clone()),
    )
    .unwrap()
}

fn one_step(t: &TrainableModel, examples: &[Example], opt: &mut Optimizer, lr: f64) -> f64 {
    let batch: Vec<&Example> = examples.iter().collect();
    let spec = LossSpec::new(0.1, Preset::RspoPaper.regularizers()).unwrap();
    let mut out = step_gradients(&t.model, &t.params, &batch, &spec, 3).unwrap();
    clip_grad_norm(&mut out.grads, &t.params, 1.0).unwrap();
    opt.step(&out.grads, lr).unwrap();
    out.values.loss
}

fn adamw(t: &TrainableModel) -> Optimizer {
    Optimizer::new(
        OptimizerKind::AdamW(AdamWConfig::default()),
        t.params.clone(),
    )
    .unwrap()
}

fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).fold(0f32, |m, (x, y)| m.max((x - y).abs()))
}

#[test]
fn a_saved_model_loads_back_with_identical_logprobs() {
    let (ck, w) = base();
    let t = TrainableModel::full(ck.config.clone(), &w).unwrap();
    let examples = synthetic(&t.model);
    let mut opt = adamw(&t);
    one_step(&t, &examples, &mut opt, 1e-2);

    let dir = scratch("roundtrip");
    let tensors = t.checkpoint_tensors().unwrap();
    write_model_dir(&ck.dir, &tensors, &dir.join("model")).unwrap();
    let loaded_ck = Checkpoint::open(&dir.join("model")).unwrap();
    let loaded = loaded_ck.load_model(DType::F32, &Device::Cpu).unwrap();
    // Every tensor, bit for bit.
    let back = Weights::load(&dir.join("model"), DType::F32, &Device::Cpu).unwrap();
    for (name, v) in &tensors {
        let a: Vec<f32> = v.flatten_all().unwrap().to_vec1().unwrap();
        let b: Vec<f32> = back.tensors()[name]
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        assert!(a == b, "{name} changed on the way through the file");
    }
    // The same log-probs as the trained weights in memory.
    let in_memory = logprobs(&frozen_copy(&ck, &t), &examples);
    let from_disk = logprobs(&loaded, &examples);
    assert!(in_memory == from_disk, "{in_memory:?} vs {from_disk:?}");
    // And as the trainable model itself, up to the kernels' rounding.
    assert!(max_abs_diff(&logprobs(&t.model, &examples), &from_disk) < 1e-4);
    // Training moved the model.
    let before = logprobs(&ck.load_model(DType::F32, &Device::Cpu).unwrap(), &examples);
    assert!(max_abs_diff(&before, &from_disk) > 1e-3);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn lora_starts_at_the_base_model_and_trains_only_adapters() {
    let (ck, w) = base();
    let spec = LoraSpec {
        rank: 4,
        alpha: 8.0,
        targets: vec!["q_proj".into(), "v_proj".into()],
    };
    let t = TrainableModel::lora(ck.config.clone(), &w, &spec, 0).unwrap();
    assert_eq!(t.params.len(), 2 * 2 * 2);
    let base_model = ck.load_model(DType::F32, &Device::Cpu).unwrap();
    let examples = synthetic(&base_model);
    // B = 0: the merged weights are the base's exactly, and the log-probs are the base's.
    let base_tensors: BTreeMap<String, Tensor> = base_model.named_tensors().into_iter().collect();
    let vals = |t: &Tensor| -> Vec<f32> { t.flatten_all().unwrap().to_vec1().unwrap() };
    for (name, v) in t.checkpoint_tensors().unwrap() {
        assert!(vals(&v) == vals(&base_tensors[&name]), "{name}");
    }
    let lp_base = logprobs(&base_model, &examples);
    assert!(logprobs(&frozen_copy(&ck, &t), &examples) == lp_base);
    assert!(max_abs_diff(&logprobs(&t.model, &examples), &lp_base) < 1e-5);

    // The adapters' gradients with the frozen-weight kernel equal those of plain matmuls
    // (base weights as Vars that are then not trained).
    let batch: Vec<&Example> = examples.iter().collect();
    let loss = LossSpec::new(0.1, vec![]).unwrap();
    let frozen = step_gradients(&t.model, &t.params, &batch, &loss, 8).unwrap();
    let var_base = TrainableModel::full(ck.config.clone(), &w).unwrap();
    let mut reference = var_base.model.clone();
    let ref_params = rspo::train::lora::attach(&mut reference, &spec, 0).unwrap();
    let plain = step_gradients(&reference, &ref_params, &batch, &loss, 8).unwrap();
    for ((name, a), (_, b)) in t.params.iter().zip(&ref_params) {
        let ga = vals(frozen.grads.get(a.as_tensor()).unwrap());
        let gb = vals(plain.grads.get(b.as_tensor()).unwrap());
        let scale = gb.iter().fold(0f32, |m, x| m.max(x.abs())).max(1e-6);
        assert!(max_abs_diff(&ga, &gb) <= 1e-4 * scale, "{name}");
    }

    // A step changes the adapters (B leaves zero) and nothing else.
    let before: Vec<Vec<f32>> = t.params.iter().map(|(_, v)| vals(v.as_tensor())).collect();
    let mut opt = adamw(&t);
    one_step(&t, &examples, &mut opt, 1e-2);
    for ((name, v), b) in t.params.iter().zip(&before) {
        assert!(vals(v.as_tensor()) != *b, "{name} did not move");
    }
    for (name, v) in t.model.named_tensors() {
        assert!(vals(&v) == vals(&base_tensors[&name]), "{name} moved");
    }
    assert!(max_abs_diff(&logprobs(&frozen_copy(&ck, &t), &examples), &lp_base) > 1e-4);

    // The PEFT directory reads back to the same adapters.
    let dir = scratch("lora");
    write_adapter_dir(&ck.dir, &t.params, &spec, &dir.join("adapter")).unwrap();
    let (read_spec, tensors) = read_adapter(&dir.join("adapter"), &Device::Cpu).unwrap();
    assert_eq!(read_spec, spec);
    assert_eq!(tensors.len(), t.params.len());
    for (name, v) in &t.params {
        assert!(vals(&tensors[name]) == vals(v.as_tensor()), "{name}");
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_few_steps_learn_a_fixed_winrate_signal() {
    let (ck, w) = base();
    let t = TrainableModel::full(ck.config.clone(), &w).unwrap();
    let examples = synthetic(&t.model);
    // Best (win rates 0.9, 0.7) minus worst (0.3, 0.1) sequence log-prob, summed over prompts.
    let gap = |model: &Transformer| -> f64 {
        let tokens = logprobs(model, &examples);
        let mut sums = Vec::new();
        let mut start = 0;
        for e in &examples {
            for s in &e.samples {
                let n = s.response.len();
                sums.push(
                    tokens[start..start + n]
                        .iter()
                        .map(|&x| x as f64)
                        .sum::<f64>(),
                );
                start += n;
            }
        }
        sums.chunks(4)
            .map(|s| s[0] + s[1] - s[2] - s[3])
            .sum::<f64>()
    };
    let gap_before = gap(&t.model);
    let mut opt = adamw(&t);
    let losses: Vec<f64> = (0..8)
        .map(|_| one_step(&t, &examples, &mut opt, 3e-4))
        .collect();
    let gap_after = gap(&t.model);
    println!("losses {losses:?}, gap {gap_before} -> {gap_after}");
    assert!(
        losses[7] < 0.6 * losses[0],
        "the loss did not fall: {losses:?}"
    );
    assert!(
        gap_after > gap_before + 1.0,
        "best-minus-worst log-prob gap {gap_before} -> {gap_after}"
    );
}

/// Activation checkpointing (each layer recomputed in the backward pass) gives the loss and
/// every parameter's gradient of the ordinary pass, up to float rounding, on every
/// architecture's fixture (sliding window, biases, q/k norms, untied head), for full
/// fine-tuning and LoRA, in one micro-batch and in several.
#[test]
fn gradient_checkpointing_gives_the_gradients_of_the_ordinary_pass() {
    let spec = LossSpec::new(0.1, Preset::RspoPaper.regularizers()).unwrap();
    let lora = LoraSpec {
        rank: 4,
        alpha: 8.0,
        targets: vec!["q_proj".into(), "v_proj".into(), "down_proj".into()],
    };
    let vals = |t: &Tensor| -> Vec<f32> { t.flatten_all().unwrap().to_vec1().unwrap() };
    for name in TINY_POLICIES {
        let ck = Checkpoint::open(&fixture(name)).unwrap();
        let w = Weights::load(&ck.dir, DType::F32, &Device::Cpu).unwrap();
        let full = TrainableModel::full(ck.config.clone(), &w).unwrap();
        let adapters = TrainableModel::lora(ck.config.clone(), &w, &lora, 0).unwrap();
        // Responses of 3, 6, 9 and 12 tokens: padded rows, and up to 21 tokens, past
        // tiny-mistral's sliding window of 16.
        let examples = synthetic_with(&full.model, |k| 3 + 3 * k);
        let batch: Vec<&Example> = examples.iter().collect();
        for (kind, t) in [("full", &full), ("lora", &adapters)] {
            for micro_batch_size in [3, 64] {
                let run = |gradient_checkpointing| {
                    let options = StepOptions {
                        micro_batch_size,
                        gradient_checkpointing,
                    };
                    step_gradients_with(&t.model, &t.params, &batch, &spec, options).unwrap()
                };
                let (plain, checkpointed) = (run(false), run(true));
                let what = format!("{name} {kind} micro-batch {micro_batch_size}");
                let loss_rel =
                    (checkpointed.values.loss - plain.values.loss).abs() / plain.values.loss.abs();
                assert!(
                    loss_rel <= 1e-6,
                    "{what}: loss relative difference {loss_rel}"
                );
                for (param, var) in &t.params {
                    let a = vals(checkpointed.grads.get(var.as_tensor()).unwrap());
                    let b = vals(plain.grads.get(var.as_tensor()).unwrap());
                    let scale = b.iter().fold(0f32, |m, x| m.max(x.abs()));
                    let diff = max_abs_diff(&a, &b);
                    assert!(
                        diff <= 1e-6 * scale,
                        "{what}: {param} differs by {diff} (max |grad| {scale})"
                    );
                }
            }
        }
    }
}
