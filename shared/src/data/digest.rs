//! Content digests of files and models. A model's digest is blake3 over its `*.safetensors`
//! weight files (or its GGUF file); each file's digest is cached outside the model directory (which may be
//! read-only) keyed by canonical path, size and modification time, so multi-GB weights are hashed
//! once.

use std::ffi::OsString;
use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::time::UNIX_EPOCH;

use serde::{Deserialize, Serialize};

use super::error::{ContentError, DataError};
use super::io::write_atomically;

/// The cache folder: `$RSPO_CACHE_DIR`, else `$XDG_CACHE_HOME/rspo`, else `~/.cache/rspo`
/// (empty variables count as unset; without a home, a folder in the system temp dir).
pub fn default_cache_dir() -> PathBuf {
    cache_dir_from(|name| std::env::var_os(name))
}

fn cache_dir_from(var: impl Fn(&str) -> Option<OsString>) -> PathBuf {
    let var = |name: &str| var(name).filter(|value| !value.is_empty());
    if let Some(dir) = var("RSPO_CACHE_DIR") {
        PathBuf::from(dir)
    } else if let Some(dir) = var("XDG_CACHE_HOME") {
        PathBuf::from(dir).join("rspo")
    } else if let Some(home) = var("HOME") {
        PathBuf::from(home).join(".cache").join("rspo")
    } else {
        std::env::temp_dir().join("rspo-cache")
    }
}

/// blake3 (hex) of a file's bytes, streamed.
pub fn file_digest(path: &Path) -> Result<String, DataError> {
    let file = File::open(path).map_err(|e| DataError::io(path, "cannot open", e))?;
    let mut hasher = blake3::Hasher::new();
    hasher
        .update_reader(file)
        .map_err(|e| DataError::io(path, "cannot read", e))?;
    Ok(hasher.finalize().to_hex().to_string())
}

/// One cached file digest; the key fields are stored too, to check a hit.
#[derive(Debug, Serialize, Deserialize, PartialEq)]
struct CachedDigest {
    path: String,
    size: u64,
    mtime_ns: u64,
    digest: String,
}

/// Where a file's digest is cached: `<cache_dir>/file-digests/<blake3 of the key>.json`, and
/// the entry it should hold (without the digest). None when the file has no usable mtime.
fn cache_entry(
    path: &Path,
    cache_dir: &Path,
) -> Result<Option<(PathBuf, CachedDigest)>, DataError> {
    let canonical = fs::canonicalize(path).map_err(|e| DataError::io(path, "cannot resolve", e))?;
    let metadata = fs::metadata(&canonical).map_err(|e| DataError::io(path, "cannot stat", e))?;
    let mtime_ns = metadata
        .modified()
        .ok()
        .and_then(|time| time.duration_since(UNIX_EPOCH).ok())
        .and_then(|since| u64::try_from(since.as_nanos()).ok());
    let Some(mtime_ns) = mtime_ns else {
        return Ok(None);
    };
    let entry = CachedDigest {
        path: canonical.to_string_lossy().into_owned(),
        size: metadata.len(),
        mtime_ns,
        digest: String::new(),
    };
    let key = format!("{}\n{}\n{}", entry.path, entry.size, entry.mtime_ns);
    let name = format!("{}.json", blake3::hash(key.as_bytes()).to_hex());
    Ok(Some((cache_dir.join("file-digests").join(name), entry)))
}

/// [`file_digest`], cached in `cache_dir` by canonical path, size and mtime. An unreadable or
/// stale cache entry is recomputed and replaced.
pub fn cached_file_digest(path: &Path, cache_dir: &Path) -> Result<String, DataError> {
    let Some((cache_file, mut entry)) = cache_entry(path, cache_dir)? else {
        return file_digest(path);
    };
    let hit = fs::read_to_string(&cache_file)
        .ok()
        .and_then(|text| serde_json::from_str::<CachedDigest>(&text).ok())
        .filter(|cached| {
            cached.path == entry.path
                && cached.size == entry.size
                && cached.mtime_ns == entry.mtime_ns
        });
    if let Some(cached) = hit {
        return Ok(cached.digest);
    }
    entry.digest = file_digest(path)?;
    write_atomically(&cache_file, |out| {
        serde_json::to_writer(out, &entry).map_err(|e| {
            DataError::io(
                &cache_file,
                "cannot write the digest cache (set RSPO_CACHE_DIR to move it)",
                e.into(),
            )
        })
    })?;
    Ok(entry.digest)
}

/// The weight files of a model directory: its `*.safetensors` files, sorted by file name, or
/// without any, its `*.gguf` file. A GGUF model given as the file itself is its own weights.
pub fn weight_files(model_dir: &Path) -> Result<Vec<PathBuf>, DataError> {
    let has_ext = |path: &Path, ext: &str| path.extension().is_some_and(|e| e == ext);
    if model_dir.is_file() && has_ext(model_dir, "gguf") {
        return Ok(vec![model_dir.to_path_buf()]);
    }
    let entries =
        fs::read_dir(model_dir).map_err(|e| DataError::io(model_dir, "cannot list", e))?;
    let mut files = Vec::new();
    let mut gguf = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| DataError::io(model_dir, "cannot list", e))?;
        let path = entry.path();
        // `is_file` follows symlinks, as in the Hugging Face hub cache.
        if has_ext(&path, "safetensors") && path.is_file() {
            files.push(path);
        } else if has_ext(&path, "gguf") && path.is_file() {
            gguf.push(path);
        }
    }
    if files.is_empty() {
        files = gguf;
    }
    files.sort_by(|a, b| a.file_name().cmp(&b.file_name()));
    if files.is_empty() {
        return Err(DataError::content(model_dir, ContentError::NoWeightFiles));
    }
    Ok(files)
}

/// A model's digest (hex): blake3 over each weight file's name and digest, in file-name order.
/// Per-file digests are cached in `cache_dir`; nothing is written into `model_dir`.
pub fn model_digest(model_dir: &Path, cache_dir: &Path) -> Result<String, DataError> {
    let mut hasher = blake3::Hasher::new();
    hasher.update(b"rspo.model-digest.v1");
    for file in weight_files(model_dir)? {
        let name = file
            .file_name()
            .map(|name| name.to_string_lossy().into_owned())
            .unwrap_or_default();
        let digest = cached_file_digest(&file, cache_dir)?;
        for part in [name.as_bytes(), digest.as_bytes()] {
            hasher.update(&(part.len() as u64).to_le_bytes());
            hasher.update(part);
        }
    }
    Ok(hasher.finalize().to_hex().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::testing::TempDir;

    /// Every file under `dir` with its bytes and modification time.
    fn snapshot(dir: &Path) -> Vec<(PathBuf, Vec<u8>, std::time::SystemTime)> {
        let mut files: Vec<_> = fs::read_dir(dir)
            .expect("list")
            .map(|entry| {
                let path = entry.expect("entry").path();
                let bytes = fs::read(&path).expect("read");
                let mtime = fs::metadata(&path)
                    .and_then(|m| m.modified())
                    .expect("mtime");
                (path, bytes, mtime)
            })
            .collect();
        files.sort();
        files
    }

    fn model(dir: &Path, files: &[(&str, &[u8])]) {
        fs::create_dir_all(dir).expect("mkdir");
        for (name, bytes) in files {
            fs::write(dir.join(name), bytes).expect("write");
        }
    }

    #[test]
    fn same_weights_give_the_same_digest() {
        let tmp = TempDir::new();
        let cache = tmp.path().join("cache");
        let weights: &[(&str, &[u8])] = &[
            ("model-00002-of-00002.safetensors", b"second"),
            ("model-00001-of-00002.safetensors", b"first"),
            ("config.json", b"{}"),
        ];
        model(&tmp.path().join("a"), weights);
        model(&tmp.path().join("b"), weights);
        let a = model_digest(&tmp.path().join("a"), &cache).expect("digest a");
        let b = model_digest(&tmp.path().join("b"), &cache).expect("digest b");
        assert_eq!(a, b);
        assert_eq!(a.len(), 64);

        // Non-weight files do not count; weight contents and names do.
        fs::write(tmp.path().join("a/config.json"), b"{\"x\":1}").expect("write");
        assert_eq!(
            model_digest(&tmp.path().join("a"), &cache).expect("digest"),
            a
        );
        model(
            &tmp.path().join("c"),
            &[
                ("model-00001-of-00002.safetensors", b"first"),
                ("model-00002-of-00002.safetensors", b"SECOND"),
            ],
        );
        assert_ne!(
            model_digest(&tmp.path().join("c"), &cache).expect("digest c"),
            a
        );
        model(
            &tmp.path().join("d"),
            &[
                ("x-00001.safetensors", b"first"),
                ("x-00002.safetensors", b"second"),
            ],
        );
        assert_ne!(
            model_digest(&tmp.path().join("d"), &cache).expect("digest d"),
            a
        );
    }

    #[test]
    fn the_cache_is_used_and_the_model_dir_is_not_written() {
        let tmp = TempDir::new();
        let cache = tmp.path().join("cache");
        let dir = tmp.path().join("model");
        model(&dir, &[("model.safetensors", b"weights")]);
        let before = snapshot(&dir);
        let digest = model_digest(&dir, &cache).expect("digest");
        assert_eq!(snapshot(&dir), before, "the model dir is untouched");

        let entries = snapshot(&cache.join("file-digests"));
        assert_eq!(entries.len(), 1, "one cache file per weight file");
        let cache_file = &entries[0].0;
        let mut entry: CachedDigest = serde_json::from_slice(&entries[0].1).expect("cache json");
        assert_eq!(
            entry.digest,
            file_digest(&dir.join("model.safetensors")).expect("digest")
        );

        // A second call reads the cache instead of hashing: planting a different digest shows.
        entry.digest = "planted".into();
        fs::write(cache_file, serde_json::to_vec(&entry).expect("json")).expect("write");
        let from_cache = model_digest(&dir, &cache).expect("digest");
        assert_ne!(from_cache, digest);

        // Changing the file (size and mtime) invalidates the entry.
        fs::write(dir.join("model.safetensors"), b"new weights").expect("write");
        let fresh = model_digest(&dir, &cache).expect("digest");
        assert_ne!(fresh, from_cache);
        assert_ne!(fresh, digest);
    }

    #[test]
    fn cache_dir_follows_the_environment() {
        let env = |pairs: &'static [(&'static str, &'static str)]| {
            move |name: &str| {
                pairs
                    .iter()
                    .find(|(key, _)| *key == name)
                    .map(|(_, value)| OsString::from(value))
            }
        };
        assert_eq!(
            cache_dir_from(env(&[
                ("RSPO_CACHE_DIR", "/r"),
                ("XDG_CACHE_HOME", "/x"),
                ("HOME", "/h")
            ])),
            PathBuf::from("/r")
        );
        assert_eq!(
            cache_dir_from(env(&[
                ("RSPO_CACHE_DIR", ""),
                ("XDG_CACHE_HOME", "/x"),
                ("HOME", "/h")
            ])),
            PathBuf::from("/x/rspo")
        );
        assert_eq!(
            cache_dir_from(env(&[("HOME", "/h")])),
            PathBuf::from("/h/.cache/rspo")
        );
    }

    #[test]
    fn a_dir_without_weights_is_an_error() {
        let tmp = TempDir::new();
        model(&tmp.path().join("m"), &[("config.json", b"{}")]);
        let error =
            model_digest(&tmp.path().join("m"), &tmp.path().join("cache")).expect_err("no weights");
        assert!(
            error
                .to_string()
                .contains("no *.safetensors weight files found"),
            "{error}"
        );
    }
}
