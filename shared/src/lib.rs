//! RSPO: Regularized Self-Play Policy Optimization (arXiv 2503.00030).
//!
//! The library behind the five pipeline stages. One folder per concern:
//! - [`model`]: Hugging Face checkpoints, the one differentiable transformer, chat templates.
//! - [`data`]: the Parquet contracts between stages, fingerprints, atomic writes.
//! - [`judge`]: preference models and win rates.
//! - [`train`]: the RSPO loss and the optimizers.
//! - [`eval`]: evaluation metrics.
//! - [`stage`]: the five pipeline stages, as functions the binaries call.

pub mod data;
pub mod eval;
pub mod hub;
pub mod judge;
pub mod model;
pub mod stage;
pub mod train;

/// The crate version written into every output file (`rspo.version`).
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
