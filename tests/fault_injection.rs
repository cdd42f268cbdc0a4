//! Fault injection (issue 17): the real binaries killed with -9 at seeded-random moments and
//! rerun write the bytes of an uninterrupted run; two runs given one output at once: one fails
//! fast naming it, the other writes the whole file.

use e2e::{bin, fixture, ok, s, strs, Scratch, TrainInputs, QUICK_ADAMW};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A stage command: binary and arguments, and the files whose bytes are compared.
struct Stage {
    bin: &'static str,
    args: Vec<String>,
    outputs: Vec<PathBuf>,
}

impl Stage {
    fn new(bin: &'static str, args: &[&str], outputs: &[&Path]) -> Self {
        Stage {
            bin,
            args: args.iter().map(|a| a.to_string()).collect(),
            outputs: outputs.iter().map(|p| p.to_path_buf()).collect(),
        }
    }

    /// The same command writing into `dir` instead of `from`.
    fn moved(&self, from: &Path, dir: &Path) -> Stage {
        let swap = |a: &str| a.replace(s(from), s(dir));
        Stage {
            bin: self.bin,
            args: self.args.iter().map(|a| swap(a)).collect(),
            outputs: self
                .outputs
                .iter()
                .map(|p| PathBuf::from(swap(s(p))))
                .collect(),
        }
    }

    fn spawn(&self, t: &Scratch) -> Child {
        Command::new(bin(self.bin))
            .args(&self.args)
            .env("RSPO_CACHE_DIR", t.path(".cache"))
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn")
    }

    fn run(&self, t: &Scratch) -> String {
        let args: Vec<&str> = self.args.iter().map(String::as_str).collect();
        ok(t, self.bin, &args)
    }

    fn bytes(&self) -> Vec<Vec<u8>> {
        self.outputs
            .iter()
            .map(|p| std::fs::read(p).unwrap_or_else(|e| panic!("{}: {e}", p.display())))
            .collect()
    }
}

/// splitmix64: the kill moments are random but the same on every run of the test.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
}

/// Names under `dir` (recursively) that a finished run must not leave: chunk folders, lock
/// files, temporaries, train state.
fn leftovers(dir: &Path) -> Vec<String> {
    let mut found = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let path = e.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        if name.ends_with(".lock")
            || name.ends_with(".chunks")
            || name.contains(".tmp-")
            || name == ".train-state"
        {
            found.push(path.display().to_string());
        } else if path.is_dir() && name != ".cache" {
            found.extend(leftovers(&path));
        }
    }
    found
}

/// How far a run has come, from the folder it saves progress in: chunk files written, or the
/// latest saved train step.
fn progress(watch: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(watch) else {
        return 0;
    };
    let mut chunks = 0;
    let mut step = 0;
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if name.starts_with("chunk-") {
            chunks += 1;
        } else if let Some(n) = name.strip_prefix("step-") {
            step = step.max(n.parse().unwrap_or(0));
        }
    }
    chunks + step
}

/// Runs `stage` uninterrupted into `clean`, then into `work` killed with -9 `kills` times, each
/// time a seeded 1 or 2 units of progress (chunks or train steps, seen in `watch`) plus a
/// seeded 0-20 ms after it started, the runs resuming in turn; then to completion: the same
/// bytes, nothing left behind.
fn killed_and_resumed(
    t: &Scratch,
    stage: &Stage,
    work: &Path,
    watch: &Path,
    kills: u64,
    seed: u64,
) {
    let clean = t.path(&format!(
        "clean-{}",
        work.file_name().unwrap().to_string_lossy()
    ));
    let uninterrupted = stage.moved(work, &clean);
    std::fs::create_dir_all(&clean).unwrap();
    uninterrupted.run(t);
    let expected = uninterrupted.bytes();

    std::fs::create_dir_all(work).unwrap();
    let mut rng = Rng(seed);
    let mut killed = 0;
    for _ in 0..kills {
        let target = progress(watch) + 1 + rng.next() % 2;
        let extra = Duration::from_millis(rng.next() % 20);
        let mut child = stage.spawn(t);
        let started = Instant::now();
        while progress(watch) < target && child.try_wait().unwrap().is_none() {
            assert!(started.elapsed() < Duration::from_secs(120), "no progress");
            std::thread::sleep(Duration::from_millis(1));
        }
        std::thread::sleep(extra);
        if child.try_wait().unwrap().is_none() {
            child.kill().unwrap(); // SIGKILL
            killed += 1;
        }
        child.wait().unwrap();
    }
    assert!(killed >= 1, "{}: no run was killed", stage.bin);
    let log = stage.run(t);
    assert!(
        stage.bytes() == expected,
        "{} {:?}: after {killed} kills and a rerun, other bytes than an uninterrupted run\n{log}",
        stage.bin,
        stage.args
    );
    assert_eq!(leftovers(work), Vec::<String>::new(), "{}", stage.bin);
    eprintln!(
        "{}: {killed} of {kills} runs killed, then resumed",
        stage.bin
    );
}

fn write_prompts(path: &Path, n: usize) {
    let texts: Vec<String> = (0..n)
        .map(|i| format!("Question {i}: name something you like."))
        .collect();
    let texts: Vec<&str> = texts.iter().map(String::as_str).collect();
    e2e::write_prompts(path, &texts);
}

fn sample_stage(prompts: &Path, out: &Path) -> Stage {
    let model = fixture("tiny-llama");
    Stage::new(
        "generate",
        &[
            "sample",
            "--model",
            s(&model),
            "--prompts",
            s(prompts),
            "--out",
            s(out),
            "--k",
            "2",
            "--max-new-tokens",
            "16",
            "--temperature",
            "1.0",
            "--batch-size",
            "2",
        ],
        &[out],
    )
}

fn logprobs_stage(samples: &Path, role: &str, out: &Path) -> Stage {
    let model = fixture("tiny-llama");
    Stage::new(
        "generate",
        &[
            "logprobs",
            "--model",
            s(&model),
            "--samples",
            s(samples),
            "--role",
            role,
            "--out",
            s(out),
            "--batch-size",
            "2",
        ],
        &[out],
    )
}

fn score_stage(samples: &Path, out: &Path) -> Stage {
    let judge = fixture("tiny-llama-rm");
    let scores = out.with_file_name("scores.parquet");
    Stage::new(
        "score",
        &[
            "--samples",
            s(samples),
            "--out",
            s(out),
            "--judge",
            "reward-model",
            "--judge-model",
            s(&judge),
            "--batch-size",
            "2",
            "--no-cache",
        ],
        &[out, &scores],
    )
}

#[test]
fn killed_stages_resume_to_the_bytes_of_an_uninterrupted_run() {
    let t = Scratch::new("fault-kill");
    let prompts = t.path("prompts.parquet");
    write_prompts(&prompts, 8);
    let work = t.path("work");
    let samples = work.join("samples.parquet");
    let sample = sample_stage(&prompts, &samples);
    let watch = work.join(".samples.parquet.chunks");
    killed_and_resumed(&t, &sample, &work, &watch, 3, 1);

    // The later stages read the finished samples.
    let lp_dir = t.path("lp");
    let policy_lp = lp_dir.join("logprobs-policy.parquet");
    let lp = logprobs_stage(&samples, "policy", &policy_lp);
    let watch = lp_dir.join(".logprobs-policy.parquet.chunks");
    killed_and_resumed(&t, &lp, &lp_dir, &watch, 3, 2);
    let score_dir = t.path("score");
    let preferences = score_dir.join("preferences.parquet");
    let score = score_stage(&samples, &preferences);
    let watch = score_dir.join(".scores.parquet.chunks");
    killed_and_resumed(&t, &score, &score_dir, &watch, 3, 3);

    let reference_lp = t.path("logprobs-reference.parquet");
    logprobs_stage(&samples, "reference", &reference_lp).run(&t);
    let winrates = t.path("winrates.parquet");
    let w = ["--preferences", s(&preferences), "--out", s(&winrates)];
    ok(&t, "estimate-winrate", &w);
    let train_dir = t.path("train");
    let policy = fixture("tiny-llama");
    let inputs = TrainInputs {
        samples,
        winrates,
        policy_lp,
        reference_lp,
    };
    let more = [
        QUICK_ADAMW,
        &["--epochs", "2", "--lr", "1e-3", "--state-every", "1"],
    ]
    .concat();
    let train = Stage::new(
        "train-step",
        &strs(&inputs.args(&policy, &train_dir, &more)),
        &[
            &train_dir.join("train_log.parquet"),
            &train_dir.join("model/model.safetensors"),
        ],
    );
    let watch = train_dir.join(".train-state");
    killed_and_resumed(&t, &train, &train_dir, &watch, 3, 4);
}

/// Starts `stage`, waits until it writes its first chunk into `chunks`, runs it again at once:
/// the second run fails fast naming the output, the first writes the bytes of an uncontended
/// run.
fn contended(t: &Scratch, stage: &Stage, chunks: &Path, expected: &[Vec<u8>]) {
    let mut first = stage.spawn(t);
    let waited = Instant::now();
    let started = || std::fs::read_dir(chunks).is_ok_and(|mut d| d.next().is_some());
    while !started() {
        assert!(
            first.try_wait().unwrap().is_none(),
            "finished before it was contended"
        );
        assert!(
            waited.elapsed() < Duration::from_secs(60),
            "no chunk in {}",
            chunks.display()
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    let second = Command::new(bin(stage.bin))
        .args(&stage.args)
        .env("RSPO_CACHE_DIR", t.path(".cache"))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&second.stderr);
    assert!(!second.status.success(), "the second run must fail:\n{err}");
    assert!(
        err.contains("another run is writing this output") && err.contains(s(&stage.outputs[0])),
        "names the output and the other run:\n{err}"
    );
    assert!(
        first.try_wait().unwrap().is_none(),
        "the second run failed fast, while the first still runs"
    );
    let done = first.wait_with_output().unwrap();
    let log = String::from_utf8_lossy(&done.stderr);
    assert!(done.status.success(), "the first run completes:\n{log}");
    assert!(
        stage.bytes() == expected,
        "{}: the whole output\n{log}",
        stage.bin
    );
}

#[test]
fn two_runs_on_one_output_one_fails_fast_the_other_writes_it_whole() {
    let t = Scratch::new("fault-concurrent");
    let prompts = t.path("prompts.parquet");
    // Enough work that the first run is still going when the second has started and failed,
    // on an idle machine too (12 prompts take well under the second run's start-up time).
    write_prompts(&prompts, 400);
    let clean = sample_stage(&prompts, &t.path("clean/samples.parquet"));
    std::fs::create_dir_all(t.path("clean")).unwrap();
    clean.run(&t);
    let samples = t.path("samples.parquet");
    let sample = sample_stage(&prompts, &samples);
    contended(
        &t,
        &sample,
        &t.path(".samples.parquet.chunks"),
        &clean.bytes(),
    );

    let clean = score_stage(&samples, &t.path("clean/preferences.parquet"));
    clean.run(&t);
    let score = score_stage(&samples, &t.path("preferences.parquet"));
    contended(
        &t,
        &score,
        &t.path(".scores.parquet.chunks"),
        &clean.bytes(),
    );
}
