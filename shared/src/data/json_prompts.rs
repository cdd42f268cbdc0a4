//! Prompt files as users bring them in JSON: JSON Lines (one object per line, as
//! `Dataset.to_json` writes) or a JSON array of objects, in a `.jsonl`, `.ndjson` or `.json` file.
//! The columns and checks are those of Parquet prompt files (prompts.rs); errors say the line
//! (JSON Lines) or the record (arrays), both counted from 1, and the column.

use std::path::Path;

use serde_json::{Map, Value};

use super::constraints_column::{constraints_text, CONSTRAINTS};
use super::error::ContentError;
use super::fingerprint::{canonical_json, prompt_id_for, prompt_id_for_messages};
use super::prompts::{check_prompt_turns, default_source, PromptOptions, PromptRow, PromptSource};
use super::rows::Message;

/// True for the names of JSON prompt files: `.jsonl`, `.ndjson`, `.json` (any case).
pub(crate) fn is_json_file(path: &Path) -> bool {
    path.extension()
        .and_then(|ext| ext.to_str())
        .is_some_and(|ext| ["jsonl", "ndjson", "json"].contains(&ext.to_ascii_lowercase().as_str()))
}

/// One record and where it is in the file ("line 3", "record 2").
struct Record {
    at: String,
    fields: Map<String, Value>,
}

/// The records of a JSON array (the first non-blank byte is `[`), else of JSON Lines (blank
/// lines skipped).
fn records(bytes: &[u8]) -> Result<Vec<Record>, ContentError> {
    let bytes = bytes.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(bytes);
    let object = |at: String, value: Value| match value {
        Value::Object(fields) => Ok(Record { at, fields }),
        other => Err(ContentError::BadJson {
            reason: format!("found {}, expected an object", describe(&other)),
            at,
        }),
    };
    if bytes.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'[') {
        let values: Vec<Value> =
            serde_json::from_slice(bytes).map_err(|error| ContentError::BadJson {
                at: "the array".into(),
                reason: format!("not valid JSON: {error}"),
            })?;
        return values
            .into_iter()
            .enumerate()
            .map(|(i, value)| object(format!("record {}", i + 1), value))
            .collect();
    }
    bytes
        .split(|b| *b == b'\n')
        .enumerate()
        .filter(|(_, line)| !line.iter().all(u8::is_ascii_whitespace))
        .map(|(i, line)| {
            let at = format!("line {}", i + 1);
            match serde_json::from_slice(line) {
                Ok(value) => object(at, value),
                Err(error) => {
                    // serde's "at line 1 column N" would count within the line.
                    let text = error.to_string();
                    let place = format!(" at line {} column {}", error.line(), error.column());
                    let text = text.strip_suffix(&place).unwrap_or(&text);
                    Err(ContentError::BadJson {
                        at,
                        reason: format!("not valid JSON at column {}: {text}", error.column()),
                    })
                }
            }
        })
        .collect()
}

/// "a number", "an array", ... for messages.
fn describe(value: &Value) -> String {
    match value {
        Value::Null => "null".into(),
        Value::Bool(b) => format!("a boolean ({b})"),
        Value::Number(n) => format!("a number ({n})"),
        Value::String(_) => "a string".into(),
        Value::Array(_) => "an array".into(),
        Value::Object(_) => "an object".into(),
    }
}

const MESSAGES: &str = "an array of {\"role\": string, \"content\": string} objects";

impl Record {
    fn wrong(&self, column: &str, found: String, expected: &str) -> ContentError {
        ContentError::JsonValue {
            at: self.at.clone(),
            column: column.into(),
            found,
            expected: expected.into(),
        }
    }

    /// The value of `column`; missing and null are None.
    fn get(&self, column: &str) -> Option<&Value> {
        self.fields.get(column).filter(|value| !value.is_null())
    }

    fn string(&self, column: &str) -> Result<String, ContentError> {
        match self.get(column) {
            Some(Value::String(text)) => Ok(text.clone()),
            Some(other) => Err(self.wrong(column, describe(other), "a string")),
            None => Err(self.wrong(column, "missing or null".into(), "a string in every record")),
        }
    }

    fn optional_string(&self, column: &str) -> Result<Option<String>, ContentError> {
        match self.get(column) {
            None => Ok(None),
            Some(_) => self.string(column).map(Some),
        }
    }

    /// `constraints`, a JSON list or a string holding one, as canonical JSON (as for Parquet).
    fn constraints(&self) -> Result<Option<String>, ContentError> {
        match self.get(CONSTRAINTS) {
            None => Ok(None),
            Some(Value::String(text)) => Ok(Some(constraints_text(text))),
            Some(list @ Value::Array(_)) => Ok(Some(canonical_json(list))),
            Some(other) => Err(self.wrong(
                CONSTRAINTS,
                describe(other),
                "a JSON list of constraints or a string holding one",
            )),
        }
    }

    fn messages(&self, column: &str) -> Result<Vec<Message>, ContentError> {
        let items = match self.get(column) {
            Some(Value::Array(items)) => items,
            Some(other) => return Err(self.wrong(column, describe(other), MESSAGES)),
            None => return Err(self.wrong(column, "missing or null".into(), MESSAGES)),
        };
        let text = |item: &Value, i: usize, key: &str| match item.get(key) {
            Some(Value::String(text)) => Ok(text.clone()),
            found => Err(self.wrong(
                &format!("{column}[{i}].{key}"),
                found.map_or("missing".into(), describe),
                "a string",
            )),
        };
        items
            .iter()
            .enumerate()
            .map(|(i, item)| {
                Ok(Message::new(
                    text(item, i, "role")?,
                    text(item, i, "content")?,
                ))
            })
            .collect()
    }

    /// The prompt conversation and its default id: a string is one user turn.
    fn prompt(&self, source: &Source) -> Result<(Vec<Message>, String), ContentError> {
        let turn = |text: String| {
            let id = prompt_id_for(&text);
            (vec![Message::user(text)], id)
        };
        let conversation = |messages: Vec<Message>| {
            let id = prompt_id_for_messages(&messages);
            (messages, id)
        };
        match source {
            Source::Text(column) => self.string(column).map(turn),
            Source::Messages(column) => self.messages(column).map(conversation),
            Source::Either(column) => match self.get(column) {
                Some(Value::String(_)) => self.string(column).map(turn),
                Some(Value::Array(_)) => self.messages(column).map(conversation),
                found => Err(self.wrong(
                    column,
                    found.map_or("missing or null".into(), describe),
                    &format!("a string or {MESSAGES}"),
                )),
            },
        }
    }
}

/// Where the prompt is: as for Parquet, plus a named column whose records may hold either
/// shape (JSON has no column type to choose by).
enum Source {
    Text(String),
    Messages(String),
    Either(String),
}

/// The prompts of a JSON prompt file's bytes, found as `options` says.
pub(crate) fn prompts_from_json(
    bytes: &[u8],
    options: &PromptOptions,
) -> Result<Vec<PromptRow>, ContentError> {
    let records = records(bytes)?;
    let mut names: Vec<String> = Vec::new();
    for record in &records {
        for key in record.fields.keys() {
            if !names.contains(key) {
                names.push(key.clone());
            }
        }
    }
    let has = |name: &str| names.iter().any(|n| n == name);
    let source = match &options.prompt_column {
        Some(name) if has(name) => Source::Either(name.clone()),
        Some(name) => {
            return Err(ContentError::MissingColumn {
                column: name.clone(),
                expected: format!("a string or {MESSAGES} in every record"),
            })
        }
        None => match default_source(has, || names.clone())? {
            PromptSource::Text(name) => Source::Text(name),
            PromptSource::Messages(name) => Source::Messages(name),
        },
    };
    let has_ids = has("prompt_id");
    let rows = records
        .iter()
        .map(|record| {
            let (messages, default_id) = record.prompt(&source)?;
            Ok(PromptRow {
                prompt_id: if has_ids {
                    record.string("prompt_id")?
                } else {
                    default_id
                },
                messages,
                reference: record.optional_string("reference")?,
                constraints: record.constraints()?,
            })
        })
        .collect::<Result<Vec<_>, ContentError>>()?;
    check_prompt_turns(&rows, |i| records[i].at.clone())?;
    Ok(rows)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn constraints_read_as_the_parquet_column_reads_them() {
        let lines = concat!(
            r#"{"prompt": "a", "constraints": [{"kind": "no_commas"}, {"n": 3, "kind": "min_words"}]}"#,
            "\n",
            r#"{"prompt": "b", "constraints": "[{\"kind\": \"no_commas\"}]"}"#,
            "\n",
            r#"{"prompt": "c"}"#,
            "\n",
        );
        let rows = prompts_from_json(lines.as_bytes(), &PromptOptions::default()).unwrap();
        let got: Vec<Option<&str>> = rows.iter().map(|r| r.constraints.as_deref()).collect();
        assert_eq!(
            got,
            [
                Some(r#"[{"kind":"no_commas"},{"kind":"min_words","n":3}]"#),
                Some(r#"[{"kind":"no_commas"}]"#),
                None
            ]
        );
        let bad = r#"{"prompt": "a", "constraints": 3}"#;
        let err = prompts_from_json(bad.as_bytes(), &PromptOptions::default()).unwrap_err();
        assert!(err.to_string().contains("constraints"), "{err}");
    }
}
