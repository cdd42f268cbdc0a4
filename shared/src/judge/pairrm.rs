//! PairRM (Jiang et al., LLM-Blender, arXiv 2306.02561), the judge of SPPO and RSPO, as
//! llm-blender's `DebertaV2PairRM` computes it on a checkpoint in the PairRM-hf layout.
//!
//! A DeBERTa-v3 encoder reads `<|source|> prompt <|candidate1|> a <|candidate2|> b` (see
//! [`PairTokenizer`] for how the three segments are built and truncated). With `h_s`, `h_1`, `h_2`
//! the last hidden states at the three prefix tokens and
//! `head(x) = W4 tanh(W1 x + b1) + b4` (`head_layer.1`: 2H -> H, `head_layer.4`: H -> n_tasks),
//!
//! ```text
//! logit(a, b) = mean over tasks of  head([h_s; h_1]) - head([h_s; h_2])
//! ```
//!
//! and P(a beats b) = sigmoid(logit(a, b)). The verdict depends on which response is shown first,
//! so a judge asks both orders. Two ways to turn one prompt's K x K logits into preferences
//! ([`PairRmMode`]):
//! - `pairwise`: `p_ij = (sigmoid(l_ij) + 1 - sigmoid(l_ji)) / 2`, the mean of the two orders;
//! - `sppo` (llm-blender's `rank` scores, then SPPO's `compute_prob`):
//!   `s_i = mean_j (l_ij - l_ji)` over all K (the j = i term is 0), `p_ij = sigmoid(s_i - s_j)`.
//!
//! Inference only; dropout is off as in `.eval()`.

use candle_core::{DType, Device, Tensor};
use serde::Deserialize;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use super::pairrm_deberta::{DebertaV2Config, DebertaV2Encoder};
use super::pairrm_inputs::{
    PairInput, PairRmLengths, PairTokenizer, PrefixIds, CAND1_PREFIX, CAND2_PREFIX, SOURCE_PREFIX,
};
use super::scalar_scores::sigmoid;
use crate::model::{ModelError, Weights};

/// The `architectures` entry of a PairRM-hf config.
pub const ARCHITECTURE: &str = "DebertaV2PairRM";

/// Why a PairRM checkpoint cannot be loaded or run.
#[derive(Debug, thiserror::Error)]
pub enum PairRmError {
    #[error("{path}: missing `{key}` (expected the token id of {token}, as llm-blender/PairRM-hf's config.json has)")]
    MissingPrefixId {
        path: PathBuf,
        key: &'static str,
        token: &'static str,
    },
    #[error("{path}: architectures {found:?}, expected [\"{ARCHITECTURE}\"] (llm-blender's PairRM in its Hugging Face layout, e.g. llm-blender/PairRM-hf)")]
    Architecture { path: PathBuf, found: Vec<String> },
    #[error("{path}: {message}")]
    Config { path: PathBuf, message: String },
    #[error("{path}: the tokenizer has no token {token} (expected it with id {expected}, config.json's `{key}`; PairRM-hf's tokenizer adds <|source|>, <|candidate1|> and <|candidate2|>)")]
    TokenizerLacksPrefix {
        path: PathBuf,
        token: &'static str,
        key: &'static str,
        expected: u32,
    },
    #[error("{path}: token {token} has id {found}, but config.json's `{key}` says {expected}")]
    PrefixIdMismatch {
        path: PathBuf,
        token: &'static str,
        key: &'static str,
        found: u32,
        expected: u32,
    },
    #[error("{path}: {message}")]
    Tokenizer { path: PathBuf, message: String },
    #[error("{flag} {value} is too small, expected at least {min} (the tokenizer's special tokens and the prefix token)")]
    LengthTooSmall {
        flag: &'static str,
        value: usize,
        min: usize,
    },
    #[error("an input of {found} tokens is longer than {path}'s max_position_embeddings {limit} (it has absolute position embeddings); lower --source-max-length / --candidate-max-length")]
    TooLong {
        path: PathBuf,
        found: usize,
        limit: usize,
    },
    #[error("logit matrix: {message}")]
    Matrix { message: String },
    #[error(transparent)]
    Model(#[from] ModelError),
}

impl From<candle_core::Error> for PairRmError {
    fn from(e: candle_core::Error) -> Self {
        PairRmError::Model(ModelError::Candle(e))
    }
}

// ---------------------------------------------------------------------------------------------
// Config

/// A PairRM-hf `config.json`: the DeBERTa-v2 encoder's settings plus llm-blender's.
#[derive(Debug, Clone, Deserialize)]
pub struct PairRmConfig {
    #[serde(flatten)]
    pub encoder: DebertaV2Config,
    /// Scores per candidate; the logit averages their differences (PairRM: 1).
    pub n_tasks: usize,
    pub source_prefix_id: u32,
    pub cand1_prefix_id: u32,
    pub cand2_prefix_id: u32,
}

impl PairRmConfig {
    /// Reads and checks `config.json`: the architecture, and the three prefix ids by name.
    pub fn from_file(path: &Path) -> Result<Self, PairRmError> {
        let text = std::fs::read_to_string(path).map_err(|e| ModelError::io(path, e))?;
        let json: serde_json::Value =
            serde_json::from_str(&text).map_err(|e| PairRmError::Config {
                path: path.to_path_buf(),
                message: format!("not valid JSON: {e}"),
            })?;
        if let Some(archs) = json.get("architectures").and_then(|a| a.as_array()) {
            let found: Vec<String> = archs
                .iter()
                .map(|a| a.as_str().unwrap_or_default().to_string())
                .collect();
            if !found.iter().any(|a| a == ARCHITECTURE) {
                return Err(PairRmError::Architecture {
                    path: path.to_path_buf(),
                    found,
                });
            }
        }
        for (key, token) in [
            ("source_prefix_id", SOURCE_PREFIX),
            ("cand1_prefix_id", CAND1_PREFIX),
            ("cand2_prefix_id", CAND2_PREFIX),
        ] {
            if json.get(key).is_none_or(|v| v.is_null()) {
                return Err(PairRmError::MissingPrefixId {
                    path: path.to_path_buf(),
                    key,
                    token,
                });
            }
        }
        let cfg: PairRmConfig = serde_json::from_value(json).map_err(|e| PairRmError::Config {
            path: path.to_path_buf(),
            message: e.to_string(),
        })?;
        if cfg.n_tasks == 0 {
            return Err(PairRmError::Config {
                path: path.to_path_buf(),
                message: "n_tasks is 0, expected at least 1".into(),
            });
        }
        Ok(cfg)
    }

    pub fn prefix_ids(&self) -> PrefixIds {
        PrefixIds {
            source: self.source_prefix_id,
            cand1: self.cand1_prefix_id,
            cand2: self.cand2_prefix_id,
        }
    }
}

/// How a PairRM judge is run. Defaults: PairRM's lengths, f32, 4 pairs a batch.
#[derive(Debug, Clone, Copy)]
pub struct PairRmOptions {
    pub lengths: PairRmLengths,
    pub dtype: DType,
    /// Pairs per forward pass. A full-length PairRM input (2048 tokens, 16 heads) holds about
    /// 0.5 GiB of f32 attention scores and probabilities; on 2 cores batches above 4 were no
    /// faster (`cargo bench --bench pairrm`).
    pub batch_size: usize,
}

impl Default for PairRmOptions {
    fn default() -> Self {
        PairRmOptions {
            lengths: PairRmLengths::default(),
            dtype: DType::F32,
            batch_size: 4,
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The model

/// `head_layer`: Linear(2H, H), tanh, Linear(H, n_tasks) (dropouts off).
struct PairHead {
    w1_t: Tensor,
    b1: Tensor,
    w4_t: Tensor,
    b4: Tensor,
}

impl PairHead {
    fn load(w: &Weights, hidden: usize, n_tasks: usize) -> Result<Self, ModelError> {
        Ok(PairHead {
            w1_t: w.get("head_layer.1.weight", &[hidden, 2 * hidden])?.t()?,
            b1: w.get("head_layer.1.bias", &[hidden])?,
            w4_t: w.get("head_layer.4.weight", &[n_tasks, hidden])?.t()?,
            b4: w.get("head_layer.4.bias", &[n_tasks])?,
        })
    }

    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let h = x.matmul(&self.w1_t)?.broadcast_add(&self.b1)?.tanh()?;
        h.matmul(&self.w4_t)?.broadcast_add(&self.b4)
    }
}

/// A loaded PairRM: encoder, pairwise head and tokenizer.
pub struct PairRm {
    config: PairRmConfig,
    encoder: DebertaV2Encoder,
    head: PairHead,
    tokenizer: PairTokenizer,
    device: Device,
    batch_size: usize,
    source: PathBuf,
}

impl PairRm {
    /// Loads a PairRM-hf directory (config.json, model.safetensors, tokenizer.json) with the
    /// default options.
    pub fn load(dir: &Path, device: &Device) -> Result<Self, PairRmError> {
        Self::load_with(dir, device, &PairRmOptions::default())
    }

    pub fn load_with(
        dir: &Path,
        device: &Device,
        options: &PairRmOptions,
    ) -> Result<Self, PairRmError> {
        let require = |name: &str, expected: &str| -> Result<PathBuf, PairRmError> {
            let p = dir.join(name);
            if p.is_file() {
                Ok(p)
            } else {
                Err(ModelError::MissingFile {
                    dir: dir.to_path_buf(),
                    what: name.into(),
                    expected: expected.into(),
                }
                .into())
            }
        };
        if !dir.is_dir() {
            return Err(ModelError::MissingFile {
                dir: dir.to_path_buf(),
                what: "model directory".into(),
                expected: "a PairRM-hf directory (config.json, model.safetensors, tokenizer.json)"
                    .into(),
            }
            .into());
        }
        let config = PairRmConfig::from_file(&require("config.json", "the PairRM-hf config")?)?;
        let tokenizer = PairTokenizer::from_file(
            &require(
                "tokenizer.json",
                "a `tokenizers` tokenizer with the PairRM prefix tokens",
            )?,
            config.prefix_ids(),
            options.lengths,
        )?;
        let weights = Weights::load(dir, options.dtype, device)?;
        Self::from_weights(config, &weights, tokenizer, device, options.batch_size)
    }

    /// Builds the model from tensors already in memory (named as in PairRM-hf).
    pub fn from_weights(
        config: PairRmConfig,
        weights: &Weights,
        tokenizer: PairTokenizer,
        device: &Device,
        batch_size: usize,
    ) -> Result<Self, PairRmError> {
        if tokenizer.prefix_ids() != config.prefix_ids() {
            return Err(PairRmError::Config {
                path: weights.source().join("config.json"),
                message: format!(
                    "prefix ids {:?} differ from the tokenizer's {:?}",
                    config.prefix_ids(),
                    tokenizer.prefix_ids()
                ),
            });
        }
        let encoder = DebertaV2Encoder::load(weights, &config.encoder)?;
        let head = PairHead::load(weights, config.encoder.hidden_size, config.n_tasks)?;
        Ok(PairRm {
            config,
            encoder,
            head,
            tokenizer,
            device: device.clone(),
            batch_size: batch_size.max(1),
            source: weights.source().to_path_buf(),
        })
    }

    pub fn config(&self) -> &PairRmConfig {
        &self.config
    }

    pub fn tokenizer(&self) -> &PairTokenizer {
        &self.tokenizer
    }

    pub fn lengths(&self) -> PairRmLengths {
        self.tokenizer.lengths()
    }

    pub fn batch_size(&self) -> usize {
        self.batch_size
    }

    pub fn set_batch_size(&mut self, batch_size: usize) {
        self.batch_size = batch_size.max(1);
    }

    /// logit(cand1, cand2) of one batch, right-padded to its longest row.
    pub fn forward(&self, batch: &[PairInput]) -> Result<Vec<f32>, PairRmError> {
        if batch.is_empty() {
            return Ok(Vec::new());
        }
        let len = batch.iter().map(|p| p.ids.len()).max().unwrap_or(0);
        if let Some(limit) = self.encoder.max_len() {
            if len > limit {
                return Err(PairRmError::TooLong {
                    path: self.source.join("config.json"),
                    found: len,
                    limit,
                });
            }
        }
        let b = batch.len();
        let pad = self.config.encoder.pad_token_id.unwrap_or(0);
        let mut ids = Vec::with_capacity(b * len);
        let mut lens = Vec::with_capacity(b);
        // Rows of the flattened (batch * seq, hidden) states to read, per prefix.
        let (mut src, mut c1, mut c2) = (Vec::new(), Vec::new(), Vec::new());
        for (r, p) in batch.iter().enumerate() {
            ids.extend_from_slice(&p.ids);
            ids.extend(std::iter::repeat_n(pad, len - p.ids.len()));
            lens.push(p.ids.len());
            src.push((r * len + p.source_pos) as u32);
            c1.push((r * len + p.cand1_pos) as u32);
            c2.push((r * len + p.cand2_pos) as u32);
        }
        let ids = Tensor::from_vec(ids, (b, len), &self.device)?;
        let hidden = self.encoder.forward(&ids, &lens)?;
        let h = hidden.dim(2)?;
        let flat = hidden.reshape((b * len, h))?;
        let at = |rows: Vec<u32>| -> candle_core::Result<Tensor> {
            flat.index_select(&Tensor::from_vec(rows, b, &self.device)?, 0)
        };
        let (h_s, h_1, h_2) = (at(src)?, at(c1)?, at(c2)?);
        // Left and right candidates through the head in one matmul.
        let x = Tensor::cat(
            &[
                Tensor::cat(&[&h_s, &h_1], 1)?,
                Tensor::cat(&[&h_s, &h_2], 1)?,
            ],
            0,
        )?;
        let scores = self.head.forward(&x)?;
        let logits = (scores.narrow(0, 0, b)? - scores.narrow(0, b, b)?)?
            .mean(1)?
            .to_dtype(DType::F32)?
            .to_vec1::<f32>()?;
        Ok(logits)
    }

    /// Logits of many inputs: sorted by length so batches carry little padding, `batch_size` at
    /// a time, returned in the given order.
    pub fn logits(&self, inputs: &[PairInput]) -> Result<Vec<f32>, PairRmError> {
        let mut order: Vec<usize> = (0..inputs.len()).collect();
        order.sort_by_key(|&i| std::cmp::Reverse(inputs[i].ids.len()));
        let mut out = vec![0f32; inputs.len()];
        for chunk in order.chunks(self.batch_size) {
            let batch: Vec<PairInput> = chunk.iter().map(|&i| inputs[i].clone()).collect();
            for (&i, logit) in chunk.iter().zip(self.forward(&batch)?) {
                out[i] = logit;
            }
        }
        Ok(out)
    }

    /// logit(a, b) for each (source, a, b): a shown as candidate 1.
    pub fn compare_logits(&self, triples: &[(&str, &str, &str)]) -> Result<Vec<f32>, PairRmError> {
        let inputs = triples
            .iter()
            .map(|(s, a, b)| self.tokenizer.encode_pair(s, a, b))
            .collect::<Result<Vec<_>, _>>()?;
        self.logits(&inputs)
    }

    /// The K x K logits of one prompt's responses, every ordered pair i != j (diagonal 0).
    pub fn logit_matrix(
        &self,
        source: &str,
        responses: &[&str],
    ) -> Result<LogitMatrix, PairRmError> {
        let inputs = self.tokenizer.encode_group(source, responses)?;
        let logits = self.logits(&inputs)?;
        let mut it = logits.into_iter();
        Ok(LogitMatrix::from_fn(responses.len(), |_, _| {
            it.next().map(f64::from).unwrap_or(f64::NAN)
        }))
    }

    /// Every pair i < j in `pairwise` mode, with both orders' verdicts.
    pub fn pairwise(
        &self,
        source: &str,
        responses: &[&str],
    ) -> Result<Vec<PairRmVerdict>, PairRmError> {
        Ok(self
            .logit_matrix(source, responses)?
            .verdicts(PairRmMode::Pairwise))
    }

    /// Every pair i < j in `sppo` mode (the group's aggregated scores).
    pub fn sppo_matrix(
        &self,
        source: &str,
        responses: &[&str],
    ) -> Result<Vec<PairRmVerdict>, PairRmError> {
        Ok(self
            .logit_matrix(source, responses)?
            .verdicts(PairRmMode::Sppo))
    }
}

// ---------------------------------------------------------------------------------------------
// From logits to preferences

/// How one prompt's logits become P(y_i beats y_j).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum PairRmMode {
    /// Mean of the two orders of each pair.
    #[default]
    Pairwise,
    /// Bradley-Terry on the group's aggregated scores, as SPPO's pipeline computed it.
    Sppo,
}

impl FromStr for PairRmMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "pairwise" => Ok(PairRmMode::Pairwise),
            "sppo" => Ok(PairRmMode::Sppo),
            other => Err(format!("{other:?}, expected pairwise or sppo")),
        }
    }
}

impl std::fmt::Display for PairRmMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            PairRmMode::Pairwise => "pairwise",
            PairRmMode::Sppo => "sppo",
        })
    }
}

/// What PairRM reads as the source (instruction) of a comparison.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum PairRmSource {
    /// The conversation's last user turn, as PairRM's model card uses it.
    #[default]
    LastUserTurn,
    /// The prompt after the policy's chat template (the samples' `prompt_text`), as the
    /// official SPPO/RSPO pipeline's `scripts/rank.py` passes it.
    ChatTemplate,
}

impl FromStr for PairRmSource {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "last-user-turn" => Ok(PairRmSource::LastUserTurn),
            "chat-template" => Ok(PairRmSource::ChatTemplate),
            other => Err(format!(
                "{other:?}, expected last-user-turn or chat-template"
            )),
        }
    }
}

impl std::fmt::Display for PairRmSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            PairRmSource::LastUserTurn => "last-user-turn",
            PairRmSource::ChatTemplate => "chat-template",
        })
    }
}

/// PairRM's verdict on samples i < j: `p` = P(y_i beats y_j) in the chosen mode, and each
/// order's own verdict, so position bias stays visible.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PairRmVerdict {
    pub i: u32,
    pub j: u32,
    pub p: f64,
    /// y_i shown first: sigmoid(l_ij).
    pub p_forward: f64,
    /// y_j shown first: 1 - sigmoid(l_ji).
    pub p_swapped: f64,
}

/// `l[i][j]` = logit(y_i as candidate 1, y_j as candidate 2) of one prompt; diagonal 0.
#[derive(Debug, Clone, PartialEq)]
pub struct LogitMatrix {
    k: usize,
    logits: Vec<f64>,
}

impl LogitMatrix {
    /// `f(i, j)` for i != j, row by row.
    pub fn from_fn(k: usize, mut f: impl FnMut(usize, usize) -> f64) -> Self {
        let mut logits = vec![0.0; k * k];
        for i in 0..k {
            for j in 0..k {
                if i != j {
                    logits[i * k + j] = f(i, j);
                }
            }
        }
        LogitMatrix { k, logits }
    }

    /// From square rows (the diagonal is ignored).
    pub fn from_rows(rows: &[Vec<f64>]) -> Result<Self, PairRmError> {
        let k = rows.len();
        if let Some((i, r)) = rows.iter().enumerate().find(|(_, r)| r.len() != k) {
            return Err(PairRmError::Matrix {
                message: format!("row {i} has {} entries, expected {k}", r.len()),
            });
        }
        Ok(Self::from_fn(k, |i, j| rows[i][j]))
    }

    pub fn k(&self) -> usize {
        self.k
    }

    pub fn get(&self, i: usize, j: usize) -> f64 {
        self.logits[i * self.k + j]
    }

    pub fn p_forward(&self, i: usize, j: usize) -> f64 {
        sigmoid(self.get(i, j))
    }

    pub fn p_swapped(&self, i: usize, j: usize) -> f64 {
        1.0 - sigmoid(self.get(j, i))
    }

    /// `s_i = mean_j (l_ij - l_ji)` over all K responses.
    pub fn sppo_scores(&self) -> Vec<f64> {
        (0..self.k)
            .map(|i| {
                (0..self.k)
                    .map(|j| self.get(i, j) - self.get(j, i))
                    .sum::<f64>()
                    / self.k as f64
            })
            .collect()
    }

    /// The K x K matrix P(y_i beats y_j) of `mode`; the diagonal is 0.5.
    pub fn preferences(&self, mode: PairRmMode) -> Vec<Vec<f64>> {
        let scores = match mode {
            PairRmMode::Sppo => self.sppo_scores(),
            PairRmMode::Pairwise => Vec::new(),
        };
        (0..self.k)
            .map(|i| {
                (0..self.k)
                    .map(|j| match mode {
                        PairRmMode::Pairwise => 0.5 * (self.p_forward(i, j) + self.p_swapped(i, j)),
                        PairRmMode::Sppo => sigmoid(scores[i] - scores[j]),
                    })
                    .collect()
            })
            .collect()
    }

    /// Every pair i < j in the order (0, 1), (0, 2), .., (1, 2), ...
    pub fn verdicts(&self, mode: PairRmMode) -> Vec<PairRmVerdict> {
        let p = self.preferences(mode);
        let mut out = Vec::with_capacity(self.k * self.k.saturating_sub(1) / 2);
        for (i, row) in p.iter().enumerate() {
            for (j, &p_ij) in row.iter().enumerate().skip(i + 1) {
                out.push(PairRmVerdict {
                    i: i as u32,
                    j: j as u32,
                    p: p_ij,
                    p_forward: self.p_forward(i, j),
                    p_swapped: self.p_swapped(i, j),
                });
            }
        }
        out
    }
}

// ---------------------------------------------------------------------------------------------
// Random weights for benchmarks

/// Every tensor PairRM reads for `config`, drawn from N(0, std^2) (layer norms 1 and 0): speed
/// on a PairRM shape without shipping its weights.
pub fn random_pairrm_weights(
    config: &PairRmConfig,
    std: f64,
    device: &Device,
) -> Result<Weights, PairRmError> {
    let c = &config.encoder;
    let (h, i) = (c.hidden_size, c.intermediate_size);
    let e = c.embedding_size.unwrap_or(h);
    let all = c.num_attention_heads
        * c.attention_head_size
            .unwrap_or(h / c.num_attention_heads.max(1));
    let norm = |shapes: &mut Vec<(String, Vec<usize>)>, name: String, dim: usize| {
        shapes.push((format!("{name}.weight"), vec![dim]));
        shapes.push((format!("{name}.bias"), vec![dim]));
    };
    let dense = |shapes: &mut Vec<(String, Vec<usize>)>, name: String, out: usize, inp: usize| {
        shapes.push((format!("{name}.weight"), vec![out, inp]));
        shapes.push((format!("{name}.bias"), vec![out]));
    };
    let mut shapes: Vec<(String, Vec<usize>)> = Vec::new();
    let p = "pretrained_model";
    shapes.push((
        format!("{p}.embeddings.word_embeddings.weight"),
        vec![c.vocab_size, e],
    ));
    if c.position_biased_input {
        shapes.push((
            format!("{p}.embeddings.position_embeddings.weight"),
            vec![c.max_position_embeddings, e],
        ));
    }
    if c.type_vocab_size > 0 {
        shapes.push((
            format!("{p}.embeddings.token_type_embeddings.weight"),
            vec![c.type_vocab_size, e],
        ));
    }
    if e != h {
        shapes.push((format!("{p}.embeddings.embed_proj.weight"), vec![h, e]));
    }
    norm(&mut shapes, format!("{p}.embeddings.LayerNorm"), h);
    if c.relative_attention {
        let max_rel = if c.max_relative_positions < 1 {
            c.max_position_embeddings as i64
        } else {
            c.max_relative_positions
        };
        let span = if c.position_buckets > 0 {
            c.position_buckets
        } else {
            max_rel
        } as usize;
        shapes.push((
            format!("{p}.encoder.rel_embeddings.weight"),
            vec![2 * span, h],
        ));
        norm(&mut shapes, format!("{p}.encoder.LayerNorm"), h);
    }
    for l in 0..c.num_hidden_layers {
        let n = format!("{p}.encoder.layer.{l}");
        for proj in [
            "query_proj",
            "key_proj",
            "value_proj",
            "pos_key_proj",
            "pos_query_proj",
        ] {
            if proj.starts_with("pos_") && (c.share_att_key || !c.relative_attention) {
                continue;
            }
            dense(&mut shapes, format!("{n}.attention.self.{proj}"), all, h);
        }
        dense(&mut shapes, format!("{n}.attention.output.dense"), h, all);
        norm(&mut shapes, format!("{n}.attention.output.LayerNorm"), h);
        dense(&mut shapes, format!("{n}.intermediate.dense"), i, h);
        dense(&mut shapes, format!("{n}.output.dense"), h, i);
        norm(&mut shapes, format!("{n}.output.LayerNorm"), h);
    }
    dense(&mut shapes, "head_layer.1".into(), h, 2 * h);
    dense(&mut shapes, "head_layer.4".into(), config.n_tasks, h);
    let mut tensors = HashMap::new();
    for (name, shape) in shapes {
        let t = if name.contains("LayerNorm.weight") {
            Tensor::ones(shape, DType::F32, device)?
        } else if name.contains("LayerNorm.bias") {
            Tensor::zeros(shape, DType::F32, device)?
        } else {
            seeded_normal(&name, &shape, std, device)?
        };
        tensors.insert(name, t);
    }
    Ok(Weights::from_tensors(tensors, "random".into()))
}

/// N(0, std^2) draws seeded by the tensor's name (xorshift64* and Box-Muller), so that tests
/// on random weights see the same weights every run.
fn seeded_normal(
    name: &str,
    shape: &[usize],
    std: f64,
    device: &Device,
) -> Result<Tensor, PairRmError> {
    let seed = blake3::hash(name.as_bytes()).as_bytes()[..8]
        .try_into()
        .expect("8 bytes");
    let mut state = u64::from_le_bytes(seed) | 1;
    let mut uniform = move || {
        state ^= state >> 12;
        state ^= state << 25;
        state ^= state >> 27;
        ((state.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 11) as f64 + 0.5) / (1u64 << 53) as f64
    };
    let n: usize = shape.iter().product();
    let values: Vec<f32> = (0..n)
        .map(|_| {
            let (u1, u2) = (uniform(), uniform());
            (std * (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()) as f32
        })
        .collect();
    Ok(Tensor::from_vec(values, shape, device)?)
}
