//! Row types of the fixed-schema file kinds and the [`Rows`] trait that converts them to and
//! from Arrow record batches. Prompts ([`super::prompts`]) and train logs
//! ([`super::train_log`]) have their own files because their columns vary.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

use arrow::array::ArrayRef;
use arrow::datatypes::Schema;
use arrow::record_batch::RecordBatch;
use serde::{Deserialize, Serialize};

use super::columns::{string_array, Column, Columns};
use super::error::ContentError;
use super::schema::{check_columns, FileKind};

/// Conversion between a slice of rows and one Arrow record batch, for one file kind.
pub trait Rows: Sized {
    const KIND: FileKind;

    /// Checks a file's columns (presence and types) before any row is converted.
    fn check_schema(schema: &Schema) -> Result<(), ContentError> {
        check_columns(schema, &Self::KIND.arrow_schema())
    }

    fn to_batch(rows: &[Self]) -> Result<RecordBatch, ContentError>;

    fn from_batch(batch: &RecordBatch) -> Result<Vec<Self>, ContentError>;

    /// The row's identity in [`FileKind::key_columns`] order, formatted for messages, when the
    /// kind has a key.
    fn key(&self) -> Option<String> {
        None
    }
}

/// Rejects two rows with the same key.
pub fn check_unique_keys<R: Rows>(rows: &[R]) -> Result<(), ContentError> {
    let Some(columns) = R::KIND.key_columns() else {
        return Ok(());
    };
    let mut seen: HashMap<String, usize> = HashMap::with_capacity(rows.len());
    for (row, key) in rows.iter().enumerate() {
        let Some(key) = key.key() else { continue };
        if let Some(&first_row) = seen.get(&key) {
            return Err(ContentError::DuplicateKey {
                columns: columns.to_string(),
                key,
                first_row,
                second_row: row,
            });
        }
        seen.insert(key, row);
    }
    Ok(())
}

pub(crate) fn batch(schema: Schema, columns: Vec<ArrayRef>) -> Result<RecordBatch, ContentError> {
    RecordBatch::try_new(Arc::new(schema), columns).map_err(ContentError::Arrow)
}

/// Implements [`Rows`] for a row struct whose fields are, in order, its kind's columns (same
/// names); each field's type says how it is stored ([`Column`]). The key fields format as
/// `("p1", 0)` in messages.
macro_rules! rows {
    ($row:ident, $kind:ident, key($($key:ident),+), [$($field:ident),+ $(,)?]) => {
        impl Rows for $row {
            const KIND: FileKind = FileKind::$kind;

            fn to_batch(rows: &[Self]) -> Result<RecordBatch, ContentError> {
                batch(
                    Self::KIND.arrow_schema(),
                    vec![$(Column::build(stringify!($field), rows.iter().map(|r| &r.$field))?),+],
                )
            }

            fn from_batch(batch: &RecordBatch) -> Result<Vec<Self>, ContentError> {
                let c = Columns::new(batch);
                $(let mut $field = Column::read(&c, stringify!($field))?.into_iter();)+
                // Every column of a record batch has num_rows values.
                Ok((0..batch.num_rows())
                    .map(|_| $row { $($field: $field.next().expect("a value per row")),+ })
                    .collect())
            }

            fn key(&self) -> Option<String> {
                let parts: Vec<String> = vec![$(format!("{:?}", self.$key)),+];
                Some(format!("({})", parts.join(", ")))
            }
        }
    };
}

/// One chat message.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Message {
    pub role: String,
    pub content: String,
}

impl Message {
    pub fn new(role: impl Into<String>, content: impl Into<String>) -> Self {
        Message {
            role: role.into(),
            content: content.into(),
        }
    }

    pub fn user(content: impl Into<String>) -> Self {
        Message::new("user", content)
    }
}

/// Why generation stopped: the model emitted end-of-sequence, or hit the token limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FinishReason {
    Eos,
    Length,
}

impl FinishReason {
    /// The stored value: `eos` or `length`.
    pub fn as_str(self) -> &'static str {
        match self {
            FinishReason::Eos => "eos",
            FinishReason::Length => "length",
        }
    }

    pub fn parse(value: &str) -> Option<FinishReason> {
        match value {
            "eos" => Some(FinishReason::Eos),
            "length" => Some(FinishReason::Length),
            _ => None,
        }
    }
}

impl Column for FinishReason {
    fn build<'r>(
        _: &str,
        values: impl Iterator<Item = &'r Self>,
    ) -> Result<ArrayRef, ContentError> {
        Ok(string_array(values.map(|f| f.as_str())))
    }

    fn read(columns: &Columns<'_>, name: &str) -> Result<Vec<Self>, ContentError> {
        let values = columns.strings(name)?;
        values
            .iter()
            .enumerate()
            .map(|(row, v)| {
                FinishReason::parse(v).ok_or_else(|| ContentError::BadValue {
                    column: name.into(),
                    row,
                    found: format!("'{v}'"),
                    expected: "'eos' or 'length'".into(),
                })
            })
            .collect()
    }
}

impl fmt::Display for FinishReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One sampled response (samples.parquet).
#[derive(Debug, Clone, PartialEq)]
pub struct SampleRow {
    pub prompt_id: String,
    pub sample_idx: u32,
    /// The prompt conversation before any chat template.
    pub messages: Vec<Message>,
    /// The prompt after the policy's chat template.
    pub prompt_text: String,
    pub response: String,
    pub prompt_token_ids: Vec<u32>,
    pub response_token_ids: Vec<u32>,
    pub finish_reason: FinishReason,
    /// Sum of log-softmax of the raw logits at the sampled tokens (diagnostics).
    pub sample_logprob: f64,
    pub seed: u64,
}

rows!(
    SampleRow,
    Samples,
    key(prompt_id, sample_idx),
    [
        prompt_id,
        sample_idx,
        messages,
        prompt_text,
        response,
        prompt_token_ids,
        response_token_ids,
        finish_reason,
        sample_logprob,
        seed
    ]
);

/// Teacher-forced log-probabilities of one sample under one model (logprobs-<role>.parquet).
#[derive(Debug, Clone, PartialEq)]
pub struct LogprobRow {
    pub prompt_id: String,
    pub sample_idx: u32,
    /// Sum over the response tokens.
    pub logprob: f64,
    pub token_logprobs: Vec<f32>,
    pub num_tokens: u32,
}

rows!(
    LogprobRow,
    Logprobs,
    key(prompt_id, sample_idx),
    [prompt_id, sample_idx, logprob, token_logprobs, num_tokens]
);

/// One judged pair of a prompt's samples (preferences.parquet).
#[derive(Debug, Clone, PartialEq)]
pub struct PreferenceRow {
    pub prompt_id: String,
    /// i < j; every pair of a prompt appears once.
    pub i: u32,
    pub j: u32,
    /// P(y_i beats y_j).
    pub p: f64,
    /// A pairwise judge's verdict with y_i shown first.
    pub p_forward: Option<f64>,
    /// A pairwise judge's verdict with y_j shown first, as P(y_i beats y_j).
    pub p_swapped: Option<f64>,
    pub judge: String,
}

rows!(
    PreferenceRow,
    Preferences,
    key(prompt_id, i, j),
    [prompt_id, i, j, p, p_forward, p_swapped, judge]
);

/// A scalar judge's score of one sample (scores.parquet).
#[derive(Debug, Clone, PartialEq)]
pub struct ScoreRow {
    pub prompt_id: String,
    pub sample_idx: u32,
    pub score: f64,
}

rows!(
    ScoreRow,
    Scores,
    key(prompt_id, sample_idx),
    [prompt_id, sample_idx, score]
);

/// Whether a response satisfies one of its prompt's constraints (constraints.parquet, written
/// by the `instructions` judge beside scores.parquet).
#[derive(Debug, Clone, PartialEq)]
pub struct ConstraintRow {
    pub prompt_id: String,
    pub sample_idx: u32,
    /// The constraint's position in the prompt's list, from 0.
    pub constraint_idx: u32,
    pub kind: String,
    /// The constraint's JSON object (kind and arguments), keys sorted.
    pub constraint: String,
    pub passed: bool,
}

rows!(
    ConstraintRow,
    Constraints,
    key(prompt_id, sample_idx, constraint_idx),
    [
        prompt_id,
        sample_idx,
        constraint_idx,
        kind,
        constraint,
        passed
    ]
);

/// A sample's estimated win rate against the policy (winrates.parquet).
#[derive(Debug, Clone, PartialEq)]
pub struct WinrateRow {
    pub prompt_id: String,
    pub sample_idx: u32,
    pub winrate: f64,
    pub n_opponents: u32,
    /// 0 = best of the prompt's samples.
    pub rank: u32,
}

rows!(
    WinrateRow,
    Winrates,
    key(prompt_id, sample_idx),
    [prompt_id, sample_idx, winrate, n_opponents, rank]
);

/// One judged (model, prompt, sample) of an evaluation (eval.parquet).
#[derive(Debug, Clone, PartialEq)]
pub struct EvalRow {
    pub model: String,
    pub prompt_id: String,
    pub sample_idx: u32,
    pub response: String,
    pub baseline: String,
    /// P(model's response beats the baseline), ties 0.5.
    pub p_win: f64,
    /// Length of the response in characters (Unicode scalar values).
    pub len_response: u32,
    /// Length of the baseline in characters (Unicode scalar values).
    pub len_baseline: u32,
    /// Why the response's generation stopped.
    pub finish_reason: FinishReason,
    /// Length of the response in tokens (the model's tokenizer).
    pub tokens_response: u32,
    /// A scalar judge's score of the response (pairwise judges: none).
    pub score_response: Option<f64>,
    /// A scalar judge's score of the baseline (pairwise judges: none).
    pub score_baseline: Option<f64>,
    /// A pairwise judge's verdict with the response shown first, as P(response wins).
    pub p_forward: Option<f64>,
    /// A pairwise judge's verdict with the baseline shown first, as P(response wins).
    pub p_swapped: Option<f64>,
}

rows!(
    EvalRow,
    Eval,
    key(model, prompt_id, sample_idx),
    [
        model,
        prompt_id,
        sample_idx,
        response,
        baseline,
        p_win,
        len_response,
        len_baseline,
        finish_reason,
        tokens_response,
        score_response,
        score_baseline,
        p_forward,
        p_swapped
    ]
);
