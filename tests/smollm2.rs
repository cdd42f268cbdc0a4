//! The real binaries on a real pretrained model: SmolLM2-135M-Instruct as the GGUF that
//! `make fetch-smollm2` fetches, given to `--model` / `--policy` as the file itself. Checked
//! against tests/fixtures/smollm2-135m/expected.json (transformers on the same file). Without the
//! GGUF the tests skip with a message, except under CI=true, where its absence fails them.

use candle_core::{DType, Device};
use e2e::{ok, s, strs, write_prompts, Scratch, TrainInputs, QUICK_ADAMW};
use rspo::data::{
    read_rows, write_rows, FileKind, FileMeta, FinishReason, Message, SampleRow, WinrateRow,
};
use rspo::model::{teacher_forced_logprobs, Checkpoint, PromptResponse};
use serde_json::Value;
use std::path::Path;

#[path = "../shared/tests/support/mod.rs"]
mod support;
use support::{expected_json, fixture_json, ids, smollm2_gguf};

fn expected() -> Value {
    expected_json("smollm2-135m")
}

#[test]
fn greedy_samples_are_transformers_argmax_tokens_and_end_at_im_end() {
    let Some(gguf) = smollm2_gguf() else { return };
    let sc = Scratch::new("smollm2-greedy");
    let exp = expected();
    let cases = exp["cases"].as_array().unwrap();
    let oracle = fixture_json("smollm2-135m", "greedy_argmax.json");
    let prompts: Vec<&str> = cases
        .iter()
        .map(|c| c["prompt"].as_str().unwrap())
        .collect();
    write_prompts(&sc.path("prompts.parquet"), &prompts);
    let samples = sc.path("samples.parquet");
    ok(
        &sc,
        "generate",
        &[
            "sample",
            "--model",
            s(&gguf),
            "--prompts",
            s(&sc.path("prompts.parquet")),
            "--out",
            s(&samples),
            "--k",
            "1",
            "--temperature",
            "0",
            "--max-new-tokens",
            "24",
        ],
    );
    let (_, rows) = read_rows::<SampleRow>(&samples).unwrap();
    assert_eq!(rows.len(), cases.len());
    for (c, (row, case)) in rows.iter().zip(cases).enumerate() {
        eprintln!(
            "{:?} -> {:?} ({:?})",
            case["prompt"], row.response, row.finish_reason
        );
        assert_eq!(row.prompt_text, case["prompt_text"].as_str().unwrap());
        assert_eq!(row.prompt_token_ids, ids(&case["prompt_token_ids"]));
        // `generate` stops at <|im_end|> (id 2), keeping it, and says so.
        let ends = row.response_token_ids.iter().position(|&t| t == 2);
        match row.finish_reason {
            FinishReason::Eos => assert_eq!(ends, Some(row.response_token_ids.len() - 1)),
            FinishReason::Length => {
                assert_eq!((ends, row.response_token_ids.len()), (None, 24))
            }
        }
        assert!(!row.response.contains("<|im_end|>"), "{:?}", row.response);
        // transformers' argmax tokens (tests/fixtures/smollm2-135m/greedy_argmax.json; see
        // shared/tests/smollm2.rs), up to and including the first <|im_end|>.
        let argmax = ids(&oracle["cases"][c]["greedy_token_ids"]);
        let until_eos = argmax.iter().position(|&t| t == 2).map_or(24, |i| i + 1);
        assert_eq!(
            row.response_token_ids,
            argmax[..until_eos].to_vec(),
            "case {c}"
        );
        if c == 0 {
            assert_eq!(row.finish_reason, FinishReason::Eos);
            assert_eq!(row.response, "The capital of France is Paris.");
        }
    }
}

/// Sequence log-probs of the samples under a model (a folder or a GGUF file).
fn sample_logprobs(model: &Path, rows: &[SampleRow]) -> Vec<f32> {
    let ck = Checkpoint::open(model).unwrap();
    let model = ck.load_model(DType::F32, &Device::Cpu).unwrap();
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

/// Two sampled responses to one prompt, log-probs by the real binary, and win rates that
/// prefer sample 0 (0.75 against 0.25).
fn make_inputs(sc: &Scratch, gguf: &Path) -> TrainInputs {
    let prompts = sc.path("prompts.parquet");
    write_prompts(&prompts, &["Name a fruit."]);
    let samples = sc.path("samples.parquet");
    ok(
        sc,
        "generate",
        &[
            "sample",
            "--model",
            s(gguf),
            "--prompts",
            s(&prompts),
            "--out",
            s(&samples),
            "--k",
            "2",
            "--temperature",
            "1.0",
            "--top-p",
            "1.0",
            "--max-new-tokens",
            "12",
        ],
    );
    let policy_lp = sc.path("logprobs-policy.parquet");
    let reference_lp = sc.path("logprobs-reference.parquet");
    ok(
        sc,
        "generate",
        &[
            "logprobs",
            "--model",
            s(gguf),
            "--samples",
            s(&samples),
            "--role",
            "policy",
            "--out",
            s(&policy_lp),
        ],
    );
    ok(
        sc,
        "generate",
        &[
            "logprobs",
            "--model",
            s(gguf),
            "--samples",
            s(&samples),
            "--role",
            "reference",
            "--out",
            s(&reference_lp),
            "--reuse",
            s(&policy_lp),
        ],
    );
    let (samples_meta, rows) = read_rows::<SampleRow>(&samples).unwrap();
    let winrates: Vec<WinrateRow> = rows
        .iter()
        .map(|r| WinrateRow {
            prompt_id: r.prompt_id.clone(),
            sample_idx: r.sample_idx,
            winrate: if r.sample_idx == 0 { 0.75 } else { 0.25 },
            n_opponents: 1,
            rank: r.sample_idx,
        })
        .collect();
    let path = sc.path("winrates.parquet");
    let mut meta = FileMeta::new(FileKind::Winrates, "test", "smollm2-winrates");
    e2e::record_samples(&mut meta, &samples, &samples_meta);
    write_rows(&path, &meta, &winrates).unwrap();
    TrainInputs {
        samples,
        winrates: path,
        policy_lp,
        reference_lp,
    }
}

/// One train-step on the GGUF policy writes a Hugging Face folder that reloads, tokenizes as
/// the GGUF does, and gives the preferred sample a higher log-prob.
fn one_step_raises_the_preferred_sample(name: &str, extra: &[&str]) {
    let Some(gguf) = smollm2_gguf() else { return };
    let sc = Scratch::new(name);
    let i = make_inputs(&sc, &gguf);
    let out = sc.path("iter-1");
    let more = [QUICK_ADAMW, &["--epochs", "1", "--beta", "0.1"], extra].concat();
    let args = i.args(&gguf, &out, &more);
    ok(&sc, "train-step", &strs(&args));

    let model = out.join("model");
    for f in [
        "config.json",
        "tokenizer.json",
        "tokenizer_config.json",
        "model.safetensors",
    ] {
        assert!(model.join(f).is_file(), "model/{f} is missing");
    }
    let ck = Checkpoint::open(&model).unwrap();
    let case = &expected()["cases"][0];
    let text = ck
        .render_chat(&[Message::user(case["prompt"].as_str().unwrap())], true)
        .unwrap();
    assert_eq!(ck.encode(&text).unwrap(), ids(&case["prompt_token_ids"]));

    let (_, rows) = read_rows::<SampleRow>(&i.samples).unwrap();
    let before = sample_logprobs(&gguf, &rows);
    let after = sample_logprobs(&model, &rows);
    let best = rows.iter().position(|r| r.sample_idx == 0).unwrap();
    eprintln!("{name}: log-probs before {before:?}, after {after:?}");
    assert!(
        after[best] > before[best],
        "log-prob of the preferred sample {} -> {}",
        before[best],
        after[best]
    );
}

#[test]
fn full_train_step_on_the_gguf_policy_raises_the_preferred_sample() {
    one_step_raises_the_preferred_sample("smollm2-full", &["--lr", "1e-5"]);
}

#[test]
fn lora_train_step_on_the_gguf_policy_raises_the_preferred_sample() {
    one_step_raises_the_preferred_sample(
        "smollm2-lora",
        &[
            "--lr",
            "1e-3",
            "--lora-rank",
            "8",
            "--lora-alpha",
            "16",
            "--merge",
        ],
    );
}
