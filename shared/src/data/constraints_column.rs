//! The optional `constraints` column of prompt files (the `instructions` judge's verifiable
//! instructions). Two layouts are read: a Utf8 column holding each prompt's JSON list, or a
//! List<Struct<kind, argument fields...>> column as pyarrow and Hugging Face datasets write a
//! list of objects (one struct field per argument name of any kind, null where a kind does not
//! use it). Either way a prompt's constraints come out as the canonical JSON text of the list,
//! null fields left out; what the kinds and arguments mean is the judge's business.

use arrow::array::{Array, ArrayRef, AsArray, StructArray};
use arrow::datatypes::{
    DataType, Float32Type, Float64Type, Int16Type, Int32Type, Int64Type, Int8Type, UInt16Type,
    UInt32Type, UInt64Type, UInt8Type,
};
use arrow::record_batch::RecordBatch;
use serde_json::{Map, Value};

use super::error::ContentError;
use super::fingerprint::canonical_json;
use super::schema::describe_type;

pub const CONSTRAINTS: &str = "constraints";

const EXPECTED: &str =
    "Utf8 (a JSON list of constraints) or List<Struct<kind Utf8, argument fields...>>";

fn wrong_type(found: &DataType) -> ContentError {
    ContentError::WrongType {
        column: CONSTRAINTS.into(),
        found: describe_type(found),
        expected: EXPECTED.into(),
    }
}

/// Each row's constraints as canonical JSON text; `None` for a null or an absent column.
pub fn read_constraints(batch: &RecordBatch) -> Result<Vec<Option<String>>, ContentError> {
    let Some(column) = batch.column_by_name(CONSTRAINTS) else {
        return Ok(vec![None; batch.num_rows()]);
    };
    (0..column.len())
        .map(|row| {
            if column.is_null(row) {
                return Ok(None);
            }
            let text = match column.data_type() {
                // Kept as written when it is not JSON: the judge says which prompt is wrong.
                DataType::Utf8 | DataType::LargeUtf8 => {
                    constraints_text(match column.as_string_opt::<i32>() {
                        Some(a) => a.value(row),
                        None => column.as_string::<i64>().value(row),
                    })
                }
                DataType::List(_) | DataType::LargeList(_) => {
                    canonical_json(&list_value(column, row)?)
                }
                other => return Err(wrong_type(other)),
            };
            Ok(Some(text))
        })
        .collect()
}

/// Constraints written as text: canonical JSON when the text is JSON, else kept as written (the
/// judge then says which prompt is wrong).
pub(super) fn constraints_text(text: &str) -> String {
    serde_json::from_str::<Value>(text).map_or_else(|_| text.to_string(), |v| canonical_json(&v))
}

/// The elements of a List or LargeList array's row.
fn list_row(list: &ArrayRef, row: usize) -> ArrayRef {
    match list.as_list_opt::<i32>() {
        Some(l) => l.value(row),
        None => list.as_list::<i64>().value(row),
    }
}

/// One row of a list-of-structs column as a JSON list of objects.
fn list_value(column: &ArrayRef, row: usize) -> Result<Value, ContentError> {
    let items = list_row(column, row);
    let Some(structs) = items.as_struct_opt() else {
        return Err(wrong_type(column.data_type()));
    };
    (0..structs.len())
        .map(|k| {
            if structs.is_null(k) {
                return Err(ContentError::NullElement {
                    column: CONSTRAINTS.into(),
                    row,
                });
            }
            object(structs, k).map_err(|field| ContentError::WrongType {
                column: format!("{CONSTRAINTS}.{field}"),
                found: describe_type(column.data_type()),
                expected: "strings, numbers, booleans or lists of them".into(),
            })
        })
        .collect::<Result<Vec<Value>, _>>()
        .map(Value::Array)
}

/// The non-null fields of one struct element; `Err(field)` names a field of a type JSON
/// arguments do not take.
fn object(structs: &StructArray, k: usize) -> Result<Value, String> {
    let mut map = Map::new();
    for (field, child) in structs.fields().iter().zip(structs.columns()) {
        if child.is_null(k) {
            continue;
        }
        let value = value(child, k).ok_or_else(|| field.name().clone())?;
        map.insert(field.name().clone(), value);
    }
    Ok(Value::Object(map))
}

/// A scalar or a list of scalars as JSON; `None` for other types.
fn value(array: &ArrayRef, k: usize) -> Option<Value> {
    macro_rules! number {
        ($t:ty) => {
            Value::from(array.as_primitive::<$t>().value(k))
        };
    }
    Some(match array.data_type() {
        DataType::Utf8 => Value::from(array.as_string::<i32>().value(k)),
        DataType::LargeUtf8 => Value::from(array.as_string::<i64>().value(k)),
        DataType::Boolean => Value::from(array.as_boolean().value(k)),
        DataType::Int8 => number!(Int8Type),
        DataType::Int16 => number!(Int16Type),
        DataType::Int32 => number!(Int32Type),
        DataType::Int64 => number!(Int64Type),
        DataType::UInt8 => number!(UInt8Type),
        DataType::UInt16 => number!(UInt16Type),
        DataType::UInt32 => number!(UInt32Type),
        DataType::UInt64 => number!(UInt64Type),
        DataType::Float32 => number!(Float32Type),
        DataType::Float64 => number!(Float64Type),
        DataType::List(_) | DataType::LargeList(_) => {
            let items = list_row(array, k);
            let values: Option<Vec<Value>> = (0..items.len())
                .map(|i| {
                    if items.is_null(i) {
                        Some(Value::Null)
                    } else {
                        value(&items, i)
                    }
                })
                .collect();
            Value::Array(values?)
        }
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    use arrow::array::{Int64Builder, ListBuilder, StringArray, StringBuilder, StructBuilder};
    use arrow::datatypes::{Field, Fields, Schema};

    fn batch_of(column: ArrayRef) -> RecordBatch {
        let schema = Schema::new(vec![Field::new(
            CONSTRAINTS,
            column.data_type().clone(),
            true,
        )]);
        RecordBatch::try_new(Arc::new(schema), vec![column]).unwrap()
    }

    #[test]
    fn json_strings_are_canonicalized_and_nulls_are_none() {
        let column: ArrayRef = Arc::new(StringArray::from(vec![
            Some(r#"[{"kind": "word_count", "at_most": 40}]"#),
            None,
            Some("not json"),
        ]));
        let got = read_constraints(&batch_of(column)).unwrap();
        assert_eq!(
            got,
            [
                Some(r#"[{"at_most":40,"kind":"word_count"}]"#.to_string()),
                None,
                Some("not json".to_string())
            ]
        );
    }

    #[test]
    fn lists_of_structs_drop_null_fields() {
        let fields = Fields::from(vec![
            Field::new("kind", DataType::Utf8, true),
            Field::new("at_most", DataType::Int64, true),
            Field::new(
                "keywords",
                DataType::List(Arc::new(Field::new("item", DataType::Utf8, true))),
                true,
            ),
        ]);
        let mut list = ListBuilder::new(StructBuilder::from_fields(fields, 0));
        let add = |list: &mut ListBuilder<StructBuilder>,
                   kind: &str,
                   at_most: Option<i64>,
                   keywords: Option<&[&str]>| {
            let s = list.values();
            s.field_builder::<StringBuilder>(0)
                .unwrap()
                .append_value(kind);
            s.field_builder::<Int64Builder>(1)
                .unwrap()
                .append_option(at_most);
            let k = s
                .field_builder::<ListBuilder<Box<dyn arrow::array::ArrayBuilder>>>(2)
                .unwrap();
            match keywords {
                Some(words) => {
                    for w in words {
                        k.values()
                            .as_any_mut()
                            .downcast_mut::<StringBuilder>()
                            .unwrap()
                            .append_value(w);
                    }
                    k.append(true);
                }
                None => k.append(false),
            }
            s.append(true);
        };
        add(&mut list, "word_count", Some(40), None);
        add(&mut list, "include_keywords", None, Some(&["sea", "salt"]));
        list.append(true);
        list.append(false);
        list.append(true);
        let got = read_constraints(&batch_of(Arc::new(list.finish()))).unwrap();
        assert_eq!(
            got,
            [
                Some(
                    r#"[{"at_most":40,"kind":"word_count"},{"keywords":["sea","salt"],"kind":"include_keywords"}]"#
                        .to_string()
                ),
                None,
                Some("[]".to_string())
            ]
        );
    }

    #[test]
    fn other_types_are_errors_naming_the_column() {
        let column: ArrayRef = Arc::new(arrow::array::Int64Array::from(vec![1]));
        let err = read_constraints(&batch_of(column)).unwrap_err().to_string();
        assert!(
            err.contains("column 'constraints' has type Int64")
                && err.contains("Utf8 (a JSON list"),
            "{err}"
        );
    }
}
