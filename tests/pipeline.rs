//! One small RSPO iteration through the real binaries, then evaluate: every file joins up with
//! the others on its keys, and the trained model is a loadable checkpoint.

use e2e::{browser, fixture, ok, s, Scratch};
use rspo::data::{
    read_rows, write_rows, EvalRow, FileKind, FileMeta, LogprobRow, Message, PreferenceRow,
    PromptRow, SampleRow, TrainLogRow, WinrateRow,
};
use std::collections::BTreeSet;
use std::path::Path;

#[test]
fn one_iteration_and_evaluate_join_up() {
    let t = Scratch::new("pipeline");
    let base = fixture("tiny-llama");
    let judge = fixture("tiny-llama-rm");
    let prompts = t.path("prompts.parquet");
    let texts = [
        "Name a fruit.",
        "Say hello.",
        "Count to three.",
        "Give a color.",
    ];
    let rows: Vec<PromptRow> = texts
        .iter()
        .enumerate()
        .map(|(i, p)| PromptRow {
            prompt_id: format!("q{i}"),
            messages: vec![Message::user(*p)],
            reference: Some(format!("Answer {i}.")),
            constraints: None,
        })
        .collect();
    write_rows(
        &prompts,
        &FileMeta::new(FileKind::Prompts, "test", "prompts"),
        &rows,
    )
    .unwrap();
    let it = |name: &str| t.path(&format!("iter-1/{name}"));

    ok(
        &t,
        "generate",
        &[
            "sample",
            "--model",
            s(&base),
            "--prompts",
            s(&prompts),
            "--out",
            s(&it("samples.parquet")),
            "--k",
            "3",
            "--max-new-tokens",
            "10",
        ],
    );
    ok(
        &t,
        "generate",
        &[
            "logprobs",
            "--model",
            s(&base),
            "--samples",
            s(&it("samples.parquet")),
            "--role",
            "policy",
            "--out",
            s(&it("logprobs-policy.parquet")),
        ],
    );
    ok(
        &t,
        "generate",
        &[
            "logprobs",
            "--model",
            s(&base),
            "--samples",
            s(&it("samples.parquet")),
            "--role",
            "reference",
            "--out",
            s(&it("logprobs-reference.parquet")),
            "--reuse",
            s(&it("logprobs-policy.parquet")),
        ],
    );
    ok(
        &t,
        "score",
        &[
            "--samples",
            s(&it("samples.parquet")),
            "--judge",
            "reward-model",
            "--judge-model",
            s(&judge),
            "--out",
            s(&it("preferences.parquet")),
            "--cache-dir",
            s(&t.path("cache")),
        ],
    );
    ok(
        &t,
        "estimate-winrate",
        &[
            "--preferences",
            s(&it("preferences.parquet")),
            "--out",
            s(&it("winrates.parquet")),
        ],
    );
    ok(
        &t,
        "train-step",
        &[
            "--policy",
            s(&base),
            "--samples",
            s(&it("samples.parquet")),
            "--winrates",
            s(&it("winrates.parquet")),
            "--policy-logprobs",
            s(&it("logprobs-policy.parquet")),
            "--reference-logprobs",
            s(&it("logprobs-reference.parquet")),
            "--out",
            s(&t.path("iter-1")),
            "--preset",
            "rspo-paper",
            "--beta",
            "0.1",
            "--optimizer",
            "adamw",
            "--lr",
            "1e-3",
            "--batch-size",
            "2",
        ],
    );

    // Keys line up across stages.
    let keys = |v: Vec<(String, u32)>| v.into_iter().collect::<BTreeSet<_>>();
    let samples = read_rows::<SampleRow>(&it("samples.parquet")).unwrap().1;
    let sample_keys = keys(
        samples
            .iter()
            .map(|r| (r.prompt_id.clone(), r.sample_idx))
            .collect(),
    );
    assert_eq!(sample_keys.len(), texts.len() * 3);
    for file in ["logprobs-policy.parquet", "logprobs-reference.parquet"] {
        let lp = read_rows::<LogprobRow>(&it(file)).unwrap().1;
        assert_eq!(
            keys(
                lp.iter()
                    .map(|r| (r.prompt_id.clone(), r.sample_idx))
                    .collect()
            ),
            sample_keys,
            "{file}"
        );
    }
    let wr = read_rows::<WinrateRow>(&it("winrates.parquet")).unwrap().1;
    assert_eq!(
        keys(
            wr.iter()
                .map(|r| (r.prompt_id.clone(), r.sample_idx))
                .collect()
        ),
        sample_keys
    );
    let prefs = read_rows::<PreferenceRow>(&it("preferences.parquet"))
        .unwrap()
        .1;
    assert_eq!(prefs.len(), texts.len() * 3);
    for p in &prefs {
        assert!(
            sample_keys.contains(&(p.prompt_id.clone(), p.i))
                && sample_keys.contains(&(p.prompt_id.clone(), p.j))
        );
    }
    let log = read_rows::<TrainLogRow>(&it("train_log.parquet"))
        .unwrap()
        .1;
    assert_eq!(
        log.len(),
        2,
        "4 prompts in batches of 2: two optimizer steps"
    );
    assert!(log
        .iter()
        .all(|r| r.loss.is_finite() && r.terms.contains_key("reverse_kl")));

    // Evaluate the base and the iterate against the base's responses.
    let model1 = t.path("iter-1/model");
    let eval = t.path("eval");
    ok(
        &t,
        "evaluate",
        &[
            "--models",
            s(&base),
            s(&model1),
            "--prompts",
            s(&prompts),
            "--out",
            s(&eval),
            "--judge",
            "reward-model",
            "--judge-model",
            s(&judge),
            "--baseline",
            s(&base),
            "--k",
            "2",
            "--max-new-tokens",
            "10",
        ],
    );
    let (_, rows) = read_rows::<EvalRow>(&eval.join("eval.parquet")).unwrap();
    assert_eq!(rows.len(), 2 * texts.len() * 2, "2 models x prompts x K 2");
    let summary: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(eval.join("summary.json")).unwrap()).unwrap();
    let models = summary["models"].as_array().unwrap();
    assert_eq!(models.len(), 2);
    assert!(
        (models[0]["win_rate"].as_f64().unwrap() - 50.0).abs() < 1e-9,
        "the base against itself"
    );
    assert_eq!(models[0]["mean_logratio_ref"].as_f64().unwrap(), 0.0);
    assert!(
        models[1]["mean_logratio_ref"].as_f64().unwrap().abs() > 0.0,
        "the iterate moved"
    );
    let report = std::fs::read_to_string(eval.join("report.md")).unwrap();
    assert!(
        report.contains("| iter-1 |") && report.contains("chart.svg"),
        "{report}"
    );
    assert!(std::fs::read_to_string(eval.join("chart.svg"))
        .unwrap()
        .starts_with("<svg"));
    // The scalar judge's scores of both sides; no order verdicts; finish reason and tokens.
    for r in &rows {
        let (Some(a), Some(b)) = (r.score_response, r.score_baseline) else {
            panic!("no scores: {r:?}");
        };
        let p = 1.0 / (1.0 + (-(a - b)).exp());
        assert!((r.p_win - p).abs() < 1e-9, "{r:?}");
        assert_eq!((r.p_forward, r.p_swapped), (None, None));
        assert!(r.tokens_response <= 10, "{r:?}");
    }
    the_report_renders_in_chromium(&t, &eval, &rows);
}

/// Text as Chromium's DOM dump writes it inside an element.
fn as_dom_text(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('\u{a0}', "&nbsp;")
}

/// report.html opened at `#prompt=q2` in headless Chromium: no console message, and every
/// sample of q2 (both models) on the page. Skips without Chromium. With RSPO_REPORT_SCREENSHOT
/// set, its screenshot goes there too (docs/report.png comes from this run).
fn the_report_renders_in_chromium(t: &Scratch, eval: &Path, rows: &[EvalRow]) {
    let page = eval.join("report.html");
    let html = std::fs::read_to_string(&page).unwrap();
    assert!(html.contains("Training: iter-1"), "the iterate's train log");
    assert!(!html.contains("Training: tiny-llama"), "the base has none");
    let Some(chromium) = browser::chromium() else {
        eprintln!("skipped: chromium not installed (apt-get install chromium)");
        return;
    };
    let profile = t.path("chromium-profile");
    let shown = browser::render(&chromium, &page, "#prompt=q2", &profile);
    assert!(
        shown.console_lines().is_empty(),
        "console messages:\n{}",
        shown.log
    );
    let dom = &shown.dom;
    assert!(
        dom.contains("prompt q2") && dom.contains("Count to three."),
        "{dom}"
    );
    assert!(!dom.contains("Name a fruit."), "only q2 is listed: {dom}");
    for r in rows.iter().filter(|r| r.prompt_id == "q2") {
        assert!(
            dom.contains(&as_dom_text(&r.response)),
            "{} sample {} missing: {:?}",
            r.model,
            r.sample_idx,
            r.response
        );
    }
    assert!(dom.contains("score "), "the judge's scores are shown");
    let png = t.path("report.png");
    browser::screenshot(&chromium, &page, "#prompt=q2", &png, (1280, 1600), &profile);
    if let Some(to) = std::env::var_os("RSPO_REPORT_SCREENSHOT") {
        std::fs::copy(&png, to).unwrap();
    }
}
