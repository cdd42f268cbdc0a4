//! The file kinds the stages exchange and their Arrow schemas (DESIGN.md, "Parquet schemas
//! (version 1)"), plus the type comparison readers use to check a file's columns.

use std::fmt;
use std::sync::Arc;

use arrow::datatypes::{DataType, Field, Fields, Schema};

use super::error::ContentError;

/// The version suffix of every schema id (`samples/v1`).
pub const SCHEMA_VERSION: u32 = 1;

/// One kind of pipeline file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum FileKind {
    Prompts,
    Samples,
    Logprobs,
    Preferences,
    Scores,
    /// The `instructions` judge's pass/fail of every constraint of every response.
    Constraints,
    Winrates,
    TrainLog,
    Eval,
}

/// The fixed train_log columns before the regularizer terms.
pub const TRAIN_LOG_LEADING: [(&str, DataType); 4] = [
    ("step", DataType::UInt64),
    ("epoch", DataType::Float64),
    ("loss", DataType::Float64),
    ("self_play", DataType::Float64),
];

/// The fixed train_log columns after the regularizer terms.
pub const TRAIN_LOG_TRAILING: [(&str, DataType); 5] = [
    ("grad_norm", DataType::Float64),
    ("lr", DataType::Float64),
    ("tokens", DataType::UInt64),
    ("mean_logratio_t", DataType::Float64),
    ("mean_logratio_ref", DataType::Float64),
];

impl FileKind {
    pub const ALL: [FileKind; 9] = [
        FileKind::Prompts,
        FileKind::Samples,
        FileKind::Logprobs,
        FileKind::Preferences,
        FileKind::Scores,
        FileKind::Constraints,
        FileKind::Winrates,
        FileKind::TrainLog,
        FileKind::Eval,
    ];

    /// The kind's name as used in schema ids and file names (`train_log`).
    pub fn name(self) -> &'static str {
        match self {
            FileKind::Prompts => "prompts",
            FileKind::Samples => "samples",
            FileKind::Logprobs => "logprobs",
            FileKind::Preferences => "preferences",
            FileKind::Scores => "scores",
            FileKind::Constraints => "constraints",
            FileKind::Winrates => "winrates",
            FileKind::TrainLog => "train_log",
            FileKind::Eval => "eval",
        }
    }

    /// The value of `rspo.schema` for this kind, e.g. `samples/v1`.
    pub fn schema_id(self) -> &'static str {
        match self {
            FileKind::Prompts => "prompts/v1",
            FileKind::Samples => "samples/v1",
            FileKind::Logprobs => "logprobs/v1",
            FileKind::Preferences => "preferences/v1",
            FileKind::Scores => "scores/v1",
            FileKind::Constraints => "constraints/v1",
            FileKind::Winrates => "winrates/v1",
            FileKind::TrainLog => "train_log/v1",
            FileKind::Eval => "eval/v1",
        }
    }

    /// The kind whose `rspo.schema` is `id`.
    pub fn from_schema_id(id: &str) -> Option<FileKind> {
        FileKind::ALL
            .into_iter()
            .find(|kind| kind.schema_id() == id)
    }

    /// Whether files of this kind must carry `rspo.*` metadata. Prompt files may come from other
    /// tools (a Hugging Face dataset's parquet) and need none.
    pub fn requires_metadata(self) -> bool {
        self != FileKind::Prompts
    }

    /// The columns that identify a row, when the kind has such a key; readers and writers reject
    /// duplicates.
    pub fn key_columns(self) -> Option<&'static str> {
        match self {
            FileKind::Samples | FileKind::Logprobs | FileKind::Scores | FileKind::Winrates => {
                Some("(prompt_id, sample_idx)")
            }
            FileKind::Preferences => Some("(prompt_id, i, j)"),
            FileKind::Constraints => Some("(prompt_id, sample_idx, constraint_idx)"),
            FileKind::Eval => Some("(model, prompt_id, sample_idx)"),
            FileKind::Prompts | FileKind::TrainLog => None,
        }
    }

    /// The Arrow schema rspo writes for this kind. For train_log these are the fixed columns
    /// only; a real train log adds one column per regularizer term, see [`train_log_schema`].
    pub fn arrow_schema(self) -> Schema {
        let utf8 = |name: &str| Field::new(name, DataType::Utf8, false);
        let u32 = |name: &str| Field::new(name, DataType::UInt32, false);
        let u64 = |name: &str| Field::new(name, DataType::UInt64, false);
        let f64 = |name: &str| Field::new(name, DataType::Float64, false);
        let fields = match self {
            FileKind::Prompts => vec![
                utf8("prompt_id"),
                Field::new("messages", messages_type(), false),
                Field::new("reference", DataType::Utf8, true),
                Field::new("constraints", DataType::Utf8, true),
            ],
            FileKind::Samples => vec![
                utf8("prompt_id"),
                u32("sample_idx"),
                Field::new("messages", messages_type(), false),
                utf8("prompt_text"),
                utf8("response"),
                Field::new("prompt_token_ids", list_type(DataType::UInt32), false),
                Field::new("response_token_ids", list_type(DataType::UInt32), false),
                utf8("finish_reason"),
                f64("sample_logprob"),
                u64("seed"),
            ],
            FileKind::Logprobs => vec![
                utf8("prompt_id"),
                u32("sample_idx"),
                f64("logprob"),
                Field::new("token_logprobs", list_type(DataType::Float32), false),
                u32("num_tokens"),
            ],
            FileKind::Preferences => vec![
                utf8("prompt_id"),
                u32("i"),
                u32("j"),
                f64("p"),
                Field::new("p_forward", DataType::Float64, true),
                Field::new("p_swapped", DataType::Float64, true),
                utf8("judge"),
            ],
            FileKind::Scores => vec![utf8("prompt_id"), u32("sample_idx"), f64("score")],
            FileKind::Constraints => vec![
                utf8("prompt_id"),
                u32("sample_idx"),
                u32("constraint_idx"),
                utf8("kind"),
                utf8("constraint"),
                Field::new("passed", DataType::Boolean, false),
            ],
            FileKind::Winrates => vec![
                utf8("prompt_id"),
                u32("sample_idx"),
                f64("winrate"),
                u32("n_opponents"),
                u32("rank"),
            ],
            FileKind::TrainLog => return train_log_schema(&[]),
            FileKind::Eval => vec![
                utf8("model"),
                utf8("prompt_id"),
                u32("sample_idx"),
                utf8("response"),
                utf8("baseline"),
                f64("p_win"),
                u32("len_response"),
                u32("len_baseline"),
                utf8("finish_reason"),
                u32("tokens_response"),
                Field::new("score_response", DataType::Float64, true),
                Field::new("score_baseline", DataType::Float64, true),
                Field::new("p_forward", DataType::Float64, true),
                Field::new("p_swapped", DataType::Float64, true),
            ],
        };
        Schema::new(fields)
    }
}

impl fmt::Display for FileKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The train_log schema for the given regularizer terms (one Float64 column each, between
/// `self_play` and `grad_norm`, in the order given).
pub fn train_log_schema(terms: &[&str]) -> Schema {
    let fixed = |(name, data_type): &(&str, DataType)| Field::new(*name, data_type.clone(), false);
    let fields: Vec<Field> = TRAIN_LOG_LEADING
        .iter()
        .map(fixed)
        .chain(
            terms
                .iter()
                .map(|term| Field::new(*term, DataType::Float64, false)),
        )
        .chain(TRAIN_LOG_TRAILING.iter().map(fixed))
        .collect();
    Schema::new(fields)
}

/// Whether `name` is one of train_log's fixed columns (and so cannot name a term).
pub fn is_train_log_fixed_column(name: &str) -> bool {
    TRAIN_LOG_LEADING
        .iter()
        .chain(TRAIN_LOG_TRAILING.iter())
        .any(|(fixed, _)| *fixed == name)
}

/// The fields of one chat message: `role` and `content`, both Utf8.
pub fn message_fields() -> Fields {
    Fields::from(vec![
        Field::new("role", DataType::Utf8, false),
        Field::new("content", DataType::Utf8, false),
    ])
}

/// `messages`: List<Struct<role Utf8, content Utf8>>.
pub fn messages_type() -> DataType {
    list_type(DataType::Struct(message_fields()))
}

/// A list of non-null `item`s, the way rspo writes every list column.
pub fn list_type(item: DataType) -> DataType {
    DataType::List(Arc::new(list_item_field(item)))
}

pub(crate) fn list_item_field(item: DataType) -> Field {
    Field::new("item", item, false)
}

/// A type written the way DESIGN.md writes them: `Utf8`, `List<Float32>`,
/// `List<Struct<role Utf8, content Utf8>>`.
pub fn describe_type(data_type: &DataType) -> String {
    match data_type {
        DataType::List(item) => format!("List<{}>", describe_type(item.data_type())),
        DataType::LargeList(item) => format!("LargeList<{}>", describe_type(item.data_type())),
        DataType::Struct(fields) => {
            let parts: Vec<String> = fields
                .iter()
                .map(|field| format!("{} {}", field.name(), describe_type(field.data_type())))
                .collect();
            format!("Struct<{}>", parts.join(", "))
        }
        other => format!("{other:?}"),
    }
}

/// Whether a column of type `found` can be read as `expected`. List item names and nullability
/// do not matter (pyarrow calls items `element`, arrow-rs `item`); struct fields are matched by
/// name, in any order, and extra struct fields are ignored.
pub fn type_matches(found: &DataType, expected: &DataType) -> bool {
    match (found, expected) {
        (DataType::List(found), DataType::List(expected)) => {
            type_matches(found.data_type(), expected.data_type())
        }
        (DataType::Struct(found), DataType::Struct(expected)) => expected.iter().all(|want| {
            found.iter().any(|have| {
                have.name() == want.name() && type_matches(have.data_type(), want.data_type())
            })
        }),
        _ => found == expected,
    }
}

/// Checks that every column of `expected` is present in `found` with a matching type. Extra
/// columns are allowed (readers ignore them).
pub fn check_columns(found: &Schema, expected: &Schema) -> Result<(), ContentError> {
    for want in expected.fields() {
        let Ok(have) = found.field_with_name(want.name()) else {
            return Err(ContentError::MissingColumn {
                column: want.name().clone(),
                expected: describe_type(want.data_type()),
            });
        };
        if !type_matches(have.data_type(), want.data_type()) {
            return Err(ContentError::WrongType {
                column: want.name().clone(),
                found: describe_type(have.data_type()),
                expected: describe_type(want.data_type()),
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schema_ids_round_trip() {
        for kind in FileKind::ALL {
            assert_eq!(FileKind::from_schema_id(kind.schema_id()), Some(kind));
            assert_eq!(
                kind.schema_id(),
                format!("{}/v{SCHEMA_VERSION}", kind.name())
            );
        }
        assert_eq!(FileKind::from_schema_id("samples/v2"), None);
    }

    #[test]
    fn describes_types_like_the_design() {
        assert_eq!(describe_type(&DataType::Utf8), "Utf8");
        assert_eq!(
            describe_type(&list_type(DataType::Float32)),
            "List<Float32>"
        );
        assert_eq!(
            describe_type(&messages_type()),
            "List<Struct<role Utf8, content Utf8>>"
        );
    }

    #[test]
    fn train_log_terms_sit_between_fixed_columns() {
        let schema = train_log_schema(&["reverse_kl", "forward_kl_is"]);
        let names: Vec<&str> = schema.fields().iter().map(|f| f.name().as_str()).collect();
        assert_eq!(
            names,
            [
                "step",
                "epoch",
                "loss",
                "self_play",
                "reverse_kl",
                "forward_kl_is",
                "grad_norm",
                "lr",
                "tokens",
                "mean_logratio_t",
                "mean_logratio_ref"
            ]
        );
    }

    #[test]
    fn struct_fields_match_by_name_and_list_items_by_type() {
        let pyarrow_messages = DataType::List(Arc::new(Field::new(
            "element",
            DataType::Struct(Fields::from(vec![
                Field::new("content", DataType::Utf8, true),
                Field::new("role", DataType::Utf8, true),
            ])),
            true,
        )));
        assert!(type_matches(&pyarrow_messages, &messages_type()));
        assert!(!type_matches(
            &list_type(DataType::Float64),
            &list_type(DataType::Float32)
        ));
    }
}
