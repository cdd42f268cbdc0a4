//! What every stage does around its work: name its output's fingerprint, skip when the output
//! is up to date.

use anyhow::{bail, Context, Result};
use serde::Serialize;
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::data::{
    read_meta, stage_fingerprint, ChunkStore, FileKind, FileMeta, InputRef, ModelRef,
};

/// What a stage run did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The output's fingerprint matched: nothing was done.
    UpToDate,
    /// The output was (re)written with this many rows.
    Written { rows: usize },
}

/// The output file of a stage with everything that determines its content.
pub struct StageOutput {
    pub path: PathBuf,
    pub meta: FileMeta,
}

impl StageOutput {
    /// `config` is the canonical form of the settings that shape the content (never batch
    /// sizes or devices); `inputs` the files read, with their metadata; `models` by role.
    pub fn new(
        path: &Path,
        kind: FileKind,
        stage: &str,
        config: &impl Serialize,
        inputs: &[(&Path, &FileMeta)],
        models: &[(&str, ModelRef)],
    ) -> Result<Self> {
        let config = serde_json::to_value(config).context("settings are not serialisable")?;
        let input_fps: Vec<&str> = inputs.iter().map(|(_, m)| m.fingerprint.as_str()).collect();
        let digests: Vec<(&str, &str)> = models
            .iter()
            .map(|(role, m)| (*role, m.digest.as_str()))
            .collect();
        let fingerprint = stage_fingerprint(stage, kind.schema_id(), &config, &input_fps, &digests);
        let mut meta = FileMeta::new(kind, stage, fingerprint);
        meta.config = config;
        meta.inputs = inputs
            .iter()
            .map(|(p, m)| InputRef {
                path: p.display().to_string(),
                fingerprint: m.fingerprint.clone(),
            })
            .collect();
        meta.models = models
            .iter()
            .map(|(role, m)| (role.to_string(), m.clone()))
            .collect::<BTreeMap<_, _>>();
        Ok(StageOutput {
            path: path.to_path_buf(),
            meta,
        })
    }

    pub fn fingerprint(&self) -> &str {
        &self.meta.fingerprint
    }

    /// True when the output exists and was made from exactly these inputs and settings.
    pub fn is_up_to_date(&self) -> bool {
        read_meta(&self.path)
            .map(|m| m.fingerprint == self.meta.fingerprint)
            .unwrap_or(false)
    }
}

/// Whether a stage that writes `chunked` in chunks skips its work: its outputs are
/// `up_to_date` and `force` is not set. Chunks an interrupted run left are dropped when it
/// skips or is forced, and kept otherwise, for the run to resume from.
pub fn skip_chunked_run(chunked: &Path, up_to_date: bool, force: bool) -> Result<bool> {
    let skip = up_to_date && !force;
    if skip || force {
        ChunkStore::discard(chunked)?;
    }
    Ok(skip)
}

/// The settings as canonical JSON without the listed keys (e.g. batch sizes, which never
/// change what a stage writes).
pub fn content_config(settings: &impl Serialize, drop: &[&str]) -> Result<Value> {
    let mut v = serde_json::to_value(settings)?;
    if let Value::Object(map) = &mut v {
        for k in drop {
            map.remove(*k);
        }
    }
    Ok(v)
}

/// A path as the file system resolves it (links followed); one that does not exist yet through
/// its folder. None when its folder does not exist either: nothing there can be overwritten.
fn resolved(p: &Path) -> Option<PathBuf> {
    if let Ok(c) = p.canonicalize() {
        return Some(c);
    }
    let name = p.file_name()?;
    let dir = match p.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    dir.canonicalize().ok().map(|d| d.join(name))
}

/// Refuses, before any work, an output file (flag, path) that is an existing directory or would
/// overwrite what the run reads (see [`refuse_overwriting_inputs`]).
pub fn check_output_files(
    outputs: &[(&str, &Path)],
    inputs: &[(&str, &Path)],
    models: &[(&str, &Path)],
) -> Result<()> {
    for (flag, out) in outputs {
        if out.is_dir() {
            bail!(
                "{flag} {}: an existing directory; expected a file path",
                out.display()
            );
        }
    }
    refuse_overwriting_inputs(outputs, inputs, models)
}

/// Refuses, before any work, an output (flag, path) that would overwrite what the run reads:
/// one of the `inputs` (flag, path), or a file of a model (flag, directory or GGUF file) or a
/// folder holding one.
pub fn refuse_overwriting_inputs(
    outputs: &[(&str, &Path)],
    inputs: &[(&str, &Path)],
    models: &[(&str, &Path)],
) -> Result<()> {
    for (out_flag, out) in outputs {
        let Some(target) = resolved(out) else {
            continue;
        };
        for (flag, input) in inputs {
            if resolved(input).as_ref() == Some(&target) {
                bail!(
                    "{out_flag} {}: the same file as {flag} {}; expected another path (the \
                     output would overwrite its own input)",
                    out.display(),
                    input.display()
                );
            }
        }
        for (flag, model) in models {
            let Some(model_path) = resolved(model) else {
                continue;
            };
            if target.starts_with(&model_path) || model_path.starts_with(&target) {
                bail!(
                    "{out_flag} {}: inside the model {flag} {}; expected a path outside the \
                     model (the output would overwrite the model's files)",
                    out.display(),
                    model.display()
                );
            }
        }
    }
    Ok(())
}
