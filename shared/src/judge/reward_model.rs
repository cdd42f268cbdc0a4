//! `reward-model`: a `*ForSequenceClassification` checkpoint (num_labels 1) scores each response
//! once, on the conversation (prompt messages + an assistant turn with the response) rendered with
//! the judge's own chat template, read at the last token.

use candle_core::{DType, Device};
use serde_json::{json, Value};
use std::path::Path;

use super::judge_model::JudgeModel;
use super::registry::JudgeSpec;
use super::registry::ScoreSettings;
use super::traits::{judge_digest, Judge, JudgeError, JudgeItem, ScalarJudge};
use crate::data::Message;
use crate::model::{dtype_name, sequence_scores, Checkpoint, Head, ModelError, Transformer};

/// Reward-model scores of complete token sequences (BOS and template tokens included), one
/// forward pass per sequence.
///
/// Each sequence runs alone, unpadded: a padded batch changes the last bits of a row's score
/// with the other rows (gemm blocking, softmax width), and a score must not depend on what it was
/// batched with, or cached and fresh scores (and runs with another `--batch-size`) would differ.
pub fn reward_scores(model: &Transformer, seqs: &[Vec<u32>]) -> Result<Vec<f64>, ModelError> {
    seqs.iter()
        .map(|seq| {
            if seq.is_empty() {
                return Err(ModelError::Config {
                    path: "input".into(),
                    message: "an empty sequence cannot be scored".into(),
                });
            }
            let scores = sequence_scores(model, std::slice::from_ref(seq))?;
            let v = scores
                .to_dtype(DType::F32)?
                .flatten_all()?
                .to_vec1::<f32>()?;
            Ok(f64::from(v[0]))
        })
        .collect()
}

pub struct RewardModelJudge {
    checkpoint: Checkpoint,
    model: Transformer,
    name: String,
    model_digest: String,
    dtype: DType,
    device: &'static str,
}

impl RewardModelJudge {
    /// Checks that the checkpoint is a reward model with one label. `name` goes into the
    /// `judge` column; `model_digest` identifies the weights and tokenizer (the stage's
    /// `model_ref`).
    pub fn new(
        checkpoint: Checkpoint,
        model: Transformer,
        name: String,
        model_digest: String,
    ) -> Result<Self, JudgeError> {
        check_head(&checkpoint)?;
        let dtype = model.dtype();
        let device = if model.device().is_cpu() {
            "cpu"
        } else {
            "cuda"
        };
        Ok(RewardModelJudge {
            checkpoint,
            model,
            name,
            model_digest,
            dtype,
            device,
        })
    }

    /// Opens and loads a reward-model directory.
    pub fn load(
        dir: &Path,
        name: String,
        model_digest: String,
        dtype: DType,
        device: &Device,
    ) -> Result<Self, JudgeError> {
        let checkpoint = Checkpoint::open(dir)?;
        check_head(&checkpoint)?;
        let model = checkpoint.load_model(dtype, device)?;
        Self::new(checkpoint, model, name, model_digest)
    }

    pub fn checkpoint(&self) -> &Checkpoint {
        &self.checkpoint
    }

    /// The token ids the judge scores for one item: the prompt conversation plus an assistant
    /// turn holding the response, through the judge's chat template, tokenized without adding
    /// special tokens (the template has them), as `apply_chat_template(tokenize=True)`.
    pub fn render(&self, item: &JudgeItem<'_>) -> Result<Vec<u32>, JudgeError> {
        let item_error = |message: String| JudgeError::Item {
            judge: self.name.clone(),
            prompt_id: item.prompt_id.to_string(),
            sample_idx: item.sample_idx,
            message,
        };
        let mut conversation = item.messages.to_vec();
        conversation.push(Message::new("assistant", item.response));
        let text = self
            .checkpoint
            .render_chat(&conversation, false)
            .map_err(|e| item_error(e.to_string()))?;
        let ids = self
            .checkpoint
            .encode(&text)
            .map_err(|e| item_error(e.to_string()))?;
        let limit = self.checkpoint.config.max_position_embeddings;
        if ids.is_empty() || ids.len() > limit {
            return Err(item_error(format!(
                "the conversation is {} tokens after the judge's chat template, expected 1 to {limit} (the judge's max_position_embeddings)",
                ids.len()
            )));
        }
        Ok(ids)
    }

    /// Scores of already rendered sequences: the numbers `score` computes after `render`.
    pub fn score_token_ids(&self, seqs: &[Vec<u32>]) -> Result<Vec<f64>, JudgeError> {
        Ok(reward_scores(&self.model, seqs)?)
    }
}

fn check_head(checkpoint: &Checkpoint) -> Result<(), JudgeError> {
    match checkpoint.config.head {
        Head::SequenceClassification { num_labels: 1 } => Ok(()),
        Head::SequenceClassification { num_labels } => Err(JudgeError::NotARewardModel {
            dir: checkpoint.dir.display().to_string(),
            message: format!(
                "the score head has num_labels = {num_labels}, expected 1 (one reward per response)"
            ),
        }),
        Head::CausalLm => Err(JudgeError::NotARewardModel {
            dir: checkpoint.dir.display().to_string(),
            message: "config.json declares a *ForCausalLM, expected a *ForSequenceClassification reward model".into(),
        }),
    }
}

impl ScalarJudge for RewardModelJudge {
    fn name(&self) -> String {
        format!("reward-model:{}", self.name)
    }

    /// The dtype changes scores; the device's last bits are covered by `digest` only (so the
    /// stage fingerprint, like every stage's, ignores the device).
    fn settings(&self) -> Value {
        json!({"dtype": dtype_name(self.dtype)})
    }

    fn digest(&self) -> String {
        judge_digest(
            "reward-model",
            Some(&self.model_digest),
            &json!({"dtype": dtype_name(self.dtype), "device": self.device}),
        )
    }

    fn check(&self, items: &[JudgeItem<'_>]) -> Result<(), JudgeError> {
        for it in items {
            self.render(it)?;
        }
        Ok(())
    }

    fn score(&self, items: &[JudgeItem<'_>]) -> Result<Vec<f64>, JudgeError> {
        let seqs = items
            .iter()
            .map(|it| self.render(it))
            .collect::<Result<Vec<_>, _>>()?;
        self.score_token_ids(&seqs)
    }
}

/// `reward-model`'s registry builder: the model is found and fingerprinted now, its weights
/// loaded only if there is work to do.
pub(super) fn build(s: &ScoreSettings) -> anyhow::Result<JudgeSpec> {
    use anyhow::Context;
    let model = JudgeModel::resolve(s)?;
    let temperature = s.temperature;
    Ok(JudgeSpec {
        content: json!({
            "judge": "reward-model",
            "dtype": model.dtype_name(),
            "temperature": temperature,
        }),
        models: vec![("judge", model.reference.clone())],
        constraint_outcomes: false,
        load: Box::new(move || {
            let judge = RewardModelJudge::load(
                &model.dir,
                model.name(),
                model.reference.digest.clone(),
                model.dtype,
                &model.device,
            )
            .with_context(|| format!("--judge-model {}", model.spec))?;
            Ok(Judge::Scalar {
                judge: Box::new(judge),
                temperature,
            })
        }),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;
    use std::path::PathBuf;

    fn fixture_dir() -> PathBuf {
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/tiny-llama-rm")
    }

    fn expected() -> Vec<(Vec<u32>, f64)> {
        let text = std::fs::read_to_string(fixture_dir().join("expected.json")).unwrap();
        let v: Value = serde_json::from_str(&text).unwrap();
        v["sequences"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| {
                let ids = s["input_ids"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|x| x.as_u64().unwrap() as u32)
                    .collect();
                (ids, s["score"].as_f64().unwrap())
            })
            .collect()
    }

    fn judge() -> RewardModelJudge {
        RewardModelJudge::load(
            &fixture_dir(),
            "tiny-llama-rm".into(),
            "digest".into(),
            DType::F32,
            &Device::Cpu,
        )
        .unwrap()
    }

    #[test]
    fn fixture_scores_match_transformers() {
        let judge = judge();
        let cases = expected();
        let seqs: Vec<Vec<u32>> = cases.iter().map(|c| c.0.clone()).collect();
        let got = judge.score_token_ids(&seqs).unwrap();
        for ((_, want), got) in cases.iter().zip(&got) {
            assert!((got - want).abs() < 1e-4, "got {got}, expected {want}");
        }
    }

    #[test]
    fn a_score_does_not_depend_on_its_batch() {
        let judge = judge();
        let seqs: Vec<Vec<u32>> = expected().into_iter().map(|c| c.0).collect();
        let together = judge.score_token_ids(&seqs).unwrap();
        for (i, seq) in seqs.iter().enumerate() {
            let alone = judge.score_token_ids(std::slice::from_ref(seq)).unwrap();
            assert_eq!(alone[0].to_bits(), together[i].to_bits());
        }
        let reversed: Vec<Vec<u32>> = seqs.iter().rev().cloned().collect();
        let mut back = judge.score_token_ids(&reversed).unwrap();
        back.reverse();
        assert_eq!(back, together);
    }

    #[test]
    fn a_padded_batch_would_change_the_last_bits() {
        // Why `reward_scores` runs each sequence alone: the padded batch is within float error
        // of the fixture but not bit-identical to the unbatched scores.
        let judge = judge();
        let seqs: Vec<Vec<u32>> = expected().into_iter().map(|c| c.0).collect();
        let padded = sequence_scores(&judge.model, &seqs)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        let alone = judge.score_token_ids(&seqs).unwrap();
        for (p, a) in padded.iter().zip(&alone) {
            assert!((f64::from(*p) - a).abs() < 1e-5);
        }
    }

    /// A template that concatenates the turns' text after BOS, so a conversation renders to
    /// exactly the text the fixture's ids were tokenized from.
    pub(crate) const CONCAT_TEMPLATE: &str =
        "{{ bos_token }}{% for message in messages %}{{ message['content'] }}{% endfor %}";

    /// The fixture's sequences as (prompt, response) text, split after the prompt.
    pub(crate) const FIXTURE_TEXT: [(&str, &str); 3] = [
        (" Hello world,", " once upon a time."),
        (
            " Write a short poem about the sea.",
            " The waves roll in and out, the gulls cry, and the sun sets slowly.",
        ),
        (
            " [INST] Explain why the sky is blue in two sentences. [/INST]",
            " Sunlight is scattered by the molecules of the air, and blue light is scattered more than red light because of its shorter wavelength.",
        ),
    ];

    #[test]
    fn score_renders_tokenizes_and_matches_the_fixture() {
        // The whole `score` path (template, tokenizer, model) on conversations whose rendering
        // is the fixture's token ids.
        let mut ck = Checkpoint::open(&fixture_dir()).unwrap();
        ck.chat_template = Some(
            crate::model::ChatTemplate::new(
                CONCAT_TEMPLATE,
                &fixture_dir().join("tokenizer_config.json"),
                "<s>".into(),
                "</s>".into(),
                "<unk>".into(),
                String::new(),
            )
            .unwrap(),
        );
        let model = ck.load_model(DType::F32, &Device::Cpu).unwrap();
        let judge = RewardModelJudge::new(ck, model, "rm".into(), "d".into()).unwrap();
        let messages: Vec<[Message; 1]> = FIXTURE_TEXT
            .iter()
            .map(|(p, _)| [Message::user(*p)])
            .collect();
        let items: Vec<JudgeItem> = FIXTURE_TEXT
            .iter()
            .zip(&messages)
            .enumerate()
            .map(|(i, ((_, r), m))| JudgeItem {
                prompt_id: "q",
                sample_idx: i as u32,
                messages: m,
                prompt_text: "",
                response: r,
                reference: None,
                constraints: None,
            })
            .collect();
        let got = judge.score(&items).unwrap();
        for ((item, (ids, want)), got) in items.iter().zip(expected()).zip(got) {
            assert_eq!(judge.render(item).unwrap(), ids);
            assert!((got - want).abs() < 1e-4, "got {got}, expected {want}");
        }
    }

    #[test]
    fn rejects_causal_lms_and_too_long_conversations() {
        let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/tiny-llama");
        let err = RewardModelJudge::load(&dir, "x".into(), "d".into(), DType::F32, &Device::Cpu)
            .err()
            .unwrap();
        assert!(
            err.to_string()
                .contains("expected a *ForSequenceClassification"),
            "{err}"
        );

        let judge = judge();
        let messages = [Message::user("hi")];
        let long = "word ".repeat(600);
        let item = JudgeItem {
            prompt_id: "q7",
            sample_idx: 3,
            messages: &messages,
            prompt_text: "",
            response: &long,
            reference: None,
            constraints: None,
        };
        let err = judge.score(&[item]).unwrap_err().to_string();
        assert!(
            err.contains("prompt \"q7\", sample 3") && err.contains("max_position_embeddings"),
            "{err}"
        );
    }

    #[test]
    fn renders_the_conversation_with_the_judges_template() {
        let judge = judge();
        let messages = [Message::user(
            "Explain why the sky is blue in two sentences.",
        )];
        let item = JudgeItem {
            prompt_id: "q",
            sample_idx: 0,
            messages: &messages,
            prompt_text: "",
            response: "The sky is blue.",
            reference: None,
            constraints: None,
        };
        let ids = judge.render(&item).unwrap();
        let text = judge.checkpoint().tokenizer.decode(&ids, false).unwrap();
        eprintln!("{ids:?} {text:?}");
        assert_eq!(ids[0], 1);
        assert_eq!(
            *ids.last().unwrap(),
            2,
            "the template ends the assistant turn with EOS"
        );
        for (seq, _) in expected() {
            eprintln!(
                "{:?}",
                judge.checkpoint().tokenizer.decode(&seq, false).unwrap()
            );
        }
    }
}
