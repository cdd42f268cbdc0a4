//! `train-step`: one RSPO iteration's policy update. Reads the policy, its samples with their win
//! rates and the policy's and the reference's log-probs of them, minimises DESIGN.md's loss and
//! writes the updated policy as a Hugging Face directory plus `train_log.parquet`.
//!
//! Output folder (`--out`):
//! - `model/`: the full checkpoint (full fine-tuning, or LoRA with `--merge`).
//! - `adapter/`: with LoRA, the adapter in PEFT's layout.
//! - `train_log.parquet`: one row per optimizer step; written last, its fingerprint makes a
//!   finished run a no-op.
//! - `.train-state/`: while running, the trainable weights, optimizer state and log after each
//!   saved step, so an interrupted run resumes at the next step; removed at the end.

use anyhow::{bail, ensure, Context, Result};
use candle_core::{DType, Device};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::time::Instant;

use super::context::{refuse_overwriting_inputs, Outcome, StageOutput};
use super::output_lock::lock_outputs;
use super::progress::Progress;
use super::settings::Settings;
use super::train_state::TrainState;
use crate::data::{
    read_rows, write_rows, DigestCache, FileKind, FileMeta, LogprobRow, ModelRef, SampleRow,
    TrainLogRow, WinrateRow,
};
use crate::model::{
    dtype_for, model_ref, parse_device, resolve_model, Checkpoint, ModelConfig, Weights,
};
use crate::train::{
    build_examples, clip_grad_norm, parse_regularizers, plan_steps, step_gradients_with,
    write_adapter_dir, write_model_dir, AdamWConfig, Example, ExampleInputs, LinearSchedule,
    LoraSpec, LossSpec, Optimizer, OptimizerKind, Regularizer, RmsPropConfig, Selection,
    StepOptions, StepPlan, TrainableModel, Truncation,
};

/// The stage name in metadata and fingerprints.
pub const STAGE: &str = "train-step";
/// Set to N, the run stops with an error after N optimizer steps (state saved), as an
/// interruption would; the next run resumes. For tests of resumption.
pub const STOP_AFTER_ENV: &str = "RSPO_TRAIN_STEP_STOP_AFTER";

/// The `[train-step]` section of a pipeline file; flags override it.
#[derive(Debug, Clone, Serialize, Deserialize, clap::Args)]
pub struct TrainStepSettings {
    /// `sppo` (no regularizer) or `rspo-paper` (forward_kl_is 0.1 clip 10 + reverse_kl 0.5).
    #[arg(long)]
    pub preset: Option<String>,
    /// A regularizer `KIND=COEF[,clip=C]`, added to the preset's (repeat the flag for more).
    /// Kinds: reverse_kl, forward_kl (needs --reference-samples; `,norm=padded` divides by the
    /// official B x (T-1) instead of the token count), forward_kl_is, chi2, and the official
    /// code's chisqsm1, entropy, reverseklnoent.
    #[arg(long = "term", value_name = "KIND=COEF[,clip=C]")]
    pub terms: Vec<String>,
    /// Self-play temperature; eta = 1 / beta.
    #[arg(long, default_value_t = 0.001)]
    pub beta: f64,
    /// best_worst (the best and worst sample of each prompt, as SPPO) or all.
    #[arg(long, default_value = "best_worst")]
    pub selection: Selection,
    /// Cut prompt + response to this many tokens as the official trainer does (needs
    /// --max-prompt-length): when the prompt and the longest selected response exceed it, the
    /// prompt keeps its last --max-prompt-length tokens; if still too long, each response keeps
    /// its first max-length - max-prompt-length tokens [default: no limit].
    #[arg(long, value_name = "TOKENS", requires = "max_prompt_length")]
    pub max_length: Option<usize>,
    /// The prompt's share of --max-length (the paper: 1024 and 512).
    #[arg(long, value_name = "TOKENS", requires = "max_length")]
    pub max_prompt_length: Option<usize>,
    /// adamw or rmsprop.
    #[arg(long, default_value = "rmsprop")]
    pub optimizer: String,
    /// Peak learning rate (linear warmup, then linear decay to 0).
    #[arg(long, default_value_t = 5e-7)]
    pub lr: f64,
    /// Share of the optimizer steps spent warming up.
    #[arg(long, default_value_t = 0.1)]
    pub warmup_ratio: f64,
    /// Weight decay: decoupled for AdamW, an L2 term for RMSprop (Hugging Face's default 0).
    #[arg(long, default_value_t = 0.0)]
    pub weight_decay: f64,
    /// Passes over the examples.
    #[arg(long, default_value_t = 1)]
    pub epochs: usize,
    /// Examples (prompts with their selected samples) per optimizer step.
    #[arg(long, default_value_t = 64)]
    pub batch_size: usize,
    /// Sequences run through the model at once [default: the whole step]. The gradient is the
    /// same sum, up to float rounding; smaller micro-batches need less memory and are often
    /// faster on CPU (SmolLM2-135M, 16 sequences a step: 4 at once peaks at 2.5 GB, not 15 GB).
    #[arg(long)]
    pub micro_batch_size: Option<usize>,
    /// Activation checkpointing: keep only each decoder layer's input in the forward pass and
    /// recompute the layer in the backward pass. The same gradients up to float rounding, for
    /// less memory and one more forward pass of compute.
    #[arg(long)]
    pub gradient_checkpointing: bool,
    /// Clip the gradient's global L2 norm to this.
    #[arg(long, default_value_t = 1.0)]
    pub max_grad_norm: f64,
    /// Shuffling and LoRA initialisation.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// LoRA rank [default: none, full fine-tuning].
    #[arg(long)]
    pub lora_rank: Option<usize>,
    /// LoRA alpha (scale alpha / r); PEFT's default.
    #[arg(long, default_value_t = 8.0)]
    pub lora_alpha: f64,
    /// LoRA target modules, comma-separated.
    #[arg(long, value_delimiter = ',', default_values_t = ["q_proj".to_string(), "v_proj".to_string()])]
    pub lora_targets: Vec<String>,
    /// With LoRA, also write the merged full checkpoint to `model/`.
    #[arg(long)]
    pub merge: bool,
    /// cpu, cuda or cuda:N.
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// f32 or bf16 [default: f32 on CPU; bf16 on CUDA, with f32 optimizer state and master
    /// weights].
    #[arg(long)]
    pub dtype: Option<String>,
    /// Save the resumable state every this many optimizer steps (and after the last).
    #[arg(long, default_value_t = 1)]
    pub state_every: usize,
}

impl Default for TrainStepSettings {
    fn default() -> Self {
        Self::defaults()
    }
}

impl Settings for TrainStepSettings {
    const SECTION: &'static str = "train-step";
}

/// What shapes the trained model: the fingerprinted settings (no micro-batch size, gradient
/// checkpointing, device or state interval).
#[derive(Debug, Clone, Serialize)]
pub struct TrainContent {
    pub regularizers: Vec<Regularizer>,
    pub beta: f64,
    pub selection: Selection,
    pub optimizer: OptimizerKind,
    pub lr: f64,
    pub warmup_ratio: f64,
    pub epochs: usize,
    pub batch_size: usize,
    pub max_grad_norm: f64,
    pub seed: u64,
    pub lora: Option<LoraSpec>,
    pub merge: bool,
    pub dtype: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub truncation: Option<Truncation>,
}

impl TrainStepSettings {
    /// `--max-length` and `--max-prompt-length`, both or neither.
    pub fn truncation(&self) -> Result<Option<Truncation>> {
        match (self.max_length, self.max_prompt_length) {
            (None, None) => Ok(None),
            (Some(max_length), Some(max_prompt_length)) => {
                Ok(Some(Truncation::new(max_length, max_prompt_length)?))
            }
            _ => bail!("--max-length and --max-prompt-length go together: give both or neither"),
        }
    }

    /// The loss: beta and the regularizers, the preset's then `terms`.
    pub fn loss_spec(&self) -> Result<LossSpec> {
        let mut regularizers = match &self.preset {
            Some(p) => {
                parse_regularizers(&[p.as_str()]).with_context(|| format!("--preset {p}"))?
            }
            None => Vec::new(),
        };
        for spec in &self.terms {
            regularizers.push(spec.parse().with_context(|| format!("--term {spec}"))?);
        }
        LossSpec::new(self.beta, regularizers).context("--beta, --preset and --term")
    }

    pub fn optimizer_kind(&self) -> Result<OptimizerKind> {
        match self.optimizer.as_str() {
            "adamw" => Ok(OptimizerKind::AdamW(AdamWConfig {
                weight_decay: self.weight_decay,
                ..AdamWConfig::default()
            })),
            "rmsprop" => Ok(OptimizerKind::RmsProp(RmsPropConfig {
                weight_decay: self.weight_decay,
                ..RmsPropConfig::default()
            })),
            other => bail!("--optimizer {other}: expected adamw or rmsprop"),
        }
    }

    pub fn lora(&self) -> Option<LoraSpec> {
        self.lora_rank.map(|rank| LoraSpec {
            rank,
            alpha: self.lora_alpha,
            targets: self.lora_targets.clone(),
        })
    }

    fn check(&self) -> Result<()> {
        ensure!(
            self.beta.is_finite() && self.beta > 0.0,
            "--beta {}: expected a number > 0",
            self.beta
        );
        ensure!(
            self.lr.is_finite() && self.lr >= 0.0,
            "--lr {}: expected a number >= 0",
            self.lr
        );
        ensure!(
            (0.0..=1.0).contains(&self.warmup_ratio),
            "--warmup-ratio {}: expected a number in [0, 1]",
            self.warmup_ratio
        );
        ensure!(
            self.weight_decay.is_finite() && self.weight_decay >= 0.0,
            "--weight-decay {}: expected a number >= 0",
            self.weight_decay
        );
        ensure!(self.epochs >= 1, "--epochs must be at least 1");
        ensure!(self.batch_size >= 1, "--batch-size must be at least 1");
        ensure!(
            self.micro_batch_size != Some(0),
            "--micro-batch-size must be at least 1"
        );
        ensure!(
            self.max_grad_norm.is_finite() && self.max_grad_norm > 0.0,
            "--max-grad-norm {}: expected a number > 0",
            self.max_grad_norm
        );
        ensure!(self.state_every >= 1, "--state-every must be at least 1");
        self.truncation()?;
        if let Some(spec) = self.lora() {
            spec.validate()?;
        } else {
            ensure!(!self.merge, "--merge needs LoRA (--lora-rank)");
        }
        Ok(())
    }

    /// What shapes the trained model, for the fingerprint.
    fn content(&self, spec: &LossSpec, optimizer: OptimizerKind, dtype: DType) -> TrainContent {
        TrainContent {
            regularizers: spec.regularizers().to_vec(),
            beta: self.beta,
            selection: self.selection,
            optimizer,
            lr: self.lr,
            warmup_ratio: self.warmup_ratio,
            epochs: self.epochs,
            batch_size: self.batch_size,
            max_grad_norm: self.max_grad_norm,
            seed: self.seed,
            lora: self.lora(),
            merge: self.merge,
            dtype: format!("{dtype:?}").to_lowercase(),
            truncation: self.truncation().ok().flatten(),
        }
    }
}

pub struct TrainStepJob<'a> {
    /// The policy pi_t: a model directory, Hub id or GGUF file.
    pub policy: &'a str,
    pub samples: &'a Path,
    pub winrates: &'a Path,
    pub policy_logprobs: &'a Path,
    pub reference_logprobs: &'a Path,
    /// Samples drawn from pi_ref, for the forward_kl term.
    pub reference_samples: Option<&'a Path>,
    pub out: &'a Path,
    pub settings: &'a TrainStepSettings,
    pub force: bool,
}

/// Runs `train-step`. Returns `Written { rows }` with the number of optimizer steps, or
/// `UpToDate` when `--out` already holds this run's result.
pub fn train_step(job: &TrainStepJob) -> Result<Outcome> {
    let s = job.settings;
    s.check()?;
    let spec = s.loss_spec()?;
    let optimizer = s.optimizer_kind()?;
    let inputs = TrainInputs::read(job, &spec)?;
    let device = parse_device(&s.device)?;
    let dtype = dtype_for(s.dtype.as_deref(), &device)?;
    let output = inputs.output(job, &s.content(&spec, optimizer, dtype))?;
    // Also finds an unwritable --out before any weights are loaded.
    let written = written_outputs(job.out);
    let _lock = lock_outputs(
        &written
            .iter()
            .map(|p| ("--out", p.as_path()))
            .collect::<Vec<_>>(),
    )?;
    let state = TrainState::new(job.out, output.fingerprint());
    let dirs = expected_dirs(job.out, s);
    if !job.force && output.is_up_to_date() && dirs.iter().all(|d| d.is_dir()) {
        return Ok(Outcome::UpToDate);
    }
    if job.force {
        state.remove()?;
    }

    let examples = inputs.examples(job, s.selection, s.truncation()?)?;
    let mut training = Training::new(job, &inputs, &spec, &examples, optimizer, dtype, &device)?;
    let log = state.resume(
        &training.trainable,
        &mut training.optimizer,
        &device,
        training.plan.len(),
    )?;
    let log = training.run(&state, log)?;
    write_outputs(job, &inputs.policy_dir, &training.trainable, &output, &log)?;
    state.remove()?;
    Ok(Outcome::Written { rows: log.len() })
}

fn label(p: &Path) -> String {
    p.display().to_string()
}

/// The input files, read and checked to belong together, and the policy's config.
struct TrainInputs<'a> {
    policy_dir: PathBuf,
    config: ModelConfig,
    policy: ModelRef,
    samples: (FileMeta, Vec<SampleRow>),
    winrates: (FileMeta, Vec<WinrateRow>),
    policy_logprobs: (FileMeta, Vec<LogprobRow>),
    reference_logprobs: (FileMeta, Vec<LogprobRow>),
    /// With a forward_kl term: samples drawn from pi_ref.
    reference_samples: Option<(&'a Path, FileMeta, Vec<SampleRow>)>,
}

impl<'a> TrainInputs<'a> {
    /// Reads every input and refuses files that do not belong together, before any weights are
    /// loaded.
    fn read(job: &TrainStepJob<'a>, spec: &LossSpec) -> Result<Self> {
        let policy_dir = resolve_model(job.policy)?;
        refuse_overwriting(job, &policy_dir)?;
        let ck =
            Checkpoint::open(&policy_dir).with_context(|| format!("--policy {}", job.policy))?;
        let samples = read_rows::<SampleRow>(job.samples)?;
        let winrates = read_rows::<WinrateRow>(job.winrates)?;
        let policy_logprobs = read_rows::<LogprobRow>(job.policy_logprobs)?;
        let reference_logprobs = read_rows::<LogprobRow>(job.reference_logprobs)?;
        ensure!(
            !samples.1.is_empty(),
            "{}: no samples",
            job.samples.display()
        );
        for (path, (meta, _), role) in [
            (job.policy_logprobs, &policy_logprobs, "policy"),
            (job.reference_logprobs, &reference_logprobs, "reference"),
        ] {
            check_logprobs_belong(path, meta, role, job.samples, &samples.0)?;
        }
        check_winrates_belong(job.winrates, &winrates.0, job.samples, &samples.0)?;
        let policy = model_ref(&policy_dir, DigestCache::recompute_if(job.force))?;
        check_policy_logprobs(job, &policy_logprobs.0, &policy)?;
        warn_if_off_policy(job, &samples.0, &policy);
        let reference_samples = read_reference_samples(job, spec, &reference_logprobs.0)?;
        Ok(TrainInputs {
            policy_dir,
            config: ck.config,
            policy,
            samples,
            winrates,
            policy_logprobs,
            reference_logprobs,
            reference_samples,
        })
    }

    /// `train_log.parquet` with the fingerprint of `content`, the inputs and the policy.
    fn output(&self, job: &TrainStepJob, content: &TrainContent) -> Result<StageOutput> {
        let mut inputs: Vec<(&Path, &FileMeta)> = vec![
            (job.samples, &self.samples.0),
            (job.winrates, &self.winrates.0),
            (job.policy_logprobs, &self.policy_logprobs.0),
            (job.reference_logprobs, &self.reference_logprobs.0),
        ];
        if let Some((path, meta, _)) = &self.reference_samples {
            inputs.push((path, meta));
        }
        StageOutput::new(
            &job.out.join("train_log.parquet"),
            FileKind::TrainLog,
            STAGE,
            content,
            &inputs,
            &[("policy", self.policy.clone())],
        )
    }

    /// The training examples, cut to `truncation`, each sequence checked to fit the model's
    /// context.
    fn examples(
        &self,
        job: &TrainStepJob,
        selection: Selection,
        truncation: Option<Truncation>,
    ) -> Result<Vec<Example>> {
        let (samples_label, winrates_label) = (label(job.samples), label(job.winrates));
        let (policy_label, reference_label) =
            (label(job.policy_logprobs), label(job.reference_logprobs));
        let ref_label = self
            .reference_samples
            .as_ref()
            .map(|(p, _, _)| label(p))
            .unwrap_or_default();
        let mut examples = build_examples(
            &ExampleInputs {
                samples: (&samples_label, &self.samples.1),
                winrates: (&winrates_label, &self.winrates.1),
                policy_logprobs: (&policy_label, &self.policy_logprobs.1),
                reference_logprobs: (&reference_label, &self.reference_logprobs.1),
                reference_samples: self
                    .reference_samples
                    .as_ref()
                    .map(|(_, _, rows)| (ref_label.as_str(), rows.as_slice())),
            },
            selection,
        )?;
        if let Some(t) = truncation {
            let cut = t.apply(
                &mut examples,
                &self.policy_logprobs.1,
                &self.reference_logprobs.1,
            );
            if cut.prompts + cut.responses > 0 {
                eprintln!(
                    "train-step: --max-length {} --max-prompt-length {}: cut the prompt of {} and \
                     the response of {} selected samples; a cut response's log-probs are the sum \
                     over its kept tokens, a cut prompt's samples keep the logprobs files' values \
                     (computed on the whole prompt)",
                    t.max_length, t.max_prompt_length, cut.prompts, cut.responses
                );
            }
        }
        check_context(&examples, self.config.max_position_embeddings)?;
        Ok(examples)
    }
}

/// Refuses log-probs that were not computed on these samples, by the expected model role.
/// Refuses an `--out` that is an input file, or whose files would overwrite an input or the
/// policy.
fn refuse_overwriting(job: &TrainStepJob, policy_dir: &Path) -> Result<()> {
    let mut inputs = vec![
        ("--samples", job.samples),
        ("--winrates", job.winrates),
        ("--policy-logprobs", job.policy_logprobs),
        ("--reference-logprobs", job.reference_logprobs),
    ];
    inputs.extend(job.reference_samples.map(|p| ("--reference-samples", p)));
    refuse_overwriting_inputs(&[("--out", job.out)], &inputs, &[])?;
    let written = written_outputs(job.out);
    let outputs: Vec<(&str, &Path)> = written.iter().map(|p| ("--out", p.as_path())).collect();
    refuse_overwriting_inputs(&outputs, &inputs, &[("--policy", policy_dir)])
}

/// What train-step writes into `--out`.
fn written_outputs(out: &Path) -> [PathBuf; 3] {
    ["train_log.parquet", "model", "adapter"].map(|f| out.join(f))
}

fn check_logprobs_belong(
    path: &Path,
    meta: &FileMeta,
    role: &str,
    samples: &Path,
    samples_meta: &FileMeta,
) -> Result<()> {
    if let Some(found) = meta.role() {
        ensure!(
            found == role,
            "{}: these are {found} log-probs (rspo.role), expected {role} log-probs",
            path.display()
        );
    }
    ensure!(
        meta.inputs
            .iter()
            .any(|i| i.fingerprint == samples_meta.fingerprint),
        "{}: these log-probs were computed on other samples (input fingerprints {:?}), not on {} \
         (fingerprint {}); rerun `generate logprobs --samples {}`",
        path.display(),
        meta.inputs
            .iter()
            .map(|i| i.fingerprint.as_str())
            .collect::<Vec<_>>(),
        samples.display(),
        samples_meta.fingerprint,
        samples.display()
    );
    Ok(())
}

/// Refuses win rates whose preferences judged other samples than `samples` (the chain
/// winrates -> preferences -> samples that `rspo.preference_inputs` records).
fn check_winrates_belong(
    path: &Path,
    meta: &FileMeta,
    samples: &Path,
    samples_meta: &FileMeta,
) -> Result<()> {
    let Some(inputs) = meta
        .preference_inputs()
        .with_context(|| format!("{}", path.display()))?
    else {
        bail!(
            "{}: these win rates do not record the samples they came from (no \
             rspo.preference_inputs); expected the output of `estimate-winrate` on the \
             preferences of {}; rerun estimate-winrate",
            path.display(),
            samples.display()
        );
    };
    ensure!(
        inputs
            .iter()
            .any(|i| i.fingerprint == samples_meta.fingerprint),
        "{}: these win rates come from preferences of other samples ({}), not of {} \
         (fingerprint {}); rerun `score --samples {}` and `estimate-winrate`",
        path.display(),
        inputs
            .iter()
            .map(|i| format!("{} fingerprint {}", i.path, i.fingerprint))
            .collect::<Vec<_>>()
            .join(", "),
        samples.display(),
        samples_meta.fingerprint,
        samples.display()
    );
    Ok(())
}

/// Refuses policy log-probs that another model than `--policy` computed.
fn check_policy_logprobs(job: &TrainStepJob, meta: &FileMeta, policy: &ModelRef) -> Result<()> {
    match meta.models.get("policy") {
        Some(m) if m.digest == policy.digest => Ok(()),
        Some(m) => bail!(
            "{}: these log-probs were computed by another policy ({}, digest {}) than --policy {} \
             (digest {}); rerun `generate logprobs --role policy --model {}`",
            job.policy_logprobs.display(),
            m.path,
            m.digest,
            job.policy,
            policy.digest,
            job.policy
        ),
        None => bail!(
            "{}: no policy model in rspo.models; expected the log-probs of --policy {} written by \
             `generate logprobs --role policy`",
            job.policy_logprobs.display(),
            job.policy
        ),
    }
}

/// Samples drawn from another model than `--policy` make an off-policy update: allowed, but said.
fn warn_if_off_policy(job: &TrainStepJob, samples_meta: &FileMeta, policy: &ModelRef) {
    if let Some(m) = samples_meta.models.get("policy") {
        if m.digest != policy.digest {
            eprintln!(
                "train-step: warning: {} was sampled from {} (digest {}), not from --policy {}; \
                 the update is off-policy",
                job.samples.display(),
                m.path,
                m.digest,
                job.policy
            );
        }
    }
}

/// `--reference-samples` when the loss has a forward_kl term, checked to be drawn from the
/// model whose reference log-probs these are.
fn read_reference_samples<'a>(
    job: &TrainStepJob<'a>,
    spec: &LossSpec,
    reference_logprobs_meta: &FileMeta,
) -> Result<Option<(&'a Path, FileMeta, Vec<SampleRow>)>> {
    if !spec.needs_reference_samples() {
        if let Some(path) = job.reference_samples {
            eprintln!(
                "train-step: note: no forward_kl term, so --reference-samples {} is not used",
                path.display()
            );
        }
        return Ok(None);
    }
    let path = job.reference_samples.context(
        "the forward_kl term needs --reference-samples: samples drawn from pi_ref \
         (`generate sample --model <reference>`)",
    )?;
    let (meta, rows) = read_rows::<SampleRow>(path)?;
    let reference = reference_logprobs_meta.models.get("reference");
    if let (Some(sampled_by), Some(reference)) = (meta.models.get("policy"), reference) {
        ensure!(
            sampled_by.digest == reference.digest,
            "{}: these samples were drawn from {} (digest {}), but the reference log-probs {} \
             are of {} (digest {}); the forward_kl term needs samples from pi_ref",
            path.display(),
            sampled_by.path,
            sampled_by.digest,
            job.reference_logprobs.display(),
            reference.path,
            reference.digest
        );
    }
    Ok(Some((path, meta, rows)))
}

/// Refuses a sequence longer than the model's context.
fn check_context(examples: &[Example], limit: usize) -> Result<()> {
    for e in examples {
        let lens = e
            .samples
            .iter()
            .map(|x| (x.sample_idx, x.prompt.len() + x.response.len()))
            .chain(
                e.reference
                    .iter()
                    .map(|r| (r.sample_idx, r.prompt.len() + r.response.len())),
            );
        for (idx, n) in lens {
            ensure!(
                n <= limit,
                "sample ({:?}, {idx}) is {n} tokens, longer than the model's context of {limit} \
                 (max_position_embeddings)",
                e.prompt_id
            );
        }
    }
    Ok(())
}

/// Which output folders a finished run has.
fn expected_dirs(out: &Path, settings: &TrainStepSettings) -> Vec<PathBuf> {
    let mut dirs = Vec::new();
    if settings.lora_rank.is_none() || settings.merge {
        dirs.push(out.join("model"));
    }
    if settings.lora_rank.is_some() {
        dirs.push(out.join("adapter"));
    }
    dirs
}

/// The optimizer loop and what it works on.
struct Training<'a> {
    settings: &'a TrainStepSettings,
    spec: &'a LossSpec,
    examples: &'a [Example],
    plan: Vec<StepPlan>,
    schedule: LinearSchedule,
    trainable: TrainableModel,
    optimizer: Optimizer,
}

impl<'a> Training<'a> {
    /// The step plan and schedule, the policy's weights as trainable parameters, a fresh
    /// optimizer.
    fn new(
        job: &TrainStepJob<'a>,
        inputs: &TrainInputs,
        spec: &'a LossSpec,
        examples: &'a [Example],
        optimizer: OptimizerKind,
        dtype: DType,
        device: &Device,
    ) -> Result<Self> {
        let s = job.settings;
        let plan = plan_steps(examples.len(), s.batch_size, s.epochs, s.seed)?;
        let schedule = LinearSchedule::with_warmup_ratio(s.lr, s.warmup_ratio, plan.len() as u64)?;
        // f32 master weights whatever the compute dtype: the passes run on bf16 casts of them
        // (TrainableModel::forward_model), gradients and optimizer state stay f32.
        let weights = Weights::load(&inputs.policy_dir, DType::F32, device)
            .with_context(|| format!("--policy {}: cannot load the weights", job.policy))?;
        let config = inputs.config.clone();
        let trainable = match s.lora() {
            None => TrainableModel::full_mixed(config, &weights, dtype)?,
            Some(lora) => TrainableModel::lora_mixed(config, &weights, &lora, s.seed, dtype)?,
        };
        drop(weights);
        let optimizer = Optimizer::new(optimizer, trainable.params.clone())?;
        Ok(Training {
            settings: s,
            spec,
            examples,
            plan,
            schedule,
            trainable,
            optimizer,
        })
    }

    /// Runs the plan from where `log` ends, saving the state every `--state-every` steps.
    fn run(&mut self, state: &TrainState, mut log: Vec<TrainLogRow>) -> Result<Vec<TrainLogRow>> {
        let total = self.plan.len() as u64;
        let start = log.len() as u64;
        let stop_after: Option<u64> = std::env::var(STOP_AFTER_ENV)
            .ok()
            .and_then(|v| v.parse().ok());
        let mut unsaved = 0usize;
        let mut progress = Progress::new(STAGE, total, "tokens");
        progress.advance(start);
        for k in start as usize..self.plan.len() {
            let started = Instant::now();
            let row = self.step(k)?;
            eprintln!(
                "train-step: step {}/{total}: loss {:.6e}, grad norm {:.4e}, lr {:.3e}, {} tokens in {:.2} s",
                row.step,
                row.loss,
                row.grad_norm,
                row.lr,
                row.tokens,
                started.elapsed().as_secs_f64()
            );
            progress.add_units(row.tokens);
            log.push(row);
            progress.advance(1);
            let done_here = log.len() as u64 - start;
            let stop = stop_after.is_some_and(|n| done_here >= n) && (log.len() as u64) < total;
            unsaved += 1;
            if unsaved == self.settings.state_every || stop {
                unsaved = 0;
                state.save(&log, &self.trainable, &self.optimizer)?;
            }
            if stop {
                bail!(
                    "stopped after {done_here} optimizer steps as {STOP_AFTER_ENV} asks; the state \
                     is in {} and the next run resumes at step {}",
                    state.dir().display(),
                    log.len() + 1
                );
            }
        }
        progress.finish();
        Ok(log)
    }

    /// Optimizer step `k` of the plan: the gradients of the loss, clipped, the update; its row
    /// of the train log.
    fn step(&mut self, k: usize) -> Result<TrainLogRow> {
        let s = self.settings;
        let step = &self.plan[k];
        let batch: Vec<&Example> = step.examples.iter().map(|&i| &self.examples[i]).collect();
        let where_ = || {
            let prompts: Vec<&str> = batch.iter().map(|e| e.prompt_id.as_str()).collect();
            format!(
                "step {}/{} (epoch {}, batch of {} prompts: {}); no checkpoint was written",
                k + 1,
                self.plan.len(),
                step.epoch + 1,
                prompts.len(),
                describe_batch(&prompts)
            )
        };
        let lr = self.schedule.lr(k as u64);
        let params = &self.trainable.params;
        let model = self.trainable.forward_model().with_context(where_)?;
        let options = StepOptions {
            micro_batch_size: s.micro_batch_size.unwrap_or(usize::MAX),
            gradient_checkpointing: s.gradient_checkpointing,
        };
        let mut out =
            step_gradients_with(&model, params, &batch, self.spec, options).with_context(where_)?;
        drop(model);
        let grad_norm =
            clip_grad_norm(&mut out.grads, params, s.max_grad_norm).with_context(where_)?;
        self.optimizer.step(&out.grads, lr).with_context(where_)?;
        drop(out.grads);
        let loss = out.values;
        Ok(TrainLogRow {
            step: k as u64 + 1,
            epoch: step.epoch_after,
            loss: loss.loss,
            self_play: loss.self_play,
            terms: loss.terms.into_iter().collect(),
            grad_norm,
            lr,
            tokens: out.tokens,
            mean_logratio_t: loss.mean_logratio_t,
            mean_logratio_ref: loss.mean_logratio_ref,
        })
    }
}

fn describe_batch(prompts: &[&str]) -> String {
    const SHOWN: usize = 4;
    let mut s = prompts
        .iter()
        .take(SHOWN)
        .map(|p| format!("{p:?}"))
        .collect::<Vec<_>>()
        .join(", ");
    if prompts.len() > SHOWN {
        s.push_str(&format!(" and {} more", prompts.len() - SHOWN));
    }
    s
}

/// The model first, the log (whose fingerprint marks the run done) last.
fn write_outputs(
    job: &TrainStepJob,
    policy_dir: &Path,
    trainable: &TrainableModel,
    output: &StageOutput,
    log: &[TrainLogRow],
) -> Result<()> {
    let tensors = match &trainable.lora {
        Some(spec) => {
            write_adapter_dir(
                policy_dir,
                &trainable.params,
                spec,
                &job.out.join("adapter"),
            )?;
            job.settings
                .merge
                .then(|| trainable.checkpoint_tensors())
                .transpose()?
        }
        None => Some(trainable.checkpoint_tensors()?),
    };
    if let Some(tensors) = tensors {
        write_model_dir(policy_dir, &tensors, &job.out.join("model"))
            .with_context(|| format!("cannot write {}", job.out.join("model").display()))?;
    }
    write_rows(&output.path, &output.meta, log)?;
    Ok(())
}
