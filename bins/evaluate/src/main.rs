//! `evaluate`: compare models (the base and every iterate) against a baseline.

use anyhow::Result;
use clap::{Parser, Subcommand};
use rspo::judge::JudgeSettings;
use rspo::stage::evaluate::{self, EvaluateJob, EvaluateSettings};
use rspo::stage::score::ScoreSettings;
use rspo::stage::study;
use rspo::stage::{flag_given, parse_command_line, Outcome, Settings, StageFlags};
use std::path::PathBuf;

/// Generate each model's responses to the evaluation prompts, judge them against a baseline,
/// and write eval.parquet (one row per model, prompt and sample), summary.json (win rate,
/// length-controlled win rate, mean length, EOS rate, self-BLEU-3, distinct-1/2, KL estimate)
/// and report.md with chart.svg.
#[derive(Parser)]
#[command(
    version,
    about,
    long_about = None,
    subcommand_negates_reqs = true,
    args_conflicts_with_subcommands = true
)]
struct Args {
    #[command(subcommand)]
    command: Option<Command>,
    /// Models to evaluate (directories or Hub ids), e.g. the base model then each iteration's
    /// model/ directory; the report keeps this order.
    #[arg(long, num_args = 1.., required = true)]
    models: Vec<String>,
    /// The models' names in the outputs, one per model in order [default: `iter-<t>` for
    /// `.../iter-<t>/model`, else the path's last component].
    #[arg(long, num_args = 1..)]
    names: Option<Vec<String>>,
    /// Evaluation prompts (Parquet with `prompt` or `messages`, and `reference` answers for
    /// --baseline reference).
    #[arg(long, required = true)]
    prompts: Option<PathBuf>,
    /// Output folder.
    #[arg(long, required = true)]
    out: Option<PathBuf>,
    /// Stage timings to include in the report (make iter writes data/runs/<run>/timings.tsv).
    #[arg(long, value_name = "FILE")]
    timings: Option<PathBuf>,
    #[command(
        flatten,
        next_help_heading = "Settings (also the [evaluate] section of --config)"
    )]
    settings: EvaluateSettings,
    #[command(
        flatten,
        next_help_heading = "The judge (also the [score] section of --config, which sets its temperature, batch size and dtype)"
    )]
    judging: JudgeSettings,
    #[command(flatten)]
    run: StageFlags,
}

#[derive(Subcommand)]
enum Command {
    /// The report of `make study`: study.md, with one SVG chart per metric beside it, and
    /// report.html there (the evaluation's page with the study's charts), from the study's
    /// summary.json (models named `base` and `<variant>.iter-<t>`) and the files beside it.
    StudyReport {
        /// The study's summary.json.
        #[arg(long)]
        summary: PathBuf,
        /// Iterations per variant.
        #[arg(long)]
        iterations: usize,
        /// Output study.md; the charts and report.html go beside it.
        #[arg(long)]
        out: PathBuf,
        /// The variants as `make study` was given them (VARIANTS).
        #[arg(required = true)]
        variants: Vec<String>,
    },
}

fn main() -> Result<()> {
    // Allocator and thread settings for model work, before any thread or tensor exists; the
    // command then runs on one of the matmuls' worker threads.
    rspo::model::cpu_tuning::run_model_work(run)
}

fn run() -> Result<()> {
    let (a, matches) = parse_command_line::<Args>();
    if let Some(Command::StudyReport {
        summary,
        iterations,
        out,
        variants,
    }) = &a.command
    {
        study::study_report(&study::StudyReportJob {
            summary,
            variants,
            iterations: *iterations,
            out,
        })?;
        eprintln!(
            "evaluate study-report: wrote {} and {}",
            out.display(),
            out.with_file_name("report.html").display()
        );
        return Ok(());
    }
    // clap requires both without a subcommand.
    let (prompts, out) = (a.prompts.clone().unwrap(), a.out.clone().unwrap());
    let config = a.run.config.as_deref();
    let s = a.settings.under_config(config, &matches)?;
    let mut judge = ScoreSettings::from_config(config)?;
    judge.judging = a.judging.under_config(config, &matches)?;
    if flag_given(&matches, "device") {
        judge.device = s.device.clone();
    }
    let outcome = evaluate::evaluate(&EvaluateJob {
        models: &a.models,
        names: a.names.as_deref(),
        prompts: &prompts,
        out: &out,
        settings: &s,
        judge: &judge,
        timings: a.timings.as_deref(),
        force: a.run.force,
    })?;
    match outcome {
        Outcome::UpToDate => eprintln!("evaluate: {} is up to date", out.display()),
        Outcome::Written { rows } => eprintln!(
            "evaluate: wrote {rows} rows; report at {} and {}",
            out.join("report.md").display(),
            out.join("report.html").display()
        ),
    }
    Ok(())
}
