//! `make study` on the embedded default, through the Makefile and the real binaries: a run per
//! variant, iteration 1's data once in shared/ (the variants read it, nothing copies it), one
//! evaluation of every model, study.md with well-formed SVG charts whose numbers are the
//! evaluation's, the README's table of it, and a rerun that does nothing.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Instant;

use e2e::{assert_quoted_table, bin, markdown_table, output_text as text, repo, Scratch};
use rspo::data::{read_meta, read_rows, EvalRow};

/// The study the README quotes (small enough for CI: 3 variants, 2 iterations, 1 epoch each).
const ARGS: [&str; 4] = [
    "study",
    "N=2",
    "VARIANTS=sppo forward_kl=0.1 rspo-paper",
    "TRAIN_ARGS=--epochs 1",
];
/// The variants' run folders.
const RUNS: [&str; 3] = ["sppo", "forward_kl-0.1", "rspo-paper"];
const SPECS: [&str; 3] = ["sppo", "forward_kl=0.1", "rspo-paper"];
const SHARED_FILES: [&str; 5] = [
    "samples.parquet",
    "logprobs-policy.parquet",
    "logprobs-reference.parquet",
    "preferences.parquet",
    "winrates.parquet",
];

fn make(dir: &Path, cache: &Path) -> Output {
    let bin_dir = bin("generate").parent().unwrap().to_path_buf();
    Command::new("make")
        .current_dir(repo(""))
        .arg(format!(
            "PIPELINE={}",
            repo("pipelines/tiny.toml").display()
        ))
        .arg(format!("STUDY_DIR={}", dir.display()))
        .arg(format!("BIN={}", bin_dir.display()))
        .arg("BUILD=")
        .args(ARGS)
        .env("RSPO_CACHE_DIR", cache)
        .output()
        .expect("make runs")
}

/// Every file under `dir`.
fn files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            out.extend(files(&path));
        } else {
            out.push(path);
        }
    }
    out
}

#[test]
fn make_study_shares_iteration_one_and_reports_every_variant() {
    let scratch = Scratch::new("make-study");
    let dir = scratch.path("tiny-study");
    let cache = scratch.path(".cache");
    let started = Instant::now();
    let out = make(&dir, &cache);
    eprintln!("make study took {:.0} s", started.elapsed().as_secs_f64());
    assert!(out.status.success(), "make study failed:\n{}", text(&out));

    check_runs_and_sharing(&dir);
    let summary: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("eval-2/summary.json")).unwrap())
            .unwrap();
    let mut expected = vec!["base".to_string()];
    for run in RUNS {
        expected.extend((1..=2).map(|t| format!("{run}.iter-{t}")));
    }
    let names: Vec<&str> = summary["models"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, expected);
    check_summary_against_eval_rows(&dir, &summary);

    let study = std::fs::read_to_string(dir.join("study.md")).unwrap();
    check_charts(&dir, &study);
    check_table(&study, &summary);
    check_readme_table(&study);
    check_report_html(&dir);

    // A second run has nothing to do.
    let modified = |p: &Path| std::fs::metadata(p).unwrap().modified().unwrap();
    let before = modified(&dir.join("study.md"));
    let again = make(&dir, &cache);
    let log = text(&again);
    assert!(again.status.success(), "{log}");
    assert!(
        !log.contains("timed.sh"),
        "the second make study ran stages:\n{log}"
    );
    assert!(
        !log.contains("study-report"),
        "study.md was rewritten:\n{log}"
    );
    assert_eq!(modified(&dir.join("study.md")), before);
}

/// The study's report.html: the evaluation's page under the study's title, with the study's 7
/// charts and the training curves of every variant's iterations.
fn check_report_html(dir: &Path) {
    let html = std::fs::read_to_string(dir.join("report.html")).unwrap();
    assert!(html.contains("<title>RSPO study: the regularizers compared</title>"));
    let (_, study) = html
        .split_once("The study: each metric per iteration")
        .expect("the study's section");
    let (study, _) = study.split_once("</section>").unwrap();
    assert_eq!(study.matches("<svg").count(), 7, "{study}");
    for run in RUNS {
        for t in 1..=2 {
            let heading = format!("Training: {run}.iter-{t}");
            assert!(html.contains(&heading), "{heading} missing");
        }
    }
    assert!(!html.contains("Training: base"));
}

/// Each variant has both iterations; iteration 1's data is in shared/ once, read by every
/// variant's first train-step (by path and fingerprint), and no copy of it exists elsewhere.
fn check_runs_and_sharing(dir: &Path) {
    for run in RUNS {
        for t in 1..=2 {
            let iter = dir.join(format!("{run}/iter-{t}"));
            assert!(
                iter.join("train_log.parquet").is_file(),
                "{}",
                iter.display()
            );
            assert!(
                iter.join("model/model.safetensors").is_file(),
                "{}",
                iter.display()
            );
        }
        assert!(dir.join(format!("{run}/iter-2/samples.parquet")).is_file());
        for f in SHARED_FILES {
            assert!(
                !dir.join(format!("{run}/iter-1/{f}")).exists(),
                "{run} has its own iteration-1 {f}"
            );
        }
        let log = read_meta(&dir.join(format!("{run}/iter-1/train_log.parquet"))).unwrap();
        for f in ["samples.parquet", "winrates.parquet"] {
            let shared = dir.join("shared/iter-1").join(f);
            let fingerprint = read_meta(&shared).unwrap().fingerprint;
            assert!(
                log.inputs
                    .iter()
                    .any(|i| Path::new(&i.path) == shared && i.fingerprint == fingerprint),
                "{run}'s train-step did not read {}: {:?}",
                shared.display(),
                log.inputs
            );
        }
    }
    // forward_kl's reference samples: iteration 1's samples (drawn from the base), then
    // base-model samples on iteration 2's prompts, once.
    let log = read_meta(&dir.join("forward_kl-0.1/iter-2/train_log.parquet")).unwrap();
    let reference = dir.join("shared/reference-2/samples.parquet");
    assert!(
        log.inputs.iter().any(|i| Path::new(&i.path) == reference),
        "{:?}",
        log.inputs
    );
    let shared: Vec<Vec<u8>> = SHARED_FILES
        .iter()
        .map(|f| std::fs::read(dir.join("shared/iter-1").join(f)).unwrap())
        .collect();
    for file in files(dir) {
        if file.starts_with(dir.join("shared")) {
            continue;
        }
        let bytes = std::fs::read(&file).unwrap();
        assert!(
            !shared.contains(&bytes),
            "{} is a copy of a shared file",
            file.display()
        );
    }
}

/// summary.json's win rate and mean length are the eval rows' (each model's mean p_win in
/// percent, mean response length in characters).
fn check_summary_against_eval_rows(dir: &Path, summary: &serde_json::Value) {
    let (_, rows) = read_rows::<EvalRow>(&dir.join("eval-2/eval.parquet")).unwrap();
    let mut by_model: BTreeMap<&str, Vec<&EvalRow>> = BTreeMap::new();
    for r in &rows {
        by_model.entry(r.model.as_str()).or_default().push(r);
    }
    for m in summary["models"].as_array().unwrap() {
        let name = m["name"].as_str().unwrap();
        let rows = &by_model[name];
        let n = rows.len() as f64;
        let win = 100.0 * rows.iter().map(|r| r.p_win).sum::<f64>() / n;
        let len = rows.iter().map(|r| f64::from(r.len_response)).sum::<f64>() / n;
        assert!(
            (m["win_rate"].as_f64().unwrap() - win).abs() < 1e-9,
            "{name}"
        );
        assert!(
            (m["mean_length"].as_f64().unwrap() - len).abs() < 1e-9,
            "{name}"
        );
    }
}

/// Every chart study.md links exists beside it and is an SVG document with a line and a legend
/// entry per variant; one chart per metric.
fn check_charts(dir: &Path, study: &str) {
    let links: Vec<&str> = study
        .lines()
        .filter_map(|l| l.strip_prefix("![")?.split_once("](")?.1.strip_suffix(')'))
        .collect();
    assert_eq!(links.len(), 7, "{study}");
    for link in links {
        let path = dir.join(link);
        let svg = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{link}: {e}"));
        let doc = roxmltree::Document::parse(&svg).unwrap_or_else(|e| panic!("{link}: {e}"));
        assert_eq!(doc.root_element().tag_name().name(), "svg", "{link}");
        let lines = doc
            .descendants()
            .filter(|n| n.has_tag_name("polyline"))
            .count();
        assert!(lines >= 2 * SPECS.len(), "{link}: {lines} polylines");
        let texts: Vec<&str> = doc
            .descendants()
            .filter_map(|n| n.text())
            .map(str::trim)
            .collect();
        for spec in SPECS {
            assert!(texts.contains(&spec), "{link}: no legend entry {spec}");
        }
        assert!(
            texts.iter().any(|t| t.starts_with("iteration")),
            "{link}: no x-axis label"
        );
    }
}

/// study.md's results: a row per variant and iteration (and the base), each number the
/// summary's, rounded as shown.
fn check_table(study: &str, summary: &serde_json::Value) {
    let table = markdown_table(study, "## Results");
    let columns = [
        ("win rate %", "win_rate", 1),
        ("LC win rate %", "lc_win_rate", 1),
        ("mean length (chars)", "mean_length", 1),
        ("self-BLEU-3", "self_bleu3", 3),
        ("distinct-1", "distinct_1", 3),
        ("distinct-2", "distinct_2", 3),
        ("KL est. (log-ratio to ref)", "mean_logratio_ref", 2),
    ];
    let header: Vec<&str> = table[0].iter().map(String::as_str).collect();
    assert_eq!(&header[..2], ["variant", "iteration"]);
    assert_eq!(header[2..], columns.map(|c| c.0));
    assert_eq!(table.len(), 2 + SPECS.len() * 2, "{study}");
    for row in &table[1..] {
        let name = match (row[0].as_str(), row[1].as_str()) {
            ("base", "0") => "base".to_string(),
            (spec, t) => {
                let run = RUNS[SPECS.iter().position(|s| *s == spec).unwrap()];
                format!("{run}.iter-{t}")
            }
        };
        let model = summary["models"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["name"] == name.as_str())
            .unwrap_or_else(|| panic!("{name} is not in summary.json"));
        for (cell, (_, key, decimals)) in row[2..].iter().zip(columns) {
            let value = model[key].as_f64().unwrap();
            assert_eq!(cell, &format!("{value:.decimals$}"), "{name} {key}");
        }
    }
}

/// README.md's study table is this run's study.md table, row for row.
fn check_readme_table(study: &str) {
    let readme = std::fs::read_to_string(repo("README.md")).unwrap();
    let quoted = markdown_table(&readme, "<!-- results: data/runs/tiny-study/study.md -->");
    let run = markdown_table(study, "## Results");
    assert_quoted_table(&quoted, &run, 2, study);
}
