//! `score`: judge the K samples of every prompt.

use anyhow::Result;
use clap::Parser;
use rspo::stage::score::{self, ScoreJob, ScoreSettings};
use rspo::stage::{set, Outcome, Settings};
use std::path::PathBuf;

/// Judge the K samples of every prompt in pairs.
///
/// Writes preferences.parquet: every pair i < j of each prompt with p = P(y_i beats y_j).
/// Scalar judges (a reward model, the rules) score each response once and give
/// p_ij = sigmoid((r_i - r_j) / temperature); they also write scores.parquet (one score per
/// sample) beside --out unless --scores-out says otherwise.
///
/// Judges (--judge):
///   reward-model      a *ForSequenceClassification checkpoint (--judge-model) scores the
///                     conversation (prompt messages + the response as the assistant turn)
///                     rendered with the judge's own chat template
///   pairrm            llm-blender's PairRM (PairRM-hf layout, --judge-model, e.g.
///                     llm-blender/PairRM-hf), the paper's judge: compares the two responses
///                     of a pair directly, in both orders; --pairrm-mode pairwise (default)
///                     takes p = mean of the two orders, sppo Bradley-Terry on the group's
///                     mean logit differences as SPPO's pipeline did; p_forward/p_swapped
///                     keep each order's verdict
///   rule:length       score = -|characters - N| (--target N): closest to N is best
///   rule:contains     score = 1 if the response matches --pattern REGEX, else 0
///   rule:exact-match  score = 1 if the response equals the prompt's reference answer
///                     (surrounding whitespace ignored), else 0; samples files have no
///                     reference, so it reads them from --prompts FILE
///   instructions      score = the fraction of the prompt's verifiable instructions (its
///                     `constraints` column in --prompts FILE: word counts, keywords,
///                     lowercase, JSON, bullet points, ...) the response satisfies; also
///                     writes the pass/fail of every constraint to constraints.parquet
///                     beside the scores
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
    /// reward-model, pairrm, rule:length, rule:contains, rule:exact-match or instructions
    /// [default: reward-model].
    #[arg(long)]
    judge: Option<String>,
    /// reward-model, pairrm: the judge, a Hugging Face model directory or Hub id.
    #[arg(long, value_name = "DIR_OR_HUB_ID")]
    judge_model: Option<String>,
    /// pairrm: pairwise (mean of both orders) or sppo (group-aggregated) [default: pairwise].
    #[arg(long)]
    pairrm_mode: Option<String>,
    /// pairrm: token limit of the source (the prompt) [default: 1224].
    #[arg(long)]
    source_max_length: Option<usize>,
    /// pairrm: token limit of each candidate [default: 412].
    #[arg(long)]
    candidate_max_length: Option<usize>,
    /// Scalar judges: p_ij = sigmoid((r_i - r_j) / temperature) [default: 1].
    #[arg(long)]
    temperature: Option<f64>,
    /// rule:length: the ideal response length in characters.
    #[arg(long, value_name = "N")]
    target: Option<usize>,
    /// rule:contains: a regular expression (Rust `regex` syntax) searched in the response.
    #[arg(long, value_name = "REGEX")]
    pattern: Option<String>,
    /// rule:exact-match: a prompts file whose `reference` column holds each prompt's answer
    /// (needed because samples.parquet has no reference column); instructions: one whose
    /// `constraints` column holds each prompt's constraints. Options of one judge are ignored
    /// by the others.
    #[arg(long, value_name = "FILE")]
    prompts: Option<PathBuf>,
    /// Where scalar judges write their scores [default: scores.parquet in the folder of --out].
    #[arg(long, value_name = "FILE")]
    scores_out: Option<PathBuf>,
    /// Responses judged per step, one resumable chunk; does not change any score [default: 8].
    #[arg(long)]
    batch_size: Option<usize>,
    /// reward-model: cpu, cuda or cuda:N [default: cpu].
    #[arg(long)]
    device: Option<String>,
    /// reward-model: f32 or bf16 [default: f32 on CPU, bf16 on CUDA].
    #[arg(long)]
    dtype: Option<String>,
    /// The judgment cache folder [default: $RSPO_CACHE_DIR, else $XDG_CACHE_HOME/rspo, else
    /// ~/.cache/rspo]; judgments go to its judgments/ subfolder.
    #[arg(long, value_name = "DIR")]
    cache_dir: Option<PathBuf>,
    /// Neither read nor write the judgment cache.
    #[arg(long)]
    no_cache: bool,
    /// Pipeline config (TOML); its [score] section sets defaults for the flags above (keys
    /// judge, judge_model, temperature, target, pattern, batch_size, device, dtype, cache_dir,
    /// cache).
    #[arg(long)]
    config: Option<PathBuf>,
    /// Redo the work even if the outputs are up to date.
    #[arg(long)]
    force: bool,
}

fn main() -> Result<()> {
    let a = Cli::parse();
    let mut s = ScoreSettings::from_config(a.config.as_deref())?;
    set(&mut s.judge, a.judge);
    if a.judge_model.is_some() {
        s.judge_model = a.judge_model;
    }
    set(&mut s.temperature, a.temperature);
    set(&mut s.pairrm_mode, a.pairrm_mode);
    set(&mut s.source_max_length, a.source_max_length);
    set(&mut s.candidate_max_length, a.candidate_max_length);
    if a.target.is_some() {
        s.target = a.target;
    }
    if a.pattern.is_some() {
        s.pattern = a.pattern;
    }
    set(&mut s.batch_size, a.batch_size);
    set(&mut s.device, a.device);
    if a.dtype.is_some() {
        s.dtype = a.dtype;
    }
    if a.cache_dir.is_some() {
        s.cache_dir = a.cache_dir;
    }
    if a.no_cache {
        s.cache = false;
    }
    let r = score::score(&ScoreJob {
        samples: &a.samples,
        out: &a.out,
        scores_out: a.scores_out.as_deref(),
        prompts: a.prompts.as_deref(),
        settings: &s,
        force: a.force,
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
