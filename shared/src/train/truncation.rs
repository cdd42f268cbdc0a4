//! Cutting prompt + response to a token budget as the official trainer does.
//!
//! The official SPPO/RSPO trainer (`tokenize_row` in `sppo/trainer_reg.py`, `truncation_mode`
//! `keep_end`) works on a prompt (BOS included) with its chosen and rejected responses (EOS
//! included). With `longer` the longer response's length:
//!
//! 1. if prompt + longer > max_length, the prompt keeps its last `max_prompt_length` tokens;
//! 2. if that is still > max_length, each response keeps its first
//!    `max_length - max_prompt_length` tokens.
//!
//! An example here is a prompt with its selected samples, so `longer` is the longest selected
//! response (with `best_worst`, exactly the official pair). The log-probs under pi_t and pi_ref
//! of a cut response are the sums of its kept tokens' log-probs from the logprobs files, which is
//! exact when only the response is cut; where the prompt is cut those files conditioned on the
//! whole prompt, while the official recomputes them on the cut one ([`Truncated`] counts them).

use std::collections::HashMap;

use serde::Serialize;

use super::batch::Example;
use crate::data::LogprobRow;

/// `--max-length` and `--max-prompt-length`, validated.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Truncation {
    pub max_length: usize,
    pub max_prompt_length: usize,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TruncationError {
    #[error(
        "--max-prompt-length {max_prompt_length} must be at least 1 and less than --max-length \
         {max_length} (responses keep max_length - max_prompt_length tokens)"
    )]
    Lengths {
        max_length: usize,
        max_prompt_length: usize,
    },
}

/// How one prompt and its responses are cut.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cut {
    /// Tokens dropped from the prompt's start.
    pub prompt_drop: usize,
    /// Each response's kept length, in the given order.
    pub response_keep: Vec<usize>,
}

/// What [`Truncation::apply`] cut.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Truncated {
    /// Selected samples whose prompt was cut.
    pub prompts: usize,
    /// Selected samples whose response was cut.
    pub responses: usize,
}

impl Truncation {
    pub fn new(max_length: usize, max_prompt_length: usize) -> Result<Self, TruncationError> {
        if max_prompt_length == 0 || max_prompt_length >= max_length {
            return Err(TruncationError::Lengths {
                max_length,
                max_prompt_length,
            });
        }
        Ok(Truncation {
            max_length,
            max_prompt_length,
        })
    }

    /// The official cut of a prompt of `prompt_len` tokens and responses of these lengths.
    pub fn cut(&self, prompt_len: usize, response_lens: &[usize]) -> Cut {
        let longer = response_lens.iter().copied().max().unwrap_or(0);
        let mut prompt_keep = prompt_len;
        if prompt_keep + longer > self.max_length {
            // Python's `prompt[-max_prompt_length:]`.
            prompt_keep = prompt_keep.min(self.max_prompt_length);
        }
        let response_budget = self.max_length - self.max_prompt_length;
        let still_too_long = prompt_keep + longer > self.max_length;
        Cut {
            prompt_drop: prompt_len - prompt_keep,
            response_keep: response_lens
                .iter()
                .map(|&n| {
                    if still_too_long {
                        n.min(response_budget)
                    } else {
                        n
                    }
                })
                .collect(),
        }
    }

    /// Cuts every example's selected samples; a cut response's log pi_t and log pi_ref become
    /// the sums of its kept tokens' log-probs in `policy` and `reference` (the rows
    /// `build_examples` joined, so every sample has one). Reference samples (`forward_kl`) are
    /// not cut.
    pub fn apply(
        &self,
        examples: &mut [Example],
        policy: &[LogprobRow],
        reference: &[LogprobRow],
    ) -> Truncated {
        let index = |rows: &'_ [LogprobRow]| -> HashMap<(String, u32), Vec<f32>> {
            rows.iter()
                .map(|r| {
                    (
                        (r.prompt_id.clone(), r.sample_idx),
                        r.token_logprobs.clone(),
                    )
                })
                .collect()
        };
        let (policy, reference) = (index(policy), index(reference));
        let mut truncated = Truncated::default();
        for example in examples {
            let lens: Vec<usize> = example.samples.iter().map(|s| s.response.len()).collect();
            let Some(prompt_len) = example.samples.first().map(|s| s.prompt.len()) else {
                continue;
            };
            let cut = self.cut(prompt_len, &lens);
            for (s, &keep) in example.samples.iter_mut().zip(&cut.response_keep) {
                if cut.prompt_drop > 0 {
                    s.prompt.drain(..cut.prompt_drop);
                    truncated.prompts += 1;
                }
                if keep < s.response.len() {
                    s.response.truncate(keep);
                    let key = (s.prompt_id.clone(), s.sample_idx);
                    let kept_sum = |rows: &HashMap<(String, u32), Vec<f32>>| -> f64 {
                        rows[&key][..keep].iter().map(|&x| x as f64).sum()
                    };
                    s.logp_t = kept_sum(&policy);
                    s.logp_ref = kept_sum(&reference);
                    truncated.responses += 1;
                }
            }
        }
        truncated
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::train::batch::TrainSample;
    use serde::Deserialize;

    #[derive(Deserialize)]
    struct Fixture {
        cases: Vec<Case>,
    }

    #[derive(Deserialize)]
    struct Case {
        max_length: usize,
        max_prompt_length: usize,
        prompt: Vec<u32>,
        chosen: Vec<u32>,
        rejected: Vec<u32>,
        expected: Expected,
    }

    #[derive(Deserialize)]
    struct Expected {
        chosen: Vec<u32>,
        chosen_prompt_len: usize,
        rejected: Vec<u32>,
        rejected_prompt_len: usize,
    }

    fn fixture() -> Fixture {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../tests/fixtures/official-terms/truncation.json"
        );
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
    }

    fn sample(prompt_id: &str, sample_idx: u32, prompt: &[u32], response: &[u32]) -> TrainSample {
        TrainSample {
            prompt_id: prompt_id.into(),
            sample_idx,
            prompt: prompt.to_vec(),
            response: response.to_vec(),
            winrate: 0.5,
            logp_t: -1e9,
            logp_ref: -2e9,
        }
    }

    fn row(prompt_id: &str, sample_idx: u32, tokens: Vec<f32>) -> LogprobRow {
        LogprobRow {
            prompt_id: prompt_id.into(),
            sample_idx,
            logprob: tokens.iter().map(|&x| x as f64).sum(),
            num_tokens: tokens.len() as u32,
            token_logprobs: tokens,
        }
    }

    /// Every case of the official `tokenize_row` truncation (make_truncation.py): the same
    /// tokens kept on the same side, and the kept tokens' log-probs summed.
    #[test]
    fn cuts_like_the_official_tokenize_row() {
        let cases = fixture().cases;
        assert_eq!(cases.len(), 9);
        let mut cut_any = (false, false);
        for (i, c) in cases.iter().enumerate() {
            let t = Truncation::new(c.max_length, c.max_prompt_length).unwrap();
            let mut examples = vec![Example {
                prompt_id: "p".into(),
                samples: vec![
                    sample("p", 0, &c.prompt, &c.chosen),
                    sample("p", 1, &c.prompt, &c.rejected),
                ],
                reference: vec![],
            }];
            // Token log-probs -1, -2, -3, ... so a sum tells how many were kept.
            let tokens = |n: usize, scale: f32| (1..=n).map(|k| -(k as f32) * scale).collect();
            let policy = [
                row("p", 0, tokens(c.chosen.len(), 1.0)),
                row("p", 1, tokens(c.rejected.len(), 1.0)),
            ];
            let reference = [
                row("p", 0, tokens(c.chosen.len(), 2.0)),
                row("p", 1, tokens(c.rejected.len(), 2.0)),
            ];
            let truncated = t.apply(&mut examples, &policy, &reference);
            let e = &c.expected;
            for (s, (seq, prompt_len), full) in [
                (
                    &examples[0].samples[0],
                    (&e.chosen, e.chosen_prompt_len),
                    &c.chosen,
                ),
                (
                    &examples[0].samples[1],
                    (&e.rejected, e.rejected_prompt_len),
                    &c.rejected,
                ),
            ] {
                assert_eq!(s.prompt, seq[..prompt_len], "case {i}");
                assert_eq!(s.response, seq[prompt_len..], "case {i}");
                let n = s.response.len() as f64;
                let sum = -n * (n + 1.0) / 2.0;
                if s.response.len() < full.len() {
                    assert_eq!((s.logp_t, s.logp_ref), (sum, 2.0 * sum), "case {i}");
                } else {
                    assert_eq!((s.logp_t, s.logp_ref), (-1e9, -2e9), "case {i}");
                }
            }
            assert_eq!(
                truncated.prompts,
                2 * usize::from(e.chosen_prompt_len < c.prompt.len()),
                "case {i}"
            );
            cut_any.0 |= truncated.prompts > 0;
            cut_any.1 |= truncated.responses > 0;
        }
        assert_eq!(cut_any, (true, true));
    }

    #[test]
    fn the_prompt_limit_must_leave_room_for_the_response() {
        assert!(Truncation::new(1024, 512).is_ok());
        for (max_length, max_prompt_length) in [(512, 512), (10, 0), (4, 8)] {
            let err = Truncation::new(max_length, max_prompt_length).unwrap_err();
            assert!(err.to_string().contains("--max-prompt-length"), "{err}");
        }
    }
}
