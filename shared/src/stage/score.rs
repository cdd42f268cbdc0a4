//! `score`: judge the K samples of every prompt. Writes `preferences.parquet` (every pair
//! i < j of each prompt, `p` = P(y_i beats y_j)) and, for scalar judges (reward models, rules),
//! `scores.parquet`. Judgments are cached across runs (see [`crate::judge::cache`]).

use anyhow::{bail, ensure, Context, Result};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use super::context::{model_ref, parse_device, resolve_model, Outcome, StageOutput};
use super::generate::dtype_for;
use super::progress::Progress;
use super::prompt_extras::PromptExtras;
use super::score_constraints::{constraints_path, write_constraint_outcomes};
use super::settings::Settings;
use crate::data::{
    default_cache_dir, read_rows, write_rows, ChunkStore, FileKind, FileMeta, ModelRef,
    PreferenceRow, SampleRow, ScoreRow,
};
use crate::judge::cache::{item_key, pair_key};
use crate::judge::rules::{ContainsRule, ExactMatchRule, LengthRule};
use crate::judge::{
    preference_from_scores, InstructionsJudge, Judge, JudgeItem, JudgmentCache, PairVerdict,
    PairwiseJudge, RewardModelJudge, ScalarJudge, CHECKS_VERSION,
};
use crate::judge::{PairRm, PairRmJudge, PairRmLengths, PairRmMode, PairRmOptions};

/// The `[score]` section of a pipeline config; flags override it.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ScoreSettings {
    /// `reward-model`, `pairrm`, `rule:length`, `rule:contains`, `rule:exact-match` or
    /// `instructions`.
    pub judge: String,
    /// The reward model (directory or Hub id) of `reward-model`.
    pub judge_model: Option<String>,
    /// Scalar judges: `p_ij = sigmoid((r_i - r_j) / temperature)`.
    pub temperature: f64,
    /// `rule:length`: the ideal response length in characters.
    pub target: Option<usize>,
    /// `rule:contains`: the regular expression a good response matches.
    pub pattern: Option<String>,
    /// Responses handed to the judge at once (one resumable chunk). Reward-model scores do not
    /// depend on it: each response runs through the model alone.
    pub batch_size: usize,
    pub device: String,
    /// f32 or bf16; default f32 on CPU, bf16 on CUDA.
    pub dtype: Option<String>,
    /// The judgment cache folder; default `rspo::data::default_cache_dir()`.
    pub cache_dir: Option<PathBuf>,
    /// Use the judgment cache (read and write).
    pub cache: bool,
    /// pairrm: `pairwise` (mean of both orders) or `sppo` (the group's aggregated scores).
    pub pairrm_mode: String,
    /// pairrm: token limits of the source and of each candidate (PairRM-hf's defaults).
    pub source_max_length: usize,
    pub candidate_max_length: usize,
}

impl Default for ScoreSettings {
    fn default() -> Self {
        ScoreSettings {
            judge: "reward-model".into(),
            judge_model: None,
            temperature: 1.0,
            target: None,
            pattern: None,
            batch_size: 8,
            device: "cpu".into(),
            dtype: None,
            cache_dir: None,
            cache: true,
            pairrm_mode: "pairwise".into(),
            source_max_length: 1224,
            candidate_max_length: 412,
        }
    }
}

impl Settings for ScoreSettings {
    const SECTION: &'static str = "score";
}

/// The judges `--judge` names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JudgeKind {
    RewardModel,
    PairRm,
    RuleLength,
    RuleContains,
    RuleExactMatch,
    Instructions,
}

impl JudgeKind {
    pub const ALL: [&'static str; 6] = [
        "reward-model",
        "pairrm",
        "rule:length",
        "rule:contains",
        "rule:exact-match",
        "instructions",
    ];

    pub fn parse(s: &str) -> Result<Self> {
        Ok(match s {
            "reward-model" => JudgeKind::RewardModel,
            "rule:length" => JudgeKind::RuleLength,
            "rule:contains" => JudgeKind::RuleContains,
            "rule:exact-match" => JudgeKind::RuleExactMatch,
            "pairrm" => JudgeKind::PairRm,
            "instructions" => JudgeKind::Instructions,
            other => bail!("--judge {other}: expected one of {}", Self::ALL.join(", ")),
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            JudgeKind::RewardModel => "reward-model",
            JudgeKind::PairRm => "pairrm",
            JudgeKind::RuleLength => "rule:length",
            JudgeKind::RuleContains => "rule:contains",
            JudgeKind::RuleExactMatch => "rule:exact-match",
            JudgeKind::Instructions => "instructions",
        }
    }
}

#[derive(Clone, Copy)]
pub struct ScoreJob<'a> {
    pub samples: &'a Path,
    /// preferences.parquet.
    pub out: &'a Path,
    /// scores.parquet of scalar judges; default `scores.parquet` beside `out`.
    pub scores_out: Option<&'a Path>,
    /// A prompt file with a `reference` column (`rule:exact-match`) or a `constraints` column
    /// (`instructions`).
    pub prompts: Option<&'a Path>,
    pub settings: &'a ScoreSettings,
    pub force: bool,
}

/// What a `score` run did.
#[derive(Debug, Clone, PartialEq)]
pub struct ScoreReport {
    pub outcome: Outcome,
    pub preferences: PathBuf,
    /// The scores file (scalar judges).
    pub scores: Option<PathBuf>,
    /// The pass/fail of every constraint (`instructions`).
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

/// One prompt's samples, in sample_idx order 0..K.
pub struct PromptSamples<'a> {
    pub prompt_id: &'a str,
    pub rows: Vec<&'a SampleRow>,
}

/// Groups samples by prompt (in order of first appearance) and checks that every prompt has
/// the same K >= 2 samples numbered 0..K, as comparing them in pairs needs.
pub fn group_samples<'a>(path: &Path, samples: &'a [SampleRow]) -> Result<Vec<PromptSamples<'a>>> {
    ensure!(
        !samples.is_empty(),
        "{}: no samples (0 rows), expected K >= 2 responses per prompt",
        path.display()
    );
    let mut index: HashMap<&str, usize> = HashMap::new();
    let mut groups: Vec<PromptSamples> = Vec::new();
    for row in samples {
        let g = *index.entry(row.prompt_id.as_str()).or_insert_with(|| {
            groups.push(PromptSamples {
                prompt_id: &row.prompt_id,
                rows: Vec::new(),
            });
            groups.len() - 1
        });
        groups[g].rows.push(row);
    }
    let (first, k) = (groups[0].prompt_id, groups[0].rows.len());
    for g in &mut groups {
        g.rows.sort_by_key(|r| r.sample_idx);
        if g.rows
            .iter()
            .enumerate()
            .any(|(i, r)| r.sample_idx as usize != i)
        {
            let found: Vec<u32> = g.rows.iter().map(|r| r.sample_idx).collect();
            bail!(
                "{}: prompt {:?} has column sample_idx = {found:?}, expected 0..{} without gaps",
                path.display(),
                g.prompt_id,
                g.rows.len() - 1
            );
        }
        ensure!(
            g.rows.len() >= 2,
            "{}: prompt {:?} has K = {} sample; the judge compares samples in pairs, expected K >= 2",
            path.display(),
            g.prompt_id,
            g.rows.len()
        );
        ensure!(
            g.rows.len() == k,
            "{}: prompt {:?} has K = {} samples but prompt {:?} has K = {k}; expected the same K for every prompt",
            path.display(),
            g.prompt_id,
            g.rows.len(),
            first
        );
    }
    Ok(groups)
}

/// The reward model's name in the `judge` column: a directory's name or the Hub id.
fn model_name(spec: &str) -> String {
    let path = Path::new(spec);
    if path.is_dir() {
        if let Some(name) = path
            .canonicalize()
            .ok()
            .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
        {
            return name;
        }
    }
    spec.to_string()
}

/// Checks the flags the chosen judge needs. Other judges' options are ignored (and stay out of
/// the fingerprint), so a command line can switch the judge of a pipeline config.
fn check_settings(s: &ScoreSettings, kind: JudgeKind) -> Result<()> {
    ensure!(s.batch_size >= 1, "--batch-size must be at least 1");
    ensure!(
        s.temperature.is_finite() && s.temperature > 0.0,
        "--temperature {}: expected a finite number > 0",
        s.temperature
    );
    match kind {
        JudgeKind::RewardModel | JudgeKind::PairRm => ensure!(
            s.judge_model.is_some(),
            "--judge {} needs --judge-model DIR_OR_HUB_ID",
            kind.as_str()
        ),
        JudgeKind::RuleLength => ensure!(
            s.target.is_some(),
            "--judge rule:length needs --target N (characters)"
        ),
        JudgeKind::RuleContains => ensure!(
            s.pattern.is_some(),
            "--judge rule:contains needs --pattern REGEX"
        ),
        // Their references and constraints come with the prompts (`score --prompts`,
        // evaluate's prompt file).
        JudgeKind::RuleExactMatch | JudgeKind::Instructions => {}
    }
    Ok(())
}

/// `score` with the judge `settings.judge` names.
pub fn score(job: &ScoreJob) -> Result<ScoreReport> {
    let kind = JudgeKind::parse(&job.settings.judge)?;
    ensure!(
        kind != JudgeKind::RuleExactMatch || job.prompts.is_some(),
        "--judge rule:exact-match needs --prompts FILE (the samples file has no reference answers)"
    );
    ensure!(
        kind != JudgeKind::Instructions || job.prompts.is_some(),
        "--judge instructions needs --prompts FILE (the samples file has no constraints)"
    );
    let spec = judge_spec(job.settings)?;
    let content = spec.content.clone();
    let mut report = score_with_judge(job, spec.content, spec.models, spec.scalar, spec.load)?;
    if kind == JudgeKind::Instructions {
        let scores = report
            .scores
            .as_deref()
            .context("a scalar judge writes scores")?;
        let out = constraints_path(scores);
        write_constraint_outcomes(job, &content, &out)?;
        report.constraints = Some(out);
    }
    Ok(report)
}

/// A judge as the settings describe it: what goes into fingerprints now, the (possibly
/// expensive) loading later, only if there is work to do.
pub struct JudgeSpec {
    /// The canonical settings that shape judgments.
    pub content: Value,
    /// The judge's model by role (`judge`), for fingerprints.
    pub models: Vec<(&'static str, ModelRef)>,
    /// A scalar judge (scores lifted to pairs) rather than a pairwise one.
    pub scalar: bool,
    pub load: Box<dyn FnOnce() -> Result<Judge>>,
}

/// Resolves the judge `--judge` and its options name (`evaluate` builds its judge here too).
pub fn judge_spec(s: &ScoreSettings) -> Result<JudgeSpec> {
    let kind = JudgeKind::parse(&s.judge)?;
    check_settings(s, kind)?;
    let t = s.temperature;
    let scalar = move |judge: Box<dyn ScalarJudge>| Judge::Scalar {
        judge,
        temperature: t,
    };
    Ok(match kind {
        JudgeKind::RewardModel => {
            let spec = s.judge_model.clone().unwrap_or_default();
            let device = parse_device(&s.device)?;
            let dtype = dtype_for(s.dtype.as_deref(), &device)?;
            // Resolve (download) and fingerprint the model, but load its weights only if
            // there is work to do.
            let dir = resolve_model(&spec)?;
            let reference = model_ref(&dir)?;
            let name = model_name(&spec);
            let digest = reference.digest.clone();
            JudgeSpec {
                content: json!({
                    "judge": kind.as_str(),
                    "dtype": format!("{dtype:?}").to_lowercase(),
                    "temperature": t,
                }),
                models: vec![("judge", reference)],
                scalar: true,
                load: Box::new(move || {
                    let judge = RewardModelJudge::load(&dir, name, digest, dtype, &device)
                        .with_context(|| format!("--judge-model {spec}"))?;
                    Ok(scalar(Box::new(judge)))
                }),
            }
        }
        JudgeKind::RuleLength => {
            let target = s.target.unwrap_or_default();
            JudgeSpec {
                content: json!({"judge": kind.as_str(), "target": target, "temperature": t}),
                models: vec![],
                scalar: true,
                load: Box::new(move || Ok(scalar(Box::new(LengthRule { target })))),
            }
        }
        JudgeKind::RuleContains => {
            let pattern = s.pattern.clone().unwrap_or_default();
            // Compile now: a bad pattern fails before anything is read.
            let rule = ContainsRule::new(&pattern)?;
            JudgeSpec {
                content: json!({"judge": kind.as_str(), "pattern": pattern, "temperature": t}),
                models: vec![],
                scalar: true,
                load: Box::new(move || Ok(scalar(Box::new(rule)))),
            }
        }
        JudgeKind::Instructions => JudgeSpec {
            content: json!({
                "judge": kind.as_str(),
                "checks": CHECKS_VERSION,
                "temperature": t,
            }),
            models: vec![],
            scalar: true,
            load: Box::new(move || Ok(scalar(Box::new(InstructionsJudge)))),
        },
        JudgeKind::RuleExactMatch => JudgeSpec {
            content: json!({"judge": kind.as_str(), "trim": true, "temperature": t}),
            models: vec![],
            scalar: true,
            load: Box::new(move || Ok(scalar(Box::new(ExactMatchRule)))),
        },
        JudgeKind::PairRm => {
            let spec = s.judge_model.clone().unwrap_or_default();
            let mode: PairRmMode = s
                .pairrm_mode
                .parse()
                .map_err(|e| anyhow::anyhow!("--pairrm-mode {e}"))?;
            let device = parse_device(&s.device)?;
            let dtype = dtype_for(s.dtype.as_deref(), &device)?;
            let dir = resolve_model(&spec)?;
            let reference = model_ref(&dir)?;
            let lengths = PairRmLengths {
                source_max_length: s.source_max_length,
                candidate_max_length: s.candidate_max_length,
            };
            let name = format!("pairrm:{}", model_name(&spec));
            let digest = reference.digest.clone();
            let batch_size = s.batch_size;
            JudgeSpec {
                content: json!({
                    "judge": kind.as_str(),
                    "mode": mode.to_string(),
                    "source_max_length": s.source_max_length,
                    "candidate_max_length": s.candidate_max_length,
                    "dtype": format!("{dtype:?}").to_lowercase(),
                }),
                models: vec![("judge", reference)],
                scalar: false,
                load: Box::new(move || {
                    let options = PairRmOptions {
                        lengths,
                        dtype,
                        batch_size: batch_size.max(1),
                    };
                    let model = PairRm::load_with(&dir, &device, &options)
                        .with_context(|| format!("--judge-model {spec}"))?;
                    Ok(Judge::Pairwise(Box::new(PairRmJudge::new(
                        model, mode, name, digest,
                    ))))
                }),
            }
        }
    })
}

pub(super) fn items_of<'a>(g: &PromptSamples<'a>, extras: &'a PromptExtras) -> Vec<JudgeItem<'a>> {
    let reference = extras.references.get(g.prompt_id).map(String::as_str);
    let constraints = extras.constraints.get(g.prompt_id).map(String::as_str);
    g.rows
        .iter()
        .map(|r| JudgeItem {
            prompt_id: &r.prompt_id,
            sample_idx: r.sample_idx,
            messages: &r.messages,
            response: &r.response,
            reference,
            constraints,
        })
        .collect()
}

/// Chunks of whole prompts holding about `batch_size` responses each.
fn chunks<'w, 'a>(
    pending: &'w [&'w PromptSamples<'a>],
    batch_size: usize,
) -> Vec<&'w [&'w PromptSamples<'a>]> {
    let mut out = Vec::new();
    let mut i = 0;
    while i < pending.len() {
        let mut j = i;
        let mut n = 0;
        while j < pending.len() && (n == 0 || n + pending[j].rows.len() <= batch_size) {
            n += pending[j].rows.len();
            j += 1;
        }
        out.push(&pending[i..j]);
        i = j;
    }
    out
}

/// `score` with a judge built by `build` (called only when there is work), `content` the
/// settings that shape its judgments (part of the fingerprint), `models` its models by role and
/// `scalar` whether it is a scalar judge (which also writes scores.parquet) or a pairwise one.
/// This is how judges other than `--judge`'s (tests, later judges) run through the same stage.
pub fn score_with_judge(
    job: &ScoreJob,
    content: Value,
    models: Vec<(&str, ModelRef)>,
    scalar: bool,
    build: impl FnOnce() -> Result<Judge>,
) -> Result<ScoreReport> {
    let start = Instant::now();
    let s = job.settings;
    ensure!(s.batch_size >= 1, "--batch-size must be at least 1");
    let (samples_meta, samples) = read_rows::<SampleRow>(job.samples)?;
    let groups = group_samples(job.samples, &samples)?;
    let k = groups[0].rows.len();

    let mut inputs: Vec<(&Path, &FileMeta)> = vec![(job.samples, &samples_meta)];
    let (prompts_meta, extras) = match job.prompts {
        Some(p) => {
            let (m, e) = PromptExtras::read(p, groups.iter().map(|g| g.prompt_id))?;
            (Some(m), e)
        }
        None => (None, PromptExtras::default()),
    };
    if let (Some(p), Some(m)) = (job.prompts, prompts_meta.as_ref()) {
        inputs.push((p, m));
    }

    let mut prefs_out = StageOutput::new(
        job.out,
        FileKind::Preferences,
        "score",
        &content,
        &inputs,
        &models,
    )?;
    // estimate-winrate checks every prompt against this K (a pair missing from every prompt
    // would otherwise go unnoticed).
    prefs_out.meta.extra.insert("k".into(), k.to_string());

    let scores_path = job.scores_out.map(Path::to_path_buf).unwrap_or_else(|| {
        job.out
            .parent()
            .unwrap_or(Path::new(""))
            .join("scores.parquet")
    });
    let scores_out = if scalar {
        ensure!(
            scores_path != job.out,
            "--scores-out {}: the same file as --out; expected another file",
            scores_path.display()
        );
        Some(StageOutput::new(
            &scores_path,
            FileKind::Scores,
            "score",
            &content,
            &inputs,
            &models,
        )?)
    } else {
        None
    };

    let mut report = ScoreReport {
        outcome: Outcome::UpToDate,
        preferences: job.out.to_path_buf(),
        scores: scores_out.as_ref().map(|o| o.path.clone()),
        constraints: None,
        prompts: groups.len(),
        pairs: groups.len() * k * (k - 1) / 2,
        judgments: if scalar {
            samples.len()
        } else {
            groups.len() * k * (k - 1) / 2
        },
        judged: 0,
        reused: 0,
        resumed: 0,
        cache: None,
        seconds: 0.0,
    };
    let chunked = scores_out.as_ref().unwrap_or(&prefs_out);
    if !job.force
        && prefs_out.is_up_to_date()
        && scores_out.as_ref().is_none_or(StageOutput::is_up_to_date)
    {
        ChunkStore::discard(&chunked.path)?;
        report.seconds = start.elapsed().as_secs_f64();
        return Ok(report);
    }
    if job.force {
        ChunkStore::discard(&chunked.path)?;
    }

    let judge = build()?;
    ensure!(
        scalar == matches!(judge, Judge::Scalar { .. }),
        "{}: built a {} judge, expected a {} one",
        judge.name(),
        if scalar { "pairwise" } else { "scalar" },
        if scalar { "scalar" } else { "pairwise" }
    );
    if judge.uses_reference() {
        let prompts = job.prompts.with_context(|| {
            format!(
                "{} needs --prompts FILE with a 'reference' column",
                judge.name()
            )
        })?;
        extras.require_references(prompts)?;
    }
    let mut cache = if s.cache && judge.cacheable() {
        let dir = s.cache_dir.clone().unwrap_or_else(default_cache_dir);
        let c = JudgmentCache::open(&dir, &judge.digest())?;
        report.cache = Some(c.path().to_path_buf());
        Some(c)
    } else {
        None
    };

    // Check what the judge will see before any chunk is written: a template that raises, a
    // conversation longer than the judge's context, a missing reference fail now.
    match &judge {
        Judge::Scalar { judge: scalar, .. } => {
            let (digest, uses_reference) = (scalar.digest(), scalar.uses_reference());
            let uncached: Vec<JudgeItem> = groups
                .iter()
                .flat_map(|g| items_of(g, &extras))
                .filter(|it| {
                    let key = item_key(&digest, it, uses_reference);
                    cache.as_ref().and_then(|c| c.get(&key)).is_none()
                })
                .collect();
            scalar.check(&uncached)?;
        }
        Judge::Pairwise(pairwise) => {
            for g in &groups {
                pairwise.check(&items_of(g, &extras))?;
            }
        }
    }

    let order: HashMap<&str, usize> = groups
        .iter()
        .enumerate()
        .map(|(i, g)| (g.prompt_id, i))
        .collect();
    let mut store = ChunkStore::open(&chunked.path, chunked.fingerprint())?;
    let pending: Vec<&PromptSamples> = groups
        .iter()
        .filter(|g| !store.is_completed(g.prompt_id))
        .collect();
    let per_group = if scalar { k } else { k * (k - 1) / 2 };
    report.resumed = (groups.len() - pending.len()) * per_group;
    let mut progress = Progress::new("score", samples.len() as u64, "responses");
    progress.advance(((groups.len() - pending.len()) * k) as u64);
    let name = judge.name();
    let work = Work {
        pending: &pending,
        extras: &extras,
        batch_size: s.batch_size,
        name: &name,
    };

    match &judge {
        Judge::Scalar {
            judge: scalar,
            temperature,
        } => {
            judge_scalar(
                &work,
                scalar.as_ref(),
                cache.as_ref(),
                &mut store,
                &mut progress,
                &mut report,
            )?;
            progress.finish();
            let scores_out = scores_out
                .as_ref()
                .context("a scalar judge writes scores")?;
            let rows = store.finish(&scores_out.meta, |r: &ScoreRow| {
                (order.get(r.prompt_id.as_str()).copied(), r.sample_idx)
            })?;
            // Everything written goes into the cache, chunks of an interrupted run included.
            if let Some(c) = cache.as_mut() {
                let (digest, uses_reference) = (scalar.digest(), scalar.uses_reference());
                let by_key: HashMap<(&str, u32), f64> = rows
                    .iter()
                    .map(|r| ((r.prompt_id.as_str(), r.sample_idx), r.score))
                    .collect();
                for it in groups.iter().flat_map(|g| items_of(g, &extras)) {
                    if let Some(&v) = by_key.get(&(it.prompt_id, it.sample_idx)) {
                        c.insert(item_key(&digest, &it, uses_reference), vec![v]);
                    }
                }
                c.save()?;
            }
            let prefs = preferences_from_scores(&groups, &rows, *temperature, &name)?;
            write_rows(job.out, &prefs_out.meta, &prefs)?;
        }
        Judge::Pairwise(pairwise) => {
            judge_pairwise(
                &work,
                pairwise.as_ref(),
                cache.as_ref(),
                &mut store,
                &mut progress,
                &mut report,
            )?;
            progress.finish();
            let rows = store.finish(&prefs_out.meta, |r: &PreferenceRow| {
                (order.get(r.prompt_id.as_str()).copied(), r.i, r.j)
            })?;
            if let Some(c) = cache.as_mut() {
                let (digest, uses_reference) = (pairwise.digest(), pairwise.uses_reference());
                let by_key: HashMap<(&str, u32, u32), &PreferenceRow> = rows
                    .iter()
                    .map(|r| ((r.prompt_id.as_str(), r.i, r.j), r))
                    .collect();
                for g in &groups {
                    let items = items_of(g, &extras);
                    for (i, j) in pairs_of(k) {
                        if let Some(r) = by_key.get(&(g.prompt_id, i as u32, j as u32)) {
                            let v = PairVerdict {
                                p: r.p,
                                p_forward: r.p_forward,
                                p_swapped: r.p_swapped,
                            };
                            let key = pair_key(&digest, &items[i], &items[j], uses_reference);
                            c.insert(key, values_of(&v));
                        }
                    }
                }
                c.save()?;
            }
        }
    }
    report.outcome = Outcome::Written { rows: report.pairs };
    report.seconds = start.elapsed().as_secs_f64();
    Ok(report)
}

/// What the judging loops share.
struct Work<'w, 'a> {
    /// The prompts left to judge (not completed by an interrupted run).
    pending: &'w [&'w PromptSamples<'a>],
    extras: &'w PromptExtras,
    batch_size: usize,
    /// The judge's name, for messages and the `judge` column.
    name: &'w str,
}

/// Every pair i < j of K samples, in file order.
fn pairs_of(k: usize) -> Vec<(usize, usize)> {
    (0..k)
        .flat_map(|i| (i + 1..k).map(move |j| (i, j)))
        .collect()
}

/// Scores the pending prompts chunk by chunk (cached scores reused) into `store`.
fn judge_scalar(
    w: &Work,
    judge: &dyn ScalarJudge,
    cache: Option<&JudgmentCache>,
    store: &mut ChunkStore,
    progress: &mut Progress,
    report: &mut ScoreReport,
) -> Result<()> {
    let name = w.name;
    let (digest, uses_reference) = (judge.digest(), judge.uses_reference());
    for chunk in chunks(w.pending, w.batch_size) {
        let items: Vec<JudgeItem> = chunk.iter().flat_map(|g| items_of(g, w.extras)).collect();
        let keys: Vec<[u8; 32]> = items
            .iter()
            .map(|it| item_key(&digest, it, uses_reference))
            .collect();
        let mut values: Vec<Option<f64>> = keys
            .iter()
            .map(|key| {
                cache
                    .and_then(|c| c.get(key))
                    .and_then(|v| v.first().copied())
            })
            .collect();
        // Each distinct uncached judgment once (a prompt's samples often repeat a response).
        let mut first_of: HashMap<[u8; 32], usize> = HashMap::new();
        let mut missing = Vec::new();
        for i in 0..items.len() {
            if values[i].is_none() && !first_of.contains_key(&keys[i]) {
                first_of.insert(keys[i], i);
                missing.push(i);
            }
        }
        if !missing.is_empty() {
            let todo: Vec<JudgeItem> = missing.iter().map(|&i| items[i]).collect();
            let got = judge.score(&todo)?;
            ensure!(
                got.len() == todo.len(),
                "{name} returned {} scores for {} responses",
                got.len(),
                todo.len()
            );
            for (&i, v) in missing.iter().zip(got) {
                ensure!(
                    v.is_finite(),
                    "{name} gave prompt {:?}, sample {} the score {v}, expected a finite number",
                    items[i].prompt_id,
                    items[i].sample_idx
                );
                values[i] = Some(v);
            }
            for i in 0..items.len() {
                if values[i].is_none() {
                    values[i] = first_of.get(&keys[i]).and_then(|&f| values[f]);
                }
            }
            report.judged += missing.len();
            progress.add_units(missing.len() as u64);
        }
        report.reused += items.len() - missing.len();
        let rows: Vec<ScoreRow> = items
            .iter()
            .zip(values)
            .map(|(it, v)| ScoreRow {
                prompt_id: it.prompt_id.to_string(),
                sample_idx: it.sample_idx,
                score: v.unwrap_or(f64::NAN),
            })
            .collect();
        let keys: Vec<&str> = chunk.iter().map(|g| g.prompt_id).collect();
        store.write_chunk(&keys, &rows)?;
        progress.advance(items.len() as u64);
    }
    Ok(())
}

/// Compares every pair of the pending prompts chunk by chunk (a prompt whose pairs are all
/// cached is reused) into `store`.
fn judge_pairwise(
    w: &Work,
    judge: &dyn PairwiseJudge,
    cache: Option<&JudgmentCache>,
    store: &mut ChunkStore,
    progress: &mut Progress,
    report: &mut ScoreReport,
) -> Result<()> {
    let name = w.name;
    let (digest, uses_reference) = (judge.digest(), judge.uses_reference());
    for chunk in chunks(w.pending, w.batch_size) {
        let mut rows = Vec::new();
        for g in chunk {
            let items = items_of(g, w.extras);
            let pairs = pairs_of(items.len());
            let cached: Option<Vec<PairVerdict>> = pairs
                .iter()
                .map(|&(i, j)| {
                    let key = pair_key(&digest, &items[i], &items[j], uses_reference);
                    cache.and_then(|c| c.get(&key)).and_then(verdict_of)
                })
                .collect();
            // A prompt is judged as a whole (a judge may look at all K at once), so it is
            // reused only when every pair is cached.
            let verdicts = match cached {
                Some(v) => {
                    report.reused += v.len();
                    v
                }
                None => {
                    let v = judge.compare_group(&items)?;
                    ensure!(
                        v.len() == pairs.len(),
                        "{name} returned {} verdicts for {} pairs",
                        v.len(),
                        pairs.len()
                    );
                    report.judged += v.len();
                    progress.add_units(items.len() as u64);
                    v
                }
            };
            for (&(i, j), v) in pairs.iter().zip(verdicts) {
                check_verdict(name, g.prompt_id, i, j, &v)?;
                rows.push(PreferenceRow {
                    prompt_id: g.prompt_id.to_string(),
                    i: i as u32,
                    j: j as u32,
                    p: v.p,
                    p_forward: v.p_forward,
                    p_swapped: v.p_swapped,
                    judge: name.to_string(),
                });
            }
        }
        let keys: Vec<&str> = chunk.iter().map(|g| g.prompt_id).collect();
        store.write_chunk(&keys, &rows)?;
        progress.advance(chunk.iter().map(|g| g.rows.len() as u64).sum());
    }
    Ok(())
}

/// A cached pairwise verdict: `[p, p_forward, p_swapped]`, NaN for an absent order.
fn values_of(v: &PairVerdict) -> Vec<f64> {
    vec![
        v.p,
        v.p_forward.unwrap_or(f64::NAN),
        v.p_swapped.unwrap_or(f64::NAN),
    ]
}

fn verdict_of(values: &[f64]) -> Option<PairVerdict> {
    let [p, f, s] = values else { return None };
    let opt = |x: f64| (!x.is_nan()).then_some(x);
    Some(PairVerdict {
        p: *p,
        p_forward: opt(*f),
        p_swapped: opt(*s),
    })
}

fn check_verdict(judge: &str, prompt_id: &str, i: usize, j: usize, v: &PairVerdict) -> Result<()> {
    for (what, value) in [
        ("p", Some(v.p)),
        ("p_forward", v.p_forward),
        ("p_swapped", v.p_swapped),
    ] {
        if let Some(x) = value {
            ensure!(
                (0.0..=1.0).contains(&x),
                "{judge} gave prompt {prompt_id:?}, pair ({i}, {j}) {what} = {x}, expected a probability in [0, 1]"
            );
        }
    }
    Ok(())
}

/// Every pair i < j of every prompt, `p = sigmoid((r_i - r_j) / temperature)`.
fn preferences_from_scores(
    groups: &[PromptSamples],
    rows: &[ScoreRow],
    temperature: f64,
    judge: &str,
) -> Result<Vec<PreferenceRow>> {
    let by_key: HashMap<(&str, u32), f64> = rows
        .iter()
        .map(|r| ((r.prompt_id.as_str(), r.sample_idx), r.score))
        .collect();
    let mut out = Vec::new();
    for g in groups {
        let scores = g
            .rows
            .iter()
            .map(|r| {
                by_key
                    .get(&(g.prompt_id, r.sample_idx))
                    .copied()
                    .with_context(|| {
                        format!(
                            "no score for prompt {:?}, sample {} after scoring",
                            g.prompt_id, r.sample_idx
                        )
                    })
            })
            .collect::<Result<Vec<f64>>>()?;
        for i in 0..scores.len() {
            for j in i + 1..scores.len() {
                out.push(PreferenceRow {
                    prompt_id: g.prompt_id.to_string(),
                    i: i as u32,
                    j: j as u32,
                    p: preference_from_scores(scores[i], scores[j], temperature),
                    p_forward: None,
                    p_swapped: None,
                    judge: judge.to_string(),
                });
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::data::{read_meta, FinishReason, Message};
    use crate::judge::{JudgeError, PairwiseJudge};
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
        ScoreSettings {
            judge: "rule:length".into(),
            target: Some(target),
            batch_size: 3,
            cache_dir: Some(tmp.path("cache")),
            ..ScoreSettings::default()
        }
    }

    fn job<'a>(
        tmp: &'a Tmp,
        s: &'a ScoreSettings,
        samples: &'a Path,
        out: &'a Path,
    ) -> ScoreJob<'a> {
        let _ = tmp;
        ScoreJob {
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
        let no_cache = ScoreSettings {
            cache: false,
            ..s.clone()
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
        let hot = ScoreSettings {
            temperature: 2.0,
            ..s.clone()
        };
        let out2 = tmp.path("p2.parquet");
        let r = score(&ScoreJob {
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
        let s = ScoreSettings {
            cache: false,
            ..length_settings(&tmp, 1)
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
        let s = ScoreSettings {
            judge: "rule:exact-match".into(),
            cache_dir: Some(tmp.path("cache")),
            ..ScoreSettings::default()
        };
        let err = score(&job(&tmp, &s, &samples, &out)).unwrap_err();
        assert!(
            format!("{err:#}").contains("needs --prompts FILE"),
            "{err:#}"
        );
        let r = score(&ScoreJob {
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
        let no_target = ScoreSettings {
            target: None,
            ..s.clone()
        };
        expect_error(
            &tmp,
            &no_target,
            &[sample("a", 0, "x"), sample("a", 1, "y")],
            &["--target N"],
        );
        let bad_regex = ScoreSettings {
            judge: "rule:contains".into(),
            target: None,
            pattern: Some("(".into()),
            ..s.clone()
        };
        expect_error(
            &tmp,
            &bad_regex,
            &[sample("a", 0, "x"), sample("a", 1, "y")],
            &["--pattern \"(\""],
        );
        let unknown = ScoreSettings {
            judge: "oracle".into(),
            ..s.clone()
        };
        expect_error(
            &tmp,
            &unknown,
            &[sample("a", 0, "x"), sample("a", 1, "y")],
            &["--judge oracle", "reward-model"],
        );
        let no_model = ScoreSettings {
            judge: "reward-model".into(),
            target: None,
            ..s.clone()
        };
        expect_error(
            &tmp,
            &no_model,
            &[sample("a", 0, "x"), sample("a", 1, "y")],
            &["--judge-model"],
        );

        // A samples file without the response column.
        let path = tmp.path("no-response.parquet");
        {
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
            let file = std::fs::File::create(&path).unwrap();
            let mut w =
                parquet::arrow::ArrowWriter::try_new(file, batch.schema(), Some(props)).unwrap();
            w.write(&batch).unwrap();
            w.close().unwrap();
        }
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
                s.judge.as_str(),
                s.target,
                s.temperature,
                s.batch_size,
                s.cache
            ),
            ("rule:length", Some(40), 0.5, 8, true)
        );
        let w = crate::stage::winrate::WinrateSettings::from_config(Some(&path)).unwrap();
        assert!(w.exclude_self);
        std::fs::write(&path, "[score]\njudg = \"x\"\n").unwrap();
        let err = format!("{:#}", ScoreSettings::from_config(Some(&path)).unwrap_err());
        assert!(err.contains("[score]") && err.contains("judg"), "{err}");
    }

    #[test]
    fn a_judge_compares_two_responses_for_evaluation() {
        let judge = Judge::Scalar {
            judge: Box::new(LengthRule { target: 3 }),
            temperature: 2.0,
        };
        let m = [Message::user("q")];
        let item = |response| JudgeItem {
            prompt_id: "q",
            sample_idx: 0,
            messages: &m,
            response,
            reference: None,
            constraints: None,
        };
        // Scores 0 and -2: sigmoid(2 / 2).
        let v = judge.compare(&item("abc"), &item("a")).unwrap();
        assert!((v.p - crate::judge::sigmoid(1.0)).abs() < 1e-15);
        assert_eq!((v.p_forward, v.p_swapped), (None, None));
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
        let s = ScoreSettings {
            cache_dir: Some(tmp.path("cache")),
            ..ScoreSettings::default()
        };
        let run = |force: bool| {
            score_with_judge(
                &ScoreJob {
                    force,
                    ..job(&tmp, &s, &samples, &out)
                },
                json!({"judge": "test:longer"}),
                vec![],
                false,
                || {
                    Ok(Judge::Pairwise(Box::new(LongerFirst {
                        calls: AtomicUsize::new(0),
                    })))
                },
            )
            .unwrap()
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
}
