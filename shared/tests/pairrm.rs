//! PairRM against tests/fixtures/tiny-pairrm/expected.json, computed by llm-blender's own
//! `DebertaV2PairRM` and the PairRM-hf card's `tokenize_pair` (source_max_length 24,
//! candidate_max_length 12, so candidates get truncated). Tolerances from the fixtures README:
//! ids identical, logits 1e-4, probabilities 1e-5.

use candle_core::Device;
use rspo::judge::{
    LogitMatrix, PairRm, PairRmError, PairRmLengths, PairRmMode, PairRmOptions, PairTokenizer,
};
use serde_json::Value;
use std::path::{Path, PathBuf};

const LOGIT_TOL: f64 = 1e-4;
const PROB_TOL: f64 = 1e-5;

fn fixture_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/tiny-pairrm")
}

fn expected() -> Value {
    let text = std::fs::read_to_string(fixture_dir().join("expected.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

fn fixture_lengths(e: &Value) -> PairRmLengths {
    PairRmLengths {
        source_max_length: e["source_max_length"].as_u64().unwrap() as usize,
        candidate_max_length: e["candidate_max_length"].as_u64().unwrap() as usize,
    }
}

fn options(e: &Value) -> PairRmOptions {
    PairRmOptions {
        lengths: fixture_lengths(e),
        ..PairRmOptions::default()
    }
}

fn ids(v: &Value) -> Vec<u32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as u32)
        .collect()
}

fn matrix(v: &Value) -> Vec<Vec<f64>> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|r| {
            r.as_array()
                .unwrap()
                .iter()
                .map(|x| x.as_f64().unwrap())
                .collect()
        })
        .collect()
}

fn s(v: &Value) -> &str {
    v.as_str().unwrap()
}

fn sigmoid(x: f64) -> f64 {
    1.0 / (1.0 + (-x).exp())
}

fn max_abs_diff(a: &[Vec<f64>], b: &[Vec<f64>]) -> f64 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .flat_map(|(x, y)| {
            assert_eq!(x.len(), y.len());
            x.iter().zip(y).map(|(p, q)| (p - q).abs())
        })
        .fold(0.0, f64::max)
}

fn load() -> (PairRm, Value) {
    let e = expected();
    let model = PairRm::load_with(&fixture_dir(), &Device::Cpu, &options(&e)).unwrap();
    (model, e)
}

#[test]
fn input_ids_match_tokenize_pair_in_both_orders() {
    let e = expected();
    let prefix = rspo::judge::PrefixIds {
        source: e["special_ids"]["source"].as_u64().unwrap() as u32,
        cand1: e["special_ids"]["candidate1"].as_u64().unwrap() as u32,
        cand2: e["special_ids"]["candidate2"].as_u64().unwrap() as u32,
    };
    let tok = PairTokenizer::from_file(
        &fixture_dir().join("tokenizer.json"),
        prefix,
        fixture_lengths(&e),
    )
    .unwrap();
    for (n, case) in e["cases"].as_array().unwrap().iter().enumerate() {
        let (src, a, b) = (
            s(&case["source"]),
            s(&case["candidate_a"]),
            s(&case["candidate_b"]),
        );
        for (first, second, key) in [(a, b, "input_ids_ab"), (b, a, "input_ids_ba")] {
            let input = tok.encode_pair(src, first, second).unwrap();
            assert_eq!(input.ids, ids(&case[key]), "case {n} {key}");
            assert_eq!(input.ids[input.source_pos], prefix.source);
            assert_eq!(input.ids[input.cand1_pos], prefix.cand1);
            assert_eq!(input.ids[input.cand2_pos], prefix.cand2);
        }
        // The group encoder builds the same ordered pairs.
        let group = tok.encode_group(src, &[a, b]).unwrap();
        assert_eq!(group[0].ids, ids(&case["input_ids_ab"]));
        assert_eq!(group[1].ids, ids(&case["input_ids_ba"]));
    }
}

#[test]
fn long_sources_are_truncated_and_short_ones_leave_room() {
    let e = expected();
    let (model, _) = load();
    let tok = model.tokenizer();
    let long = "word ".repeat(200);
    let input = tok.encode_pair(&long, &long, &long).unwrap();
    let lengths = fixture_lengths(&e);
    // Source at its limit; each candidate at (total - source) / 2 = candidate_max_length.
    assert_eq!(input.cand1_pos - 1, lengths.source_max_length);
    assert_eq!(input.ids.len(), lengths.total_max_length());
    assert_eq!(
        input.cand2_pos - input.cand1_pos,
        lengths.candidate_max_length
    );
    // A short source leaves its room to the candidates: (total - source) / 2 each.
    let input = tok.encode_pair("Hi", &long, &long).unwrap();
    let source_len = input.cand1_pos - 1;
    let cand = (lengths.total_max_length() - source_len) / 2;
    assert_eq!(input.cand2_pos - input.cand1_pos, cand);
    assert_eq!(input.ids.len(), source_len + 2 * cand);
}

#[test]
fn logits_and_probabilities_match_llm_blender() {
    let (model, e) = load();
    let cases = e["cases"].as_array().unwrap();
    // Both orders of every case in one padded batch.
    let triples: Vec<(&str, &str, &str)> = cases
        .iter()
        .flat_map(|c| {
            let (src, a, b) = (s(&c["source"]), s(&c["candidate_a"]), s(&c["candidate_b"]));
            [(src, a, b), (src, b, a)]
        })
        .collect();
    let logits = model.compare_logits(&triples).unwrap();
    let (mut logit_err, mut prob_err) = (0f64, 0f64);
    for (n, case) in cases.iter().enumerate() {
        let (ab, ba) = (logits[2 * n] as f64, logits[2 * n + 1] as f64);
        logit_err = logit_err
            .max((ab - case["logit_ab"].as_f64().unwrap()).abs())
            .max((ba - case["logit_ba"].as_f64().unwrap()).abs());
        let p = (sigmoid(ab) + 1.0 - sigmoid(ba)) / 2.0;
        prob_err = prob_err.max((p - case["p_a_beats_b"].as_f64().unwrap()).abs());
    }
    eprintln!("max |logit error| {logit_err:.3e}, max |p error| {prob_err:.3e}");
    assert!(logit_err <= LOGIT_TOL, "logit error {logit_err}");
    assert!(prob_err <= PROB_TOL, "probability error {prob_err}");
}

#[test]
fn batching_and_padding_do_not_change_logits() {
    let (mut model, e) = load();
    let case = &e["cases"][1];
    let (src, a, b) = (
        s(&case["source"]),
        s(&case["candidate_a"]),
        s(&case["candidate_b"]),
    );
    let short = &e["cases"][0];
    let triples = [
        (src, a, b),
        (
            s(&short["source"]),
            s(&short["candidate_a"]),
            s(&short["candidate_b"]),
        ),
        (src, b, a),
    ];
    let batched = model.compare_logits(&triples).unwrap();
    model.set_batch_size(1);
    let single = model.compare_logits(&triples).unwrap();
    for (x, y) in batched.iter().zip(&single) {
        assert!((x - y).abs() < 1e-5, "batched {x} vs one at a time {y}");
    }
}

#[test]
fn group_matrices_match_both_modes() {
    let (model, e) = load();
    let g = &e["group"];
    let responses: Vec<&str> = g["candidates"].as_array().unwrap().iter().map(s).collect();
    let logits = model.logit_matrix(s(&g["source"]), &responses).unwrap();
    let k = logits.k();
    let ours: Vec<Vec<f64>> = (0..k)
        .map(|i| (0..k).map(|j| logits.get(i, j)).collect())
        .collect();
    let logit_err = max_abs_diff(&ours, &matrix(&g["logits"]));
    let pairwise_err = max_abs_diff(
        &logits.preferences(PairRmMode::Pairwise),
        &matrix(&g["p_pairwise"]),
    );
    let sppo_err = max_abs_diff(&logits.preferences(PairRmMode::Sppo), &matrix(&g["p_sppo"]));
    let scores_err = max_abs_diff(
        &[logits.sppo_scores()],
        &matrix(&serde_json::json!([g["sppo_scores"]])),
    );
    eprintln!(
        "group: logits {logit_err:.3e}, pairwise {pairwise_err:.3e}, sppo {sppo_err:.3e}, sppo scores {scores_err:.3e}"
    );
    assert!(logit_err <= LOGIT_TOL, "logit error {logit_err}");
    assert!(pairwise_err <= PROB_TOL, "pairwise error {pairwise_err}");
    assert!(sppo_err <= PROB_TOL, "sppo error {sppo_err}");
    assert!(scores_err <= PROB_TOL, "sppo score error {scores_err}");

    // The verdict rows: pairs i < j in order, p from the mode, both orders kept.
    let rows = model.pairwise(s(&g["source"]), &responses).unwrap();
    let pairs: Vec<(u32, u32)> = rows.iter().map(|v| (v.i, v.j)).collect();
    assert_eq!(pairs, vec![(0, 1), (0, 2), (1, 2)]);
    for v in &rows {
        let (i, j) = (v.i as usize, v.j as usize);
        assert!((v.p - 0.5 * (v.p_forward + v.p_swapped)).abs() < 1e-12);
        assert!((v.p_forward - sigmoid(logits.get(i, j))).abs() < 1e-12);
        assert!((v.p_swapped - (1.0 - sigmoid(logits.get(j, i)))).abs() < 1e-12);
    }
    let sppo_rows = model.sppo_matrix(s(&g["source"]), &responses).unwrap();
    let p_sppo = matrix(&g["p_sppo"]);
    for v in &sppo_rows {
        assert!((v.p - p_sppo[v.i as usize][v.j as usize]).abs() <= PROB_TOL);
    }
}

/// The aggregation alone, on the fixture's own logits: only rounding separates the two.
#[test]
fn aggregation_of_the_fixture_logits_is_exact() {
    let e = expected();
    let g = &e["group"];
    let logits = LogitMatrix::from_rows(&matrix(&g["logits"])).unwrap();
    for (mode, key) in [
        (PairRmMode::Pairwise, "p_pairwise"),
        (PairRmMode::Sppo, "p_sppo"),
    ] {
        let err = max_abs_diff(&logits.preferences(mode), &matrix(&g[key]));
        // The fixture's sppo matrix went through float32 (p_ji + p_ij = 1 only to 4e-8).
        assert!(err < 1e-7, "{mode}: {err}");
    }
    assert!(LogitMatrix::from_rows(&[vec![0.0, 1.0], vec![0.0]]).is_err());
    assert_eq!("sppo".parse::<PairRmMode>().unwrap(), PairRmMode::Sppo);
    assert!("both".parse::<PairRmMode>().is_err());
}

// ---------------------------------------------------------------------------------------------
// Bad input

/// A copy of the fixture in a fresh temporary folder, to break one file of.
fn fixture_copy(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("rspo-pairrm-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    for entry in std::fs::read_dir(fixture_dir()).unwrap() {
        let path = entry.unwrap().path();
        std::fs::copy(&path, dir.join(path.file_name().unwrap())).unwrap();
    }
    dir
}

fn edit_json(path: &Path, edit: impl FnOnce(&mut Value)) {
    let mut v: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    edit(&mut v);
    std::fs::write(path, serde_json::to_string(&v).unwrap()).unwrap();
}

fn load_err(dir: &Path) -> PairRmError {
    match PairRm::load(dir, &Device::Cpu) {
        Ok(_) => panic!("{} loaded, expected an error", dir.display()),
        Err(e) => e,
    }
}

#[test]
fn config_without_prefix_ids_is_a_clear_error() {
    for key in ["source_prefix_id", "cand1_prefix_id", "cand2_prefix_id"] {
        let dir = fixture_copy(key);
        edit_json(&dir.join("config.json"), |v| {
            v.as_object_mut().unwrap().remove(key);
        });
        let err = load_err(&dir);
        assert!(
            matches!(err, PairRmError::MissingPrefixId { .. }),
            "{err:?}"
        );
        let msg = err.to_string();
        assert!(msg.contains("config.json") && msg.contains(key), "{msg}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

#[test]
fn tokenizer_without_prefix_tokens_is_a_clear_error() {
    let dir = fixture_copy("tokenizer");
    edit_json(&dir.join("tokenizer.json"), |v| {
        v["added_tokens"]
            .as_array_mut()
            .unwrap()
            .retain(|t| !t["content"].as_str().unwrap().starts_with("<|"));
    });
    let err = load_err(&dir);
    assert!(
        matches!(err, PairRmError::TokenizerLacksPrefix { .. }),
        "{err:?}"
    );
    let msg = err.to_string();
    assert!(
        msg.contains("tokenizer.json") && msg.contains("<|source|>"),
        "{msg}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn prefix_ids_that_disagree_with_the_tokenizer_are_an_error() {
    let dir = fixture_copy("mismatch");
    edit_json(&dir.join("config.json"), |v| {
        v["cand1_prefix_id"] = 32003.into();
    });
    let err = load_err(&dir);
    assert!(
        matches!(err, PairRmError::PrefixIdMismatch { .. }),
        "{err:?}"
    );
    assert!(err.to_string().contains("<|candidate1|>"), "{err}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn other_architectures_and_missing_files_are_errors() {
    let dir = fixture_copy("arch");
    edit_json(&dir.join("config.json"), |v| {
        v["architectures"] = serde_json::json!(["DebertaV2ForSequenceClassification"]);
    });
    let err = load_err(&dir);
    assert!(matches!(err, PairRmError::Architecture { .. }), "{err:?}");
    std::fs::remove_file(dir.join("tokenizer.json")).unwrap();
    std::fs::copy(fixture_dir().join("config.json"), dir.join("config.json")).unwrap();
    let msg = load_err(&dir).to_string();
    assert!(msg.contains("tokenizer.json"), "{msg}");
    std::fs::remove_file(dir.join("model.safetensors")).unwrap();
    std::fs::copy(
        fixture_dir().join("tokenizer.json"),
        dir.join("tokenizer.json"),
    )
    .unwrap();
    let msg = load_err(&dir).to_string();
    assert!(msg.contains("model.safetensors"), "{msg}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn limits_too_small_for_the_template_are_an_error() {
    let opts = PairRmOptions {
        lengths: PairRmLengths {
            source_max_length: 1,
            candidate_max_length: 12,
        },
        ..PairRmOptions::default()
    };
    let err = match PairRm::load_with(&fixture_dir(), &Device::Cpu, &opts) {
        Ok(_) => panic!("expected an error"),
        Err(e) => e,
    };
    assert!(err.to_string().contains("--source-max-length 1"), "{err}");
}

/// `--pairrm-source`: the default reads the last user turn, `chat-template` the samples'
/// prompt_text; each gives the fixture's p for the source it reads (llm-blender's values).
#[test]
fn the_source_is_the_last_user_turn_or_the_chat_templated_prompt() {
    use rspo::data::Message;
    use rspo::judge::{JudgeItem, PairRmJudge, PairRmSource, PairwiseJudge};
    let e = expected();
    let case = &e["cases"][0];
    let (src, a, b) = (
        s(&case["source"]),
        s(&case["candidate_a"]),
        s(&case["candidate_b"]),
    );
    let expected_p = case["p_a_beats_b"].as_f64().unwrap();
    let judge = |source| {
        let model = PairRm::load_with(&fixture_dir(), &Device::Cpu, &options(&e)).unwrap();
        PairRmJudge::new(
            model,
            PairRmMode::Pairwise,
            source,
            "pairrm".into(),
            "d".into(),
        )
    };
    let (by_turn, by_template) = (
        judge(PairRmSource::LastUserTurn),
        judge(PairRmSource::ChatTemplate),
    );
    let turn_messages = [Message::user(src)];
    let other_messages = [Message::user("Something else entirely?")];
    let item = |messages, prompt_text, response| JudgeItem {
        prompt_id: "q",
        sample_idx: 0,
        messages,
        prompt_text,
        response,
        reference: None,
        constraints: None,
    };
    // The source in the user turn, a different prompt_text: the default reads the turn.
    let p = by_turn
        .compare(
            &item(&turn_messages, "<s>[INST] x [/INST]", a),
            &item(&turn_messages, "<s>[INST] x [/INST]", b),
        )
        .unwrap()
        .p;
    assert!((p - expected_p).abs() < PROB_TOL, "{p} vs {expected_p}");
    // The source as prompt_text, a different user turn: chat-template reads prompt_text.
    let p = by_template
        .compare(
            &item(&other_messages, src, a),
            &item(&other_messages, src, b),
        )
        .unwrap()
        .p;
    assert!((p - expected_p).abs() < PROB_TOL, "{p} vs {expected_p}");
    // Different sources, different cache keys.
    assert_ne!(by_turn.digest(), by_template.digest());
    let err = by_template
        .compare(&item(&other_messages, "", a), &item(&other_messages, "", b))
        .unwrap_err()
        .to_string();
    assert!(err.contains("--pairrm-source chat-template"), "{err}");
}
