//! The `rspo.*` key-value metadata every pipeline file carries: what the file is (schema), the
//! fingerprint of what produced it, the stage, its settings, its input files and its models.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::error::ContentError;
use super::fingerprint::canonical_json;
use super::schema::FileKind;

pub const KEY_SCHEMA: &str = "rspo.schema";
pub const KEY_FINGERPRINT: &str = "rspo.fingerprint";
pub const KEY_STAGE: &str = "rspo.stage";
pub const KEY_CONFIG: &str = "rspo.config";
pub const KEY_INPUTS: &str = "rspo.inputs";
pub const KEY_MODELS: &str = "rspo.models";
pub const KEY_VERSION: &str = "rspo.version";
/// Prefix of every rspo key; extra entries are stored as `rspo.<name>`.
pub const KEY_PREFIX: &str = "rspo.";
/// The extra entry (`rspo.preference_inputs`) of a winrates file: the `rspo.inputs` of the
/// preferences it was estimated from (the samples they judged), so that train-step can check
/// the win rates belong to its samples.
pub const PREFERENCE_INPUTS: &str = "preference_inputs";
/// In a shard's `extra`: which shard it is, `I/N` (`--shard I/N`).
pub const SHARD: &str = "shard";

const RESERVED: [&str; 7] = [
    KEY_SCHEMA,
    KEY_FINGERPRINT,
    KEY_STAGE,
    KEY_CONFIG,
    KEY_INPUTS,
    KEY_MODELS,
    KEY_VERSION,
];

/// One input file of a stage.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InputRef {
    pub path: String,
    pub fingerprint: String,
}

/// One model a stage used, by role (`policy`, `reference`, `judge`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModelRef {
    pub path: String,
    pub digest: String,
}

/// The metadata of one pipeline file.
#[derive(Debug, Clone, PartialEq)]
pub struct FileMeta {
    /// `rspo.schema`, e.g. `samples/v1`.
    pub schema: String,
    pub fingerprint: String,
    pub stage: String,
    /// The settings that shaped the content; stored as canonical JSON.
    pub config: Value,
    pub inputs: Vec<InputRef>,
    pub models: BTreeMap<String, ModelRef>,
    /// The rspo version that wrote the file.
    pub version: String,
    /// Further entries by name without the `rspo.` prefix, e.g. `role` for `rspo.role`.
    pub extra: BTreeMap<String, String>,
}

impl FileMeta {
    /// Metadata for a file of `kind` written now by `stage`, with empty settings, inputs and
    /// models for the caller to fill in.
    pub fn new(kind: FileKind, stage: impl Into<String>, fingerprint: impl Into<String>) -> Self {
        FileMeta {
            schema: kind.schema_id().to_string(),
            fingerprint: fingerprint.into(),
            stage: stage.into(),
            config: Value::Object(Default::default()),
            inputs: Vec::new(),
            models: BTreeMap::new(),
            version: crate::VERSION.to_string(),
            extra: BTreeMap::new(),
        }
    }

    /// The kind `schema` names, if it is a known one.
    pub fn kind(&self) -> Option<FileKind> {
        FileKind::from_schema_id(&self.schema)
    }

    /// `rspo.role` (logprobs files: `policy` or `reference`).
    pub fn role(&self) -> Option<&str> {
        self.extra.get("role").map(String::as_str)
    }

    /// `inputs` as stored: canonical JSON of a list of {path, fingerprint}.
    pub fn inputs_json(inputs: &[InputRef]) -> String {
        canonical_json(&Value::Array(
            inputs
                .iter()
                .map(|input| serde_json::json!({"path": input.path, "fingerprint": input.fingerprint}))
                .collect(),
        ))
    }

    /// `rspo.preference_inputs` (winrates files); None when the file does not record it.
    pub fn preference_inputs(&self) -> Result<Option<Vec<InputRef>>, ContentError> {
        let Some(value) = self.extra.get(PREFERENCE_INPUTS) else {
            return Ok(None);
        };
        serde_json::from_str(value)
            .map(Some)
            .map_err(|error| ContentError::BadMetadata {
                key: format!("{KEY_PREFIX}{PREFERENCE_INPUTS}"),
                reason: format!("{error} in {value:?}"),
            })
    }

    /// The key-value pairs stored in the Parquet footer, in a fixed order.
    pub fn to_key_values(&self) -> Result<Vec<(String, String)>, ContentError> {
        let json = |value: Value| canonical_json(&value);
        let models = Value::Object(
            self.models
                .iter()
                .map(|(role, model)| {
                    (
                        role.clone(),
                        serde_json::json!({"path": model.path, "digest": model.digest}),
                    )
                })
                .collect(),
        );
        let mut pairs = vec![
            (KEY_SCHEMA.to_string(), self.schema.clone()),
            (KEY_FINGERPRINT.to_string(), self.fingerprint.clone()),
            (KEY_STAGE.to_string(), self.stage.clone()),
            (KEY_CONFIG.to_string(), canonical_json(&self.config)),
            (KEY_INPUTS.to_string(), Self::inputs_json(&self.inputs)),
            (KEY_MODELS.to_string(), json(models)),
            (KEY_VERSION.to_string(), self.version.clone()),
        ];
        for (name, value) in &self.extra {
            let key = format!("{KEY_PREFIX}{name}");
            if name.is_empty() || RESERVED.contains(&key.as_str()) {
                return Err(ContentError::BadMetadata {
                    key,
                    reason:
                        "extra metadata names must be non-empty and not one of the standard keys"
                            .to_string(),
                });
            }
            pairs.push((key, value.clone()));
        }
        Ok(pairs)
    }

    /// Reads the `rspo.*` entries. `Ok(None)` when there is no `rspo.schema` (a file from
    /// another tool); other keys are ignored.
    pub fn from_key_values<'a>(
        pairs: impl IntoIterator<Item = (&'a str, Option<&'a str>)>,
    ) -> Result<Option<FileMeta>, ContentError> {
        let mut rspo: BTreeMap<&str, &str> = BTreeMap::new();
        for (key, value) in pairs {
            if key.starts_with(KEY_PREFIX) {
                rspo.insert(key, value.unwrap_or(""));
            }
        }
        let Some(schema) = rspo.get(KEY_SCHEMA) else {
            return Ok(None);
        };
        let text = |key: &str, expected: &str| -> Result<String, ContentError> {
            rspo.get(key).map(|value| value.to_string()).ok_or_else(|| {
                ContentError::MissingMetadata {
                    key: key.to_string(),
                    expected: expected.to_string(),
                }
            })
        };
        fn parse<T: serde::de::DeserializeOwned>(
            key: &str,
            value: &str,
        ) -> Result<T, ContentError> {
            serde_json::from_str(value).map_err(|error| ContentError::BadMetadata {
                key: key.to_string(),
                reason: format!("{error} in {value:?}"),
            })
        }
        let config = parse(KEY_CONFIG, &text(KEY_CONFIG, "the stage settings as JSON")?)?;
        let inputs = parse(
            KEY_INPUTS,
            &text(KEY_INPUTS, "a JSON list of {path, fingerprint}")?,
        )?;
        let models = parse(
            KEY_MODELS,
            &text(KEY_MODELS, "a JSON object of role -> {path, digest}")?,
        )?;
        let extra = rspo
            .iter()
            .filter(|(key, _)| !RESERVED.contains(key))
            .map(|(key, value)| (key[KEY_PREFIX.len()..].to_string(), value.to_string()))
            .collect();
        Ok(Some(FileMeta {
            schema: schema.to_string(),
            fingerprint: text(KEY_FINGERPRINT, "the producing stage's fingerprint")?,
            stage: text(KEY_STAGE, "the producing stage's name")?,
            config,
            inputs,
            models,
            version: text(KEY_VERSION, "the rspo version")?,
            extra,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample_meta() -> FileMeta {
        let mut meta = FileMeta::new(FileKind::Logprobs, "generate logprobs", "abc");
        meta.config = serde_json::json!({"z": 1, "a": [true, null]});
        meta.inputs.push(InputRef {
            path: "data/runs/x/iter-1/samples.parquet".into(),
            fingerprint: "f1".into(),
        });
        meta.models.insert(
            "reference".into(),
            ModelRef {
                path: "data/models/tiny".into(),
                digest: "d1".into(),
            },
        );
        meta.extra.insert("role".into(), "reference".into());
        meta
    }

    #[test]
    fn key_values_round_trip() {
        let meta = sample_meta();
        let pairs = meta.to_key_values().expect("valid metadata");
        assert_eq!(
            pairs[3],
            (
                KEY_CONFIG.to_string(),
                r#"{"a":[true,null],"z":1}"#.to_string()
            )
        );
        assert!(pairs.contains(&("rspo.role".to_string(), "reference".to_string())));
        let back =
            FileMeta::from_key_values(pairs.iter().map(|(k, v)| (k.as_str(), Some(v.as_str()))))
                .expect("readable")
                .expect("has rspo.schema");
        assert_eq!(back, meta);
        assert_eq!(back.role(), Some("reference"));
        assert_eq!(back.kind(), Some(FileKind::Logprobs));
    }

    #[test]
    fn missing_and_bad_keys_are_named() {
        let pairs = sample_meta().to_key_values().expect("valid metadata");
        let without_stage = pairs.iter().filter(|(k, _)| k != KEY_STAGE);
        let error =
            FileMeta::from_key_values(without_stage.map(|(k, v)| (k.as_str(), Some(v.as_str()))))
                .expect_err("stage is missing");
        assert!(
            error
                .to_string()
                .contains("missing metadata key 'rspo.stage'"),
            "{error}"
        );

        let broken = pairs.iter().map(|(k, v)| {
            let value = if k == KEY_INPUTS { "[{" } else { v.as_str() };
            (k.as_str(), Some(value))
        });
        let error = FileMeta::from_key_values(broken).expect_err("inputs are not JSON");
        assert!(
            error
                .to_string()
                .contains("metadata key 'rspo.inputs' is not valid"),
            "{error}"
        );

        assert!(FileMeta::from_key_values([("huggingface", Some("{}"))])
            .expect("foreign metadata is fine")
            .is_none());
    }

    #[test]
    fn extra_names_cannot_shadow_standard_keys() {
        let mut meta = sample_meta();
        meta.extra.insert("schema".into(), "x".into());
        assert!(meta.to_key_values().is_err());
    }
}
