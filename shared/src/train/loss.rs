//! The RSPO loss (DESIGN.md, "The RSPO loss").
//!
//! For the selected samples s = 1..S, with sequence log-probs summed over response tokens,
//!
//! ```text
//! dt_s   = log pi_theta(y_s) - log pi_t(y_s)
//! dref_s = log pi_theta(y_s) - log pi_ref(y_s)
//! L      = mean_s (dt_s - eta * (winrate_s - 1/2))^2  +  sum_k coef_k * T_k,      eta = 1 / beta
//! ```
//!
//! with the terms T of [`Term`]. Everything is computed in f64 (the sequence log-probs are
//! converted on entry): with the paper's beta = 0.001 the targets `eta * (winrate - 1/2)` reach
//! +-500 and the self-play term is of order 1e5. Gradients flow back to `logp_theta` (and
//! `ref_token_logp_theta`) in their own dtype.

use candle_core::{DType, Tensor};

use super::regularizer::{check_distinct, Regularizer, RegularizerError, Term};

/// The loss and its parts, as logged in `train_log.parquet`.
#[derive(Debug, Clone)]
pub struct LossParts {
    /// The scalar loss, differentiable w.r.t. `logp_theta` (and the reference token log-probs).
    pub loss: Tensor,
    /// `mean_s (dt_s - eta * (winrate_s - 1/2))^2`.
    pub self_play: f64,
    /// `(name, T)` per regularizer in the given order, before multiplying by the coefficient:
    /// `loss = self_play + sum coef * T`.
    pub terms: Vec<(String, f64)>,
    /// `mean_s dt_s`.
    pub mean_logratio_t: f64,
    /// `mean_s dref_s`.
    pub mean_logratio_ref: f64,
}

#[derive(Debug, thiserror::Error)]
pub enum LossError {
    #[error("rspo loss: logp_theta must have shape (S,) with S > 0, found {0:?}")]
    LogpShape(Vec<usize>),
    #[error("rspo loss: {what} has {found} values but logp_theta has {expected}")]
    Length {
        what: &'static str,
        found: usize,
        expected: usize,
    },
    #[error("rspo loss: beta must be finite and > 0, found {0}")]
    Beta(f64),
    #[error(
        "rspo loss: the forward_kl term needs the token log-probs of reference samples under \
         pi_theta (a non-empty (N,) tensor), found {0}"
    )]
    ReferenceTokens(String),
    #[error("rspo loss: {0}")]
    Regularizer(#[from] RegularizerError),
    #[error("rspo loss is not finite: {0}")]
    NonFinite(String),
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}

/// The RSPO loss over S selected samples.
///
/// - `logp_theta`: (S,) sequence log-probs under the model being trained (differentiable).
/// - `logp_t`, `logp_ref`, `winrates`: S values each, from the logprobs and winrates files.
/// - `beta`: the self-play temperature; eta = 1/beta.
/// - `ref_token_logp_theta`: (N,) log pi_theta of every response token of the samples drawn from
///   pi_ref; required when a `forward_kl` term is present, ignored otherwise.
///
/// A term with coefficient 0 is reported but not added to the loss. A loss that is NaN or
/// infinite is an error whose message lists every part.
pub fn rspo_loss(
    logp_theta: &Tensor,
    logp_t: &[f64],
    logp_ref: &[f64],
    winrates: &[f64],
    beta: f64,
    regularizers: &[Regularizer],
    ref_token_logp_theta: Option<&Tensor>,
) -> Result<LossParts, LossError> {
    let s = match logp_theta.dims() {
        [s] if *s > 0 => *s,
        dims => return Err(LossError::LogpShape(dims.to_vec())),
    };
    for (what, values) in [
        ("logp_t", logp_t),
        ("logp_ref", logp_ref),
        ("winrates", winrates),
    ] {
        if values.len() != s {
            return Err(LossError::Length {
                what,
                found: values.len(),
                expected: s,
            });
        }
    }
    if !(beta.is_finite() && beta > 0.0) {
        return Err(LossError::Beta(beta));
    }
    for r in regularizers {
        r.validate()?;
    }
    check_distinct(regularizers)?;

    let eta = 1.0 / beta;
    let device = logp_theta.device();
    let logp_theta = logp_theta.to_dtype(DType::F64)?;
    let dt = logp_theta.sub(&Tensor::from_slice(logp_t, s, device)?)?;
    let target: Vec<f64> = winrates.iter().map(|w| eta * (w - 0.5)).collect();
    let self_play = dt
        .sub(&Tensor::from_vec(target, s, device)?)?
        .sqr()?
        .mean_all()?;
    let dref = logp_theta.sub(&Tensor::from_slice(logp_ref, s, device)?)?;

    let mut loss = self_play.clone();
    let mut terms = Vec::with_capacity(regularizers.len());
    for r in regularizers {
        let t = match r.term {
            Term::ReverseKl => (dref.sqr()?.mean_all()? * 2.0)?,
            // min() passes no gradient where the clip is active (candle's Minimum backward masks
            // with `min == input`), and clipping before exp keeps exp finite.
            Term::ForwardKlIs { clip } => (dref.neg()?.minimum(clip)?.exp()?.mean_all()? * 2.0)?,
            Term::Chi2 { clip } => (dref.minimum(clip)?.exp()?.mean_all()? * 2.0)?,
            Term::ForwardKl => {
                let tokens = match ref_token_logp_theta {
                    Some(t) if matches!(t.dims(), [n] if *n > 0) => t,
                    Some(t) => {
                        return Err(LossError::ReferenceTokens(format!("shape {:?}", t.dims())))
                    }
                    None => return Err(LossError::ReferenceTokens("none".to_string())),
                };
                tokens.to_dtype(DType::F64)?.mean_all()?.neg()?
            }
        };
        if r.coef != 0.0 {
            loss = loss.add(&(&t * r.coef)?)?;
        }
        terms.push((r.term.name().to_string(), t.to_scalar::<f64>()?));
    }

    let parts = LossParts {
        self_play: self_play.to_scalar::<f64>()?,
        mean_logratio_t: dt.mean_all()?.to_scalar::<f64>()?,
        mean_logratio_ref: dref.mean_all()?.to_scalar::<f64>()?,
        terms,
        loss,
    };
    let value = parts.loss.to_scalar::<f64>()?;
    if !value.is_finite() {
        let mut msg = format!("loss={value}, self_play={}", parts.self_play);
        for (name, t) in &parts.terms {
            msg.push_str(&format!(", {name}={t}"));
        }
        return Err(LossError::NonFinite(msg));
    }
    Ok(parts)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use candle_core::{Device, Var};
    use serde::Deserialize;

    use super::*;
    use crate::train::selection::{Scored, Selection};

    const ORACLE: &str = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../tests/fixtures/rspo-oracle/expected.json"
    );

    #[derive(Deserialize)]
    struct Oracle {
        samples: Vec<OracleSample>,
        results: Vec<OracleResult>,
    }

    #[derive(Deserialize)]
    struct OracleSample {
        prompt_idx: u32,
        sample_idx: u32,
        winrate: f64,
        logp_policy: f64,
        logp_ref: f64,
    }

    #[derive(Deserialize)]
    struct OracleResult {
        config: OracleConfig,
        loss: f64,
        terms: BTreeMap<String, f64>,
    }

    #[derive(Deserialize)]
    struct OracleConfig {
        name: String,
        selection: Selection,
        eta: f64,
        terms: Vec<Regularizer>,
    }

    fn oracle() -> Oracle {
        let text = std::fs::read_to_string(ORACLE).expect("read the rspo-oracle fixture");
        serde_json::from_str(&text).expect("parse the rspo-oracle fixture")
    }

    fn rel(a: f64, b: f64) -> f64 {
        (a - b).abs() / b.abs().max(1e-12)
    }

    /// d L / d logp_theta_s written out from the definition.
    fn analytic_grad(
        logp_theta: &[f64],
        logp_t: &[f64],
        logp_ref: &[f64],
        winrates: &[f64],
        eta: f64,
        regularizers: &[Regularizer],
    ) -> Vec<f64> {
        let s = logp_theta.len() as f64;
        (0..logp_theta.len())
            .map(|i| {
                let dt = logp_theta[i] - logp_t[i];
                let dref = logp_theta[i] - logp_ref[i];
                let mut g = 2.0 / s * (dt - eta * (winrates[i] - 0.5));
                for r in regularizers {
                    g += r.coef
                        * match r.term {
                            Term::ReverseKl => 2.0 * 2.0 / s * dref,
                            Term::ForwardKlIs { clip } if -dref < clip => -2.0 / s * (-dref).exp(),
                            Term::Chi2 { clip } if dref < clip => 2.0 / s * dref.exp(),
                            Term::ForwardKlIs { .. } | Term::Chi2 { .. } | Term::ForwardKl => 0.0,
                        };
                }
                g
            })
            .collect()
    }

    /// Loss, every term and d loss / d logp_theta against the PyTorch oracle at theta = pi_t,
    /// for every configuration that does not need the model (forward_kl needs token log-probs of
    /// the reference samples under pi_theta: that is the model integration test's job).
    #[test]
    fn matches_the_pytorch_oracle() {
        let oracle = oracle();
        assert_eq!(oracle.results.len(), 8);
        let prompt_ids: Vec<String> = oracle
            .samples
            .iter()
            .map(|s| s.prompt_idx.to_string())
            .collect();
        let scored: Vec<Scored> = oracle
            .samples
            .iter()
            .zip(&prompt_ids)
            .map(|(s, id)| Scored {
                prompt_id: id,
                sample_idx: s.sample_idx,
                winrate: s.winrate,
            })
            .collect();
        let mut checked = 0;
        for result in &oracle.results {
            let config = &result.config;
            let needs_model = config
                .terms
                .iter()
                .any(|r| r.term.needs_reference_samples());
            let picked = config.selection.select(&scored).unwrap();
            let pick = |f: fn(&OracleSample) -> f64| -> Vec<f64> {
                picked.iter().map(|&i| f(&oracle.samples[i])).collect()
            };
            let (logp_policy, logp_ref, winrates) = (
                pick(|s| s.logp_policy),
                pick(|s| s.logp_ref),
                pick(|s| s.winrate),
            );
            // theta = pi_t: the model's sequence log-probs are pi_t's.
            for dtype in [DType::F32, DType::F64] {
                let var = Tensor::from_slice(&logp_policy, logp_policy.len(), &Device::Cpu)
                    .and_then(|t| t.to_dtype(dtype))
                    .and_then(|t| Var::from_tensor(&t))
                    .unwrap();
                let call = rspo_loss(
                    var.as_tensor(),
                    &logp_policy,
                    &logp_ref,
                    &winrates,
                    1.0 / config.eta,
                    &config.terms,
                    None,
                );
                if needs_model {
                    assert!(
                        matches!(call, Err(LossError::ReferenceTokens(_))),
                        "{}",
                        config.name
                    );
                    continue;
                }
                let parts = call.unwrap();
                let loss = parts.loss.to_scalar::<f64>().unwrap();
                let mut report = format!(
                    "{:>24} {dtype:?}: loss rel err {:.1e}",
                    config.name,
                    rel(loss, result.loss)
                );
                let self_play_err = rel(parts.self_play, result.terms["self_play"]);
                report.push_str(&format!(", self_play {self_play_err:.1e}"));
                assert!(rel(loss, result.loss) < 1e-4, "{report}");
                assert!(self_play_err < 1e-4, "{report}");
                assert_eq!(parts.terms.len() + 1, result.terms.len(), "{}", config.name);
                for (name, value) in &parts.terms {
                    let expected = result.terms[name.as_str()];
                    report.push_str(&format!(", {name} {:.1e}", rel(*value, expected)));
                    assert!(rel(*value, expected) < 1e-4, "{report}");
                }

                // The gradient, analytically: theta = pi_t, so dt = 0 up to the dtype's rounding.
                let theta: Vec<f64> = var
                    .as_tensor()
                    .to_dtype(DType::F64)
                    .unwrap()
                    .to_vec1()
                    .unwrap();
                let expected = analytic_grad(
                    &theta,
                    &logp_policy,
                    &logp_ref,
                    &winrates,
                    config.eta,
                    &config.terms,
                );
                let grads = parts.loss.backward().unwrap();
                let grad: Vec<f64> = grads
                    .get(var.as_tensor())
                    .expect("a gradient for logp_theta")
                    .to_dtype(DType::F64)
                    .unwrap()
                    .to_vec1()
                    .unwrap();
                let scale = expected.iter().fold(0f64, |m, g| m.max(g.abs()));
                let worst = grad
                    .iter()
                    .zip(&expected)
                    .fold(0f64, |m, (g, e)| m.max((g - e).abs() / scale));
                report.push_str(&format!(", grad {worst:.1e}"));
                assert!(worst < 1e-6, "{report}: {grad:?} vs {expected:?}");
                println!("{report}");
            }
            if !needs_model {
                checked += 1;
            }
        }
        assert_eq!(checked, 7);
    }

    #[test]
    fn self_play_gradient_is_two_over_s_times_the_residual() {
        let logp_t = [-10.0, -20.0, -30.0];
        let logp_ref = [-11.0, -19.0, -30.5];
        let winrates = [0.9, 0.5, 0.2];
        let theta = [-9.5, -20.25, -29.0];
        let var = Var::from_slice(&theta, 3, &Device::Cpu).unwrap();
        let beta = 0.001;
        let parts = rspo_loss(
            var.as_tensor(),
            &logp_t,
            &logp_ref,
            &winrates,
            beta,
            &[],
            None,
        )
        .unwrap();
        let grads = parts.loss.backward().unwrap();
        let grad: Vec<f64> = grads.get(var.as_tensor()).unwrap().to_vec1().unwrap();
        let mut expected_loss = 0.0;
        for i in 0..3 {
            let residual = (theta[i] - logp_t[i]) - 1000.0 * (winrates[i] - 0.5);
            expected_loss += residual * residual / 3.0;
            assert!((grad[i] - 2.0 / 3.0 * residual).abs() < 1e-9, "{grad:?}");
        }
        assert!(rel(parts.self_play, expected_loss) < 1e-12);
        assert!(parts.terms.is_empty());
        assert!((parts.mean_logratio_t - (0.5 - 0.25 + 1.0) / 3.0).abs() < 1e-12);
        assert!((parts.mean_logratio_ref - (1.5 - 1.25 + 1.5) / 3.0).abs() < 1e-12);
    }

    #[test]
    fn clipped_samples_get_exactly_zero_gradient() {
        // dref = theta - ref = [-20, 0.5, 12, 10]: forward_kl_is (clip 10) clips -dref = 20;
        // chi2 (clip 11) clips dref = 12.
        let theta = [-30.0, -1.5, 2.0, 0.0];
        let logp_ref = [-10.0, -2.0, -10.0, -10.0];
        let logp_t = theta;
        let winrates = [0.5; 4];
        for (term, clipped, kept) in [
            (Term::ForwardKlIs { clip: 10.0 }, vec![0], vec![1, 2, 3]),
            (Term::Chi2 { clip: 11.0 }, vec![2], vec![0, 1, 3]),
        ] {
            let var = Var::from_slice(&theta, 4, &Device::Cpu).unwrap();
            let regs = [Regularizer::new(term, 0.3)];
            let parts = rspo_loss(
                var.as_tensor(),
                &logp_t,
                &logp_ref,
                &winrates,
                0.1,
                &regs,
                None,
            )
            .unwrap();
            let clip = term.clip().unwrap();
            let sign = if matches!(term, Term::Chi2 { .. }) {
                1.0
            } else {
                -1.0
            };
            let expected_t = 2.0 / 4.0
                * theta
                    .iter()
                    .zip(&logp_ref)
                    .map(|(t, r)| (sign * (t - r)).min(clip).exp())
                    .sum::<f64>();
            assert!(rel(parts.terms[0].1, expected_t) < 1e-12, "{term:?}");
            let grads = parts.loss.backward().unwrap();
            let grad: Vec<f64> = grads.get(var.as_tensor()).unwrap().to_vec1().unwrap();
            for i in clipped {
                assert_eq!(grad[i], 0.0, "{term:?} sample {i}: {grad:?}");
            }
            for i in kept {
                let dref = theta[i] - logp_ref[i];
                let expected = 0.3 * 2.0 / 4.0 * sign * (sign * dref).exp();
                assert!(
                    rel(grad[i], expected) < 1e-12,
                    "{term:?} sample {i}: {grad:?}"
                );
            }
        }
        // Far beyond the clip nothing overflows.
        let var = Var::from_slice(&[-5000.0f32], 1, &Device::Cpu).unwrap();
        let regs = [Regularizer::new(Term::ForwardKlIs { clip: 10.0 }, 1.0)];
        let parts = rspo_loss(
            var.as_tensor(),
            &[-5000.0],
            &[0.0],
            &[0.5],
            1.0,
            &regs,
            None,
        )
        .unwrap();
        assert!(rel(parts.terms[0].1, 2.0 * 10f64.exp()) < 1e-12);
        let grads = parts.loss.backward().unwrap();
        let grad: Vec<f32> = grads.get(var.as_tensor()).unwrap().to_vec1().unwrap();
        assert_eq!(grad, vec![0.0]);
    }

    #[test]
    fn forward_kl_is_the_mean_negative_token_logprob() {
        let var_theta = Var::from_slice(&[-3.0f32, -4.0], 2, &Device::Cpu).unwrap();
        let tokens = Var::from_slice(&[-1.0f32, -2.0, -3.0, -4.0, -5.5], 5, &Device::Cpu).unwrap();
        let regs = [Regularizer::new(Term::ForwardKl, 0.1)];
        let parts = rspo_loss(
            var_theta.as_tensor(),
            &[-3.0, -4.0],
            &[-3.0, -4.0],
            &[0.5, 0.5],
            0.1,
            &regs,
            Some(tokens.as_tensor()),
        )
        .unwrap();
        assert_eq!(parts.terms, vec![("forward_kl".to_string(), 15.5 / 5.0)]);
        assert!(rel(parts.loss.to_scalar::<f64>().unwrap(), 0.1 * 3.1) < 1e-12);
        let grads = parts.loss.backward().unwrap();
        let grad: Vec<f32> = grads.get(tokens.as_tensor()).unwrap().to_vec1().unwrap();
        for g in grad {
            assert!((g - (-0.1 / 5.0)).abs() < 1e-9);
        }
        // Missing or empty reference tokens are an error naming the term.
        let missing = rspo_loss(
            var_theta.as_tensor(),
            &[-3.0, -4.0],
            &[-3.0, -4.0],
            &[0.5, 0.5],
            0.1,
            &regs,
            None,
        )
        .unwrap_err();
        assert!(missing.to_string().contains("forward_kl"), "{missing}");
    }

    #[test]
    fn bad_input_is_an_error() {
        let var = Var::from_slice(&[-1.0f32, -2.0], 2, &Device::Cpu).unwrap();
        let x = var.as_tensor();
        let two = [0.0, 0.0];
        assert!(matches!(
            rspo_loss(x, &[0.0], &two, &two, 0.1, &[], None),
            Err(LossError::Length {
                what: "logp_t",
                found: 1,
                expected: 2
            })
        ));
        assert!(matches!(
            rspo_loss(x, &two, &two, &two, 0.0, &[], None),
            Err(LossError::Beta(_))
        ));
        let empty = Tensor::zeros(0, DType::F32, &Device::Cpu).unwrap();
        assert!(matches!(
            rspo_loss(&empty, &[], &[], &[], 0.1, &[], None),
            Err(LossError::LogpShape(_))
        ));
        let twice = [
            Regularizer::new(Term::ReverseKl, 0.1),
            Regularizer::new(Term::ReverseKl, 0.2),
        ];
        assert!(matches!(
            rspo_loss(x, &two, &two, &two, 0.1, &twice, None),
            Err(LossError::Regularizer(RegularizerError::Duplicate { .. }))
        ));
        // An infinite term (clip disabled) is reported, not returned as a loss.
        let unclipped = [Regularizer::new(
            Term::Chi2 {
                clip: f64::INFINITY,
            },
            0.1,
        )];
        let err =
            rspo_loss(x, &two, &[-1000.0, 0.0], &[0.5, 0.5], 0.1, &unclipped, None).unwrap_err();
        assert!(
            matches!(err, LossError::NonFinite(ref m) if m.contains("chi2=inf")),
            "{err}"
        );
    }
}
