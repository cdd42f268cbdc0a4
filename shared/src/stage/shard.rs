//! Sharding: `--shard I/N` runs a stage on the I-th of N contiguous slices of its prompts, and
//! [`merge`] joins the N outputs into the file an unsharded run writes, byte for byte. Rows are
//! seeded per prompt and sample (never per position), so a slice computes exactly its part of
//! the whole. `generate sample`, `generate logprobs` and `score` shard this way.

use super::output_lock::lock_outputs;
use anyhow::{ensure, Context, Result};
use std::path::{Path, PathBuf};

use super::context::Outcome;
use crate::data::{
    read_meta, read_rows_or_shard, write_rows, ConstraintRow, FileKind, FileMeta, LogprobRow,
    PreferenceRow, Rows, SampleRow, ScoreRow, SHARD,
};

/// `--shard I/N`: the I-th of N contiguous slices of the prompts (0-based).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shard {
    pub index: u32,
    pub count: u32,
}

impl std::str::FromStr for Shard {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<Self> {
        let (i, n) = s
            .split_once('/')
            .with_context(|| format!("--shard {s}: expected I/N, e.g. 0/4"))?;
        let index: u32 = i
            .parse()
            .with_context(|| format!("--shard {s}: I is not a number"))?;
        let count: u32 = n
            .parse()
            .with_context(|| format!("--shard {s}: N is not a number"))?;
        ensure!(
            count >= 1 && index < count,
            "--shard {s}: expected 0 <= I < N"
        );
        Ok(Shard { index, count })
    }
}

impl Shard {
    /// This shard's slice of `n` prompts.
    pub fn range(&self, n: usize) -> std::ops::Range<usize> {
        let (i, c) = (self.index as usize, self.count as usize);
        i * n / c..(i + 1) * n / c
    }

    /// The items (`what`: prompts, batches) of `shard`'s slice; all of them without a shard.
    /// Refuses more shards than items: every shard has work.
    pub fn keep<T>(shard: Option<Shard>, mut items: Vec<T>, what: &str) -> Result<Vec<T>> {
        let Some(sh) = shard else {
            return Ok(items);
        };
        ensure!(
            items.len() >= sh.count as usize,
            "--shard {}/{}: {} {what}, fewer than the {} shards; expected at most one shard per \
             {}",
            sh.index,
            sh.count,
            items.len(),
            sh.count,
            what.trim_end_matches('s')
        );
        let range = sh.range(items.len());
        items.truncate(range.end);
        items.drain(..range.start);
        Ok(items)
    }

    /// A shard's fingerprint differs from the whole's (a shard is never taken for the whole
    /// file); [`merge`] restores the whole's.
    pub fn mark(&self, meta: &mut FileMeta) {
        let whole = meta.fingerprint.clone();
        meta.extra
            .insert(SHARD.into(), format!("{}/{}", self.index, self.count));
        meta.fingerprint =
            blake3::hash(format!("{whole}:{}/{}", self.index, self.count).as_bytes())
                .to_hex()
                .to_string();
        meta.extra.insert("unsharded_fingerprint".into(), whole);
    }
}

/// Joins the outputs of a stage run with `--shard I/N` (all N of them, in any order) into the
/// file an unsharded run writes: samples, log-probs, preferences, scores or constraints.
pub fn merge(shards: &[PathBuf], out: &Path) -> Result<Outcome> {
    let first = shards.first().context("merge: no shard files given")?;
    let _lock = lock_outputs(&[("--out", out)])?;
    let meta = read_meta(first)?;
    match FileKind::from_schema_id(&meta.schema) {
        Some(FileKind::Samples) => merge_rows::<SampleRow>(shards, out),
        Some(FileKind::Logprobs) => merge_rows::<LogprobRow>(shards, out),
        Some(FileKind::Preferences) => merge_rows::<PreferenceRow>(shards, out),
        Some(FileKind::Scores) => merge_rows::<ScoreRow>(shards, out),
        Some(FileKind::Constraints) => merge_rows::<ConstraintRow>(shards, out),
        _ => anyhow::bail!(
            "{}: a {} file; expected the shard of a samples, logprobs, preferences, scores or \
             constraints file",
            first.display(),
            meta.schema
        ),
    }
}

fn merge_rows<R: Rows>(shards: &[PathBuf], out: &Path) -> Result<Outcome> {
    let mut parts: Vec<(Shard, FileMeta, Vec<R>)> = Vec::new();
    for path in shards {
        let (meta, rows) = read_rows_or_shard::<R>(path)?;
        let shard: Shard = meta
            .extra
            .get(SHARD)
            .with_context(|| format!("{}: not a shard (no rspo.shard metadata)", path.display()))?
            .parse()?;
        parts.push((shard, meta, rows));
    }
    parts.sort_by_key(|p| p.0.index);
    let count = parts[0].0.count;
    ensure!(
        parts.len() == count as usize
            && parts
                .iter()
                .enumerate()
                .all(|(i, p)| p.0.index == i as u32 && p.0.count == count),
        "merge: expected the {count} shards 0/{count} .. {}/{count} once each, found {:?}",
        count - 1,
        parts
            .iter()
            .map(|p| format!("{}/{}", p.0.index, p.0.count))
            .collect::<Vec<_>>()
    );
    let meta = unsharded_meta(&parts)?;
    let rows: Vec<R> = parts.into_iter().flat_map(|p| p.2).collect();
    if read_meta(out)
        .map(|m| m.fingerprint == meta.fingerprint)
        .unwrap_or(false)
    {
        return Ok(Outcome::UpToDate);
    }
    write_rows(out, &meta, &rows)?;
    Ok(Outcome::Written { rows: rows.len() })
}

/// The metadata of the whole file, checking that every shard comes from the same run.
fn unsharded_meta<R>(parts: &[(Shard, FileMeta, Vec<R>)]) -> Result<FileMeta> {
    let mut meta = parts[0].1.clone();
    let whole = meta
        .extra
        .remove("unsharded_fingerprint")
        .context("shard without rspo.unsharded_fingerprint")?;
    meta.extra.remove(SHARD);
    for (sh, m, _) in &parts[1..] {
        ensure!(
            m.extra.get("unsharded_fingerprint") == Some(&whole),
            "merge: shard {}/{} comes from another run (other inputs or settings)",
            sh.index,
            sh.count
        );
    }
    meta.fingerprint = whole;
    Ok(meta)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slices_cover_every_prompt_once_in_order() {
        for n in [0usize, 1, 2, 5, 7, 16] {
            for count in 1..=6u32 {
                let all: Vec<usize> = (0..count)
                    .flat_map(|index| Shard { index, count }.range(n))
                    .collect();
                assert_eq!(all, (0..n).collect::<Vec<_>>(), "n {n} count {count}");
            }
        }
    }

    #[test]
    fn keep_takes_the_slice_and_refuses_more_shards_than_items() {
        let sh = |index, count| Some(Shard { index, count });
        let keep = |shard, items: Vec<i32>| Shard::keep(shard, items, "prompts");
        assert_eq!(keep(sh(1, 2), vec![1, 2, 3, 4, 5]).unwrap(), [3, 4, 5]);
        assert_eq!(keep(None, vec![1, 2]).unwrap(), [1, 2]);
        let err = keep(sh(0, 3), vec![1, 2]).unwrap_err().to_string();
        assert!(
            err.contains(
                "--shard 0/3: 2 prompts, fewer than the 3 shards; expected at most one shard per prompt"
            ),
            "{err}"
        );
    }

    #[test]
    fn bad_shard_specs_are_refused_with_the_flag() {
        for bad in ["3", "2/2", "a/2", "0/0", "1/x"] {
            let err = bad.parse::<Shard>().unwrap_err().to_string();
            assert!(err.starts_with(&format!("--shard {bad}:")), "{err}");
        }
        assert_eq!(
            "1/3".parse::<Shard>().unwrap(),
            Shard { index: 1, count: 3 }
        );
    }
}
