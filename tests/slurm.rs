//! `make iter LAUNCHER=slurm SHARDS=2` on a real one-node Slurm cluster (scripts/slurm-local.sh)
//! writes the files of a plain `make iter`, byte for byte (the timings aside). Skips, saying
//! why, where Slurm cannot start (not installed: `scripts/slurm-local.sh start` as root installs
//! and starts it; not root; daemons that do not come up), except under CI=true, where .ci/run
//! starts the cluster and its absence fails the test.

use e2e::{bin, repo, Scratch};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Starts the local cluster (never installing); the reason when it cannot.
fn start_slurm() -> Result<(), String> {
    let out = Command::new(repo("scripts/slurm-local.sh"))
        .arg("start")
        .env("SLURM_LOCAL_INSTALL", "0")
        .output()
        .map_err(|e| format!("cannot run scripts/slurm-local.sh: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(text(&out))
    }
}

/// The local cluster's slurm.conf (scripts/slurm-local.sh's folder).
fn slurm_conf() -> PathBuf {
    let dir = std::env::var_os("SLURM_LOCAL_DIR").unwrap_or_else(|| "/tmp/rspo-slurm".into());
    PathBuf::from(dir).join("slurm.conf")
}

fn make_iter(run_dir: &Path, cache: &Path, extra: &[&str]) {
    let bin_dir = bin("generate").parent().unwrap().to_path_buf();
    let out = Command::new("make")
        .current_dir(repo(""))
        .args(["iter", "N=1", "BUILD="])
        .arg(format!("RUNDIR={}", run_dir.display()))
        .arg(format!("BIN={}", bin_dir.display()))
        .args(extra)
        .env("RSPO_CACHE_DIR", cache)
        .env("SLURM_CONF", slurm_conf())
        .output()
        .expect("make runs");
    assert!(
        out.status.success(),
        "make iter N=1 {extra:?} failed:\n{}",
        text(&out)
    );
}

/// Every file under `dir` (relative path -> bytes), timing logs and job logs aside. report.md
/// is kept without its stage-time table rows (seconds differ run to run).
fn files(dir: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    let mut all = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).unwrap() {
            let path = entry.unwrap().path();
            let rel = path.strip_prefix(dir).unwrap().to_path_buf();
            if rel == Path::new("timings.tsv") || rel.starts_with("slurm-logs") {
                continue;
            }
            if path.is_dir() {
                stack.push(path);
                continue;
            }
            let mut bytes = std::fs::read(&path).unwrap();
            if rel.ends_with("report.md") {
                bytes = without_times(&String::from_utf8(bytes).unwrap()).into_bytes();
            }
            all.insert(rel, bytes);
        }
    }
    all
}

/// report.md without the rows of its stage-time table.
fn without_times(report: &str) -> String {
    let stages = [
        "generate-",
        "logprobs-",
        "score-",
        "estimate-winrate-",
        "train-step-",
        "evaluate",
        "**total**",
    ];
    report
        .lines()
        .filter(|l| !stages.iter().any(|s| l.starts_with(&format!("| {s}"))))
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn make_iter_on_slurm_writes_the_files_of_a_plain_run() {
    if let Err(why) = start_slurm() {
        let message =
            format!("Slurm cannot start here, so make iter LAUNCHER=slurm is not tested:\n{why}");
        assert!(std::env::var("CI").as_deref() != Ok("true"), "{message}");
        eprintln!("SKIPPED: {message}");
        return;
    }
    let scratch = Scratch::new("slurm");
    // Both runs in the same folder (input paths are recorded in the files), one after the other.
    let run_dir = scratch.path("tiny");
    make_iter(&run_dir, &scratch.path(".cache-plain"), &[]);
    let plain = files(&run_dir);
    std::fs::rename(&run_dir, scratch.path("plain")).unwrap();
    // Its own judgment cache: the score shards judge, not read the plain run's judgments.
    make_iter(
        &run_dir,
        &scratch.path(".cache-slurm"),
        &["LAUNCHER=slurm", "SHARDS=2"],
    );
    let logs = run_dir.join("slurm-logs");
    for job in [
        "generate-1-0",
        "generate-1-1",
        "score-1-1",
        "train-step-1",
        "evaluate",
    ] {
        assert!(
            logs.join(format!("{job}.log")).is_file(),
            "no job log {job}.log"
        );
    }
    let sharded = files(&run_dir);
    let names = |m: &BTreeMap<PathBuf, Vec<u8>>| m.keys().cloned().collect::<Vec<_>>();
    assert_eq!(
        names(&sharded),
        names(&plain),
        "the two runs wrote different files"
    );
    let differ: Vec<String> = plain
        .iter()
        .filter(|(path, bytes)| &&sharded[*path] != bytes)
        .map(|(path, bytes)| match std::str::from_utf8(bytes) {
            Ok(plain_text) => format!(
                "{}:\n--- plain\n{plain_text}\n--- slurm\n{}",
                path.display(),
                String::from_utf8_lossy(&sharded[path])
            ),
            Err(_) => path.display().to_string(),
        })
        .collect();
    assert!(
        differ.is_empty(),
        "files that differ from the plain run's:\n{}",
        differ.join("\n")
    );
    assert!(plain.len() > 10, "{:?}", names(&plain));
}
