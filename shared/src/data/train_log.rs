//! train_log.parquet: one row per optimizer step. Besides the fixed columns it has one Float64
//! column per regularizer term (`reverse_kl`, `forward_kl_is`, ...), so its schema is built
//! from the term names: every column that is not a fixed one is a term.

use std::collections::BTreeMap;

use arrow::array::ArrayRef;
use arrow::datatypes::{DataType, Float64Type, Schema, UInt64Type};
use arrow::record_batch::RecordBatch;
use serde::{Deserialize, Serialize};

use super::columns::{f64_array, u64_array, Columns};
use super::error::ContentError;
use super::rows::{batch, Rows};
use super::schema::{
    check_columns, describe_type, is_train_log_fixed_column, train_log_schema, FileKind,
};

/// One optimizer step. Its wall-clock time is printed, never stored: the file is the same bytes
/// for the same run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainLogRow {
    /// Optimizer step, counted from 1 within the iteration.
    pub step: u64,
    /// Fractional epoch reached after this step (Hugging Face Trainer's convention).
    pub epoch: f64,
    /// The total loss.
    pub loss: f64,
    /// The self-play (squared error) part of the loss.
    pub self_play: f64,
    /// Each regularizer term's value T (before its coefficient), by term name.
    pub terms: BTreeMap<String, f64>,
    pub grad_norm: f64,
    pub lr: f64,
    /// Response tokens in the step's batch.
    pub tokens: u64,
    pub mean_logratio_t: f64,
    pub mean_logratio_ref: f64,
}

fn check_term_name(name: &str) -> Result<(), ContentError> {
    let reason = if name.is_empty() {
        "it is empty"
    } else if is_train_log_fixed_column(name) {
        "it is one of the fixed train_log columns"
    } else {
        return Ok(());
    };
    Err(ContentError::BadTermName {
        name: name.to_string(),
        reason: reason.to_string(),
    })
}

impl Rows for TrainLogRow {
    const KIND: FileKind = FileKind::TrainLog;

    fn check_schema(schema: &Schema) -> Result<(), ContentError> {
        check_columns(schema, &train_log_schema(&[]))?;
        for field in schema.fields() {
            if !is_train_log_fixed_column(field.name()) && field.data_type() != &DataType::Float64 {
                return Err(ContentError::WrongType {
                    column: field.name().clone(),
                    found: describe_type(field.data_type()),
                    expected: format!("{} (a regularizer term)", describe_type(&DataType::Float64)),
                });
            }
        }
        Ok(())
    }

    fn to_batch(rows: &[Self]) -> Result<RecordBatch, ContentError> {
        let terms: Vec<&str> = rows
            .first()
            .map(|row| row.terms.keys().map(String::as_str).collect())
            .unwrap_or_default();
        for name in &terms {
            check_term_name(name)?;
        }
        for (row, entry) in rows.iter().enumerate() {
            if !entry
                .terms
                .keys()
                .map(String::as_str)
                .eq(terms.iter().copied())
            {
                return Err(ContentError::InconsistentTerms {
                    row,
                    found: entry.terms.keys().cloned().collect::<Vec<_>>().join(", "),
                    expected: terms.join(", "),
                });
            }
        }
        let mut columns: Vec<ArrayRef> = vec![
            u64_array(rows.iter().map(|r| r.step)),
            f64_array(rows.iter().map(|r| r.epoch)),
            f64_array(rows.iter().map(|r| r.loss)),
            f64_array(rows.iter().map(|r| r.self_play)),
        ];
        for name in &terms {
            // Every row has every term (checked above).
            columns.push(f64_array(
                rows.iter()
                    .map(|r| r.terms.get(*name).copied().unwrap_or(f64::NAN)),
            ));
        }
        columns.extend([
            f64_array(rows.iter().map(|r| r.grad_norm)),
            f64_array(rows.iter().map(|r| r.lr)),
            u64_array(rows.iter().map(|r| r.tokens)),
            f64_array(rows.iter().map(|r| r.mean_logratio_t)),
            f64_array(rows.iter().map(|r| r.mean_logratio_ref)),
        ]);
        batch(train_log_schema(&terms), columns)
    }

    fn from_batch(batch: &RecordBatch) -> Result<Vec<Self>, ContentError> {
        let c = Columns::new(batch);
        let f64s = |name: &str| c.values::<Float64Type>(name);
        let step = c.values::<UInt64Type>("step")?;
        let epoch = f64s("epoch")?;
        let loss = f64s("loss")?;
        let self_play = f64s("self_play")?;
        let grad_norm = f64s("grad_norm")?;
        let lr = f64s("lr")?;
        let tokens = c.values::<UInt64Type>("tokens")?;
        let mean_logratio_t = f64s("mean_logratio_t")?;
        let mean_logratio_ref = f64s("mean_logratio_ref")?;
        let mut terms: Vec<(String, Vec<f64>)> = Vec::new();
        for name in c.names() {
            if !is_train_log_fixed_column(&name) {
                let values = f64s(&name)?;
                terms.push((name, values));
            }
        }
        Ok((0..batch.num_rows())
            .map(|i| TrainLogRow {
                step: step[i],
                epoch: epoch[i],
                loss: loss[i],
                self_play: self_play[i],
                terms: terms
                    .iter()
                    .map(|(name, values)| (name.clone(), values[i]))
                    .collect(),
                grad_norm: grad_norm[i],
                lr: lr[i],
                tokens: tokens[i],
                mean_logratio_t: mean_logratio_t[i],
                mean_logratio_ref: mean_logratio_ref[i],
            })
            .collect())
    }
}
