//! Prompt files. Unlike every other kind they may come from other tools (a Hugging Face
//! dataset's parquet, or JSON: json_prompts.rs), so reading is lenient: the prompt is a `prompt`
//! string column (one user turn) or a `messages` conversation column (not both), or a column named
//! by the caller; `prompt_id` and `reference` are optional; Utf8 and LargeUtf8 (and List and
//! LargeList) are both accepted. A conversation must not end with an assistant turn. An optional
//! `constraints` column carries the prompt's verifiable instructions ([`super::constraints_column`]).

use std::mem::take;

use arrow::datatypes::{DataType, Schema};
use arrow::record_batch::RecordBatch;

use super::columns::{messages_array, optional_string_array, string_array, Columns};
use super::constraints_column::read_constraints;
use super::error::ContentError;
use super::fingerprint::{prompt_id_for, prompt_id_for_messages};
use super::rows::{batch, Message, Rows};
use super::schema::{describe_type, messages_type, FileKind};

/// One prompt.
#[derive(Debug, Clone, PartialEq)]
pub struct PromptRow {
    pub prompt_id: String,
    pub messages: Vec<Message>,
    /// A baseline answer for evaluation.
    pub reference: Option<String>,
    /// The verifiable instructions of the `instructions` judge: the JSON text of a list of
    /// constraints (canonical when the file held JSON).
    pub constraints: Option<String>,
}

/// How to find the prompt in a prompt file.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PromptOptions {
    /// The column holding the prompt (`--prompt-column`): a string (one user turn) or a
    /// List<Struct<role, content>> conversation. Default: `prompt`, else `messages`.
    pub prompt_column: Option<String>,
}

impl PromptOptions {
    pub fn with_prompt_column(column: impl Into<String>) -> Self {
        PromptOptions {
            prompt_column: Some(column.into()),
        }
    }
}

/// Where the prompt comes from in one file.
pub(crate) enum PromptSource {
    Text(String),
    Messages(String),
}

fn is_string(data_type: &DataType) -> bool {
    matches!(data_type, DataType::Utf8 | DataType::LargeUtf8)
}

fn is_list(data_type: &DataType) -> bool {
    matches!(data_type, DataType::List(_) | DataType::LargeList(_))
}

fn find_source(
    columns: &Columns<'_>,
    options: &PromptOptions,
) -> Result<PromptSource, ContentError> {
    let either = || format!("Utf8 or {}", describe_type(&messages_type()));
    if let Some(name) = &options.prompt_column {
        let Some(data_type) = columns.data_type(name) else {
            return Err(ContentError::MissingColumn {
                column: name.clone(),
                expected: either(),
            });
        };
        return if is_string(&data_type) {
            Ok(PromptSource::Text(name.clone()))
        } else if is_list(&data_type) {
            Ok(PromptSource::Messages(name.clone()))
        } else {
            Err(ContentError::WrongType {
                column: name.clone(),
                found: describe_type(&data_type),
                expected: either(),
            })
        };
    }
    default_source(|name| columns.has(name), || columns.names())
}

/// `prompt`, else `messages`. Both is an error: chat datasets often carry both, their
/// `messages` with the answer, and guessing would silently pick the wrong prompt.
pub(crate) fn default_source(
    has: impl Fn(&str) -> bool,
    names: impl FnOnce() -> Vec<String>,
) -> Result<PromptSource, ContentError> {
    match (has("prompt"), has("messages")) {
        (true, true) => Err(ContentError::AmbiguousPromptColumn {
            found: names().join(", "),
        }),
        (true, false) => Ok(PromptSource::Text("prompt".into())),
        (false, true) => Ok(PromptSource::Messages("messages".into())),
        (false, false) => Err(ContentError::NoPromptColumn {
            found: names().join(", "),
        }),
    }
}

/// Refuses a conversation that ends with an assistant turn: the model would continue past that
/// turn's end. `at(i)` says where prompt `i` is in its file.
pub(crate) fn check_prompt_turns(
    rows: &[PromptRow],
    at: impl Fn(usize) -> String,
) -> Result<(), ContentError> {
    let ends_with_answer = |row: &PromptRow| {
        row.messages
            .last()
            .is_some_and(|message| message.role == "assistant")
    };
    match rows.iter().position(ends_with_answer) {
        Some(i) => Err(ContentError::EndsWithAssistantTurn {
            prompt_id: rows[i].prompt_id.clone(),
            at: at(i),
        }),
        None => Ok(()),
    }
}

/// The prompts of one record batch, found as `options` says.
pub fn prompts_from_batch(
    batch: &RecordBatch,
    options: &PromptOptions,
) -> Result<Vec<PromptRow>, ContentError> {
    let columns = Columns::new(batch);
    let (mut messages, default_ids): (Vec<Vec<Message>>, Vec<String>) =
        match find_source(&columns, options)? {
            PromptSource::Text(name) => {
                let texts = columns.strings(&name)?;
                let ids = texts.iter().map(|text| prompt_id_for(text)).collect();
                (
                    texts
                        .into_iter()
                        .map(|text| vec![Message::user(text)])
                        .collect(),
                    ids,
                )
            }
            PromptSource::Messages(name) => {
                let conversations = columns.messages(&name)?;
                let ids = conversations
                    .iter()
                    .map(|m| prompt_id_for_messages(m))
                    .collect();
                (conversations, ids)
            }
        };
    let mut prompt_ids = if columns.has("prompt_id") {
        columns.strings("prompt_id")?
    } else {
        default_ids
    };
    let mut references = if columns.has("reference") {
        columns.optional_strings("reference")?
    } else {
        vec![None; batch.num_rows()]
    };
    let mut constraints = read_constraints(batch)?;
    let rows: Vec<PromptRow> = (0..batch.num_rows())
        .map(|i| PromptRow {
            prompt_id: take(&mut prompt_ids[i]),
            messages: take(&mut messages[i]),
            reference: references[i].take(),
            constraints: constraints[i].take(),
        })
        .collect();
    check_prompt_turns(&rows, |i| format!("row {i}"))?;
    Ok(rows)
}

impl Rows for PromptRow {
    const KIND: FileKind = FileKind::Prompts;

    /// Prompt columns are checked while converting, where the prompt column is chosen.
    fn check_schema(_schema: &Schema) -> Result<(), ContentError> {
        Ok(())
    }

    fn to_batch(rows: &[Self]) -> Result<RecordBatch, ContentError> {
        batch(
            Self::KIND.arrow_schema(),
            vec![
                string_array(rows.iter().map(|r| r.prompt_id.as_str())),
                messages_array("messages", rows.iter().map(|r| r.messages.as_slice()))?,
                optional_string_array(rows.iter().map(|r| r.reference.as_deref())),
                optional_string_array(rows.iter().map(|r| r.constraints.as_deref())),
            ],
        )
    }

    fn from_batch(batch: &RecordBatch) -> Result<Vec<Self>, ContentError> {
        prompts_from_batch(batch, &PromptOptions::default())
    }
}
