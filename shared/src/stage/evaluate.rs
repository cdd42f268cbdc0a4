//! `evaluate`: each model's responses to the evaluation prompts, judged against a baseline (the
//! prompts' reference answers or another model's responses), with the metrics of DESIGN.md
//! ("Evaluation"), written as eval.parquet, summary.json and report.md with an SVG chart.

use anyhow::{bail, ensure, Context, Result};
use serde::{Deserialize, Serialize};
use serde_json::json;
use std::collections::HashMap;
use std::path::{Path, PathBuf};

use super::context::{content_config, Outcome, StageOutput};
use super::generate::{self, GenerateSettings, LogprobsJob, SampleJob};
use super::output_lock::lock_outputs;
use super::report_html::write_report_html;
use super::score::ScoreSettings;
use super::settings::Settings;
use crate::data::{
    read_meta, read_prompts, read_rows, stage_fingerprint, write_atomically, write_rows,
    DigestCache, EvalRow, FileKind, FileMeta, FinishReason, LogprobRow, PromptOptions, PromptRow,
    SampleRow,
};
use crate::eval::html_report::Table;
use crate::eval::{char_length, diversity_with, lc_winrate, Tokens};
use crate::judge::{find_judge, Judge, JudgeItem, JudgeSpec};
use crate::model::{model_ref, resolve_model};

/// The `[evaluate]` section of a pipeline file; flags override it. The judge's settings come
/// from `[score]`.
#[derive(Debug, Clone, Serialize, Deserialize, clap::Args)]
pub struct EvaluateSettings {
    /// Samples per prompt: each is judged against the baseline's sample of the same index (or
    /// the prompt's reference answer), and all K measure diversity (self-BLEU needs K >= 2).
    #[arg(long, default_value_t = 4)]
    pub k: u32,
    /// Sampling temperature; 0 is greedy.
    #[arg(long, default_value_t = 0.7)]
    pub temperature: f64,
    /// Nucleus sampling mass.
    #[arg(long, default_value_t = 0.9)]
    pub top_p: f64,
    /// Response length limit in tokens.
    #[arg(long, default_value_t = 256)]
    pub max_new_tokens: usize,
    /// The sampling seed.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Rows decoded together; never changes the output.
    #[arg(long, default_value_t = 8)]
    pub batch_size: usize,
    /// cpu, cuda or cuda:N, for the models and the judge.
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// f32 or bf16 [default: f32 on CPU, bf16 on CUDA].
    #[arg(long)]
    pub dtype: Option<String>,
    /// `reference` (the prompts' reference answers) or a model directory / Hub id.
    #[arg(long, default_value = "reference")]
    pub baseline: String,
    /// pi_ref for the log-ratio (KL) estimate [default: the first of --models].
    #[arg(long, value_name = "DIR_OR_HUB_ID")]
    pub reference_model: Option<String>,
    /// Tokens of self-BLEU and distinct-n: words (the default: `\w+|[^\w\s]` on lowercased
    /// text) or treebank (NLTK's word tokenizer, case kept, as the RSPO paper's evaluation; the
    /// paper's self-BLEU also takes --k 16 --max-new-tokens 200).
    #[arg(long, default_value = "words")]
    pub diversity_tokens: String,
}

impl Default for EvaluateSettings {
    fn default() -> Self {
        Self::defaults()
    }
}

impl Settings for EvaluateSettings {
    const SECTION: &'static str = "evaluate";
}

pub struct EvaluateJob<'a> {
    pub models: &'a [String],
    /// The models' names in the outputs, one per model [default: short names from the paths].
    pub names: Option<&'a [String]>,
    pub prompts: &'a Path,
    pub out: &'a Path,
    pub settings: &'a EvaluateSettings,
    /// The judge (its `[score]` settings with the flags applied).
    pub judge: &'a ScoreSettings,
    /// Stage timings (`make iter` writes data/runs/<run>/timings.tsv) for the report.
    pub timings: Option<&'a Path>,
    pub force: bool,
}

/// The aggregates of one model (summary.json).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ModelSummary {
    pub name: String,
    pub path: String,
    pub prompts: usize,
    /// Responses judged against the baseline: K per prompt.
    pub judged: usize,
    /// Mean P(model beats baseline) over the judged responses, percent.
    pub win_rate: f64,
    /// Length-controlled win rate (minimal GLM), percent.
    pub lc_win_rate: f64,
    /// Mean response length in characters (all K samples).
    pub mean_length: f64,
    /// Share of samples that ended with EOS.
    pub eos_rate: f64,
    pub self_bleu3: f64,
    pub distinct_1: f64,
    pub distinct_2: f64,
    /// Mean over samples of log pi(y) - log pi_ref(y): a KL(pi || pi_ref) estimate.
    pub mean_logratio_ref: f64,
}

/// A short name for a model path: `iter-2` for `.../iter-2/model` (or a LoRA run's
/// `.../iter-2/adapter`), else the last component.
fn short_model_name(spec: &str) -> String {
    let p = Path::new(spec.trim_end_matches('/'));
    let last = p
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    match p.parent().and_then(|q| q.file_name()) {
        Some(parent) if last == "model" || last == "adapter" => {
            parent.to_string_lossy().into_owned()
        }
        _ => last,
    }
}

/// The models' short names, made unique in order.
fn unique_names(models: &[String]) -> Vec<String> {
    let mut names: Vec<String> = Vec::new();
    for m in models {
        let mut name = short_model_name(m);
        if names.contains(&name) {
            name = format!("{name}-{}", names.len());
        }
        names.push(name);
    }
    names
}

/// `--names` when given (checked: one per model, distinct, usable in a file name), else
/// [`unique_names`].
fn model_names(job: &EvaluateJob) -> Result<Vec<String>> {
    let Some(names) = job.names else {
        return Ok(unique_names(job.models));
    };
    ensure!(
        names.len() == job.models.len(),
        "--names: {} names for {} --models; give one per model",
        names.len(),
        job.models.len()
    );
    for (i, n) in names.iter().enumerate() {
        ensure!(
            !n.is_empty()
                && n.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "._+-".contains(c)),
            "--names {n:?}: expected letters, digits and . _ + - (it names files)"
        );
        ensure!(!names[..i].contains(n), "--names: {n:?} is given twice");
    }
    Ok(names.to_vec())
}

fn sample_settings(s: &EvaluateSettings) -> GenerateSettings {
    GenerateSettings {
        k: s.k,
        temperature: s.temperature,
        top_p: s.top_p,
        top_k: 0,
        max_new_tokens: s.max_new_tokens,
        seed: s.seed,
        iteration: 0,
        batch_size: s.batch_size,
        prompt_column: None,
        device: s.device.clone(),
        dtype: s.dtype.clone(),
    }
}

pub fn evaluate(job: &EvaluateJob) -> Result<Outcome> {
    let started = std::time::Instant::now();
    let s = job.settings;
    ensure!(!job.models.is_empty(), "--models: give at least one model");
    ensure!(
        s.k >= 2,
        "--k {}: expected at least 2 (self-BLEU compares the samples of a prompt)",
        s.k
    );
    std::fs::create_dir_all(job.out)
        .with_context(|| format!("cannot create --out {}", job.out.display()))?;
    let _lock = lock_outputs(&[("--out", &job.out.join("eval.parquet"))])?;
    let (prompts_meta, prompts) = read_prompts(job.prompts, &PromptOptions::default())?;
    ensure!(
        !prompts.is_empty(),
        "{}: the prompt file has no rows",
        job.prompts.display()
    );
    // The judge's settings are checked (and its models found) before any response is generated.
    let judge_spec = find_judge(&job.judge.judging.judge)
        .and_then(|entry| entry.spec(job.judge))
        .context("the evaluation judge")?;
    let gen = sample_settings(s);
    // Every model opens and renders every prompt before the first one samples.
    for m in job.models {
        generate::check_model_for_prompts(m, &prompts, job.prompts)
            .with_context(|| format!("--models {m}"))?;
    }
    if let Some(r) = &s.reference_model {
        generate::open_checkpoint(r).with_context(|| format!("--reference-model {r}"))?;
    }
    let tokens: Tokens = s
        .diversity_tokens
        .parse()
        .map_err(|e| anyhow::anyhow!("--diversity-tokens {e}"))?;

    let names = model_names(job)?;
    let mut files = Vec::new();
    for (m, name) in job.models.iter().zip(&names) {
        eprintln!("evaluate: responses of {name}");
        files.push(responses(
            job,
            &gen,
            m,
            &format!("responses-{name}.parquet"),
        )?);
    }
    let baseline = Baseline::new(job, &gen, &prompts, &files)?;
    let output = eval_output(job, &prompts_meta, &files, &names, &judge_spec)?;
    let run = RunFingerprint::new(job, &output, &baseline)?;
    if !job.force && run.is_up_to_date(&output) {
        return Ok(Outcome::UpToDate);
    }
    let judge = (judge_spec.load)()?;
    let reference = s
        .reference_model
        .clone()
        .unwrap_or_else(|| job.models[0].clone());

    let mut summaries = Vec::new();
    let mut eval_rows = Vec::new();
    for ((spec, name), file) in job.models.iter().zip(&names).zip(&files) {
        let (_, rows) = read_rows::<SampleRow>(file)?;
        let logratio = mean_logratio_ref(job, &gen, [spec, &reference], name, file)?;
        eprintln!("evaluate: judging {name} against the baseline");
        let judged = judge_against_baseline(&judge, &baseline, name, &rows)?;
        summaries.push(summarize(name, spec, &rows, &judged, logratio, tokens)?);
        eval_rows.extend(judged);
    }
    write_rows(&output.path, &output.meta, &eval_rows)?;
    write_reports(job, &summaries, &judge.name(), started)?;
    run.record()?;
    Ok(Outcome::Written {
        rows: eval_rows.len(),
    })
}

/// A model's responses to the evaluation prompts, as `out_name` in --out (cached by the
/// generate stage's own fingerprints).
fn responses(
    job: &EvaluateJob,
    gen: &GenerateSettings,
    model: &str,
    out_name: &str,
) -> Result<PathBuf> {
    let out = job.out.join(out_name);
    generate::sample(&SampleJob {
        model,
        prompts: job.prompts,
        out: &out,
        settings: gen,
        shard: None,
        force: job.force,
    })
    .with_context(|| format!("responses of {model}"))?;
    Ok(out)
}

/// What each response faces: reference answers (one per prompt, faced by every sample), or
/// another model's samples (sample k of a model faces sample k of the baseline).
struct Baseline<'a> {
    /// By (prompt_id, sample_idx).
    texts: HashMap<(String, u32), String>,
    /// The prompts, by prompt_id: their reference answers and constraints, for judges that
    /// use them.
    prompts: HashMap<&'a str, &'a PromptRow>,
    /// The responses of a baseline model that is not one of the evaluated models.
    file: Option<PathBuf>,
}

impl<'a> Baseline<'a> {
    fn new(
        job: &EvaluateJob,
        gen: &GenerateSettings,
        prompts: &'a [PromptRow],
        files: &[PathBuf],
    ) -> Result<Self> {
        let s = job.settings;
        let by_id = prompts.iter().map(|p| (p.prompt_id.as_str(), p)).collect();
        let mut own_file = None;
        let texts = if s.baseline == "reference" {
            let mut out = HashMap::new();
            for p in prompts {
                let Some(r) = &p.reference else {
                    bail!(
                        "{}: prompt {:?} has no `reference` answer, which --baseline reference needs (or give a model as --baseline)",
                        job.prompts.display(),
                        p.prompt_id
                    );
                };
                for k in 0..s.k {
                    out.insert((p.prompt_id.clone(), k), r.clone());
                }
            }
            out
        } else {
            let file = match job.models.iter().position(|m| *m == s.baseline) {
                Some(i) => files[i].clone(),
                None => {
                    let f = responses(job, gen, &s.baseline, "responses-baseline.parquet")?;
                    own_file = Some(f.clone());
                    f
                }
            };
            let (_, rows) = read_rows::<SampleRow>(&file)?;
            rows.into_iter()
                .map(|r| ((r.prompt_id, r.sample_idx), r.response))
                .collect()
        };
        Ok(Baseline {
            texts,
            prompts: by_id,
            file: own_file,
        })
    }
}

/// eval.parquet, fingerprinted by the prompts, every model's responses and the judge.
fn eval_output(
    job: &EvaluateJob,
    prompts_meta: &FileMeta,
    files: &[PathBuf],
    names: &[String],
    judge: &JudgeSpec,
) -> Result<StageOutput> {
    let mut inputs_meta = vec![(job.prompts.to_path_buf(), prompts_meta.clone())];
    for f in files {
        inputs_meta.push((f.clone(), read_meta(f)?));
    }
    let input_refs: Vec<(&Path, &FileMeta)> =
        inputs_meta.iter().map(|(p, m)| (p.as_path(), m)).collect();
    StageOutput::new(
        &job.out.join("eval.parquet"),
        FileKind::Eval,
        "evaluate",
        &json!({"baseline": job.settings.baseline, "judge": judge.content, "models": names}),
        &input_refs,
        &judge.models,
    )
}

/// The title of report.md and report.html.
const REPORT_TITLE: &str = "RSPO evaluation";

/// The files `evaluate` writes in --out; all there and `RunFingerprint` unchanged: up to date.
const EVALUATE_FILES: [&str; 5] = [
    "eval.parquet",
    "summary.json",
    "chart.svg",
    "report.md",
    "report.html",
];

/// Everything that shapes evaluate's files, in `.evaluate-fingerprint` under --out, written
/// last (an interrupted run is never up to date). eval.parquet's fingerprint covers the
/// prompts, the responses and the judge; the sampling settings, the model paths, the reference
/// model and a baseline model's responses shape summary.json and report.md too. Batch size,
/// device and the stage timings of the report never make it rerun.
struct RunFingerprint {
    path: PathBuf,
    value: String,
}

impl RunFingerprint {
    fn new(job: &EvaluateJob, eval: &StageOutput, baseline: &Baseline) -> Result<Self> {
        let reference = job
            .settings
            .reference_model
            .as_ref()
            .unwrap_or(&job.models[0]);
        let reference = model_ref(
            &resolve_model(reference)?,
            DigestCache::recompute_if(job.force),
        )?;
        let mut inputs = vec![eval.fingerprint().to_string()];
        if let Some(f) = &baseline.file {
            inputs.push(read_meta(f)?.fingerprint);
        }
        // The default tokenization leaves the fingerprints of earlier runs as they were.
        let mut not_content = vec!["batch_size", "device"];
        if job.settings.diversity_tokens == "words" {
            not_content.push("diversity_tokens");
        }
        let config = json!({
            "settings": content_config(job.settings, &not_content)?,
            "models": job.models,
            "prompts": job.prompts.display().to_string(),
        });
        let inputs: Vec<&str> = inputs.iter().map(String::as_str).collect();
        let models = [("reference", reference.digest.as_str())];
        Ok(RunFingerprint {
            path: job.out.join(".evaluate-fingerprint"),
            value: stage_fingerprint("evaluate", "evaluate-run/v1", &config, &inputs, &models),
        })
    }

    fn is_up_to_date(&self, eval: &StageOutput) -> bool {
        let dir = self.path.parent().unwrap_or(Path::new(""));
        eval.is_up_to_date()
            && EVALUATE_FILES.iter().all(|f| dir.join(f).is_file())
            && std::fs::read_to_string(&self.path).is_ok_and(|v| v.trim() == self.value)
    }

    fn record(&self) -> Result<()> {
        write_text(&self.path, &format!("{}\n", self.value))
    }
}

/// Mean over a model's samples (`file`) of log pi(y) - log pi_ref(y): a KL(pi || pi_ref)
/// estimate, 0 for the reference model itself. `models` is [the model, the reference].
fn mean_logratio_ref(
    job: &EvaluateJob,
    gen: &GenerateSettings,
    models: [&String; 2],
    name: &str,
    file: &Path,
) -> Result<f64> {
    let [model, reference] = models;
    if model == reference {
        return Ok(0.0);
    }
    let logprobs = |model: &str, role: &str| -> Result<Vec<LogprobRow>> {
        let out = job.out.join(format!("logprobs-{name}-{role}.parquet"));
        generate::logprobs(&LogprobsJob {
            shard: None,
            model,
            samples: file,
            role,
            out: &out,
            settings: gen,
            force: job.force,
            reuse: None,
        })?;
        Ok(read_rows::<LogprobRow>(&out)?.1)
    };
    let own = logprobs(model, "policy")?;
    let base = logprobs(reference, "reference")?;
    Ok(own
        .iter()
        .zip(&base)
        .map(|(a, b)| a.logprob - b.logprob)
        .sum::<f64>()
        / own.len() as f64)
}

/// Every response of a model against the baseline's response of the same prompt and index.
fn judge_against_baseline(
    judge: &Judge,
    baseline: &Baseline,
    name: &str,
    rows: &[SampleRow],
) -> Result<Vec<EvalRow>> {
    let mut out = Vec::with_capacity(rows.len());
    for r in rows {
        let against = baseline
            .texts
            .get(&(r.prompt_id.clone(), r.sample_idx))
            .with_context(|| {
                format!(
                    "the baseline has no sample {} for prompt {:?}",
                    r.sample_idx, r.prompt_id
                )
            })?;
        let prompt = baseline.prompts.get(r.prompt_id.as_str());
        // Both sides carry the sample's index: a judge error names the sample it met.
        let a = JudgeItem {
            prompt_id: &r.prompt_id,
            sample_idx: r.sample_idx,
            messages: &r.messages,
            prompt_text: &r.prompt_text,
            response: &r.response,
            reference: prompt.and_then(|p| p.reference.as_deref()),
            constraints: prompt.and_then(|p| p.constraints.as_deref()),
        };
        let b = JudgeItem {
            response: against,
            ..a
        };
        let judged = judge.compare(&a, &b)?;
        out.push(EvalRow {
            model: name.to_string(),
            prompt_id: r.prompt_id.clone(),
            sample_idx: r.sample_idx,
            response: r.response.clone(),
            baseline: against.clone(),
            p_win: judged.verdict.p,
            len_response: char_length(&r.response) as u32,
            len_baseline: char_length(against) as u32,
            finish_reason: r.finish_reason,
            tokens_response: r.response_token_ids.len() as u32,
            score_response: judged.scores.map(|s| s[0]),
            score_baseline: judged.scores.map(|s| s[1]),
            p_forward: judged.verdict.p_forward,
            p_swapped: judged.verdict.p_swapped,
        });
    }
    Ok(out)
}

/// A model's aggregates from its samples and their verdicts against the baseline.
fn summarize(
    name: &str,
    path: &str,
    rows: &[SampleRow],
    judged: &[EvalRow],
    mean_logratio_ref: f64,
    tokens: Tokens,
) -> Result<ModelSummary> {
    let p_win: Vec<f64> = judged.iter().map(|r| r.p_win).collect();
    let len_model: Vec<f64> = judged
        .iter()
        .map(|r| char_length(&r.response) as f64)
        .collect();
    let len_base: Vec<f64> = judged
        .iter()
        .map(|r| char_length(&r.baseline) as f64)
        .collect();
    let (win_rate, lc_win_rate) = lc_winrate(&len_model, &len_base, &p_win)
        .map(|r| (r.raw_winrate_pct, r.lc_winrate_pct))
        .unwrap_or_else(|_| {
            // All lengths equal or separated: the raw win rate is the honest answer.
            let raw = 100.0 * p_win.iter().sum::<f64>() / p_win.len() as f64;
            (raw, raw)
        });
    // A prompt's samples, in file order: each starts at sample_idx 0.
    let mut groups: Vec<Vec<&str>> = Vec::new();
    for r in rows {
        if r.sample_idx == 0 {
            groups.push(Vec::new());
        }
        if let Some(g) = groups.last_mut() {
            g.push(&r.response);
        }
    }
    let div = diversity_with(&groups, tokens)?;
    let eos = rows
        .iter()
        .filter(|r| r.finish_reason == FinishReason::Eos)
        .count();
    Ok(ModelSummary {
        name: name.to_string(),
        path: path.to_string(),
        prompts: groups.len(),
        judged: p_win.len(),
        win_rate,
        lc_win_rate,
        mean_length: rows
            .iter()
            .map(|r| char_length(&r.response) as f64)
            .sum::<f64>()
            / rows.len() as f64,
        eos_rate: eos as f64 / rows.len() as f64,
        self_bleu3: div.self_bleu3,
        distinct_1: div.distinct_1,
        distinct_2: div.distinct_2,
        mean_logratio_ref,
    })
}

/// summary.json, chart.svg and report.md (with the stage timings, evaluate's since `started`).
fn write_reports(
    job: &EvaluateJob,
    summaries: &[ModelSummary],
    judge: &str,
    started: std::time::Instant,
) -> Result<()> {
    let baseline = &job.settings.baseline;
    let summary = json!({
        "baseline": baseline,
        "judge": judge,
        "prompts": job.prompts.display().to_string(),
        "models": summaries,
    });
    let summary_text = serde_json::to_string_pretty(&summary)? + "\n";
    write_text(&job.out.join("summary.json"), &summary_text)?;
    write_text(&job.out.join("chart.svg"), &chart_svg(summaries))?;
    let mut timings = job
        .timings
        .map(read_timings)
        .transpose()?
        .unwrap_or_default();
    // The log gets this run's time only after it ends: report our own, not an earlier run's.
    timings.retain(|(stage, _)| stage != "evaluate");
    timings.push(("evaluate".into(), started.elapsed().as_secs_f64()));
    write_text(
        &job.out.join("report.md"),
        &report_markdown(summaries, baseline, judge, &timings),
    )?;
    write_report_html(
        job.out,
        &job.out.join("report.html"),
        REPORT_TITLE,
        Vec::new(),
    )
}

/// summary.json as read back: the judge, the baseline and each model's aggregates.
pub(crate) struct SummaryFile {
    pub judge: String,
    pub baseline: String,
    pub models: Vec<ModelSummary>,
}

pub(crate) fn read_summary(path: &Path) -> Result<SummaryFile> {
    let label = path.display();
    let text = std::fs::read_to_string(path).with_context(|| format!("cannot read {label}"))?;
    let json: serde_json::Value =
        serde_json::from_str(&text).with_context(|| format!("{label}: not JSON"))?;
    let models: Vec<ModelSummary> = serde_json::from_value(json["models"].clone())
        .with_context(|| format!("{label}: `models` is not a list of model summaries"))?;
    let text_of = |key: &str| json[key].as_str().unwrap_or("?").to_string();
    Ok(SummaryFile {
        judge: text_of("judge"),
        baseline: text_of("baseline"),
        models,
    })
}

/// Writes `text` to `path` atomically.
pub(crate) fn write_text(path: &Path, text: &str) -> Result<()> {
    write_atomically(path, |w| {
        use std::io::Write;
        w.write_all(text.as_bytes())
            .map_err(|e| crate::data::DataError::io(path, "cannot write", e))
    })?;
    Ok(())
}

/// `stage<TAB>seconds` lines, one per run that did work (scripts/timed.sh); a stage run again,
/// e.g. after a changed setting, reports its latest time.
fn read_timings(path: &Path) -> Result<Vec<(String, f64)>> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(vec![]),
        Err(e) => return Err(e).with_context(|| format!("--timings {}", path.display())),
    };
    let mut out: Vec<(String, f64)> = Vec::new();
    for line in text.lines() {
        let Some((stage, secs)) = line.split_once('\t') else {
            continue;
        };
        let secs: f64 = secs.trim().parse().unwrap_or(0.0);
        match out.iter_mut().find(|(s, _)| s == stage) {
            Some(e) => e.1 = secs,
            None => out.push((stage.to_string(), secs)),
        }
    }
    Ok(out)
}

fn report_markdown(
    models: &[ModelSummary],
    baseline: &str,
    judge: &str,
    timings: &[(String, f64)],
) -> String {
    let mut md = String::new();
    md.push_str(&format!("# {REPORT_TITLE}\n\n"));
    md.push_str(&reading_note(judge, baseline, |s| format!("`{s}`")));
    md.push_str("\n\n");
    let table = summary_table(models);
    md.push_str(&format!("| {} |\n", table.headers.join(" | ")));
    let rule: Vec<&str> = table
        .numeric
        .iter()
        .map(|&n| if n { "---:" } else { "---" })
        .collect();
    md.push_str(&format!("| {} |\n", rule.join(" | ")));
    for row in &table.rows {
        md.push_str(&format!("| {} |\n", row.join(" | ")));
    }
    md.push_str("\n![win rate, LC win rate and length per iteration](chart.svg)\n");
    if !timings.is_empty() {
        md.push_str("\n## Stage timings\n\n| stage | seconds |\n| --- | ---: |\n");
        for (stage, secs) in timings {
            md.push_str(&format!("| {stage} | {secs:.1} |\n"));
        }
        let total: f64 = timings.iter().map(|t| t.1).sum();
        md.push_str(&format!("| **total** | **{total:.1}** |\n"));
    }
    md
}

/// How to read the numbers: the judge, the baseline (each through `quote`), what a win rate is.
pub(crate) fn reading_note(judge: &str, baseline: &str, quote: impl Fn(&str) -> String) -> String {
    let against = if baseline == "reference" {
        "the prompt's reference answer"
    } else {
        "the baseline's sample of the same index"
    };
    format!(
        "Judge: {}. Baseline: {}. Win rates are the mean P(model beats baseline) over the evaluation prompts (each of the K samples against {against}); LC is the length-controlled win rate (minimal GLM).",
        quote(judge),
        quote(baseline)
    )
}

/// One aggregate of summary.json as the reports show it: its key, its column header, its
/// chart axis and its decimals.
pub(crate) struct Metric {
    pub key: &'static str,
    pub header: &'static str,
    pub axis: &'static str,
    pub decimals: usize,
    pub value: fn(&ModelSummary) -> f64,
    /// Compared across a study's variants (the EOS rate is not).
    pub in_study: bool,
}

impl Metric {
    /// The metric of `m` as a table cell.
    pub fn cell(&self, m: &ModelSummary) -> String {
        format!("{:.*}", self.decimals, (self.value)(m))
    }
}

/// report.md's columns after the model, in order.
pub(crate) const METRICS: [Metric; 8] = [
    Metric {
        key: "win_rate",
        header: "win rate %",
        axis: "win rate against the baseline (%)",
        decimals: 1,
        in_study: true,
        value: |m| m.win_rate,
    },
    Metric {
        key: "lc_win_rate",
        header: "LC win rate %",
        axis: "length-controlled win rate (%)",
        decimals: 1,
        in_study: true,
        value: |m| m.lc_win_rate,
    },
    Metric {
        key: "mean_length",
        header: "mean length (chars)",
        axis: "mean response length (characters)",
        decimals: 1,
        in_study: true,
        value: |m| m.mean_length,
    },
    Metric {
        key: "eos_rate",
        header: "EOS rate",
        axis: "EOS rate (share of responses that ended with a stop token)",
        decimals: 2,
        in_study: false,
        value: |m| m.eos_rate,
    },
    Metric {
        key: "self_bleu3",
        header: "self-BLEU-3",
        axis: "self-BLEU-3 (0 to 1, lower is more diverse)",
        decimals: 3,
        in_study: true,
        value: |m| m.self_bleu3,
    },
    Metric {
        key: "distinct_1",
        header: "distinct-1",
        axis: "distinct-1 (share of unique unigrams)",
        decimals: 3,
        in_study: true,
        value: |m| m.distinct_1,
    },
    Metric {
        key: "distinct_2",
        header: "distinct-2",
        axis: "distinct-2 (share of unique bigrams)",
        decimals: 3,
        in_study: true,
        value: |m| m.distinct_2,
    },
    Metric {
        key: "mean_logratio_ref",
        header: "KL est. (log-ratio to ref)",
        axis: "KL estimate: mean log-ratio to pi_ref (nats)",
        decimals: 2,
        in_study: true,
        value: |m| m.mean_logratio_ref,
    },
];

/// report.md's table (and report.html's): a row of formatted aggregates per model.
pub(crate) fn summary_table(models: &[ModelSummary]) -> Table {
    let headers = std::iter::once("model").chain(METRICS.iter().map(|x| x.header));
    Table {
        headers: headers.map(str::to_string).collect(),
        numeric: std::iter::once(false)
            .chain(METRICS.iter().map(|_| true))
            .collect(),
        rows: models
            .iter()
            .map(|m| {
                std::iter::once(m.name.clone())
                    .chain(METRICS.iter().map(|x| x.cell(m)))
                    .collect()
            })
            .collect(),
    }
}

/// Win rate and LC win rate (left axis, %) and mean length (right axis) per model.
pub(crate) fn chart_svg(models: &[ModelSummary]) -> String {
    use plotters::prelude::*;
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (720, 360)).into_drawing_area();
        let draw = || -> Result<(), Box<dyn std::error::Error + '_>> {
            root.fill(&WHITE)?;
            let n = models.len().max(2);
            let max_len = models.iter().map(|m| m.mean_length).fold(1.0, f64::max) * 1.1;
            let mut chart = ChartBuilder::on(&root)
                .caption("RSPO iterations", ("sans-serif", 18))
                .margin(12)
                .x_label_area_size(32)
                .y_label_area_size(48)
                .right_y_label_area_size(56)
                .build_cartesian_2d(0f64..(n - 1) as f64, 0f64..100f64)?
                .set_secondary_coord(0f64..(n - 1) as f64, 0f64..max_len);
            let names: Vec<String> = models.iter().map(|m| m.name.clone()).collect();
            chart
                .configure_mesh()
                .x_labels(models.len())
                .x_label_formatter(&|x| names.get(x.round() as usize).cloned().unwrap_or_default())
                .y_desc("win rate %")
                .draw()?;
            chart
                .configure_secondary_axes()
                .y_desc("mean length (chars)")
                .draw()?;
            let pts = |f: &dyn Fn(&ModelSummary) -> f64| -> Vec<(f64, f64)> {
                models
                    .iter()
                    .enumerate()
                    .map(|(i, m)| (i as f64, f(m)))
                    .collect()
            };
            chart
                .draw_series(LineSeries::new(pts(&|m| m.win_rate), BLUE.stroke_width(2)))?
                .label("win rate")
                .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 16, y)], BLUE));
            chart
                .draw_series(LineSeries::new(
                    pts(&|m| m.lc_win_rate),
                    RED.stroke_width(2),
                ))?
                .label("LC win rate")
                .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 16, y)], RED));
            chart
                .draw_secondary_series(LineSeries::new(
                    pts(&|m| m.mean_length),
                    GREEN.stroke_width(2),
                ))?
                .label("mean length")
                .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 16, y)], GREEN));
            chart
                .configure_series_labels()
                .border_style(BLACK)
                .background_style(WHITE)
                .draw()?;
            root.present()?;
            Ok(())
        };
        if let Err(e) = draw() {
            eprintln!("evaluate: chart not drawn: {e}");
        }
    }
    svg
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::Message;
    use crate::stage::score::tests::Tmp;

    #[test]
    fn a_judge_without_its_settings_fails_before_any_response_is_generated() {
        let tmp = Tmp::new("evaluate-judge");
        let prompts = tmp.path("prompts.parquet");
        let rows = vec![PromptRow {
            prompt_id: "a".into(),
            messages: vec![Message::user("question a")],
            reference: Some("answer".into()),
            constraints: None,
        }];
        write_rows(
            &prompts,
            &FileMeta::new(FileKind::Prompts, "external", "p-fp"),
            &rows,
        )
        .unwrap();
        let out = tmp.path("eval");
        let mut judge = ScoreSettings::default();
        judge.judging.judge = "rule:length".into();
        // The model does not exist either: generating would fail first.
        let err = evaluate(&EvaluateJob {
            models: &[tmp.path("no-such-model").display().to_string()],
            names: None,
            prompts: &prompts,
            out: &out,
            settings: &EvaluateSettings::default(),
            judge: &judge,
            timings: None,
            force: false,
        })
        .unwrap_err();
        let msg = format!("{err:#}");
        assert!(
            msg.contains("the evaluation judge")
                && msg.contains("--judge rule:length needs --target N"),
            "{msg}"
        );
        assert_eq!(std::fs::read_dir(&out).unwrap().count(), 0);
    }

    #[test]
    fn given_names_are_checked() {
        let models = ["a/iter-1/model".to_string(), "b/iter-1/model".to_string()];
        let settings = EvaluateSettings::default();
        let judge = ScoreSettings::default();
        let names_of = |names: &[&str]| {
            let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
            model_names(&EvaluateJob {
                models: &models,
                names: Some(&names),
                prompts: Path::new("p.parquet"),
                out: Path::new("out"),
                settings: &settings,
                judge: &judge,
                timings: None,
                force: false,
            })
            .map_err(|e| e.to_string())
        };
        assert_eq!(
            names_of(&["sppo.iter-1", "rspo-paper.iter-1"]).unwrap(),
            ["sppo.iter-1", "rspo-paper.iter-1"]
        );
        assert_eq!(
            names_of(&["x"]).unwrap_err(),
            "--names: 1 names for 2 --models; give one per model"
        );
        assert!(names_of(&["a/b", "c"])
            .unwrap_err()
            .contains("it names files"));
        assert_eq!(
            names_of(&["x", "x"]).unwrap_err(),
            "--names: \"x\" is given twice"
        );
    }

    #[test]
    fn models_get_short_unique_names() {
        let models = [
            "runs/tiny/iter-1/model/".to_string(),
            "data/models/tiny-policy".to_string(),
            "other/iter-1/model".to_string(),
        ];
        assert_eq!(unique_names(&models), ["iter-1", "tiny-policy", "iter-1-2"]);
    }
}
