//! `make study`: one RSPO run per loss variant on the same pipeline, evaluated together.
//!
//! A variant is written as `train-step` spells a loss: a preset (`sppo`, `rspo-paper`) or
//! regularizer specs joined by `+` (`reverse_kl=0.5`, `forward_kl_is=0.1+reverse_kl=0.5`).
//! [`plan`] checks the list and gives each variant its run folder's name and its train-step
//! flags (scripts/study.sh runs the per-iteration make rules with them); [`study_report`] turns
//! the study's evaluation (summary.json, where the study names the models `base` and
//! `<variant>.iter-<t>`) into study.md with one SVG chart per metric.

use anyhow::{bail, ensure, Context, Result};
use std::path::Path;

use super::evaluate::{read_summary, write_text, Metric, ModelSummary, SummaryFile, METRICS};
use super::report_html::write_report_html;
use super::settings::Settings;
use super::train_step::TrainStepSettings;
use crate::eval::html_report::ChartSection;
use crate::eval::{line_chart_svg, LineChart, Series};
use crate::train::parse_regularizers;

/// The title of study.md and the study's report.html.
const STUDY_TITLE: &str = "RSPO study: the regularizers compared";

/// The evaluation's name for the base model.
pub const BASE_NAME: &str = "base";

/// One loss of the study.
#[derive(Debug, Clone, PartialEq)]
pub struct Variant {
    /// As given, e.g. `reverse_kl=0.5`.
    pub spec: String,
    /// Its run folder and model-name prefix: the spec with `=` and `,` as `-`
    /// (`reverse_kl-0.5`), since make cannot name targets with `=`.
    pub name: String,
    /// The train-step flags that set this loss (the pipeline's preset and terms give way).
    pub train_args: Vec<String>,
    /// Whether the loss has a forward_kl term, which trains on samples drawn from pi_ref.
    pub reference_samples: bool,
}

impl Variant {
    /// The evaluation's name for iteration `t`'s model.
    pub fn model_name(&self, t: usize) -> String {
        format!("{}.iter-{t}", self.name)
    }
}

/// Parses one variant, checking its loss as train-step would.
pub fn parse_variant(spec: &str) -> Result<Variant> {
    ensure!(!spec.is_empty(), "VARIANTS: an empty variant");
    let terms: Vec<&str> = spec.split('+').collect();
    let regularizers = parse_regularizers(&terms).with_context(|| format!("VARIANTS: `{spec}`"))?;
    let train_args = if spec.contains('=') {
        let mut args = vec!["--preset".to_string(), "sppo".to_string()];
        for t in terms {
            args.extend(["--term".to_string(), t.to_string()]);
        }
        args
    } else {
        vec!["--preset".to_string(), spec.to_string()]
    };
    Ok(Variant {
        spec: spec.to_string(),
        name: spec.replace(['=', ','], "-"),
        train_args,
        reference_samples: regularizers
            .iter()
            .any(|r| r.term.needs_reference_samples()),
    })
}

/// The study's variants, checked against each other and against the pipeline file: its
/// `[train-step]` must not list `terms`, which every variant would inherit.
pub fn plan(pipeline: &Path, specs: &[String]) -> Result<Vec<Variant>> {
    ensure!(!specs.is_empty(), "VARIANTS: give at least one variant");
    let train = TrainStepSettings::from_config(Some(pipeline))?;
    ensure!(
        train.terms.is_empty(),
        "{}: [train-step] terms = {:?}: a study sets each variant's loss; remove `terms` \
         (a `preset` is fine, the variants replace it)",
        pipeline.display(),
        train.terms
    );
    let variants = specs
        .iter()
        .map(|s| parse_variant(s))
        .collect::<Result<Vec<_>>>()?;
    for (i, v) in variants.iter().enumerate() {
        if let Some(w) = variants[..i].iter().find(|w| w.name == v.name) {
            bail!(
                "VARIANTS: `{}` and `{}` are the same run ({})",
                w.spec,
                v.spec,
                v.name
            );
        }
    }
    Ok(variants)
}

/// The plan as scripts/study.sh reads it: per variant one line, `NAME REFERENCE_SAMPLES
/// TRAIN_ARGS...` (REFERENCE_SAMPLES 1 or 0), words separated by spaces.
pub fn plan_lines(variants: &[Variant]) -> String {
    variants
        .iter()
        .map(|v| {
            format!(
                "{} {} {}\n",
                v.name,
                u8::from(v.reference_samples),
                v.train_args.join(" ")
            )
        })
        .collect()
}

/// The metrics a study compares (all of report.md's but the EOS rate), in report.md's order.
fn study_metrics() -> impl Iterator<Item = &'static Metric> {
    METRICS.iter().filter(|m| m.in_study)
}

pub struct StudyReportJob<'a> {
    /// The study's summary.json (`evaluate` of the base and every variant's iterates).
    pub summary: &'a Path,
    /// The variants as given to `make study`.
    pub variants: &'a [String],
    pub iterations: usize,
    /// study.md; the charts go beside it.
    pub out: &'a Path,
}

/// The summary's models: the base, then per variant its iterations 1..N.
struct StudyResults {
    judge: String,
    baseline: String,
    base: ModelSummary,
    runs: Vec<(Variant, Vec<ModelSummary>)>,
}

fn read_results(job: &StudyReportJob) -> Result<StudyResults> {
    let label = job.summary.display();
    let SummaryFile {
        judge,
        baseline,
        models,
    } = read_summary(job.summary)?;
    let find = |name: &str| -> Result<ModelSummary> {
        models
            .iter()
            .find(|m| m.name == name)
            .cloned()
            .with_context(|| {
                let found: Vec<&str> = models.iter().map(|m| m.name.as_str()).collect();
                format!("{label}: no model named {name:?} (found {found:?}); is it this study's evaluation?")
            })
    };
    let variants = job
        .variants
        .iter()
        .map(|s| parse_variant(s))
        .collect::<Result<Vec<_>>>()?;
    let mut runs = Vec::new();
    for v in variants {
        let iterates = (1..=job.iterations)
            .map(|t| find(&v.model_name(t)))
            .collect::<Result<Vec<_>>>()?;
        runs.push((v, iterates));
    }
    Ok(StudyResults {
        judge,
        baseline,
        base: find(BASE_NAME)?,
        runs,
    })
}

/// Writes study.md and `study-<metric>.svg` beside it, and report.html there: the evaluation's
/// page with the study's charts.
pub fn study_report(job: &StudyReportJob) -> Result<()> {
    ensure!(
        job.iterations >= 1,
        "--iterations {}: expected at least 1",
        job.iterations
    );
    let results = read_results(job)?;
    let dir = job.out.parent().unwrap_or(Path::new("")).to_path_buf();
    let mut charts = Vec::new();
    let mut svgs = Vec::new();
    for metric in study_metrics() {
        let file = format!("study-{}.svg", metric.key);
        let svg = line_chart_svg(&chart(&results, metric))?;
        write_text(&dir.join(&file), &svg)?;
        charts.push((metric.header, file));
        svgs.push(svg);
    }
    write_text(job.out, &markdown(&results, job, &charts))?;
    let study = ChartSection {
        heading: "The study: each metric per iteration".into(),
        note: format!(
            "{} variants, {} iterations each; iteration 0 is the base model, shared by every line.",
            results.runs.len(),
            job.iterations
        ),
        charts: svgs,
        folded: false,
    };
    let eval_dir = job.summary.parent().unwrap_or(Path::new(""));
    write_report_html(eval_dir, &dir.join("report.html"), STUDY_TITLE, vec![study])
}

/// One line per variant: iteration 0 is the base model, shared by every line.
fn chart(results: &StudyResults, metric: &Metric) -> LineChart {
    let base = (metric.value)(&results.base);
    LineChart {
        title: metric.header.to_string(),
        x_label: "iteration (0 = the base model)".into(),
        y_label: metric.axis.into(),
        series: results
            .runs
            .iter()
            .map(|(v, iterates)| Series {
                name: v.spec.clone(),
                points: std::iter::once((0.0, base))
                    .chain(
                        iterates
                            .iter()
                            .enumerate()
                            .map(|(i, m)| ((i + 1) as f64, (metric.value)(m))),
                    )
                    .collect(),
            })
            .collect(),
    }
}

fn row(variant: &str, iteration: usize, m: &ModelSummary) -> String {
    let cells: Vec<String> = study_metrics().map(|x| x.cell(m)).collect();
    format!("| {variant} | {iteration} | {} |\n", cells.join(" | "))
}

fn markdown(results: &StudyResults, job: &StudyReportJob, charts: &[(&str, String)]) -> String {
    let mut md = format!("# {STUDY_TITLE}\n\n");
    md.push_str(&format!(
        "{} variants, {} iterations each; iteration 1's samples, log-probs, scores and win rates \
         are shared. Judge: `{}`. Baseline: `{}`. Every model is evaluated once, against the same \
         baseline responses (iteration 0 is the base model, the same for every variant). Data: \
         `{}`.\n\n",
        results.runs.len(),
        job.iterations,
        results.judge,
        results.baseline,
        job.summary.display()
    ));
    md.push_str("| variant | train-step flags |\n| --- | --- |\n");
    for (v, _) in &results.runs {
        md.push_str(&format!("| {} | `{}` |\n", v.spec, v.train_args.join(" ")));
    }
    let headers: Vec<&str> = study_metrics().map(|m| m.header).collect();
    md.push_str(&format!(
        "\n## Results\n\n| variant | iteration | {} |\n",
        headers.join(" | ")
    ));
    md.push_str(&format!(
        "| --- | ---: |{}\n",
        " ---: |".repeat(study_metrics().count())
    ));
    md.push_str(&row(BASE_NAME, 0, &results.base));
    for (v, iterates) in &results.runs {
        for (i, m) in iterates.iter().enumerate() {
            md.push_str(&row(&v.spec, i + 1, m));
        }
    }
    md.push_str("\n## Charts\n\n");
    for (header, file) in charts {
        md.push_str(&format!("![{header} per iteration]({file})\n\n"));
    }
    md
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn variants_become_folders_and_train_step_flags() {
        let v = parse_variant("reverse_kl=0.5").unwrap();
        assert_eq!(v.name, "reverse_kl-0.5");
        assert_eq!(
            v.train_args,
            ["--preset", "sppo", "--term", "reverse_kl=0.5"]
        );
        assert!(!v.reference_samples);
        let v = parse_variant("rspo-paper").unwrap();
        assert_eq!(v.train_args, ["--preset", "rspo-paper"]);
        let v = parse_variant("forward_kl=0.1,norm=padded+reverse_kl=0.5").unwrap();
        assert_eq!(v.name, "forward_kl-0.1-norm-padded+reverse_kl-0.5");
        assert!(v.reference_samples);
        assert_eq!(
            v.model_name(2),
            "forward_kl-0.1-norm-padded+reverse_kl-0.5.iter-2"
        );
        let lines = plan_lines(&[parse_variant("forward_kl=0.1").unwrap()]);
        assert_eq!(
            lines,
            "forward_kl-0.1 1 --preset sppo --term forward_kl=0.1\n"
        );
    }

    #[test]
    fn bad_variants_are_refused_by_name() {
        let err = format!("{:#}", parse_variant("reverse_kl=x").unwrap_err());
        assert!(
            err.contains("VARIANTS: `reverse_kl=x`") && err.contains("not a number"),
            "{err}"
        );
        let err = format!("{:#}", parse_variant("spo").unwrap_err());
        assert!(err.contains("unknown regularizer preset `spo`"), "{err}");
    }

    /// The Makefile's VARIANTS, the default of `make study`.
    fn default_variants() -> Vec<String> {
        let makefile = include_str!("../../../Makefile");
        let line = makefile
            .lines()
            .find(|l| l.starts_with("VARIANTS "))
            .expect("VARIANTS ?=");
        let (_, list) = line.split_once("?=").unwrap();
        list.split_whitespace().map(String::from).collect()
    }

    #[test]
    fn the_default_variants_parse() {
        let specs = default_variants();
        let tiny = Path::new(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../pipelines/tiny.toml"
        ));
        let v = plan(tiny, &specs).unwrap();
        let names: Vec<&str> = v.iter().map(|v| v.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "sppo",
                "reverse_kl-0.5",
                "forward_kl_is-0.1",
                "chi2-0.1",
                "forward_kl-0.1",
                "rspo-paper"
            ]
        );
        let with_reference: Vec<bool> = v.iter().map(|v| v.reference_samples).collect();
        assert_eq!(with_reference, [false, false, false, false, true, false]);
        let twice = [specs[1].clone(), specs[1].clone()];
        let err = plan(tiny, &twice).unwrap_err().to_string();
        assert!(err.contains("are the same run"), "{err}");
    }
}
