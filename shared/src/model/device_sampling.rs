//! Choosing the next token with tensor ops on the model's device: only the chosen ids and their
//! log-probs cross to the host, never batch x vocabulary logits. It draws what `sampling.rs`
//! draws on the host: the same warpers (temperature, top-k with ties kept, top-p dropping
//! ascending by weight, ties by descending id), the inverse CDF in token-id order, and each
//! row's uniform number from its own host-side stream. On the CPU it picks the same ids; sums
//! taken in another order can only matter for a draw within rounding of a boundary.
//!
//! Without a device sort (candle's sorts one row per block, too small for a vocabulary), the
//! top-k and top-p thresholds are found by bisection on the weights: every weight is an f32 in
//! (0, 1], and 34 halvings of [2^-150, 2] in log scale leave an interval narrower than one f32
//! step, which holds exactly the threshold weight.

use candle_core::{DType, Device, Tensor, D};

use super::sampling::SamplingParams;
use super::Result;

/// Halvings of [2^-150, 2] in log scale that isolate one f32 value (151 / 2^34 < 2^-25).
const HALVINGS: usize = 34;
/// Columns per block of the two-level prefix sum.
const BLOCK: usize = 256;

/// For logits (rows, vocab): the chosen token of each row and log-softmax of the raw logits at
/// it. `uniforms` holds each row's draw in [0, 1) (ignored, and may be empty, when greedy).
pub fn sample_on_device(
    logits: &Tensor,
    params: &SamplingParams,
    uniforms: &[f64],
) -> Result<Vec<(u32, f64)>> {
    let logits = logits.to_dtype(DType::F32)?;
    let max = logits.max_keepdim(D::Minus1)?;
    let ids = if params.temperature <= 0.0 {
        logits.argmax_keepdim(D::Minus1)?
    } else {
        let weights = warped_weights(&logits, &max, params)?;
        let rows = logits.dim(0)?;
        let u = Tensor::from_slice(&uniforms[..rows], (rows, 1), logits.device())?;
        inverse_cdf(&weights, &u)?
    };
    // log-softmax at the chosen ids, in f64 and in the order `raw_logprob` sums.
    let l64 = logits.to_dtype(DType::F64)?;
    let max64 = max.to_dtype(DType::F64)?;
    let lse = (l64
        .broadcast_sub(&max64)?
        .exp()?
        .sum_keepdim(D::Minus1)?
        .log()?
        + &max64)?;
    let lp = (l64.gather(&ids, D::Minus1)? - lse)?;
    let picked = Tensor::cat(&[ids.to_dtype(DType::F64)?, lp], 1)?.to_vec2::<f64>()?;
    Ok(picked.into_iter().map(|r| (r[0] as u32, r[1])).collect())
}

/// exp((l - max) / T) in f32 as the host computes it, widened to f64, with the tokens top-k and
/// top-p drop set to 0.
fn warped_weights(logits: &Tensor, max: &Tensor, params: &SamplingParams) -> Result<Tensor> {
    let inv_t = (1.0 / params.temperature) as f32;
    let w = logits
        .broadcast_sub(max)?
        .affine(inv_t as f64, 0.0)?
        .exp()?
        .to_dtype(DType::F64)?;
    let vocab = w.dim(1)?;
    let mut w = w;
    if params.top_k > 0 && params.top_k < vocab {
        // The k-th largest weight: the largest v with at least k weights >= v.
        let k = params.top_k as f64;
        let floor = threshold(&w, |v| {
            Ok(w.broadcast_ge(v)?
                .to_dtype(DType::F64)?
                .sum_keepdim(1)?
                .ge(k)?)
        })?;
        w = w.broadcast_ge(&floor)?.where_cond(&w, &w.zeros_like()?)?;
    }
    if params.top_p < 1.0 {
        w = top_p(&w, params.top_p)?;
    }
    Ok(w)
}

/// Drops, ascending by weight (ties: highest id first), the tokens whose cumulative weight stays
/// at or below (1 - top_p) of the total.
fn top_p(w: &Tensor, top_p: f64) -> Result<Tensor> {
    let zeros = w.zeros_like()?;
    let cut = w.sum_keepdim(1)?.affine(1.0 - top_p, 0.0)?;
    let below = |v: &Tensor| -> Result<Tensor> {
        Ok(w.broadcast_lt(v)?.where_cond(w, &zeros)?.sum_keepdim(1)?)
    };
    // a: the largest weight with the mass strictly below it at or under the cut.
    let a = threshold(w, |v| Ok(below(v)?.le(&cut)?))?;
    let under = below(&a)?;
    // Of the tokens tied at a, the first m in drop order go while the mass stays under the cut.
    let tied = w.broadcast_eq(&a)?.to_dtype(DType::F64)?;
    let count = tied.sum_keepdim(1)?;
    let m = ((cut - under)? / &a)?
        .floor()?
        .maximum(0.0)?
        .minimum(&(count.clone() - 1.0)?)?;
    // Ties with a larger id than a tied token: count - (inclusive prefix count).
    let higher = count.broadcast_sub(&prefix_sum(&tied)?)?;
    let drop_tie = (tied.ne(0.0)? * higher.broadcast_lt(&m)?)?;
    let keep = (w.broadcast_ge(&a)? * drop_tie.eq(0u8)?)?;
    Ok(keep.where_cond(w, &zeros)?)
}

/// Per row, the largest weight value v (an entry of `w`, or 0 when none qualifies) for which
/// `holds(v)` is true, where `holds` is true for small v and false from some point on.
fn threshold(w: &Tensor, holds: impl Fn(&Tensor) -> Result<Tensor>) -> Result<Tensor> {
    let rows = w.dim(0)?;
    let dev = w.device();
    let full = |x: f64| Tensor::full(x, (rows, 1), dev);
    let (mut lo, mut hi) = (full(2f64.powi(-150))?, full(2.0)?);
    let none = holds(&lo)?.eq(0u8)?;
    for _ in 0..HALVINGS {
        let mid = (&lo * &hi)?.sqrt()?;
        let ok = holds(&mid)?;
        lo = ok.where_cond(&mid, &lo)?;
        hi = ok.where_cond(&hi, &mid)?;
    }
    // The one weight value in [lo, hi): the smallest weight at or above lo.
    let above = w
        .broadcast_ge(&lo)?
        .where_cond(w, &Tensor::full(3.0, w.shape(), dev)?)?;
    let value = above.min_keepdim(1)?;
    Ok(none.where_cond(&full(0.0)?, &value)?)
}

/// The inverse CDF in token-id order: the first token whose cumulative weight exceeds u times
/// the total, else the last kept one. Returns (rows, 1) u32 ids.
fn inverse_cdf(w: &Tensor, u: &Tensor) -> Result<Tensor> {
    let target = (w.sum_keepdim(1)? * u)?;
    let cum = prefix_sum(w)?;
    let below = cum
        .broadcast_le(&target)?
        .to_dtype(DType::F64)?
        .sum_keepdim(1)?;
    let ids = Tensor::arange(0u32, w.dim(1)? as u32, w.device())?
        .to_dtype(DType::F64)?
        .unsqueeze(0)?;
    let last = w
        .ne(0.0)?
        .where_cond(&ids.broadcast_as(w.shape())?, &w.zeros_like()?)?
        .max_keepdim(1)?;
    Ok(below.minimum(&last)?.to_dtype(DType::U32)?)
}

/// Inclusive prefix sum along each row of (rows, n) f64, in two levels of triangular products
/// (candle's `cumsum` builds an n x n matrix, too big for a vocabulary).
fn prefix_sum(x: &Tensor) -> Result<Tensor> {
    let (rows, n) = x.dims2()?;
    let blocks = n.div_ceil(BLOCK);
    let dev = x.device();
    let x = if blocks * BLOCK > n {
        let pad = Tensor::zeros((rows, blocks * BLOCK - n), x.dtype(), dev)?;
        Tensor::cat(&[x, &pad], 1)?
    } else {
        x.clone()
    };
    let within = x
        .reshape((rows * blocks, BLOCK))?
        .matmul(&upper(BLOCK, true, dev)?)?;
    let sums = within.narrow(1, BLOCK - 1, 1)?.reshape((rows, blocks))?;
    let before = sums.matmul(&upper(blocks, false, dev)?)?;
    Ok(within
        .reshape((rows, blocks, BLOCK))?
        .broadcast_add(&before.unsqueeze(2)?)?
        .reshape((rows, blocks * BLOCK))?
        .narrow(1, 0, n)?)
}

/// (n, n) f64 with ones where row < col (and on the diagonal when `diagonal`).
fn upper(n: usize, diagonal: bool, dev: &Device) -> Result<Tensor> {
    let data: Vec<f64> = (0..n * n)
        .map(|i| {
            let (r, c) = (i / n, i % n);
            if r < c || (diagonal && r == c) {
                1.0
            } else {
                0.0
            }
        })
        .collect();
    Ok(Tensor::from_vec(data, (n, n), dev)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::sampling::{raw_logprob, sample, RowRng};

    /// Rows of logits: smooth ones, and ones rounded to quarters so that many tokens tie (as
    /// bf16 logits do), which exercises the tie rules of top-k and top-p.
    fn logits(rows: usize, vocab: usize, seed: u64) -> Vec<Vec<f32>> {
        let mut rng = RowRng::new(seed);
        (0..rows)
            .map(|r| {
                (0..vocab)
                    .map(|_| {
                        let x = (rng.uniform() * 8.0 - 4.0) as f32;
                        if r % 2 == 1 {
                            (x * 4.0).round() / 4.0
                        } else {
                            x
                        }
                    })
                    .collect()
            })
            .collect()
    }

    #[test]
    fn device_choice_equals_the_host_choice() {
        let (rows, vocab) = (6, 700);
        let settings = [
            (0.0, 1.0, 0),
            (1.0, 1.0, 0),
            (0.7, 0.9, 0),
            (1.3, 0.5, 0),
            (1.0, 1.0, 40),
            (0.8, 0.95, 25),
            (2.0, 0.3, 300),
        ];
        for (case, &(temperature, top_p, top_k)) in settings.iter().enumerate() {
            let params = SamplingParams {
                temperature,
                top_p,
                top_k,
            };
            for step in 0..12u64 {
                let data = logits(rows, vocab, 1000 * case as u64 + step);
                let mut host_rngs: Vec<RowRng> = (0..rows as u64)
                    .map(|r| RowRng::new(step * 31 + r))
                    .collect();
                let mut dev_rngs = host_rngs.clone();
                let want: Vec<(u32, f64)> = data
                    .iter()
                    .zip(&mut host_rngs)
                    .map(|(row, rng)| {
                        let tok = sample(row, &params, rng);
                        (tok, raw_logprob(row, tok))
                    })
                    .collect();
                let uniforms: Vec<f64> = if temperature > 0.0 {
                    dev_rngs.iter_mut().map(|r| r.uniform()).collect()
                } else {
                    Vec::new()
                };
                let flat: Vec<f32> = data.concat();
                let t = Tensor::from_vec(flat, (rows, vocab), &Device::Cpu).unwrap();
                let got = sample_on_device(&t, &params, &uniforms).unwrap();
                assert_eq!(
                    got, want,
                    "T {temperature} top-p {top_p} top-k {top_k} step {step}"
                );
            }
        }
    }

    #[test]
    fn prefix_sum_matches_a_running_sum() {
        let x: Vec<f64> = (0..3 * 600).map(|i| ((i * 37) % 11) as f64).collect();
        let t = Tensor::from_vec(x.clone(), (3, 600), &Device::Cpu).unwrap();
        let got = prefix_sum(&t).unwrap().to_vec2::<f64>().unwrap();
        for r in 0..3 {
            let mut acc = 0.0;
            for c in 0..600 {
                acc += x[r * 600 + c];
                assert_eq!(got[r][c], acc);
            }
        }
    }
}
