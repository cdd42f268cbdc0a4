//! A small seeded random stream for training: example shuffling and LoRA initialisation.
//!
//! SplitMix64 (Steele et al. 2014) seeded from blake3 of a domain label and the values that
//! should change the stream, so every use (epoch shuffle, one adapter) has its own stream and
//! none depends on how many numbers another use drew.

/// SplitMix64.
pub struct SplitMix64(u64);

impl SplitMix64 {
    /// A stream for `domain` (e.g. `shuffle`) and `parts` (e.g. the seed and the epoch).
    pub fn new(domain: &str, parts: &[&[u8]]) -> Self {
        let mut hasher = blake3::Hasher::new();
        hasher.update(b"rspo.train.rng.v1");
        hasher.update(&(domain.len() as u64).to_le_bytes());
        hasher.update(domain.as_bytes());
        for part in parts {
            hasher.update(&(part.len() as u64).to_le_bytes());
            hasher.update(part);
        }
        let mut first = [0u8; 8];
        first.copy_from_slice(&hasher.finalize().as_bytes()[..8]);
        SplitMix64(u64::from_le_bytes(first))
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in [0, n) without modulo bias (Lemire's multiply-shift with rejection).
    pub fn below(&mut self, n: u64) -> u64 {
        assert!(n > 0, "below(0)");
        let threshold = n.wrapping_neg() % n;
        loop {
            let m = (self.next_u64() as u128) * (n as u128);
            if (m as u64) >= threshold {
                return (m >> 64) as u64;
            }
        }
    }

    /// Uniform in [0, 1) with 24 random bits (every value exactly representable in f32).
    pub fn unit_f32(&mut self) -> f32 {
        (self.next_u64() >> 40) as f32 / (1u64 << 24) as f32
    }
}

/// A permutation of `0..n`: Fisher-Yates driven by `rng`.
pub fn permutation(n: usize, rng: &mut SplitMix64) -> Vec<usize> {
    let mut order: Vec<usize> = (0..n).collect();
    for i in (1..n).rev() {
        let j = rng.below(i as u64 + 1) as usize;
        order.swap(i, j);
    }
    order
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn streams_are_reproducible_and_distinct() {
        let a: Vec<u64> = {
            let mut r = SplitMix64::new("shuffle", &[&0u64.to_le_bytes()]);
            (0..4).map(|_| r.next_u64()).collect()
        };
        let b: Vec<u64> = {
            let mut r = SplitMix64::new("shuffle", &[&0u64.to_le_bytes()]);
            (0..4).map(|_| r.next_u64()).collect()
        };
        let c: Vec<u64> = {
            let mut r = SplitMix64::new("shuffle", &[&1u64.to_le_bytes()]);
            (0..4).map(|_| r.next_u64()).collect()
        };
        assert_eq!(a, b);
        assert_ne!(a, c);
    }

    #[test]
    fn permutations_are_permutations_and_uniformish() {
        let mut r = SplitMix64::new("test", &[]);
        let mut first_counts = [0usize; 4];
        for _ in 0..4000 {
            let p = permutation(4, &mut r);
            let mut sorted = p.clone();
            sorted.sort();
            assert_eq!(sorted, vec![0, 1, 2, 3]);
            first_counts[p[0]] += 1;
        }
        for c in first_counts {
            assert!((850..1150).contains(&c), "{first_counts:?}");
        }
        for _ in 0..1000 {
            let u = r.unit_f32();
            assert!((0.0..1.0).contains(&u));
        }
    }
}
