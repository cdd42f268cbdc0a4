//! `score`: judge the K samples of every prompt.

use anyhow::Result;
use clap::Parser;
use rspo::stage::score::{self, ScoreJob, ScoreSettings};
use rspo::stage::shard::Shard;
use rspo::stage::{parse_command_line, Outcome, Settings, StageFlags};
use std::path::PathBuf;

/// Judge the K samples of every prompt in pairs.
///
/// Writes preferences.parquet: every pair i < j of each prompt with p = P(y_i beats y_j).
/// Scalar judges (a reward model, the rules) score each response once and give
/// p_ij = sigmoid((r_i - r_j) / temperature); they also write scores.parquet (one score per
/// sample) beside --out unless --scores-out says otherwise.
///
/// The judges and what each one reads are listed under --judge (`score --help`).
///
/// Judgments are cached (blake3 of prompt, response, judge digest and settings) under
/// <cache dir>/judgments/, so a response seen before is not judged again; the run says how
/// many were reused. A run whose outputs are up to date does nothing; an interrupted run
/// resumes where it stopped.
#[derive(Parser)]
#[command(version, about, long_about, verbatim_doc_comment)]
struct Cli {
    /// samples.parquet from `generate sample`.
    #[arg(long)]
    samples: PathBuf,
    /// Output preferences.parquet.
    #[arg(long)]
    out: PathBuf,
    /// A prompts file with what some judges read and samples.parquet lacks: each prompt's
    /// `reference` answer, its `constraints` (see --judge).
    #[arg(long, value_name = "FILE")]
    prompts: Option<PathBuf>,
    /// Where scalar judges write their scores [default: scores.parquet in the folder of --out].
    #[arg(long, value_name = "FILE")]
    scores_out: Option<PathBuf>,
    /// Judge only the samples of the I-th of N slices of the prompts (0-based), e.g. 0/4;
    /// `generate merge` joins the N outputs (each file apart).
    #[arg(long, value_name = "I/N")]
    shard: Option<Shard>,
    #[command(
        flatten,
        next_help_heading = "Settings (also the [score] section of --config)"
    )]
    settings: ScoreSettings,
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
    let r = score::score(&ScoreJob {
        samples: &a.samples,
        out: &a.out,
        scores_out: a.scores_out.as_deref(),
        prompts: a.prompts.as_deref(),
        settings: &s,
        shard: a.shard,
        force: a.run.force,
    })?;
    match r.outcome {
        Outcome::UpToDate => eprintln!("score: {} is up to date", r.preferences.display()),
        Outcome::Written { rows } => {
            let scores = r
                .scores
                .as_ref()
                .map(|p| format!(" and {} scores to {}", r.judgments, p.display()))
                .unwrap_or_default();
            eprintln!(
                "score: wrote {rows} pairs of {} prompts to {}{scores}",
                r.prompts,
                r.preferences.display()
            );
            if let Some(c) = &r.constraints {
                eprintln!(
                    "score: wrote each constraint's pass/fail to {}",
                    c.display()
                );
            }
            let unit = if r.scores.is_some() {
                "responses"
            } else {
                "pairs"
            };
            let cache = r
                .cache
                .as_ref()
                .map(|p| format!(" (cache {})", p.display()))
                .unwrap_or_else(|| " (cache off)".into());
            eprintln!(
                "score: judged {} {unit} in {:.1} s, reused {} from the cache{cache}, {} from an interrupted run",
                r.judged, r.seconds, r.reused, r.resumed
            );
        }
    }
    Ok(())
}
