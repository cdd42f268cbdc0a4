//! Batched autoregressive decoding with the KV cache. Rows advance together one token per
//! step; a row that reaches a stop token or its length limit leaves the batch (and the cache),
//! so finished rows stop costing compute.

use candle_core::{DType, Device, Tensor};
use rayon::prelude::*;
use std::collections::{HashMap, VecDeque};

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

/// [`generate`] with the sampler chosen by the caller: every request decoded in one batch.
pub fn generate_with(
    model: &Transformer,
    requests: &[GenerationRequest],
    params: &SamplingParams,
    max_new_tokens: usize,
    stop_tokens: &[u32],
    sampler: Sampler,
    on_step: impl FnMut(usize),
) -> Result<Vec<GenerationOutput>> {
    let options = DecodeOptions {
        params,
        max_new_tokens,
        stop_tokens,
        sampler,
        max_rows: requests.len(),
    };
    let mut outputs: Vec<Option<GenerationOutput>> = vec![None; requests.len()];
    generate_continuously(model, requests, &options, on_step, |i, out| {
        outputs[i] = Some(out);
        Ok::<(), ModelError>(())
    })?;
    Ok(outputs
        .into_iter()
        .map(|o| o.expect("every request finishes"))
        .collect())
}

/// How [`generate_continuously`] decodes.
#[derive(Debug, Clone, Copy)]
pub struct DecodeOptions<'a> {
    pub params: &'a SamplingParams,
    pub max_new_tokens: usize,
    pub stop_tokens: &'a [u32],
    pub sampler: Sampler,
    /// Rows decoded together (at least 1).
    pub max_rows: usize,
}

/// Decodes every request with continuous batching: at most `max_rows` rows run together, and
/// a row that finishes hands its slot (its row of the preallocated cache) to the next waiting
/// request, so the batch stays full until the queue runs dry. `on_done(i, output)` gets each
/// request as it finishes; `on_step(tokens)` how many tokens each step produced. A row's
/// numbers never depend on the rest of the batch (on the CPU: see the transformer's decoding
/// step), so the outputs are those of decoding each request alone, whatever `max_rows` is.
pub fn generate_continuously<E: From<ModelError>>(
    model: &Transformer,
    requests: &[GenerationRequest],
    options: &DecodeOptions,
    mut on_step: impl FnMut(usize),
    mut on_done: impl FnMut(usize, GenerationOutput) -> std::result::Result<(), E>,
) -> std::result::Result<(), E> {
    let limit = model.cfg.max_position_embeddings;
    for r in requests {
        if r.prompt_ids.is_empty() || r.prompt_ids.len() >= limit {
            return Err(ModelError::TooLong {
                found: r.prompt_ids.len(),
                limit,
            }
            .into());
        }
    }
    // Each row may not grow past the context either.
    let budget: Vec<usize> = requests
        .iter()
        .map(|r| options.max_new_tokens.min(limit - r.prompt_ids.len()))
        .collect();
    let mut waiting: VecDeque<usize> = VecDeque::new();
    for (i, &b) in budget.iter().enumerate() {
        if b == 0 {
            on_done(i, GenerationOutput::empty())?;
        } else {
            waiting.push_back(i);
        }
    }
    let mut prefills = Prefills::new(model, requests, &waiting);
    let mut batch = match Batch::start(requests, &budget, options, &mut waiting, &mut prefills)? {
        Some(batch) => batch,
        None => return Ok(()),
    };
    loop {
        let picks = choose(
            &batch.logits,
            &mut batch.rows,
            options.params,
            options.sampler,
        )?;
        on_step(picks.len());
        let mut free = Vec::new();
        for (slot, &pick) in picks.iter().enumerate() {
            if let Some(out) = batch.record(slot, pick, &budget, options.stop_tokens) {
                on_done(batch.rows[slot].0, out)?;
                free.push(slot);
            }
        }
        for slot in free {
            let refill = batch.refill(
                slot,
                requests,
                &budget,
                options,
                &mut waiting,
                &mut prefills,
            )?;
            on_step(refill.tokens);
            for (i, out) in refill.finished {
                on_done(i, out)?;
            }
        }
        if !batch.drop_free_rows()? {
            return Ok(());
        }
        batch.step(model)?;
    }
}

impl GenerationOutput {
    fn empty() -> Self {
        GenerationOutput {
            response_ids: Vec::new(),
            finish: Finish::Length,
            sample_logprob: 0.0,
        }
    }
}

/// The prefill of each distinct prompt, done alone (a row's numbers never depend on its batch)
/// once for all the prompt's requests, and kept until the last of them is admitted.
struct Prefills<'m> {
    model: &'m Transformer,
    /// Per prompt: its cache and next-token logits (1, vocab), and how many requests still
    /// waiting use it.
    done: HashMap<Vec<u32>, (KvCache, Tensor, usize)>,
    uses: HashMap<Vec<u32>, usize>,
}

impl<'m> Prefills<'m> {
    fn new(
        model: &'m Transformer,
        requests: &[GenerationRequest],
        waiting: &VecDeque<usize>,
    ) -> Self {
        let mut uses: HashMap<Vec<u32>, usize> = HashMap::new();
        for &i in waiting {
            *uses.entry(requests[i].prompt_ids.clone()).or_default() += 1;
        }
        Prefills {
            model,
            done: HashMap::new(),
            uses,
        }
    }

    /// The prompt's cache and logits, computing them on first use.
    fn take(&mut self, prompt: &[u32]) -> Result<(KvCache, Tensor)> {
        if !self.done.contains_key(prompt) {
            let uses = self.uses.remove(prompt).unwrap_or(1);
            let (cache, logits) = prefill(self.model, prompt)?;
            self.done.insert(prompt.to_vec(), (cache, logits, uses));
        }
        let entry = self.done.get_mut(prompt).expect("inserted above");
        entry.2 -= 1;
        let out = (entry.0.clone(), entry.1.clone());
        if entry.2 == 0 {
            self.done.remove(prompt);
        }
        Ok(out)
    }
}

/// The prompt's cache (one row, no padding) and its next-token logits (1, vocab).
fn prefill(model: &Transformer, prompt: &[u32]) -> Result<(KvCache, Tensor)> {
    let mut cache = KvCache::new(model.cfg.num_hidden_layers, vec![0]);
    let ids = Tensor::new(prompt, model.device())?.unsqueeze(0)?;
    let hidden = model.forward_hidden(&ids, &mut cache)?;
    let last = hidden.narrow(1, prompt.len() - 1, 1)?;
    let logits = model.logits(&last)?.squeeze(1)?;
    Ok((cache, logits))
}

/// The rows decoding together: the cache's rows in order, each a request with its random
/// stream.
struct Batch {
    cache: KvCache,
    rows: Vec<(usize, RowRng)>,
    /// False for a slot whose request finished and that nothing waiting has taken yet.
    live: Vec<bool>,
    /// Each row's response so far.
    outputs: Vec<GenerationOutput>,
    /// Each row's last token, the next step's input.
    next: Vec<u32>,
    /// Next-token logits (rows, vocab).
    logits: Tensor,
    /// Columns that any prompt needs: a refilled slot's prompt ends at the last column.
    width: usize,
}

/// The entries of `v` at the (ascending) positions `keep`.
fn keep_only<T>(v: &mut Vec<T>, keep: &[usize]) {
    let old = std::mem::take(v);
    *v = old
        .into_iter()
        .enumerate()
        .filter(|(r, _)| keep.binary_search(r).is_ok())
        .map(|(_, x)| x)
        .collect();
}

/// What refilling one slot produced: the tokens sampled, and the requests that finished on
/// their first token (the slot then went to the next one).
struct Refill {
    tokens: usize,
    finished: Vec<(usize, GenerationOutput)>,
}

impl Batch {
    /// The first `max_rows` waiting requests, prefilled and joined into one left-padded batch
    /// as wide as the longest prompt of all; `None` when nothing waits.
    fn start(
        requests: &[GenerationRequest],
        budget: &[usize],
        options: &DecodeOptions,
        waiting: &mut VecDeque<usize>,
        prefills: &mut Prefills,
    ) -> Result<Option<Self>> {
        let n = options.max_rows.max(1).min(waiting.len());
        if n == 0 {
            return Ok(None);
        }
        let width = waiting
            .iter()
            .map(|&i| requests[i].prompt_ids.len())
            .max()
            .unwrap_or(0);
        let mut caches = Vec::with_capacity(n);
        let mut logits = Vec::with_capacity(n);
        let mut rows = Vec::with_capacity(n);
        for i in waiting.drain(..n) {
            let (c, l) = prefills.take(&requests[i].prompt_ids)?;
            caches.push(c);
            logits.push(l);
            rows.push((i, RowRng::new(requests[i].seed)));
        }
        let mut cache = KvCache::stack(&caches, width)?;
        let longest = rows.iter().map(|&(i, _)| budget[i]).max().unwrap_or(0);
        // Alone, a batch needs room for its longest response; refilled, a slot's new request
        // starts at the last column, and the leading padding is dropped when room runs out.
        let capacity = if waiting.is_empty() {
            width + longest
        } else {
            2 * (width + budget.iter().copied().max().unwrap_or(0))
        };
        cache.reserve(capacity)?;
        Ok(Some(Batch {
            cache,
            live: vec![true; n],
            outputs: vec![GenerationOutput::empty(); n],
            next: vec![0; n],
            logits: Tensor::cat(&logits, 0)?,
            rows,
            width,
        }))
    }

    /// Adds the token chosen for `slot`; returns the request's output if it has finished.
    fn record(
        &mut self,
        slot: usize,
        (tok, lp): (u32, f64),
        budget: &[usize],
        stop_tokens: &[u32],
    ) -> Option<GenerationOutput> {
        let out = &mut self.outputs[slot];
        out.response_ids.push(tok);
        out.sample_logprob += lp;
        self.next[slot] = tok;
        let finish = if stop_tokens.contains(&tok) {
            Finish::Eos
        } else if out.response_ids.len() >= budget[self.rows[slot].0] {
            Finish::Length
        } else {
            return None;
        };
        self.live[slot] = false;
        let mut out = std::mem::replace(out, GenerationOutput::empty());
        out.finish = finish;
        Some(out)
    }

    /// Gives the finished `slot` to the next waiting request: its prefill goes into the slot's
    /// row of the cache and its first token is chosen from the prefill's logits. A request that
    /// finishes on that token is reported and the slot goes to the next one.
    fn refill(
        &mut self,
        slot: usize,
        requests: &[GenerationRequest],
        budget: &[usize],
        options: &DecodeOptions,
        waiting: &mut VecDeque<usize>,
        prefills: &mut Prefills,
    ) -> Result<Refill> {
        let mut refill = Refill {
            tokens: 0,
            finished: Vec::new(),
        };
        while let Some(i) = waiting.pop_front() {
            let (single, logits) = prefills.take(&requests[i].prompt_ids)?;
            self.rows[slot] = (i, RowRng::new(requests[i].seed));
            let pick = choose(
                &logits,
                std::slice::from_mut(&mut self.rows[slot]),
                options.params,
                options.sampler,
            )?[0];
            refill.tokens += 1;
            self.live[slot] = true;
            if let Some(out) = self.record(slot, pick, budget, options.stop_tokens) {
                refill.finished.push((i, out));
                continue;
            }
            self.cache.replace_row(slot, &single)?;
            break;
        }
        Ok(refill)
    }

    /// Removes the slots nothing could refill (the queue is empty); false when no row is left.
    fn drop_free_rows(&mut self) -> Result<bool> {
        let keep: Vec<usize> = (0..self.rows.len()).filter(|&r| self.live[r]).collect();
        if keep.is_empty() {
            return Ok(false);
        }
        if keep.len() < self.rows.len() {
            self.cache.retain_rows(&keep)?;
            keep_only(&mut self.rows, &keep);
            keep_only(&mut self.outputs, &keep);
            keep_only(&mut self.next, &keep);
            self.live.retain(|&l| l);
        }
        Ok(true)
    }

    /// One column for every row: feeds each row's last token and keeps the next logits.
    fn step(&mut self, model: &Transformer) -> Result<()> {
        // Out of columns: drop the padding every row has, but keep `width` columns so that any
        // waiting prompt still fits a refilled slot.
        if self.cache.len() + 1 > self.cache.capacity() {
            let room = self.cache.len() - self.width;
            self.cache.drop_leading_padding(room)?;
        }
        let input = Tensor::from_vec(self.next.clone(), (self.rows.len(), 1), model.device())?;
        let hidden = model.forward_hidden(&input, &mut self.cache)?;
        self.logits = model.logits(&hidden)?.squeeze(1)?;
        Ok(())
    }
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
