//! `train-step`: the policy update of an RSPO iteration.

use anyhow::Result;
use clap::Parser;
use rspo::stage::train_step::{self, TrainStepJob, TrainStepSettings};
use rspo::stage::{set, Outcome, Settings};
use rspo::train::Selection;
use std::path::PathBuf;

/// Update the policy with the RSPO loss (regularized self-play, arXiv 2503.00030):
/// mean over selected samples of (log pi_theta/pi_t - (winrate - 1/2) / beta)^2 plus the chosen
/// regularizers. Writes OUT/model/ (a Hugging Face directory: the full checkpoint, or with LoRA
/// and --merge the merged one), OUT/adapter/ (LoRA, PEFT layout) and OUT/train_log.parquet
/// (one row per optimizer step). A run whose output is up to date does nothing; an interrupted
/// run resumes after its last saved step (OUT/.train-state/). Flags override the [train-step]
/// section of --config.
#[derive(Parser)]
#[command(version, about, long_about)]
struct Cli {
    /// The policy pi_t being trained: a Hugging Face model directory, Hub id or GGUF file.
    #[arg(long)]
    policy: String,
    /// samples.parquet of the policy (`generate sample`).
    #[arg(long)]
    samples: PathBuf,
    /// winrates.parquet of those samples (`estimate-winrate`).
    #[arg(long)]
    winrates: PathBuf,
    /// The policy's log-probs of the samples (`generate logprobs --role policy`).
    #[arg(long)]
    policy_logprobs: PathBuf,
    /// The reference's log-probs of the samples (`generate logprobs --role reference`).
    #[arg(long)]
    reference_logprobs: PathBuf,
    /// Output folder.
    #[arg(long)]
    out: PathBuf,
    /// Samples drawn from pi_ref, needed by the forward_kl term.
    #[arg(long)]
    reference_samples: Option<PathBuf>,
    /// Pipeline config (TOML); its [train-step] section sets defaults for these flags.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Named regularizer set: sppo (none) or rspo-paper (forward_kl_is=0.1,clip=10 +
    /// reverse_kl=0.5).
    #[arg(long)]
    preset: Option<String>,
    /// A regularizer KIND=COEF[,clip=C], KIND one of reverse_kl, forward_kl_is, chi2,
    /// forward_kl (clip default 10); repeatable, added to the preset's.
    #[arg(long = "term")]
    terms: Vec<String>,
    /// Self-play temperature; eta = 1/beta [default: 0.001].
    #[arg(long)]
    beta: Option<f64>,
    /// Which samples of a prompt enter the loss: best_worst or all [default: best_worst].
    #[arg(long)]
    selection: Option<Selection>,
    /// adamw or rmsprop [default: rmsprop].
    #[arg(long)]
    optimizer: Option<String>,
    /// Peak learning rate [default: 5e-7].
    #[arg(long)]
    lr: Option<f64>,
    /// Fraction of the steps with linear warmup, then linear decay to 0 [default: 0.1].
    #[arg(long)]
    warmup_ratio: Option<f64>,
    /// Weight decay (AdamW: decoupled; RMSprop: L2) [default: 0].
    #[arg(long)]
    weight_decay: Option<f64>,
    /// Passes over the prompts [default: 1].
    #[arg(long)]
    epochs: Option<usize>,
    /// Prompts (each with its selected samples) per optimizer step [default: 64].
    #[arg(long)]
    batch_size: Option<usize>,
    /// Sequences run through the model at once (memory only; the gradient is the same)
    /// [default: the whole step].
    #[arg(long)]
    micro_batch_size: Option<usize>,
    /// Global gradient-norm clip [default: 1.0].
    #[arg(long)]
    max_grad_norm: Option<f64>,
    /// Seed of the example order and of the LoRA initialisation [default: 0].
    #[arg(long)]
    seed: Option<u64>,
    /// Train a LoRA adapter of this rank instead of every weight.
    #[arg(long)]
    lora_rank: Option<usize>,
    /// LoRA alpha; the update is scaled by alpha / rank [default: 8].
    #[arg(long)]
    lora_alpha: Option<f64>,
    /// Linear layers that get adapters, from q_proj, k_proj, v_proj, o_proj, gate_proj,
    /// up_proj, down_proj [default: q_proj,v_proj].
    #[arg(long, value_delimiter = ',')]
    lora_targets: Option<Vec<String>>,
    /// With LoRA, also write the adapter merged into a full checkpoint to OUT/model/.
    #[arg(long)]
    merge: bool,
    /// Save the resumable state every N optimizer steps [default: 1].
    #[arg(long)]
    state_every: Option<usize>,
    /// cpu, cuda or cuda:N [default: cpu].
    #[arg(long)]
    device: Option<String>,
    /// f32 or bf16 (default: f32 on CPU, bf16 on CUDA; optimizer state and master weights are
    /// f32 either way).
    #[arg(long)]
    dtype: Option<String>,
    /// Redo the run even if the output is up to date (and discard a saved state).
    #[arg(long)]
    force: bool,
}

fn main() -> Result<()> {
    // Process-wide CPU tuning for training, before any tensor exists (see their docs).
    train_step::prefer_serial_elementwise_ops();
    train_step::keep_large_allocations();
    let a = Cli::parse();
    let mut s = TrainStepSettings::from_config(a.config.as_deref())?;
    if a.preset.is_some() {
        s.preset = a.preset.clone();
    }
    if !a.terms.is_empty() {
        s.terms = a.terms.clone();
    }
    set(&mut s.beta, a.beta);
    set(&mut s.selection, a.selection);
    set(&mut s.optimizer, a.optimizer.clone());
    set(&mut s.lr, a.lr);
    set(&mut s.warmup_ratio, a.warmup_ratio);
    set(&mut s.weight_decay, a.weight_decay);
    set(&mut s.epochs, a.epochs);
    set(&mut s.batch_size, a.batch_size);
    if a.micro_batch_size.is_some() {
        s.micro_batch_size = a.micro_batch_size;
    }
    set(&mut s.max_grad_norm, a.max_grad_norm);
    set(&mut s.seed, a.seed);
    if a.lora_rank.is_some() {
        s.lora_rank = a.lora_rank;
    }
    set(&mut s.lora_alpha, a.lora_alpha);
    set(&mut s.lora_targets, a.lora_targets.clone());
    s.merge |= a.merge;
    set(&mut s.state_every, a.state_every);
    set(&mut s.device, a.device.clone());
    if a.dtype.is_some() {
        s.dtype = a.dtype.clone();
    }
    let outcome = train_step::train_step(&TrainStepJob {
        policy: &a.policy,
        samples: &a.samples,
        winrates: &a.winrates,
        policy_logprobs: &a.policy_logprobs,
        reference_logprobs: &a.reference_logprobs,
        reference_samples: a.reference_samples.as_deref(),
        out: &a.out,
        settings: &s,
        force: a.force,
    })?;
    match outcome {
        Outcome::UpToDate => eprintln!("train-step: {} is up to date", a.out.display()),
        Outcome::Written { rows } => eprintln!(
            "train-step: {rows} optimizer steps; wrote {}",
            a.out.display()
        ),
    }
    Ok(())
}
