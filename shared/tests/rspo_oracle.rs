//! The RSPO loss and its gradients through the model, against PyTorch autograd
//! (tests/fixtures/rspo-oracle, see fixtures/README.md): theta = pi_t = `rspo-oracle/policy`,
//! pi_ref = tiny-llama. Driven through `step_gradients`, the function train-step runs for every
//! optimizer step, on examples built by `build_examples` from the rows the stage reads.

use candle_core::{DType, Tensor};
use rspo::data::{FinishReason, LogprobRow, SampleRow, WinrateRow};
use rspo::model::{Checkpoint, Weights};
use rspo::train::{
    build_examples, clip_grad_norm, grad_norm, step_gradients, step_gradients_with, AdamWConfig,
    ExampleInputs, LossSpec, Optimizer, OptimizerKind, Regularizer, Selection, StepOptions,
    TrainableModel,
};
use serde::Deserialize;
use std::collections::BTreeMap;

mod support;
use support::{fixture, test_device};

#[derive(Deserialize)]
struct Oracle {
    samples: Vec<OracleSample>,
    reference_samples: Vec<OracleRefSample>,
    results: Vec<OracleResult>,
}

#[derive(Deserialize)]
struct OracleSample {
    prompt_idx: u32,
    sample_idx: u32,
    prompt_ids: Vec<u32>,
    response_ids: Vec<u32>,
    winrate: f64,
    logp_policy: f64,
    logp_ref: f64,
}

#[derive(Deserialize)]
struct OracleRefSample {
    prompt_idx: u32,
    prompt_ids: Vec<u32>,
    response_ids: Vec<u32>,
}

#[derive(Deserialize)]
struct OracleResult {
    config: OracleConfig,
    loss: f64,
    terms: BTreeMap<String, f64>,
    grad_global_norm: f64,
    #[serde(rename = "grad_model.norm.weight")]
    grad_norm_weight: Vec<f64>,
    grad_layer0_q_proj_row0: Vec<f64>,
}

#[derive(Deserialize)]
struct OracleConfig {
    name: String,
    selection: Selection,
    eta: f64,
    terms: Vec<Regularizer>,
}

fn oracle() -> Oracle {
    let text = std::fs::read_to_string(fixture("rspo-oracle/expected.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

fn sample_row(prompt_idx: u32, sample_idx: u32, prompt: &[u32], response: &[u32]) -> SampleRow {
    SampleRow {
        prompt_id: format!("p{prompt_idx}"),
        sample_idx,
        messages: vec![],
        prompt_text: String::new(),
        response: String::new(),
        prompt_token_ids: prompt.to_vec(),
        response_token_ids: response.to_vec(),
        finish_reason: FinishReason::Eos,
        sample_logprob: 0.0,
        seed: 0,
    }
}

fn logprob_row(s: &OracleSample, logprob: f64) -> LogprobRow {
    let n = s.response_ids.len();
    LogprobRow {
        prompt_id: format!("p{}", s.prompt_idx),
        sample_idx: s.sample_idx,
        logprob,
        // Only the sums enter the loss.
        token_logprobs: vec![(logprob / n as f64) as f32; n],
        num_tokens: n as u32,
    }
}

struct Rows {
    samples: Vec<SampleRow>,
    winrates: Vec<WinrateRow>,
    policy: Vec<LogprobRow>,
    reference: Vec<LogprobRow>,
    refs: Vec<SampleRow>,
}

fn rows(o: &Oracle) -> Rows {
    Rows {
        samples: o
            .samples
            .iter()
            .map(|s| sample_row(s.prompt_idx, s.sample_idx, &s.prompt_ids, &s.response_ids))
            .collect(),
        winrates: o
            .samples
            .iter()
            .map(|s| WinrateRow {
                prompt_id: format!("p{}", s.prompt_idx),
                sample_idx: s.sample_idx,
                winrate: s.winrate,
                n_opponents: 3,
                rank: 0,
            })
            .collect(),
        // theta = pi_t: the policy log-probs are pi_t's own.
        policy: o
            .samples
            .iter()
            .map(|s| logprob_row(s, s.logp_policy))
            .collect(),
        reference: o
            .samples
            .iter()
            .map(|s| logprob_row(s, s.logp_ref))
            .collect(),
        refs: o
            .reference_samples
            .iter()
            .enumerate()
            .map(|(i, r)| sample_row(r.prompt_idx, i as u32, &r.prompt_ids, &r.response_ids))
            .collect(),
    }
}

fn policy_model() -> TrainableModel {
    let ck = Checkpoint::open(&fixture("rspo-oracle/policy")).unwrap();
    let w = Weights::load(&ck.dir, DType::F32, &test_device()).unwrap();
    TrainableModel::full(ck.config.clone(), &w).unwrap()
}

fn rel(a: f64, b: f64) -> f64 {
    (a - b).abs() / b.abs().max(1e-12)
}

fn grad_of(t: &TrainableModel, grads: &candle_core::backprop::GradStore, name: &str) -> Tensor {
    let (_, var) = t.params.iter().find(|(n, _)| n == name).unwrap();
    grads
        .get(var.as_tensor())
        .unwrap()
        .to_dtype(DType::F64)
        .unwrap()
}

#[test]
fn loss_terms_and_gradients_match_pytorch() {
    let o = oracle();
    assert_eq!(o.results.len(), 8);
    let r = rows(&o);
    let trainable = policy_model();
    let mut report = String::new();
    // With activation checkpointing too: the layers recomputed in the backward pass.
    let runs = [false, true]
        .into_iter()
        .flat_map(|ckpt| o.results.iter().map(move |result| (ckpt, result)));
    for (gradient_checkpointing, result) in runs {
        let c = &result.config;
        let spec = LossSpec::new(1.0 / c.eta, c.terms.clone()).unwrap();
        let inputs = ExampleInputs {
            samples: ("samples", &r.samples),
            winrates: ("winrates", &r.winrates),
            policy_logprobs: ("policy logprobs", &r.policy),
            reference_logprobs: ("reference logprobs", &r.reference),
            reference_samples: spec
                .needs_reference_samples()
                .then_some(("reference samples", r.refs.as_slice())),
        };
        let examples = build_examples(&inputs, c.selection).unwrap();
        let refs: Vec<_> = examples.iter().collect();
        let options = StepOptions {
            micro_batch_size: 64,
            gradient_checkpointing,
        };
        let out = step_gradients_with(&trainable.model, &trainable.params, &refs, &spec, options)
            .unwrap();

        let mut worst_term = rel(out.values.self_play, result.terms["self_play"]);
        assert_eq!(out.values.terms.len() + 1, result.terms.len(), "{}", c.name);
        for (name, value) in &out.values.terms {
            worst_term = worst_term.max(rel(*value, result.terms[name.as_str()]));
        }
        let loss_err = rel(out.values.loss, result.loss);
        let norm = grad_norm(&out.grads, &trainable.params).unwrap();
        let norm_err = rel(norm, result.grad_global_norm);
        let mut worst_slice = 0f64;
        let mut check = |got: Vec<f64>, want: &[f64]| {
            assert_eq!(got.len(), want.len());
            for (g, w) in got.iter().zip(want) {
                let excess = (g - w).abs() / (1e-4 + 1e-3 * w.abs());
                worst_slice = worst_slice.max(excess);
            }
        };
        check(
            grad_of(&trainable, &out.grads, "model.norm.weight")
                .to_vec1()
                .unwrap(),
            &result.grad_norm_weight,
        );
        check(
            grad_of(
                &trainable,
                &out.grads,
                "model.layers.0.self_attn.q_proj.weight",
            )
            .get(0)
            .unwrap()
            .to_vec1()
            .unwrap(),
            &result.grad_layer0_q_proj_row0,
        );
        let line =
            format!(
            "{:>24}{}: loss rel {loss_err:.1e}, worst term rel {worst_term:.1e}, grad norm rel \
             {norm_err:.1e}, slices worst |err| / (1e-4 + 1e-3 |want|) = {worst_slice:.2}\n",
            c.name,
            if gradient_checkpointing { " (checkpointed)" } else { "" }
        );
        report.push_str(&line);
        assert!(loss_err < 1e-4, "{line}");
        assert!(worst_term < 1e-4, "{line}");
        assert!(norm_err < 1e-3, "{line}");
        assert!(worst_slice <= 1.0, "{line}");
    }
    println!("{report}");
}

/// Micro-batches of one sequence give the gradient of the whole batch (forward_kl included,
/// so reference samples are split from the samples too), up to f32 rounding: padding and row
/// counts change how gemm blocks its sums.
#[test]
fn micro_batches_give_the_whole_batch_gradient() {
    let o = oracle();
    let r = rows(&o);
    let trainable = policy_model();
    for result in o.results.iter().filter(|r| {
        matches!(
            r.config.name.as_str(),
            "forward_kl_ref_samples" | "forward_is_plus_reverse"
        )
    }) {
        let c = &result.config;
        let spec = LossSpec::new(1.0 / c.eta, c.terms.clone()).unwrap();
        let inputs = ExampleInputs {
            samples: ("samples", &r.samples),
            winrates: ("winrates", &r.winrates),
            policy_logprobs: ("policy logprobs", &r.policy),
            reference_logprobs: ("reference logprobs", &r.reference),
            reference_samples: spec
                .needs_reference_samples()
                .then_some(("reference samples", r.refs.as_slice())),
        };
        let examples = build_examples(&inputs, c.selection).unwrap();
        let refs: Vec<_> = examples.iter().collect();
        let whole = step_gradients(&trainable.model, &trainable.params, &refs, &spec, 64).unwrap();
        for micro in [1, 3] {
            let split =
                step_gradients(&trainable.model, &trainable.params, &refs, &spec, micro).unwrap();
            assert!(split.micro_batches > 1);
            assert!(
                rel(split.values.loss, whole.values.loss) < 1e-6,
                "{} micro {micro}: {} vs {}",
                c.name,
                split.values.loss,
                whole.values.loss
            );
            for ((n, a), (_, b)) in split.values.terms.iter().zip(&whole.values.terms) {
                assert!(rel(*a, *b) < 1e-6, "{} {n}", c.name);
            }
            let mut worst = 0f64;
            let mut scale = 0f64;
            for (_, var) in &trainable.params {
                let a = split.grads.get(var.as_tensor()).unwrap();
                let b = whole.grads.get(var.as_tensor()).unwrap();
                let d = (a - b).unwrap().abs().unwrap().max_all().unwrap();
                worst = worst.max(d.to_scalar::<f32>().unwrap() as f64);
                let m = b.abs().unwrap().max_all().unwrap();
                scale = scale.max(m.to_scalar::<f32>().unwrap() as f64);
            }
            assert!(
                worst <= 1e-5 * scale,
                "{} micro {micro}: max |diff| {worst} vs max |grad| {scale}",
                c.name
            );
        }
    }
}

/// One AdamW step from the oracle configuration's gradients moves every parameter as
/// `torch.optim.AdamW` does at step 1: m_hat = g and v_hat = g^2, so
/// `p1 = p0 * (1 - lr * wd) - lr * g / (|g| + eps)` elementwise.
#[test]
fn one_adamw_step_moves_every_parameter_as_pytorch() {
    let o = oracle();
    let r = rows(&o);
    let trainable = policy_model();
    let spec = LossSpec::new(0.1, vec![]).unwrap();
    let inputs = ExampleInputs {
        samples: ("samples", &r.samples),
        winrates: ("winrates", &r.winrates),
        policy_logprobs: ("policy logprobs", &r.policy),
        reference_logprobs: ("reference logprobs", &r.reference),
        reference_samples: None,
    };
    let examples = build_examples(&inputs, Selection::BestWorst).unwrap();
    let refs: Vec<_> = examples.iter().collect();
    let mut out = step_gradients(&trainable.model, &trainable.params, &refs, &spec, 64).unwrap();
    // Clipped as train-step does, so the step sees the gradients it would.
    clip_grad_norm(&mut out.grads, &trainable.params, 1.0).unwrap();
    let before: Vec<Vec<f32>> = trainable
        .params
        .iter()
        .map(|(_, v)| v.as_tensor().flatten_all().unwrap().to_vec1().unwrap())
        .collect();
    let grads: Vec<Vec<f32>> = trainable
        .params
        .iter()
        .map(|(_, v)| {
            out.grads
                .get(v.as_tensor())
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1()
                .unwrap()
        })
        .collect();
    let config = AdamWConfig::default();
    let (lr, wd, eps) = (1e-3, config.weight_decay, config.eps);
    let mut opt = Optimizer::new(OptimizerKind::AdamW(config), trainable.params.clone()).unwrap();
    opt.step(&out.grads, lr).unwrap();
    let mut checked = 0;
    for (((name, var), p0), g) in trainable.params.iter().zip(&before).zip(&grads) {
        let p1: Vec<f32> = var.as_tensor().flatten_all().unwrap().to_vec1().unwrap();
        for i in 0..p1.len() {
            let (p, g) = (p0[i] as f64, g[i] as f64);
            let want = p * (1.0 - lr * wd) - lr * g / (g.abs() + eps);
            // f32 arithmetic on values of order 1: a few ulps.
            assert!(
                (p1[i] as f64 - want).abs() <= 1e-6 * (1.0 + want.abs()),
                "{name}[{i}]: {} vs {want}",
                p1[i]
            );
            checked += 1;
        }
    }
    assert!(checked > 100_000, "{checked}");
}

/// The oracle's examples for one configuration.
fn oracle_examples(r: &Rows, spec: &LossSpec, selection: Selection) -> Vec<rspo::train::Example> {
    let inputs = ExampleInputs {
        samples: ("samples", &r.samples),
        winrates: ("winrates", &r.winrates),
        policy_logprobs: ("policy logprobs", &r.policy),
        reference_logprobs: ("reference logprobs", &r.reference),
        reference_samples: spec
            .needs_reference_samples()
            .then_some(("reference samples", r.refs.as_slice())),
    };
    build_examples(&inputs, selection).unwrap()
}

fn mixed_policy_model() -> TrainableModel {
    let ck = Checkpoint::open(&fixture("rspo-oracle/policy")).unwrap();
    let w = Weights::load(&ck.dir, DType::F32, &test_device()).unwrap();
    TrainableModel::full_mixed(ck.config.clone(), &w, DType::BF16).unwrap()
}

/// Mixed precision as train-step runs on a GPU: f32 parameters (the master weights), the passes
/// in bf16 on casts of them. Every gradient lands on the f32 parameters in f32, and the loss
/// and gradient norm stay near PyTorch's float64 values.
///
/// Tolerance: the loss is built from sequence log-prob sums, which bf16 gets within
/// `d` = max(0.15, 0.06 x sqrt(tokens)) (model_fixtures.rs, `BF16_SUM_TOL_PER_SQRT_TOKEN`). For the self-play term
/// `mean_s (dt_s - target_s)^2` an error of at most d in each dt_s moves it by at most
/// `2 sqrt(L) d + d^2` (Cauchy-Schwarz over the mean); the check takes that bound for the
/// configurations without regularizers. The gradient norm is checked to 10% (2% measured on
/// the CPU): it is a sum over samples of (dt_s - target_s) times the log-prob gradients, whose
/// factors both carry the bf16 errors above.
#[test]
fn bf16_compute_keeps_f32_masters_and_matches_pytorch_loosely() {
    let o = oracle();
    let r = rows(&o);
    let trainable = mixed_policy_model();
    assert!(trainable.is_mixed());
    assert!(trainable
        .params
        .iter()
        .all(|(_, v)| v.dtype() == DType::F32));
    let model = trainable.forward_model().unwrap();
    assert_eq!(model.dtype(), DType::BF16);
    let max_tokens = o
        .samples
        .iter()
        .map(|s| s.response_ids.len())
        .max()
        .unwrap();
    let d = 0.15f64.max(0.06 * (max_tokens as f64).sqrt());
    let mut report = String::new();
    for result in &o.results {
        let c = &result.config;
        let spec = LossSpec::new(1.0 / c.eta, c.terms.clone()).unwrap();
        let examples = oracle_examples(&r, &spec, c.selection);
        let refs: Vec<_> = examples.iter().collect();
        let out = step_gradients(&model, &trainable.params, &refs, &spec, 64).unwrap();
        for (name, var) in &trainable.params {
            let g = out
                .grads
                .get(var.as_tensor())
                .unwrap_or_else(|| panic!("{}: no gradient for {name}", c.name));
            assert_eq!(g.dtype(), DType::F32, "{name}");
        }
        let norm = grad_norm(&out.grads, &trainable.params).unwrap();
        let want = result.loss;
        let line = format!(
            "{:>24}: bf16 loss {:.4} vs {want:.4}, self-play {:.4} vs {:.4}, grad norm {norm:.2} \
             vs {:.2}\n",
            c.name,
            out.values.loss,
            out.values.self_play,
            result.terms["self_play"],
            result.grad_global_norm
        );
        report.push_str(&line);
        assert!(out.values.loss.is_finite(), "{line}");
        if c.terms.is_empty() {
            let sp = result.terms["self_play"];
            let bound = 2.0 * sp.sqrt() * d + d * d;
            assert!(
                (out.values.self_play - sp).abs() <= bound,
                "{line} (bound {bound:.3})"
            );
        }
        assert!(rel(norm, result.grad_global_norm) < 0.10, "{line}");
    }
    println!("{report}");
}

/// The oracle's samples, best and worst per prompt, under the plain self-play loss at beta 0.1:
/// the setting of the mixed-precision training tests.
fn self_play_examples() -> (LossSpec, Vec<rspo::train::Example>) {
    let spec = LossSpec::new(0.1, vec![]).unwrap();
    let examples = oracle_examples(&rows(&oracle()), &spec, Selection::BestWorst);
    (spec, examples)
}

/// Training steps with bf16 passes move the loss as f32 passes do, the f32 masters keep
/// updates below bf16's resolution, and the optimizer state is f32 with no master copy of its
/// own (the parameters are the masters).
#[test]
fn bf16_steps_move_the_loss_as_f32_steps_do() {
    let (spec, examples) = self_play_examples();
    let refs: Vec<_> = examples.iter().collect();
    let run = |trainable: &TrainableModel| -> (Vec<f64>, Optimizer) {
        let mut opt = Optimizer::new(
            OptimizerKind::AdamW(AdamWConfig::default()),
            trainable.params.clone(),
        )
        .unwrap();
        let mut losses = Vec::new();
        for _ in 0..6 {
            let model = trainable.forward_model().unwrap();
            let mut out = step_gradients(&model, &trainable.params, &refs, &spec, 64).unwrap();
            clip_grad_norm(&mut out.grads, &trainable.params, 1.0).unwrap();
            opt.step(&out.grads, 1e-3).unwrap();
            losses.push(out.values.loss);
        }
        (losses, opt)
    };
    let f32_model = policy_model();
    let (f32_losses, _) = run(&f32_model);
    let mixed = mixed_policy_model();
    let before: Vec<Vec<f32>> = mixed
        .params
        .iter()
        .map(|(_, v)| v.as_tensor().flatten_all().unwrap().to_vec1().unwrap())
        .collect();
    let (bf16_losses, opt) = run(&mixed);
    println!("f32 losses:  {f32_losses:.4?}\nbf16 losses: {bf16_losses:.4?}");
    // Both descend, by similar amounts (lr 1e-3 over 6 steps takes the loss down by several
    // units, far more than bf16's noise of about 2 sqrt(L) d at the start).
    let drop_f32 = f32_losses[0] - f32_losses[5];
    let drop_bf16 = bf16_losses[0] - bf16_losses[5];
    assert!(drop_f32 > 0.0, "f32 did not descend: {f32_losses:?}");
    assert!(drop_bf16 > 0.0, "bf16 did not descend: {bf16_losses:?}");
    assert!(
        (drop_bf16 - drop_f32).abs() < 0.5 * drop_f32,
        "bf16 drop {drop_bf16} vs f32 drop {drop_f32}"
    );
    // The parameters are still f32 and moved by amounts bf16 could not hold: some entry changed
    // by less than half a bf16 ulp of its value, so a bf16 parameter would have stayed put.
    let mut sub_ulp = 0usize;
    for ((name, var), p0) in mixed.params.iter().zip(&before) {
        assert_eq!(var.dtype(), DType::F32, "{name}");
        let p1: Vec<f32> = var.as_tensor().flatten_all().unwrap().to_vec1().unwrap();
        for (a, b) in p0.iter().zip(&p1) {
            let half_ulp = a.abs() * 2f32.powi(-9);
            if a != b && (a - b).abs() < half_ulp {
                sub_ulp += 1;
            }
        }
    }
    assert!(sub_ulp > 0, "no update below bf16 resolution was kept");
    // f32 state, and no master copies: the parameters are the masters.
    let state = opt.state_tensors().unwrap();
    assert!(
        state.keys().all(|k| !k.starts_with("master.")),
        "{:?}",
        state.keys()
    );
    for (k, t) in &state {
        if k != "step" {
            assert_eq!(t.dtype(), DType::F32, "{k}");
        }
    }
}

/// LoRA in mixed precision: the base frozen in bf16, the adapters f32 parameters that get f32
/// gradients through their bf16 casts, and the merged checkpoint in bf16.
#[test]
fn bf16_lora_trains_f32_adapters() {
    let (spec, examples) = self_play_examples();
    let refs: Vec<_> = examples.iter().collect();
    let ck = Checkpoint::open(&fixture("rspo-oracle/policy")).unwrap();
    let w = Weights::load(&ck.dir, DType::F32, &test_device()).unwrap();
    let lora = rspo::train::LoraSpec {
        rank: 4,
        alpha: 8.0,
        targets: vec!["q_proj".into(), "v_proj".into()],
    };
    let trainable =
        TrainableModel::lora_mixed(ck.config.clone(), &w, &lora, 0, DType::BF16).unwrap();
    assert!(trainable.is_mixed());
    let model = trainable.forward_model().unwrap();
    assert_eq!(model.dtype(), DType::BF16);
    let out = step_gradients(&model, &trainable.params, &refs, &spec, 64).unwrap();
    for (name, var) in &trainable.params {
        assert_eq!(var.dtype(), DType::F32, "{name}");
        let g = out.grads.get(var.as_tensor()).unwrap();
        assert_eq!(g.dtype(), DType::F32, "{name}");
    }
    let merged = trainable.checkpoint_tensors().unwrap();
    assert!(merged.values().all(|t| t.dtype() == DType::BF16));
}
