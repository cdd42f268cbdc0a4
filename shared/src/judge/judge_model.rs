//! The model of a model-based judge (`reward-model`, `pairrm`) as `--judge-model`, `--device`
//! and `--dtype` name it: found (a Hub id is downloaded) and fingerprinted when the judge's spec
//! is built, loaded only later if there is work.

use anyhow::Result;
use candle_core::{DType, Device};
use std::path::{Path, PathBuf};

use super::registry::ScoreSettings;
use crate::data::ModelRef;
use crate::model::{dtype_for, dtype_name, model_ref, parse_device, resolve_model};

pub(super) struct JudgeModel {
    /// `--judge-model` as given, for error messages.
    pub spec: String,
    pub dir: PathBuf,
    pub reference: ModelRef,
    pub device: Device,
    pub dtype: DType,
}

impl JudgeModel {
    pub fn resolve(s: &ScoreSettings) -> Result<Self> {
        let spec = s.judging.judge_model.clone().unwrap_or_default();
        let device = parse_device(&s.device)?;
        let dtype = dtype_for(s.dtype.as_deref(), &device)?;
        let dir = resolve_model(&spec)?;
        let reference = model_ref(&dir)?;
        Ok(JudgeModel {
            spec,
            dir,
            reference,
            device,
            dtype,
        })
    }

    /// The model's name in the `judge` column.
    pub fn name(&self) -> String {
        judge_model_name(&self.spec)
    }

    /// The dtype as fingerprints spell it (`f32`, `bf16`).
    pub fn dtype_name(&self) -> String {
        dtype_name(self.dtype)
    }
}

/// A judge model's name in the `judge` column: the directory's name, or the Hub id.
pub fn judge_model_name(spec: &str) -> String {
    let path = Path::new(spec);
    if path.is_dir() {
        if let Some(name) = path
            .canonicalize()
            .ok()
            .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
        {
            return name;
        }
    }
    spec.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_judge_model_is_named_by_its_folder_or_hub_id() {
        let dir = std::env::temp_dir().join(format!("rspo-judge-name-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("my-rm")).unwrap();
        // `..` and a trailing slash resolve to the folder's own name.
        let spec = format!("{}/my-rm/../my-rm/", dir.display());
        assert_eq!(judge_model_name(&spec), "my-rm");
        assert_eq!(judge_model_name("org/reward-model"), "org/reward-model");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
