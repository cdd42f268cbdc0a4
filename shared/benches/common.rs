//! Shared by the benchmarks: the 40M benchmark shape with random weights, and peak memory.

use candle_core::{DType, Device};
use rspo::model::{random_weights, ModelConfig, Transformer};

/// The benchmark model (bench/bench-40m.config.json) with random weights.
pub fn bench_model(head_json: Option<&str>) -> Transformer {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../bench/bench-40m.config.json"
    );
    let mut json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(path).expect("bench config")).expect("json");
    if let Some(arch) = head_json {
        json["architectures"] = serde_json::json!([arch]);
        json["num_labels"] = serde_json::json!(1);
    }
    let cfg = ModelConfig::from_json(&json.to_string()).expect("config");
    let w = random_weights(&cfg, 0.02, DType::F32, &Device::Cpu).expect("weights");
    Transformer::new(cfg, &w).expect("model")
}

/// Peak resident memory of this process so far (VmHWM), in MiB.
pub fn peak_rss_mib() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|kb| kb.parse::<f64>().ok())
        .map_or(f64::NAN, |kb| kb / 1024.0)
}
