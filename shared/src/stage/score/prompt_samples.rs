//! The samples of `score`, grouped by prompt, and what the judge sees of them.

use anyhow::{bail, ensure, Result};
use std::collections::HashMap;
use std::path::Path;

use crate::data::{read_prompts, FileMeta, PromptOptions, SampleRow};
use crate::judge::JudgeItem;

/// One prompt's samples, in sample_idx order 0..K.
pub(super) struct PromptSamples<'a> {
    pub prompt_id: &'a str,
    pub rows: Vec<&'a SampleRow>,
}

/// Groups samples by prompt (in order of first appearance) and checks that every prompt has
/// the same K >= 2 samples numbered 0..K, as comparing them in pairs needs.
pub(super) fn group_samples<'a>(
    path: &Path,
    samples: &'a [SampleRow],
) -> Result<Vec<PromptSamples<'a>>> {
    ensure!(
        !samples.is_empty(),
        "{}: no samples (0 rows), expected K >= 2 responses per prompt",
        path.display()
    );
    let mut index: HashMap<&str, usize> = HashMap::new();
    let mut groups: Vec<PromptSamples> = Vec::new();
    for row in samples {
        let g = *index.entry(row.prompt_id.as_str()).or_insert_with(|| {
            groups.push(PromptSamples {
                prompt_id: &row.prompt_id,
                rows: Vec::new(),
            });
            groups.len() - 1
        });
        groups[g].rows.push(row);
    }
    let (first, k) = (groups[0].prompt_id, groups[0].rows.len());
    for g in &mut groups {
        g.rows.sort_by_key(|r| r.sample_idx);
        if g.rows
            .iter()
            .enumerate()
            .any(|(i, r)| r.sample_idx as usize != i)
        {
            let found: Vec<u32> = g.rows.iter().map(|r| r.sample_idx).collect();
            bail!(
                "{}: prompt {:?} has column sample_idx = {found:?}, expected 0..{} without gaps",
                path.display(),
                g.prompt_id,
                g.rows.len() - 1
            );
        }
        ensure!(
            g.rows.len() >= 2,
            "{}: prompt {:?} has K = {} sample; the judge compares samples in pairs, expected K >= 2",
            path.display(),
            g.prompt_id,
            g.rows.len()
        );
        ensure!(
            g.rows.len() == k,
            "{}: prompt {:?} has K = {} samples but prompt {:?} has K = {k}; expected the same K for every prompt",
            path.display(),
            g.prompt_id,
            g.rows.len(),
            first
        );
    }
    Ok(groups)
}

/// What `--prompts FILE` adds to the samples (whose files carry neither): each prompt's
/// reference answer and constraints, by prompt_id.
#[derive(Default)]
pub(super) struct PromptColumns {
    by_id: HashMap<String, (Option<String>, Option<String>)>,
}

impl PromptColumns {
    /// Reads `prompts`, which must hold every prompt of `groups`.
    pub fn read(prompts: &Path, groups: &[PromptSamples]) -> Result<(FileMeta, Self)> {
        let (meta, rows) = read_prompts(prompts, &PromptOptions::default())?;
        let mut all: HashMap<String, (Option<String>, Option<String>)> = rows
            .into_iter()
            .map(|p| (p.prompt_id, (p.reference, p.constraints)))
            .collect();
        let mut by_id = HashMap::new();
        for g in groups {
            let Some(columns) = all.remove(g.prompt_id) else {
                bail!(
                    "{}: no prompt with prompt_id {:?} (from the samples), expected every prompt of the samples",
                    prompts.display(),
                    g.prompt_id
                );
            };
            by_id.insert(g.prompt_id.to_string(), columns);
        }
        Ok((meta, PromptColumns { by_id }))
    }

    /// Checks that every prompt of `groups` has a reference answer (for a judge that uses them).
    pub fn require_references(&self, prompts: &Path, groups: &[PromptSamples]) -> Result<()> {
        match groups.iter().find(|g| self.reference(g.prompt_id).is_none()) {
            Some(g) => bail!(
                "{}: prompt {:?} has no value in column 'reference', expected a reference answer for every prompt of the samples",
                prompts.display(),
                g.prompt_id
            ),
            None => Ok(()),
        }
    }

    fn reference(&self, prompt_id: &str) -> Option<&str> {
        self.by_id.get(prompt_id)?.0.as_deref()
    }

    fn constraints(&self, prompt_id: &str) -> Option<&str> {
        self.by_id.get(prompt_id)?.1.as_deref()
    }
}

/// What the judge sees of one prompt's samples.
pub(super) fn items_of<'a>(
    g: &PromptSamples<'a>,
    columns: &'a PromptColumns,
) -> Vec<JudgeItem<'a>> {
    let (reference, constraints) = (
        columns.reference(g.prompt_id),
        columns.constraints(g.prompt_id),
    );
    g.rows
        .iter()
        .map(|r| JudgeItem {
            prompt_id: &r.prompt_id,
            sample_idx: r.sample_idx,
            messages: &r.messages,
            prompt_text: &r.prompt_text,
            response: &r.response,
            reference,
            constraints,
        })
        .collect()
}
