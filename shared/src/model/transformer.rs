//! The Llama-family decoder: Llama, Mistral, Qwen2 and Qwen3 differ only in switches read from
//! the config (sliding window, q/k/v biases, q/k norms, rope scaling). One differentiable model
//! serves sampling, teacher forcing, reward scoring and training: built from plain tensors it
//! runs inference; built from `Var`s (train-step) every op records its backward.
//!
//! Batches are left-padded: row r's real tokens occupy the last columns, so a decoding step
//! appends one column for every row. Padding never changes a row's numbers: positions count
//! from the row's first real token and the attention mask hides pad columns.

use candle_core::{DType, Device, Module, Tensor};
use std::f64::consts::PI;

use super::config::{Head, ModelConfig, RopeScaling};
use super::kv_cache::KvCache;
use super::ops;
use super::weights::Weights;
use super::Result;

/// `y = x W^T + b`, optionally with a LoRA adapter `+ scale * (x A^T) B^T`.
#[derive(Clone)]
pub struct Linear {
    pub weight: Tensor,
    pub bias: Option<Tensor>,
    pub lora: Option<LoraAdapter>,
}

/// A low-rank update of a frozen linear layer (Hu et al. 2021), in PEFT's layout:
/// `lora_A` (r, in), `lora_B` (out, r), scaled by alpha / r.
#[derive(Clone)]
pub struct LoraAdapter {
    pub a: Tensor,
    pub b: Tensor,
    pub scale: f64,
}

impl Linear {
    fn load(w: &Weights, prefix: &str, out_dim: usize, in_dim: usize, bias: bool) -> Result<Self> {
        let weight = w.get(&format!("{prefix}.weight"), &[out_dim, in_dim])?;
        let bias = if bias {
            Some(w.get(&format!("{prefix}.bias"), &[out_dim])?)
        } else {
            None
        };
        Ok(Linear {
            weight,
            bias,
            lora: None,
        })
    }
}

impl Module for Linear {
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        // A frozen weight (LoRA's base) gets no gradient computed.
        let mut y = match super::fused::frozen_linear_t(x, &self.weight)? {
            Some(y) => y,
            None => ops::linear_t(x, &self.weight)?,
        };
        if let Some(b) = &self.bias {
            y = y.broadcast_add(b)?;
        }
        if let Some(lora) = &self.lora {
            let delta = ops::linear_t(&ops::linear_t(x, &lora.a)?, &lora.b)?;
            y = (y + (delta * lora.scale)?)?;
        }
        Ok(y)
    }
}

#[derive(Clone)]
struct RmsNorm {
    weight: Tensor,
    eps: f64,
}

impl RmsNorm {
    fn load(w: &Weights, name: &str, dim: usize, eps: f64) -> Result<Self> {
        Ok(RmsNorm {
            weight: w.get(&format!("{name}.weight"), &[dim])?,
            eps,
        })
    }
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        ops::rms_norm(x, &self.weight, self.eps)
    }
}

/// Rotary position embedding (Su et al.): inverse frequencies, with the config's scaling.
#[derive(Clone)]
struct Rotary {
    inv_freq: Vec<f64>,
    position_scale: f64,
}

impl Rotary {
    fn new(cfg: &ModelConfig) -> Self {
        let d = cfg.head_dim;
        let mut inv_freq: Vec<f64> = (0..d / 2)
            .map(|i| 1.0 / cfg.rope_theta.powf(2.0 * i as f64 / d as f64))
            .collect();
        let mut position_scale = 1.0;
        match cfg.rope_scaling {
            RopeScaling::None => {}
            RopeScaling::Linear { factor } => position_scale = 1.0 / factor,
            RopeScaling::Llama3 {
                factor,
                low_freq_factor,
                high_freq_factor,
                original_max_position_embeddings,
            } => {
                // Llama 3.1: long wavelengths are slowed by `factor`, short ones kept, and the
                // band between is interpolated smoothly.
                let old = original_max_position_embeddings as f64;
                let low_freq_wavelen = old / low_freq_factor;
                let high_freq_wavelen = old / high_freq_factor;
                for f in inv_freq.iter_mut() {
                    let wavelen = 2.0 * PI / *f;
                    if wavelen > low_freq_wavelen {
                        *f /= factor;
                    } else if wavelen >= high_freq_wavelen {
                        let smooth = (old / wavelen - low_freq_factor)
                            / (high_freq_factor - low_freq_factor);
                        *f = (1.0 - smooth) * *f / factor + smooth * *f;
                    }
                }
            }
        }
        Rotary {
            inv_freq,
            position_scale,
        }
    }

    /// cos and sin for every (row, column) position: (batch, seq, head_dim / 2), computed in f64.
    fn cos_sin(
        &self,
        positions: &[Vec<u32>],
        dtype: DType,
        dev: &Device,
    ) -> Result<(Tensor, Tensor)> {
        let (b, t, h) = (positions.len(), positions[0].len(), self.inv_freq.len());
        let mut cos = Vec::with_capacity(b * t * h);
        let mut sin = Vec::with_capacity(b * t * h);
        for row in positions {
            for &p in row {
                let p = p as f64 * self.position_scale;
                for f in &self.inv_freq {
                    let (s, c) = (p * f).sin_cos();
                    cos.push(c as f32);
                    sin.push(s as f32);
                }
            }
        }
        let cos = Tensor::from_vec(cos, (b, t, h), dev)?.to_dtype(dtype)?;
        let sin = Tensor::from_vec(sin, (b, t, h), dev)?.to_dtype(dtype)?;
        Ok((cos, sin))
    }
}

#[derive(Clone)]
struct Attention {
    q_proj: Linear,
    k_proj: Linear,
    v_proj: Linear,
    o_proj: Linear,
    q_norm: Option<RmsNorm>,
    k_norm: Option<RmsNorm>,
    num_heads: usize,
    num_kv_heads: usize,
    head_dim: usize,
}

impl Attention {
    fn load(w: &Weights, p: &str, cfg: &ModelConfig) -> Result<Self> {
        let (h, d) = (cfg.hidden_size, cfg.head_dim);
        let (nh, nkv) = (cfg.num_attention_heads, cfg.num_key_value_heads);
        let norm = |n: &str| RmsNorm::load(w, &format!("{p}.{n}"), d, cfg.rms_norm_eps);
        Ok(Attention {
            q_proj: Linear::load(w, &format!("{p}.q_proj"), nh * d, h, cfg.qkv_bias)?,
            k_proj: Linear::load(w, &format!("{p}.k_proj"), nkv * d, h, cfg.qkv_bias)?,
            v_proj: Linear::load(w, &format!("{p}.v_proj"), nkv * d, h, cfg.qkv_bias)?,
            o_proj: Linear::load(w, &format!("{p}.o_proj"), h, nh * d, cfg.o_bias)?,
            q_norm: cfg.qk_norm.then(|| norm("q_norm")).transpose()?,
            k_norm: cfg.qk_norm.then(|| norm("k_norm")).transpose()?,
            num_heads: nh,
            num_kv_heads: nkv,
            head_dim: d,
        })
    }

    /// `x`: (b, t, hidden); `mask`: additive (b, 1, t, past + t); `layer`: this layer's index
    /// in `cache`; returns (b, t, hidden).
    #[allow(clippy::too_many_arguments)]
    fn forward(
        &self,
        x: &Tensor,
        cos: &Tensor,
        sin: &Tensor,
        mask: &Tensor,
        pads: &[usize],
        window: Option<usize>,
        cache: &mut KvCache,
        layer: usize,
    ) -> Result<Tensor> {
        let (b, t, _) = x.dims3()?;
        let d = self.head_dim;
        let q = self.q_proj.forward(x)?.reshape((b, t, self.num_heads, d))?;
        let k = self
            .k_proj
            .forward(x)?
            .reshape((b, t, self.num_kv_heads, d))?;
        let v = self
            .v_proj
            .forward(x)?
            .reshape((b, t, self.num_kv_heads, d))?;
        // Qwen3 normalises each head's query and key before rotation.
        let q = match &self.q_norm {
            Some(n) => n.forward(&q)?,
            None => q,
        };
        let k = match &self.k_norm {
            Some(n) => n.forward(&k)?,
            None => k,
        };
        let q = ops::rope(&q.transpose(1, 2)?.contiguous()?, cos, sin)?;
        let k = ops::rope(&k.transpose(1, 2)?.contiguous()?, cos, sin)?;
        let v = v.transpose(1, 2)?.contiguous()?;

        let (k, v) = cache.append(layer, &k, &v)?;

        let n_rep = self.num_heads / self.num_kv_heads;
        let scale = 1.0 / (d as f64).sqrt();
        let y = if t == 1 && !q.track_op() {
            self.decode_step(&q, &k, &v, mask, pads, window, scale)?
        } else {
            // Grouped-query attention: each key/value head serves `n_rep` query heads.
            let k = repeat_kv(&k, n_rep)?;
            let v = repeat_kv(&v, n_rep)?;
            // Scores and softmax in f32 at least, whatever the model dtype.
            let scores = (q.matmul(&k.t()?)? * scale)?;
            let wide = ops::at_least_f32(scores.dtype());
            let scores = scores
                .to_dtype(wide)?
                .broadcast_add(&mask.to_dtype(wide)?)?;
            let probs = ops::softmax_last_dim(&scores)?.to_dtype(v.dtype())?;
            probs.matmul(&v)?
        };
        let y = y.transpose(1, 2)?.reshape((b, t, self.num_heads * d))?;
        Ok(self.o_proj.forward(&y)?)
    }
}

impl Attention {
    /// One decoding column: `q` (b, heads, 1, d) against the cache's keys and values (b,
    /// kv_heads, past + 1, d), which may be views of its preallocated buffers. Each key/value head
    /// serves its `n_rep` query heads as one (n_rep, d) block, so nothing cache-sized is copied.
    /// On the CPU each row attends over exactly its own real (and in-window) columns, so its
    /// numbers are those it gets alone, whatever else is in the batch (in f32 in one kernel,
    /// `decode_attention.rs`); elsewhere the batch runs as one masked product, which keeps a
    /// GPU busy.
    #[allow(clippy::too_many_arguments)]
    fn decode_step(
        &self,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        mask: &Tensor,
        pads: &[usize],
        window: Option<usize>,
        scale: f64,
    ) -> Result<Tensor> {
        let (b, _, _, d) = q.dims4()?;
        let groups = |x: &Tensor, rows: usize| {
            x.reshape((
                rows,
                self.num_kv_heads,
                self.num_heads / self.num_kv_heads,
                d,
            ))
        };
        let attend =
            |q: &Tensor, k: &Tensor, v: &Tensor, mask: Option<&Tensor>| -> Result<Tensor> {
                let scores = (q.matmul(&k.t()?)? * scale)?;
                let wide = ops::at_least_f32(scores.dtype());
                let mut scores = scores.to_dtype(wide)?;
                if let Some(m) = mask {
                    scores = scores.broadcast_add(&m.to_dtype(wide)?)?;
                }
                let probs = ops::softmax_last_dim(&scores)?.to_dtype(v.dtype())?;
                Ok(probs.matmul(v)?)
            };
        if !q.device().is_cpu() {
            let y = attend(&groups(q, b)?, k, v, Some(mask))?;
            return Ok(y.reshape((b, self.num_heads, 1, d))?);
        }
        let total = k.dim(2)?;
        let starts: Vec<usize> = pads
            .iter()
            .map(|&pad| match window {
                Some(w) => pad.max(total.saturating_sub(w)),
                None => pad,
            })
            .collect();
        if let Some(y) = super::decode_attention::decode_attention(q, k, v, starts.clone(), scale)?
        {
            return Ok(y);
        }
        let mut rows = Vec::with_capacity(b);
        for (r, &start) in starts.iter().enumerate() {
            let kr = k.narrow(0, r, 1)?.narrow(2, start, total - start)?;
            let vr = v.narrow(0, r, 1)?.narrow(2, start, total - start)?;
            let y = attend(&groups(&q.narrow(0, r, 1)?, 1)?, &kr, &vr, None)?;
            rows.push(y.reshape((1, self.num_heads, 1, d))?);
        }
        Ok(Tensor::cat(&rows, 0)?)
    }
}

fn repeat_kv(x: &Tensor, n_rep: usize) -> Result<Tensor> {
    if n_rep == 1 {
        return Ok(x.clone());
    }
    let (b, n_kv, t, d) = x.dims4()?;
    Ok(x.unsqueeze(2)?
        .broadcast_as((b, n_kv, n_rep, t, d))?
        .reshape((b, n_kv * n_rep, t, d))?)
}

#[derive(Clone)]
struct Mlp {
    gate_proj: Linear,
    up_proj: Linear,
    down_proj: Linear,
}

impl Mlp {
    fn load(w: &Weights, p: &str, cfg: &ModelConfig) -> Result<Self> {
        let (h, i, bias) = (cfg.hidden_size, cfg.intermediate_size, cfg.mlp_bias);
        Ok(Mlp {
            gate_proj: Linear::load(w, &format!("{p}.gate_proj"), i, h, bias)?,
            up_proj: Linear::load(w, &format!("{p}.up_proj"), i, h, bias)?,
            down_proj: Linear::load(w, &format!("{p}.down_proj"), h, i, bias)?,
        })
    }

    /// SwiGLU: down(silu(gate(x)) * up(x)).
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let (gate, up) = (self.gate_proj.forward(x)?, self.up_proj.forward(x)?);
        let gated = match super::fused::silu_mul(&gate, &up)? {
            Some(y) => y,
            None => (gate.silu()? * up)?,
        };
        Ok(self.down_proj.forward(&gated)?)
    }
}

#[derive(Clone)]
struct DecoderLayer {
    input_layernorm: RmsNorm,
    self_attn: Attention,
    post_attention_layernorm: RmsNorm,
    mlp: Mlp,
    sliding_window: Option<usize>,
}

impl DecoderLayer {
    fn load(w: &Weights, i: usize, cfg: &ModelConfig) -> Result<Self> {
        let p = format!("model.layers.{i}");
        let (h, eps) = (cfg.hidden_size, cfg.rms_norm_eps);
        Ok(DecoderLayer {
            input_layernorm: RmsNorm::load(w, &format!("{p}.input_layernorm"), h, eps)?,
            self_attn: Attention::load(w, &format!("{p}.self_attn"), cfg)?,
            post_attention_layernorm: RmsNorm::load(
                w,
                &format!("{p}.post_attention_layernorm"),
                h,
                eps,
            )?,
            mlp: Mlp::load(w, &format!("{p}.mlp"), cfg)?,
            sliding_window: cfg.sliding_window.get(i).copied().flatten(),
        })
    }
}

/// What every decoder layer of one forward pass shares: the rotary angles of each position,
/// each row's left padding and the attention mask of each sliding window.
pub(crate) struct LayerShared {
    cos: Tensor,
    sin: Tensor,
    pads: Vec<usize>,
    masks: Vec<(Option<usize>, Tensor)>,
}

/// The decoder stack with its head.
#[derive(Clone)]
pub struct Transformer {
    pub cfg: ModelConfig,
    embed_tokens: Tensor,
    layers: Vec<DecoderLayer>,
    norm: RmsNorm,
    /// The vocabulary projection; None when tied to `embed_tokens`.
    lm_head: Option<Linear>,
    /// `*ForSequenceClassification`: (num_labels, hidden).
    score: Option<Linear>,
    rotary: Rotary,
}

impl Transformer {
    pub fn new(cfg: ModelConfig, w: &Weights) -> Result<Self> {
        let (v, h) = (cfg.vocab_size, cfg.hidden_size);
        let embed_tokens = w.get("model.embed_tokens.weight", &[v, h])?;
        let layers = (0..cfg.num_hidden_layers)
            .map(|i| DecoderLayer::load(w, i, &cfg))
            .collect::<Result<Vec<_>>>()?;
        let norm = RmsNorm::load(w, "model.norm", h, cfg.rms_norm_eps)?;
        let (lm_head, score) = match cfg.head {
            Head::CausalLm => {
                // transformers ties the head when asked, and a checkpoint saved with tying may
                // omit `lm_head.weight`.
                let tied = cfg.tie_word_embeddings || !w.contains("lm_head.weight");
                let lm_head = (!tied)
                    .then(|| Linear::load(w, "lm_head", v, h, false))
                    .transpose()?;
                (lm_head, None)
            }
            Head::SequenceClassification { num_labels } => {
                (None, Some(Linear::load(w, "score", num_labels, h, false)?))
            }
        };
        let rotary = Rotary::new(&cfg);
        Ok(Transformer {
            cfg,
            embed_tokens,
            layers,
            norm,
            lm_head,
            score,
            rotary,
        })
    }

    pub fn device(&self) -> &Device {
        self.embed_tokens.device()
    }

    pub fn dtype(&self) -> DType {
        self.embed_tokens.dtype()
    }

    /// Runs `input_ids` (b, t) as the next columns after what `cache` holds and returns the
    /// final-normed hidden states (b, t, hidden). The cache's left padding says where each
    /// row's real tokens start.
    pub fn forward_hidden(&self, input_ids: &Tensor, cache: &mut KvCache) -> Result<Tensor> {
        let t = input_ids.dim(1)?;
        let shared = self.layer_shared(input_ids, cache)?;
        let mut x = self.embed(input_ids)?;
        for i in 0..self.layers.len() {
            x = self.layer_forward(i, &x, &shared, cache)?;
        }
        cache.advance(t);
        self.final_norm(&x)
    }

    /// What every layer of the pass that runs `input_ids` after `cache`'s columns shares.
    pub(crate) fn layer_shared(&self, input_ids: &Tensor, cache: &KvCache) -> Result<LayerShared> {
        let (b, t) = input_ids.dims2()?;
        let past = cache.len();
        let total = past + t;
        if total - cache.min_pad() > self.cfg.max_position_embeddings {
            return Err(super::ModelError::TooLong {
                found: total - cache.min_pad(),
                limit: self.cfg.max_position_embeddings,
            });
        }
        let positions: Vec<Vec<u32>> = (0..b)
            .map(|r| {
                (past..total)
                    .map(|c| c.saturating_sub(cache.pad(r)) as u32)
                    .collect()
            })
            .collect();
        let (cos, sin) = self
            .rotary
            .cos_sin(&positions, self.dtype(), self.device())?;
        let pads: Vec<usize> = (0..b).map(|r| cache.pad(r)).collect();
        // One mask per distinct sliding window, in the order the layers first need them.
        let mut masks: Vec<(Option<usize>, Tensor)> = Vec::new();
        for layer in &self.layers {
            if !masks.iter().any(|(w, _)| *w == layer.sliding_window) {
                let m = cache.attention_mask(t, layer.sliding_window, self.device())?;
                masks.push((layer.sliding_window, m));
            }
        }
        Ok(LayerShared {
            cos,
            sin,
            pads,
            masks,
        })
    }

    /// The token embeddings of `input_ids` (b, t) -> (b, t, hidden).
    pub(crate) fn embed(&self, input_ids: &Tensor) -> Result<Tensor> {
        let (b, t) = input_ids.dims2()?;
        Ok(self
            .embed_tokens
            .index_select(&input_ids.flatten_all()?, 0)?
            .reshape((b, t, self.cfg.hidden_size))?)
    }

    /// Decoder layer `i` on its input `x` (b, t, hidden), its keys and values appended to `cache`.
    pub(crate) fn layer_forward(
        &self,
        i: usize,
        x: &Tensor,
        shared: &LayerShared,
        cache: &mut KvCache,
    ) -> Result<Tensor> {
        let layer = &self.layers[i];
        let mask = shared
            .masks
            .iter()
            .find(|(w, _)| *w == layer.sliding_window)
            .map(|(_, m)| m)
            .expect("layer_shared makes every layer's mask");
        let h = layer.input_layernorm.forward(x)?;
        let h = layer.self_attn.forward(
            &h,
            &shared.cos,
            &shared.sin,
            mask,
            &shared.pads,
            layer.sliding_window,
            cache,
            i,
        )?;
        let x1 = (x + h)?;
        let h = layer.post_attention_layernorm.forward(&x1)?;
        Ok((&x1 + layer.mlp.forward(&h)?)?)
    }

    /// The norm after the last layer.
    pub(crate) fn final_norm(&self, x: &Tensor) -> Result<Tensor> {
        Ok(self.norm.forward(x)?)
    }

    pub(crate) fn num_layers(&self) -> usize {
        self.layers.len()
    }

    /// The weight of the vocabulary projection (vocab, hidden).
    pub fn lm_head_weight(&self) -> &Tensor {
        match &self.lm_head {
            Some(l) => &l.weight,
            None => &self.embed_tokens,
        }
    }

    /// Vocabulary logits for hidden states (..., hidden) -> (..., vocab).
    pub fn logits(&self, hidden: &Tensor) -> Result<Tensor> {
        if let Some(y) = super::fused::frozen_linear_t(hidden, self.lm_head_weight())? {
            return Ok(y);
        }
        Ok(ops::linear_t(hidden, self.lm_head_weight())?)
    }

    /// Reward-model scores (b, num_labels) from the hidden state at each row's last column,
    /// which with left padding is the last real token.
    pub fn score_head(&self, hidden: &Tensor) -> Result<Tensor> {
        let score = self
            .score
            .as_ref()
            .ok_or_else(|| super::ModelError::Config {
                path: "config.json".into(),
                message: "this model has no `score` head (not a *ForSequenceClassification)".into(),
            })?;
        let t = hidden.dim(1)?;
        let last = hidden.narrow(1, t - 1, 1)?.squeeze(1)?;
        Ok(score.forward(&last)?)
    }

    /// Every trainable tensor with its checkpoint name, in a stable order.
    pub fn named_tensors(&self) -> Vec<(String, Tensor)> {
        let mut out = vec![(
            "model.embed_tokens.weight".into(),
            self.embed_tokens.clone(),
        )];
        let lin = |out: &mut Vec<(String, Tensor)>, p: String, l: &Linear| {
            out.push((format!("{p}.weight"), l.weight.clone()));
            if let Some(b) = &l.bias {
                out.push((format!("{p}.bias"), b.clone()));
            }
        };
        for (i, layer) in self.layers.iter().enumerate() {
            let p = format!("model.layers.{i}");
            let a = &layer.self_attn;
            out.push((
                format!("{p}.input_layernorm.weight"),
                layer.input_layernorm.weight.clone(),
            ));
            for (n, l) in [
                ("q_proj", &a.q_proj),
                ("k_proj", &a.k_proj),
                ("v_proj", &a.v_proj),
                ("o_proj", &a.o_proj),
            ] {
                lin(&mut out, format!("{p}.self_attn.{n}"), l);
            }
            if let (Some(qn), Some(kn)) = (&a.q_norm, &a.k_norm) {
                out.push((format!("{p}.self_attn.q_norm.weight"), qn.weight.clone()));
                out.push((format!("{p}.self_attn.k_norm.weight"), kn.weight.clone()));
            }
            out.push((
                format!("{p}.post_attention_layernorm.weight"),
                layer.post_attention_layernorm.weight.clone(),
            ));
            let m = &layer.mlp;
            for (n, l) in [
                ("gate_proj", &m.gate_proj),
                ("up_proj", &m.up_proj),
                ("down_proj", &m.down_proj),
            ] {
                lin(&mut out, format!("{p}.mlp.{n}"), l);
            }
        }
        out.push(("model.norm.weight".into(), self.norm.weight.clone()));
        if let Some(l) = &self.lm_head {
            out.push(("lm_head.weight".into(), l.weight.clone()));
        }
        if let Some(l) = &self.score {
            out.push(("score.weight".into(), l.weight.clone()));
        }
        out
    }

    /// The linear layers whose suffix (e.g. `q_proj`) is in `targets`, for LoRA.
    pub fn linear_layers_mut(&mut self, targets: &[String]) -> Vec<(String, &mut Linear)> {
        let mut out = Vec::new();
        for (i, layer) in self.layers.iter_mut().enumerate() {
            let p = format!("model.layers.{i}");
            let a = &mut layer.self_attn;
            let m = &mut layer.mlp;
            let all: [(String, &mut Linear); 7] = [
                (format!("{p}.self_attn.q_proj"), &mut a.q_proj),
                (format!("{p}.self_attn.k_proj"), &mut a.k_proj),
                (format!("{p}.self_attn.v_proj"), &mut a.v_proj),
                (format!("{p}.self_attn.o_proj"), &mut a.o_proj),
                (format!("{p}.mlp.gate_proj"), &mut m.gate_proj),
                (format!("{p}.mlp.up_proj"), &mut m.up_proj),
                (format!("{p}.mlp.down_proj"), &mut m.down_proj),
            ];
            for (name, l) in all {
                if targets.iter().any(|t| name.ends_with(&format!(".{t}"))) {
                    out.push((name, l));
                }
            }
        }
        out
    }
}
