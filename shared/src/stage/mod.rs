//! The pipeline stages as library functions: each binary in `bins/` parses its flags and calls
//! one function here. What they share: settings from `--config` TOML with flag overrides, the
//! fingerprint that makes a finished stage a no-op, progress reporting.

mod context;
pub mod estimate_winrate;
pub mod evaluate;
pub mod generate;
mod output_lock;
mod progress;
mod report_html;
pub mod score;
mod settings;
pub mod shard;
pub mod study;
mod train_state;
pub mod train_step;

pub use context::{content_config, Outcome, StageOutput};
pub use progress::Progress;
pub use settings::{
    flag_given, known_sections, make_variables, parse_command_line, PipelineFile, PipelineSettings,
    Settings, SlurmSettings, StageFlags,
};
