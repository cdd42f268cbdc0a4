//! Random weights for a config: benchmarks measure speed on a model shape without shipping
//! its weights (DESIGN.md, "Benchmarks").

use candle_core::{DType, Device, Tensor};
use std::collections::HashMap;

use super::config::{Head, ModelConfig};
use super::weights::Weights;
use super::Result;

/// Every tensor the transformer reads for `cfg`, drawn from N(0, std^2) (norm weights 1).
pub fn random_weights(
    cfg: &ModelConfig,
    std: f64,
    dtype: DType,
    device: &Device,
) -> Result<Weights> {
    let (h, d, i) = (cfg.hidden_size, cfg.head_dim, cfg.intermediate_size);
    let (nh, nkv) = (cfg.num_attention_heads, cfg.num_key_value_heads);
    let mut shapes: Vec<(String, Vec<usize>)> = vec![
        ("model.embed_tokens.weight".into(), vec![cfg.vocab_size, h]),
        ("model.norm.weight".into(), vec![h]),
    ];
    for l in 0..cfg.num_hidden_layers {
        let p = format!("model.layers.{l}");
        shapes.push((format!("{p}.input_layernorm.weight"), vec![h]));
        shapes.push((format!("{p}.post_attention_layernorm.weight"), vec![h]));
        for (n, out, inp) in [
            ("q_proj", nh * d, h),
            ("k_proj", nkv * d, h),
            ("v_proj", nkv * d, h),
            ("o_proj", h, nh * d),
        ] {
            shapes.push((format!("{p}.self_attn.{n}.weight"), vec![out, inp]));
        }
        if cfg.qkv_bias {
            shapes.push((format!("{p}.self_attn.q_proj.bias"), vec![nh * d]));
            shapes.push((format!("{p}.self_attn.k_proj.bias"), vec![nkv * d]));
            shapes.push((format!("{p}.self_attn.v_proj.bias"), vec![nkv * d]));
        }
        if cfg.qk_norm {
            shapes.push((format!("{p}.self_attn.q_norm.weight"), vec![d]));
            shapes.push((format!("{p}.self_attn.k_norm.weight"), vec![d]));
        }
        for (n, out, inp) in [("gate_proj", i, h), ("up_proj", i, h), ("down_proj", h, i)] {
            shapes.push((format!("{p}.mlp.{n}.weight"), vec![out, inp]));
        }
    }
    match cfg.head {
        Head::CausalLm if !cfg.tie_word_embeddings => {
            shapes.push(("lm_head.weight".into(), vec![cfg.vocab_size, h]))
        }
        Head::SequenceClassification { num_labels } => {
            shapes.push(("score.weight".into(), vec![num_labels, h]))
        }
        _ => {}
    }
    let mut tensors = HashMap::new();
    for (name, shape) in shapes {
        let t = if name.ends_with("norm.weight") {
            Tensor::ones(shape, DType::F32, device)?
        } else {
            Tensor::randn(0f32, std as f32, shape, device)?
        };
        tensors.insert(name, t.to_dtype(dtype)?);
    }
    Ok(Weights::from_tensors(tensors, "random".into()))
}
