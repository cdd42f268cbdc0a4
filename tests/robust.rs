//! Defects found by trying to break the stages (issue 17): outputs that would overwrite inputs,
//! non-finite model outputs, byte-identity of every file across reruns and resumes.

use e2e::{fails, fixture, ok, s, strs, write_prompts, Scratch, TrainInputs, QUICK_ADAMW};
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
    preferences: PathBuf,
    train: TrainInputs,
}

impl Chain {
    fn new(t: &Scratch) -> Self {
        let c = Chain {
            model: model_copy(&t.path("policy")),
            prompts: t.path("prompts.parquet"),
            preferences: t.path("preferences.parquet"),
            train: TrainInputs {
                samples: t.path("samples.parquet"),
                policy_lp: t.path("logprobs-policy.parquet"),
                reference_lp: t.path("logprobs-reference.parquet"),
                winrates: t.path("winrates.parquet"),
            },
        };
        write_prompts(&c.prompts, &TEXTS);
        ok(
            t,
            "generate",
            &strs(&sample_args(&c.model, &c.prompts, &c.train.samples)),
        );
        for (role, out) in [
            ("policy", &c.train.policy_lp),
            ("reference", &c.train.reference_lp),
        ] {
            ok(
                t,
                "generate",
                &strs(&logprobs_args(&c.model, &c.train.samples, role, out)),
            );
        }
        ok(
            t,
            "score",
            &strs(&score_args(&c.train.samples, &c.preferences)),
        );
        let w = [
            "--preferences",
            s(&c.preferences),
            "--out",
            s(&c.train.winrates),
        ];
        ok(t, "estimate-winrate", &w);
        c
    }

    fn train_args(&self, policy: &Path, out: &Path) -> Vec<String> {
        let more = [QUICK_ADAMW, &["--epochs", "2", "--lr", "1e-3"]].concat();
        self.train.args(policy, out, &more)
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

    let lp = |out: &Path| logprobs_args(&c.model, &c.train.samples, "policy", out);
    refused(
        &t,
        "generate",
        &lp(&c.train.samples),
        &["--out", "--samples"],
        &c.train.samples,
    );
    refused(
        &t,
        "generate",
        &lp(&weights),
        &["--out", "--model"],
        &weights,
    );

    let score = score_args(&c.train.samples, &c.train.samples);
    refused(
        &t,
        "score",
        &score,
        &["--out", "--samples"],
        &c.train.samples,
    );
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
    let train = c.train_args(&c.model, &c.train.samples);
    refused(
        &t,
        "train-step",
        &train,
        &["--out", "--samples"],
        &c.train.samples,
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

#[test]
fn win_rates_of_other_samples_are_refused() {
    let t = Scratch::new("robust-winrate-chain");
    let c = Chain::new(&t);
    // The same prompts sampled with another seed, judged and estimated as usual.
    let other = t.path("other-samples.parquet");
    let mut args = sample_args(&c.model, &c.prompts, &other);
    args.extend(["--seed".to_string(), "9".to_string()]);
    ok(&t, "generate", &strs(&args));
    let other_prefs = t.path("other-preferences.parquet");
    ok(&t, "score", &strs(&score_args(&other, &other_prefs)));
    let other_winrates = t.path("other-winrates.parquet");
    let w = [
        "--preferences",
        s(&other_prefs),
        "--out",
        s(&other_winrates),
    ];
    ok(&t, "estimate-winrate", &w);

    let out = t.path("trained");
    let mut train = c.train_args(&c.model, &out);
    let at = train.iter().position(|a| a == "--winrates").unwrap() + 1;
    train[at] = s(&other_winrates).to_string();
    let err = fails(&t, "train-step", &strs(&train));
    assert!(
        err.contains("other-winrates.parquet")
            && err.contains("other-samples.parquet")
            && err.contains(s(&c.train.samples))
            && err.contains("preferences of other samples"),
        "names both files and says why:\n{err}"
    );
    assert!(!out.join("train_log.parquet").exists(), "nothing trained");
    ok(&t, "train-step", &strs(&c.train_args(&c.model, &out)));
}

#[test]
fn bad_models_and_unwritable_outputs_are_found_before_any_work() {
    let t = Scratch::new("robust-late-2");
    let c = Chain::new(&t);

    // train-step: an --out that cannot be made a folder fails before any step.
    let blocker = t.path("a-file");
    std::fs::write(&blocker, b"not a folder").unwrap();
    let out = blocker.join("trained");
    let err = fails(&t, "train-step", &strs(&c.train_args(&c.model, &out)));
    assert!(err.contains("--out") && err.contains(s(&out)), "{err}");
    assert!(
        !err.contains("step 1/"),
        "found before the first step:\n{err}"
    );

    // A model without tokenizer_config.json: named, not "no chat_template".
    let bare = model_copy(&t.path("bare-model"));
    std::fs::remove_file(bare.join("tokenizer_config.json")).unwrap();
    let samples = t.path("bare-samples.parquet");
    let err = fails(
        &t,
        "generate",
        &strs(&sample_args(&bare, &c.prompts, &samples)),
    );
    assert!(
        err.contains("missing tokenizer_config.json") && !err.contains("no chat_template"),
        "{err}"
    );

    // evaluate: the second model is checked before the first one samples.
    let eval = t.path("eval");
    let judge = fixture("tiny-llama-rm");
    for (second, expected) in [
        (t.path("no-such-model"), "no-such-model"),
        (bare.clone(), "missing tokenizer_config.json"),
    ] {
        let args = [
            "--models",
            s(&c.model),
            s(&second),
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
            "2",
            "--max-new-tokens",
            "4",
        ];
        let err = fails(&t, "evaluate", &args);
        assert!(err.contains("--models") && err.contains(expected), "{err}");
        assert!(
            !eval.join("responses-policy.parquet").exists(),
            "the first model sampled nothing:\n{err}"
        );
    }

    // A win rate out of [0, 1]: the file is named, the reason given once.
    let (meta, mut rows) =
        rspo::data::read_rows::<rspo::data::WinrateRow>(&c.train.winrates).unwrap();
    rows[1].winrate = 1.5;
    let bad = t.path("bad-winrates.parquet");
    rspo::data::write_rows(&bad, &meta, &rows).unwrap();
    let mut train = c.train_args(&c.model, &t.path("trained"));
    let at = train.iter().position(|a| a == "--winrates").unwrap() + 1;
    train[at] = s(&bad).to_string();
    let err = fails(&t, "train-step", &strs(&train));
    assert!(
        err.contains("bad-winrates.parquet"),
        "names the file:\n{err}"
    );
    assert_eq!(err.matches("not in [0, 1]").count(), 1, "said once:\n{err}");
}

#[test]
fn log_probs_do_not_depend_on_the_batch_size() {
    let t = Scratch::new("robust-batch-invariance");
    let model = fixture("tiny-llama");
    let prompts = t.path("prompts.parquet");
    let texts = [
        "Hi.",
        "Name a color.",
        "Write one long sentence about the sea, the sky and the wind.",
        "What is two plus two?",
        "Say hi.",
    ];
    write_prompts(&prompts, &texts);
    let samples = t.path("samples.parquet");
    let mut args = sample_args(&model, &prompts, &samples);
    let set = |args: &mut Vec<String>, flag: &str, value: &str| {
        let at = args.iter().position(|a| a == flag).unwrap() + 1;
        args[at] = value.to_string();
    };
    set(&mut args, "--max-new-tokens", "24");
    set(&mut args, "--k", "4");
    ok(&t, "generate", &strs(&args));
    let lengths: std::collections::BTreeSet<usize> =
        rspo::data::read_rows::<rspo::data::SampleRow>(&samples)
            .unwrap()
            .1
            .iter()
            .map(|r| r.prompt_token_ids.len() + r.response_token_ids.len())
            .collect();
    assert!(
        lengths.len() > 3,
        "rows of many lengths, padded in a batch: {lengths:?}"
    );
    let run = |batch: &str| {
        let out = t.path(&format!("logprobs-{batch}.parquet"));
        let mut args = logprobs_args(&model, &samples, "policy", &out);
        args.extend(["--batch-size".to_string(), batch.to_string()]);
        ok(&t, "generate", &strs(&args));
        let rows = rspo::data::read_rows::<rspo::data::LogprobRow>(&out)
            .unwrap()
            .1;
        let bits: Vec<Vec<u32>> = rows
            .iter()
            .map(|r| r.token_logprobs.iter().map(|x| x.to_bits()).collect())
            .collect();
        (bits, std::fs::read(&out).unwrap())
    };
    let (one, one_bytes) = run("1");
    let (sixteen, sixteen_bytes) = run("16");
    assert!(one == sixteen, "bit-identical token log-probs");
    assert!(one_bytes == sixteen_bytes, "identical files");
}
