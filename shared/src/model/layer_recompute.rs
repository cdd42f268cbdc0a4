//! Activation checkpointing ("gradient checkpointing"): a training forward pass that keeps only
//! each decoder layer's input, not the activations inside the layers, and a backward pass that
//! recomputes one layer at a time from its input and backpropagates through it. Peak memory
//! holds one layer's graph instead of all of them, for one more forward pass of compute.
//!
//! The forward pass runs each layer exactly as an ordinary training pass does (the same ops on
//! inputs that track gradients the same way, so the same kernels and the same numbers) and then
//! cuts the graph at the layer's output: the output becomes a fresh `Var`, the next layer's
//! input. The recomputation repeats the layer on that saved input, and backpropagating
//! `sum(output * upstream gradient)` gives the layer's parameter gradients and the gradient of
//! its input, which continues to the layer below. Layer 0's input keeps its graph back to the
//! embedding table, so the last recomputation also reaches the embeddings.

use candle_core::backprop::GradStore;
use candle_core::{Tensor, Var};

use super::kv_cache::KvCache;
use super::logprobs::left_pad;
use super::transformer::{LayerShared, Transformer};
use super::{ModelError, Result};

/// A forward pass that kept only the layers' inputs.
pub struct CheckpointedPass {
    pads: Vec<usize>,
    shared: LayerShared,
    /// Layer i's input: layer 0's with its graph back to the embeddings, the others cut.
    inputs: Vec<Tensor>,
    /// The last layer's output, cut: where the graph of what follows starts.
    last: Tensor,
}

impl CheckpointedPass {
    /// Runs the left-padded `seqs` through the layers; returns the pass and the final-normed
    /// hidden states (rows, width, hidden), whose graph reaches back only to the last layer's
    /// output ([`CheckpointedPass::backward`] continues from there).
    pub fn forward(model: &Transformer, seqs: &[Vec<u32>]) -> Result<(Self, Tensor)> {
        let (ids, pads) = left_pad(seqs, 0, model.device())?;
        let shared = model.layer_shared(&ids, &KvCache::new(model.num_layers(), pads.clone()))?;
        let mut x = model.embed(&ids)?;
        let mut inputs = Vec::with_capacity(model.num_layers());
        for i in 0..model.num_layers() {
            inputs.push(x.clone());
            // A cache of its own per layer: a shared one would keep every layer's keys and
            // values, graph and all, alive until the end of the pass.
            let mut cache = KvCache::new(model.num_layers(), pads.clone());
            x = cut(&model.layer_forward(i, &x, &shared, &mut cache)?)?;
        }
        let hidden = model.final_norm(&x)?;
        let pass = CheckpointedPass {
            pads,
            shared,
            inputs,
            last: x,
        };
        Ok((pass, hidden))
    }

    /// The last layer's output, whose gradient (from the backward pass of what follows)
    /// [`CheckpointedPass::backward`] takes.
    pub fn last(&self) -> &Tensor {
        &self.last
    }

    /// Backpropagates `grad` (of the last layer's output) down the layers, last first, each
    /// recomputed from its saved input; `add` receives each layer's gradients (its
    /// parameters', and the embeddings' with layer 0).
    pub fn backward<E: From<ModelError>>(
        self,
        model: &Transformer,
        grad: Tensor,
        mut add: impl FnMut(GradStore) -> std::result::Result<(), E>,
    ) -> std::result::Result<(), E> {
        let mut grad = grad;
        for (i, x) in self.inputs.iter().enumerate().rev() {
            let mut cache = KvCache::new(model.num_layers(), self.pads.clone());
            let y = model.layer_forward(i, x, &self.shared, &mut cache)?;
            if !y.track_op() {
                // Nothing at or below this layer trains.
                break;
            }
            // d/dy sum(y * grad) = grad exactly: the backward of this sum is the layer's
            // backward with `grad` coming in.
            let mut grads = (y * &grad)
                .and_then(|p| p.sum_all()?.backward())
                .map_err(ModelError::from)?;
            let below = grads.remove(x);
            add(grads)?;
            match below {
                Some(g) => grad = g,
                None => break,
            }
        }
        Ok(())
    }
}

/// `y`'s value as a new leaf: a `Var` when `y` tracks a gradient (so the gradient stops and is
/// kept there), else `y` itself.
fn cut(y: &Tensor) -> Result<Tensor> {
    if y.track_op() {
        Ok(Var::from_tensor(&y.detach())?.into_inner())
    } else {
        Ok(y.clone())
    }
}
