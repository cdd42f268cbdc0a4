//! Training: the RSPO loss.
//!
//! - [`regularizer`]: the terms (`reverse_kl`, `forward_kl_is`, `chi2`, `forward_kl`), their
//!   `KIND=COEF[,clip=C]` syntax and the presets `sppo` and `rspo-paper`.
//! - [`selection`]: which samples enter the loss (`best_worst` or `all`).
//! - [`loss`]: [`rspo_loss`], the self-play square loss plus the regularizers (DESIGN.md,
//!   "The RSPO loss"), computed in f64 on sequence log-probs.

pub mod loss;
pub mod regularizer;
pub mod selection;

pub use loss::{rspo_loss, LossError, LossParts};
pub use regularizer::{
    parse_regularizers, Preset, Regularizer, RegularizerError, Term, DEFAULT_CLIP,
};
pub use selection::{Scored, Selection, SelectionError};
