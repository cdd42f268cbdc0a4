//! Row types of the fixed-schema file kinds and the [`Rows`] trait that converts them to and
//! from Arrow record batches. Prompts ([`super::prompts`]) and train logs
//! ([`super::train_log`]) have their own files because their columns vary.

use std::collections::HashMap;
use std::fmt;
use std::mem::take;
use std::sync::Arc;

use arrow::array::ArrayRef;
use arrow::datatypes::{Float32Type, Float64Type, Schema, UInt32Type, UInt64Type};
use arrow::record_batch::RecordBatch;
use serde::{Deserialize, Serialize};

use super::columns::{
    f64_array, list_array, messages_array, optional_f64_array, string_array, u32_array, u64_array,
    Columns,
};
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

impl Rows for SampleRow {
    const KIND: FileKind = FileKind::Samples;

    fn to_batch(rows: &[Self]) -> Result<RecordBatch, ContentError> {
        batch(
            Self::KIND.arrow_schema(),
            vec![
                string_array(rows.iter().map(|r| r.prompt_id.as_str())),
                u32_array(rows.iter().map(|r| r.sample_idx)),
                messages_array("messages", rows.iter().map(|r| r.messages.as_slice()))?,
                string_array(rows.iter().map(|r| r.prompt_text.as_str())),
                string_array(rows.iter().map(|r| r.response.as_str())),
                list_array::<UInt32Type>(
                    "prompt_token_ids",
                    rows.iter().map(|r| r.prompt_token_ids.as_slice()),
                )?,
                list_array::<UInt32Type>(
                    "response_token_ids",
                    rows.iter().map(|r| r.response_token_ids.as_slice()),
                )?,
                string_array(rows.iter().map(|r| r.finish_reason.as_str())),
                f64_array(rows.iter().map(|r| r.sample_logprob)),
                u64_array(rows.iter().map(|r| r.seed)),
            ],
        )
    }

    fn from_batch(batch: &RecordBatch) -> Result<Vec<Self>, ContentError> {
        let c = Columns::new(batch);
        let mut prompt_id = c.strings("prompt_id")?;
        let sample_idx = c.values::<UInt32Type>("sample_idx")?;
        let mut messages = c.messages("messages")?;
        let mut prompt_text = c.strings("prompt_text")?;
        let mut response = c.strings("response")?;
        let mut prompt_token_ids = c.lists::<UInt32Type>("prompt_token_ids")?;
        let mut response_token_ids = c.lists::<UInt32Type>("response_token_ids")?;
        let finish_reason = c.strings("finish_reason")?;
        let sample_logprob = c.values::<Float64Type>("sample_logprob")?;
        let seed = c.values::<UInt64Type>("seed")?;
        (0..batch.num_rows())
            .map(|i| {
                let finish_reason = FinishReason::parse(&finish_reason[i]).ok_or_else(|| {
                    ContentError::BadValue {
                        column: "finish_reason".into(),
                        row: i,
                        found: format!("'{}'", finish_reason[i]),
                        expected: "'eos' or 'length'".into(),
                    }
                })?;
                Ok(SampleRow {
                    prompt_id: take(&mut prompt_id[i]),
                    sample_idx: sample_idx[i],
                    messages: take(&mut messages[i]),
                    prompt_text: take(&mut prompt_text[i]),
                    response: take(&mut response[i]),
                    prompt_token_ids: take(&mut prompt_token_ids[i]),
                    response_token_ids: take(&mut response_token_ids[i]),
                    finish_reason,
                    sample_logprob: sample_logprob[i],
                    seed: seed[i],
                })
            })
            .collect()
    }

    fn key(&self) -> Option<String> {
        Some(format!("({:?}, {})", self.prompt_id, self.sample_idx))
    }
}

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

impl Rows for LogprobRow {
    const KIND: FileKind = FileKind::Logprobs;

    fn to_batch(rows: &[Self]) -> Result<RecordBatch, ContentError> {
        batch(
            Self::KIND.arrow_schema(),
            vec![
                string_array(rows.iter().map(|r| r.prompt_id.as_str())),
                u32_array(rows.iter().map(|r| r.sample_idx)),
                f64_array(rows.iter().map(|r| r.logprob)),
                list_array::<Float32Type>(
                    "token_logprobs",
                    rows.iter().map(|r| r.token_logprobs.as_slice()),
                )?,
                u32_array(rows.iter().map(|r| r.num_tokens)),
            ],
        )
    }

    fn from_batch(batch: &RecordBatch) -> Result<Vec<Self>, ContentError> {
        let c = Columns::new(batch);
        let mut prompt_id = c.strings("prompt_id")?;
        let sample_idx = c.values::<UInt32Type>("sample_idx")?;
        let logprob = c.values::<Float64Type>("logprob")?;
        let mut token_logprobs = c.lists::<Float32Type>("token_logprobs")?;
        let num_tokens = c.values::<UInt32Type>("num_tokens")?;
        Ok((0..batch.num_rows())
            .map(|i| LogprobRow {
                prompt_id: take(&mut prompt_id[i]),
                sample_idx: sample_idx[i],
                logprob: logprob[i],
                token_logprobs: take(&mut token_logprobs[i]),
                num_tokens: num_tokens[i],
            })
            .collect())
    }

    fn key(&self) -> Option<String> {
        Some(format!("({:?}, {})", self.prompt_id, self.sample_idx))
    }
}

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

impl Rows for PreferenceRow {
    const KIND: FileKind = FileKind::Preferences;

    fn to_batch(rows: &[Self]) -> Result<RecordBatch, ContentError> {
        batch(
            Self::KIND.arrow_schema(),
            vec![
                string_array(rows.iter().map(|r| r.prompt_id.as_str())),
                u32_array(rows.iter().map(|r| r.i)),
                u32_array(rows.iter().map(|r| r.j)),
                f64_array(rows.iter().map(|r| r.p)),
                optional_f64_array(rows.iter().map(|r| r.p_forward)),
                optional_f64_array(rows.iter().map(|r| r.p_swapped)),
                string_array(rows.iter().map(|r| r.judge.as_str())),
            ],
        )
    }

    fn from_batch(batch: &RecordBatch) -> Result<Vec<Self>, ContentError> {
        let c = Columns::new(batch);
        let mut prompt_id = c.strings("prompt_id")?;
        let i = c.values::<UInt32Type>("i")?;
        let j = c.values::<UInt32Type>("j")?;
        let p = c.values::<Float64Type>("p")?;
        let p_forward = c.optional_values::<Float64Type>("p_forward")?;
        let p_swapped = c.optional_values::<Float64Type>("p_swapped")?;
        let mut judge = c.strings("judge")?;
        Ok((0..batch.num_rows())
            .map(|k| PreferenceRow {
                prompt_id: take(&mut prompt_id[k]),
                i: i[k],
                j: j[k],
                p: p[k],
                p_forward: p_forward[k],
                p_swapped: p_swapped[k],
                judge: take(&mut judge[k]),
            })
            .collect())
    }

    fn key(&self) -> Option<String> {
        Some(format!("({:?}, {}, {})", self.prompt_id, self.i, self.j))
    }
}

/// A scalar judge's score of one sample (scores.parquet).
#[derive(Debug, Clone, PartialEq)]
pub struct ScoreRow {
    pub prompt_id: String,
    pub sample_idx: u32,
    pub score: f64,
}

impl Rows for ScoreRow {
    const KIND: FileKind = FileKind::Scores;

    fn to_batch(rows: &[Self]) -> Result<RecordBatch, ContentError> {
        batch(
            Self::KIND.arrow_schema(),
            vec![
                string_array(rows.iter().map(|r| r.prompt_id.as_str())),
                u32_array(rows.iter().map(|r| r.sample_idx)),
                f64_array(rows.iter().map(|r| r.score)),
            ],
        )
    }

    fn from_batch(batch: &RecordBatch) -> Result<Vec<Self>, ContentError> {
        let c = Columns::new(batch);
        let mut prompt_id = c.strings("prompt_id")?;
        let sample_idx = c.values::<UInt32Type>("sample_idx")?;
        let score = c.values::<Float64Type>("score")?;
        Ok((0..batch.num_rows())
            .map(|i| ScoreRow {
                prompt_id: take(&mut prompt_id[i]),
                sample_idx: sample_idx[i],
                score: score[i],
            })
            .collect())
    }

    fn key(&self) -> Option<String> {
        Some(format!("({:?}, {})", self.prompt_id, self.sample_idx))
    }
}

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

impl Rows for WinrateRow {
    const KIND: FileKind = FileKind::Winrates;

    fn to_batch(rows: &[Self]) -> Result<RecordBatch, ContentError> {
        batch(
            Self::KIND.arrow_schema(),
            vec![
                string_array(rows.iter().map(|r| r.prompt_id.as_str())),
                u32_array(rows.iter().map(|r| r.sample_idx)),
                f64_array(rows.iter().map(|r| r.winrate)),
                u32_array(rows.iter().map(|r| r.n_opponents)),
                u32_array(rows.iter().map(|r| r.rank)),
            ],
        )
    }

    fn from_batch(batch: &RecordBatch) -> Result<Vec<Self>, ContentError> {
        let c = Columns::new(batch);
        let mut prompt_id = c.strings("prompt_id")?;
        let sample_idx = c.values::<UInt32Type>("sample_idx")?;
        let winrate = c.values::<Float64Type>("winrate")?;
        let n_opponents = c.values::<UInt32Type>("n_opponents")?;
        let rank = c.values::<UInt32Type>("rank")?;
        Ok((0..batch.num_rows())
            .map(|i| WinrateRow {
                prompt_id: take(&mut prompt_id[i]),
                sample_idx: sample_idx[i],
                winrate: winrate[i],
                n_opponents: n_opponents[i],
                rank: rank[i],
            })
            .collect())
    }

    fn key(&self) -> Option<String> {
        Some(format!("({:?}, {})", self.prompt_id, self.sample_idx))
    }
}

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
}

impl Rows for EvalRow {
    const KIND: FileKind = FileKind::Eval;

    fn to_batch(rows: &[Self]) -> Result<RecordBatch, ContentError> {
        batch(
            Self::KIND.arrow_schema(),
            vec![
                string_array(rows.iter().map(|r| r.model.as_str())),
                string_array(rows.iter().map(|r| r.prompt_id.as_str())),
                u32_array(rows.iter().map(|r| r.sample_idx)),
                string_array(rows.iter().map(|r| r.response.as_str())),
                string_array(rows.iter().map(|r| r.baseline.as_str())),
                f64_array(rows.iter().map(|r| r.p_win)),
                u32_array(rows.iter().map(|r| r.len_response)),
                u32_array(rows.iter().map(|r| r.len_baseline)),
            ],
        )
    }

    fn from_batch(batch: &RecordBatch) -> Result<Vec<Self>, ContentError> {
        let c = Columns::new(batch);
        let mut model = c.strings("model")?;
        let mut prompt_id = c.strings("prompt_id")?;
        let sample_idx = c.values::<UInt32Type>("sample_idx")?;
        let mut response = c.strings("response")?;
        let mut baseline = c.strings("baseline")?;
        let p_win = c.values::<Float64Type>("p_win")?;
        let len_response = c.values::<UInt32Type>("len_response")?;
        let len_baseline = c.values::<UInt32Type>("len_baseline")?;
        Ok((0..batch.num_rows())
            .map(|i| EvalRow {
                model: take(&mut model[i]),
                prompt_id: take(&mut prompt_id[i]),
                sample_idx: sample_idx[i],
                response: take(&mut response[i]),
                baseline: take(&mut baseline[i]),
                p_win: p_win[i],
                len_response: len_response[i],
                len_baseline: len_baseline[i],
            })
            .collect())
    }

    fn key(&self) -> Option<String> {
        Some(format!(
            "({:?}, {:?}, {})",
            self.model, self.prompt_id, self.sample_idx
        ))
    }
}
