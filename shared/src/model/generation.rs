//! Batched autoregressive decoding with the KV cache. Rows advance together one token per
//! step; a row that reaches a stop token or its length limit leaves the batch (and the cache),
//! so finished rows stop costing compute.

use candle_core::{Device, Tensor};
use rayon::prelude::*;

use super::kv_cache::KvCache;
use super::logprobs::left_pad;
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

/// Decodes every request; `on_step(tokens)` is told how many tokens each step produced.
pub fn generate(
    model: &Transformer,
    requests: &[GenerationRequest],
    params: &SamplingParams,
    max_new_tokens: usize,
    stop_tokens: &[u32],
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
    let dev = model.device().clone();
    let prompts: Vec<Vec<u32>> = requests.iter().map(|r| r.prompt_ids.clone()).collect();
    let (ids, pads) = left_pad(&prompts, 0, &dev)?;
    let mut cache = KvCache::new(model.cfg.num_hidden_layers, pads);

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
    let mut input = ids;
    if active.len() < requests.len() {
        let rows: Vec<usize> = active.iter().map(|a| a.0).collect();
        cache.retain_rows(&rows)?;
        input = input.index_select(&index(&rows, &dev)?, 0)?;
    }

    while !active.is_empty() {
        let hidden = model.forward_hidden(&input, &mut cache)?;
        let t = hidden.dim(1)?;
        let logits = model.logits(&hidden.narrow(1, t - 1, 1)?)?.squeeze(1)?;
        let logits = logits.to_dtype(candle_core::DType::F32)?.to_vec2::<f32>()?;
        let picks: Vec<(u32, f64)> = logits
            .par_iter()
            .zip(active.par_iter_mut())
            .map(|(row, (_, rng))| {
                let tok = sample(row, params, rng);
                (tok, raw_logprob(row, tok))
            })
            .collect();
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
        input = Tensor::from_vec(next, (active.len(), 1), &dev)?;
    }
    Ok(outputs)
}

fn index(rows: &[usize], dev: &Device) -> Result<Tensor> {
    Ok(Tensor::from_vec(
        rows.iter().map(|&r| r as u32).collect::<Vec<_>>(),
        rows.len(),
        dev,
    )?)
}
