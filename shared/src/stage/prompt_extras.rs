//! What `score` reads from `--prompts FILE` besides the samples: each prompt's reference answer
//! (`rule:exact-match`) and constraints (`instructions`). Samples files carry neither.

use anyhow::{bail, Result};
use std::collections::HashMap;
use std::path::Path;

use crate::data::{read_prompts, FileMeta, PromptOptions};

/// The prompt file's extras for the prompts of the samples, by prompt_id.
#[derive(Debug, Default)]
pub struct PromptExtras {
    pub references: HashMap<String, String>,
    pub constraints: HashMap<String, String>,
    /// The first prompt of the samples without a reference answer: an error only for judges
    /// that use one.
    missing_reference: Option<String>,
}

impl PromptExtras {
    /// Reads `prompts`, which must hold every prompt of the samples.
    pub fn read<'a>(
        prompts: &Path,
        prompt_ids: impl Iterator<Item = &'a str>,
    ) -> Result<(FileMeta, Self)> {
        let (meta, rows) = read_prompts(prompts, &PromptOptions::default())?;
        let mut by_id: HashMap<String, (Option<String>, Option<String>)> = rows
            .into_iter()
            .map(|p| (p.prompt_id, (p.reference, p.constraints)))
            .collect();
        let mut extras = PromptExtras::default();
        for id in prompt_ids {
            let Some((reference, constraints)) = by_id.remove(id) else {
                bail!(
                    "{}: no prompt with prompt_id {id:?} (from the samples), expected every prompt of the samples",
                    prompts.display()
                );
            };
            match reference {
                Some(r) => {
                    extras.references.insert(id.to_string(), r);
                }
                None => {
                    extras
                        .missing_reference
                        .get_or_insert_with(|| id.to_string());
                }
            }
            if let Some(c) = constraints {
                extras.constraints.insert(id.to_string(), c);
            }
        }
        Ok((meta, extras))
    }

    /// Checks that every prompt has a reference answer (for a judge that uses them).
    pub fn require_references(&self, prompts: &Path) -> Result<()> {
        if let Some(id) = &self.missing_reference {
            bail!(
                "{}: prompt {id:?} has no value in column 'reference', expected a reference answer for every prompt of the samples",
                prompts.display()
            );
        }
        Ok(())
    }
}
