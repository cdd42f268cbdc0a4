//! Lifting a scalar judge's scores (a reward model's r_i) to pairwise preferences:
//! `p_ij = sigmoid((r_i - r_j) / temperature)` (Bradley-Terry).

use super::preference_matrix::{PairPreference, PreferenceError, PreferenceMatrix};

/// The logistic function, without overflow for large |x| (exp is only taken of a non-positive number).
pub fn sigmoid(x: f64) -> f64 {
    if x >= 0.0 {
        1.0 / (1.0 + (-x).exp())
    } else {
        let e = x.exp();
        e / (1.0 + e)
    }
}

/// P(y_i beats y_j) of two scored responses.
pub fn preference_from_scores(r_i: f64, r_j: f64, temperature: f64) -> f64 {
    sigmoid((r_i - r_j) / temperature)
}

/// The preference matrix of one prompt whose samples were scored `scores[sample_idx]`.
pub fn matrix_from_scores(
    prompt_id: &str,
    scores: &[f64],
    temperature: f64,
) -> Result<PreferenceMatrix, PreferenceError> {
    if !(temperature.is_finite() && temperature > 0.0) {
        return Err(PreferenceError::InvalidTemperature { temperature });
    }
    if let Some((sample_idx, &score)) = scores.iter().enumerate().find(|(_, s)| !s.is_finite()) {
        return Err(PreferenceError::InvalidScore {
            prompt_id: prompt_id.to_owned(),
            sample_idx: sample_idx as u32,
            score,
        });
    }
    let k = scores.len();
    let pairs: Vec<PairPreference> = (0..k)
        .flat_map(|i| (i + 1..k).map(move |j| (i, j)))
        .map(|(i, j)| PairPreference {
            i: i as u32,
            j: j as u32,
            p: preference_from_scores(scores[i], scores[j], temperature),
        })
        .collect();
    PreferenceMatrix::from_pairs(prompt_id, k, &pairs)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::judge::sample_winrates::{winrates, Convention};

    #[test]
    fn sigmoid_known_values_and_extremes() {
        assert_eq!(sigmoid(0.0), 0.5);
        // sigmoid(ln 3) = 3 / (3 + 1) = 0.75; sigmoid(-ln 3) = 0.25.
        assert!((sigmoid(3f64.ln()) - 0.75).abs() < 1e-15);
        assert!((sigmoid(-(3f64.ln())) - 0.25).abs() < 1e-15);
        assert_eq!(sigmoid(800.0), 1.0);
        assert_eq!(sigmoid(-800.0), 0.0);
        assert!(sigmoid(-700.0) > 0.0);
        assert!(sigmoid(f64::INFINITY) == 1.0 && sigmoid(f64::NEG_INFINITY) == 0.0);
    }

    #[test]
    fn temperature_divides_the_score_gap() {
        // r_i - r_j = 2 ln 3, temperature 2: sigmoid(ln 3) = 0.75.
        let gap = 2.0 * 3f64.ln();
        assert!((preference_from_scores(gap, 0.0, 2.0) - 0.75).abs() < 1e-15);
        assert!((preference_from_scores(0.0, gap, 2.0) - 0.25).abs() < 1e-15);
    }

    #[test]
    fn win_rates_from_scores_rank_samples_in_score_order() {
        let scores = [0.3, -1.2, 2.5, 0.9, 0.0, 1e-9];
        // Descending score: samples 2, 3, 0, 5, 4, 1.
        let expected_rank = [2, 5, 0, 1, 4, 3];
        let m = matrix_from_scores("q", &scores, 0.7).unwrap();
        for i in 0..scores.len() {
            for j in 0..scores.len() {
                assert!((m.get(i, j) + m.get(j, i) - 1.0).abs() < 1e-15);
                assert_eq!(m.beats(i, j), scores[i] > scores[j]);
            }
        }
        for convention in [Convention::IncludeSelf, Convention::ExcludeSelf] {
            let ranks: Vec<u32> = winrates(&m, convention).iter().map(|w| w.rank).collect();
            assert_eq!(ranks, expected_rank, "{convention:?}");
        }
    }

    #[test]
    fn rejects_bad_temperature_and_scores() {
        for t in [0.0, -1.0, f64::NAN, f64::INFINITY] {
            assert!(matches!(
                matrix_from_scores("q", &[0.0, 1.0], t),
                Err(PreferenceError::InvalidTemperature { .. })
            ));
        }
        let err = matrix_from_scores("q", &[0.0, f64::NAN, 1.0], 1.0).unwrap_err();
        assert!(matches!(
            err,
            PreferenceError::InvalidScore { sample_idx: 1, .. }
        ));
        assert!(err.to_string().contains("prompt q") && err.to_string().contains("sample 1"));
    }
}
