//! Training: the RSPO loss and what a train step needs around it.
//!
//! - [`regularizer`]: the terms (`reverse_kl`, `forward_kl_is`, `chi2`, `forward_kl`, and the
//!   official code's `chisqsm1`, `entropy`, `reverseklnoent`), their `KIND=COEF[,clip=C]` syntax
//!   and the presets `sppo` and `rspo-paper`.
//! - [`selection`]: which samples enter the loss (`best_worst` or `all`).
//! - [`loss`]: every term of the RSPO loss (DESIGN.md, "The RSPO loss"), computed in f64:
//!   [`LossSpec`] (beta and the regularizers, validated), [`StepLoss`] (a step's loss from
//!   micro-batch shares) and [`rspo_loss`] (the loss of one batch).
//! - [`optim`]: AdamW and RMSprop as PyTorch's, one rayon pass over f32 slices per parameter,
//!   f32 master weights for bf16 parameters, state save/resume.
//! - [`clip`]: global gradient-norm clipping as `torch.nn.utils.clip_grad_norm_`.
//! - [`schedule`]: linear warmup and decay as Hugging Face's `get_linear_schedule_with_warmup`.
//! - [`batch`]: training examples (a prompt with its selected samples), the seeded step plan,
//!   and [`step_gradients`], the loss and gradients of one optimizer step over micro-batches.
//! - [`truncation`]: `--max-length`/`--max-prompt-length`, cut as the official trainer does.
//! - [`trainable_model`]: the model being trained (full or LoRA), mixed precision.
//! - [`model_writer`]: the trained model written back as a Hugging Face or PEFT directory.
//! - [`lora`]: LoRA adapters as PEFT initialises, saves and merges them.
//!
//! A train step: [`step_gradients`] (sequence log-probs of the step's selected samples, then
//! the [`StepLoss`] share and `backward` per micro-batch), [`clip_grad_norm`], [`Optimizer::step`] with
//! [`LinearSchedule::lr`] of the step index.

pub mod adamw;
pub mod batch;
pub mod clip;
mod f32_slice;
pub mod lora;
pub mod loss;
pub mod model_writer;
pub mod optim;
pub mod regularizer;
pub mod rmsprop;
mod rng;
pub mod schedule;
pub mod selection;
pub mod trainable_model;
pub mod truncation;

pub use adamw::AdamWConfig;
pub use batch::{
    build_examples, plan_steps, step_gradients, step_gradients_with, BatchError, Example,
    ExampleInputs, RefSample, StepGradients, StepOptions, StepPlan, TrainSample,
};
pub use clip::{clip_grad_norm, grad_norm, ClipError};
pub use lora::{LoraError, LoraSpec};
pub use loss::{rspo_loss, LossError, LossParts, LossSpec, LossValues, SampleLogprobs, StepLoss};
pub use model_writer::{write_adapter_dir, write_model_dir, ModelWriteError};
pub use optim::{OptimError, Optimizer, OptimizerKind};
pub use regularizer::{
    parse_regularizers, ForwardKlNorm, Preset, Regularizer, RegularizerError, Term, DEFAULT_CLIP,
};
pub use rmsprop::RmsPropConfig;
pub use schedule::{LinearSchedule, ScheduleError};
pub use selection::{Scored, Selection, SelectionError};
pub use trainable_model::{TrainableModel, TrainableModelError};
pub use truncation::{Truncated, Truncation, TruncationError};
