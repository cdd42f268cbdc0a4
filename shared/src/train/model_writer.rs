//! Writing the trained model back as Hugging Face directories.
//!
//! [`write_model_dir`] writes a directory our loader and
//! `transformers.AutoModelForCausalLM.from_pretrained` both read: the tensors under the
//! checkpoint's names in safetensors with `format: pt` metadata (sharded with an index past
//! [`MAX_SHARD_BYTES`]), and the source directory's config, tokenizer, chat template and
//! generation config copied (from a GGUF source: derived from its metadata).
//! [`write_adapter_dir`] writes a LoRA adapter in PEFT's layout.
//! Directories appear complete or not at all.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use candle_core::{Tensor, Var};

use super::lora::{self, LoraSpec, ADAPTER_CONFIG, ADAPTER_WEIGHTS};
use crate::data::{write_dir_atomically, DataError};
use crate::model::{
    gguf_file, is_adapter_dir, save_safetensors, GgufModel, ModelError, PeftAdapter,
};

/// Shard size past which weights are split, as `save_pretrained`'s default (5 GB).
pub const MAX_SHARD_BYTES: usize = 5_000_000_000;

#[derive(Debug, thiserror::Error)]
pub enum ModelWriteError {
    #[error(transparent)]
    Model(#[from] ModelError),
    #[error("{path}: {message}")]
    Io { path: PathBuf, message: String },
    #[error(transparent)]
    Data(#[from] DataError),
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> ModelWriteError + '_ {
    move |e| ModelWriteError::Io {
        path: path.to_path_buf(),
        message: e.to_string(),
    }
}

/// Files of a model directory that are not weights (config, tokenizer, chat template,
/// generation config and the like), by name with their contents. A GGUF model has them in its
/// metadata: they are written out as a Hugging Face folder has them.
fn companion_files(src: &Path) -> Result<Vec<(String, Vec<u8>)>, ModelWriteError> {
    // An adapter folder has its base's config; its tokenizer is the base's too.
    if is_adapter_dir(src) {
        return companion_files(&PeftAdapter::open(src)?.base_dir()?);
    }
    if let Some(file) = gguf_file(src)? {
        let files = GgufModel::open(&file)?.hf_files()?;
        return Ok(files
            .into_iter()
            .map(|(name, text)| (name.to_string(), text.into_bytes()))
            .collect());
    }
    let mut files = Vec::new();
    for entry in std::fs::read_dir(src).map_err(io(src))? {
        let path = entry.map_err(io(src))?.path();
        let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
            continue;
        };
        let weights = name.ends_with(".safetensors")
            || name.ends_with(".bin")
            || name.ends_with(".pt")
            || name.ends_with(".pth")
            || name.ends_with(".index.json")
            || name == ADAPTER_CONFIG;
        if path.is_file() && !weights && !name.starts_with('.') {
            files.push((name.to_string(), std::fs::read(&path).map_err(io(&path))?));
        }
    }
    files.sort();
    Ok(files)
}

fn tokenizer_file(name: &str) -> bool {
    name.starts_with("tokenizer")
        || name.starts_with("special_tokens_map")
        || name.starts_with("added_tokens")
        || name.starts_with("chat_template")
        || name == "vocab.json"
        || name == "merges.txt"
}

fn write_files(dir: &Path, files: &[(String, Vec<u8>)]) -> Result<(), ModelWriteError> {
    for (name, bytes) in files {
        let to = dir.join(name);
        std::fs::write(&to, bytes).map_err(io(&to))?;
    }
    Ok(())
}

/// Writes `tensors` as safetensors into `dir`: `model.safetensors`, or shards
/// `model-0000k-of-0000n.safetensors` with `model.safetensors.index.json` past `max_shard`.
fn write_weights(
    dir: &Path,
    tensors: &BTreeMap<String, Tensor>,
    max_shard: usize,
) -> Result<(), ModelWriteError> {
    let bytes = |t: &Tensor| t.elem_count() * t.dtype().size_in_bytes();
    let total: usize = tensors.values().map(bytes).sum();
    if total <= max_shard {
        save_safetensors(tensors, &dir.join("model.safetensors"))?;
        return Ok(());
    }
    let mut shards: Vec<BTreeMap<String, Tensor>> = vec![BTreeMap::new()];
    let mut size = 0;
    for (name, t) in tensors {
        if size > 0 && size + bytes(t) > max_shard {
            shards.push(BTreeMap::new());
            size = 0;
        }
        size += bytes(t);
        shards
            .last_mut()
            .expect("at least one shard")
            .insert(name.clone(), t.clone());
    }
    let n = shards.len();
    let mut weight_map = serde_json::Map::new();
    for (k, shard) in shards.iter().enumerate() {
        let file = format!("model-{:05}-of-{n:05}.safetensors", k + 1);
        save_safetensors(shard, &dir.join(&file))?;
        for name in shard.keys() {
            weight_map.insert(name.clone(), serde_json::Value::String(file.clone()));
        }
    }
    let index = serde_json::json!({
        "metadata": {"total_size": total},
        "weight_map": weight_map,
    });
    let path = dir.join("model.safetensors.index.json");
    std::fs::write(
        &path,
        serde_json::to_string_pretty(&index).unwrap_or_default(),
    )
    .map_err(io(&path))?;
    Ok(())
}

/// Writes a full Hugging Face model directory at `dest`: `tensors` under their checkpoint
/// names, and every non-weight file of `source` (config.json, tokenizer.json,
/// tokenizer_config.json with the chat template, generation_config.json, ...) copied.
pub fn write_model_dir(
    source: &Path,
    tensors: &BTreeMap<String, Tensor>,
    dest: &Path,
) -> Result<(), ModelWriteError> {
    write_model_dir_sharded(source, tensors, dest, MAX_SHARD_BYTES)
}

/// [`write_model_dir`] with a given shard size.
pub fn write_model_dir_sharded(
    source: &Path,
    tensors: &BTreeMap<String, Tensor>,
    dest: &Path,
    max_shard: usize,
) -> Result<(), ModelWriteError> {
    let companions = companion_files(source)?;
    write_dir_atomically(dest, |dir| {
        write_files(dir, &companions)?;
        write_weights(dir, tensors, max_shard)
    })
}

/// Writes a PEFT adapter directory at `dest`: `adapter_model.safetensors`,
/// `adapter_config.json` (base model: `base`) and the base's tokenizer files.
pub fn write_adapter_dir(
    base: &Path,
    params: &[(String, Var)],
    spec: &LoraSpec,
    dest: &Path,
) -> Result<(), ModelWriteError> {
    let tokenizer_files: Vec<(String, Vec<u8>)> = companion_files(base)?
        .into_iter()
        .filter(|(name, _)| tokenizer_file(name))
        .collect();
    let base = std::fs::canonicalize(base).unwrap_or_else(|_| base.to_path_buf());
    write_dir_atomically(dest, |dir| {
        write_files(dir, &tokenizer_files)?;
        save_safetensors(&lora::peft_tensors(params), &dir.join(ADAPTER_WEIGHTS))?;
        let path = dir.join(ADAPTER_CONFIG);
        let text =
            serde_json::to_string_pretty(&lora::adapter_config(spec, &base)).unwrap_or_default();
        std::fs::write(&path, text).map_err(io(&path))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Weights;
    use candle_core::{DType, Device};

    #[test]
    fn sharded_weights_have_an_index_our_loader_reads() {
        let dir = std::env::temp_dir().join(format!("rspo-shard-test-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("config.json"), "{}").unwrap();
        let dev = Device::Cpu;
        let tensors: BTreeMap<String, Tensor> = (0..5)
            .map(|i| {
                (
                    format!("t{i}"),
                    Tensor::full(i as f32, (4, 4), &dev).unwrap(),
                )
            })
            .collect();
        let out = dir.join("model");
        // 64 bytes per tensor, 130 per shard: two tensors a shard.
        write_model_dir_sharded(&dir, &tensors, &out, 130).unwrap();
        assert!(out.join("config.json").is_file());
        assert!(out.join("model-00003-of-00003.safetensors").is_file());
        let w = Weights::load(&out, DType::F32, &dev).unwrap();
        for (name, t) in &tensors {
            let got = w.get(name, &[4, 4]).unwrap();
            let diff = (got - t).unwrap().abs().unwrap().sum_all().unwrap();
            assert_eq!(diff.to_scalar::<f32>().unwrap(), 0.0);
        }
        // Rewriting replaces the directory whole.
        write_model_dir_sharded(&dir, &tensors, &out, 1 << 20).unwrap();
        assert!(out.join("model.safetensors").is_file());
        assert!(!out.join("model-00001-of-00003.safetensors").exists());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
