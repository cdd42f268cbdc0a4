//! GGUF checkpoints (llama.cpp's one-file format) loaded as the equivalent Hugging Face model.
//!
//! A model path names a GGUF model when it is a `.gguf` file, or a folder without `config.json`
//! that holds exactly one `.gguf` file. Everything the Hugging Face layout keeps in separate
//! files comes from the GGUF metadata, the way transformers' `from_pretrained(gguf_file=...)`
//! derives it:
//! - `config.json` from `<arch>.*` (sizes, heads, rope, norm epsilon) and `tokenizer.ggml.*_id`;
//! - the tensors, renamed from llama.cpp's names (`blk.N.attn_q.weight`) to transformers' and
//!   dequantized with candle's GGUF reader to f32 (then the run's dtype). llama.cpp's converter
//!   permutes the rows of Q and K for its rotary layout; they are permuted back here;
//! - `tokenizer.json` from `tokenizer.ggml.*` (see `gguf_tokenizer.rs`);
//! - `tokenizer_config.json` with the chat template of `tokenizer.chat_template` and the
//!   special tokens; `generation_config.json` with bos/eos/pad.
//!
//! [`GgufModel::hf_files`] gives those files, so a GGUF model can be written out as an ordinary
//! Hugging Face folder (train-step does so for a GGUF policy).

use candle_core::quantized::gguf_file::{Content, Value as Meta};
use candle_core::{DType, Device, Tensor};
use serde_json::{json, Value};
use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};

use super::gguf_tokenizer::{tokenizer_json, GgufVocab};
use super::weights::Weights;
use super::{ModelError, Result};

/// The GGUF file that `path` names as a model, if any: `path` itself when it ends in `.gguf`,
/// or the one `.gguf` file of a folder that has no `config.json`.
pub fn gguf_file(path: &Path) -> Result<Option<PathBuf>> {
    let is_gguf = |p: &Path| {
        p.extension()
            .is_some_and(|e| e.eq_ignore_ascii_case("gguf"))
    };
    if path.is_file() {
        return Ok(is_gguf(path).then(|| path.to_path_buf()));
    }
    if !path.is_dir() || path.join("config.json").is_file() {
        return Ok(None);
    }
    let entries = std::fs::read_dir(path).map_err(|e| ModelError::io(path, e))?;
    let mut found: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| is_gguf(p) && p.is_file())
        .collect();
    found.sort();
    match found.len() {
        0 => Ok(None),
        1 => Ok(found.pop()),
        n => Err(ModelError::Config {
            path: path.to_path_buf(),
            message: format!(
                "{n} .gguf files ({}); name the one to use",
                found
                    .iter()
                    .filter_map(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        }),
    }
}

/// A GGUF file's metadata and tensor index (the tensors are read by [`GgufModel::weights`]).
pub struct GgufModel {
    pub path: PathBuf,
    content: Content,
}

fn meta_u64(v: &Meta) -> Option<u64> {
    match *v {
        Meta::U8(x) => Some(x as u64),
        Meta::U16(x) => Some(x as u64),
        Meta::U32(x) => Some(x as u64),
        Meta::U64(x) => Some(x),
        Meta::I8(x) => u64::try_from(x).ok(),
        Meta::I16(x) => u64::try_from(x).ok(),
        Meta::I32(x) => u64::try_from(x).ok(),
        Meta::I64(x) => u64::try_from(x).ok(),
        _ => None,
    }
}

fn meta_f64(v: &Meta) -> Option<f64> {
    match *v {
        Meta::F32(x) => Some(x as f64),
        Meta::F64(x) => Some(x),
        _ => meta_u64(v).map(|x| x as f64),
    }
}

/// llama.cpp's tensor names (after `blk.N.`) and transformers' (after `model.layers.N.`).
const LAYER_TENSORS: [(&str, &str); 13] = [
    ("attn_norm.weight", "input_layernorm.weight"),
    ("ffn_norm.weight", "post_attention_layernorm.weight"),
    ("attn_q.weight", "self_attn.q_proj.weight"),
    ("attn_k.weight", "self_attn.k_proj.weight"),
    ("attn_v.weight", "self_attn.v_proj.weight"),
    ("attn_output.weight", "self_attn.o_proj.weight"),
    ("attn_q.bias", "self_attn.q_proj.bias"),
    ("attn_k.bias", "self_attn.k_proj.bias"),
    ("attn_v.bias", "self_attn.v_proj.bias"),
    ("attn_output.bias", "self_attn.o_proj.bias"),
    ("ffn_gate.weight", "mlp.gate_proj.weight"),
    ("ffn_up.weight", "mlp.up_proj.weight"),
    ("ffn_down.weight", "mlp.down_proj.weight"),
];

/// The transformers name of a llama.cpp tensor, or None for one we have no place for.
fn hf_tensor_name(name: &str) -> Option<String> {
    match name {
        "token_embd.weight" => return Some("model.embed_tokens.weight".into()),
        "output_norm.weight" => return Some("model.norm.weight".into()),
        "output.weight" => return Some("lm_head.weight".into()),
        _ => {}
    }
    let rest = name.strip_prefix("blk.")?;
    let (layer, part) = rest.split_once('.')?;
    let layer: usize = layer.parse().ok()?;
    let (_, hf) = LAYER_TENSORS.iter().find(|(gg, _)| *gg == part)?;
    Some(format!("model.layers.{layer}.{hf}"))
}

/// Undoes llama.cpp's `permute` of the Q/K projection rows: per head, llama.cpp interleaves the
/// two rotary halves (rows `[h, 2, d/2]` stored as `[h, d/2, 2]`); transformers' rotate_half
/// wants them back-to-back.
fn unpermute_rows(w: &Tensor, heads: usize) -> Result<Tensor> {
    let dims = w.dims().to_vec();
    let rows = dims[0];
    let half = rows / heads / 2;
    let mut shape = vec![heads, half, 2];
    shape.extend_from_slice(&dims[1..]);
    Ok(w.reshape(shape)?
        .transpose(1, 2)?
        .contiguous()?
        .reshape(dims)?)
}

impl GgufModel {
    pub fn open(path: &Path) -> Result<Self> {
        let mut file = File::open(path).map_err(|e| ModelError::io(path, e))?;
        let content = Content::read(&mut file).map_err(|e| ModelError::Config {
            path: path.to_path_buf(),
            message: format!("not a readable GGUF file: {e}"),
        })?;
        Ok(GgufModel {
            path: path.to_path_buf(),
            content,
        })
    }

    fn error(&self, message: String) -> ModelError {
        ModelError::Config {
            path: self.path.clone(),
            message,
        }
    }

    fn get(&self, key: &str) -> Option<&Meta> {
        self.content.metadata.get(key)
    }

    fn string(&self, key: &str) -> Option<String> {
        match self.get(key)? {
            Meta::String(s) => Some(s.clone()),
            _ => None,
        }
    }

    fn u64(&self, key: &str) -> Option<u64> {
        self.get(key).and_then(meta_u64)
    }

    fn required_u64(&self, key: &str) -> Result<u64> {
        self.u64(key)
            .ok_or_else(|| self.error(format!("metadata has no integer `{key}`")))
    }

    fn strings(&self, key: &str) -> Option<Vec<String>> {
        match self.get(key)? {
            Meta::Array(a) => a
                .iter()
                .map(|v| match v {
                    Meta::String(s) => Some(s.clone()),
                    _ => None,
                })
                .collect(),
            _ => None,
        }
    }

    fn numbers(&self, key: &str) -> Option<Vec<f64>> {
        match self.get(key)? {
            Meta::Array(a) => a.iter().map(meta_f64).collect(),
            _ => None,
        }
    }

    fn bool(&self, key: &str) -> Option<bool> {
        match self.get(key)? {
            Meta::Bool(b) => Some(*b),
            _ => None,
        }
    }

    /// `general.architecture`; only the Llama family is mapped (llama.cpp writes Llama and
    /// Mistral checkpoints as `llama`).
    fn architecture(&self) -> Result<String> {
        let arch = self
            .string("general.architecture")
            .ok_or_else(|| self.error("metadata has no `general.architecture`".into()))?;
        if arch != "llama" {
            return Err(self.error(format!(
                "GGUF architecture {arch:?} is not supported (supported: \"llama\")"
            )));
        }
        Ok(arch)
    }

    /// The `config.json` transformers derives from the metadata.
    pub fn config_json(&self) -> Result<Value> {
        let arch = self.architecture()?;
        let key = |k: &str| format!("{arch}.{k}");
        let heads = self.required_u64(&key("attention.head_count"))?;
        let hidden = self.required_u64(&key("embedding_length"))?;
        let kv_heads = self.u64(&key("attention.head_count_kv")).unwrap_or(heads);
        let head_dim = self
            .u64(&key("attention.key_length"))
            .unwrap_or(hidden / heads.max(1));
        if let Some(rot) = self.u64(&key("rope.dimension_count")) {
            if rot != head_dim {
                return Err(self.error(format!(
                    "rope.dimension_count {rot} differs from the head size {head_dim}: partial \
                     rotary embeddings are not supported"
                )));
            }
        }
        if self.content.tensor_infos.contains_key("rope_freqs.weight") {
            return Err(self.error(
                "has `rope_freqs.weight` (Llama 3.1 rope scaling as a tensor), which is not supported"
                    .into(),
            ));
        }
        let rope_scaling = match self.string(&key("rope.scaling.type")).as_deref() {
            None | Some("none") => Value::Null,
            Some("linear") => json!({
                "rope_type": "linear",
                "factor": self.get(&key("rope.scaling.factor")).and_then(meta_f64).unwrap_or(1.0),
            }),
            Some(other) => {
                return Err(self.error(format!(
                    "rope scaling {other:?} is not supported (supported: none, linear)"
                )))
            }
        };
        let vocab_size = match self.u64(&key("vocab_size")) {
            Some(n) => n,
            None => self.vocab()?.tokens.len() as u64,
        };
        let id = |k: &str| self.u64(&format!("tokenizer.ggml.{k}"));
        let mut cfg = json!({
            "architectures": ["LlamaForCausalLM"],
            "model_type": arch,
            "vocab_size": vocab_size,
            "hidden_size": hidden,
            "intermediate_size": self.required_u64(&key("feed_forward_length"))?,
            "num_hidden_layers": self.required_u64(&key("block_count"))?,
            "num_attention_heads": heads,
            "num_key_value_heads": kv_heads,
            "head_dim": head_dim,
            "hidden_act": "silu",
            "max_position_embeddings": self.u64(&key("context_length")).unwrap_or(2048),
            "rms_norm_eps": self.get(&key("attention.layer_norm_rms_epsilon")).and_then(meta_f64).unwrap_or(1e-6),
            "rope_theta": self.get(&key("rope.freq_base")).and_then(meta_f64).unwrap_or(10_000.0),
            "rope_scaling": rope_scaling,
            "attention_bias": self.content.tensor_infos.contains_key("blk.0.attn_q.bias"),
            "mlp_bias": false,
            "tie_word_embeddings": !self.content.tensor_infos.contains_key("output.weight"),
            "bos_token_id": id("bos_token_id"),
            "eos_token_id": id("eos_token_id"),
            "pad_token_id": id("padding_token_id"),
            "torch_dtype": "float32",
        });
        if let Some(unk) = id("unknown_token_id") {
            cfg["unk_token_id"] = unk.into();
        }
        Ok(cfg)
    }

    /// What `tokenizer.ggml.*` says about the vocabulary.
    pub(super) fn vocab(&self) -> Result<GgufVocab> {
        let t = |k: &str| format!("tokenizer.ggml.{k}");
        let tokens = self
            .strings(&t("tokens"))
            .ok_or_else(|| self.error("metadata has no `tokenizer.ggml.tokens`".into()))?;
        let id = |k: &str| self.u64(&t(k)).map(|n| n as u32);
        Ok(GgufVocab {
            model: self.string(&t("model")).unwrap_or_else(|| "llama".into()),
            pre: self.string(&t("pre")),
            scores: self
                .numbers(&t("scores"))
                .map(|s| s.into_iter().map(|x| x as f32).collect()),
            token_types: self
                .numbers(&t("token_type"))
                .map(|s| s.into_iter().map(|x| x as i32).collect()),
            merges: self.strings(&t("merges")),
            bos: id("bos_token_id"),
            eos: id("eos_token_id"),
            unk: id("unknown_token_id"),
            pad: id("padding_token_id"),
            add_bos: self.bool(&t("add_bos_token")),
            add_space_prefix: self.bool(&t("add_space_prefix")),
            tokens,
        })
    }

    /// The `tokenizer.json` a `tokenizers` Tokenizer loads.
    pub fn tokenizer_json(&self) -> Result<Value> {
        tokenizer_json(&self.vocab()?).map_err(|m| self.error(format!("tokenizer: {m}")))
    }

    /// `tokenizer.chat_template`, if the file has one.
    pub fn chat_template(&self) -> Option<String> {
        self.string("tokenizer.chat_template")
    }

    /// `tokenizer_config.json`: special tokens as text and the chat template.
    pub fn tokenizer_config_json(&self) -> Result<Value> {
        let vocab = self.vocab()?;
        let text = |id: Option<u32>| {
            id.and_then(|i| vocab.tokens.get(i as usize).cloned())
                .map_or(Value::Null, Value::String)
        };
        let mut cfg = json!({
            "tokenizer_class": "PreTrainedTokenizerFast",
            "bos_token": text(vocab.bos),
            "eos_token": text(vocab.eos),
            "unk_token": text(vocab.unk),
            "pad_token": text(vocab.pad),
            "add_bos_token": vocab.adds_bos(),
            "add_eos_token": false,
            "clean_up_tokenization_spaces": false,
        });
        if let Some(t) = self.chat_template() {
            cfg["chat_template"] = t.into();
        }
        Ok(cfg)
    }

    /// `generation_config.json`: the ids generation starts and stops with. End-of-turn ids
    /// (`eot_token_id`, `eom_token_id`) stop it too, as in llama.cpp.
    pub fn generation_config_json(&self) -> Value {
        let id = |k: &str| self.u64(&format!("tokenizer.ggml.{k}"));
        let mut eos: Vec<u64> = ["eos_token_id", "eot_token_id", "eom_token_id"]
            .iter()
            .filter_map(|k| id(k))
            .collect();
        eos.dedup();
        json!({
            "bos_token_id": id("bos_token_id"),
            "eos_token_id": if eos.len() == 1 { json!(eos[0]) } else { json!(eos) },
            "pad_token_id": id("padding_token_id"),
        })
    }

    /// The non-weight files of the equivalent Hugging Face folder, by file name.
    pub fn hf_files(&self) -> Result<Vec<(&'static str, String)>> {
        let pretty = |v: &Value| serde_json::to_string_pretty(v).unwrap_or_default();
        Ok(vec![
            ("config.json", pretty(&self.config_json()?)),
            (
                "generation_config.json",
                pretty(&self.generation_config_json()),
            ),
            ("tokenizer.json", pretty(&self.tokenizer_json()?)),
            (
                "tokenizer_config.json",
                pretty(&self.tokenizer_config_json()?),
            ),
        ])
    }

    /// Every tensor dequantized to f32, renamed to transformers' names, Q/K rows unpermuted,
    /// then converted to `dtype` on `device`.
    pub fn weights(&self, dtype: DType, device: &Device) -> Result<Weights> {
        let cfg = self.config_json()?;
        let heads = cfg["num_attention_heads"].as_u64().unwrap_or(1) as usize;
        let kv_heads = cfg["num_key_value_heads"].as_u64().unwrap_or(1) as usize;
        let mut file = File::open(&self.path).map_err(|e| ModelError::io(&self.path, e))?;
        let mut tensors = HashMap::new();
        let mut names: Vec<&String> = self.content.tensor_infos.keys().collect();
        names.sort();
        for name in names {
            let hf = hf_tensor_name(name).ok_or_else(|| {
                self.error(format!(
                    "tensor `{name}` has no Hugging Face Llama counterpart"
                ))
            })?;
            let read = self
                .content
                .tensor(&mut file, name, &Device::Cpu)
                .and_then(|q| q.dequantize(&Device::Cpu))
                .map_err(|e| self.error(format!("cannot read tensor `{name}`: {e}")))?;
            let t = if name.ends_with("attn_q.weight") || name.ends_with("attn_q.bias") {
                unpermute_rows(&read, heads)?
            } else if name.ends_with("attn_k.weight") || name.ends_with("attn_k.bias") {
                unpermute_rows(&read, kv_heads)?
            } else {
                read
            };
            tensors.insert(hf, t.to_dtype(dtype)?.to_device(device)?);
        }
        Ok(Weights::from_tensors(tensors, self.path.clone()))
    }
}
