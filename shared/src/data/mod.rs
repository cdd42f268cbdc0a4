//! The data contracts between the pipeline stages (DESIGN.md, "Parquet schemas (version 1)" and
//! "Fingerprints, caching, atomic writes").
//!
//! - [`schema`]: the file kinds and their Arrow schemas.
//! - [`Rows`] and the row types ([`SampleRow`], [`PromptRow`], [`TrainLogRow`], ...): one plain
//!   struct per kind, converted to and from Arrow record batches.
//! - [`FileMeta`]: the `rspo.*` Parquet key-value metadata every file carries.
//! - [`read_rows`], [`read_prompts`], [`read_meta`], [`write_rows`], [`write_atomically`],
//!   [`write_dir_atomically`]: checked reads, atomic and byte-reproducible writes; prompt files
//!   may also be JSON Lines or JSON arrays.
//! - [`stage_fingerprint`], [`canonical_json`], [`prompt_id_for`], [`row_seed`]: hashing.
//! - [`model_digest`]: cached digests of model weights ([`DigestCache`] says whether to reuse).
//! - [`ChunkStore`]: resumable chunked output for long stages.
//!
//! Errors are [`DataError`]s, which name the file, and inside it the column, key or row, what was
//! found and what was expected.

mod chunks;
mod columns;
mod constraints_column;
mod digest;
mod error;
mod fingerprint;
mod io;
mod json_prompts;
mod metadata;
mod prompts;
mod rows;
pub mod schema;
#[cfg(test)]
pub(crate) mod testing;
mod train_log;

pub use chunks::{chunk_dir, ChunkStore, CHUNK_KEYS, CHUNK_STAGE};
pub use digest::{
    cached_file_digest, default_cache_dir, file_digest, model_digest, weight_files, DigestCache,
};
pub use error::{ContentError, DataError};
pub use fingerprint::{
    canonical_json, prompt_id_for, prompt_id_for_messages, row_seed, stage_fingerprint,
};
pub use io::{
    read_meta, read_prompts, read_rows, read_rows_or_shard, remove_temporaries, write_atomically,
    write_dir_atomically, write_rows, EXTERNAL_STAGE,
};
pub use metadata::{
    FileMeta, InputRef, ModelRef, KEY_CONFIG, KEY_FINGERPRINT, KEY_INPUTS, KEY_MODELS, KEY_PREFIX,
    KEY_SCHEMA, KEY_STAGE, KEY_VERSION, PREFERENCE_INPUTS, SHARD,
};
pub use prompts::{prompts_from_batch, PromptOptions, PromptRow};
pub use rows::{
    check_unique_keys, ConstraintRow, EvalRow, FinishReason, LogprobRow, Message, PreferenceRow,
    Rows, SampleRow, ScoreRow, WinrateRow,
};
pub use schema::FileKind;
pub use train_log::TrainLogRow;
