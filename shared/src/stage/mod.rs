//! The pipeline stages as library functions: each binary in `bins/` parses its flags and calls
//! one function here. What they share: settings from `--config` TOML with flag overrides, the
//! fingerprint that makes a finished stage a no-op, models and devices, progress reporting.

mod context;
pub mod evaluate;
pub mod generate;
mod progress;
mod prompt_extras;
pub mod score;
mod score_constraints;
mod settings;
pub mod train_step;
pub mod winrate;

pub use context::{content_config, model_ref, parse_device, resolve_model, Outcome, StageOutput};
pub use progress::Progress;
pub use settings::{load_section, set, Settings};
