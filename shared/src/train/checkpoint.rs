//! The model being trained, and writing it back as a Hugging Face directory.
//!
//! [`TrainableModel::full`] wraps every tensor the transformer uses in a `Var`;
//! [`TrainableModel::lora`] keeps the base as plain tensors (candle then records no graph for
//! them) and trains only the adapters. [`write_model_dir`] writes a directory our loader and
//! `transformers.AutoModelForCausalLM.from_pretrained` both read: the tensors under the
//! checkpoint's names in safetensors with `format: pt` metadata (sharded with an index past
//! [`MAX_SHARD_BYTES`]), and the source directory's config, tokenizer, chat template and
//! generation config copied (from a GGUF source: derived from its metadata). Directories appear
//! complete or not at all.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use candle_core::{DType, Tensor, Var};

use super::lora::{self, LoraError, LoraSpec, ADAPTER_CONFIG, ADAPTER_WEIGHTS};
use crate::model::{
    gguf_file, save_safetensors, GgufModel, ModelConfig, ModelError, Transformer, Weights,
};

/// Shard size past which weights are split, as `save_pretrained`'s default (5 GB).
pub const MAX_SHARD_BYTES: usize = 5_000_000_000;

#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    #[error(transparent)]
    Model(#[from] ModelError),
    #[error(transparent)]
    Lora(#[from] LoraError),
    #[error("{path}: {message}")]
    Io { path: PathBuf, message: String },
    #[error("saved training state: {0}")]
    State(String),
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> CheckpointError + '_ {
    move |e| CheckpointError::Io {
        path: path.to_path_buf(),
        message: e.to_string(),
    }
}

/// A transformer with its trainable parameters.
///
/// Mixed precision: the parameters (`Var`s) are the master weights in their own dtype (f32),
/// and [`TrainableModel::forward_model`] runs the transformer in `compute` dtype (bf16 on GPU)
/// from casts of them. A cast is an op candle differentiates (its backward casts the
/// gradient back), so gradients land on the f32 masters in f32 and the optimizer keeps f32
/// state; updates smaller than bf16's resolution still accumulate.
pub struct TrainableModel {
    /// The model built from the parameters as they are (full fine-tuning), or the frozen base
    /// in the compute dtype with the adapters attached (LoRA). Run forward passes through
    /// [`TrainableModel::forward_model`], which also handles the mixed-precision cast.
    pub model: Transformer,
    /// Full fine-tuning: every tensor the model uses, under its checkpoint name. LoRA: the
    /// adapters, `<layer>.lora_A.weight` and `<layer>.lora_B.weight`.
    pub params: Vec<(String, Var)>,
    pub lora: Option<LoraSpec>,
    /// The dtype forward and backward passes run in; written checkpoints have it too.
    pub compute: DType,
}

impl TrainableModel {
    /// Every weight trainable, in the weights' dtype (no mixed precision).
    pub fn full(config: ModelConfig, weights: &Weights) -> Result<Self, CheckpointError> {
        let compute = weights_dtype(weights);
        Self::full_mixed(config, weights, compute)
    }

    /// Every weight trainable: the parameters in the weights' dtype (load them in f32 for f32
    /// master weights), the passes in `compute`.
    pub fn full_mixed(
        config: ModelConfig,
        weights: &Weights,
        compute: DType,
    ) -> Result<Self, CheckpointError> {
        let tensors: HashMap<String, Tensor> = weights
            .tensors()
            .iter()
            .map(|(n, t)| Ok((n.clone(), Var::from_tensor(t)?.as_tensor().clone())))
            .collect::<candle_core::Result<_>>()?;
        let model = Transformer::new(
            config,
            &Weights::from_tensors(tensors, weights.source().to_path_buf()),
        )?;
        // Only what the model uses: a checkpoint may carry tensors it ignores (a tied head).
        let params = model
            .named_tensors()
            .into_iter()
            .map(|(n, t)| Ok((n, Var::from_tensor(&t)?)))
            .collect::<candle_core::Result<_>>()?;
        Ok(TrainableModel {
            model,
            params,
            lora: None,
            compute,
        })
    }

    /// The base frozen, adapters on `spec.targets` trainable (A seeded by `seed`, B zero), all
    /// in the weights' dtype.
    pub fn lora(
        config: ModelConfig,
        weights: &Weights,
        spec: &LoraSpec,
        seed: u64,
    ) -> Result<Self, CheckpointError> {
        let compute = weights_dtype(weights);
        Self::lora_mixed(config, weights, spec, seed, compute)
    }

    /// LoRA with the frozen base cast to `compute` (it needs no master copy) and the adapters
    /// in the weights' dtype (f32 masters when the weights were loaded in f32).
    pub fn lora_mixed(
        config: ModelConfig,
        weights: &Weights,
        spec: &LoraSpec,
        seed: u64,
        compute: DType,
    ) -> Result<Self, CheckpointError> {
        let master = weights_dtype(weights);
        let base = if master == compute {
            Transformer::new(config, weights)?
        } else {
            let cast: HashMap<String, Tensor> = weights
                .tensors()
                .iter()
                .map(|(n, t)| Ok((n.clone(), t.to_dtype(compute)?)))
                .collect::<candle_core::Result<_>>()?;
            Transformer::new(
                config,
                &Weights::from_tensors(cast, weights.source().to_path_buf()),
            )?
        };
        let mut model = base;
        let params = lora::attach_with_dtype(&mut model, spec, seed, master)?;
        Ok(TrainableModel {
            model,
            params,
            lora: Some(spec.clone()),
            compute,
        })
    }

    /// True when the parameters are kept in another dtype than the passes run in.
    pub fn is_mixed(&self) -> bool {
        self.params
            .first()
            .is_some_and(|(_, v)| v.dtype() != self.compute)
    }

    /// The model to run forward (and backward) passes with, in the compute dtype. Without mixed
    /// precision that is [`TrainableModel::model`]; with it, a model built from casts of the
    /// current parameters, so build it after each optimizer step.
    pub fn forward_model(&self) -> Result<Transformer, CheckpointError> {
        if !self.is_mixed() {
            return Ok(self.model.clone());
        }
        match &self.lora {
            None => {
                let cast: HashMap<String, Tensor> = self
                    .params
                    .iter()
                    .map(|(n, v)| Ok((n.clone(), v.as_tensor().to_dtype(self.compute)?)))
                    .collect::<candle_core::Result<_>>()?;
                Ok(Transformer::new(
                    self.model.cfg.clone(),
                    &Weights::from_tensors(cast, PathBuf::from("<trainable parameters>")),
                )?)
            }
            Some(spec) => {
                let mut model = self.model.clone();
                let by_name: HashMap<&str, &Var> =
                    self.params.iter().map(|(n, v)| (n.as_str(), v)).collect();
                for (name, linear) in model.linear_layers_mut(&spec.targets) {
                    let get = |part: &str| -> Result<Tensor, CheckpointError> {
                        let key = format!("{name}.{part}.weight");
                        let var = by_name.get(key.as_str()).ok_or_else(|| {
                            CheckpointError::State(format!("no adapter parameter {key}"))
                        })?;
                        Ok(var.as_tensor().to_dtype(self.compute)?)
                    };
                    let (a, b) = (get("lora_A")?, get("lora_B")?);
                    if let Some(adapter) = linear.lora.as_mut() {
                        adapter.a = a;
                        adapter.b = b;
                    }
                }
                Ok(model)
            }
        }
    }

    /// The full checkpoint as it stands: the trained weights, or the base with the adapters
    /// merged in.
    pub fn checkpoint_tensors(&self) -> Result<BTreeMap<String, Tensor>, CheckpointError> {
        match &self.lora {
            // Written in the compute dtype, as a bf16 run's checkpoint is bf16.
            None => self
                .model
                .named_tensors()
                .into_iter()
                .map(|(n, t)| Ok((n, t.to_dtype(self.compute)?)))
                .collect::<Result<_, CheckpointError>>(),
            Some(spec) => Ok(lora::merged_tensors(&self.model, &self.params, spec)?),
        }
    }

    /// The trainable parameters' current values, by name.
    pub fn param_tensors(&self) -> BTreeMap<String, Tensor> {
        self.params
            .iter()
            .map(|(n, v)| (n.clone(), v.as_tensor().clone()))
            .collect()
    }

    /// Sets every trainable parameter from `tensors` (as [`TrainableModel::param_tensors`]
    /// returned them), checking names and shapes.
    pub fn set_params(&self, tensors: &HashMap<String, Tensor>) -> Result<(), CheckpointError> {
        if tensors.len() != self.params.len() {
            return Err(CheckpointError::State(format!(
                "{} tensors for {} parameters",
                tensors.len(),
                self.params.len()
            )));
        }
        for (name, var) in &self.params {
            let t = tensors
                .get(name)
                .ok_or_else(|| CheckpointError::State(format!("no tensor for {name}")))?;
            if t.dims() != var.dims() {
                return Err(CheckpointError::State(format!(
                    "{name} has shape {:?}, the parameter {:?}",
                    t.dims(),
                    var.dims()
                )));
            }
            var.set(&t.to_dtype(var.dtype())?.to_device(var.device())?)?;
        }
        Ok(())
    }
}

/// The dtype of a checkpoint's weights (f32 when it has none).
fn weights_dtype(weights: &Weights) -> DType {
    weights
        .tensors()
        .values()
        .next()
        .map_or(DType::F32, |t| t.dtype())
}

/// Files of a model directory that are not weights (config, tokenizer, chat template,
/// generation config and the like), by name with their contents. A GGUF model has them in its
/// metadata: they are written out as a Hugging Face folder has them.
fn companion_files(src: &Path) -> Result<Vec<(String, Vec<u8>)>, CheckpointError> {
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

fn write_files(dir: &Path, files: &[(String, Vec<u8>)]) -> Result<(), CheckpointError> {
    for (name, bytes) in files {
        let to = dir.join(name);
        std::fs::write(&to, bytes).map_err(io(&to))?;
    }
    Ok(())
}

/// Writes a directory through a temporary sibling and renames it into place; an existing
/// directory at `dest` is replaced only once the new one is complete.
fn write_dir_atomically(
    dest: &Path,
    fill: impl FnOnce(&Path) -> Result<(), CheckpointError>,
) -> Result<(), CheckpointError> {
    let parent = dest
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."));
    std::fs::create_dir_all(&parent).map_err(io(&parent))?;
    let name = dest
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "model".into());
    let tmp = parent.join(format!(".{name}.tmp-{}", std::process::id()));
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp).map_err(io(&tmp))?;
    }
    std::fs::create_dir_all(&tmp).map_err(io(&tmp))?;
    if let Err(e) = fill(&tmp) {
        let _ = std::fs::remove_dir_all(&tmp);
        return Err(e);
    }
    let old = parent.join(format!(".{name}.old-{}", std::process::id()));
    let had_old = dest.exists();
    if had_old {
        std::fs::rename(dest, &old).map_err(io(dest))?;
    }
    std::fs::rename(&tmp, dest).map_err(io(dest))?;
    if had_old {
        std::fs::remove_dir_all(&old).map_err(io(&old))?;
    }
    Ok(())
}

/// Writes `tensors` as safetensors into `dir`: `model.safetensors`, or shards
/// `model-0000k-of-0000n.safetensors` with `model.safetensors.index.json` past `max_shard`.
fn write_weights(
    dir: &Path,
    tensors: &BTreeMap<String, Tensor>,
    max_shard: usize,
) -> Result<(), CheckpointError> {
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
) -> Result<(), CheckpointError> {
    write_model_dir_sharded(source, tensors, dest, MAX_SHARD_BYTES)
}

/// [`write_model_dir`] with a given shard size.
pub fn write_model_dir_sharded(
    source: &Path,
    tensors: &BTreeMap<String, Tensor>,
    dest: &Path,
    max_shard: usize,
) -> Result<(), CheckpointError> {
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
) -> Result<(), CheckpointError> {
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
