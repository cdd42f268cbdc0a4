//! report.html of an evaluation folder, from its files alone (summary.json, eval.parquet, the
//! first model's responses file for the prompts, and each model's train_log.parquet where it has
//! one): `evaluate` writes it beside report.md, and `evaluate study-report` writes the study's
//! page with its charts added. The page itself is [`crate::eval::html_report`]'s.

use anyhow::{Context, Result};
use std::path::{Path, PathBuf};

use super::evaluate::{chart_svg, read_summary, reading_note, summary_table, write_text};
use crate::data::{read_rows, EvalRow, SampleRow, TrainLogRow};
use crate::eval::html_report::{
    browser_json, encode, render_html, train_curve_charts, BrowserData, BrowserPrompt,
    ChartSection, HtmlReport,
};
use crate::eval::line_chart_svg;

/// Where a model's train log is: `.../iter-<t>/train_log.parquet` for `.../iter-<t>/model` (or
/// `adapter`); none for other paths (the base model, a Hub id).
fn train_log_path(model: &str) -> Option<PathBuf> {
    let p = Path::new(model.trim_end_matches('/'));
    let last = p.file_name()?.to_str()?;
    if last != "model" && last != "adapter" {
        return None;
    }
    Some(p.parent()?.join("train_log.parquet"))
}

/// The prompts in the order of the responses file, one entry per prompt.
fn browser_prompts(responses: &Path) -> Result<Vec<BrowserPrompt>> {
    let (_, rows) = read_rows::<SampleRow>(responses)?;
    let mut prompts: Vec<BrowserPrompt> = Vec::new();
    for r in rows {
        if prompts.last().is_none_or(|p| p.id != r.prompt_id) {
            prompts.push(BrowserPrompt {
                id: r.prompt_id,
                messages: r.messages,
            });
        }
    }
    Ok(prompts)
}

/// One folded section per model with a train log beside it.
fn training_sections(models: &[(String, String)]) -> Result<Vec<ChartSection>> {
    let mut sections = Vec::new();
    for (name, path) in models {
        let Some(log_path) = train_log_path(path).filter(|p| p.is_file()) else {
            continue;
        };
        let (_, log) = read_rows::<TrainLogRow>(&log_path)?;
        let charts = train_curve_charts(name, &log)
            .iter()
            .map(line_chart_svg)
            .collect::<Result<Vec<_>, _>>()?;
        sections.push(ChartSection {
            heading: format!("Training: {name}"),
            note: format!(
                "{} optimizer steps, from {}.",
                log.len(),
                log_path.display()
            ),
            charts,
            folded: true,
        });
    }
    Ok(sections)
}

/// Writes `out`, titled `title`, from the evaluation in `eval_dir`; `extra` sections (a study's
/// charts) follow the summary chart.
pub fn write_report_html(
    eval_dir: &Path,
    out: &Path,
    title: &str,
    extra: Vec<ChartSection>,
) -> Result<()> {
    let summary = read_summary(&eval_dir.join("summary.json"))?;
    let first = summary
        .models
        .first()
        .with_context(|| format!("{}: no models", eval_dir.join("summary.json").display()))?;
    let prompts = browser_prompts(&eval_dir.join(format!("responses-{}.parquet", first.name)))?;
    let (_, rows) = read_rows::<EvalRow>(&eval_dir.join("eval.parquet"))?;
    let names: Vec<String> = summary.models.iter().map(|m| m.name.clone()).collect();
    let data = browser_json(&BrowserData {
        models: &names,
        prompts: &prompts,
        rows: &rows,
        judge: &summary.judge,
        baseline: &summary.baseline,
    })
    .map_err(|e| anyhow::anyhow!("{}: {e}", eval_dir.join("eval.parquet").display()))?;
    let mut sections = vec![ChartSection {
        heading: "Win rate and length per model".into(),
        note: "Left axis: win rates (%); right axis: mean response length (characters).".into(),
        charts: vec![chart_svg(&summary.models)],
        folded: false,
    }];
    sections.extend(extra);
    let paths: Vec<(String, String)> = summary
        .models
        .iter()
        .map(|m| (m.name.clone(), m.path.clone()))
        .collect();
    sections.extend(training_sections(&paths)?);
    let intro = reading_note(&summary.judge, &summary.baseline, |s| s.to_string());
    let page = render_html(&HtmlReport {
        title,
        intro: &intro,
        table: summary_table(&summary.models),
        sections,
        browser_data: encode(&data),
    });
    write_text(out, &page)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn train_logs_sit_beside_iteration_models() {
        assert_eq!(
            train_log_path("runs/x/iter-2/model/"),
            Some(PathBuf::from("runs/x/iter-2/train_log.parquet"))
        );
        assert_eq!(
            train_log_path("study/sppo/iter-1/adapter"),
            Some(PathBuf::from("study/sppo/iter-1/train_log.parquet"))
        );
        assert_eq!(train_log_path("HuggingFaceTB/SmolLM2-135M-Instruct"), None);
        assert_eq!(train_log_path("data/models/tiny-policy"), None);
    }
}
