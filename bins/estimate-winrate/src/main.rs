//! `estimate-winrate`: each sample's win rate against its prompt's other samples.

use anyhow::Result;
use clap::Parser;
use rspo::stage::estimate_winrate::{self, WinrateJob, WinrateSettings};
use rspo::stage::{parse_command_line, Outcome, Settings, StageFlags};
use std::path::PathBuf;

/// Estimate each sample's win rate against the other samples of its prompt.
///
/// Reads preferences.parquet (from `score`; every pair i < j of each prompt, p = P(y_i beats
/// y_j)) and writes winrates.parquet with, per sample,
///   winrate_i = (0.5 + sum_{j != i} p_ij) / K     (the SPPO convention: a tie with itself)
/// or, with --exclude-self, sum_{j != i} p_ij / (K - 1); n_opponents = K - 1; and rank (0 = the
/// prompt's best, ties to the lower sample_idx). A prompt with a missing pair, a p outside
/// [0, 1] or K differing between prompts is an error.
///
/// It also reports the share of prompts whose preferences contain a 3-cycle (i beats j beats k
/// beats i: intransitivity a scalar judge cannot express) and, for judges that saw both orders
/// (p_forward/p_swapped present), how often the order changed the verdict. A run whose output
/// is up to date does nothing.
#[derive(Parser)]
#[command(version, about, long_about, verbatim_doc_comment)]
struct Cli {
    /// preferences.parquet from `score`.
    #[arg(long)]
    preferences: PathBuf,
    /// Output winrates.parquet.
    #[arg(long)]
    out: PathBuf,
    #[command(
        flatten,
        next_help_heading = "Settings (also the [winrate] section of --config)"
    )]
    settings: WinrateSettings,
    #[command(flatten)]
    run: StageFlags,
}

fn main() -> Result<()> {
    let (a, matches) = parse_command_line::<Cli>();
    let s = a.settings.under_config(a.run.config.as_deref(), &matches)?;
    let r = estimate_winrate::estimate_winrate(&WinrateJob {
        preferences: &a.preferences,
        out: &a.out,
        settings: &s,
        force: a.run.force,
    })?;
    match r.outcome {
        Outcome::UpToDate => eprintln!("estimate-winrate: {} is up to date", a.out.display()),
        Outcome::Written { rows } => eprintln!(
            "estimate-winrate: wrote {rows} win rates ({} prompts x K = {}) to {}",
            r.prompts,
            r.k,
            a.out.display()
        ),
    }
    eprintln!(
        "estimate-winrate: {:.1}% of prompts have a 3-cycle in their preferences",
        100.0 * r.intransitive_share
    );
    if let Some(p) = r.position {
        eprintln!(
            "estimate-winrate: position disagreement over {} pairs judged in both orders: {:.1}% flip, mean |p_forward - p_swapped| = {:.4}",
            p.pairs,
            100.0 * p.disagreement_share,
            p.mean_abs_gap
        );
    }
    Ok(())
}
