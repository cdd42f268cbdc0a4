//! The key/value cache of a left-padded batch. It also owns the batch layout (each row's left
//! padding and the number of columns so far), from which positions and attention masks follow.
//!
//! Decoding reserves room for every column up front (`reserve`): each step then writes its
//! keys and values into the preallocated buffers in place and attention reads a narrowed view,
//! so no step allocates cache-sized tensors. Without a reservation (one-shot forwards, training)
//! the cache grows by concatenation.

use candle_core::{Device, Tensor};

use super::Result;

/// Cloning shares the tensors: a reserved cache's clones share its buffers, so only one of
/// them may be appended to.
#[derive(Clone)]
pub struct KvCache {
    /// Per layer (keys, values), (rows', kv_heads, columns', head_dim): the first `rows()` rows
    /// and `len` columns are live; a reserved cache has more columns (and, after rows left,
    /// more rows) than that.
    layers: Vec<Option<(Tensor, Tensor)>>,
    /// Per row: how many leading columns are padding.
    pad: Vec<usize>,
    /// Columns seen so far (padding included).
    len: usize,
    /// Columns reserved in place (0: none).
    capacity: usize,
}

impl KvCache {
    /// An empty cache for `num_layers` layers and rows with the given left padding.
    pub fn new(num_layers: usize, pad: Vec<usize>) -> Self {
        KvCache {
            layers: vec![None; num_layers],
            pad,
            len: 0,
            capacity: 0,
        }
    }

    /// Preallocates room for `capacity` columns in every layer (the columns so far are copied
    /// in once; a layer without keys yet gets its buffer at its first `append`). Later `append`s
    /// write in place.
    pub fn reserve(&mut self, capacity: usize) -> Result<()> {
        if capacity <= self.len.max(self.capacity) {
            return Ok(());
        }
        let (rows, len) = (self.rows(), self.len);
        for (k, v) in self.layers.iter_mut().flatten() {
            *k = reserved(&k.narrow(0, 0, rows)?.narrow(2, 0, len)?, capacity, 0)?;
            *v = reserved(&v.narrow(0, 0, rows)?.narrow(2, 0, len)?, capacity, 0)?;
        }
        self.capacity = capacity;
        Ok(())
    }

    /// Adds layer `i`'s keys and values (rows, kv_heads, t, head_dim) for the next `t` columns
    /// and returns the layer's keys and values so far (rows, kv_heads, len + t, head_dim). With
    /// room reserved and no gradient to track they are written in place and the result is a
    /// view of the buffers; otherwise the cache grows by concatenation.
    pub(crate) fn append(&mut self, i: usize, k: &Tensor, v: &Tensor) -> Result<(Tensor, Tensor)> {
        let (rows, past, t) = (self.rows(), self.len, k.dim(2)?);
        let in_place = past + t <= self.capacity && !k.track_op() && !v.track_op();
        let layer = &mut self.layers[i];
        if in_place && layer.is_none() {
            *layer = Some((
                reserved(k, self.capacity, past)?,
                reserved(v, self.capacity, past)?,
            ));
        } else if in_place {
            if let Some((kb, vb)) = layer.as_ref() {
                kb.narrow(0, 0, rows)?
                    .slice_set(&k.contiguous()?, 2, past)?;
                vb.narrow(0, 0, rows)?
                    .slice_set(&v.contiguous()?, 2, past)?;
            }
        } else {
            let grown = match layer.take() {
                Some((pk, pv)) => {
                    let live = |b: &Tensor| b.narrow(0, 0, rows)?.narrow(2, 0, past);
                    (
                        Tensor::cat(&[&live(&pk)?, k], 2)?,
                        Tensor::cat(&[&live(&pv)?, v], 2)?,
                    )
                }
                None => (k.clone(), v.clone()),
            };
            *layer = Some(grown);
        }
        let (kb, vb) = layer.as_ref().expect("set above");
        let view = |b: &Tensor| b.narrow(0, 0, rows)?.narrow(2, 0, past + t);
        Ok((view(kb)?, view(vb)?))
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

    pub(crate) fn advance(&mut self, t: usize) {
        self.len += t;
    }

    /// Keeps only the given rows (in that order): finished sequences stop costing compute.
    pub fn retain_rows(&mut self, rows: &[usize]) -> Result<()> {
        if rows.len() == self.rows() && rows.iter().enumerate().all(|(i, &r)| i == r) {
            return Ok(());
        }
        if self.capacity > 0 && rows.windows(2).all(|w| w[0] < w[1]) {
            return self.compact_rows(rows);
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
        if drop > 0 && self.capacity == 0 {
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

    /// Moves the kept rows (ascending) to the front of the reserved buffers, one row at a time:
    /// row i's source is at or after i, so nothing is overwritten before it moves. The padding
    /// columns stay (the buffers keep their shape).
    fn compact_rows(&mut self, rows: &[usize]) -> Result<()> {
        for (i, &r) in rows.iter().enumerate() {
            if r == i {
                continue;
            }
            for (k, v) in self.layers.iter().flatten() {
                for b in [k, v] {
                    b.slice_set(&b.narrow(0, r, 1)?.copy()?, 0, i)?;
                }
            }
        }
        self.pad = rows.iter().map(|&r| self.pad[r]).collect();
        Ok(())
    }

    /// Puts a single-row cache (no padding) into row `row`, as its last columns: the row's
    /// earlier occupant is forgotten (its columns become this row's padding, which attention
    /// never reads). Needs room reserved and no more columns than the batch has so far.
    pub fn replace_row(&mut self, row: usize, single: &KvCache) -> Result<()> {
        let p = single.len;
        assert!(
            self.capacity > 0 && p <= self.len && row < self.rows(),
            "replace_row: row {row} of {}, {p} columns into {} (capacity {})",
            self.rows(),
            self.len,
            self.capacity
        );
        for (mine, theirs) in self.layers.iter().zip(&single.layers) {
            if let (Some((kb, vb)), Some((k, v))) = (mine, theirs) {
                let slot = |b: &Tensor| b.narrow(0, row, 1);
                slot(kb)?.slice_set(&k.narrow(2, 0, p)?.contiguous()?, 2, self.len - p)?;
                slot(vb)?.slice_set(&v.narrow(2, 0, p)?.contiguous()?, 2, self.len - p)?;
            }
        }
        self.pad[row] = self.len - p;
        Ok(())
    }

    /// Columns reserved in place (0: none).
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Drops up to `at_most` leading columns that are padding for every row, moving the rest
    /// to the front of the reserved buffers (one copy of the live columns): a batch whose rows
    /// keep being replaced gets its room back. Returns how many columns went.
    pub fn drop_leading_padding(&mut self, at_most: usize) -> Result<usize> {
        let drop = self.min_pad().min(at_most);
        if drop == 0 {
            return Ok(0);
        }
        let (rows, keep) = (self.rows(), self.len - drop);
        for (k, v) in self.layers.iter().flatten() {
            for b in [k, v] {
                // A copy of its own: the source and the target overlap.
                let live = b.narrow(0, 0, rows)?.narrow(2, drop, keep)?;
                let live = if live.is_contiguous() {
                    live.copy()?
                } else {
                    live.contiguous()?
                };
                b.narrow(0, 0, rows)?.slice_set(&live, 2, 0)?;
            }
        }
        self.pad.iter_mut().for_each(|p| *p -= drop);
        self.len = keep;
        Ok(drop)
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

/// A zeroed (rows, heads, capacity, head_dim) buffer holding `t` from column `at` on.
fn reserved(t: &Tensor, capacity: usize, at: usize) -> Result<Tensor> {
    let (rows, h, _, d) = t.dims4()?;
    let buf = Tensor::zeros((rows, h, capacity, d), t.dtype(), t.device())?;
    buf.slice_set(&t.contiguous()?, 2, at)?;
    Ok(buf)
}

impl KvCache {
    /// Joins single-row caches (no padding) into one left-padded batch cache of `width`
    /// columns, or as many as the longest row has if that is more.
    pub fn stack(rows: &[KvCache], width: usize) -> Result<Self> {
        let num_layers = rows.first().map_or(0, |c| c.layers.len());
        let total = rows.iter().map(|c| c.len).max().unwrap_or(0).max(width);
        let pad: Vec<usize> = rows.iter().map(|c| total - c.len).collect();
        let mut layers = Vec::with_capacity(num_layers);
        for l in 0..num_layers {
            let mut ks = Vec::with_capacity(rows.len());
            let mut vs = Vec::with_capacity(rows.len());
            for (c, &p) in rows.iter().zip(&pad) {
                let Some((k, v)) = &c.layers[l] else {
                    return Ok(KvCache::new(num_layers, pad));
                };
                let (k, v) = (&k.narrow(2, 0, c.len)?, &v.narrow(2, 0, c.len)?);
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
            capacity: 0,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn step(rows: usize, t: usize, seed: f64) -> Tensor {
        Tensor::arange(0f32, (rows * 2 * t * 4) as f32, &Device::Cpu)
            .unwrap()
            .affine(0.01, seed)
            .unwrap()
            .reshape((rows, 2, t, 4))
            .unwrap()
    }

    #[test]
    fn reserved_cache_writes_in_place_and_reads_what_concatenation_gives() {
        let mut grown = KvCache::new(1, vec![0, 1, 0]);
        let mut reserved = KvCache::new(1, vec![0, 1, 0]);
        let (k0, v0) = (step(3, 5, 0.0), step(3, 5, 1.0));
        grown.append(0, &k0, &v0).unwrap();
        reserved.append(0, &k0, &v0).unwrap();
        grown.advance(5);
        reserved.advance(5);
        reserved.reserve(9).unwrap();
        let buffer = reserved.layers[0].as_ref().unwrap().0.id();
        for s in 0..4 {
            let (k, v) = (
                step(grown.rows(), 1, s as f64),
                step(grown.rows(), 1, -(s as f64)),
            );
            let a = grown.append(0, &k, &v).unwrap();
            let b = reserved.append(0, &k, &v).unwrap();
            grown.advance(1);
            reserved.advance(1);
            for (x, y) in [(&a.0, &b.0), (&a.1, &b.1)] {
                assert_eq!(x.dims(), y.dims());
                assert_eq!(crate::model::max_abs_diff(x, y), 0.0);
            }
            // The reserved buffers are the same tensors throughout: written in place.
            assert_eq!(reserved.layers[0].as_ref().unwrap().0.id(), buffer);
            if s == 1 {
                // Row 1 finishes: both caches keep rows 0 and 2.
                grown.retain_rows(&[0, 2]).unwrap();
                reserved.retain_rows(&[0, 2]).unwrap();
                assert_eq!(reserved.layers[0].as_ref().unwrap().0.id(), buffer);
            }
        }
        assert_eq!(reserved.len(), 9);
        // Past the reservation the cache grows by concatenation again.
        let (k, v) = (step(2, 1, 9.0), step(2, 1, 9.0));
        let (k_all, _) = reserved.append(0, &k, &v).unwrap();
        assert_eq!(k_all.dims(), &[2, 2, 10, 4]);
    }
}
