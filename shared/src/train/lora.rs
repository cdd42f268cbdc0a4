//! LoRA (Hu et al. 2021) as PEFT does it: `W x + (alpha / r) B A x` on the named linear layers,
//! the base frozen, `A` (r, in) from PEFT's seeded Kaiming-uniform (`kaiming_uniform_(a=sqrt(5))`,
//! i.e. U(-1/sqrt(in), 1/sqrt(in))), `B` (out, r) zero, so training starts at the base model.
//!
//! Saved in PEFT's layout: `adapter_model.safetensors` with keys
//! `base_model.model.<layer>.lora_A.weight` / `lora_B.weight` and `adapter_config.json`, which
//! `peft.PeftModel.from_pretrained` loads; [`merged_weight`] folds an adapter into its layer.

use std::collections::BTreeMap;
use std::path::Path;

use candle_core::{DType, Device, Tensor, Var};
use serde::{Deserialize, Serialize};

use super::rng::SplitMix64;
use crate::model::{LoraAdapter, ModelError, PeftAdapter, Transformer};

/// The linear layers LoRA can adapt.
pub const LORA_TARGETS: [&str; 7] = [
    "q_proj",
    "k_proj",
    "v_proj",
    "o_proj",
    "gate_proj",
    "up_proj",
    "down_proj",
];

pub use crate::model::peft::{
    lora_tensor_name, merged_weight, parse_lora_tensor_name, LoraPart, ADAPTER_CONFIG,
    ADAPTER_WEIGHTS, PEFT_PREFIX,
};

/// The adapter settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LoraSpec {
    pub rank: usize,
    pub alpha: f64,
    /// Layer suffixes, e.g. `q_proj`.
    pub targets: Vec<String>,
}

impl LoraSpec {
    /// PEFT's scale, alpha / r (not rsLoRA's alpha / sqrt(r)).
    pub fn scale(&self) -> f64 {
        self.alpha / self.rank as f64
    }
}

#[derive(Debug, thiserror::Error)]
pub enum LoraError {
    #[error("--lora-rank must be at least 1")]
    Rank,
    #[error("--lora-alpha {0} must be finite and > 0")]
    Alpha(f64),
    #[error("--lora-targets: unknown layer `{0}` (expected some of q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj, down_proj)")]
    UnknownTarget(String),
    #[error("--lora-targets: no target layer given")]
    NoTargets,
    #[error("{path}: {message}")]
    File { path: String, message: String },
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
    #[error(transparent)]
    Model(#[from] ModelError),
}

impl LoraSpec {
    pub fn validate(&self) -> Result<(), LoraError> {
        if self.rank == 0 {
            return Err(LoraError::Rank);
        }
        if !(self.alpha.is_finite() && self.alpha > 0.0) {
            return Err(LoraError::Alpha(self.alpha));
        }
        if self.targets.is_empty() {
            return Err(LoraError::NoTargets);
        }
        for t in &self.targets {
            if !LORA_TARGETS.contains(&t.as_str()) {
                return Err(LoraError::UnknownTarget(t.clone()));
            }
        }
        Ok(())
    }
}

/// PEFT's initial `A` for a layer with `in_dim` inputs: U(-1/sqrt(in), 1/sqrt(in)) from a
/// stream seeded by (seed, layer name), so a layer's draw does not depend on the others.
pub fn init_lora_a(
    layer: &str,
    rank: usize,
    in_dim: usize,
    seed: u64,
    dtype: DType,
    device: &Device,
) -> candle_core::Result<Tensor> {
    let mut rng = SplitMix64::new("lora_A", &[&seed.to_le_bytes(), layer.as_bytes()]);
    let bound = 1.0 / (in_dim as f32).sqrt();
    let values: Vec<f32> = (0..rank * in_dim)
        .map(|_| (2.0 * rng.unit_f32() - 1.0) * bound)
        .collect();
    Tensor::from_vec(values, (rank, in_dim), device)?.to_dtype(dtype)
}

/// Adds adapters to the targeted layers of `model` and returns the trainable `Var`s named
/// `<layer>.lora_A.weight` and `<layer>.lora_B.weight`, in layer order.
pub fn attach(
    model: &mut Transformer,
    spec: &LoraSpec,
    seed: u64,
) -> Result<Vec<(String, Var)>, LoraError> {
    let dtype = model.dtype();
    attach_with_dtype(model, spec, seed, dtype)
}

/// [`attach`] with the adapters in `dtype`, which may differ from the model's (f32 adapters on
/// a bf16 base: the caller casts them for the forward pass).
pub fn attach_with_dtype(
    model: &mut Transformer,
    spec: &LoraSpec,
    seed: u64,
    dtype: DType,
) -> Result<Vec<(String, Var)>, LoraError> {
    spec.validate()?;
    let device = model.device().clone();
    let mut params = Vec::new();
    for (name, linear) in model.linear_layers_mut(&spec.targets) {
        let (out_dim, in_dim) = linear.weight.dims2()?;
        let a = Var::from_tensor(&init_lora_a(
            &name, spec.rank, in_dim, seed, dtype, &device,
        )?)?;
        let b = Var::zeros((out_dim, spec.rank), dtype, &device)?;
        linear.lora = Some(LoraAdapter {
            a: a.as_tensor().clone(),
            b: b.as_tensor().clone(),
            scale: spec.scale(),
        });
        params.push((lora_tensor_name(&name, LoraPart::A), a));
        params.push((lora_tensor_name(&name, LoraPart::B), b));
    }
    if params.is_empty() {
        return Err(LoraError::NoTargets);
    }
    Ok(params)
}

/// The checkpoint's tensors with every adapter of `params` (named as [`attach`] names them)
/// folded into its base layer.
pub fn merged_tensors(
    model: &Transformer,
    params: &[(String, Var)],
    spec: &LoraSpec,
) -> Result<BTreeMap<String, Tensor>, LoraError> {
    let mut tensors: BTreeMap<String, Tensor> = model.named_tensors().into_iter().collect();
    let by_name: BTreeMap<&str, &Var> = params.iter().map(|(n, v)| (n.as_str(), v)).collect();
    for (name, a) in &by_name {
        let Some((layer, LoraPart::A)) = parse_lora_tensor_name(name) else {
            continue;
        };
        let b = by_name
            .get(lora_tensor_name(layer, LoraPart::B).as_str())
            .ok_or_else(|| LoraError::File {
                path: layer.to_string(),
                message: "lora_A without lora_B".into(),
            })?;
        let key = format!("{layer}.weight");
        let weight = tensors.get(&key).ok_or_else(|| LoraError::File {
            path: key.clone(),
            message: "no base weight for this adapter".into(),
        })?;
        let merged = merged_weight(weight, a.as_tensor(), b.as_tensor(), spec.scale())?;
        tensors.insert(key, merged);
    }
    Ok(tensors)
}

/// The adapter tensors under PEFT's names.
pub fn peft_tensors(params: &[(String, Var)]) -> BTreeMap<String, Tensor> {
    params
        .iter()
        .map(|(n, v)| (format!("{PEFT_PREFIX}{n}"), v.as_tensor().clone()))
        .collect()
}

/// `adapter_config.json` as PEFT writes it for a LoRA adapter on a causal LM.
pub fn adapter_config(spec: &LoraSpec, base_model: &Path) -> serde_json::Value {
    serde_json::json!({
        "alpha_pattern": {},
        "auto_mapping": null,
        "base_model_name_or_path": base_model.display().to_string(),
        "bias": "none",
        "fan_in_fan_out": false,
        "inference_mode": true,
        "init_lora_weights": true,
        "layers_pattern": null,
        "layers_to_transform": null,
        "lora_alpha": spec.alpha,
        "lora_dropout": 0.0,
        "modules_to_save": null,
        "peft_type": "LORA",
        "r": spec.rank,
        "rank_pattern": {},
        "revision": null,
        "target_modules": spec.targets,
        "task_type": "CAUSAL_LM",
        "use_dora": false,
        "use_rslora": false
    })
}

/// Reads a PEFT adapter directory: its settings and its tensors under our names
/// (`<layer>.lora_A.weight`), for loading an adapter back.
pub fn read_adapter(
    dir: &Path,
    device: &Device,
) -> Result<(LoraSpec, BTreeMap<String, Tensor>), LoraError> {
    let adapter = PeftAdapter::open(dir)?;
    let tensors = adapter.tensors(device)?;
    let spec = LoraSpec {
        rank: adapter.rank,
        alpha: adapter.alpha,
        targets: adapter.targets,
    };
    Ok((spec, tensors))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kaiming_uniform_bound_and_seeding() {
        let a = init_lora_a(
            "model.layers.0.self_attn.q_proj",
            4,
            64,
            0,
            DType::F32,
            &Device::Cpu,
        )
        .unwrap();
        let v: Vec<f32> = a.flatten_all().unwrap().to_vec1().unwrap();
        let bound = 1.0 / 8.0;
        assert!(v.iter().all(|x| x.abs() <= bound));
        // Spread over the whole interval: the variance of U(-b, b) is b^2 / 3.
        let var = v.iter().map(|x| x * x).sum::<f32>() / v.len() as f32;
        assert!((var / (bound * bound / 3.0) - 1.0).abs() < 0.2, "{var}");
        let again = init_lora_a(
            "model.layers.0.self_attn.q_proj",
            4,
            64,
            0,
            DType::F32,
            &Device::Cpu,
        )
        .unwrap();
        assert_eq!(v, again.flatten_all().unwrap().to_vec1::<f32>().unwrap());
        let other = init_lora_a(
            "model.layers.1.self_attn.q_proj",
            4,
            64,
            0,
            DType::F32,
            &Device::Cpu,
        )
        .unwrap();
        assert_ne!(v, other.flatten_all().unwrap().to_vec1::<f32>().unwrap());
    }

    #[test]
    fn specs_are_checked() {
        let spec = |rank, alpha, targets: &[&str]| LoraSpec {
            rank,
            alpha,
            targets: targets.iter().map(|s| s.to_string()).collect(),
        };
        assert!(spec(8, 16.0, &["q_proj", "v_proj"]).validate().is_ok());
        assert!(matches!(
            spec(0, 16.0, &["q_proj"]).validate(),
            Err(LoraError::Rank)
        ));
        assert!(matches!(
            spec(8, 0.0, &["q_proj"]).validate(),
            Err(LoraError::Alpha(_))
        ));
        assert!(matches!(
            spec(8, 16.0, &[]).validate(),
            Err(LoraError::NoTargets)
        ));
        assert!(matches!(
            spec(8, 16.0, &["qproj"]).validate(),
            Err(LoraError::UnknownTarget(_))
        ));
        assert_eq!(spec(8, 16.0, &["q_proj"]).scale(), 2.0);
    }

    #[test]
    fn merging_adds_the_scaled_product() {
        let dev = Device::Cpu;
        let w = Tensor::new(&[[1f32, 2.0], [3.0, 4.0], [5.0, 6.0]], &dev).unwrap();
        let a = Tensor::new(&[[1f32, -1.0]], &dev).unwrap();
        let b = Tensor::new(&[[0.5f32], [0.0], [-1.0]], &dev).unwrap();
        let m: Vec<Vec<f32>> = merged_weight(&w, &a, &b, 2.0).unwrap().to_vec2().unwrap();
        assert_eq!(m, vec![vec![2.0, 1.0], vec![3.0, 4.0], vec![3.0, 8.0]]);
    }
}
