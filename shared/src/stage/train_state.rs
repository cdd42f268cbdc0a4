//! The resumable state of a `train-step` run, in `.train-state/` under `--out`.
//!
//! Every `--state-every` optimizer steps the run saves `step-NNNNNN/`: the trainable parameters
//! (`params.safetensors`), the optimizer state (`optimizer.safetensors`), the train-log rows so
//! far (`log.parquet`, exact to the bit: a resumed run writes the bytes of an uninterrupted
//! one) and `state.json`: the run's fingerprint and the steps done. The folder is written atomically and older ones are removed after it, so
//! the latest complete state is always there. A run with the same fingerprint resumes from it;
//! the folder goes once the run's outputs are written.

use anyhow::{ensure, Context, Result};
use candle_core::{Device, Tensor};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

use crate::data::{read_rows, write_dir_atomically, write_rows, FileKind, FileMeta, TrainLogRow};
use crate::train::{Optimizer, TrainableModel};

const STATE_DIR: &str = ".train-state";
const STATE_FILE: &str = "state.json";
const PARAMS_FILE: &str = "params.safetensors";
const OPTIMIZER_FILE: &str = "optimizer.safetensors";
const LOG_FILE: &str = "log.parquet";
const STEP_PREFIX: &str = "step-";

/// The folder name of a saved state (`step-NNNNNN`); `None` for anything else.
fn saved_step_name(path: &Path) -> Option<&str> {
    path.file_name()
        .and_then(|n| n.to_str())
        .filter(|n| n.starts_with(STEP_PREFIX))
}

/// `state.json`.
#[derive(Serialize, Deserialize)]
struct SavedState {
    fingerprint: String,
    /// Optimizer steps completed.
    step: u64,
}

/// The state folder of one run: `--out` and the fingerprint of its settings and inputs.
pub struct TrainState {
    dir: PathBuf,
    fingerprint: String,
}

impl TrainState {
    pub fn new(out: &Path, fingerprint: &str) -> Self {
        TrainState {
            dir: out.join(STATE_DIR),
            fingerprint: fingerprint.to_string(),
        }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Removes every saved state (a finished run, or `--force`).
    pub fn remove(&self) -> Result<()> {
        if self.dir.exists() {
            std::fs::remove_dir_all(&self.dir)
                .with_context(|| format!("cannot remove {}", self.dir.display()))?;
        }
        Ok(())
    }

    /// Saves the state after `log.len()` steps as `step-NNNNNN/` and removes older ones.
    pub fn save(
        &self,
        log: &[TrainLogRow],
        trainable: &TrainableModel,
        optimizer: &Optimizer,
    ) -> Result<()> {
        let step = log.len() as u64;
        let name = format!("{STEP_PREFIX}{step:06}");
        let state = SavedState {
            fingerprint: self.fingerprint.clone(),
            step,
        };
        write_dir_atomically(&self.dir.join(&name), |dir| -> Result<()> {
            let params: HashMap<String, Tensor> = trainable.param_tensors().into_iter().collect();
            candle_core::safetensors::save(&params, dir.join(PARAMS_FILE))
                .with_context(|| format!("cannot write {}", dir.join(PARAMS_FILE).display()))?;
            optimizer.save(dir.join(OPTIMIZER_FILE))?;
            let meta = FileMeta::new(FileKind::TrainLog, "train-step", self.fingerprint.clone());
            write_rows(&dir.join(LOG_FILE), &meta, log)?;
            std::fs::write(dir.join(STATE_FILE), serde_json::to_vec(&state)?)
                .with_context(|| format!("cannot write {}", dir.join(STATE_FILE).display()))
        })?;
        for entry in std::fs::read_dir(&self.dir)? {
            let path = entry?.path();
            if saved_step_name(&path).is_some_and(|n| n != name) {
                std::fs::remove_dir_all(&path)?;
            }
        }
        Ok(())
    }

    /// Restores the parameters and the optimizer from the latest saved state of this run and
    /// returns its log; an empty log when there is none. `total`: the run's optimizer steps.
    pub fn resume(
        &self,
        trainable: &TrainableModel,
        optimizer: &mut Optimizer,
        device: &Device,
        total: usize,
    ) -> Result<Vec<TrainLogRow>> {
        let Some((dir, saved)) = self.latest() else {
            return Ok(Vec::new());
        };
        let params = candle_core::safetensors::load(dir.join(PARAMS_FILE), device)
            .with_context(|| format!("cannot read {}", dir.join(PARAMS_FILE).display()))?;
        trainable
            .set_params(&params)
            .with_context(|| format!("cannot resume from {}", dir.display()))?;
        optimizer
            .load(dir.join(OPTIMIZER_FILE))
            .with_context(|| format!("cannot resume from {}", dir.display()))?;
        let (_, log) = read_rows::<TrainLogRow>(&dir.join(LOG_FILE))
            .with_context(|| format!("cannot resume from {}", dir.display()))?;
        ensure!(
            optimizer.step_count() == saved.step && log.len() as u64 == saved.step,
            "{}: the saved state is inconsistent (optimizer at step {}, {} log rows, state.json \
             step {}); remove {} or run with --force",
            dir.display(),
            optimizer.step_count(),
            log.len(),
            saved.step,
            self.dir.display()
        );
        eprintln!(
            "train-step: resuming after step {} of {total} from {}",
            saved.step,
            dir.display()
        );
        Ok(log)
    }

    /// The latest complete saved state of this run (same fingerprint), if any. Temporaries of
    /// interrupted saves have other names and are never read.
    fn latest(&self) -> Option<(PathBuf, SavedState)> {
        let mut found: Option<(PathBuf, SavedState)> = None;
        for entry in std::fs::read_dir(&self.dir).ok()? {
            let Ok(entry) = entry else { continue };
            let path = entry.path();
            if saved_step_name(&path).is_none() {
                continue;
            }
            let Some(state) = std::fs::read(path.join(STATE_FILE))
                .ok()
                .and_then(|b| serde_json::from_slice::<SavedState>(&b).ok())
            else {
                continue;
            };
            if state.fingerprint == self.fingerprint
                && found.as_ref().is_none_or(|(_, s)| state.step > s.step)
            {
                found = Some((path, state));
            }
        }
        found
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `state.json`: the run's fingerprint and the steps done.
    const SAVED: &str = r#"{"fingerprint":"fp","step":1}"#;

    #[test]
    fn finds_the_latest_state_of_this_run_only() {
        let out = std::env::temp_dir().join(format!("rspo-train-state-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&out);
        let state = TrainState::new(&out, "fp");
        assert!(state.latest().is_none());
        let put = |name: &str, text: &str| {
            let dir = state.dir().join(name);
            std::fs::create_dir_all(&dir).unwrap();
            std::fs::write(dir.join(STATE_FILE), text).unwrap();
        };
        put("step-000001", SAVED);
        // Another run's state, a later temporary and a half-written file are not this run's.
        put("step-000002", &SAVED.replace("\"fp\"", "\"other\""));
        put(
            ".step-000003.tmp-1-0",
            &SAVED.replace("\"step\":1", "\"step\":3"),
        );
        put("step-000004", &SAVED[..20]);
        let (dir, saved) = state.latest().expect("the saved state");
        assert_eq!(dir, state.dir().join("step-000001"));
        assert_eq!(saved.step, 1);
        state.remove().unwrap();
        assert!(!state.dir().exists());
        std::fs::remove_dir_all(&out).ok();
    }
}
