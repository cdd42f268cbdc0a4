//! Hugging Face checkpoints and the one differentiable transformer every stage runs.
//!
//! - [`Checkpoint`]: a model directory (config, weights, tokenizer, chat template), or a GGUF
//!   file read as the equivalent one ([`GgufModel`]), or a PEFT LoRA adapter folder read as its
//!   base with the adapter merged in ([`PeftAdapter`]).
//! - [`Transformer`]: the Llama-family decoder with a causal-LM or reward head.
//! - [`teacher_forced_logprobs`]: per-token log-probs of responses, chunked over the vocabulary.
//! - [`CheckpointedPass`]: activation checkpointing, a training pass that recomputes each layer
//!   in its backward pass.
//! - [`resolve_model`], [`model_ref`], [`parse_device`], [`dtype_for`]: a model as the command
//!   line names it, its identity for fingerprints, and where and in what precision it runs.
//! - [`cpu_tuning::run_model_work`]: allocator and thread settings every binary that runs a
//!   model applies first, and the thread its work then runs on.

mod chat_template;
mod checkpoint;
mod config;
pub mod cpu_tuning;
mod decode_attention;
mod device;
mod device_sampling;
mod error;
mod fused;
mod generation;
mod gguf;
mod gguf_tokenizer;
mod kv_cache;
mod layer_recompute;
mod logprobs;
pub mod ops;
pub mod peft;
mod random_init;
mod resolve;
pub mod sampling;
mod simd;
mod transformer;
mod weights;

pub use chat_template::ChatTemplate;
pub use checkpoint::Checkpoint;
pub use config::{Arch, Head, ModelConfig, RopeScaling};
pub use device::{dtype_for, dtype_name, parse_device};
pub use device_sampling::sample_on_device;
pub use error::{ModelError, Result};
pub use generation::{
    generate, generate_continuously, generate_with, DecodeOptions, Finish, GenerationOutput,
    GenerationRequest, Sampler,
};
pub use gguf::{gguf_file, GgufModel};
pub use kv_cache::KvCache;
pub use layer_recompute::CheckpointedPass;
pub use logprobs::{
    hidden_states, left_pad, logprobs_from_hidden, sequence_scores, sequences,
    teacher_forced_logprobs, PromptResponse, ResponseLogprobs,
};
pub use peft::{is_adapter_dir, PeftAdapter};
pub use random_init::random_weights;
pub use resolve::{model_ref, resolve_model};
pub use sampling::{sampling_distribution, RowRng, SamplingParams};
pub use transformer::{Linear, LoraAdapter, Transformer};
pub use weights::{save_safetensors, weight_files, Weights};

/// The largest absolute difference between two tensors' values (any shape and float dtype), for
/// the kernels' tests.
#[cfg(test)]
pub(crate) fn max_abs_diff(a: &candle_core::Tensor, b: &candle_core::Tensor) -> f64 {
    (a - b)
        .and_then(|d| {
            d.abs()?
                .flatten_all()?
                .max(0)?
                .to_dtype(candle_core::DType::F64)?
                .to_scalar::<f64>()
        })
        .expect("tensors of the same shape and dtype")
}
