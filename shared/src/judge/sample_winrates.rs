//! Each sample's win rate against the other samples of its prompt, and its rank.

use super::preference_matrix::PreferenceMatrix;

/// Whether a sample's comparison with itself counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Convention {
    /// `(0.5 + sum_{j != i} p_ij) / K`: the SPPO code's convention, the self-comparison counts as a tie.
    #[default]
    IncludeSelf,
    /// `sum_{j != i} p_ij / (K - 1)`: only the other samples (`--exclude-self`).
    ExcludeSelf,
}

/// One row of `winrates.parquet`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SampleWinrate {
    pub sample_idx: u32,
    pub winrate: f64,
    /// The other samples compared against: K - 1 under both conventions.
    pub n_opponents: u32,
    /// 0 = best; equal win rates rank the lower `sample_idx` first.
    pub rank: u32,
}

/// Win rates of all K samples of one prompt, in `sample_idx` order.
pub fn winrates(matrix: &PreferenceMatrix, convention: Convention) -> Vec<SampleWinrate> {
    let k = matrix.k();
    let scores: Vec<f64> = (0..k)
        .map(|i| {
            let against_others: f64 = (0..k).filter(|&j| j != i).map(|j| matrix.get(i, j)).sum();
            match convention {
                Convention::IncludeSelf => (0.5 + against_others) / k as f64,
                Convention::ExcludeSelf => against_others / (k - 1) as f64,
            }
        })
        .collect();

    // Highest first; a stable sort over indices already in ascending order keeps ties by sample_idx.
    let mut order: Vec<usize> = (0..k).collect();
    order.sort_by(|&a, &b| scores[b].total_cmp(&scores[a]));
    let mut rank = vec![0u32; k];
    for (position, &i) in order.iter().enumerate() {
        rank[i] = position as u32;
    }

    (0..k)
        .map(|i| SampleWinrate {
            sample_idx: i as u32,
            winrate: scores[i],
            n_opponents: (k - 1) as u32,
            rank: rank[i],
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::judge::preference_matrix::PairPreference;

    fn matrix(k: usize, pairs: &[(u32, u32, f64)]) -> PreferenceMatrix {
        let pairs: Vec<PairPreference> = pairs
            .iter()
            .map(|&(i, j, p)| PairPreference { i, j, p })
            .collect();
        PreferenceMatrix::from_pairs("q", k, &pairs).unwrap()
    }

    fn assert_winrates(got: &[SampleWinrate], winrates: &[f64], ranks: &[u32]) {
        assert_eq!(got.len(), winrates.len());
        for (i, w) in got.iter().enumerate() {
            assert_eq!(w.sample_idx, i as u32);
            assert_eq!(w.n_opponents, (winrates.len() - 1) as u32);
            assert!(
                (w.winrate - winrates[i]).abs() < 1e-12,
                "sample {i}: got {}, expected {}",
                w.winrate,
                winrates[i]
            );
            assert_eq!(w.rank, ranks[i], "rank of sample {i}");
        }
    }

    #[test]
    fn three_samples_by_hand() {
        // p01 = 0.8, p02 = 0.6, p12 = 0.3. Sums over j != i:
        //   0: 0.8 + 0.6 = 1.4;  1: 0.2 + 0.3 = 0.5;  2: 0.4 + 0.7 = 1.1
        // IncludeSelf (0.5 + s) / 3: 1.9/3, 1.0/3, 1.6/3  (they add up to K/2 = 1.5)
        // ExcludeSelf s / 2:         0.7,   0.25,  0.55
        // Ranks: sample 0 best, then 2, then 1.
        let m = matrix(3, &[(0, 1, 0.8), (0, 2, 0.6), (1, 2, 0.3)]);
        assert_winrates(
            &winrates(&m, Convention::IncludeSelf),
            &[1.9 / 3.0, 1.0 / 3.0, 1.6 / 3.0],
            &[0, 2, 1],
        );
        assert_winrates(
            &winrates(&m, Convention::ExcludeSelf),
            &[0.7, 0.25, 0.55],
            &[0, 2, 1],
        );
    }

    #[test]
    fn five_samples_by_hand() {
        // Upper triangle:
        //   p01 0.9  p02 0.5  p03 0.7  p04 0.2
        //            p12 0.4  p13 0.5  p14 0.6
        //                     p23 0.1  p24 0.5
        //                              p34 0.8
        // Sums over j != i (lower triangle is 1 - p):
        //   0: 0.9 + 0.5 + 0.7 + 0.2 = 2.3
        //   1: 0.1 + 0.4 + 0.5 + 0.6 = 1.6
        //   2: 0.5 + 0.6 + 0.1 + 0.5 = 1.7
        //   3: 0.3 + 0.5 + 0.9 + 0.8 = 2.5
        //   4: 0.8 + 0.4 + 0.5 + 0.2 = 1.9      (total 10 = C(5, 2))
        // IncludeSelf (0.5 + s) / 5: 0.56, 0.42, 0.44, 0.60, 0.48
        // ExcludeSelf s / 4:        0.575, 0.40, 0.425, 0.625, 0.475
        // Order: 3, 0, 4, 2, 1.
        let m = matrix(
            5,
            &[
                (0, 1, 0.9),
                (0, 2, 0.5),
                (0, 3, 0.7),
                (0, 4, 0.2),
                (1, 2, 0.4),
                (1, 3, 0.5),
                (1, 4, 0.6),
                (2, 3, 0.1),
                (2, 4, 0.5),
                (3, 4, 0.8),
            ],
        );
        let ranks = [1, 4, 3, 0, 2];
        assert_winrates(
            &winrates(&m, Convention::IncludeSelf),
            &[0.56, 0.42, 0.44, 0.60, 0.48],
            &ranks,
        );
        assert_winrates(
            &winrates(&m, Convention::ExcludeSelf),
            &[0.575, 0.40, 0.425, 0.625, 0.475],
            &ranks,
        );
    }

    #[test]
    fn ties_rank_the_lower_sample_idx_first() {
        // p01 = 0.3, p02 = 0.3, p12 = 0.5: samples 1 and 2 both sum to 0.7 + 0.5 = 1.2, sample 0 to 0.6.
        let m = matrix(3, &[(0, 1, 0.3), (0, 2, 0.3), (1, 2, 0.5)]);
        let got = winrates(&m, Convention::IncludeSelf);
        assert_eq!(got[1].winrate, got[2].winrate);
        assert_eq!(
            got.iter().map(|w| w.rank).collect::<Vec<_>>(),
            vec![2, 0, 1]
        );

        let all_tied = matrix(3, &[(0, 1, 0.5), (0, 2, 0.5), (1, 2, 0.5)]);
        let got = winrates(&all_tied, Convention::ExcludeSelf);
        assert!(got.iter().all(|w| w.winrate == 0.5));
        assert_eq!(
            got.iter().map(|w| w.rank).collect::<Vec<_>>(),
            vec![0, 1, 2]
        );
    }
}
