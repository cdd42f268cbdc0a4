//! The K x K matrix of pairwise preferences P(y_i beats y_j) for one prompt's K samples.

use thiserror::Error;

/// One judged pair of a prompt, as a `preferences.parquet` row stores it: `p` = P(y_i beats y_j), `i < j`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PairPreference {
    pub i: u32,
    pub j: u32,
    pub p: f64,
}

/// Why a prompt's pairs (or scores) do not form a complete preference matrix.
#[derive(Debug, Clone, PartialEq, Error)]
pub enum PreferenceError {
    #[error("prompt {prompt_id}: found K = {k} samples, expected at least 2 to compare")]
    TooFewSamples { prompt_id: String, k: usize },
    #[error("prompt {prompt_id}: found pair (i = {i}, j = {j}), expected i < j")]
    UnorderedPair { prompt_id: String, i: u32, j: u32 },
    #[error(
        "prompt {prompt_id}: found pair (i = {i}, j = {j}), expected both indices below K = {k}"
    )]
    IndexOutOfRange {
        prompt_id: String,
        i: u32,
        j: u32,
        k: usize,
    },
    #[error(
        "prompt {prompt_id}: pair (i = {i}, j = {j}) appears more than once, expected exactly once"
    )]
    DuplicatePair { prompt_id: String, i: u32, j: u32 },
    #[error(
        "prompt {prompt_id}: pair (i = {i}, j = {j}) has p = {p}, expected a probability in [0, 1]"
    )]
    InvalidProbability {
        prompt_id: String,
        i: u32,
        j: u32,
        p: f64,
    },
    #[error(
        "prompt {prompt_id}: pair (i = {i}, j = {j}) is missing ({missing} of {expected} pairs missing), \
         expected every pair i < j < K = {k} to be judged"
    )]
    MissingPair {
        prompt_id: String,
        i: u32,
        j: u32,
        missing: usize,
        expected: usize,
        k: usize,
    },
    #[error("prompt {prompt_id}: sample {sample_idx} has score {score}, expected a finite number")]
    InvalidScore {
        prompt_id: String,
        sample_idx: u32,
        score: f64,
    },
    #[error("temperature {temperature} is not usable, expected a finite number > 0")]
    InvalidTemperature { temperature: f64 },
}

/// Complete pairwise preferences of one prompt: `get(i, j) + get(j, i) == 1`, diagonal 0.5.
#[derive(Debug, Clone, PartialEq)]
pub struct PreferenceMatrix {
    prompt_id: String,
    k: usize,
    // Row-major K x K; the diagonal holds 0.5 (a sample ties with itself).
    p: Vec<f64>,
}

impl PreferenceMatrix {
    /// Builds the matrix of a prompt with `k` samples from its judged pairs (each i < j exactly once).
    pub fn from_pairs(
        prompt_id: &str,
        k: usize,
        pairs: &[PairPreference],
    ) -> Result<Self, PreferenceError> {
        if k < 2 {
            return Err(PreferenceError::TooFewSamples {
                prompt_id: prompt_id.to_owned(),
                k,
            });
        }
        let mut p = vec![f64::NAN; k * k];
        for &PairPreference { i, j, p: pij } in pairs {
            if i >= j {
                return Err(PreferenceError::UnorderedPair {
                    prompt_id: prompt_id.to_owned(),
                    i,
                    j,
                });
            }
            let (iu, ju) = (i as usize, j as usize);
            if ju >= k {
                return Err(PreferenceError::IndexOutOfRange {
                    prompt_id: prompt_id.to_owned(),
                    i,
                    j,
                    k,
                });
            }
            // `contains` is false for NaN, so this also rejects NaN.
            if !(0.0..=1.0).contains(&pij) {
                return Err(PreferenceError::InvalidProbability {
                    prompt_id: prompt_id.to_owned(),
                    i,
                    j,
                    p: pij,
                });
            }
            if !p[iu * k + ju].is_nan() {
                return Err(PreferenceError::DuplicatePair {
                    prompt_id: prompt_id.to_owned(),
                    i,
                    j,
                });
            }
            p[iu * k + ju] = pij;
            p[ju * k + iu] = 1.0 - pij;
        }
        for i in 0..k {
            p[i * k + i] = 0.5;
        }

        let mut missing = (0..k)
            .flat_map(|i| (i + 1..k).map(move |j| (i, j)))
            .filter(|&(i, j)| p[i * k + j].is_nan());
        if let Some((i, j)) = missing.next() {
            return Err(PreferenceError::MissingPair {
                prompt_id: prompt_id.to_owned(),
                i: i as u32,
                j: j as u32,
                missing: 1 + missing.count(),
                expected: k * (k - 1) / 2,
                k,
            });
        }
        Ok(Self {
            prompt_id: prompt_id.to_owned(),
            k,
            p,
        })
    }

    pub fn prompt_id(&self) -> &str {
        &self.prompt_id
    }

    /// Number of samples K.
    pub fn k(&self) -> usize {
        self.k
    }

    /// P(y_i beats y_j); 0.5 on the diagonal. Panics if `i` or `j` is not below K (a caller bug).
    pub fn get(&self, i: usize, j: usize) -> f64 {
        assert!(
            i < self.k && j < self.k,
            "index ({i}, {j}) outside K = {}",
            self.k
        );
        self.p[i * self.k + j]
    }

    /// Whether sample `i` beats sample `j` (p > 0.5; a 0.5 tie is no win).
    pub fn beats(&self, i: usize, j: usize) -> bool {
        self.get(i, j) > 0.5
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pair(i: u32, j: u32, p: f64) -> PairPreference {
        PairPreference { i, j, p }
    }

    #[test]
    fn fills_the_complement_and_the_diagonal() {
        let m = PreferenceMatrix::from_pairs(
            "q",
            3,
            &[pair(0, 1, 0.8), pair(1, 2, 0.25), pair(0, 2, 1.0)],
        )
        .unwrap();
        assert_eq!(m.k(), 3);
        assert_eq!(m.prompt_id(), "q");
        assert_eq!(m.get(0, 1), 0.8);
        assert!((m.get(1, 0) - 0.2).abs() < 1e-15);
        assert_eq!(m.get(2, 1), 0.75);
        assert_eq!(m.get(2, 0), 0.0);
        assert_eq!(m.get(1, 1), 0.5);
        assert!(m.beats(0, 1) && !m.beats(1, 0));
    }

    #[test]
    fn rejects_a_missing_pair_naming_prompt_and_pair() {
        let err = PreferenceMatrix::from_pairs("prompt-7", 3, &[pair(0, 1, 0.5)]).unwrap_err();
        assert_eq!(
            err,
            PreferenceError::MissingPair {
                prompt_id: "prompt-7".into(),
                i: 0,
                j: 2,
                missing: 2,
                expected: 3,
                k: 3
            }
        );
        let msg = err.to_string();
        assert!(
            msg.contains("prompt-7") && msg.contains("i = 0, j = 2"),
            "{msg}"
        );
    }

    #[test]
    fn rejects_a_duplicated_pair() {
        let err =
            PreferenceMatrix::from_pairs("q", 2, &[pair(0, 1, 0.5), pair(0, 1, 0.6)]).unwrap_err();
        assert_eq!(
            err,
            PreferenceError::DuplicatePair {
                prompt_id: "q".into(),
                i: 0,
                j: 1
            }
        );
    }

    #[test]
    fn rejects_probabilities_outside_the_unit_interval_and_nan() {
        for bad in [-0.01, 1.5, f64::NAN, f64::INFINITY] {
            let err = PreferenceMatrix::from_pairs("q", 2, &[pair(0, 1, bad)]).unwrap_err();
            match &err {
                PreferenceError::InvalidProbability { prompt_id, i, j, p } => {
                    assert_eq!((prompt_id.as_str(), *i, *j), ("q", 0, 1));
                    assert!(p.to_bits() == bad.to_bits());
                }
                other => panic!("expected InvalidProbability, got {other:?}"),
            }
            assert!(err.to_string().contains(&format!("p = {bad}")));
        }
        // The interval is closed: hard verdicts are allowed.
        assert!(PreferenceMatrix::from_pairs("q", 2, &[pair(0, 1, 0.0)]).is_ok());
        assert!(PreferenceMatrix::from_pairs("q", 2, &[pair(0, 1, 1.0)]).is_ok());
    }

    #[test]
    fn rejects_indices_that_are_not_ordered_or_beyond_k() {
        let err = PreferenceMatrix::from_pairs("q", 3, &[pair(1, 1, 0.5)]).unwrap_err();
        assert!(matches!(
            err,
            PreferenceError::UnorderedPair { i: 1, j: 1, .. }
        ));
        let err = PreferenceMatrix::from_pairs("q", 3, &[pair(2, 0, 0.5)]).unwrap_err();
        assert!(matches!(
            err,
            PreferenceError::UnorderedPair { i: 2, j: 0, .. }
        ));
        let err = PreferenceMatrix::from_pairs("q", 3, &[pair(1, 3, 0.5)]).unwrap_err();
        assert!(matches!(
            err,
            PreferenceError::IndexOutOfRange {
                i: 1,
                j: 3,
                k: 3,
                ..
            }
        ));
        let err = PreferenceMatrix::from_pairs("q", 3, &[pair(3, 4, 0.5)]).unwrap_err();
        assert!(matches!(
            err,
            PreferenceError::IndexOutOfRange {
                i: 3,
                j: 4,
                k: 3,
                ..
            }
        ));
    }

    #[test]
    fn rejects_fewer_than_two_samples() {
        let err = PreferenceMatrix::from_pairs("q", 1, &[]).unwrap_err();
        assert_eq!(
            err,
            PreferenceError::TooFewSamples {
                prompt_id: "q".into(),
                k: 1
            }
        );
    }
}
