//! Which judge, and the options of each judge: the flags `score` and `evaluate` share, and the
//! keys of the pipeline file's `[score]` section that choose the judge.

use serde::{Deserialize, Serialize};

use super::registry::judges_help;

/// `--judge`'s long help: every judge of the registry with its description.
fn judge_flag_help() -> String {
    format!("The judge, one of:\n{}", judges_help().trim_end())
}
use std::path::PathBuf;

/// The judge and its options (a judge reads the ones it needs and ignores the rest).
#[derive(Debug, Clone, Serialize, Deserialize, clap::Args)]
pub struct JudgeSettings {
    /// The judge (`--help` lists them).
    #[arg(long, default_value = "reward-model", long_help = judge_flag_help())]
    pub judge: String,
    /// reward-model, pairrm, llm: the judge's model, a Hugging Face directory, Hub id or GGUF
    /// file.
    #[arg(long, value_name = "DIR_OR_HUB_ID")]
    pub judge_model: Option<String>,
    /// rule:length: the ideal response length in characters.
    #[arg(long, value_name = "N")]
    pub target: Option<usize>,
    /// rule:contains: a regular expression (Rust `regex` syntax) searched in the response.
    #[arg(long, value_name = "REGEX")]
    pub pattern: Option<String>,
    /// pairrm: pairwise (p = mean of both orders) or sppo (Bradley-Terry on the group's mean
    /// logit differences, as SPPO's pipeline did).
    #[arg(long, default_value = "pairwise")]
    pub pairrm_mode: String,
    /// pairrm: the source (instruction) PairRM reads: last-user-turn (the default: the
    /// conversation's last user turn, PairRM's model-card usage) or chat-template (the prompt
    /// after the policy's chat template, the samples' prompt_text, as the official SPPO/RSPO
    /// pipeline's rank.py passes it).
    #[arg(long, default_value = "last-user-turn")]
    pub pairrm_source: String,
    /// pairrm: token limit of the source (the prompt); PairRM-hf's default.
    #[arg(long, default_value_t = 1224)]
    pub source_max_length: usize,
    /// pairrm: token limit of each candidate; PairRM-hf's default.
    #[arg(long, default_value_t = 412)]
    pub candidate_max_length: usize,
    /// llm: a Jinja file that renders the comparison prompt from `instruction`, `output_1`,
    /// `output_2` and, optionally, `reference` [default: the built-in AlpacaEval-style one].
    #[arg(long, value_name = "FILE")]
    pub judge_template: Option<PathBuf>,
    /// llm: the answers meaning "output_1 wins" and "output_2 wins", each one token of the
    /// judge's tokenizer after its generation prompt.
    #[arg(long, value_name = "A,B", default_value = super::llm_prompt::DEFAULT_VERDICTS)]
    pub verdicts: String,
    /// The judgment cache folder [default: $RSPO_CACHE_DIR, else $XDG_CACHE_HOME/rspo, else
    /// ~/.cache/rspo]; judgments go to its judgments/ subfolder.
    #[arg(long, value_name = "DIR")]
    pub cache_dir: Option<PathBuf>,
    /// Use the judgment cache; `--no-cache` neither reads nor writes it.
    #[arg(long = "no-cache", action = clap::ArgAction::SetFalse)]
    pub cache: bool,
}
