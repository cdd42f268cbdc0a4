//! The judgment cache: a response judged once (another iteration, a rerun with another K) is
//! not judged again. One file per judge digest (model digest + settings) under
//! `<cache dir>/judgments/`, mapping blake3(prompt, response(s), reference, judge digest) to the
//! judgment's values, stored as the bits of each f64 so a cached score is the computed score,
//! bit for bit.
//!
//! File format, one entry a line: `<64 hex key> <16 hex bits>[,<16 hex bits>...]`. Files are
//! rewritten atomically (merged with what another process may have saved meanwhile).

use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::path::{Path, PathBuf};

use super::traits::{JudgeError, JudgeItem};
use crate::data::{canonical_json, write_atomically, DataError};

/// The cache key of a judgment: blake3 over the judge digest and the parts judged, each length
/// prefixed so no two different inputs hash the same bytes.
pub fn judgment_key(judge_digest: &str, parts: &[&str]) -> [u8; 32] {
    let mut h = blake3::Hasher::new();
    h.update(b"rspo-judgment-v1");
    for part in std::iter::once(judge_digest).chain(parts.iter().copied()) {
        h.update(&(part.len() as u64).to_le_bytes());
        h.update(part.as_bytes());
    }
    *h.finalize().as_bytes()
}

/// The key of a scalar judgment of one item. The reference takes part only for judges that use
/// it, so other judges share entries across prompt files. Constraints take part when the item
/// has them (an item without any keeps the key it always had).
pub fn item_key(judge_digest: &str, item: &JudgeItem<'_>, uses_reference: bool) -> [u8; 32] {
    let messages = canonical_json(&serde_json::to_value(item.messages).unwrap_or_default());
    let reference = match (uses_reference, item.reference) {
        (true, Some(r)) => format!("1{r}"),
        _ => "0".to_string(),
    };
    match item.constraints {
        Some(c) => judgment_key(judge_digest, &[&messages, item.response, &reference, c]),
        None => judgment_key(judge_digest, &[&messages, item.response, &reference]),
    }
}

/// The key of a pairwise judgment of (a, b), in that order.
pub fn pair_key(
    judge_digest: &str,
    a: &JudgeItem<'_>,
    b: &JudgeItem<'_>,
    uses_reference: bool,
) -> [u8; 32] {
    let messages = canonical_json(&serde_json::to_value(a.messages).unwrap_or_default());
    let reference = match (uses_reference, a.reference) {
        (true, Some(r)) => format!("1{r}"),
        _ => "0".to_string(),
    };
    judgment_key(
        judge_digest,
        &[&messages, a.response, b.response, &reference],
    )
}

/// The judgments of one judge, loaded into memory.
pub struct JudgmentCache {
    path: PathBuf,
    entries: HashMap<[u8; 32], Vec<f64>>,
    /// Entries added since opening (what `save` merges into the file).
    added: HashMap<[u8; 32], Vec<f64>>,
}

fn cache_error(path: &Path, message: impl Into<String>) -> JudgeError {
    JudgeError::Cache {
        path: path.display().to_string(),
        message: message.into(),
    }
}

fn parse_line(line: &str) -> Option<([u8; 32], Vec<f64>)> {
    let (key, values) = line.split_once(' ')?;
    if key.len() != 64 {
        return None;
    }
    let mut k = [0u8; 32];
    for (i, byte) in k.iter_mut().enumerate() {
        *byte = u8::from_str_radix(key.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    let values = values
        .split(',')
        .map(|v| {
            (v.len() == 16)
                .then(|| u64::from_str_radix(v, 16).ok().map(f64::from_bits))
                .flatten()
        })
        .collect::<Option<Vec<f64>>>()?;
    Some((k, values))
}

fn read_entries(path: &Path) -> Result<HashMap<[u8; 32], Vec<f64>>, JudgeError> {
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(HashMap::new()),
        Err(e) => return Err(cache_error(path, format!("cannot read: {e}"))),
    };
    let mut entries = HashMap::new();
    for (n, line) in text.lines().enumerate() {
        let (key, values) = parse_line(line).ok_or_else(|| {
            cache_error(
                path,
                format!(
                    "line {}: expected `<64 hex key> <16 hex bits>[,...]`; delete the file to start afresh",
                    n + 1
                ),
            )
        })?;
        entries.insert(key, values);
    }
    Ok(entries)
}

impl JudgmentCache {
    /// The cache file of a judge: `<dir>/judgments/<judge digest>.txt`.
    pub fn path_for(dir: &Path, judge_digest: &str) -> PathBuf {
        dir.join("judgments").join(format!("{judge_digest}.txt"))
    }

    /// Loads the judge's cache file (none yet is an empty cache). Nothing is created until
    /// `save`.
    pub fn open(dir: &Path, judge_digest: &str) -> Result<Self, JudgeError> {
        let path = Self::path_for(dir, judge_digest);
        let entries = read_entries(&path)?;
        Ok(JudgmentCache {
            path,
            entries,
            added: HashMap::new(),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn get(&self, key: &[u8; 32]) -> Option<&[f64]> {
        self.entries.get(key).map(Vec::as_slice)
    }

    pub fn insert(&mut self, key: [u8; 32], values: Vec<f64>) {
        if self.entries.get(&key) != Some(&values) {
            self.entries.insert(key, values.clone());
            self.added.insert(key, values);
        }
    }

    /// Writes the new entries, merged with the file as it is now (another run may have added
    /// to it), atomically. A no-op without new entries.
    pub fn save(&mut self) -> Result<(), JudgeError> {
        if self.added.is_empty() {
            return Ok(());
        }
        let mut merged: BTreeMap<[u8; 32], Vec<f64>> =
            read_entries(&self.path)?.into_iter().collect();
        merged.extend(self.added.drain());
        write_atomically(&self.path, |out| -> Result<(), DataError> {
            let io = |e| DataError::Io {
                path: self.path.clone(),
                action: "cannot write".into(),
                error: e,
            };
            for (key, values) in &merged {
                let key: String = key.iter().map(|b| format!("{b:02x}")).collect();
                let values: Vec<String> = values
                    .iter()
                    .map(|v| format!("{:016x}", v.to_bits()))
                    .collect();
                writeln!(out, "{key} {}", values.join(",")).map_err(io)?;
            }
            Ok(())
        })
        .map_err(|e| cache_error(&self.path, e.to_string()))?;
        self.entries.extend(merged);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::Message;

    fn tmp(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("rspo-cache-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        dir
    }

    fn item<'a>(messages: &'a [Message], response: &'a str) -> JudgeItem<'a> {
        JudgeItem {
            prompt_id: "q",
            sample_idx: 0,
            messages,
            prompt_text: "",
            response,
            reference: Some("ref"),
            constraints: None,
        }
    }

    #[test]
    fn values_survive_a_save_bit_for_bit() {
        let dir = tmp("bits");
        let mut cache = JudgmentCache::open(&dir, "judge").unwrap();
        assert!(cache.is_empty());
        let odd = [0.1 + 0.2, -1.0730680939756811, f64::MIN_POSITIVE, -0.0];
        cache.insert([1; 32], odd.to_vec());
        cache.insert([2; 32], vec![f64::NAN]);
        cache.save().unwrap();
        let reopened = JudgmentCache::open(&dir, "judge").unwrap();
        let got = reopened.get(&[1; 32]).unwrap();
        for (a, b) in got.iter().zip(&odd) {
            assert_eq!(a.to_bits(), b.to_bits());
        }
        assert!(reopened.get(&[2; 32]).unwrap()[0].is_nan());
        assert_eq!(reopened.get(&[3; 32]), None);
        // Another judge digest is another file.
        assert!(JudgmentCache::open(&dir, "other").unwrap().is_empty());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn saves_merge_with_other_writers() {
        let dir = tmp("merge");
        let mut a = JudgmentCache::open(&dir, "j").unwrap();
        let mut b = JudgmentCache::open(&dir, "j").unwrap();
        a.insert([1; 32], vec![1.0]);
        b.insert([2; 32], vec![2.0]);
        a.save().unwrap();
        b.save().unwrap();
        let c = JudgmentCache::open(&dir, "j").unwrap();
        assert_eq!(c.len(), 2);
        assert_eq!(c.get(&[1; 32]), Some(&[1.0][..]));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_damaged_file_is_a_clear_error() {
        let dir = tmp("damaged");
        let path = JudgmentCache::path_for(&dir, "j");
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, "not a cache line\n").unwrap();
        let err = JudgmentCache::open(&dir, "j").err().unwrap().to_string();
        assert!(err.contains("line 1") && err.contains("judgments"), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn keys_separate_prompt_response_judge_and_reference() {
        let m1 = [Message::user("a")];
        let m2 = [Message::user("ab")];
        let base = item_key("j", &item(&m1, "b"), false);
        assert_eq!(base, item_key("j", &item(&m1, "b"), false));
        // Moving text between prompt and response changes the key.
        assert_ne!(base, item_key("j", &item(&m2, ""), false));
        assert_ne!(base, item_key("k", &item(&m1, "b"), false));
        assert_ne!(base, item_key("j", &item(&m1, "b"), true));
        let mut other_ref = item(&m1, "b");
        other_ref.reference = Some("other");
        assert_eq!(base, item_key("j", &other_ref, false));
        assert_ne!(
            item_key("j", &item(&m1, "b"), true),
            item_key("j", &other_ref, true)
        );
        let (x, y) = (item(&m1, "x"), item(&m1, "y"));
        assert_ne!(pair_key("j", &x, &y, false), pair_key("j", &y, &x, false));
    }
}
