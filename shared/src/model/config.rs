//! `config.json` of a Hugging Face checkpoint, in both layouts transformers writes:
//! the classic one (`rope_theta`, `rope_scaling`, `torch_dtype`) and the newer one
//! (`rope_parameters`, `dtype`).

use serde::Deserialize;
use serde_json::Value;
use std::path::Path;

use super::ModelError;

/// The Llama-family variants the transformer implements. They differ only in small switches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arch {
    /// Llama 2/3: optional llama3 rope scaling, optional attention/mlp biases.
    Llama,
    /// Mistral: sliding-window attention.
    Mistral,
    /// Qwen2: biases on q/k/v projections.
    Qwen2,
    /// Qwen3: RMSNorm on queries and keys per head, explicit `head_dim`.
    Qwen3,
}

/// What sits on top of the decoder stack.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Head {
    /// `*ForCausalLM`: the vocabulary projection (`lm_head`, or the tied embedding).
    CausalLm,
    /// `*ForSequenceClassification`: `score.weight` read at the last non-pad token.
    SequenceClassification { num_labels: usize },
}

/// Rotary frequency scaling.
#[derive(Debug, Clone, PartialEq)]
pub enum RopeScaling {
    None,
    /// Positions divided by `factor`.
    Linear {
        factor: f64,
    },
    /// Llama 3.1's wavelength-dependent scaling.
    Llama3 {
        factor: f64,
        low_freq_factor: f64,
        high_freq_factor: f64,
        original_max_position_embeddings: usize,
    },
}

#[derive(Debug, Clone)]
pub struct ModelConfig {
    pub arch: Arch,
    pub head: Head,
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub num_key_value_heads: usize,
    pub head_dim: usize,
    pub rms_norm_eps: f64,
    pub rope_theta: f64,
    pub rope_scaling: RopeScaling,
    pub max_position_embeddings: usize,
    /// Per layer: the attention window (keys with `q_pos - k_pos < window`), or None for full.
    pub sliding_window: Vec<Option<usize>>,
    pub qkv_bias: bool,
    pub o_bias: bool,
    pub mlp_bias: bool,
    pub qk_norm: bool,
    pub tie_word_embeddings: bool,
    pub bos_token_id: Option<u32>,
    pub eos_token_ids: Vec<u32>,
    pub pad_token_id: Option<u32>,
    /// The dtype the checkpoint declares (`dtype` or `torch_dtype`), e.g. "float32", "bfloat16".
    pub declared_dtype: Option<String>,
    /// The original JSON, kept so a saved checkpoint writes back exactly what it read.
    pub raw: Value,
}

/// The subset of fields we read; everything optional is defaulted as transformers does.
#[derive(Deserialize)]
struct RawConfig {
    #[serde(default)]
    architectures: Vec<String>,
    model_type: Option<String>,
    vocab_size: usize,
    hidden_size: usize,
    intermediate_size: usize,
    num_hidden_layers: usize,
    num_attention_heads: usize,
    num_key_value_heads: Option<usize>,
    head_dim: Option<usize>,
    #[serde(default = "default_eps")]
    rms_norm_eps: f64,
    rope_theta: Option<f64>,
    rope_scaling: Option<Value>,
    rope_parameters: Option<Value>,
    #[serde(default = "default_max_pos")]
    max_position_embeddings: usize,
    sliding_window: Option<usize>,
    use_sliding_window: Option<bool>,
    max_window_layers: Option<usize>,
    layer_types: Option<Vec<String>>,
    #[serde(default)]
    attention_bias: bool,
    #[serde(default)]
    mlp_bias: bool,
    tie_word_embeddings: Option<bool>,
    bos_token_id: Option<Value>,
    eos_token_id: Option<Value>,
    pad_token_id: Option<Value>,
    num_labels: Option<usize>,
    id2label: Option<serde_json::Map<String, Value>>,
    hidden_act: Option<String>,
    dtype: Option<String>,
    torch_dtype: Option<String>,
}

fn default_eps() -> f64 {
    1e-6
}
fn default_max_pos() -> usize {
    2048
}

/// Token ids appear as a number, a list of numbers or null.
fn token_ids(v: &Option<Value>) -> Vec<u32> {
    match v {
        Some(Value::Number(n)) => n.as_u64().map(|n| vec![n as u32]).unwrap_or_default(),
        Some(Value::Array(a)) => a
            .iter()
            .filter_map(|x| x.as_u64())
            .map(|n| n as u32)
            .collect(),
        _ => vec![],
    }
}

impl ModelConfig {
    pub fn from_file(path: &Path) -> Result<Self, ModelError> {
        let text = std::fs::read_to_string(path).map_err(|e| ModelError::io(path, e))?;
        Self::from_json(&text).map_err(|e| match e {
            ModelError::Config { message, .. } => ModelError::Config {
                path: path.to_path_buf(),
                message,
            },
            other => other,
        })
    }

    pub fn from_json(text: &str) -> Result<Self, ModelError> {
        let err = |message: String| ModelError::Config {
            path: "config.json".into(),
            message,
        };
        let raw_value: Value = serde_json::from_str(text).map_err(|e| err(e.to_string()))?;
        let raw: RawConfig =
            serde_json::from_value(raw_value.clone()).map_err(|e| err(e.to_string()))?;

        let architecture = raw.architectures.first().cloned().unwrap_or_default();
        let (family, task) = architecture
            .split_once("For")
            .map(|(f, t)| (f.to_string(), t.to_string()))
            .unwrap_or_default();
        let arch = match family.as_str() {
            "Llama" => Arch::Llama,
            "Mistral" => Arch::Mistral,
            "Qwen2" => Arch::Qwen2,
            "Qwen3" => Arch::Qwen3,
            _ => {
                return Err(ModelError::UnsupportedArchitecture {
                    found: if architecture.is_empty() {
                        format!("model_type {:?}", raw.model_type.unwrap_or_default())
                    } else {
                        architecture
                    },
                })
            }
        };
        let head = match task.as_str() {
            "CausalLM" => Head::CausalLm,
            "SequenceClassification" => Head::SequenceClassification {
                num_labels: raw
                    .num_labels
                    .or(raw.id2label.as_ref().map(|m| m.len()))
                    .unwrap_or(2),
            },
            _ => {
                return Err(ModelError::UnsupportedArchitecture {
                    found: architecture,
                })
            }
        };
        if let Some(act) = &raw.hidden_act {
            if act != "silu" {
                return Err(err(format!(
                    "hidden_act {act:?} is not supported, expected \"silu\""
                )));
            }
        }

        // Rope: the newer layout nests theta and the scaling in `rope_parameters`.
        let rope_params = raw.rope_parameters.as_ref().or(raw.rope_scaling.as_ref());
        let rope_theta = raw
            .rope_theta
            .or_else(|| {
                raw.rope_parameters
                    .as_ref()
                    .and_then(|p| p.get("rope_theta"))
                    .and_then(Value::as_f64)
            })
            .unwrap_or(10_000.0);
        let rope_scaling = parse_rope_scaling(rope_params).map_err(err)?;

        let num_key_value_heads = raw.num_key_value_heads.unwrap_or(raw.num_attention_heads);
        if !raw.num_attention_heads.is_multiple_of(num_key_value_heads) {
            return Err(err(format!(
                "num_attention_heads {} is not a multiple of num_key_value_heads {}",
                raw.num_attention_heads, num_key_value_heads
            )));
        }
        let head_dim = raw
            .head_dim
            .unwrap_or(raw.hidden_size / raw.num_attention_heads);

        // Sliding windows: Mistral applies its window everywhere; Qwen applies it per
        // `layer_types` (or to layers from `max_window_layers` on) only with use_sliding_window.
        let sliding_window = match arch {
            Arch::Mistral => vec![raw.sliding_window; raw.num_hidden_layers],
            Arch::Qwen2 | Arch::Qwen3 => {
                let window = if raw.use_sliding_window.unwrap_or(false) {
                    raw.sliding_window
                } else {
                    None
                };
                (0..raw.num_hidden_layers)
                    .map(|i| {
                        let sliding = match &raw.layer_types {
                            Some(types) => types.get(i).map(|t| t == "sliding_attention"),
                            None => Some(i >= raw.max_window_layers.unwrap_or(0)),
                        };
                        if sliding.unwrap_or(false) {
                            window
                        } else {
                            None
                        }
                    })
                    .collect()
            }
            Arch::Llama => vec![None; raw.num_hidden_layers],
        };

        Ok(ModelConfig {
            arch,
            head,
            vocab_size: raw.vocab_size,
            hidden_size: raw.hidden_size,
            intermediate_size: raw.intermediate_size,
            num_hidden_layers: raw.num_hidden_layers,
            num_attention_heads: raw.num_attention_heads,
            num_key_value_heads,
            head_dim,
            rms_norm_eps: raw.rms_norm_eps,
            rope_theta,
            rope_scaling,
            max_position_embeddings: raw.max_position_embeddings,
            sliding_window,
            qkv_bias: raw.attention_bias || arch == Arch::Qwen2,
            o_bias: raw.attention_bias && arch != Arch::Qwen2,
            mlp_bias: raw.mlp_bias,
            qk_norm: arch == Arch::Qwen3,
            tie_word_embeddings: raw.tie_word_embeddings.unwrap_or(false),
            bos_token_id: token_ids(&raw.bos_token_id).first().copied(),
            eos_token_ids: token_ids(&raw.eos_token_id),
            pad_token_id: token_ids(&raw.pad_token_id).first().copied(),
            declared_dtype: raw.dtype.or(raw.torch_dtype),
            raw: raw_value,
        })
    }

    /// True for `*ForSequenceClassification` checkpoints.
    pub fn is_reward_model(&self) -> bool {
        matches!(self.head, Head::SequenceClassification { .. })
    }
}

fn parse_rope_scaling(params: Option<&Value>) -> Result<RopeScaling, String> {
    let Some(p) = params else {
        return Ok(RopeScaling::None);
    };
    if p.is_null() {
        return Ok(RopeScaling::None);
    }
    let kind = p
        .get("rope_type")
        .or_else(|| p.get("type"))
        .and_then(Value::as_str)
        .unwrap_or("default");
    let num = |key: &str| -> Result<f64, String> {
        p.get(key)
            .and_then(Value::as_f64)
            .ok_or_else(|| format!("rope scaling {kind:?} needs a number `{key}`"))
    };
    match kind {
        "default" => Ok(RopeScaling::None),
        "linear" => Ok(RopeScaling::Linear {
            factor: num("factor")?,
        }),
        "llama3" => Ok(RopeScaling::Llama3 {
            factor: num("factor")?,
            low_freq_factor: num("low_freq_factor")?,
            high_freq_factor: num("high_freq_factor")?,
            original_max_position_embeddings: num("original_max_position_embeddings")? as usize,
        }),
        other => Err(format!(
            "rope scaling type {other:?} is not supported (supported: default, linear, llama3)"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn newer_layout_reads_rope_parameters() {
        let cfg = ModelConfig::from_json(
            r#"{"architectures":["Qwen3ForCausalLM"],"vocab_size":10,"hidden_size":8,
            "intermediate_size":16,"num_hidden_layers":2,"num_attention_heads":2,
            "num_key_value_heads":1,"head_dim":16,"dtype":"bfloat16",
            "rope_parameters":{"rope_theta":1000000.0,"rope_type":"default"}}"#,
        )
        .unwrap();
        assert_eq!(cfg.arch, Arch::Qwen3);
        assert_eq!(cfg.rope_theta, 1e6);
        assert_eq!(cfg.head_dim, 16);
        assert!(cfg.qk_norm);
        assert_eq!(cfg.declared_dtype.as_deref(), Some("bfloat16"));
    }

    #[test]
    fn unsupported_architecture_is_named() {
        let e = ModelConfig::from_json(
            r#"{"architectures":["GPT2LMHeadModel"],"vocab_size":10,"hidden_size":8,
            "intermediate_size":16,"num_hidden_layers":2,"num_attention_heads":2}"#,
        )
        .unwrap_err();
        assert!(e.to_string().contains("GPT2LMHeadModel"), "{e}");
    }

    #[test]
    fn unknown_rope_type_is_an_error() {
        let e = ModelConfig::from_json(
            r#"{"architectures":["LlamaForCausalLM"],"vocab_size":10,"hidden_size":8,
            "intermediate_size":16,"num_hidden_layers":2,"num_attention_heads":2,
            "rope_scaling":{"rope_type":"yarn","factor":4.0}}"#,
        )
        .unwrap_err();
        assert!(e.to_string().contains("yarn"), "{e}");
    }
}
