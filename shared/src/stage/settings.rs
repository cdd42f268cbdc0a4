//! Stage settings have one definition each: a struct whose fields derive clap's `Args` (the flag,
//! its help text and its default) and serde (the key in the pipeline file's section). A run's
//! settings are layered: defaults < the `[section]` of `--config pipelines/X.toml` < the flags
//! given on the command line.
//!
//! Pipeline files are read one way, strictly: every section and every key must be one a stage
//! knows, and a misspelling is an error that names the file, the line and the valid names.

use anyhow::{anyhow, bail, Context, Result};
use clap::parser::ValueSource;
use clap::{ArgMatches, Args, FromArgMatches};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use std::path::{Path, PathBuf};

/// A stage's settings: one struct, read from flags and from one section of the pipeline file.
pub trait Settings: Args + FromArgMatches + Serialize + DeserializeOwned {
    /// The pipeline file's section (`generate`, `score`, ...).
    const SECTION: &'static str;

    /// Every default, as the flags' help shows it.
    fn defaults() -> Self {
        let command = Self::augment_args(clap::Command::new(Self::SECTION));
        let matches = command
            .try_get_matches_from([Self::SECTION])
            .unwrap_or_else(|e| panic!("[{}]: a setting has no default: {e}", Self::SECTION));
        Self::from_arg_matches(&matches)
            .unwrap_or_else(|e| panic!("[{}]: defaults do not parse: {e}", Self::SECTION))
    }

    /// The settings with the pipeline file's section applied over the defaults.
    fn from_config(config: Option<&Path>) -> Result<Self> {
        Self::defaults().under_config(config, &ArgMatches::default())
    }

    /// These settings as parsed from the command line (`self`, from `matches`), with the
    /// pipeline file's section filling every setting whose flag was not given.
    fn under_config(self, config: Option<&Path>, matches: &ArgMatches) -> Result<Self> {
        let Some(path) = config else {
            return Ok(self);
        };
        let file = PipelineFile::read(path)?;
        let mut merged = fields_of(&self);
        let mut from_file = Vec::new();
        let section = file.section(Self::SECTION);
        for (key, value) in &section {
            // A section may hold keys for a sibling settings struct of the same stage
            // (evaluate reads its judge's keys from [score]); the file check knows them all.
            if !merged.contains_key(key) || flag_given(matches, key) {
                continue;
            }
            merged.insert(key.clone(), serde_json::to_value(value)?);
            from_file.push(key.as_str());
        }
        serde_json::from_value(Value::Object(merged.clone())).map_err(|e| {
            // serde names the expected type but not the key: find the key that breaks it.
            let key = from_file.iter().find(|key| {
                let mut one = fields_of(&self);
                one.insert(key.to_string(), merged[**key].clone());
                serde_json::from_value::<Self>(Value::Object(one)).is_err()
            });
            match key {
                Some(key) => file.error_at(Self::SECTION, Some(key), &format!("`{key}`: {e}")),
                None => anyhow!("{}: [{}]: {e}", path.display(), Self::SECTION),
            }
        })
    }
}

/// The settings' keys and values as a JSON object (`null` for an unset option).
fn fields_of(settings: &impl Serialize) -> Map<String, Value> {
    match serde_json::to_value(settings) {
        Ok(Value::Object(map)) => map,
        other => panic!("settings serialise to a JSON object, got {other:?}"),
    }
}

/// Whether the flag of setting `id` was given (not its default).
pub fn flag_given(matches: &ArgMatches, id: &str) -> bool {
    matches.try_contains_id(id).unwrap_or(false)
        && matches.value_source(id) == Some(ValueSource::CommandLine)
}

/// The flags of every stage besides its settings.
#[derive(Debug, Clone, clap::Args)]
pub struct StageFlags {
    /// Pipeline file (TOML): its section for this stage gives every setting not given as a
    /// flag (`generate pipeline-vars FILE` checks a whole file).
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Redo the work even if the output is up to date.
    #[arg(long)]
    pub force: bool,
}

/// Parses the command line into `C` and keeps the matches, which say which flags were given.
pub fn parse_command_line<C: clap::Parser>() -> (C, ArgMatches) {
    let matches = C::command().get_matches();
    match C::from_arg_matches(&matches) {
        Ok(cli) => (cli, matches),
        Err(e) => e.exit(),
    }
}

/// The `[pipeline]` section: what `make iter` chains (the Makefile reads it through
/// `generate pipeline-vars`).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PipelineSettings {
    /// The model iteration 1 starts from (directory, Hub id or GGUF file).
    pub base_model: String,
    /// The judge of `score` and `evaluate` (`--judge`).
    pub judge: String,
    /// The judge's model, if it has one (`--judge-model`).
    pub judge_model: Option<String>,
    /// Training prompts; `{t}` becomes the iteration's part, cycling through 1..prompt_parts.
    pub prompts: String,
    pub prompt_parts: u32,
    /// Prompts of the evaluation.
    pub eval_prompts: String,
    /// What win rates are measured against: a model, or `reference` answers.
    pub baseline: String,
}

/// The `[slurm]` section: the sbatch options of every job `make iter LAUNCHER=slurm` submits
/// (each shardable stage as a job array of SHARDS tasks, the other stages as one job).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SlurmSettings {
    /// `--partition`: the partition (queue) the jobs run in.
    pub partition: Option<String>,
    /// `--gres`: generic resources per task, e.g. `gpu:1`.
    pub gres: Option<String>,
    /// `--time`: each task's time limit, e.g. `02:00:00`.
    pub time: Option<String>,
    /// `--cpus-per-task`.
    pub cpus: Option<u32>,
    /// Further sbatch arguments, one per element, e.g. `["--account=alignment", "--qos=high"]`.
    pub extra_args: Vec<String>,
}

impl SlurmSettings {
    /// The sbatch arguments, each one a single word.
    pub fn sbatch_args(&self) -> Vec<String> {
        let mut args = Vec::new();
        let options = [
            ("--partition", self.partition.clone()),
            ("--gres", self.gres.clone()),
            ("--time", self.time.clone()),
            ("--cpus-per-task", self.cpus.map(|c| c.to_string())),
        ];
        for (flag, value) in options {
            args.extend(value.map(|v| format!("{flag}={v}")));
        }
        args.extend(self.extra_args.iter().cloned());
        args
    }

    /// Refuses an empty value, a value with a space (sbatch would read two arguments) and 0
    /// CPUs, naming the key.
    fn check(&self, path: &Path) -> Result<()> {
        let named = [
            ("partition", self.partition.as_deref()),
            ("gres", self.gres.as_deref()),
            ("time", self.time.as_deref()),
        ];
        for (key, value) in named {
            if let Some(v) = value {
                if v.is_empty() || v.contains(char::is_whitespace) {
                    bail!(
                        "{}: [slurm] {key} = {v:?}: expected one word without spaces",
                        path.display()
                    );
                }
            }
        }
        if self.cpus == Some(0) {
            bail!("{}: [slurm] cpus = 0: expected at least 1", path.display());
        }
        if let Some(a) = self.extra_args.iter().find(|a| !a.starts_with('-')) {
            bail!(
                "{}: [slurm] extra_args has {a:?}: expected sbatch options such as \
                 \"--account=NAME\", one per element",
                path.display()
            );
        }
        Ok(())
    }
}

/// The names of every section a pipeline file may hold, with their keys.
pub fn known_sections() -> Vec<(&'static str, Vec<String>)> {
    fn keys<S: Settings>() -> (&'static str, Vec<String>) {
        (
            S::SECTION,
            fields_of(&S::defaults()).keys().cloned().collect(),
        )
    }
    use super::{estimate_winrate, evaluate, generate, score, train_step};
    vec![
        (
            "pipeline",
            fields_of(&PipelineSettings::default())
                .keys()
                .cloned()
                .collect(),
        ),
        (
            "slurm",
            fields_of(&SlurmSettings::default())
                .keys()
                .cloned()
                .collect(),
        ),
        keys::<generate::GenerateSettings>(),
        keys::<score::ScoreSettings>(),
        keys::<estimate_winrate::WinrateSettings>(),
        keys::<train_step::TrainStepSettings>(),
        keys::<evaluate::EvaluateSettings>(),
    ]
}

/// A pipeline file, checked: only known sections, only known keys, nothing outside a section.
pub struct PipelineFile {
    path: String,
    text: String,
    doc: toml::Table,
}

impl PipelineFile {
    pub fn read(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read --config {}", path.display()))?;
        let doc: toml::Table = text
            .parse()
            .with_context(|| format!("--config {}: not valid TOML", path.display()))?;
        let file = PipelineFile {
            path: path.display().to_string(),
            text,
            doc,
        };
        file.check()?;
        Ok(file)
    }

    fn check(&self) -> Result<()> {
        let known = known_sections();
        let names: Vec<String> = known.iter().map(|(s, _)| format!("[{s}]")).collect();
        for (name, item) in &self.doc {
            let toml::Value::Table(table) = item else {
                return Err(self.error_at(
                    "",
                    Some(name),
                    &format!(
                        "`{name}` is outside any section; every setting belongs in one of {}",
                        names.join(", ")
                    ),
                ));
            };
            let Some((_, keys)) = known.iter().find(|(s, _)| s == name) else {
                return Err(self.error_at(
                    name,
                    None,
                    &format!(
                        "unknown section [{name}]; expected one of {}",
                        names.join(", ")
                    ),
                ));
            };
            for key in table.keys() {
                if !keys.contains(key) {
                    return Err(self.error_at(
                        name,
                        Some(key),
                        &format!(
                            "[{name}] has no setting `{key}`; expected one of {}",
                            keys.join(", ")
                        ),
                    ));
                }
            }
        }
        Ok(())
    }

    /// The `[section]`, empty when the file has none.
    pub fn section(&self, section: &str) -> toml::Table {
        match self.doc.get(section) {
            Some(toml::Value::Table(t)) => t.clone(),
            _ => toml::Table::new(),
        }
    }

    /// The `[pipeline]` section, typed.
    pub fn pipeline(&self) -> Result<PipelineSettings> {
        toml::Value::Table(self.section("pipeline"))
            .try_into()
            .map_err(|e| anyhow!("{}: [pipeline]: {e}", self.path))
    }

    /// The `[slurm]` section, typed and checked.
    pub fn slurm(&self) -> Result<SlurmSettings> {
        let s: SlurmSettings = toml::Value::Table(self.section("slurm"))
            .try_into()
            .map_err(|e| anyhow!("{}: [slurm]: {e}", self.path))?;
        s.check(Path::new(&self.path))?;
        Ok(s)
    }

    /// An error that names the file and the line of `[section]` (or of `key` in it; the top
    /// level is section "").
    fn error_at(&self, section: &str, key: Option<&str>, message: &str) -> anyhow::Error {
        match line_of(&self.text, section, key) {
            Some(line) => anyhow!("{}:{line}: {message}", self.path),
            None => anyhow!("{}: {message}", self.path),
        }
    }
}

/// The 1-based line of `key` in `[section]` (of the header itself without a key).
fn line_of(text: &str, section: &str, key: Option<&str>) -> Option<usize> {
    let mut current = String::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if let Some(header) = line.strip_prefix('[').and_then(|l| l.split(']').next()) {
            current = header.trim().trim_matches('"').to_string();
            if key.is_none() && current == section {
                return Some(n + 1);
            }
            continue;
        }
        let Some(key) = key else { continue };
        let name = line
            .split('=')
            .next()
            .unwrap_or("")
            .trim()
            .trim_matches('"');
        if current == section && name == key && line.contains('=') {
            return Some(n + 1);
        }
    }
    None
}

/// `generate pipeline-vars`: the `[pipeline]` section as make variables, after checking the
/// whole file, so that make and the stages read one file one way.
pub fn make_variables(path: &Path) -> Result<String> {
    let file = PipelineFile::read(path)?;
    let p = file.pipeline()?;
    let slurm = file.slurm()?;
    let mut missing = Vec::new();
    for (key, value) in [
        ("base_model", &p.base_model),
        ("judge", &p.judge),
        ("prompts", &p.prompts),
        ("eval_prompts", &p.eval_prompts),
        ("baseline", &p.baseline),
    ] {
        if value.is_empty() {
            missing.push(key);
        }
    }
    if !missing.is_empty() {
        bail!(
            "{}: [pipeline] needs {} (make iter chains the stages with them)",
            path.display(),
            missing.join(", ")
        );
    }
    if p.prompts.contains("{t}") && p.prompt_parts == 0 {
        bail!(
            "{}: [pipeline] prompts has {{t}}, so it needs prompt_parts >= 1",
            path.display()
        );
    }
    // The judge's registry entry says whether `score` must be given the prompts (for their
    // references or constraints); an unknown judge fails here, before any stage runs.
    let judge = crate::judge::find_judge(&p.judge)
        .with_context(|| format!("{}: [pipeline] judge", path.display()))?;
    // Which folder of iteration t is its model: `model/`, or with LoRA and no merge the PEFT
    // adapter folder `adapter/` (an adapter folder loads as its base plus the adapter).
    let train = super::train_step::TrainStepSettings::from_config(Some(path))?;
    let model_dir = if train.lora_rank.is_some() && !train.merge {
        "adapter"
    } else {
        "model"
    };
    let escape = |v: &str| v.replace('$', "$$").replace('#', "\\#");
    let vars = [
        ("BASE_MODEL", p.base_model.clone()),
        ("JUDGE", p.judge.clone()),
        ("JUDGE_MODEL", p.judge_model.clone().unwrap_or_default()),
        (
            "JUDGE_READS_PROMPTS",
            judge.needs_prompts.map_or("", |_| "yes").to_string(),
        ),
        ("PROMPTS", p.prompts.clone()),
        ("PROMPT_PARTS", p.prompt_parts.max(1).to_string()),
        ("EVAL_PROMPTS", p.eval_prompts.clone()),
        ("BASELINE", p.baseline.clone()),
        // Each argument single-quoted for the shell of make's recipes.
        (
            "SLURM_ARGS",
            slurm
                .sbatch_args()
                .iter()
                .map(|a| format!("'{}'", a.replace('\'', "'\\''")))
                .collect::<Vec<_>>()
                .join(" "),
        ),
        ("MODEL_DIR", model_dir.to_string()),
    ];
    Ok(vars
        .iter()
        .map(|(name, value)| format!("{name} := {}\n", escape(value)))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::testing::TempDir;
    use crate::stage::estimate_winrate::WinrateSettings;
    use crate::stage::generate::GenerateSettings;
    use crate::stage::score::ScoreSettings;
    use clap::{CommandFactory, Parser};

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        settings: GenerateSettings,
    }

    fn write(text: &str) -> (TempDir, std::path::PathBuf) {
        let dir = TempDir::new();
        let path = dir.path().join("pipeline.toml");
        std::fs::write(&path, text).unwrap();
        (dir, path)
    }

    fn parse(config: Option<&Path>, args: &[&str]) -> Result<GenerateSettings> {
        let matches = Cli::command().try_get_matches_from(args)?;
        let cli = Cli::from_arg_matches(&matches)?;
        cli.settings.under_config(config, &matches)
    }

    #[test]
    fn defaults_then_file_then_flags() {
        let (_d, path) = write("[generate]\nk = 2\ntemperature = 0.5\n");
        let s = parse(Some(&path), &["x", "--temperature", "0.25"]).unwrap();
        assert_eq!((s.k, s.temperature, s.top_p), (2, 0.25, 0.9));
        // A flag equal to its default still wins over the file.
        let s = parse(Some(&path), &["x", "--k", "5"]).unwrap();
        assert_eq!(s.k, 5);
        let s = parse(None, &["x"]).unwrap();
        assert_eq!((s.k, s.temperature), (5, 0.7));
    }

    #[test]
    fn every_stage_has_defaults_for_every_setting() {
        for (section, keys) in known_sections() {
            assert!(!keys.is_empty() || section == "winrate", "{section}");
        }
    }

    #[test]
    fn a_misspelled_section_or_key_names_file_line_and_valid_names() {
        let (_d, path) = write("[generate]\nk = 2\n\n[train_step]\nlr = 1.0\n");
        let err = format!("{:#}", parse(Some(&path), &["x"]).unwrap_err());
        assert!(
            err.contains("pipeline.toml:4:") && err.contains("[train_step]"),
            "{err}"
        );
        assert!(err.contains("[train-step]"), "{err}");

        let (_d, path) = write("k = 2\n[generate]\n");
        let err = format!("{:#}", parse(Some(&path), &["x"]).unwrap_err());
        assert!(
            err.contains("pipeline.toml:1:") && err.contains("outside any section"),
            "{err}"
        );

        let (_d, path) = write("[score]\n# a comment\njudg = \"x\"\n");
        let err = format!("{:#}", ScoreSettings::from_config(Some(&path)).unwrap_err());
        assert!(
            err.contains("pipeline.toml:3:") && err.contains("`judg`"),
            "{err}"
        );
        assert!(err.contains("judge_model"), "lists the valid keys: {err}");
    }

    #[test]
    fn a_value_of_the_wrong_type_names_its_key_and_line() {
        let (_d, path) = write("[generate]\ntop_p = 0.5\nk = \"two\"\n");
        let err = format!("{:#}", parse(Some(&path), &["x"]).unwrap_err());
        assert!(
            err.contains("pipeline.toml:3:") && err.contains("`k`"),
            "{err}"
        );
    }

    #[test]
    fn sections_read_for_their_stage() {
        let (_d, path) = write(
            "[score]\njudge = \"rule:length\"\ntarget = 40\ntemperature = 0.5\n\n[winrate]\nexclude_self = true\n",
        );
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
        assert!(
            WinrateSettings::from_config(Some(&path))
                .unwrap()
                .exclude_self
        );
    }

    const PIPELINE: &str = "[pipeline]\nbase_model = \"m\"\njudge = \"reward-model\"\n\
        prompts = \"p.parquet\"\neval_prompts = \"e.parquet\"\nbaseline = \"m\"\n";

    #[test]
    fn the_slurm_section_becomes_sbatch_arguments() {
        let (_d, path) = write(&format!(
            "{PIPELINE}[slurm]\npartition = \"gpu\"\ngres = \"gpu:1\"\ntime = \"02:00:00\"\n\
             cpus = 8\nextra_args = [\"--account=o'brien\", \"--qos=high\"]\n"
        ));
        let vars = make_variables(&path).unwrap();
        assert!(
            vars.contains(
                "SLURM_ARGS := '--partition=gpu' '--gres=gpu:1' '--time=02:00:00' \
                 '--cpus-per-task=8' '--account=o'\\''brien' '--qos=high'\n"
            ),
            "{vars}"
        );
        for (bad, expected) in [
            (
                "partition = \"a b\"",
                "[slurm] partition = \"a b\": expected one word",
            ),
            ("cpus = 0", "[slurm] cpus = 0: expected at least 1"),
            ("cpus = \"8\"", "[slurm]"),
            ("extra_args = [\"account=x\"]", "expected sbatch options"),
            ("gpus = 1", "pipeline.toml:8: [slurm] has no setting `gpus`"),
        ] {
            let (_d, path) = write(&format!("{PIPELINE}[slurm]\n{bad}\n"));
            let err = format!("{:#}", make_variables(&path).unwrap_err());
            assert!(err.contains(expected), "{bad}: {err}");
        }
    }

    #[test]
    fn make_variables_survive_comments_and_quote_nothing() {
        let (_d, path) = write(
            "[pipeline]\nbase_model = \"data/models/tiny-policy\"  # start here\njudge = \"instructions\"\n\
             prompts = \"p-{t}.parquet\"\nprompt_parts = 3\neval_prompts = \"e.parquet\"\nbaseline = \"reference\"\n",
        );
        let vars = make_variables(&path).unwrap();
        assert!(
            vars.contains("BASE_MODEL := data/models/tiny-policy\n"),
            "{vars}"
        );
        assert!(
            vars.contains("JUDGE_MODEL := \n")
                && vars.contains("PROMPT_PARTS := 3\n")
                && vars.contains("JUDGE_READS_PROMPTS := yes\n"),
            "{vars}"
        );
        assert!(vars.contains("SLURM_ARGS := \n"), "{vars}");
        let (_d, path) = write("[pipeline]\njudge = \"x\"\n");
        let err = format!("{:#}", make_variables(&path).unwrap_err());
        assert!(
            err.contains("base_model") && err.contains("prompts"),
            "{err}"
        );
    }
}
