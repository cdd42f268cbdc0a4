//! `--judge llm` through the real binaries, SmolLM2-135M-Instruct's GGUF judging its own
//! samples: both orders in preferences.parquet, a rerun served by the judgment cache, position
//! bias in estimate-winrate's report, evaluation against the prompts' references, and bad
//! judge settings refused before any model is loaded. Without the GGUF the tests skip with a
//! message, except under CI=true, where its absence fails them.

use e2e::{fails, ok, s, Scratch};
use rspo::data::{
    read_rows, write_rows, EvalRow, FileKind, FileMeta, Message, PreferenceRow, PromptRow,
};
use std::path::Path;

#[path = "../shared/tests/support/mod.rs"]
mod support;
use support::smollm2_gguf;

fn write_prompts_with_references(path: &Path) {
    let rows: Vec<PromptRow> = [
        ("capital", "What is the capital of France?", "Paris."),
        ("fruit", "Name a fruit.", "An apple."),
    ]
    .iter()
    .map(|(id, q, r)| PromptRow {
        prompt_id: id.to_string(),
        messages: vec![Message::user(*q)],
        reference: Some(r.to_string()),
        constraints: None,
    })
    .collect();
    let meta = FileMeta::new(FileKind::Prompts, "test", "llm-judge-prompts");
    write_rows(path, &meta, &rows).unwrap();
}

#[test]
fn score_judges_both_orders_and_a_rerun_hits_the_cache() {
    let Some(gguf) = smollm2_gguf() else { return };
    let sc = Scratch::new("llm-judge");
    let prompts = sc.path("prompts.parquet");
    write_prompts_with_references(&prompts);
    let samples = sc.path("samples.parquet");
    ok(
        &sc,
        "generate",
        &[
            "sample",
            "--model",
            s(&gguf),
            "--prompts",
            s(&prompts),
            "--out",
            s(&samples),
            "--k",
            "2",
            "--max-new-tokens",
            "8",
            "--temperature",
            "1.0",
            "--seed",
            "1",
        ],
    );
    let prefs = sc.path("preferences.parquet");
    let args = [
        "--samples",
        s(&samples),
        "--out",
        s(&prefs),
        "--judge",
        "llm",
        "--judge-model",
        s(&gguf),
    ];
    let stderr = ok(&sc, "score", &args);
    assert!(stderr.contains("judged 2 pairs"), "{stderr}");
    let (_, rows) = read_rows::<PreferenceRow>(&prefs).unwrap();
    assert_eq!(rows.len(), 2, "one pair per prompt");
    for r in &rows {
        let (f, sw) = (r.p_forward.unwrap(), r.p_swapped.unwrap());
        assert!((r.p - 0.5 * (f + sw)).abs() < 1e-15, "{r:?}");
        assert!(r.judge.starts_with("llm:"), "{}", r.judge);
    }

    // A rerun takes every judgment from the cache and writes the same bytes.
    let before = std::fs::read(&prefs).unwrap();
    let mut forced = args.to_vec();
    forced.push("--force");
    let stderr = ok(&sc, "score", &forced);
    assert!(
        stderr.contains("judged 0 pairs") && stderr.contains("reused 2 from the cache"),
        "{stderr}"
    );
    assert_eq!(before, std::fs::read(&prefs).unwrap());

    // SmolLM2-135M favours whichever output it is shown first: estimate-winrate says so.
    let stderr = ok(
        &sc,
        "estimate-winrate",
        &[
            "--preferences",
            s(&prefs),
            "--out",
            s(&sc.path("winrates.parquet")),
        ],
    );
    assert!(stderr.contains("position disagreement"), "{stderr}");

    // evaluate: the model's responses against the prompts' reference answers.
    let eval = sc.path("eval");
    ok(
        &sc,
        "evaluate",
        &[
            "--models",
            s(&gguf),
            "--prompts",
            s(&prompts),
            "--out",
            s(&eval),
            "--judge",
            "llm",
            "--judge-model",
            s(&gguf),
            "--baseline",
            "reference",
            "--k",
            "2",
            "--max-new-tokens",
            "8",
        ],
    );
    let (_, rows) = read_rows::<EvalRow>(&eval.join("eval.parquet")).unwrap();
    assert_eq!(rows.len(), 4, "2 prompts x K 2");
    assert!(
        rows.iter().all(|r| r.p_win > 0.0 && r.p_win < 1.0),
        "{rows:?}"
    );
    assert_eq!(rows[0].baseline, "Paris.");
}

#[test]
fn bad_judge_settings_fail_before_any_model_loads() {
    let sc = Scratch::new("llm-judge-bad");
    let prefs = sc.path("preferences.parquet");
    let score = |extra: &[&str]| {
        let mut args = vec![
            "--samples",
            "missing-samples.parquet",
            "--out",
            s(&prefs),
            "--judge",
            "llm",
        ];
        args.extend_from_slice(extra);
        fails(&sc, "score", &args)
    };
    // Checked before the samples are read or the judge model is looked for.
    let stderr = score(&["--judge-model", "no/such-model", "--verdicts", "a"]);
    assert!(
        stderr.contains("--verdicts \"a\": expected two non-empty verdict strings"),
        "{stderr}"
    );
    let stderr = score(&[
        "--judge-model",
        "no/such-model",
        "--judge-template",
        "no-such.jinja",
    ]);
    assert!(
        stderr.contains("--judge-template \"no-such.jinja\": cannot read the template file"),
        "{stderr}"
    );
    assert!(!prefs.exists());

    let Some(gguf) = smollm2_gguf() else { return };
    // A verdict of several tokens: the tokenizer says so, the weights are never read.
    let stderr = score(&["--judge-model", s(&gguf), "--verdicts", "a,hello world"]);
    assert!(
        stderr.contains("--verdicts \"a,hello world\": \"hello world\" is not a single token"),
        "{stderr}"
    );
    // evaluate refuses it before generating any response.
    let eval = sc.path("eval");
    let prompts = sc.path("prompts.parquet");
    write_prompts_with_references(&prompts);
    let stderr = fails(
        &sc,
        "evaluate",
        &[
            "--models",
            s(&gguf),
            "--prompts",
            s(&prompts),
            "--out",
            s(&eval),
            "--judge",
            "llm",
            "--judge-model",
            s(&gguf),
            "--verdicts",
            "a,a",
        ],
    );
    assert!(
        stderr.contains("--verdicts \"a,a\": the two verdicts are the same string"),
        "{stderr}"
    );
    assert!(!eval.join("responses-0.parquet").exists() && !prefs.exists());
}
