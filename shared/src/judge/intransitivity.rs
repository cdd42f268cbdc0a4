//! Intransitive preferences: a 3-cycle (i beats j, j beats k, k beats i, "beats" meaning p > 0.5)
//! is what a scalar reward model can never express and a pairwise judge can.

use super::preference_matrix::PreferenceMatrix;

/// The first 3-cycle among a prompt's samples, as (a, b, c) with a beats b, b beats c, c beats a.
pub fn find_three_cycle(matrix: &PreferenceMatrix) -> Option<(usize, usize, usize)> {
    let k = matrix.k();
    // K is the number of samples per prompt (a handful), so the cubic scan is cheap.
    for a in 0..k {
        for b in a + 1..k {
            for c in b + 1..k {
                if matrix.beats(a, b) && matrix.beats(b, c) && matrix.beats(c, a) {
                    return Some((a, b, c));
                }
                if matrix.beats(a, c) && matrix.beats(c, b) && matrix.beats(b, a) {
                    return Some((a, c, b));
                }
            }
        }
    }
    None
}

/// Whether a prompt's preferences contain a 3-cycle.
pub fn has_three_cycle(matrix: &PreferenceMatrix) -> bool {
    find_three_cycle(matrix).is_some()
}

/// The share of prompts whose preferences contain a 3-cycle; `None` for no prompts.
pub fn intransitive_share(matrices: &[PreferenceMatrix]) -> Option<f64> {
    if matrices.is_empty() {
        return None;
    }
    let cyclic = matrices.iter().filter(|m| has_three_cycle(m)).count();
    Some(cyclic as f64 / matrices.len() as f64)
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

    #[test]
    fn detects_a_hand_built_cycle_in_either_direction() {
        // 0 beats 1 (0.7), 1 beats 2 (0.6), 2 beats 0 (p02 = 0.4).
        let forward = matrix(3, &[(0, 1, 0.7), (1, 2, 0.6), (0, 2, 0.4)]);
        assert_eq!(find_three_cycle(&forward), Some((0, 1, 2)));
        // 1 beats 0, 2 beats 1, 0 beats 2.
        let backward = matrix(3, &[(0, 1, 0.3), (1, 2, 0.3), (0, 2, 0.7)]);
        assert_eq!(find_three_cycle(&backward), Some((0, 2, 1)));
    }

    #[test]
    fn transitive_preferences_and_ties_have_no_cycle() {
        // 0 beats 1, 1 beats 2, 0 beats 2.
        let transitive = matrix(3, &[(0, 1, 0.7), (1, 2, 0.6), (0, 2, 0.8)]);
        assert!(!has_three_cycle(&transitive));
        // As the cycle above but 0 and 1 tie: a tie is no win, so no cycle.
        let tied = matrix(3, &[(0, 1, 0.5), (1, 2, 0.6), (0, 2, 0.4)]);
        assert!(!has_three_cycle(&tied));
    }

    #[test]
    fn finds_a_cycle_among_non_adjacent_samples() {
        // K = 4, order 0 > 1 > 2 > 3 except 3 beats 1: cycle 1 -> 2 -> 3 -> 1.
        let m = matrix(
            4,
            &[
                (0, 1, 0.9),
                (0, 2, 0.9),
                (0, 3, 0.9),
                (1, 2, 0.9),
                (1, 3, 0.2),
                (2, 3, 0.9),
            ],
        );
        assert_eq!(find_three_cycle(&m), Some((1, 2, 3)));
    }

    #[test]
    fn share_counts_prompts_with_a_cycle() {
        let cyclic = matrix(3, &[(0, 1, 0.7), (1, 2, 0.6), (0, 2, 0.4)]);
        let transitive = matrix(3, &[(0, 1, 0.7), (1, 2, 0.6), (0, 2, 0.8)]);
        let share = intransitive_share(&[cyclic, transitive.clone(), transitive]).unwrap();
        assert!((share - 1.0 / 3.0).abs() < 1e-15);
        assert_eq!(intransitive_share(&[]), None);
    }
}
