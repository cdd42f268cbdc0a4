//! Plain summaries of a model's responses: length, how often generation ended on EOS, and the
//! mean sequence log-ratio to the reference policy.

use thiserror::Error;

#[derive(Debug, Clone, PartialEq, Error)]
pub enum ResponseStatsError {
    #[error("no {what} to summarize, expected at least one response")]
    Empty { what: &'static str },
    #[error("row {row}: finish_reason {found:?}, expected \"eos\" or \"length\"")]
    UnknownFinishReason { row: usize, found: String },
    #[error(
        "{logp_model} model log-probs but {logp_ref} reference log-probs, expected one of each per response"
    )]
    LengthMismatch { logp_model: usize, logp_ref: usize },
    #[error("row {row}: {column} = {value}, expected a finite log-probability")]
    NonFiniteLogprob {
        row: usize,
        column: &'static str,
        value: f64,
    },
}

/// A response's length in characters (Unicode scalar values, as Python's `len(str)` and
/// `eval.parquet`'s `len_response` count them), not UTF-8 bytes.
pub fn char_length(text: &str) -> usize {
    text.chars().count()
}

/// Mean of the response lengths (characters or tokens, whichever the caller passes).
pub fn mean_response_length(lengths: &[usize]) -> Result<f64, ResponseStatsError> {
    if lengths.is_empty() {
        return Err(ResponseStatsError::Empty {
            what: "response lengths",
        });
    }
    // Summed as f64: no overflow, exact below 2^53 characters.
    Ok(lengths.iter().map(|&l| l as f64).sum::<f64>() / lengths.len() as f64)
}

/// Share of responses whose `finish_reason` is `eos` (the rest hit the length limit).
pub fn eos_rate<S: AsRef<str>>(finish_reasons: &[S]) -> Result<f64, ResponseStatsError> {
    if finish_reasons.is_empty() {
        return Err(ResponseStatsError::Empty {
            what: "finish reasons",
        });
    }
    let mut eos = 0usize;
    for (row, reason) in finish_reasons.iter().enumerate() {
        match reason.as_ref() {
            "eos" => eos += 1,
            "length" => {}
            other => {
                return Err(ResponseStatsError::UnknownFinishReason {
                    row,
                    found: other.to_owned(),
                })
            }
        }
    }
    Ok(eos as f64 / finish_reasons.len() as f64)
}

/// Mean of `log pi(y) - log pi_ref(y)` over responses sampled from pi: a Monte Carlo estimate of
/// KL(pi || pi_ref) in nats per response.
pub fn mean_log_ratio(logp_model: &[f64], logp_ref: &[f64]) -> Result<f64, ResponseStatsError> {
    if logp_model.len() != logp_ref.len() {
        return Err(ResponseStatsError::LengthMismatch {
            logp_model: logp_model.len(),
            logp_ref: logp_ref.len(),
        });
    }
    if logp_model.is_empty() {
        return Err(ResponseStatsError::Empty {
            what: "log-probabilities",
        });
    }
    let mut sum = 0.0;
    for (row, (&m, &r)) in logp_model.iter().zip(logp_ref).enumerate() {
        for (column, value) in [("logp_model", m), ("logp_ref", r)] {
            if !value.is_finite() {
                return Err(ResponseStatsError::NonFiniteLogprob { row, column, value });
            }
        }
        sum += m - r;
    }
    Ok(sum / logp_model.len() as f64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_characters_not_bytes() {
        assert_eq!(char_length("naïve — ok"), 10);
        assert_eq!("naïve — ok".len(), 13);
        assert_eq!(char_length(""), 0);
    }

    #[test]
    fn mean_length() {
        assert_eq!(mean_response_length(&[3, 4, 8]).unwrap(), 5.0);
        assert!(matches!(
            mean_response_length(&[]),
            Err(ResponseStatsError::Empty { .. })
        ));
    }

    #[test]
    fn eos_rate_counts_eos_and_rejects_unknown_reasons() {
        assert_eq!(eos_rate(&["eos", "length", "eos", "eos"]).unwrap(), 0.75);
        assert_eq!(eos_rate(&["length"]).unwrap(), 0.0);
        let err = eos_rate(&["eos", "stop"]).unwrap_err();
        assert_eq!(
            err,
            ResponseStatsError::UnknownFinishReason {
                row: 1,
                found: "stop".into()
            }
        );
        assert!(err.to_string().contains("\"stop\""));
        assert!(eos_rate::<&str>(&[]).is_err());
    }

    #[test]
    fn mean_log_ratio_by_hand() {
        // (-10 - -12) + (-20 - -19) = 2 - 1 = 1, over 2 responses = 0.5.
        assert_eq!(
            mean_log_ratio(&[-10.0, -20.0], &[-12.0, -19.0]).unwrap(),
            0.5
        );
        assert!(matches!(
            mean_log_ratio(&[-1.0], &[]),
            Err(ResponseStatsError::LengthMismatch { .. })
        ));
        assert!(matches!(
            mean_log_ratio(&[-1.0, f64::NEG_INFINITY], &[-1.0, -1.0]),
            Err(ResponseStatsError::NonFiniteLogprob {
                row: 1,
                column: "logp_model",
                ..
            })
        ));
        assert!(mean_log_ratio(&[], &[]).is_err());
    }
}
