//! `generate`: K samples per prompt from the policy (`sample`), teacher-forced log-probs of
//! those samples under a model (`logprobs`); both shard (see [`super::shard`]).

use anyhow::{bail, ensure, Context, Result};
use serde::{Deserialize, Serialize};
use std::cell::RefCell;
use std::collections::HashMap;
use std::path::{Path, PathBuf};

mod logprobs;
pub use logprobs::{logprobs, LogprobsJob};

use super::context::{check_output_files, content_config, skip_chunked_run, Outcome, StageOutput};
use super::output_lock::lock_outputs;
use super::progress::Progress;
use super::settings::Settings;
use super::shard::Shard;
use crate::data::{
    read_prompts, row_seed, ChunkStore, DigestCache, FileKind, FileMeta, FinishReason,
    PromptOptions, PromptRow, SampleRow,
};
use crate::model::{
    dtype_for, generate_continuously, model_ref, parse_device, resolve_model, Checkpoint,
    DecodeOptions, Finish, GenerationOutput, GenerationRequest, Sampler, SamplingParams,
    Transformer,
};

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
    /// Rows decoded together, a finished row's slot going to the next waiting sample (log-probs:
    /// rows per resumable chunk, each scored alone); never changes the output.
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

/// A model directory, GGUF file or Hub id (downloaded), opened: config, tokenizer and template checked;
/// weights are read later, only if there is work to do.
pub(super) fn open_checkpoint(spec: &str) -> Result<(PathBuf, Checkpoint)> {
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
    check_output_files(
        &[("--out", job.out)],
        &[("--prompts", job.prompts)],
        &[("--model", &dir)],
    )?;
    let (prompts_meta, prompts) = read_unique_prompts(job.prompts, s)?;
    let prompts = Shard::keep(job.shard, prompts, "prompts")?;

    let mut output = StageOutput::new(
        job.out,
        FileKind::Samples,
        "generate",
        &content_config(s, NOT_CONTENT)?,
        &[(job.prompts, &prompts_meta)],
        &[(
            "policy",
            model_ref(&dir, DigestCache::recompute_if(job.force))?,
        )],
    )?;
    if let Some(sh) = job.shard {
        sh.mark(&mut output.meta);
    }
    let _lock = lock_outputs(&[("--out", job.out)])?;
    if skip_chunked_run(job.out, output.is_up_to_date(), job.force)? {
        return Ok(Outcome::UpToDate);
    }
    // Render and tokenize everything first: a bad prompt fails before any work is done.
    let rendered = render_prompts(&ck, &prompts, job.prompts)?;

    let device = parse_device(&s.device)?;
    let dtype = dtype_for(s.dtype.as_deref(), &device)?;
    let model = ck
        .load_model(dtype, &device)
        .with_context(|| format!("--model {}: cannot load the weights", job.model))?;
    let mut store = ChunkStore::open(job.out, output.fingerprint())?;
    let pending: Vec<usize> = (0..prompts.len())
        .filter(|&i| !store.is_completed(&prompts[i].prompt_id))
        .collect();
    let mut progress = Progress::new("generate", prompts.len() as u64, "tokens");
    progress.advance((prompts.len() - pending.len()) as u64);
    let todo: Vec<(&PromptRow, &RenderedPrompt)> = pending
        .iter()
        .map(|&i| (&prompts[i], &rendered[i]))
        .collect();
    sample_all(
        (job.model, &model),
        &ck,
        s,
        &todo,
        &mut progress,
        |keys, rows| Ok(store.write_chunk(keys, rows)?),
    )?;
    progress.finish();
    let order: HashMap<&str, usize> = prompts
        .iter()
        .enumerate()
        .map(|(i, p)| (p.prompt_id.as_str(), i))
        .collect();
    let expected = prompts.len() * s.k as usize;
    let rows = store.finish(&output.meta, expected, |r: &SampleRow| {
        (order.get(r.prompt_id.as_str()).copied(), r.sample_idx)
    })?;
    Ok(Outcome::Written { rows: rows.len() })
}

/// The prompts of `path`, refusing an empty file and repeated prompt ids.
fn read_unique_prompts(path: &Path, s: &GenerateSettings) -> Result<(FileMeta, Vec<PromptRow>)> {
    let options = PromptOptions {
        prompt_column: s.prompt_column.clone(),
    };
    let (meta, prompts) = read_prompts(path, &options)?;
    ensure!(
        !prompts.is_empty(),
        "{}: the prompt file has no rows",
        path.display()
    );
    let mut seen = HashMap::new();
    for (i, p) in prompts.iter().enumerate() {
        if let Some(first) = seen.insert(p.prompt_id.as_str(), i) {
            bail!(
                "{}: prompt_id {:?} appears in rows {first} and {i}; prompt ids must be unique",
                path.display(),
                p.prompt_id
            );
        }
    }
    Ok((meta, prompts))
}

/// Opens the model `spec` and renders every prompt with its chat template: the checks `sample`
/// makes before loading weights, for a caller that checks every model before sampling any.
pub(super) fn check_model_for_prompts(
    spec: &str,
    prompts: &[PromptRow],
    path: &Path,
) -> Result<()> {
    let (_, ck) = open_checkpoint(spec)?;
    render_prompts(&ck, prompts, path).map(drop)
}

/// A prompt through the chat template: its text and token ids.
struct RenderedPrompt {
    text: String,
    ids: Vec<u32>,
}

/// Every prompt rendered and tokenized, refusing one longer than the model's context.
fn render_prompts(
    ck: &Checkpoint,
    prompts: &[PromptRow],
    path: &Path,
) -> Result<Vec<RenderedPrompt>> {
    let limit = ck.config.max_position_embeddings;
    prompts
        .iter()
        .map(|p| {
            let text = ck
                .render_chat(&p.messages, true)
                .with_context(|| format!("prompt {:?}", p.prompt_id))?;
            let ids = ck.encode(&text)?;
            ensure!(
                ids.len() < limit,
                "{}: prompt {:?} is {} tokens after the chat template, longer than the model's \
                 context of {limit} tokens",
                path.display(),
                p.prompt_id,
                ids.len()
            );
            Ok(RenderedPrompt { text, ids })
        })
        .collect()
}

/// K samples of each prompt of `todo`, decoded `--batch-size` rows at a time with continuous
/// batching; `write(prompt ids, rows)` gets the prompts whose K samples are done, `batch_size /
/// k` of them (at least one) at a time: the resumable chunks.
fn sample_all(
    (label, model): (&str, &Transformer),
    ck: &Checkpoint,
    s: &GenerateSettings,
    todo: &[(&PromptRow, &RenderedPrompt)],
    progress: &mut Progress,
    mut write: impl FnMut(&[&str], &[SampleRow]) -> Result<()>,
) -> Result<()> {
    let params = SamplingParams {
        temperature: s.temperature,
        top_p: s.top_p,
        top_k: s.top_k,
    };
    let k = s.k as usize;
    let mut requests = Vec::with_capacity(todo.len() * k);
    for (prompt, rendered) in todo {
        for sample_idx in 0..s.k {
            requests.push(GenerationRequest {
                prompt_ids: rendered.ids.clone(),
                seed: row_seed(s.seed, &prompt.prompt_id, sample_idx, s.iteration),
            });
        }
    }
    let options = DecodeOptions {
        params: &params,
        max_new_tokens: s.max_new_tokens,
        stop_tokens: &ck.stop_tokens,
        sampler: Sampler::for_device(model.device()),
        max_rows: s.batch_size,
    };
    let per_chunk = (s.batch_size / k).max(1);
    let progress = RefCell::new(progress);
    let mut outputs: Vec<Option<GenerationOutput>> = vec![None; requests.len()];
    let mut left = vec![k; todo.len()];
    let mut complete: Vec<usize> = Vec::new();
    let mut flush = |complete: &mut Vec<usize>, outputs: &mut [Option<GenerationOutput>]| {
        complete.sort_unstable();
        let mut rows = Vec::with_capacity(complete.len() * k);
        for &p in complete.iter() {
            for j in 0..k {
                let out = outputs[p * k + j].take().expect("finished");
                rows.push(sample_row(
                    label,
                    ck,
                    todo[p],
                    j,
                    &requests[p * k + j],
                    out,
                )?);
            }
        }
        let keys: Vec<&str> = complete
            .iter()
            .map(|&p| todo[p].0.prompt_id.as_str())
            .collect();
        write(&keys, &rows)?;
        progress.borrow_mut().advance(complete.len() as u64);
        complete.clear();
        anyhow::Ok(())
    };
    generate_continuously(
        model,
        &requests,
        &options,
        |n| progress.borrow_mut().add_units(n as u64),
        |r, out| {
            outputs[r] = Some(out);
            left[r / k] -= 1;
            if left[r / k] == 0 {
                complete.push(r / k);
            }
            if complete.len() >= per_chunk {
                flush(&mut complete, &mut outputs)?;
            }
            anyhow::Ok(())
        },
    )?;
    if !complete.is_empty() {
        flush(&mut complete, &mut outputs)?;
    }
    Ok(())
}

/// Sample `sample_idx` of a prompt as a row of samples.parquet.
fn sample_row(
    label: &str,
    ck: &Checkpoint,
    (prompt, rendered): (&PromptRow, &RenderedPrompt),
    sample_idx: usize,
    req: &GenerationRequest,
    out: GenerationOutput,
) -> Result<SampleRow> {
    ensure!(
        out.sample_logprob.is_finite(),
        "--model {label}: prompt {:?}, sample {sample_idx}: the log-prob of the sampled response \
         is {}; expected a finite number (are the weights or the logits NaN?)",
        prompt.prompt_id,
        out.sample_logprob
    );
    Ok(SampleRow {
        prompt_id: prompt.prompt_id.clone(),
        sample_idx: sample_idx as u32,
        messages: prompt.messages.clone(),
        prompt_text: rendered.text.clone(),
        response: ck.decode(&out.response_ids)?,
        prompt_token_ids: req.prompt_ids.clone(),
        response_token_ids: out.response_ids,
        finish_reason: match out.finish {
            Finish::Eos => FinishReason::Eos,
            Finish::Length => FinishReason::Length,
        },
        sample_logprob: out.sample_logprob,
        seed: req.seed,
    })
}
