//! A model as the command line names it (a directory, a PEFT adapter folder, a GGUF file or a
//! Hugging Face Hub id): where its files
//! are, and its identity for fingerprints.

use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};

use super::peft::{is_adapter_dir, PeftAdapter};
use crate::data::{default_cache_dir, model_digest, DigestCache, ModelRef};

/// A model directory, a GGUF file, or a Hugging Face Hub id downloaded into the usual cache.
pub fn resolve_model(spec: &str) -> Result<PathBuf> {
    let path = Path::new(spec);
    if path.is_dir() || super::gguf_file(path)?.is_some() {
        return Ok(path.to_path_buf());
    }
    if path.exists() {
        bail!(
            "model {spec}: not a directory or a .gguf file (expected a Hugging Face model \
             directory, a GGUF file or a Hub id)"
        );
    }
    crate::hub::download(spec)
}

/// The model's identity for fingerprints: its weights' digest (cached) and the files that shape
/// its text (config, tokenizer, chat template). A stage's `--force` passes
/// [`DigestCache::Recompute`]: the weights are hashed again.
/// A PEFT adapter folder's identity is its weights, its settings and its base's identity.
pub fn model_ref(dir: &Path, digests: DigestCache) -> Result<ModelRef> {
    let weights = model_digest(dir, &default_cache_dir(), digests)
        .with_context(|| format!("cannot fingerprint the model {}", dir.display()))?;
    let mut hasher = blake3::Hasher::new();
    hasher.update(weights.as_bytes());
    if is_adapter_dir(dir) {
        let adapter = PeftAdapter::open(dir)?;
        let base = model_ref(&adapter.base_dir()?, digests)?;
        for part in [
            b"peft".as_slice(),
            base.digest.as_bytes(),
            adapter.settings_identity().as_bytes(),
        ] {
            hasher.update(&(part.len() as u64).to_le_bytes());
            hasher.update(part);
        }
    }
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
