//! PairRM as a pairwise judge for `score` and `evaluate`: the source is the prompt's last user
//! turn ([`JudgeItem::last_user_turn`], the default) or, with `--pairrm-source chat-template`,
//! the chat-templated prompt ([`JudgeItem::prompt_text`], as the official SPPO/RSPO pipeline);
//! the candidates are the responses.

use serde_json::{json, Value};

use super::judge_model::JudgeModel;
use super::pairrm::{LogitMatrix, PairRm, PairRmMode, PairRmOptions, PairRmSource};
use super::pairrm_inputs::PairRmLengths;
use super::registry::JudgeSpec;
use super::registry::ScoreSettings;
use super::traits::{Judge, JudgeError, JudgeItem, PairVerdict, PairwiseJudge};

pub struct PairRmJudge {
    model: PairRm,
    mode: PairRmMode,
    source: PairRmSource,
    name: String,
    digest: String,
}

impl PairRmJudge {
    /// `digest` is the model's; the mode, source and lengths are folded in here.
    pub fn new(
        model: PairRm,
        mode: PairRmMode,
        source: PairRmSource,
        name: String,
        model_digest: String,
    ) -> Self {
        let lengths = model.lengths();
        let mut settings = json!({
            "mode": mode.to_string(),
            "source_max_length": lengths.source_max_length,
            "candidate_max_length": lengths.candidate_max_length,
        });
        // The default source adds nothing, so earlier judgments stay cached.
        if source != PairRmSource::default() {
            settings["source"] = json!(source.to_string());
        }
        let digest = super::judge_digest("pairrm", Some(&model_digest), &settings);
        PairRmJudge {
            model,
            mode,
            source,
            name,
            digest,
        }
    }

    /// The source text PairRM reads for `item`'s prompt.
    fn source<'a>(&self, item: &JudgeItem<'a>) -> Result<&'a str, JudgeError> {
        match self.source {
            PairRmSource::LastUserTurn => Ok(item.last_user_turn()),
            PairRmSource::ChatTemplate if item.prompt_text.is_empty() => Err(self.error(
                item,
                "--pairrm-source chat-template: the sample has no prompt_text (the \
                 chat-templated prompt); use last-user-turn",
            )),
            PairRmSource::ChatTemplate => Ok(item.prompt_text),
        }
    }

    fn error(&self, item: &JudgeItem<'_>, e: impl std::fmt::Display) -> JudgeError {
        JudgeError::Item {
            judge: self.name.clone(),
            prompt_id: item.prompt_id.to_string(),
            sample_idx: item.sample_idx,
            message: e.to_string(),
        }
    }
}

fn verdicts(m: &LogitMatrix, mode: PairRmMode) -> Vec<PairVerdict> {
    m.verdicts(mode)
        .into_iter()
        .map(|v| PairVerdict {
            p: v.p,
            p_forward: Some(v.p_forward),
            p_swapped: Some(v.p_swapped),
        })
        .collect()
}

impl PairwiseJudge for PairRmJudge {
    fn name(&self) -> String {
        self.name.clone()
    }

    fn settings(&self) -> Value {
        json!({"mode": self.mode.to_string()})
    }

    fn digest(&self) -> String {
        self.digest.clone()
    }

    /// In `sppo` mode a pair's p depends on the whole group.
    fn per_pair(&self) -> bool {
        self.mode == PairRmMode::Pairwise
    }

    /// Both orders of one pair, combined as `pairwise` mode does (evaluation against a
    /// baseline has no group).
    fn compare(&self, a: &JudgeItem<'_>, b: &JudgeItem<'_>) -> Result<PairVerdict, JudgeError> {
        let m = self
            .model
            .logit_matrix(self.source(a)?, &[a.response, b.response])
            .map_err(|e| self.error(a, e))?;
        Ok(verdicts(&m, PairRmMode::Pairwise)[0])
    }

    fn compare_group(&self, items: &[JudgeItem<'_>]) -> Result<Vec<PairVerdict>, JudgeError> {
        let Some(first) = items.first() else {
            return Ok(vec![]);
        };
        let responses: Vec<&str> = items.iter().map(|it| it.response).collect();
        let m = self
            .model
            .logit_matrix(self.source(first)?, &responses)
            .map_err(|e| self.error(first, e))?;
        Ok(verdicts(&m, self.mode))
    }
}

/// `pairrm`'s registry builder: the model is found and fingerprinted now, its weights loaded
/// only if there is work to do.
pub(super) fn build(s: &ScoreSettings) -> anyhow::Result<JudgeSpec> {
    use anyhow::Context;
    let mode: PairRmMode = s
        .judging
        .pairrm_mode
        .parse()
        .map_err(|e| anyhow::anyhow!("--pairrm-mode {e}"))?;
    let source: PairRmSource = s
        .judging
        .pairrm_source
        .parse()
        .map_err(|e| anyhow::anyhow!("--pairrm-source {e}"))?;
    let model = JudgeModel::resolve(s)?;
    let lengths = PairRmLengths {
        source_max_length: s.judging.source_max_length,
        candidate_max_length: s.judging.candidate_max_length,
    };
    let batch_size = s.batch_size;
    let mut content = json!({
        "judge": "pairrm",
        "mode": mode.to_string(),
        "source_max_length": s.judging.source_max_length,
        "candidate_max_length": s.judging.candidate_max_length,
        "dtype": model.dtype_name(),
    });
    if source != PairRmSource::default() {
        content["source"] = json!(source.to_string());
    }
    Ok(JudgeSpec {
        content,
        models: vec![("judge", model.reference.clone())],
        constraint_outcomes: false,
        load: Box::new(move || {
            let options = PairRmOptions {
                lengths,
                dtype: model.dtype,
                batch_size: batch_size.max(1),
            };
            let pairrm = PairRm::load_with(&model.dir, &model.device, &options)
                .with_context(|| format!("--judge-model {}", model.spec))?;
            let name = format!("pairrm:{}", model.name());
            let digest = model.reference.digest.clone();
            Ok(Judge::Pairwise(Box::new(PairRmJudge::new(
                pairrm, mode, source, name, digest,
            ))))
        }),
    })
}
