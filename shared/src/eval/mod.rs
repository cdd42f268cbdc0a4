//! Evaluation metrics over a model's responses (the `evaluate` stage's numbers).
//!
//! [`lc_winrate`] fits AlpacaEval 2's length-controlled win rate (minimal GLM) to a model's
//! preferences against a baseline; [`diversity`] measures how different a prompt's K samples are
//! (self-BLEU-3, distinct-1/2); [`response_stats`](mean_response_length) gives the length, EOS rate and
//! log-ratio summaries. Everything here works on in-memory slices; Parquet I/O is `data`'s job.

mod lc_winrate;

pub use lc_winrate::{lc_winrate, LcWinrate, LcWinrateError};
