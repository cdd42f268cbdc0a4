//! Length-controlled win rate: AlpacaEval 2's GLM without the per-instruction difficulty term.
//!
//! Fit `p ~ sigmoid(b0 + b1 * tanh((len_model - len_baseline) / std))` by unpenalized maximum
//! likelihood with soft labels (the judge's P(model beats baseline)), `std` the population standard
//! deviation of the length differences. The LC win rate is the win rate the fit predicts at equal
//! lengths: `100 * sigmoid(b0)`.

use thiserror::Error;

use crate::judge::sigmoid;

/// The fit and both win rates, in percent as AlpacaEval reports them.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LcWinrate {
    /// Number of (model, baseline) comparisons.
    pub n: usize,
    /// `100 * mean(p)`.
    pub raw_winrate_pct: f64,
    /// `100 * sigmoid(b0)`.
    pub lc_winrate_pct: f64,
    pub b0: f64,
    /// The length coefficient; 0 when all length differences are equal (`length_std == 0`).
    pub b1: f64,
    /// Population standard deviation of `len_model - len_baseline`.
    pub length_std: f64,
    /// Newton iterations taken.
    pub iterations: usize,
}

#[derive(Debug, Clone, PartialEq, Error)]
pub enum LcWinrateError {
    #[error("no comparisons to fit, expected at least one (model, baseline) pair")]
    Empty,
    #[error(
        "column lengths differ: {len_model} model lengths, {len_baseline} baseline lengths, \
         {preferences} preferences; expected one of each per comparison"
    )]
    LengthMismatch {
        len_model: usize,
        len_baseline: usize,
        preferences: usize,
    },
    #[error("row {row}: preference {value}, expected a probability in [0, 1]")]
    InvalidPreference { row: usize, value: f64 },
    #[error("row {row}: {column} = {value}, expected a finite length >= 0")]
    InvalidLength {
        row: usize,
        column: &'static str,
        value: f64,
    },
    #[error(
        "the length GLM has no finite maximum: every comparison where the model is {direction} \
         than a threshold is won or lost outright, so b1 runs to infinity and the LC win rate is \
         undefined; expected preferences not separated by length (soft labels, or mixed outcomes)"
    )]
    SeparatedByLength { direction: &'static str },
    #[error(
        "the length GLM did not converge in {iterations} Newton iterations \
         (last Newton decrement {decrement:e})"
    )]
    NoConvergence { iterations: usize, decrement: f64 },
}

const MAX_ITERATIONS: usize = 200;
/// Stop when the Newton decrement g' H^-1 g (twice the predicted gain in log-likelihood) is below this:
/// the coefficients are then within ~1e-10 of the maximum for any realistic n.
const DECREMENT_TOLERANCE: f64 = 1e-20;

/// Fits the length GLM to one model's comparisons against a baseline.
pub fn lc_winrate(
    len_model: &[f64],
    len_baseline: &[f64],
    preferences: &[f64],
) -> Result<LcWinrate, LcWinrateError> {
    let n = preferences.len();
    if len_model.len() != n || len_baseline.len() != n {
        return Err(LcWinrateError::LengthMismatch {
            len_model: len_model.len(),
            len_baseline: len_baseline.len(),
            preferences: n,
        });
    }
    if n == 0 {
        return Err(LcWinrateError::Empty);
    }
    for row in 0..n {
        for (column, value) in [
            ("len_model", len_model[row]),
            ("len_baseline", len_baseline[row]),
        ] {
            if !(value.is_finite() && value >= 0.0) {
                return Err(LcWinrateError::InvalidLength { row, column, value });
            }
        }
        if !(0.0..=1.0).contains(&preferences[row]) {
            return Err(LcWinrateError::InvalidPreference {
                row,
                value: preferences[row],
            });
        }
    }

    let differences: Vec<f64> = (0..n).map(|r| len_model[r] - len_baseline[r]).collect();
    // Decided on the differences themselves, not on std > 0: the mean of equal non-integer
    // differences can round, leaving a spurious std of 1e-17.
    let fit_length = differences.iter().any(|&d| d != differences[0]);
    let length_std = if fit_length {
        let mean_difference = differences.iter().sum::<f64>() / n as f64;
        (differences
            .iter()
            .map(|d| (d - mean_difference).powi(2))
            .sum::<f64>()
            / n as f64)
            .sqrt()
    } else {
        // No length variation to control for (the term would be collinear with b0, or 0/0):
        // only b0 is fitted.
        0.0
    };
    let features: Vec<f64> = if fit_length {
        differences
            .iter()
            .map(|d| (d / length_std).tanh())
            .collect()
    } else {
        vec![0.0; n]
    };

    let raw_winrate_pct = 100.0 * preferences.iter().sum::<f64>() / n as f64;
    // Unanimous hard verdicts: the likelihood only approaches its supremum as b0 -> +-infinity,
    // and the LC win rate's limit is the raw one.
    if preferences.iter().all(|&p| p == 1.0) || preferences.iter().all(|&p| p == 0.0) {
        return Ok(LcWinrate {
            n,
            raw_winrate_pct,
            lc_winrate_pct: raw_winrate_pct,
            b0: if raw_winrate_pct > 50.0 {
                f64::INFINITY
            } else {
                f64::NEG_INFINITY
            },
            b1: 0.0,
            length_std,
            iterations: 0,
        });
    }
    if fit_length {
        if let Some(direction) = separation_by_length(&features, preferences) {
            return Err(LcWinrateError::SeparatedByLength { direction });
        }
    }

    let (b0, b1, iterations) = fit(&features, preferences, fit_length)?;
    Ok(LcWinrate {
        n,
        raw_winrate_pct,
        lc_winrate_pct: 100.0 * sigmoid(b0),
        b0,
        b1,
        length_std,
        iterations,
    })
}

/// Whether some (b0, b1) with b1 != 0 can push the likelihood to its supremum at infinity: a
/// threshold t on the feature with every row above t a hard win (p = 1), every row below a hard loss
/// (p = 0) and every soft row exactly at t (or the mirror image). Returns which side wins.
fn separation_by_length(x: &[f64], p: &[f64]) -> Option<&'static str> {
    let max_x = |keep: fn(f64) -> bool| {
        x.iter()
            .zip(p)
            .filter(|(_, &pi)| keep(pi))
            .map(|(&xi, _)| xi)
            .fold(f64::NEG_INFINITY, f64::max)
    };
    let min_x = |keep: fn(f64) -> bool| {
        x.iter()
            .zip(p)
            .filter(|(_, &pi)| keep(pi))
            .map(|(&xi, _)| xi)
            .fold(f64::INFINITY, f64::min)
    };
    // Longer wins: everything not won outright sits at or below everything not lost outright.
    if max_x(|pi| pi < 1.0) <= min_x(|pi| pi > 0.0) {
        return Some("longer");
    }
    if max_x(|pi| pi > 0.0) <= min_x(|pi| pi < 1.0) {
        return Some("shorter");
    }
    None
}

/// Damped Newton's method on the concave soft-label log-likelihood. Returns (b0, b1, iterations).
fn fit(x: &[f64], p: &[f64], fit_length: bool) -> Result<(f64, f64, usize), LcWinrateError> {
    let (mut b0, mut b1) = (0.0, 0.0);
    let mut current = log_likelihood(x, p, b0, b1);
    let mut decrement = f64::INFINITY;
    for iteration in 1..=MAX_ITERATIONS {
        // Gradient g = sum (p - s) [1, x]; negative Hessian H = sum s (1 - s) [1, x][1, x]'.
        let (mut g0, mut g1, mut h00, mut h01, mut h11) = (0.0, 0.0, 0.0, 0.0, 0.0);
        for (&xi, &pi) in x.iter().zip(p) {
            let s = sigmoid(b0 + b1 * xi);
            let w = s * (1.0 - s);
            g0 += pi - s;
            g1 += (pi - s) * xi;
            h00 += w;
            h01 += w * xi;
            h11 += w * xi * xi;
        }
        let (d0, d1) = if fit_length {
            let det = h00 * h11 - h01 * h01;
            if det.is_nan() || det <= 0.0 {
                // Cannot happen with a finite maximum and varying x; stop rather than divide by 0.
                return Err(LcWinrateError::NoConvergence {
                    iterations: iteration,
                    decrement,
                });
            }
            ((h11 * g0 - h01 * g1) / det, (h00 * g1 - h01 * g0) / det)
        } else {
            if h00.is_nan() || h00 <= 0.0 {
                return Err(LcWinrateError::NoConvergence {
                    iterations: iteration,
                    decrement,
                });
            }
            (g0 / h00, 0.0)
        };
        decrement = g0 * d0 + g1 * d1;
        if decrement < DECREMENT_TOLERANCE {
            // The full step is below rounding of the likelihood; take it, it can only help.
            return Ok((b0 + d0, b1 + d1, iteration));
        }

        // Backtracking (Armijo) so that large steps from a poor start cannot overshoot.
        let mut t = 1.0;
        let accepted = loop {
            let candidate = log_likelihood(x, p, b0 + t * d0, b1 + t * d1);
            if candidate >= current + 1e-4 * t * decrement {
                break Some(candidate);
            }
            t *= 0.5;
            if t < 1e-12 {
                break None;
            }
        };
        match accepted {
            Some(value) => {
                b0 += t * d0;
                b1 += t * d1;
                current = value;
            }
            // No ascent left at the precision of the likelihood: at the maximum unless the
            // decrement says there is still a real gain to be had.
            None if decrement < 1e-10 * current.abs().max(1.0) => {
                return Ok((b0, b1, iteration));
            }
            None => {
                return Err(LcWinrateError::NoConvergence {
                    iterations: iteration,
                    decrement,
                })
            }
        }
    }
    Err(LcWinrateError::NoConvergence {
        iterations: MAX_ITERATIONS,
        decrement,
    })
}

/// sum p log s + (1 - p) log(1 - s), with log s = -softplus(-eta) so that no term overflows.
fn log_likelihood(x: &[f64], p: &[f64], b0: f64, b1: f64) -> f64 {
    x.iter()
        .zip(p)
        .map(|(&xi, &pi)| {
            let eta = b0 + b1 * xi;
            -pi * softplus(-eta) - (1.0 - pi) * softplus(eta)
        })
        .sum()
}

/// log(1 + e^x) without overflow.
fn softplus(x: f64) -> f64 {
    x.max(0.0) + (-x.abs()).exp().ln_1p()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Deserialize)]
    struct Fixture {
        len_model: Vec<f64>,
        len_baseline: Vec<f64>,
        preference: Vec<f64>,
        raw_winrate: f64,
        b0: f64,
        b1: f64,
        lc_winrate: f64,
    }

    #[test]
    fn matches_the_reference_fixture() {
        let text = include_str!(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../tests/fixtures/metrics/lc_winrate.json"
        ));
        let f: Fixture = serde_json::from_str(text).unwrap();
        let got = lc_winrate(&f.len_model, &f.len_baseline, &f.preference).unwrap();
        assert_eq!(got.n, 300);
        assert!(
            (got.raw_winrate_pct - f.raw_winrate).abs() < 1e-9,
            "{got:?}"
        );
        assert!((got.b0 - f.b0).abs() < 1e-6, "{got:?}");
        assert!((got.b1 - f.b1).abs() < 1e-6, "{got:?}");
        assert!(
            (got.lc_winrate_pct - f.lc_winrate).abs() < 1e-6,
            "LC {} vs fixture {}",
            got.lc_winrate_pct,
            f.lc_winrate
        );
    }

    #[test]
    fn recovers_coefficients_when_labels_follow_the_model_exactly() {
        // Differences -300, -100, 100, 300, 0: mean 0, population std sqrt(200000 / 5) = 200.
        // With p_i = sigmoid(b0 + b1 x_i) the score equations hold at (b0, b1) exactly.
        let len_baseline = [400.0, 400.0, 400.0, 400.0, 400.0];
        let len_model = [100.0, 300.0, 500.0, 700.0, 400.0];
        let (b0, b1) = (-0.4, 1.3);
        let p: Vec<f64> = len_model
            .iter()
            .zip(&len_baseline)
            .map(|(m, b)| sigmoid(b0 + b1 * ((m - b) / 200.0_f64).tanh()))
            .collect();
        let got = lc_winrate(&len_model, &len_baseline, &p).unwrap();
        assert_eq!(got.length_std, 200.0);
        assert!(
            (got.b0 - b0).abs() < 1e-10 && (got.b1 - b1).abs() < 1e-10,
            "{got:?}"
        );
        assert!((got.lc_winrate_pct - 100.0 * sigmoid(-0.4)).abs() < 1e-8);
    }

    #[test]
    fn equal_length_differences_fit_only_the_intercept() {
        // std = 0: LC equals the raw win rate, logit(0.7) = ln(7/3).
        let p = [0.9, 0.5, 0.7];
        let got = lc_winrate(&[10.0, 20.0, 30.0], &[5.0, 15.0, 25.0], &p).unwrap();
        assert_eq!((got.length_std, got.b1), (0.0, 0.0));
        assert!((got.b0 - (7.0f64 / 3.0).ln()).abs() < 1e-12, "{got:?}");
        assert!((got.lc_winrate_pct - 70.0).abs() < 1e-9);
        assert!((got.raw_winrate_pct - 70.0).abs() < 1e-12);

        // Equal non-integer differences whose mean rounds (7 x 0.1 / 7 != 0.1) are no variation either.
        let p = [0.9, 0.5, 0.7, 0.7, 0.7, 0.7, 0.7];
        let got = lc_winrate(&[0.1; 7], &[0.0; 7], &p).unwrap();
        assert_eq!((got.length_std, got.b1), (0.0, 0.0));
        assert!((got.lc_winrate_pct - 70.0).abs() < 1e-9, "{got:?}");
    }

    #[test]
    fn ties_everywhere_give_fifty() {
        let got = lc_winrate(&[1.0, 50.0, 300.0], &[100.0, 100.0, 100.0], &[0.5; 3]).unwrap();
        assert!(got.b0.abs() < 1e-12 && got.b1.abs() < 1e-12);
        assert_eq!(got.lc_winrate_pct, 50.0);
    }

    #[test]
    fn unanimous_hard_verdicts_give_the_limit() {
        let got = lc_winrate(&[10.0, 20.0, 90.0, 5.0], &[30.0; 4], &[1.0; 4]).unwrap();
        assert_eq!((got.lc_winrate_pct, got.raw_winrate_pct), (100.0, 100.0));
        assert_eq!(got.b0, f64::INFINITY);
        let got = lc_winrate(&[10.0, 20.0], &[30.0; 2], &[0.0; 2]).unwrap();
        assert_eq!((got.lc_winrate_pct, got.raw_winrate_pct), (0.0, 0.0));
    }

    #[test]
    fn near_unanimous_soft_wins_still_fit() {
        let got = lc_winrate(&[10.0, 20.0, 90.0], &[30.0; 3], &[1.0, 0.999, 1.0]).unwrap();
        assert!(
            got.lc_winrate_pct > 99.0 && got.lc_winrate_pct < 100.0,
            "{got:?}"
        );
    }

    #[test]
    fn preferences_separated_by_length_are_an_error() {
        // Longer always wins outright, shorter always loses: b1 has no finite maximum.
        let err =
            lc_winrate(&[10.0, 20.0, 90.0, 95.0], &[50.0; 4], &[0.0, 0.0, 1.0, 1.0]).unwrap_err();
        assert_eq!(
            err,
            LcWinrateError::SeparatedByLength {
                direction: "longer"
            }
        );
        // Shorter wins; a soft verdict exactly at the boundary length does not prevent it.
        let err = lc_winrate(&[10.0, 50.0, 90.0], &[50.0; 3], &[1.0, 0.3, 0.0]).unwrap_err();
        assert_eq!(
            err,
            LcWinrateError::SeparatedByLength {
                direction: "shorter"
            }
        );
        // One outright loss among the longer responses: a finite maximum exists.
        assert!(lc_winrate(&[10.0, 20.0, 90.0, 95.0], &[50.0; 4], &[0.0, 0.0, 1.0, 0.0]).is_ok());
    }

    #[test]
    fn rejects_bad_input() {
        assert_eq!(lc_winrate(&[], &[], &[]), Err(LcWinrateError::Empty));
        assert!(matches!(
            lc_winrate(&[1.0], &[1.0, 2.0], &[0.5]),
            Err(LcWinrateError::LengthMismatch { .. })
        ));
        assert!(matches!(
            lc_winrate(&[1.0, 2.0], &[1.0, 2.0], &[0.5, f64::NAN]),
            Err(LcWinrateError::InvalidPreference { row: 1, .. })
        ));
        assert!(matches!(
            lc_winrate(&[1.0, 2.0], &[1.0, -2.0], &[0.5, 0.5]),
            Err(LcWinrateError::InvalidLength {
                row: 1,
                column: "len_baseline",
                ..
            })
        ));
    }
}
