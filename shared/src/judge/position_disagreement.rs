//! Position bias of a pairwise judge: how often its verdict flips when the two responses swap places.

use thiserror::Error;

/// A pairwise judge's two verdicts on one pair, both expressed as P(y_i beats y_j).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TwoOrderVerdict {
    /// The judge saw y_i first.
    pub p_forward: f64,
    /// The judge saw y_j first.
    pub p_swapped: f64,
}

/// How far a judge's two orders disagree over a set of pairs.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PositionDisagreement {
    pub pairs: usize,
    /// Share of pairs where one order says i wins (p > 0.5) and the other says j wins (p < 0.5).
    pub disagreement_share: f64,
    /// Mean of |p_forward - p_swapped|.
    pub mean_abs_gap: f64,
}

#[derive(Debug, Clone, PartialEq, Error)]
pub enum PositionDisagreementError {
    #[error("no pairs judged in both orders, expected at least one")]
    NoPairs,
    #[error("pair number {index} has {field} = {value}, expected a probability in [0, 1]")]
    InvalidProbability {
        index: usize,
        field: &'static str,
        value: f64,
    },
}

/// Flip share and mean gap of a judge's two-order verdicts.
pub fn position_disagreement(
    verdicts: &[TwoOrderVerdict],
) -> Result<PositionDisagreement, PositionDisagreementError> {
    if verdicts.is_empty() {
        return Err(PositionDisagreementError::NoPairs);
    }
    let mut flips = 0usize;
    let mut gap_sum = 0.0;
    for (index, v) in verdicts.iter().enumerate() {
        for (field, value) in [("p_forward", v.p_forward), ("p_swapped", v.p_swapped)] {
            if !(0.0..=1.0).contains(&value) {
                return Err(PositionDisagreementError::InvalidProbability {
                    index,
                    field,
                    value,
                });
            }
        }
        // A 0.5 verdict is a tie, which contradicts neither side.
        let flipped =
            (v.p_forward > 0.5 && v.p_swapped < 0.5) || (v.p_forward < 0.5 && v.p_swapped > 0.5);
        flips += usize::from(flipped);
        gap_sum += (v.p_forward - v.p_swapped).abs();
    }
    let n = verdicts.len() as f64;
    Ok(PositionDisagreement {
        pairs: verdicts.len(),
        disagreement_share: flips as f64 / n,
        mean_abs_gap: gap_sum / n,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(p_forward: f64, p_swapped: f64) -> TwoOrderVerdict {
        TwoOrderVerdict {
            p_forward,
            p_swapped,
        }
    }

    #[test]
    fn hand_built_case() {
        // (0.8, 0.3) flips, gap 0.5;  (0.6, 0.9) agrees, gap 0.3;
        // (0.5, 0.2) tie on one side: no flip, gap 0.3;  (0.1, 0.7) flips, gap 0.6.
        // Flip share 2/4 = 0.5; mean gap (0.5 + 0.3 + 0.3 + 0.6) / 4 = 0.425.
        let got =
            position_disagreement(&[v(0.8, 0.3), v(0.6, 0.9), v(0.5, 0.2), v(0.1, 0.7)]).unwrap();
        assert_eq!(got.pairs, 4);
        assert_eq!(got.disagreement_share, 0.5);
        assert!((got.mean_abs_gap - 0.425).abs() < 1e-15);
    }

    #[test]
    fn consistent_judge_has_no_disagreement() {
        let got = position_disagreement(&[v(0.7, 0.7), v(0.2, 0.2)]).unwrap();
        assert_eq!((got.disagreement_share, got.mean_abs_gap), (0.0, 0.0));
    }

    #[test]
    fn rejects_no_pairs_and_bad_probabilities() {
        assert_eq!(
            position_disagreement(&[]),
            Err(PositionDisagreementError::NoPairs)
        );
        let err = position_disagreement(&[v(0.5, 0.5), v(0.5, f64::NAN)]).unwrap_err();
        assert!(matches!(
            err,
            PositionDisagreementError::InvalidProbability {
                index: 1,
                field: "p_swapped",
                ..
            }
        ));
        let err = position_disagreement(&[v(1.2, 0.5)]).unwrap_err();
        assert!(err.to_string().contains("p_forward = 1.2"), "{err}");
    }
}
