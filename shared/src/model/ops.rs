//! The three ops where candle's fused kernels record no backward (rms_norm, softmax_last_dim,
//! rope; upstream candle issues 2168, 3568, 3569). Each runs the fused kernel when nothing
//! needs a gradient, and when something does our single-pass kernel with a hand-written
//! backward (`model/fused.rs`, CPU f32/f64) or else the composed, differentiable form: the same
//! math, so sampling, scoring and training see the same numbers.

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
    if let Some(y) = super::fused::rms_norm(x, weight, eps)? {
        return Ok(y);
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
    if let Some(y) = super::fused::softmax_last_dim(x)? {
        return Ok(y);
    }
    candle_nn::ops::softmax(x, D::Minus1)
}

/// Rotary embedding in the half-split (GPT-NeoX / Llama) layout.
/// `x`: (batch, heads, seq, head_dim); `cos`, `sin`: (batch, seq, head_dim / 2).
pub fn rope(x: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
    if !needs_grad(&[x]) {
        return candle_nn::rotary_emb::rope(&x.contiguous()?, cos, sin);
    }
    if let Some(y) = super::fused::rope(x, cos, sin)? {
        return Ok(y);
    }
    let half = x.dim(D::Minus1)? / 2;
    let cos = Tensor::cat(&[cos, cos], D::Minus1)?.unsqueeze(1)?;
    let sin = Tensor::cat(&[sin, sin], D::Minus1)?.unsqueeze(1)?;
    let x1 = x.narrow(D::Minus1, 0, half)?;
    let x2 = x.narrow(D::Minus1, half, half)?;
    let rotated = Tensor::cat(&[&x2.neg()?, &x1], D::Minus1)?;
    x.broadcast_mul(&cos)? + rotated.broadcast_mul(&sin)?
}

/// `x W^T` for x (..., k) and W (n, k). A decoding step (x of shape (rows, 1, k): one new
/// token per row) on the CPU runs a kernel whose result for a row does not depend on the other
/// rows of the batch (a BLAS-style gemm picks different blockings for different row counts,
/// and a 1e-6 difference flips a sampled token now and then). That is what makes a row's
/// samples identical at batch size 1 and 8. Everything else (prefill, teacher forcing,
/// training) runs gemm.
pub fn linear_t(x: &Tensor, w: &Tensor) -> Result<Tensor> {
    let decode_step = x.rank() == 3 && x.dim(1)? == 1;
    if decode_step
        && x.device().is_cpu()
        && x.dtype() == DType::F32
        && w.dtype() == DType::F32
        && !needs_grad(&[x, w])
    {
        let x = x.contiguous()?;
        let w = w.contiguous()?;
        return x.apply_op2_no_bwd(&w, &RowInvariantMatmulT);
    }
    x.broadcast_matmul(&w.t()?)
}

struct RowInvariantMatmulT;

impl candle_core::CustomOp2 for RowInvariantMatmulT {
    fn name(&self) -> &'static str {
        "row-invariant-matmul-t"
    }

    fn cpu_fwd(
        &self,
        s1: &candle_core::CpuStorage,
        l1: &candle_core::Layout,
        s2: &candle_core::CpuStorage,
        l2: &candle_core::Layout,
    ) -> Result<(candle_core::CpuStorage, candle_core::Shape)> {
        use rayon::prelude::*;
        let (Some((x0, x1)), Some((w0, w1))) = (l1.contiguous_offsets(), l2.contiguous_offsets())
        else {
            candle_core::bail!("row-invariant matmul needs contiguous inputs")
        };
        let x = &s1.as_slice::<f32>()?[x0..x1];
        let w = &s2.as_slice::<f32>()?[w0..w1];
        let (n, k) = l2.shape().dims2()?;
        if l1.shape().dims().last() != Some(&k) {
            candle_core::bail!(
                "row-invariant matmul: {:?} x {:?}^T",
                l1.shape(),
                l2.shape()
            )
        }
        let m = x.len() / k;
        let mut out = vec![0f32; m * n];
        // Columns of W in parallel blocks; every (row, column) dot product is computed the same
        // way whatever m is, and W is streamed once for all rows.
        const BLOCK: usize = 64;
        let blocks: Vec<Vec<f32>> = (0..n.div_ceil(BLOCK))
            .into_par_iter()
            .map(|b| {
                let (c0, c1) = (b * BLOCK, ((b + 1) * BLOCK).min(n));
                let mut block = vec![0f32; m * (c1 - c0)];
                block_dots_dispatched(x, &w[c0 * k..c1 * k], k, &mut block);
                block
            })
            .collect();
        for (b, block) in blocks.iter().enumerate() {
            let (c0, width) = (b * BLOCK, block.len() / m.max(1));
            for r in 0..m {
                out[r * n + c0..r * n + c0 + width]
                    .copy_from_slice(&block[r * width..(r + 1) * width]);
            }
        }
        let mut dims = l1.shape().dims().to_vec();
        *dims.last_mut().unwrap() = n;
        Ok((
            candle_core::CpuStorage::F32(out),
            candle_core::Shape::from(dims),
        ))
    }
}

super::simd::multiversion! {
    /// The block kernel: `out[r * cols + c] = x_r . w_c` for the rows of x and the rows of one
    /// block of W, each of length k. Every variant (`simd::multiversion!`) does the same fused
    /// multiply-adds in the same order, so they give the same bits.
    fn block_dots_dispatched(x: &[f32], w: &[f32], k: usize, out: &mut [f32]) {
        block_dots(x, w, k, out)
    }
}

#[inline(always)]
fn block_dots(x: &[f32], w: &[f32], k: usize, out: &mut [f32]) {
    let cols = w.len() / k;
    for c in 0..cols {
        let wc = &w[c * k..(c + 1) * k];
        for (r, xr) in x.chunks_exact(k).enumerate() {
            out[r * cols + c] = dot(xr, wc);
        }
    }
}

/// A dot product with 16 independent lanes of fused multiply-adds (one AVX-512 register, two
/// AVX2 ones), reduced in a fixed order.
#[inline(always)]
fn dot(a: &[f32], b: &[f32]) -> f32 {
    const LANES: usize = 16;
    let mut acc = [0f32; LANES];
    let (a_body, a_tail) = a.split_at(a.len() / LANES * LANES);
    let (b_body, b_tail) = b.split_at(a_body.len());
    for (ai, bi) in a_body.chunks_exact(LANES).zip(b_body.chunks_exact(LANES)) {
        for l in 0..LANES {
            acc[l] = ai[l].mul_add(bi[l], acc[l]);
        }
    }
    let mut tail = 0f32;
    for (ai, bi) in a_tail.iter().zip(b_tail) {
        tail = ai.mul_add(*bi, tail);
    }
    let mut s = 0f32;
    for l in acc {
        s += l;
    }
    s + tail
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
            let diff = crate::model::max_abs_diff(&fused, &slow);
            assert!(diff < 1e-5, "fused and composed differ by {diff}");
        }
        Ok(())
    }

    /// A decoding step's rows give the same bits alone as in any batch (k with and without a
    /// tail past 16 lanes, n across column blocks), and gemm's values to rounding.
    #[test]
    fn decode_rows_are_the_same_alone_and_in_a_batch() -> Result<()> {
        let dev = Device::Cpu;
        for (rows, k, n) in [(7, 37, 70), (8, 64, 131), (1, 16, 3)] {
            let x = Tensor::randn(0f32, 1.0, (rows, 1, k), &dev)?;
            let w = Tensor::randn(0f32, 1.0, (n, k), &dev)?;
            let batch = linear_t(&x, &w)?;
            for r in 0..rows {
                let alone = linear_t(&x.narrow(0, r, 1)?, &w)?;
                let (a, b): (Vec<f32>, Vec<f32>) = (
                    alone.flatten_all()?.to_vec1()?,
                    batch.narrow(0, r, 1)?.flatten_all()?.to_vec1()?,
                );
                assert!(a.iter().zip(&b).all(|(p, q)| p.to_bits() == q.to_bits()));
            }
            let gemm = x.broadcast_matmul(&w.t()?)?;
            let diff = crate::model::max_abs_diff(&batch, &gemm);
            assert!(diff < 1e-4, "decode kernel and gemm differ by {diff}");
        }
        Ok(())
    }
}
