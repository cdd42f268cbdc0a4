//! constraints.parquet, beside scores.parquet for judges that check constraints: whether each
//! response meets each of its prompt's constraints, so users see which ones fail. The checks
//! are cheap and deterministic, so they are recomputed rather than cached.

use anyhow::Result;

use super::StageOutput;
use crate::data::{write_rows, ConstraintRow};
use crate::judge::{Judge, JudgeItem};

/// Writes the pass/fail of every constraint of every item (grouped by prompt) to `output`.
pub(super) fn write_constraint_outcomes(
    output: &StageOutput,
    items: &[Vec<JudgeItem>],
    judge: &Judge,
) -> Result<()> {
    let mut rows = Vec::new();
    for item in items.iter().flatten() {
        for o in judge.constraint_outcomes(item)? {
            rows.push(ConstraintRow {
                prompt_id: item.prompt_id.to_string(),
                sample_idx: item.sample_idx,
                constraint_idx: o.index,
                kind: o.kind,
                constraint: o.json,
                passed: o.passed,
            });
        }
    }
    write_rows(&output.path, &output.meta, &rows)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::super::tests::{sample, write_samples, Tmp};
    use super::super::{score, ScoreJob, ScoreSettings};
    use crate::data::{
        read_rows, write_rows, ConstraintRow, FileKind, FileMeta, Message, PreferenceRow,
        PromptRow, SampleRow, ScoreRow,
    };
    use std::path::{Path, PathBuf};

    fn write_prompts(path: &Path, constraints: [&str; 2]) {
        let rows: Vec<PromptRow> = ["a", "b"]
            .into_iter()
            .zip(constraints)
            .map(|(id, c)| PromptRow {
                prompt_id: id.into(),
                messages: vec![Message::user(format!("question {id}"))],
                reference: None,
                constraints: Some(c.into()),
            })
            .collect();
        let fp = blake3::hash(constraints.concat().as_bytes())
            .to_hex()
            .to_string();
        write_rows(
            path,
            &FileMeta::new(FileKind::Prompts, "external", fp),
            &rows,
        )
        .unwrap();
    }

    /// Two samples of each of prompts a and b (`responses` in that order), and the settings of
    /// `--judge instructions`.
    fn setup(name: &str, responses: [&str; 4]) -> (Tmp, PathBuf, ScoreSettings) {
        let tmp = Tmp::new(name);
        let samples = tmp.path("samples.parquet");
        let keys = [("a", 0), ("a", 1), ("b", 0), ("b", 1)];
        let rows: Vec<SampleRow> = (keys.iter().zip(responses))
            .map(|(&(id, i), r)| sample(id, i, r))
            .collect();
        write_samples(&samples, &rows);
        let mut s = ScoreSettings::default();
        s.judging.judge = "instructions".into();
        s.judging.cache_dir = Some(tmp.path("cache"));
        (tmp, samples, s)
    }

    #[test]
    fn instructions_scores_the_fraction_met_and_writes_each_constraint() {
        let responses = [
            "all lowercase here",
            "Has Capitals, and commas",
            "```json\n{\"x\": 1}\n```",
            "not json",
        ];
        let (tmp, samples, mut s) = setup("instructions", responses);
        let prompts = tmp.path("prompts.parquet");
        let lower_no_commas = r#"[{"kind":"lowercase"},{"kind":"no_commas"}]"#;
        write_prompts(&prompts, [lower_no_commas, r#"[{"kind":"json_only"}]"#]);
        s.temperature = 0.5;
        let run = |out: &Path, force: bool| {
            score(&ScoreJob {
                shard: None,
                samples: &samples,
                out,
                scores_out: None,
                prompts: Some(&prompts),
                settings: &s,
                force,
            })
        };
        let out = tmp.path("preferences.parquet");
        let r = run(&out, false).unwrap();
        assert_eq!((r.judged, r.reused), (4, 0));
        assert_eq!(r.constraints, Some(tmp.path("constraints.parquet")));

        let (_, scores) = read_rows::<ScoreRow>(&tmp.path("scores.parquet")).unwrap();
        let got: Vec<f64> = scores.iter().map(|r| r.score).collect();
        assert_eq!(got, [1.0, 0.0, 1.0, 0.0]);
        // Scores 1 and 0 at temperature 0.5: sigmoid(2).
        let (_, prefs) = read_rows::<PreferenceRow>(&out).unwrap();
        assert!((prefs[0].p - crate::judge::sigmoid(2.0)).abs() < 1e-15);
        assert_eq!(prefs[0].judge, "instructions");

        let (meta, rows) = read_rows::<ConstraintRow>(&tmp.path("constraints.parquet")).unwrap();
        assert_eq!(meta.inputs.len(), 2, "samples and prompts are its inputs");
        let got: Vec<(&str, u32, u32, &str, bool)> = rows
            .iter()
            .map(|r| {
                let key = (r.prompt_id.as_str(), r.sample_idx, r.constraint_idx);
                (key.0, key.1, key.2, r.kind.as_str(), r.passed)
            })
            .collect();
        assert_eq!(
            got,
            [
                ("a", 0, 0, "lowercase", true),
                ("a", 0, 1, "no_commas", true),
                ("a", 1, 0, "lowercase", false),
                ("a", 1, 1, "no_commas", false),
                ("b", 0, 0, "json_only", true),
                ("b", 1, 0, "json_only", false),
            ]
        );
        assert_eq!(rows[1].constraint, r#"{"kind":"no_commas"}"#);

        // Another output folder: every score comes from the cache.
        let r = run(&tmp.path("again/preferences.parquet"), false).unwrap();
        assert_eq!((r.judged, r.reused), (0, 4));
        let again = std::fs::read(tmp.path("again/constraints.parquet")).unwrap();
        assert_eq!(
            again,
            std::fs::read(tmp.path("constraints.parquet")).unwrap()
        );

        // Other constraints for the same prompts: judged anew, not taken from the cache.
        write_prompts(
            &prompts,
            [r#"[{"kind":"uppercase"}]"#, r#"[{"kind":"json_only"}]"#],
        );
        let r = run(&tmp.path("other/preferences.parquet"), false).unwrap();
        assert_eq!((r.judged, r.reused), (2, 2));
        let (_, scores) = read_rows::<ScoreRow>(&tmp.path("other/scores.parquet")).unwrap();
        assert_eq!(scores[0].score, 0.0);
    }

    #[test]
    fn bad_or_missing_constraints_fail_before_anything_is_written() {
        let (tmp, samples, s) = setup("instructions-bad", ["x", "y", "x", "y"]);
        let prompts = tmp.path("prompts.parquet");
        let out = tmp.path("sub/preferences.parquet");
        let job = |prompts| ScoreJob {
            shard: None,
            samples: &samples,
            out: &out,
            scores_out: None,
            prompts,
            settings: &s,
            force: false,
        };
        let msg = format!("{:#}", score(&job(None)).unwrap_err());
        assert!(
            msg.contains("--judge instructions needs --prompts FILE"),
            "{msg}"
        );

        for (b, want) in [
            (
                r#"[{"kind":"no_commas"},{"kind":"all_caps"}]"#,
                [
                    "instructions: prompt \"b\": constraints[1] {\"kind\":\"all_caps\"}",
                    "unknown variant `all_caps`",
                ],
            ),
            (
                r#"[{"kind":"word_count","at_least":9,"at_most":3}]"#,
                ["prompt \"b\": constraints[0]", "at_least 9 > at_most 3"],
            ),
        ] {
            write_prompts(&prompts, [r#"[{"kind":"lowercase"}]"#, b]);
            let msg = format!("{:#}", score(&job(Some(&prompts))).unwrap_err());
            assert!(want.iter().all(|w| msg.contains(w)), "{msg}");
        }
        assert!(!tmp.path("sub").exists(), "nothing is written on bad input");
    }
}
