//! The DeBERTa-v2/v3 encoder (He et al., arXiv 2006.03654 and 2111.09543), inference only, as
//! transformers' `modeling_deberta_v2.py` computes it. PairRM's encoder is a DeBERTa-v3-large.
//!
//! What sets it apart from BERT is disentangled attention. Tokens carry only content (no absolute
//! position is added to the input when `position_biased_input` is false); positions enter every
//! layer's attention through embeddings of the relative distance `delta(i, j) = i - j`, shared
//! by all layers and bucketed log-linearly beyond `position_buckets / 2`. Query i's score on
//! key j is
//!
//! ```text
//! ( q_i . k_j                                     content to content
//! + q_i . Kr[clamp(span + delta(i, j))]           c2p: query content to the key's relative position
//! + k_j . Qr[clamp(span - delta(j, i))] )         p2c: key content to the query's relative position
//! / sqrt(head_dim * (1 + #{c2p, p2c}))
//! ```
//!
//! where `Kr`, `Qr` are the relative embeddings (layer-normed once when `norm_rel_ebd` says
//! `layer_norm`) projected by the layer's key and query projections (`share_att_key`, as in v3)
//! or by their own `pos_key_proj` / `pos_query_proj`.
//!
//! Layout here: heads come first, `(heads, batch, seq, head_dim)`, so the relative terms are
//! plain batched matmuls against a `(heads, head_dim, 2 * span)` table: every token's score
//! against every relative embedding. Each (i, j) then reads its bucket's column; on the CPU one
//! fused pass per query row does that, the scaling, the padding mask and the softmax
//! ([`DisentangledSoftmax`]); elsewhere `index_select` and tensor ops do the same.

use candle_core::{DType, Device, Module, Tensor};
use candle_nn::LayerNorm;
use serde::{Deserialize, Deserializer};

use crate::model::{ModelError, Weights};

/// The encoder's part of a DeBERTa-v2 `config.json`, with transformers' defaults.
#[derive(Debug, Clone, Deserialize)]
pub struct DebertaV2Config {
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub intermediate_size: usize,
    #[serde(default = "default_hidden_act")]
    pub hidden_act: String,
    #[serde(default)]
    pub attention_head_size: Option<usize>,
    #[serde(default)]
    pub embedding_size: Option<usize>,
    #[serde(default = "default_layer_norm_eps")]
    pub layer_norm_eps: f64,
    #[serde(default = "default_max_position_embeddings")]
    pub max_position_embeddings: usize,
    #[serde(default)]
    pub type_vocab_size: usize,
    #[serde(default = "default_true")]
    pub position_biased_input: bool,
    #[serde(default)]
    pub relative_attention: bool,
    #[serde(default = "default_minus_one")]
    pub max_relative_positions: i64,
    #[serde(default = "default_minus_one")]
    pub position_buckets: i64,
    /// `"p2c|c2p"` or `["p2c", "c2p"]`.
    #[serde(default, deserialize_with = "pos_att_type")]
    pub pos_att_type: Vec<String>,
    #[serde(default)]
    pub share_att_key: bool,
    #[serde(default = "default_norm_rel_ebd")]
    pub norm_rel_ebd: String,
    #[serde(default)]
    pub conv_kernel_size: usize,
    #[serde(default)]
    pub pad_token_id: Option<u32>,
}

fn default_hidden_act() -> String {
    "gelu".into()
}
fn default_layer_norm_eps() -> f64 {
    1e-7
}
fn default_max_position_embeddings() -> usize {
    512
}
fn default_true() -> bool {
    true
}
fn default_minus_one() -> i64 {
    -1
}
fn default_norm_rel_ebd() -> String {
    "none".into()
}

fn pos_att_type<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum OneOrMany {
        One(String),
        Many(Vec<String>),
    }
    Ok(match Option::<OneOrMany>::deserialize(d)? {
        None => Vec::new(),
        Some(OneOrMany::One(s)) => s.split('|').map(|x| x.trim().to_lowercase()).collect(),
        Some(OneOrMany::Many(v)) => v.into_iter().map(|x| x.trim().to_lowercase()).collect(),
    })
}

impl DebertaV2Config {
    fn has(&self, kind: &str) -> bool {
        self.pos_att_type.iter().any(|t| t == kind)
    }

    /// The relative-position settings as the attention uses them: a `max_relative_positions`
    /// below 1 means `max_position_embeddings`, and the embedding table spans
    /// `2 * position_buckets` rows when bucketing is on.
    fn relative(&self) -> Option<RelativeGeometry> {
        if !self.relative_attention {
            return None;
        }
        let max_relative_positions = if self.max_relative_positions < 1 {
            self.max_position_embeddings as i64
        } else {
            self.max_relative_positions
        };
        let span = if self.position_buckets > 0 {
            self.position_buckets
        } else {
            max_relative_positions
        };
        Some(RelativeGeometry {
            buckets: self.position_buckets,
            max_relative_positions,
            span,
        })
    }
}

/// A config setting this encoder does not implement, named with the checkpoint's config file.
fn unsupported(w: &Weights, message: String) -> ModelError {
    ModelError::Config {
        path: w.source().join("config.json"),
        message,
    }
}

// ---------------------------------------------------------------------------------------------
// Relative positions

#[derive(Debug, Clone, Copy)]
struct RelativeGeometry {
    /// `position_buckets`; bucketing is off when it is not positive.
    buckets: i64,
    max_relative_positions: i64,
    /// Half the rows of the relative embedding table (`pos_ebd_size`).
    span: i64,
}

/// transformers' `make_log_bucket_position` for one distance: exact within `mid = buckets / 2`,
/// log-spaced beyond. In f32, as torch computes it (for PairRM's 256 / 512 and the fixture's
/// 64 / 512, f32 and f64 give the same buckets; the nearest call is 3e-5 from an integer).
pub fn log_bucket_position(relative: i64, buckets: i64, max_position: i64) -> i64 {
    let mid = buckets / 2;
    let abs_pos = if relative < mid && relative > -mid {
        mid - 1
    } else {
        relative.abs()
    };
    if abs_pos <= mid {
        return relative;
    }
    let denominator = (((max_position - 1) as f64 / mid as f64) as f32).ln();
    let log_pos =
        ((abs_pos as f32 / mid as f32).ln() / denominator * (mid - 1) as f32).ceil() + mid as f32;
    log_pos as i64 * relative.signum()
}

impl RelativeGeometry {
    /// `build_relative_position(q, k)[i][j]`: the (bucketed) distance `i - j`.
    fn delta(&self, i: usize, j: usize) -> i64 {
        let relative = i as i64 - j as i64;
        if self.buckets > 0 && self.max_relative_positions > 0 {
            log_bucket_position(relative, self.buckets, self.max_relative_positions)
        } else {
            relative
        }
    }

    /// Which column of the `(seq, 2 * span)` c2p and p2c tables each (query i, key j) reads:
    /// query i's row at `span + delta(i, j)` and key j's row at `span - delta(j, i)`, clamped.
    fn columns(&self, len: usize) -> RelativeColumns {
        let width = 2 * self.span;
        let mut c2p = Vec::with_capacity(len * len);
        let mut p2c = Vec::with_capacity(len * len);
        for i in 0..len {
            for j in 0..len {
                c2p.push((self.delta(i, j) + self.span).clamp(0, width - 1) as u32);
                p2c.push((self.span - self.delta(j, i)).clamp(0, width - 1) as u32);
            }
        }
        RelativeColumns {
            len,
            width: width as usize,
            c2p,
            p2c,
        }
    }
}

/// Entry `i * len + j`: the table column that (query i, key j) reads.
struct RelativeColumns {
    len: usize,
    width: usize,
    c2p: Vec<u32>,
    p2c: Vec<u32>,
}

impl RelativeColumns {
    /// The same choice as flat indices into `(seq * 2 span)` rows, for `index_select`: c2p reads
    /// query i's row, p2c key j's row.
    fn flat(&self, device: &Device) -> candle_core::Result<(Tensor, Tensor)> {
        let (l, w) = (self.len, self.width as u32);
        let c2p: Vec<u32> = (0..l * l)
            .map(|n| (n / l) as u32 * w + self.c2p[n])
            .collect();
        let p2c: Vec<u32> = (0..l * l)
            .map(|n| (n % l) as u32 * w + self.p2c[n])
            .collect();
        Ok((
            Tensor::from_vec(c2p, l * l, device)?,
            Tensor::from_vec(p2c, l * l, device)?,
        ))
    }
}

/// What the attention needs about relative positions for one batch.
struct RelativeIndices {
    columns: RelativeColumns,
    /// `index_select` indices, only where the fused CPU kernel does not run.
    flat: Option<(Tensor, Tensor)>,
}

/// One pass per query row on the CPU: the content scores plus the c2p and p2c entries each key
/// reads, scaled, padding keys dropped, softmax. The tensor-op route (two `index_select`s, four
/// elementwise passes and a softmax over heads x batch x len^2, each single-threaded) took half
/// of a layer's time.
struct DisentangledSoftmax<'a> {
    columns: &'a RelativeColumns,
    /// Real tokens per batch row; keys at or past it are padding.
    lens: &'a [usize],
    use_c2p: bool,
    use_p2c: bool,
    scale: f32,
}

impl candle_core::CustomOp3 for DisentangledSoftmax<'_> {
    fn name(&self) -> &'static str {
        "deberta-disentangled-softmax"
    }

    /// `content` (heads * batch, len, len), `c2p` and `p2c` (heads * batch, len, 2 span); a term
    /// that is switched off passes `content` as a stand-in.
    fn cpu_fwd(
        &self,
        s1: &candle_core::CpuStorage,
        l1: &candle_core::Layout,
        s2: &candle_core::CpuStorage,
        l2: &candle_core::Layout,
        s3: &candle_core::CpuStorage,
        l3: &candle_core::Layout,
    ) -> candle_core::Result<(candle_core::CpuStorage, candle_core::Shape)> {
        use rayon::prelude::*;
        fn f32s<'s>(
            s: &'s candle_core::CpuStorage,
            l: &candle_core::Layout,
        ) -> candle_core::Result<&'s [f32]> {
            match (s, l.contiguous_offsets()) {
                (candle_core::CpuStorage::F32(v), Some((a, b))) => Ok(&v[a..b]),
                _ => candle_core::bail!("disentangled softmax expects contiguous f32 inputs"),
            }
        }
        let (content, c2p, p2c) = (f32s(s1, l1)?, f32s(s2, l2)?, f32s(s3, l3)?);
        let (l, w) = (self.columns.len, self.columns.width);
        let batch = self.lens.len();
        let rows = content.len() / l.max(1);
        let table_ok = |t: &[f32], used: bool| !used || t.len() == rows * w;
        if batch == 0
            || content.len() != rows * l
            || rows % (l * batch) != 0
            || !table_ok(c2p, self.use_c2p)
            || !table_ok(p2c, self.use_p2c)
        {
            candle_core::bail!(
                "disentangled softmax: inputs of {}, {} and {} values do not fit len {l}, \
                 batch {batch}, width {w}",
                content.len(),
                c2p.len(),
                p2c.len()
            );
        }
        let mut out = vec![0f32; rows * l];
        out.par_chunks_mut(l).enumerate().for_each(|(r, probs)| {
            // Row r is (head, batch row b, query i) of the (heads, batch, len) layout.
            let (hb, i) = (r / l, r % l);
            let keys = self.lens[hb % batch].min(l);
            let content = &content[r * l..(r + 1) * l];
            let c2p_row = &c2p[if self.use_c2p { r * w } else { 0 }..];
            let p2c_head = &p2c[if self.use_p2c { hb * l * w } else { 0 }..];
            let c2p_cols = &self.columns.c2p[i * l..(i + 1) * l];
            let p2c_cols = &self.columns.p2c[i * l..(i + 1) * l];
            let mut max = f32::NEG_INFINITY;
            for j in 0..keys {
                let mut s = content[j];
                if self.use_c2p {
                    s += c2p_row[c2p_cols[j] as usize];
                }
                if self.use_p2c {
                    s += p2c_head[j * w + p2c_cols[j] as usize];
                }
                let s = s / self.scale;
                probs[j] = s;
                max = max.max(s);
            }
            let mut sum = 0f32;
            for p in &mut probs[..keys] {
                *p = (*p - max).exp();
                sum += *p;
            }
            for p in &mut probs[..keys] {
                *p /= sum;
            }
            // Padding keys keep probability 0, as after transformers' masked_fill and softmax.
        });
        Ok((
            candle_core::CpuStorage::F32(out),
            candle_core::Shape::from((rows / l, l, l)),
        ))
    }
}

// ---------------------------------------------------------------------------------------------
// Layers

/// `y = x W^T + b` over the last dimension, as one matmul over all rows.
#[derive(Clone)]
struct Dense {
    weight_t: Tensor,
    bias: Option<Tensor>,
}

impl Dense {
    fn load(
        w: &Weights,
        name: &str,
        out_dim: usize,
        in_dim: usize,
        bias: bool,
    ) -> Result<Self, ModelError> {
        let weight = w.get(&format!("{name}.weight"), &[out_dim, in_dim])?;
        let bias = if bias {
            Some(w.get(&format!("{name}.bias"), &[out_dim])?)
        } else {
            None
        };
        Ok(Dense {
            weight_t: weight.t()?.contiguous()?,
            bias,
        })
    }

    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let dims = x.dims().to_vec();
        let in_dim = dims[dims.len() - 1];
        let rows = x.elem_count() / in_dim;
        let y = x.reshape((rows, in_dim))?.matmul(&self.weight_t)?;
        let y = match &self.bias {
            Some(b) => y.broadcast_add(b)?,
            None => y,
        };
        let mut out = dims;
        let last = out.len() - 1;
        out[last] = self.weight_t.dim(1)?;
        y.reshape(out)
    }
}

fn layer_norm(w: &Weights, name: &str, dim: usize, eps: f64) -> Result<LayerNorm, ModelError> {
    Ok(LayerNorm::new(
        w.get(&format!("{name}.weight"), &[dim])?,
        w.get(&format!("{name}.bias"), &[dim])?,
        eps,
    ))
}

#[derive(Debug, Clone, Copy)]
enum Activation {
    GeluErf,
    GeluTanh,
    Relu,
}

impl Activation {
    fn parse(w: &Weights, name: &str) -> Result<Self, ModelError> {
        match name {
            "gelu" => Ok(Activation::GeluErf),
            "gelu_new" | "gelu_pytorch_tanh" | "gelu_fast" => Ok(Activation::GeluTanh),
            "relu" => Ok(Activation::Relu),
            other => Err(unsupported(
                w,
                format!("hidden_act {other:?} is not supported, expected gelu, gelu_new or relu"),
            )),
        }
    }

    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        match self {
            Activation::GeluErf if x.device().is_cpu() && x.dtype() == DType::F32 => {
                x.contiguous()?.apply_op1_no_bwd(&ParallelGeluErf)
            }
            Activation::GeluErf => x.gelu_erf(),
            Activation::GeluTanh => x.gelu(),
            Activation::Relu => x.relu(),
        }
    }
}

/// candle's `gelu_erf`, the same formula and erf, over rayon threads: the feed-forward
/// activation is batch x seq x intermediate erfs, and candle's unary ops run on one thread.
struct ParallelGeluErf;

impl candle_core::CustomOp1 for ParallelGeluErf {
    fn name(&self) -> &'static str {
        "parallel-gelu-erf"
    }

    fn cpu_fwd(
        &self,
        s: &candle_core::CpuStorage,
        l: &candle_core::Layout,
    ) -> candle_core::Result<(candle_core::CpuStorage, candle_core::Shape)> {
        use candle_core::cpu::erf::erf_f32;
        use rayon::prelude::*;
        let x = match (s, l.contiguous_offsets()) {
            (candle_core::CpuStorage::F32(v), Some((a, b))) => &v[a..b],
            _ => candle_core::bail!("parallel gelu expects contiguous f32 input"),
        };
        let mut out = vec![0f32; x.len()];
        out.par_chunks_mut(4096)
            .zip(x.par_chunks(4096))
            .for_each(|(o, x)| {
                for (o, &v) in o.iter_mut().zip(x) {
                    *o = (erf_f32(v * std::f32::consts::FRAC_1_SQRT_2) + 1.) * 0.5 * v;
                }
            });
        Ok((candle_core::CpuStorage::F32(out), l.shape().clone()))
    }
}

/// `DebertaV2Embeddings`: word (+ absolute position) (+ token type 0) embeddings, projected to
/// the hidden size if narrower, layer-normed, and zeroed at padding.
struct Embeddings {
    word: Tensor,
    position: Option<Tensor>,
    token_type_0: Option<Tensor>,
    projection: Option<Dense>,
    norm: LayerNorm,
}

impl Embeddings {
    fn load(w: &Weights, cfg: &DebertaV2Config) -> Result<Self, ModelError> {
        let e = cfg.embedding_size.unwrap_or(cfg.hidden_size);
        let p = "pretrained_model.embeddings";
        let position = if cfg.position_biased_input {
            Some(w.get(
                &format!("{p}.position_embeddings.weight"),
                &[cfg.max_position_embeddings, e],
            )?)
        } else {
            None
        };
        // Nothing passes token type ids, so every token gets type 0.
        let token_type_0 = if cfg.type_vocab_size > 0 {
            Some(
                w.get(
                    &format!("{p}.token_type_embeddings.weight"),
                    &[cfg.type_vocab_size, e],
                )?
                .get(0)?,
            )
        } else {
            None
        };
        let projection = if e != cfg.hidden_size {
            Some(Dense::load(
                w,
                &format!("{p}.embed_proj"),
                cfg.hidden_size,
                e,
                false,
            )?)
        } else {
            None
        };
        Ok(Embeddings {
            word: w.get(&format!("{p}.word_embeddings.weight"), &[cfg.vocab_size, e])?,
            position,
            token_type_0,
            projection,
            norm: layer_norm(
                w,
                &format!("{p}.LayerNorm"),
                cfg.hidden_size,
                cfg.layer_norm_eps,
            )?,
        })
    }

    /// `ids` (batch, seq) u32, `keep` (batch, seq, 1) 1 for tokens and 0 for padding.
    fn forward(&self, ids: &Tensor, keep: &Tensor) -> candle_core::Result<Tensor> {
        let (b, l) = ids.dims2()?;
        let mut x = self.word.index_select(&ids.flatten_all()?, 0)?;
        let e = x.dim(1)?;
        x = x.reshape((b, l, e))?;
        if let Some(position) = &self.position {
            x = x.broadcast_add(&position.narrow(0, 0, l)?)?;
        }
        if let Some(t0) = &self.token_type_0 {
            x = x.broadcast_add(t0)?;
        }
        if let Some(projection) = &self.projection {
            x = projection.forward(&x)?;
        }
        self.norm.forward(&x)?.broadcast_mul(keep)
    }
}

/// `DisentangledSelfAttention` with its output projection and residual norm.
struct Attention {
    query: Dense,
    key: Dense,
    value: Dense,
    /// c2p: the relative embeddings seen as keys, `(heads, head_dim, 2 * span)`; fixed weights,
    /// so projected once at load.
    pos_key_t: Option<Tensor>,
    /// p2c: the relative embeddings seen as queries, same layout.
    pos_query_t: Option<Tensor>,
    heads: usize,
    head_dim: usize,
    scale: f64,
    output: Dense,
    norm: LayerNorm,
}

impl Attention {
    fn load(
        w: &Weights,
        p: &str,
        cfg: &DebertaV2Config,
        rel_embeddings: Option<&Tensor>,
    ) -> Result<Self, ModelError> {
        let (h, heads) = (cfg.hidden_size, cfg.num_attention_heads);
        let head_dim = cfg.attention_head_size.unwrap_or(h / heads);
        let all = heads * head_dim;
        let s = format!("{p}.attention.self");
        let query = Dense::load(w, &format!("{s}.query_proj"), all, h, true)?;
        let key = Dense::load(w, &format!("{s}.key_proj"), all, h, true)?;
        let value = Dense::load(w, &format!("{s}.value_proj"), all, h, true)?;
        // (2 * span, heads * head_dim) -> (heads, head_dim, 2 * span)
        let table = |proj: &Dense, rel: &Tensor| -> candle_core::Result<Tensor> {
            let rows = rel.dim(0)?;
            proj.forward(rel)?
                .reshape((rows, heads, head_dim))?
                .permute((1, 2, 0))?
                .contiguous()
        };
        let (mut pos_key_t, mut pos_query_t) = (None, None);
        if let Some(rel) = rel_embeddings {
            if cfg.has("c2p") {
                pos_key_t = Some(if cfg.share_att_key {
                    table(&key, rel)?
                } else {
                    table(
                        &Dense::load(w, &format!("{s}.pos_key_proj"), all, h, true)?,
                        rel,
                    )?
                });
            }
            if cfg.has("p2c") {
                pos_query_t = Some(if cfg.share_att_key {
                    table(&query, rel)?
                } else {
                    table(
                        &Dense::load(w, &format!("{s}.pos_query_proj"), all, h, true)?,
                        rel,
                    )?
                });
            }
        }
        let scale_factor = 1 + usize::from(cfg.has("c2p")) + usize::from(cfg.has("p2c"));
        let o = format!("{p}.attention.output");
        Ok(Attention {
            query,
            key,
            value,
            pos_key_t,
            pos_query_t,
            heads,
            head_dim,
            scale: ((head_dim * scale_factor) as f64).sqrt(),
            output: Dense::load(w, &format!("{o}.dense"), h, all, true)?,
            norm: layer_norm(w, &format!("{o}.LayerNorm"), h, cfg.layer_norm_eps)?,
        })
    }

    /// `x` (batch, seq, hidden); `mask` (1, batch, 1, seq) additive, 0 at tokens and very
    /// negative at padding keys; `lens` the real tokens of each batch row.
    fn forward(
        &self,
        x: &Tensor,
        mask: &Tensor,
        lens: &[usize],
        rel: Option<&RelativeIndices>,
    ) -> candle_core::Result<Tensor> {
        let (b, l, _) = x.dims3()?;
        let (nh, d) = (self.heads, self.head_dim);
        let split = |t: Tensor| -> candle_core::Result<Tensor> {
            t.reshape((b, l, nh, d))?
                .permute((2, 0, 1, 3))?
                .contiguous()
        };
        let q = split(self.query.forward(x)?)?;
        let k = split(self.key.forward(x)?)?;
        let v = split(self.value.forward(x)?)?;
        let content = q.matmul(&k.t()?)?;
        // (heads, batch * seq, head_dim) x (heads, head_dim, 2 span): every row's score against
        // every relative embedding, (heads * batch, seq, 2 span).
        let table = |x: &Tensor, table: &Option<Tensor>| -> candle_core::Result<Option<Tensor>> {
            table
                .as_ref()
                .map(|t| {
                    x.reshape((nh, b * l, d))?
                        .matmul(t)?
                        .reshape((nh * b, l, t.dim(2)?))
                })
                .transpose()
        };
        let probs = match rel {
            Some(rel) => {
                let c2p = table(&q, &self.pos_key_t)?;
                let p2c = table(&k, &self.pos_query_t)?;
                match &rel.flat {
                    None => {
                        let content = content.reshape((nh * b, l, l))?;
                        let op = DisentangledSoftmax {
                            columns: &rel.columns,
                            lens,
                            use_c2p: c2p.is_some(),
                            use_p2c: p2c.is_some(),
                            scale: self.scale as f32,
                        };
                        content
                            .apply_op3_no_bwd(
                                c2p.as_ref().unwrap_or(&content),
                                p2c.as_ref().unwrap_or(&content),
                                &op,
                            )?
                            .reshape((nh, b, l, l))?
                    }
                    Some((c2p_index, p2c_index)) => {
                        // Each (i, j) picks its bucket from the flattened tables.
                        let pick = |t: Tensor, index: &Tensor| -> candle_core::Result<Tensor> {
                            let w = t.dim(2)?;
                            t.reshape((nh * b, l * w))?
                                .index_select(index, 1)?
                                .reshape((nh, b, l, l))
                        };
                        let mut scores = content;
                        if let Some(t) = c2p {
                            scores = (scores + pick(t, c2p_index)?)?;
                        }
                        if let Some(t) = p2c {
                            scores = (scores + pick(t, p2c_index)?)?;
                        }
                        let scores = (scores / self.scale)?.broadcast_add(mask)?;
                        candle_nn::ops::softmax_last_dim(&scores)?
                    }
                }
            }
            None => {
                let scores = (content / self.scale)?.broadcast_add(mask)?;
                candle_nn::ops::softmax_last_dim(&scores)?
            }
        };
        let context = probs
            .matmul(&v)?
            .permute((1, 2, 0, 3))?
            .reshape((b, l, nh * d))?;
        self.norm.forward(&(self.output.forward(&context)? + x)?)
    }
}

/// `DebertaV2Layer`: attention, then the feed-forward block with its residual norm.
struct Layer {
    attention: Attention,
    intermediate: Dense,
    activation: Activation,
    output: Dense,
    norm: LayerNorm,
}

impl Layer {
    fn forward(
        &self,
        x: &Tensor,
        mask: &Tensor,
        lens: &[usize],
        rel: Option<&RelativeIndices>,
    ) -> candle_core::Result<Tensor> {
        let a = self.attention.forward(x, mask, lens, rel)?;
        let y = self
            .output
            .forward(&self.activation.forward(&self.intermediate.forward(&a)?)?)?;
        self.norm.forward(&(y + a)?)
    }
}

/// `DebertaV2Model` without the enhanced mask decoder: input ids to last hidden states.
/// Weights are read under `pretrained_model.` (llm-blender's name for it).
pub struct DebertaV2Encoder {
    embeddings: Embeddings,
    layers: Vec<Layer>,
    relative: Option<RelativeGeometry>,
    max_position_embeddings: Option<usize>,
    dtype: DType,
    /// f32 on the CPU runs [`DisentangledSoftmax`]; off only to test it against the tensor ops.
    fused_cpu_softmax: bool,
}

impl DebertaV2Encoder {
    pub fn load(w: &Weights, cfg: &DebertaV2Config) -> Result<Self, ModelError> {
        if cfg.conv_kernel_size > 0 {
            return Err(unsupported(w, format!(
                "conv_kernel_size {} (DeBERTa-v2's convolution layer) is not supported, expected 0 as in DeBERTa-v3",
                cfg.conv_kernel_size
            )));
        }
        if cfg.num_attention_heads == 0
            || cfg
                .attention_head_size
                .unwrap_or(cfg.hidden_size / cfg.num_attention_heads)
                * cfg.num_attention_heads
                != cfg.hidden_size
        {
            return Err(unsupported(
                w,
                format!(
                    "num_attention_heads {} does not split hidden_size {} into heads",
                    cfg.num_attention_heads, cfg.hidden_size
                ),
            ));
        }
        let activation = Activation::parse(w, &cfg.hidden_act)?;
        let relative = cfg.relative();
        let p = "pretrained_model.encoder";
        // The relative embeddings are weights, so their layer norm is computed once here.
        let rel_embeddings = match relative {
            Some(g) => {
                let rows = 2 * g.span as usize;
                let table = w.get(
                    &format!("{p}.rel_embeddings.weight"),
                    &[rows, cfg.hidden_size],
                )?;
                let layer_normed = cfg
                    .norm_rel_ebd
                    .to_lowercase()
                    .split('|')
                    .any(|x| x.trim() == "layer_norm");
                Some(if layer_normed {
                    layer_norm(
                        w,
                        &format!("{p}.LayerNorm"),
                        cfg.hidden_size,
                        cfg.layer_norm_eps,
                    )?
                    .forward(&table)?
                } else {
                    table
                })
            }
            None => None,
        };
        let layers = (0..cfg.num_hidden_layers)
            .map(|i| {
                let l = format!("{p}.layer.{i}");
                Ok(Layer {
                    attention: Attention::load(w, &l, cfg, rel_embeddings.as_ref())?,
                    intermediate: Dense::load(
                        w,
                        &format!("{l}.intermediate.dense"),
                        cfg.intermediate_size,
                        cfg.hidden_size,
                        true,
                    )?,
                    activation,
                    output: Dense::load(
                        w,
                        &format!("{l}.output.dense"),
                        cfg.hidden_size,
                        cfg.intermediate_size,
                        true,
                    )?,
                    norm: layer_norm(
                        w,
                        &format!("{l}.output.LayerNorm"),
                        cfg.hidden_size,
                        cfg.layer_norm_eps,
                    )?,
                })
            })
            .collect::<Result<Vec<_>, ModelError>>()?;
        let embeddings = Embeddings::load(w, cfg)?;
        let dtype = embeddings.word.dtype();
        Ok(DebertaV2Encoder {
            embeddings,
            layers,
            relative,
            max_position_embeddings: cfg
                .position_biased_input
                .then_some(cfg.max_position_embeddings),
            dtype,
            fused_cpu_softmax: true,
        })
    }

    /// The longest sequence the encoder takes: absolute position embeddings end at
    /// `max_position_embeddings`; relative positions have no end.
    pub fn max_len(&self) -> Option<usize> {
        self.max_position_embeddings
    }

    /// Last hidden states `(batch, seq, hidden)` of right-padded `ids` `(batch, seq)` u32 whose
    /// rows have `lens` real tokens each.
    pub fn forward(&self, ids: &Tensor, lens: &[usize]) -> candle_core::Result<Tensor> {
        let (b, l) = ids.dims2()?;
        let device = ids.device();
        let keep: Vec<f32> = lens
            .iter()
            .flat_map(|&n| (0..l).map(move |t| if t < n { 1.0 } else { 0.0 }))
            .collect();
        let keep = Tensor::from_vec(keep, (b, l), device)?.to_dtype(self.dtype)?;
        // Padding keys get the lowest finite value, as transformers' masked_fill does: their
        // weight is exactly 0 and a row never turns into NaN. (Padding queries see every key; their
        // outputs are never read.)
        let mask = ((keep.ones_like()? - &keep)? * f64::from(f32::MIN))?.reshape((1, b, 1, l))?;
        let rel = match &self.relative {
            Some(g) => {
                let columns = g.columns(l);
                let fused = self.fused_cpu_softmax && device.is_cpu() && self.dtype == DType::F32;
                let flat = if fused {
                    None
                } else {
                    Some(columns.flat(device)?)
                };
                Some(RelativeIndices { columns, flat })
            }
            None => None,
        };
        let mut x = self.embeddings.forward(ids, &keep.unsqueeze(2)?)?;
        for layer in &self.layers {
            x = layer.forward(&x, &mask, lens, rel.as_ref())?;
        }
        Ok(x)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Hand-computed buckets for PairRM-style 64 / 512 bucketing: exact up to 32, then
    /// `ceil(ln(|d| / 32) / ln(511 / 32) * 31) + 32`, odd in d.
    #[test]
    fn log_buckets() {
        for d in -32..=32 {
            assert_eq!(log_bucket_position(d, 64, 512), d);
        }
        assert_eq!(log_bucket_position(33, 64, 512), 33);
        assert_eq!(log_bucket_position(40, 64, 512), 35);
        assert_eq!(log_bucket_position(-40, 64, 512), -35);
        assert_eq!(log_bucket_position(511, 64, 512), 63);
        assert_eq!(log_bucket_position(-511, 64, 512), -63);
    }

    /// The fused CPU kernel and the tensor-op route give the same hidden states at real tokens,
    /// for every combination of relative terms, shared or separate position projections, and
    /// with buckets small enough that distances are log-bucketed and clamped.
    #[test]
    fn fused_softmax_matches_tensor_ops() {
        let variants = [
            (serde_json::json!(["p2c", "c2p"]), true, true),
            (serde_json::json!("c2p"), false, true),
            (serde_json::json!("p2c"), false, true),
            (serde_json::json!(null), false, false),
        ];
        for (pos_att_type, share_att_key, relative_attention) in variants {
            let config: crate::judge::PairRmConfig = serde_json::from_value(serde_json::json!({
                "vocab_size": 50, "hidden_size": 32, "num_hidden_layers": 2,
                "num_attention_heads": 4, "intermediate_size": 48,
                "relative_attention": relative_attention, "position_buckets": 8,
                "pos_att_type": pos_att_type, "share_att_key": share_att_key,
                "norm_rel_ebd": "layer_norm", "position_biased_input": false,
                "n_tasks": 1, "source_prefix_id": 1, "cand1_prefix_id": 2, "cand2_prefix_id": 3
            }))
            .unwrap();
            let w = crate::judge::random_pairrm_weights(&config, 0.5, &Device::Cpu).unwrap();
            let mut encoder = DebertaV2Encoder::load(&w, &config.encoder).unwrap();
            let lens = [20usize, 13, 7];
            let ids: Vec<u32> = (0..60u32).map(|n| (n * 7 + 3) % 50).collect();
            let ids = Tensor::from_vec(ids, (3, 20), &Device::Cpu).unwrap();
            let fused = encoder.forward(&ids, &lens).unwrap();
            encoder.fused_cpu_softmax = false;
            let ops = encoder.forward(&ids, &lens).unwrap();
            for (r, &n) in lens.iter().enumerate() {
                let diff = (fused.get(r).unwrap().narrow(0, 0, n).unwrap()
                    - ops.get(r).unwrap().narrow(0, 0, n).unwrap())
                .unwrap()
                .abs()
                .unwrap()
                .max_all()
                .unwrap()
                .to_scalar::<f32>()
                .unwrap();
                assert!(
                    diff < 1e-5,
                    "{pos_att_type}, share {share_att_key}: row {r} differs by {diff}"
                );
            }
        }
    }

    #[test]
    fn parallel_gelu_is_candles_gelu() {
        let x = Tensor::randn(0f32, 3.0, (7, 1000), &Device::Cpu).unwrap();
        let ours = Activation::GeluErf.forward(&x).unwrap();
        let diff = (ours - x.gelu_erf().unwrap())
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert_eq!(diff, 0.0);
    }

    /// f32 (torch's precision) and f64 agree on every bucket up to 20k tokens, so the choice
    /// does not matter for real inputs.
    #[test]
    fn log_buckets_do_not_depend_on_float_width() {
        for (buckets, max_position) in [(64i64, 512i64), (256, 512)] {
            let mid = buckets / 2;
            for d in mid + 1..20_000 {
                let v = (d as f64 / mid as f64).ln()
                    / ((max_position - 1) as f64 / mid as f64).ln()
                    * (mid - 1) as f64;
                let f64_bucket = v.ceil() as i64 + mid;
                assert_eq!(
                    log_bucket_position(d, buckets, max_position),
                    f64_bucket,
                    "d = {d}"
                );
            }
        }
    }
}
