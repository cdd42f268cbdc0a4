//! Resumable output for long stages (generate, logprobs, score).
//!
//! A stage works through its units (usually prompts, named by a key such as the prompt id) and
//! hands each finished batch of units to [`ChunkStore::write_chunk`], which writes the rows as
//! one chunk file, atomically, into a folder next to the final file. If the stage is killed at
//! any moment, the completed chunks survive; rerun with the same fingerprint, it asks
//! [`ChunkStore::completed_keys`] what is already done and skips it. [`ChunkStore::finish`] then
//! gathers all chunks, orders the rows by a key that identifies them, and writes the final file:
//! since a row's content does not depend on how the work was chunked (per-row seeds), the final
//! bytes equal those of an uninterrupted run.
//!
//! ```text
//! data/runs/r/iter-1/samples.parquet            final file, written by finish
//! data/runs/r/iter-1/.samples.parquet.chunks/   chunk-<first key>-<hash>.parquet ...
//! ```

use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};

use super::error::{ContentError, DataError};
use super::fingerprint::canonical_json;
use super::io::{read_meta, read_rows, remove_temporaries, write_rows};
use super::metadata::FileMeta;
use super::rows::Rows;

/// Name of the extra metadata entry (`rspo.chunk_keys`) listing the keys a chunk completes.
pub const CHUNK_KEYS: &str = "chunk_keys";
/// The `rspo.stage` of chunk files.
pub const CHUNK_STAGE: &str = "chunk";

/// Completed chunks of one output file, all for one fingerprint.
#[derive(Debug)]
pub struct ChunkStore {
    final_path: PathBuf,
    dir: PathBuf,
    fingerprint: String,
    completed: BTreeSet<String>,
}

/// The folder holding `final_path`'s chunks: `.<name>.chunks` next to it.
pub fn chunk_dir(final_path: &Path) -> PathBuf {
    let name = final_path
        .file_name()
        .map(|name| name.to_string_lossy().into_owned())
        .unwrap_or_default();
    final_path.with_file_name(format!(".{name}.chunks"))
}

/// `chunk-<first key, made filename-safe>-<16 hex of its blake3>.parquet`: readable, and
/// distinct even where sanitizing or a case-insensitive filesystem would merge two keys.
fn chunk_file_name(first_key: &str) -> String {
    let safe: String = first_key
        .chars()
        .take(32)
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect();
    let hash = blake3::hash(first_key.as_bytes()).to_hex();
    format!("chunk-{safe}-{}.parquet", &hash[..16])
}

fn is_chunk_file(name: &str) -> bool {
    name.starts_with("chunk-") && name.ends_with(".parquet")
}

fn remove_file(path: &Path) -> Result<(), DataError> {
    fs::remove_file(path).map_err(|e| DataError::io(path, "cannot remove", e))
}

/// The keys a chunk file completes, if it belongs to `fingerprint`.
fn chunk_keys(path: &Path, fingerprint: &str) -> Option<Vec<String>> {
    let meta = read_meta(path).ok()?;
    if meta.fingerprint != fingerprint {
        return None;
    }
    serde_json::from_str(meta.extra.get(CHUNK_KEYS)?).ok()
}

impl ChunkStore {
    /// Opens (creating if needed) the chunk folder of `final_path` for a run whose output
    /// fingerprint is `fingerprint`. Chunks of any other fingerprint (the inputs or settings
    /// changed) and unreadable chunks are deleted, as are temporaries left by a killed write,
    /// both in the chunk folder and next to the final file.
    pub fn open(final_path: &Path, fingerprint: &str) -> Result<ChunkStore, DataError> {
        let dir = chunk_dir(final_path);
        fs::create_dir_all(&dir).map_err(|e| DataError::io(&dir, "cannot create folder", e))?;
        remove_temporaries(final_path)?;
        let mut completed = BTreeSet::new();
        for entry in fs::read_dir(&dir).map_err(|e| DataError::io(&dir, "cannot list", e))? {
            let entry = entry.map_err(|e| DataError::io(&dir, "cannot list", e))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            let path = entry.path();
            if name.starts_with('.') {
                remove_file(&path)?;
            } else if is_chunk_file(&name) {
                match chunk_keys(&path, fingerprint) {
                    Some(keys) => completed.extend(keys),
                    None => remove_file(&path)?,
                }
            }
        }
        Ok(ChunkStore {
            final_path: final_path.to_path_buf(),
            dir,
            fingerprint: fingerprint.to_string(),
            completed,
        })
    }

    /// The keys of all units completed so far (in earlier runs too).
    pub fn completed_keys(&self) -> &BTreeSet<String> {
        &self.completed
    }

    pub fn is_completed(&self, key: &str) -> bool {
        self.completed.contains(key)
    }

    /// The chunk folder.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Records that the units `keys` are done and produced `rows` (possibly none), as one
    /// chunk file written atomically. A key may be completed only once.
    pub fn write_chunk<R: Rows>(
        &mut self,
        keys: &[impl AsRef<str>],
        rows: &[R],
    ) -> Result<(), DataError> {
        let keys: Vec<&str> = keys.iter().map(AsRef::as_ref).collect();
        let Some(first) = keys.first() else {
            return Err(DataError::content(
                &self.dir,
                ContentError::BadMetadata {
                    key: format!("rspo.{CHUNK_KEYS}"),
                    reason: "a chunk must complete at least one key".to_string(),
                },
            ));
        };
        let mut unique = BTreeSet::new();
        for key in &keys {
            if self.completed.contains(*key) || !unique.insert(*key) {
                return Err(DataError::content(
                    &self.dir,
                    ContentError::ChunkKeyCompleted {
                        key: key.to_string(),
                    },
                ));
            }
        }
        let mut meta = FileMeta::new(R::KIND, CHUNK_STAGE, self.fingerprint.clone());
        let key_list = serde_json::Value::from(keys.clone());
        meta.extra
            .insert(CHUNK_KEYS.to_string(), canonical_json(&key_list));
        write_rows(&self.dir.join(chunk_file_name(first)), &meta, rows)?;
        self.completed.extend(keys.into_iter().map(str::to_string));
        Ok(())
    }

    /// Reads every chunk, orders the rows by `sort_key` and writes the final file atomically
    /// with `meta`, then deletes the chunk folder. Returns the rows written.
    ///
    /// `sort_key` must tell every two rows apart (e.g. (prompt position, sample_idx)); then the
    /// output does not depend on how the work was split into chunks. The chunks must hold
    /// `expected_rows` rows, else nothing is written.
    pub fn finish<R: Rows, K: Ord>(
        self,
        meta: &FileMeta,
        expected_rows: usize,
        sort_key: impl FnMut(&R) -> K,
    ) -> Result<Vec<R>, DataError> {
        if meta.fingerprint != self.fingerprint {
            return Err(DataError::content(
                &self.final_path,
                ContentError::ChunkFingerprint {
                    found: meta.fingerprint.clone(),
                    expected: self.fingerprint.clone(),
                },
            ));
        }
        let mut chunk_files = Vec::new();
        for entry in
            fs::read_dir(&self.dir).map_err(|e| DataError::io(&self.dir, "cannot list", e))?
        {
            let entry = entry.map_err(|e| DataError::io(&self.dir, "cannot list", e))?;
            if is_chunk_file(&entry.file_name().to_string_lossy()) {
                chunk_files.push(entry.path());
            }
        }
        chunk_files.sort();
        let mut rows = Vec::new();
        for file in &chunk_files {
            let (chunk_meta, chunk_rows) = read_rows::<R>(file)?;
            if chunk_meta.fingerprint != self.fingerprint {
                return Err(DataError::content(
                    file,
                    ContentError::ChunkFingerprint {
                        found: chunk_meta.fingerprint,
                        expected: self.fingerprint.clone(),
                    },
                ));
            }
            rows.extend(chunk_rows);
        }
        if rows.len() != expected_rows {
            return Err(DataError::content(
                &self.dir,
                ContentError::ChunkRowCount {
                    found: rows.len(),
                    expected: expected_rows,
                },
            ));
        }
        rows.sort_by_cached_key(sort_key);
        write_rows(&self.final_path, meta, &rows)?;
        fs::remove_dir_all(&self.dir).map_err(|e| DataError::io(&self.dir, "cannot remove", e))?;
        Ok(rows)
    }

    /// Deletes `final_path`'s chunk folder, if any (e.g. when the output is already up to date,
    /// or after `--force`).
    pub fn discard(final_path: &Path) -> Result<(), DataError> {
        let dir = chunk_dir(final_path);
        match fs::remove_dir_all(&dir) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                Err(DataError::io(&dir, "cannot remove", e))
            }
            _ => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::rows::{FinishReason, Message, SampleRow};
    use crate::data::schema::FileKind;
    use crate::data::testing::TempDir;

    const PROMPTS: [&str; 6] = ["p0", "p1", "p2", "p3", "p4", "p5"];

    /// The rows one prompt produces: the same whatever chunk it lands in.
    fn rows_for(prompt: &str) -> Vec<SampleRow> {
        (0..2)
            .map(|sample_idx| SampleRow {
                prompt_id: prompt.to_string(),
                sample_idx,
                messages: vec![Message::user(format!("question {prompt}"))],
                prompt_text: format!("<user>{prompt}"),
                response: format!("answer {prompt}/{sample_idx}"),
                prompt_token_ids: vec![1, 2],
                response_token_ids: vec![3, sample_idx],
                finish_reason: FinishReason::Eos,
                sample_logprob: -1.0,
                seed: crate::data::fingerprint::row_seed(1, prompt, sample_idx, 1),
            })
            .collect()
    }

    /// Processes `prompts` in chunks of `chunk_size`, skipping completed ones.
    fn work(store: &mut ChunkStore, prompts: &[&str], chunk_size: usize) {
        let todo: Vec<&str> = prompts
            .iter()
            .copied()
            .filter(|p| !store.is_completed(p))
            .collect();
        for chunk in todo.chunks(chunk_size) {
            let rows: Vec<SampleRow> = chunk.iter().flat_map(|p| rows_for(p)).collect();
            store.write_chunk(chunk, &rows).expect("write chunk");
        }
    }

    fn meta(fingerprint: &str) -> FileMeta {
        let mut meta = FileMeta::new(FileKind::Samples, "generate", fingerprint);
        meta.config = serde_json::json!({"k": 2});
        meta
    }

    /// Orders rows as the prompts file does, then by sample.
    fn prompt_order(row: &SampleRow) -> (usize, u32) {
        let position = PROMPTS
            .iter()
            .position(|p| *p == row.prompt_id)
            .unwrap_or(usize::MAX);
        (position, row.sample_idx)
    }

    #[test]
    fn an_interrupted_run_resumes_to_identical_bytes() {
        let tmp = TempDir::new();

        let uninterrupted = tmp.path().join("a/samples.parquet");
        let mut store = ChunkStore::open(&uninterrupted, "fp").expect("open");
        work(&mut store, &PROMPTS, 2);
        let written = store.finish(&meta("fp"), 12, prompt_order).expect("finish");
        assert_eq!(written.len(), 12);
        assert!(!chunk_dir(&uninterrupted).exists());
        let expected = fs::read(&uninterrupted).expect("read");

        // Killed after two chunks, mid-way through a third write.
        let resumed = tmp.path().join("b/samples.parquet");
        let mut store = ChunkStore::open(&resumed, "fp").expect("open");
        work(&mut store, &PROMPTS[..3], 2);
        drop(store);
        let dir = chunk_dir(&resumed);
        fs::write(dir.join(".chunk-p3-0.parquet.tmp-999-0"), b"PAR1 half").expect("leftover");
        fs::write(
            resumed.with_file_name(".samples.parquet.tmp-999-1"),
            b"PAR1",
        )
        .expect("leftover");

        let mut store = ChunkStore::open(&resumed, "fp").expect("reopen");
        let completed: Vec<&str> = store.completed_keys().iter().map(String::as_str).collect();
        assert_eq!(completed, ["p0", "p1", "p2"]);
        work(&mut store, &PROMPTS, 4);
        store.finish(&meta("fp"), 12, prompt_order).expect("finish");
        assert_eq!(fs::read(&resumed).expect("read"), expected);
        let left: Vec<_> = fs::read_dir(resumed.parent().expect("parent"))
            .expect("list")
            .map(|e| e.expect("entry").file_name())
            .collect();
        assert_eq!(left, ["samples.parquet"]);

        // And equal to writing all rows at once.
        let direct = tmp.path().join("c/samples.parquet");
        let all: Vec<SampleRow> = PROMPTS.iter().flat_map(|p| rows_for(p)).collect();
        write_rows(&direct, &meta("fp"), &all).expect("write");
        assert_eq!(fs::read(&direct).expect("read"), expected);
    }

    #[test]
    fn chunks_of_another_fingerprint_are_discarded() {
        let tmp = TempDir::new();
        let out = tmp.path().join("samples.parquet");
        let mut store = ChunkStore::open(&out, "old").expect("open");
        work(&mut store, &PROMPTS[..2], 1);
        drop(store);
        assert_eq!(fs::read_dir(chunk_dir(&out)).expect("list").count(), 2);

        let store = ChunkStore::open(&out, "new").expect("reopen");
        assert!(store.completed_keys().is_empty());
        assert_eq!(fs::read_dir(chunk_dir(&out)).expect("list").count(), 0);

        let error = store
            .finish::<SampleRow, _>(&meta("other"), 0, prompt_order)
            .expect_err("wrong fingerprint");
        assert!(
            error
                .to_string()
                .contains("finish was given fingerprint 'other'"),
            "{error}"
        );
        assert!(!out.exists());
    }

    #[test]
    fn missing_rows_leave_no_final_file() {
        let tmp = TempDir::new();
        let out = tmp.path().join("samples.parquet");
        let mut store = ChunkStore::open(&out, "fp").expect("open");
        work(&mut store, &PROMPTS[..2], 1);
        // Another run sharing the folder removed it: only the rows of this store's last chunk
        // would be there.
        let error = store
            .finish::<SampleRow, _>(&meta("fp"), 12, prompt_order)
            .expect_err("4 of 12 rows");
        assert!(
            error
                .to_string()
                .contains("the chunks hold 4 rows, expected 12"),
            "{error}"
        );
        assert!(!out.exists());
    }

    #[test]
    fn a_key_is_completed_once() {
        let tmp = TempDir::new();
        let out = tmp.path().join("samples.parquet");
        let mut store = ChunkStore::open(&out, "fp").expect("open");
        store.write_chunk(&["p0"], &rows_for("p0")).expect("write");
        let error = store
            .write_chunk(&["p0"], &rows_for("p0"))
            .expect_err("again");
        assert!(
            error
                .to_string()
                .contains("chunk key 'p0' is already completed"),
            "{error}"
        );
        let no_keys: [&str; 0] = [];
        assert!(store.write_chunk::<SampleRow>(&no_keys, &[]).is_err());
        // A unit may produce no rows and still count as done.
        store
            .write_chunk::<SampleRow>(&["p1"], &[])
            .expect("empty chunk");
        let reopened = ChunkStore::open(&out, "fp").expect("reopen");
        assert!(reopened.is_completed("p1"));
        ChunkStore::discard(&out).expect("discard");
        assert!(!chunk_dir(&out).exists());
        ChunkStore::discard(&out).expect("discarding nothing is fine");
    }

    #[test]
    fn chunk_names_are_safe_and_distinct() {
        assert_eq!(&chunk_file_name("ab12")[..11], "chunk-ab12-");
        assert!(!chunk_file_name("a/b").contains('/'));
        assert_ne!(chunk_file_name("a/b"), chunk_file_name("a_b"));
        assert_ne!(
            chunk_file_name("ABC").to_lowercase(),
            chunk_file_name("abc").to_lowercase()
        );
    }
}
