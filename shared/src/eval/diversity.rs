//! Diversity of each prompt's K samples: self-BLEU-3 (lower is more diverse) and distinct-n,
//! over the tokens of [`Tokens`]: lowercased regex words (the default) or, as the RSPO paper,
//! NLTK's word tokens with case kept.

use std::collections::HashSet;
use std::sync::LazyLock;

use regex::Regex;
use thiserror::Error;

use super::bleu::sentence_bleu;
use super::treebank::{treebank_tokenize, TreebankError};

/// How responses are cut into tokens for self-BLEU and distinct-n.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Tokens {
    /// [`tokenize`]: `\w+|[^\w\s]` on lowercased text.
    #[default]
    Words,
    /// [`treebank_tokenize`]: NLTK's word tokenizer, case kept, as the paper's self-BLEU.
    Treebank,
}

impl std::str::FromStr for Tokens {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "words" => Ok(Tokens::Words),
            "treebank" => Ok(Tokens::Treebank),
            other => Err(format!("{other:?}, expected words or treebank")),
        }
    }
}

impl Tokens {
    pub fn tokenize(&self, text: &str) -> Result<Vec<String>, DiversityError> {
        match self {
            Tokens::Words => Ok(tokenize(text)),
            Tokens::Treebank => Ok(treebank_tokenize(text)?),
        }
    }
}

/// The reference tokenizer is Python's `re.findall(r"\w+|[^\w\s]", text.lower())`. Python's `\w`
/// is "alphanumeric or underscore" (letters L*, numbers N*, `_`); Rust's `\w` differs outside
/// ASCII (it includes combining marks and connector punctuation, excludes `²`/`½`), so the
/// classes are spelled out. Python's `\s` also counts the separators U+001C..U+001F.
static TOKEN: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"[\p{L}\p{N}_]+|[^\p{L}\p{N}_\s\x{1C}-\x{1F}]")
        .expect("the token pattern is a valid regex")
});

/// Lowercased words and single punctuation marks.
pub fn tokenize(text: &str) -> Vec<String> {
    TOKEN
        .find_iter(&text.to_lowercase())
        .map(|m| m.as_str().to_owned())
        .collect()
}

#[derive(Debug, Clone, PartialEq, Error)]
pub enum DiversityError {
    #[error("no prompts to measure, expected at least one group of samples")]
    NoPrompts,
    #[error("prompt number {prompt} has {samples} sample(s), expected at least 2 for self-BLEU")]
    TooFewSamples { prompt: usize, samples: usize },
    #[error("distinct-n needs n >= 1, found n = 0")]
    ZeroNgramOrder,
    #[error(transparent)]
    Treebank(#[from] TreebankError),
}

/// Mean over prompts of the per-prompt metrics.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Diversity {
    pub prompts: usize,
    pub self_bleu3: f64,
    pub distinct_1: f64,
    pub distinct_2: f64,
}

/// Self-BLEU-3 of one prompt's samples: the mean over samples of the sentence BLEU (up to
/// 3-grams, smoothing method 1) of each sample against all the others as references.
pub fn self_bleu3<S: AsRef<str>>(texts: &[S]) -> Result<f64, DiversityError> {
    let tokens: Vec<Vec<String>> = texts.iter().map(|t| tokenize(t.as_ref())).collect();
    self_bleu3_of_tokens(&tokens).ok_or(DiversityError::TooFewSamples {
        prompt: 0,
        samples: texts.len(),
    })
}

/// Distinct-n of one prompt's samples, pooled over the group: unique n-grams / all n-grams, with
/// n-grams taken within each sample. A group without any n-gram (all samples shorter than n)
/// counts as 0: it shows no diversity.
pub fn distinct_n<S: AsRef<str>>(texts: &[S], n: usize) -> Result<f64, DiversityError> {
    let tokens: Vec<Vec<String>> = texts.iter().map(|t| tokenize(t.as_ref())).collect();
    distinct_n_of_tokens(&tokens, n)
}

/// Self-BLEU-3, distinct-1 and distinct-2 of each prompt's group, averaged over prompts.
pub fn diversity<G, S>(groups: &[G]) -> Result<Diversity, DiversityError>
where
    G: AsRef<[S]>,
    S: AsRef<str>,
{
    diversity_with(groups, Tokens::Words)
}

/// [`diversity`] over the tokens of `tokens`.
pub fn diversity_with<G, S>(groups: &[G], tokens: Tokens) -> Result<Diversity, DiversityError>
where
    G: AsRef<[S]>,
    S: AsRef<str>,
{
    let tokenizer = tokens;
    if groups.is_empty() {
        return Err(DiversityError::NoPrompts);
    }
    let (mut self_bleu, mut distinct_1, mut distinct_2) = (0.0, 0.0, 0.0);
    for (prompt, group) in groups.iter().enumerate() {
        let texts = group.as_ref();
        let tokens = texts
            .iter()
            .map(|t| tokenizer.tokenize(t.as_ref()))
            .collect::<Result<Vec<_>, _>>()?;
        self_bleu += self_bleu3_of_tokens(&tokens).ok_or(DiversityError::TooFewSamples {
            prompt,
            samples: texts.len(),
        })?;
        distinct_1 += distinct_n_of_tokens(&tokens, 1)?;
        distinct_2 += distinct_n_of_tokens(&tokens, 2)?;
    }
    let n = groups.len() as f64;
    Ok(Diversity {
        prompts: groups.len(),
        self_bleu3: self_bleu / n,
        distinct_1: distinct_1 / n,
        distinct_2: distinct_2 / n,
    })
}

/// `None` with fewer than two samples (no references).
fn self_bleu3_of_tokens(tokens: &[Vec<String>]) -> Option<f64> {
    if tokens.len() < 2 {
        return None;
    }
    let mut sum = 0.0;
    for (i, hypothesis) in tokens.iter().enumerate() {
        let references: Vec<&[String]> = tokens
            .iter()
            .enumerate()
            .filter(|&(j, _)| j != i)
            .map(|(_, t)| t.as_slice())
            .collect();
        sum += sentence_bleu(hypothesis, &references, 3)?;
    }
    Some(sum / tokens.len() as f64)
}

fn distinct_n_of_tokens(tokens: &[Vec<String>], n: usize) -> Result<f64, DiversityError> {
    if n == 0 {
        return Err(DiversityError::ZeroNgramOrder);
    }
    let mut unique: HashSet<&[String]> = HashSet::new();
    let mut total = 0usize;
    for sample in tokens {
        if sample.len() >= n {
            for gram in sample.windows(n) {
                unique.insert(gram);
                total += 1;
            }
        }
    }
    Ok(if total == 0 {
        0.0
    } else {
        unique.len() as f64 / total as f64
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Deserialize)]
    struct Fixture {
        groups: Vec<Group>,
    }
    #[derive(Deserialize)]
    struct Group {
        texts: Vec<String>,
        self_bleu3: f64,
        distinct_1: f64,
    }

    fn fixture() -> Fixture {
        let text = include_str!(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../tests/fixtures/metrics/diversity.json"
        ));
        serde_json::from_str(text).unwrap()
    }

    #[test]
    fn matches_the_reference_fixture_per_group() {
        for (g, group) in fixture().groups.iter().enumerate() {
            let bleu = self_bleu3(&group.texts).unwrap();
            assert!(
                (bleu - group.self_bleu3).abs() < 1e-12,
                "group {g}: self-BLEU-3 {bleu} vs fixture {}",
                group.self_bleu3
            );
            assert_eq!(
                distinct_n(&group.texts, 1).unwrap(),
                group.distinct_1,
                "group {g}"
            );
        }
    }

    #[test]
    fn averages_over_prompts() {
        let f = fixture();
        let groups: Vec<&[String]> = f.groups.iter().map(|g| g.texts.as_slice()).collect();
        let got = diversity(&groups).unwrap();
        let n = f.groups.len() as f64;
        let mean_bleu = f.groups.iter().map(|g| g.self_bleu3).sum::<f64>() / n;
        let mean_d1 = f.groups.iter().map(|g| g.distinct_1).sum::<f64>() / n;
        assert_eq!(got.prompts, 3);
        assert!((got.self_bleu3 - mean_bleu).abs() < 1e-12);
        assert!((got.distinct_1 - mean_d1).abs() < 1e-15);
        assert!(got.distinct_2 > 0.0 && got.distinct_2 < 1.0);
    }

    #[test]
    fn distinct_two_of_fixture_groups_by_hand() {
        let f = fixture();
        // Group 0 bigrams: "the cat sat on the mat ." 6, "the cat sat on a mat !" 6 of which 3 new
        // (on a, a mat, mat !), "a dog ran in the park , happily ." 8 all new: 17 unique of 20.
        assert_eq!(distinct_n(&f.groups[0].texts, 2).unwrap(), 17.0 / 20.0);
        // Group 2, "same text here" three times: 2 unique of 6.
        assert_eq!(distinct_n(&f.groups[2].texts, 2).unwrap(), 2.0 / 6.0);
    }

    /// The paper's self-BLEU: 16 samples per prompt, NLTK word tokens with case kept, NLTK's
    /// sentence_bleu with method 1 (tests/fixtures/official-terms/make_selfbleu.py).
    #[test]
    fn treebank_self_bleu_matches_the_official_evaluation() {
        let groups = crate::eval::treebank::tests::fixture().groups;
        assert_eq!(groups.len(), 3);
        for g in &groups {
            assert_eq!(g.texts.len(), 16);
            let d = diversity_with(&[&g.texts], Tokens::Treebank).unwrap();
            assert!(
                (d.self_bleu3 - g.self_bleu3).abs() < 1e-12,
                "{} vs {}",
                d.self_bleu3,
                g.self_bleu3
            );
            // The default tokenization lowercases and splits differently: another number.
            let words = diversity(&[&g.texts]).unwrap();
            assert!((words.self_bleu3 - g.self_bleu3).abs() > 1e-6);
        }
        assert_eq!("treebank".parse::<Tokens>(), Ok(Tokens::Treebank));
        assert!("nltk".parse::<Tokens>().is_err());
    }

    #[test]
    fn tokenizes_like_python_re_on_lowercased_text() {
        // Expected lists from Python 3: re.findall(r"\w+|[^\w\s]", s.lower()).
        assert_eq!(
            tokenize("Hello, World! ÉCOLE naïve"),
            ["hello", ",", "world", "!", "école", "naïve"]
        );
        assert_eq!(tokenize("café—ok"), ["café", "—", "ok"]);
        // A combining accent is not \w in Python: it stands alone.
        assert_eq!(tokenize("e\u{301}té"), ["e", "\u{301}", "té"]);
        // Superscripts and fractions are numbers, hence \w.
        assert_eq!(tokenize("x² ½"), ["x²", "½"]);
        // Connector punctuation other than '_' is not \w; U+001C counts as whitespace.
        assert_eq!(tokenize("a\u{203f}b"), ["a", "\u{203f}", "b"]);
        assert_eq!(tokenize("a\u{1c}b snake_case"), ["a", "b", "snake_case"]);
    }

    #[test]
    fn distinct_two_pools_the_group_without_crossing_samples() {
        // "a b a b" has bigrams ab, ba, ab; "b a" has ba: 2 unique of 4. Joining the samples
        // would add "b b".
        assert_eq!(distinct_n(&["a b a b", "b a"], 2).unwrap(), 0.5);
        // Only one-token samples: no bigram at all.
        assert_eq!(distinct_n(&["a", "b"], 2).unwrap(), 0.0);
        assert_eq!(distinct_n(&["a"], 0), Err(DiversityError::ZeroNgramOrder));
    }

    #[test]
    fn rejects_groups_without_references() {
        assert_eq!(
            diversity::<Vec<&str>, &str>(&[]),
            Err(DiversityError::NoPrompts)
        );
        let err = diversity(&[vec!["a b", "a c"], vec!["only one"]]).unwrap_err();
        assert_eq!(
            err,
            DiversityError::TooFewSamples {
                prompt: 1,
                samples: 1
            }
        );
        assert!(self_bleu3(&["x"]).is_err());
    }
}
