//! The model being trained: a transformer with its trainable parameters.
//!
//! [`TrainableModel::full`] wraps every tensor the transformer uses in a `Var`;
//! [`TrainableModel::lora`] keeps the base as plain tensors (candle then records no graph for
//! them) and trains only the adapters. Writing the result as a Hugging Face directory is
//! `model_writer`'s job.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;

use candle_core::{DType, Tensor, Var};

use super::lora::{self, LoraError, LoraSpec};
use crate::model::{ModelConfig, ModelError, Transformer, Weights};

#[derive(Debug, thiserror::Error)]
pub enum TrainableModelError {
    #[error(transparent)]
    Model(#[from] ModelError),
    #[error(transparent)]
    Lora(#[from] LoraError),
    #[error("saved training state: {0}")]
    State(String),
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
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
    pub fn full(config: ModelConfig, weights: &Weights) -> Result<Self, TrainableModelError> {
        let compute = weights_dtype(weights);
        Self::full_mixed(config, weights, compute)
    }

    /// Every weight trainable: the parameters in the weights' dtype (load them in f32 for f32
    /// master weights), the passes in `compute`.
    pub fn full_mixed(
        config: ModelConfig,
        weights: &Weights,
        compute: DType,
    ) -> Result<Self, TrainableModelError> {
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
    ) -> Result<Self, TrainableModelError> {
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
    ) -> Result<Self, TrainableModelError> {
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
    pub fn forward_model(&self) -> Result<Transformer, TrainableModelError> {
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
                    let get = |part| -> Result<Tensor, TrainableModelError> {
                        let key = lora::lora_tensor_name(&name, part);
                        let var = by_name.get(key.as_str()).ok_or_else(|| {
                            TrainableModelError::State(format!("no adapter parameter {key}"))
                        })?;
                        Ok(var.as_tensor().to_dtype(self.compute)?)
                    };
                    let (a, b) = (get(lora::LoraPart::A)?, get(lora::LoraPart::B)?);
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
    pub fn checkpoint_tensors(&self) -> Result<BTreeMap<String, Tensor>, TrainableModelError> {
        match &self.lora {
            // Written in the compute dtype, as a bf16 run's checkpoint is bf16.
            None => self
                .model
                .named_tensors()
                .into_iter()
                .map(|(n, t)| Ok((n, t.to_dtype(self.compute)?)))
                .collect::<Result<_, TrainableModelError>>(),
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
    pub fn set_params(&self, tensors: &HashMap<String, Tensor>) -> Result<(), TrainableModelError> {
        if tensors.len() != self.params.len() {
            return Err(TrainableModelError::State(format!(
                "{} tensors for {} parameters",
                tensors.len(),
                self.params.len()
            )));
        }
        for (name, var) in &self.params {
            let t = tensors
                .get(name)
                .ok_or_else(|| TrainableModelError::State(format!("no tensor for {name}")))?;
            if t.dims() != var.dims() {
                return Err(TrainableModelError::State(format!(
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
