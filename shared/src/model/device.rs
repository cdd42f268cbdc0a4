//! Where and in what precision a model runs: `--device` and `--dtype` as every model stage
//! (generate, score's and evaluate's judges, train-step) reads them.

use anyhow::{bail, Context, Result};
use candle_core::{DType, Device};

/// `cpu`, `cuda` or `cuda:N`.
pub fn parse_device(spec: &str) -> Result<Device> {
    match spec {
        "cpu" => Ok(Device::Cpu),
        s if s == "cuda" || s.starts_with("cuda:") => {
            let ordinal: usize = match s.strip_prefix("cuda:") {
                Some(n) => n
                    .parse()
                    .with_context(|| format!("--device {s}: expected cuda:N with N a number"))?,
                None => 0,
            };
            new_cuda(ordinal).with_context(|| {
                if cfg!(feature = "cuda") {
                    format!("--device {s}: cannot open CUDA device {ordinal}")
                } else {
                    format!("--device {s}: CUDA is not available (build with --features cuda)")
                }
            })
        }
        other => bail!("--device {other}: expected cpu, cuda or cuda:N"),
    }
}

/// `Device::new_cuda`, with a missing library as an error: the CUDA build loads libcuda,
/// cuBLAS and cuRAND when a device is first opened (cudarc's dynamic loading, so the binary
/// also starts on machines without them), and cudarc panics when one cannot be found.
fn new_cuda(ordinal: usize) -> Result<Device> {
    let hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {}));
    let opened = std::panic::catch_unwind(|| Device::new_cuda(ordinal));
    std::panic::set_hook(hook);
    match opened {
        Ok(device) => Ok(device?),
        Err(payload) => {
            let message = payload
                .downcast_ref::<String>()
                .map(String::as_str)
                .or_else(|| payload.downcast_ref::<&str>().copied())
                .unwrap_or("a CUDA library could not be loaded");
            bail!("{message}")
        }
    }
}

/// The precision `--dtype` names; without one, bf16 on CUDA and f32 on CPU.
pub fn dtype_for(setting: Option<&str>, device: &Device) -> Result<DType> {
    match setting {
        None if device.is_cuda() => Ok(DType::BF16),
        None | Some("f32") | Some("float32") => Ok(DType::F32),
        Some("bf16") | Some("bfloat16") => Ok(DType::BF16),
        Some(other) => bail!("--dtype {other}: expected f32 or bf16"),
    }
}

/// A dtype as settings and fingerprints spell it: `f32`, `bf16`.
pub fn dtype_name(dtype: DType) -> String {
    format!("{dtype:?}").to_lowercase()
}
