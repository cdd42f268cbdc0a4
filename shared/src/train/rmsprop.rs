//! RMSprop as `torch.optim.RMSprop` (no momentum, not centered), on f32 slices.

use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use super::f32_slice::CHUNK;

/// RMSprop hyperparameters; the defaults are PyTorch's.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct RmsPropConfig {
    pub alpha: f64,
    pub eps: f64,
    /// L2 penalty added to the gradient (PyTorch's RMSprop has no decoupled decay).
    pub weight_decay: f64,
}

impl Default for RmsPropConfig {
    fn default() -> Self {
        Self {
            alpha: 0.99,
            eps: 1e-8,
            weight_decay: 0.0,
        }
    }
}

/// One RMSprop update of a parameter in place:
///
/// ```text
/// g <- g + wd * p                              (only when wd != 0)
/// v <- alpha v + (1 - alpha) g^2
/// p <- p - lr * g / (sqrt(v) + eps)
/// ```
pub fn rmsprop_update(config: &RmsPropConfig, lr: f64, p: &mut [f32], g: &[f32], v: &mut [f32]) {
    debug_assert!(p.len() == g.len() && p.len() == v.len());
    let (alpha, one_minus_alpha) = (config.alpha as f32, (1.0 - config.alpha) as f32);
    let (eps, wd, lr) = (config.eps as f32, config.weight_decay as f32, lr as f32);
    p.par_chunks_mut(CHUNK)
        .zip(g.par_chunks(CHUNK))
        .zip(v.par_chunks_mut(CHUNK))
        .for_each(|((p, g), v)| {
            for ((p, &g), v) in p.iter_mut().zip(g).zip(v.iter_mut()) {
                let g = if wd != 0.0 { g + wd * *p } else { g };
                *v = alpha * *v + one_minus_alpha * g * g;
                *p -= lr * g / (v.sqrt() + eps);
            }
        });
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Three steps against the recursion written out in f64.
    #[test]
    fn three_steps_match_the_formula() {
        let config = RmsPropConfig::default();
        let (lr, alpha, eps) = (1e-3, 0.99, 1e-8);
        let grads = [[0.5f32, -1.0, 0.0], [0.25, -1.0, 3.0], [-0.5, 2.0, 3.0]];
        let mut p = [1.0f32, 2.0, -3.0];
        let mut v = [0f32; 3];
        let mut p_ref = [1.0f64, 2.0, -3.0];
        let mut v_ref = [0f64; 3];
        for g in &grads {
            rmsprop_update(&config, lr, &mut p, g, &mut v);
            for i in 0..3 {
                let g = g[i] as f64;
                v_ref[i] = alpha * v_ref[i] + (1.0 - alpha) * g * g;
                p_ref[i] -= lr * g / (v_ref[i].sqrt() + eps);
            }
            for i in 0..3 {
                assert!((p[i] as f64 - p_ref[i]).abs() < 1e-6, "{p:?} vs {p_ref:?}");
                assert!((v[i] as f64 - v_ref[i]).abs() < 1e-7, "{v:?} vs {v_ref:?}");
            }
        }
        // Hand-computed first step of element 0: v = 0.01 * 0.25 = 0.0025, sqrt = 0.05,
        // p = 1 - 1e-3 * 0.5 / 0.05 = 0.99 (the first RMSprop step is lr * g / (0.1 |g|)).
        let mut p = [1.0f32];
        let mut v = [0f32];
        rmsprop_update(&config, lr, &mut p, &[0.5], &mut v);
        assert!((p[0] - 0.99).abs() < 1e-6 && (v[0] - 0.0025).abs() < 1e-9);
    }

    #[test]
    fn weight_decay_is_added_to_the_gradient() {
        let config = RmsPropConfig {
            weight_decay: 0.1,
            ..Default::default()
        };
        let mut p = [2.0f32];
        let mut v = [0f32];
        rmsprop_update(&config, 1e-2, &mut p, &[0.3], &mut v);
        let g = 0.3 + 0.1 * 2.0;
        let v_ref = 0.01 * g * g;
        let p_ref = 2.0 - 1e-2 * g / (f64::sqrt(v_ref) + 1e-8);
        assert!((p[0] as f64 - p_ref).abs() < 1e-6);
    }
}
