//! Defects found by trying to break the stages (issue 17): outputs that would overwrite inputs,
//! non-finite model outputs, byte-identity of every file across reruns and resumes.

use e2e::{fails, fixture, ok, s, write_prompts, Scratch};
use std::path::{Path, PathBuf};

const TEXTS: [&str; 3] = ["Name a color.", "Say hi.", "What is two plus two?"];

/// A copy of the tiny-llama fixture at `dir`, safe to damage.
fn model_copy(dir: &Path) -> PathBuf {
    std::fs::create_dir_all(dir).unwrap();
    for e in std::fs::read_dir(fixture("tiny-llama")).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), dir.join(e.file_name())).unwrap();
    }
    dir.to_path_buf()
}

fn strs(args: &[String]) -> Vec<&str> {
    args.iter().map(String::as_str).collect()
}

fn sample_args(model: &Path, prompts: &Path, out: &Path) -> Vec<String> {
    [
        "sample",
        "--model",
        s(model),
        "--prompts",
        s(prompts),
        "--out",
        s(out),
        "--k",
        "2",
        "--max-new-tokens",
        "4",
        "--temperature",
        "1.0",
    ]
    .map(String::from)
    .to_vec()
}

fn logprobs_args(model: &Path, samples: &Path, role: &str, out: &Path) -> Vec<String> {
    [
        "logprobs",
        "--model",
        s(model),
        "--samples",
        s(samples),
        "--role",
        role,
        "--out",
        s(out),
    ]
    .map(String::from)
    .to_vec()
}

fn score_args(samples: &Path, out: &Path) -> Vec<String> {
    let judge = fixture("tiny-llama-rm");
    [
        "--samples",
        s(samples),
        "--out",
        s(out),
        "--judge",
        "reward-model",
        "--judge-model",
        s(&judge),
    ]
    .map(String::from)
    .to_vec()
}

/// The files of one iteration, made by the real stages from a copy of tiny-llama.
struct Chain {
    model: PathBuf,
    prompts: PathBuf,
    samples: PathBuf,
    policy_lp: PathBuf,
    reference_lp: PathBuf,
    preferences: PathBuf,
    winrates: PathBuf,
}

impl Chain {
    fn new(t: &Scratch) -> Self {
        let c = Chain {
            model: model_copy(&t.path("policy")),
            prompts: t.path("prompts.parquet"),
            samples: t.path("samples.parquet"),
            policy_lp: t.path("logprobs-policy.parquet"),
            reference_lp: t.path("logprobs-reference.parquet"),
            preferences: t.path("preferences.parquet"),
            winrates: t.path("winrates.parquet"),
        };
        write_prompts(&c.prompts, &TEXTS);
        ok(
            t,
            "generate",
            &strs(&sample_args(&c.model, &c.prompts, &c.samples)),
        );
        for (role, out) in [("policy", &c.policy_lp), ("reference", &c.reference_lp)] {
            ok(
                t,
                "generate",
                &strs(&logprobs_args(&c.model, &c.samples, role, out)),
            );
        }
        ok(t, "score", &strs(&score_args(&c.samples, &c.preferences)));
        let w = ["--preferences", s(&c.preferences), "--out", s(&c.winrates)];
        ok(t, "estimate-winrate", &w);
        c
    }

    fn train_args(&self, policy: &Path, out: &Path) -> Vec<String> {
        [
            "--policy",
            s(policy),
            "--samples",
            s(&self.samples),
            "--winrates",
            s(&self.winrates),
            "--policy-logprobs",
            s(&self.policy_lp),
            "--reference-logprobs",
            s(&self.reference_lp),
            "--out",
            s(out),
            "--optimizer",
            "adamw",
            "--warmup-ratio",
            "0",
            "--batch-size",
            "2",
            "--epochs",
            "2",
            "--lr",
            "1e-3",
        ]
        .map(String::from)
        .to_vec()
    }
}

/// Runs `args` expecting a refusal that names `flags`, and checks `kept` is unchanged.
fn refused(t: &Scratch, bin: &str, args: &[String], flags: &[&str], kept: &Path) {
    let before = std::fs::read(kept).unwrap();
    let err = fails(t, bin, &strs(args));
    for f in flags {
        assert!(err.contains(f), "{bin}: expected {f} in:\n{err}");
    }
    assert_eq!(
        std::fs::read(kept).unwrap(),
        before,
        "{bin}: {} changed",
        kept.display()
    );
}

#[test]
fn an_output_that_is_an_input_or_a_model_file_is_refused() {
    let t = Scratch::new("robust-overwrite");
    let c = Chain::new(&t);
    let weights = c.model.join("model.safetensors");
    // The same file spelled another way.
    let prompts_again = t.0.join(".").join("prompts.parquet");
    let out_in = |out: &Path| sample_args(&c.model, &c.prompts, out);
    refused(
        &t,
        "generate",
        &out_in(&prompts_again),
        &["--out", "--prompts"],
        &c.prompts,
    );
    refused(
        &t,
        "generate",
        &out_in(&weights),
        &["--out", "--model"],
        &weights,
    );

    let lp = |out: &Path| logprobs_args(&c.model, &c.samples, "policy", out);
    refused(
        &t,
        "generate",
        &lp(&c.samples),
        &["--out", "--samples"],
        &c.samples,
    );
    refused(
        &t,
        "generate",
        &lp(&weights),
        &["--out", "--model"],
        &weights,
    );

    let score = score_args(&c.samples, &c.samples);
    refused(&t, "score", &score, &["--out", "--samples"], &c.samples);
    let winrate = [
        "--preferences",
        s(&c.preferences),
        "--out",
        s(&c.preferences),
    ]
    .map(String::from)
    .to_vec();
    let flags = ["--out", "--preferences"];
    refused(&t, "estimate-winrate", &winrate, &flags, &c.preferences);

    // train-step: --out is a folder; its model/ would overwrite the policy, and --out must
    // not be an input file.
    let run = t.path("run");
    let policy = model_copy(&run.join("model"));
    let policy_weights = policy.join("model.safetensors");
    let train = c.train_args(&policy, &run);
    refused(
        &t,
        "train-step",
        &train,
        &["--out", "--policy"],
        &policy_weights,
    );
    let train = c.train_args(&c.model, &c.samples);
    refused(
        &t,
        "train-step",
        &train,
        &["--out", "--samples"],
        &c.samples,
    );
}

/// Sets every value of `model.norm.weight` in `weights` to NaN: every logit becomes NaN.
fn poison(weights: &Path) {
    let dev = candle_core::Device::Cpu;
    let mut tensors = candle_core::safetensors::load(weights, &dev).unwrap();
    let norm = tensors
        .get_mut("model.norm.weight")
        .expect("model.norm.weight");
    *norm = norm.affine(0.0, f64::NAN).unwrap();
    candle_core::safetensors::save(&tensors, weights).unwrap();
}

#[test]
fn nan_weights_are_an_error_naming_the_model_prompt_and_sample() {
    let t = Scratch::new("robust-nan");
    let model = model_copy(&t.path("nan-model"));
    poison(&model.join("model.safetensors"));
    let prompts = t.path("prompts.parquet");
    write_prompts(&prompts, &TEXTS);
    let out = t.path("samples.parquet");
    let err = fails(&t, "generate", &strs(&sample_args(&model, &prompts, &out)));
    let named = |err: &str| {
        assert!(
            err.contains("--model") && err.contains("nan-model"),
            "names the model:\n{err}"
        );
        assert!(
            err.contains("prompt \"p0\", sample 0"),
            "names the prompt and sample:\n{err}"
        );
        assert!(err.contains("NaN"), "says what was found:\n{err}");
    };
    named(&err);
    assert!(!out.exists(), "no output after a failed run");

    // Finite samples of the real model, scored by the NaN one.
    let samples = t.path("good-samples.parquet");
    let good = fixture("tiny-llama");
    ok(
        &t,
        "generate",
        &strs(&sample_args(&good, &prompts, &samples)),
    );
    let lp = t.path("logprobs.parquet");
    let err = fails(
        &t,
        "generate",
        &strs(&logprobs_args(&model, &samples, "policy", &lp)),
    );
    named(&err);
    assert!(!lp.exists(), "no output after a failed run");
}

/// Runs train-step and returns the bytes of its train_log.parquet.
fn train_log(t: &Scratch, args: &[String], out: &Path) -> Vec<u8> {
    ok(t, "train-step", &strs(args));
    std::fs::read(out.join("train_log.parquet")).unwrap()
}

#[test]
fn train_log_is_the_same_bytes_across_runs_and_resumes() {
    let t = Scratch::new("robust-train-log");
    let c = Chain::new(&t);
    let (a, b, resumed) = (t.path("a"), t.path("b"), t.path("resumed"));
    let first = train_log(&t, &c.train_args(&c.model, &a), &a);
    assert!(
        first == train_log(&t, &c.train_args(&c.model, &b), &b),
        "two identical runs: identical train_log.parquet"
    );
    let args = c.train_args(&c.model, &resumed);
    let stopped = std::process::Command::new(e2e::bin("train-step"))
        .args(&args)
        .env("RSPO_CACHE_DIR", t.path(".cache"))
        .env(rspo::stage::train_step::STOP_AFTER_ENV, "1")
        .output()
        .unwrap();
    assert!(!stopped.status.success(), "stopped after step 1");
    let log = ok(&t, "train-step", &strs(&args));
    assert!(log.contains("resuming after step 1"), "{log}");
    assert!(log.contains(" s\n"), "step times are in the log: {log}");
    assert!(
        first == std::fs::read(resumed.join("train_log.parquet")).unwrap(),
        "a resumed run: the train_log.parquet of an uninterrupted one"
    );
}

/// Every file under `dir`, by name, with its bytes.
fn files(dir: &Path) -> std::collections::BTreeMap<String, Vec<u8>> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_file())
        .map(|p| {
            let name = p.file_name().unwrap().to_string_lossy().into_owned();
            (name, std::fs::read(&p).unwrap())
        })
        .collect()
}

#[test]
fn evaluate_is_up_to_date_when_nothing_that_shapes_it_changed() {
    let t = Scratch::new("robust-evaluate");
    let prompts = t.path("prompts.parquet");
    write_prompts(&prompts, &TEXTS);
    let (base, other) = (fixture("tiny-llama"), fixture("rspo-oracle/policy"));
    let (out, timings) = (t.path("eval"), t.path("timings.tsv"));
    std::fs::write(&timings, "generate\t1.5\n").unwrap();
    let args = |k: &'static str, batch: &'static str| -> Vec<String> {
        [
            "--models",
            s(&base),
            s(&other),
            "--prompts",
            s(&prompts),
            "--out",
            s(&out),
            "--judge",
            "reward-model",
            "--judge-model",
            s(&fixture("tiny-llama-rm")),
            "--baseline",
            s(&base),
            "--k",
            k,
            "--max-new-tokens",
            "6",
            "--batch-size",
            batch,
            "--timings",
            s(&timings),
        ]
        .map(String::from)
        .to_vec()
    };
    let log = ok(&t, "evaluate", &strs(&args("2", "8")));
    assert!(log.contains("judging"), "{log}");
    let first = files(&out);
    // Same command; another batch size; new stage timings: nothing that shapes the files.
    std::fs::write(&timings, "generate\t2.5\n").unwrap();
    for batch in ["8", "3"] {
        let log = ok(&t, "evaluate", &strs(&args("2", batch)));
        assert!(log.contains("is up to date"), "{log}");
        assert!(!log.contains("judging"), "no work: {log}");
        assert!(files(&out) == first, "the files are unchanged");
    }
    // Another K shapes them.
    let log = ok(&t, "evaluate", &strs(&args("3", "8")));
    assert!(
        log.contains("judging") && !log.contains("is up to date"),
        "{log}"
    );
}

#[test]
fn late_checks_come_before_any_work() {
    let t = Scratch::new("robust-late");
    let c = Chain::new(&t);
    // evaluate --k 1: refused before any response is generated.
    let eval = t.path("eval");
    let judge = fixture("tiny-llama-rm");
    let args = [
        "--models",
        s(&c.model),
        "--prompts",
        s(&c.prompts),
        "--out",
        s(&eval),
        "--judge",
        "reward-model",
        "--judge-model",
        s(&judge),
        "--baseline",
        s(&c.model),
        "--k",
        "1",
    ];
    let err = fails(&t, "evaluate", &args);
    assert!(err.contains("--k 1") && err.contains("at least 2"), "{err}");
    assert!(
        !eval.join("responses-policy.parquet").exists(),
        "no work done"
    );

    // An --out that is an existing directory.
    let dir = t.path("a-dir");
    std::fs::create_dir(&dir).unwrap();
    let err = fails(
        &t,
        "generate",
        &strs(&sample_args(&c.model, &c.prompts, &dir)),
    );
    assert!(
        err.contains("--out") && err.contains("a-dir") && err.contains("directory"),
        "{err}"
    );
    assert!(!err.contains("wrote"), "{err}");
    let err = fails(
        &t,
        "estimate-winrate",
        &["--preferences", s(&c.preferences), "--out", s(&dir)],
    );
    assert!(err.contains("--out") && err.contains("directory"), "{err}");

    // --dtype f16: the help lists f32 and bf16 only.
    let mut args = sample_args(&c.model, &c.prompts, &t.path("f16.parquet"));
    args.extend(["--dtype".to_string(), "f16".to_string()]);
    let err = fails(&t, "generate", &strs(&args));
    assert!(
        err.contains("--dtype f16") && err.contains("f32 or bf16"),
        "{err}"
    );

    // The trained model is readable by others, like every other output.
    let out = t.path("trained");
    ok(&t, "train-step", &strs(&c.train_args(&c.model, &out)));
    use std::os::unix::fs::PermissionsExt;
    for f in ["model/model.safetensors", "train_log.parquet"] {
        let mode = std::fs::metadata(out.join(f)).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o644, "{f}: mode {mode:o}");
    }
}
