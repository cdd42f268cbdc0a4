//! `generate logprobs`: log pi(response | prompt) of every sample under a model, per token and
//! summed, through the same forward pass training uses; resumable in chunks of whole prompts.

use anyhow::{bail, ensure, Context, Result};
use serde::Serialize;
use std::collections::{HashMap, HashSet};
use std::ops::Range;
use std::path::Path;

use super::{open_checkpoint, GenerateSettings};
use crate::data::{
    read_rows, read_rows_or_shard, write_rows, ChunkStore, DigestCache, FileKind, FileMeta,
    LogprobRow, SampleRow, SHARD,
};
use crate::model::{
    dtype_for, dtype_name, model_ref, parse_device, teacher_forced_logprobs, PromptResponse,
    Transformer,
};
use crate::stage::context::{check_output_files, skip_chunked_run, Outcome, StageOutput};
use crate::stage::output_lock::lock_outputs;
use crate::stage::progress::Progress;
use crate::stage::shard::Shard;

pub struct LogprobsJob<'a> {
    pub model: &'a str,
    pub samples: &'a Path,
    pub role: &'a str,
    pub out: &'a Path,
    pub settings: &'a GenerateSettings,
    pub shard: Option<Shard>,
    pub force: bool,
    /// A log-probs file of the same samples under the same model (in another role), whose rows
    /// are reused instead of recomputed: iteration 1's policy is the reference model.
    pub reuse: Option<&'a Path>,
}

/// `generate logprobs`: log pi(response | prompt) of every sample under a model, per token and
/// summed, through the same forward pass training uses.
pub fn logprobs(job: &LogprobsJob) -> Result<Outcome> {
    let s = job.settings;
    ensure!(
        job.role == "policy" || job.role == "reference",
        "--role {}: expected policy or reference",
        job.role
    );
    ensure!(s.batch_size >= 1, "--batch-size must be at least 1");
    let (dir, ck) = open_checkpoint(job.model)?;
    let mut inputs = vec![("--samples", job.samples)];
    inputs.extend(job.reuse.map(|p| ("--reuse", p)));
    check_output_files(&[("--out", job.out)], &inputs, &[("--model", &dir)])?;
    let (samples_meta, samples) = read_rows::<SampleRow>(job.samples)?;
    ensure!(!samples.is_empty(), "{}: no samples", job.samples.display());
    let samples = shard_samples(job.shard, samples, s.batch_size)?;
    let device = parse_device(&s.device)?;
    let dtype = dtype_for(s.dtype.as_deref(), &device)?;
    #[derive(Serialize)]
    struct Content<'a> {
        role: &'a str,
        dtype: String,
    }
    let mut output = StageOutput::new(
        job.out,
        FileKind::Logprobs,
        "generate-logprobs",
        &Content {
            role: job.role,
            dtype: dtype_name(dtype),
        },
        &[(job.samples, &samples_meta)],
        &[(
            job.role,
            model_ref(&dir, DigestCache::recompute_if(job.force))?,
        )],
    )?;
    output.meta.extra.insert("role".into(), job.role.into());
    let _lock = lock_outputs(&[("--out", job.out)])?;
    if let Some(sh) = job.shard {
        sh.mark(&mut output.meta);
    }
    if skip_chunked_run(job.out, output.is_up_to_date(), job.force)? {
        return Ok(Outcome::UpToDate);
    }
    if let Some(other) = job.reuse {
        if let Some(rows) = reusable_rows(other, &samples_meta, &output, job.role)? {
            // The same samples: keep the rows of this shard's.
            let ids: HashSet<&str> = samples.iter().map(|r| r.prompt_id.as_str()).collect();
            let rows: Vec<LogprobRow> = rows
                .into_iter()
                .filter(|r| ids.contains(r.prompt_id.as_str()))
                .collect();
            write_rows(job.out, &output.meta, &rows)?;
            return Ok(Outcome::Written { rows: rows.len() });
        }
    }
    check_lengths(job.samples, &samples, ck.config.max_position_embeddings)?;
    let model = ck
        .load_model(dtype, &device)
        .with_context(|| format!("--model {}: cannot load the weights", job.model))?;

    let mut store = ChunkStore::open(job.out, output.fingerprint())?;
    score_pending((job.model, &model), &samples, s.batch_size, &mut store)?;
    let order: HashMap<(&str, u32), usize> = samples
        .iter()
        .enumerate()
        .map(|(i, r)| ((r.prompt_id.as_str(), r.sample_idx), i))
        .collect();
    let rows = store.finish(&output.meta, samples.len(), |r: &LogprobRow| {
        order.get(&(r.prompt_id.as_str(), r.sample_idx)).copied()
    })?;
    Ok(Outcome::Written { rows: rows.len() })
}

/// The rows of `other` when they are of the same samples under the same model and dtype
/// (iteration 1's policy is the reference model), else None.
fn reusable_rows(
    other: &Path,
    samples_meta: &FileMeta,
    output: &StageOutput,
    role: &str,
) -> Result<Option<Vec<LogprobRow>>> {
    let (meta, rows) = read_rows_or_shard::<LogprobRow>(other)?;
    let same_samples =
        meta.inputs.first().map(|i| &i.fingerprint) == Some(&samples_meta.fingerprint);
    let same_model = meta.models.values().next().map(|m| &m.digest)
        == output.meta.models.get(role).map(|m| &m.digest);
    // A shard's rows are part of the samples only; the whole file is reused.
    let whole = !meta.extra.contains_key(SHARD);
    if same_samples && same_model && whole && meta.config["dtype"] == output.meta.config["dtype"] {
        eprintln!(
            "generate logprobs: same samples and model as {}: rows reused",
            other.display()
        );
        return Ok(Some(rows));
    }
    eprintln!(
        "generate logprobs: {} is of other samples or another model; computing",
        other.display()
    );
    Ok(None)
}

/// Refuses a sample without prompt tokens or longer than the model's context.
fn check_lengths(path: &Path, samples: &[SampleRow], limit: usize) -> Result<()> {
    for r in samples {
        let n = r.prompt_token_ids.len() + r.response_token_ids.len();
        ensure!(
            n <= limit,
            "{}: sample ({:?}, {}) is {n} tokens, longer than the model's context of {limit}",
            path.display(),
            r.prompt_id,
            r.sample_idx
        );
        ensure!(
            !r.prompt_token_ids.is_empty(),
            "{}: sample ({:?}, {}) has no prompt tokens",
            path.display(),
            r.prompt_id,
            r.sample_idx
        );
    }
    Ok(())
}

/// The samples grouped by prompt (consecutive rows of one prompt_id): the unit of work.
fn prompt_groups(samples: &[SampleRow]) -> Vec<(&str, Vec<&SampleRow>)> {
    let mut groups: Vec<(&str, Vec<&SampleRow>)> = Vec::new();
    for r in samples {
        match groups.last_mut() {
            Some((pid, rows)) if *pid == r.prompt_id => rows.push(r),
            _ => groups.push((&r.prompt_id, vec![r])),
        }
    }
    groups
}

/// Chunks of whole prompts with about `batch_size` rows each, as ranges of the prompt groups
/// of `sizes` rows: the rows in a chunk go through the model together.
fn chunk_plan(sizes: &[usize], batch_size: usize) -> Vec<Range<usize>> {
    let mut chunks = Vec::new();
    let mut i = 0;
    while i < sizes.len() {
        let (mut j, mut rows) = (i, 0);
        while j < sizes.len() && (rows == 0 || rows + sizes[j] <= batch_size) {
            rows += sizes[j];
            j += 1;
        }
        chunks.push(i..j);
        i = j;
    }
    chunks
}

/// The samples of `shard`'s slice of the unsharded run's chunks (all samples without a
/// shard). A shard takes whole chunks of whole prompts, so an interrupted shard resumes on the
/// chunk boundaries of an unsharded run (each row's log-probs do not depend on its chunk).
fn shard_samples(
    shard: Option<Shard>,
    samples: Vec<SampleRow>,
    batch_size: usize,
) -> Result<Vec<SampleRow>> {
    if shard.is_none() {
        return Ok(samples);
    }
    let groups = prompt_groups(&samples);
    let sizes: Vec<usize> = groups.iter().map(|g| g.1.len()).collect();
    let chunks = Shard::keep(shard, chunk_plan(&sizes, batch_size), "batches of prompts")?;
    let range = chunks[0].start..chunks[chunks.len() - 1].end;
    let kept: HashSet<String> = groups[range].iter().map(|g| g.0.to_string()).collect();
    Ok(samples
        .into_iter()
        .filter(|r| kept.contains(&r.prompt_id))
        .collect())
}

/// Log-probs of every sample not yet in `store`, written in chunks of whole prompts with about
/// `batch_size` rows each (the rows of a chunk still run one by one: see [`logprob_rows`]).
fn score_pending(
    model: (&str, &Transformer),
    samples: &[SampleRow],
    batch_size: usize,
    store: &mut ChunkStore,
) -> Result<()> {
    let groups = prompt_groups(samples);
    let mut progress = Progress::new("logprobs", samples.len() as u64, "tokens");
    let mut pending: Vec<&(&str, Vec<&SampleRow>)> = Vec::new();
    for g in &groups {
        if store.is_completed(g.0) {
            progress.advance(g.1.len() as u64);
        } else {
            pending.push(g);
        }
    }
    let sizes: Vec<usize> = pending.iter().map(|g| g.1.len()).collect();
    for chunk in chunk_plan(&sizes, batch_size) {
        let rows: Vec<&SampleRow> = pending[chunk.clone()]
            .iter()
            .flat_map(|g| g.1.iter().copied())
            .collect();
        let mut out_rows = Vec::with_capacity(rows.len());
        for batch in rows.chunks(batch_size) {
            out_rows.extend(logprob_rows(model, batch)?);
            progress.add_units(
                batch
                    .iter()
                    .map(|r| r.response_token_ids.len() as u64)
                    .sum(),
            );
        }
        let keys: Vec<&str> = pending[chunk].iter().map(|g| g.0).collect();
        store.write_chunk(&keys, &out_rows)?;
        progress.advance(rows.len() as u64);
    }
    progress.finish();
    Ok(())
}

/// Per-token log-probs of every sample of `batch` and their sum.
///
/// Each sample runs alone, unpadded, as the reward model's sequences do: in a padded batch the
/// last bits of a row's log-probs change with the other rows (softmax width, gemm blocking), and
/// a file must not depend on `--batch-size` or on how an interrupted run was chunked.
fn logprob_rows(
    (label, model): (&str, &Transformer),
    batch: &[&SampleRow],
) -> Result<Vec<LogprobRow>> {
    let mut lp = Vec::with_capacity(batch.len());
    for r in batch {
        let alone = PromptResponse {
            prompt: &r.prompt_token_ids,
            response: &r.response_token_ids,
        };
        lp.extend(teacher_forced_logprobs(model, &[alone])?.to_vecs()?);
    }
    for (r, tokens) in batch.iter().zip(&lp) {
        if let Some(i) = tokens.iter().position(|t| !t.is_finite()) {
            bail!(
                "--model {label}: prompt {:?}, sample {}: the log-prob of response token {i} is \
                 {}; expected a finite number (are the weights or the logits NaN?)",
                r.prompt_id,
                r.sample_idx,
                tokens[i]
            );
        }
    }
    Ok(batch
        .iter()
        .zip(lp)
        .map(|(r, tokens)| LogprobRow {
            prompt_id: r.prompt_id.clone(),
            sample_idx: r.sample_idx,
            logprob: tokens.iter().map(|&t| t as f64).sum(),
            num_tokens: tokens.len() as u32,
            token_logprobs: tokens,
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::chunk_plan;

    #[test]
    fn chunks_hold_whole_prompts_up_to_the_batch_size() {
        assert_eq!(chunk_plan(&[8, 8, 8, 8, 8], 16), [0..2, 2..4, 4..5]);
        // A prompt larger than the batch is a chunk alone.
        assert_eq!(chunk_plan(&[3, 20, 3, 3], 8), [0..1, 1..2, 2..4]);
        assert!(chunk_plan(&[], 4).is_empty());
    }
}
