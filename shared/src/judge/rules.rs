//! Programmatic judges (`rule:*`): scores computed from the text alone, for tests and verifiable
//! tasks. They are scalar judges, lifted to pairs like a reward model.

use regex::Regex;
use serde_json::{json, Value};

use super::registry::JudgeSpec;
use super::registry::ScoreSettings;
use super::traits::{judge_digest, Judge, JudgeError, JudgeItem, ScalarJudge};

/// `rule:length --target N`: closer to N characters is better; score = -|chars - N|.
pub struct LengthRule {
    pub target: usize,
}

impl ScalarJudge for LengthRule {
    fn name(&self) -> String {
        format!("rule:length(target={})", self.target)
    }
    fn settings(&self) -> Value {
        json!({"target": self.target})
    }
    fn digest(&self) -> String {
        judge_digest("rule:length", None, &self.settings())
    }
    fn score(&self, items: &[JudgeItem<'_>]) -> Result<Vec<f64>, JudgeError> {
        Ok(items
            .iter()
            .map(|it| {
                // Characters are Unicode scalar values, as eval's lengths.
                let len = it.response.chars().count() as f64;
                // 0 - x rather than -x: a perfect length scores 0, not -0.
                0.0 - (len - self.target as f64).abs()
            })
            .collect())
    }
}

/// `rule:contains --pattern REGEX`: 1 when the response matches the pattern anywhere, else 0.
pub struct ContainsRule {
    regex: Regex,
}

impl ContainsRule {
    pub fn new(pattern: &str) -> Result<Self, JudgeError> {
        let regex = Regex::new(pattern).map_err(|e| JudgeError::BadSetting {
            flag: "--pattern",
            value: pattern.to_string(),
            message: format!("not a valid regular expression: {e}"),
        })?;
        Ok(ContainsRule { regex })
    }
}

impl ScalarJudge for ContainsRule {
    fn name(&self) -> String {
        format!("rule:contains(pattern={})", self.regex.as_str())
    }
    fn settings(&self) -> Value {
        json!({"pattern": self.regex.as_str()})
    }
    fn digest(&self) -> String {
        judge_digest("rule:contains", None, &self.settings())
    }
    fn score(&self, items: &[JudgeItem<'_>]) -> Result<Vec<f64>, JudgeError> {
        Ok(items
            .iter()
            .map(|it| f64::from(u8::from(self.regex.is_match(it.response))))
            .collect())
    }
}

/// `rule:exact-match`: 1 when the response equals the prompt's reference answer (both with
/// surrounding whitespace trimmed, since samples often start with a space or end with a
/// newline), else 0.
pub struct ExactMatchRule;

impl ScalarJudge for ExactMatchRule {
    fn name(&self) -> String {
        "rule:exact-match".into()
    }
    fn settings(&self) -> Value {
        json!({"trim": true})
    }
    fn digest(&self) -> String {
        judge_digest("rule:exact-match", None, &self.settings())
    }
    fn uses_reference(&self) -> bool {
        true
    }
    fn check(&self, items: &[JudgeItem<'_>]) -> Result<(), JudgeError> {
        match items.iter().find(|it| it.reference.is_none()) {
            Some(it) => Err(JudgeError::MissingReference {
                judge: self.name(),
                prompt_id: it.prompt_id.to_string(),
            }),
            None => Ok(()),
        }
    }
    fn score(&self, items: &[JudgeItem<'_>]) -> Result<Vec<f64>, JudgeError> {
        items
            .iter()
            .map(|it| {
                let reference = it.reference.ok_or_else(|| JudgeError::MissingReference {
                    judge: self.name(),
                    prompt_id: it.prompt_id.to_string(),
                })?;
                Ok(f64::from(u8::from(it.response.trim() == reference.trim())))
            })
            .collect()
    }
}

/// A scalar judge (a rule, `instructions`) as the settings give it, lifted to pairs with their
/// temperature; `content` its settings for fingerprints.
pub(super) fn scalar_spec(
    rule: impl ScalarJudge + 'static,
    content: Value,
    temperature: f64,
) -> JudgeSpec {
    JudgeSpec {
        content,
        models: vec![],
        constraint_outcomes: false,
        load: Box::new(move || {
            Ok(Judge::Scalar {
                judge: Box::new(rule),
                temperature,
            })
        }),
    }
}

/// `rule:length`'s registry builder.
pub(super) fn build_length_rule(s: &ScoreSettings) -> anyhow::Result<JudgeSpec> {
    let target = s.judging.target.unwrap_or_default();
    let content = json!({"judge": "rule:length", "target": target, "temperature": s.temperature});
    Ok(scalar_spec(LengthRule { target }, content, s.temperature))
}

/// `rule:contains`'s registry builder. The pattern compiles now: a bad one fails before
/// anything is read.
pub(super) fn build_contains_rule(s: &ScoreSettings) -> anyhow::Result<JudgeSpec> {
    let pattern = s.judging.pattern.clone().unwrap_or_default();
    let rule = ContainsRule::new(&pattern)?;
    let content =
        json!({"judge": "rule:contains", "pattern": pattern, "temperature": s.temperature});
    Ok(scalar_spec(rule, content, s.temperature))
}

/// `rule:exact-match`'s registry builder. Its references come with the prompts (`score
/// --prompts`, evaluate's prompt file).
pub(super) fn build_exact_match_rule(s: &ScoreSettings) -> anyhow::Result<JudgeSpec> {
    let content = json!({"judge": "rule:exact-match", "trim": true, "temperature": s.temperature});
    Ok(scalar_spec(ExactMatchRule, content, s.temperature))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::Message;

    fn items<'a>(
        messages: &'a [Message],
        responses: &[&'a str],
        reference: Option<&'a str>,
    ) -> Vec<JudgeItem<'a>> {
        responses
            .iter()
            .enumerate()
            .map(|(i, r)| JudgeItem {
                prompt_id: "q",
                sample_idx: i as u32,
                messages,
                prompt_text: "",
                response: r,
                reference,
                constraints: None,
            })
            .collect()
    }

    #[test]
    fn length_prefers_the_target_counting_characters() {
        let m = [Message::user("hi")];
        // "héllo" is 5 characters (6 bytes).
        let got = LengthRule { target: 5 }
            .score(&items(&m, &["héllo", "", "123456789"], None))
            .unwrap();
        assert_eq!(got, vec![0.0, -5.0, -4.0]);
        assert!(got[0].is_sign_positive());
    }

    #[test]
    fn contains_matches_a_regex_anywhere() {
        let m = [Message::user("hi")];
        let rule = ContainsRule::new(r"\b42\b").unwrap();
        let got = rule
            .score(&items(&m, &["the answer is 42.", "420", ""], None))
            .unwrap();
        assert_eq!(got, vec![1.0, 0.0, 0.0]);
        let err = ContainsRule::new("(unclosed").err().unwrap();
        assert!(err.to_string().contains("--pattern \"(unclosed\""), "{err}");
    }

    #[test]
    fn exact_match_trims_and_needs_a_reference() {
        let m = [Message::user("2+2?")];
        let got = ExactMatchRule
            .score(&items(&m, &[" 4\n", "4.", "four"], Some("4")))
            .unwrap();
        assert_eq!(got, vec![1.0, 0.0, 0.0]);
        let err = ExactMatchRule.score(&items(&m, &["4"], None)).unwrap_err();
        assert!(
            err.to_string().contains("prompt \"q\" has no reference"),
            "{err}"
        );
    }

    #[test]
    fn digests_differ_by_rule_and_setting() {
        let a = LengthRule { target: 10 }.digest();
        assert_eq!(a, LengthRule { target: 10 }.digest());
        assert_ne!(a, LengthRule { target: 11 }.digest());
        assert_ne!(
            ContainsRule::new("a").unwrap().digest(),
            ContainsRule::new("b").unwrap().digest()
        );
        assert_ne!(ExactMatchRule.digest(), a);
    }
}
