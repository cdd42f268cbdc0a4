//! Shared by the integration tests that compare against the reference fixtures: where the
//! fixtures are and which device the tests run on.
//!
//! - `RSPO_FIXTURES`: the fixtures folder (default: the repo's `tests/fixtures`, located at
//!   compile time). `scripts/gpu-check.sh` sets it, since the test executables it runs were
//!   built on another machine.
//! - `RSPO_TEST_DEVICE`: `cpu` (default), `cuda` or `cuda:N`: the device the parity tests run
//!   their models on.
//! - `RSPO_SMOLLM2_GGUF`: the real model of the real-model tests (default: where
//!   `make fetch-smollm2` puts it, `.cache/smollm2-135m/` in the repo).
//!
//! The end-to-end tests (tests/smollm2.rs) include this file too.
#![allow(dead_code)]

use candle_core::Device;
use std::path::PathBuf;

pub fn fixtures_dir() -> PathBuf {
    match std::env::var_os("RSPO_FIXTURES") {
        Some(dir) => PathBuf::from(dir),
        None => PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures"),
    }
}

pub fn fixture(name: &str) -> PathBuf {
    fixtures_dir().join(name)
}

/// The tiny policy fixtures, one per architecture and tokenizer the model code supports.
pub const TINY_POLICIES: [&str; 5] = [
    "tiny-llama",
    "tiny-llama3",
    "tiny-mistral",
    "tiny-qwen2",
    "tiny-qwen3",
];

/// The device named by `RSPO_TEST_DEVICE`; a test run that names one it cannot open fails
/// rather than falling back, so a GPU check never silently checks the CPU.
pub fn test_device() -> Device {
    let spec = std::env::var("RSPO_TEST_DEVICE").unwrap_or_else(|_| "cpu".into());
    rspo::model::parse_device(&spec).unwrap_or_else(|e| panic!("RSPO_TEST_DEVICE={spec}: {e:#}"))
}

/// SmolLM2-135M-Instruct's GGUF, or None when it is absent: the tests that need it then skip
/// with a message, except under CI=true, where its absence fails them.
pub fn smollm2_gguf() -> Option<PathBuf> {
    let path = std::env::var_os("RSPO_SMOLLM2_GGUF").map_or_else(
        || {
            PathBuf::from(env!("CARGO_MANIFEST_DIR"))
                .join("../.cache/smollm2-135m/SmolLM2-135M-Instruct.Q4_1.gguf")
        },
        PathBuf::from,
    );
    if path.is_file() {
        return Some(path);
    }
    let message = format!(
        "{} is missing: run `make fetch-smollm2` for the real-model tests",
        path.display()
    );
    assert!(std::env::var("CI").as_deref() != Ok("true"), "{message}");
    eprintln!("SKIPPED: {message}");
    None
}

/// A fixture's `expected.json` (`name` is its folder, e.g. `smollm2-135m`).
pub fn expected_json(name: &str) -> serde_json::Value {
    fixture_json(name, "expected.json")
}

/// A JSON file of a fixture's folder.
pub fn fixture_json(name: &str, file: &str) -> serde_json::Value {
    let text = std::fs::read_to_string(fixture(name).join(file)).unwrap();
    serde_json::from_str(&text).unwrap()
}

/// A JSON list of token ids.
pub fn ids(v: &serde_json::Value) -> Vec<u32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as u32)
        .collect()
}
