//! AdamW as `torch.optim.AdamW` (single-tensor path, amsgrad off), on f32 slices.

use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use super::f32_slice::CHUNK;

/// AdamW hyperparameters; the defaults are PyTorch's.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct AdamWConfig {
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub weight_decay: f64,
}

impl Default for AdamWConfig {
    fn default() -> Self {
        Self {
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.01,
        }
    }
}

/// One AdamW update of a parameter in place; `step` counts from 1 (the update being made).
///
/// ```text
/// p <- p * (1 - lr * wd)                       decoupled weight decay
/// m <- b1 m + (1 - b1) g
/// v <- b2 v + (1 - b2) g^2
/// p <- p - (lr / (1 - b1^t)) * m / (sqrt(v) / sqrt(1 - b2^t) + eps)
/// ```
///
/// The last line is `p - lr * m_hat / (sqrt(v_hat) + eps)` arranged as PyTorch computes it.
pub fn adamw_update(
    config: &AdamWConfig,
    step: u64,
    lr: f64,
    p: &mut [f32],
    g: &[f32],
    m: &mut [f32],
    v: &mut [f32],
) {
    debug_assert!(p.len() == g.len() && p.len() == m.len() && p.len() == v.len());
    let t = step as f64;
    let bias_correction1 = 1.0 - config.beta1.powf(t);
    let bias_correction2_sqrt = (1.0 - config.beta2.powf(t)).sqrt();
    let decay = (1.0 - lr * config.weight_decay) as f32;
    let step_size = (lr / bias_correction1) as f32;
    let bias_correction2_sqrt = bias_correction2_sqrt as f32;
    let (b1, b2, eps) = (config.beta1 as f32, config.beta2 as f32, config.eps as f32);
    let (one_minus_b1, one_minus_b2) = ((1.0 - config.beta1) as f32, (1.0 - config.beta2) as f32);
    p.par_chunks_mut(CHUNK)
        .zip(g.par_chunks(CHUNK))
        .zip(m.par_chunks_mut(CHUNK))
        .zip(v.par_chunks_mut(CHUNK))
        .for_each(|(((p, g), m), v)| {
            for (((p, &g), m), v) in p.iter_mut().zip(g).zip(m.iter_mut()).zip(v.iter_mut()) {
                *p *= decay;
                *m = b1 * *m + one_minus_b1 * g;
                *v = b2 * *v + one_minus_b2 * g * g;
                let denom = v.sqrt() / bias_correction2_sqrt + eps;
                *p -= step_size * *m / denom;
            }
        });
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One step from m = v = 0 (t = 1) and a second step, against the formulas written out.
    #[test]
    fn two_steps_match_the_formula() {
        let config = AdamWConfig::default();
        let (lr, wd, b1, b2, eps) = (1e-2, 0.01, 0.9, 0.999, 1e-8);
        let p0 = [1.0f32, -2.0, 0.5, 0.0];
        let g1 = [0.1f32, -0.3, 0.0, 2.0];
        let g2 = [-0.2f32, -0.1, 0.4, 2.0];
        let mut p = p0;
        let (mut m, mut v) = ([0f32; 4], [0f32; 4]);
        adamw_update(&config, 1, lr, &mut p, &g1, &mut m, &mut v);
        for i in 0..4 {
            let (p0, g) = (p0[i] as f64, g1[i] as f64);
            // t = 1: m_hat = g, v_hat = g^2, so the step is lr * g / (|g| + eps).
            let expected = p0 * (1.0 - lr * wd) - lr * g / (g.abs() + eps);
            assert!(
                (p[i] as f64 - expected).abs() < 1e-6,
                "{i}: {} vs {expected}",
                p[i]
            );
            assert!((m[i] as f64 - (1.0 - b1) * g).abs() < 1e-7);
            assert!((v[i] as f64 - (1.0 - b2) * g * g).abs() < 1e-9);
        }
        let p1 = p;
        adamw_update(&config, 2, lr, &mut p, &g2, &mut m, &mut v);
        for i in 0..4 {
            let (ga, gb) = (g1[i] as f64, g2[i] as f64);
            let m2 = b1 * (1.0 - b1) * ga + (1.0 - b1) * gb;
            let v2 = b2 * (1.0 - b2) * ga * ga + (1.0 - b2) * gb * gb;
            let (m_hat, v_hat) = (m2 / (1.0 - b1 * b1), v2 / (1.0 - b2 * b2));
            let expected = p1[i] as f64 * (1.0 - lr * wd) - lr * m_hat / (v_hat.sqrt() + eps);
            assert!(
                (p[i] as f64 - expected).abs() < 1e-6,
                "{i}: {} vs {expected}",
                p[i]
            );
        }
        // Hand-computed: p = 1 - 1e-4 - 1e-2 * 0.1 / (0.1 + 1e-8) = 0.9899 (+1e-9).
        assert!((p1[0] - 0.9899).abs() < 1e-6);
    }

    #[test]
    fn long_slices_are_updated_everywhere() {
        // More than one rayon chunk, with a ragged tail.
        let n = 3 * CHUNK + 17;
        let config = AdamWConfig {
            weight_decay: 0.0,
            ..Default::default()
        };
        let mut p = vec![1.0f32; n];
        let g: Vec<f32> = (0..n)
            .map(|i| if i % 2 == 0 { 1.0 } else { -1.0 })
            .collect();
        let (mut m, mut v) = (vec![0f32; n], vec![0f32; n]);
        adamw_update(&config, 1, 0.5, &mut p, &g, &mut m, &mut v);
        for (i, p) in p.iter().enumerate() {
            let expected = if i % 2 == 0 { 0.5 } else { 1.5 };
            assert!((p - expected).abs() < 1e-6, "{i}: {p}");
        }
    }
}
