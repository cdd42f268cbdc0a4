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
//! [`rules`], the [`InstructionsJudge`] of verifiable [`constraints`]) and [`PairwiseJudge`], held by stages as a [`Judge`]; [`JudgmentCache`] keeps their
//! verdicts across runs.

pub mod cache;
mod constraint_text;
pub mod constraints;
mod instructions;
mod intransitivity;
mod pairrm;
mod pairrm_deberta;
mod pairrm_inputs;
mod pairrm_judge;
mod position_disagreement;
mod preference_matrix;
mod reward_model;
pub mod rules;
mod scalar_scores;
mod scripts;
mod traits;
mod winrate;

pub use cache::JudgmentCache;
pub use instructions::{constraint_outcomes, ConstraintOutcome, InstructionsJudge, CHECKS_VERSION};
pub use intransitivity::{find_three_cycle, has_three_cycle, intransitive_share};
pub use pairrm::{
    random_pairrm_weights, LogitMatrix, PairRm, PairRmConfig, PairRmError, PairRmMode,
    PairRmOptions, PairRmVerdict,
};
pub use pairrm_deberta::{log_bucket_position, DebertaV2Config, DebertaV2Encoder};
pub use pairrm_inputs::{PairInput, PairRmLengths, PairTokenizer, PrefixIds};
pub use pairrm_judge::PairRmJudge;
pub use position_disagreement::{
    position_disagreement, PositionDisagreement, PositionDisagreementError, TwoOrderVerdict,
};
pub use preference_matrix::{PairPreference, PreferenceError, PreferenceMatrix};
pub use reward_model::{reward_scores, RewardModelJudge};
pub use scalar_scores::{matrix_from_scores, preference_from_scores, sigmoid};
pub use scripts::Script;
pub use traits::{
    judge_digest, Judge, JudgeError, JudgeItem, PairVerdict, PairwiseJudge, ScalarJudge,
};
pub use winrate::{winrates, Convention, SampleWinrate};
