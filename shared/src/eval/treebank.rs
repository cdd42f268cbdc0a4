//! NLTK's word tokenizer (`NLTKWordTokenizer`, the improved Treebank tokenizer that
//! `nltk.word_tokenize` applies), case kept: the tokens of the RSPO paper's self-BLEU.
//!
//! The official evaluation (`eval_selfbleu.py` of xiaohangt/RSPO) calls `nltk.word_tokenize`,
//! which first splits sentences with the trained Punkt model and then tokenizes each sentence.
//! Punkt is not reproduced: the whole text is one line, as `word_tokenize(text,
//! preserve_line=True)`, so a period ending a sentence inside the text stays on its word
//! (`"them."`) where Punkt would have split it off. The rules below are NLTK 3.x's, in its order,
//! with Python's `$` (end, or before a final newline) written `(?=\n?\z)`; `\w`, `\d` and `\s`
//! are Unicode in both, up to small differences outside ASCII.

use std::sync::LazyLock;

use fancy_regex::Regex;

/// (pattern, replacement) in NLTK's order: STARTING_QUOTES, PUNCTUATION, PARENS_BRACKETS,
/// DOUBLE_DASHES; then the text is padded with spaces and ENDING_QUOTES, CONTRACTIONS2 and
/// CONTRACTIONS3 follow.
const BEFORE_PADDING: &[(&str, &str)] = &[
    // STARTING_QUOTES
    (r"([«“‘„]|[`]+)", " ${1} "),
    (r#"^""#, "``"),
    (r"(``)", " ${1} "),
    (r#"([ \(\[{<])("|'{2})"#, "${1} `` "),
    (r"(?i)(?<!\w)(')(?!(?:re|ve|ll|m|t|s|d|n)\b)(?=\w)", "${1} "),
    // PUNCTUATION
    (
        r#"([^\.])(\.)([\]\)}>"'»”’ ]*)\s*(?=\n?\z)"#,
        "${1} ${2} ${3} ",
    ),
    (r"([:,])([^\d])", " ${1} ${2}"),
    (r"([:,])(?=\n?\z)", " ${1} "),
    (r"\.{2,}", " ${0} "),
    (r"[;@#$%&]", " ${0} "),
    (r"[\x{2012}-\x{2015}]", " ${0} "),
    (r#"([^\.])(\.)([\]\)}>"']*)\s*(?=\n?\z)"#, "${1} ${2}${3} "),
    (r"[?!]", " ${0} "),
    (r"([^'])' ", "${1} ' "),
    (r"[*]", " ${0} "),
    // PARENS_BRACKETS
    (r"[\]\[\(\)\{\}\<\>]", " ${0} "),
    // DOUBLE_DASHES
    (r"--", " -- "),
];

const AFTER_PADDING: &[(&str, &str)] = &[
    // ENDING_QUOTES
    (r"([»”’])", " ${1} "),
    (r"''", " '' "),
    (r#"""#, " '' "),
    (r"\s+", " "),
    (r"([^' ])('[sS]|'[mM]|'[dD]|') ", "${1} ${2} "),
    (r"([^' ])('ll|'LL|'re|'RE|'ve|'VE|n't|N'T) ", "${1} ${2} "),
    // CONTRACTIONS2 (MacIntyre's)
    (r"(?i)\b(can)(not)\b", " ${1} ${2} "),
    (r"(?i)\b(d)('ye)\b", " ${1} ${2} "),
    (r"(?i)\b(gim)(me)\b", " ${1} ${2} "),
    (r"(?i)\b(gon)(na)\b", " ${1} ${2} "),
    (r"(?i)\b(got)(ta)\b", " ${1} ${2} "),
    (r"(?i)\b(lem)(me)\b", " ${1} ${2} "),
    (r"(?i)\b(more)('n)\b", " ${1} ${2} "),
    (r"(?i)\b(wan)(na)(?=\s)", " ${1} ${2} "),
    // CONTRACTIONS3
    (r"(?i) ('t)(is)\b", " ${1} ${2} "),
    (r"(?i) ('t)(was)\b", " ${1} ${2} "),
];

type Rules = Vec<(Regex, &'static str)>;

fn compile(rules: &[(&str, &'static str)]) -> Rules {
    rules
        .iter()
        .map(|(p, r)| (Regex::new(p).expect("an NLTK rule compiles"), *r))
        .collect()
}

static RULES: LazyLock<(Rules, Rules)> =
    LazyLock::new(|| (compile(BEFORE_PADDING), compile(AFTER_PADDING)));

/// A rule gave up (fancy-regex's backtracking limit) on some text.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("treebank tokenizer: rule `{rule}` failed: {message}")]
pub struct TreebankError {
    pub rule: String,
    pub message: String,
}

fn apply(rules: &Rules, mut text: String) -> Result<String, TreebankError> {
    for (re, rep) in rules {
        text = re
            .try_replacen(&text, 0, *rep)
            .map_err(|e| TreebankError {
                rule: re.as_str().to_string(),
                message: e.to_string(),
            })?
            .into_owned();
    }
    Ok(text)
}

/// `nltk.word_tokenize(text, preserve_line=True)`: NLTK's word tokens of `text`, case kept.
pub fn treebank_tokenize(text: &str) -> Result<Vec<String>, TreebankError> {
    let (before, after) = &*RULES;
    let text = apply(before, text.to_string())?;
    let text = apply(after, format!(" {text} "))?;
    Ok(text.split_whitespace().map(str::to_string).collect())
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Deserialize)]
    pub struct Fixture {
        pub tokens: Vec<Case>,
        pub groups: Vec<Group>,
    }

    #[derive(Deserialize)]
    pub struct Case {
        pub text: String,
        pub tokens: Vec<String>,
    }

    #[derive(Deserialize)]
    pub struct Group {
        pub texts: Vec<String>,
        pub self_bleu3: f64,
    }

    /// tests/fixtures/official-terms/selfbleu.json, written by NLTK (make_selfbleu.py).
    pub fn fixture() -> Fixture {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../tests/fixtures/official-terms/selfbleu.json"
        );
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
    }

    #[test]
    fn tokens_match_nltk() {
        let cases = fixture().tokens;
        assert_eq!(cases.len(), 20);
        for case in &cases {
            assert_eq!(
                treebank_tokenize(&case.text).unwrap(),
                case.tokens,
                "{:?}",
                case.text
            );
        }
    }
}
