//! Access to a tensor's values as one contiguous f32 slice, for the optimizer and clipping passes.
//!
//! These passes run over the raw `&[f32]` with rayon instead of building candle tensor
//! expressions (DESIGN.md, "Performance notes").

use candle_core::{DType, Device, Shape, Storage, Tensor};

/// Elements per rayon task in the slice passes.
pub(crate) const CHUNK: usize = 1 << 14;

/// Runs `f` on the tensor's values as a contiguous f32 slice in row-major order: borrowed when the
/// tensor is a contiguous f32 CPU tensor, converted (a copy) otherwise.
pub(crate) fn with_f32_slice<R>(
    tensor: &Tensor,
    f: impl FnOnce(&[f32]) -> R,
) -> candle_core::Result<R> {
    if tensor.dtype() == DType::F32 && tensor.device().is_cpu() {
        let (storage, layout) = tensor.storage_and_layout();
        if let (Storage::Cpu(cpu), Some((start, end))) = (&*storage, layout.contiguous_offsets()) {
            let data = cpu.as_slice::<f32>()?;
            return Ok(f(&data[start..end]));
        }
    }
    let values = tensor
        .to_dtype(DType::F32)?
        .flatten_all()?
        .to_vec1::<f32>()?;
    Ok(f(&values))
}

/// A tensor of the given dtype and device holding `values` (f32, row-major).
pub(crate) fn tensor_from_f32(
    values: Vec<f32>,
    shape: &Shape,
    dtype: DType,
    device: &Device,
) -> candle_core::Result<Tensor> {
    Tensor::from_vec(values, shape, &Device::Cpu)?
        .to_dtype(dtype)?
        .to_device(device)
}
