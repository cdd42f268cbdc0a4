//! `generate`: the first stage of an RSPO iteration.

use anyhow::Result;
use clap::{Args, Parser, Subcommand};
use rspo::stage::generate::{self, GenerateSettings, LogprobsJob, SampleJob};
use rspo::stage::shard::{self, Shard};
use rspo::stage::study;
use rspo::stage::{make_variables, parse_command_line, Outcome, Settings, StageFlags};
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
    /// Join the outputs of a `--shard I/N` run (all N) into the file an unsharded run writes:
    /// samples and log-probs, and score's preferences, scores and constraints.
    Merge(MergeArgs),
    /// Check a whole pipeline file and print its [pipeline] section as make variables (the
    /// Makefile reads the file through this).
    PipelineVars {
        /// The pipeline file, e.g. pipelines/tiny.toml.
        file: PathBuf,
    },
    /// Check the variants of `make study` against a pipeline file and print, per variant, its
    /// run folder's name, 1 if it needs reference samples (forward_kl) else 0, and its
    /// train-step flags (scripts/study.sh reads this).
    StudyPlan {
        /// The pipeline file.
        #[arg(long)]
        config: PathBuf,
        /// Losses: a preset (`sppo`, `rspo-paper`) or KIND=COEF[,clip=C] terms joined by `+`.
        #[arg(required = true)]
        variants: Vec<String>,
    },
}

#[derive(Args)]
struct SampleArgs {
    /// Policy: a Hugging Face model directory, Hub id or GGUF file.
    #[arg(long, value_name = "DIR_OR_HUB_ID")]
    model: String,
    /// Prompts: Parquet with `prompt` (one user turn) or `messages`, optional `prompt_id`.
    #[arg(long)]
    prompts: PathBuf,
    /// Output samples.parquet.
    #[arg(long)]
    out: PathBuf,
    /// Process only the I-th of N slices of the prompts (0-based), e.g. 0/4.
    #[arg(long, value_name = "I/N")]
    shard: Option<Shard>,
    #[command(
        flatten,
        next_help_heading = "Settings (also the [generate] section of --config)"
    )]
    settings: GenerateSettings,
    #[command(flatten)]
    run: StageFlags,
}

#[derive(Args)]
struct LogprobsArgs {
    /// The model whose log-probs are computed (directory, Hub id or GGUF file).
    #[arg(long, value_name = "DIR_OR_HUB_ID")]
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
    #[arg(long, value_name = "FILE")]
    reuse: Option<PathBuf>,
    /// Process only the samples of the I-th of N slices of the prompts (0-based), e.g. 0/4.
    #[arg(long, value_name = "I/N")]
    shard: Option<Shard>,
    #[command(
        flatten,
        next_help_heading = "Settings (also the [generate] section of --config; log-probs use only batch size, device and dtype)"
    )]
    settings: GenerateSettings,
    #[command(flatten)]
    run: StageFlags,
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

fn report(what: &str, out: &std::path::Path, outcome: Outcome) {
    match outcome {
        Outcome::UpToDate => eprintln!("{what}: {} is up to date", out.display()),
        Outcome::Written { rows } => eprintln!("{what}: wrote {rows} rows to {}", out.display()),
    }
}

fn main() -> Result<()> {
    // Allocator and thread settings for model work, before any thread or tensor exists; the
    // command then runs on one of the matmuls' worker threads.
    rspo::model::cpu_tuning::run_model_work(run)
}

fn run() -> Result<()> {
    let (cli, matches) = parse_command_line::<Cli>();
    let matches = matches
        .subcommand()
        .map(|(_, m)| m.clone())
        .unwrap_or_default();
    match cli.command {
        Command::Sample(a) => {
            let s = a.settings.under_config(a.run.config.as_deref(), &matches)?;
            let outcome = generate::sample(&SampleJob {
                model: &a.model,
                prompts: &a.prompts,
                out: &a.out,
                settings: &s,
                shard: a.shard,
                force: a.run.force,
            })?;
            report("generate sample", &a.out, outcome);
        }
        Command::Logprobs(a) => {
            let s = a.settings.under_config(a.run.config.as_deref(), &matches)?;
            let outcome = generate::logprobs(&LogprobsJob {
                model: &a.model,
                samples: &a.samples,
                role: &a.role,
                out: &a.out,
                settings: &s,
                shard: a.shard,
                force: a.run.force,
                reuse: a.reuse.as_deref(),
            })?;
            report("generate logprobs", &a.out, outcome);
        }
        Command::Merge(a) => {
            let outcome = shard::merge(&a.shards, &a.out)?;
            report("generate merge", &a.out, outcome);
        }
        Command::PipelineVars { file } => print!("{}", make_variables(&file)?),
        Command::StudyPlan { config, variants } => {
            print!("{}", study::plan_lines(&study::plan(&config, &variants)?))
        }
    }
    Ok(())
}
