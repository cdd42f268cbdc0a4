//! What the `llm` judge shows its model and where it reads the answer: the comparison template
//! (`--judge-template`, a Jinja file given `instruction`, `output_1`, `output_2` and, optionally,
//! `reference`; ours by default), rendered as the user turn of the judge model's own chat template
//! with its generation prompt, and the two verdict strings (`--verdicts`) whose next-token
//! logits decide the pair.

use minijinja::Environment;
use std::path::Path;

use super::traits::JudgeError;
use crate::data::Message;
use crate::model::Checkpoint;

/// The built-in comparison prompt (AlpacaEval-like: the instruction, Output (a), Output (b),
/// "answer a or b").
pub const DEFAULT_TEMPLATE: &str = include_str!("llm_judge_default.jinja");

/// `--verdicts`' default: SmolLM2-135M-Instruct (and larger chat models) answer the default
/// template with these letters, each one token.
pub const DEFAULT_VERDICTS: &str = "a,b";

/// The comparison template, compiled.
pub struct ComparisonTemplate {
    env: Environment<'static>,
    /// The template's text: part of the judge's identity.
    pub source: String,
    /// Where it came from, for errors: `--judge-template FILE` or the built-in one.
    origin: String,
    /// The template reads `reference`: such a judge needs every prompt's reference answer.
    pub uses_reference: bool,
}

/// What the template renders: one ordered pair of responses to one instruction.
pub struct ShownPair<'a> {
    pub instruction: &'a str,
    pub output_1: &'a str,
    pub output_2: &'a str,
    pub reference: Option<&'a str>,
}

fn template_error(origin: &str, message: String) -> JudgeError {
    JudgeError::BadSetting {
        flag: "--judge-template",
        value: origin.to_string(),
        message,
    }
}

impl ComparisonTemplate {
    /// The template of `--judge-template FILE`, or the built-in one.
    pub fn open(file: Option<&Path>) -> Result<Self, JudgeError> {
        match file {
            None => Self::new(DEFAULT_TEMPLATE.to_string(), "(built-in)".into()),
            Some(path) => {
                let origin = path.display().to_string();
                let source = std::fs::read_to_string(path).map_err(|e| {
                    template_error(&origin, format!("cannot read the template file: {e}"))
                })?;
                Self::new(source, origin)
            }
        }
    }

    fn new(source: String, origin: String) -> Result<Self, JudgeError> {
        let mut env = Environment::new();
        env.set_trim_blocks(true);
        env.set_lstrip_blocks(true);
        env.add_template_owned("comparison", source.clone())
            .map_err(|e| template_error(&origin, format!("not a valid Jinja template: {e}")))?;
        let tmpl = env
            .get_template("comparison")
            .map_err(|e| template_error(&origin, e.to_string()))?;
        let variables = tmpl.undeclared_variables(false);
        if !variables.contains("output_1") || !variables.contains("output_2") {
            return Err(template_error(
                &origin,
                "the template never shows `output_1` and `output_2`; expected both (and `instruction`)".into(),
            ));
        }
        let uses_reference = variables.contains("reference");
        Ok(ComparisonTemplate {
            env,
            source,
            origin,
            uses_reference,
        })
    }

    /// The user turn for one ordered pair.
    pub fn render(&self, c: &ShownPair<'_>) -> Result<String, JudgeError> {
        let render = || {
            self.env
                .get_template("comparison")?
                .render(minijinja::context! {
                    instruction => c.instruction,
                    output_1 => c.output_1,
                    output_2 => c.output_2,
                    reference => c.reference,
                })
        };
        render().map_err(|e| template_error(&self.origin, e.to_string()))
    }

    /// The judge model's prompt for one ordered pair: the comparison as the user turn of its
    /// chat template, with the generation prompt; tokenized as `apply_chat_template` does.
    pub fn prompt_ids(
        &self,
        checkpoint: &Checkpoint,
        c: &ShownPair<'_>,
    ) -> Result<Vec<u32>, JudgeError> {
        let user = Message::new("user", self.render(c)?);
        let text = checkpoint.render_chat(&[user], true)?;
        Ok(checkpoint.encode(&text)?)
    }
}

/// The two verdict strings of `--verdicts A,B`: the first says "output_1 wins".
pub fn parse_verdicts(spec: &str) -> Result<[String; 2], JudgeError> {
    let bad = |message: &str| JudgeError::BadSetting {
        flag: "--verdicts",
        value: spec.to_string(),
        message: message.to_string(),
    };
    let parts: Vec<&str> = spec.split(',').collect();
    match parts[..] {
        [a, b] if !a.is_empty() && !b.is_empty() && a != b => Ok([a.into(), b.into()]),
        [a, b] if a == b && !a.is_empty() => Err(bad("the two verdicts are the same string, expected two different ones")),
        _ => Err(bad(
            "expected two non-empty verdict strings separated by a comma, the first for output_1 and the second for output_2 (e.g. a,b)",
        )),
    }
}

/// The token id of each verdict as the judge model would produce it first after its
/// generation prompt: the prompt's tokens plus exactly one more. A verdict that is several
/// tokens there (or merges with the prompt's end) is an error naming `--verdicts`.
pub fn verdict_ids(
    checkpoint: &Checkpoint,
    template: &ComparisonTemplate,
    verdicts: &[String; 2],
) -> Result<[u32; 2], JudgeError> {
    let probe = ShownPair {
        instruction: "Say hello.",
        output_1: "Hello!",
        output_2: "Hi.",
        reference: Some("Hello."),
    };
    let user = Message::new("user", template.render(&probe)?);
    let prompt = checkpoint.render_chat(&[user], true)?;
    let base = checkpoint.encode(&prompt)?;
    let mut ids = [0u32; 2];
    for (id, verdict) in ids.iter_mut().zip(verdicts) {
        let with = checkpoint.encode(&format!("{prompt}{verdict}"))?;
        match with.strip_prefix(base.as_slice()) {
            Some([one]) => *id = *one,
            _ => {
                let own = checkpoint.encode(verdict)?;
                return Err(JudgeError::BadSetting {
                    flag: "--verdicts",
                    value: verdicts.join(","),
                    message: format!(
                        "{verdict:?} is not a single token of the judge's tokenizer after its generation prompt (on its own it is {} token(s): {own:?}); expected each verdict to be one token",
                        own.len()
                    ),
                });
            }
        }
    }
    if ids[0] == ids[1] {
        return Err(JudgeError::BadSetting {
            flag: "--verdicts",
            value: verdicts.join(","),
            message: format!(
                "both verdicts are the token {}, expected two different tokens",
                ids[0]
            ),
        });
    }
    Ok(ids)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn error(r: Result<impl Sized, JudgeError>) -> String {
        match r {
            Ok(_) => panic!("expected an error"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn verdicts_are_two_different_non_empty_strings() {
        assert_eq!(parse_verdicts("a,b").unwrap(), ["a", "b"]);
        assert_eq!(parse_verdicts(" A, B").unwrap(), [" A", " B"]);
        for bad in ["a", "a,b,c", ",b", "a,", ""] {
            assert!(
                error(parse_verdicts(bad)).starts_with(&format!(
                    "--verdicts {bad:?}: expected two non-empty verdict strings"
                )),
                "{bad}"
            );
        }
        assert_eq!(
            error(parse_verdicts("x,x")),
            "--verdicts \"x,x\": the two verdicts are the same string, expected two different ones"
        );
    }

    #[test]
    fn the_template_renders_the_pair_and_says_whether_it_reads_the_reference() {
        let t = ComparisonTemplate::open(None).unwrap();
        // AlpacaEval's judge sees no reference: `evaluate --baseline reference` shows it as
        // one of the outputs instead.
        assert!(!t.uses_reference);
        let c = ShownPair {
            instruction: "Name a fruit.",
            output_1: "Apple.",
            output_2: "A car.",
            reference: Some("Pear."),
        };
        let text = t.render(&c).unwrap();
        assert!(
            text.contains("## Instruction\nName a fruit.\n\n## Output (a)\nApple.\n\n## Output (b)\nA car.\n\n"),
            "{text}"
        );
        assert!(!text.contains("Pear"), "{text}");

        let dir = std::env::temp_dir().join(format!("rspo-llm-prompt-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("t.jinja");
        std::fs::write(
            &file,
            "{{ instruction }}|{{ output_1 }}|{{ output_2 }}{% if reference %}|{{ reference }}{% endif %}",
        )
        .unwrap();
        let own = ComparisonTemplate::open(Some(&file)).unwrap();
        assert!(own.uses_reference);
        assert_eq!(own.render(&c).unwrap(), "Name a fruit.|Apple.|A car.|Pear.");
        let without = ShownPair {
            reference: None,
            ..c
        };
        assert_eq!(own.render(&without).unwrap(), "Name a fruit.|Apple.|A car.");
        std::fs::write(&file, "{{ instruction }} {{ output_1 ").unwrap();
        let msg = error(ComparisonTemplate::open(Some(&file)));
        assert!(
            msg.starts_with(&format!(
                "--judge-template \"{}\": not a valid Jinja template",
                file.display()
            )),
            "{msg}"
        );
        std::fs::write(&file, "{{ instruction }} {{ output_1 }}").unwrap();
        let msg = error(ComparisonTemplate::open(Some(&file)));
        assert!(
            msg.contains("never shows `output_1` and `output_2`"),
            "{msg}"
        );
        let missing = dir.join("missing.jinja");
        let msg = error(ComparisonTemplate::open(Some(&missing)));
        assert!(
            msg.starts_with(&format!(
                "--judge-template \"{}\": cannot read the template file",
                missing.display()
            )),
            "{msg}"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
