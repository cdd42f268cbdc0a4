//! `--config pipelines/X.toml` holds a section per stage (`[generate]`, `[score]`, ...); flags
//! given on the command line override it; what neither sets takes the stage's default.

use anyhow::{Context, Result};
use serde::de::DeserializeOwned;
use std::path::Path;

/// The `[section]` of a pipeline config, or an empty table without `--config`.
pub fn load_section(config: Option<&Path>, section: &str) -> Result<toml::Table> {
    let Some(path) = config else {
        return Ok(toml::Table::new());
    };
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read --config {}", path.display()))?;
    let mut doc: toml::Table = text
        .parse()
        .with_context(|| format!("--config {}: not valid TOML", path.display()))?;
    match doc.remove(section) {
        None => Ok(toml::Table::new()),
        Some(toml::Value::Table(t)) => Ok(t),
        Some(other) => anyhow::bail!(
            "--config {}: `{section}` is a {}, expected a [{section}] table",
            path.display(),
            other.type_str()
        ),
    }
}

/// A stage's settings: defaults, then the config section, then flags.
pub trait Settings: DeserializeOwned + Default {
    /// The config section name (`generate`, `score`, ...).
    const SECTION: &'static str;

    fn from_config(config: Option<&Path>) -> Result<Self> {
        let table = load_section(config, Self::SECTION)?;
        let where_ = config.map(|p| p.display().to_string()).unwrap_or_default();
        toml::Value::Table(table)
            .try_into()
            .with_context(|| format!("--config {where_}: section [{}]", Self::SECTION))
    }
}

/// Overrides `target` with a flag's value when the flag was given.
pub fn set<T>(target: &mut T, flag: Option<T>) {
    if let Some(v) = flag {
        *target = v;
    }
}
