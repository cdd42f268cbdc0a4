//! The embedded default: the two shipped tiny models are what `make_tiny_models` says they are,
//! and `make iter N=3` on pipelines/tiny.toml learns, gives the numbers README.md quotes, reruns
//! nothing the second time, and adds one iteration for N=4. Its LoRA variant
//! (pipelines/tiny-lora.toml) chains PEFT adapter folders through `make iter N=2`.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use candle_core::{DType, Device, Tensor};
use e2e::{
    assert_quoted_table, bin, fixture, markdown_table, max_abs_diff, output_text as text, repo,
    Scratch,
};
use rspo::model::{sequence_scores, Checkpoint};

/// The reward model's preference, restated from the example's doc: `▁` then lowercase letters.
fn is_word_token(piece: &str) -> bool {
    piece
        .strip_prefix('▁')
        .is_some_and(|w| !w.is_empty() && w.bytes().all(|b| b.is_ascii_lowercase()))
}

fn word_flags(ckpt: &Checkpoint) -> Vec<bool> {
    let mut flags = vec![false; ckpt.config.vocab_size];
    for (piece, id) in ckpt.tokenizer.get_vocab(false) {
        flags[id as usize] = is_word_token(&piece);
    }
    flags
}

fn tensors(dir: &Path) -> HashMap<String, Tensor> {
    candle_core::safetensors::load(dir.join("model.safetensors"), &Device::Cpu).unwrap()
}

/// tiny-rm is a closed form: with a per-token feature [10, is_word, 0, ...], uniform attention in
/// layer 0 puts the share of word tokens m into residual dimension 2 and nothing else writes, so
/// score = head * m / rms([10, is_word(last), m]) with head = 40 * 10 / sqrt(32). Checking our
/// transformer against that formula checks both the shipped weights and the model code on them.
#[test]
fn tiny_rm_scores_the_share_of_word_tokens() {
    let ckpt = Checkpoint::open(&repo("data/models/tiny-rm")).unwrap();
    let model = ckpt.load_model(DType::F32, &Device::Cpu).unwrap();
    let flags = word_flags(&ckpt);
    let texts = [
        "the cat sat on the mat and then it slept",
        "The Cat: 42 * 17 = ???",
        "hello world",
        "zzz!",
    ];
    let seqs: Vec<Vec<u32>> = texts.iter().map(|t| ckpt.encode(t).unwrap()).collect();
    let scores = sequence_scores(&model, &seqs)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap();
    let hidden = ckpt.config.hidden_size as f64;
    let head = 40.0 * 10.0 / hidden.sqrt();
    for ((seq, score), text) in seqs.iter().zip(&scores).zip(texts) {
        let words = seq.iter().filter(|&&t| flags[t as usize]).count() as f64;
        let m = words / seq.len() as f64;
        let last = f64::from(u8::from(flags[*seq.last().unwrap() as usize]));
        let rms = ((100.0 + last + m * m) / hidden + 1e-5).sqrt();
        let expected = head * m / rms;
        assert!(
            (f64::from(*score) - expected).abs() < 1e-4 * expected.abs().max(1.0),
            "{text:?}: score {score}, expected {expected} ({words} word tokens of {})",
            seq.len()
        );
    }
    assert!(scores[0] > scores[1] && scores[1] >= 0.0);
}

/// tiny-policy is the tiny-llama fixture plus one shared direction on the word tokens' (tied)
/// embedding rows; every other tensor is the fixture's.
#[test]
fn tiny_policy_is_tiny_llama_with_a_word_direction() {
    let ckpt = Checkpoint::open(&repo("data/models/tiny-policy")).unwrap();
    let flags = word_flags(&ckpt);
    let ours = tensors(&repo("data/models/tiny-policy"));
    let base = tensors(&fixture("tiny-llama"));
    assert_eq!(
        ours.keys().collect::<std::collections::BTreeSet<_>>(),
        base.keys().collect()
    );
    for (name, t) in &ours {
        if name != "model.embed_tokens.weight" {
            let max = max_abs_diff(t, &base[name]);
            assert_eq!(max, 0.0, "{name} differs from the fixture");
            continue;
        }
        let rows = (t - &base[name]).unwrap().to_vec2::<f32>().unwrap();
        let direction = &rows[flags.iter().position(|&f| f).unwrap()];
        let norm = direction.iter().map(|x| x * x).sum::<f32>().sqrt();
        assert!((norm - 1.0).abs() < 1e-5, "direction norm {norm}");
        for (row, &word) in rows.iter().zip(&flags) {
            let expected: Vec<f32> = if word {
                direction.clone()
            } else {
                vec![0.0; row.len()]
            };
            for (a, b) in row.iter().zip(&expected) {
                assert!((a - b).abs() < 1e-6);
            }
        }
    }
}

struct MakeRun {
    pipeline: PathBuf,
    run_dir: PathBuf,
    cache: PathBuf,
}

impl MakeRun {
    fn make(&self, args: &[&str]) -> Output {
        let bin_dir = bin("generate").parent().unwrap().to_path_buf();
        Command::new("make")
            .current_dir(repo(""))
            .arg(format!("PIPELINE={}", self.pipeline.display()))
            .arg(format!("RUNDIR={}", self.run_dir.display()))
            .arg(format!("BIN={}", bin_dir.display()))
            .arg("BUILD=")
            .args(args)
            .env("RSPO_CACHE_DIR", &self.cache)
            .output()
            .expect("make runs")
    }
}

/// The acceptance run of the embedded default, through the Makefile and the real binaries.
#[test]
fn make_iter_learns_and_reruns_only_what_changed() {
    let scratch = Scratch::new("make-iter");
    let mut run = MakeRun {
        pipeline: repo("pipelines/tiny.toml"),
        run_dir: scratch.path("tiny"),
        cache: scratch.path(".cache"),
    };
    let out = run.make(&["iter", "N=3"]);
    assert!(
        out.status.success(),
        "make iter N=3 failed:\n{}",
        text(&out)
    );

    let summary_path = run.run_dir.join("eval-3/summary.json");
    let summary: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&summary_path).unwrap()).unwrap();
    let models = summary["models"].as_array().unwrap();
    let names: Vec<&str> = models.iter().map(|m| m["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["tiny-policy", "iter-1", "iter-2", "iter-3"]);
    let win_rate = |i: usize| models[i]["win_rate"].as_f64().unwrap();
    assert!((win_rate(0) - 50.0).abs() < 1e-9, "the base against itself");
    assert!(
        win_rate(3) >= 60.0,
        "iteration 3 must beat the base policy with >= 60%: {:?}",
        (1..4).map(win_rate).collect::<Vec<_>>()
    );
    assert!(models[3]["mean_logratio_ref"].as_f64().unwrap() > 0.0);
    let report = std::fs::read_to_string(run.run_dir.join("eval-3/report.md")).unwrap();
    check_readme_results(&report);
    for stage in ["generate-3", "score-3", "train-step-3", "evaluate"] {
        assert!(
            report.contains(&format!("| {stage} |")),
            "report.md has no time for {stage}:\n{report}"
        );
    }

    // A second run has nothing to do.
    let modified = |p: &Path| std::fs::metadata(p).unwrap().modified().unwrap();
    let before = modified(&summary_path);
    let again = run.make(&["iter", "N=3"]);
    assert!(again.status.success(), "{}", text(&again));
    assert!(
        !text(&again).contains("timed.sh"),
        "the second make iter N=3 ran stages:\n{}",
        text(&again)
    );
    assert_eq!(modified(&summary_path), before);

    // N=4 after N=3 plans iteration 4 and a new evaluation, nothing of iterations 1-3.
    let plan = run.make(&["-n", "iter", "N=4"]);
    assert!(plan.status.success(), "{}", text(&plan));
    let plan = text(&plan);
    let dir = run.run_dir.display().to_string();
    assert!(
        plan.contains(&format!("--out {dir}/iter-4/samples.parquet")),
        "{plan}"
    );
    assert!(plan.contains(&format!("--out {dir}/eval-4")), "{plan}");
    for t in 1..=3 {
        for stage in ["generate", "score", "train-step"] {
            assert!(
                !plan.contains(&format!(" {stage}-{t} --")),
                "N=4 would rerun {stage} of iteration {t}:\n{plan}"
            );
        }
    }

    // Changing only a loss setting retrains; sampling, scoring and log-probs stay cached.
    let tiny = std::fs::read_to_string(&run.pipeline).unwrap();
    assert!(tiny.contains("\nepochs = 6\n"));
    run.pipeline = scratch.path("tiny-5-epochs.toml");
    std::fs::write(
        &run.pipeline,
        tiny.replace("\nepochs = 6\n", "\nepochs = 5\n"),
    )
    .unwrap();
    let train_log = run.run_dir.join("iter-1/train_log.parquet");
    let before = modified(&train_log);
    let out = run.make(&["iter", "N=1"]);
    assert!(out.status.success(), "{}", text(&out));
    let out = text(&out);
    for file in [
        "samples.parquet",
        "logprobs-policy.parquet",
        "logprobs-reference.parquet",
        "preferences.parquet",
        "winrates.parquet",
    ] {
        assert!(
            out.contains(&format!("iter-1/{file} is up to date")),
            "{file} was redone after a loss change:\n{out}"
        );
    }
    assert!(!out.contains("train_log.parquet is up to date"), "{out}");
    assert_ne!(modified(&train_log), before, "train-step did not rerun");
}

/// README.md's results table quotes this run's report.md: the same models, and in every column
/// the README shows (by header), the same value.
fn check_readme_results(report: &str) {
    let readme = std::fs::read_to_string(repo("README.md")).unwrap();
    let quoted = markdown_table(&readme, "<!-- results: data/runs/tiny/eval-3/report.md -->");
    let run = markdown_table(report, "");
    let column = |name: &str| {
        run[0].iter().position(|h| h == name).unwrap_or_else(|| {
            panic!(
                "README.md's column `{name}` is not in report.md: {:?}",
                run[0]
            )
        })
    };
    let columns: Vec<usize> = quoted[0].iter().map(|h| column(h)).collect();
    let shown: Vec<Vec<String>> = run
        .iter()
        .map(|row| columns.iter().map(|&c| row[c].clone()).collect())
        .collect();
    assert_quoted_table(&quoted, &shown, 1, report);
}

/// A LoRA pipeline (adapters, no merge) through make: iteration 2 samples from and trains on
/// iteration 1's adapter folder, and evaluate loads both adapters as models.
#[test]
fn lora_pipeline_chains_adapter_folders() {
    let scratch = Scratch::new("make-iter-lora");
    let run = MakeRun {
        pipeline: repo("pipelines/tiny-lora.toml"),
        run_dir: scratch.path("tiny-lora"),
        cache: scratch.path(".cache"),
    };
    let out = run.make(&["iter", "N=2"]);
    let log = text(&out);
    assert!(out.status.success(), "make iter N=2 failed:\n{log}");
    let dir = &run.run_dir;
    for t in 1..=2 {
        let adapter = dir.join(format!("iter-{t}/adapter"));
        assert!(adapter.join("adapter_model.safetensors").is_file(), "{log}");
        assert!(
            !dir.join(format!("iter-{t}/model")).exists(),
            "merge = false writes no model/"
        );
    }
    let iter1 = dir.join("iter-1/adapter").display().to_string();
    assert!(
        log.contains(&format!(
            "generate sample --config {} --model {iter1} ",
            run.pipeline.display()
        )),
        "iteration 2 does not sample from iteration 1's adapter:\n{log}"
    );
    assert!(log.contains(&format!("--policy {iter1} ")), "{log}");
    let config: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(dir.join("iter-2/adapter/adapter_config.json")).unwrap(),
    )
    .unwrap();
    let base = PathBuf::from(config["base_model_name_or_path"].as_str().unwrap());
    assert_eq!(
        base,
        std::fs::canonicalize(dir.join("iter-1/adapter")).unwrap()
    );

    let summary: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("eval-2/summary.json")).unwrap())
            .unwrap();
    let models = summary["models"].as_array().unwrap();
    let names: Vec<&str> = models.iter().map(|m| m["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["tiny-policy", "iter-1", "iter-2"]);
    let kl = |i: usize| models[i]["mean_logratio_ref"].as_f64().unwrap();
    assert!(
        kl(1) > 0.0 && kl(2) > 0.0 && kl(2) != kl(1),
        "the adapters move the policy: {:?}",
        (kl(1), kl(2))
    );
}
