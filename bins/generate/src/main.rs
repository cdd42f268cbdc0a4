//! `generate`: the first stage of an RSPO iteration.

use anyhow::Result;
use clap::{Args, Parser, Subcommand};
use rspo::stage::generate::{self, GenerateSettings, LogprobsJob, SampleJob, Shard};
use rspo::stage::{set, Outcome, Settings};
use std::path::PathBuf;

/// Sample K responses per prompt from a policy, compute teacher-forced log-probs of samples
/// under a model, or merge sharded outputs. Outputs are Parquet files (see DESIGN.md); a run
/// whose output is up to date does nothing, and an interrupted run resumes where it stopped.
#[derive(Parser)]
#[command(version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// K samples per prompt -> samples.parquet.
    Sample(SampleArgs),
    /// Teacher-forced log-probs of every sample under a model -> logprobs-<role>.parquet.
    Logprobs(LogprobsArgs),
    /// Join the outputs of `sample --shard I/N` (all N) into one file.
    Merge(MergeArgs),
}

#[derive(Args)]
struct Common {
    /// Pipeline config (TOML); its [generate] section sets defaults for the flags below.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Rows decoded or scored together.
    #[arg(long)]
    batch_size: Option<usize>,
    /// cpu, cuda or cuda:N.
    #[arg(long)]
    device: Option<String>,
    /// f32 or bf16 (default: f32 on CPU, bf16 on CUDA).
    #[arg(long)]
    dtype: Option<String>,
    /// Redo the work even if the output is up to date.
    #[arg(long)]
    force: bool,
}

#[derive(Args)]
struct SampleArgs {
    /// Policy: a Hugging Face model directory, Hub id or GGUF file.
    #[arg(long)]
    model: String,
    /// Prompts: Parquet with `prompt` (one user turn) or `messages`, optional `prompt_id`.
    #[arg(long)]
    prompts: PathBuf,
    /// Output samples.parquet.
    #[arg(long)]
    out: PathBuf,
    /// Samples per prompt [default: 5].
    #[arg(long)]
    k: Option<u32>,
    /// Sampling temperature; 0 is greedy [default: 0.7].
    #[arg(long)]
    temperature: Option<f64>,
    /// Nucleus sampling mass [default: 0.9].
    #[arg(long)]
    top_p: Option<f64>,
    /// Keep only the k most likely tokens; 0 keeps all [default: 0].
    #[arg(long)]
    top_k: Option<usize>,
    /// Response length limit in tokens [default: 512].
    #[arg(long)]
    max_new_tokens: Option<usize>,
    /// Run seed [default: 0].
    #[arg(long)]
    seed: Option<u64>,
    /// RSPO iteration, part of each row's seed [default: 1].
    #[arg(long)]
    iteration: Option<u32>,
    /// Read the prompt from this column.
    #[arg(long)]
    prompt_column: Option<String>,
    /// Process only the I-th of N slices of the prompts (0-based), e.g. 0/4.
    #[arg(long)]
    shard: Option<Shard>,
    #[command(flatten)]
    common: Common,
}

#[derive(Args)]
struct LogprobsArgs {
    /// The model whose log-probs are computed (directory, Hub id or GGUF file).
    #[arg(long)]
    model: String,
    /// samples.parquet from `generate sample`.
    #[arg(long)]
    samples: PathBuf,
    /// policy (pi_t) or reference (pi_ref).
    #[arg(long)]
    role: String,
    /// Output logprobs-<role>.parquet.
    #[arg(long)]
    out: PathBuf,
    /// Reuse the rows of this log-probs file when it is of the same samples under the same
    /// model (iteration 1: the policy is the reference model); otherwise compute.
    #[arg(long)]
    reuse: Option<PathBuf>,
    #[command(flatten)]
    common: Common,
}

#[derive(Args)]
struct MergeArgs {
    /// Output file.
    #[arg(long)]
    out: PathBuf,
    /// Shard files, in any order.
    #[arg(required = true)]
    shards: Vec<PathBuf>,
}

fn settings(c: &Common) -> Result<GenerateSettings> {
    let mut s = GenerateSettings::from_config(c.config.as_deref())?;
    set(&mut s.batch_size, c.batch_size);
    set(&mut s.device, c.device.clone());
    if c.dtype.is_some() {
        s.dtype = c.dtype.clone();
    }
    Ok(s)
}

fn report(what: &str, out: &std::path::Path, outcome: Outcome) {
    match outcome {
        Outcome::UpToDate => eprintln!("{what}: {} is up to date", out.display()),
        Outcome::Written { rows } => eprintln!("{what}: wrote {rows} rows to {}", out.display()),
    }
}

fn main() -> Result<()> {
    match Cli::parse().command {
        Command::Sample(a) => {
            let mut s = settings(&a.common)?;
            set(&mut s.k, a.k);
            set(&mut s.temperature, a.temperature);
            set(&mut s.top_p, a.top_p);
            set(&mut s.top_k, a.top_k);
            set(&mut s.max_new_tokens, a.max_new_tokens);
            set(&mut s.seed, a.seed);
            set(&mut s.iteration, a.iteration);
            if a.prompt_column.is_some() {
                s.prompt_column = a.prompt_column.clone();
            }
            let outcome = generate::sample(&SampleJob {
                model: &a.model,
                prompts: &a.prompts,
                out: &a.out,
                settings: &s,
                shard: a.shard,
                force: a.common.force,
            })?;
            report("generate sample", &a.out, outcome);
        }
        Command::Logprobs(a) => {
            let s = settings(&a.common)?;
            let outcome = generate::logprobs(&LogprobsJob {
                model: &a.model,
                samples: &a.samples,
                role: &a.role,
                out: &a.out,
                settings: &s,
                force: a.common.force,
                reuse: a.reuse.as_deref(),
            })?;
            report("generate logprobs", &a.out, outcome);
        }
        Command::Merge(a) => {
            let outcome = generate::merge(&a.shards, &a.out)?;
            report("generate merge", &a.out, outcome);
        }
    }
    Ok(())
}
