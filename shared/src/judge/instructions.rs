//! `--judge instructions`: verifiable instruction following. A prompt carries constraints (its
//! `constraints` column, see [`super::constraints`] for the kinds); a response scores the
//! fraction of them it satisfies, in [0, 1]. It is a scalar judge, lifted to pairs like a reward
//! model; it also gives the pass/fail of each constraint behind a score
//! ([`ScalarJudge::constraint_outcomes`]; `score` writes them to constraints.parquet).

use serde_json::{json, Value};

use super::constraints::{parse_constraints, ParsedConstraint};
use super::registry::{JudgeSpec, ScoreSettings};
use super::rules::scalar_spec;
use super::traits::{judge_digest, ConstraintOutcome, JudgeError, JudgeItem, ScalarJudge};
use crate::data::Message;

/// The version of the checks' definitions: bumped when a kind's meaning changes, so judgments
/// cached under the old meaning are not reused.
pub const CHECKS_VERSION: u32 = 1;

const NAME: &str = "instructions";

pub struct InstructionsJudge;

/// The prompt's request: its last user turn (what `repeat_request` repeats by default).
fn request(messages: &[Message]) -> &str {
    messages
        .iter()
        .rev()
        .find(|m| m.role == "user")
        .map_or("", |m| m.content.as_str())
}

/// The item's constraints, or an error naming its prompt and the bad constraint.
fn constraints_of(item: &JudgeItem<'_>) -> Result<Vec<ParsedConstraint>, JudgeError> {
    let bad = |message: String| JudgeError::BadPrompt {
        judge: NAME.into(),
        prompt_id: item.prompt_id.to_string(),
        message,
    };
    let text = item.constraints.ok_or_else(|| {
        bad("has no constraints, expected a `constraints` column in the prompts file (score --prompts FILE)".into())
    })?;
    parse_constraints(text).map_err(|e| bad(e.to_string()))
}

/// Which of the item's constraints its response satisfies.
fn constraint_outcomes(item: &JudgeItem<'_>) -> Result<Vec<ConstraintOutcome>, JudgeError> {
    let request = request(item.messages);
    Ok(constraints_of(item)?
        .into_iter()
        .enumerate()
        .map(|(index, c)| ConstraintOutcome {
            index: index as u32,
            passed: c.rule.is_met(item.response, request),
            kind: c.kind,
            json: c.json,
        })
        .collect())
}

impl ScalarJudge for InstructionsJudge {
    fn name(&self) -> String {
        NAME.into()
    }
    fn settings(&self) -> Value {
        json!({"checks": CHECKS_VERSION})
    }
    fn digest(&self) -> String {
        judge_digest(NAME, None, &self.settings())
    }
    /// Every constraint parses and has sensible arguments, before any response is judged.
    fn check(&self, items: &[JudgeItem<'_>]) -> Result<(), JudgeError> {
        let mut seen = std::collections::HashSet::new();
        for item in items {
            if seen.insert((item.prompt_id, item.constraints)) {
                constraints_of(item)?;
            }
        }
        Ok(())
    }
    fn score(&self, items: &[JudgeItem<'_>]) -> Result<Vec<f64>, JudgeError> {
        items
            .iter()
            .map(|item| {
                let outcomes = constraint_outcomes(item)?;
                let passed = outcomes.iter().filter(|o| o.passed).count();
                Ok(passed as f64 / outcomes.len() as f64)
            })
            .collect()
    }
    fn constraint_outcomes(
        &self,
        item: &JudgeItem<'_>,
    ) -> Result<Vec<ConstraintOutcome>, JudgeError> {
        constraint_outcomes(item)
    }
}

/// `instructions`' registry builder: no settings of its own; `score` also writes each
/// constraint's pass/fail.
pub(super) fn build(s: &ScoreSettings) -> anyhow::Result<JudgeSpec> {
    let content = json!({"judge": NAME, "checks": CHECKS_VERSION, "temperature": s.temperature});
    Ok(JudgeSpec {
        constraint_outcomes: true,
        ..scalar_spec(InstructionsJudge, content, s.temperature)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn item<'a>(
        messages: &'a [Message],
        response: &'a str,
        constraints: Option<&'a str>,
    ) -> JudgeItem<'a> {
        JudgeItem {
            prompt_id: "p7",
            sample_idx: 2,
            messages,
            prompt_text: "",
            response,
            reference: None,
            constraints,
        }
    }

    #[test]
    fn scores_are_the_fraction_of_constraints_met() {
        let m = [Message::user("Describe a sunrise.")];
        let c = r#"[{"kind": "word_count", "at_most": 5}, {"kind": "lowercase"}, {"kind": "no_commas"}]"#;
        let items = [
            item(&m, "the sun climbs slowly", Some(c)),
            item(&m, "The sun climbs slowly", Some(c)),
            item(&m, "The sun, red and gold, climbs over the hills", Some(c)),
            item(&m, "", Some(c)),
        ];
        let judge = InstructionsJudge;
        judge.check(&items).unwrap();
        let got = judge.score(&items).unwrap();
        // The empty response: 0 words and no commas, but no lowercase letters.
        assert_eq!(got, vec![1.0, 2.0 / 3.0, 0.0, 2.0 / 3.0]);
        let outcomes = constraint_outcomes(&items[1]).unwrap();
        assert_eq!(
            outcomes
                .iter()
                .map(|o| (o.index, o.kind.as_str(), o.passed))
                .collect::<Vec<_>>(),
            [
                (0, "word_count", true),
                (1, "lowercase", false),
                (2, "no_commas", true)
            ]
        );
        assert_eq!(outcomes[0].json, r#"{"at_most":5,"kind":"word_count"}"#);
    }

    #[test]
    fn repeat_request_defaults_to_the_last_user_turn() {
        let m = [
            Message::user("Hi"),
            Message::new("assistant", "Hello"),
            Message::user("Name a fruit."),
        ];
        let c = r#"[{"kind": "repeat_request"}]"#;
        let got = InstructionsJudge
            .score(&[
                item(&m, "Name a fruit. A pear.", Some(c)),
                item(&m, "Hi A pear.", Some(c)),
            ])
            .unwrap();
        assert_eq!(got, vec![1.0, 0.0]);
    }

    #[test]
    fn bad_or_missing_constraints_are_errors_naming_the_prompt_and_constraint() {
        let m = [Message::user("q")];
        let bad = r#"[{"kind": "lowercase"}, {"kind": "word_count", "at_least": "many"}]"#;
        for judged in [
            InstructionsJudge.check(&[item(&m, "x", Some(bad))]),
            InstructionsJudge
                .score(&[item(&m, "x", Some(bad))])
                .map(|_| ()),
        ] {
            let msg = judged.unwrap_err().to_string();
            assert!(
                msg.starts_with("instructions: prompt \"p7\": constraints[1] {\"at_least\":\"many\",\"kind\":\"word_count\"}")
                    && msg.contains("invalid type: string \"many\", expected u32"),
                "{msg}"
            );
        }
        let msg = InstructionsJudge
            .check(&[item(&m, "x", None)])
            .unwrap_err()
            .to_string();
        assert!(
            msg.contains("prompt \"p7\": has no constraints") && msg.contains("--prompts FILE"),
            "{msg}"
        );
    }

    #[test]
    fn digest_is_stable_and_names_the_judge() {
        assert_eq!(InstructionsJudge.digest(), InstructionsJudge.digest());
        assert_eq!(InstructionsJudge.name(), "instructions");
        assert_ne!(
            InstructionsJudge.digest(),
            super::super::rules::ExactMatchRule.digest()
        );
    }
}
