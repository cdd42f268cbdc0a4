//! The tensors of a checkpoint: `model.safetensors`, or shards listed by
//! `model.safetensors.index.json`. Loaded once, by name, onto a device and dtype.

use candle_core::{safetensors::MmapedSafetensors, DType, Device, Tensor};
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use super::gguf::{gguf_file, GgufModel};
use super::peft::{is_adapter_dir, PeftAdapter};
use super::{ModelError, Result};

pub const SINGLE_FILE: &str = "model.safetensors";
pub const INDEX_FILE: &str = "model.safetensors.index.json";

/// Named tensors plus where they came from (for error messages).
#[derive(Clone)]
pub struct Weights {
    tensors: HashMap<String, Tensor>,
    source: PathBuf,
}

/// The weight files of a model directory, in a stable order.
pub fn weight_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let single = dir.join(SINGLE_FILE);
    if single.is_file() {
        return Ok(vec![single]);
    }
    let index = dir.join(INDEX_FILE);
    if index.is_file() {
        let text = std::fs::read_to_string(&index).map_err(|e| ModelError::io(&index, e))?;
        let json: serde_json::Value =
            serde_json::from_str(&text).map_err(|e| ModelError::Config {
                path: index.clone(),
                message: e.to_string(),
            })?;
        let map = json
            .get("weight_map")
            .and_then(|m| m.as_object())
            .ok_or_else(|| ModelError::Config {
                path: index.clone(),
                message: "no `weight_map` object".into(),
            })?;
        let mut files: Vec<String> = map
            .values()
            .filter_map(|v| v.as_str().map(String::from))
            .collect();
        files.sort();
        files.dedup();
        let files: Vec<PathBuf> = files.into_iter().map(|f| dir.join(f)).collect();
        for f in &files {
            if !f.is_file() {
                return Err(ModelError::MissingFile {
                    dir: dir.to_path_buf(),
                    what: f
                        .file_name()
                        .map(|n| n.to_string_lossy().into_owned())
                        .unwrap_or_default(),
                    expected: format!("a shard listed in {INDEX_FILE}"),
                });
            }
        }
        return Ok(files);
    }
    Err(ModelError::MissingFile {
        dir: dir.to_path_buf(),
        what: "weights".into(),
        expected: format!("{SINGLE_FILE} or {INDEX_FILE} with its shards"),
    })
}

impl Weights {
    /// Reads every tensor of the model directory (or GGUF file, or PEFT adapter folder: its
    /// base's tensors with the adapter merged in), converted to `dtype` on `device`.
    pub fn load(dir: &Path, dtype: DType, device: &Device) -> Result<Self> {
        if is_adapter_dir(dir) {
            let adapter = PeftAdapter::open(dir)?;
            let mut weights = Weights::load(&adapter.base_dir()?, dtype, device)?;
            adapter.merge_into(&mut weights.tensors, device)?;
            weights.source = dir.to_path_buf();
            return Ok(weights);
        }
        if let Some(file) = gguf_file(dir)? {
            return GgufModel::open(&file)?.weights(dtype, device);
        }
        let files = weight_files(dir)?;
        // Safety: the files are memory-mapped read-only; we copy every tensor out before returning.
        let st = unsafe { MmapedSafetensors::multi(&files) }.map_err(|e| ModelError::Config {
            path: dir.to_path_buf(),
            message: format!("cannot read safetensors: {e}"),
        })?;
        let mut tensors = HashMap::new();
        for (name, _) in st.tensors() {
            let t = st.load(&name, device)?;
            let t = if t.dtype() == dtype {
                t
            } else {
                t.to_dtype(dtype)?
            };
            tensors.insert(name, t);
        }
        Ok(Weights {
            tensors,
            source: dir.to_path_buf(),
        })
    }

    pub fn from_tensors(tensors: HashMap<String, Tensor>, source: PathBuf) -> Self {
        Weights { tensors, source }
    }

    pub fn contains(&self, name: &str) -> bool {
        self.tensors.contains_key(name)
    }

    /// The tensor `name`, checked against the shape the config implies.
    pub fn get(&self, name: &str, shape: &[usize]) -> Result<Tensor> {
        let t = self
            .tensors
            .get(name)
            .ok_or_else(|| ModelError::MissingTensor {
                path: self.source.clone(),
                name: name.into(),
                expected: shape.to_vec(),
            })?;
        if t.dims() != shape {
            return Err(ModelError::TensorShape {
                path: self.source.clone(),
                name: name.into(),
                found: t.dims().to_vec(),
                expected: shape.to_vec(),
            });
        }
        Ok(t.clone())
    }

    pub fn names(&self) -> impl Iterator<Item = &String> {
        self.tensors.keys()
    }

    pub fn tensors(&self) -> &HashMap<String, Tensor> {
        &self.tensors
    }

    pub fn source(&self) -> &Path {
        &self.source
    }
}

/// Writes tensors as one safetensors file with `format: pt` metadata, the way transformers
/// saves them, so both our loader and `from_pretrained` read it.
pub fn save_safetensors(tensors: &BTreeMap<String, Tensor>, path: &Path) -> Result<()> {
    let mut views = Vec::with_capacity(tensors.len());
    for (name, t) in tensors {
        let t = t.to_device(&Device::Cpu)?.contiguous()?;
        views.push((name.clone(), t));
    }
    let metadata: HashMap<String, String> = [("format".to_string(), "pt".to_string())].into();
    safetensors::serialize_to_file(
        views.iter().map(|(n, t)| (n.as_str(), t)),
        Some(metadata),
        path,
    )
    .map_err(|e| ModelError::Config {
        path: path.to_path_buf(),
        message: format!("cannot write safetensors: {e}"),
    })?;
    // The writer creates the file private (0600); a model is read by others like every output.
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o644)).map_err(|e| {
            ModelError::Config {
                path: path.to_path_buf(),
                message: format!("cannot make it readable: {e}"),
            }
        })?;
    }
    Ok(())
}
