//! Every judge `--judge` can name, in one table: its name, what it needs from the settings, how
//! it is built, whether it is scalar or pairwise, and whether it needs reference answers.
//! `score`, `evaluate` and their help texts read this table; adding a judge is its own file
//! plus one entry here.

use anyhow::{bail, ensure, Result};
use serde_json::Value;

use super::traits::Judge;
use crate::data::ModelRef;

/// The judges' options. For now they are fields of the `[score]` section; builders read them
/// by name.
pub(crate) use crate::stage::score::ScoreSettings;

/// How a judge reaches P(a beats b).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Comparison {
    /// It scores each response on its own; scores lift to pairs by Bradley-Terry with the
    /// settings' temperature (and `score` also writes scores.parquet).
    Scalar,
    /// It compares the two responses of a pair directly.
    Pairwise,
}

/// A setting a judge cannot do without.
pub struct Required {
    /// The flag as the error names it, e.g. `--target N (characters)`.
    pub flag: &'static str,
    pub is_set: fn(&ScoreSettings) -> bool,
}

/// A judge as its settings describe it: what goes into fingerprints now, the (possibly
/// expensive) loading later, only if there is work to do.
pub struct JudgeSpec {
    /// The canonical settings that shape its judgments.
    pub content: Value,
    /// The judge's models by role (`judge`), for fingerprints.
    pub models: Vec<(&'static str, ModelRef)>,
    /// The judge reports each constraint's pass/fail
    /// ([`super::ScalarJudge::constraint_outcomes`]): `score` writes them to constraints.parquet.
    pub constraint_outcomes: bool,
    pub load: Box<dyn FnOnce() -> Result<Judge>>,
}

/// One judge `--judge` can name.
pub struct JudgeEntry {
    pub name: &'static str,
    /// One line for `--help`.
    pub description: &'static str,
    pub comparison: Comparison,
    /// What it reads from `--prompts FILE` that samples files do not carry (each prompt's
    /// reference answer, its constraints), for the error when the file is missing.
    pub needs_prompts: Option<&'static str>,
    /// Checked before anything is read; other judges' options are ignored (and stay out of the
    /// fingerprint), so a command line can switch the judge of a pipeline config.
    pub required: &'static [Required],
    /// Resolves and fingerprints the judge's models, checks its settings; loads nothing.
    pub build: fn(&ScoreSettings) -> Result<JudgeSpec>,
}

const JUDGE_MODEL: Required = Required {
    flag: "--judge-model DIR_OR_HUB_ID",
    is_set: |s| s.judging.judge_model.is_some(),
};

/// The judges, in the order help texts list them.
pub const JUDGES: &[JudgeEntry] = &[
    JudgeEntry {
        name: "reward-model",
        description: "a *ForSequenceClassification checkpoint (--judge-model) scores the conversation with its own chat template",
        comparison: Comparison::Scalar,
        needs_prompts: None,
        required: &[JUDGE_MODEL],
        build: super::reward_model::build,
    },
    JudgeEntry {
        name: "pairrm",
        description: "llm-blender's PairRM (--judge-model, PairRM-hf layout) compares the two responses of a pair in both orders",
        comparison: Comparison::Pairwise,
        needs_prompts: None,
        required: &[JUDGE_MODEL],
        build: super::pairrm_judge::build,
    },
    JudgeEntry {
        name: "llm",
        description: "a causal chat model (--judge-model) compares the two responses in both orders; p from its next-token odds of the verdicts (--verdicts) after the comparison prompt (--judge-template)",
        comparison: Comparison::Pairwise,
        needs_prompts: None,
        required: &[JUDGE_MODEL],
        build: super::llm_judge::build,
    },
    JudgeEntry {
        name: "rule:length",
        description: "score = -|characters - N| (--target N): closest to N is best",
        comparison: Comparison::Scalar,
        needs_prompts: None,
        required: &[Required {
            flag: "--target N (characters)",
            is_set: |s| s.judging.target.is_some(),
        }],
        build: super::rules::build_length_rule,
    },
    JudgeEntry {
        name: "rule:contains",
        description: "score = 1 if the response matches --pattern REGEX, else 0",
        comparison: Comparison::Scalar,
        needs_prompts: None,
        required: &[Required {
            flag: "--pattern REGEX",
            is_set: |s| s.judging.pattern.is_some(),
        }],
        build: super::rules::build_contains_rule,
    },
    JudgeEntry {
        name: "rule:exact-match",
        description: "score = 1 if the response equals the prompt's reference answer (surrounding whitespace ignored), else 0",
        comparison: Comparison::Scalar,
        needs_prompts: Some("reference answers"),
        required: &[],
        build: super::rules::build_exact_match_rule,
    },
    JudgeEntry {
        name: "instructions",
        description: "score = the fraction of the prompt's verifiable instructions (its `constraints` in --prompts FILE: word counts, keywords, JSON, ...) the response meets; writes each one's pass/fail to constraints.parquet",
        comparison: Comparison::Scalar,
        needs_prompts: Some("constraints"),
        required: &[],
        build: super::instructions::build,
    },
];

/// The names `--judge` accepts.
pub fn judge_names() -> Vec<&'static str> {
    JUDGES.iter().map(|j| j.name).collect()
}

/// The judges for a `--help` text: a name and its description a line.
pub fn judges_help() -> String {
    let width = JUDGES.iter().map(|j| j.name.len()).max().unwrap_or(0);
    JUDGES
        .iter()
        .map(|j| format!("  {:width$}  {}\n", j.name, j.description))
        .collect()
}

/// The judge `--judge NAME` names.
pub fn find_judge(name: &str) -> Result<&'static JudgeEntry> {
    match JUDGES.iter().find(|j| j.name == name) {
        Some(entry) => Ok(entry),
        None => bail!(
            "--judge {name}: expected one of {}",
            judge_names().join(", ")
        ),
    }
}

impl JudgeEntry {
    /// Checks the settings this judge needs and builds its spec (no weights loaded).
    pub fn spec(&self, s: &ScoreSettings) -> Result<JudgeSpec> {
        ensure!(s.batch_size >= 1, "--batch-size must be at least 1");
        ensure!(
            s.temperature.is_finite() && s.temperature > 0.0,
            "--temperature {}: expected a finite number > 0",
            s.temperature
        );
        for required in self.required {
            ensure!(
                (required.is_set)(s),
                "--judge {} needs {}",
                self.name,
                required.flag
            );
        }
        (self.build)(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn error_of(s: &ScoreSettings) -> String {
        match find_judge(&s.judging.judge).and_then(|entry| entry.spec(s)) {
            Ok(_) => panic!("{}: expected an error", s.judging.judge),
            Err(e) => format!("{e:#}"),
        }
    }

    #[test]
    fn names_are_unique_and_every_judge_has_a_description() {
        let mut names = judge_names();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), JUDGES.len());
        assert!(JUDGES.iter().all(|j| !j.description.is_empty()));
        let help = judges_help();
        assert_eq!(help.lines().count(), JUDGES.len());
        assert!(
            help.contains("  rule:length       score = -|characters - N|"),
            "{help}"
        );
    }

    #[test]
    fn an_unknown_judge_lists_the_known_ones() {
        let s = {
            let mut s = ScoreSettings::default();
            s.judging.judge = "oracle".into();
            s
        };
        assert_eq!(
            error_of(&s),
            "--judge oracle: expected one of reward-model, pairrm, llm, rule:length, rule:contains, rule:exact-match, instructions"
        );
    }

    #[test]
    fn missing_settings_name_the_flag() {
        let with = |judge: &str| {
            let mut s = ScoreSettings::default();
            s.judging.judge = judge.into();
            s
        };
        for (judge, want) in [
            (
                "reward-model",
                "--judge reward-model needs --judge-model DIR_OR_HUB_ID",
            ),
            ("pairrm", "--judge pairrm needs --judge-model DIR_OR_HUB_ID"),
            ("llm", "--judge llm needs --judge-model DIR_OR_HUB_ID"),
            (
                "rule:length",
                "--judge rule:length needs --target N (characters)",
            ),
            (
                "rule:contains",
                "--judge rule:contains needs --pattern REGEX",
            ),
        ] {
            assert_eq!(error_of(&with(judge)), want);
        }
        let cold = {
            let mut s = with("rule:exact-match");
            s.temperature = 0.0;
            s
        };
        assert_eq!(
            error_of(&cold),
            "--temperature 0: expected a finite number > 0"
        );
        let no_batch = {
            let mut s = with("rule:exact-match");
            s.batch_size = 0;
            s
        };
        assert_eq!(error_of(&no_batch), "--batch-size must be at least 1");
        let bad_regex = {
            let mut s = with("rule:contains");
            s.judging.pattern = Some("(".into());
            s
        };
        assert!(error_of(&bad_regex).starts_with("--pattern \"(\": not a valid regular expression"));
    }

    #[test]
    fn rule_specs_describe_their_judgments() {
        let s = {
            let mut s = ScoreSettings::default();
            s.judging.judge = "rule:length".into();
            s.judging.target = Some(7);
            s.temperature = 0.5;
            s
        };
        let spec = find_judge("rule:length").unwrap().spec(&s).unwrap();
        assert_eq!(
            serde_json::to_string(&spec.content).unwrap(),
            r#"{"judge":"rule:length","target":7,"temperature":0.5}"#
        );
        assert!(spec.models.is_empty());
        let judge = (spec.load)().unwrap();
        assert_eq!(judge.name(), "rule:length(target=7)");
        assert!(matches!(judge, Judge::Scalar { temperature, .. } if temperature == 0.5));
        let exact = find_judge("rule:exact-match").unwrap();
        assert!(exact.needs_prompts.is_some() && exact.comparison == Comparison::Scalar);
        let spec = exact.spec(&s).unwrap();
        assert_eq!(
            serde_json::to_string(&spec.content).unwrap(),
            r#"{"judge":"rule:exact-match","trim":true,"temperature":0.5}"#
        );
        assert!((spec.load)().unwrap().uses_reference());
    }
}
