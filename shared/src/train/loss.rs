//! The RSPO loss (DESIGN.md, "The RSPO loss"): every term, in this one module.
//!
//! For the selected samples s = 1..S, with sequence log-probs summed over response tokens,
//!
//! ```text
//! dt_s   = log pi_theta(y_s) - log pi_t(y_s)
//! dref_s = log pi_theta(y_s) - log pi_ref(y_s)
//! L      = mean_s (dt_s - eta * (winrate_s - 1/2))^2  +  sum_k coef_k * T_k,      eta = 1 / beta
//! ```
//!
//! with the terms T of [`Term`]: `reverse_kl`, `forward_kl_is`, `chi2` and the official code's
//! `chisqsm1`, `entropy` and `reverseklnoent` are means over the S samples of a function of
//! log pi_theta(y_s) and log pi_ref(y_s); `forward_kl` is minus the sum, over the response tokens
//! of samples drawn from pi_ref, of their log-probs under pi_theta, divided by N: the number of
//! those tokens (`norm=tokens`, the default) or the official code's B x (T - 1) (`norm=padded`,
//! [`ForwardKlNorm`]). Everything is computed in
//! f64 (the log-probs are converted on entry): with the paper's beta = 0.001 the targets
//! `eta * (winrate - 1/2)` reach +-500 and the self-play term is of order 1e5. Gradients flow
//! back to the log-probs in their own dtype.
//!
//! A step's sequences may not fit through the model at once, so [`StepLoss`] builds L from
//! micro-batch shares. Every term is a mean over samples (or a sum over reference tokens divided
//! by the step's N), so micro-batch m with S_m of the samples and N_m of the reference tokens
//! contributes `S_m / S` times the loss
//! of its own samples plus `-coef * (sum of its tokens' log-probs) / N`. Back-propagating each
//! share and summing the gradients gives exactly the gradient of L; [`rspo_loss`] is L of one
//! batch, a single share. [`LossSpec::new`] is where beta and the regularizers are validated.

use candle_core::{DType, Tensor};

use super::regularizer::{check_distinct, ForwardKlNorm, Regularizer, RegularizerError, Term};

/// The loss's settings, validated: beta finite and > 0, every regularizer valid, no kind twice.
#[derive(Debug, Clone, PartialEq)]
pub struct LossSpec {
    beta: f64,
    regularizers: Vec<Regularizer>,
}

impl LossSpec {
    /// `beta`: the self-play temperature, eta = 1 / beta. `regularizers`: the terms in the order
    /// they are reported.
    pub fn new(beta: f64, regularizers: Vec<Regularizer>) -> Result<Self, LossError> {
        if !(beta.is_finite() && beta > 0.0) {
            return Err(LossError::Beta(beta));
        }
        for r in &regularizers {
            r.validate()?;
        }
        check_distinct(&regularizers)?;
        Ok(LossSpec { beta, regularizers })
    }

    pub fn beta(&self) -> f64 {
        self.beta
    }

    pub fn regularizers(&self) -> &[Regularizer] {
        &self.regularizers
    }

    /// Whether a term needs samples drawn from pi_ref (`forward_kl`).
    pub fn needs_reference_samples(&self) -> bool {
        self.regularizers
            .iter()
            .any(|r| r.term.needs_reference_samples())
    }

    fn forward_kl_coef(&self) -> Option<f64> {
        self.regularizers
            .iter()
            .find(|r| r.term.needs_reference_samples())
            .map(|r| r.coef)
    }

    fn forward_kl_norm(&self) -> Option<ForwardKlNorm> {
        self.regularizers.iter().find_map(|r| match r.term {
            Term::ForwardKl { norm } => Some(norm),
            _ => None,
        })
    }

    /// N, the `forward_kl` divisor, for a step whose reference responses have these lengths
    /// (0 without a `forward_kl` term).
    pub fn reference_divisor(&self, response_lens: &[usize]) -> usize {
        self.forward_kl_norm()
            .map_or(0, |norm| norm.divisor(response_lens))
    }
}

/// The loss's value and parts, as logged in `train_log.parquet`.
#[derive(Debug, Clone, PartialEq)]
pub struct LossValues {
    /// `self_play + sum coef * T`.
    pub loss: f64,
    /// `mean_s (dt_s - eta * (winrate_s - 1/2))^2`.
    pub self_play: f64,
    /// `(name, T)` per regularizer in the spec's order, before multiplying by the coefficient.
    pub terms: Vec<(String, f64)>,
    /// `mean_s dt_s`.
    pub mean_logratio_t: f64,
    /// `mean_s dref_s`.
    pub mean_logratio_ref: f64,
}

/// The loss of one batch: differentiable, and its values.
#[derive(Debug, Clone)]
pub struct LossParts {
    /// The scalar loss, differentiable w.r.t. the log-probs under pi_theta.
    pub loss: Tensor,
    pub values: LossValues,
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
    #[error("rspo loss: a step needs at least one selected sample")]
    NoSamples,
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

/// The selected samples of one micro-batch.
pub struct SampleLogprobs<'a> {
    /// (S_m,) sequence log-probs under the model being trained (differentiable).
    pub logp_theta: &'a Tensor,
    /// S_m values each, from the logprobs and winrates files.
    pub logp_t: &'a [f64],
    pub logp_ref: &'a [f64],
    pub winrates: &'a [f64],
}

/// The loss of one optimizer step, added up from micro-batch shares: [`StepLoss::add`] per
/// micro-batch (back-propagate what it returns), then [`StepLoss::finish`].
pub struct StepLoss<'a> {
    spec: &'a LossSpec,
    /// S: selected samples in the step.
    samples: usize,
    /// N: the `forward_kl` divisor, [`LossSpec::reference_divisor`] of the step's reference
    /// samples (0 without `forward_kl`).
    reference_tokens: usize,
    self_play: f64,
    mean_logratio_t: f64,
    mean_logratio_ref: f64,
    /// Per regularizer in the spec's order: the weighted sum of T over the shares so far, or
    /// for `forward_kl` the sum of the reference token log-probs.
    sums: Vec<f64>,
}

impl<'a> StepLoss<'a> {
    /// A step over `samples` selected samples, dividing the `forward_kl` sum by
    /// `reference_tokens` ([`LossSpec::reference_divisor`]; needed, and > 0, only with a
    /// `forward_kl` term).
    pub fn new(
        spec: &'a LossSpec,
        samples: usize,
        reference_tokens: usize,
    ) -> Result<Self, LossError> {
        if samples == 0 {
            return Err(LossError::NoSamples);
        }
        if spec.forward_kl_coef().is_some() && reference_tokens == 0 {
            return Err(LossError::ReferenceTokens("no response tokens".into()));
        }
        Ok(StepLoss {
            spec,
            samples,
            reference_tokens,
            self_play: 0.0,
            mean_logratio_t: 0.0,
            mean_logratio_ref: 0.0,
            sums: vec![0.0; spec.regularizers.len()],
        })
    }

    /// Adds one micro-batch: its selected samples (if any) and the (N_m,) token log-probs under
    /// pi_theta of its reference samples' responses (if any; ignored without `forward_kl`).
    /// Returns the micro-batch's differentiable share of L, or `None` when it adds nothing.
    pub fn add(
        &mut self,
        samples: Option<&SampleLogprobs<'_>>,
        reference_token_logp_theta: Option<&Tensor>,
    ) -> Result<Option<Tensor>, LossError> {
        let mut share = match samples {
            Some(samples) => Some(self.add_samples(samples)?),
            None => None,
        };
        if let (Some(coef), Some(tokens)) =
            (self.spec.forward_kl_coef(), reference_token_logp_theta)
        {
            if let Some(part) = self.add_reference_tokens(coef, tokens)? {
                share = Some(match share {
                    Some(s) => (s + part)?,
                    None => part,
                });
            }
        }
        Ok(share)
    }

    /// `S_m / S` times the per-sample part of L over these samples.
    fn add_samples(&mut self, batch: &SampleLogprobs<'_>) -> Result<Tensor, LossError> {
        let s = match batch.logp_theta.dims() {
            [s] if *s > 0 => *s,
            dims => return Err(LossError::LogpShape(dims.to_vec())),
        };
        for (what, values) in [
            ("logp_t", batch.logp_t),
            ("logp_ref", batch.logp_ref),
            ("winrates", batch.winrates),
        ] {
            if values.len() != s {
                return Err(LossError::Length {
                    what,
                    found: values.len(),
                    expected: s,
                });
            }
        }
        let eta = 1.0 / self.spec.beta;
        let device = batch.logp_theta.device();
        let logp_theta = batch.logp_theta.to_dtype(DType::F64)?;
        let dt = logp_theta.sub(&Tensor::from_slice(batch.logp_t, s, device)?)?;
        let target: Vec<f64> = batch.winrates.iter().map(|w| eta * (w - 0.5)).collect();
        let self_play = dt
            .sub(&Tensor::from_vec(target, s, device)?)?
            .sqr()?
            .mean_all()?;

        let two_means = |t: Tensor| t.mean_all()? * 2.0;
        let logp_ref = Tensor::from_slice(batch.logp_ref, s, device)?;
        let dref = logp_theta.sub(&logp_ref)?;
        let mut loss = self_play.clone();
        let mut terms: Vec<(usize, f64)> = Vec::with_capacity(self.sums.len());
        for (k, r) in self.spec.regularizers.iter().enumerate() {
            let t = match r.term {
                Term::ReverseKl => two_means(dref.sqr()?)?,
                // min() passes no gradient where the clip is active (candle's Minimum backward
                // masks with `min == input`), and clipping before exp keeps exp finite.
                Term::ForwardKlIs { clip } => two_means(dref.neg()?.minimum(clip)?.exp()?)?,
                Term::Chi2 { clip } => two_means(dref.minimum(clip)?.exp()?)?,
                Term::Chisqsm1 { clip } => {
                    let ratio = dref.minimum(clip)?.exp()?;
                    two_means(ratio.div(&(&ratio + 1.0)?)?)?
                }
                Term::Entropy => two_means(logp_theta.sqr()?)?,
                Term::ReverseKlNoEnt => two_means(logp_theta.mul(&logp_ref)?.neg()?)?,
                // A sum over reference tokens, not a mean over samples: add_reference_tokens.
                Term::ForwardKl { .. } => continue,
            };
            if r.coef != 0.0 {
                loss = loss.add(&(&t * r.coef)?)?;
            }
            terms.push((k, t.to_scalar::<f64>()?));
        }
        let self_play = self_play.to_scalar::<f64>()?;
        let value = loss.to_scalar::<f64>()?;
        if !value.is_finite() {
            let mut msg = format!("loss={value}, self_play={self_play}");
            for (k, t) in &terms {
                msg.push_str(&format!(", {}={t}", self.spec.regularizers[*k].term.name()));
            }
            return Err(LossError::NonFinite(msg));
        }

        let weight = s as f64 / self.samples as f64;
        self.self_play += weight * self_play;
        self.mean_logratio_t += weight * dt.mean_all()?.to_scalar::<f64>()?;
        self.mean_logratio_ref += weight * dref.mean_all()?.to_scalar::<f64>()?;
        for (k, t) in terms {
            self.sums[k] += weight * t;
        }
        Ok((loss * weight)?)
    }

    /// `-coef * sum(tokens) / N`, or `None` when there are no tokens or the coefficient is 0.
    fn add_reference_tokens(
        &mut self,
        coef: f64,
        tokens: &Tensor,
    ) -> Result<Option<Tensor>, LossError> {
        match tokens.dims() {
            [0] => return Ok(None),
            [_] => {}
            dims => return Err(LossError::ReferenceTokens(format!("shape {dims:?}"))),
        }
        let n = self.reference_tokens as f64;
        let sum = tokens.to_dtype(DType::F64)?.sum_all()?;
        let value = sum.to_scalar::<f64>()?;
        if !value.is_finite() {
            return Err(LossError::NonFinite(format!("forward_kl={}", -value / n)));
        }
        let k = self
            .spec
            .regularizers
            .iter()
            .position(|r| r.term.needs_reference_samples())
            .expect("a forward_kl term");
        self.sums[k] += value;
        if coef == 0.0 {
            return Ok(None);
        }
        Ok(Some((sum * (-coef / n))?))
    }

    /// The step's loss and parts.
    pub fn finish(self) -> LossValues {
        let mut loss = self.self_play;
        let mut terms = Vec::with_capacity(self.sums.len());
        for (r, sum) in self.spec.regularizers.iter().zip(&self.sums) {
            let t = match r.term {
                Term::ForwardKl { .. } => -sum / self.reference_tokens as f64,
                _ => *sum,
            };
            if r.coef != 0.0 {
                loss += r.coef * t;
            }
            terms.push((r.term.name().to_string(), t));
        }
        LossValues {
            loss,
            self_play: self.self_play,
            terms,
            mean_logratio_t: self.mean_logratio_t,
            mean_logratio_ref: self.mean_logratio_ref,
        }
    }
}

/// The RSPO loss over S selected samples, as one share.
///
/// - `logp_theta`: (S,) sequence log-probs under the model being trained (differentiable).
/// - `logp_t`, `logp_ref`, `winrates`: S values each, from the logprobs and winrates files.
/// - `ref_token_logp_theta`: (N,) log pi_theta of every response token of the samples drawn from
///   pi_ref; required when a `forward_kl` term is present (with `norm=tokens`: `norm=padded`
///   needs the responses' lengths, [`StepLoss`]), ignored otherwise.
///
/// A term with coefficient 0 is reported but not added to the loss. A loss that is NaN or
/// infinite is an error whose message lists every part.
pub fn rspo_loss(
    spec: &LossSpec,
    logp_theta: &Tensor,
    logp_t: &[f64],
    logp_ref: &[f64],
    winrates: &[f64],
    ref_token_logp_theta: Option<&Tensor>,
) -> Result<LossParts, LossError> {
    let s = match logp_theta.dims() {
        [s] if *s > 0 => *s,
        dims => return Err(LossError::LogpShape(dims.to_vec())),
    };
    let reference_tokens = match ref_token_logp_theta {
        _ if spec.forward_kl_coef().is_none() => 0,
        _ if spec.forward_kl_norm() == Some(ForwardKlNorm::Padded) => {
            return Err(LossError::ReferenceTokens(
                "forward_kl with norm=padded needs each reference response's length: use StepLoss"
                    .into(),
            ))
        }
        Some(t) => match t.dims() {
            [n] if *n > 0 => *n,
            dims => return Err(LossError::ReferenceTokens(format!("shape {dims:?}"))),
        },
        None => return Err(LossError::ReferenceTokens("none".to_string())),
    };
    let samples = SampleLogprobs {
        logp_theta,
        logp_t,
        logp_ref,
        winrates,
    };
    let mut step = StepLoss::new(spec, s, reference_tokens)?;
    let loss = step
        .add(Some(&samples), ref_token_logp_theta)?
        .expect("a share with at least one sample");
    Ok(LossParts {
        loss,
        values: step.finish(),
    })
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use candle_core::{Device, Var};
    use serde::Deserialize;

    use super::*;
    use crate::train::selection::{Scored, Selection};

    const FORWARD_KL: Term = Term::ForwardKl {
        norm: ForwardKlNorm::Tokens,
    };

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

    fn spec(beta: f64, regularizers: &[Regularizer]) -> LossSpec {
        LossSpec::new(beta, regularizers.to_vec()).unwrap()
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
                            Term::Chisqsm1 { clip } if dref < clip => {
                                2.0 / s * dref.exp() / (1.0 + dref.exp()).powi(2)
                            }
                            Term::Entropy => 2.0 / s * 2.0 * logp_theta[i],
                            Term::ReverseKlNoEnt => -2.0 / s * logp_ref[i],
                            Term::ForwardKlIs { .. }
                            | Term::Chi2 { .. }
                            | Term::Chisqsm1 { .. }
                            | Term::ForwardKl { .. } => 0.0,
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
                    &spec(1.0 / config.eta, &config.terms),
                    var.as_tensor(),
                    &logp_policy,
                    &logp_ref,
                    &winrates,
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
                let self_play_err = rel(parts.values.self_play, result.terms["self_play"]);
                report.push_str(&format!(", self_play {self_play_err:.1e}"));
                assert!(rel(loss, result.loss) < 1e-4, "{report}");
                assert!(self_play_err < 1e-4, "{report}");
                assert_eq!(
                    parts.values.terms.len() + 1,
                    result.terms.len(),
                    "{}",
                    config.name
                );
                for (name, value) in &parts.values.terms {
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

    #[derive(Deserialize)]
    struct OfficialTerms {
        sample_terms: Vec<OfficialSampleTerm>,
        forward_kl: OfficialForwardKl,
    }

    #[derive(Deserialize)]
    struct OfficialSampleTerm {
        loss_type: String,
        beta: f64,
        term: Regularizer,
        theta: Vec<f64>,
        logp_t: Vec<f64>,
        logp_ref: Vec<f64>,
        winrate: Vec<f64>,
        loss: f64,
        self_play: f64,
        reg_loss: f64,
        grad_theta: Vec<f64>,
    }

    #[derive(Deserialize)]
    struct OfficialForwardKl {
        token_logp_theta: Vec<Vec<f64>>,
        padded: OfficialValue<Vec<Vec<f64>>>,
        tokens: OfficialValue<Vec<f64>>,
    }

    #[derive(Deserialize)]
    struct OfficialValue<G> {
        value: f64,
        grad: G,
    }

    fn official_terms() -> OfficialTerms {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../tests/fixtures/official-terms/terms.json"
        );
        let text = std::fs::read_to_string(path).expect("read the official-terms fixture");
        serde_json::from_str(&text).expect("parse the official-terms fixture")
    }

    /// chisqsm1, entropy and reverseklnoent against the official trainer's formulas in PyTorch
    /// (tests/fixtures/official-terms/make_terms.py): the whole loss, the term and the gradient.
    #[test]
    fn matches_the_official_terms() {
        let fixture = official_terms();
        assert_eq!(fixture.sample_terms.len(), 4);
        for case in &fixture.sample_terms {
            let n = case.theta.len();
            let var = Var::from_slice(&case.theta, n, &Device::Cpu).unwrap();
            let parts = rspo_loss(
                &spec(case.beta, &[case.term]),
                var.as_tensor(),
                &case.logp_t,
                &case.logp_ref,
                &case.winrate,
                None,
            )
            .unwrap();
            let loss = parts.loss.to_scalar::<f64>().unwrap();
            let what = format!("{} ({})", case.loss_type, case.term);
            assert!(
                rel(loss, case.loss) < 1e-12,
                "{what}: {loss} vs {}",
                case.loss
            );
            assert!(
                rel(parts.values.self_play, case.self_play) < 1e-12,
                "{what}"
            );
            assert_eq!(parts.values.terms[0].0, case.term.term.name());
            let term = parts.values.terms[0].1;
            assert!(
                rel(term, case.reg_loss) < 1e-12,
                "{what}: {term} vs {}",
                case.reg_loss
            );
            let grads = parts.loss.backward().unwrap();
            let grad: Vec<f64> = grads.get(var.as_tensor()).unwrap().to_vec1().unwrap();
            for (g, e) in grad.iter().zip(&case.grad_theta) {
                assert!(
                    rel(*g, *e) < 1e-10,
                    "{what}: {grad:?} vs {:?}",
                    case.grad_theta
                );
            }
        }
    }

    /// forward_kl's two normalizations against PyTorch: `norm=padded` is the official mean over
    /// the padded (B, T-1) tensor, `norm=tokens` the mean over real tokens.
    #[test]
    fn forward_kl_norms_match_pytorch() {
        let fixture = official_terms().forward_kl;
        let lens: Vec<usize> = fixture.token_logp_theta.iter().map(Vec::len).collect();
        let flat: Vec<f64> = fixture.token_logp_theta.concat();
        let padded_grad: Vec<f64> = fixture.padded.grad.concat();
        for (norm, expected, expected_grad) in [
            (
                ForwardKlNorm::Tokens,
                &fixture.tokens.value,
                &fixture.tokens.grad,
            ),
            (ForwardKlNorm::Padded, &fixture.padded.value, &padded_grad),
        ] {
            let coef = 0.25;
            let spec = spec(0.1, &[Regularizer::new(Term::ForwardKl { norm }, coef)]);
            let tokens = Var::from_slice(&flat, flat.len(), &Device::Cpu).unwrap();
            let mut step = StepLoss::new(&spec, 1, spec.reference_divisor(&lens)).unwrap();
            let theta = Tensor::new(&[-1.0f64], &Device::Cpu).unwrap();
            let sample = SampleLogprobs {
                logp_theta: &theta,
                logp_t: &[-1.0],
                logp_ref: &[-1.0],
                winrates: &[0.5],
            };
            let share = step
                .add(Some(&sample), Some(tokens.as_tensor()))
                .unwrap()
                .unwrap();
            let grads = share.backward().unwrap();
            let grad: Vec<f64> = grads.get(tokens.as_tensor()).unwrap().to_vec1().unwrap();
            let values = step.finish();
            assert_eq!(values.terms[0].0, "forward_kl");
            assert!(
                rel(values.terms[0].1, *expected) < 1e-12,
                "{norm:?}: {values:?}"
            );
            assert!(rel(values.loss, coef * expected) < 1e-12, "{norm:?}");
            for (g, e) in grad.iter().zip(expected_grad) {
                assert!(rel(*g, coef * e) < 1e-12, "{norm:?}: {grad:?}");
            }
        }
        // One flat tensor has no lengths: rspo_loss refuses norm=padded.
        let padded = Term::ForwardKl {
            norm: ForwardKlNorm::Padded,
        };
        let tokens = Tensor::new(flat.as_slice(), &Device::Cpu).unwrap();
        let theta = Tensor::new(&[-1.0f64], &Device::Cpu).unwrap();
        let err = rspo_loss(
            &spec(0.1, &[Regularizer::new(padded, 1.0)]),
            &theta,
            &[-1.0],
            &[-1.0],
            &[0.5],
            Some(&tokens),
        )
        .unwrap_err();
        assert!(err.to_string().contains("norm=padded"), "{err}");
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
            &spec(beta, &[]),
            var.as_tensor(),
            &logp_t,
            &logp_ref,
            &winrates,
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
        assert!(rel(parts.values.self_play, expected_loss) < 1e-12);
        assert!(parts.values.terms.is_empty());
        assert!((parts.values.mean_logratio_t - (0.5 - 0.25 + 1.0) / 3.0).abs() < 1e-12);
        assert!((parts.values.mean_logratio_ref - (1.5 - 1.25 + 1.5) / 3.0).abs() < 1e-12);
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
                &spec(0.1, &regs),
                var.as_tensor(),
                &logp_t,
                &logp_ref,
                &winrates,
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
            assert!(rel(parts.values.terms[0].1, expected_t) < 1e-12, "{term:?}");
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
            &spec(1.0, &regs),
            var.as_tensor(),
            &[-5000.0],
            &[0.0],
            &[0.5],
            None,
        )
        .unwrap();
        assert!(rel(parts.values.terms[0].1, 2.0 * 10f64.exp()) < 1e-12);
        let grads = parts.loss.backward().unwrap();
        let grad: Vec<f32> = grads.get(var.as_tensor()).unwrap().to_vec1().unwrap();
        assert_eq!(grad, vec![0.0]);
    }

    #[test]
    fn forward_kl_is_the_mean_negative_token_logprob() {
        let var_theta = Var::from_slice(&[-3.0f32, -4.0], 2, &Device::Cpu).unwrap();
        let tokens = Var::from_slice(&[-1.0f32, -2.0, -3.0, -4.0, -5.5], 5, &Device::Cpu).unwrap();
        let regs = [Regularizer::new(FORWARD_KL, 0.1)];
        let parts = rspo_loss(
            &spec(0.1, &regs),
            var_theta.as_tensor(),
            &[-3.0, -4.0],
            &[-3.0, -4.0],
            &[0.5, 0.5],
            Some(tokens.as_tensor()),
        )
        .unwrap();
        assert_eq!(
            parts.values.terms,
            vec![("forward_kl".to_string(), 15.5 / 5.0)]
        );
        assert!(rel(parts.loss.to_scalar::<f64>().unwrap(), 0.1 * 3.1) < 1e-12);
        let grads = parts.loss.backward().unwrap();
        let grad: Vec<f32> = grads.get(tokens.as_tensor()).unwrap().to_vec1().unwrap();
        for g in grad {
            assert!((g - (-0.1 / 5.0)).abs() < 1e-9);
        }
        // Missing or empty reference tokens are an error naming the term.
        let missing = rspo_loss(
            &spec(0.1, &regs),
            var_theta.as_tensor(),
            &[-3.0, -4.0],
            &[-3.0, -4.0],
            &[0.5, 0.5],
            None,
        )
        .unwrap_err();
        assert!(missing.to_string().contains("forward_kl"), "{missing}");
    }

    /// Three micro-batches, one of reference tokens only: the shares' values and gradients add
    /// up to L's, written out from the definition.
    #[test]
    fn micro_batch_shares_add_up_to_the_whole_loss() {
        let theta = [-9.5, -20.25, -29.0];
        let logp_t = [-10.0, -20.0, -30.0];
        let logp_ref = [-11.0, -19.0, -30.5];
        let winrates = [0.9, 0.5, 0.2];
        let tokens = [-1.0, -2.0, -3.0, -4.0, -5.5];
        let (eta, rkl, fkl) = (10.0, 0.5, 0.1);
        let spec = spec(
            1.0 / eta,
            &[
                Regularizer::new(Term::ReverseKl, rkl),
                Regularizer::new(FORWARD_KL, fkl),
            ],
        );
        let theta_var = Var::from_slice(&theta, 3, &Device::Cpu).unwrap();
        let token_var = Var::from_slice(&tokens, 5, &Device::Cpu).unwrap();
        let mut step = StepLoss::new(&spec, 3, 5).unwrap();
        let (mut grad, mut token_grad) = (vec![0.0; 3], vec![0.0; 5]);
        for (samples, toks) in [(0..2, 0..1), (2..3, 1..3), (3..3, 3..5)] {
            let logp_theta = theta_var
                .as_tensor()
                .narrow(0, samples.start, samples.len())
                .unwrap();
            let share = SampleLogprobs {
                logp_theta: &logp_theta,
                logp_t: &logp_t[samples.clone()],
                logp_ref: &logp_ref[samples.clone()],
                winrates: &winrates[samples.clone()],
            };
            let reference = token_var
                .as_tensor()
                .narrow(0, toks.start, toks.len())
                .unwrap();
            let loss = step
                .add((!samples.is_empty()).then_some(&share), Some(&reference))
                .unwrap()
                .unwrap();
            let grads = loss.backward().unwrap();
            for (acc, var) in [(&mut grad, &theta_var), (&mut token_grad, &token_var)] {
                if let Some(g) = grads.get(var.as_tensor()) {
                    for (a, g) in acc.iter_mut().zip(g.to_vec1::<f64>().unwrap()) {
                        *a += g;
                    }
                }
            }
        }
        let values = step.finish();

        let dt: Vec<f64> = (0..3).map(|i| theta[i] - logp_t[i]).collect();
        let dref: Vec<f64> = (0..3).map(|i| theta[i] - logp_ref[i]).collect();
        let residual: Vec<f64> = (0..3).map(|i| dt[i] - eta * (winrates[i] - 0.5)).collect();
        let self_play = residual.iter().map(|r| r * r).sum::<f64>() / 3.0;
        let reverse_kl = 2.0 * dref.iter().map(|d| d * d).sum::<f64>() / 3.0;
        let forward_kl = 15.5 / 5.0;
        assert!(rel(values.self_play, self_play) < 1e-12, "{values:?}");
        assert!(rel(values.terms[0].1, reverse_kl) < 1e-12, "{values:?}");
        assert_eq!(values.terms[1], ("forward_kl".to_string(), forward_kl));
        let loss = self_play + rkl * reverse_kl + fkl * forward_kl;
        assert!(rel(values.loss, loss) < 1e-12, "{values:?}");
        assert!(rel(values.mean_logratio_t, dt.iter().sum::<f64>() / 3.0) < 1e-12);
        assert!(rel(values.mean_logratio_ref, dref.iter().sum::<f64>() / 3.0) < 1e-12);
        for i in 0..3 {
            let expected = 2.0 / 3.0 * residual[i] + rkl * 4.0 / 3.0 * dref[i];
            assert!(rel(grad[i], expected) < 1e-12, "{grad:?}");
        }
        for g in token_grad {
            assert!(rel(g, -fkl / 5.0) < 1e-12);
        }
        // Without reference tokens a forward_kl step cannot start.
        assert!(matches!(
            StepLoss::new(&spec, 3, 0),
            Err(LossError::ReferenceTokens(_))
        ));
        assert!(matches!(
            StepLoss::new(&spec, 0, 5),
            Err(LossError::NoSamples)
        ));
    }

    #[test]
    fn bad_input_is_an_error() {
        let var = Var::from_slice(&[-1.0f32, -2.0], 2, &Device::Cpu).unwrap();
        let x = var.as_tensor();
        let two = [0.0, 0.0];
        assert!(matches!(
            rspo_loss(&spec(0.1, &[]), x, &[0.0], &two, &two, None),
            Err(LossError::Length {
                what: "logp_t",
                found: 1,
                expected: 2
            })
        ));
        let empty = Tensor::zeros(0, DType::F32, &Device::Cpu).unwrap();
        assert!(matches!(
            rspo_loss(&spec(0.1, &[]), &empty, &[], &[], &[], None),
            Err(LossError::LogpShape(_))
        ));
        let twice = [
            Regularizer::new(Term::ReverseKl, 0.1),
            Regularizer::new(Term::ReverseKl, 0.2),
        ];
        assert!(matches!(
            LossSpec::new(0.1, twice.to_vec()),
            Err(LossError::Regularizer(RegularizerError::Duplicate { .. }))
        ));
        for beta in [0.0, -1.0, f64::NAN, f64::INFINITY] {
            assert!(matches!(
                LossSpec::new(beta, vec![]),
                Err(LossError::Beta(_))
            ));
        }
        let negative = Regularizer::new(Term::ReverseKl, -0.5);
        assert!(matches!(
            LossSpec::new(0.1, vec![negative]),
            Err(LossError::Regularizer(RegularizerError::BadCoef { .. }))
        ));
        // An infinite term (clip disabled) is reported, not returned as a loss.
        let unclipped = [Regularizer::new(
            Term::Chi2 {
                clip: f64::INFINITY,
            },
            0.1,
        )];
        let err = rspo_loss(
            &spec(0.1, &unclipped),
            x,
            &two,
            &[-1000.0, 0.0],
            &[0.5, 0.5],
            None,
        )
        .unwrap_err();
        assert!(
            matches!(err, LossError::NonFinite(ref m) if m.contains("chi2=inf")),
            "{err}"
        );
    }
}
