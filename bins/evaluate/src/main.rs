//! `evaluate`: compare models (the base and every iterate) against a baseline.

use anyhow::Result;
use clap::Parser;
use rspo::stage::evaluate::{self, EvaluateJob, EvaluateSettings};
use rspo::stage::score::ScoreSettings;
use rspo::stage::{set, Outcome, Settings};
use std::path::PathBuf;

/// Generate each model's responses to the evaluation prompts, judge them against a baseline,
/// and write eval.parquet (one row per model and prompt), summary.json (win rate,
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
    /// The judge: reward-model, rule:length, rule:contains, rule:exact-match (settings of the
    /// [score] section apply).
    #[arg(long)]
    judge: Option<String>,
    /// The judge's model for reward-model (directory, Hub id or GGUF file).
    #[arg(long)]
    judge_model: Option<String>,
    /// `reference` (the prompts' reference answers) or a model whose responses are the
    /// baseline [default: reference].
    #[arg(long)]
    baseline: Option<String>,
    /// pi_ref for the KL estimate [default: the first of --models].
    #[arg(long)]
    reference_model: Option<String>,
    /// Samples per prompt; each is judged against the baseline (sample k against its sample k) and all measure diversity [default: 4].
    #[arg(long)]
    k: Option<u32>,
    /// Sampling temperature [default: 0.7].
    #[arg(long)]
    temperature: Option<f64>,
    /// Response length limit in tokens [default: 256].
    #[arg(long)]
    max_new_tokens: Option<usize>,
    /// Stage timings to include in the report (make iter writes data/runs/<run>/timings.tsv).
    #[arg(long)]
    timings: Option<PathBuf>,
    /// Pipeline config (TOML): its [evaluate] and [score] sections set defaults.
    #[arg(long)]
    config: Option<PathBuf>,
    /// cpu, cuda or cuda:N.
    #[arg(long)]
    device: Option<String>,
    /// Redo the work even if the outputs are up to date.
    #[arg(long)]
    force: bool,
}

fn main() -> Result<()> {
    let a = Args::parse();
    let mut s = EvaluateSettings::from_config(a.config.as_deref())?;
    set(&mut s.k, a.k);
    set(&mut s.temperature, a.temperature);
    set(&mut s.max_new_tokens, a.max_new_tokens);
    set(&mut s.baseline, a.baseline.clone());
    set(&mut s.device, a.device.clone());
    if a.reference_model.is_some() {
        s.reference_model = a.reference_model.clone();
    }
    let mut judge = ScoreSettings::from_config(a.config.as_deref())?;
    set(&mut judge.judge, a.judge.clone());
    if a.judge_model.is_some() {
        judge.judge_model = a.judge_model.clone();
    }
    set(&mut judge.device, a.device.clone());
    let timings = a.timings.clone();
    let outcome = evaluate::evaluate(&EvaluateJob {
        models: &a.models,
        prompts: &a.prompts,
        out: &a.out,
        settings: &s,
        judge: &judge,
        timings: timings.as_deref(),
        force: a.force,
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
