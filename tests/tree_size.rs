//! The tracked tree stays small enough to copy to a GPU machine with the CUDA bundle beside it:
//! at most 40 MiB of working tree, and no large file tracked twice. A symlink counts as the
//! file it points to: copies (a GPU machine's, an archive's, `cp -L`) may follow it.

use std::collections::HashMap;
use std::process::Command;

use e2e::repo;

const BUDGET: u64 = 40 << 20;
/// Files at least this large must not be byte-identical copies of each other (share one file
/// through a relative symlink instead, as the fixtures' tokenizer.json do).
const LARGE: u64 = 1 << 20;

fn tracked_files() -> Vec<(String, u64)> {
    let out = Command::new("git")
        .args(["ls-files", "-z"])
        .current_dir(repo(""))
        .output()
        .expect("run `git ls-files` (the size check needs a git checkout)");
    assert!(
        out.status.success(),
        "git ls-files failed in {}: {}",
        repo("").display(),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .expect("utf-8 paths")
        .split('\0')
        .filter(|p| !p.is_empty())
        .filter_map(|p| {
            // A file deleted in the working tree but not yet in the index does not count.
            let meta = std::fs::metadata(repo(p)).ok()?;
            Some((p.to_string(), meta.len()))
        })
        .collect()
}

#[test]
fn tracked_tree_fits_the_budget() {
    let mut files = tracked_files();
    assert!(files.len() > 100, "only {} tracked files", files.len());
    let total: u64 = files.iter().map(|f| f.1).sum();
    files.sort_by_key(|f| std::cmp::Reverse(f.1));
    let largest: Vec<String> = files
        .iter()
        .take(8)
        .map(|(p, n)| format!("  {p}: {:.2} MiB", *n as f64 / 1048576.0))
        .collect();
    assert!(
        total <= BUDGET,
        "the tracked tree is {:.2} MiB, over its budget of {} MiB (scripts/gpu-check.sh copies it \
         to a GPU machine with the CUDA bundle). Largest files:\n{}",
        total as f64 / 1048576.0,
        BUDGET >> 20,
        largest.join("\n")
    );
}

#[test]
fn no_large_file_is_tracked_twice() {
    let mut by_size: HashMap<u64, Vec<String>> = HashMap::new();
    for (path, len) in tracked_files() {
        let regular = std::fs::symlink_metadata(repo(&path)).is_ok_and(|m| m.is_file());
        if len >= LARGE && regular {
            by_size.entry(len).or_default().push(path);
        }
    }
    for paths in by_size.values() {
        let bytes: Vec<Vec<u8>> = paths
            .iter()
            .map(|p| std::fs::read(repo(p)).unwrap())
            .collect();
        for i in 0..paths.len() {
            for j in i + 1..paths.len() {
                assert!(
                    bytes[i] != bytes[j],
                    "{} and {} are the same {} bytes: keep one and link the other to it",
                    paths[i],
                    paths[j],
                    bytes[i].len()
                );
            }
        }
    }
}
