//! The optimizer: AdamW or RMSprop over a model's trainable `Var`s, with f32 state.
//!
//! Each step is one rayon pass over each parameter's f32 slice ([`adamw_update`],
//! [`rmsprop_update`]), not a chain of candle tensor ops (DESIGN.md, "Performance notes"). A
//! parameter whose `Var` is not f32 (bf16 on GPU) gets an f32 master copy: updates accumulate in
//! the master copy and the `Var` receives the rounded result, so updates smaller than the
//! parameter dtype's resolution are not lost. For f32 `Var`s the `Var` itself is the master.
//!
//! Parameters on a GPU keep their state as f32 tensors on that device and are updated by tensor
//! ops there (the same formulas): copying every parameter to the host and back each step would
//! cost more than the update itself. [`Optimizer::with_device_updates`] forces that path on any
//! device, so the CPU tests check it against the slice passes.
//!
//! The parameters given to [`Optimizer::new`] are exactly the trainable ones; frozen tensors
//! are simply not given. Every given parameter must receive a gradient at every step.
//!
//! State for save/resume ([`Optimizer::state_tensors`]), f32 tensors named
//! `{state}.{parameter}`: `exp_avg.*` and `exp_avg_sq.*` (AdamW) or `square_avg.*` (RMSprop),
//! `master.*` for parameters with a master copy, and `step` (I64, the number of steps taken).

use std::collections::{HashMap, HashSet};
use std::path::Path;

use candle_core::backprop::GradStore;
use candle_core::{DType, Device, Tensor, Var};
use serde::{Deserialize, Serialize};

use super::adamw::{adamw_update, AdamWConfig};
use super::f32_slice::{tensor_from_f32, with_f32_slice};
use super::rmsprop::{rmsprop_update, RmsPropConfig};

/// Which update rule, with its hyperparameters.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(tag = "name", rename_all = "snake_case")]
pub enum OptimizerKind {
    #[serde(rename = "adamw")]
    AdamW(AdamWConfig),
    #[serde(rename = "rmsprop")]
    RmsProp(RmsPropConfig),
}

impl OptimizerKind {
    pub fn name(&self) -> &'static str {
        match self {
            OptimizerKind::AdamW(_) => "adamw",
            OptimizerKind::RmsProp(_) => "rmsprop",
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum OptimError {
    #[error("optimizer: parameter {name} has dtype {dtype:?}; only floating-point parameters can be trained")]
    NotFloat { name: String, dtype: DType },
    #[error("optimizer: parameter {0} is given twice")]
    DuplicateParam(String),
    #[error("optimizer: parameter {0} received no gradient (is it used by the loss? frozen parameters must not be given to the optimizer)")]
    MissingGrad(String),
    #[error("optimizer: the gradient of {name} has shape {found:?}, the parameter {expected:?}")]
    GradShape {
        name: String,
        found: Vec<usize>,
        expected: Vec<usize>,
    },
    #[error("optimizer: learning rate {0} must be finite and >= 0")]
    LearningRate(f64),
    #[error("optimizer state: {0}")]
    State(String),
    #[error("optimizer state file {path}: {source}")]
    StateFile {
        path: String,
        source: candle_core::Error,
    },
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}

/// The f32 state of one parameter.
enum Slot {
    /// Plain vectors updated by one rayon pass (CPU parameters).
    Host {
        /// The f32 master weights, for a `Var` whose dtype is not f32.
        master: Option<Vec<f32>>,
        /// AdamW's first moment; empty for RMSprop.
        exp_avg: Vec<f32>,
        /// AdamW's second moment, or RMSprop's square average.
        exp_avg_sq: Vec<f32>,
    },
    /// f32 tensors on the parameter's device, updated by tensor ops there.
    Device {
        master: Option<Tensor>,
        /// None for RMSprop.
        exp_avg: Option<Tensor>,
        exp_avg_sq: Tensor,
    },
}

impl Slot {
    fn new(kind: &OptimizerKind, var: &Var, on_device: bool) -> candle_core::Result<Slot> {
        let n = var.elem_count();
        let adam = matches!(kind, OptimizerKind::AdamW(_));
        if on_device {
            let zeros = || Tensor::zeros(var.shape(), DType::F32, var.device());
            return Ok(Slot::Device {
                master: (var.dtype() != DType::F32)
                    .then(|| var.as_tensor().to_dtype(DType::F32))
                    .transpose()?,
                exp_avg: adam.then(zeros).transpose()?,
                exp_avg_sq: zeros()?,
            });
        }
        Ok(Slot::Host {
            master: if var.dtype() == DType::F32 {
                None
            } else {
                Some(with_f32_slice(var.as_tensor(), |s| s.to_vec())?)
            },
            exp_avg: if adam { vec![0f32; n] } else { Vec::new() },
            exp_avg_sq: vec![0f32; n],
        })
    }

    /// `(key, values)` of the state, in [`Optimizer::state_tensors`]' names.
    fn host_state(
        &self,
        kind: &OptimizerKind,
    ) -> candle_core::Result<Vec<(&'static str, Vec<f32>)>> {
        let vals = |t: &Tensor| t.flatten_all()?.to_vec1::<f32>();
        let mut out = Vec::new();
        match (self, kind) {
            (
                Slot::Host {
                    exp_avg,
                    exp_avg_sq,
                    ..
                },
                OptimizerKind::AdamW(_),
            ) => {
                out.push(("exp_avg", exp_avg.clone()));
                out.push(("exp_avg_sq", exp_avg_sq.clone()));
            }
            (Slot::Host { exp_avg_sq, .. }, OptimizerKind::RmsProp(_)) => {
                out.push(("square_avg", exp_avg_sq.clone()))
            }
            (
                Slot::Device {
                    exp_avg,
                    exp_avg_sq,
                    ..
                },
                OptimizerKind::AdamW(_),
            ) => {
                if let Some(m) = exp_avg {
                    out.push(("exp_avg", vals(m)?));
                }
                out.push(("exp_avg_sq", vals(exp_avg_sq)?));
            }
            (Slot::Device { exp_avg_sq, .. }, OptimizerKind::RmsProp(_)) => {
                out.push(("square_avg", vals(exp_avg_sq)?))
            }
        }
        match self {
            Slot::Host {
                master: Some(m), ..
            } => out.push(("master", m.clone())),
            Slot::Device {
                master: Some(m), ..
            } => out.push(("master", vals(m)?)),
            _ => {}
        }
        Ok(out)
    }

    fn master_values(&self) -> candle_core::Result<Option<Vec<f32>>> {
        match self {
            Slot::Host { master, .. } => Ok(master.clone()),
            Slot::Device { master, .. } => master
                .as_ref()
                .map(|m| m.flatten_all()?.to_vec1::<f32>())
                .transpose(),
        }
    }
}

/// One AdamW step as tensor ops on f32 `p`, `m`, `v` (same formulas as [`adamw_update`]).
fn adamw_tensors(
    c: &AdamWConfig,
    step: u64,
    lr: f64,
    p: &Tensor,
    g: &Tensor,
    m: &Tensor,
    v: &Tensor,
) -> candle_core::Result<(Tensor, Tensor, Tensor)> {
    let t = step as f64;
    let bias_correction1 = 1.0 - c.beta1.powf(t);
    let bias_correction2_sqrt = (1.0 - c.beta2.powf(t)).sqrt();
    let g = g.to_dtype(DType::F32)?;
    let m = ((m * c.beta1)? + (&g * (1.0 - c.beta1))?)?;
    let v = ((v * c.beta2)? + (g.sqr()? * (1.0 - c.beta2))?)?;
    let denom = ((v.sqrt()? / bias_correction2_sqrt)? + c.eps)?;
    let p = ((p * (1.0 - lr * c.weight_decay))? - ((&m / &denom)? * (lr / bias_correction1))?)?;
    Ok((p, m, v))
}

/// One RMSprop step as tensor ops on f32 `p`, `v` (same formulas as [`rmsprop_update`]).
fn rmsprop_tensors(
    c: &RmsPropConfig,
    lr: f64,
    p: &Tensor,
    g: &Tensor,
    v: &Tensor,
) -> candle_core::Result<(Tensor, Tensor)> {
    let g = g.to_dtype(DType::F32)?;
    let g = if c.weight_decay != 0.0 {
        (g + (p * c.weight_decay)?)?
    } else {
        g
    };
    let v = ((v * c.alpha)? + (g.sqr()? * (1.0 - c.alpha))?)?;
    let p = (p - ((g * lr)? / (v.sqrt()? + c.eps)?)?)?;
    Ok((p, v))
}

/// An optimizer over named trainable parameters.
pub struct Optimizer {
    kind: OptimizerKind,
    step: u64,
    params: Vec<(String, Var)>,
    slots: Vec<Slot>,
}

impl Optimizer {
    /// State on the host for CPU parameters, on the device for the others.
    pub fn new(kind: OptimizerKind, params: Vec<(String, Var)>) -> Result<Self, OptimError> {
        Self::build(kind, params, false)
    }

    /// Every parameter's state as tensors on its device, updated by tensor ops, whatever the
    /// device (what GPU parameters get; on the CPU, for comparing the two paths).
    pub fn with_device_updates(
        kind: OptimizerKind,
        params: Vec<(String, Var)>,
    ) -> Result<Self, OptimError> {
        Self::build(kind, params, true)
    }

    fn build(
        kind: OptimizerKind,
        params: Vec<(String, Var)>,
        force_device: bool,
    ) -> Result<Self, OptimError> {
        let mut seen = HashSet::new();
        let mut slots = Vec::with_capacity(params.len());
        for (name, var) in &params {
            if !seen.insert(name.as_str()) {
                return Err(OptimError::DuplicateParam(name.clone()));
            }
            let dtype = var.dtype();
            if !dtype.is_float() {
                return Err(OptimError::NotFloat {
                    name: name.clone(),
                    dtype,
                });
            }
            slots.push(Slot::new(
                &kind,
                var,
                force_device || !var.device().is_cpu(),
            )?);
        }
        Ok(Self {
            kind,
            step: 0,
            params,
            slots,
        })
    }

    pub fn kind(&self) -> &OptimizerKind {
        &self.kind
    }

    /// The number of steps taken (AdamW's t after the last step).
    pub fn step_count(&self) -> u64 {
        self.step
    }

    /// The trainable parameters, in the order given.
    pub fn params(&self) -> &[(String, Var)] {
        &self.params
    }

    /// One update of every parameter with the gradients in `grads` and learning rate `lr`.
    /// Nothing is updated unless every parameter has a gradient of its shape.
    pub fn step(&mut self, grads: &GradStore, lr: f64) -> Result<(), OptimError> {
        if !(lr.is_finite() && lr >= 0.0) {
            return Err(OptimError::LearningRate(lr));
        }
        let mut param_grads = Vec::with_capacity(self.params.len());
        for (name, var) in &self.params {
            let grad = grads
                .get(var.as_tensor())
                .ok_or_else(|| OptimError::MissingGrad(name.clone()))?;
            if grad.dims() != var.dims() {
                return Err(OptimError::GradShape {
                    name: name.clone(),
                    found: grad.dims().to_vec(),
                    expected: var.dims().to_vec(),
                });
            }
            param_grads.push(grad);
        }
        self.step += 1;
        let (kind, step) = (self.kind, self.step);
        for (((_, var), slot), grad) in self.params.iter().zip(&mut self.slots).zip(param_grads) {
            match slot {
                Slot::Host {
                    master,
                    exp_avg,
                    exp_avg_sq,
                } => {
                    let mut update = |p: &mut [f32]| {
                        with_f32_slice(grad, |g| match &kind {
                            OptimizerKind::AdamW(c) => {
                                adamw_update(c, step, lr, p, g, exp_avg, exp_avg_sq)
                            }
                            OptimizerKind::RmsProp(c) => rmsprop_update(c, lr, p, g, exp_avg_sq),
                        })
                    };
                    // Update the master copy, or a copy of the f32 Var's values.
                    let updated = match master {
                        Some(master) => {
                            update(master)?;
                            master.clone()
                        }
                        None => {
                            let mut own = with_f32_slice(var.as_tensor(), |s| s.to_vec())?;
                            update(&mut own)?;
                            own
                        }
                    };
                    var.set(&tensor_from_f32(
                        updated,
                        var.shape(),
                        var.dtype(),
                        var.device(),
                    )?)?;
                }
                Slot::Device {
                    master,
                    exp_avg,
                    exp_avg_sq,
                } => {
                    let p = match master {
                        Some(m) => m.clone(),
                        None => var.as_tensor().to_dtype(DType::F32)?,
                    };
                    let p = match (&kind, exp_avg.as_mut()) {
                        (OptimizerKind::AdamW(c), Some(m)) => {
                            let (p, m1, v1) = adamw_tensors(c, step, lr, &p, grad, m, exp_avg_sq)?;
                            *m = m1;
                            *exp_avg_sq = v1;
                            p
                        }
                        (OptimizerKind::RmsProp(c), _) => {
                            let (p, v1) = rmsprop_tensors(c, lr, &p, grad, exp_avg_sq)?;
                            *exp_avg_sq = v1;
                            p
                        }
                        (OptimizerKind::AdamW(_), None) => {
                            return Err(OptimError::State("AdamW slot without exp_avg".into()))
                        }
                    };
                    var.set(&p.to_dtype(var.dtype())?)?;
                    if let Some(m) = master {
                        *m = p;
                    }
                }
            }
        }
        Ok(())
    }

    /// The optimizer state as named f32 CPU tensors (plus the I64 `step`), for
    /// `candle_core::safetensors::save`.
    pub fn state_tensors(&self) -> Result<HashMap<String, Tensor>, OptimError> {
        let cpu = Device::Cpu;
        let mut state = HashMap::new();
        state.insert("step".to_string(), Tensor::new(&[self.step as i64], &cpu)?);
        for ((name, var), slot) in self.params.iter().zip(&self.slots) {
            for (key, values) in slot.host_state(&self.kind)? {
                let t = Tensor::from_vec(values, var.shape(), &cpu)?;
                state.insert(format!("{key}.{name}"), t);
            }
        }
        Ok(state)
    }

    /// Restores the state written by [`Optimizer::state_tensors`]. The state must name exactly
    /// this optimizer's parameters, with their shapes, for this optimizer's kind; a parameter with
    /// a master copy also gets its `Var` set from the restored master.
    pub fn load_state(&mut self, state: &HashMap<String, Tensor>) -> Result<(), OptimError> {
        let step = match state.get("step") {
            Some(t) => t
                .flatten_all()?
                .to_dtype(DType::I64)?
                .to_vec1::<i64>()?
                .first()
                .copied()
                .filter(|s| *s >= 0)
                .ok_or_else(|| OptimError::State("`step` is not a non-negative count".into()))?,
            None => return Err(OptimError::State("missing tensor step".into())),
        };
        let mut used = HashSet::from(["step".to_string()]);
        let mut take = |key: String, shape: &[usize]| -> Result<Vec<f32>, OptimError> {
            let t = state
                .get(&key)
                .ok_or_else(|| OptimError::State(format!("missing tensor {key}")))?;
            if t.dims() != shape {
                return Err(OptimError::State(format!(
                    "{key} has shape {:?}, the parameter {shape:?}",
                    t.dims()
                )));
            }
            used.insert(key);
            Ok(t.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?)
        };
        let mut slots = Vec::with_capacity(self.params.len());
        for ((name, var), old) in self.params.iter().zip(&self.slots) {
            let dims = var.dims();
            let (exp_avg, exp_avg_sq) = match self.kind {
                OptimizerKind::AdamW(_) => (
                    take(format!("exp_avg.{name}"), dims)?,
                    take(format!("exp_avg_sq.{name}"), dims)?,
                ),
                OptimizerKind::RmsProp(_) => {
                    (Vec::new(), take(format!("square_avg.{name}"), dims)?)
                }
            };
            let master = if var.dtype() == DType::F32 {
                None
            } else {
                Some(take(format!("master.{name}"), dims)?)
            };
            slots.push(match old {
                Slot::Host { .. } => Slot::Host {
                    master,
                    exp_avg,
                    exp_avg_sq,
                },
                Slot::Device { .. } => {
                    let dev = var.device();
                    let put = |v: Vec<f32>| Tensor::from_vec(v, var.shape(), dev);
                    Slot::Device {
                        master: master.map(put).transpose()?,
                        exp_avg: match self.kind {
                            OptimizerKind::AdamW(_) => Some(put(exp_avg)?),
                            OptimizerKind::RmsProp(_) => None,
                        },
                        exp_avg_sq: put(exp_avg_sq)?,
                    }
                }
            });
        }
        let mut unused: Vec<&String> = state.keys().filter(|k| !used.contains(*k)).collect();
        if !unused.is_empty() {
            unused.sort();
            return Err(OptimError::State(format!(
                "tensors {unused:?} belong to no parameter of this {} optimizer (a master copy is kept only for non-f32 parameters)",
                self.kind.name()
            )));
        }
        for ((_, var), slot) in self.params.iter().zip(&slots) {
            if let Some(master) = slot.master_values()? {
                var.set(&tensor_from_f32(
                    master,
                    var.shape(),
                    var.dtype(),
                    var.device(),
                )?)?;
            }
        }
        self.step = step as u64;
        self.slots = slots;
        Ok(())
    }

    /// Writes [`Optimizer::state_tensors`] to a safetensors file.
    pub fn save(&self, path: impl AsRef<Path>) -> Result<(), OptimError> {
        let path = path.as_ref();
        candle_core::safetensors::save(&self.state_tensors()?, path).map_err(|source| {
            OptimError::StateFile {
                path: path.display().to_string(),
                source,
            }
        })
    }

    /// Restores the state from a file written by [`Optimizer::save`].
    pub fn load(&mut self, path: impl AsRef<Path>) -> Result<(), OptimError> {
        let path = path.as_ref();
        let state = candle_core::safetensors::load(path, &Device::Cpu).map_err(|source| {
            OptimError::StateFile {
                path: path.display().to_string(),
                source,
            }
        })?;
        self.load_state(&state)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn var(values: &[f32], dtype: DType) -> Var {
        let t = Tensor::from_slice(values, values.len(), &Device::Cpu)
            .and_then(|t| t.to_dtype(dtype))
            .unwrap();
        Var::from_tensor(&t).unwrap()
    }

    /// Gradients of `sum_k sum(p_k * c_k)`, i.e. exactly `c_k` for parameter k.
    fn grads_equal_to(params: &[(String, Var)], consts: &[&[f32]]) -> GradStore {
        let mut loss: Option<Tensor> = None;
        for ((_, p), c) in params.iter().zip(consts) {
            let c = Tensor::from_slice(c, c.len(), &Device::Cpu)
                .and_then(|t| t.to_dtype(p.dtype()))
                .unwrap();
            let term = p
                .as_tensor()
                .mul(&c)
                .and_then(|t| t.to_dtype(DType::F32))
                .and_then(|t| t.sum_all())
                .unwrap();
            loss = Some(match loss {
                Some(l) => (l + term).unwrap(),
                None => term,
            });
        }
        loss.unwrap().backward().unwrap()
    }

    fn values(v: &Var) -> Vec<f32> {
        v.as_tensor()
            .to_dtype(DType::F32)
            .and_then(|t| t.to_vec1())
            .unwrap()
    }

    #[test]
    fn adamw_step_updates_the_var() {
        let w = var(&[1.0, -2.0], DType::F32);
        let params = vec![("w".to_string(), w.clone())];
        let mut opt = Optimizer::new(OptimizerKind::AdamW(AdamWConfig::default()), params).unwrap();
        let grads = grads_equal_to(opt.params(), &[&[0.5, -0.25]]);
        opt.step(&grads, 1e-2).unwrap();
        // t = 1: p <- p (1 - lr wd) - lr g / (|g| + eps).
        let got = values(&w);
        let expected = [
            1.0 * (1.0 - 1e-4) - 1e-2 * 0.5 / (0.5 + 1e-8),
            -2.0 * (1.0 - 1e-4) + 1e-2 * 0.25 / (0.25 + 1e-8),
        ];
        for i in 0..2 {
            assert!(
                (got[i] as f64 - expected[i]).abs() < 1e-6,
                "{got:?} vs {expected:?}"
            );
        }
        assert_eq!(opt.step_count(), 1);
    }

    #[test]
    fn rmsprop_steps_update_the_var() {
        let w = var(&[0.5, 0.5, 0.5], DType::F32);
        let mut opt = Optimizer::new(
            OptimizerKind::RmsProp(RmsPropConfig::default()),
            vec![("w".to_string(), w.clone())],
        )
        .unwrap();
        let gs: [[f32; 3]; 3] = [[1.0, -1.0, 0.1], [1.0, 0.5, 0.1], [1.0, 0.5, -0.2]];
        let (mut p, mut v) = ([0.5f64; 3], [0f64; 3]);
        for g in &gs {
            let grads = grads_equal_to(opt.params(), &[g]);
            opt.step(&grads, 1e-3).unwrap();
            for i in 0..3 {
                let g = g[i] as f64;
                v[i] = 0.99 * v[i] + 0.01 * g * g;
                p[i] -= 1e-3 * g / (v[i].sqrt() + 1e-8);
            }
        }
        let got = values(&w);
        for i in 0..3 {
            assert!((got[i] as f64 - p[i]).abs() < 1e-6, "{got:?} vs {p:?}");
        }
    }

    /// 30 AdamW steps of about 1e-4 each on a bf16 weight of 1.0: in bf16 each step would round
    /// back to 1.0 (the spacing below 1.0 is 2^-8), but the f32 master copy accumulates them.
    #[test]
    fn bf16_vars_keep_f32_master_weights() {
        let w = var(&[1.0, 1.0], DType::BF16);
        let config = AdamWConfig {
            weight_decay: 0.0,
            ..Default::default()
        };
        let mut opt = Optimizer::new(
            OptimizerKind::AdamW(config),
            vec![("w".to_string(), w.clone())],
        )
        .unwrap();
        for step in 1..=30 {
            let grads = grads_equal_to(opt.params(), &[&[0.5, 0.5]]);
            assert_eq!(grads.get(w.as_tensor()).unwrap().dtype(), DType::BF16);
            opt.step(&grads, 1e-4).unwrap();
            if step == 1 {
                // Too small for bf16: the Var is unchanged after one step.
                assert_eq!(values(&w), vec![1.0, 1.0]);
            }
        }
        assert_eq!(w.dtype(), DType::BF16);
        let state = opt.state_tensors().unwrap();
        let master: Vec<f32> = state["master.w"].to_vec1().unwrap();
        // A constant gradient makes every AdamW step lr * g / (|g| + eps) = lr.
        for m in &master {
            assert!((m - (1.0 - 30.0 * 1e-4)).abs() < 1e-5, "{master:?}");
        }
        // The Var holds the master rounded to bf16: 0.997 -> 0.99609375.
        assert_eq!(values(&w), vec![0.996_093_75, 0.996_093_75]);
    }

    #[test]
    fn state_round_trip_continues_identically() {
        let dir = std::env::temp_dir().join(format!("rspo-optim-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let schedule: Vec<[f32; 4]> = (0..5)
            .map(|k| {
                let k = k as f32;
                [0.3 - k * 0.1, 0.2 * k, -1.0, 0.05 * k * k]
            })
            .collect();
        for kind in [
            OptimizerKind::AdamW(AdamWConfig::default()),
            OptimizerKind::RmsProp(RmsPropConfig::default()),
        ] {
            for dtype in [DType::F32, DType::BF16] {
                let make = |init: &[f32]| {
                    let a = var(&init[..2], dtype);
                    let b = var(&init[2..], DType::F32);
                    Optimizer::new(kind, vec![("a".to_string(), a), ("b.w".to_string(), b)])
                        .unwrap()
                };
                let step = |opt: &mut Optimizer, g: &[f32; 4]| {
                    let grads = grads_equal_to(opt.params(), &[&g[..2], &g[2..]]);
                    opt.step(&grads, 1e-2).unwrap();
                };
                let mut original = make(&[1.0, 2.0, 3.0, 4.0]);
                for g in &schedule[..3] {
                    step(&mut original, g);
                }
                let path = dir.join(format!("{}-{dtype:?}.safetensors", kind.name()));
                original.save(&path).unwrap();
                // Resume: the model's saved weights, a fresh optimizer, the saved state.
                let saved: Vec<f32> = original
                    .params()
                    .iter()
                    .flat_map(|(_, v)| values(v))
                    .collect();
                let mut resumed = make(&saved);
                resumed.load(&path).unwrap();
                assert_eq!(resumed.step_count(), 3);
                for g in &schedule[3..] {
                    step(&mut original, g);
                    step(&mut resumed, g);
                }
                for ((name, a), (_, b)) in original.params().iter().zip(resumed.params()) {
                    assert_eq!(values(a), values(b), "{} {dtype:?} {name}", kind.name());
                }
                let (sa, sb) = (
                    original.state_tensors().unwrap(),
                    resumed.state_tensors().unwrap(),
                );
                assert_eq!(sa.len(), sb.len());
                for (key, ta) in &sa {
                    let ta = ta.flatten_all().unwrap().to_dtype(DType::F64).unwrap();
                    let tb = sb[key].flatten_all().unwrap().to_dtype(DType::F64).unwrap();
                    assert_eq!(
                        ta.to_vec1::<f64>().unwrap(),
                        tb.to_vec1::<f64>().unwrap(),
                        "{key}"
                    );
                }
                // State of the other kind, or of other parameters, is rejected.
                let other = match kind {
                    OptimizerKind::AdamW(_) => OptimizerKind::RmsProp(RmsPropConfig::default()),
                    OptimizerKind::RmsProp(_) => OptimizerKind::AdamW(AdamWConfig::default()),
                };
                let mut wrong = Optimizer::new(other, resumed.params().to_vec()).unwrap();
                assert!(matches!(wrong.load(&path), Err(OptimError::State(_))));
                let mut fewer = Optimizer::new(kind, resumed.params()[..1].to_vec()).unwrap();
                let err = fewer.load(&path).unwrap_err();
                assert!(err.to_string().contains("b.w"), "{err}");
            }
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// The tensor-op path (what GPU parameters take) against the slice passes: same values and
    /// state after several steps, up to f32 rounding, for both rules and both parameter dtypes,
    /// and the saved state of one path resumes the other.
    #[test]
    fn device_updates_match_the_slice_passes() {
        let grads_seq: Vec<[f32; 4]> = vec![
            [0.3, -0.2, 1.5, 0.0],
            [-0.1, -0.4, 0.7, 2.0],
            [0.25, 0.1, -1.0, 0.5],
        ];
        let kinds = [
            OptimizerKind::AdamW(AdamWConfig::default()),
            OptimizerKind::RmsProp(RmsPropConfig {
                weight_decay: 0.01,
                ..RmsPropConfig::default()
            }),
        ];
        for kind in kinds {
            for dtype in [DType::F32, DType::BF16] {
                let init = [1.0f32, -2.0, 0.5, 0.125];
                let host_var = var(&init, dtype);
                let dev_var = var(&init, dtype);
                let mut host =
                    Optimizer::new(kind, vec![("w".to_string(), host_var.clone())]).unwrap();
                let mut dev =
                    Optimizer::with_device_updates(kind, vec![("w".to_string(), dev_var.clone())])
                        .unwrap();
                for g in &grads_seq {
                    host.step(&grads_equal_to(host.params(), &[g]), 1e-2)
                        .unwrap();
                    dev.step(&grads_equal_to(dev.params(), &[g]), 1e-2).unwrap();
                }
                let label = format!("{} {dtype:?}", kind.name());
                let (a, b) = (host.state_tensors().unwrap(), dev.state_tensors().unwrap());
                let mut keys: Vec<_> = a.keys().collect();
                keys.sort();
                let mut keys_b: Vec<_> = b.keys().collect();
                keys_b.sort();
                assert_eq!(keys, keys_b, "{label}");
                for k in keys.iter().filter(|k| k.as_str() != "step") {
                    let x: Vec<f32> = a[*k].to_vec1().unwrap();
                    let y: Vec<f32> = b[*k].to_vec1().unwrap();
                    for (x, y) in x.iter().zip(&y) {
                        assert!(
                            (x - y).abs() <= 1e-6 * (1.0 + x.abs()),
                            "{label} {k}: {x} vs {y}"
                        );
                    }
                }
                let (x, y) = (values(&host_var), values(&dev_var));
                for (x, y) in x.iter().zip(&y) {
                    // bf16 Vars hold the rounded master: equal masters round alike except at a
                    // rounding boundary, one bf16 ulp.
                    let tol = if dtype == DType::BF16 {
                        2f32.powi(-7) * x.abs()
                    } else {
                        1e-6
                    };
                    assert!((x - y).abs() <= tol, "{label}: {x} vs {y}");
                }
                // The device path's state resumes the host path and the other way round.
                let mut host2 =
                    Optimizer::new(kind, vec![("w".to_string(), var(&init, dtype))]).unwrap();
                host2.load_state(&b).unwrap();
                let mut dev2 = Optimizer::with_device_updates(
                    kind,
                    vec![("w".to_string(), var(&init, dtype))],
                )
                .unwrap();
                dev2.load_state(&a).unwrap();
                assert_eq!(host2.step_count(), 3);
                assert_eq!(dev2.step_count(), 3);
            }
        }
    }

    #[test]
    fn a_parameter_without_gradient_is_named() {
        let used = var(&[1.0], DType::F32);
        let unused = var(&[2.0], DType::F32);
        let mut opt = Optimizer::new(
            OptimizerKind::AdamW(AdamWConfig::default()),
            vec![
                ("used".to_string(), used.clone()),
                ("layers.1.unused".to_string(), unused.clone()),
            ],
        )
        .unwrap();
        let grads = (used.as_tensor() * 3.0)
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
        let err = opt.step(&grads, 1e-3).unwrap_err();
        assert!(
            matches!(&err, OptimError::MissingGrad(n) if n == "layers.1.unused"),
            "{err}"
        );
        // Nothing was updated.
        assert_eq!(values(&used), vec![1.0]);
        assert_eq!(opt.step_count(), 0);
        assert!(matches!(
            opt.step(&grads, f64::NAN),
            Err(OptimError::LearningRate(_))
        ));
        assert!(matches!(
            Optimizer::new(
                OptimizerKind::AdamW(AdamWConfig::default()),
                vec![("x".to_string(), used.clone()), ("x".to_string(), unused)],
            ),
            Err(OptimError::DuplicateParam(_))
        ));
    }
}
