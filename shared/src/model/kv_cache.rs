//! The key/value cache of a left-padded batch. It also owns the batch layout (each row's left
//! padding and the number of columns so far), from which positions and attention masks follow.

use candle_core::{Device, Tensor};

use super::Result;

#[derive(Clone)]
pub struct KvCache {
    layers: Vec<Option<(Tensor, Tensor)>>,
    /// Per row: how many leading columns are padding.
    pad: Vec<usize>,
    /// Columns seen so far (padding included).
    len: usize,
}

impl KvCache {
    /// An empty cache for `num_layers` layers and rows with the given left padding.
    pub fn new(num_layers: usize, pad: Vec<usize>) -> Self {
        KvCache {
            layers: vec![None; num_layers],
            pad,
            len: 0,
        }
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn rows(&self) -> usize {
        self.pad.len()
    }

    pub fn pad(&self, row: usize) -> usize {
        self.pad[row]
    }

    pub(crate) fn min_pad(&self) -> usize {
        self.pad.iter().copied().min().unwrap_or(0)
    }

    pub(crate) fn layer_mut(&mut self, i: usize) -> &mut Option<(Tensor, Tensor)> {
        &mut self.layers[i]
    }

    pub(crate) fn advance(&mut self, t: usize) {
        self.len += t;
    }

    /// Keeps only the given rows (in that order): finished sequences stop costing compute.
    pub fn retain_rows(&mut self, rows: &[usize]) -> Result<()> {
        if rows.len() == self.rows() && rows.iter().enumerate().all(|(i, &r)| i == r) {
            return Ok(());
        }
        let dev = self
            .layers
            .iter()
            .flatten()
            .next()
            .map(|(k, _)| k.device().clone());
        if let Some(dev) = dev {
            let idx = Tensor::from_vec(
                rows.iter().map(|&r| r as u32).collect::<Vec<_>>(),
                rows.len(),
                &dev,
            )?;
            for layer in self.layers.iter_mut().flatten() {
                *layer = (
                    layer.0.index_select(&idx, 0)?,
                    layer.1.index_select(&idx, 0)?,
                );
            }
        }
        self.pad = rows.iter().map(|&r| self.pad[r]).collect();
        // Columns that are padding for every remaining row can go.
        let drop = self.min_pad();
        if drop > 0 {
            for layer in self.layers.iter_mut().flatten() {
                let keep = layer.0.dim(2)? - drop;
                *layer = (
                    layer.0.narrow(2, drop, keep)?.contiguous()?,
                    layer.1.narrow(2, drop, keep)?.contiguous()?,
                );
            }
            self.pad.iter_mut().for_each(|p| *p -= drop);
            self.len -= drop;
        }
        Ok(())
    }

    /// Additive mask (rows, 1, t, len + t) for the next `t` columns: a query sees keys at or
    /// before its column, never padding, and with a window only keys less than `window`
    /// positions back. A padding query sees only itself, which keeps its softmax finite.
    pub fn attention_mask(&self, t: usize, window: Option<usize>, dev: &Device) -> Result<Tensor> {
        let total = self.len + t;
        let b = self.rows();
        let mut mask = vec![f32::NEG_INFINITY; b * t * total];
        for r in 0..b {
            let pad = self.pad[r];
            for qi in 0..t {
                let q = self.len + qi;
                let row = &mut mask[(r * t + qi) * total..(r * t + qi + 1) * total];
                if q < pad {
                    row[q] = 0.0;
                    continue;
                }
                let lo = match window {
                    Some(w) => pad.max((q + 1).saturating_sub(w)),
                    None => pad,
                };
                row[lo..=q].iter_mut().for_each(|m| *m = 0.0);
            }
        }
        Ok(Tensor::from_vec(mask, (b, 1, t, total), dev)?)
    }
}

impl KvCache {
    /// Joins single-row caches (no padding) into one left-padded batch cache.
    pub fn stack(rows: &[KvCache]) -> Result<Self> {
        let num_layers = rows.first().map_or(0, |c| c.layers.len());
        let total = rows.iter().map(|c| c.len).max().unwrap_or(0);
        let pad: Vec<usize> = rows.iter().map(|c| total - c.len).collect();
        let mut layers = Vec::with_capacity(num_layers);
        for l in 0..num_layers {
            let mut ks = Vec::with_capacity(rows.len());
            let mut vs = Vec::with_capacity(rows.len());
            for (c, &p) in rows.iter().zip(&pad) {
                let Some((k, v)) = &c.layers[l] else {
                    return Ok(KvCache::new(num_layers, pad));
                };
                let left = |t: &Tensor| -> Result<Tensor> {
                    if p == 0 {
                        return Ok(t.clone());
                    }
                    let (b, h, _, d) = t.dims4()?;
                    let zeros = Tensor::zeros((b, h, p, d), t.dtype(), t.device())?;
                    Ok(Tensor::cat(&[&zeros, t], 2)?)
                };
                ks.push(left(k)?);
                vs.push(left(v)?);
            }
            layers.push(Some((Tensor::cat(&ks, 0)?, Tensor::cat(&vs, 0)?)));
        }
        Ok(KvCache {
            layers,
            pad,
            len: total,
        })
    }
}
