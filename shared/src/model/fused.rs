//! Single-pass CPU kernels with hand-written backward passes for the ops training spends its
//! time in: rms_norm, rotary embedding, softmax, log-softmax at the target token, and SwiGLU's
//! gating silu(gate) * up.
//!
//! The composed forms in [`super::ops`] are differentiable but record about ten graph nodes
//! each, and their backward passes allocate and sweep full-size temporaries (narrow pads, masks,
//! broadcasts): on the 40M benchmark shape they took about 40% of a training step, and
//! log-softmax + gather over a (tokens, 32000) logits block alone swept it some 30 times. Each
//! op here is one candle custom op: one pass forward, one pass backward, f32 or f64 on the CPU.
//! Other dtypes and devices return `None` and the caller falls back to the composed form.

use candle_core::backend::BackendStorage;
use candle_core::{
    CpuStorage, CustomOp1, CustomOp2, CustomOp3, DType, Layout, Result, Shape, Storage, Tensor,
    WithDType,
};
use rayon::prelude::*;

use super::simd;

/// The float types the kernels run in.
trait Float:
    WithDType
    + std::ops::Add<Output = Self>
    + std::ops::Sub<Output = Self>
    + std::ops::Mul<Output = Self>
    + std::ops::Div<Output = Self>
    + std::ops::Neg<Output = Self>
    + std::ops::AddAssign
    + std::ops::MulAssign
    + PartialOrd
{
    const ZERO: Self;
    const ONE: Self;
    fn of(v: f64) -> Self;
    fn wide(self) -> f64;

    // Row kernels: vectorised in f32 (`super::simd`), plain loops in f64, which only the
    // gradient checks run.
    /// The largest value of a row.
    fn row_max(row: &[Self]) -> Self;
    /// Sum of e^(v - shift) over a row, in f64.
    fn sum_exp(row: &[Self], shift: Self) -> f64;
    /// out = e^(row - shift); returns the sum of out in f64.
    fn exp_into(row: &[Self], shift: Self, out: &mut [Self]) -> f64;
    /// out = silu(g) u.
    fn silu_mul_into(g: &[Self], u: &[Self], out: &mut [Self]);
    /// With s = sigmoid(g): dg = dy u s (1 + g (1 - s)), du = dy g s.
    fn silu_mul_backward(g: &[Self], u: &[Self], dy: &[Self], dg: &mut [Self], du: &mut [Self]);
}

impl Float for f32 {
    const ZERO: Self = 0.0;
    const ONE: Self = 1.0;
    fn of(v: f64) -> Self {
        v as f32
    }
    fn wide(self) -> f64 {
        self as f64
    }
    fn row_max(row: &[Self]) -> Self {
        simd::max(row)
    }
    fn sum_exp(row: &[Self], shift: Self) -> f64 {
        simd::sum_exp(row, shift)
    }
    fn exp_into(row: &[Self], shift: Self, out: &mut [Self]) -> f64 {
        simd::exp_into(row, shift, out)
    }
    fn silu_mul_into(g: &[Self], u: &[Self], out: &mut [Self]) {
        simd::silu_mul_into(g, u, out)
    }
    fn silu_mul_backward(g: &[Self], u: &[Self], dy: &[Self], dg: &mut [Self], du: &mut [Self]) {
        simd::silu_mul_backward(g, u, dy, dg, du)
    }
}

impl Float for f64 {
    const ZERO: Self = 0.0;
    const ONE: Self = 1.0;
    fn of(v: f64) -> Self {
        v
    }
    fn wide(self) -> f64 {
        self
    }
    fn row_max(row: &[Self]) -> Self {
        row.iter().copied().fold(f64::NEG_INFINITY, f64::max)
    }
    fn sum_exp(row: &[Self], shift: Self) -> f64 {
        row.iter().map(|&v| (v - shift).exp()).sum()
    }
    fn exp_into(row: &[Self], shift: Self, out: &mut [Self]) -> f64 {
        let mut sum = 0.0;
        for (y, &v) in out.iter_mut().zip(row) {
            *y = (v - shift).exp();
            sum += *y;
        }
        sum
    }
    fn silu_mul_into(g: &[Self], u: &[Self], out: &mut [Self]) {
        for ((y, &g), &u) in out.iter_mut().zip(g).zip(u) {
            *y = g / (1.0 + (-g).exp()) * u;
        }
    }
    fn silu_mul_backward(g: &[Self], u: &[Self], dy: &[Self], dg: &mut [Self], du: &mut [Self]) {
        let inputs = g.iter().zip(u).zip(dy);
        for ((dg, du), ((&g, &u), &dy)) in dg.iter_mut().zip(du.iter_mut()).zip(inputs) {
            let s = 1.0 / (1.0 + (-g).exp());
            *dg = dy * u * s * (1.0 + g * (1.0 - s));
            *du = dy * g * s;
        }
    }
}

/// Whether the kernels here handle this tensor.
fn supported(t: &Tensor) -> bool {
    t.device().is_cpu() && matches!(t.dtype(), DType::F32 | DType::F64)
}

/// A contiguous CPU storage's values.
fn slice<'a, T: Float>(s: &'a CpuStorage, l: &Layout) -> Result<&'a [T]> {
    match l.contiguous_offsets() {
        Some((a, b)) => Ok(&s.as_slice::<T>()?[a..b]),
        None => candle_core::bail!("fused kernel: non-contiguous input"),
    }
}

/// Runs `f` on a tensor's values (contiguous, row-major), borrowing when it can.
fn with_values<T: Float, R>(t: &Tensor, f: impl FnOnce(&[T]) -> Result<R>) -> Result<R> {
    let t = t.contiguous()?;
    let (storage, layout) = t.storage_and_layout();
    match &*storage {
        Storage::Cpu(cpu) => f(slice::<T>(cpu, layout)?),
        _ => candle_core::bail!("fused kernel: not a CPU tensor"),
    }
}

/// A two-input kernel's forward, run in its inputs' dtype (both f32 or both f64).
fn in_input_dtype(
    op: &str,
    (s1, l1, s2, l2): (&CpuStorage, &Layout, &CpuStorage, &Layout),
    f32: impl FnOnce(&[f32], &[f32]) -> Vec<f32>,
    f64: impl FnOnce(&[f64], &[f64]) -> Vec<f64>,
) -> Result<CpuStorage> {
    Ok(match (s1.dtype(), s2.dtype()) {
        (DType::F32, DType::F32) => f32::to_cpu_storage_owned(f32(slice(s1, l1)?, slice(s2, l2)?)),
        (DType::F64, DType::F64) => f64::to_cpu_storage_owned(f64(slice(s1, l1)?, slice(s2, l2)?)),
        (a, b) => candle_core::bail!("{op}: unsupported dtypes {a:?}, {b:?}"),
    })
}

fn tensor<T: Float>(values: Vec<T>, shape: &Shape, like: &Tensor) -> Result<Tensor> {
    Tensor::from_vec(values, shape, like.device())
}

/// Rows of this many elements or more are processed in parallel, one row per task.
const PAR_MIN: usize = 1 << 12;

fn for_rows<T: Send>(out: &mut [T], width: usize, f: impl Fn(usize, &mut [T]) + Sync + Send) {
    if out.len() >= PAR_MIN {
        let rows_per_task = (PAR_MIN / width.max(1)).max(1);
        out.par_chunks_mut(rows_per_task * width)
            .enumerate()
            .for_each(|(k, block)| {
                for (i, row) in block.chunks_mut(width).enumerate() {
                    f(k * rows_per_task + i, row)
                }
            });
    } else {
        for (i, row) in out.chunks_mut(width).enumerate() {
            f(i, row)
        }
    }
}

// ---------------------------------------------------------------------------------------------
// log-softmax at the target token

/// `log_softmax(logits)[r, target_r]` per row: (rows, vocab) -> (rows,).
struct TargetLogprob {
    targets: Vec<u32>,
}

fn target_logprob_fwd<T: Float>(x: &[T], vocab: usize, targets: &[u32]) -> Vec<T> {
    let mut out = vec![T::ZERO; targets.len()];
    let per_row = |r: usize, o: &mut [T]| {
        let row = &x[r * vocab..(r + 1) * vocab];
        let max = T::row_max(row);
        // Sums accumulate in f64: a 150k-token vocabulary is a long sum for f32.
        let sum = T::sum_exp(row, max);
        o[0] = T::of((row[targets[r] as usize] - max).wide() - sum.ln());
    };
    if x.len() >= PAR_MIN {
        out.par_chunks_mut(1)
            .enumerate()
            .for_each(|(r, o)| per_row(r, o));
    } else {
        out.chunks_mut(1)
            .enumerate()
            .for_each(|(r, o)| per_row(r, o));
    }
    out
}

impl CustomOp1 for TargetLogprob {
    fn name(&self) -> &'static str {
        "target-logprob"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let (rows, vocab) = l.shape().dims2()?;
        if rows != self.targets.len() {
            candle_core::bail!(
                "target-logprob: {rows} rows, {} targets",
                self.targets.len()
            )
        }
        if let Some(&t) = self.targets.iter().find(|&&t| t as usize >= vocab) {
            candle_core::bail!("target-logprob: target {t} outside the vocabulary of {vocab}")
        }
        let out = match s.dtype() {
            DType::F32 => f32::to_cpu_storage_owned(target_logprob_fwd(
                slice::<f32>(s, l)?,
                vocab,
                &self.targets,
            )),
            DType::F64 => f64::to_cpu_storage_owned(target_logprob_fwd(
                slice::<f64>(s, l)?,
                vocab,
                &self.targets,
            )),
            d => candle_core::bail!("target-logprob: unsupported dtype {d:?}"),
        };
        Ok((out, Shape::from(rows)))
    }

    /// d logp_r / d x[r, v] = 1{v = target_r} - softmax(x_r)_v, with logsumexp recovered from
    /// the output: lse_r = x[r, target_r] - logp_r.
    fn bwd(&self, arg: &Tensor, res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        fn run<T: Float>(
            op: &TargetLogprob,
            arg: &Tensor,
            res: &Tensor,
            grad: &Tensor,
        ) -> Result<Tensor> {
            let (_, vocab) = arg.dims2()?;
            let res: Vec<T> = res.to_vec1()?;
            let grad: Vec<T> = grad.to_dtype(arg.dtype())?.to_vec1()?;
            let dx = with_values::<T, _>(arg, |x| {
                let mut dx = vec![T::ZERO; x.len()];
                for_rows(&mut dx, vocab, |r, d| {
                    let row = &x[r * vocab..(r + 1) * vocab];
                    let t = op.targets[r] as usize;
                    let lse = row[t] - res[r];
                    let g = grad[r];
                    T::exp_into(row, lse, d);
                    for d in d.iter_mut() {
                        *d = -(g * *d);
                    }
                    d[t] += g;
                });
                Ok(dx)
            })?;
            tensor(dx, arg.shape(), arg)
        }
        Ok(Some(match arg.dtype() {
            DType::F32 => run::<f32>(self, arg, res, grad)?,
            _ => run::<f64>(self, arg, res, grad)?,
        }))
    }
}

/// `log_softmax(logits, -1)` at `targets` per row, or None where the kernel does not apply.
pub fn target_logprobs(logits: &Tensor, targets: &[u32]) -> Result<Option<Tensor>> {
    if !supported(logits) || logits.rank() != 2 {
        return Ok(None);
    }
    let op = TargetLogprob {
        targets: targets.to_vec(),
    };
    let logits = logits.contiguous()?;
    Ok(Some(if logits.track_op() {
        logits.apply_op1(op)?
    } else {
        logits.apply_op1_no_bwd(&op)?
    }))
}

// ---------------------------------------------------------------------------------------------
// softmax over the last dimension

struct Softmax;

fn softmax_rows<T: Float>(x: &[T], width: usize) -> Vec<T> {
    let mut out = vec![T::ZERO; x.len()];
    for_rows(&mut out, width, |r, y| {
        let row = &x[r * width..(r + 1) * width];
        let sum = T::exp_into(row, T::row_max(row), y);
        let inv = T::of(1.0 / sum);
        for y in y.iter_mut() {
            *y *= inv;
        }
    });
    out
}

impl CustomOp1 for Softmax {
    fn name(&self) -> &'static str {
        "softmax-last-dim"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let width = l.shape().dims().last().copied().unwrap_or(1);
        let out = match s.dtype() {
            DType::F32 => f32::to_cpu_storage_owned(softmax_rows(slice::<f32>(s, l)?, width)),
            DType::F64 => f64::to_cpu_storage_owned(softmax_rows(slice::<f64>(s, l)?, width)),
            d => candle_core::bail!("softmax: unsupported dtype {d:?}"),
        };
        Ok((out, l.shape().clone()))
    }

    /// dx = y * (g - sum(g * y)) per row.
    fn bwd(&self, _arg: &Tensor, res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        fn run<T: Float>(res: &Tensor, grad: &Tensor) -> Result<Tensor> {
            let width = res.dims().last().copied().unwrap_or(1);
            let dx = with_values::<T, _>(res, |y| {
                with_values::<T, _>(grad, |g| {
                    let mut dx = vec![T::ZERO; y.len()];
                    for_rows(&mut dx, width, |r, d| {
                        let (yr, gr) = (
                            &y[r * width..(r + 1) * width],
                            &g[r * width..(r + 1) * width],
                        );
                        let mut dot = 0f64;
                        for (&a, &b) in yr.iter().zip(gr) {
                            dot += (a * b).wide();
                        }
                        let dot = T::of(dot);
                        for ((d, &a), &b) in d.iter_mut().zip(yr).zip(gr) {
                            *d = a * (b - dot);
                        }
                    });
                    Ok(dx)
                })
            })?;
            tensor(dx, res.shape(), res)
        }
        let grad = grad.to_dtype(res.dtype())?;
        Ok(Some(match res.dtype() {
            DType::F32 => run::<f32>(res, &grad)?,
            _ => run::<f64>(res, &grad)?,
        }))
    }
}

/// Differentiable softmax over the last dimension, or None where the kernel does not apply.
pub fn softmax_last_dim(x: &Tensor) -> Result<Option<Tensor>> {
    if !supported(x) {
        return Ok(None);
    }
    Ok(Some(x.contiguous()?.apply_op1(Softmax)?))
}

// ---------------------------------------------------------------------------------------------
// rms_norm

struct RmsNorm {
    eps: f64,
}

fn rms_norm_fwd<T: Float>(x: &[T], w: &[T], eps: f64) -> Vec<T> {
    let d = w.len();
    let mut out = vec![T::ZERO; x.len()];
    for_rows(&mut out, d, |r, y| {
        let row = &x[r * d..(r + 1) * d];
        let mut ss = 0f64;
        for &v in row {
            ss += (v * v).wide();
        }
        let inv = T::of(1.0 / (ss / d as f64 + eps).sqrt());
        for ((y, &v), &w) in y.iter_mut().zip(row).zip(w) {
            *y = v * inv * w;
        }
    });
    out
}

impl CustomOp2 for RmsNorm {
    fn name(&self) -> &'static str {
        "rms-norm"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let d = l2.shape().elem_count();
        if l1.shape().dims().last() != Some(&d) {
            candle_core::bail!("rms-norm: {:?} with a weight of {d}", l1.shape())
        }
        let out = in_input_dtype(
            "rms-norm",
            (s1, l1, s2, l2),
            |x, w| rms_norm_fwd(x, w, self.eps),
            |x, w| rms_norm_fwd(x, w, self.eps),
        )?;
        Ok((out, l1.shape().clone()))
    }

    /// With r = 1 / sqrt(mean(x^2) + eps) per row and y = x r w:
    /// dx = r (g w) - x r^3 / d * sum(g w x), dw = sum over rows of g x r.
    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        fn run<T: Float>(
            eps: f64,
            x: &Tensor,
            w: &Tensor,
            grad: &Tensor,
        ) -> Result<(Tensor, Tensor)> {
            let wv: Vec<T> = w.flatten_all()?.to_vec1()?;
            let d = wv.len();
            let (dx, dw) = with_values::<T, _>(x, |xv| {
                with_values::<T, _>(grad, |g| {
                    let rows = xv.len() / d;
                    let mut dx = vec![T::ZERO; xv.len()];
                    let mut inv = vec![T::ZERO; rows];
                    let mut inv_rows = inv.chunks_mut(1).collect::<Vec<_>>();
                    let per_row = |r: usize, out: &mut [T], inv_r: &mut [T]| {
                        let (xr, gr) = (&xv[r * d..(r + 1) * d], &g[r * d..(r + 1) * d]);
                        let (mut ss, mut gwx) = (0f64, 0f64);
                        for ((&x, &g), &w) in xr.iter().zip(gr).zip(&wv) {
                            ss += (x * x).wide();
                            gwx += (g * w * x).wide();
                        }
                        let inv = 1.0 / (ss / d as f64 + eps).sqrt();
                        let r_ = T::of(inv);
                        let c = T::of(inv * inv * inv / d as f64 * gwx);
                        for (((o, &x), &g), &w) in out.iter_mut().zip(xr).zip(gr).zip(&wv) {
                            *o = r_ * g * w - x * c;
                        }
                        inv_r[0] = r_;
                    };
                    if xv.len() >= PAR_MIN {
                        dx.par_chunks_mut(d)
                            .zip(inv_rows.par_iter_mut())
                            .enumerate()
                            .for_each(|(r, (o, i))| per_row(r, o, i));
                    } else {
                        for (r, (o, i)) in dx.chunks_mut(d).zip(inv_rows.iter_mut()).enumerate() {
                            per_row(r, o, i);
                        }
                    }
                    drop(inv_rows);
                    // dw: a sum over rows, in blocks of rows then across blocks.
                    const BLOCK: usize = 64;
                    let partials: Vec<Vec<T>> = (0..rows.div_ceil(BLOCK))
                        .into_par_iter()
                        .map(|b| {
                            let mut acc = vec![T::ZERO; d];
                            for r in b * BLOCK..((b + 1) * BLOCK).min(rows) {
                                let (xr, gr) = (&xv[r * d..(r + 1) * d], &g[r * d..(r + 1) * d]);
                                for ((a, &x), &g) in acc.iter_mut().zip(xr).zip(gr) {
                                    *a += g * x * inv[r];
                                }
                            }
                            acc
                        })
                        .collect();
                    let mut dw = vec![T::ZERO; d];
                    for p in partials {
                        for (a, v) in dw.iter_mut().zip(p) {
                            *a += v;
                        }
                    }
                    Ok((dx, dw))
                })
            })?;
            Ok((tensor(dx, x.shape(), x)?, tensor(dw, w.shape(), w)?))
        }
        let grad = grad.to_dtype(x.dtype())?;
        let (dx, dw) = match x.dtype() {
            DType::F32 => run::<f32>(self.eps, x, w, &grad)?,
            _ => run::<f64>(self.eps, x, w, &grad)?,
        };
        Ok((Some(dx), Some(dw)))
    }
}

/// Differentiable `x / sqrt(mean(x^2) + eps) * weight`, or None where the kernel does not apply.
pub fn rms_norm(x: &Tensor, weight: &Tensor, eps: f64) -> Result<Option<Tensor>> {
    if !supported(x) || x.dtype() != weight.dtype() || weight.rank() != 1 {
        return Ok(None);
    }
    Ok(Some(
        x.contiguous()?
            .apply_op2(&weight.contiguous()?, RmsNorm { eps })?,
    ))
}

// ---------------------------------------------------------------------------------------------
// SwiGLU's gating: silu(gate) * up

/// `silu(g) * u` elementwise, with silu(g) = g / (1 + exp(-g)) as candle computes it (in f64
/// the composed ops' values to the bit; in f32 within an ulp of them, with the vectorised
/// `simd::exp`); one pass instead of two, and one backward pass instead of about eight
/// full-size temporaries.
struct SiluMul;

fn silu_mul_fwd<T: Float>(g: &[T], u: &[T]) -> Vec<T> {
    let mut out = vec![T::ZERO; g.len()];
    for_rows(&mut out, PAR_MIN, |r, y| {
        let at = r * PAR_MIN;
        T::silu_mul_into(&g[at..at + y.len()], &u[at..at + y.len()], y);
    });
    out
}

impl CustomOp2 for SiluMul {
    fn name(&self) -> &'static str {
        "silu-mul"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        if l1.shape() != l2.shape() {
            candle_core::bail!("silu-mul: {:?} and {:?}", l1.shape(), l2.shape())
        }
        let out = in_input_dtype("silu-mul", (s1, l1, s2, l2), silu_mul_fwd, silu_mul_fwd)?;
        Ok((out, l1.shape().clone()))
    }

    /// With s = sigmoid(g) and y = g s u: dg = grad u s (1 + g (1 - s)), du = grad g s.
    fn bwd(
        &self,
        g: &Tensor,
        u: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        fn run<T: Float>(g: &Tensor, u: &Tensor, grad: &Tensor) -> Result<(Tensor, Tensor)> {
            let (dg, du) = with_values::<T, _>(g, |gv| {
                with_values::<T, _>(u, |uv| {
                    with_values::<T, _>(grad, |dy| {
                        let mut dg = vec![T::ZERO; gv.len()];
                        let mut du = vec![T::ZERO; gv.len()];
                        dg.par_chunks_mut(PAR_MIN)
                            .zip(du.par_chunks_mut(PAR_MIN))
                            .enumerate()
                            .for_each(|(r, (dg, du))| {
                                let at = r * PAR_MIN;
                                let n = dg.len();
                                T::silu_mul_backward(
                                    &gv[at..at + n],
                                    &uv[at..at + n],
                                    &dy[at..at + n],
                                    dg,
                                    du,
                                );
                            });
                        Ok((dg, du))
                    })
                })
            })?;
            Ok((tensor(dg, g.shape(), g)?, tensor(du, u.shape(), u)?))
        }
        let grad = grad.to_dtype(g.dtype())?;
        let (dg, du) = match g.dtype() {
            DType::F32 => run::<f32>(g, u, &grad)?,
            _ => run::<f64>(g, u, &grad)?,
        };
        Ok((Some(dg), Some(du)))
    }
}

/// Differentiable `silu(gate) * up`, or None where the kernel does not apply.
pub fn silu_mul(gate: &Tensor, up: &Tensor) -> Result<Option<Tensor>> {
    if !supported(gate) || gate.dtype() != up.dtype() || gate.shape() != up.shape() {
        return Ok(None);
    }
    Ok(Some(
        gate.contiguous()?.apply_op2(&up.contiguous()?, SiluMul)?,
    ))
}

// ---------------------------------------------------------------------------------------------
// rotary embedding (half-split layout)

struct Rope;

/// Rotates each (x[i], x[i + d/2]) pair of every row by the angle whose cos and sin are given
/// (`sign` -1 rotates back, which is the backward pass).
fn rope_rows<T: Float>(
    x: &[T],
    cos: &[T],
    sin: &[T],
    dims: (usize, usize, usize, usize),
    per_batch_angles: bool,
    sign: T,
) -> Vec<T> {
    let (_b, h, t, d) = dims;
    let half = d / 2;
    let mut out = vec![T::ZERO; x.len()];
    for_rows(&mut out, d, |row, y| {
        let bi = row / (h * t);
        let ti = row % t;
        let a = if per_batch_angles { bi * t + ti } else { ti } * half;
        let xr = &x[row * d..(row + 1) * d];
        for i in 0..half {
            let (c, s) = (cos[a + i], sign * sin[a + i]);
            let (x1, x2) = (xr[i], xr[i + half]);
            y[i] = x1 * c - x2 * s;
            y[i + half] = x2 * c + x1 * s;
        }
    });
    out
}

fn rope_dims(l: &Layout, cos: &Layout) -> Result<((usize, usize, usize, usize), bool)> {
    let (b, h, t, d) = l.shape().dims4()?;
    let per_batch = match cos.shape().dims() {
        [cb, ct, ch] if *cb == b && *ct == t && *ch == d / 2 => true,
        [ct, ch] if *ct == t && *ch == d / 2 => false,
        other => candle_core::bail!("rope: x {:?} with cos/sin {other:?}", l.shape()),
    };
    Ok(((b, h, t, d), per_batch))
}

impl CustomOp3 for Rope {
    fn name(&self) -> &'static str {
        "rope"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (dims, per_batch) = rope_dims(l1, l2)?;
        let out = match s1.dtype() {
            DType::F32 => f32::to_cpu_storage_owned(rope_rows(
                slice::<f32>(s1, l1)?,
                slice::<f32>(s2, l2)?,
                slice::<f32>(s3, l3)?,
                dims,
                per_batch,
                1.0,
            )),
            DType::F64 => f64::to_cpu_storage_owned(rope_rows(
                slice::<f64>(s1, l1)?,
                slice::<f64>(s2, l2)?,
                slice::<f64>(s3, l3)?,
                dims,
                per_batch,
                1.0,
            )),
            d => candle_core::bail!("rope: unsupported dtype {d:?}"),
        };
        Ok((out, l1.shape().clone()))
    }

    /// A rotation's transpose is the rotation back: dx = rope(g, cos, -sin). cos and sin are
    /// constants.
    fn bwd(
        &self,
        x: &Tensor,
        cos: &Tensor,
        sin: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        fn run<T: Float>(x: &Tensor, cos: &Tensor, sin: &Tensor, grad: &Tensor) -> Result<Tensor> {
            let (b, h, t, d) = x.dims4()?;
            let per_batch = cos.rank() == 3;
            let dx = with_values::<T, _>(grad, |g| {
                with_values::<T, _>(cos, |c| {
                    with_values::<T, _>(sin, |s| {
                        Ok(rope_rows(g, c, s, (b, h, t, d), per_batch, -T::ONE))
                    })
                })
            })?;
            tensor(dx, x.shape(), x)
        }
        let grad = grad.to_dtype(x.dtype())?;
        let dx = match x.dtype() {
            DType::F32 => run::<f32>(x, cos, sin, &grad)?,
            _ => run::<f64>(x, cos, sin, &grad)?,
        };
        Ok((Some(dx), None, None))
    }
}

/// Differentiable rotary embedding, x (batch, heads, seq, head_dim) with cos and sin
/// (batch, seq, head_dim / 2) or (seq, head_dim / 2); None where the kernel does not apply.
pub fn rope(x: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Option<Tensor>> {
    if !supported(x) || cos.dtype() != x.dtype() || sin.dtype() != x.dtype() || x.rank() != 4 {
        return Ok(None);
    }
    if x.dim(3)? % 2 != 0 {
        return Ok(None);
    }
    Ok(Some(x.contiguous()?.apply_op3(
        &cos.contiguous()?,
        &sin.contiguous()?,
        Rope,
    )?))
}

// ---------------------------------------------------------------------------------------------
// linear layers with a frozen weight

/// `x W^T` whose backward computes only dx: candle's matmul backward also computes the
/// gradient of a frozen operand (a (out, in) gemm and buffer per layer, thrown away), which
/// for LoRA is a third of the backward. The product is computed outside the graph and handed
/// to the op, which passes it through once.
struct FrozenLinear {
    weight: Tensor,
    product: std::sync::Mutex<Option<Tensor>>,
}

impl CustomOp1 for FrozenLinear {
    fn name(&self) -> &'static str {
        "frozen-linear"
    }

    fn cpu_fwd(&self, _s: &CpuStorage, _l: &Layout) -> Result<(CpuStorage, Shape)> {
        let y = self
            .product
            .lock()
            .map_err(|_| candle_core::Error::Msg("frozen-linear: poisoned".into()))?
            .take()
            .ok_or_else(|| candle_core::Error::Msg("frozen-linear: run twice".into()))?;
        let shape = y.shape().clone();
        let (storage, layout) = y.storage_and_layout();
        let out = match (&*storage, layout.contiguous_offsets()) {
            (Storage::Cpu(CpuStorage::F32(v)), Some((a, b))) => CpuStorage::F32(v[a..b].to_vec()),
            (Storage::Cpu(CpuStorage::F64(v)), Some((a, b))) => CpuStorage::F64(v[a..b].to_vec()),
            _ => candle_core::bail!("frozen-linear: expected a contiguous f32/f64 CPU product"),
        };
        Ok((out, shape))
    }

    fn bwd(&self, _arg: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        Ok(Some(grad.broadcast_matmul(&self.weight)?))
    }
}

/// `x W^T` for a weight that takes no gradient while `x` does, or None otherwise.
pub fn frozen_linear_t(x: &Tensor, weight: &Tensor) -> Result<Option<Tensor>> {
    if !(x.track_op() && !weight.track_op() && supported(x) && x.dtype() == weight.dtype()) {
        return Ok(None);
    }
    let product = x.detach().broadcast_matmul(&weight.t()?)?.contiguous()?;
    let op = FrozenLinear {
        weight: weight.clone(),
        product: std::sync::Mutex::new(Some(product)),
    };
    Ok(Some(x.apply_op1(op)?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::max_abs_diff;
    use candle_core::{Device, Var, D};

    /// Asserts that `fused` and `composed` agree in value (within `tol`) and in the gradients of
    /// one random weighting of their outputs with respect to each of `vars` (within 10 `tol`).
    fn assert_same(what: &str, fused: &Tensor, composed: &Tensor, vars: &[&Var], tol: f64) {
        let d = max_abs_diff(fused, composed);
        assert!(d < tol, "{what}: value differs by {d}");
        let weights = Tensor::randn(0f32, 1.0, fused.shape(), fused.device())
            .and_then(|w| w.to_dtype(fused.dtype()))
            .unwrap();
        let grads = |y: &Tensor| {
            (y * &weights)
                .and_then(|y| y.sum_all())
                .and_then(|y| y.backward())
                .unwrap()
        };
        let (ga, gb) = (grads(fused), grads(composed));
        for v in vars {
            let d = max_abs_diff(
                ga.get(v.as_tensor()).unwrap(),
                gb.get(v.as_tensor()).unwrap(),
            );
            assert!(d < tol * 10.0, "{what}: gradient differs by {d}");
        }
    }

    #[test]
    fn frozen_linear_passes_the_input_gradient_only() {
        let dev = Device::Cpu;
        let x = Var::from_tensor(&Tensor::randn(0f32, 1.0, (2, 3, 8), &dev).unwrap()).unwrap();
        let w = Tensor::randn(0f32, 1.0, (5, 8), &dev).unwrap();
        let y = frozen_linear_t(x.as_tensor(), &w).unwrap().unwrap();
        let plain = x.as_tensor().broadcast_matmul(&w.t().unwrap()).unwrap();
        assert_same("frozen linear", &y, &plain, &[&x], 1e-6);
        // No gradient is made for the frozen weight.
        let g = y.sum_all().unwrap().backward().unwrap();
        assert!(g.get(&w).is_none());
        // A trainable weight or an input without gradient: not this op's case.
        let wv = Var::from_tensor(&w).unwrap();
        assert!(frozen_linear_t(x.as_tensor(), wv.as_tensor())
            .unwrap()
            .is_none());
        assert!(frozen_linear_t(&plain.detach(), &w).unwrap().is_none());
    }

    /// Forward values and gradients of every kernel equal the composed candle ops'.
    #[test]
    fn kernels_match_the_composed_ops() {
        let dev = Device::Cpu;
        for dtype in [DType::F32, DType::F64] {
            let tol = if dtype == DType::F32 { 2e-5 } else { 1e-12 };
            let rand = |shape: &[usize]| {
                Tensor::randn(0f32, 1.0, shape, &dev)
                    .unwrap()
                    .to_dtype(dtype)
                    .unwrap()
            };

            // rms_norm on (2, 3, 8) with a weight.
            let x = Var::from_tensor(&rand(&[2, 3, 8])).unwrap();
            let w = Var::from_tensor(&rand(&[8])).unwrap();
            let fused = rms_norm(x.as_tensor(), w.as_tensor(), 1e-5)
                .unwrap()
                .unwrap();
            let xs = x.as_tensor();
            let composed = xs
                .broadcast_div(
                    &(xs.sqr().unwrap().mean_keepdim(D::Minus1).unwrap() + 1e-5)
                        .unwrap()
                        .sqrt()
                        .unwrap(),
                )
                .unwrap()
                .broadcast_mul(w.as_tensor())
                .unwrap();
            assert_same("rms_norm", &fused, &composed, &[&x, &w], tol);

            // rope on (2, 3, 4, 8), per-batch angles and shared angles.
            for per_batch in [true, false] {
                let x = Var::from_tensor(&rand(&[2, 3, 4, 8])).unwrap();
                let angles: &[usize] = if per_batch { &[2, 4, 4] } else { &[4, 4] };
                let theta = rand(angles);
                let (cos, sin) = (theta.cos().unwrap(), theta.sin().unwrap());
                let fused = rope(x.as_tensor(), &cos, &sin).unwrap().unwrap();
                let (c, s) = if per_batch {
                    (cos.clone(), sin.clone())
                } else {
                    (
                        cos.unsqueeze(0).unwrap().repeat((2, 1, 1)).unwrap(),
                        sin.unsqueeze(0).unwrap().repeat((2, 1, 1)).unwrap(),
                    )
                };
                let composed = {
                    let xs = x.as_tensor();
                    let c = Tensor::cat(&[&c, &c], D::Minus1)
                        .unwrap()
                        .unsqueeze(1)
                        .unwrap();
                    let s = Tensor::cat(&[&s, &s], D::Minus1)
                        .unwrap()
                        .unsqueeze(1)
                        .unwrap();
                    let x1 = xs.narrow(D::Minus1, 0, 4).unwrap();
                    let x2 = xs.narrow(D::Minus1, 4, 4).unwrap();
                    let rot = Tensor::cat(&[&x2.neg().unwrap(), &x1], D::Minus1).unwrap();
                    (xs.broadcast_mul(&c).unwrap() + rot.broadcast_mul(&s).unwrap()).unwrap()
                };
                assert_same("rope", &fused, &composed, &[&x], tol);
            }

            // silu(gate) * up on (2, 3, 5000): more than one parallel block.
            let g = Var::from_tensor(&(rand(&[2, 3, 5000]) * 4.0).unwrap()).unwrap();
            let u = Var::from_tensor(&rand(&[2, 3, 5000])).unwrap();
            let fused = silu_mul(g.as_tensor(), u.as_tensor()).unwrap().unwrap();
            let composed = (g.as_tensor().silu().unwrap() * u.as_tensor()).unwrap();
            if dtype == DType::F64 {
                assert_eq!(
                    max_abs_diff(&fused, &composed),
                    0.0,
                    "silu-mul: values differ"
                );
            }
            assert_same("silu-mul", &fused, &composed, &[&g, &u], tol);

            // softmax on (3, 5, 7), and log-softmax at targets on (6, 50).
            let x = Var::from_tensor(&rand(&[3, 5, 7])).unwrap();
            let fused = softmax_last_dim(x.as_tensor()).unwrap().unwrap();
            let composed = candle_nn::ops::softmax(x.as_tensor(), D::Minus1).unwrap();
            assert_same("softmax", &fused, &composed, &[&x], tol);

            let x = Var::from_tensor(&(rand(&[6, 50]) * 3.0).unwrap()).unwrap();
            let targets: Vec<u32> = vec![0, 49, 7, 7, 20, 33];
            let fused = target_logprobs(x.as_tensor(), &targets).unwrap().unwrap();
            let idx = Tensor::from_vec(targets.clone(), (6, 1), &dev).unwrap();
            let composed = candle_nn::ops::log_softmax(x.as_tensor(), D::Minus1)
                .unwrap()
                .gather(&idx, 1)
                .unwrap()
                .squeeze(1)
                .unwrap();
            assert_same("target log-probs", &fused, &composed, &[&x], tol);
        }
    }
}
