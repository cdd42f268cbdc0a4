//! `score` and `estimate-winrate` end to end: the real binaries on fixture checkpoints.

use e2e::{fails, fixture, ok, s, Scratch};
use rspo::data::{
    read_meta, read_rows, write_rows, FileKind, FileMeta, FinishReason, Message, PreferenceRow,
    PromptRow, SampleRow, ScoreRow, WinrateRow,
};
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

fn sigmoid(x: f64) -> f64 {
    1.0 / (1.0 + (-x).exp())
}

fn write_prompts(path: &Path) {
    let rows: Vec<PromptRow> = [
        ("p-sky", "Why is the sky blue?"),
        ("p-poem", "Write a two-line poem about rain."),
        ("p-add", "What is 2 + 3?"),
    ]
    .iter()
    .map(|(id, text)| PromptRow {
        prompt_id: id.to_string(),
        messages: vec![Message::user(*text)],
        reference: None,
        constraints: None,
    })
    .collect();
    write_rows(
        path,
        &FileMeta::new(FileKind::Prompts, "external", "prompts-fp"),
        &rows,
    )
    .expect("write prompts");
}

/// generate sample -> score --judge reward-model -> estimate-winrate, joined on their keys; a
/// second score run reuses every judgment from the cache and writes the same bytes.
#[test]
fn generate_score_winrate_line_up_and_the_cache_is_reused() {
    let sc = Scratch::new("score-chain");
    let prompts = sc.path("prompts.parquet");
    write_prompts(&prompts);
    let samples = sc.path("iter-1/samples.parquet");
    let prefs = sc.path("iter-1/preferences.parquet");
    let scores = sc.path("iter-1/scores.parquet");
    let winrates = sc.path("iter-1/winrates.parquet");
    let policy = fixture("tiny-llama");
    let judge = fixture("tiny-llama-rm");
    ok(
        &sc,
        "generate",
        &[
            "sample",
            "--model",
            s(&policy),
            "--prompts",
            s(&prompts),
            "--out",
            s(&samples),
            "--k",
            "4",
            "--max-new-tokens",
            "12",
            "--temperature",
            "1.0",
            "--seed",
            "3",
        ],
    );
    let score_args = [
        "--samples",
        s(&samples),
        "--out",
        s(&prefs),
        "--judge",
        "reward-model",
        "--judge-model",
        s(&judge),
        "--batch-size",
        "5",
    ];
    // A response repeated within a prompt's samples is judged once.
    let distinct = read_rows::<SampleRow>(&samples)
        .unwrap()
        .1
        .iter()
        .map(|r| (r.prompt_id.clone(), r.response.clone()))
        .collect::<BTreeSet<_>>()
        .len();
    let judged = format!("judged {distinct} responses");
    let stderr = ok(&sc, "score", &score_args);
    assert!(
        stderr.contains(&judged)
            && stderr.contains(&format!("reused {} from the cache", 12 - distinct)),
        "{stderr}"
    );
    let stderr = ok(
        &sc,
        "estimate-winrate",
        &["--preferences", s(&prefs), "--out", s(&winrates)],
    );
    assert!(
        stderr.contains("% of prompts have a 3-cycle"),
        "a scalar judge's preferences are reported: {stderr}"
    );
    assert!(
        !stderr.contains("position disagreement"),
        "no two-order pairs: {stderr}"
    );

    // Join the four files on their keys.
    let (samples_meta, sample_rows) = read_rows::<SampleRow>(&samples).unwrap();
    let (scores_meta, score_rows) = read_rows::<ScoreRow>(&scores).unwrap();
    let (prefs_meta, pref_rows) = read_rows::<PreferenceRow>(&prefs).unwrap();
    let (win_meta, win_rows) = read_rows::<WinrateRow>(&winrates).unwrap();
    let sample_keys: BTreeSet<(String, u32)> = sample_rows
        .iter()
        .map(|r| (r.prompt_id.clone(), r.sample_idx))
        .collect();
    let score_of: BTreeMap<(String, u32), f64> = score_rows
        .iter()
        .map(|r| ((r.prompt_id.clone(), r.sample_idx), r.score))
        .collect();
    let win_of: BTreeMap<(String, u32), &WinrateRow> = win_rows
        .iter()
        .map(|r| ((r.prompt_id.clone(), r.sample_idx), r))
        .collect();
    assert_eq!(sample_keys.len(), 12);
    assert_eq!(
        score_of.keys().cloned().collect::<BTreeSet<_>>(),
        sample_keys
    );
    assert_eq!(win_of.keys().cloned().collect::<BTreeSet<_>>(), sample_keys);
    let pair_keys: BTreeSet<(String, u32, u32)> = pref_rows
        .iter()
        .map(|r| (r.prompt_id.clone(), r.i, r.j))
        .collect();
    let expected_pairs: BTreeSet<(String, u32, u32)> = sample_keys
        .iter()
        .flat_map(|(p, i)| {
            sample_keys
                .iter()
                .filter(move |(q, j)| q == p && j > i)
                .map(move |(_, j)| (p.clone(), *i, *j))
        })
        .collect();
    assert_eq!(pair_keys, expected_pairs);
    assert_eq!(pref_rows.len(), 3 * 6);
    let mut sums: BTreeMap<(String, u32), f64> = BTreeMap::new();
    for r in &pref_rows {
        let ri = score_of[&(r.prompt_id.clone(), r.i)];
        let rj = score_of[&(r.prompt_id.clone(), r.j)];
        assert!((r.p - sigmoid(ri - rj)).abs() < 1e-12, "{r:?}");
        assert!(
            r.judge.starts_with("reward-model:tiny-llama-rm"),
            "{}",
            r.judge
        );
        *sums.entry((r.prompt_id.clone(), r.i)).or_default() += r.p;
        *sums.entry((r.prompt_id.clone(), r.j)).or_default() += 1.0 - r.p;
    }
    for (key, w) in &win_of {
        // DESIGN.md: winrate_i = (0.5 + sum_{j != i} p_ij) / K.
        assert!((w.winrate - (0.5 + sums[key]) / 4.0).abs() < 1e-12, "{w:?}");
        assert_eq!(w.n_opponents, 3);
        // Rank 0 is the highest score of the prompt; ties go to the lower sample_idx.
        let better = score_of
            .iter()
            .filter(|((p, i), r)| {
                *p == key.0 && (**r > score_of[key] || (**r == score_of[key] && *i < key.1))
            })
            .count();
        assert_eq!(w.rank as usize, better, "{w:?}");
    }
    // Fingerprints chain: preferences and scores come from these samples and this judge.
    assert_eq!(prefs_meta.inputs[0].fingerprint, samples_meta.fingerprint);
    assert_eq!(scores_meta.inputs[0].fingerprint, samples_meta.fingerprint);
    assert!(prefs_meta.models.contains_key("judge"));
    assert_eq!(win_meta.inputs[0].fingerprint, prefs_meta.fingerprint);

    // Up to date: nothing to do.
    let stderr = ok(&sc, "score", &score_args);
    assert!(stderr.contains("is up to date"), "{stderr}");
    // Forced: every judgment from the cache, bit-identical outputs.
    let before = (
        std::fs::read(&prefs).unwrap(),
        std::fs::read(&scores).unwrap(),
    );
    let mut forced = score_args.to_vec();
    forced.push("--force");
    let stderr = ok(&sc, "score", &forced);
    assert!(
        stderr.contains("judged 0 responses") && stderr.contains("reused 12 from the cache"),
        "{stderr}"
    );
    assert_eq!(
        before,
        (
            std::fs::read(&prefs).unwrap(),
            std::fs::read(&scores).unwrap()
        )
    );
    // And without the cache the reward model gives the same bits.
    let mut fresh = forced.clone();
    let at = fresh.iter().position(|a| *a == "--batch-size").unwrap();
    fresh[at + 1] = "1";
    fresh.push("--no-cache");
    let stderr = ok(&sc, "score", &fresh);
    assert!(stderr.contains(&judged), "{stderr}");
    assert_eq!(
        before,
        (
            std::fs::read(&prefs).unwrap(),
            std::fs::read(&scores).unwrap()
        )
    );
    let stderr = ok(
        &sc,
        "estimate-winrate",
        &["--preferences", s(&prefs), "--out", s(&winrates)],
    );
    assert!(stderr.contains("is up to date"), "{stderr}");
}

/// A copy of tiny-llama-rm whose chat template joins the turns' text after BOS, so that a
/// conversation renders to exactly the text the fixture's token ids come from.
fn concat_template_judge(sc: &Scratch) -> std::path::PathBuf {
    let src = fixture("tiny-llama-rm");
    let dst = sc.path("tiny-llama-rm-concat");
    std::fs::create_dir_all(&dst).unwrap();
    for name in ["config.json", "model.safetensors", "tokenizer.json"] {
        std::fs::copy(src.join(name), dst.join(name)).unwrap();
    }
    let text = std::fs::read_to_string(src.join("tokenizer_config.json")).unwrap();
    let mut cfg: Value = serde_json::from_str(&text).unwrap();
    cfg["chat_template"] = Value::from(
        "{{ bos_token }}{% for message in messages %}{{ message['content'] }}{% endfor %}",
    );
    std::fs::write(dst.join("tokenizer_config.json"), cfg.to_string()).unwrap();
    dst
}

/// The fixture's reward scores (transformers, float64) through `score`: a samples file whose
/// prompt + response are the fixture's sequences.
#[test]
fn reward_model_scores_match_the_transformers_fixture() {
    let sc = Scratch::new("score-fixture");
    let judge = concat_template_judge(&sc);
    let expected: Value = serde_json::from_str(
        &std::fs::read_to_string(fixture("tiny-llama-rm").join("expected.json")).unwrap(),
    )
    .unwrap();
    let sequences = expected["sequences"].as_array().unwrap();
    // The fixture's sequences as text, split into prompt and response (token boundaries at
    // the split are the fixture's: " once" is one token, and so on).
    let text = [
        (" Hello world,", " once upon a time.", 4),
        (
            " Write a short poem about the sea.",
            " The waves roll in and out, the gulls cry, and the sun sets slowly.",
            9,
        ),
        (
            " [INST] Explain why the sky is blue in two sentences. [/INST]",
            " Sunlight is scattered by the molecules of the air, and blue light is scattered more than red light because of its shorter wavelength.",
            19,
        ),
    ];
    // Prompt n holds fixture sequence n twice (K = 2: the judge compares in pairs).
    let mut rows = Vec::new();
    for (n, ((prompt, response, split), seq)) in text.iter().zip(sequences).enumerate() {
        let ids: Vec<u32> = seq["input_ids"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap() as u32)
            .collect();
        for sample_idx in 0..2 {
            rows.push(SampleRow {
                prompt_id: format!("fixture-{n}"),
                sample_idx,
                messages: vec![Message::user(*prompt)],
                prompt_text: format!("<s>{prompt}"),
                response: response.to_string(),
                prompt_token_ids: ids[..*split].to_vec(),
                response_token_ids: ids[*split..].to_vec(),
                finish_reason: FinishReason::Length,
                sample_logprob: 0.0,
                seed: 0,
            });
        }
    }
    let samples = sc.path("samples.parquet");
    write_rows(
        &samples,
        &FileMeta::new(FileKind::Samples, "generate", "fixture-samples"),
        &rows,
    )
    .unwrap();
    let prefs = sc.path("preferences.parquet");
    ok(
        &sc,
        "score",
        &[
            "--samples",
            s(&samples),
            "--out",
            s(&prefs),
            "--judge-model",
            s(&judge),
        ],
    );
    let (_, scores) = read_rows::<ScoreRow>(&sc.path("scores.parquet")).unwrap();
    assert_eq!(scores.len(), 6);
    for row in &scores {
        let n: usize = row.prompt_id["fixture-".len()..].parse().unwrap();
        let want = sequences[n]["score"].as_f64().unwrap();
        assert!(
            (row.score - want).abs() < 1e-4,
            "{} sample {}: got {}, transformers {want}",
            row.prompt_id,
            row.sample_idx,
            row.score
        );
    }
}

fn write_samples(path: &Path, keys: &[(&str, u32)]) {
    let rows: Vec<SampleRow> = keys
        .iter()
        .map(|(p, i)| SampleRow {
            prompt_id: p.to_string(),
            sample_idx: *i,
            messages: vec![Message::user("q")],
            prompt_text: "q".into(),
            response: "r".repeat(*i as usize + 1),
            prompt_token_ids: vec![1],
            response_token_ids: vec![2],
            finish_reason: FinishReason::Eos,
            sample_logprob: 0.0,
            seed: 0,
        })
        .collect();
    write_rows(
        path,
        &FileMeta::new(FileKind::Samples, "generate", "fp"),
        &rows,
    )
    .unwrap();
}

#[test]
fn bad_input_is_a_clear_error_and_writes_nothing() {
    let sc = Scratch::new("score-bad");
    let out = sc.path("out/preferences.parquet");
    let rule = ["--judge", "rule:length", "--target", "3"];

    let empty = sc.path("empty.parquet");
    write_samples(&empty, &[]);
    let mut args = vec!["--samples", s(&empty), "--out", s(&out)];
    args.extend(rule);
    let stderr = fails(&sc, "score", &args);
    assert!(
        stderr.contains("empty.parquet") && stderr.contains("no samples"),
        "{stderr}"
    );

    let uneven = sc.path("uneven.parquet");
    write_samples(&uneven, &[("a", 0), ("a", 1), ("b", 0), ("b", 1), ("b", 2)]);
    let mut args = vec!["--samples", s(&uneven), "--out", s(&out)];
    args.extend(rule);
    let stderr = fails(&sc, "score", &args);
    assert!(
        stderr.contains("uneven.parquet") && stderr.contains("K = 3") && stderr.contains("K = 2"),
        "{stderr}"
    );
    assert!(!sc.path("out").exists());

    // Preferences with a pair missing, or p outside [0, 1].
    let good = sc.path("good.parquet");
    write_samples(&good, &[("a", 0), ("a", 1), ("a", 2)]);
    let prefs = sc.path("prefs/preferences.parquet");
    let mut args = vec!["--samples", s(&good), "--out", s(&prefs)];
    args.extend(rule);
    ok(&sc, "score", &args);
    let (meta, rows) = read_rows::<PreferenceRow>(&prefs).unwrap();
    let broken = sc.path("broken.parquet");
    write_rows(&broken, &meta, &rows[..2]).unwrap();
    let win = sc.path("w/winrates.parquet");
    let stderr = fails(
        &sc,
        "estimate-winrate",
        &["--preferences", s(&broken), "--out", s(&win)],
    );
    assert!(
        stderr.contains("broken.parquet") && stderr.contains("pair (i = 1, j = 2) is missing"),
        "{stderr}"
    );
    let mut bad_p = rows.clone();
    bad_p[1].p = f64::NAN;
    write_rows(&broken, &meta, &bad_p).unwrap();
    let stderr = fails(
        &sc,
        "estimate-winrate",
        &["--preferences", s(&broken), "--out", s(&win)],
    );
    assert!(stderr.contains("p = NaN"), "{stderr}");
    assert!(!sc.path("w").exists());
    // A samples file is not a preferences file.
    let stderr = fails(
        &sc,
        "estimate-winrate",
        &["--preferences", s(&good), "--out", s(&win)],
    );
    assert!(
        stderr.contains("samples/v1") && stderr.contains("preferences/v1"),
        "{stderr}"
    );
    assert!(!sc.path("w").exists());
    assert_eq!(
        read_meta(&prefs)
            .unwrap()
            .extra
            .get("k")
            .map(String::as_str),
        Some("3")
    );
}

#[test]
fn help_explains_every_flag() {
    let sc = Scratch::new("score-help");
    let _ = &sc;
    let out = std::process::Command::new(e2e::bin("score"))
        .arg("--help")
        .output()
        .unwrap();
    let help = String::from_utf8_lossy(&out.stdout);
    for flag in [
        "--samples",
        "--out",
        "--judge ",
        "--judge-model",
        "--temperature",
        "--target",
        "--pattern",
        "--prompts",
        "--scores-out",
        "--batch-size",
        "--cache-dir",
        "--no-cache",
        "--config",
        "--force",
        "rule:exact-match",
    ] {
        assert!(help.contains(flag), "score --help lacks {flag}:\n{help}");
    }
    let out = std::process::Command::new(e2e::bin("estimate-winrate"))
        .arg("--help")
        .output()
        .unwrap();
    let help = String::from_utf8_lossy(&out.stdout);
    for flag in [
        "--preferences",
        "--out",
        "--exclude-self",
        "--config",
        "--force",
        "3-cycle",
    ] {
        assert!(
            help.contains(flag),
            "estimate-winrate --help lacks {flag}:\n{help}"
        );
    }
}

/// `score --judge pairrm` on the tiny-pairrm fixture's K = 3 group: both modes' preference
/// matrices as llm-blender computed them, and `estimate-winrate` reporting the position
/// disagreement of the two orders.
#[test]
fn pairrm_matches_llm_blender_in_both_modes() {
    let sc = Scratch::new("score-pairrm");
    let exp: Value = serde_json::from_str(
        &std::fs::read_to_string(fixture("tiny-pairrm/expected.json")).unwrap(),
    )
    .unwrap();
    let g = &exp["group"];
    let rows: Vec<SampleRow> = g["candidates"]
        .as_array()
        .unwrap()
        .iter()
        .enumerate()
        .map(|(i, c)| SampleRow {
            prompt_id: "turtle".into(),
            sample_idx: i as u32,
            messages: vec![Message::user(g["source"].as_str().unwrap())],
            prompt_text: String::new(),
            response: c.as_str().unwrap().into(),
            prompt_token_ids: vec![1],
            response_token_ids: vec![2],
            finish_reason: FinishReason::Eos,
            sample_logprob: 0.0,
            seed: 0,
        })
        .collect();
    let samples = sc.path("samples.parquet");
    write_rows(
        &samples,
        &FileMeta::new(FileKind::Samples, "test", "pairrm-samples"),
        &rows,
    )
    .unwrap();
    let judge = fixture("tiny-pairrm");
    let lengths = [
        "--source-max-length",
        &exp["source_max_length"].to_string(),
        "--candidate-max-length",
        &exp["candidate_max_length"].to_string(),
    ]
    .map(String::from);
    for (mode, key) in [("pairwise", "p_pairwise"), ("sppo", "p_sppo")] {
        let out = sc.path(&format!("{mode}/preferences.parquet"));
        let mut args = vec![
            "--samples",
            s(&samples),
            "--out",
            s(&out),
            "--judge",
            "pairrm",
            "--judge-model",
            s(&judge),
            "--pairrm-mode",
            mode,
        ];
        args.extend(lengths.iter().map(String::as_str));
        ok(&sc, "score", &args);
        let (_, prefs) = read_rows::<PreferenceRow>(&out).unwrap();
        assert_eq!(prefs.len(), 3);
        for r in &prefs {
            let want = g[key][r.i as usize][r.j as usize].as_f64().unwrap();
            assert!(
                (r.p - want).abs() < 1e-5,
                "{mode} p[{}][{}] {} vs {want}",
                r.i,
                r.j,
                r.p
            );
            let l = |a: u32, b: u32| g["logits"][a as usize][b as usize].as_f64().unwrap();
            assert!((r.p_forward.unwrap() - sigmoid(l(r.i, r.j))).abs() < 1e-5);
            assert!((r.p_swapped.unwrap() - (1.0 - sigmoid(l(r.j, r.i)))).abs() < 1e-5);
        }
        assert!(
            !sc.path(&format!("{mode}/scores.parquet")).exists(),
            "a pairwise judge writes no scores"
        );
        let winrates = sc.path(&format!("{mode}/winrates.parquet"));
        let report = ok(
            &sc,
            "estimate-winrate",
            &["--preferences", s(&out), "--out", s(&winrates)],
        );
        assert!(report.contains("position disagreement"), "{report}");
    }
}
