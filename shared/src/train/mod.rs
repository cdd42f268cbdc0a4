//! Training: the RSPO loss and what a train step needs around it.
//!
//! - [`regularizer`]: the terms (`reverse_kl`, `forward_kl_is`, `chi2`, `forward_kl`), their
//!   `KIND=COEF[,clip=C]` syntax and the presets `sppo` and `rspo-paper`.
//! - [`selection`]: which samples enter the loss (`best_worst` or `all`).
//! - [`loss`]: [`rspo_loss`], the self-play square loss plus the regularizers (DESIGN.md,
//!   "The RSPO loss"), computed in f64 on sequence log-probs.
//! - [`optim`]: AdamW and RMSprop as PyTorch's, one rayon pass over f32 slices per parameter,
//!   f32 master weights for bf16 parameters, state save/resume.
//! - [`clip`]: global gradient-norm clipping as `torch.nn.utils.clip_grad_norm_`.
//! - [`schedule`]: linear warmup and decay as Hugging Face's `get_linear_schedule_with_warmup`.
//!
//! A train step: select samples, compute their sequence log-probs with the model, call
//! [`rspo_loss`], `backward`, [`clip_grad_norm`], [`Optimizer::step`] with
//! [`LinearSchedule::lr`] of the step index.

pub mod adamw;
pub mod clip;
mod f32_slice;
pub mod loss;
pub mod optim;
pub mod regularizer;
pub mod rmsprop;
pub mod schedule;
pub mod selection;

pub use adamw::AdamWConfig;
pub use clip::{clip_grad_norm, grad_norm, ClipError};
pub use loss::{rspo_loss, LossError, LossParts};
pub use optim::{OptimError, Optimizer, OptimizerKind};
pub use regularizer::{
    parse_regularizers, Preset, Regularizer, RegularizerError, Term, DEFAULT_CLIP,
};
pub use rmsprop::RmsPropConfig;
pub use schedule::{LinearSchedule, ScheduleError};
pub use selection::{Scored, Selection, SelectionError};
