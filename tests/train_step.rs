//! `train-step` end to end: the real binary on samples and log-probs made by the real `generate`
//! binary from the tiny-llama fixture, with synthetic win rates.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use candle_core::{DType, Device};
use e2e::{
    bin, fails, fixture, max_abs_diff, ok, record_samples, s, Scratch, TrainInputs, QUICK_ADAMW,
};
use rspo::data::{
    read_rows, write_rows, FileKind, FileMeta, LogprobRow, Message, PromptRow, TrainLogRow,
    WinrateRow,
};
use rspo::model::{teacher_forced_logprobs, Checkpoint, PromptResponse, Weights};

struct Inputs {
    files: TrainInputs,
    reference_samples: PathBuf,
}

fn write_prompts(path: &Path, texts: &[&str]) {
    let rows: Vec<PromptRow> = texts
        .iter()
        .enumerate()
        .map(|(i, t)| PromptRow {
            prompt_id: format!("p{i}"),
            messages: vec![Message::user(*t)],
            reference: None,
            constraints: None,
        })
        .collect();
    let meta = FileMeta::new(FileKind::Prompts, "test", "prompts-fingerprint");
    write_rows(path, &meta, &rows).unwrap();
}

/// Win rates that prefer low sample indices: K = 4 gives 0.875, 0.625, 0.375, 0.125.
fn write_winrates(samples: &Path, path: &Path, rename: Option<&str>) {
    let (samples_meta, rows) = read_rows::<rspo::data::SampleRow>(samples).unwrap();
    let rows: Vec<WinrateRow> = rows
        .iter()
        .map(|r| WinrateRow {
            prompt_id: match rename {
                Some(prefix) => format!("{prefix}{}", r.prompt_id),
                None => r.prompt_id.clone(),
            },
            sample_idx: r.sample_idx,
            winrate: (7.0 - 2.0 * r.sample_idx as f64) / 8.0,
            n_opponents: 3,
            rank: r.sample_idx,
        })
        .collect();
    let mut meta = FileMeta::new(FileKind::Winrates, "test", format!("winrates-{rename:?}"));
    record_samples(&mut meta, samples, &samples_meta);
    write_rows(path, &meta, &rows).unwrap();
}

fn make_inputs(sc: &Scratch) -> Inputs {
    let model = fixture("tiny-llama");
    let prompts = sc.path("prompts.parquet");
    write_prompts(
        &prompts,
        &[
            "Tell me a joke.",
            "Name a color.",
            "What is two plus two?",
            "Say hi.",
        ],
    );
    let samples = sc.path("samples.parquet");
    ok(
        sc,
        "generate",
        &[
            "sample",
            "--model",
            s(&model),
            "--prompts",
            s(&prompts),
            "--out",
            s(&samples),
            "--k",
            "4",
            "--max-new-tokens",
            "6",
            "--temperature",
            "1.0",
            "--top-p",
            "1.0",
        ],
    );
    let reference_samples = sc.path("reference-samples.parquet");
    ok(
        sc,
        "generate",
        &[
            "sample",
            "--model",
            s(&model),
            "--prompts",
            s(&prompts),
            "--out",
            s(&reference_samples),
            "--k",
            "1",
            "--max-new-tokens",
            "6",
            "--seed",
            "7",
        ],
    );
    let policy_lp = sc.path("logprobs-policy.parquet");
    let reference_lp = sc.path("logprobs-reference.parquet");
    for (role, out) in [("policy", &policy_lp), ("reference", &reference_lp)] {
        ok(
            sc,
            "generate",
            &[
                "logprobs",
                "--model",
                s(&model),
                "--samples",
                s(&samples),
                "--role",
                role,
                "--out",
                s(out),
            ],
        );
    }
    let winrates = sc.path("winrates.parquet");
    write_winrates(&samples, &winrates, None);
    Inputs {
        files: TrainInputs {
            samples,
            winrates,
            policy_lp,
            reference_lp,
        },
        reference_samples,
    }
}

fn fixture_str() -> &'static str {
    leak_str(&fixture("tiny-llama"))
}

fn with(mut args: Vec<&'static str>, more: &[&'static str]) -> Vec<&'static str> {
    args.extend_from_slice(more);
    args
}

/// The policy's and the inputs' arguments, leaked so tests can build argument vectors freely;
/// tests are short-lived processes.
fn leak(i: &Inputs, out: &Path) -> Vec<&'static str> {
    let args = i.files.args(&fixture("tiny-llama"), out, &[]);
    args.into_iter()
        .map(|a| &*Box::leak(a.into_boxed_str()))
        .collect()
}

fn leak_str(p: &Path) -> &'static str {
    let p: &'static Path = Box::leak(p.to_path_buf().into_boxed_path());
    s(p)
}

/// Two epochs of the tiny fixtures' short AdamW run.
fn training() -> Vec<&'static str> {
    [QUICK_ADAMW, &["--epochs", "2"]].concat()
}

fn safetensors_metadata(path: &Path) -> serde_json::Value {
    let bytes = std::fs::read(path).unwrap();
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let header: serde_json::Value = serde_json::from_slice(&bytes[8..8 + n]).unwrap();
    header["__metadata__"].clone()
}

fn tensor_keys(path: &Path) -> Vec<String> {
    let bytes = std::fs::read(path).unwrap();
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let header: serde_json::Value = serde_json::from_slice(&bytes[8..8 + n]).unwrap();
    let mut keys: Vec<String> = header
        .as_object()
        .unwrap()
        .keys()
        .filter(|k| *k != "__metadata__")
        .cloned()
        .collect();
    keys.sort();
    keys
}

/// Sequence log-probs of the samples under a model directory.
fn sample_logprobs(model_dir: &Path, samples: &Path) -> Vec<f32> {
    let ck = Checkpoint::open(model_dir).unwrap();
    let model = ck.load_model(DType::F32, &Device::Cpu).unwrap();
    let (_, rows) = read_rows::<rspo::data::SampleRow>(samples).unwrap();
    let pairs: Vec<PromptResponse> = rows
        .iter()
        .map(|r| PromptResponse {
            prompt: &r.prompt_token_ids,
            response: &r.response_token_ids,
        })
        .collect();
    teacher_forced_logprobs(&model, &pairs)
        .unwrap()
        .sums()
        .unwrap()
        .to_vec1()
        .unwrap()
}

#[test]
fn trains_writes_a_hugging_face_dir_and_skips_when_up_to_date() {
    let sc = Scratch::new("train-step-full");
    let inputs = make_inputs(&sc);
    let out = sc.path("iter-1");
    let args = with(
        with(leak(&inputs, &out), &training()),
        &[
            "--lr",
            "1e-3",
            "--preset",
            "rspo-paper",
            "--term",
            "forward_kl=0.05",
            "--reference-samples",
            leak_str(&inputs.reference_samples),
            "--micro-batch-size",
            "3",
        ],
    );
    let log = ok(&sc, "train-step", &args);
    assert!(log.contains("step 4/4"), "{log}");

    let model = out.join("model");
    for f in [
        "config.json",
        "tokenizer.json",
        "tokenizer_config.json",
        "generation_config.json",
        "model.safetensors",
    ] {
        assert!(model.join(f).is_file(), "model/{f} is missing");
    }
    assert_eq!(
        safetensors_metadata(&model.join("model.safetensors"))["format"],
        "pt"
    );
    let base_keys = tensor_keys(&fixture("tiny-llama/model.safetensors"));
    assert_eq!(tensor_keys(&model.join("model.safetensors")), base_keys);
    assert_eq!(
        std::fs::read(model.join("tokenizer_config.json")).unwrap(),
        std::fs::read(fixture("tiny-llama/tokenizer_config.json")).unwrap()
    );
    // Our loader reads it, and training moved the policy towards the preferred samples.
    let before = sample_logprobs(&fixture("tiny-llama"), &inputs.files.samples);
    let after = sample_logprobs(&model, &inputs.files.samples);
    let (_, rows) = read_rows::<rspo::data::SampleRow>(&inputs.files.samples).unwrap();
    let gap = |lp: &[f32]| {
        let mut g = 0f64;
        for (r, l) in rows.iter().zip(lp) {
            match r.sample_idx {
                0 => g += *l as f64,
                3 => g -= *l as f64,
                _ => {}
            }
        }
        g
    };
    assert!(
        gap(&after) > gap(&before),
        "best-minus-worst log-prob gap {} -> {}",
        gap(&before),
        gap(&after)
    );

    let (meta, log_rows) = read_rows::<TrainLogRow>(&out.join("train_log.parquet")).unwrap();
    assert_eq!(meta.stage, "train-step");
    assert_eq!(log_rows.len(), 4);
    assert_eq!(
        log_rows.iter().map(|r| r.step).collect::<Vec<_>>(),
        vec![1, 2, 3, 4]
    );
    assert!((log_rows[3].epoch - 2.0).abs() < 1e-12);
    let terms: Vec<&String> = log_rows[0].terms.keys().collect();
    assert_eq!(terms, vec!["forward_kl", "forward_kl_is", "reverse_kl"]);
    for r in &log_rows {
        assert!(r.loss.is_finite() && r.grad_norm > 0.0 && r.tokens > 0);
        // No warmup: linear decay from 1e-3 over the 4 steps.
        let want = 1e-3 * (4.0 - (r.step - 1) as f64) / 4.0;
        assert!((r.lr - want).abs() < 1e-15, "{} vs {want}", r.lr);
    }
    assert!(meta.inputs.len() == 5 && meta.models.contains_key("policy"));
    assert!(!out.join(".train-state").exists());

    // Up to date: nothing is done. The micro-batch size does not count.
    let again = with(
        args[..args.len() - 1].to_vec(),
        &["1"], // --micro-batch-size 1
    );
    let log = ok(&sc, "train-step", &again);
    assert!(log.contains("up to date"), "{log}");
    // --force redoes it, with the same weights byte for byte (same micro-batches: other ones
    // change the sums' rounding).
    let first = std::fs::read(model.join("model.safetensors")).unwrap();
    let log = ok(&sc, "train-step", &with(args.clone(), &["--force"]));
    assert!(log.contains("step 4/4"), "{log}");
    assert!(std::fs::read(model.join("model.safetensors")).unwrap() == first);
    // Activation checkpointing does not count either, and trains the same up to rounding.
    let checkpointed = with(again.clone(), &["--gradient-checkpointing"]);
    let log = ok(&sc, "train-step", &checkpointed);
    assert!(log.contains("up to date"), "{log}");
    let log = ok(&sc, "train-step", &with(checkpointed, &["--force"]));
    assert!(log.contains("step 4/4"), "{log}");
    let (_, recomputed) = read_rows::<TrainLogRow>(&out.join("train_log.parquet")).unwrap();
    assert_eq!(recomputed.len(), log_rows.len());
    for (a, b) in recomputed.iter().zip(&log_rows) {
        let rel = |x: f64, y: f64| (x - y).abs() / y.abs();
        assert!(
            rel(a.loss, b.loss) < 1e-5 && rel(a.grad_norm, b.grad_norm) < 1e-4,
            "step {}: loss {} vs {}, grad norm {} vs {}",
            a.step,
            a.loss,
            b.loss,
            a.grad_norm,
            b.grad_norm
        );
    }
    // Another setting that shapes the result is not up to date.
    let log = ok(&sc, "train-step", &with(again, &["--seed", "3"]));
    assert!(log.contains("step 4/4"), "{log}");
}

#[test]
fn an_interrupted_run_resumes_where_it_stopped() {
    let sc = Scratch::new("train-step-resume");
    let inputs = make_inputs(&sc);
    let straight = sc.path("straight");
    let args = with(
        with(leak(&inputs, &straight), &training()),
        &["--preset", "sppo", "--lr", "1e-3"],
    );
    ok(&sc, "train-step", &args);

    let resumed = sc.path("resumed");
    let args = with(
        with(leak(&inputs, &resumed), &training()),
        &["--preset", "sppo", "--lr", "1e-3"],
    );
    let out = Command::new(bin("train-step"))
        .args(&args)
        .env("RSPO_CACHE_DIR", sc.path(".cache"))
        .env(rspo::stage::train_step::STOP_AFTER_ENV, "2")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(stderr.contains("resumes at step 3"), "{stderr}");
    assert!(!resumed.join("model").exists());
    assert!(!resumed.join("train_log.parquet").exists());
    assert!(resumed
        .join(".train-state/step-000002/state.json")
        .is_file());

    let log = ok(&sc, "train-step", &args);
    assert!(log.contains("resuming after step 2 of 4"), "{log}");
    assert!(!log.contains("step 1/4"), "{log}");
    assert!(
        std::fs::read(resumed.join("model/model.safetensors")).unwrap()
            == std::fs::read(straight.join("model/model.safetensors")).unwrap(),
        "the resumed run must end with the weights of the uninterrupted one"
    );
    let (_, a) = read_rows::<TrainLogRow>(&resumed.join("train_log.parquet")).unwrap();
    let (_, b) = read_rows::<TrainLogRow>(&straight.join("train_log.parquet")).unwrap();
    assert_eq!(a.len(), 4);
    for (x, y) in a.iter().zip(&b) {
        assert_eq!((x.step, x.loss, x.grad_norm), (y.step, y.loss, y.grad_norm));
    }
}

#[test]
fn lora_writes_a_peft_adapter_and_a_merged_checkpoint() {
    let sc = Scratch::new("train-step-lora");
    let inputs = make_inputs(&sc);
    let out = sc.path("lora");
    let args = with(
        with(leak(&inputs, &out), &training()),
        &[
            "--lora-rank",
            "4",
            "--lora-alpha",
            "8",
            "--lora-targets",
            "q_proj,v_proj",
            "--merge",
            "--lr",
            "1e-2",
        ],
    );
    ok(&sc, "train-step", &args);
    let adapter = out.join("adapter");
    let keys = tensor_keys(&adapter.join("adapter_model.safetensors"));
    assert_eq!(keys.len(), 2 * 2 * 2, "{keys:?}");
    assert!(
        keys.contains(&"base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight".into()),
        "{keys:?}"
    );
    assert!(keys.contains(&"base_model.model.model.layers.1.self_attn.v_proj.lora_B.weight".into()));
    assert_eq!(
        safetensors_metadata(&adapter.join("adapter_model.safetensors"))["format"],
        "pt"
    );
    let config: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(adapter.join("adapter_config.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(config["peft_type"], "LORA");
    assert_eq!(config["r"], 4);
    assert_eq!(config["lora_alpha"], 8.0);
    assert_eq!(
        config["target_modules"],
        serde_json::json!(["q_proj", "v_proj"])
    );
    assert!(adapter.join("tokenizer.json").is_file());
    assert!(!adapter.join("config.json").exists());

    // The merged checkpoint: only the adapted layers differ from the base.
    let dev = Device::Cpu;
    let base = Weights::load(&fixture("tiny-llama"), DType::F32, &dev).unwrap();
    let merged = Weights::load(&out.join("model"), DType::F32, &dev).unwrap();
    let mut changed = BTreeMap::new();
    for name in base.names() {
        let a = &base.tensors()[name];
        let b = &merged.tensors()[name];
        changed.insert(name.clone(), max_abs_diff(a, b) > 0.0);
    }
    for (name, c) in &changed {
        let target = name.contains("q_proj") || name.contains("v_proj");
        assert_eq!(*c, target, "{name}");
    }
    Checkpoint::open(&out.join("model")).unwrap();
}

#[test]
fn inputs_that_do_not_belong_together_are_refused() {
    let sc = Scratch::new("train-step-bad");
    let inputs = make_inputs(&sc);
    let out = sc.path("out");
    let base = leak(&inputs, &out);
    let replace = |flag: &str, value: &Path| -> Vec<&'static str> {
        let mut args = base.clone();
        let i = args.iter().position(|a| *a == flag).unwrap();
        args[i + 1] = leak_str(value);
        args
    };

    // Log-probs of another samples file.
    let other_samples = sc.path("other-samples.parquet");
    let other_lp = sc.path("other-logprobs.parquet");
    write_prompts(&sc.path("other-prompts.parquet"), &["Something else."]);
    ok(
        &sc,
        "generate",
        &[
            "sample",
            "--model",
            fixture_str(),
            "--prompts",
            s(&sc.path("other-prompts.parquet")),
            "--out",
            s(&other_samples),
            "--k",
            "2",
            "--max-new-tokens",
            "4",
        ],
    );
    ok(
        &sc,
        "generate",
        &[
            "logprobs",
            "--model",
            fixture_str(),
            "--samples",
            s(&other_samples),
            "--role",
            "policy",
            "--out",
            s(&other_lp),
        ],
    );
    let err = fails(&sc, "train-step", &replace("--policy-logprobs", &other_lp));
    assert!(
        err.contains("computed on other samples") && err.contains("other-logprobs.parquet"),
        "{err}"
    );

    // Policy log-probs made by another policy.
    let foreign_lp = sc.path("foreign-logprobs.parquet");
    ok(
        &sc,
        "generate",
        &[
            "logprobs",
            "--model",
            s(&fixture("rspo-oracle/policy")),
            "--samples",
            s(&inputs.files.samples),
            "--role",
            "policy",
            "--out",
            s(&foreign_lp),
        ],
    );
    let err = fails(
        &sc,
        "train-step",
        &replace("--policy-logprobs", &foreign_lp),
    );
    assert!(err.contains("another policy"), "{err}");

    // Roles swapped.
    let err = fails(
        &sc,
        "train-step",
        &replace("--policy-logprobs", &inputs.files.reference_lp),
    );
    assert!(err.contains("reference log-probs"), "{err}");

    // Win rates of other samples.
    let other_winrates = sc.path("other-winrates.parquet");
    write_winrates(&inputs.files.samples, &other_winrates, Some("x"));
    let err = fails(&sc, "train-step", &replace("--winrates", &other_winrates));
    assert!(
        err.contains("other-winrates.parquet") && err.contains("no row for sample"),
        "{err}"
    );

    // forward_kl without reference samples; unknown settings.
    let err = fails(
        &sc,
        "train-step",
        &with(base.clone(), &["--term", "forward_kl=0.1"]),
    );
    assert!(err.contains("--reference-samples"), "{err}");
    let err = fails(
        &sc,
        "train-step",
        &with(base.clone(), &["--term", "kl=0.1"]),
    );
    assert!(err.contains("unknown kind"), "{err}");
    let err = fails(
        &sc,
        "train-step",
        &with(base.clone(), &["--selection", "best"]),
    );
    assert!(err.contains("best_worst"), "{err}");
    let err = fails(&sc, "train-step", &with(base.clone(), &["--merge"]));
    assert!(err.contains("--merge needs LoRA"), "{err}");
    assert!(!out.exists() || !out.join("model").exists());
}

/// `--max-length`/`--max-prompt-length` cut the prompt from the left and the responses from the
/// right as the official trainer (the rule itself is checked against its transcription in
/// train::truncation); the run trains on fewer tokens, and the limits go together.
#[test]
fn length_limits_cut_the_sequences_as_the_official_trainer() {
    let sc = Scratch::new("train-step-truncation");
    let inputs = make_inputs(&sc);
    let (full_out, cut_out) = (sc.path("full"), sc.path("cut"));
    let full = with(leak(&inputs, &full_out), &training());
    ok(&sc, "train-step", &full);
    let limits = ["--max-length", "12", "--max-prompt-length", "8"];
    let cut = with(with(leak(&inputs, &cut_out), &training()), &limits);
    let log = ok(&sc, "train-step", &cut);
    assert!(
        log.contains("--max-length 12 --max-prompt-length 8: cut the prompt of"),
        "{log}"
    );
    let tokens = |out: &Path| -> Vec<u64> {
        let (_, rows) = read_rows::<TrainLogRow>(&out.join("train_log.parquet")).unwrap();
        rows.iter().map(|r| r.tokens).collect()
    };
    let (full_tokens, cut_tokens) = (tokens(&full_out), tokens(&cut_out));
    assert_eq!(full_tokens.len(), cut_tokens.len());
    // Steps of 2 prompts x 2 selected samples, each response at most 12 - 8 tokens.
    for (f, c) in full_tokens.iter().zip(&cut_tokens) {
        assert!(
            c <= f && *c <= 2 * 2 * 4,
            "{cut_tokens:?} vs {full_tokens:?}"
        );
    }
    let sum = |t: &[u64]| t.iter().sum::<u64>();
    assert!(sum(&cut_tokens) < sum(&full_tokens));

    let err = fails(
        &sc,
        "train-step",
        &with(full.clone(), &["--max-length", "12"]),
    );
    assert!(err.contains("--max-prompt-length"), "{err}");
    let err = fails(
        &sc,
        "train-step",
        &with(full, &["--max-length", "12", "--max-prompt-length", "12"]),
    );
    assert!(err.contains("less than --max-length 12"), "{err}");
}

#[test]
fn a_non_finite_loss_stops_before_any_checkpoint() {
    let sc = Scratch::new("train-step-nan");
    let inputs = make_inputs(&sc);
    // Finite inputs whose chi2 term overflows: dref = log pi_theta + 1e6 with the clip disabled.
    let (meta, mut rows) = read_rows::<LogprobRow>(&inputs.files.reference_lp).unwrap();
    for r in &mut rows {
        r.logprob = -1e6;
    }
    let huge_ref = sc.path("logprobs-reference-huge.parquet");
    write_rows(&huge_ref, &meta, &rows).unwrap();
    let out = sc.path("out");
    let mut args = with(
        with(leak(&inputs, &out), &training()),
        &["--lr", "1e-3", "--term", "chi2=0.1,clip=inf"],
    );
    let i = args
        .iter()
        .position(|a| *a == "--reference-logprobs")
        .unwrap();
    args[i + 1] = leak_str(&huge_ref);
    let err = fails(&sc, "train-step", &args);
    assert!(
        err.contains("step 1/4") && err.contains("not finite") && err.contains("chi2=inf"),
        "{err}"
    );
    assert!(err.contains("no checkpoint was written"), "{err}");
    assert!(!out.join("model").exists());
    assert!(!out.join("train_log.parquet").exists());
}

#[test]
fn bf16_training_writes_a_bf16_checkpoint() {
    let sc = Scratch::new("train-step-bf16");
    let inputs = make_inputs(&sc);
    let out = sc.path("bf16");
    let args = with(
        with(leak(&inputs, &out), &training()),
        &["--lr", "1e-3", "--dtype", "bf16", "--preset", "rspo-paper"],
    );
    let log = ok(&sc, "train-step", &args);
    assert!(log.contains("step 4/4"), "{log}");
    let st = out.join("model/model.safetensors");
    let bytes = std::fs::read(&st).unwrap();
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let header: serde_json::Value = serde_json::from_slice(&bytes[8..8 + n]).unwrap();
    assert_eq!(header["model.norm.weight"]["dtype"], "BF16");
    let (_, rows) = read_rows::<TrainLogRow>(&out.join("train_log.parquet")).unwrap();
    assert!(rows.iter().all(|r| r.loss.is_finite()));
    // Loadable, and moved away from the base.
    let after = sample_logprobs(&out.join("model"), &inputs.files.samples);
    let before = sample_logprobs(&fixture("tiny-llama"), &inputs.files.samples);
    assert!(after.iter().zip(&before).any(|(a, b)| (a - b).abs() > 1e-3));
}
