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

/// Unnormalised weights exp((l_i - max) / T) of the tokens that survive top-k and top-p, 0 for
/// the others, with their sum. The warpers apply as transformers applies them: temperature,
/// then top-k (ties with the k-th kept), then top-p (TopPLogitsWarper: in ascending order,
/// drop tokens while the cumulative mass stays at or below 1 - top_p; the most likely token
/// always survives).
fn nucleus_weights(logits: &[f32], params: &SamplingParams) -> (Vec<f64>, f64) {
    let t = params.temperature;
    let mut floor = f32::NEG_INFINITY;
    if params.top_k > 0 && params.top_k < logits.len() {
        let mut copy = logits.to_vec();
        let (_, kth, _) = copy.select_nth_unstable_by(params.top_k - 1, |a, b| b.total_cmp(a));
        floor = *kth;
    }
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let inv_t = (1.0 / t) as f32;
    let mut w: Vec<f64> = logits
        .iter()
        .map(|&l| {
            if l >= floor {
                ((l - max) * inv_t).exp() as f64
            } else {
                0.0
            }
        })
        .collect();
    let mut total: f64 = w.iter().sum();
    if params.top_p < 1.0 {
        let cut = (1.0 - params.top_p) * total;
        // Bucket the weights on a log scale (ascending); whole buckets below the cut go, and
        // only the bucket the cut falls in is sorted. O(vocab) instead of a full sort.
        const BUCKETS: usize = 512;
        // Buckets over the kept logits' range (monotone in the weight).
        let lo = logits
            .iter()
            .copied()
            .filter(|&l| l >= floor)
            .fold(max, f32::min);
        let scale = BUCKETS as f32 / (max - lo).max(f32::MIN_POSITIVE);
        let bucket = |i: usize| (((logits[i] - lo) * scale) as usize).min(BUCKETS - 1);
        let mut sums = vec![0.0f64; BUCKETS];
        for (i, &x) in w.iter().enumerate() {
            if x > 0.0 {
                sums[bucket(i)] += x;
            }
        }
        let mut cum = 0.0;
        let mut edge = 0;
        while edge < BUCKETS && cum + sums[edge] <= cut {
            cum += sums[edge];
            edge += 1;
        }
        // In the edge bucket: ascending by weight, ties by descending id (a fixed order).
        let mut members: Vec<u64> = Vec::new();
        for (i, x) in w.iter_mut().enumerate() {
            if *x > 0.0 {
                let b = bucket(i);
                if b < edge {
                    total -= *x;
                    *x = 0.0;
                } else if b == edge {
                    members
                        .push(((*x as f32).to_bits() as u64) << 32 | (u32::MAX - i as u32) as u64);
                }
            }
        }
        members.sort_unstable();
        for &key in &members {
            let i = (u32::MAX - key as u32) as usize;
            cum += w[i];
            if cum > cut {
                break;
            }
            total -= w[i];
            w[i] = 0.0;
        }
    }
    (w, total)
}

/// The distribution sampling draws from: (token, probability) over the surviving tokens, most
/// likely first. Greedy gives the argmax with probability 1.
pub fn sampling_distribution(logits: &[f32], params: &SamplingParams) -> Vec<(u32, f64)> {
    if params.temperature <= 0.0 {
        return vec![(argmax(logits), 1.0)];
    }
    let (w, total) = nucleus_weights(logits, params);
    let mut probs: Vec<(u32, f64)> = w
        .iter()
        .enumerate()
        .filter(|(_, &x)| x > 0.0)
        .map(|(i, &x)| (i as u32, x / total))
        .collect();
    probs.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
    probs
}

/// Draws the next token: the inverse CDF of the surviving tokens in token-id order (so two
/// tokens of nearly equal probability swapping places in a sort can never change the draw).
pub fn sample(logits: &[f32], params: &SamplingParams, rng: &mut RowRng) -> u32 {
    if params.temperature <= 0.0 {
        return argmax(logits);
    }
    let (w, total) = nucleus_weights(logits, params);
    let target = rng.uniform() * total;
    let mut cum = 0.0;
    let mut last = 0;
    for (i, &x) in w.iter().enumerate() {
        if x > 0.0 {
            cum += x;
            last = i;
            if target < cum {
                return i as u32;
            }
        }
    }
    last as u32
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
