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
use candle_core::{DType, Tensor};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::time::Instant;

use super::context::{model_ref, parse_device, resolve_model, Outcome, StageOutput};
use super::generate::dtype_for;
use super::progress::Progress;
use super::settings::Settings;
use crate::data::{
    read_rows, write_rows, FileKind, FileMeta, LogprobRow, SampleRow, TrainLogRow, WinrateRow,
};
use crate::model::{Checkpoint, Weights};
use crate::train::{
    build_examples, clip_grad_norm, parse_regularizers, plan_steps, step_gradients,
    write_adapter_dir, write_model_dir, AdamWConfig, ExampleInputs, LinearSchedule, LoraSpec,
    LossSpec, Optimizer, OptimizerKind, Regularizer, RmsPropConfig, Selection, TrainableModel,
};

/// The stage name in metadata and fingerprints.
pub const STAGE: &str = "train-step";
/// Set to N, the run stops with an error after N optimizer steps (state saved), as an
/// interruption would; the next run resumes. For tests of resumption.
pub const STOP_AFTER_ENV: &str = "RSPO_TRAIN_STEP_STOP_AFTER";

/// Runs candle's elementwise CPU ops on the calling thread unless `CANDLE_NUM_THREADS` says
/// otherwise. Call first thing, before any tensor op. candle 0.11 runs them on a spin-waiting
/// thread pool of its own beside gemm's rayon pool; a backward pass is hundreds of small
/// gradient additions, and on the 2-core benchmark machine the waits cost more than the
/// parallelism gains (train-step bench: about 300 instead of about 230 tokens/s). gemm keeps
/// its threads (`RAYON_NUM_THREADS`).
pub fn prefer_serial_elementwise_ops() {
    if std::env::var_os("CANDLE_NUM_THREADS").is_none() {
        std::env::set_var("CANDLE_NUM_THREADS", "1");
    }
}

/// Serves large tensor buffers from the heap instead of fresh `mmap`s (glibc): a training step
/// frees and re-allocates the same large gradient and logit buffers many times, and each fresh
/// mapping is page-faulted and zeroed by the kernel again (about 10% of a step in perf). Costs
/// about 100 MiB of peak RSS on the benchmark shape for about 15% more tokens/s. Returns
/// whether the allocator took the setting; a no-op elsewhere.
pub fn keep_large_allocations() -> bool {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        use std::os::raw::c_int;
        extern "C" {
            fn mallopt(param: c_int, value: c_int) -> c_int;
        }
        const M_MMAP_THRESHOLD: c_int = -3;
        // Safety: mallopt only changes allocator parameters; called before threads start.
        unsafe { mallopt(M_MMAP_THRESHOLD, c_int::MAX) == 1 }
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    {
        false
    }
}

/// The `[train-step]` section of a pipeline file; flags override it.
#[derive(Debug, Clone, Serialize, Deserialize, clap::Args)]
pub struct TrainStepSettings {
    /// `sppo` (no regularizer) or `rspo-paper` (forward_kl_is 0.1 clip 10 + reverse_kl 0.5).
    #[arg(long)]
    pub preset: Option<String>,
    /// A regularizer `KIND=COEF[,clip=C]`, added to the preset's (repeat the flag for more).
    /// Kinds: reverse_kl, forward_kl (needs --reference-samples), forward_kl_is, chi2.
    #[arg(long = "term", value_name = "KIND=COEF[,clip=C]")]
    pub terms: Vec<String>,
    /// Self-play temperature; eta = 1 / beta.
    #[arg(long, default_value_t = 0.001)]
    pub beta: f64,
    /// best_worst (the best and worst sample of each prompt, as SPPO) or all.
    #[arg(long, default_value = "best_worst")]
    pub selection: Selection,
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
    /// Sequences run through the model at once [default: the whole step]. Never changes the
    /// result, only memory.
    #[arg(long)]
    pub micro_batch_size: Option<usize>,
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

/// What shapes the trained model: the fingerprinted settings (no micro-batch size, device or
/// state interval).
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
}

impl TrainStepSettings {
    /// The regularizers: the preset's, then `terms`.
    pub fn regularizers(&self) -> Result<Vec<Regularizer>> {
        let mut regs = match &self.preset {
            Some(p) => {
                parse_regularizers(&[p.as_str()]).with_context(|| format!("--preset {p}"))?
            }
            None => Vec::new(),
        };
        for spec in &self.terms {
            regs.push(spec.parse().with_context(|| format!("--term {spec}"))?);
        }
        crate::train::regularizer::check_distinct(&regs)
            .context("--preset and --term name a kind twice")?;
        Ok(regs)
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
        if let Some(spec) = self.lora() {
            spec.validate()?;
        } else {
            ensure!(!self.merge, "--merge needs LoRA (--lora-rank)");
        }
        Ok(())
    }
}

pub struct TrainStepJob<'a> {
    /// The policy pi_t: a model directory or Hub id.
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

/// The folder of the resumable state inside `--out`.
pub fn state_dir(out: &Path) -> PathBuf {
    out.join(".train-state")
}

fn label(p: &Path) -> String {
    p.display().to_string()
}

/// Refuses log-probs that were not computed on these samples, by the expected model role.
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

#[derive(Serialize, Deserialize)]
struct LogEntry {
    step: u64,
    epoch: f64,
    loss: f64,
    self_play: f64,
    terms: BTreeMap<String, f64>,
    grad_norm: f64,
    lr: f64,
    tokens: u64,
    seconds: f64,
    mean_logratio_t: f64,
    mean_logratio_ref: f64,
}

impl From<&TrainLogRow> for LogEntry {
    fn from(r: &TrainLogRow) -> Self {
        LogEntry {
            step: r.step,
            epoch: r.epoch,
            loss: r.loss,
            self_play: r.self_play,
            terms: r.terms.clone(),
            grad_norm: r.grad_norm,
            lr: r.lr,
            tokens: r.tokens,
            seconds: r.seconds,
            mean_logratio_t: r.mean_logratio_t,
            mean_logratio_ref: r.mean_logratio_ref,
        }
    }
}

impl From<LogEntry> for TrainLogRow {
    fn from(e: LogEntry) -> Self {
        TrainLogRow {
            step: e.step,
            epoch: e.epoch,
            loss: e.loss,
            self_play: e.self_play,
            terms: e.terms,
            grad_norm: e.grad_norm,
            lr: e.lr,
            tokens: e.tokens,
            seconds: e.seconds,
            mean_logratio_t: e.mean_logratio_t,
            mean_logratio_ref: e.mean_logratio_ref,
        }
    }
}

#[derive(Serialize, Deserialize)]
struct SavedState {
    fingerprint: String,
    /// Optimizer steps completed.
    step: u64,
    log: Vec<LogEntry>,
}

const STATE_FILE: &str = "state.json";
const PARAMS_FILE: &str = "params.safetensors";
const OPTIMIZER_FILE: &str = "optimizer.safetensors";

/// Writes the state after `step` steps as `step-NNNNNN/` (through a temporary name) and removes
/// older ones.
fn save_state(
    dir: &Path,
    fingerprint: &str,
    step: u64,
    log: &[TrainLogRow],
    trainable: &TrainableModel,
    optimizer: &Optimizer,
) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let name = format!("step-{step:06}");
    let tmp = dir.join(format!(".{name}.tmp"));
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp)?;
    }
    std::fs::create_dir_all(&tmp)?;
    let params: HashMap<String, Tensor> = trainable.param_tensors().into_iter().collect();
    candle_core::safetensors::save(&params, tmp.join(PARAMS_FILE))
        .with_context(|| format!("cannot write {}", tmp.join(PARAMS_FILE).display()))?;
    optimizer.save(tmp.join(OPTIMIZER_FILE))?;
    let state = SavedState {
        fingerprint: fingerprint.to_string(),
        step,
        log: log.iter().map(LogEntry::from).collect(),
    };
    std::fs::write(tmp.join(STATE_FILE), serde_json::to_vec(&state)?)
        .with_context(|| format!("cannot write {}", tmp.join(STATE_FILE).display()))?;
    let dest = dir.join(&name);
    if dest.exists() {
        std::fs::remove_dir_all(&dest)?;
    }
    std::fs::rename(&tmp, &dest)
        .with_context(|| format!("cannot rename {} into place", tmp.display()))?;
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        let older = path
            .file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| n.starts_with("step-") && n != name);
        if older {
            std::fs::remove_dir_all(&path)?;
        }
    }
    Ok(())
}

/// The latest complete saved state of this run (same fingerprint), if any.
fn find_state(dir: &Path, fingerprint: &str) -> Option<(PathBuf, SavedState)> {
    let mut found: Option<(PathBuf, SavedState)> = None;
    for entry in std::fs::read_dir(dir).ok()? {
        let Ok(entry) = entry else { continue };
        let path = entry.path();
        let is_step = path
            .file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| n.starts_with("step-"));
        if !is_step {
            continue;
        }
        let Some(state) = std::fs::read(path.join(STATE_FILE))
            .ok()
            .and_then(|b| serde_json::from_slice::<SavedState>(&b).ok())
        else {
            continue;
        };
        if state.fingerprint == fingerprint
            && found.as_ref().is_none_or(|(_, s)| state.step > s.step)
        {
            found = Some((path, state));
        }
    }
    found
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

/// Runs `train-step`. Returns `Written { rows }` with the number of optimizer steps, or
/// `UpToDate` when `--out` already holds this run's result.
pub fn train_step(job: &TrainStepJob) -> Result<Outcome> {
    let s = job.settings;
    s.check()?;
    let regularizers = s.regularizers()?;
    let spec = LossSpec {
        beta: s.beta,
        regularizers,
    };
    let optimizer_kind = s.optimizer_kind()?;
    let lora = s.lora();

    let policy_dir = resolve_model(job.policy)?;
    let ck = Checkpoint::open(&policy_dir).with_context(|| format!("--policy {}", job.policy))?;
    let (samples_meta, samples) = read_rows::<SampleRow>(job.samples)?;
    let (winrates_meta, winrates) = read_rows::<WinrateRow>(job.winrates)?;
    let (policy_lp_meta, policy_lp) = read_rows::<LogprobRow>(job.policy_logprobs)?;
    let (reference_lp_meta, reference_lp) = read_rows::<LogprobRow>(job.reference_logprobs)?;
    ensure!(!samples.is_empty(), "{}: no samples", job.samples.display());
    check_logprobs_belong(
        job.policy_logprobs,
        &policy_lp_meta,
        "policy",
        job.samples,
        &samples_meta,
    )?;
    check_logprobs_belong(
        job.reference_logprobs,
        &reference_lp_meta,
        "reference",
        job.samples,
        &samples_meta,
    )?;
    let policy = model_ref(&policy_dir)?;
    match policy_lp_meta.models.get("policy") {
        Some(m) if m.digest == policy.digest => {}
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

    let reference_samples = if spec.needs_reference_samples() {
        let path = job.reference_samples.context(
            "the forward_kl term needs --reference-samples: samples drawn from pi_ref \
             (`generate sample --model <reference>`)",
        )?;
        let (meta, rows) = read_rows::<SampleRow>(path)?;
        let reference = reference_lp_meta.models.get("reference");
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
        Some((path, meta, rows))
    } else {
        if let Some(path) = job.reference_samples {
            eprintln!(
                "train-step: note: no forward_kl term, so --reference-samples {} is not used",
                path.display()
            );
        }
        None
    };

    let device = parse_device(&s.device)?;
    let dtype = dtype_for(s.dtype.as_deref(), &device)?;
    let content = TrainContent {
        regularizers: spec.regularizers.clone(),
        beta: s.beta,
        selection: s.selection,
        optimizer: optimizer_kind,
        lr: s.lr,
        warmup_ratio: s.warmup_ratio,
        epochs: s.epochs,
        batch_size: s.batch_size,
        max_grad_norm: s.max_grad_norm,
        seed: s.seed,
        lora: lora.clone(),
        merge: s.merge,
        dtype: format!("{dtype:?}").to_lowercase(),
    };
    let mut inputs: Vec<(&Path, &FileMeta)> = vec![
        (job.samples, &samples_meta),
        (job.winrates, &winrates_meta),
        (job.policy_logprobs, &policy_lp_meta),
        (job.reference_logprobs, &reference_lp_meta),
    ];
    if let Some((path, meta, _)) = &reference_samples {
        inputs.push((path, meta));
    }
    let log_path = job.out.join("train_log.parquet");
    let output = StageOutput::new(
        &log_path,
        FileKind::TrainLog,
        STAGE,
        &content,
        &inputs,
        &[("policy", policy)],
    )?;
    let state = state_dir(job.out);
    let dirs = expected_dirs(job.out, s);
    if !job.force && output.is_up_to_date() && dirs.iter().all(|d| d.is_dir()) {
        return Ok(Outcome::UpToDate);
    }
    if job.force && state.exists() {
        std::fs::remove_dir_all(&state)
            .with_context(|| format!("cannot remove {}", state.display()))?;
    }

    let (samples_label, winrates_label) = (label(job.samples), label(job.winrates));
    let (policy_label, reference_label) =
        (label(job.policy_logprobs), label(job.reference_logprobs));
    let ref_label = reference_samples
        .as_ref()
        .map(|(p, _, _)| label(p))
        .unwrap_or_default();
    let examples = build_examples(
        &ExampleInputs {
            samples: (&samples_label, &samples),
            winrates: (&winrates_label, &winrates),
            policy_logprobs: (&policy_label, &policy_lp),
            reference_logprobs: (&reference_label, &reference_lp),
            reference_samples: reference_samples
                .as_ref()
                .map(|(_, _, rows)| (ref_label.as_str(), rows.as_slice())),
        },
        s.selection,
    )?;
    let limit = ck.config.max_position_embeddings;
    for e in &examples {
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

    let plan = plan_steps(examples.len(), s.batch_size, s.epochs, s.seed)?;
    let total = plan.len() as u64;
    let schedule = LinearSchedule::with_warmup_ratio(s.lr, s.warmup_ratio, total)?;
    // f32 master weights whatever the compute dtype: the passes run on bf16 casts of them
    // (TrainableModel::forward_model), gradients and optimizer state stay f32.
    let weights = Weights::load(&policy_dir, DType::F32, &device)
        .with_context(|| format!("--policy {}: cannot load the weights", job.policy))?;
    let trainable = match &lora {
        None => TrainableModel::full_mixed(ck.config.clone(), &weights, dtype)?,
        Some(spec) => TrainableModel::lora_mixed(ck.config.clone(), &weights, spec, s.seed, dtype)?,
    };
    drop(weights);
    let mut optimizer = Optimizer::new(optimizer_kind, trainable.params.clone())?;

    let mut log: Vec<TrainLogRow> = Vec::new();
    let mut start = 0u64;
    if let Some((dir, saved)) = find_state(&state, output.fingerprint()) {
        let params = candle_core::safetensors::load(dir.join(PARAMS_FILE), &device)
            .with_context(|| format!("cannot read {}", dir.join(PARAMS_FILE).display()))?;
        trainable
            .set_params(&params)
            .with_context(|| format!("cannot resume from {}", dir.display()))?;
        optimizer
            .load(dir.join(OPTIMIZER_FILE))
            .with_context(|| format!("cannot resume from {}", dir.display()))?;
        ensure!(
            optimizer.step_count() == saved.step && saved.log.len() as u64 == saved.step,
            "{}: the saved state is inconsistent (optimizer at step {}, {} log rows, state.json \
             step {}); remove {} or run with --force",
            dir.display(),
            optimizer.step_count(),
            saved.log.len(),
            saved.step,
            state.display()
        );
        start = saved.step;
        log = saved.log.into_iter().map(TrainLogRow::from).collect();
        eprintln!(
            "train-step: resuming after step {start} of {total} from {}",
            dir.display()
        );
    }

    let stop_after: Option<u64> = std::env::var(STOP_AFTER_ENV)
        .ok()
        .and_then(|v| v.parse().ok());
    let micro = s.micro_batch_size.unwrap_or(usize::MAX);
    let mut unsaved = 0usize;
    let mut progress = Progress::new(STAGE, total, "tokens");
    progress.advance(start);
    for (k, step) in plan.iter().enumerate().skip(start as usize) {
        let started = Instant::now();
        let batch: Vec<_> = step.examples.iter().map(|&i| &examples[i]).collect();
        let where_ = || {
            let prompts: Vec<&str> = batch.iter().map(|e| e.prompt_id.as_str()).collect();
            format!(
                "step {}/{total} (epoch {}, batch of {} prompts: {}); no checkpoint was written",
                k + 1,
                step.epoch + 1,
                prompts.len(),
                describe_batch(&prompts)
            )
        };
        let lr = schedule.lr(k as u64);
        let model = trainable.forward_model().with_context(where_)?;
        let mut out =
            step_gradients(&model, &trainable.params, &batch, &spec, micro).with_context(where_)?;
        drop(model);
        let grad_norm = clip_grad_norm(&mut out.grads, &trainable.params, s.max_grad_norm)
            .with_context(where_)?;
        optimizer.step(&out.grads, lr).with_context(where_)?;
        drop(out.grads);
        let row = TrainLogRow {
            step: k as u64 + 1,
            epoch: step.epoch_after,
            loss: out.loss,
            self_play: out.self_play,
            terms: out.terms.into_iter().collect(),
            grad_norm,
            lr,
            tokens: out.tokens,
            seconds: started.elapsed().as_secs_f64(),
            mean_logratio_t: out.mean_logratio_t,
            mean_logratio_ref: out.mean_logratio_ref,
        };
        eprintln!(
            "train-step: step {}/{total}: loss {:.6e}, grad norm {:.4e}, lr {:.3e}, {} tokens in {:.2} s",
            row.step, row.loss, row.grad_norm, row.lr, row.tokens, row.seconds
        );
        progress.add_units(row.tokens);
        log.push(row);
        progress.advance(1);
        let done_here = k as u64 + 1 - start;
        let stop = stop_after.is_some_and(|n| done_here >= n) && (k as u64 + 1) < total;
        unsaved += 1;
        if unsaved == s.state_every || stop {
            unsaved = 0;
            save_state(
                &state,
                output.fingerprint(),
                k as u64 + 1,
                &log,
                &trainable,
                &optimizer,
            )?;
        }
        if stop {
            bail!(
                "stopped after {done_here} optimizer steps as {STOP_AFTER_ENV} asks; the state is \
                 in {} and the next run resumes at step {}",
                state.display(),
                k + 2
            );
        }
    }
    progress.finish();

    // The model first, the log (whose fingerprint marks the run done) last.
    let tensors = match &lora {
        Some(spec) => {
            write_adapter_dir(
                &policy_dir,
                &trainable.params,
                spec,
                &job.out.join("adapter"),
            )?;
            s.merge
                .then(|| trainable.checkpoint_tensors())
                .transpose()?
        }
        None => Some(trainable.checkpoint_tensors()?),
    };
    if let Some(tensors) = tensors {
        write_model_dir(&policy_dir, &tensors, &job.out.join("model"))
            .with_context(|| format!("cannot write {}", job.out.join("model").display()))?;
    }
    write_rows(&log_path, &output.meta, &log)?;
    if state.exists() {
        std::fs::remove_dir_all(&state)
            .with_context(|| format!("cannot remove {}", state.display()))?;
    }
    Ok(Outcome::Written { rows: log.len() })
}
