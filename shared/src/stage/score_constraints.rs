//! `score --judge instructions` also writes constraints.parquet beside scores.parquet: whether
//! each response satisfies each of its prompt's constraints, so users see which ones fail. The
//! checks are cheap and deterministic, so they are recomputed here rather than cached.

use anyhow::{Context, Result};
use serde_json::Value;
use std::path::{Path, PathBuf};

use super::context::StageOutput;
use super::prompt_extras::PromptExtras;
use super::score::{group_samples, items_of, ScoreJob};
use crate::data::{read_rows, write_rows, ConstraintRow, FileKind, SampleRow};
use crate::judge::constraint_outcomes;

/// The constraints file: `constraints.parquet` in the folder of the scores file.
pub fn constraints_path(scores: &Path) -> PathBuf {
    scores
        .parent()
        .unwrap_or(Path::new(""))
        .join("constraints.parquet")
}

/// Writes the pass/fail of every constraint of every sample to `out` (unless it is up to date),
/// under the same settings (`content`) as the scores.
pub fn write_constraint_outcomes(job: &ScoreJob, content: &Value, out: &Path) -> Result<()> {
    let prompts = job
        .prompts
        .context("--judge instructions needs --prompts FILE with a `constraints` column")?;
    let (samples_meta, samples) = read_rows::<SampleRow>(job.samples)?;
    let groups = group_samples(job.samples, &samples)?;
    let (prompts_meta, extras) = PromptExtras::read(prompts, groups.iter().map(|g| g.prompt_id))?;
    let output = StageOutput::new(
        out,
        FileKind::Constraints,
        "score",
        content,
        &[(job.samples, &samples_meta), (prompts, &prompts_meta)],
        &[],
    )?;
    if !job.force && output.is_up_to_date() {
        return Ok(());
    }
    let mut rows = Vec::new();
    for g in &groups {
        for item in items_of(g, &extras) {
            for o in constraint_outcomes(&item)? {
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
    }
    write_rows(out, &output.meta, &rows)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::super::score::tests::{sample, write_samples, Tmp};
    use super::super::score::{score, ScoreSettings};
    use super::*;
    use crate::data::{FileMeta, Message, PreferenceRow, PromptRow, ScoreRow};

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

    #[test]
    fn instructions_scores_the_fraction_met_and_writes_each_constraint() {
        let tmp = Tmp::new("instructions");
        let samples = tmp.path("samples.parquet");
        write_samples(
            &samples,
            &[
                sample("a", 0, "all lowercase here"),
                sample("a", 1, "Has Capitals, and commas"),
                sample("b", 0, "```json\n{\"x\": 1}\n```"),
                sample("b", 1, "not json"),
            ],
        );
        let prompts = tmp.path("prompts.parquet");
        let lower_no_commas = r#"[{"kind":"lowercase"},{"kind":"no_commas"}]"#;
        write_prompts(&prompts, [lower_no_commas, r#"[{"kind":"json_only"}]"#]);
        let s = ScoreSettings {
            judge: "instructions".into(),
            temperature: 0.5,
            cache_dir: Some(tmp.path("cache")),
            ..ScoreSettings::default()
        };
        let run = |out: &Path, force: bool| {
            score(&ScoreJob {
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
        let tmp = Tmp::new("instructions-bad");
        let samples = tmp.path("samples.parquet");
        write_samples(
            &samples,
            &[
                sample("a", 0, "x"),
                sample("a", 1, "y"),
                sample("b", 0, "x"),
                sample("b", 1, "y"),
            ],
        );
        let prompts = tmp.path("prompts.parquet");
        let s = ScoreSettings {
            judge: "instructions".into(),
            cache_dir: Some(tmp.path("cache")),
            ..ScoreSettings::default()
        };
        let out = tmp.path("sub/preferences.parquet");
        let job = |prompts| ScoreJob {
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

        write_prompts(
            &prompts,
            [
                r#"[{"kind":"lowercase"}]"#,
                r#"[{"kind":"no_commas"},{"kind":"all_caps"}]"#,
            ],
        );
        let msg = format!("{:#}", score(&job(Some(&prompts))).unwrap_err());
        assert!(
            msg.contains("instructions: prompt \"b\": constraints[1] {\"kind\":\"all_caps\"}")
                && msg.contains("unknown variant `all_caps`"),
            "{msg}"
        );
        write_prompts(
            &prompts,
            [
                r#"[{"kind":"lowercase"}]"#,
                r#"[{"kind":"word_count","at_least":9,"at_most":3}]"#,
            ],
        );
        let msg = format!("{:#}", score(&job(Some(&prompts))).unwrap_err());
        assert!(
            msg.contains("prompt \"b\": constraints[0]") && msg.contains("at_least 9 > at_most 3"),
            "{msg}"
        );
        assert!(!tmp.path("sub").exists(), "nothing is written on bad input");
    }
}
