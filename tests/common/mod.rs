//! Helpers for the end-to-end tests: where the built binaries and the fixtures are, scratch
//! folders, running a stage and checking how it ended.

pub mod browser;

use candle_core::Tensor;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// A stage binary from this workspace's target folder. `make test` builds them first
/// (`cargo build --workspace --bins`).
pub fn bin(name: &str) -> PathBuf {
    // The test executable lives in target/<profile>/deps/.
    let exe = std::env::current_exe().expect("current exe");
    let dir = exe.parent().and_then(Path::parent).expect("target dir");
    let path = dir.join(name);
    assert!(
        path.is_file(),
        "{} is missing: build the binaries first (`make test` runs `cargo build --workspace --bins`)",
        path.display()
    );
    path
}

pub fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures")
        .join(name)
}

pub fn repo(path: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join(path)
}

/// A fresh scratch folder, removed when dropped.
pub struct Scratch(pub PathBuf);

impl Scratch {
    pub fn new(name: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("rspo-e2e-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("scratch dir");
        // Digests are cached per test run, never in the user's cache.
        Scratch(dir)
    }
    pub fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Runs a binary with arguments, with the digest cache inside `scratch`.
pub fn run(scratch: &Scratch, name: &str, args: &[&str]) -> Output {
    Command::new(bin(name))
        .args(args)
        .env("RSPO_CACHE_DIR", scratch.path(".cache"))
        .output()
        .expect("run binary")
}

/// Runs and requires success; returns stderr.
pub fn ok(scratch: &Scratch, name: &str, args: &[&str]) -> String {
    let out = run(scratch, name, args);
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "{name} {args:?} failed:\n{stderr}");
    stderr
}

/// Runs and requires failure; returns stderr.
pub fn fails(scratch: &Scratch, name: &str, args: &[&str]) -> String {
    let out = run(scratch, name, args);
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        !out.status.success(),
        "{name} {args:?} should have failed:\n{stderr}"
    );
    stderr
}

pub fn s(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

/// The largest absolute difference between two tensors of one shape.
pub fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
    (a - b)
        .and_then(|d| d.abs())
        .and_then(|d| d.max_all())
        .and_then(|d| d.to_dtype(candle_core::DType::F32))
        .and_then(|d| d.to_scalar::<f32>())
        .expect("tensors of one shape")
}

/// A prompts file of one user turn per text, with ids `p0`, `p1`, ...
pub fn write_prompts(path: &Path, texts: &[&str]) {
    let rows: Vec<rspo::data::PromptRow> = texts
        .iter()
        .enumerate()
        .map(|(i, t)| rspo::data::PromptRow {
            prompt_id: format!("p{i}"),
            messages: vec![rspo::data::Message::user(*t)],
            reference: None,
            constraints: None,
        })
        .collect();
    let meta = rspo::data::FileMeta::new(rspo::data::FileKind::Prompts, "test", "prompts");
    rspo::data::write_rows(path, &meta, &rows).unwrap();
}

/// Marks hand-written win rates as estimated from preferences of `samples` (the chain
/// train-step checks), as estimate-winrate does.
pub fn record_samples(
    winrates: &mut rspo::data::FileMeta,
    samples: &Path,
    samples_meta: &rspo::data::FileMeta,
) {
    let input = rspo::data::InputRef {
        path: s(samples).to_string(),
        fingerprint: samples_meta.fingerprint.clone(),
    };
    winrates.extra.insert(
        rspo::data::PREFERENCE_INPUTS.to_string(),
        rspo::data::FileMeta::inputs_json(&[input]),
    );
}

/// Borrowed views of owned arguments, for [`ok`], [`fails`] and [`run`].
pub fn strs(args: &[String]) -> Vec<&str> {
    args.iter().map(String::as_str).collect()
}

/// The four files `train-step` reads beside its policy.
pub struct TrainInputs {
    pub samples: PathBuf,
    pub winrates: PathBuf,
    pub policy_lp: PathBuf,
    pub reference_lp: PathBuf,
}

impl TrainInputs {
    /// `train-step`'s arguments: the policy, these four files and `--out`, then `more`.
    pub fn args(&self, policy: &Path, out: &Path, more: &[&str]) -> Vec<String> {
        let files = [
            ("--policy", policy),
            ("--samples", &self.samples),
            ("--winrates", &self.winrates),
            ("--policy-logprobs", &self.policy_lp),
            ("--reference-logprobs", &self.reference_lp),
            ("--out", out),
        ];
        let files = files.iter().flat_map(|(flag, p)| [*flag, s(p)]);
        files
            .chain(more.iter().copied())
            .map(String::from)
            .collect()
    }
}

/// A short run on the tiny fixtures: AdamW without warm-up, in batches of two.
pub const QUICK_ADAMW: &[&str] = &[
    "--optimizer",
    "adamw",
    "--warmup-ratio",
    "0",
    "--batch-size",
    "2",
];

/// The rows of the first Markdown table after `marker` (or of the first table when empty), as
/// cells; the first row is the header.
pub fn markdown_table(text: &str, marker: &str) -> Vec<Vec<String>> {
    let start = text.find(marker).unwrap_or_else(|| panic!("no {marker:?}"));
    text[start..]
        .lines()
        .skip_while(|l| !l.starts_with('|'))
        .take_while(|l| l.starts_with('|'))
        .filter(|l| !l.starts_with("| ---"))
        .map(|l| {
            l.trim_matches('|')
                .split('|')
                .map(|c| c.trim().to_string())
                .collect()
        })
        .collect()
}

/// Checks a table README.md quotes (`quoted`, header first) against the run's (`run`, the
/// same columns). Cell for cell where this machine's matrix products round as they did where
/// the README's tables were made ([`rounds_as_readme_tables`]); elsewhere the header and each
/// row's first `key_columns` cells (the model; the variant and iteration), with a note on
/// stderr.
pub fn assert_quoted_table(
    quoted: &[Vec<String>],
    run: &[Vec<String>],
    key_columns: usize,
    context: &str,
) {
    if rounds_as_readme_tables() {
        assert_eq!(
            quoted, run,
            "README.md's table differs from this run's:\n{context}"
        );
        return;
    }
    eprintln!(
        "note: this processor has no AVX-512, so its matrix products round differently from \
         those that made README.md's tables; comparing their rows and columns only"
    );
    let keys = |t: &[Vec<String>]| -> Vec<Vec<String>> {
        t.iter()
            .skip(1)
            .map(|r| r[..key_columns].to_vec())
            .collect()
    };
    assert_eq!(
        quoted.first(),
        run.first(),
        "README.md's table header:\n{context}"
    );
    assert_eq!(
        keys(quoted),
        keys(run),
        "README.md's table rows:\n{context}"
    );
}

/// Whether this machine's matrix products round as on the machines that made README.md's
/// result tables: x86-64 with AVX-512. gemm picks its kernels by the processor, and with them
/// where each sum is split into blocks; without AVX-512 a trained model's weights differ in
/// their last bits, sampled tokens diverge after a few steps, and the quoted numbers with them
/// (by several points of win rate on the tiny pipelines).
pub fn rounds_as_readme_tables() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("avx512f")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// A finished command's stdout then stderr, as text.
pub fn output_text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}
