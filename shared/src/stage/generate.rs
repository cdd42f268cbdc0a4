//! `generate`: K samples per prompt from the policy (`sample`), teacher-forced log-probs of
//! those samples under a model (`logprobs`), and joining shard outputs (`merge`).

use anyhow::{bail, ensure, Context, Result};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

use super::context::{content_config, Outcome, StageOutput};
use super::progress::Progress;
use super::settings::Settings;
use crate::data::{
    read_meta, read_prompts, read_rows, row_seed, write_rows, ChunkStore, FileKind, FileMeta,
    FinishReason, LogprobRow, PromptOptions, SampleRow,
};
use crate::model::{
    dtype_for, dtype_name, generate, model_ref, parse_device, resolve_model,
    teacher_forced_logprobs, Checkpoint, Finish, GenerationRequest, PromptResponse, SamplingParams,
};
// Also train_step.rs's import of it (it lives in model/device.rs).

/// The `[generate]` section of a pipeline file; flags override it.
#[derive(Debug, Clone, Serialize, Deserialize, clap::Args)]
pub struct GenerateSettings {
    /// Samples per prompt.
    #[arg(long, default_value_t = 5)]
    pub k: u32,
    /// Sampling temperature; 0 is greedy.
    #[arg(long, default_value_t = 0.7)]
    pub temperature: f64,
    /// Nucleus sampling: keep the most likely tokens up to this probability mass.
    #[arg(long, default_value_t = 0.9)]
    pub top_p: f64,
    /// Keep only the k most likely tokens; 0 keeps every token.
    #[arg(long, default_value_t = 0)]
    pub top_k: usize,
    /// Response length limit in tokens.
    #[arg(long, default_value_t = 512)]
    pub max_new_tokens: usize,
    /// The run seed; each row's seed is blake3(seed, prompt_id, sample_idx, iteration).
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// The RSPO iteration (part of each row's seed).
    #[arg(long, default_value_t = 1)]
    pub iteration: u32,
    /// Rows decoded (or scored, for log-probs) together; never changes the output.
    #[arg(long, default_value_t = 8)]
    pub batch_size: usize,
    /// Read prompts from this column instead of `prompt` / `messages`.
    #[arg(long, value_name = "COLUMN")]
    pub prompt_column: Option<String>,
    /// cpu, cuda or cuda:N.
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// f32 or bf16 [default: f32 on CPU, bf16 on CUDA].
    #[arg(long)]
    pub dtype: Option<String>,
}

impl Default for GenerateSettings {
    fn default() -> Self {
        Self::defaults()
    }
}

impl Settings for GenerateSettings {
    const SECTION: &'static str = "generate";
}

/// Fields that never change what `generate` writes.
const NOT_CONTENT: &[&str] = &["batch_size", "device"];

/// `--shard I/N`: the I-th of N contiguous slices of the prompts (0-based).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shard {
    pub index: u32,
    pub count: u32,
}

impl std::str::FromStr for Shard {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<Self> {
        let (i, n) = s
            .split_once('/')
            .with_context(|| format!("--shard {s}: expected I/N, e.g. 0/4"))?;
        let index: u32 = i
            .parse()
            .with_context(|| format!("--shard {s}: I is not a number"))?;
        let count: u32 = n
            .parse()
            .with_context(|| format!("--shard {s}: N is not a number"))?;
        ensure!(
            count >= 1 && index < count,
            "--shard {s}: expected 0 <= I < N"
        );
        Ok(Shard { index, count })
    }
}

impl Shard {
    fn range(&self, n: usize) -> std::ops::Range<usize> {
        let (i, c) = (self.index as usize, self.count as usize);
        i * n / c..(i + 1) * n / c
    }
}

/// A model directory, GGUF file or Hub id (downloaded), opened: config, tokenizer and template checked;
/// weights are read later, only if there is work to do.
fn open_checkpoint(spec: &str) -> Result<(PathBuf, Checkpoint)> {
    let dir = resolve_model(spec)?;
    let ck = Checkpoint::open(&dir).with_context(|| format!("--model {spec}"))?;
    Ok((dir, ck))
}

pub struct SampleJob<'a> {
    pub model: &'a str,
    pub prompts: &'a Path,
    pub out: &'a Path,
    pub settings: &'a GenerateSettings,
    pub shard: Option<Shard>,
    pub force: bool,
}

fn check_sampling(s: &GenerateSettings) -> Result<()> {
    ensure!(
        s.k >= 1,
        "--k {}: expected at least 1 sample per prompt",
        s.k
    );
    ensure!(
        s.temperature >= 0.0 && s.temperature.is_finite(),
        "--temperature {}: expected a number >= 0 (0 is greedy)",
        s.temperature
    );
    ensure!(
        s.top_p > 0.0 && s.top_p <= 1.0,
        "--top-p {}: expected a number in (0, 1]",
        s.top_p
    );
    ensure!(s.max_new_tokens >= 1, "--max-new-tokens must be at least 1");
    ensure!(s.batch_size >= 1, "--batch-size must be at least 1");
    Ok(())
}

/// `generate sample`: K responses per prompt, written to `samples.parquet`.
pub fn sample(job: &SampleJob) -> Result<Outcome> {
    let s = job.settings;
    check_sampling(s)?;
    let (dir, ck) = open_checkpoint(job.model)?;
    let options = PromptOptions {
        prompt_column: s.prompt_column.clone(),
    };
    let (prompts_meta, prompts) = read_prompts(job.prompts, &options)?;
    ensure!(
        !prompts.is_empty(),
        "{}: the prompt file has no rows",
        job.prompts.display()
    );
    let mut seen = HashMap::new();
    for (i, p) in prompts.iter().enumerate() {
        if let Some(first) = seen.insert(p.prompt_id.as_str(), i) {
            bail!(
                "{}: prompt_id {:?} appears in rows {first} and {i}; prompt ids must be unique",
                job.prompts.display(),
                p.prompt_id
            );
        }
    }
    let range = job
        .shard
        .map_or(0..prompts.len(), |sh| sh.range(prompts.len()));
    let prompts = &prompts[range];

    let policy = model_ref(&dir)?;
    let config = content_config(s, NOT_CONTENT)?;
    let mut output = StageOutput::new(
        job.out,
        FileKind::Samples,
        "generate",
        &config,
        &[(job.prompts, &prompts_meta)],
        &[("policy", policy)],
    )?;
    if let Some(sh) = job.shard {
        // A shard's fingerprint differs from the whole's; merge restores the whole's.
        output.meta.extra.insert(
            "unsharded_fingerprint".into(),
            output.meta.fingerprint.clone(),
        );
        output
            .meta
            .extra
            .insert("shard".into(), format!("{}/{}", sh.index, sh.count));
        output.meta.fingerprint = blake3::hash(
            format!("{}:{}/{}", output.meta.fingerprint, sh.index, sh.count).as_bytes(),
        )
        .to_hex()
        .to_string();
    }
    if !job.force && output.is_up_to_date() {
        ChunkStore::discard(job.out)?;
        return Ok(Outcome::UpToDate);
    }
    if job.force {
        ChunkStore::discard(job.out)?;
    }

    // Render and tokenize everything first: a bad prompt fails before any work is done.
    let limit = ck.config.max_position_embeddings;
    let mut rendered = Vec::with_capacity(prompts.len());
    for p in prompts {
        let text = ck
            .render_chat(&p.messages, true)
            .with_context(|| format!("prompt {:?}", p.prompt_id))?;
        let ids = ck.encode(&text)?;
        ensure!(
            ids.len() < limit,
            "{}: prompt {:?} is {} tokens after the chat template, longer than the model's context of {limit} tokens",
            job.prompts.display(),
            p.prompt_id,
            ids.len()
        );
        rendered.push((text, ids));
    }

    let device = parse_device(&s.device)?;
    let dtype = dtype_for(s.dtype.as_deref(), &device)?;
    let model = ck
        .load_model(dtype, &device)
        .with_context(|| format!("--model {}: cannot load the weights", job.model))?;
    let params = SamplingParams {
        temperature: s.temperature,
        top_p: s.top_p,
        top_k: s.top_k,
    };

    let mut store = ChunkStore::open(job.out, output.fingerprint())?;
    let pending: Vec<usize> = (0..prompts.len())
        .filter(|&i| !store.is_completed(&prompts[i].prompt_id))
        .collect();
    let mut progress = Progress::new("generate", prompts.len() as u64, "tokens");
    progress.advance((prompts.len() - pending.len()) as u64);
    let per_batch = (s.batch_size / s.k as usize).max(1);
    for group in pending.chunks(per_batch) {
        let mut requests = Vec::new();
        for &i in group {
            for sample_idx in 0..s.k {
                requests.push(GenerationRequest {
                    prompt_ids: rendered[i].1.clone(),
                    seed: row_seed(s.seed, &prompts[i].prompt_id, sample_idx, s.iteration),
                });
            }
        }
        let outputs = generate(
            &model,
            &requests,
            &params,
            s.max_new_tokens,
            &ck.stop_tokens,
            |n| progress.add_units(n as u64),
        )?;
        let mut rows = Vec::with_capacity(outputs.len());
        for (r, (req, out)) in requests.iter().zip(outputs).enumerate() {
            let i = group[r / s.k as usize];
            rows.push(SampleRow {
                prompt_id: prompts[i].prompt_id.clone(),
                sample_idx: (r % s.k as usize) as u32,
                messages: prompts[i].messages.clone(),
                prompt_text: rendered[i].0.clone(),
                response: ck.decode(&out.response_ids)?,
                prompt_token_ids: req.prompt_ids.clone(),
                response_token_ids: out.response_ids,
                finish_reason: match out.finish {
                    Finish::Eos => FinishReason::Eos,
                    Finish::Length => FinishReason::Length,
                },
                sample_logprob: out.sample_logprob,
                seed: req.seed,
            });
        }
        let keys: Vec<&str> = group
            .iter()
            .map(|&i| prompts[i].prompt_id.as_str())
            .collect();
        store.write_chunk(&keys, &rows)?;
        progress.advance(group.len() as u64);
    }
    progress.finish();
    let order: HashMap<&str, usize> = prompts
        .iter()
        .enumerate()
        .map(|(i, p)| (p.prompt_id.as_str(), i))
        .collect();
    let rows = store.finish(&output.meta, |r: &SampleRow| {
        (order.get(r.prompt_id.as_str()).copied(), r.sample_idx)
    })?;
    Ok(Outcome::Written { rows: rows.len() })
}

/// Joins `generate sample --shard I/N` outputs (all N of them) into the file an unsharded run
/// writes.
pub fn merge(shards: &[PathBuf], out: &Path) -> Result<Outcome> {
    ensure!(!shards.is_empty(), "merge: no shard files given");
    let mut parts: Vec<(Shard, FileMeta, Vec<SampleRow>)> = Vec::new();
    for path in shards {
        let (meta, rows) = read_rows::<SampleRow>(path)?;
        let shard: Shard = meta
            .extra
            .get("shard")
            .with_context(|| format!("{}: not a shard (no rspo.shard metadata)", path.display()))?
            .parse()?;
        parts.push((shard, meta, rows));
    }
    parts.sort_by_key(|p| p.0.index);
    let count = parts[0].0.count;
    ensure!(
        parts.len() == count as usize
            && parts
                .iter()
                .enumerate()
                .all(|(i, p)| p.0.index == i as u32 && p.0.count == count),
        "merge: expected the {count} shards 0/{count} .. {}/{count} once each, found {:?}",
        count - 1,
        parts
            .iter()
            .map(|p| format!("{}/{}", p.0.index, p.0.count))
            .collect::<Vec<_>>()
    );
    let mut meta = parts[0].1.clone();
    let whole = meta
        .extra
        .remove("unsharded_fingerprint")
        .context("shard without rspo.unsharded_fingerprint")?;
    meta.extra.remove("shard");
    for (sh, m, _) in &parts[1..] {
        ensure!(
            m.extra.get("unsharded_fingerprint") == Some(&whole),
            "merge: shard {}/{} comes from another run (other inputs or settings)",
            sh.index,
            sh.count
        );
    }
    meta.fingerprint = whole;
    let rows: Vec<SampleRow> = parts.into_iter().flat_map(|p| p.2).collect();
    if read_meta(out)
        .map(|m| m.fingerprint == meta.fingerprint)
        .unwrap_or(false)
    {
        return Ok(Outcome::UpToDate);
    }
    write_rows(out, &meta, &rows)?;
    Ok(Outcome::Written { rows: rows.len() })
}

pub struct LogprobsJob<'a> {
    pub model: &'a str,
    pub samples: &'a Path,
    pub role: &'a str,
    pub out: &'a Path,
    pub settings: &'a GenerateSettings,
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
    let (samples_meta, samples) = read_rows::<SampleRow>(job.samples)?;
    ensure!(!samples.is_empty(), "{}: no samples", job.samples.display());
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
        &[(job.role, model_ref(&dir)?)],
    )?;
    output.meta.extra.insert("role".into(), job.role.into());
    if !job.force && output.is_up_to_date() {
        ChunkStore::discard(job.out)?;
        return Ok(Outcome::UpToDate);
    }
    if job.force {
        ChunkStore::discard(job.out)?;
    }
    if let Some(other) = job.reuse {
        let (meta, rows) = read_rows::<LogprobRow>(other)?;
        let same_samples =
            meta.inputs.first().map(|i| &i.fingerprint) == Some(&samples_meta.fingerprint);
        let same_model = meta.models.values().next().map(|m| &m.digest)
            == output.meta.models.get(job.role).map(|m| &m.digest);
        if same_samples && same_model && meta.config["dtype"] == output.meta.config["dtype"] {
            write_rows(job.out, &output.meta, &rows)?;
            eprintln!(
                "generate logprobs: same samples and model as {}: rows reused",
                other.display()
            );
            return Ok(Outcome::Written { rows: rows.len() });
        }
        eprintln!(
            "generate logprobs: {} is of other samples or another model; computing",
            other.display()
        );
    }
    let limit = ck.config.max_position_embeddings;
    for r in &samples {
        let n = r.prompt_token_ids.len() + r.response_token_ids.len();
        ensure!(
            n <= limit,
            "{}: sample ({:?}, {}) is {n} tokens, longer than the model's context of {limit}",
            job.samples.display(),
            r.prompt_id,
            r.sample_idx
        );
        ensure!(
            !r.prompt_token_ids.is_empty(),
            "{}: sample ({:?}, {}) has no prompt tokens",
            job.samples.display(),
            r.prompt_id,
            r.sample_idx
        );
    }
    let model = ck
        .load_model(dtype, &device)
        .with_context(|| format!("--model {}: cannot load the weights", job.model))?;

    // Work unit: all samples of one prompt.
    let mut groups: Vec<(&str, Vec<&SampleRow>)> = Vec::new();
    for r in &samples {
        match groups.last_mut() {
            Some((pid, rows)) if *pid == r.prompt_id => rows.push(r),
            _ => groups.push((&r.prompt_id, vec![r])),
        }
    }
    let mut store = ChunkStore::open(job.out, output.fingerprint())?;
    let mut progress = Progress::new("logprobs", samples.len() as u64, "tokens");
    let mut pending: Vec<&(&str, Vec<&SampleRow>)> = Vec::new();
    for g in &groups {
        if store.is_completed(g.0) {
            progress.advance(g.1.len() as u64);
        } else {
            pending.push(g);
        }
    }
    // Chunks of whole prompts with about `batch_size` rows each.
    let mut i = 0;
    while i < pending.len() {
        let mut j = i;
        let mut rows: Vec<&SampleRow> = Vec::new();
        while j < pending.len()
            && (rows.is_empty() || rows.len() + pending[j].1.len() <= s.batch_size)
        {
            rows.extend(pending[j].1.iter().copied());
            j += 1;
        }
        let mut out_rows = Vec::with_capacity(rows.len());
        for batch in rows.chunks(s.batch_size) {
            let pr: Vec<PromptResponse> = batch
                .iter()
                .map(|r| PromptResponse {
                    prompt: &r.prompt_token_ids,
                    response: &r.response_token_ids,
                })
                .collect();
            let lp = teacher_forced_logprobs(&model, &pr)?.to_vecs()?;
            for (r, tokens) in batch.iter().zip(lp) {
                out_rows.push(LogprobRow {
                    prompt_id: r.prompt_id.clone(),
                    sample_idx: r.sample_idx,
                    logprob: tokens.iter().map(|&t| t as f64).sum(),
                    num_tokens: tokens.len() as u32,
                    token_logprobs: tokens,
                });
            }
            progress.add_units(
                batch
                    .iter()
                    .map(|r| r.response_token_ids.len() as u64)
                    .sum(),
            );
        }
        let keys: Vec<&str> = pending[i..j].iter().map(|g| g.0).collect();
        store.write_chunk(&keys, &out_rows)?;
        progress.advance(rows.len() as u64);
        i = j;
    }
    progress.finish();
    let order: HashMap<(&str, u32), usize> = samples
        .iter()
        .enumerate()
        .map(|(i, r)| ((r.prompt_id.as_str(), r.sample_idx), i))
        .collect();
    let rows = store.finish(&output.meta, |r: &LogprobRow| {
        order.get(&(r.prompt_id.as_str(), r.sample_idx)).copied()
    })?;
    Ok(Outcome::Written { rows: rows.len() })
}
