//! What every stage does around its work: name its output's fingerprint, skip when the output
//! is up to date, find its models and device.

use anyhow::{bail, Context, Result};
use candle_core::Device;
use serde::Serialize;
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::data::{
    default_cache_dir, model_digest, read_meta, stage_fingerprint, FileKind, FileMeta, InputRef,
    ModelRef,
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

/// A model directory, or a Hugging Face Hub id downloaded into the usual cache.
pub fn resolve_model(spec: &str) -> Result<PathBuf> {
    let path = Path::new(spec);
    if path.is_dir() {
        return Ok(path.to_path_buf());
    }
    if path.exists() {
        bail!(
            "model {spec}: not a directory (expected a Hugging Face model directory or a Hub id)"
        );
    }
    crate::hub::download(spec)
}

/// The model's identity for fingerprints: its weights' digest (cached) and the files that shape
/// its text (config, tokenizer, chat template).
pub fn model_ref(dir: &Path) -> Result<ModelRef> {
    let weights = model_digest(dir, &default_cache_dir(), crate::data::DigestCache::Reuse)
        .with_context(|| format!("cannot fingerprint the model {}", dir.display()))?;
    let mut hasher = blake3::Hasher::new();
    hasher.update(weights.as_bytes());
    for name in [
        "config.json",
        "tokenizer.json",
        "tokenizer_config.json",
        "generation_config.json",
        "chat_template.jinja",
    ] {
        if let Ok(bytes) = std::fs::read(dir.join(name)) {
            hasher.update(name.as_bytes());
            hasher.update(&(bytes.len() as u64).to_le_bytes());
            hasher.update(&bytes);
        }
    }
    Ok(ModelRef {
        path: dir.display().to_string(),
        digest: hasher.finalize().to_hex().to_string(),
    })
}

/// `cpu`, `cuda` or `cuda:N`.
pub fn parse_device(spec: &str) -> Result<Device> {
    match spec {
        "cpu" => Ok(Device::Cpu),
        s if s == "cuda" || s.starts_with("cuda:") => {
            let ordinal: usize = match s.strip_prefix("cuda:") {
                Some(n) => n
                    .parse()
                    .with_context(|| format!("--device {s}: expected cuda:N with N a number"))?,
                None => 0,
            };
            new_cuda(ordinal).with_context(|| {
                if cfg!(feature = "cuda") {
                    format!("--device {s}: cannot open CUDA device {ordinal}")
                } else {
                    format!("--device {s}: CUDA is not available (build with --features cuda)")
                }
            })
        }
        other => bail!("--device {other}: expected cpu, cuda or cuda:N"),
    }
}

/// `Device::new_cuda`, with a missing library as an error: the CUDA build loads libcuda,
/// cuBLAS and cuRAND when a device is first opened (cudarc's dynamic loading, so the binary
/// also starts on machines without them), and cudarc panics when one cannot be found.
fn new_cuda(ordinal: usize) -> Result<Device> {
    let hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {}));
    let opened = std::panic::catch_unwind(|| Device::new_cuda(ordinal));
    std::panic::set_hook(hook);
    match opened {
        Ok(device) => Ok(device?),
        Err(payload) => {
            let message = payload
                .downcast_ref::<String>()
                .map(String::as_str)
                .or_else(|| payload.downcast_ref::<&str>().copied())
                .unwrap_or("a CUDA library could not be loaded");
            bail!("{message}")
        }
    }
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
