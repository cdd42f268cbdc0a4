//! `score` on real Parquet files: judged, cached, resumed, refused.

use super::*;
use crate::data::{read_meta, FinishReason, Message};
use crate::judge::{JudgeError, PairVerdict, PairwiseJudge};
use serde_json::{json, Value};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

/// A unique temporary folder, removed on drop.
pub(crate) struct Tmp(pub PathBuf);

impl Tmp {
    pub(crate) fn new(name: &str) -> Self {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let dir =
            std::env::temp_dir().join(format!("rspo-stage-{name}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Tmp(dir)
    }
    pub(crate) fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for Tmp {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

pub(crate) fn sample(prompt_id: &str, sample_idx: u32, response: &str) -> SampleRow {
    SampleRow {
        prompt_id: prompt_id.into(),
        sample_idx,
        messages: vec![Message::user(format!("question {prompt_id}"))],
        prompt_text: format!("[INST] question {prompt_id} [/INST]"),
        response: response.into(),
        prompt_token_ids: vec![1, 2, 3],
        response_token_ids: vec![4, 5],
        finish_reason: FinishReason::Eos,
        sample_logprob: -1.5,
        seed: 7,
    }
}

pub(crate) fn write_samples(path: &Path, rows: &[SampleRow]) {
    let meta = FileMeta::new(FileKind::Samples, "generate", "samples-fp");
    write_rows(path, &meta, rows).unwrap();
}

fn length_settings(tmp: &Tmp, target: usize) -> ScoreSettings {
    {
        let mut s = ScoreSettings::default();
        s.judging.judge = "rule:length".into();
        s.judging.target = Some(target);
        s.batch_size = 3;
        s.judging.cache_dir = Some(tmp.path("cache"));
        s
    }
}

fn job<'a>(tmp: &'a Tmp, s: &'a ScoreSettings, samples: &'a Path, out: &'a Path) -> ScoreJob<'a> {
    let _ = tmp;
    ScoreJob {
        shard: None,
        samples,
        out,
        scores_out: None,
        prompts: None,
        settings: s,
        force: false,
    }
}

fn folder_entries(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

#[test]
fn rule_length_scores_lift_to_every_pair_and_are_cached() {
    let tmp = Tmp::new("length");
    let samples = tmp.path("samples.parquet");
    // Target 4: "abcd" scores 0, "ab" -2, "abcdefg" -3.
    write_samples(
        &samples,
        &[
            sample("a", 0, "ab"),
            sample("a", 1, "abcd"),
            sample("a", 2, "abcdefg"),
            sample("b", 1, "abc"),
            sample("b", 0, "abcd"),
            sample("b", 2, "abcd"),
        ],
    );
    let out = tmp.path("run/preferences.parquet");
    let s = length_settings(&tmp, 4);
    let r = score(&job(&tmp, &s, &samples, &out)).unwrap();
    assert_eq!(r.outcome, Outcome::Written { rows: 6 });
    // b's samples 0 and 2 are the same response: judged once.
    assert_eq!((r.judged, r.reused, r.resumed), (5, 1, 0));
    let scores_path = tmp.path("run/scores.parquet");
    assert_eq!(r.scores.as_deref(), Some(scores_path.as_path()));

    let (_, scores) = read_rows::<ScoreRow>(&scores_path).unwrap();
    let got: Vec<(String, u32, f64)> = scores
        .iter()
        .map(|r| (r.prompt_id.clone(), r.sample_idx, r.score))
        .collect();
    let want = [
        ("a", 0, -2.0),
        ("a", 1, 0.0),
        ("a", 2, -3.0),
        ("b", 0, 0.0),
        ("b", 1, -1.0),
        ("b", 2, 0.0),
    ];
    assert_eq!(
        got,
        want.iter()
            .map(|&(p, i, s)| (p.to_string(), i, s))
            .collect::<Vec<_>>()
    );
    let (meta, prefs) = read_rows::<PreferenceRow>(&out).unwrap();
    assert_eq!(meta.extra.get("k").map(String::as_str), Some("3"));
    assert_eq!(meta.inputs.len(), 1);
    let pairs: Vec<(&str, u32, u32)> = prefs
        .iter()
        .map(|r| (r.prompt_id.as_str(), r.i, r.j))
        .collect();
    assert_eq!(
        pairs,
        [
            ("a", 0, 1),
            ("a", 0, 2),
            ("a", 1, 2),
            ("b", 0, 1),
            ("b", 0, 2),
            ("b", 1, 2)
        ]
    );
    // p = sigmoid(r_i - r_j): a(0,1) = sigmoid(-2), b(0,2) = 0.5.
    assert!((prefs[0].p - crate::judge::sigmoid(-2.0)).abs() < 1e-15);
    assert_eq!(prefs[4].p, 0.5);
    assert!(prefs.iter().all(|r| r.p_forward.is_none()
        && r.p_swapped.is_none()
        && r.judge == "rule:length(target=4)"));

    // Up to date: nothing done.
    let again = score(&job(&tmp, &s, &samples, &out)).unwrap();
    assert_eq!(again.outcome, Outcome::UpToDate);
    // Forced: every judgment comes from the cache, and the bytes are the same.
    let before = (
        std::fs::read(&out).unwrap(),
        std::fs::read(&scores_path).unwrap(),
    );
    let mut forced = job(&tmp, &s, &samples, &out);
    forced.force = true;
    let r = score(&forced).unwrap();
    assert_eq!((r.judged, r.reused), (0, 6));
    assert_eq!(
        before,
        (
            std::fs::read(&out).unwrap(),
            std::fs::read(&scores_path).unwrap()
        )
    );
    // Without the cache, the same bytes again.
    let no_cache = {
        let mut s = s.clone();
        s.judging.cache = false;
        s
    };
    let mut forced = job(&tmp, &no_cache, &samples, &out);
    forced.force = true;
    let r = score(&forced).unwrap();
    assert_eq!((r.judged, r.reused, r.cache), (5, 1, None));
    assert_eq!(before.0, std::fs::read(&out).unwrap());

    // Another setting is another judge: a new fingerprint, nothing reused.
    let other = length_settings(&tmp, 5);
    let r = score(&job(&tmp, &other, &samples, &out)).unwrap();
    assert_eq!((r.judged, r.reused), (5, 1));
    assert_ne!(read_meta(&out).unwrap().fingerprint, {
        let m = FileMeta::new(FileKind::Preferences, "x", "y");
        m.fingerprint
    });
    assert_eq!(
        folder_entries(&tmp.path("run")),
        ["preferences.parquet", "scores.parquet"]
    );
}

#[test]
fn temperature_divides_the_gap_and_changes_the_fingerprint() {
    let tmp = Tmp::new("temperature");
    let samples = tmp.path("samples.parquet");
    write_samples(&samples, &[sample("a", 0, "ab"), sample("a", 1, "abcd")]);
    let out = tmp.path("p1.parquet");
    let s = length_settings(&tmp, 4);
    score(&job(&tmp, &s, &samples, &out)).unwrap();
    let hot = {
        let mut s = s.clone();
        s.temperature = 2.0;
        s
    };
    let out2 = tmp.path("p2.parquet");
    let r = score(&ScoreJob {
        shard: None,
        scores_out: Some(&tmp.path("scores2.parquet")),
        ..job(&tmp, &hot, &samples, &out2)
    })
    .unwrap();
    // Scores are the same judgments: reused.
    assert_eq!(r.reused, 2);
    let p1 = read_rows::<PreferenceRow>(&out).unwrap().1[0].p;
    let p2 = read_rows::<PreferenceRow>(&out2).unwrap().1[0].p;
    assert!((p1 - crate::judge::sigmoid(-2.0)).abs() < 1e-15);
    assert!((p2 - crate::judge::sigmoid(-1.0)).abs() < 1e-15);
    assert_ne!(
        read_meta(&out).unwrap().fingerprint,
        read_meta(&out2).unwrap().fingerprint
    );
}

#[test]
fn an_interrupted_run_resumes_from_its_chunks() {
    let tmp = Tmp::new("resume");
    let samples = tmp.path("samples.parquet");
    let rows: Vec<SampleRow> = ["a", "b", "c"]
        .iter()
        .flat_map(|p| (0..2).map(move |i| sample(p, i, &"x".repeat(i as usize + 1))))
        .collect();
    write_samples(&samples, &rows);
    let out = tmp.path("preferences.parquet");
    let s = {
        let mut s = length_settings(&tmp, 1);
        s.judging.cache = false;
        s
    };
    let uninterrupted = score(&job(&tmp, &s, &samples, &out)).unwrap();
    assert_eq!(uninterrupted.judged, 6);
    let expected = std::fs::read(&out).unwrap();
    let scores_path = tmp.path("scores.parquet");
    let expected_scores = std::fs::read(&scores_path).unwrap();
    std::fs::remove_file(&out).unwrap();
    std::fs::remove_file(&scores_path).unwrap();

    // A run that stopped after prompt "b": its chunk is there.
    let fingerprint = {
        let (meta, _) = read_rows::<SampleRow>(&samples).unwrap();
        StageOutput::new(
            &scores_path,
            FileKind::Scores,
            "score",
            &json!({"judge": "rule:length", "target": 1, "temperature": 1.0}),
            &[(samples.as_path(), &meta)],
            &[],
        )
        .unwrap()
        .meta
        .fingerprint
    };
    let mut store = ChunkStore::open(&scores_path, &fingerprint).unwrap();
    store
        .write_chunk(
            &["b"],
            &[
                ScoreRow {
                    prompt_id: "b".into(),
                    sample_idx: 0,
                    score: 0.0,
                },
                ScoreRow {
                    prompt_id: "b".into(),
                    sample_idx: 1,
                    score: -1.0,
                },
            ],
        )
        .unwrap();
    drop(store);
    let r = score(&job(&tmp, &s, &samples, &out)).unwrap();
    assert_eq!((r.judged, r.resumed), (4, 2));
    assert_eq!(std::fs::read(&out).unwrap(), expected);
    assert_eq!(std::fs::read(&scores_path).unwrap(), expected_scores);
    assert_eq!(
        folder_entries(&tmp.0),
        ["preferences.parquet", "samples.parquet", "scores.parquet"]
    );
}

#[test]
fn exact_match_reads_references_from_the_prompts_file() {
    let tmp = Tmp::new("exact");
    let samples = tmp.path("samples.parquet");
    write_samples(
        &samples,
        &[
            sample("a", 0, " 4\n"),
            sample("a", 1, "5"),
            sample("b", 0, "x"),
            sample("b", 1, "y"),
        ],
    );
    let prompts = tmp.path("prompts.parquet");
    let prompt_rows = vec![
        crate::data::PromptRow {
            prompt_id: "a".into(),
            messages: vec![Message::user("question a")],
            reference: Some("4".into()),
            constraints: None,
        },
        crate::data::PromptRow {
            prompt_id: "b".into(),
            messages: vec![Message::user("question b")],
            reference: Some("y".into()),
            constraints: None,
        },
    ];
    write_rows(
        &prompts,
        &FileMeta::new(FileKind::Prompts, "external", "p-fp"),
        &prompt_rows,
    )
    .unwrap();
    let out = tmp.path("preferences.parquet");
    let s = {
        let mut s = ScoreSettings::default();
        s.judging.judge = "rule:exact-match".into();
        s.judging.cache_dir = Some(tmp.path("cache"));
        s
    };
    let err = score(&job(&tmp, &s, &samples, &out)).unwrap_err();
    assert!(
        format!("{err:#}").contains("needs --prompts FILE"),
        "{err:#}"
    );
    let r = score(&ScoreJob {
        shard: None,
        prompts: Some(&prompts),
        ..job(&tmp, &s, &samples, &out)
    })
    .unwrap();
    assert_eq!(r.judged, 4);
    let (meta, prefs) = read_rows::<PreferenceRow>(&out).unwrap();
    assert_eq!(meta.inputs.len(), 2, "the prompts file is an input");
    let e = crate::judge::sigmoid(1.0);
    assert!((prefs[0].p - e).abs() < 1e-15);
    assert!((prefs[1].p - (1.0 - e)).abs() < 1e-15);

    // A prompt without a reference: an error naming the file and prompt, nothing written.
    let mut missing = prompt_rows.clone();
    missing[1].reference = None;
    write_rows(
        &prompts,
        &FileMeta::new(FileKind::Prompts, "external", "p-fp2"),
        &missing,
    )
    .unwrap();
    let out2 = tmp.path("sub/preferences.parquet");
    let err = score(&ScoreJob {
        shard: None,
        prompts: Some(&prompts),
        ..job(&tmp, &s, &samples, &out2)
    })
    .unwrap_err();
    let msg = format!("{err:#}");
    assert!(
        msg.contains("prompts.parquet") && msg.contains("\"b\"") && msg.contains("'reference'"),
        "{msg}"
    );
    assert!(!tmp.path("sub").exists());
}

fn expect_error(tmp: &Tmp, s: &ScoreSettings, rows: &[SampleRow], wants: &[&str]) {
    let samples = tmp.path("bad-samples.parquet");
    write_samples(&samples, rows);
    let out = tmp.path("bad/preferences.parquet");
    let err = score(&job(tmp, s, &samples, &out)).unwrap_err();
    let msg = format!("{err:#}");
    for want in wants {
        assert!(msg.contains(want), "expected {want:?} in: {msg}");
    }
    assert!(!tmp.path("bad").exists(), "nothing is written on bad input");
}

/// A samples file with prompt_id and sample_idx but no response column.
fn write_samples_without_response(path: &Path) {
    use arrow::array::{ArrayRef, StringArray, UInt32Array};
    use arrow::datatypes::{DataType, Field, Schema};
    use std::sync::Arc;
    let schema = Schema::new(vec![
        Field::new("prompt_id", DataType::Utf8, false),
        Field::new("sample_idx", DataType::UInt32, false),
    ]);
    let batch = arrow::record_batch::RecordBatch::try_new(
        Arc::new(schema),
        vec![
            Arc::new(StringArray::from(vec!["a", "a"])) as ArrayRef,
            Arc::new(UInt32Array::from(vec![0, 1])) as ArrayRef,
        ],
    )
    .unwrap();
    let meta = FileMeta::new(FileKind::Samples, "generate", "fp");
    let props = parquet::file::properties::WriterProperties::builder()
        .set_key_value_metadata(Some(
            meta.to_key_values()
                .unwrap()
                .into_iter()
                .map(|(k, v)| parquet::file::metadata::KeyValue::new(k, v))
                .collect(),
        ))
        .build();
    let file = std::fs::File::create(path).unwrap();
    let mut w = parquet::arrow::ArrowWriter::try_new(file, batch.schema(), Some(props)).unwrap();
    w.write(&batch).unwrap();
    w.close().unwrap();
}

#[test]
fn bad_samples_are_clear_errors_and_write_nothing() {
    let tmp = Tmp::new("bad");
    let s = length_settings(&tmp, 3);
    expect_error(
        &tmp,
        &s,
        &[],
        &["bad-samples.parquet", "no samples (0 rows)"],
    );
    expect_error(
        &tmp,
        &s,
        &[
            sample("a", 0, "x"),
            sample("a", 1, "y"),
            sample("b", 0, "x"),
            sample("b", 1, "y"),
            sample("b", 2, "z"),
        ],
        &[
            "bad-samples.parquet",
            "prompt \"b\" has K = 3",
            "prompt \"a\" has K = 2",
        ],
    );
    expect_error(
        &tmp,
        &s,
        &[sample("a", 0, "x")],
        &["K = 1", "expected K >= 2"],
    );
    expect_error(
        &tmp,
        &s,
        &[sample("a", 0, "x"), sample("a", 2, "y")],
        &["sample_idx = [0, 2]", "expected 0..1"],
    );
    let no_target = {
        let mut s = s.clone();
        s.judging.target = None;
        s
    };
    expect_error(
        &tmp,
        &no_target,
        &[sample("a", 0, "x"), sample("a", 1, "y")],
        &["--target N"],
    );
    let bad_regex = {
        let mut s = s.clone();
        s.judging.judge = "rule:contains".into();
        s.judging.target = None;
        s.judging.pattern = Some("(".into());
        s
    };
    expect_error(
        &tmp,
        &bad_regex,
        &[sample("a", 0, "x"), sample("a", 1, "y")],
        &["--pattern \"(\""],
    );
    let unknown = {
        let mut s = s.clone();
        s.judging.judge = "oracle".into();
        s
    };
    expect_error(
        &tmp,
        &unknown,
        &[sample("a", 0, "x"), sample("a", 1, "y")],
        &["--judge oracle", "reward-model"],
    );
    let no_model = {
        let mut s = s.clone();
        s.judging.judge = "reward-model".into();
        s.judging.target = None;
        s
    };
    expect_error(
        &tmp,
        &no_model,
        &[sample("a", 0, "x"), sample("a", 1, "y")],
        &["--judge-model"],
    );

    // A samples file without the response column.
    let path = tmp.path("no-response.parquet");
    write_samples_without_response(&path);
    let out = tmp.path("bad/preferences.parquet");
    let err = score(&job(&tmp, &s, &path, &out)).unwrap_err();
    let msg = format!("{err:#}");
    assert!(
        msg.contains("no-response.parquet") && msg.contains("missing column"),
        "{msg}"
    );
    assert!(!tmp.path("bad").exists());
}

#[test]
fn settings_come_from_the_score_and_winrate_sections() {
    let tmp = Tmp::new("config");
    let path = tmp.path("pipeline.toml");
    std::fs::write(
        &path,
        "[score]\njudge = \"rule:length\"\ntarget = 40\ntemperature = 0.5\n\n[winrate]\nexclude_self = true\n",
    )
    .unwrap();
    let s = ScoreSettings::from_config(Some(&path)).unwrap();
    assert_eq!(
        (
            s.judging.judge.as_str(),
            s.judging.target,
            s.temperature,
            s.batch_size,
            s.judging.cache
        ),
        ("rule:length", Some(40), 0.5, 8, true)
    );
    let w = crate::stage::estimate_winrate::WinrateSettings::from_config(Some(&path)).unwrap();
    assert!(w.exclude_self);
    std::fs::write(&path, "[score]\njudg = \"x\"\n").unwrap();
    let err = format!("{:#}", ScoreSettings::from_config(Some(&path)).unwrap_err());
    assert!(err.contains("[score]") && err.contains("judg"), "{err}");
}

/// A pairwise judge for tests: prefers the longer response, with a position bias toward
/// whichever it sees first.
struct LongerFirst {
    calls: AtomicUsize,
}

impl PairwiseJudge for LongerFirst {
    fn name(&self) -> String {
        "test:longer".into()
    }
    fn settings(&self) -> Value {
        json!({})
    }
    fn digest(&self) -> String {
        "longer-first".into()
    }
    fn compare(&self, a: &JudgeItem<'_>, b: &JudgeItem<'_>) -> Result<PairVerdict, JudgeError> {
        self.calls.fetch_add(1, Ordering::Relaxed);
        let longer = if a.response.len() > b.response.len() {
            0.8
        } else {
            0.2
        };
        Ok(PairVerdict::two_orders(longer + 0.1, longer - 0.1))
    }
}

#[test]
fn a_pairwise_judge_fills_both_orders_and_is_cached() {
    let tmp = Tmp::new("pairwise");
    let samples = tmp.path("samples.parquet");
    write_samples(
        &samples,
        &[
            sample("a", 0, "x"),
            sample("a", 1, "xxx"),
            sample("a", 2, "xx"),
        ],
    );
    let out = tmp.path("preferences.parquet");
    let s = {
        let mut s = ScoreSettings::default();
        s.judging.cache_dir = Some(tmp.path("cache"));
        s
    };
    let run = |force: bool| {
        let spec = JudgeSpec {
            content: json!({"judge": "test:longer"}),
            models: vec![],
            constraint_outcomes: false,
            load: Box::new(|| {
                Ok(Judge::Pairwise(Box::new(LongerFirst {
                    calls: AtomicUsize::new(0),
                })))
            }),
        };
        let run_job = ScoreJob {
            shard: None,
            force,
            ..job(&tmp, &s, &samples, &out)
        };
        score_with_judge(&run_job, Comparison::Pairwise, spec).unwrap()
    };
    let r = run(false);
    assert_eq!((r.judged, r.reused, r.scores.clone()), (3, 0, None));
    let (_, prefs) = read_rows::<PreferenceRow>(&out).unwrap();
    type Row = (u32, u32, f64, Option<f64>, Option<f64>);
    let got: Vec<Row> = prefs
        .iter()
        .map(|r| (r.i, r.j, r.p, r.p_forward, r.p_swapped))
        .collect();
    assert_eq!(got[0].0..got[0].1, 0..1);
    assert!((got[0].2 - 0.2).abs() < 1e-12 && (got[0].3.unwrap() - 0.3).abs() < 1e-12);
    assert!((got[2].2 - 0.8).abs() < 1e-12 && (got[2].4.unwrap() - 0.7).abs() < 1e-12);
    assert!(!tmp.path("scores.parquet").exists());
    let r = run(true);
    assert_eq!((r.judged, r.reused), (0, 3));
    assert_eq!(read_rows::<PreferenceRow>(&out).unwrap().1, prefs);
}
