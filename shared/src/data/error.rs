//! Errors of the data layer.
//!
//! Every `DataError` names the file it is about; `ContentError` is the path-less description of
//! what was wrong inside (a column, a metadata key, a row), so conversions that do not know the
//! file can still say exactly what they found and what they expected. The wrapped library errors
//! are part of the message rather than `source()`, so `{:#}` in anyhow does not print them twice.

use std::path::PathBuf;

use thiserror::Error;

/// An error reading or writing a pipeline file, naming the file.
#[derive(Debug, Error)]
pub enum DataError {
    /// A filesystem operation failed; `action` says which ("cannot open", "cannot rename ...").
    #[error("{}: {action}: {error}", path.display())]
    Io {
        path: PathBuf,
        action: String,
        error: std::io::Error,
    },
    /// The Parquet layer failed (not a Parquet file, truncated, a write that failed).
    #[error("{}: {action}: {error}", path.display())]
    Parquet {
        path: PathBuf,
        action: String,
        error: parquet::errors::ParquetError,
    },
    /// The Arrow layer failed while decoding record batches.
    #[error("{}: {action}: {error}", path.display())]
    Arrow {
        path: PathBuf,
        action: String,
        error: arrow::error::ArrowError,
    },
    /// The file's content does not match the contract.
    #[error("{}: {problem}", path.display())]
    Content {
        path: PathBuf,
        problem: ContentError,
    },
}

impl DataError {
    pub(crate) fn io(
        path: impl Into<PathBuf>,
        action: impl Into<String>,
        error: std::io::Error,
    ) -> Self {
        DataError::Io {
            path: path.into(),
            action: action.into(),
            error,
        }
    }

    pub(crate) fn content(path: impl Into<PathBuf>, problem: ContentError) -> Self {
        DataError::Content {
            path: path.into(),
            problem,
        }
    }

    /// The content problem, when this error is one.
    pub fn problem(&self) -> Option<&ContentError> {
        match self {
            DataError::Content { problem, .. } => Some(problem),
            _ => None,
        }
    }
}

/// What is wrong with a file's columns, rows or metadata (without the file name). Rows are
/// counted from 0.
#[derive(Debug, Error)]
pub enum ContentError {
    #[error("missing column '{column}' (expected {expected})")]
    MissingColumn { column: String, expected: String },

    #[error("column '{column}' has type {found}, expected {expected}")]
    WrongType {
        column: String,
        found: String,
        expected: String,
    },

    #[error("column '{column}' has a null at row {row}, expected a value in every row")]
    Null { column: String, row: usize },

    #[error("column '{column}' has a null element in the list at row {row}, expected no nulls")]
    NullElement { column: String, row: usize },

    #[error("column '{column}' has value {found} at row {row}, expected {expected}")]
    BadValue {
        column: String,
        row: usize,
        found: String,
        expected: String,
    },

    #[error("duplicate {columns} = {key} at rows {first_row} and {second_row}")]
    DuplicateKey {
        columns: String,
        key: String,
        first_row: usize,
        second_row: usize,
    },

    #[error("rspo.schema is '{found}', expected '{expected}'")]
    WrongSchema { found: String, expected: String },

    #[error(
        "this is shard {shard} of a sharded run (`--shard`), not the whole file; expected the \
         merged file (`generate merge --out FILE SHARD...` joins the shards)"
    )]
    UnmergedShard { shard: String },

    #[error("missing metadata key '{key}' (expected {expected})")]
    MissingMetadata { key: String, expected: String },

    #[error("metadata key '{key}' is not valid: {reason}")]
    BadMetadata { key: String, reason: String },

    #[error(
        "no prompt column: expected a 'prompt' column (Utf8) or a 'messages' column \
         (List<Struct<role Utf8, content Utf8>>), or name one with the prompt column option; \
         found columns: {found}"
    )]
    NoPromptColumn { found: String },

    #[error(
        "both a 'prompt' and a 'messages' column found (columns: {found}), and nothing says \
         which holds the prompt: choose one with the prompt column option (`--prompt-column \
         messages`, or `prompt_column = \"prompt\"` in the pipeline's [generate] section), or \
         drop the other column"
    )]
    AmbiguousPromptColumn { found: String },

    #[error(
        "prompt '{prompt_id}' ({at}) ends with an assistant turn, so the model would be asked \
         to continue past the end of that turn: end each conversation with the user turn to be \
         answered (chat datasets' `messages` often include the answer as a last assistant turn: \
         drop it)"
    )]
    EndsWithAssistantTurn { prompt_id: String, at: String },

    #[error(
        "{at}: {reason} (expected JSON Lines, one object per line, or a JSON array of objects)"
    )]
    BadJson { at: String, reason: String },

    #[error("{at}: column '{column}' is {found}, expected {expected}")]
    JsonValue {
        at: String,
        column: String,
        found: String,
        expected: String,
    },

    #[error(
        "train_log row {row} has regularizer terms [{found}], expected [{expected}] \
         (every row of a train log has the same terms)"
    )]
    InconsistentTerms {
        row: usize,
        found: String,
        expected: String,
    },

    #[error("regularizer term name '{name}' is not usable as a column: {reason}")]
    BadTermName { name: String, reason: String },

    #[error("column '{column}' holds more list elements than one Arrow batch can ({count})")]
    TooLarge { column: String, count: usize },

    #[error("cannot assemble the Arrow batch: {0}")]
    Arrow(arrow::error::ArrowError),

    #[error("no *.safetensors weight files found (expected model.safetensors or model-*-of-*.safetensors)")]
    NoWeightFiles,

    #[error("chunk key '{key}' is already completed in this chunk folder")]
    ChunkKeyCompleted { key: String },

    #[error(
        "finish was given fingerprint '{found}', but the chunks were written for '{expected}'"
    )]
    ChunkFingerprint { found: String, expected: String },

    #[error(
        "the chunks hold {found} rows, expected {expected}; the final file was not written \
         (did another run share this output's chunk folder?)"
    )]
    ChunkRowCount { found: usize, expected: usize },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_travel_across_threads_and_into_anyhow() {
        fn assert_send_sync<T: Send + Sync + 'static>() {}
        assert_send_sync::<DataError>();
        let error = DataError::content(
            "data/x/samples.parquet",
            ContentError::WrongType {
                column: "response".into(),
                found: "Int64".into(),
                expected: "Utf8".into(),
            },
        );
        let error = anyhow::Error::from(error);
        assert_eq!(
            format!("{error:#}"),
            "data/x/samples.parquet: column 'response' has type Int64, expected Utf8"
        );
    }
}
