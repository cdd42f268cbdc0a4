//! Teacher-forced log-probabilities of responses given prompts: the numbers the RSPO loss is made
//! of. Only the hidden states that predict response tokens go through the vocabulary projection,
//! a bounded chunk of rows at a time, so a 152k vocabulary never materialises full logits.

use candle_core::{DType, Device, Tensor, D};

use super::kv_cache::KvCache;
use super::transformer::Transformer;
use super::Result;

/// At most this many logits (rows x vocab) exist at once: 64 MiB of f32.
const LOGITS_PER_CHUNK: usize = 16 * 1024 * 1024;

/// A prompt and the response whose tokens are scored.
#[derive(Clone, Copy, Debug)]
pub struct PromptResponse<'a> {
    pub prompt: &'a [u32],
    pub response: &'a [u32],
}

/// Per-token log-probs of every response of a batch, concatenated row after row.
pub struct ResponseLogprobs {
    /// (total response tokens,) f32; differentiable when the model is built from `Var`s.
    pub tokens: Tensor,
    /// Response length of each row.
    pub lens: Vec<usize>,
}

impl ResponseLogprobs {
    /// Sequence log-probs (rows,): the sum over each row's response tokens, in f32.
    pub fn sums(&self) -> Result<Tensor> {
        let n: usize = self.lens.iter().sum();
        let rows = self.lens.len();
        // A (rows, n) 0/1 segment matrix times the token vector: one differentiable op.
        let mut seg = vec![0f32; rows * n];
        let mut start = 0;
        for (r, &len) in self.lens.iter().enumerate() {
            seg[r * n + start..r * n + start + len].fill(1.0);
            start += len;
        }
        let seg = Tensor::from_vec(seg, (rows, n), self.tokens.device())?
            .to_dtype(self.tokens.dtype())?;
        Ok(seg.matmul(&self.tokens.unsqueeze(1)?)?.squeeze(1)?)
    }

    /// Per-row token log-probs as plain vectors.
    pub fn to_vecs(&self) -> Result<Vec<Vec<f32>>> {
        let all = self.tokens.to_dtype(DType::F32)?.to_vec1::<f32>()?;
        let mut out = Vec::with_capacity(self.lens.len());
        let mut start = 0;
        for &len in &self.lens {
            out.push(all[start..start + len].to_vec());
            start += len;
        }
        Ok(out)
    }
}

/// Left-pads token sequences into one (rows, width) tensor; returns it with each row's padding.
pub fn left_pad(seqs: &[Vec<u32>], pad_id: u32, dev: &Device) -> Result<(Tensor, Vec<usize>)> {
    let width = seqs.iter().map(Vec::len).max().unwrap_or(0);
    let mut ids = Vec::with_capacity(seqs.len() * width);
    let mut pads = Vec::with_capacity(seqs.len());
    for s in seqs {
        let pad = width - s.len();
        ids.extend(std::iter::repeat_n(pad_id, pad));
        ids.extend_from_slice(s);
        pads.push(pad);
    }
    Ok((Tensor::from_vec(ids, (seqs.len(), width), dev)?, pads))
}

/// Runs the batch through the model once (no cache kept) and returns the final hidden states
/// (rows, width, hidden) with the left padding of each row.
pub fn hidden_states(model: &Transformer, seqs: &[Vec<u32>]) -> Result<(Tensor, Vec<usize>)> {
    let (ids, pads) = left_pad(seqs, 0, model.device())?;
    let mut cache = KvCache::new(model.cfg.num_hidden_layers, pads.clone());
    let hidden = model.forward_hidden(&ids, &mut cache)?;
    Ok((hidden, pads))
}

/// log p(response_t | prompt, response_<t) for every response token of every row.
/// A padded batch gives each row the numbers it would get alone.
pub fn teacher_forced_logprobs(
    model: &Transformer,
    batch: &[PromptResponse<'_>],
) -> Result<ResponseLogprobs> {
    let (hidden, _) = hidden_states(model, &sequences(batch))?;
    logprobs_from_hidden(model, batch, &hidden)
}

/// Each row's prompt followed by its response.
pub fn sequences(batch: &[PromptResponse<'_>]) -> Vec<Vec<u32>> {
    batch
        .iter()
        .map(|pr| [pr.prompt, pr.response].concat())
        .collect()
}

/// [`teacher_forced_logprobs`] from the final hidden states (rows, width, hidden) of the
/// left-padded [`sequences`] of `batch`.
pub fn logprobs_from_hidden(
    model: &Transformer,
    batch: &[PromptResponse<'_>],
    hidden: &Tensor,
) -> Result<ResponseLogprobs> {
    let (rows, width, h) = hidden.dims3()?;

    // Row r's response occupies its last `len` columns; column c predicts column c + 1.
    let mut positions = Vec::new();
    let mut targets = Vec::new();
    let mut lens = Vec::with_capacity(rows);
    for (r, pr) in batch.iter().enumerate() {
        if pr.prompt.is_empty() && !pr.response.is_empty() {
            return Err(super::ModelError::Config {
                path: "input".into(),
                message: format!("row {r}: a response needs at least one prompt token (BOS)"),
            });
        }
        let len = pr.response.len();
        for k in 0..len {
            positions.push((r * width + width - len - 1 + k) as u32);
        }
        targets.extend_from_slice(pr.response);
        lens.push(len);
    }
    let n = positions.len();
    let dev = model.device();
    if n == 0 {
        return Ok(ResponseLogprobs {
            tokens: Tensor::zeros(0, DType::F32, dev)?,
            lens,
        });
    }
    let positions = Tensor::from_vec(positions, n, dev)?;
    let target_ids = targets.clone();
    let targets = Tensor::from_vec(targets, (n, 1), dev)?;
    let selected = hidden
        .reshape((rows * width, h))?
        .index_select(&positions, 0)?;

    let chunk = (LOGITS_PER_CHUNK / model.cfg.vocab_size).max(1);
    let mut parts = Vec::with_capacity(n.div_ceil(chunk));
    for start in (0..n).step_by(chunk) {
        let len = chunk.min(n - start);
        let logits = model.logits(&selected.narrow(0, start, len)?)?;
        let logits = logits.to_dtype(super::ops::at_least_f32(logits.dtype()))?;
        // One pass forward and one backward on the CPU; composed ops elsewhere.
        match super::fused::target_logprobs(&logits, &target_ids[start..start + len])? {
            Some(logp) => parts.push(logp),
            None => {
                let logp = candle_nn::ops::log_softmax(&logits, D::Minus1)?;
                parts.push(
                    logp.gather(&targets.narrow(0, start, len)?, 1)?
                        .squeeze(1)?,
                );
            }
        }
    }
    let tokens = Tensor::cat(&parts, 0)?;
    Ok(ResponseLogprobs { tokens, lens })
}

/// Reward-model scores (rows, num_labels) of complete sequences.
pub fn sequence_scores(model: &Transformer, seqs: &[Vec<u32>]) -> Result<Tensor> {
    let (hidden, _) = hidden_states(model, seqs)?;
    model.score_head(&hidden)
}
