//! PEFT LoRA adapter folders as models, as the Hugging Face libraries treat them: a folder with
//! `adapter_config.json` and `adapter_model.safetensors` (and no `config.json`) is its base model
//! (`base_model_name_or_path`: a local folder or GGUF, relative paths from the working directory
//! as `from_pretrained` resolves them, or a Hub id) with the adapter merged into the weights at
//! load: `W + scale * B A`, scale = `lora_alpha / r` (`lora_alpha / sqrt(r)` with `use_rslora`).
//!
//! The one definition of PEFT's names: tensors `base_model.model.<layer>.lora_A.weight` (r, in)
//! and `.lora_B.weight` (out, r); train-step writes adapters with these and reads them back.
//! `fan_in_fan_out` is accepted and has no effect: every layer here is an `nn.Linear`, for which
//! PEFT resets it to false. Options that change the arithmetic (DoRA, per-layer rank or alpha
//! patterns, trained biases, fully saved modules) are refused with the option's name.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};
use serde_json::Value;

use super::{ModelError, Result};

/// PEFT's key prefix for the model under the adapter.
pub const PEFT_PREFIX: &str = "base_model.model.";
pub const ADAPTER_WEIGHTS: &str = "adapter_model.safetensors";
pub const ADAPTER_CONFIG: &str = "adapter_config.json";

/// The two factors of a LoRA update.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LoraPart {
    A,
    B,
}

impl LoraPart {
    fn tag(self) -> &'static str {
        match self {
            LoraPart::A => "lora_A",
            LoraPart::B => "lora_B",
        }
    }
}

/// `<layer>.lora_A.weight`: an adapter tensor's name without PEFT's prefix.
pub fn lora_tensor_name(layer: &str, part: LoraPart) -> String {
    format!("{layer}.{}.weight", part.tag())
}

/// The layer and part of an adapter tensor name (without PEFT's prefix).
pub fn parse_lora_tensor_name(name: &str) -> Option<(&str, LoraPart)> {
    [LoraPart::A, LoraPart::B].into_iter().find_map(|part| {
        name.strip_suffix(&format!(".{}.weight", part.tag()))
            .map(|layer| (layer, part))
    })
}

/// True for a folder that holds a PEFT adapter instead of a full model.
pub fn is_adapter_dir(path: &Path) -> bool {
    path.is_dir() && path.join(ADAPTER_CONFIG).is_file() && !path.join("config.json").is_file()
}

/// `W + scale * B A`, in W's dtype (computed in f32 at least).
pub fn merged_weight(weight: &Tensor, a: &Tensor, b: &Tensor, scale: f64) -> Result<Tensor> {
    let wide = super::ops::at_least_f32(weight.dtype());
    let delta = (b.to_dtype(wide)?.matmul(&a.to_dtype(wide)?)? * scale)?;
    Ok((weight.to_dtype(wide)? + delta)?.to_dtype(weight.dtype())?)
}

/// A PEFT LoRA adapter folder, its settings checked.
#[derive(Debug, Clone)]
pub struct PeftAdapter {
    pub dir: PathBuf,
    /// `base_model_name_or_path` as written.
    pub base: String,
    pub rank: usize,
    pub alpha: f64,
    /// `target_modules` when it is a list (a regex string gives none: the tensors say which).
    pub targets: Vec<String>,
    pub use_rslora: bool,
    config: Value,
}

impl PeftAdapter {
    /// Reads and checks `adapter_config.json` (the tensors are read by [`PeftAdapter::tensors`]).
    pub fn open(dir: &Path) -> Result<Self> {
        let path = dir.join(ADAPTER_CONFIG);
        let bad = |message: String| ModelError::Config {
            path: path.clone(),
            message,
        };
        let text = std::fs::read_to_string(&path).map_err(|e| ModelError::io(&path, e))?;
        let config: Value = serde_json::from_str(&text).map_err(|e| bad(e.to_string()))?;
        let peft_type = config["peft_type"].as_str().unwrap_or("LORA");
        if peft_type != "LORA" {
            return Err(bad(format!(
                "peft_type {peft_type}: only LoRA adapters (peft_type LORA) load as models"
            )));
        }
        refuse_unsupported(&config).map_err(bad)?;
        let base = config["base_model_name_or_path"]
            .as_str()
            .filter(|b| !b.is_empty())
            .ok_or_else(|| {
                bad("no `base_model_name_or_path` (the model the adapter is for)".into())
            })?
            .to_string();
        let rank = config["r"]
            .as_u64()
            .filter(|&r| r >= 1)
            .ok_or_else(|| bad(format!("`r` is {}, expected an integer >= 1", config["r"])))?
            as usize;
        let alpha = config["lora_alpha"]
            .as_f64()
            .filter(|a| a.is_finite())
            .ok_or_else(|| {
                bad(format!(
                    "`lora_alpha` is {}, expected a number",
                    config["lora_alpha"]
                ))
            })?;
        let targets = match &config["target_modules"] {
            Value::Array(a) => a
                .iter()
                .filter_map(|t| t.as_str().map(String::from))
                .collect(),
            _ => Vec::new(),
        };
        Ok(PeftAdapter {
            dir: dir.to_path_buf(),
            base,
            rank,
            alpha,
            targets,
            use_rslora: config["use_rslora"].as_bool().unwrap_or(false),
            config,
        })
    }

    /// PEFT's scale of `B A`: alpha / r, or alpha / sqrt(r) with rsLoRA.
    pub fn scale(&self) -> f64 {
        if self.use_rslora {
            self.alpha / (self.rank as f64).sqrt()
        } else {
            self.alpha / self.rank as f64
        }
    }

    /// The base model's folder or GGUF file: a local path (relative to the working directory,
    /// as `from_pretrained` resolves it), else a Hub id fetched into the Hugging Face cache.
    pub fn base_dir(&self) -> Result<PathBuf> {
        let local = Path::new(&self.base);
        let resolved = if local.exists() {
            Ok(local.to_path_buf())
        } else {
            crate::hub::download(&self.base).map_err(|e| format!("{e:#}"))
        };
        let dir = resolved.map_err(|message| ModelError::Config {
            path: self.dir.join(ADAPTER_CONFIG),
            message: format!("base_model_name_or_path {}: {message}", self.base),
        })?;
        let same = |a: &Path, b: &Path| {
            std::fs::canonicalize(a)
                .ok()
                .is_some_and(|a| Some(a) == std::fs::canonicalize(b).ok())
        };
        if same(&dir, &self.dir) {
            return Err(ModelError::Config {
                path: self.dir.join(ADAPTER_CONFIG),
                message: "base_model_name_or_path names the adapter folder itself".into(),
            });
        }
        Ok(dir)
    }

    /// The adapter's tensors under our names (`<layer>.lora_A.weight`), every one checked to be
    /// a LoRA factor of rank `r`.
    pub fn tensors(&self, device: &Device) -> Result<BTreeMap<String, Tensor>> {
        let path = self.dir.join(ADAPTER_WEIGHTS);
        if !path.is_file() {
            return Err(ModelError::MissingFile {
                dir: self.dir.clone(),
                what: ADAPTER_WEIGHTS.into(),
                expected: "the adapter's weights next to adapter_config.json".into(),
            });
        }
        let bad = |message: String| ModelError::Config {
            path: path.clone(),
            message,
        };
        let loaded = candle_core::safetensors::load(&path, device)
            .map_err(|e| bad(format!("cannot read safetensors: {e}")))?;
        let mut tensors = BTreeMap::new();
        for (key, t) in loaded {
            let name = key.strip_prefix(PEFT_PREFIX).unwrap_or(&key).to_string();
            let Some((_, part)) = parse_lora_tensor_name(&name) else {
                return Err(bad(format!(
                    "tensor `{key}` is not a LoRA factor (expected {PEFT_PREFIX}<layer>.lora_A.weight \
                     or .lora_B.weight; DoRA, embedding and bias adapters are not supported)"
                )));
            };
            let rank_dim = match part {
                LoraPart::A => 0,
                LoraPart::B => 1,
            };
            if t.rank() != 2 || t.dims()[rank_dim] != self.rank {
                return Err(bad(format!(
                    "tensor `{key}` has shape {:?}, expected rank r = {} in dimension {rank_dim}",
                    t.dims(),
                    self.rank
                )));
            }
            tensors.insert(name, t);
        }
        Ok(tensors)
    }

    /// Folds the adapter into `weights` (the base's tensors by checkpoint name).
    pub fn merge_into(&self, weights: &mut HashMap<String, Tensor>, device: &Device) -> Result<()> {
        let tensors = self.tensors(device)?;
        let path = self.dir.join(ADAPTER_WEIGHTS);
        let bad = |message: String| ModelError::Config {
            path: path.clone(),
            message,
        };
        let mut merged = 0;
        for (name, a) in &tensors {
            let Some((layer, LoraPart::A)) = parse_lora_tensor_name(name) else {
                continue;
            };
            let b = tensors
                .get(&lora_tensor_name(layer, LoraPart::B))
                .ok_or_else(|| bad(format!("`{name}` has no lora_B")))?;
            let key = format!("{layer}.weight");
            let weight = weights.get(&key).ok_or_else(|| {
                bad(format!(
                    "layer `{layer}` is not a layer of the base model {}",
                    self.base
                ))
            })?;
            let (out_dim, in_dim) = (b.dims()[0], a.dims()[1]);
            if weight.dims() != [out_dim, in_dim] {
                return Err(bad(format!(
                    "`{layer}`: B A is {out_dim}x{in_dim}, the base weight {:?}",
                    weight.dims()
                )));
            }
            let w = merged_weight(weight, a, b, self.scale())?;
            weights.insert(key, w);
            merged += 1;
        }
        if merged * 2 != tensors.len() {
            return Err(bad("a lora_B without its lora_A".into()));
        }
        Ok(())
    }

    /// What identifies the adapter besides its weights: its settings, without the base's path
    /// (the caller adds the base's own identity, so a moved base keeps the digest).
    pub fn settings_identity(&self) -> String {
        let mut config = self.config.clone();
        if let Some(map) = config.as_object_mut() {
            map.remove("base_model_name_or_path");
        }
        crate::data::canonical_json(&config)
    }
}

/// The options whose arithmetic is not `W + scale * B A` on whole layers.
fn refuse_unsupported(config: &Value) -> std::result::Result<(), String> {
    let truthy = |key: &str| match &config[key] {
        Value::Null | Value::Bool(false) => false,
        Value::Object(m) => !m.is_empty(),
        Value::Array(a) => !a.is_empty(),
        Value::String(s) => !s.is_empty(),
        _ => true,
    };
    for (key, what) in [
        ("use_dora", "DoRA (use_dora)"),
        ("rank_pattern", "per-layer ranks (rank_pattern)"),
        ("alpha_pattern", "per-layer alphas (alpha_pattern)"),
        ("modules_to_save", "fully trained modules (modules_to_save)"),
        ("lora_bias", "LoRA biases (lora_bias)"),
        ("use_qalora", "QALoRA (use_qalora)"),
        ("target_parameters", "parameter targets (target_parameters)"),
    ] {
        if truthy(key) {
            return Err(format!(
                "{what} is not supported; merge the adapter with PEFT (merge_and_unload, \
                 save_pretrained) and give the merged folder"
            ));
        }
    }
    match config["bias"].as_str().unwrap_or("none") {
        "none" => Ok(()),
        other => Err(format!(
            "bias {other:?} is not supported (trained biases); expected \"none\""
        )),
    }
}
