//! How `score` keeps a judge's verdicts while judging, chunk by chunk: as the rows of
//! scores.parquet (scalar judges) or of preferences.parquet (pairwise judges).

use anyhow::{bail, Context, Result};
use std::collections::HashMap;

use super::PromptSamples;
use crate::data::{PreferenceRow, Rows, ScoreRow};
use crate::judge::{pairs_of, preference_from_scores, JudgeItem, PairVerdict, Verdicts};

/// A judge's verdicts as the rows `score` writes chunk by chunk.
pub(super) trait VerdictRows: Rows {
    fn judgments_per_prompt(k: usize) -> usize;
    fn from_verdicts(
        prompts: &[Vec<JudgeItem>],
        verdicts: Verdicts,
        judge: &str,
    ) -> Result<Vec<Self>>;
    /// Every prompt's verdicts, from every prompt's rows.
    fn into_verdicts(prompts: &[Vec<JudgeItem>], rows: &[Self]) -> Result<Verdicts>;
    fn prompt_id(&self) -> &str;
    /// The row's place within its prompt: (sample_idx, 0) or (i, j).
    fn position(&self) -> (u32, u32);
}

impl VerdictRows for ScoreRow {
    fn judgments_per_prompt(k: usize) -> usize {
        k
    }

    fn from_verdicts(
        prompts: &[Vec<JudgeItem>],
        verdicts: Verdicts,
        _judge: &str,
    ) -> Result<Vec<Self>> {
        let Verdicts::Scores(scores) = verdicts else {
            bail!("a scalar judge gave pair verdicts");
        };
        Ok(prompts
            .iter()
            .flatten()
            .zip(scores.into_iter().flatten())
            .map(|(it, score)| ScoreRow {
                prompt_id: it.prompt_id.to_string(),
                sample_idx: it.sample_idx,
                score,
            })
            .collect())
    }

    fn into_verdicts(prompts: &[Vec<JudgeItem>], rows: &[Self]) -> Result<Verdicts> {
        let by_key: HashMap<(&str, u32), f64> = rows
            .iter()
            .map(|r| ((r.prompt_id.as_str(), r.sample_idx), r.score))
            .collect();
        let score_of = |it: &JudgeItem| {
            by_key
                .get(&(it.prompt_id, it.sample_idx))
                .copied()
                .with_context(|| {
                    format!(
                        "no score for prompt {:?}, sample {} after scoring",
                        it.prompt_id, it.sample_idx
                    )
                })
        };
        let scores = prompts
            .iter()
            .map(|items| items.iter().map(score_of).collect())
            .collect::<Result<_>>()?;
        Ok(Verdicts::Scores(scores))
    }

    fn prompt_id(&self) -> &str {
        &self.prompt_id
    }

    fn position(&self) -> (u32, u32) {
        (self.sample_idx, 0)
    }
}

impl VerdictRows for PreferenceRow {
    fn judgments_per_prompt(k: usize) -> usize {
        k * (k - 1) / 2
    }

    fn from_verdicts(
        prompts: &[Vec<JudgeItem>],
        verdicts: Verdicts,
        judge: &str,
    ) -> Result<Vec<Self>> {
        let Verdicts::Pairs(verdicts) = verdicts else {
            bail!("a pairwise judge gave scores");
        };
        let mut rows = Vec::new();
        for (items, verdicts) in prompts.iter().zip(verdicts) {
            for ((i, j), v) in pairs_of(items.len()).into_iter().zip(verdicts) {
                rows.push(PreferenceRow {
                    prompt_id: items[i].prompt_id.to_string(),
                    i: i as u32,
                    j: j as u32,
                    p: v.p,
                    p_forward: v.p_forward,
                    p_swapped: v.p_swapped,
                    judge: judge.to_string(),
                });
            }
        }
        Ok(rows)
    }

    fn into_verdicts(prompts: &[Vec<JudgeItem>], rows: &[Self]) -> Result<Verdicts> {
        let by_key: HashMap<(&str, u32, u32), PairVerdict> = rows
            .iter()
            .map(|r| {
                let v = PairVerdict {
                    p: r.p,
                    p_forward: r.p_forward,
                    p_swapped: r.p_swapped,
                };
                ((r.prompt_id.as_str(), r.i, r.j), v)
            })
            .collect();
        let mut verdicts = Vec::with_capacity(prompts.len());
        for items in prompts {
            let prompt_id = items.first().map_or("", |it| it.prompt_id);
            let pairs = pairs_of(items.len()).into_iter().map(|(i, j)| {
                by_key
                    .get(&(prompt_id, i as u32, j as u32))
                    .copied()
                    .with_context(|| {
                        format!(
                            "no verdict for prompt {prompt_id:?}, pair ({i}, {j}) after scoring"
                        )
                    })
            });
            verdicts.push(pairs.collect::<Result<_>>()?);
        }
        Ok(Verdicts::Pairs(verdicts))
    }

    fn prompt_id(&self) -> &str {
        &self.prompt_id
    }

    fn position(&self) -> (u32, u32) {
        (self.i, self.j)
    }
}

/// Every pair i < j of every prompt, `p = sigmoid((r_i - r_j) / temperature)`.
pub(super) fn preferences_from_scores(
    groups: &[PromptSamples],
    scores: &[Vec<f64>],
    temperature: f64,
    judge: &str,
) -> Vec<PreferenceRow> {
    let mut out = Vec::new();
    for (g, scores) in groups.iter().zip(scores) {
        for (i, j) in pairs_of(scores.len()) {
            out.push(PreferenceRow {
                prompt_id: g.prompt_id.to_string(),
                i: i as u32,
                j: j as u32,
                p: preference_from_scores(scores[i], scores[j], temperature),
                p_forward: None,
                p_swapped: None,
                judge: judge.to_string(),
            });
        }
    }
    out
}
