//! Batched autoregressive decoding with the KV cache. Rows advance together one token per
//! step; a row that reaches a stop token or its length limit leaves the batch (and the cache),
//! so finished rows stop costing compute.

use candle_core::{DType, Device, Tensor};
use rayon::prelude::*;
use std::collections::HashMap;

use super::device_sampling::sample_on_device;
use super::kv_cache::KvCache;
use super::sampling::{raw_logprob, sample, RowRng, SamplingParams};
use super::transformer::Transformer;
use super::{ModelError, Result};

/// One row to decode: its prompt tokens and the seed of its random stream.
#[derive(Debug, Clone)]
pub struct GenerationRequest {
    pub prompt_ids: Vec<u32>,
    pub seed: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Finish {
    /// A stop token was sampled (it is the last response token).
    Eos,
    /// `max_new_tokens` or the model's context ran out.
    Length,
}

#[derive(Debug, Clone)]
pub struct GenerationOutput {
    pub response_ids: Vec<u32>,
    pub finish: Finish,
    /// Sum of log-softmax of the raw logits at the sampled tokens.
    pub sample_logprob: f64,
}

/// Where the next token is chosen each step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sampler {
    /// Logits come to the host and each row samples in parallel there (`sampling.rs`): on the
    /// CPU nothing is copied and this is the fastest.
    Host,
    /// Tensor ops on the model's device (`device_sampling.rs`); only the chosen ids and their
    /// log-probs cross to the host. Same ids as `Host` for the same seeds.
    Device,
}

impl Sampler {
    /// `Host` on the CPU, `Device` elsewhere.
    pub fn for_device(dev: &Device) -> Self {
        if dev.is_cpu() {
            Sampler::Host
        } else {
            Sampler::Device
        }
    }
}

/// Decodes every request; `on_step(tokens)` is told how many tokens each step produced.
pub fn generate(
    model: &Transformer,
    requests: &[GenerationRequest],
    params: &SamplingParams,
    max_new_tokens: usize,
    stop_tokens: &[u32],
    on_step: impl FnMut(usize),
) -> Result<Vec<GenerationOutput>> {
    let sampler = Sampler::for_device(model.device());
    generate_with(
        model,
        requests,
        params,
        max_new_tokens,
        stop_tokens,
        sampler,
        on_step,
    )
}

/// [`generate`] with the sampler chosen by the caller.
pub fn generate_with(
    model: &Transformer,
    requests: &[GenerationRequest],
    params: &SamplingParams,
    max_new_tokens: usize,
    stop_tokens: &[u32],
    sampler: Sampler,
    mut on_step: impl FnMut(usize),
) -> Result<Vec<GenerationOutput>> {
    let limit = model.cfg.max_position_embeddings;
    for r in requests {
        if r.prompt_ids.is_empty() || r.prompt_ids.len() >= limit {
            return Err(ModelError::TooLong {
                found: r.prompt_ids.len(),
                limit,
            });
        }
    }
    let mut outputs: Vec<GenerationOutput> = requests
        .iter()
        .map(|_| GenerationOutput {
            response_ids: Vec::new(),
            finish: Finish::Length,
            sample_logprob: 0.0,
        })
        .collect();
    // Each row may not grow past the context either.
    let budget: Vec<usize> = requests
        .iter()
        .map(|r| max_new_tokens.min(limit - r.prompt_ids.len()))
        .collect();
    // The cache's rows, in order: which request each is, with its random stream.
    let mut active: Vec<(usize, RowRng)> = (0..requests.len())
        .filter(|&i| budget[i] > 0)
        .map(|i| (i, RowRng::new(requests[i].seed)))
        .collect();
    if active.is_empty() {
        return Ok(outputs);
    }
    let rows: Vec<&[u32]> = active
        .iter()
        .map(|&(i, _)| requests[i].prompt_ids.as_slice())
        .collect();
    let (mut cache, mut logits) = prefill(model, &rows)?;
    // Room for every column the longest row can reach: each step writes in place.
    let longest = active.iter().map(|&(i, _)| budget[i]).max().unwrap_or(0);
    cache.reserve(cache.len() + longest)?;
    let dev = model.device().clone();

    loop {
        let picks = choose(&logits, &mut active, params, sampler)?;
        on_step(picks.len());

        let mut keep_rows = Vec::with_capacity(active.len());
        let mut next = Vec::with_capacity(active.len());
        for (row, (&(i, _), &(tok, lp))) in active.iter().zip(&picks).enumerate() {
            let out = &mut outputs[i];
            out.response_ids.push(tok);
            out.sample_logprob += lp;
            if stop_tokens.contains(&tok) {
                out.finish = Finish::Eos;
            } else if out.response_ids.len() >= budget[i] {
                out.finish = Finish::Length;
            } else {
                keep_rows.push(row);
                next.push(tok);
            }
        }
        if keep_rows.is_empty() {
            break;
        }
        cache.retain_rows(&keep_rows)?;
        let mut kept = Vec::with_capacity(keep_rows.len());
        for (row, a) in active.into_iter().enumerate() {
            if keep_rows.binary_search(&row).is_ok() {
                kept.push(a);
            }
        }
        active = kept;
        let input = Tensor::from_vec(next, (active.len(), 1), &dev)?;
        let hidden = model.forward_hidden(&input, &mut cache)?;
        logits = model.logits(&hidden)?.squeeze(1)?;
    }
    Ok(outputs)
}

/// Prefills each distinct prompt alone (a row's numbers never depend on its batch, and the K
/// samples of a prompt share one prefill) and joins them into one left-padded batch: the cache
/// and the next-token logits (rows, vocab), in `rows` order.
fn prefill(model: &Transformer, rows: &[&[u32]]) -> Result<(KvCache, Tensor)> {
    let dev = model.device();
    let mut prefilled: HashMap<&[u32], (KvCache, Tensor)> = HashMap::new();
    for &prompt in rows {
        if prefilled.contains_key(prompt) {
            continue;
        }
        let mut cache = KvCache::new(model.cfg.num_hidden_layers, vec![0]);
        let ids = Tensor::new(prompt, dev)?.unsqueeze(0)?;
        let hidden = model.forward_hidden(&ids, &mut cache)?;
        let last = hidden.narrow(1, prompt.len() - 1, 1)?;
        let logits = model.logits(&last)?.squeeze(1)?;
        prefilled.insert(prompt, (cache, logits));
    }
    let caches: Vec<KvCache> = rows.iter().map(|p| prefilled[p].0.clone()).collect();
    let logits: Vec<&Tensor> = rows.iter().map(|p| &prefilled[p].1).collect();
    Ok((KvCache::stack(&caches)?, Tensor::cat(&logits, 0)?))
}

/// Each row's next token and its raw log-prob, from logits (rows, vocab). A sampling row draws
/// one uniform number from its stream per step, wherever the choice is made.
fn choose(
    logits: &Tensor,
    active: &mut [(usize, RowRng)],
    params: &SamplingParams,
    sampler: Sampler,
) -> Result<Vec<(u32, f64)>> {
    match sampler {
        Sampler::Host => {
            let rows: Vec<Vec<f32>> = logits.to_dtype(DType::F32)?.to_vec2::<f32>()?;
            Ok(rows
                .par_iter()
                .zip(active.par_iter_mut())
                .map(|(row, (_, rng))| {
                    let tok = sample(row, params, rng);
                    (tok, raw_logprob(row, tok))
                })
                .collect())
        }
        Sampler::Device => {
            let uniforms: Vec<f64> = if params.temperature > 0.0 {
                active.iter_mut().map(|(_, rng)| rng.uniform()).collect()
            } else {
                Vec::new()
            };
            sample_on_device(logits, params, &uniforms)
        }
    }
}
