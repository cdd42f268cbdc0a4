//! `score`: judge the K samples of every prompt. Writes `preferences.parquet` (every pair
//! i < j of each prompt, `p` = P(y_i beats y_j)) and, for scalar judges (reward models, rules),
//! `scores.parquet`, and for judges that check constraints `constraints.parquet` (each one's
//! pass/fail). Judgments are cached across runs (see [`crate::judge::CachedJudge`]).
//!
//! The story: read the samples (and the prompts' reference answers and constraints), group them
//! by prompt, fingerprint the outputs, judge the prompts chunk by chunk (an interrupted run
//! resumes), write.

use anyhow::{ensure, Context, Result};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use super::context::{check_output_files, skip_chunked_run, Outcome, StageOutput};
use super::output_lock::{lock_outputs, OutputLock};
use super::progress::Progress;
use super::settings::Settings;
use super::shard::Shard;
use crate::data::{
    default_cache_dir, read_rows, write_rows, ChunkStore, FileKind, FileMeta, PreferenceRow,
    SampleRow, ScoreRow,
};
use crate::judge::{
    find_judge, CachedJudge, Comparison, Judge, JudgeItem, JudgeSettings, JudgeSpec, Verdicts,
};
use constraint_rows::write_constraint_outcomes;
use prompt_samples::{group_samples, items_of, PromptColumns, PromptSamples};
use verdict_rows::{preferences_from_scores, VerdictRows};

mod constraint_rows;
mod prompt_samples;
#[cfg(test)]
pub(crate) mod tests;
mod verdict_rows;

/// The `[score]` section of a pipeline file; flags override it. `evaluate` judges with these
/// settings too.
#[derive(Debug, Clone, Serialize, Deserialize, clap::Args)]
pub struct ScoreSettings {
    #[command(flatten)]
    #[serde(flatten)]
    pub judging: JudgeSettings,
    /// Scalar judges: p_ij = sigmoid((r_i - r_j) / temperature).
    #[arg(long, default_value_t = 1.0)]
    pub temperature: f64,
    /// Responses judged per step, one resumable chunk; never changes a score (each response
    /// runs through a reward model alone).
    #[arg(long, default_value_t = 8)]
    pub batch_size: usize,
    /// cpu, cuda or cuda:N.
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// f32 or bf16 [default: f32 on CPU, bf16 on CUDA].
    #[arg(long)]
    pub dtype: Option<String>,
}

impl Default for ScoreSettings {
    fn default() -> Self {
        Self::defaults()
    }
}

impl Settings for ScoreSettings {
    const SECTION: &'static str = "score";
}

/// `evaluate` takes the judge's flags alone, and the rest of `[score]` from the file.
impl Settings for JudgeSettings {
    const SECTION: &'static str = "score";
}

#[derive(Clone, Copy)]
pub struct ScoreJob<'a> {
    pub samples: &'a Path,
    /// preferences.parquet.
    pub out: &'a Path,
    /// scores.parquet of scalar judges; default `scores.parquet` beside `out`.
    pub scores_out: Option<&'a Path>,
    /// A prompt file with the columns a judge reads that samples files lack: `reference`
    /// (`rule:exact-match`), `constraints` (`instructions`).
    pub prompts: Option<&'a Path>,
    pub settings: &'a ScoreSettings,
    /// Judge only this slice of the prompts (see [`super::shard`]).
    pub shard: Option<Shard>,
    pub force: bool,
}

/// What a `score` run did.
#[derive(Debug, Clone, PartialEq)]
pub struct ScoreReport {
    pub outcome: Outcome,
    pub preferences: PathBuf,
    /// The scores file (scalar judges).
    pub scores: Option<PathBuf>,
    /// The pass/fail of every constraint (judges that check constraints).
    pub constraints: Option<PathBuf>,
    pub prompts: usize,
    pub pairs: usize,
    /// Judgments: responses for scalar judges, pairs for pairwise ones.
    pub judgments: usize,
    /// Judgments computed by the judge in this run.
    pub judged: usize,
    /// Judgments not recomputed: taken from the cache, or a response repeated within the
    /// prompt's samples.
    pub reused: usize,
    /// Judgments taken from chunks of an interrupted run.
    pub resumed: usize,
    /// The cache file, when the cache is on.
    pub cache: Option<PathBuf>,
    pub seconds: f64,
}

/// `score` with the judge `settings.judge` names.
pub fn score(job: &ScoreJob) -> Result<ScoreReport> {
    let entry = find_judge(&job.settings.judging.judge)?;
    if let Some(what) = entry.needs_prompts {
        ensure!(
            job.prompts.is_some(),
            "--judge {} needs --prompts FILE (the samples file has no {what})",
            entry.name
        );
    }
    let spec = entry.spec(job.settings)?;
    score_with_judge(job, entry.comparison, spec)
}

/// `score` with the judge `spec` describes (loaded only when there is work), `comparison`
/// saying whether it is a scalar judge (which also writes scores.parquet) or a pairwise one.
/// This is how judges other than the registry's (tests) run through the same stage.
pub fn score_with_judge(
    job: &ScoreJob,
    comparison: Comparison,
    spec: JudgeSpec,
) -> Result<ScoreReport> {
    let start = Instant::now();
    ensure!(
        job.settings.batch_size >= 1,
        "--batch-size must be at least 1"
    );
    let (samples_meta, samples) = read_rows::<SampleRow>(job.samples)?;
    let groups = Shard::keep(job.shard, group_samples(job.samples, &samples)?, "prompts")?;
    let (prompts_meta, columns) = match job.prompts {
        Some(p) => {
            let (m, c) = PromptColumns::read(p, &groups)?;
            (Some(m), c)
        }
        None => (None, PromptColumns::default()),
    };
    let mut inputs: Vec<(&Path, &FileMeta)> = vec![(job.samples, &samples_meta)];
    if let (Some(p), Some(m)) = (job.prompts, prompts_meta.as_ref()) {
        inputs.push((p, m));
    }
    let outputs = Outputs::new(job, comparison, &spec, &inputs, groups[0].rows.len())?;
    outputs.check_output_files(job, &spec)?;
    let _lock = outputs.lock()?;
    let mut report = outputs.report(&groups, comparison);
    if skip_chunked_run(&outputs.chunked().path, outputs.are_up_to_date(), job.force)? {
        report.seconds = start.elapsed().as_secs_f64();
        return Ok(report);
    }

    let mut judge = load_judge(job, comparison, spec)?;
    if judge.judge().uses_reference() {
        let prompts = job.prompts.with_context(|| {
            let name = judge.judge().name();
            format!("{name} needs --prompts FILE with a 'reference' column")
        })?;
        columns.require_references(prompts, &groups)?;
    }
    report.cache = judge.cache_path().map(Path::to_path_buf);
    let items: Vec<Vec<JudgeItem>> = groups.iter().map(|g| items_of(g, &columns)).collect();
    // Check what the judge will see before any chunk is written: a template that raises, a
    // conversation longer than the judge's context, a missing reference fail now.
    judge.check(&items)?;
    let (batch, r) = (job.settings.batch_size, &mut report);
    let verdicts = match comparison {
        Comparison::Scalar => judge_chunks::<ScoreRow>(&outputs, &groups, &items, &judge, batch, r),
        Comparison::Pairwise => {
            judge_chunks::<PreferenceRow>(&outputs, &groups, &items, &judge, batch, r)
        }
    }?;
    // Everything written goes into the cache, chunks of an interrupted run included.
    judge.write_back(&items, &verdicts)?;
    if let (Judge::Scalar { temperature, .. }, Verdicts::Scores(scores)) =
        (judge.judge(), &verdicts)
    {
        let prefs = preferences_from_scores(&groups, scores, *temperature, &judge.judge().name());
        write_rows(job.out, &outputs.preferences.meta, &prefs)?;
    }
    if let Some(output) = &outputs.constraints {
        write_constraint_outcomes(output, &items, judge.judge())?;
    }
    report.outcome = Outcome::Written { rows: report.pairs };
    report.seconds = start.elapsed().as_secs_f64();
    Ok(report)
}

/// The files `score` writes, fingerprinted: preferences.parquet, and for a scalar judge
/// scores.parquet, the file whose chunks an interrupted run leaves, and constraints.parquet
/// beside it when the judge checks constraints.
struct Outputs {
    preferences: StageOutput,
    scores: Option<StageOutput>,
    constraints: Option<StageOutput>,
}

impl Outputs {
    fn new(
        job: &ScoreJob,
        comparison: Comparison,
        spec: &JudgeSpec,
        inputs: &[(&Path, &FileMeta)],
        k: usize,
    ) -> Result<Self> {
        let output = |path: &Path, kind| -> Result<StageOutput> {
            let mut out =
                StageOutput::new(path, kind, "score", &spec.content, inputs, &spec.models)?;
            if let Some(sh) = job.shard {
                sh.mark(&mut out.meta);
            }
            Ok(out)
        };
        let mut preferences = output(job.out, FileKind::Preferences)?;
        // estimate-winrate checks every prompt against this K (a pair missing from every prompt
        // would otherwise go unnoticed).
        preferences.meta.extra.insert("k".into(), k.to_string());
        let scores = match comparison {
            Comparison::Scalar => {
                let path = job.scores_out.map(Path::to_path_buf).unwrap_or_else(|| {
                    job.out
                        .parent()
                        .unwrap_or(Path::new(""))
                        .join("scores.parquet")
                });
                ensure!(
                    path != job.out,
                    "--scores-out {}: the same file as --out; expected another file",
                    path.display()
                );
                Some(output(&path, FileKind::Scores)?)
            }
            Comparison::Pairwise => None,
        };
        let constraints = match &scores {
            Some(scores) if spec.constraint_outcomes => {
                let dir = scores.path.parent().unwrap_or(Path::new(""));
                Some(output(
                    &dir.join("constraints.parquet"),
                    FileKind::Constraints,
                )?)
            }
            _ => None,
        };
        Ok(Outputs {
            preferences,
            scores,
            constraints,
        })
    }

    /// Every output file, named by the flag that sets it.
    fn files(&self) -> Vec<(&str, &Path)> {
        let mut outs = vec![("--out", self.preferences.path.as_path())];
        if let Some(s) = &self.scores {
            outs.push(("--scores-out", s.path.as_path()));
        }
        if let Some(c) = &self.constraints {
            outs.push(("the constraints file", c.path.as_path()));
        }
        outs
    }

    /// Holds every output for this run alone.
    fn lock(&self) -> Result<OutputLock> {
        lock_outputs(&self.files())
    }

    /// Refuses an output that is an input or lies in the judge model's folder.
    fn check_output_files(&self, job: &ScoreJob, spec: &JudgeSpec) -> Result<()> {
        let outs = self.files();
        let mut inputs = vec![("--samples", job.samples)];
        inputs.extend(job.prompts.map(|p| ("--prompts", p)));
        let models: Vec<(&str, &Path)> = spec
            .models
            .iter()
            .map(|(_, m)| ("--judge-model", Path::new(&m.path)))
            .collect();
        check_output_files(&outs, &inputs, &models)
    }

    /// The output the judging loop writes chunk by chunk.
    fn chunked(&self) -> &StageOutput {
        self.scores.as_ref().unwrap_or(&self.preferences)
    }

    fn are_up_to_date(&self) -> bool {
        self.preferences.is_up_to_date()
            && self.scores.as_ref().is_none_or(StageOutput::is_up_to_date)
            && self
                .constraints
                .as_ref()
                .is_none_or(StageOutput::is_up_to_date)
    }

    /// The report of a run that has judged nothing yet.
    fn report(&self, groups: &[PromptSamples], comparison: Comparison) -> ScoreReport {
        let k = groups[0].rows.len();
        let pairs = groups.len() * k * (k - 1) / 2;
        ScoreReport {
            outcome: Outcome::UpToDate,
            preferences: self.preferences.path.clone(),
            scores: self.scores.as_ref().map(|o| o.path.clone()),
            constraints: self.constraints.as_ref().map(|o| o.path.clone()),
            prompts: groups.len(),
            pairs,
            judgments: match comparison {
                Comparison::Scalar => groups.len() * k,
                Comparison::Pairwise => pairs,
            },
            judged: 0,
            reused: 0,
            resumed: 0,
            cache: None,
            seconds: 0.0,
        }
    }
}

/// Loads the judge, checks it is what `score` was told, and opens its cache.
fn load_judge(job: &ScoreJob, comparison: Comparison, spec: JudgeSpec) -> Result<CachedJudge> {
    let judge = (spec.load)()?;
    let scalar = comparison == Comparison::Scalar;
    ensure!(
        scalar == matches!(judge, Judge::Scalar { .. }),
        "{}: built a {} judge, expected a {} one",
        judge.name(),
        if scalar { "pairwise" } else { "scalar" },
        if scalar { "scalar" } else { "pairwise" }
    );
    let s = job.settings;
    let cache_dir = s.judging.cache.then(|| {
        s.judging
            .cache_dir
            .clone()
            .unwrap_or_else(default_cache_dir)
    });
    Ok(CachedJudge::open(judge, cache_dir.as_deref())?)
}

/// Judges the prompts not completed by an interrupted run, chunk by chunk (about
/// `batch_size` responses each) into the chunked output, then writes that output and returns
/// every prompt's verdicts, resumed ones included.
fn judge_chunks<R: VerdictRows>(
    outputs: &Outputs,
    groups: &[PromptSamples],
    items: &[Vec<JudgeItem>],
    judge: &CachedJudge,
    batch_size: usize,
    report: &mut ScoreReport,
) -> Result<Verdicts> {
    let output = outputs.chunked();
    let name = judge.judge().name();
    let k = groups[0].rows.len();
    let mut store = ChunkStore::open(&output.path, output.fingerprint())?;
    let pending: Vec<usize> = (0..groups.len())
        .filter(|&g| !store.is_completed(groups[g].prompt_id))
        .collect();
    report.resumed = (groups.len() - pending.len()) * R::judgments_per_prompt(k);
    let mut progress = Progress::new("score", (groups.len() * k) as u64, "responses");
    progress.advance(((groups.len() - pending.len()) * k) as u64);
    // Whole prompts, as many as fit in `batch_size` responses (at least one).
    for chunk in pending.chunks((batch_size / k).max(1)) {
        let chunk_items: Vec<Vec<JudgeItem>> = chunk.iter().map(|&g| items[g].clone()).collect();
        let judged = judge.judge_chunk(&chunk_items)?;
        report.judged += judged.judged;
        report.reused += judged.reused;
        progress.add_units(judged.responses_judged as u64);
        let rows = R::from_verdicts(&chunk_items, judged.verdicts, &name)?;
        let keys: Vec<&str> = chunk.iter().map(|&g| groups[g].prompt_id).collect();
        store.write_chunk(&keys, &rows)?;
        progress.advance((chunk.len() * k) as u64);
    }
    progress.finish();
    let order: HashMap<&str, usize> = groups
        .iter()
        .enumerate()
        .map(|(i, g)| (g.prompt_id, i))
        .collect();
    let expected = groups.len() * R::judgments_per_prompt(k);
    let rows = store.finish(&output.meta, expected, |r: &R| {
        (order.get(r.prompt_id()).copied(), r.position())
    })?;
    R::into_verdicts(items, &rows)
}
