//! Evaluation metrics over a model's responses (the `evaluate` stage's numbers).
//!
//! [`lc_winrate()`] fits AlpacaEval 2's length-controlled win rate (minimal GLM) to a model's
//! preferences against a baseline; [`diversity()`] measures how different each prompt's K samples
//! are (self-BLEU-3 via NLTK-compatible [`sentence_bleu`], distinct-1/2, over lowercased words or
//! NLTK word tokens, [`Tokens`]); [`mean_response_length`],
//! [`eos_rate`] and [`mean_log_ratio`] summarize the responses themselves. Everything here works on
//! in-memory slices; Parquet I/O is `data`'s job. [`line_chart_svg`] draws the reports' charts;
//! [`html_report`] renders report.html.

mod bleu;
mod diversity;
pub mod html_report;
mod lc_winrate;
mod response_stats;
mod svg_chart;
mod treebank;

pub use bleu::sentence_bleu;
pub use diversity::{
    distinct_n, diversity, diversity_with, self_bleu3, tokenize, Diversity, DiversityError, Tokens,
};
pub use lc_winrate::{lc_winrate, LcWinrate, LcWinrateError};
pub use response_stats::{
    char_length, eos_rate, mean_log_ratio, mean_response_length, ResponseStatsError,
};
pub use svg_chart::{line_chart_svg, ChartError, LineChart, Series};
pub use treebank::{treebank_tokenize, TreebankError};
