//! `score --judge instructions` end to end: the shipped instruction prompt sets, samples of the
//! tiny policy, the real `generate` and `score` binaries.

use e2e::{fails, ok, repo, s, Scratch};
use rspo::data::{
    read_prompts, read_rows, write_rows, ConstraintRow, FileKind, FileMeta, Message, PromptOptions,
    PromptRow, ScoreRow,
};
use rspo::judge::constraints::parse_constraints;
use std::collections::{BTreeSet, HashMap};
use std::path::Path;

/// K samples per prompt from the embedded default's tiny policy.
fn sample_tiny_policy(sc: &Scratch, prompts: &Path, out: &Path, k: &str, max_new_tokens: &str) {
    let policy = repo("data/models/tiny-policy");
    ok(
        sc,
        "generate",
        &[
            "sample",
            "--model",
            s(&policy),
            "--prompts",
            s(prompts),
            "--out",
            s(out),
            "--k",
            k,
            "--max-new-tokens",
            max_new_tokens,
            "--seed",
            "5",
        ],
    );
}

/// Every shipped set: its size, 1 to 3 valid constraints per prompt, at least 15 kinds.
#[test]
fn the_shipped_instruction_sets_parse() {
    let mut train = 0;
    for (name, rows_expected) in [
        ("train-1", 60),
        ("train-2", 60),
        ("train-3", 60),
        ("eval", 64),
    ] {
        let path = repo(&format!("data/prompts/instructions-{name}.parquet"));
        let (_, rows) = read_prompts(&path, &PromptOptions::default()).expect("read");
        assert_eq!(rows.len(), rows_expected, "{name}");
        let mut kinds = BTreeSet::new();
        for row in &rows {
            let text = row.constraints.as_deref().expect("constraints");
            let parsed =
                parse_constraints(text).unwrap_or_else(|e| panic!("{name} {}: {e}", row.prompt_id));
            assert!((1..=3).contains(&parsed.len()), "{name} {}", row.prompt_id);
            kinds.extend(parsed.into_iter().map(|c| c.kind));
        }
        assert!(kinds.len() >= 15, "{name}: {kinds:?}");
        if name != "eval" {
            train += rows.len();
        }
    }
    assert!(train >= 150);
}

/// The one-kind sets of pipelines/smollm2-135m-title.toml: every prompt asks for a <<title>> and
/// nothing else, and no evaluation prompt is a training prompt.
#[test]
fn the_title_sets_carry_one_title_constraint_each() {
    let mut seen = HashMap::new();
    for (name, rows_expected) in [("title-train-1", 90), ("title-eval", 64)] {
        let path = repo(&format!("data/prompts/instructions-{name}.parquet"));
        let (_, rows) = read_prompts(&path, &PromptOptions::default()).expect("read");
        assert_eq!(rows.len(), rows_expected, "{name}");
        for row in &rows {
            let text = row.constraints.as_deref().expect("constraints");
            let parsed = parse_constraints(text).expect("valid");
            let kinds: Vec<&str> = parsed.iter().map(|c| c.kind.as_str()).collect();
            assert_eq!(kinds, ["title"], "{name} {}", row.prompt_id);
            let prompt = &row.messages.last().expect("a user turn").content;
            assert!(prompt.ends_with("like <<my title>>."), "{name}: {prompt}");
            if let Some(other) = seen.insert(prompt.clone(), name) {
                panic!("{prompt:?} is in both {other} and {name}");
            }
        }
    }
}

#[test]
fn score_judges_the_tiny_policy_on_the_instruction_prompts() {
    let sc = Scratch::new("instructions");
    let prompts = repo("data/prompts/instructions-eval.parquet");
    let samples = sc.path("iter-1/samples.parquet");
    let prefs = sc.path("iter-1/preferences.parquet");
    sample_tiny_policy(&sc, &prompts, &samples, "3", "8");
    let args = [
        "--samples",
        s(&samples),
        "--out",
        s(&prefs),
        "--judge",
        "instructions",
        "--prompts",
        s(&prompts),
        "--temperature",
        "0.25",
    ];
    let stderr = ok(&sc, "score", &args);
    assert!(stderr.contains("constraints.parquet"), "{stderr}");

    let (_, prompt_rows) = read_prompts(&prompts, &PromptOptions::default()).unwrap();
    let counts: HashMap<String, u32> = prompt_rows
        .iter()
        .map(|p| {
            let n = parse_constraints(p.constraints.as_deref().unwrap())
                .unwrap()
                .len();
            (p.prompt_id.clone(), n as u32)
        })
        .collect();
    let (_, scores) = read_rows::<ScoreRow>(&sc.path("iter-1/scores.parquet")).unwrap();
    let (meta, outcomes) =
        read_rows::<ConstraintRow>(&sc.path("iter-1/constraints.parquet")).unwrap();
    assert_eq!(scores.len(), 64 * 3);
    assert_eq!(meta.stage, "score");
    // One row per constraint of every sample; the score is the fraction that passed.
    let mut passed: HashMap<(&str, u32), (u32, u32)> = HashMap::new();
    for o in &outcomes {
        let e = passed.entry((&o.prompt_id, o.sample_idx)).or_default();
        assert_eq!(o.constraint_idx, e.1, "rows in constraint order");
        e.0 += u32::from(o.passed);
        e.1 += 1;
    }
    for r in &scores {
        let (ok_n, n) = passed[&(r.prompt_id.as_str(), r.sample_idx)];
        assert_eq!(n, counts[&r.prompt_id], "{}", r.prompt_id);
        assert_eq!(r.score, f64::from(ok_n) / f64::from(n), "{}", r.prompt_id);
    }

    // A rerun is up to date and leaves the files as they were.
    let before = std::fs::read(sc.path("iter-1/constraints.parquet")).unwrap();
    let stderr = ok(&sc, "score", &args);
    assert!(stderr.contains("up to date"), "{stderr}");
    assert_eq!(
        std::fs::read(sc.path("iter-1/constraints.parquet")).unwrap(),
        before
    );
}

#[test]
fn a_bad_constraint_is_an_error_naming_prompt_and_constraint() {
    let sc = Scratch::new("instructions-bad");
    let prompts = sc.path("prompts.parquet");
    let rows = vec![
        PromptRow {
            prompt_id: "good".into(),
            messages: vec![Message::user("Say hi in lowercase.")],
            reference: None,
            constraints: Some(r#"[{"kind": "lowercase"}]"#.into()),
        },
        PromptRow {
            prompt_id: "bad".into(),
            messages: vec![Message::user("Say hi briefly.")],
            reference: None,
            constraints: Some(
                r#"[{"kind": "word_count", "at_most": 5}, {"kind": "brevity"}]"#.into(),
            ),
        },
    ];
    let meta = FileMeta::new(FileKind::Prompts, "external", "bad-prompts");
    write_rows(&prompts, &meta, &rows).unwrap();
    let samples = sc.path("samples.parquet");
    sample_tiny_policy(&sc, &prompts, &samples, "2", "4");
    let out = sc.path("out/preferences.parquet");
    let stderr = fails(
        &sc,
        "score",
        &[
            "--samples",
            s(&samples),
            "--out",
            s(&out),
            "--judge",
            "instructions",
            "--prompts",
            s(&prompts),
        ],
    );
    assert!(
        stderr.contains("prompt \"bad\": constraints[1] {\"kind\":\"brevity\"}")
            && stderr.contains("unknown variant `brevity`"),
        "{stderr}"
    );
    assert!(!sc.path("out").exists(), "nothing is written");
}

/// `evaluate --judge instructions` hands each prompt's constraints to the judge: the tiny policy
/// against itself ties on every sample; a prompts file without constraints is an error naming a
/// prompt.
#[test]
fn evaluate_judges_with_the_prompts_constraints() {
    let sc = Scratch::new("instructions-evaluate");
    let policy = repo("data/models/tiny-policy");
    let evaluate = |prompts: &Path, out: &Path| {
        [
            "--models",
            s(&policy),
            "--baseline",
            s(&policy),
            "--prompts",
            s(prompts),
            "--judge",
            "instructions",
            "--k",
            "2",
            "--max-new-tokens",
            "6",
            "--out",
            s(out),
        ]
        .map(str::to_string)
    };
    let prompts = repo("data/prompts/instructions-eval.parquet");
    let out = sc.path("eval");
    let args = evaluate(&prompts, &out);
    ok(
        &sc,
        "evaluate",
        &args.iter().map(String::as_str).collect::<Vec<_>>(),
    );
    let summary: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("summary.json")).unwrap()).unwrap();
    assert_eq!(summary["judge"], "instructions");
    assert_eq!(summary["models"][0]["judged"], 128);
    assert_eq!(summary["models"][0]["win_rate"], 50.0);

    let plain = sc.path("plain.parquet");
    let rows = vec![PromptRow {
        prompt_id: "plain".into(),
        messages: vec![Message::user("Say hi.")],
        reference: None,
        constraints: None,
    }];
    let meta = FileMeta::new(FileKind::Prompts, "external", "plain-prompts");
    write_rows(&plain, &meta, &rows).unwrap();
    let args = evaluate(&plain, &sc.path("eval-plain"));
    let stderr = fails(
        &sc,
        "evaluate",
        &args.iter().map(String::as_str).collect::<Vec<_>>(),
    );
    assert!(
        stderr.contains("instructions: prompt \"plain\": has no constraints"),
        "{stderr}"
    );
}
