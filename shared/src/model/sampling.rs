//! Choosing the next token from logits: temperature, top-k, top-p (nucleus) exactly as
//! transformers' logits warpers apply them, drawn with a per-row random stream so that what a
//! row samples depends only on its own seed, never on the batch it runs in.

/// Sampling settings; temperature 0 means greedy.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct SamplingParams {
    pub temperature: f64,
    pub top_p: f64,
    /// 0 keeps every token.
    pub top_k: usize,
}

impl Default for SamplingParams {
    fn default() -> Self {
        SamplingParams {
            temperature: 0.7,
            top_p: 0.9,
            top_k: 0,
        }
    }
}

/// xoshiro256++ seeded through splitmix64: small, fast and identical on every platform.
#[derive(Debug, Clone)]
pub struct RowRng {
    s: [u64; 4],
}

impl RowRng {
    pub fn new(seed: u64) -> Self {
        let mut z = seed;
        let mut next = || {
            z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut x = z;
            x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            x ^ (x >> 31)
        };
        RowRng {
            s: [next(), next(), next(), next()],
        }
    }

    pub fn next_u64(&mut self) -> u64 {
        let s = &mut self.s;
        let result = (s[0].wrapping_add(s[3])).rotate_left(23).wrapping_add(s[0]);
        let t = s[1] << 17;
        s[2] ^= s[0];
        s[3] ^= s[1];
        s[1] ^= s[2];
        s[0] ^= s[3];
        s[2] ^= t;
        s[3] = s[3].rotate_left(45);
        result
    }

    /// Uniform in [0, 1) with 53 random bits.
    pub fn uniform(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }
}

/// The distribution sampling draws from: (token, probability) over the tokens that survive
/// temperature, top-k and top-p, renormalised. Greedy gives the argmax with probability 1.
pub fn sampling_distribution(logits: &[f32], params: &SamplingParams) -> Vec<(u32, f64)> {
    if params.temperature <= 0.0 {
        return vec![(argmax(logits), 1.0)];
    }
    let mut scored: Vec<(u32, f64)> = logits
        .iter()
        .enumerate()
        .map(|(i, &l)| (i as u32, l as f64 / params.temperature))
        .collect();
    // Descending by logit; ties keep the lower token id first (a stable order).
    scored.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
    if params.top_k > 0 && params.top_k < scored.len() {
        // transformers keeps every token whose logit ties the k-th.
        let kth = scored[params.top_k - 1].1;
        let keep = scored.iter().take_while(|(_, l)| *l >= kth).count();
        scored.truncate(keep);
    }
    let max = scored[0].1;
    let mut probs: Vec<(u32, f64)> = scored.iter().map(|&(t, l)| (t, (l - max).exp())).collect();
    let total: f64 = probs.iter().map(|p| p.1).sum();
    probs.iter_mut().for_each(|p| p.1 /= total);
    if params.top_p < 1.0 {
        // TopPLogitsWarper: in ascending order, drop tokens while the cumulative mass stays at
        // or below 1 - top_p; the most likely token always survives.
        let mut cum = 0.0;
        let mut drop = 0;
        for p in probs.iter().rev() {
            cum += p.1;
            if cum <= 1.0 - params.top_p {
                drop += 1;
            } else {
                break;
            }
        }
        let keep = (probs.len() - drop).max(1);
        probs.truncate(keep);
        let total: f64 = probs.iter().map(|p| p.1).sum();
        probs.iter_mut().for_each(|p| p.1 /= total);
    }
    probs
}

/// Draws the next token.
pub fn sample(logits: &[f32], params: &SamplingParams, rng: &mut RowRng) -> u32 {
    if params.temperature <= 0.0 {
        return argmax(logits);
    }
    let dist = sampling_distribution(logits, params);
    let u = rng.uniform();
    let mut cum = 0.0;
    for &(t, p) in &dist {
        cum += p;
        if u < cum {
            return t;
        }
    }
    dist[dist.len() - 1].0
}

/// log-softmax of the raw logits at `token` (the `sample_logprob` diagnostic).
pub fn raw_logprob(logits: &[f32], token: u32) -> f64 {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
    let lse = max
        + logits
            .iter()
            .map(|&l| (l as f64 - max).exp())
            .sum::<f64>()
            .ln();
    logits[token as usize] as f64 - lse
}

pub fn argmax(logits: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &l) in logits.iter().enumerate() {
        if l > logits[best] {
            best = i;
        }
    }
    best as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rng_streams_are_reproducible_and_uniform() {
        let mut a = RowRng::new(42);
        let mut b = RowRng::new(42);
        let xs: Vec<f64> = (0..10_000).map(|_| a.uniform()).collect();
        assert!(xs.iter().all(|&x| (0.0..1.0).contains(&x)));
        assert_eq!(xs[..5], (0..5).map(|_| b.uniform()).collect::<Vec<_>>()[..]);
        let mean = xs.iter().sum::<f64>() / xs.len() as f64;
        assert!((mean - 0.5).abs() < 0.01, "{mean}");
        assert_ne!(RowRng::new(1).next_u64(), RowRng::new(2).next_u64());
    }

    #[test]
    fn top_p_keeps_the_smallest_nucleus() {
        // probs 0.5, 0.3, 0.15, 0.05 (logits = ln p, temperature 1).
        let logits: Vec<f32> = [0.5f32, 0.3, 0.15, 0.05].iter().map(|p| p.ln()).collect();
        let p = SamplingParams {
            temperature: 1.0,
            top_p: 0.75,
            top_k: 0,
        };
        // Ascending cumulative mass: 0.05 and 0.20 are <= 0.25 (dropped), 0.35 is not.
        let d = sampling_distribution(&logits, &p);
        assert_eq!(d.iter().map(|x| x.0).collect::<Vec<_>>(), vec![0, 1]);
        assert!((d[0].1 - 0.5 / 0.8).abs() < 1e-6);
        let p = SamplingParams {
            temperature: 1.0,
            top_p: 1.0,
            top_k: 2,
        };
        let d = sampling_distribution(&logits, &p);
        assert_eq!(d.len(), 2);
        assert!((d[0].1 - 0.5 / 0.8).abs() < 1e-6);
    }

    #[test]
    fn greedy_is_argmax() {
        let p = SamplingParams {
            temperature: 0.0,
            top_p: 1.0,
            top_k: 0,
        };
        assert_eq!(sample(&[0.1, 3.0, -1.0], &p, &mut RowRng::new(0)), 1);
    }
}
