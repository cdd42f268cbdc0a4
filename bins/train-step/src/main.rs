//! `train-step`: the policy update of an RSPO iteration.

use anyhow::Result;
use clap::Parser;
use rspo::stage::train_step::{self, TrainStepJob, TrainStepSettings};
use rspo::stage::{parse_command_line, Outcome, Settings, StageFlags};
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
    #[command(
        flatten,
        next_help_heading = "Settings (also the [train-step] section of --config)"
    )]
    settings: TrainStepSettings,
    #[command(flatten)]
    run: StageFlags,
}

fn main() -> Result<()> {
    // Allocator and thread settings for model work, before any thread or tensor exists; the
    // command then runs on one of the matmuls' worker threads.
    rspo::model::cpu_tuning::run_model_work(run)
}

fn run() -> Result<()> {
    let (a, matches) = parse_command_line::<Cli>();
    let s = a.settings.under_config(a.run.config.as_deref(), &matches)?;
    let outcome = train_step::train_step(&TrainStepJob {
        policy: &a.policy,
        samples: &a.samples,
        winrates: &a.winrates,
        policy_logprobs: &a.policy_logprobs,
        reference_logprobs: &a.reference_logprobs,
        reference_samples: a.reference_samples.as_deref(),
        out: &a.out,
        settings: &s,
        force: a.run.force,
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
