//! The verifiable instructions a prompt may carry (its `constraints` column): every kind, its
//! arguments and when a response satisfies it, in one place. The JSON form of a prompt's
//! constraints is a list of objects, each a `kind` plus that kind's arguments:
//! `[{"kind": "word_count", "at_most": 40}, {"kind": "lowercase"}]`.
//!
//! | kind | arguments | a response passes when | IFEval's counterpart |
//! | --- | --- | --- | --- |
//! | `word_count` | `at_least`, `at_most` | its words (runs of `\w`) are within the bounds | length_constraints:number_words |
//! | `sentence_count` | `at_least`, `at_most` | its sentences are within the bounds | length_constraints:number_sentences |
//! | `paragraph_count` | `at_least`, `at_most` | its paragraphs (blank-line or `***` separated) are within the bounds | length_constraints:number_paragraphs |
//! | `char_count` | `at_least`, `at_most` | its characters, surrounding whitespace trimmed, are within the bounds | |
//! | `include_keywords` | `keywords` (list) | every keyword occurs, as a whole word, any case | keywords:existence |
//! | `exclude_keywords` | `keywords` (list) | no keyword occurs, as a whole word, any case | keywords:forbidden_words |
//! | `keyword_frequency` | `keyword`, `at_least`, `at_most` | the keyword's occurrences are within the bounds | keywords:frequency |
//! | `letter_frequency` | `letter`, `at_least`, `at_most` | the letter's occurrences, any case, are within the bounds | keywords:letter_frequency |
//! | `lowercase` | | it has lowercase letters and no capital one | change_case:english_lowercase |
//! | `uppercase` | | it has capital letters and no lowercase one | change_case:english_capital |
//! | `capital_word_count` | `at_least`, `at_most` | its all-capital words ("USA", "I") are within the bounds | change_case:capital_word_frequency |
//! | `no_commas` | | it has no comma (`,` `，` `、` `،`) | punctuation:no_comma |
//! | `json_only` | | it is one JSON object or array, a ```json fence allowed | detectable_format:json_format |
//! | `bullet_count` | `at_least`, `at_most` | its Markdown bullet points (`* `, `- `, `+ `, `• `) are within the bounds | detectable_format:number_bullet_lists |
//! | `highlight_count` | `at_least`, `at_most` | its highlighted spans (`*text*`, `**text**`) are within the bounds | detectable_format:number_highlighted_sections |
//! | `placeholder_count` | `at_least`, `at_most` | its `[placeholders]` are within the bounds | detectable_content:number_placeholders |
//! | `section_count` | `marker`, `at_least`, `at_most` | its sections (`marker` then a number: "SECTION 1") are within the bounds | detectable_format:multiple_sections |
//! | `title` | | it has a title in double angle brackets, `<<like this>>` | detectable_format:title |
//! | `postscript` | `marker` | a line starts with the marker ("P.S."), any case and spacing | detectable_content:postscript |
//! | `start_phrase` | `phrase` | it starts with the phrase, any case and spacing | |
//! | `end_phrase` | `phrase` | it ends with the phrase, any case and spacing | startend:end_checker |
//! | `quoted` | | it is wrapped in double quotes (`"…"`, `“…”` or `«…»`) | startend:quotation |
//! | `script` | `script` | at least 90% of its letters are in the script's Unicode blocks | language:response_language |
//! | `repeat_request` | `request` (optional) | it starts with the request, any case and spacing, then says more; `request` defaults to the prompt's last user turn | combination:repeat_prompt |
//!
//! Bounds are inclusive, non-negative integers; a counted kind needs at least one of them (both
//! equal for an exact count; IFEval's "less than N" is `at_most` N - 1). Scripts: `latin`,
//! `cyrillic`, `greek`, `armenian`, `georgian`, `hebrew`, `arabic`, `devanagari`, `bengali`,
//! `thai`, `hangul`, `han`, `kana`, `japanese` (han and kana). How text is measured:
//! [`super::constraint_text`].

use serde::Deserialize;
use serde_json::Value;
use thiserror::Error;

use super::constraint_text as text;
use super::scripts::Script;
use crate::data::canonical_json;

/// One verifiable instruction, as its JSON object says (`kind` is the tag).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum Constraint {
    WordCount {
        at_least: Option<u32>,
        at_most: Option<u32>,
    },
    SentenceCount {
        at_least: Option<u32>,
        at_most: Option<u32>,
    },
    ParagraphCount {
        at_least: Option<u32>,
        at_most: Option<u32>,
    },
    CharCount {
        at_least: Option<u32>,
        at_most: Option<u32>,
    },
    IncludeKeywords {
        keywords: Vec<String>,
    },
    ExcludeKeywords {
        keywords: Vec<String>,
    },
    KeywordFrequency {
        keyword: String,
        at_least: Option<u32>,
        at_most: Option<u32>,
    },
    LetterFrequency {
        letter: char,
        at_least: Option<u32>,
        at_most: Option<u32>,
    },
    Lowercase {},
    Uppercase {},
    CapitalWordCount {
        at_least: Option<u32>,
        at_most: Option<u32>,
    },
    NoCommas {},
    JsonOnly {},
    BulletCount {
        at_least: Option<u32>,
        at_most: Option<u32>,
    },
    HighlightCount {
        at_least: Option<u32>,
        at_most: Option<u32>,
    },
    PlaceholderCount {
        at_least: Option<u32>,
        at_most: Option<u32>,
    },
    SectionCount {
        marker: String,
        at_least: Option<u32>,
        at_most: Option<u32>,
    },
    Title {},
    Postscript {
        marker: String,
    },
    StartPhrase {
        phrase: String,
    },
    EndPhrase {
        phrase: String,
    },
    Quoted {},
    Script {
        script: Script,
    },
    RepeatRequest {
        request: Option<String>,
    },
}

/// Commas of Latin, CJK (full-width and enumeration) and Arabic text.
const COMMAS: [char; 4] = [',', '，', '、', '،'];

/// Whether `n` is within the inclusive bounds.
fn within(n: usize, at_least: Option<u32>, at_most: Option<u32>) -> bool {
    at_least.is_none_or(|lo| n >= lo as usize) && at_most.is_none_or(|hi| n <= hi as usize)
}

impl Constraint {
    /// The bounds of a counted kind.
    fn bounds(&self) -> Option<(Option<u32>, Option<u32>)> {
        use Constraint::*;
        match *self {
            WordCount { at_least, at_most }
            | SentenceCount { at_least, at_most }
            | ParagraphCount { at_least, at_most }
            | CharCount { at_least, at_most }
            | KeywordFrequency {
                at_least, at_most, ..
            }
            | LetterFrequency {
                at_least, at_most, ..
            }
            | CapitalWordCount { at_least, at_most }
            | BulletCount { at_least, at_most }
            | HighlightCount { at_least, at_most }
            | PlaceholderCount { at_least, at_most }
            | SectionCount {
                at_least, at_most, ..
            } => Some((at_least, at_most)),
            _ => None,
        }
    }

    /// The arguments' values that serde's types cannot rule out.
    fn validate(&self) -> Result<(), String> {
        use Constraint::*;
        if let Some(bounds) = self.bounds() {
            match bounds {
                (None, None) => return Err("expected `at_least`, `at_most` or both".into()),
                (Some(lo), Some(hi)) if lo > hi => {
                    return Err(format!(
                        "at_least {lo} > at_most {hi}, expected at_least <= at_most"
                    ))
                }
                _ => {}
            }
        }
        let non_empty = |name: &str, value: &str| {
            if value.trim().is_empty() {
                Err(format!("`{name}` is empty, expected some text"))
            } else {
                Ok(())
            }
        };
        match self {
            IncludeKeywords { keywords } | ExcludeKeywords { keywords } => {
                if keywords.is_empty() {
                    return Err("`keywords` is an empty list, expected at least one".into());
                }
                keywords.iter().try_for_each(|k| non_empty("keywords", k))
            }
            KeywordFrequency { keyword, .. } => non_empty("keyword", keyword),
            LetterFrequency { letter, .. } if !letter.is_alphabetic() => Err(format!(
                "`letter` {letter:?} is not a letter, expected one alphabetic character"
            )),
            SectionCount { marker, .. } | Postscript { marker } => non_empty("marker", marker),
            StartPhrase { phrase } | EndPhrase { phrase } => non_empty("phrase", phrase),
            RepeatRequest {
                request: Some(request),
            } => non_empty("request", request),
            _ => Ok(()),
        }
    }

    /// Whether `response` satisfies the constraint; `request` is the prompt's last user turn.
    pub fn is_met(&self, response: &str, request: &str) -> bool {
        use Constraint::*;
        if let Some((at_least, at_most)) = self.bounds() {
            let n = match self {
                WordCount { .. } => text::word_count(response),
                SentenceCount { .. } => text::sentence_count(response),
                ParagraphCount { .. } => text::paragraph_count(response),
                CharCount { .. } => text::char_count(response),
                KeywordFrequency { keyword, .. } => text::keyword_count(response, keyword),
                LetterFrequency { letter, .. } => text::letter_count(response, *letter),
                CapitalWordCount { .. } => text::capital_word_count(response),
                BulletCount { .. } => text::bullet_count(response),
                HighlightCount { .. } => text::highlight_count(response),
                PlaceholderCount { .. } => text::placeholder_count(response),
                SectionCount { marker, .. } => text::section_count(response, marker),
                _ => unreachable!("every counted kind is measured"),
            };
            return within(n, at_least, at_most);
        }
        match self {
            IncludeKeywords { keywords } => keywords
                .iter()
                .all(|k| text::keyword_count(response, k) > 0),
            ExcludeKeywords { keywords } => keywords
                .iter()
                .all(|k| text::keyword_count(response, k) == 0),
            Lowercase {} => {
                response.chars().any(char::is_lowercase)
                    && !response.chars().any(char::is_uppercase)
            }
            Uppercase {} => {
                response.chars().any(char::is_uppercase)
                    && !response.chars().any(char::is_lowercase)
            }
            NoCommas {} => !response.contains(COMMAS),
            JsonOnly {} => matches!(
                serde_json::from_str::<Value>(text::without_code_fence(response)),
                Ok(Value::Object(_) | Value::Array(_))
            ),
            Title {} => text::has_title(response),
            Postscript { marker } => text::has_postscript(response, marker),
            StartPhrase { phrase } => {
                text::normalized(response).starts_with(&text::normalized(phrase))
            }
            EndPhrase { phrase } => text::normalized(response).ends_with(&text::normalized(phrase)),
            Quoted {} => {
                let t = response.trim();
                let (first, last) = (t.chars().next(), t.chars().next_back());
                t.chars().count() >= 2
                    && matches!(
                        (first, last),
                        (Some('"'), Some('"')) | (Some('“'), Some('”')) | (Some('«'), Some('»'))
                    )
            }
            Script { script } => script.writes(response),
            RepeatRequest { request: own } => {
                let (response, request) = (
                    text::normalized(response),
                    text::normalized(own.as_deref().unwrap_or(request)),
                );
                response
                    .strip_prefix(&request)
                    .is_some_and(|rest| text::word_count(rest) > 0)
            }
            _ => unreachable!("counted kinds return above"),
        }
    }
}

/// A prompt's constraint, with its JSON object as given (canonical: keys sorted).
#[derive(Debug, Clone, PartialEq)]
pub struct ParsedConstraint {
    pub kind: String,
    pub json: String,
    pub rule: Constraint,
}

/// Why a prompt's `constraints` cannot be used.
#[derive(Debug, Error, PartialEq)]
pub enum ConstraintError {
    #[error("`constraints` is not JSON ({0}); expected a list like [{{\"kind\": \"word_count\", \"at_most\": 40}}]")]
    NotJson(String),
    #[error("`constraints` is {0}, expected a JSON list of constraints")]
    NotAList(String),
    #[error("`constraints` is an empty list, expected at least one constraint")]
    Empty,
    #[error("constraints[{index}] {json}: {message}")]
    Bad {
        index: usize,
        json: String,
        message: String,
    },
}

/// Parses and checks a prompt's constraints (the JSON text of the `constraints` column).
pub fn parse_constraints(json: &str) -> Result<Vec<ParsedConstraint>, ConstraintError> {
    let value: Value =
        serde_json::from_str(json).map_err(|e| ConstraintError::NotJson(e.to_string()))?;
    let Value::Array(items) = value else {
        let mut shown = canonical_json(&value);
        if shown.len() > 80 {
            shown = format!("{}...", shown.chars().take(80).collect::<String>());
        }
        return Err(ConstraintError::NotAList(shown));
    };
    if items.is_empty() {
        return Err(ConstraintError::Empty);
    }
    items
        .into_iter()
        .enumerate()
        .map(|(index, item)| {
            let json = canonical_json(&item);
            let bad = |message: String| ConstraintError::Bad {
                index,
                json: json.clone(),
                message,
            };
            let kind = match item.get("kind") {
                Some(Value::String(kind)) => kind.clone(),
                _ => return Err(bad("expected an object with a string `kind`".into())),
            };
            let rule = Constraint::deserialize(&item).map_err(|e| bad(e.to_string()))?;
            rule.validate().map_err(bad)?;
            Ok(ParsedConstraint { kind, json, rule })
        })
        .collect()
}

#[cfg(test)]
#[path = "constraints_tests.rs"]
mod tests;
