//! `evaluate`: compare models (the base and every iterate) against a baseline.

use anyhow::Result;
use clap::Parser;
use rspo::judge::JudgeSettings;
use rspo::stage::evaluate::{self, EvaluateJob, EvaluateSettings};
use rspo::stage::score::ScoreSettings;
use rspo::stage::{flag_given, parse_command_line, Outcome, Settings, StageFlags};
use std::path::PathBuf;

/// Generate each model's responses to the evaluation prompts, judge them against a baseline,
/// and write eval.parquet (one row per model, prompt and sample), summary.json (win rate,
/// length-controlled win rate, mean length, EOS rate, self-BLEU-3, distinct-1/2, KL estimate)
/// and report.md with chart.svg.
#[derive(Parser)]
#[command(version, about, long_about = None)]
struct Args {
    /// Models to evaluate (directories or Hub ids), e.g. the base model then each iteration's
    /// model/ directory; the report keeps this order.
    #[arg(long, num_args = 1.., required = true)]
    models: Vec<String>,
    /// Evaluation prompts (Parquet with `prompt` or `messages`, and `reference` answers for
    /// --baseline reference).
    #[arg(long)]
    prompts: PathBuf,
    /// Output folder.
    #[arg(long)]
    out: PathBuf,
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

fn main() -> Result<()> {
    let (a, matches) = parse_command_line::<Args>();
    let config = a.run.config.as_deref();
    let s = a.settings.under_config(config, &matches)?;
    let mut judge = ScoreSettings::from_config(config)?;
    judge.judging = a.judging.under_config(config, &matches)?;
    if flag_given(&matches, "device") {
        judge.device = s.device.clone();
    }
    let outcome = evaluate::evaluate(&EvaluateJob {
        models: &a.models,
        prompts: &a.prompts,
        out: &a.out,
        settings: &s,
        judge: &judge,
        timings: a.timings.as_deref(),
        force: a.run.force,
    })?;
    match outcome {
        Outcome::UpToDate => eprintln!("evaluate: {} is up to date", a.out.display()),
        Outcome::Written { rows } => eprintln!(
            "evaluate: wrote {rows} rows; report at {}",
            a.out.join("report.md").display()
        ),
    }
    Ok(())
}
