//! Batched autoregressive decoding with the KV cache. Rows advance together one token per
//! step; a row that reaches a stop token or its length limit leaves the batch (and the cache),
//! so finished rows stop costing compute.

use candle_core::{DType, Tensor};
use rayon::prelude::*;
use std::collections::HashMap;
use std::sync::Arc;

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
    let layers = model.cfg.num_hidden_layers;

    // Prefill each distinct prompt alone: a row's numbers never depend on its batch, and the K
    // samples of a prompt share one prefill.
    let mut prefilled: HashMap<&[u32], (KvCache, Arc<[f32]>)> = HashMap::new();
    for r in requests {
        if prefilled.contains_key(r.prompt_ids.as_slice()) {
            continue;
        }
        let mut cache = KvCache::new(layers, vec![0]);
        let ids = Tensor::new(r.prompt_ids.as_slice(), &dev)?.unsqueeze(0)?;
        let hidden = model.forward_hidden(&ids, &mut cache)?;
        let last = hidden.narrow(1, r.prompt_ids.len() - 1, 1)?;
        let logits = model.logits(&last)?.to_dtype(DType::F32)?.flatten_all()?;
        let logits: Arc<[f32]> = logits.to_vec1::<f32>()?.into();
        prefilled.insert(r.prompt_ids.as_slice(), (cache, logits));
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
    let row_caches: Vec<KvCache> = active
        .iter()
        .map(|&(i, _)| prefilled[requests[i].prompt_ids.as_slice()].0.clone())
        .collect();
    let mut cache = KvCache::stack(&row_caches)?;
    let mut logits: Vec<Arc<[f32]>> = active
        .iter()
        .map(|&(i, _)| prefilled[requests[i].prompt_ids.as_slice()].1.clone())
        .collect();
    drop(prefilled);

    while !active.is_empty() {
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
        let input = Tensor::from_vec(next, (active.len(), 1), &dev)?;
        let hidden = model.forward_hidden(&input, &mut cache)?;
        logits = model
            .logits(&hidden)?
            .squeeze(1)?
            .to_dtype(DType::F32)?
            .to_vec2::<f32>()?
            .into_iter()
            .map(Arc::from)
            .collect();
    }
    Ok(outputs)
}
