//! Judges' preferences and what self-play needs from them.
//!
//! A prompt's K samples are compared pairwise into a [`PreferenceMatrix`] (from a pairwise judge's
//! `preferences.parquet` rows, or lifted from a scalar judge's scores with [`matrix_from_scores`]);
//! [`winrates()`] turns it into each sample's win rate and rank. [`intransitive_share`] and
//! [`position_disagreement()`] describe the judge itself: how often its preferences cycle and how much
//! its verdict depends on which response it saw first. Reading and writing the Parquet files is
//! `data`'s job.
//!
//! The judges themselves: [`ScalarJudge`] (a [`RewardModelJudge`], the `rule:*` judges in
//! [`rules`], the [`InstructionsJudge`] of verifiable [`constraints`]) and [`PairwiseJudge`] (a
//! [`PairRmJudge`], an [`LlmJudge`]), held by stages as a [`Judge`]. The [`registry`] names every
//! judge `--judge` accepts and builds it from the settings; a [`CachedJudge`] keeps their verdicts
//! across runs in a [`JudgmentCache`].

pub mod cache;
mod cached_judge;
mod constraint_text;
pub mod constraints;
mod instructions;
mod intransitivity;
mod judge_model;
mod llm_judge;
mod llm_prompt;
mod pairrm;
mod pairrm_deberta;
mod pairrm_inputs;
mod pairrm_judge;
mod position_disagreement;
mod preference_matrix;
pub mod registry;
mod reward_model;
pub mod rules;
mod sample_winrates;
mod scalar_scores;
mod scripts;
mod settings;
mod traits;

pub use cache::JudgmentCache;
pub use cached_judge::{CachedJudge, ChunkVerdicts, Verdicts};
pub use instructions::{InstructionsJudge, CHECKS_VERSION};
pub use intransitivity::{find_three_cycle, has_three_cycle, intransitive_share};
pub use judge_model::judge_model_name;
pub use llm_judge::{both_orders, LlmJudge, ROWS_PER_FORWARD};
pub use llm_prompt::{
    parse_verdicts, verdict_ids, ComparisonTemplate, ShownPair, DEFAULT_TEMPLATE, DEFAULT_VERDICTS,
};
pub use pairrm::{
    random_pairrm_weights, LogitMatrix, PairRm, PairRmConfig, PairRmError, PairRmMode,
    PairRmOptions, PairRmSource, PairRmVerdict,
};
pub use pairrm_deberta::{log_bucket_position, DebertaV2Config, DebertaV2Encoder};
pub use pairrm_inputs::{PairInput, PairRmLengths, PairTokenizer, PrefixIds};
pub use pairrm_judge::PairRmJudge;
pub use position_disagreement::{
    position_disagreement, PositionDisagreement, PositionDisagreementError, TwoOrderVerdict,
};
pub use preference_matrix::{PairPreference, PreferenceError, PreferenceMatrix};
pub use registry::{find_judge, judge_names, judges_help, Comparison, JudgeEntry, JudgeSpec};
pub use reward_model::{reward_scores, RewardModelJudge};
pub use sample_winrates::{winrates, Convention, SampleWinrate};
pub use scalar_scores::{matrix_from_scores, preference_from_scores, sigmoid};
pub use scripts::Script;
pub use settings::JudgeSettings;
pub use traits::{
    judge_digest, pairs_of, ConstraintOutcome, Judge, JudgeError, JudgeItem, JudgedPair,
    PairVerdict, PairwiseJudge, ScalarJudge,
};
