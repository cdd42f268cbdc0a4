//! One run per output at a time: a stage holds an exclusive lock on each of its outputs for the
//! whole run, so two runs given the same `--out` cannot share its chunk folder and leave a
//! truncated file behind. The lock is the operating system's advisory lock on a file
//! `.<name>.lock` beside the output: released on any exit, `kill -9` included. Holding it, a run
//! is the only writer of the output, so it removes the temporaries a killed run left.

use anyhow::{bail, Context, Result};
use std::fs::{self, File, OpenOptions, TryLockError};
use std::path::{Path, PathBuf};

use crate::data::remove_temporaries;

/// The locks a run holds on its outputs; dropping it releases them and removes the lock files,
/// and the folders made for them if nothing else was written there.
#[derive(Debug)]
pub struct OutputLock {
    held: Vec<(PathBuf, File)>,
    /// Folders made for the lock files.
    made: Vec<PathBuf>,
}

/// `.<name>.lock` beside `output` (a file or a folder).
pub fn lock_path(output: &Path) -> PathBuf {
    let name = output
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    output.with_file_name(format!(".{name}.lock"))
}

/// Takes the lock of every output (flag, path), creating their folders, or fails at once
/// naming the output another run holds; then removes the outputs' stale temporaries.
pub fn lock_outputs(outputs: &[(&str, &Path)]) -> Result<OutputLock> {
    let mut lock = OutputLock {
        held: Vec::new(),
        made: Vec::new(),
    };
    for (flag, output) in outputs {
        let path = lock_path(output);
        if lock.held.iter().any(|(p, _)| *p == path) {
            continue;
        }
        lock.made.extend(make_folder(flag, output, &path)?);
        let file = lock_one(flag, output, &path)?;
        lock.held.push((path, file));
        remove_temporaries(output)?;
    }
    Ok(lock)
}

/// Creates the folder of the lock file `path`; returns the folders it made.
fn make_folder(flag: &str, output: &Path, path: &Path) -> Result<Vec<PathBuf>> {
    let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) else {
        return Ok(Vec::new());
    };
    let missing: Vec<PathBuf> = dir
        .ancestors()
        .take_while(|d| !d.as_os_str().is_empty() && !d.exists())
        .map(Path::to_path_buf)
        .collect();
    fs::create_dir_all(dir)
        .with_context(|| format!("{flag} {}: cannot create its folder", output.display()))?;
    Ok(missing)
}

/// Locks the file at `path`. A holder removes its lock file on release, so a lock taken on a
/// file that is no longer the one at `path` is taken again on the new one.
fn lock_one(flag: &str, output: &Path, path: &Path) -> Result<File> {
    loop {
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(path)
            .with_context(|| {
                format!(
                    "{flag} {}: cannot write in its folder (creating the lock file {})",
                    output.display(),
                    path.display()
                )
            })?;
        match file.try_lock() {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => bail!(
                "{flag} {}: another run is writing this output (it holds the lock {}); wait for \
                 it to finish, or give this run another --out",
                output.display(),
                path.display()
            ),
            Err(TryLockError::Error(e)) => {
                return Err(e).with_context(|| {
                    format!(
                        "{flag} {}: cannot lock {}",
                        output.display(),
                        path.display()
                    )
                })
            }
        }
        if same_file(&file, path) {
            return Ok(file);
        }
    }
}

/// Whether `path` still names the open `file` (its holder may have removed it meanwhile).
#[cfg(unix)]
fn same_file(file: &File, path: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    match (file.metadata(), fs::metadata(path)) {
        (Ok(a), Ok(b)) => a.dev() == b.dev() && a.ino() == b.ino(),
        _ => false,
    }
}

#[cfg(not(unix))]
fn same_file(_file: &File, path: &Path) -> bool {
    path.exists()
}

impl Drop for OutputLock {
    fn drop(&mut self) {
        // Removed while still locked, so no other run can be holding the lock of this file.
        for (path, file) in self.held.drain(..) {
            let _ = fs::remove_file(&path);
            drop(file);
        }
        // A run that failed before writing anything leaves no empty folders behind.
        self.made
            .sort_by_key(|d| std::cmp::Reverse(d.components().count()));
        for dir in &self.made {
            let _ = fs::remove_dir(dir); // fails, as it should, on a folder that holds anything
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::testing::TempDir;

    #[test]
    fn a_second_lock_on_an_output_fails_naming_it() {
        let tmp = TempDir::new();
        let out = tmp.path().join("sub/samples.parquet");
        let held = lock_outputs(&[("--out", &out)]).expect("first lock");
        assert!(tmp.path().join("sub/.samples.parquet.lock").exists());
        let error = lock_outputs(&[("--out", &out)])
            .expect_err("second lock")
            .to_string();
        assert!(
            error.contains("--out") && error.contains("samples.parquet"),
            "{error}"
        );
        assert!(
            error.contains("another run is writing this output"),
            "{error}"
        );
        drop(held);
        assert!(
            !tmp.path().join("sub").exists(),
            "the folder made for the lock goes too"
        );
        let again = lock_outputs(&[("--out", &out), ("--out", &out)]).expect("lock after release");
        drop(again);
    }

    #[test]
    fn a_lock_file_left_by_a_killed_run_is_taken_over() {
        let tmp = TempDir::new();
        let out = tmp.path().join("samples.parquet");
        fs::write(lock_path(&out), b"").expect("stale lock file");
        let stale_file = tmp.path().join(".samples.parquet.tmp-99-0");
        let stale_dir = tmp.path().join("model");
        fs::write(&stale_file, b"PAR1").expect("stale temporary");
        fs::create_dir_all(tmp.path().join(".model.tmp-99-1/x")).expect("stale folder");
        let other = tmp.path().join(".other.parquet.tmp-99-2");
        fs::write(&other, b"PAR1").expect("another output's temporary");
        let lock = lock_outputs(&[("--out", &out), ("--out", &stale_dir)]).expect("lock");
        assert!(!stale_file.exists() && !tmp.path().join(".model.tmp-99-1").exists());
        assert!(other.exists(), "only the locked outputs' temporaries go");
        drop(lock);
        let lock = lock_outputs(&[("--out", &out)]).expect("stale file, no lock");
        drop(lock);
        assert!(!lock_path(&out).exists());
    }
}
