//! One decoding column's attention on the CPU in f32, as one kernel: for each row, query head
//! h and the key/value head g = h / n_rep that serves it, over the row's own real (and
//! in-window) columns j:
//!
//!   s_j = scale q_h . k_gj,   p_j = exp(s_j - max s) / sum exp(s - max s),   y_h = sum_j p_j v_gj
//!
//! The composed form ran about ten small tensor ops per row and layer (narrows, two tiny
//! matmuls, a scale, a softmax, a concatenation), each allocating, 240 times a step for 8 rows
//! of a 30-layer model. Here a row's numbers depend only on its own columns, in a fixed order,
//! so they are the same at any batch size. Inference only: nothing here records a backward.

use candle_core::{CpuStorage, CustomOp3, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

use super::simd;

struct DecodeAttention {
    /// Per row, the first column it attends to (its padding, or the window's start).
    starts: Vec<usize>,
    scale: f32,
}

/// A 4-d tensor's values with the strides of its first three dimensions (the last is dense).
struct View<'a> {
    values: &'a [f32],
    strides: [usize; 3],
}

impl<'a> View<'a> {
    fn new(s: &'a CpuStorage, l: &Layout) -> Result<Self> {
        let st = l.stride();
        if l.dims().len() != 4 || st[3] != 1 {
            candle_core::bail!("decode attention: expected 4-d inputs with a dense last dimension")
        }
        Ok(View {
            values: &s.as_slice::<f32>()?[l.start_offset()..],
            strides: [st[0], st[1], st[2]],
        })
    }

    fn vector(&self, i: usize, j: usize, k: usize, d: usize) -> &[f32] {
        let at = i * self.strides[0] + j * self.strides[1] + k * self.strides[2];
        &self.values[at..at + d]
    }
}

impl CustomOp3 for DecodeAttention {
    fn name(&self) -> &'static str {
        "decode-attention"
    }

    /// q (b, heads, 1, d); k, v (b, kv_heads, total, d), possibly views of a larger cache.
    fn cpu_fwd(
        &self,
        sq: &CpuStorage,
        lq: &Layout,
        sk: &CpuStorage,
        lk: &Layout,
        sv: &CpuStorage,
        lv: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (q, k, v) = (View::new(sq, lq)?, View::new(sk, lk)?, View::new(sv, lv)?);
        let (b, heads, _, d) = lq.shape().dims4()?;
        let (_, kv_heads, total, _) = lk.shape().dims4()?;
        let n_rep = heads / kv_heads;
        let mut out = vec![0f32; b * heads * d];
        out.par_chunks_mut(d).enumerate().for_each(|(rh, y)| {
            let (r, h) = (rh / heads, rh % heads);
            let qh = q.vector(r, h, 0, d);
            let columns = self.starts[r]..total;
            let scores: Vec<f32> = columns
                .clone()
                .map(|j| dot(qh, k.vector(r, h / n_rep, j, d)) * self.scale)
                .collect();
            let mut exps = vec![0f32; scores.len()];
            let inv = (1.0 / simd::exp_into(&scores, simd::max(&scores), &mut exps)) as f32;
            for (j, e) in columns.zip(exps) {
                let p = e * inv;
                for (y, &vj) in y.iter_mut().zip(v.vector(r, h / n_rep, j, d)) {
                    *y += p * vj;
                }
            }
        });
        Ok((CpuStorage::F32(out), Shape::from((b, heads, 1, d))))
    }
}

/// In 8 independent lanes (they vectorise), summed in a fixed order.
fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; 8];
    let (a8, b8) = (a.chunks_exact(8), b.chunks_exact(8));
    let tail: f32 = a8
        .remainder()
        .iter()
        .zip(b8.remainder())
        .map(|(x, y)| x * y)
        .sum();
    for (ai, bi) in a8.zip(b8) {
        for l in 0..8 {
            acc[l] += ai[l] * bi[l];
        }
    }
    ((acc[0] + acc[4]) + (acc[2] + acc[6])) + ((acc[1] + acc[5]) + (acc[3] + acc[7])) + tail
}

/// Attention of one decoding column, `q` (b, heads, 1, d) against `k`, `v` (b, kv_heads, total,
/// d), row r over columns `starts[r]..total`; None where the kernel does not apply (not f32 on
/// the CPU).
pub fn decode_attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    starts: Vec<usize>,
    scale: f64,
) -> Result<Option<Tensor>> {
    let f32_cpu = |t: &Tensor| t.device().is_cpu() && t.dtype() == candle_core::DType::F32;
    if !(f32_cpu(q) && f32_cpu(k) && f32_cpu(v)) {
        return Ok(None);
    }
    let op = DecodeAttention {
        starts,
        scale: scale as f32,
    };
    let dense_last = |t: &Tensor| match t.stride().last() {
        Some(1) => Ok(t.clone()),
        _ => t.contiguous(),
    };
    Ok(Some(q.contiguous()?.apply_op3_no_bwd(
        &dense_last(k)?,
        &dense_last(v)?,
        &op,
    )?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, D};

    /// The kernel equals the composed ops (per row: its columns, each key/value head repeated
    /// for its query heads, matmul, scale, softmax, matmul), on cache views with padding.
    #[test]
    fn kernel_matches_the_composed_ops() {
        let dev = Device::Cpu;
        let (b, heads, kv_heads, total, d) = (3, 6, 2, 9, 16);
        let q = Tensor::randn(0f32, 1.0, (b, heads, 1, d), &dev).unwrap();
        // Views of a longer buffer, as the KV cache hands them out.
        let buffer = |seed_shift: f64| {
            (Tensor::randn(0f32, 1.0, (b, kv_heads, total + 5, d), &dev).unwrap() + seed_shift)
                .unwrap()
                .narrow(2, 0, total)
                .unwrap()
        };
        let (k, v) = (buffer(0.0), buffer(0.5));
        let starts = vec![0, 3, 8];
        let scale = 1.0 / (d as f64).sqrt();
        let fused = decode_attention(&q, &k, &v, starts.clone(), scale)
            .unwrap()
            .unwrap();
        for (r, &start) in starts.iter().enumerate() {
            let n_rep = heads / kv_heads;
            let span = |t: &Tensor| {
                let t = t
                    .narrow(0, r, 1)
                    .unwrap()
                    .narrow(2, start, total - start)
                    .unwrap();
                let (_, g, l, d) = t.dims4().unwrap();
                t.unsqueeze(2)
                    .unwrap()
                    .broadcast_as((1, g, n_rep, l, d))
                    .unwrap()
                    .reshape((1, g * n_rep, l, d))
                    .unwrap()
            };
            let qr = q.narrow(0, r, 1).unwrap();
            let scores = (qr.matmul(&span(&k).t().unwrap()).unwrap() * scale).unwrap();
            let probs = candle_nn::ops::softmax(&scores, D::Minus1).unwrap();
            let want = probs.matmul(&span(&v)).unwrap();
            let got = fused.narrow(0, r, 1).unwrap();
            let diff = crate::model::max_abs_diff(&got, &want);
            assert!(diff < 1e-5, "row {r}: differs by {diff}");
        }
    }
}
