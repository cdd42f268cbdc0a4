//! Reading and writing pipeline files. Reads check the metadata, the columns, nulls and
//! duplicate keys before handing rows out; writes are atomic (temporary name in the same folder,
//! fsync, rename) and deterministic (fixed writer settings, no timestamps), so the same rows and
//! metadata always give the same bytes.

use std::fs::{self, File};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use arrow::compute::concat_batches;
use arrow::record_batch::RecordBatch;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use parquet::arrow::ArrowWriter;
use parquet::basic::Compression;
use parquet::file::metadata::KeyValue;
use parquet::file::properties::WriterProperties;

use super::digest::file_digest;
use super::error::{ContentError, DataError};
use super::json_prompts::{is_json_file, prompts_from_json};
use super::metadata::{FileMeta, KEY_SCHEMA, SHARD};
use super::prompts::{prompts_from_batch, PromptOptions, PromptRow};
use super::rows::{check_unique_keys, Rows};
use super::schema::FileKind;

/// The `stage` of the metadata given to prompt files that carry none.
pub const EXTERNAL_STAGE: &str = "external";

fn parquet_error(
    path: &Path,
    action: &str,
) -> impl FnOnce(parquet::errors::ParquetError) -> DataError {
    let path = path.to_path_buf();
    let action = action.to_string();
    move |error| DataError::Parquet {
        path,
        action,
        error,
    }
}

fn arrow_error(path: &Path, action: &str) -> impl FnOnce(arrow::error::ArrowError) -> DataError {
    let path = path.to_path_buf();
    let action = action.to_string();
    move |error| DataError::Arrow {
        path,
        action,
        error,
    }
}

fn open_reader(path: &Path) -> Result<ParquetRecordBatchReaderBuilder<File>, DataError> {
    let file = File::open(path).map_err(|e| DataError::io(path, "cannot open", e))?;
    ParquetRecordBatchReaderBuilder::try_new(file)
        .map_err(parquet_error(path, "not a readable Parquet file"))
}

fn stored_meta(
    path: &Path,
    builder: &ParquetRecordBatchReaderBuilder<File>,
) -> Result<Option<FileMeta>, DataError> {
    let pairs = builder
        .metadata()
        .file_metadata()
        .key_value_metadata()
        .map(|pairs| pairs.as_slice())
        .unwrap_or_default();
    FileMeta::from_key_values(
        pairs
            .iter()
            .map(|kv| (kv.key.as_str(), kv.value.as_deref())),
    )
    .map_err(|problem| DataError::content(path, problem))
}

/// The metadata of a file written by rspo (any kind).
pub fn read_meta(path: &Path) -> Result<FileMeta, DataError> {
    let builder = open_reader(path)?;
    stored_meta(path, &builder)?.ok_or_else(|| {
        DataError::content(
            path,
            ContentError::MissingMetadata {
                key: KEY_SCHEMA.to_string(),
                expected: "an rspo schema id such as 'samples/v1'; was this file written by rspo?"
                    .to_string(),
            },
        )
    })
}

/// The file's metadata, checked to be of `kind`. Prompt files without metadata get a stand-in.
fn meta_of_kind(
    path: &Path,
    builder: &ParquetRecordBatchReaderBuilder<File>,
    kind: FileKind,
) -> Result<FileMeta, DataError> {
    match stored_meta(path, builder)? {
        Some(meta) if meta.schema == kind.schema_id() => Ok(meta),
        Some(meta) => Err(DataError::content(
            path,
            ContentError::WrongSchema {
                found: meta.schema,
                expected: kind.schema_id().to_string(),
            },
        )),
        None if kind.requires_metadata() => Err(DataError::content(
            path,
            ContentError::MissingMetadata {
                key: KEY_SCHEMA.to_string(),
                expected: format!("'{}'; was this file written by rspo?", kind.schema_id()),
            },
        )),
        None => Ok(external_prompts_meta(file_digest(path)?)),
    }
}

/// Reads the whole file as one record batch after checking its metadata and columns.
fn read_batch<R: Rows>(path: &Path) -> Result<(FileMeta, RecordBatch), DataError> {
    let builder = open_reader(path)?;
    let meta = meta_of_kind(path, &builder, R::KIND)?;
    let schema = builder.schema().clone();
    R::check_schema(&schema).map_err(|problem| DataError::content(path, problem))?;
    let reader = builder
        .build()
        .map_err(parquet_error(path, "cannot read rows"))?;
    let batches = reader
        .collect::<Result<Vec<RecordBatch>, _>>()
        .map_err(arrow_error(path, "cannot read rows"))?;
    let batch = concat_batches(&schema, &batches).map_err(arrow_error(path, "cannot read rows"))?;
    Ok((meta, batch))
}

/// Reads a file of `R`'s kind: checks `rspo.schema`, every required column's presence and type,
/// nulls, and duplicate keys. Zero rows are fine here; stages decide whether that is an error.
/// A shard of a sharded run (`--shard I/N`) is refused: it holds part of the rows, and
/// `generate merge` joins the shards into the whole file.
pub fn read_rows<R: Rows>(path: &Path) -> Result<(FileMeta, Vec<R>), DataError> {
    let (meta, rows) = read_rows_or_shard::<R>(path)?;
    if let Some(shard) = meta.extra.get(SHARD) {
        let problem = ContentError::UnmergedShard {
            shard: shard.clone(),
        };
        return Err(DataError::content(path, problem));
    }
    Ok((meta, rows))
}

/// [`read_rows`] that also takes a shard (its metadata says which: `rspo.shard`).
pub fn read_rows_or_shard<R: Rows>(path: &Path) -> Result<(FileMeta, Vec<R>), DataError> {
    let (meta, batch) = read_batch::<R>(path)?;
    let rows = R::from_batch(&batch).map_err(|problem| DataError::content(path, problem))?;
    check_unique_keys(&rows).map_err(|problem| DataError::content(path, problem))?;
    Ok((meta, rows))
}

/// The stand-in metadata of a prompt file that carries none: its fingerprint is the blake3 of
/// the file's bytes, so stages can still chain fingerprints.
fn external_prompts_meta(fingerprint: String) -> FileMeta {
    let mut meta = FileMeta::new(FileKind::Prompts, EXTERNAL_STAGE, fingerprint);
    meta.version = String::new();
    meta
}

/// Reads a prompt file, rspo's or another tool's, finding the prompt as `options` says:
/// Parquet, or JSON Lines / a JSON array of objects for `.jsonl`, `.ndjson` and `.json` files.
pub fn read_prompts(
    path: &Path,
    options: &PromptOptions,
) -> Result<(FileMeta, Vec<PromptRow>), DataError> {
    if is_json_file(path) {
        let bytes = fs::read(path).map_err(|e| DataError::io(path, "cannot read", e))?;
        let rows = prompts_from_json(&bytes, options)
            .map_err(|problem| DataError::content(path, problem))?;
        let meta = external_prompts_meta(blake3::hash(&bytes).to_hex().to_string());
        return Ok((meta, rows));
    }
    let (meta, batch) = read_batch::<PromptRow>(path)?;
    let rows =
        prompts_from_batch(&batch, options).map_err(|problem| DataError::content(path, problem))?;
    Ok((meta, rows))
}

/// The fixed writer settings: snappy, the crate's defaults otherwise, the metadata as key-value
/// pairs. Nothing time- or host-dependent, so output bytes depend only on rows and metadata.
fn writer_properties(meta: &FileMeta) -> Result<WriterProperties, ContentError> {
    let pairs = meta
        .to_key_values()?
        .into_iter()
        .map(|(key, value)| KeyValue::new(key, value))
        .collect();
    Ok(WriterProperties::builder()
        .set_compression(Compression::SNAPPY)
        .set_key_value_metadata(Some(pairs))
        .build())
}

/// Writes `rows` with `meta` to `path` atomically. `meta.schema` must be `R`'s kind; rows must
/// not repeat a key.
pub fn write_rows<R: Rows>(path: &Path, meta: &FileMeta, rows: &[R]) -> Result<(), DataError> {
    let content = |problem| DataError::content(path, problem);
    if meta.schema != R::KIND.schema_id() {
        return Err(content(ContentError::WrongSchema {
            found: meta.schema.clone(),
            expected: R::KIND.schema_id().to_string(),
        }));
    }
    check_unique_keys(rows).map_err(content)?;
    let batch = R::to_batch(rows).map_err(content)?;
    let properties = writer_properties(meta).map_err(content)?;
    write_atomically(path, |out| {
        let mut writer = ArrowWriter::try_new(out, batch.schema(), Some(properties))
            .map_err(parquet_error(path, "cannot write Parquet"))?;
        writer
            .write(&batch)
            .map_err(parquet_error(path, "cannot write Parquet"))?;
        writer
            .close()
            .map_err(parquet_error(path, "cannot write Parquet"))?;
        Ok(())
    })
}

/// Distinguishes temporaries of one process writing the same name from several threads.
static TEMP_COUNTER: AtomicU64 = AtomicU64::new(0);

/// Removes the temporary file or folder unless the write completed.
struct TempPath {
    path: PathBuf,
    keep: bool,
}

impl Drop for TempPath {
    fn drop(&mut self) {
        if !self.keep {
            // Best effort: the write already failed, and that error is the one to report.
            let _ = if self.path.is_dir() {
                fs::remove_dir_all(&self.path)
            } else {
                fs::remove_file(&self.path)
            };
        }
    }
}

/// The temporary name `path` is written under: `.<name>.tmp-<pid>-<n>` in the same folder, so
/// the final rename stays on one filesystem.
fn temp_path(path: &Path) -> Result<PathBuf, DataError> {
    let name = path.file_name().ok_or_else(|| {
        DataError::io(
            path,
            "cannot write",
            std::io::Error::new(std::io::ErrorKind::InvalidInput, "the path names no file"),
        )
    })?;
    let n = TEMP_COUNTER.fetch_add(1, Ordering::Relaxed);
    let temp_name = format!(".{}.tmp-{}-{n}", name.to_string_lossy(), std::process::id());
    Ok(path.with_file_name(temp_name))
}

/// Removes the temporaries (`.<name>.tmp-*` files or folders) beside `path` that writes of it
/// left when they were killed. Only for a caller that alone writes `path` (it holds its lock).
pub fn remove_temporaries(path: &Path) -> Result<(), DataError> {
    let Some(name) = path.file_name() else {
        return Ok(());
    };
    let prefix = format!(".{}.tmp-", name.to_string_lossy());
    let parent = match path.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent,
        _ => Path::new("."),
    };
    let entries = match fs::read_dir(parent) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        entries => entries.map_err(|e| DataError::io(parent, "cannot list", e))?,
    };
    for entry in entries {
        let entry = entry.map_err(|e| DataError::io(parent, "cannot list", e))?;
        if entry.file_name().to_string_lossy().starts_with(&prefix) {
            let stale = entry.path();
            let removed = if stale.is_dir() {
                fs::remove_dir_all(&stale)
            } else {
                fs::remove_file(&stale)
            };
            removed.map_err(|e| DataError::io(&stale, "cannot remove", e))?;
        }
    }
    Ok(())
}

/// A temporary beside `path` (its parent folder created if missing), and that folder.
fn temp_beside(path: &Path) -> Result<(TempPath, PathBuf), DataError> {
    let parent = match path.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent.to_path_buf(),
        _ => PathBuf::from("."),
    };
    fs::create_dir_all(&parent).map_err(|e| DataError::io(&parent, "cannot create folder", e))?;
    let temp = TempPath {
        path: temp_path(path)?,
        keep: false,
    };
    Ok((temp, parent))
}

/// Renames the finished temporary to `path`.
fn rename_into_place(temp: &mut TempPath, path: &Path) -> Result<(), DataError> {
    fs::rename(&temp.path, path).map_err(|e| {
        let action = format!("cannot rename {} into place", temp.path.display());
        DataError::io(path, action, e)
    })?;
    temp.keep = true;
    Ok(())
}

/// Persists a rename into `folder`; some filesystems cannot sync folders, which is not an error.
fn sync_folder(folder: &Path) {
    if let Ok(folder) = File::open(folder) {
        let _ = folder.sync_all();
    }
}

/// Writes a file atomically: creates the parent folders, lets `write` fill a temporary file in
/// the same folder, fsyncs it and renames it to `path`. If `write` fails (or panics) or any step
/// fails, the temporary is removed and nothing appears under `path`.
pub fn write_atomically<T, E>(
    path: &Path,
    write: impl FnOnce(&mut BufWriter<File>) -> Result<T, E>,
) -> Result<T, E>
where
    E: From<DataError>,
{
    let (mut temp, parent) = temp_beside(path)?;
    let file = File::options()
        .write(true)
        .create_new(true)
        .open(&temp.path)
        .map_err(|e| DataError::io(&temp.path, "cannot create", e))?;
    let mut out = BufWriter::new(file);
    let value = write(&mut out)?;
    out.flush()
        .map_err(|e| DataError::io(&temp.path, "cannot write", e))?;
    let file = out
        .into_inner()
        .map_err(|e| DataError::io(&temp.path, "cannot write", e.into_error()))?;
    file.sync_all()
        .map_err(|e| DataError::io(&temp.path, "cannot sync", e))?;
    drop(file);
    rename_into_place(&mut temp, path)?;
    sync_folder(&parent);
    Ok(value)
}

/// Fsyncs every file under `dir`, then `dir` itself.
fn sync_tree(dir: &Path) -> Result<(), DataError> {
    let entries = fs::read_dir(dir).map_err(|e| DataError::io(dir, "cannot list", e))?;
    for entry in entries {
        let path = entry
            .map_err(|e| DataError::io(dir, "cannot list", e))?
            .path();
        if path.is_dir() {
            sync_tree(&path)?;
        } else {
            File::open(&path)
                .and_then(|f| f.sync_all())
                .map_err(|e| DataError::io(&path, "cannot sync", e))?;
        }
    }
    sync_folder(dir);
    Ok(())
}

/// Writes a folder atomically, as [`write_atomically`] a file: `fill` writes the files of a
/// temporary sibling folder, which is fsynced (every file, then the folder) and renamed to
/// `path`. A folder already at `path` is replaced only once the new one is complete. If `fill`
/// (or any step) fails, the temporary is removed and `path` is left as it was.
pub fn write_dir_atomically<T, E>(
    path: &Path,
    fill: impl FnOnce(&Path) -> Result<T, E>,
) -> Result<T, E>
where
    E: From<DataError>,
{
    let (mut temp, parent) = temp_beside(path)?;
    fs::create_dir(&temp.path).map_err(|e| DataError::io(&temp.path, "cannot create", e))?;
    let value = fill(&temp.path)?;
    sync_tree(&temp.path)?;
    // An old folder is moved aside rather than removed first, so that a failed rename can put
    // it back.
    let aside = temp_path(path)?;
    let replacing = path.exists();
    if replacing {
        fs::rename(path, &aside)
            .map_err(|e| DataError::io(path, "cannot move the old folder aside", e))?;
    }
    if let Err(e) = rename_into_place(&mut temp, path) {
        if replacing {
            let _ = fs::rename(&aside, path);
        }
        return Err(e.into());
    }
    sync_folder(&parent);
    if replacing {
        fs::remove_dir_all(&aside)
            .map_err(|e| DataError::io(&aside, "cannot remove the old folder", e))?;
    }
    Ok(value)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::sync::Arc;

    use arrow::array::{
        ArrayRef, Int64Array, LargeStringArray, ListArray, StringArray, StructArray, UInt32Array,
    };
    use arrow::buffer::OffsetBuffer;
    use arrow::datatypes::{DataType, Field, Fields, Schema};

    use super::*;
    use crate::data::fingerprint::{prompt_id_for, prompt_id_for_messages};
    use crate::data::metadata::{InputRef, ModelRef};
    use crate::data::rows::{
        ConstraintRow, EvalRow, FinishReason, LogprobRow, Message, PreferenceRow, SampleRow,
        ScoreRow, WinrateRow,
    };
    use crate::data::testing::TempDir;
    use crate::data::train_log::TrainLogRow;

    fn meta(kind: FileKind) -> FileMeta {
        let mut meta = FileMeta::new(kind, "test-stage", "fp-1");
        meta.config =
            serde_json::json!({"k": 2, "temperature": 0.7, "nested": {"b": [1, 2], "a": null}});
        meta.inputs = vec![InputRef {
            path: "in.parquet".into(),
            fingerprint: "fp-0".into(),
        }];
        meta.models.insert(
            "policy".into(),
            ModelRef {
                path: "models/tiny".into(),
                digest: "d".into(),
            },
        );
        meta
    }

    fn sample(prompt_id: &str, sample_idx: u32) -> SampleRow {
        SampleRow {
            prompt_id: prompt_id.into(),
            sample_idx,
            messages: vec![Message::new("system", "Be brief."), Message::user("Hi ü")],
            prompt_text: "<s>[INST] Hi ü [/INST]".into(),
            response: format!("Hello {sample_idx}"),
            prompt_token_ids: vec![1, 2, 3],
            response_token_ids: vec![4, 5 + sample_idx],
            finish_reason: if sample_idx != 1 {
                FinishReason::Eos
            } else {
                FinishReason::Length
            },
            sample_logprob: -3.25,
            seed: u64::MAX - sample_idx as u64,
        }
    }

    fn samples() -> Vec<SampleRow> {
        vec![sample("p1", 0), sample("p1", 1), sample("p2", 0)]
    }

    fn round_trip<R: Rows + PartialEq + std::fmt::Debug>(
        kind: FileKind,
        rows: Vec<R>,
        extra: &[(&str, &str)],
    ) {
        let dir = TempDir::new();
        let path = dir.path().join(format!("sub/{}.parquet", kind.name()));
        let mut meta = meta(kind);
        for (name, value) in extra {
            meta.extra.insert(name.to_string(), value.to_string());
        }
        write_rows(&path, &meta, &rows).expect("write");
        let (read_meta_back, read_back) = read_rows::<R>(&path).expect("read");
        assert_eq!(read_back, rows);
        assert_eq!(read_meta_back, meta);
        assert_eq!(read_meta(&path).expect("meta"), meta);
    }

    #[test]
    fn every_kind_round_trips() {
        round_trip(
            FileKind::Prompts,
            vec![
                PromptRow {
                    prompt_id: "a".into(),
                    messages: vec![Message::user("What is 2+2?")],
                    reference: Some("4".into()),
                    constraints: Some(r#"[{"at_most":3,"kind":"word_count"}]"#.into()),
                },
                PromptRow {
                    prompt_id: "b".into(),
                    messages: vec![
                        Message::user("Hi"),
                        Message::new("assistant", "Hello"),
                        Message::user("Bye"),
                    ],
                    reference: None,
                    constraints: None,
                },
            ],
            &[],
        );
        round_trip(FileKind::Samples, samples(), &[]);
        round_trip(
            FileKind::Logprobs,
            vec![
                LogprobRow {
                    prompt_id: "p1".into(),
                    sample_idx: 0,
                    logprob: -1.5,
                    token_logprobs: vec![-0.5, -1.0],
                    num_tokens: 2,
                },
                LogprobRow {
                    prompt_id: "p1".into(),
                    sample_idx: 1,
                    logprob: 0.0,
                    token_logprobs: vec![],
                    num_tokens: 0,
                },
            ],
            &[("role", "reference")],
        );
        round_trip(
            FileKind::Preferences,
            vec![
                PreferenceRow {
                    prompt_id: "p1".into(),
                    i: 0,
                    j: 1,
                    p: 0.75,
                    p_forward: Some(0.8),
                    p_swapped: Some(0.7),
                    judge: "pairrm".into(),
                },
                PreferenceRow {
                    prompt_id: "p1".into(),
                    i: 0,
                    j: 2,
                    p: 0.5,
                    p_forward: None,
                    p_swapped: None,
                    judge: "reward-model".into(),
                },
            ],
            &[],
        );
        round_trip(
            FileKind::Scores,
            vec![ScoreRow {
                prompt_id: "p1".into(),
                sample_idx: 3,
                score: 1.25,
            }],
            &[],
        );
        round_trip(
            FileKind::Constraints,
            vec![
                ConstraintRow {
                    prompt_id: "p1".into(),
                    sample_idx: 0,
                    constraint_idx: 0,
                    kind: "lowercase".into(),
                    constraint: r#"{"kind":"lowercase"}"#.into(),
                    passed: true,
                },
                ConstraintRow {
                    prompt_id: "p1".into(),
                    sample_idx: 0,
                    constraint_idx: 1,
                    kind: "no_commas".into(),
                    constraint: r#"{"kind":"no_commas"}"#.into(),
                    passed: false,
                },
            ],
            &[],
        );
        round_trip(
            FileKind::Winrates,
            vec![WinrateRow {
                prompt_id: "p1".into(),
                sample_idx: 3,
                winrate: 0.625,
                n_opponents: 4,
                rank: 0,
            }],
            &[],
        );
        let terms = |a: f64, b: f64| {
            BTreeMap::from([
                ("reverse_kl".to_string(), a),
                ("forward_kl_is".to_string(), b),
            ])
        };
        let log_row = |step: u64, terms: BTreeMap<String, f64>| TrainLogRow {
            step,
            epoch: step as f64 / 10.0,
            loss: 1.5,
            self_play: 1.0,
            terms,
            grad_norm: 0.3,
            lr: 5e-7,
            tokens: 1024,
            mean_logratio_t: 0.01,
            mean_logratio_ref: -0.02,
        };
        round_trip(
            FileKind::TrainLog,
            vec![log_row(1, terms(0.1, 2.0)), log_row(2, terms(0.2, 2.1))],
            &[],
        );
        round_trip(FileKind::TrainLog, vec![log_row(1, BTreeMap::new())], &[]);
        round_trip(
            FileKind::Eval,
            vec![EvalRow {
                model: "iter-1".into(),
                prompt_id: "p1".into(),
                sample_idx: 0,
                response: "yes".into(),
                baseline: "no".into(),
                p_win: 0.5,
                len_response: 3,
                len_baseline: 2,
                finish_reason: FinishReason::Length,
                tokens_response: 1,
                score_response: None,
                score_baseline: None,
                p_forward: Some(0.4),
                p_swapped: Some(0.6),
            }],
            &[],
        );
    }

    #[test]
    fn empty_files_are_allowed() {
        round_trip::<SampleRow>(FileKind::Samples, vec![], &[]);
        round_trip::<TrainLogRow>(FileKind::TrainLog, vec![], &[]);
    }

    #[test]
    fn identical_rows_give_identical_bytes() {
        let dir = TempDir::new();
        let (a, b) = (dir.path().join("a.parquet"), dir.path().join("b.parquet"));
        write_rows(&a, &meta(FileKind::Samples), &samples()).expect("write a");
        write_rows(&b, &meta(FileKind::Samples), &samples()).expect("write b");
        assert_eq!(fs::read(&a).expect("a"), fs::read(&b).expect("b"));
    }

    /// Writes a batch with arbitrary columns and metadata, like another tool would.
    fn write_foreign<S: AsRef<str>>(
        path: &Path,
        columns: Vec<(S, ArrayRef)>,
        metadata: &[(&str, &str)],
    ) {
        let fields: Vec<Field> = columns
            .iter()
            .map(|(name, array)| Field::new(name.as_ref(), array.data_type().clone(), true))
            .collect();
        let batch = RecordBatch::try_new(
            Arc::new(Schema::new(fields)),
            columns.into_iter().map(|(_, array)| array).collect(),
        )
        .expect("valid batch");
        let pairs = metadata
            .iter()
            .map(|(k, v)| KeyValue::new(k.to_string(), v.to_string()))
            .collect();
        let properties = WriterProperties::builder()
            .set_key_value_metadata(Some(pairs))
            .build();
        let file = File::create(path).expect("create");
        let mut writer =
            ArrowWriter::try_new(file, batch.schema(), Some(properties)).expect("writer");
        writer.write(&batch).expect("write");
        writer.close().expect("close");
    }

    /// `meta`'s key-values with `rspo.schema` replaced by `schema`.
    fn rspo_metadata(schema: &str) -> Vec<(String, String)> {
        meta(FileKind::Samples)
            .to_key_values()
            .expect("valid")
            .into_iter()
            .map(|(k, v)| {
                if k == KEY_SCHEMA {
                    (k, schema.to_string())
                } else {
                    (k, v)
                }
            })
            .collect()
    }

    fn write_with_rspo_metadata(path: &Path, schema: &str, columns: Vec<(String, ArrayRef)>) {
        let pairs = rspo_metadata(schema);
        let refs: Vec<(&str, &str)> = pairs
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        write_foreign(path, columns, &refs);
    }

    /// The samples batch's columns with one replaced (or removed when `replacement` is None).
    fn sample_columns(column: &str, replacement: Option<ArrayRef>) -> Vec<(String, ArrayRef)> {
        let batch = SampleRow::to_batch(&samples()).expect("batch");
        let schema = batch.schema();
        schema
            .fields()
            .iter()
            .zip(batch.columns())
            .filter_map(|(field, array)| {
                let name = field.name().clone();
                if field.name() == column {
                    replacement.clone().map(|r| (name, r))
                } else {
                    Some((name, array.clone()))
                }
            })
            .collect()
    }

    #[test]
    fn missing_column_is_named_with_its_type() {
        let dir = TempDir::new();
        let path = dir.path().join("samples.parquet");
        write_with_rspo_metadata(&path, "samples/v1", sample_columns("sample_idx", None));
        let error = read_rows::<SampleRow>(&path).expect_err("sample_idx is missing");
        assert_eq!(
            error.to_string(),
            format!(
                "{}: missing column 'sample_idx' (expected UInt32)",
                path.display()
            )
        );
    }

    #[test]
    fn wrong_column_type_is_named() {
        let dir = TempDir::new();
        let path = dir.path().join("samples.parquet");
        let ints: ArrayRef = Arc::new(Int64Array::from(vec![1, 2, 3]));
        write_with_rspo_metadata(&path, "samples/v1", sample_columns("response", Some(ints)));
        let error = read_rows::<SampleRow>(&path).expect_err("response is Int64");
        assert_eq!(
            error.to_string(),
            format!(
                "{}: column 'response' has type Int64, expected Utf8",
                path.display()
            )
        );
    }

    #[test]
    fn wrong_schema_is_named() {
        let dir = TempDir::new();
        let path = dir.path().join("samples.parquet");
        write_with_rspo_metadata(&path, "winrates/v1", sample_columns("", None));
        let error = read_rows::<SampleRow>(&path).expect_err("a winrates file");
        assert_eq!(
            error.to_string(),
            format!(
                "{}: rspo.schema is 'winrates/v1', expected 'samples/v1'",
                path.display()
            )
        );
    }

    #[test]
    fn files_without_rspo_metadata_are_rejected_except_prompts() {
        let dir = TempDir::new();
        let path = dir.path().join("samples.parquet");
        write_foreign(&path, sample_columns("", None), &[]);
        let error = read_rows::<SampleRow>(&path).expect_err("no metadata");
        assert!(
            error
                .to_string()
                .contains("missing metadata key 'rspo.schema' (expected 'samples/v1'"),
            "{error}"
        );
        assert!(read_meta(&path).is_err());
    }

    #[test]
    fn nulls_and_bad_values_are_rejected() {
        let dir = TempDir::new();
        let path = dir.path().join("samples.parquet");
        let with_null: ArrayRef = Arc::new(StringArray::from(vec![Some("a"), None, Some("c")]));
        write_with_rspo_metadata(
            &path,
            "samples/v1",
            sample_columns("prompt_text", Some(with_null)),
        );
        let error = read_rows::<SampleRow>(&path).expect_err("null prompt_text");
        assert!(
            error.to_string().ends_with(
                "column 'prompt_text' has a null at row 1, expected a value in every row"
            ),
            "{error}"
        );

        let bad_reason: ArrayRef = Arc::new(StringArray::from(vec!["eos", "stop", "eos"]));
        write_with_rspo_metadata(
            &path,
            "samples/v1",
            sample_columns("finish_reason", Some(bad_reason)),
        );
        let error = read_rows::<SampleRow>(&path).expect_err("bad finish_reason");
        assert!(
            error.to_string().ends_with(
                "column 'finish_reason' has value 'stop' at row 1, expected 'eos' or 'length'"
            ),
            "{error}"
        );
    }

    #[test]
    fn duplicate_keys_are_rejected_on_read_and_write() {
        let dir = TempDir::new();
        let path = dir.path().join("samples.parquet");
        let idx: ArrayRef = Arc::new(UInt32Array::from(vec![0, 0, 0]));
        write_with_rspo_metadata(&path, "samples/v1", sample_columns("sample_idx", Some(idx)));
        let error = read_rows::<SampleRow>(&path).expect_err("duplicate key");
        assert!(
            error
                .to_string()
                .ends_with(r#"duplicate (prompt_id, sample_idx) = ("p1", 0) at rows 0 and 1"#),
            "{error}"
        );

        let out = dir.path().join("out.parquet");
        let rows = vec![sample("p1", 0), sample("p1", 0)];
        let error = write_rows(&out, &meta(FileKind::Samples), &rows).expect_err("duplicate key");
        assert!(
            error
                .to_string()
                .contains("duplicate (prompt_id, sample_idx)"),
            "{error}"
        );
        assert!(!out.exists());
    }

    fn simulated_failure(path: &Path) -> DataError {
        DataError::io(
            path,
            "cannot write",
            std::io::Error::other("simulated full disk"),
        )
    }

    fn leftovers(dir: &Path) -> Vec<String> {
        fs::read_dir(dir)
            .expect("list")
            .map(|entry| {
                entry
                    .expect("entry")
                    .file_name()
                    .to_string_lossy()
                    .into_owned()
            })
            .collect()
    }

    #[test]
    fn interrupted_write_leaves_nothing() {
        let dir = TempDir::new();
        let path = dir.path().join("out.parquet");
        let result: Result<(), DataError> = write_atomically(&path, |out| {
            out.write_all(b"PAR1 half a file").expect("buffered write");
            out.flush().expect("flush to the temporary");
            assert_eq!(
                leftovers(dir.path()).len(),
                1,
                "the temporary exists while writing"
            );
            Err(simulated_failure(&path))
        });
        assert!(result.is_err());
        assert!(!path.exists());
        assert_eq!(leftovers(dir.path()), Vec::<String>::new());

        // A conversion error (train log rows with different terms) also writes nothing.
        let rows = vec![
            TrainLogRow {
                step: 1,
                epoch: 0.0,
                loss: 0.0,
                self_play: 0.0,
                terms: BTreeMap::from([("reverse_kl".to_string(), 1.0)]),
                grad_norm: 0.0,
                lr: 0.0,
                tokens: 0,
                mean_logratio_t: 0.0,
                mean_logratio_ref: 0.0,
            },
            TrainLogRow {
                step: 2,
                epoch: 0.0,
                loss: 0.0,
                self_play: 0.0,
                terms: BTreeMap::new(),
                grad_norm: 0.0,
                lr: 0.0,
                tokens: 0,
                mean_logratio_t: 0.0,
                mean_logratio_ref: 0.0,
            },
        ];
        let error =
            write_rows(&path, &meta(FileKind::TrainLog), &rows).expect_err("inconsistent terms");
        assert!(
            error
                .to_string()
                .contains("train_log row 1 has regularizer terms []"),
            "{error}"
        );
        assert!(!path.exists());
        assert_eq!(leftovers(dir.path()), Vec::<String>::new());
    }

    #[test]
    fn a_failed_rewrite_keeps_the_old_file() {
        let dir = TempDir::new();
        let path = dir.path().join("out.parquet");
        write_rows(&path, &meta(FileKind::Samples), &samples()).expect("write");
        let before = fs::read(&path).expect("read");
        let result: Result<(), DataError> = write_atomically(&path, |out| {
            out.write_all(b"garbage").expect("buffered write");
            Err(simulated_failure(&path))
        });
        assert!(result.is_err());
        assert_eq!(fs::read(&path).expect("read"), before);
        assert_eq!(leftovers(dir.path()), vec!["out.parquet".to_string()]);
    }

    #[test]
    fn folders_appear_whole_or_not_at_all() {
        let dir = TempDir::new();
        let path = dir.path().join("state");
        write_dir_atomically(&path, |d: &Path| -> Result<(), DataError> {
            fs::write(d.join("a.json"), "one").map_err(|e| DataError::io(d, "write", e))
        })
        .expect("first write");
        assert_eq!(fs::read_to_string(path.join("a.json")).unwrap(), "one");
        // A rewrite replaces the folder whole.
        write_dir_atomically(&path, |d: &Path| -> Result<(), DataError> {
            fs::write(d.join("b.json"), "two").map_err(|e| DataError::io(d, "write", e))
        })
        .expect("rewrite");
        assert!(!path.join("a.json").exists());
        assert_eq!(fs::read_to_string(path.join("b.json")).unwrap(), "two");
        // A failed rewrite keeps the old folder and leaves no temporary.
        let result = write_dir_atomically(&path, |d: &Path| -> Result<(), DataError> {
            fs::write(d.join("c.json"), "half").expect("write into the temporary");
            Err(simulated_failure(&path))
        });
        assert!(result.is_err());
        assert_eq!(fs::read_to_string(path.join("b.json")).unwrap(), "two");
        assert!(!path.join("c.json").exists());
        assert_eq!(leftovers(dir.path()), vec!["state".to_string()]);
    }

    #[test]
    fn prompt_file_with_only_a_prompt_column() {
        let dir = TempDir::new();
        let path = dir.path().join("hf.parquet");
        let prompts: ArrayRef = Arc::new(LargeStringArray::from(vec![
            "Tell a joke.",
            "Name a color.",
        ]));
        write_foreign(&path, vec![("prompt", prompts)], &[("huggingface", "{}")]);
        let (meta, rows) = read_prompts(&path, &PromptOptions::default()).expect("prompts");
        assert_eq!(
            rows,
            vec![
                PromptRow {
                    prompt_id: prompt_id_for("Tell a joke."),
                    messages: vec![Message::user("Tell a joke.")],
                    reference: None,
                    constraints: None,
                },
                PromptRow {
                    prompt_id: prompt_id_for("Name a color."),
                    messages: vec![Message::user("Name a color.")],
                    reference: None,
                    constraints: None,
                },
            ]
        );
        assert_eq!(meta.schema, "prompts/v1");
        assert_eq!(meta.stage, EXTERNAL_STAGE);
        assert_eq!(meta.fingerprint, bytes_digest(&path));
    }

    /// A pyarrow-style messages column: items called `element`, struct fields content-first.
    fn foreign_messages(conversations: &[&[(&str, &str)]]) -> ArrayRef {
        let fields = Fields::from(vec![
            Field::new("content", DataType::Utf8, true),
            Field::new("role", DataType::Utf8, true),
        ]);
        let all: Vec<(&str, &str)> = conversations
            .iter()
            .flat_map(|c| c.iter().copied())
            .collect();
        let contents: ArrayRef = Arc::new(StringArray::from_iter_values(all.iter().map(|m| m.1)));
        let roles: ArrayRef = Arc::new(StringArray::from_iter_values(all.iter().map(|m| m.0)));
        let structs = StructArray::new(fields.clone(), vec![contents, roles], None);
        Arc::new(ListArray::new(
            Arc::new(Field::new("element", DataType::Struct(fields), true)),
            OffsetBuffer::from_lengths(conversations.iter().map(|c| c.len())),
            Arc::new(structs),
            None,
        ))
    }

    #[test]
    fn prompt_file_with_messages_ids_and_references() {
        let dir = TempDir::new();
        let path = dir.path().join("chat.parquet");
        let messages =
            foreign_messages(&[&[("system", "Be kind."), ("user", "Hi")], &[("user", "Yo")]]);
        let references: ArrayRef = Arc::new(StringArray::from(vec![Some("Hello"), None]));
        write_foreign(
            &path,
            vec![("messages", messages), ("reference", references)],
            &[],
        );
        let (_, rows) = read_rows::<PromptRow>(&path).expect("prompts");
        let first = vec![Message::new("system", "Be kind."), Message::user("Hi")];
        assert_eq!(rows[0].prompt_id, prompt_id_for_messages(&first));
        assert_eq!(rows[0].messages, first);
        assert_eq!(rows[0].reference.as_deref(), Some("Hello"));
        assert_eq!(rows[1].messages, vec![Message::user("Yo")]);
        assert_eq!(rows[1].reference, None);

        let ids: ArrayRef = Arc::new(StringArray::from(vec!["x1", "x2"]));
        let messages = foreign_messages(&[&[("user", "A")], &[("user", "B")]]);
        write_foreign(&path, vec![("prompt_id", ids), ("messages", messages)], &[]);
        let (_, rows) = read_rows::<PromptRow>(&path).expect("prompts");
        assert_eq!(rows[0].prompt_id, "x1");
        assert_eq!(rows[1].prompt_id, "x2");
    }

    #[test]
    fn prompt_file_with_a_renamed_column() {
        let dir = TempDir::new();
        let path = dir.path().join("alpaca.parquet");
        let instructions: ArrayRef = Arc::new(StringArray::from(vec!["Sort these."]));
        let outputs: ArrayRef = Arc::new(StringArray::from(vec!["Sorted."]));
        write_foreign(
            &path,
            vec![("instruction", instructions), ("output", outputs)],
            &[],
        );
        let (_, rows) = read_prompts(&path, &PromptOptions::with_prompt_column("instruction"))
            .expect("prompts");
        assert_eq!(rows[0].messages, vec![Message::user("Sort these.")]);

        let error = read_prompts(&path, &PromptOptions::with_prompt_column("question"))
            .expect_err("no such column");
        assert!(
            error.to_string().ends_with("missing column 'question' (expected Utf8 or List<Struct<role Utf8, content Utf8>>)"),
            "{error}"
        );
    }

    #[test]
    fn prompt_file_without_a_prompt_column() {
        let dir = TempDir::new();
        let path = dir.path().join("bad.parquet");
        let text: ArrayRef = Arc::new(StringArray::from(vec!["x"]));
        write_foreign(&path, vec![("text", text)], &[]);
        let error = read_prompts(&path, &PromptOptions::default()).expect_err("no prompt column");
        let message = error.to_string();
        assert!(
            message.starts_with(&format!("{}: no prompt column", path.display())),
            "{message}"
        );
        assert!(message.ends_with("found columns: text"), "{message}");

        let numbers: ArrayRef = Arc::new(Int64Array::from(vec![1]));
        write_foreign(&path, vec![("prompt", numbers)], &[]);
        let error = read_prompts(&path, &PromptOptions::default()).expect_err("prompt is Int64");
        assert!(
            error
                .to_string()
                .ends_with("column 'prompt' has type Int64, expected Utf8"),
            "{error}"
        );
    }

    #[test]
    fn a_prompt_file_with_both_prompt_and_messages_is_refused() {
        let dir = TempDir::new();
        let path = dir.path().join("chat.parquet");
        let prompts: ArrayRef = Arc::new(StringArray::from(vec!["Hi"]));
        let messages = foreign_messages(&[&[("user", "Hi"), ("assistant", "Hello")]]);
        let ids: ArrayRef = Arc::new(StringArray::from(vec!["a"]));
        write_foreign(
            &path,
            vec![
                ("prompt_id", ids),
                ("prompt", prompts),
                ("messages", messages),
            ],
            &[],
        );
        let error = read_prompts(&path, &PromptOptions::default()).expect_err("ambiguous");
        let message = error.to_string();
        assert!(
            message.starts_with(&format!(
                "{}: both a 'prompt' and a 'messages' column found (columns: prompt_id, prompt, \
                 messages)",
                path.display()
            )),
            "{message}"
        );
        assert!(message.contains("--prompt-column"), "{message}");
        let (_, rows) =
            read_prompts(&path, &PromptOptions::with_prompt_column("prompt")).expect("chosen");
        assert_eq!(rows[0].messages, vec![Message::user("Hi")]);
    }

    #[test]
    fn a_conversation_ending_with_an_assistant_turn_is_refused() {
        let dir = TempDir::new();
        let path = dir.path().join("chat.parquet");
        let ids: ArrayRef = Arc::new(StringArray::from(vec!["ok", "answered"]));
        let messages = foreign_messages(&[
            &[("user", "Hi"), ("assistant", "Hello"), ("user", "Bye")],
            &[("user", "Hi"), ("assistant", "Hello")],
        ]);
        write_foreign(&path, vec![("prompt_id", ids), ("messages", messages)], &[]);
        for error in [
            read_prompts(&path, &PromptOptions::default()).expect_err("ends with an answer"),
            read_rows::<PromptRow>(&path).expect_err("ends with an answer"),
        ] {
            let message = error.to_string();
            assert!(
                message.starts_with(&format!(
                    "{}: prompt 'answered' (row 1) ends with an assistant turn",
                    path.display()
                )),
                "{message}"
            );
            assert!(message.contains("drop it"), "{message}");
        }
    }

    /// blake3 of the file's bytes, computed here rather than by the reader.
    fn bytes_digest(path: &Path) -> String {
        blake3::hash(&fs::read(path).expect("bytes"))
            .to_hex()
            .to_string()
    }

    /// The repository's shipped prompt sets, whose Parquet files pyarrow wrote from the JSONL.
    fn shipped(name: &str) -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../data/prompts")
            .join(name)
    }

    #[test]
    fn json_lines_prompt_files_read_as_their_parquet_twins() {
        for name in ["train-1", "eval"] {
            let jsonl = shipped(&format!("{name}.jsonl"));
            let parquet = shipped(&format!("{name}.parquet"));
            let (meta, rows) = read_prompts(&jsonl, &PromptOptions::default()).expect("jsonl");
            let (_, expected) = read_prompts(&parquet, &PromptOptions::default()).expect("parquet");
            assert_eq!(rows, expected, "{name}");
            assert!(rows.len() >= 50);
            assert_eq!(meta.schema, "prompts/v1");
            assert_eq!(meta.stage, EXTERNAL_STAGE);
            assert_eq!(meta.fingerprint, bytes_digest(&jsonl));
        }
    }

    #[test]
    fn json_arrays_of_records_with_messages_and_renamed_columns() {
        let dir = TempDir::new();
        let path = dir.path().join("chat.JSON");
        fs::write(
            &path,
            r#"[
              {"messages": [{"role": "system", "content": "Be kind."},
                            {"role": "user", "content": "Hi", "name": "ann"}],
               "reference": "Hello", "source": 3},
              {"messages": [{"role": "user", "content": "Yo"}], "reference": null}
            ]"#,
        )
        .expect("write");
        let (meta, rows) = read_prompts(&path, &PromptOptions::default()).expect("prompts");
        let first = vec![Message::new("system", "Be kind."), Message::user("Hi")];
        assert_eq!(
            rows,
            vec![
                PromptRow {
                    prompt_id: prompt_id_for_messages(&first),
                    messages: first,
                    reference: Some("Hello".into()),
                    constraints: None,
                },
                PromptRow {
                    prompt_id: prompt_id_for_messages(&[Message::user("Yo")]),
                    messages: vec![Message::user("Yo")],
                    reference: None,
                    constraints: None,
                },
            ]
        );
        assert_eq!(meta.fingerprint, bytes_digest(&path));

        let path = dir.path().join("alpaca.ndjson");
        fs::write(
            &path,
            "{\"instruction\": \"Sort these.\", \"output\": \"Sorted.\"}\r\n\n",
        )
        .expect("write");
        let (_, rows) = read_prompts(&path, &PromptOptions::with_prompt_column("instruction"))
            .expect("prompts");
        assert_eq!(
            rows,
            vec![PromptRow {
                prompt_id: prompt_id_for("Sort these."),
                messages: vec![Message::user("Sort these.")],
                reference: None,
                constraints: None,
            }]
        );
    }

    #[test]
    fn json_prompt_errors_name_the_file_line_and_column() {
        let dir = TempDir::new();
        let path = dir.path().join("prompts.jsonl");
        let cases: &[(&str, &str, &str)] = &[
            (
                "{\"prompt\": \"a\"}\n{\"prompt\": \n",
                "",
                "line 2: not valid JSON at column 11: EOF while parsing a value",
            ),
            (
                "{\"prompt\": \"a\"}\n\n{\"prompt\": 5}\n",
                "",
                "line 3: column 'prompt' is a number (5), expected a string",
            ),
            (
                "{\"prompt\": \"a\"}\n{\"text\": \"b\"}\n",
                "",
                "line 2: column 'prompt' is missing or null, expected a string in every record",
            ),
            (
                "{\"prompt\": \"a\", \"prompt_id\": 7}\n",
                "",
                "line 1: column 'prompt_id' is a number (7), expected a string",
            ),
            (
                "{\"prompt\": \"a\", \"reference\": [\"x\"]}\n",
                "",
                "line 1: column 'reference' is an array, expected a string",
            ),
            (
                "{\"messages\": [{\"role\": \"user\"}]}\n",
                "",
                "line 1: column 'messages[0].content' is missing, expected a string",
            ),
            (
                "{\"messages\": \"Hi\"}\n",
                "",
                "line 1: column 'messages' is a string, expected an array of \
                 {\"role\": string, \"content\": string} objects",
            ),
            (
                "[{\"prompt\": \"a\"}, \"b\"]",
                "",
                "record 2: found a string, expected an object",
            ),
            (
                "{\"prompt\": \"a\"}\n{\"messages\": []}\n",
                "",
                "both a 'prompt' and a 'messages' column found (columns: prompt, messages)",
            ),
            (
                "{\"text\": \"a\"}\n",
                "",
                "no prompt column: expected a 'prompt' column",
            ),
            (
                "{\"text\": \"a\"}\n{\"text\": 1}\n",
                "text",
                "line 2: column 'text' is a number (1), expected a string or an array of",
            ),
            (
                "{\"text\": \"a\"}\n",
                "question",
                "missing column 'question'",
            ),
            (
                "{\"prompt_id\": \"x\", \"messages\": [{\"role\": \"user\", \"content\": \"Hi\"}, \
                 {\"role\": \"assistant\", \"content\": \"Hello\"}]}\n",
                "",
                "prompt 'x' (line 1) ends with an assistant turn",
            ),
        ];
        for (text, column, expected) in cases {
            fs::write(&path, text).expect("write");
            let options = match *column {
                "" => PromptOptions::default(),
                column => PromptOptions::with_prompt_column(column),
            };
            let error = read_prompts(&path, &options).expect_err(expected);
            let message = error.to_string();
            let prefix = format!("{}: {expected}", path.display());
            assert!(
                message.starts_with(&prefix),
                "{message}\nexpected: {prefix}"
            );
        }
    }

    #[test]
    fn unreadable_files_name_the_path() {
        let dir = TempDir::new();
        let missing = dir.path().join("missing.parquet");
        let error = read_meta(&missing).expect_err("missing");
        assert!(
            error
                .to_string()
                .starts_with(&format!("{}: cannot open", missing.display())),
            "{error}"
        );
        let junk = dir.path().join("junk.parquet");
        fs::write(&junk, b"not parquet").expect("write");
        let error = read_rows::<SampleRow>(&junk).expect_err("junk");
        assert!(
            error
                .to_string()
                .starts_with(&format!("{}: not a readable Parquet file", junk.display())),
            "{error}"
        );
    }
}
