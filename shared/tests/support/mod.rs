//! Shared by the integration tests that compare against the reference fixtures: where the
//! fixtures are and which device the tests run on.
//!
//! - `RSPO_FIXTURES`: the fixtures folder (default: the repo's `tests/fixtures`, located at
//!   compile time). `scripts/gpu-check.sh` sets it, since the test executables it runs were
//!   built on another machine.
//! - `RSPO_TEST_DEVICE`: `cpu` (default), `cuda` or `cuda:N`: the device the parity tests run
//!   their models on.
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

/// The device named by `RSPO_TEST_DEVICE`; a test run that names one it cannot open fails
/// rather than falling back, so a GPU check never silently checks the CPU.
pub fn test_device() -> Device {
    let spec = std::env::var("RSPO_TEST_DEVICE").unwrap_or_else(|_| "cpu".into());
    rspo::model::parse_device(&spec).unwrap_or_else(|e| panic!("RSPO_TEST_DEVICE={spec}: {e:#}"))
}
