//! `llm`: a causal chat model (`--judge-model`: a Hugging Face folder, Hub id or GGUF, run by
//! the one transformer of `model/`) compares two responses AlpacaEval-style. The pair is shown
//! through the comparison template ([`ComparisonTemplate`]) as the user turn of the model's chat
//! template; P(output_1 wins) is the softmax over the two verdict tokens' next-token logits,
//! nothing is sampled. Every pair is judged in both orders and p is their mean.
//!
//! Efficiency: a prompt's ordered pairs (K (K - 1) for K samples, identical prompts once) run as
//! left-padded batches of at most [`ROWS_PER_FORWARD`] rows, and only the last position goes
//! through the vocabulary projection. The batches depend on the prompt's responses alone, never
//! on `--batch-size`, so a verdict's bits do not change with it. The pairs' common prefix (the
//! template up to output_1) is not shared through the KV cache: the suffixes differ in length
//! and the cache pads only on the left.

use anyhow::Context;
use candle_core::{DType, Tensor, D};
use serde_json::{json, Value};
use std::collections::HashMap;

use super::judge_model::JudgeModel;
use super::llm_prompt::{parse_verdicts, verdict_ids, ComparisonTemplate, ShownPair};
use super::registry::{JudgeSpec, ScoreSettings};
use super::traits::{
    judge_digest, pairs_of, Judge, JudgeError, JudgeItem, PairVerdict, PairwiseJudge,
};
use crate::model::{dtype_name, hidden_states, Checkpoint, Head, Transformer};

/// Prompts run through the judge model together.
pub const ROWS_PER_FORWARD: usize = 16;

pub struct LlmJudge {
    checkpoint: Checkpoint,
    model: Transformer,
    template: ComparisonTemplate,
    verdicts: [String; 2],
    verdict_ids: [u32; 2],
    name: String,
    digest: String,
}

/// The judge model must be a causal LM with a chat template, and each verdict one token of it.
fn check_judge_model(
    checkpoint: &Checkpoint,
    template: &ComparisonTemplate,
    verdicts: &[String; 2],
) -> Result<[u32; 2], JudgeError> {
    if checkpoint.config.head != Head::CausalLm {
        return Err(JudgeError::BadSetting {
            flag: "--judge-model",
            value: checkpoint.dir.display().to_string(),
            message: "config.json declares a *ForSequenceClassification, expected a causal chat model (*ForCausalLM)".into(),
        });
    }
    verdict_ids(checkpoint, template, verdicts)
}

impl LlmJudge {
    /// `name` goes into the `judge` column; `model_digest` identifies the weights and
    /// tokenizer (the stage's `model_ref`).
    pub fn new(
        checkpoint: Checkpoint,
        model: Transformer,
        template: ComparisonTemplate,
        verdicts: [String; 2],
        name: String,
        model_digest: &str,
    ) -> Result<Self, JudgeError> {
        let verdict_ids = check_judge_model(&checkpoint, &template, &verdicts)?;
        let device = if model.device().is_cpu() {
            "cpu"
        } else {
            "cuda"
        };
        // The template's text, not a file name: editing the file is a new judge.
        let identity = json!({
            "template": template.source,
            "verdicts": verdicts,
            "dtype": dtype_name(model.dtype()),
            "device": device,
        });
        let digest = judge_digest("llm", Some(model_digest), &identity);
        Ok(LlmJudge {
            checkpoint,
            model,
            template,
            verdicts,
            verdict_ids,
            name,
            digest,
        })
    }

    /// The verdict tokens: output_1 wins, output_2 wins.
    pub fn verdict_ids(&self) -> [u32; 2] {
        self.verdict_ids
    }

    /// The judge model's prompt showing `first` as output_1 and `second` as output_2.
    pub fn prompt_ids(
        &self,
        first: &JudgeItem<'_>,
        second: &JudgeItem<'_>,
    ) -> Result<Vec<u32>, JudgeError> {
        let reference = first.reference;
        if self.template.uses_reference && reference.is_none() {
            return Err(JudgeError::MissingReference {
                judge: self.name(),
                prompt_id: first.prompt_id.to_string(),
            });
        }
        let shown = ShownPair {
            instruction: first.last_user_turn(),
            output_1: first.response,
            output_2: second.response,
            reference,
        };
        let ids = self
            .template
            .prompt_ids(&self.checkpoint, &shown)
            .map_err(|e| self.item_error(first, second, e.to_string()))?;
        let limit = self.checkpoint.config.max_position_embeddings;
        if ids.len() > limit {
            let message = format!(
                "the comparison prompt is {} tokens after the judge's chat template, expected at most {limit} (the judge's max_position_embeddings)",
                ids.len()
            );
            return Err(self.item_error(first, second, message));
        }
        Ok(ids)
    }

    fn item_error(&self, first: &JudgeItem<'_>, second: &JudgeItem<'_>, e: String) -> JudgeError {
        JudgeError::Item {
            judge: self.name(),
            prompt_id: first.prompt_id.to_string(),
            sample_idx: first.sample_idx,
            message: format!("against sample {}: {e}", second.sample_idx),
        }
    }

    /// P(output_1 wins) for each prompt: the two verdict tokens' next-token logits at its last
    /// position, softmaxed over the two.
    pub fn first_wins(&self, prompts: &[Vec<u32>]) -> Result<Vec<f64>, JudgeError> {
        let mut out = vec![0.0; prompts.len()];
        // Similar lengths together: less padding.
        let mut order: Vec<usize> = (0..prompts.len()).collect();
        order.sort_by_key(|&i| prompts[i].len());
        for chunk in order.chunks(ROWS_PER_FORWARD) {
            let seqs: Vec<Vec<u32>> = chunk.iter().map(|&i| prompts[i].clone()).collect();
            for (&i, l) in chunk.iter().zip(self.verdict_logits(&seqs)?) {
                out[i] = super::sigmoid(f64::from(l[0]) - f64::from(l[1]));
            }
        }
        Ok(out)
    }

    /// The two verdict tokens' logits after each prompt of one left-padded batch.
    fn verdict_logits(&self, seqs: &[Vec<u32>]) -> crate::model::Result<Vec<Vec<f32>>> {
        let (hidden, _) = hidden_states(&self.model, seqs)?;
        let width = hidden.dim(1)?;
        let last = hidden.narrow(1, width - 1, 1)?.squeeze(1)?;
        let logits = self.model.logits(&last)?.to_dtype(DType::F32)?;
        let ids = Tensor::new(&self.verdict_ids[..], logits.device())?;
        Ok(logits.index_select(&ids, D::Minus1)?.to_vec2::<f32>()?)
    }

    /// Each pair (i, j) of `items` in both orders, all prompts in one go.
    fn compare_pairs(
        &self,
        items: &[JudgeItem<'_>],
        pairs: &[(usize, usize)],
    ) -> Result<Vec<PairVerdict>, JudgeError> {
        both_orders(pairs, |ordered| {
            let prompts = ordered
                .iter()
                .map(|&(first, second)| self.prompt_ids(&items[first], &items[second]))
                .collect::<Result<Vec<_>, _>>()?;
            // A response repeated among the samples repeats prompts: each runs once.
            let mut distinct: Vec<Vec<u32>> = Vec::new();
            let mut index: HashMap<&[u32], usize> = HashMap::new();
            let slot: Vec<usize> = prompts
                .iter()
                .map(|p| {
                    *index.entry(p.as_slice()).or_insert_with(|| {
                        distinct.push(p.clone());
                        distinct.len() - 1
                    })
                })
                .collect();
            let p = self.first_wins(&distinct)?;
            Ok(slot.into_iter().map(|s| p[s]).collect())
        })
    }
}

/// P(a beats b) of each pair (a, b) from both orders. `first_wins` is asked once, for the
/// ordered pairs (a, b) then (b, a) of every pair, and returns P(the first shown wins) of each;
/// p_forward is P(a wins | a first), p_swapped is 1 - P(b wins | b first), p their mean.
pub fn both_orders<E>(
    pairs: &[(usize, usize)],
    first_wins: impl FnOnce(&[(usize, usize)]) -> Result<Vec<f64>, E>,
) -> Result<Vec<PairVerdict>, E> {
    let ordered: Vec<(usize, usize)> = pairs.iter().flat_map(|&(a, b)| [(a, b), (b, a)]).collect();
    let p = first_wins(&ordered)?;
    Ok(p.chunks_exact(2)
        .map(|two| PairVerdict::two_orders(two[0], 1.0 - two[1]))
        .collect())
}

impl PairwiseJudge for LlmJudge {
    fn name(&self) -> String {
        format!("llm:{}", self.name)
    }

    fn settings(&self) -> Value {
        json!({"verdicts": self.verdicts, "dtype": dtype_name(self.model.dtype())})
    }

    fn digest(&self) -> String {
        self.digest.clone()
    }

    fn uses_reference(&self) -> bool {
        self.template.uses_reference
    }

    /// Renders every ordered pair: a template that raises, a prompt longer than the judge's
    /// context or a missing reference fail before any work.
    fn check(&self, items: &[JudgeItem<'_>]) -> Result<(), JudgeError> {
        for (i, j) in pairs_of(items.len()) {
            self.prompt_ids(&items[i], &items[j])?;
            self.prompt_ids(&items[j], &items[i])?;
        }
        Ok(())
    }

    fn compare(&self, a: &JudgeItem<'_>, b: &JudgeItem<'_>) -> Result<PairVerdict, JudgeError> {
        Ok(self.compare_pairs(&[*a, *b], &[(0, 1)])?[0])
    }

    fn compare_group(&self, items: &[JudgeItem<'_>]) -> Result<Vec<PairVerdict>, JudgeError> {
        self.compare_pairs(items, &pairs_of(items.len()))
    }
}

/// `llm`'s registry builder: `--verdicts` and `--judge-template` are checked first, then the
/// model is found and fingerprinted and its tokenizer and chat template opened (each verdict
/// must be one token); its weights are loaded only if there is work to do.
pub(super) fn build(s: &ScoreSettings) -> anyhow::Result<JudgeSpec> {
    let verdicts = parse_verdicts(&s.judging.verdicts)?;
    let template = ComparisonTemplate::open(s.judging.judge_template.as_deref())?;
    let model = JudgeModel::resolve(s)?;
    let checkpoint =
        Checkpoint::open(&model.dir).with_context(|| format!("--judge-model {}", model.spec))?;
    check_judge_model(&checkpoint, &template, &verdicts)?;
    Ok(JudgeSpec {
        content: json!({
            "judge": "llm",
            "template": template.source,
            "verdicts": verdicts,
            "dtype": model.dtype_name(),
        }),
        models: vec![("judge", model.reference.clone())],
        constraint_outcomes: false,
        load: Box::new(move || {
            let weights = checkpoint
                .load_model(model.dtype, &model.device)
                .with_context(|| format!("--judge-model {}", model.spec))?;
            let judge = LlmJudge::new(
                checkpoint,
                weights,
                template,
                verdicts,
                model.name(),
                &model.reference.digest,
            )?;
            Ok(Judge::Pairwise(Box::new(judge)))
        }),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// P(first shown wins) = sigmoid(s(first) - s(second) + bias): `bias` favours the first.
    fn stub(scores: &[f64], bias: f64) -> impl Fn(&[(usize, usize)]) -> Result<Vec<f64>, ()> + '_ {
        move |ordered| {
            Ok(ordered
                .iter()
                .map(|&(f, s)| super::super::sigmoid(scores[f] - scores[s] + bias))
                .collect())
        }
    }

    #[test]
    fn a_judge_that_ignores_position_gives_p_ab_one_minus_p_ba() {
        let scores = [0.3, -1.2, 2.0];
        let pairs = pairs_of(3);
        let reversed: Vec<(usize, usize)> = pairs.iter().map(|&(i, j)| (j, i)).collect();
        let v = both_orders(&pairs, stub(&scores, 0.0)).unwrap();
        let r = both_orders(&reversed, stub(&scores, 0.0)).unwrap();
        for ((v, r), &(i, j)) in v.iter().zip(&r).zip(&pairs) {
            assert!((v.p + r.p - 1.0).abs() < 1e-15, "{v:?} {r:?}");
            let (f, s) = (v.p_forward.unwrap(), v.p_swapped.unwrap());
            assert!((f - s).abs() < 1e-15, "no position bias: {v:?}");
            let want = super::super::sigmoid(scores[i] - scores[j]);
            assert!((v.p - want).abs() < 1e-15);
        }
    }

    #[test]
    fn both_orders_keeps_each_order_and_cancels_a_position_bias_in_the_mean() {
        let scores = [1.0, 0.0];
        let mut asked = Vec::new();
        let v = both_orders(&[(0, 1)], |ordered| {
            asked.extend_from_slice(ordered);
            stub(&scores, 0.5)(ordered)
        })
        .unwrap();
        assert_eq!(asked, [(0, 1), (1, 0)]);
        let sig = super::super::sigmoid;
        let (f, s) = (v[0].p_forward.unwrap(), v[0].p_swapped.unwrap());
        // a first: favoured by the bias; b first: a loses the bias.
        assert!((f - sig(1.5)).abs() < 1e-15 && (s - sig(0.5)).abs() < 1e-15);
        assert!((v[0].p - 0.5 * (sig(1.5) + sig(0.5))).abs() < 1e-15);
        assert!(f > s, "the bias shows as p_forward > p_swapped");
    }
}
