//! The three ops where candle's fused kernels record no backward (rms_norm, softmax_last_dim,
//! rope; upstream candle issues 2168, 3568, 3569). Each runs the fused kernel when nothing
//! needs a gradient and the composed, differentiable form when something does: the same math,
//! so sampling, scoring and training see the same numbers.

use candle_core::{DType, Result, Tensor, D};

fn needs_grad(ts: &[&Tensor]) -> bool {
    ts.iter().any(|t| t.track_op())
}

/// Half-precision inputs are reduced in f32; f32 and f64 stay as they are.
pub fn at_least_f32(dtype: DType) -> DType {
    match dtype {
        DType::F16 | DType::BF16 => DType::F32,
        d => d,
    }
}

/// `x / sqrt(mean(x^2) + eps) * weight` over the last dimension, accumulated in f32.
pub fn rms_norm(x: &Tensor, weight: &Tensor, eps: f64) -> Result<Tensor> {
    let dtype = x.dtype();
    if !needs_grad(&[x, weight]) && dtype != DType::F64 {
        return candle_nn::ops::rms_norm(&x.contiguous()?, weight, eps as f32);
    }
    let xf = x.to_dtype(at_least_f32(dtype))?;
    let mean_sq = xf.sqr()?.mean_keepdim(D::Minus1)?;
    let normed = xf.broadcast_div(&(mean_sq + eps)?.sqrt()?)?;
    normed.to_dtype(dtype)?.broadcast_mul(weight)
}

/// Softmax over the last dimension.
pub fn softmax_last_dim(x: &Tensor) -> Result<Tensor> {
    if !needs_grad(&[x]) {
        return candle_nn::ops::softmax_last_dim(&x.contiguous()?);
    }
    candle_nn::ops::softmax(x, D::Minus1)
}

/// Rotary embedding in the half-split (GPT-NeoX / Llama) layout.
/// `x`: (batch, heads, seq, head_dim); `cos`, `sin`: (batch, seq, head_dim / 2).
pub fn rope(x: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
    if !needs_grad(&[x]) {
        return candle_nn::rotary_emb::rope(&x.contiguous()?, cos, sin);
    }
    let half = x.dim(D::Minus1)? / 2;
    let cos = Tensor::cat(&[cos, cos], D::Minus1)?.unsqueeze(1)?;
    let sin = Tensor::cat(&[sin, sin], D::Minus1)?.unsqueeze(1)?;
    let x1 = x.narrow(D::Minus1, 0, half)?;
    let x2 = x.narrow(D::Minus1, half, half)?;
    let rotated = Tensor::cat(&[&x2.neg()?, &x1], D::Minus1)?;
    x.broadcast_mul(&cos)? + rotated.broadcast_mul(&sin)?
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    /// The fused and the composed forms agree, so switching on `track_op` changes no number.
    #[test]
    fn fused_and_differentiable_forms_agree() -> Result<()> {
        let dev = Device::Cpu;
        let x = Tensor::randn(0f32, 1.0, (2, 3, 5, 8), &dev)?;
        let w = Tensor::randn(0f32, 1.0, 8, &dev)?;
        let cos = Tensor::randn(0f32, 1.0, (2, 5, 4), &dev)?;
        let sin = Tensor::randn(0f32, 1.0, (2, 5, 4), &dev)?;
        let xv = Var::from_tensor(&x)?;
        let pairs = [
            (rms_norm(&x, &w, 1e-5)?, rms_norm(xv.as_tensor(), &w, 1e-5)?),
            (softmax_last_dim(&x)?, softmax_last_dim(xv.as_tensor())?),
            (rope(&x, &cos, &sin)?, rope(xv.as_tensor(), &cos, &sin)?),
        ];
        for (fused, slow) in pairs {
            let diff = (fused - slow)?.abs()?.max_all()?.to_scalar::<f32>()?;
            assert!(diff < 1e-5, "fused and composed differ by {diff}");
        }
        Ok(())
    }
}
