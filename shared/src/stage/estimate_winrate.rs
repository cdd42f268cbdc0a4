//! `estimate-winrate`: each sample's win rate against the other samples of its prompt
//! (DESIGN.md, "The win rate") and its rank, from `preferences.parquet`; with what the
//! preferences say about the judge: the share of prompts with a 3-cycle and, for judges that saw
//! both orders, how often the order changed the verdict.

use anyhow::{bail, ensure, Context, Result};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::path::Path;

use super::context::{check_output_files, Outcome, StageOutput};
use super::output_lock::lock_outputs;
use super::progress::Progress;
use super::settings::Settings;
use crate::data::{
    read_meta, read_rows, write_rows, FileKind, FileMeta, PreferenceRow, WinrateRow,
    PREFERENCE_INPUTS,
};
use crate::judge::{
    intransitive_share, position_disagreement, winrates, Convention, PairPreference,
    PositionDisagreement, PreferenceMatrix, TwoOrderVerdict,
};

/// The `[winrate]` section of a pipeline file; flags override it.
#[derive(Debug, Clone, Default, Serialize, Deserialize, clap::Args)]
pub struct WinrateSettings {
    /// Win rate `sum_{j != i} p_ij / (K - 1)` instead of SPPO's `(0.5 + sum_{j != i} p_ij) / K`.
    #[arg(long)]
    pub exclude_self: bool,
}

impl Settings for WinrateSettings {
    const SECTION: &'static str = "winrate";
}

pub struct WinrateJob<'a> {
    pub preferences: &'a Path,
    pub out: &'a Path,
    pub settings: &'a WinrateSettings,
    pub force: bool,
}

/// What an `estimate-winrate` run did and found.
#[derive(Debug, Clone, PartialEq)]
pub struct WinrateReport {
    pub outcome: Outcome,
    pub prompts: usize,
    pub k: usize,
    /// Share of prompts whose preferences contain a 3-cycle.
    pub intransitive_share: f64,
    /// Over the pairs judged in both orders (p_forward and p_swapped present), if any.
    pub position: Option<PositionDisagreement>,
}

/// The preferences of every prompt, checked complete: the same K for every prompt (and the
/// K the score stage recorded, when it did), every pair once, probabilities in [0, 1].
pub fn read_preference_matrices(
    path: &Path,
) -> Result<(
    crate::data::FileMeta,
    Vec<PreferenceMatrix>,
    Vec<TwoOrderVerdict>,
)> {
    let (meta, rows) = read_rows::<PreferenceRow>(path)?;
    ensure!(
        !rows.is_empty(),
        "{}: no preferences (0 rows), expected every pair i < j of each prompt's samples",
        path.display()
    );
    let recorded_k: Option<usize> = match meta.extra.get("k") {
        Some(v) => Some(v.parse().ok().with_context(|| {
            format!(
                "{}: metadata rspo.k is {v:?}, expected a number of samples",
                path.display()
            )
        })?),
        None => None,
    };
    let mut index: HashMap<&str, usize> = HashMap::new();
    let mut groups: Vec<(&str, Vec<PairPreference>)> = Vec::new();
    let mut two_orders = Vec::new();
    for (n, r) in rows.iter().enumerate() {
        for (column, value) in [("p_forward", r.p_forward), ("p_swapped", r.p_swapped)] {
            if let Some(x) = value {
                ensure!(
                    (0.0..=1.0).contains(&x),
                    "{}: column '{column}' has value {x} at row {n} (prompt {:?}, pair i = {}, j = {}), expected a probability in [0, 1]",
                    path.display(),
                    r.prompt_id,
                    r.i,
                    r.j
                );
            }
        }
        if let (Some(p_forward), Some(p_swapped)) = (r.p_forward, r.p_swapped) {
            two_orders.push(TwoOrderVerdict {
                p_forward,
                p_swapped,
            });
        }
        let g = *index.entry(r.prompt_id.as_str()).or_insert_with(|| {
            groups.push((&r.prompt_id, Vec::new()));
            groups.len() - 1
        });
        groups[g].1.push(PairPreference {
            i: r.i,
            j: r.j,
            p: r.p,
        });
    }
    let mut matrices = Vec::with_capacity(groups.len());
    let mut first_k: Option<(usize, &str)> = None;
    for (prompt_id, pairs) in &groups {
        // Without a recorded K, a prompt's K is its highest sample index + 1.
        let k = match recorded_k {
            Some(k) => k,
            None => pairs
                .iter()
                .map(|p| p.i.max(p.j) as usize + 1)
                .max()
                .unwrap_or(0),
        };
        match first_k {
            None => first_k = Some((k, prompt_id)),
            Some((k0, p0)) if k0 != k => bail!(
                "{}: prompt {prompt_id:?} has pairs of K = {k} samples but prompt {p0:?} of K = {k0}; expected the same K for every prompt",
                path.display()
            ),
            _ => {}
        }
        let matrix = PreferenceMatrix::from_pairs(prompt_id, k, pairs).map_err(|e| {
            anyhow::anyhow!("{}: columns (prompt_id, i, j, p): {e}", path.display())
        })?;
        matrices.push(matrix);
    }
    Ok((meta, matrices, two_orders))
}

/// `estimate-winrate`: winrates.parquet from preferences.parquet.
pub fn estimate_winrate(job: &WinrateJob) -> Result<WinrateReport> {
    check_output_files(
        &[("--out", job.out)],
        &[("--preferences", job.preferences)],
        &[],
    )?;
    let (meta, matrices, two_orders) = read_preference_matrices(job.preferences)?;
    let k = matrices[0].k();
    let share = intransitive_share(&matrices).unwrap_or(0.0);
    let position = if two_orders.is_empty() {
        None
    } else {
        Some(position_disagreement(&two_orders).map_err(|e| {
            anyhow::anyhow!(
                "{}: columns p_forward/p_swapped: {e}",
                job.preferences.display()
            )
        })?)
    };
    let mut report = WinrateReport {
        outcome: Outcome::UpToDate,
        prompts: matrices.len(),
        k,
        intransitive_share: share,
        position,
    };

    let convention = if job.settings.exclude_self {
        Convention::ExcludeSelf
    } else {
        Convention::IncludeSelf
    };
    let mut output = StageOutput::new(
        job.out,
        FileKind::Winrates,
        "estimate-winrate",
        job.settings,
        &[(job.preferences, &meta)],
        &[],
    )?;
    let _lock = lock_outputs(&[("--out", job.out)])?;
    // A file written before win rates recorded their samples is rewritten.
    let chained = read_meta(job.out).is_ok_and(|m| m.extra.contains_key(PREFERENCE_INPUTS));
    if !job.force && output.is_up_to_date() && chained {
        return Ok(report);
    }
    // The samples behind the preferences, for train-step to check the win rates are theirs.
    output.meta.extra.insert(
        PREFERENCE_INPUTS.into(),
        FileMeta::inputs_json(&meta.inputs),
    );
    // Diagnostics of the judge travel with the file (deterministic, so still reproducible).
    output
        .meta
        .extra
        .insert("intransitive_share".into(), share.to_string());
    if let Some(p) = position {
        output.meta.extra.insert(
            "position_disagreement".into(),
            serde_json::json!({
                "pairs": p.pairs,
                "disagreement_share": p.disagreement_share,
                "mean_abs_gap": p.mean_abs_gap,
            })
            .to_string(),
        );
    }

    let mut progress = Progress::new("estimate-winrate", matrices.len() as u64, "prompts");
    let mut rows = Vec::with_capacity(matrices.len() * k);
    for m in &matrices {
        for w in winrates(m, convention) {
            rows.push(WinrateRow {
                prompt_id: m.prompt_id().to_string(),
                sample_idx: w.sample_idx,
                winrate: w.winrate,
                n_opponents: w.n_opponents,
                rank: w.rank,
            });
        }
        progress.advance(1);
    }
    progress.finish();
    write_rows(job.out, &output.meta, &rows)?;
    report.outcome = Outcome::Written { rows: rows.len() };
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::{read_meta, FileMeta};
    use crate::stage::score::tests::Tmp;

    fn pref(prompt: &str, i: u32, j: u32, p: f64) -> PreferenceRow {
        PreferenceRow {
            prompt_id: prompt.into(),
            i,
            j,
            p,
            p_forward: None,
            p_swapped: None,
            judge: "test".into(),
        }
    }

    fn write_prefs(path: &Path, rows: &[PreferenceRow], k: Option<usize>) {
        let mut meta = FileMeta::new(FileKind::Preferences, "score", format!("fp-{}", rows.len()));
        if let Some(k) = k {
            meta.extra.insert("k".into(), k.to_string());
        }
        write_rows(path, &meta, rows).unwrap();
    }

    fn run(prefs: &Path, out: &Path, exclude_self: bool, force: bool) -> Result<WinrateReport> {
        estimate_winrate(&WinrateJob {
            preferences: prefs,
            out,
            settings: &WinrateSettings { exclude_self },
            force,
        })
    }

    /// The hand-computed K = 3 case of `judge::winrate` plus a cyclic prompt.
    fn two_prompts() -> Vec<PreferenceRow> {
        vec![
            // p01 = 0.8, p02 = 0.6, p12 = 0.3: (0.5 + sums) / 3 = 1.9/3, 1.0/3, 1.6/3.
            pref("a", 0, 1, 0.8),
            pref("a", 0, 2, 0.6),
            pref("a", 1, 2, 0.3),
            // 0 beats 1, 1 beats 2, 2 beats 0: a 3-cycle.
            // Sums: 0: 0.7 + 0.4 = 1.1;  1: 0.3 + 0.6 = 0.9;  2: 0.6 + 0.4 = 1.0.
            pref("b", 0, 1, 0.7),
            pref("b", 1, 2, 0.6),
            pref("b", 0, 2, 0.4),
        ]
    }

    #[test]
    fn writes_win_rates_and_ranks_per_prompt() {
        let tmp = Tmp::new("winrate");
        let prefs = tmp.path("preferences.parquet");
        write_prefs(&prefs, &two_prompts(), Some(3));
        let out = tmp.path("winrates.parquet");
        let r = run(&prefs, &out, false, false).unwrap();
        assert_eq!(r.outcome, Outcome::Written { rows: 6 });
        assert_eq!((r.prompts, r.k), (2, 3));
        assert_eq!(r.intransitive_share, 0.5);
        assert_eq!(r.position, None);
        let (meta, rows) = read_rows::<WinrateRow>(&out).unwrap();
        let want = [
            ("a", 0, 1.9 / 3.0, 0),
            ("a", 1, 1.0 / 3.0, 2),
            ("a", 2, 1.6 / 3.0, 1),
            ("b", 0, 1.6 / 3.0, 0),
            ("b", 1, 1.4 / 3.0, 2),
            ("b", 2, 1.5 / 3.0, 1),
        ];
        for (row, (p, i, w, rank)) in rows.iter().zip(want) {
            assert_eq!(
                (row.prompt_id.as_str(), row.sample_idx, row.rank),
                (p, i, rank)
            );
            assert!((row.winrate - w).abs() < 1e-12, "{row:?}");
            assert_eq!(row.n_opponents, 2);
        }
        assert_eq!(
            meta.extra.get("intransitive_share").map(String::as_str),
            Some("0.5")
        );
        assert_eq!(
            meta.inputs[0].fingerprint,
            read_meta(&prefs).unwrap().fingerprint
        );

        // Up to date, then --exclude-self is another fingerprint: s / (K - 1).
        assert_eq!(
            run(&prefs, &out, false, false).unwrap().outcome,
            Outcome::UpToDate
        );
        let fp = read_meta(&out).unwrap().fingerprint;
        assert_eq!(
            run(&prefs, &out, true, false).unwrap().outcome,
            Outcome::Written { rows: 6 }
        );
        assert_ne!(read_meta(&out).unwrap().fingerprint, fp);
        let (_, rows) = read_rows::<WinrateRow>(&out).unwrap();
        assert!((rows[0].winrate - 0.7).abs() < 1e-12);
        assert!((rows[4].winrate - 0.45).abs() < 1e-12);
        // A changed input is a changed fingerprint.
        let mut changed = two_prompts();
        changed[0].p = 0.9;
        write_prefs(&prefs, &changed, Some(3));
        let meta = FileMeta::new(FileKind::Preferences, "score", "other-fp");
        write_rows(&prefs, &meta, &changed).unwrap();
        assert_eq!(
            run(&prefs, &out, true, false).unwrap().outcome,
            Outcome::Written { rows: 6 }
        );
    }

    #[test]
    fn reports_position_disagreement_of_two_order_judges() {
        let tmp = Tmp::new("position");
        let prefs = tmp.path("preferences.parquet");
        let mut rows = vec![
            pref("a", 0, 1, 0.55),
            pref("a", 0, 2, 0.4),
            pref("a", 1, 2, 0.5),
        ];
        // (0.8, 0.3) flips, gap 0.5; (0.6, 0.2) flips, gap 0.4; (0.5, 0.5) agrees.
        for (r, (f, s)) in rows.iter_mut().zip([(0.8, 0.3), (0.6, 0.2), (0.5, 0.5)]) {
            r.p_forward = Some(f);
            r.p_swapped = Some(s);
        }
        write_prefs(&prefs, &rows, None);
        let r = run(&prefs, &tmp.path("w.parquet"), false, false).unwrap();
        let p = r.position.unwrap();
        assert_eq!(p.pairs, 3);
        assert!((p.disagreement_share - 2.0 / 3.0).abs() < 1e-12);
        assert!((p.mean_abs_gap - 0.3).abs() < 1e-12);
        let meta = read_meta(&tmp.path("w.parquet")).unwrap();
        assert!(meta.extra["position_disagreement"].contains("\"pairs\":3"));
    }

    fn expect_error(rows: &[PreferenceRow], k: Option<usize>, wants: &[&str]) {
        let tmp = Tmp::new("winrate-bad");
        let prefs = tmp.path("prefs.parquet");
        write_prefs(&prefs, rows, k);
        let out = tmp.path("out/winrates.parquet");
        let msg = format!("{:#}", run(&prefs, &out, false, false).unwrap_err());
        for want in wants {
            assert!(msg.contains(want), "expected {want:?} in: {msg}");
        }
        assert!(!tmp.path("out").exists(), "nothing written");
    }

    #[test]
    fn bad_preferences_are_clear_errors_and_write_nothing() {
        let full = two_prompts();
        expect_error(&[], None, &["prefs.parquet", "no preferences (0 rows)"]);
        // A missing pair.
        let mut missing = full.clone();
        missing.remove(4);
        expect_error(
            &missing,
            None,
            &[
                "prefs.parquet",
                "prompt b",
                "pair (i = 1, j = 2) is missing",
            ],
        );
        // The last sample missing from one prompt only: K differs.
        let k2 = vec![
            pref("a", 0, 1, 0.5),
            pref("a", 0, 2, 0.5),
            pref("a", 1, 2, 0.5),
            pref("b", 0, 1, 0.5),
        ];
        expect_error(
            &k2,
            None,
            &["prefs.parquet", "prompt \"b\" has pairs of K = 2", "K = 3"],
        );
        // ... or from every prompt: the K recorded by `score` catches it.
        expect_error(
            &full[..1],
            Some(3),
            &["prompt a", "is missing (2 of 3 pairs missing)"],
        );
        for bad in [f64::NAN, 1.5, -0.1] {
            let mut rows = full.clone();
            rows[2].p = bad;
            expect_error(
                &rows,
                None,
                &[
                    "prefs.parquet",
                    "prompt a",
                    "i = 1, j = 2",
                    &format!("p = {bad}"),
                ],
            );
        }
        let mut rows = full.clone();
        rows[3].p_swapped = Some(f64::NAN);
        rows[3].p_forward = Some(0.5);
        expect_error(
            &rows,
            None,
            &["column 'p_swapped' has value NaN at row 3", "prompt \"b\""],
        );
        let mut rows = full.clone();
        rows[0].i = 1;
        rows[0].j = 0;
        expect_error(&rows, None, &["found pair (i = 1, j = 0), expected i < j"]);
    }
}
