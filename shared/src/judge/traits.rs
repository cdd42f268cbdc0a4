//! What a judge is: a scalar judge scores each response on its own (a reward model, a rule) and
//! is lifted to pairs by Bradley-Terry; a pairwise judge compares two responses directly, possibly
//! in both orders (PairRM). Stages hold either as a [`Judge`] and ask it for P(a beats b).

use serde_json::Value;
use thiserror::Error;

use super::scalar_scores::preference_from_scores;
use crate::data::{canonical_json, Message};
use crate::model::ModelError;

/// One response to judge, with what a judge may look at.
#[derive(Debug, Clone, Copy)]
pub struct JudgeItem<'a> {
    /// For error messages.
    pub prompt_id: &'a str,
    /// For error messages.
    pub sample_idx: u32,
    /// The prompt conversation before any chat template.
    pub messages: &'a [Message],
    /// The prompt after the policy's chat template, as the policy saw it (the samples'
    /// `prompt_text`); empty where there is none.
    pub prompt_text: &'a str,
    pub response: &'a str,
    /// The prompt's reference answer, for judges that compare against one.
    pub reference: Option<&'a str>,
    /// The prompt's verifiable instructions (the JSON text of its `constraints` column), for
    /// the `instructions` judge.
    pub constraints: Option<&'a str>,
}

impl<'a> JudgeItem<'a> {
    /// The instruction a pairwise judge shows: the conversation's last user turn.
    pub fn last_user_turn(&self) -> &'a str {
        self.messages
            .iter()
            .rev()
            .find(|m| m.role == "user")
            .map_or("", |m| m.content.as_str())
    }
}

/// Why a judge could not judge.
#[derive(Debug, Error)]
pub enum JudgeError {
    #[error(transparent)]
    Model(#[from] ModelError),
    #[error("judge model {dir}: {message}")]
    NotARewardModel { dir: String, message: String },
    #[error("{judge}: prompt {prompt_id:?}, sample {sample_idx}: {message}")]
    Item {
        judge: String,
        prompt_id: String,
        sample_idx: u32,
        message: String,
    },
    #[error("{judge}: prompt {prompt_id:?} has no reference answer, expected one (take it from --prompts FILE with a `reference` column)")]
    MissingReference { judge: String, prompt_id: String },
    #[error("{judge}: prompt {prompt_id:?}: {message}")]
    BadPrompt {
        judge: String,
        prompt_id: String,
        message: String,
    },
    #[error("{flag} {value:?}: {message}")]
    BadSetting {
        flag: &'static str,
        value: String,
        message: String,
    },
    #[error("judgment cache {path}: {message}")]
    Cache { path: String, message: String },
    /// An answer a stage cannot use: a wrong count, a score that is not finite, a probability
    /// outside [0, 1].
    #[error("{judge} {message}")]
    BadVerdict { judge: String, message: String },
}

/// A judge that gives each response a score on its own; higher is better.
pub trait ScalarJudge: Send + Sync {
    /// The `judge` column of preferences.parquet, e.g. `reward-model:tiny-llama-rm`.
    fn name(&self) -> String;
    /// Everything that changes the scores besides the judge's model: canonical settings.
    fn settings(&self) -> Value;
    /// Identity of the judge for caches and fingerprints: model digest and settings.
    fn digest(&self) -> String;
    /// Whether scores depend on the prompt's reference answer.
    fn uses_reference(&self) -> bool {
        false
    }
    /// Checks that every item can be judged (a template that raises, a conversation longer
    /// than the judge's context, a missing reference) without judging it, so a stage fails
    /// before any work.
    fn check(&self, _items: &[JudgeItem<'_>]) -> Result<(), JudgeError> {
        Ok(())
    }
    /// One score per item, in order; finite.
    fn score(&self, items: &[JudgeItem<'_>]) -> Result<Vec<f64>, JudgeError>;
    /// For a judge whose score counts the prompt's constraints met: whether the item's response
    /// meets each one (a judge whose spec says so has `score` write them to
    /// constraints.parquet). Others have none.
    fn constraint_outcomes(
        &self,
        _item: &JudgeItem<'_>,
    ) -> Result<Vec<ConstraintOutcome>, JudgeError> {
        Ok(Vec::new())
    }
}

/// One constraint of a prompt judged on one response.
#[derive(Debug, Clone, PartialEq)]
pub struct ConstraintOutcome {
    /// The constraint's position in the prompt's list, from 0.
    pub index: u32,
    pub kind: String,
    /// The constraint's JSON object, keys sorted.
    pub json: String,
    pub passed: bool,
}

/// A judge's verdict on a pair (a, b): `p` = P(a beats b), and where the judge saw both orders,
/// each order's verdict expressed as P(a beats b).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PairVerdict {
    pub p: f64,
    /// a shown first.
    pub p_forward: Option<f64>,
    /// b shown first.
    pub p_swapped: Option<f64>,
}

impl PairVerdict {
    /// One verdict, no order information (a lifted scalar judge).
    pub fn single(p: f64) -> Self {
        PairVerdict {
            p,
            p_forward: None,
            p_swapped: None,
        }
    }

    /// Both orders, combined by their mean (position bias cancels to first order).
    pub fn two_orders(p_forward: f64, p_swapped: f64) -> Self {
        PairVerdict {
            p: 0.5 * (p_forward + p_swapped),
            p_forward: Some(p_forward),
            p_swapped: Some(p_swapped),
        }
    }
}

/// A judge that compares two responses to the same prompt.
pub trait PairwiseJudge: Send + Sync {
    fn name(&self) -> String;
    fn settings(&self) -> Value;
    fn digest(&self) -> String;
    fn uses_reference(&self) -> bool {
        false
    }
    /// As [`ScalarJudge::check`], for one prompt's responses.
    fn check(&self, _items: &[JudgeItem<'_>]) -> Result<(), JudgeError> {
        Ok(())
    }
    /// P(a beats b), in both orders where the judge has an order.
    fn compare(&self, a: &JudgeItem<'_>, b: &JudgeItem<'_>) -> Result<PairVerdict, JudgeError>;
    /// Whether a pair's verdict depends only on the pair, so it can be cached per pair. A
    /// judge whose verdicts depend on the whole group (PairRM's `sppo` mode) says no.
    fn per_pair(&self) -> bool {
        true
    }
    /// Every pair i < j of one prompt's responses, in the order (0,1), (0,2), .., (1,2), ..
    /// Judges that see the whole group at once (PairRM's aggregated mode) override this.
    fn compare_group(&self, items: &[JudgeItem<'_>]) -> Result<Vec<PairVerdict>, JudgeError> {
        pairs_of(items.len())
            .into_iter()
            .map(|(i, j)| self.compare(&items[i], &items[j]))
            .collect()
    }
}

/// Every pair i < j of K samples in the order (0,1), (0,2), .., (1,2), ..: the order of
/// [`PairwiseJudge::compare_group`]'s verdicts and of a prompt's rows in preferences.parquet.
pub fn pairs_of(k: usize) -> Vec<(usize, usize)> {
    (0..k)
        .flat_map(|i| (i + 1..k).map(move |j| (i, j)))
        .collect()
}

/// A pair (a, b) judged for evaluation: the verdict, and a scalar judge's scores of a and b.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct JudgedPair {
    pub verdict: PairVerdict,
    pub scores: Option<[f64; 2]>,
}

/// Either kind of judge, as stages hold it.
pub enum Judge {
    /// Lifted to pairs by `p_ij = sigmoid((r_i - r_j) / temperature)`.
    Scalar {
        judge: Box<dyn ScalarJudge>,
        temperature: f64,
    },
    Pairwise(Box<dyn PairwiseJudge>),
}

impl Judge {
    pub fn name(&self) -> String {
        match self {
            Judge::Scalar { judge, .. } => judge.name(),
            Judge::Pairwise(judge) => judge.name(),
        }
    }

    pub fn digest(&self) -> String {
        match self {
            Judge::Scalar { judge, .. } => judge.digest(),
            Judge::Pairwise(judge) => judge.digest(),
        }
    }

    /// Whether judgments can be cached one by one (see [`PairwiseJudge::per_pair`]).
    pub fn cacheable(&self) -> bool {
        match self {
            Judge::Scalar { .. } => true,
            Judge::Pairwise(judge) => judge.per_pair(),
        }
    }

    pub fn uses_reference(&self) -> bool {
        match self {
            Judge::Scalar { judge, .. } => judge.uses_reference(),
            Judge::Pairwise(judge) => judge.uses_reference(),
        }
    }

    /// See [`ScalarJudge::constraint_outcomes`]; pairwise judges have none.
    pub fn constraint_outcomes(
        &self,
        item: &JudgeItem<'_>,
    ) -> Result<Vec<ConstraintOutcome>, JudgeError> {
        match self {
            Judge::Scalar { judge, .. } => judge.constraint_outcomes(item),
            Judge::Pairwise(_) => Ok(Vec::new()),
        }
    }

    /// P(a beats b): a scalar judge scores both and lifts; a pairwise judge compares.
    /// (Evaluation's "model response vs baseline".)
    pub fn compare(&self, a: &JudgeItem<'_>, b: &JudgeItem<'_>) -> Result<JudgedPair, JudgeError> {
        match self {
            Judge::Scalar { judge, temperature } => {
                let s = judge.score(&[*a, *b])?;
                Ok(JudgedPair {
                    verdict: PairVerdict::single(preference_from_scores(s[0], s[1], *temperature)),
                    scores: Some([s[0], s[1]]),
                })
            }
            Judge::Pairwise(judge) => Ok(JudgedPair {
                verdict: judge.compare(a, b)?,
                scores: None,
            }),
        }
    }
}

/// The digest of a judge: blake3 of its kind, its model's digest (if any) and its settings.
pub fn judge_digest(kind: &str, model_digest: Option<&str>, settings: &Value) -> String {
    let mut h = blake3::Hasher::new();
    for part in [kind, model_digest.unwrap_or(""), &canonical_json(settings)] {
        h.update(&(part.len() as u64).to_le_bytes());
        h.update(part.as_bytes());
    }
    h.finalize().to_hex().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::judge::rules::LengthRule;

    #[test]
    fn a_judge_compares_two_responses_for_evaluation() {
        let judge = Judge::Scalar {
            judge: Box::new(LengthRule { target: 3 }),
            temperature: 2.0,
        };
        let m = [Message::user("q")];
        let item = |response| JudgeItem {
            prompt_id: "q",
            sample_idx: 0,
            messages: &m,
            prompt_text: "",
            response,
            reference: None,
            constraints: None,
        };
        // Scores 0 and -2: sigmoid(2 / 2).
        let judged = judge.compare(&item("abc"), &item("a")).unwrap();
        let v = judged.verdict;
        assert!((v.p - crate::judge::sigmoid(1.0)).abs() < 1e-15);
        assert_eq!((v.p_forward, v.p_swapped), (None, None));
        assert_eq!(judged.scores, Some([0.0, -2.0]));
    }
}
