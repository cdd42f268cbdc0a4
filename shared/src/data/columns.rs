//! Typed, checked access to the columns of a record batch, and builders for the array shapes
//! the schemas use. Readers take whole columns out as `Vec`s and zip them into rows; every
//! accessor rejects nulls and says which column and row held one.

use std::ops::Range;
use std::sync::Arc;

use arrow::array::{
    Array, ArrayRef, AsArray, BooleanArray, Float64Array, GenericListArray, ListArray,
    OffsetSizeTrait, PrimitiveArray, StringArray, StructArray, UInt64Array,
};
use arrow::buffer::OffsetBuffer;
use arrow::datatypes::{ArrowPrimitiveType, DataType};
use arrow::record_batch::RecordBatch;

use super::error::ContentError;
use super::rows::Message;
use super::schema::{describe_type, list_item_field, message_fields, messages_type};

/// The columns of one record batch, looked up by name.
pub(crate) struct Columns<'a> {
    batch: &'a RecordBatch,
}

/// A string column, Utf8 or LargeUtf8.
pub(crate) enum Strings<'a> {
    Utf8(&'a StringArray),
    Large(&'a arrow::array::LargeStringArray),
}

impl Strings<'_> {
    fn value(&self, i: usize) -> &str {
        match self {
            Strings::Utf8(array) => array.value(i),
            Strings::Large(array) => array.value(i),
        }
    }

    fn is_null(&self, i: usize) -> bool {
        match self {
            Strings::Utf8(array) => array.is_null(i),
            Strings::Large(array) => array.is_null(i),
        }
    }
}

impl<'a> Columns<'a> {
    pub fn new(batch: &'a RecordBatch) -> Self {
        Columns { batch }
    }

    pub fn has(&self, name: &str) -> bool {
        self.batch.column_by_name(name).is_some()
    }

    pub fn names(&self) -> Vec<String> {
        self.batch
            .schema()
            .fields()
            .iter()
            .map(|f| f.name().clone())
            .collect()
    }

    pub fn data_type(&self, name: &str) -> Option<DataType> {
        self.batch
            .column_by_name(name)
            .map(|c| c.data_type().clone())
    }

    fn get(&self, name: &str, expected: &DataType) -> Result<&'a ArrayRef, ContentError> {
        self.batch
            .column_by_name(name)
            .ok_or_else(|| ContentError::MissingColumn {
                column: name.to_string(),
                expected: describe_type(expected),
            })
    }

    /// A string column (Utf8 or LargeUtf8) that may hold nulls.
    pub fn strings_array(&self, name: &str) -> Result<Strings<'a>, ContentError> {
        let array = self.get(name, &DataType::Utf8)?;
        if let Some(array) = array.as_string_opt::<i32>() {
            Ok(Strings::Utf8(array))
        } else if let Some(array) = array.as_string_opt::<i64>() {
            Ok(Strings::Large(array))
        } else {
            Err(wrong_type(name, array.data_type(), &DataType::Utf8))
        }
    }

    pub fn strings(&self, name: &str) -> Result<Vec<String>, ContentError> {
        let array = self.strings_array(name)?;
        (0..self.batch.num_rows())
            .map(|row| {
                if array.is_null(row) {
                    Err(null(name, row))
                } else {
                    Ok(array.value(row).to_string())
                }
            })
            .collect()
    }

    pub fn optional_strings(&self, name: &str) -> Result<Vec<Option<String>>, ContentError> {
        let array = self.strings_array(name)?;
        Ok((0..self.batch.num_rows())
            .map(|row| (!array.is_null(row)).then(|| array.value(row).to_string()))
            .collect())
    }

    fn primitive<T: ArrowPrimitiveType>(
        &self,
        name: &str,
    ) -> Result<&'a PrimitiveArray<T>, ContentError> {
        let array = self.get(name, &T::DATA_TYPE)?;
        array
            .as_primitive_opt::<T>()
            .ok_or_else(|| wrong_type(name, array.data_type(), &T::DATA_TYPE))
    }

    pub fn values<T: ArrowPrimitiveType>(
        &self,
        name: &str,
    ) -> Result<Vec<T::Native>, ContentError> {
        let array = self.primitive::<T>(name)?;
        if let Some(row) = first_null(array) {
            return Err(null(name, row));
        }
        Ok(array.values().to_vec())
    }

    pub fn optional_values<T: ArrowPrimitiveType>(
        &self,
        name: &str,
    ) -> Result<Vec<Option<T::Native>>, ContentError> {
        Ok(self.primitive::<T>(name)?.iter().collect())
    }

    /// The element ranges of a List or LargeList column and its child array.
    fn list_parts(
        &self,
        name: &str,
        expected: &DataType,
    ) -> Result<(Vec<Range<usize>>, ArrayRef), ContentError> {
        let array = self.get(name, expected)?;
        fn parts<O: OffsetSizeTrait>(list: &GenericListArray<O>) -> (Vec<Range<usize>>, ArrayRef) {
            let offsets = list.value_offsets();
            let ranges = offsets
                .windows(2)
                .map(|w| w[0].as_usize()..w[1].as_usize())
                .collect();
            (ranges, list.values().clone())
        }
        let (ranges, values) = if let Some(list) = array.as_list_opt::<i32>() {
            parts(list)
        } else if let Some(list) = array.as_list_opt::<i64>() {
            parts(list)
        } else {
            return Err(wrong_type(name, array.data_type(), expected));
        };
        if let Some(row) = first_null(array.as_ref()) {
            return Err(null(name, row));
        }
        Ok((ranges, values))
    }

    pub fn lists<T: ArrowPrimitiveType>(
        &self,
        name: &str,
    ) -> Result<Vec<Vec<T::Native>>, ContentError> {
        let expected = DataType::List(Arc::new(list_item_field(T::DATA_TYPE)));
        let (ranges, values) = self.list_parts(name, &expected)?;
        let Some(items) = values.as_primitive_opt::<T>() else {
            let found = DataType::List(Arc::new(list_item_field(values.data_type().clone())));
            return Err(wrong_type(name, &found, &expected));
        };
        check_elements(name, &ranges, items)?;
        Ok(ranges
            .into_iter()
            .map(|range| items.values()[range].to_vec())
            .collect())
    }

    /// A `messages` column: List<Struct<role, content>>, struct fields found by name.
    pub fn messages(&self, name: &str) -> Result<Vec<Vec<Message>>, ContentError> {
        let expected = messages_type();
        let (ranges, values) = self.list_parts(name, &expected)?;
        let wrong = || {
            let found = DataType::List(Arc::new(list_item_field(values.data_type().clone())));
            wrong_type(name, &found, &expected)
        };
        let Some(structs) = values.as_struct_opt() else {
            return Err(wrong());
        };
        check_elements(name, &ranges, structs)?;
        let field = |field: &str| -> Result<Strings<'_>, ContentError> {
            let child = structs.column_by_name(field).ok_or_else(wrong)?;
            let strings = if let Some(array) = child.as_string_opt::<i32>() {
                Strings::Utf8(array)
            } else if let Some(array) = child.as_string_opt::<i64>() {
                Strings::Large(array)
            } else {
                return Err(wrong());
            };
            check_elements(name, &ranges, child.as_ref())?;
            Ok(strings)
        };
        let roles = field("role")?;
        let contents = field("content")?;
        Ok(ranges
            .into_iter()
            .map(|range| {
                range
                    .map(|k| Message {
                        role: roles.value(k).to_string(),
                        content: contents.value(k).to_string(),
                    })
                    .collect()
            })
            .collect())
    }
}

fn wrong_type(column: &str, found: &DataType, expected: &DataType) -> ContentError {
    ContentError::WrongType {
        column: column.to_string(),
        found: describe_type(found),
        expected: describe_type(expected),
    }
}

fn null(column: &str, row: usize) -> ContentError {
    ContentError::Null {
        column: column.to_string(),
        row,
    }
}

fn first_null(array: &dyn Array) -> Option<usize> {
    if array.null_count() == 0 {
        return None;
    }
    (0..array.len()).find(|&i| array.is_null(i))
}

/// Rejects nulls among the list elements that rows actually reference.
fn check_elements(
    column: &str,
    ranges: &[Range<usize>],
    items: &dyn Array,
) -> Result<(), ContentError> {
    if items.null_count() == 0 {
        return Ok(());
    }
    match ranges
        .iter()
        .position(|range| range.clone().any(|k| items.is_null(k)))
    {
        Some(row) => Err(ContentError::NullElement {
            column: column.to_string(),
            row,
        }),
        None => Ok(()),
    }
}

// ---- row fields ----

/// A row field's type and the Arrow column it is stored as: the one place that pairs a Rust type
/// with its builder and its checked reader.
pub(crate) trait Column: Sized {
    fn build<'r>(
        name: &str,
        values: impl Iterator<Item = &'r Self>,
    ) -> Result<ArrayRef, ContentError>
    where
        Self: 'r;

    fn read(columns: &Columns<'_>, name: &str) -> Result<Vec<Self>, ContentError>;
}

impl Column for String {
    fn build<'r>(
        _: &str,
        values: impl Iterator<Item = &'r Self>,
    ) -> Result<ArrayRef, ContentError> {
        Ok(string_array(values.map(String::as_str)))
    }
    fn read(columns: &Columns<'_>, name: &str) -> Result<Vec<Self>, ContentError> {
        columns.strings(name)
    }
}

/// Primitive columns: the value itself, or nullable as `Option`.
macro_rules! primitive_column {
    ($($native:ty => $arrow:ty),+) => {$(
        impl Column for $native {
            fn build<'r>(_: &str, values: impl Iterator<Item = &'r Self>) -> Result<ArrayRef, ContentError> {
                Ok(Arc::new(values.copied().collect::<PrimitiveArray<$arrow>>()))
            }
            fn read(columns: &Columns<'_>, name: &str) -> Result<Vec<Self>, ContentError> {
                columns.values::<$arrow>(name)
            }
        }

        impl Column for Option<$native> {
            fn build<'r>(_: &str, values: impl Iterator<Item = &'r Self>) -> Result<ArrayRef, ContentError> {
                Ok(Arc::new(values.copied().collect::<PrimitiveArray<$arrow>>()))
            }
            fn read(columns: &Columns<'_>, name: &str) -> Result<Vec<Self>, ContentError> {
                columns.optional_values::<$arrow>(name)
            }
        }

        impl Column for Vec<$native> {
            fn build<'r>(name: &str, values: impl Iterator<Item = &'r Self>) -> Result<ArrayRef, ContentError> {
                list_array::<$arrow>(name, values.map(Vec::as_slice))
            }
            fn read(columns: &Columns<'_>, name: &str) -> Result<Vec<Self>, ContentError> {
                columns.lists::<$arrow>(name)
            }
        }
    )+};
}

primitive_column!(
    u32 => arrow::datatypes::UInt32Type,
    u64 => arrow::datatypes::UInt64Type,
    f32 => arrow::datatypes::Float32Type,
    f64 => arrow::datatypes::Float64Type
);

impl Column for bool {
    fn build<'r>(
        _: &str,
        values: impl Iterator<Item = &'r Self>,
    ) -> Result<ArrayRef, ContentError> {
        Ok(Arc::new(values.map(|&v| Some(v)).collect::<BooleanArray>()))
    }
    fn read(columns: &Columns<'_>, name: &str) -> Result<Vec<Self>, ContentError> {
        let array = columns.get(name, &DataType::Boolean)?;
        let Some(values) = array.as_boolean_opt() else {
            return Err(wrong_type(name, array.data_type(), &DataType::Boolean));
        };
        if let Some(row) = first_null(values) {
            return Err(null(name, row));
        }
        Ok(values.values().iter().collect())
    }
}

impl Column for Vec<Message> {
    fn build<'r>(
        name: &str,
        values: impl Iterator<Item = &'r Self>,
    ) -> Result<ArrayRef, ContentError> {
        messages_array(name, values.map(Vec::as_slice))
    }
    fn read(columns: &Columns<'_>, name: &str) -> Result<Vec<Self>, ContentError> {
        columns.messages(name)
    }
}

// ---- builders ----

pub(crate) fn string_array<'s>(values: impl Iterator<Item = &'s str>) -> ArrayRef {
    Arc::new(StringArray::from_iter_values(values))
}

pub(crate) fn optional_string_array<'s>(values: impl Iterator<Item = Option<&'s str>>) -> ArrayRef {
    Arc::new(values.collect::<StringArray>())
}

pub(crate) fn u64_array(values: impl Iterator<Item = u64>) -> ArrayRef {
    Arc::new(values.collect::<UInt64Array>())
}

pub(crate) fn f64_array(values: impl Iterator<Item = f64>) -> ArrayRef {
    Arc::new(values.collect::<Float64Array>())
}

/// List offsets for the given list lengths; Arrow's i32 offsets cap a batch's total elements.
fn offsets(column: &str, lengths: &[usize]) -> Result<OffsetBuffer<i32>, ContentError> {
    let total: usize = lengths.iter().sum();
    if i32::try_from(total).is_err() {
        return Err(ContentError::TooLarge {
            column: column.to_string(),
            count: total,
        });
    }
    Ok(OffsetBuffer::from_lengths(lengths.iter().copied()))
}

/// A List<T> column of non-null items.
pub(crate) fn list_array<'r, T: ArrowPrimitiveType>(
    column: &str,
    lists: impl Iterator<Item = &'r [T::Native]>,
) -> Result<ArrayRef, ContentError> {
    let mut lengths = Vec::new();
    let mut items = Vec::new();
    for list in lists {
        lengths.push(list.len());
        items.extend_from_slice(list);
    }
    let values: ArrayRef = Arc::new(PrimitiveArray::<T>::from_iter_values(items));
    let list = ListArray::try_new(
        Arc::new(list_item_field(T::DATA_TYPE)),
        offsets(column, &lengths)?,
        values,
        None,
    )
    .map_err(ContentError::Arrow)?;
    Ok(Arc::new(list))
}

/// A `messages` column: List<Struct<role Utf8, content Utf8>>.
pub(crate) fn messages_array<'r>(
    column: &str,
    conversations: impl Iterator<Item = &'r [Message]>,
) -> Result<ArrayRef, ContentError> {
    let mut lengths = Vec::new();
    let mut roles = Vec::new();
    let mut contents = Vec::new();
    for conversation in conversations {
        lengths.push(conversation.len());
        for message in conversation {
            roles.push(message.role.as_str());
            contents.push(message.content.as_str());
        }
    }
    let structs = StructArray::try_new(
        message_fields(),
        vec![
            string_array(roles.into_iter()),
            string_array(contents.into_iter()),
        ],
        None,
    )
    .map_err(ContentError::Arrow)?;
    let list = ListArray::try_new(
        Arc::new(list_item_field(DataType::Struct(message_fields()))),
        offsets(column, &lengths)?,
        Arc::new(structs),
        None,
    )
    .map_err(ContentError::Arrow)?;
    Ok(Arc::new(list))
}
