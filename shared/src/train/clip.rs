//! Global gradient-norm clipping, as `torch.nn.utils.clip_grad_norm_`.
//!
//! The global norm is the 2-norm of all gradients taken together (accumulated in f64). When
//! `coef = max_norm / (total_norm + 1e-6)` is below 1 every gradient is multiplied by `coef`.
//! A NaN or infinite norm is an error, raised before any gradient is changed.

use candle_core::backprop::GradStore;
use candle_core::{DType, Device, Tensor, Var};
use rayon::prelude::*;

use super::f32_slice::{tensor_from_f32, with_f32_slice, CHUNK};

#[derive(Debug, thiserror::Error)]
pub enum ClipError {
    #[error("gradient norm is {norm} (first non-finite gradient: {param})")]
    NonFinite { norm: f64, param: String },
    #[error("max gradient norm {0} must be finite and > 0")]
    MaxNorm(f64),
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}

/// Chunks are summed in parallel, the partial sums in chunk order: rayon's own `sum` combines
/// them in an order that depends on work stealing, which moved the norm's last bits run to run.
fn sum_of_squares(values: &[f32]) -> f64 {
    let partials: Vec<f64> = values
        .par_chunks(CHUNK)
        .map(|c| c.iter().map(|&x| x as f64 * x as f64).sum::<f64>())
        .collect();
    partials.iter().sum()
}

/// The global 2-norm of the gradients of `params`; parameters without a gradient are skipped
/// (as PyTorch skips `grad is None`). A NaN or infinite norm is an error naming the first
/// parameter whose gradient is not finite.
pub fn grad_norm(grads: &GradStore, params: &[(String, Var)]) -> Result<f64, ClipError> {
    let on_device = params.iter().any(|(_, v)| !v.as_tensor().device().is_cpu());
    if on_device {
        return grad_norm_tensor_ops(grads, params);
    }
    let mut total = 0f64;
    let mut first_bad = None;
    for (name, var) in params {
        if let Some(grad) = grads.get(var.as_tensor()) {
            let sq = with_f32_slice(grad, sum_of_squares)?;
            if !sq.is_finite() && first_bad.is_none() {
                first_bad = Some(name.clone());
            }
            total += sq;
        }
    }
    finish_norm(total, first_bad)
}

fn finish_norm(total: f64, first_bad: Option<String>) -> Result<f64, ClipError> {
    let norm = total.sqrt();
    match first_bad {
        None if norm.is_finite() => Ok(norm),
        // Squares of finite values can overflow only past f64's range: name no parameter.
        first_bad => Err(ClipError::NonFinite {
            norm,
            param: first_bad.unwrap_or_else(|| "none, the sum overflowed".to_string()),
        }),
    }
}

/// [`grad_norm`] for gradients on a GPU: the squares are summed there (f32 per parameter, the
/// total in f64) and only one number per parameter comes back, instead of every gradient.
pub(crate) fn grad_norm_tensor_ops(
    grads: &GradStore,
    params: &[(String, Var)],
) -> Result<f64, ClipError> {
    let mut sums = Vec::new();
    let mut names = Vec::new();
    for (name, var) in params {
        if let Some(grad) = grads.get(var.as_tensor()) {
            let sq = grad.to_dtype(DType::F32)?.sqr()?.sum_all()?;
            sums.push(sq.to_dtype(DType::F64)?.reshape(1)?);
            names.push(name);
        }
    }
    if sums.is_empty() {
        return Ok(0.0);
    }
    let per_param = Tensor::cat(&sums, 0)?
        .to_device(&Device::Cpu)?
        .to_vec1::<f64>()?;
    let first_bad = per_param
        .iter()
        .zip(&names)
        .find(|(s, _)| !s.is_finite())
        .map(|(_, n)| n.to_string());
    finish_norm(per_param.iter().sum(), first_bad)
}

/// Clips the gradients of `params` in `grads` to a global norm of at most `max_norm` and returns
/// the norm before clipping.
pub fn clip_grad_norm(
    grads: &mut GradStore,
    params: &[(String, Var)],
    max_norm: f64,
) -> Result<f64, ClipError> {
    if !(max_norm.is_finite() && max_norm > 0.0) {
        return Err(ClipError::MaxNorm(max_norm));
    }
    let norm = grad_norm(grads, params)?;
    let coef = max_norm / (norm + 1e-6);
    if coef < 1.0 {
        let scale = coef as f32;
        for (_, var) in params {
            let Some(grad) = grads.get(var.as_tensor()) else {
                continue;
            };
            let scaled = if grad.device().is_cpu() {
                let scaled = with_f32_slice(grad, |g| {
                    g.par_iter().map(|x| x * scale).collect::<Vec<f32>>()
                })?;
                tensor_from_f32(scaled, grad.shape(), grad.dtype(), grad.device())?
            } else {
                // On the device, where the gradient is (f32 scale, as the slice pass).
                (grad.to_dtype(DType::F32)? * scale as f64)?.to_dtype(grad.dtype())?
            };
            grads.insert(var.as_tensor(), scaled);
        }
    }
    Ok(norm)
}

#[cfg(test)]
mod tests {
    use candle_core::{DType, Device, Tensor};

    use super::*;

    fn setup(g_a: &[f32], g_b: &[f32]) -> (Vec<(String, Var)>, GradStore) {
        let a = Var::zeros(g_a.len(), DType::F32, &Device::Cpu).unwrap();
        let b = Var::zeros(g_b.len(), DType::F32, &Device::Cpu).unwrap();
        let ca = Tensor::from_slice(g_a, g_a.len(), &Device::Cpu).unwrap();
        let cb = Tensor::from_slice(g_b, g_b.len(), &Device::Cpu).unwrap();
        let loss = (a.as_tensor().mul(&ca).unwrap().sum_all().unwrap()
            + b.as_tensor().mul(&cb).unwrap().sum_all().unwrap())
        .unwrap();
        let grads = loss.backward().unwrap();
        (vec![("a".to_string(), a), ("b".to_string(), b)], grads)
    }

    fn grad_of(grads: &GradStore, v: &Var) -> Vec<f32> {
        grads.get(v.as_tensor()).unwrap().to_vec1().unwrap()
    }

    #[test]
    fn clips_as_torch() {
        // Global norm sqrt(9 + 16 + 144) = 13.
        let (params, mut grads) = setup(&[3.0, 4.0], &[12.0]);
        let norm = clip_grad_norm(&mut grads, &params, 1.0).unwrap();
        assert!((norm - 13.0).abs() < 1e-12);
        let coef = 1.0 / (13.0 + 1e-6);
        let a = grad_of(&grads, &params[0].1);
        let b = grad_of(&grads, &params[1].1);
        for (got, g) in a.iter().chain(&b).zip([3.0, 4.0, 12.0]) {
            assert!((*got as f64 - g * coef).abs() < 1e-6, "{a:?} {b:?}");
        }
        // The clipped norm is max_norm (up to the 1e-6).
        assert!((grad_norm(&grads, &params).unwrap() - 1.0).abs() < 1e-6);
    }

    /// The GPU path (squares summed by tensor ops) gives the slice pass's norm and names the
    /// same non-finite parameter.
    #[test]
    fn tensor_op_norm_matches_the_slice_pass() {
        let (params, grads) = setup(&[3.0, 4.0, -0.5], &[12.0, 1e-3]);
        let slice = grad_norm(&grads, &params).unwrap();
        let tensor = grad_norm_tensor_ops(&grads, &params).unwrap();
        // The tensor path sums each gradient in f32.
        assert!((slice - tensor).abs() < 1e-6 * slice, "{slice} vs {tensor}");
        let (params, grads) = setup(&[1.0], &[f32::INFINITY, 1.0]);
        let err = grad_norm_tensor_ops(&grads, &params).unwrap_err();
        assert!(
            matches!(&err, ClipError::NonFinite { param, .. } if param == "b"),
            "{err}"
        );
    }

    #[test]
    fn leaves_small_gradients_alone() {
        let (params, mut grads) = setup(&[3.0, 4.0], &[0.0]);
        // coef = 5 / (5 + 1e-6) < 1 would scale by 0.9999998; 6 / 5.000001 > 1 does not.
        let norm = clip_grad_norm(&mut grads, &params, 6.0).unwrap();
        assert!((norm - 5.0).abs() < 1e-12);
        assert_eq!(grad_of(&grads, &params[0].1), vec![3.0, 4.0]);
        // Exactly at max_norm torch still scales by max_norm / (norm + 1e-6).
        clip_grad_norm(&mut grads, &params, 5.0).unwrap();
        let a = grad_of(&grads, &params[0].1);
        assert!(a[0] < 3.0 && (a[0] as f64 - 3.0 * 5.0 / 5.000001).abs() < 1e-6);
    }

    #[test]
    fn non_finite_norm_is_an_error_naming_the_parameter() {
        let (params, mut grads) = setup(&[1.0], &[f32::NAN, 1.0]);
        let before = grad_of(&grads, &params[0].1);
        let err = clip_grad_norm(&mut grads, &params, 1.0).unwrap_err();
        assert!(
            matches!(&err, ClipError::NonFinite { param, .. } if param == "b"),
            "{err}"
        );
        assert_eq!(grad_of(&grads, &params[0].1), before);
        let (params, grads) = setup(&[f32::INFINITY], &[1.0]);
        assert!(matches!(
            grad_norm(&grads, &params),
            Err(ClipError::NonFinite { .. })
        ));
        assert!(matches!(
            clip_grad_norm(&mut setup(&[1.0], &[1.0]).1, &params, 0.0),
            Err(ClipError::MaxNorm(_))
        ));
    }

    #[test]
    fn bf16_gradients_keep_their_dtype() {
        let w = Var::ones(4, DType::BF16, &Device::Cpu).unwrap();
        let mut grads = (w.as_tensor() * 2.0)
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
        let params = vec![("w".to_string(), w.clone())];
        let norm = clip_grad_norm(&mut grads, &params, 1.0).unwrap();
        assert!((norm - 4.0).abs() < 1e-12);
        let g = grads.get(w.as_tensor()).unwrap();
        assert_eq!(g.dtype(), DType::BF16);
        let g: Vec<f32> = g.to_dtype(DType::F32).unwrap().to_vec1().unwrap();
        for x in g {
            assert!((x - 0.5).abs() < 4e-3, "{x}");
        }
    }
}
