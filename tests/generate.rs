//! `generate` end to end: the real binary on real Parquet files and fixture checkpoints.

use e2e::{fails, fixture, ok, run, s, Scratch};
use rspo::data::{
    read_meta, read_rows, write_rows, FileKind, FileMeta, FinishReason, LogprobRow, Message,
    PromptRow, SampleRow,
};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn write_prompts(path: &Path, texts: &[&str]) {
    let rows: Vec<PromptRow> = texts
        .iter()
        .enumerate()
        .map(|(i, t)| PromptRow {
            prompt_id: format!("p{i:03}"),
            messages: vec![Message {
                role: "user".into(),
                content: t.to_string(),
            }],
            reference: None,
            constraints: None,
        })
        .collect();
    write_rows(
        path,
        &FileMeta::new(FileKind::Prompts, "test", "prompts-fp"),
        &rows,
    )
    .unwrap();
}

const TEXTS: [&str; 6] = [
    "How do I boil an egg?",
    "Name three colors.",
    "Write a haiku about rain.",
    "What is two plus two?",
    "Explain recursion briefly.",
    "Give me a tip for sleeping well.",
];

fn sample_args<'a>(
    model: &'a str,
    prompts: &'a str,
    out: &'a str,
    extra: &[&'a str],
) -> Vec<&'a str> {
    let mut a = vec![
        "sample",
        "--model",
        model,
        "--prompts",
        prompts,
        "--out",
        out,
        "--k",
        "3",
        "--max-new-tokens",
        "12",
        "--seed",
        "7",
    ];
    a.extend_from_slice(extra);
    a
}

#[test]
fn sample_is_deterministic_batch_invariant_and_up_to_date() {
    let t = Scratch::new("gen-det");
    let model = fixture("tiny-llama");
    let prompts = t.path("prompts.parquet");
    write_prompts(&prompts, &TEXTS);
    let (a, b, c) = (
        t.path("a.parquet"),
        t.path("b.parquet"),
        t.path("c.parquet"),
    );
    ok(
        &t,
        "generate",
        &sample_args(s(&model), s(&prompts), s(&a), &["--batch-size", "8"]),
    );
    ok(
        &t,
        "generate",
        &sample_args(s(&model), s(&prompts), s(&b), &["--batch-size", "8"]),
    );
    ok(
        &t,
        "generate",
        &sample_args(s(&model), s(&prompts), s(&c), &["--batch-size", "1"]),
    );
    let bytes = std::fs::read(&a).unwrap();
    assert_eq!(
        bytes,
        std::fs::read(&b).unwrap(),
        "same inputs and seed: byte-identical"
    );
    assert_eq!(
        bytes,
        std::fs::read(&c).unwrap(),
        "batch size 1 and 8: identical"
    );

    let (meta, rows) = read_rows::<SampleRow>(&a).unwrap();
    assert_eq!(rows.len(), TEXTS.len() * 3);
    assert_eq!(meta.schema, "samples/v1");
    assert!(meta.models.contains_key("policy"));
    for r in &rows {
        assert!(r.prompt_text.starts_with("<s>[INST] ") && r.prompt_text.ends_with(" [/INST]"));
        let stopped = r.response_token_ids.last() == Some(&2);
        assert_eq!(r.finish_reason == FinishReason::Eos, stopped);
        assert!(stopped || r.response_token_ids.len() == 12);
    }
    // Samples of one prompt differ (different seeds).
    assert_ne!(rows[0].response_token_ids, rows[1].response_token_ids);

    let again = ok(
        &t,
        "generate",
        &sample_args(s(&model), s(&prompts), s(&a), &[]),
    );
    assert!(again.contains("up to date"), "{again}");
    let forced = ok(
        &t,
        "generate",
        &sample_args(s(&model), s(&prompts), s(&a), &["--force"]),
    );
    assert!(forced.contains("wrote 18 rows"), "{forced}");
    // Another iteration seeds every row differently: the stage runs again.
    let reseeded = ok(
        &t,
        "generate",
        &sample_args(s(&model), s(&prompts), s(&a), &["--iteration", "2"]),
    );
    assert!(reseeded.contains("wrote"), "{reseeded}");
}

#[test]
fn temperature_zero_reproduces_the_fixture_greedy_tokens() {
    let t = Scratch::new("gen-greedy");
    let exp: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(fixture("tiny-llama/expected.json")).unwrap(),
    )
    .unwrap();
    let ids = |v: &serde_json::Value| -> Vec<u32> {
        v.as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_u64().unwrap() as u32)
            .collect()
    };
    let prompt_ids = ids(&exp["greedy"]["prompt_ids"]);
    let want = ids(&exp["greedy"]["output_ids"]);
    // The fixture prompt is raw token ids (no chat template), so the library's decoder checks
    // those; the binary, which renders prompts with the template, must decode its own prompt
    // exactly as that same decoder does.
    let model = fixture("tiny-llama");
    let prompts = t.path("prompts.parquet");
    write_prompts(&prompts, &TEXTS[..2]);
    let out = t.path("greedy.parquet");
    ok(
        &t,
        "generate",
        &[
            "sample",
            "--model",
            s(&model),
            "--prompts",
            s(&prompts),
            "--out",
            s(&out),
            "--k",
            "2",
            "--temperature",
            "0",
            "--max-new-tokens",
            "12",
        ],
    );
    let (_, rows) = read_rows::<SampleRow>(&out).unwrap();
    assert_eq!(
        rows[0].response_token_ids, rows[1].response_token_ids,
        "greedy ignores the seed"
    );
    let ck = rspo::model::Checkpoint::open(&model).unwrap();
    let m = ck
        .load_model(candle_core::DType::F32, &candle_core::Device::Cpu)
        .unwrap();
    let greedy = rspo::model::SamplingParams {
        temperature: 0.0,
        top_p: 1.0,
        top_k: 0,
    };
    let lib = rspo::model::generate(
        &m,
        &[rspo::model::GenerationRequest {
            prompt_ids: prompt_ids.clone(),
            seed: 0,
        }],
        &greedy,
        12,
        &[],
        |_| {},
    )
    .unwrap();
    assert_eq!(lib[0].response_ids, want, "fixture greedy tokens");
    let lib = rspo::model::generate(
        &m,
        &[rspo::model::GenerationRequest {
            prompt_ids: rows[0].prompt_token_ids.clone(),
            seed: 0,
        }],
        &greedy,
        12,
        &ck.stop_tokens,
        |_| {},
    )
    .unwrap();
    assert_eq!(lib[0].response_ids, rows[0].response_token_ids);
}

#[test]
fn shards_merged_equal_the_unsharded_file() {
    let t = Scratch::new("gen-shards");
    let model = fixture("tiny-qwen2");
    let prompts = t.path("prompts.parquet");
    write_prompts(&prompts, &TEXTS);
    let whole = t.path("whole.parquet");
    ok(
        &t,
        "generate",
        &sample_args(s(&model), s(&prompts), s(&whole), &[]),
    );
    let shards: Vec<_> = (0..3)
        .map(|i| t.path(&format!("shard{i}.parquet")))
        .collect();
    for (i, sh) in shards.iter().enumerate() {
        let spec = format!("{i}/3");
        ok(
            &t,
            "generate",
            &sample_args(s(&model), s(&prompts), s(sh), &["--shard", &spec]),
        );
    }
    let merged = t.path("merged.parquet");
    // Shards given out of order.
    ok(
        &t,
        "generate",
        &[
            "merge",
            "--out",
            s(&merged),
            s(&shards[2]),
            s(&shards[0]),
            s(&shards[1]),
        ],
    );
    assert_eq!(
        std::fs::read(&merged).unwrap(),
        std::fs::read(&whole).unwrap()
    );
    let err = fails(
        &t,
        "generate",
        &[
            "merge",
            "--out",
            s(&t.path("m2.parquet")),
            s(&shards[0]),
            s(&shards[1]),
        ],
    );
    assert!(err.contains("expected the 3 shards"), "{err}");
}

#[test]
fn a_killed_run_resumes_to_the_same_file() {
    let t = Scratch::new("gen-resume");
    let model = fixture("tiny-llama");
    let prompts = t.path("prompts.parquet");
    let many: Vec<String> = (0..40)
        .map(|i| format!("Question number {i}: tell me something."))
        .collect();
    let refs: Vec<&str> = many.iter().map(String::as_str).collect();
    write_prompts(&prompts, &refs);
    let full = t.path("full.parquet");
    let resumed = t.path("resumed.parquet");
    let args = |out: &Path| -> Vec<String> {
        [
            "sample",
            "--model",
            s(&model),
            "--prompts",
            s(&prompts),
            "--out",
            s(out),
            "--k",
            "2",
            "--max-new-tokens",
            "24",
            "--batch-size",
            "2",
        ]
        .iter()
        .map(|a| a.to_string())
        .collect()
    };
    ok(
        &t,
        "generate",
        &args(&full).iter().map(String::as_str).collect::<Vec<_>>(),
    );

    // Start, wait until some chunks are on disk, then kill -9.
    let mut child = Command::new(e2e::bin("generate"))
        .args(args(&resumed))
        .env("RSPO_CACHE_DIR", t.path(".cache"))
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let chunks = rspo::data::chunk_dir(&resumed);
    let start = Instant::now();
    loop {
        let n = std::fs::read_dir(&chunks).map(|d| d.count()).unwrap_or(0);
        if n >= 3 || start.elapsed() > Duration::from_secs(60) {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(
        !resumed.exists(),
        "a killed run leaves no file under the final name"
    );
    let done_before = std::fs::read_dir(&chunks).map(|d| d.count()).unwrap_or(0);
    assert!(
        done_before >= 1,
        "the run was killed before writing any chunk"
    );

    ok(
        &t,
        "generate",
        &args(&resumed)
            .iter()
            .map(String::as_str)
            .collect::<Vec<_>>(),
    );
    assert_eq!(
        std::fs::read(&resumed).unwrap(),
        std::fs::read(&full).unwrap()
    );
    assert!(
        !chunks.exists(),
        "chunks are removed once the file is complete"
    );
}

#[test]
fn logprobs_match_the_fixture_and_the_sampling_logprob() {
    let t = Scratch::new("gen-logprobs");
    let model = fixture("tiny-llama");
    let prompts = t.path("prompts.parquet");
    write_prompts(&prompts, &TEXTS[..4]);
    let samples = t.path("samples.parquet");
    ok(
        &t,
        "generate",
        &sample_args(
            s(&model),
            s(&prompts),
            s(&samples),
            &["--temperature", "1.0", "--top-p", "1.0"],
        ),
    );
    let lp = t.path("logprobs-policy.parquet");
    ok(
        &t,
        "generate",
        &[
            "logprobs",
            "--model",
            s(&model),
            "--samples",
            s(&samples),
            "--role",
            "policy",
            "--out",
            s(&lp),
            "--batch-size",
            "5",
        ],
    );
    let (_, srows) = read_rows::<SampleRow>(&samples).unwrap();
    let (meta, lrows) = read_rows::<LogprobRow>(&lp).unwrap();
    assert_eq!(meta.role(), Some("policy"));
    assert_eq!(
        meta.inputs[0].fingerprint,
        read_meta(&samples).unwrap().fingerprint
    );
    assert_eq!(srows.len(), lrows.len());
    for (sr, lr) in srows.iter().zip(&lrows) {
        assert_eq!(
            (sr.prompt_id.as_str(), sr.sample_idx),
            (lr.prompt_id.as_str(), lr.sample_idx)
        );
        assert_eq!(lr.num_tokens as usize, sr.response_token_ids.len());
        // At T = 1 with no cut, the sampler's raw log-probs are the teacher-forced ones.
        assert!(
            (sr.sample_logprob - lr.logprob).abs() < 1e-3,
            "{} vs {}",
            sr.sample_logprob,
            lr.logprob
        );
    }

    // Same samples, same model, other role: rows reused, metadata of the new role.
    let reused = t.path("logprobs-reference.parquet");
    let err = ok(
        &t,
        "generate",
        &[
            "logprobs",
            "--model",
            s(&model),
            "--samples",
            s(&samples),
            "--role",
            "reference",
            "--out",
            s(&reused),
            "--reuse",
            s(&lp),
        ],
    );
    assert!(err.contains("rows reused"), "{err}");
    let (rmeta, rrows) = read_rows::<LogprobRow>(&reused).unwrap();
    assert_eq!(rmeta.role(), Some("reference"));
    assert_eq!(rrows, read_rows::<LogprobRow>(&lp).unwrap().1);
    // Another model (same vocabulary): computed, not reused.
    let other = t.path("logprobs-other.parquet");
    let err = ok(
        &t,
        "generate",
        &[
            "logprobs",
            "--model",
            s(&fixture("rspo-oracle/policy")),
            "--samples",
            s(&samples),
            "--role",
            "reference",
            "--out",
            s(&other),
            "--reuse",
            s(&lp),
        ],
    );
    assert!(err.contains("computing"), "{err}");

    // The fixture's sequences, written as samples: per-token log-probs within 1e-4.
    let exp: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(fixture("tiny-llama/expected.json")).unwrap(),
    )
    .unwrap();
    let mut rows = Vec::new();
    for (i, seq) in exp["sequences"].as_array().unwrap().iter().enumerate() {
        let ids: Vec<u32> = seq["input_ids"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_u64().unwrap() as u32)
            .collect();
        rows.push(SampleRow {
            prompt_id: format!("f{i}"),
            sample_idx: 0,
            messages: vec![],
            prompt_text: String::new(),
            response: String::new(),
            prompt_token_ids: ids[..1].to_vec(),
            response_token_ids: ids[1..].to_vec(),
            finish_reason: FinishReason::Length,
            sample_logprob: 0.0,
            seed: 0,
        });
    }
    let fixture_samples = t.path("fixture-samples.parquet");
    write_rows(
        &fixture_samples,
        &FileMeta::new(FileKind::Samples, "test", "fixture"),
        &rows,
    )
    .unwrap();
    let flp = t.path("fixture-logprobs.parquet");
    ok(
        &t,
        "generate",
        &[
            "logprobs",
            "--model",
            s(&model),
            "--samples",
            s(&fixture_samples),
            "--role",
            "reference",
            "--out",
            s(&flp),
        ],
    );
    let (_, lrows) = read_rows::<LogprobRow>(&flp).unwrap();
    for (seq, lr) in exp["sequences"].as_array().unwrap().iter().zip(&lrows) {
        for (g, w) in lr
            .token_logprobs
            .iter()
            .zip(seq["token_logprobs"].as_array().unwrap())
        {
            assert!((*g as f64 - w.as_f64().unwrap()).abs() < 1e-4);
        }
        assert!((lr.logprob - seq["sum_logprob"].as_f64().unwrap()).abs() < 1e-3);
    }
}

#[test]
fn bad_input_is_a_clear_error_and_writes_nothing() {
    let t = Scratch::new("gen-bad");
    let model = fixture("tiny-llama");
    let out = t.path("out.parquet");
    let prompts = t.path("prompts.parquet");
    write_prompts(&prompts, &TEXTS[..2]);

    // No prompt column.
    let wrong = t.path("wrong.parquet");
    write_rows(
        &wrong,
        &FileMeta::new(FileKind::Scores, "test", "x"),
        &[rspo::data::ScoreRow {
            prompt_id: "a".into(),
            sample_idx: 0,
            score: 1.0,
        }],
    )
    .unwrap();
    let err = fails(
        &t,
        "generate",
        &sample_args(s(&model), s(&wrong), s(&out), &[]),
    );
    assert!(
        err.contains("prompt") && err.contains("wrong.parquet"),
        "{err}"
    );

    // Empty file.
    let empty = t.path("empty.parquet");
    write_prompts(&empty, &[]);
    let err = fails(
        &t,
        "generate",
        &sample_args(s(&model), s(&empty), s(&out), &[]),
    );
    assert!(err.contains("no rows"), "{err}");

    // Longer than the context (512 tokens).
    let long = t.path("long.parquet");
    let text = "word ".repeat(600);
    write_prompts(&long, &[text.as_str()]);
    let err = fails(
        &t,
        "generate",
        &sample_args(s(&model), s(&long), s(&out), &[]),
    );
    assert!(err.contains("longer than the model's context"), "{err}");

    // Unknown model dir.
    let err = fails(
        &t,
        "generate",
        &sample_args(s(&t.path("no-such-model")), s(&prompts), s(&out), &[]),
    );
    assert!(err.contains("no-such-model"), "{err}");

    // K = 0.
    let mut args = sample_args(s(&model), s(&prompts), s(&out), &[]);
    let k = args.iter().position(|a| *a == "--k").unwrap();
    args[k + 1] = "0";
    let err = fails(&t, "generate", &args);
    assert!(err.contains("--k 0"), "{err}");

    assert!(!out.exists(), "no output after a failed run");
    let leftovers: Vec<_> = std::fs::read_dir(&t.0)
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(".out"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
    let out2 = run(&t, "generate", &["sample"]);
    assert!(!out2.status.success());
}

/// Copies the model folder `from` into a Hub cache as the Hub client lays it out: bytes in
/// `blobs/<hash>`, `snapshots/<revision>/<name>` relative symlinks to them, `refs/main`.
fn hub_cache(cache: &Path, id: &str, from: &Path) -> std::path::PathBuf {
    let repo = cache.join(format!("models--{}", id.replace('/', "--")));
    let revision = "0123456789abcdef0123456789abcdef01234567";
    let snapshot = repo.join("snapshots").join(revision);
    for dir in [repo.join("blobs"), repo.join("refs"), snapshot.clone()] {
        std::fs::create_dir_all(dir).unwrap();
    }
    std::fs::write(repo.join("refs/main"), revision).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let path = entry.unwrap().path();
        // The client names blobs by their etag; any unique name serves here.
        let blob = format!("blob-{}", path.file_name().unwrap().to_string_lossy());
        std::fs::copy(&path, repo.join("blobs").join(&blob)).unwrap();
        std::os::unix::fs::symlink(
            format!("../../blobs/{blob}"),
            snapshot.join(path.file_name().unwrap()),
        )
        .unwrap();
    }
    snapshot
}

/// A stage run on an offline machine with a shared Hugging Face cache under `HF_HOME`.
fn run_offline(t: &Scratch, args: &[&str]) -> std::process::Output {
    Command::new(e2e::bin("generate"))
        .args(args)
        .env("RSPO_CACHE_DIR", t.path(".cache"))
        .env("HOME", t.path("home"))
        .env("HF_HOME", t.path("hf"))
        .env("HF_HUB_OFFLINE", "1")
        // Nothing listens here: a request would fail.
        .env("HF_ENDPOINT", "http://127.0.0.1:9")
        .env_remove("HF_HUB_CACHE")
        .env_remove("HUGGINGFACE_HUB_CACHE")
        .env_remove("XDG_CACHE_HOME")
        .output()
        .unwrap()
}

#[test]
fn hub_ids_resolve_offline_from_the_cache_under_hf_home() {
    let t = Scratch::new("gen-hub-offline");
    let model = fixture("tiny-llama");
    let snapshot = hub_cache(&t.path("hf/hub"), "org/tiny-llama", &model);
    let prompts = t.path("prompts.parquet");
    write_prompts(&prompts, &TEXTS[..2]);
    let (from_hub, from_dir) = (t.path("hub.parquet"), t.path("dir.parquet"));

    let out = run_offline(
        &t,
        &sample_args("org/tiny-llama", s(&prompts), s(&from_hub), &[]),
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    ok(
        &t,
        "generate",
        &sample_args(s(&model), s(&prompts), s(&from_dir), &[]),
    );
    let (_, hub_rows) = read_rows::<SampleRow>(&from_hub).unwrap();
    let (_, dir_rows) = read_rows::<SampleRow>(&from_dir).unwrap();
    assert_eq!(
        hub_rows, dir_rows,
        "the same model, from the cache or its folder"
    );

    // A file missing from the snapshot is named, and nothing is fetched.
    std::fs::remove_file(snapshot.join("tokenizer.json")).unwrap();
    let out = run_offline(
        &t,
        &sample_args("org/tiny-llama", s(&prompts), s(&t.path("x.parquet")), &[]),
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains(&format!(
            "{} is not in the Hugging Face cache and HF_HUB_OFFLINE is set",
            snapshot.join("tokenizer.json").display()
        )),
        "{stderr}"
    );
}

#[test]
fn json_lines_prompts_sample_as_their_parquet_twin() {
    let t = Scratch::new("gen-jsonl");
    let model = fixture("tiny-llama");
    let parquet = t.path("prompts.parquet");
    write_prompts(&parquet, &TEXTS[..3]);
    let jsonl = t.path("prompts.jsonl");
    let lines: Vec<String> = TEXTS[..3]
        .iter()
        .enumerate()
        .map(|(i, text)| {
            serde_json::json!({"prompt_id": format!("p{i:03}"), "prompt": text}).to_string()
        })
        .collect();
    std::fs::write(&jsonl, lines.join("\n") + "\n").unwrap();
    let (a, b) = (t.path("a.parquet"), t.path("b.parquet"));
    ok(
        &t,
        "generate",
        &sample_args(s(&model), s(&parquet), s(&a), &[]),
    );
    ok(
        &t,
        "generate",
        &sample_args(s(&model), s(&jsonl), s(&b), &[]),
    );
    let (_, from_parquet) = read_rows::<SampleRow>(&a).unwrap();
    let (meta, from_jsonl) = read_rows::<SampleRow>(&b).unwrap();
    assert_eq!(from_jsonl, from_parquet);
    assert_eq!(
        meta.inputs[0].fingerprint,
        rspo::data::file_digest(&jsonl).unwrap(),
        "a JSON prompt file's fingerprint is the blake3 of its bytes"
    );
    let again = ok(
        &t,
        "generate",
        &sample_args(s(&model), s(&jsonl), s(&b), &[]),
    );
    assert!(again.contains("up to date"), "{again}");

    // A conversation that ends with the answer is not a prompt.
    let chat = t.path("chat.jsonl");
    std::fs::write(
        &chat,
        r#"{"prompt_id": "c1", "messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]}"#,
    )
    .unwrap();
    let out = t.path("c.parquet");
    let err = fails(
        &t,
        "generate",
        &sample_args(s(&model), s(&chat), s(&out), &[]),
    );
    assert!(
        err.contains(&format!(
            "{}: prompt 'c1' (line 1) ends with an assistant turn",
            chat.display()
        )),
        "{err}"
    );
    assert!(!out.exists());
}
